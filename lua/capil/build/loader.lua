--- capil.build.loader — the options every recipe command shares (--backend,
--- --var-file, --var, PACKER_VAR_FILES) and loading a recipe through them
--- into a resolved configuration and plan, with all errors collected. It
--- does the file reading plan.resolve must not: the roles' steps and the
--- checks (`inputs`), then resolves the plan (`plan`).
local recipe = require("capil.build.recipe")
local recipepath = require("capil.build.recipepath")
local config = require("capil.build.config")
local plan = require("capil.build.plan")
local backend = require("capil.backend")
local fs = require("capil.sys.fs")
local cli = require("capil.cli")

local M = {}

-- The first registered backend is the default (qemu).
M.DEFAULT_BACKEND = backend.REGISTERED[1]

--- The --backend help: the registered names, the default marked, and `local`.
---@return string
function M.backend_help()
  local names = backend.names()
  names[1] = names[1] .. " (default)"
  return table.concat(names, ", ") .. ", local (workstation when vmrun is found, else qemu)"
end

M.options = {
  { name = "backend", short = "b", arg = "NAME", help = M.backend_help() },
  { name = "var-file", arg = "FILE", multi = true,
    help = "JSON variables (image-builder format); after PACKER_VAR_FILES, last wins" },
  { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
  { name = "recipes-dir", arg = "DIR",
    help = "look recipe names up here first (then CAPIL_RECIPES_PATH, ~/.config/capil/recipes, the built-in ones)" },
  { name = "output", arg = "DIR", help = "output root (default: output)" },
  { name = "insecure", help = "vSphere/ESXi: do not verify the server's TLS certificate (insecure_connection)" },
}

--- The --var list with --insecure folded in (it is insecure_connection=true).
function M.vars(opts)
  local vars = {}
  for _, v in ipairs(opts.var or {}) do vars[#vars + 1] = v end
  if opts.insecure then vars[#vars + 1] = "insecure_connection=true" end
  return vars
end

--- capil's cache directory ($XDG_CACHE_HOME/capil or ~/.cache/capil).
function M.cache_dir()
  return (os.getenv("XDG_CACHE_HOME") or ((os.getenv("HOME") or ".") .. "/.cache")) .. "/capil"
end

--- The backend a name stands for: `local` is workstation when vmrun is
--- found (VMWARE_VMRUN, PATH, the Fusion bundle), else qemu, with a log
--- line saying which and why; nil is the default (qemu); other names are
--- returned as given. `opts` goes to the workstation backend's find_tools.
---@param name? string
---@param opts? {env?: fun(name: string): string?, fusion_dir?: string}
---@return string
function M.resolve_backend(name, opts)
  if name == nil then return M.DEFAULT_BACKEND end
  if name ~= "local" then return name end
  local tools, why = assert(backend.get("workstation")).find_tools(opts)
  local log = require("capil.sys.log")
  if tools then
    log.info("--backend local: %s (%s)", "workstation", tools.vmrun)
    return "workstation"
  end
  log.info("--backend local: %s (%s)", M.DEFAULT_BACKEND, why)
  return M.DEFAULT_BACKEND
end

--- What plan.resolve needs from files: the roles (expanded into steps) and
--- the check sets, looked up in `opts.dirs` (capil.build.recipepath's
--- support_dirs: the recipe's own directory first), else in `recipes_dir`
--- and then in recipes/.
--- Never fails: a load error is carried in the result (role_error,
--- checks_error) for plan.resolve to list with the others.
---@param cfg table a resolved configuration
---@param name string the backend name (roles see it as `builder`)
---@param opts? {recipes_dir?: string, dirs?: string[]}
---@return capil.PlanInputs
function M.inputs(cfg, name, opts)
  opts = opts or {}
  local recipes_dir = opts.recipes_dir or "recipes"
  local ctx = plan.context(cfg, name)
  local roles = require("capil.build.roles")
  local out = { roles = cfg:get("roles") or roles.default_order(ctx.vars) }
  local dirs
  if opts.dirs then
    dirs = {}
    for _, d in ipairs(opts.dirs) do
      if fs.exists(d .. "/roles") then dirs[#dirs + 1] = d .. "/roles" end
    end
    if #dirs == 0 then dirs[1] = opts.dirs[1] .. "/roles" end
  else
    dirs = { recipes_dir .. "/roles" }
    if recipes_dir ~= "recipes" then dirs[2] = "recipes/roles" end
  end
  out.role_steps, out.role_error = roles.expand(out.roles, ctx, { dirs = dirs, recipes_dir = recipes_dir })
  local files = {}
  for _, set in ipairs(cfg:get("checks") or {}) do
    local f
    if opts.dirs then
      local rel = ("checks/%s.lua"):format(set)
      f = recipepath.first_with(opts.dirs, rel) .. "/" .. rel
    else
      f = ("%s/checks/%s.lua"):format(recipes_dir, set)
      if recipes_dir ~= "recipes" and not fs.exists(f) then f = ("recipes/checks/%s.lua"):format(set) end
    end
    files[#files + 1] = f
  end
  out.checks, out.checks_error = require("capil.build.checks").load(ctx, { files = files })
  return out
end

--- Loads the plan's inputs (M.inputs) and resolves the plan. opts as for
--- plan.resolve (output_root, cache_dir, recipes_dir), and `dirs` (the
--- recipe's support directories, capil.build.recipepath.support_dirs):
--- then the installer directory is the first of them holding it.
---@param cfg table
---@param name string a backend name
---@param opts? table
---@return table|nil plan, string[]? errors
function M.plan(cfg, name, opts)
  opts = opts or {}
  if not backend.known(name) then return plan.resolve(cfg, name, opts) end -- its error names the known ones
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.loaded = M.inputs(cfg, name, opts)
  if opts.dirs then
    local idir = cfg:get("installer.dir")
    o.recipes_dir = type(idir) == "string" and recipepath.first_with(opts.dirs, idir, "directory") or opts.dirs[1]
  end
  o.dirs = nil
  return plan.resolve(cfg, name, o)
end

--- Loads recipe `file` (recipe.load) with its `extends` looked up on the
--- recipe search path `layers` (capil.build.recipepath.layers).
---@param file string
---@param layers capil.RecipeLayer[]
---@return table|nil recipe, string[]? errors
function M.load_recipe(file, layers)
  return recipe.load(file, { search = function(n)
    local files, err = recipepath.files(n, layers)
    if not files then return nil, err end
    return files, recipepath.not_found(n, layers)
  end })
end

--- Loads `ref` (a recipe name on the recipe search path, or a path) with the
--- shared options; returns recipe, cfg, plan or nil and a list of errors.
---@param ref string
---@param opts table parsed options
function M.load(ref, opts)
  local layers, lerr = recipepath.layers({ recipes_dir = opts["recipes-dir"] })
  if not layers then return nil, { lerr } end
  local name = M.resolve_backend(opts.backend)
  local file, ferr = recipepath.locate(ref, layers)
  if not file then return nil, { ferr } end
  local r, errs = M.load_recipe(file, layers)
  if not r then return nil, errs end
  local dirs, derr = recipepath.support_dirs(r.files, layers)
  if not dirs then return nil, { derr } end
  local config_dirs = {}
  for i, d in ipairs(dirs) do config_dirs[i] = d .. "/config" end
  local cfg, cerrs = config.resolve(r, {
    backend = name, config_dirs = config_dirs, var_files = opts["var-file"],
    packer_var_files = os.getenv("PACKER_VAR_FILES"), vars = M.vars(opts),
  })
  if not cfg then return nil, cerrs end
  local p, perrs = M.plan(cfg, name, {
    dirs = dirs, output_root = opts.output,
    cache_dir = M.cache_dir(),
  })
  if not p then return nil, perrs end
  return r, cfg, p
end

--- Fails the command with every error listed (exit 1).
function M.fail(errors)
  cli.fail(table.concat(errors, "\n"), 1)
end

return M
