--- capil deploy — imports an OVA into vSphere (or ESXi) as a VM or template.
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local log = require("capil.sys.log")

return {
  summary = "import an OVA into vSphere or ESXi as a VM or a template",
  usage = "deploy OVA [--name NAME] [--template] [--backend vsphere|esx] [--var-file F] [--var K=V] [--insecure]",
  help = [[
Reads the OVA's descriptor, asks the server for an import spec
(CreateImportSpec: thin disks, every OVF network mapped to the `network`
variable, default "VM Network"), creates the VM (ImportVApp) and streams each
disk straight out of the OVA to the NFC lease, reporting progress to it.
The connection and placement come from the same variables as a build
(vsphere.json: vcenter_server, username, password, datacenter, cluster or
host, resource_pool, datastore, folder, network, insecure_connection), or
govc's GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE. Prints the
new VM's managed object reference. On failure the lease is aborted.]],
  options = {
    { name = "name", arg = "NAME", help = "name of the new VM (default: the OVF's)" },
    { name = "template", help = "mark the imported VM as a template" },
    { name = "backend", short = "b", arg = "NAME", help = "vsphere (default) or esx" },
    { name = "var-file", arg = "FILE", multi = true, help = "JSON variables (vsphere.json)" },
    { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
    { name = "insecure", help = "do not verify the server's TLS certificate" },
  },
  run = function(opts, args)
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
