--- capil.build.recipe — loads a recipe file as data: run in the sandbox (no I/O,
--- no network, strict globals, instruction budget), flattened to schema
--- paths, checked for unknown fields (with a "did you mean"), and merged over
--- the recipe it `extends`. Errors name the file, the line where it can be
--- found, and the field path.
local sandbox = require("capil.build.sandbox")
local schema = require("capil.build.schema")
local fs = require("capil.sys.fs")

local M = {}

M.DEFAULT_DIR = "recipes"

--- The largest recipe file read (recipes are a page or two of Lua).
M.MAX_FILE = 4 * 1024 * 1024

--- Resolves a recipe reference: a path (has "/" or ends in .lua) or a name
--- looked up as <dir>/<name>.lua.
---@param ref string
---@param dir? string
function M.locate(ref, dir)
  if ref:find("/", 1, true) or ref:match("%.lua$") then return ref end
  return (dir or M.DEFAULT_DIR) .. "/" .. ref .. ".lua"
end

-- The lines of the last source looked into (one recipe's errors look up
-- many fields in the same text).
local cached_source, cached_lines
local function lines_of(source)
  if source ~= cached_source then
    cached_lines = {}
    for line in (source .. "\n"):gmatch("([^\n]*)\n") do cached_lines[#cached_lines + 1] = line end
    cached_source = source
  end
  return cached_lines
end

-- Best-effort line of a field in the recipe source: the line of the last
-- path component's key after the line of the section key.
local function find_line(source, path)
  if not source then return nil end
  local lines = lines_of(source)
  local start = 1
  for raw in path:gmatch("[^%.]+") do
    -- a key is text, not a pattern: "(", "%" or "[" in it match themselves
    local part = raw:gsub("%W", "%%%0")
    local found
    for i = start, #lines do
      local l = lines[i]
      if l:find(raw, 1, true) and (l:match("^%s*" .. part .. "%s*=") or l:match("[{,]%s*" .. part .. "%s*=")
        or l:match('%["' .. part .. '"%]%s*=')) then
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

-- At most this many unknown fields are reported (each with its line and a
-- suggestion); the rest are counted.
M.MAX_ERRORS = 50

-- Flattens a recipe table into {path = value}; collects the unknown fields
-- (paths) and the keys that are not names. `vars` is free-form.
local function flatten(t, prefix, out, unknown, bad_keys)
  for k, v in pairs(t) do
    if type(k) ~= "string" then
      bad_keys[#bad_keys + 1] = ("%s: keys must be names, got %s"):format(prefix ~= "" and prefix or "(top)",
        math.type(k) and tostring(k) or type(k))
    else
      local path = prefix == "" and k or (prefix .. "." .. k)
      if schema.by_path[path] then
        out[path] = v
      elseif prefix == "" and schema.sections[k] and type(v) == "table" then
        flatten(v, path, out, unknown, bad_keys)
      else
        unknown[#unknown + 1] = path
      end
    end
  end
end

-- The errors of the unknown fields and keys, sorted: the first
-- MAX_ERRORS with their line and a suggestion, then a count of the rest,
-- so a recipe of 20,000 wrong keys is reported in the time of 50.
local function field_errors(unknown, bad_keys, file, source)
  table.sort(unknown)
  table.sort(bad_keys)
  local errors = {}
  for _, e in ipairs(bad_keys) do
    if #errors >= M.MAX_ERRORS then break end
    errors[#errors + 1] = ("%s: %s"):format(file, e)
  end
  for _, path in ipairs(unknown) do
    if #errors >= M.MAX_ERRORS then break end
    local hint = schema.suggest(path)
    local shown = #path > 200 and (path:sub(1, 200) .. ("... (%d bytes)"):format(#path)) or path
    errors[#errors + 1] = ("%s: unknown field '%s'%s"):format(where(file, source, path), shown,
      hint and (" (did you mean '" .. hint .. "'?)") or "")
  end
  local more = #unknown + #bad_keys - #errors
  if more > 0 then errors[#errors + 1] = ("%s: ... and %d more unknown fields"):format(file, more) end
  return errors
end

--- Loads a recipe and the chain it extends.
--- Returns {name=, file=, files={...base first}, fields={path=raw value},
--- sources={path=file}, source_text=} or nil and a list of error messages.
--- `search`, when given, is the recipe search path (capil.build.recipepath):
--- `search(name)` returns the files of recipe `name`, highest layer first
--- (and a message for when there is none); a bare `extends` name is then
--- looked up beside the recipe, then there, skipping the files already in the
--- chain, so a recipe that extends its own name extends the one below it.
---@param ref string recipe name or path
---@param opts? {dir?: string, source?: string, search?: fun(name: string): string[]?, string?, _seen?: table} `source`: the recipe's text, not read from `ref` (the fuzz harness)
---@return table|nil recipe
---@return string[]? errors
function M.load(ref, opts)
  opts = opts or {}
  local file = M.locate(ref, opts.dir)
  local seen = opts._seen or {}
  local key = opts.search and (fs.realpath(file) or file) or file
  if seen[key] then return nil, { ("%s: extends itself (a cycle: %s)"):format(file, file) } end
  seen[key] = true
  local source, rerr = opts.source, nil
  if not source then source, rerr = fs.read_file(file, { max = M.MAX_FILE }) end
  if not source then
    local why = rerr:sub(1, #file + 2) == file .. ": " and rerr:sub(#file + 3) or rerr
    return nil, { ("%s: cannot read the recipe: %s"):format(file, why) }
  end
  local data, err = sandbox.run_file(file, sandbox.environment(), { source = source })
  if data == nil and err then return nil, { err } end
  if type(data) ~= "table" then
    return nil, { ("%s: a recipe must return a table, got %s"):format(file, type(data)) }
  end
  local fields, unknown, bad_keys = {}, {}, {}
  flatten(data, "", fields, unknown, bad_keys)
  if #unknown + #bad_keys > 0 then return nil, field_errors(unknown, bad_keys, file, source) end

  local r = { file = file, files = {}, fields = {}, sources = {}, source_text = source, lines = {} }
  if type(fields.extends) == "string" then
    -- a relative path ("x.lua", "../base/x.lua") is relative to the extending
    -- recipe's directory; a bare name is looked up beside it, then in the
    -- recipes dir
    local base_ref = fields.extends
    local here = fs.dirname(file)
    if base_ref:find("/", 1, true) or base_ref:match("%.lua$") then
      if base_ref:sub(1, 1) ~= "/" and here ~= "." then base_ref = fs.join(here, base_ref) end
    elseif opts.search then
      local cands = {}
      local beside = M.locate(base_ref, here)
      if fs.exists(beside) then cands[1] = beside end
      local more, why = opts.search(base_ref)
      for _, f in ipairs(more or {}) do cands[#cands + 1] = f end
      if #cands == 0 then
        return nil, { ("%s: extends '%s': %s"):format(where(file, source, "extends"), fields.extends,
          why or "no such recipe") }
      end
      base_ref = cands[1] -- all in the chain already: the cycle is reported
      for _, c in ipairs(cands) do
        if not seen[fs.realpath(c) or c] then base_ref = c break end
      end
    elseif not fs.exists(M.locate(base_ref, here)) then
      here = opts.dir or M.DEFAULT_DIR
    end
    local base, berrs = M.load(base_ref, { dir = here, _seen = seen, search = opts.search })
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
