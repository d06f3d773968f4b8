--- capil.publish.release — publishing built images to GCS and fetching them back,
--- as image-builder's hack/image-upload.py, `gsutil ls` and the documented
--- HTTP download did: the build directory's packer-manifest.json names the
--- OVA; it goes to `gs://<bucket>/{release,ci}/<version>/<name>.ova` with its
--- `.sha256` next to it, skipped when the remote checksum already matches.
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local http = require("capil.sys.http")
local manifest = require("capil.format.manifest")
local hash = require("capil.sys.hash")

local M = {}

-- loaded on first use: listing commands (capil --help) needs none of it
local gcs = setmetatable({}, { __index = function(_, k) return require("capil.publish.gcs")[k] end })

local function fail(msg, code) return nil, msg, code or "EUPLOAD" end

--- What a build directory holds: {dir, name, version, kind ("node" or
--- "haproxy"), ova, sha256_file, sha256, prefix, object}.
---@param dir string
---@return table|nil info, string? err, string? code
function M.build_info(dir)
  if not fs.exists(dir) then return fail(("%s: no such build directory"):format(dir), "ENOENT") end
  local mpath = dir .. "/packer-manifest.json"
  if not fs.exists(mpath) then
    return fail(("%s: no packer-manifest.json: is this a build directory (output/<name>-kube-<version>)?"):format(dir),
      "ENOENT")
  end
  local m, err, code = manifest.read(mpath)
  if not m then return nil, err, code end
  local b
  b, err = manifest.latest(m)
  if not b then return fail(("%s: %s"):format(mpath, err), "EMANIFEST") end
  local okb, berr = manifest.check_build(b)
  if not okb then return fail(("%s: %s"):format(mpath, berr:gsub("^manifest: ", "")), "EMANIFEST") end
  local cd = b.custom_data or {}
  local info = { dir = dir, kind = cd.build_type == "node" and "node" or (cd.build_type or "node") }
  local base
  if info.kind == "node" then
    info.version = cd.kubernetes_semver
    base = "%s-kube-%s"
  else
    info.version = cd.dataplaneapi_version
    base = "%s-haproxy-%s"
  end
  if not cd.build_name or not info.version then
    return fail(("%s: custom_data lacks build_name or the version (kubernetes_semver)"):format(mpath), "EMANIFEST")
  end
  info.name = base:format(cd.build_name, info.version)
  info.ova = ("%s/%s.ova"):format(dir, info.name)
  info.sha256_file = info.ova .. ".sha256"
  if not fs.exists(info.ova) then return fail(("%s: the OVA %s is missing"):format(dir, info.ova), "ENOENT") end
  if not fs.exists(info.sha256_file) then
    return fail(("%s: %s is missing (run `capil ova pack %s` to write it)"):format(dir, info.sha256_file, dir), "ENOENT")
  end
  local text, terr, tcode = fs.read_file(info.sha256_file, { max = 4096, what = ".sha256 file" })
  if not text then return fail(terr, tcode) end
  info.sha256 = text:match("^%s*(%x+)")
  if not info.sha256 or #info.sha256 ~= 64 then
    return fail(("%s: does not start with a SHA-256 digest"):format(info.sha256_file), "EDIGEST")
  end
  info.sha256 = info.sha256:lower()
  info.prefix = (info.kind == "node" and "" or "extra/haproxy/") .. gcs.path_for(info.version)
  info.object = info.prefix .. info.name .. ".ova"
  return info
end

-- The remote checksum: the JSON API with a client that has credentials
-- (or an emulator), else the public URL, as image-upload.py read it.
local function remote_sum(client, bucket, object, endpoint)
  local text
  if client then
    text = client:read(bucket, object .. ".sha256")
  else
    local r = http.request({ url = gcs.public_url(bucket, object .. ".sha256", endpoint), retries = 1,
      ok_status = { 200, 403, 404 } })
    text = r and r.status == 200 and r.body or nil
  end
  return text and text:match("^%s*(%x+)") and text:match("^%s*(%x+)"):lower()
end

--- Uploads a build directory. opts: bucket, key_file, endpoint, dry_run,
--- chunk_size, progress. Returns {url, skipped = bool, object} or nil, err.
function M.upload(dir, opts)
  opts = opts or {}
  local info, err, code = M.build_info(dir)
  if not info then return nil, err, code end
  local bucket = opts.bucket or gcs.DEFAULT_BUCKET
  local url = gcs.public_url(bucket, info.object, opts.endpoint)
  -- a dry run uses no credentials (no token is fetched): it reads the
  -- public checksum only
  local client
  if not opts.dry_run then
    client, err, code = gcs.client({ endpoint = opts.endpoint, key_file = opts.key_file })
    if not client then return nil, err, code end
  end
  local remote = remote_sum(client, bucket, info.object, opts.endpoint)
  if remote == info.sha256 then
    log.info("upload: gs://%s/%s has the same sha256 (%s); skipping the upload", bucket, info.object, info.sha256)
    return { url = url, skipped = true, object = info.object, bucket = bucket }
  end
  if opts.dry_run then
    log.info("upload (dry run): would upload %s to gs://%s/%s and its .sha256 (remote checksum: %s)", info.ova,
      bucket, info.object, remote or "none")
    return { url = url, skipped = true, dry_run = true, object = info.object, bucket = bucket }
  end
  log.info("upload: %s -> gs://%s/%s", info.ova, bucket, info.object)
  local obj
  obj, err, code = client:upload(bucket, info.object, info.ova, { metadata = { sha256 = info.sha256 },
    content_type = "application/ova", chunk_size = opts.chunk_size, progress = opts.progress or true })
  if not obj then return nil, err, code end
  -- the checksum object last: a half upload never looks complete
  obj, err, code = client:put_small(bucket, info.object .. ".sha256", info.sha256 .. "\n",
    { content_type = "text/plain" })
  if not obj then return nil, err, code end
  log.info("upload: done")
  return { url = url, skipped = false, object = info.object, bucket = bucket }
end

--- Uploaded images under `kind` ("ci", "release" or nil for both), with
--- size, date and checksum. opts: bucket, endpoint, key_file, version.
function M.list(kind, opts)
  opts = opts or {}
  local bucket = opts.bucket or gcs.DEFAULT_BUCKET
  local client, err, code = gcs.client({ endpoint = opts.endpoint, key_file = opts.key_file })
  if not client then return nil, err, code end
  local kinds = kind and { kind } or { "release", "ci" }
  local out = {}
  for _, k in ipairs(kinds) do
    local prefix = k .. "/" .. (opts.version and (opts.version .. "/") or "")
    local objs
    objs, err, code = client:list(bucket, prefix)
    if not objs then return nil, err, code end
    local sums = {}
    for _, o in ipairs(objs) do
      if o.name:match("%.ova%.sha256$") then sums[o.name:sub(1, -8)] = o end
    end
    for _, o in ipairs(objs) do
      if o.name:match("%.ova$") then
        local sum = o.metadata and o.metadata.sha256
        if not sum and sums[o.name] then
          local text = client:read(bucket, o.name .. ".sha256")
          sum = text and text:match("^%s*(%x+)")
        end
        out[#out + 1] = { kind = k, version = o.name:match("^[^/]+/([^/]+)/"), name = o.name:match("([^/]+)$"),
          object = o.name, size = tonumber(o.size), updated = o.updated, sha256 = sum,
          url = gcs.public_url(bucket, o.name, opts.endpoint) }
      end
    end
  end
  table.sort(out, function(a, b) return a.object < b.object end)
  return out
end

-- A digest from a checksum file's text for the file `name`: a bare digest,
-- sha256sum's "<hex>  name" lines (or "<hex> *name"), or BSD's
-- "SHA256 (name) = <hex>".
local function digest_in(body, name)
  local lone = body:match("^%s*(%x+)%s*$")
  if lone then return lone end
  local first
  for line in body:gmatch("[^\r\n]+") do
    local hex, file = line:match("^%s*(%x+)%s+%*?(.-)%s*$")
    if not hex then file, hex = line:match("^SHA256%s*%((.-)%)%s*=%s*(%x+)%s*$") end
    if hex then
      first = first or hex
      if file == name or (file and file:match("([^/]+)$") == name) then return hex end
    end
  end
  -- a one-file list under another name (`sha256sum image > image.sha256`
  -- in another directory): its digest; several files and none named: none
  local n = select(2, body:gsub("%x%x%x%x%x%x%x%x+", ""))
  return n == 1 and first or nil
end

--- The expected SHA-256 (lowercase hex) of the file at `url`: from
--- `checksum` ("<hex>", "sha256:<hex>", or the URL of a checksum file, as
--- sha256sum or BSD write them), else from `url`.sha256. A `checksum` that
--- is none of these: "EBADSUM".
---@param url string
---@param checksum? string
---@return string|nil sum, string? err, string? code
function M.expected_sum(url, checksum)
  local name = url:match("([^/?#]+)$")
  if checksum then
    local hex = checksum:match("^[Ss][Hh][Aa]256:(%x+)$") or checksum:match("^(%x+)$")
    if hex then
      if #hex ~= 64 then
        return fail(("download: --checksum %s is not a SHA-256 digest (64 hex digits)"):format(checksum), "EBADSUM")
      end
      return hex:lower()
    end
    if not checksum:match("^https?://") then
      return fail(("download: --checksum must be a SHA-256 digest (hex or sha256:hex) or a checksum file's "
        .. "http(s) URL, not '%s'"):format(checksum), "EBADSUM")
    end
  end
  local sum_url = checksum or (url .. ".sha256")
  local shown = http.redact_url(sum_url)
  local sr, serr, scode = http.request({ url = sum_url })
  if not sr then
    return fail(("download: checksum %s: %s (refusing an image that cannot be verified; "
      .. "give one with --checksum)"):format(shown, serr), scode)
  end
  local sum = digest_in(sr.body, name)
  if not sum or #sum ~= 64 then
    return fail(("download: %s holds no SHA-256 digest%s"):format(shown,
      checksum and (" for " .. name) or ""), "EDIGEST")
  end
  return sum:lower()
end

--- Downloads an image by URL, or by version (and name when the version has
--- several), verified against the `.sha256` next to it or `opts.checksum`
--- (see expected_sum); resumes a `.part` left by an interrupted download
--- ("resuming at N MiB"); a complete file that verifies is not fetched
--- again. A missing image is reported as missing ("ENOENT"), naming the
--- URL. Returns the local path.
function M.download(what, opts)
  opts = opts or {}
  local url = what
  if not what:match("^https?://") then
    -- a version names a folder of the bucket: no path, no blank
    if not what:match("^v?%d[%w%.%-+_]*$") then
      return nil, ("download: expected a Kubernetes version (v1.30.2, a CI version) or an http(s) URL, got '%s'")
        :format(what), "EUSAGE"
    end
    local images, err, code = M.list(gcs.path_for(what):match("^(%a+)/"), {
      bucket = opts.bucket, endpoint = opts.endpoint, key_file = opts.key_file, version = what })
    if not images then return nil, err, code end
    local pick = {}
    for _, i in ipairs(images) do
      if not opts.name or i.name == opts.name or i.name:match("^" .. opts.name:gsub("%p", "%%%0") .. "%-") then
        pick[#pick + 1] = i
      end
    end
    if #pick == 0 then return fail(("download: no image for version %s%s"):format(what,
      opts.name and (" and name " .. opts.name) or ""), "ENOENT") end
    if #pick > 1 then
      local names = {}
      for _, i in ipairs(pick) do names[#names + 1] = i.name end
      return fail(("download: version %s has %d images (%s): choose one with --name"):format(what, #pick,
        table.concat(names, ", ")), "EAMBIGUOUS")
    end
    url = pick[1].url
  end
  local dir = opts.dir or "."
  local mok, merr, mcode = fs.mkdir(dir)
  if not mok then return nil, "download: " .. merr, mcode end
  local name = url:match("([^/?#]+)$")
  local shown = http.redact_url(url)
  local sum, serr, scode = M.expected_sum(url, opts.checksum)
  if not sum then
    -- no checksum: say so only when the image itself is there
    if scode ~= "EBADSUM" and scode ~= "EDIGEST" then
      local head = http.request({ url = url, method = "HEAD", retries = 0, ok_status = true })
      if head and (head.status == 404 or head.status == 410) then
        return fail(("download: no image at %s (HTTP %d)"):format(shown, head.status), "ENOENT")
      end
    end
    return nil, serr, scode
  end
  local out = dir .. "/" .. name
  if fs.exists(out) then
    -- a complete, verified file is not fetched again
    local have = hash.file(out)
    if have and have:lower() == sum then
      log.info("download: %s is already complete (sha256 %s verified): nothing to download", out, sum)
      return out
    end
    log.warn("download: %s exists but does not match sha256 %s: downloading it again", out, sum)
  end
  local part = fs.stat(out .. ".part")
  if part and part.size > 0 then
    log.info("download: resuming %s at %.1f MiB", name, part.size / (1024 * 1024))
  end
  local progress <close> = log.progress({ label = "download " .. name })
  local r, err, code = http.request({ url = url, out_file = out, resume = true, sha256 = sum,
    progress = progress })
  progress:close() -- its closing line before the result's
  if not r then
    if code == "HTTP_404" or code == "HTTP_410" then
      return fail(("download: no image at %s (%s)"):format(shown, code:gsub("_", " ")), "ENOENT")
    end
    return nil, "download: " .. err, code
  end
  local wok, werr, wcode = fs.write(out .. ".sha256", sum .. "\n")
  if not wok then return nil, "download: " .. werr, wcode end
  log.info("download: %s (%d bytes, sha256 %s verified)", out, fs.stat(out).size, sum)
  return out
end

return M
