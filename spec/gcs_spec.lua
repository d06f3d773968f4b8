-- spec/gcs_spec.lua — capil.gcs: image-builder's paths and names, the JWT
-- bearer assertion (checked with the openssl CLI), chunk arithmetic; the
-- resumable upload, credentials and errors against our fake of GCS
-- (spec/support/gcs.lua: resumable protocol, drops, 503/429, a token
-- endpoint); objects, listing and downloads against the firebase-tools
-- Storage emulator.
local gcs = require("capil.gcs")
local hash = require("capil.hash")
local json = require("capil.json")
local fs = require("capil.fs")
local proc = require("capil.proc")

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
  setup(function()
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
    assert.equal("x **** y", require("capil.log").redact("x refresh-1 y"))
  end)
end)
