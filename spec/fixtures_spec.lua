-- Specs for the QEMU guest fixtures (spec/support/fixtures.lua and the build
-- scripts in spec/support/fixtures/): the tiny busybox+dropbear guest and
-- the installer ISO, booted for real under TCG, one guest at a time. The
-- fixtures are built on first use (about 4 min; cached in build/fixtures or
-- $CAPIL_FIXTURES). Timings go to stderr as "[timing]" lines; nothing
-- asserts on them.
local fixtures = require("support.fixtures")
local nginx = require("support.nginx")
local peer = require("support.peer")
local ssh = require("capil.sys.ssh")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")

local function timing(what, seconds)
  io.stderr:write(("  [timing] %s: %.1f s\n"):format(what, seconds))
end

local function has(list, value)
  for _, v in ipairs(list) do if v == value then return true end end
  return false
end

describe("fixtures.qemu_argv #unit", function()
  it("builds a TCG command line with the SSH port forwarded", function()
    local argv, port = fixtures.qemu_argv({ serial = "/tmp/x.log", ssh_port = 2345, disk = "/tmp/d.qcow2",
                                            cdrom = "/tmp/i.iso", boot = "cd" })
    assert.equal(2345, port)
    assert.equal("qemu-system-x86_64", argv[1])
    assert.is_true(has(argv, "tcg"))
    assert.is_true(has(argv, "user,id=net0,hostfwd=tcp:127.0.0.1:2345-:22"))
    assert.is_true(has(argv, "file=/tmp/d.qcow2,if=virtio,format=qcow2"))
    assert.is_true(has(argv, "order=cd"))
    assert.is_true(has(argv, "file:/tmp/x.log"))
    assert.is_true(has(argv, "-no-reboot"))
  end)

  it("rejects unknown options and requires a serial log", function()
    assert.has_error(function() fixtures.qemu_argv({ serial = "x", memroy = 1 }) end,
      "fixtures.qemu_argv: unknown option 'memroy'")
    assert.has_error(function() fixtures.qemu_argv({}) end,
      "fixtures.qemu_argv: option 'serial' is required")
  end)

  it("writes answer files in the installer's key=value format", function()
    local text = fixtures.answer_file({ username = "u", password = "p w=1", authorized_keys = { "ssh-ed25519 AAA c" } })
    assert.equal("# capil installer fixture answer file\nusername=u\npassword=p w=1\n"
      .. "authorized_key=ssh-ed25519 AAA c\n", text)
  end)
end)

describe("tiny guest #qemu #fixtures", function()
  local tiny, vm

  setup(function()
    tiny = fixtures.tiny()
  end)

  after_each(function()
    if vm then vm.stop() end
    vm = nil
  end)

  it("boots to SSH, runs commands as root and powers off over SSH", function()
    local t0 = runtime.now()
    vm = fixtures.qemu({ kernel = tiny.kernel, initrd = tiny.initrd, append = tiny.append })
    local ok, err = ssh.wait({ host = "127.0.0.1", port = vm.ssh_port, timeout = 90, interval = 0.5 })
    assert(ok, err)
    local s = assert(ssh.connect({ host = "127.0.0.1", port = vm.ssh_port, user = "root", key = tiny.key,
                                   host_key = tiny.host_key_fingerprint, timeout = 30, retries = 3 }))
    timing("tiny guest: QEMU start to SSH login", runtime.now() - t0)
    local r = assert(s:exec("uname -r; id -u"))
    assert.equal(0, r.code)
    assert.equal(tiny.kernel_version .. "\n0\n", r.stdout)
    assert.truthy(vm.serial_text():find("capil-tiny: ssh up on port 22", 1, true))
    local t1 = runtime.now()
    s:exec("poweroff -f", { timeout = 5 }) -- the connection dies with the guest
    s:close()
    local status = assert(vm.wait_exit(30))
    assert.equal(0, status.code)
    timing("tiny guest: poweroff -f to QEMU exit", runtime.now() - t1)
  end)

  it("with capil.nossh=1 boots but never answers SSH", function()
    vm = fixtures.qemu({ kernel = tiny.kernel, initrd = tiny.initrd, append = tiny.append .. " capil.nossh=1" })
    assert(vm.wait_serial("capil%-tiny: ready", 90))
    assert.truthy(vm.serial_text():find("not starting ssh (capil.nossh=1)", 1, true))
    local ok, err, code = ssh.wait({ host = "127.0.0.1", port = vm.ssh_port, timeout = 4, interval = 0.5 })
    assert.is_nil(ok)
    assert.equal("ETIMEDOUT", code, err)
    assert.is_true(vm.running())
  end)

  it("with capil.poweroff=N powers itself off after N seconds", function()
    vm = fixtures.qemu({ kernel = tiny.kernel, initrd = tiny.initrd, append = tiny.append .. " capil.poweroff=12" })
    assert(ssh.wait({ host = "127.0.0.1", port = vm.ssh_port, timeout = 90, interval = 0.5 }))
    assert.is_true(vm.running())
    local status = assert(vm.wait_exit(60))
    assert.equal(0, status.code)
    assert.truthy(vm.serial_text():find("powering off (capil.poweroff=12)", 1, true))
  end)
end)

describe("installer ISO #qemu #fixtures", function()
  local iso, web, dir, vm

  setup(function()
    iso = fixtures.installer_iso()
    web = nginx.start()
    dir = peer.dir("installer")
  end)

  teardown(function()
    if vm then vm.stop() end
    if web then web.stop() end
    if dir then fs.remove(dir, { recursive = true }) end
  end)

  local function new_disk(name)
    local path = dir .. "/" .. name
    local r = assert(proc.run({ argv = { "qemu-img", "create", "-q", "-f", "qcow2", path, "4G" } }))
    assert.equal(0, r.code, r.stderr)
    return path
  end

  -- Boots the ISO with an empty disk and types `line` at its boot prompt.
  local function boot_installer(opts, line)
    vm = fixtures.qemu(opts)
    assert(vm.wait_serial("boot: ", 60))
    vm.type(line .. "\r")
  end

  it("reports a missing answer file on the serial console and powers off", function()
    local opts = { memory = 512, disk = new_disk("fail.qcow2"), cdrom = iso, boot = "cd",
                   serial_stdin = true, serial = dir .. "/fail.log", dir = dir }
    boot_installer(opts, fixtures.boot_line(("http://10.0.2.2:%d/missing/ks.cfg"):format(web.port)))
    local status = assert(vm.wait_exit(120))
    assert.equal(0, status.code)
    local text = vm.serial_text()
    local url = ("http://10.0.2.2:%d/missing/ks.cfg"):format(web.port)
    assert.truthy(text:find("capil-installer: FAILED: cannot fetch answer file " .. url, 1, true), text)
    assert.falsy(text:find("installation complete", 1, true))
    assert.is_true(#web.hits("/missing/ks.cfg") >= 1)
    vm.stop()
    vm = nil
  end)

  it("installs from a typed boot line and an answer file; the disk then boots with the same command line", function()
    local user, password = "builder", "capil build pw"
    web.put("/testos/ks.cfg", fixtures.answer_file({ username = user, password = password, hostname = "testos" }))
    local opts = { memory = 1024, smp = 2, disk = new_disk("disk.qcow2"), cdrom = iso, boot = "cd",
                   serial_stdin = true, serial = dir .. "/install.log", dir = dir }
    opts.ssh_port = assert(runtime.free_port())

    local t0 = runtime.now()
    boot_installer(opts, fixtures.boot_line(("http://10.0.2.2:%d/testos/ks.cfg"):format(web.port)))
    local status = assert(vm.wait_exit(900))
    timing("installer: QEMU start to power-off", runtime.now() - t0)
    local text = vm.serial_text()
    assert.equal(0, status.code)
    assert.falsy(text:find("FAILED", 1, true), text)
    assert.truthy(text:find("capil-installer: installation complete; poweroff", 1, true), text)
    assert.equal(1, #web.hits("/testos/ks.cfg"))
    vm.stop()
    vm = nil

    -- the same command line again: the BIOS now boots the disk, not the CD
    opts.serial = dir .. "/firstboot.log"
    local t1 = runtime.now()
    vm = fixtures.qemu(opts)
    local ok, err = ssh.wait({ host = "127.0.0.1", port = opts.ssh_port, timeout = 300, interval = 1 })
    assert(ok, err)
    local s = assert(ssh.connect({ host = "127.0.0.1", port = opts.ssh_port, user = user, password = password,
                                   timeout = 60, retries = 5 }))
    timing("installed system: QEMU start to SSH password login", runtime.now() - t1)
    local boot = vm.serial_text()
    assert.falsy(boot:find("ISOLINUX", 1, true))
    assert.truthy(boot:find("Loading /boot/vmlinuz-", 1, true))
    local r = assert(s:exec("id -un; hostname; sudo -n true && echo sudo-ok; cat /etc/machine-id"))
    assert.equal(0, r.code, r.stderr)
    local id, hostname, sudo_ok, machine_id = r.stdout:match("^(%S+)\n(%S+)\n(%S+)\n(%x*)\n$")
    assert.equal(user, id)
    assert.equal("testos", hostname)
    assert.equal("sudo-ok", sudo_ok)
    -- empty in the rootfs; systemd generates and commits one at first boot
    assert.equal(32, #machine_id)
    io.stderr:write("  [observed] /etc/machine-id at first boot: ", machine_id, "\n")

    local t2 = runtime.now()
    s:exec("sudo -n systemctl poweroff", { timeout = 10 })
    s:close()
    status = assert(vm.wait_exit(120))
    assert.equal(0, status.code)
    timing("installed system: systemctl poweroff to QEMU exit", runtime.now() - t2)
  end)
end)
