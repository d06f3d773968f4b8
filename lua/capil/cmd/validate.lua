--- capil validate — schema and plan check of recipes, no side effects.
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local log = require("capil.sys.log")

return {
  summary = "check recipes against the schema and resolve their plans (no side effects)",
  usage = "validate RECIPE... [--backend B] [--var-file F] [--var K=V]",
  help = "Every error is listed with its file, line where known, and field; exit 1 if any recipe is invalid.",
  options = build_options.options,
  run = function(opts, args)
    if #args == 0 then cli.fail("validate: name at least one recipe (see 'capil list')", 2) end
    local bad = 0
    for _, ref in ipairs(args) do
      local r, cfg_or_errs = build_options.load(ref, opts)
      if r then
        log.out(("%s: ok"):format(r.file))
      else
        bad = bad + 1
        for _, e in ipairs(cfg_or_errs) do log.err(e) end
      end
    end
    return bad == 0 and 0 or 1
  end,
}
