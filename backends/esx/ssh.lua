--- capil.backends.esx.ssh — builds on a free-licence ESXi host over SSH, as
--- Packer's removed vmware-iso "remote" (esx5) driver did: the host refuses
--- the vSphere write API (RestrictedVersion), but its shell has vim-cmd,
--- vmkfstools and esxcli. The esx backend switches here on RestrictedVersion,
--- or at once with `remote_type=ssh`. The steps:
---
--- It is not a backend of its own: capil.backends.esx calls upload_media,
--- create and finalize_vm here with its BuildContext, and the session and
--- the VM live in ctx.state (remote, remote_iso, remote_cd, vm).
---
--- * upload_media: one libssh2 session to remote_host (remote_username with
---   remote_password, or remote_private_key_file; the password goes to
---   libssh2's password auth, never to a command line); the ISO goes over
---   SFTP to `/vmfs/volumes/<remote_datastore>/<cache_dir>/<sha256>.iso`,
---   skipped when the file has the local size and the `.sha256` marker next
---   to it names the checksum. The installer CD goes beside it, per build.
---   The guest reaches the installer server at this machine's address as
---   the host sees it ($SSH_CONNECTION), unless http_ip is set.
--- * create_vm: `<vm>/<vm>.vmx` (capil.backends.esx.ssh.vmx) over SFTP,
---   `vmkfstools -c <size>M -d thin`, `vim-cmd solo/registervm` (the vmid),
---   the VNC port opened in the firewall (`gdbserver` rule set, 5900-6000, as
---   Packer's users did), `vim-cmd vmsvc/power.on`. A cleanup powers off,
---   unregisters and removes the VM directory.
--- * boot command: typed over VNC (capil.sys.vnc) to remote_host:<vnc port>, the
---   password random per build.
--- * SSH address: `vim-cmd vmsvc/get.guest` until VMware Tools report an
---   ipAddress.
--- * export: the vSphere export (ExportVm, capil.vsphere.lease) when the
---   host is licensed (remote_type=ssh), else the vmdk descriptor and its
---   extents over SFTP, then `qemu-img convert` to a streamOptimized vmdk.
--- * finalize_vm: keep the VM registered (keep_vm) or destroy it.
---
--- Extra variables: remote_port (22), remote_private_key_file,
--- remote_host_key ("SHA256:..." or a known_hosts path; default capil's
--- known_hosts, $XDG_STATE_HOME/capil/known_hosts: trust on first use),
--- remote_vnc_port (default: the first free port in 5900-5999 by
--- `esxcli network ip connection list`), remote_poll_interval (seconds, 2).
--- Every remote failure names the host and the command.
local ssh = require("capil.sys.ssh")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")
local cleanup = require("capil.sys.cleanup")
local text = require("capil.util.text")

local M = {}

local VM = {}
VM.__index = VM
M.VM = VM

local function fail(msg, code) return nil, msg, code or "EESXSSH" end

local function nonempty(v)
  if v == nil or v == "" then return nil end
  return v
end

-- ====================================================================== --
-- Settings and the remote shell                                          --
-- ====================================================================== --

--- The known_hosts file capil keeps for the ESXi hosts it logs in to:
--- $XDG_STATE_HOME/capil/known_hosts, else ~/.local/state/capil/known_hosts.
---@param getenv? fun(name: string): string?
---@return string|nil
function M.known_hosts_file(getenv)
  getenv = getenv or os.getenv
  local state = nonempty(getenv("XDG_STATE_HOME"))
  if not state then
    local home = nonempty(getenv("HOME"))
    if not home then return nil end
    state = home .. "/.local/state"
  end
  return state .. "/capil/known_hosts"
end

--- The SSH connection of the esx backend's settings (`s`: server,
--- username, password or password_var, datastore, cache_dir, ssh_port and
--- the remote_* ones named in the module comment). The host key is pinned:
--- remote_host_key, else capil's known_hosts file (trust on first use, a
--- changed key refused before the password is sent).
---@param s table the esx backend's settings
---@param secret? fun(var: string): string|nil reads password_var when the password is not in place
---@param getenv? fun(name: string): string? (default os.getenv)
---@return table
function M.connection(s, secret, getenv)
  local h = nonempty(s.server)
  -- remote_host may be a URL for the vSphere API (https://host[:port]/sdk)
  if h then h = h:match("^%a+://%[?([^/%]]+)%]?:%d+") or h:match("^%a+://([^/:]+)") or h end
  local password = nonempty(s.password)
  if not password and s.password_var and secret then password = nonempty(secret(s.password_var)) end
  return {
    host = h, port = tonumber(nonempty(s.remote_port) or 22),
    user = nonempty(s.username) or "root",
    password = password,
    key = nonempty(s.remote_private_key_file),
    host_key = nonempty(s.remote_host_key) or M.known_hosts_file(getenv),
    datastore = nonempty(s.datastore),
    cache_dir = nonempty(s.cache_dir) or "capil_cache",
    vnc_port = tonumber(nonempty(s.remote_vnc_port) or ""),
    poll = tonumber(nonempty(s.remote_poll_interval) or "") or 2,
    ssh_port = tonumber(s.ssh_port or 22),
  }
end

local Remote = {}
Remote.__index = Remote

--- Opens the SSH session to the ESXi host.
---@param s table from M.connection
---@return table|nil remote, string? err, string? code
function M.connect(s)
  if not s.host then return fail("esx over SSH: no host: set remote_host", "ECONFIG") end
  if not s.datastore then return fail(("esx over SSH: %s: set remote_datastore"):format(s.host), "ECONFIG") end
  if not s.password and not s.key then
    return fail(("esx over SSH: %s: set remote_password or remote_private_key_file"):format(s.host), "ECONFIG")
  end
  -- a known_hosts path (not a fingerprint, not accept-new): note whether
  -- the host is in it yet, to say so loudly when its key is first trusted
  local kh = s.host_key and s.host_key ~= "accept-new" and not s.host_key:match("^SHA256:") and s.host_key
  local known
  if kh then
    local ok, merr = fs.mkdir(fs.dirname(kh), 448) -- 0700
    if not ok then return fail(("esx over SSH: %s: known hosts: %s"):format(s.host, merr), "ECONFIG") end
    local name = s.port == 22 and s.host or ("[%s]:%d"):format(s.host, s.port)
    for line in (fs.read(kh) or ""):gmatch("[^\n]+") do
      if line:sub(1, #name + 1) == name .. " " then known = true break end
    end
  end
  local sess, err, code = ssh.connect({ host = s.host, port = s.port, user = s.user, password = s.password,
    key = s.key, host_key = s.host_key, timeout = 30 })
  if not sess then
    if code == "SSH_HOSTKEY" then
      err = err .. (kh and "; if the host was reinstalled, check the new fingerprint on its console and set "
        .. "remote_host_key to it" or "; check the fingerprint on the host's console and set remote_host_key")
    end
    return fail(("esx over SSH: %s@%s:%d: %s"):format(s.user, s.host, s.port, err), code)
  end
  if kh and not known then
    log.warn("esx over SSH: %s:%d is a new host: trusting its host key %s on first use (saved in %s); "
      .. "a different key will be refused. To pin it, set remote_host_key=%s", s.host, s.port,
      sess.host_key_fingerprint, kh, sess.host_key_fingerprint)
  end
  log.info("esx over SSH: connected to %s@%s:%d (%s)", s.user, s.host, s.port, sess.host_key_fingerprint or "")
  return setmetatable({ s = s, session = sess, host = s.host,
    volume = "/vmfs/volumes/" .. s.datastore }, Remote)
end

--- Runs argv (a list, quoted here) or a command line on the host. Returns
--- stdout, or nil and "<host>: `<command>` failed (exit N): <stderr>".
---@param cmd string|string[]
---@param opts? {ok_codes?: table<integer, boolean>, timeout?: number}
function Remote:run(cmd, opts)
  opts = opts or {}
  local line = type(cmd) == "table" and text.shell_join(cmd) or cmd
  log.debug("esx %s: %s", self.host, line)
  local r, err, code = self.session:exec(line, { timeout = opts.timeout or 300 })
  if not r then return fail(("%s: `%s`: %s"):format(self.host, line, err), code) end
  if r.code ~= 0 and not (opts.ok_codes and opts.ok_codes[r.code]) then
    local why = (r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", "")
    return fail(("%s: `%s` failed (exit %d)%s"):format(self.host, line, r.code, why ~= "" and (": " .. why) or ""),
      "EESXCMD")
  end
  return r.stdout, r
end

function Remote:put(local_path, remote_path, opts)
  local r, err, code = self.session:put(local_path, remote_path, opts)
  if not r then return fail(("%s: upload %s to %s: %s"):format(self.host, local_path, remote_path, err), code) end
  return r
end

function Remote:get(remote_path, local_path, opts)
  local r, err, code = self.session:get(remote_path, local_path, opts)
  if not r then return fail(("%s: download %s: %s"):format(self.host, remote_path, err), code) end
  return r
end

--- Opens a remote file as a stream (capil.sys.ssh's session:stream): its
--- bytes come through a pipe while a consumer reads them.
function Remote:stream(remote_path)
  local st, err, code = self.session:stream(remote_path)
  if not st then return fail(("%s: download %s: %s"):format(self.host, remote_path, err), code) end
  return st
end

function Remote:close() self.session:close() end

--- Puts the ISO in `<volume>/<cache_dir>/<checksum>.iso` unless a file of
--- the same size with a matching `.sha256` marker is there. Returns the
--- remote path and "cached" or "uploaded".
function Remote:upload_iso(local_path, checksum, cache_dir)
  local dir = ("%s/%s"):format(self.volume, cache_dir)
  local path = ("%s/%s.iso"):format(dir, checksum)
  local marker = path .. ".sha256"
  local st = fs.stat(local_path)
  if not st then return fail(("ISO %s: not found"):format(local_path), "ENOENT") end
  local out = self:run(("cat %s 2>/dev/null; stat -c %%s %s 2>/dev/null; true"):format(text.shell_quote(marker),
    text.shell_quote(path)))
  if out then
    local sum, size = out:match("^%s*(%x+)%s+(%d+)")
    if sum == checksum and tonumber(size) == st.size then
      log.info("%s: %s is already on the datastore (size and checksum marker match); not uploading", self.host, path)
      return path, "cached"
    end
  end
  local ok, err, code = self:run({ "mkdir", "-p", dir })
  if not ok then return nil, err, code end
  log.info("%s: uploading %s to %s", self.host, local_path, path)
  ok, err, code = self:put(local_path, path, { progress = true })
  if not ok then return nil, err, code end
  local tmp, terr = fs.tempdir({ prefix = "esx-marker" })
  if not tmp then return fail(("checksum marker: %s"):format(terr), "EIO") end
  local wok, werr = fs.write(tmp .. "/m", checksum .. "\n")
  if wok then
    ok, err, code = self:put(tmp .. "/m", marker)
  else
    ok, err, code = fail(("checksum marker: %s"):format(werr), "EIO")
  end
  fs.remove(tmp, { recursive = true })
  if not ok then return nil, err, code end
  return path, "uploaded"
end

-- ====================================================================== --
-- The .vmx                                                               --
-- ====================================================================== --

local SCSI = { pvscsi = "pvscsi", lsilogic = "lsilogic", ["lsilogic-sas"] = "lsisas1068" }
local NIC = { vmxnet3 = "vmxnet3", e1000 = "e1000", e1000e = "e1000e" }

--- The text of a build VM's .vmx (a small writer of our own, kept apart so
--- a shared one can replace it). opts: name, guest_os, cpus,
--- cores_per_socket, memory_mb, vmx_version, firmware, disk_controller,
--- network_card, network, disk (file name), isos (datastore paths, on
--- SATA from sata0:0), seed_iso (the installer CD: on cd_bus "sata" the
--- next SATA unit, else ide1:0), vnc ({port, password}), extra (key = value).
---@param opts table
---@return string
function M.vmx(opts)
  local keys, values = {}, {}
  local function set(k, v)
    if v == nil then return end
    if values[k] == nil then keys[#keys + 1] = k end
    values[k] = tostring(v)
  end
  set(".encoding", "UTF-8")
  set("config.version", "8")
  set("virtualHW.version", opts.vmx_version or 13)
  set("displayName", opts.name)
  set("guestOS", opts.guest_os or "other-64")
  set("numvcpus", opts.cpus or 1)
  if opts.cores_per_socket then set("cpuid.coresPerSocket", opts.cores_per_socket) end
  set("memSize", opts.memory_mb or 1024)
  if opts.firmware == "efi" then set("firmware", "efi") end
  set("scsi0.present", "TRUE")
  set("scsi0.virtualDev", SCSI[opts.disk_controller] or "pvscsi")
  set("scsi0:0.present", "TRUE")
  set("scsi0:0.fileName", opts.disk)
  set("ethernet0.present", "TRUE")
  set("ethernet0.virtualDev", NIC[opts.network_card] or "vmxnet3")
  set("ethernet0.networkName", nonempty(opts.network) or "VM Network")
  set("ethernet0.addressType", "generated")
  set("sata0.present", "TRUE")
  local cds = {}
  for i, iso in ipairs(opts.isos or {}) do cds[#cds + 1] = { ("sata0:%d"):format(i - 1), iso } end
  if opts.seed_iso then
    cds[#cds + 1] = { opts.cd_bus == "sata" and ("sata0:%d"):format(#cds) or "ide1:0", opts.seed_iso }
  end
  for _, cd in ipairs(cds) do
    set(cd[1] .. ".present", "TRUE")
    set(cd[1] .. ".deviceType", "cdrom-image")
    set(cd[1] .. ".fileName", cd[2])
  end
  set("tools.syncTime", "TRUE")
  if opts.vnc then
    set("RemoteDisplay.vnc.enabled", "TRUE")
    set("RemoteDisplay.vnc.port", opts.vnc.port)
    set("RemoteDisplay.vnc.password", opts.vnc.password)
  end
  local extra = {}
  for k in pairs(opts.extra or {}) do extra[#extra + 1] = k end
  table.sort(extra)
  for _, k in ipairs(extra) do set(k, opts.extra[k]) end
  local lines = {}
  for _, k in ipairs(keys) do
    lines[#lines + 1] = ('%s = "%s"'):format(k, (values[k]:gsub('[|"]', { ["|"] = "|7C", ['"'] = "|22" })))
  end
  return table.concat(lines, "\n") .. "\n"
end

-- ====================================================================== --
-- Steps                                                                  --
-- ====================================================================== --

--- Connects and puts the ISO (and the installer CD) on the datastore:
--- ctx.state.remote (the session), .remote_iso, .remote_cd.
---@param ctx capil.BuildContext
---@param step table the plan's upload_media step (checksum, cache_dir)
---@return true|nil, string?, string?
function M.upload_media(ctx, step)
  local st = ctx.state
  local s = M.connection(ctx.settings, ctx.secret)
  local r, err, code = M.connect(s)
  if not r then return nil, err, code end
  st.remote = r
  cleanup.push("SSH session to " .. s.host, function() r:close() end)
  -- the installer server's address as the host's network sees this machine:
  -- the client end of this SSH connection (unless http_ip was set)
  if ctx.http and ctx.http.auto then
    local out = r:run("echo $SSH_CONNECTION")
    local ip = out and out:match("^(%S+)")
    if ip then
      ctx.http.ip = ip
      log.info("installer files: the guest uses http://%s:%d/ (this machine's address towards %s)", ip,
        ctx.http.port, s.host)
    end
  end
  local cache_dir = step.cache_dir or s.cache_dir
  local path, how
  path, how, code = r:upload_iso(ctx.media.iso, step.checksum, cache_dir)
  if not path then return nil, how, code end
  st.remote_iso = path
  ctx.report.iso_upload = how
  if ctx.media.cd_iso then
    local name = ("%s/%s/%s-%d-cd.iso"):format(r.volume, cache_dir, ctx.name, math.random(1, 1e9))
    local ok, uerr, ucode = r:put(ctx.media.cd_iso, name)
    if not ok then return nil, uerr, ucode end
    st.remote_cd = name
    cleanup.push(("%s: %s"):format(s.host, name), function() r:run({ "rm", "-f", name }) end)
  end
  return true
end

-- The first port in 5900-5999 nothing on the host uses.
local function free_vnc_port(r)
  local out = r:run({ "esxcli", "--formatter", "csv", "network", "ip", "connection", "list" })
  local used = {}
  for port in (out or ""):gmatch("[%d%.:]+:(59%d%d),") do used[tonumber(port)] = true end
  for p = 5900, 5999 do
    if not used[p] then return p end
  end
  return nil
end

-- Writes the .vmx, makes the disk, registers the VM and opens the VNC ports.
local function make(vm, r, step, ctx)
  local ok, err, code = r:run({ "mkdir", "-p", vm.dir })
  if not ok then return nil, err, code end
  local vmx_text = M.vmx({ name = vm.name, guest_os = step.guest_os, cpus = step.cpus,
    cores_per_socket = step.cores_per_socket,
    memory_mb = step.memory_mb, vmx_version = step.vmx_version, firmware = step.firmware,
    disk_controller = step.disk_controller, network_card = step.network_card, network = step.network,
    disk = vm.name .. ".vmdk", isos = { ctx.state.remote_iso }, seed_iso = ctx.state.remote_cd,
    cd_bus = step.cd_bus, vnc = vm.vnc,
    extra = ctx.settings.configuration_parameters })
  local tmp, terr = fs.tempdir({ prefix = "esx-vmx" })
  if not tmp then return fail(("%s: .vmx: %s"):format(vm.name, terr), "EIO") end
  local wok, werr = fs.write(tmp .. "/" .. vm.name .. ".vmx", vmx_text, { mode = 384 })
  if wok then
    ok, err, code = r:put(tmp .. "/" .. vm.name .. ".vmx", vm.vmx)
  else
    ok, err, code = fail(("%s: .vmx: %s"):format(vm.name, werr), "EIO")
  end
  fs.remove(tmp, { recursive = true })
  if not ok then return nil, err, code end
  ok, err, code = r:run({ "vmkfstools", "-c", ("%dM"):format(step.disk_mb), "-d",
    step.disk_thin == false and "zeroedthick" or "thin", "-a", SCSI[step.disk_controller] or "pvscsi",
    ("%s/%s.vmdk"):format(vm.dir, vm.name) })
  if not ok then return nil, err, code end
  local out
  out, err, code = r:run({ "vim-cmd", "solo/registervm", vm.vmx })
  if not out then return nil, err, code end
  vm.vmid = out:match("^%s*(%d+)%s*$")
  if not vm.vmid then
    return fail(("%s: `vim-cmd solo/registervm %s` printed no vmid: %s"):format(r.host, vm.vmx, out), "EESXCMD")
  end
  ok, err, code = r:run({ "esxcli", "network", "firewall", "ruleset", "set", "--ruleset-id", "gdbserver",
    "--enabled", "true" })
  if not ok then return nil, err, code end
  return true
end

--- Creates and registers the build VM (the plan's create_vm step) with the
--- SSH session and the media upload_media left in ctx.state; sets
--- ctx.state.vm.
---@param ctx capil.BuildContext
---@param step table the plan's create_vm step
---@return table|nil vm, string? err, string? code
function M.create(ctx, step)
  local r = ctx.state.remote
  if not r then return fail("esx over SSH: create_vm before upload_media (no session)", "ESTEP") end
  local name = step.vm_name
  local dir = ("%s/%s"):format(r.volume, name)
  local vmx_path = ("%s/%s.vmx"):format(dir, name)
  local vnc = { port = r.s.vnc_port or free_vnc_port(r), password = ("%08x"):format(math.random(0, 0x7fffffff)) }
  if not vnc.port then return fail(("%s: no free VNC port in 5900-5999"):format(r.host), "EESXCMD") end
  log.secret(vnc.password)
  -- the export tries the vSphere API unless the host refused it
  local vm = setmetatable({ r = r, name = name, dir = dir, vmx = vmx_path, vnc = vnc, s = r.s,
    restricted = ctx.state.restricted, api_settings = ctx.settings, secret = ctx.secret }, VM)
  vm.hint = ("the VM %s on %s: check its console"):format(name, r.host)
  -- the cleanup goes first: a half-made directory is removed as well
  vm.cleanup = cleanup.push(("VM %s on %s"):format(name, r.host), function() vm:destroy() end)
  local ok, err, code = make(vm, r, step, ctx)
  if not ok then
    -- undo what was made (the directory, a registration) at once
    vm.cleanup:run()
    return nil, err, code
  end
  log.info("%s: registered on %s as vmid %s (VNC port %d)", name, r.host, vm.vmid, vnc.port)
  ctx.state.vm = vm
  return vm
end

--- Keeps the VM (keep_vm) or destroys it; templates need the vSphere API.
---@param ctx capil.BuildContext
---@param step table the plan's finalize_vm step
---@return true|nil, string?, string?
function M.finalize_vm(ctx, step)
  local vm = ctx.state.vm
  if not vm then return fail("esx over SSH: finalize_vm before create_vm (no VM)", "ESTEP") end
  if step.convert_to_template then
    log.warn("%s: convert_to_template needs the vSphere API, which %s refuses; the VM stays a VM", vm.name, vm.r.host)
  end
  if step.keep_vm then
    if vm.cleanup then vm.cleanup:cancel() vm.cleanup = nil end
    log.info("%s: kept on %s (vmid %s)", vm.name, vm.r.host, vm.vmid)
    return true
  end
  return vm:destroy()
end

-- ====================================================================== --
-- The VM                                                                 --
-- ====================================================================== --

function VM:vimcmd(verb, ...)
  return self.r:run({ "vim-cmd", "vmsvc/" .. verb, self.vmid, ... })
end

function VM:start()
  local ok, err, code = self:vimcmd("power.on")
  if not ok then return nil, err, code end
  log.info("%s: powered on", self.name)
  return true
end

--- "on", "off" (or "suspended"), or nil and the error.
function VM:power()
  local out, err, code = self:vimcmd("power.getstate")
  if not out then return nil, err, code end
  if out:find("Powered on", 1, true) then return "on" end
  if out:find("Suspended", 1, true) then return "suspended" end
  return "off"
end

function VM:running() return self:power() == "on" end

function VM:alive()
  local state, err = self:power()
  if state == "on" then return true end
  if not state then return false, err end
  return false, "the VM is powered " .. state
end

--- Types capil.build.bootcmd events over VNC; returns true, nil, nil, 1.
function VM:type_keys(events, interval)
  local vnc = require("capil.sys.vnc")
  local s, err, code = vnc.connect({ host = self.r.host, port = self.vnc.port, password = self.vnc.password,
    timeout = 60 })
  if not s then return fail(("%s: VNC on %s:%d: %s"):format(self.name, self.r.host, self.vnc.port, err), code) end
  local ok, terr, tcode = s:type(events, interval)
  s:close()
  if not ok then return fail(("%s: typing over VNC: %s"):format(self.name, terr), tcode) end
  return true, nil, nil, 1
end

--- The guest's first IPv4 address in `vim-cmd vmsvc/get.guest` output.
---@param out string
---@return string|nil
function M.guest_ip(out)
  for ip in out:gmatch('ipAddress = "([^"]+)"') do
    if ip:match("^%d+%.%d+%.%d+%.%d+$") and not ip:match("^169%.254%.") and not ip:match("^127%.0%.0%.0") then
      return ip
    end
  end
  return nil
end

--- Waits for the guest IP from VMware Tools; returns {host, port}.
function VM:ssh_address(timeout)
  local deadline = runtime.now() + timeout
  while true do
    local out, err, code = self:vimcmd("get.guest")
    if not out then return nil, err, code end
    local ip = M.guest_ip(out)
    if ip then
      log.info("%s: guest IP %s", self.name, ip)
      return { host = ip, port = self.s.ssh_port }
    end
    local alive, why = self:alive()
    if not alive then return fail(("%s: no guest IP: %s"):format(self.name, why or "?"), "EVMEXIT") end
    if runtime.now() >= deadline then
      return fail(("%s: VMware Tools reported no IP address within %g s (%s)"):format(self.name, timeout,
        self.hint), "ETIMEDOUT")
    end
    local ok, serr, scode = runtime.sleep(self.s.poll)
    if not ok then return nil, serr, scode end
  end
end

function VM:wait_exit(timeout)
  local deadline = runtime.now() + timeout
  while runtime.now() < deadline do
    if self:power() == "off" then return true end
    if not runtime.sleep(self.s.poll) then return false end
  end
  return false
end

function VM:power_off()
  local ok, err, code = self:vimcmd("power.off")
  if not ok then return nil, err, code end
  return true
end

--- The vSphere API's export (ExportVm + NFC lease, capil.vsphere.lease)
--- of a licensed host built over SSH (remote_type=ssh): hostd's moref of a
--- VM is its vmid. Returns the export result or nil and why not.
function VM:export_vim25(path, opts)
  local session = require("capil.vsphere.session")
  local vim25 = require("capil.vsphere.vim25")
  local vc, err = session.connect(self.api_settings or {}, { kind = "esx", secret = self.secret })
  if not vc then return nil, err end
  local r
  r, err = require("capil.vsphere.lease").export(vc, vim25.ref("VirtualMachine", self.vmid), self.name, path, opts)
  vc:logout()
  return r, err
end

-- The VM's disk as ESXi keeps it: the descriptor's text (read with cat)
-- and the extents it names, {kind =, base =} (a thin or thick disk on VMFS:
-- one VMFS extent, "NAME-flat.vmdk", the raw disk itself).
local function disk_extents(self)
  local desc = ("%s/%s.vmdk"):format(self.dir, self.name)
  local descriptor, err, code = self.r:run({ "cat", desc })
  if not descriptor then return nil, err, code end
  local extents = {}
  for kind, extent in descriptor:gmatch('\nRW %d+ (%u+) "([^"]+)"') do
    extents[#extents + 1] = { kind = kind, base = extent:match("[^/]+$") }
  end
  return { path = desc, extents = extents }
end

-- The remote path of the disk's one flat extent (VMFS or FLAT: the raw
-- disk, which capil's writer reads as it arrives), or nil when the disk
-- has another layout (sparse extents: qemu-img converts a download).
local function flat_extent(self, disk)
  local e = disk.extents
  if #e == 1 and (e[1].kind == "VMFS" or e[1].kind == "FLAT") then return self.dir .. "/" .. e[1].base end
  return nil
end

--- The disk for a VMDK written straight into the OVA (the export step's
--- into_ova) on a host that refuses the vSphere API (a free licence: no
--- NFC export): the flat extent streamed over SFTP into capil's writer and
--- the OVA in one pass, with no local copy of the disk. nil (the pipeline
--- exports as usual) where the API may export (VM:export tries NFC first)
--- or the disk is not one flat extent.
---@return {source: string, format: string, open: function}|nil
function VM:disk_source()
  if not self.restricted then return nil end
  local disk, err = disk_extents(self)
  if not disk then
    log.warn("%s: cannot read the disk's descriptor (%s); exporting it instead", self.name, err)
    return nil
  end
  local flat = flat_extent(self, disk)
  if not flat then return nil end
  log.info("%s: the OVA's VMDK is written from %s as it downloads (one pass, no local copy)", self.name, flat)
  return { source = ("%s:%s"):format(self.r.host, flat), format = "raw",
    open = function() return self.r:stream(flat) end }
end

--- Exports the disk to a streamOptimized vmdk at `path`: with the vSphere
--- API when the host allows it (export_vim25), else over SFTP: one VMFS or
--- FLAT extent (ESXi's thin or thick disk, "NAME-flat.vmdk") is the raw
--- disk itself, streamed into capil's VMDK writer as it downloads (one
--- pass, no local copy); anything else (sparse extents), or `disk_writer =
--- "qemu-img"`, is downloaded and converted with qemu-img.
---@param path string
---@param opts? {adapter_type?: string, hwversion?: integer, disk_writer?: "capil"|"qemu-img"}
function VM:export(path, opts)
  opts = opts or {}
  if not self.restricted then
    local r, err = self:export_vim25(path, opts)
    if r then return r end
    log.warn("%s: the vSphere export did not work (%s); downloading the disk over SFTP instead", self.name, err)
  end
  local disk, err, code = disk_extents(self)
  if not disk then return nil, err, code end
  local vmdk = require("capil.format.vmdk")
  local flat = flat_extent(self, disk)
  local hw = opts.hwversion or 15
  if flat and opts.disk_writer ~= "qemu-img" then
    log.info("%s: writing %s from %s as it downloads, with capil's VMDK writer", self.name, path, flat)
    local st
    st, err, code = self.r:stream(flat)
    if not st then return nil, err, code end
    local info, werr, wcode, broke = vmdk.from_stream(st, self.r.host .. ":" .. flat, function(src)
      return vmdk.write(src, path, { adapter_type = opts.adapter_type, hwversion = hw, progress = true })
    end)
    if broke then
      fs.remove(path)
      return fail(("%s: download %s: %s"):format(self.name, flat, werr), wcode)
    end
    if not info then return fail(("%s: writing %s: %s"):format(self.name, path, werr), wcode) end
    return { writer = "capil", sha256 = info.sha256 }
  end
  local tmp, terr = fs.tempdir({ parent = fs.dirname(path), prefix = ".esx-disk" })
  if not tmp then return fail(("%s: export: %s"):format(self.name, terr), "EIO") end
  local undo = cleanup.push("temp dir " .. tmp, function() fs.remove(tmp, { recursive = true }) end)
  local ok
  ok, err, code = self.r:get(disk.path, tmp .. "/disk.vmdk")
  if not ok then undo:run() return nil, err, code end
  for _, e in ipairs(disk.extents) do
    ok, err, code = self.r:get(self.dir .. "/" .. e.base, tmp .. "/" .. e.base, { progress = true })
    if not ok then undo:run() return nil, err, code end
  end
  local info, cerr = vmdk.convert(tmp .. "/disk.vmdk", path,
    { adapter_type = opts.adapter_type, hwversion = hw, src_format = "vmdk" })
  undo:run()
  if not info then return fail(("%s: converting %s: %s"):format(self.name, disk.path, cerr), "ETOOL") end
  return { writer = "qemu-img" }
end

--- Powers off (if on), unregisters and removes the VM directory.
function VM:destroy()
  if self.cleanup then self.cleanup:cancel() self.cleanup = nil end
  local err, code
  if self.vmid then
    if self:power() == "on" then self:power_off() end
    local ok, uerr, ucode = self:vimcmd("unregister")
    if ok then self.vmid = nil else err, code = uerr, ucode end
  end
  local ok2, err2, code2 = self.r:run({ "rm", "-rf", self.dir })
  if err then return nil, err, code end
  if not ok2 then return nil, err2, code2 end
  log.info("%s: unregistered and removed from %s", self.name, self.r.host)
  return true
end

return M
