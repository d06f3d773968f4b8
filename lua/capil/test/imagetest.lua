--- capil.test.imagetest — `capil test`: boots a built image with the test
--- cloud-init data (cloudinit/), logs in as capv with the test key, runs the
--- suites (capil.test.suites) over SSH, and records every step in
--- <build>/test/report.json and <build>/test/junit.xml. Replaces
--- image-builder's image-post-create-config.sh, image-govc-cloudinit.sh and
--- the manual steps of "Testing Images".
---
--- QEMU: the build's VMDK (or the OVA's disk) under a copy-on-write qcow2
--- overlay, with a NoCloud seed ISO; the build output is never modified.
--- vSphere/ESXi: the OVA deployed as <build>-test (or an existing VM by
--- name), snapshot `new` made or reverted to, guestinfo.userdata/metadata set,
--- snapshot `cloudinit`, power on, guest IP. Afterwards the VM is powered off
--- and a deployed copy destroyed, unless `keep`; a kept VM is recorded in
--- test/vm.json for `capil ssh`.
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")
local proc = require("capil.sys.proc")
local cleanup = require("capil.sys.cleanup")
local cloudinit = require("capil.test.cloudinit")
local guest = require("capil.build.guest")
local schema = require("capil.build.schema")
local bootcmd = require("capil.build.bootcmd")

local M = {}

local function fail(msg, code) return nil, msg, code or "ETEST" end

local function is_dir(p)
  local st = fs.stat(p)
  return st and st.type == "directory"
end

-- The files of `dir` whose names end with `suffix`, sorted.
local function files_ending(dir, suffix)
  local out = {}
  for _, n in ipairs(fs.list(dir) or {}) do
    if n:sub(-#suffix) == suffix then out[#out + 1] = dir .. "/" .. n end
  end
  table.sort(out)
  return out
end

--- What `target` names: a build directory, an OVA, or (vSphere, ESXi) a VM.
--- Returns {kind = "build"|"ova"|"vm", name, dir (the build dir, if any),
--- vmdk, ova, test_dir} or nil and a message.
---@param target string
---@param backend string
---@param output_root? string where results of a VM-name target go (default output)
function M.resolve_target(target, backend, output_root)
  local remote = backend == "vsphere" or backend == "esx"
  if is_dir(target) then
    local dir = target:gsub("/+$", "")
    local t = { kind = "build", dir = dir, name = fs.basename(dir), test_dir = dir .. "/test" }
    t.vmdk = files_ending(dir, "-disk-0.vmdk")[1] or files_ending(dir, ".vmdk")[1]
    t.ova = files_ending(dir, ".ova")[1]
    if not (t.vmdk or t.ova) then
      return nil, ("test: %s holds no .vmdk or .ova: is it a build's output directory "
        .. "(output/<name>-kube-<version>/)?"):format(dir)
    end
    if remote and not t.ova then return nil, ("test: %s holds no .ova to deploy"):format(dir) end
    return t
  end
  local st = fs.stat(target)
  if st and target:match("%.ova$") then
    local name = fs.basename(target):gsub("%.ova$", "")
    local dir = fs.dirname(target)
    if fs.basename(dir) ~= name then dir = (output_root or "output") .. "/" .. name end
    return { kind = "ova", ova = target, name = name, test_dir = dir .. "/test",
      dir = fs.exists(dir .. "/report.json") and dir or nil }
  end
  if st then return nil, ("test: %s is neither a build directory nor an .ova file"):format(target) end
  if remote then
    return { kind = "vm", name = target, test_dir = (output_root or "output") .. "/" .. target .. "/test" }
  end
  return nil, ("test: %s: no such build directory or OVA (a VM name needs --backend vsphere or esx)"):format(target)
end

--- The suite settings (the tests.* schema fields by variable name) from a
--- configuration.
function M.settings(cfg)
  local s = {}
  for _, f in ipairs(schema.fields) do
    if f.path:match("^tests%.") and f.var then s[f.var] = cfg:get(f.var) end
  end
  return s
end

-- ====================================================================== --
-- Backends                                                               --
-- ====================================================================== --

local Q = {} -- QEMU

-- The disk to boot: the build's VMDK, or the OVA's first disk extracted
-- into the test directory (removed afterwards).
local function qemu_disk(t, work)
  if t.vmdk then return fs.realpath(t.vmdk) end
  local ova = require("capil.format.ova")
  local members, err, code = ova.members(t.ova)
  if not members then return nil, err, code end
  local disk
  for _, m in ipairs(members) do if m.name:match("%.vmdk$") then disk = m break end end
  if not disk then return fail(("test: %s holds no .vmdk disk"):format(t.ova), "EOVA") end
  -- a name capil chose: the member's own name is the OVA author's
  local path = work .. "/disk-1.vmdk"
  local src = assert(io.open(t.ova, "rb"))
  local dst, oerr = io.open(path .. ".tmp", "wb")
  if not dst then src:close() return fail("test: " .. tostring(oerr), "EIO") end
  src:seek("set", disk.offset)
  local left = disk.size
  while left > 0 do
    local chunk = src:read(math.min(left, 4 << 20))
    if not chunk then break end
    dst:write(chunk)
    left = left - #chunk
  end
  src:close()
  dst:close()
  if left > 0 then
    fs.remove(path .. ".tmp")
    return fail(("test: %s: %s is truncated"):format(t.ova, disk.name), "EOVA")
  end
  assert(fs.rename(path .. ".tmp", path))
  log.info("test: extracted %s from %s", disk.name, t.ova)
  return path
end

function Q.prepare(run)
  local t, cfg = run.target, run.cfg
  local work = run.work
  local disk, err, code = qemu_disk(t, work)
  if not disk then return nil, err, code end
  local overlay = work .. "/disk.qcow2"
  fs.remove(overlay)
  local r
  r, err, code = proc.run({ argv = { "qemu-img", "create", "-q", "-f", "qcow2", "-F", "vmdk", "-b", disk, overlay },
    timeout = 120 })
  if not r then return nil, "test: qemu-img create: " .. err, code end
  if r.code ~= 0 then return fail(("test: qemu-img create on %s: %s"):format(disk, r.stderr), "EQEMU") end
  local seed
  seed, err, code = cloudinit.seed_iso(run.data, work .. "/cidata.iso")
  if not seed then return nil, err, code end
  local qemu = require("capil.backends.qemu")
  local accel, why = qemu.accel(cfg:get("build.qemu_accel"), run.cache_dir)
  log.info("test: accelerator %s (%s)", accel, why)
  local devices = require("capil.build.plan").qemu_devices(cfg)
  local vm
  vm, err, code = qemu.create({
    workdir = work, log_dir = run.test_dir, name = t.name .. "-test", disk = overlay, disk_format = "qcow2",
    cpus = math.max(2, cfg:get("hardware.cpus") or 1), memory_mb = math.max(2048, cfg:get("hardware.memory") or 0),
    accel = accel, extra_cdroms = { seed }, daemon = run.keep,
    -- the hardware the OVA declares, as a vSphere deployment presents it
    disk_interface = devices.disk, network_card = devices.nic,
  })
  if not vm then return nil, err, code end
  run.vm = vm
  return true
end

function Q.record(run)
  local vm = run.vm
  return { backend = "qemu", name = vm.name, pid = vm.process and vm.process.pid, workdir = run.work,
    serial_log = vm.serial_log, qmp = vm.qmp_path }
end

function Q.finish(run)
  local vm = run.vm
  if not vm then return true end
  if run.keep then
    if vm.process then vm.process:detach() end
    if vm.cleanup then vm.cleanup:cancel() vm.cleanup = nil end
    if vm.qmp then vm.qmp:close() vm.qmp = nil end
    return true
  end
  -- a guest that never came up gets no ACPI grace period
  local ok = true
  if run.logged_in then ok = vm:power_off(60) end
  vm:kill()
  return ok or fail(vm.name .. ": QEMU would not stop")
end

local V = {} -- vSphere and ESXi

function V.prepare(run)
  local t = run.target
  local b = require("capil.backends." .. run.backend)
  local s, err = b.settings(run.cfg, run.backend)
  if not s then return fail(err, "ECONFIG") end
  local vc, code
  vc, err, code = b.connect(s)
  if not vc then return nil, err, code end
  run.vc = vc
  local inv
  inv, err, code = b.resolve(vc, s)
  if not inv then return nil, err, code end
  local name = t.kind == "vm" and t.name or (run.cfg:get("test_vm_name") or (t.name .. "-test"))
  local ref = b.find_vm(vc, inv, name)
  run.deployed = t.kind ~= "vm"
  if ref then
    log.info("test: using the existing VM %s (%s)", name, tostring(ref))
  elseif t.kind == "vm" then
    return b.find_vm(vc, inv, name) -- its message lists what exists
  else
    log.info("test: deploying %s as %s", t.ova, name)
    local vm
    vm, err, code = b.import(vc, inv, t.ova, { name = name })
    if not vm then return nil, err, code end
    ref = vm.ref
  end
  local vm = b.attach(vc, inv, s, ref, name)
  run.vm = vm
  if run.deployed then
    vm.cleanup = cleanup.push(("VM %s (%s) on %s"):format(name, tostring(ref), vc.server), function() vm:destroy() end)
  end
  local snap
  snap, err, code = b.cloudinit(vc, ref, { userdata = run.data.userdata, metadata = run.data.metadata, name = name })
  if not snap then return nil, err, code end
  run.report.snapshots = snap
  return true
end

function V.record(run)
  local vm = run.vm
  return { backend = run.backend, name = vm.name, ref = tostring(vm.ref), server = run.vc and run.vc.server }
end

function V.finish(run)
  local vm = run.vm
  if not vm then return true end
  if run.keep then
    if vm.cleanup then vm.cleanup:cancel() vm.cleanup = nil end
    return true
  end
  local ok, err, code = vm:power_off(60)
  if ok and run.deployed then ok, err, code = vm:destroy() end
  return ok, err, code
end

local W = {} -- Workstation and Fusion

-- A test VM of its own from the built disk, then image-post-create-config.sh:
-- snapshots new, 2cpu and cloudinit with the guestinfo lines in the .vmx.
function W.prepare(run)
  local t, cfg = run.target, run.cfg
  local ws = require("capil.backends.workstation")
  local disk, err, code = qemu_disk(t, run.work)
  if not disk then return nil, err, code end
  local vm
  vm, err, code = ws.create({ workdir = run.work, name = t.name .. "-test", log_dir = run.test_dir, cfg = cfg,
    source_disk = disk, step = {
      cpus = math.max(2, cfg:get("hardware.cpus") or 1), cores_per_socket = cfg:get("hardware.cores"),
      memory_mb = math.max(2048, cfg:get("hardware.memory") or 0),
      guest_os = cfg:get("guest_os.workstation") or "other-64", vmx_version = cfg:get("hardware.vmx_version"),
      firmware = cfg:get("hardware.firmware"), disk_controller = cfg:get("hardware.disk_controller"),
      network_card = cfg:get("hardware.network_card"), network = cfg:get("build.network"),
    } })
  if not vm then return nil, err, code end
  run.vm, run.deployed = vm, true
  local snap
  snap, err, code = ws.prepare_test(vm.vmx, run.data, { tools = vm.tools })
  if not snap then return nil, err, code end
  run.report.snapshots = snap
  return true
end

function W.record(run)
  return { backend = "workstation", name = run.vm.name, vmx = run.vm.vmx }
end

-- the test VM is always capil's own copy: stopped and removed like a deployed one
W.finish = V.finish

local BACKENDS = { qemu = Q, vsphere = V, esx = V, workstation = W }

-- ====================================================================== --
-- The run                                                                --
-- ====================================================================== --

local xml_escape = require("capil.sys.xml").escape_attr_lossy

--- JUnit XML of a test report: one testsuite for capil's own steps (prepare,
--- boot, login, shutdown) and one per suite, a testcase per step.
function M.junit(report)
  local groups = { { name = "capil-test", steps = {} } }
  for _, s in ipairs(report.steps) do
    if not s.suite then table.insert(groups[1].steps, { name = s.id, ok = s.status == "ok", seconds = s.seconds,
      detail = s.error }) end
  end
  for _, su in ipairs(report.suites or {}) do groups[#groups + 1] = { name = su.name, steps = su.steps or {} } end
  local out = { '<?xml version="1.0" encoding="UTF-8"?>' }
  local total, failed = 0, 0
  local body = {}
  for _, g in ipairs(groups) do
    local n, f, secs = #g.steps, 0, 0
    for _, st in ipairs(g.steps) do
      if not st.ok then f = f + 1 end
      secs = secs + (st.seconds or 0)
    end
    total, failed = total + n, failed + f
    body[#body + 1] = ('  <testsuite name="%s" tests="%d" failures="%d" errors="0" time="%.3f">'):format(
      xml_escape(g.name), n, f, secs)
    for _, st in ipairs(g.steps) do
      body[#body + 1] = ('    <testcase classname="%s" name="%s" time="%.3f">'):format(xml_escape(g.name),
        xml_escape(st.name), st.seconds or 0)
      if not st.ok then
        body[#body + 1] = ('      <failure message="%s"/>'):format(xml_escape(log.redact(st.detail or "failed")))
      end
      body[#body + 1] = "    </testcase>"
    end
    body[#body + 1] = "  </testsuite>"
  end
  out[#out + 1] = ('<testsuites name="capil test %s" tests="%d" failures="%d">'):format(
    xml_escape(report.target or ""), total, failed)
  for _, l in ipairs(body) do out[#out + 1] = l end
  out[#out + 1] = "</testsuites>"
  return table.concat(out, "\n") .. "\n"
end

-- Waits for cloud-init to finish (its status goes into the report: errors
-- in other modules are the image's business, not a reason to stop) and
-- checks the login user's passwordless sudo, which the suites rely on.
local function login_checks(session, user, report)
  local r, err = session:exec("id -un", { timeout = 30 })
  if not r then return nil, err end
  local who = r.stdout:gsub("%s+$", "")
  if who ~= user then return nil, ("logged in as %s, expected %s"):format(who, user) end
  r = session:exec("if command -v cloud-init >/dev/null; then cloud-init status --wait; else exit 127; fi",
    { timeout = 900 })
  if r and r.code ~= 127 then
    report.cloud_init = r.stdout:match("status:%s*(%S+)") or ("exit " .. r.code)
    if r.code ~= 0 then log.warn("test: cloud-init reports %s", report.cloud_init) end
  end
  if who == "root" then return true end -- a test user of one's own needs no sudo
  r, err = session:exec("sudo -n true", { timeout = 60 })
  if not r then return nil, err end
  if r.code ~= 0 then
    return nil, ("%s has no passwordless sudo (exit %d): %s"):format(user, r.code,
      (r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", ""):sub(-400))
  end
  return true
end

--- Runs a test. o: target (build dir, OVA or VM name), backend, cfg (a
--- capil.build.config Config: tests.*, hardware, vsphere settings), suites (list;
--- default the cfg's test_suites), keep, cache_dir, output_root.
--- Returns the report (report.ok), or nil and a message when the target
--- itself is wrong (nothing was started).
function M.run(o)
  local impl = BACKENDS[o.backend]
  if not impl then
    return fail(("test: backend %s cannot run tests in this capil (qemu, vsphere, esx, workstation)"):format(
      o.backend), "ENOTSUP")
  end
  local t, terr = M.resolve_target(o.target, o.backend, o.output_root)
  if not t then return fail(terr, "EUSAGE") end
  local cfg = o.cfg
  local names = o.suites or cfg:get("test_suites") or {}
  local suites = require("capil.test.suites")
  for _, n in ipairs(names) do
    local known = false
    for _, k in ipairs(suites.NAMES) do if k == n then known = true end end
    if not known then
      return fail(("test: unknown suite '%s' (%s)"):format(n, table.concat(suites.NAMES, ", ")), "EUSAGE")
    end
  end
  local dir = cfg:get("cloudinit_dir")
  local data, derr, dcode = cloudinit.load(dir)
  if not data then return nil, derr, dcode end
  local key, kerr, kcode = cloudinit.key(dir, cfg:get("test_ssh_private_key_file"))
  if not key then return nil, kerr, kcode end
  local boot_timeout = assert(bootcmd.duration(cfg:get("test_boot_timeout")))
  local user = cfg:get("test_ssh_username")

  -- a QEMU VM kept by an earlier `--keep` still runs on the overlay
  local kept = json.read(t.test_dir .. "/vm.json")
  if o.backend == "qemu" and type(kept) == "table" and kept.pid and proc.alive(kept.pid) then
    return fail(("test: the VM kept by an earlier test of %s still runs (QEMU pid %d): stop it first "
      .. "(capil ssh %s -- sudo poweroff)"):format(t.name, kept.pid, o.target), "EBUSY")
  end
  assert(fs.mkdir(t.test_dir))
  local close_log = log.add_file(t.test_dir .. "/test.log")
  local run = {
    target = t, cfg = cfg, backend = o.backend, keep = o.keep, cache_dir = o.cache_dir, data = data,
    test_dir = t.test_dir, work = t.test_dir .. "/vm",
    report = { target = o.target, backend = o.backend, name = t.name, test_dir = t.test_dir, suites = {}, steps = {},
      started = os.date("!%Y-%m-%dT%H:%M:%SZ") },
  }
  assert(fs.mkdir(run.work))
  -- the overlay, seed and extracted disk go on failure or Ctrl-C too
  local work_cleanup = cleanup.push("test work dir " .. run.work, function()
    fs.remove(run.work, { recursive = true })
  end)
  local report = run.report
  local t_start = runtime.now()
  local failed

  local function step(id, fn)
    if failed then return end
    local t0 = runtime.now()
    local ok, err = fn()
    local dt = math.floor((runtime.now() - t0) * 1000 + 0.5) / 1000
    report.steps[#report.steps + 1] = { id = id, status = ok and "ok" or "failed", seconds = dt,
      error = not ok and log.redact(err or "?") or nil }
    if ok then log.info("test: %s ok (%.1f s)", id, dt)
    else
      failed = ("%s: %s"):format(id, err or "?")
      log.error("test: %s failed: %s", id, log.redact(err or "?"))
    end
  end

  local session
  step("prepare", function() return impl.prepare(run) end)
  step("boot", function()
    local ok, err, code = run.vm:start()
    if not ok then return nil, err, code end
    local vm = run.vm
    local deadline = runtime.now() + boot_timeout
    local addr
    addr, err, code = vm:ssh_address(boot_timeout)
    if not addr then return nil, err, code end
    run.address = addr
    log.info("test: %s: waiting up to %g s for SSH as %s on %s:%d", vm.name, boot_timeout, user, addr.host, addr.port)
    session, err, code = guest.wait_ssh({ host = addr.host, port = addr.port, user = user, key = key,
      timeout = boot_timeout, deadline = deadline, alive = function() return vm:alive() end,
      what = ("%s VM %s"):format(o.backend, vm.name), hint = vm.hint })
    if not session then return nil, err, code end
    report.host_key = session.host_key_fingerprint
    return true
  end)
  step("login", function()
    local ok, err = login_checks(session, user, report)
    run.logged_in = ok
    return ok, err
  end)
  if not failed and #names > 0 then
    local result = suites.run(session, names, M.settings(cfg), { out_dir = t.test_dir, cache_dir = o.cache_dir })
    report.suites = result.suites
    for _, su in ipairs(result.suites) do
      report.steps[#report.steps + 1] = { id = "suite " .. su.name, suite = su.name,
        status = su.ok and "ok" or "failed", seconds = su.seconds }
      if not su.ok then failed = failed or ("suite %s failed"):format(su.name) end
    end
  end
  if session then session:close() end
  -- a kept VM is written down for `capil ssh`; otherwise it is stopped
  local state_file = t.test_dir .. "/vm.json"
  fs.remove(state_file)
  if run.vm and o.keep then
    local rec = impl.record(run)
    rec.ssh = run.address
    rec.user, rec.key = user, fs.realpath(key) or key
    fs.write(state_file, json.encode(rec, { indent = 2, sort_keys = true }) .. "\n")
  end
  local fin_ok, fin_err = impl.finish(run)
  report.steps[#report.steps + 1] = { id = o.keep and "keep" or "shutdown", status = fin_ok and "ok" or "failed",
    error = not fin_ok and log.redact(fin_err or "?") or nil, seconds = 0 }
  if not fin_ok then failed = failed or fin_err end
  if o.keep then work_cleanup:cancel() else work_cleanup:run() end
  if run.vc then run.vc:logout() end

  report.seconds = math.floor((runtime.now() - t_start) * 1000 + 0.5) / 1000
  report.ok = not failed
  report.error = failed and log.redact(failed) or nil
  assert(fs.write(t.test_dir .. "/report.json", log.redact(json.encode(report, { indent = 2, sort_keys = true })) .. "\n"))
  assert(fs.write(t.test_dir .. "/junit.xml", M.junit(report)))
  -- the build's own report carries the outcome
  if t.dir and fs.exists(t.dir .. "/report.json") then
    local br = json.read(t.dir .. "/report.json")
    if type(br) == "table" then
      local summary = { ok = report.ok, report = "test/report.json", junit = "test/junit.xml", suites = {} }
      for _, su in ipairs(report.suites) do
        summary.suites[#summary.suites + 1] = { name = su.name, ok = su.ok, summary = su.summary }
      end
      br.test = summary
      fs.write(t.dir .. "/report.json", json.encode(br, { indent = 2, sort_keys = true }) .. "\n")
    end
  end
  if close_log then close_log() end
  return report
end

--- The suite list from --suite options (nil when none was given).
function M.suite_list(values)
  if not values then return nil end
  local out = {}
  for _, v in ipairs(values) do
    for n in v:gmatch("[^,%s]+") do if n ~= "none" then out[#out + 1] = n end end
  end
  return out
end

--- Prints the outcome and returns the exit status (0 when every step passed).
function M.summarise(report)
  for _, su in ipairs(report.suites or {}) do
    local s = su.summary
    local counts = s and (" (%d tests, %d failures, %d errors, %d skipped)"):format(s.tests or 0, s.failures or 0,
      s.errors or 0, s.skipped or 0) or ""
    local steps = {}
    for _, st in ipairs(su.steps or {}) do steps[#steps + 1] = st.name .. (st.ok and "" or " FAILED") end
    log.info("suite %s: %s%s [%s]", su.name, su.ok and "passed" or "FAILED", counts, table.concat(steps, ", "))
  end
  if report.ok then
    log.info("test of %s passed in %.0f s; report %s/report.json", report.name, report.seconds, report.test_dir)
    return 0
  end
  log.error("test of %s failed: %s", report.name, report.error or "?")
  return 1
end

return M
