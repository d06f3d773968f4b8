--- capil download — fetches an uploaded image, verified against its .sha256.
local release = require("capil.publish.release")
local cli = require("capil.cli")
local log = require("capil.sys.log")

return {
  summary = "download an image by version or URL, resumable, verified against its .sha256",
  usage = "download VERSION|URL [-o DIR] [--checksum SUM|URL] [--name NAME] [--bucket B] [--gcs-endpoint URL]",
  help = [[
With a URL, downloads it and checks it against URL.sha256. With a Kubernetes
version, finds the image under gs://<bucket>/{release,ci}/<version>/ (--name
picks one when there are several, e.g. ubuntu-2004). An interrupted download
resumes where it stopped ("resuming at N MiB"; the rate counts only the new
bytes); a file whose SHA-256 does not match is removed, never left under the
final name. A file already in DIR that verifies is not downloaded again.
For a file without a .sha256 beside it, --checksum gives the digest: hex,
sha256:hex, or the URL of a checksum file (sha256sum's or BSD's format,
e.g. SHA256SUMS; the line for the file's name is used).

Examples:
  capil download https://example.com/images/ubuntu-2204-kube-v1.30.2.ova -o images
  capil download https://example.com/node.ova --checksum sha256:9f86d08...
  capil download https://example.com/node.ova --checksum https://example.com/SHA256SUMS
  capil download v1.30.2 --name ubuntu-2204]],
  options = {
    { name = "output", short = "o", arg = "DIR", help = "where to put the image (default: .)" },
    { name = "checksum", arg = "SUM|URL", help = "expected SHA-256 (hex, sha256:hex) or a checksum file's URL" },
    { name = "name", arg = "NAME", help = "build name when a version has several images" },
    { name = "bucket", arg = "B", help = "bucket (default capv-images)" },
    { name = "key-file", arg = "F", help = "service-account key file (JSON), for listing" },
    { name = "gcs-endpoint", arg = "URL", help = "GCS endpoint (emulators, private deployments)" },
  },
  run = function(opts, args)
    if #args ~= 1 then cli.fail("download: name one version or URL", 2) end
    local path, err, code = release.download(args[1], { dir = opts.output, name = opts.name, bucket = opts.bucket,
      endpoint = opts["gcs-endpoint"], key_file = opts["key-file"], checksum = opts.checksum })
    if not path then cli.fail(err, code == "EBADSUM" and 2 or 1) end
    log.out(path)
    return 0
  end,
}
