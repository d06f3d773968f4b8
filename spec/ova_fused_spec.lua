-- The fused OVA (ova.pack with a disk source): the VMDK written by
-- capil.core.vmdkw straight into the OVA's tar stream, the OVF size, the
-- manifest digests and the disk's tar header patched afterwards. Checked
-- against real tools on sources with holes, written zeros, random data, an
-- odd size, a qcow2 and several grain tables: ova.verify, GNU tar, the
-- manifest against the extracted members, qemu-img check and compare; the
-- pax reserve (kept, or given back to the OVF); failure and Ctrl-C leave
-- nothing; `capil ova pack` on a build directory holding a raw disk; one
-- import of a fused OVA by the vSphere simulator.
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local manifest = require("capil.format.manifest")
local ova = require("capil.format.ova")
local ovf = require("capil.format.ovf")
local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")
local capil = require("support.capil")

local MiB = 1024 * 1024
local GRAIN = 65536
local NAME = "fused-kube-v1.30.1"

local disks = require("support.disk")
local run, put, random, sparse = disks.run, disks.put, disks.random, disks.sparse

-- The pack options of a one-disk OVA from `src` (fixed mtime: the bytes
-- depend on the source only, and the descriptor's random CID).
local function options(dir, src, extra)
  local o = {
    ova = dir .. "/" .. NAME .. ".ova", disks = { { source = src } }, progress = false, mtime = 1600000000,
    os = { ovf_id = 94, ovf_version = "", os_type = "ubuntu64Guest", display_name = "Ubuntu 20.04" },
    hardware = { cpus = 2, cores_per_socket = 1, memory_mb = 2048, firmware = "bios", disk_controller = "pvscsi",
      vmx_version = 15 },
    properties = { KUBERNETES_SEMVER = "v1.30.1", BUILD_TIMESTAMP = "1600000000" },
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

describe("fused OVA #ova", function()
  local tmp, level

  setup(function()
    level = log.level()
    log.configure({ level = "warn" })
    tmp = assert(fs.tempdir({ prefix = "capil-ova-fused-spec" }))
  end)

  teardown(function()
    log.configure({ level = level })
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function fresh_dir(name)
    local d = tmp .. "/" .. name
    fs.remove(d, { recursive = true })
    assert(fs.mkdir(d))
    return d
  end

  local function no_leftovers(dir)
    for _, n in ipairs(fs.list(dir)) do
      assert.is_nil(n:find(".part", 1, true), "temp left: " .. n)
      assert.is_nil(n:find("%.ova$"), "OVA left: " .. n)
      assert.is_nil(n:find("%.sha256$"), "checksum left: " .. n)
    end
  end

  -- Every check of a fused OVA against its source; returns the extracted
  -- VMDK's bytes and the pack result.
  local function check(r, src, raw)
    raw = raw or src
    local path = r.ova
    local report = assert(ova.verify(path))
    assert.is_true(report.ok, table.concat(report.problems, "\n"))
    assert.equal(assert(hash.file(path)), fs.read(path .. ".sha256"))
    assert.equal(r.sha256, fs.read(path .. ".sha256"))
    -- GNU tar lists and extracts it, in image-builder's order
    local listing = run({ "tar", "tvf", path })
    local names = {}
    for line in listing:gmatch("[^\n]+") do names[#names + 1] = line:match("(%S+)$") end
    local disk = r.disks[1].name
    assert.same({ NAME .. ".ovf", NAME .. ".mf", disk }, names)
    local x = path .. ".x"
    fs.remove(x, { recursive = true })
    assert(fs.mkdir(x))
    run({ "tar", "xf", path, "-C", x })
    -- the manifest's digests are the members'
    local entries = ova.parse_mf(assert(fs.read(x .. "/" .. NAME .. ".mf")))
    assert.equal(2, #entries)
    for _, e in ipairs(entries) do assert.equal(assert(hash.file(x .. "/" .. e.name)), e.digest, e.name) end
    assert.equal(r.disks[1].sha256, entries[2].digest)
    -- the OVF's ovf:size is the disk member's size; the descriptor beside is the one inside
    local text = assert(fs.read(x .. "/" .. NAME .. ".ovf"))
    assert.equal(text, fs.read(r.ovf))
    assert.equal(fs.read(x .. "/" .. NAME .. ".mf"), fs.read(r.mf))
    local facts = assert(ovf.parse(text))
    local vsize = fs.stat(x .. "/" .. disk).size
    assert.equal(vsize, facts.references[1].size)
    assert.equal(vsize, r.disks[1].size)
    assert.equal((fs.stat(raw).size + 511) // 512 * 512, facts.disks[1].capacity_bytes)
    -- the VMDK is sound and holds the source
    assert.truthy(run({ "qemu-img", "check", x .. "/" .. disk }):find("No errors were found", 1, true))
    local fmt = raw ~= src and "qcow2" or "raw"
    assert.truthy(run({ "qemu-img", "compare", "-f", fmt, "-F", "vmdk", src, x .. "/" .. disk })
      :find("identical", 1, true))
    local data = assert(fs.read(x .. "/" .. disk))
    fs.remove(x, { recursive = true })
    return data
  end

  -- packs src into a fresh dir; no temp is left beside the OVA
  local function pack(name, src, extra)
    local dir = fresh_dir(name)
    local r, err, code = ova.pack(options(dir, src, extra))
    assert(r, tostring(err) .. " " .. tostring(code))
    for _, n in ipairs(fs.list(dir)) do assert.is_nil(n:find(".part", 1, true), "temp left: " .. n) end
    assert.is_true(fs.exists(r.ova))
    return r, dir
  end

  describe("sources", function()
    it("with holes: data at the start, the middle and the end", function()
      local src = tmp .. "/holes.raw"
      sparse(src, 64 * MiB)
      put(src, 0, hash.random(3 * GRAIN))
      put(src, 20 * MiB + 4096, hash.random(5000))
      put(src, 64 * MiB - GRAIN, hash.random(GRAIN))
      local r = pack("holes", src, { jobs = 2 })
      assert.equal("holes.vmdk", r.disks[1].name)
      check(r, src)
    end)

    it("with written zeros (allocated, all-zero grains) between data", function()
      local src = tmp .. "/zeros.raw"
      local f = assert(io.open(src, "wb"))
      f:write(("\0"):rep(4 * MiB), hash.random(GRAIN), ("\0"):rep(2 * MiB))
      f:close()
      check(pack("zeros", src, { jobs = 2 }), src)
    end)

    it("of random data, the same bytes at jobs 1 and 4", function()
      local src = tmp .. "/random.raw"
      assert(fs.write(src, random(3 * MiB)))
      local r1 = pack("random1", src, { jobs = 1 })
      local a = check(r1, src)
      local r4 = pack("random4", src, { jobs = 4 })
      local b = check(r4, src)
      -- identical but for the descriptor's random CID
      assert.equal(#a, #b)
      assert.equal(a:gsub("CID=%x+", "CID="), (b:gsub("CID=%x+", "CID=")))
      assert.equal(r1.size, r4.size)
      assert.equal(fs.read(r1.ovf), fs.read(r4.ovf))
    end)

    it("whose size is not a multiple of 64 KiB (nor of a sector)", function()
      local src = tmp .. "/odd.raw"
      assert(fs.write(src, random(MiB + 1000)))
      check(pack("odd", src, { jobs = 2 }), src)
    end)

    it("in qcow2 (sniffed), through qemu-img's sparse raw temp", function()
      local raw = tmp .. "/forq.raw"
      sparse(raw, 48 * MiB)
      put(raw, MiB, hash.random(200000))
      put(raw, 40 * MiB, ("capil"):rep(100000))
      local src = tmp .. "/disk.qcow2"
      run({ "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src })
      local r, dir = pack("qcow2", src, { jobs = 2 })
      assert.equal("disk.vmdk", r.disks[1].name)
      check(r, src, raw)
      for _, n in ipairs(fs.list(dir)) do assert.is_nil(n:find("raw", 1, true), n) end
    end)

    it("spanning several grain tables (32 MiB each)", function()
      local src = tmp .. "/gts.raw"
      sparse(src, 100 * MiB)
      for _, at in ipairs({ 0, 33 * MiB, 70 * MiB, 100 * MiB - 4096 }) do put(src, at, hash.random(4096)) end
      check(pack("gts", src, { jobs = 3 }), src)
    end)

    it("of 10 GiB of holes: capacity past ustar's 8 GiB, a VMDK of a few KiB, plain ustar", function()
      local src = tmp .. "/big.raw"
      sparse(src, 10 * 1024 * MiB)
      local r = pack("big", src, { jobs = 2 })
      check(r, src)
      for _, m in ipairs(assert(ova.verify(r.ova)).members) do assert.equal("ustar", m.format, m.name) end
      assert.equal(10 * 1024 * MiB, assert(ova.inspect(r.ova)).disks[1].capacity_bytes)
    end)
  end)

  describe("the pax reserve (ustar's limit lowered to 1 MiB for the test)", function()
    local saved
    before_each(function()
      saved = ova.USTAR_MAX_SIZE
      ova.USTAR_MAX_SIZE = MiB - 1
    end)
    after_each(function() ova.USTAR_MAX_SIZE = saved end)

    it("keeps a pax size record when the VMDK needs it: GNU tar and ova.members read it", function()
      local src = tmp .. "/paxed.raw"
      assert(fs.write(src, random(3 * MiB)))
      local r = pack("paxed", src, { jobs = 2 })
      assert.is_true(r.disks[1].size > MiB)
      check(r, src)
      local ms = assert(ova.members(r.ova))
      assert.equal(3, #ms)
      assert.equal(r.disks[1].size, ms[3].size)
      local formats = {}
      for _, m in ipairs(assert(ova.verify(r.ova)).members) do formats[#formats + 1] = m.format end
      assert.same({ "ustar", "ustar", "pax" }, formats)
      local f = assert(io.open(r.ova, "rb"))
      assert.truthy(f:read(65536):find(("29 size=%020d\n"):format(r.disks[1].size), 1, true))
      f:close()
    end)

    it("gives the reserve to the OVF when the VMDK turns out small: every header stays ustar", function()
      local src = tmp .. "/squeezed.raw"
      assert(fs.write(src, ("capil "):rep(MiB)))  -- 6 MiB of data, a VMDK of a few KiB
      local r = pack("squeezed", src, { jobs = 2 })
      assert.is_true(r.disks[1].size < MiB)
      check(r, src)
      for _, m in ipairs(assert(ova.verify(r.ova)).members) do assert.equal("ustar", m.format, m.name) end
      local text = assert(fs.read(r.ovf))
      assert.truthy(text:find(('ovf:size="%d"%s/>'):format(r.disks[1].size, (" "):rep(1024 + 20 - #tostring(r.disks[1].size))),
        1, true))
    end)
  end)

  describe("failures", function()
    it("a missing or unusable source: a message naming it, nothing written", function()
      local dir = fresh_dir("fail-missing")
      local r, err, code = ova.pack(options(dir, tmp .. "/nowhere.raw"))
      assert.is_nil(r)
      assert.equal("ENOENT", code)
      assert.matches("nowhere.raw", err, 1, true)
      r, err, code = ova.pack(options(dir, dir))
      assert.is_nil(r)
      assert.equal("EFTYPE", code)
      assert.matches(dir, err, 1, true)
      assert.same({}, fs.list(dir))
    end)

    it("a recipe disk size that is not the source's capacity (CAPACITY), two disks with a source (UNSUPPORTED)", function()
      local dir = fresh_dir("fail-capacity")
      local src = tmp .. "/cap.raw"
      sparse(src, 8 * MiB)
      local o = options(dir, src)
      o.hardware.disk_mb = 9
      local r, err, code = ova.pack(o)
      assert.is_nil(r)
      assert.equal("CAPACITY", code, err)
      o.hardware.disk_mb = 8
      o.disks = { { source = src }, { source = src } }
      r, err, code = ova.pack(o)
      assert.is_nil(r)
      assert.equal("UNSUPPORTED", code, err)
      assert.has_error(function() ova.pack(options(dir, src, { disks = { { source = src, format = "vmdk" } } })) end,
        "ova.pack: disks[1].format must be raw or qcow2, not 'vmdk'")
      assert.same({}, fs.list(dir))
    end)

    it("an old .ova.sha256 goes before packing; a source that shrinks mid-way fails naming it", function()
      local dir = fresh_dir("fail-shrink")
      local src = dir .. "/shrinking.raw"
      assert(run({ "sh", "-c", 'head -c 96M /dev/urandom >"$1"', "sh", src }))
      local target = dir .. "/" .. NAME .. ".ova"
      assert(fs.write(target .. ".sha256", ("0"):rep(64)))
      assert(json.write(dir .. "/opts.json", options(dir, src, { jobs = 1 })))
      local script = capil.script(dir, "pack.lua", ([[
        local ova = require("capil.format.ova")
        local o = assert(require("capil.sys.json").read(%q))
        local r, err, code = ova.pack(o)
        io.stderr:write(tostring(err), "\n", tostring(code), "\n")
        os.exit(r and 0 or 1)
      ]]):format(dir .. "/opts.json"))
      local child = assert(proc.spawn({ argv = { capil.exe, script }, stdout = "null", stderr = dir .. "/stderr" }))
      local part = target .. ".part." .. child.pid
      local t0 = runtime.now()
      while ((fs.stat(part) or {}).size or 0) <= 2 * MiB and runtime.now() - t0 < 60 do runtime.sleep(0.02) end
      assert.is_true(child:running(), "finished before the source shrank")
      assert(fs.truncate(src, 8 * MiB))
      local st = assert(child:wait({ timeout = 120 }))
      child:close()
      local text = fs.read(dir .. "/stderr")
      assert.equal(1, st.code, text)
      assert.matches(src .. ": the file changed size while it was read", text, 1, true)
      assert.matches("CHANGED", text, 1, true)
      no_leftovers(dir)
    end)
  end)

  describe("capil ova pack", function()
    local dir, src

    setup(function()
      dir = fresh_dir("cmd")
      src = dir .. "/" .. NAME .. ".raw"
      -- a larger source of random data: time to interrupt it
      run({ "sh", "-c", 'head -c 96M /dev/urandom >"$1" && truncate -s 128M "$1"', "sh", src })
      local loader = require("capil.build.loader")
      local _, _, p = loader.load("ubuntu-2004", { var = { "disk_size=40960" } })
      assert(p, "plan did not resolve")
      local cd = manifest.custom_data(p, { build_timestamp = "1600000000", build_date = "2020-09-13T12:26:40Z",
        capil_version = runtime.version })
      cd.build_name, cd.kubernetes_semver, cd.disk_size_mb = "fused", "v1.30.1", "128"
      assert(manifest.append(dir .. "/packer-manifest.json", manifest.build({
        name = "qemu", builder_type = "capil-qemu", artifact_id = NAME, custom_data = cd,
        files = { { name = NAME .. ".raw", size = fs.stat(src).size } } })))
    end)

    it("is stopped by Ctrl-C mid-disk: no OVA, no .ova.sha256, no temp", function()
      local err_file = tmp .. "/cmd-int.stderr"
      local child = assert(proc.spawn({ argv = { capil.exe, "ova", "pack", dir, "--jobs", "1" }, stdout = "null",
        stderr = err_file }))
      local part = dir .. "/" .. NAME .. ".ova.part." .. child.pid
      local t0 = runtime.now()
      while ((fs.stat(part) or {}).size or 0) <= MiB and runtime.now() - t0 < 60 do runtime.sleep(0.02) end
      assert.is_true(child:running(), "finished before the interrupt")
      child:kill("INT")
      local st = assert(child:wait({ timeout = 60 }))
      child:close()
      assert.equal(130, st.code, fs.read(err_file))
      no_leftovers(dir)
      assert.is_false(fs.exists(dir .. "/" .. NAME .. ".ovf"))
    end)

    it("packs a build directory whose manifest lists a raw disk, --jobs N", function()
      local r = capil.run({ "ova", "pack", dir, "--jobs", "2" }, { timeout = 120 })
      assert.equal(0, r.code, r.stderr)
      local path = dir .. "/" .. NAME .. ".ova"
      assert.equal(fs.read(path .. ".sha256") .. "  " .. path .. "\n", r.stdout)
      local v = capil.run({ "ova", "verify", path })
      assert.equal(0, v.code, v.stdout .. v.stderr)
      local f = assert(ova.inspect(path))
      assert.equal(128 * MiB, f.disks[1].capacity_bytes)
      assert.equal(NAME .. ".vmdk", f.disks[1].file)
      local bad = capil.run({ "ova", "pack", dir, "--jobs", "0" })
      assert.equal(2, bad.code)
      assert.matches("--jobs must be 1 to 64", bad.stderr, 1, true)
      -- a usage error is told before the directory is read
      bad = capil.run({ "ova", "pack", dir .. "/absent", "--jobs", "0" })
      assert.equal(2, bad.code)
      assert.equal("capil: ova pack: --jobs must be 1 to 64\n", bad.stderr)
      -- a disk that cannot be read gets its error, no "0 B in 00:00" line first
      local v2 = capil.run({ "vmdk", "convert", dir .. "/absent.raw", dir .. "/absent.vmdk" })
      assert.equal(1, v2.code)
      assert.equal(("capil: vmdkw.write: %s/absent.raw: No such file or directory\n"):format(dir), v2.stderr)
      local h = capil.run({ "ova", "pack", "--help" })
      assert.matches("--jobs N", h.stdout, 1, true)
    end)
  end)
end)

describe("fused OVA imported by the vSphere simulator #vsphere", function()
  local vcsim = require("support.vcsim")
  local peer = require("support.peer")
  local PASSWORD = "Fused-s3cret!pw"
  local tmp, sim, varfile, level

  setup(function()
    level = log.level()
    log.configure({ level = "warn" })
    tmp = peer.dir("ova-fused-deploy-spec")
    sim = vcsim.start({ username = "administrator@vsphere.local", password = PASSWORD, tls = true })
    varfile = tmp .. "/vsphere.json"
    assert(json.write(varfile, { vcenter_server = sim.url, username = "administrator@vsphere.local",
      password = PASSWORD, vcenter_ca_file = sim.ca_file, datacenter = "DC0", cluster = "DC0_C0",
      datastore = "LocalDS_0", network = "VM Network" }))
  end)

  teardown(function()
    log.configure({ level = level })
    if sim then sim:stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  it("CreateImportSpec and ImportVApp accept a fused OVA (capil deploy)", function()
    local src = tmp .. "/node.raw"
    assert(fs.write(src, ("\0"):rep(MiB) .. ("capil"):rep(1000)))
    assert(fs.truncate(src, 8 * MiB))
    local r = assert(ova.pack(options(tmp, src, { name = "fused-node", hardware = { cpus = 4, memory_mb = 3072,
      disk_mb = 8, vmx_version = 17, firmware = "bios", disk_controller = "pvscsi" } })))
    local d = capil.run({ "deploy", r.ova, "--var-file", varfile, "--name", "fused-imported" }, { timeout = 60 })
    assert.equal(0, d.code, d.stderr)
    assert.not_matches(PASSWORD, d.stdout .. d.stderr, 1, true)
    assert.matches("^VirtualMachine:%S+ fused%-imported", d.stdout)
  end)
end)
