--- capil.format.ovf — the OVF descriptor of a node image: generated from the plan
--- with the escaping XML writer (never by concatenating values), and parsed
--- back into facts for `capil ova verify` and `capil ova inspect`.
---
--- The hardware written is the deployed node's (the recipe's `ovf.*`
--- fields, image-builder's template values by default), never the build
--- VM's. Compared with image-builder's template: the disk capacity is the
--- VMDK's (MiB, `byte * 2^20`), not a fixed 20 GiB; CPUs, cores, memory,
--- SCSI controller and NIC are settable; the osType is the vSphere guest
--- id; the firmware (bios or efi) is written as vmw:Config firmware, and an
--- EFI descriptor has no BootOrderSection (image-builder #619: with one,
--- vCenter deployed its EFI OVAs as BIOS).
--- docs/image-differences.md lists every difference and its reason.
local xml = require("capil.sys.xml")

local M = {}

M.NS = {
  ovf = "http://schemas.dmtf.org/ovf/envelope/1",
  cim = "http://schemas.dmtf.org/wbem/wscim/1/common",
  rasd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
  vssd = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
  vmw = "http://www.vmware.com/schema/ovf",
  xsi = "http://www.w3.org/2001/XMLSchema-instance",
}
M.STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

local OVF, RASD, VSSD, VMW = M.NS.ovf, M.NS.rasd, M.NS.vssd, M.NS.vmw

local CONTROLLER = {
  pvscsi = { subtype = "VirtualSCSI", name = "SCSI Controller 0 (pvscsi)" },
  lsilogic = { subtype = "lsilogic", name = "SCSI Controller 0 (lsilogic)" },
}

-- NIC models as vSphere's OVF export names them (rasd:ResourceSubType).
local NIC = {
  vmxnet3 = "VmxNet3",
  e1000 = "E1000",
  e1000e = "E1000e",
}

-- ====================================================================== --
-- Writing                                                                --
-- ====================================================================== --

local PREFIX = { [M.NS.rasd] = "rasd", [M.NS.vssd] = "vssd", [M.NS.vmw] = "vmw" }

local function el(ns, name, attrs, children)
  local e = xml.element(name, attrs, children)
  e.ns = ns
  e.prefix = PREFIX[ns] -- declared on the Envelope; OVF is the default namespace
  return e
end

local function o(name, attrs, children) return el(OVF, name, attrs, children) end

-- Integers as integers: 40960.0 (a float from JSON or arithmetic) must not
-- be written "40960.0", which vSphere rejects.
local function int(v, what)
  local i = math.tointeger(tonumber(v))
  if not i then error(("ovf.descriptor: %s must be an integer, got %s"):format(what, tostring(v)), 3) end
  return tostring(i)
end

-- The Disk capacity and its units: MiB when the bytes are whole MiB (as
-- image-builder and vSphere write it), bytes otherwise.
local function capacity(d, i)
  if d.capacity_bytes then
    local b = math.tointeger(d.capacity_bytes)
    if not b or b <= 0 then error(("ovf.descriptor: disks[%d].capacity_bytes must be a positive integer"):format(i), 3) end
    if b % 1048576 == 0 then return tostring(b // 1048576), "byte * 2^20" end
    return tostring(b), "byte"
  end
  return int(d.capacity_mb, ("disks[%d].capacity_mb"):format(i)), "byte * 2^20"
end

local function rasd_item(fields, required)
  local kids = {}
  -- rasd elements must be in alphabetical order (the CIM schema's sequence)
  local names = {}
  for k in pairs(fields) do if k ~= "_config" then names[#names + 1] = k end end
  table.sort(names)
  for _, k in ipairs(names) do kids[#kids + 1] = el(RASD, k, nil, tostring(fields[k])) end
  for _, kv in ipairs(fields._config or {}) do
    kids[#kids + 1] = el(VMW, "Config", { ["{" .. OVF .. "}required"] = "false",
      ["{" .. VMW .. "}key"] = kv[1], ["{" .. VMW .. "}value"] = kv[2] })
  end
  local attrs = required == false and { ["{" .. OVF .. "}required"] = "false" } or nil
  return o("Item", attrs, kids)
end

--- The descriptor text.
--- params: name, os = {ovf_id, ovf_version, os_type, display_name},
--- hardware = {cpus, cores_per_socket, memory_mb, firmware, disk_controller,
--- network_card (vmxnet3 when absent), vmx_version}, disks = {{href, size, capacity_mb | capacity_bytes,
--- populated_size}} (capacity_bytes: the VMDK's virtual size, written in
--- MiB when it is whole MiB),
--- network ("nic0"), annotation, product = {name, vendor, version,
--- full_version, vendor_url, category}, properties = {{key, value}, ...},
--- eula (text, optional).
---@param p table
---@return string
function M.descriptor(p)
  assert(type(p.name) == "string", "ovf.descriptor: name is required")
  assert(type(p.disks) == "table" and #p.disks >= 1, "ovf.descriptor: at least one disk")
  local hw, os = p.hardware, p.os
  local network = p.network or "nic0"
  local a = function(local_name) return "{" .. OVF .. "}" .. local_name end

  local refs, disks = {}, {}
  for i, d in ipairs(p.disks) do
    assert(type(d.href) == "string" and not d.href:find("/", 1, true),
      "ovf.descriptor: disks[" .. i .. "].href must be a file name without directories")
    refs[#refs + 1] = o("File", { [a("href")] = d.href, [a("id")] = "file" .. i,
      [a("size")] = int(d.size, ("disks[%d].size"):format(i)) })
    local cap, units = capacity(d, i)
    disks[#disks + 1] = o("Disk", {
      [a("capacity")] = cap, [a("capacityAllocationUnits")] = units,
      [a("diskId")] = "vmdisk" .. i, [a("fileRef")] = "file" .. i, [a("format")] = M.STREAM_OPTIMIZED,
      [a("populatedSize")] = int(d.populated_size or d.size, ("disks[%d].populated_size"):format(i)),
    })
  end

  hw = { cpus = int(hw.cpus, "hardware.cpus"), cores_per_socket = int(hw.cores_per_socket or 1, "hardware.cores_per_socket"),
    memory_mb = int(hw.memory_mb, "hardware.memory_mb"), vmx_version = int(hw.vmx_version, "hardware.vmx_version"),
    firmware = hw.firmware or "bios", disk_controller = hw.disk_controller, network_card = hw.network_card or "vmxnet3" }
  if hw.firmware ~= "bios" and hw.firmware ~= "efi" then
    error(("ovf.descriptor: unknown firmware %s (bios, efi)"):format(tostring(hw.firmware)), 2)
  end
  local ctl = CONTROLLER[hw.disk_controller] or error("ovf.descriptor: unknown disk controller " .. tostring(hw.disk_controller))
  local nic = NIC[hw.network_card] or error("ovf.descriptor: unknown network card " .. tostring(hw.network_card))
  -- vSphere refuses a CPU count that is not whole sockets
  local cores = tonumber(hw.cores_per_socket)
  if cores < 1 or tonumber(hw.cpus) % cores ~= 0 then
    error(("ovf.descriptor: %s CPUs cannot be split into sockets of %s cores"):format(hw.cpus, hw.cores_per_socket), 2)
  end
  local items = {
    o("Info", nil, "Virtual hardware requirements"),
    o("System", nil, {
      el(VSSD, "ElementName", nil, "Virtual Hardware Family"),
      el(VSSD, "InstanceID", nil, "0"),
      el(VSSD, "VirtualSystemIdentifier", nil, p.name),
      el(VSSD, "VirtualSystemType", nil, "vmx-" .. hw.vmx_version),
    }),
    rasd_item({ AllocationUnits = "hertz * 10^6", Description = "Number of Virtual CPUs",
      ElementName = hw.cpus .. " virtual CPU(s)", InstanceID = 1, ResourceType = 3, VirtualQuantity = hw.cpus,
      _config = nil }),
    rasd_item({ AllocationUnits = "byte * 2^20", Description = "Memory Size",
      ElementName = hw.memory_mb .. "MB of memory", InstanceID = 2, ResourceType = 4, VirtualQuantity = hw.memory_mb }),
    rasd_item({ Address = 0, Description = "SCSI Controller", ElementName = ctl.name, InstanceID = 3,
      ResourceSubType = ctl.subtype, ResourceType = 6, _config = { { "slotInfo.pciSlotNumber", "160" } } }),
    rasd_item({ Address = 0, Description = "IDE Controller", ElementName = "IDE Controller 0", InstanceID = 4,
      ResourceType = 5 }),
  }
  -- cores per socket sits inside the CPU item (vmw:CoresPerSocket)
  table.insert(items[3], el(VMW, "CoresPerSocket", { [a("required")] = "false" }, tostring(hw.cores_per_socket or 1)))
  local instance = 5
  for i = 1, #p.disks do
    items[#items + 1] = rasd_item({ AddressOnParent = i - 1, ElementName = "Hard Disk " .. i,
      HostResource = "ovf:/disk/vmdisk" .. i, InstanceID = instance, Parent = 3, ResourceType = 17 })
    instance = instance + 1
  end
  local disk_instance = 5
  items[#items + 1] = rasd_item({ AddressOnParent = 0, AutomaticAllocation = "false", ElementName = "CD/DVD drive 1",
    InstanceID = instance, Parent = 4, ResourceSubType = "vmware.cdrom.atapi", ResourceType = 15 }, false)
  instance = instance + 1
  items[#items + 1] = rasd_item({ AddressOnParent = 7, AutomaticAllocation = "true", Connection = network,
    Description = ('%s ethernet adapter on "%s"'):format(nic, network), ElementName = "Network adapter 1",
    InstanceID = instance, ResourceSubType = nic, ResourceType = 10,
    _config = { { "wakeOnLanEnabled", "false" }, { "slotInfo.pciSlotNumber", "192" }, { "connectable.allowGuestControl", "true" } } })
  instance = instance + 1
  items[#items + 1] = rasd_item({ AutomaticAllocation = "false", ElementName = "Video card", InstanceID = instance,
    ResourceType = 24, _config = { { "enable3DSupport", "false" }, { "videoRamSizeInKB", "4096" } } }, false)
  local efi = hw.firmware == "efi" -- vSphere reads the firmware from this vmw:Config
  for _, kv in ipairs({
    { "flags.vbsEnabled", "false" }, { "cpuHotAddEnabled", "false" }, { "nestedHVEnabled", "false" },
    { "virtualSMCPresent", "false" }, { "flags.vvtdEnabled", "false" }, { "cpuHotRemoveEnabled", "false" },
    { "memoryHotAddEnabled", "false" }, { "bootOptions.efiSecureBootEnabled", "false" },
    { "firmware", efi and "efi" or "bios" }, { "virtualICH7MPresent", "false" },
  }) do
    items[#items + 1] = el(VMW, "Config", { [a("required")] = "false",
      ["{" .. VMW .. "}key"] = kv[1], ["{" .. VMW .. "}value"] = kv[2] })
  end

  local product = p.product or {}
  local prod = {
    o("Info", nil, "Information about the installed software"),
    o("Product", nil, product.name or p.name),
    o("Vendor", nil, product.vendor or ""),
    o("Version", nil, product.version or ""),
    o("FullVersion", nil, product.full_version or product.version or ""),
    o("VendorUrl", nil, product.vendor_url or ""),
  }
  if product.category then prod[#prod + 1] = o("Category", nil, product.category) end
  for _, kv in ipairs(p.properties or {}) do
    prod[#prod + 1] = o("Property", { [a("key")] = kv[1], [a("type")] = "string",
      [a("userConfigurable")] = "false", [a("value")] = tostring(kv[2]) })
  end

  local vs = {
    o("Info", nil, "A virtual machine"),
    o("Name", nil, p.name),
    o("AnnotationSection", nil, { o("Info", nil, "A human-readable annotation"), o("Annotation", nil, p.annotation or "") }),
    o("OperatingSystemSection", { [a("id")] = int(os.ovf_id, "os.ovf_id"), [a("version")] = os.ovf_version or "",
      ["{" .. VMW .. "}osType"] = os.os_type }, {
      o("Info", nil, "The kind of installed guest operating system"), o("Description", nil, os.display_name or ""),
    }),
    o("VirtualHardwareSection", nil, items),
  }
  if not efi then
    -- BIOS: boot from the disk first. An EFI descriptor has none: with it,
    -- vCenter deployed EFI OVAs as BIOS whatever vmw:Config firmware said
    -- (image-builder #619, whose reporter got EFI by removing the section;
    -- govmomi #2304 and Packer #9898 report the same section doing it)
    vs[#vs + 1] = el(VMW, "BootOrderSection", { ["{" .. VMW .. "}instanceId"] = tostring(disk_instance),
      ["{" .. VMW .. "}type"] = "disk" }, { o("Info", nil, "Virtual hardware device boot order") })
  end
  if p.eula then
    vs[#vs + 1] = o("EulaSection", nil, { o("Info", nil, "End User License Agreement"), o("License", nil, p.eula) })
  end
  vs[#vs + 1] = o("ProductSection", nil, prod)

  local env = o("Envelope", nil, {
    o("References", nil, refs),
    o("DiskSection", nil, { o("Info", nil, "Virtual disk information"), table.unpack(disks) }),
    o("NetworkSection", nil, { o("Info", nil, "The list of logical networks"),
      o("Network", { [a("name")] = network }, { o("Description", nil, "Please select a network") }) }),
    o("VirtualSystem", { [a("id")] = p.name }, vs),
  })
  env.nsmap = { [""] = OVF, ovf = OVF, cim = M.NS.cim, rasd = RASD, vssd = VSSD, vmw = VMW, xsi = M.NS.xsi }
  return xml.write(env, { indent = 2 })
end

-- ====================================================================== --
-- Reading                                                                --
-- ====================================================================== --

-- Allocation units (DSP0004 programmatic units, spaces ignored): "byte",
-- "byte * 2^20", also "KB"/"MB"/"GB" as some writers use.
local UNITS = { ["byte"] = 1, ["byte*2^10"] = 1024, ["byte*2^20"] = 1024 ^ 2, ["byte*2^30"] = 1024 ^ 3,
  ["byte*2^40"] = 1024 ^ 4, KB = 1024, MB = 1024 ^ 2, GB = 1024 ^ 3, ["KILOBYTE"] = 1024,
  ["MEGABYTE"] = 1024 ^ 2, ["GIGABYTE"] = 1024 ^ 3 }

local function unit_factor(units)
  return UNITS[(units:gsub("%s+", ""))] or UNITS[units:upper()]
end

local function oattr(e, name) return xml.attr(e, OVF, name) end

local function rasd(item, name)
  local e = xml.find(item, name, RASD)
  return e and xml.text(e)
end

-- A descriptor the parser cannot take: raised inside parse_envelope as a
-- table, so it is told apart from a bug, and returned as the error.
local Malformed = {}

local function malformed(fmt, ...)
  error(setmetatable({ msg = fmt:format(...) }, Malformed), 0)
end

-- A count (a size in bytes, an id, a quantity): digits only, and small
-- enough to be an integer; absent stays nil. `what` names it in the error.
local function whole(v, what)
  if v == nil then return nil end
  local n = v:match("^%s*(%d+)%s*$")
  n = n and math.tointeger(tonumber(n))
  if not n then malformed("%s is %q, not a whole number", what, v:sub(1, 40)) end
  return n
end

local function parse_envelope(root)
  local f = { references = {}, disks = {}, networks = {}, properties = {}, property_order = {}, hardware = {} }
  for _, file in ipairs(xml.children(xml.find(root, "References", OVF) or {}, "File", OVF)) do
    local id = oattr(file, "id")
    f.references[#f.references + 1] = { id = id, href = oattr(file, "href"),
      size = whole(oattr(file, "size"), ("File %s: ovf:size"):format(tostring(id))) }
  end
  for _, d in ipairs(xml.children(xml.find(root, "DiskSection", OVF) or {}, "Disk", OVF)) do
    local units = oattr(d, "capacityAllocationUnits") or "byte"
    local cap = tonumber(oattr(d, "capacity"))
    f.disks[#f.disks + 1] = { disk_id = oattr(d, "diskId"), file_ref = oattr(d, "fileRef"), capacity = cap,
      units = units, capacity_bytes = cap and unit_factor(units) and math.tointeger(cap * unit_factor(units)),
      populated_size = whole(oattr(d, "populatedSize"),
        ("Disk %s: ovf:populatedSize"):format(tostring(oattr(d, "diskId")))),
      format = oattr(d, "format") }
  end
  for _, n in ipairs(xml.children(xml.find(root, "NetworkSection", OVF) or {}, "Network", OVF)) do
    f.networks[#f.networks + 1] = oattr(n, "name")
  end
  local vs = xml.find(root, "VirtualSystem", OVF)
  if not vs then return nil, "ovf.parse: no VirtualSystem" end
  f.name = oattr(vs, "id")
  local os = xml.find(vs, "OperatingSystemSection", OVF)
  if os then
    local desc = xml.find(os, "Description", OVF)
    f.os = { id = whole(oattr(os, "id"), "OperatingSystemSection: ovf:id"), version = oattr(os, "version"),
      os_type = xml.attr(os, VMW, "osType"), description = desc and xml.text(desc) }
  end
  local ann = xml.find(vs, "AnnotationSection", OVF)
  f.annotation = ann and xml.find(ann, "Annotation", OVF) and xml.text(xml.find(ann, "Annotation", OVF))
  local hw = xml.find(vs, "VirtualHardwareSection", OVF)
  if hw then
    local sys = xml.find(hw, "System", OVF)
    local vt = sys and xml.find(sys, "VirtualSystemType", VSSD)
    f.hardware.system_type = vt and xml.text(vt)
    f.hardware.config = {}
    for _, c in ipairs(xml.children(hw, "Config", VMW)) do
      local key = xml.attr(c, VMW, "key")
      if not key then malformed("VirtualHardwareSection: a vmw:Config has no vmw:key") end
      f.hardware.config[key] = xml.attr(c, VMW, "value")
    end
    f.hardware.firmware = f.hardware.config.firmware or "bios"
    f.hardware.items = {}
    for _, item in ipairs(xml.children(hw, "Item", OVF)) do
      local label = ("Item %s"):format(tostring(rasd(item, "InstanceID") or #f.hardware.items + 1))
      local t = whole(rasd(item, "ResourceType"), label .. ": rasd:ResourceType")
      local it = { type = t, subtype = rasd(item, "ResourceSubType"), name = rasd(item, "ElementName"),
        quantity = whole(rasd(item, "VirtualQuantity"), label .. ": rasd:VirtualQuantity"),
        host_resource = rasd(item, "HostResource"),
        connection = rasd(item, "Connection") }
      f.hardware.items[#f.hardware.items + 1] = it
      if t == 3 then
        f.hardware.cpus = it.quantity
        local cps = xml.find(item, "CoresPerSocket", VMW)
        f.hardware.cores_per_socket = cps and whole(xml.text(cps), label .. ": vmw:CoresPerSocket") or 1
      elseif t == 4 then
        f.hardware.memory_mb = it.quantity
      elseif t == 6 then
        f.hardware.scsi = it.subtype
      elseif t == 10 then
        f.hardware.nic = it.subtype
      end
    end
  end
  local ps = xml.find(vs, "ProductSection", OVF)
  if ps then
    local function txt(n) local e = xml.find(ps, n, OVF) return e and xml.text(e) end
    f.product = { name = txt("Product"), vendor = txt("Vendor"), version = txt("Version"),
      full_version = txt("FullVersion"), vendor_url = txt("VendorUrl"), category = txt("Category") }
    for _, prop in ipairs(xml.children(ps, "Property", OVF)) do
      local k = oattr(prop, "key")
      if k then
        f.properties[k] = oattr(prop, "value")
        f.property_order[#f.property_order + 1] = k
      end
    end
  end
  f.eula = xml.find(vs, "EulaSection", OVF) ~= nil
  local boot = xml.find(vs, "BootOrderSection", VMW)
  f.boot_order = boot and { type = xml.attr(boot, VMW, "type"), instance_id = xml.attr(boot, VMW, "instanceId") }
  return f
end

--- Parses a descriptor into facts: name, references, disks (with capacity
--- in bytes), os, hardware (firmware: vmw:Config firmware, else bios),
--- networks, properties, product, boot_order ({type, instance_id} of a
--- vmw:BootOrderSection, which an EFI descriptor should not have). Returns nil and an
--- error for malformed XML, a document that is not an OVF envelope, or
--- values capil cannot take (a size that is not a whole number, a
--- vmw:Config without a key).
---@param text string
---@return table|nil, string?
function M.parse(text)
  local root, err = xml.parse(text)
  if not root then return nil, err end
  if root.name ~= "Envelope" or root.ns ~= OVF then
    return nil, ("ovf.parse: the root element is {%s}%s, not an OVF Envelope"):format(root.ns or "", root.name)
  end
  local ok, f, ferr = pcall(parse_envelope, root)
  if ok then return f, ferr end
  if getmetatable(f) == Malformed then return nil, "ovf.parse: " .. f.msg end
  error(f, 0)
end

return M
