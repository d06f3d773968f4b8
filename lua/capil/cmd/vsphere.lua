--- capil vsphere — the few govc verbs that debugging an image build needs
--- (ls, info, destroy, snapshot list|revert), on the session code of
--- `capil deploy` and `capil repl`: the same variables (vsphere.json,
--- --var, govc's GOVC_URL/GOVC_USERNAME/GOVC_PASSWORD/GOVC_INSECURE).
local cli = require("capil.cli")
local log = require("capil.sys.log")
local json = require("capil.sys.json")

local COMMON = {
  { name = "json", help = "print the result as JSON" },
  { name = "backend", short = "b", arg = "NAME", help = "vsphere (default) or esx" },
  { name = "var-file", arg = "FILE", multi = true, help = "JSON variables (vsphere.json)" },
  { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
  { name = "insecure", help = "do not verify the server's TLS certificate" },
}

local function with_common(list)
  local out = {}
  for _, o in ipairs(list) do out[#out + 1] = o end
  for _, o in ipairs(COMMON) do out[#out + 1] = o end
  return out
end

local SUB = {
  ls = {
    usage = "vsphere ls [PATH] [-l] [--json]",
    summary = "list an inventory path, as govc ls",
    help = [[
Lists the children of an inventory path: / shows the datacenters, /DC0 its
vm, host, datastore and network folders, /DC0/vm the VMs and folders in it,
a cluster its hosts and resource pool. A path without a leading / is under
the datacenter (the `datacenter` variable, or the only one). A VM, host,
datastore or network path prints itself. -l adds each object's type.

Examples:
  capil vsphere ls /DC0/vm --var-file vsphere.json
  GOVC_URL=https://user:pass@vcenter/sdk capil vsphere ls vm/capi -l
  capil vsphere ls /DC0/datastore --json]],
    options = with_common({ { name = "long", short = "l", help = "show each object's type" } }),
  },
  info = {
    usage = "vsphere info VM [--json]",
    summary = "a VM's name, power state, guest, firmware, CPUs, memory, IP, UUID, files, as govc vm.info",
    help = [[
Shows a VM found by its exact name anywhere under the datacenter's vm folder
(or by a path under it, folder/name): name, inventory path, power state,
guest id, firmware, CPUs, memory, IP address, UUID, the .vmx datastore path,
and whether it is a template. A missing VM is an error with similar names.

Examples:
  capil vsphere info ubuntu-2204-kube-v1.30.2 --var-file vsphere.json
  capil vsphere info capi/node-1 --json | jq -r .ip]],
    options = with_common({}),
  },
  destroy = {
    usage = "vsphere destroy VM [--json]",
    summary = "power off (if on) and destroy a VM, as govc vm.destroy",
    help = [[
Powers the VM off when it runs, then destroys it (Destroy_Task): its files
go with it. VM must be the exact name (or folder/name path) of one VM: no
pattern, no partial name; a name several VMs share is refused, asking for
the path. A missing VM is an error with similar names.

Examples:
  capil vsphere destroy ubuntu-2204-kube-v1.30.2 --var-file vsphere.json
  capil vsphere destroy capi/node-1 --json]],
    options = with_common({}),
  },
  snapshot = {
    usage = "vsphere snapshot list|revert VM [NAME] [--json]",
    summary = "list a VM's snapshots, or revert to one, as govc snapshot.tree / snapshot.revert",
    help = [[
  snapshot list VM          the snapshot tree, children indented, the current
                            one marked with "*" (JSON: name, ref, parent,
                            current, created, description)
  snapshot revert VM [NAME] revert to snapshot NAME, or to the current
                            snapshot without NAME; a missing NAME is an error
                            listing the VM's snapshots

Examples:
  capil vsphere snapshot list node-1 --var-file vsphere.json
  capil vsphere snapshot revert node-1 new
  capil vsphere snapshot revert node-1 --json]],
    options = with_common({}),
  },
}
local ORDER = { "ls", "info", "destroy", "snapshot" }

local function sub_help(name)
  local s = SUB[name]
  local lines = { "Usage: capil " .. s.usage, "", s.summary, "", s.help, "", "Options:", cli.format_options(s.options) }
  return table.concat(lines, "\n")
end

-- The session and datacenter from the options, or a clear failure.
local function connect(opts, what)
  local backend = require("capil.backend")
  local kind = opts.backend or "vsphere"
  if not (backend.known(kind) and backend.get(kind).traits.remote) then
    cli.fail(("vsphere %s: backend %s has no vSphere session (%s)"):format(what, kind,
      table.concat(backend.with("remote"), " or ")), 2)
  end
  local session = require("capil.vsphere.session")
  local s, serr = session.settings_from_vars({ backend = kind, var_files = opts["var-file"],
    vars = require("capil.build.loader").vars(opts) })
  if not s then cli.fail(("vsphere %s: %s"):format(what, serr), 2) end
  local vc, err, code = session.connect(s, { kind = kind })
  if not vc then
    cli.fail(("vsphere %s: %s"):format(what, (tostring(err):gsub("^vsphere: ", ""))), code == "ECONFIG" and 2 or 1)
  end
  return vc, s
end

-- {datacenter, dc_name, dc_path}: the `datacenter` setting or the only one.
local function datacenter(vc, s, what)
  local vim25 = require("capil.vsphere.vim25")
  local name = s.datacenter
  if not name then
    local p, err = vc:props(vc.content.rootFolder, { "childEntity" })
    if not p then cli.fail(("vsphere %s: %s"):format(what, err), 1) end
    local dcs = {}
    for _, c in ipairs(vim25.list(p.childEntity)) do
      if c.type == "Datacenter" then
        local n = vc:props(c, { "name" })
        if n then dcs[#dcs + 1] = n.name end
      end
    end
    table.sort(dcs)
    if #dcs ~= 1 then
      cli.fail(("vsphere %s: %d datacenters (%s): set datacenter (--var datacenter=NAME)"):format(what, #dcs,
        table.concat(dcs, ", ")), 2)
    end
    name = dcs[1]
  end
  local path = name:sub(1, 1) == "/" and name or "/" .. name
  local ref, err = vc:find(path)
  if not ref then cli.fail(("vsphere %s: datacenter %s not found (%s)"):format(what, path, err), 1) end
  return { datacenter = ref, dc_name = path:match("([^/]+)$"), dc_path = path }
end

local function find_vm(vc, s, name, what)
  local inv = datacenter(vc, s, what)
  local ref, err = require("capil.vsphere.testvm").find_vm(vc, inv, name)
  if not ref then cli.fail(("vsphere %s: %s"):format(what, (err:gsub("^vsphere: ", ""))), 1) end
  return ref, inv
end

local function emit(opts, value, text)
  if opts.json then
    log.out(json.encode(value, { indent = 2, sort_keys = true }))
  else
    for _, l in ipairs(text) do log.out(l) end
  end
end

-- The names of refs (of any types), {[ref tostring] = name}.
local function names_of(vc, refs)
  local by_type, out = {}, {}
  for _, r in ipairs(refs) do
    by_type[r.type] = by_type[r.type] or {}
    table.insert(by_type[r.type], r)
  end
  for t, list in pairs(by_type) do
    local objs, err = vc:props_many(list, t, { "name" })
    if not objs then return nil, err end
    for _, o in ipairs(objs) do out[tostring(o.ref)] = o.props.name end
  end
  return out
end

-- The children an object shows in govc ls: a list of Refs.
local function children(vc, ref)
  local vim25 = require("capil.vsphere.vim25")
  local t = ref.type
  local paths
  if t == "Folder" then paths = { "childEntity" }
  elseif t == "Datacenter" then paths = { "vmFolder", "hostFolder", "datastoreFolder", "networkFolder" }
  elseif t == "ComputeResource" or t == "ClusterComputeResource" then paths = { "host", "resourcePool" }
  elseif t == "ResourcePool" then paths = { "resourcePool" }
  elseif t == "VirtualApp" then paths = { "resourcePool", "vm" }
  else return nil end
  local p, err = vc:props(ref, paths)
  if not p then return nil, err end
  local out = {}
  for _, k in ipairs(paths) do
    local v = p[k]
    if vim25.is_ref(v) then out[#out + 1] = v
    else for _, c in ipairs(vim25.list(v)) do out[#out + 1] = c end end
  end
  return out
end

local function ls(opts, args)
  if #args > 1 then cli.fail("vsphere ls: name at most one inventory path", 2) end
  local vc, s = connect(opts, "ls")
  local path = args[1] or "/"
  if path:sub(1, 1) ~= "/" then path = datacenter(vc, s, "ls").dc_path .. "/" .. path end
  path = path:gsub("/+$", "")
  local ref, err, code
  if path == "" then
    ref = vc.content.rootFolder
  else
    ref, err, code = vc:find(path)
    if not ref then
      if code == "ENOENT" then cli.fail(("vsphere ls: %s: not found"):format(path), 1) end
      cli.fail("vsphere ls: " .. err, 1)
    end
  end
  local kids
  kids, err = children(vc, ref)
  if err then cli.fail("vsphere ls: " .. err, 1) end
  local entries = {}
  if not kids then
    entries[1] = { path = path, name = path:match("([^/]+)$"), type = ref.type, ref = ref.value }
  else
    local names
    names, err = names_of(vc, kids)
    if not names then cli.fail("vsphere ls: " .. err, 1) end
    for _, k in ipairs(kids) do
      local n = names[tostring(k)] or k.value
      entries[#entries + 1] = { path = path .. "/" .. n, name = n, type = k.type, ref = k.value }
    end
    table.sort(entries, function(a, b) return a.path < b.path end)
  end
  local text = {}
  for i, e in ipairs(entries) do
    text[i] = opts.long and ("%s (%s)"):format(e.path, e.type) or e.path
  end
  emit(opts, json.array(entries), text)
  vc:logout()
  return 0
end

-- The inventory path of a VM: its parents' names up to the root.
local function inventory_path(vc, ref)
  local parts = {}
  local cur = ref
  for _ = 1, 64 do
    local p = vc:props(cur, { "name", "parent" })
    if not p then return nil end
    if not p.parent then break end -- the root folder has no name in a path
    table.insert(parts, 1, p.name)
    cur = p.parent
  end
  return "/" .. table.concat(parts, "/")
end

local INFO_PROPS = { "name", "runtime.powerState", "config.guestId", "config.guestFullName", "config.firmware",
  "config.hardware.numCPU", "config.hardware.memoryMB", "guest.ipAddress", "guest.net", "config.uuid",
  "config.files.vmPathName", "config.template" }

local function info(opts, args)
  if #args ~= 1 then cli.fail("vsphere info: name one VM", 2) end
  local vc, s = connect(opts, "info")
  local ref = find_vm(vc, s, args[1], "info")
  local p, err = vc:props(ref, INFO_PROPS)
  if not p then cli.fail("vsphere info: " .. err, 1) end
  -- the IP a build would use (not link-local, not APIPA), else the one Tools reports
  local vim25 = require("capil.vsphere.vim25")
  local ip = require("capil.backends.vsphere").pick_ip(p["guest.net"], p["guest.ipAddress"], "0.0.0.0/0", 0)
    or p["guest.ipAddress"]
  local ips = {}
  for _, nic in ipairs(vim25.list(p["guest.net"])) do
    for _, a in ipairs(vim25.list(nic.ipAddress)) do ips[#ips + 1] = a end
  end
  local v = {
    name = p.name, ips = json.array(ips), ref = ref.value, path = inventory_path(vc, ref) or json.null,
    power_state = p["runtime.powerState"], guest_id = p["config.guestId"] or json.null,
    guest_name = p["config.guestFullName"] or json.null,
    -- an unset firmware is BIOS (VirtualMachineConfigInfo.firmware)
    firmware = p["config.firmware"] or "bios",
    cpus = tonumber(p["config.hardware.numCPU"]), memory_mb = tonumber(p["config.hardware.memoryMB"]),
    ip = ip or json.null, uuid = p["config.uuid"] or json.null,
    datastore_path = p["config.files.vmPathName"] or json.null,
    template = p["config.template"] == true or p["config.template"] == "true",
  }
  local function show(x) return x == json.null and "-" or tostring(x) end
  emit(opts, v, {
    ("Name:           %s"):format(v.name),
    ("Path:           %s"):format(show(v.path)),
    ("Reference:      VirtualMachine:%s"):format(v.ref),
    ("Power state:    %s"):format(v.power_state),
    ("Guest id:       %s"):format(show(v.guest_id)),
    ("Firmware:       %s"):format(v.firmware),
    ("CPUs:           %s"):format(show(v.cpus)),
    ("Memory:         %s MiB"):format(show(v.memory_mb)),
    ("IP address:     %s"):format(show(v.ip)),
    ("UUID:           %s"):format(show(v.uuid)),
    ("Datastore path: %s"):format(show(v.datastore_path)),
    ("Template:       %s"):format(v.template and "yes" or "no"),
  })
  vc:logout()
  return 0
end

local function destroy(opts, args)
  if #args ~= 1 then cli.fail("vsphere destroy: name exactly one VM (its exact name or folder/name)", 2) end
  local name = args[1]
  if name:find("[*?%[]") then
    cli.fail(("vsphere destroy: '%s' is a pattern: give the exact name of one VM"):format(name), 2)
  end
  local vc, s = connect(opts, "destroy")
  local ref = find_vm(vc, s, name, "destroy")
  local p, err = vc:props(ref, { "name", "runtime.powerState" })
  if not p then cli.fail("vsphere destroy: " .. err, 1) end
  local powered_off = false
  if p["runtime.powerState"] ~= "poweredOff" then
    log.info("vsphere destroy: powering off %s", p.name)
    local _, perr = vc:call_task("PowerOffVM_Task", ref, {})
    if perr then cli.fail(("vsphere destroy: %s: power off: %s"):format(p.name, perr), 1) end
    powered_off = true
  end
  local _, derr = vc:call_task("Destroy_Task", ref, {})
  if derr then cli.fail(("vsphere destroy: %s: %s"):format(p.name, derr), 1) end
  emit(opts, { name = p.name, ref = ref.value, powered_off = powered_off, destroyed = true },
    { ("destroyed %s (VirtualMachine:%s)%s"):format(p.name, ref.value, powered_off and ", powered off first" or "") })
  vc:logout()
  return 0
end

-- The snapshots in pre-order: { {name=, ref=, parent=, depth=, created=, description=}, ... }.
local function flatten(list, out, parent, depth)
  local vim25 = require("capil.vsphere.vim25")
  for _, t in ipairs(vim25.list(list)) do
    out[#out + 1] = { name = t.name, ref = t.snapshot, parent = parent, depth = depth,
      created = t.createTime, description = t.description }
    flatten(t.childSnapshotList, out, t.name, depth + 1)
  end
  return out
end

local function snapshots(vc, ref, what)
  local p, err = vc:props(ref, { "name", "snapshot.rootSnapshotList", "snapshot.currentSnapshot" })
  if not p then cli.fail(("vsphere snapshot %s: %s"):format(what, err), 1) end
  local list = flatten(p["snapshot.rootSnapshotList"], {}, nil, 0)
  local cur = p["snapshot.currentSnapshot"]
  for _, sn in ipairs(list) do sn.current = cur ~= nil and sn.ref.value == cur.value end
  return list, p.name, cur
end

local function snapshot_list(opts, vc, ref)
  local list, name = snapshots(vc, ref, "list")
  local out, text = {}, {}
  for i, sn in ipairs(list) do
    out[i] = { name = sn.name, ref = sn.ref.value, parent = sn.parent or json.null, current = sn.current,
      created = sn.created or json.null, description = sn.description or json.null }
    text[i] = ("%s%s%s"):format(("  "):rep(sn.depth), sn.name, sn.current and " *" or "")
  end
  if #list == 0 and not opts.json then text[1] = ("%s has no snapshots"):format(name) end
  emit(opts, json.array(out), text)
  return 0
end

local function snapshot_revert(opts, vc, ref, want)
  local list, name, cur = snapshots(vc, ref, "revert")
  local target
  if want then
    local found, all = {}, {}
    for _, sn in ipairs(list) do
      all[#all + 1] = sn.name
      if sn.name == want then found[#found + 1] = sn end
    end
    if #found == 0 then
      local like = require("capil.util.text").closest(want, all)
      cli.fail(("vsphere snapshot revert: %s has no snapshot '%s'%s (snapshots: %s)"):format(name, want,
        like and ("; did you mean '" .. like .. "'?") or "", #all > 0 and table.concat(all, ", ") or "none"), 1)
    end
    if #found > 1 then
      cli.fail(("vsphere snapshot revert: %s has %d snapshots named '%s'"):format(name, #found, want), 1)
    end
    target = found[1]
    local _, err = vc:call_task("RevertToSnapshot_Task", target.ref, {})
    if err then cli.fail(("vsphere snapshot revert: %s: %s"):format(name, err), 1) end
  else
    if not cur then cli.fail(("vsphere snapshot revert: %s has no current snapshot"):format(name), 1) end
    for _, sn in ipairs(list) do if sn.current then target = sn end end
    local _, err = vc:call_task("RevertToCurrentSnapshot_Task", ref, {})
    if err then cli.fail(("vsphere snapshot revert: %s: %s"):format(name, err), 1) end
  end
  local sname = target and target.name or cur.value
  emit(opts, { vm = name, snapshot = sname, ref = (target and target.ref or cur).value, reverted = true },
    { ("reverted %s to snapshot %s"):format(name, sname) })
  return 0
end

local function snapshot(opts, args)
  local verb = args[1]
  if verb ~= "list" and verb ~= "revert" then
    cli.fail(("vsphere snapshot: %s: use list or revert (capil vsphere snapshot --help)"):format(
      verb and ("unknown action '" .. verb .. "'") or "name an action"), 2)
  end
  if verb == "list" and #args ~= 2 then cli.fail("vsphere snapshot list: name one VM", 2) end
  if verb == "revert" and (#args < 2 or #args > 3) then
    cli.fail("vsphere snapshot revert: name one VM and at most one snapshot", 2)
  end
  local vc, s = connect(opts, "snapshot " .. verb)
  local ref = find_vm(vc, s, args[2], "snapshot " .. verb)
  local code
  if verb == "list" then code = snapshot_list(opts, vc, ref) else code = snapshot_revert(opts, vc, ref, args[3]) end
  vc:logout()
  return code
end

local RUN = { ls = ls, info = info, destroy = destroy, snapshot = snapshot }

local HELP = {}
for _, n in ipairs(ORDER) do HELP[#HELP + 1] = ("  %-40s %s"):format(SUB[n].usage:gsub("^vsphere ", ""),
  SUB[n].summary) end

return {
  summary = "govc-like verbs on a vSphere inventory: ls, info, destroy, snapshot list|revert",
  usage = "vsphere ls|info|destroy|snapshot ... [--json] [--var-file F] [--var K=V] [--insecure]",
  help = "Subcommands:\n" .. table.concat(HELP, "\n") .. [[


The session comes from the same variables as `capil deploy` and `capil repl`:
vsphere.json (vcenter_server, username, password, datacenter,
insecure_connection, vcenter_ca_file), --var, or govc's GOVC_URL,
GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE. VMs are found by exact name
anywhere under the datacenter's vm folder. The password is never printed.
`capil vsphere SUBCOMMAND --help` shows a subcommand's options and examples.

Examples:
  capil vsphere ls /DC0/vm --var-file vsphere.json
  capil vsphere info node-1 --json
  capil vsphere snapshot list node-1]],
  options = {},
  stop_at_positional = true,
  --- The help of `capil vsphere SUB --help`, or nil for the command's own.
  help_for = function(args)
    local name = args[1]
    if name and SUB[name] then return sub_help(name) end
    return nil
  end,
  run = function(_, args)
    return cli.subcommand("vsphere", args, SUB, RUN, ORDER)
  end,
}
