--- capil.build.loader — the options every recipe command shares (--backend,
--- --var-file, --var, PACKER_VAR_FILES) and loading a recipe through them
--- into a resolved configuration and plan, with all errors collected.
local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local plan = require("capil.build.plan")
local cli = require("capil.cli")

local M = {}

M.DEFAULT_BACKEND = "qemu"

M.options = {
  { name = "backend", short = "b", arg = "NAME",
    help = "qemu (default), vsphere, esx, workstation, local (workstation when vmrun is found, else qemu)" },
  { name = "var-file", arg = "FILE", multi = true,
    help = "JSON variables (image-builder format); after PACKER_VAR_FILES, last wins" },
  { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
  { name = "recipes-dir", arg = "DIR", help = "where recipe names are looked up (default: recipes)" },
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
  local tools, why = require("capil.backends.workstation").find_tools(opts)
  local log = require("capil.sys.log")
  if tools then
    log.info("--backend local: %s (%s)", "workstation", tools.vmrun)
    return "workstation"
  end
  log.info("--backend local: qemu (%s)", why)
  return "qemu"
end

--- Loads `ref` with the shared options; returns recipe, cfg, plan or nil
--- and a list of errors.
---@param ref string
---@param opts table parsed options
function M.load(ref, opts)
  local dir = opts["recipes-dir"] or "recipes"
  local backend = M.resolve_backend(opts.backend)
  local r, errs = recipe.load(ref, { dir = dir })
  if not r then return nil, errs end
  -- a recipes dir without its own config/ uses the built-in one
  local config_dir = dir .. "/config"
  if dir ~= "recipes" and not require("capil.sys.fs").exists(config_dir) then config_dir = "recipes/config" end
  local cfg, cerrs = config.resolve(r, {
    backend = backend, config_dir = config_dir, var_files = opts["var-file"],
    packer_var_files = os.getenv("PACKER_VAR_FILES"), vars = M.vars(opts),
  })
  if not cfg then return nil, cerrs end
  local p, perrs = plan.resolve(cfg, backend, {
    recipes_dir = dir, output_root = opts.output,
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
