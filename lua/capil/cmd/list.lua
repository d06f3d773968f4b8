--- capil list — the recipes and the backends they build on (image-builder's `make help`).
local cli = require("capil.cli")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local recipe = require("capil.build.recipe")
local backend = require("capil.backend")

return {
  summary = "list recipes and backends",
  usage = "list [--recipes-dir DIR]",
  options = { { name = "recipes-dir", arg = "DIR", help = "where to look (default: recipes)" } },
  run = function(opts)
    local dir = opts["recipes-dir"] or "recipes"
    local st = fs.stat(dir)
    if not st or st.type ~= "directory" then
      cli.fail(("list: %s: %s"):format(dir, st and "not a directory" or "no such directory"), 1)
    end
    local names = recipe.list(dir)
    local out = { "Recipes (capil run RECIPE --backend BACKEND):" }
    -- a recipe that does not load is listed and marked; the others still are
    local bad = 0
    for _, n in ipairs(names) do
      local ok, r = pcall(recipe.load, n, { dir = dir })
      local desc = ok and r and (r.fields.description or r.fields.os_display_name)
      if type(desc) ~= "string" then desc = "" end
      if not (ok and r) then
        bad = bad + 1
        desc = "(does not load: capil validate " .. n .. ")"
      end
      out[#out + 1] = ("  %-16s %s"):format(n, desc)
    end
    if #names == 0 then out[#out + 1] = "  (none in " .. dir .. ")" end
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
    if bad > 0 then
      log.error("list: %d of %d recipes in %s do not load", bad, #names, dir)
      return 1
    end
    return 0
  end,
}
