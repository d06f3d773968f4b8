-- Golden plans: every seed recipe (recipes/*.lua) resolved on every
-- registered backend, in a fixed environment (no PACKER_VAR_FILES, no govc
-- variables, output root "output", a fixed cache directory), compared with
-- the JSON checked in as spec/golden/<recipe>.<backend>.json. A change to
-- what a build does (a URL, a timeout, a role step, a backend setting)
-- shows up here and in review. After a deliberate change:
--   CAPIL_UPDATE_GOLDEN=1 build/capil /usr/bin/busted --lua=build/capil spec/golden_plans_spec.lua
-- rewrites the files; review their diff before committing.
local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local loader = require("capil.build.loader")
local backend = require("capil.backend")
local json = require("capil.sys.json")
local fs = require("capil.sys.fs")

local DIR = "spec/golden"
local UPDATE = os.getenv("CAPIL_UPDATE_GOLDEN") == "1"
local ENV = {
  cache_dir = "/var/cache/capil", -- not $HOME's
  output_root = "output",
  recipes_dir = "recipes",
}

-- The seed recipes' names (recipes/*.lua), sorted.
local function seed_recipes()
  return require("capil.build.recipe").list("recipes")
end

-- The plan of `name` on `b` as the golden file holds it.
local function plan_json(name, b)
  local r = assert(recipe.load(name, { dir = "recipes" }))
  local cfg = assert(config.resolve(r, { backend = b, config_dir = "recipes/config",
    getenv = function() return nil end }))
  local p, errs = loader.plan(cfg, b, ENV)
  assert(p, errs and table.concat(errs, "\n"))
  return json.encode(p, { indent = 2, sort_keys = true }) .. "\n"
end

-- The first line where `a` and `b` differ, for the failure message.
local function first_difference(a, b)
  local la, lb = {}, {}
  for l in (a .. "\n"):gmatch("(.-)\n") do la[#la + 1] = l end
  for l in (b .. "\n"):gmatch("(.-)\n") do lb[#lb + 1] = l end
  for i = 1, math.max(#la, #lb) do
    if la[i] ~= lb[i] then
      return ("line %d:\n  golden:   %s\n  resolved: %s"):format(i, la[i] or "(end of file)", lb[i] or "(end of file)")
    end
  end
end

describe("golden plans #unit", function()
  local recipes = seed_recipes()
  local expected = {}

  it("has seed recipes and backends to resolve", function()
    assert.is_true(#recipes > 0)
    assert.is_true(#backend.names() > 0)
  end)

  for _, name in ipairs(recipes) do
    for _, b in ipairs(backend.names()) do
      local file = ("%s/%s.%s.json"):format(DIR, name, b)
      expected[file] = true
      it(("resolves %s on %s as %s says"):format(name, b, file), function()
        local got = plan_json(name, b)
        if UPDATE then
          assert(fs.mkdir(DIR))
          assert(fs.write(file, got))
          return
        end
        local want = fs.read(file)
        assert(want, ("%s is missing: run this spec with CAPIL_UPDATE_GOLDEN=1 to write it"):format(file))
        if want ~= got then
          error(("the plan of %s on %s differs from %s (%s)\nIf the change is intended, rewrite the golden files "
            .. "with CAPIL_UPDATE_GOLDEN=1 and review their diff."):format(name, b, file,
            first_difference(want, got)), 0)
        end
      end)
    end
  end

  it("holds no golden file for a recipe or backend that is gone", function()
    local stale = {}
    for _, n in ipairs(fs.list(DIR) or {}) do
      local f = DIR .. "/" .. n
      if not expected[f] then
        if UPDATE then fs.remove(f) else stale[#stale + 1] = f end
      end
    end
    assert.same({}, stale, "stale golden files (CAPIL_UPDATE_GOLDEN=1 removes them)")
  end)

  it("holds no machine-dependent value", function()
    local home = os.getenv("HOME")
    for f in pairs(expected) do
      local text = fs.read(f) or ""
      -- the ISO cache is the fixed one, not $HOME's (guest paths like /root/.ssh may appear)
      if home and #home > 1 then assert.is_nil(text:find(home .. "/.cache", 1, true), f .. " holds $HOME/.cache") end
      assert.truthy(text:find('"cache_path": "' .. ENV.cache_dir .. "/iso/", 1, true), f .. ": ISO not in the fixed cache")
      assert.is_nil(text:find(fs.realpath(".") .. "/", 1, true), f .. " holds the checkout's path")
    end
  end)
end)
