--- capil vmdk — make a streamOptimized VMDK (the disk an OVA carries).
local cli = require("capil.cli")
local runtime = require("capil.core.runtime")
local log = require("capil.sys.log")
local vmdk = require("capil.format.vmdk")

local SUB = {
  convert = {
    usage = "vmdk convert SRC OUT.vmdk [--jobs N] [--adapter-type T] [--hwversion N]",
    options = {
      { name = "jobs", arg = "N", help = "compressing threads (default: one per core)" },
      { name = "adapter-type", arg = "T", help = "lsilogic (default), ide, buslogic or legacyESX" },
      { name = "hwversion", arg = "N", help = "the VM's virtual hardware version (default 15)" },
    },
  },
}

local HELP = [[
Subcommands:
  convert SRC OUT.vmdk  Writes a streamOptimized VMDK from a raw disk image (or a
                        qcow2, read through qemu-img into a sparse raw temp first).
                        Grains are compressed with zlib on every core and written
                        in order; holes and all-zero grains are skipped. OUT.vmdk
                        appears only when complete (a temp name until then).

Options:
  --jobs N           compressing threads (default: one per core)
  --adapter-type T   ddb.adapterType: lsilogic (default), ide, buslogic, legacyESX
  --hwversion N      ddb.virtualHWVersion (default 15)]]

local function convert(opts, args)
  if #args ~= 2 then cli.fail("vmdk convert: name a source disk and the output .vmdk", 2) end
  local jobs
  if opts.jobs then
    local why
    jobs, why = vmdk.jobs(opts.jobs)
    if not jobs then cli.fail("vmdk convert: " .. why, 2) end
  end
  local hw
  if opts.hwversion then
    hw = math.tointeger(tonumber(opts.hwversion))
    if not hw or hw < 1 then cli.fail("vmdk convert: --hwversion must be a positive integer", 2) end
  end
  local at = opts["adapter-type"]
  if at and at ~= "lsilogic" and at ~= "ide" and at ~= "buslogic" and at ~= "legacyESX" then
    cli.fail(("vmdk convert: unknown --adapter-type '%s' (lsilogic, ide, buslogic, legacyESX)"):format(at), 2)
  end
  local started = runtime.now()
  local r, err = vmdk.write(args[1], args[2], { jobs = jobs, adapter_type = at, hwversion = hw, progress = true })
  if not r then cli.fail(err, 1) end
  local now = runtime.now()
  log.out(("%s: %d bytes, %d grains written, %d all-zero grains skipped, %.1f s"):format(
    args[2], r.bytes, r.grains, r.zero_grains, now - started))
  return 0
end

local RUN = { convert = convert }

return {
  subcommands = SUB,
  summary = "write a streamOptimized VMDK from a raw or qcow2 disk",
  usage = "vmdk convert SRC OUT.vmdk [--jobs N] [--adapter-type T] [--hwversion N]",
  help = HELP,
  options = {},
  stop_at_positional = true,
  run = function(_, args)
    return cli.subcommand("vmdk", args, SUB, RUN, { "convert" })
  end,
}
