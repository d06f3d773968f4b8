-- capil's OVF against image-builder's, fact by fact: an OVA is packed by
-- capil from the plan of the seed recipe ubuntu-2004 (backend qemu) and a
-- small VMDK made with qemu-img, its descriptor is read back out of the OVA
-- and parsed with capil.sys.xml, and every fact a deployment reads is compared
-- with what image-builder's template writes for the same build. The
-- differences that remain are listed below, each with its reason; the spec
-- fails when any other fact differs, or when a listed one stops differing
-- (then the list is stale). docs/image-differences.md explains each one.
-- Needs qemu-utils (qemu-img).
local build_options = require("capil.build.loader")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local ova = require("capil.format.ova")
local proc = require("capil.sys.proc")
local template = require("capil.util.template")
local vmdk = require("capil.format.vmdk")
local xml = require("capil.sys.xml")

local NS = {
  ovf = "http://schemas.dmtf.org/ovf/envelope/1",
  rasd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
  vssd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
  vmw = "http://www.vmware.com/schema/ovf",
}
local NONE = "(none)"
local BUILD = "ubuntu-2004-kube-v1.16.14"
local ANY = {} -- the value changes with every build: only its presence is compared

-- ====================================================================== --
-- image-builder's values                                                 --
-- ====================================================================== --

-- What image-builder's OVF says for ubuntu-2004 with its default
-- configuration, written by hand from kubernetes-sigs/image-builder (the
-- template is not copied here):
--   era: commit 308a9dae5 (2020-08-25), images/capi/hack/image-build-ova.py
--     (_NODE_OVF_TEMPLATE, OS_id_map, --vmx default 15), with the values of
--     packer/config/{kubernetes,cni,containerd}.json and
--     packer/ova/ubuntu-2004.json of that commit;
--   head: commit ae63061ef (2026-07), images/capi/hack/ovf_template.xml and
--     hack/image-build-ova.py. Its configuration is newer than capil's seed
--     (Kubernetes v1.36), so version values are not compared against it:
--     only what the template itself decides.
local IMAGE_BUILDER = {
  era = {
    name = BUILD, -- ${ARTIFACT_ID}: Packer's artifact id, the VM name
    annotation = "Cluster API vSphere image - Ubuntu 20.04 and Kubernetes v1.16.14 - "
      .. "https://github.com/kubernetes-sigs/cluster-api-provider-vsphere",
    os_id = "94", os_version = "", os_type = "ubuntu-64",
    system_type = "vmx-15",
    cpus = "2", cores_per_socket = "2", memory = "2048 byte * 2^20",
    scsi = "lsilogic", ide_controllers = "1",
    disk_parent = "SCSI", disk_capacity_bytes = tostring(20 << 30), disk_units = "byte * 2^30",
    disk_format = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    nic = "VmxNet3", nic_connection = "nic0", networks = "nic0",
    nic_config = "connectable.allowGuestControl=true slotInfo.pciSlotNumber=192 wakeOnLanEnabled=false",
    cdrom = "vmware.cdrom.atapi on IDE", floppy = "vmware.floppy.device", vmci = NONE, video = "present",
    firmware = "bios",
    config = "bootOptions.efiSecureBootEnabled=false cpuHotAddEnabled=false cpuHotRemoveEnabled=false "
      .. "firmware=bios flags.vbsEnabled=false flags.vvtdEnabled=false memoryHotAddEnabled=false "
      .. "nestedHVEnabled=false virtualICH7MPresent=false virtualSMCPresent=false",
    boot_order = NONE, storage_policy = "vSAN Default Storage Policy", eula = "present",
    product = "Ubuntu 20.04 and Kubernetes v1.16.14", vendor = "VMware Inc.", version = "kube-v1.16.14",
    full_version = "kube-v1.16.14", vendor_url = "https://vmware.com", category = "Cluster API Provider (CAPI)",
    property_keys = "BUILD_DATE BUILD_TIMESTAMP CNI_VERSION CONTAINERD_VERSION CUSTOM_ROLE IMAGE_BUILDER_VERSION "
      .. "KUBERNETES_SEMVER KUBERNETES_SOURCE_TYPE",
    property_form = "userConfigurable=false type=string",
    ["property.BUILD_DATE"] = ANY, ["property.BUILD_TIMESTAMP"] = ANY, ["property.IMAGE_BUILDER_VERSION"] = ANY,
    ["property.CNI_VERSION"] = "v0.8.6", ["property.CONTAINERD_VERSION"] = "1.3.4",
    ["property.CUSTOM_ROLE"] = "false", ["property.KUBERNETES_SEMVER"] = "v1.16.14",
    ["property.KUBERNETES_SOURCE_TYPE"] = "pkg",
  },
  head = {
    name = BUILD,
    os_id = "94", os_version = "", os_type = "ubuntu64Guest",
    system_type = "vmx-15", -- packer-common.json.tmpl's vmx_version for Ubuntu
    cpus = "2", cores_per_socket = "2", memory = "2048 byte * 2^20",
    scsi = "VirtualSCSI", ide_controllers = "2",
    disk_parent = "SCSI", disk_capacity_bytes = tostring(20480 << 20), disk_units = "byte * 2^20",
    disk_format = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    nic = "VmxNet3", nic_connection = "nic0", networks = "nic0",
    nic_config = "connectable.allowGuestControl=true slotInfo.pciSlotNumber=192 wakeOnLanEnabled=false",
    cdrom = "vmware.cdrom.remotepassthrough on IDE", floppy = NONE, vmci = "vmware.vmci", video = "present",
    firmware = "bios",
    config = "bootOptions.efiSecureBootEnabled=false cpuHotAddEnabled=false cpuHotRemoveEnabled=false "
      .. "firmware=bios flags.vbsEnabled=false flags.vvtdEnabled=false memoryHotAddEnabled=false "
      .. "nestedHVEnabled=false powerOpInfo.powerOffType=soft powerOpInfo.resetType=soft "
      .. "powerOpInfo.standbyAction=checkpoint powerOpInfo.suspendType=hard tools.afterPowerOn=true "
      .. "tools.afterResume=true tools.beforeGuestShutdown=true tools.beforeGuestStandby=true "
      .. "tools.syncTimeWithHost=false virtualICH7MPresent=false virtualSMCPresent=false",
    boot_order = "disk", storage_policy = NONE, eula = "present",
    vendor = "VMware Inc.", vendor_url = "https://vmware.com", category = "Cluster API Provider (CAPI)",
    property_keys = "BUILD_DATE BUILD_TIMESTAMP CNI_VERSION CONTAINERD_VERSION DISTRO_ARCH DISTRO_NAME "
      .. "DISTRO_VERSION IMAGE_BUILDER_VERSION KUBERNETES_SEMVER KUBERNETES_SOURCE_TYPE",
    property_form = "userConfigurable=false type=string",
  },
}

-- ====================================================================== --
-- Deliberate differences                                                 --
-- ====================================================================== --

-- Every fact where capil's OVF differs, with capil's value and the reason.
-- docs/image-differences.md says the same for people.
local DIFFERENT = {
  era = {
    os_type = { capil = "ubuntu64Guest", why = "vmw:osType is a vSphere guest id: image-builder wrote the "
      .. "Workstation id ubuntu-64 (sic), which vSphere does not know; image-builder later wrote ubuntu64Guest too" },
    scsi = { capil = "VirtualSCSI", why = "ovf.disk_controller defaults to pvscsi, as image-builder's own "
      .. "template from 29faa3dc8 (2020-09-02) on and the build VM's controller; lsilogic is a variable away" },
    disk_units = { capil = "byte * 2^20", why = "the capacity follows the disk (hardware.disk_size, MiB), "
      .. "not a fixed 20 GiB (image-builder #428, fixed the same way by its PR #498); the bytes are equal" },
    floppy = { capil = NONE, why = "no floppy drive: nothing in a node uses one (image-builder dropped it in 2020-09)" },
    boot_order = { capil = "disk", why = "a BootOrderSection naming the disk on BIOS images, as image-builder's "
      .. "later template (its PR #353); none on EFI images, which it made vCenter deploy as BIOS (image-builder #619)" },
    storage_policy = { capil = NONE, why = "no vSAN storage policy group: the policy is the datastore's default "
      .. "wherever the OVA is deployed (image-builder dropped it in 2020-09)" },
    eula = { capil = NONE, why = "VMware's EULA is VMware's text, not capil's to ship: ovf.eula_file adds one" },
    property_keys = { capil = "BUILD_DATE BUILD_TIMESTAMP CNI_VERSION CONTAINERD_VERSION CUSTOM_ROLE DISTRO_ARCH "
      .. "DISTRO_NAME DISTRO_VERSION IMAGE_BUILDER_VERSION KUBERNETES_SEMVER KUBERNETES_SOURCE_TYPE",
      why = "DISTRO_NAME, DISTRO_VERSION and DISTRO_ARCH added, as image-builder itself later did" },
    ["property.KUBERNETES_SOURCE_TYPE"] = { capil = "http", why = "v1.16.14 installs from the release "
      .. "binaries on dl.k8s.io: the 2020 apt/yum repositories were shut down in 2024 and pkgs.k8s.io starts "
      .. "at v1.24 (kubernetes_source_type auto; issue 14)" },
  },
  head = {
    ide_controllers = { capil = "1", why = "one IDE controller carries the CD-ROM; the second of vCenter's "
      .. "stock export holds nothing" },
    cdrom = { capil = "vmware.cdrom.atapi on IDE", why = "an empty ATAPI drive (the 2020 template's): a "
      .. "remote-passthrough drive needs a client console to mean anything" },
    vmci = { capil = NONE, why = "no VMCI device: vSphere adds one to every VM by itself" },
    config = { capil = "bootOptions.efiSecureBootEnabled=false cpuHotAddEnabled=false cpuHotRemoveEnabled=false "
      .. "firmware=bios flags.vbsEnabled=false flags.vvtdEnabled=false memoryHotAddEnabled=false "
      .. "nestedHVEnabled=false virtualICH7MPresent=false virtualSMCPresent=false",
      why = "the 2020 template's keys; the later tools.* and powerOpInfo.* keys restate vSphere's defaults" },
    eula = { capil = NONE, why = "VMware's EULA is VMware's text, not capil's to ship: ovf.eula_file adds one" },
    property_keys = { capil = "BUILD_DATE BUILD_TIMESTAMP CNI_VERSION CONTAINERD_VERSION CUSTOM_ROLE DISTRO_ARCH "
      .. "DISTRO_NAME DISTRO_VERSION IMAGE_BUILDER_VERSION KUBERNETES_SEMVER KUBERNETES_SOURCE_TYPE",
      why = "CUSTOM_ROLE kept from the 2020 template (image-builder dropped it)" },
  },
}

-- ====================================================================== --
-- Reading an OVF                                                         --
-- ====================================================================== --

local function rasd(item, name)
  local e = xml.find(item, name, NS.rasd)
  return e and xml.text(e)
end

-- vmw:Config key=value pairs of an element, sorted, space-separated.
local function configs(el)
  local kv = {}
  for _, c in ipairs(xml.children(el, "Config", NS.vmw)) do
    kv[#kv + 1] = xml.attr(c, NS.vmw, "key") .. "=" .. xml.attr(c, NS.vmw, "value")
  end
  table.sort(kv)
  return table.concat(kv, " ")
end

local TYPE_NAME = { ["5"] = "IDE", ["6"] = "SCSI" }

-- The facts a deployment reads from a descriptor, as strings (NONE when
-- absent), read straight from the XML tree.
local function deployment_facts(text)
  local root = assert(xml.parse(text))
  assert(root.name == "Envelope" and root.ns == NS.ovf, "not an OVF envelope")
  local vs = assert(xml.find(root, "VirtualSystem", NS.ovf))
  local hw = assert(xml.find(vs, "VirtualHardwareSection", NS.ovf))
  local f = { name = xml.attr(vs, NS.ovf, "id") }
  assert.equal(f.name, xml.text(xml.find(vs, "Name", NS.ovf)))
  local ann = xml.find(vs, "AnnotationSection", NS.ovf)
  f.annotation = ann and xml.text(xml.find(ann, "Annotation", NS.ovf)) or NONE
  local os = assert(xml.find(vs, "OperatingSystemSection", NS.ovf))
  f.os_id, f.os_version = xml.attr(os, NS.ovf, "id"), xml.attr(os, NS.ovf, "version") or ""
  f.os_type = xml.attr(os, NS.vmw, "osType")
  f.system_type = xml.text(xml.find(xml.find(hw, "System", NS.ovf), "VirtualSystemType", NS.vssd))

  local items, by_id, ide = xml.children(hw, "Item", NS.ovf), {}, 0
  for _, it in ipairs(items) do by_id[rasd(it, "InstanceID")] = it end
  f.floppy, f.vmci, f.cdrom, f.video = NONE, NONE, NONE, NONE
  for _, it in ipairs(items) do
    local t = rasd(it, "ResourceType")
    if t == "3" then
      f.cpus = rasd(it, "VirtualQuantity")
      local cps = xml.find(it, "CoresPerSocket", NS.vmw)
      f.cores_per_socket = cps and xml.text(cps) or "1"
    elseif t == "4" then
      f.memory = rasd(it, "VirtualQuantity") .. " " .. rasd(it, "AllocationUnits")
    elseif t == "5" then
      ide = ide + 1
    elseif t == "6" then
      f.scsi = rasd(it, "ResourceSubType")
    elseif t == "10" then
      f.nic, f.nic_connection, f.nic_config = rasd(it, "ResourceSubType"), rasd(it, "Connection"), configs(it)
    elseif t == "14" then
      f.floppy = rasd(it, "ResourceSubType")
    elseif t == "15" then
      local parent = by_id[rasd(it, "Parent")]
      f.cdrom = rasd(it, "ResourceSubType") .. " on " .. TYPE_NAME[rasd(parent, "ResourceType")]
    elseif t == "17" then
      f.disk_parent = TYPE_NAME[rasd(by_id[rasd(it, "Parent")], "ResourceType")]
      assert.equal("ovf:/disk/vmdisk1", rasd(it, "HostResource"))
    elseif t == "1" then
      f.vmci = rasd(it, "ResourceSubType")
    elseif t == "24" then
      f.video = "present"
    end
  end
  f.ide_controllers = tostring(ide)
  f.config = configs(hw)
  f.firmware = f.config:match("firmware=(%S+)") or "bios"
  local boot = xml.find(vs, "BootOrderSection", NS.vmw)
  f.boot_order = boot and xml.attr(boot, NS.vmw, "type") or NONE
  local sg = xml.find(root, "StorageGroupSection", NS.vmw)
  f.storage_policy = sg and xml.attr(sg, NS.vmw, "name") or NONE
  f.eula = xml.find(vs, "EulaSection", NS.ovf) and "present" or NONE

  local disk = xml.find(xml.find(root, "DiskSection", NS.ovf), "Disk", NS.ovf)
  f.disk_units = xml.attr(disk, NS.ovf, "capacityAllocationUnits")
  local scale = { ["byte * 2^20"] = 1024 ^ 2, ["byte * 2^30"] = 1024 ^ 3 }
  f.disk_capacity_bytes = tostring(math.tointeger(tonumber(xml.attr(disk, NS.ovf, "capacity")) * scale[f.disk_units]))
  f.disk_format = xml.attr(disk, NS.ovf, "format")
  local nets = {}
  for _, n in ipairs(xml.children(xml.find(root, "NetworkSection", NS.ovf), "Network", NS.ovf)) do
    nets[#nets + 1] = xml.attr(n, NS.ovf, "name")
  end
  f.networks = table.concat(nets, " ")

  local ps = assert(xml.find(vs, "ProductSection", NS.ovf))
  local function txt(n) local e = xml.find(ps, n, NS.ovf) return e and xml.text(e) or NONE end
  f.product, f.vendor, f.version, f.full_version = txt("Product"), txt("Vendor"), txt("Version"), txt("FullVersion")
  f.vendor_url, f.category = txt("VendorUrl"), txt("Category")
  local keys, forms = {}, {}
  for _, p in ipairs(xml.children(ps, "Property", NS.ovf)) do
    local k = xml.attr(p, NS.ovf, "key")
    keys[#keys + 1] = k
    f["property." .. k] = xml.attr(p, NS.ovf, "value")
    forms[("userConfigurable=%s type=%s"):format(xml.attr(p, NS.ovf, "userConfigurable"),
      xml.attr(p, NS.ovf, "type"))] = true
  end
  table.sort(keys)
  f.property_keys = table.concat(keys, " ")
  local form = {}
  for k in pairs(forms) do form[#form + 1] = k end
  table.sort(form)
  f.property_form = table.concat(form, "; ")
  return f
end

-- ====================================================================== --
-- The spec                                                               --
-- ====================================================================== --

local function run(argv)
  local r = assert(proc.run({ argv = argv, timeout = 120 }))
  assert(r.code == 0, table.concat(argv, " ") .. " failed: " .. r.stderr)
end

-- The descriptor member's text, read out of the OVA.
local function descriptor_of(path)
  local members = assert(ova.members(path))
  local d = members[1]
  assert.truthy(d.name:match("%.ovf$"), "the OVA's first member is " .. d.name)
  local f = assert(io.open(path, "rb"))
  f:seek("set", d.offset)
  local text = f:read(d.size)
  f:close()
  return text
end

-- Facts compared against one image-builder table: the ones that differ.
local function differences(expected, actual)
  local out = {}
  for k, want in pairs(expected) do
    local got = actual[k]
    local same = want == ANY and got ~= nil or got == want
    if not same then out[k] = got == nil and "(absent)" or got end
  end
  return out
end

describe("capil's OVF against image-builder's #unit #ova", function()
  local tmp, facts, level

  setup(function()
    level = log.level()
    log.configure({ level = "warn" })
    tmp = assert(fs.tempdir({ prefix = "capil-ovf-ib-spec", keep = true }))
    local _, errs, plan = build_options.load("ubuntu-2004", { backend = "qemu" })
    assert(plan, errs and table.concat(errs, "\n"))
    local step
    for _, s in ipairs(plan.steps) do if s.kind == "pack_ova" then step = s end end
    -- the build's disk: empty, of the recipe's size (20480 MiB), streamOptimized
    local raw = tmp .. "/disk.raw"
    run({ "qemu-img", "create", "-q", "-f", "raw", raw, step.hardware.disk_mb .. "M" })
    local disk = tmp .. "/" .. BUILD .. "-disk-0.vmdk"
    assert(vmdk.convert(raw, disk, { adapter_type = "lsilogic", hwversion = 15, src_format = "raw" }))
    -- the run fills the build time and capil's version, as the executor does
    local vars = { build_timestamp = "1600000000", build_date = "2020-09-13T12:26:40Z", capil_version = "0.0.0" }
    for k, v in pairs(step.properties) do step.properties[k] = assert(template.render(v, vars)) end
    step.ova = tmp .. "/" .. BUILD .. ".ova"
    step.ovf, step.mf, step.sha256 = nil, nil, nil
    step.disks, step.progress = { disk }, false
    assert(ova.pack(step))
    facts = deployment_facts(descriptor_of(step.ova))
  end)

  teardown(function()
    log.configure({ level = level })
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  it("declares what kubeadm needs on a control-plane node, as image-builder's does", function()
    -- issue 14: 2 vCPUs (kubeadm's NumCPU preflight), not the build VM's 1
    assert.same({ "2", "2", "2048 byte * 2^20", "VmxNet3" },
      { facts.cpus, facts.cores_per_socket, facts.memory, facts.nic })
  end)

  for _, era in ipairs({ "era", "head" }) do
    it("differs from image-builder's " .. era .. " template only where listed", function()
      local expected, listed = IMAGE_BUILDER[era], DIFFERENT[era]
      local got = differences(expected, facts)
      local want = {}
      for k, d in pairs(listed) do want[k] = d.capil end
      assert.same(want, got)
    end)
  end

  it("reads the same facts from capil's OVF as image-builder's template has", function()
    -- a fact image-builder's era template has and capil's extraction never
    -- produced would hide a difference
    for k in pairs(IMAGE_BUILDER.era) do assert.is_not_nil(facts[k], k) end
    for k in pairs(facts) do
      if not k:match("^property%.") then assert.is_not_nil(IMAGE_BUILDER.era[k], "fact not compared: " .. k) end
    end
  end)

  it("explains every deliberate difference in docs/image-differences.md", function()
    local doc = assert(fs.read("docs/image-differences.md"))
    for era, list in pairs(DIFFERENT) do
      for k, d in pairs(list) do
        assert.truthy(#d.why > 20, era .. " " .. k)
        assert.truthy(doc:find("`" .. k .. "`", 1, true), "docs/image-differences.md does not name `" .. k .. "`")
      end
    end
  end)
end)
