--- capil.format.vmdk — what capil needs to know of a VMDK: its sparse extent
--- header (magic "KDMV", version, flags, capacity, compression) and the
--- embedded descriptor's `createType`, so that `ova pack` can refuse a disk
--- that is not streamOptimized (the only kind an OVA may carry) and
--- `ova verify` can compare the OVF capacity with the disk's virtual size.
--- `vmdk.convert` makes a streamOptimized copy with qemu-img; `vmdk.write`
--- makes one with capil's own writer (capil.core.vmdkw, C on zlib: grains
--- compressed on all cores, holes never read, memory bounded).
---
--- Sources other than raw (qcow2, a Workstation VMDK, any format qemu-img
--- reads): `vmdk.write` parses none of them itself. It first runs
--- `qemu-img convert -f <format> -O raw -S 64k` into a sparse temp file
--- beside the output (holes stay holes, so this costs the data's size on
--- disk and one sequential pass) and writes from that: a well-kept tool
--- reads those formats (compression, backing files, snapshots, extents)
--- rather than a second parser of our own. A raw source is read directly,
--- its extents walked with SEEK_DATA/SEEK_HOLE.
---
--- Layout (VMware "Virtual Disk Format 5.0", SparseExtentHeader, little
--- endian): magic u32 @0, version u32 @4, flags u32 @8, capacity u64 @12
--- (sectors), grainSize u64 @20, descriptorOffset u64 @28, descriptorSize
--- u64 @36, numGTEsPerGT u32 @44, rgdOffset u64 @48, gdOffset u64 @56,
--- overHead u64 @64, uncleanShutdown u8 @72, four newline-check bytes @73,
--- compressAlgorithm u16 @77. A streamOptimized extent has flags bits 16
--- (compressed grains) and 17 (markers) set and compressAlgorithm 1 (deflate).
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local proc = require("capil.sys.proc")
local cleanup = require("capil.sys.cleanup")
local vmdkw = require("capil.core.vmdkw")
local optcheck = require("capil.util.opts").check

local M = {}

local CONVERT_OPTS = { adapter_type = true, hwversion = true, src_format = true, timeout = true, progress = true }

M.SECTOR = 512
M.FLAG_COMPRESSED = 1 << 16
M.FLAG_MARKERS = 1 << 17
M.COMPRESS_DEFLATE = 1
--- Bytes of a disk's start that hold the header and (normally) the descriptor.
M.HEAD_BYTES = 65536

local function descriptor_fields(text)
  local f = {}
  for line in text:gmatch("[^\r\n]+") do
    local k, v = line:match('^%s*([%w%.]+)%s*=%s*"?(.-)"?%s*$')
    if k and not line:match("^%s*#") then f[k] = v end
  end
  return f
end

--- Parses the start of a VMDK (at least 512 bytes; the descriptor is read
--- from the same bytes when it lies within them). Returns the facts, or nil
--- and why this is not a VMDK. A text descriptor file (monolithicFlat and
--- friends, no binary header) parses too, with `descriptor_only = true`.
---@param head string
---@return {version: integer, flags: integer, capacity_sectors: integer, capacity: integer, grain_size: integer, compress_algorithm: integer, create_type?: string, descriptor?: string, descriptor_only?: boolean, stream_optimized: boolean}|nil
---@return string? err
function M.parse_header(head)
  if type(head) ~= "string" then error("vmdk.parse_header: head must be a string", 2) end
  if head:sub(1, 21) == "# Disk DescriptorFile" then
    local text = head:match("^[^%z]*")
    local fields = descriptor_fields(text)
    return { descriptor_only = true, create_type = fields.createType, descriptor = text,
      stream_optimized = false, flags = 0, version = 0, capacity_sectors = nil }
  end
  if #head < 512 then return nil, ("too short for a VMDK header (%d bytes)"):format(#head) end
  if head:sub(1, 4) ~= "KDMV" then
    if head:sub(1, 4) == "COWD" then return nil, "a VMware ESX 'COWD' sparse disk, not a hosted VMDK" end
    return nil, ("no VMDK magic (expected \"KDMV\", found %q)"):format(head:sub(1, 4))
  end
  local version, flags, capacity, grain, doff, dsize = string.unpack("<I4I4I8I8I8I8", head, 5)
  local gd_offset = string.unpack("<I8", head, 57)
  local compress = string.unpack("<I2", head, 78)
  local info = {
    version = version, flags = flags, capacity_sectors = capacity, capacity = capacity * M.SECTOR,
    grain_size = grain, descriptor_offset = doff, descriptor_size = dsize, gd_offset = gd_offset,
    compress_algorithm = compress,
  }
  if doff > 0 and dsize > 0 and #head >= doff * M.SECTOR + 1 then
    M.set_descriptor(info, head:sub(doff * M.SECTOR + 1, math.min((doff + dsize) * M.SECTOR, #head)))
  end
  info.stream_optimized = M.not_stream_optimized(info) == nil
  return info
end

--- Records the descriptor text of a parsed header (read separately when it
--- lies beyond the bytes given to parse_header).
---@param info table
---@param text string
function M.set_descriptor(info, text)
  info.descriptor = text:match("^[^%z]*")
  info.create_type = descriptor_fields(info.descriptor).createType
  info.stream_optimized = M.not_stream_optimized(info) == nil
end

--- Why a parsed header is not a streamOptimized VMDK (nil when it is).
---@param info table from parse_header
---@return string|nil reason
function M.not_stream_optimized(info)
  if info.descriptor_only then
    return ("a descriptor file (createType=%q), not a streamOptimized disk"):format(info.create_type or "?")
  end
  if not info.descriptor then return "its descriptor is not within the first bytes read" end
  if info.create_type ~= "streamOptimized" then
    return ("createType is %q, not \"streamOptimized\""):format(info.create_type or "")
  end
  if info.flags & M.FLAG_COMPRESSED == 0 or info.flags & M.FLAG_MARKERS == 0 then
    return ("header flags 0x%08x lack compressed grains and markers"):format(info.flags)
  end
  if info.compress_algorithm ~= M.COMPRESS_DEFLATE then
    return ("compressAlgorithm is %d, not 1 (deflate)"):format(info.compress_algorithm)
  end
  return nil
end

--- Reads and parses the header (and descriptor) of a VMDK file.
---@param path string
---@return table|nil info, string? err, string? code
function M.read_header(path)
  -- a FIFO or a device would block the open or never end
  local kind = fs.stat(path)
  if kind and kind.type ~= "file" then
    local _, rerr, rcode = fs.check_regular(path, "VMDK")
    return nil, "vmdk.read_header: " .. rerr, rcode
  end
  local f, err = io.open(path, "rb")
  if not f then
    local st, serr, scode = fs.stat(path)
    if not st then return nil, ("vmdk.read_header: %s"):format((serr:gsub("^fs%.stat: ", ""))), scode end
    return nil, "vmdk.read_header: " .. err, "EIO"
  end
  local head = f:read(M.HEAD_BYTES) or ""
  local info, why = M.parse_header(head)
  if info and not info.descriptor_only and not info.descriptor and info.descriptor_size > 0
    and info.descriptor_size <= 2048 then
    f:seek("set", info.descriptor_offset * M.SECTOR)
    M.set_descriptor(info, f:read(info.descriptor_size * M.SECTOR) or "")
  end
  f:close()
  if not info then return nil, ("vmdk.read_header: %s: %s"):format(path, why), "NOT_VMDK" end
  return info
end

--- Converts any disk qemu-img reads into a streamOptimized VMDK with
--- `qemu-img convert -O vmdk -o subformat=streamOptimized,...`: the one copy
--- of that command (`ova pack --convert`, and the qemu and workstation
--- backends' export). The VMDK is written to a temp name beside `dst`
--- (`<dst>.part.<pid>`) and renamed over `dst` when complete; a failure or
--- Ctrl-C removes the temp, and `dst` is never left half written.
---
--- Options (all optional; the signature and defaults are those of the
--- first version, so older callers are unchanged):
---   adapter_type  lsilogic (default), ide, buslogic, legacyESX: into the descriptor
---   hwversion     the VM's vmx version, into the descriptor (none by default:
---                 qemu-img writes 4; the backends pass their VM's, 15 when unset)
---   src_format    the source's format for `-f` (raw, qcow2, vmdk...); by
---                 default qemu-img probes it (never probe a raw disk a guest
---                 wrote: pass "raw")
---   timeout       seconds for qemu-img (default 3600)
---   progress      a `log.progress{}` handle, or true for one labelled
---                 "vmdk <name>": qemu-img's `-p` percentage, as a share of
---                 the source file's size
--- Failures: `nil, "vmdk.convert: qemu-img failed (exit N): <stderr>",
--- "QEMU_IMG"`, proc.run's error (ENOENT when qemu-img is not installed,
--- ETIMEDOUT), or the rename's, each with its code.
---@param src string
---@param dst string
---@param opts? {adapter_type?: string, hwversion?: integer|string, src_format?: string, timeout?: number, progress?: any}
---@return table|nil info header facts of dst (vmdk.read_header), string? err, string? code
function M.convert(src, dst, opts)
  if type(src) ~= "string" or type(dst) ~= "string" then error("vmdk.convert: src and dst must be paths", 2) end
  opts = optcheck(opts, CONVERT_OPTS, "vmdk.convert")
  local o = { "subformat=streamOptimized", "adapter_type=" .. (opts.adapter_type or "lsilogic") }
  if opts.hwversion then o[#o + 1] = "hwversion=" .. tostring(opts.hwversion) end
  local tmp = ("%s.part.%d"):format(dst, proc.getpid())
  local argv = { "qemu-img", "convert" }
  if opts.src_format then argv[#argv + 1] = "-f" argv[#argv + 1] = opts.src_format end
  local progress, own_progress = opts.progress, opts.progress == true
  if progress then argv[#argv + 1] = "-p" end
  for _, a in ipairs({ "-O", "vmdk", "-o", table.concat(o, ","), src, tmp }) do argv[#argv + 1] = a end
  local run = { argv = argv, timeout = opts.timeout or 3600 }
  local stderr = {}
  if progress then
    if own_progress then progress = log.progress({ label = "vmdk " .. fs.basename(dst) }) end
    local st = fs.stat(src)
    local total = st and st.size > 0 and st.size or 10000
    -- qemu-img -p writes "    (12.34/100%)\r" on stdout; a mark split
    -- across two reads is one update missed, no more
    run.on_output = function(stream, chunk)
      if stream ~= "stdout" then stderr[#stderr + 1] = chunk return end
      for pct in chunk:gmatch("%((%d+%.?%d*)/100%%%)") do
        progress:update(math.floor(math.min(100, tonumber(pct)) / 100 * total), total)
      end
    end
  end
  local undo = cleanup.push("partial VMDK " .. tmp, function() fs.remove(tmp) end)
  log.info("converting %s to a streamOptimized VMDK", src)
  local r, err, code = proc.run(run)
  if own_progress then progress:close() end
  if not r or r.code ~= 0 then
    undo:run()
    if r then
      local text = progress and table.concat(stderr) or r.stderr
      err = ("vmdk.convert: qemu-img failed (exit %d): %s"):format(r.code, (text:gsub("%s+$", "")))
      code = "QEMU_IMG"
    end
    return nil, err, code
  end
  local ok, rerr, rcode = fs.rename(tmp, dst)
  undo:run()
  if not ok then return nil, rerr, rcode end
  return M.read_header(dst)
end

--- A `--jobs` value of the commands that run the writer: the integer, or
--- nil and why (1 to the writer's most threads, vmdkw.MAX_JOBS).
---@param v string|number
---@return integer|nil jobs, string? why
function M.jobs(v)
  local jobs = math.tointeger(tonumber(v))
  if not jobs or jobs < 1 or jobs > vmdkw.MAX_JOBS then
    return nil, ("--jobs must be 1 to %d"):format(vmdkw.MAX_JOBS)
  end
  return jobs
end

local WRITE_OPTS = { jobs = true, adapter_type = true, hwversion = true, progress = true,
  src_format = true, level = true, timeout = true }

--- A disk's format by its magic: "qcow2", "vmdk" (a sparse extent, or a
--- descriptor file), else "raw" (raw has no magic; an unreadable file
--- sniffs as raw and fails where it is opened). Only a regular file is
--- opened (a FIFO's open would wait for a writer): anything else is "raw",
--- for the writer to refuse.
---@param path string
---@return "raw"|"qcow2"|"vmdk"
function M.sniff_format(path)
  local st = fs.stat(path)
  if not st or st.type ~= "file" then return "raw" end
  local f = io.open(path, "rb")
  if not f then return "raw" end
  local magic = f:read(21) or ""
  f:close()
  if magic:sub(1, 4) == "QFI\xfb" then return "qcow2" end
  if magic:sub(1, 4) == "KDMV" or magic == "# Disk DescriptorFile" then return "vmdk" end
  return "raw"
end
local sniff_format = M.sniff_format

--- Makes `raw`, a sparse raw copy of the disk `src` in `format` (a format
--- qemu-img reads: qcow2, a Workstation VMDK, ...), with `qemu-img convert
--- -f FORMAT -O raw -S 64k` (see the module's header). The caller owns
--- `raw` (and its cleanup). `timeout`: seconds (default 3600).
---@param src string
---@param raw string
---@param format string
---@param opts? {timeout?: number}
---@return true|nil ok, string? err, string? code
function M.to_raw(src, raw, format, opts)
  log.info("reading %s through qemu-img (%s to a sparse raw temp)", src, format)
  local r, err, code = proc.run({ argv = { "qemu-img", "convert", "-f", format, "-O", "raw",
    "-S", "64k", src, raw }, timeout = opts and opts.timeout or 3600 })
  if not r or r.code ~= 0 then
    if r then
      err = ("%s: qemu-img failed (exit %d): %s"):format(src, r.code, (r.stderr:gsub("%s+$", "")))
      code = "QEMU_IMG"
    end
    return nil, err, code
  end
  return true
end

--- Writes a streamOptimized VMDK from a raw disk (or any format qemu-img
--- reads: qcow2, a Workstation VMDK, ...; through a sparse raw temp made by
--- qemu-img, see the module's header). The VMDK is written to a temp name
--- beside `out` and renamed when complete; Ctrl-C or a failure removes it.
--- `src_format` is the source's format for qemu-img's `-f` (default: its
--- magic says qcow2 or vmdk, else raw; a raw disk a guest wrote should say
--- "raw", never be probed); `jobs` compressing threads (default: the cores),
--- `adapter_type` (lsilogic, default; ide, buslogic, legacyESX) and
--- `hwversion` (default 15) go into the descriptor; `progress` is a
--- `log.progress{}` handle or `true`; `level` the zlib level (default 6,
--- qemu-img's). The result's `sha256` is the VMDK's, taken as it was
--- written (no second read). `src` may be a raw stream instead, `{fd =, size =, name =}`
--- (capil.sys.ssh's `session:stream`): read once, in order.
---@param src string|{fd: integer, size: integer, name: string}
---@param out string
---@param opts? {jobs?: integer, adapter_type?: string, hwversion?: integer, progress?: any, src_format?: string, level?: integer, timeout?: number}
---@return {bytes: integer, size: integer, grains: integer, zero_grains: integer, sha256: string}|nil result, string? err, string? code
function M.write(src, out, opts)
  opts = opts or {}
  if (type(src) ~= "string" and type(src) ~= "table") or type(out) ~= "string" then
    error("vmdk.write: src and out must be paths (src may be a stream {fd, size, name})", 2)
  end
  optcheck(opts, WRITE_OPTS, "vmdk.write")
  local format = type(src) == "table" and "raw" or opts.src_format or sniff_format(src)
  if type(format) ~= "string" or not format:match("^[%w][%w_%-]*$") then
    error(("vmdk.write: src_format must be a qemu-img format name (raw, qcow2, vmdk, ...), not '%s'"):format(
      tostring(format)), 2)
  end
  local hw = opts.hwversion and math.tointeger(tonumber(opts.hwversion))
  if opts.hwversion and not hw then
    error(("vmdk.write: hwversion must be an integer, not '%s'"):format(tostring(opts.hwversion)), 2)
  end
  local raw, undo_raw = src, nil
  if format ~= "raw" then
    raw = ("%s.raw.part.%d"):format(out, proc.getpid())
    undo_raw = cleanup.push("temp raw disk " .. raw, function() fs.remove(raw) end)
    local ok, err, code = M.to_raw(src, raw, format, { timeout = opts.timeout })
    if not ok then
      undo_raw:run()
      return nil, code == "QEMU_IMG" and "vmdk.write: " .. err or err, code
    end
  end
  local progress = opts.progress
  local own_progress = progress == true
  if own_progress then progress = log.progress({ label = "vmdk " .. fs.basename(out) }) end
  local tmp_vmdk = ("%s.part.%d"):format(out, proc.getpid())
  -- the C writer removes its temp itself; this covers a Lua error between
  local undo = cleanup.push("partial VMDK " .. tmp_vmdk, function() fs.remove(tmp_vmdk) end)
  local r, err, code = vmdkw.write(raw, out, { jobs = opts.jobs, adapter_type = opts.adapter_type,
    hwversion = hw, level = opts.level, sha256 = true,
    progress = progress or nil })
  undo:cancel()
  if own_progress then progress:close() end
  if undo_raw then undo_raw:run() end
  if not r then
    local at = format ~= "raw" and err:find(raw, 1, true)
    if at then err = err:sub(1, at - 1) .. src .. " (as raw)" .. err:sub(at + #raw) end
    return nil, err, code
  end
  return r
end

--- Runs `write(src)` on a stream's bytes (`src = {fd, size, name}`: a
--- capil.sys.ssh stream, read in order) and closes the stream. Returns
--- write's result; or its failure; or the stream's own failure, with a
--- fourth result true, where that is the cause: a download that broke ends
--- the bytes early (the writer's SHORT), and a write that succeeded on a
--- file that grew or shrank meanwhile is disowned (CHANGED). When the
--- writer failed first, the stream's only news is that its reader stopped.
---@param stream table
---@param name string what messages call the stream's source
---@param write fun(src: {fd: integer, size: integer, name: string}): table|nil, string?, string?
---@return table|nil result, string? err, string? code, boolean? stream_failed
function M.from_stream(stream, name, write)
  local r, err, code = write({ fd = stream:fd(), size = stream.size, name = name })
  local ok, serr, scode = stream:close()
  if not ok and (r or code == "SHORT") then return nil, serr, scode, true end
  return r, err, code
end

--- The streamOptimized VMDK `out` from the disk `src` by `writer`, the
--- local backends' disk_writer: "capil" (M.write, on `jobs` threads) or
--- "qemu-img" (M.convert). `src_format` names the disk's format for both
--- (a disk a guest wrote is named, never probed); `hwversion` defaults to
--- 15. Returns {sha256 =} (capil's writer hashes as it writes; qemu-img's
--- output is not hashed: {}), or nil, err, code (EINVAL: an unknown writer).
---@param writer string
---@param src string
---@param out string
---@param opts {src_format?: string, adapter_type?: string, hwversion?: integer, jobs?: integer, timeout?: number}
---@return {sha256?: string}|nil ok, string? err, string? code
function M.export(writer, src, out, opts)
  local o = { src_format = opts.src_format, adapter_type = opts.adapter_type, hwversion = opts.hwversion or 15,
    timeout = opts.timeout }
  local r, err, code
  if writer == "capil" then
    o.jobs = opts.jobs
    r, err, code = M.write(src, out, o)
  elseif writer == "qemu-img" then
    r, err, code = M.convert(src, out, o)
  else
    return nil, ("unknown disk_writer '%s' (capil, qemu-img)"):format(tostring(writer)), "EINVAL"
  end
  if not r then return nil, err, code end
  return { sha256 = r.sha256 }
end

return M
