local capil = require("support.capil")
local peer = require("support.peer")
local fs = require("capil.sys.fs")

describe("host: capil as a Lua interpreter #unit", function()
  local dir
  setup(function() dir = peer.dir("host") end)

  it("runs a script with arg and ... like lua", function()
    local s = capil.script(dir, "args.lua", [[
      print(select("#", ...), ...)
      print(arg[0], arg[1], arg[2], arg[-1] ~= nil)
    ]])
    local r = capil.run({ s, "a", "b c" })
    assert.equal(0, r.code)
    assert.equal("2\ta\tb c\n" .. s .. "\ta\tb c\ttrue\n", r.stdout)
  end)

  it("runs -e chunks and returns os.exit codes", function()
    local r = capil.run({ "-e", "io.write(#arg, ' ', arg[1], ' ', ...) os.exit(7)", "x" })
    assert.equal(7, r.code)
    assert.equal("1 x x", r.stdout)
  end)

  it("reads a script from stdin with -", function()
    local r = capil.run({ "-" }, { stdin = "print('from stdin')" })
    assert.equal(0, r.code)
    assert.equal("from stdin\n", r.stdout)
  end)

  it("reports an error with a traceback and exits 1", function()
    local s = capil.script(dir, "err.lua", "local function f() error('boom') end\nf()\n")
    local r = capil.run({ s })
    assert.equal(1, r.code)
    assert.matches("err.lua:1: boom", r.stderr, 1, true)
    assert.matches("stack traceback:", r.stderr, 1, true)
  end)

  it("reports a syntax error naming the file and line", function()
    local s = capil.script(dir, "syntax.lua", "x = = 1\n")
    local r = capil.run({ s })
    assert.equal(1, r.code)
    assert.matches("syntax.lua:1:", r.stderr, 1, true)
  end)

  it("loads the embedded library when asked, and from CAPIL_PATH", function()
    local r = capil.run({ "version" }, { env_add = { CAPIL_EMBEDDED = "1" } })
    assert.equal(0, r.code)
    assert.matches("library embedded", r.stdout, 1, true)
    -- every embedded module compiles and loads
    r = capil.run({ "-e", [[
      local _, mods = require("capil.core.runtime").library()
      for _, m in ipairs(mods) do
        if not m:match("^capil%.cmd%.") then require(m) end
      end
      print(#mods)
    ]] }, { env_add = { CAPIL_EMBEDDED = "1" } })
    assert.equal(0, r.code, r.stderr)
    assert.truthy(tonumber(r.stdout) > 5)
  end)

  it("prefers CAPIL_PATH for the Lua library", function()
    local root = peer.dir("lib")
    assert(fs.mkdir(root .. "/lua/capil"))
    assert(fs.write(root .. "/lua/capil/probe.lua", "return 'from CAPIL_PATH'"))
    local r = capil.run({ "-e", "print((require('capil.probe')))" }, { env_add = { CAPIL_PATH = root } })
    assert.equal(0, r.code, r.stderr)
    assert.equal("from CAPIL_PATH\n", r.stdout)
  end)
end)

describe("host: cleanups and Ctrl-C #unit", function()
  local proc = require("capil.sys.proc")
  local runtime = require("capil.core.runtime")
  local dir
  setup(function() dir = peer.dir("intr") end)

  -- Starts a script that creates a temp dir, a child process and a marker
  -- cleanup, prints "ready <tempdir> <childpid>", then blocks in `how`.
  local function start(how)
    local s = capil.script(dir, "block-" .. how .. ".lua", ([[
      local fs = require("capil.sys.fs")
      local proc = require("capil.sys.proc")
      local cleanup = require("capil.sys.cleanup")
      local tmp = assert(fs.tempdir({ parent = %q }))
      local child = assert(proc.spawn({ argv = { "sleep", "60" } }))
      cleanup.push("sleep child", function() child:close() end)
      cleanup.push("marker", function()
        assert(fs.write(%q, "cleaned"))
      end)
      io.stdout:write("ready ", tmp, " ", child.pid, "\n")
      io.stdout:flush()
      if %q == "lua" then
        while true do end
      elseif %q == "pcall" then
        while true do pcall(function() for _ = 1, 1e9 do end end) end
      else
        require("capil.core.runtime").sleep(60)
      end
    ]]):format(dir, dir .. "/marker-" .. how, how, how))
    local p = assert(proc.spawn({ argv = { capil.exe, s }, stdout = "pipe", stderr = "pipe" }))
    local out = ""
    while not out:find("\n") do
      local stream, chunk = p:read({ timeout = 20 })
      assert(stream, "script did not get ready")
      if stream == "stdout" then out = out .. chunk end
    end
    local tmp, pid = out:match("^ready (%S+) (%d+)")
    return p, tmp, tonumber(pid)
  end

  for _, how in ipairs({ "lua", "pcall", "sleep" }) do
    it("runs the cleanups and exits 130 on SIGINT while blocked in " .. how, function()
      local p, tmp, child = start(how)
      assert.is_true(fs.exists(tmp))
      assert(p:kill("INT"))
      local t0 = runtime.now()
      local st = assert(p:wait({ timeout = 15 }))
      assert.is_true(runtime.now() - t0 < 15)
      assert.equal(130, st.code)
      assert.equal("cleaned", fs.read(dir .. "/marker-" .. how))
      assert.is_false(fs.exists(tmp))
      assert.is_false(proc.alive(child))
      p:close()
    end)
  end

  it("runs cleanups on a normal exit and after an error", function()
    local s = capil.script(dir, "err-cleanup.lua", ([[
      local cleanup = require("capil.sys.cleanup")
      cleanup.push("marker", function() io.open(%q, "w"):close() end)
      local h = cleanup.push("cancelled", function() io.open(%q, "w"):close() end)
      h:cancel()
      error("failed on purpose")
    ]]):format(dir .. "/after-error", dir .. "/cancelled"))
    local r = capil.run({ s })
    assert.equal(1, r.code)
    assert.is_true(fs.exists(dir .. "/after-error"))
    assert.is_false(fs.exists(dir .. "/cancelled"))
  end)
end)
