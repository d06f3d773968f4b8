-- spec/support/sshd.lua — a real OpenSSH server (/usr/sbin/sshd -D -e) for
-- the ssh specs: a throwaway config, an ed25519 host key and authorized keys
-- in a temp dir, listening on 127.0.0.1:<free port>, stopped by PID.
-- Logins are as the current user (root here, with PermitRootLogin
-- prohibit-password), with keys made by ssh-keygen. stop() also removes the
-- temp dir: busted ends with os.exit, so capil.sys.cleanup would not run.
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")

local M = {}

local function run(argv)
  local r = assert(proc.run({ argv = argv }))
  if r.code ~= 0 then
    error(("%s failed (%d): %s%s"):format(argv[1], r.code, r.stdout, r.stderr), 2)
  end
  return r.stdout
end

--- The current user's name (the account the specs log in as).
function M.user()
  return (run({ "id", "-un" }):gsub("%s+$", ""))
end

--- Makes a key pair `dir/name` (and `.pub`) with ssh-keygen; returns the
--- private key path and its "SHA256:..." fingerprint as ssh-keygen prints it.
---@param dir string
---@param name string
---@param type? string "ed25519" (default), "rsa", "ecdsa"
---@param passphrase? string
function M.keygen(dir, name, type, passphrase)
  local path = dir .. "/" .. name
  local argv = { "ssh-keygen", "-q", "-t", type or "ed25519", "-N", passphrase or "", "-C", name, "-f", path }
  if type == "rsa" then
    argv[#argv + 1] = "-b"
    argv[#argv + 1] = "2048"
  end
  run(argv)
  return path, M.fingerprint(path .. ".pub")
end

--- "SHA256:..." of a public key file, from `ssh-keygen -lf`.
function M.fingerprint(pubpath)
  return (run({ "ssh-keygen", "-lf", pubpath }):match("(SHA256:%S+)"))
end

--- Starts sshd. Options: `authorized` (list of private key paths whose .pub
--- may log in; default: a fresh "client" key), `host_key` (a private key path;
--- default: a fresh one), `config` (extra sshd_config lines), `port`.
--- Returns {port, dir, user, key, host_key, fingerprint, log, stop()}.
function M.start(opts)
  opts = opts or {}
  local dir = peer.dir("sshd")
  assert(fs.mkdir("/run/sshd"))
  local host_key = opts.host_key or M.keygen(dir, "host_ed25519")
  local fingerprint = M.fingerprint(host_key .. ".pub")
  local key = nil
  local authorized = opts.authorized
  if not authorized then
    key = M.keygen(dir, "client_ed25519")
    authorized = { key }
  end
  local lines = {}
  for _, k in ipairs(authorized) do lines[#lines + 1] = assert(fs.read(k .. ".pub")) end
  assert(fs.write(dir .. "/authorized_keys", table.concat(lines), { mode = 420 }))
  local port = opts.port or peer.free_port()
  local config = {
    "Port " .. port,
    "ListenAddress 127.0.0.1",
    "HostKey " .. host_key,
    "PidFile " .. dir .. "/sshd.pid",
    "AuthorizedKeysFile " .. dir .. "/authorized_keys",
    "PermitRootLogin prohibit-password",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    -- the keys live under world-writable /tmp
    "StrictModes no",
    "UsePAM no",
    "Subsystem sftp internal-sftp",
  }
  -- extra lines first: for most keywords sshd keeps the first value it reads
  for i, line in ipairs(opts.config or {}) do table.insert(config, i, line) end
  local conf = dir .. "/sshd_config"
  assert(fs.write(conf, table.concat(config, "\n") .. "\n"))
  run({ "/usr/sbin/sshd", "-t", "-f", conf })
  local handle = peer.start({
    name = "sshd", port = port, log = dir .. "/sshd.log", dir = dir,
    argv = { "/usr/sbin/sshd", "-D", "-e", "-f", conf },
  })
  handle.dir = dir
  handle.user = M.user()
  handle.key = key
  handle.host_key = host_key
  handle.fingerprint = fingerprint
  return handle
end

--- The server's log so far (to show why a login failed).
function M.log(server)
  return fs.read(server.log) or ""
end

return M
