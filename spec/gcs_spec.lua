-- spec/gcs_spec.lua — capil.publish.gcs: image-builder's paths and names, the JWT
-- bearer assertion (checked with the openssl CLI), chunk arithmetic; the
-- resumable upload, credentials and errors against our fake of GCS
-- (spec/support/gcs.lua: resumable protocol, drops, 503/429, a token
-- endpoint); objects, listing and downloads against the firebase-tools
-- Storage emulator.
local gcs = require("capil.publish.gcs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")

local KiB, MiB = 1024, 1024 * 1024

local function run(argv, stdin)
  local r = assert(proc.run({ argv = argv, stdin = stdin }))
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
  return r.stdout
end

local function write(path, data)
  assert(fs.write(path, data))
  return path
end

-- getenv for gcs.client: only the given variables exist.
local function env(vars)
  return function(name) return vars[name] end
end

describe("gcs paths and names #gcs #unit", function()
  -- image-builder's rule: release when ^v?\d+\.\d+\.\d+(-\d+)?$, else ci
  local cases = {
    { "v1.16.14", "release" },
    { "v1.16.14-1", "release" },
    { "1.16.14", "release" },
    { "1.16.14-12", "release" },
    { "v0.0.0", "release" },
    { "v10.200.3000", "release" },
    { "v1.16.14-beta.0", "ci" },
    { "v1.16.14-rc.1", "ci" },
    { "v1.16.14+vmware.1", "ci" },
    { "v1.16.14-1-2", "ci" },
    { "v1.16.14-", "ci" },
    { "v1.16", "ci" },
    { "v1.16.14.1", "ci" },
    { "vv1.16.14", "ci" },
    { "V1.16.14", "ci" },
    { "v1.16.x", "ci" },
    { " v1.16.14", "ci" },
    { "v1.16.14 ", "ci" },
    { "master", "ci" },
    { "v1.17.0-alpha.0.1234+abcdef", "ci" },
  }
  for _, c in ipairs(cases) do
    it(("%q goes to %s/"):format(c[1], c[2]), function()
      assert.equal(c[2] .. "/" .. c[1] .. "/", gcs.path_for(c[1]))
      assert.equal(c[2] == "release", gcs.is_release(c[1]))
    end)
  end

  it("names objects as image-builder does", function()
    assert.equal("ubuntu-1804-kube-v1.16.14.ova", gcs.object_name("ubuntu-1804", "v1.16.14"))
    assert.equal("capv-images", gcs.DEFAULT_BUCKET)
    local object = gcs.path_for("v1.16.14") .. gcs.object_name("photon-3", "v1.16.14")
    assert.equal("https://storage.googleapis.com/capv-images/release/v1.16.14/photon-3-kube-v1.16.14.ova",
      gcs.public_url(gcs.DEFAULT_BUCKET, object))
    assert.equal("https://storage.googleapis.com/capv-images/release/v1.16.14/photon-3-kube-v1.16.14.ova.sha256",
      gcs.public_url(gcs.DEFAULT_BUCKET, object .. ".sha256"))
    assert.equal("http://127.0.0.1:9199/b/ci/v1%2B1/x%20y.ova",
      gcs.public_url("b", "ci/v1+1/x y.ova", "http://127.0.0.1:9199/"))
  end)

  it("rejects what is not a version or a name", function()
    assert.has_error(function() gcs.path_for("") end)
    assert.has_error(function() gcs.path_for(nil) end)
    assert.has_error(function() gcs.object_name("", "v1.2.3") end)
  end)
end)

describe("gcs chunks #gcs #unit", function()
  it("cuts a file into chunks of chunk_size, the last one shorter", function()
    local q = 256 * KiB
    assert.same({}, gcs.chunks(0, q))
    assert.same({ { 0, 0 } }, gcs.chunks(1, q))
    assert.same({ { 0, q - 1 } }, gcs.chunks(q, q))
    assert.same({ { 0, q - 1 }, { q, q } }, gcs.chunks(q + 1, q))
    local list = gcs.chunks(300 * MiB + 5, 8 * MiB)
    assert.equal(38, #list)
    assert.same({ 296 * MiB, 300 * MiB + 4 }, list[38])
    for i, c in ipairs(list) do
      assert.equal((i - 1) * 8 * MiB, c[1])
      if i < #list then assert.equal(8 * MiB, c[2] - c[1] + 1) end
    end
    -- resuming where the server stopped (a multiple of 256 KiB)
    assert.same({ { 3 * q, 3 * q + 2 * q - 1 }, { 5 * q, 5 * q + 9 } }, gcs.chunks(5 * q + 10, 2 * q, 3 * q))
  end)

  it("refuses chunk sizes that are not multiples of 256 KiB", function()
    for _, bad in ipairs({ 0, -262144, 1000, 256 * KiB + 1, 1.5 * 262144, 100 * 1000 }) do
      assert.has_error(function() gcs.chunks(10, bad) end)
    end
    local c = assert(gcs.client({ anonymous = true, endpoint = "http://127.0.0.1:9" }))
    local ok, err = pcall(c.upload, c, "b", "o", "/dev/null", { chunk_size = 1000 })
    assert.is_false(ok)
    assert.matches("multiple of 256 KiB", err)
  end)
end)

describe("gcs credentials #gcs #unit", function()
  local dir, pem, pub
  lazy_setup(function()
    dir = assert(fs.tempdir({ prefix = "capil-spec-gcs" }))
    pem = dir .. "/key.pem"
    run({ "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", pem })
    pub = dir .. "/pub.pem"
    run({ "openssl", "pkey", "-in", pem, "-pubout", "-out", pub })
  end)

  local function key_file(fields)
    local k = {
      type = "service_account", project_id = "demo", private_key_id = "abc123",
      private_key = assert(fs.read(pem)), client_email = "builder@demo.iam.gserviceaccount.com",
      client_id = "1234", token_uri = "http://127.0.0.1:9/token",
    }
    for f, v in pairs(fields or {}) do k[f] = v ~= json.null and v or nil end
    return write(dir .. "/sa-" .. hash.hex_encode(hash.random(4)) .. ".json", json.encode(k))
  end

  it("builds an RS256 JWT with the bearer flow's claims, verified by openssl", function()
    local key = assert(json.read(key_file()))
    local jwt = assert(gcs.jwt(key, 1700000000))
    local h64, c64, s64 = jwt:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
    assert.truthy(h64, "three base64url parts without padding")
    local header = assert(json.decode(assert(hash.base64url_decode(h64))))
    assert.same({ alg = "RS256", typ = "JWT", kid = "abc123" }, header)
    local claims = assert(json.decode(assert(hash.base64url_decode(c64))))
    assert.same({
      iss = "builder@demo.iam.gserviceaccount.com",
      scope = "https://www.googleapis.com/auth/devstorage.read_write",
      aud = "http://127.0.0.1:9/token", iat = 1700000000, exp = 1700003600,
    }, claims)
    write(dir .. "/input", h64 .. "." .. c64)
    write(dir .. "/sig", assert(hash.base64url_decode(s64)))
    local out = run({ "openssl", "dgst", "-sha256", "-verify", pub, "-signature", dir .. "/sig", dir .. "/input" })
    assert.matches("Verified OK", out)
    -- the same check fails on a changed claim
    write(dir .. "/input", h64 .. "." .. hash.base64url_encode(json.encode({ iss = "x" })))
    local r = assert(proc.run({ argv = { "openssl", "dgst", "-sha256", "-verify", pub, "-signature",
      dir .. "/sig", dir .. "/input" } }))
    assert.are_not.equal(0, r.code)
  end)

  it("takes the key from key_file, then KEY_FILE, then GOOGLE_APPLICATION_CREDENTIALS", function()
    local a, b, c = key_file({ client_email = "a@x" }), key_file({ client_email = "b@x" }), key_file({ client_email = "c@x" })
    local vars = { KEY_FILE = b, GOOGLE_APPLICATION_CREDENTIALS = c }
    assert.equal("a@x", assert(gcs.client({ key_file = a, getenv = env(vars) })).auth.email)
    assert.equal("b@x", assert(gcs.client({ getenv = env(vars) })).auth.email)
    assert.equal("KEY_FILE", assert(gcs.client({ getenv = env(vars) })).auth.source)
    vars.KEY_FILE = ""
    assert.equal("c@x", assert(gcs.client({ getenv = env(vars) })).auth.email)
    assert.equal("anonymous", assert(gcs.client({ key_file = a, anonymous = true })).auth.kind)
  end)

  it("chooses the endpoint and, with nothing configured, the metadata server or nobody", function()
    local c = assert(gcs.client({ getenv = env({}) }))
    assert.equal("https://storage.googleapis.com", c.endpoint)
    assert.equal("metadata", c.auth.kind)
    assert.equal("169.254.169.254", c.auth.host)
    c = assert(gcs.client({ getenv = env({ STORAGE_EMULATOR_HOST = "127.0.0.1:9199" }) }))
    assert.equal("http://127.0.0.1:9199", c.endpoint)
    assert.equal("anonymous", c.auth.kind)
    c = assert(gcs.client({ endpoint = "http://127.0.0.1:1/", getenv = env({ STORAGE_EMULATOR_HOST = "x:1",
      GCE_METADATA_HOST = "127.0.0.1:2" }) }))
    assert.equal("http://127.0.0.1:1", c.endpoint)
    assert.equal("metadata", c.auth.kind)
    assert.has_error(function() gcs.client({ endpoint = "ftp://x" }) end)
    assert.has_error(function() gcs.client({ key = "x" }) end)
  end)

  it("refuses bad key files with EKEY, naming the file and never the key", function()
    local secret_line = assert(fs.read(pem)):match("\n([^\n]+)\n")
    local cases = {
      { write(dir .. "/broken.json", '{"type": "service_account", "private_key": "' .. secret_line .. '", }'),
        "not a JSON key file %(syntax error at line 1" },
      { write(dir .. "/array.json", "[1]"), "no object at the top" },
      { key_file({ type = json.null }), "without a 'type'" },
      { key_file({ type = "external_account" }), "'external_account' is not supported" },
      { key_file({ client_email = json.null }), "service_account key file without 'client_email'" },
      { key_file({ private_key = "-----BEGIN PRIVATE KEY-----\n" .. secret_line .. "\n-----END PRIVATE KEY-----\n" }),
        "private_key is not a usable RSA private key" },
      { key_file({ token_uri = "file:///etc/passwd" }), "token_uri that is not an http%(s%) URL" },
      { write(dir .. "/user.json", json.encode({ type = "authorized_user", client_id = "x", client_secret = "s3cr3t-value" })),
        "authorized_user key file without 'refresh_token'" },
      { dir .. "/missing.json", "cannot read the key file %(No such file or directory%)" },
    }
    for _, case in ipairs(cases) do
      local c, err, code = gcs.client({ key_file = case[1], getenv = env({}) })
      assert.is_nil(c)
      assert.equal("EKEY", code)
      assert.matches("^gcs: " .. case[1]:gsub("%p", "%%%0") .. ": ", err)
      assert.matches(case[2], err)
      assert.falsy(err:find(secret_line, 1, true), err)
      assert.falsy(err:find("s3cr3t", 1, true), err)
    end
  end)

  it("accepts an authorized-user file", function()
    local f = write(dir .. "/adc.json", json.encode({ type = "authorized_user", client_id = "id",
      client_secret = "secret-1", refresh_token = "refresh-1" }))
    local c = assert(gcs.client({ key_file = f }))
    assert.equal("authorized_user", c.auth.kind)
    assert.equal("https://oauth2.googleapis.com/token", c.auth.token_uri)
    -- secrets are registered as soon as the file is read
    assert.equal("x **** y", require("capil.sys.log").redact("x refresh-1 y"))
  end)
end)

describe("gcs without a GCE metadata server #gcs", function()
  -- capil's installer httpd serving a token document at the metadata
  -- server's path stands in for another cloud's metadata service at the
  -- same address: it answers, but not with `Metadata-Flavor: Google`
  local httpd = require("capil.core.httpd")
  local runtime = require("capil.core.runtime")
  local dir, srv
  lazy_setup(function()
    dir = assert(fs.tempdir({ prefix = "capil-spec-gcs-md" }))
    local path = dir .. "/computeMetadata/v1/instance/service-accounts/default"
    assert(fs.mkdir(path))
    write(path .. "/token", json.encode({ access_token = "ya29.not-gce-token", expires_in = 3599,
      token_type = "Bearer" }))
    srv = assert(httpd.serve({ dir = dir }))
  end)
  lazy_teardown(function() if srv then srv:close() end end)

  it("goes on without credentials when the server at the metadata address is not GCE's", function()
    local c = assert(gcs.client({ getenv = env({ GCE_METADATA_HOST = "127.0.0.1:" .. srv.port }) }))
    assert.equal("metadata", c.auth.kind)
    assert.is_nil((c:token()))
    assert.equal("anonymous", c.auth.kind)
    -- the server thread logs a request after answering it
    local reqs = srv:requests()
    for _ = 1, 100 do
      if #reqs > 0 then break end
      runtime.sleep(0.01)
      reqs = srv:requests()
    end
    assert.equal(1, #reqs)
    assert.equal("/computeMetadata/v1/instance/service-accounts/default/token", reqs[1].path)
    assert.is_nil((c:token()))
    assert.equal(1, #srv:requests(), "probed once")
  end)

  it("goes on without credentials when nothing answers at the metadata address", function()
    local port = assert(runtime.free_port())
    local c = assert(gcs.client({ getenv = env({ GCE_METADATA_HOST = "127.0.0.1:" .. port }) }))
    assert.is_nil((c:token()))
    assert.equal("anonymous", c.auth.kind)
  end)
end)

-- ====================================================================
-- Against peers: our fake of GCS's resumable protocol and token endpoint,
-- and the firebase-tools Storage emulator (spec/support/gcs.lua)
-- ====================================================================

local peers = require("support.gcs")
local capil = require("support.capil")

local function sha256_file(path) return assert(hash.file(path, "sha256")) end

-- A file of `size` random bytes made by the openssl CLI.
local function random_file(dir, name, size)
  local path = dir .. "/" .. name
  run({ "openssl", "rand", "-out", path, tostring(size) })
  return path
end

-- A progress handle for client:upload that runs `fn` once, when the first
-- chunk is acknowledged (the session has started by then).
local function after_first_chunk(fn)
  local done = false
  return {
    update = function(_, bytes)
      if not done and bytes > 0 then
        done = true
        fn()
      end
    end,
  }
end

describe("gcs resumable uploads against the fake #gcs", function()
  local dir, fake, key, c
  -- a service-account key for `token_uri` in a directory of its own
  -- (peers.service_account_key writes fixed file names)
  local keys = 0
  local function new_key(token_uri)
    keys = keys + 1
    local kdir = dir .. "/key" .. keys
    assert(fs.mkdir(kdir))
    return peers.service_account_key(kdir, token_uri)
  end
  lazy_setup(function()
    dir = assert(fs.tempdir({ prefix = "capil-spec-gcs-fake" }))
    fake = peers.fake({ token = true })
    key = new_key(fake.token_uri)
    c = assert(gcs.client({ endpoint = fake.endpoint, key_file = key.path, getenv = env({}), backoff = 0.01 }))
  end)
  lazy_teardown(function() if fake then fake.stop() end end)
  before_each(function() fake.reset() end)

  it("uploads 300 MiB through 5 dropped connections without re-sending an acknowledged byte", function()
    local size = 300 * MiB
    local path = random_file(dir, "big.ova", size)
    local sum = sha256_file(path)
    local drops = {}
    local seen = {}
    while #drops < 5 do
      local at = math.random(1, size - 1)
      local slot = at // (8 * MiB) -- at most one drop per chunk, so each is its own failure
      if not seen[slot] then seen[slot] = true drops[#drops + 1] = at end
    end
    table.sort(drops)
    fake.inject({ action = "drop", at_bytes = drops })
    local obj, info, code = c:upload("images", "ci/v1.2.3-rc.1/big.ova", path, {
      metadata = { sha256 = sum }, backoff = 0.01,
    })
    assert.is_table(obj, info)
    assert.is_nil(code)
    assert.equal(tostring(size), tostring(obj.size))
    assert.equal(5, info.resumes, "each drop was noticed and resumed from the session's offset")
    local st = fake.stats()
    assert.equal(0, st.resent_bytes)
    local remote = st.objects["images/ci/v1.2.3-rc.1/big.ova"]
    assert.equal(size, tonumber(remote.size))
    assert.equal(sum, remote.sha256)
    assert.equal(sum, remote.metadata.sha256)
    assert.equal(assert(hash.file(path, "md5", { format = "base64" })), remote.md5Hash)
    fs.remove(path)
  end)

  it("retries 503 and 429 answers and resumes from the session's offset", function()
    local path = random_file(dir, "small.ova", MiB + 7)
    -- once the session runs (the first chunk is acknowledged), the next
    -- chunk and the status queries after it are answered 503, 503, 429
    local obj, info = c:upload("images", "ci/x/small.ova", path, { chunk_size = 256 * KiB, backoff = 0.01,
      progress = after_first_chunk(function()
        fake.inject({ action = "status", status = 503, count = 2, target = "upload" })
        fake.inject({ action = "status", status = 429, count = 1, target = "upload", retry_after = 0 })
      end) })
    assert.is_table(obj, info)
    assert.is_true(info.resumes >= 1, "went on from the session's offset")
    -- the session's start is retried too
    fake.inject({ action = "status", status = 503, count = 2, target = "api" })
    assert.is_table((c:upload("images", "ci/x/small2.ova", path, { chunk_size = 256 * KiB, backoff = 0.01 })))
    local st = fake.stats()
    assert.equal(0, st.resent_bytes)
    assert.equal(sha256_file(path), st.objects["images/ci/x/small.ova"].sha256)
  end)

  it("gives up after `retries` failures, naming the object and the status", function()
    local path = random_file(dir, "tiny.ova", 300 * KiB)
    local obj, err, code = c:upload("images", "ci/x/tiny.ova", path, { retries = 2, backoff = 0.01,
      chunk_size = 256 * KiB, progress = after_first_chunk(function()
        fake.inject({ action = "status", status = 503, count = 50, target = "upload" })
      end) })
    assert.is_nil(obj)
    assert.equal("HTTP_503", code)
    assert.matches("^gcs: upload gs://images/ci/x/tiny.ova: HTTP 503", err)
    assert.matches("gave up after 3 attempts", err)
  end)

  it("resumes a download after a dropped connection, in a later call or in the same one", function()
    local path = random_file(dir, "dl.ova", 5 * MiB + 3)
    local sum = sha256_file(path)
    assert(c:upload("images", "ci/dl/dl.ova", path, { metadata = { sha256 = sum } }))
    local out = dir .. "/dl-out.ova"
    fake.inject({ action = "drop", at_bytes = 2 * MiB + 5, target = "download" })
    local obj, err, code = c:download("images", "ci/dl/dl.ova", out, { retries = 0 })
    assert.is_nil(obj, "the connection was cut")
    assert.equal("ECONNRESET", code, err)
    assert.matches("^gcs: download gs://images/ci/dl/dl.ova: ", err)
    assert.falsy(fs.exists(out))
    local kept = assert(fs.stat(out .. ".part")).size
    assert.is_true(kept > 0 and kept <= 2 * MiB + 5, tostring(kept))
    local resp
    obj, resp = c:download("images", "ci/dl/dl.ova", out)
    assert.is_table(obj, resp)
    assert.equal(kept, resp.resumed)
    assert.equal(sum, sha256_file(out))
    assert.falsy(fs.exists(out .. ".part"))
    -- a drop inside one call: its retry continues the .part
    local out2 = dir .. "/dl-out2.ova"
    fake.inject({ action = "drop", at_bytes = 4 * MiB, target = "download" })
    obj, resp = c:download("images", "ci/dl/dl.ova", out2)
    assert.is_table(obj, resp)
    assert.is_true(resp.resumed > 0)
    assert.equal(sum, sha256_file(out2))
    fs.remove(out)
    fs.remove(out2)
  end)

  it("sends a JWT the token endpoint can verify with the key's public half", function()
    local fresh = assert(gcs.client({ endpoint = fake.endpoint, key_file = key.path, getenv = env({}) }))
    assert.equal("ENOENT", select(3, fresh:stat("images", "missing")))
    local st = fake.stats()
    assert.is_true(#st.assertions >= 1)
    local jwt = st.assertions[#st.assertions]
    local h64, c64, s64 = jwt:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
    local claims = assert(json.decode(assert(hash.base64url_decode(c64))))
    local keydoc = assert(json.read(key.path))
    assert.equal(keydoc.client_email, claims.iss)
    assert.equal(fake.token_uri, claims.aud)
    assert.equal("https://www.googleapis.com/auth/devstorage.read_write", claims.scope)
    assert.equal(claims.iat + 3600, claims.exp)
    assert.is_true(math.abs(claims.iat - os.time()) < 60)
    assert.equal("RS256", assert(json.decode(assert(hash.base64url_decode(h64)))).alg)
    local pub = key.public_pem
    write(dir .. "/jwt.in", h64 .. "." .. c64)
    write(dir .. "/jwt.sig", assert(hash.base64url_decode(s64)))
    assert.matches("Verified OK", run({ "openssl", "dgst", "-sha256", "-verify", pub, "-signature",
      dir .. "/jwt.sig", dir .. "/jwt.in" }))
  end)

  it("fetches a new token when the old one expires, and once after a 401", function()
    local short = peers.fake({ token = true, expires_in = 1 })
    finally(function() short.stop() end)
    local k = new_key(short.token_uri)
    local sc = assert(gcs.client({ endpoint = short.endpoint, key_file = k.path, getenv = env({}) }))
    assert.is_table(sc:put_small("b", "one", "1"))
    require("capil.core.runtime").sleep(1.1)
    assert.is_table(sc:put_small("b", "two", "2"))
    assert.equal(2, #short.stats().assertions)
    -- the server expires the tokens it issued: the next call is refused once, then renewed
    local sc2 = assert(gcs.client({ endpoint = fake.endpoint, key_file = key.path, getenv = env({}) }))
    assert.is_table(sc2:put_small("b", "three", "3"))
    local before = #fake.stats().assertions
    fake.inject({ action = "expire_tokens" })
    assert.is_table(sc2:put_small("b", "four", "4"))
    assert.equal(before + 1, #fake.stats().assertions)
  end)

  it("takes a token from the GCE metadata server when nothing else is configured", function()
    local hostport = fake.endpoint:match("^http://([^/]+)")
    local mc = assert(gcs.client({ endpoint = fake.endpoint, getenv = env({ GCE_METADATA_HOST = hostport }) }))
    assert.equal("metadata", mc.auth.kind)
    assert.is_table(mc:put_small("b", "from-metadata", "m"))
    assert.equal("metadata", mc.auth.kind)
    local token = mc:token()
    assert.is_string(token)
    assert.equal("x **** y", require("capil.sys.log").redact("x " .. token .. " y"))
  end)

  it("uses an authorized-user file's refresh token", function()
    local f = peers.authorized_user_file(dir, fake.token_uri)
    local uc = assert(gcs.client({ endpoint = fake.endpoint, key_file = f, getenv = env({}) }))
    assert.equal("authorized_user", uc.auth.kind)
    assert.is_string(uc:token())
    assert.is_table(uc:put_small("b", "user", "x"))
  end)

  it("explains a 403 on the bucket", function()
    local locked = peers.fake({ token = true, forbidden_buckets = { "locked" } })
    finally(function() locked.stop() end)
    local k = new_key(locked.token_uri)
    local lc = assert(gcs.client({ endpoint = locked.endpoint, key_file = k.path, getenv = env({}) }))
    local path = random_file(dir, "x.ova", 1000)
    local obj, err, code = lc:upload("locked", "release/v1.2.3/x.ova", path)
    assert.is_nil(obj)
    assert.equal("HTTP_403", code)
    assert.matches("^gcs: upload gs://locked/release/v1.2.3/x.ova: HTTP 403", err)
    local email = assert(json.read(k.path)).client_email
    assert.matches("check that the account " .. email:gsub("%p", "%%%0") .. " may write objects in bucket locked", err)
  end)

  it("a bad key or a refused token fails a capil script with a clear message and never shows the key", function()
    local keydoc = assert(json.read(key.path))
    local lines = {}
    for l in keydoc.private_key:gmatch("[^\n]+") do
      if not l:match("^%-%-%-%-%-") then lines[#lines + 1] = l end
    end
    local script = capil.script(dir, "up.lua", [[
      local gcs = require("capil.publish.gcs")
      local c = assert(gcs.client({ endpoint = arg[1], key_file = arg[2] }))
      assert(c:put_small("images", "x", "data"))
    ]])
    -- a key whose token_uri is no token endpoint
    local refused = new_key(fake.endpoint .. "/no-token-here")
    local broken = write(dir .. "/broken.json", (assert(fs.read(key.path)):gsub("BEGIN PRIVATE KEY", "BEGIN PRIVATE KEX")))
    for _, case in ipairs({
      { broken, "gcs: " .. broken .. ": private_key is not a usable RSA private key" },
      { refused.path, "gcs: token from " .. fake.endpoint .. "/no-token-here for " },
    }) do
      local r = capil.run({ "-v", script, fake.endpoint, case[1] })
      assert.are_not.equal(0, r.code)
      local out = r.stdout .. r.stderr
      assert.truthy(out:find(case[2], 1, true), out)
      for _, l in ipairs(lines) do assert.falsy(out:find(l, 1, true), "a line of the key was printed") end
      for _, jwt in ipairs(fake.stats().assertions) do assert.falsy(out:find(jwt, 1, true), "the JWT was printed") end
    end
  end)
end)

describe("gcs objects against the firebase-tools Storage emulator #gcs", function()
  local dir, emu, c
  lazy_setup(function()
    dir = assert(fs.tempdir({ prefix = "capil-spec-gcs-emu" }))
    emu = peers.emulator()
    c = assert(gcs.client({ endpoint = emu.endpoint, getenv = env({}) }))
  end)
  lazy_teardown(function() if emu then emu.stop() end end)

  it("is anonymous with an endpoint override and nothing configured", function()
    assert.equal("anonymous", c.auth.kind)
    local closing <close> = assert(gcs.client({ getenv = env({ STORAGE_EMULATOR_HOST = emu.endpoint }) }))
    assert.equal("anonymous", closing.auth.kind)
    assert.equal(emu.endpoint, closing.endpoint)
    assert.equal("ENOENT", select(3, closing:stat("capv-images", "nothing")))
  end)

  it("stores a small object with metadata, then stats, reads, lists and deletes it", function()
    local sum = hash.digest("sha256", "hello\n")
    local name = "release/v1.16.14/ubuntu-kube-v1.16.14.ova.sha256"
    local obj = assert(c:put_small("capv-images", name, sum .. "\n",
      { content_type = "text/plain", metadata = { sha256 = sum } }))
    assert.equal(name, obj.name)
    local st = assert(c:stat("capv-images", name))
    assert.equal(65, tonumber(st.size))
    assert.equal(sum, st.metadata.sha256)
    assert.equal(hash.md5_base64(sum .. "\n"), st.md5Hash)
    assert.equal(hash.crc32c_base64(sum .. "\n"), st.crc32c)
    assert.equal(sum .. "\n", assert(c:read("capv-images", name)))
    assert(c:put_small("capv-images", "ci/master/a.ova", "a"))
    local items = assert(c:list("capv-images", "release/"))
    assert.equal(1, #items)
    assert.equal(name, items[1].name)
    local all, prefixes = assert(c:list("capv-images", "", { delimiter = "/" }))
    assert.equal(0, #all)
    table.sort(prefixes)
    assert.same({ "ci/", "release/" }, prefixes)
    assert.is_true(c:delete("capv-images", name))
    local none, err, code = c:stat("capv-images", name)
    assert.is_nil(none)
    assert.equal("ENOENT", code)
    assert.matches("^gcs: stat gs://capv%-images/" .. name:gsub("%p", "%%%0") .. ": HTTP 404", err)
    assert.equal("ENOENT", select(3, c:delete("capv-images", name)))
    assert.equal("ENOENT", select(3, c:read("capv-images", name)))
  end)

  it("lists across pages", function()
    for i = 1, 5 do assert(c:put_small("paged", ("p/%d"):format(i), tostring(i))) end
    local items = assert(c:list("paged", "p/", { page_size = 2 }))
    assert.equal(5, #items)
  end)

  it("uploads a file in one resumable chunk, verified by md5 and crc32c", function()
    local path = random_file(dir, "one.ova", 3 * MiB + 3)
    local obj, info = c:upload("capv-images", "ci/one/one.ova", path, { metadata = { sha256 = sha256_file(path) } })
    assert.is_table(obj, info)
    assert.equal(3 * MiB + 3, info.bytes_sent)
    assert.equal(sha256_file(path), assert(c:stat("capv-images", "ci/one/one.ova")).metadata.sha256)
  end)

  it("does not take a session the server finished early for a complete upload", function()
    -- the emulator has no chunked sessions: it finishes the object with the first chunk
    local path = random_file(dir, "early.ova", MiB + 1)
    local obj, err, code = c:upload("capv-images", "ci/early/early.ova", path, { chunk_size = 512 * KiB })
    assert.is_nil(obj)
    assert.equal("EPROTO", code)
    assert.matches("finished the object after 524288 of 1048577 bytes", err)
  end)

  it("downloads with resume from a partial .part, and refuses a wrong sha256", function()
    local path = random_file(dir, "dl.ova", 2 * MiB + 11)
    local sum = sha256_file(path)
    assert(c:upload("capv-images", "ci/dl/dl.ova", path, { metadata = { sha256 = sum } }))
    local out = dir .. "/out.ova"
    write(out .. ".part", assert(fs.read(path)):sub(1, MiB))
    local obj, resp = c:download("capv-images", "ci/dl/dl.ova", out, { sha256 = sum })
    assert.is_table(obj, resp)
    assert.equal(MiB, resp.resumed)
    assert.equal(sum, sha256_file(out))
    assert.falsy(fs.exists(out .. ".part"))
    -- the object's own metadata.sha256 when none is given
    local out2 = dir .. "/out2.ova"
    assert.is_table((c:download("capv-images", "ci/dl/dl.ova", out2)))
    assert.equal(sum, sha256_file(out2))
    -- a wrong checksum: nothing under the final name, no .part
    local out3 = dir .. "/out3.ova"
    local none, err, code = c:download("capv-images", "ci/dl/dl.ova", out3, { sha256 = string.rep("0", 64) })
    assert.is_nil(none)
    assert.equal("EDIGEST", code)
    assert.matches("does not match the expected SHA%-256", err)
    assert.falsy(fs.exists(out3))
    assert.falsy(fs.exists(out3 .. ".part"))
    -- without any sha256, the crc32c decides
    assert(c:put_small("capv-images", "ci/dl/plain", "plain data"))
    local out4 = dir .. "/out4"
    assert.is_table((c:download("capv-images", "ci/dl/plain", out4)))
    assert.equal("plain data", assert(fs.read(out4)))
    assert.falsy(fs.exists(out4 .. ".unverified"))
  end)
end)
