--- capil.sys.fs — file operations with the error triple (`nil, msg, code`) and
--- messages naming the path. `fs.tempdir` registers its removal with
--- capil.sys.cleanup, so temp dirs go away on exit, failure or Ctrl-C.
local core = require("capil.core.fs")
local cleanup = require("capil.sys.cleanup")
local optcheck = require("capil.util.opts").check

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

local WRITE_ATOMIC_OPTS = { mode = true }

--- Writes `data` to `path` atomically: into a temp file beside it (same
--- directory, so the same file system), fsynced, then renamed over `path`;
--- readers see the old content or the new, never a part. On failure the
--- temp file is removed and `path` is untouched. `opts.mode` is the new
--- file's mode (default 0644). The directory must exist. (capil.core.fs's
--- `write` does exactly this; this is the name that says so.)
---@param path string
---@param data string
---@param opts? {mode?: integer}
---@return true|nil ok, string? err, string? code
function M.write_atomic(path, data, opts)
  if type(path) ~= "string" then error("fs.write_atomic: path must be a string", 2) end
  if type(data) ~= "string" then error("fs.write_atomic: data must be a string", 2) end
  opts = optcheck(opts, WRITE_ATOMIC_OPTS, "fs.write_atomic")
  if opts.mode ~= nil and math.type(opts.mode) ~= "integer" then
    error("fs.write_atomic: opts.mode must be an integer (0644, not \"0644\")", 2)
  end
  local ok, err, code = core.write(path, data, { mode = opts.mode, sync = true })
  if not ok then return nil, (tostring(err):gsub("^fs%.write: ", "fs.write_atomic: ")), code end
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
