-- capil download URL as a user runs it, against a real nginx
-- (spec/support/nginx.lua): a complete, verified file is not fetched again;
-- --checksum for a file without a .sha256 (hex, sha256:hex, a checksum
-- file's URL); a partial file is continued with a "resuming at N MiB" line
-- and a rate of the new bytes only; a missing image is reported as missing.
local capil = require("support.capil")
local nginx = require("support.nginx")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")
local proc = require("capil.sys.proc")

local MiB = 1024 * 1024

describe("capil download #http #download", function()
  local tmp, web, sums = nil, nil, {}

  local function random_file(path, size)
    local r = assert(proc.run({ argv = { "openssl", "rand", "-out", path, tostring(size) } }))
    assert(r.code == 0, r.stderr)
    return assert(hash.file(path))
  end

  setup(function()
    tmp = peer.dir("download-spec")
    -- /slow/ is rate-limited so a transfer lasts long enough to measure
    web = nginx.start({ locations = "location /slow/ { limit_rate 512k; }" })
    assert(fs.mkdir(web.root .. "/slow"))
    sums.node = random_file(web.root .. "/node.ova", 2 * MiB + 5)
    assert(fs.write(web.root .. "/node.ova.sha256", sums.node .. "\n"))
    sums.plain = random_file(web.root .. "/plain.ova", MiB)
    sums.other = random_file(web.root .. "/other.ova", 1000)
    assert(fs.write(web.root .. "/SHA256SUMS", ("%s  other.ova\n%s *plain.ova\n"):format(sums.other, sums.plain)))
    sums.big = random_file(web.root .. "/slow/big.ova", 4 * MiB)
    assert(fs.write(web.root .. "/slow/big.ova.sha256", sums.big))
  end)

  teardown(function()
    if web then web.stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function download(args, opts)
    local r = capil.run(args, { timeout = 60, env_add = (opts or {}).env })
    assert.not_matches("stack traceback", r.stderr, 1, true)
    return r
  end

  it("does not fetch a complete, verified file again", function()
    local out = tmp .. "/again"
    local r = download({ "download", web.url("/node.ova"), "-o", out })
    assert.equal(0, r.code, r.stderr)
    assert.equal(out .. "/node.ova\n", r.stdout)
    assert.equal(sums.node, hash.file(out .. "/node.ova"))
    assert.equal(1, #web.hits("/node.ova"))

    r = download({ "download", web.url("/node.ova"), "-o", out })
    assert.equal(0, r.code, r.stderr)
    assert.equal(out .. "/node.ova\n", r.stdout)
    assert.matches("already complete", r.stderr, 1, true)
    assert.equal(1, #web.hits("/node.ova"), "the image was fetched again")

    -- a file that does not verify is fetched again
    assert(fs.write(out .. "/node.ova", "garbage"))
    r = download({ "download", web.url("/node.ova"), "-o", out })
    assert.equal(0, r.code, r.stderr)
    assert.matches("does not match", r.stderr, 1, true)
    assert.equal(sums.node, hash.file(out .. "/node.ova"))
    assert.equal(2, #web.hits("/node.ova"))
  end)

  it("takes --checksum as hex, sha256:hex or a checksum file's URL", function()
    local r = download({ "download", web.url("/plain.ova"), "-o", tmp .. "/c0" })
    assert.equal(1, r.code)
    assert.matches("plain.ova.sha256", r.stderr, 1, true)
    assert.matches("--checksum", r.stderr, 1, true)

    r = download({ "download", web.url("/plain.ova"), "-o", tmp .. "/c1", "--checksum", "sha256:" .. sums.plain })
    assert.equal(0, r.code, r.stderr)
    assert.equal(sums.plain, hash.file(tmp .. "/c1/plain.ova"))

    r = download({ "download", web.url("/plain.ova"), "-o", tmp .. "/c2", "--checksum", sums.plain:upper() })
    assert.equal(0, r.code, r.stderr)
    assert.equal(sums.plain, hash.file(tmp .. "/c2/plain.ova"))

    r = download({ "download", web.url("/plain.ova"), "-o", tmp .. "/c3", "--checksum", web.url("/SHA256SUMS") })
    assert.equal(0, r.code, r.stderr)
    assert.equal(sums.plain, hash.file(tmp .. "/c3/plain.ova"))
    r = download({ "download", web.url("/other.ova"), "-o", tmp .. "/c3", "--checksum", web.url("/SHA256SUMS") })
    assert.equal(0, r.code, r.stderr)
    assert.equal(sums.other, hash.file(tmp .. "/c3/other.ova"))

    -- a wrong digest: refused, nothing left
    r = download({ "download", web.url("/plain.ova"), "-o", tmp .. "/c4", "--checksum", sums.other })
    assert.equal(1, r.code)
    assert.matches("SHA%-256 mismatch", r.stderr)
    assert.is_false(fs.exists(tmp .. "/c4/plain.ova"))
    assert.is_false(fs.exists(tmp .. "/c4/plain.ova.part"))

    -- not a digest: a usage error before any request
    local before = #web.access()
    r = download({ "download", web.url("/plain.ova"), "-o", tmp .. "/c5", "--checksum", "sha256:abc" })
    assert.equal(2, r.code)
    assert.matches("not a SHA-256 digest", r.stderr, 1, true)
    r = download({ "download", web.url("/plain.ova"), "-o", tmp .. "/c5", "--checksum", "md5:abc" })
    assert.equal(2, r.code)
    assert.equal(before, #web.access())
    -- a checksum file without the file's name
    r = download({ "download", web.url("/node.ova"), "-o", tmp .. "/c6", "--checksum", web.url("/SHA256SUMS") })
    assert.equal(1, r.code)
    assert.matches("SHA256SUMS holds no SHA-256 digest for node.ova", r.stderr, 1, true)
  end)

  it("resumes a partial file with a line saying where, and a rate of the new bytes only", function()
    local out = tmp .. "/resume"
    assert(fs.mkdir(out))
    local whole = assert(fs.read(web.root .. "/slow/big.ova"))
    assert(fs.write(out .. "/big.ova.part", whole:sub(1, 3 * MiB)))
    local r = download({ "--log-format", "json", "download", web.url("/slow/big.ova"), "-o", out })
    assert.equal(0, r.code, r.stderr)
    assert.equal(sums.big, hash.file(out .. "/big.ova"))
    assert.matches("resuming big.ova at 3.0 MiB", r.stderr, 1, true)
    local hits = web.hits("/slow/big.ova")
    assert.equal(1, #hits)
    assert.matches("range=bytes=3145728-", hits[1], 1, true)
    assert.matches("bytes=1048576$", hits[1])
    -- the closing progress record: 4 MiB done, at the rate of the 1 MiB sent
    local final
    for line in r.stderr:gmatch("[^\n]+") do
      local rec = line:match("^{") and json.decode(line)
      if rec and rec.event == "progress" and rec.done then final = rec end
    end
    assert.is_table(final, r.stderr)
    assert.equal(4 * MiB, final.bytes)
    assert.is_true(final.elapsed >= 1, r.stderr)
    local fresh = final.rate * final.elapsed
    assert.is_true(fresh > 0.7 * MiB and fresh < 1.3 * MiB,
      ("rate %g over %g s is %g bytes, not the 1 MiB sent"):format(final.rate, final.elapsed, fresh))
  end)

  it("reports a missing image as missing, naming its URL, not as a missing checksum", function()
    local url = web.url("/nope/ubuntu-2204-kube-v1.30.2.ova")
    local r = download({ "download", url, "-o", tmp .. "/missing" })
    assert.equal(1, r.code)
    assert.equal("capil: download: no image at " .. url .. " (HTTP 404)\n", r.stderr)
    -- with --checksum the image request itself answers 404
    r = download({ "download", url, "-o", tmp .. "/missing", "--checksum", sums.plain })
    assert.equal(1, r.code)
    assert.matches("no image at " .. url:gsub("%p", "%%%0") .. " %(HTTP 404%)", r.stderr)
    assert.not_matches("sha256", r.stderr, 1, true)
    assert.is_false(fs.exists(tmp .. "/missing/ubuntu-2204-kube-v1.30.2.ova"))
  end)
end)
