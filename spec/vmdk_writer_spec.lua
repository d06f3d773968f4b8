-- capil's streamOptimized VMDK writer (capil.core.vmdkw through vmdk.write),
-- checked against qemu-img as the peer: `check` passes, `compare` finds the
-- VMDK identical to its source, `info` sees streamOptimized and the size,
-- and the grain tables read back here name exactly the grains that
-- `qemu-img map` reports allocated.
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local proc = require("capil.sys.proc")
local vmdk = require("capil.format.vmdk")
local vmdkw = require("capil.core.vmdkw")
local capil = require("spec.support.capil")
local vmdk_stream = require("spec.support.vmdk_stream")
local runtime = require("capil.core.runtime")

local GRAIN = 65536
local MiB = 1024 * 1024

local disks = require("support.disk")
local run, put, sparse = disks.run, disks.put, disks.sparse

-- The set of allocated grain indexes of a stream-optimized VMDK, and its
-- header, after spec.support.vmdk_stream's check of every marker.
local function read_structure(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  local s = assert(vmdk_stream.read(data))
  local grains = {}
  for g in pairs(s.grains) do grains[g] = true end
  return grains, s.head
end

-- Grains qemu-img map reports as holding data.
local function mapped_grains(path)
  local grains = {}
  for _, e in ipairs(json.decode(run({ "qemu-img", "map", "--output=json", path }))) do
    if e.data then
      for g = e.start // GRAIN, (e.start + e.length - 1) // GRAIN do grains[g] = true end
    end
  end
  return grains
end

describe("vmdk writer #unit #qemuimg", function()
  local tmp, level

  setup(function()
    level = log.level()
    log.configure({ level = "warn" })
    tmp = assert(fs.tempdir({ prefix = "capil-vmdkw-spec", keep = true }))
  end)

  teardown(function()
    log.configure({ level = level })
    if tmp then assert(fs.remove(tmp, { recursive = true })) end
  end)

  -- Writes src to a VMDK and holds it to the peers; returns the result.
  local function check(src, name, opts)
    local out = tmp .. "/" .. name .. ".vmdk"
    local r, err = vmdk.write(src, out, opts or { jobs = 2 })
    assert(r, err)
    assert.equal(fs.stat(out).size, r.bytes)
    -- the digest taken as it was written is the file's
    assert.equal(assert(hash.file(out, "sha256")), r.sha256)
    assert.truthy(run({ "qemu-img", "check", out }):find("No errors were found", 1, true))
    assert.truthy(run({ "qemu-img", "compare", "-f", "raw", "-F", "vmdk", src, out }):find("identical", 1, true))
    local info = json.decode(run({ "qemu-img", "info", "--output=json", out }))
    assert.equal("vmdk", info.format)
    assert.equal("streamOptimized", info["format-specific"].data["create-type"])
    local size = fs.stat(src).size
    assert.equal((size + 511) // 512 * 512, info["virtual-size"])
    local grains = read_structure(out)
    assert.same(mapped_grains(out), grains)
    local head = assert(vmdk.read_header(out))
    assert.is_true(head.stream_optimized, vmdk.not_stream_optimized(head))
    local left = {}
    for _, f in ipairs(fs.list(tmp)) do if f:find("%.part%.") then left[#left + 1] = f end end
    assert.same({}, left)
    return r, out, grains
  end

  it("skips holes and all-zero grains, keeps data across grain tables", function()
    local src = tmp .. "/holes.raw"
    sparse(src, 80 * MiB)
    put(src, 0, hash.random(3 * GRAIN))
    put(src, 5 * MiB, ("\0"):rep(4 * GRAIN))               -- written zeros, not a hole
    put(src, 5 * MiB + 4 * GRAIN, ("x"):rep(100))           -- a grain with a little data
    put(src, 70 * MiB + 12345, hash.random(GRAIN))          -- third grain table, straddling
    local r, _, grains = check(src, "holes")
    assert.equal(3 + 1 + 2, r.grains)
    assert.equal(4, r.zero_grains)                          -- the zeros were read, not written
    assert.is_nil(grains[80]) -- 5 MiB: zeros
    assert.is_true(grains[80 + 4])
    assert.is_true(grains[70 * 16] and grains[70 * 16 + 1])
  end)

  it("writes a random disk with a size that is no multiple of the grain or sector", function()
    local src = tmp .. "/odd.raw"
    local f = assert(io.open(src, "wb"))
    f:write(hash.random(5 * GRAIN + 777))
    f:close()
    local r = check(src, "odd", { jobs = 3 })
    assert.equal(6, r.grains)
  end)

  it("bounds a stream by its size as a file whose every grain holds data", function()
    local src = tmp .. "/full.raw"
    local f = assert(io.open(src, "wb"))
    f:write(hash.random(3 * GRAIN + 100))
    f:close()
    local file_bound = assert(vmdkw.bound(src))
    assert.same(file_bound, assert(vmdkw.bound(3 * GRAIN + 100)))
    assert.equal(4, file_bound.data_grains)
    -- the writer's output never exceeds it
    local r = assert(vmdkw.write(src, tmp .. "/full.vmdk"))
    assert.is_true(r.bytes <= file_bound.max_bytes)
    assert.has_error(function() vmdkw.bound(-1) end, "vmdkw.bound: a size must be 0 or more")
  end)

  it("writes a one-grain disk and the same bytes whatever the jobs", function()
    local src = tmp .. "/one.raw"
    local f = assert(io.open(src, "wb"))
    f:write(("capil"):rep(GRAIN // 5), ("\1"):rep(GRAIN % 5))
    f:close()
    local r, out = check(src, "one", { jobs = 1 })
    assert.equal(1, r.grains)
    local a = io.open(out, "rb"):read("a")
    local _, out2 = check(src, "one2", { jobs = 4 })
    local b = io.open(out2, "rb"):read("a")
    -- identical but for the descriptor (a random CID, the file's name)
    assert.is_true(a:sub(1, 512) == b:sub(1, 512) and a:sub(65537) == b:sub(65537), "the bytes depend on jobs")
  end)

  it("writes an empty disk that qemu-img treats as it treats its own", function()
    local src = tmp .. "/empty.raw"
    sparse(src, 0)
    local out = tmp .. "/empty.vmdk"
    local r = assert(vmdk.write(src, out, { jobs = 2 }))
    assert.equal(0, r.grains)
    local grains = read_structure(out)
    assert.same({}, grains)
    assert.is_true(assert(vmdk.read_header(out)).stream_optimized)
    -- qemu reads a capacity-0 extent as a descriptor file and refuses a
    -- streamOptimized one: it fails alike on the empty disk it writes itself
    local theirs = tmp .. "/empty-qemu.vmdk"
    local q = assert(proc.run({ argv = { "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
      src, theirs }, timeout = 30 }))
    local a = assert(proc.run({ argv = { "qemu-img", "info", out }, timeout = 30 }))
    local why = "Unsupported image type 'streamOptimized'"
    assert.truthy(q.stderr:find(why, 1, true), q.stderr)
    assert.truthy(a.stderr:find(why, 1, true), a.stderr)
    fs.remove(theirs)
  end)

  it("writes the descriptor vSphere reads, with qemu's geometry", function()
    local src = tmp .. "/geo.raw"
    sparse(src, 3 * 1024 * MiB)
    put(src, 0, "boot")
    local _, out = check(src, "geo", { jobs = 2, adapter_type = "ide", hwversion = 13 })
    local theirs = tmp .. "/geo-qemu.vmdk"
    run({ "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized,adapter_type=ide,hwversion=13",
      src, theirs })
    local mine, qemu = assert(vmdk.read_header(out)), assert(vmdk.read_header(theirs))
    for _, key in ipairs({ "ddb.virtualHWVersion", "ddb.geometry.cylinders", "ddb.geometry.heads",
      "ddb.geometry.sectors", "ddb.adapterType", "ddb.toolsVersion" }) do
      local pat = key:gsub("%.", "%%.") .. ' = "([^"]*)"'
      assert.equal(qemu.descriptor:match(pat), mine.descriptor:match(pat), key)
    end
    assert.truthy(mine.descriptor:find('RW 6291456 SPARSE "geo.vmdk"', 1, true))
    assert.equal(6291456 // (255 * 63), vmdkw.cylinders(6291456, "lsilogic"))
    local _, out2 = check(src, "geo2", { jobs = 2 })
    local d = assert(vmdk.read_header(out2))
    assert.truthy(d.descriptor:find('ddb.adapterType = "lsilogic"', 1, true))
  end)

  it("reads a qcow2 through qemu-img and leaves no temp", function()
    local src = tmp .. "/q.raw"
    sparse(src, 10 * MiB)
    put(src, 2 * MiB, hash.random(GRAIN + 1))
    local q = tmp .. "/q.qcow2"
    run({ "qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, q })
    local out = tmp .. "/q.vmdk"
    local r = assert(vmdk.write(q, out))
    assert.equal(2, r.grains)
    assert.truthy(run({ "qemu-img", "compare", "-f", "raw", "-F", "vmdk", src, out }):find("identical", 1, true))
    for _, f in ipairs(fs.list(tmp)) do assert.falsy(f:find("%.part%."), f) end
  end)

  it("reads any format qemu-img reads through the temp: a Workstation (monolithicSparse) VMDK", function()
    local src = tmp .. "/ws.raw"
    sparse(src, 10 * MiB)
    put(src, 3 * MiB, hash.random(GRAIN * 2))
    local ws = tmp .. "/ws-sparse.vmdk"
    run({ "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", src, ws })
    -- probed by its magic, and named
    for i, opts in ipairs({ {}, { src_format = "vmdk" } }) do
      local out = ("%s/ws%d.vmdk"):format(tmp, i)
      local r = assert(vmdk.write(ws, out, opts))
      assert.equal(2, r.grains)
      assert.truthy(run({ "qemu-img", "compare", "-f", "raw", "-F", "vmdk", src, out }):find("identical", 1, true))
      assert.truthy(assert(vmdk.read_header(out)).stream_optimized)
    end
    for _, f in ipairs(fs.list(tmp)) do assert.falsy(f:find("%.part%."), f) end
    -- a format qemu-img cannot read there: its message, the source named, no temp left
    local _, err, code = vmdk.write(src, tmp .. "/bad.vmdk", { src_format = "qcow2" })
    assert.equal("QEMU_IMG", code)
    assert.truthy(err:find("vmdk.write: " .. src .. ": qemu-img failed", 1, true), err)
    for _, f in ipairs(fs.list(tmp)) do assert.falsy(f:find("%.part%."), f) end
    assert.has_error(function() vmdk.write(src, tmp .. "/y.vmdk", { src_format = "-O" }) end)
  end)

  it("fails naming the file, with the error triple, and refuses misuse", function()
    local _, err, code = vmdk.write(tmp .. "/absent.raw", tmp .. "/x.vmdk")
    assert.equal("ENOENT", code)
    assert.truthy(err:find("absent.raw", 1, true))
    local src = tmp .. "/small.raw"
    sparse(src, GRAIN)
    local _, err2, code2 = vmdk.write(src, tmp .. "/no/such/dir/x.vmdk")
    assert.equal("ENOENT", code2)
    assert.truthy(err2:find("no/such/dir/x.vmdk", 1, true))
    local _, err3, code3 = vmdk.write(tmp, tmp .. "/d.vmdk")
    assert.equal("EINVAL", code3)
    assert.truthy(err3:find("not a regular file", 1, true))
    for _, f in ipairs(fs.list(tmp)) do assert.falsy(f:find("%.part%."), f) end
    assert.has_error(function() vmdk.write(src, tmp .. "/y.vmdk", { job = 2 }) end,
      "vmdk.write: unknown option 'job'")
    assert.has_error(function() vmdkw.write(src, tmp .. "/y.vmdk", { adapter_type = "nvme" }) end)
    assert.has_error(function() vmdkw.write(src, tmp .. "/y.vmdk", { jobs = 0 }) end)
  end)

  describe("the command", function()
    it("has help and converts", function()
      local h = capil.run({ "help", "vmdk" })
      assert.equal(0, h.code)
      assert.truthy(h.stdout:find("vmdk convert SRC OUT.vmdk", 1, true))
      local src = tmp .. "/cmd.raw"
      sparse(src, 4 * MiB)
      put(src, MiB, "data")
      local r = capil.run({ "vmdk", "convert", src, tmp .. "/cmd.vmdk", "--jobs", "2", "--adapter-type", "buslogic",
        "--hwversion", "17" })
      assert.equal(0, r.code, r.stderr)
      local info = assert(vmdk.read_header(tmp .. "/cmd.vmdk"))
      assert.truthy(info.descriptor:find('ddb.adapterType = "buslogic"', 1, true))
      assert.truthy(info.descriptor:find('ddb.virtualHWVersion = "17"', 1, true))
      local bad = capil.run({ "vmdk", "convert", src, tmp .. "/x.vmdk", "--adapter-type", "nvme" })
      assert.equal(2, bad.code)
      assert.truthy(bad.stderr:find("nvme", 1, true))
    end)

    it("refuses a FIFO source at once (fuzz/corpus/vmdkw/regress-fifo-open-blocks)", function()
      local fifo = tmp .. "/src.fifo"
      run({ "mkfifo", fifo })
      local out = tmp .. "/fifo.vmdk"
      -- both the format sniffing and the writer's open waited for a writer
      local r = capil.run({ "vmdk", "convert", fifo, out }, { timeout = 10 })
      assert.equal(1, r.code, r.stderr)
      assert.truthy(r.stderr:find(fifo .. ": not a regular file or block device", 1, true), r.stderr)
      local _, err, code = vmdkw.write(fifo, out, { jobs = 1 })
      assert.equal("EINVAL", code)
      assert.truthy(err:find("not a regular file", 1, true))
      assert.is_false(fs.exists(out))
      for _, f in ipairs(fs.list(tmp)) do assert.falsy(f:find("%.part%."), f) end
      fs.remove(fifo)
    end)

    it("stops on SIGINT and leaves no temp and no output", function()
      local src = tmp .. "/big.raw"
      local f = assert(io.open(src, "wb"))
      for _ = 1, 96 do f:write(hash.random(MiB)) end
      f:close()
      local out = tmp .. "/big.vmdk"
      local p = assert(proc.spawn({ argv = { capil.exe, "vmdk", "convert", src, out, "--jobs", "1" },
        stdout = "null", stderr = "null" }))
      local part = ("%s.part.%d"):format(out, p.pid)
      local t0 = runtime.now()
      while not fs.exists(part) and runtime.now() - t0 < 20 do runtime.sleep(0.01) end
      assert.is_true(fs.exists(part), "the writer did not start")
      assert(p:kill("INT"))
      local st = assert(p:wait({ timeout = 20 }))
      assert.equal(130, st.code)
      assert.is_false(fs.exists(part))
      assert.is_false(fs.exists(out))
      p:close()
    end)
  end)
end)
