-- spec/support/disk.lua — disks for the specs of the VMDK writer and the
-- fused OVA: sparse files with data put at offsets (holes stay holes),
-- random bytes, and a checked command run (qemu-img, tar).
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")

local M = {}

local MiB = 1024 * 1024

--- Runs argv (within 120 s); its stdout, or an assertion naming the command.
---@param argv string[]
---@param opts? {cwd?: string}
---@return string
function M.run(argv, opts)
  local r = assert(proc.run({ argv = argv, timeout = 120, cwd = opts and opts.cwd }))
  assert(r.code == 0, table.concat(argv, " ") .. " failed: " .. r.stderr .. r.stdout)
  return r.stdout
end

--- Writes `data` at `offset` of `path` without touching the rest.
---@param path string
---@param offset integer
---@param data string
function M.put(path, offset, data)
  local f = assert(io.open(path, "r+b"))
  f:seek("set", offset)
  f:write(data)
  f:close()
end

--- `n` random bytes (hash.random gives at most 1 MiB at a time).
---@param n integer
---@return string
function M.random(n)
  local parts = {}
  while n > 0 do
    parts[#parts + 1] = hash.random(math.min(n, MiB))
    n = n - MiB
  end
  return table.concat(parts)
end

--- Makes `path` a file of `size` bytes, all holes (or cuts it to `size`).
---@param path string
---@param size integer
function M.sparse(path, size)
  assert(fs.truncate(path, size))
end

return M
