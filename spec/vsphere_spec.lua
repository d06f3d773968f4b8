-- The vSphere backend end to end against the vSphere simulator (vcsim with
-- our shim, spec/support/vcsim): `capil run --backend vsphere` uploads the
-- ISO, creates the VM, types the boot command with batched PutUsbScanCodes,
-- waits for the guest IP (which leads to a real sshd on loopback, so the
-- provisioning runs for real), shuts down, exports through an NFC lease and
-- packs the OVA. Then placement variants, TLS, bad credentials, faults in
-- the middle of a build, the ESXi variants, `capil deploy` and the REPL.
local capil = require("support.capil")
local vcsim = require("support.vcsim")
local esxi = require("support.esxi")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local runtime = require("capil.core.runtime")
local json = require("capil.sys.json")
local bootcmd = require("capil.build.bootcmd")
local template = require("capil.util.template")
local recipe = require("capil.build.recipe")
local vim25 = require("capil.vsphere.vim25")
local vsphere_backend = require("capil.backends.vsphere")
local session = require("capil.vsphere.session")
local inventory = require("capil.vsphere.inventory")
local testvm = require("capil.vsphere.testvm")
local backend = require("capil.backend")
local config = require("capil.build.config")

local PASSWORD = "Vc-s3cret!pw"
local BUILD = "vsphere-fixture-kube-v1.16.14"

local buildenv = require("support.buildenv")

local function by_name(sim, name)
  local found = {}
  for _, vm in ipairs(sim:vms()) do if vm.name == name then found[#found + 1] = vm end end
  return found
end

-- The text of every file under dir (logs, report), for secret checks.
local function all_text(dir)
  local parts = {}
  for _, f in ipairs(fs.list(dir) or {}) do
    local p = dir .. "/" .. f
    local st = fs.stat(p)
    if st and st.type == "directory" then parts[#parts + 1] = all_text(p)
    elseif st and st.size < 4 * 1024 * 1024 then parts[#parts + 1] = fs.read(p) or "" end
  end
  return table.concat(parts, "\n")
end

describe("vSphere guest IP choice #unit", function()
  local vsphere = require("capil.backends.vsphere")

  it("skips link-local IPv6 and APIPA, and IPv6 unless the CIDR is IPv6", function()
    local cases = {
      { "10.0.0.5", nil, true }, { "169.254.7.7", nil, false }, { "fe80::250:56ff:fe00:1", nil, false },
      { "2001:db8::5", nil, false }, { "2001:db8::5", "::/0", true }, { "fe80::1", "::/0", false },
      { "10.0.0.5", "::/0", false }, { "192.168.1.9", "192.168.0.0/16", true }, { "10.1.2.3", "192.168.0.0/16", false },
      { "10.1.2.3", "10.1.2.3/32", true }, { "10.1.2.4", "10.1.2.3/32", false }, { "300.1.1.1", nil, false },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[3], vsphere.ip_usable(c[1], c[2]), c[1] .. " in " .. tostring(c[2]))
    end
  end)

  it("takes the first usable address of the chosen NIC", function()
    local net = {
      { ipAddress = { "fe80::250:56ff:fe00:1", "169.254.7.7", "10.0.0.42" } },
      { ipAddress = { "192.168.5.5" } },
    }
    assert.equal("10.0.0.42", vsphere.pick_ip(net, nil, "0.0.0.0/0", 0))
    assert.equal("192.168.5.5", vsphere.pick_ip(net, nil, "0.0.0.0/0", 1))
    assert.is_nil(vsphere.pick_ip({ { ipAddress = { "169.254.1.1" } } }, "169.254.1.1", "0.0.0.0/0", 0))
    assert.equal("10.9.9.9", vsphere.pick_ip(nil, "10.9.9.9", "0.0.0.0/0", 0))
  end)
end)

describe("vSphere backend against the simulator #vsphere", function()
  local env, tmp, sim, ssh, iso, iso_sum, key, probe, vmdk, varfile

  setup(function()
    env = buildenv.vsphere("vsphere-spec", PASSWORD,
      { mib = 2, vars = { configuration_parameters = { ["guestinfo.capil.test"] = "built-by-capil" } } })
    tmp, sim, ssh, iso, iso_sum, key, probe, vmdk, varfile =
      env.tmp, env.sim, env.ssh, env.iso, env.iso_sum, env.key, env.probe, env.vmdk, env.varfile
  end)

  teardown(function()
    if env then env.stop() end
  end)

  local function args(out, extra, opts)
    opts = opts or {}
    local a = { "run", "spec/fixtures/recipes/vsphere.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", opts.backend or "vsphere", "--output", out, "--var-file", opts.varfile or varfile,
      "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. iso_sum,
      "--var", "ssh_private_key_file=" .. key, "--var", "ssh_port=" .. ssh.port,
      "--var", "ssh_username=" .. ssh.user, "--var", "probe_file=" .. probe,
      "--var", "ip_settle_timeout=0.5s" }
    for _, x in ipairs(extra or {}) do a[#a + 1] = x end
    return a
  end

  local function run(out, extra, opts)
    return capil.run(args(out, extra, opts), { timeout = 180, env_add = { XDG_CACHE_HOME = tmp .. "/cache" } })
  end

  it("builds the fixture recipe: upload, create, type, IP, SSH, shutdown, export, OVA", function()
    fs.remove(probe)
    sim:reset_calls()
    local out = tmp .. "/out-full"
    local r = run(out)
    assert.equal(0, r.code, r.stderr)
    local dir = out .. "/" .. BUILD
    local ova = dir .. "/" .. BUILD .. ".ova"
    assert.is_true(fs.exists(ova))
    -- the OVA is whole and its disk is the bytes the lease served
    local v = capil.run({ "ova", "verify", ova })
    assert.equal(0, v.code, v.stdout .. v.stderr)
    assert.equal(assert(hash.file(vmdk)), assert(hash.file(dir .. "/" .. BUILD .. "-disk-0.vmdk")))
    -- provisioning ran on the SSH target the guest IP led to
    assert.equal("provisioned-by-capil\n", fs.read(probe))
    -- the VM is kept (image-builder's behaviour), powered off, without CD-ROMs
    local vms = by_name(sim, BUILD)
    assert.equal(1, #vms)
    assert.equal("poweredOff", vms[1].power)

    -- the typed key events decode to the recipe's boot command
    local served = r.stderr:match("guest uses http://([%d%.]+:%d+)/")
    assert.is_string(served, r.stderr)
    local ip, port = served:match("^(.-):(%d+)$")
    local rec = assert(recipe.load("spec/fixtures/recipes/vsphere.lua"))
    local text = assert(template.render(table.concat(rec.fields["boot.command"]),
      { http_ip = ip, http_port = port, name = BUILD }))
    local want = {}
    for _, b in ipairs(bootcmd.to_usb(assert(bootcmd.parse(text)))) do
      for _, c in ipairs(b.codes or {}) do want[#want + 1] = c end
    end
    local got = sim:keys()[vms[1].ref]
    assert.equal(#want, #got)
    for i, c in ipairs(want) do
      assert.equal(c.usbHidCode, got[i].usbHidCode, "key " .. i)
      for _, m in ipairs({ "leftControl", "leftShift", "leftAlt" }) do
        assert.equal(c.modifier_names[m] or false, got[i].modifiers[m] or false, ("key %d %s"):format(i, m))
      end
    end
    -- batched: at least 20x fewer calls than keys
    local calls = sim:calls()
    local report = assert(json.read(dir .. "/report.json"))
    assert.equal(calls.PutUsbScanCodes, report.typing_calls)
    assert.is_true(#want >= 20 * calls.PutUsbScanCodes, ("%d keys in %d calls"):format(#want, calls.PutUsbScanCodes))
    local total = 0
    local names = {}
    for m, n in pairs(calls) do total = total + n names[#names + 1] = ("%s=%d"):format(m, n) end
    table.sort(names)
    -- the figures for the closing note
    io.stderr:write(("\n[vsphere] full build: %d SOAP calls; typing %d keys in %d PutUsbScanCodes calls\n  %s\n")
      :format(total, #want, calls.PutUsbScanCodes, table.concat(names, " ")))
    -- one session for the preflight (capil.build.preflight), one for the build
    assert.equal(2, calls.Login)
    assert.equal(2, calls.Logout)
    assert.equal(1, calls.ExportVm)
    assert.equal(1, calls.HttpNfcLeaseComplete)
    -- one property collector per session, reused by every wait (a filter
    -- each): 75 calls when each wait made and destroyed a collector, 71 now
    assert.is_true(calls.CreatePropertyCollector <= calls.Login, "collectors: " .. calls.CreatePropertyCollector)
    assert.equal(calls.CreateFilter, calls.DestroyPropertyFilter)
    assert.is_true(total <= 71, ("%d SOAP calls, at most 71 expected"):format(total))
    -- the ISO is in the datastore cache now: a second build does not upload it
    local r2 = run(tmp .. "/out-again", { "--var", "keep_vm=false" })
    assert.equal(0, r2.code, r2.stderr)
    assert.matches("already on the datastore", r2.stderr, 1, true)
  end)

  -- a BuildContext as the pipeline hands it to a backend: the plan's
  -- settings (the password as its variable, read through ctx.secret)
  local function new_ctx(b, name, vf, vars)
    local cfg = assert(config.from_vars({ backend = b.name, var_files = { vf }, vars = vars, config_dir = tmp,
      getenv = function() return nil end }))
    return { name = name, workdir = tmp, log_dir = tmp, cache_dir = tmp .. "/cache",
      settings = backend.plan_settings(b, cfg), secret = function(var) return cfg:get(var) end,
      media = { iso = iso, cd_iso = iso }, http = { auto = true, ip = "192.0.2.1", port = 8000 }, state = {},
      report = {} }
  end

  local function create_step(name)
    return { id = "create-vm", kind = "create_vm", vm_name = name, guest_os = "otherGuest64", cpus = 1,
      memory_mb = 256, disk_mb = 64, disk_controller = "pvscsi", network_card = "vmxnet3", vmx_version = 13 }
  end

  it("drives the backend through the contract without the pipeline: upload, create, type, IP, export, finalize",
    function()
    local b = vsphere_backend
    assert.same({}, backend.check(b))
    local name = "contract-vm"
    local ctx = new_ctx(b, name, varfile, { "ssh_port=" .. ssh.port, "ip_settle_timeout=0.2s" })
    -- the plan carries the password's variable, never the password
    assert.is_nil(ctx.settings.password)
    assert.equal("password", ctx.settings.password_var)
    assert.is_nil(json.encode(ctx.settings):find(PASSWORD, 1, true))
    assert(b.steps.upload_media(ctx, { id = "upload-media", kind = "upload_media", checksum = iso_sum,
      cache_dir = "capil_cache" }))
    assert.equal("127.0.0.1", ctx.http.ip) -- this machine as the server sees it
    assert.is_table(ctx.state.vc)
    assert.equal("DC0", ctx.state.inv.dc_name)
    assert.equal(("[LocalDS_0] capil_cache/%s.iso"):format(iso_sum), ctx.state.remote_iso)
    assert.matches("^%[LocalDS_0%] capil_cache/contract%-vm%-%d+%-cd%.iso$", ctx.state.remote_cd)
    assert.is_string(ctx.report.iso_upload)
    local vm = assert(b.create(ctx, create_step(name)))
    assert.equal(vm, ctx.state.vm)
    local p = assert(ctx.state.vc:props(vm.ref, { "config.extraConfig", "config.hardware.device" }))
    assert.equal("built-by-capil", vim25.option(p["config.extraConfig"], "guestinfo.capil.test"))
    local cdroms = 0
    for _, d in ipairs(vim25.list(p["config.hardware.device"])) do
      if d._type == "VirtualCdrom" then cdroms = cdroms + 1 end
    end
    assert.equal(2, cdroms)
    assert(vm:start())
    local ok, _, _, calls = vm:type_keys(assert(bootcmd.parse("ok<enter>")), 0)
    assert.is_true(ok)
    assert.equal(1, calls)
    assert.same({ host = "127.0.0.1", port = ssh.port }, assert(vm:ssh_address(30)))
    assert(vm:power_off(1))
    local r = assert(vm:export(tmp .. "/contract-disk.vmdk", { adapter_type = "lsilogic", hwversion = 13 }))
    assert.equal(assert(hash.file(vmdk)), r.sha256)
    assert(b.steps.finalize_vm(ctx, { id = "finalize", kind = "finalize_vm", keep_vm = false }))
    assert.same({}, by_name(sim, name))
  end)

  it("puts the seed CD on a SATA (AHCI) controller of its own when cd_bus is sata", function()
    local b = vsphere_backend
    local name = "sata-seed-vm"
    local ctx = new_ctx(b, name, varfile, { "ssh_port=" .. ssh.port })
    assert(b.steps.upload_media(ctx, { id = "upload-media", kind = "upload_media", checksum = iso_sum,
      cache_dir = "capil_cache" }))
    -- the seed ISO is per build, beside the install ISO, removed at cleanup
    local seed = ctx.state.remote_cd
    assert.matches("^%[LocalDS_0%] capil_cache/sata%-seed%-vm%-%d+%-cd%.iso$", seed)
    local pending = table.concat(require("capil.sys.cleanup").pending(), "\n")
    assert.matches("datastore file " .. seed, pending, 1, true)
    local step = create_step(name)
    step.cd_bus = "sata"
    local vm = assert(b.create(ctx, step))
    local p = assert(ctx.state.vc:props(vm.ref, { "config.hardware.device" }))
    local ahci, cds = nil, {}
    for _, d in ipairs(vim25.list(p["config.hardware.device"])) do
      if d._type == "VirtualAHCIController" then ahci = d end
      if d._type == "VirtualCdrom" then cds[d.backing.fileName] = d end
    end
    assert.is_table(ahci, "no AHCI controller")
    assert.is_table(cds[seed], "no CD-ROM backed by the seed ISO")
    assert.equal(tostring(ahci.key), tostring(cds[seed].controllerKey))
    local install = assert(cds[ctx.state.remote_iso], "no CD-ROM backed by the install ISO")
    assert.not_equal(tostring(ahci.key), tostring(install.controllerKey))
    assert(b.steps.finalize_vm(ctx, { id = "finalize", kind = "finalize_vm", keep_vm = false }))
    assert.same({}, by_name(sim, name))
  end)

  it("destroys a VM whose CreateVM_Task reply was lost (found by its instance UUID, not by name)", function()
    local b = vsphere_backend
    local cleanup = require("capil.sys.cleanup")
    local name = "lost-reply-vm"
    local ctx = new_ctx(b, name, varfile, { "ssh_port=" .. ssh.port })
    assert(b.steps.upload_media(ctx, { id = "upload-media", kind = "upload_media", checksum = iso_sum,
      cache_dir = "capil_cache" }))
    -- a VM of the same name that is not this build's: the cleanup must spare it
    local other = assert(b.create(ctx, create_step(name)))
    other.cleanup:cancel()
    ctx.state.vm = nil
    local before = cleanup.count()
    sim:inject({ method = "CreateVM_Task", action = "lost" })
    local vm, err = b.create(ctx, create_step(name))
    assert.is_nil(vm)
    assert.matches(name .. ": CreateVM_Task:", err, 1, true)
    -- the server made a second VM of that name; the pending cleanup knows it by UUID
    assert.equal(2, #by_name(sim, name))
    assert.equal(before + 1, cleanup.count())
    assert.matches("VM lost%-reply%-vm %(instance UUID %x+%-", cleanup.pending()[cleanup.count()])
    assert(cleanup.unwind(before))
    local left = by_name(sim, name)
    assert.equal(1, #left)
    assert.equal(other.ref.value, left[1].ref)
    assert(other:destroy())
    assert.same({}, by_name(sim, name))
  end)

  it("registers no VM cleanup when the server refuses CreateVM_Task (nothing was made)", function()
    local b = vsphere_backend
    local cleanup = require("capil.sys.cleanup")
    local ctx = new_ctx(b, "refused-vm", varfile, { "ssh_port=" .. ssh.port })
    assert(b.steps.upload_media(ctx, { id = "upload-media", kind = "upload_media", checksum = iso_sum,
      cache_dir = "capil_cache" }))
    local before = cleanup.count()
    sim:inject({ method = "CreateVM_Task", action = "fault", fault = "InvalidArgument" })
    local vm, err = b.create(ctx, create_step("refused-vm"))
    assert.is_nil(vm)
    assert.matches("InvalidArgument", err, 1, true)
    assert.equal(before, cleanup.count())
  end)

  it("names the step order when create_vm comes before upload_media", function()
    local ctx = new_ctx(vsphere_backend, "early-vm", varfile)
    local vm, err, code = vsphere_backend.create(ctx, create_step("early-vm"))
    assert.is_nil(vm)
    assert.equal("ESTEP", code)
    assert.matches("create_vm before upload_media", err, 1, true)
  end)

  it("chains the upload stage: --stages build,upload puts the OVA in GCS", function()
    local gcs_peers = require("support.gcs")
    local fake = gcs_peers.fake()
    local ok, r = pcall(run, tmp .. "/out-upload", { "--stages", "build,upload", "--gcs-endpoint", fake.endpoint,
      "--var", "keep_vm=false" })
    local st = fake.stats()
    fake.stop()
    assert(ok, r)
    assert.equal(0, r.code, r.stderr)
    local object = "capv-images/release/v1.16.14/" .. BUILD .. ".ova"
    local o = assert(st.objects[object], "no " .. object)
    assert.equal(assert(hash.file(tmp .. "/out-upload/" .. BUILD .. "/" .. BUILD .. ".ova")), o.sha256)
    assert.is_table(st.objects[object .. ".sha256"])
    assert.matches(fake.endpoint .. "/" .. object, r.stdout, 1, true)
  end)

  it("places the VM on a host instead of a cluster and destroys it with keep_vm=false", function()
    local out = tmp .. "/out-host"
    local before = #by_name(sim, BUILD)
    local r = run(out, { "--var", "cluster=", "--var", "host=DC0_H0", "--var", "keep_vm=false" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("destroyed", r.stderr, 1, true)
    assert.equal(before, #by_name(sim, BUILD))
  end)

  it("marks the VM as a template with convert_to_template, accepting any certificate with --insecure", function()
    local insecure = tmp .. "/insecure.json"
    local vars = assert(json.read(varfile))
    vars.vcenter_ca_file = nil
    assert(json.write(insecure, vars))
    local r = run(tmp .. "/out-template", { "--insecure", "--var", "convert_to_template=true" }, { varfile = insecure })
    assert.equal(0, r.code, r.stderr)
    local templates = 0
    for _, vm in ipairs(by_name(sim, BUILD)) do if vm.template then templates = templates + 1 end end
    assert.equal(1, templates)
  end)

  it("refuses a server certificate from an unknown CA", function()
    local wrong = tmp .. "/wrong-ca.json"
    local vars = assert(json.read(varfile))
    vars.vcenter_ca_file = vcsim.wrong_ca()
    assert(json.write(wrong, vars))
    local out = tmp .. "/out-wrong-ca"
    local r = run(out, {}, { varfile = wrong })
    -- the preflight's login meets the certificate: exit 2, nothing made
    assert.equal(2, r.code)
    assert.matches("cannot start %(1 problem; nothing was downloaded or created%):\n  vsphere: .*certificate", r.stderr)
    assert.is_false(fs.exists(out .. "/" .. BUILD))
  end)

  it("reports a wrong password as InvalidLogin without printing it", function()
    local out = tmp .. "/out-badpw"
    local r = run(out, { "--var", "password=Not-the-" .. PASSWORD })
    assert.equal(2, r.code) -- the preflight's login
    assert.matches("InvalidLogin", r.stderr, 1, true)
    assert.matches("cannot start (1 problem; nothing was downloaded or created)", r.stderr, 1, true)
    for _, text in ipairs({ r.stdout, r.stderr, all_text(out) }) do
      assert.is_nil(text:find(PASSWORD, 1, true), "password leaked")
    end
  end)

  it("removes the VM when a task fails, naming the step and the VM", function()
    local out = tmp .. "/out-fault"
    local before = #by_name(sim, BUILD)
    sim:inject({ method = "PowerOnVM_Task", action = "fault", fault = "InvalidPowerState" })
    local r = run(out)
    assert.equal(1, r.code)
    assert.matches("step create%-vm failed: " .. BUILD:gsub("%-", "%%-") .. ": PowerOnVM_Task: .*InvalidPowerState", r.stderr)
    assert.equal(before, #by_name(sim, BUILD))
    capil.assert_no_leftovers(out .. "/" .. BUILD)
  end)

  it("keeps the failed build's VM with --keep-on-error and says how to find it", function()
    local out = tmp .. "/out-kept"
    local before = #by_name(sim, BUILD)
    sim:inject({ method = "PutUsbScanCodes", action = "fault", fault = "InvalidPowerState", count = 2 })
    local r = run(out, { "--keep-on-error" })
    assert.equal(1, r.code)
    assert.matches("step boot failed", r.stderr, 1, true)
    assert.matches("kept after failure", r.stderr, 1, true)
    assert.matches("VM " .. BUILD .. " (VirtualMachine:vm-", r.stderr, 1, true)
    local vms = by_name(sim, BUILD)
    assert.equal(before + 1, #vms)
    -- the simulator's inventory lists the kept VM, still powered on
    local kept = 0
    for _, vm in ipairs(vms) do if vm.power == "poweredOn" then kept = kept + 1 end end
    assert.equal(1, kept)
  end)

  it("logs in again when the session is dropped in the middle of a build", function()
    local out = tmp .. "/out-relogin"
    sim:reset_calls()
    local before = #by_name(sim, BUILD)
    local p = assert(proc.spawn({ argv = (function()
      local a = { capil.exe }
      for _, x in ipairs(args(out, { "--var", "boot_wait=2s", "--var", "keep_vm=false" })) do a[#a + 1] = x end
      return a
    end)(), stdout = tmp .. "/relogin.out", stderr = "stdout", env_add = { XDG_CACHE_HOME = tmp .. "/cache" } }))
    local deadline = runtime.now() + 60
    while #by_name(sim, BUILD) == before do
      assert(runtime.now() < deadline, "the VM never appeared")
      runtime.sleep(0.05)
    end
    assert.is_true(sim:drop_sessions() >= 1)
    local st = assert(p:wait({ timeout = 120 }))
    p:close()
    assert.equal(0, st.code, fs.read(tmp .. "/relogin.out"))
    assert.is_true(sim:calls().Login >= 2)
  end)

  it("reports an export's progress on the lease while the disk streams, then completes it", function()
    local lease = require("capil.vsphere.lease")
    local vc <close> = assert(vim25.connect({ server = sim.url, username = sim.username, password = PASSWORD,
      ca_file = sim.ca_file }))
    local ref = assert(vc:find("/DC0/vm/DC0_C0_RP0_VM1"))
    assert.is_true(vc:call_task("PowerOffVM_Task", ref, {}))
    assert(fs.mkdir(tmp .. "/slow-export"))
    sim:reset_calls()
    -- 2 MiB in 64 KiB pieces, 50 ms apart: over a second and a half
    sim:inject({ method = "ExportVm", action = "slow", delay_ms = 50 })
    local t0 = runtime.now()
    local r = assert(lease.export(vc, ref, "DC0_C0_RP0_VM1", tmp .. "/slow-export/disk.vmdk",
      { progress_interval = 0.2 }))
    local took = runtime.now() - t0
    assert.is_true(took >= 1.5, ("the slow export took %.2f s"):format(took))
    assert.equal(assert(hash.file(vmdk)), r.sha256)
    local calls = sim:calls()
    -- a report every 0.2 s of the transfer, and the final 100 %
    assert.is_true((calls.HttpNfcLeaseProgress or 0) >= 5, "HttpNfcLeaseProgress: " .. (calls.HttpNfcLeaseProgress or 0))
    assert.equal(1, calls.HttpNfcLeaseComplete)
    assert.is_nil(calls.HttpNfcLeaseAbort)
    assert.is_true(vc:call_task("PowerOnVM_Task", ref, {}))
  end)

  it("aborts the export's lease and leaves no VMDK when the build is interrupted (SIGINT)", function()
    local out = tmp .. "/out-interrupted"
    local disk = out .. "/" .. BUILD .. "/" .. BUILD .. "-disk-0.vmdk"
    sim:reset_calls()
    sim:inject({ method = "ExportVm", action = "slow", delay_ms = 300 }) -- about 10 s for the disk
    local argv = { capil.exe }
    for _, x in ipairs(args(out, { "--var", "keep_vm=false" })) do argv[#argv + 1] = x end
    local p = assert(proc.spawn({ argv = argv, stdout = tmp .. "/interrupted.out", stderr = "stdout",
      env_add = { XDG_CACHE_HOME = tmp .. "/cache" } }))
    local deadline = runtime.now() + 90
    -- the disk is streaming: its .part has bytes
    while ((fs.stat(disk .. ".part") or {}).size or 0) == 0 do
      assert(runtime.now() < deadline, "the export never started: " .. (fs.read(tmp .. "/interrupted.out") or ""))
      runtime.sleep(0.05)
    end
    assert.is_nil(sim:calls().HttpNfcLeaseComplete)
    assert(p:kill("INT"))
    local st = assert(p:wait({ timeout = 60 }))
    p:close()
    local text = fs.read(tmp .. "/interrupted.out")
    assert.equal(130, st.code, text)
    local calls = sim:calls()
    assert.equal(1, calls.ExportVm)
    assert.equal(1, calls.HttpNfcLeaseAbort, text)
    assert.is_nil(calls.HttpNfcLeaseComplete)
    -- neither the disk nor its .part is left
    assert.is_false(fs.exists(disk), text)
    assert.is_false(fs.exists(disk .. ".part"), text .. "\n" .. table.concat(fs.list(out .. "/" .. BUILD) or {}, " "))
    capil.assert_no_leftovers(out .. "/" .. BUILD)
  end)

  it("fails cleanly when the simulator stops in the middle of a build", function()
    local lone = vcsim.start({ username = "u", password = "p", guest_ip = "127.0.0.1", export_disk = vmdk })
    local vf = tmp .. "/lone.json"
    assert(json.write(vf, { vcenter_server = lone.url, username = "u", password = "p", datacenter = "DC0",
      cluster = "DC0_C0", datastore = "LocalDS_0" }))
    local out = tmp .. "/out-stopped"
    local argv = { capil.exe }
    for _, x in ipairs(args(out, { "--var", "boot_wait=3s" }, { varfile = vf })) do argv[#argv + 1] = x end
    local p = assert(proc.spawn({ argv = argv, stdout = tmp .. "/stopped.out", stderr = "stdout",
      env_add = { XDG_CACHE_HOME = tmp .. "/cache" } }))
    local deadline = runtime.now() + 60
    -- capil has seen its power-on task finish (the simulator's own state can
    -- say poweredOn while capil still waits for the task): the boot wait
    while not (fs.read(tmp .. "/stopped.out") or ""):find(BUILD .. ": powered on", 1, true) do
      assert(runtime.now() < deadline, "the VM never powered on: " .. (fs.read(tmp .. "/stopped.out") or ""))
      runtime.sleep(0.05)
    end
    lone:stop() -- during the boot wait
    local st = assert(p:wait({ timeout = 120 }))
    p:close()
    local text = fs.read(tmp .. "/stopped.out")
    assert.equal(1, st.code, text)
    assert.matches("step boot failed: " .. BUILD:gsub("%-", "%%-"), text)
    assert.matches("Couldn't connect to server", text, 1, true)
    capil.assert_no_leftovers(out .. "/" .. BUILD)
  end)

  it("imports a capil OVA with capil deploy: the VM matches the OVF", function()
    local ova = tmp .. "/out-full/" .. BUILD .. "/" .. BUILD .. ".ova"
    assert.is_true(fs.exists(ova), "needs the full build's OVA")
    local r = capil.run({ "deploy", ova, "--var-file", varfile, "--name", "imported-node" }, { timeout = 60 })
    assert.equal(0, r.code, r.stderr)
    local ref = r.stdout:match("^VirtualMachine:(%S+) imported%-node")
    assert.is_string(ref, r.stdout)
    local script = ([[
local session = require("capil.vsphere.session")
local s = assert(session.settings_from_vars({ var_files = { %q } }))
local vc = assert(session.connect(s))
local p = assert(vc:props(require("capil.vsphere.vim25").ref("VirtualMachine", %q),
  { "config.hardware.numCPU", "config.hardware.memoryMB", "config.guestId", "name" }))
print(p["config.hardware.numCPU"], p["config.hardware.memoryMB"], p["config.guestId"], p.name)
]]):format(varfile, ref)
    local out = capil.run({ capil.script(tmp, "props.lua", script) })
    assert.equal(0, out.code, out.stderr)
    -- the OVF declares the node (ovf.cpus, ovf.memory: image-builder's 2 CPUs
    -- and 2048 MiB), not the 512 MiB build VM
    assert.equal("2\t2048\tother5xLinux64Guest\timported-node\n", out.stdout)
  end)

  it("capil test deploys the build's OVA, injects cloud-init, logs in; capil ssh reaches the kept VM", function()
    local dir = tmp .. "/out-full/" .. BUILD
    assert.is_true(fs.exists(dir .. "/" .. BUILD .. ".ova"), "needs the full build's OVA")
    local test_args = { "test", dir, "--backend", "vsphere", "--var-file", varfile, "--var", "ssh_port=" .. ssh.port,
      "--var", "test_ssh_username=" .. ssh.user, "--var", "test_ssh_private_key_file=" .. key,
      "--var", "ip_settle_timeout=0.3s" }
    local first = { table.unpack(test_args) }
    first[#first + 1] = "--keep"
    local r = capil.run(first, { timeout = 120 })
    assert.equal(0, r.code, r.stderr)
    local report = json.read(dir .. "/test/report.json")
    assert.is_true(report.ok)
    assert.same({ created_new = true, reverted = false, removed = {} }, report.snapshots)
    local vm = json.read(dir .. "/test/vm.json")
    assert.equal(BUILD .. "-test", vm.name)
    assert.same({ host = "127.0.0.1", port = ssh.port }, vm.ssh)

    -- what the guest would read: the snapshots and the four guestinfo keys
    local s = assert(session.settings_from_vars({ var_files = { varfile } }))
    local vc = assert(session.connect(s))
    finally(function() vc:logout() end)
    local inv = assert(inventory.resolve(vc, s))
    local ref = assert(testvm.find_vm(vc, inv, BUILD .. "-test"))
    local p = assert(vc:props(ref, { "snapshot.rootSnapshotList", "config.extraConfig", "runtime.powerState" }))
    local roots = vim25.list(p["snapshot.rootSnapshotList"])
    assert.equal("new", roots[1].name)
    assert.equal("cloudinit", vim25.list(roots[1].childSnapshotList)[1].name)
    local extra = p["config.extraConfig"]
    assert.equal(fs.read("cloudinit/user-data"), hash.base64_decode(vim25.option(extra, "guestinfo.userdata")))
    assert.equal(fs.read("cloudinit/meta-data"), hash.base64_decode(vim25.option(extra, "guestinfo.metadata")))
    assert.equal("base64", vim25.option(extra, "guestinfo.userdata.encoding"))
    assert.equal("base64", vim25.option(extra, "guestinfo.metadata.encoding"))
    assert.equal("poweredOn", p["runtime.powerState"])

    -- capil ssh through the recorded guest address
    local who = capil.run({ "ssh", dir, "--", "id", "-un" })
    assert.equal(0, who.code, who.stderr)
    assert.equal(ssh.user .. "\n", who.stdout)
    -- and by VM name, through vSphere's guest IP
    who = capil.run({ "ssh", BUILD .. "-test", "--backend", "vsphere", "--var-file", varfile,
      "--var", "ssh_port=" .. ssh.port, "--user", ssh.user, "--key", key, "--", "echo", "by-name" })
    assert.equal(0, who.code, who.stderr)
    assert.equal("by-name\n", who.stdout)
    local vm1 = assert(testvm.find_vm(vc, inv, "DC0_H0_VM1"))
    if assert(vc:props(vm1, { "runtime.powerState" }))["runtime.powerState"] ~= "poweredOff" then
      assert(vc:call_task("PowerOffVM_Task", vm1, {}, 60))
    end
    local off = capil.run({ "ssh", "DC0_H0_VM1", "--backend", "vsphere", "--var-file", varfile, "--", "true" })
    assert.equal(1, off.code)
    assert.matches("vsphere VM DC0_H0_VM1 is not powered on", off.stderr, 1, true)

    -- a second run reuses the kept copy: revert to "new", the others removed,
    -- and without --keep the copy is destroyed afterwards
    r = capil.run(test_args, { timeout = 120 })
    assert.equal(0, r.code, r.stderr)
    report = json.read(dir .. "/test/report.json")
    assert.same({ created_new = false, reverted = true, removed = { "cloudinit" } }, report.snapshots)
    assert.is_false(fs.exists(dir .. "/test/vm.json"))
    local _, ferr, fcode = testvm.find_vm(vc, inv, BUILD .. "-test")
    assert.equal("ENOTFOUND", fcode, ferr)
    assert.is_true(json.read(dir .. "/report.json").test.ok)
  end)

  it("chains the test stage: --stages build,test tests the new OVA and records it in the run report", function()
    local out = tmp .. "/out-stages"
    local r = run(out, { "--stages", "test,build", "--var", "test_ssh_username=" .. ssh.user,
      "--var", "test_ssh_private_key_file=" .. key, "--var", "keep_vm=false" })
    assert.equal(0, r.code, r.stderr)
    local report = json.read(out .. "/" .. BUILD .. "/report.json")
    assert.is_true(report.ok)
    assert.is_true(report.test.ok)
    local tr = json.read(out .. "/" .. BUILD .. "/test/report.json")
    assert.equal("vsphere", tr.backend)
    assert.same({ "prepare", "boot", "login", "shutdown" }, (function()
      local ids = {}
      for _, st in ipairs(tr.steps) do ids[#ids + 1] = st.id end
      return ids
    end)())
    -- the deployed copy and (keep_vm=false) the build VM are gone
    assert.same({}, by_name(sim, BUILD .. "-test"))
    local r2 = run(out, { "--stages", "build,tset" })
    assert.equal(2, r2.code)
    assert.matches("unknown stage 'tset' (build, test, publish, upload)", r2.stderr, 1, true)
  end)

  it("capil test on a VM that never gets an IP names the VM, the backend and the timeout", function()
    local lone = vcsim.start({ username = "u", password = "p" })
    finally(function() lone:stop() end)
    local vf = tmp .. "/noip.json"
    assert(json.write(vf, { vcenter_server = lone.url, username = "u", password = "p", datacenter = "DC0",
      cluster = "DC0_C0", datastore = "LocalDS_0", insecure_connection = "true" }))
    local r = capil.run({ "test", "DC0_H0_VM1", "--backend", "vsphere", "--var-file", vf, "--output", tmp .. "/noip",
      "--var", "test_boot_timeout=3s", "--var", "test_ssh_private_key_file=" .. key }, { timeout = 60 })
    assert.equal(1, r.code)
    assert.matches("vsphere: VM DC0_H0_VM1: no usable guest IP after 3 s", r.stderr, 1, true)
    local report = json.read(tmp .. "/noip/DC0_H0_VM1/test/report.json")
    assert.is_false(report.ok)
    assert.equal("boot", report.steps[2].id)
    assert.equal("failed", report.steps[2].status)
    -- an existing VM is powered off afterwards, never destroyed
    local rr = capil.run({ "test", "DC0_H0_VM1", "--backend", "vsphere", "--var-file", vf, "--output", tmp .. "/noip",
      "--var", "test_boot_timeout=1s", "--var", "test_ssh_private_key_file=" .. key }, { timeout = 60 })
    assert.equal(1, rr.code)
    assert.same({ created_new = false, reverted = true, removed = { "cloudinit" } },
      json.read(tmp .. "/noip/DC0_H0_VM1/test/report.json").snapshots)
  end)

  it("opens a session in the REPL and reads a VM's power state", function()
    local r = capil.run({ "repl", "--no-history", "--backend", "vsphere", "--var-file", varfile }, {
      stdin = table.concat({
        'vm = vc:find("/DC0/vm/DC0_H0_VM0")',
        'vc:props(vm, {"runtime.powerState"})',
        'vc:call_task("PowerOnVM_Task", vm, {})',
        ('vim25.option(vc:props(vc:find("/DC0/vm/%s"), {"config.extraConfig"})["config.extraConfig"], '
          .. '"guestinfo.capil.test")'):format(BUILD),
        'type(vc.PowerOffVM_Task)',
      }, "\n") .. "\n", timeout = 60 })
    assert.equal(0, r.code, r.stderr)
    assert.matches("poweredOn", r.stdout, 1, true)
    assert.matches("vim25.PowerOnVM_Task: InvalidPowerState", r.stdout, 1, true)
    assert.matches("function", r.stdout, 1, true)
    assert.matches("built-by-capil", r.stdout, 1, true) -- the build VM's extraConfig
    assert.is_nil((r.stdout .. r.stderr):find(PASSWORD, 1, true))
  end)

  describe("ESXi", function()
    it("drives the esx backend through the contract over the API (ha-datacenter), and over SSH on RestrictedVersion",
      function()
      local esx_b = require("capil.backends.esx")
      assert.same({}, backend.check(esx_b))
      local esx = vcsim.start({ esx = true, username = "root", password = PASSWORD, guest_ip = "127.0.0.1",
        export_disk = vmdk })
      finally(function() esx:stop() end)
      local vf = tmp .. "/esx-contract.json"
      assert(json.write(vf, { remote_host = esx.url, remote_username = "root", remote_password = PASSWORD,
        remote_datastore = "LocalDS_0", vcenter_server = "https://ignored.invalid", datastore = "ignored" }))
      local ctx = new_ctx(esx_b, "esx-contract-vm", vf)
      assert.equal("remote_password", ctx.settings.password_var)
      assert.equal("ha-datacenter", ctx.settings.datacenter)
      assert(esx_b.steps.upload_media(ctx, { checksum = iso_sum, cache_dir = "capil_cache" }))
      assert.equal("api", ctx.state.mode)
      assert.equal("ha-datacenter", ctx.state.inv.dc_name)
      local vm = assert(esx_b.create(ctx, create_step("esx-contract-vm")))
      assert(esx_b.steps.finalize_vm(ctx, { keep_vm = false }))
      assert.is_true(vm.destroyed)

      -- a free licence: the API refuses, the build goes over SSH
      local esx_host = esxi.start({ password = PASSWORD, datastore = "LocalDS_0" })
      finally(function() esx_host.stop() end)
      local free = vcsim.start({ esx = true, restricted = true, username = "root", password = PASSWORD })
      finally(function() free:stop() end)
      local vf2 = tmp .. "/esx-contract-free.json"
      assert(json.write(vf2, { remote_host = free.url, remote_username = "root", remote_password = PASSWORD,
        remote_datastore = "LocalDS_0", remote_port = tostring(esx_host.port), remote_host_key = esx_host.fingerprint,
        remote_vnc_port = "5999", remote_poll_interval = "0.1" }))
      local fctx = new_ctx(esx_b, "esx-contract-free", vf2)
      fctx.media.cd_iso = nil
      assert(esx_b.steps.upload_media(fctx, { checksum = iso_sum, cache_dir = "capil_cache" }))
      assert.equal("ssh", fctx.state.mode)
      assert.is_true(fctx.state.restricted)
      assert.is_nil(fctx.state.vc)
      assert.equal(("/vmfs/volumes/LocalDS_0/capil_cache/%s.iso"):format(iso_sum), fctx.state.remote_iso)
      local svm = assert(esx_b.create(fctx, create_step("esx-contract-free")))
      assert.equal("1", svm.vmid)
      assert(esx_b.steps.finalize_vm(fctx, { keep_vm = false }))
      assert.matches("vim-cmd vmsvc/unregister 1", table.concat(esx_host.argv(), "\n"), 1, true)
      fctx.state.remote:close()
    end)

    it("builds on a standalone host (ha-datacenter) with --backend esx", function()
      local esx = vcsim.start({ esx = true, username = "root", password = PASSWORD, guest_ip = "127.0.0.1",
        export_disk = vmdk })
      local vf = tmp .. "/esx.json"
      assert(json.write(vf, { remote_host = esx.url, remote_username = "root", remote_password = PASSWORD,
        remote_datastore = "LocalDS_0" }))
      local ok, r = pcall(run, tmp .. "/out-esx", {}, { backend = "esx", varfile = vf })
      esx:stop()
      assert(ok, r)
      assert.equal(0, r.code, r.stderr)
      assert.is_true(fs.exists(tmp .. "/out-esx/" .. BUILD .. "/" .. BUILD .. ".ova"))
    end)

    it("builds on a free-licence host (RestrictedVersion) by falling back to SSH (vim-cmd stand-ins)", function()
      -- the same root password for hostd (the simulator) and the host's sshd
      local esx_host = esxi.start({ password = PASSWORD, datastore = "LocalDS_0" })
      local esx = vcsim.start({ esx = true, restricted = true, username = "root", password = PASSWORD })
      local rfb_port = peer.free_port()
      local rfb = peer.start({ name = "rfb-standin", port = rfb_port, log = tmp .. "/rfb.log",
        argv = { "python3", "spec/support/rfb_server.py", tostring(rfb_port), "003.007", "none", tmp .. "/keys.log" } })
      local vf = tmp .. "/esx-free.json"
      assert(json.write(vf, { remote_host = esx.url, remote_username = "root", remote_password = PASSWORD,
        remote_datastore = "LocalDS_0", remote_port = tostring(esx_host.port), remote_host_key = esx_host.fingerprint,
        remote_vnc_port = tostring(rfb_port), remote_poll_interval = "0.1", keep_vm = "false" }))
      local out = tmp .. "/out-esx-free"
      local ok, r = pcall(run, out, {}, { backend = "esx", varfile = vf })
      local argv = esx_host.argv()
      esx:stop()
      rfb.stop()
      esx_host.stop()
      assert(ok, r)
      assert.equal(0, r.code, r.stderr)
      assert.matches("RestrictedVersion", r.stderr, 1, true)
      assert.matches("building over SSH", r.stderr, 1, true)
      assert.is_true(fs.exists(out .. "/" .. BUILD .. "/" .. BUILD .. ".ova"))
      -- no NFC export on a free licence: the flat extent streamed over SFTP
      -- into the OVA in the pack step (before the VM was removed), no VMDK file
      assert.matches("is written from /vmfs/volumes/LocalDS_0/" .. BUILD .. "/" .. BUILD .. "-flat.vmdk as it downloads",
        r.stderr, 1, true)
      assert.is_false(fs.exists(out .. "/" .. BUILD .. "/" .. BUILD .. "-disk-0.vmdk"))
      local report = assert(json.read(out .. "/" .. BUILD .. "/report.json"))
      assert.is_true(report.vmdk_into_ova)
      assert.equal("capil", report.disk_writer)
      local verified = assert(require("capil.format.ova").verify(out .. "/" .. BUILD .. "/" .. BUILD .. ".ova"))
      assert.is_true(verified.ok, table.concat(verified.problems, "\n"))
      local cmds = table.concat(argv, "\n")
      local vmx = ("/vmfs/volumes/LocalDS_0/%s/%s.vmx"):format(BUILD, BUILD)
      assert.matches("vim-cmd solo/registervm " .. vmx, cmds, 1, true)
      assert.matches("vim-cmd vmsvc/unregister 1", cmds, 1, true)
      assert.is_nil((cmds .. all_text(out)):find(PASSWORD, 1, true))
    end)

    it("builds over SSH at once with remote_type=ssh, trying the vSphere export of a licensed host", function()
      local esx_host = esxi.start({ password = PASSWORD, datastore = "LocalDS_0" })
      local esx = vcsim.start({ esx = true, username = "root", password = PASSWORD, export_disk = vmdk })
      local rfb_port = peer.free_port()
      local rfb = peer.start({ name = "rfb-standin", port = rfb_port, log = tmp .. "/rfb2.log",
        argv = { "python3", "spec/support/rfb_server.py", tostring(rfb_port), "003.007", "none",
          tmp .. "/keys2.log" } })
      local vf = tmp .. "/esx-ssh.json"
      assert(json.write(vf, { remote_type = "ssh", remote_host = esx.url, remote_username = "root",
        remote_password = PASSWORD, remote_datastore = "LocalDS_0", remote_port = tostring(esx_host.port),
        remote_host_key = esx_host.fingerprint, remote_vnc_port = tostring(rfb_port), remote_poll_interval = "0.1",
        keep_vm = "false" }))
      local out = tmp .. "/out-esx-ssh"
      esx:reset_calls()
      local ok, r = pcall(run, out, {}, { backend = "esx", varfile = vf })
      local argv = esx_host.argv()
      local calls = esx:calls()
      esx:stop()
      rfb.stop()
      esx_host.stop()
      assert(ok, r)
      assert.equal(0, r.code, r.stderr)
      assert.is_nil(r.stderr:find("RestrictedVersion", 1, true))
      assert.matches("vim-cmd vmsvc/power.on 1", table.concat(argv, "\n"), 1, true)
      -- no vSphere write before the export: the build went over SSH from the start
      assert.is_nil(calls.CreateVM_Task)
      assert.is_nil(calls.MakeDirectory)
      -- the stand-in's vmid 1 is no VM of the simulator's: the export falls back to SFTP
      assert.equal(1, calls.ExportVm)
      assert.matches("downloading the disk over SFTP instead", r.stderr, 1, true)
      -- and the flat extent is written into the VMDK as it downloads (no local copy of the disk)
      assert.matches("-flat.vmdk as it downloads, with capil's VMDK writer", r.stderr, 1, true)
      assert.is_true(fs.exists(out .. "/" .. BUILD .. "/" .. BUILD .. ".ova"))
    end)

    it("names the host when a free-licence host's SSH fallback cannot connect", function()
      local esx = vcsim.start({ esx = true, restricted = true, username = "root", password = PASSWORD })
      local vf = tmp .. "/esx-free-nossh.json"
      assert(json.write(vf, { remote_host = esx.url, remote_username = "root", remote_password = PASSWORD,
        remote_datastore = "LocalDS_0", remote_port = tostring(peer.free_port()) }))
      local out = tmp .. "/out-esx-free-nossh"
      local ok, r = pcall(run, out, {}, { backend = "esx", varfile = vf })
      esx:stop()
      assert(ok, r)
      assert.equal(1, r.code)
      assert.matches("RestrictedVersion", r.stderr, 1, true)
      assert.matches("the SSH fallback failed: esx over SSH: root@127.0.0.1:", r.stderr, 1, true)
      assert.is_nil(r.stderr:find(PASSWORD, 1, true))
      capil.assert_no_leftovers(out .. "/" .. BUILD)
    end)
  end)
end)
