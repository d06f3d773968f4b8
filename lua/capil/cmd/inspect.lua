--- capil inspect — the resolved plan as JSON, or where one value came from.
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local json = require("capil.sys.json")
local log = require("capil.sys.log")

local options = { { name = "explain", arg = "KEY", multi = true,
  help = "show a value's layer and file, and the layers it overrode (a variable or field path)" },
  { name = "only", arg = "LIST", help = "a bundle: only these build names (comma-separated; * matches any text)" },
  { name = "except", arg = "LIST", help = "a bundle: not these build names (comma-separated; * matches any text)" },
}
for _, o in ipairs(build_options.options) do options[#options + 1] = o end

-- Prints where each of `keys` got its value in `cfg` (--explain); exit 1
-- on an unknown key.
local function explain(cfg, keys)
  for _, key in ipairs(keys) do
    local e, err = cfg:explain(key)
    if not e then cli.fail("inspect: " .. err, 1) end
    local function show(v) return type(v) == "table" and json.encode(v) or tostring(v) end
    local function from(x)
      return x.layer == "default" and "schema default"
        or x.layer == "derived" and (x.note or "") .. " (derived)"
        or (x.where or x.file or x.layer) .. " (" .. x.layer .. ")"
    end
    -- log.out: redacted (secrets, URL passwords) and escaped on a terminal
    if e.layer == "unset" then
      log.out(("%s: not set"):format(e.path or e.key))
    elseif e.layer == "ignored" then
      log.out(("%s: ignored\n  set in %s"):format(e.key, e.file or "?"))
    else
      log.out(("%s = %s\n  from %s"):format(e.path or e.key, show(e.value), from(e)))
    end
    for _, o in ipairs(e.overrides or {}) do
      log.out(("  overrides %s from %s"):format(show(o.value), from(o)))
    end
    if e.note then log.out(("  note: %s"):format(e.note)) end
    if e.var and e.var ~= e.path then log.out(("  variable %s"):format(e.var)) end
    if e.description then log.out(("  %s"):format(e.description)) end
  end
end

-- One recipe: its plan as JSON, or --explain.
local function inspect_one(opts, ref)
  local r, cfg, p = build_options.load(ref, opts)
  if not r then build_options.fail(cfg) end
  if opts.explain then
    explain(cfg, opts.explain)
    return 0
  end
  log.out(json.encode(p, { indent = 2, sort_keys = true }))
  return 0
end

-- A bundle (or --only/--except): every selected build loaded as 'capil run'
-- would load it; their plans as one JSON object keyed by build name, or
-- --explain per build under a "# NAME" line. Every build's errors, named.
local function inspect_builds(opts, args)
  local parallel = require("capil.build.parallel")
  local bundle = require("capil.build.bundle")
  local builds, errs = parallel.builds(args, opts)
  if not builds then cli.fail((table.concat(errs, "\n"):gsub("^run: ", "inspect: ")), 1) end
  if #builds == 0 then cli.fail("inspect: no build left after --only/--except", 1) end
  local plans, cfgs, names, errors = {}, {}, {}, {}
  for _, b in ipairs(builds) do
    local name = bundle.build_label(b)
    if plans[name] then name = ("%s#%d"):format(name, b.index) end
    local r, cfg, p = parallel.load(b, opts)
    if r then
      plans[name], cfgs[#cfgs + 1], names[#names + 1] = p, cfg, name
    else
      -- named as validate names them: the bundle's file, then the build
      local where = b.bundle and ("%s: %s"):format(b.bundle, name) or name
      for _, e in ipairs(cfg) do errors[#errors + 1] = ("%s: %s"):format(where, e) end
    end
  end
  if #errors > 0 then build_options.fail(errors) end
  if opts.explain then
    for i, cfg in ipairs(cfgs) do
      log.out("# " .. names[i])
      explain(cfg, opts.explain)
    end
    return 0
  end
  log.out(json.encode(plans, { indent = 2, sort_keys = true }))
  return 0
end

return {
  summary = "print the resolved plan of a recipe (or of every build of a bundle) as JSON",
  usage = "inspect RECIPE | BUNDLE.lua [--backend B] [--var-file F] [--var K=V] [--explain KEY] [--only L] "
    .. "[--except L]",
  help = [[
Prints the plan 'capil run' would execute: every step with its URLs,
checksums, paths, names, devices and timeouts, and the backend's settings
(secrets by variable name only). Nothing is contacted or created. A bundle
(see 'capil run') prints one JSON object keyed by build name, each build
loaded as 'capil run BUNDLE.lua' loads it; --only and --except choose the
builds. --explain KEY shows where a value came from (its layer and file)
and the layers it overrode; on a bundle, for each build under a '# NAME'
line.]],
  options = options,
  run = function(opts, args)
    if #args == 1 and not (opts.only or opts.except) and not require("capil.build.bundle").is_bundle(args[1]) then
      return inspect_one(opts, args[1])
    end
    if #args ~= 1 then cli.fail("inspect: name one recipe or bundle", 2) end
    return inspect_builds(opts, args)
  end,
}
