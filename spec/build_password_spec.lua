-- The build user's safety (image-builder's CVE-2024-9486 and -9594): a
-- password random per build unless set, its SHA-512 crypt hash for answer
-- files (`ssh_password_hash`, checked against `openssl passwd -6`), the
-- build user deleted with its sudoers entries at shutdown, and the seed
-- CD's bus in the plan. Then a full pipeline run on a toy backend whose
-- "VM" is this machine's sshd (the pattern of spec/toy_backend_spec.lua)
-- proves that the clear password never reaches the log, the report, the
-- plan, a child process's arguments or a file left in the output
-- directory, and that the seed CD holds the hash, never the password.
local backend = require("capil.backend")
local sshd = require("support.sshd")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local proc = require("capil.sys.proc")
local installer = require("capil.build.installer")

-- `openssl passwd -6 -salt SALT` of `password` (given on stdin)
local function openssl_sha512(password, salt)
  local r = assert(proc.run({ argv = { "openssl", "passwd", "-6", "-salt", salt, "-stdin" }, stdin = password .. "\n" }))
  assert.equal(0, r.code, r.stderr)
  return (r.stdout:gsub("%s+$", ""))
end

local function resolve(vars, recipe)
  local r = assert(require("capil.build.recipe").load(recipe or "spec/fixtures/recipes/testos.lua"))
  local cfg, errs = require("capil.build.config").resolve(r, { backend = "qemu", config_dir = "recipes/config",
    getenv = function() return nil end, vars = vars or {} })
  return cfg, errs
end

local function plan_of(cfg, b)
  local plan, errs = require("capil.build.loader").plan(cfg, b or "qemu", { recipes_dir = "spec/fixtures/recipes" })
  assert(plan, errs and table.concat(errs, "\n"))
  local by = {}
  for _, s in ipairs(plan.steps) do by[s.kind] = s end
  return plan, by
end

describe("build password #unit", function()
  it("hashes with SHA-512 crypt as openssl passwd -6 does", function()
    for _, c in ipairs({ { "builder", "abcdefgh" }, { "Zx-_09aB", "./0123456789ABCD" }, { "p", "s" },
      { ("long"):rep(40), "saltsaltsaltsalt" } }) do
      assert.equal(openssl_sha512(c[1], c[2]), assert(hash.crypt_sha512(c[1], c[2])))
    end
    assert.has_error(function() hash.crypt_sha512("x", "") end)
    assert.has_error(function() hash.crypt_sha512("x", "bad$salt") end)
    assert.has_error(function() hash.crypt_sha512("x", ("s"):rep(17)) end)
    assert.has_error(function() hash.crypt_sha512("a\0b", "salt") end)
  end)

  it("is random per build unless a recipe, var file or --var sets it, and a secret at once", function()
    -- packer-common.json's "builder" (the shared layer) is no user's choice
    local cfg = assert(resolve())
    assert.equal("shared", cfg.sources["ssh.password"].layer)
    assert.is_false(installer.password_is_set(cfg))
    local a = assert(installer.build_password(cfg))
    local b = assert(installer.build_password(cfg))
    assert.is_true(a.random)
    assert.not_equal(a.password, b.password)
    assert.equal(32, #a.password)
    assert.matches("^[%w_-]+$", a.password)
    assert.equal("the password is ****", log.redact("the password is " .. a.password))
    -- the hash verifies with openssl, salt and all
    local salt = a.hash:match("^%$6%$([./%w]+)%$")
    assert.equal(16, #salt)
    assert.equal(openssl_sha512(a.password, salt), a.hash)

    local set = assert(resolve({ "ssh_password=Chosen-by-me1" }))
    assert.is_true(installer.password_is_set(set))
    local c = assert(installer.build_password(set))
    assert.is_false(c.random)
    assert.equal("Chosen-by-me1", c.password)
    assert.equal("****", log.redact("Chosen-by-me1"))
    -- the old fixed password, when a var asks for it
    local old = assert(installer.build_password(assert(resolve({ "ssh_password=builder" }))))
    assert.equal("builder", old.password)
    assert.is_false(old.random)
  end)

  it("plans the build user's deletion, or its lock with keep_build_user", function()
    local _, by = plan_of(assert(resolve({ "ssh_username=builder" })))
    assert.equal("random", by.serve_installer.ssh_password)
    assert.same({ "ssh_username", "ssh_password", "ssh_password_hash" }, by.serve_installer.template_vars)
    assert.equal("delete", by.shutdown.build_user)
    -- image-builder's wrapper (images/capi/packer/ova/packer-node.json)
    assert.equal("sudo -S -E sh -c 'userdel -f -r builder && rm -f /etc/sudoers.d/builder /etc/sudoers.d/90-builder"
      .. " /etc/sudoers.d/90-cloud-init-users && shutdown -P now'", by.shutdown.command)
    assert.equal("ssh_password", by.shutdown.stdin_var)
    local _, kept = plan_of(assert(resolve({ "keep_build_user=true", "ssh_password=builder" })))
    assert.equal("set", kept.serve_installer.ssh_password)
    assert.equal("lock", kept.shutdown.build_user)
    assert.equal("sudo -S -E sh -c 'usermod -L builder && shutdown -P now'", kept.shutdown.command)
    local _, root = plan_of(assert(resolve({ "ssh_username=root" })))
    assert.equal("none", root.shutdown.build_user)
    assert.equal("shutdown -P now", root.shutdown.command)
  end)

  it("puts the seed CD's bus in create_vm when the recipe has a seed CD", function()
    local _, none = plan_of(assert(resolve()))
    assert.is_nil(none.create_vm.cd_bus)
    for _, b in ipairs({ "qemu", "workstation", "vsphere", "esx" }) do
      local _, ide = plan_of(assert(resolve({ "cd_files=testos/ks.cfg" })), b)
      assert.equal("ide", ide.create_vm.cd_bus, b)
      local _, sata = plan_of(assert(resolve({ "cd_files=testos/ks.cfg", "cd_bus=sata" })), b)
      assert.equal("sata", sata.create_vm.cd_bus, b)
    end
    local cfg, errs = resolve({ "cd_bus=scsi" })
    assert.is_nil(cfg)
    assert.matches("cd_bus: expected one of ide, sata, got", table.concat(errs, "\n"), 1, true)
  end)
end)

describe("the seed CD on each backend's bus #unit", function()
  it("QEMU: IDE by default, an ich9-ahci controller for SATA", function()
    local qemu = require("capil.backends.qemu")
    local dir = peer.dir("seed-qemu")
    local function argv(bus)
      local vm = assert(qemu.vm({ workdir = dir, name = "v", disk_mb = 64, iso = dir .. "/i.iso",
        extra_cdroms = { dir .. "/cd.iso" }, cd_bus = bus }))
      return table.concat(vm:argv(), " ")
    end
    local ide = argv(nil)
    assert.matches("-drive file=" .. dir .. "/cd.iso,media=cdrom,readonly=on", ide, 1, true)
    assert.not_matches("ich9-ahci", ide, 1, true)
    local sata = argv("sata")
    assert.matches("-device ich9-ahci,id=ahci0 -drive file=" .. dir .. "/cd.iso,media=cdrom,readonly=on,if=none,id=cd1"
      .. " -device ide-cd,drive=cd1,bus=ahci0.0", sata, 1, true)
  end)

  it("Workstation: ide1:1, or sata0:1 with sata0 present", function()
    local ws = require("capil.backends.workstation")
    local function vmx(bus)
      local out = {}
      for _, e in ipairs(ws.vmx_entries({ name = "v", guest_os = "other-64", disk = "v.vmdk", iso = "/i.iso",
        cdroms = { "/cd.iso" }, cd_bus = bus, serial = "/s.log", vnc = { ip = "127.0.0.1", port = 5900 } })) do
        out[e[1]] = tostring(e[2])
      end
      return out
    end
    local ide = vmx("ide")
    assert.equal("/i.iso", ide["ide1:0.fileName"])
    assert.equal("/cd.iso", ide["ide1:1.fileName"])
    assert.is_nil(ide["sata0.present"])
    local sata = vmx("sata")
    assert.equal("true", sata["sata0.present"])
    assert.equal("cdrom-image", sata["sata0:1.deviceType"])
    assert.equal("/cd.iso", sata["sata0:1.fileName"])
    assert.is_nil(sata["ide1:1.fileName"])
  end)

  it("ESXi over SSH: ide1:0, or the next SATA unit after the install ISO", function()
    local esx = require("capil.backends.esx.ssh")
    local ide = esx.vmx({ name = "v", disk = "v.vmdk", isos = { "/i.iso" }, seed_iso = "/cd.iso" })
    assert.matches('sata0:0.fileName = "/i.iso"', ide, 1, true)
    assert.matches('ide1:0.fileName = "/cd.iso"', ide, 1, true)
    local sata = esx.vmx({ name = "v", disk = "v.vmdk", isos = { "/i.iso" }, seed_iso = "/cd.iso", cd_bus = "sata" })
    assert.matches('sata0:1.deviceType = "cdrom-image"', sata, 1, true)
    assert.matches('sata0:1.fileName = "/cd.iso"', sata, 1, true)
    assert.not_matches("ide1:0", sata, 1, true)
  end)
end)

-- A toy backend: the VM is this machine's sshd; it records what the
-- contract hands it (the password through ctx.secret, the seed CD and bus).
local function toy()
  local M = {
    name = "toy-pw", description = "this machine's sshd as the guest (build password spec)",
    traits = { encoder = "qmp", export = "qemu-img", guest_id = "vsphere", http_ip = "127.0.0.1" },
    settings = { { "ssh_port", paths = { "ssh.port" }, default = 22 } },
  }
  local VM = {}
  VM.__index = VM
  function M.create(ctx, step)
    M.seen = { password = ctx.secret("ssh_password"), cd_bus = step.cd_bus,
      cd = ctx.media.cd_iso and fs.read(ctx.media.cd_iso) }
    return setmetatable({ name = step.vm_name, ctx = ctx, port = ctx.settings.ssh_port, disk_mb = step.disk_mb }, VM)
  end
  function VM.start() return true end
  function VM.type_keys() return true, nil, nil, 1 end
  function VM:ssh_address() return { host = "127.0.0.1", port = self.port } end
  function VM.alive() return true end
  function VM.wait_exit() return true end
  function VM.power_off() return true end
  function VM:export(path)
    local raw = self.ctx.workdir .. "/disk.raw"
    local f = assert(io.open(raw, "wb")) -- sparse, of the plan's size
    f:seek("set", self.disk_mb * 1024 * 1024 - 1)
    f:write("\0")
    f:close()
    local r, err, code = require("capil.format.vmdk").write(raw, path, { jobs = 1 })
    if not r then return nil, err, code end
    return true
  end
  function VM.destroy() return true end
  M.test = {
    prepare = function() return nil, "toy: no test VM", "ENOTSUP" end,
    record = function() return {} end,
    finish = function() return true end,
  }
  return M
end

describe("the clear build password leaves no trace #unit", function()
  setup(function()
    package.preload["capil.backends.toy-pw"] = toy
    table.insert(backend.REGISTERED, "toy-pw")
  end)
  teardown(function()
    for i = #backend.REGISTERED, 1, -1 do
      if backend.REGISTERED[i] == "toy-pw" then table.remove(backend.REGISTERED, i) end
    end
    package.preload["capil.backends.toy-pw"] = nil
    package.loaded["capil.backends.toy-pw"] = nil
  end)

  it("not in the log, report, plan, children's arguments or output files; the seed CD has the hash", function()
    local tmp = peer.dir("build-pw")
    local key = sshd.keygen(tmp, "guest_ed25519")
    local server = sshd.start({ authorized = { key } })
    finally(function() server.stop() end)
    -- an answer file that takes a hash (as Photon's ks.json and
    -- subiquity's autoinstall do), on a SATA seed CD and over HTTP
    assert(fs.mkdir(tmp .. "/http"))
    assert(fs.write(tmp .. "/http/answer.cfg", "user={{ ssh_username }}\nhash={{ ssh_password_hash }}\n"))
    local iso = tmp .. "/toy.iso"
    assert(fs.write(iso, "not really an ISO\n"))
    local r = assert(require("capil.build.recipe").load("spec/fixtures/recipes/testos.lua"))
    local cfg = assert(require("capil.build.config").resolve(r, { backend = "toy-pw", config_dir = "recipes/config",
      getenv = function() return nil end, vars = {
        "iso_url=file://" .. iso, "iso_checksum=" .. assert(hash.file(iso)), "boot_wait=0s",
        "ssh_username=" .. server.user, "ssh_private_key_file=" .. key, "ssh_port=" .. server.port, "disk_size=1024",
        "roles=probe", "probe_file=" .. tmp .. "/probe", "cd_files=answer.cfg", "cd_bus=sata",
      } }))
    local plan, errs = require("capil.build.loader").plan(cfg, "toy-pw", { recipes_dir = "spec/fixtures/recipes",
      output_root = tmp .. "/out", cache_dir = tmp .. "/cache" })
    assert(plan, errs and table.concat(errs, "\n"))
    local steps = {}
    for _, s in ipairs(plan.steps) do
      if s.kind == "serve_installer" then s.dir, s.files = tmp .. "/http", { "answer.cfg" } end
      if s.kind == "shutdown" then s.command = "cat >/dev/null" end -- the password arrives on stdin
      if s.kind ~= "checks" then steps[#steps + 1] = s end
    end
    plan.steps = steps
    local plan_json = json.encode(plan)

    -- every child's arguments during the run
    local argvs = {}
    local run0, spawn0 = proc.run, proc.spawn
    proc.run = function(o, ...) argvs[#argvs + 1] = table.concat(o.argv or {}, " ") return run0(o, ...) end
    proc.spawn = function(o, ...) argvs[#argvs + 1] = table.concat(o.argv or {}, " ") return spawn0(o, ...) end
    local report, err = require("capil.build.pipeline").run(plan, cfg, { cache_dir = tmp .. "/cache" })
    proc.run, proc.spawn = run0, spawn0
    assert(report, err)
    assert.is_true(report.ok)

    local seen = backend.get("toy-pw").seen
    local pw = seen.password
    assert.equal(32, #pw)
    assert.equal("sata", seen.cd_bus)
    -- the seed CD (ISO 9660 keeps file data as is) holds a hash of this password
    local crypted = assert(seen.cd:match("hash=(%$6%$[./%w]+%$[./%w]+)"), "no hash on the seed CD")
    assert.equal(crypted, hash.crypt_sha512(pw, crypted:match("^%$6%$([./%w]+)%$")))
    assert.is_nil(seen.cd:find(pw, 1, true), "the clear password is on the seed CD")

    local function clean(what, text)
      assert.is_nil(tostring(text):find(pw, 1, true), "the clear password is in " .. what)
    end
    clean("the plan", plan_json)
    clean("the report", json.encode(report))
    for _, a in ipairs(argvs) do clean("a child's arguments: " .. a, a) end
    assert.truthy(#argvs > 0) -- xorriso made the seed CD
    local found = assert(proc.run({ argv = { "find", plan.output_dir, "-type", "f" } }))
    local files = 0
    for path in found.stdout:gmatch("[^\n]+") do
      files = files + 1
      clean(path, assert(fs.read(path)))
    end
    assert.truthy(files >= 4) -- build.log, report.json, the OVA and its parts
    local buildlog = assert(fs.read(plan.output_dir .. "/logs/build.log"))
    assert.matches("a random password for this build", buildlog, 1, true)
    -- the rendered answer files went with the server
    local left = assert(proc.run({ argv = { "find", plan.output_dir, "-name", "answer.cfg" } }))
    assert.equal("", left.stdout)
  end)
end)
