--- capil.backends.qemu — builds on QEMU on this machine. KVM is used only
--- where it can run ordinary guests (checked once and cached); otherwise TCG
--- with `-cpu max` (nested PVM hosts expose /dev/kvm but cannot run stock
--- kernels). The VM gets a sparse raw disk (`disk_writer = "capil"`, the
--- default: capil's VMDK writer walks its extents directly at export, and
--- the guest's discards punch holes in it) or a qcow2 disk exported by
--- `qemu-img convert` (`disk_writer = "qemu-img"`), the installer ISO as a CD-ROM booted
--- once, user networking with SSH forwarded to a free loopback port, the
--- serial console in the build's log directory, QMP on a unix socket for
--- control and typing, and VNC on loopback only. `M.test` boots a built
--- disk under a copy-on-write overlay for `capil test`. `firmware = "efi"`
--- boots OVMF (Debian's ovmf) with a private copy of its variable store.
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")
local qmp = require("capil.sys.qmp")
local log = require("capil.sys.log")

local M = {}

M.name = "qemu"
M.description = "QEMU/KVM on this machine (TCG when KVM cannot run guests)"
---@type capil.BackendTraits
M.traits = { encoder = "qmp", export = "qemu-img", disk_source = true, http_ip = "10.0.2.2", guest_id = "vsphere", qemu_devices = true,
  process = "QEMU" }
---@type capil.Setting[]
M.settings = {
  { "accel", paths = { "build.qemu_accel" }, default = "auto" },
}

local QEMU = "qemu-system-x86_64"

-- ====================================================================== --
-- Accelerator                                                            --
-- ====================================================================== --

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- Whether KVM can run ordinary guests here: /dev/kvm usable, the CPU
--- advertises VMX or SVM, and the host's KVM is not the PVM flavour (which
--- emulates stock kernels instruction by instruction and then fails).
--- Returns "kvm" or "tcg" and the reason.
function M.probe_accel()
  local f = io.open("/dev/kvm", "r+")
  if not f then return "tcg", "/dev/kvm is not usable" end
  f:close()
  local cpuinfo = read("/proc/cpuinfo") or ""
  if not (cpuinfo:find("%f[%w]vmx%f[%W]") or cpuinfo:find("%f[%w]svm%f[%W]")) then
    return "tcg", "the CPU has no VMX/SVM (nested virtualization without hardware support)"
  end
  if fs.exists("/sys/module/kvm_pvm") then
    return "tcg", "KVM here is PVM, which cannot run stock guest kernels"
  end
  return "kvm", "KVM with hardware virtualization"
end

--- The accelerator to use: `qemu_accel` (auto, kvm, tcg); the probe result
--- is cached per boot in $XDG_CACHE_HOME/capil/accel.
---@param setting? string auto, kvm or tcg
---@param cache_dir? string
---@return string accel, string why
function M.accel(setting, cache_dir)
  if setting == "kvm" or setting == "tcg" then return setting, "set by qemu_accel" end
  local cache = cache_dir and (cache_dir .. "/accel")
  local boot_id = (read("/proc/sys/kernel/random/boot_id") or ""):gsub("%s", "")
  local cached = cache and read(cache)
  if cached then
    local id, accel, why = cached:match("^(%S+) (%S+) (.*)$")
    if id == boot_id then return accel, why .. " (cached)" end
  end
  local accel, why = M.probe_accel()
  if cache then
    fs.mkdir(cache_dir)
    fs.write(cache, ("%s %s %s"):format(boot_id, accel, why))
  end
  return accel, why
end

--- Before create_vm: chooses the accelerator (ctx.settings.accel, the probe
--- cached in ctx.cache_dir), logs it, and keeps it in ctx.state.accel and
--- the run report.
---@param ctx capil.BuildContext
---@param step table the plan's create_vm step
---@return true
function M.prepare(ctx, step)
  local accel, why = M.accel(ctx.settings and ctx.settings.accel, ctx.cache_dir)
  log.info("%s: accelerator %s (%s)", step.vm_name or ctx.name, accel, why)
  ctx.state.accel = accel
  if ctx.report then ctx.report.accel = accel end
  return true
end

--- Before anything starts (capil.build.preflight): QEMU and qemu-img on
--- PATH, OVMF for firmware efi, the accelerator (TCG is a note, unless
--- qemu_accel=kvm asks for KVM where it cannot run guests), and room in
--- the output directory for the VM's disk (sparse raw or qcow2: at most its
--- size; capil's writer reads the raw disk in place, with no temp copy).
---@param c capil.Preflight
function M.preflight(c)
  c:tool(QEMU, "to run the build VM", "install qemu-system-x86 (Debian, Ubuntu) or qemu-kvm (Fedora, RHEL)")
  local vm = c:step("create_vm") or {}
  local export = c:step("export_disk") or {}
  c:tool("qemu-img", export.disk_writer == "qemu-img" and "to create the VM's disk and export the VMDK"
    or "to create the VM's disk", "install qemu-utils (Debian, Ubuntu) or qemu-img")
  if vm.firmware == "efi" and not vm.kernel then
    local ok, err = M.ovmf()
    if not ok then c:fail(err) end
  end
  local setting = c.settings.accel
  local probed, why = M.probe_accel()
  if setting == "kvm" and probed ~= "kvm" then
    c:fail("qemu: qemu_accel=kvm, but KVM cannot run guests here (%s): set qemu_accel=auto (TCG) or build on a "
      .. "host with KVM", why)
  elseif setting == "tcg" then
    c:note("accelerator TCG (set by qemu_accel)")
  elseif probed == "tcg" then
    c:note("accelerator TCG, as %s: the build runs several times slower than with KVM", why)
  else
    c:note("accelerator KVM (%s)", why)
  end
  if vm.disk_mb then
    c:space(c.plan.output_dir, vm.disk_mb * 1024 * 1024, ("the VM's disk (%s, at most)"):format(
      vm.disk_format == "raw" and "sparse raw" or "qcow2"))
  end
end

-- ====================================================================== --
-- The VM                                                                 --
-- ====================================================================== --

-- The guest sees the hardware the recipe declares for vSphere, so it
-- installs with the drivers and device names (/dev/sda, vmxnet3) the image
-- will have there. The disk controller (recipe `disk_controller_type`):
--   pvscsi    QEMU's pvscsi HBA (VMware PVSCSI, guest driver vmw_pvscsi)
--   lsilogic  QEMU's mptsas1068 (LSI SAS1068): QEMU has no LSI53C1030, the
--             chip of VMware's "lsilogic"; the SAS1068 is its Fusion-MPT
--             sibling (guest drivers mptbase/mptscsih, mptsas here and mptspi
--             on vSphere), closer than lsi53c895a, which needs sym53c8xx
--   virtio    virtio-blk (/dev/vda): the explicit opt-in for local-only
--             images (qemu_disk_interface=virtio)
M.DISK_DEVICES = {
  pvscsi = { hba = "pvscsi", disk = "scsi-hd" },
  lsilogic = { hba = "mptsas1068", disk = "scsi-hd" },
  virtio = {},
}

-- The NIC (recipe `network_card`; qemu_nic_model=virtio opts out).
M.NIC_DEVICES = { vmxnet3 = "vmxnet3", e1000 = "e1000", e1000e = "e1000e", virtio = "virtio-net-pci" }

-- EFI firmware (recipe `firmware = "efi"`): OVMF from Debian's `ovmf`
-- package (2022.11-6+deb12u2 here; file names from `dpkg -L ovmf`), the
-- 4 MiB flash images without Secure Boot (vSphere's bootOptions.efiSecureBootEnabled
-- is false in capil's OVF too). The code image is shared read-only; each VM
-- gets its own copy of the variable store in its workdir, so the boot entry
-- an installer writes survives its reboot and never leaks into another build.
-- OVMF needs no q35 machine: QEMU's default i440fx (pc) boots it, with the
-- IDE CD-ROM, AHCI and virtio. Debian's build maps no disk behind QEMU's
-- pvscsi or mptsas1068 (its UEFI shell says "map: No mapping found"; the
-- same disk on virtio-scsi or AHCI is a BLK device and a boot option), so an
-- EFI VM's SCSI disk hangs off virtio-scsi (`scsi_hba`): still a SCSI disk,
-- /dev/sda, to the guest, driven by virtio_scsi instead of vmw_pvscsi/mptsas.
M.OVMF = { code = "/usr/share/OVMF/OVMF_CODE_4M.fd", vars = "/usr/share/OVMF/OVMF_VARS_4M.fd", package = "ovmf",
  scsi_hba = "virtio-scsi-pci" }

--- The OVMF images an EFI VM boots, checked readable, or nil, a message
--- naming the Debian package to install, and "ENOENT".
---@return {code: string, vars: string}|nil ovmf, string? err, string? code
function M.ovmf()
  for _, k in ipairs({ "code", "vars" }) do
    local f = io.open(M.OVMF[k], "rb")
    if not f then
      return nil, ("qemu: firmware efi needs OVMF, and %s is missing: install Debian's %s package "
        .. "(apt-get install %s)"):format(M.OVMF[k], M.OVMF.package, M.OVMF.package), "ENOENT"
    end
    f:close()
  end
  return { code = M.OVMF.code, vars = M.OVMF.vars }
end

local VM = {}
VM.__index = VM

--- Prepares (does not start) a VM from flat options (create and the test
--- hook use it; so do specs). opts: workdir, name, cpus, memory_mb, disk_mb,
--- iso (path, booted once), accel, log_dir, disk_interface (M.DISK_DEVICES:
--- pvscsi, lsilogic, virtio; default virtio), network_card (M.NIC_DEVICES;
--- default virtio), kernel/initrd/append (direct kernel boot), extra_cdroms
--- (on cd_bus: "ide", the default, or "sata": an ich9-ahci controller),
--- extra_drives ({path=, format=, readonly=}), disk (existing image to boot
--- instead of creating one), disk_format (the format of `disk`, or of the disk
--- created: "raw", sparse, disk.raw, or "qcow2", disk.qcow2, the default), snapshot (boot the disk
--- copy-on-write), daemon (QEMU may outlive capil: a test VM kept running),
--- vnc_display, firmware (bios, the default, or efi: OVMF, M.OVMF, with the
--- variable store copied to workdir/efivars.fd).
---@param opts table
---@return table|nil vm, string? err, string? code
function M.vm(opts)
  if not M.DISK_DEVICES[opts.disk_interface or "virtio"] then
    return nil, ("qemu: unknown disk_interface '%s' (pvscsi, lsilogic, virtio)"):format(opts.disk_interface), "EINVAL"
  end
  if not M.NIC_DEVICES[opts.network_card or "virtio"] then
    return nil, ("qemu: unknown network_card '%s' (vmxnet3, e1000, e1000e, virtio)"):format(opts.network_card),
      "EINVAL"
  end
  local firmware = opts.firmware or "bios"
  if firmware ~= "bios" and firmware ~= "efi" then
    return nil, ("qemu: unknown firmware '%s' (bios, efi)"):format(tostring(firmware)), "EINVAL"
  end
  local vm = setmetatable({ opts = opts, workdir = opts.workdir, name = opts.name }, VM)
  if firmware == "efi" then
    local ovmf, oerr, ocode = M.ovmf()
    if not ovmf then return nil, oerr, ocode end
    vm.efi_code, vm.efi_vars = ovmf.code, opts.workdir .. "/efivars.fd"
    -- a fresh, writable variable store per VM (the package's file is root's, 0644)
    local ok, cerr, ccode = fs.copy(ovmf.vars, vm.efi_vars, { mode = tonumber("600", 8) })
    if not ok then return nil, "qemu: copying the OVMF variable store: " .. tostring(cerr), ccode end
    if M.DISK_DEVICES[opts.disk_interface or "virtio"].hba then
      vm.hba = M.OVMF.scsi_hba
      log.info("%s: EFI: the %s disk hangs off %s, as OVMF boots no disk on QEMU's %s (the guest still sees "
        .. "a SCSI disk)", opts.name, opts.disk_interface, vm.hba, M.DISK_DEVICES[opts.disk_interface].hba)
    end
  end
  vm.installed = opts.kernel ~= nil -- a directly booted kernel has no install phase
  vm.qmp_path = opts.workdir .. "/qmp.sock"
  vm.serial_log = (opts.log_dir or opts.workdir) .. "/serial.log"
  vm.hint = "see the serial log " .. vm.serial_log
  local port, perr, pcode = runtime.free_port()
  if not port then return nil, "qemu: no free port for SSH forwarding: " .. tostring(perr), pcode end
  vm.ssh_port = port
  -- VNC for watching or debugging a build: loopback only, a free display
  if opts.vnc_display == nil then
    for d = 0, 99 do
      if not runtime.port_open("127.0.0.1", 5900 + d, 0.05) then opts.vnc_display = d break end
    end
  end
  local format = opts.disk_format or "qcow2"
  if not opts.disk and format ~= "raw" and format ~= "qcow2" then
    return nil, ("qemu: unknown disk_format '%s' (raw, qcow2)"):format(tostring(format)), "EINVAL"
  end
  vm.disk_format = format
  vm.disk = opts.disk or (opts.workdir .. "/disk." .. format)
  vm.own_disk = not opts.disk
  if not opts.disk then
    -- raw: a sparse file (holes until the guest writes; its discards punch them again)
    local r, err, code = proc.run({ argv = { "qemu-img", "create", "-q", "-f", format, vm.disk, opts.disk_mb .. "M" },
      timeout = 60 })
    if not r then return nil, "qemu: creating the disk: " .. err, code end
    if r.code ~= 0 then return nil, "qemu: qemu-img create " .. vm.disk .. ": " .. r.stderr, "EQEMU" end
  end
  return vm
end

--- Prepares (does not start) the build VM of the plan's create_vm step in
--- ctx.workdir: the ISO (ctx.media.iso) booted once, the installer CD
--- (ctx.media.cd_iso) beside it, the accelerator M.prepare chose.
---@param ctx capil.BuildContext
---@param step table the create_vm step: vm_name, cpus, memory_mb, disk_mb, disk_format, disk_interface, nic_model, firmware, kernel, initrd, append
---@return table|nil vm, string? err, string? code
function M.create(ctx, step)
  if not ctx.state.accel then M.prepare(ctx, step) end
  local media = ctx.media or {}
  return M.vm({
    workdir = ctx.workdir, log_dir = ctx.log_dir, name = step.vm_name or ctx.name, cpus = step.cpus,
    memory_mb = step.memory_mb, disk_mb = step.disk_mb, disk_format = step.disk_format, iso = media.iso,
    accel = ctx.state.accel,
    kernel = step.kernel, initrd = step.initrd, append = step.append,
    disk_interface = step.disk_interface, network_card = step.nic_model, firmware = step.firmware,
    extra_cdroms = media.cd_iso and { media.cd_iso } or nil, cd_bus = step.cd_bus,
  })
end

--- The QEMU command line (argv) for the VM.
function VM:argv()
  local o = self.opts
  local argv = { QEMU }
  local function add(...)
    for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
  end
  add("-name", self.name, "-accel", o.accel or "tcg", "-cpu", (o.accel == "kvm") and "host" or "max",
    "-smp", tostring(o.cpus or 1), "-m", tostring(o.memory_mb or 1024))
  if self.efi_vars then
    -- OVMF (M.vm checked and copied it); BIOS VMs keep QEMU's SeaBIOS
    add("-drive", ("if=pflash,format=raw,unit=0,readonly=on,file=%s"):format(self.efi_code),
      "-drive", ("if=pflash,format=raw,unit=1,file=%s"):format(self.efi_vars))
  end
  local disk = ("file=%s,format=%s,discard=unmap%s"):format(self.disk, self.disk_format,
    o.snapshot and ",snapshot=on" or "")
  local devices = M.DISK_DEVICES[o.disk_interface or "virtio"] -- checked by M.vm
  if devices.hba then
    -- the disk hangs off the controller the OVF declares, as on vSphere
    add("-device", (self.hba or devices.hba) .. ",id=hba0", "-drive", disk .. ",if=none,id=disk0",
      "-device", devices.disk .. ",drive=disk0,bus=hba0.0")
  else
    add("-drive", disk .. ",if=virtio")
  end
  local nic = M.NIC_DEVICES[o.network_card or "virtio"]
  add("-netdev", ("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22"):format(self.ssh_port), "-device", nic .. ",netdev=n0",
    -- appended, not truncated: the installer's console stays in the log
    -- when the installed system is started from its disk (QEMU's option
    -- syntax doubles a comma in the path)
    "-display", "none", "-vga", "std",
    "-chardev", ("file,id=serial0,append=on,path=%s"):format((self.serial_log:gsub(",", ",,"))),
    "-serial", "chardev:serial0",
    "-qmp", ("unix:%s,server=on,wait=off"):format(self.qmp_path))
  if o.vnc_display then add("-vnc", ("127.0.0.1:%d"):format(o.vnc_display)) end
  if o.kernel then
    -- direct kernel boot (test guests, users' own kernels): no installer CD
    add("-kernel", o.kernel)
    if o.initrd then add("-initrd", o.initrd) end
    if o.append then add("-append", o.append) end
  elseif o.iso and not self.installed then
    -- the installer CD boots once; its reboot comes back from the disk
    add("-drive", ("file=%s,media=cdrom,readonly=on"):format(o.iso), "-boot", "order=c,once=d")
  end
  if o.cd_bus == "sata" and o.extra_cdroms and #o.extra_cdroms > 0 then
    -- an AHCI controller of its own: the drive hangs off its ports (the
    -- bus Photon 5's installer finds its ks.json on)
    add("-device", "ich9-ahci,id=ahci0")
    for i, iso in ipairs(o.extra_cdroms) do
      add("-drive", ("file=%s,media=cdrom,readonly=on,if=none,id=cd%d"):format(iso, i),
        "-device", ("ide-cd,drive=cd%d,bus=ahci0.%d"):format(i, i - 1))
    end
  else
    -- if=ide: an ide-cd on the IDE bus
    for _, iso in ipairs(o.extra_cdroms or {}) do
      add("-drive", ("file=%s,media=cdrom,readonly=on"):format(iso))
    end
  end
  for _, d in ipairs(o.extra_drives or {}) do
    add("-drive", ("file=%s,if=virtio,format=%s%s"):format(d.path, d.format or "raw", d.readonly and ",readonly=on" or ""))
  end
  return argv
end

--- Starts QEMU and connects QMP. Registered for cleanup: killed by PID.
function VM:start()
  fs.remove(self.qmp_path)
  -- the serial log is appended across this VM's starts, begun afresh by its first
  if not self.serial_begun then
    fs.remove(self.serial_log)
    self.serial_begun = true
  end
  local p, err, code = proc.spawn({ argv = self:argv(), stdin = "null",
    stdout = self.workdir .. "/qemu.log", stderr = "stdout", daemon = self.opts.daemon })
  if not p then return nil, "qemu: starting " .. QEMU .. ": " .. err, code end
  self.process = p
  -- with --keep-on-error this label is what the user is shown
  self.cleanup = require("capil.sys.cleanup").push(("QEMU %s (pid %d): ssh -p %d <user>@127.0.0.1, serial log %s"):format(
    self.name, p.pid, self.ssh_port, self.serial_log), function()
    self:kill()
  end)
  local c, cerr, ccode = qmp.connect({ path = self.qmp_path, timeout = 30 })
  if not c then
    local why = self:exit_reason()
    self:kill()
    return nil, ("qemu: %s did not start: %s%s"):format(self.name, cerr, why and ("; " .. why) or ""), ccode
  end
  self.qmp = c
  log.info("%s: QEMU running (pid %d, %s), SSH forwarded to 127.0.0.1:%d, serial log %s",
    self.name, p.pid, self.opts.accel or "tcg", self.ssh_port, self.serial_log)
  return true
end

--- Whether QEMU still runs.
function VM:running()
  return self.process ~= nil and not self.process.closed and self.process:running()
end

--- Why QEMU ended (its log's last lines), for messages.
function VM:exit_reason()
  local text = read(self.workdir .. "/qemu.log") or ""
  local tail = text:gsub("%s+$", ""):match("([^\n]*)$")
  if tail and tail ~= "" then return "QEMU said: " .. tail end
end

--- Types boot-command events (capil.build.bootcmd.parse) as QMP chords with
--- `interval` seconds between keys; waits are honoured. Returns true or nil, err.
function VM:type_keys(events, interval)
  for _, c in ipairs(require("capil.build.bootcmd").to_qmp(events)) do
    if c.wait then
      local ok, err, code = runtime.sleep(c.wait)
      if not ok then return nil, err, code end
    else
      local ok, err, code = self.qmp:send_keys(c.keys)
      if not ok then return nil, ("qemu: typing into %s: %s"):format(self.name, err), code end
      if interval and interval > 0 then runtime.sleep(interval) end
    end
  end
  return true
end

--- Types boot-command events through the VM's loopback VNC display instead
--- of QMP (the way a hypervisor without QMP is typed into; capil.sys.vnc), with
--- `interval` seconds between keys. Returns true or nil, err, code.
function VM:type_keys_vnc(events, interval)
  if not self.opts.vnc_display then
    return nil, ("qemu: %s has no VNC display"):format(self.name), "EINVAL"
  end
  local s, err, code = require("capil.sys.vnc").connect({ host = "127.0.0.1", port = 5900 + self.opts.vnc_display,
    timeout = 30 })
  if not s then return nil, ("qemu: typing into %s: %s"):format(self.name, err), code end
  local ok, terr, tcode = s:type(events, interval)
  s:close()
  if not ok then return nil, ("qemu: typing into %s: %s"):format(self.name, terr), tcode end
  return true
end

--- Where the guest's SSH answers: the forwarded loopback port.
function VM:ssh_address()
  return { host = "127.0.0.1", port = self.ssh_port }
end

--- Whether the VM still runs, for the SSH wait. An installer that powers the
--- VM off (instead of rebooting) is restarted from its disk, once.
function VM:alive()
  if self:running() then return true end
  if not self.installed and self.opts.iso then
    log.info("%s: the installer powered the VM off; starting it from its disk", self.name)
    self:mark_installed()
    local ok, err = self:start()
    if ok then return true end
    return false, err
  end
  return false, ("QEMU exited (%s; serial log %s)"):format(self:exit_reason() or "no message", self.serial_log)
end

--- Waits for QEMU to exit (the guest powered off); true, or nil on timeout.
function VM:wait_exit(timeout)
  if not self.process then return true end
  local st, err, code = self.process:wait({ timeout = timeout })
  if not st then return nil, err, code end
  return true, st
end

--- ACPI power button, then `quit` after `timeout` seconds.
function VM:power_off(timeout)
  if not self:running() then return true end
  if self.qmp then self.qmp:execute("system_powerdown", nil, 5) end
  if self:wait_exit(timeout or 60) then return true end
  log.warn("%s: no power-off after ACPI within %g s; quitting QEMU", self.name, timeout or 60)
  if self.qmp then self.qmp:execute("quit", nil, 5) end
  return self:wait_exit(10)
end

--- Kills QEMU (SIGTERM, then SIGKILL) and forgets the QMP connection.
function VM:kill()
  if self.qmp then self.qmp:close() self.qmp = nil end
  if self.process then self.process:close(3) end
  if self.cleanup then self.cleanup:cancel() self.cleanup = nil end
end

--- Stops QEMU (VM:kill) and removes what the VM made: its disk (not a disk
--- it was given), its EFI variable store and the QMP socket. Again is a no-op.
---@return true
function VM:destroy()
  self:kill()
  if self.own_disk then fs.remove(self.disk) end
  if self.efi_vars then fs.remove(self.efi_vars) end
  fs.remove(self.qmp_path)
  return true
end

--- After QEMU has exited: the next start boots from the disk only.
function VM:mark_installed()
  self.installed = true
  if self.qmp then self.qmp:close() self.qmp = nil end
  if self.process then self.process:close(1) self.process = nil end
  if self.cleanup then self.cleanup:cancel() self.cleanup = nil end
end

--- Exports the disk as a streamOptimized VMDK: with capil's writer
--- (`disk_writer = "capil"`, the default: capil.format.vmdk.write, grains
--- compressed on every core (`jobs`, default the cores); a raw disk's
--- extents are read in place, a qcow2 goes through a sparse raw temp) or
--- with qemu-img (`disk_writer = "qemu-img"`: capil.format.vmdk.convert).
--- Returns {writer = "capil"|"qemu-img"}.
---@param path string
---@param opts? {adapter_type?: string, hwversion?: integer, timeout?: number, disk_writer?: "capil"|"qemu-img", jobs?: integer}
---@return {writer: string, sha256?: string}|nil ok, string? err, string? code
function VM:export(path, opts)
  opts = opts or {}
  local writer = opts.disk_writer or "capil"
  if writer == "capil" then
    log.info("%s: writing %s from the %s disk with capil's VMDK writer", self.name, path, self.disk_format)
  end
  local ok, err, code = require("capil.format.vmdk").export(writer, self.disk, path, { src_format = self.disk_format,
    adapter_type = opts.adapter_type, hwversion = opts.hwversion, jobs = opts.jobs, timeout = opts.timeout })
  if not ok then
    return nil, ("qemu: exporting %s: %s"):format(self.disk, err), (code == nil or code == "QEMU_IMG") and "EQEMU" or code
  end
  return { writer = writer, sha256 = ok.sha256 }
end

--- The VM's own disk, for a VMDK written straight into the OVA (the
--- export step's into_ova): only the raw disk capil's writer reads in place.
---@return {source: string, format: string}|nil
function VM:disk_source()
  if self.disk_format ~= "raw" then return nil end
  return { source = self.disk, format = "raw" }
end

M.VM = VM

-- ====================================================================== --
-- Testing a built image (capil test)                                     --
-- ====================================================================== --

---@type capil.TestHooks
M.test = {}

--- The test VM: the build's VMDK (or the OVA's disk) under a copy-on-write
--- qcow2 overlay in run.work, the NoCloud seed ISO as a CD, the hardware the
--- OVA declares as a vSphere deployment presents it (at least 2 vCPUs and
--- 2 GiB) and the build's firmware (an EFI image boots OVMF with a fresh
--- variable store, as a new vSphere VM does). The build output is never modified.
---@param run capil.TestRun
---@return true|nil ok, string? err, string? code
function M.test.prepare(run)
  local t, vs, work = run.target, run.vm_settings or {}, run.work
  local disk, err, code = require("capil.test.imagetest").disk_of(t, work)
  if not disk then return nil, err, code end
  local overlay = work .. "/disk.qcow2"
  fs.remove(overlay)
  local r
  r, err, code = proc.run({ argv = { "qemu-img", "create", "-q", "-f", "qcow2", "-F", "vmdk", "-b", disk, overlay },
    timeout = 120 })
  if not r then return nil, "test: qemu-img create: " .. err, code end
  if r.code ~= 0 then return nil, ("test: qemu-img create on %s: %s"):format(disk, r.stderr), "EQEMU" end
  local seed
  seed, err, code = require("capil.test.cloudinit").seed_iso(run.data, work .. "/cidata.iso")
  if not seed then return nil, err, code end
  local setting = vs.accel
  if setting == nil and run.settings then setting = run.settings.accel end
  local accel, why = M.accel(setting, run.cache_dir)
  log.info("test: accelerator %s (%s)", accel, why)
  if run.report then run.report.accel = accel end
  local vm
  vm, err, code = M.vm({
    workdir = work, log_dir = run.test_dir, name = t.name .. "-test", disk = overlay, disk_format = "qcow2",
    cpus = math.max(2, vs.cpus or 1), memory_mb = math.max(2048, vs.memory_mb or 0),
    accel = accel, extra_cdroms = { seed }, daemon = run.keep,
    -- the hardware the OVA declares, as a vSphere deployment presents it
    disk_interface = vs.disk_interface, network_card = vs.nic_model, firmware = vs.firmware,
  })
  if not vm then return nil, err, code end
  run.vm = vm
  return true
end

--- What test/vm.json keeps of a kept QEMU VM (capil ssh checks the pid).
---@param run capil.TestRun
---@return table
function M.test.record(run)
  local vm = run.vm
  return { backend = "qemu", name = vm.name, pid = vm.process and vm.process.pid, workdir = run.work,
    serial_log = vm.serial_log, qmp = vm.qmp_path }
end

--- A kept VM is left running on its own (QEMU detached); otherwise it is
--- powered off (ACPI, when the guest came up) and QEMU stopped.
---@param run capil.TestRun
---@return true|nil ok, string? err, string? code
function M.test.finish(run)
  local vm = run.vm
  if not vm then return true end
  if run.keep then
    if vm.process then vm.process:detach() end
    if vm.cleanup then vm.cleanup:cancel() vm.cleanup = nil end
    if vm.qmp then vm.qmp:close() vm.qmp = nil end
    return true
  end
  -- a guest that never came up gets no ACPI grace period
  local ok = true
  if run.logged_in then ok = vm:power_off(60) end
  vm:destroy()
  if not ok then return nil, vm.name .. ": QEMU would not stop", "ETEST" end
  return true
end

return M
