--- capil.backends.vsphere — builds on vCenter (>= 6.5) through the vSphere
--- API, as Packer's vsphere-iso did, and on a standalone ESXi host (`esx`,
--- the same API on `ha-datacenter`). The steps:
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
--- * export: ExportVm + HttpNfcLease: wait ready, GET each disk (the `*`
---   host replaced by the server's), SHA-256 on the fly, progress reported
---   to the lease every 2 s from the transfer loop, Complete (Abort on
---   failure).
--- * finalize_vm: remove the CD-ROMs, MarkAsTemplate (convert_to_template),
---   then keep the VM (image-builder's behaviour) or destroy it.
--- * image tests (`capil test`): find_vm by name, cloudinit (image-builder's
---   image-govc-cloudinit.sh: snapshots "new" and "cloudinit", base64
---   guestinfo user-data and meta-data), attach an existing VM to drive it
---   like a build VM (power on, guest IP, power off).
local vim25 = require("capil.vsphere.vim25")
local http = require("capil.sys.http")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")
local cleanup = require("capil.sys.cleanup")
local bootcmd = require("capil.build.bootcmd")

local M = {}

M.name = "vsphere"
M.traits = { encoder = "usb", export = "nfc" }

--- Key events per PutUsbScanCodes call (waits split batches as well).
M.BATCH = 64

local VM = {}
VM.__index = VM

local function fail(msg, code) return nil, msg, code or "EVSPHERE" end

local function nonempty(v)
  if v == nil or v == "" then return nil end
  return v
end

-- ====================================================================== --
-- Settings and connection                                                --
-- ====================================================================== --

--- The connection and placement settings of a resolved configuration.
--- `kind` is "vsphere" or "esx" (ESXi: remote_* variables win, and the
--- datacenter is ha-datacenter).
---@param cfg table capil.build.config
---@param kind? string
function M.settings(cfg, kind)
  local g = function(p) return nonempty(cfg:get(p)) end
  local s = {
    kind = kind or "vsphere",
    server = g("vsphere.server"), username = g("vsphere.username"), password = g("vsphere.password"),
    insecure = cfg:get("vsphere.insecure_connection") and true or false,
    thumbprint = g("vsphere.thumbprint"), ca_file = g("vsphere.ca_file"),
    ip_wait_timeout = cfg:get("vsphere.ip_wait_timeout"),
    datacenter = g("vsphere.datacenter"), folder = g("vsphere.folder"), cluster = g("vsphere.cluster"),
    host = g("vsphere.host"), resource_pool = g("vsphere.resource_pool"), datastore = g("vsphere.datastore"),
    network = g("build.network"), cache_dir = g("vsphere.cache_dir") or "capil_cache",
    -- the guest IP wait of a VM made by M.attach (M.create reads cfg itself)
    ip_settle_timeout = cfg:get("vsphere.ip_settle_timeout"), ip_wait_address = g("vsphere.ip_wait_address"),
    nic = cfg:get("vsphere.nic"), ssh_port = cfg:get("ssh.port"),
  }
  if s.kind == "esx" then
    s.server = g("remote.host") or s.server
    s.username = g("remote.username") or s.username
    s.password = g("remote.password") or s.password
    s.datastore = g("remote.datastore") or s.datastore
    s.datacenter = s.datacenter or "ha-datacenter"
  end
  return s
end

--- Settings without a recipe (capil repl, capil deploy): recipes/config's
--- vsphere.json or esx.json < govc's environment < PACKER_VAR_FILES <
--- var files < --var, by image-builder variable name.
---@param opts {backend?: string, var_files?: string[], vars?: string[], config_dir?: string, getenv?: function}
---@return table|nil settings, string? err
function M.settings_from_vars(opts)
  local kind = opts.backend or "vsphere"
  local cfg, err = require("capil.build.config").from_vars({ backend = kind, var_files = opts.var_files, vars = opts.vars,
    config_dir = opts.config_dir, getenv = opts.getenv })
  if not cfg then return nil, err end
  return M.settings(cfg, kind)
end

--- Opens a vim25 session with the settings (capil.backends.vsphere.settings).
---@return table|nil vc, string? err, string? code
function M.connect(s)
  local var = s.kind == "esx" and "remote_host" or "vcenter_server"
  if not s.server then
    return fail(("%s: no server: set %s (in a var file, with --var, or GOVC_URL)"):format(s.kind, var), "ECONFIG")
  end
  if not s.username or not s.password then
    return fail(("%s: %s: set username and password (var file, --var, or GOVC_USERNAME/GOVC_PASSWORD)")
      :format(s.kind, s.server), "ECONFIG")
  end
  if s.server:match("^[Hh][Tt][Tt][Pp]://") then
    log.warn("%s: %s is plain http: the password (and every datastore upload) crosses the network in clear; "
      .. "use https://", s.kind, s.server)
  end
  return vim25.connect({
    server = s.server, username = s.username, password = s.password,
    insecure = s.insecure, ca_file = s.ca_file, cert_sha256 = s.thumbprint,
  })
end

-- ====================================================================== --
-- Inventory                                                              --
-- ====================================================================== --

-- The children of a folder-like object of one type: {name = Ref}.
local function children(vc, ref, want)
  local p, err, code = vc:props(ref, { "childEntity" })
  if not p then return nil, err, code end
  local out = {}
  for _, c in ipairs(vim25.list(p.childEntity)) do
    if not want or c.type == want then
      local n = vc:props(c, { "name" })
      if n then out[n.name] = c end
    end
  end
  return out
end

local function names(t)
  local l = {}
  for k in pairs(t) do l[#l + 1] = k end
  table.sort(l)
  return table.concat(l, ", ")
end

-- Finds path or explains what exists at its parent.
local function find(vc, path, what, var)
  local ref, err, code = vc:find(path)
  if ref then return ref end
  if code ~= "ENOENT" then return nil, err, code end
  local parent = path:match("^(.*)/[^/]*$")
  local hint = ""
  if parent and parent ~= "" then
    local pref = vc:find(parent)
    if pref then
      local kids = children(vc, pref)
      if kids and next(kids) then hint = " (there: " .. names(kids) .. ")" end
    end
  end
  return nil, ("%s %s not found%s; check %s"):format(what, path, hint, var), "ENOENT"
end

-- An absolute inventory path, or one relative to base.
local function under(base, p)
  if p:sub(1, 1) == "/" then return p end
  return base .. "/" .. p
end

--- Resolves the placement: {datacenter, dc_name, folder, pool, host?,
--- datastore, ds_name, network = {ref, name, backing}}.
---@return table|nil inv, string? err, string? code
function M.resolve(vc, s)
  local inv = {}
  local dc_name = s.datacenter
  if not dc_name then
    local dcs, err, code = children(vc, vc.content.rootFolder, "Datacenter")
    if not dcs then return nil, err, code end
    local list = {}
    for n in pairs(dcs) do list[#list + 1] = n end
    if #list ~= 1 then
      return fail(("%s: %d datacenters (%s): set datacenter"):format(s.server, #list, names(dcs)), "ECONFIG")
    end
    dc_name = list[1]
  end
  local dc_path = dc_name:sub(1, 1) == "/" and dc_name or "/" .. dc_name
  local err, code
  inv.datacenter, err, code = find(vc, dc_path, "datacenter", "datacenter")
  if not inv.datacenter then return nil, err, code end
  inv.dc_name = dc_path:match("([^/]+)$")
  inv.dc_path = dc_path

  inv.folder, err, code = find(vc, s.folder and under(dc_path .. "/vm", s.folder) or dc_path .. "/vm", "folder", "folder")
  if not inv.folder then return nil, err, code end

  -- compute: a cluster, a host (standalone or in a cluster), or the only one
  local compute
  if s.cluster then
    compute, err, code = find(vc, under(dc_path .. "/host", s.cluster), "cluster", "cluster")
    if not compute then return nil, err, code end
  elseif s.host then
    local r = vc:find(under(dc_path .. "/host", s.host))
    if r and r.type == "HostSystem" then
      inv.host = r
      local p = assert(vc:props(r, { "parent" }))
      compute = p.parent
    elseif r then
      compute = r
      local p = vc:props(r, { "host" })
      inv.host = p and vim25.list(p.host)[1]
    else
      -- a host inside a cluster: /dc/host/<cluster>/<host>
      local clusters = children(vc, assert(vc:find(dc_path .. "/host"))) or {}
      for cname in pairs(clusters) do
        local h = vc:find(dc_path .. "/host/" .. cname .. "/" .. s.host)
        if h and h.type == "HostSystem" then
          inv.host, compute = h, clusters[cname]
          break
        end
      end
      if not compute then
        return fail(("host %s not found under %s/host (there: %s); check host"):format(s.host, dc_path, names(clusters)),
          "ENOENT")
      end
    end
  else
    local all = children(vc, assert(vc:find(dc_path .. "/host"))) or {}
    local list = {}
    for n in pairs(all) do list[#list + 1] = n end
    if #list ~= 1 then
      return fail(("%s: %d compute resources (%s): set cluster or host"):format(dc_path, #list, names(all)), "ECONFIG")
    end
    compute = all[list[1]]
  end
  inv.compute = compute
  if s.resource_pool then
    local cname = assert(vc:props(compute, { "name" })).name
    inv.pool, err, code = find(vc, under(dc_path .. "/host/" .. cname .. "/Resources", s.resource_pool),
      "resource pool", "resource_pool")
    if not inv.pool then return nil, err, code end
  else
    local p, perr, pcode = vc:props(compute, { "resourcePool" })
    if not p then return nil, perr, pcode end
    inv.pool = p.resourcePool
  end

  -- datastore: named, or the only one
  local ds_name = s.datastore
  if not ds_name then
    local all = children(vc, assert(vc:find(dc_path .. "/datastore")), "Datastore") or {}
    local list = {}
    for n in pairs(all) do list[#list + 1] = n end
    if #list ~= 1 then
      return fail(("%s: %d datastores (%s): set datastore"):format(dc_path, #list, names(all)), "ECONFIG")
    end
    ds_name = list[1]
  end
  inv.datastore, err, code = find(vc, under(dc_path .. "/datastore", ds_name), "datastore", "datastore")
  if not inv.datastore then return nil, err, code end
  inv.ds_name = ds_name:match("([^/]+)$")

  -- network: named, else "VM Network"
  local net_name = s.network or "VM Network"
  local net
  net, err, code = find(vc, under(dc_path .. "/network", net_name), "network", "network")
  if not net then return nil, err, code end
  inv.network = { ref = net, name = net_name:match("([^/]+)$") }
  if net.type == "DistributedVirtualPortgroup" then
    local p = assert(vc:props(net, { "key", "config.distributedVirtualSwitch" }))
    local sw = assert(vc:props(p["config.distributedVirtualSwitch"], { "uuid" }))
    inv.network.backing = vim25.obj("VirtualEthernetCardDistributedVirtualPortBackingInfo", {
      port = vim25.obj("DistributedVirtualSwitchPortConnection", { switchUuid = sw.uuid, portgroupKey = p.key }) })
  else
    inv.network.backing = vim25.obj("VirtualEthernetCardNetworkBackingInfo", { deviceName = inv.network.name,
      network = net })
  end
  log.info("%s: datacenter %s, datastore %s, network %s", s.server, inv.dc_name, inv.ds_name, inv.network.name)
  return inv
end

-- ====================================================================== --
-- Datastore files                                                        --
-- ====================================================================== --

local function urlencode(s)
  return (s:gsub("[^%w%-%._~/]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- The `/folder` URL of a datastore path (relative to the datastore root).
function M.folder_url(vc, inv, path)
  return ("%s://%s/folder/%s?dcPath=%s&dsName=%s"):format(vc.scheme, vc.server, urlencode(path),
    urlencode(inv.dc_path:sub(2)):gsub("/", "%%2F"), urlencode(inv.ds_name):gsub("/", "%%2F"))
end

local function ds_path(inv, path) return ("[%s] %s"):format(inv.ds_name, path) end

-- A request on the datastore endpoint with the session's cookie and TLS settings.
local function ds_request(vc, opts)
  for k, v in pairs(vc:transfer_options()) do if opts[k] == nil then opts[k] = v end end
  return http.request(opts)
end

local function delete_file(vc, inv, path)
  local t = vc:call("DeleteDatastoreFile_Task", vc.content.fileManager,
    { name = ds_path(inv, path), datacenter = inv.datacenter })
  if t then return vc:task(t, 120) end
end

--- Uploads `local_path` to datastore `path`, streamed, through a per-build
--- name moved into place. Returns true or nil, err, code.
function M.upload(vc, inv, local_path, path, opts)
  opts = opts or {}
  local dir = path:match("^(.*)/[^/]+$")
  if dir then
    local _, err, code, fault = vc:call("MakeDirectory", vc.content.fileManager,
      { name = ds_path(inv, dir), datacenter = inv.datacenter, createParentDirectories = true })
    if err and not (fault and fault.type == "FileAlreadyExists") then
      return nil, ("%s: MakeDirectory %s: %s"):format(vc.server, ds_path(inv, dir), err), code
    end
  end
  local part = ("%s.%d-%d.part"):format(path, require("capil.sys.proc").getpid(), math.random(1, 1e9))
  local undo = cleanup.push(("datastore file %s"):format(ds_path(inv, part)), function() delete_file(vc, inv, part) end)
  local progress <close> = log.progress({ label = "upload " .. fs.basename(path) })
  local r, err, code = ds_request(vc, { method = "PUT", url = M.folder_url(vc, inv, part), body_file = local_path,
    headers = { ["Content-Type"] = "application/octet-stream" }, progress = progress, ok_status = { 200, 201 },
    timeout = opts.timeout or 7200 })
  if not r then
    undo:run()
    return nil, ("%s: uploading %s to %s: %s"):format(vc.server, local_path, ds_path(inv, path), err), code
  end
  if opts.sha256 and r.digest ~= opts.sha256 then
    undo:run()
    return nil, ("%s: %s changed while it was uploaded (sha256 %s, expected %s)"):format(vc.server, local_path,
      r.digest, opts.sha256), "EDIGEST"
  end
  local t, merr, mcode = vc:call("MoveDatastoreFile_Task", vc.content.fileManager, {
    sourceName = ds_path(inv, part), sourceDatacenter = inv.datacenter,
    destinationName = ds_path(inv, path), destinationDatacenter = inv.datacenter, force = true })
  if t then t, merr, mcode = vc:task(t, 300) end
  if not t and merr then
    undo:run()
    return nil, ("%s: moving %s into place: %s"):format(vc.server, ds_path(inv, path), merr), mcode
  end
  undo:cancel()
  return true
end

--- Puts the ISO in the datastore cache unless the marker next to it names
--- the same checksum. Returns the "[ds] path" of the ISO.
function M.upload_iso(vc, inv, local_path, checksum, cache_dir)
  local path = ("%s/%s.iso"):format(cache_dir, checksum)
  local marker = path .. ".sha256"
  local r = ds_request(vc, { url = M.folder_url(vc, inv, marker), ok_status = { 200, 404 }, retries = 1 })
  if r and r.status == 200 and r.body:match("^%s*(%x+)") == checksum then
    log.info("%s: %s is already on the datastore (checksum marker matches); not uploading", vc.server,
      ds_path(inv, path))
    return ds_path(inv, path), "cached"
  end
  log.info("%s: uploading %s to %s", vc.server, local_path, ds_path(inv, path))
  local ok, err, code = M.upload(vc, inv, local_path, path, { sha256 = #checksum == 64 and checksum or nil })
  if not ok then return nil, err, code end
  local m, merr, mcode = ds_request(vc, { method = "PUT", url = M.folder_url(vc, inv, marker), body = checksum .. "\n",
    ok_status = { 200, 201 } })
  if not m then return nil, ("%s: writing %s: %s"):format(vc.server, ds_path(inv, marker), merr), mcode end
  return ds_path(inv, path), "uploaded"
end

-- ====================================================================== --
-- Steps of their own                                                     --
-- ====================================================================== --

M.steps = {}

-- A free-licence ESXi host answers every write with RestrictedVersion.
local function explain(run, err, code)
  if err and err:find("RestrictedVersion", 1, true) then
    return nil, ("%s\n%s refuses the vSphere write API (RestrictedVersion: a free-licence ESXi?). Builds need a "
      .. "licensed host or vCenter, or --backend esx, which falls back to SSH (vim-cmd, as Packer's esx5 mode) with "
      .. "remote_username/remote_password."):format(err, run.vc and run.vc.server or "the host"), "ERESTRICTED"
  end
  return nil, err, code
end

local function upload_media(run, step)
  local s = M.settings(run.cfg, run.plan.backend)
  local vc, err, code = M.connect(s)
  if not vc then return nil, err, code end
  run.vc = vc
  -- the installer server's address as the hypervisor's network sees this
  -- machine: our end of the connection to it (unless http_ip was set)
  if run.http and run.http.auto and vc.local_ip then
    run.http.ip = vc.local_ip
    log.info("installer files: the guest uses http://%s:%d/ (this machine's address towards %s)", vc.local_ip,
      run.http.port, vc.server)
  end
  local inv
  inv, err, code = M.resolve(vc, s)
  if not inv then return nil, err, code end
  run.inv = inv
  local iso, how
  iso, how, code = M.upload_iso(vc, inv, run.iso, step.checksum, step.cache_dir)
  if not iso then return nil, how, code end
  run.remote_iso = iso
  run.report.iso_upload = how
  if run.cd_iso then
    local name = ("%s/%s-%d-cd.iso"):format(step.cache_dir, run.plan.build_version, math.random(1, 1e9))
    local ok, uerr, ucode = M.upload(vc, inv, run.cd_iso, name)
    if not ok then return nil, uerr, ucode end
    run.remote_cd = ds_path(inv, name)
    run.remote_cd_path = name
    cleanup.push("datastore file " .. run.remote_cd, function() delete_file(vc, inv, name) end)
  end
  return true
end

function M.steps.upload_media(run, step)
  local ok, err, code = upload_media(run, step)
  if ok then return ok end
  return explain(run, err, code)
end

function M.steps.finalize_vm(run, step)
  local vm = run.vm
  local ok, err, code = vm:remove_cdroms()
  if not ok then return nil, err, code end
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
-- The VM                                                                 --
-- ====================================================================== --

local CONTROLLER = { pvscsi = "ParaVirtualSCSIController", lsilogic = "VirtualLsiLogicController",
  ["lsilogic-sas"] = "VirtualLsiLogicSASController" }
local NIC = { vmxnet3 = "VirtualVmxnet3", e1000 = "VirtualE1000", e1000e = "VirtualE1000e" }

local function connectable()
  return vim25.obj("VirtualDeviceConnectInfo", { startConnected = true, allowGuestControl = true, connected = true })
end

-- The VirtualMachineConfigSpec of a build VM.
local function config_spec(step, inv, iso_paths, extra)
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
  for i, iso in ipairs(iso_paths) do
    add(vim25.obj("VirtualCdrom", { key = -102 - i, controllerKey = 200, unitNumber = i - 1,
      backing = vim25.obj("VirtualCdromIsoBackingInfo", { fileName = iso }), connectable = connectable() }))
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

--- Creates the build VM (pipeline create_vm). opts.run carries the session,
--- the inventory and the uploaded media; opts.step the plan step.
function M.create(opts)
  local run, step = opts.run, opts.step
  local vc, inv = run.vc, run.inv
  if not vc then return fail("vsphere: create_vm before upload_media (no session)", "ESTEP") end
  local isos = { run.remote_iso }
  if run.remote_cd then isos[2] = run.remote_cd end
  local spec = config_spec(step, inv, isos, run.cfg:get("vsphere.configuration_parameters"))
  log.info("%s: creating the VM in %s (%d CPUs, %d MiB, %d MiB disk)", step.vm_name, inv.dc_name, step.cpus,
    step.memory_mb, step.disk_mb)
  local task, err, code = vc:call("CreateVM_Task", inv.folder, { config = spec, pool = inv.pool, host = inv.host })
  local ref
  if task then ref, err, code = vc:task(task, 600) end
  if not ref then return explain(run, ("%s: CreateVM_Task: %s"):format(step.vm_name, err), code) end
  local vm = setmetatable({ vc = vc, inv = inv, ref = ref, name = step.vm_name, run = run,
    settings = {
      ip_wait_timeout = assert(bootcmd.duration(run.cfg:get("vsphere.ip_wait_timeout"))),
      ip_settle = assert(bootcmd.duration(run.cfg:get("vsphere.ip_settle_timeout"))),
      ip_cidr = run.cfg:get("vsphere.ip_wait_address"), nic = run.cfg:get("vsphere.nic"),
      ssh_port = run.cfg:get("ssh.port"),
    } }, VM)
  vm.hint = ("the VM %s (%s) on %s: check its console"):format(vm.name, tostring(ref), vc.server)
  vm.cleanup = cleanup.push(("VM %s (%s) on %s"):format(vm.name, tostring(ref), vc.server), function()
    vm:destroy()
  end)
  log.info("%s: created %s", vm.name, tostring(ref))
  return vm
end

function VM:power()
  local p, err, code = self.vc:props(self.ref, { "runtime.powerState" })
  if not p then return nil, err, code end
  return p["runtime.powerState"]
end

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

function VM:running()
  return self:power() == "poweredOn"
end

function VM:alive()
  local state, err = self:power()
  if state == "poweredOn" then return true end
  if not state then return false, err end
  return false, "the VM is " .. state
end

--- Types events with PutUsbScanCodes, M.BATCH key events per call. Returns
--- true, nil, nil, the number of calls.
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
function VM:wait_exit(timeout)
  local v, err, code = self.vc:wait(self.ref, "runtime.powerState", function(s) return s == "poweredOff" end, timeout)
  if v then return true end
  return nil, err, code
end

--- Asks the guest to shut down (VMware Tools), then powers off after `timeout`.
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

-- An HttpNfcLease in use (export or import): waited on until ready, kept
-- alive by progress reports from the transfer loop's ticks, completed once,
-- and aborted on failure or Ctrl-C.
local Lease = {}
Lease.__index = Lease

local function open_lease(vc, ref, what, timeout)
  local l = setmetatable({ vc = vc, ref = ref, what = what, moved = 0, total = 0 }, Lease)
  l.guard = cleanup.push(("NFC lease %s (%s)"):format(tostring(ref), what), function()
    l:abort("capil: interrupted")
  end)
  local state, err, code = vc:wait(ref, "state", function(s) return s == "ready" or s == "error" end, timeout or 300)
  if not state then return l:fail("the lease never became ready: " .. err, code) end
  if state == "error" then
    local p = vc:props(ref, { "error" })
    local e = p and p.error
    return l:fail("the lease failed: " .. (e and (e.localizedMessage or e.fault and e.fault._type) or "no reason given"),
      "ENFC")
  end
  local p, perr, pcode = vc:props(ref, { "info" })
  if not p then return l:fail("reading the lease: " .. perr, pcode) end
  l.info = p.info
  return l
end

function Lease:abort(why)
  if self.done then return end
  self.done = true
  self.guard:cancel()
  self.vc:call("HttpNfcLeaseAbort", self.ref, { fault = vim25.obj("LocalizedMethodFault", {
    fault = vim25.obj("SystemError", { reason = why }), localizedMessage = why }) })
end

function Lease:fail(msg, code)
  self:abort(msg)
  return nil, ("%s: %s"):format(self.what, msg), code
end

--- A device URL with the `*` host (and scheme) of the connection.
function Lease:url(d)
  return (d.url:gsub("^https?://%*", self.vc.scheme .. "://" .. self.vc.server))
end

--- Options for one disk's transfer: the session cookie, the TLS settings,
--- and a tick reporting the lease's progress (which keeps it alive).
function Lease:transfer(opts)
  local t = self.vc:transfer_options({ separate = true })
  for k, v in pairs(opts) do t[k] = v end
  t.tick_interval = t.tick_interval or 2
  t.tick = function(bytes)
    local pct = self.total > 0 and math.min(99, math.floor((self.moved + bytes) * 100 / self.total)) or 50
    local _, err = self.vc:call("HttpNfcLeaseProgress", self.ref, { percent = pct })
    if err then log.warn("%s: HttpNfcLeaseProgress: %s", self.what, err) end
  end
  return t
end

function Lease:complete()
  self.vc:call("HttpNfcLeaseProgress", self.ref, { percent = 100 })
  local _, err, code = self.vc:call("HttpNfcLeaseComplete", self.ref, {})
  self.done = true
  self.guard:cancel()
  if err then return nil, ("%s: HttpNfcLeaseComplete: %s"):format(self.what, err), code end
  return true
end

--- Exports the VM's disk(s) through an HttpNfcLease; `path` gets the first
--- disk, further disks `<path minus .vmdk>-N.vmdk`. Returns {sha256=, size=,
--- disks = {...}}.
function VM:export(path, opts)
  opts = opts or {}
  local lref, err, code = self.vc:call("ExportVm", self.ref, {})
  if not lref then return nil, ("%s: ExportVm: %s"):format(self.name, err), code end
  local lease
  lease, err, code = open_lease(self.vc, lref, self.name .. ": export", opts.lease_timeout)
  if not lease then return nil, err, code end
  local urls = {}
  for _, d in ipairs(vim25.list(lease.info.deviceUrl)) do
    if d.disk ~= false then urls[#urls + 1] = d end
  end
  if #urls == 0 then return lease:fail("the lease lists no disk", "ENFC") end
  for _, d in ipairs(urls) do lease.total = lease.total + (tonumber(d.fileSize) or 0) end
  if lease.total == 0 then lease.total = (tonumber(lease.info.totalDiskCapacityInKB) or 0) * 1024 end
  local result = { disks = {} }
  for i, d in ipairs(urls) do
    local out = i == 1 and path or path:gsub("%.vmdk$", "") .. ("-%d.vmdk"):format(i - 1)
    local progress <close> = log.progress({ label = "export " .. fs.basename(out), total = tonumber(d.fileSize) })
    local r, gerr, gcode = http.request(lease:transfer({ url = lease:url(d), out_file = out, progress = progress,
      timeout = opts.timeout or 7200, tick_interval = opts.progress_interval }))
    if not r then return lease:fail(("GET %s: %s"):format(http.redact_url(lease:url(d)), gerr), gcode) end
    lease.moved = lease.moved + r.size
    result.disks[i] = { path = out, sha256 = r.digest, size = r.size }
    log.info("%s: exported %s (%d bytes, sha256 %s)", self.name, out, r.size, r.digest)
  end
  local ok, cerr, ccode = lease:complete()
  if not ok then return nil, cerr, ccode end
  result.sha256, result.size = result.disks[1].sha256, result.disks[1].size
  return result
end

--- Removes the build's CD-ROMs (the ISOs stay in the datastore cache).
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

--- Powers the VM off and destroys it.
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
-- Deploy: an OVA becomes a VM (or a template)                            --
-- ====================================================================== --

--- Imports `ova_path` (CreateImportSpec + ImportVApp + NFC upload of each
--- disk straight out of the OVA). opts: name (default: the OVF's), template
--- (MarkAsTemplate afterwards), progress_interval (s). Returns a VM handle.
function M.import(vc, inv, ova_path, opts)
  opts = opts or {}
  local ova, ovf = require("capil.format.ova"), require("capil.format.ovf")
  local members, merr, mcode = ova.members(ova_path)
  if not members then return nil, merr, mcode end
  local by_name = {}
  for _, m in ipairs(members) do by_name[m.name] = m end
  local desc = members[1] and members[1].name:match("%.ovf$") and members[1]
  if not desc then return fail(("deploy: %s: the first member is not an .ovf descriptor"):format(ova_path), "EOVA") end
  if desc.size > ova.MAX_OVF then
    return fail(("deploy: %s: descriptor larger than %d bytes"):format(ova_path, ova.MAX_OVF), "EOVA")
  end
  local f = assert(io.open(ova_path, "rb"))
  f:seek("set", desc.offset)
  local text = f:read(desc.size)
  f:close()
  local facts, perr = ovf.parse(text)
  if not facts then return fail(("deploy: %s: %s"):format(ova_path, perr), "EOVA") end
  local name = opts.name or facts.name
  local mappings = {}
  for _, n in ipairs(facts.networks) do
    mappings[#mappings + 1] = vim25.obj("OvfNetworkMapping", { name = n, network = inv.network.ref })
  end
  local params = vim25.obj("OvfCreateImportSpecParams", { locale = "", deploymentOption = "", entityName = name,
    diskProvisioning = "thin", networkMapping = mappings })
  local spec, err, code = vc:call("CreateImportSpec", vc.content.ovfManager,
    { ovfDescriptor = text, resourcePool = inv.pool, datastore = inv.datastore, cisp = params })
  if not spec then return nil, ("deploy %s: CreateImportSpec: %s"):format(name, err), code end
  if spec.error then
    local msgs = {}
    for _, e in ipairs(vim25.list(spec.error)) do msgs[#msgs + 1] = e.localizedMessage or (e.fault and e.fault._type) end
    return fail(("deploy %s: the server rejects the OVF: %s"):format(name, table.concat(msgs, "; ")), "EOVF")
  end
  local files = {}
  for _, item in ipairs(vim25.list(spec.fileItem)) do files[item.deviceId] = item end
  local lref
  lref, err, code = vc:call("ImportVApp", inv.pool, { spec = spec.importSpec, folder = inv.folder, host = inv.host })
  if not lref then return nil, ("deploy %s: ImportVApp: %s"):format(name, err), code end
  local lease
  lease, err, code = open_lease(vc, lref, "deploy " .. name)
  if not lease then return nil, err, code end
  local info = lease.info
  local uploads = {}
  for _, d in ipairs(vim25.list(info.deviceUrl)) do
    local item = files[d.importKey]
    if item then
      local m = by_name[item.path]
      if not m then return lease:fail(("the OVF names %s, which the OVA does not hold"):format(item.path), "EOVA") end
      uploads[#uploads + 1] = { device = d, member = m, create = item.create }
      lease.total = lease.total + m.size
    end
  end
  for _, u in ipairs(uploads) do
    local progress <close> = log.progress({ label = "upload " .. u.member.name, total = u.member.size })
    local method = u.create and "PUT" or "POST"
    local r, uerr, ucode = http.request(lease:transfer({ method = method, url = lease:url(u.device),
      body_file = ova_path, body_offset = u.member.offset, body_length = u.member.size,
      headers = { ["Content-Type"] = "application/x-vnd.vmware-streamVmdk", Overwrite = u.create and "t" or nil },
      progress = progress, timeout = opts.timeout or 7200, tick_interval = opts.progress_interval }))
    if not r then
      return lease:fail(("%s %s: %s"):format(method, http.redact_url(lease:url(u.device)), uerr), ucode)
    end
    lease.moved = lease.moved + u.member.size
    log.info("deploy %s: sent %s (%d bytes)", name, u.member.name, u.member.size)
  end
  local ok, cerr, ccode = lease:complete()
  if not ok then return nil, cerr, ccode end
  local ref = info.entity
  local vm = setmetatable({ vc = vc, inv = inv, ref = ref, name = name, settings = {} }, VM)
  if opts.template then
    local _, terr, tcode = vc:call("MarkAsTemplate", ref, {})
    if terr then return nil, ("deploy %s: MarkAsTemplate: %s"):format(name, terr), tcode end
  end
  log.info("deploy %s: %s %s created", name, opts.template and "template" or "VM", tostring(ref))
  return vm
end

-- ====================================================================== --
-- Testing an image: an existing VM, cloud-init snapshots                 --
-- ====================================================================== --

-- Levenshtein distance of two short strings (similar-name hints).
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- Up to `n` names like `name` (containing it, inside it, or a few edits
-- away), closest first.
local function similar(name, all, n)
  local want = name:lower()
  local limit = math.max(2, #want // 4)
  local hits = {}
  for _, other in ipairs(all) do
    local o = other:lower()
    local d = distance(want, o)
    if d <= limit or (#want >= 3 and o:find(want, 1, true)) or (#o >= 3 and want:find(o, 1, true)) then
      hits[#hits + 1] = { name = other, d = d }
    end
  end
  table.sort(hits, function(x, y) if x.d ~= y.d then return x.d < y.d end return x.name < y.name end)
  local out = {}
  for i = 1, math.min(n, #hits) do out[i] = hits[i].name end
  return out
end

-- Every VM under the datacenter's vmFolder (folders and vApps included):
-- { {ref=, name=}, ... }, through a recursive ContainerView.
local function all_vms(vc, inv)
  local p, err, code = vc:props(inv.datacenter, { "vmFolder" })
  if not p then return nil, err, code end
  local view
  view, err, code = vc:call("CreateContainerView", vc.content.viewManager,
    { container = p.vmFolder, type = { "VirtualMachine" }, recursive = true })
  if not view then return nil, ("CreateContainerView: %s"):format(err), code end
  local v
  v, err, code = vc:props(view, { "view" })
  vc:call("DestroyView", view, {})
  if not v then return nil, err, code end
  local objs
  objs, err, code = vc:props_many(vim25.list(v.view), "VirtualMachine", { "name" })
  if not objs then return nil, err, code end
  local out = {}
  for i, o in ipairs(objs) do out[i] = { ref = o.ref, name = o.props.name } end
  return out
end

--- The VM named `name` in the resolved inventory (inv from M.resolve),
--- searched in the whole vmFolder tree of inv.datacenter. A name with a "/"
--- is an inventory path under the datacenter's vm folder ("team/node-1").
--- Not found: nil, "vsphere: no VM named 'x' in datacenter D" (with similar
--- names, if any), "ENOTFOUND"; several VMs of that name: "EAMBIGUOUS".
---@param vc table a capil.vsphere.vim25 session
---@param inv table from M.resolve
---@param name string
---@return capil.vsphere.vim25.Ref|nil ref, string? err, string? code
function M.find_vm(vc, inv, name)
  if type(name) ~= "string" or name == "" then error("vsphere.find_vm: name must be a non-empty string", 2) end
  local where = ("in datacenter %s"):format(inv.dc_name)
  if name:find("/", 1, true) then
    local ref, err, code = vc:find(under(inv.dc_path .. "/vm", name))
    if ref and ref.type == "VirtualMachine" then return ref end
    if ref or code == "ENOENT" then
      return fail(("vsphere: no VM at '%s' %s (under its vm folder)"):format(name, where), "ENOTFOUND")
    end
    return nil, ("vsphere: looking for VM '%s' %s: %s"):format(name, where, err), code
  end
  local vms, err, code = all_vms(vc, inv)
  if not vms then return nil, ("vsphere: looking for VM '%s' %s: %s"):format(name, where, err), code end
  local found, vm_names = {}, {}
  for _, v in ipairs(vms) do
    if v.name == name then found[#found + 1] = v.ref end
    vm_names[#vm_names + 1] = v.name
  end
  if #found == 1 then return found[1] end
  if #found > 1 then
    local refs = {}
    for i, r in ipairs(found) do refs[i] = r.value end
    return fail(("vsphere: %d VMs named '%s' %s (%s): give its folder path (folder/%s)"):format(#found, name, where,
      table.concat(refs, ", "), name), "EAMBIGUOUS")
  end
  local like = similar(name, vm_names, 3)
  return fail(("vsphere: no VM named '%s' %s%s"):format(name, where,
    #like > 0 and (" (similar: " .. table.concat(like, ", ") .. ")") or ""), "ENOTFOUND")
end

-- The snapshots of a snapshot tree in pre-order: { {name=, ref=, parent=}, ... }.
local function flatten(list, out, parent)
  for _, t in ipairs(vim25.list(list)) do
    out[#out + 1] = { name = t.name, ref = t.snapshot, parent = parent }
    flatten(t.childSnapshotList, out, t.name)
  end
  return out
end

local CLOUDINIT_OPTS = { userdata = true, metadata = true, name = true }

--- image-builder's hack/image-govc-cloudinit.sh through the API: power the
--- VM off (hard) if it runs (guestinfo is read at boot); revert to the
--- snapshot "new" and remove every other snapshot, or take "new" when there
--- is none; write user-data and meta-data as base64 guestinfo (plain base64,
--- no quotes, no line breaks); take the snapshot "cloudinit".
--- Returns {created_new=, reverted=, removed={names...}} or nil, err (naming
--- the VM and the call), code.
---@param vc table a capil.vsphere.vim25 session
---@param ref capil.vsphere.vim25.Ref the VM
---@param opts {userdata: string, metadata: string, name?: string}
---@return table|nil result, string? err, string? code
function M.cloudinit(vc, ref, opts)
  if not vim25.is_ref(ref) then error("vsphere.cloudinit: ref must be a Ref", 2) end
  if type(opts) ~= "table" then error("vsphere.cloudinit: opts must be a table", 2) end
  for k in pairs(opts) do
    if not CLOUDINIT_OPTS[k] then error(("vsphere.cloudinit: unknown option '%s'"):format(tostring(k)), 2) end
  end
  if type(opts.userdata) ~= "string" or type(opts.metadata) ~= "string" then
    error("vsphere.cloudinit: userdata and metadata must be strings", 2)
  end
  local hashlib = require("capil.sys.hash")
  local label = "vsphere: VM " .. (opts.name or tostring(ref))
  local function failed(call, err, code) return nil, ("%s: %s: %s"):format(label, call, err), code end
  local function task(method, this, args)
    local r, err, code = vc:call_task(method, this, args, 600)
    if err then return failed(method, err, code) end
    return r
  end

  local p, err, code = vc:props(ref, { "runtime.powerState", "snapshot.rootSnapshotList" })
  if not p then return failed("reading its power state and snapshots", err, code) end
  local state = p["runtime.powerState"]
  if state == "poweredOn" or state == "suspended" then
    log.info("%s is %s: powering it off (guestinfo is read at boot)", label, state)
    local ok, terr, tcode = task("PowerOffVM_Task", ref, {})
    if not ok then return nil, terr, tcode end
  end

  local result = { created_new = false, reverted = false, removed = {} }
  local snaps = flatten(p["snapshot.rootSnapshotList"], {})
  local new
  for _, sn in ipairs(snaps) do
    if sn.name == "new" then new = sn break end
  end
  if new then
    local ok, terr, tcode = task("RevertToSnapshot_Task", new.ref, {})
    if not ok then return nil, terr, tcode end
    result.reverted = true
    log.info("%s: reverted to snapshot 'new'", label)
    -- leaves first; removeChildren=false keeps whatever lies below
    for i = #snaps, 1, -1 do
      local sn = snaps[i]
      if sn.ref ~= new.ref then
        ok, terr, tcode = task("RemoveSnapshot_Task", sn.ref, { removeChildren = false })
        if not ok then return nil, terr, tcode end
        table.insert(result.removed, 1, sn.name)
      end
    end
    if #result.removed > 0 then
      log.info("%s: removed snapshots %s", label, table.concat(result.removed, ", "))
    end
  else
    local ok, terr, tcode = task("CreateSnapshot_Task", ref, { name = "new", memory = false, quiesce = false })
    if not ok then return nil, terr, tcode end
    result.created_new = true
    log.info("%s: took snapshot 'new'", label)
  end

  local function opt(k, v) return vim25.obj("OptionValue", { key = k, value = v }) end
  local spec = vim25.obj("VirtualMachineConfigSpec", { extraConfig = {
    opt("guestinfo.userdata", hashlib.base64_encode(opts.userdata)),
    opt("guestinfo.userdata.encoding", "base64"),
    opt("guestinfo.metadata", hashlib.base64_encode(opts.metadata)),
    opt("guestinfo.metadata.encoding", "base64"),
  } })
  local ok, terr, tcode = task("ReconfigVM_Task", ref, { spec = spec })
  if not ok then return nil, terr, tcode end
  log.info("%s: guestinfo user-data (%d bytes) and meta-data (%d bytes) set", label, #opts.userdata,
    #opts.metadata)

  ok, terr, tcode = task("CreateSnapshot_Task", ref, { name = "cloudinit", memory = false, quiesce = false })
  if not ok then return nil, terr, tcode end
  log.info("%s: took snapshot 'cloudinit'", label)
  return result
end

-- A duration setting: seconds, or a Go-style string ("30m", "5s").
local function seconds(v, default, what)
  if v == nil or v == "" then return default end
  if type(v) == "number" then return v end
  local n, err = bootcmd.duration(tostring(v))
  if not n then error(("vsphere.attach: %s: %s"):format(what, err), 3) end
  return n
end

--- A VM object for an existing VM, with the methods of the VMs M.create
--- makes (start, ssh_address, alive, power_off, destroy, keepalive, ...).
--- `s` is M.settings(...) (or a table with its ip_* fields, nic and
--- ssh_port); missing fields take the schema's defaults. Nothing destroys
--- an attached VM unless its destroy() is called.
---@param vc table a capil.vsphere.vim25 session
---@param inv table from M.resolve
---@param s table settings
---@param ref capil.vsphere.vim25.Ref
---@param name string
---@return table vm
function M.attach(vc, inv, s, ref, name)
  if not vim25.is_ref(ref) then error("vsphere.attach: ref must be a Ref", 2) end
  if type(name) ~= "string" then error("vsphere.attach: name must be a string", 2) end
  s = s or {}
  local vm = setmetatable({ vc = vc, inv = inv, ref = ref, name = name, attached = true,
    settings = {
      ip_wait_timeout = seconds(s.ip_wait_timeout, 1800, "ip_wait_timeout"),
      ip_settle = seconds(s.ip_settle_timeout, 5, "ip_settle_timeout"),
      ip_cidr = s.ip_wait_address or "0.0.0.0/0", nic = s.nic or 0, ssh_port = s.ssh_port or 22,
    } }, VM)
  vm.hint = ("the VM %s (%s) on %s: check its console"):format(name, tostring(ref), vc.server)
  return vm
end

M.VM = VM

return M
