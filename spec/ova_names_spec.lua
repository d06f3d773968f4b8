-- OVAs whose member names point outside: every reader refuses them naming
-- the member, and nothing is written outside the output directory.
local capil = require("spec.support.capil")
local peer = require("spec.support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local ova = require("capil.format.ova")
local ovf = require("capil.format.ovf")

-- Writes a ustar OVA with python3's tarfile (it writes any name as given).
local function make_ova(path, members)
  local lines = { "import tarfile, io, sys, json", "members = json.loads(sys.stdin.read())",
    "with tarfile.open(sys.argv[1], 'w', format=tarfile.USTAR_FORMAT) as t:",
    "    for name, data in members:",
    "        ti = tarfile.TarInfo(name); d = data.encode('latin-1'); ti.size = len(d)",
    "        t.addfile(ti, io.BytesIO(d))" }
  local enc = {}
  for _, m in ipairs(members) do
    enc[#enc + 1] = require("capil.sys.json").encode({ m[1], m[2] })
  end
  local r = assert(proc.run({ argv = { "python3", "-c", table.concat(lines, "\n"), path },
    stdin = "[" .. table.concat(enc, ",") .. "]", timeout = 30 }))
  assert.equal(0, r.code, r.stderr)
end

describe("OVA member names #unit", function()
  local dir, outside, ova_path, abs_name
  setup(function()
    dir = peer.dir("ova-names")
    outside = dir .. "/outside"
    assert(fs.mkdir(outside))
    assert(fs.mkdir(dir .. "/out"))
    abs_name = outside .. "/abs.vmdk"
    local text = ovf.descriptor({ name = "evil", os = { ovf_id = 94, os_type = "ubuntu64Guest" },
      hardware = { cpus = 1, memory_mb = 512, vmx_version = 13, firmware = "bios", disk_controller = "pvscsi" },
      disks = { { href = "evil.vmdk", size = 512, capacity_bytes = 1048576, populated_size = 512 } },
      product = {}, properties = {}, annotation = "x" })
    ova_path = dir .. "/out/evil.ova"
    local disk = "KDMV" .. ("\0"):rep(508)
    make_ova(ova_path, { { "evil.ovf", text }, { "../evil.vmdk", disk }, { abs_name, disk } })
  end)

  local function nothing_outside()
    assert.is_false(fs.exists(dir .. "/evil.vmdk"))
    assert.is_false(fs.exists(abs_name))
    assert.same({}, fs.list(outside))
  end

  it("ova.unsafe_name knows the unsafe shapes", function()
    assert.is_nil(ova.unsafe_name("ubuntu-2004-kube-v1.30.1.ovf"))
    assert.is_nil(ova.unsafe_name("dir/disk.vmdk"))
    for _, n in ipairs({ "", "/etc/passwd", "../x.vmdk", "a/../../x", "a//b", "a\\b.vmdk", "a\1b", "a\nb",
      "a\127b", "a\0b" }) do
      assert.is_string(ova.unsafe_name(n), n)
    end
    assert.equal("'a\\010b'", ova.shown("a\nb"))
  end)

  it("ova.members refuses the OVA, naming it and the member", function()
    local m, err, code = ova.members(ova_path)
    assert.is_nil(m)
    assert.equal("EUNSAFE_NAME", code)
    assert.matches(ova_path .. ": member '../evil.vmdk': the name has a '..' component", err, 1, true)
  end)

  it("capil ova verify reports both members", function()
    local r = capil.run({ "ova", "verify", ova_path })
    assert.equal(1, r.code)
    local all = r.stdout .. r.stderr
    assert.matches("member '../evil.vmdk': unsafe name: the name has a '..' component", all, 1, true)
    assert.matches("member '" .. abs_name .. "': unsafe name: the name is an absolute path", all, 1, true)
    assert.is_nil(all:find("stack traceback", 1, true))
    nothing_outside()
  end)

  it("capil ova inspect refuses it", function()
    local r = capil.run({ "ova", "inspect", ova_path })
    assert.equal(1, r.code)
    assert.matches(ova_path .. ": member '../evil.vmdk': the name has a '..' component", r.stderr, 1, true)
    nothing_outside()
  end)

  it("capil test refuses it before writing anything", function()
    local r = capil.run({ "test", ova_path }, { timeout = 60 })
    assert.equal(1, r.code)
    assert.matches(ova_path .. ": member '../evil.vmdk': the name has a '..' component", r.stdout .. r.stderr, 1, true)
    assert.is_nil((r.stdout .. r.stderr):find("stack traceback", 1, true))
    nothing_outside()
  end)

  it("a pax header record without '=' is a clear error, not a traceback (a fuzz finding)", function()
    local p = dir .. "/out/pax.ova"
    assert(fs.copy("fuzz/corpus/ova/regress-pax-record-without-equals.tar", p))
    local m, err = ova.members(p)
    assert.is_nil(m)
    assert.matches("malformed pax header record", err, 1, true)
    local r = capil.run({ "test", p, "--output", dir .. "/out/pax-test" }, { timeout = 60 })
    assert.equal(1, r.code)
    assert.matches("malformed pax header record", r.stdout .. r.stderr, 1, true)
    assert.is_nil((r.stdout .. r.stderr):find("stack traceback", 1, true))
  end)

  it("an absolute member alone is refused too", function()
    local p = dir .. "/out/abs.ova"
    make_ova(p, { { "a.ovf", "<x/>" }, { abs_name, "KDMV" } })
    local m, err = ova.members(p)
    assert.is_nil(m)
    assert.matches("member '" .. abs_name .. "': the name is an absolute path", err, 1, true)
    local r = capil.run({ "ova", "inspect", p })
    assert.equal(1, r.code)
    nothing_outside()
  end)
end)
