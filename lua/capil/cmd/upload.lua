--- capil upload — publishes a build's OVA to GCS (image-builder's
--- hack/image-upload.py, natively).
local release = require("capil.publish.release")
local cli = require("capil.cli")
local log = require("capil.sys.log")

return {
  summary = "upload a build's OVA and its .sha256 to GCS, skipped when unchanged",
  usage = "upload [BUILD_DIR] [--bucket B] [--key-file F] [--dry-run] [--gcs-endpoint URL]",
  help = [[
Reads BUILD_DIR/packer-manifest.json (default: the current directory) for the
build name and Kubernetes version, and uploads <name>-kube-<version>.ova to
gs://<bucket>/release/<version>/ when the version is a release
(v1.2.3 or v1.2.3-4) or gs://<bucket>/ci/<version>/ otherwise, then its
.sha256 (written last, after the OVA's MD5 and CRC32C match what was
sent). When the remote .sha256 equals the local one nothing is sent.
Uploads are resumable, in chunks, and continue after dropped connections.
Credentials: --key-file, KEY_FILE or GOOGLE_APPLICATION_CREDENTIALS (a
service-account key or an authorized-user file), else the GCE metadata
server. --gcs-endpoint (or STORAGE_EMULATOR_HOST) points at an emulator or a
private deployment. Prints the public download URL.]],
  options = {
    { name = "bucket", arg = "B", help = "bucket (default capv-images)" },
    { name = "key-file", arg = "F", help = "service-account key file (JSON)" },
    { name = "dry-run", help = "say what would be uploaded, send nothing" },
    { name = "gcs-endpoint", arg = "URL", help = "GCS endpoint (emulators, private deployments)" },
    { name = "chunk-size", arg = "MIB", help = "resumable upload chunk size in MiB, a multiple of 0.25 (default 8)" },
  },
  run = function(opts, args)
    if #args > 1 then cli.fail("upload: name one build directory", 2) end
    local chunk = opts["chunk-size"] and tonumber(opts["chunk-size"])
    if opts["chunk-size"] and (not chunk or chunk <= 0 or (chunk * 4) % 1 ~= 0) then
      cli.fail("upload: --chunk-size must be a positive multiple of 0.25 MiB (GCS takes chunks of 256 KiB units)", 2)
    end
    local r, err = release.upload(args[1] or ".", {
      bucket = opts.bucket, key_file = opts["key-file"], dry_run = opts["dry-run"],
      endpoint = opts["gcs-endpoint"], chunk_size = chunk and math.floor(chunk * 1024 * 1024),
    })
    if not r then cli.fail(err, 1) end
    log.out(r.url)
    return 0
  end,
}
