--- capil.vsphere.deploy — an OVA becomes a VM (or a template) on vSphere or
--- ESXi: CreateImportSpec from its descriptor (thin disks, every OVF network
--- mapped to the placement's), ImportVApp, and each disk streamed straight
--- out of the OVA to the NFC lease (capil.vsphere.lease). An EFI OVF's VM is
--- created EFI even where the server's import spec dropped the firmware.
local vim25 = require("capil.vsphere.vim25")
local lease_mod = require("capil.vsphere.lease")
local http = require("capil.sys.http")
local log = require("capil.sys.log")

local M = {}

local function fail(msg, code) return nil, msg, code or "EVSPHERE" end

--- Imports `ova_path` (CreateImportSpec + ImportVApp + NFC upload of each
--- disk straight out of the OVA). opts: name (default: the OVF's), template
--- (MarkAsTemplate afterwards), progress_interval (s), timeout (s). Returns
--- {ref, name} of the new VM, or nil, err, code (the lease aborted).
---@param vc table a capil.vsphere.vim25 session
---@param inv table from capil.vsphere.inventory.resolve
---@param ova_path string
---@param opts? {name?: string, template?: boolean, progress_interval?: number, timeout?: number}
---@return {ref: capil.vsphere.vim25.Ref, name: string}|nil vm, string? err, string? code
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
  local f, oerr = io.open(ova_path, "rb")
  if not f then return fail(("deploy: %s: %s"):format(ova_path, oerr), "EIO") end
  f:seek("set", desc.offset)
  local text = f:read(desc.size)
  f:close()
  if not text or #text ~= desc.size then
    return fail(("deploy: %s: the descriptor is truncated"):format(ova_path), "EOVA")
  end
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
  -- the OVF's firmware, whatever the server made of it: vCenter has deployed
  -- EFI OVAs as BIOS (image-builder #619), and govmomi's simulator never
  -- reads vmw:Config firmware into the import spec
  local cs = spec.importSpec and spec.importSpec.configSpec
  if facts.hardware.firmware == "efi" and type(cs) == "table" and cs.firmware ~= "efi" then
    log.info("deploy %s: the OVF declares EFI firmware; the server's import spec says %s: importing as EFI", name,
      tostring(cs.firmware or "nothing"))
    cs.firmware = "efi"
  end
  local files = {}
  for _, item in ipairs(vim25.list(spec.fileItem)) do files[item.deviceId] = item end
  local lref
  lref, err, code = vc:call("ImportVApp", inv.pool, { spec = spec.importSpec, folder = inv.folder, host = inv.host })
  if not lref then return nil, ("deploy %s: ImportVApp: %s"):format(name, err), code end
  local lease
  lease, err, code = lease_mod.open(vc, lref, "deploy " .. name)
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
  local vm = { ref = ref, name = name }
  if opts.template then
    local _, terr, tcode = vc:call("MarkAsTemplate", ref, {})
    if terr then return nil, ("deploy %s: MarkAsTemplate: %s"):format(name, terr), tcode end
  end
  log.info("deploy %s: %s %s created", name, opts.template and "template" or "VM", tostring(ref))
  return vm
end

return M
