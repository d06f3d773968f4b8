--- capil.test.imagetest — `capil test`: boots a built image with the test
--- cloud-init data (cloudinit/), logs in as capv with the test key, runs the
--- suites (capil.test.suites) over SSH, and records every step in
--- <build>/test/report.json and <build>/test/junit.xml. Replaces
--- image-builder's image-post-create-config.sh, image-govc-cloudinit.sh and
--- the manual steps of "Testing Images".
---
--- The test VM is the backend's business, through its test hooks
--- (capil.backend's capil.TestHooks: prepare, record, finish) and a
--- capil.TestRun: QEMU boots the build's VMDK (or the OVA's disk, `disk_of`)
--- under a copy-on-write overlay with a NoCloud seed ISO; vSphere/ESXi
--- deploy the OVA (or take a VM by name) with the data in guestinfo;
--- Workstation makes a VM of the disk. Afterwards the VM is powered off
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
local registry = require("capil.backend")

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

--- What `target` names: a build directory, an OVA, (a remote backend:
--- vSphere, ESXi) a VM, or (vSphere) `library:LIBRARY/ITEM`, an ovf item of
--- a content library. Returns {kind = "build"|"ova"|"vm"|"library", name,
--- dir (the build dir, if any), vmdk, ova, library, item, test_dir} or nil
--- and a message.
---@param target string
---@param backend string
---@param output_root? string where results of a VM-name target go (default output)
function M.resolve_target(target, backend, output_root)
  local b = registry.known(backend) and registry.get(backend)
  local remote = b and b.traits.remote
  local lib, item = target:match("^library:([^/]+)/(.+)$")
  if lib then
    if not (b and b.traits.content_library) then
      return nil, ("test: %s: content libraries are vCenter's: use --backend %s"):format(target,
        table.concat(registry.with("content_library"), " or "))
    end
    return { kind = "library", library = lib, item = item, name = item,
      test_dir = (output_root or "output") .. "/" .. item .. "/test" }
  end
  if target:match("^library:") then
    return nil, ("test: %s: write a library item as library:LIBRARY/ITEM"):format(target)
  end
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
  return nil, ("test: %s: no such build directory or OVA (a VM name needs --backend %s)"):format(target,
    table.concat(registry.with("remote"), " or "))
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
-- The test VM's disk                                                      --
-- ====================================================================== --

--- The disk a local test VM boots: the build's VMDK, or the OVA's first
--- disk extracted into `work` (as work/disk-1.vmdk: a name capil chose, the
--- member's own is the OVA author's). For the backends' test hooks.
---@param t table a target (M.resolve_target)
---@param work string the test's work directory
---@return string|nil path, string? err, string? code
function M.disk_of(t, work)
  if t.vmdk then return fs.realpath(t.vmdk) end
  local ova = require("capil.format.ova")
  local members, err, code = ova.members(t.ova)
  if not members then return nil, err, code end
  local disk
  for _, m in ipairs(members) do if m.name:match("%.vmdk$") then disk = m break end end
  if not disk then return fail(("test: %s holds no .vmdk disk"):format(t.ova), "EOVA") end
  local path = work .. "/disk-1.vmdk"
  local src, serr = io.open(t.ova, "rb")
  if not src then return fail("test: " .. tostring(serr), "EIO") end
  local dst, oerr = io.open(path .. ".tmp", "wb")
  if not dst then src:close() return fail("test: " .. tostring(oerr), "EIO") end
  src:seek("set", disk.offset)
  local left = disk.size
  local werr
  while left > 0 do
    local chunk = src:read(math.min(left, 4 << 20))
    if not chunk then break end
    local ok, e = dst:write(chunk)
    if not ok then werr = e break end
    left = left - #chunk
  end
  src:close()
  local cok, cerr = dst:close()
  werr = werr or (not cok and cerr) or nil
  if werr then
    fs.remove(path .. ".tmp")
    return fail(("test: %s: %s"):format(path, tostring(werr)), "EIO")
  end
  if left > 0 then
    fs.remove(path .. ".tmp")
    return fail(("test: %s: %s is truncated"):format(t.ova, disk.name), "EOVA")
  end
  local rok, rerr, rcode = fs.rename(path .. ".tmp", path)
  if not rok then
    fs.remove(path .. ".tmp")
    return nil, "test: " .. tostring(rerr), rcode or "EIO"
  end
  log.info("test: extracted %s from %s", disk.name, t.ova)
  return path
end

--- The hardware a test VM gets (capil.TestRun.vm_settings): the build's,
--- with at least 2 CPUs and 2 GiB (kubeadm's preflight), on the devices the
--- OVA declares.
---@param cfg table
---@param traits capil.BackendTraits
---@return table
function M.vm_settings(cfg, traits)
  local plan = require("capil.build.plan")
  local devices = plan.qemu_devices(cfg)
  return {
    cpus = math.max(2, cfg:get("hardware.cpus") or 1), memory_mb = math.max(2048, cfg:get("hardware.memory") or 0),
    cores_per_socket = cfg:get("hardware.cores"),
    guest_os = plan.guest_os(cfg, traits) or (traits.guest_id == "workstation" and "other-64" or "otherGuest64"),
    firmware = cfg:get("hardware.firmware"), vmx_version = cfg:get("hardware.vmx_version"),
    disk_controller = cfg:get("hardware.disk_controller"), network_card = cfg:get("hardware.network_card"),
    network = cfg:get("build.network"), accel = cfg:get("build.qemu_accel"),
    disk_interface = devices.disk, nic_model = devices.nic,
  }
end

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
  local b = registry.known(o.backend) and registry.get(o.backend)
  if not (b and b.test) then
    local can = {}
    for _, n in ipairs(registry.names()) do if registry.get(n).test then can[#can + 1] = n end end
    return fail(("test: backend %s cannot run tests in this capil (%s)"):format(o.backend,
      table.concat(can, ", ")), "ENOTSUP")
  end
  local hooks = b.test
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
  local dir = require("capil.build.recipepath").cloudinit_dir(cfg:get("cloudinit_dir"))
  local data, derr, dcode = cloudinit.load(dir)
  if not data then return nil, derr, dcode end
  local key, kerr, kcode = cloudinit.key(dir, cfg:get("test_ssh_private_key_file"))
  if not key then return nil, kerr, kcode end
  local boot_timeout = cfg:get("test_boot_timeout") -- seconds (the schema coerces durations)
  local user = cfg:get("test_ssh_username")

  -- a VM that is a local process (QEMU), kept by an earlier `--keep`, still
  -- runs on the overlay
  local kept = json.read(t.test_dir .. "/vm.json")
  if type(kept) == "table" and kept.backend == o.backend and kept.pid and proc.alive(kept.pid) then
    return fail(("test: the VM kept by an earlier test of %s still runs (%s pid %d): stop it first "
      .. "(capil ssh %s -- sudo poweroff)"):format(t.name, b.traits.process or b.name, kept.pid, o.target), "EBUSY")
  end
  local mok, merr, mcode = fs.mkdir(t.test_dir)
  if not mok then return nil, "test: " .. tostring(merr), mcode end
  local close_log = log.add_file(t.test_dir .. "/test.log")
  -- the image under test says how it boots: an EFI OVA boots EFI whatever
  -- the configuration's default (the OVF's vmw:Config firmware)
  local vm_settings = M.vm_settings(cfg, b.traits)
  local facts = t.ova and require("capil.format.ova").inspect(t.ova)
  local fw = facts and facts.hardware and facts.hardware.firmware
  if fw and fw ~= (vm_settings.firmware or "bios") then
    log.info("test: %s declares firmware %s: the test VM boots %s", fs.basename(t.ova), fw, fw)
    vm_settings.firmware = fw
  end
  local run = {
    target = t, backend = o.backend, keep = o.keep and true or false, cache_dir = o.cache_dir, data = data,
    settings = type(b.settings) == "table" and registry.live_settings(b, cfg) or {},
    secret = function(var) return cfg:get(var) end,
    vm_settings = vm_settings, test_vm_name = cfg:get("test_vm_name"),
    test_dir = t.test_dir, work = t.test_dir .. "/vm", state = {},
    report = { target = o.target, backend = o.backend, name = t.name, test_dir = t.test_dir, suites = {}, steps = {},
      started = os.date("!%Y-%m-%dT%H:%M:%SZ") },
  }
  mok, merr, mcode = fs.mkdir(run.work)
  if not mok then
    if close_log then close_log() end
    return nil, "test: " .. tostring(merr), mcode
  end
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
  step("prepare", function() return hooks.prepare(run) end)
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
    local rec = hooks.record(run)
    rec.ssh = run.address
    rec.user, rec.key = user, fs.realpath(key) or key
    fs.write(state_file, json.encode(rec, { indent = 2, sort_keys = true }) .. "\n")
  end
  local fin_ok, fin_err = hooks.finish(run)
  report.steps[#report.steps + 1] = { id = o.keep and "keep" or "shutdown", status = fin_ok and "ok" or "failed",
    error = not fin_ok and log.redact(fin_err or "?") or nil, seconds = 0 }
  if not fin_ok then failed = failed or fin_err end
  if o.keep then work_cleanup:cancel() else work_cleanup:run() end

  report.seconds = math.floor((runtime.now() - t_start) * 1000 + 0.5) / 1000
  report.ok = not failed
  report.error = failed and log.redact(failed) or nil
  local wok, werr, wcode = fs.write(t.test_dir .. "/report.json",
    log.redact(json.encode(report, { indent = 2, sort_keys = true })) .. "\n")
  if wok then wok, werr, wcode = fs.write(t.test_dir .. "/junit.xml", M.junit(report)) end
  if not wok then
    if close_log then close_log() end
    return nil, "test: " .. tostring(werr), wcode
  end
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
