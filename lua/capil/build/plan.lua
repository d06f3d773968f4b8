--- capil.build.plan — `plan.resolve(cfg, backend, opts)`: the resolved
--- configuration becomes an ordered list of concrete steps with every URL,
--- checksum, path, name, timeout and backend setting decided. Pure: no
--- I/O, no clock, no network: what it needs from files (the roles' steps,
--- the checks) is loaded before it by capil.build.loader and passed in
--- `opts.loaded`. So a plan can be printed (`capil inspect`), compared with
--- golden files (spec/golden/) and tested without a hypervisor. What a
--- backend is comes from the registry (capil.backend: its traits and
--- settings); `plan.settings` holds every configuration value the backend
--- uses. Values only known at run time (the installer server's port, the
--- build timestamp) stay as named placeholders the executor fills in.
--- Secrets are never copied into the plan: steps and settings name the
--- variable instead (`password_var`).
local bootcmd = require("capil.build.bootcmd")
local template = require("capil.util.template")
local registry = require("capil.backend")
local staticip = require("capil.build.staticip")

local M = {}

-- Stand-ins for the installer server's address when a plan is resolved.
M.PROBE_VARS = { http_ip = "192.0.2.1", http_port = 8000 }

local ADAPTER = { pvscsi = "lsilogic", lsilogic = "lsilogic" }

--- Artifact names of a build: output/<name>-kube-<semver>/<name>-kube-<semver>.{ova,...}
---@param name string
---@param semver string
---@param output_root? string
function M.artifacts(name, semver, output_root)
  local version = ("%s-kube-%s"):format(name, semver)
  local dir = (output_root or "output") .. "/" .. version
  local base = dir .. "/" .. version
  return {
    build_version = version, output_dir = dir,
    ova = base .. ".ova", ovf = base .. ".ovf", mf = base .. ".mf", sha256 = base .. ".ova.sha256",
    vmdk = base .. "-disk-0.vmdk", manifest = dir .. "/packer-manifest.json",
    log = dir .. "/build.log", report = dir .. "/report.json",
  }
end


--- The ISO URLs in the order they are tried: a single `iso_url` (var file
--- override) first, then the recipe's list, without duplicates.
local function iso_urls(cfg)
  local urls, seen = {}, {}
  local function add(u)
    if u and u ~= "" and not seen[u] then seen[u] = true urls[#urls + 1] = u end
  end
  add(cfg:get("iso.url"))
  for _, u in ipairs(cfg:get("iso.urls") or {}) do add(u) end
  return urls
end

--- The devices a QEMU VM presents: the declared VMware controller and NIC
--- (backends/qemu.lua maps them to QEMU's models), or virtio where
--- qemu_disk_interface / qemu_nic_model opt in. Used for build and test VMs.
---@return {disk: string, nic: string}
function M.qemu_devices(cfg)
  local function pick(setting, declared)
    if cfg:get(setting) == "virtio" then return "virtio" end
    return cfg:get(declared)
  end
  return { disk = pick("build.qemu_disk_interface", "hardware.disk_controller"),
    nic = pick("build.qemu_nic_model", "hardware.network_card") }
end

--- The guest OS id a VM of a backend with `traits` is created with
--- (traits.guest_id: guest_os.workstation or guest_os.vsphere).
---@param cfg table
---@param traits capil.BackendTraits
---@return string
function M.guest_os(cfg, traits)
  if traits.guest_id == "workstation" then return cfg:get("guest_os.workstation") end
  return cfg:get("guest_os.vsphere")
end

--- The shutdown step. The build user goes with its sudoers entries before
--- the shutdown, as image-builder's shutdown_command wrapper does since
--- CVE-2024-9486 (images/capi/packer/ova/packer-node.json: `userdel -f -r
--- USER && rm -f /etc/sudoers.d/USER && rm -f
--- /etc/sudoers.d/90-cloud-init-users && SHUTDOWN`), so no image ships a
--- login with a known password (capil also removes `90-USER`, the name
--- the installer fixture writes); `keep_build_user` keeps it, locked
--- (`usermod -L`). The password goes to sudo on stdin, never on a command
--- line. A root build user is neither deleted nor locked.
---@param cfg table
---@return table step
function M.shutdown_step(cfg)
  local user = cfg:get("ssh.username")
  local shutdown = cfg:get("shutdown_command")
  local command, user_action = shutdown, "none"
  if user ~= "root" then
    if cfg:get("ssh.keep_user") then
      user_action = "lock"
      command = ("sudo -S -E sh -c 'usermod -L %s && %s'"):format(user, shutdown)
    else
      user_action = "delete"
      command = ("sudo -S -E sh -c 'userdel -f -r %s && rm -f /etc/sudoers.d/%s /etc/sudoers.d/90-%s"
        .. " /etc/sudoers.d/90-cloud-init-users && %s'"):format(user, user, user, shutdown)
    end
  end
  return { id = "shutdown", kind = "shutdown", command = command, build_user = user_action,
    stdin_var = "ssh_password", timeout = cfg:get("shutdown_timeout") }
end

--- The facts roles and checks see.
function M.context(cfg, backend)
  return {
    vars = cfg:vars(),
    os = { family = cfg:get("distro.family"), distro = cfg:get("distro.name"), version = cfg:get("distro.version") },
    builder = backend,
  }
end

--- What plan.resolve needs from files, loaded by capil.build.loader.inputs:
--- the role order and its expanded steps, the checks, or the message of
--- what failed to load.
---@class capil.PlanInputs
---@field roles string[] the role order
---@field role_steps? table[] roles.expand's steps (nil when role_error)
---@field role_error? string
---@field checks? table[] checks.load's list (nil when checks_error)
---@field checks_error? string

--- The first step of `kind` in a resolved plan, or nil.
---@param plan table
---@param kind string
---@return table|nil
function M.step(plan, kind)
  for _, s in ipairs(plan.steps or {}) do if s.kind == kind then return s end end
end

--- The finalize step's content library destination (content_library and
--- the settings that go with it), or nil when content_library is not set.
--- Problems go to `errors`: a backend without vCenter's content library,
--- content_library_destroy_vm with convert_to_template.
---@param cfg table
---@param backend string
---@param art table M.artifacts
---@param errors string[]
---@return {library: string, item: string, type: string, destroy_vm: boolean, export: boolean}|nil
function M.library_destination(cfg, backend, art, errors)
  local library = cfg:get("vsphere.content_library")
  if library == nil or library == "" then return nil end
  if not registry.get(backend).traits.content_library then
    errors[#errors + 1] = ("%s: content_library %s: content libraries are vCenter's; build with --backend vsphere, "
      .. "or publish the OVA (capil publish OVA --library %s)"):format(cfg.recipe.file, library, library)
  end
  local destroy = cfg:get("vsphere.content_library_destroy_vm") and true or false
  if destroy and cfg:get("build.convert_to_template") then
    errors[#errors + 1] = ("%s: content_library_destroy_vm and convert_to_template: a destroyed VM makes no "
      .. "template; set one"):format(cfg.recipe.file)
  end
  local item = cfg:get("vsphere.content_library_item")
  local export = cfg:get("vsphere.content_library_export")
  return { library = library, item = (item and item ~= "") and item or art.build_version,
    type = cfg:get("vsphere.library_item_type") or "ovf", destroy_vm = destroy, export = export ~= false }
end

--- Resolves the plan. opts: output_root ("output"), cache_dir (ISO cache),
--- recipes_dir ("recipes"), loaded (capil.PlanInputs, required: see
--- capil.build.loader.plan, which loads and resolves).
--- Returns the plan or nil and a list of errors.
---@param cfg table from capil.build.config.resolve
---@param backend string a registered backend name
---@param opts {loaded: capil.PlanInputs, output_root?: string, cache_dir?: string, recipes_dir?: string}
---@return table|nil, string[]?
function M.resolve(cfg, backend, opts)
  opts = opts or {}
  local b, berr = registry.get(backend)
  if not b then return nil, { berr } end
  local loaded = assert(opts.loaded, "plan.resolve: opts.loaded is required (capil.build.loader.plan loads it)")
  local traits = b.traits or {}
  local errors = {}
  local recipes_dir = opts.recipes_dir or "recipes"
  local name, semver = cfg:get("name"), cfg:get("kubernetes.semver")
  local art = M.artifacts(name, semver, opts.output_root)
  local iso_sum = cfg:get("iso.checksum"):lower()

  -- the HTTP server runs only when something is served or the boot command
  -- names its address: a recipe whose answer files are all on the seed CD
  -- starts none (nothing listens that the VM could reach)
  local files = cfg:get("installer.files") or {}
  local names_server = false
  for _, line in ipairs(cfg:get("boot.command") or {}) do
    local l = line:lower()
    if l:find("httpip", 1, true) or l:find("httpport", 1, true) or l:find("http_ip", 1, true)
      or l:find("http_port", 1, true) then names_server = true end
  end
  -- a static address (build_ip): nil unless set, so plans without one are unchanged
  local sip, sip_err = staticip.resolve(cfg)
  if sip_err then errors[#errors + 1] = ("%s: %s"):format(cfg.recipe.file, sip_err) end
  local static_fields
  if sip then
    static_fields = { address = sip.cidr, netmask = sip.netmask, gateway = sip.gateway,
      dns = #sip.dns > 0 and sip.dns or nil }
  end

  local command = table.concat(cfg:get("boot.command"))
  -- the installer that fetches its answer file over HTTP needs the address
  -- on its kernel line before it can fetch it
  local boot_args
  if sip then
    local kind = staticip.installer_kind(cfg)
    static_fields.installer = kind
    local args = names_server and staticip.boot_args(sip, kind)
    if args then
      local with = staticip.insert_boot_args(command, args)
      if with then
        command, boot_args = with, args
      else
        errors[#errors + 1] = ("%s: build_ip: the boot command names the installer server but has no <enter> "
          .. "after it to put the static address's kernel arguments before (%s): the installer could not fetch "
          .. "its answer file"):format(cfg.recipe.file, args)
      end
    elseif names_server then
      -- Photon 3's installer fetches ks= over HTTP from an initrd whose
      -- network comes up by DHCP only (its isoInstaller reads ks=http://,
      -- cdrom:/ on the install media or a local path; no ip= argument)
      errors[#errors + 1] = ("%s: build_ip: this recipe's installer (%s) fetches its answer file over HTTP and "
        .. "takes no static address on its kernel line, so it cannot reach the server without DHCP: build on a "
        .. "network with DHCP, or use a recipe whose answer file comes from a seed CD (photon-5 for Photon)")
        :format(cfg.recipe.file, kind)
    end
  end
  -- the boot command must parse now, with placeholder server values (the
  -- key count in the plan is for these; the real address may differ in length)
  local probe_vars = { name = art.build_version }
  for k, v in pairs(M.PROBE_VARS) do probe_vars[k] = v end
  local probe, perr = template.render(command, probe_vars)
  local events
  if probe then events, perr = bootcmd.parse(probe) end
  if not events then errors[#errors + 1] = ("%s: boot.command: %s"):format(cfg.recipe.file, perr) end

  local steps = {}
  local function add(step) steps[#steps + 1] = step end

  add({ id = "fetch-iso", kind = "fetch_iso", urls = iso_urls(cfg), checksum = iso_sum,
    checksum_type = cfg:get("iso.checksum_type"),
    cache_path = ("%s/iso/%s.iso"):format(opts.cache_dir or "~/.cache/capil", iso_sum), timeout = 7200 })

  add({ id = "installer", kind = "serve_installer", static_ip = static_fields, serve = #files > 0 or names_server,
    dir = recipes_dir .. "/" .. cfg:get("installer.dir"), files = files,
    bind = cfg:get("build.http_bind_address"), advertise = cfg:get("build.http_ip") or traits.http_ip or "auto",
    template_vars = { "ssh_username", "ssh_password", "ssh_password_hash" },
    -- "random": a new password per build (capil.build.installer.build_password)
    ssh_password = require("capil.build.installer").password_is_set(cfg) and "set" or "random",
    cd_files = cfg:get("installer.cd_files"), cd_label = cfg:get("installer.cd_label") })

  if traits.export == "nfc" then
    -- the ISO (and the installer CD) go to the datastore, named by checksum
    add({ id = "upload-media", kind = "upload_media", checksum = iso_sum, cache_dir = cfg:get("vsphere.cache_dir") })
  end

  local qemu_dev = traits.qemu_devices and M.qemu_devices(cfg) or nil
  -- what writes the VMDK on a local backend, and on ESXi over SSH (its flat
  -- extent; vSphere's API exports a VMDK over NFC): capil's writer reads a
  -- raw disk directly, so QEMU builds on one; qemu-img converts QEMU's
  -- qcow2 and ESXi's download, as before
  local disk_writer = (traits.export ~= "nfc" or traits.disk_source) and cfg:get("build.disk_writer") or nil
  local has_cd = #(cfg:get("installer.cd_files") or {}) > 0
  add({ id = "create-vm", kind = "create_vm", vm_name = art.build_version,
    guest_os = M.guest_os(cfg, traits),
    cpus = cfg:get("hardware.cpus"), cores_per_socket = cfg:get("hardware.cores"),
    memory_mb = cfg:get("hardware.memory"), disk_mb = cfg:get("hardware.disk_size"),
    disk_thin = cfg:get("hardware.disk_thin"), firmware = cfg:get("hardware.firmware"),
    disk_controller = cfg:get("hardware.disk_controller"), network_card = cfg:get("hardware.network_card"),
    network = cfg:get("build.network") or "", vmx_version = cfg:get("hardware.vmx_version"),
    headless = cfg:get("build.headless"),
    disk_interface = qemu_dev and qemu_dev.disk, nic_model = qemu_dev and qemu_dev.nic,
    disk_format = qemu_dev and (disk_writer == "qemu-img" and "qcow2" or "raw") or nil,
    kernel = cfg:get("build.qemu_kernel"), initrd = cfg:get("build.qemu_initrd"), append = cfg:get("build.qemu_append"),
    cd_bus = has_cd and cfg:get("installer.cd_bus") or nil })

  local summary = events and bootcmd.summary(events) or {}
  add({ id = "boot", kind = "boot_command", wait = cfg:get("boot.wait"),
    key_interval = cfg:get("boot.key_interval"), encoder = traits.encoder,
    command = command, keys = summary.keys, waits = summary.waits, static_ip_args = boot_args })

  add({ id = "wait-ssh", kind = "wait_ssh", username = cfg:get("ssh.username"), password_var = "ssh_password",
    key_file = cfg:get("ssh.private_key_file"), port = cfg:get("ssh.port"),
    timeout = cfg:get("ssh.timeout"),
    -- the static address is where SSH connects, except behind QEMU's user
    -- network (a fixed NAT: traits.http_ip), reached through its forwarded port
    host = sip and not traits.http_ip and sip.address or nil,
    static_ip = sip and (traits.http_ip and sip.address .. " (the guest's; SSH goes through the forwarded port)"
      or sip.address) or nil })

  -- provisioning: roles, then the checks (loaded by capil.build.loader)
  if loaded.role_steps then
    add({ id = "provision", kind = "provision", roles = loaded.roles, steps = loaded.role_steps })
  else
    errors[#errors + 1] = loaded.role_error or "plan: the roles were not loaded"
  end
  if loaded.checks then
    add({ id = "checks", kind = "checks", checks = loaded.checks })
  else
    errors[#errors + 1] = loaded.checks_error or "plan: the checks were not loaded"
  end

  add(M.shutdown_step(cfg))

  -- a content library item can be the only deliverable (Packer's
  -- content_library_destination without an export): no VMDK, no OVA
  local library = traits.export == "nfc" and M.library_destination(cfg, backend, art, errors) or nil
  local no_export = library and not library.export
    and ("content_library_export is false: the item %s of library %s is the build's image"):format(library.item,
      library.library) or nil
  local into_ova = traits.disk_source and disk_writer == "capil" and not cfg:get("build.keep_vmdk")
  add({ id = "export", kind = "export_disk", method = traits.export, path = art.vmdk,
    subformat = "streamOptimized", adapter_type = ADAPTER[cfg:get("hardware.disk_controller")],
    hwversion = cfg:get("hardware.vmx_version"), disk_writer = disk_writer, skip = no_export,
    -- the VMDK written straight into the OVA from the VM's own disk (one
    -- pass, no VMDK file), where the backend hands its disk out
    into_ova = into_ova or nil })

  local finalize = traits.export == "nfc" and { id = "finalize", kind = "finalize_vm",
    convert_to_template = cfg:get("build.convert_to_template"),
    keep_vm = (cfg:get("build.keep_vm") or cfg:get("build.convert_to_template")) and not (library and library.destroy_vm),
    content_library = library } or nil
  -- the VM's disk written into the OVA is read by the pack step: the VM is
  -- finalized (removed) after it
  if finalize and not into_ova then add(finalize) end

  local properties = {}
  for k, v in pairs(cfg:get("ovf.properties") or {}) do properties[k] = tostring(v) end
  -- the OVF describes the node deployed from it (ovf.*), not the build VM
  -- (hardware.*): a 1-CPU build VM still makes a 2-CPU node, which kubeadm's
  -- control-plane preflight needs. Disk size, firmware and hardware version
  -- are the build's: they are properties of the disk and of what it boots.
  local ovf_cpus, ovf_cores = cfg:get("ovf.cpus"), cfg:get("ovf.cores_per_socket")
  if ovf_cpus % ovf_cores ~= 0 then
    errors[#errors + 1] = ("%s: ovf.cores_per_socket: %d CPUs (ovf.cpus) cannot be split into sockets of %d cores"
      .. " (set ovf_cores_per_socket to a divisor of ovf_cpus)"):format(cfg.recipe.file, ovf_cpus, ovf_cores)
  end
  add({ id = "ova", kind = "pack_ova", skip = no_export, ovf = art.ovf, mf = art.mf, ova = art.ova, sha256 = art.sha256,
    eula_file = cfg:get("ovf.eula_file"), user_properties = properties,
    disks = { art.vmdk },
    os = { ovf_id = cfg:get("guest_os.ovf_id"), ovf_version = cfg:get("guest_os.ovf_version"),
      os_type = cfg:get("guest_os.vsphere"), display_name = cfg:get("os_display_name") },
    hardware = { cpus = ovf_cpus, cores_per_socket = ovf_cores,
      memory_mb = cfg:get("ovf.memory"), disk_mb = cfg:get("hardware.disk_size"),
      firmware = cfg:get("hardware.firmware"), disk_controller = cfg:get("ovf.disk_controller"),
      network_card = cfg:get("ovf.network_card"), vmx_version = cfg:get("hardware.vmx_version") },
    properties = {
      BUILD_TIMESTAMP = "{{build_timestamp}}", BUILD_DATE = "{{build_date}}",
      CNI_VERSION = cfg:get("cni.semver"), CONTAINERD_VERSION = cfg:get("containerd.version"),
      CUSTOM_ROLE = cfg:get("common.custom_role") and "true" or "false",
      IMAGE_BUILDER_VERSION = "{{capil_version}}", KUBERNETES_SEMVER = semver,
      KUBERNETES_SOURCE_TYPE = cfg:get("kubernetes.source_type"),
      DISTRO_NAME = cfg:get("distro.name"), DISTRO_VERSION = cfg:get("distro.version"),
      DISTRO_ARCH = cfg:get("distro.arch"),
    } })
  if finalize and into_ova then add(finalize) end

  add({ id = "manifest", kind = "build_manifest", path = art.manifest,
    custom_data = {
      build_name = name, build_type = "node", build_timestamp = "{{build_timestamp}}", build_date = "{{build_date}}",
      containerd_version = cfg:get("containerd.version"), kubernetes_cni_semver = cfg:get("cni.semver"),
      kubernetes_semver = semver, kubernetes_source_type = cfg:get("kubernetes.source_type"),
      ib_version = "{{capil_version}}", guest_os_type = cfg:get("guest_os.workstation"),
      vsphere_guest_os_type = cfg:get("guest_os.vsphere"), os_name = cfg:get("os_display_name"),
      custom_role = cfg:get("common.custom_role") and "true" or "false",
    } })

  if #errors > 0 then return nil, errors end
  -- every configuration value the backend uses (secrets as their variable)
  local settings = type(b.settings) == "table" and registry.plan_settings(b, cfg) or {}
  return {
    recipe = name, file = cfg.recipe.file, backend = backend, build_version = art.build_version,
    output_dir = art.output_dir, artifacts = art, steps = steps, settings = settings,
  }
end

return M
