-- Parallel builds and recipe bundles against the vSphere simulator (vcsim
-- with our shim, spec/support/vcsim) and a real sshd as every build's
-- guest: `capil run BUNDLE.lua -j 4` with one build made to fail, the JSON
-- report and JUnit XML, Ctrl-C to the parent, --only, usage errors before
-- anything starts, and `capil run --all -j 2`.
local capil = require("support.capil")
local vcsim = require("support.vcsim")
local sshd = require("support.sshd")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local runtime = require("capil.core.runtime")
local json = require("capil.sys.json")
local xml = require("capil.sys.xml")

local PASSWORD = "Vc-par4llel!pw"
local SEMVER = "v1.16.14"

local buildenv = require("support.buildenv")
local run_tool = buildenv.run_tool

local function names_in(sim)
  local set = {}
  for _, vm in ipairs(sim:vms()) do set[vm.name] = (set[vm.name] or 0) + 1 end
  return set
end

-- Work dirs (.work-*) anywhere under dir.
local function work_dirs(dir)
  local found = {}
  for _, f in ipairs(fs.list(dir) or {}) do
    local p = dir .. "/" .. f
    if f:match("^%.work") then found[#found + 1] = p end
    local st = fs.stat(p)
    if st and st.type == "directory" then
      for _, x in ipairs(work_dirs(p)) do found[#found + 1] = x end
    end
  end
  return found
end

describe("parallel builds and bundles #vsphere #parallel", function()
  local tmp, sim, ssh, iso, iso_sum, key, varfile, recipes, cwd

  setup(function()
    cwd = assert(fs.cwd())
    tmp = peer.dir("parallel-spec")
    iso, iso_sum = buildenv.iso(tmp)
    local vmdk = buildenv.export_vmdk(tmp, 1)
    key = sshd.keygen(tmp, "build_ed25519")
    ssh = sshd.start({ authorized = { key } })
    sim = vcsim.start({ username = "administrator@vsphere.local", password = PASSWORD, tls = true,
      guest_ip = "127.0.0.1", guest_ip_delay = 0.1, export_disk = vmdk })
    varfile = tmp .. "/vsphere.json"
    assert(json.write(varfile, {
      vcenter_server = sim.url, username = sim.username, password = PASSWORD, vcenter_ca_file = sim.ca_file,
      datacenter = "DC0", cluster = "DC0_C0", datastore = "LocalDS_0", network = "VM Network", folder = "",
      insecure_connection = "false", convert_to_template = "false", keep_vm = "false",
    }))
    -- a recipes dir with two recipes (the fixture under two names) and what they use
    recipes = tmp .. "/recipes"
    assert(fs.mkdir(recipes))
    run_tool({ "cp", "-r", "spec/fixtures/recipes/http", "spec/fixtures/recipes/roles", recipes })
    local src = assert(fs.read("spec/fixtures/recipes/vsphere.lua"))
    for _, n in ipairs({ "alpha", "beta" }) do
      local text, k = src:gsub('name = "vsphere%-fixture"', ('name = "%s"'):format(n))
      assert(k == 1)
      assert(fs.write(recipes .. "/" .. n .. ".lua", text))
    end
  end)

  teardown(function()
    if sim then sim:stop() end
    if ssh then ssh.stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  -- The variables every build needs, as --var arguments.
  local function common_vars()
    return {
      "iso_url=file://" .. iso, "iso_checksum=" .. iso_sum, "ssh_private_key_file=" .. key,
      "ssh_port=" .. ssh.port, "ssh_username=" .. ssh.user, "ip_settle_timeout=0.2s",
      "probe_file=" .. tmp .. "/probe",
    }
  end

  -- The same as bundle defaults (Lua source), where an entry can override them.
  local function common_defaults(extra)
    local parts = {}
    for _, v in ipairs(common_vars()) do
      local k, x = v:match("^([^=]+)=(.*)$")
      parts[#parts + 1] = ("%s = %q"):format(k, x)
    end
    for _, e in ipairs(extra or {}) do parts[#parts + 1] = e end
    return ", vars = { " .. table.concat(parts, ", ") .. " }"
  end

  local function argv(list, no_vars)
    local a = {}
    for _, x in ipairs(list) do a[#a + 1] = x end
    if not no_vars then
      for _, v in ipairs(common_vars()) do a[#a + 1] = "--var" a[#a + 1] = v end
    end
    return a
  end

  local function run(args, no_vars)
    return capil.run(argv(args, no_vars), { timeout = 120, env_add = { XDG_CACHE_HOME = tmp .. "/cache" } })
  end

  -- Writes a bundle of the fixture recipe, one entry per item of `entries`
  -- (Lua source of the entry's extra fields).
  local function write_bundle(name, entries, defaults)
    local lines = { "-- test bundle", "return {",
      ("  defaults = { backend = 'vsphere', var_files = { %q }%s },"):format(varfile, defaults or "") }
    for _, e in ipairs(entries) do lines[#lines + 1] = "  " .. e .. "," end
    lines[#lines + 1] = "}"
    local path = tmp .. "/" .. name
    assert(fs.write(path, table.concat(lines, "\n") .. "\n"))
    return path
  end

  local fixture = function() return cwd .. "/spec/fixtures/recipes/vsphere.lua" end

  it("runs four builds with -j 4; one fails, the others finish; the report and JUnit say so", function()
    local bad = ("%064x"):format(7)
    local entries = {}
    for i = 1, 4 do
      entries[i] = ("{ recipe = %q, vars = { build_name = 'par%d'%s } }"):format(fixture(), i,
        i == 3 and (", iso_checksum = %q"):format(bad) or "")
    end
    -- the ISO over HTTP: the builds share the ISO cache (one downloads, the others wait for it)
    local isodir = tmp .. "/isos"
    assert(fs.mkdir(isodir))
    assert(fs.copy(iso, isodir .. "/installer.iso"))
    local srv = assert(require("capil.build.installer").serve({ dir = isodir }))
    local url = ("http://127.0.0.1:%d/installer.iso"):format(srv.port)
    -- the variables in the bundle's defaults: the command line's --var would win over the entry's
    local bundle = write_bundle("four.lua", entries, common_defaults({ ("iso_url = %q"):format(url) }))
    local out = tmp .. "/out-four"
    local report, junit = tmp .. "/reports/report.json", tmp .. "/reports/junit.xml"
    local r = run({ "run", bundle, "-j", "4", "--recipes-dir", "spec/fixtures/recipes", "--output", out,
      "--report", report, "--junit", junit }, true)
    srv:close()
    assert.equal(1, r.code, r.stderr)
    -- one download into the cache, no temp file or lock left there
    local cached = 0
    for _, i in ipairs({ 1, 2, 4 }) do
      local l = assert(fs.read(("%s/par%d-kube-%s/logs/build.log"):format(out, i, SEMVER)))
      if l:find("(cached", 1, true) then cached = cached + 1 end
    end
    assert.equal(2, cached)
    local cache = tmp .. "/cache/capil/iso"
    assert.same({ iso_sum .. ".iso", iso_sum .. ".iso.verified" }, (function()
      local t = {}
      for _, f in ipairs(fs.list(cache)) do t[#t + 1] = f end
      table.sort(t)
      return t
    end)())
    for i = 1, 4 do
      local build = ("par%d-kube-%s"):format(i, SEMVER)
      assert.equal(i ~= 3, fs.exists(("%s/%s/%s.ova"):format(out, build, build)), build)
      assert.is_true(fs.exists(("%s/%s/logs/build.log"):format(out, build)), build)
    end
    assert.matches("[3/4] par3-kube-" .. SEMVER .. " on vsphere: failed in", r.stderr, 1, true)
    assert.matches("[1/4] par1-kube-" .. SEMVER .. " on vsphere: ok in", r.stderr, 1, true)

    local rep = assert(json.read(report))
    assert.equal(4, rep.total)
    assert.equal(3, rep.passed)
    assert.equal(1, rep.failed)
    assert.is_false(rep.ok)
    for i, b in ipairs(rep.builds) do
      assert.equal(i, b.index)
      assert.equal("vsphere", b.backend)
      assert.equal("vsphere-fixture", b.recipe)
      assert.equal(("par%d-kube-%s"):format(i, SEMVER), b.build)
      assert.equal("build", b.stages[1].name)
      assert.is_false(proc.alive(b.pid))
      if i == 3 then
        assert.equal("failed", b.status)
        assert.matches("step fetch%-iso failed: .*checksum", b.error)
        assert.equal("failed", b.stages[1].status)
        assert.equal("fetch-iso", b.steps[1].id)
        assert.equal("failed", b.steps[1].status)
        assert.equal(0, #b.artifacts)
      else
        assert.equal("ok", b.status)
        assert.equal("ok", b.stages[1].status)
        assert.is_true(#b.steps >= 8)
        for _, s in ipairs(b.steps) do
          assert.equal("ok", s.status)
          assert.is_number(s.seconds)
        end
        local ova = b.artifacts[1]
        assert.equal("ova", ova.kind)
        assert.equal(assert(hash.file(ova.path)), ova.sha256)
      end
    end

    local doc = assert(xml.parse(assert(fs.read(junit))))
    assert.equal("testsuites", doc.name)
    assert.equal("1", xml.attr(doc, "failures"))
    local suites = xml.children(doc, "testsuite")
    assert.equal(4, #suites)
    local passed, failed = 0, 0
    for _, su in ipairs(suites) do
      local cases = xml.children(su, "testcase")
      assert.is_true(#cases >= 1)
      local f = xml.find(cases[1], "failure")
      if f then
        failed = failed + 1
        assert.equal("par3-kube-" .. SEMVER .. " on vsphere", xml.attr(su, "name"))
        assert.matches("step fetch%-iso failed: .*checksum", xml.attr(f, "message"))
      else
        passed = passed + 1
        assert.equal("stage build", xml.attr(cases[1], "name"))
      end
    end
    assert.equal(3, passed)
    assert.equal(1, failed)
    -- keep_vm=false: nothing of these builds is left in the simulator
    local vms = names_in(sim)
    for i = 1, 4 do assert.is_nil(vms[("par%d-kube-%s"):format(i, SEMVER)]) end
    assert.same({}, work_dirs(out))
  end)

  it("Ctrl-C to the parent interrupts every build: exit 130, no child, VM or work dir left", function()
    local entries = {}
    for i = 1, 2 do
      entries[i] = ("{ recipe = %q, vars = { build_name = 'intr%d' } }"):format(fixture(), i)
    end
    -- the builds wait in the boot command, with their VMs created
    -- a password among the bundle's vars: it must not show in the children's argv
    local bundle = write_bundle("interrupt.lua", entries, (", vars = { boot_wait = '120s', password = %q }"):format(
      PASSWORD))
    local out = tmp .. "/out-intr"
    local report = tmp .. "/intr-report.json"
    local console = tmp .. "/intr-console.log"
    local a = { capil.exe }
    for _, x in ipairs(argv({ "run", bundle, "-j", "2", "--recipes-dir", "spec/fixtures/recipes", "--output", out,
      "--report", report })) do a[#a + 1] = x end
    local p = assert(proc.spawn({ argv = a, stdin = "null", stdout = console, stderr = "stdout",
      env_add = { XDG_CACHE_HOME = tmp .. "/cache" } }))
    local names = { "intr1-kube-" .. SEMVER, "intr2-kube-" .. SEMVER }
    local deadline = runtime.now() + 60
    local function both_waiting()
      for _, n in ipairs(names) do
        local l = fs.read(("%s/%s/logs/build.log"):format(out, n)) or ""
        if not l:find("before typing the boot command", 1, true) then return false end
      end
      return true
    end
    while not both_waiting() do
      assert(p:running(), "the parent exited early: " .. (fs.read(console) or ""))
      assert(runtime.now() < deadline, "the builds did not reach the boot command: " .. (fs.read(console) or ""))
      runtime.sleep(0.2)
    end
    local vms = names_in(sim)
    for _, n in ipairs(names) do assert.equal(1, vms[n], n) end
    -- every local user can read /proc/<pid>/cmdline: no secret travels there
    local children, var_files = 0, {}
    for _, pid in ipairs(fs.list("/proc") or {}) do
      local stat = pid:match("^%d+$") and fs.read("/proc/" .. pid .. "/stat")
      local ppid = stat and stat:match("^%d+ %b() %S+ (%d+)")
      if ppid and tonumber(ppid) == p.pid then
        local cmdline = assert(fs.read("/proc/" .. pid .. "/cmdline"))
        children = children + 1
        assert.is_nil(cmdline:find(PASSWORD, 1, true), "a child's argv holds the password")
        local vf = cmdline:match("%-%-var%-file%z([^%z]*capil%-vars[^%z]*)")
        assert.is_string(vf, "no private var file in " .. cmdline:gsub("%z", " "))
        assert.equal(tonumber("600", 8), assert(fs.stat(vf)).mode)
        assert.equal(tonumber("700", 8), assert(fs.stat(fs.dirname(vf))).mode)
        var_files[#var_files + 1] = vf
      end
    end
    assert.equal(2, children)
    assert(p:kill("INT"))
    local st = assert(p:wait({ timeout = 60 }))
    p:close()
    assert.equal(130, st.code, fs.read(console))
    local rep = assert(json.read(report))
    assert.is_true(rep.interrupted)
    assert.equal(2, #rep.builds)
    for _, b in ipairs(rep.builds) do
      assert.equal("interrupted", b.status)
      assert.is_number(b.pid)
      assert.is_false(proc.alive(b.pid), "child " .. b.pid .. " still runs")
    end
    vms = names_in(sim)
    for _, n in ipairs(names) do assert.is_nil(vms[n], n .. " left in the simulator") end
    assert.same({}, work_dirs(out))
    for _, vf in ipairs(var_files) do assert.is_false(fs.exists(vf), vf .. " left behind") end
  end)

  it("--fail-fast interrupts the running builds and skips the queued ones", function()
    local entries = {
      ("{ recipe = %q, vars = { build_name = 'ff1', iso_checksum = %q } }"):format(fixture(), ("%064x"):format(9)),
      ("{ recipe = %q, vars = { build_name = 'ff2', boot_wait = '120s' } }"):format(fixture()),
      ("{ recipe = %q, vars = { build_name = 'ff3' } }"):format(fixture()),
    }
    local bundle = write_bundle("failfast.lua", entries, common_defaults())
    local out = tmp .. "/out-ff"
    local report, junit = tmp .. "/ff-report.json", tmp .. "/ff-junit.xml"
    local r = run({ "run", bundle, "-j", "2", "--fail-fast", "--recipes-dir", "spec/fixtures/recipes", "--output", out,
      "--report", report, "--junit", junit }, true)
    assert.equal(1, r.code, r.stderr)
    local rep = assert(json.read(report))
    assert.same({ "failed", "interrupted", "skipped" }, { rep.builds[1].status, rep.builds[2].status,
      rep.builds[3].status })
    assert.is_false(proc.alive(rep.builds[2].pid))
    assert.is_nil(names_in(sim)["ff2-kube-" .. SEMVER])
    assert.is_false(fs.exists(out .. "/ff3-kube-" .. SEMVER))
    local doc = assert(xml.parse(assert(fs.read(junit))))
    local suites = xml.children(doc, "testsuite")
    assert.equal("1", xml.attr(suites[3], "skipped"))
    assert.matches("interrupted", xml.attr(xml.find(xml.children(suites[2], "testcase")[1], "failure"), "message"))
  end)

  it("a bundle with --only runs the named recipes", function()
    local bundle = write_bundle("only.lua", { "{ recipe = 'alpha' }", "{ recipe = 'beta' }" })
    local out = tmp .. "/out-only"
    local report = tmp .. "/only-report.json"
    local r = run({ "run", bundle, "--only", "beta", "--recipes-dir", recipes, "--output", out, "--report", report })
    assert.equal(0, r.code, r.stderr)
    assert.is_false(fs.exists(out .. "/alpha-kube-" .. SEMVER))
    assert.is_true(fs.exists(("%s/beta-kube-%s/beta-kube-%s.ova"):format(out, SEMVER, SEMVER)))
    local rep = assert(json.read(report))
    assert.equal(1, rep.total)
    assert.equal("beta", rep.builds[1].recipe)
    assert.is_true(rep.ok)
  end)

  it("refuses usage and configuration errors with exit 2 before anything starts", function()
    local out = tmp .. "/out-usage"
    local unknown = write_bundle("unknown.lua", { "{ recipe = 'alpha' }", "{ recipe = 'no-such-recipe' }" })
    local r = run({ "run", unknown, "-j", "2", "--recipes-dir", recipes, "--output", out })
    assert.equal(2, r.code, r.stderr)
    assert.matches(unknown .. ": entry 2 (no-such-recipe):", r.stderr, 1, true)
    assert.matches("no recipe 'no-such-recipe' on the recipe path (" .. recipes, r.stderr, 1, true)

    local badkey = write_bundle("badkey.lua", { "{ recipe = 'alpha', varz = {} }" })
    r = run({ "run", badkey, "--recipes-dir", recipes, "--output", out })
    assert.equal(2, r.code, r.stderr)
    assert.matches(badkey .. ": entry 1: unknown key 'varz'", r.stderr, 1, true)

    local io_bundle = tmp .. "/io.lua"
    assert(fs.write(io_bundle, "return { { recipe = io.read() } }\n"))
    r = run({ "run", io_bundle, "-j", "1", "--recipes-dir", recipes, "--output", out })
    assert.equal(2, r.code, r.stderr)
    assert.matches("io is not available", r.stderr, 1, true)

    local twice = write_bundle("twice.lua", { "{ recipe = 'alpha' }", "{ recipe = 'alpha' }" })
    r = run({ "run", twice, "--recipes-dir", recipes, "--output", out })
    assert.equal(2, r.code, r.stderr)
    assert.matches("as build 1 does: give one a distinct build_name var", r.stderr, 1, true)

    for _, j in ipairs({ "0", "x", "1.5" }) do
      r = run({ "run", "alpha", "beta", "-j", j, "--recipes-dir", recipes, "--output", out })
      assert.equal(2, r.code, r.stderr)
      assert.matches("-j must be a whole number", r.stderr, 1, true)
    end
    r = run({ "run", "--all", "--only", "gamma", "--recipes-dir", recipes, "--output", out })
    assert.equal(2, r.code, r.stderr)
    assert.is_false(fs.exists(out))
  end)

  it("capil run --all -j 2 builds every recipe of the recipes dir", function()
    local out = tmp .. "/out-all"
    local junit = tmp .. "/all-junit.xml"
    local r = run({ "run", "--all", "-j", "2", "--backend", "vsphere", "--var-file", varfile, "--recipes-dir", recipes,
      "--output", out, "--junit", junit })
    assert.equal(0, r.code, r.stderr)
    for _, n in ipairs({ "alpha", "beta" }) do
      local build = n .. "-kube-" .. SEMVER
      assert.is_true(fs.exists(("%s/%s/%s.ova"):format(out, build, build)), build)
    end
    assert.matches("2 of 2 builds passed", r.stderr, 1, true)
    local doc = assert(xml.parse(assert(fs.read(junit))))
    assert.equal("0", xml.attr(doc, "failures"))
    assert.equal(2, #xml.children(doc, "testsuite"))
  end)
end)

describe("bundle loading #unit #parallel", function()
  local bundle = require("capil.build.bundle")
  local tmp

  setup(function() tmp = peer.dir("bundle-unit") end)
  teardown(function() fs.remove(tmp, { recursive = true }) end)

  local function write(name, text)
    local p = tmp .. "/" .. name
    assert(fs.write(p, text))
    return p
  end

  it("tells a bundle from a recipe", function()
    assert.is_true(bundle.is_bundle(write("b.lua", "return { { recipe = 'x' } }")))
    assert.is_true(bundle.is_bundle(write("d.lua", "return { defaults = { backend = 'qemu' }, { recipe = 'x' } }")))
    assert.is_false(bundle.is_bundle(write("r.lua", "return { name = 'x', distro = {} }")))
    assert.is_false(bundle.is_bundle("ubuntu-2204"))
  end)

  it("applies defaults, resolves paths beside the bundle, and names entries in errors", function()
    local p = write("ok.lua", [[return {
      defaults = { backend = "vsphere", vars = { a = "1", b = 2 }, var_files = { "common.json" }, stages = "build" },
      { recipe = "x", vars = { b = "3" }, var_files = { "/abs.json" } },
      { recipe = "sub/y.lua", backend = "qemu", stages = { "build", "test" } },
    }]])
    local bs = assert(bundle.load(p))
    assert.equal(2, #bs)
    assert.same({ a = "1", b = "3" }, bs[1].vars)
    assert.same({ tmp .. "/common.json", "/abs.json" }, bs[1].var_files)
    assert.equal("vsphere", bs[1].backend)
    assert.equal("build", bs[1].stages)
    assert.equal(tmp .. "/sub/y.lua", bs[2].recipe)
    assert.equal("qemu", bs[2].backend)
    assert.equal("build,test", bs[2].stages)

    local _, errs = bundle.load(write("bad.lua", "return { { recipe = 'x' }, { backend = 'qemu' }, 'z' }"))
    assert.same({ tmp .. "/bad.lua: entry 2: recipe is required", tmp .. "/bad.lua: entry 3: expected a table, got string" },
      errs)
    _, errs = bundle.load(write("loop.lua", "while true do end"))
    assert.matches("endless loop", errs[1])
  end)

  it("filters by recipe name", function()
    local bs = { { recipe = "a" }, { recipe = "dir/b.lua" }, { recipe = "c", name = "c-kube" } }
    local function names(list)
      local t = {}
      for _, b in ipairs(list) do t[#t + 1] = b.recipe end
      return t
    end
    assert.same({ "dir/b.lua" }, names(bundle.filter(bs, { b = true })))
    assert.same({ "a", "c" }, names(bundle.filter(bs, nil, { b = true })))
  end)
end)

describe("run reports #unit #parallel", function()
  local parallel = require("capil.build.parallel")

  it("writes JUnit that parses whatever a guest printed into a failure", function()
    local detail = "expected \"active\", got '\27[31mfailed\27[0m' <x> & \255\n2nd line"
    local rep = { seconds = 3, builds = { {
      build = "ubuntu-2004", recipe = "ubuntu-2004", backend = "qemu", seconds = 2,
      stages = { { name = "build", status = "ok", seconds = 1 }, { name = "export", status = "skipped" } },
      checks = { { name = "service containerd", ok = false, seconds = 0.5, detail = detail } },
    } } }
    local doc = assert(xml.parse(parallel.junit(rep)))
    assert.equal("3", doc.attrs.tests)
    assert.equal("1", doc.attrs.failures)
    local suite = assert(xml.find(doc, "testsuite"))
    assert.equal("ubuntu-2004 on qemu", suite.attrs.name)
    local R = "\239\191\189"
    local failure
    for _, case in ipairs(xml.children(suite, "testcase")) do
      failure = failure or xml.find(case, "failure")
    end
    assert.equal("expected \"active\", got '" .. R .. "[31mfailed" .. R .. "[0m' <x> & " .. R .. "\n2nd line",
      failure.attrs.message)
  end)

  it("a build whose output directory cannot be made fails to start with the reason, not a traceback", function()
    local dir = assert(fs.tempdir({ prefix = "capil-spec-nodir" }))
    assert(fs.write(dir .. "/output", "a file where the output directory goes"))
    local r = capil.run({ "run", "ubuntu-2004", "ubuntu-2204", "-j", "2", "--skip-preflight" }, { cwd = dir })
    fs.remove(dir, { recursive = true })
    assert.equal(1, r.code, r.stderr .. r.stdout)
    local out = r.stdout .. r.stderr
    assert.matches("ubuntu%-2004[^\n]*: failed to start: fs%.mkdir: output/ubuntu%-2004[^\n]*/logs: Not a directory", out)
    assert.matches("0 of 2 builds passed", out)
    assert.not_matches("traceback", out)
  end)

  it("writes the reports atomically, making their directory", function()
    local dir = assert(fs.tempdir({ prefix = "capil-spec-reports" }))
    local out = dir .. "/deep/er/junit.xml"
    assert.equal(0, parallel.run({}, { jobs = 1, junit = out, quiet = true }))
    assert(xml.parse(assert(fs.read(out))))
    assert.same({ "junit.xml" }, fs.list(dir .. "/deep/er"))
  end)
end)
