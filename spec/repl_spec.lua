local capil = require("support.capil")

describe("repl #unit", function()
  it("evaluates piped input: expressions, statements, multi-line, errors", function()
    local r = capil.run({ "repl" }, { stdin = table.concat({
      "1 + 1",
      "t = { b = { 1, 2 }, a = 'x' }",
      "t",
      "for i = 1, 2 do",
      "  print('i=' .. i)",
      "end",
      "error('oops')",
      "proc.run ~= nil and fs.cwd() ~= nil",
      "x = = 1",
    }, "\n") .. "\n" })
    assert.equal(0, r.code, r.stderr)
    local expected = table.concat({
      "2",
      "{",
      "  a = \"x\",",
      "  b = { 1, 2 },",
      "}",
      "i=1",
      "i=2",
    }, "\n")
    assert.equal(expected, r.stdout:sub(1, #expected))
    assert.matches("repl:1: oops", r.stdout, 1, true)
    assert.matches("\ntrue\n", r.stdout, 1, true)
    assert.matches("unexpected symbol", r.stdout, 1, true)
  end)

  it("never shows a registered secret in results or errors", function()
    local r = capil.run({ "repl" }, { stdin = table.concat({
      "log.secret('hunter2-pass')",
      "'the pass is hunter2-pass'",
      "error('login failed with hunter2-pass')",
    }, "\n") .. "\n" })
    assert.equal(0, r.code)
    assert.not_matches("hunter2-pass", r.stdout, 1, true)
    assert.matches("the pass is ****", r.stdout, 1, true)
    assert.matches("login failed with ****", r.stdout, 1, true)
  end)

  it("pretty-prints nested tables with cycles", function()
    local pretty = require("capil.util.pretty")
    local t = { name = "vm", disks = { { size = 20 } } }
    t.self = t
    assert.equal('{\n  disks = {\n    {\n      size = 20,\n    },\n  },\n  name = "vm",\n  self = <cycle>,\n}',
      pretty.format(t))
  end)
end)

describe("repl interruption #unit", function()
  local proc = require("capil.sys.proc")
  local runtime = require("capil.core.runtime")

  it("Ctrl-C stops the running code and the REPL goes on", function()
    local p = assert(proc.spawn({ argv = { capil.exe, "repl" }, stdin = "pipe", stdout = "pipe", stderr = "pipe" }))
    assert(p:write("print('looping') while true do end\n"))
    local out = ""
    local deadline = runtime.now() + 20
    while not out:find("looping\n", 1, true) and runtime.now() < deadline do
      local stream, chunk = p:read({ timeout = 5 })
      if stream == "stdout" then out = out .. chunk end
    end
    assert.matches("looping", out, 1, true)
    assert(p:kill("INT"))
    assert(p:write("40 + 2\n"))
    p:close_stdin()
    while true do
      local stream, chunk = p:read({ timeout = 10 })
      if not stream then break end
      if stream == "stdout" then out = out .. chunk end
    end
    local st = assert(p:wait({ timeout = 10 }))
    p:close()
    assert.equal(0, st.code)
    assert.matches("interrupted\n42\n", out, 1, true)
  end)
end)
