-- spec/support/buildenv.lua — what the simulator builds need on this side:
-- an "ISO" (any file: the simulator's VMs never boot it) and the real
-- streamOptimized VMDK the simulator's export serves, made with qemu-img.
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")

local M = {}

--- Runs a tool that must succeed; returns its stdout.
---@param argv string[]
function M.run_tool(argv)
  local r = assert(proc.run({ argv = argv, timeout = 60 }))
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
  return r.stdout
end

--- dir/installer.iso and its sha256.
---@param dir string
---@return string path, string sha256
function M.iso(dir)
  local path = dir .. "/installer.iso"
  assert(fs.write(path, ("capil test installer\n"):rep(5000)))
  return path, assert(hash.file(path))
end

--- dir/export.vmdk: a 1 GiB streamOptimized disk whose first `mib` MiB are random.
---@param dir string
---@param mib integer
function M.export_vmdk(dir, mib)
  local raw = dir .. "/disk.raw"
  M.run_tool({ "qemu-img", "create", "-q", "-f", "raw", raw, "1G" })
  M.run_tool({ "dd", "if=/dev/urandom", "of=" .. raw, "bs=1M", "count=" .. mib, "conv=notrunc", "status=none" })
  local vmdk = dir .. "/export.vmdk"
  M.run_tool({ "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk })
  return vmdk
end

--- Everything a full vSphere build on the simulator needs, started here:
--- a scratch dir, the "ISO", the VMDK the simulator's export serves (`mib`
--- random MiB), the "guest" (a real sshd as the current user with the
--- build's ed25519 key), the simulator (TLS, reporting 127.0.0.1 as the
--- guest IP; `api`: serving /api as vSphere 7.0 U2+ does) and a var file
--- pointing at it (`vars` added to it). Returns
--- {tmp, sim, ssh, iso, iso_sum, key, probe, vmdk, varfile, stop = fn}.
---@param name string scratch dir name
---@param password string the simulator's password
--- `guest_ip = false`: the simulator reports no guest IP (a VM without
--- VMware Tools).
---@param opts? {mib?: integer, vars?: table, guest_ip?: false, api?: boolean}
---@return table
function M.vsphere(name, password, opts)
  opts = opts or {}
  local peer = require("support.peer")
  local sshd = require("support.sshd")
  local e = { tmp = peer.dir(name) }
  e.iso, e.iso_sum = M.iso(e.tmp)
  e.vmdk = M.export_vmdk(e.tmp, opts.mib or 1)
  e.key = sshd.keygen(e.tmp, "build_ed25519")
  e.ssh = sshd.start({ authorized = { e.key } })
  e.probe = e.tmp .. "/probe"
  e.sim = require("support.vcsim").start({ username = "administrator@vsphere.local", password = password,
    tls = true, guest_ip = opts.guest_ip ~= false and "127.0.0.1" or nil, guest_ip_delay = 0.3,
    export_disk = e.vmdk, api = opts.api })
  e.varfile = e.tmp .. "/vsphere.json"
  local vars = {
    vcenter_server = e.sim.url, username = e.sim.username, password = password, vcenter_ca_file = e.sim.ca_file,
    datacenter = "DC0", cluster = "DC0_C0", datastore = "LocalDS_0", network = "VM Network", folder = "",
    insecure_connection = "false", convert_to_template = "false",
  }
  for k, v in pairs(opts.vars or {}) do vars[k] = v end
  assert(require("capil.sys.json").write(e.varfile, vars))
  --- Stops the simulator and sshd, removes the scratch dir.
  function e.stop()
    if e.sim then e.sim:stop() end
    if e.ssh then e.ssh.stop() end
    fs.remove(e.tmp, { recursive = true })
  end
  return e
end

return M
