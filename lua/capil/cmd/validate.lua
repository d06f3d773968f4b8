--- capil validate — schema and plan check of recipes and bundles, no side effects.
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local log = require("capil.sys.log")

local options = {
  { name = "only", arg = "LIST", help = "bundles: only these build names (comma-separated; * matches any text)" },
  { name = "except", arg = "LIST", help = "bundles: not these build names (comma-separated; * matches any text)" },
}
for _, o in ipairs(build_options.options) do options[#options + 1] = o end

return {
  summary = "check recipes and bundles against the schema and resolve their plans (no side effects)",
  usage = "validate RECIPE... | BUNDLE.lua... [--backend B] [--var-file F] [--var K=V] [--only L] [--except L]",
  help = [[
Every error is listed with its file, line where known, and field; exit 1 if
any recipe is invalid. A bundle (see 'capil run') is validated build by
build, each loaded as 'capil run BUNDLE.lua' would load it (the command
line's --backend and --var over the bundle's); its lines name the bundle and
the build ('bundle.lua: ubuntu-2204-efi: ok'), every invalid build is
listed. --only and --except choose builds by name, as for 'capil run'.
Nothing is contacted: 'capil run --dry-run' also checks the backend (tools,
disk space, the vSphere server and placement).]],
  options = options,
  run = function(opts, args)
    if #args == 0 then cli.fail("validate: name at least one recipe or bundle (see 'capil list')", 2) end
    local parallel = require("capil.build.parallel")
    local bundle = require("capil.build.bundle")
    local builds, errs = parallel.builds(args, opts)
    if not builds then
      for _, e in ipairs(errs) do log.err((e:gsub("^run: ", "validate: "))) end
      return 1
    end
    local bad = 0
    for _, b in ipairs(builds) do
      local r, cfg_or_errs = parallel.load(b, opts)
      local name = b.bundle and ("%s: %s"):format(b.bundle, bundle.build_label(b))
      if r then
        log.out(("%s: ok"):format(name or r.file))
      else
        bad = bad + 1
        for _, e in ipairs(cfg_or_errs) do log.err(name and ("%s: %s"):format(name, e) or e) end
      end
    end
    return bad == 0 and 0 or 1
  end,
}
