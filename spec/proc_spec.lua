local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")

describe("proc #unit", function()
  it("runs argv arrays and captures output and exit code", function()
    local r = assert(proc.run({ argv = { "sh", "-c", "echo out; echo err >&2; exit 3" } }))
    assert.equal(3, r.code)
    assert.equal("out\n", r.stdout)
    assert.equal("err\n", r.stderr)
  end)

  it("passes arguments verbatim, never through a shell", function()
    local r = assert(proc.run({ argv = { "printf", "%s|", "a b", "$HOME", "; rm -rf /", "*" } }))
    assert.equal("a b|$HOME|; rm -rf /|*|", r.stdout)
  end)

  it("feeds large stdin while draining output (no deadlock)", function()
    local input = ("0123456789abcdef"):rep(256 * 1024) -- 4 MiB
    local r = assert(proc.run({ argv = { "cat" }, stdin = input, timeout = 30 }))
    assert.equal(0, r.code)
    assert.equal(#input, #r.stdout)
    assert.equal(input, r.stdout)
  end)

  it("streams output line by line as it arrives", function()
    local lines = {}
    local r = assert(proc.run({
      argv = { "sh", "-c", "echo one; echo two >&2; printf three" },
      on_line = function(stream, line) lines[#lines + 1] = stream .. ":" .. line end,
    }))
    assert.equal(0, r.code)
    table.sort(lines)
    assert.same({ "stderr:two", "stdout:one", "stdout:three" }, lines)
  end)

  it("returns a distinct timeout result and kills the child", function()
    local t0 = runtime.now()
    local r, err, code, partial = proc.run({ argv = { "sh", "-c", "echo started; exec sleep 30" }, timeout = 0.5 })
    assert.is_nil(r)
    assert.equal("ETIMEDOUT", code)
    assert.equal("proc.run: sh timed out after 0.5 s", err)
    assert.equal("started\n", partial.stdout)
    assert.is_true(runtime.now() - t0 < 5)
  end)

  it("reports a missing program with ENOENT and its name", function()
    local r, err, code = proc.run({ argv = { "capil-no-such-program" } })
    assert.is_nil(r)
    assert.equal("ENOENT", code)
    assert.equal("proc.spawn: capil-no-such-program: No such file or directory", err)
  end)

  it("sets the environment and working directory", function()
    local r = assert(proc.run({
      argv = { "sh", "-c", "echo $CAPIL_T:$PWD" }, env_add = { CAPIL_T = "v1" }, cwd = "/tmp",
    }))
    assert.equal("v1:/tmp\n", r.stdout)
    r = assert(proc.run({ argv = { "/usr/bin/env" }, env = { ONLY = "this" } }))
    assert.equal("ONLY=this\n", r.stdout)
  end)

  it("spawns, signals, waits and reports signals", function()
    local p = assert(proc.spawn({ argv = { "sleep", "30" } }))
    assert.is_true(p:running())
    assert.is_true(proc.alive(p.pid))
    local none, _, code = p:wait({ timeout = 0.1 })
    assert.is_nil(none)
    assert.equal("ETIMEDOUT", code)
    assert(p:kill("TERM"))
    local st = assert(p:wait({ timeout = 5 }))
    assert.equal(15, st.signal)
    assert.equal(143, st.code)
    p:close()
    p:close() -- idempotent
    assert.has_error(function() p:wait() end, "attempt to use a closed process")
  end)

  it("kills the child when the handle is closed or collected", function()
    local pid
    do
      local p <close> = assert(proc.spawn({ argv = { "sleep", "30" } }))
      pid = p.pid
    end
    assert.is_false(proc.alive(pid))
    local p = assert(proc.spawn({ argv = { "sleep", "30" } }))
    pid = p.pid
    p = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_false(proc.alive(pid))
  end)

  it("writes stdout to a file and stderr to stdout", function()
    local path = os.tmpname()
    local p = assert(proc.spawn({ argv = { "sh", "-c", "echo a; echo b >&2" }, stdout = path, stderr = "stdout" }))
    assert.equal(0, assert(p:wait({ timeout = 5 })).code)
    p:close()
    local f = assert(io.open(path))
    assert.equal("a\nb\n", f:read("a"))
    f:close()
    os.remove(path)
  end)

  it("rejects misuse with errors naming the option", function()
    assert.has_error(function() proc.spawn({ argv = { "true" }, stdoot = "pipe" }) end,
      "proc.spawn: unknown option 'stdoot'")
    assert.has_error(function() proc.spawn({ argv = {} }) end, "proc.spawn: argv is empty")
    assert.has_error(function() proc.run({ argv = "ls -l" }) end)
  end)
end)

describe("proc daemons and exec #unit", function()
  local capil = require("support.capil")

  -- The session id of a process (field 6 of /proc/<pid>/stat).
  local function session_of(pid)
    local f = assert(io.open(("/proc/%d/stat"):format(pid)))
    local stat = f:read("a")
    f:close()
    return tonumber(stat:match("^%d+ %b() %S+ %d+ %d+ (%d+)"))
  end

  it("a daemon gets its own session and outlives the capil that started it", function()
    local r = capil.run({ "-e", [[
      local p = assert(require("capil.sys.proc").spawn({ argv = { "sleep", "30" }, stdin = "null", stdout = "null",
        stderr = "null", daemon = true }))
      p:detach()
      print(p.pid)]] })
    assert.equal(0, r.code, r.stderr)
    local pid = assert(tonumber(r.stdout))
    finally(function() if proc.alive(pid) then proc.kill(pid, "KILL") end end)
    runtime.sleep(0.3)
    assert.is_true(proc.alive(pid), "the daemon died with its parent")
    assert.equal(pid, session_of(pid))
    -- an ordinary child dies with the capil that started it (PDEATHSIG)
    r = capil.run({ "-e", [[
      local p = assert(require("capil.sys.proc").spawn({ argv = { "sleep", "30" }, stdin = "null", stdout = "null", stderr = "null" }))
      p:detach()
      print(p.pid)]] })
    local child = assert(tonumber(r.stdout))
    for _ = 1, 50 do if not proc.alive(child) then break end runtime.sleep(0.1) end
    assert.is_false(proc.alive(child))
  end)

  it("exec replaces the process, or returns the reason", function()
    local r = capil.run({ "-e", [[io.write("before ") require("capil.sys.proc").exec({ "sh", "-c", "echo ran; exit 7" })]] })
    assert.equal(7, r.code)
    assert.equal("before ran\n", r.stdout)
    local _, err, code = proc.exec({ "/nonexistent/capil-nothing" })
    assert.equal("ENOENT", code)
    assert.matches("/nonexistent/capil-nothing", err, 1, true)
  end)
end)
