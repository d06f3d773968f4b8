--- capil.build.parallel — several builds at once, one child process per build
--- (capil re-executing itself: `capil run RECIPE ...`), at most `jobs` at a
--- time. Each child has its own Lua state, output directory and logs; the
--- parent shows one status line per build, forwards Ctrl-C to every child
--- and waits for their cleanups, then writes a JSON report and JUnit XML
--- built from the children's own reports (output/<build>/report.json).
---
--- What builds never share: output dirs and VM names (two builds with the
--- same <name>-kube-<semver> are refused before anything starts), temp dirs
--- (mkdtemp under each output dir), installer HTTP ports (each server binds
--- port 0), SSH ports (QEMU: a free loopback port per VM), datastore upload
--- names (per build, then moved), the ISO cache (per-pid temp + rename, and
--- a lock so one build downloads while the others wait).
local build_options = require("capil.build.loader")
local bundle = require("capil.build.bundle")
local cleanup = require("capil.sys.cleanup")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")
local corelog = require("capil.core.log")

local M = {}

-- Options of `capil run` a child gets as they were given (per-build ones,
-- backend, vars, var files and stages, are set per build).
local FORWARD = { "recipes-dir", "output", "bucket", "key-file", "gcs-endpoint", "on-error", "library",
  "library-item" }
local FORWARD_FLAGS = { "keep-on-error", "insecure" }

-- Seconds a child gets to finish its cleanups after Ctrl-C before its
-- process group is killed.
M.INTERRUPT_GRACE = 300

-- ====================================================================== --
-- Preparing the builds                                                   --
-- ====================================================================== --

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

--- The builds of a `capil run` with several recipes, `--all` or a bundle:
--- `{recipe=, backend=?, vars={}, var_files={}, stages=?, index=}` in order,
--- filtered by --only/--except. nil and a list of errors for a bundle that
--- does not load.
---@param args string[] positional arguments
---@param opts table parsed options
function M.builds(args, opts)
  local list = {}
  if opts.all then
    local recipepath = require("capil.build.recipepath")
    local layers, lerr = recipepath.layers({ recipes_dir = opts["recipes-dir"] })
    if not layers then return nil, { "run --all: " .. lerr } end
    -- with --recipes-dir, its recipes (as before the search path); else all
    if opts["recipes-dir"] then layers = { layers[#layers] } end
    for _, e in ipairs(recipepath.entries(layers)) do list[#list + 1] = { recipe = e.name, vars = {}, var_files = {} } end
    if #list == 0 then
      local where = {}
      for i = #layers, 1, -1 do where[#where + 1] = layers[i].label end
      return nil, { ("run --all: no recipes in %s"):format(table.concat(where, ", ")) }
    end
  end
  for _, a in ipairs(args) do
    if bundle.is_bundle(a) then
      local bs, errs = bundle.load(a)
      if not bs then return nil, errs end
      for _, b in ipairs(bs) do b.bundle = a list[#list + 1] = b end
    else
      list[#list + 1] = { recipe = a, vars = {}, var_files = {} }
    end
  end
  local kept, ferrs = M.filter(list, opts.only, opts.except)
  if not kept then return nil, ferrs end
  for i, b in ipairs(kept) do b.index = i end
  return kept
end

-- The names a build answers to in --only/--except: its recipe as given,
-- the recipe's file name without .lua, and its build_name var (a bundle
-- entry's); the first of the last two is its build name.
local function build_names(b)
  local base = fs.basename(b.recipe):gsub("%.lua$", "")
  local bn = b.vars and b.vars.build_name
  return { b.recipe, base, b.name, bn and tostring(bn) or nil }, bn and tostring(bn) or base
end

--- The builds matching --only and not --except (comma-separated build
--- names; `*` matches any text), as Packer's -only/-except. A name that
--- matches no build is an error listing the build names.
---@param list table[]
---@param only? string
---@param except? string
---@return table[]|nil builds, string[]? errors
function M.filter(list, only, except)
  local function patterns(s, flag, errs)
    if not s then return nil end
    local t = {}
    for n in s:gmatch("[^,%s]+") do
      local pat = "^" .. n:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*") .. "$"
      local hit = false
      for _, b in ipairs(list) do
        for _, name in pairs((build_names(b))) do if name:match(pat) then hit = true end end
      end
      if not hit then errs[#errs + 1] = ("%s '%s' matches no build"):format(flag, n) end
      t[#t + 1] = pat
    end
    return t
  end
  local errs = {}
  local o, e = patterns(only, "--only", errs), patterns(except, "--except", errs)
  if #errs > 0 then
    local names, seen = {}, {}
    for _, b in ipairs(list) do
      local _, n = build_names(b)
      if not seen[n] then seen[n] = true names[#names + 1] = n end
    end
    errs[#errs + 1] = "the builds are: " .. table.concat(names, ", ")
    return nil, { "run: " .. table.concat(errs, "; ") }
  end
  local function any(b, pats)
    for _, name in pairs((build_names(b))) do
      for _, p in ipairs(pats) do if name:match(p) then return true end end
    end
    return false
  end
  local out = {}
  for _, b in ipairs(list) do
    if (not o or any(b, o)) and not (e and any(b, e)) then out[#out + 1] = b end
  end
  return out
end

--- The builds of one shard (`--shard K/N`, else JOB_COMPLETION_INDEX and
--- JOB_COMPLETION_COUNT from the environment, see capil.build.bundle.shard),
--- numbered again from 1, and the shard as {k=, n=, label="K/N", source=,
--- total=}; the builds as they are and nil without a shard; nil and a
--- message for a malformed one.
---@param builds table[] from M.builds
---@param spec? string the --shard value
---@param getenv? fun(name: string): string?
---@return table[]|nil builds, table|string|nil shard_or_err
function M.select_shard(builds, spec, getenv)
  local k, n, source
  if spec then
    k, n = bundle.parse_shard(spec)
    source = "--shard"
  else
    k, n = bundle.shard_from_env(getenv)
    source = "JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT"
  end
  if k == nil then
    if n then return nil, n end
    return builds, nil
  end
  local out = bundle.shard(builds, k, n)
  for i, b in ipairs(out) do b.index = i end
  return out, { k = k, n = n, label = ("%d/%d"):format(k, n), source = source, total = #builds }
end

-- The private directory of this run's child var files (0700, removed at
-- exit by capil.sys.cleanup).
local private_dir

-- Writes a child's variables ("k=v" strings, later ones winning) to a var
-- file only this user can read; the child gets them as its last
-- --var-file, so they still win over every other var file as --var did.
local function private_var_file(index, vars)
  if not (private_dir and fs.exists(private_dir)) then
    local dir, err = fs.tempdir({ prefix = "capil-vars" })
    if not dir then return nil, err end
    private_dir = dir
  end
  local data = {}
  for _, e in ipairs(vars) do
    local kv = require("capil.build.config").var_entry(e)
    local k, v = kv:match("^([^=]+)=(.*)$")
    if not k then return nil, ("--var %s: expected NAME=VALUE"):format(log.redact(kv)) end
    data[k] = v
  end
  local path = ("%s/build-%d.json"):format(private_dir, index)
  local ok, err = fs.write(path, json.encode(data), { mode = 384 }) -- 0600
  if not ok then return nil, err end
  return path
end

--- Loads one build of M.builds as its child will: the command line wins
--- over the bundle (--backend, --var), the command line's var files come
--- before the bundle's. Sets b.backend; returns recipe, cfg, plan (or nil
--- and a list of errors), then the build's vars ("k=v") and var files.
---@param b table
---@param opts table parsed options
---@return table|nil recipe, table cfg_or_errors, table? plan, string[] vars, string[] var_files
function M.load(b, opts)
  local vars = {}
  -- the bundle's vars are named "vars" in messages (the bundle and entry prefix them)
  for _, k in ipairs(sorted_keys(b.vars)) do vars[#vars + 1] = { k .. "=" .. b.vars[k], where = "vars" } end
  -- the command line's --var wins over the bundle's vars; its var files come first
  for _, v in ipairs(opts.var or {}) do vars[#vars + 1] = v end
  local var_files = {}
  for _, f in ipairs(opts["var-file"] or {}) do var_files[#var_files + 1] = f end
  for _, f in ipairs(b.var_files) do var_files[#var_files + 1] = f end
  b.backend = build_options.resolve_backend(opts.backend or b.backend)
  local bopts = { backend = b.backend, var = vars, ["var-file"] = var_files }
  for _, k in ipairs(FORWARD) do bopts[k] = opts[k] end
  for _, k in ipairs(FORWARD_FLAGS) do bopts[k] = opts[k] end
  local r, cfg, plan = build_options.load(b.recipe, bopts)
  return r, cfg, plan, vars, var_files
end

--- Resolves every build in the parent, before any starts: recipe, config
--- and plan must load, stages be known, and no two builds may share an
--- output directory (the same recipe twice needs distinct build_name vars).
--- Fills b.plan, b.cfg, b.name, b.backend, b.stages, b.argv (the child
--- skips the preflight, which the parent runs). nil and errors.
---@param builds table[]
---@param opts table
---@param check_stages fun(s: string?): table|nil, string?
---@param g? table global options (--verbose and --log-format go to the children)
function M.prepare(builds, opts, check_stages, g)
  local errors, by_dir = {}, {}
  local exe = { assert(runtime.exepath()) }
  if g and g.verbose then exe[#exe + 1] = "--verbose" end
  if g and g["log-format"] then exe[#exe + 1] = "--log-format" exe[#exe + 1] = g["log-format"] end
  for _, b in ipairs(builds) do
    local what = b.bundle and ("%s: entry %d (%s)"):format(b.bundle, b.index, b.recipe) or b.recipe
    b.stages = opts.stages or b.stages or "build"
    local order, serr = check_stages(b.stages)
    if not order then errors[#errors + 1] = ("%s: %s"):format(what, serr) end
    b.stage_list = order or {}
    local r, cfg, plan, vars, var_files = M.load(b, opts)
    if not r then
      for _, e in ipairs(cfg) do errors[#errors + 1] = ("%s: %s"):format(what, e) end
    else
      b.name, b.recipe_name, b.plan, b.cfg = plan.build_version, r.name, plan, cfg
      local other = by_dir[plan.output_dir]
      if other then
        errors[#errors + 1] = ("%s: builds %s into %s, as build %d does: give one a distinct build_name var"):format(
          what, plan.build_version, plan.output_dir, other.index)
      end
      by_dir[plan.output_dir] = b
      local ook, oerr = require("capil.build.pipeline").check_output(plan.output_dir, opts.force)
      if not ook then errors[#errors + 1] = ("%s: %s"):format(what, oerr) end
      local argv = { table.unpack(exe) }
      -- the parent ran the preflight (capil.build.preflight) of every build
      for _, x in ipairs({ "run", b.recipe, "--backend", b.backend, "--stages", b.stages, "--skip-preflight" }) do
        argv[#argv + 1] = x
      end
      for _, k in ipairs(FORWARD) do
        if opts[k] then argv[#argv + 1] = "--" .. k argv[#argv + 1] = opts[k] end
      end
      for _, k in ipairs(FORWARD_FLAGS) do if opts[k] then argv[#argv + 1] = "--" .. k end end
      for _, s in ipairs(opts.suite or {}) do argv[#argv + 1] = "--suite" argv[#argv + 1] = s end
      for _, f in ipairs(var_files) do argv[#argv + 1] = "--var-file" argv[#argv + 1] = f end
      -- the variables (passwords among them) go through a private var file,
      -- never the command line, which every local user can read in /proc
      if #vars > 0 then
        local path, verr = private_var_file(b.index, vars)
        if not path then
          errors[#errors + 1] = ("%s: %s"):format(what, verr)
        else
          argv[#argv + 1] = "--var-file"
          argv[#argv + 1] = path
        end
      end
      b.argv = argv
    end
  end
  if #errors > 0 then return nil, errors end
  return builds
end

-- ====================================================================== --
-- Status display                                                         --
-- ====================================================================== --

local function label(b, n)
  return ("[%d/%d] %s on %s"):format(b.index, n, b.name or b.recipe, b.backend)
end

local function state_text(b, now)
  if b.status == "running" then return ("running %.0f s"):format(now - b.t0) end
  if b.status == "queued" then return "queued" end
  if b.status == "ok" then return ("ok in %.0f s"):format(b.seconds) end
  if b.status == "skipped" then return "skipped (--fail-fast)" end
  return ("%s in %.0f s"):format(b.status, b.seconds or 0)
end

local Display = {}
Display.__index = Display

-- A status block redrawn in place on a terminal, plain lines otherwise.
local function display(builds, quiet, json_lines)
  return setmetatable({ builds = builds, tty = corelog.isatty(2) and not quiet and not json_lines, quiet = quiet,
    json = json_lines, drawn = 0, last = 0 }, Display)
end

function Display:line(s)
  if self.quiet then return end
  if self.json then return log.info(s) end
  if self.tty then
    self:clear()
    corelog.write(s .. "\n")
    self:draw(true)
  else
    corelog.write(s .. "\n")
  end
end

function Display:clear()
  if self.drawn > 0 then corelog.control(("\27[%dA\27[J"):format(self.drawn)) end
  self.drawn = 0
end

function Display:draw(force)
  if not self.tty then return end
  local now = runtime.now()
  if not force and now - self.last < 1 then return end
  self.last = now
  -- the cursor moves go as control sequences, the text (recipe names) through
  -- log.write, which escapes what it may hold
  if self.drawn > 0 then corelog.control(("\27[%dA"):format(self.drawn)) end
  for _, b in ipairs(self.builds) do
    corelog.control("\r\27[2K")
    corelog.write(label(b, #self.builds) .. ": " .. state_text(b, now) .. "\n")
  end
  self.drawn = #self.builds
end

-- ====================================================================== --
-- Children                                                               --
-- ====================================================================== --

local function start(b, disp, n, force)
  local dir = b.plan.output_dir
  -- --force: the parent removes the directory, before the child's console log goes there
  if force and fs.exists(dir) then fs.remove(dir, { recursive = true }) end
  local mok, merr = fs.mkdir(dir .. "/logs")
  if not mok then
    b.status, b.seconds, b.error = "failed", 0, merr
    disp:line(("%s: failed to start: %s"):format(label(b, n), merr))
    return
  end
  -- a report left by an earlier run must not pass for this one's
  fs.remove(dir .. "/report.json")
  fs.remove(dir .. "/test/report.json")
  b.console = dir .. "/logs/capil.log"
  local p, err = proc.spawn({ argv = b.argv, stdin = "null", stdout = b.console, stderr = "stdout", group = true })
  b.t0 = runtime.now()
  if not p then
    b.status, b.seconds, b.error = "failed", 0, err
    disp:line(("%s: failed to start: %s"):format(label(b, n), err))
    return
  end
  b.proc, b.pid, b.status = p, p.pid, "running"
  if not disp.tty then disp:line(("%s: started (pid %d, log %s)"):format(label(b, n), p.pid, b.console)) end
end

-- The last "capil: ..." line a child printed (or error record, with
-- --log-format json): its error when it failed outside the pipeline (a test
-- stage, an upload).
local function last_error(path)
  local text = fs.read(path) or ""
  local msg
  for line in text:gmatch("[^\n]+") do
    local m = line:match("^capil: (.*)$") or line:match("^error: (.*)$")
    if not m and line:match('^{.*"level":"error"') then
      local ok, rec = pcall(json.decode, line)
      m = ok and type(rec) == "table" and type(rec.msg) == "string" and rec.msg or nil
    end
    if m then msg = m end
  end
  return msg
end

-- Collects what a finished child left: its exit status, its build report
-- and test report.
local function collect(b, status, interrupted)
  b.seconds = runtime.now() - b.t0
  b.exit_code = status and status.code
  local dir = b.plan.output_dir
  local rep = json.read(dir .. "/report.json")
  b.report = type(rep) == "table" and rep or nil
  local trep = json.read(dir .. "/test/report.json")
  b.test_report = type(trep) == "table" and trep or nil
  if b.exit_code == 0 then
    b.status = "ok"
  elseif interrupted or b.exit_code == 130 or b.exit_code == 143 then
    b.status = "interrupted"
  else
    b.status = "failed"
  end
  if b.status ~= "ok" then
    b.error = (b.report and b.report.error) or (b.test_report and b.test_report.error) or last_error(b.console)
      or (b.status == "interrupted" and "interrupted") or ("exit code " .. tostring(b.exit_code))
  end
end

-- Sends SIGINT to every running child and waits for each to finish its
-- cleanups (killing its process group after `grace` seconds).
local function interrupt_all(builds, grace)
  for _, b in ipairs(builds) do
    if b.status == "running" then b.proc:kill("INT") end
  end
  for _, b in ipairs(builds) do
    if b.status == "running" then
      local st = b.proc:wait({ timeout = grace })
      if not st then
        b.proc:killgroup("KILL")
        st = b.proc:wait({ timeout = 10 })
      end
      b.proc:killgroup("TERM") -- what the child may have left in its group (it should have left nothing)
      collect(b, st, true)
    end
  end
end

-- ====================================================================== --
-- Reports                                                                --
-- ====================================================================== --

-- A report file, its directory made first.
local function write_report(path, text)
  local ok, err, code = fs.mkdir(fs.dirname(path))
  if not ok then return nil, err, code end
  return fs.write_atomic(path, text)
end

-- The outcome of each stage of a build: {name=, status="ok"|"failed"|
-- "skipped"|"interrupted", seconds=, error=}.
local function stage_results(b)
  local out = {}
  local rep, trep = b.report, b.test_report
  for _, st in ipairs(b.stage_list) do
    local r = { name = st }
    if st == "build" then
      if rep then
        r.status, r.seconds, r.error = rep.ok and "ok" or "failed", rep.seconds, rep.error
        if not rep.ok and b.status == "interrupted" then r.status = "interrupted" end
      else
        r.status = b.status == "ok" and "ok" or (b.status == "running" and "interrupted") or b.status
        r.error = r.status ~= "ok" and b.error or nil
      end
    elseif st == "test" then
      if trep then
        r.status, r.seconds, r.error = trep.ok and "ok" or "failed", trep.seconds, trep.error
      elseif out[#out].status == "ok" and b.status ~= "ok" then
        r.status, r.error = b.status, b.error
      else
        r.status = out[#out].status == "ok" and "ok" or "skipped"
      end
    elseif st == "upload" or st == "publish" then
      if out[#out].status ~= "ok" then r.status = "skipped"
      elseif b.status == "ok" then r.status = "ok"
      else r.status, r.error = b.status, b.error end
    end
    if r.status == "skipped" then r.error = nil end
    out[#out + 1] = r
  end
  return out
end

-- The image checks of a build: the build's own (checks step) and the test
-- stage's suites, as {name=, ok=, seconds=, detail=}.
local function check_results(b)
  local out = {}
  for _, c in ipairs(b.report and b.report.checks and b.report.checks.results or {}) do
    out[#out + 1] = { name = "check " .. tostring(c.name), ok = c.ok, seconds = c.seconds, detail = c.detail }
  end
  for _, su in ipairs(b.test_report and b.test_report.suites or {}) do
    for _, s in ipairs(su.steps or {}) do
      out[#out + 1] = { name = ("%s: %s"):format(su.name, tostring(s.name)), ok = s.ok, seconds = s.seconds,
        detail = s.detail }
    end
  end
  return out
end

local function artifacts(b)
  local a = b.report and b.report.artifacts
  if type(a) ~= "table" then return json.array({}) end
  local out = {}
  if a.ova then out[#out + 1] = { kind = "ova", path = a.ova, sha256 = a.sha256, size = a.size } end
  for _, d in ipairs(a.disks or {}) do
    out[#out + 1] = { kind = "disk", path = d.path, name = d.name, sha256 = d.sha256, size = d.size }
  end
  return out
end

--- The run report: totals and one entry per build.
---@param builds table[]
---@param info {seconds: number, interrupted: boolean, jobs: integer, shard?: string}
function M.report(builds, info)
  local r = { capil_version = runtime.version, jobs = info.jobs, seconds = math.floor(info.seconds * 1000 + 0.5) / 1000,
    interrupted = info.interrupted, shard = info.shard, builds = {}, total = #builds, passed = 0, failed = 0,
    counts = { ok = 0, failed = 0, interrupted = 0, skipped = 0 } }
  for _, b in ipairs(builds) do
    local steps = {}
    for _, s in ipairs(b.report and b.report.steps or {}) do
      steps[#steps + 1] = { id = s.id, kind = s.kind, seconds = s.seconds, status = s.status, error = s.error }
    end
    local e = {
      index = b.index, recipe = b.recipe_name or b.recipe, recipe_ref = b.recipe, bundle = b.bundle,
      build = b.name, backend = b.backend, status = b.status, pid = b.pid, exit_code = b.exit_code,
      seconds = b.seconds and math.floor(b.seconds * 1000 + 0.5) / 1000, output_dir = b.plan and b.plan.output_dir,
      log = b.plan and (b.plan.output_dir .. "/logs/build.log"), console = b.console,
      stages = stage_results(b), steps = #steps > 0 and steps or json.array({}), artifacts = artifacts(b),
      checks = check_results(b), error = b.error and log.redact(b.error) or nil,
      library = b.report and b.report.library or nil, publish = b.report and b.report.publish or nil,
    }
    if #e.checks == 0 then e.checks = json.array({}) end
    -- failed counts every build that did not pass; counts tells them apart
    if b.status == "ok" then r.passed = r.passed + 1 else r.failed = r.failed + 1 end
    r.counts[b.status] = (r.counts[b.status] or 0) + 1
    r.builds[#r.builds + 1] = e
  end
  r.ok = r.failed == 0
  if #r.builds == 0 then r.builds = json.array({}) end
  return r
end

-- Attribute values from builds and guests: escaped, never raising.
local xml_escape = require("capil.sys.xml").escape_attr_lossy

--- JUnit XML of a run report: a testsuite per build, a testcase per stage
--- and per image check.
---@param report table from M.report
---@return string
function M.junit(report)
  local body, total, failures, skipped = {}, 0, 0, 0
  for _, e in ipairs(report.builds) do
    local suite = ("%s on %s"):format(e.build or e.recipe, e.backend)
    local cases = {}
    for _, st in ipairs(e.stages) do
      cases[#cases + 1] = { name = "stage " .. st.name, status = st.status, seconds = st.seconds, detail = st.error }
    end
    for _, c in ipairs(e.checks) do
      cases[#cases + 1] = { name = c.name, status = c.ok and "ok" or "failed", seconds = c.seconds, detail = c.detail }
    end
    local f, sk = 0, 0
    for _, c in ipairs(cases) do
      if c.status == "skipped" then sk = sk + 1 elseif c.status ~= "ok" then f = f + 1 end
    end
    local secs = e.seconds or 0
    total, failures, skipped = total + #cases, failures + f, skipped + sk
    body[#body + 1] = ('  <testsuite name="%s" tests="%d" failures="%d" errors="0" skipped="%d" time="%.3f">'):format(
      xml_escape(suite), #cases, f, sk, secs)
    for _, c in ipairs(cases) do
      body[#body + 1] = ('    <testcase classname="%s" name="%s" time="%.3f">'):format(xml_escape(suite),
        xml_escape(c.name), c.seconds or 0)
      if c.status == "skipped" then
        body[#body + 1] = "      <skipped/>"
      elseif c.status ~= "ok" then
        body[#body + 1] = ('      <failure message="%s" type="%s"/>'):format(
          xml_escape(log.redact(c.detail or c.status)), xml_escape(c.status))
      end
      body[#body + 1] = "    </testcase>"
    end
    body[#body + 1] = "  </testsuite>"
  end
  local out = { '<?xml version="1.0" encoding="UTF-8"?>',
    ('<testsuites name="capil run" tests="%d" failures="%d" skipped="%d" time="%.3f">'):format(total, failures,
      skipped, report.seconds or 0) }
  for _, l in ipairs(body) do out[#out + 1] = l end
  out[#out + 1] = "</testsuites>"
  return table.concat(out, "\n") .. "\n"
end

-- ====================================================================== --
-- Running                                                                --
-- ====================================================================== --

--- Runs prepared builds, at most `o.jobs` at once. o: jobs, fail_fast,
--- report (path), junit (path), quiet, json (status as JSON log lines),
--- shard (from M.select_shard, recorded in the report). Returns the exit status: 0 all
--- passed, 1 some failed. Ctrl-C: the children get SIGINT, their cleanups
--- finish, the reports are written, and capil exits 130 (the host's
--- interrupt path runs this module's cleanup).
---@param builds table[] from M.prepare
---@param o {jobs: integer, force?: boolean, fail_fast?: boolean, report?: string, junit?: string, quiet?: boolean, json?: boolean, shard?: table}
---@return integer
function M.run(builds, o)
  local n = #builds
  local disp = display(builds, o.quiet, o.json)
  local t_start = runtime.now()
  for _, b in ipairs(builds) do b.status = "queued" end
  local finished = false
  local function write_reports(interrupted)
    if finished then return end
    finished = true
    local rep = M.report(builds, { seconds = runtime.now() - t_start, interrupted = interrupted, jobs = o.jobs,
      shard = o.shard and o.shard.label })
    if o.report then
      local ok, err = write_report(o.report, log.redact(json.encode(rep, { indent = 2, sort_keys = true })) .. "\n")
      if not ok then log.error("report: %s", err) end
    end
    if o.junit then
      local ok, err = write_report(o.junit, M.junit(rep))
      if not ok then log.error("junit: %s", err) end
    end
    return rep
  end
  -- Ctrl-C unwinds the loop below; the host then runs the cleanups, and
  -- this one forwards the interrupt and waits for the children
  local guard = cleanup.push("parallel builds", function()
    disp:clear()
    corelog.write("capil: interrupted: stopping the running builds and waiting for their cleanups\n")
    interrupt_all(builds, M.INTERRUPT_GRACE)
    for _, b in ipairs(builds) do if b.status == "queued" then b.status = "skipped" end end
    disp.tty = false
    for _, b in ipairs(builds) do
      if b.status == "interrupted" then disp:line(("%s: interrupted"):format(label(b, n))) end
    end
    write_reports(true)
  end)

  local next_i, running, stop = 1, 0, false
  while true do
    while not stop and next_i <= n and running < o.jobs do
      local b = builds[next_i]
      next_i = next_i + 1
      start(b, disp, n, o.force)
      if b.status == "running" then running = running + 1 end
    end
    if running == 0 then break end
    for _, b in ipairs(builds) do
      if b.status == "running" and not b.proc:running() then
        running = running - 1
        collect(b, b.proc:wait())
        b.proc:close()
        local msg = ("%s: %s"):format(label(b, n), state_text(b, runtime.now()))
        if b.status ~= "ok" then
          msg = msg .. (": %s\n    log: %s"):format(log.redact(b.error or "?"), b.plan.output_dir .. "/logs/build.log")
        end
        disp:line(msg)
        if b.status ~= "ok" and o.fail_fast and not stop then
          stop = true
          disp:line("--fail-fast: stopping the other builds")
          interrupt_all(builds, M.INTERRUPT_GRACE)
          running = 0
          for _, x in ipairs(builds) do
            if x.status == "interrupted" then disp:line(("%s: interrupted"):format(label(x, n))) end
          end
        end
      end
    end
    disp:draw()
    if running > 0 then runtime.sleep(0.2) end
  end
  for _, b in ipairs(builds) do if b.status == "queued" then b.status = "skipped" end end
  guard:cancel()
  disp:draw(true)
  local rep = write_reports(false)
  disp.tty = false
  disp:line(("%d of %d builds passed in %.0f s"):format(rep.passed, n, runtime.now() - t_start))
  if o.report then disp:line("report: " .. o.report) end
  return rep.failed == 0 and 0 or 1
end

-- ====================================================================== --
-- Merging the reports of several shards                                  --
-- ====================================================================== --

local function suite_name(e)
  return ("%s on %s"):format(e.build or e.recipe, e.backend)
end

--- Merges run reports (M.report, as `capil run --report` wrote them, one
--- per shard) into one: every build kept (with its shard), counts summed,
--- seconds the longest shard's, ok only when every input is ok and no shard
--- is missing. `inputs` is a list of {path=, data=}. Returns the report and
--- a list of warnings, or nil and a list of errors (not a run report, shards
--- of different N, a shard or a build twice).
---@param inputs {path: string, data: any}[]
---@return table|nil report, string[] warnings_or_errors
function M.merge_reports(inputs)
  local errors, warnings = {}, {}
  local r = { capil_version = nil, builds = {}, shards = {}, total = 0, passed = 0, failed = 0,
    counts = { ok = 0, failed = 0, interrupted = 0, skipped = 0 }, seconds = 0, interrupted = false, jobs = 0 }
  local n_of, by_k, by_build, versions = nil, {}, {}, {}
  local sharded, unsharded = 0, 0
  for _, inp in ipairs(inputs) do
    local d, p = inp.data, inp.path
    if type(d) ~= "table" or json.is_array(d) or type(d.builds) ~= "table" or math.type(d.total) ~= "integer" then
      errors[#errors + 1] = ("%s: not a report of 'capil run --report' (no builds and total; a build's own"
        .. " report.json is not one)"):format(p)
    elseif #d.builds ~= d.total then
      errors[#errors + 1] = ("%s: total says %d builds but the report lists %d"):format(p, d.total, #d.builds)
    else
      local k, n
      if d.shard ~= nil then
        k, n = bundle.parse_shard(d.shard, "shard")
        if not k then errors[#errors + 1] = ("%s: %s"):format(p, n) end
      end
      if k then
        sharded = sharded + 1
        if n_of and n ~= n_of.n then
          errors[#errors + 1] = ("%s: shard %s does not belong with %s's shard %s: the numbers of shards differ"
            .. " (%d and %d)"):format(p, d.shard, n_of.path, n_of.shard, n, n_of.n)
        end
        n_of = n_of or { n = n, path = p, shard = d.shard }
        if by_k[k] then
          errors[#errors + 1] = ("%s: shard %s was already given in %s"):format(p, d.shard, by_k[k])
        end
        by_k[k] = by_k[k] or p
      else
        unsharded = unsharded + 1
      end
      if d.capil_version then versions[tostring(d.capil_version)] = true end
      r.capil_version = r.capil_version or d.capil_version
      for i, e in ipairs(d.builds) do
        if type(e) ~= "table" then
          errors[#errors + 1] = ("%s: builds[%d] is not a build"):format(p, i)
        else
          local name = suite_name(e)
          if by_build[name] then
            errors[#errors + 1] = ("%s: build %s is also in %s: give each shard once"):format(p, name, by_build[name])
          end
          by_build[name] = by_build[name] or p
          local copy = {}
          for key, v in pairs(e) do copy[key] = v end
          copy.shard = d.shard
          r.builds[#r.builds + 1] = copy
        end
      end
      r.total = r.total + d.total
      r.passed = r.passed + (math.tointeger(d.passed) or 0)
      r.failed = r.failed + (math.tointeger(d.failed) or 0)
      for key, v in pairs(type(d.counts) == "table" and d.counts or {}) do
        if math.type(v) == "integer" then r.counts[key] = (r.counts[key] or 0) + v end
      end
      if type(d.seconds) == "number" and d.seconds > r.seconds then r.seconds = d.seconds end
      r.interrupted = r.interrupted or d.interrupted == true
      r.jobs = r.jobs + (math.tointeger(d.jobs) or 0)
      r.shards[#r.shards + 1] = { shard = d.shard, file = p, total = d.total, passed = d.passed, failed = d.failed,
        ok = d.ok == true, seconds = d.seconds }
      if d.ok ~= true then r.some_not_ok = true end
    end
  end
  if sharded > 0 and unsharded > 0 then
    errors[#errors + 1] = "reports with a shard and reports without one do not merge: give the reports of one"
      .. " sharded run (capil run --shard K/N --report F)"
  end
  if #inputs == 0 then errors[#errors + 1] = "no report to merge" end
  if #errors > 0 then return nil, errors end
  local missing = {}
  if n_of then
    for k = 1, n_of.n do if not by_k[k] then missing[#missing + 1] = ("%d/%d"):format(k, n_of.n) end end
  end
  if #missing > 0 then
    warnings[#warnings + 1] = ("no report of shard %s: the merged report is not ok"):format(
      table.concat(missing, ", "))
  end
  local vs = sorted_keys(versions)
  if #vs > 1 then warnings[#warnings + 1] = "the reports come from different capil versions: " .. table.concat(vs, ", ") end
  -- by shard, then as each shard ran them
  local function kof(e) return e.shard and bundle.parse_shard(e.shard) or 0 end
  for i, e in ipairs(r.builds) do e.pos = i end
  table.sort(r.builds, function(a, b)
    local ka, kb = kof(a), kof(b)
    if ka ~= kb then return ka < kb end
    return a.pos < b.pos
  end)
  for _, e in ipairs(r.builds) do e.pos = nil end
  r.ok = not r.some_not_ok and r.failed == 0 and #missing == 0
  r.some_not_ok = nil
  r.missing_shards = #missing > 0 and missing or nil
  if #r.builds == 0 then r.builds = json.array({}) end
  return r, warnings
end

--- Merges JUnit documents (parsed with capil.sys.xml: <testsuites> or one
--- <testsuite>) into one <testsuites> text: every testsuite kept, the
--- totals summed. `inputs` is a list of {path=, doc=}; `expect` (optional,
--- a merged report) names the testsuites there must be, one per build.
--- Returns the XML text, or nil and a list of errors.
---@param inputs {path: string, doc: table}[]
---@param expect? table
---@return string|nil xml_text, string[]? errors
function M.merge_junit(inputs, expect)
  local xml = require("capil.sys.xml")
  local errors, suites, seen = {}, {}, {}
  local totals = { tests = 0, failures = 0, errors = 0, skipped = 0, time = 0 }
  for _, inp in ipairs(inputs) do
    local doc = inp.doc
    local list
    if doc.name == "testsuites" then
      list = xml.children(doc, "testsuite")
    elseif doc.name == "testsuite" then
      list = { doc }
    else
      errors[#errors + 1] = ("%s: not JUnit XML (the root is <%s>, not <testsuites>)"):format(inp.path, doc.name)
      list = {}
    end
    for _, su in ipairs(list) do
      local name = xml.attr(su, "name") or ""
      if seen[name] then
        errors[#errors + 1] = ("%s: testsuite '%s' is also in %s: give each shard once"):format(inp.path, name,
          seen[name])
      end
      seen[name] = seen[name] or inp.path
      for key in pairs(totals) do
        local v = tonumber(xml.attr(su, key) or "0")
        if not v then
          errors[#errors + 1] = ("%s: testsuite '%s': %s is not a number"):format(inp.path, name, key)
        else
          totals[key] = totals[key] + v
        end
      end
      suites[#suites + 1] = su
    end
  end
  if expect then
    local want = {}
    for _, e in ipairs(expect.builds) do want[suite_name(e)] = true end
    for name, p in pairs(seen) do
      if not want[name] then
        errors[#errors + 1] = ("%s: testsuite '%s' has no build in the JSON reports: the JUnit files and the"
          .. " reports are of different runs"):format(p, name)
      end
    end
    for _, name in ipairs(sorted_keys(want)) do
      if not seen[name] then
        errors[#errors + 1] = ("build '%s' of the JSON reports has no testsuite in the JUnit files given"):format(name)
      end
    end
  end
  if #errors > 0 then return nil, errors end
  local root = xml.element("testsuites", { name = "capil run", tests = math.tointeger(totals.tests) or totals.tests,
    failures = math.tointeger(totals.failures) or totals.failures, errors = math.tointeger(totals.errors) or
    totals.errors, skipped = math.tointeger(totals.skipped) or totals.skipped,
    time = ("%.3f"):format(totals.time) }, suites)
  return xml.write(root, { indent = 2 }) .. "\n"
end

return M
