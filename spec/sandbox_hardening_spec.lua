-- Hostile recipes against the real binary: the string metatable, the
-- instruction budget, values that run code after the recipe returned, the
-- memory ceiling and Ctrl-C. Each must fail with one clear line (no
-- traceback), and a recipe loaded after it in the same process must behave.
local capil = require("spec.support.capil")
local peer = require("spec.support.peer")
local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")

local GOOD = "recipes/ubuntu-2004.lua"

local function assert_clean(r)
  assert.is_nil(r.stderr:find("stack traceback", 1, true), r.stderr)
  assert.is_nil(r.stderr:find("lua/capil/", 1, true), r.stderr)
end

-- `capil validate hostile good` in one process: the hostile one fails with
-- `pattern` in stderr, the good one still validates.
local function validate_pair(path, pattern, timeout)
  local r = capil.run({ "validate", path, GOOD }, { timeout = timeout or 20 })
  assert.equal(1, r.code, r.stdout .. r.stderr)
  assert.matches(pattern, r.stderr)
  assert_clean(r)
  assert.matches(GOOD .. ": ok\n", r.stdout .. r.stderr, 1, true)
  assert.is_nil((r.stdout .. r.stderr):find("forged", 1, true))
  return r
end

describe("sandbox hardening #unit", function()
  local dir
  setup(function() dir = peer.dir("sandbox-hardening") end)

  local function write(name, source) return capil.script(dir, name, source) end

  describe("the string library", function()
    it("getmetatable of a string reaches nothing", function()
      local p = write("mt.lua", [[
local mt = getmetatable("")
mt.__index.format = function() return "forged" end
return { name = "x" }
]])
      validate_pair(p, "mt%.lua:2: attempt to index a nil value")
    end)

    it("a swallowed attempt changes nothing for the host or the next recipe", function()
      local p = write("swallowed.lua", [[
pcall(function() getmetatable("").__index.format = function() return "forged" end end)
pcall(function() string.format = function() return "forged" end end)
pcall(function() getmetatable(_ENV).__index = nil end)
assert(("%s-%d"):format("a", 1) == "a-1")
assert(string.dump == nil and ("").dump == nil, "dump reachable")
return { name = ("%s"):format("x") }
]])
      -- the recipe itself is incomplete (schema errors), the good one is untouched
      validate_pair(p, "swallowed%.lua: distro%.name: required")
    end)

    it("string methods are the sandbox's: rep is capped, dump is gone", function()
      local p = write("rep.lua", 'return { name = ("x"):rep(100000000) }\n')
      validate_pair(p, "rep%.lua:1: string%.rep: result over 16 MiB")
      p = write("dump.lua", 'return { name = ("x").dump(function() end) }\n')
      validate_pair(p, "dump%.lua:1: attempt to call a nil value")
    end)

    it("the string method table is read-only from inside", function()
      local p = write("ro.lua", [[
local ok, err = pcall(function() return ("x").format end)
assert(ok and err ~= nil)
getmetatable("x")
string.upper = function() return "forged" end -- its own copy: allowed
return { name = ("abc"):upper() }
]])
      local r = capil.run({ "validate", p, GOOD }, { timeout = 20 })
      assert_clean(r)
      assert.is_nil((r.stdout .. r.stderr):find("forged", 1, true))
      assert.matches(GOOD .. ": ok\n", r.stdout .. r.stderr, 1, true)
    end)

    it("setmetatable refuses __gc and metatables capil set", function()
      local p = write("gc.lua", 'setmetatable({}, { __gc = function() while true do end end })\nreturn {}\n')
      validate_pair(p, "gc%.lua:1: setmetatable: __gc is not available in recipes")
      p = write("envmt.lua", 'setmetatable(_ENV, nil)\nreturn {}\n')
      validate_pair(p, "envmt%.lua:1: setmetatable: this table's metatable belongs to capil")
    end)
  end)

  describe("the budget", function()
    it("pcall cannot swallow it", function()
      local p = write("pcall.lua", "while true do pcall(function() while true do end end) end\n")
      local t0 = runtime.now()
      validate_pair(p, "pcall%.lua:1: stopped after 10 million instructions")
      assert.is_true(runtime.now() - t0 < 10)
    end)

    it("xpcall and its handler cannot either", function()
      local p = write("xpcall.lua", [[
while true do xpcall(function() while true do end end, function(m) while true do end end) end
]])
      validate_pair(p, "xpcall%.lua:1: stopped after 10 million instructions")
    end)

    it("__close handlers run under it too", function()
      local p = write("close.lua", [[
while true do
  pcall(function()
    local x <close> = setmetatable({}, { __close = function() while true do end end })
    while true do end
  end)
end
]])
      validate_pair(p, "close%.lua:%d: stopped after 10 million instructions")
    end)

    it("metamethods run by the host after the recipe returns do not exist: data is copied", function()
      local p = write("grow.lua", [[
local list = setmetatable({}, { __index = function(_, i) return "x" .. i end })
return { name = "grow", iso = { urls = list }, vars = setmetatable({}, { __pairs = function() while true do end end }) }
]])
      local r = capil.run({ "validate", p, GOOD }, { timeout = 20 })
      assert_clean(r)
      assert.matches(GOOD .. ": ok\n", r.stdout .. r.stderr, 1, true)
      assert.matches("grow%.lua", r.stderr)
    end)

    it("functions, cycles and deep nesting in the data are refused, naming the field", function()
      local p = write("fn.lua", 'return { name = "x", boot = { command = { function() end } } }\n')
      validate_pair(p, "fn%.lua: field 'boot%.command%[1%]' is a function")
      p = write("cycle.lua", 'local t = { name = "x" } t.vars = { t }\nreturn t\n')
      validate_pair(p, "cycle%.lua: field 'vars%[1%]' contains itself")
      p = write("deep.lua", 'local t = {} for _ = 1, 100 do t = { t } end\nreturn { vars = t }\n')
      validate_pair(p, "deep%.lua: field 'vars[^']*' nests deeper than 64 tables")
    end)

    it("an error object with __tostring is not run", function()
      local p = write("errobj.lua", 'error(setmetatable({}, { __tostring = function() while true do end end }))\n')
      validate_pair(p, "errobj%.lua: raised a table value, not a message")
    end)

    it("memory has a ceiling", function()
      local p = write("mem.lua", [[
local t = {}
for i = 1, 1000 do t[i] = ("x"):rep(16 * 1024 * 1024 - 8) .. i end
return {}
]])
      -- 256 MiB of strings take 14 s to make under ASan on an idle machine
      validate_pair(p, "mem%.lua: over the memory limit of 256 MiB", 90)
    end)
  end)

  describe("signals", function()
    -- a loop the budget would take hours to stop: each iteration is one big C call
    local function runaway(name, body)
      local p = write(name, body)
      local h = assert(proc.spawn({ argv = { capil.exe, "validate", p }, stdin = "null", stdout = "null",
        stderr = p .. ".err" }))
      runtime.sleep(0.5)
      return h, p .. ".err"
    end

    local function stops_within(h, errfile, sig, code)
      assert.is_true(h:running())
      assert(h:kill(sig))
      local t0 = runtime.now()
      local st = assert(h:wait({ timeout = 3 }))
      local took = runtime.now() - t0
      h:close()
      assert.is_true(took < 1, ("took %.2f s"):format(took))
      assert.equal(code, st.code)
      local stderr = assert(require("capil.sys.fs").read(errfile))
      assert.matches("interrupted", stderr)
      assert.is_nil(stderr:find("stack traceback", 1, true), stderr)
    end

    it("Ctrl-C stops a loop of big C calls within a second (exit 130)", function()
      local h, errfile = runaway("bigrep.lua", 'local n = 0\nwhile true do n = n + #("x"):rep(16 * 1024 * 1024 - 1) end\n')
      stops_within(h, errfile, "INT", 130)
    end)

    it("SIGTERM stops code stuck in one C call within a second (exit 143)", function()
      local h, errfile = runaway("backtrack.lua",
        'return { name = tostring(("a"):rep(40):find(("a?"):rep(40) .. ("a"):rep(40) .. "b")) }\n')
      stops_within(h, errfile, "TERM", 143)
    end)
  end)
end)
