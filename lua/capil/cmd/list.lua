--- capil list — the recipes and the backends they build on (image-builder's
--- `make help`), with the layer of the recipe search path each recipe comes
--- from (capil.build.recipepath).
local cli = require("capil.cli")
local log = require("capil.sys.log")
local loader = require("capil.build.loader")
local recipepath = require("capil.build.recipepath")
local backend = require("capil.backend")

return {
  summary = "list recipes (and where each comes from) and backends",
  usage = "list [--recipes-dir DIR]",
  help = [[Recipes are looked up on the recipe search path, lowest priority first:
the built-in recipes (embedded in capil, or recipes/ of the source tree when
capil runs from its build directory), ~/.config/capil/recipes
($XDG_CONFIG_HOME/capil/recipes), the directories of CAPIL_RECIPES_PATH
(colon-separated; the first wins), --recipes-dir. A recipe of the same name
in a higher layer overrides the lower one; the FROM column says where each
comes from. 'capil recipe show NAME' prints a recipe's source.]],
  options = { { name = "recipes-dir", arg = "DIR", help = "look here first (see above)" } },
  run = function(opts)
    local layers, lerr = recipepath.layers({ recipes_dir = opts["recipes-dir"] })
    if not layers then cli.fail("list: " .. lerr, 1) end
    local entries = recipepath.entries(layers)
    local rows, width = {}, 0
    -- a recipe that does not load is listed and marked; the others still are
    local bad, total = {}, {}
    for _, e in ipairs(entries) do
      local file, ferr = recipepath.locate(e.name, layers)
      local ok, r = false, nil
      if file then ok, r = pcall(loader.load_recipe, file, layers) end
      local desc = ok and r and (r.fields.description or r.fields.os_display_name)
      if type(desc) ~= "string" then desc = "" end
      total[e.layer.label] = (total[e.layer.label] or 0) + 1
      if not (ok and r) then
        bad[e.layer.label] = (bad[e.layer.label] or 0) + 1
        desc = "(does not load: capil validate " .. e.name .. ")"
        if ferr then log.debug("list: %s: %s", e.name, ferr) end
      end
      local from = e.layer.label
      if #e.shadows > 0 then from = from .. " (overrides " .. e.shadows[1].label .. ")" end
      rows[#rows + 1] = { e.name, desc, from }
      if #desc > width then width = #desc end
    end
    local out = { "Recipes (capil run RECIPE --backend BACKEND):" }
    if #rows > 0 then
      out[#out + 1] = ("  %-16s %-" .. width .. "s  %s"):format("NAME", "DESCRIPTION", "FROM")
    end
    for _, row in ipairs(rows) do
      out[#out + 1] = ("  %-16s %-" .. width .. "s  %s"):format(row[1], row[2], row[3])
    end
    if #rows == 0 then
      local where = {}
      for i = #layers, 1, -1 do where[#where + 1] = layers[i].label end
      out[#out + 1] = "  (none in " .. table.concat(where, ", ") .. ")"
    end
    out[#out + 1] = ""
    out[#out + 1] = "Backends:"
    local bs = backend.names()
    table.sort(bs)
    for _, b in ipairs(bs) do
      local mod = assert(backend.get(b))
      out[#out + 1] = ("  %-16s %s"):format(b, mod.description or "")
    end
    out[#out + 1] = ""
    out[#out + 1] = "Every recipe builds on every backend; `capil run --all` builds them all."
    log.out(table.concat(out, "\n"))
    local failed = false
    for i = #layers, 1, -1 do
      local label = layers[i].label
      if bad[label] then
        failed = true
        log.error("list: %d of %d recipes in %s do not load", bad[label], total[label], label)
      end
    end
    return failed and 1 or 0
  end,
}
