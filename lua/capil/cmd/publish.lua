--- capil publish — uploads an OVA into a vSphere content library as an OVF
--- item (capil.vsphere.library over capil.vsphere.rest).
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local log = require("capil.sys.log")
local fs = require("capil.sys.fs")

-- The OVA a path names: the file, or the only .ova of a build directory.
local function find_ova(path)
  local st = fs.stat(path)
  if not st then cli.fail(("publish: %s: no such file or directory"):format(path), 2) end
  if st.type ~= "directory" then return path end
  local found = {}
  for _, name in ipairs(fs.list(path) or {}) do
    if name:match("%.ova$") then found[#found + 1] = path .. "/" .. name end
  end
  if #found ~= 1 then
    cli.fail(("publish: %s holds %d .ova files%s: name the OVA"):format(path, #found,
      #found > 0 and " (" .. table.concat(found, ", ") .. ")" or ""), 2)
  end
  return found[1]
end

return {
  summary = "upload an OVA into a vSphere content library (an OVF item)",
  usage = "publish OVA|BUILD_DIR --library NAME [--item NAME] [--create-library [--datastore DS]]"
    .. " [--var-file F] [--var K=V] [--insecure] [--api auto|api|rest]",
  help = [[
Verifies the OVA (tar layout, manifest digests), then opens a vSphere
Automation REST session (/api/session on vSphere 7.0 U2 and later,
/rest/com/vmware/cis/session before; --api picks one; the library calls
go to the same tree, /api/content/... or /rest/com/vmware/...), finds the
library and the item (default: the OVA's name without .ova; created, type ovf,
when missing) and uploads the descriptor and each disk straight out of the
OVA through an update session, each checked against its manifest SHA-256.
Once the server reports the files ready, the item's description records
the OVA's SHA-256: publishing the same OVA again uploads nothing, a changed
OVA replaces the item's content (same item id). On failure or Ctrl-C the
update session is cancelled and deleted, and an item or library this run
created is removed. The connection comes from the same variables as
capil deploy (vcenter_server, username, password, insecure_connection,
thumbprint, vcenter_ca_file; datacenter and datastore for --create-library) or
govc's GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE.
Exit status: 0 published or already there, 1 failure, 2 usage or
configuration error.]],
  options = {
    { name = "library", short = "l", arg = "NAME", help = "the content library (required)" },
    { name = "item", arg = "NAME", help = "the library item (default: the OVA's name without .ova)" },
    { name = "create-library", help = "create the library (local, on --datastore) when it does not exist" },
    { name = "datastore", arg = "DS", help = "datastore of a created library (default: the datastore variable)" },
    { name = "var-file", arg = "FILE", multi = true, help = "JSON variables (vsphere.json)" },
    { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
    { name = "insecure", help = "do not verify the server's TLS certificate" },
    { name = "api", arg = "auto|api|rest", help = "REST session endpoint (default auto: /api, /rest on 404)" },
  },
  run = function(opts, args)
    if #args ~= 1 then cli.fail("publish: name one OVA file or build directory", 2) end
    if not opts.library or opts.library == "" then cli.fail("publish: --library NAME is required", 2) end
    local api = opts.api or "auto"
    if api ~= "auto" and api ~= "api" and api ~= "rest" then
      cli.fail(("publish: --api %s: use auto, api or rest"):format(api), 2)
    end
    if opts.datastore and not opts["create-library"] then
      cli.fail("publish: --datastore goes with --create-library", 2)
    end
    local ova_path = find_ova(args[1])
    local item = opts.item or fs.basename(ova_path):gsub("%.ova$", "")
    local session = require("capil.vsphere.session")
    local s, serr = session.settings_from_vars({ backend = "vsphere", var_files = opts["var-file"],
      vars = build_options.vars(opts) })
    if not s then cli.fail("publish: " .. serr, 2) end
    local ds_name = opts.datastore or s.datastore
    if opts["create-library"] and not ds_name then
      cli.fail("publish: --create-library needs --datastore DS (or the datastore variable)", 2)
    end
    -- server and credentials before the OVA's (long) verification
    local login, lerr = session.login(s)
    if not login then cli.fail("publish: " .. lerr, 2) end

    -- the OVA first: nothing goes out before it is known good
    local ova = require("capil.format.ova")
    local report, verr = ova.verify(ova_path, { sha256 = true, progress = true })
    if not report then cli.fail("publish: " .. verr, 1) end
    if not report.ok then
      cli.fail(("publish: %s fails verification:\n  %s"):format(ova_path, table.concat(report.problems, "\n  ")), 1)
    end

    if s.server:match("^[Hh][Tt][Tt][Pp]://") then
      log.warn("publish: %s is plain http: the password and the OVA cross the network in clear; use https://",
        s.server)
    end
    local c, err, code = session.rest(s, { kind = "vsphere", api = api })
    if not c then cli.fail("publish: " .. err, code == "ECONFIG" and 2 or 1) end
    local library = require("capil.vsphere.library")
    local res
    res, err, code = library.publish(c, ova_path, report, { library = opts.library, item = item,
      datastore_id = opts["create-library"] and library.datastore_finder(s, ds_name) or nil })
    c:logout()
    if not res then cli.fail("publish: " .. err, code == "ECONFIG" and 2 or 1) end
    if res.changed then
      log.out(("published %s to library %s, item %s (%s), sha256 %s"):format(ova_path, opts.library, item,
        res.item_id, report.sha256))
    else
      log.out(("library %s, item %s (%s) already holds %s (sha256 %s): nothing uploaded"):format(opts.library,
        item, res.item_id, ova_path, report.sha256))
    end
    return 0
  end,
}
