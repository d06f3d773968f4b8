--- capil.backends.esx — a standalone ESXi host. A licensed host speaks the
--- same vSphere API as vCenter (hostd answers /sdk, datacenter
--- `ha-datacenter`): the vsphere backend with the esx.json variables
--- (remote_host, remote_username, remote_password, remote_datastore) winning
--- over vsphere.json's. A free-licence host refuses the write API
--- (RestrictedVersion): the build then switches to SSH (vim-cmd, vmkfstools,
--- esxcli; capil.backends.esx.ssh) with the same credentials, as Packer's
--- esx5 mode did. `remote_type=ssh` goes over SSH from the start.
local vsphere = require("capil.backends.vsphere")
local esx_ssh = require("capil.backends.esx.ssh")
local log = require("capil.sys.log")

local M = setmetatable({ name = "esx" }, { __index = vsphere })

--- Whether the configuration asks for SSH from the start (remote_type=ssh).
---@param cfg table capil.build.config
function M.wants_ssh(cfg)
  return cfg:get("remote.type") == "ssh"
end

M.steps = setmetatable({}, { __index = vsphere.steps })

function M.steps.upload_media(run, step)
  if M.wants_ssh(run.cfg) then
    run.esx_ssh = true
    log.info("esx: remote_type=ssh: building over SSH (vim-cmd)")
    return esx_ssh.steps.upload_media(run, step)
  end
  local ok, err, code = vsphere.steps.upload_media(run, step)
  if ok or code ~= "ERESTRICTED" then return ok, err, code end
  local server = run.vc and run.vc.server or "the host"
  log.warn("esx: %s refuses the vSphere write API (RestrictedVersion: a free licence); building over SSH "
    .. "(vim-cmd) instead (remote_type=ssh skips this attempt)", server)
  if run.vc and run.vc.logout then pcall(run.vc.logout, run.vc) end
  run.vc, run.inv = nil, nil
  run.esx_ssh, run.esx_restricted = true, true
  local sok, serr, scode = esx_ssh.steps.upload_media(run, step)
  if sok then return sok end
  return nil, ("%s refuses the vSphere write API (RestrictedVersion: a free-licence ESXi), and the SSH fallback "
    .. "failed: %s"):format(server, serr), scode
end

function M.create(opts)
  if opts.run.esx_ssh then return esx_ssh.create(opts) end
  return vsphere.create(opts)
end

function M.steps.finalize_vm(run, step)
  if run.esx_ssh then return esx_ssh.steps.finalize_vm(run, step) end
  return vsphere.steps.finalize_vm(run, step)
end

return M
