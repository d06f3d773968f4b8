--- capil deploy — imports an OVA into vSphere (or ESXi) as a VM or template.
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local log = require("capil.sys.log")

-- capil deploy --library L --item I: the vCenter OVF deploy of a library item.
local function deploy_item(opts, args)
  if #args ~= 0 then cli.fail("deploy: an OVA file or --library with --item, not both", 2) end
  if not (opts.library and opts.library ~= "" and opts.item and opts.item ~= "") then
    cli.fail("deploy: --library NAME and --item NAME go together", 2)
  end
  local backend = require("capil.backend")
  local kind = opts.backend or "vsphere"
  if not (backend.known(kind) and backend.get(kind).traits.content_library) then
    cli.fail(("deploy: content libraries are vCenter's: --library needs --backend %s"):format(
      table.concat(backend.with("content_library"), " or ")), 2)
  end
  local session = require("capil.vsphere.session")
  local s, serr = session.settings_from_vars({ backend = kind, var_files = opts["var-file"],
    vars = build_options.vars(opts) })
  if not s then cli.fail("deploy: " .. serr, 2) end
  local vc, err, code = session.connect(s, { kind = "vsphere" })
  if not vc then cli.fail("deploy: " .. err, code == "ECONFIG" and 2 or 1) end
  local inv
  inv, err = require("capil.vsphere.inventory").resolve(vc, s)
  if not inv then cli.fail(err, 1) end
  local library = require("capil.vsphere.library")
  local c
  c, err, code = session.rest(s, { kind = "vsphere" })
  if not c then cli.fail("deploy: " .. err, code == "ECONFIG" and 2 or 1) end
  local vm, name
  vm, name, err = library.deploy(c, inv, opts.library, opts.item, { name = opts.name })
  c:logout()
  if not vm then cli.fail("deploy: " .. err, 1) end
  if opts.template then
    local _, terr = vc:call("MarkAsTemplate", vm, {})
    if terr then cli.fail(("deploy %s: MarkAsTemplate: %s"):format(name, terr), 1) end
  end
  vc:logout()
  log.out(("%s %s"):format(tostring(vm), name))
  return 0
end

return {
  summary = "import an OVA (or deploy a content library item) into vSphere or ESXi as a VM or a template",
  usage = "deploy OVA|--library NAME --item NAME [--name NAME] [--template] [--backend vsphere|esx]"
    .. " [--var-file F] [--var K=V] [--insecure]",
  help = [[
Reads the OVA's descriptor, asks the server for an import spec
(CreateImportSpec: thin disks, every OVF network mapped to the `network`
variable, default "VM Network"), creates the VM (ImportVApp) and streams each
disk straight out of the OVA to the NFC lease, reporting progress to it.
The connection and placement come from the same variables as a build
(vsphere.json: vcenter_server, username, password, datacenter, cluster or
host, resource_pool, datastore, folder, network, insecure_connection), or
govc's GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE. Prints the
new VM's managed object reference. On failure the lease is aborted.
With --library and --item (no OVA), the VM comes from an ovf item of a
content library instead (vCenter's OVF deploy, /api/vcenter/ovf/
library-item/ITEM?action=deploy, or /rest/com/vmware/vcenter/ovf/
library-item/id:ITEM?~action=deploy before vSphere 7.0 U2): thin disks on the datastore,
in the folder and resource pool (or host) of the same variables, every
OVF network mapped to `network`; default name: the item's.]],
  options = {
    { name = "name", arg = "NAME", help = "name of the new VM (default: the OVF's)" },
    { name = "template", help = "mark the imported VM as a template" },
    { name = "backend", short = "b", arg = "NAME", help = "vsphere (default) or esx" },
    { name = "var-file", arg = "FILE", multi = true, help = "JSON variables (vsphere.json)" },
    { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
    { name = "insecure", help = "do not verify the server's TLS certificate" },
    { name = "library", short = "l", arg = "NAME", help = "deploy from this content library (with --item)" },
    { name = "item", arg = "NAME", help = "the library's ovf item to deploy (with --library)" },
  },
  run = function(opts, args)
    if opts.library or opts.item then return deploy_item(opts, args) end
    if #args ~= 1 then cli.fail("deploy: name one OVA file", 2) end
    local backend = require("capil.backend")
    local kind = opts.backend or "vsphere"
    if not (backend.known(kind) and backend.get(kind).traits.remote) then
      cli.fail(("deploy: backend %s cannot import OVAs (%s)"):format(kind,
        table.concat(backend.with("remote"), " or ")), 2)
    end
    if not require("capil.sys.fs").exists(args[1]) then cli.fail(("deploy: %s: no such file"):format(args[1]), 1) end
    local session = require("capil.vsphere.session")
    local s, serr = session.settings_from_vars({ backend = kind, var_files = opts["var-file"],
      vars = build_options.vars(opts) })
    if not s then cli.fail("deploy: " .. serr, 2) end
    local vc, err = session.connect(s, { kind = kind })
    if not vc then cli.fail(err, 1) end
    local inv
    inv, err = require("capil.vsphere.inventory").resolve(vc, s)
    if not inv then cli.fail(err, 1) end
    local vm
    vm, err = require("capil.vsphere.deploy").import(vc, inv, args[1], { name = opts.name, template = opts.template })
    if not vm then cli.fail(err, 1) end
    log.out(("%s %s"):format(tostring(vm.ref), vm.name))
    return 0
  end,
}
