--- capil.sys.vnc — types boot commands into a VM's console over RFB (VNC), the
--- way a person at the keyboard would: for hypervisors whose only keyboard
--- is a VNC server (Workstation, QEMU's `-vnc`). The protocol is in C
--- (capil.core.vnc); this layer waits for the port to open, keeps the
--- password out of every log line and turns capil.build.bootcmd events into key
--- presses with pauses.
---
--- Errors are `nil, msg, code`: ECONNREFUSED (nothing listened before the
--- timeout), ETIMEDOUT, ECONNRESET, EINTR, VNC_PROTOCOL (not an RFB server, or
--- it refused the connection), VNC_NOAUTH (no security type in common: the
--- message lists what the server offered), VNC_AUTH (password missing or
--- rejected). Messages name host:port.
local core = require("capil.core.vnc")
local runtime = require("capil.core.runtime")
local bootcmd = require("capil.build.bootcmd")
local log = require("capil.sys.log")
local optcheck = require("capil.util.opts").check

local M = {}

---@class capil.sys.vnc.Session
---@field width integer framebuffer width from ServerInit
---@field height integer framebuffer height
---@field name string the desktop name (QEMU: "QEMU" or the -name)
---@field version string the RFB version agreed: "3.8", "3.7" or "3.3"
---@field address string "host:port"
local Session = {}
Session.__index = Session

---@class capil.sys.vnc.Options
---@field host string
---@field port integer
---@field password? string VNC Authentication (the first 8 bytes count); registered as a secret
---@field timeout? number seconds for the port to open plus the handshake (default 10)
---@field shared? boolean leave other viewers connected (default true)

local OPTIONS = { host = true, port = true, password = true, timeout = true, shared = true }

--- Connects and does the RFB handshake. A refused connection is retried
--- until `timeout`: the VM may not have opened its display yet.
---@param opts capil.sys.vnc.Options
---@return capil.sys.vnc.Session|nil session, string? err, string? code
function M.connect(opts)
  if type(opts) ~= "table" then error("vnc.connect: options table expected", 2) end
  optcheck(opts, OPTIONS, "vnc.connect")
  log.secret(opts.password)
  local timeout = opts.timeout or 10
  local deadline = runtime.now() + timeout
  local s, err, code
  while true do
    s, err, code = core.connect({ host = opts.host, port = opts.port, password = opts.password,
      shared = opts.shared, timeout = math.max(deadline - runtime.now(), 0.2) })
    if s or code ~= "ECONNREFUSED" or runtime.now() >= deadline then break end
    local ok, serr, scode = runtime.sleep(0.1)
    if not ok then return nil, serr, scode end
  end
  if not s then return nil, err, code end
  log.debug("vnc: connected to %s (RFB %s, desktop %q, %dx%d)", s.address, s.version, s.name, s.width, s.height)
  return setmetatable({ core = s, width = s.width, height = s.height, name = s.name, version = s.version,
    address = s.address }, Session)
end

--- Presses (down = true) or releases one key, by X11 keysym.
---@param keysym integer
---@param down boolean
---@return true|nil ok, string? err, string? code
function Session:key(keysym, down)
  return self.core:key(keysym, down)
end

--- Types capil.build.bootcmd.parse() events: each key pressed and released (Shift
--- around shifted characters), `interval` seconds (default 0) after each key,
--- the events' waits slept. Logs only counts, never the text.
---@param events table[] from capil.build.bootcmd.parse
---@param interval? number
---@return true|nil ok, string? err, string? code
function Session:type(events, interval)
  local s = bootcmd.summary(events)
  log.debug("vnc: typing %d keys (%d waits, %g s) into %s", s.keys, s.waits, s.wait_seconds, self.address)
  local list = bootcmd.to_rfb(events)
  for i, e in ipairs(list) do
    if e.wait then
      local ok, err, code = runtime.sleep(e.wait)
      if not ok then return nil, err, code end
    else
      local ok, err, code = self.core:key(e.keysym, e.down)
      if not ok then return nil, err, code end
      -- the pause comes once a key (with its Shift) is fully released
      local nxt = list[i + 1]
      if interval and interval > 0 and not e.down and nxt and not (nxt.keysym and not nxt.down) then
        local sok, serr, scode = runtime.sleep(interval)
        if not sok then return nil, serr, scode end
      end
    end
  end
  return true
end

--- Closes the connection (again is a no-op).
function Session:close()
  if self.core then self.core:close() end
end

Session.__close = Session.close

return M
