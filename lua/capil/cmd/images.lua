--- capil images — lists uploaded images (the `gsutil ls` of image-builder's docs).
local release = require("capil.publish.release")
local cli = require("capil.cli")
local log = require("capil.sys.log")
local json = require("capil.sys.json")

local function human(n)
  if not n then return "?" end
  local units = { "B", "KiB", "MiB", "GiB", "TiB" }
  local i = 1
  while n >= 1024 and i < #units do n, i = n / 1024, i + 1 end
  return i == 1 and ("%d B"):format(n) or ("%.1f %s"):format(n, units[i])
end

return {
  summary = "list the images uploaded to GCS (release and ci), with size, date and checksum",
  usage = "images [ci|release] [--version V] [--bucket B] [--json] [--gcs-endpoint URL]",
  help = [[
Lists gs://<bucket>/{release,ci}/<version>/*.ova with size, upload date,
SHA-256 (from the object's metadata or its .sha256) and download URL.]],
  options = {
    { name = "version", arg = "V", help = "only this Kubernetes version" },
    { name = "bucket", arg = "B", help = "bucket (default capv-images)" },
    { name = "key-file", arg = "F", help = "service-account key file (JSON)" },
    { name = "json", help = "print JSON" },
    { name = "gcs-endpoint", arg = "URL", help = "GCS endpoint (emulators, private deployments)" },
  },
  run = function(opts, args)
    local kind = args[1]
    if #args > 1 or (kind and kind ~= "ci" and kind ~= "release") then
      cli.fail("images: the only argument is ci or release", 2)
    end
    local list, err = release.list(kind, { bucket = opts.bucket, endpoint = opts["gcs-endpoint"],
      key_file = opts["key-file"], version = opts.version })
    if not list then cli.fail(err, 1) end
    if opts.json then
      log.out(json.encode(json.array(list), { indent = 2, sort_keys = true }))
      return 0
    end
    if #list == 0 then log.info("no images") return 0 end
    for _, i in ipairs(list) do
      log.out(("%-8s %-10s %-48s %10s  %s  %s"):format(i.kind, i.version or "?", i.name, human(i.size),
        (i.updated or "?"):sub(1, 19), i.sha256 or "(no checksum)"))
    end
    return 0
  end,
}
