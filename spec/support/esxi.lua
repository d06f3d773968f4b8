-- spec/support/esxi.lua — a STAND-IN for an ESXi host's SSH side (no ESXi
-- runs here): a real OpenSSH server whose shell has recording stand-ins for
-- vim-cmd, vmkfstools and esxcli (spec/support/esxi/*). sshd runs chrooted
-- into an overlay of / inside a private mount namespace: the overlay's upper
-- layer is a temp dir (root's password, the stand-ins in /usr/local/bin and
-- their state in /var/lib/esxi-standin land there, never in this host's
-- files), and /vmfs/volumes is a tmpfs that vanishes with the namespace.
-- Logins: root with `password` (PasswordAuthentication, as on ESXi) or the
-- private key `key`.
-- Returns {port, dir, fingerprint, key, password, datastore, log, argv(), exec(cmd),
-- reset(), fail(verb, on), stop()}; stop() kills sshd by PID and removes the
-- temp dir.
local peer = require("support.peer")
local sshd = require("support.sshd")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")

local M = {}

local HERE = "spec/support/esxi"

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Starts the stand-in host; `password` is root's password there,
--- `datastore` the volume made under /vmfs/volumes (default datastore1).
---@param opts {password: string, datastore?: string}
function M.start(opts)
  local dir = peer.dir("esxi")
  local upper, work, root = dir .. "/upper", dir .. "/work", dir .. "/root"
  for _, d in ipairs({ upper .. "/etc", upper .. "/usr/local/bin", upper .. "/var/lib/esxi-standin", work, root }) do
    assert(fs.mkdir(d))
  end
  -- root's password, in the overlay's /etc/shadow only
  local r = assert(proc.run({ argv = { "openssl", "passwd", "-6", "-stdin" }, stdin = opts.password .. "\n" }))
  assert(r.code == 0, r.stderr)
  local hash = r.stdout:gsub("%s+$", "")
  local shadow = {}
  for line in assert(fs.read("/etc/shadow")):gmatch("[^\n]+") do
    if line:match("^root:") then line = line:gsub("^root:[^:]*:", "root:" .. hash:gsub("%%", "%%%%") .. ":") end
    shadow[#shadow + 1] = line
  end
  assert(fs.write(upper .. "/etc/shadow", table.concat(shadow, "\n") .. "\n", { mode = 416 }))
  for _, tool in ipairs({ "vim-cmd", "vmkfstools", "esxcli" }) do
    assert(fs.write(upper .. "/usr/local/bin/" .. tool, assert(fs.read(HERE .. "/" .. tool)), { mode = 493 }))
  end
  local host_key, fingerprint = sshd.keygen(dir, "host_ed25519")
  -- root may also log in with this key (remote_private_key_file)
  local client_key = sshd.keygen(dir, "client_ed25519")
  assert(fs.write(dir .. "/authorized_keys", assert(fs.read(client_key .. ".pub")), { mode = 420 }))
  local port = peer.free_port()
  assert(fs.write(dir .. "/sshd_config", table.concat({
    "Port " .. port, "ListenAddress 127.0.0.1", "HostKey " .. host_key, "PidFile /run/esxi-standin-sshd.pid",
    "PermitRootLogin yes", "PasswordAuthentication yes", "KbdInteractiveAuthentication no",
    "AuthorizedKeysFile " .. dir .. "/authorized_keys",
    "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp",
  }, "\n") .. "\n"))
  local datastore = opts.datastore or "datastore1"
  local script = table.concat({
    "mount -t overlay esxi-standin -o lowerdir=/,upperdir=$U,workdir=$W $R",
    "mount --rbind /dev $R/dev", "mount --rbind /proc $R/proc",
    "mkdir -p $R/vmfs/volumes $R/run/sshd", "mount -t tmpfs -o size=256m vmfs $R/vmfs/volumes",
    "mkdir $R/vmfs/volumes/" .. datastore,
    "exec chroot $R /usr/sbin/sshd -D -e -f $D/sshd_config",
  }, " && ")
  script = ("U=%s W=%s R=%s D=%s; %s"):format(sh_quote(upper), sh_quote(work), sh_quote(root), sh_quote(dir), script)
  local handle = peer.start({ name = "esxi-sshd", port = port, log = dir .. "/sshd.log", dir = dir,
    argv = { "unshare", "--mount", "--propagation", "private", "sh", "-c", script } })
  handle.dir = dir
  handle.fingerprint = fingerprint
  handle.key = client_key
  handle.password = opts.password
  handle.datastore = datastore
  local state = "/var/lib/esxi-standin"
  --- The commands the stand-ins ran so far, one string each.
  function handle.argv()
    local out = {}
    for line in handle.exec("cat " .. state .. "/argv.log 2>/dev/null; true"):gmatch("[^\n]+") do
      out[#out + 1] = line
    end
    return out
  end
  --- Runs a command line on the stand-in host (as root): changes to its
  --- files go through the overlay, never into the upper layer behind its back.
  function handle.exec(cmd)
    local sess = assert(require("capil.sys.ssh").connect({ host = "127.0.0.1", port = port, user = "root",
      password = opts.password, host_key = fingerprint, timeout = 10 }))
    -- bounded: a stuck channel fails the spec with the command, never hangs the suite
    local res = assert(sess:exec(cmd, { timeout = 120 }))
    sess:close()
    assert(res.code == 0, cmd .. ": " .. res.stderr)
    return res.stdout
  end
  --- Forgets the recorded commands.
  function handle.reset() handle.exec("rm -f /var/lib/esxi-standin/argv.log") end
  --- Makes vim-cmd's `verb` (registervm, power.on, ...) fail, or work again.
  function handle.fail(verb, on)
    handle.exec((on == false and "rm -f %s" or "touch %s"):format("/var/lib/esxi-standin/fail-" .. verb))
  end
  return handle
end

return M
