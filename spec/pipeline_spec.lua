-- The build pipeline on QEMU with the tiny busybox+dropbear guest: the whole
-- plan runs (boot, SSH, a role, shutdown, export, OVA), and each failure
-- path ends with a clear message, exit 1 (130 for Ctrl-C), and nothing left
-- behind: no QEMU, no work directory, no OVA.
local capil = require("support.capil")
local fixtures = require("support.fixtures")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local runtime = require("capil.core.runtime")
local json = require("capil.sys.json")

local function tiny_args(out, extra)
  local t = fixtures.tiny()
  local args = { "run", "spec/fixtures/recipes/tiny.lua", "--recipes-dir", "spec/fixtures/recipes", "--output", out,
    "--var", "iso_url=file://" .. t.kernel, "--var", "iso_checksum=" .. assert(hash.file(t.kernel)),
    "--var", "qemu_kernel=" .. t.kernel, "--var", "qemu_initrd=" .. t.initrd,
    "--var", "ssh_private_key_file=" .. t.key }
  local append = "console=ttyS0 quiet rdinit=/init"
  for _, a in ipairs(extra or {}) do
    if a:match("^capil%.") then append = append .. " " .. a else args[#args + 1] = a end
  end
  args[#args + 1] = "--var"
  args[#args + 1] = "qemu_append=" .. append
  return args
end

local function qemu_pid(stderr)
  return tonumber(stderr:match("QEMU running %(pid (%d+)"))
end

-- nothing but logs and the report may remain after a failure
local function assert_clean(dir, stderr)
  local pid = qemu_pid(stderr)
  if pid then assert.is_false(proc.alive(pid), "QEMU still running") end
  capil.assert_no_leftovers(dir)
end

describe("pipeline on QEMU with the tiny guest #qemu", function()
  local out
  before_each(function() out = peer.dir("pipeline") end)

  it("builds: boots, provisions, shuts down, and writes the VMDK straight into a verified OVA", function()
    local r = capil.run(tiny_args(out, { "--var", "roles=marker" }), { timeout = 180 })
    assert.equal(0, r.code, r.stderr)
    local dir = out .. "/tiny-kube-v1.16.14"
    local ova = dir .. "/tiny-kube-v1.16.14.ova"
    assert.equal(ova .. "\n", r.stdout)
    local v = capil.run({ "ova", "verify", ova })
    assert.equal(0, v.code, v.stdout .. v.stderr)
    local report = json.read(dir .. "/report.json")
    assert.is_true(report.ok)
    assert.same({ ran = 1, skipped = 1 }, report.provision)
    assert.equal("tcg", report.accel)
    local ids = {}
    for _, s in ipairs(report.steps) do ids[#ids + 1] = s.id .. ":" .. s.status end
    assert.same({ "fetch-iso:ok", "installer:ok", "create-vm:ok", "boot:ok", "wait-ssh:ok", "provision:ok",
      "checks:ok", "shutdown:ok", "export:ok", "ova:ok", "manifest:ok" }, ids)
    -- capil's writer read the raw disk into the OVA (engine time, no temp
    -- copy, no VMDK file); the VMDK in the OVA is a sound streamOptimized disk
    assert.equal("capil", report.disk_writer)
    assert.is_true(report.vmdk_into_ova)
    assert.equal("engine", report.steps[9].class)
    assert.equal("engine", report.steps[10].class)
    assert.matches("tiny-kube-v1.16.14-disk-0.vmdk goes straight into the OVA", r.stderr, 1, true)
    assert.not_matches("through qemu-img", r.stderr, 1, true)
    assert.is_false(fs.exists(dir .. "/tiny-kube-v1.16.14-disk-0.vmdk"))
    local x = peer.dir("pipeline-x")
    assert.equal(0, assert(proc.run({ argv = { "tar", "-xf", ova, "-C", x } })).code)
    local chk = assert(proc.run({ argv = { "qemu-img", "check", x .. "/tiny-kube-v1.16.14-disk-0.vmdk" } }))
    assert.equal(0, chk.code, chk.stdout .. chk.stderr)
    fs.remove(x, { recursive = true })
    -- the role's output is in the build log; the manifest records the OVA (no VMDK file)
    assert.matches("provisioned-by-capil", fs.read(dir .. "/logs/build.log"), 1, true)
    local m = json.read(dir .. "/packer-manifest.json")
    assert.equal(1, #m.builds[1].files)
    assert.equal("tiny-kube-v1.16.14.ova", m.builds[1].files[1].name)
    assert.equal(assert(hash.file(ova)), m.builds[1].files[1].sha256)
    assert_clean(out, r.stderr)
    -- nothing to serve and a boot command that names no server: no port opened
    assert.matches("no installer files over HTTP: no server started", r.stderr, 1, true)
    assert.not_matches("installer files served on", r.stderr, 1, true)
  end)

  it("builds with disk_writer=qemu-img: a qcow2 disk, exported by qemu-img convert (tool time)", function()
    local r = capil.run(tiny_args(out, { "--var", "disk_writer=qemu-img" }), { timeout = 180 })
    assert.equal(0, r.code, r.stderr)
    local dir = out .. "/tiny-kube-v1.16.14"
    local v = capil.run({ "ova", "verify", dir .. "/tiny-kube-v1.16.14.ova" })
    assert.equal(0, v.code, v.stdout .. v.stderr)
    local report = json.read(dir .. "/report.json")
    assert.is_true(report.ok)
    assert.equal("qemu-img", report.disk_writer)
    assert.equal("export", report.steps[9].id)
    assert.equal("tool", report.steps[9].class)
    assert.matches("/disk.qcow2 to a streamOptimized VMDK", r.stderr, 1, true)
    assert_clean(out, r.stderr)
  end)

  it("fails when SSH never comes up, naming the serial log", function()
    local r = capil.run(tiny_args(out, { "capil.nossh=1", "--var", "ssh_timeout=12s" }), { timeout = 120 })
    assert.equal(1, r.code)
    assert.matches("step wait-ssh failed: tiny-kube-v1.16.14: no SSH after 12 s; see the serial log "
      .. out .. "/tiny-kube-v1.16.14/logs/serial.log", r.stderr, 1, true)
    assert_clean(out .. "/tiny-kube-v1.16.14", r.stderr)
  end)

  it("fails fast when the guest powers off during the wait", function()
    local t0 = runtime.now()
    local r = capil.run(tiny_args(out, { "capil.nossh=1", "capil.poweroff=3", "--var", "ssh_timeout=300s" }),
      { timeout = 120 })
    assert.equal(1, r.code)
    assert.is_true(runtime.now() - t0 < 60, "did not fail fast")
    assert.matches("QEMU exited", r.stderr, 1, true)
    assert.matches("serial.log", r.stderr, 1, true)
    assert_clean(out .. "/tiny-kube-v1.16.14", r.stderr)
  end)

  it("fails when a provisioning step exits non-zero, and leaves no OVA", function()
    local r = capil.run(tiny_args(out, { "--var", "roles=fail" }), { timeout = 120 })
    assert.equal(1, r.code)
    assert.matches("step provision failed: fail: fail on purpose: exit 3: about to fail", r.stderr, 1, true)
    local report = json.read(out .. "/tiny-kube-v1.16.14/report.json")
    assert.is_false(report.ok)
    assert_clean(out .. "/tiny-kube-v1.16.14", r.stderr)
  end)

  it("Ctrl-C stops the build, kills QEMU and removes its files within 15 s", function()
    local argv = { capil.exe }
    for _, a in ipairs(tiny_args(out, { "capil.nossh=1", "--var", "ssh_timeout=300s" })) do argv[#argv + 1] = a end
    local p = assert(proc.spawn({ argv = argv, stdout = "pipe", stderr = "pipe" }))
    local err = ""
    local deadline = runtime.now() + 60
    while not err:find("waiting up to", 1, true) and runtime.now() < deadline do
      local stream, chunk = p:read({ timeout = 5 })
      if stream == "stderr" then err = err .. chunk end
    end
    assert.matches("waiting up to", err, 1, true)
    local pid = qemu_pid(err)
    assert.is_true(proc.alive(pid))
    local t0 = runtime.now()
    assert(p:kill("INT"))
    local st = assert(p:wait({ timeout = 15 }))
    assert.is_true(runtime.now() - t0 < 15)
    assert.equal(130, st.code)
    p:close()
    assert.is_false(proc.alive(pid))
    assert_clean(out .. "/tiny-kube-v1.16.14", err)
  end)
end)
