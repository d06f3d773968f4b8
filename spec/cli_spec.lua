local capil = require("support.capil")

describe("cli #unit", function()
  it("prints help listing the commands", function()
    local r = capil.run({ "--help" })
    assert.equal(0, r.code)
    assert.matches("Usage:", r.stdout, 1, true)
    assert.matches("version", r.stdout, 1, true)
    assert.matches("repl", r.stdout, 1, true)
  end)

  it("prints the version", function()
    local r = capil.run({ "version" })
    assert.equal(0, r.code)
    assert.matches("^capil %d+%.%d+%.%d+ %(Lua 5%.4", r.stdout)
    assert.equal(r.stdout, capil.run({ "--version" }).stdout)
  end)

  it("shows one command's help", function()
    local r = capil.run({ "help", "repl" })
    assert.equal(0, r.code)
    assert.matches("Usage: capil repl", r.stdout, 1, true)
    assert.matches("--no-history", r.stdout, 1, true)
    assert.equal(r.stdout, capil.run({ "repl", "--help" }).stdout)
  end)

  it("rejects unknown commands and options with exit 2 and no traceback", function()
    local r = capil.run({ "frobnicate" })
    assert.equal(2, r.code)
    assert.equal("capil: unknown command 'frobnicate'; run 'capil --help' for the list\n", r.stderr)
    r = capil.run({ "version", "--frob" })
    assert.equal(2, r.code)
    assert.matches("unknown option '%-%-frob'", r.stderr)
    assert.not_matches("traceback", r.stderr)
    r = capil.run({ "--log-format", "xml", "version" })
    assert.equal(2, r.code)
  end)

  it("parses options: values, repeats, --name=value and --", function()
    local cli = require("capil.cli")
    local spec = {
      { name = "var", arg = "K=V", multi = true },
      { name = "backend", arg = "NAME" },
      { name = "keep", short = "k" },
    }
    local o, rest = cli.parse({ "--var", "a=1", "x", "--var=b=2", "-k", "--backend", "qemu", "--", "--var" }, spec, "t")
    assert.same({ "a=1", "b=2" }, o.var)
    assert.equal("qemu", o.backend)
    assert.is_true(o.keep)
    assert.same({ "x", "--var" }, rest)
    assert.has_error(function() cli.parse({ "--backend" }, spec, "t") end)
  end)
end)
