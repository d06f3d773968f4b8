-- spec/vim25_spec.lua — the vim25 SOAP client: serialisation and parsing
-- (unit), then sessions, properties, inventory, tasks, waits, re-login,
-- retries, keep-alive, logout and TLS against the vSphere simulator.
local vim25 = require("capil.vsphere.vim25")
local xml = require("capil.sys.xml")
local runtime = require("capil.core.runtime")
local proc = require("capil.sys.proc")

local ref, obj = vim25.ref, vim25.obj

-- Position of `needle` in `s` (plain), failing the test when absent.
local function pos(s, needle)
  local i = s:find(needle, 1, true)
  assert(i, ("'%s' not found in:\n%s"):format(needle, s))
  return i
end

local function reply(body)
  return '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    .. ' xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    .. "<soapenv:Body>" .. body .. "</soapenv:Body></soapenv:Envelope>"
end

local XSI_LOCAL = 'xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"'

describe("vim25 values and type data #vsphere #unit", function()
  it("makes Refs that compare and print by type and value", function()
    local a, b = ref("VirtualMachine", "vm-57"), ref("VirtualMachine", "vm-57")
    assert.are.equal(a, b)
    assert.are_not.equal(a, ref("VirtualMachine", "vm-58"))
    assert.are_not.equal(a, ref("HostSystem", "vm-57"))
    assert.are.equal("VirtualMachine:vm-57", tostring(a))
    assert.is_true(vim25.is_ref(a))
    assert.is_false(vim25.is_ref({ type = "VirtualMachine", value = "vm-57" }))
  end)

  it("lists nil, arrays and single values", function()
    assert.are.same({}, vim25.list(nil))
    local arr = { 1, 2 }
    assert.are.equal(arr, vim25.list(arr))
    local one = obj("GuestNicInfo", { connected = true })
    assert.are.same({ one }, vim25.list(one))
    local r = ref("Task", "task-1")
    assert.are.equal(r, vim25.list(r)[1])
    assert.are.same({ "x" }, vim25.list("x"))
  end)

  it("knows every vim25 method name, sorted", function()
    local m = vim25.methods()
    assert.is_true(#m > 900)
    for i = 2, #m do assert.is_true(m[i - 1] < m[i]) end
    local set = {}
    for _, n in ipairs(m) do set[n] = true end
    for _, n in ipairs({ "PutUsbScanCodes", "CreateVM_Task", "WaitForUpdatesEx", "CurrentTime", "ExportVm" }) do
      assert.is_true(set[n], n)
    end
  end)
end)

describe("vim25 serialisation #vsphere #unit", function()
  local vm = ref("VirtualMachine", "vm-57")

  it("writes the envelope with _this and parameters in request order", function()
    local env = vim25.envelope("Login", ref("SessionManager", "SessionManager"),
      { password = "pw", userName = "admin" })
    local root = assert(xml.parse(env))
    assert.are.equal("Envelope", root.name)
    local body = xml.find(root, "Body", "http://schemas.xmlsoap.org/soap/envelope/")
    local login = xml.find(body, "Login", "urn:vim25")
    local names = {}
    for _, c in ipairs(xml.children(login)) do names[#names + 1] = c.name end
    assert.are.same({ "_this", "userName", "password" }, names)
    assert.are.equal("SessionManager", xml.attr(login[1], "type"))
  end)

  it("orders fields by the WSDL sequence, not the Lua table", function()
    local spec = obj("VirtualMachineConfigSpec", {
      deviceChange = {}, memoryMB = 2048, numCPUs = 2, files = obj("VirtualMachineFileInfo", { vmPathName = "[ds]" }),
      guestId = "otherLinux64Guest", name = "build-vm1",
      extraConfig = { obj("OptionValue", { key = "a", value = "1" }) },
    })
    local env = vim25.envelope("ReconfigVM_Task", vm, { spec = spec })
    local order = { "<name>", "<guestId>", "<files>", "<numCPUs>", "<memoryMB>", "<extraConfig>" }
    for i = 2, #order do
      assert.is_true(pos(env, order[i - 1]) < pos(env, order[i]), order[i - 1] .. " before " .. order[i])
    end
    -- inside a device: key, backing, controllerKey, unitNumber, capacityInKB (base fields first)
    env = vim25.envelope("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", { deviceChange = {
      obj("VirtualDeviceConfigSpec", { fileOperation = "create", operation = "add", device = obj("VirtualDisk", {
        capacityInKB = 4194304, unitNumber = 0, controllerKey = -100, key = -101,
        backing = obj("VirtualDiskFlatVer2BackingInfo", { thinProvisioned = true, diskMode = "persistent", fileName = "" }),
      }) }) } }) })
    local seq = { "<operation>", "<fileOperation>", "<device ", "<key>", "<backing ", "<fileName>", "<diskMode>",
                  "<thinProvisioned>", "<controllerKey>", "<unitNumber>", "<capacityInKB>" }
    for i = 2, #seq do
      assert.is_true(pos(env, seq[i - 1]) < pos(env, seq[i]), seq[i - 1] .. " before " .. seq[i])
    end
  end)

  it("writes xsi:type where the value's type differs from the declared one", function()
    local env = vim25.envelope("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", { deviceChange = {
      obj("VirtualDeviceConfigSpec", { operation = "add", device = obj("ParaVirtualSCSIController", {
        key = -100, busNumber = 0, sharedBus = "noSharing" }) }),
      obj("VirtualDeviceConfigSpec", { operation = "add", device = obj("VirtualVmxnet3", {
        key = -102, backing = obj("VirtualEthernetCardNetworkBackingInfo", { deviceName = "VM Network" }) }) }),
    } }) })
    pos(env, '<device xsi:type="ParaVirtualSCSIController">')
    pos(env, '<device xsi:type="VirtualVmxnet3">')
    pos(env, '<backing xsi:type="VirtualEthernetCardNetworkBackingInfo">')
    -- declared and actual agree: no xsi:type
    assert.is_nil(env:find('<deviceChange xsi:type', 1, true))
    assert.is_nil(env:find('<spec xsi:type', 1, true))
    -- ImportSpec as its subclass
    env = vim25.envelope("ImportVApp", ref("ResourcePool", "resgroup-26"), {
      spec = obj("VirtualMachineImportSpec", { configSpec = obj("VirtualMachineConfigSpec", { name = "x" }) }),
      folder = ref("Folder", "folder-3") })
    pos(env, '<spec xsi:type="VirtualMachineImportSpec"><configSpec><name>x</name></configSpec></spec>')
    pos(env, '<folder type="Folder">folder-3</folder>')
  end)

  it("always types OptionValue.value as xsd:string, and primitives in anyType slots", function()
    local env = vim25.envelope("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", { extraConfig = {
      obj("OptionValue", { key = "guestinfo.a", value = "x" }),
      obj("OptionValue", { key = "guestinfo.n", value = 42 }),
      obj("OptionValue", { key = "guestinfo.b", value = true }),
    } }) })
    pos(env, '<value xsi:type="xsd:string">x</value>')
    pos(env, '<value xsi:type="xsd:string">42</value>')
    pos(env, '<value xsi:type="xsd:string">true</value>')
    -- PropertyChange.val is anyType: numbers and booleans get their xsd type
    local function val(v)
      return vim25.envelope("HttpNfcLeaseAbort", ref("HttpNfcLease", "l"), { fault = obj("LocalizedMethodFault", {
        fault = obj("SystemError", { reason = "r", faultCause = nil }), localizedMessage = v }) })
    end
    pos(val("m"), "<localizedMessage>m</localizedMessage>")
    local arr = vim25.envelope("RetrievePropertiesEx", ref("PropertyCollector", "pc"), { specSet = {
      obj("PropertyFilterSpec", { propSet = { { type = "VirtualMachine", pathSet = { "name", "config" } } },
        objectSet = { { obj = vm } } }) }, options = {} })
    pos(arr, "<pathSet>name</pathSet><pathSet>config</pathSet>")
    pos(arr, '<obj type="VirtualMachine">vm-57</obj>')
    pos(arr, "<options></options>")
  end)

  it("types numbers and booleans in anyType slots as xsd:int, xsd:long, xsd:double, xsd:boolean", function()
    local function ov(v)
      -- OptionValue forces strings, so use a PropertyChange-like anyType: ArrayUpdateSpec.removeKey
      return vim25.envelope("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", { vAppConfig =
        obj("VmConfigSpec", { product = { obj("VAppProductSpec", { operation = "remove", removeKey = v }) } }) }) })
    end
    pos(ov(7), '<removeKey xsi:type="xsd:int">7</removeKey>')
    pos(ov(1 << 40), '<removeKey xsi:type="xsd:long">1099511627776</removeKey>')
    pos(ov(true), '<removeKey xsi:type="xsd:boolean">true</removeKey>')
    pos(ov(1.5), '<removeKey xsi:type="xsd:double">1.5</removeKey>')
    pos(ov("k"), '<removeKey xsi:type="xsd:string">k</removeKey>')
    pos(ov(ref("VirtualMachine", "vm-1")), '<removeKey xsi:type="ManagedObjectReference" type="VirtualMachine">vm-1</removeKey>')
  end)

  it("escapes morefs and strings", function()
    local ds = ref("Datastore", "/tmp/govcsim DC0 <x>&'\"@folder-5")
    local env = vim25.envelope("DeleteDatastoreFile_Task", ref("FileManager", "FileManager"),
      { name = "[LocalDS_0] a&b <c>.iso", datacenter = ds })
    local root = assert(xml.parse(env))
    local call = xml.find(xml.find(root, "Body"), "DeleteDatastoreFile_Task")
    assert.are.equal("[LocalDS_0] a&b <c>.iso", xml.text(xml.find(call, "name")))
    local dc = xml.find(call, "datacenter")
    assert.are.equal("Datastore", xml.attr(dc, "type"))
    assert.are.equal("/tmp/govcsim DC0 <x>&'\"@folder-5", xml.text(dc))
    local lease = ref("HttpNfcLease", "session[51f2-ab]17d2 x")
    root = assert(xml.parse(vim25.envelope("HttpNfcLeaseComplete", lease)))
    local this = xml.find(xml.find(xml.find(root, "Body"), "HttpNfcLeaseComplete"), "_this")
    assert.are.equal("session[51f2-ab]17d2 x", xml.text(this))
  end)

  it("raises on unknown parameters, fields, types, methods and mistyped values", function()
    assert.has_error(function() vim25.envelope("PowerOnVM_Task", vm, { hots = ref("HostSystem", "h") }) end,
      "vim25: PowerOnVM_Task: unknown parameter 'hots'")
    assert.has_error(function()
      vim25.envelope("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", { numCpus = 2 }) })
    end, "vim25: ReconfigVM_Task.spec: VirtualMachineConfigSpec has no field 'numCpus'")
    assert.has_error(function()
      vim25.envelope("ReconfigVM_Task", vm, { spec = obj("NoSuchSpec", {}) })
    end)
    assert.has_error(function() vim25.envelope("NoSuchMethod", vm) end, "vim25: unknown method 'NoSuchMethod'")
    assert.has_error(function()
      vim25.envelope("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", { numCPUs = "2" }) })
    end, "vim25: ReconfigVM_Task.spec.numCPUs: int expected, got string")
    assert.has_error(function()
      vim25.envelope("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", { numCPUs = 1.5 }) })
    end)
    assert.has_error(function() vim25.envelope("PowerOnVM_Task", "vm-57") end)
  end)

  it("sends methods without parameter data from ordered pairs", function()
    local env = vim25.envelope("RenameDatastore", ref("Datastore", "ds-1"), { { "newName", "b" } })
    pos(env, '<RenameDatastore xmlns="urn:vim25"><_this type="Datastore">ds-1</_this><newName>b</newName></RenameDatastore>')
    assert.has_error(function() vim25.envelope("RenameDatastore", ref("Datastore", "ds-1"), { newName = "b" }) end)
  end)
end)

describe("vim25 parsing #vsphere #unit", function()
  it("resolves xsi:type by namespace URI (the simulator's XMLSchema-instance prefix)", function()
    local body = reply('<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects>'
      .. '<obj type="Task">task-68</obj>'
      .. '<propSet><name>info.state</name><val ' .. XSI_LOCAL .. ' XMLSchema-instance:type="TaskInfoState">success</val></propSet>'
      .. '<propSet><name>info.result</name><val ' .. XSI_LOCAL
      .. ' XMLSchema-instance:type="ManagedObjectReference" type="VirtualMachine">vm-69</val></propSet>'
      .. '<propSet><name>n</name><val ' .. XSI_LOCAL .. ' XMLSchema-instance:type="xsd:int">42</val></propSet>'
      .. '<propSet><name>b</name><val xsi:type="xsd:boolean">true</val></propSet>'
      .. '<propSet><name>s</name><val xsi:type="xsd:string">007</val></propSet>'
      .. '</objects></returnval></RetrievePropertiesExResponse>')
    local r = vim25.parse_reply("RetrievePropertiesEx", body)
    assert.are.equal("RetrieveResult", r._type)
    assert.are.equal(1, #r.objects)
    local o = r.objects[1]
    assert.are.equal(ref("Task", "task-68"), o.obj)
    local p = {}
    for _, ps in ipairs(o.propSet) do p[ps.name] = ps.val end
    assert.are.equal("success", p["info.state"])
    assert.are.equal(ref("VirtualMachine", "vm-69"), p["info.result"])
    assert.are.equal(42, p.n)
    assert.are.equal("integer", math.type(p.n))
    assert.are.equal(true, p.b)
    assert.are.equal("007", p.s)
  end)

  it("unwraps ArrayOf values and converts fields by their declared types", function()
    local v = vim25.decode('<val ' .. XSI_LOCAL .. ' XMLSchema-instance:type="ArrayOfGuestNicInfo">'
      .. '<GuestNicInfo><network>VM Network</network><ipAddress>10.0.0.42</ipAddress><macAddress>00:0c:29:5d:37:32</macAddress>'
      .. '<connected>true</connected><deviceConfigId>204</deviceConfigId></GuestNicInfo>'
      .. '<GuestNicInfo><connected>false</connected><deviceConfigId>4000</deviceConfigId></GuestNicInfo></val>')
    assert.are.equal(2, #v)
    assert.are.same({ _type = "GuestNicInfo", network = "VM Network", ipAddress = { "10.0.0.42" },
      macAddress = "00:0c:29:5d:37:32", connected = true, deviceConfigId = 204 }, v[1])
    assert.is_false(v[2].connected)
    local s = vim25.decode('<val xmlns:x="http://www.w3.org/2001/XMLSchema-instance" x:type="ArrayOfString">'
      .. '<string>a</string><string>b</string></val>')
    assert.are.same({ "a", "b" }, s)
    local refs = vim25.decode('<val xmlns:x="http://www.w3.org/2001/XMLSchema-instance" x:type="ArrayOfManagedObjectReference">'
      .. '<ManagedObjectReference type="HostSystem">host-1</ManagedObjectReference></val>')
    assert.are.equal(ref("HostSystem", "host-1"), refs[1])
    local ints = vim25.decode('<val xmlns:x="http://www.w3.org/2001/XMLSchema-instance" x:type="ArrayOfInt">'
      .. '<int>1</int><int>-2</int></val>')
    assert.are.same({ 1, -2 }, ints)
  end)

  it("reads device subclasses by their xsi:type, unknown ones by their declared base", function()
    local info = vim25.decode('<config xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><hardware><numCPU>2</numCPU>'
      .. '<device xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo">'
      .. '<fileName>[ds] vm/vm.vmdk</fileName><diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned></backing>'
      .. '<controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>4194304</capacityInKB></device>'
      .. '<device xsi:type="VirtualKeyboard"><key>600</key><controllerKey>300</controllerKey><futureField>x</futureField></device>'
      .. '</hardware></config>', "VirtualMachineConfigInfo")
    local d = info.hardware.device
    assert.are.equal(2, #d)
    assert.are.equal("VirtualDisk", d[1]._type)
    assert.are.equal(4194304, d[1].capacityInKB)
    assert.is_true(d[1].backing.thinProvisioned)
    assert.are.equal("VirtualKeyboard", d[2]._type)
    assert.are.equal(600, d[2].key)
    assert.are.equal("x", d[2].futureField)
    -- a parsed value goes back out unchanged, in its order
    local env = vim25.envelope("ReconfigVM_Task", ref("VirtualMachine", "vm-1"), { spec = obj("VirtualMachineConfigSpec",
      { deviceChange = { obj("VirtualDeviceConfigSpec", { operation = "remove", device = d[2] }) } }) })
    pos(env, '<device xsi:type="VirtualKeyboard"><key>600</key><controllerKey>300</controllerKey>'
      .. '<futureField>x</futureField></device>')
  end)

  it("round-trips an ImportSpec from CreateImportSpec into ImportVApp", function()
    local r = vim25.parse_reply("CreateImportSpec", reply('<CreateImportSpecResponse xmlns="urn:vim25"><returnval>'
      .. '<importSpec ' .. XSI_LOCAL .. ' XMLSchema-instance:type="VirtualMachineImportSpec"><configSpec>'
      .. '<name>imported1</name><memoryMB>512</memoryMB><deviceChange><operation>add</operation>'
      .. '<device XMLSchema-instance:type="VirtualLsiLogicController"><key>-1</key><busNumber>0</busNumber>'
      .. '<sharedBus>noSharing</sharedBus></device></deviceChange></configSpec>'
      .. '<resPoolEntity type="ResourcePool">resgroup-26</resPoolEntity></importSpec>'
      .. '<fileItem><deviceId>/imported1/disk:0</deviceId><path>small-disk1.vmdk</path><size>65536</size>'
      .. '<cimType>17</cimType><create>false</create></fileItem></returnval></CreateImportSpecResponse>'))
    assert.are.equal("VirtualMachineImportSpec", r.importSpec._type)
    assert.are.equal(65536, r.fileItem[1].size)
    assert.is_false(r.fileItem[1].create)
    local env = vim25.envelope("ImportVApp", ref("ResourcePool", "resgroup-26"), { spec = r.importSpec })
    pos(env, '<spec xsi:type="VirtualMachineImportSpec"><configSpec><name>imported1</name><memoryMB>512</memoryMB>'
      .. '<deviceChange><operation>add</operation><device xsi:type="VirtualLsiLogicController"><key>-1</key>'
      .. '<busNumber>0</busNumber><sharedBus>noSharing</sharedBus></device></deviceChange></configSpec>'
      .. '<resPoolEntity type="ResourcePool">resgroup-26</resPoolEntity></spec>')
  end)

  it("parses SOAP faults with their detail", function()
    local v, f = vim25.parse_reply("Login", reply('<soapenv:Fault><faultcode>ServerFaultCode</faultcode>'
      .. '<faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin">'
      .. '</InvalidLoginFault></detail></soapenv:Fault>'))
    assert.is_nil(v)
    assert.are.same({ type = "InvalidLogin", message = "Login failure", detail = { _type = "InvalidLogin" } }, f)
    v, f = vim25.parse_reply("FindChild", reply('<soapenv:Fault><faultcode>ServerFaultCode</faultcode>'
      .. '<faultstring></faultstring><detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated">'
      .. '<object type="SearchIndex">SearchIndex</object><privilegeId>System.View</privilegeId>'
      .. '</NotAuthenticatedFault></detail></soapenv:Fault>'))
    assert.is_nil(v)
    assert.are.equal("NotAuthenticated", f.type)
    assert.are.equal("object=SearchIndex:SearchIndex, privilegeId=System.View", f.message)
    assert.are.equal(ref("SearchIndex", "SearchIndex"), f.detail.object)
    assert.are.equal("System.View", f.detail.privilegeId)
    -- without xsi:type the element name says it
    v, f = vim25.parse_reply("FindChild", reply('<soapenv:Fault><faultcode>ServerFaultCode</faultcode>'
      .. '<faultstring>gone</faultstring><detail><ManagedObjectNotFoundFault xmlns="urn:vim25">'
      .. '<obj type="Folder">group-x</obj></ManagedObjectNotFoundFault></detail></soapenv:Fault>'))
    assert.is_nil(v)
    assert.are.equal("ManagedObjectNotFound", f.type)
    assert.are.equal(ref("Folder", "group-x"), f.detail.obj)
    -- missing returnval, arrays of returnvals, bad bodies
    assert.is_nil(vim25.parse_reply("FindByInventoryPath", reply('<FindByInventoryPathResponse xmlns="urn:vim25"/>')))
    assert.are.same({}, vim25.parse_reply("RetrieveProperties", reply('<RetrievePropertiesResponse xmlns="urn:vim25"/>')))
    local _, _, err = vim25.parse_reply("Login", "<html>oops</html>")
    assert.matches("not a SOAP envelope", err)
    _, _, err = vim25.parse_reply("Login", "<unclosed")
    assert.matches("unreadable reply", err)
  end)
end)

-- ---------------------------------------------------------------------
-- Against the simulator
-- ---------------------------------------------------------------------

describe("vim25 against the simulator #vsphere", function()
  local vcsim = require("support.vcsim")
  local USER, PASS = "admin", "s3cret-Pa55"
  local sim, vc

  setup(function()
    sim = vcsim.start({ username = USER, password = PASS })
  end)

  teardown(function()
    if vc then vc:logout() end
    if sim then sim:stop() end
  end)

  local function connect(extra)
    local opts = { server = sim.url, username = USER, password = PASS }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return vim25.connect(opts)
  end

  local function session()
    if not vc then vc = assert(connect()) end
    return vc
  end

  it("connects and logs in", function()
    local c = assert(connect())
    assert.are.equal(sim.url, c.url)
    assert.are.equal(sim.server, c.server)
    assert.are.equal("http", c.scheme)
    assert.are.equal("6.5", c.about.apiVersion)
    assert.are.equal(c.content.about, c.about)
    assert.are.equal(ref("Folder", "group-d1"), c.content.rootFolder)
    assert.is_true(vim25.is_ref(c.content.propertyCollector))
    assert.are.equal(1, c.stats.by_method.Login)
    assert.are.equal(1, c.stats.by_method.RetrieveServiceContent)
    assert.are.equal(2, c.stats.calls)
    assert.is_truthy(c.http:cookies().vmware_soap_session)
    -- a server without a scheme: the scheme option
    local c2 = assert(vim25.connect({ server = sim.server, scheme = "http", username = USER, password = PASS }))
    assert.are.equal(sim.url, c2.url)
    assert.is_true(c2:logout())
    assert.is_true(c:logout())
  end)

  it("reports a wrong password as InvalidLogin without the password", function()
    local bad = "wr0ng-Passw0rd!"
    local c, err, code, fault = vim25.connect({ server = sim.url, username = USER, password = bad })
    assert.is_nil(c)
    assert.are.equal("SOAP_FAULT", code)
    assert.matches("InvalidLogin", err)
    assert.is_nil(err:find(bad, 1, true))
    assert.are.equal("InvalidLogin", fault.type)
    assert.is_nil(fault.message:find(bad, 1, true))
  end)

  it("reports a server that is not there", function()
    local port = runtime.free_port()
    local c, err, code = vim25.connect({ server = "127.0.0.1:" .. port, scheme = "http", username = USER,
      password = PASS, timeout = 5 })
    assert.is_nil(c)
    assert.are.equal("ECONNREFUSED", code)
    assert.matches("^vim25%.connect: http://127%.0%.0%.1:" .. port .. "/sdk: ", err)
  end)

  it("finds the default inventory by path", function()
    local c = session()
    local want = {
      ["/DC0"] = ref("Datacenter", "datacenter-2"),
      ["/DC0/vm"] = ref("Folder", "folder-3"),
      ["/DC0/host/DC0_C0"] = ref("ClusterComputeResource", "clustercomputeresource-27"),
      ["/DC0/host/DC0_C0/Resources"] = ref("ResourcePool", "resgroup-26"),
      ["/DC0/host/DC0_H0"] = ref("ComputeResource", "computeresource-23"),
      ["/DC0/network/VM Network"] = ref("Network", "network-7"),
      ["/DC0/network/DC0_DVPG0"] = ref("DistributedVirtualPortgroup", "dvportgroup-13"),
    }
    for path, r in pairs(want) do assert.are.equal(r, c:find(path), path) end
    local h = assert(c:find("/DC0/host/DC0_C0/DC0_C0_H0"))
    assert.are.equal("HostSystem", h.type)
    local ds = assert(c:find("/DC0/datastore/LocalDS_0"))
    assert.are.equal("Datastore", ds.type)
    assert.matches("@folder%-5$", ds.value) -- a local path: / and @ in a moref
    assert.are.equal("LocalDS_0", assert(c:props(ds, "name")).name)
    local r, err, code = c:find("/DC0/vm/no such vm")
    assert.is_nil(r)
    assert.are.equal("vim25.find: /DC0/vm/no such vm: not found", err)
    assert.are.equal("ENOENT", code)
  end)

  it("reads properties of a VM", function()
    local c = session()
    local vm = assert(c:find("/DC0/vm/DC0_H0_VM0"))
    local p = assert(c:props(vm, { "name", "runtime.powerState", "config.hardware.device", "summary.config.numCpu",
      "config.template", "guest.net" }))
    assert.are.equal("DC0_H0_VM0", p.name)
    assert.are.equal("poweredOn", p["runtime.powerState"])
    assert.are.equal("integer", math.type(p["summary.config.numCpu"]))
    assert.is_false(p["config.template"])
    local kinds = {}
    for _, d in ipairs(p["config.hardware.device"]) do
      kinds[d._type] = true
      assert.are.equal("integer", math.type(d.key))
    end
    assert.is_true(kinds.VirtualDisk and kinds.VirtualIDEController and true)
    assert.are.equal("GuestNicInfo", vim25.list(p["guest.net"])[1]._type)
    -- one path as a string; several objects at once
    assert.are.same({ name = "DC0_H0_VM0" }, assert(c:props(vm, "name")))
    local many = assert(c:props_many({ vm, assert(c:find("/DC0/vm/DC0_H0_VM1")) }, "VirtualMachine", { "name" }))
    assert.are.equal(2, #many)
    assert.are.equal(vm, many[1].ref)
    assert.are.equal("DC0_H0_VM1", many[2].props.name)
  end)

  local function new_vm(c, name)
    local folder = assert(c:find("/DC0/vm"))
    local pool = assert(c:find("/DC0/host/DC0_C0/Resources"))
    local function add(dev, fileop)
      return obj("VirtualDeviceConfigSpec", { operation = "add", fileOperation = fileop, device = dev })
    end
    local spec = obj("VirtualMachineConfigSpec", {
      name = name, guestId = "otherLinux64Guest", numCPUs = 2, memoryMB = 2048,
      files = obj("VirtualMachineFileInfo", { vmPathName = "[LocalDS_0]" }),
      deviceChange = {
        add(obj("ParaVirtualSCSIController", { key = -100, busNumber = 0, sharedBus = "noSharing" })),
        add(obj("VirtualDisk", { key = -101, controllerKey = -100, unitNumber = 0, capacityInKB = 4194304,
          backing = obj("VirtualDiskFlatVer2BackingInfo", { fileName = "", diskMode = "persistent",
            thinProvisioned = true }) }), "create"),
        add(obj("VirtualVmxnet3", { key = -102,
          backing = obj("VirtualEthernetCardNetworkBackingInfo", { deviceName = "VM Network" }),
          connectable = obj("VirtualDeviceConnectInfo", { startConnected = true, allowGuestControl = true,
            connected = true }) })),
        add(obj("VirtualCdrom", { key = -103, controllerKey = 200, unitNumber = 0,
          backing = obj("VirtualCdromIsoBackingInfo", { fileName = "[LocalDS_0] iso/test & <1>.iso" }) })),
      },
    })
    local task = assert(c:call("CreateVM_Task", folder, { config = spec, pool = pool }))
    assert.are.equal("Task", task.type)
    return assert(c:task(task, 60))
  end

  it("creates a VM with a task, powers it on, and reports a task fault", function()
    local c = session()
    local vm = new_vm(c, "vim25-create")
    assert.are.equal("VirtualMachine", vm.type)
    local p = assert(c:props(vm, { "config.hardware.device", "runtime.powerState", "config.guestId" }))
    assert.are.equal("poweredOff", p["runtime.powerState"])
    assert.are.equal("otherLinux64Guest", p["config.guestId"])
    local by = {}
    for _, d in ipairs(p["config.hardware.device"]) do by[d._type] = d end
    assert.is_truthy(by.ParaVirtualSCSIController)
    assert.are.equal(4194304, by.VirtualDisk.capacityInKB)
    assert.is_true(by.VirtualDisk.backing.thinProvisioned)
    assert.are.equal(by.ParaVirtualSCSIController.key, by.VirtualDisk.controllerKey)
    assert.are.equal("VirtualEthernetCardNetworkBackingInfo", by.VirtualVmxnet3.backing._type)
    assert.are.equal("[LocalDS_0] iso/test & <1>.iso", by.VirtualCdrom.backing.fileName)
    -- a task without a result succeeds with true
    assert.is_true(c:task(assert(c:call("PowerOnVM_Task", vm)), 60))
    assert.are.equal("poweredOn", assert(c:props(vm, "runtime.powerState"))["runtime.powerState"])
    assert.is_true(assert(c:call_task("PowerOffVM_Task", vm)))
    local r, err, code, fault = c:task(assert(c:call("PowerOffVM_Task", vm)), 60)
    assert.is_nil(r)
    assert.are.equal("TASK_FAULT", code)
    assert.are.equal("InvalidPowerState", fault.type)
    assert.matches("^vim25%.[%w_.]+: InvalidPowerState: ", err)
    assert.are.equal("poweredOff", fault.detail.existingState)
    r, err, code = c:call_task("PowerOffVM_Task", vm)
    assert.is_nil(r)
    assert.are.equal("TASK_FAULT", code)
    assert.matches("^vim25%.PowerOffVM_Task: InvalidPowerState: ", err)
    assert.is_true(c:call_task("Destroy_Task", vm))
    local _, derr, dcode, dfault = c:props(vm, "name")
    assert.are.equal("SOAP_FAULT", dcode)
    assert.are.equal("ManagedObjectNotFound", dfault.type)
    assert.matches("ManagedObjectNotFound", derr)
  end)

  it("waits for a property to change", function()
    local c = session()
    local vm = new_vm(c, "vim25-wait")
    assert.is_true(c:call_task("PowerOnVM_Task", vm))
    local seen = {}
    local v = assert(c:wait(vm, "runtime.powerState", function(state)
      seen[#seen + 1] = state
      -- the first report is the current state; change it from here
      if #seen == 1 then assert.is_true(c:call_task("PowerOffVM_Task", vm)) end
      return state == "poweredOff"
    end, 30))
    assert.are.equal("poweredOff", v)
    assert.are.same({ "poweredOn", "poweredOff" }, seen)
    -- one collector for the session; each wait (the power-off task's inside
    -- this one's predicate too) adds a filter and destroys it
    assert.are.equal(1, c.stats.by_method.CreatePropertyCollector)
    assert.is_nil(c.stats.by_method.DestroyPropertyCollector)
    assert.are.equal(c.stats.by_method.CreateFilter, c.stats.by_method.DestroyPropertyFilter)
    local r, err, code = c:wait(vm, "runtime.powerState", function(s) return s == "poweredOn" end, 1.5)
    assert.is_nil(r)
    assert.are.equal("ETIMEDOUT", code)
    assert.matches("^vim25%.wait: VirtualMachine:vm%-%d+ runtime%.powerState: timed out", err)
    assert.is_true(c:call_task("Destroy_Task", vm))
  end)

  it("starts a wait over when the session is lost under it", function()
    local c = assert(connect())
    local vm = new_vm(c, "vim25-wait-relogin")
    assert.is_true(c:call_task("PowerOnVM_Task", vm))
    local collectors = c.stats.by_method.CreatePropertyCollector
    local calls = 0
    local v = assert(c:wait(vm, "runtime.powerState", function(state)
      calls = calls + 1
      if calls == 1 then
        assert.is_true(c:call_task("PowerOffVM_Task", vm))
        sim:drop_sessions()
      end
      return state == "poweredOff"
    end, 30))
    assert.are.equal("poweredOff", v)
    assert.are.equal(2, c.stats.by_method.Login)
    -- the session's collector died with the old session: one more after the re-login
    assert.are.equal(collectors + 1, c.stats.by_method.CreatePropertyCollector)
    assert.is_true(c:call_task("Destroy_Task", vm))
    assert.is_true(c:logout())
  end)

  it("shares one property collector among a session's waits, a filter each, and destroys it at logout", function()
    local c = assert(connect())
    local a, b = new_vm(c, "vim25-pc-a"), new_vm(c, "vim25-pc-b")
    -- a wait inside another's predicate: each sees its own object's updates
    local seen = {}
    local r, _, code = c:wait(b, "runtime.powerState", function(s)
      seen[#seen + 1] = s
      if #seen == 1 then
        assert.is_true(c:call_task("PowerOnVM_Task", a))
        assert.are.equal("poweredOn", c:wait(a, "runtime.powerState", function(x) return x == "poweredOn" end, 10))
      end
      return s == "poweredOn"
    end, 2)
    assert.is_nil(r)
    assert.are.equal("ETIMEDOUT", code)
    for _, s in ipairs(seen) do assert.are.equal("poweredOff", s) end
    -- later waits start from their own filter's state
    assert.are.equal("poweredOff", c:wait(b, "runtime.powerState", function(s) return s == "poweredOff" end, 10))
    assert.are.equal("poweredOn", c:wait(a, "runtime.powerState", function(s) return s == "poweredOn" end, 10))
    assert.are.equal(1, c.stats.by_method.CreatePropertyCollector)
    assert.are.equal(c.stats.by_method.CreateFilter, c.stats.by_method.DestroyPropertyFilter)
    assert.is_true(c:call_task("PowerOffVM_Task", a))
    assert.is_true(c:call_task("Destroy_Task", a))
    assert.is_true(c:call_task("Destroy_Task", b))
    sim:reset_calls()
    assert.is_true(c:logout())
    assert.are.same({ DestroyPropertyCollector = 1, Logout = 1 }, sim:calls())
  end)

  it("logs calls at debug level without their bodies", function()
    local log = require("capil.sys.log")
    local dir = require("capil.sys.fs").tempdir({ prefix = "capil-spec-vim25" })
    local path = dir .. "/build.log"
    local close = assert(log.add_file(path))
    local c = assert(connect())
    assert.is_truthy(c:find("/DC0"))
    assert.is_true(c:logout())
    close()
    local text = assert(require("capil.sys.fs").read(path))
    require("capil.sys.fs").remove(dir, { recursive = true })
    assert.matches("vim25: Login SessionManager:SessionManager", text, 1, true)
    assert.matches("vim25: FindByInventoryPath SearchIndex:SearchIndex", text, 1, true)
    assert.is_nil(text:find(PASS, 1, true))
    assert.is_nil(text:find("<password>", 1, true))
  end)

  it("sets guestinfo extraConfig and reads it back (last occurrence wins)", function()
    local c = session()
    local vm = assert(c:find("/DC0/vm/DC0_H0_VM1"))
    for _, v in ipairs({ "first", "sec<o>nd & last" }) do
      assert.is_true(c:call_task("ReconfigVM_Task", vm, { spec = obj("VirtualMachineConfigSpec", {
        extraConfig = { obj("OptionValue", { key = "guestinfo.capil", value = v }) } }) }))
    end
    local ec = assert(c:props(vm, "config.extraConfig"))["config.extraConfig"]
    assert.are.equal("sec<o>nd & last", vim25.option(ec, "guestinfo.capil"))
    assert.is_nil(vim25.option(ec, "guestinfo.absent"))
  end)

  it("imports an OVF: CreateImportSpec, its ImportSpec back into ImportVApp, an NFC lease", function()
    local c = session()
    local text = require("capil.format.ovf").descriptor({ name = "vim25-imp", annotation = "a & <b>", properties = {},
      os = { ovf_id = 94, ovf_version = "", os_type = "ubuntu64Guest", display_name = "Ubuntu" },
      hardware = { cpus = 2, cores_per_socket = 1, memory_mb = 512, firmware = "bios", disk_controller = "pvscsi",
        vmx_version = 15 },
      disks = { { href = "vim25-imp-disk-0.vmdk", size = 65536, capacity_mb = 1024 } }, network = "nic0",
      product = { name = "P", vendor = "V", version = "1", full_version = "1", vendor_url = "https://x", category = "C" },
    })
    local pool = assert(c:find("/DC0/host/DC0_C0/Resources"))
    local r = assert(c:call("CreateImportSpec", c.content.ovfManager, {
      ovfDescriptor = text, resourcePool = pool, datastore = assert(c:find("/DC0/datastore/LocalDS_0")),
      cisp = obj("OvfCreateImportSpecParams", { locale = "", deploymentOption = "", entityName = "vim25-imp",
        diskProvisioning = "thin",
        networkMapping = { obj("OvfNetworkMapping", { name = "nic0", network = assert(c:find("/DC0/network/VM Network")) }) },
      }),
    }))
    assert.are.equal("VirtualMachineImportSpec", r.importSpec._type)
    assert.are.equal(512, r.importSpec.configSpec.memoryMB)
    local item = r.fileItem[1]
    assert.are.equal("vim25-imp-disk-0.vmdk", item.path)
    local lease = assert(c:call("ImportVApp", pool, { spec = r.importSpec, folder = assert(c:find("/DC0/vm")) }))
    assert.are.equal("HttpNfcLease", lease.type)
    assert.matches("^session%[", lease.value) -- brackets in the moref, escaped on the way out
    assert.are.equal("ready", c:wait(lease, "state", function(s) return s == "ready" or s == "error" end, 30))
    local info = assert(c:props(lease, "info")).info
    local d = info.deviceUrl[1]
    assert.are.equal(item.deviceId, d.importKey)
    assert.matches("^https://%*/nfc/", d.url)
    local url = d.url:gsub("^https?://%*", c.scheme .. "://" .. c.server)
    local opts = c:transfer_options({ separate = true })
    opts.method, opts.url, opts.body = "PUT", url, ("x"):rep(1000)
    assert(require("capil.sys.http").request(opts))
    assert.is_nil(select(2, c:call("HttpNfcLeaseProgress", lease, { percent = 50 })))
    assert.is_nil(select(2, c:call("HttpNfcLeaseComplete", lease)))
    local vm = assert(c:find("/DC0/vm/vim25-imp"))
    assert.are.equal(info.entity, vm)
    assert.are.equal(512, assert(c:props(vm, "config.hardware.memoryMB"))["config.hardware.memoryMB"])
  end)

  it("logs in again when the session is lost, and retries the call once", function()
    local c = assert(connect())
    local vm = assert(c:find("/DC0/vm/DC0_H0_VM0"))
    assert.is_true(sim:drop_sessions() >= 1)
    -- RetrievePropertiesEx: the simulator answers a 200 with a NotAuthenticated missingSet
    assert.are.same({ name = "DC0_H0_VM0" }, assert(c:props(vm, "name")))
    assert.are.equal(2, c.stats.by_method.Login)
    -- other methods: a NotAuthenticated fault
    sim:drop_sessions()
    assert.are.equal(vm, c:find("/DC0/vm/DC0_H0_VM0"))
    assert.are.equal(3, c.stats.by_method.Login)
    -- only once: a fault that persists is returned
    sim:inject({ method = "FindByInventoryPath", action = "fault", fault = "NotAuthenticated", count = 2 })
    local r, err, code, fault = c:find("/DC0/vm/DC0_H0_VM0")
    assert.is_nil(r)
    assert.are.equal("SOAP_FAULT", code)
    assert.are.equal("NotAuthenticated", fault.type)
    assert.matches("^vim25%.FindByInventoryPath: NotAuthenticated: ", err)
    assert.are.equal(4, c.stats.by_method.Login)
    assert.is_true(c:logout())
  end)

  it("resends idempotent calls after a reset or an empty reply, not state changes", function()
    local c = session()
    local vm = assert(c:find("/DC0/vm/DC0_H0_VM0"))
    sim:reset_calls()
    local before = c.stats.by_method.RetrievePropertiesEx or 0
    -- two resets: libcurl itself resends once on a reused connection, then our retry
    sim:inject({ method = "RetrievePropertiesEx", action = "reset", count = 2 })
    assert.are.same({ name = "DC0_H0_VM0" }, assert(c:props(vm, "name")))
    assert.is_true(c.stats.by_method.RetrievePropertiesEx >= before + 2)
    assert.are.equal(3, sim:calls().RetrievePropertiesEx)
    before = c.stats.by_method.FindByInventoryPath
    sim:inject({ method = "FindByInventoryPath", action = "status", status = 200 })
    assert.are.equal(vm, c:find("/DC0/vm/DC0_H0_VM0"))
    assert.are.equal(before + 2, c.stats.by_method.FindByInventoryPath)
    assert.are.equal(2, sim:calls().FindByInventoryPath)
    sim:inject({ method = "FindByInventoryPath", action = "status", status = 503 })
    assert.are.equal(vm, c:find("/DC0/vm/DC0_H0_VM0"))
    assert.are.equal(4, sim:calls().FindByInventoryPath)
    -- a state change is not sent twice
    local ext = assert(c:find("/DC0/vm/DC0_H0_VM1"))
    sim:inject({ method = "PowerOffVM_Task", action = "reset" })
    local r, err, code = c:call("PowerOffVM_Task", ext)
    assert.is_nil(r)
    assert.are.equal("ECONNRESET", code)
    assert.matches("^vim25%.PowerOffVM_Task: ", err)
    assert.are.equal(1, sim:calls().PowerOffVM_Task)
    -- an empty 500 is a transport error too
    sim:inject({ method = "PowerOffVM_Task", action = "status", status = 500 })
    r, err, code = c:call("PowerOffVM_Task", ext)
    assert.is_nil(r)
    assert.are.equal("EPROTO", code)
    assert.matches("empty reply %(HTTP 500%)", err)
  end)

  it("sends GetCurrentTime before a call after an idle spell", function()
    local c = assert(connect({ keepalive = 0.2 }))
    local dc = assert(c:find("/DC0"))
    assert.is_nil(c.stats.by_method.CurrentTime)
    sim:reset_calls()
    runtime.sleep(0.3)
    assert.are.equal(dc, c:find("/DC0"))
    assert.are.equal(1, c.stats.by_method.CurrentTime)
    assert.are.equal(1, sim:calls().CurrentTime)
    -- not while busy
    assert.are.equal(dc, c:find("/DC0"))
    assert.are.equal(1, c.stats.by_method.CurrentTime)
    -- on request (long steps between calls)
    assert.is_true(c:keepalive())
    assert.are.equal(1, c.stats.by_method.CurrentTime)
    runtime.sleep(0.3)
    assert.is_true(c:keepalive())
    assert.are.equal(2, c.stats.by_method.CurrentTime)
    assert.is_true(c:logout())
  end)

  it("logs out from the run's cleanup, once", function()
    local cleanup = require("capil.sys.cleanup")
    local n = cleanup.count()
    local c = assert(connect())
    assert.are.equal(n + 1, cleanup.count())
    local pending = cleanup.pending()
    assert.are.equal(("vSphere session %s@%s"):format(USER, sim.server), pending[#pending])
    sim:reset_calls()
    c.cleanup_handle:run()
    assert.are.equal(1, sim:calls().Logout)
    assert.are.equal(n, cleanup.count())
    assert.is_true(c:logout())
    assert.are.equal(1, sim:calls().Logout)
    assert.has_error(function() c:find("/DC0") end)
    -- an explicit logout takes the cleanup off the stack
    c = assert(connect())
    assert.is_true(c:logout())
    assert.are.equal(n, cleanup.count())
  end)
end)

describe("vim25 over TLS #vsphere", function()
  local vcsim = require("support.vcsim")
  local sim

  setup(function()
    sim = vcsim.start({ username = "u", password = "p", tls = true })
  end)

  teardown(function()
    if sim then sim:stop() end
  end)

  it("verifies the server with ca_file", function()
    local c = assert(vim25.connect({ server = sim.server, username = "u", password = "p", ca_file = sim.ca_file }))
    assert.are.equal("https", c.scheme)
    assert.are.equal("https://" .. sim.server .. "/sdk", c.url)
    assert.is_truthy(c:find("/DC0"))
    assert.is_true(c:logout())
  end)

  it("refuses an unverified server", function()
    local c, err, code = vim25.connect({ server = sim.url, username = "u", password = "p" })
    assert.is_nil(c)
    assert.are.equal("TLS", code)
    assert.matches("^vim25%.connect: ", err)
    c, err, code = vim25.connect({ server = sim.url, username = "u", password = "p", ca_file = vcsim.wrong_ca() })
    assert.is_nil(c)
    assert.are.equal("TLS", code)
    assert.matches("^vim25%.connect: ", err)
  end)

  it("pins the certificate by its SHA-256 thumbprint", function()
    local r = assert(proc.run({ argv = { "openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", sim.ca_file } }))
    local fp = assert(r.stdout:match("=(%S+)"))
    local c = assert(vim25.connect({ server = sim.url, username = "u", password = "p", cert_sha256 = fp }))
    assert.is_truthy(c:find("/DC0"))
    -- the transfer options carry the pin and the session for /folder and /nfc requests
    local t = c:transfer_options()
    assert.are.equal(fp, t.cert_sha256)
    assert.are.equal(c.http, t.session)
    local sep = c:transfer_options({ separate = true })
    assert.is_nil(sep.session)
    assert.are.equal(c.http:cookies().vmware_soap_session, sep.cookies.vmware_soap_session)
    assert.is_true(c:logout())
    local wrong = require("support.peer").wrong_fingerprint(fp)
    local bad, _, code = vim25.connect({ server = sim.url, username = "u", password = "p", cert_sha256 = wrong })
    assert.is_nil(bad)
    assert.are.equal("TLS", code)
  end)

  it("accepts any certificate when insecure", function()
    local c = assert(vim25.connect({ server = sim.url, username = "u", password = "p", insecure = true }))
    assert.is_truthy(c:find("/DC0"))
    assert.is_true(c:logout())
  end)
end)

describe("vim25 against a free-licence ESXi host #vsphere", function()
  local vcsim = require("support.vcsim")
  local sim

  setup(function()
    sim = vcsim.start({ username = "root", password = "p", esx = true, restricted = true })
  end)

  teardown(function()
    if sim then sim:stop() end
  end)

  it("reads the host agent's inventory and reports RestrictedVersion on writes", function()
    local c = assert(vim25.connect({ server = sim.url, username = "root", password = "p" }))
    assert.are.equal("HostAgent", c.about.apiType)
    local folder = assert(c:find("/ha-datacenter/vm"))
    assert.are.equal(ref("Folder", "ha-folder-vm"), folder)
    local vm = vim25.list(assert(c:props(folder, "childEntity")).childEntity)[1]
    assert.is_true(vim25.is_ref(vm))
    local r, err, code, fault = c:call("PowerOffVM_Task", vm)
    assert.is_nil(r)
    assert.are.equal("SOAP_FAULT", code)
    assert.are.equal("RestrictedVersion", fault.type)
    assert.matches("^vim25%.PowerOffVM_Task: RestrictedVersion: ", err)
    assert.is_true(c:logout())
  end)
end)
