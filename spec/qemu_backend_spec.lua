local qemu = require("capil.backends.qemu")
local backend = require("capil.backend")
local installer = require("capil.build.installer")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")

local RECIPES = "spec/fixtures/recipes"

-- The fixture recipe's plan on qemu, and its create_vm and export steps.
local function plan_steps(vars)
  local r, cfg, plan = require("capil.build.loader").load("testos", { ["recipes-dir"] = RECIPES, backend = "qemu",
    var = vars })
  assert(r, cfg and table.concat(cfg, "\n"))
  local by = {}
  for _, s in ipairs(plan.steps) do by[s.kind] = s end
  return by.create_vm, by.export_disk, plan
end

local function run_ok(argv)
  local r = assert(proc.run({ argv = argv, timeout = 120 }))
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr .. r.stdout)
  return r.stdout
end

local function has_pair(argv, flag, value)
  for i = 1, #argv - 1 do if argv[i] == flag and argv[i + 1] == value then return true end end
  return false
end

describe("QEMU backend command line #unit", function()
  it("uses TCG with -cpu max here, loopback-only SSH forwarding and VNC, QMP on a socket", function()
    local accel = qemu.probe_accel()
    assert.equal("tcg", accel) -- this machine's KVM (nested PVM) cannot run stock kernels
    local dir = peer.dir("qemuargv")
    local vm = assert(qemu.vm({ workdir = dir, name = "vm1", disk = dir .. "/d.qcow2", iso = "/x/inst.iso",
      extra_cdroms = { dir .. "/cd.iso" }, accel = "tcg", cpus = 2, memory_mb = 1024 }))
    local argv = vm:argv()
    assert.is_true(has_pair(argv, "-accel", "tcg"))
    assert.is_true(has_pair(argv, "-cpu", "max"))
    assert.is_true(has_pair(argv, "-netdev", ("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22"):format(vm.ssh_port)))
    local vnc
    for i, a in ipairs(argv) do if a == "-vnc" then vnc = argv[i + 1] end end
    assert.matches("^127%.0%.0%.1:%d+$", vnc)
    assert.is_true(has_pair(argv, "-qmp", ("unix:%s/qmp.sock,server=on,wait=off"):format(dir)))
    assert.is_true(has_pair(argv, "-drive", "file=/x/inst.iso,media=cdrom,readonly=on"))
    assert.is_true(has_pair(argv, "-boot", "order=c,once=d"))
    assert.is_true(has_pair(argv, "-drive", ("file=%s/cd.iso,media=cdrom,readonly=on"):format(dir)))
    -- installed: the next start boots the disk only
    vm:mark_installed()
    assert.is_false(has_pair(vm:argv(), "-boot", "order=c,once=d"))
  end)

  it("presents the declared disk controller and NIC as QEMU's models of them", function()
    local dir = peer.dir("qemudev")
    local mk = assert(proc.run({ argv = { "qemu-img", "create", "-q", "-f", "qcow2", dir .. "/d.qcow2", "64M" } }))
    assert.equal(0, mk.code, mk.stderr)
    local function argv(disk_interface, nic)
      local vm = assert(qemu.vm({ workdir = dir, name = "vm", disk = dir .. "/d.qcow2", accel = "tcg",
        disk_interface = disk_interface, network_card = nic }))
      return vm:argv()
    end
    local a = argv("pvscsi", "vmxnet3")
    assert.is_true(has_pair(a, "-device", "pvscsi,id=hba0"))
    assert.is_true(has_pair(a, "-drive", ("file=%s/d.qcow2,format=qcow2,discard=unmap,if=none,id=disk0"):format(dir)))
    assert.is_true(has_pair(a, "-device", "scsi-hd,drive=disk0,bus=hba0.0"))
    assert.is_true(has_pair(a, "-device", "vmxnet3,netdev=n0"))
    a = argv("lsilogic", "e1000")
    assert.is_true(has_pair(a, "-device", "mptsas1068,id=hba0"))
    assert.is_true(has_pair(a, "-device", "e1000,netdev=n0"))
    a = argv("virtio", "virtio")
    assert.is_true(has_pair(a, "-drive", ("file=%s/d.qcow2,format=qcow2,discard=unmap,if=virtio"):format(dir)))
    assert.is_true(has_pair(a, "-device", "virtio-net-pci,netdev=n0"))
    -- QEMU itself accepts each model (a real start, stopped at once)
    for _, pair in ipairs({ { "pvscsi", "vmxnet3" }, { "lsilogic", "e1000e" } }) do
      local q = argv(pair[1], pair[2])
      q[#q + 1] = "-S"
      local r = assert(proc.run({ argv = { "timeout", "3", table.unpack(q) } }))
      assert.equal(124, r.code, r.stderr) -- killed by timeout: QEMU was running
    end
  end)

  it("honours qemu_accel and caches the probe per boot", function()
    assert.equal("kvm", (qemu.accel("kvm")))
    local cache = peer.dir("accel")
    local a1, why1 = qemu.accel("auto", cache)
    local a2, why2 = qemu.accel("auto", cache)
    assert.equal(a1, a2)
    assert.not_matches("cached", why1, 1, true)
    assert.matches("cached", why2, 1, true)
  end)

  it("conforms to capil.backend and declares what the plan and the pipeline use", function()
    assert.same({}, backend.check(qemu))
    assert.equal(qemu, backend.get("qemu"))
    assert.same({ encoder = "qmp", export = "qemu-img", http_ip = "10.0.2.2", guest_id = "vsphere",
      qemu_devices = true, process = "QEMU", disk_source = true }, qemu.traits)
    assert.same({ { "accel", paths = { "build.qemu_accel" }, default = "auto" } }, qemu.settings)
  end)

  it("refuses an unknown disk interface or NIC with a message, not an assert", function()
    local dir = peer.dir("qemubad")
    local vm, err, code = qemu.vm({ workdir = dir, name = "vm", disk = dir .. "/d.qcow2", disk_interface = "ide" })
    assert.is_nil(vm)
    assert.equal("EINVAL", code)
    assert.matches("unknown disk_interface 'ide'", err, 1, true)
    vm, err, code = qemu.vm({ workdir = dir, name = "vm", disk = dir .. "/d.qcow2", network_card = "rtl8139" })
    assert.is_nil(vm)
    assert.equal("EINVAL", code)
    assert.matches("unknown network_card 'rtl8139'", err, 1, true)
  end)

  it("prepare chooses the accelerator from ctx.settings; create builds the create_vm step's VM", function()
    local dir = peer.dir("qemuctx")
    local ctx = { name = "b1-kube-v1", workdir = dir, log_dir = dir .. "/logs", cache_dir = dir .. "/cache",
      settings = { accel = "tcg" }, media = { iso = "/x/inst.iso", cd_iso = dir .. "/cd.iso" }, state = {}, report = {} }
    local step = { kind = "create_vm", vm_name = "b1-kube-v1", cpus = 2, memory_mb = 1536, disk_mb = 64,
      disk_interface = "pvscsi", nic_model = "vmxnet3" }
    assert.is_true(qemu.prepare(ctx, step))
    assert.equal("tcg", ctx.state.accel)
    assert.equal("tcg", ctx.report.accel)
    local vm = assert(qemu.create(ctx, step))
    assert.equal("b1-kube-v1", vm.name)
    assert.equal(dir .. "/logs/serial.log", vm.serial_log)
    local argv = vm:argv()
    assert.is_true(has_pair(argv, "-accel", "tcg"))
    assert.is_true(has_pair(argv, "-smp", "2"))
    assert.is_true(has_pair(argv, "-m", "1536"))
    assert.is_true(has_pair(argv, "-device", "pvscsi,id=hba0"))
    assert.is_true(has_pair(argv, "-device", "vmxnet3,netdev=n0"))
    assert.is_true(has_pair(argv, "-drive", "file=/x/inst.iso,media=cdrom,readonly=on"))
    assert.is_true(has_pair(argv, "-drive", ("file=%s/cd.iso,media=cdrom,readonly=on"):format(dir)))
    -- its own disk goes with destroy; again is a no-op
    assert.is_true(fs.exists(dir .. "/disk.qcow2"))
    assert.is_true(vm:destroy())
    assert.is_false(fs.exists(dir .. "/disk.qcow2"))
    assert.is_true(vm:destroy())
    -- without prepare, create chooses the accelerator itself (auto: probed and cached)
    local ctx2 = { name = "b2", workdir = dir, cache_dir = dir .. "/cache", settings = { accel = "auto" },
      media = {}, state = {}, report = {} }
    local vm2 = assert(qemu.create(ctx2, { vm_name = "b2", disk_mb = 64 }))
    assert.equal(qemu.probe_accel(), ctx2.state.accel)
    assert.is_true(has_pair(vm2:argv(), "-accel", ctx2.state.accel))
    vm2:destroy()
  end)

  it("builds on a sparse raw disk under disk_writer capil (the default), on qcow2 under qemu-img", function()
    local dir = peer.dir("qemuwriter")
    local ctx = { name = "b1", workdir = dir, log_dir = dir, cache_dir = dir .. "/cache", settings = { accel = "tcg" },
      media = { iso = "/x/inst.iso" }, state = {}, report = {} }
    -- the default: the plan says raw and capil, the VM gets a sparse raw disk the guest can punch holes in
    local step, export = plan_steps()
    assert.equal("raw", step.disk_format)
    assert.equal("capil", export.disk_writer)
    step.disk_mb = 64
    local vm = assert(qemu.create(ctx, step))
    assert.equal(dir .. "/disk.raw", vm.disk)
    assert.is_true(has_pair(vm:argv(), "-drive", ("file=%s/disk.raw,format=raw,discard=unmap,if=none,id=disk0"):format(
      dir)))
    assert.matches("file format: raw", run_ok({ "qemu-img", "info", vm.disk }), 1, true)
    assert.equal(64 * 1024 * 1024, fs.stat(vm.disk).size)
    -- (qemu-img allocates the first block, for alignment probing)
    assert.is_true(tonumber(run_ok({ "du", "-k", vm.disk }):match("^%d+")) <= 64, "the raw disk is not sparse")
    vm:destroy()
    assert.is_false(fs.exists(dir .. "/disk.raw"))
    -- qemu-img: today's qcow2 disk, exported by qemu-img convert
    step, export = plan_steps({ "disk_writer=qemu-img" })
    assert.equal("qcow2", step.disk_format)
    assert.equal("qemu-img", export.disk_writer)
    step.disk_mb = 64
    vm = assert(qemu.create(ctx, step))
    assert.equal(dir .. "/disk.qcow2", vm.disk)
    assert.is_true(has_pair(vm:argv(), "-drive",
      ("file=%s/disk.qcow2,format=qcow2,discard=unmap,if=none,id=disk0"):format(dir)))
    assert.matches("file format: qcow2", run_ok({ "qemu-img", "info", vm.disk }), 1, true)
    vm:destroy()
    -- the virtio opt-out too
    vm = assert(qemu.vm({ workdir = dir, name = "vm", disk_mb = 16, disk_format = "raw" }))
    assert.is_true(has_pair(vm:argv(), "-drive", ("file=%s/disk.raw,format=raw,discard=unmap,if=virtio"):format(dir)))
    vm:destroy()
    local bad, err, code = qemu.vm({ workdir = dir, name = "vm", disk_mb = 16, disk_format = "vdi" })
    assert.is_nil(bad)
    assert.equal("EINVAL", code)
    assert.matches("unknown disk_format 'vdi' (raw, qcow2)", err, 1, true)
  end)

  it("exports the raw disk through capil's writer, reading it in place", function()
    local dir = peer.dir("qemuexpw")
    local vm = assert(qemu.vm({ workdir = dir, name = "vm", disk_mb = 64, disk_format = "raw" }))
    -- what a guest writes: data in a few places, a qcow2 magic at sector 0
    -- (a raw disk is named raw, never probed)
    local f = assert(io.open(vm.disk, "r+b"))
    f:write("QFI\xfb" .. ("\0"):rep(508))
    f:seek("set", 5 * 1024 * 1024 + 4096)
    f:write(require("capil.sys.hash").random(200000))
    f:seek("set", 40 * 1024 * 1024)
    f:write(("capil"):rep(1000))
    f:close()
    local out = dir .. "/out.vmdk"
    local r = assert(vm:export(out, { adapter_type = "lsilogic", hwversion = 17, disk_writer = "capil", jobs = 2 }))
    -- the VMDK's digest, taken as it was written: the pipeline reads it no second time
    assert.same({ writer = "capil", sha256 = assert(require("capil.sys.hash").file(out, "sha256")) }, r)
    local info = assert(require("capil.format.vmdk").read_header(out))
    assert.is_true(info.stream_optimized)
    assert.truthy(info.descriptor:find('ddb.virtualHWVersion = "17"', 1, true))
    assert.truthy(info.descriptor:find('ddb.adapterType = "lsilogic"', 1, true))
    assert.equal(64 * 1024 * 1024, info.capacity)
    run_ok({ "qemu-img", "check", out })
    assert.matches("identical", run_ok({ "qemu-img", "compare", "-f", "raw", "-F", "vmdk", vm.disk, out }), 1, true)
    -- no temp copy of the disk was made, and none is left
    for _, name in ipairs(fs.list(dir)) do assert.falsy(name:find("%.part"), name) end
    -- the default writer is capil's; a failure names the disk
    assert.equal("capil", assert(vm:export(dir .. "/def.vmdk")).writer)
    fs.remove(vm.disk)
    local ok, err, code = vm:export(dir .. "/out2.vmdk")
    assert.is_nil(ok)
    assert.equal("ENOENT", code)
    assert.matches("qemu: exporting " .. vm.disk, err, 1, true)
    assert.is_false(fs.exists(dir .. "/out2.vmdk"))
    ok, err, code = vm:export(dir .. "/out3.vmdk", { disk_writer = "dd" })
    assert.is_nil(ok)
    assert.equal("EINVAL", code)
    assert.matches("unknown disk_writer 'dd' (capil, qemu-img)", err, 1, true)
  end)

  it("exports a qcow2 disk with capil's writer (through a temp) too", function()
    local dir = peer.dir("qemuexpq")
    local vm = assert(qemu.vm({ workdir = dir, name = "vm", disk_mb = 16 }))
    assert.equal("qcow2", vm.disk_format)
    local out = dir .. "/out.vmdk"
    local r = assert(vm:export(out, { disk_writer = "capil" }))
    assert.same({ writer = "capil", sha256 = assert(require("capil.sys.hash").file(out, "sha256")) }, r)
    run_ok({ "qemu-img", "check", out })
    assert.matches("identical", run_ok({ "qemu-img", "compare", "-f", "qcow2", "-F", "vmdk", vm.disk, out }), 1, true)
    for _, name in ipairs(fs.list(dir)) do assert.falsy(name:find("%.part"), name) end
  end)

  it("exports a streamOptimized VMDK through vmdk.convert under disk_writer qemu-img", function()
    local dir = peer.dir("qemuexp")
    local vm = assert(qemu.vm({ workdir = dir, name = "vm", disk_mb = 16 }))
    local out = dir .. "/out.vmdk"
    assert.same({ writer = "qemu-img" }, vm:export(out, { adapter_type = "lsilogic", hwversion = 15,
      disk_writer = "qemu-img" }))
    local info = assert(require("capil.format.vmdk").read_header(out))
    assert.equal("streamOptimized", info.create_type)
    assert.is_true(info.stream_optimized)
    -- a failure names the disk and keeps the backend's code
    run_ok({ "qemu-img", "check", out })
    fs.remove(vm.disk)
    local ok, err, code = vm:export(dir .. "/out2.vmdk", { disk_writer = "qemu-img" })
    assert.is_nil(ok)
    assert.equal("EQEMU", code)
    assert.matches("qemu: exporting " .. vm.disk, err, 1, true)
    assert.is_false(fs.exists(dir .. "/out2.vmdk"))
  end)

  it("test hooks: an overlay on the build's VMDK with the seed CD; record; finish without a start", function()
    local dir = peer.dir("qemutest")
    local build = dir .. "/img-kube-v1"
    assert(fs.mkdir(build))
    local mk = assert(proc.run({ argv = { "qemu-img", "create", "-q", "-f", "vmdk", build .. "/img-kube-v1-disk-0.vmdk",
      "16M" } }))
    assert.equal(0, mk.code, mk.stderr)
    local t = assert(require("capil.test.imagetest").resolve_target(build, "qemu"))
    local run = { target = t, settings = { accel = "auto" }, work = build .. "/test/vm", test_dir = build .. "/test",
      cache_dir = dir .. "/cache", keep = false, state = {}, report = {},
      data = { dir = dir, userdata = "#cloud-config\n", metadata = "instance-id: t1\n" },
      vm_settings = { cpus = 1, memory_mb = 1024, accel = "tcg", disk_interface = "lsilogic", nic_model = "e1000" } }
    assert(fs.mkdir(run.work))
    assert(qemu.test.prepare(run))
    local vm = run.vm
    assert.equal("img-kube-v1-test", vm.name)
    assert.equal("tcg", run.report.accel)
    local argv = vm:argv()
    assert.is_true(has_pair(argv, "-smp", "2"))
    assert.is_true(has_pair(argv, "-m", "2048"))
    assert.is_true(has_pair(argv, "-device", "mptsas1068,id=hba0"))
    assert.is_true(has_pair(argv, "-device", "e1000,netdev=n0"))
    assert.is_true(has_pair(argv, "-drive", ("file=%s/disk.qcow2,format=qcow2,discard=unmap,if=none,id=disk0"):format(
      run.work)))
    assert.is_true(has_pair(argv, "-drive", ("file=%s/cidata.iso,media=cdrom,readonly=on"):format(run.work)))
    local info = assert(proc.run({ argv = { "qemu-img", "info", run.work .. "/disk.qcow2" } }))
    assert.matches("backing file: " .. fs.realpath(t.vmdk), info.stdout, 1, true)
    assert.same({ backend = "qemu", name = "img-kube-v1-test", workdir = run.work, serial_log = vm.serial_log,
      qmp = vm.qmp_path }, qemu.test.record(run))
    assert.is_true(qemu.test.finish(run))
    -- the overlay is the test's, not the VM's own disk: the work dir keeps it until imagetest removes it
    assert.is_true(fs.exists(run.work .. "/disk.qcow2"))
    assert.is_true(fs.exists(t.vmdk))
  end)

  it("makes the labelled second CD for HTTP-free installs", function()
    local dir = peer.dir("cd")
    assert(installer.render("recipes/http/centos", { "7/ks.cfg" }, dir .. "/files",
      { ssh_username = "builder", ssh_password = "pw-cd", kickstart_network = "" }))
    local iso = assert(installer.make_iso(dir .. "/files", dir .. "/oemdrv.iso", "OEMDRV"))
    local r = assert(proc.run({ argv = { "xorriso", "-indev", iso, "-pvd_info" } }))
    assert.matches("Volume Id%s*:%s*OEMDRV", r.stdout .. r.stderr)
    r = assert(proc.run({ argv = { "xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/7/ks.cfg",
      dir .. "/back.cfg" } }))
    assert.equal(0, r.code, r.stderr)
    assert.matches("--password pw-cd", fs.read(dir .. "/back.cfg"), 1, true)
  end)
end)
