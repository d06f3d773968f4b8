--- capil.util.pretty — readable rendering of Lua values for the REPL and for
--- debugging: tables with sorted keys and indentation, cycles marked, long
--- tables cut, strings quoted.
local M = {}

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function sort_keys(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function scalar(v)
  if type(v) == "string" then return ("%q"):format(v):gsub("\\\n", "\\n") end
  if math.type(v) == "float" and v == math.floor(v) and v > -1e15 and v < 1e15 then
    return ("%.1f"):format(v)
  end
  return tostring(v)
end

--- Renders `v`; `opts.depth` (default 6) and `opts.items` (default 200)
--- bound the output.
---@param v any
---@param opts? {depth?: integer, items?: integer, indent?: string}
---@return string
function M.format(v, opts)
  opts = opts or {}
  local max_depth, max_items = opts.depth or 6, opts.items or 200
  local step = opts.indent or "  "
  local out, seen = {}, {}

  local function emit(x, depth, indent)
    if type(x) ~= "table" then
      out[#out + 1] = scalar(x)
      return
    end
    if seen[x] then out[#out + 1] = "<cycle>" return end
    local mt = getmetatable(x)
    if mt and mt.__tostring then out[#out + 1] = tostring(x) return end
    if depth >= max_depth then out[#out + 1] = "{...}" return end
    seen[x] = true
    local n = #x
    local keys = {}
    for k in pairs(x) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
    end
    table.sort(keys, sort_keys)
    if n == 0 and #keys == 0 then
      out[#out + 1] = "{}"
      seen[x] = nil
      return
    end
    -- short arrays of scalars stay on one line
    local flat = #keys == 0 and n <= 10
    for i = 1, n do if type(x[i]) == "table" then flat = false end end
    if flat then
      local parts = {}
      for i = 1, n do parts[i] = scalar(x[i]) end
      local line = "{ " .. table.concat(parts, ", ") .. " }"
      if #line <= 80 then
        out[#out + 1] = line
        seen[x] = nil
        return
      end
    end
    out[#out + 1] = "{\n"
    local inner = indent .. step
    local count = 0
    for i = 1, n do
      count = count + 1
      if count > max_items then break end
      out[#out + 1] = inner
      emit(x[i], depth + 1, inner)
      out[#out + 1] = ",\n"
    end
    for _, k in ipairs(keys) do
      count = count + 1
      if count > max_items then break end
      out[#out + 1] = inner
      out[#out + 1] = is_identifier(k) and k or ("[" .. scalar(k) .. "]")
      out[#out + 1] = " = "
      emit(x[k], depth + 1, inner)
      out[#out + 1] = ",\n"
    end
    if count > max_items then
      out[#out + 1] = inner .. ("-- %d more\n"):format(n + #keys - max_items)
    end
    out[#out + 1] = indent .. "}"
    seen[x] = nil
  end

  emit(v, 0, "")
  return table.concat(out)
end

return M
