-- What capil shows a user when the input is wrong or hostile: a short
-- message naming the input, never a traceback, an internal path, a table
-- address or a secret, and never a hang. Every case runs the binary.
local capil = require("support.capil")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")

-- Asserts that a run's output shows nothing internal.
local function assert_clean(r)
  local all = r.stdout .. r.stderr
  assert.is_nil(all:find("stack traceback", 1, true), all)
  assert.is_nil(all:find("lua/capil/", 1, true), all)
  assert.is_nil(all:find("table: 0x", 1, true), all)
  assert.is_nil(all:find("\27", 1, true), "an escape sequence reached the output")
end

describe("messages to the user #unit", function()
  local dir
  setup(function() dir = peer.dir("messages") end)
  teardown(function() if dir then fs.remove(dir, { recursive = true }) end end)

  local function recipe(name, body)
    local path = dir .. "/" .. name .. ".lua"
    assert(fs.write(path, body))
    return path
  end

  local tiny = "spec/fixtures/recipes/tiny.lua"

  it("validate: a recipe nested past the parser's C stack, and escapes in a recipe's error", function()
    local deep = recipe("deep", "return " .. ("{"):rep(100000) .. ("}"):rep(100000))
    local r = capil.run({ "validate", deep, tiny })
    assert.equal(1, r.code)
    assert_clean(r)
    assert.matches(deep .. ": cannot be read as Lua: nested too deeply", r.stderr, 1, true)
    assert.matches(tiny .. ": ok", r.stdout, 1, true)
    local esc = recipe("esc", 'error("x\\27[31mred")')
    r = capil.run({ "validate", esc })
    assert.equal(1, r.code)
    assert_clean(r)
    assert.matches("x\\x1b[31mred", r.stderr, 1, true)
  end)

  it("never prints the password of a URL: inspect, --explain, errors", function()
    local proxy = "http://bob:Pr0xy-S3cret@proxy.example:3128"
    local r = capil.run({ "inspect", tiny, "--var", "http_proxy=" .. proxy, "--explain", "http_proxy" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("common.http_proxy = http://bob:****@proxy.example:3128", r.stdout, 1, true)
    r = capil.run({ "inspect", tiny, "--var", "http_proxy=" .. proxy })
    assert.equal(0, r.code, r.stderr)
    -- an error quoting the value: the password is a secret by then, in any form
    r = capil.run({ "inspect", tiny, "--var", "http_proxy=" .. proxy, "--var", "cpus=Pr0xy-S3cret" })
    assert.not_equal(0, r.code)
    for _, out in ipairs({ r.stdout, r.stderr }) do
      assert.is_nil(out:find("Pr0xy-S3cret", 1, true), out)
    end
    assert_clean(r)
  end)

  it("escapes escape sequences of recipe text before they reach the terminal", function()
    local path = recipe("esc", 'return { name = "esc\\27]0;owned\\7", description = "x\\27[2J" }\n')
    local r = capil.run({ "validate", path })
    assert_clean(r)
    r = capil.run({ "inspect", path })
    assert_clean(r)
  end)

  it("reports 20,000 unknown fields and a 200 KB key fast, the first 50 and a count", function()
    local lines = { "return {" }
    for i = 1, 20000 do lines[#lines + 1] = ("  unknown_field_%d = 1,"):format(i) end
    lines[#lines + 1] = "}"
    local path = recipe("many", table.concat(lines, "\n") .. "\n")
    local t0 = runtime.now()
    local r = capil.run({ "validate", path }, { timeout = 30 })
    local took = runtime.now() - t0
    assert.equal(1, r.code)
    assert.is_true(took < 3, ("took %.1f s"):format(took))
    local n = select(2, r.stderr:gsub("unknown field '", ""))
    assert.equal(50, n)
    assert.matches("... and 19950 more unknown fields", r.stderr, 1, true)
    assert_clean(r)

    path = recipe("longkey", ('return { ["%s"] = 1 }\n'):format(("k"):rep(200000)))
    t0 = runtime.now()
    r = capil.run({ "validate", path }, { timeout = 30 })
    assert.equal(1, r.code)
    assert.is_true(runtime.now() - t0 < 3)
    assert.is_true(#r.stderr < 2000, "the whole key printed")
    assert_clean(r)
  end)

  it("takes a recipe key with pattern characters as text", function()
    local path = recipe("pattern", 'return {\n  name = "p",\n  ["a(b%["] = 1,\n  ["x%"] = 2,\n}\n')
    local r = capil.run({ "validate", path })
    assert.equal(1, r.code)
    assert.matches("pattern.lua:3: unknown field 'a(b%['", r.stderr, 1, true)
    assert.matches("pattern.lua:4: unknown field 'x%'", r.stderr, 1, true)
    assert_clean(r)
  end)

  it("bounds durations, hardware sizes and checks a thumbprint's form, with a schema message", function()
    local cases = {
      { "ssh_timeout=" .. ("9"):rep(400) .. "s", "is longer than the maximum" },
      { "ssh_timeout=" .. ("9"):rep(400), "is longer than the maximum" },
      { "cpus=100000", "cpus: expected at most 768 (vSphere's limit), got 100000" },
      { "memory=99999999999", "memory: expected at most 25165824 MiB (24 TiB, vSphere's limit)" },
      { "disk_size=999999999999", "disk_size: expected at most 65011712 MiB (62 TiB, vSphere's limit)" },
      { "thumbprint=nothex", "thumbprint: expected a SHA-256 fingerprint" },
    }
    for _, c in ipairs(cases) do
      for _, cmd in ipairs({ "validate", "inspect" }) do
        local r = capil.run({ cmd, tiny, "--backend", "vsphere", "--var", c[1] })
        assert.not_equal(0, r.code, c[1])
        assert.matches(c[2], r.stderr, 1, true)
        assert.is_true(#r.stderr < 1000, r.stderr)
        assert_clean(r)
      end
    end
    local fp = ("ab:"):rep(31) .. "ab"
    assert.equal(0, capil.run({ "validate", tiny, "--backend", "vsphere", "--var", "thumbprint=" .. fp }).code)
  end)

  it("refuses a blank download and a --gcs-endpoint that is no URL, as usage errors", function()
    local r = capil.run({ "download", "" })
    assert.equal(1, r.code)
    assert.matches("expected a Kubernetes version", r.stderr, 1, true)
    assert_clean(r)
    r = capil.run({ "images", "--gcs-endpoint", "notaurl" })
    assert.equal(2, r.code)
    assert.equal("capil: images: option '--gcs-endpoint' expects an http(s) URL, got 'notaurl'\n", r.stderr)
    r = capil.run({ "download", "v1.30.2", "--gcs-endpoint=ftp://x" })
    assert.equal(2, r.code)
    assert_clean(r)
  end)

  it("capil list marks the recipes that do not load, lists the others, and fails at the end", function()
    local rd = dir .. "/recipes"
    assert(fs.mkdir(rd))
    assert(fs.copy(tiny, rd .. "/tiny.lua"))
    assert(fs.write(rd .. "/bad.lua", 'return { name = "bad", ["x(y"] = 1 }\n'))
    assert(fs.write(rd .. "/raises.lua", "error({})\n"))
    assert(fs.write(rd .. "/odd.lua", 'return { name = "odd", description = { 1 } }\n'))
    local r = capil.run({ "list", "--recipes-dir", rd })
    assert.equal(1, r.code)
    assert.matches("bad%s+%(does not load: capil validate bad%)", r.stdout)
    assert.matches("raises%s+%(does not load", r.stdout)
    assert.matches("tiny%s+busybox", r.stdout)
    assert.matches("2 of 4 recipes", r.stderr, 1, true)
    assert_clean(r)
    r = capil.run({ "list", "--recipes-dir", dir .. "/nonexistent" })
    assert.equal(1, r.code)
    assert.matches("no such directory", r.stderr, 1, true)
    -- a recipe raising a table names the file, no address
    r = capil.run({ "validate", rd .. "/raises.lua" })
    assert.equal(1, r.code)
    assert_clean(r)
  end)

  it("refuses a bundle's stages = {{}} and table keys with a message naming the entry", function()
    local b = dir .. "/stages-bundle.lua"
    assert(fs.write(b, ("return { defaults = { stages = {{}} }, { recipe = %q } }\n"):format(tiny)))
    local r = capil.run({ "run", b })
    assert.equal(2, r.code)
    assert.matches("defaults: stages must be", r.stderr, 1, true)
    assert_clean(r)
    assert(fs.write(b, ("return { { recipe = %q, [{}] = 1 } }\n"):format(tiny)))
    r = capil.run({ "run", b })
    assert.not_equal(0, r.code)
    assert_clean(r)
  end)

  it("warns that an http:// vCenter gets the password in clear", function()
    local r = capil.run({ "-e", [[
      local session = require("capil.vsphere.session")
      assert(not session.connect({ server = "http://127.0.0.1:1", username = "u", password = "pw-in-clear" }))
    ]] })
    assert.equal(0, r.code, r.stderr)
    assert.matches("warn: vsphere: http://127.0.0.1:1 is plain http: the password", r.stderr, 1, true)
  end)
end)
