--- fuzz/targets.lua — what each libFuzzer harness does with one input
--- (fuzz/fuzz.c calls targets[name](data) in one long-lived Lua state).
--- Returning, or raising a clean message, is a rejected or accepted input;
--- an internal-looking error or a failed `invariant` is a finding.
local T = {}

local function invariant(cond, fmt, ...)
  if not cond then error("fuzz invariant: " .. fmt:format(...), 0) end
end

-- Harness limits: an endless loop in a recipe costs 1 M instructions, not
-- 10 M, and a recipe may not hold more than 64 MiB.
local sandbox = require("capil.build.sandbox")
sandbox.BUDGET = 1000000
sandbox.MEMORY = 64 * 1024 * 1024

-- A temp file per process, for the readers that take a path.
local TMP = os.tmpname()
local function temp_file(data)
  local f = assert(io.open(TMP, "wb"))
  f:write(data)
  f:close()
  return TMP
end

local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local loader = require("capil.build.loader")
local BACKENDS = require("capil.backend").names()
table.sort(BACKENDS)

--- (1) recipe text → sandboxed load → config → plan (what `capil validate`
--- does), run from the source tree's root (recipes/, recipes/config/).
function T.recipe(data)
  local r, errs = recipe.load("fuzz/input.lua", { source = data, dir = "recipes" })
  if not r then
    invariant(type(errs) == "table" and #errs > 0, "recipe.load: nil without errors")
    for _, e in ipairs(errs) do invariant(type(e) == "string", "recipe.load: a non-string error") end
    return
  end
  local backend = BACKENDS[#data % #BACKENDS + 1]
  local cfg, cerrs = config.resolve(r, { backend = backend, config_dir = "recipes/config",
    getenv = function() return nil end })
  if not cfg then
    invariant(type(cerrs) == "table" and #cerrs > 0, "config.resolve: nil without errors")
    return
  end
  local p, perrs = loader.plan(cfg, backend, { recipes_dir = "recipes", cache_dir = "/nonexistent/cache" })
  if not p then invariant(type(perrs) == "table" and #perrs > 0, "plan.resolve: nil without errors") end
end

local json = require("capil.sys.json")

--- (2) JSON decode; a decoded value encodes, and that decodes to the same.
function T.json(data)
  local v, err = json.decode(data)
  if v == nil then
    invariant(type(err) == "string", "json.decode: nil without a message")
    return
  end
  local text = json.encode(v, { sort_keys = true })
  local v2, err2 = json.decode(text)
  invariant(v2 ~= nil, "json.decode of json.encode's output failed: %s (%q)", tostring(err2), text:sub(1, 200))
  local text2 = json.encode(v2, { sort_keys = true })
  invariant(text == text2, "encode/decode round trip differs: %q vs %q", text:sub(1, 200), text2:sub(1, 200))
end

local xml = require("capil.sys.xml")

local function walk_xml(el, depth)
  invariant(xml.is_element(el), "a parsed element without a name")
  xml.text(el)
  if el.nsmap then xml.xsi_type(el) end
  for _, c in ipairs(xml.children(el)) do walk_xml(c, depth + 1) end
end

--- (3) XML parse (with and without namespaces), walk, write, parse again.
function T.xml(data)
  local namespaces = #data % 2 == 0
  local root, err = xml.parse(data, { namespaces = namespaces })
  if not root then
    invariant(type(err) == "string", "xml.parse: nil without a message")
    return
  end
  walk_xml(root, 0)
end

local bootcmd = require("capil.build.bootcmd")

--- (4) boot command parse, then every encoder.
function T.bootcmd(data)
  bootcmd.duration(data)
  local events, err = bootcmd.parse(data)
  if not events then
    invariant(type(err) == "string", "bootcmd.parse: nil without a message")
    return
  end
  bootcmd.summary(events)
  bootcmd.to_usb(events)
  bootcmd.to_qmp(events)
  bootcmd.to_rfb(events)
end

local ova = require("capil.format.ova")

--- (5) an OVA (tar) file: the member index and the streaming verify.
function T.ova(data)
  local path = temp_file(data)
  local members, merr = ova.members(path)
  if not members then invariant(type(merr) == "string", "ova.members: nil without a message") end
  local report, verr = ova.verify(path)
  invariant(report ~= nil, "ova.verify failed on a readable file: %s", tostring(verr))
  invariant(type(report.problems) == "table", "ova.verify: no problems list")
  invariant(report.ok == (#report.problems == 0), "ova.verify: ok=%s with %d problems",
    tostring(report.ok), #report.problems)
end

local ovf = require("capil.format.ovf")

--- (6) OVF descriptor parse.
function T.ovf(data)
  local facts, err = ovf.parse(data)
  if not facts then invariant(type(err) == "string", "ovf.parse: nil without a message") end
end

local vmdk = require("capil.format.vmdk")

--- (7) VMDK header (and descriptor) from the bytes, and from a file.
function T.vmdk(data)
  local info, err = vmdk.parse_header(data)
  if not info then
    invariant(type(err) == "string", "vmdk.parse_header: nil without a message")
  else
    vmdk.not_stream_optimized(info)
  end
  local finfo, ferr = vmdk.read_header(temp_file(data))
  if not finfo then invariant(type(ferr) == "string", "vmdk.read_header: nil without a message") end
end

local fs = require("capil.sys.fs")
local fuzz = require("capil.fuzz")
local runtime = require("capil.core.runtime")
-- the reader the writer's spec uses too (test support, not the library)
local vmdk_stream = dofile((debug.getinfo(1, "S").source:match("^@(.*)/fuzz/[^/]*$") or ".")
  .. "/spec/support/vmdk_stream.lua")

local GRAIN = 65536
local ZERO = ("\0"):rep(GRAIN)
local MAX_SIZE = 96 * 1024 * 1024 + 4095 -- three grain tables' span, and a bit
local MAX_DATA = 1280 * 1024             -- bytes written into the source: 20 grains
local LEVELS = { -1, 1, 0, 9 }
-- tmpfs when there is one: the writer fsyncs its output
local TMP_PARENT = fs.exists("/dev/shm") and "/dev/shm" or nil

local function is_zero(s) return s == nil or not s:find("[^%z]") end

-- The source's bytes per grain (nil: all zeros), writes applied in order.
local function model_write(model, off, content)
  local i = 1
  while i <= #content do
    local g, a = off // GRAIN, off % GRAIN
    local k = math.min(GRAIN - a, #content - i + 1)
    local old = model[g] or ZERO
    model[g] = old:sub(1, a) .. content:sub(i, i + k - 1) .. old:sub(a + k + 1)
    off, i = off + k, i + k
  end
end

local function no_part(dir)
  for _, f in ipairs(assert(fs.list(dir))) do
    invariant(not f:find("%.part"), "a temp file was left behind: %s", f)
  end
end

--- (8) capil's VMDK writer (capil.core.vmdkw through vmdk.write) on a source
--- disk the input describes:
---   byte 0     jobs-1 (bits 0-1), kind (bits 2-4), zlib level (bits 5-6)
---   bytes 1-4  size (u32 LE, modulo MAX_SIZE+1)
---   bytes 5-8  kind 3: bit 31 set: the bytes the pipe carries (modulo
---              size+1), else all; bits 8-23: its write size (modulo
---              70000, plus 1000: short reads, not a syscall a byte);
---              kind 4: the size the source is cut to at its first read
---              (modulo size+1);
---              kind 6: which non-regular source; kind 7: what is at OUT
---   then       extents until the end: op u8 (bits 0-1: 0 literal bytes
---              following (at most 4096), 1 written zeros, 2 a fill byte
---              following, 3 noise; bit 2: length * 256), offset u32
---              (modulo size), length u16; clipped to the size and
---              MAX_DATA in all.
--- Kinds 0-2: a sparse regular file; 3: the same read through a pipe as a
--- stream {fd, size} (ssh's session:stream), fed by a thread in writes of
--- odd sizes and possibly ending early (then: code SHORT, no output); 4: the same file, truncated by a racing
--- thread once read (shorter than the size the writer took); 5: a FIFO;
--- 6: a directory, /dev/null, a dangling symlink, a symlink to a FIFO or
--- nothing; 7: a regular file but OUT a directory or an existing file.
--- Checked: a refusal is `nil, msg, code`, no ".part" file is ever left, and
--- a VMDK passes vmdk_stream.read with every grain inflated: its grain
--- tables name exactly the source's non-zero grains, each equal to the
--- source's bytes (for kind 4: as read while the cut raced the reads).
function T.vmdkw(data)
  if #data < 9 then return end
  local b0 = data:byte(1)
  local jobs, kind, level = (b0 & 3) + 1, (b0 >> 2) & 7, LEVELS[((b0 >> 5) & 3) + 1]
  local size = string.unpack("<I4", data, 2) % (MAX_SIZE + 1)
  local aux = string.unpack("<I4", data, 6)
  local dir = assert(fs.tempdir({ parent = TMP_PARENT, prefix = "capil-fuzz-vmdkw", keep = true }))
  local ok, err = pcall(function()
    local src, out = dir .. "/src.raw", dir .. "/out.vmdk"
    local model, cut = {}, nil
    if kind == 5 then
      assert(fuzz.mkfifo(src))
    elseif kind == 6 then
      local which = aux % 5
      if which == 0 then assert(fs.mkdir(src))
      elseif which == 1 then src = "/dev/null"
      elseif which == 2 then assert(fuzz.symlink(dir .. "/none", src))
      elseif which == 3 then
        assert(fuzz.mkfifo(dir .. "/fifo"))
        assert(fuzz.symlink(dir .. "/fifo", src))
      end -- 4: no file at all
    else
      assert(fs.truncate(src, size))
      local f = assert(io.open(src, "r+b"))
      local pos, budget = 10, MAX_DATA
      while pos + 6 <= #data and size > 0 and budget > 0 do
        local op, off, len = string.unpack("<BI4I2", data, pos)
        pos = pos + 7
        off = off % size
        if op & 4 ~= 0 then len = len * 256 end
        local t = op & 3
        local content
        if t == 0 then
          content = data:sub(pos, pos + math.min(len, 4096) - 1)
          pos = pos + #content
        elseif t == 1 then
          content = ("\0"):rep(math.min(len, size - off, budget))
        elseif t == 2 then
          content = (data:sub(pos, pos) .. "\0"):sub(1, 1):rep(math.min(len, size - off, budget))
          pos = pos + 1
        else
          content = fuzz.noise(off ~ len, math.min(len, size - off, budget))
        end
        content = content:sub(1, math.min(size - off, budget))
        if #content > 0 then
          f:seek("set", off)
          f:write(content)
          model_write(model, off, content)
          budget = budget - #content
        end
      end
      f:close()
      if kind == 7 then
        if aux & 1 == 0 then assert(fs.mkdir(out)) else assert(fs.write(out, "old")) end
      end
      if kind == 4 then cut = aux % (size + 1) end
    end

    local racer = cut and fuzz.truncate_on_read(src, cut)
    local t0 = runtime.now()
    local r, werr, code, short
    if kind == 3 then
      local count = aux & 0x80000000 ~= 0 and aux % (size + 1) or size
      short = count < size
      local fd, feeder = fuzz.feed_pipe(src, count, ((aux >> 8) & 0xffff) % 70000 + 1000)
      r, werr, code = vmdk.write({ fd = fd, size = size, name = src }, out, { jobs = jobs, level = level })
      feeder:finish()
    else
      -- a source that is not regular goes through the format sniffing too (a
      -- regular one may start with qcow2's magic: no qemu-img here)
      r, werr, code = vmdk.write(src, out, { jobs = jobs, level = level,
        src_format = (kind < 5 or kind == 7) and "raw" or nil })
    end
    local took = runtime.now() - t0
    if racer then racer:finish() end
    no_part(dir)
    if short then
      invariant(r == nil and code == "SHORT", "a stream that ended early gave %s (%s)", tostring(werr), tostring(code))
      invariant(not fs.exists(out), "an output after a stream that ended early")
      return
    end
    -- libFuzzer's SIGALRM ends a blocked open with EINTR: a refusal must be
    -- prompt, and nothing here interrupts the writer
    invariant(code ~= "EINTR", "vmdk.write was interrupted (blocked %.1f s?): %s", took, tostring(werr))
    if kind == 5 or kind == 6 then invariant(took < 2, "refusing a kind-%d source took %.1f s", kind, took) end
    local refuse = kind == 5 or kind == 6 or kind == 7 and aux & 1 == 0
    if refuse then
      invariant(r == nil, "vmdk.write accepted a kind-%d source or output", kind)
    end
    if not r then
      invariant(type(werr) == "string" and type(code) == "string",
        "vmdk.write: nil without a message and code (%s, %s)", tostring(werr), tostring(code))
      invariant(refuse, "vmdk.write failed on a regular source: %s (%s)", werr, code)
      if kind ~= 7 then invariant(not fs.exists(out), "an output after a failure: %s", werr) end
      return
    end

    local fh = assert(io.open(out, "rb"))
    local vm = fh:read("a")
    fh:close()
    local s, serr = vmdk_stream.read(vm, { inflate = fuzz.inflate })
    invariant(s, "the VMDK does not read back: %s", tostring(serr))
    invariant(s.head.capacity_sectors == (size + 511) // 512, "capacity %d sectors for %d bytes",
      s.head.capacity_sectors, size)
    invariant(r.size == size and r.bytes == #vm and r.grains == s.count,
      "result {size=%d, bytes=%d, grains=%d}, file: size %d, %d bytes, %d grains",
      r.size, r.bytes, r.grains, size, #vm, s.count)
    local info = vmdk.read_header(out)
    invariant(info and info.stream_optimized, "vmdk.read_header: not streamOptimized")
    local seen = {}
    for g in pairs(s.grains) do seen[g] = true end
    for g in pairs(model) do seen[g] = true end
    for g in pairs(seen) do
      local want, got = model[g] or ZERO, s.grains[g] and s.grains[g].data
      -- kind 4: the bytes before the cut are the source's whatever the
      -- timing; a grain read across the cut is the source's bytes up to
      -- some point past it, zeros after (a short read: "the file shrank")
      local keep = cut and math.max(0, math.min(GRAIN, cut - g * GRAIN))
      if got then
        invariant(#got == GRAIN, "grain %d inflates to %d bytes", g, #got)
        invariant(not is_zero(got), "grain %d is written but all zeros", g)
        if got ~= want then
          local last = got:find("[^%z]%z*$") -- the last non-zero byte
          invariant(cut and got:sub(1, last) == want:sub(1, last) and is_zero(want:sub(last + 1, keep)),
            "grain %d differs from the source", g)
        end
      else
        invariant(is_zero(want) or cut and is_zero(want:sub(1, keep)), "grain %d of the source is missing", g)
      end
    end
  end)
  fs.remove(dir, { recursive = true })
  if not ok then error(err, 0) end
end

return T
