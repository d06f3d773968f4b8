--- capil.vsphere.lease — HttpNfcLease transfers: a lease waited on until
--- ready, kept alive by progress reports from the transfer loop's ticks,
--- completed once and aborted on failure or Ctrl-C; and the export of a
--- VM's disks through one (ExportVm), used by the vSphere and ESXi backends.
local vim25 = require("capil.vsphere.vim25")
local http = require("capil.sys.http")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local cleanup = require("capil.sys.cleanup")

local M = {}

-- An HttpNfcLease in use (export or import): waited on until ready, kept
-- alive by progress reports from the transfer loop's ticks, completed once,
-- and aborted on failure or Ctrl-C.
---@class capil.vsphere.Lease
---@field info table the HttpNfcLeaseInfo (deviceUrl, entity, ...)
---@field total integer bytes to move (for the progress reports)
---@field moved integer bytes moved so far
local Lease = {}
Lease.__index = Lease

--- Waits for the lease `ref` to be ready. `what` prefixes its messages
--- ("deploy x", "vm: export"). Returns the lease (info = the
--- HttpNfcLeaseInfo) or nil, err, code (the lease aborted).
---@param vc table a capil.vsphere.vim25 session
---@param ref capil.vsphere.vim25.Ref the HttpNfcLease
---@param what string
---@param timeout? number seconds (default 300)
---@return table|nil lease, string? err, string? code
function M.open(vc, ref, what, timeout)
  local l = setmetatable({ vc = vc, ref = ref, what = what, moved = 0, total = 0 }, Lease)
  l.guard = cleanup.push(("NFC lease %s (%s)"):format(tostring(ref), what), function()
    l:abort("capil: interrupted")
  end)
  local state, err, code = vc:wait(ref, "state", function(s) return s == "ready" or s == "error" end, timeout or 300)
  if not state then return l:fail("the lease never became ready: " .. err, code) end
  if state == "error" then
    local p = vc:props(ref, { "error" })
    local e = p and p.error
    return l:fail("the lease failed: " .. (e and (e.localizedMessage or e.fault and e.fault._type) or "no reason given"),
      "ENFC")
  end
  local p, perr, pcode = vc:props(ref, { "info" })
  if not p then return l:fail("reading the lease: " .. perr, pcode) end
  l.info = p.info
  return l
end

--- Aborts the lease (once) with `why` as the fault.
function Lease:abort(why)
  if self.done then return end
  self.done = true
  self.guard:cancel()
  self.vc:call("HttpNfcLeaseAbort", self.ref, { fault = vim25.obj("LocalizedMethodFault", {
    fault = vim25.obj("SystemError", { reason = why }), localizedMessage = why }) })
end

--- Aborts and returns nil, "<what>: msg", code.
function Lease:fail(msg, code)
  self:abort(msg)
  return nil, ("%s: %s"):format(self.what, msg), code
end

--- A device URL with the `*` host (and scheme) of the connection.
function Lease:url(d)
  return (d.url:gsub("^https?://%*", self.vc.scheme .. "://" .. self.vc.server))
end

--- Options for one disk's transfer: the session cookie, the TLS settings,
--- and a tick reporting the lease's progress (which keeps it alive).
function Lease:transfer(opts)
  local t = self.vc:transfer_options({ separate = true })
  for k, v in pairs(opts) do t[k] = v end
  t.tick_interval = t.tick_interval or 2
  t.tick = function(bytes)
    local pct = self.total > 0 and math.min(99, math.floor((self.moved + bytes) * 100 / self.total)) or 50
    local _, err = self.vc:call("HttpNfcLeaseProgress", self.ref, { percent = pct })
    if err then log.warn("%s: HttpNfcLeaseProgress: %s", self.what, err) end
  end
  return t
end

--- Reports 100 % and completes the lease.
---@return true|nil, string?, string?
function Lease:complete()
  self.vc:call("HttpNfcLeaseProgress", self.ref, { percent = 100 })
  local _, err, code = self.vc:call("HttpNfcLeaseComplete", self.ref, {})
  self.done = true
  self.guard:cancel()
  if err then return nil, ("%s: HttpNfcLeaseComplete: %s"):format(self.what, err), code end
  return true
end

--- Exports the disk(s) of the VM `ref` (called `name` in messages) through
--- an HttpNfcLease; `path` gets the first disk, further disks `<path minus
--- .vmdk>-N.vmdk`. Returns {sha256=, size=, disks = {{path, sha256, size}...}}.
---@param vc table a capil.vsphere.vim25 session
---@param ref capil.vsphere.vim25.Ref
---@param name string
---@param path string
---@param opts? {lease_timeout?: number, timeout?: number, progress_interval?: number}
---@return table|nil result, string? err, string? code
function M.export(vc, ref, name, path, opts)
  opts = opts or {}
  local lref, err, code = vc:call("ExportVm", ref, {})
  if not lref then return nil, ("%s: ExportVm: %s"):format(name, err), code end
  local lease
  lease, err, code = M.open(vc, lref, name .. ": export", opts.lease_timeout)
  if not lease then return nil, err, code end
  local urls = {}
  for _, d in ipairs(vim25.list(lease.info.deviceUrl)) do
    if d.disk ~= false then urls[#urls + 1] = d end
  end
  if #urls == 0 then return lease:fail("the lease lists no disk", "ENFC") end
  for _, d in ipairs(urls) do lease.total = lease.total + (tonumber(d.fileSize) or 0) end
  if lease.total == 0 then lease.total = (tonumber(lease.info.totalDiskCapacityInKB) or 0) * 1024 end
  local result = { disks = {} }
  for i, d in ipairs(urls) do
    local out = i == 1 and path or path:gsub("%.vmdk$", "") .. ("-%d.vmdk"):format(i - 1)
    local progress <close> = log.progress({ label = "export " .. fs.basename(out), total = tonumber(d.fileSize) })
    local r, gerr, gcode = http.request(lease:transfer({ url = lease:url(d), out_file = out, progress = progress,
      timeout = opts.timeout or 7200, tick_interval = opts.progress_interval }))
    if not r then return lease:fail(("GET %s: %s"):format(http.redact_url(lease:url(d)), gerr), gcode) end
    lease.moved = lease.moved + r.size
    result.disks[i] = { path = out, sha256 = r.digest, size = r.size }
    log.info("%s: exported %s (%d bytes, sha256 %s)", name, out, r.size, r.digest)
  end
  local ok, cerr, ccode = lease:complete()
  if not ok then return nil, cerr, ccode end
  result.sha256, result.size = result.disks[1].sha256, result.disks[1].size
  return result
end

return M
