--- spec/support/vmdk_stream.lua — reads a streamOptimized VMDK's structure
--- back, for the checks of capil's writer (capil.core.vmdkw): the writer's
--- spec (spec/vmdk_writer_spec.lua) and its fuzz harness (fuzz/targets.lua's
--- vmdkw, which loads this file by path). Test code, not the library: capil
--- itself never needs to walk a VMDK's grains.
---
--- `read(data, opts)` takes the whole file's bytes and checks, returning
--- nil and the first problem instead of raising: the size is whole sectors;
--- the header (capil.format.vmdk.parse_header) says GD_AT_END; the file
--- ends with a footer marker, the footer (the header with the real GD
--- offset, the same capacity) and an end-of-stream marker; the GD marker
--- and the GD the footer points to, every GT's marker and every grain's
--- marker (the LBA its GT entry says, a size within the file), grains in
--- LBA order past the overhead. With `opts.inflate` (a function(zdata,
--- max) -> bytes | nil, err) each grain is decompressed too.
local vmdk = require("capil.format.vmdk")

local M = {}

local SECTOR = 512
local GRAIN_SECTORS = 128
local GTES = 512

---@param data string the VMDK file's bytes
---@param opts? {inflate?: fun(z: string, max: integer): string|nil, string?}
---@return {head: table, footer: table, grains: table<integer, {sector: integer, size: integer, data?: string}>, count: integer, ngrains: integer, ngts: integer}|nil
---@return string? err
function M.read(data, opts)
  opts = opts or {}
  local n = #data
  if n % SECTOR ~= 0 then return nil, ("file size %d is not whole sectors"):format(n) end
  if n < 128 * SECTOR + 3 * SECTOR then return nil, ("file too short (%d bytes)"):format(n) end
  local head, herr = vmdk.parse_header(data:sub(1, 65536))
  if not head then return nil, "header: " .. herr end
  if not head.stream_optimized then return nil, "header: " .. vmdk.not_stream_optimized(head) end
  if head.gd_offset ~= -1 then return nil, ("header gdOffset %d, not GD_AT_END"):format(head.gd_offset) end
  if head.grain_size ~= GRAIN_SECTORS then return nil, ("grain size %d sectors"):format(head.grain_size) end
  local fm_sectors, fm_size, fm_type = string.unpack("<I8I4I4", data, n - 3 * SECTOR + 1)
  if fm_sectors ~= 1 or fm_size ~= 0 or fm_type ~= 3 then
    return nil, ("footer marker {%d, %d, %d}"):format(fm_sectors, fm_size, fm_type)
  end
  local footer, ferr = vmdk.parse_header(data:sub(n - 2 * SECTOR + 1, n - SECTOR) .. data:sub(SECTOR + 1, 65536))
  if not footer then return nil, "footer: " .. ferr end
  if data:sub(n - SECTOR + 1) ~= ("\0"):rep(SECTOR) then return nil, "no end-of-stream marker" end
  if footer.capacity_sectors ~= head.capacity_sectors then
    return nil, ("footer capacity %d, header %d"):format(footer.capacity_sectors, head.capacity_sectors)
  end
  local ngrains = (head.capacity_sectors + GRAIN_SECTORS - 1) // GRAIN_SECTORS
  local ngts = (ngrains + GTES - 1) // GTES
  local gd_off = footer.gd_offset
  local gd_sectors = (ngts * 4 + SECTOR - 1) // SECTOR
  if gd_off < 129 or (gd_off + gd_sectors) * SECTOR > n - 3 * SECTOR then
    return nil, ("GD at sector %d (%d sectors) outside the file"):format(gd_off, gd_sectors)
  end
  local gds, gsize, gtype = string.unpack("<I8I4I4", data, (gd_off - 1) * SECTOR + 1)
  if gds ~= gd_sectors or gsize ~= 0 or gtype ~= 2 then
    return nil, ("GD marker {%d, %d, %d}, expected {%d, 0, 2}"):format(gds, gsize, gtype, gd_sectors)
  end
  local grains, count, last_end = {}, 0, 128 * SECTOR
  for t = 0, ngts - 1 do
    local gt = string.unpack("<I4", data, gd_off * SECTOR + 4 * t + 1)
    if gt ~= 0 then
      if gt < 129 or (gt + 4) * SECTOR > gd_off * SECTOR then
        return nil, ("GT %d at sector %d outside the grains' area"):format(t, gt)
      end
      local ms, msize, mtype = string.unpack("<I8I4I4", data, (gt - 1) * SECTOR + 1)
      if ms ~= 4 or msize ~= 0 or mtype ~= 1 then
        return nil, ("GT %d marker {%d, %d, %d}"):format(t, ms, msize, mtype)
      end
      local any = false
      for e = 0, GTES - 1 do
        local sec = string.unpack("<I4", data, gt * SECTOR + 4 * e + 1)
        if sec ~= 0 then
          local g = t * GTES + e
          if g >= ngrains then return nil, ("GT %d entry %d: grain %d past the capacity"):format(t, e, g) end
          if sec * SECTOR < last_end or (sec + 1) * SECTOR > (gt - 1) * SECTOR then
            return nil, ("grain %d at sector %d: out of order or overlapping"):format(g, sec)
          end
          local lba, size = string.unpack("<I8I4", data, sec * SECTOR + 1)
          if lba ~= g * GRAIN_SECTORS then
            return nil, ("grain %d: marker LBA %d, expected %d"):format(g, lba, g * GRAIN_SECTORS)
          end
          local stop = sec * SECTOR + 12 + size
          if size == 0 or stop > (gt - 1) * SECTOR then
            return nil, ("grain %d: size %d runs past its GT"):format(g, size)
          end
          local grain = { sector = sec, size = size }
          if opts.inflate then
            local raw, ierr = opts.inflate(data:sub(sec * SECTOR + 13, stop), GRAIN_SECTORS * SECTOR)
            if not raw then return nil, ("grain %d: %s"):format(g, tostring(ierr)) end
            grain.data = raw
          end
          grains[g] = grain
          count = count + 1
          last_end = (stop + SECTOR - 1) // SECTOR * SECTOR
          any = true
        end
      end
      if not any then return nil, ("GT %d holds no grain"):format(t) end
      last_end = (gt + 4) * SECTOR
    end
  end
  return { head = head, footer = footer, grains = grains, count = count, ngrains = ngrains, ngts = ngts }
end

return M
