--- capil.build.pipeline — executes a plan (capil.build.plan.resolve) step by step on a
--- backend, records every step in a run report (status, duration, and
--- whether the time went to the guest, to external tools, or to capil
--- itself), and leaves cleanups registered for everything it creates, so a
--- failure or Ctrl-C removes the VM, temp files and servers (unless
--- --keep-on-error).
---
--- The backend is driven through the interface of capil.backend: it gets a
--- capil.BuildContext (`run.ctx`: name, dirs, the plan's settings, secrets
--- by variable, media, installer server, its own `state`, the report) and
--- the plan's step: `prepare(ctx, step)` and `create(ctx, step)` for
--- create_vm, `steps[kind](ctx, step)` for steps of its own, then the VM's
--- methods. World failures (a full disk, a missing directory) fail the step
--- with the path and reason, never a traceback.
local fs = require("capil.sys.fs")
local http = require("capil.sys.http")
local hash = require("capil.sys.hash")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")
local json = require("capil.sys.json")
local bootcmd = require("capil.build.bootcmd")
local template = require("capil.util.template")
local installer = require("capil.build.installer")
local guest = require("capil.build.guest")

local M = {}

-- Where each step's time goes: guest (waiting on the VM's own work), tool
-- (qemu-img, downloads), engine (capil's own work). A handler may say
-- otherwise for one run of its step (`run.step_class`): an export written
-- by capil's VMDK writer is engine time.
local TIME_CLASS = {
  fetch_iso = "tool", serve_installer = "engine", create_vm = "engine", boot_command = "guest",
  wait_ssh = "guest", provision = "guest", checks = "guest", shutdown = "guest", export_disk = "tool",
  pack_ova = "engine", build_manifest = "engine", upload_media = "tool", finalize_vm = "engine",
}

local H = {} -- step handlers: H[kind](run, step) -> true | nil, err, code

local function fail(msg, code) return nil, msg, code or "ESTEP" end

-- `ok, err, code` of an fs call, as a step failure.
local function io_ok(ok, err, code)
  if ok then return ok end
  return nil, tostring(err), code or "EIO"
end

-- ====================================================================== --
-- Media and installer                                                    --
-- ====================================================================== --

local function verify(path, kind, want)
  local got, err = hash.file(path, kind)
  if not got then return nil, err end
  if got:lower() ~= want:lower() then return nil, ("%s checksum %s, expected %s"):format(kind, got, want) end
  return true
end

-- Takes the ISO cache lock for `path`, so parallel builds that need the
-- same ISO download it once: the others wait, then find it cached. The lock
-- is a directory `<path>.lock` holding the owner's pid, made by renaming a
-- populated temp dir into place (rename(2) fails onto a non-empty
-- directory, so one build wins). A lock whose owner died is taken over.
-- The lock only saves work: correctness comes from downloading to a
-- per-pid temp file that is verified, then renamed into place, so even two
-- downloads never leave a half file under the cache name. Returns a
-- cleanup handle (release with :run()), or nil and a message on timeout.
local function lock_cache(path, timeout)
  local proc = require("capil.sys.proc")
  local lockdir = path .. ".lock"
  local deadline = runtime.now() + timeout
  local told = false
  while true do
    local tmp, terr, tcode = fs.tempdir({ parent = fs.dirname(path), prefix = ".lock", keep = true })
    if not tmp then return nil, "ISO cache lock: " .. tostring(terr), tcode end
    local wok, werr, wcode = fs.write(tmp .. "/pid", tostring(proc.getpid()))
    if not wok then
      fs.remove(tmp, { recursive = true })
      return nil, "ISO cache lock: " .. tostring(werr), wcode
    end
    if fs.rename(tmp, lockdir) then
      return require("capil.sys.cleanup").push("ISO cache lock " .. lockdir, function()
        fs.remove(lockdir, { recursive = true })
      end)
    end
    fs.remove(tmp, { recursive = true })
    local owner = tonumber(fs.read(lockdir .. "/pid") or "")
    if owner and not proc.alive(owner) then
      log.warn("ISO cache: removing the lock of pid %d, which is gone", owner)
      fs.remove(lockdir, { recursive = true })
    elseif runtime.now() > deadline then
      return nil, ("ISO cache %s: still locked by pid %s after %g s"):format(path, tostring(owner), timeout)
    else
      if not told then
        log.info("ISO cache: waiting for pid %s, which is fetching %s", tostring(owner), fs.basename(path))
        told = true
      end
      local ok, err, code = runtime.sleep(0.5)
      if not ok then return nil, err, code end
    end
  end
end

--- Whether the ISO cache holds `path` verified: its stamp (`path.verified`)
--- records the file's size and `checksum` (capil.build.preflight asks too).
---@param path string the fetch_iso step's cache_path
---@param checksum string
---@return boolean
function M.cached_iso(path, checksum)
  local st = fs.stat(path)
  return st and fs.read(path .. ".verified") == ("%d %s"):format(st.size, checksum)
end

function H.fetch_iso(run, step)
  local path = step.cache_path
  local stamp = path .. ".verified"
  if M.cached_iso(path, step.checksum) then
    run.ctx.media.iso = path
    log.info("ISO %s (cached, verified)", path)
    return true
  end
  local lock
  local failures = {}
  for _, url in ipairs(step.urls) do
    local local_path = url:match("^file://(/.*)$")
    local ok, err
    if local_path then
      ok, err = verify(local_path, step.checksum_type, step.checksum)
      if ok then
        run.ctx.media.iso = local_path
        log.info("ISO %s (local file, %s verified)", local_path, step.checksum_type)
        return true
      end
    else
      local mok, merr, mcode = fs.mkdir(fs.dirname(path))
      if not mok then return io_ok(mok, "ISO cache: " .. tostring(merr), mcode) end
      if not lock then
        local lerr, lcode
        lock, lerr, lcode = lock_cache(path, step.timeout)
        if not lock then return fail(lerr, lcode or "EISO") end
        -- another build may have fetched it while this one waited
        if M.cached_iso(path, step.checksum) then
          lock:run()
          run.ctx.media.iso = path
          log.info("ISO %s (cached by a parallel build, verified)", path)
          return true
        end
      end
      local tmp = ("%s.%d.download"):format(path, require("capil.sys.proc").getpid())
      local progress <close> = log.progress({ label = "download " .. fs.basename(url) })
      local r
      local t0 = runtime.now()
      r, err = http.request({ url = url, out_file = tmp, resume = true, timeout = step.timeout, progress = progress,
        sha256 = step.checksum_type == "sha256" and step.checksum or nil })
      if r then
        ok, err = verify(tmp, step.checksum_type, step.checksum)
        if ok then
          local rok, rerr, rcode = fs.rename(tmp, path)
          local st = rok and fs.stat(path)
          if rok then rok, rerr, rcode = fs.write(stamp, ("%d %s"):format(st and st.size or 0, step.checksum)) end
          if not rok then
            fs.remove(tmp)
            lock:run()
            return io_ok(nil, "ISO cache: " .. tostring(rerr), rcode)
          end
          lock:run()
          run.ctx.media.iso = path
          local dt = runtime.now() - t0
          local bytes = st and st.size or 0
          log.with({ url = url, bytes = bytes, rate = dt > 0 and math.floor(bytes / dt) or nil })
            .info("ISO %s downloaded and verified", path)
          return true
        end
      end
      fs.remove(tmp)
    end
    failures[#failures + 1] = ("  %s: %s"):format(url, err)
    log.with({ url = url }).warn("ISO from %s failed: %s", url, err)
  end
  if lock then lock:run() end
  return fail("no ISO URL gave a file with the expected checksum:\n" .. table.concat(failures, "\n"), "EISO")
end

function H.serve_installer(run, step)
  local ctx = run.ctx
  local dir = ctx.workdir .. "/http"
  local mok, merr, mcode = fs.mkdir(dir)
  if not mok then return io_ok(mok, merr, mcode) end
  local vars = installer.template_vars(run.cfg, run.password)
  local ok, err = installer.render(step.dir, step.files, dir, vars)
  if not ok then return fail(err) end
  if step.cd_files and #step.cd_files > 0 then
    local cd_dir = ctx.workdir .. "/cd"
    local rok, rerr = installer.render(step.dir, step.cd_files, cd_dir, vars)
    if not rok then return fail(rerr) end
    local iso, ierr, icode = installer.make_iso(cd_dir, ctx.workdir .. "/cd.iso", step.cd_label)
    if not iso then return fail(ierr, icode) end
    ctx.media.cd_iso = iso
    log.info("installer files also on a CD labelled %s", step.cd_label)
  end
  if step.serve == false then
    log.info("no installer files over HTTP: no server started")
    return true
  end
  local srv, serr, code = installer.serve({ dir = dir, bind = step.bind })
  if not srv then return fail(serr, code) end
  run.server = srv
  -- the plan's advertised address (the backend's traits.http_ip, or
  -- http_ip); "auto": a backend may set ctx.http.ip (the host's address on
  -- the VM's network)
  ctx.http = { port = srv.port, auto = step.advertise == "auto",
    ip = step.advertise ~= "auto" and step.advertise or "127.0.0.1" }
  log.info("installer files served on %s:%d (guest uses http://%s:%d/)", srv.address, srv.port, ctx.http.ip, srv.port)
  return true
end

-- ====================================================================== --
-- The VM                                                                 --
-- ====================================================================== --

function H.create_vm(run, step)
  local b = run.backend
  if b.prepare then
    local ok, err, code = b.prepare(run.ctx, step)
    if not ok then return fail(err, code) end
  end
  local vm, err, code = b.create(run.ctx, step)
  if not vm then return fail(err, code) end
  run.vm = vm
  return vm:start()
end

function H.boot_command(run, step)
  log.info("%s: waiting %g s before typing the boot command", run.vm.name, step.wait)
  local ok, err, code = runtime.sleep(step.wait)
  if not ok then return fail(err, code) end
  local srv = run.ctx.http
  local text, terr = template.render(step.command,
    { http_ip = srv and srv.ip or "", http_port = srv and srv.port or 0, name = run.vm.name })
  if not text then return fail("boot command: " .. terr) end
  local events, perr = bootcmd.parse(text)
  if not events then return fail("boot command: " .. perr) end
  local s = bootcmd.summary(events)
  log.info("%s: typing the boot command (%d keys, %d waits)", run.vm.name, s.keys, s.waits)
  run.report.typed_keys = s.keys
  local typed, terr2, tcode, calls = run.vm:type_keys(events, step.key_interval)
  if calls then run.report.typing_calls = calls end
  return typed, terr2, tcode
end

-- The guest's SSH address (the backend may wait for it: a vSphere guest IP),
-- then a login as the plan's wait-ssh step says (`ssh`: its username,
-- password_var, key_file); the wait fails fast when the VM stops (vm:alive()).
local function connect(run, ssh, timeout)
  local vm = run.vm
  local deadline = runtime.now() + timeout
  local addr, err, code
  if ssh.host then
    -- a static address (build_ip): no need to ask the hypervisor for it
    addr = { host = ssh.host, port = ssh.port or 22 }
    log.info("%s: connecting to the static address %s", vm.name, ssh.host)
  else
    addr, err, code = vm:ssh_address(timeout)
    if not addr then return nil, err, code end
  end
  run.target = { host = addr.host, port = addr.port, user = ssh.username }
  return guest.wait_ssh({
    host = addr.host, port = addr.port, user = ssh.username,
    password = ssh.password_var and run.ctx.secret(ssh.password_var) or nil, key = ssh.key_file,
    timeout = timeout, deadline = deadline, alive = function() return vm:alive() end,
    what = vm.name, hint = vm.hint,
  })
end

function H.wait_ssh(run, step)
  log.info("%s: waiting up to %g s for SSH as %s", run.vm.name, step.timeout, step.username)
  run.ssh = step
  local s, err, code = connect(run, step, step.timeout)
  if not s then return fail(err, code) end
  run.session = s
  log.info("%s: SSH is up (%s)", run.vm.name, s.host_key_fingerprint or "")
  return true
end

function H.provision(run, step)
  local counts = { ran = 0, skipped = 0 }
  local ctx = {
    reconnect = function() return connect(run, run.ssh, 900) end,
    target = run.target,
  }
  local current
  for _, s in ipairs(step.steps) do
    if s.role ~= current then
      current = s.role
      log.info("%s: role %s", run.vm.name, current)
    end
    -- hours of provisioning must not let a hypervisor session expire
    if run.vm.keepalive then run.vm:keepalive() end
    local r, err, code = guest.run_step(run.session, s, ctx)
    if not r then return fail(err, code) end
    if type(err) == "table" then run.session = err end -- a reboot step reconnected
    if r == "skipped" then counts.skipped = counts.skipped + 1 else counts.ran = counts.ran + 1 end
  end
  run.report.provision = counts
  return true
end

function H.checks(run, step)
  local results, ok = guest.run_checks(run.session, step.checks, run.plan_os)
  local failed = {}
  for _, r in ipairs(results) do
    if not r.ok then failed[#failed + 1] = ("  %s: %s"):format(r.name, r.detail or "failed") end
  end
  run.report.checks = { total = #results, failed = #failed, results = results }
  if not ok then return fail(("%d of %d image checks failed:\n%s"):format(#failed, #results, table.concat(failed, "\n")), "ECHECK") end
  log.info("%s: %d image checks passed", run.vm.name, #results)
  return true
end

function H.shutdown(run, step)
  local vm = run.vm
  log.info("%s: shutting down", vm.name)
  if run.session then
    -- the password goes to sudo on stdin, never on a command line
    local secret = step.stdin_var and run.ctx.secret(step.stdin_var)
    run.session:exec(step.command, { stdin = (secret or "") .. "\n", timeout = 60 })
    run.session:close()
    run.session = nil
  end
  if vm:wait_exit(step.timeout) then return true end
  log.warn("%s: still running %g s after the shutdown command; powering it off", vm.name, step.timeout)
  local ok = vm:power_off(60)
  if not ok then return fail(vm.name .. ": would not power off") end
  return true
end

-- ====================================================================== --
-- Artifacts                                                              --
-- ====================================================================== --

function H.export_disk(run, step)
  local mok, merr, mcode = fs.mkdir(fs.dirname(step.path))
  if not mok then return io_ok(mok, merr, mcode) end
  -- into the OVA: the pack step writes the VMDK from the VM's disk in one
  -- pass (capil.format.ova's fused packing); no VMDK file
  local src = step.into_ova and run.vm.disk_source and run.vm:disk_source()
  if src then
    run.disks = { { source = src.source, format = src.format, open = src.open, adapter_type = step.adapter_type,
      hwversion = step.hwversion, name = fs.basename(step.path) } }
    run.report.disk_writer = "capil"
    run.report.vmdk_into_ova = true
    run.step_class = "engine"
    log.info("%s: %s goes straight into the OVA (written from the %s disk %s in the pack step; keep_vmdk=true "
      .. "keeps a file)", run.vm.name, fs.basename(step.path), src.format, src.source)
    return true
  end
  local ok, err, code = run.vm:export(step.path, { adapter_type = step.adapter_type, hwversion = step.hwversion,
    disk_writer = step.disk_writer })
  if not ok then return fail(err, code) end
  -- which writer made it (a backend's export returns {writer = ...}): capil's is engine time
  local writer = type(ok) == "table" and ok.writer or nil
  if writer then
    run.report.disk_writer = writer
    if writer == "capil" then run.step_class = "engine" end
  end
  -- the digest the OVA's manifest needs, recorded as the disk is produced
  -- (a backend that streams the disk hashes it on the way)
  local sum = type(ok) == "table" and ok.sha256
  if not sum then
    local herr
    sum, herr = hash.file(step.path, "sha256")
    if not sum then return fail(herr) end
  end
  local st, serr, scode = fs.stat(step.path)
  if not st then return io_ok(nil, serr or (step.path .. ": missing after the export"), scode) end
  run.disks = { { path = step.path, sha256 = sum, size = st.size } }
  log.info("%s: exported %s (%d bytes)", run.vm.name, step.path, run.disks[1].size)
  return true
end

function H.pack_ova(run, step)
  local ova = require("capil.format.ova")
  local opts = {}
  for k, v in pairs(step) do opts[k] = v end
  -- the run fills what the plan could not know (build time, capil version)
  opts.properties = {}
  for k, v in pairs(step.properties) do
    local r, err = template.render(tostring(v), run.build_info, "OVF property " .. k)
    if not r then return fail(err) end
    opts.properties[k] = r
  end
  opts.disks = run.disks
  local r, err, code = ova.pack(opts)
  if not r then return fail(err, code) end
  run.ova = r
  log.info("packed %s (sha256 %s)", r.ova, r.sha256)
  return true
end

function H.build_manifest(run, step)
  local manifest = require("capil.format.manifest")
  local ostep = require("capil.build.plan").step(run.plan, "pack_ova")
  local cd = manifest.custom_data(run.plan, run.build_info, ostep and ostep.user_properties)
  local files = {}
  for _, d in ipairs(run.disks or {}) do
    -- a VMDK written into the OVA is no file of the build
    if not d.source then files[#files + 1] = { name = fs.basename(d.path), size = d.size, sha256 = d.sha256 } end
  end
  if run.ova then files[#files + 1] = { name = fs.basename(run.ova.ova), size = run.ova.size, sha256 = run.ova.sha256 } end
  local m, err, code = manifest.append(step.path, manifest.build({
    name = run.plan.backend, builder_type = run.plan.backend, files = files,
    artifact_id = run.plan.build_version, custom_data = cd,
    build_time = tonumber(run.build_info.build_timestamp),
  }))
  if not m then return fail(err, code) end
  return true
end

-- ====================================================================== --
-- Running                                                                --
-- ====================================================================== --

--- The capil.BuildContext a backend gets for a run of `plan`.
---@param plan table
---@param cfg table the configuration (read only for secrets, by variable)
--- `o.secrets` holds values decided at run time by variable (the build's
--- random ssh_password); they win over the configuration's.
---@param o {workdir: string, log_dir: string, cache_dir?: string, report: table, secrets?: table<string, string>}
---@return capil.BuildContext
function M.context(plan, cfg, o)
  local overrides = o.secrets or {}
  return {
    name = plan.build_version, workdir = o.workdir, log_dir = o.log_dir, cache_dir = o.cache_dir,
    settings = plan.settings or {},
    secret = function(var)
      if overrides[var] ~= nil then return overrides[var] end
      return cfg:get(var)
    end,
    media = {}, state = {}, report = o.report,
  }
end

--- Whether a build may go into `dir`: refused (nil and a message) when it
--- holds an OVA from an earlier build, unless `force` (then the run removes
--- the directory first).
---@param dir string
---@param force? boolean
---@return boolean|nil ok, string? err
function M.check_output(dir, force)
  if force then return true end
  for _, f in ipairs(fs.list(dir) or {}) do
    if f:match("%.ova$") then
      return nil, ("output directory %s already holds an OVA (%s) from an earlier build: use --force to remove "
        .. "the directory first, or --output for another place"):format(dir, f)
    end
  end
  return true
end

-- The address of a VM's VNC console, when its backend has one.
local function vnc_address(vm)
  if not vm then return nil end
  if vm.vnc_address then return vm.vnc_address end
  local d = type(vm.opts) == "table" and vm.opts.vnc_display
  if d then return ("127.0.0.1:%d (display :%d)"):format(5900 + d, d) end
end

-- --debug: before each step, what it is and how to reach the VM, then a
-- wait for Enter on stdin (at its end, no more pauses).
local function debug_pause(run, step, i, n)
  if run.debug_eof then return end
  log.err(("==> debug: next step %d/%d: %s (%s)"):format(i, n, step.id, step.kind))
  local up = run.vm and not run.stopped
  local t = run.target
  if up and t and run.ssh then
    local key = run.ssh.key_file and (" -i " .. run.ssh.key_file) or ""
    local pw = run.ssh.password_var and not run.ssh.key_file and (" (password: the %s variable)"):format(run.ssh.password_var)
      or ""
    log.err(("    ssh: ssh%s -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null %s@%s%s"):format(
      key, t.port or 22, t.user or "root", t.host, pw))
  end
  local vnc = up and vnc_address(run.vm)
  if vnc then log.err("    vnc: " .. vnc) end
  log.err("    press Enter to continue")
  if io.stdin:read("l") == nil then
    run.debug_eof = true
    log.info("debug: end of input: not pausing any more")
  end
end

-- --on-error=ask: what to do after `err` (Packer's question). "cleanup",
-- "abort" or "retry"; "cleanup" at the end of input.
local function ask(step, err)
  log.err(("==> step %s failed: %s"):format(step.id, err or "?"))
  while true do
    log.err("==> [c] Clean up and exit, [a] abort without cleanup, or [r] retry step "
      .. "(build may fail even if retry succeeds)? ")
    local line = io.stdin:read("l")
    if line == nil then return "cleanup" end
    line = line:lower():match("^%s*(.-)%s*$")
    if line == "c" or line == "cleanup" then return "cleanup" end
    if line == "a" or line == "abort" then return "abort" end
    if line == "r" or line == "retry" then return "retry" end
  end
end

--- Runs `plan` with configuration `cfg`. opts: on_error ("cleanup", the
--- default, "abort" or "ask"; keep_on_error is "abort"), force (remove the
--- output directory first), debug (pause before each step), cache_dir.
--- Returns the report (report.ok tells the outcome), or nil, the message,
--- its code and the report when there is one.
---@param plan table from capil.build.plan.resolve
---@param cfg table
---@param opts? {on_error?: string, keep_on_error?: boolean, force?: boolean, debug?: boolean, cache_dir?: string}
---@return table|nil report, string? err, string? code, table? partial
function M.run(plan, cfg, opts)
  opts = opts or {}
  local backend, berr, bcode = require("capil.backend").get(plan.backend)
  if not backend then return nil, berr, bcode end
  -- the build user's password, random per build unless set: a secret
  -- before anything of this run prints
  local password, perr, pcode = installer.build_password(cfg)
  if not password then return nil, perr, pcode end
  if opts.force and fs.exists(plan.output_dir) then
    log.info("--force: removing %s", plan.output_dir)
    local rok, rerr, rcode = fs.remove(plan.output_dir, { recursive = true })
    if not rok then return nil, "--force: " .. tostring(rerr), rcode end
  end
  local ok_o, oerr, ocode = fs.mkdir(plan.output_dir)
  if not ok_o then return nil, "output directory: " .. tostring(oerr), ocode end
  local log_dir = plan.output_dir .. "/logs"
  ok_o, oerr, ocode = fs.mkdir(log_dir)
  if not ok_o then return nil, "log directory: " .. tostring(oerr), ocode end
  local workdir
  workdir, oerr, ocode = fs.tempdir({ parent = plan.output_dir, prefix = ".work" })
  if not workdir then return nil, "work directory: " .. tostring(oerr), ocode end
  local close_log = log.add_file(log_dir .. "/build.log")
  local now = os.time()
  local run = {
    plan = plan, cfg = cfg, backend = backend, password = password,
    plan_os = { family = cfg:get("distro.family"), distro = cfg:get("distro.name"), version = cfg:get("distro.version") },
    build_info = { build_timestamp = tostring(now), build_date = os.date("!%Y-%m-%dT%H:%M:%SZ", now),
      capil_version = runtime.version, output_dir = plan.output_dir, build_version = plan.build_version },
    report = { recipe = plan.recipe, backend = plan.backend, build_version = plan.build_version, steps = {} },
  }
  run.ctx = M.context(plan, cfg, { workdir = workdir, log_dir = log_dir, cache_dir = opts.cache_dir,
    report = run.report, secrets = { ssh_password = password.password } })
  if password.random then log.info("build user %s: a random password for this build", cfg:get("ssh.username")) end
  local on_error = opts.on_error or (opts.keep_on_error and "abort") or "cleanup"
  local cleanup = require("capil.sys.cleanup")
  cleanup.keep_on_error(on_error == "abort")
  if on_error == "ask" and not require("capil.core.log").isatty(0) then
    log.info("--on-error=ask: stdin is not a terminal, so a failure will be cleaned up (as --on-error=cleanup)")
    on_error = "cleanup"
  end
  local t_start = runtime.now()
  local totals = { guest = 0, tool = 0, engine = 0 }
  local ok, err, code = true, nil, nil
  for i, step in ipairs(plan.steps) do
    -- a backend may bring steps of its own (vSphere: upload_media, finalize_vm)
    local own = backend.steps and backend.steps[step.kind]
    local retry = true
    while retry do
      retry = false
      if opts.debug then debug_pause(run, step, i, #plan.steps) end
      local t0 = runtime.now()
      run.step_class = nil
      local end_context = log.context({ step = step.id, vm = run.vm and run.vm.name or nil })
      log.debug("step %s (%s)", step.id, step.kind)
      if step.skip then
        -- the plan decided this step does not run (its reason is in the plan)
        log.info("step %s skipped: %s", step.id, step.skip)
        ok, err, code = "skipped", nil, nil
      elseif own then
        ok, err, code = own(run.ctx, step)
      elseif H[step.kind] then
        ok, err, code = H[step.kind](run, step)
      else
        ok, err, code = nil, ("step %s: unknown kind %s"):format(step.id, step.kind), "ESTEP"
      end
      end_context()
      local dt = runtime.now() - t0
      local class = run.step_class or TIME_CLASS[step.kind] or "engine"
      totals[class] = totals[class] + dt
      run.report.steps[#run.report.steps + 1] = { id = step.id, kind = step.kind, class = class,
        seconds = math.floor(dt * 1000 + 0.5) / 1000, status = ok == "skipped" and "skipped" or ok and "ok" or "failed",
        error = not ok and log.redact(err or "") or nil }
      if ok and step.kind == "shutdown" then run.stopped = true end -- nothing to reach any more
      if not ok and on_error == "ask" then
        local choice = ask(step, err)
        if choice == "retry" then
          retry = true
          log.info("retrying step %s", step.id)
        elseif choice == "abort" then
          cleanup.keep_on_error(true)
        end
      end
    end
    if not ok then
      err = ("step %s failed: %s"):format(step.id, err or "?")
      break
    end
  end
  local wall = runtime.now() - t_start
  run.report.seconds = math.floor(wall * 1000 + 0.5) / 1000
  run.report.time = { guest = totals.guest, tool = totals.tool, engine = totals.engine }
  run.report.ok = ok and true or false
  run.report.error = not ok and log.redact(err) or nil
  if run.ova then run.report.artifacts = run.ova end
  if run.session then run.session:close() end
  -- a good run removes the build VM, unless the plan keeps it (finalize_vm's
  -- keep_vm: a template or a VM left on the server)
  local keep_vm = false
  for _, s in ipairs(plan.steps) do if s.keep_vm then keep_vm = true end end
  if ok and run.vm and not keep_vm then
    local dok, derr = run.vm:destroy()
    if not dok then log.warn("%s: %s", run.vm.name, tostring(derr)) end
  end
  if run.server and run.server.running then run.server:close() end
  -- the rendered answer files may hold the clear password: they go with
  -- the server (the seed CD too once the VM is gone; a VM kept after a
  -- failure still has it attached, and its work directory goes at exit)
  fs.remove(workdir .. "/http", { recursive = true })
  fs.remove(workdir .. "/cd", { recursive = true })
  if ok then fs.remove(workdir .. "/cd.iso") end
  local wok, werr = fs.write(plan.output_dir .. "/report.json",
    log.redact(json.encode(run.report, { indent = 2, sort_keys = true })) .. "\n")
  if not wok then log.warn("report: %s", tostring(werr)) end
  -- the build log ends with the error the command reports
  if not ok then log.to_files("error", err) end
  if close_log then close_log() end
  if not ok then return nil, err, code, run.report end
  return run.report
end

return M
