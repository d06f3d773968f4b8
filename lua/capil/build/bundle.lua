--- capil.build.bundle — a recipe bundle: a Lua file returning a list of builds,
--- loaded as data in the recipe sandbox (no I/O), for CI runs of several
--- images at once (`capil run bundle.lua -j N`).
---
---   return {
---     defaults = { backend = "vsphere", var_files = { "vsphere.json" } },  -- optional
---     { recipe = "ubuntu-2204" },
---     { recipe = "ubuntu-2204", vars = { build_name = "ubuntu-2204-efi", firmware = "efi" } },
---     { recipe = "photon-5", backend = "qemu", stages = "build,test" },
---   }
---
--- A recipe returns a table with `name`; a bundle returns an array. Paths in
--- a bundle (var_files, a recipe given as a path) are relative to the
--- bundle's directory; recipe names are looked up on the recipe search path
--- (capil.build.recipepath: --recipes-dir first).
local sandbox = require("capil.build.sandbox")
local fs = require("capil.sys.fs")

local M = {}

-- The keys of one build (and of `defaults`), with their checks.
local KEYS = {
  recipe = "string",
  backend = "string",
  vars = "map",
  var_files = "list",
  stages = "stages",
}

-- A table key as a message shows it (a table or function key has no name).
local function key_text(k)
  if type(k) == "string" or math.type(k) then return tostring(k) end
  return "<a " .. type(k) .. ">"
end

local function is_array(t)
  return type(t) == "table" and (rawget(t, 1) ~= nil or next(t) == nil)
end

--- True when the value a file returned looks like a bundle (an array of
--- builds) rather than a recipe (a table with `name`).
---@param data any
---@return boolean
function M.is_bundle_data(data)
  if type(data) ~= "table" or rawget(data, "name") ~= nil then return false end
  return rawget(data, 1) ~= nil or rawget(data, "defaults") ~= nil
end

-- Runs the file in the sandbox; returns its value, or nil and a message.
local function run(path)
  -- bounded, regular files only: a FIFO or a device is refused, never waited on
  local source, err = fs.read_file(path, { max = require("capil.build.recipe").MAX_FILE })
  if not source then return nil, ("%s: cannot read: %s"):format(path, (err:gsub("^fs%.read: [^:]*: ", ""))) end
  local data, serr = sandbox.run_file(path, sandbox.environment(), { source = source })
  if data == nil and serr then return nil, serr end
  return data
end

--- Whether `path` (a file ending in .lua or containing "/") holds a bundle.
--- Names and files that do not load are not bundles (the recipe loader
--- then reports them).
---@param path string
---@return boolean
function M.is_bundle(path)
  if not (path:find("/", 1, true) or path:match("%.lua$")) then return false end
  if not fs.exists(path) then return false end
  local data = run(path)
  return M.is_bundle_data(data)
end

local function rel(dir, p)
  if p:sub(1, 1) == "/" or dir == "." then return p end
  return dir .. "/" .. p
end

-- Checks one entry's keys into `out`; appends errors naming `where`.
local function check(entry, where, errors)
  if type(entry) ~= "table" then
    errors[#errors + 1] = ("%s: expected a table, got %s"):format(where, type(entry))
    return nil
  end
  local out = {}
  for k, v in pairs(entry) do
    local kind = KEYS[k]
    if not kind then
      errors[#errors + 1] = ("%s: unknown key '%s' (recipe, backend, vars, var_files, stages)"):format(where,
        key_text(k))
    elseif kind == "string" then
      if type(v) ~= "string" or v == "" then
        errors[#errors + 1] = ("%s: %s must be a non-empty string"):format(where, k)
      else
        out[k] = v
      end
    elseif kind == "map" then
      if type(v) ~= "table" then
        errors[#errors + 1] = ("%s: vars must be a table of name = value"):format(where)
      else
        out.vars = {}
        for vk, vv in pairs(v) do
          local tv = type(vv)
          if type(vk) ~= "string" or not (tv == "string" or tv == "number" or tv == "boolean") then
            errors[#errors + 1] = ("%s: vars.%s must be a string, number or boolean"):format(where, key_text(vk))
          else
            out.vars[vk] = tostring(vv)
          end
        end
      end
    elseif kind == "list" then
      if not is_array(v) then
        errors[#errors + 1] = ("%s: var_files must be a list of paths"):format(where)
      else
        out.var_files = {}
        for i, f in ipairs(v) do
          if type(f) ~= "string" then
            errors[#errors + 1] = ("%s: var_files[%d] must be a path"):format(where, i)
          else
            out.var_files[i] = f
          end
        end
      end
    elseif kind == "stages" then
      local names = type(v) == "table" and is_array(v)
      for _, x in ipairs(names and v or {}) do
        if type(x) ~= "string" then names = false end
      end
      if names then
        out.stages = table.concat(v, ",")
      elseif type(v) == "string" then
        out.stages = v
      else
        errors[#errors + 1] = ("%s: stages must be \"build,test\" or a list of stage names"):format(where)
      end
    end
  end
  return out
end

--- Loads a bundle. Returns the builds, each
--- `{index=, recipe=, backend=?, vars={k=v}, var_files={...}, stages=?}`
--- with defaults applied (an entry's vars add to the defaults' vars; its
--- var_files come after them) and paths made relative to the current
--- directory; or nil and a list of errors naming the file and entry index.
---@param path string
---@return table[]|nil builds
---@return string[]? errors
function M.load(path)
  local data, err = run(path)
  if data == nil and err then return nil, { err } end
  if not M.is_bundle_data(data) then
    return nil, { ("%s: a bundle must return a list of builds ({ {recipe = ...}, ... }), got %s"):format(path,
      type(data) == "table" and "a table with name (a recipe?)" or type(data)) }
  end
  local dir = fs.dirname(path)
  local errors = {}
  for k in pairs(data) do
    if k ~= "defaults" and not (math.type(k) == "integer" and k >= 1 and k <= #data) then
      errors[#errors + 1] = ("%s: unknown top-level key '%s' (a list of builds, and optional defaults)"):format(path,
        tostring(k))
    end
  end
  local defaults = {}
  if data.defaults ~= nil then
    defaults = check(data.defaults, path .. ": defaults", errors) or {}
    if defaults.recipe then errors[#errors + 1] = ("%s: defaults: recipe belongs in each entry"):format(path) end
  end
  local builds = {}
  for i, entry in ipairs(data) do
    local where = ("%s: entry %d"):format(path, i)
    local e = check(entry, where, errors)
    if e then
      if not e.recipe then errors[#errors + 1] = ("%s: recipe is required"):format(where) end
      local b = { index = i, recipe = e.recipe, backend = e.backend or defaults.backend,
        stages = e.stages or defaults.stages, vars = {}, var_files = {} }
      if b.recipe and (b.recipe:find("/", 1, true) or b.recipe:match("%.lua$")) then b.recipe = rel(dir, b.recipe) end
      for k, v in pairs(defaults.vars or {}) do b.vars[k] = v end
      for k, v in pairs(e.vars or {}) do b.vars[k] = v end
      for _, f in ipairs(defaults.var_files or {}) do b.var_files[#b.var_files + 1] = rel(dir, f) end
      for _, f in ipairs(e.var_files or {}) do b.var_files[#b.var_files + 1] = rel(dir, f) end
      builds[#builds + 1] = b
    end
  end
  if #builds == 0 and #errors == 0 then errors[#errors + 1] = ("%s: the bundle lists no builds"):format(path) end
  if #errors > 0 then return nil, errors end
  return builds
end

--- The builds whose recipe name is in `only` and not in `except` (sets of
--- names; a recipe given as a path matches its file name without .lua or
--- its `name` as resolved by the caller in `b.name`).
---@param builds table[]
---@param only? table<string, boolean>
---@param except? table<string, boolean>
function M.filter(builds, only, except)
  local out = {}
  for _, b in ipairs(builds) do
    local names = { b.recipe, fs.basename(b.recipe):gsub("%.lua$", ""), b.name }
    local function any(set)
      for _, n in pairs(names) do if set[n] then return true end end
      return false
    end
    if (not only or any(only)) and not (except and any(except)) then out[#out + 1] = b end
  end
  return out
end

-- ====================================================================== --
-- Shards: a stable share of the builds for one CI job                    --
-- ====================================================================== --

--- The name a build goes by before its recipe is resolved: its build_name
--- var when the bundle sets one, else its recipe's name (a recipe given as
--- a path: the file name without .lua). Matrix output shows it.
---@param b table a build from M.load or capil.build.parallel.builds
---@return string
function M.build_label(b)
  local bn = b.vars and b.vars.build_name
  if bn and bn ~= "" then return bn end
  return (fs.basename(b.recipe):gsub("%.lua$", ""))
end

-- The sort key of a build: its label, then everything else that tells two
-- builds apart (recipe, backend, vars, var files, stages), so the order
-- depends only on what the builds are, never on where they stand in the file.
local function shard_key(b)
  local vars = {}
  for k, v in pairs(b.vars or {}) do vars[#vars + 1] = k .. "=" .. v end
  table.sort(vars)
  return table.concat({ M.build_label(b), b.recipe or "", b.backend or "", table.concat(vars, "\31"),
    table.concat(b.var_files or {}, "\31"), b.stages or "" }, "\30")
end

--- Parses "K/N" (1-based: 1/4 .. 4/4). Returns k, n, or nil and a message.
---@param s string
---@param what? string how to name the value in messages (default "--shard")
---@return integer|nil k, integer|string n_or_err
function M.parse_shard(s, what)
  what = what or "--shard"
  local ks, ns = tostring(s):match("^%s*(%d+)%s*/%s*(%d+)%s*$")
  local k, n = math.tointeger(tonumber(ks)), math.tointeger(tonumber(ns))
  if not (k and n) then
    return nil, ("%s must be K/N, this job's share K of N shards counted from 1 (as 2/4), not '%s'"):format(what,
      tostring(s))
  end
  if n < 1 then return nil, ("%s %s: the number of shards must be 1 or more"):format(what, s) end
  if k < 1 or k > n then
    return nil, ("%s %s: K must be between 1 and %d (shards count from 1)"):format(what, s, n)
  end
  return k, n
end

--- The shard a Kubernetes Indexed Job gives this pod: JOB_COMPLETION_INDEX
--- (0-based, set by Kubernetes) and JOB_COMPLETION_COUNT (the Job's
--- completions, set in the pod template). Returns k (1-based), n; nothing
--- when JOB_COMPLETION_INDEX is unset; nil and a message when the values
--- are wrong.
---@param getenv? fun(name: string): string?
function M.shard_from_env(getenv)
  getenv = getenv or os.getenv
  local idx, cnt = getenv("JOB_COMPLETION_INDEX"), getenv("JOB_COMPLETION_COUNT")
  if idx == nil or idx == "" then return end
  if cnt == nil or cnt == "" then
    return nil, ("JOB_COMPLETION_INDEX is %s but JOB_COMPLETION_COUNT is not set: set it to the Job's completions"
      .. " (or pass --shard K/N)"):format(idx)
  end
  local i = idx:match("^%d+$") and math.tointeger(tonumber(idx))
  local n = cnt:match("^%d+$") and math.tointeger(tonumber(cnt))
  if not i then return nil, ("JOB_COMPLETION_INDEX must be a whole number from 0, not '%s'"):format(idx) end
  if not n or n < 1 then return nil, ("JOB_COMPLETION_COUNT must be a whole number, 1 or more, not '%s'"):format(cnt) end
  if i >= n then
    return nil, ("JOB_COMPLETION_INDEX %d is out of range for JOB_COMPLETION_COUNT %d (0 to %d)"):format(i, n, n - 1)
  end
  return i + 1, n
end

--- Splits builds into n shards: sorted by M.build_label (then by what else
--- tells them apart), the i-th (0-based) goes to shard i % n + 1. The same
--- builds always make the same shards, whatever their order in the bundle,
--- and the shards' sizes differ by one at most. Returns a list of n lists,
--- each in the builds' original order.
---@param builds table[]
---@param n integer
---@return table[][]
function M.shards(builds, n)
  local order = {}
  for i, b in ipairs(builds) do order[i] = { key = shard_key(b), pos = i, b = b } end
  table.sort(order, function(x, y)
    if x.key ~= y.key then return x.key < y.key end
    return x.pos < y.pos
  end)
  local out = {}
  for k = 1, n do out[k] = {} end
  for i, o in ipairs(order) do o.shard = (i - 1) % n + 1 end
  table.sort(order, function(x, y) return x.pos < y.pos end)
  for _, o in ipairs(order) do table.insert(out[o.shard], o.b) end
  return out
end

--- The builds of shard k of n (see M.shards).
---@param builds table[]
---@param k integer
---@param n integer
---@return table[]
function M.shard(builds, k, n)
  return M.shards(builds, n)[k]
end

return M
