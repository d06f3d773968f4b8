--- capil.sys.fs — file operations with the error triple (`nil, msg, code`) and
--- messages naming the path. `fs.tempdir` registers its removal with
--- capil.sys.cleanup, so temp dirs go away on exit, failure or Ctrl-C.
local core = require("capil.core.fs")
local cleanup = require("capil.sys.cleanup")

local M = {}
for k, v in pairs(core) do M[k] = v end

--- A new temp directory, removed (recursively) at cleanup unless `keep`.
---@param opts? {parent?: string, prefix?: string, keep?: boolean}
---@return string|nil path, string? err, string? code
function M.tempdir(opts)
  opts = opts or {}
  local path, err, code = core.tempdir(opts.parent, opts.prefix)
  if not path then return nil, err, code end
  if not opts.keep then
    cleanup.push("temp dir " .. path, function()
      assert(core.remove(path, { recursive = true }))
    end)
  end
  return path
end

local KIND = { directory = "a directory", fifo = "a FIFO", char = "a character device",
  block = "a block device", socket = "a socket" }

-- "WHAT PATH: detail" from a core message "fs.fn: PATH: detail".
local function named(what, err)
  local rest = tostring(err):gsub("^fs%.%w+: ", "")
  return what and (what .. " " .. rest) or rest
end

--- Reads a file capil was given by path (a var file, a recipe, an EULA, a
--- checksum file): it must be a regular file (a FIFO or a device would
--- block or never end; code EFTYPE) of at most `max` bytes (code EFBIG).
--- Messages read "WHAT PATH: is a FIFO, not a regular file".
---@param path string
---@param opts {max: integer, what?: string}
---@return string|nil data, string? err, string? code
function M.read_file(path, opts)
  if type(path) ~= "string" then error("fs.read_file: path must be a string", 2) end
  if type(opts) ~= "table" or math.type(opts.max) ~= "integer" or opts.max < 0 then
    error("fs.read_file: opts.max (a byte count) is required", 2)
  end
  local data, err, code = core.read(path, { max = opts.max })
  if not data then return nil, named(opts.what, err), code end
  return data
end

--- Checks that a path capil will open and stream (an OVA, a VMDK) is a
--- regular file: true, or nil, "WHAT PATH: is a FIFO, not a regular file", code.
---@param path string
---@param what? string
---@return true|nil ok, string? err, string? code
function M.check_regular(path, what)
  local st, err, code = core.stat(path)
  if not st then return nil, named(what, err), code end
  if st.type ~= "file" then
    return nil, ("%s%s: is %s, not a regular file"):format(what and (what .. " ") or "", path,
      KIND[st.type] or "not a plain file"), "EFTYPE"
  end
  return true
end

--- Writes `data` to `path` atomically: into `<path>.tmp.<pid>`, then renamed
--- over `path` (the temp is removed on failure). opts.mode: the file's mode.
---@param path string
---@param data string
---@param opts? {mode?: integer}
---@return true|nil ok, string? err, string? code
function M.write_atomic(path, data, opts)
  local tmp = ("%s.tmp.%d"):format(path, require("capil.core.proc").getpid())
  local ok, err, code = core.write(tmp, data, { mode = opts and opts.mode, sync = false })
  if ok then ok, err, code = core.rename(tmp, path) end
  if not ok then
    core.remove(tmp)
    return nil, err, code
  end
  return true
end

--- Joins path parts with "/".
---@param ... string
function M.join(...)
  local parts = { ... }
  local s = table.concat(parts, "/")
  return (s:gsub("/+", "/"))
end

--- Directory part of a path ("." when none).
function M.dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

--- Last component of a path.
function M.basename(p)
  return (p:gsub("/+$", ""):match("[^/]*$"))
end

return M
