-- spec/support/buildenv.lua — what the simulator builds need on this side:
-- an "ISO" (any file: the simulator's VMs never boot it) and the real
-- streamOptimized VMDK the simulator's export serves, made with qemu-img.
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")

local M = {}

--- Runs a tool that must succeed; returns its stdout.
---@param argv string[]
function M.run_tool(argv)
  local r = assert(proc.run({ argv = argv, timeout = 60 }))
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
  return r.stdout
end

--- dir/installer.iso and its sha256.
---@param dir string
---@return string path, string sha256
function M.iso(dir)
  local path = dir .. "/installer.iso"
  assert(fs.write(path, ("capil test installer\n"):rep(5000)))
  return path, assert(hash.file(path))
end

--- dir/export.vmdk: a 1 GiB streamOptimized disk whose first `mib` MiB are random.
---@param dir string
---@param mib integer
function M.export_vmdk(dir, mib)
  local raw = dir .. "/disk.raw"
  M.run_tool({ "qemu-img", "create", "-q", "-f", "raw", raw, "1G" })
  M.run_tool({ "dd", "if=/dev/urandom", "of=" .. raw, "bs=1M", "count=" .. mib, "conv=notrunc", "status=none" })
  local vmdk = dir .. "/export.vmdk"
  M.run_tool({ "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk })
  return vmdk
end

return M
