--- capil.backends.esx — a standalone ESXi host through the same vSphere API
--- as vCenter (hostd answers /sdk, datacenter `ha-datacenter`): the vsphere
--- backend with the esx.json variables (remote_host, remote_username,
--- remote_password, remote_datastore) winning over vsphere.json's. A
--- free-licence host refuses the write API (RestrictedVersion): the error
--- says so; the SSH fallback (vim-cmd) is not available yet.
local vsphere = require("capil.backends.vsphere")

local M = setmetatable({ name = "esx" }, { __index = vsphere })

return M
