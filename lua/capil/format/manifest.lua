--- capil.format.manifest — the build manifest, `packer-manifest.json` in Packer's
--- format, so tools that read image-builder's output keep working:
---
---     { "builds": [ { "name", "builder_type", "build_time", "files":
---       [{"name", "size", "sha256"}], "artifact_id", "packer_run_uuid",
---       "custom_data": { ... } } ], "last_run_uuid": "..." }
---
--- `files[].sha256` is capil's addition: the export step records each
--- disk's digest as it writes the disk, so `ova pack` never reads a disk
--- twice. Packer readers ignore the extra field.
---
--- `custom_data` holds image-builder's keys (build_name, build_timestamp,
--- build_date, build_type, containerd_version, kubernetes_cni_semver,
--- kubernetes_semver, kubernetes_source_type, ib_version, guest_os_type,
--- vsphere_guest_os_type, os_name, custom_role) and capil's extra keys
--- (M.EXTRA_KEYS: hardware, OVF OS ids, distro) so `capil ova pack BUILD_DIR`
--- can rebuild the OVF without the recipe. Every value is a string, as
--- Packer writes them.
---
--- Which build is read: successive runs append to `builds` (Packer's rule)
--- and image-builder's image-build-ova.py reads `builds[0]` — the OLDEST
--- run, a stale one after a rebuild into the same directory. capil reads
--- the build of the last run instead (`packer_run_uuid == last_run_uuid`,
--- the last such entry; the last entry when no uuid matches): see
--- `manifest.latest`.
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")

local M = {}

M.FILE = "packer-manifest.json"

--- image-builder's custom_data keys, in its order.
M.KEYS = { "build_name", "build_timestamp", "build_date", "build_type", "containerd_version",
  "kubernetes_cni_semver", "kubernetes_semver", "kubernetes_source_type", "ib_version", "guest_os_type",
  "vsphere_guest_os_type", "os_name", "custom_role" }

--- capil's extra custom_data keys (what the OVF needs beyond image-builder's).
M.EXTRA_KEYS = { "cpus", "cores_per_socket", "memory_mb", "disk_size_mb", "firmware", "disk_controller",
  "network_card", "vmx_version", "ovf_os_id", "ovf_os_version", "distro_name", "distro_version", "distro_arch" }

--- User OVF properties travel as `ovf_property_<KEY>` custom_data entries.
M.PROPERTY_PREFIX = "ovf_property_"

--- A random (version 4) UUID, as Packer's run ids.
M.uuid = hash.uuid

local function check_manifest(m, path)
  if type(m) ~= "table" or type(m.builds) ~= "table" then
    return nil, ("manifest: %s: no \"builds\" list"):format(path), "MANIFEST"
  end
  for i, b in ipairs(m.builds) do
    if type(b) ~= "table" then
      return nil, ("manifest: %s: builds[%d] is not an object"):format(path, i - 1), "MANIFEST"
    end
    if b.files ~= nil and type(b.files) ~= "table" then
      return nil, ("manifest: %s: builds[%d].files is not a list"):format(path, i - 1), "MANIFEST"
    end
  end
  return m
end

--- Reads a packer-manifest.json (from capil, Packer or image-builder).
---@param path string
---@return table|nil manifest, string? err, string? code
function M.read(path)
  local m, err, code = json.read(path)
  if m == nil then return nil, err, code end
  return check_manifest(m, path)
end

--- The build of the last run: the last entry whose packer_run_uuid is
--- last_run_uuid, else the last entry (see the module header for why not
--- builds[0] as image-builder did). nil and a message when there is none.
---@param m table
---@return table|nil build, string? err
function M.latest(m)
  local builds = m.builds or {}
  if #builds == 0 then return nil, "manifest: no builds" end
  if type(m.last_run_uuid) == "string" then
    for i = #builds, 1, -1 do
      if builds[i].packer_run_uuid == m.last_run_uuid then return builds[i] end
    end
  end
  return builds[#builds]
end

local function stringify(t)
  local out = json.object({})
  for k, v in pairs(t or {}) do
    if type(v) == "boolean" then v = v and "true" or "false" end
    if type(v) == "number" then v = math.type(v) == "float" and v == math.floor(v) and ("%d"):format(v) or tostring(v) end
    if type(v) ~= "string" then error(("manifest: custom_data.%s must be a string, number or boolean"):format(k), 3) end
    out[k] = v
  end
  return out
end

--- A new build entry. `files` are {name, size, sha256?} (names relative to
--- the build directory); custom_data values become strings.
---@param b {name: string, builder_type: string, files: table[], artifact_id?: string, custom_data?: table, build_time?: integer, run_uuid?: string}
---@return table
function M.build(b)
  for k in pairs(b) do
    if not ({ name = 1, builder_type = 1, files = 1, artifact_id = 1, custom_data = 1, build_time = 1, run_uuid = 1 })[k] then
      error(("manifest.build: unknown field '%s'"):format(k), 2)
    end
  end
  assert(type(b.name) == "string", "manifest.build: name is required")
  assert(type(b.builder_type) == "string", "manifest.build: builder_type is required")
  local files = json.array({})
  for _, f in ipairs(b.files or {}) do
    local e = { name = f.name, size = f.size }
    if f.sha256 then e.sha256 = f.sha256 end
    files[#files + 1] = e
  end
  return {
    name = b.name, builder_type = b.builder_type, build_time = b.build_time or os.time(), files = files,
    artifact_id = b.artifact_id or "", packer_run_uuid = b.run_uuid or M.uuid(),
    custom_data = stringify(b.custom_data),
  }
end

--- Appends a build to the manifest at `path` (created when absent) and
--- makes its run the last one, written atomically.
---@param path string
---@param build table from manifest.build
---@return table|nil manifest, string? err, string? code
function M.append(path, build)
  local m
  if fs.exists(path) then
    local err, code
    m, err, code = M.read(path)
    if not m then return nil, err, code end
    setmetatable(m.builds, json.array_mt)
  else
    m = { builds = json.array({}) }
  end
  m.builds[#m.builds + 1] = build
  m.last_run_uuid = build.packer_run_uuid
  local ok, err, code = json.write(path, m, { indent = 2, sort_keys = true })
  if not ok then return nil, err, code end
  return m
end

local function fill(v, vars)
  if type(v) ~= "string" or not vars then return v end
  return (v:gsub("{{%s*([%w_]+)%s*}}", function(k) return vars[k] ~= nil and tostring(vars[k]) or nil end))
end

--- The custom_data of a build from its plan: the plan's `manifest` step
--- (image-builder's keys) plus the extra keys taken from its `ova` step,
--- with `{{placeholders}}` filled from `vars` (build_timestamp, build_date,
--- capil_version) and `properties` (user OVF properties) as ovf_property_*.
---@param plan table a resolved plan (capil.build.plan.resolve)
---@param vars? table<string, any>
---@param properties? table<string, string>
---@return table<string, string>
function M.custom_data(plan, vars, properties)
  local mstep, ostep
  for _, s in ipairs(plan.steps or {}) do
    if s.kind == "build_manifest" then mstep = s elseif s.kind == "pack_ova" then ostep = s end
  end
  assert(mstep and ostep, "manifest.custom_data: the plan has no build_manifest or pack_ova step")
  local cd = {}
  for k, v in pairs(mstep.custom_data or {}) do cd[k] = fill(v, vars) end
  local hw, os, p = ostep.hardware or {}, ostep.os or {}, ostep.properties or {}
  local extra = {
    cpus = hw.cpus, cores_per_socket = hw.cores_per_socket, memory_mb = hw.memory_mb, disk_size_mb = hw.disk_mb,
    firmware = hw.firmware, disk_controller = hw.disk_controller, network_card = hw.network_card,
    vmx_version = hw.vmx_version,
    ovf_os_id = os.ovf_id, ovf_os_version = os.ovf_version,
    distro_name = p.DISTRO_NAME, distro_version = p.DISTRO_VERSION, distro_arch = p.DISTRO_ARCH,
  }
  for k, v in pairs(extra) do cd[k] = v end
  for k, v in pairs(properties or {}) do cd[M.PROPERTY_PREFIX .. k] = v end
  return stringify(cd)
end

-- image-builder's guest_os_type -> OVF ids, for manifests without capil's
-- extra keys (its map; the osType is the vSphere guest id, not its sic).
local OS_MAP = {
  ["vmware-photon-64"] = { ovf_id = 36, ovf_version = "", os_type = "vmwarePhoton64Guest" },
  ["centos7-64"] = { ovf_id = 107, ovf_version = "7", os_type = "centos7_64Guest" },
  ["ubuntu-64"] = { ovf_id = 94, ovf_version = "", os_type = "ubuntu64Guest" },
}

-- image-builder's fixed template values, when the manifest does not say.
local HW_DEFAULTS = { cpus = 2, cores_per_socket = 2, memory_mb = 2048, firmware = "bios",
  disk_controller = "lsilogic", network_card = "vmxnet3", vmx_version = 15 }

local function int(v) return v and math.tointeger(tonumber(v)) end

-- A JSON value's kind, for messages.
local function kind_of(v)
  if json.is_null(v) then return "null" end
  if json.is_array(v) then return "an array" end
  if type(v) == "table" then return "an object" end
  return type(v)
end

--- The custom_data keys whose values become part of file names (the OVA's,
--- the upload's object name).
M.NAME_KEYS = { "build_name", "kubernetes_semver", "dataplaneapi_version" }

--- Why a name from a manifest cannot be part of a file name, or nil: not a
--- string, empty, "." or "..", or holding a "/", a backslash or a control
--- character (it would point outside the build directory).
---@param v any
---@return string|nil why
function M.bad_name(v)
  if type(v) ~= "string" then return ("expected a string, got %s"):format(kind_of(v)) end
  if v == "" then return "is empty" end
  if v == "." or v == ".." then return ("is %q"):format(v) end
  if v:find("[/\\%z\1-\31\127]") then return ("%q holds a '/', a backslash or a control character"):format(v) end
  return nil
end

--- Checks the shape of a build entry before anything of it becomes a path:
--- custom_data an object of strings (numbers and booleans tolerated), the
--- name keys safe file names, files[].name relative paths inside the build
--- directory. nil and a message naming the field otherwise.
---@param build table
---@return true|nil ok, string? err
function M.check_build(build)
  local cd = build.custom_data
  if cd ~= nil and (type(cd) ~= "table" or json.is_array(cd) or json.is_null(cd)) then
    return nil, ("manifest: custom_data must be an object, got %s"):format(kind_of(cd))
  end
  for k, v in pairs(cd or {}) do
    if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
      return nil, ("manifest: custom_data.%s must be a string, got %s"):format(tostring(k), kind_of(v))
    end
  end
  for _, k in ipairs(M.NAME_KEYS) do
    local v = cd and cd[k]
    local why = v ~= nil and M.bad_name(type(v) == "number" and tostring(v) or v)
    if why then return nil, ("manifest: custom_data.%s %s"):format(k, why) end
  end
  for i, f in ipairs(build.files or {}) do
    local name = type(f) == "table" and f.name
    if type(name) ~= "string" then
      return nil, ("manifest: files[%d].name must be a string, got %s"):format(i - 1,
        type(f) == "table" and kind_of(name) or kind_of(f))
    end
    local bad = name == "" or name:sub(1, 1) == "/" or name:find("[\\%z\1-\31\127]")
    for part in name:gmatch("[^/]+") do bad = bad or part == ".." end
    if bad then
      return nil, ("manifest: files[%d].name %q is not a relative path inside the build directory"):format(i - 1, name)
    end
    if f.sha256 ~= nil and type(f.sha256) ~= "string" then
      return nil, ("manifest: files[%d].sha256 must be a string, got %s"):format(i - 1, kind_of(f.sha256))
    end
    if f.size ~= nil and math.type(f.size) ~= "integer" then
      return nil, ("manifest: files[%d].size must be an integer, got %s"):format(i - 1, kind_of(f.size))
    end
  end
  return true
end

--- Whether a files[] name is a disk `ova pack` takes as a source (written
--- into the OVA as a VMDK): `.raw`, `.img`, `.qcow2`.
---@param name string
---@return boolean
function M.is_source_disk(name)
  local ext = (name:match("%.(%w+)$") or ""):lower()
  return ext == "raw" or ext == "img" or ext == "qcow2"
end

--- The `ova.pack` options that rebuild a build's OVA in `dir` from its
--- manifest entry (what image-build-ova.py did): names
--- `<build_name>-kube-<semver>.{ovf,mf,ova}`, the VirtualSystem named after
--- the artifact id, the disks = every `.vmdk` in files[] (with their
--- recorded sha256 when there is one), or when there is none every raw or
--- qcow2 disk (`M.is_source_disk`) as a source, which `ova.pack` writes
--- into the OVA as a VMDK in the same pass. Missing hardware keys take
--- image-builder's template values.
---@param build table a build entry
---@param dir string the build directory
---@return table|nil opts, string? err
function M.pack_options(build, dir)
  local okb, berr = M.check_build(build)
  if not okb then return nil, berr end
  local cd = build.custom_data or {}
  if not cd.build_name or not cd.kubernetes_semver then
    return nil, "manifest: custom_data lacks build_name or kubernetes_semver"
  end
  local base = ("%s-kube-%s"):format(cd.build_name, cd.kubernetes_semver)
  local os_map = OS_MAP[cd.guest_os_type] or {}
  local os = {
    ovf_id = int(cd.ovf_os_id) or os_map.ovf_id, ovf_version = cd.ovf_os_version or os_map.ovf_version or "",
    os_type = cd.vsphere_guest_os_type or os_map.os_type, display_name = cd.os_name,
  }
  if not os.ovf_id or not os.os_type then
    return nil, ("manifest: no OVF OS id for guest_os_type %q (add ovf_os_id and vsphere_guest_os_type)")
      :format(tostring(cd.guest_os_type))
  end
  local hw = {}
  for k, def in pairs(HW_DEFAULTS) do
    local v = cd[k]
    hw[k] = type(def) == "number" and (int(v) or def) or (v or def)
  end
  hw.disk_mb = int(cd.disk_size_mb)
  local props = {
    BUILD_TIMESTAMP = cd.build_timestamp, BUILD_DATE = cd.build_date, CNI_VERSION = cd.kubernetes_cni_semver,
    CONTAINERD_VERSION = cd.containerd_version, CUSTOM_ROLE = cd.custom_role == "true" and "true" or "false",
    IMAGE_BUILDER_VERSION = cd.ib_version, KUBERNETES_SEMVER = cd.kubernetes_semver,
    KUBERNETES_SOURCE_TYPE = cd.kubernetes_source_type, DISTRO_NAME = cd.distro_name,
    DISTRO_VERSION = cd.distro_version, DISTRO_ARCH = cd.distro_arch,
  }
  for k, v in pairs(cd) do
    local key = k:match("^" .. M.PROPERTY_PREFIX .. "(.+)$")
    if key then props[key] = v end
  end
  local disks, sources = {}, {}
  for _, f in ipairs(build.files or {}) do
    if type(f.name) == "string" and f.name:match("%.vmdk$") then
      local sha = f.sha256
      if sha ~= nil and not (#sha == 64 and sha:match("^%x+$")) then
        return nil, ("manifest: files[].sha256 of %s is not 64 hex digits"):format(f.name)
      end
      disks[#disks + 1] = { path = fs.join(dir, f.name), sha256 = sha, size = f.size }
    elseif type(f.name) == "string" and M.is_source_disk(f.name) then
      sources[#sources + 1] = { source = fs.join(dir, f.name) }
    end
  end
  -- no VMDK: the raw or qcow2 disks are packed fused (ova.pack sniffs them)
  if #disks == 0 then disks = sources end
  if #disks == 0 then return nil, "manifest: the build lists no disk (.vmdk, .raw, .img or .qcow2 file)" end
  local artifact = build.artifact_id
  if type(artifact) ~= "string" or artifact == "" then artifact = base end
  return {
    name = artifact, ova = fs.join(dir, base .. ".ova"), ovf = fs.join(dir, base .. ".ovf"),
    mf = fs.join(dir, base .. ".mf"), sha256 = fs.join(dir, base .. ".ova.sha256"),
    disks = disks, os = os, hardware = hw, properties = props,
  }
end

return M
