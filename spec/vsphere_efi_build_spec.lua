-- An EFI build with a seed CD on the vSphere simulator (issue 17), end to
-- end: `capil run --backend vsphere` of the fixture recipe vsphere-efi.lua
-- (firmware efi; user-data and meta-data rendered onto a CD labelled cidata
-- on a SATA drive). What the build asked vSphere for is read back from the
-- simulator's record of the CreateVM_Task request; the seed ISO must be gone
-- from the datastore after the run; the OVA the run packed must import, with
-- `capil deploy`, as an EFI VM. The simulator peer: spec/support/vcsim.lua.
local capil = require("support.capil")
local buildenv = require("support.buildenv")
local fs = require("capil.sys.fs")
local xml = require("capil.sys.xml")
local vim25 = require("capil.vsphere.vim25")
local session = require("capil.vsphere.session")

local PASSWORD = "Efi-b5ild!pw"
local BUILD = "vsphere-efi-fixture-kube-v1.16.14"

-- The first descendant element of `el` named `name` (depth first).
local function descendant(el, name)
  for _, c in ipairs(xml.children(el)) do
    if c.name == name then return c end
    local d = descendant(c, name)
    if d then return d end
  end
end

local function text_of(el, name)
  local c = el and xml.find(el, name)
  return c and xml.text(c) or nil
end

-- The VirtualMachineConfigSpec of a recorded CreateVM_Task envelope:
-- firmware, and the devices of its deviceChange as
-- {type=, key=, controllerKey=, unitNumber=, backing_type=, fileName=}.
local function create_spec(body)
  local doc = assert(xml.parse(body))
  local call = assert(descendant(doc, "CreateVM_Task"), "no CreateVM_Task element")
  local config = assert(xml.find(call, "config"), "CreateVM_Task without config")
  local spec = { firmware = text_of(config, "firmware"), devices = {} }
  for _, change in ipairs(xml.children(config, "deviceChange")) do
    local dev = assert(xml.find(change, "device"))
    local backing = xml.find(dev, "backing")
    spec.devices[#spec.devices + 1] = {
      operation = text_of(change, "operation"), type = (xml.xsi_type(dev)), key = text_of(dev, "key"),
      controllerKey = text_of(dev, "controllerKey"), unitNumber = text_of(dev, "unitNumber"),
      backing_type = backing and (xml.xsi_type(backing)), fileName = text_of(backing, "fileName"),
    }
  end
  return spec
end

describe("vSphere EFI build with a SATA seed CD on the simulator #vsphere", function()
  local env, tmp, sim, ssh, iso, iso_sum, key, probe, varfile

  setup(function()
    env = buildenv.vsphere("vsphere-efi-build", PASSWORD, { mib = 1 })
    tmp, sim, ssh, iso, iso_sum, key, probe, varfile =
      env.tmp, env.sim, env.ssh, env.iso, env.iso_sum, env.key, env.probe, env.varfile
  end)

  teardown(function()
    if env then env.stop() end
  end)

  it("creates the VM with firmware efi, an AHCI controller and both CD-ROMs on datastore ISOs; removes the seed "
    .. "ISO at cleanup; its OVA imports as EFI", function()
    local out = tmp .. "/out"
    local r = capil.run({ "run", "spec/fixtures/recipes/vsphere-efi.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "vsphere", "--output", out, "--var-file", varfile,
      "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. iso_sum,
      "--var", "ssh_private_key_file=" .. key, "--var", "ssh_port=" .. ssh.port,
      "--var", "ssh_username=" .. ssh.user, "--var", "probe_file=" .. probe,
      "--var", "ip_settle_timeout=0.5s" }, { timeout = 180, env_add = { XDG_CACHE_HOME = tmp .. "/cache" } })
    assert.equal(0, r.code, r.stderr)
    assert.equal("provisioned-by-capil\n", fs.read(probe))
    local ova = ("%s/%s/%s.ova"):format(out, BUILD, BUILD)
    assert.is_true(fs.exists(ova))

    -- the CreateVM_Task spec as the simulator received it
    local spec = create_spec(sim:request("CreateVM_Task"))
    assert.equal("efi", spec.firmware)
    local ahci, cds = {}, {}
    for _, d in ipairs(spec.devices) do
      if d.type == "VirtualAHCIController" then ahci[#ahci + 1] = d end
      if d.type == "VirtualCdrom" then cds[#cds + 1] = d end
    end
    assert.equal(1, #ahci, "one VirtualAHCIController")
    assert.equal("add", ahci[1].operation)
    assert.equal(2, #cds, "two VirtualCdrom devices")
    local install_path = ("[LocalDS_0] capil_cache/%s.iso"):format(iso_sum)
    local install, seed
    for _, cd in ipairs(cds) do
      assert.equal("VirtualCdromIsoBackingInfo", cd.backing_type)
      assert.matches("^%[LocalDS_0%] %S+%.iso$", cd.fileName)
      if cd.fileName == install_path then install = cd else seed = cd end
    end
    assert.is_table(install, "no CD-ROM backed by the install ISO " .. install_path)
    assert.is_table(seed, "no CD-ROM backed by the seed ISO")
    assert.matches("^%[LocalDS_0%] capil_cache/" .. BUILD:gsub("%-", "%%-") .. "%-%d+%-cd%.iso$", seed.fileName)
    -- the seed CD hangs off the AHCI controller, the install ISO does not
    assert.equal(ahci[1].key, seed.controllerKey)
    assert.not_equal(ahci[1].key, install.controllerKey)

    -- what went to the datastore as the seed ISO: the CD labelled cidata
    -- with the answer files rendered (the build user filled in)
    local seed_up
    for _, u in ipairs(sim:uploads()) do
      -- uploads go to a per-build .part name, moved into place
      if u.path:find(seed.fileName, 1, true) == 1 then seed_up = u end
    end
    assert.is_table(seed_up, "no upload of the seed ISO")
    assert.is_string(seed_up.data)
    assert.equal("cidata", seed_up.data:sub(32768 + 41, 32768 + 46)) -- the primary volume descriptor's label
    assert.matches("name: " .. ssh.user .. "\n", seed_up.data, 1, true)
    assert.matches("instance-id: capil-seed-fixture", seed_up.data, 1, true)
    assert.is_nil(seed_up.data:find("{{", 1, true))

    -- after the run: the seed ISO is gone from the datastore, the install
    -- ISO stays in the cache; the VM is kept, powered off, EFI
    assert.is_false(fs.exists(sim:datastore_file(seed.fileName)), seed.fileName .. " left on the datastore")
    assert.is_true(fs.exists(sim:datastore_file(install_path)))
    local s = assert(session.settings_from_vars({ var_files = { varfile } }))
    local vc = assert(session.connect(s))
    local function firmware_of(name)
      local found = {}
      for _, vm in ipairs(sim:vms()) do if vm.name == name then found[#found + 1] = vm end end
      assert.equal(1, #found, name)
      return assert(vc:props(vim25.ref("VirtualMachine", found[1].ref), { "config.firmware" }))["config.firmware"]
    end
    assert.equal("efi", firmware_of(BUILD))

    -- the OVA the build packed, imported by capil deploy, comes up EFI
    local d = capil.run({ "deploy", ova, "--var-file", varfile, "--name", "efi-imported" }, { timeout = 60 })
    assert.equal(0, d.code, d.stderr)
    assert.equal("efi", firmware_of("efi-imported"))
  end)
end)
