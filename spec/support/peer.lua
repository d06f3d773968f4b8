-- spec/support/peer.lua — starts a real server for a test (sshd, nginx, ...)
-- on 127.0.0.1, waits until its port accepts connections, and stops it by
-- PID. Every peer the specs use goes through here.
local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")
local fs = require("capil.sys.fs")

local M = {}

--- A fresh scratch directory for a peer's config, keys and logs (removed at exit).
function M.dir(prefix)
  return assert(fs.tempdir({ prefix = "capil-spec-" .. (prefix or "peer") }))
end

M.free_port = function() return assert(runtime.free_port()) end

--- Starts argv; returns a handle {pid, port, log, stop=fn} once `port`
--- accepts TCP connections on 127.0.0.1, or raises with the peer's log.
--- `dir`: the peer's scratch directory, removed by stop() (busted ends with
--- os.exit, so capil.sys.cleanup would not run).
---@param opts {name: string, argv: string[], port: integer, log?: string, cwd?: string, env_add?: table, timeout?: number, dir?: string}
function M.start(opts)
  local logpath = opts.log or (M.dir(opts.name) .. "/" .. opts.name .. ".log")
  local p = assert(proc.spawn({
    argv = opts.argv, cwd = opts.cwd, env_add = opts.env_add,
    stdin = "null", stdout = logpath, stderr = "stdout",
  }))
  local deadline = runtime.now() + (opts.timeout or 10)
  while not runtime.port_open("127.0.0.1", opts.port, 0.2) do
    if not p:running() or runtime.now() > deadline then
      p:close(0.5)
      local f = io.open(logpath)
      local out = f and f:read("a") or ""
      if f then f:close() end
      error(("%s did not listen on 127.0.0.1:%d:\n%s"):format(opts.name, opts.port, out), 2)
    end
    runtime.sleep(0.02)
  end
  local handle = { pid = p.pid, port = opts.port, log = logpath, process = p }
  function handle.stop()
    p:close(3) -- SIGTERM, SIGKILL after 3 s, reaped
    if opts.dir then fs.remove(opts.dir, { recursive = true }) end
  end
  return handle
end

--- Stops a process the spec did not start itself (a VM `capil test --keep`
--- left running, by the PID in its vm.json): SIGTERM, SIGKILL after 5 s.
---@param pid? integer
function M.stop_pid(pid)
  if not (pid and proc.alive(pid)) then return end
  proc.kill(pid)
  for _ = 1, 50 do if not proc.alive(pid) then return end runtime.sleep(0.1) end
  proc.kill(pid, "KILL")
end

--- A certificate fingerprint that differs from `fp` for sure: its first hex
--- digit changed ("0" becomes "1", anything else "0"), colons kept.
---@param fp string
---@return string
function M.wrong_fingerprint(fp)
  local i = assert(fp:find("%x"), "not a fingerprint: " .. fp)
  return fp:sub(1, i - 1) .. (fp:sub(i, i) == "0" and "1" or "0") .. fp:sub(i + 1)
end

return M
