local qemu = require("capil.backends.qemu")
local installer = require("capil.build.installer")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")

local function has_pair(argv, flag, value)
  for i = 1, #argv - 1 do if argv[i] == flag and argv[i + 1] == value then return true end end
  return false
end

describe("QEMU backend command line #unit", function()
  it("uses TCG with -cpu max here, loopback-only SSH forwarding and VNC, QMP on a socket", function()
    local accel = qemu.probe_accel()
    assert.equal("tcg", accel) -- this machine's KVM (nested PVM) cannot run stock kernels
    local dir = peer.dir("qemuargv")
    local vm = assert(qemu.create({ workdir = dir, name = "vm1", disk = dir .. "/d.qcow2", iso = "/x/inst.iso",
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
      local vm = assert(qemu.create({ workdir = dir, name = "vm", disk = dir .. "/d.qcow2", accel = "tcg",
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

  it("makes the labelled second CD for HTTP-free installs", function()
    local dir = peer.dir("cd")
    assert(installer.render("recipes/http/centos", { "7/ks.cfg" }, dir .. "/files",
      { ssh_username = "builder", ssh_password = "pw-cd" }))
    local iso = assert(installer.make_iso(dir .. "/files", dir .. "/oemdrv.iso", "OEMDRV"))
    local r = assert(proc.run({ argv = { "xorriso", "-indev", iso, "-pvd_info" } }))
    assert.matches("Volume Id%s*:%s*OEMDRV", r.stdout .. r.stderr)
    r = assert(proc.run({ argv = { "xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/7/ks.cfg",
      dir .. "/back.cfg" } }))
    assert.equal(0, r.code, r.stderr)
    assert.matches("--password pw-cd", fs.read(dir .. "/back.cfg"), 1, true)
  end)
end)
