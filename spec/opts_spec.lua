local opts = require("capil.util.opts")

describe("capil.util.opts #unit", function()
  local ALLOWED = { timeout = true, retries = true }

  -- A library function as the call sites write it: check, then use.
  local function lib(o, level)
    o = opts.check(o, ALLOWED, "lib.fn", level)
    return o
  end

  it("returns the options, or an empty table for nil", function()
    local o = { timeout = 1 }
    assert.equal(o, lib(o))
    assert.same({}, lib(nil))
  end)

  it("raises the one message for an unknown option or a non-table", function()
    assert.has_error(function() lib({ timeout = 1, tmeout = 2 }) end, "lib.fn: unknown option 'tmeout'")
    assert.has_error(function() lib({ [1] = true }) end, "lib.fn: unknown option '1'")
    assert.has_error(function() lib("fast") end, "lib.fn: options must be a table")
  end)

  it("blames the caller of the checking function by default, as error(msg, 2) there would", function()
    local line
    local function caller()
      line = debug.getinfo(1, "l").currentline + 1
      local o = lib({ bogus = true })
      return o
    end
    local ok, err = pcall(caller)
    assert.is_false(ok)
    assert.equal(("spec/opts_spec.lua:%d: lib.fn: unknown option 'bogus'"):format(line), err)
  end)

  it("takes the level as the checking function would give it to error", function()
    local line
    local function wrapper()
      local o = lib({ bogus = true }, 3)
      return o
    end
    local function outer()
      line = debug.getinfo(1, "l").currentline + 1
      local o = wrapper()
      return o
    end
    local ok, err = pcall(outer)
    assert.is_false(ok)
    assert.equal(("spec/opts_spec.lua:%d: lib.fn: unknown option 'bogus'"):format(line), err)
  end)
end)
