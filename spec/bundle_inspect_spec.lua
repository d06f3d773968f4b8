-- `capil validate` and `capil inspect` on a bundle, through the binary:
-- every build loaded as `capil run BUNDLE.lua` loads it, named by build
-- name, every invalid one listed; --only/--except choose builds; --explain
-- answers per build.
local capil = require("support.capil")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")

describe("validate and inspect on a bundle #bundle", function()
  local tmp, good, bad

  setup(function()
    tmp = peer.dir("bundle-inspect")
    good = tmp .. "/good.lua"
    assert(fs.write(good, [[
return {
  defaults = { backend = "qemu" },
  { recipe = "ubuntu-2204" },
  { recipe = "ubuntu-2204", vars = { build_name = "ubuntu-2204-efi", firmware = "efi" } },
  { recipe = "photon-5", backend = "vsphere" },
}
]]))
    bad = tmp .. "/bad.lua"
    assert(fs.write(bad, [[
return {
  { recipe = "ubuntu-2204" },
  { recipe = "photon-5", vars = { disk_size = 5 } },
  { recipe = "no-such-recipe" },
}
]]))
  end)

  teardown(function()
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  it("validate checks every build and names each", function()
    local r = capil.run({ "validate", good })
    assert.equal(0, r.code, r.stderr)
    for _, n in ipairs({ "ubuntu-2204", "ubuntu-2204-efi", "photon-5" }) do
      assert.matches(good .. ": " .. n .. ": ok", r.stdout, 1, true)
    end
  end)

  it("validate lists every invalid build by name, exit 1", function()
    local r = capil.run({ "validate", bad })
    assert.equal(1, r.code, r.stderr)
    assert.matches(bad .. ": ubuntu-2204: ok", r.stdout, 1, true)
    assert.matches(bad .. ": photon-5: vars: disk_size: expected at least 1024", r.stderr, 1, true)
    assert.matches(bad .. ": no-such-recipe: no recipe 'no-such-recipe'", r.stderr, 1, true)
    -- --except leaves only valid builds
    r = capil.run({ "validate", bad, "--except", "photon-5,no-such-recipe" })
    assert.equal(0, r.code, r.stderr)
  end)

  it("inspect prints one JSON object keyed by build name, honouring --only and --except", function()
    local r = capil.run({ "inspect", good })
    assert.equal(0, r.code, r.stderr)
    local plans = json.decode(r.stdout)
    assert.same({ "photon-5", "ubuntu-2204", "ubuntu-2204-efi" }, (function()
      local k = {}
      for n in pairs(plans) do k[#k + 1] = n end
      table.sort(k)
      return k
    end)())
    assert.equal("ubuntu-2204-efi-kube-v1.36.1", plans["ubuntu-2204-efi"].build_version)
    assert.equal("vsphere", plans["photon-5"].backend)
    assert.equal("qemu", plans["ubuntu-2204"].backend)
    r = capil.run({ "inspect", good, "--only", "ubuntu*", "--except", "*-efi" })
    assert.equal(0, r.code, r.stderr)
    plans = json.decode(r.stdout)
    assert.is_table(plans["ubuntu-2204"])
    assert.is_nil(plans["ubuntu-2204-efi"])
    assert.is_nil(plans["photon-5"])
  end)

  it("inspect --explain answers for each build under its name", function()
    local r = capil.run({ "inspect", good, "--only", "ubuntu*", "--explain", "firmware" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("# ubuntu-2204\nhardware.firmware = bios\n  from schema default", r.stdout, 1, true)
    assert.matches("# ubuntu-2204-efi\nhardware.firmware = efi\n", r.stdout, 1, true)
  end)

  it("inspect lists every build that does not load, exit 1", function()
    local r = capil.run({ "inspect", bad })
    assert.equal(1, r.code, r.stderr)
    assert.matches("photon-5: vars: disk_size: expected at least 1024", r.stderr, 1, true)
    assert.matches("no-such-recipe: no recipe", r.stderr, 1, true)
    assert.equal("", r.stdout)
  end)
end)
