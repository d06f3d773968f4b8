-- Content libraries from a vSphere build, on the simulator (vcsim with our
-- shim, spec/support/vcsim): the fixture recipe vsphere.lua built with
-- content_library makes an OVF item of the build VM (vCenter's OVF service)
-- and, with --stages build,publish, publishes the OVA into the library too,
-- both recorded in report.json; a second build makes a VM template (vmtx)
-- and destroys the build VM, its run report (--report) naming both items.
-- The OVF item build with its publish stage runs on /api too (the shim's
-- -api, a 7.0 U2+ vCenter: one extra build), checking from the request log
-- that capil used /api only, as it uses /rest only (but the /api/session
-- probe) on vcsim as it is.
local capil = require("support.capil")
local buildenv = require("support.buildenv")
local vcsim = require("support.vcsim")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")

local PASSWORD = "Lib-b5ild!pw"
local BUILD = "vsphere-fixture-kube-v1.16.14"

for _, flavor in ipairs({ "rest", "api" }) do
describe("content library destinations of a vSphere build #vsphere on " .. flavor, function()
  local env, tmp, sim, ssh, iso, iso_sum, key, probe, varfile, lib
  local api = flavor == "api"

  setup(function()
    env = buildenv.vsphere("library-build", PASSWORD, { mib = 1, api = api })
    tmp, sim, ssh, iso, iso_sum, key, probe, varfile =
      env.tmp, env.sim, env.ssh, env.iso, env.iso_sum, env.key, env.probe, env.varfile
    -- the library (a build's destination must exist)
    local session = require("capil.vsphere.session")
    local s = assert(session.settings_from_vars({ var_files = { varfile } }))
    local vc = assert(session.connect(s))
    local ds = assert(require("capil.vsphere.inventory").datastore(vc, s))
    vc:logout()
    lib = assert(sim:rest_call("/rest/com/vmware/content/local-library", "POST", { create_spec = { name = "images",
      type = "LOCAL", storage_backings = { { type = "DATASTORE", datastore_id = ds.value } } } }))
  end)

  teardown(function()
    if env then env.stop() end
  end)

  local function run(out, extra)
    local a = { "run", "spec/fixtures/recipes/vsphere.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "vsphere", "--output", out, "--var-file", varfile,
      "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. iso_sum,
      "--var", "ssh_private_key_file=" .. key, "--var", "ssh_port=" .. ssh.port,
      "--var", "ssh_username=" .. ssh.user, "--var", "probe_file=" .. probe,
      "--var", "ip_settle_timeout=0.5s" }
    for _, x in ipairs(extra) do a[#a + 1] = x end
    local r = capil.run(a, { timeout = 240, env_add = { XDG_CACHE_HOME = tmp .. "/cache" } })
    assert.not_matches(PASSWORD, r.stdout .. r.stderr, 1, true)
    return r
  end

  -- the id of the library named `name`, or nil
  local function library_named(name)
    for _, id in ipairs(sim:rest_call("/rest/com/vmware/content/library") or {}) do
      local l = sim:rest_call("/rest/com/vmware/content/library/id:" .. id)
      if l and l.name == name then return id end
    end
  end

  -- a library's items by name: {name = {id, type, description, ...}} (default: images)
  local function items(library_id)
    local out = {}
    for _, id in ipairs(sim:rest_call("/rest/com/vmware/content/library/item?library_id=" .. (library_id or lib))
      or {}) do
      local it = sim:rest_call("/rest/com/vmware/content/library/item/id:" .. id)
      out[it.name] = it
    end
    return out
  end

  local function vm_named(name)
    for _, vm in ipairs(sim:vms()) do if vm.name == name then return vm end end
  end

  -- the refs of the VMs named `name`, as a set
  local function refs_named(name)
    local out = {}
    for _, vm in ipairs(sim:vms()) do if vm.name == name then out[vm.ref] = true end end
    return out
  end

  if not api then
  it("the plan's finalize step shows the destination; a wrong backend or combination, or a publish stage without "
    .. "a library, is refused before anything starts", function()
    local base = { "spec/fixtures/recipes/vsphere.lua", "--recipes-dir", "spec/fixtures/recipes", "--var-file", varfile }
    local function cmd(first, extra)
      local a = { first }
      for _, x in ipairs(base) do a[#a + 1] = x end
      for _, x in ipairs(extra) do a[#a + 1] = x end
      return capil.run(a, { timeout = 60 })
    end
    local r = cmd("inspect", { "--backend", "vsphere", "--var", "content_library=images",
      "--var", "library_item_type=vmtx", "--var", "content_library_destroy_vm=true" })
    assert.equal(0, r.code, r.stderr)
    local finalize
    for _, st in ipairs(json.decode(r.stdout).steps) do if st.kind == "finalize_vm" then finalize = st end end
    assert.same({ library = "images", item = BUILD, type = "vmtx", destroy_vm = true, export = true },
      finalize.content_library)
    assert.is_false(finalize.keep_vm)
    -- content_library_export=false: inspect shows the export and the OVA skipped, with the reason
    r = cmd("inspect", { "--backend", "vsphere", "--var", "content_library=images",
      "--var", "content_library_export=false" })
    assert.equal(0, r.code, r.stderr)
    local skip = {}
    for _, st in ipairs(json.decode(r.stdout).steps) do skip[st.id] = st.skip end
    local why = "content_library_export is false: the item " .. BUILD .. " of library images is the build's image"
    assert.same({ export = why, ova = why }, skip)
    r = cmd("inspect", { "--backend", "vsphere" })
    for _, st in ipairs(json.decode(r.stdout).steps) do assert.is_nil(st.content_library) end
    r = cmd("inspect", { "--backend", "esx", "--var", "content_library=images" })
    assert.equal(1, r.code)
    assert.matches("content libraries are vCenter's; build with --backend vsphere", r.stderr, 1, true)
    r = cmd("inspect", { "--backend", "vsphere", "--var", "content_library=images",
      "--var", "content_library_destroy_vm=true", "--var", "convert_to_template=true" })
    assert.equal(1, r.code)
    assert.matches("content_library_destroy_vm and convert_to_template", r.stderr, 1, true)
    r = cmd("inspect", { "--backend", "vsphere", "--var", "library_item_type=ova" })
    assert.equal(1, r.code)
    assert.matches("library_item_type", r.stderr, 1, true)
    -- the preflight finds the library (a dry run creates nothing)
    r = cmd("run", { "--backend", "vsphere", "--output", tmp .. "/out-none", "--dry-run",
      "--var", "content_library=nope", "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. iso_sum })
    assert.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("content_library nope: no such library on https://127.0.0.1:", r.stdout .. r.stderr, 1, true)
    r = cmd("run", { "--backend", "vsphere", "--output", tmp .. "/out-none", "--dry-run",
      "--var", "content_library=images", "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. iso_sum })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    r = cmd("run", { "--backend", "vsphere", "--output", tmp .. "/out-none", "--stages", "build,publish" })
    assert.equal(2, r.code)
    assert.matches("the publish stage needs a content library: --library NAME", r.stderr, 1, true)
    -- --create-library without a datastore (vsphere.json's is "") is refused before anything starts
    r = cmd("run", { "--backend", "vsphere", "--output", tmp .. "/out-none", "--stages", "build,publish",
      "--library", "new", "--create-library", "--var", "datastore=" })
    assert.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("--create-library (publish_create_library) needs the datastore variable", r.stderr, 1, true)
    assert.is_false(fs.exists(tmp .. "/out-none"))
  end)
  end

  it("content_library makes an OVF item of the build VM; --stages build,publish --create-library publishes the "
    .. "OVA into a new library", function()
    local out = tmp .. "/out-ovf"
    assert.is_nil(library_named("published"))
    sim:reset_rest()
    local r = run(out, { "--var", "content_library=images", "--var", "content_library_item=node-from-vm",
      "--stages", "build,publish", "--library", "published", "--create-library" })
    assert.equal(0, r.code, r.stderr)
    local n = {} -- the run's REST requests by name (before the spec's own)
    local log = sim:rest()
    for _, c in ipairs(log) do n[c.name] = (n[c.name] or 0) + 1 end
    assert.same({}, vcsim.foreign_requests(log, flavor))
    local published = library_named("published")
    assert.is_string(published, "--create-library made no library 'published'")
    local have = items()
    -- the build VM's OVF package (vCenter's OVF service, source = the VM)
    assert.is_table(have["node-from-vm"], "no item node-from-vm")
    assert.equal("ovf", have["node-from-vm"].type)
    -- three REST sessions (preflight, finalize, publish); the server's lack
    -- of /api is found once, not once per session
    if api then
      assert.equal(1, n["POST /api/vcenter/ovf/library-item"])
      assert.equal(3, n["POST /api/session"])
      assert.equal(3, n["DELETE /api/session"])
    else
      assert.equal(1, n["POST /rest/com/vmware/vcenter/ovf/library-item"])
      assert.equal(3, n["POST /rest/com/vmware/cis/session"])
      assert.equal(1, n["POST /api/session"])
      assert.equal(3, n["DELETE /rest/com/vmware/cis/session"])
    end
    -- the publish stage: the OVA, its sha256 on the item
    local ova = ("%s/%s/%s.ova"):format(out, BUILD, BUILD)
    local sha = assert(require("capil.sys.hash").file(ova))
    assert.is_nil(have[BUILD], "the OVA went into the build's library, not the publish stage's")
    local pub = items(published)[BUILD]
    assert.is_table(pub, "no item " .. BUILD)
    assert.matches("sha256:" .. sha, pub.description, 1, true)
    local report = json.read(("%s/%s/report.json"):format(out, BUILD))
    assert.same({ library = "images", library_id = lib, item = "node-from-vm", item_id = have["node-from-vm"].id,
      type = "ovf", updated = false, content_version = have["node-from-vm"].content_version }, report.library)
    assert.equal("published", report.publish.library)
    assert.equal(published, report.publish.library_id)
    assert.is_true(report.publish.created_library)
    assert.equal(pub.id, report.publish.item_id)
    assert.equal(sha, report.publish.sha256)
    assert.equal(pub.content_version, report.publish.content_version)
    assert.matches(("library published, item %s (%s), sha256 %s"):format(BUILD, pub.id, sha), r.stdout, 1, true)
    -- the build VM stays (keep_vm)
    assert.is_table(vm_named(BUILD))
    -- the item made from the VM deploys again (its OVF: the build VM's 2 CPUs, 512 MiB)
    r = capil.run({ "deploy", "--library", "images", "--item", "node-from-vm", "--name", "from-build-item",
      "--var-file", varfile }, { timeout = 60 })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local vm = vm_named("from-build-item")
    assert.is_table(vm, "no VM from-build-item")
    local script = ([[
local session = require("capil.vsphere.session")
local s = assert(session.settings_from_vars({ var_files = { %q } }))
local vc = assert(session.connect(s))
local p = assert(vc:props(require("capil.vsphere.vim25").ref("VirtualMachine", %q),
  { "config.hardware.numCPU", "config.hardware.memoryMB" }))
print(p["config.hardware.numCPU"], p["config.hardware.memoryMB"])
]]):format(varfile, vm.ref:match("[^:]+$"))
    local props = capil.run({ capil.script(tmp, "props.lua", script) })
    assert.equal(0, props.code, props.stderr)
    assert.equal("2\t512\n", props.stdout)
  end)

  if api then return end

  it("content_library_export=false: the item is the only image (no VMDK, no OVA, no NFC export); stages that "
    .. "need the OVA are refused before the build", function()
    local out = tmp .. "/out-noexport"
    local r = run(out, { "--var", "content_library=images", "--var", "content_library_item=node-only",
      "--var", "content_library_export=false", "--stages", "build,publish", "--library", "images" })
    assert.equal(2, r.code, r.stdout .. r.stderr)
    assert.matches("the publish stage needs the build's OVA, but the plan makes none (content_library_export is "
      .. "false: the item node-only of library images is the build's image)", r.stderr, 1, true)
    assert.is_false(fs.exists(out))
    local leases = sim:calls().ExportVm or 0
    r = run(out, { "--var", "content_library=images", "--var", "content_library_item=node-only",
      "--var", "content_library_export=false" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.is_table(items()["node-only"], "no item node-only")
    local dir = ("%s/%s"):format(out, BUILD)
    for _, f in ipairs(fs.list(dir)) do
      assert.is_nil(f:match("%.vmdk$") or f:match("%.ova") or f:match("%.ovf$"), "exported anyway: " .. f)
    end
    assert.equal(leases, sim:calls().ExportVm or 0, "an NFC export ran")
    local report = json.read(dir .. "/report.json")
    local status = {}
    for _, st in ipairs(report.steps) do status[st.id] = st.status end
    assert.equal("skipped", status.export)
    assert.equal("skipped", status.ova)
    assert.equal("ok", status.finalize)
    assert.equal("node-only", report.library.item)
    assert.is_nil(report.artifacts)
  end)

  it("library_item_type vmtx makes a VM template; content_library_destroy_vm removes the build VM; "
    .. "the run report records the items", function()
    local out = tmp .. "/out-vmtx"
    local before = refs_named(BUILD) -- the first build's VM (kept)
    local report_file = tmp .. "/reports/run.json"
    local r = run(out, { "--force", "--var", "content_library=images", "--var", "content_library_item=node-tmpl",
      "--var", "library_item_type=vmtx", "--var", "content_library_destroy_vm=true",
      "--stages", "build,publish", "--library", "images", "--library-item", "node-ova", "--report", report_file })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local have = items()
    assert.is_table(have["node-tmpl"], "no item node-tmpl")
    assert.equal("vm-template", have["node-tmpl"].type) -- what vCenter calls a vmtx item
    -- the template the library holds, and no build VM left
    local tmpl = vm_named("node-tmpl")
    assert.is_table(tmpl, "no template VM node-tmpl")
    assert.is_true(tmpl.template)
    assert.same(before, refs_named(BUILD), "the build VM was not destroyed")
    local rep = assert(json.read(report_file))
    local b = rep.builds[1]
    assert.equal("ok", b.status)
    assert.same({ "build", "publish" }, { b.stages[1].name, b.stages[2].name })
    assert.equal("ok", b.stages[2].status)
    assert.equal("node-tmpl", b.library.item)
    assert.equal(have["node-tmpl"].id, b.library.item_id)
    assert.equal("vmtx", b.library.type)
    assert.equal("node-ova", b.publish.item)
    assert.equal(have["node-ova"].id, b.publish.item_id)
    assert.is_string(b.publish.sha256)
  end)
end)
end
