-- capil upload / images / download as a user runs them, against our GCS
-- fake (spec/support/gcs: the resumable protocol and a token endpoint): the
-- path rule, the skip when the remote checksum matches, the .sha256 object
-- written last, clear failures that never print the key, and a download
-- that resumes and refuses a wrong checksum.
local capil = require("support.capil")
local peers = require("support.gcs")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local manifest = require("capil.format.manifest")
local proc = require("capil.sys.proc")

local MiB = 1024 * 1024

-- A build directory as `capil run` leaves it: manifest, OVA, .ova.sha256.
local function build_dir(root, name, version, size)
  local dir = ("%s/%s-kube-%s"):format(root, name, version)
  assert(fs.mkdir(dir))
  local ova = ("%s/%s-kube-%s.ova"):format(dir, name, version)
  local r = assert(proc.run({ argv = { "openssl", "rand", "-out", ova, tostring(size) } }))
  assert(r.code == 0, r.stderr)
  local sum = assert(hash.file(ova))
  assert(fs.write(ova .. ".sha256", sum .. "\n"))
  assert(manifest.append(dir .. "/packer-manifest.json", manifest.build({
    name = "qemu", builder_type = "qemu", files = { { name = fs.basename(ova), size = size, sha256 = sum } },
    custom_data = { build_name = name, build_type = "node", kubernetes_semver = version },
  })))
  return dir, ova, sum
end

describe("capil upload, images, download #gcs", function()
  local tmp, fake, key

  setup(function()
    tmp = peer.dir("upload-spec")
    fake = peers.fake({ token = true, forbidden_buckets = { "locked" } })
    key = peers.service_account_key(tmp, fake.token_uri)
  end)

  teardown(function()
    if fake then fake.stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function capil_gcs(args, opts)
    local a = {}
    for _, x in ipairs(args) do a[#a + 1] = x end
    a[#a + 1] = "--gcs-endpoint"
    a[#a + 1] = fake.endpoint
    return capil.run(a, { timeout = 120, env_add = (opts or {}).env })
  end

  it("uploads under release/ or ci/ by the version rule, then skips an unchanged build", function()
    for _, c in ipairs({ { "v1.16.14", "release" }, { "v1.17.0-rc.1", "ci" } }) do
      local dir, _, sum = build_dir(tmp, "ubuntu-2004", c[1], 3 * MiB + 17)
      local seen = #fake.stats().requests
      local r = capil_gcs({ "upload", dir, "--key-file", key.path, "--chunk-size", "1" })
      assert.equal(0, r.code, r.stderr)
      local object = ("%s/%s/ubuntu-2004-kube-%s.ova"):format(c[2], c[1], c[1])
      assert.equal(("%s/capv-images/%s\n"):format(fake.endpoint, object), r.stdout)
      local st = fake.stats()
      local o = assert(st.objects["capv-images/" .. object], "no object " .. object)
      assert.equal(sum, o.sha256)
      assert.equal(sum, o.metadata.sha256)
      assert.is_table(st.objects["capv-images/" .. object .. ".sha256"])
      -- the .sha256 object (a multipart upload) comes after the OVA's last chunk
      local last_chunk, sha_at = 0, 0
      for i = seen + 1, #st.requests do
        local q = st.requests[i]
        if q.method == "PUT" then last_chunk = i end
        if q.method == "POST" and q.query:find("uploadType=multipart", 1, true) then sha_at = i end
      end
      assert.is_true(last_chunk > 0 and sha_at > last_chunk, "the .sha256 was written before the OVA was complete")
      -- a second upload of the same build sends no object bytes
      local before = st.bytes_received
      r = capil_gcs({ "upload", dir, "--key-file", key.path })
      assert.equal(0, r.code, r.stderr)
      assert.matches("skipping the upload", r.stderr, 1, true)
      assert.equal(before, fake.stats().bytes_received)
    end
  end)

  it("lists what was uploaded with size, date and checksum", function()
    local r = capil_gcs({ "images", "--key-file", key.path })
    assert.equal(0, r.code, r.stderr)
    assert.matches("release%s+v1%.16%.14%s+ubuntu%-2004%-kube%-v1%.16%.14%.ova%s+3%.0 MiB", r.stdout)
    assert.matches("ci%s+v1%.17%.0%-rc%.1%s+ubuntu%-2004%-kube%-v1%.17%.0%-rc%.1%.ova", r.stdout)
    r = capil_gcs({ "images", "ci", "--json", "--key-file", key.path })
    assert.equal(0, r.code, r.stderr)
    local list = assert(require("capil.sys.json").decode(r.stdout))
    assert.equal(1, #list)
    assert.equal("ci", list[1].kind)
    assert.equal(64, #list[1].sha256)
  end)

  it("fails clearly, never printing the key: bad key, 403, no build dir, no .sha256, dry run sends nothing", function()
    local dir = build_dir(tmp .. "/bad", "photon-3", "v1.18.8", 300 * 1024)
    local broken = tmp .. "/broken-key.json"
    local text = assert(fs.read(key.path))
    assert(fs.write(broken, (text:gsub('"private_key": "[^"]*"', '"private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA"'))))
    local private = assert(require("capil.sys.json").read(key.path)).private_key
    local r = capil_gcs({ "upload", dir, "--key-file", broken })
    assert.equal(1, r.code)
    assert.matches("broken%-key%.json", r.stderr)
    assert.is_nil((r.stdout .. r.stderr):find("AAAA", 1, true))

    r = capil_gcs({ "upload", dir, "--key-file", key.path, "--bucket", "locked" })
    assert.equal(1, r.code)
    assert.matches("HTTP 403", r.stderr, 1, true)
    assert.matches("gs://locked/", r.stderr, 1, true)
    assert.is_nil((r.stdout .. r.stderr):find(private:sub(40, 80), 1, true))

    r = capil_gcs({ "upload", tmp .. "/nowhere", "--key-file", key.path })
    assert.equal(1, r.code)
    assert.matches("nowhere: no such build directory", r.stderr, 1, true)

    fs.remove(dir .. "/photon-3-kube-v1.18.8.ova.sha256")
    r = capil_gcs({ "upload", dir, "--key-file", key.path })
    assert.equal(1, r.code)
    assert.matches("photon-3-kube-v1.18.8.ova.sha256 is missing", r.stderr, 1, true)

    assert(fs.write(dir .. "/photon-3-kube-v1.18.8.ova.sha256", assert(hash.file(dir .. "/photon-3-kube-v1.18.8.ova"))))
    local before, tokens = fake.stats().bytes_received, fake.stats().tokens_issued
    r = capil_gcs({ "upload", dir, "--key-file", key.path, "--dry-run" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("would upload", r.stderr, 1, true)
    assert.equal(before, fake.stats().bytes_received)
    -- a dry run uses no credentials: no token is fetched
    assert.equal(tokens, fake.stats().tokens_issued)

    r = capil_gcs({ "upload", dir, "--chunk-size", "0.3", "--key-file", key.path })
    assert.equal(2, r.code)
    assert.matches("multiple of 0.25 MiB", r.stderr, 1, true)
  end)

  it("downloads by version, resuming after a drop, and refuses a wrong checksum", function()
    local out = tmp .. "/dl"
    fake.inject({ action = "drop", at_bytes = MiB + 3, target = "download" })
    local r = capil_gcs({ "download", "v1.16.14", "-o", out, "--key-file", key.path })
    assert.equal(0, r.code, r.stderr)
    local got = out .. "/ubuntu-2004-kube-v1.16.14.ova"
    assert.equal(got .. "\n", r.stdout)
    assert.equal(assert(hash.file(tmp .. "/ubuntu-2004-kube-v1.16.14/ubuntu-2004-kube-v1.16.14.ova")),
      assert(hash.file(got)))
    -- a remote .sha256 that does not match: nothing under the final name
    local dir = build_dir(tmp .. "/liar", "centos-7", "v1.18.8", MiB)
    assert(fs.write(dir .. "/centos-7-kube-v1.18.8.ova.sha256", ("0"):rep(64) .. "\n"))
    r = capil_gcs({ "upload", dir, "--key-file", key.path })
    assert.equal(0, r.code, r.stderr)
    local url = fake.endpoint .. "/capv-images/release/v1.18.8/centos-7-kube-v1.18.8.ova"
    r = capil.run({ "download", url, "-o", tmp .. "/dl2" }, { timeout = 60 })
    assert.equal(1, r.code)
    assert.matches("SHA%-256 mismatch", r.stderr)
    assert.is_false(fs.exists(tmp .. "/dl2/centos-7-kube-v1.18.8.ova"))
    assert.is_false(fs.exists(tmp .. "/dl2/centos-7-kube-v1.18.8.ova.part"))
  end)
end)
