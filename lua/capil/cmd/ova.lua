--- capil ova — pack an OVA from a build directory, verify one, inspect one.
local cli = require("capil.cli")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local manifest = require("capil.format.manifest")
local ova = require("capil.format.ova")

local SUB = {
  pack = {
    usage = "ova pack BUILD_DIR [--convert] [--eula FILE] [--jobs N]",
    options = {
      { name = "convert", help = "convert a VMDK that is not streamOptimized (qemu-img) instead of refusing it" },
      { name = "eula", arg = "FILE", help = "put this text file in the OVF's EulaSection" },
      { name = "jobs", arg = "N", help = "compressing threads for a raw or qcow2 disk (default: one per core)" },
    },
  },
  verify = { usage = "ova verify FILE.ova", options = {} },
  inspect = {
    usage = "ova inspect FILE.ova [--json]",
    options = { { name = "json", help = "print the facts as JSON" } },
  },
}

local HELP = [[
Subcommands:
  pack BUILD_DIR   Packs <build>.ova from BUILD_DIR/packer-manifest.json (capil's
                   or Packer/image-builder's): the OVF is rebuilt from the build's
                   custom_data, the disks are the .vmdk files it lists (or, when
                   it lists none, its raw or qcow2 disk: .raw, .img, .qcow2). Writes
                   <build>.ovf, <build>.mf, <build>.ova and <build>.ova.sha256
                   (bare hex digest, no newline) beside them, with
                   <build> = <build_name>-kube-<kubernetes_semver>.
                   Each disk is read once when the manifest records its sha256
                   (capil's export step does); a disk without one (a directory
                   from another tool) is hashed first: one extra read, logged
                   with --verbose. A VMDK that is not streamOptimized is refused
                   unless --convert. A raw or qcow2 disk (its format sniffed) is
                   packed in one pass: capil's VMDK writer (--jobs threads)
                   writes the streamOptimized VMDK straight into the OVA, no VMDK
                   file between (a qcow2 is first read into a sparse raw temp by
                   qemu-img). The manifest's build of the LAST run is used
                   (image-builder used builds[0], the first run).
  verify FILE.ova  Checks the tar format (ustar), member order (.ovf, .mf, disks in
                   References order), every manifest digest, the OVF and its
                   References against the members, disk capacity against each
                   VMDK header, that each VMDK is streamOptimized, and
                   FILE.ova.sha256 when present. Lists every problem; exit 1.
  inspect FILE.ova The OVF's key facts: OS, hardware, disks, properties (text, or
                   JSON with --json). Reads only the descriptor.

Options of the subcommands:
  pack:    --convert, --eula FILE, --jobs N
  inspect: --json]]

local function gib(bytes)
  return bytes and ("%.1f GiB"):format(bytes / 1024 ^ 3) or "?"
end

local function human(bytes)
  if not bytes then return "?" end
  if bytes >= 1024 ^ 3 then return gib(bytes) end
  if bytes >= 1024 ^ 2 then return ("%.1f MiB"):format(bytes / 1024 ^ 2) end
  return ("%d bytes"):format(bytes)
end

local function pack(opts, args)
  if #args ~= 1 then cli.fail("ova pack: name one build directory", 2) end
  -- usage errors first: before the build directory is read
  local jobs
  if opts.jobs then
    local why
    jobs, why = require("capil.format.vmdk").jobs(opts.jobs)
    if not jobs then cli.fail("ova pack: " .. why, 2) end
  end
  local dir = args[1]
  local path = fs.join(dir, manifest.FILE)
  local m, err = manifest.read(path)
  if not m then cli.fail("ova pack: " .. err, 1) end
  local build, berr = manifest.latest(m)
  if not build then cli.fail(("ova pack: %s: %s"):format(path, berr), 1) end
  local po, perr = manifest.pack_options(build, dir)
  if not po then cli.fail(("ova pack: %s: %s"):format(path, perr:gsub("^manifest: ", "")), 1) end
  log.info("packing %s (build %s of %s)", po.ova, build.packer_run_uuid or "?", path)
  if opts.eula then
    local text, eerr = fs.read_file(opts.eula, { max = ova.MAX_EULA, what = "EULA" })
    if not text then cli.fail("ova pack: --eula: " .. eerr, 1) end
    po.eula = text
  end
  po.convert = opts.convert or false
  po.jobs = jobs
  local r, rerr = ova.pack(po)
  if not r then cli.fail(rerr, 1) end
  log.out(("%s  %s"):format(r.sha256, r.ova))
  return 0
end

local function verify(_, args)
  if #args ~= 1 then cli.fail("ova verify: name one OVA file", 2) end
  local report, err = ova.verify(args[1], { progress = true })
  if not report then cli.fail(err, 1) end
  if report.ok then
    log.out(("ok: %s (%d members%s)"):format(args[1], #report.members,
      report.sha256 and ", .ova.sha256 matches" or ""))
    return 0
  end
  for _, p in ipairs(report.problems) do io.stdout:write("  - ", log.redact(p), "\n") end
  cli.fail(("ova verify: %s: %d problem(s)"):format(args[1], #report.problems), 1)
end

local function inspect(opts, args)
  if #args ~= 1 then cli.fail("ova inspect: name one OVA file", 2) end
  local f, err = ova.inspect(args[1])
  if not f then cli.fail(err, 1) end
  if opts.json then
    local t = {}
    for k, v in pairs(f) do t[k] = v end
    t.properties = json.array(f.properties)
    t.members = json.array(f.members)
    t.disks = json.array(f.disks)
    t.networks = json.array(f.networks)
    io.stdout:write(json.encode(t, { indent = 2, sort_keys = true }), "\n")
    return 0
  end
  local hw, os = f.hardware, f.os or {}
  local lines = {
    ("%-11s %s (%d members)"):format("OVA", f.file, #f.members),
    ("%-11s %s"):format("Name", f.name or "?"),
    ("%-11s %s (OVF id %s%s, vSphere %s)"):format("OS", os.description or "?", tostring(os.id),
      (os.version or "") ~= "" and (" version " .. os.version) or "", tostring(os.os_type)),
    ("%-11s %s, %s CPU(s) (%s per socket), %s MiB, %s firmware, SCSI %s, NIC %s"):format("Hardware",
      tostring(hw.system_type), tostring(hw.cpus), tostring(hw.cores_per_socket), tostring(hw.memory_mb),
      tostring(hw.firmware), tostring(hw.scsi), tostring(hw.nic)),
  }
  for i, d in ipairs(f.disks) do
    lines[#lines + 1] = ("%-11s %s capacity, %s (%s in the OVA)%s"):format("Disk " .. i, human(d.capacity_bytes),
      tostring(d.file), human(d.file_size), d.stream_optimized and "" or ", NOT streamOptimized")
  end
  lines[#lines + 1] = ("%-11s %s"):format("Networks", table.concat(f.networks, ", "))
  if f.product then
    lines[#lines + 1] = ("%-11s %s (%s, %s)"):format("Product", tostring(f.product.name),
      tostring(f.product.vendor), tostring(f.product.version))
  end
  lines[#lines + 1] = ("%-11s %s"):format("EULA", f.eula and "yes" or "no")
  if #f.properties > 0 then
    lines[#lines + 1] = "Properties"
    for _, p in ipairs(f.properties) do lines[#lines + 1] = ("  %-24s %s"):format(p.key, tostring(p.value)) end
  end
  io.stdout:write(log.redact(table.concat(lines, "\n")), "\n")
  return 0
end

local RUN = { pack = pack, verify = verify, inspect = inspect }

return {
  subcommands = SUB,
  summary = "pack an OVA from a build directory, verify or inspect one",
  usage = "ova pack BUILD_DIR [--convert] [--eula FILE] [--jobs N] | ova verify FILE.ova | ova inspect FILE.ova [--json]",
  help = HELP,
  options = {},
  stop_at_positional = true,
  run = function(_, args)
    return cli.subcommand("ova", args, SUB, RUN, { "pack", "verify", "inspect" })
  end,
}
