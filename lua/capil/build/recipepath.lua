--- capil.build.recipepath — where recipe names are looked up, and where a
--- recipe's roles, checks, installer files and shared config come from.
---
--- The recipe search path, lowest priority first:
---   1. the built-in recipes: `recipes/` of the source tree when this binary
---      runs from its build directory (or CAPIL_PATH names a source tree),
---      as the Lua library is found; else the copy embedded in the binary
---      (CAPIL_EMBEDDED=1 forces it);
---   2. `$XDG_CONFIG_HOME/capil/recipes` (default `~/.config/capil/recipes`),
---      when it exists;
---   3. the directories of `CAPIL_RECIPES_PATH` (colon-separated; as in PATH,
---      an earlier directory wins over a later one); a missing one is a warning;
---   4. `--recipes-dir DIR` (must exist).
--- A recipe name found in several layers is the highest layer's; `capil list`
--- names the layer of each. The embedded layer is read from memory for
--- `capil list` and `capil recipe show`; anything that needs files on disk
--- (loading a recipe, its roles, installer templates, the test keys) gets a
--- copy written once per binary under `$XDG_CACHE_HOME/capil/embedded-*`
--- (checked against the embedded bytes on each use).
---
--- A recipe's own directory (then those of the recipes it extends) comes
--- before the search path, highest layer first, for its roles (`roles/`),
--- check sets (`checks/`), installer directory and shared config files
--- (`config/`, file by file); a bare `extends` name is looked up beside the
--- recipe, then on the search path.
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")

local M = {}

-- A directory there (not a file, FIFO, ...).
local function is_dir(p)
  local st = fs.stat(p)
  return st ~= nil and st.type == "directory"
end

local function is_file(p)
  local st = fs.stat(p)
  return st ~= nil and st.type == "file"
end

-- The same directory, however it is written: its real path, or the text.
local function key_of(dir)
  return fs.realpath(dir) or dir
end

--- The source tree the Lua library is loaded from (the build tree's binary,
--- or CAPIL_PATH), or nil when it is the embedded copy.
---@return string?
function M.source_tree()
  local root = runtime.library()
  if root == "embedded" then return nil end
  return root
end

-- The built-in directory `sub` (recipes, cloudinit) of the source tree,
-- written "recipes" when it is the current directory's (so a checkout
-- sees the paths it always did).
local function source_dir(sub)
  local root = M.source_tree()
  if not root then return nil end
  local dir = root .. "/" .. sub
  if not is_dir(dir) then return nil end
  local here = fs.realpath(sub)
  if here and here == fs.realpath(dir) then return sub end
  return dir
end

-- ---------------------------------------------------------------------------
-- The embedded files
-- ---------------------------------------------------------------------------

--- The embedded recipe names, sorted.
---@return string[]
function M.embedded_names()
  local names = {}
  for _, p in ipairs(runtime.embedded_files()) do
    local n = p:match("^recipes/([^/]+)%.lua$")
    if n then names[#names + 1] = n end
  end
  return names
end

-- The materialized copy of the embedded files (one per process).
local materialized

-- Private keys keep the mode ssh wants of them.
local function mode_of(path)
  if path:match("^cloudinit/id_[^/]*$") and not path:match("%.pub$") then return 384 end -- 0600
  return 420 -- 0644
end

-- Writes the embedded files under `root` where they are missing or differ.
local function fill(root)
  for _, p in ipairs(runtime.embedded_files()) do
    local data = runtime.embedded_file(p)
    local path = root .. "/" .. p
    if fs.read(path, { max = #data + 1 }) ~= data then
      local ok, err = fs.mkdir(fs.dirname(path))
      if ok then ok, err = fs.write(path, data, { mode = mode_of(p) }) end
      if not ok then return nil, err end
    end
  end
  return true
end

--- The directory holding a copy of the embedded `recipes/` and `cloudinit/`
--- (`$XDG_CACHE_HOME/capil/embedded-<version>-<digest>`, else a private temp
--- dir removed at exit). nil and a message when neither can be written.
---@return string|nil root, string? err
function M.embedded_root()
  if materialized then return materialized end
  local h = require("capil.sys.hash").new("sha256")
  for _, p in ipairs(runtime.embedded_files()) do
    local data = runtime.embedded_file(p)
    h:update(("%s\0%d\0"):format(p, #data))
    h:update(data)
  end
  local id = ("embedded-%s-%s"):format(runtime.version, h:final():sub(1, 12))
  local cache = (os.getenv("XDG_CACHE_HOME") or ((os.getenv("HOME") or ".") .. "/.cache")) .. "/capil"
  local root = cache .. "/" .. id
  local ok, err = fill(root)
  if not ok then
    log.debug("recipes: cannot write the embedded recipes to %s (%s); using a temp dir", root, tostring(err))
    local tmp, terr = fs.tempdir({ prefix = "capil-embedded" })
    if not tmp then return nil, ("recipes: cannot write the embedded recipes: %s; %s"):format(err, terr) end
    ok, err = fill(tmp)
    if not ok then return nil, "recipes: cannot write the embedded recipes: " .. tostring(err) end
    root = tmp
  end
  materialized = root
  return root
end

-- ---------------------------------------------------------------------------
-- The search path
-- ---------------------------------------------------------------------------

---@class capil.RecipeLayer
---@field kind string "embedded"|"source"|"user"|"env"|"option"
---@field dir? string the directory (nil for the embedded layer until it is written out)
---@field label string how `capil list` names it: "embedded" or the directory

--- The user's recipe directory: $XDG_CONFIG_HOME/capil/recipes (default
--- ~/.config/capil/recipes).
---@param getenv? fun(name: string): string?
function M.user_dir(getenv)
  getenv = getenv or os.getenv
  local base = getenv("XDG_CONFIG_HOME")
  if not base or base:sub(1, 1) ~= "/" then base = (getenv("HOME") or ".") .. "/.config" end
  return base .. "/capil/recipes"
end

-- Warned-about CAPIL_RECIPES_PATH entries (once per process).
local warned = {}

--- The layers of the search path, lowest priority first; nil and a
--- message when --recipes-dir is not a directory.
---@param opts? {recipes_dir?: string, getenv?: fun(name: string): string?}
---@return capil.RecipeLayer[]|nil layers, string? err
function M.layers(opts)
  opts = opts or {}
  local getenv = opts.getenv or os.getenv
  local out, seen = {}, {}
  local function add(kind, dir)
    local k = key_of(dir)
    if seen[k] then
      -- the same directory twice: it counts where it ranks highest
      for i, l in ipairs(out) do if l.dir and key_of(l.dir) == k then table.remove(out, i) break end end
    end
    seen[k] = true
    out[#out + 1] = { kind = kind, dir = dir, label = dir }
  end
  local src = source_dir("recipes")
  if src then add("source", src) else out[1] = { kind = "embedded", label = "embedded" } end
  local user = M.user_dir(getenv)
  if is_dir(user) then add("user", user) end
  local env = getenv("CAPIL_RECIPES_PATH")
  if env and env ~= "" then
    local dirs = {}
    for d in env:gmatch("[^:]+") do dirs[#dirs + 1] = d end
    for i = #dirs, 1, -1 do -- the first entry wins, as in PATH
      local d = dirs[i]
      if is_dir(d) then
        add("env", d)
      elseif not warned[d] then
        warned[d] = true
        log.warn("CAPIL_RECIPES_PATH: %s: %s (skipped)", d, fs.exists(d) and "not a directory" or "no such directory")
      end
    end
  end
  local dir = opts.recipes_dir
  if dir then
    local st = fs.stat(dir)
    if not st or st.type ~= "directory" then
      return nil, ("--recipes-dir %s: %s"):format(dir, st and "not a directory" or "no such directory")
    end
    add("option", dir)
  end
  return out
end

--- The directory of a layer, writing out the embedded files when needed.
---@param layer capil.RecipeLayer
---@return string|nil dir, string? err
function M.layer_dir(layer)
  if layer.dir then return layer.dir end
  local root, err = M.embedded_root()
  if not root then return nil, err end
  layer.dir = root .. "/recipes"
  return layer.dir
end

-- The recipe names of a layer.
local function names_in(layer)
  if layer.kind == "embedded" then return M.embedded_names() end
  local names = {}
  for _, f in ipairs(fs.list(layer.dir) or {}) do
    local n = f:match("^(.+)%.lua$")
    if n and is_file(layer.dir .. "/" .. f) then names[#names + 1] = n end
  end
  table.sort(names)
  return names
end

---@class capil.RecipeEntry
---@field name string
---@field layer capil.RecipeLayer the layer it comes from
---@field shadows capil.RecipeLayer[] lower layers with a recipe of the same name, highest first

--- Every recipe name on the path with the layer it comes from, sorted by name.
---@param layers capil.RecipeLayer[]
---@return capil.RecipeEntry[]
function M.entries(layers)
  local by_name, names = {}, {}
  for i = #layers, 1, -1 do
    for _, n in ipairs(names_in(layers[i])) do
      local e = by_name[n]
      if e then
        e.shadows[#e.shadows + 1] = layers[i]
      else
        by_name[n] = { name = n, layer = layers[i], shadows = {} }
        names[#names + 1] = n
      end
    end
  end
  table.sort(names)
  local out = {}
  for i, n in ipairs(names) do out[i] = by_name[n] end
  return out
end

--- The layers holding recipe `name`, highest first.
---@param name string
---@param layers capil.RecipeLayer[]
---@return capil.RecipeLayer[]
function M.holders(name, layers)
  local out = {}
  for i = #layers, 1, -1 do
    local l = layers[i]
    local has
    if l.kind == "embedded" then
      has = runtime.embedded_file("recipes/" .. name .. ".lua") ~= nil
    else
      has = is_file(l.dir .. "/" .. name .. ".lua")
    end
    if has then out[#out + 1] = l end
  end
  return out
end

--- "recipe 'x' not found ..." with the similar names, for a name on no layer.
---@param name string
---@param layers capil.RecipeLayer[]
function M.not_found(name, layers)
  local all, where = {}, {}
  for _, e in ipairs(M.entries(layers)) do all[#all + 1] = e.name end
  for i = #layers, 1, -1 do where[#where + 1] = layers[i].label end
  local similar = require("capil.util.text").similar(name, all, 3)
  local hint = #similar > 0 and ("; did you mean '" .. table.concat(similar, "', '") .. "'?") or ""
  return ("no recipe '%s' on the recipe path (%s)%s (see 'capil list')"):format(name, table.concat(where, ", "), hint)
end

--- Whether `ref` is a path (has "/" or ends in .lua) rather than a name.
---@param ref string
function M.is_path(ref)
  return ref:find("/", 1, true) ~= nil or ref:match("%.lua$") ~= nil
end

--- The files of recipe `name` on the path, highest layer first (the
--- embedded one written out when it is among them).
---@param name string
---@param layers capil.RecipeLayer[]
---@return string[]|nil files, string? err
function M.files(name, layers)
  local out = {}
  for _, l in ipairs(M.holders(name, layers)) do
    local dir, err = M.layer_dir(l)
    if not dir then return nil, err end
    out[#out + 1] = dir .. "/" .. name .. ".lua"
  end
  return out
end

--- The file a recipe reference stands for: a path as it is, a name as the
--- highest layer has it; nil and a message (with "did you mean") when no
--- layer has the name.
---@param ref string
---@param layers capil.RecipeLayer[]
---@return string|nil file, string? err
function M.locate(ref, layers)
  if M.is_path(ref) then return ref end
  local files, err = M.files(ref, layers)
  if not files then return nil, err end
  if #files == 0 then return nil, M.not_found(ref, layers) end
  return files[1]
end

--- A recipe's text as its layer holds it (the embedded bytes, or the
--- file's), with the layer; nil and a message when there is none.
---@param name string
---@param layers capil.RecipeLayer[]
---@return string|nil text, capil.RecipeLayer|string layer_or_err, string? file
function M.source(name, layers)
  local l = M.holders(name, layers)[1]
  if not l then return nil, M.not_found(name, layers) end
  if l.kind == "embedded" then
    return runtime.embedded_file("recipes/" .. name .. ".lua"), l, "embedded:recipes/" .. name .. ".lua"
  end
  local file = l.dir .. "/" .. name .. ".lua"
  local text, err = fs.read_file(file, { max = require("capil.build.recipe").MAX_FILE })
  if not text then return nil, err end
  return text, l, file
end

--- The directories a recipe's roles, checks, installer files and config
--- are looked up in, first match wins: the directories of `files` (the
--- recipe's, then those of what it extends), then the layers, highest first.
---@param files string[] the recipe's files, base first (recipe.load's r.files)
---@param layers capil.RecipeLayer[]
---@return string[]|nil dirs, string? err
function M.support_dirs(files, layers)
  local out, seen = {}, {}
  local function add(d)
    local k = key_of(d)
    if not seen[k] then seen[k] = true out[#out + 1] = d end
  end
  for i = #(files or {}), 1, -1 do add(fs.dirname(files[i])) end
  for i = #layers, 1, -1 do
    local d, err = M.layer_dir(layers[i])
    if not d then return nil, err end
    add(d)
  end
  return out
end

--- The first of `dirs` holding `rel` (a directory or file), else the first
--- candidate (whose error then names it).
---@param dirs string[]
---@param rel string
---@param kind? "directory"|"file"
---@return string dir
function M.first_with(dirs, rel, kind)
  for _, d in ipairs(dirs) do
    local st = fs.stat(d .. "/" .. rel)
    if st and (kind == nil or st.type == kind) then return d end
  end
  return dirs[1]
end

--- The shared config directories of a command without a recipe (deploy,
--- test, ssh, repl): `config/` of each layer, highest first.
---@param opts? {recipes_dir?: string, getenv?: function}
---@return string[]
function M.config_dirs(opts)
  local layers = M.layers(opts) or M.layers({ getenv = opts and opts.getenv }) or {}
  local out = {}
  for i = #layers, 1, -1 do
    local d = M.layer_dir(layers[i])
    if d then out[#out + 1] = d .. "/config" end
  end
  return out
end

--- The test cloud-init directory for the configured `dir`: as given,
--- except the default "cloudinit" when there is no such directory here,
--- which is the built-in one (the source tree's, else the embedded copy).
---@param dir string
---@return string
function M.cloudinit_dir(dir)
  if dir ~= "cloudinit" or is_dir(dir) then return dir end
  local src = source_dir("cloudinit")
  if src then return src end
  local root = M.embedded_root()
  return root and (root .. "/cloudinit") or dir
end

return M
