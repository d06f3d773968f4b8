--- capil list — the recipes and the backends they build on (image-builder's `make help`).
local recipe = require("capil.recipe")
local plan = require("capil.plan")

return {
  summary = "list recipes and backends",
  usage = "list [--recipes-dir DIR]",
  options = { { name = "recipes-dir", arg = "DIR", help = "where to look (default: recipes)" } },
  run = function(opts)
    local dir = opts["recipes-dir"] or "recipes"
    local names = recipe.list(dir)
    local out = { "Recipes (capil run RECIPE --backend BACKEND):" }
    for _, n in ipairs(names) do
      local r = recipe.load(n, { dir = dir })
      local desc = r and (r.fields.description or r.fields.os_display_name) or "(does not load: capil validate " .. n .. ")"
      out[#out + 1] = ("  %-16s %s"):format(n, desc)
    end
    out[#out + 1] = ""
    out[#out + 1] = "Backends:"
    local bs = {}
    for b in pairs(plan.BACKENDS) do bs[#bs + 1] = b end
    table.sort(bs)
    for _, b in ipairs(bs) do out[#out + 1] = ("  %-16s %s"):format(b, plan.BACKENDS[b].description) end
    out[#out + 1] = ""
    out[#out + 1] = "Every recipe builds on every backend; `capil run --all` builds them all."
    io.stdout:write(table.concat(out, "\n"), "\n")
    return 0
  end,
}
