-- Hostile archives and files against the real binary: sparse and
-- negative-size tar members, build manifests whose digests or names lie,
-- FIFOs and devices given as input files, malformed OVF counts, and the
-- recipe/var-file paths. Each must end (no hang) with one clear line: no
-- traceback, no internal path, no `table: 0x`, nothing written outside.
local capil = require("spec.support.capil")
local peer = require("spec.support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local ovf = require("capil.format.ovf")

local function assert_clean(r)
  local all = r.stdout .. r.stderr
  assert.is_nil(all:find("stack traceback", 1, true), all)
  assert.is_nil(all:find("lua/capil/", 1, true), all)
  assert.is_nil(all:find(": 0x%x+"), all)
end

local function run(args, timeout)
  local r = capil.run(args, { timeout = timeout or 20 })
  assert.is_not_true(r.timeout, "capil hung: " .. table.concat(args, " "))
  assert_clean(r)
  return r
end

local function sh(argv, opts)
  local r = assert(proc.run({ argv = argv, cwd = opts and opts.cwd, stdin = opts and opts.stdin, timeout = 60 }))
  assert.equal(0, r.code, table.concat(argv, " ") .. ": " .. r.stderr)
  return r
end

local DESCRIPTOR = ovf.descriptor({ name = "sp", os = { ovf_id = 94, os_type = "ubuntu64Guest" },
  hardware = { cpus = 1, memory_mb = 512, vmx_version = 13, firmware = "bios", disk_controller = "pvscsi" },
  disks = { { href = "sp.vmdk", size = 9 * 1024 ^ 3, capacity_bytes = 9 * 1024 ^ 3, populated_size = 512 } },
  product = {}, properties = {}, annotation = "x" })

describe("archives and files #unit", function()
  local dir
  setup(function() dir = peer.dir("archives-files") end)

  describe("sparse and malformed tar members", function()
    -- An OVA whose 9 GiB disk is a sparse member of a few KiB, its manifest
    -- holding the digest of the expanded file or of the stored blocks.
    local function sparse_ova(name, format)
      local d = dir .. "/" .. name
      assert(fs.mkdir(d))
      assert(fs.write(d .. "/sp.ovf", DESCRIPTOR))
      assert(fs.truncate(d .. "/sp.vmdk", 9 * 1024 ^ 3))
      sh({ "dd", "if=/dev/urandom", "of=" .. d .. "/sp.vmdk", "bs=65536", "count=1", "conv=notrunc" })
      local head = assert(proc.run({ argv = { "head", "-c", "65536", d .. "/sp.vmdk" }, timeout = 10 })).stdout
      local mf = ("SHA256(sp.ovf)= %s\nSHA256(sp.vmdk)= %s\n"):format(
        require("capil.sys.hash").digest("sha256", DESCRIPTOR), require("capil.sys.hash").digest("sha256", head))
      assert(fs.write(d .. "/sp.mf", mf))
      local args = { "tar", "--sparse", "-cf", name .. ".ova" }
      for _, a in ipairs(format) do table.insert(args, 2, a) end
      for _, m in ipairs({ "sp.ovf", "sp.mf", "sp.vmdk" }) do args[#args + 1] = m end
      sh(args, { cwd = d })
      assert.is_true(fs.stat(d .. "/" .. name .. ".ova").size < 1024 * 1024)
      return d .. "/" .. name .. ".ova"
    end

    for _, case in ipairs({ { "gnu", { "--format=gnu" } },
      { "pax", { "--format=pax", "--sparse-version=1.0" } } }) do
      it("ova verify and inspect refuse a " .. case[1] .. " sparse member", function()
        local path = sparse_ova("sparse-" .. case[1], case[2])
        local r = run({ "ova", "verify", path })
        assert.equal(1, r.code, r.stdout .. r.stderr)
        assert.matches("member 3 %(sp%.vmdk%): a sparse tar member %(GNU/pax sparse%); OVA members must be plain files",
          r.stdout)
        assert.is_nil(r.stdout:find("ok:", 1, true))
        local m, err, code = require("capil.format.ova").members(path)
        assert.is_nil(m)
        assert.equal("SPARSE", code)
        assert.matches("a sparse tar member", err, 1, true)
      end)
    end

    it("a negative base-256 size ends with an error, in verify and in ova.members", function()
      local path = dir .. "/neg.ova"
      sh({ "python3", "-c", [[
import tarfile, io, sys
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
    for name, data in (("a.ovf", b"<x/>"), ("a.mf", b"")):
        ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
raw = bytearray(buf.getvalue())
h = 1024
raw[h + 124:h + 136] = bytes([0xff]) + ((-512) & ((1 << 88) - 1)).to_bytes(11, "big")
raw[h + 148:h + 156] = b" " * 8
raw[h + 148:h + 156] = ("%06o\0 " % sum(raw[h:h + 512])).encode()
open(sys.argv[1], "wb").write(raw)
]], path })
      local r = run({ "ova", "verify", path }, 10)
      assert.equal(1, r.code)
      assert.matches("member 2: .*negative size", r.stdout)
      local script = capil.script(dir, "members.lua", ([[
local m, err, code = require("capil.format.ova").members(%q)
print(m, err, code)
]]):format(path))
      r = run({ script }, 10)
      assert.equal(0, r.code, r.stderr)
      assert.matches("invalid base%-256 member size at byte 1024\tARCHIVE", r.stdout)
    end)
  end)

  describe("ova pack and the build manifest", function()
    local disk, disk_sha
    setup(function()
      disk = dir .. "/src.vmdk"
      sh({ "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", disk, "16M" })
      disk_sha = require("capil.sys.hash").file(disk, "sha256")
    end)

    local function build_dir(name, custom_data, files)
      local d = dir .. "/" .. name
      assert(fs.mkdir(d))
      assert(fs.copy(disk, d .. "/disk.vmdk"))
      local m = { builds = json.array({ { name = "x", builder_type = "qemu", packer_run_uuid = "u",
        files = json.array(files or { { name = "disk.vmdk", size = fs.stat(disk).size, sha256 = disk_sha } }),
        custom_data = custom_data } }), last_run_uuid = "u" }
      assert(fs.write(d .. "/packer-manifest.json", json.encode(m)))
      return d
    end

    local CD = { build_name = "ubuntu-2004", kubernetes_semver = "v1.30.1", guest_os_type = "ubuntu-64",
      disk_size_mb = "16" }

    it("packs with the true digest; a wrong recorded digest fails and leaves no OVA", function()
      local good = build_dir("pack-good", CD)
      local r = run({ "ova", "pack", good })
      assert.equal(0, r.code, r.stderr)
      r = run({ "ova", "verify", good .. "/ubuntu-2004-kube-v1.30.1.ova" })
      assert.equal(0, r.code, r.stdout .. r.stderr)

      local bad = build_dir("pack-bad", CD, { { name = "disk.vmdk", size = fs.stat(disk).size,
        sha256 = ("ab"):rep(32) } })
      -- a stale OVA checksum from an earlier pack must not survive
      assert(fs.write(bad .. "/ubuntu-2004-kube-v1.30.1.ova.sha256", ("cd"):rep(32)))
      r = run({ "ova", "pack", bad })
      assert.equal(1, r.code)
      assert.matches("disk%.vmdk: its SHA%-256 is not the recorded " .. ("ab"):rep(32), r.stderr)
      for _, f in ipairs(fs.list(bad)) do
        assert.is_nil(f:match("%.ova"), "left behind: " .. f)
        assert.is_nil(f:match("%.part"), "left behind: " .. f)
        assert.is_nil(f:match("%.mf$"), "left behind: " .. f)
      end
    end)

    it("--eula must be a regular file", function()
      local fifo = dir .. "/eula-fifo"
      sh({ "mkfifo", fifo })
      local d = build_dir("eula-pack", CD)
      local r = run({ "ova", "pack", d, "--eula", fifo }, 10)
      assert.equal(1, r.code)
      assert.matches("ova pack: --eula: EULA " .. fifo .. ": is a FIFO, not a regular file", r.stderr, 1, true)
    end)

    it("refuses names that leave the build directory or are not strings", function()
      local cases = {
        { { build_name = "../../escape" }, "custom_data%.build_name \"%.%./%.%./escape\" holds a '/'" },
        { { build_name = json.object({ a = 1 }) }, "custom_data%.build_name must be a string, got an object" },
        { { kubernetes_semver = "v1/../../x" }, "custom_data%.kubernetes_semver .* holds a '/'" },
      }
      for i, c in ipairs(cases) do
        local cd = {}
        for k, v in pairs(CD) do cd[k] = v end
        for k, v in pairs(c[1]) do cd[k] = v end
        local d = build_dir("names-" .. i, cd)
        local r = run({ "ova", "pack", d })
        assert.equal(1, r.code)
        assert.matches(c[2], r.stderr)
        assert.same({ "disk.vmdk", "packer-manifest.json" }, fs.list(d))
      end
      assert.is_false(fs.exists(dir .. "/../escape-kube-v1.30.1.ova"))
      local d = build_dir("files-escape", CD, { { name = "../../x.vmdk", size = 1 } })
      local r = run({ "ova", "pack", d })
      assert.equal(1, r.code)
      assert.matches("files%[0%]%.name \"%.%./%.%./x%.vmdk\" is not a relative path inside the build directory",
        r.stderr)
      d = build_dir("cd-array", json.array({ "x" }))
      r = run({ "ova", "pack", d })
      assert.equal(1, r.code)
      assert.matches("custom_data must be an object, got an array", r.stderr)
    end)
  end)

  describe("FIFOs and devices as input files", function()
    local fifo
    setup(function()
      fifo = dir .. "/fifo"
      sh({ "mkfifo", fifo })
    end)

    it("are refused by kind, never waited on", function()
      local cases = {
        { { "ova", "verify", fifo }, "OVA " .. fifo .. ": is a FIFO, not a regular file" },
        { { "ova", "inspect", "/dev/zero" }, "OVA /dev/zero: is a character device, not a regular file" },
        { { "validate", fifo }, fifo .. ": cannot read the recipe: is a FIFO, not a regular file" },
        -- run and inspect ask first whether the file is a bundle: that read is bounded too
        { { "run", fifo }, fifo .. ": cannot read the recipe: is a FIFO, not a regular file" },
        { { "inspect", fifo }, fifo .. ": cannot read the recipe: is a FIFO, not a regular file" },
        { { "inspect", "recipes/ubuntu-2004.lua", "--var-file", fifo },
          fifo .. ": is a FIFO, not a regular file" },
        { { "inspect", "recipes/ubuntu-2004.lua", "--var-file", "/dev/zero" },
          "/dev/zero: is a character device, not a regular file" },
      }
      for _, c in ipairs(cases) do
        local r = run(c[1], 30) -- a wait on the FIFO would never end; 30 s is load (ASan) headroom
        assert.equal(1, r.code, table.concat(c[1], " ") .. ": " .. r.stdout .. r.stderr)
        assert.matches(c[2], r.stderr, 1, true)
      end
    end)

    it("--eula and a .sha256 beside the OVA are type-checked and bounded", function()
      local d = dir .. "/eula"
      assert(fs.mkdir(d))
      local big = d .. "/big.txt"
      assert(fs.truncate(big, 2 * 1024 * 1024))
      local data, err, code = fs.read_file(big, { max = 1024 * 1024, what = "EULA" })
      assert.is_nil(data)
      assert.equal("EULA " .. big .. ": larger than 1048576 bytes", err)
      assert.equal("EFBIG", code)
      data, err, code = fs.read_file(fifo, { max = 10, what = ".sha256 file" })
      assert.is_nil(data)
      assert.equal(".sha256 file " .. fifo .. ": is a FIFO, not a regular file", err)
      assert.equal("EFTYPE", code)
    end)
  end)

  describe("OVF counts", function()
    it("a size of 1.5 or 1e999 and a vmw:Config without a key are clear errors", function()
      local base = DESCRIPTOR
      local cases = {
        { (base:gsub('ovf:size="%d+"', 'ovf:size="1.5"', 1)),
          'ovf%.parse: File file1: ovf:size is "1%.5", not a whole number' },
        { (base:gsub('ovf:size="%d+"', 'ovf:size="1e999"', 1)), 'ovf:size is "1e999", not a whole number' },
        { (base:gsub('vmw:key="flags%.vbsEnabled"', "", 1)), "a vmw:Config has no vmw:key" },
      }
      for i, c in ipairs(cases) do
        assert.is_not.equal(base, c[1])
        local f, err = ovf.parse(c[1])
        assert.is_nil(f)
        assert.matches(c[2], err)
        -- and through the binary, in an OVA
        local path = ("%s/ovf-%d.ova"):format(dir, i)
        sh({ "python3", "-c", [[
import tarfile, io, sys
with tarfile.open(sys.argv[1], "w", format=tarfile.USTAR_FORMAT) as t:
    d = sys.stdin.buffer.read(); ti = tarfile.TarInfo("sp.ovf"); ti.size = len(d); t.addfile(ti, io.BytesIO(d))
]], path }, { stdin = c[1] })
        for _, sub in ipairs({ "verify", "inspect" }) do
          local r = run({ "ova", sub, path })
          assert.equal(1, r.code)
          assert.matches(c[2]:gsub("^ovf%%%.parse: ", ""), r.stdout .. r.stderr)
        end
      end
    end)
  end)

  describe("recipes and var files", function()
    it("extends = 'x.lua' is relative to the recipe's directory", function()
      local d = dir .. "/rec/sub"
      assert(fs.mkdir(d))
      assert(fs.copy("recipes/ubuntu-2004.lua", d .. "/base.lua"))
      capil.script(d, "child.lua", 'return { extends = "base.lua", name = "child" }\n')
      local r = run({ "validate", d .. "/child.lua" })
      assert.equal(0, r.code, r.stdout .. r.stderr)
    end)

    it("a bad var file is named once", function()
      local p = capil.script(dir, "bad.json", "{ nope")
      local r = run({ "inspect", "recipes/ubuntu-2004.lua", "--var-file", p })
      assert.equal(1, r.code)
      local _, n = r.stderr:gsub(p:gsub("%p", "%%%0"), "")
      assert.equal(1, n, r.stderr)
    end)
  end)
end)
