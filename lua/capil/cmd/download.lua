--- capil download — fetches an uploaded image, verified against its .sha256.
local release = require("capil.publish.release")
local cli = require("capil.cli")
local log = require("capil.sys.log")

return {
  summary = "download an image by version or URL, resumable, verified against its .sha256",
  usage = "download VERSION|URL [-o DIR] [--name NAME] [--bucket B] [--gcs-endpoint URL]",
  help = [[
With a URL, downloads it and checks it against URL.sha256. With a Kubernetes
version, finds the image under gs://<bucket>/{release,ci}/<version>/ (--name
picks one when there are several, e.g. ubuntu-2004). An interrupted download
resumes where it stopped; a file whose SHA-256 does not match is removed,
never left under the final name.]],
  options = {
    { name = "output", short = "o", arg = "DIR", help = "where to put the image (default: .)" },
    { name = "name", arg = "NAME", help = "build name when a version has several images" },
    { name = "bucket", arg = "B", help = "bucket (default capv-images)" },
    { name = "key-file", arg = "F", help = "service-account key file (JSON), for listing" },
    { name = "gcs-endpoint", arg = "URL", help = "GCS endpoint (emulators, private deployments)" },
  },
  run = function(opts, args)
    if #args ~= 1 then cli.fail("download: name one version or URL", 2) end
    local path, err = release.download(args[1], { dir = opts.output, name = opts.name, bucket = opts.bucket,
      endpoint = opts["gcs-endpoint"], key_file = opts["key-file"] })
    if not path then cli.fail(err, 1) end
    log.out(path)
    return 0
  end,
}
