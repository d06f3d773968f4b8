--- capil.build.preflight — what a build needs, checked once its plan is
--- resolved and before anything starts: no download, no output directory,
--- no VM, no HTTP server. The common checks (the ISO's cache state, the
--- installer CD's xorriso, free space for the output directory and the ISO
--- cache) and the backend's own (`capil.Backend.preflight`: tools and the
--- accelerator on this machine, or the server, the login and the placement
--- on vSphere) fill one list, so a run names every problem at once; notes
--- (TCG instead of KVM) are facts, not problems. `capil run` stops with
--- exit 2 on a problem; `capil run --dry-run` prints the result.
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local backend = require("capil.backend")

local M = {}

--- The exported streamOptimized VMDK of a node image, as a share of its
--- disk size (a 20 GiB disk gives under 5 GiB); the OVA holds it once more.
M.OVA_RATIO = 0.25

--- Bytes assumed for an ISO still to be downloaded (its size is not asked
--- for before the build: the preflight sends no request to the ISO's server).
M.ISO_ESTIMATE = 4 * 1024 * 1024 * 1024

local MiB = 1024 * 1024

--- Bytes as "12.3 GiB" (or MiB below a GiB).
---@param n number
---@return string
function M.size(n)
  if n >= 1024 * MiB then return ("%.1f GiB"):format(n / (1024 * MiB)) end
  return ("%.0f MiB"):format(n / MiB)
end

---@class capil.Preflight what a backend's preflight gets (and fills)
---@field plan table the resolved plan
---@field settings table the plan's settings (secrets as their variable: read them with secret)
---@field secret fun(var: string): string|nil
---@field cache_dir string capil's cache directory
---@field getenv fun(name: string): string|nil
---@field problems string[] what stops the build
---@field notes string[] facts worth knowing (the accelerator)
local Check = {}
Check.__index = Check

--- Records a problem (the build cannot start).
function Check:fail(fmt, ...)
  self.problems[#self.problems + 1] = log.redact(select("#", ...) > 0 and fmt:format(...) or fmt)
end

--- Records a note (not a problem).
function Check:note(fmt, ...)
  self.notes[#self.notes + 1] = log.redact(select("#", ...) > 0 and fmt:format(...) or fmt)
end

--- The plan's first step of `kind`, or nil.
---@param kind string
---@return table|nil
function Check:step(kind)
  return require("capil.build.plan").step(self.plan, kind)
end

--- The path of program `name` on PATH, else a problem saying what needs it
--- and how to get it (`why`: "to create the disk"; `hint`: "install qemu-utils").
---@param name string
---@param why string
---@param hint? string
---@return string|nil
function Check:tool(name, why, hint)
  local path = self.getenv("PATH") or ""
  for dir in path:gmatch("[^:]+") do
    local p = dir .. "/" .. name
    local st = fs.stat(p)
    if st and st.type ~= "directory" and st.mode & 73 ~= 0 then return p end -- 0111: executable
  end
  self:fail("%s not found on PATH (needed %s)%s", name, why, hint and ("; " .. hint) or "")
end

--- Asks for `bytes` free in `dir` (which may not exist yet: its nearest
--- existing parent is measured) for `what` ("the VM's disk"). Needs on the
--- same file system add up; M.run compares them with the free space.
---@param dir string
---@param bytes number
---@param what string
function Check:space(dir, bytes, what)
  self.needs[#self.needs + 1] = { dir = dir, bytes = bytes, what = what }
end

-- The nearest existing directory at or above `dir`.
local function existing(dir)
  local d = dir ~= "" and dir or "."
  while not fs.exists(d) do
    local up = fs.dirname(d)
    if up == d or up == "" then return "." end
    d = up
  end
  return d
end

-- Sums the space needs per file system and fails those above its free space.
local function check_space(c)
  local by_dev, order = {}, {}
  for _, n in ipairs(c.needs) do
    local at = existing(n.dir)
    local st = fs.stat(at)
    local key = st and st.dev or at
    local g = by_dev[key]
    if not g then
      g = { at = at, bytes = 0, parts = {} }
      by_dev[key] = g
      order[#order + 1] = g
    end
    g.bytes = g.bytes + n.bytes
    g.parts[#g.parts + 1] = ("%s %s in %s"):format(n.what, M.size(n.bytes), n.dir)
  end
  for _, g in ipairs(order) do
    local sp, err = fs.space(g.at)
    if not sp then
      c:fail("free space of %s: %s", g.at, tostring(err))
    elseif sp.free < g.bytes then
      c:fail("not enough free space on the file system of %s: %s free, the build needs about %s (%s); free some "
        .. "space, or choose another place with --output (the build) or XDG_CACHE_HOME (the ISO cache), or a smaller "
        .. "disk_size", g.at, M.size(sp.free), M.size(g.bytes), table.concat(g.parts, ", "))
    end
  end
end

--- Where the ISO comes from, without a request: {state = "cached", path =}
--- (in the cache and verified), {state = "local", path =} (a file:// URL
--- whose file exists), or {state = "download", url =, urls =, path =} (the
--- first http(s) URL; `path` is where the cache will keep it); nil for a
--- plan without a fetch_iso step (a recipe booting a kernel directly).
---@param plan table
---@return table|nil
function M.iso(plan)
  local step = require("capil.build.plan").step(plan, "fetch_iso")
  if not step then return nil end
  if require("capil.build.pipeline").cached_iso(step.cache_path, step.checksum) then
    return { state = "cached", path = step.cache_path, checksum = step.checksum }
  end
  local missing = {}
  for _, url in ipairs(step.urls or {}) do
    local file = url:match("^file://(/.*)$")
    if file then
      if fs.exists(file) then return { state = "local", path = file, checksum = step.checksum } end
      missing[#missing + 1] = file
    else
      return { state = "download", url = url, urls = step.urls, path = step.cache_path, checksum = step.checksum }
    end
  end
  return { state = "missing", files = missing, checksum = step.checksum }
end

-- The checks every build gets: the ISO, the installer CD, the output's space.
local function common(c)
  local plan = c.plan
  c.iso = M.iso(plan)
  -- a missing local ISO fails the first step, before anything costly: a
  -- problem for a dry run, which promises the build would start
  if c.iso and c.iso.state == "missing" and c.dry_run then
    c:fail("ISO: no such file %s, and no other iso_url to download from; check iso_url",
      table.concat(c.iso.files, ", "))
  elseif c.iso and c.iso.state == "download" then
    c:space(fs.dirname(c.iso.path), M.ISO_ESTIMATE, "the ISO (estimated)")
  end
  local inst = c:step("serve_installer")
  if inst and inst.cd_files and #inst.cd_files > 0 then
    c:tool("xorriso", "to make the installer CD, labelled " .. tostring(inst.cd_label), "install xorriso")
  end
  local vm = c:step("create_vm")
  local disk = (vm and vm.disk_mb or 0) * MiB
  if disk > 0 then c:space(plan.output_dir, 2 * disk * M.OVA_RATIO, "the VMDK and the OVA (estimated)") end
end

--- Runs the checks of `plan` (common ones, then the backend's). Returns
--- {ok = boolean, problems = {...}, notes = {...}, iso = M.iso(plan)}.
---@param plan table a resolved plan
---@param cfg table its configuration (secrets are read from it by variable)
--- `opts.dry_run` makes a missing local ISO (file:// iso_url) a problem.
---@param opts? {cache_dir?: string, getenv?: fun(name: string): string?, dry_run?: boolean}
---@return {ok: boolean, problems: string[], notes: string[], iso: table|nil}
function M.run(plan, cfg, opts)
  opts = opts or {}
  local c = setmetatable({ plan = plan, settings = plan.settings or {}, cache_dir = opts.cache_dir,
    getenv = opts.getenv or os.getenv, dry_run = opts.dry_run, problems = {}, notes = {}, needs = {},
    secret = function(var) return cfg:get(var) end }, Check)
  common(c)
  local b, berr = backend.get(plan.backend)
  if not b then
    c:fail(berr)
  elseif b.preflight then
    local ok, err = pcall(b.preflight, c)
    if not ok then c:fail("%s preflight: %s", plan.backend, tostring(err)) end
  end
  check_space(c)
  return { ok = #c.problems == 0, problems = c.problems, notes = c.notes, iso = c.iso }
end

--- The ids of the plan's steps, in run order.
---@param plan table
---@return string[]
function M.steps(plan)
  local out = {}
  for _, s in ipairs(plan.steps or {}) do out[#out + 1] = s.skip and (s.id .. " (skipped)") or s.id end
  return out
end

--- What a dry run prints of one build: its name, backend, recipe, output
--- directory, VM, ISO, steps, notes and problems (redacted lines).
---@param plan table
---@param result table from M.run
---@param label? string the build's name in a bundle
---@return string[]
function M.describe(plan, result, label)
  local lines = {}
  local function add(fmt, ...) lines[#lines + 1] = log.redact(fmt:format(...)) end
  add("%s: %s on %s (%s)", label or plan.build_version, plan.recipe or "?", plan.backend, plan.file or "?")
  add("  output: %s", plan.output_dir)
  add("  vm: %s", plan.build_version)
  local iso = result.iso
  if not iso then
    add("  iso: none (the recipe boots a kernel)")
  elseif iso.state == "cached" then
    add("  iso: cached, verified: %s", iso.path)
  elseif iso.state == "local" then
    add("  iso: local file %s (checked against %s when the build starts)", iso.path, iso.checksum)
  elseif iso.state == "download" then
    add("  iso: would download %s into %s", iso.url, iso.path)
  else
    add("  iso: missing (%s)", table.concat(iso.files, ", "))
  end
  add("  steps: %s", table.concat(M.steps(plan), ", "))
  for _, n in ipairs(result.notes) do add("  note: %s", n) end
  for _, p in ipairs(result.problems) do add("  problem: %s", p) end
  add("  preflight: %s", result.ok and "ok" or ("%d problem%s"):format(#result.problems,
    #result.problems == 1 and "" or "s"))
  return lines
end

return M
