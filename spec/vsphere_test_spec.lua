-- The vSphere side of `capil test` against the vSphere simulator (vcsim with
-- our shim, spec/support/vcsim): finding a VM by name, image-builder's
-- image-govc-cloudinit.sh through the API (snapshots "new" and "cloudinit",
-- base64 guestinfo user-data and meta-data), and an existing VM driven like
-- a build VM (power on, guest IP from "VMware Tools").
local vcsim = require("support.vcsim")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local hash = require("capil.sys.hash")
local vim25 = require("capil.vsphere.vim25")
local vsphere = require("capil.backends.vsphere")
local session = require("capil.vsphere.session")
local inventory = require("capil.vsphere.inventory")
local testvm = require("capil.vsphere.testvm")

local PASSWORD = "Vc-t3st!pw"
local USERDATA = assert(fs.read("cloudinit/user-data"))
local METADATA = assert(fs.read("cloudinit/meta-data"))
local GUESTINFO = { "guestinfo.userdata", "guestinfo.userdata.encoding", "guestinfo.metadata",
  "guestinfo.metadata.encoding" }

-- The snapshot tree as text: "new(cloudinit(other),x)".
local function tree_text(list)
  local parts = {}
  for _, t in ipairs(vim25.list(list)) do
    local kids = vim25.list(t.childSnapshotList)
    parts[#parts + 1] = t.name .. (#kids > 0 and ("(" .. tree_text(kids) .. ")") or "")
  end
  return table.concat(parts, ",")
end

describe("vSphere image test: VMs, cloud-init snapshots, guest IP #vsphere", function()
  local tmp, sim, vc, s, inv

  setup(function()
    tmp = peer.dir("vsphere-test-spec")
    sim = vcsim.start({ username = "administrator@vsphere.local", password = PASSWORD, guest_ip = "127.0.0.1",
      guest_ip_delay = 0.2 })
    local vf = tmp .. "/vsphere.json"
    assert(json.write(vf, { vcenter_server = sim.url, username = sim.username, password = PASSWORD,
      datacenter = "DC0", cluster = "DC0_C0", datastore = "LocalDS_0", ip_settle_timeout = "0.2s", ssh_port = "2222" }))
    s = assert(session.settings_from_vars({ var_files = { vf }, config_dir = tmp, getenv = function() return nil end }))
    vc = assert(session.connect(s))
    inv = assert(inventory.resolve(vc, s))
  end)

  teardown(function()
    if vc then vc:logout() end
    if sim then sim:stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function props(ref, paths) return assert(vc:props(ref, paths)) end
  local function power(ref) return props(ref, { "runtime.powerState" })["runtime.powerState"] end
  local function tree(ref) return tree_text(props(ref, { "snapshot.rootSnapshotList" })["snapshot.rootSnapshotList"]) end
  local function current(ref) return props(ref, { "snapshot.currentSnapshot" })["snapshot.currentSnapshot"] end
  local function guestinfo(ref)
    local extra = props(ref, { "config.extraConfig" })["config.extraConfig"]
    local out = {}
    for _, k in ipairs(GUESTINFO) do out[k] = vim25.option(extra, k) end
    return out
  end

  describe("find_vm", function()
    it("finds a VM anywhere in the datacenter's vm folder", function()
      local ref = assert(testvm.find_vm(vc, inv, "DC0_H0_VM0"))
      assert.equal(assert(vc:find("/DC0/vm/DC0_H0_VM0")), ref)
      assert.equal("VirtualMachine", ref.type)
    end)

    it("names the datacenter and similar VMs when none has the name", function()
      local ref, err, code = testvm.find_vm(vc, inv, "DC0_H0_VM7")
      assert.is_nil(ref)
      assert.equal("ENOTFOUND", code)
      assert.matches("vsphere: no VM named 'DC0_H0_VM7' in datacenter DC0 (similar: ", err, 1, true)
      assert.matches("DC0_H0_VM0", err, 1, true)
      ref, err, code = testvm.find_vm(vc, inv, "quite-another-name")
      assert.is_nil(ref)
      assert.equal("ENOTFOUND", code)
      assert.equal("vsphere: no VM named 'quite-another-name' in datacenter DC0", err)
    end)

    it("takes a folder path, and a VM only", function()
      assert.equal(assert(vc:find("/DC0/vm/DC0_H0_VM1")), assert(testvm.find_vm(vc, inv, "/DC0/vm/DC0_H0_VM1")))
      local ref, err, code = testvm.find_vm(vc, inv, "nosuch/DC0_H0_VM1")
      assert.is_nil(ref)
      assert.equal("ENOTFOUND", code)
      assert.matches("no VM at 'nosuch/DC0_H0_VM1' in datacenter DC0", err, 1, true)
    end)
  end)

  describe("cloudinit", function()
    it("powers a running VM off, takes 'new', writes base64 guestinfo and takes 'cloudinit'", function()
      local ref = assert(testvm.find_vm(vc, inv, "DC0_H0_VM0"))
      assert.equal("poweredOn", power(ref)) -- vcsim starts its VMs running
      sim:reset_calls()
      local r = assert(testvm.cloudinit(vc, ref, { userdata = USERDATA, metadata = METADATA, name = "DC0_H0_VM0" }))
      assert.same({ created_new = true, reverted = false, removed = {} }, r)
      assert.equal("poweredOff", power(ref))
      assert.equal(1, sim:calls().PowerOffVM_Task)
      assert.equal("new(cloudinit)", tree(ref))
      local gi = guestinfo(ref)
      assert.equal("base64", gi["guestinfo.userdata.encoding"])
      assert.equal("base64", gi["guestinfo.metadata.encoding"])
      assert.equal(USERDATA, assert(hash.base64_decode(gi["guestinfo.userdata"])))
      assert.equal(METADATA, assert(hash.base64_decode(gi["guestinfo.metadata"])))
      for _, k in ipairs({ "guestinfo.userdata", "guestinfo.metadata" }) do
        assert.matches("^[%w+/]+=*$", gi[k], k .. " is plain base64 (no quotes, no line breaks)")
      end
    end)

    it("reverts to 'new' and replaces everything after it on the next run", function()
      local ref = assert(testvm.find_vm(vc, inv, "DC0_H0_VM0"))
      local first = current(ref)
      assert(vc:call_task("CreateSnapshot_Task", ref, { name = "other", memory = false, quiesce = false }))
      assert.equal("new(cloudinit(other))", tree(ref))
      local userdata = USERDATA .. "# second run\n"
      sim:reset_calls()
      local r = assert(testvm.cloudinit(vc, ref, { userdata = userdata, metadata = METADATA }))
      assert.is_true(r.reverted)
      assert.is_false(r.created_new)
      table.sort(r.removed)
      assert.same({ "cloudinit", "other" }, r.removed)
      assert.equal("new(cloudinit)", tree(ref))
      -- a fresh 'cloudinit', current, with the new data (vcsim appends: the last value wins)
      local now = current(ref)
      assert.not_equal(first, now)
      local snaps = props(ref, { "snapshot.rootSnapshotList" })["snapshot.rootSnapshotList"]
      assert.equal(now, vim25.list(vim25.list(snaps)[1].childSnapshotList)[1].snapshot)
      assert.equal(userdata, assert(hash.base64_decode(guestinfo(ref)["guestinfo.userdata"])))
      local calls = sim:calls()
      assert.equal(1, calls.RevertToSnapshot_Task)
      assert.equal(2, calls.RemoveSnapshot_Task)
      assert.is_nil(calls.PowerOffVM_Task) -- it was off already
    end)

    it("names the VM and the call when a task fails", function()
      local ref = assert(testvm.find_vm(vc, inv, "DC0_C0_RP0_VM1"))
      sim:inject({ method = "ReconfigVM_Task", action = "fault", fault = "InvalidState" })
      local r, err, code = testvm.cloudinit(vc, ref, { userdata = USERDATA, metadata = METADATA,
        name = "DC0_C0_RP0_VM1" })
      assert.is_nil(r)
      assert.is_string(code)
      assert.matches("vsphere: VM DC0_C0_RP0_VM1: ReconfigVM_Task: .*InvalidState", err)
      assert.equal("new", tree(ref)) -- stopped before 'cloudinit'
    end)

    it("rejects unknown options", function()
      local ref = assert(vc:find("/DC0/vm/DC0_H0_VM1"))
      assert.has_error(function()
        testvm.cloudinit(vc, ref, { userdata = "", metadata = "", user_data = "x" })
      end, "vsphere.cloudinit: unknown option 'user_data'")
    end)
  end)

  describe("attach", function()
    it("drives an existing VM: power on, guest IP from VMware Tools, power off", function()
      local ref = assert(testvm.find_vm(vc, inv, "DC0_H0_VM0"))
      assert.equal("poweredOff", power(ref)) -- after cloudinit
      local vm = vsphere.attach(vc, inv, s, ref, "DC0_H0_VM0")
      assert.is_true(vm:keepalive())
      assert.is_false((vm:alive()))
      assert(vm:start())
      assert.is_true(vm:alive())
      local addr = assert(vm:ssh_address(20))
      assert.same({ host = "127.0.0.1", port = 2222 }, addr)
      assert(vm:power_off(1))
      assert.equal("poweredOff", power(ref))
    end)

    it("times out naming the backend, the VM and the wait when no IP comes", function()
      -- running since the simulator started: its "VMware Tools" never report
      local ref = assert(testvm.find_vm(vc, inv, "DC0_C0_RP0_VM0"))
      assert.equal("poweredOn", power(ref))
      local vm = vsphere.attach(vc, inv, s, ref, "DC0_C0_RP0_VM0")
      local addr, err, code = vm:ssh_address(1)
      assert.is_nil(addr)
      assert.equal("ETIMEDOUT", code)
      assert.matches("vsphere: VM DC0_C0_RP0_VM0: no usable guest IP after 1 s", err, 1, true)
    end)
  end)
end)

describe("vSphere test hooks (capil.TestRun) #vsphere", function()
  local backend = require("capil.backend")
  local tmp, sim, s

  setup(function()
    tmp = peer.dir("vsphere-hooks-spec")
    sim = vcsim.start({ username = "u", password = PASSWORD, guest_ip = "127.0.0.1", guest_ip_delay = 0.2 })
    local vf = tmp .. "/vsphere.json"
    assert(json.write(vf, { vcenter_server = sim.url, username = "u", password = PASSWORD, datacenter = "DC0",
      cluster = "DC0_C0", datastore = "LocalDS_0", insecure_connection = "true", ip_settle_timeout = "0.2s",
      ssh_port = "2222" }))
    s = assert(session.settings_from_vars({ var_files = { vf }, config_dir = tmp, getenv = function() return nil end }))
  end)

  teardown(function()
    if sim then sim:stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function new_run(target, extra)
    local run = { target = target, settings = s, secret = function() return nil end, keep = false, work = tmp,
      test_dir = tmp .. "/test", state = {}, report = {}, data = { userdata = USERDATA, metadata = METADATA } }
    for k, v in pairs(extra or {}) do run[k] = v end
    return run
  end

  it("conform to the backend interface, for vsphere and esx", function()
    assert.same({}, backend.check(vsphere))
    assert.same({}, backend.check(require("capil.backends.esx")))
  end)

  it("drive an existing VM by name: cloud-init, power on, guest IP, power off, never destroyed", function()
    local run = new_run({ kind = "vm", name = "DC0_H0_VM1" })
    assert(vsphere.test.prepare(run))
    assert.same({ created_new = true, reverted = false, removed = {} }, run.report.snapshots)
    local rec = vsphere.test.record(run)
    assert.equal("vsphere", rec.backend)
    assert.equal("DC0_H0_VM1", rec.name)
    assert.matches("^VirtualMachine:", rec.ref)
    assert.is_string(rec.server)
    assert(run.vm:start())
    assert.same({ host = "127.0.0.1", port = 2222 }, assert(run.vm:ssh_address(20)))
    local vc = run.state.vc
    assert(vsphere.test.finish(run))
    assert.is_true(vc.closed) -- logged out
    local check = assert(session.connect(s))
    finally(function() check:logout() end)
    local ref = assert(testvm.find_vm(check, assert(inventory.resolve(check, s)), "DC0_H0_VM1"))
    assert.equal("poweredOff", assert(check:props(ref, { "runtime.powerState" }))["runtime.powerState"])
  end)

  it("name the VM that is not there, with similar names", function()
    local run = new_run({ kind = "vm", name = "DC0_H0_VM9" })
    local ok, err, code = vsphere.test.prepare(run)
    assert.is_nil(ok)
    assert.equal("ENOTFOUND", code)
    assert.matches("no VM named 'DC0_H0_VM9' in datacenter DC0 (similar: ", err, 1, true)
    assert(vsphere.test.finish(run))
  end)

  it("use the OVA's copy named test_vm_name when it exists, and remove it afterwards", function()
    local run = new_run({ kind = "ova", name = "node", ova = tmp .. "/never-read.ova" },
      { test_vm_name = "DC0_C0_RP0_VM1" })
    assert(vsphere.test.prepare(run))
    assert.is_true(run.state.deployed)
    assert.equal("DC0_C0_RP0_VM1", run.vm.name)
    assert(vsphere.test.finish(run))
    local check = assert(session.connect(s))
    finally(function() check:logout() end)
    local _, _, code = testvm.find_vm(check, assert(inventory.resolve(check, s)), "DC0_C0_RP0_VM1")
    assert.equal("ENOTFOUND", code)
  end)
end)
