--- capil.fs — file operations with the error triple (`nil, msg, code`) and
--- messages naming the path. `fs.tempdir` registers its removal with
--- capil.cleanup, so temp dirs go away on exit, failure or Ctrl-C.
local core = require("capil.core.fs")
local cleanup = require("capil.cleanup")

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
