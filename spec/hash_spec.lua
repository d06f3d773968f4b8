local hash = require("capil.sys.hash")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")

-- Runs a command that must succeed; returns its stdout.
local function run(argv, stdin)
  local r = assert(proc.run({ argv = argv, stdin = stdin, timeout = 30 }))
  assert(r.code == 0, table.concat(argv, " ") .. " failed: " .. r.stderr)
  return r.stdout
end

describe("hash #unit", function()
  describe("digests", function()
    -- FIPS 180-2 / RFC 1321 known answers
    local ABC = {
      md5 = "900150983cd24fb0d6963f7d28e17f72",
      sha1 = "a9993e364706816aba3e25717850c26c9cd0d89d",
      sha224 = "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
      sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      sha384 = "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
        .. "8086072ba1e7cc2358baeca134c825a7",
      sha512 = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        .. "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
      crc32c = "364b3fb7",
    }

    it("gives the NIST 'abc' vectors", function()
      for alg, want in pairs(ABC) do
        assert.equal(want, hash.digest(alg, "abc"), alg)
        assert.equal(want, hash.new(alg):update("a"):update(""):update("bc"):final(), alg)
      end
    end)

    it("gives the two-block and million-'a' vectors", function()
      local two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
      assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", hash.digest("sha256", two))
      assert.equal("84983e441c3bd26ebaae4aa1f95129e5e54670f1", hash.digest("sha1", two))
      local d = hash.new("sha1")
      local chunk = ("a"):rep(1000)
      for _ = 1, 1000 do d:update(chunk) end
      assert.equal("34aa973cd4c4daa4f61eeb2bdbad27316534016f", d:final())
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hash.digest("sha256", ""))
      assert.equal("d41d8cd98f00b204e9800998ecf8427e", hash.new("md5"):final())
    end)

    it("formats values as hex, raw bytes or base64", function()
      local raw = hash.digest("sha256", "abc", "raw")
      assert.equal(32, #raw)
      assert.equal(ABC.sha256, hash.hex_encode(raw))
      assert.equal(hash.base64_encode(raw), hash.digest("sha256", "abc", "base64"))
      assert.equal("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", hash.new():update("abc"):final("base64"))
      assert.has_error(function() hash.digest("sha256", "abc", "b64") end)
    end)

    it("gives CRC32C in GCS's big-endian base64 form", function()
      assert.equal("e3069283", hash.digest("crc32c", "123456789"))
      assert.equal("4waSgw==", hash.crc32c_base64("123456789"))
      assert.equal("4waSgw==", hash.new("crc32c"):update("1234"):update("56789"):final("base64"))
      assert.equal("AAAAAA==", hash.crc32c_base64(""))
      assert.equal("XrY7u+Ae7tCTyyK7j1rNww==", hash.md5_base64("hello world"))
    end)

    it("defaults to sha256 and raises on unknown algorithms", function()
      assert.equal(ABC.sha256, hash.new():update("abc"):final())
      assert.has_error(function() hash.new("sha3") end)
      assert.has_error(function() hash.digest(nil, "abc") end)
      assert.has_error(function() hash.new():update({}) end)
    end)

    it("refuses a finalized or closed digest; closing twice is fine", function()
      local d = hash.new("md5")
      d:update("x")
      d:final()
      assert.has_error(function() d:update("y") end, "attempt to use a finalized hash digest (md5)")
      assert.has_error(function() d:final() end, "attempt to use a finalized hash digest (md5)")
      d:close()
      d:close()
      assert.has_error(function() d:update("y") end, "attempt to use a closed hash digest")
      do
        local scoped <close> = hash.new("sha512")
        scoped:update("x")
      end
      assert.matches("^hash digest sha256$", tostring(hash.new()))
    end)
  end)

  describe("hmac", function()
    it("gives the RFC 4231 test cases 1 and 2", function()
      local key1 = ("\11"):rep(20)
      assert.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        hash.hmac("sha256", key1, "Hi There"))
      assert.equal("87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        .. "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        hash.hmac("sha512", key1, "Hi There"))
      assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        hash.hmac("sha256", "Jefe", "what do ya want for nothing?"))
      assert.equal(32, #hash.hmac("sha256", "Jefe", "what do ya want for nothing?", "raw"))
    end)

    it("raises on crc32c and unknown algorithms", function()
      assert.has_error(function() hash.hmac("crc32c", "k", "d") end)
      assert.has_error(function() hash.hmac("nope", "k", "d") end)
    end)
  end)

  describe("codecs", function()
    it("gives the RFC 4648 base64 vectors both ways", function()
      local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
        fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
      for plain, coded in pairs(vectors) do
        assert.equal(coded, hash.base64_encode(plain))
        assert.equal(plain, hash.base64_decode(coded))
        assert.equal((coded:gsub("=", "")), hash.base64url_encode(plain))
        assert.equal(plain, hash.base64url_decode((coded:gsub("=", ""))))
        assert.equal(plain, hash.base64url_decode(coded))
      end
    end)

    it("uses the URL alphabet for base64url", function()
      local bytes = "\251\255\254\62\63"
      assert.equal("+//+Pj8=", hash.base64_encode(bytes))
      assert.equal("-__-Pj8", hash.base64url_encode(bytes))
      assert.equal(bytes, hash.base64url_decode("-__-Pj8"))
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all):rep(3)
      assert.equal(all, hash.base64_decode(hash.base64_encode(all)))
      assert.equal(all, hash.base64url_decode(hash.base64url_encode(all)))
      assert.equal(all, hash.hex_decode(hash.hex_encode(all)))
    end)

    it("rejects bad base64", function()
      assert.same({ nil, "hash.base64_decode: invalid character at byte 5", "DECODE" },
        { hash.base64_decode("Zm9v!mE=") })
      assert.same({ nil, "hash.base64_decode: length is not a multiple of 4 at byte 7", "DECODE" },
        { hash.base64_decode("Zm9vYg=") })
      assert.same({ nil, "hash.base64_decode: length is not a multiple of 4 at byte 6", "DECODE" },
        { hash.base64_decode("Zm9vYg") })
      assert.same({ nil, "hash.base64_decode: padding in the middle at byte 3", "DECODE" },
        { hash.base64_decode("Zm=vYg==") })
      assert.same({ nil, "hash.base64url_decode: invalid character at byte 1", "DECODE" },
        { hash.base64url_decode("+/") })
      assert.same({ nil, "hash.base64url_decode: truncated input at byte 5", "DECODE" },
        { hash.base64url_decode("Zm9vY") })
      assert.same({ nil, "hash.base64_decode: invalid character at byte 5", "DECODE" },
        { hash.base64_decode("Zm9v\nYmF") })
    end)

    it("rejects bad hex, accepts both cases", function()
      assert.equal("\1\171\255", hash.hex_decode("01AbfF"))
      assert.equal("01abff", hash.hex_encode("\1\171\255"))
      assert.same({ nil, "hash.hex_decode: odd length (3)", "DECODE" }, { hash.hex_decode("abc") })
      assert.same({ nil, "hash.hex_decode: invalid character at byte 3", "DECODE" }, { hash.hex_decode("00zz") })
    end)
  end)

  describe("random and equal", function()
    it("returns fresh random bytes", function()
      local a, b = hash.random(32), hash.random(32)
      assert.equal(32, #a)
      assert.not_equal(a, b)
      assert.equal("", hash.random(0))
      assert.has_error(function() hash.random(-1) end)
      assert.has_error(function() hash.random(1 << 30) end)
    end)

    it("compares strings", function()
      assert.is_true(hash.equal("abc", "abc"))
      assert.is_false(hash.equal("abc", "abd"))
      assert.is_false(hash.equal("abc", "ab"))
    end)
  end)

  describe("file", function()
    local dir, path, size
    setup(function()
      dir = assert(fs.tempdir({ prefix = "capil-hash-spec" }))
      path = dir .. "/data.bin"
      -- a few MiB that do not line up with the 1 MiB read size
      local parts = {}
      for i = 1, 52 do parts[i] = hash.random(65536) end
      parts[#parts + 1] = "tail"
      local data = table.concat(parts)
      size = #data
      assert(fs.write(path, data))
    end)
    teardown(function() assert(fs.remove(dir, { recursive = true })) end)

    it("matches sha256sum, md5sum and sha512sum", function()
      local want = run({ "sha256sum", path }):match("^(%x+)")
      assert.equal(want, hash.file(path))
      assert.equal(want, hash.file(path, "sha256"))
      local all = assert(hash.file(path, { "sha256", "md5", "sha512", "crc32c" }))
      assert.equal(want, all.sha256)
      assert.equal(run({ "md5sum", path }):match("^(%x+)"), all.md5)
      assert.equal(run({ "sha512sum", path }):match("^(%x+)"), all.sha512)
      local data = assert(fs.read(path))
      assert.equal(hash.digest("crc32c", data), all.crc32c)
      assert.equal(hash.digest("sha256", data, "base64"), hash.file(path, "sha256", { format = "base64" }))
    end)

    it("reports progress", function()
      local log = require("capil.sys.log")
      local p = log.progress({ label = "hash", mode = "line", interval = 3600 })
      assert(hash.file(path, "md5", { progress = p }))
      local state = p:state()
      assert.equal(size, state.done)
      assert.equal(size, state.total)
    end)

    it("fails with errno codes naming the file", function()
      assert.same({ nil, "hash.file: " .. dir .. "/missing: No such file or directory", "ENOENT" },
        { hash.file(dir .. "/missing") })
      assert.same({ nil, "hash.file: " .. dir .. ": Is a directory", "EISDIR" }, { hash.file(dir) })
    end)

    it("raises on misuse", function()
      assert.has_error(function() hash.file(path, "sha3") end)
      assert.has_error(function() hash.file(path, { "sha256", "nope" }) end, "hash.file: unknown algorithm 'nope'")
      assert.has_error(function() hash.file(path, {}) end)
      assert.has_error(function() hash.file(path, "md5", { fromat = "hex" }) end, "hash.file: unknown option 'fromat'")
      assert.has_error(function() hash.file(path, "md5", { format = "b64" }) end,
        "hash.file: unknown format 'b64' (hex, raw, base64)")
    end)
  end)

  describe("RS256 against the openssl CLI", function()
    local dir, key, pub, cert, data_path
    local DATA = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJ0ZXN0In0"
    setup(function()
      dir = assert(fs.tempdir({ prefix = "capil-rs256-spec" }))
      key, pub, cert = dir .. "/key.pem", dir .. "/pub.pem", dir .. "/cert.pem"
      run({ "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key })
      run({ "openssl", "pkey", "-in", key, "-pubout", "-out", pub })
      run({ "openssl", "req", "-x509", "-new", "-key", key, "-subj", "/CN=capil-test", "-days", "1", "-out", cert })
      data_path = dir .. "/data.txt"
      assert(fs.write(data_path, DATA))
    end)
    teardown(function() assert(fs.remove(dir, { recursive = true })) end)

    it("signs what openssl dgst -verify accepts, byte for byte like openssl", function()
      local sig = assert(hash.sign_rs256(assert(fs.read(key)), DATA))
      assert.equal(256, #sig)
      assert(fs.write(dir .. "/sig.bin", sig))
      assert.equal("Verified OK\n", run({ "openssl", "dgst", "-sha256", "-verify", pub,
        "-signature", dir .. "/sig.bin", data_path }))
      -- PKCS#1 v1.5 is deterministic: openssl's own signature is identical
      run({ "openssl", "dgst", "-sha256", "-sign", key, "-out", dir .. "/sig2.bin", data_path })
      assert.equal(assert(fs.read(dir .. "/sig2.bin")), sig)
    end)

    it("reads PKCS#1 keys too", function()
      run({ "openssl", "rsa", "-in", key, "-traditional", "-out", dir .. "/key1.pem" })
      local pkcs1 = assert(fs.read(dir .. "/key1.pem"))
      assert.matches("BEGIN RSA PRIVATE KEY", pkcs1)
      assert.equal(hash.sign_rs256(assert(fs.read(key)), DATA), hash.sign_rs256(pkcs1, DATA))
    end)

    it("verifies with a public key or a certificate", function()
      run({ "openssl", "dgst", "-sha256", "-sign", key, "-out", dir .. "/sig3.bin", data_path })
      local sig = assert(fs.read(dir .. "/sig3.bin"))
      assert.is_true(hash.verify_rs256(assert(fs.read(pub)), DATA, sig))
      assert.is_true(hash.verify_rs256(assert(fs.read(cert)), DATA, sig))
      assert.is_false(hash.verify_rs256(assert(fs.read(pub)), DATA .. "x", sig))
      assert.is_false(hash.verify_rs256(assert(fs.read(pub)), DATA, sig:sub(1, -2)))
      assert.is_false(hash.verify_rs256(assert(fs.read(pub)), DATA, ""))
    end)

    it("fails with CRYPTO and OpenSSL's reasons, never the key", function()
      local pem = assert(fs.read(key))
      -- corrupt the base64 body
      local lines = {}
      for line in pem:gmatch("[^\n]+") do lines[#lines + 1] = line end
      lines[3] = lines[3]:sub(1, 10) .. "!!!!" .. lines[3]:sub(15)
      local bad = table.concat(lines, "\n") .. "\n"
      local sig, err, code = hash.sign_rs256(bad, DATA)
      assert.is_nil(sig)
      assert.equal("CRYPTO", code)
      assert.matches("^hash%.sign_rs256: cannot read the PEM private key: error:", err)
      for i = 2, #lines - 1 do assert.is_nil(err:find(lines[i], 1, true)) end
      local none, _, ncode = hash.sign_rs256("not a key", DATA)
      assert.is_nil(none)
      assert.equal("CRYPTO", ncode)
      local _, perr, pcode = hash.verify_rs256("nope", DATA, "sig")
      assert.equal("CRYPTO", pcode)
      assert.matches("^hash%.verify_rs256: cannot read the PEM public key or certificate: ", perr)
    end)

    it("refuses non-RSA and encrypted keys without prompting", function()
      run({ "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", dir .. "/ec.pem" })
      assert.same({ nil, "hash.sign_rs256: the private key is not an RSA key", "CRYPTO" },
        { hash.sign_rs256(assert(fs.read(dir .. "/ec.pem")), DATA) })
      run({ "openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:secret", "-out", dir .. "/enc.pem" })
      local sig, err, code = hash.sign_rs256(assert(fs.read(dir .. "/enc.pem")), DATA)
      assert.is_nil(sig)
      assert.equal("CRYPTO", code)
      assert.matches("cannot read the PEM private key", err)
    end)
  end)
end)
