-- Adding a backend is one module plus its registration line: a toy backend,
-- defined here and registered for this spec only, whose "VM" is this
-- machine's sshd (spec/support/sshd.lua) and whose export writes a tiny
-- streamOptimized VMDK, runs a real plan (the testos recipe, resolved for
-- "toy") through capil.build.pipeline: fetch, installer, create, boot,
-- SSH, a harmless role, shutdown, export, OVA and manifest. Nothing else
-- in capil is told about it.
local backend = require("capil.backend")
local sshd = require("support.sshd")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")

-- The whole backend: what capil.backend's interface asks, nothing more.
local function toy()
  local M = {
    name = "toy",
    description = "this machine's sshd as the guest (a spec's toy)",
    traits = { encoder = "qmp", export = "qemu-img", guest_id = "vsphere", http_ip = "127.0.0.1" },
    settings = { { "ssh_port", paths = { "ssh.port" }, default = 22 } },
  }
  local VM = {}
  VM.__index = VM

  function M.prepare(ctx, step)
    ctx.state.prepared = step.vm_name
    ctx.report.toy = "prepared"
    return true
  end

  function M.create(ctx, step)
    local vm = setmetatable({ name = step.vm_name, ctx = ctx, port = ctx.settings.ssh_port, disk_mb = step.disk_mb,
      calls = {} }, VM)
    ctx.state.vm, ctx.state.iso = vm, ctx.media.iso
    M.last = vm -- for the spec to look at
    return vm
  end

  function VM:start() self.calls[#self.calls + 1] = "start" return true end
  function VM:type_keys(events)
    self.calls[#self.calls + 1] = "type_keys"
    self.ctx.state.keys = #events
    return true, nil, nil, 1
  end
  function VM:ssh_address() return { host = "127.0.0.1", port = self.port } end
  function VM.alive() return true end
  function VM:wait_exit() self.calls[#self.calls + 1] = "wait_exit" return true end
  function VM.power_off() return true end
  function VM:export(path, opts)
    -- a sparse disk of the plan's size holding a marker, as a streamOptimized VMDK
    local raw = self.ctx.workdir .. "/disk.raw"
    local f, err = io.open(raw, "wb")
    if not f then return nil, err, "EIO" end
    f:write("toy disk\n")
    f:seek("set", self.disk_mb * 1024 * 1024 - 1)
    f:write("\0")
    f:close()
    local r, code
    r, err, code = require("capil.format.vmdk").write(raw, path,
      { adapter_type = opts.adapter_type, hwversion = opts.hwversion, jobs = 1 })
    if not r then return nil, err, code end
    return true
  end
  function VM:destroy() self.destroyed = true return true end
  M.VM = VM

  M.test = {
    prepare = function() return nil, "toy: no test VM", "ENOTSUP" end,
    record = function(run) return { backend = "toy", name = run.vm and run.vm.name } end,
    finish = function() return true end,
  }
  return M
end

describe("a toy backend: one module and its registration line #unit", function()
  setup(function()
    package.preload["capil.backends.toy"] = toy
    table.insert(backend.REGISTERED, "toy") -- the registration line
  end)
  teardown(function()
    for i = #backend.REGISTERED, 1, -1 do
      if backend.REGISTERED[i] == "toy" then table.remove(backend.REGISTERED, i) end
    end
    package.preload["capil.backends.toy"] = nil
    package.loaded["capil.backends.toy"] = nil
  end)

  it("conforms to the interface", function()
    assert.same({}, backend.check(assert(backend.get("toy"))))
    assert.same({ "toy" }, (function()
      local out = {}
      for _, n in ipairs(backend.with("http_ip")) do if n == "toy" then out[#out + 1] = n end end
      return out
    end)())
  end)

  -- The testos plan for "toy" against a fresh sshd; the host is no guest to
  -- check or lock: no checks, a harmless shutdown command.
  local function toy_plan(tmp)
    local key = sshd.keygen(tmp, "guest_ed25519")
    local server = sshd.start({ authorized = { key } })
    local iso = tmp .. "/toy.iso"
    assert(fs.write(iso, "not really an ISO\n"))
    local r = assert(require("capil.build.recipe").load("spec/fixtures/recipes/testos.lua"))
    local cfg = assert(require("capil.build.config").resolve(r, { backend = "toy", config_dir = "recipes/config",
      getenv = function() return nil end, vars = {
        "iso_url=file://" .. iso, "iso_checksum=" .. assert(hash.file(iso)), "boot_wait=0s",
        "ssh_username=" .. server.user, "ssh_private_key_file=" .. key, "ssh_port=" .. server.port, "disk_size=1024",
        "roles=probe", "probe_file=" .. tmp .. "/probe",
      } }))
    local plan, errs = require("capil.build.loader").plan(cfg, "toy", { recipes_dir = "spec/fixtures/recipes",
      output_root = tmp .. "/out", cache_dir = tmp .. "/cache" })
    assert(plan, errs and table.concat(errs, "\n"))
    local steps = {}
    for _, s in ipairs(plan.steps) do
      if s.kind == "shutdown" then s.command = "true" end
      if s.kind ~= "checks" then steps[#steps + 1] = s end
    end
    plan.steps = steps
    return plan, cfg, server, iso
  end

  it("builds the testos plan on this machine's sshd: create, boot, SSH, provision, export, OVA", function()
    local tmp = peer.dir("toy")
    local plan, cfg, server, iso = toy_plan(tmp)
    finally(function() server.stop() end)
    local probe = tmp .. "/probe"
    -- the plan carries the toy's setting; the pipeline hands it over
    assert.same({ ssh_port = server.port }, plan.settings)
    local report, err = require("capil.build.pipeline").run(plan, cfg, { cache_dir = tmp .. "/cache" })
    assert(report, err)
    assert.is_true(report.ok)
    local ids = {}
    for _, s in ipairs(report.steps) do ids[#ids + 1] = s.id .. ":" .. s.status end
    assert.same({ "fetch-iso:ok", "installer:ok", "create-vm:ok", "boot:ok", "wait-ssh:ok", "provision:ok",
      "shutdown:ok", "export:ok", "ova:ok", "manifest:ok" }, ids)
    assert.equal("prepared", report.toy)
    assert.equal(1, report.typing_calls)
    -- provisioning ran over SSH on the toy's address
    assert.equal("provisioned-by-capil\n", fs.read(probe))
    -- the export is a streamOptimized VMDK, packed into a verified OVA
    local vmdk = plan.artifacts.vmdk
    local head = assert(fs.read(vmdk)):sub(1, 4096)
    assert.equal("KDMV", head:sub(1, 4))
    assert.matches('createType="streamOptimized"', head, 1, true)
    assert.is_true(fs.exists(plan.artifacts.ova))
    local m = json.read(plan.artifacts.manifest)
    assert.equal("toy", m.builds[1].builder_type)
    assert.equal(assert(hash.file(vmdk)), m.builds[1].files[1].sha256)
    -- the VM was driven through the contract and removed after the good run
    local vm = backend.get("toy").last
    assert.same({ "start", "type_keys", "wait_exit" }, vm.calls)
    assert.equal(iso, vm.ctx.state.iso)
    assert.is_true(vm.destroyed)
  end)

  it("fails a step with the path and reason when the disk cannot be written, and a run before its first step", function()
    local tmp = peer.dir("toy-io")
    local plan, cfg, server = toy_plan(tmp)
    finally(function() server.stop() end)
    assert(fs.write(tmp .. "/file", "x"))
    for _, s in ipairs(plan.steps) do
      if s.kind == "export_disk" then s.path = tmp .. "/file/disk.vmdk" end
    end
    local report, err, _, partial = require("capil.build.pipeline").run(plan, cfg, { cache_dir = tmp .. "/cache" })
    assert.is_nil(report)
    assert.matches("step export failed: fs.mkdir: " .. tmp .. "/file: ", err, 1, true)
    assert.is_false(partial.ok)
    assert.equal("failed", partial.steps[#partial.steps].status)
    -- an output directory that cannot be made: no step runs, no traceback
    plan.output_dir = tmp .. "/file/out"
    local r2, err2, code2 = require("capil.build.pipeline").run(plan, cfg, {})
    assert.is_nil(r2)
    assert.matches("output directory: fs.mkdir: " .. tmp .. "/file/out: ", err2, 1, true)
    assert.equal("ENOTDIR", code2)
  end)
end)
