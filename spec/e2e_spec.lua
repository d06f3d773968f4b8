-- The whole build, end to end, on QEMU: capil installs the test OS from the
-- installer fixture (boot line typed over QMP, answer file served by capil's
-- HTTP server), provisions it over SSH (including apt against Debian's
-- mirror), runs the image checks, sysprep, shuts down, exports a
-- streamOptimized VMDK and packs the OVA. Then the VMDK from the OVA is
-- booted with a NoCloud seed made from cloudinit/, as a user would test it.
local capil = require("support.capil")
local fixtures = require("support.fixtures")
local peer = require("support.peer")
local proc = require("capil.proc")
local fs = require("capil.fs")
local hash = require("capil.hash")
local json = require("capil.json")
local ssh = require("capil.ssh")
local guest = require("capil.guest")

describe("end-to-end build of the test OS #qemu #e2e", function()
  it("builds an OVA whose VMDK boots with cloud-init as capv", function()
    local iso = fixtures.installer_iso()
    local out = peer.dir("e2e")
    local r = capil.run({ "run", "spec/fixtures/recipes/testos.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--output", out, "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. assert(hash.file(iso)) },
      { timeout = 2400 })
    local dir = out .. "/testos-kube-v1.16.14"
    assert.equal(0, r.code, r.stderr .. "\n" .. (fs.read(dir .. "/logs/serial.log") or ""))
    local ova = dir .. "/testos-kube-v1.16.14.ova"

    -- the OVA verifies, the checks passed, the timing split is recorded
    local v = capil.run({ "ova", "verify", ova })
    assert.equal(0, v.code, v.stdout .. v.stderr)
    local report = json.read(dir .. "/report.json")
    assert.is_true(report.ok)
    assert.equal(5, report.checks.total)
    assert.equal(0, report.checks.failed)
    io.stderr:write(("\n[e2e] wall %.1f s: guest %.1f s, tools %.1f s, engine %.2f s (%.2f %%)\n"):format(
      report.seconds, report.time.guest, report.time.tool, report.time.engine,
      100 * report.time.engine / report.seconds))
    local buildlog = fs.read(dir .. "/logs/build.log")
    local build_mid = buildlog:match("build%-machine%-id=(%x+)")
    local build_key = buildlog:match("build%-host%-key=(SHA256:%S+)")
    assert.truthy(build_mid)
    assert.truthy(build_key)

    -- the extracted VMDK is a valid streamOptimized disk
    local x = peer.dir("e2e-x")
    assert.equal(0, assert(proc.run({ argv = { "tar", "-xf", ova, "-C", x } })).code)
    local vmdk = x .. "/testos-kube-v1.16.14-disk-0.vmdk"
    local chk = assert(proc.run({ argv = { "qemu-img", "check", vmdk }, timeout = 300 }))
    assert.equal(0, chk.code, chk.stdout .. chk.stderr)

    -- first boot of the image with the cloudinit/ NoCloud seed
    local seed = x .. "/seed.iso"
    local mk = assert(proc.run({ argv = { "xorriso", "-as", "genisoimage", "-quiet", "-output", seed, "-volid",
      "cidata", "-joliet", "-rock", "cloudinit/user-data", "cloudinit/meta-data" } }))
    assert.equal(0, mk.code, mk.stderr)
    local vm = fixtures.qemu({ disk = vmdk, snapshot = true, cdrom = seed, memory = 1024, smp = 2 })
    finally(function() vm.stop() end)
    local s, err = guest.wait_ssh({ host = "127.0.0.1", port = vm.ssh_port, user = "capv",
      key = "cloudinit/id_ed25519.capi", timeout = 600, what = "the built image",
      alive = function() return vm.running(), "QEMU exited" end })
    assert(s, err)
    local function run_in(cmd)
      local res = assert(s:exec(cmd, { timeout = 60 }))
      return res.code, (res.stdout:gsub("%s+$", ""))
    end
    assert.same({ 0, "capv" }, { run_in("id -un") })
    assert.same({ 0, "provisioned by capil" }, { run_in("cat /etc/capil-testos-marker") })
    assert.equal(0, (run_in("sudo -n true")))
    -- sysprep: a new machine-id and new host keys at first boot
    local _, mid = run_in("cat /etc/machine-id")
    assert.matches("^%x+$", mid)
    assert.not_equal(build_mid, mid)
    assert.not_equal(build_key, s.host_key_fingerprint)
    -- the build user cannot log in with its password any more
    local b, berr, bcode = ssh.connect({ host = "127.0.0.1", port = vm.ssh_port, user = "builder",
      password = "builder", timeout = 30 })
    assert.is_nil(b, "the build user logged in")
    assert.equal("SSH_AUTH", bcode, berr)
    s:exec("sudo -n poweroff", { timeout = 30 })
    s:close()
    vm.wait_exit(60)
  end)
end)
