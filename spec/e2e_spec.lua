-- The whole build, end to end, on QEMU: capil installs the test OS from the
-- installer fixture (boot line typed over QMP, answer file served by capil's
-- HTTP server), provisions it over SSH (including apt against Debian's
-- mirror), runs the image checks, sysprep, shuts down, exports a
-- streamOptimized VMDK and packs the OVA. Then `capil test` boots the image
-- with the cloudinit/ seed and runs the suites, and `capil ssh` logs in.
local capil = require("support.capil")
local fixtures = require("support.fixtures")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")
local ssh = require("capil.sys.ssh")
local runtime = require("capil.core.runtime")
local nginx = require("support.nginx")

-- The seed document's /etc/cni/net.d/10-mynet.conf, as its heredoc wrote it.
local SEED_10_MYNET = require("support.seed").CNI_MYNET

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
    -- the installer server (the answer file over HTTP) lived only while the build ran
    local port = tonumber(r.stderr:match("installer files served on [%d%.]+:(%d+)"))
    assert.is_number(port, r.stderr)
    assert.is_nil(runtime.port_open("127.0.0.1", port, 0.5))

    -- the OVA verifies, the checks passed, the timing split is recorded
    local v = capil.run({ "ova", "verify", ova })
    assert.equal(0, v.code, v.stdout .. v.stderr)
    -- the OVF declares the node (image-builder's 2 CPUs, 2 cores per socket,
    -- 2048 MiB, PVSCSI, VMXNET3), not this 1 GiB build VM
    local facts = assert(require("capil.format.ova").inspect(ova))
    assert.same({ 2, 2, 2048 }, { facts.hardware.cpus, facts.hardware.cores_per_socket, facts.hardware.memory_mb })
    assert.matches("VirtualSCSI", facts.hardware.scsi)
    assert.matches("VmxNet3", facts.hardware.nic)
    local report = json.read(dir .. "/report.json")
    assert.is_true(report.ok)
    assert.equal(12, report.checks.total) -- testos's 9 and the 3 hygiene checks, after sysprep
    assert.equal(0, report.checks.failed)
    local export_s = 0
    for _, st in ipairs(report.steps) do if st.kind == "export_disk" then export_s = st.seconds end end
    io.stderr:write(("\n[e2e] wall %.1f s: guest %.1f s, tools %.1f s, engine %.2f s (%.2f %%); export %.2f s (%s)\n")
      :format(report.seconds, report.time.guest, report.time.tool, report.time.engine,
        100 * report.time.engine / report.seconds, export_s, tostring(report.disk_writer)))
    local buildlog = fs.read(dir .. "/logs/build.log")
    local build_mid = buildlog:match("build%-machine%-id=(%x+)")
    local build_key = buildlog:match("build%-host%-key=(SHA256:%S+)")
    assert.truthy(build_mid)
    assert.truthy(build_key)

    -- the VMDK went straight into the OVA (no file of it); extracted, it is
    -- a valid streamOptimized disk
    assert.is_true(report.vmdk_into_ova)
    assert.is_false(fs.exists(dir .. "/testos-kube-v1.16.14-disk-0.vmdk"))
    local x = peer.dir("e2e-x")
    assert.equal(0, assert(proc.run({ argv = { "tar", "-xf", ova, "-C", x } })).code)
    local vmdk = x .. "/testos-kube-v1.16.14-disk-0.vmdk"
    local chk = assert(proc.run({ argv = { "qemu-img", "check", vmdk }, timeout = 300 }))
    assert.equal(0, chk.code, chk.stdout .. chk.stderr)

    -- capil test: the build's VMDK (extracted from the OVA) under an overlay with the cloudinit/ seed,
    -- the cni suite for real (Debian's CNI plugins, served by nginx, checksum
    -- from the .sha256 beside them) and the node-conformance runner with its
    -- stand-in tarball; the VM is kept for capil ssh
    local disk_sum = assert(hash.file(ova, "sha256"))
    local web = nginx.start()
    finally(function() web.stop() end)
    local cni_tgz = fixtures.cni_plugins()
    assert(fs.copy(cni_tgz, web.root .. "/cni-plugins.tgz"))
    assert(fs.write(web.root .. "/cni-plugins.tgz.sha256", assert(hash.file(cni_tgz, "sha256")) .. "  cni-plugins.tgz\n"))
    local k8s = require("support.conformance").tarball(web.root .. "/v1.16.14")
    assert(fs.write(web.root .. "/v1.16.14/kubernetes-test-linux-amd64.tar.gz.sha256", assert(hash.file(k8s, "sha256"))))
    local t = capil.run({ "test", dir, "--suite", "cni,node-conformance", "--keep",
      "--var", "cni_plugins_url=" .. web.url("/cni-plugins.tgz"),
      "--var", "node_conformance_url=" .. web.url("/{{kubernetes_version}}/kubernetes-test-linux-amd64.tar.gz"),
      "--var", "node_conformance_kubernetes_version=v1.16.14" }, { timeout = 1200 })
    local state = json.read(dir .. "/test/vm.json")
    finally(function() peer.stop_pid(state and state.pid) end)
    assert.equal(0, t.code, t.stderr .. "\n" .. (fs.read(dir .. "/test/test.log") or ""))
    assert.is_table(state)
    local tr = json.read(dir .. "/test/report.json")
    assert.is_true(tr.ok)
    local by = {}
    for _, su in ipairs(tr.suites) do by[su.name] = su end
    assert.is_true(by.cni.ok)
    assert.is_true(by["node-conformance"].ok)
    assert.is_true(by["node-conformance"].summary.tests > 0)
    local smoke
    for _, st in ipairs(by.cni.steps) do if st.name == "smoke" then smoke = st end end
    assert.matches("10%.22%.%d+%.%d+", smoke.detail)
    assert.truthy(#fs.list(dir .. "/test/junit") > 0)
    local junit = assert(require("capil.sys.xml").parse(assert(fs.read(dir .. "/test/junit.xml"))))
    assert.equal("0", junit.attrs.failures)
    assert.is_true(json.read(dir .. "/report.json").test.ok)
    assert.equal(disk_sum, assert(hash.file(ova, "sha256")), "capil test modified the build's OVA")

    -- capil ssh: one command as capv, its exit status, the CNI file as the seed wrote it
    local r1 = capil.run({ "ssh", dir, "--", "id", "-un" })
    assert.equal(0, r1.code, r1.stderr)
    assert.equal("capv\n", r1.stdout)
    assert.equal(3, capil.run({ "ssh", dir, "--", "exit 3" }).code)
    local conf = capil.run({ "ssh", dir, "--", "cat", "/etc/cni/net.d/10-mynet.conf" })
    assert.equal(0, conf.code, conf.stderr)
    assert.equal(SEED_10_MYNET, conf.stdout)
    -- a key cloud-init did not authorize: a clear authentication error
    local wrong = require("support.sshd").keygen(peer.dir("e2e-key"), "wrong")
    local bad = capil.run({ "ssh", dir, "--key", wrong, "--", "true" })
    assert.equal(1, bad.code)
    assert.matches("authentication", bad.stderr:lower(), 1, true)
    assert.matches("is " .. wrong .. " the key cloud-init authorized for capv?", bad.stderr, 1, true)

    -- sysprep: a new machine-id and new host keys at first boot
    local s = assert(ssh.connect({ host = "127.0.0.1", port = state.ssh.port, user = "capv",
      key = "cloudinit/id_ed25519.capi", timeout = 30 }))
    local function run_in(cmd)
      local res = assert(s:exec(cmd, { timeout = 60 }))
      return res.code, (res.stdout:gsub("%s+$", ""))
    end
    assert.same({ 0, "provisioned by capil" }, { run_in("cat /etc/capil-testos-marker") })
    local _, mid = run_in("cat /etc/machine-id")
    assert.matches("^%x+$", mid)
    assert.not_equal(build_mid, mid)
    assert.not_equal(build_key, s.host_key_fingerprint)
    assert.equal(tr.host_key, s.host_key_fingerprint)
    s:close()
    -- the build user cannot log in with its password any more
    local b, berr, bcode = ssh.connect({ host = "127.0.0.1", port = state.ssh.port, user = "builder",
      password = "builder", timeout = 30 })
    assert.is_nil(b, "the build user logged in")
    assert.equal("SSH_AUTH", bcode, berr)
  end)

  it("fails a test whose image never answers SSH, naming the VM and backend", function()
    local out = peer.dir("e2e-noboot")
    local b = out .. "/blank-kube-v1.16.14"
    assert(fs.mkdir(b))
    local mk = assert(proc.run({ argv = { "qemu-img", "create", "-q", "-f", "vmdk", b .. "/blank-kube-v1.16.14-disk-0.vmdk",
      "64M" } }))
    assert.equal(0, mk.code, mk.stderr)
    local r = capil.run({ "test", b, "--var", "test_boot_timeout=15s" }, { timeout = 300 })
    assert.equal(1, r.code)
    assert.matches("qemu VM blank%-kube%-v1%.16%.14%-test: no SSH after 15 s", r.stderr)
    local tr = json.read(b .. "/test/report.json")
    assert.is_false(tr.ok)
    assert.equal("failed", tr.steps[2].status)
    assert.is_false(fs.exists(b .. "/test/vm"), "the overlay was left behind")
    assert.is_false(fs.exists(b .. "/test/vm.json"))

    -- an OVA alone: its disk is extracted for the boot, and removed afterwards
    local o = out .. "/ova"
    assert(fs.mkdir(o))
    assert(fs.write(o .. "/blank.ovf", "<Envelope/>"))
    assert(fs.copy(b .. "/blank-kube-v1.16.14-disk-0.vmdk", o .. "/blank-disk-0.vmdk"))
    local tar = assert(proc.run({ argv = { "tar", "-cf", o .. "/blank.ova", "-C", o, "blank.ovf", "blank-disk-0.vmdk" } }))
    assert.equal(0, tar.code, tar.stderr)
    r = capil.run({ "test", o .. "/blank.ova", "--output", out .. "/ova-out", "--var", "test_boot_timeout=10s" },
      { timeout = 300 })
    assert.equal(1, r.code)
    assert.matches("extracted blank-disk-0.vmdk from", r.stderr, 1, true)
    assert.matches("qemu VM blank-test: no SSH after 10 s", r.stderr, 1, true)
    assert.is_false(json.read(out .. "/ova-out/blank/test/report.json").ok)
    assert.is_false(fs.exists(out .. "/ova-out/blank/test/vm"))

    -- Ctrl-C while the VM boots: exit 130, QEMU gone, no overlay left
    local errf = out .. "/int.err"
    local p = assert(proc.spawn({ argv = { capil.exe, "test", b }, stdin = "null", stdout = "null", stderr = errf }))
    local qpid
    for _ = 1, 300 do
      qpid = tonumber((fs.read(errf) or ""):match("QEMU running %(pid (%d+)"))
      if qpid then break end
      runtime.sleep(0.1)
    end
    assert.is_number(qpid, fs.read(errf))
    assert(p:kill("INT"))
    local st = assert(p:wait({ timeout = 60 }))
    p:close()
    assert.equal(130, st.code, fs.read(errf))
    for _ = 1, 50 do if not proc.alive(qpid) then break end runtime.sleep(0.1) end
    assert.is_false(proc.alive(qpid), "QEMU survived Ctrl-C")
    assert.is_false(fs.exists(b .. "/test/vm"), "the overlay survived Ctrl-C")
  end)
end)
