--- capil.backends.workstation — builds on VMware Workstation (Linux,
--- Windows) or Fusion (macOS) on this machine, the way Packer's vmware-iso
--- local driver did: a generated `.vmx`, a disk made by
--- `vmware-vdiskmanager`, `vmrun` to start, stop, snapshot and ask for the
--- guest's IP (VMware Tools), and the boot command typed over the VM's own
--- VNC server (RemoteDisplay.vnc on loopback, with a random password that is
--- registered as a secret). The disk is exported streamOptimized with
--- `vmware-vdiskmanager -r … -t 5`; when vdiskmanager is absent, by capil's
--- VMDK writer (`disk_writer = "capil"`, the default: the VM's VMDK read
--- through a sparse raw temp made by qemu-img) or by `qemu-img convert`
--- (`disk_writer = "qemu-img"`).
--- `M.test` makes a test VM of its own from the built disk for `capil test`.
---
--- Tools: VMWARE_VMRUN / VMWARE_VDISKMANAGER, else PATH, else (macOS) the
--- Fusion bundle. Errors are `nil, msg, code`: ENOTOOL (a tool is missing:
--- the message says what to install), EVMRUN (vmrun failed: its message),
--- EVDISK (vmware-vdiskmanager failed), ETIMEDOUT (no guest IP in time).
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")
local hash = require("capil.sys.hash")
local log = require("capil.sys.log")

local M = {}

M.name = "workstation"
M.description = "VMware Workstation (Linux) or Fusion (macOS) with vmrun"
---@type capil.BackendTraits
M.traits = { encoder = "rfb", export = "vdiskmanager", guest_id = "workstation" }
---@type capil.Setting[]
M.settings = {
  { "vnc_bind_address", paths = { "build.vnc_bind_address" }, default = "127.0.0.1" },
  { "vnc_port_min", paths = { "build.vnc_port_min" }, default = 5900 },
  { "vnc_port_max", paths = { "build.vnc_port_max" }, default = 6000 },
  { "vnc_disable_password", paths = { "build.vnc_disable_password" }, default = false },
  { "disk_type_id", paths = { "build.disk_type_id" }, default = "0" },
  { "configuration_parameters", paths = { "vsphere.configuration_parameters" } },
  { "ssh_port", paths = { "ssh.port" }, default = 22 },
}

--- Where Fusion keeps its command-line tools.
M.FUSION_DIR = "/Applications/VMware Fusion.app/Contents/Library"

--- Seconds between `vmrun getGuestIPAddress` polls.
M.IP_POLL = 2

-- ====================================================================== --
-- Tools                                                                  --
-- ====================================================================== --

local function executable(path)
  local st = fs.stat(path)
  return st and st.type ~= "directory"
end

local function on_path(name, path)
  for dir in (path or ""):gmatch("[^:]+") do
    local p = dir .. "/" .. name
    if executable(p) then return p end
  end
end

---@class capil.workstation.Tools
---@field vmrun string path of vmrun
---@field vdiskmanager? string path of vmware-vdiskmanager (nil: qemu-img is used)
---@field type string "ws" or "fusion" (vmrun -T)

--- Finds vmrun and vmware-vdiskmanager. `opts.env` looks variables up
--- (default os.getenv: VMWARE_VMRUN, VMWARE_VDISKMANAGER, VMWARE_TYPE, PATH);
--- `opts.fusion_dir` replaces M.FUSION_DIR. vmrun is required; a missing
--- vdiskmanager is nil (qemu-img takes its place).
---@param opts? {env?: fun(name: string): string?, fusion_dir?: string}
---@return capil.workstation.Tools|nil tools, string? err, string? code
function M.find_tools(opts)
  opts = opts or {}
  local env = opts.env or os.getenv
  local fusion = opts.fusion_dir or M.FUSION_DIR
  local function find(var, name)
    local v = env(var)
    if v and v ~= "" then
      if executable(v) then return v end
      return nil, ("workstation: %s=%s: no such file"):format(var, v)
    end
    return on_path(name, env("PATH")) or (executable(fusion .. "/" .. name) and (fusion .. "/" .. name)) or nil
  end
  local vmrun, err = find("VMWARE_VMRUN", "vmrun")
  if not vmrun then
    return nil, err or ("workstation: vmrun not found (install VMware Workstation Pro, or VMware Fusion on macOS, "
      .. "or set VMWARE_VMRUN to its path)"), "ENOTOOL"
  end
  local vdisk, verr = find("VMWARE_VDISKMANAGER", "vmware-vdiskmanager")
  if verr then return nil, verr, "ENOTOOL" end
  local t = env("VMWARE_TYPE")
  if not t or t == "" then
    t = (vmrun:find("VMware Fusion.app", 1, true) or fs.exists("/System/Library/CoreServices/SystemVersion.plist"))
      and "fusion" or "ws"
  end
  return { vmrun = vmrun, vdiskmanager = vdisk, type = t }
end

--- Whether vmrun can be found (for `--backend local`).
---@param opts? {env?: fun(name: string): string?, fusion_dir?: string}
function M.available(opts)
  return M.find_tools(opts) ~= nil
end

--- Before anything starts (capil.build.preflight): vmrun (and
--- vmware-vdiskmanager, else qemu-img) found as M.find_tools finds them,
--- and room in the output directory for the VM's disk (and, when capil's
--- writer exports it without vdiskmanager, for its raw temp).
---@param c capil.Preflight
function M.preflight(c)
  local tools, err = M.find_tools({ env = c.getenv })
  local vm = c:step("create_vm") or {}
  local writer = (c:step("export_disk") or {}).disk_writer or "capil"
  if not tools then
    c:fail(err)
  elseif not tools.vdiskmanager then
    c:tool("qemu-img", writer == "capil"
      and "to create the disk and read it for capil's VMDK writer, as vmware-vdiskmanager is not found"
      or "to create and convert the disk, as vmware-vdiskmanager is not found",
      "install qemu-utils, or set VMWARE_VDISKMANAGER")
    if writer == "capil" and vm.disk_mb then
      c:space(c.plan.output_dir, vm.disk_mb * 1024 * 1024, "the raw temp capil's VMDK writer reads (at most)")
    end
  end
  if vm.disk_mb then c:space(c.plan.output_dir, vm.disk_mb * 1024 * 1024, "the VM's disk (at most)") end
end

--- Runs `vmrun -T <type> <args…>`; the result table, or nil and vmrun's own
--- message ("Error: …" on stdout) with EVMRUN.
---@param tools capil.workstation.Tools
---@param args string[]
---@param timeout? number seconds (default 120)
function M.vmrun(tools, args, timeout)
  local argv = { tools.vmrun, "-T", tools.type }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r, err, code = proc.run({ argv = argv, timeout = timeout or 120 })
  if not r then return nil, ("workstation: vmrun %s: %s"):format(args[1], err), code end
  if r.code ~= 0 then
    local msg = (r.stdout .. r.stderr):gsub("%s+$", "")
    return nil, ("workstation: vmrun %s %s: %s"):format(args[1], args[2] or "", msg ~= "" and msg or
      ("exit " .. r.code)), "EVMRUN", r
  end
  return r
end

-- ====================================================================== --
-- .vmx                                                                   --
-- ====================================================================== --

--- Encodes an ordered list of {key, value} as .vmx text (values quoted;
--- `"` and `|` escaped as VMware does, with |22 and |7C).
---@param entries {[1]: string, [2]: string|number|boolean}[]
---@return string
function M.vmx_encode(entries)
  local out = {}
  for _, kv in ipairs(entries) do
    local v = kv[2]
    if type(v) == "boolean" then v = v and "TRUE" or "FALSE" end
    v = tostring(v):gsub("|", "|7C"):gsub('"', "|22")
    out[#out + 1] = ('%s = "%s"'):format(kv[1], v)
  end
  return table.concat(out, "\n") .. "\n"
end

--- Parses .vmx text into a table key (as written) -> value.
---@param text string
---@return table<string, string>
function M.vmx_parse(text)
  local t = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local k, v = line:match('^%s*([^#=%s][^=]-)%s*=%s*"(.*)"%s*$')
    if k then t[k] = (v:gsub("|22", '"'):gsub("|7C", "|")) end
  end
  return t
end

-- A free TCP port in min..max on `ip` (nothing answers there), from a
-- random place in the range so parallel builds rarely probe the same one
-- before either VM has opened it. nil when none is free (or no randomness).
local function vnc_port(ip, min, max)
  local n = max - min + 1
  if n < 1 then return nil end
  local b = hash.random(2)
  if not b then return nil end
  local start = (b:byte(1) * 256 + b:byte(2)) % n
  for i = 0, n - 1 do
    local p = min + (start + i) % n
    if not runtime.port_open(ip, p, 0.05) then return p end
  end
end

local ALNUM = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

local function random_password(n)
  local bytes, err, code = hash.random(n)
  if not bytes then return nil, err, code end
  local s = {}
  for i = 1, n do
    local b = bytes:byte(i) % #ALNUM + 1
    s[i] = ALNUM:sub(b, b)
  end
  return table.concat(s)
end

-- Writes a .vmx (or other file) atomically; the message names it.
local function write_file(path, text)
  local ok, err, code = fs.write_atomic(path, text)
  if not ok then return nil, ("workstation: writing %s: %s"):format(path, tostring(err)), code end
  return true
end

--- The .vmx entries of a build VM, in order. `s` holds the create_vm plan
--- step's fields (cd_bus: "ide", the default, or "sata" for the cdroms)
--- plus: iso, cdroms (more ISOs), disk (file name), serial
--- (path), vnc = {ip, port, password?}, extra (configuration_parameters).
---@param s table
---@return {[1]: string, [2]: any}[]
function M.vmx_entries(s)
  local e = {}
  local function add(k, v) e[#e + 1] = { k, v } end
  add(".encoding", "UTF-8")
  add("config.version", "8")
  add("virtualHW.version", tostring(s.vmx_version or 15))
  add("displayName", s.name)
  add("guestOS", s.guest_os)
  add("firmware", s.firmware or "bios")
  add("numvcpus", tostring(s.cpus or 1))
  add("cpuid.coresPerSocket", tostring(s.cores_per_socket or 1))
  add("memsize", tostring(s.memory_mb or 2048))
  add("pciBridge0.present", true)
  for i = 4, 7 do
    add(("pciBridge%d.present"):format(i), true)
    add(("pciBridge%d.virtualDev"):format(i), "pcieRootPort")
    add(("pciBridge%d.functions"):format(i), "8")
  end
  add("scsi0.present", true)
  add("scsi0.virtualDev", s.disk_controller == "lsilogic" and "lsilogic" or "pvscsi")
  add("scsi0:0.present", true)
  add("scsi0:0.fileName", s.disk)
  add("ide1:0.present", s.iso ~= nil)
  if s.iso then
    add("ide1:0.deviceType", "cdrom-image")
    add("ide1:0.fileName", s.iso)
  end
  local sata = s.cd_bus == "sata" and #(s.cdroms or {}) > 0
  -- the install ISO keeps ide1:0; the seed CD takes unit 1 of its bus
  -- (ide1:1, or sata0:1 on an AHCI controller of its own)
  if sata then add("sata0.present", true) end
  for i, iso in ipairs(s.cdroms or {}) do
    local dev = (sata and "sata0:%d" or "ide1:%d"):format(i)
    add(dev .. ".present", true)
    add(dev .. ".deviceType", "cdrom-image")
    add(dev .. ".fileName", iso)
  end
  add("bios.bootOrder", "hdd,cdrom")
  add("ethernet0.present", true)
  add("ethernet0.virtualDev", s.network_card or "vmxnet3")
  add("ethernet0.addressType", "generated")
  local net = s.network or ""
  if net == "" then
    add("ethernet0.connectionType", "nat")
  elseif net:match("^vmnet%d+$") then
    add("ethernet0.connectionType", "custom")
    add("ethernet0.vnet", net)
  else
    add("ethernet0.networkName", net)
  end
  add("serial0.present", true)
  add("serial0.fileType", "file")
  add("serial0.fileName", s.serial)
  add("serial0.tryNoRxLoss", false)
  add("tools.upgrade.policy", "manual")
  add("msg.autoAnswer", true)
  add("RemoteDisplay.vnc.enabled", true)
  add("RemoteDisplay.vnc.ip", s.vnc.ip)
  add("RemoteDisplay.vnc.port", tostring(s.vnc.port))
  if s.vnc.password then add("RemoteDisplay.vnc.password", s.vnc.password) end
  local keys = {}
  for k in pairs(s.extra or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do add(k, tostring(s.extra[k])) end
  return e
end

-- ====================================================================== --
-- The VM                                                                 --
-- ====================================================================== --

local VM = {}
VM.__index = VM

-- The tools in the backend's state (found once, or given by a spec), else
-- those found on this machine.
local function tools_of(state)
  if state and state.tools then return state.tools end
  return M.find_tools()
end

-- Prepares (does not start) a VM in `<o.workdir>/<o.name>/`: the disk and
-- the .vmx. o: workdir, name, log_dir, tools, settings (M.settings by name),
-- step (cpus, cores_per_socket, memory_mb, disk_mb, guest_os, firmware,
-- disk_controller, network_card, network, vmx_version, headless), iso,
-- cdroms (more ISOs), source_disk (a built VMDK converted into the VM's disk
-- instead of a blank one: a test VM).
local function make(o)
  local set = o.settings or {}
  local function get(k)
    local v = set[k]
    if v == "" then return nil end
    return v
  end
  local tools, step, name = o.tools, o.step or {}, o.name
  local dir = o.workdir .. "/" .. name
  local ok, err, code = fs.mkdir(dir)
  if not ok then return nil, ("workstation: %s: %s"):format(dir, err), code end
  local vm = setmetatable({ name = name, dir = dir, tools = tools, step = step,
    vmx = dir .. "/" .. name .. ".vmx", disk = dir .. "/" .. name .. ".vmdk",
    serial_log = (o.log_dir or dir) .. "/serial.log", ssh_port = get("ssh_port") or 22 }, VM)
  vm.hint = "see the serial log " .. vm.serial_log
  -- everything under dir goes at cleanup, the VM stopped first
  vm.cleanup = require("capil.sys.cleanup").push(("Workstation VM %s (%s)"):format(name, vm.vmx), function()
    vm:destroy()
  end)

  local ip = get("vnc_bind_address") or "127.0.0.1"
  local min, max = get("vnc_port_min") or 5900, get("vnc_port_max") or 6000
  local port = vnc_port(ip, min, max)
  if not port then
    return nil, ("workstation: %s: no free VNC port on %s in %d-%d"):format(name, ip, min, max), "EADDRINUSE"
  end
  vm.vnc = { ip = ip, port = port }
  if not get("vnc_disable_password") then
    local pw, perr, pcode = random_password(8)
    if not pw then return nil, ("workstation: %s: a VNC password: %s"):format(name, perr), pcode end
    vm.vnc.password = pw
    log.secret(pw)
  end

  if o.source_disk then
    ok, err, code = vm:copy_disk(o.source_disk, get("disk_type_id") or "0")
  else
    ok, err, code = vm:create_disk(step.disk_mb or 20480, get("disk_type_id") or "0")
  end
  if not ok then return nil, err, code end

  local entries = M.vmx_entries({
    name = name, guest_os = step.guest_os, vmx_version = step.vmx_version, firmware = step.firmware,
    cpus = step.cpus, cores_per_socket = step.cores_per_socket, memory_mb = step.memory_mb,
    disk_controller = step.disk_controller, disk = name .. ".vmdk", iso = o.iso, cdroms = o.cdroms,
    cd_bus = step.cd_bus,
    network_card = step.network_card, network = step.network, serial = vm.serial_log, vnc = vm.vnc,
    extra = get("configuration_parameters"),
  })
  ok, err, code = write_file(vm.vmx, M.vmx_encode(entries))
  if not ok then return nil, err, code end
  log.info("%s: %s written (VNC on %s:%d%s)", name, vm.vmx, ip, port, vm.vnc.password and ", with a password" or "")
  return vm
end

--- Prepares (does not start) the build VM of the plan's create_vm step in
--- `<ctx.workdir>/<vm_name>/`: a blank disk and the .vmx, with the ISO
--- (ctx.media.iso) and the installer CD (ctx.media.cd_iso). The tools are
--- ctx.state.tools, else found on this machine (and kept there).
---@param ctx capil.BuildContext
---@param step table the create_vm step: vm_name, cpus, cores_per_socket, memory_mb, disk_mb, guest_os, firmware, disk_controller, network_card, network, vmx_version, headless
---@return table|nil vm, string? err, string? code
function M.create(ctx, step)
  local tools, terr, tcode = tools_of(ctx.state)
  if not tools then return nil, terr, tcode end
  ctx.state.tools = tools
  local media = ctx.media or {}
  return make({ workdir = ctx.workdir, log_dir = ctx.log_dir, name = step.vm_name or ctx.name, tools = tools,
    settings = ctx.settings, step = step, iso = media.iso, cdroms = media.cd_iso and { media.cd_iso } or nil })
end

--- Creates the VM's disk: `vmware-vdiskmanager -c -s <mb>MB -a lsilogic -t
--- <type>`, or `qemu-img create -f vmdk` when vdiskmanager is absent.
function VM:create_disk(mb, type_id)
  local argv
  if self.tools.vdiskmanager then
    argv = { self.tools.vdiskmanager, "-c", "-s", ("%dMB"):format(mb), "-a", "lsilogic", "-t", tostring(type_id),
      self.disk }
  else
    log.info("%s: vmware-vdiskmanager not found; creating the disk with qemu-img", self.name)
    argv = { "qemu-img", "create", "-q", "-f", "vmdk", self.disk, mb .. "M" }
  end
  local r, err, code = proc.run({ argv = argv, timeout = 300 })
  if not r or r.code ~= 0 then
    return nil, ("workstation: creating the disk %s: %s"):format(self.disk,
      r and (r.stdout .. r.stderr):gsub("%s+$", "") or err), code or "EVDISK"
  end
  return true
end

--- Makes the VM's disk from an existing VMDK: `vmware-vdiskmanager -r <src>
--- -t <type>`, or `qemu-img convert -O vmdk` when vdiskmanager is absent.
function VM:copy_disk(src, type_id)
  local argv
  if self.tools.vdiskmanager then
    argv = { self.tools.vdiskmanager, "-r", src, "-t", tostring(type_id), self.disk }
  else
    log.info("%s: vmware-vdiskmanager not found; converting the disk with qemu-img", self.name)
    argv = { "qemu-img", "convert", "-O", "vmdk", src, self.disk }
  end
  local r, err, code = proc.run({ argv = argv, timeout = 3600 })
  if not r or r.code ~= 0 then
    return nil, ("workstation: converting %s into %s: %s"):format(src, self.disk,
      r and (r.stdout .. r.stderr):gsub("%s+$", "") or err), code or "EVDISK"
  end
  return true
end

--- Starts the VM: `vmrun start <vmx> nogui`, or `gui` when the build is not
--- headless (headless=false, or FOREGROUND set as image-builder's make var).
function VM:start()
  local fg = os.getenv("FOREGROUND")
  local gui = self.step.headless == false or (fg ~= nil and fg ~= "" and fg ~= "0")
  local r, err, code = M.vmrun(self.tools, { "start", self.vmx, gui and "gui" or "nogui" }, 300)
  if not r then return nil, err, code end
  log.info("%s: running on %s (%s), VNC on %s:%d, serial log %s", self.name,
    self.tools.type == "fusion" and "Fusion" or "Workstation", gui and "gui" or "nogui", self.vnc.ip, self.vnc.port,
    self.serial_log)
  return true
end

--- Types boot-command events over the VM's VNC server (capil.sys.vnc).
function VM:type_keys(events, interval)
  local host_ip = self.vnc.ip == "0.0.0.0" and "127.0.0.1" or self.vnc.ip
  local s, err, code = require("capil.sys.vnc").connect({ host = host_ip, port = self.vnc.port,
    password = self.vnc.password, timeout = 60 })
  if not s then return nil, ("workstation: typing into %s: %s"):format(self.name, err), code end
  local ok, terr, tcode = s:type(events, interval)
  s:close()
  if not ok then return nil, ("workstation: typing into %s: %s"):format(self.name, terr), tcode end
  return true
end

--- Waits up to `timeout` seconds for VMware Tools to report an IPv4
--- address (`vmrun getGuestIPAddress`, which fails until it knows one).
---@return {host: string, port: integer}|nil addr, string? err, string? code
function VM:ssh_address(timeout)
  timeout = timeout or 600
  local deadline = runtime.now() + timeout
  local last
  while true do
    local r, err = M.vmrun(self.tools, { "getGuestIPAddress", self.vmx }, 60)
    local ip = r and r.stdout:match("(%d+%.%d+%.%d+%.%d+)")
    if ip and ip ~= "0.0.0.0" then
      log.info("%s: guest IP %s", self.name, ip)
      return { host = ip, port = self.ssh_port }
    end
    last = err or (r and r.stdout:gsub("%s+$", ""))
    local alive, why = self:alive()
    if not alive then
      return nil, ("workstation: %s stopped before it reported an IP address: %s"):format(self.name, why), "EVMRUN"
    end
    if runtime.now() + M.IP_POLL > deadline then
      return nil, ("workstation: %s reported no IP address within %g s (VMware Tools / open-vm-tools running in "
        .. "the guest?); last: %s"):format(self.name, timeout, tostring(last)), "ETIMEDOUT"
    end
    local ok, serr, scode = runtime.sleep(M.IP_POLL)
    if not ok then return nil, serr, scode end
  end
end

--- Whether the VM runs (`vmrun list` names its .vmx).
---@return boolean alive, string? why
function VM:alive()
  local r, err = M.vmrun(self.tools, { "list" }, 60)
  if not r then return false, err end
  for line in r.stdout:gmatch("[^\n]+") do
    if line:gsub("%s+$", "") == self.vmx then return true end
  end
  return false, ("the VM is not running (serial log %s)"):format(self.serial_log)
end

--- Waits up to `timeout` seconds for the VM to stop; true or nil, ETIMEDOUT.
function VM:wait_exit(timeout)
  local deadline = runtime.now() + (timeout or 60)
  while true do
    if not self:alive() then return true end
    if runtime.now() >= deadline then
      return nil, ("workstation: %s still running after %g s"):format(self.name, timeout or 60), "ETIMEDOUT"
    end
    local ok, err, code = runtime.sleep(math.min(1, math.max(deadline - runtime.now(), 0.01)))
    if not ok then return nil, err, code end
  end
end

--- `vmrun stop soft` (the guest shuts down), then `hard` after `timeout` s.
function VM:power_off(timeout)
  if not self:alive() then return true end
  M.vmrun(self.tools, { "stop", self.vmx, "soft" }, timeout or 60)
  if self:wait_exit(timeout or 60) then return true end
  log.warn("%s: no power-off after a soft stop within %g s; stopping it hard", self.name, timeout or 60)
  M.vmrun(self.tools, { "stop", self.vmx, "hard" }, 60)
  return self:wait_exit(10)
end

--- Stops the VM hard if it runs (the files stay until cleanup).
function VM:kill()
  if self:alive() then M.vmrun(self.tools, { "stop", self.vmx, "hard" }, 60) end
end

--- Stops the VM, unregisters and deletes it (`vmrun deleteVM`), and removes
--- its directory. Runs at cleanup; again is a no-op.
function VM:destroy()
  if self.destroyed then return true end
  self.destroyed = true
  if self.cleanup then self.cleanup:cancel() self.cleanup = nil end
  if fs.exists(self.vmx) then
    self:kill()
    M.vmrun(self.tools, { "deleteVM", self.vmx }, 120)
  end
  fs.remove(self.dir, { recursive = true })
  return true
end

--- Exports the disk as a streamOptimized VMDK at `path`:
--- `vmware-vdiskmanager -r <vmdk> -t 5 <tmp>` then renamed into place, or
--- (vdiskmanager absent) capil's writer (`disk_writer = "capil"`, the
--- default: capil.format.vmdk.write, the VM's VMDK through a sparse raw
--- temp) or qemu-img (`disk_writer = "qemu-img"`: capil.format.vmdk.convert).
--- Returns {writer = "vdiskmanager"|"capil"|"qemu-img"}.
---@param path string
---@param opts? {adapter_type?: string, hwversion?: integer, timeout?: number, disk_writer?: "capil"|"qemu-img", jobs?: integer}
---@return {writer: string}|nil ok, string? err, string? code
function VM:export(path, opts)
  opts = opts or {}
  if not self.tools.vdiskmanager then
    local writer = opts.disk_writer or "capil"
    if writer == "capil" then
      log.info("%s: vmware-vdiskmanager not found; writing the VMDK with capil's writer", self.name)
    elseif writer == "qemu-img" then
      log.info("%s: vmware-vdiskmanager not found; converting the disk with qemu-img", self.name)
    end
    local ok, err, code = require("capil.format.vmdk").export(writer, self.disk, path, { src_format = "vmdk",
      adapter_type = opts.adapter_type, hwversion = opts.hwversion, jobs = opts.jobs, timeout = opts.timeout })
    if not ok then
      return nil, ("workstation: exporting %s: %s"):format(self.disk, err),
        (code == nil or code == "QEMU_IMG") and "EVDISK" or code
    end
    return { writer = writer, sha256 = ok.sha256 }
  end
  local tmp = path:gsub("%.vmdk$", "") .. ".tmp.vmdk"
  fs.remove(tmp)
  local r, err, code = proc.run({ argv = { self.tools.vdiskmanager, "-r", self.disk, "-t", "5", tmp },
    timeout = opts.timeout or 3600 })
  if not r or r.code ~= 0 then
    fs.remove(tmp)
    return nil, ("workstation: exporting %s: %s"):format(self.disk, r and (r.stdout .. r.stderr):gsub("%s+$", "")
      or err), code or "EVDISK"
  end
  local ok, rerr, rcode = fs.rename(tmp, path)
  if not ok then return nil, rerr, rcode end
  return { writer = "vdiskmanager" }
end

M.VM = VM

-- ====================================================================== --
-- Testing the built VM (image-post-create-config.sh)                     --
-- ====================================================================== --

local function snapshots(tools, vmx)
  local r, err, code = M.vmrun(tools, { "listSnapshots", vmx }, 60)
  if not r then return nil, err, code end
  local set = {}
  for line in r.stdout:gmatch("[^\n]+") do
    if not line:match("^Total snapshots") then set[(line:gsub("^%s+", ""):gsub("%s+$", ""))] = true end
  end
  return set
end

--- Prepares a built (powered-off) VM for the test stage as image-builder's
--- image-post-create-config.sh did: snapshot `new` (unless listed), the
--- 2-vCPU edit then snapshot `2cpu`, the guestinfo cloud-init keys then
--- snapshot `cloudinit` (capil.test.cloudinit.vmx). A second call changes
--- nothing. Returns what was done ({new=, cpus=, guestinfo=}).
---@param vmx_path string
---@param data capil.test.cloudinit.Data
---@param opts? {tools?: capil.workstation.Tools}
---@return table|nil done, string? err, string? code
function M.prepare_test(vmx_path, data, opts)
  local tools, terr, tcode = tools_of(opts)
  if not tools then return nil, terr, tcode end
  local done = { new = false, cpus = false, guestinfo = false }
  local have, err, code = snapshots(tools, vmx_path)
  if not have then return nil, err, code end
  local function snap(name)
    local r, serr, scode = M.vmrun(tools, { "snapshot", vmx_path, name }, 300)
    if not r then return nil, serr, scode end
    return true
  end
  if not have.new then
    local ok, serr, scode = snap("new")
    if not ok then return nil, serr, scode end
    done.new = true
  end
  local text, rerr, rcode = fs.read(vmx_path)
  if not text then return nil, ("workstation: %s: %s"):format(vmx_path, rerr), rcode end
  local final, changed = require("capil.test.cloudinit").vmx(text, data)
  if changed.cpus then
    -- the CPU edit alone first: the guestinfo lines are the last four appended
    local cpu_text = final
    if changed.guestinfo then
      cpu_text = final:gsub("guestinfo%.userdata = [^\n]*\nguestinfo%.userdata%.encoding = [^\n]*\n"
        .. "guestinfo%.metadata = [^\n]*\nguestinfo%.metadata%.encoding = [^\n]*\n$", "")
    end
    local ok, werr, wcode = write_file(vmx_path, cpu_text)
    if not ok then return nil, werr, wcode end
    ok, werr, wcode = snap("2cpu")
    if not ok then return nil, werr, wcode end
    done.cpus = true
  end
  if changed.guestinfo then
    local ok, werr, wcode = write_file(vmx_path, final)
    if not ok then return nil, werr, wcode end
    ok, werr, wcode = snap("cloudinit")
    if not ok then return nil, werr, wcode end
    done.guestinfo = true
  end
  return done
end

---@type capil.TestHooks
M.test = {}

--- A test VM of its own from the built disk (run.target: the build's VMDK
--- or the OVA's disk) with the test hardware (at least 2 vCPUs and 2 GiB),
--- then image-post-create-config.sh: snapshots new, 2cpu and cloudinit with
--- the guestinfo lines in the .vmx (M.prepare_test).
---@param run capil.TestRun
---@return true|nil ok, string? err, string? code
function M.test.prepare(run)
  local t, vs = run.target, run.vm_settings or {}
  local tools, err, code = tools_of(run.state)
  if not tools then return nil, err, code end
  run.state.tools = tools
  local disk
  disk, err, code = require("capil.test.imagetest").disk_of(t, run.work)
  if not disk then return nil, err, code end
  local vm
  vm, err, code = make({ workdir = run.work, name = t.name .. "-test", log_dir = run.test_dir, tools = tools,
    settings = run.settings, source_disk = disk, step = {
      cpus = math.max(2, vs.cpus or 1), cores_per_socket = vs.cores_per_socket,
      memory_mb = math.max(2048, vs.memory_mb or 0), guest_os = vs.guest_os or "other-64",
      vmx_version = vs.vmx_version, firmware = vs.firmware, disk_controller = vs.disk_controller,
      network_card = vs.network_card, network = vs.network,
    } })
  if not vm then return nil, err, code end
  run.vm = vm
  local snap
  snap, err, code = M.prepare_test(vm.vmx, run.data, { tools = tools })
  if not snap then return nil, err, code end
  run.report.snapshots = snap
  return true
end

--- What test/vm.json keeps of a kept test VM.
---@param run capil.TestRun
---@return table
function M.test.record(run)
  return { backend = "workstation", name = run.vm.name, vmx = run.vm.vmx }
end

--- The test VM is always capil's own copy: kept (its cleanup cancelled), or
--- powered off and removed.
---@param run capil.TestRun
---@return true|nil ok, string? err, string? code
function M.test.finish(run)
  local vm = run.vm
  if not vm then return true end
  if run.keep then
    if vm.cleanup then vm.cleanup:cancel() vm.cleanup = nil end
    return true
  end
  local ok, err, code = vm:power_off(60)
  if ok then ok, err, code = vm:destroy() end
  return ok, err, code
end

return M
