--- capil.publish.release — publishing built images to GCS and fetching them back,
--- as image-builder's hack/image-upload.py, `gsutil ls` and the documented
--- HTTP download did: the build directory's packer-manifest.json names the
--- OVA; it goes to `gs://<bucket>/{release,ci}/<version>/<name>.ova` with its
--- `.sha256` next to it, skipped when the remote checksum already matches.
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local http = require("capil.sys.http")
local manifest = require("capil.format.manifest")

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

--- Downloads an image by URL, or by version (and name when the version has
--- several), verified against the `.sha256` next to it; resumes a `.part`
--- left by an interrupted download. Returns the local path.
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
  assert(fs.mkdir(dir))
  local name = url:match("([^/?#]+)$")
  local sr, serr, scode = http.request({ url = url .. ".sha256" })
  if not sr then
    return fail(("download: %s: %s (refusing an image that cannot be verified)"):format(http.redact_url(url) .. ".sha256",
      serr), scode)
  end
  local sum = sr.body:match("^%s*(%x+)")
  if not sum or #sum ~= 64 then
    return fail(("download: %s.sha256 holds no SHA-256 digest"):format(http.redact_url(url)), "EDIGEST")
  end
  local out = dir .. "/" .. name
  local progress <close> = log.progress({ label = "download " .. name })
  local r, err, code = http.request({ url = url, out_file = out, resume = true, sha256 = sum:lower(),
    progress = progress })
  if not r then return nil, "download: " .. err, code end
  assert(fs.write(out .. ".sha256", sum:lower() .. "\n"))
  log.info("download: %s (%d bytes, sha256 %s verified)", out, fs.stat(out).size, sum:lower())
  return out
end

return M
