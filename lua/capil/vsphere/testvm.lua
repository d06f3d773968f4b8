--- capil.vsphere.testvm — what `capil test` and `capil ssh` need of an
--- existing VM: finding it by name anywhere in a datacenter's VM folders
--- (similar names hinted when none matches), and image-builder's
--- image-govc-cloudinit.sh through the API (snapshots "new" and
--- "cloudinit", base64 guestinfo user-data and meta-data). A VM object to
--- drive one is capil.backends.vsphere.attach.
local vim25 = require("capil.vsphere.vim25")
local inventory = require("capil.vsphere.inventory")
local text = require("capil.util.text")
local log = require("capil.sys.log")

local M = {}

local function fail(msg, code) return nil, msg, code or "EVSPHERE" end

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

--- The VM named `name` in the resolved inventory (inv from inventory.resolve),
--- searched in the whole vmFolder tree of inv.datacenter. A name with a "/"
--- is an inventory path under the datacenter's vm folder ("team/node-1").
--- Not found: nil, "vsphere: no VM named 'x' in datacenter D" (with similar
--- names, if any), "ENOTFOUND"; several VMs of that name: "EAMBIGUOUS".
---@param vc table a capil.vsphere.vim25 session
---@param inv table from capil.vsphere.inventory.resolve
---@param name string
---@return capil.vsphere.vim25.Ref|nil ref, string? err, string? code
function M.find_vm(vc, inv, name)
  if type(name) ~= "string" or name == "" then error("vsphere.find_vm: name must be a non-empty string", 2) end
  local where = ("in datacenter %s"):format(inv.dc_name)
  if name:find("/", 1, true) then
    local ref, err, code = vc:find(inventory.under(inv.dc_path .. "/vm", name))
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
  local like = text.similar(name, vm_names, 3)
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
  require("capil.util.opts").check(opts, CLOUDINIT_OPTS, "vsphere.cloudinit")
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

return M
