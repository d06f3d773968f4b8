-- spec/vcsim_spec.lua — the vSphere simulator peer itself (spec/support/vcsim):
-- vcsim plus our shim, driven with raw SOAP envelopes over capil.sys.http, so
-- the specs of the vim25 client can rely on what it does.
local vcsim = require("support.vcsim")
local http = require("capil.sys.http")
local xml = require("capil.sys.xml")
local hash = require("capil.sys.hash")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")

-- Sends one SOAP call; returns {status, el = the response element or the
-- Fault, fault = the fault type or nil, faultstring} (or nil, err, code).
local function call(sim, session, body, opts)
  opts = opts or {}
  local resp, err, code = http.request({
    url = sim.url, body = vcsim.envelope(body), session = session, ok_status = true, retries = 0,
    headers = { ["Content-Type"] = "text/xml; charset=utf-8", SOAPAction = "urn:vim25/6.5" },
    ca_file = opts.ca_file or sim.ca_file, insecure = opts.insecure,
  })
  if not resp then return nil, err, code end
  if resp.body == "" then return { status = resp.status, headers = resp.headers } end
  local root = assert(xml.parse(resp.body))
  local el = assert(xml.children(assert(xml.find(root, "Body")))[1])
  local r = { status = resp.status, el = el, headers = resp.headers }
  if el.name == "Fault" then
    local detail = xml.children(assert(xml.find(el, "detail")))[1]
    r.fault = detail and xml.xsi_type(detail)
    r.faultstring = xml.text(assert(xml.find(el, "faultstring")))
  end
  return r
end

-- The simulator's ServiceContent morefs ({sessionManager = "SessionManager", ...}):
-- vCenter and ESXi name them differently.
local contents = setmetatable({}, { __mode = "k" })
local function content(sim)
  if not contents[sim] then
    local r = assert(call(sim, nil, '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">'
      .. "ServiceInstance</_this></RetrieveServiceContent>"))
    local t = {}
    for _, el in ipairs(xml.children(assert(xml.find(r.el, "returnval")))) do
      if xml.attr(el, "type") then t[el.name] = xml.text(el) end
    end
    contents[sim] = t
  end
  return contents[sim]
end

local function login(sim, session, user, password)
  return call(sim, session, ([[<Login xmlns="urn:vim25"><_this type="SessionManager">%s</_this>]]
    .. "<userName>%s</userName><password>%s</password></Login>"):format(content(sim).sessionManager, user, password))
end

local function props(sim, session, kind, ref, paths)
  local p = {}
  for _, path in ipairs(paths) do p[#p + 1] = "<pathSet>" .. path .. "</pathSet>" end
  return call(sim, session, ([[<RetrievePropertiesEx xmlns="urn:vim25">]]
    .. [[<_this type="PropertyCollector">%s</_this><specSet><propSet><type>%s</type>%s</propSet>]]
    .. [[<objectSet><obj type="%s">%s</obj></objectSet></specSet><options/></RetrievePropertiesEx>]])
    :format(content(sim).propertyCollector, kind, table.concat(p), kind, xml.escape(ref)))
end

-- {name = val element} of the first object in a RetrievePropertiesEx response.
local function propset(r)
  local out = {}
  local obj = xml.find(assert(xml.find(r.el, "returnval"), "no returnval"), "objects")
  for _, ps in ipairs(xml.children(obj, "propSet")) do
    out[xml.text(xml.find(ps, "name"))] = xml.find(ps, "val")
  end
  return out
end

local function vm_call(sim, session, method, ref, inner)
  return call(sim, session, ('<%s xmlns="urn:vim25"><_this type="VirtualMachine">%s</_this>%s</%s>')
    :format(method, ref, inner or "", method))
end

-- Polls f() until it returns a truthy value (state changes the simulator
-- makes on its own clock); fails after `secs`.
local function eventually(secs, f)
  local deadline = runtime.now() + secs
  while true do
    local v = f()
    if v then return v end
    assert(runtime.now() < deadline, "condition not met in time")
    runtime.sleep(0.05)
  end
end

local function vm_named(sim, name)
  for _, vm in ipairs(sim:vms()) do
    if vm.name == name then return vm end
  end
end

describe("vcsim peer #vsphere", function()
  local sim

  setup(function()
    sim = vcsim.start({ username = "admin", password = "s3cret", guest_ip = "10.0.0.42", guest_ip_delay = 0.2 })
  end)

  teardown(function()
    if sim then sim:stop() end
  end)

  it("listens on 127.0.0.1 and accepts only the configured login", function()
    assert.matches("^http://127%.0%.0%.1:%d+/sdk$", sim.url)
    assert.equal("127.0.0.1:" .. sim.port, sim.server)
    local bad = assert(login(sim, http.session(), "admin", "wrong"))
    assert.equal(500, bad.status)
    assert.equal("InvalidLogin", bad.fault)
    local s = http.session()
    local ok = assert(login(sim, s, "admin", "s3cret"))
    assert.equal(200, ok.status)
    assert.equal("LoginResponse", ok.el.name)
    assert.equal("admin", xml.text(xml.find(xml.find(ok.el, "returnval"), "userName")))
    assert.matches("vmware_soap_session=", ok.headers["set-cookie"])
  end)

  it("records PutUsbScanCodes on a running VM and refuses it on a stopped one", function()
    local s = http.session()
    assert.equal(200, login(sim, s, "admin", "s3cret").status)
    local vm = assert(vm_named(sim, "DC0_C0_RP0_VM0"))
    assert.equal("poweredOn", vm.power)
    local r = assert(vm_call(sim, s, "PutUsbScanCodes", vm.ref,
      "<spec><keyEvents><usbHidCode>67043328</usbHidCode><modifiers><leftShift>true</leftShift></modifiers>"
      .. "</keyEvents><keyEvents><usbHidCode>2621440</usbHidCode></keyEvents></spec>"))
    assert.equal(200, r.status)
    assert.equal("2", xml.text(xml.find(r.el, "returnval")))
    local events = sim:keys()[vm.ref]
    assert.equal(2, #events)
    assert.equal(67043328, events[1].usbHidCode)
    assert.is_true(events[1].modifiers.leftShift)
    assert.is_false(events[1].modifiers.leftControl)
    assert.equal(2621440, events[2].usbHidCode)
    assert.is_false(events[2].modifiers.leftShift)

    -- without a session: vcsim's own NotAuthenticated, nothing recorded
    local anon = assert(vm_call(sim, nil, "PutUsbScanCodes", vm.ref,
      "<spec><keyEvents><usbHidCode>1</usbHidCode></keyEvents></spec>"))
    assert.equal("NotAuthenticated", anon.fault)
    assert.equal(2, #sim:keys()[vm.ref])

    local off = assert(vm_named(sim, "DC0_C0_RP0_VM1"))
    assert.equal(200, vm_call(sim, s, "PowerOffVM_Task", off.ref).status)
    local refused = assert(vm_call(sim, s, "PutUsbScanCodes", off.ref,
      "<spec><keyEvents><usbHidCode>1</usbHidCode></keyEvents></spec>"))
    assert.equal(500, refused.status)
    assert.equal("InvalidPowerState", refused.fault)
    assert.is_nil(sim:keys()[off.ref])
  end)

  it("exports a stopped VM through an HttpNfcLease serving the disk's bytes", function()
    local s = http.session()
    assert.equal(200, login(sim, s, "admin", "s3cret").status)
    local vm = assert(vm_named(sim, "DC0_H0_VM1"))
    assert.equal("InvalidPowerState", vm_call(sim, s, "ExportVm", vm.ref).fault)
    assert.equal(200, vm_call(sim, s, "PowerOffVM_Task", vm.ref).status)

    -- the model's disks are [LocalDS_0] <vm>/disk1.vmdk; a PUT there sets their bytes
    local data = hash.random(300000)
    local put = assert(http.request({
      method = "PUT", body = data, retries = 0,
      url = sim.base .. "/folder/DC0_H0_VM1/disk1.vmdk?dcPath=DC0&dsName=LocalDS_0",
    }))
    assert.equal(200, put.status)

    local r = assert(vm_call(sim, s, "ExportVm", vm.ref))
    assert.equal(200, r.status)
    local ret = xml.find(r.el, "returnval")
    assert.equal("HttpNfcLease", xml.attr(ret, "type"))
    local lease = xml.text(ret)
    local early = assert(http.request({ url = ("%s/nfc/%s/disk-0.vmdk"):format(sim.base, lease),
      ok_status = true, retries = 0 }))
    -- 503 while initializing (the first 300 ms), as a real lease refuses early transfers
    assert.is_truthy(early.status == 503 or early.status == 200)

    -- WaitForUpdatesEx sees the lease go initializing -> ready
    local pc = content(sim).propertyCollector
    local f = assert(call(sim, s, ([[<CreateFilter xmlns="urn:vim25"><_this type="PropertyCollector">%s</_this>]]
      .. [[<spec><propSet><type>HttpNfcLease</type><pathSet>state</pathSet></propSet><objectSet>]]
      .. [[<obj type="HttpNfcLease">%s</obj></objectSet></spec><partialUpdates>false</partialUpdates>]]
      .. [[</CreateFilter>]]):format(pc, lease)))
    assert.equal(200, f.status)
    local states, version = {}, ""
    for _ = 1, 10 do
      local u = assert(call(sim, s, ([[<WaitForUpdatesEx xmlns="urn:vim25"><_this type="PropertyCollector">%s]]
        .. [[</_this><version>%s</version><options><maxWaitSeconds>5</maxWaitSeconds></options>]]
        .. [[</WaitForUpdatesEx>]]):format(pc, version)))
      local rv = assert(xml.find(u.el, "returnval"), "WaitForUpdatesEx timed out")
      version = xml.text(xml.find(rv, "version"))
      for _, filter_set in ipairs(xml.children(rv, "filterSet")) do
        for _, obj_set in ipairs(xml.children(filter_set, "objectSet")) do
          for _, cs in ipairs(xml.children(obj_set, "changeSet")) do
            states[#states + 1] = xml.text(xml.find(cs, "val"))
          end
        end
      end
      if states[#states] == "ready" then break end
    end
    assert.equal("ready", states[#states])
    if early.status == 503 then assert.equal("initializing", states[1]) end
    local info = propset(assert(props(sim, s, "HttpNfcLease", lease, { "info" }))).info
    local urls = xml.children(info, "deviceUrl")
    assert.equal(1, #urls)
    assert.equal("true", xml.text(xml.find(urls[1], "disk")))
    assert.equal(tostring(#data), xml.text(xml.find(urls[1], "fileSize")))
    local url = xml.text(xml.find(urls[1], "url"))
    assert.matches("^https://%*/nfc/", url)
    local got = assert(http.request({ url = sim.base .. url:match("^https://%*(/.*)$"), retries = 0 }))
    assert.equal(200, got.status)
    assert.equal(hash.digest("sha256", data), hash.digest("sha256", got.body))

    local done = assert(call(sim, s, ('<HttpNfcLeaseComplete xmlns="urn:vim25"><_this type="HttpNfcLease">%s'
      .. "</_this></HttpNfcLeaseComplete>"):format(lease)))
    assert.equal(200, done.status)
    local gone = assert(http.request({ url = sim.base .. url:match("^https://%*(/.*)$"), ok_status = true,
      retries = 0 }))
    assert.equal(404, gone.status)
  end)

  it("keeps a created VM's disk at [ds] <vm>/<vm>.vmdk: export serves a pattern, then what was PUT", function()
    local s = http.session()
    assert.equal(200, login(sim, s, "admin", "s3cret").status)
    local function find(path)
      local r = assert(call(sim, s, ('<FindByInventoryPath xmlns="urn:vim25"><_this type="SearchIndex">%s</_this>'
        .. "<inventoryPath>%s</inventoryPath></FindByInventoryPath>"):format(content(sim).searchIndex, path)))
      return xml.text(assert(xml.find(r.el, "returnval"), path))
    end
    local create = assert(call(sim, s, ([[<CreateVM_Task xmlns="urn:vim25"><_this type="Folder">%s</_this>]]
      .. "<config><name>capil-build</name><guestId>otherLinux64Guest</guestId><files><vmPathName>[LocalDS_0]"
      .. [[</vmPathName></files><numCPUs>1</numCPUs><memoryMB>512</memoryMB>]]
      .. [[<deviceChange><operation>add</operation><device xsi:type="ParaVirtualSCSIController"><key>-100</key>]]
      .. [[<busNumber>0</busNumber><sharedBus>noSharing</sharedBus></device></deviceChange>]]
      .. [[<deviceChange><operation>add</operation><fileOperation>create</fileOperation>]]
      .. [[<device xsi:type="VirtualDisk"><key>-101</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo">]]
      .. [[<fileName></fileName><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned></backing>]]
      .. [[<controllerKey>-100</controllerKey><unitNumber>0</unitNumber><capacityInKB>4096</capacityInKB>]]
      .. [[</device></deviceChange></config><pool type="ResourcePool">%s</pool></CreateVM_Task>]])
      :format(find("DC0/vm"), find("DC0/host/DC0_H0/Resources"))))
    assert.equal(200, create.status)
    local vm = assert(vm_named(sim, "capil-build"))
    assert.equal("poweredOff", vm.power)
    local dev = propset(assert(props(sim, s, "VirtualMachine", vm.ref, { "config.hardware.device" })))
    local disk
    for _, d in ipairs(xml.children(dev["config.hardware.device"])) do
      if xml.xsi_type(d) == "VirtualDisk" then disk = d end
    end
    assert.equal("[LocalDS_0] capil-build/capil-build.vmdk",
      xml.text(xml.find(xml.find(assert(disk), "backing"), "fileName")))

    -- exports the lease's only disk once ready; returns its bytes and ends the lease
    local function export(finish)
      local lease = xml.text(xml.find(assert(vm_call(sim, s, "ExportVm", vm.ref)).el, "returnval"))
      local info = eventually(5, function()
        local p = propset(assert(props(sim, s, "HttpNfcLease", lease, { "state", "info" })))
        return xml.text(p.state) == "ready" and p.info
      end)
      assert.equal("4096", xml.text(xml.find(info, "totalDiskCapacityInKB")))
      local url = xml.text(xml.find(xml.find(info, "deviceUrl"), "url"))
      local got = assert(http.request({ url = sim.base .. url:match("^https://%*(/.*)$"), retries = 0 }))
      assert.equal(200, call(sim, s, ('<%s xmlns="urn:vim25"><_this type="HttpNfcLease">%s</_this></%s>')
        :format(finish, lease, finish)).status)
      return got.body
    end
    local empty = export("HttpNfcLeaseAbort")
    assert.equal(1048576, #empty) -- vcsim's disks are empty files: a fixed pattern stands in
    assert.equal(string.char(0, 1, 2, 250, 0, 1), empty:sub(1, 3) .. empty:sub(251, 253))

    local data = hash.random(200000)
    assert.equal(200, assert(http.request({ method = "PUT", body = data, retries = 0,
      url = sim.base .. "/folder/capil-build/capil-build.vmdk?dcPath=DC0&dsName=LocalDS_0" })).status)
    assert.equal(hash.digest("sha256", data), hash.digest("sha256", export("HttpNfcLeaseComplete")))

    assert.equal(200, vm_call(sim, s, "Destroy_Task", vm.ref).status)
    assert.is_nil(vm_named(sim, "capil-build"))
  end)

  it("reports the guest IP after power-on, behind link-local addresses", function()
    local s = http.session()
    assert.equal(200, login(sim, s, "admin", "s3cret").status)
    local vm = assert(vm_named(sim, "DC0_H0_VM0"))
    assert.is_nil(vm.ip) -- running since start: vcsim's state, no IP
    assert.equal(200, vm_call(sim, s, "PowerOffVM_Task", vm.ref).status)
    assert.equal(200, vm_call(sim, s, "PowerOnVM_Task", vm.ref).status)
    local p = eventually(5, function()
      local ps = propset(assert(props(sim, s, "VirtualMachine", vm.ref, { "guest.ipAddress", "guest.net" })))
      return ps["guest.ipAddress"] and ps
    end)
    assert.equal("10.0.0.42", xml.text(p["guest.ipAddress"]))
    local ips = {}
    for _, a in ipairs(xml.children(xml.find(p["guest.net"], "GuestNicInfo"), "ipAddress")) do
      ips[#ips + 1] = xml.text(a)
    end
    assert.same({ "fe80::250:56ff:fe00:1", "169.254.7.7", "10.0.0.42" }, ips)
    assert.equal(200, vm_call(sim, s, "PowerOffVM_Task", vm.ref).status)
    assert.is_nil(vm_named(sim, "DC0_H0_VM0").ip)
  end)

  it("counts SOAP calls by method until reset", function()
    sim:reset_calls()
    assert.same({}, sim:calls())
    local s = http.session()
    login(sim, s, "admin", "s3cret")
    call(sim, s, '<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>')
    call(sim, s, '<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>')
    assert.same({ Login = 1, CurrentTime = 2 }, sim:calls())
  end)

  it("drops sessions: the next call is NotAuthenticated, RetrievePropertiesEx a missingSet", function()
    local s = http.session()
    assert.equal(200, login(sim, s, "admin", "s3cret").status)
    local now = '<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>'
    assert.equal(200, call(sim, s, now).status)
    assert.is_true(sim:drop_sessions() >= 1)
    local r = assert(call(sim, s, now))
    assert.equal(500, r.status)
    assert.equal("NotAuthenticated", r.fault)
    local rp = assert(props(sim, s, "VirtualMachine", sim:vms()[1].ref, { "name" }))
    assert.equal(200, rp.status)
    local missing = xml.find(xml.find(xml.find(rp.el, "returnval"), "objects"), "missingSet")
    assert.equal("NotAuthenticated", xml.xsi_type(xml.find(xml.find(missing, "fault"), "fault")))
    assert.equal(200, login(sim, s, "admin", "s3cret").status) -- a new login works
    assert.equal(200, call(sim, s, now).status)
  end)

  it("plays injected connection resets and faults, then answers normally", function()
    local s = http.session()
    assert.equal(200, login(sim, s, "admin", "s3cret").status)
    local now = '<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>'
    sim:reset_calls()
    sim:inject({ method = "CurrentTime", action = "reset" })
    local r, err, code = call(sim, nil, now)
    assert.is_nil(r, err)
    assert.equal("ECONNRESET", code)
    -- libcurl resends once a request whose kept-alive connection died
    -- without a reply: on a session it takes two resets to reach the caller
    sim:inject({ method = "CurrentTime", action = "reset", count = 2 })
    local r2, _, code2 = call(sim, s, now)
    assert.is_nil(r2)
    assert.equal("ECONNRESET", code2)
    assert.equal(3, sim:calls().CurrentTime)
    sim:inject({ method = "CurrentTime", action = "fault", fault = "NotAuthenticated", count = 2 })
    for _ = 1, 2 do
      local f = assert(call(sim, s, now))
      assert.equal(500, f.status)
      assert.equal("NotAuthenticated", f.fault)
      assert.equal("The session is not authenticated.", f.faultstring)
    end
    assert.equal(200, call(sim, s, now).status)
    sim:inject({ method = "CurrentTime", action = "status", status = 503 })
    assert.equal(503, call(sim, s, now).status)
    assert.equal(200, call(sim, s, now).status)
    assert.equal(8, sim:calls().CurrentTime)
    assert.has_error(function() sim:inject({ method = "CurrentTime", action = "fault", fault = "NoSuchFault" }) end)
  end)

  it("lists the inventory's VMs", function()
    local vms = sim:vms()
    assert.is_true(#vms >= 4)
    for _, vm in ipairs(vms) do
      assert.matches("^vm%-%d+$", vm.ref)
      assert.is_string(vm.name)
      assert.is_boolean(vm.template)
      assert.is_truthy(({ poweredOn = true, poweredOff = true, suspended = true })[vm.power])
    end
  end)
end)

describe("vcsim peer as restricted ESXi over TLS #vsphere", function()
  local sim

  setup(function()
    sim = vcsim.start({ tls = true, esx = true, restricted = true })
  end)

  teardown(function()
    if sim then sim:stop() end
  end)

  it("verifies with its CA file and fails without it or with another", function()
    assert.matches("^https://127%.0%.0%.1:%d+/sdk$", sim.url)
    local about = '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance'
      .. "</_this></RetrieveServiceContent>"
    local r = assert(call(sim, nil, about))
    assert.equal(200, r.status)
    assert.equal("HostAgent", xml.text(xml.find(xml.find(xml.find(r.el, "returnval"), "about"), "apiType")))
    local _, _, code = call(sim, nil, about, { ca_file = vcsim.wrong_ca() })
    assert.equal("TLS", code)
    local _, _, code2 = http.request({ url = sim.url, body = vcsim.envelope(about), retries = 0 })
    assert.equal("TLS", code2)
  end)

  it("refuses write methods with RestrictedVersion, reads still work", function()
    local s = http.session()
    assert.equal(200, login(sim, s, "root", "any").status)
    local create = assert(call(sim, s, [[<CreateVM_Task xmlns="urn:vim25"><_this type="Folder">ha-folder-vm</_this>]]
      .. [[<config><name>nope</name><guestId>otherGuest</guestId><files><vmPathName>[LocalDS_0]</vmPathName>]]
      .. [[</files></config><pool type="ResourcePool">ha-root-pool</pool></CreateVM_Task>]]))
    assert.equal(500, create.status)
    assert.equal("RestrictedVersion", create.fault)
    assert.equal("Current license or ESXi version prohibits execution of the requested operation.",
      create.faultstring)
    local vm = sim:vms()[1]
    assert.equal("RestrictedVersion", vm_call(sim, s, "PowerOffVM_Task", vm.ref).fault)
    assert.equal("RestrictedVersion", vm_call(sim, s, "PutUsbScanCodes", vm.ref,
      "<spec><keyEvents><usbHidCode>1</usbHidCode></keyEvents></spec>").fault)
    local p = propset(assert(props(sim, s, "VirtualMachine", vm.ref, { "name", "runtime.powerState" })))
    assert.equal(vm.name, xml.text(p.name))
    assert.equal("poweredOn", xml.text(p["runtime.powerState"]))
    -- without a session, authentication comes first
    assert.equal("NotAuthenticated", vm_call(sim, nil, "PowerOffVM_Task", vm.ref).fault)
  end)
end)

describe("vcsim peer lifetime #vsphere", function()
  it("stop() ends the process and removes its directory and datastore", function()
    local sim = vcsim.start()
    local pid, dir = sim.pid, sim.dir
    assert.is_true(proc.alive(pid))
    local ds = fs.list(dir .. "/tmp")
    assert.equal(1, #ds)
    assert.matches("^govcsim%-", ds[1])
    sim.handle.stop() -- SIGTERM: the simulator removes its datastore itself
    assert.is_false(proc.alive(pid))
    assert.same({}, fs.list(dir .. "/tmp"))
    sim:stop()
    assert.is_false(fs.exists(dir))
    sim:stop() -- idempotent
  end)
end)
