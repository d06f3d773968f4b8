--- capil.sys.ssh — SSH sessions for recipes and backends, over capil.core.ssh
--- (libssh2 1.10). Adds defaults (port 22, host_key "accept-new", the user's
--- agent or default key), connect retries for servers still booting, an
--- environment fallback for servers that refuse `env` requests, line-wise
--- output, progress bars and logging. Passwords, passphrases and key_data
--- are registered as secrets, so they never show in logs or errors.
---
--- Errors are `nil, msg, code`: ECONNREFUSED, ETIMEDOUT, ENOTFOUND, ECONNRESET,
--- SSH_AUTH, SSH_HOSTKEY, SSH_PROTOCOL, SSH_ENV, SSH_SFTP, EINTR, and errno
--- codes (ENOENT, EACCES, ENOSPC...) for files on either side.
---
--- RSA keys do not work against OpenSSH 8.8+: libssh2 1.10 signs only with
--- ssh-rsa (SHA-1). Use ed25519 or ECDSA keys.
local core = require("capil.core.ssh")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")
local text = require("capil.util.text")
local optcheck = require("capil.util.opts").check

local M = {}

local CONNECT_OPTS = {
  host = true, port = true, user = true, key = true, key_data = true, password = true,
  agent = true, passphrase = true, timeout = true, host_key = true,
  retries = true, retry_delay = true,
}
local EXEC_OPTS = { stdin = true, env = true, timeout = true, on_output = true, on_line = true, pty = true }
local TRANSFER_OPTS = { mode = true, progress = true, timeout = true }

-- Failures worth another try while a machine boots; never auth or host key.
local TRANSIENT = { ECONNREFUSED = true, ETIMEDOUT = true, ECONNRESET = true, SSH_PROTOCOL = true }

-- A regular file is there (opening a FIFO to find out would block).
local function exists(path)
  local st = require("capil.sys.fs").stat(path)
  return st ~= nil and st.type == "file"
end

---@class capil.sys.ssh.ConnectOpts
---@field host string
---@field port? integer default 22
---@field user? string default $USER
---@field key? string path of a private key file (ed25519 or ECDSA)
---@field key_data? string private key text (PEM or OpenSSH)
---@field password? string
---@field agent? boolean use the keys of the running ssh-agent
---@field passphrase? string
---@field timeout? number seconds per attempt, default 30
---@field host_key? string "accept-new", "SHA256:...", or a known_hosts path
---@field retries? integer
---@field retry_delay? number

---@class capil.sys.ssh.ExecOpts
---@field stdin? string
---@field env? table<string, string>
---@field timeout? number
---@field on_output? fun(stream: string, chunk: string)
---@field on_line? fun(stream: string, line: string)
---@field pty? boolean

---@class capil.sys.ssh.ExecResult
---@field code integer
---@field signal? string
---@field stdout string
---@field stderr string

---@class capil.sys.ssh.Session
---@field host string
---@field port integer
---@field user string
---@field host_key_fingerprint string "SHA256:..." as ssh-keygen -l prints it
local Session = {}
Session.__index = Session

function Session:__tostring()
  return tostring(self._s)
end

--- Closes the connection; idempotent (also `<close>` and garbage collection).
function Session:close()
  self._s:close()
end
Session.__close = Session.close

--- Whether the session was closed.
function Session:closed()
  return self._s.closed
end

-- POSIX shell words: `export name=value;` with the value quoted. nil and
-- what cannot be exported when a name is not a shell name or a value holds
-- NUL (no shell word can).
local function export_prefix(env)
  local names = {}
  for k in pairs(env) do
    if not tostring(k):match("^[%a_][%w_]*$") then return nil, ("env name '%s'"):format(tostring(k)) end
    names[#names + 1] = k
  end
  table.sort(names)
  local parts = {}
  for _, k in ipairs(names) do
    local v = tostring(env[k])
    if v:find("%z") then return nil, ("the value of env '%s' (it holds NUL)"):format(k) end
    parts[#parts + 1] = ("export %s=%s;"):format(k, text.shell_quote(v))
  end
  return table.concat(parts, " ") .. " "
end

--- Runs a command line through the remote user's shell.
--- `stdin` is fed to the command; `env` is sent as `env` requests, and when
--- sshd refuses them (names outside its AcceptEnv) the variables are exported
--- in front of the command instead (this assumes a POSIX login shell and makes
--- the values visible in the remote process list). `on_output(stream, chunk)`
--- gets output as it arrives, `on_line(stream, line)` complete lines; with
--- either, stdout/stderr in the result are empty. `timeout` covers the whole
--- command: on ETIMEDOUT the session stays usable but the remote command is
--- left running (libssh2 1.10 cannot signal it; wrap it in `timeout N`).
--- A command killed by a signal gives `signal = "TERM"` and `code = 128 + n`.
---@param cmd string
---@param opts? capil.sys.ssh.ExecOpts
---@return capil.sys.ssh.ExecResult|nil
---@return string? err
---@return string? code
function Session:exec(cmd, opts)
  opts = optcheck(opts, EXEC_OPTS, "ssh.exec")
  if type(cmd) ~= "string" then error("ssh.exec: the command must be a string", 2) end
  local copts = { stdin = opts.stdin, env = opts.env, timeout = opts.timeout, pty = opts.pty,
                  on_output = opts.on_output }
  local pending
  if opts.on_line then
    pending = { stdout = "", stderr = "" }
    copts.on_output = function(stream, chunk)
      if opts.on_output then opts.on_output(stream, chunk) end
      local buf = pending[stream] .. chunk
      for line in buf:gmatch("([^\n]*)\n") do opts.on_line(stream, line) end
      pending[stream] = buf:match("[^\n]*$")
    end
  end
  log.debug("ssh: %s@%s:%d: %s", self.user, self.host, self.port, cmd)
  local r, err, code = self._s:exec(cmd, copts)
  if not r and code == "SSH_ENV" then
    local prefix, bad = export_prefix(opts.env)
    if not prefix then
      return nil, ("ssh.exec: %s: %s cannot be exported"):format(cmd, bad), "SSH_ENV"
    end
    log.debug("ssh: the server refused env requests; exporting the variables in the command")
    copts.env = nil
    r, err, code = self._s:exec(prefix .. cmd, copts)
  end
  if pending then
    for _, stream in ipairs({ "stdout", "stderr" }) do
      if pending[stream] ~= "" then opts.on_line(stream, pending[stream]) end
    end
  end
  if r then log.debug("ssh: exit %d%s", r.code, r.signal and (" (SIG" .. r.signal .. ")") or "") end
  return r, err, code
end

-- progress = true: a bar labelled with the file name, closed afterwards.
local function transfer(self, method, label, from, to, opts)
  local copts = { mode = opts.mode, timeout = opts.timeout or 300, progress = opts.progress }
  local own
  if opts.progress == true then
    own = log.progress({ label = label })
    copts.progress = own
  end
  log.debug("ssh: %s %s -> %s", method, from, to)
  local r, err, code = self._s[method](self._s, from, to, copts)
  if own then own:close() end
  if r then log.debug("ssh: %s %d bytes, sha256 %s", method, r.size, r.sha256) end
  return r, err, code
end

--- Uploads a file over SFTP, in 256 KiB pipelined writes, to a temp name
--- beside `remote` that is renamed over it when complete (an existing file is
--- removed just before: SFTPv3 cannot rename over it). `timeout` is seconds
--- without progress (default 300); `progress` a `log.progress` handle or `true`.
---@param local_path string
---@param remote_path string
---@param opts? {mode?: integer, progress?: any, timeout?: number}
---@return {size: integer, sha256: string}|nil
---@return string? err
---@return string? code
function Session:put(local_path, remote_path, opts)
  opts = optcheck(opts, TRANSFER_OPTS, "ssh.put")
  return transfer(self, "put", "upload " .. local_path:match("[^/]*$"), local_path, remote_path, opts)
end

--- Downloads a file over SFTP into a temp file beside `local_path`, renamed
--- when complete: the final name never holds a partial file.
---@param remote_path string
---@param local_path string
---@param opts? {progress?: any, timeout?: number}
---@return {size: integer, sha256: string}|nil
---@return string? err
---@return string? code
function Session:get(remote_path, local_path, opts)
  opts = optcheck(opts, TRANSFER_OPTS, "ssh.get")
  if opts.mode then error("ssh.get: unknown option 'mode'", 2) end
  return transfer(self, "get", "download " .. remote_path:match("[^/]*$"), remote_path, local_path, opts)
end

--- Streams a remote file into a pipe on a thread of the engine's, for a
--- consumer reading `stream:fd()` in order on this thread (capil's VMDK
--- writer: `capil.core.vmdkw.write({fd =, size =, name =}, ...)`): the
--- download and the work on it in one pass, no local file. `stream.size`
--- is the file's size when opened; `stream:close()` stops the download
--- (when the reader stopped early) and returns `{size =}` or nil, the
--- download's failure and its code (ECONNRESET, ETIMEDOUT after `timeout`
--- seconds without progress (default 300), EINTR, CHANGED for a file that
--- grew or shrank meanwhile). Until then the session's other methods raise.
---@param remote_path string
---@param opts? {timeout?: number}
---@return table|nil stream
---@return string? err
---@return string? code
function Session:stream(remote_path, opts)
  opts = optcheck(opts, { timeout = true }, "ssh.stream")
  log.debug("ssh: stream %s", remote_path)
  return self._s:stream(remote_path, { timeout = opts.timeout or 300 })
end

-- The key to use when none is given: the agent, else ~/.ssh/id_ed25519 or id_ecdsa.
local function default_auth(copts)
  if os.getenv("SSH_AUTH_SOCK") then
    copts.agent = true
    return true
  end
  local home = os.getenv("HOME") or ""
  for _, name in ipairs({ "id_ed25519", "id_ecdsa" }) do
    if exists(home .. "/.ssh/" .. name) then
      copts.key = home .. "/.ssh/" .. name
      return true
    end
  end
  return false
end

--- Opens a session. `host_key` is "accept-new" (default: any key, the
--- fingerprint is logged), a "SHA256:..." fingerprint, or a known_hosts path
--- (OpenSSH accept-new: a new host is appended, a changed key refused).
--- Without key/key_data/password/agent: the ssh-agent if SSH_AUTH_SOCK is
--- set, else ~/.ssh/id_ed25519 or ~/.ssh/id_ecdsa. `timeout` (default 30 s)
--- bounds each attempt; `retries` more attempts (default 0) are made after
--- `retry_delay` seconds (default 2) on ECONNREFUSED, ETIMEDOUT, ECONNRESET
--- and SSH_PROTOCOL, never on SSH_AUTH or SSH_HOSTKEY.
---@param opts capil.sys.ssh.ConnectOpts
---@return capil.sys.ssh.Session|nil
---@return string? err
---@return string? code
function M.connect(opts)
  optcheck(opts, CONNECT_OPTS, "ssh.connect")
  if type(opts) ~= "table" or type(opts.host) ~= "string" then
    error("ssh.connect: option 'host' is required", 2)
  end
  for _, k in ipairs({ "password", "passphrase", "key_data" }) do
    if opts[k] ~= nil then log.secret(opts[k]) end
  end
  local copts = {}
  for k in pairs(CONNECT_OPTS) do copts[k] = opts[k] end
  copts.retries, copts.retry_delay = nil, nil
  copts.port = opts.port or 22
  copts.user = opts.user or os.getenv("USER") or "root"
  copts.timeout = opts.timeout or 30
  copts.host_key = opts.host_key or "accept-new"
  if not (opts.key or opts.key_data or opts.password or opts.agent) and not default_auth(copts) then
    error("ssh.connect: no key, password or agent given, and no ssh-agent or ~/.ssh/id_ed25519 found", 2)
  end
  local where = ("%s@%s:%d"):format(copts.user, copts.host, copts.port)
  local retries = opts.retries or 0
  for attempt = 0, retries do
    log.debug("ssh: connecting to %s%s", where, attempt > 0 and (" (retry %d/%d)"):format(attempt, retries) or "")
    local s, err, code = core.connect(copts)
    if s then
      log.debug("ssh: connected to %s, host key %s", where, s.host_key_fingerprint)
      return setmetatable({ _s = s, host = s.host, port = s.port, user = s.user,
                            host_key_fingerprint = s.host_key_fingerprint }, Session)
    end
    if attempt == retries or not TRANSIENT[code] then return nil, err, code end
    log.debug("ssh: %s; retrying in %g s", err, opts.retry_delay or 2)
    local ok, serr, scode = runtime.sleep(opts.retry_delay or 2)
    if not ok then return nil, serr, scode end
  end
end

--- Waits until host:port answers with an SSH banner (no login): for machines
--- that are booting. Returns true and the banner, or `nil, msg, "ETIMEDOUT"`.
---@param opts {host: string, port?: integer, timeout?: number, interval?: number}
---@return true|nil
---@return string banner_or_err
---@return string? code
function M.wait(opts)
  optcheck(opts, { host = true, port = true, timeout = true, interval = true }, "ssh.wait")
  local copts = { host = opts.host, port = opts.port or 22, timeout = opts.timeout or 300,
                  interval = opts.interval or 1 }
  log.debug("ssh: waiting for an SSH banner from %s:%d (up to %g s)", copts.host, copts.port, copts.timeout)
  local ok, banner, code = core.wait(copts)
  if ok then log.debug("ssh: %s:%d answers: %s", copts.host, copts.port, banner) end
  return ok, banner, code
end

return M
