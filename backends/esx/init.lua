--- capil.backends.esx — a standalone ESXi host. A licensed host speaks the
--- same vSphere API as vCenter (hostd answers /sdk, datacenter
--- `ha-datacenter`): the vsphere backend's steps with the esx.json variables
--- (remote_host, remote_username, remote_password, remote_datastore) winning
--- over vsphere.json's. A free-licence host refuses the write API
--- (RestrictedVersion): the build then switches to SSH (vim-cmd, vmkfstools,
--- esxcli; capil.backends.esx.ssh) with the same credentials, as Packer's
--- esx5 mode did. `remote_type=ssh` goes over SSH from the start.
---
--- upload_media decides the path and records it in ctx.state.mode ("api"
--- or "ssh"; ctx.state.restricted when the API refused); create_vm and
--- finalize_vm follow it.
local vsphere = require("capil.backends.vsphere")
local esx_ssh = require("capil.backends.esx.ssh")
local log = require("capil.sys.log")

local M = {}

M.name = "esx"
M.description = "a standalone ESXi host through the vSphere API (over SSH on a free licence)"
-- disk_source: over SSH on a free licence the flat extent streams into the OVA
M.traits = { encoder = "usb", export = "nfc", guest_id = "vsphere", remote = true, govc_env = true,
  var_file = "esx.json", disk_source = true }
M.settings = vsphere.settings_for("esx")
-- the VM class of the API path; the SSH path's VMs are esx_ssh.VM
M.VM = vsphere.VM
M.test = vsphere.test_hooks("esx")
M.preflight = vsphere.preflight_for("esx")

--- Whether the settings ask for SSH from the start (remote_type=ssh).
---@param s table the backend's settings
---@return boolean
function M.wants_ssh(s)
  return s.remote_type == "ssh"
end

M.steps = {}

--- Puts the media on the host: over the vSphere API, or over SSH
--- (remote_type=ssh, or when the API answers RestrictedVersion).
---@param ctx capil.BuildContext
---@param step table the plan's upload_media step
---@return true|nil, string?, string?
function M.steps.upload_media(ctx, step)
  local st = ctx.state
  st.kind = "esx"
  if M.wants_ssh(ctx.settings) then
    st.mode = "ssh"
    log.info("esx: remote_type=ssh: building over SSH (vim-cmd)")
    return esx_ssh.upload_media(ctx, step)
  end
  st.mode = "api"
  local ok, err, code = vsphere.steps.upload_media(ctx, step)
  if ok or code ~= "ERESTRICTED" then return ok, err, code end
  local server = st.vc and st.vc.server or "the host"
  log.warn("esx: %s refuses the vSphere write API (RestrictedVersion: a free licence); building over SSH "
    .. "(vim-cmd) instead (remote_type=ssh skips this attempt)", server)
  if st.vc and st.vc.logout then pcall(st.vc.logout, st.vc) end
  st.vc, st.inv = nil, nil
  st.mode, st.restricted = "ssh", true
  local sok, serr, scode = esx_ssh.upload_media(ctx, step)
  if sok then return sok end
  return nil, ("%s refuses the vSphere write API (RestrictedVersion: a free-licence ESXi), and the SSH fallback "
    .. "failed: %s"):format(server, serr), scode
end

--- Creates the build VM on the path upload_media chose.
---@param ctx capil.BuildContext
---@param step table the plan's create_vm step
---@return table|nil vm, string? err, string? code
function M.create(ctx, step)
  if ctx.state.mode == "ssh" then return esx_ssh.create(ctx, step) end
  return vsphere.create(ctx, step)
end

--- Keeps or destroys the build VM (and, over the API, makes it a template).
---@param ctx capil.BuildContext
---@param step table the plan's finalize_vm step
---@return true|nil, string?, string?
function M.steps.finalize_vm(ctx, step)
  if ctx.state.mode == "ssh" then return esx_ssh.finalize_vm(ctx, step) end
  return vsphere.steps.finalize_vm(ctx, step)
end

return M
