--- capil.vsphere.inventory — placement in a vSphere inventory: the
--- datacenter, VM folder, compute resource (cluster or host), resource
--- pool, datastore and network a build or an import uses, found by the
--- names in a backend's settings, with what exists named when one is not.
local vim25 = require("capil.vsphere.vim25")
local log = require("capil.sys.log")

local M = {}

local function fail(msg, code) return nil, msg, code or "EVSPHERE" end

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

--- An absolute inventory path, or one relative to base.
---@param base string
---@param p string
---@return string
function M.under(base, p)
  if p:sub(1, 1) == "/" then return p end
  return base .. "/" .. p
end

-- The path of the datacenter s names, or of the only one: "/DC0" or nil,
-- err, code (naming `var` when there are several).
local function datacenter_path(vc, s, var)
  local dc_name = s.datacenter
  if not dc_name then
    local dcs, err, code = children(vc, vc.content.rootFolder, "Datacenter")
    if not dcs then return nil, err, code end
    local list = {}
    for n in pairs(dcs) do list[#list + 1] = n end
    if #list ~= 1 then
      return fail(("%s: %d datacenters (%s): set %s"):format(s.server, #list, names(dcs), var), "ECONFIG")
    end
    dc_name = list[1]
  end
  return dc_name:sub(1, 1) == "/" and dc_name or "/" .. dc_name
end

--- The datastore named `name` (or settings' datastore) of the datacenter
--- in `s` (or the only one): its Ref and the datacenter's path; what exists
--- is named when it is not found. For callers that need a datastore but no
--- compute placement (capil publish --create-library).
---@param vc table a capil.vsphere.vim25 session
---@param s table the backend's settings (datacenter, datastore, server)
---@param name? string
---@return capil.vsphere.vim25.Ref|nil ds, string? err_or_dc_path, string? code
function M.datastore(vc, s, name)
  name = name or s.datastore
  if not name or name == "" then return fail("no datastore: set datastore", "ECONFIG") end
  local dc_path, err, code = datacenter_path(vc, s, "datacenter")
  if not dc_path then return nil, err, code end
  local ds
  ds, err, code = find(vc, M.under(dc_path .. "/datastore", name), "datastore", "datastore")
  if not ds then return nil, err, code end
  return ds, dc_path
end

-- The compute resource (cluster, host, or the only one) and its resource
-- pool: compute, pool, host? or nil, err, code.
local function compute_of(vc, s, dc_path)
  local compute, host, err, code
  if s.cluster then
    compute, err, code = find(vc, M.under(dc_path .. "/host", s.cluster), "cluster", s.var("cluster"))
    if not compute then return nil, err, code end
  elseif s.host then
    local r = vc:find(M.under(dc_path .. "/host", s.host))
    if r and r.type == "HostSystem" then
      host = r
      local p, perr, pcode = vc:props(r, { "parent" })
      if not p then return nil, perr, pcode end
      compute = p.parent
    elseif r then
      compute = r
      local p = vc:props(r, { "host" })
      host = p and vim25.list(p.host)[1]
    else
      -- a host inside a cluster: /dc/host/<cluster>/<host>
      local hosts, herr, hcode = vc:find(dc_path .. "/host")
      if not hosts then return nil, herr, hcode end
      local clusters = children(vc, hosts) or {}
      for cname in pairs(clusters) do
        local h = vc:find(dc_path .. "/host/" .. cname .. "/" .. s.host)
        if h and h.type == "HostSystem" then
          host, compute = h, clusters[cname]
          break
        end
      end
      if not compute then
        return fail(("host %s not found under %s/host (there: %s); check %s"):format(s.host, dc_path, names(clusters), s.var("host")),
          "ENOENT")
      end
    end
  else
    local hosts, herr, hcode = vc:find(dc_path .. "/host")
    if not hosts then return nil, herr, hcode end
    local all = children(vc, hosts) or {}
    local list = {}
    for n in pairs(all) do list[#list + 1] = n end
    if #list ~= 1 then
      return fail(("%s: %d compute resources (%s): set %s or %s"):format(dc_path, #list, names(all),
        s.var("cluster"), s.var("host")), "ECONFIG")
    end
    compute = all[list[1]]
  end
  local pool
  if s.resource_pool then
    local c, cerr, ccode = vc:props(compute, { "name" })
    if not c then return nil, cerr, ccode end
    pool, err, code = find(vc, M.under(dc_path .. "/host/" .. c.name .. "/Resources", s.resource_pool),
      "resource pool", s.var("resource_pool"))
    if not pool then return nil, err, code end
  else
    local p, perr, pcode = vc:props(compute, { "resourcePool" })
    if not p then return nil, perr, pcode end
    pool = p.resourcePool
  end
  return compute, pool, host
end

-- The datastore, named or the only one: ref, name or nil, err, code.
local function datastore_of(vc, s, dc_path)
  local ds_name = s.datastore
  if not ds_name then
    local folder, ferr, fcode = vc:find(dc_path .. "/datastore")
    if not folder then return nil, ferr, fcode end
    local all = children(vc, folder, "Datastore") or {}
    local list = {}
    for n in pairs(all) do list[#list + 1] = n end
    if #list ~= 1 then
      return fail(("%s: %d datastores (%s): set %s"):format(dc_path, #list, names(all), s.var("datastore")), "ECONFIG")
    end
    ds_name = list[1]
  end
  local ref, err, code = find(vc, M.under(dc_path .. "/datastore", ds_name), "datastore", s.var("datastore"))
  if not ref then return nil, err, code end
  return ref, ds_name:match("([^/]+)$")
end

-- The network (named, else "VM Network") with its NIC backing:
-- {ref, name, backing} or nil, err, code.
local function network_of(vc, s, dc_path)
  local net_name = s.network or "VM Network"
  local net, err, code = find(vc, M.under(dc_path .. "/network", net_name), "network", s.var("network"))
  if not net then return nil, err, code end
  local out = { ref = net, name = net_name:match("([^/]+)$") }
  if net.type == "DistributedVirtualPortgroup" then
    local p, perr, pcode = vc:props(net, { "key", "config.distributedVirtualSwitch" })
    if not p then return nil, perr, pcode end
    local sw, serr, scode = vc:props(p["config.distributedVirtualSwitch"], { "uuid" })
    if not sw then return nil, serr, scode end
    out.backing = vim25.obj("VirtualEthernetCardDistributedVirtualPortBackingInfo", {
      port = vim25.obj("DistributedVirtualSwitchPortConnection", { switchUuid = sw.uuid, portgroupKey = p.key }) })
  else
    out.backing = vim25.obj("VirtualEthernetCardNetworkBackingInfo", { deviceName = out.name, network = net })
  end
  return out
end

--- Resolves the placement: {datacenter, dc_name, dc_path, folder, compute,
--- pool, host?, datastore, ds_name, network = {ref, name, backing}}. `s`
--- holds the names (datacenter, folder, cluster, host, resource_pool,
--- datastore, network; each may be unset when there is only one).
--- Past the datacenter every part is looked up, so a failure lists every
--- problem at once (a wrong datastore and a wrong network, one per line);
--- the fourth value is that list. Messages name the variable to check:
--- `opts.vars` maps a setting to it where it is not the setting's name
--- (the esx backend's datastore is remote_datastore).
---@param vc table a capil.vsphere.vim25 session
---@param s table the backend's settings
---@param opts? {vars?: table<string, string>}
---@return table|nil inv, string? err, string? code, string[]? problems
function M.resolve(vc, s, opts)
  local vars = opts and opts.vars or {}
  -- the settings with var(name): the variable a message tells the user to check
  s = setmetatable({ var = function(name) return vars[name] or name end }, { __index = s })
  local inv = {}
  local dc_path, err, code = datacenter_path(vc, s, s.var("datacenter"))
  if not dc_path then return nil, err, code, { err } end
  inv.datacenter, err, code = find(vc, dc_path, "datacenter", s.var("datacenter"))
  if not inv.datacenter then return nil, err, code, { err } end
  inv.dc_name = dc_path:match("([^/]+)$")
  inv.dc_path = dc_path

  local problems, first_code = {}, nil
  local function check(v, e, c)
    if v == nil then
      problems[#problems + 1] = e
      first_code = first_code or c
    end
    return v
  end
  inv.folder = check(find(vc, s.folder and M.under(dc_path .. "/vm", s.folder) or dc_path .. "/vm", "folder", s.var("folder")))
  local compute, pool, host = compute_of(vc, s, dc_path)
  inv.compute = check(compute, pool, host)
  if compute then inv.pool, inv.host = pool, host end
  local ds, ds_name, ds_code = datastore_of(vc, s, dc_path)
  inv.datastore = check(ds, ds_name, ds_code)
  if ds then inv.ds_name = ds_name end
  inv.network = check(network_of(vc, s, dc_path))
  if #problems > 0 then return nil, table.concat(problems, "\n"), first_code, problems end
  log.info("%s: datacenter %s, datastore %s, network %s", s.server, inv.dc_name, inv.ds_name, inv.network.name)
  return inv
end

return M
