--- capil.backends.vsphere — builds on vCenter (>= 6.5) through the vSphere
--- API, as Packer's vsphere-iso did (capil.backends.esx uses it for a
--- licensed standalone ESXi host, on `ha-datacenter`). The vSphere client
--- and what this backend shares with the esx backend and the commands live
--- in capil.vsphere.*: session (connect), inventory (placement), datastore
--- (uploads), lease (NFC export), deploy (OVA import), testvm (finding a VM,
--- cloud-init snapshots). The steps:
---
--- * upload_media: connect, resolve the inventory (datacenter, folder,
---   cluster or host, resource pool, datastore, network) and put the ISO in
---   `[datastore] <cache_dir>/<sha256>.iso` over the `/folder` endpoint,
---   streamed; skipped when the checksum marker next to it matches. Uploads
---   go to a per-build name first and are moved into place, so parallel
---   builds never see half a file. The installer CD (cd_files) follows.
--- * create_vm: one CreateVM_Task (PVSCSI or LSI Logic, thin disk, VMXNET3
---   or E1000, CD-ROMs, guest id, hardware version, CPUs, memory, firmware,
---   extraConfig), then power on. A cleanup destroys the VM on failure.
--- * boot command: PutUsbScanCodes with many key events per call; waits
---   split the batches.
--- * SSH address: the guest IP from VMware Tools (guest.net), skipping
---   link-local, APIPA and (unless ip_wait_address is IPv6) IPv6 addresses,
---   on the chosen NIC, stable for ip_settle_timeout.
--- * export: ExportVm + HttpNfcLease (capil.vsphere.lease).
--- * finalize_vm: remove the CD-ROMs, MarkAsTemplate (convert_to_template),
---   then keep the VM (image-builder's behaviour) or destroy it.
--- * image tests (`capil test`, M.test): the VM found by name or the OVA
---   deployed, cloud-init through guestinfo and snapshots, then the VM driven
---   like a build VM (power on, guest IP, power off).
---
--- Its state (the session, the inventory, the uploaded media, the VM) lives
--- in ctx.state; the esx backend sets ctx.state.kind = "esx" for its
--- messages.
local vim25 = require("capil.vsphere.vim25")
local session = require("capil.vsphere.session")
local inventory = require("capil.vsphere.inventory")
local datastore = require("capil.vsphere.datastore")
local lease = require("capil.vsphere.lease")
local deploy = require("capil.vsphere.deploy")
local testvm = require("capil.vsphere.testvm")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")
local cleanup = require("capil.sys.cleanup")
local hash = require("capil.sys.hash")
local bootcmd = require("capil.build.bootcmd")

local M = {}

M.name = "vsphere"
M.description = "vCenter >= 6.5 through the vSphere API"
M.traits = { encoder = "usb", export = "nfc", guest_id = "vsphere", remote = true, govc_env = true,
  var_file = "vsphere.json", content_library = true }

--- Key events per PutUsbScanCodes call (waits split batches as well).
M.BATCH = 64

local VM = {}
VM.__index = VM
M.VM = VM

local function fail(msg, code) return nil, msg, code or "EVSPHERE" end

-- ====================================================================== --
-- Settings                                                               --
-- ====================================================================== --

--- The settings list of the vsphere backend (`kind` "vsphere") or of the
--- esx backend (`kind` "esx": the remote_* variables win over vsphere.json's,
--- the datacenter defaults to ha-datacenter, and the SSH path's own
--- settings follow).
---@param kind "vsphere"|"esx"
---@return capil.Setting[]
function M.settings_for(kind)
  local esx = kind == "esx"
  local function paths(vs, remote)
    if esx and remote then return { remote, vs } end
    return { vs }
  end
  local list = {
    { "server", paths = paths("vsphere.server", "remote.host") },
    { "username", paths = paths("vsphere.username", "remote.username") },
    { "password", paths = paths("vsphere.password", "remote.password"), secret = true },
    { "insecure_connection", paths = { "vsphere.insecure_connection" }, default = false },
    { "thumbprint", paths = { "vsphere.thumbprint" } },
    { "ca_file", paths = { "vsphere.ca_file" } },
    { "datacenter", paths = { "vsphere.datacenter" }, default = esx and "ha-datacenter" or nil },
    { "folder", paths = { "vsphere.folder" } },
    { "cluster", paths = { "vsphere.cluster" } },
    { "host", paths = { "vsphere.host" } },
    { "resource_pool", paths = { "vsphere.resource_pool" } },
    { "datastore", paths = paths("vsphere.datastore", "remote.datastore") },
    { "network", paths = { "build.network" } },
    { "cache_dir", paths = { "vsphere.cache_dir" }, default = "capil_cache" },
    { "ip_wait_timeout", paths = { "vsphere.ip_wait_timeout" } },
    { "ip_settle_timeout", paths = { "vsphere.ip_settle_timeout" } },
    { "ip_wait_address", paths = { "vsphere.ip_wait_address" } },
    { "nic", paths = { "vsphere.nic" } },
    { "ssh_port", paths = { "ssh.port" } },
    { "configuration_parameters", paths = { "vsphere.configuration_parameters" } },
  }
  if esx then
    for _, s in ipairs({
      { "remote_type", paths = { "remote.type" } },
      { "remote_port", paths = { "remote.port" } },
      { "remote_private_key_file", paths = { "remote.private_key_file" } },
      { "remote_host_key", paths = { "remote.host_key" } },
      { "remote_vnc_port", paths = { "remote.vnc_port" } },
      { "remote_poll_interval", paths = { "remote_poll_interval" } },
    }) do list[#list + 1] = s end
  end
  return list
end

M.settings = M.settings_for("vsphere")

-- ====================================================================== --
-- Steps of their own                                                     --
-- ====================================================================== --

M.steps = {}

-- A free-licence ESXi host answers every write with RestrictedVersion.
local function explain(ctx, err, code)
  if err and err:find("RestrictedVersion", 1, true) then
    local vc = ctx.state.vc
    return nil, ("%s\n%s refuses the vSphere write API (RestrictedVersion: a free-licence ESXi?). Builds need a "
      .. "licensed host or vCenter, or --backend esx, which falls back to SSH (vim-cmd, as Packer's esx5 mode) with "
      .. "remote_username/remote_password."):format(err, vc and vc.server or "the host"), "ERESTRICTED"
  end
  return nil, err, code
end

local function upload_media(ctx, step)
  local s, st = ctx.settings, ctx.state
  local vc, err, code = session.connect(s, { kind = st.kind or M.name, secret = ctx.secret })
  if not vc then return nil, err, code end
  st.vc = vc
  -- the installer server's address as the hypervisor's network sees this
  -- machine: our end of the connection to it (unless http_ip was set)
  if ctx.http and ctx.http.auto and vc.local_ip then
    ctx.http.ip = vc.local_ip
    log.info("installer files: the guest uses http://%s:%d/ (this machine's address towards %s)", vc.local_ip,
      ctx.http.port, vc.server)
  end
  local inv
  inv, err, code = inventory.resolve(vc, s, { vars = session.placement_vars(st.kind or M.name) })
  if not inv then return nil, err, code end
  st.inv = inv
  local cache_dir = step.cache_dir or s.cache_dir
  local iso, how
  iso, how, code = datastore.upload_iso(vc, inv, ctx.media.iso, step.checksum, cache_dir)
  if not iso then return nil, how, code end
  st.remote_iso = iso
  ctx.report.iso_upload = how
  if ctx.media.cd_iso then
    local name = ("%s/%s-%d-cd.iso"):format(cache_dir, ctx.name, math.random(1, 1e9))
    local ok, uerr, ucode = datastore.upload(vc, inv, ctx.media.cd_iso, name)
    if not ok then return nil, uerr, ucode end
    st.remote_cd = datastore.path(inv, name)
    cleanup.push("datastore file " .. st.remote_cd, function() datastore.delete(vc, inv, name) end)
  end
  return true
end

--- Connects, resolves the placement and puts the ISO (and the installer
--- CD) on the datastore: ctx.state.vc, .inv, .remote_iso, .remote_cd.
---@param ctx capil.BuildContext
---@param step table the plan's upload_media step (checksum, cache_dir)
---@return true|nil, string?, string?
function M.steps.upload_media(ctx, step)
  local ok, err, code = upload_media(ctx, step)
  if ok then return ok end
  return explain(ctx, err, code)
end

-- The finalize step's content library destination: the item made from the
-- VM (capil.vsphere.library.create_from_vm), recorded in the report.
local function to_library(ctx, vm, dest)
  local c, err, code = session.rest(ctx.settings, { kind = M.name, secret = ctx.secret })
  if not c then return nil, err, code end
  log.info("%s: making item %s (%s) of content library %s", vm.name, dest.item, dest.type, dest.library)
  local res
  res, err, code = require("capil.vsphere.library").create_from_vm(c, vm.ref.value, { library = dest.library,
    item = dest.item, type = dest.type, inv = ctx.state.inv,
    description = ("%s built by capil"):format(ctx.name or vm.name) })
  c:logout()
  if not res then return nil, ("%s: %s"):format(vm.name, err), code end
  ctx.report.library = { library = dest.library, library_id = res.library_id, item = dest.item,
    item_id = res.item_id, type = res.type, content_version = res.content_version, updated = res.updated }
  log.info("%s: content library %s, item %s (%s, %s) %s", vm.name, dest.library, dest.item, res.item_id, res.type,
    res.updated and "updated" or "created")
  return true
end

--- Removes the CD-ROMs, makes the content library item (content_library:
--- an OVF package or a VM template of the VM), marks the VM as a template
--- (convert_to_template), then keeps it (keep_vm) or destroys it.
---@param ctx capil.BuildContext
---@param step table the plan's finalize_vm step
---@return true|nil, string?, string?
function M.steps.finalize_vm(ctx, step)
  local vm = ctx.state.vm
  if not vm then return fail("vsphere: finalize_vm before create_vm (no VM)", "ESTEP") end
  local ok, err, code = vm:remove_cdroms()
  if not ok then return nil, err, code end
  if step.content_library then
    ok, err, code = to_library(ctx, vm, step.content_library)
    if not ok then return nil, err, code end
  end
  if step.convert_to_template then
    local _, terr, tcode = vm.vc:call("MarkAsTemplate", vm.ref, {})
    if terr then return nil, ("%s: MarkAsTemplate: %s"):format(vm.name, terr), tcode end
    log.info("%s: marked as a template", vm.name)
  end
  if step.keep_vm then
    if vm.cleanup then vm.cleanup:cancel() vm.cleanup = nil end
    log.info("%s: kept on %s (%s)", vm.name, vm.vc.server, tostring(vm.ref))
  else
    ok, err, code = vm:destroy()
    if not ok then return nil, err, code end
  end
  return true
end

-- ====================================================================== --
-- Preflight                                                              --
-- ====================================================================== --

-- The preflight of a content_library destination (the finalize step's):
-- the library exists, and a vmtx item's name is free.
local function library_preflight(c, s, dest)
  local rest, err = session.rest(s, { kind = M.name, secret = c.secret })
  if not rest then
    c:fail("content_library %s: %s", dest.library, tostring(err))
    return
  end
  local library = require("capil.vsphere.library")
  local lib, lerr = library.find_library(rest, dest.library)
  if lerr then
    c:fail("content_library: %s", lerr)
  elseif not lib then
    c:fail("content_library %s: no such library on %s: create it first (capil publish OVA --library %s "
      .. "--create-library, or the vSphere client), or fix content_library", dest.library, rest.base, dest.library)
  elseif dest.type == "vmtx" then
    local id = library.find_item(rest, lib, dest.item)
    if id then
      c:fail("content_library %s already has an item %s (%s): a vmtx template is not replaced; delete it or set "
        .. "content_library_item", dest.library, dest.item, id)
    end
  end
  rest:logout()
end

--- The preflight of the vsphere backend (`kind` "vsphere") or the esx
--- backend ("esx"): the server, user and password set (every missing one
--- named by its variable), then a session (connect, TLS, login) and the
--- whole placement resolved (datacenter, folder, cluster or host, resource
--- pool, datastore, network; every one that is wrong listed), then logout;
--- with a content_library destination, a REST session finds the library
--- (and, for a vmtx item, that its name is free). Nothing is created. The esx backend over SSH (remote_type=ssh) checks
--- the settings only.
---@param kind "vsphere"|"esx"
---@return fun(c: capil.Preflight)
function M.preflight_for(kind)
  return function(c)
    local s = c.settings
    local missing = {}
    for _, name in ipairs({ "server", "username" }) do
      if s[name] == nil or s[name] == "" then missing[#missing + 1] = session.setting_var(kind, name) end
    end
    if not session.password(s, c.secret) then missing[#missing + 1] = session.setting_var(kind, "password") end
    if #missing > 0 then
      c:fail("%s: %s not set (in a var file, with --var, or GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD)", kind,
        table.concat(missing, ", "))
      return
    end
    if kind == "esx" and s.remote_type == "ssh" then
      c:note("esx: remote_type=ssh: %s is reached over SSH when the build starts (not checked before)", s.server)
      return
    end
    local vc, err = session.connect(s, { kind = kind, secret = c.secret })
    if not vc then
      c:fail("%s: %s", kind, tostring(err))
      return
    end
    local inv, ierr, _, problems = inventory.resolve(vc, s, { vars = session.placement_vars(kind) })
    if inv then
      c:note("%s: %s as %s: datacenter %s, datastore %s, network %s", kind, s.server, s.username, inv.dc_name,
        inv.ds_name, inv.network.name)
    else
      for _, p in ipairs(problems or { ierr }) do c:fail("%s: %s", kind, tostring(p)) end
    end
    if vc.logout then pcall(vc.logout, vc) end
    for _, st in ipairs(c.plan and c.plan.steps or {}) do
      if st.content_library then library_preflight(c, s, st.content_library) end
    end
  end
end

M.preflight = M.preflight_for("vsphere")

-- ====================================================================== --
-- The VM                                                                 --
-- ====================================================================== --

local CONTROLLER = { pvscsi = "ParaVirtualSCSIController", lsilogic = "VirtualLsiLogicController",
  ["lsilogic-sas"] = "VirtualLsiLogicSASController" }
local NIC = { vmxnet3 = "VirtualVmxnet3", e1000 = "VirtualE1000", e1000e = "VirtualE1000e" }

local function connectable()
  return vim25.obj("VirtualDeviceConnectInfo", { startConnected = true, allowGuestControl = true, connected = true })
end

-- The VirtualMachineConfigSpec of a build VM: the install ISO on the
-- default IDE controller (key 200), the seed CD (seed_path) beside it, or
-- on a VirtualAHCIController of its own when the step's cd_bus is "sata".
local function config_spec(step, inv, iso_paths, extra, seed_path)
  local devices = {}
  local function add(dev, file_op)
    devices[#devices + 1] = vim25.obj("VirtualDeviceConfigSpec", { operation = "add", fileOperation = file_op,
      device = dev })
  end
  add(vim25.obj(CONTROLLER[step.disk_controller] or CONTROLLER.pvscsi,
    { key = -100, busNumber = 0, sharedBus = "noSharing" }))
  add(vim25.obj("VirtualDisk", { key = -101, controllerKey = -100, unitNumber = 0, capacityInKB = step.disk_mb * 1024,
    backing = vim25.obj("VirtualDiskFlatVer2BackingInfo", { fileName = "", diskMode = "persistent",
      thinProvisioned = step.disk_thin ~= false }) }), "create")
  add(vim25.obj(NIC[step.network_card] or NIC.vmxnet3, { key = -102, backing = inv.network.backing,
    connectable = connectable(), addressType = "generated" }))
  local cds = {}
  for i, iso in ipairs(iso_paths) do cds[#cds + 1] = { iso = iso, controller = 200, unit = i - 1 } end
  if seed_path then
    if step.cd_bus == "sata" then
      add(vim25.obj("VirtualAHCIController", { key = -110, busNumber = 0 }))
      cds[#cds + 1] = { iso = seed_path, controller = -110, unit = 0 }
    else
      cds[#cds + 1] = { iso = seed_path, controller = 200, unit = #cds }
    end
  end
  for i, cd in ipairs(cds) do
    add(vim25.obj("VirtualCdrom", { key = -102 - i, controllerKey = cd.controller, unitNumber = cd.unit,
      backing = vim25.obj("VirtualCdromIsoBackingInfo", { fileName = cd.iso }), connectable = connectable() }))
  end
  local options = {}
  local keys = {}
  for k in pairs(extra or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do options[#options + 1] = vim25.obj("OptionValue", { key = k, value = tostring(extra[k]) }) end
  return vim25.obj("VirtualMachineConfigSpec", {
    name = step.vm_name, guestId = step.guest_os, version = step.vmx_version and ("vmx-%02d"):format(step.vmx_version),
    numCPUs = step.cpus, numCoresPerSocket = step.cores_per_socket, memoryMB = step.memory_mb,
    firmware = step.firmware, files = vim25.obj("VirtualMachineFileInfo", { vmPathName = ("[%s]"):format(inv.ds_name) }),
    deviceChange = devices, extraConfig = #options > 0 and options or nil,
  })
end

--- A VM object for the VM `ref` (methods of capil.VM: start, ssh_address,
--- alive, power_off, export, destroy, keepalive, ...). `s` holds the guest
--- IP wait (ip_wait_timeout, ip_settle_timeout in seconds, ip_wait_address,
--- nic) and ssh_port; missing ones take the schema's defaults.
---@param vc table a capil.vsphere.vim25 session
---@param inv table|nil from capil.vsphere.inventory.resolve
---@param ref capil.vsphere.vim25.Ref
---@param name string
---@param s? table settings
---@return table vm
function M.new_vm(vc, inv, ref, name, s)
  s = s or {}
  local vm = setmetatable({ vc = vc, inv = inv, ref = ref, name = name,
    settings = {
      ip_wait_timeout = s.ip_wait_timeout or 1800,
      ip_settle = s.ip_settle_timeout or 5,
      ip_cidr = s.ip_wait_address or "0.0.0.0/0", nic = s.nic or 0, ssh_port = s.ssh_port or 22,
    } }, VM)
  vm.hint = ("the VM %s (%s) on %s: check its console"):format(name, tostring(ref), vc.server)
  return vm
end

--- Creates the build VM (the plan's create_vm step) with the session, the
--- inventory and the media upload_media left in ctx.state; a cleanup
--- destroys it unless finalize_vm keeps it. Sets ctx.state.vm.
---@param ctx capil.BuildContext
---@param step table the plan's create_vm step
---@return table|nil vm, string? err, string? code
function M.create(ctx, step)
  local st = ctx.state
  local vc, inv = st.vc, st.inv
  if not vc then return fail("vsphere: create_vm before upload_media (no session)", "ESTEP") end
  local spec = config_spec(step, inv, { st.remote_iso }, ctx.settings.configuration_parameters, st.remote_cd)
  -- The VM's instance UUID is chosen here, and the cleanup is registered
  -- before the call: when the reply never comes (Ctrl-C, a dropped
  -- connection, a timeout) the server may still make the VM, and the
  -- cleanup finds it by that UUID (never by name: a VM of that name may be
  -- someone else's) and destroys it.
  local uuid = hash.uuid()
  spec.instanceUuid = uuid
  local task, vm
  local where = ("VM %s (instance UUID %s) on %s"):format(step.vm_name, uuid, vc.server)
  local guard = cleanup.push(where, function()
    local made = vm
    if not made then
      local ref = task and vc:task(task, 120)
      -- a request the server is still working on shows its VM a moment later
      for attempt = 1, 3 do
        if vim25.is_ref(ref) then break end
        local found, ferr = vc:call("FindByUuid", vc.content.searchIndex, { datacenter = inv.datacenter,
          uuid = uuid, vmSearch = true, instanceUuid = true })
        if ferr then error(("looking for it: %s"):format(ferr), 0) end
        ref = found
        if not vim25.is_ref(ref) and attempt < 3 then runtime.sleep(2) end
      end
      if not vim25.is_ref(ref) then
        log.warn("%s: CreateVM_Task's reply never came and %s has no VM with instance UUID %s: if one appears, "
          .. "remove it", step.vm_name, vc.server, uuid)
        return
      end
      made = M.new_vm(vc, inv, ref, step.vm_name, ctx.settings)
    end
    local ok, err = made:destroy()
    if not ok then error(err, 0) end
  end)
  log.info("%s: creating the VM in %s (%d CPUs, %d MiB, %d MiB disk)", step.vm_name, inv.dc_name, step.cpus,
    step.memory_mb, step.disk_mb)
  local err, code, fault
  task, err, code, fault = vc:call("CreateVM_Task", inv.folder, { config = spec, pool = inv.pool, host = inv.host })
  local ref
  if task then ref, err, code, fault = vc:task(task, 600) end
  if not ref then
    -- a fault is the server's answer: nothing was made
    if fault then guard:cancel() end
    return explain(ctx, ("%s: CreateVM_Task: %s"):format(step.vm_name, err), code)
  end
  vm = M.new_vm(vc, inv, ref, step.vm_name, ctx.settings)
  guard.what = ("VM %s (%s) on %s"):format(vm.name, tostring(ref), vc.server)
  vm.cleanup = guard
  st.vm = vm
  log.info("%s: created %s", vm.name, tostring(ref))
  return vm
end

--- A VM object for an existing VM (capil test, capil ssh): M.new_vm, and
--- nothing destroys it unless its destroy() is called.
---@param vc table a capil.vsphere.vim25 session
---@param inv table from capil.vsphere.inventory.resolve
---@param s? table settings (M.settings' values)
---@param ref capil.vsphere.vim25.Ref
---@param name string
---@return table vm
function M.attach(vc, inv, s, ref, name)
  if not vim25.is_ref(ref) then error("vsphere.attach: ref must be a Ref", 2) end
  if type(name) ~= "string" then error("vsphere.attach: name must be a string", 2) end
  local vm = M.new_vm(vc, inv, ref, name, s)
  vm.attached = true
  return vm
end

--- The power state: "poweredOn", "poweredOff" or "suspended".
---@return string|nil state, string? err, string? code
function VM:power()
  local p, err, code = self.vc:props(self.ref, { "runtime.powerState" })
  if not p then return nil, err, code end
  return p["runtime.powerState"]
end

--- Powers the VM on.
---@return true|nil, string?, string?
function VM:start()
  local t, err, code = self.vc:call("PowerOnVM_Task", self.ref, {})
  if t then err, code = select(2, self.vc:task(t, 600)) end
  if err then return nil, ("%s: PowerOnVM_Task: %s"):format(self.name, err), code end
  log.info("%s: powered on", self.name)
  return true
end

--- Keeps the vSphere session alive during long guest work (GetCurrentTime
--- once it has been idle for the keep-alive interval).
function VM:keepalive()
  return self.vc:keepalive()
end

---@return boolean
function VM:running()
  return self:power() == "poweredOn"
end

--- Whether the VM runs; false and why once it has stopped.
---@return boolean, string?
function VM:alive()
  local state, err = self:power()
  if state == "poweredOn" then return true end
  if not state then return false, err end
  return false, "the VM is " .. state
end

--- Types events with PutUsbScanCodes, M.BATCH key events per call. Returns
--- true, nil, nil, the number of calls.
---@param events table capil.build.bootcmd events
---@param interval? number seconds between calls
---@return true|nil, string?, string?, integer?
function VM:type_keys(events, interval)
  local calls = 0
  for _, b in ipairs(bootcmd.to_usb(events)) do
    if b.wait then
      local ok, err, code = runtime.sleep(b.wait)
      if not ok then return nil, err, code end
    else
      for i = 1, #b.codes, M.BATCH do
        local list = {}
        for j = i, math.min(#b.codes, i + M.BATCH - 1) do
          local c = b.codes[j]
          local mods = {}
          for name in pairs(c.modifier_names) do mods[name] = true end
          list[#list + 1] = vim25.obj("UsbScanCodeSpecKeyEvent", { usbHidCode = c.usbHidCode,
            modifiers = next(mods) and vim25.obj("UsbScanCodeSpecModifierType", mods) or nil })
        end
        local spec = vim25.obj("UsbScanCodeSpec", { keyEvents = list })
        local n, err, code = self.vc:call("PutUsbScanCodes", self.ref, { spec = spec })
        if not n then
          -- one retry after a pause: a console busy with the boot menu
          runtime.sleep(math.max(interval or 0, 1))
          n, err, code = self.vc:call("PutUsbScanCodes", self.ref, { spec = spec })
          calls = calls + 1
        end
        calls = calls + 1
        if not n then return nil, ("%s: PutUsbScanCodes: %s"):format(self.name, err), code end
        if interval and interval > 0 then runtime.sleep(interval) end
      end
    end
  end
  log.info("%s: boot command typed in %d PutUsbScanCodes calls", self.name, calls)
  return true, nil, nil, calls
end

-- ---------------------------------------------------------------------- --
-- Guest IP                                                               --
-- ---------------------------------------------------------------------- --

local function ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
  return ((a * 256 + b) * 256 + c) * 256 + d
end

--- Whether `ip` is a usable guest address inside `cidr` (default
--- 0.0.0.0/0): never link-local IPv6 or APIPA; IPv6 only when cidr is IPv6.
---@param ip string
---@param cidr? string
---@return boolean
function M.ip_usable(ip, cidr)
  cidr = cidr or "0.0.0.0/0"
  local net, bits = cidr:match("^(.-)/(%d+)$")
  net, bits = net or cidr, tonumber(bits)
  if ip:find(":", 1, true) then
    if not net:find(":", 1, true) then return false end
    local lower = ip:lower()
    if lower:match("^fe[89ab]") then return false end -- fe80::/10
    if bits == 0 then return true end
    -- prefixes on whole groups are enough for the usual /64, /48
    local want = net:lower():gsub("::$", ""):gsub(":$", "")
    return lower:sub(1, #want) == want
  end
  local n = ipv4(ip)
  if not n or net:find(":", 1, true) then return false end
  if n >> 16 == (169 << 8 | 254) then return false end -- 169.254.0.0/16
  local base = ipv4(net)
  if not base then return false end
  bits = bits or 32
  if bits == 0 then return true end
  local mask = (0xffffffff << (32 - bits)) & 0xffffffff
  return (n & mask) == (base & mask)
end

--- The address of the chosen NIC from guest.net (or guest.ipAddress).
---@param net table|nil guest.net
---@param primary string|nil guest.ipAddress
---@param cidr? string
---@param nic? integer 0 = the first
---@return string|nil
function M.pick_ip(net, primary, cidr, nic)
  local list = vim25.list(net)
  local card = list[(nic or 0) + 1]
  if card then
    for _, ip in ipairs(vim25.list(card.ipAddress)) do
      if M.ip_usable(ip, cidr) then return ip end
    end
    return nil
  end
  if primary and M.ip_usable(primary, cidr) then return primary end
end

--- Waits for the guest IP (VMware Tools), stable for ip_settle_timeout.
--- Returns {host=, port=}.
---@param timeout? number seconds (at most ip_wait_timeout)
---@return {host: string, port: integer}|nil, string?, string?
function VM:ssh_address(timeout)
  local st = self.settings
  timeout = math.min(timeout or st.ip_wait_timeout, st.ip_wait_timeout)
  local deadline = runtime.now() + timeout
  local seen, since
  log.info("%s: waiting up to %g s for the guest IP (NIC %d, %s)", self.name, timeout, st.nic, st.ip_cidr)
  while true do
    local left = deadline - runtime.now()
    if left <= 0 then
      return nil, ("vsphere: VM %s: no usable guest IP after %g s%s (VMware Tools must run in the guest; link-local "
        .. "and APIPA addresses do not count)"):format(self.name, timeout, seen and (", last " .. seen) or ""), "ETIMEDOUT"
    end
    local alive, why = self:alive()
    if not alive then return nil, ("%s: %s while waiting for its IP"):format(self.name, why), "EVMDIED" end
    local p, err, code = self.vc:props(self.ref, { "guest.net", "guest.ipAddress" })
    if not p then return nil, ("%s: reading guest.net: %s"):format(self.name, err), code end
    local ip = M.pick_ip(p["guest.net"], p["guest.ipAddress"], st.ip_cidr, st.nic)
    if ip and ip == seen then
      if runtime.now() - since >= st.ip_settle then
        log.info("%s: guest IP %s", self.name, ip)
        self.ip = ip
        return { host = ip, port = st.ssh_port }
      end
    elseif ip then
      seen, since = ip, runtime.now()
      log.debug("%s: guest IP %s, settling for %g s", self.name, ip, st.ip_settle)
    else
      -- block on the property collector until guest.net changes (or a while)
      local _, werr, wcode = self.vc:wait(self.ref, "guest.net", function(v)
        return M.pick_ip(v, nil, st.ip_cidr, st.nic) ~= nil
      end, math.min(left, 10))
      if wcode == "EINTR" then return nil, werr, wcode end
    end
    if ip then
      local ok, serr, scode = runtime.sleep(math.min(st.ip_settle > 0 and st.ip_settle / 2 or 0.2, 1, math.max(left, 0)))
      if not ok then return nil, serr, scode end
    end
  end
end

-- ---------------------------------------------------------------------- --
-- Power, export, removal                                                 --
-- ---------------------------------------------------------------------- --

--- Waits until the VM is powered off; true, or nil on timeout.
---@param timeout number seconds
---@return true|nil, string?, string?
function VM:wait_exit(timeout)
  local v, err, code = self.vc:wait(self.ref, "runtime.powerState", function(s) return s == "poweredOff" end, timeout)
  if v then return true end
  return nil, err, code
end

--- Asks the guest to shut down (VMware Tools), then powers off after `timeout`.
---@param timeout? number seconds (default 60)
---@return true|nil, string?, string?
function VM:power_off(timeout)
  local state = self:power()
  if state == "poweredOff" then return true end
  local _, serr = self.vc:call("ShutdownGuest", self.ref, {})
  if not serr and self:wait_exit(timeout or 60) then return true end
  log.warn("%s: still running; powering off", self.name)
  local t, err, code = self.vc:call("PowerOffVM_Task", self.ref, {})
  if t then err, code = select(2, self.vc:task(t, 300)) end
  if err and self:power() ~= "poweredOff" then return nil, ("%s: PowerOffVM_Task: %s"):format(self.name, err), code end
  return true
end
--- Exports the VM's disk(s) through an HttpNfcLease (capil.vsphere.lease):
--- `path` gets the first disk, further disks `<path minus .vmdk>-N.vmdk`.
--- Returns {sha256=, size=, disks = {...}}.
---@param path string
---@param opts? {adapter_type?: string, hwversion?: integer, lease_timeout?: number, timeout?: number}
---@return table|nil, string?, string?
function VM:export(path, opts)
  return lease.export(self.vc, self.ref, self.name, path, opts)
end

--- No disk of its own to hand out for a VMDK written into the OVA: over the
--- API the disk leaves through the NFC lease (VM:export). (ESXi's SSH path,
--- capil.backends.esx.ssh, streams its flat extent instead.)
---@return nil
function VM.disk_source(_) return nil end

--- Removes the build's CD-ROMs (the ISOs stay in the datastore cache).
---@return true|nil, string?, string?
function VM:remove_cdroms()
  local p, err, code = self.vc:props(self.ref, { "config.hardware.device" })
  if not p then return nil, err, code end
  local changes = {}
  for _, d in ipairs(vim25.list(p["config.hardware.device"])) do
    if d._type == "VirtualCdrom" then
      changes[#changes + 1] = vim25.obj("VirtualDeviceConfigSpec", { operation = "remove", device = d })
    end
  end
  if #changes == 0 then return true end
  local t
  t, err, code = self.vc:call("ReconfigVM_Task", self.ref,
    { spec = vim25.obj("VirtualMachineConfigSpec", { deviceChange = changes }) })
  if t then err, code = select(2, self.vc:task(t, 300)) end
  if err then return nil, ("%s: removing the CD-ROMs: %s"):format(self.name, err), code end
  return true
end

--- Powers the VM off and destroys it (and cancels its cleanup).
---@return true|nil, string?, string?
function VM:destroy()
  if self.destroyed then return true end
  local state = self:power()
  if state == "poweredOn" or state == "suspended" then
    local t = self.vc:call("PowerOffVM_Task", self.ref, {})
    if t then self.vc:task(t, 300) end
  end
  local t, err, code = self.vc:call("Destroy_Task", self.ref, {})
  if t then err, code = select(2, self.vc:task(t, 600)) end
  if err then return nil, ("%s: Destroy_Task: %s"):format(self.name, err), code end
  self.destroyed = true
  if self.cleanup then self.cleanup:cancel() self.cleanup = nil end
  log.info("%s: destroyed", self.name)
  return true
end


-- ====================================================================== --
-- Image tests (capil test)                                               --
-- ====================================================================== --

--- The test hooks of the vsphere backend (`kind` "vsphere") or the esx
--- backend ("esx"): prepare finds the VM (a VM-name target, or the OVA's or library item's
--- copy `test_vm_name`, default <name>-test, deployed when missing), sets
--- its cloud-init guestinfo and snapshots, and attaches it; record names it
--- for test/vm.json; finish powers it off and removes a deployed copy
--- (unless keep), then logs out. State: run.state.vc, run.state.deployed.
---@param kind "vsphere"|"esx"
---@return capil.TestHooks
function M.test_hooks(kind)
  local T = {}

  function T.prepare(run)
    local t, s, st = run.target, run.settings, run.state
    local vc, err, code = session.connect(s, { kind = kind, secret = run.secret })
    if not vc then return nil, err, code end
    st.vc = vc
    local inv
    inv, err, code = inventory.resolve(vc, s, { vars = session.placement_vars(kind) })
    if not inv then return nil, err, code end
    local name = t.kind == "vm" and t.name or (run.test_vm_name or (t.name .. "-test"))
    local ref
    ref, err, code = testvm.find_vm(vc, inv, name)
    st.deployed = t.kind ~= "vm"
    if ref then
      log.info("test: using the existing VM %s (%s)", name, tostring(ref))
    elseif t.kind == "vm" then
      return nil, err, code -- its message lists what exists
    elseif t.kind == "library" then
      local c
      c, err, code = session.rest(s, { kind = kind, secret = run.secret })
      if not c then return nil, err, code end
      log.info("test: deploying library %s, item %s as %s", t.library, t.item, name)
      ref, err, code = require("capil.vsphere.library").deploy(c, inv, t.library, t.item, { name = name })
      c:logout()
      if not ref then return nil, err, code end
    else
      log.info("test: deploying %s as %s", t.ova, name)
      local made
      made, err, code = deploy.import(vc, inv, t.ova, { name = name })
      if not made then return nil, err, code end
      ref = made.ref
    end
    local vm = M.attach(vc, inv, s, ref, name)
    run.vm = vm
    if st.deployed then
      vm.cleanup = cleanup.push(("VM %s (%s) on %s"):format(name, tostring(ref), vc.server), function() vm:destroy() end)
    end
    local snap
    snap, err, code = testvm.cloudinit(vc, ref, { userdata = run.data.userdata, metadata = run.data.metadata,
      name = name })
    if not snap then return nil, err, code end
    run.report.snapshots = snap
    return true
  end

  function T.record(run)
    local vm = run.vm
    return { backend = kind, name = vm.name, ref = tostring(vm.ref), server = run.state.vc and run.state.vc.server }
  end

  function T.finish(run)
    local vm, vc = run.vm, run.state.vc
    local ok, err, code = true, nil, nil
    if vm then
      if run.keep then
        if vm.cleanup then vm.cleanup:cancel() vm.cleanup = nil end
      else
        ok, err, code = vm:power_off(60)
        if ok and run.state.deployed then ok, err, code = vm:destroy() end
      end
    end
    if vc then vc:logout() end
    return ok, err, code
  end

  return T
end

M.test = M.test_hooks("vsphere")

return M
