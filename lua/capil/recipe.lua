--- capil.recipe — loads a recipe file as data: run in the sandbox (no I/O,
--- no network, strict globals, instruction budget), flattened to schema
--- paths, checked for unknown fields (with a "did you mean"), and merged over
--- the recipe it `extends`. Errors name the file, the line where it can be
--- found, and the field path.
local sandbox = require("capil.sandbox")
local schema = require("capil.schema")
local fs = require("capil.fs")

local M = {}

M.DEFAULT_DIR = "recipes"

--- Resolves a recipe reference: a path (has "/" or ends in .lua) or a name
--- looked up as <dir>/<name>.lua.
---@param ref string
---@param dir? string
function M.locate(ref, dir)
  if ref:find("/", 1, true) or ref:match("%.lua$") then return ref end
  return (dir or M.DEFAULT_DIR) .. "/" .. ref .. ".lua"
end

-- Best-effort line of a field in the recipe source: the line of the last
-- path component's key after the line of the section key.
local function find_line(source, path)
  if not source then return nil end
  local lines = {}
  for line in (source .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  local start = 1
  for part in path:gmatch("[^%.]+") do
    local found
    for i = start, #lines do
      local l = lines[i]
      if l:match("^%s*" .. part .. "%s*=") or l:match("[{,]%s*" .. part .. "%s*=")
        or l:match('%["' .. part .. '"%]%s*=') then
        found = i
        break
      end
    end
    if not found then return nil end
    start = found
  end
  return start
end

local function where(file, source, path)
  local line = find_line(source, path)
  return line and ("%s:%d"):format(file, line) or file
end

-- Flattens a recipe table into {path = value}; appends errors for unknown
-- fields. `vars` is free-form (extra variables).
local function flatten(t, prefix, out, errors, file, source)
  for k, v in pairs(t) do
    if type(k) ~= "string" then
      errors[#errors + 1] = ("%s: %s: keys must be names, got %s"):format(file, prefix ~= "" and prefix or "(top)", tostring(k))
    else
      local path = prefix == "" and k or (prefix .. "." .. k)
      if schema.by_path[path] then
        out[path] = v
      elseif prefix == "" and schema.sections[k] and type(v) == "table" then
        flatten(v, path, out, errors, file, source)
      else
        local hint = schema.suggest(path)
        errors[#errors + 1] = ("%s: unknown field '%s'%s"):format(where(file, source, path), path,
          hint and (" (did you mean '" .. hint .. "'?)") or "")
      end
    end
  end
end

--- Loads a recipe and the chain it extends.
--- Returns {name=, file=, files={...base first}, fields={path=raw value},
--- sources={path=file}, source_text=} or nil and a list of error messages.
---@param ref string recipe name or path
---@param opts? {dir?: string, source?: string, _seen?: table} `source`: the recipe's text, not read from `ref` (the fuzz harness)
---@return table|nil recipe
---@return string[]? errors
function M.load(ref, opts)
  opts = opts or {}
  local file = M.locate(ref, opts.dir)
  local seen = opts._seen or {}
  if seen[file] then return nil, { ("%s: extends itself (a cycle: %s)"):format(file, file) } end
  seen[file] = true
  local source, rerr = opts.source, nil
  if not source then source, rerr = fs.read(file) end
  if not source then
    return nil, { ("%s: cannot read the recipe: %s"):format(file, rerr:gsub("^fs%.read: [^:]*: ", "")) }
  end
  local data, err = sandbox.run_file(file, sandbox.environment(), { source = source })
  if data == nil and err then return nil, { err } end
  if type(data) ~= "table" then
    return nil, { ("%s: a recipe must return a table, got %s"):format(file, type(data)) }
  end
  local errors, fields = {}, {}
  flatten(data, "", fields, errors, file, source)
  if #errors > 0 then return nil, errors end

  local r = { file = file, files = {}, fields = {}, sources = {}, source_text = source, lines = {} }
  if type(fields.extends) == "string" then
    -- a name is looked up beside the extending recipe, then in the recipes dir
    local base_ref = fields.extends
    local here = file:match("^(.*)/[^/]*$") or "."
    if not (base_ref:find("/", 1, true) or base_ref:match("%.lua$")) and not fs.exists(M.locate(base_ref, here)) then
      here = opts.dir or M.DEFAULT_DIR
    end
    local base, berrs = M.load(base_ref, { dir = here, _seen = seen })
    if not base then
      local out = { ("%s: extends '%s':"):format(where(file, source, "extends"), fields.extends) }
      for _, e in ipairs(berrs) do out[#out + 1] = "  " .. e end
      return nil, out
    end
    for _, f in ipairs(base.files) do r.files[#r.files + 1] = f end
    for p, v in pairs(base.fields) do r.fields[p] = v r.sources[p] = base.sources[p] r.lines[p] = base.lines[p] end
  elseif fields.extends ~= nil then
    return nil, { ("%s: extends: expected a recipe name, got %s"):format(where(file, source, "extends"), type(fields.extends)) }
  end
  r.files[#r.files + 1] = file
  for p, v in pairs(fields) do
    if p ~= "extends" then
      -- `vars` of an extending recipe add to the base's
      if p == "vars" and type(v) == "table" and type(r.fields.vars) == "table" then
        local merged = {}
        for k, x in pairs(r.fields.vars) do merged[k] = x end
        for k, x in pairs(v) do merged[k] = x end
        v = merged
      end
      r.fields[p] = v
      r.sources[p] = file
      r.lines[p] = where(file, source, p)
    end
  end
  r.name = r.fields.name
  return r
end

--- Lists the recipe files in `dir` (names without .lua), sorted.
function M.list(dir)
  dir = dir or M.DEFAULT_DIR
  local names = {}
  for _, f in ipairs(fs.list(dir) or {}) do
    local n = f:match("^(.+)%.lua$")
    if n then names[#names + 1] = n end
  end
  table.sort(names)
  return names
end

return M
