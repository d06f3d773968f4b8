-- spec/http_spec.lua — capil.core.http and capil.sys.http against a real nginx
-- (Debian's, with the dav module for PUT) on 127.0.0.1, plain and TLS with a
-- CA made here by the openssl CLI.
local core = require("capil.core.http")
local http = require("capil.sys.http")
local log = require("capil.sys.log")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")
local nginx = require("support.nginx")
local peer = require("support.peer")

local MiB = 1024 * 1024

local function run(argv)
  local r = assert(proc.run({ argv = argv }))
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
  return r.stdout
end

local function sha256sum(path)
  return run({ "sha256sum", path }):match("^(%x+)")
end

local function read(path)
  return assert(fs.read(path))
end

-- A test CA, a server certificate for 127.0.0.1 signed by it, another CA,
-- and the server key's pin (base64 SHA-256 of its SubjectPublicKeyInfo).
local function make_pki(dir)
  local function ca(name)
    run({ "openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
          "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", dir .. "/" .. name .. ".key",
          "-out", dir .. "/" .. name .. ".crt", "-days", "2", "-subj", "/CN=capil " .. name,
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign" })
  end
  ca("ca")
  ca("other-ca")
  assert(fs.write(dir .. "/srv.ext", "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
    .. "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"))
  run({ "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", dir .. "/srv.key", "-out", dir .. "/srv.csr", "-subj", "/CN=127.0.0.1" })
  run({ "openssl", "x509", "-req", "-in", dir .. "/srv.csr", "-CA", dir .. "/ca.crt",
        "-CAkey", dir .. "/ca.key", "-CAcreateserial", "-out", dir .. "/srv.crt", "-days", "2",
        "-extfile", dir .. "/srv.ext" })
  run({ "openssl", "pkey", "-in", dir .. "/srv.key", "-pubout", "-outform", "DER",
        "-out", dir .. "/srv.pub.der" })
  run({ "openssl", "dgst", "-sha256", "-binary", "-out", dir .. "/pin.bin", dir .. "/srv.pub.der" })
  return {
    ca = dir .. "/ca.crt", other_ca = dir .. "/other-ca.crt",
    cert = dir .. "/srv.crt", key = dir .. "/srv.key",
    pin = run({ "openssl", "base64", "-A", "-in", dir .. "/pin.bin" }):gsub("%s", ""),
    fingerprint = run({ "openssl", "x509", "-in", dir .. "/srv.crt", "-noout", "-fingerprint", "-sha256" })
      :match("=(%S+)"),
  }
end

local LOCATIONS = [[
    location /dav/ { dav_methods PUT DELETE MKCOL; create_full_put_path on; }
    location /slow/ { limit_rate 16k; }
    location /norange/ { max_ranges 0; }
    location /flaky/ {
      # full downloads crawl (so a test can kill the worker mid-body),
      # range requests (the resume) run at full speed
      set $rate 32k;
      if ($http_range) { set $rate 0; }
      limit_rate $rate;
    }
    location = /status/404 { return 404; }
    location = /status/500 { return 500; }
    location = /status/503 { return 503; }
    location = /status/429 { add_header Retry-After 1 always; return 429; }
    location = /echo/header { return 200 "$http_x_capil"; }
    location = /echo/cookie { return 200 "$http_cookie"; }
    location = /echo/method { return 200 "$request_method $http_content_length"; }
    location = /cookie/set {
      add_header Set-Cookie "vmware_soap_session=s3cr3t-cookie; Path=/";
      return 200 "set";
    }
    location = /conn { return 200 "$connection"; }
    location = /conn/cookie { return 200 "$connection $http_cookie"; }
    # reads the request, then closes the connection without an answer
    location = /drop { return 444; }
    location = /redirect { return 302 /files/small.txt; }
    location = /redirect-put { return 307 /dav/moved.bin; }
]]

describe("http #http", function()
  local srv, pki, pki_dir, out, big, big_sum

  setup(function()
    pki_dir = peer.dir("http-pki")
    pki = make_pki(pki_dir)
    srv = nginx.start({ locations = LOCATIONS, tls = { cert = pki.cert, key = pki.key } })
    srv.put("/files/small.txt", "hello, capil\n")
    for _, d in ipairs({ "files", "slow", "norange", "flaky" }) do
      assert(fs.mkdir(srv.root .. "/" .. d))
    end
    big = srv.root .. "/files/big.bin"
    run({ "openssl", "rand", "-out", big, tostring(MiB) })
    big_sum = sha256sum(big)
    assert(fs.copy(big, srv.root .. "/slow/big.bin"))
    assert(fs.copy(big, srv.root .. "/norange/big.bin"))
    run({ "openssl", "rand", "-out", srv.root .. "/flaky/big.bin", tostring(4 * MiB) })
    out = assert(fs.tempdir({ prefix = "capil-spec-http-out" }))
  end)

  teardown(function()
    if srv then srv.stop() end
    for _, d in ipairs({ pki_dir, out }) do
      if d then assert(fs.remove(d, { recursive = true })) end
    end
  end)

  local function target(name)
    local p = out .. "/" .. name
    fs.remove(p)
    fs.remove(p .. ".part")
    return p
  end

  describe("core", function()
    it("GETs a body with lowercase headers, its digest and size", function()
      local r = assert(core.request({ url = srv.url("/files/small.txt") }))
      assert.equal(200, r.status)
      assert.equal("OK", r.reason)
      assert.equal("hello, capil\n", r.body)
      assert.equal("13", r.headers["content-length"])
      assert.equal("text/plain", r.headers["content-type"])
      assert.equal(sha256sum(srv.root .. "/files/small.txt"), r.digest)
      assert.equal(13, r.size)
      assert.equal("127.0.0.1", r.local_ip) -- our end of the connection
    end)

    it("sends HEAD without a body", function()
      local r = assert(core.request({ method = "HEAD", url = srv.url("/files/big.bin") }))
      assert.equal(200, r.status)
      assert.equal("", r.body)
      assert.equal(tostring(MiB), r.headers["content-length"])
    end)

    it("sends headers and cookies", function()
      local r = assert(core.request({ url = srv.url("/echo/header"), headers = { ["X-Capil"] = "yes" } }))
      assert.equal("yes", r.body)
      r = assert(core.request({ url = srv.url("/echo/cookie"), cookies = { a = "1" } }))
      assert.equal("a=1", r.body)
    end)

    it("POSTs a string body and reports the digest of what it sent", function()
      local r = assert(core.request({ url = srv.url("/echo/method"), body = "hello" }))
      assert.equal("POST 5", r.body)
      assert.equal("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", r.digest)
      assert.equal(5, r.size)
    end)

    it("follows redirects unless told not to", function()
      local r = assert(core.request({ url = srv.url("/redirect") }))
      assert.equal(200, r.status)
      assert.equal("hello, capil\n", r.body)
      assert.matches("/files/small.txt$", r.url)
      r = assert(core.request({ url = srv.url("/redirect"), follow = false }))
      assert.equal(302, r.status)
    end)

    it("streams a download to out_file with the digest of sha256sum", function()
      local p = target("big.bin")
      local r = assert(core.request({ url = srv.url("/files/big.bin"), out_file = p }))
      assert.equal(200, r.status)
      assert.equal(p, r.file)
      assert.is_nil(r.body)
      assert.equal(MiB, r.size)
      assert.equal(big_sum, r.digest)
      assert.equal(big_sum, sha256sum(p))
      assert.is_false(fs.exists(p .. ".part"))
    end)

    it("drives a progress handle from C", function()
      local p = target("progress.bin")
      local bar = log.progress({ label = "spec", mode = "line", interval = 3600 })
      assert(core.request({ url = srv.url("/files/big.bin"), out_file = p, progress = bar }))
      local st = bar:state()
      assert.equal(MiB, st.done)
      assert.equal(MiB, st.total)
    end)

    it("resumes a truncated .part with a Range request", function()
      local p = target("resume.bin")
      assert(fs.copy(big, p .. ".part"))
      assert(fs.truncate(p .. ".part", 300000))
      local r = assert(core.request({ url = srv.url("/files/big.bin"), out_file = p, resume = true }))
      assert.equal(206, r.status)
      assert.equal(300000, r.resumed)
      assert.equal(MiB, r.size)
      assert.equal(big_sum, r.digest)
      assert.equal(big_sum, sha256sum(p))
      assert.is_false(fs.exists(p .. ".part"))
      srv.count("/files/big.bin")
      local hits = srv.hits("/files/big.bin")
      assert.matches("206 range=bytes=300000%- bytes=" .. (MiB - 300000), hits[#hits])
    end)

    it("restarts from zero when the server ignores the Range", function()
      local p = target("norange.bin")
      assert(fs.write(p .. ".part", "stale bytes that are not the file"))
      local r = assert(core.request({ url = srv.url("/norange/big.bin"), out_file = p, resume = true }))
      assert.equal(200, r.status)
      assert.equal(0, r.resumed)
      assert.equal(big_sum, r.digest)
      assert.equal(big_sum, sha256sum(p))
    end)

    it("uploads a multi-MiB body_file with PUT, hashing what it sent", function()
      local src = out .. "/upload.bin"
      run({ "openssl", "rand", "-out", src, tostring(8 * MiB + 123) })
      local r = assert(core.request({ method = "PUT", url = srv.url("/dav/up/load.bin"), body_file = src }))
      assert.equal(201, r.status)
      assert.equal(8 * MiB + 123, r.size)
      assert.equal(sha256sum(src), r.digest)
      assert.equal(r.digest, sha256sum(srv.root .. "/dav/up/load.bin"))
      r = assert(core.request({ method = "PUT", url = srv.url("/dav/up/load.bin"), body = "replaced" }))
      assert.equal(204, r.status)
      assert.equal("replaced", read(srv.root .. "/dav/up/load.bin"))
      r = assert(core.request({ method = "DELETE", url = srv.url("/dav/up/load.bin") }))
      assert.equal(204, r.status)
    end)

    it("uploads a slice of body_file (a disk inside an OVA) with body_offset/body_length", function()
      local src = out .. "/slice.bin"
      run({ "openssl", "rand", "-out", src, tostring(3 * MiB + 7) })
      local whole = read(src)
      local off, len = MiB + 5, 2 * MiB - 3 -- not on a buffer boundary
      local r = assert(core.request({ method = "PUT", url = srv.url("/dav/slice.bin"), body_file = src,
                                      body_offset = off, body_length = len }))
      assert.equal(201, r.status)
      assert.equal(len, r.size)
      local got = read(srv.root .. "/dav/slice.bin")
      assert.equal(len, #got)
      assert.is_true(got == whole:sub(off + 1, off + len))
      assert.equal(sha256sum(srv.root .. "/dav/slice.bin"), r.digest)
      -- to the end of the file when no length is given
      r = assert(core.request({ method = "PUT", url = srv.url("/dav/slice.bin"), body_file = src, body_offset = off }))
      assert.equal(3 * MiB + 7 - off, r.size)
      local err, code
      r, err, code = core.request({ method = "PUT", url = srv.url("/dav/slice.bin"), body_file = src,
                                   body_offset = 3 * MiB, body_length = 100 })
      assert.is_nil(r)
      assert.equal("ERANGE", code)
      assert.matches("slice.bin", err)
      assert.has_error(function() core.request({ url = srv.url("/"), body_offset = 1 }) end,
        "http.request: options 'body_offset' and 'body_length' need 'body_file'")
    end)

    it("sends the body again when a PUT is redirected with 307", function()
      -- no "Expect: 100-continue": the body goes out at once and must be rewound
      local r = assert(core.request({ method = "PUT", url = srv.url("/redirect-put"), body_file = big,
                                      headers = { Expect = "" } }))
      assert.equal(201, r.status)
      assert.equal(big_sum, r.digest)
      assert.equal(big_sum, sha256sum(srv.root .. "/dav/moved.bin"))
    end)

    it("returns 4xx as a response and leaves neither out_file nor .part", function()
      local p = target("missing.bin")
      local r = assert(core.request({ url = srv.url("/files/missing.bin"), out_file = p }))
      assert.equal(404, r.status)
      assert.is_nil(r.file)
      assert.matches("404 Not Found", r.body)
      assert.is_false(fs.exists(p))
      assert.is_false(fs.exists(p .. ".part"))
    end)

    it("keeps a resumable .part when a 5xx answers a resume", function()
      local p = target("status")
      local part = out .. "/status.part"
      assert(fs.write(part, "prefix"))
      local r = assert(core.request({ url = srv.url("/status/503"), out_file = p, resume = true }))
      assert.equal(503, r.status)
      assert.equal("prefix", read(part))
    end)

    it("fails a wrong sha256 with EDIGEST and keeps nothing", function()
      local p = target("wrong.bin")
      local r, err, code = core.request({ url = srv.url("/files/big.bin"), out_file = p,
                                          sha256 = string.rep("0", 64) })
      assert.is_nil(r)
      assert.equal("EDIGEST", code)
      assert.matches("SHA%-256 mismatch: got " .. big_sum, err)
      assert.is_false(fs.exists(p))
      assert.is_false(fs.exists(p .. ".part"))
      r = assert(core.request({ url = srv.url("/files/big.bin"), out_file = p, sha256 = big_sum:upper() }))
      assert.equal(big_sum, sha256sum(r.file))
    end)

    it("times out with ETIMEDOUT and removes the .part", function()
      local p = target("slow.bin")
      local r, err, code = core.request({ url = srv.url("/slow/big.bin"), out_file = p, timeout = 0.5 })
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      assert.matches("^http.request: GET http://127.0.0.1:%d+/slow/big.bin: ", err)
      assert.is_false(fs.exists(p))
      assert.is_false(fs.exists(p .. ".part"))
    end)

    it("stops a transfer on Ctrl-C and removes the .part", function()
      local p = target("interrupted.bin")
      local script = out .. "/interrupt.lua"
      assert(fs.write(script, ([[
        local r, err, code = require("capil.core.http").request({ url = %q, out_file = %q })
        io.stderr:write("returned ", tostring(code), "\n")
      ]]):format(srv.url("/slow/big.bin"), p)))
      local child = assert(proc.spawn({ argv = { assert(runtime.exepath()), script },
                                        stdout = "null", stderr = "null" }))
      local deadline = runtime.now() + 10
      while not (fs.stat(p .. ".part") or {}).size or fs.stat(p .. ".part").size == 0 do
        assert(runtime.now() < deadline, "the download did not start")
        runtime.sleep(0.01)
      end
      assert(child:kill("INT"))
      local st = assert(child:wait({ timeout = 5 })) -- the body alone takes a minute
      child:close()
      assert.equal(130, st.code)
      assert.is_false(fs.exists(p .. ".part"))
      assert.is_false(fs.exists(p))
    end)

    it("verifies an upload's sha256 against hash.file of the source, whole and sliced", function()
      local hash = require("capil.sys.hash")
      local src = out .. "/verified.bin"
      run({ "openssl", "rand", "-out", src, tostring(24 * MiB + 4097) }) -- several rings of buffers
      local sum = assert(hash.file(src))
      local r = assert(core.request({ method = "PUT", url = srv.url("/dav/verified.bin"), body_file = src,
                                      sha256 = sum:upper() }))
      assert.equal(201, r.status)
      assert.equal(24 * MiB + 4097, r.size)
      assert.equal(sum, r.digest)
      assert.equal(sum, assert(hash.file(srv.root .. "/dav/verified.bin")))
      -- the Lua layer, over the same path
      r = assert(http.request({ method = "PUT", url = srv.url("/dav/verified.bin"), body_file = src, sha256 = sum }))
      assert.equal(sum, r.digest)
      -- a wrong sha256 fails with the digest of what was sent
      local err, code
      r, err, code = core.request({ method = "PUT", url = srv.url("/dav/verified.bin"), body_file = src,
                                   sha256 = string.rep("0", 64) })
      assert.is_nil(r)
      assert.equal("EDIGEST", code)
      assert.matches("SHA%-256 mismatch: got " .. sum, err)
      -- a slice off every buffer boundary: the digest is the slice's
      local off, len = 3 * MiB + 11, 9 * MiB + 513
      r = assert(core.request({ method = "PUT", url = srv.url("/dav/verified-slice.bin"), body_file = src,
                                body_offset = off, body_length = len }))
      assert.equal(len, r.size)
      local slice_sum = assert(hash.file(srv.root .. "/dav/verified-slice.bin"))
      assert.equal(slice_sum, r.digest)
      r = assert(core.request({ method = "PUT", url = srv.url("/dav/verified-slice.bin"), body_file = src,
                                body_offset = off, body_length = len, sha256 = slice_sum }))
      assert.equal(slice_sum, r.digest)
      -- a rewound (307) upload is hashed once, from the start of the slice
      r = assert(core.request({ method = "PUT", url = srv.url("/redirect-put"), body_file = src,
                                body_offset = off, body_length = len, sha256 = slice_sum,
                                headers = { Expect = "" } }))
      assert.is_true(r.status == 201 or r.status == 204) -- moved.bin may be there already
      assert.equal(slice_sum, r.digest)
      assert.equal(slice_sum, assert(hash.file(srv.root .. "/dav/moved.bin")))
    end)

    it("stops an upload on Ctrl-C promptly: exit 130", function()
      local src = out .. "/interrupted-up.bin"
      run({ "openssl", "rand", "-out", src, tostring(64 * MiB) })
      -- a server that takes the headers and 1 MiB of the body, then stops
      -- reading, so the upload stalls mid-body until interrupted
      local listening, took = out .. "/sink.listening", out .. "/sink.took"
      fs.remove(listening)
      fs.remove(took)
      local port = peer.free_port()
      local sink = assert(proc.spawn({ argv = { "python3", "-c", [[
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1)
open(sys.argv[2], "w").close()
c, _ = s.accept()
got = 0
while got < 1 << 20:
    b = c.recv(65536)
    if not b:
        break
    got += len(b)
open(sys.argv[3], "w").write(str(got))
time.sleep(60)
]], tostring(port), listening, took }, stdout = "null", stderr = "null" }))
      local script = out .. "/interrupt-up.lua"
      assert(fs.write(script, ([[
        local r, err, code = require("capil.core.http").request({ method = "PUT", url = %q,
          body_file = %q, sha256 = string.rep("0", 64), headers = { Expect = "" } })
        io.stderr:write("returned ", tostring(code), "\n")
      ]]):format(("http://127.0.0.1:%d/up.bin"):format(port), src)))
      local deadline = runtime.now() + 10
      while not fs.exists(listening) do
        assert(runtime.now() < deadline, "the sink did not start")
        runtime.sleep(0.01)
      end
      local child = assert(proc.spawn({ argv = { assert(runtime.exepath()), script },
                                        stdout = "null", stderr = "null" }))
      while not fs.exists(took) do
        assert(runtime.now() < deadline, "the upload did not start")
        runtime.sleep(0.01)
      end
      runtime.sleep(0.2) -- capil now waits on a full socket
      local t0 = runtime.now()
      assert(child:kill("INT"))
      local st = assert(child:wait({ timeout = 5 }))
      local took_s = runtime.now() - t0
      child:close()
      sink:kill("TERM")
      sink:wait({ timeout = 5 })
      sink:close()
      assert.equal(130, st.code)
      assert.is_true(took_s < 1, ("exited %.2f s after Ctrl-C"):format(took_s))
    end)

    it("calls tick with the bytes moved while a transfer runs; false stops it", function()
      local p = target("ticked.bin")
      local seen = {}
      local r, err, code = core.request({ url = srv.url("/slow/big.bin"), out_file = p, tick_interval = 0.2,
        tick = function(n)
          seen[#seen + 1] = n
          if #seen == 3 then return nil, "lease lost" end
        end })
      assert.is_nil(r)
      assert.equal("ETICK", code)
      assert.matches(": tick: lease lost$", err)
      assert.equal(3, #seen)
      assert.is_true(seen[3] >= seen[1] and seen[3] > 0)
      assert.is_false(fs.exists(p .. ".part"))
      r, err, code = core.request({ url = srv.url("/slow/big.bin"), tick_interval = 0.1,
        tick = function() error("boom") end })
      assert.is_nil(r)
      assert.equal("ETICK", code)
      assert.matches("tick: .*boom", err)
      assert.has_error(function() core.request({ url = srv.url("/"), tick = 1 }) end,
        "http.request: option 'tick' must be a function")
    end)

    it("fails with ECONNREFUSED on a closed port and EDNS on an unknown host", function()
      local port = assert(runtime.free_port())
      local r, err, code = core.request({ url = ("http://127.0.0.1:%d/"):format(port) })
      assert.is_nil(r)
      assert.equal("ECONNREFUSED", code)
      assert.matches("http.request: GET http://127.0.0.1:" .. port .. "/: ", err, 1, true)
      r, err, code = core.request({ url = "http://capil-spec.invalid/" })
      assert.is_nil(r)
      assert.equal("EDNS", code)
      assert.matches("capil-spec.invalid", err, 1, true)
    end)

    it("raises on misuse", function()
      assert.has_error(function() core.request({ url = "http://x/", tmeout = 1 }) end,
        "http.request: unknown option 'tmeout'")
      assert.has_error(function() core.request({ url = "http://x/", body = "a", body_file = "b" }) end)
      assert.has_error(function() core.request({ url = "http://x/", sha256 = "abc" }) end)
      assert.has_error(function() core.request({ method = "GET" }) end)
      assert.has_error(function() core.request({ url = "http://x/", headers = { ["X-A"] = "1\r\nX-B: 2" } }) end)
    end)

    it("redacts userinfo and credential-like query values from URLs", function()
      assert.equal("https://host:8/p?dcPath=dc1&X-Goog-Signature=****&token=****",
        core.redact_url("https://user:pa@ss@host:8/p?dcPath=dc1&X-Goog-Signature=abc&token=zz#frag"))
      assert.equal("http://h/x", core.redact_url("http://h/x"))
    end)
  end)

  describe("TLS", function()
    it("verifies the server against ca_file", function()
      local r = assert(core.request({ url = srv.tls_url("/files/small.txt"), ca_file = pki.ca }))
      assert.equal("hello, capil\n", r.body)
    end)

    it("refuses an unknown CA, without and with a different ca_file", function()
      local r, _, code = core.request({ url = srv.tls_url("/files/small.txt") })
      assert.is_nil(r)
      assert.equal("TLS", code)
      r, _, code = core.request({ url = srv.tls_url("/files/small.txt"), ca_file = pki.other_ca })
      assert.is_nil(r)
      assert.equal("TLS", code)
    end)

    it("accepts anything with insecure = true", function()
      local r = assert(core.request({ url = srv.tls_url("/files/small.txt"), insecure = true }))
      assert.equal(200, r.status)
    end)

    it("checks a pinned public key", function()
      local r = assert(core.request({ url = srv.tls_url("/files/small.txt"), insecure = true, pin_sha256 = pki.pin }))
      assert.equal(200, r.status)
      r = assert(core.request({ url = srv.tls_url("/files/small.txt"), ca_file = pki.ca,
                                pin_sha256 = "sha256//" .. pki.pin }))
      assert.equal(200, r.status)
      local wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
      local err, code
      r, err, code = core.request({ url = srv.tls_url("/files/small.txt"), insecure = true, pin_sha256 = wrong })
      assert.is_nil(r)
      assert.equal("TLS", code)
      assert.matches("public key", err)
    end)

    it("checks a certificate fingerprint (a vSphere thumbprint) instead of the CA", function()
      -- the colon form openssl and vCenter print, and plain lower-case hex
      local r = assert(core.request({ url = srv.tls_url("/files/small.txt"), cert_sha256 = pki.fingerprint }))
      assert.equal(200, r.status)
      r = assert(core.request({ url = srv.tls_url("/files/small.txt"),
                                cert_sha256 = pki.fingerprint:gsub(":", ""):lower() }))
      assert.equal(200, r.status)
      local wrong = peer.wrong_fingerprint(pki.fingerprint)
      local err, code
      r, err, code = core.request({ url = srv.tls_url("/echo/method"), body = "password=x", cert_sha256 = wrong })
      assert.is_nil(r)
      assert.equal("TLS", code)
      assert.matches("http.request: POST https://127.0.0.1:%d+/echo/method: ", err)
      assert.has_error(function() core.request({ url = srv.tls_url("/"), cert_sha256 = "abc" }) end,
        "http.request: option 'cert_sha256' must be a SHA-256 fingerprint (64 hex digits, colons allowed)")
    end)
  end)

  describe("sessions", function()
    it("keep the cookies a server sets and send them back", function()
      local s <close> = http.session()
      assert(http.request({ session = s, url = srv.url("/cookie/set") }))
      assert.equal("s3cr3t-cookie", s:cookies().vmware_soap_session)
      local r = assert(http.request({ session = s, url = srv.url("/echo/cookie") }))
      assert.equal("vmware_soap_session=s3cr3t-cookie", r.body)
      s:clear_cookies()
      r = assert(http.request({ session = s, url = srv.url("/echo/cookie") }))
      assert.equal("", r.body)
    end)

    it("reuse one connection; plain requests do not", function()
      local s = http.session()
      local a = assert(s:request({ url = srv.url("/conn") })).body
      local b = assert(s:request({ url = srv.url("/conn") })).body
      assert.equal(a, b)
      s:close()
      s:close()
      assert.has_error(function() s:request({ url = srv.url("/conn") }) end,
        "attempt to use a closed http session")
      local c = assert(core.request({ url = srv.url("/conn") })).body
      local d = assert(core.request({ url = srv.url("/conn") })).body
      assert.are_not.equal(c, d)
    end)

    it("fresh_connect: a connection of its own, closed after the answer, with the session's cookies", function()
      local s <close> = http.session()
      assert(http.request({ session = s, url = srv.url("/cookie/set") }))
      local kept = assert(s:request({ url = srv.url("/conn") })).body
      local c1, cookie = assert(http.request({ session = s, url = srv.url("/conn/cookie"), fresh_connect = true }))
        .body:match("^(%d+) (.*)$")
      assert.are_not.equal(kept, c1)
      assert.equal("vmware_soap_session=s3cr3t-cookie", cookie)
      -- the session's kept-alive connection is still there; the fresh one is gone
      assert.equal(kept, assert(s:request({ url = srv.url("/conn") })).body)
      local c2 = assert(s:request({ url = srv.url("/conn/cookie"), fresh_connect = true })).body:match("^%d+")
      assert.are_not.equal(c1, c2)
      assert.are_not.equal(kept, c2)
    end)

    it("fresh_connect: a POST whose connection dies unanswered goes out once, not resent by libcurl", function()
      local s <close> = http.session()
      assert(s:request({ url = srv.url("/conn") })) -- a kept-alive connection
      local before = srv.count("/drop")
      assert.is_nil(s:request({ url = srv.url("/drop"), body = "<CreateVM_Task/>" }))
      assert.equal(before + 2, srv.count("/drop")) -- libcurl's silent resend
      assert(s:request({ url = srv.url("/conn") }))
      before = srv.count("/drop")
      local r, err, code = http.request({ session = s, url = srv.url("/drop"), body = "<CreateVM_Task/>",
        fresh_connect = true })
      assert.is_nil(r)
      assert.is_string(err)
      assert.is_string(code)
      assert.equal(before + 1, srv.count("/drop"))
    end)
  end)

  describe("Lua layer", function()
    local level
    setup(function()
      level = log.level()
      log.configure({ level = "error" }) -- retries warn; the log file test reads a sink
    end)
    teardown(function() log.configure({ level = level }) end)

    it("turns 404 into HTTP_404 without retrying and leaves no file", function()
      local p = target("missing404.bin")
      local before = srv.count("/files/missing404.bin")
      local r, err, code, resp = http.request({ url = srv.url("/files/missing404.bin"), out_file = p, backoff = 0.01 })
      assert.is_nil(r)
      assert.equal("http.request: GET " .. srv.url("/files/missing404.bin") .. ": HTTP 404 Not Found", err)
      assert.equal("HTTP_404", code)
      assert.equal(404, resp.status)
      assert.equal(before + 1, srv.count("/files/missing404.bin"))
      assert.is_false(fs.exists(p))
      assert.is_false(fs.exists(p .. ".part"))
    end)

    it("returns statuses listed in ok_status", function()
      local r = assert(http.request({ url = srv.url("/status/404"), ok_status = { 404 } }))
      assert.equal(404, r.status)
      r = assert(http.request({ method = "head", url = srv.url("/files/small.txt") }))
      assert.equal(200, r.status)
    end)

    it("retries 5xx with backoff, logging the redacted URL", function()
      local logfile = out .. "/retry.log"
      local close = log.add_file(logfile)
      local before = srv.count("/status/503")
      local r, err, code = http.request({ url = srv.url("/status/503?token=hush-hush"), retries = 2, backoff = 0.01 })
      close()
      assert.is_nil(r)
      assert.equal("HTTP_503", code)
      assert.matches(": HTTP 503 ", err)
      assert.equal(before + 3, srv.count("/status/503"))
      local text = read(logfile)
      assert.matches("retry 2/2", text)
      assert.matches("status/503%?token=%*%*%*%*", text)
      assert.is_nil(text:find("hush-hush", 1, true))
    end)

    it("does not repeat a POST the server may have acted on", function()
      local before = srv.count("/status/500")
      local _, _, code = http.request({ method = "POST", url = srv.url("/status/500"), body = "x", backoff = 0.01 })
      assert.equal("HTTP_500", code)
      assert.equal(before + 1, srv.count("/status/500"))
    end)

    it("waits what Retry-After asks on 429", function()
      local before = srv.count("/status/429")
      local t0 = runtime.now()
      local _, _, code = http.request({ url = srv.url("/status/429"), retries = 1, backoff = 0.01 })
      assert.equal("HTTP_429", code)
      assert.equal(before + 2, srv.count("/status/429"))
      assert.is_true(runtime.now() - t0 >= 0.9)
    end)

    it("retries a refused connection, then reports ECONNREFUSED", function()
      local port = assert(runtime.free_port())
      local r, _, code = http.request({ url = ("http://127.0.0.1:%d/"):format(port), retries = 1, backoff = 0.01 })
      assert.is_nil(r)
      assert.equal("ECONNREFUSED", code)
    end)

    it("fails a wrong sha256 without retrying and keeps no file", function()
      local p = target("wrong-lua.bin")
      local r, err, code = http.request({ url = srv.url("/files/big.bin"), out_file = p, sha256 = string.rep("a", 64) })
      assert.is_nil(r)
      assert.equal("EDIGEST", code)
      assert.matches("mismatch", err)
      assert.is_false(fs.exists(p))
      assert.is_false(fs.exists(p .. ".part"))
    end)

    it("starts over when a complete .part gets 416", function()
      local p = target("complete.bin")
      assert(fs.copy(big, p .. ".part"))
      local r = assert(http.request({ url = srv.url("/files/big.bin"), out_file = p, resume = true, sha256 = big_sum }))
      assert.equal(200, r.status)
      assert.equal(big_sum, sha256sum(p))
    end)

    it("survives a server that dies mid-body: retry, resume, digest correct", function()
      local p = target("flaky.bin")
      local file = srv.root .. "/flaky/big.bin"
      local sum = sha256sum(file)
      local workers = srv.workers()
      assert.equal(1, #workers)
      -- SIGKILL the worker once the first bytes are on disk; the master
      -- respawns a worker and the retry continues the .part with a Range
      local killer = assert(proc.spawn({
        argv = { "sh", "-c", [[
          i=0
          while [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" -lt 8192 ]; do
            i=$((i+1)); [ $i -gt 500 ] && exit 1; sleep 0.02
          done
          kill -9 "$2"]], "killer", p .. ".part", tostring(workers[1]) },
        stdout = "null", stderr = "null",
      }))
      local r, err = http.request({ url = srv.url("/flaky/big.bin"), out_file = p, backoff = 0.05, sha256 = sum })
      local st = assert(killer:wait({ timeout = 5 }))
      killer:close()
      assert.equal(0, st.code)
      assert(r, err)
      assert.equal(206, r.status)
      assert.is_true(r.resumed > 0)
      assert.equal(4 * MiB, r.size)
      assert.equal(sum, r.digest)
      assert.equal(sum, sha256sum(p))
      assert.are_not.same(workers, srv.workers())
      srv.count("/flaky/big.bin")
      local hits = srv.hits("/flaky/big.bin")
      assert.matches("206 range=bytes=" .. r.resumed .. "%-", hits[#hits])
    end)

    it("raises on unknown options", function()
      assert.has_error(function() http.request({ url = "http://x/", retires = 2 }) end,
        "http.request: unknown option 'retires'")
    end)
  end)
end)
