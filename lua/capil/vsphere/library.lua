--- capil.vsphere.library — vSphere content libraries over the REST API
--- (capil.vsphere.rest): find or create a local library, find or create an
--- item of type `ovf`, and publish an OVA into it through an update
--- session: one file added per OVA member the item needs (the descriptor and
--- the disks it references), each streamed straight out of the OVA by offset
--- with its SHA-256 checked against the manifest, then the session completed
--- and polled until it is DONE and the item lists every file stored.
---
--- Idempotence: the item's description carries `sha256:<hex>` of the OVA
--- it holds, written only once the content is ready. Publishing the same
--- OVA again finds it and opens no update session; a changed OVA goes into a
--- new update session on the same item (same item id, content replaced).
---
--- Failure (an HTTP error, a digest mismatch, a dropped connection, Ctrl-C:
--- every step registers a capil.sys.cleanup): the update session is
--- cancelled and deleted, an item this publish created is deleted, and so
--- is a library it created. An item that existed keeps its old content.
---
--- From a VM and to a VM (the vCenter OVF and VM template services): an
--- item made from a VM (`create_from_vm`: an OVF package, type ovf, through
--- the OVF library item service, or a VM template, type vmtx, through the
--- VM template library items service), and a VM deployed from an ovf item
--- (`deploy_item`: the OVF deploy action with the placement of
--- capil.vsphere.inventory.resolve).
---
--- Every call is an operation of capil.vsphere.rest's table (`c:op(name,
--- args)`), sent in the client's flavor: `/api/...` on vSphere 7.0 U2 and
--- later, `/rest/...` before; the calls here give the operation's
--- structure once and the table writes it in either form.
local http = require("capil.sys.http")
local log = require("capil.sys.log")
local cleanup = require("capil.sys.cleanup")
local runtime = require("capil.core.runtime")

local M = {}

local function fail(msg, code) return nil, msg, code or "ELIBRARY" end

-- A client token: the server treats repeated creates with one token as one.
local function token()
  return ("%08x-%04x-4%03x-%04x-%012x"):format(math.random(0, 0xffffffff), math.random(0, 0xffff),
    math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff), math.random(0, 0xffffffffffff))
end

-- A list answer (an absent value is an empty list).
local function list(v)
  if type(v) == "table" then return v end
  return {}
end

--- The id of the library named `name`, or nil (and no error) when there is
--- none; two with that name is an error.
---@param c table a capil.vsphere.rest client
---@param name string
---@return string|nil id, string? err, string? code
function M.find_library(c, name)
  local ids, err, code = c:op("library_find", { body = { name = name } })
  if not ids then return nil, ("library %s: %s"):format(name, err), code end
  ids = list(ids)
  if #ids > 1 then
    return fail(("library %s: %d libraries have that name (%s): rename one"):format(name, #ids,
      table.concat(ids, ", ")), "EAMBIGUOUS")
  end
  return ids[1]
end

--- Creates a local library `name` on the datastore whose managed object id
--- is `datastore_id` ("datastore-12"); returns its id.
---@param c table
---@param name string
---@param datastore_id string
---@return string|nil id, string? err, string? code
function M.create_library(c, name, datastore_id)
  local id, err, code = c:op("library_create", { token = token(),
    body = { name = name, type = "LOCAL", description = "created by capil publish",
      storage_backings = { { type = "DATASTORE", datastore_id = datastore_id } } } })
  if not id then return nil, ("library %s: create: %s"):format(name, err), code end
  if type(id) ~= "string" then return fail(("library %s: create answered no id"):format(name), "EPROTO") end
  return id
end

--- Deletes the local library `id` and its items.
---@param c table
---@param id string
---@return boolean|nil ok, string? err, string? code
function M.delete_library(c, id)
  local ok, err, code = c:op("library_delete", { id = id })
  if not ok then return nil, ("library %s: delete: %s"):format(id, err), code end
  return true
end

--- The id of item `name` of library `library_id`, or nil when there is none.
---@param c table
---@param library_id string
---@param name string
---@return string|nil id, string? err, string? code
function M.find_item(c, library_id, name)
  local ids, err, code = c:op("item_find", { body = { library_id = library_id, name = name } })
  if not ids then return nil, ("item %s: %s"):format(name, err), code end
  return list(ids)[1]
end

--- The item's info: {id, name, type, description, content_version, ...}.
---@param c table
---@param id string
---@return table|nil item, string? err, string? code
function M.get_item(c, id)
  local item, err, code = c:op("item_get", { id = id })
  if not item then return nil, ("item %s: %s"):format(id, err), code end
  if type(item) ~= "table" then return fail(("item %s: the server answered no item"):format(id), "EPROTO") end
  return item
end

--- Creates an item of type `ovf` in library `library_id`; returns its id.
---@param c table
---@param library_id string
---@param name string
---@param description? string
---@return string|nil id, string? err, string? code
function M.create_item(c, library_id, name, description)
  local id, err, code = c:op("item_create", { token = token(),
    body = { library_id = library_id, name = name, type = "ovf", description = description or "" } })
  if not id then return nil, ("item %s: create: %s"):format(name, err), code end
  if type(id) ~= "string" then return fail(("item %s: create answered no id"):format(name), "EPROTO") end
  return id
end

--- Sets the item's description.
---@param c table
---@param id string
---@param description string
---@return boolean|nil ok, string? err, string? code
function M.set_description(c, id, description)
  local ok, err, code = c:op("item_update", { id = id, body = { description = description } })
  if not ok then return nil, ("item %s: update: %s"):format(id, err), code end
  return true
end

--- Deletes item `id`.
---@param c table
---@param id string
---@return boolean|nil ok, string? err, string? code
function M.delete_item(c, id)
  local ok, err, code = c:op("item_delete", { id = id })
  if not ok then return nil, ("item %s: delete: %s"):format(id, err), code end
  return true
end

--- The item's files: {{name, size, cached, version}, ...}.
---@param c table
---@param id string
---@return table[]|nil files, string? err, string? code
function M.item_files(c, id)
  local files, err, code = c:op("item_files", { id = id })
  if not files then return nil, ("item %s: files: %s"):format(id, err), code end
  return list(files)
end

--- Opens an update session on item `item_id`; returns its id.
---@param c table
---@param item_id string
---@return string|nil id, string? err, string? code
function M.create_session(c, item_id)
  local id, err, code = c:op("session_create", { token = token(), body = { library_item_id = item_id } })
  if not id then return nil, ("item %s: update session: %s"):format(item_id, err), code end
  if type(id) ~= "string" then return fail(("item %s: update session answered no id"):format(item_id), "EPROTO") end
  return id
end

--- The update session's info: {id, state = ACTIVE|DONE|ERROR|CANCELED, error_message?, ...}.
---@param c table
---@param id string
---@return table|nil session, string? err, string? code
function M.get_session(c, id)
  local s, err, code = c:op("session_get", { id = id })
  if not s then return nil, ("update session %s: %s"):format(id, err), code end
  if type(s) ~= "table" then return fail(("update session %s: the server answered no session"):format(id), "EPROTO") end
  return s
end

--- `action` ("complete", "cancel", "fail", "keep-alive") on update session `id`.
---@param c table
---@param id string
---@param action string
---@return boolean|nil ok, string? err, string? code
function M.session_action(c, id, action)
  local ok, err, code = c:op("session_action", { id = id, action = action })
  if not ok then return nil, ("update session %s: %s: %s"):format(id, action, err), code end
  return true
end

--- Deletes update session `id`.
---@param c table
---@param id string
---@return boolean|nil ok, string? err, string? code
function M.delete_session(c, id)
  local ok, err, code = c:op("session_delete", { id = id })
  if not ok then return nil, ("update session %s: delete: %s"):format(id, err), code end
  return true
end

--- Adds file `name` (`size` bytes, `sha256` hex) to update session `id`,
--- pushed by the client; returns the file's info with `upload_endpoint.uri`.
---@param c table
---@param id string
---@param name string
---@param size integer
---@param sha256 string
---@return table|nil info, string? err, string? code
function M.add_file(c, id, name, size, sha256)
  local info, err, code = c:op("session_file_add", { id = id, body = {
    name = name, source_type = "PUSH", size = size, checksum_info = { algorithm = "SHA256", checksum = sha256 } } })
  if not info then return nil, ("update session %s: add %s: %s"):format(id, name, err), code end
  if type(info) ~= "table" or info.status == "ERROR" then
    local why = type(info) == "table" and type(info.error_message) == "table" and info.error_message.default_message
    return fail(("update session %s: add %s: %s"):format(id, name, why or "the server refused the file"), "ELIBRARY")
  end
  local uri = type(info.upload_endpoint) == "table" and info.upload_endpoint.uri
  if type(uri) ~= "string" then
    return fail(("update session %s: add %s: no upload endpoint in the answer"):format(id, name), "EPROTO")
  end
  return info
end

--- Polls update session `id` every `interval` s (default 1) until it
--- leaves ACTIVE, at most `timeout` s (default 1800): DONE returns true;
--- ERROR or CANCELED fail with the server's message; a timeout fails ETIMEDOUT.
---@param c table
---@param id string
---@param opts? {timeout?: number, interval?: number}
---@return boolean|nil ok, string? err, string? code
function M.wait_session(c, id, opts)
  opts = opts or {}
  local deadline = runtime.now() + (opts.timeout or 1800)
  while true do
    local s, err, code = M.get_session(c, id)
    if not s then return nil, err, code end
    if s.state == "DONE" then return true end
    if s.state ~= "ACTIVE" then
      local why = type(s.error_message) == "table" and s.error_message.default_message
      return fail(("update session %s ended %s%s"):format(id, tostring(s.state), why and ": " .. why or ""),
        "ELIBRARY")
    end
    if runtime.now() >= deadline then
      return fail(("update session %s still ACTIVE after %g s"):format(id, opts.timeout or 1800), "ETIMEDOUT")
    end
    local ok, serr, scode = runtime.sleep(opts.interval or 1)
    if not ok then return nil, serr, scode end
  end
end

--- Polls the files of item `id` until every name of `names` is listed and
--- none of them says `cached = false` (the server still storing it), at
--- most `timeout` s (default 600), every `interval` s (default 1).
---@param c table
---@param id string
---@param names string[]
---@param opts? {timeout?: number, interval?: number}
---@return boolean|nil ok, string? err, string? code
function M.wait_files(c, id, names, opts)
  opts = opts or {}
  local deadline = runtime.now() + (opts.timeout or 600)
  while true do
    local have, err, code = M.item_files(c, id)
    if not have then return nil, err, code end
    local by_name = {}
    for _, f in ipairs(have) do by_name[f.name] = f end
    local waiting
    for _, n in ipairs(names) do
      local f = by_name[n]
      if not f then
        waiting = n .. " is not among the item's files"
      elseif f.cached == false then
        waiting = n .. " is not stored yet (cached = false)"
      end
      if waiting then break end
    end
    if not waiting then return true end
    if runtime.now() >= deadline then
      return fail(("item %s: after %g s %s"):format(id, opts.timeout or 600, waiting), "ETIMEDOUT")
    end
    local ok, serr, scode = runtime.sleep(opts.interval or 1)
    if not ok then return nil, serr, scode end
  end
end

--- The OVA sha256 recorded in an item description, or nil.
---@param description? string
---@return string|nil
function M.recorded_sha256(description)
  return type(description) == "string" and description:match("sha256:(%x+)") or nil
end

--- The description capil writes on a published item.
---@param ova_name string
---@param sha256 string
---@return string
function M.description(ova_name, sha256)
  return ("%s published by capil; sha256:%s"):format(ova_name, sha256)
end

-- What of the OVA goes into the item: the descriptor, then the files its
-- References name, each {name, offset, size, sha256} (the digest the
-- verified manifest holds).
local function payload(ova_path, report)
  local ova = require("capil.format.ova")
  local members, err, code = ova.members(ova_path)
  if not members then return nil, err, code end
  local digests = {}
  for _, m in ipairs(report.members) do digests[m.name] = m.sha256 end
  local out = {}
  local refs = {}
  for _, f in ipairs(report.ovf and report.ovf.references or {}) do
    if f.href then refs[f.href] = true end
  end
  for _, m in ipairs(members) do
    if m.name:match("%.ovf$") or refs[m.name] then
      if not digests[m.name] then
        return fail(("%s: member %s has no digest in the manifest"):format(ova_path, m.name), "EOVA")
      end
      out[#out + 1] = { name = m.name, offset = m.offset, size = m.size, sha256 = digests[m.name] }
    end
  end
  if #out < 2 or not out[1].name:match("%.ovf$") then
    return fail(("%s: no descriptor and disks to publish"):format(ova_path), "EOVA")
  end
  return out
end

---@class capil.vsphere.library.PublishOptions
---@field library string          the library's name
---@field item string             the item's name
---@field datastore_id? string|fun(): string|nil, string?, string?  create the library on this datastore (its managed object id, or a function finding it) when it does not exist
---@field wait_timeout? number    seconds to wait for the files to be ready (default 1800)
---@field upload_timeout? number  seconds per file (default 7200)
---@field poll_interval? number   seconds between polls (default 1)

--- Publishes the OVA at `ova_path` (already verified: `report` from
--- capil.format.ova.verify with sha256) into item `opts.item` of library
--- `opts.library`; see the module comment. Returns
--- {library_id, item_id, changed = false|true, created_library, created_item}.
---@param c table a capil.vsphere.rest client
---@param ova_path string
---@param report table
---@param opts capil.vsphere.library.PublishOptions
---@return table|nil result, string? err, string? code
function M.publish(c, ova_path, report, opts)
  local files, perr, pcode = payload(ova_path, report)
  if not files then return nil, perr, pcode end
  local sha = assert(report.sha256, "library.publish: the report has no sha256")
  local undo = {} -- cleanup handles, run in reverse on failure
  local function failed(err, code)
    for i = #undo, 1, -1 do
      local ok, uerr = undo[i]:run()
      if not ok then log.warn("publish: undoing %s failed: %s", undo[i].what, tostring(uerr)) end
    end
    return nil, err, code
  end
  local function undo_with(what, fn)
    undo[#undo + 1] = cleanup.push(what, function()
      local ok, err = fn()
      if not ok then log.warn("%s", err) else log.info("publish: undone: %s", what) end
    end)
  end
  local res = { created_library = false, created_item = false, changed = false }

  local lib, err, code = M.find_library(c, opts.library)
  if err then return nil, err, code end
  if not lib then
    if not opts.datastore_id then
      return fail(("library %s not found on %s: create it, or pass --create-library --datastore DS"):format(
        opts.library, c.base), "ENOENT")
    end
    local ds = opts.datastore_id
    if type(ds) == "function" then
      ds, err, code = ds()
      if not ds then return nil, err, code end
    end
    lib, err, code = M.create_library(c, opts.library, ds)
    if not lib then return nil, err, code end
    res.created_library = true
    log.info("publish: created library %s (%s)", opts.library, lib)
    undo_with(("library %s created by this publish"):format(opts.library), function()
      return M.delete_library(c, lib)
    end)
  end
  res.library_id = lib

  local item_id
  item_id, err, code = M.find_item(c, lib, opts.item)
  if err then return failed(err, code) end
  if item_id then
    local item
    item, err, code = M.get_item(c, item_id)
    if not item then return failed(err, code) end
    if M.recorded_sha256(item.description) == sha then
      res.item_id = item_id
      for _, h in ipairs(undo) do h:cancel() end
      return res
    end
  else
    item_id, err, code = M.create_item(c, lib, opts.item, ("%s being published by capil"):format(opts.item))
    if not item_id then return failed(err, code) end
    res.created_item = true
    undo_with(("item %s created by this publish"):format(opts.item), function() return M.delete_item(c, item_id) end)
  end
  res.item_id = item_id

  local sid
  sid, err, code = M.create_session(c, item_id)
  if not sid then return failed(err, code) end
  undo_with(("update session %s of item %s"):format(sid, opts.item), function()
    local ok, cerr = M.session_action(c, sid, "cancel")
    if not ok then log.debug("%s", cerr) end
    return M.delete_session(c, sid)
  end)

  local total = 0
  for _, f in ipairs(files) do total = total + f.size end
  log.info("publish: %s -> library %s, item %s: %d files, %d bytes", ova_path, opts.library, opts.item,
    #files, total)
  for _, f in ipairs(files) do
    local info
    info, err, code = M.add_file(c, sid, f.name, f.size, f.sha256)
    if not info then return failed(err, code) end
    local uri = info.upload_endpoint.uri
    local progress <close> = log.progress({ label = "publish " .. f.name, total = f.size })
    local r, uerr, ucode, uresp = http.request(c:http_opts({
      method = "PUT", url = uri, body_file = ova_path, body_offset = f.offset, body_length = f.size,
      sha256 = f.sha256, progress = progress, timeout = opts.upload_timeout or 7200,
      headers = { ["Content-Type"] = "application/octet-stream" }, retries = 0,
    }))
    if not r then
      local why = uresp and require("capil.vsphere.rest").server_message(uresp.body)
      return failed(("item %s: upload %s to %s: %s%s"):format(opts.item, f.name, http.redact_url(uri),
        (uerr:gsub("^http%.request: %u+ %S+: ", "")), why and ": " .. why or ""), ucode)
    end
    log.info("publish: sent %s (%d bytes, sha256 %s)", f.name, f.size, f.sha256)
  end
  local ok
  ok, err, code = M.session_action(c, sid, "complete")
  if not ok then return failed(err, code) end
  ok, err, code = M.wait_session(c, sid, { timeout = opts.wait_timeout, interval = opts.poll_interval })
  if not ok then return failed(("item %s: %s"):format(opts.item, err), code) end
  local names = {}
  for _, f in ipairs(files) do names[#names + 1] = f.name end
  ok, err, code = M.wait_files(c, item_id, names, { timeout = opts.wait_timeout and math.min(opts.wait_timeout, 600),
    interval = opts.poll_interval })
  if not ok then return failed(("item %s: %s"):format(opts.item, err), code) end
  ok, err, code = M.set_description(c, item_id, M.description(require("capil.sys.fs").basename(ova_path), sha))
  if not ok then return failed(err, code) end
  -- done: nothing to undo; the finished session is removed
  for _, h in ipairs(undo) do h:cancel() end
  ok, err = M.delete_session(c, sid)
  if not ok then log.debug("%s", err) end
  res.changed = true
  return res
end

--- The ids of library `library` and its item `item`, by name; either
--- missing is ENOENT, naming both and the server.
---@param c table a capil.vsphere.rest client
---@param library string
---@param item string
---@return string|nil library_id, string|nil item_id, string? err, string? code
function M.lookup(c, library, item)
  local lib, err, code = M.find_library(c, library)
  if err then return nil, nil, err, code end
  if not lib then
    return nil, nil, ("library %s not found on %s: check the name (or publish into it first)"):format(library,
      c.base), "ENOENT"
  end
  local id
  id, err, code = M.find_item(c, lib, item)
  if err then return nil, nil, err, code end
  if not id then
    return nil, nil, ("library %s has no item %s on %s: check the name, or publish it (capil publish OVA "
      .. "--library %s --item %s)"):format(library, item, c.base, library, item), "ENOENT"
  end
  return lib, id
end

-- The server's words in a vcenter OVF answer's error ({errors = {{error =
-- {messages}}, {message}}}), or nil.
local function ovf_error(e)
  if type(e) ~= "table" then return nil end
  local out = {}
  for _, x in ipairs(list(e.errors)) do
    local m = type(x.message) == "table" and x.message.default_message
    if not m and type(x.error) == "table" then
      for _, mm in ipairs(list(x.error.messages)) do m = m or mm.default_message end
    end
    if m then out[#out + 1] = m end
  end
  return #out > 0 and table.concat(out, "; ") or nil
end

---@class capil.vsphere.library.DeployOptions
---@field name string            the new VM's name
---@field inv table              placement (capil.vsphere.inventory.resolve)
---@field network_names? string[] the OVF's networks (default: what the server's filter names), all mapped to inv.network

--- Deploys ovf item `item_id` as VM `opts.name` (thin disks) in the
--- resolved placement (`opts.inv`: datastore, resource pool, folder, host;
--- every OVF network mapped to its network). Returns the VM's Ref.
---@param c table a capil.vsphere.rest client
---@param item_id string
---@param opts capil.vsphere.library.DeployOptions
---@return capil.vsphere.vim25.Ref|nil vm, string? err, string? code
function M.deploy_item(c, item_id, opts)
  local vim25 = require("capil.vsphere.vim25")
  local inv = opts.inv
  local what = ("item %s: deploy %s"):format(item_id, opts.name)
  local target = { resource_pool_id = inv.pool.value, folder_id = inv.folder and inv.folder.value,
    host_id = inv.host and inv.host.value }
  local nets = opts.network_names
  if not nets then
    local f, err = c:op("ovf_filter", { id = item_id, body = { target = target } })
    nets = type(f) == "table" and list(f.networks) or {}
    if not f then log.debug("%s: filter: %s (no network mapping)", what, err) end
  end
  -- OVF network name -> network id (a map: the operation table writes it
  -- as /rest's list of {key, value} or /api's JSON object)
  local mappings = {}
  for _, n in ipairs(nets) do
    if inv.network then mappings[n] = inv.network.ref.value end
  end
  local d, err, code = c:op("ovf_deploy", { id = item_id, body = {
    target = target,
    deployment_spec = { name = opts.name, accept_all_EULA = true, storage_provisioning = "thin",
      default_datastore_id = inv.datastore.value, network_mappings = mappings },
  } }, { timeout = 3600 })
  if not d then return nil, ("%s: %s"):format(what, err), code end
  if type(d) ~= "table" or not d.succeeded then
    local why = type(d) == "table" and ovf_error(d.error)
    return fail(("%s: the server did not deploy it%s"):format(what, why and ": " .. why or ""), "EDEPLOY")
  end
  local r = d.resource_id
  if type(r) ~= "table" or type(r.id) ~= "string" then
    return fail(("%s: the answer names no VM"):format(what), "EPROTO")
  end
  return vim25.ref(r.type or "VirtualMachine", r.id)
end

--- Deploys item `item` of library `library` (by name; see M.lookup) as
--- VM `opts.name` (default: the item's name) in placement `inv`. Returns
--- the VM's Ref and name.
---@param c table a capil.vsphere.rest client
---@param inv table from capil.vsphere.inventory.resolve
---@param library string
---@param item string
---@param opts? {name?: string}
---@return capil.vsphere.vim25.Ref|nil vm, string|nil name, string? err, string? code
function M.deploy(c, inv, library, item, opts)
  local _, id, err, code = M.lookup(c, library, item)
  if not id then return nil, nil, err, code end
  local name = opts and opts.name or item
  log.info("deploy: library %s, item %s (%s) as %s", library, item, id, name)
  local vm
  vm, err, code = M.deploy_item(c, id, { name = name, inv = inv })
  if not vm then return nil, nil, ("library %s, %s"):format(library, err), code end
  log.info("deploy %s: VM %s created from library %s, item %s", name, tostring(vm), library, item)
  return vm, name
end

--- A `datastore_id` for M.publish: a function that finds datastore `name`
--- (default: the settings' datastore) over a vim25 session of its own,
--- called only when the library has to be created.
---@param s table live vSphere settings
---@param name? string
---@return fun(): string|nil, string?, string?
function M.datastore_finder(s, name)
  return function()
    local session = require("capil.vsphere.session")
    local vc, err, code = session.connect(s, { kind = "vsphere" })
    if not vc then return nil, err, code end
    local ref, derr, dcode = require("capil.vsphere.inventory").datastore(vc, s, name or s.datastore)
    vc:logout()
    if not ref then return nil, derr, dcode end
    return ref.value
  end
end

--- `capil run`'s publish stage: verifies the OVA at `ova_path` (sha256),
--- opens a REST session with the vSphere settings `s` and publishes the
--- OVA into item `opts.item` of library `opts.library` (M.publish), then
--- logs out. Returns what a report records: {library, library_id, item,
--- item_id, content_version, sha256, changed, created_library}.
--- `create_library`: create the library when it does not exist, on
--- `datastore` (default: the settings' datastore).
---@param s table live vSphere settings (capil.backend.live_settings)
---@param ova_path string
---@param opts {library: string, item: string, create_library?: boolean, datastore?: string, secret?: fun(var: string): string|nil}
---@return table|nil record, string? err, string? code
function M.publish_ova(s, ova_path, opts)
  local ova = require("capil.format.ova")
  local report, err, code = ova.verify(ova_path, { sha256 = true, progress = true })
  if not report then return nil, err, code end
  if not report.ok then
    return fail(("%s fails verification:\n  %s"):format(ova_path, table.concat(report.problems, "\n  ")), "EOVA")
  end
  local c
  c, err, code = require("capil.vsphere.session").rest(s, { kind = "vsphere", secret = opts.secret })
  if not c then return nil, err, code end
  local res
  res, err, code = M.publish(c, ova_path, report, { library = opts.library, item = opts.item,
    datastore_id = opts.create_library and M.datastore_finder(s, opts.datastore) or nil })
  if not res then
    c:logout()
    return nil, err, code
  end
  local item = M.get_item(c, res.item_id)
  c:logout()
  return { library = opts.library, library_id = res.library_id, item = opts.item, item_id = res.item_id,
    content_version = item and item.content_version, sha256 = report.sha256, changed = res.changed,
    created_library = res.created_library or nil }
end

---@class capil.vsphere.library.FromVmOptions
---@field library string       the library's name (it must exist)
---@field item string          the item's name
---@field type? "ovf"|"vmtx"   an OVF package (default) or a VM template
---@field description? string
---@field inv? table           placement of a vmtx template (capil.vsphere.inventory.resolve)

--- Makes item `opts.item` of library `opts.library` from VM `vm_id`
--- ("vm-42"), as Packer's content_library_destination: type ovf (an OVF
--- package of the VM; an existing ovf item of that name gets the new
--- content) or vmtx (a VM template cloned into the library; an existing
--- item of that name is an error: remove it first). Returns {library_id,
--- item_id, type, updated = true when an item existed}.
---@param c table a capil.vsphere.rest client
---@param vm_id string
---@param opts capil.vsphere.library.FromVmOptions
---@return table|nil result, string? err, string? code
function M.create_from_vm(c, vm_id, opts)
  local kind = opts.type or "ovf"
  if kind ~= "ovf" and kind ~= "vmtx" then
    return fail(("library %s, item %s: type %s: use ovf or vmtx"):format(opts.library, opts.item, tostring(kind)),
      "ECONFIG")
  end
  local lib, err, code = M.find_library(c, opts.library)
  if err then return nil, err, code end
  if not lib then
    return fail(("library %s not found on %s: create it (capil publish --create-library, or the vSphere client)")
      :format(opts.library, c.base), "ENOENT")
  end
  local existing
  existing, err, code = M.find_item(c, lib, opts.item)
  if err then return nil, err, code end
  local res = { library_id = lib, type = kind, updated = existing ~= nil }
  local what = ("library %s, item %s from VM %s"):format(opts.library, opts.item, vm_id)
  if kind == "ovf" then
    local body = { source = { type = "VirtualMachine", id = vm_id },
      target = existing and { library_item_id = existing } or { library_id = lib },
      create_spec = { name = opts.item, description = opts.description or "" } }
    local r
    r, err, code = c:op("ovf_create", { token = token(), body = body }, { timeout = 7200 })
    if not r then return nil, ("%s: %s"):format(what, err), code end
    if type(r) == "table" and r.succeeded == false then
      local why = ovf_error(r.error)
      return fail(("%s: the server made no OVF package%s"):format(what, why and ": " .. why or ""), "ELIBRARY")
    end
    res.item_id = type(r) == "table" and r.ovf_library_item_id or existing
    if type(res.item_id) ~= "string" then return fail(("%s: the answer names no item"):format(what), "EPROTO") end
  else
    if existing then
      return fail(("%s: the library already has an item %s (%s); a VM template is not replaced in place: delete it "
        .. "first"):format(what, opts.item, existing), "EEXIST")
    end
    local inv = opts.inv or {}
    local r
    r, err, code = c:op("vmtx_create", { body = { library = lib, name = opts.item, source_vm = vm_id,
      description = opts.description,
      placement = { folder = inv.folder and inv.folder.value, resource_pool = inv.pool and inv.pool.value,
        host = inv.host and inv.host.value },
      vm_home_storage = inv.datastore and { datastore = inv.datastore.value } or nil,
      disk_storage = inv.datastore and { datastore = inv.datastore.value } or nil } }, { timeout = 7200 })
    if not r then return nil, ("%s: %s"):format(what, err), code end
    if type(r) ~= "string" then return fail(("%s: the answer names no item"):format(what), "EPROTO") end
    res.item_id = r
  end
  local item = M.get_item(c, res.item_id)
  res.content_version = item and item.content_version
  return res
end

return M
