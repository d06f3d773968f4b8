-- spec/support/fixtures.lua — QEMU guest fixtures for the specs, built from
-- Debian packages by the scripts in spec/support/fixtures/ into a cache
-- directory ($CAPIL_FIXTURES, default build/fixtures) on first use:
--   fixtures.tiny()           busybox + dropbear initramfs on Debian's kernel (SSH in ~10 s)
--   fixtures.rootfs()         Debian 12 minbase rootfs.tar.zst (debootstrap, ~3 min)
--   fixtures.installer_iso()  ISOLINUX installer CD driven by a typed line and an answer file
--   fixtures.cni_plugins()    Debian's CNI plugins packed flat like the upstream release tarball
-- and helpers to run QEMU with them: fixtures.qemu_argv(opts) builds the
-- command line (TCG: KVM cannot run guests on these machines),
-- fixtures.qemu(opts) starts it and returns a handle stopped by PID.
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local SCRIPTS = assert(fs.realpath(here .. "/fixtures"))
local REPO = assert(fs.realpath(SCRIPTS .. "/../../.."))

--- The cache directory the fixtures are built into.
function M.dir()
  local d = os.getenv("CAPIL_FIXTURES")
  if d and d ~= "" then return d end
  return REPO .. "/build/fixtures"
end

local built = {}

-- Runs a fixture script (a no-op when its stamp is current), streaming its
-- output to stderr; raises with the last lines when it fails.
local function build(name)
  if built[name] then return end
  local tail = {}
  local r, err = proc.run({
    argv = { "sh", SCRIPTS .. "/" .. name .. ".sh" },
    timeout = 1800,
    on_line = function(_, line)
      io.stderr:write("  [fixture] ", line, "\n")
      tail[#tail + 1] = line
      if #tail > 30 then table.remove(tail, 1) end
    end,
  })
  if not r or r.code ~= 0 then
    error(("fixture %s failed to build: %s\n%s"):format(name, err or ("exit " .. r.code),
      table.concat(tail, "\n")), 2)
  end
  built[name] = true
end

local function read_line(path)
  return (assert(fs.read(path)):gsub("%s+$", ""))
end

---@class fixtures.Tiny
---@field dir string
---@field kernel string vmlinuz
---@field initrd string initrd.gz
---@field append string the kernel command line to boot it with
---@field key string private ed25519 key authorized for root
---@field host_key_fingerprint string "SHA256:..." of the guest's ed25519 host key
---@field kernel_version string what `uname -r` prints in the guest

--- The tiny guest (built on demand). Boot it with `kernel`, `initrd` and
--- `append` (add "capil.nossh=1" or "capil.poweroff=N" to make it misbehave);
--- it has 10.0.2.15/24 via 10.0.2.2 and dropbear on port 22 for root.
---@return fixtures.Tiny
function M.tiny()
  build("tiny")
  local d = M.dir() .. "/tiny"
  return {
    dir = d,
    kernel = d .. "/vmlinuz",
    initrd = d .. "/initrd.gz",
    append = "console=ttyS0 rdinit=/init quiet",
    key = d .. "/id_ed25519",
    host_key_fingerprint = read_line(d .. "/host_key.fingerprint"),
    kernel_version = read_line(d .. "/kernel-version"),
  }
end

--- Path of rootfs.tar.zst (built on demand).
---@return string
function M.rootfs()
  build("rootfs")
  return M.dir() .. "/rootfs/rootfs.tar.zst"
end

--- Path of installer.iso (built on demand, with the rootfs).
---@return string
function M.installer_iso()
  build("installer")
  return M.dir() .. "/installer/installer.iso"
end

--- Path of cni-plugins.tgz (built on demand): Debian's containernetworking-plugins
--- (bridge, host-local, loopback, ...) at the archive root, as upstream releases them.
---@return string
function M.cni_plugins()
  build("cni")
  return M.dir() .. "/cni/cni-plugins.tgz"
end

--- The line to type at the installer ISO's `boot:` prompt (Return not included).
---@param url string the answer file's URL as the guest sees it (http://10.0.2.2:PORT/...)
function M.boot_line(url)
  return "install ks=" .. url
end

--- An answer file for the installer ISO (see fixtures/installer-init).
---@param opts {username: string, password: string, hostname?: string, authorized_keys?: string[], finish?: string}
function M.answer_file(opts)
  local lines = { "# capil installer fixture answer file",
                  "username=" .. opts.username, "password=" .. opts.password }
  if opts.hostname then lines[#lines + 1] = "hostname=" .. opts.hostname end
  if opts.finish then lines[#lines + 1] = "finish=" .. opts.finish end
  for _, k in ipairs(opts.authorized_keys or {}) do lines[#lines + 1] = "authorized_key=" .. k end
  return table.concat(lines, "\n") .. "\n"
end

local ARGV_OPTS = {
  memory = true, smp = true, kernel = true, initrd = true, append = true,
  disk = true, cdrom = true, boot = true, ssh_port = true, serial = true,
  serial_stdin = true, qmp = true, no_reboot = true, snapshot = true,
}

--- The QEMU command line for a test guest: TCG with `-cpu max`, no display,
--- user networking with 127.0.0.1:ssh_port forwarded to the guest's port 22,
--- a virtio NIC and disk. Options: memory (MiB, default 256), smp (1),
--- kernel/initrd/append (direct kernel boot), disk (qcow2 or raw by
--- extension), cdrom, boot (BIOS order, e.g. "cd": disk first, so an empty
--- disk falls through to the CD), ssh_port (default a free port), serial (a
--- log file; required), serial_stdin (the serial port also reads QEMU's stdin,
--- to type at a boot prompt: spawn with stdin = "pipe"), qmp (a unix socket
--- path), no_reboot (default true: a guest reboot makes QEMU exit), snapshot.
---@return string[] argv
---@return integer ssh_port
function M.qemu_argv(opts)
  require("capil.util.opts").check(opts, ARGV_OPTS, "fixtures.qemu_argv")
  if not opts.serial then error("fixtures.qemu_argv: option 'serial' is required", 2) end
  local port = opts.ssh_port or assert(runtime.free_port())
  local argv = {
    "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
    "-m", tostring(opts.memory or 256), "-smp", tostring(opts.smp or 1),
    "-display", "none",
    "-netdev", ("user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22"):format(port),
    "-device", "virtio-net-pci,netdev=net0",
  }
  local function add(...) for _, a in ipairs({ ... }) do argv[#argv + 1] = a end end
  if opts.serial_stdin then
    add("-chardev", "stdio,id=serial0,signal=off,logfile=" .. opts.serial, "-serial", "chardev:serial0")
  else
    add("-serial", "file:" .. opts.serial)
  end
  if opts.qmp then add("-qmp", "unix:" .. opts.qmp .. ",server=on,wait=off") end
  if opts.kernel then add("-kernel", opts.kernel) end
  if opts.initrd then add("-initrd", opts.initrd) end
  if opts.append then add("-append", opts.append) end
  if opts.disk then
    local format = opts.disk:match("%.qcow2$") and "qcow2" or opts.disk:match("%.vmdk$") and "vmdk" or "raw"
    add("-drive", ("file=%s,if=virtio,format=%s"):format(opts.disk, format))
  end
  if opts.cdrom then add("-drive", ("file=%s,media=cdrom,readonly=on"):format(opts.cdrom)) end
  if opts.boot then add("-boot", "order=" .. opts.boot) end
  if opts.snapshot then add("-snapshot") end
  if opts.no_reboot ~= false then add("-no-reboot") end
  return argv, port
end

---@class fixtures.VM
---@field pid integer
---@field process any the capil.sys.proc process
---@field ssh_port integer
---@field serial string the serial log file
---@field dir string its scratch directory (removed by stop)

--- Starts QEMU with `fixtures.qemu_argv(opts)` (serial and qmp default to
--- files in a scratch directory; `dir` reuses a directory, which stop then
--- leaves in place). Returns a handle: vm:serial_text(), vm:wait_serial(pattern,
--- timeout), vm:type(text) (needs serial_stdin), vm:wait_exit(timeout),
--- vm:stop() (SIGTERM then SIGKILL by PID; removes its scratch directory).
---@return fixtures.VM
function M.qemu(opts)
  local o = {}
  for k, v in pairs(opts) do if k ~= "dir" then o[k] = v end end
  local dir = opts.dir or assert(fs.tempdir({ prefix = "capil-spec-qemu" }))
  o.serial = o.serial or (dir .. "/serial.log")
  local argv, port = M.qemu_argv(o)
  assert(fs.write(o.serial, ""))
  local p = assert(proc.spawn({
    argv = argv, stdin = o.serial_stdin and "pipe" or "null",
    stdout = dir .. "/qemu.out", stderr = "stdout",
  }))
  local vm = { pid = p.pid, process = p, ssh_port = port, serial = o.serial, dir = dir }

  function vm.serial_text()
    return (fs.read(vm.serial) or ""):gsub("\r", "")
  end

  --- Waits until the serial log matches `pattern` (a Lua pattern); returns
  --- the capture or true, or nil and the log's tail on timeout or exit.
  function vm.wait_serial(pattern, timeout)
    local deadline = runtime.now() + (timeout or 60)
    while true do
      local text = vm.serial_text()
      local m = text:match(pattern)
      if m then return m end
      if not p:running() or runtime.now() > deadline then
        return nil, ("no %q in the serial log (%s):\n%s"):format(pattern,
          p:running() and "timeout" or "QEMU exited", text:sub(-3000))
      end
      runtime.sleep(0.2)
    end
  end

  function vm.type(text)
    return assert(p:write(text))
  end

  --- Waits for QEMU to exit: its status {code, signal} or nil, msg, code.
  function vm.wait_exit(timeout)
    return p:wait({ timeout = timeout })
  end

  function vm.running()
    return p:running()
  end

  function vm.stop()
    p:close(3)
    if not opts.dir then fs.remove(dir, { recursive = true }) end
  end
  return vm
end

return M
