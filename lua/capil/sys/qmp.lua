--- capil.sys.qmp — a client for QEMU's machine protocol (JSON lines over the
--- unix socket given with `-qmp unix:PATH,server=on,wait=off`): the
--- greeting, capabilities negotiation, commands with their replies, and the
--- asynchronous events (POWERDOWN, SHUTDOWN, ...) kept for the caller.
local net = require("capil.core.net")
local json = require("capil.sys.json")
local runtime = require("capil.core.runtime")

local M = {}

local Client = {}
Client.__index = Client

--- Connects, waiting up to `timeout` seconds for QEMU to create the socket.
---@param opts {path: string, timeout?: number}
---@return table|nil client, string? err, string? code
function M.connect(opts)
  local deadline = runtime.now() + (opts.timeout or 10)
  local sock, err, code
  repeat
    sock, err, code = net.connect({ unix = opts.path, timeout = 1 })
    if sock then break end
    if code == "EINTR" then return nil, err, code end
    runtime.sleep(0.05)
  until runtime.now() > deadline
  if not sock then return nil, ("qmp: %s: %s"):format(opts.path, err), code end
  local c = setmetatable({ sock = sock, events = {}, path = opts.path }, Client)
  local line, rerr, rcode = sock:receive("line", { timeout = opts.timeout or 10 })
  if not line then sock:close() return nil, "qmp: no greeting: " .. rerr, rcode end
  local greeting = json.decode(line)
  if type(greeting) ~= "table" or not greeting.QMP then
    sock:close()
    return nil, "qmp: " .. opts.path .. ": not a QMP greeting", "EPROTO"
  end
  c.version = greeting.QMP.version and greeting.QMP.version.qemu
  local ok, cerr, ccode = c:execute("qmp_capabilities")
  if not ok then sock:close() return nil, cerr, ccode end
  return c
end

--- Runs a command; returns its "return" value or nil, error, code
--- ("QMP_ERROR" with QEMU's class and description, or a socket error).
---@param command string
---@param args? table
---@param timeout? number
function Client:execute(command, args, timeout)
  local msg = { execute = command }
  if args then msg.arguments = args end
  local ok, err, code = self.sock:send(json.encode(msg) .. "\n")
  if not ok then return nil, "qmp: " .. command .. ": " .. err, code end
  while true do
    local line, rerr, rcode = self.sock:receive("line", { timeout = timeout or 30 })
    if not line then return nil, ("qmp: %s: %s"):format(command, rerr), rcode end
    local reply = json.decode(line)
    if type(reply) ~= "table" then return nil, "qmp: " .. command .. ": malformed reply", "EPROTO" end
    if reply.event then
      self.events[#self.events + 1] = reply
    elseif reply.error then
      return nil, ("qmp: %s: %s: %s"):format(command, reply.error.class, reply.error.desc), "QMP_ERROR"
    elseif reply["return"] ~= nil then
      return reply["return"]
    end
  end
end

--- Whether an event named `name` has been seen (and removes it).
function Client:take_event(name)
  for i, e in ipairs(self.events) do
    if e.event == name then table.remove(self.events, i) return e end
  end
end

--- Presses a chord of QEMU qcodes (capil.build.bootcmd.to_qmp output).
---@param keys string[]
---@param hold_ms? integer
function Client:send_keys(keys, hold_ms)
  local list = {}
  for i, k in ipairs(keys) do list[i] = { type = "qcode", data = k } end
  return self:execute("send-key", { keys = list, ["hold-time"] = hold_ms or 50 })
end

function Client:close()
  if self.sock then self.sock:close() self.sock = nil end
end

return M
