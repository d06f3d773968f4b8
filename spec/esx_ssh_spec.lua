-- The esx backend over SSH (free-licence ESXi): against a real sshd whose
-- vim-cmd, vmkfstools and esxcli are recording stand-ins
-- (spec/support/esxi.lua; /vmfs/volumes is a tmpfs in a private mount
-- namespace). A build's upload/create/start/IP/stop/export/cleanup must run
-- the expected commands, the ISO upload is skipped the second time, the
-- password shows in no command or log, and a failing command names the host.
local esxi = require("support.esxi")
local peer = require("support.peer")
local sshd = require("support.sshd")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local log = require("capil.sys.log")
local proc = require("capil.sys.proc")
local bootcmd = require("capil.build.bootcmd")
local config = require("capil.build.config")
local backend = require("capil.backend")
local esx = require("capil.backends.esx")
local esx_ssh = require("capil.backends.esx.ssh")

local PASSWORD = "Esx-r00t'pw $x"
local VM = "esx-ssh-kube-v1.16.14"
local DIR = "/vmfs/volumes/datastore1/" .. VM

describe("esx over SSH #esx #ssh", function()
  local host, tmp, iso, sum, rfb, close_log

  setup(function()
    host = esxi.start({ password = PASSWORD })
    tmp = peer.dir("esx-ssh")
    iso = tmp .. "/tiny.iso"
    assert(fs.write(iso, ("capil test ISO\n"):rep(4096)))
    sum = assert(hash.file(iso, "sha256"))
    local port = peer.free_port()
    rfb = peer.start({ name = "rfb-standin", port = port, log = tmp .. "/rfb.log",
      argv = { "python3", "spec/support/rfb_server.py", tostring(port), "003.007", "none", tmp .. "/keys.log" } })
    close_log = assert(log.add_file(tmp .. "/build.log"))
  end)

  teardown(function()
    if close_log then close_log() end
    if rfb then rfb.stop() end
    if host then host.stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  -- the sessions the builds opened (busted exits without capil.sys.cleanup)
  local ctxs = {}
  -- each test starts with no VM on the host
  before_each(function()
    host.exec("rm -rf " .. DIR .. " /var/lib/esxi-standin/vms /var/lib/esxi-standin/next-vmid")
  end)
  after_each(function()
    for _, ctx in ipairs(ctxs) do if ctx.state.remote then ctx.state.remote:close() end end
    ctxs = {}
  end)

  -- the esx backend's settings from variables, as a plan carries them
  -- (the password as its variable, read through ctx.secret)
  local function settings(vars)
    local cfg = assert(config.from_vars({ backend = "esx", vars = vars }))
    return backend.plan_settings(esx, cfg), function(var) return cfg:get(var) end
  end

  -- a BuildContext as the pipeline hands it to the backend
  local function new_ctx(extra)
    local vars = { "remote_type=ssh", "remote_host=127.0.0.1", "remote_port=" .. host.port,
      "remote_username=root", "remote_password=" .. PASSWORD, "remote_datastore=datastore1",
      "remote_host_key=" .. host.fingerprint, "remote_vnc_port=" .. rfb.port, "remote_poll_interval=0.05" }
    for _, v in ipairs(extra or {}) do vars[#vars + 1] = v end
    local s, secret = settings(vars)
    local ctx = { name = VM, settings = s, secret = secret, media = { iso = iso }, state = {}, report = {},
      workdir = tmp, log_dir = tmp, cache_dir = tmp }
    ctxs[#ctxs + 1] = ctx
    return ctx
  end

  local STEP = { vm_name = VM, cpus = 2, memory_mb = 2048, disk_mb = 16, guest_os = "ubuntu64Guest",
    disk_controller = "pvscsi", network_card = "vmxnet3", network = "VM Network", vmx_version = 13 }

  it("runs create, start, IP, stop, export and cleanup as vim-cmd/vmkfstools/esxcli commands", function()
    host.reset()
    local ctx = new_ctx()
    ctx.http = { auto = true, ip = "192.0.2.1", port = 8000 }
    assert(esx.steps.upload_media(ctx, { checksum = sum, cache_dir = "capil_cache" }))
    assert.equal("ssh", ctx.state.mode)
    assert.equal("127.0.0.1", ctx.http.ip) -- this machine as the host sees it
    assert.equal("uploaded", ctx.report.iso_upload)
    assert.equal(("/vmfs/volumes/datastore1/capil_cache/%s.iso"):format(sum), ctx.state.remote_iso)
    local vm = assert(esx.create(ctx, STEP))
    assert.equal(vm, ctx.state.vm)
    assert.equal("1", vm.vmid)
    local vmx = host.exec("cat " .. DIR .. "/" .. VM .. ".vmx")
    assert.matches('displayName = "' .. VM .. '"', vmx, 1, true)
    assert.matches('numvcpus = "2"', vmx, 1, true)
    assert.matches('memSize = "2048"', vmx, 1, true)
    assert.matches('sata0:0.fileName = "' .. ctx.state.remote_iso .. '"', vmx, 1, true)
    assert.matches('RemoteDisplay.vnc.port = "' .. rfb.port .. '"', vmx, 1, true)
    assert(vm:start())
    assert(vm:type_keys(assert(bootcmd.parse("ok<enter>")), 0))
    -- Return reached the "console" (the stand-in logs as it reads)
    local deadline = os.time() + 10
    while not (fs.read(tmp .. "/keys.log") or ""):find("1 ff0d", 1, true) and os.time() < deadline do
      proc.run({ argv = { "sleep", "0.1" } })
    end
    assert.matches("1 6f\n.*1 6b\n.*1 ff0d", assert(fs.read(tmp .. "/keys.log")))
    assert.same({ host = "127.0.0.1", port = 22 }, assert(vm:ssh_address(10)))
    assert(vm:power_off())
    assert(vm:wait_exit(5))
    -- the disk as ESXi makes it (a descriptor and its VMFS flat extent):
    -- the flat extent is the raw disk, which capil's writer reads
    assert.matches('RW 32768 VMFS "' .. VM .. '-flat.vmdk"', host.exec("cat " .. DIR .. "/" .. VM .. ".vmdk"), 1, true)
    host.exec(("printf capil-disk | dd of=%s/%s-flat.vmdk bs=1 seek=1048576 conv=notrunc 2>/dev/null"):format(DIR, VM))
    local out = tmp .. "/disk.vmdk"
    assert(vm:export(out, { adapter_type = "lsilogic" }))
    local info = assert(proc.run({ argv = { "qemu-img", "info", out } }))
    assert.matches("streamOptimized", info.stdout, 1, true)
    local raw = tmp .. "/disk.raw"
    assert.equal(0, assert(proc.run({ argv = { "qemu-img", "convert", "-O", "raw", out, raw } })).code)
    local f = assert(io.open(raw, "rb"))
    f:seek("set", 1048576)
    assert.equal("capil-disk", f:read(10))
    f:close()
    assert(esx.steps.finalize_vm(ctx, { keep_vm = false }))
    assert.equal("", host.exec("ls /vmfs/volumes/datastore1 | grep -v capil_cache; true"))
    assert.same({
      ("vmkfstools -c 16M -d thin -a pvscsi %s/%s.vmdk"):format(DIR, VM),
      ("vim-cmd solo/registervm %s/%s.vmx"):format(DIR, VM),
      "esxcli network firewall ruleset set --ruleset-id gdbserver --enabled true",
      "vim-cmd vmsvc/power.on 1",
      "vim-cmd vmsvc/get.guest 1",
      "vim-cmd vmsvc/power.getstate 1",
      "vim-cmd vmsvc/get.guest 1",
      "vim-cmd vmsvc/power.off 1",
      "vim-cmd vmsvc/power.getstate 1",
      "vim-cmd vmsvc/power.getstate 1",
      "vim-cmd vmsvc/unregister 1",
    }, host.argv())
  end)

  -- the OVA's pack options around one disk (as the plan's ova step gives them)
  local function pack_opts(dir, disk)
    return { ova = dir .. "/" .. VM .. ".ova", disks = { disk }, progress = false,
      os = { ovf_id = 94, ovf_version = "", os_type = "ubuntu64Guest", display_name = "Ubuntu 20.04" },
      hardware = { cpus = 2, cores_per_socket = 1, memory_mb = 2048, firmware = "bios", disk_controller = "pvscsi",
        vmx_version = 13, disk_mb = 16 },
      properties = { KUBERNETES_SEMVER = "v1.16.14", BUILD_TIMESTAMP = "1600000000" } }
  end

  -- a created VM whose flat extent holds data at 1 MiB and 9 MiB (the rest holes)
  local function vm_with_disk(ctx)
    assert(esx.steps.upload_media(ctx, { checksum = sum, cache_dir = "capil_cache" }))
    local vm = assert(esx.create(ctx, STEP))
    for _, at in ipairs({ 1048576, 9437184 }) do
      host.exec(("head -c 70000 /dev/urandom | dd of=%s/%s-flat.vmdk bs=1 seek=%d conv=notrunc 2>/dev/null")
        :format(DIR, VM, at))
    end
    return vm
  end

  it("streams the flat extent of a free-licence host into the OVA in one pass (no local copy)", function()
    local ctx = new_ctx()
    ctx.state.restricted = true -- the vSphere API refused (RestrictedVersion): no NFC export
    local vm = vm_with_disk(ctx)
    local src = assert(vm:disk_source())
    assert.equal("127.0.0.1:" .. DIR .. "/" .. VM .. "-flat.vmdk", src.source)
    assert.equal("raw", src.format)
    local dir = tmp .. "/ova-stream"
    fs.remove(dir, { recursive = true })
    assert(fs.mkdir(dir))
    src.name = VM .. "-disk-0.vmdk"
    local ova = require("capil.format.ova")
    local r = assert(ova.pack(pack_opts(dir, src)))
    local report = assert(ova.verify(r.ova))
    assert.is_true(report.ok, table.concat(report.problems, "\n"))
    -- nothing but the OVA and its descriptor, manifest and checksum: no download left
    local files = assert(fs.list(dir))
    table.sort(files)
    assert.same({ VM .. ".mf", VM .. ".ova", VM .. ".ova.sha256", VM .. ".ovf" }, files)
    -- the VMDK in the OVA holds the host's disk
    local flat = tmp .. "/flat.raw"
    assert(ctx.state.remote:get(DIR .. "/" .. VM .. "-flat.vmdk", flat))
    assert.equal(0, assert(proc.run({ argv = { "tar", "xf", r.ova, "-C", dir, src.name } })).code)
    local cmp = assert(proc.run({ argv = { "qemu-img", "compare", "-f", "raw", "-F", "vmdk", flat,
      dir .. "/" .. src.name } }))
    assert.equal(0, cmp.code, cmp.stdout .. cmp.stderr)
    -- the OVF's populated size counts the grains written (2 x 70000 bytes: 3 or 4 grains), not the 16 MiB
    local facts = assert(require("capil.format.ovf").parse(assert(fs.read(r.ovf))))
    assert.equal(16 * 1048576, facts.disks[1].capacity_bytes)
    assert.is_true(facts.disks[1].populated_size <= 4 * 65536, tostring(facts.disks[1].populated_size))
    -- the session is free again: the VM goes as usual
    assert(esx.steps.finalize_vm(ctx, { keep_vm = false }))
    fs.remove(flat)
    fs.remove(dir, { recursive = true })
  end)

  it("fails a disk that changes while it streams, naming the host's file, and leaves no OVA", function()
    local ctx = new_ctx()
    ctx.state.restricted = true
    local vm = vm_with_disk(ctx)
    local src = assert(vm:disk_source())
    local open = src.open
    src.open = function()
      local st, err, code = open()
      -- the file shrinks after the size was read
      host.exec(("truncate -s 2M %s/%s-flat.vmdk"):format(DIR, VM))
      return st, err, code
    end
    local dir = tmp .. "/ova-shrink"
    fs.remove(dir, { recursive = true })
    assert(fs.mkdir(dir))
    local r, err, code = require("capil.format.ova").pack(pack_opts(dir, src))
    assert.is_nil(r)
    assert.equal("CHANGED", code)
    assert.matches(("ova.pack: 127.0.0.1:%s/%s-flat.vmdk: "):format(DIR, VM), err, 1, true)
    assert.matches("the file shrank to %d+ of its 16777216 bytes while it was read", err)
    assert.same({}, assert(fs.list(dir)))
    assert(esx.steps.finalize_vm(ctx, { keep_vm = false }))
    fs.remove(dir, { recursive = true })
  end)

  it("has no disk source where the vSphere API may export (NFC), nor for a sparse disk", function()
    local ctx = new_ctx()
    local vm = vm_with_disk(ctx)
    assert.is_nil(vm:disk_source())
    vm.restricted = true
    host.exec(("sed -i 's/ VMFS / VMFSSPARSE /' %s/%s.vmdk"):format(DIR, VM))
    assert.is_nil(vm:disk_source())
    assert(vm:destroy())
  end)

  it("skips the ISO upload when the datastore has it (same size, checksum marker)", function()
    local ctx = new_ctx()
    assert(esx.steps.upload_media(ctx, { checksum = sum, cache_dir = "capil_cache" }))
    assert.equal("cached", ctx.report.iso_upload)
    -- a different file under the same name is uploaded again
    host.exec(("echo truncated > /vmfs/volumes/datastore1/capil_cache/%s.iso"):format(sum))
    local again = new_ctx()
    assert(esx.steps.upload_media(again, { checksum = sum, cache_dir = "capil_cache" }))
    assert.equal("uploaded", again.report.iso_upload)
    assert.equal(tostring(fs.stat(iso).size),
      host.exec(("stat -c %%s /vmfs/volumes/datastore1/capil_cache/%s.iso"):format(sum)):gsub("%s+$", ""))
  end)

  it("picks a free VNC port from esxcli when none is set", function()
    local ctx = new_ctx()
    ctx.settings, ctx.secret = settings({ "remote_type=ssh", "remote_host=127.0.0.1",
      "remote_port=" .. host.port, "remote_username=root", "remote_password=" .. PASSWORD,
      "remote_datastore=datastore1", "remote_host_key=" .. host.fingerprint })
    assert(esx.steps.upload_media(ctx, { checksum = sum, cache_dir = "capil_cache" }))
    local vm = assert(esx.create(ctx, STEP))
    assert.equal(5901, vm.vnc.port) -- the stand-in's esxcli lists 5900 as taken
    assert.matches('RemoteDisplay.vnc.port = "5901"', host.exec("cat " .. DIR .. "/" .. VM .. ".vmx"), 1, true)
    assert(vm:destroy())
  end)

  it("names the host and the command when registervm fails, and leaves no VM directory", function()
    host.fail("registervm")
    finally(function() host.fail("registervm", false) end)
    local ctx = new_ctx()
    assert(esx.steps.upload_media(ctx, { checksum = sum, cache_dir = "capil_cache" }))
    local vm, err, code = esx.create(ctx, STEP)
    assert.is_nil(vm)
    assert.equal("EESXCMD", code)
    assert.matches("127.0.0.1: `vim-cmd solo/registervm " .. DIR .. "/" .. VM .. ".vmx` failed (exit 1)", err, 1, true)
    assert.matches("stand-in: registervm refused", err, 1, true)
    -- create undid what it had made
    assert.equal("", host.exec("ls /vmfs/volumes/datastore1 | grep -v capil_cache; true"))
  end)

  it("fails a wrong password as SSH_AUTH naming user@host:port", function()
    local ctx = new_ctx({ "remote_password=wrong-pw" })
    local ok, err, code = esx.steps.upload_media(ctx, { checksum = sum, cache_dir = "capil_cache" })
    assert.is_nil(ok)
    assert.equal("SSH_AUTH", code)
    assert.matches("root@127.0.0.1:" .. host.port, err, 1, true)
  end)

  it("logs in with remote_private_key_file instead of a password", function()
    local ctx = new_ctx({ "remote_password=", "remote_private_key_file=" .. host.key })
    assert(esx.steps.upload_media(ctx, { checksum = sum, cache_dir = "capil_cache" }))
    assert.equal("cached", ctx.report.iso_upload)
  end)

  it("pins the host key without remote_host_key: trusted on first use, a changed key refused", function()
    local state = tmp .. "/state"
    local env = { XDG_STATE_HOME = state, HOME = "/nonexistent" }
    local getenv = function(k) return env[k] end
    local kh = state .. "/capil/known_hosts"
    local ctx = new_ctx({ "remote_host_key=" })
    local s = esx_ssh.connection(ctx.settings, ctx.secret, getenv)
    assert.equal(kh, s.host_key)
    local before = #(fs.read(tmp .. "/build.log") or "")
    local remote = assert(esx_ssh.connect(s))
    remote.session:close()
    local logged = (fs.read(tmp .. "/build.log") or ""):sub(before + 1)
    assert.matches("new host: trusting its host key " .. host.fingerprint:gsub("%p", "%%%0"), logged)
    assert.equal(tonumber("700", 8), fs.stat(state .. "/capil").mode)
    local saved = assert(fs.read(kh))
    assert.matches("^%[127%.0%.0%.1%]:" .. host.port .. " ssh%-", saved)
    -- the second time: known, no notice
    before = #(fs.read(tmp .. "/build.log") or "")
    remote = assert(esx_ssh.connect(s))
    remote.session:close()
    assert.is_nil((fs.read(tmp .. "/build.log") or ""):sub(before + 1):find("new host", 1, true))
    -- the host "changes" its key: refused, naming both fingerprints and the fix
    local other = sshd.keygen(tmp, "other_host_key")
    local other_pub = assert(fs.read(other .. ".pub")):match("^(%S+ %S+)")
    assert(fs.write(kh, ("[127.0.0.1]:%d %s\n"):format(host.port, other_pub)))
    local ok, err, code = esx_ssh.connect(s)
    assert.is_nil(ok)
    assert.equal("SSH_HOSTKEY", code)
    assert.matches("host key for [127.0.0.1]:" .. host.port .. " has changed", err, 1, true)
    assert.matches(host.fingerprint, err, 1, true)
    assert.matches("ssh-keygen -R", err, 1, true)
    assert.matches("remote_host_key", err, 1, true)
    local old_fp = assert(proc.run({ argv = { "ssh-keygen", "-l", "-f", other .. ".pub" } })).stdout:match("(SHA256:%S+)")
    assert.matches(old_fp, err, 1, true)
    assert.is_nil(err:find(PASSWORD, 1, true))
  end)

  it("never puts the password in a remote command or a log line", function()
    local recorded = table.concat(host.argv(), "\n")
    assert.is_true(#recorded > 0)
    assert.is_nil(recorded:find(PASSWORD, 1, true))
    assert.is_nil((fs.read(tmp .. "/build.log") or ""):find(PASSWORD, 1, true))
    assert.is_nil(host.exec("cat /var/lib/esxi-standin/argv.log"):find("Esx-r00t", 1, true))
  end)

  it("writes a .vmx with quoted values and the VNC keys (unit)", function()
    local text = esx_ssh.vmx({ name = 'a "b"', cpus = 1, memory_mb = 512, disk = "a.vmdk", isos = { "/x.iso" },
      vnc = { port = 5901, password = "pw" }, extra = { ["guestinfo.k"] = "v|w" } })
    assert.matches('displayName = "a |22b|22"', text, 1, true)
    assert.matches('guestinfo.k = "v|7Cw"', text, 1, true)
    assert.matches('RemoteDisplay.vnc.enabled = "TRUE"', text, 1, true)
    assert.matches('sata0:0.deviceType = "cdrom-image"', text, 1, true)
    assert.equal("10.0.0.5", esx_ssh.guest_ip('ipAddress = "169.254.1.1",\n ipAddress = "10.0.0.5",'))
    assert.is_nil(esx_ssh.guest_ip("ipAddress = <unset>,"))
    -- the ESXi shell's words are quoted by capil.util.text
    assert.equal("'it'\\''s'", require("capil.util.text").shell_quote("it's"))
  end)
end)
