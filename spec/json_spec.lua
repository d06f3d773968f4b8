local json = require("capil.sys.json")

describe("json #unit", function()
  describe("decode", function()
    it("maps JSON values to Lua values", function()
      local v = assert(json.decode([[{"s": "h\u00e9\n", "i": 42, "f": 1.5, "t": true,
        "f2": false, "n": null, "a": [1, "two", null], "o": {"k": "v"}}]]))
      assert.equal("h\195\169\n", v.s)
      assert.equal(42, v.i)
      assert.equal("integer", math.type(v.i))
      assert.equal(1.5, v.f)
      assert.equal("float", math.type(v.f))
      assert.is_true(v.t)
      assert.is_false(v.f2)
      assert.equal(json.null, v.n)
      assert.same({ 1, "two", json.null }, v.a)
      assert.equal("v", v.o.k)
    end)

    it("accepts any value at the top, null as json.null", function()
      assert.equal(json.null, json.decode("null"))
      assert.equal(7, json.decode(" 7 "))
      assert.equal("x", json.decode('"x"'))
      assert.is_false(json.decode("false"))
    end)

    it("marks arrays and objects so that [] and {} stay apart", function()
      local v = assert(json.decode('{"a": [], "o": {}}'))
      assert.is_true(json.is_array(v.a))
      assert.is_false(json.is_array(v.o))
      assert.equal(json.object_mt, getmetatable(v.o))
      assert.equal(json.object_mt, getmetatable(v))
      assert.equal('{"a":[],"o":{}}', json.encode(v, { sort_keys = true }))
    end)

    it("keeps NUL bytes in strings (jansson refuses them in keys)", function()
      local v = assert(json.decode('{"k": "a\\u0000b"}'))
      assert.equal("a\0b", v.k)
      assert.equal('{"k":"a\\u0000b"}', json.encode(v))
      local _, err, code = json.decode('{"k\\u0000y": 1}')
      assert.equal("JSON_PARSE", code)
      assert.matches("NUL byte in object key not supported", err)
      assert.equal('{"k\\u0000y":1}', json.encode({ ["k\0y"] = 1 }))
    end)

    it("decodes int64 exactly and larger integers as strings", function()
      local v = assert(json.decode("[9223372036854775807, -9223372036854775808," ..
        " 9223372036854775808, -123456789012345678901234567890, 9007199254740993]"))
      assert.equal(math.maxinteger, v[1])
      assert.equal(math.mininteger, v[2])
      assert.equal("9223372036854775808", v[3])
      assert.equal("-123456789012345678901234567890", v[4])
      assert.equal(9007199254740993, v[5]) -- 2^53 + 1, exact
      assert.equal("integer", math.type(v[5]))
    end)

    it("leaves big-looking numbers inside strings and floats alone", function()
      local v = assert(json.decode('{"s": "99999999999999999999", "f": 99999999999999999999.5}'))
      assert.equal("99999999999999999999", v.s)
      assert.equal("float", math.type(v.f))
    end)

    it("reports malformed input with line and column", function()
      local v, err, code = json.decode('{\n  "a": 1,\n  "b": x\n}')
      assert.is_nil(v)
      assert.equal("JSON_PARSE", code)
      assert.equal("json.decode: line 3, column 8: invalid token near 'x'", err)
      v, err, code = json.decode('[1, 2')
      assert.is_nil(v)
      assert.equal("JSON_PARSE", code)
      assert.matches("^json%.decode: line 1, column %d+: ", err)
      assert.same({ nil, "json.decode: line 1, column 0: unexpected token near end of file", "JSON_PARSE" },
        { json.decode("") })
    end)

    it("reports positions in the original text when big integers were requoted", function()
      local _, err, code = json.decode('[123456789012345678901234567890,\n 1, 99999999999999999999, }]')
      assert.equal("JSON_PARSE", code)
      assert.equal("json.decode: line 2, column 27: unexpected token near '}'", err)
    end)

    it("rejects real overflow", function()
      local v, err, code = json.decode("[1e999]")
      assert.is_nil(v)
      assert.equal("JSON_PARSE", code)
      assert.matches("real number overflow", err)
    end)

    it("rejects a 100k-deep nesting bomb with an error, quickly", function()
      local v, err, code = json.decode(string.rep("[", 100000) .. string.rep("]", 100000))
      assert.is_nil(v)
      assert.equal("JSON_PARSE", code)
      assert.matches("maximum parsing depth reached", err)
      v, err = json.decode(string.rep('{"a":', 100000))
      assert.is_nil(v)
      assert.matches("maximum parsing depth reached", err)
    end)

    it("decodes the deepest nesting jansson allows", function()
      local v = assert(json.decode(string.rep("[", 2048) .. string.rep("]", 2048)))
      local depth = 0
      while v do depth, v = depth + 1, v[1] end
      assert.equal(2048, depth)
    end)

    it("raises on a non-string argument", function()
      assert.has_error(function() json.decode({}) end)
    end)
  end)

  describe("encode", function()
    it("round-trips nested values", function()
      local text = '{"a":[1,2.5,"x",true,false,null,{"b":[]}],"c":{},"d":"\\"\\\\\\n\\u0001\\u00e9"}'
      local v = assert(json.decode(text))
      assert.equal("\"\\\n\1\195\169", v.d)
      local again = json.encode(v, { sort_keys = true })
      assert.same(v, json.decode(again))
      assert.equal('{"a":[1,2.5,"x",true,false,null,{"b":[]}],"c":{},"d":"\\"\\\\\\n\\u0001é"}', again)
    end)

    it("encodes plain tables by their keys; empty ones as {}", function()
      assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
      assert.equal('{"a":1}', json.encode({ a = 1 }))
      assert.equal("{}", json.encode({}))
      assert.equal("[]", json.encode(json.array({})))
      assert.equal("[]", json.encode(json.array()))
      assert.equal("{}", json.encode(json.object()))
      assert.equal("[1,null,3]", json.encode(json.array({ 1, nil, 3 })))
      assert.equal('[null,{"x":null}]', json.encode({ json.null, { x = json.null } }))
    end)

    it("keeps integers and floats apart, floats exact", function()
      assert.equal("[9223372036854775807,-9223372036854775808,3,3.0]",
        json.encode({ math.maxinteger, math.mininteger, 3, 3.0 }))
      for _, f in ipairs({ 0.1, 1 / 3, 1e300, -2.5e-300, 2 ^ 53 + 0.0, 123456.789 }) do
        local back = json.decode(json.encode({ f }))[1]
        assert.equal(f, back)
        assert.equal("float", math.type(back))
      end
    end)

    it("pretty-prints and sorts keys on request", function()
      local v = { b = 1, a = { 1, 2 } }
      assert.equal('{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}',
        json.encode(v, { indent = 2, sort_keys = true }))
      assert.equal(json.encode(v, { indent = 2, sort_keys = true }),
        json.encode(v, { indent = true, sort_keys = true }))
      assert.equal('{"a":[1,2],"b":1}', json.encode(v, { sort_keys = true }))
    end)

    it("raises on unknown options and bad option values", function()
      assert.has_error(function() json.encode({}, { indnet = 2 }) end,
        "json.encode: unknown option 'indnet'")
      assert.has_error(function() json.encode({}, { indent = 99 }) end)
    end)

    it("raises on values JSON cannot carry, naming the path", function()
      assert.has_error(function() json.encode({ a = { b = { 1, print } } }) end,
        "json.encode: value of type function at $.a.b[2]")
      assert.has_error(function() json.encode({ x = 0 / 0 }) end, "json.encode: NaN at $.x")
      assert.has_error(function() json.encode({ 1, math.huge }) end,
        "json.encode: infinite number at $[2]")
      assert.has_error(function() json.encode(nil) end, "json.encode: nil (use json.null) at $")
      assert.has_error(function() json.encode({ s = "\xff" }) end,
        "json.encode: string that is not valid UTF-8 at $.s")
      assert.has_error(function() json.encode(coroutine.create(print)) end,
        "json.encode: value of type thread at $")
    end)

    it("raises on keys that are not strings, naming the path", function()
      assert.has_error(function() json.encode({ a = { [true] = 1 } }) end,
        "json.encode: table key that is neither a string nor a positive integer at $.a")
      assert.has_error(function() json.encode({ a = { 1, 2, x = 3 } }) end,
        "json.encode: table mixing string and integer keys at $.a")
      assert.has_error(function() json.encode({ list = { [1] = 1, [3] = 3 } }) end,
        "json.encode: table with holes (use json.array{...} for nulls) at $.list")
      assert.has_error(function() json.encode(json.object({ 1 })) end,
        "json.encode: object (json.object_mt) with a non-string key at $")
      assert.has_error(function() json.encode(json.array({ a = 1 })) end,
        "json.encode: array (json.array_mt) with a string key at $")
      assert.has_error(function() json.encode(json.array({ [1e6] = 1 })) end,
        "json.encode: array too sparse at $")
    end)

    it("detects cycles", function()
      local t = { name = "loop", child = {} }
      t.child.parent = t
      assert.has_error(function() json.encode(t) end,
        "json.encode: cycle (table contains itself) at $.child.parent")
      local shared = { 1 }
      assert.equal("[[1],[1]]", json.encode({ shared, shared })) -- shared, not a cycle
    end)

    it("limits nesting without overflowing the C stack", function()
      local deep = {}
      local cur = deep
      for _ = 1, 100000 do
        cur[1] = {}
        cur = cur[1]
      end
      local ok, err = pcall(json.encode, deep)
      assert.is_false(ok)
      assert.matches("^json%.encode: nesting deeper than 2048 levels at %$%[1%]", err)
      assert.matches("%.%.%.%(2033 levels%)%.%.%.", err)
    end)
  end)

  describe("files", function()
    local fs = require("capil.sys.fs")
    local dir
    before_each(function() dir = assert(fs.tempdir({ prefix = "capil-json-spec" })) end)
    after_each(function() assert(fs.remove(dir, { recursive = true })) end)

    it("writes and reads back a file", function()
      local path = dir .. "/v.json"
      assert(json.write(path, { b = json.array(), a = { x = 1 } }))
      assert.equal('{\n  "a": {\n    "x": 1\n  },\n  "b": []\n}\n', assert(fs.read(path)))
      local v = assert(json.read(path))
      assert.equal(1, v.a.x)
      assert.is_true(json.is_array(v.b))
    end)

    it("names the file in errors", function()
      local path = dir .. "/bad.json"
      assert(fs.write(path, '{"a": }'))
      local v, err, code = json.read(path)
      assert.is_nil(v)
      assert.equal("JSON_PARSE", code)
      assert.equal(("json.read: %s: line 1, column 7: unexpected token near '}'"):format(path), err)
      v, err, code = json.read(dir .. "/missing.json")
      assert.is_nil(v)
      assert.equal("ENOENT", code)
      assert.matches("missing%.json", err)
    end)
  end)
end)
