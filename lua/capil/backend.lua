--- capil.backend — what a backend is, and the registry that finds one by
--- name. A backend is one module under backends/ (capil.backends.<name>)
--- and one line in `REGISTERED` below; nothing else in capil names a
--- backend. docs/architecture.md walks through adding one.
---
--- The pipeline (capil.build.pipeline) drives a build through the
--- interface below; `capil test` (capil.test.imagetest) drives a test
--- through `test`. A backend reads no configuration: what it uses it
--- declares in `settings`, plan.resolve reads those values into the plan
--- (`plan.settings`, shown by `capil inspect`), and the backend receives
--- them in `ctx.settings`. Secrets stay out of the plan: a secret setting
--- travels as the name of its variable (`<name>_var`) and is read at run
--- time through `ctx.secret(var)`.
local M = {}

--- The registered backends, in the order `capil list` and errors show
--- them. Adding a backend is a module under backends/ and a line here.
M.REGISTERED = {
  "qemu",
  "vsphere",
  "esx",
  "workstation",
}

---@alias capil.KeyEncoder "qmp"|"usb"|"rfb"
---@alias capil.ExportMethod "qemu-img"|"nfc"|"vdiskmanager"

---@class capil.BackendTraits
---@field encoder capil.KeyEncoder how the boot command is typed (QMP send-key, vSphere USB scan codes, RFB)
---@field export capil.ExportMethod how the disk leaves the VM
---@field guest_id "vsphere"|"workstation" which guest OS id the VM is created with (guest_os.vsphere or .workstation)
---@field http_ip? string where the guest reaches capil's installer server (QEMU's user network: 10.0.2.2); nil: discovered
---@field remote? boolean VMs live on a server and are found by name (deploy, repl, ssh, test of a VM)
---@field qemu_devices? boolean the VM presents QEMU devices chosen from the recipe's controller and NIC (plan.qemu_devices)
---@field govc_env? boolean govc's environment (GOVC_URL, GOVC_USERNAME, ...) sets variables (capil.build.config)
---@field var_file? string its shared var file in recipes/config/ (vsphere.json, esx.json), read after the common ones
---@field content_library? boolean vCenter's content libraries (and its OVF and VM template services) are there: deploy and test of a library item, a build's content_library
---@field disk_source? boolean the VM's disk_source() may hand out its own raw disk (a file, or a stream), so the VMDK can be written straight into the OVA (the export step's into_ova); disk_writer applies to the backend then
---@field process? string the VM is a local process of this name (QEMU): a test VM kept with its pid blocks a new test

--- One configuration value a backend uses. `paths` are tried in order (schema
--- paths or variable names); the first set and non-empty wins, else
--- `default`. A `secret` setting is never copied into the plan: the plan
--- holds `<name>_var`, the variable that holds it.
---@class capil.Setting
---@field [1] string the setting's name in ctx.settings
---@field paths string[]
---@field default? any
---@field secret? boolean

---@class capil.BuildContext what the pipeline hands a backend
---@field name string the build VM's name (plan.build_version)
---@field workdir string a private temp dir, removed after the run
---@field log_dir string <output>/logs: serial logs and the like
---@field cache_dir string capil's cache directory (ISOs, probes)
---@field settings table the backend's settings from the plan (plan.settings)
---@field secret fun(var: string): string|nil the value of a secret variable, at run time
---@field media {iso?: string, cd_iso?: string} the verified local ISO; the installer CD, if the recipe has one
---@field http? {ip: string, port: integer, auto: boolean} the installer server; a backend may set `ip` when `auto`
---@field state table the backend's own: sessions, inventory, uploaded media; nothing else reads or writes it
---@field report table the run report; a backend may add facts (accel)

---@class capil.VM what create() returns; every method returns true | nil, message, code unless said
---@field name string
---@field hint? string where to look when the guest misbehaves (serial log, console)
---@field start fun(self: capil.VM): true|nil, string?, string?
---@field type_keys fun(self: capil.VM, events: table, interval: number): true|nil, string?, string?, integer?
---@field ssh_address fun(self: capil.VM, timeout: number): {host: string, port: integer}|nil, string?, string?
---@field alive fun(self: capil.VM): boolean, string? false and why once the VM has stopped
---@field wait_exit fun(self: capil.VM, timeout: number): boolean
---@field power_off fun(self: capil.VM, timeout: number): true|nil, string?, string?
--- export: the plan's export step gives adapter_type, hwversion and (local backends) disk_writer, "capil" or
--- "qemu-img"; the result may be a table: sha256 (the disk hashed on the way), writer (what wrote the VMDK:
--- "capil" makes the step engine time in the report)
---@field export fun(self: capil.VM, path: string, opts: {adapter_type?: string, hwversion?: integer, disk_writer?: "capil"|"qemu-img"}): true|{sha256?: string, writer?: string}|nil, string?, string?
--- disk_source (with traits.disk_source): the stopped VM's disk for ova.pack's fused writing, {source = path,
--- format = "raw"|"qcow2"}, or a raw stream {source = what messages call it, format = "raw", open = function
--- returning a capil.sys.ssh stream} (ESXi's flat extent over SFTP, read in the pack step, so the plan packs
--- before finalize_vm removes the VM), or nil when it cannot (the pipeline then exports as usual)
---@field disk_source? fun(self: capil.VM): {source: string, format: string, open?: fun(): table|nil, string?, string?}|nil
---@field destroy fun(self: capil.VM): true|nil, string?, string? removes the VM and what it made
---@field keepalive? fun(self: capil.VM) keeps a hypervisor session alive during long provisioning

---@class capil.TestRun what `capil test` hands a backend
---@field target table what is tested (imagetest.resolve_target)
---@field settings table the backend's settings (as for a build; secrets inline are never given: use secret)
---@field secret fun(var: string): string|nil
---@field vm_settings table cpus, memory_mb, cores_per_socket, disk_controller, network_card, guest_os, firmware, vmx_version, network, accel, disk_interface, nic_model
---@field test_vm_name? string
---@field data table cloud-init userdata/metadata
---@field keep boolean
---@field work string the test's work dir
---@field test_dir string
---@field cache_dir string
---@field state table the backend's own
---@field report table
---@field vm? capil.VM set by prepare
---@field logged_in? boolean

---@class capil.TestHooks
---@field prepare fun(run: capil.TestRun): true|nil, string?, string? makes run.vm, ready to start with the test data
---@field record fun(run: capil.TestRun): table what test/vm.json keeps of a kept VM (capil ssh reads it)
---@field finish fun(run: capil.TestRun): true|nil, string?, string? stops (and unless keep, removes) the test VM

---@class capil.Backend
---@field name string
---@field description string one line for `capil list` and --help
---@field traits capil.BackendTraits
---@field settings capil.Setting[] the configuration values it uses
---@field create fun(ctx: capil.BuildContext, step: table): capil.VM|nil, string?, string? the plan's create_vm step
---@field steps? table<string, fun(ctx: capil.BuildContext, step: table): true|nil, string?, string?> steps of its own (upload_media, finalize_vm)
---@field prepare? fun(ctx: capil.BuildContext, step: table): true|nil, string?, string? before create_vm (e.g. the accelerator probe)
---@field test capil.TestHooks
---@field preflight? fun(c: capil.Preflight) checks before anything starts (tools, accelerator, server, login, placement): reports through c:fail, c:note, c:tool, c:space (capil.build.preflight); creates nothing
---@field VM table the VM class (its methods are checked against capil.VM)

-- What a backend module must hold, and the methods its VM class must have.
M.FIELDS = { name = "string", description = "string", traits = "table", settings = "table", create = "function",
  test = "table", VM = "table" }
M.VM_METHODS = { "start", "type_keys", "ssh_address", "alive", "wait_exit", "power_off", "export", "destroy" }
M.TEST_HOOKS = { "prepare", "record", "finish" }
M.ENCODERS = { qmp = true, usb = true, rfb = true }
M.EXPORTS = { ["qemu-img"] = true, nfc = true, vdiskmanager = true }

--- The names of the registered backends.
---@return string[]
function M.names()
  local out = {}
  for i, n in ipairs(M.REGISTERED) do out[i] = n end
  return out
end

--- Whether `name` is registered.
function M.known(name)
  for _, n in ipairs(M.REGISTERED) do if n == name then return true end end
  return false
end

--- The backend called `name`, or nil and a message listing the known ones.
---@param name string
---@return capil.Backend|nil, string?, string?
function M.get(name)
  if not M.known(name) then
    return nil, ("unknown backend '%s' (one of: %s)"):format(tostring(name), table.concat(M.REGISTERED, ", ")), "EUSAGE"
  end
  return require("capil.backends." .. name)
end

--- The names of the registered backends whose traits have `trait` (truthy).
---@param trait string
---@return string[]
function M.with(trait)
  local out = {}
  for _, n in ipairs(M.REGISTERED) do
    if require("capil.backends." .. n).traits[trait] then out[#out + 1] = n end
  end
  return out
end

--- Problems of a backend module against the interface (an empty list when
--- it conforms).
---@param b table
---@return string[]
function M.check(b)
  local problems = {}
  local function bad(fmt, ...) problems[#problems + 1] = fmt:format(...) end
  for field, t in pairs(M.FIELDS) do
    if type(b[field]) ~= t then bad("%s is %s, not a %s", field, type(b[field]), t) end
  end
  if #problems > 0 then return problems end
  local tr = b.traits
  if not M.ENCODERS[tr.encoder] then bad("traits.encoder %s is not qmp, usb or rfb", tostring(tr.encoder)) end
  if not M.EXPORTS[tr.export] then bad("traits.export %s is not qemu-img, nfc or vdiskmanager", tostring(tr.export)) end
  if tr.guest_id ~= "vsphere" and tr.guest_id ~= "workstation" then
    bad("traits.guest_id %s is not vsphere or workstation", tostring(tr.guest_id))
  end
  for _, m in ipairs(M.VM_METHODS) do
    if type(b.VM[m]) ~= "function" then bad("VM:%s is missing", m) end
  end
  if tr.disk_source and type(b.VM.disk_source) ~= "function" then
    bad("traits.disk_source is set, but VM:disk_source is missing")
  end
  for _, h in ipairs(M.TEST_HOOKS) do
    if type(b.test[h]) ~= "function" then bad("test.%s is missing", h) end
  end
  for i, s in ipairs(b.settings) do
    if type(s[1]) ~= "string" or type(s.paths) ~= "table" or #s.paths == 0 then
      bad("settings[%d] needs a name and paths", i)
    end
  end
  if b.preflight ~= nil and type(b.preflight) ~= "function" then bad("preflight is not a function") end
  for kind, f in pairs(b.steps or {}) do
    if type(f) ~= "function" then bad("steps.%s is not a function", tostring(kind)) end
  end
  return problems
end

-- The value of the first of `paths` that is set and not "".
local function first(cfg, paths)
  for _, p in ipairs(paths) do
    local v = cfg:get(p)
    if v ~= nil and v ~= "" then return v, p end
  end
end

--- The backend's settings from a resolved configuration, for the plan:
--- secret settings become `<name>_var` (the variable holding the value).
---@param b capil.Backend
---@param cfg table capil.build.config
---@return table
function M.plan_settings(b, cfg)
  local out = {}
  for _, s in ipairs(b.settings) do
    local v, path = first(cfg, s.paths)
    if s.secret then
      out[s[1] .. "_var"] = path and cfg:var_name(path) or cfg:var_name(s.paths[1])
    elseif v ~= nil then
      out[s[1]] = v
    else
      out[s[1]] = s.default
    end
  end
  return out
end

--- The settings with their secrets in place, for commands that run without
--- a plan (capil repl, capil deploy, capil test): never printed or logged.
---@param b capil.Backend
---@param cfg table
---@return table
function M.live_settings(b, cfg)
  local out = M.plan_settings(b, cfg)
  for _, s in ipairs(b.settings) do
    if s.secret then
      local var = out[s[1] .. "_var"]
      local v = var and cfg:get(var)
      out[s[1]] = v ~= "" and v or nil
    end
  end
  return out
end

return M
