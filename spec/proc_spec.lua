local proc = require("capil.proc")
local host = require("capil.core.host")

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
    local t0 = host.now()
    local r, err, code, partial = proc.run({ argv = { "sh", "-c", "echo started; exec sleep 30" }, timeout = 0.5 })
    assert.is_nil(r)
    assert.equal("ETIMEDOUT", code)
    assert.equal("proc.run: sh timed out after 0.5 s", err)
    assert.equal("started\n", partial.stdout)
    assert.is_true(host.now() - t0 < 5)
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
