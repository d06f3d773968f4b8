-- The OVF descriptor: generated from real plans, checked by xmllint and
-- parsed back into the same facts. Needs libxml2-utils (xmllint).
local build_options = require("capil.build.loader")
local fs = require("capil.sys.fs")
local ova = require("capil.format.ova")
local ovf = require("capil.format.ovf")
local proc = require("capil.sys.proc")
local template = require("capil.util.template")

local VARS = { build_timestamp = "1600000000", build_date = "2020-09-13T12:26:40Z", capil_version = "0.1.0" }

local function ova_step(recipe, vars)
  local _, errs, p = build_options.load(recipe, { var = vars })
  assert(p, errs and table.concat(errs, "\n"))
  for _, s in ipairs(p.steps) do
    if s.kind == "pack_ova" then
      for k, v in pairs(s.properties) do s.properties[k] = assert(template.render(v, VARS)) end
      return s
    end
  end
end

-- The descriptor parameters ova.pack builds from a plan step (one disk).
local function params(step, overrides)
  local p = {
    name = "vm-1", os = step.os, hardware = step.hardware, network = "nic0",
    disks = { { href = "vm-1-disk-0.vmdk", size = 123456789, capacity_mb = step.hardware.disk_mb, populated_size = 987654321 } },
    annotation = "Cluster API vSphere image", properties = ova.property_list(step.properties),
    product = { name = "P", vendor = "V", version = "kube-v1", full_version = "kube-v1", vendor_url = "https://x", category = "C" },
  }
  for k, v in pairs(overrides or {}) do p[k] = v end
  return p
end

local function xmllint(text)
  local dir = assert(fs.tempdir({ prefix = "capil-ovf-spec" }))
  local path = dir .. "/d.ovf"
  assert(fs.write(path, text))
  local r = assert(proc.run({ argv = { "xmllint", "--noout", path }, timeout = 30 }))
  fs.remove(dir, { recursive = true })
  return r.code == 0, r.stderr
end

describe("ovf #ova", function()
  it("round-trips the descriptor of a real plan (ubuntu-2004, 40 GiB) through ovf.parse", function()
    local step = ova_step("ubuntu-2004", { "disk_size=40960", "ovf_cpus=4", "ovf_cores_per_socket=2",
      "ovf_memory=8192" })
    local text = ovf.descriptor(params(step))
    assert.is_true(xmllint(text))
    local f = assert(ovf.parse(text))
    assert.equal("vm-1", f.name)
    assert.same({ { id = "file1", href = "vm-1-disk-0.vmdk", size = 123456789 } }, f.references)
    assert.same({ disk_id = "vmdisk1", file_ref = "file1", capacity = 40960, units = "byte * 2^20",
      capacity_bytes = 40 * 1024 ^ 3, populated_size = 987654321, format = ovf.STREAM_OPTIMIZED }, f.disks[1])
    assert.same({ id = 94, version = "", os_type = "ubuntu64Guest", description = "Ubuntu 20.04" }, f.os)
    assert.equal("vmx-15", f.hardware.system_type)
    assert.equal(4, f.hardware.cpus)
    assert.equal(2, f.hardware.cores_per_socket)
    assert.equal(8192, f.hardware.memory_mb)
    assert.equal("VirtualSCSI", f.hardware.scsi)
    assert.equal("bios", f.hardware.firmware)
    assert.same({ "nic0" }, f.networks)
    assert.equal("Cluster API vSphere image", f.annotation)
    assert.same({ name = "P", vendor = "V", version = "kube-v1", full_version = "kube-v1", vendor_url = "https://x",
      category = "C" }, f.product)
    local props = {}
    for _, kv in ipairs(ova.property_list(step.properties)) do props[kv[1]] = kv[2] end
    assert.same(props, f.properties)
    assert.equal("BUILD_TIMESTAMP", f.property_order[1])
    assert.equal("DISTRO_ARCH", f.property_order[#f.property_order])
    assert.is_false(f.eula)
  end)

  it("writes each seed recipe's OS ids and controller", function()
    local want = {
      ["centos-7"] = { id = 107, version = "7", os_type = "centos7_64Guest" },
      ["photon-3"] = { id = 36, version = "", os_type = "vmwarePhoton64Guest" },
      ["ubuntu-1804"] = { id = 94, version = "", os_type = "ubuntu64Guest" },
    }
    for recipe, os in pairs(want) do
      local step = ova_step(recipe)
      local text = ovf.descriptor(params(step))
      assert.is_true(xmllint(text), recipe)
      local f = assert(ovf.parse(text))
      assert.equal(os.id, f.os.id, recipe)
      assert.equal(os.version, f.os.version, recipe)
      assert.equal(os.os_type, f.os.os_type, recipe)
      assert.equal(step.hardware.disk_mb * 1024 * 1024, f.disks[1].capacity_bytes, recipe)
    end
  end)

  -- issue 14: the OVA described the 1-CPU build VM, and a node deployed
  -- from it failed kubeadm's control-plane preflight (2 CPUs)
  it("describes the deployed node (ovf.*), not the build VM (hardware.*)", function()
    local step = ova_step("ubuntu-2004", { "cpus=1", "cpu_cores=1", "memory=1024", "disk_controller_type=lsilogic",
      "network_card=e1000" })
    local f = assert(ovf.parse(ovf.descriptor(params(step))))
    assert.same({ 2, 2, 2048, "VirtualSCSI", "VmxNet3" },
      { f.hardware.cpus, f.hardware.cores_per_socket, f.hardware.memory_mb, f.hardware.scsi, f.hardware.nic })
    step = ova_step("ubuntu-2004", { "cpus=8", "cpu_cores=4", "ovf_cpus=4", "ovf_cores_per_socket=1",
      "ovf_memory=4096", "ovf_disk_controller_type=lsilogic", "ovf_network_card=e1000e" })
    local text = ovf.descriptor(params(step))
    assert.is_true(xmllint(text))
    f = assert(ovf.parse(text))
    assert.same({ 4, 1, 4096, "lsilogic", "E1000e" },
      { f.hardware.cpus, f.hardware.cores_per_socket, f.hardware.memory_mb, f.hardware.scsi, f.hardware.nic })
    assert.truthy(text:find("<rasd:Description>E1000e ethernet adapter on &quot;nic0&quot;</rasd:Description>", 1, true))
  end)

  it("refuses CPUs that are not whole sockets, in the plan and in the descriptor", function()
    local _, errs = build_options.load("ubuntu-2004", { var = { "ovf_cpus=3", "ovf_cores_per_socket=2" } })
    assert.truthy(table.concat(errs or {}, "\n"):find("ovf.cores_per_socket: 3 CPUs (ovf.cpus) cannot be split "
      .. "into sockets of 2 cores", 1, true))
    local step = ova_step("ubuntu-2004")
    local hw = {}
    for k, v in pairs(step.hardware) do hw[k] = v end
    hw.cpus = 3
    assert.has_error(function() ovf.descriptor(params(step, { hardware = hw })) end,
      "ovf.descriptor: 3 CPUs cannot be split into sockets of 2 cores")
    hw.cpus, hw.network_card = 2, "rtl8139"
    assert.has_error(function() ovf.descriptor(params(step, { hardware = hw })) end,
      "ovf.descriptor: unknown network card rtl8139")
  end)

  it("writes efi firmware, the lsilogic controller and a EULA", function()
    local step = ova_step("ubuntu-2004", { "firmware=efi", "ovf_disk_controller_type=lsilogic" })
    local text = ovf.descriptor(params(step, { eula = "Terms & <conditions>\nline 2" }))
    local f = assert(ovf.parse(text))
    assert.equal("efi", f.hardware.firmware)
    assert.equal("lsilogic", f.hardware.scsi)
    assert.is_true(f.eula)
    assert.truthy(text:find("Terms &amp; &lt;conditions&gt;\nline 2", 1, true))
    -- image-builder #619: a BootOrderSection made vCenter deploy EFI OVAs as BIOS
    assert.is_nil(text:find("BootOrderSection", 1, true))
    assert.is_nil(f.boot_order)
    local hw = assert(text:match("<VirtualHardwareSection>(.-)</VirtualHardwareSection>"))
    assert.truthy(hw:find('\n      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>\n', 1, true))
    assert.equal("false", f.hardware.config["bootOptions.efiSecureBootEnabled"])
  end)

  it("keeps the disk-first BootOrderSection on BIOS descriptors and refuses an unknown firmware", function()
    local step = ova_step("ubuntu-2004", {})
    local text = ovf.descriptor(params(step))
    assert.truthy(text:find('<vmw:BootOrderSection vmw:instanceId="5" vmw:type="disk">', 1, true))
    local f = assert(ovf.parse(text))
    assert.same({ type = "disk", instance_id = "5" }, f.boot_order)
    assert.equal("bios", f.hardware.firmware)
    local hw = {}
    for k, v in pairs(step.hardware) do hw[k] = v end
    hw.firmware = "uefi"
    assert.has_error(function() ovf.descriptor(params(step, { hardware = hw })) end,
      "ovf.descriptor: unknown firmware uefi (bios, efi)")
  end)

  it("escapes hostile values and refuses what XML cannot carry", function()
    local step = ova_step("ubuntu-2004")
    local evil = [["><x a='1'>&amp;</x><!--]]
    local text = ovf.descriptor(params(step, { name = evil, annotation = evil,
      properties = { { "K", evil } } }))
    assert.is_true(xmllint(text))
    local f = assert(ovf.parse(text))
    assert.equal(evil, f.name)
    assert.equal(evil, f.annotation)
    assert.equal(evil, f.properties.K)
    assert.has_error(function() ovf.descriptor(params(step, { annotation = "bell\7" })) end)
    assert.has_error(function()
      ovf.descriptor(params(step, { disks = { { href = "../x.vmdk", size = 1, capacity_mb = 1 } } }))
    end, "ovf.descriptor: disks[1].href must be a file name without directories")
  end)

  it("writes integers as integers and capacities in bytes when not whole MiB", function()
    local step = ova_step("ubuntu-2004")
    local hw = {}
    for k, v in pairs(step.hardware) do hw[k] = v end
    hw.cpus, hw.memory_mb = 2.0, 4096.0
    local text = ovf.descriptor(params(step, { hardware = hw,
      disks = { { href = "a.vmdk", size = 10.0, capacity_mb = 40960.0 }, { href = "b.vmdk", size = 5, capacity_bytes = 1000000 } } }))
    assert.truthy(text:find('ovf:capacity="40960" ovf:capacityAllocationUnits="byte * 2^20"', 1, true))
    assert.truthy(text:find('ovf:capacity="1000000" ovf:capacityAllocationUnits="byte"', 1, true))
    assert.truthy(text:find("<rasd:VirtualQuantity>2</rasd:VirtualQuantity>", 1, true))
    assert.is_nil(text:find(">2.0<", 1, true))
    assert.is_nil(text:find('"10.0"', 1, true))
    assert.is_nil(text:find("4096.0", 1, true))
    local f = assert(ovf.parse(text))
    assert.equal(1000000, f.disks[2].capacity_bytes)
    assert.equal("ovf:/disk/vmdisk2", f.hardware.items[6].host_resource)
    hw.cpus = 1.5
    assert.has_error(function() ovf.descriptor(params(step, { hardware = hw })) end,
      "ovf.descriptor: hardware.cpus must be an integer, got 1.5")
    hw.cpus = 2
    hw.disk_controller = "nvme"
    assert.has_error(function() ovf.descriptor(params(step, { hardware = hw })) end,
      "ovf.descriptor: unknown disk controller nvme")
  end)

  it("parses other writers' units and refuses what is not an OVF", function()
    local function disk(units)
      return ([[<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
        xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><DiskSection><Disk ovf:capacity="20"
        ovf:capacityAllocationUnits="%s" ovf:diskId="d" ovf:fileRef="f"/></DiskSection>
        <VirtualSystem ovf:id="x"/></Envelope>]]):format(units)
    end
    assert.equal(20 * 1024 ^ 3, assert(ovf.parse(disk("byte * 2^30"))).disks[1].capacity_bytes)
    assert.equal(20 * 1024 ^ 3, assert(ovf.parse(disk("byte*2^30"))).disks[1].capacity_bytes)
    assert.equal(20 * 1024 ^ 2, assert(ovf.parse(disk("MB"))).disks[1].capacity_bytes)
    assert.is_nil(assert(ovf.parse(disk("furlongs"))).disks[1].capacity_bytes)
    local _, err = ovf.parse("<Envelope><unclosed></Envelope>")
    assert.truthy(err)
    local _, err2 = ovf.parse('<Envelope xmlns="urn:other"/>')
    assert.equal("ovf.parse: the root element is {urn:other}Envelope, not an OVF Envelope", err2)
    local _, err3 = ovf.parse('<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>')
    assert.equal("ovf.parse: no VirtualSystem", err3)
  end)
end)
