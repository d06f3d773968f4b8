-- OVA packing, verification and inspection against real tools: qemu-img
-- makes the disks (a 40 GiB sparse raw disk with random data, converted to
-- streamOptimized: a few MiB), GNU tar, sha256sum, xmllint and qemu-img
-- check what capil wrote. Needs qemu-utils and libxml2-utils.
local archive = require("capil.core.archive")
local build_options = require("capil.build.loader")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local runtime = require("capil.core.runtime")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local manifest = require("capil.format.manifest")
local ova = require("capil.format.ova")
local ovf = require("capil.format.ovf")
local proc = require("capil.sys.proc")
local template = require("capil.util.template")
local vmdk = require("capil.format.vmdk")
local capil = require("support.capil")

local NAME = "ubuntu-2004-kube-v1.16.14"
local GiB = 1024 ^ 3
local VARS = { build_timestamp = "1600000000", build_date = "2020-09-13T12:26:40Z", capil_version = runtime.version }

-- Runs a command that must succeed; returns its stdout.
local function run(argv, opts)
  local r = assert(proc.run({ argv = argv, timeout = 60, cwd = opts and opts.cwd }))
  assert(r.code == 0, table.concat(argv, " ") .. " failed: " .. r.stderr)
  return r.stdout
end

local function step(p, id)
  for _, s in ipairs(p.steps) do if s.id == id then return s end end
end

-- The plan's `ova` step for ubuntu-2004 with placeholders filled as the
-- executor fills them, pointed at `dir`.
local function plan_step(dir, disk, disk_mb)
  local _, _, p = build_options.load("ubuntu-2004", { var = { "disk_size=" .. (disk_mb or 40960) } })
  assert(p, "plan did not resolve")
  local s = step(p, "ova")
  for k, v in pairs(s.properties) do s.properties[k] = assert(template.render(v, VARS)) end
  s.ova = fs.join(dir, NAME .. ".ova")
  s.ovf, s.mf, s.sha256 = nil, nil, nil
  s.disks = { disk }
  s.progress = false
  return s, p
end

-- Writes a tar from {name, data} / {name, file} members (the writer is
-- generic: it puts them in the order given).
local function make_tar(path, members, format)
  local w = assert(archive.writer(path, { format = format }))
  for _, m in ipairs(members) do
    if m.file then assert(w:add_file(m[1], m.file)) else assert(w:add_data(m[1], m.data)) end
  end
  return assert(w:close())
end

-- Member name -> data (kept whole) of a small tar.
local function read_tar(path)
  local r <close> = assert(archive.reader(path))
  local out, order = {}, {}
  while true do
    local m = r:next()
    if not m then break end
    out[m.name] = assert(r:read_member({ keep = 16 * 1024 * 1024 })).data
    order[#order + 1] = m.name
  end
  return out, order
end

local function read_file(path)
  return assert(fs.read(path))
end

local function find(list, pattern)
  for _, s in ipairs(list) do if s:find(pattern) then return s end end
end

describe("ova #ova", function()
  local tmp, raw, disk, disk_sha, sparse_vmdk, level

  setup(function()
    level = log.level()
    log.configure({ level = "warn" })
    tmp = assert(fs.tempdir({ prefix = "capil-ova-spec", keep = true }))
    raw = tmp .. "/src.raw"
    -- 40 GiB virtual, 4 MiB of random data at the start and at 1 GiB
    run({ "qemu-img", "create", "-q", "-f", "raw", raw, "40G" })
    run({ "dd", "if=/dev/urandom", "of=" .. raw, "bs=1M", "count=2", "conv=notrunc", "status=none" })
    run({ "dd", "if=/dev/urandom", "of=" .. raw, "bs=1M", "count=2", "seek=1024", "conv=notrunc", "status=none" })
    fs.mkdir(tmp .. "/src")
    disk = tmp .. "/src/" .. NAME .. "-disk-0.vmdk"
    assert(vmdk.convert(raw, disk, { adapter_type = "lsilogic", hwversion = 15, src_format = "raw" }))
    disk_sha = assert(hash.file(disk))
    sparse_vmdk = tmp .. "/src/sparse.vmdk"
    run({ "qemu-img", "convert", "-f", "raw", "-O", "vmdk", raw, sparse_vmdk })
  end)

  teardown(function()
    log.configure({ level = level })
    if tmp then assert(fs.remove(tmp, { recursive = true })) end
  end)

  local function fresh_dir(name)
    local d = tmp .. "/" .. name
    fs.remove(d, { recursive = true })
    assert(fs.mkdir(d))
    return d
  end

  describe("vmdk", function()
    it("reads the streamOptimized header, capacity and descriptor", function()
      local info = assert(vmdk.read_header(disk))
      assert.is_true(info.stream_optimized)
      assert.equal("streamOptimized", info.create_type)
      assert.equal(40 * GiB, info.capacity)
      assert.equal(40 * GiB / 512, info.capacity_sectors)
      assert.equal(vmdk.COMPRESS_DEFLATE, info.compress_algorithm)
      assert.is_nil(vmdk.not_stream_optimized(info))
      assert.truthy(info.descriptor:find('ddb.adapterType = "lsilogic"', 1, true))
      assert.truthy(info.descriptor:find('ddb.virtualHWVersion = "15"', 1, true))
    end)

    it("says why a disk is not streamOptimized", function()
      local info = assert(vmdk.read_header(sparse_vmdk))
      assert.is_false(info.stream_optimized)
      assert.equal('createType is "monolithicSparse", not "streamOptimized"', vmdk.not_stream_optimized(info))
      local _, err, code = vmdk.read_header(raw)
      assert.equal("NOT_VMDK", code)
      assert.truthy(err:find('no VMDK magic', 1, true))
      local _, err2, code2 = vmdk.read_header(tmp .. "/absent.vmdk")
      assert.equal("ENOENT", code2)
      assert.truthy(err2:find("absent.vmdk", 1, true))
      assert.is_nil(vmdk.parse_header(("\0"):rep(100)))
      local d = assert(vmdk.parse_header('# Disk DescriptorFile\ncreateType="monolithicFlat"\n'))
      assert.is_true(d.descriptor_only)
      assert.truthy(vmdk.not_stream_optimized(d):find("monolithicFlat", 1, true))
    end)

    it("reports a failed conversion with qemu-img's message and leaves no temp", function()
      local dir = fresh_dir("conv")
      local _, err, code = vmdk.convert(tmp .. "/nope.raw", dir .. "/x.vmdk", { timeout = 30 })
      assert.equal("QEMU_IMG", code)
      assert.truthy(err:find("nope.raw", 1, true))
      assert.same({}, fs.list(dir))
      assert.has_error(function() vmdk.convert(raw, dir .. "/x.vmdk", { adaptor = "ide" }) end,
        "vmdk.convert: unknown option 'adaptor'")
    end)

    it("converts what the backends export (a qcow2, their hwversion) with progress, and fails with qemu-img's stderr", function()
      local dir = fresh_dir("conv-backend")
      local q = dir .. "/disk.qcow2"
      run({ "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q })
      local updates, total = 0, nil
      local handle = { update = function(_, done, t)
        updates, total = updates + 1, t
        assert.is_true(done >= 0 and done <= t)
      end }
      local info = assert(vmdk.convert(q, dir .. "/out.vmdk", { adapter_type = "ide", hwversion = 17,
        src_format = "qcow2", timeout = 600, progress = handle }))
      assert.is_true(info.stream_optimized)
      assert.equal(40 * GiB, info.capacity)
      assert.truthy(info.descriptor:find('ddb.adapterType = "ide"', 1, true))
      assert.truthy(info.descriptor:find('ddb.virtualHWVersion = "17"', 1, true))
      assert.is_true(updates > 0)
      assert.equal(fs.stat(q).size, total)
      assert.same({ "disk.qcow2", "out.vmdk" }, fs.list(dir))
      -- probing (no src_format) reads the qcow2 too; progress = true makes its own bar
      assert(vmdk.convert(q, dir .. "/probed.vmdk", { progress = true }))
      -- with progress, qemu-img's stderr still makes the message
      local _, err, code = vmdk.convert(dir .. "/absent.qcow2", dir .. "/y.vmdk", { progress = handle })
      assert.equal("QEMU_IMG", code)
      assert.truthy(err:find("^vmdk%.convert: qemu%-img failed %(exit 1%): .*absent%.qcow2"), err)
      assert.same({ "disk.qcow2", "out.vmdk", "probed.vmdk" }, fs.list(dir))
    end)
  end)

  describe("archive", function()
    it("writes ustar members in order and reads them back with their digests", function()
      local dir = fresh_dir("arch")
      local w = assert(archive.writer(dir .. "/a.tar"))
      local d1 = assert(w:add_data("a.txt", "hello\n", { mtime = 1000, mode = 420 }))
      assert.same({ size = 6, sha256 = hash.digest("sha256", "hello\n") }, d1)
      assert.same({ size = 0, sha256 = hash.digest("sha256", "") }, assert(w:add_data("empty", "")))
      local d2 = assert(w:add_file("disk.vmdk", disk, { sha256 = true }))
      assert.same({ size = fs.stat(disk).size, sha256 = disk_sha }, d2)
      assert.same({ size = fs.stat(disk).size }, assert(w:add_file("again.vmdk", disk)))
      local sum = assert(w:close())
      assert.equal(fs.stat(dir .. "/a.tar").size, sum.size)
      assert.equal(hash.file(dir .. "/a.tar"), sum.sha256)
      assert.same(sum, w:close()) -- closing again gives the same answer
      assert.has_error(function() w:add_data("x", "y") end, "attempt to use a closed archive writer")
      local listing = run({ "tar", "-tvf", dir .. "/a.tar" })
      assert.truthy(listing:match("^%-rw%-r%-%-r%-%- 0/0 +6 1970%-01%-01 %d%d:%d%d a%.txt\n"))

      local r = assert(archive.reader(dir .. "/a.tar", { sha256 = true }))
      local m = assert(r:next())
      assert.same({ name = "a.txt", size = 6, type = "file", mode = 420, mtime = 1000, format = "ustar", index = 1 }, m)
      assert.same({ size = 6, sha256 = d1.sha256, data = "hel", truncated = true }, r:read_member({ keep = 3 }))
      assert.equal("empty", r:next().name)
      assert.equal("disk.vmdk", r:next().name)
      local chunks, n = {}, 0
      while true do
        local c, err = r:read()
        assert.is_nil(err)
        if not c then break end
        n = n + #c
        chunks[#chunks + 1] = c
      end
      assert.equal(fs.stat(disk).size, n)
      assert.equal(disk_sha, hash.digest("sha256", table.concat(chunks)))
      assert.equal("again.vmdk", r:next().name)
      assert.is_nil(r:next())
      assert.is_nil(r:next())
      local whole, total = r:sha256()
      assert.equal(sum.sha256, whole)
      assert.equal(sum.size, total)
      r:close()
      r:close()
      assert.has_error(function() r:next() end, "attempt to use a closed archive reader")
    end)

    it("extracts a member to a file while hashing it", function()
      local dir = fresh_dir("extract")
      make_tar(dir .. "/b.tar", { { "a.ovf", data = "<x/>" }, { "d.vmdk", file = disk } })
      local r <close> = assert(archive.reader(dir .. "/b.tar"))
      r:next()
      r:next()
      local d = assert(r:read_member({ out_path = dir .. "/out.vmdk" }))
      assert.equal(disk_sha, d.sha256)
      assert.equal(disk_sha, hash.file(dir .. "/out.vmdk"))
      assert.is_nil(d.data)
    end)

    it("refuses a member digest that does not match the expected one", function()
      local dir = fresh_dir("expect")
      local w = assert(archive.writer(dir .. "/c.tar"))
      assert(w:add_file("d.vmdk", disk, { expect_sha256 = disk_sha:upper() }))
      local _, err, code = w:add_file("e.vmdk", disk, { expect_sha256 = ("0"):rep(64) })
      assert.equal("CHECKSUM", code)
      assert.truthy(err:find(disk_sha, 1, true))
      local _, err2 = w:add_data("late", "x")
      assert.truthy(err2:find("earlier failure", 1, true))
      local _, err3 = w:close()
      assert.truthy(err3:find("removed", 1, true))
      assert.is_false(fs.exists(dir .. "/c.tar"))
    end)

    it("removes an unfinished archive on abort, <close> or collection", function()
      local dir = fresh_dir("abort")
      local w = assert(archive.writer(dir .. "/d.tar"))
      assert(w:add_data("a", "b"))
      w:abort()
      w:abort()
      assert.is_false(fs.exists(dir .. "/d.tar"))
      do
        local w2 <close> = assert(archive.writer(dir .. "/e.tar"))
        assert(w2:add_data("a", "b"))
      end
      assert.is_false(fs.exists(dir .. "/e.tar"))
      assert(archive.writer(dir .. "/f.tar"))
      collectgarbage()
      collectgarbage()
      assert.is_false(fs.exists(dir .. "/f.tar"))
    end)

    it("raises on misuse and returns the error triple for the world", function()
      local dir = fresh_dir("misuse")
      assert.has_error(function() archive.writer(dir .. "/x.tar", { fromat = "ustar" }) end,
        "archive.writer: unknown option 'fromat'")
      assert.has_error(function() archive.writer(dir .. "/x.tar", { format = "zip" }) end,
        "archive.writer: unknown format 'zip' (ustar, pax, gnutar)")
      local w = assert(archive.writer(dir .. "/x.tar"))
      assert.has_error(function() w:add_file("a", disk, { progres = true }) end,
        "writer:add_file: unknown option 'progres'")
      assert.has_error(function() w:add_file("a", disk, { expect_sha256 = "abc" }) end,
        "writer:add_file: expect_sha256 must be 64 hex digits")
      local _, err, code = w:add_file("a", dir .. "/missing")
      assert.equal("ENOENT", code)
      assert.truthy(err:find("missing", 1, true))
      local _, _, dcode = w:add_file("a", dir)
      assert.equal("EISDIR", dcode)
      local _, nerr = w:add_data(("n"):rep(200), "x")
      assert.truthy(nerr:find("too long", 1, true), nerr)
      local _, ferr = w:add_file(("n"):rep(200), disk)
      assert.truthy(ferr:find("too long", 1, true), ferr)
      assert(fs.truncate(dir .. "/huge", 8 * GiB)) -- sparse: ustar sizes stop below 8 GiB
      local _, herr = w:add_file("huge", dir .. "/huge")
      assert.truthy(herr:find("File size out of range", 1, true), herr)
      assert(w:add_data("ok", "x")) -- a refused header leaves the archive usable
      assert(w:close())
      assert.equal("ok\n", run({ "tar", "-tf", dir .. "/x.tar" }))
      local _, werr, wcode = archive.writer(dir .. "/no/such/dir.tar")
      assert.equal("ENOENT", wcode)
      assert.truthy(werr:find("archive.writer: " .. dir .. "/no/such/dir.tar", 1, true))
      local r <close> = assert(archive.reader(dir .. "/../extract/b.tar"))
      assert.has_error(function() r:read_member() end, "reader:read_member: no current member (call next() first)")
      assert.has_error(function() r:sha256() end, "reader:sha256: open the reader with {sha256 = true}")
    end)

    it("reads a GNU tar and names its format", function()
      local dir = fresh_dir("gnu")
      fs.write(dir .. "/a.txt", "x")
      run({ "tar", "--format=gnu", "-cf", dir .. "/g.tar", "-C", dir, "a.txt" })
      local r <close> = assert(archive.reader(dir .. "/g.tar"))
      assert.equal("gnu", r:next().format)
    end)

    it("fails cleanly on files that are not tar archives or are cut short", function()
      local dir = fresh_dir("bad")
      fs.write(dir .. "/empty", "")
      fs.write(dir .. "/random", hash.random(5000))
      local _, e1, c1 = archive.reader(dir .. "/empty")
      assert.equal("NOT_TAR", c1)
      assert.truthy(e1:find("archive.reader: " .. dir .. "/empty", 1, true))
      local _, _, c2 = archive.reader(dir .. "/random")
      assert.equal("NOT_TAR", c2)
      make_tar(dir .. "/t.tar", { { "a", data = "x" }, { "d.vmdk", file = disk } })
      local t = read_file(dir .. "/t.tar")
      fs.write(dir .. "/cut", t:sub(1, 100000))
      local r <close> = assert(archive.reader(dir .. "/cut"))
      assert(r:next())
      assert(r:read_member())
      assert(r:next())
      local _, e3, c3 = r:read_member()
      assert.equal("TRUNCATED", c3)
      assert.truthy(e3:find("member 2: Truncated tar archive", 1, true), e3)
      local _, e4, c4 = r:next() -- the failure sticks
      assert.equal("TRUNCATED", c4)
      assert.equal(e3, e4)
    end)
  end)

  describe("members", function()
    it("gives each member's data offset in ustar, pax and GNU tars, read back byte for byte", function()
      local d = fresh_dir("members")
      local long = ("n"):rep(120) .. ".ovf"
      assert(fs.write(d .. "/" .. long, ("<ovf/>"):rep(100)))
      run({ "dd", "if=/dev/urandom", "of=" .. d .. "/disk-0.vmdk", "bs=1000", "count=70", "status=none" })
      for _, format in ipairs({ "ustar", "pax", "gnu" }) do
        local tar = d .. "/" .. format .. ".tar"
        local names = format == "ustar" and { "disk-0.vmdk" } or { long, "disk-0.vmdk" }
        local argv = { "tar", "-C", d, "--format=" .. format, "-cf", tar }
        for _, n in ipairs(names) do argv[#argv + 1] = n end
        run(argv)
        local members = assert(ova.members(tar))
        assert.equal(#names, #members)
        local f = assert(io.open(tar, "rb"))
        for i, m in ipairs(members) do
          assert.equal(names[i], m.name)
          f:seek("set", m.offset)
          assert.is_true(f:read(m.size) == read_file(d .. "/" .. names[i]), format .. " " .. m.name)
        end
        f:close()
      end
      local r, err, code = ova.members(d .. "/disk-0.vmdk")
      assert.is_nil(r)
      assert.equal("NOT_TAR", code)
      assert.matches("disk%-0%.vmdk: not a ustar/pax header", err)
    end)
  end)

  describe("pack", function()
    local dir, result, opts

    setup(function()
      dir = fresh_dir("pack")
      opts = plan_step(dir, { path = disk, sha256 = disk_sha })
      opts.eula = "VMWARE END USER LICENSE AGREEMENT\n<test> & co"
      opts.properties.USER_NOTE = "a \"quoted\" <value> & more"
      result = assert(ova.pack(opts))
    end)

    it("writes the OVA, its .ovf, .mf and .ova.sha256 beside it, and no temp file", function()
      assert.same({ NAME .. ".mf", NAME .. ".ova", NAME .. ".ova.sha256", NAME .. ".ovf" }, fs.list(dir))
      assert.equal(dir .. "/" .. NAME .. ".ova", result.ova)
      assert.same({ { name = NAME .. "-disk-0.vmdk", path = disk, size = fs.stat(disk).size, sha256 = disk_sha } },
        result.disks)
    end)

    it("is a ustar tar with the .ovf, the .mf, then the disk", function()
      local listing = run({ "tar", "--list", "-v", "-f", result.ova })
      local names = {}
      for line in listing:gmatch("[^\n]+") do names[#names + 1] = line:match("(%S+)$") end
      assert.same({ NAME .. ".ovf", NAME .. ".mf", NAME .. "-disk-0.vmdk" }, names)
      -- every header carries the POSIX magic "ustar\0" and version "00"
      local f = assert(io.open(result.ova, "rb"))
      local offset, headers = 0, 0
      while true do
        f:seek("set", offset)
        local h = f:read(512)
        if not h or h == ("\0"):rep(512) then break end
        assert.equal("ustar\00000", h:sub(258, 265), "header at " .. offset)
        local size = tonumber(h:sub(125, 136):match("^[0-7]+"), 8)
        offset = offset + 512 + (size + 511) // 512 * 512
        headers = headers + 1
      end
      f:close()
      assert.equal(3, headers)
      assert.equal(fs.stat(result.ova).size, offset + 1024) -- two end blocks
    end)

    it("has a manifest that sha256sum -c accepts over the extracted files", function()
      local x = fresh_dir("extracted")
      run({ "tar", "-xf", result.ova, "-C", x })
      local mf = read_file(x .. "/" .. NAME .. ".mf")
      assert.equal(read_file(dir .. "/" .. NAME .. ".mf"), mf)
      local lines = {}
      for name, hex in mf:gmatch("SHA256%(([^)]+)%)= (%x+)\n") do lines[#lines + 1] = hex .. "  " .. name end
      assert.equal(2, #lines)
      assert.equal(NAME .. ".ovf", lines[1]:sub(67))
      assert.equal(NAME .. "-disk-0.vmdk", lines[2]:sub(67))
      fs.write(x .. "/check.sha256", table.concat(lines, "\n") .. "\n")
      local out = run({ "sha256sum", "-c", "check.sha256" }, { cwd = x })
      assert.equal(NAME .. ".ovf: OK\n" .. NAME .. "-disk-0.vmdk: OK\n", out)
      assert.truthy(mf:match("^SHA256%(" .. NAME:gsub("%-", "%%-") .. "%.ovf%)= %x+\nSHA256%(.-%)= %x+\n$"))
    end)

    it("writes .ova.sha256 as the bare hex digest of the OVA, no newline", function()
      local s = read_file(result.ova .. ".sha256")
      assert.equal(64, #s)
      assert.truthy(s:match("^%x+$"))
      assert.equal(run({ "sha256sum", result.ova }):sub(1, 64), s)
      assert.equal(result.sha256, s)
    end)

    it("holds a VMDK that qemu-img checks as streamOptimized with 40 GiB", function()
      local x = fresh_dir("extracted-vmdk")
      run({ "tar", "-xf", result.ova, "-C", x, NAME .. "-disk-0.vmdk" })
      local v = x .. "/" .. NAME .. "-disk-0.vmdk"
      run({ "qemu-img", "check", v })
      local info = json.decode(run({ "qemu-img", "info", "--output=json", v }))
      assert.equal("vmdk", info.format)
      assert.equal("streamOptimized", info["format-specific"].data["create-type"])
      assert.equal(40 * GiB, info["virtual-size"])
    end)

    it("has a well-formed OVF with every field of the plan", function()
      local path = dir .. "/" .. NAME .. ".ovf"
      run({ "xmllint", "--noout", path })
      local text = read_file(path)
      local f = assert(ovf.parse(text))
      -- References / DiskSection: the real stream size, 40 GiB capacity
      assert.same({ { id = "file1", href = NAME .. "-disk-0.vmdk", size = fs.stat(disk).size } }, f.references)
      local d = f.disks[1]
      assert.equal(40960, d.capacity)
      assert.equal("byte * 2^20", d.units)
      assert.equal(42949672960, d.capacity_bytes)
      assert.equal(ovf.STREAM_OPTIMIZED, d.format)
      assert.equal("file1", d.file_ref)
      assert.equal(fs.stat(disk).size, d.populated_size)
      assert.truthy(text:find('ovf:capacity="40960" ovf:capacityAllocationUnits="byte * 2^20"', 1, true))
      assert.same({ "nic0" }, f.networks)
      assert.equal(NAME, f.name)
      assert.truthy(f.annotation:find("Ubuntu 20.04 and Kubernetes v1.16.14", 1, true))
      assert.same({ id = 94, version = "", os_type = "ubuntu64Guest", description = "Ubuntu 20.04" }, f.os)
      local hw = f.hardware
      assert.equal("vmx-15", hw.system_type)
      assert.equal(opts.hardware.cpus, hw.cpus)
      assert.equal(opts.hardware.cores_per_socket, hw.cores_per_socket)
      assert.equal(2048, hw.memory_mb)
      assert.equal("VirtualSCSI", hw.scsi) -- the recipe's pvscsi
      assert.equal("VmxNet3", hw.nic)
      assert.equal("bios", hw.firmware)
      local types = {}
      for _, it in ipairs(hw.items) do types[it.type] = it end
      assert.truthy(types[5], "IDE controller")
      assert.equal("ovf:/disk/vmdisk1", types[17].host_resource)
      assert.equal("vmware.cdrom.atapi", types[15].subtype)
      assert.equal("nic0", types[10].connection)
      assert.truthy(types[24], "video card")
      for _, k in ipairs({ "flags.vbsEnabled", "cpuHotAddEnabled", "nestedHVEnabled", "virtualSMCPresent",
        "flags.vvtdEnabled", "cpuHotRemoveEnabled", "memoryHotAddEnabled", "bootOptions.efiSecureBootEnabled",
        "virtualICH7MPresent" }) do
        assert.equal("false", hw.config[k], k)
      end
      assert.truthy(text:find('<vmw:BootOrderSection vmw:instanceId="5" vmw:type="disk">', 1, true))
      assert.same({ name = "Ubuntu 20.04 and Kubernetes v1.16.14", vendor = "VMware Inc.", version = "kube-v1.16.14",
        full_version = "kube-v1.16.14", vendor_url = "https://vmware.com", category = "Cluster API Provider (CAPI)" },
        f.product)
      assert.same({ "BUILD_TIMESTAMP", "BUILD_DATE", "CNI_VERSION", "CONTAINERD_VERSION", "CUSTOM_ROLE",
        "IMAGE_BUILDER_VERSION", "KUBERNETES_SEMVER", "KUBERNETES_SOURCE_TYPE", "DISTRO_NAME", "DISTRO_VERSION",
        "DISTRO_ARCH", "USER_NOTE" }, f.property_order)
      assert.same({ BUILD_TIMESTAMP = "1600000000", BUILD_DATE = "2020-09-13T12:26:40Z", CNI_VERSION = "v0.8.6",
        CONTAINERD_VERSION = "1.3.4", CUSTOM_ROLE = "false", IMAGE_BUILDER_VERSION = runtime.version,
        KUBERNETES_SEMVER = "v1.16.14", KUBERNETES_SOURCE_TYPE = "http", DISTRO_NAME = "ubuntu",
        DISTRO_VERSION = "20.04", DISTRO_ARCH = "amd64", USER_NOTE = "a \"quoted\" <value> & more" }, f.properties)
      assert.is_true(f.eula)
      assert.truthy(text:find("&lt;test&gt; &amp; co", 1, true))
    end)

    it("verifies and inspects what it packed", function()
      local rep = assert(ova.verify(result.ova))
      assert.same({}, rep.problems)
      assert.is_true(rep.ok)
      assert.equal(result.sha256, rep.sha256)
      local facts = assert(ova.inspect(result.ova))
      assert.equal(40, facts.disks[1].capacity_gib)
      assert.equal(NAME, facts.name)
      assert.equal("KUBERNETES_SEMVER", facts.properties[7].key)
      assert.equal(3, #facts.members)
    end)

    it("hashes a disk whose digest is unknown and gets the same OVA", function()
      local d2 = fresh_dir("pack-nodigest")
      local o = plan_step(d2, disk)
      o.eula, o.properties.USER_NOTE, o.mtime = opts.eula, opts.properties.USER_NOTE, 1600000000
      local a = assert(ova.pack(o))
      local o2 = plan_step(d2, { path = disk, sha256 = disk_sha })
      o2.eula, o2.properties.USER_NOTE, o2.mtime = opts.eula, opts.properties.USER_NOTE, 1600000000
      local b = assert(ova.pack(o2))
      assert.equal(a.sha256, b.sha256)
      assert.equal(disk_sha, a.disks[1].sha256)
    end)

    it("checks a recorded digest against the bytes it writes (one read): a wrong one writes no OVA", function()
      local d2 = fresh_dir("pack-wrongdigest")
      local r, err, code = ova.pack(plan_step(d2, { path = disk, sha256 = ("ab"):rep(32) }))
      assert.is_nil(r)
      assert.equal("CHECKSUM", code)
      assert.equal(("ova.pack: %s: its SHA-256 is not the recorded %s (%s): the disk changed since it was exported, "
        .. "or the build manifest is wrong; no OVA written"):format(disk, ("ab"):rep(32), disk_sha), err)
      assert.is_false(fs.exists(d2 .. "/" .. NAME .. ".ova"))
      assert.is_false(fs.exists(d2 .. "/" .. NAME .. ".ova.sha256"))
      assert.is_false(fs.exists(d2 .. "/" .. NAME .. ".mf"))
    end)

    it("refuses a disk whose size changed since its digest was recorded", function()
      local _, err, code = ova.pack(plan_step(fresh_dir("pack-changed"),
        { path = disk, sha256 = disk_sha, size = 12345 }))
      assert.equal("CHANGED", code)
      assert.truthy(err:find("changed since it was exported", 1, true))
    end)

    it("refuses a VMDK that is not streamOptimized unless asked to convert it", function()
      local d2 = fresh_dir("pack-sparse")
      local copy = d2 .. "/" .. NAME .. "-disk-0.vmdk"
      assert(fs.copy(sparse_vmdk, copy))
      local _, err, code = ova.pack(plan_step(d2, copy))
      assert.equal("NOT_STREAM_OPTIMIZED", code)
      assert.truthy(err:find(copy .. " is not a streamOptimized VMDK (createType is \"monolithicSparse\"", 1, true))
      assert.truthy(err:find("--convert", 1, true))
      assert.is_false(fs.exists(d2 .. "/" .. NAME .. ".ova"))
      local o = plan_step(d2, copy)
      o.convert = true
      local r = assert(ova.pack(o))
      assert.equal(NAME .. "-disk-0.ova.vmdk", r.disks[1].name)
      assert.is_true(assert(vmdk.read_header(d2 .. "/" .. NAME .. "-disk-0.ova.vmdk")).stream_optimized)
      assert.is_true(assert(ova.verify(r.ova)).ok)
    end)

    it("refuses a disk whose size disagrees with the recipe (no 20 GiB mistake)", function()
      local _, err, code = ova.pack(plan_step(fresh_dir("pack-cap"), { path = disk, sha256 = disk_sha }, 20480))
      assert.equal("CAPACITY", code)
      assert.truthy(err:find("virtual size of 42949672960 bytes (40960.0 MiB), but the recipe's disk is 20480 MiB",
        1, true), err)
    end)

    it("raises on unfilled placeholders and unknown options", function()
      local o = plan_step(fresh_dir("pack-misuse"), disk)
      o.properties.BUILD_DATE = "{{build_date}}"
      assert.has_error(function() ova.pack(o) end,
        'ova.pack: properties.BUILD_DATE still holds the placeholder "{{build_date}}" (fill it before packing)')
      o.properties.BUILD_DATE = "x"
      o.colour = "blue"
      assert.has_error(function() ova.pack(o) end, "ova.pack: unknown option 'colour'")
    end)

    it("leaves no .ova and no temp file when interrupted mid-stream", function()
      local d2 = fresh_dir("pack-interrupt")
      local target = d2 .. "/" .. NAME .. ".ova"
      local script = capil.script(d2, "pack.lua", ([[
        local fs = require("capil.sys.fs")
        local runtime = require("capil.core.runtime")
        local ova = require("capil.format.ova")
        local part = %q .. ".part." .. require("capil.sys.proc").getpid()
        local t0 = runtime.now()
        while not fs.exists(part) do
          if runtime.now() - t0 > 20 then os.exit(3) end
          runtime.sleep(0.01)
        end
        local r, err, code = ova.pack({ ova = %q, disks = { { path = %q, sha256 = %q } }, progress = false,
          os = { ovf_id = 94, os_type = "ubuntu64Guest" },
          hardware = { cpus = 1, memory_mb = 1024, firmware = "bios", disk_controller = "lsilogic", vmx_version = 15 } })
        io.stderr:write("pack returned: ", tostring(err), " ", tostring(code), "\n")
        os.exit(4)
      ]]):format(target, target, disk, disk_sha))
      local child = assert(proc.spawn({ argv = { capil.exe, script }, stdout = "null", stderr = d2 .. "/stderr" }))
      -- the temp OVA is a fifo nobody reads: the pack blocks in write(2)
      local part = target .. ".part." .. child.pid
      run({ "mkfifo", part })
      local holder = assert(proc.spawn({ argv = { "sh", "-c", 'exec sleep 30 0<>"$1"', "sh", part } }))
      local t0 = runtime.now()
      while not fs.exists(d2 .. "/" .. NAME .. ".mf") and runtime.now() - t0 < 20 do runtime.sleep(0.02) end
      runtime.sleep(0.3)
      assert.is_true(child:running())
      child:kill("INT")
      local st = assert(child:wait({ timeout = 20 }))
      holder:close(0.1)
      child:close()
      assert.equal(130, st.code, read_file(d2 .. "/stderr"))
      assert.is_false(fs.exists(target))
      assert.is_false(fs.exists(part))
      for _, n in ipairs(fs.list(d2)) do assert.is_nil(n:find(".part", 1, true), n) end
    end)
  end)

  describe("verify", function()
    local dir, good, members

    setup(function()
      dir = fresh_dir("verify")
      local r = assert(ova.pack(plan_step(dir, { path = disk, sha256 = disk_sha })))
      good = r.ova
      members = read_tar(good)
      fs.remove(good .. ".sha256") -- the bad copies below have none
    end)

    local function check(path)
      return assert(ova.verify(path))
    end

    local DISK = NAME .. "-disk-0.vmdk"
    local OVF_NAME, MF_NAME = NAME .. ".ovf", NAME .. ".mf"

    it("lists a truncated OVA", function()
      local p = dir .. "/truncated.ova"
      fs.write(p, read_file(good):sub(1, 200000))
      local rep = check(p)
      assert.is_false(rep.ok)
      assert.equal(DISK .. ": the OVA is truncated after 2 complete member(s) (member 3: Truncated tar archive)",
        rep.problems[1])
    end)

    it("lists a wrong member order", function()
      local p = dir .. "/order.ova"
      make_tar(p, { { MF_NAME, data = members[MF_NAME] }, { OVF_NAME, data = members[OVF_NAME] },
        { DISK, file = disk } })
      local rep = check(p)
      assert.same({
        MF_NAME .. ": wrong member order: the OVF descriptor must come first, but it is member 2",
        MF_NAME .. ": wrong member order: the manifest is member 1, it must be member 2",
      }, rep.problems)
    end)

    it("lists a manifest digest that does not match", function()
      local p = dir .. "/digest.ova"
      local mf = members[MF_NAME]:gsub("= (%x)", function(c) return "= " .. (c == "0" and "1" or "0") end, 1)
      make_tar(p, { { OVF_NAME, data = members[OVF_NAME] }, { MF_NAME, data = mf }, { DISK, file = disk } })
      local rep = check(p)
      assert.equal(1, #rep.problems)
      assert.truthy(rep.problems[1]:find("^" .. OVF_NAME:gsub("%-", "%%-") .. ": SHA%-256 is %x+, but the manifest says %x+$"),
        rep.problems[1])
    end)

    it("lists a missing disk", function()
      local p = dir .. "/nodisk.ova"
      make_tar(p, { { OVF_NAME, data = members[OVF_NAME] }, { MF_NAME, data = members[MF_NAME] } })
      assert.same({
        DISK .. ": is referenced by the OVF (File file1) but is not in the OVA",
        DISK .. ": is listed in the manifest but is not in the OVA",
      }, check(p).problems)
    end)

    it("lists an OVF that references a file the OVA lacks, and a size that differs", function()
      local p = dir .. "/ref.ova"
      local text = members[OVF_NAME]:gsub("(<File [^>]-/>)", '%1\n    <File ovf:href="extra.iso" ovf:id="file2" ovf:size="10"/>')
        :gsub('ovf:size="(%d+)"', function(n) return ('ovf:size="%d"'):format(tonumber(n) + 1) end, 1)
      local mf = ova.mf_text({ { name = OVF_NAME, sha256 = hash.digest("sha256", text) }, { name = DISK, sha256 = disk_sha } })
      make_tar(p, { { OVF_NAME, data = text }, { MF_NAME, data = mf }, { DISK, file = disk } })
      local size = fs.stat(disk).size
      assert.same({
        DISK .. (": is %d bytes, but the OVF References say %d"):format(size, size + 1),
        "extra.iso: is referenced by the OVF (File file2) but is not in the OVA",
      }, check(p).problems)
    end)

    it("lists a non-tar file, and an empty one", function()
      fs.write(dir .. "/random.ova", hash.random(3000))
      assert.same({ "not a tar archive (Unrecognized archive format)" }, check(dir .. "/random.ova").problems)
      fs.write(dir .. "/empty.ova", "")
      assert.same({ "an empty file, not a tar archive" }, check(dir .. "/empty.ova").problems)
      local _, err, code = ova.verify(dir .. "/absent.ova")
      assert.equal("ENOENT", code)
      assert.equal("ova.verify: " .. dir .. "/absent.ova: No such file or directory", err)
    end)

    it("lists every problem at once: format, capacity, VMDK kind, manifest gaps, .ova.sha256", function()
      local d2 = fresh_dir("verify-many")
      -- an OVF claiming 20 GiB over a monolithicSparse VMDK, GNU headers,
      -- a member nobody references, no manifest entry for it
      local text = members[OVF_NAME]:gsub('ovf:capacity="40960"', 'ovf:capacity="20"')
        :gsub("byte %* 2%^20", "byte * 2^30")
      local size = fs.stat(sparse_vmdk).size
      text = text:gsub('(<File [^>]-ovf:size=")%d+', "%1" .. size)
      assert(fs.copy(sparse_vmdk, d2 .. "/" .. DISK))
      fs.write(d2 .. "/" .. OVF_NAME, text)
      fs.write(d2 .. "/" .. MF_NAME, ova.mf_text({ { name = OVF_NAME, sha256 = hash.digest("sha256", text) },
        { name = DISK, sha256 = hash.file(sparse_vmdk) } }))
      fs.write(d2 .. "/notes.txt", "hi")
      run({ "tar", "--format=gnu", "-cf", "bad.ova", OVF_NAME, MF_NAME, DISK, "notes.txt" }, { cwd = d2 })
      fs.write(d2 .. "/bad.ova.sha256", ("0"):rep(64))
      local problems = check(d2 .. "/bad.ova").problems
      for _, want in ipairs({
        OVF_NAME .. ": tar header format is gnu, not POSIX ustar",
        MF_NAME .. ": tar header format is gnu, not POSIX ustar",
        DISK .. ": tar header format is gnu, not POSIX ustar",
        "notes.txt: tar header format is gnu, not POSIX ustar",
        "bad.ova.sha256: holds \"" .. ("0"):rep(64) .. "\", but the OVA's SHA-256 is ",
        "notes.txt: is in the OVA but not referenced by the OVF",
        DISK .. ': is not a streamOptimized VMDK: createType is "monolithicSparse", not "streamOptimized"',
        DISK .. ": OVF capacity is 21474836480 bytes, but the VMDK's virtual size is 42949672960 bytes",
        "notes.txt: is not listed in the manifest",
      }) do
        assert.truthy(find(problems, want:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")), "missing: " .. want
          .. "\n" .. table.concat(problems, "\n"))
      end
      assert.equal(9, #problems, table.concat(problems, "\n"))
    end)

    it("exits 1 from the command with every problem listed, 0 for a good OVA", function()
      local p = dir .. "/nodisk.ova"
      local r = capil.run({ "ova", "verify", p })
      assert.equal(1, r.code)
      assert.truthy(r.stdout:find("  - " .. DISK .. ": is referenced by the OVF", 1, true))
      assert.truthy(r.stdout:find("  - " .. DISK .. ": is listed in the manifest", 1, true))
      assert.equal("capil: ova verify: " .. p .. ": 2 problem(s)\n", r.stderr)
      local ok = capil.run({ "ova", "verify", good })
      assert.equal(0, ok.code, ok.stderr)
      assert.equal("ok: " .. good .. " (3 members)\n", ok.stdout)
      local nt = capil.run({ "ova", "verify", dir .. "/random.ova" })
      assert.equal(1, nt.code)
      assert.equal("  - not a tar archive (Unrecognized archive format)\n", nt.stdout)
    end)
  end)

  describe("the command", function()
    local dir

    setup(function()
      dir = fresh_dir("cmd")
      assert(fs.copy(disk, dir .. "/" .. NAME .. "-disk-0.vmdk"))
      local _, _, p = build_options.load("ubuntu-2004", { var = { "disk_size=40960" } })
      local cd = manifest.custom_data(p, VARS, { USER_NOTE = "hello" })
      assert(manifest.append(dir .. "/packer-manifest.json", manifest.build({
        name = "qemu", builder_type = "capil-qemu", artifact_id = NAME, custom_data = cd,
        files = { { name = NAME .. "-disk-0.vmdk", size = fs.stat(disk).size, sha256 = disk_sha } } })))
    end)

    it("packs a build directory from its manifest", function()
      local r = capil.run({ "ova", "pack", dir })
      assert.equal(0, r.code, r.stderr)
      local ova_path = dir .. "/" .. NAME .. ".ova"
      assert.equal(read_file(ova_path .. ".sha256") .. "  " .. ova_path .. "\n", r.stdout)
      assert.is_true(assert(ova.verify(ova_path)).ok)
      local f = assert(ova.inspect(ova_path))
      assert.equal(40, f.disks[1].capacity_gib)
      assert.equal("VirtualSCSI", f.hardware.scsi)
      assert.equal("hello", f.properties[#f.properties].value)
      local vr = capil.run({ "ova", "verify", ova_path })
      assert.equal("ok: " .. ova_path .. " (3 members, .ova.sha256 matches)\n", vr.stdout)
    end)

    it("inspects an OVA as text and JSON", function()
      local ova_path = dir .. "/" .. NAME .. ".ova"
      local t = capil.run({ "ova", "inspect", ova_path })
      assert.equal(0, t.code, t.stderr)
      assert.truthy(t.stdout:find("OS          Ubuntu 20.04 (OVF id 94, vSphere ubuntu64Guest)", 1, true), t.stdout)
      assert.truthy(t.stdout:find("Disk 1      40.0 GiB capacity", 1, true), t.stdout)
      assert.truthy(t.stdout:find("  KUBERNETES_SEMVER        v1.16.14", 1, true), t.stdout)
      local j = capil.run({ "ova", "inspect", ova_path, "--json" })
      local facts = assert(json.decode(j.stdout))
      assert.equal(42949672960, facts.disks[1].capacity_bytes)
      assert.equal("ubuntu64Guest", facts.os.os_type)
      assert.equal("vmx-15", facts.hardware.system_type)
      assert.equal("BUILD_TIMESTAMP", facts.properties[1].key)
    end)

    it("explains itself and refuses bad invocations", function()
      local h = capil.run({ "ova", "pack", "--help" })
      assert.equal(0, h.code)
      assert.truthy(h.stdout:find("one extra read", 1, true))
      local u = capil.run({ "ova", "frobnicate" })
      assert.equal(2, u.code)
      assert.equal("capil: ova: unknown subcommand 'frobnicate' (pack, verify, inspect)\n", u.stderr)
      local o = capil.run({ "ova", "inspect", "--yaml", "x.ova" })
      assert.equal(2, o.code)
      local m = capil.run({ "ova", "pack", tmp .. "/nowhere" })
      assert.equal(1, m.code)
      assert.truthy(m.stderr:find("nowhere/packer-manifest.json", 1, true), m.stderr)
      local nt = capil.run({ "ova", "inspect", tmp .. "/verify/random.ova" })
      assert.equal(1, nt.code)
      assert.truthy(nt.stderr:find("not a tar archive", 1, true), nt.stderr)
    end)

    it("refuses a sparse VMDK without --convert and converts it with it", function()
      local d2 = fresh_dir("cmd-convert")
      assert(fs.copy(sparse_vmdk, d2 .. "/" .. NAME .. ".vmdk"))
      local m = assert(manifest.read(dir .. "/packer-manifest.json"))
      local b = manifest.latest(m)
      b.files = { { name = NAME .. ".vmdk", size = fs.stat(sparse_vmdk).size } }
      assert(manifest.append(d2 .. "/packer-manifest.json", manifest.build({ name = "vmware-iso",
        builder_type = "vmware-iso", artifact_id = NAME, custom_data = b.custom_data, files = b.files })))
      fs.write(d2 .. "/eula.txt", "EULA TEXT")
      local r = capil.run({ "ova", "pack", d2 })
      assert.equal(1, r.code)
      assert.truthy(r.stderr:find("is not a streamOptimized VMDK", 1, true), r.stderr)
      local c = capil.run({ "ova", "pack", d2, "--convert", "--eula", d2 .. "/eula.txt" })
      assert.equal(0, c.code, c.stderr)
      local facts = assert(ova.inspect(d2 .. "/" .. NAME .. ".ova"))
      assert.is_true(facts.eula)
      assert.equal(NAME .. ".ova.vmdk", facts.disks[1].file)
    end)
  end)

  describe("manifest", function()
    it("appends runs and reads the last one (not builds[0] as image-builder did)", function()
      local d = fresh_dir("manifest")
      local p = d .. "/packer-manifest.json"
      local one = manifest.build({ name = "a", builder_type = "vmware-iso", files = {}, custom_data = { build_name = "one" } })
      local two = manifest.build({ name = "a", builder_type = "vmware-iso", files = {}, custom_data = { build_name = "two" } })
      assert(manifest.append(p, one))
      local m = assert(manifest.append(p, two))
      assert.equal(2, #m.builds)
      local back = assert(manifest.read(p))
      assert.equal(two.packer_run_uuid, back.last_run_uuid)
      assert.equal("two", manifest.latest(back).custom_data.build_name)
      assert.equal("one", back.builds[1].custom_data.build_name)
      assert.truthy(one.packer_run_uuid:match("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$"))
      assert.truthy(read_file(p):find('"files": []', 1, true))
    end)

    it("carries image-builder's keys and capil's extras as strings", function()
      local _, _, p = build_options.load("ubuntu-2004", { var = { "disk_size=40960" } })
      local cd = manifest.custom_data(p, VARS)
      for _, k in ipairs(manifest.KEYS) do assert.equal("string", type(cd[k]), k) end
      for _, k in ipairs(manifest.EXTRA_KEYS) do assert.equal("string", type(cd[k]), k) end
      assert.equal("1600000000", cd.build_timestamp)
      assert.equal(runtime.version, cd.ib_version)
      assert.equal("40960", cd.disk_size_mb)
      assert.equal("pvscsi", cd.disk_controller)
      assert.equal("94", cd.ovf_os_id)
    end)

    it("packs from an image-builder manifest with its template's defaults", function()
      local m = assert(json.decode([[{"builds":[{"name":"vsphere","builder_type":"vsphere-iso","build_time":1,
        "files":[{"name":"x-disk-0.vmdk","size":5}],"artifact_id":"x","packer_run_uuid":"u1",
        "custom_data":{"build_name":"photon-3","kubernetes_semver":"v1.18.6","guest_os_type":"vmware-photon-64",
        "os_name":"Photon OS","custom_role":"false","build_timestamp":"1"}}],"last_run_uuid":"u1"}]]))
      local o = assert(manifest.pack_options(manifest.latest(m), "/b"))
      assert.equal("/b/photon-3-kube-v1.18.6.ova", o.ova)
      assert.equal("x", o.name)
      assert.same({ ovf_id = 36, ovf_version = "", os_type = "vmwarePhoton64Guest", display_name = "Photon OS" }, o.os)
      assert.same({ cpus = 2, cores_per_socket = 2, memory_mb = 2048, firmware = "bios", disk_controller = "lsilogic",
        network_card = "vmxnet3", vmx_version = 15 }, o.hardware)
      assert.same({ { path = "/b/x-disk-0.vmdk", size = 5 } }, o.disks)
      local _, err = manifest.pack_options({ custom_data = {} }, "/b")
      assert.equal("manifest: custom_data lacks build_name or kubernetes_semver", err)
    end)
  end)
end)
