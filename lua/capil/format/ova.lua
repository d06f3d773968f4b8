--- capil.format.ova — packs, verifies and inspects OVAs as image-builder's
--- image-build-ova.py produced them: a POSIX ustar tar whose members are, in
--- order, `<name>.ovf`, `<name>.mf` (`SHA256(<file>)= <hex>` lines, OVF first
--- then the disks) and the streamOptimized disks, names without directories;
--- beside it `<name>.ova.sha256` holds the OVA's bare lowercase hex SHA-256
--- with no newline.
---
--- One read of each disk. The manifest precedes the disks and holds their
--- SHA-256, and the .ova.sha256 covers the whole OVA, so a disk's digest
--- must be known before the OVA stream starts: capil's export step records
--- it as it produces the disk (the build manifest's `files[].sha256`), and
--- `ova.pack` takes it as `disks = {{path=, sha256=}}`. Then one streaming
--- pass writes the tar while the OVA's own SHA-256 is computed on the fly
--- (capil.core.archive, on a helper thread). A disk given without a digest
--- (`capil ova pack` on a directory from another tool) is hashed first: one
--- extra read of that disk, logged at debug level.
---
--- The OVA is written to `<name>.ova.part.<pid>` beside the target and
--- renamed when complete; Ctrl-C (capil.sys.cleanup) removes the partial file.
---
--- A disk given as a raw or qcow2 *source* is packed fused: the VMDK is
--- written by capil.core.vmdkw straight into the OVA (no VMDK file), and
--- the OVF size, the MF digests and the disk's tar header are patched once
--- it is done; see "Fused packing" below and docs/architecture.md.
---
--- Reading an OVA (`verify`, `inspect`) streams it once.
local archive = require("capil.core.archive")
local cleanup = require("capil.sys.cleanup")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local log = require("capil.sys.log")
local ovf = require("capil.format.ovf")
local proc = require("capil.sys.proc")
local vmdk = require("capil.format.vmdk")
local vmdkw = require("capil.core.vmdkw")
local optcheck = require("capil.util.opts").check

local M = {}
local pack_fused -- below M.pack's helpers

--- The ProductSection properties image-builder wrote, in its order; capil
--- adds the distro ones, then user properties follow sorted by key.
M.PROPERTY_ORDER = { "BUILD_TIMESTAMP", "BUILD_DATE", "CNI_VERSION", "CONTAINERD_VERSION", "CUSTOM_ROLE",
  "IMAGE_BUILDER_VERSION", "KUBERNETES_SEMVER", "KUBERNETES_SOURCE_TYPE", "DISTRO_NAME", "DISTRO_VERSION",
  "DISTRO_ARCH" }

--- ustar's size field holds 11 octal digits: members from 8 GiB on need a
--- pax extended header (capil then writes pax-restricted: ustar headers
--- everywhere else).
M.USTAR_MAX_SIZE = 8 * 1024 ^ 3 - 1

local MAX_OVF = 16 * 1024 * 1024
M.MAX_OVF = MAX_OVF
local MAX_MF = 1024 * 1024

--- The largest EULA text file packed into the OVF.
M.MAX_EULA = 1024 * 1024
--- The largest `.ova.sha256` file read (it holds one hex digest).
M.MAX_SHA256_FILE = 4096

-- ====================================================================== --
-- Manifest (.mf) text                                                    --
-- ====================================================================== --

--- The .mf text for {{name, sha256}, ...}: one `SHA256(<name>)= <hex>` line each.
---@param entries {name: string, sha256: string}[]
---@return string
function M.mf_text(entries)
  local lines = {}
  for _, e in ipairs(entries) do
    lines[#lines + 1] = ("SHA256(%s)= %s\n"):format(e.name, e.sha256:lower())
  end
  return table.concat(lines)
end

--- Parses .mf text into {{alg, name, digest, line}}; lines that are not
--- `ALG(name)= hex` come back in the second list (as line numbers and text).
---@param text string
---@return table[] entries, table[] bad
function M.parse_mf(text)
  local entries, bad, n = {}, {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    line = line:gsub("\r$", "")
    if line:match("%S") then
      local alg, name, digest = line:match("^(%w+)%((.+)%)%s*=%s*(%x+)%s*$")
      if alg then
        entries[#entries + 1] = { alg = alg:upper(), name = name, digest = digest:lower(), line = n }
      else
        bad[#bad + 1] = { line = n, text = line }
      end
    end
  end
  return entries, bad
end

--- Orders a property map as the descriptor lists them: M.PROPERTY_ORDER,
--- then the others by key. Absent (nil) values are left out.
---@param props table<string, any>
---@return {[1]: string, [2]: string}[]
function M.property_list(props)
  local out, seen = {}, {}
  for _, k in ipairs(M.PROPERTY_ORDER) do
    seen[k] = true
    if props[k] ~= nil then out[#out + 1] = { k, tostring(props[k]) } end
  end
  local rest = {}
  for k in pairs(props) do if not seen[k] then rest[#rest + 1] = k end end
  table.sort(rest)
  for _, k in ipairs(rest) do out[#out + 1] = { k, tostring(props[k]) } end
  return out
end

-- ====================================================================== --
-- Packing                                                                --
-- ====================================================================== --

local PACK_OPTS = {
  id = true, kind = true, ova = true, ovf = true, mf = true, sha256 = true, name = true, disks = true,
  os = true, hardware = true, properties = true, annotation = true, product = true, eula = true,
  network = true, convert = true, progress = true, sync = true, mtime = true, jobs = true, timeout = true,
  eula_file = true, user_properties = true, -- as the plan's step carries them
}

local function strip_ext(path, ext)
  local base = fs.basename(path)
  return base:sub(-#ext) == ext and base:sub(1, -#ext - 1) or base
end

local SOURCE_FIELDS = { source = "string", format = "string", adapter_type = "string", hwversion = "number",
  jobs = "number", name = "string", size = "number", sha256 = "string", open = "function" }

-- A disk entry as {path, sha256?, size?, populated_size?}, or a source
-- (fused packing) as {source, format?, adapter_type?, hwversion?, jobs?, name?}.
local function disk_entry(d, i)
  if type(d) == "string" then return { path = d } end
  if type(d) == "table" and d.source ~= nil then
    for k, v in pairs(d) do
      if not SOURCE_FIELDS[k] then error(("ova.pack: disks[%d]: unknown field '%s' of a disk source"):format(i, tostring(k)), 3) end
      if type(v) ~= SOURCE_FIELDS[k] then
        error(("ova.pack: disks[%d].%s must be a %s"):format(i, k, SOURCE_FIELDS[k]), 3)
      end
    end
    if d.format and d.format ~= "raw" and d.format ~= "qcow2" then
      error(("ova.pack: disks[%d].format must be raw or qcow2, not '%s'"):format(i, d.format), 3)
    end
    if d.name and (d.name:find("/", 1, true) or not d.name:match("%.vmdk$")) then
      error(("ova.pack: disks[%d].name must be a file name ending in .vmdk"):format(i), 3)
    end
    if d.open and d.format ~= "raw" then
      error(("ova.pack: disks[%d]: a streamed source (open) must have format raw"):format(i), 3)
    end
    -- size and sha256 (the export's record of the source) are not the VMDK's: unused
    return { source = d.source, format = d.format, adapter_type = d.adapter_type, hwversion = d.hwversion,
      jobs = d.jobs, name = d.name, open = d.open }
  end
  if type(d) ~= "table" or type(d.path) ~= "string" then
    error(("ova.pack: disks[%d] must be a path, {path=, sha256=} or {source=}"):format(i), 3)
  end
  if d.sha256 ~= nil and not (type(d.sha256) == "string" and d.sha256:match("^%x+$") and #d.sha256 == 64) then
    error(("ova.pack: disks[%d].sha256 must be 64 hex digits"):format(i), 3)
  end
  return { path = d.path, sha256 = d.sha256 and d.sha256:lower(), size = d.size, populated_size = d.populated_size }
end

-- Checks one disk is a streamOptimized VMDK (converting it when allowed);
-- fills size, capacity and the member name. nil, msg, code on failure.
local function prepare_disk(d, opts)
  local info, err, code = vmdk.read_header(d.path)
  if not info then return nil, ("ova.pack: %s"):format((err:gsub("^vmdk%.read_header: ", ""))), code end
  local why = vmdk.not_stream_optimized(info)
  if why then
    if not opts.convert then
      return nil, ("ova.pack: %s is not a streamOptimized VMDK (%s); an OVA needs one: "
        .. "convert it with --convert (qemu-img)"):format(d.path, why), "NOT_STREAM_OPTIMIZED"
    end
    local out = d.path:gsub("%.vmdk$", "") .. ".ova.vmdk"
    local hw = opts.hardware or {}
    info, err, code = vmdk.convert(d.path, out, {
      adapter_type = "lsilogic", hwversion = hw.vmx_version })
    if not info then return nil, err, code end
    local st = fs.stat(d.path)
    d.populated_size = d.populated_size or (st and st.allocated)
    d.path, d.sha256, d.size = out, nil, nil
  end
  local st, serr, scode = fs.stat(d.path)
  if not st then return nil, serr, scode end
  if d.size and d.sha256 and d.size ~= st.size then
    return nil, ("ova.pack: %s is %d bytes, but %d were recorded with its SHA-256: it changed since it "
      .. "was exported"):format(d.path, st.size, d.size), "CHANGED"
  end
  d.size, d.capacity, d.name = st.size, info.capacity, fs.basename(d.path)
  return d
end

local function check_placeholders(t, where)
  for k, v in pairs(t or {}) do
    if type(v) == "string" and v:find("{{", 1, true) then
      error(("ova.pack: %s.%s still holds the placeholder %q (fill it before packing)"):format(where, k, v), 3)
    elseif type(v) == "table" then
      check_placeholders(v, where .. "." .. tostring(k))
    end
  end
end

-- The descriptor parameters from the pack options and the prepared disks.
local function descriptor_params(opts, name, disks, eula)
  local props = {}
  for k, v in pairs(opts.properties or {}) do props[k] = v end
  for k, v in pairs(opts.user_properties or {}) do props[k] = v end
  local os = opts.os or {}
  local semver = props.KUBERNETES_SEMVER or ""
  local os_name = os.display_name or name
  local product = { name = ("%s and Kubernetes %s"):format(os_name, semver), vendor = "VMware Inc.",
    version = "kube-" .. semver, full_version = "kube-" .. semver, vendor_url = "https://vmware.com",
    category = "Cluster API Provider (CAPI)" }
  for k, v in pairs(opts.product or {}) do product[k] = v end
  local ds = {}
  for i, d in ipairs(disks) do
    ds[i] = { href = d.name, size = d.size, capacity_bytes = d.capacity, populated_size = d.populated_size or d.size }
  end
  return {
    name = name, os = os, hardware = opts.hardware, disks = ds, network = opts.network, product = product,
    annotation = opts.annotation or ("Cluster API vSphere image - %s and Kubernetes %s - "
      .. "https://github.com/kubernetes-sigs/cluster-api-provider-vsphere"):format(os_name, semver),
    properties = M.property_list(props), eula = eula,
  }
end

-- The EULA text: opts.eula, else opts.eula_file read; nil, err, code on failure.
local function read_eula(opts)
  if opts.eula or not opts.eula_file then return opts.eula end
  local eula, err, code = fs.read_file(opts.eula_file, { max = M.MAX_EULA, what = "EULA" })
  if not eula then return nil, "ova.pack: " .. err, code end
  return eula
end

-- The disk's capacity against the recipe's (code CAPACITY).
local function check_capacity(opts, path, capacity)
  local want_mb = opts.hardware.disk_mb
  if want_mb and want_mb * 1024 * 1024 ~= capacity then
    return nil, ("ova.pack: %s has a virtual size of %d bytes (%.1f MiB), but the recipe's disk is %d MiB")
      :format(path, capacity, capacity / 1048576, want_mb), "CAPACITY"
  end
  return true
end

-- ====================================================================== --
-- Fused packing: the VMDK written straight into the OVA                  --
-- ====================================================================== --
--
-- A disk given as a source (`{source = raw or qcow2}`) is packed in one
-- pass, with no VMDK file between: capil.core.vmdkw writes the
-- streamOptimized VMDK into the OVA's temp file at the disk member's data
-- offset, hashing the bytes (SHA-256) as they go out. The members keep
-- image-builder's order (OVF, MF, disk), but the OVF's `ovf:size` and the
-- MF's digests (the disk's, and the OVF's that holds the size) are unknown
-- until the disk is written; the temp file is seekable, so:
--
-- 1. the head is written with placeholders of the final length: the OVF
--    with `ovf:size="0"` and spaces after it inside the File tag (SIZE_SLOT
--    columns for the digits, so the text's length never changes), the MF
--    with 64 zeros for each digest, the disk's ustar header with size 0;
-- 2. the VMDK streams in from the head's end (vmdkw.write into the open
--    file), then the tar padding and the two end blocks;
-- 3. the head is rendered again with the real size and digests (same
--    length) and written over the placeholders at offset 0;
-- 4. the OVA's own SHA-256 (`.ova.sha256`) is computed by reading the
--    finished file back (capil.core.hash, 1 MiB reads, mostly from the page
--    cache): it covers the head, which is final only after the disk, so it
--    cannot overlap the write. The read-back costs a fraction of the
--    compression (the OVA is the compressed size).
--
-- ustar's size field holds 11 octal digits (below 8 GiB). vmdkw.bound gives
-- the most the VMDK can take (each grain holding data at zlib's bound, from
-- the data extents; holes cost nothing): below 8 GiB the header is plain
-- ustar; otherwise 1024 bytes are reserved for a pax extended header with a
-- fixed-width `size` record (20 digits, zero-padded). When the VMDK turns
-- out smaller than 8 GiB after all (the usual case: a 20 GiB disk's worst
-- case is over 8 GiB, its VMDK rarely is), the reserve is given to the OVF
-- as 1024 more spaces in the File tag, so the disk's header stays ustar (as
-- `ova.verify` wants below 8 GiB) without moving a byte of the disk.
--
-- A qcow2 source goes through vmdk.to_raw's sparse raw temp first. A
-- stream source ({source = name, format = "raw", open = function}: ESXi's
-- flat extent over SFTP) is opened here and read once, in order: its bound
-- counts every grain (vmdkw.bound(size)), and its ovf:populatedSize gets a
-- slot like ovf:size, filled with the bytes of the grains written. The
-- stream's outcome (closed after the write) wins over the writer's SHORT.
-- Memory stays bounded (vmdkw's slots: about 17 MiB at 16 jobs and more).

-- An old `.ova.sha256` goes before a new OVA is written: until both
-- renames of `install` are done, no checksum file can vouch for an OVA it
-- was not computed from.
local function drop_checksum(sha_path)
  if not fs.exists(sha_path) then return true end
  local ok, err, code = fs.remove(sha_path)
  if not ok then return nil, "ova.pack: " .. err, code end
  return true
end

-- The finished OVA and its checksum file into place: both renames, or (on
-- failure or Ctrl-C before the second) the OVA without any checksum file:
-- never a new OVA beside an old checksum.
local function install(tmp, ova_path, sha_tmp, sha_path)
  local ok, err, code = fs.rename(tmp, ova_path)
  if ok then ok, err, code = fs.rename(sha_tmp, sha_path) end
  return ok, err, code
end

local SIZE_SENTINEL = 987654321987654321
local POPULATED_SENTINEL = 987654321987654322
local SIZE_SLOT = 20
local PAX_RESERVE = 1024
local ZERO_SHA = ("0"):rep(64)

local function octal(n, width)
  return ("%0" .. width .. "o"):format(n)
end

--- A 512-byte POSIX ustar header for a regular file (`kind` "0") or a pax
--- extended header ("x"), laid out as libarchive writes it (mode 0644,
--- uid/gid 0, no owner names). Raises when the name does not fit 100
--- bytes or the size 11 octal digits.
---@param name string
---@param size integer
---@param mtime integer
---@param kind? string
---@return string
function M.ustar_header(name, size, mtime, kind)
  if #name > 100 then error(("ova.ustar_header: member name longer than 100 bytes: %s"):format(name), 2) end
  if size < 0 or size > M.USTAR_MAX_SIZE then error(("ova.ustar_header: size %d does not fit ustar"):format(size), 2) end
  local function field(v, len) return v .. ("\0"):rep(len - #v) end
  local h = table.concat({
    field(name, 100), "000644 \0", "000000 \0", "000000 \0", octal(size, 11) .. " ", octal(mtime, 11) .. " ",
    "        ", kind or "0", ("\0"):rep(100), "ustar\0", "00", ("\0"):rep(64), "000000 \0", "000000 \0",
    ("\0"):rep(155),
  })
  h = h .. ("\0"):rep(512 - #h)
  local sum = 0
  for i = 1, 512 do sum = sum + h:byte(i) end
  return h:sub(1, 148) .. octal(sum, 6) .. "\0 " .. h:sub(157)
end

-- Data padded to whole 512-byte blocks.
local function pad_block(data)
  return data .. ("\0"):rep((512 - #data % 512) % 512)
end

-- The pax extended header (header and its block) carrying `size` as one
-- fixed-width record: "29 size=<20 digits>\n".
local function pax_size(name, size, mtime)
  local rec = ("29 size=%020d\n"):format(size)
  assert(#rec == 29)
  return M.ustar_header(("PaxHeader/" .. name):sub(1, 100), #rec, mtime, "x") .. pad_block(rec)
end

-- `text` with the one `attr="<sentinel>"` replaced by `attr="<value>"`
-- and SIZE_SLOT - #digits + slack spaces: the same length whatever the value.
local function fill_slot(text, attr, sentinel, value, slack)
  local mark = ('%s="%d"'):format(attr, sentinel)
  local at = text:find(mark, 1, true)
  assert(at and not text:find(mark, at + 1, true), "ova.pack: the OVF's " .. attr .. " not found once")
  local digits = tostring(value)
  return text:sub(1, at - 1) .. ('%s="%s"'):format(attr, digits) .. (" "):rep(SIZE_SLOT - #digits + slack)
    .. text:sub(at + #mark)
end

-- The OVF text with the disk's ovf:size set to `size`, followed by
-- SIZE_SLOT - #digits + slack spaces inside the File tag; a streamed
-- disk's ovf:populatedSize (known once it is written) the same way.
local function fused_ovf(params, size, slack, populated)
  params.disks[1].size = SIZE_SENTINEL
  if populated then params.disks[1].populated_size = POPULATED_SENTINEL end
  local text = fill_slot(ovf.descriptor(params), "ovf:size", SIZE_SENTINEL, size, slack)
  if populated then text = fill_slot(text, "ovf:populatedSize", POPULATED_SENTINEL, populated, 0) end
  return text
end

-- The stable code of an io library failure's errno (Linux numbers).
local ERRNO_CODES = { [2] = "ENOENT", [13] = "EACCES", [21] = "EISDIR", [28] = "ENOSPC", [30] = "EROFS",
  [122] = "EDQUOT" }
local function io_code(errno) return ERRNO_CODES[errno] or "EIO" end

-- Reads the source's facts, makes the raw temp of a qcow2; fills d.raw,
-- d.capacity, d.populated_size, d.max_bytes, d.name.
local function prepare_source(d, opts)
  if d.open then
    -- a stream (ESXi's flat extent over SFTP): read once, in order
    d.name = d.name or (fs.basename(d.source):gsub("%-flat%.vmdk$", ".vmdk"):gsub("%.[Rr][Aa][Ww]$", ".vmdk"))
    local stream, serr, scode = d.open()
    if not stream then return nil, ("ova.pack: %s: %s"):format(d.source, tostring(serr)), scode end
    d.stream = stream
    d.raw = d.source
    local b = vmdkw.bound(stream.size)
    d.size_raw, d.max_bytes = b.size, b.max_bytes
    d.capacity = (b.size + 511) // 512 * 512
    d.populated_size = nil   -- known once written
    return d
  end
  local st, err, code = fs.stat(d.source)
  if not st then return nil, "ova.pack: " .. tostring(err):gsub("^fs%.stat: ", ""), code end
  if st.type ~= "file" and st.type ~= "block" then
    return nil, ("ova.pack: %s: not a regular file or block device"):format(d.source), "EFTYPE"
  end
  local f, oerr = io.open(d.source, "rb")
  if not f then return nil, "ova.pack: " .. tostring(oerr), "EACCES" end
  f:close()
  d.name = d.name or (fs.basename(d.source):gsub("%.[Rr][Aa][Ww]$", ""):gsub("%.[Ii][Mm][Gg]$", "")
    :gsub("%.[Qq][Cc][Oo][Ww]2$", "") .. ".vmdk")
  d.raw = d.source
  if d.format == "qcow2" then
    d.raw = ("%s.raw.part.%d"):format(opts.ova, proc.getpid())
    d.raw_undo = cleanup.push("temp raw disk " .. d.raw, function() fs.remove(d.raw) end)
    local ok, qerr, qcode = vmdk.to_raw(d.source, d.raw, "qcow2", { timeout = opts.timeout })
    if not ok then
      d.raw_undo:run()
      return nil, "ova.pack: " .. qerr, qcode
    end
  end
  local b, berr, bcode = vmdkw.bound(d.raw)
  if not b then
    if d.raw_undo then d.raw_undo:run() end
    return nil, "ova.pack: " .. tostring(berr):gsub("^vmdkw%.bound: ", ""), bcode
  end
  local rst = fs.stat(d.raw)
  d.size_raw, d.max_bytes = b.size, b.max_bytes
  d.capacity = (b.size + 511) // 512 * 512
  -- a block device has no allocation to tell: its whole size
  d.populated_size = rst and rst.type == "file" and rst.allocated or b.size
  return d
end

-- A failure message of vmdkw.write as ova.pack's, naming the source (not
-- a qcow2's raw temp), or the OVA for a failure to write (vmdkw names the
-- member then: the open file has no path).
local function source_error(d, err, ova_path)
  err = tostring(err)
  local out = "vmdkw.write: " .. d.name .. ": "
  if err:sub(1, #out) == out then
    return ("ova.pack: %s: writing %s: %s"):format(ova_path, d.name, err:sub(#out + 1))
  end
  err = err:gsub("^vmdkw%.write: ", "ova.pack: ")
  if d.raw ~= d.source then
    local at = err:find(d.raw, 1, true)
    if at then err = err:sub(1, at - 1) .. d.source .. " (as raw)" .. err:sub(at + #d.raw) end
  end
  return err
end

-- Packs the OVA around one disk source (see above); pack's result.
pack_fused = function(opts, d, paths)
  local ok, err, code = prepare_source(d, opts)
  if not ok then return nil, err, code end
  local undo_raw = d.raw_undo
  -- the qcow2's raw temp removed; a stream still open (a failure before
  -- the write) closed
  local function drop_raw()
    if undo_raw then undo_raw:run() end
    if d.stream then
      d.stream:close()
      d.stream = nil
    end
  end
  ok, err, code = check_capacity(opts, d.source, d.capacity)
  if not ok then drop_raw() return nil, err, code end
  local eula
  eula, err, code = read_eula(opts)
  if err then drop_raw() return nil, err, code end
  local params = descriptor_params(opts, paths.name,
    { { name = d.name, size = 0, capacity = d.capacity, populated_size = d.populated_size } }, eula)
  local ovf_name, mf_name = fs.basename(paths.ovf), fs.basename(paths.mf)
  local mtime = opts.mtime or os.time()
  local reserve = d.max_bytes > M.USTAR_MAX_SIZE
  -- the head (OVF, MF, the disk's header) for a disk of `size` bytes
  local function head(size, disk_sha, populated)
    local pax = size > M.USTAR_MAX_SIZE
    local ovf_text = fused_ovf(params, size, (reserve and not pax) and PAX_RESERVE or 0,
      d.open and (populated or 0) or nil)
    local mf_text = M.mf_text({ { name = ovf_name, sha256 = hash.digest("sha256", ovf_text) },
      { name = d.name, sha256 = disk_sha } })
    local parts = { M.ustar_header(ovf_name, #ovf_text, mtime), pad_block(ovf_text),
      M.ustar_header(mf_name, #mf_text, mtime), pad_block(mf_text) }
    if pax then parts[#parts + 1] = pax_size(d.name, size, mtime) end
    parts[#parts + 1] = M.ustar_header(d.name, pax and 0 or size, mtime)
    return table.concat(parts), ovf_text, mf_text
  end
  -- the placeholder head: the pax header when reserved, so its length is the final one's
  local head0 = head(reserve and M.USTAR_MAX_SIZE + 1 or 0, ZERO_SHA)
  if reserve then log.debug("ova.pack: %s may take 8 GiB or more: its header has room for a pax size", d.source) end

  local rok, rerr, rcode = drop_checksum(paths.sha256)
  if not rok then drop_raw() return nil, rerr, rcode end
  local tmp = ("%s.part.%d"):format(opts.ova, proc.getpid())
  local sha_tmp = ("%s.part.%d"):format(paths.sha256, proc.getpid())
  local f, ferr, ferrno = io.open(tmp, "w+b")
  if not f then drop_raw() return nil, "ova.pack: " .. tostring(ferr), io_code(ferrno) end
  local written = {}
  local undo = cleanup.push("partial OVA " .. tmp, function()
    if f then f:close() f = nil end
    fs.remove(tmp)
    fs.remove(sha_tmp)
    for _, p in ipairs(written) do fs.remove(p) end
    drop_raw()
  end)
  local function fail(e, c)
    undo:run()
    return nil, e, c
  end
  local function put(data)
    local wok, werr, werrno = f:write(data)
    if not wok then
      return nil, ("ova.pack: %s: %s"):format(tmp, (tostring(werr):gsub("^[^:]*: ", ""))), io_code(werrno)
    end
    return true
  end

  ok, err, code = put(head0)
  if not ok then return fail(err, code) end
  log.info("packing %s into %s (the VMDK written from %s)", d.name, fs.basename(opts.ova), d.source)
  local bar = opts.progress ~= false and log.progress({ label = "ova " .. d.name, total = d.size_raw }) or nil
  local hw = opts.hardware or {}
  local wopts = { name = d.name, sha256 = true, jobs = d.jobs or opts.jobs,
    adapter_type = d.adapter_type or "lsilogic", hwversion = math.tointeger(tonumber(d.hwversion or hw.vmx_version)),
    progress = bar }
  local r, werr, wcode, broke
  if d.stream then
    r, werr, wcode, broke = vmdk.from_stream(d.stream, d.source, function(src) return vmdkw.write(src, f, wopts) end)
    d.stream = nil
  else
    r, werr, wcode = vmdkw.write(d.raw, f, wopts)
  end
  if bar then bar:close() end
  drop_raw()
  if broke then return fail(("ova.pack: %s: %s"):format(d.source, tostring(werr)), wcode) end
  if not r then return fail(source_error(d, werr, opts.ova), wcode) end
  if r.bytes > M.USTAR_MAX_SIZE and not reserve then
    return fail(("ova.pack: %s: its VMDK took %d bytes, more than it could when packing started: the disk "
      .. "changed while it was read; no OVA written"):format(d.source, r.bytes), "CHANGED")
  end
  ok, err, code = put(("\0"):rep((512 - r.bytes % 512) % 512 + 1024))
  if not ok then return fail(err, code) end
  -- a stream's populated size: the grains written (a file's is its allocation)
  local final, ovf_text, mf_text = head(r.bytes, r.sha256, math.min(r.size, r.grains * vmdkw.GRAIN_BYTES))
  assert(#final == #head0, "ova.pack: the final head's length differs from the placeholder's")
  f:seek("set", 0)
  ok, err, code = put(final)
  if ok then
    local cok, cerr, cerrno = f:close()
    f = nil
    if not cok then ok, err, code = nil, ("ova.pack: %s: %s"):format(tmp, tostring(cerr)), io_code(cerrno) end
  end
  if not ok then return fail(err, code) end

  -- the OVA's SHA-256 over its final bytes
  local sum, herr, hcode = hash.file(tmp, "sha256", { progress = opts.progress ~= false or nil })
  if not sum then return fail(herr, hcode) end
  for _, m in ipairs({ { paths.ovf, ovf_text }, { paths.mf, mf_text }, { sha_tmp, sum } }) do
    ok, err, code = fs.write(m[1], m[2])
    if not ok then return fail(err, code) end
    written[#written + 1] = m[1]
  end
  ok, err, code = install(tmp, opts.ova, sha_tmp, paths.sha256)
  if not ok then return fail(err, code) end
  undo:cancel()
  local size = fs.stat(opts.ova).size
  log.info("wrote %s (%d bytes, sha256 %s)", opts.ova, size, sum)
  return { ova = opts.ova, ovf = paths.ovf, mf = paths.mf, sha256_file = paths.sha256, sha256 = sum, size = size,
    disks = { { name = d.name, path = d.source, source = d.source, size = r.bytes, sha256 = r.sha256,
      capacity = d.capacity } } }
end

--- Packs an OVA from disks and the facts of the plan's `ova` step (the step
--- itself can be passed: `id` and `kind` are ignored). Writes `ovf`, `mf`
--- (default: beside the OVA, named after it), the OVA, then `sha256`
--- (default `<ova>.sha256`).
---
--- `disks` are paths or `{path=, sha256=, size=, populated_size=}`: with a
--- sha256 (recorded by the export step, `size` the size it had then) the
--- disk is read once; without, it is hashed first (one extra read). A disk
--- that is not a streamOptimized VMDK fails with code NOT_STREAM_OPTIMIZED
--- unless `convert` (then `<disk>.ova.vmdk` is made with qemu-img). The OVF
--- disk capacity is the VMDK's virtual size; `hardware.disk_mb`, when given,
--- must agree with it (code CAPACITY). Properties must be filled: a
--- remaining `{{placeholder}}` raises.
--- `user_properties` are added to `properties`; `eula_file` is read when
--- `eula` (the text) is not given.
---
--- A disk may instead be a source, `{source = PATH, format = "raw"|"qcow2"
--- (sniffed when absent; a VMDK found there takes the path above),
--- adapter_type = (lsilogic), hwversion = (hardware.vmx_version), jobs =
--- (opts.jobs, else the cores), name = (the source's name with .vmdk)}`: it
--- must be the only disk (code UNSUPPORTED), and is packed fused (one pass
--- over the source, see "Fused packing"); `timeout` bounds a qcow2's
--- qemu-img read. Or a raw stream, `{source = NAME, format = "raw", open =
--- function}` (`open()` returns a capil.sys.ssh stream, or nil, err, code),
--- read once as it arrives. The result's disk then has `source` and the VMDK's size
--- and sha256. `sync` is not honoured there (the file is not fsynced).
---@param opts {ova: string, ovf?: string, mf?: string, sha256?: string, name?: string, disks: (string|table)[], jobs?: integer, timeout?: number, os: {ovf_id: integer, ovf_version?: string, os_type: string, display_name?: string}, hardware: table, properties?: table<string, string>, annotation?: string, product?: table, eula?: string, network?: string, convert?: boolean, progress?: boolean, sync?: boolean, mtime?: integer}
---@return {ova: string, ovf: string, mf: string, sha256_file: string, sha256: string, size: integer, disks: {name: string, path: string, size: integer, sha256: string}[]}|nil
---@return string? err
---@return string? code
function M.pack(opts)
  if type(opts) ~= "table" then error("ova.pack: options table expected", 2) end
  optcheck(opts, PACK_OPTS, "ova.pack")
  if type(opts.ova) ~= "string" then error("ova.pack: option 'ova' (the OVA path) is required", 2) end
  if type(opts.disks) ~= "table" or #opts.disks == 0 then error("ova.pack: option 'disks' must list at least one disk", 2) end
  if type(opts.os) ~= "table" or type(opts.hardware) ~= "table" then
    error("ova.pack: options 'os' and 'hardware' are required", 2)
  end
  check_placeholders(opts.properties, "properties")
  check_placeholders(opts.os, "os")
  local name = opts.name or strip_ext(opts.ova, ".ova")
  local dir = fs.dirname(opts.ova)
  local base = strip_ext(opts.ova, ".ova")
  local ovf_path = opts.ovf or fs.join(dir, base .. ".ovf")
  local mf_path = opts.mf or fs.join(dir, base .. ".mf")
  local sha_path = opts.sha256 or (opts.ova .. ".sha256")

  local given, sources = {}, 0
  for i, d in ipairs(opts.disks) do
    local e = disk_entry(d, i)
    if e.source then
      e.format = e.format or vmdk.sniff_format(e.source)
      -- a VMDK given as a source keeps the VMDK path
      if e.format == "vmdk" then e = { path = e.source } else sources = sources + 1 end
    end
    given[i] = e
  end
  if sources > 0 then
    if #given > 1 then
      return nil, "ova.pack: a disk source (packed fused, the VMDK written into the OVA) must be the only "
        .. "disk", "UNSUPPORTED"
    end
    return pack_fused(opts, given[1], { name = name, ovf = ovf_path, mf = mf_path, sha256 = sha_path })
  end

  local disks, seen = {}, {}
  for i, e0 in ipairs(given) do
    local e, err, code = prepare_disk(e0, opts)
    if not e then return nil, err, code end
    if seen[e.name] then return nil, ("ova.pack: two disks are named %s"):format(e.name), "EEXIST" end
    seen[e.name] = true
    if i == 1 then
      local okc, cerr, ccode = check_capacity(opts, e.path, e.capacity)
      if not okc then return nil, cerr, ccode end
    end
    disks[i] = e
  end
  for _, d in ipairs(disks) do
    if not d.sha256 then
      log.debug("ova.pack: %s has no recorded SHA-256: hashing it first (one extra read)", d.path)
      local h, err, code = hash.file(d.path, "sha256", { progress = opts.progress ~= false or nil })
      if not h then return nil, err, code end
      d.sha256 = h
    end
  end

  local eula, eerr, ecode = read_eula(opts)
  if eerr then return nil, eerr, ecode end
  local ovf_text = ovf.descriptor(descriptor_params(opts, name, disks, eula))
  local entries = { { name = fs.basename(ovf_path), sha256 = hash.digest("sha256", ovf_text) } }
  for _, d in ipairs(disks) do entries[#entries + 1] = { name = d.name, sha256 = d.sha256 } end
  local mf_text = M.mf_text(entries)
  local dok, derr, dcode = drop_checksum(sha_path)
  if not dok then return nil, derr, dcode end
  local written = {}
  local function unwrite()
    for _, p in ipairs(written) do fs.remove(p) end
  end
  for _, m in ipairs({ { ovf_path, ovf_text }, { mf_path, mf_text } }) do
    local ok, err, code = fs.write(m[1], m[2])
    if not ok then
      unwrite()
      return nil, err, code
    end
    written[#written + 1] = m[1]
  end

  local big = false
  for _, d in ipairs(disks) do big = big or d.size > M.USTAR_MAX_SIZE end
  if big then log.warn("ova.pack: a disk of 8 GiB or more needs a pax size header; the rest stays ustar") end
  local tmp = ("%s.part.%d"):format(opts.ova, proc.getpid())
  local sha_tmp = ("%s.part.%d"):format(sha_path, proc.getpid())
  local w, werr, wcode = archive.writer(tmp, { format = big and "pax" or "ustar", sync = opts.sync or false })
  if not w then
    unwrite()
    return nil, werr, wcode
  end
  local undo = cleanup.push("partial OVA " .. tmp, function()
    w:abort()
    fs.remove(tmp)
    fs.remove(sha_tmp)
    unwrite()
  end)
  local function fail(err, code)
    undo:run()
    return nil, err, code
  end
  local mtime = opts.mtime or os.time()
  for _, m in ipairs({ { fs.basename(ovf_path), ovf_text }, { fs.basename(mf_path), mf_text } }) do
    local ok, err, code = w:add_data(m[1], m[2], { mtime = mtime })
    if not ok then return fail(err, code) end
  end
  for _, d in ipairs(disks) do
    log.info("packing %s into %s", d.name, fs.basename(opts.ova))
    local bar = opts.progress ~= false and log.progress({ label = "ova " .. d.name, total = d.size }) or nil
    -- the digest the manifest will carry is checked against the bytes
    -- written (hashed on the helper thread as they stream by)
    local ok, err, code = w:add_file(d.name, d.path, { progress = bar, expect_sha256 = d.sha256 })
    if bar then bar:close() end
    if not ok then
      if code == "CHECKSUM" then
        err = ("ova.pack: %s: its SHA-256 is not the recorded %s (%s): the disk changed since it was "
          .. "exported, or the build manifest is wrong; no OVA written"):format(d.path, d.sha256,
          (tostring(err):match("SHA%-256 is (%x+)") or "?"))
      end
      return fail(err, code)
    end
  end
  local sum, err, code = w:close()
  if not sum then return fail(err, code) end
  local ok
  ok, err, code = fs.write(sha_tmp, sum.sha256)
  if not ok then return fail(err, code) end
  ok, err, code = install(tmp, opts.ova, sha_tmp, sha_path)
  if not ok then return fail(err, code) end
  undo:cancel()
  log.info("wrote %s (%d bytes, sha256 %s)", opts.ova, sum.size, sum.sha256)
  local out = {}
  for i, d in ipairs(disks) do out[i] = { name = d.name, path = d.path, size = d.size, sha256 = d.sha256 } end
  return { ova = opts.ova, ovf = ovf_path, mf = mf_path, sha256_file = sha_path, sha256 = sum.sha256,
    size = sum.size, disks = out }
end

-- ====================================================================== --
-- Reading                                                                --
-- ====================================================================== --

--- Why a member name is unsafe to read or extract by, or nil when it is
--- fine: absolute, a ".." or empty component, a backslash, a control
--- character (NUL included). Directories are allowed here (verify reports
--- them: capil's OVAs are flat).
---@param name string
---@return string|nil
function M.unsafe_name(name)
  if name == "" then return "the name is empty" end
  if name:find("[%z\1-\31\127]") then return "the name holds a control character" end
  if name:find("\\", 1, true) then return "the name holds a backslash" end
  if name:sub(1, 1) == "/" then return "the name is an absolute path" end
  for part in (name:gsub("/$", "") .. "/"):gmatch("([^/]*)/") do
    if part == ".." then return "the name has a '..' component" end
    if part == "" then return "the name has an empty component" end
  end
  return nil
end

--- A member name as printed in messages (control characters escaped).
---@param name string
---@return string
function M.shown(name)
  return "'" .. name:gsub("[%z\1-\31\127\\']", function(c) return ("\\%03d"):format(c:byte()) end) .. "'"
end

-- The error for an unsafe member name, naming the OVA and the member.
local function unsafe_error(fn, path, name, why)
  return ("%s: %s: member %s: %s; refusing the OVA"):format(fn, path, M.shown(name), why), "EUNSAFE_NAME"
end

local function reader_problem(err, code, done)
  local why = tostring(err):gsub("^archive%.reader: [^:]+: ", "")
  if code == "NOT_TAR" then return "not a tar archive (" .. why .. ")" end
  if code == "TRUNCATED" then
    return ("the OVA is truncated after %d complete member(s) (%s)"):format(done, why)
  end
  return why
end

--- Checks an OVA in one streaming pass and lists EVERY problem found:
--- tar format (ustar) and member types and names; member order (.ovf first,
--- then .mf, then the disks in References order); every manifest digest
--- (and members the manifest misses); the OVF parses and its References
--- match the members (names, sizes); each disk's capacity equals its VMDK
--- header's virtual size; each VMDK is streamOptimized; and, when
--- `<ova>.sha256` exists beside it, the OVA's digest. The report's
--- `problems` are strings naming the member. Fails (nil, msg, code) only
--- when the file cannot be opened. `opts.sha256` computes the OVA's
--- SHA-256 (`report.sha256`) even without a `.sha256` file beside it.
---@param path string
---@param opts? {progress?: boolean, sha256?: boolean}
---@return {ok: boolean, problems: string[], members: table[], ovf?: table, sha256?: string}|nil
---@return string? err
---@return string? code
function M.verify(path, opts)
  opts = opts or {}
  local sidecar = path .. ".sha256"
  local has_sidecar = fs.exists(sidecar)
  local want_whole = has_sidecar or opts.sha256 == true
  -- a FIFO or a device is refused by kind (a missing file: the reader says so)
  local okr, rerr, rcode = fs.check_regular(path, "OVA")
  if not okr and rcode == "EFTYPE" then return nil, "ova.verify: " .. rerr, rcode end
  local r, err, code = archive.reader(path, { sha256 = want_whole })
  if not r then
    if code ~= "NOT_TAR" and code ~= "TRUNCATED" and code ~= "ARCHIVE" then
      return nil, (err:gsub("^archive%.reader", "ova.verify")), code
    end
    local st = fs.stat(path)
    local why = st and st.size == 0 and "an empty file, not a tar archive" or reader_problem(err, code, 0)
    return { ok = false, problems = { why }, members = {} }
  end
  local problems, members, by_name = {}, {}, {}
  local function problem(member, fmt, ...)
    local msg = select("#", ...) > 0 and fmt:format(...) or fmt
    problems[#problems + 1] = member and (member .. ": " .. msg) or msg
  end
  local ovf_text, mf_text, complete, ovf_member = nil, nil, false, nil
  while true do
    local m, nerr, ncode = r:next()
    if not m then
      if nerr then problem(nil, "%s", reader_problem(nerr, ncode, #members)) else complete = true end
      break
    end
    local keep = 0
    if m.name:match("%.ovf$") and not ovf_text then keep = MAX_OVF
    elseif m.name:match("%.mf$") and not mf_text then keep = MAX_MF
    elseif m.name:match("%.vmdk$") then keep = vmdk.HEAD_BYTES end
    local bar = opts.progress and m.size > 64 * 1024 * 1024
      and log.progress({ label = "verify " .. m.name, total = m.size }) or nil
    local d, derr, dcode = r:read_member({ keep = keep, progress = bar })
    if bar then bar:close() end
    if not d then
      problem(m.name, "%s", reader_problem(derr, dcode, #members))
      break
    end
    members[#members + 1] = m
    m.sha256, m.head = d.sha256, d.data
    if by_name[m.name] then problem(m.name, "appears twice in the OVA") end
    by_name[m.name] = by_name[m.name] or m
    if m.format ~= "ustar" and not (m.format == "pax" and m.size > M.USTAR_MAX_SIZE) then
      problem(m.name, "tar header format is %s, not POSIX ustar", m.format)
    end
    if m.type ~= "file" then problem(m.name, "is a %s, not a regular file", m.type) end
    local unsafe = M.unsafe_name(m.name)
    if unsafe then
      problem(nil, "member %s: unsafe name: %s", M.shown(m.name), unsafe)
    elseif m.name:find("/", 1, true) then
      problem(m.name, "has a directory in its name")
    end
    if keep == MAX_OVF then
      ovf_member = m
      if d.truncated then problem(m.name, "descriptor larger than %d bytes", MAX_OVF) else ovf_text = d.data end
    elseif keep == MAX_MF then
      if d.truncated then problem(m.name, "manifest larger than %d bytes", MAX_MF) else mf_text = d.data end
    end
  end
  local whole
  if complete and want_whole then
    whole = r:sha256()
  end
  if complete and has_sidecar then
    local recorded, serr = fs.read_file(sidecar, { max = M.MAX_SHA256_FILE, what = ".sha256 file" })
    local hex = recorded and recorded:match("^%s*(%x+)")
    if not recorded then
      problem(nil, "%s", serr)
    elseif not hex or hex:lower() ~= whole then
      problem(fs.basename(sidecar), "holds %q, but the OVA's SHA-256 is %s", recorded:sub(1, 80), whole)
    end
  end
  r:close()

  -- order: descriptor, manifest, then the disks (checked against References below)
  local first = members[1]
  if #members == 0 and complete then problem(nil, "the archive is empty") end
  if first and not first.name:match("%.ovf$") then
    local at
    for i, m in ipairs(members) do if m.name:match("%.ovf$") then at = i break end end
    problem(first.name, "wrong member order: the OVF descriptor must come first, %s",
      at and ("but it is member " .. at) or "and there is none")
  end
  local mf_member
  for i, m in ipairs(members) do
    if m.name:match("%.mf$") then
      mf_member = m
      if i ~= 2 then problem(m.name, "wrong member order: the manifest is member %d, it must be member 2", i) end
      break
    end
  end

  -- the descriptor
  local facts, perr
  if ovf_text then
    facts, perr = ovf.parse(ovf_text)
    if not facts then problem(ovf_member.name, "%s", perr) end
  elseif complete then
    problem(nil, "no OVF descriptor (.ovf) in the OVA")
  end
  local refs_by_id = {}
  if facts then
    local expected_pos = 3
    for _, ref in ipairs(facts.references) do
      refs_by_id[ref.id or ""] = ref
      local m = ref.href and by_name[ref.href]
      if not m then
        if complete then
          problem(ref.href or "?", "is referenced by the OVF (File %s) but is not in the OVA", ref.id or "?")
        end
      else
        m.referenced = true
        if ref.size and ref.size ~= m.size then
          problem(m.name, "is %d bytes, but the OVF References say %d", m.size, ref.size)
        end
        local pos
        for i, mm in ipairs(members) do if mm == m then pos = i break end end
        if pos ~= expected_pos then
          problem(m.name, "wrong member order: member %d, but the OVF References put it at %d", pos, expected_pos)
        end
        expected_pos = expected_pos + 1
      end
    end
    for _, m in ipairs(members) do
      if not m.referenced and m ~= ovf_member and m ~= mf_member and not m.name:match("%.cert$") then
        problem(m.name, "is in the OVA but not referenced by the OVF")
      end
    end
    for _, disk in ipairs(facts.disks) do
      local ref = refs_by_id[disk.file_ref or ""]
      local m = ref and ref.href and by_name[ref.href]
      local label = ref and ref.href or ("disk " .. tostring(disk.disk_id))
      if not ref then problem(label, "DiskSection refers to file id %q, which References lacks", tostring(disk.file_ref)) end
      if disk.format ~= ovf.STREAM_OPTIMIZED then
        problem(label, "OVF disk format is %q, not streamOptimized", tostring(disk.format))
      end
      if not disk.capacity_bytes then
        problem(label, "OVF capacity %q in units %q cannot be read", tostring(disk.capacity), tostring(disk.units))
      end
      if m and m.head then
        local info, why = vmdk.parse_header(m.head)
        if not info then
          problem(m.name, "%s", why)
        else
          local not_so = vmdk.not_stream_optimized(info)
          if not_so then problem(m.name, "is not a streamOptimized VMDK: %s", not_so) end
          if info.capacity and disk.capacity_bytes and info.capacity ~= disk.capacity_bytes then
            problem(m.name, "OVF capacity is %d bytes, but the VMDK's virtual size is %d bytes",
              disk.capacity_bytes, info.capacity)
          end
        end
      end
    end
  end

  -- the manifest
  if mf_text then
    local entries, bad = M.parse_mf(mf_text)
    for _, b in ipairs(bad) do problem(mf_member.name, "line %d is not 'ALG(name)= hex': %q", b.line, b.text:sub(1, 80)) end
    local listed = {}
    for _, e in ipairs(entries) do
      listed[e.name] = true
      local m = by_name[e.name]
      if e.alg ~= "SHA256" then
        problem(mf_member.name, "line %d uses %s; capil checks SHA256 manifests only", e.line, e.alg)
      elseif not m then
        if complete then problem(e.name, "is listed in the manifest but is not in the OVA") end
      elseif m.sha256 ~= e.digest then
        problem(e.name, "SHA-256 is %s, but the manifest says %s", m.sha256, e.digest)
      end
    end
    for _, m in ipairs(members) do
      if m ~= mf_member and not listed[m.name] and not m.name:match("%.cert$") then
        problem(m.name, "is not listed in the manifest")
      end
    end
  elseif complete then
    problem(nil, "no manifest (.mf) in the OVA")
  end

  for _, m in ipairs(members) do m.head = nil end
  return { ok = #problems == 0, problems = problems, members = members, ovf = facts, sha256 = whole }
end

--- The key facts of an OVA: its descriptor parsed (OS, hardware, disks with
--- capacity, networks, product, properties in order, EULA present) and the
--- member list. Only the descriptor is read; the rest is skipped.
---@param path string
---@return table|nil facts, string? err, string? code
function M.inspect(path)
  local okr, rerr, rcode = fs.check_regular(path, "OVA")
  if not okr and rcode == "EFTYPE" then return nil, "ova.inspect: " .. rerr, rcode end
  local r <close>, err, code = archive.reader(path)
  if not r then
    if code == "NOT_TAR" or code == "TRUNCATED" then
      return nil, ("ova.inspect: %s: %s"):format(path, reader_problem(err, code, 0)), code
    end
    return nil, (err:gsub("^archive%.reader", "ova.inspect")), code
  end
  local members, facts = {}, nil
  while true do
    local m, nerr, ncode = r:next()
    if not m then
      if nerr then return nil, "ova.inspect: " .. path .. ": " .. reader_problem(nerr, ncode, #members), ncode end
      break
    end
    local unsafe = M.unsafe_name(m.name)
    if unsafe then return nil, unsafe_error("ova.inspect", path, m.name, unsafe) end
    members[#members + 1] = { name = m.name, size = m.size, format = m.format }
    if #members == 1 then
      if not m.name:match("%.ovf$") then
        return nil, ("ova.inspect: %s: the first member is %s, not an OVF descriptor"):format(path, m.name), "OVA"
      end
      local d, derr, dcode = r:read_member({ keep = MAX_OVF, sha256 = false })
      if not d then return nil, "ova.inspect: " .. path .. ": " .. reader_problem(derr, dcode, 0), dcode end
      if d.truncated then return nil, ("ova.inspect: %s: descriptor larger than %d bytes"):format(path, MAX_OVF), "OVA" end
      local perr
      facts, perr = ovf.parse(d.data)
      if not facts then return nil, ("ova.inspect: %s: %s: %s"):format(path, m.name, perr), "OVF" end
    end
  end
  if not facts then return nil, ("ova.inspect: %s: the archive is empty"):format(path), "OVA" end
  local props = {}
  for _, k in ipairs(facts.property_order) do props[#props + 1] = { key = k, value = facts.properties[k] } end
  local sizes = {}
  for _, m in ipairs(members) do sizes[m.name] = m.size end
  local refs = {}
  for _, ref in ipairs(facts.references) do refs[ref.id or ""] = ref end
  local disks = {}
  for _, d in ipairs(facts.disks) do
    local ref = refs[d.file_ref or ""]
    disks[#disks + 1] = { id = d.disk_id, file = ref and ref.href, file_size = ref and ref.href and sizes[ref.href],
      capacity_bytes = d.capacity_bytes, capacity_gib = d.capacity_bytes and d.capacity_bytes / 1024 ^ 3,
      populated_size = d.populated_size, stream_optimized = d.format == ovf.STREAM_OPTIMIZED }
  end
  local hw = facts.hardware
  return {
    file = path, name = facts.name, annotation = facts.annotation, os = facts.os,
    hardware = { system_type = hw.system_type, cpus = hw.cpus, cores_per_socket = hw.cores_per_socket,
      memory_mb = hw.memory_mb, firmware = hw.firmware, scsi = hw.scsi, nic = hw.nic },
    disks = disks, networks = facts.networks, product = facts.product, properties = props, eula = facts.eula,
    members = members,
  }
end

--- Where each member's data lies in an uncompressed tar (ustar, pax or GNU
--- long names): {name, offset, size}, so a disk can be streamed straight
--- from the OVA (http body_offset/body_length) without extracting it.
--- Refused: a path that is not a regular file (EFTYPE), sparse members
--- (SPARSE), sizes that are negative or past the end of the file.
--- `M.MAX_OVF` bounds what a caller should read of a descriptor member.
---@param path string
---@return table[]|nil members, string? err, string? code
function M.members(path)
  local st, serr, scode = fs.stat(path)
  if not st then return nil, "ova.members: " .. tostring(serr):gsub("^fs%.stat: ", ""), scode end
  local ok, rerr, rcode = fs.check_regular(path, "OVA")
  if not ok then return nil, "ova.members: " .. rerr, rcode end
  local f, oerr = io.open(path, "rb")
  if not f then return nil, "ova.members: " .. tostring(oerr), "ENOENT" end
  local out, pending, pos = {}, {}, 0
  local function bad(why, code)
    f:close()
    return nil, ("ova.members: %s: %s at byte %d"):format(path, why, pos), code or "NOT_TAR"
  end
  while true do
    local h = f:read(512)
    if not h or #h < 512 then return bad("truncated header") end
    if h == ("\0"):rep(512) then break end
    if h:sub(258, 262) ~= "ustar" then return bad("not a ustar/pax header") end
    local size_field = h:sub(125, 136)
    local size
    if size_field:byte(1) >= 0x80 then -- GNU base-256
      -- 0x80 then a positive big-endian number; 0xff (negative) and sizes
      -- past the file are refused (a negative size would seek backwards)
      if size_field:byte(1) ~= 0x80 or size_field:sub(2, 4) ~= "\0\0\0" then
        return bad("invalid base-256 member size", "ARCHIVE")
      end
      size = 0
      for i = 5, 12 do size = size * 256 + size_field:byte(i) end
    else
      size = tonumber(size_field:match("^[%s0]*([0-7]*)"), 8) or 0
    end
    if size < 0 or size > st.size then return bad("member size past the end of the file", "ARCHIVE") end
    local kind = h:sub(157, 157)
    if kind == "S" then return bad("a sparse tar member (GNU sparse); OVA members must be plain files", "SPARSE") end
    local name = h:sub(1, 100):match("^[^%z]*")
    local prefix = h:sub(346, 500):match("^[^%z]*")
    if prefix ~= "" then name = prefix .. "/" .. name end
    local data = pos + 512
    local padded = (size + 511) // 512 * 512
    if kind == "x" or kind == "L" then
      if size > MAX_MF then return bad("extended header larger than " .. MAX_MF .. " bytes", "ARCHIVE") end
      local body = f:read(size) or ""
      if kind == "L" then
        pending.path = body:match("^[^%z]*")
      else
        for rec in body:gmatch("%d+ ([^\n]*)\n") do
          local k, v = rec:match("^([^=]+)=(.*)$")
          if not k then
            return bad("malformed pax header record " .. M.shown(rec:sub(1, 40)), "ARCHIVE")
          elseif k == "path" then
            pending.path = v
          elseif k == "size" then
            pending.size = v:match("^%d+$") and math.tointeger(tonumber(v))
            if not pending.size or pending.size > st.size then
              return bad("invalid pax size " .. M.shown(v:sub(1, 40)), "ARCHIVE")
            end
          elseif k:match("^GNU%.sparse%.") then
            return bad("a sparse tar member (pax GNU.sparse); OVA members must be plain files", "SPARSE")
          end
        end
      end
      f:seek("set", data + padded)
    else
      size = pending.size or size
      padded = (size + 511) // 512 * 512
      local unsafe = M.unsafe_name(pending.path or name)
      if unsafe then
        f:close()
        return nil, unsafe_error("ova.members", path, pending.path or name, unsafe)
      end
      if data + size > st.size then return bad("member data past the end of the file (truncated OVA)", "TRUNCATED") end
      if kind == "0" or kind == "\0" then
        out[#out + 1] = { name = pending.path or name, offset = data, size = size }
      end
      pending = {}
      if not f:seek("set", data + padded) then return bad("cannot seek") end
    end
    pos = data + padded
  end
  f:close()
  return out
end

return M
