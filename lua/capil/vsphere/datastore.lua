--- capil.vsphere.datastore — files on a datastore through the `/folder`
--- HTTP endpoint: streamed uploads through a per-build name moved into
--- place (parallel builds never see half a file), the ISO cache named by
--- checksum with a marker beside it, and removal.
local http = require("capil.sys.http")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local cleanup = require("capil.sys.cleanup")

local M = {}


--- The `/folder` URL of a datastore path (relative to the datastore root).
---@param vc table a capil.vsphere.vim25 session
---@param inv table from capil.vsphere.inventory.resolve
---@param path string
---@return string
function M.folder_url(vc, inv, path)
  return ("%s://%s/folder/%s?dcPath=%s&dsName=%s"):format(vc.scheme, vc.server, http.escape(path, true),
    http.escape(inv.dc_path:sub(2)), http.escape(inv.ds_name))
end

--- The "[datastore] path" name of a datastore path.
---@param inv table
---@param path string
---@return string
function M.path(inv, path) return ("[%s] %s"):format(inv.ds_name, path) end
local ds_path = M.path

-- A request on the datastore endpoint with the session's cookie and TLS settings.
local function ds_request(vc, opts)
  for k, v in pairs(vc:transfer_options()) do if opts[k] == nil then opts[k] = v end end
  return http.request(opts)
end

--- Removes datastore `path` (best effort: a cleanup's work).
---@param vc table
---@param inv table
---@param path string
function M.delete(vc, inv, path)
  local t = vc:call("DeleteDatastoreFile_Task", vc.content.fileManager,
    { name = ds_path(inv, path), datacenter = inv.datacenter })
  if t then return vc:task(t, 120) end
end

--- Uploads `local_path` to datastore `path`, streamed, through a per-build
--- name moved into place. Returns true or nil, err, code.
---@param vc table
---@param inv table
---@param local_path string
---@param path string relative to the datastore root
---@param opts? {timeout?: number, sha256?: string} sha256: the digest the upload must have
---@return true|nil, string?, string?
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
  local undo = cleanup.push(("datastore file %s"):format(ds_path(inv, part)), function() M.delete(vc, inv, part) end)
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
--- the same checksum. Returns the "[ds] path" of the ISO and "cached" or
--- "uploaded".
---@param vc table
---@param inv table
---@param local_path string
---@param checksum string
---@param cache_dir string
---@return string|nil, string?, string?
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


return M
