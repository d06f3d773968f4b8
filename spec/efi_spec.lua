-- EFI on every backend (issue 17): `firmware = "efi"` reaches QEMU (OVMF from
-- Debian's ovmf, a per-VM copy of the variable store), the Workstation and
-- ESXi .vmx, vSphere's CreateVM spec and the OVF; an EFI OVA imports as EFI
-- on the simulator. The QEMU cases need the ovmf package (scripts/setup
-- installs it); the #vsphere cases need vcsim (spec/support/vcsim.lua).
local qemu = require("capil.backends.qemu")
local loader = require("capil.build.loader")
local backend = require("capil.backend")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local ovf = require("capil.format.ovf")

local function has_pair(argv, flag, value)
  for i = 1, #argv - 1 do if argv[i] == flag and argv[i + 1] == value then return true end end
  return false
end

local function count(argv, pattern)
  local n = 0
  for _, a in ipairs(argv) do if a:find(pattern) then n = n + 1 end end
  return n
end

-- The steps of `recipe`'s plan on `b` with `vars` ({"k=v", ...}), by kind.
local function steps(recipe, b, vars)
  local _, errs, p = loader.load(recipe, { backend = b, var = vars })
  assert(p, errs and table.concat(errs, "\n"))
  local by_kind = {}
  for _, s in ipairs(p.steps) do by_kind[s.kind] = s end
  return by_kind
end

local function ovmf_installed()
  assert(fs.exists(qemu.OVMF.code) and fs.exists(qemu.OVMF.vars),
    "these cases need Debian's ovmf package (scripts/setup --deps installs it)")
end

describe("EFI plans #unit", function()
  it("carries firmware efi into every backend's create_vm step and the OVA's hardware", function()
    for _, b in ipairs(backend.names()) do
      local s = steps("ubuntu-2004", b, { "firmware=efi" })
      assert.equal("efi", s.create_vm.firmware, b)
      assert.equal("efi", s.pack_ova.hardware.firmware, b)
      assert.equal("bios", steps("ubuntu-2004", b, {}).create_vm.firmware, b)
    end
  end)
end)

describe("QEMU with OVMF #unit", function()
  local saved
  before_each(function() saved = { code = qemu.OVMF.code, vars = qemu.OVMF.vars } end)
  after_each(function() qemu.OVMF.code, qemu.OVMF.vars = saved.code, saved.vars end)

  it("boots efi from two pflash drives: OVMF's code read-only, a private copy of its variable store", function()
    ovmf_installed()
    local dir = peer.dir("efiargv")
    local vm = assert(qemu.vm({ workdir = dir, name = "e", disk_mb = 16, accel = "tcg", firmware = "efi",
      iso = "/x/inst.iso", disk_interface = "pvscsi", network_card = "vmxnet3" }))
    local argv = vm:argv()
    assert.is_true(has_pair(argv, "-drive",
      "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"))
    assert.is_true(has_pair(argv, "-drive", ("if=pflash,format=raw,unit=1,file=%s/efivars.fd"):format(dir)))
    assert.equal(2, count(argv, "^if=pflash"))
    -- Debian's OVMF boots no disk on pvscsi or mptsas1068: the SCSI disk hangs off virtio-scsi
    assert.is_true(has_pair(argv, "-device", "virtio-scsi-pci,id=hba0"))
    assert.is_true(has_pair(argv, "-device", "scsi-hd,drive=disk0,bus=hba0.0"))
    -- the copy: the package's store, writable by us only, not the package's file
    local st = assert(fs.stat(dir .. "/efivars.fd"))
    assert.equal(tonumber("600", 8), st.mode & tonumber("777", 8))
    assert.equal(assert(hash.file(qemu.OVMF.vars)), assert(hash.file(dir .. "/efivars.fd")))
    -- the rest of the command line is the BIOS one (no q35, the same devices)
    local bios = assert(qemu.vm({ workdir = peer.dir("biosargv"), name = "e", disk_mb = 16, accel = "tcg",
      iso = "/x/inst.iso", disk_interface = "pvscsi", network_card = "vmxnet3" }))
    local b_argv = bios:argv()
    assert.equal(0, count(b_argv, "pflash"))
    assert.is_true(has_pair(b_argv, "-device", "pvscsi,id=hba0"))
    assert.equal(#b_argv + 4, #argv)
    assert.is_nil(table.concat(argv, " "):find("-machine", 1, true))
    -- explicit bios is the default
    local bios2 = assert(qemu.vm({ workdir = peer.dir("biosargv2"), name = "e", disk_mb = 16, accel = "tcg",
      firmware = "bios" }))
    assert.equal(0, count(bios2:argv(), "pflash"))
    assert.is_false(fs.exists(bios2.workdir .. "/efivars.fd"))
    -- destroy removes the copy (and again is a no-op)
    assert.is_true(vm:destroy())
    assert.is_false(fs.exists(dir .. "/efivars.fd"))
    assert.is_true(fs.exists(qemu.OVMF.vars))
    assert.is_true(vm:destroy())
    bios:destroy()
    bios2:destroy()
  end)

  it("gives each VM its own variable store", function()
    ovmf_installed()
    local a_dir, b_dir = peer.dir("efi-a"), peer.dir("efi-b")
    local a = assert(qemu.vm({ workdir = a_dir, name = "a", disk_mb = 16, firmware = "efi" }))
    local b = assert(qemu.vm({ workdir = b_dir, name = "b", disk_mb = 16, firmware = "efi" }))
    assert.is_true(has_pair(a:argv(), "-drive", ("if=pflash,format=raw,unit=1,file=%s/efivars.fd"):format(a_dir)))
    assert.is_true(has_pair(b:argv(), "-drive", ("if=pflash,format=raw,unit=1,file=%s/efivars.fd"):format(b_dir)))
    a:destroy()
    assert.is_true(fs.exists(b_dir .. "/efivars.fd"))
    b:destroy()
  end)

  it("names the ovmf package when OVMF is missing, and refuses an unknown firmware", function()
    local dir = peer.dir("efimissing")
    qemu.OVMF.code = dir .. "/no/OVMF_CODE_4M.fd"
    local vm, err, code = qemu.vm({ workdir = dir, name = "m", disk_mb = 16, firmware = "efi" })
    assert.is_nil(vm)
    assert.equal("ENOENT", code)
    assert.equal(("qemu: firmware efi needs OVMF, and %s/no/OVMF_CODE_4M.fd is missing: install Debian's ovmf "
      .. "package (apt-get install ovmf)"):format(dir), err)
    -- nothing made: no disk, no variable store
    assert.is_false(fs.exists(dir .. "/disk.qcow2"))
    assert.is_false(fs.exists(dir .. "/efivars.fd"))
    qemu.OVMF.code = saved.code
    vm, err, code = qemu.vm({ workdir = dir, name = "m", disk_mb = 16, firmware = "uefi" })
    assert.is_nil(vm)
    assert.equal("EINVAL", code)
    assert.equal("qemu: unknown firmware 'uefi' (bios, efi)", err)
  end)

  it("create boots the plan's EFI create_vm step with OVMF", function()
    ovmf_installed()
    local dir = peer.dir("eficreate")
    local step = steps("ubuntu-2004", "qemu", { "firmware=efi" }).create_vm
    step.disk_mb = 64
    local ctx = { name = step.vm_name, workdir = dir, log_dir = dir .. "/logs", cache_dir = dir .. "/cache",
      settings = { accel = "tcg" }, media = { iso = "/x/inst.iso" }, state = {}, report = {} }
    local vm = assert(qemu.create(ctx, step))
    local argv = vm:argv()
    assert.is_true(has_pair(argv, "-drive", ("if=pflash,format=raw,unit=1,file=%s/efivars.fd"):format(dir)))
    assert.is_true(has_pair(argv, "-drive", "file=/x/inst.iso,media=cdrom,readonly=on"))
    vm:destroy()
  end)

  it("test hooks boot an EFI image with OVMF and a fresh variable store (run.vm_settings.firmware)", function()
    ovmf_installed()
    local dir = peer.dir("efitest")
    local build = dir .. "/img-kube-v1"
    assert(fs.mkdir(build))
    local mk = assert(proc.run({ argv = { "qemu-img", "create", "-q", "-f", "vmdk", build .. "/img-kube-v1-disk-0.vmdk",
      "16M" } }))
    assert.equal(0, mk.code, mk.stderr)
    local t = assert(require("capil.test.imagetest").resolve_target(build, "qemu"))
    local run = { target = t, settings = { accel = "tcg" }, work = build .. "/test/vm", test_dir = build .. "/test",
      cache_dir = dir .. "/cache", keep = false, state = {}, report = {},
      data = { dir = dir, userdata = "#cloud-config\n", metadata = "instance-id: t1\n" },
      vm_settings = { cpus = 2, memory_mb = 2048, accel = "tcg", firmware = "efi" } }
    assert(fs.mkdir(run.work))
    assert(qemu.test.prepare(run))
    local argv = run.vm:argv()
    assert.is_true(has_pair(argv, "-drive",
      "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"))
    assert.is_true(has_pair(argv, "-drive", ("if=pflash,format=raw,unit=1,file=%s/efivars.fd"):format(run.work)))
    assert.is_true(qemu.test.finish(run))
    assert.is_false(fs.exists(run.work .. "/efivars.fd"))
    -- a BIOS image's test VM has none
    run.vm_settings.firmware = "bios"
    assert(qemu.test.prepare(run))
    assert.equal(0, count(run.vm:argv(), "pflash"))
    assert.is_true(qemu.test.finish(run))
  end)
end)

describe("Workstation and ESXi .vmx with EFI #unit", function()
  it("Workstation/Fusion: firmware = efi from the plan's create_vm step", function()
    local ws = require("capil.backends.workstation")
    local function firmware(vars)
      local s = steps("ubuntu-2004", "workstation", vars).create_vm
      local e = {}
      for k, v in pairs(s) do e[k] = v end
      e.name, e.disk, e.vnc = s.vm_name, "d.vmdk", { ip = "127.0.0.1", port = 5901 }
      for _, kv in ipairs(ws.vmx_entries(e)) do if kv[1] == "firmware" then return kv[2] end end
    end
    assert.equal("efi", firmware({ "firmware=efi" }))
    assert.equal("bios", firmware({}))
  end)

  it("ESXi over SSH: firmware = \"efi\" in the .vmx, no firmware line for BIOS (ESXi's default)", function()
    local esx_ssh = require("capil.backends.esx.ssh")
    local s = steps("ubuntu-2004", "esx", { "firmware=efi" }).create_vm
    local text = esx_ssh.vmx({ name = s.vm_name, guest_os = s.guest_os, firmware = s.firmware, disk = "d.vmdk",
      isos = { "[ds] a.iso" } })
    assert.matches('\nfirmware = "efi"\n', text, 1, true)
    local bios = esx_ssh.vmx({ name = "b", firmware = "bios", disk = "d.vmdk", isos = {} })
    assert.is_nil(bios:find("firmware", 1, true))
  end)
end)

describe("vSphere EFI on the simulator #vsphere", function()
  local vcsim = require("support.vcsim")
  local json = require("capil.sys.json")
  local vim25 = require("capil.vsphere.vim25")
  local session = require("capil.vsphere.session")
  local inventory = require("capil.vsphere.inventory")
  local config = require("capil.build.config")
  local tmp, sim, varfile, vc, inv
  local PASSWORD = "Efi-s3cret!pw"

  setup(function()
    tmp = peer.dir("efi-vsphere")
    sim = vcsim.start({ username = "administrator@vsphere.local", password = PASSWORD, tls = true })
    varfile = tmp .. "/vsphere.json"
    assert(json.write(varfile, {
      vcenter_server = sim.url, username = sim.username, password = PASSWORD, vcenter_ca_file = sim.ca_file,
      datacenter = "DC0", cluster = "DC0_C0", datastore = "LocalDS_0", network = "VM Network", folder = "",
      insecure_connection = "false",
    }))
    local s = assert(session.settings_from_vars({ var_files = { varfile } }))
    vc = assert(session.connect(s))
    inv = assert(inventory.resolve(vc, s))
  end)

  teardown(function()
    if sim then sim:stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function firmware_of(ref)
    return assert(vc:props(ref, { "config.firmware" }))["config.firmware"]
  end

  it("creates the build VM with the CreateVM_Task spec's firmware efi", function()
    local b = require("capil.backends.vsphere")
    local cfg = assert(config.from_vars({ backend = "vsphere", var_files = { varfile }, vars = {}, config_dir = tmp,
      getenv = function() return nil end }))
    local iso = tmp .. "/inst.iso"
    assert(fs.write(iso, ("\0"):rep(4096)))
    local ctx = { name = "efi-build", workdir = tmp, log_dir = tmp, cache_dir = tmp .. "/cache",
      settings = backend.plan_settings(b, cfg), secret = function(var) return cfg:get(var) end,
      media = { iso = iso }, http = { auto = true, ip = "192.0.2.1", port = 8000 }, state = {}, report = {} }
    assert(b.steps.upload_media(ctx, { id = "upload-media", kind = "upload_media", checksum = assert(hash.file(iso)),
      cache_dir = "capil_cache" }))
    local step = { id = "create-vm", kind = "create_vm", vm_name = "efi-build", guest_os = "otherGuest64", cpus = 1,
      memory_mb = 256, disk_mb = 64, disk_controller = "pvscsi", network_card = "vmxnet3", vmx_version = 13,
      firmware = "efi" }
    local vm = assert(b.create(ctx, step))
    assert.equal("efi", firmware_of(vm.ref))
    step.vm_name, step.firmware = "bios-build", "bios"
    ctx.name = "bios-build"
    local vm2 = assert(b.create(ctx, step))
    assert.equal("bios", firmware_of(vm2.ref))
    assert(vm:destroy())
    assert(vm2:destroy())
  end)

  -- an OVA packed by capil (ova.pack from the plan's pack_ova step, a small
  -- streamOptimized disk from capil.format.vmdk.write)
  local function pack(name, firmware)
    local ova = require("capil.format.ova")
    local step = steps("ubuntu-2004", "vsphere", { "firmware=" .. firmware }).pack_ova
    local hw = {}
    for k, v in pairs(step.hardware) do hw[k] = v end
    hw.disk_mb = 8 -- the small disk below, not the recipe's
    local dir = tmp .. "/" .. name
    assert(fs.mkdir(dir))
    local raw = dir .. "/disk.raw"
    assert(fs.write(raw, ("\0"):rep(1024 * 1024) .. ("capil"):rep(1000)))
    assert(fs.truncate(raw, 8 * 1024 * 1024))
    assert(require("capil.format.vmdk").write(raw, dir .. "/" .. name .. "-disk-0.vmdk", { jobs = 1 }))
    local props = {}
    for k, v in pairs(step.properties) do props[k] = v:gsub("{{[^}]*}}", "x") end
    assert(ova.pack({ ova = dir .. "/" .. name .. ".ova", name = name, disks = { dir .. "/" .. name .. "-disk-0.vmdk" },
      os = step.os, hardware = hw, properties = props, annotation = step.annotation,
      product = step.product }))
    return dir .. "/" .. name .. ".ova", dir .. "/" .. name .. ".ovf"
  end

  it("imports an EFI OVA packed by capil as an EFI VM (capil.vsphere.deploy); a BIOS one as BIOS", function()
    local deploy = require("capil.vsphere.deploy")
    local ova_path, ovf_path = pack("efi-node", "efi")
    local text = assert(fs.read(ovf_path))
    local f = assert(ovf.parse(text))
    assert.equal("efi", f.hardware.firmware)
    assert.is_nil(f.boot_order)
    -- what the simulator makes of the descriptor by itself: govmomi's
    -- OvfManager.CreateImportSpec never reads vmw:Config firmware, so the
    -- import spec carries none and its VM would be BIOS
    local params = vim25.obj("OvfCreateImportSpecParams", { locale = "", deploymentOption = "",
      entityName = "probe", diskProvisioning = "thin" })
    local spec = assert(vc:call("CreateImportSpec", vc.content.ovfManager,
      { ovfDescriptor = text, resourcePool = inv.pool, datastore = inv.datastore, cisp = params }))
    assert.is_nil(spec.importSpec.configSpec.firmware)
    -- capil's deploy imports it as EFI all the same
    local vm = assert(deploy.import(vc, inv, ova_path, { name = "efi-node" }))
    assert.equal("efi", firmware_of(vm.ref))
    local bios_ova = pack("bios-node", "bios")
    local vm2 = assert(deploy.import(vc, inv, bios_ova, { name = "bios-node" }))
    assert.equal("bios", firmware_of(vm2.ref))
  end)
end)

describe("QEMU boots OVMF #qemu", function()
  it("starts an EFI VM whose OVMF boot manager finds the SCSI disk and the IDE CD-ROM (serial console)", function()
    assert(fs.exists(qemu.OVMF.code), "needs Debian's ovmf package")
    local runtime = require("capil.core.runtime")
    local dir = peer.dir("efiboot")
    -- an empty "installer CD": OVMF lists it and the blank disk, boots neither
    local iso = dir .. "/empty.iso"
    assert(fs.mkdir(dir .. "/logs"))
    local mk = assert(proc.run({ argv = { "xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-V", "EMPTY", dir .. "/logs" },
      timeout = 60 }))
    assert.equal(0, mk.code, mk.stderr)
    local vm = assert(qemu.vm({ workdir = dir, log_dir = dir .. "/logs", name = "efi-boot", disk_mb = 16, cpus = 1,
      memory_mb = 256, accel = "tcg", firmware = "efi", iso = iso, disk_interface = "pvscsi",
      network_card = "vmxnet3" }))
    assert(vm:start())
    local text, deadline
    deadline = runtime.now() + 60
    repeat
      runtime.sleep(0.5)
      text = fs.read(vm.serial_log) or ""
    until (text:find("QEMU HARDDISK", 1, true) and text:find("DVD-ROM", 1, true)) or runtime.now() > deadline
    vm:destroy()
    -- OVMF's BdsDxe names each boot option it tries on the serial console:
    -- the empty CD, the blank disk (the pvscsi disk, on virtio-scsi)
    assert.matches('BdsDxe: failed to load Boot%d+ "UEFI QEMU DVD%-ROM', text)
    assert.matches('BdsDxe: failed to load Boot%d+ "UEFI QEMU QEMU HARDDISK', text)
  end)
end)
