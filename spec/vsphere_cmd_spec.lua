-- capil vsphere ls / info / destroy / snapshot list|revert as a user runs
-- them, against the simulator (spec/support/vcsim): the session from a var
-- file or GOVC_URL, text and --json output, clear errors that never print
-- the password.
local capil = require("support.capil")
local vcsim = require("support.vcsim")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local session = require("capil.vsphere.session")

local PASSWORD = "Vc-s3cret!pw"

describe("capil vsphere #vsphere", function()
  local tmp, sim, varfile

  setup(function()
    tmp = peer.dir("vsphere-cmd-spec")
    sim = vcsim.start({ username = "administrator@vsphere.local", password = PASSWORD, tls = true,
      guest_ip = "127.0.0.1" })
    varfile = tmp .. "/vsphere.json"
    assert(json.write(varfile, { vcenter_server = sim.url, username = sim.username, password = PASSWORD,
      vcenter_ca_file = sim.ca_file, datacenter = "DC0" }))
  end)

  teardown(function()
    if sim then sim:stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function run(args, env)
    local a = { "vsphere" }
    for _, x in ipairs(args) do a[#a + 1] = x end
    a[#a + 1] = "--var-file"
    a[#a + 1] = varfile
    local r = capil.run(a, { timeout = 60, env_add = env })
    assert.not_matches(PASSWORD, r.stdout .. r.stderr, 1, true)
    assert.not_matches("stack traceback", r.stderr, 1, true)
    return r
  end

  local function sim_vm_names()
    local out = {}
    for _, v in ipairs(sim:vms()) do out[#out + 1] = v.name end
    table.sort(out)
    return out
  end

  it("lists /DC0/vm as govc ls does, in text and JSON, and a datacenter's folders", function()
    local r = run({ "ls", "/DC0/vm" })
    assert.equal(0, r.code, r.stderr)
    local want = {}
    for _, n in ipairs(sim_vm_names()) do want[#want + 1] = "/DC0/vm/" .. n end
    assert.is_true(#want >= 4)
    local got = {}
    for l in r.stdout:gmatch("[^\n]+") do got[#got + 1] = l end
    assert.same(want, got)

    r = run({ "ls", "vm", "--json" })
    assert.equal(0, r.code, r.stderr)
    local list = assert(json.decode(r.stdout))
    assert.equal(#want, #list)
    assert.equal("VirtualMachine", list[1].type)
    assert.equal(want[1], list[1].path)

    r = run({ "ls", "/DC0", "-l" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("/DC0/datastore (Folder)\n/DC0/host (Folder)\n/DC0/network (Folder)\n/DC0/vm (Folder)\n", r.stdout)
    r = run({ "ls" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("^/DC0\n", r.stdout)

    r = run({ "ls", "/DC0/vm/nope" })
    assert.equal(1, r.code)
    assert.matches("vsphere ls: /DC0/vm/nope: not found", r.stderr, 1, true)
  end)

  it("shows a VM's facts, and the same as JSON", function()
    local r = run({ "info", "DC0_H0_VM0" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("Name:%s+DC0_H0_VM0\n", r.stdout)
    assert.matches("Path:%s+/DC0/vm/DC0_H0_VM0\n", r.stdout)
    assert.matches("Power state:%s+poweredOn\n", r.stdout)
    assert.matches("CPUs:%s+%d+\n", r.stdout)
    assert.matches("Memory:%s+%d+ MiB\n", r.stdout)
    assert.matches("UUID:%s+%x+%-", r.stdout)
    assert.matches("Datastore path:%s+%[LocalDS_0%] DC0_H0_VM0/DC0_H0_VM0.vmx\n", r.stdout)
    assert.matches("Firmware:%s+%a+\n", r.stdout)

    r = run({ "info", "DC0_H0_VM0", "--json" })
    assert.equal(0, r.code, r.stderr)
    local v = assert(json.decode(r.stdout))
    assert.equal("DC0_H0_VM0", v.name)
    assert.equal("poweredOn", v.power_state)
    assert.equal("/DC0/vm/DC0_H0_VM0", v.path)
    assert.is_number(v.cpus)
    assert.is_number(v.memory_mb)
    assert.is_string(v.uuid)
    assert.is_string(v.guest_id)
    assert.is_false(v.template)
    assert.matches("^%[LocalDS_0%]", v.datastore_path)
  end)

  it("shows the guest IP VMware Tools reports, not a link-local one", function()
    local s = assert(session.settings_from_vars({ var_files = { varfile } }))
    local vc = assert(session.connect(s))
    local ref = assert(vc:find("/DC0/vm/DC0_H0_VM1"))
    assert(vc:call_task("PowerOffVM_Task", ref, {}))
    assert(vc:call_task("PowerOnVM_Task", ref, {}))
    assert(vc:wait(ref, "guest.ipAddress", function(ip) return ip end, 30))
    vc:logout()
    local r = run({ "info", "DC0_H0_VM1" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("IP address:%s+127%.0%.0%.1\n", r.stdout)
    r = run({ "info", "DC0_H0_VM1", "--json" })
    local v = assert(json.decode(r.stdout))
    assert.equal("127.0.0.1", v.ip)
    assert.is_true(#v.ips >= 1)
  end)

  it("takes its session from GOVC_URL as govc does", function()
    local url = sim.url:gsub("^(https?://)", "%1" .. "administrator%%40vsphere.local:" .. PASSWORD .. "@")
    local r = capil.run({ "vsphere", "info", "DC0_H0_VM1", "--json" }, { timeout = 60,
      env_add = { GOVC_URL = url, GOVC_INSECURE = "1" } })
    assert.equal(0, r.code, r.stderr)
    assert.equal("DC0_H0_VM1", assert(json.decode(r.stdout)).name)
    assert.not_matches(PASSWORD, r.stdout .. r.stderr, 1, true)
  end)

  it("lists snapshots made through the client and reverts to one", function()
    local s = assert(session.settings_from_vars({ var_files = { varfile } }))
    local vc = assert(session.connect(s))
    local ref = assert(vc:find("/DC0/vm/DC0_H0_VM1"))
    assert(vc:call_task("CreateSnapshot_Task", ref, { name = "new", memory = false, quiesce = false }))
    assert(vc:call_task("CreateSnapshot_Task", ref, { name = "cloudinit", memory = false, quiesce = false }))

    local r = run({ "snapshot", "list", "DC0_H0_VM1" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("new\n  cloudinit *\n", r.stdout)

    r = run({ "snapshot", "revert", "DC0_H0_VM1", "new", "--json" })
    assert.equal(0, r.code, r.stderr)
    local v = assert(json.decode(r.stdout))
    assert.equal("new", v.snapshot)
    assert.is_true(v.reverted)
    local cur = assert(vc:props(ref, { "snapshot.currentSnapshot" }))["snapshot.currentSnapshot"]
    assert.equal(v.ref, cur.value)

    r = run({ "snapshot", "list", "DC0_H0_VM1", "--json" })
    assert.equal(0, r.code, r.stderr)
    local list = assert(json.decode(r.stdout))
    assert.equal(2, #list)
    assert.same({ "new", true }, { list[1].name, list[1].current })
    assert.same({ "cloudinit", "new", false }, { list[2].name, list[2].parent, list[2].current })

    r = run({ "snapshot", "revert", "DC0_H0_VM1" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("reverted DC0_H0_VM1 to snapshot new\n", r.stdout)

    r = run({ "snapshot", "revert", "DC0_H0_VM1", "cloudinit2" })
    assert.equal(1, r.code)
    assert.matches("has no snapshot 'cloudinit2'; did you mean 'cloudinit'?", r.stderr, 1, true)
    vc:logout()
  end)

  it("destroys a running VM by its exact name, powering it off first", function()
    local before = sim_vm_names()
    assert.is_truthy(table.concat(before, " "):find("DC0_H0_VM0", 1, true))
    local r = run({ "destroy", "DC0_H0_VM*" })
    assert.equal(2, r.code)
    assert.matches("is a pattern", r.stderr, 1, true)
    r = run({ "destroy", "DC0_H0_VM" })
    assert.equal(1, r.code)
    assert.matches("no VM named 'DC0_H0_VM' in datacenter DC0 (similar: ", r.stderr, 1, true)

    r = run({ "destroy", "DC0_H0_VM0", "--json" })
    assert.equal(0, r.code, r.stderr)
    local v = assert(json.decode(r.stdout))
    assert.same({ "DC0_H0_VM0", true, true }, { v.name, v.powered_off, v.destroyed })
    for _, n in ipairs(sim_vm_names()) do assert.not_equal("DC0_H0_VM0", n) end
    assert.equal(#before - 1, #sim_vm_names())
    r = run({ "ls", "/DC0/vm" })
    assert.not_matches("DC0_H0_VM0\n", r.stdout, 1, true)
  end)

  it("reports a missing VM with similar names, and a bad password, clearly", function()
    local r = run({ "info", "DC0_H0_VMX" })
    assert.equal(1, r.code)
    assert.matches("vsphere info: no VM named 'DC0_H0_VMX' in datacenter DC0 (similar: DC0_H0_VM1", r.stderr, 1, true)

    local bad = tmp .. "/bad.json"
    assert(json.write(bad, { vcenter_server = sim.url, username = sim.username, password = "wrong-" .. PASSWORD,
      vcenter_ca_file = sim.ca_file, datacenter = "DC0" }))
    r = capil.run({ "vsphere", "ls", "/DC0/vm", "--var-file", bad }, { timeout = 60 })
    assert.equal(1, r.code)
    assert.matches("vsphere ls: ", r.stderr, 1, true)
    assert.matches("InvalidLogin", r.stderr, 1, true)
    assert.not_matches(PASSWORD, r.stderr .. r.stdout, 1, true)
    assert.not_matches("traceback", r.stderr, 1, true)

    r = capil.run({ "vsphere", "info" }, { timeout = 30 })
    assert.equal(2, r.code)
    r = capil.run({ "vsphere", "frob" }, { timeout = 30 })
    assert.equal(2, r.code)
    assert.matches("unknown subcommand 'frob'", r.stderr, 1, true)
  end)

  it("has help for each subcommand with examples", function()
    for _, sub in ipairs({ "ls", "info", "destroy", "snapshot" }) do
      local r = capil.run({ "vsphere", sub, "--help" })
      assert.equal(0, r.code)
      assert.matches("^Usage: capil vsphere " .. sub, r.stdout)
      assert.matches("Examples:", r.stdout, 1, true)
      assert.matches("--json", r.stdout, 1, true)
    end
  end)
end)
