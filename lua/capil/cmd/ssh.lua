--- capil ssh — logs in to a test VM as capv with the test key (image-ssh.sh).
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local log = require("capil.sys.log")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local proc = require("capil.sys.proc")

-- Where the VM answers: {host, port, user?, key?, what}, from a kept test
-- VM's test/vm.json, or (vSphere, ESXi) from the named VM's guest IP.
local function locate(target, backend, cfg)
  local st = fs.stat(target)
  if st and st.type == "directory" then
    local dir = target:gsub("/+$", "")
    local state = dir .. "/test/vm.json"
    if not fs.exists(state) and fs.exists(dir .. "/vm.json") then state = dir .. "/vm.json" end
    local rec = fs.exists(state) and json.read(state)
    if type(rec) ~= "table" or type(rec.ssh) ~= "table" then
      return nil, ("ssh: %s has no running test VM: start one with 'capil test %s --keep'"):format(dir, dir)
    end
    -- a backend whose test VM is a local process (QEMU) records its pid
    local registry = require("capil.backend")
    local rb = registry.known(rec.backend) and registry.get(rec.backend)
    local process = rb and rb.traits.process
    if process and not (rec.pid and proc.alive(rec.pid)) then
      return nil, ("ssh: the test VM of %s (%s pid %s) is no longer running: start it again with "
        .. "'capil test %s --keep'"):format(dir, process, tostring(rec.pid), dir)
    end
    return { host = rec.ssh.host, port = rec.ssh.port, user = rec.user, key = rec.key,
      what = ("%s VM %s"):format(rec.backend or "?", rec.name or dir) }
  end
  local backends = require("capil.backend")
  local b = backends.known(backend) and backends.get(backend)
  if not (b and b.traits.remote) then
    return nil, ("ssh: %s: no such build directory (a VM name needs --backend %s)"):format(target,
      table.concat(backends.with("remote"), " or "))
  end
  local s = backends.live_settings(b, cfg)
  local vc, err = require("capil.vsphere.session").connect(s, { kind = backend })
  if not vc then return nil, err end
  local inv
  inv, err = require("capil.vsphere.inventory").resolve(vc, s)
  if not inv then return nil, err end
  local ref
  ref, err = require("capil.vsphere.testvm").find_vm(vc, inv, target)
  if not ref then return nil, err end
  local vm = require("capil.backends.vsphere").attach(vc, inv, s, ref, target)
  if vm:power() ~= "poweredOn" then
    return nil, ("ssh: %s VM %s is not powered on (start it, or run 'capil test %s --backend %s --keep')")
      :format(backend, target, target, backend)
  end
  local addr
  addr, err = vm:ssh_address(60)
  vc:logout()
  if not addr then return nil, err end
  return { host = addr.host, port = addr.port, what = ("%s VM %s"):format(backend, target) }
end

-- OpenSSH refuses a private key readable by others (a git checkout gives
-- 0644): a 0600 copy in the cache, named by its content.
local function private_copy(key)
  local st = fs.stat(key)
  if st and st.mode & 63 == 0 then return key end
  local text, err = fs.read_file(key, { max = 1024 * 1024, what = "SSH key" })
  if not text then cli.fail("ssh: " .. err, 1) end
  local dir = build_options.cache_dir() .. "/keys"
  local ok, merr = fs.mkdir(dir, 448)
  if not ok then cli.fail("ssh: " .. merr, 1) end
  local path = ("%s/%s-%s"):format(dir, require("capil.sys.hash").digest("sha256", text):sub(1, 16), fs.basename(key))
  if not fs.exists(path) then
    local wok, werr = fs.write(path, text, { mode = 384 })
    if not wok then cli.fail("ssh: " .. werr, 1) end
  end
  return path
end

return {
  summary = "log in to a test VM as capv with the test key, or run one command there",
  usage = "ssh BUILD_DIR|VM [--backend vsphere|esx] [--user U] [--key F] [-- COMMAND...]",
  help = [[
BUILD_DIR: the VM left running by 'capil test BUILD_DIR --keep' (its address
is in BUILD_DIR/test/vm.json: QEMU's forwarded port, or the vSphere guest IP).
VM (with --backend vsphere or esx): that VM's guest IP, from vSphere.
The user is capv and the key cloudinit/id_ed25519.capi (test_ssh_username,
test_ssh_private_key_file). The guest's host key is accepted and never
written to known_hosts (image-ssh.sh used UserKnownHostsFile=/dev/null).
With a COMMAND (after --), capil runs it over its own SSH client (libssh2)
and exits with its status: no ssh client needed. Without one, capil execs
the system's OpenSSH client for an interactive shell (a real terminal with
all of OpenSSH's behaviour), printing the command it runs; the key is used
from a 0600 copy in the cache when the checkout's file is group-readable.]],
  options = {
    { name = "backend", short = "b", arg = "NAME", help = "vsphere or esx for a VM name" },
    { name = "user", short = "u", arg = "USER", help = "log in as USER (default capv)" },
    { name = "key", short = "i", arg = "FILE", help = "private key (default cloudinit/id_ed25519.capi)" },
    { name = "var-file", arg = "FILE", multi = true, help = "JSON variables (vsphere.json)" },
    { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
    { name = "insecure", help = "vSphere/ESXi: do not verify the server's TLS certificate" },
  },
  run = function(opts, args)
    local target = table.remove(args, 1)
    if not target then cli.fail("ssh: name a build directory or a VM", 2) end
    local backend = build_options.resolve_backend(opts.backend)
    local cfg, err = require("capil.build.config").from_vars({ backend = backend, var_files = opts["var-file"],
      vars = build_options.vars(opts) })
    if not cfg then cli.fail("ssh: " .. err, 2) end
    local where
    where, err = locate(target, backend, cfg)
    if not where then cli.fail(err, 1) end
    local user = opts.user or where.user or cfg:get("test_ssh_username")
    local key = opts.key or where.key
    if not key then
      local kerr
      local cdir = require("capil.build.recipepath").cloudinit_dir(cfg:get("cloudinit_dir"))
      key, kerr = require("capil.test.cloudinit").key(cdir, cfg:get("test_ssh_private_key_file"))
      if not key then cli.fail(kerr, 1) end
    end
    if not fs.exists(key) then cli.fail(("ssh: %s: the private key is missing"):format(key), 1) end
    if #args > 0 then
      local s, serr, code = require("capil.sys.ssh").connect({ host = where.host, port = where.port, user = user,
        key = key, timeout = 30, host_key = "accept-new" })
      if not s then
        local hint = code == "SSH_AUTH" and (" (is %s the key cloud-init authorized for %s?)"):format(key, user) or ""
        cli.fail(("ssh: %s (%s@%s:%d): %s%s"):format(where.what, user, where.host, where.port, serr, hint), 1)
      end
      -- the words joined as OpenSSH joins them: the remote shell parses the line
      local r, xerr = s:exec(table.concat(args, " "), { on_output = function(stream, chunk)
        local f = stream == "stderr" and io.stderr or io.stdout
        f:write(chunk)
        f:flush()
      end, timeout = 24 * 3600 })
      s:close()
      if not r then cli.fail(("ssh: %s: %s"):format(where.what, xerr), 1) end
      return r.code
    end
    local argv = { "ssh", "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
      "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-i", private_copy(key), "-p", tostring(where.port),
      user .. "@" .. where.host }
    io.stderr:write("capil ssh: " .. table.concat(argv, " ") .. "\n")
    log.debug("ssh: exec %s", argv[1])
    local _, xerr = proc.exec(argv)
    cli.fail(("ssh: %s (install openssh-client, or give a command after --)"):format(xerr), 1)
  end,
}
