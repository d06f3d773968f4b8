--- capil inspect — the resolved plan as JSON, or where one value came from.
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local json = require("capil.sys.json")
local log = require("capil.sys.log")

local options = { { name = "explain", arg = "KEY", multi = true,
  help = "show a value's layer and file, and the layers it overrode (a variable or field path)" } }
for _, o in ipairs(build_options.options) do options[#options + 1] = o end

return {
  summary = "print the resolved plan of a recipe as JSON",
  usage = "inspect RECIPE [--backend B] [--var-file F] [--var K=V] [--explain KEY]",
  options = options,
  run = function(opts, args)
    if #args ~= 1 then cli.fail("inspect: name one recipe", 2) end
    local r, cfg, p = build_options.load(args[1], opts)
    if not r then build_options.fail(cfg) end
    if opts.explain then
      for _, key in ipairs(opts.explain) do
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
      return 0
    end
    log.out(json.encode(p, { indent = 2, sort_keys = true }))
    return 0
  end,
}
