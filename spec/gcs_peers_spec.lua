-- The GCS test peers themselves (spec/support/gcs.lua), driven with raw
-- capil.sys.http requests: the firebase-tools Storage emulator for simple
-- uploads, metadata, downloads and listing; our fake for the resumable
-- protocol, faults, tokens and 403.
local gcs = require("support.gcs")
local peer = require("support.peer")
local http = require("capil.sys.http")
local json = require("capil.sys.json")
local hash = require("capil.sys.hash")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")

local UNIT = 256 * 1024

local function esc(s)
  return (s:gsub("[^%w%-._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- One request, every status returned as a response, no retries or redirects.
local function req(opts)
  opts.ok_status = true
  opts.follow = false
  if opts.retries == nil then opts.retries = 0 end
  local resp, err = http.request(opts)
  assert(resp, err)
  return resp
end

local function decode(resp)
  return assert(json.decode(resp.body))
end

local function random_bytes(n)
  local parts = {}
  for i = 1, n // 65536 + 1 do parts[i] = hash.random(65536) end
  return table.concat(parts):sub(1, n)
end

local function multipart(meta, data, content_type)
  local b = "capil-" .. hash.hex_encode(hash.random(8))
  local body = table.concat({
    "--" .. b, "Content-Type: application/json; charset=UTF-8", "", json.encode(meta),
    "--" .. b, "Content-Type: " .. content_type, "", data, "--" .. b .. "--", "",
  }, "\r\n")
  return body, "multipart/related; boundary=" .. b
end

describe("gcs peers #gcs", function()
  it("say clearly that they need Node.js when node is not on PATH", function()
    local dir = peer.dir("gcs-nonode")
    local script = dir .. "/try.lua"
    assert(fs.write(script, table.concat({
      'package.path = "spec/?.lua;" .. package.path',
      'local gcs = require("support.gcs")',
      'for _, f in ipairs({ gcs.fake, gcs.firebase_tools, gcs.emulator }) do',
      '  local ok, err = pcall(f)',
      '  print(ok, err)',
      'end',
    }, "\n")))
    local r = assert(proc.run({
      argv = { runtime.exepath(), script }, env_add = { PATH = dir, CAPIL_FIXTURES = dir .. "/fixtures" },
    }))
    assert.equal(0, r.code, r.stderr)
    local lines = {}
    for line in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.equal(3, #lines, r.stdout)
    assert.matches("^false\t.*gcs%.fake: needs Node%.js >= 18 as `node` on PATH", lines[1])
    assert.matches("^false\t.*gcs%.firebase_tools: needs Node%.js >= 20", lines[2])
    assert.matches("^false\t.*gcs%.firebase_tools: needs Node%.js >= 20", lines[3])
    assert.is_false(fs.exists(dir .. "/fixtures/firebase-tools"))
    fs.remove(dir, { recursive = true })
  end)

  describe("firebase-tools Storage emulator", function()
    local em

    setup(function() em = gcs.emulator() end)
    teardown(function() if em then em.stop() end end)

    it("stores a media upload and serves its metadata, its bytes and a listing", function()
      local data = random_bytes(5000)
      local up = req({
        method = "POST", body = data, headers = { ["Content-Type"] = "application/octet-stream" },
        url = em.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=media&name=" .. esc("ci/v1.30.1/a.ova"),
      })
      assert.equal(200, up.status)
      local o = decode(up)
      assert.equal("ci/v1.30.1/a.ova", o.name)
      assert.equal("5000", o.size)
      assert.equal(hash.md5_base64(data), o.md5Hash)
      assert.equal(hash.crc32c_base64(data), o.crc32c)

      local url = em.endpoint .. "/storage/v1/b/capv-images/o/" .. esc("ci/v1.30.1/a.ova")
      local meta = decode(req({ url = url }))
      assert.equal("5000", meta.size)
      assert.equal(o.md5Hash, meta.md5Hash)
      local media = req({ url = url .. "?alt=media" })
      assert.equal(200, media.status)
      assert.equal(hash.digest("sha256", data), hash.digest("sha256", media.body))

      req({
        method = "POST", body = "x", headers = { ["Content-Type"] = "text/plain" },
        url = em.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=media&name=release%2Fv1.30.1%2Fb.ova",
      })
      local listed = decode(req({ url = em.endpoint .. "/storage/v1/b/capv-images/o?prefix=ci%2F" }))
      assert.equal(1, #listed.items)
      assert.equal("ci/v1.30.1/a.ova", listed.items[1].name)

      assert.equal(404, req({ url = em.endpoint .. "/storage/v1/b/capv-images/o/missing" }).status)
    end)

    it("keeps custom metadata from a multipart upload (the .sha256 object)", function()
      local digest = hash.digest("sha256", "the ova")
      local body, ctype = multipart({ name = "ci/v1/x.ova.sha256", metadata = { sha256 = digest } }, digest, "text/plain")
      local up = req({
        method = "POST", body = body, headers = { ["Content-Type"] = ctype },
        url = em.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=multipart",
      })
      assert.equal(200, up.status, up.body)
      local meta = decode(req({ url = em.endpoint .. "/storage/v1/b/capv-images/o/" .. esc("ci/v1/x.ova.sha256") }))
      assert.equal(digest, meta.metadata.sha256)
      local media = req({ url = em.endpoint .. "/storage/v1/b/capv-images/o/" .. esc("ci/v1/x.ova.sha256") .. "?alt=media" })
      assert.equal(digest, media.body)
    end)

    it("keeps its blobs in its own directory and stops by PID", function()
      local blobs = em.dir .. "/tmp/firebase/storage/blobs"
      assert.is_true(#assert(fs.list(blobs)) > 0)
      local pid, dir = em.pid, em.dir
      em.stop()
      em = nil
      assert.is_false(proc.alive(pid))
      assert.is_false(fs.exists(dir))
    end)
  end)

  describe("our fake GCS", function()
    local f

    setup(function() f = gcs.fake({ forbidden_buckets = { "locked" } }) end)
    teardown(function() if f then f.stop() end end)
    before_each(function() f.reset() end)

    -- Opens a resumable session; returns its URI.
    local function start(name, size, meta)
      local resp = req({
        method = "POST", url = f.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=resumable&name=" .. esc(name),
        body = json.encode(meta or { metadata = { sha256 = "x" } }),
        headers = {
          ["Content-Type"] = "application/json; charset=UTF-8",
          ["X-Upload-Content-Type"] = "application/octet-stream",
          ["X-Upload-Content-Length"] = size and tostring(size) or nil,
        },
      })
      assert.equal(200, resp.status)
      local loc = resp.headers.location
      assert.truthy(loc:find(f.endpoint .. "/upload/storage/v1/b/capv-images/o?", 1, true))
      assert.truthy(loc:match("upload_id=%w+"))
      return loc
    end

    local function put(uri, data, first, total, opts)
      local last = first + #data - 1
      local range = #data == 0 and ("bytes */" .. total) or ("bytes %d-%d/%s"):format(first, last, total)
      local o = { method = "PUT", url = uri, body = data, headers = { ["Content-Range"] = range } }
      for k, v in pairs(opts or {}) do o[k] = v end
      return req(o)
    end

    local function query(uri, total)
      return put(uri, "", 0, total or "*")
    end

    it("takes a resumable upload in 256 KiB-multiple chunks: 308 with Range, then the object", function()
      local data = random_bytes(2 * UNIT + 1000)
      local uri = start("ci/v1/a.ova", #data, { metadata = { sha256 = hash.digest("sha256", data) } })
      local q = query(uri, #data)
      assert.equal(308, q.status)
      assert.is_nil(q.headers.range) -- nothing persisted yet
      local r1 = put(uri, data:sub(1, UNIT), 0, "*")
      assert.equal(308, r1.status)
      assert.equal("bytes=0-262143", r1.headers.range)
      local r2 = put(uri, data:sub(UNIT + 1, 2 * UNIT), UNIT, #data)
      assert.equal(308, r2.status)
      assert.equal(("bytes=0-%d"):format(2 * UNIT - 1), r2.headers.range)
      assert.equal(("bytes=0-%d"):format(2 * UNIT - 1), query(uri, #data).headers.range)
      local done = put(uri, data:sub(2 * UNIT + 1), 2 * UNIT, #data)
      assert.equal(200, done.status)
      local o = decode(done)
      assert.equal("ci/v1/a.ova", o.name)
      assert.equal("capv-images", o.bucket)
      assert.equal(tostring(#data), o.size)
      assert.equal(hash.md5_base64(data), o.md5Hash)
      assert.equal(hash.crc32c_base64(data), o.crc32c)
      assert.equal(hash.digest("sha256", data), o.metadata.sha256)
      assert.equal("application/octet-stream", o.contentType)
      assert.truthy(o.generation and o.updated)
      -- the session answers the object from now on
      assert.equal(200, query(uri, #data).status)

      local st = f.stats()
      assert.equal(#data, st.bytes_received)
      assert.equal(0, st.resent_bytes)
      assert.equal(hash.digest("sha256", data), st.objects["capv-images/ci/v1/a.ova"].sha256)
      local statuses = {}
      for _, r in ipairs(st.requests) do statuses[#statuses + 1] = r.method .. " " .. r.status end
      assert.same({ "POST 200", "PUT 308", "PUT 308", "PUT 308", "PUT 308", "PUT 200", "PUT 200" }, statuses)
      assert.equal("/upload/storage/v1/b/capv-images/o", st.requests[2].path)
      assert.equal(("bytes 0-%d/*"):format(UNIT - 1), st.requests[3].range)

      local media = req({ url = f.endpoint .. "/storage/v1/b/capv-images/o/" .. esc("ci/v1/a.ova") .. "?alt=media" })
      assert.equal(hash.digest("sha256", data), hash.digest("sha256", media.body))
      local part = req({ url = f.endpoint .. "/capv-images/ci/v1/a.ova", headers = { Range = "bytes=1000-1999" } })
      assert.equal(206, part.status)
      assert.equal(("bytes 1000-1999/%d"):format(#data), part.headers["content-range"])
      assert.equal(data:sub(1001, 2000), part.body)
    end)

    it("refuses a chunk that is not a multiple of 256 KiB unless it is the last", function()
      local uri = start("odd", 3 * UNIT)
      local r = put(uri, random_bytes(UNIT + 1), 0, "*")
      assert.equal(400, r.status)
      assert.matches("multiple of 262144", decode(r).error.message)
      assert.is_nil(query(uri).headers.range)
      assert.equal(400, put(uri, random_bytes(UNIT), UNIT, 3 * UNIT).status) -- a gap
    end)

    it("keeps the whole units received before a dropped connection", function()
      local data = random_bytes(3 * UNIT + 10)
      local uri = start("dropped", #data)
      f.inject({ action = "drop", at_bytes = UNIT + 1000 })
      local resp = http.request({
        method = "PUT", url = uri, body = data:sub(1, 2 * UNIT), retries = 0, follow = false, ok_status = true,
        headers = { ["Content-Range"] = ("bytes 0-%d/%d"):format(2 * UNIT - 1, #data) },
      })
      assert.is_nil(resp)
      local q = query(uri, #data)
      assert.equal(308, q.status)
      assert.equal(("bytes=0-%d"):format(UNIT - 1), q.headers.range)
      local st = f.stats()
      assert.equal(UNIT + 1000, st.bytes_received)
      assert.equal(0, #st.pending.drops)
      assert.equal(UNIT, st.uploads[uri:match("upload_id=(%w+)")].persisted)
      -- resending from 0 overlaps: the persisted bytes are counted as re-sent
      local done = put(uri, data, 0, #data)
      assert.equal(200, done.status)
      st = f.stats()
      assert.equal(UNIT, st.resent_bytes)
      assert.equal(hash.digest("sha256", data), st.objects["capv-images/dropped"].sha256)
    end)

    it("cuts uploads at each offset of a list, and a client resuming from the Range re-sends nothing", function()
      local data = random_bytes(4 * UNIT + 777)
      local uri = start("drops", #data)
      local offsets = { 100000, 3 * UNIT + 5, 4 * UNIT + 100 }
      f.inject({ action = "drop", at_bytes = offsets })
      local offset, cuts, object = 0, 0, nil
      for _ = 1, 20 do
        local last = math.min(offset + 2 * UNIT, #data) - 1
        local resp = http.request({
          method = "PUT", url = uri, body = data:sub(offset + 1, last + 1), retries = 0, follow = false,
          ok_status = true, headers = { ["Content-Range"] = ("bytes %d-%d/%d"):format(offset, last, #data) },
        })
        if not resp then
          cuts = cuts + 1
          resp = query(uri, #data)
        end
        if resp.status == 200 then
          object = decode(resp)
          break
        end
        assert.equal(308, resp.status)
        offset = resp.headers.range and tonumber(resp.headers.range:match("^bytes=0%-(%d+)$")) + 1 or 0
      end
      assert.equal(3, cuts)
      assert.equal(hash.md5_base64(data), object.md5Hash)
      local st = f.stats()
      assert.equal(0, st.resent_bytes)
      assert.equal(0, #st.pending.drops)
      -- each cut loses the partial unit after the last whole one
      local lost = (100000 - 0) + (3 * UNIT + 5 - 2 * UNIT - UNIT) + (4 * UNIT + 100 - 4 * UNIT)
      assert.equal(#data + lost, st.bytes_received)
    end)

    it("answers injected 503 and 429 to the next upload requests, then recovers", function()
      local uri = start("busy", UNIT)
      f.inject({ action = "status", status = 503, count = 2, retry_after = 1 })
      f.inject({ action = "status", status = 429 })
      local data = random_bytes(UNIT)
      local r1 = put(uri, data, 0, UNIT)
      assert.equal(503, r1.status)
      assert.equal("1", r1.headers["retry-after"])
      assert.equal(503, decode(r1).error.code)
      assert.equal(503, put(uri, data, 0, UNIT).status)
      assert.equal(429, put(uri, data, 0, UNIT).status)
      assert.is_nil(query(uri, UNIT).headers.range) -- nothing was kept
      assert.equal(200, put(uri, data, 0, UNIT).status)
      local st = f.stats()
      assert.equal(4 * UNIT, st.bytes_received)
      assert.equal(0, st.resent_bytes)
      assert.equal(0, #st.pending.statuses)
    end)

    it("takes media and multipart uploads, lists in pages, deletes", function()
      local up = req({
        method = "POST", body = "abc", headers = { ["Content-Type"] = "text/plain" },
        url = f.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=media&name=ci%2Fv1%2Fa",
      })
      assert.equal(200, up.status)
      assert.equal(hash.crc32c_base64("abc"), decode(up).crc32c)
      local body, ctype = multipart({ name = "ci/v1/a.sha256", metadata = { sha256 = "d" } }, "d", "text/plain")
      up = req({
        method = "POST", body = body, headers = { ["Content-Type"] = ctype },
        url = f.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=multipart",
      })
      assert.equal(200, up.status, up.body)
      assert.equal("d", decode(up).metadata.sha256)
      req({ method = "POST", body = "z", url = f.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=media&name=release%2Fz" })

      local names, token = {}, nil
      repeat
        local page = decode(req({
          url = f.endpoint .. "/storage/v1/b/capv-images/o?prefix=ci%2F&maxResults=1" .. (token and "&pageToken=" .. token or ""),
        }))
        for _, item in ipairs(page.items or {}) do names[#names + 1] = item.name end
        token = page.nextPageToken
      until not token
      assert.same({ "ci/v1/a", "ci/v1/a.sha256" }, names)

      local url = f.endpoint .. "/storage/v1/b/capv-images/o/" .. esc("ci/v1/a")
      assert.equal(204, req({ method = "DELETE", url = url }).status)
      assert.equal(404, req({ url = url }).status)
      assert.equal(404, req({ url = f.endpoint .. "/capv-images/ci/v1/a" }).status)
      assert.equal(5, f.stats().bytes_received) -- "abc", "d", "z"
    end)

    it("cuts a download at an injected offset; a Range request continues it", function()
      local data = random_bytes(300000)
      req({ method = "POST", body = data, url = f.endpoint .. "/upload/storage/v1/b/capv-images/o?uploadType=media&name=dl" })
      f.inject({ action = "drop", at_bytes = 123456, target = "download" })
      local dir = peer.dir("gcs-dl")
      local resp, err = http.request({
        url = f.endpoint .. "/capv-images/dl", out_file = dir .. "/dl", retries = 2, backoff = 0.01,
        sha256 = hash.digest("sha256", data),
      })
      assert(resp, err)
      assert.equal(123456, resp.resumed)
      local gets = {}
      for _, r in ipairs(f.stats().requests) do
        if r.method == "GET" then gets[#gets + 1] = r.status end
      end
      assert.same({ 0, 206 }, gets) -- 0: the cut one never finished
      fs.remove(dir, { recursive = true })
    end)

    it("answers 403 for a forbidden bucket", function()
      local r = req({ url = f.endpoint .. "/storage/v1/b/locked/o" })
      assert.equal(403, r.status)
      assert.equal("forbidden", decode(r).error.errors[1].reason)
      r = req({ method = "POST", body = "{}", url = f.endpoint .. "/upload/storage/v1/b/locked/o?uploadType=resumable&name=x" })
      assert.equal(403, r.status)
    end)

    it("stops by PID and removes its directory", function()
      local other = gcs.fake()
      local pid, dir = other.pid, other.dir
      assert.is_true(proc.alive(pid))
      other.stop()
      assert.is_false(proc.alive(pid))
      assert.is_false(fs.exists(dir))
    end)
  end)

  describe("our fake token endpoint", function()
    local f, dir, key

    setup(function()
      f = gcs.fake({ token = true })
      dir = peer.dir("gcs-keys")
      key = gcs.service_account_key(dir, f.token_uri)
    end)
    teardown(function()
      if f then f.stop() end
      fs.remove(dir, { recursive = true })
    end)

    local function jwt(k, claims)
      local file = assert(json.decode(assert(fs.read(k.path))))
      local now = os.time()
      local c = {
        iss = file.client_email, scope = "https://www.googleapis.com/auth/devstorage.read_write",
        aud = file.token_uri, iat = now, exp = now + 3600,
      }
      for name, v in pairs(claims or {}) do c[name] = v end
      local input = hash.base64url_encode(json.encode({ alg = "RS256", typ = "JWT", kid = file.private_key_id }))
        .. "." .. hash.base64url_encode(json.encode(c))
      return input .. "." .. hash.base64url_encode(assert(hash.sign_rs256(file.private_key, input)))
    end

    local function grant(assertion, uri)
      return req({
        method = "POST", url = uri or f.token_uri,
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
        body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=" .. assertion,
      })
    end

    local function list(token)
      return req({
        url = f.endpoint .. "/storage/v1/b/capv-images/o",
        headers = token and { Authorization = "Bearer " .. token } or nil,
      })
    end

    it("writes a service-account key file and an authorized-user file", function()
      local k = assert(json.decode(assert(fs.read(key.path))))
      assert.equal("service_account", k.type)
      assert.equal(f.token_uri, k.token_uri)
      assert.equal(key.client_email, k.client_email)
      assert.equal(key.private_key_id, k.private_key_id)
      assert.matches("^%-%-%-%-%-BEGIN PRIVATE KEY%-%-%-%-%-\n", k.private_key)
      assert.matches("BEGIN PUBLIC KEY", assert(fs.read(key.public_pem)))
      local path, fields = gcs.authorized_user_file(dir, f.token_uri)
      local u = assert(json.decode(assert(fs.read(path))))
      assert.equal("authorized_user", u.type)
      assert.equal(fields.refresh_token, u.refresh_token)
      assert.equal(f.token_uri, u.token_uri)
      assert.truthy(u.client_id and u.client_secret)
    end)

    it("requires a token it issued for a signed JWT", function()
      local r = list(nil)
      assert.equal(401, r.status)
      assert.equal("required", decode(r).error.errors[1].reason)
      assert.equal(401, list("ya29.made-up").status)

      local assertion = jwt(key)
      local g = grant(assertion)
      assert.equal(200, g.status, g.body)
      local t = decode(g)
      assert.equal("Bearer", t.token_type)
      assert.equal(3600, t.expires_in)
      assert.equal(200, list(t.access_token).status)

      local st = f.stats()
      assert.same({ assertion }, st.assertions)
      local header, claims = gcs.verify_jwt(st.assertions[1], key.public_pem)
      assert.equal("RS256", header.alg)
      assert.equal(key.client_email, claims.iss)
      assert.equal(f.token_uri, claims.aud)

      -- early expiry: the same token is refused
      f.inject({ action = "expire_tokens" })
      assert.equal(401, list(t.access_token).status)
    end)

    it("rejects malformed JWTs and wrong claims with 400 invalid_grant", function()
      for _, bad in ipairs({ "not-a-jwt", "a.b.c", jwt(key, { aud = "https://oauth2.googleapis.com/token" }),
                             jwt(key, { exp = os.time() + 7200 }) }) do
        local r = grant(bad)
        assert.equal(400, r.status, bad)
        assert.equal("invalid_grant", decode(r).error)
      end
    end)

    it("gives a token for an authorized user's refresh token", function()
      local _, fields = gcs.authorized_user_file(dir, f.token_uri)
      local r = req({
        method = "POST", url = f.token_uri, headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
        body = ("grant_type=refresh_token&client_id=%s&client_secret=%s&refresh_token=%s"):format(
          esc(fields.client_id), esc(fields.client_secret), esc(fields.refresh_token)),
      })
      assert.equal(200, r.status, r.body)
      assert.equal(200, list(decode(r).access_token).status)
      assert.equal(fields.refresh_token, f.stats().refreshes[1].refresh_token)
      assert.equal(400, req({ method = "POST", url = f.token_uri, body = "grant_type=refresh_token" }).status)
    end)

    it("verifies signatures when given the public key", function()
      local strict = gcs.fake({ token = true, jwt_public_key = key.public_pem, expires_in = 60 })
      local odir = peer.dir("gcs-other")
      local ok, err = pcall(function()
        local other = gcs.service_account_key(odir, strict.token_uri)
        local r = grant(jwt(other), strict.token_uri)
        assert.equal(400, r.status)
        assert.equal("Invalid JWT Signature.", decode(r).error_description)
        r = grant(jwt(key, { aud = strict.token_uri }), strict.token_uri)
        assert.equal(200, r.status, r.body)
        assert.equal(60, decode(r).expires_in)
      end)
      strict.stop()
      fs.remove(odir, { recursive = true })
      assert(ok, err)
    end)
  end)
end)
