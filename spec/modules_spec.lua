-- The installed binary carries the whole library: a copy of capil outside
-- the build tree (where it cannot read lua/ or backends/) loads every
-- module of the source tree from its embedded copy, subfolders included.
local capil = require("support.capil")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")

-- Every module of the source tree: lua/capil/x/y.lua -> capil.x.y,
-- backends/esx/init.lua -> capil.backends.esx (LuaLS ---@meta files aside).
local function modules()
  local out = {}
  local function walk(dir, prefix)
    for _, name in ipairs(assert(fs.list(dir))) do
      local path = dir .. "/" .. name
      if fs.stat(path).type == "directory" then
        if name ~= "types" then walk(path, prefix .. "." .. name) end
      elseif name:match("%.lua$") then
        local mod = name == "init.lua" and prefix or prefix .. "." .. name:gsub("%.lua$", "")
        out[#out + 1] = mod
      end
    end
  end
  walk("lua/capil", "capil")
  walk("backends", "capil.backends")
  table.sort(out)
  return out
end

describe("the installed binary #unit", function()
  local dir
  before_each(function() dir = assert(fs.tempdir({ prefix = "capil-spec-inst" })) end)
  after_each(function() fs.remove(dir, { recursive = true }) end)

  it("finds every module of the source tree, subfolders included", function()
    local mods = modules()
    assert.truthy(#mods > 50)
    assert.truthy(table.concat(mods, " "):find("capil.backends.esx.ssh", 1, true))
    local exe = dir .. "/capil"
    assert(fs.copy(capil.exe, exe))
    assert(proc.run({ argv = { "chmod", "755", exe } }))
    local script = capil.script(dir, "load.lua", [[
      local failed = {}
      for _, m in ipairs(arg) do
        local ok, err = pcall(require, m)
        if not ok then failed[#failed + 1] = m .. ": " .. tostring(err) end
      end
      io.write(#failed == 0 and "all loaded\n" or table.concat(failed, "\n"))
    ]])
    local argv = { exe, script }
    for _, m in ipairs(mods) do argv[#argv + 1] = m end
    local r = assert(proc.run({ argv = argv, cwd = dir, timeout = 60 }))
    assert.equal("all loaded\n", r.stdout)
    assert.equal(0, r.code)
  end)
end)
