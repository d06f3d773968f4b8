--- capil.sys.json — JSON text <-> Lua values (jansson underneath).
---
--- Mapping:
--- * JSON null is `json.null` (a unique userdata) both ways; `nil` only
---   appears as a hole in a `json.array`, where it encodes as null.
--- * Decoded arrays carry the metatable `json.array_mt`, objects
---   `json.object_mt`, so `encode(decode(s))` keeps `[]` and `{}` apart.
---   A plain Lua table encodes as an array when its keys are exactly 1..n,
---   as an object when all keys are strings; an EMPTY plain table encodes as
---   `{}` — use `json.array{}` for `[]`.
--- * Integers inside int64 decode as exact Lua integers; integer literals
---   beyond int64 decode as strings of their digits (jansson cannot hold
---   them). Floats encode with 17 significant digits, so they round-trip
---   exactly (0.1 is written 0.10000000000000001).
--- * Nesting is limited to 2048 levels both ways (jansson's parser limit).
---
--- Errors: `decode` returns `nil, "json.decode: line L, column C: reason",
--- "JSON_PARSE"`; `encode` raises on values JSON cannot carry (functions,
--- NaN/inf, cycles, non-string keys, invalid UTF-8) naming the path, e.g.
--- `json.encode: value of type function at $.spec.items[2].hook`.
local core = require("capil.core.json")

local M = {}

M.null = core.null
M.array_mt = core.array_mt
M.object_mt = core.object_mt

--- Parses JSON text (any value at the top).
---@param s string
---@return any|nil value, string? err, string? code
function M.decode(s)
  return core.decode(s)
end

--- Serialises a Lua value. `indent` (0..31 spaces, or true for 2) pretty-prints;
--- `sort_keys` orders object keys (otherwise the order is Lua's table order).
---@param v any
---@param opts? {indent?: integer|boolean, sort_keys?: boolean}
---@return string
function M.encode(v, opts)
  return core.encode(v, opts)
end

--- Marks `t` (or a new table) as a JSON array: encodes as `[...]`, `[]` when empty.
---@param t? table
---@return table
function M.array(t)
  return core.array(t)
end

--- Marks `t` (or a new table) as a JSON object: encodes as `{...}`.
---@param t? table
---@return table
function M.object(t)
  return core.object(t)
end

--- True for `json.null`.
---@param v any
---@return boolean
function M.is_null(v)
  return v == core.null
end

--- True for a table marked (or decoded) as a JSON array.
---@param v any
---@return boolean
function M.is_array(v)
  return type(v) == "table" and getmetatable(v) == core.array_mt
end

--- The largest JSON file json.read takes unless told (var files, build
--- manifests, state files are far smaller).
M.MAX_FILE = 16 * 1024 * 1024

--- Reads and decodes a JSON file; errors name the file:
--- `json.read: vsphere.json: line 3, column 7: ...`. The file must be a
--- regular file of at most `max` bytes (default M.MAX_FILE; codes EFTYPE,
--- EFBIG).
---@param path string
---@param opts? {max?: integer}
---@return any|nil value, string? err, string? code
function M.read(path, opts)
  local fs = require("capil.sys.fs")
  local text, err, code = fs.read_file(path, { max = opts and opts.max or M.MAX_FILE })
  if not text then return nil, "json.read: " .. err, code end
  local v, perr, pcode = core.decode(text)
  if v == nil then
    return nil, ("json.read: %s: %s"):format(path, (perr:gsub("^json%.decode: ", ""))), pcode
  end
  return v
end

--- Encodes `v` and writes it atomically to `path` (pretty, sorted keys, final newline
--- unless overridden by `opts`).
---@param path string
---@param v any
---@param opts? {indent?: integer|boolean, sort_keys?: boolean}
---@return true|nil ok, string? err, string? code
function M.write(path, v, opts)
  local fs = require("capil.core.fs")
  opts = opts or { indent = 2, sort_keys = true }
  return fs.write(path, core.encode(v, opts) .. "\n")
end

return M
