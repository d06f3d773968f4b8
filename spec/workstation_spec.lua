-- The Workstation/Fusion backend against a recording stand-in for vmrun and
-- vmware-vdiskmanager (spec/support/vmware_standin.lua: no VMware product
-- runs here). The disks are real VMDKs made by qemu-img behind the stand-in.
local ws = require("capil.backends.workstation")
local backend = require("capil.backend")
local build_options = require("capil.build.loader")
local standin = require("support.vmware_standin")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local proc = require("capil.sys.proc")

local RECIPES = "spec/fixtures/recipes"

local function fixture(vars, var_files)
  local r, cfg, plan = build_options.load("testos", { ["recipes-dir"] = RECIPES, backend = "workstation", var = vars,
    ["var-file"] = var_files })
  assert(r, cfg and table.concat(cfg, "\n"))
  for _, s in ipairs(plan.steps) do
    if s.kind == "create_vm" then return cfg, s, plan end
  end
  error("no create_vm step")
end

-- The backend's settings as the plan carries them.
local function settings_of(cfg, plan)
  return plan.settings or backend.plan_settings(ws, cfg)
end

-- The build VM of the fixture's create_vm step, through the contract:
-- create(ctx, step) with the stand-in's tools in ctx.state.
local function create(sd, opts)
  opts = opts or {}
  local cfg, step, plan = fixture(opts.vars, opts.var_files)
  local dir = peer.dir("ws")
  local tools = assert(ws.find_tools({ env = sd.env }))
  local ctx = { name = step.vm_name, workdir = dir, log_dir = dir, cache_dir = dir .. "/cache",
    settings = settings_of(cfg, plan), media = { iso = "/isos/installer.iso", cd_iso = opts.cd_iso },
    state = { tools = tools }, report = {} }
  local vm, err, code = ws.create(ctx, step)
  return vm, err, code, dir
end

local function join(calls) return table.concat(calls, "\n") end

describe("Workstation backend #workstation #unit", function()
  local saved_poll
  before_each(function() saved_poll = ws.IP_POLL ws.IP_POLL = 0.01 end)
  after_each(function() ws.IP_POLL = saved_poll end)

  describe("tools", function()
    it("finds vmrun and vdiskmanager on PATH, honours VMWARE_* and says what to install", function()
      local sd = standin.new()
      local t = assert(ws.find_tools({ env = sd.env, fusion_dir = "/nonexistent" }))
      assert.same({ vmrun = sd.vmrun, vdiskmanager = sd.vdiskmanager, type = "ws" }, t)

      local env = { VMWARE_VMRUN = sd.vmrun, PATH = "/nonexistent" }
      t = assert(ws.find_tools({ env = function(k) return env[k] end, fusion_dir = "/nonexistent" }))
      assert.equal(sd.vmrun, t.vmrun)
      assert.is_nil(t.vdiskmanager)

      local none, err, code = ws.find_tools({ env = function() return nil end, fusion_dir = "/nonexistent" })
      assert.is_nil(none)
      assert.equal("ENOTOOL", code)
      assert.matches("vmrun not found", err, 1, true)
      assert.matches("VMware Workstation Pro", err, 1, true)
      assert.matches("VMWARE_VMRUN", err, 1, true)

      env = { VMWARE_VMRUN = "/nonexistent/vmrun" }
      none, err, code = ws.find_tools({ env = function(k) return env[k] end })
      assert.is_nil(none)
      assert.equal("ENOTOOL", code)
      assert.matches("VMWARE_VMRUN=/nonexistent/vmrun", err, 1, true)
    end)

    it("uses -T fusion for the tools in the Fusion app bundle", function()
      local sd = standin.new()
      local bundle = sd.dir .. "/VMware Fusion.app/Contents/Library"
      assert(fs.mkdir(bundle))
      assert(fs.copy(sd.vmrun, bundle .. "/vmrun"))
      local t = assert(ws.find_tools({ env = function() return nil end, fusion_dir = bundle }))
      assert.equal(bundle .. "/vmrun", t.vmrun)
      assert.equal("fusion", t.type)
    end)

    it("--backend local picks workstation when vmrun is found, else qemu; no --backend stays qemu", function()
      local sd = standin.new()
      assert.equal("workstation", build_options.resolve_backend("local", { env = sd.env }))
      assert.equal("qemu", build_options.resolve_backend("local", { env = function() return nil end,
        fusion_dir = "/nonexistent" }))
      assert.equal("qemu", build_options.resolve_backend(nil))
      assert.equal("vsphere", build_options.resolve_backend("vsphere"))
    end)

    it("capil inspect --backend local resolves through PATH in a real child process", function()
      local sd = standin.new()
      local exe = require("capil.core.runtime").exepath()
      local function backend_of(path)
        local r = assert(proc.run({ argv = { exe, "inspect", "testos", "--recipes-dir", RECIPES, "--backend", "local" },
          env_add = { PATH = path, VMWARE_VMRUN = "" }, timeout = 60 }))
        assert.equal(0, r.code, r.stderr)
        return r.stdout:match('"backend"%s*:%s*"(%w+)"')
      end
      assert.equal("workstation", backend_of(sd.bin .. ":/usr/bin:/bin"))
      assert.equal("qemu", backend_of("/usr/bin:/bin"))
    end)
  end)

  describe("the contract", function()
    it("conforms to capil.backend and reads its settings from the plan, not the config", function()
      assert.same({}, backend.check(ws))
      assert.equal(ws, backend.get("workstation"))
      assert.same({ encoder = "rfb", export = "vdiskmanager", guest_id = "workstation" }, ws.traits)
      local cfg, _, plan = fixture({ "vnc_port_min=5990", "vnc_port_max=5999", "disk_type_id=1", "ssh_port=2222",
        "vnc_bind_address=127.0.0.2", "vnc_disable_password=true" })
      local s = settings_of(cfg, plan)
      assert.equal(5990, s.vnc_port_min)
      assert.equal(5999, s.vnc_port_max)
      assert.equal("1", s.disk_type_id)
      assert.equal(2222, s.ssh_port)
      assert.equal("127.0.0.2", s.vnc_bind_address)
      assert.is_true(s.vnc_disable_password)
      -- the defaults
      s = settings_of(fixture())
      assert.equal(5900, s.vnc_port_min)
      assert.equal(6000, s.vnc_port_max)
      assert.equal("0", s.disk_type_id)
      assert.equal(22, s.ssh_port)
      assert.equal("127.0.0.1", s.vnc_bind_address)
      assert.is_false(s.vnc_disable_password)
    end)

    it("finds the tools itself when ctx.state has none, and keeps them there", function()
      local sd = standin.new()
      local _, step, plan = fixture()
      local dir = peer.dir("wsfind")
      local saved = os.getenv
      -- find_tools reads VMWARE_VMRUN / PATH through os.getenv
      os.getenv = function(k) -- luacheck: ignore 122
        if k == "VMWARE_VMRUN" then return sd.vmrun end
        if k == "VMWARE_VDISKMANAGER" then return sd.vdiskmanager end
        return saved(k)
      end
      local ctx = { name = step.vm_name, workdir = dir, log_dir = dir, settings = plan.settings or {}, media = {},
        state = {}, report = {} }
      local ok, vm, err = pcall(ws.create, ctx, step)
      os.getenv = saved -- luacheck: ignore 122
      assert(ok, vm)
      assert(vm, err)
      assert.equal(sd.vmrun, ctx.state.tools.vmrun)
      assert.equal(ctx.state.tools, vm.tools)
      vm:destroy()
    end)
  end)

  describe(".vmx", function()
    it("has the expected keys for the fixture recipe and a disk made by vdiskmanager", function()
      local sd = standin.new()
      local vm, err = create(sd, { cd_iso = "/work/cd.iso" })
      assert(vm, err)
      local vmx = ws.vmx_parse(assert(fs.read(vm.vmx)))
      local want = {
        ["config.version"] = "8", ["virtualHW.version"] = "15", guestOS = "debian12-64", displayName = vm.name,
        numvcpus = "2", ["cpuid.coresPerSocket"] = "1", memsize = "1024", firmware = "bios",
        ["scsi0.present"] = "TRUE", ["scsi0.virtualDev"] = "pvscsi",
        ["scsi0:0.present"] = "TRUE", ["scsi0:0.fileName"] = vm.name .. ".vmdk",
        ["ide1:0.present"] = "TRUE", ["ide1:0.deviceType"] = "cdrom-image", ["ide1:0.fileName"] = "/isos/installer.iso",
        ["ide1:1.present"] = "TRUE", ["ide1:1.deviceType"] = "cdrom-image", ["ide1:1.fileName"] = "/work/cd.iso",
        ["ethernet0.present"] = "TRUE", ["ethernet0.virtualDev"] = "vmxnet3", ["ethernet0.connectionType"] = "nat",
        ["serial0.present"] = "TRUE", ["serial0.fileType"] = "file", ["serial0.fileName"] = vm.serial_log,
        ["RemoteDisplay.vnc.enabled"] = "TRUE", ["RemoteDisplay.vnc.ip"] = "127.0.0.1",
      }
      for k, v in pairs(want) do assert.equal(v, vmx[k], k) end
      assert.is_nil(vmx["ethernet0.networkName"])
      local port = tonumber(vmx["RemoteDisplay.vnc.port"])
      assert.is_true(port >= 5900 and port <= 6000)
      assert.equal(vm.vnc.port, port)
      assert.matches("^%w%w%w%w%w%w%w%w$", vmx["RemoteDisplay.vnc.password"])
      assert.equal(vm.vnc.password, vmx["RemoteDisplay.vnc.password"])
      -- written atomically: no temp file left
      for _, n in ipairs(fs.list(vm.dir)) do assert.not_matches("%.tmp", n) end
      -- the disk, through vdiskmanager, a real VMDK
      assert.same({ ("vmware-vdiskmanager | -c | -s | 3072MB | -a | lsilogic | -t | 0 | %s"):format(vm.disk) },
        sd.calls())
      assert.matches("^KDMV", fs.read(vm.disk):sub(1, 4))
      vm:destroy()
    end)

    it("follows network, lsilogic, disk_type_id, vnc_* and configuration_parameters", function()
      local sd = standin.new()
      local vf = sd.dir .. "/vars.json"
      assert(fs.write(vf, '{"configuration_parameters": {"guestinfo.test": "a\\"b"}}'))
      local vm, err = create(sd, { vars = { "network=VM Network", "disk_controller_type=lsilogic", "disk_type_id=1",
        "vnc_port_min=5990", "vnc_port_max=5999", "vnc_disable_password=true", "vmx_version=19", "cpus=4" },
        var_files = { vf } })
      assert(vm, err)
      local vmx = ws.vmx_parse(assert(fs.read(vm.vmx)))
      assert.equal("VM Network", vmx["ethernet0.networkName"])
      assert.is_nil(vmx["ethernet0.connectionType"])
      assert.equal("lsilogic", vmx["scsi0.virtualDev"])
      assert.equal("19", vmx["virtualHW.version"])
      assert.equal("4", vmx.numvcpus)
      assert.is_nil(vmx["RemoteDisplay.vnc.password"])
      assert.is_nil(vm.vnc.password)
      local port = tonumber(vmx["RemoteDisplay.vnc.port"])
      assert.is_true(port >= 5990 and port <= 5999)
      assert.equal('a"b', vmx["guestinfo.test"])
      assert.matches('guestinfo.test = "a|22b"', fs.read(vm.vmx), 1, true)
      assert.matches("| -t | 1 |", sd.calls()[1], 1, true)
      vm:destroy()
    end)

    it("keeps the VNC password out of the log", function()
      local sd = standin.new()
      local dir = peer.dir("wslog")
      local close = assert(log.add_file(dir .. "/build.log"))
      local vm, err = create(sd)
      assert(vm, err)
      assert(vm:start())
      vm:destroy()
      close()
      local text = fs.read(dir .. "/build.log")
      assert.matches(vm.name, text, 1, true)
      assert.not_matches(vm.vnc.password, text, 1, true)
      assert.equal("x ****", log.redact("x " .. vm.vnc.password))
    end)
  end)

  describe("vmrun", function()
    it("runs create, start, IP, stop and export in order with the documented command lines", function()
      local sd = standin.new({ ip_after = 3, ip = "192.168.56.101" })
      local vm, err, _, dir = create(sd)
      assert(vm, err)
      assert(vm:start())
      assert.same({ vm.vmx }, sd.running())
      assert.is_true(vm:alive())
      local addr = assert(vm:ssh_address(30))
      assert.same({ host = "192.168.56.101", port = 22 }, addr)
      assert(vm:power_off(5))
      assert.same({}, sd.running())
      local out = dir .. "/out/" .. vm.name .. "-disk-0.vmdk"
      assert(fs.mkdir(dir .. "/out"))
      -- with vdiskmanager, vdiskmanager exports, whatever disk_writer says
      assert.same({ writer = "vdiskmanager" }, vm:export(out, { disk_writer = "capil" }))
      assert.matches('createType="streamOptimized"', fs.read(out), 1, true)
      assert.is_false(fs.exists(dir .. "/out/" .. vm.name .. "-disk-0.tmp.vmdk"))
      local v = vm.vmx
      local T = "vmrun | -T | ws | "
      local ip_call = T .. "getGuestIPAddress | " .. v
      assert.same({
        ("vmware-vdiskmanager | -c | -s | 3072MB | -a | lsilogic | -t | 0 | %s"):format(vm.disk),
        T .. "start | " .. v .. " | nogui",
        T .. "list",
        ip_call, T .. "list", ip_call, T .. "list", ip_call, T .. "list", ip_call,
        T .. "list",
        T .. "stop | " .. v .. " | soft",
        T .. "list",
        ("vmware-vdiskmanager | -r | %s | -t | 5 | %s/out/%s-disk-0.tmp.vmdk"):format(vm.disk, dir, vm.name),
      }, sd.calls())
      -- cleanup: deleteVM and the directory gone
      vm:destroy()
      assert.is_false(fs.exists(vm.dir))
      local calls = sd.calls()
      assert.equal(T .. "deleteVM | " .. v, calls[#calls])
    end)

    it("types the boot command into the VNC port the .vmx names", function()
      -- the VM's VNC server is played by spec/support/rfb_server.py (a
      -- labelled RFB stand-in without auth: hence vnc_disable_password)
      local sd = standin.new()
      local port = peer.free_port()
      local vm = assert(create(sd, { vars = { "vnc_disable_password=true", "vnc_port_min=" .. port,
        "vnc_port_max=" .. port } }))
      assert.equal(tostring(port), ws.vmx_parse(fs.read(vm.vmx))["RemoteDisplay.vnc.port"])
      local dir = peer.dir("wsrfb")
      local server = peer.start({ name = "rfb-standin", port = port, log = dir .. "/server.log",
        argv = { "python3", "spec/support/rfb_server.py", tostring(port), "003.007", "none", dir .. "/keys.log" } })
      finally(server.stop)
      local events = assert(require("capil.build.bootcmd").parse("ok<enter>"))
      assert.is_true(vm:type_keys(events, 0))
      -- the stand-in logs what it has read; wait for all of it, then compare
      local want, got = "1 6f\n0 6f\n1 6b\n0 6b\n1 ff0d\n0 ff0d\n", ""
      for _ = 1, 100 do
        got = fs.read(dir .. "/keys.log") or ""
        if #got >= #want then break end
        require("capil.core.runtime").sleep(0.05)
      end
      assert.equal(want, got)
      vm:destroy()
    end)

    it("starts with gui when headless=false", function()
      local sd = standin.new()
      local vm = assert(create(sd, { vars = { "headless=false" } }))
      assert(vm:start())
      assert.equal("vmrun | -T | ws | start | " .. vm.vmx .. " | gui", sd.calls()[2])
      vm:destroy()
    end)

    it("stops hard on cleanup when the VM still runs, and the cleanup stack does it", function()
      local sd = standin.new()
      local vm = assert(create(sd))
      assert(vm:start())
      assert.equal(1, #sd.running())
      sd.reset_calls()
      vm.cleanup:run()
      assert.same({}, sd.running())
      local T = "vmrun | -T | ws | "
      assert.same({ T .. "list", T .. "stop | " .. vm.vmx .. " | hard", T .. "deleteVM | " .. vm.vmx }, sd.calls())
      assert.is_false(fs.exists(vm.dir))
    end)

    it("names the VM and workstation when no IP comes in time", function()
      local sd = standin.new({ ip_after = 100000 })
      local vm = assert(create(sd))
      assert(vm:start())
      local addr, err, code = vm:ssh_address(0.2)
      assert.is_nil(addr)
      assert.equal("ETIMEDOUT", code)
      assert.matches("workstation: " .. vm.name .. " reported no IP address within 0.2 s", err, 1, true)
      assert.matches("VMware Tools are not running", err, 1, true)
      vm:destroy()
    end)

    it("stops waiting for the IP when the VM is no longer running", function()
      local sd = standin.new({ ip_after = 100000 })
      local vm = assert(create(sd))
      local addr, err, code = vm:ssh_address(30)
      assert.is_nil(addr)
      assert.equal("EVMRUN", code)
      assert.matches("stopped before it reported an IP address", err, 1, true)
      vm:destroy()
    end)

    -- The export step's options, as the pipeline passes them.
    local function export_opts(vars)
      local _, _, plan = fixture(vars)
      for _, st in ipairs(plan.steps) do
        if st.kind == "export_disk" then
          return { adapter_type = st.adapter_type, hwversion = st.hwversion, disk_writer = st.disk_writer }
        end
      end
    end

    -- Puts data into the VM's (monolithicSparse) disk, as the guest would
    -- have: a raw image with a few written places, converted over it.
    local function fill(vm, dir)
      local raw = dir .. "/guest.raw"
      local r = assert(proc.run({ argv = { "qemu-img", "create", "-q", "-f", "raw", raw, "3072M" } }))
      assert.equal(0, r.code, r.stderr)
      local f = assert(io.open(raw, "r+b"))
      f:seek("set", 7 * 1024 * 1024)
      f:write(require("capil.sys.hash").random(300000))
      f:seek("set", 2000 * 1024 * 1024)
      f:write(("ws"):rep(5000))
      f:close()
      fs.remove(vm.disk)
      r = assert(proc.run({ argv = { "qemu-img", "convert", "-f", "raw", "-O", "vmdk", raw, vm.disk } }))
      assert.equal(0, r.code, r.stderr)
      return raw
    end

    local function assert_same_disk(raw, out)
      local chk = assert(proc.run({ argv = { "qemu-img", "check", out }, timeout = 120 }))
      assert.equal(0, chk.code, chk.stdout .. chk.stderr)
      local cmp = assert(proc.run({ argv = { "qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, out },
        timeout = 120 }))
      assert.equal(0, cmp.code, cmp.stdout .. cmp.stderr)
    end

    it("falls back to capil's VMDK writer when vmware-vdiskmanager is absent (disk_writer capil, the default)",
      function()
      local sd = standin.new({ vdiskmanager = false })
      local vm, err, _, dir = create(sd)
      assert(vm, err)
      assert.is_nil(vm.tools.vdiskmanager)
      assert.matches("^KDMV", fs.read(vm.disk):sub(1, 4))
      local raw = fill(vm, dir)
      local opts = export_opts()
      assert.equal("capil", opts.disk_writer)
      local out = dir .. "/d.vmdk"
      local r = vm:export(out, opts)
      assert.same({ writer = "capil", sha256 = assert(require("capil.sys.hash").file(out, "sha256")) }, r)
      assert.is_true(assert(require("capil.format.vmdk").read_header(out)).stream_optimized)
      assert_same_disk(raw, out)
      assert.is_nil(join(sd.calls()):find("vdiskmanager", 1, true))
      -- the raw temp is gone
      for _, name in ipairs(fs.list(dir)) do assert.falsy(name:find("%.part"), name) end
      -- a failure names the disk, with the backend's code
      fs.remove(vm.disk)
      local ok, ferr, code = vm:export(dir .. "/e.vmdk", opts)
      assert.is_nil(ok)
      assert.equal("EVDISK", code)
      assert.matches("workstation: exporting " .. vm.disk, ferr, 1, true)
      assert.is_false(fs.exists(dir .. "/e.vmdk"))
      vm:destroy()
    end)

    it("falls back to qemu-img convert under disk_writer=qemu-img", function()
      local sd = standin.new({ vdiskmanager = false })
      local vm, err, _, dir = create(sd, { vars = { "disk_writer=qemu-img" } })
      assert(vm, err)
      local raw = fill(vm, dir)
      local opts = export_opts({ "disk_writer=qemu-img" })
      assert.equal("qemu-img", opts.disk_writer)
      local out = dir .. "/d.vmdk"
      assert.same({ writer = "qemu-img" }, vm:export(out, opts))
      assert.matches('createType="streamOptimized"', fs.read(out), 1, true)
      assert_same_disk(raw, out)
      assert.is_nil(join(sd.calls()):find("vdiskmanager", 1, true))
      vm:destroy()
    end)
  end)

  describe("prepare_test", function()
    local data = { dir = "x", userdata = "#cloud-config\nusers: []\n", metadata = "instance-id: t1\n" }

    it("takes new, 2cpu and cloudinit with the .vmx edits between, and a second call changes nothing", function()
      local sd = standin.new()
      local vm = assert(create(sd, { vars = { "cpus=1" } }))
      local tools = vm.tools
      sd.reset_calls()
      local done = assert(ws.prepare_test(vm.vmx, data, { tools = tools }))
      assert.same({ new = true, cpus = true, guestinfo = true }, done)
      assert.same({ "new", "2cpu", "cloudinit" }, sd.snapshots())
      local vmx = ws.vmx_parse(fs.read(vm.vmx))
      assert.equal("2", vmx.numvcpus)
      assert.equal("base64", vmx["guestinfo.userdata.encoding"])
      assert.equal(data.userdata, require("capil.sys.hash").base64_decode(vmx["guestinfo.userdata"]))
      local T = "vmrun | -T | ws | "
      assert.same({ T .. "listSnapshots | " .. vm.vmx, T .. "snapshot | " .. vm.vmx .. " | new",
        T .. "snapshot | " .. vm.vmx .. " | 2cpu", T .. "snapshot | " .. vm.vmx .. " | cloudinit" }, sd.calls())

      local before = fs.read(vm.vmx)
      done = assert(ws.prepare_test(vm.vmx, data, { tools = tools }))
      assert.same({ new = false, cpus = false, guestinfo = false }, done)
      assert.same({ "new", "2cpu", "cloudinit" }, sd.snapshots())
      assert.equal(before, fs.read(vm.vmx))
      vm:destroy()
    end)

    it("test hooks: a test VM from the exported disk, prepared; record; finish removes it", function()
      local sd = standin.new()
      local built = assert(create(sd))
      local build = peer.dir("wstest") .. "/img-kube-v1"
      assert(fs.mkdir(build))
      local out = build .. "/img-kube-v1-disk-0.vmdk"
      assert(built:export(out))
      built:destroy()
      local cfg, step, plan = fixture()
      local t = assert(require("capil.test.imagetest").resolve_target(build, "workstation"))
      local run = { target = t, settings = settings_of(cfg, plan), work = build .. "/test/vm", test_dir = build .. "/test",
        keep = false, data = data, state = { tools = built.tools }, report = {},
        vm_settings = { cpus = step.cpus, memory_mb = step.memory_mb, cores_per_socket = step.cores_per_socket,
          guest_os = step.guest_os, firmware = step.firmware, vmx_version = step.vmx_version,
          disk_controller = step.disk_controller, network_card = step.network_card, network = step.network } }
      assert(fs.mkdir(run.work))
      sd.reset_calls()
      assert(ws.test.prepare(run))
      local vm = run.vm
      assert.equal("img-kube-v1-test", vm.name)
      local calls = sd.calls()
      assert.equal(("vmware-vdiskmanager | -r | %s | -t | 0 | %s"):format(fs.realpath(out), vm.disk), calls[1])
      assert.matches("^KDMV", fs.read(vm.disk):sub(1, 4))
      local vmx = ws.vmx_parse(fs.read(vm.vmx))
      assert.equal("FALSE", vmx["ide1:0.present"])
      assert.is_nil(vmx["ide1:0.fileName"])
      assert.equal("2048", vmx.memsize) -- at least 2 GiB for the test
      assert.equal("debian12-64", vmx.guestOS)
      assert.equal("base64", vmx["guestinfo.metadata.encoding"])
      assert.same({ new = true, cpus = false, guestinfo = true }, run.report.snapshots)
      assert.same({ backend = "workstation", name = vm.name, vmx = vm.vmx }, ws.test.record(run))
      assert(vm:start())
      assert.is_true(ws.test.finish(run))
      assert.same({}, sd.running())
      assert.is_false(fs.exists(vm.dir))
      -- kept: nothing stopped, nothing removed
      run.vm, run.keep, run.report = nil, true, {}
      assert(ws.test.prepare(run))
      assert.is_true(ws.test.finish(run))
      assert.is_true(fs.exists(run.vm.vmx))
      assert.is_nil(run.vm.cleanup)
      run.vm:destroy()
    end)

    it("skips 2cpu when the VM already has 2 vCPUs", function()
      local sd = standin.new()
      local vm = assert(create(sd)) -- the fixture has 2 CPUs
      local done = assert(ws.prepare_test(vm.vmx, data, { tools = vm.tools }))
      assert.same({ new = true, cpus = false, guestinfo = true }, done)
      assert.same({ "new", "cloudinit" }, sd.snapshots())
      vm:destroy()
    end)
  end)
end)

-- A whole `capil run --backend workstation` through the stand-ins: vmrun and
-- vmware-vdiskmanager recorded (spec/support/vmware_standin.lua), the VM's
-- console an RFB stand-in on the .vmx's VNC port (typed keys recorded), the
-- guest IP leading to a real sshd that is provisioned over SSH, the disk
-- exported with the vdiskmanager stand-in and packed into an OVA.
describe("a Workstation build end to end through the stand-ins #workstation", function()
  it("creates, starts, types over VNC, provisions, stops, exports and packs", function()
    local sshd = require("support.sshd")
    local buildenv = require("support.buildenv")
    local capil = require("support.capil")
    local json = require("capil.sys.json")
    local sd = standin.new({ ip_after = 1, ip = "127.0.0.1", display = true })
    finally(function() sd.stop_display() end)
    local tmp = require("support.peer").dir("ws-build")
    local key = sshd.keygen(tmp, "build_ed25519")
    local guest = sshd.start({ authorized = { key } })
    finally(function() guest.stop() end)
    local iso, iso_sum = buildenv.iso(tmp)
    local out = tmp .. "/out"
    local r = capil.run({ "run", "spec/fixtures/recipes/vsphere.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "workstation", "--output", out, "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. iso_sum,
      "--var", "ssh_private_key_file=" .. key, "--var", "ssh_port=" .. guest.port, "--var", "ssh_username=" .. guest.user,
      "--var", "probe_file=" .. tmp .. "/probe", "--var", "vnc_disable_password=true", "--var", "boot_wait=0s" },
      { timeout = 180, env_add = { VMWARE_VMRUN = sd.vmrun, VMWARE_VDISKMANAGER = sd.vdiskmanager,
        XDG_CACHE_HOME = tmp .. "/cache" } })
    local dir = out .. "/vsphere-fixture-kube-v1.16.14"
    assert.equal(0, r.code, r.stderr .. (fs.read(dir .. "/logs/build.log") or ""))
    assert.is_true(fs.exists(tmp .. "/probe"), "the probe role did not run over SSH")
    local v = capil.run({ "ova", "verify", dir .. "/vsphere-fixture-kube-v1.16.14.ova" })
    assert.equal(0, v.code, v.stdout .. v.stderr)
    local report = json.read(dir .. "/report.json")
    assert.is_true(report.ok)
    -- vdiskmanager exported (tool time), as disk_writer applies only without it
    assert.equal("vdiskmanager", report.disk_writer)
    for _, st in ipairs(report.steps) do
      if st.kind == "export_disk" then assert.equal("tool", st.class) end
    end
    -- the boot command reached the console: Return pressed and released
    local keys = table.concat(sd.keys(), "\n")
    assert.matches("1 ff0d", keys, 1, true)
    assert.matches("0 ff0d", keys, 1, true)
    local calls = table.concat(sd.calls(), "\n")
    for _, want in ipairs({ "vmware-vdiskmanager | -c | -s | 1024MB", "vmrun | -T | ws | start | ",
      "vmrun | -T | ws | getGuestIPAddress | ", "vmware-vdiskmanager | -r | ", "vmrun | -T | ws | deleteVM | " }) do
      assert.matches(want, calls, 1, true)
    end
    assert.same({}, sd.running())
  end)
end)
