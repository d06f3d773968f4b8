--- capil run — builds an image from a recipe on a backend.
local build_options = require("capil.build.loader")
local pipeline = require("capil.build.pipeline")
local cli = require("capil.cli")
local log = require("capil.sys.log")
local preflight = require("capil.build.preflight")

local options = {
  { name = "force", help = "remove an existing output directory first (else one holding an OVA is refused)" },
  { name = "on-error", arg = "MODE", help = "after a failure: cleanup (default), abort (keep the VM and files), "
    .. "ask (on a terminal: cleanup, abort or retry the step)" },
  { name = "keep-on-error", help = "after a failure, keep the VM and files and print how to reach them "
    .. "(--on-error=abort)" },
  { name = "debug", help = "one build: pause before each step until Enter, showing the SSH command and VNC address" },
  { name = "stages", arg = "LIST", help = "comma-separated: build (default), test, publish, upload" },
  { name = "suite", arg = "LIST", multi = true, help = "test stage: suites (default: the recipe's tests.suites)" },
  { name = "bucket", arg = "B", help = "upload stage: GCS bucket (default capv-images)" },
  { name = "key-file", arg = "F", help = "upload stage: service-account key file (JSON)" },
  { name = "gcs-endpoint", arg = "URL", help = "upload stage: GCS endpoint (emulators, private deployments)" },
  { name = "library", arg = "NAME", help = "publish stage: vSphere content library (default: the publish_library "
    .. "variable)" },
  { name = "library-item", arg = "NAME", help = "publish stage: its item (default: publish_library_item, else "
    .. "the build's name)" },
  { name = "create-library", help = "publish stage: create the library (local, on the datastore variable's "
    .. "datastore) when it does not exist" },
  { name = "all", help = "build every recipe 'capil list' shows (only those of --recipes-dir when given)" },
  { name = "jobs", short = "j", arg = "N", help = "several builds: at most N at once (default 1)" },
  { name = "fail-fast", help = "several builds: the first failure interrupts the others" },
  { name = "only", arg = "LIST", help = "several builds: only these build names (comma-separated; * matches any text)" },
  { name = "except", arg = "LIST", help = "several builds: not these build names (comma-separated; * matches any text)" },
  { name = "report", arg = "FILE", help = "several builds: write a JSON report of every build" },
  { name = "junit", arg = "FILE", help = "several builds: write JUnit XML (a testsuite per build)" },
  { name = "shard", arg = "K/N", help = "several builds: run only the K-th of N stable shares (see 'capil bundle')" },
  { name = "dry-run", help = "resolve and check everything, print what would run per build, and create nothing "
    .. "(exit 2 on a problem)" },
  { name = "skip-preflight", help = "start without the checks before the build (tools, disk space, the vSphere "
    .. "server, login and placement)" },
}

local ON_ERROR = { cleanup = true, abort = true, ask = true }

-- The --on-error mode (--keep-on-error is abort); fails on an unknown one.
local function on_error(opts)
  local mode = opts["on-error"]
  if mode == nil then return opts["keep-on-error"] and "abort" or "cleanup" end
  if not ON_ERROR[mode] then
    cli.fail(("run: --on-error must be cleanup, abort or ask, not '%s'"):format(mode), 2)
  end
  if opts["keep-on-error"] and mode ~= "abort" then
    cli.fail(("run: --keep-on-error is --on-error=abort; it contradicts --on-error=%s"):format(mode), 2)
  end
  return mode
end

local STAGES = { build = true, test = true, publish = true, upload = true }
local ORDER = { "build", "test", "publish", "upload" } -- an image that fails its tests is not published

-- The stages asked for, in run order; nil and a message for an unknown one.
local function stages(s)
  local set, order = {}, {}
  for name in (s or "build"):gmatch("[^,%s]+") do
    if not STAGES[name] then return nil, ("run: unknown stage '%s' (build, test, publish, upload)"):format(name) end
    set[name] = true
  end
  for _, name in ipairs(ORDER) do if set[name] then order[#order + 1] = name end end
  if not set.build then return nil, "run: the stages must include build" end
  return order
end
for _, o in ipairs(build_options.options) do options[#options + 1] = o end

-- The publish stage's library and item: --library / --library-item, else
-- the publish_library / publish_library_item variables; nil and a message
-- when no library is named.
local function publish_target(opts, cfg, build_version)
  local lib = opts.library or cfg:get("publish.library")
  if not lib or lib == "" then
    return nil, "run: the publish stage needs a content library: --library NAME (or the publish_library variable)"
  end
  local item = opts["library-item"] or cfg:get("publish.library_item")
  local create = opts["create-library"] or cfg:get("publish.create_library")
  local ds = cfg:get("vsphere.datastore")
  if create and (ds == nil or ds == "") then
    return nil, "run: --create-library (publish_create_library) needs the datastore variable: the library's datastore"
  end
  return { library = lib, item = (item and item ~= "") and item or build_version, create = create and true or nil }
end

-- The publish stage: the build's OVA into a vSphere content library
-- (capil.vsphere.library.publish_ova), recorded in the build's report.json
-- as `publish`.
local function publish_stage(opts, plan, cfg)
  local target, terr = publish_target(opts, cfg, plan.build_version)
  if not target then cli.fail(terr, 2) end
  local registry = require("capil.backend")
  local s = registry.live_settings(registry.get(registry.with("content_library")[1]), cfg)
  local json = require("capil.sys.json")
  local rpath = plan.output_dir .. "/report.json"
  local ova = plan.output_dir .. "/" .. plan.build_version .. ".ova"
  local rec, err, code = require("capil.vsphere.library").publish_ova(s, ova, { library = target.library,
    item = target.item, create_library = target.create, secret = function(var) return cfg:get(var) end })
  local report = json.read(rpath)
  if type(report) == "table" then
    report.publish = rec or { library = target.library, item = target.item, ok = false, error = log.redact(err) }
    local ok, werr = require("capil.sys.fs").write(rpath,
      log.redact(json.encode(report, { indent = 2, sort_keys = true })) .. "\n")
    if not ok then log.warn("report: %s", tostring(werr)) end
  end
  if not rec then cli.fail(("run: publish %s: %s"):format(ova, err), code == "ECONFIG" and 2 or 1) end
  log.out(("library %s, item %s (%s), %ssha256 %s%s"):format(rec.library, rec.item, rec.item_id,
    rec.content_version and ("content version " .. tostring(rec.content_version) .. ", ") or "", rec.sha256,
    rec.changed and "" or " (already there)"))
end

-- Several builds (--all, a bundle, more than one recipe, or any of the
-- options only they take): one child process per build, see capil.build.parallel.
local function wants_parallel(opts, args)
  if opts.all or opts.jobs or opts["fail-fast"] or opts.only or opts.except or opts.report or opts.junit
    or opts.shard then
    return true
  end
  if #args ~= 1 then return #args > 1 end
  return require("capil.build.bundle").is_bundle(args[1])
end

-- The message of a failed preflight: every problem on a line of its own
-- (a dry run printed them already).
local function preflight_failure(what, problems, dry)
  if dry then
    return ("run --dry-run: %s cannot start: %d problem%s (listed above)"):format(what, #problems,
      #problems == 1 and "" or "s")
  end
  return ("run: %s cannot start (%d problem%s; nothing was downloaded or created):\n  %s"):format(what,
    #problems, #problems == 1 and "" or "s", table.concat(problems, "\n  "))
end

local function run_parallel(opts, args, g)
  local parallel = require("capil.build.parallel")
  on_error(opts)
  local jobs = 1
  if opts.jobs then
    jobs = tonumber(opts.jobs)
    if not jobs or math.type(jobs) ~= "integer" or jobs < 1 then
      cli.fail(("run: -j must be a whole number of builds, 1 or more, not '%s'"):format(opts.jobs), 2)
    end
  end
  if #args == 0 and not opts.all then cli.fail("run: name recipes or a bundle, or use --all (see 'capil list')", 2) end
  local builds, errs = parallel.builds(args, opts)
  if not builds then cli.fail(table.concat(errs, "\n"), 2) end
  if #builds == 0 then cli.fail("run: no build left after --only/--except", 2) end
  local shard
  builds, shard = parallel.select_shard(builds, opts.shard)
  if not builds then cli.fail("run: " .. shard, 2) end
  if shard and #builds == 0 then
    log.info("shard %s (from %s) has no builds: the bundle's %d builds fill fewer shards; nothing to do",
      shard.label, shard.source, shard.total)
  end
  if opts.debug then
    cli.fail(("run: --debug pauses one build on this terminal; %d builds: choose one with --only"):format(#builds), 2)
  end
  local ok, perrs = parallel.prepare(builds, opts, stages, g)
  if not ok then cli.fail(table.concat(perrs, "\n"), 2) end
  if opts["dry-run"] or not opts["skip-preflight"] then
    local problems, failed = {}, 0
    for _, b in ipairs(builds) do
      local res = preflight.run(b.plan, b.cfg, { cache_dir = build_options.cache_dir(),
        dry_run = opts["dry-run"] })
      if opts["dry-run"] then
        for _, line in ipairs(preflight.describe(b.plan, res, b.name)) do log.out(line) end
      else
        for _, n in ipairs(res.notes) do log.info("%s: %s", b.name, n) end
      end
      for _, p in ipairs(res.problems) do problems[#problems + 1] = ("%s: %s"):format(b.name, p) end
      if not res.ok then failed = failed + 1 end
    end
    if #problems > 0 then
      cli.fail(preflight_failure(("%d of %d builds"):format(failed, #builds), problems, opts["dry-run"]), 2)
    end
    if opts["dry-run"] then
      log.info("dry run: %d builds would run, at most %d at once; nothing was started", #builds, jobs)
      return 0
    end
  end
  log.info("%d builds, at most %d at once", #builds, jobs)
  return parallel.run(builds, { jobs = jobs, force = opts.force, fail_fast = opts["fail-fast"], report = opts.report,
    junit = opts.junit, quiet = g and g.quiet, json = g and g["log-format"] == "json", shard = shard })
end

return {
  summary = "build an image from a recipe (default backend: qemu)",
  usage = "run RECIPE [--backend B] [--var-file F] [--var K=V] [--force] [--on-error cleanup|abort|ask] [--debug]"
    .. " [--stages build,test,publish,upload] [--dry-run]\n"
    .. "       capil run RECIPE... | BUNDLE.lua | --all [-j N] [--fail-fast] [--only L] [--except L]"
    .. " [--report F] [--junit F] [--shard K/N] [--dry-run]",
  help = [[
Resolves the recipe (see 'capil inspect'), then runs the plan: fetch and verify
the ISO, serve the installer files, create the VM, type the boot command,
wait for SSH, provision with the roles, run the image checks, shut down,
export a streamOptimized VMDK and pack the OVA into
output/<name>-kube-<kubernetes semver>/. The build log is logs/build.log
there, the serial console logs/serial.log, and report.json records each
step. On failure or Ctrl-C everything the build created is removed, unless
--on-error=abort (or --keep-on-error); --on-error=ask asks on a terminal
whether to clean up, abort or retry the failed step (without a terminal it
cleans up). An output directory holding an OVA is refused unless --force,
which removes it first. --debug pauses before each step until Enter,
showing the SSH command and the VNC address once known. --stages build,test then tests the image as 'capil test'
does (the recipe's tests.suites, or --suite); with upload the OVA goes to
GCS as 'capil upload' does (skipped when the remote checksum matches), after
the test stage passed; with publish the OVA goes into a vSphere content
library as 'capil publish' does (--library or publish_library, item
--library-item or publish_library_item, default the build's name; the
library must exist, unless --create-library makes it on the datastore
variable's datastore), recorded in report.json as `publish` (library, item
id, content version, sha256) and in the --report of several builds.

Before the ISO is fetched, a preflight checks what the build needs and
lists every problem at once (exit 2, nothing downloaded or created):
vSphere and ESXi: the server, user and password set, the login, and the
datacenter, folder, cluster or host, resource pool, datastore and network;
QEMU: qemu-system-x86_64 and qemu-img, and KVM or TCG (a note); Workstation:
vmrun; every backend: xorriso for an installer CD, and free space for the
disk, VMDK and OVA in the output directory and for the ISO in the cache.
--skip-preflight starts without it. --dry-run resolves and checks
everything (recipes, variables, plans, the ISO cache, the preflight) and
prints what would run per build: output directory, VM, ISO (cached, or the
URL it would download), steps; it creates nothing. Exit 0 when every build
would start, else 2. It works for one recipe, several, a bundle or --all,
with --only, --except and --shard.

Several builds: 'capil run R1 R2 -j N', 'capil run --all -j N' (every
recipe 'capil list' shows, or of --recipes-dir when given) or 'capil run BUNDLE.lua -j N' run one child
capil per build, at most N at once, each writing its own logs under its
output directory (logs/capil.log is its console). One status line per
build (updated in place on a terminal). A failed build does not stop the
others unless --fail-fast. Ctrl-C interrupts every build and waits for
their cleanups. Two builds may not share an output directory: build the
same recipe twice with distinct build_name vars. --report writes JSON
(per build: recipe, backend, stages, steps with durations, artifacts with
sha256, errors), --junit JUnit XML (a testsuite per build, a testcase per
stage and image check). Exit: 0 all passed, 1 some failed, 2 usage or
configuration error (nothing started), 130 interrupted.

A bundle is a Lua file returning a list of builds, loaded like a recipe
(no I/O):
  return {
    defaults = { backend = "vsphere", var_files = { "vsphere.json" } },
    { recipe = "ubuntu-2204" },
    { recipe = "ubuntu-2204", vars = { build_name = "ubuntu-2204-efi", firmware = "efi" } },
    { recipe = "photon-5", backend = "qemu", stages = "build,test" },
  }
Paths in it are relative to the bundle. The command line wins over the
bundle: --backend, --stages and --var apply to every build; --var-file
files are read before the bundle's. --only and --except take build names
(a recipe's name or file name, or a bundle entry's build_name var; '*'
matches any text): a name that matches no build is an error listing them.
--shard K/N (or JOB_COMPLETION_INDEX and JOB_COMPLETION_COUNT, as a
Kubernetes Indexed Job sets them) runs a stable K-th share of the builds;
'capil bundle matrix' prints the shards for a CI matrix, 'capil report
merge' joins the shards' reports.

Packer's and image-builder's habits work too, each with a note naming
capil's form: single-dash flags (-var, -var-file, -only, -except, -force,
-on-error=..., -debug), PACKER_FLAGS, CAPIL_LOG=1 and CAPIL_LOG_PATH (as
PACKER_LOG and PACKER_LOG_PATH: debug logging, into that file), and make
target names: 'capil build-node-ova-vsphere-ubuntu-2004' is 'capil run
ubuntu-2004 --backend vsphere', build-node-ova-local-all is 'capil run
--all --backend local'.]],
  options = options,
  run = function(opts, args, g)
    if wants_parallel(opts, args) then return run_parallel(opts, args, g) end
    if #args ~= 1 then cli.fail("run: name one recipe (see 'capil list')", 2) end
    local todo, serr = stages(opts.stages)
    if not todo then cli.fail(serr, 2) end
    local mode = on_error(opts)
    local r, cfg, plan = build_options.load(args[1], opts)
    if not r then
      if opts["dry-run"] then cli.fail(table.concat(cfg, "\n"), 2) end -- a dry run: 2 for any problem
      build_options.fail(cfg)
    end
    local no_ova = (require("capil.build.plan").step(plan, "pack_ova") or {}).skip
    for _, st in ipairs(todo) do
      -- a publish stage without a library fails before anything is built
      if st == "publish" then
        local ok, perr = publish_target(opts, cfg, plan.build_version)
        if not ok then cli.fail(perr, 2) end
      end
      -- as does a stage that needs the OVA of a build that makes none
      if st ~= "build" and no_ova then
        cli.fail(("run: the %s stage needs the build's OVA, but the plan makes none (%s): set "
          .. "content_library_export=true, or drop the stage"):format(st, no_ova), 2)
      end
    end
    local ook, oerr = pipeline.check_output(plan.output_dir, opts.force)
    if not ook and not opts["dry-run"] then cli.fail("run: " .. oerr, 1) end
    if opts["dry-run"] or not opts["skip-preflight"] then
      local res = preflight.run(plan, cfg, { cache_dir = build_options.cache_dir(), dry_run = opts["dry-run"] })
      if not ook then table.insert(res.problems, 1, oerr) res.ok = false end
      if opts["dry-run"] then
        for _, line in ipairs(preflight.describe(plan, res)) do log.out(line) end
      else
        for _, n in ipairs(res.notes) do log.info("%s: %s", plan.build_version, n) end
      end
      if not res.ok then cli.fail(preflight_failure(plan.build_version, res.problems, opts["dry-run"]), 2) end
      if opts["dry-run"] then
        log.info("dry run: %s would run on %s; nothing was started", plan.build_version, plan.backend)
        return 0
      end
    end
    log.info("building %s on %s into %s", plan.build_version, plan.backend, plan.output_dir)
    local report, err, _, partial = pipeline.run(plan, cfg, {
      on_error = mode, force = opts.force, debug = opts.debug,
      cache_dir = build_options.cache_dir(),
    })
    if not report then
      if partial then log.error("build log: %s/logs/build.log", plan.output_dir) end
      cli.fail(err, 1)
    end
    log.info("built %s in %.0f s", plan.build_version, report.seconds)
    if report.artifacts and report.artifacts.ova then log.out(report.artifacts.ova) end
    local wants = {}
    for _, st in ipairs(todo) do wants[st] = true end
    if wants.test then
      local imagetest = require("capil.test.imagetest")
      local tr, terr, tcode = imagetest.run({ target = plan.output_dir, backend = plan.backend, cfg = cfg,
        suites = imagetest.suite_list(opts.suite), cache_dir = build_options.cache_dir(), output_root = opts.output })
      if not tr then cli.fail(terr, tcode == "EUSAGE" and 2 or 1) end
      if imagetest.summarise(tr) ~= 0 then return 1 end
    end
    if wants.publish then publish_stage(opts, plan, cfg) end
    if wants.upload then
      local up, uerr = require("capil.publish.release").upload(plan.output_dir, { bucket = opts.bucket,
        key_file = opts["key-file"], endpoint = opts["gcs-endpoint"] })
      if not up then cli.fail(uerr, 1) end
      log.out(up.url)
    end
    return 0
  end,
}
