-- Content libraries, part 2, against the simulator (spec/support/vcsim:
-- govmomi's vcsim serves the content library and the vCenter OVF and VM
-- template services on /rest): capil deploy --library --item deploys an
-- ovf item published from an OVA (the VM has the OVF's CPUs and memory),
-- and a library item is a `capil test` target (library:NAME/ITEM); items
-- made from a VM (create_from_vm: ovf made then updated, vmtx names taken).
-- Publishing, deploying (with a network mapping) and items from a VM run on
-- the server's /rest and on /api (the shim's -api, a 7.0 U2+ vCenter),
-- checking from the request log that capil used that flavor only.
local capil = require("support.capil")
local vcsim = require("support.vcsim")
local peer = require("support.peer")
local sshd = require("support.sshd")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")

local PASSWORD = "Dep-s3cret!pw"
local USER = "administrator@vsphere.local"

for _, flavor in ipairs({ "rest", "api" }) do
describe("content library deploy #vsphere on " .. flavor, function()
  local tmp, sim, varfile, ova_path, ssh, key
  local api = flavor == "api"
  -- this flavor's names of the OVF service's calls (see sim:rest())
  local OVF = api and "POST /api/vcenter/ovf/library-item" or "POST /rest/com/vmware/vcenter/ovf/library-item"
  local DEPLOY = api and OVF .. "/*?action=deploy" or OVF .. "/id:*?~action=deploy"
  local FILTER = api and OVF .. "/*?action=filter" or OVF .. "/id:*?~action=filter"

  -- an OVA packed by capil.format.ova: 4 CPUs, 3072 MiB
  local function make_ova(name)
    local ova = require("capil.format.ova")
    local dir = tmp .. "/" .. name
    assert(fs.mkdir(dir))
    local raw = dir .. "/disk.raw"
    assert(fs.write(raw, ("\0"):rep(1024 * 1024) .. ("capil"):rep(1000)))
    assert(fs.truncate(raw, 8 * 1024 * 1024))
    assert(require("capil.format.vmdk").write(raw, dir .. "/" .. name .. "-disk-0.vmdk", { jobs = 1 }))
    fs.remove(raw)
    assert(ova.pack({ ova = dir .. "/" .. name .. ".ova", name = name, disks = { dir .. "/" .. name .. "-disk-0.vmdk" },
      os = { ovf_id = 94, os_type = "ubuntu64Guest", display_name = "Ubuntu 20.04" },
      hardware = { cpus = 4, memory_mb = 3072, disk_mb = 8, vmx_version = 17, firmware = "bios",
        disk_controller = "pvscsi" },
      properties = { KUBERNETES_SEMVER = "v1.30.1" } }))
    return dir .. "/" .. name .. ".ova"
  end

  local function run(args, opts)
    local a = {}
    for _, x in ipairs(args) do a[#a + 1] = x end
    a[#a + 1] = "--var-file"
    a[#a + 1] = varfile
    local r = capil.run(a, { timeout = (opts and opts.timeout) or 60 })
    assert.not_matches(PASSWORD, r.stdout .. r.stderr, 1, true)
    assert.not_matches("stack traceback", r.stderr, 1, true)
    return r
  end

  -- the VM's CPUs, memory and name, read over the vSphere API
  local function vm_config(ref)
    local script = ([[
local session = require("capil.vsphere.session")
local s = assert(session.settings_from_vars({ var_files = { %q } }))
local vc = assert(session.connect(s))
local p = assert(vc:props(require("capil.vsphere.vim25").ref("VirtualMachine", %q),
  { "config.hardware.numCPU", "config.hardware.memoryMB", "name", "config.template" }))
print(p["config.hardware.numCPU"], p["config.hardware.memoryMB"], p.name, p["config.template"])
]]):format(varfile, ref)
    local out = capil.run({ capil.script(tmp, "props.lua", script) })
    assert.equal(0, out.code, out.stderr)
    return out.stdout
  end

  setup(function()
    tmp = peer.dir("library-deploy-spec")
    -- the "guest" of capil test: a real sshd as the current user
    key = sshd.keygen(tmp, "test_ed25519")
    ssh = sshd.start({ authorized = { key } })
    sim = vcsim.start({ username = USER, password = PASSWORD, tls = true, guest_ip = "127.0.0.1",
      guest_ip_delay = 0.2, api = api })
    varfile = tmp .. "/vsphere.json"
    assert(json.write(varfile, { vcenter_server = sim.url, username = USER, password = PASSWORD,
      vcenter_ca_file = sim.ca_file, datacenter = "DC0", cluster = "DC0_C0", datastore = "LocalDS_0" }))
    ova_path = make_ova("node-lib")
    sim:reset_rest()
    local r = run({ "publish", ova_path, "--library", "images", "--item", "node", "--create-library" })
    assert.equal(0, r.code, r.stderr)
    assert.same({}, vcsim.foreign_requests(sim:rest(), flavor))
  end)

  teardown(function()
    if sim then sim:stop() end
    if ssh then ssh.stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  it("deploys an ovf item published from an OVA: the VM has the OVF's CPUs and memory", function()
    sim:reset_rest()
    local r = run({ "deploy", "--library", "images", "--item", "node", "--name", "from-lib" })
    assert.equal(0, r.code, r.stderr)
    local ref = r.stdout:match("^VirtualMachine:(%S+) from%-lib\n")
    assert.is_string(ref, r.stdout)
    assert.equal("4\t3072\tfrom-lib\tfalse\n", vm_config(ref))
    local deployed = 0
    local log = sim:rest()
    for _, c in ipairs(log) do
      if c.name == DEPLOY then deployed = deployed + 1 end
    end
    assert.equal(1, deployed)
    assert.same({}, vcsim.foreign_requests(log, flavor))
  end)

  it("maps the OVF's network (named by the server's filter) to the network variable", function()
    sim:reset_rest()
    local r = run({ "deploy", "--library", "images", "--item", "node", "--name", "on-dvpg", "--var", "network=DC0_DVPG0" })
    assert.equal(0, r.code, r.stderr)
    local ref = r.stdout:match("^VirtualMachine:(%S+) on%-dvpg\n")
    assert.is_string(ref, r.stdout)
    local script = ([[
local session = require("capil.vsphere.session")
local vim25 = require("capil.vsphere.vim25")
local s = assert(session.settings_from_vars({ var_files = { %q } }))
local vc = assert(session.connect(s))
local inv = assert(require("capil.vsphere.inventory").resolve(vc, setmetatable({ network = "DC0_DVPG0" },
  { __index = s })))
local key = assert(vc:props(inv.network.ref, { "key" })).key
local p = assert(vc:props(vim25.ref("VirtualMachine", %q), { "config.hardware.device" }))
for _, d in ipairs(p["config.hardware.device"]) do
  local b = d.backing
  if b and b.port then print("nic on portgroup", b.port.portgroupKey == key and "DC0_DVPG0" or b.port.portgroupKey) end
  if b and b.deviceName and d.macAddress then print("nic on network", b.deviceName) end
end
]]):format(varfile, ref)
    local out = capil.run({ capil.script(tmp, "nics.lua", script) })
    assert.equal(0, out.code, out.stderr)
    assert.equal("nic on portgroup\tDC0_DVPG0\n", out.stdout)
    local filtered = 0
    local log = sim:rest()
    for _, c in ipairs(log) do
      if c.name == FILTER then filtered = filtered + 1 end
    end
    assert.is_true(filtered >= 1)
    assert.same({}, vcsim.foreign_requests(log, flavor))
  end)

  if not api then
  it("--template marks the deployed VM a template; the item's name is the default VM name", function()
    local r = run({ "deploy", "--library", "images", "--item", "node", "--template" })
    assert.equal(0, r.code, r.stderr)
    local ref = r.stdout:match("^VirtualMachine:(%S+) node\n")
    assert.is_string(ref, r.stdout)
    assert.equal("4\t3072\tnode\ttrue\n", vm_config(ref))
  end)

  it("capil test takes library:NAME/ITEM: deploys <item>-test from the item, cloud-init, login, removes it", function()
    local out = tmp .. "/out"
    local r = run({ "test", "library:images/node", "--backend", "vsphere", "--output", out,
      "--var", "ssh_port=" .. ssh.port, "--var", "test_ssh_username=" .. ssh.user,
      "--var", "test_ssh_private_key_file=" .. key, "--var", "ip_settle_timeout=0.3s" }, { timeout = 120 })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local report = json.read(out .. "/node/test/report.json")
    assert.is_true(report.ok)
    assert.equal("library:images/node", report.target)
    assert.same({ created_new = true, reverted = false, removed = {} }, report.snapshots)
    local deployed = 0
    for _, c in ipairs(sim:rest()) do
      if c.name == "POST /rest/com/vmware/vcenter/ovf/library-item/id:*?~action=deploy" then deployed = deployed + 1 end
    end
    assert.is_true(deployed >= 1)
    -- the deployed copy is gone again (no --keep)
    for _, vm in ipairs(sim:vms()) do assert.not_equal("node-test", vm.name) end
    r = run({ "test", "library:images", "--backend", "vsphere" })
    assert.equal(2, r.code)
    assert.matches("library:LIBRARY/ITEM", r.stderr, 1, true)
  end)
  end

  it("create_from_vm: an ovf item made from a VM, the same name again updates it; a vmtx template; vmtx refuses a "
    .. "taken name", function()
    sim:reset_rest()
    local script = ([[
local session = require("capil.vsphere.session")
local library = require("capil.vsphere.library")
local s = assert(session.settings_from_vars({ var_files = { %q } }))
local vc = assert(session.connect(s))
local inv = assert(require("capil.vsphere.inventory").resolve(vc, s))
local vm = assert(require("capil.vsphere.testvm").find_vm(vc, inv, "DC0_H0_VM0"))
local c = assert(session.rest(s))
local a = assert(library.create_from_vm(c, vm.value, { library = "images", item = "from-vm" }))
local b = assert(library.create_from_vm(c, vm.value, { library = "images", item = "from-vm" }))
print(a.type, a.updated, b.updated, a.item_id == b.item_id)
print(select(2, library.create_from_vm(c, vm.value, { library = "images", item = "from-vm", type = "vmtx",
  inv = inv })))
print(select(2, library.create_from_vm(c, vm.value, { library = "nope", item = "x" })))
print(select(2, library.create_from_vm(c, vm.value, { library = "images", item = "x", type = "ova" })))
local t = assert(library.create_from_vm(c, vm.value, { library = "images", item = "tmpl", type = "vmtx", inv = inv }))
print(t.type, t.updated, type(t.item_id))
c:logout()
vc:logout()
]]):format(varfile)
    local out = capil.run({ capil.script(tmp, "fromvm.lua", script) }, { timeout = 60 })
    assert.equal(0, out.code, out.stderr)
    local lines = {}
    for l in out.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("ovf\tfalse\ttrue\ttrue", lines[1])
    assert.matches("^library images, item from%-vm from VM vm%-%d+: the library already has an item from%-vm .*"
      .. "delete it first\tEEXIST$", lines[2])
    assert.matches("library nope not found on https://127.0.0.1:%d+: create it", lines[3])
    assert.matches("ENOENT$", lines[3])
    assert.matches("type ova: use ovf or vmtx", lines[4], 1, true)
    assert.equal("vmtx\tfalse\tstring", lines[5])
    local item
    local log = sim:rest()
    for _, c in ipairs(log) do
      if c.name == OVF then item = c end
    end
    assert.is_table(item)
    assert.same({}, vcsim.foreign_requests(log, flavor))
  end)

  if api then return end

  it("a missing library or item is named, with the server, and exits 1; usage errors exit 2", function()
    local r = run({ "deploy", "--library", "nope", "--item", "node" })
    assert.equal(1, r.code)
    assert.matches("library nope not found on https://127.0.0.1:", r.stderr, 1, true)
    r = run({ "deploy", "--library", "images", "--item", "gone" })
    assert.equal(1, r.code)
    assert.matches("library images has no item gone on https://127.0.0.1:", r.stderr, 1, true)
    r = run({ "deploy", "--library", "images" })
    assert.equal(2, r.code)
    assert.matches("--library NAME and --item NAME go together", r.stderr, 1, true)
    r = run({ "deploy", ova_path, "--library", "images", "--item", "node" })
    assert.equal(2, r.code)
  end)
end)
end
