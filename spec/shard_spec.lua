-- Sharding a bundle over CI jobs: `capil run BUNDLE --shard K/N` (and the
-- Kubernetes Indexed Job's JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT),
-- `capil bundle matrix` for GitHub Actions and GitLab, and `capil report
-- merge` of the shards' JSON reports and JUnit files. The runs through the
-- binary use builds that fail at once (an ISO that is not there): no VM.
local capil = require("support.capil")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local xml = require("capil.sys.xml")

local bundle = require("capil.build.bundle")
local parallel = require("capil.build.parallel")

local NAMES = { "ubuntu-2204", "ubuntu-2204-efi", "photon-5", "rockylinux-9", "flatcar", "ubuntu-2404",
  "windows-2022" }

-- A bundle of the given build names (each a build_name var of one recipe).
local function bundle_text(names, extra)
  local lines = { "return {", "  defaults = { backend = 'qemu' }," }
  for _, n in ipairs(names) do
    lines[#lines + 1] = ("  { recipe = 'tiny', vars = { build_name = %q%s } },"):format(n, extra or "")
  end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n") .. "\n"
end

local function labels(list)
  local t = {}
  for _, b in ipairs(list) do t[#t + 1] = bundle.build_label(b) end
  return t
end

local function sorted(t)
  local c = { table.unpack(t) }
  table.sort(c)
  return c
end

describe("bundle shards #unit #shard", function()
  local tmp

  setup(function() tmp = peer.dir("shard-unit") end)
  teardown(function() fs.remove(tmp, { recursive = true }) end)

  local function load(name, names)
    local p = tmp .. "/" .. name
    assert(fs.write(p, bundle_text(names)))
    return assert(bundle.load(p))
  end

  it("puts every build in exactly one shard, for N = 1..5, in shards whose sizes differ by one at most", function()
    local builds = load("seven.lua", NAMES)
    for n = 1, 5 do
      local shards = bundle.shards(builds, n)
      assert.equal(n, #shards)
      local seen, min, max = {}, math.huge, 0
      for k = 1, n do
        assert.same(shards[k], bundle.shard(builds, k, n))
        for _, b in ipairs(shards[k]) do
          assert.is_nil(seen[b], "in two shards: " .. bundle.build_label(b))
          seen[b] = k
        end
        min, max = math.min(min, #shards[k]), math.max(max, #shards[k])
      end
      for _, b in ipairs(builds) do assert.is_number(seen[b], "in no shard: " .. bundle.build_label(b)) end
      assert.is_true(max - min <= 1)
    end
    -- more shards than builds: the extra ones are empty
    local shards = bundle.shards(builds, 9)
    assert.same({}, shards[8])
    assert.same({}, shards[9])
  end)

  it("is stable: the same bundle makes the same shards, whatever the order of its entries", function()
    local a = load("a.lua", NAMES)
    local reversed = {}
    for i = #NAMES, 1, -1 do reversed[#reversed + 1] = NAMES[i] end
    local b = load("b.lua", reversed)
    for n = 1, 5 do
      for k = 1, n do
        local x = sorted(labels(bundle.shard(a, k, n)))
        assert.same(x, sorted(labels(bundle.shard(b, k, n))))
        assert.same(x, sorted(labels(bundle.shard(load("a2.lua", NAMES), k, n))))
      end
    end
    -- sorted by name, dealt round: 2/3 holds the 2nd and 5th of the sorted names
    assert.same({ "photon-5", "ubuntu-2204-efi" }, sorted(labels(bundle.shard(a, 2, 3))))
    assert.same({ "rockylinux-9", "ubuntu-2404" }, sorted(labels(bundle.shard(a, 3, 3))))
    -- within a shard the builds keep the bundle's order
    assert.same({ "ubuntu-2204", "flatcar", "windows-2022" }, labels(bundle.shard(a, 1, 3)))
    -- two builds of one name are told apart by what else differs, not by position
    local twins = { { recipe = "r", vars = { kubernetes_semver = "v1.31.0" }, var_files = {} },
      { recipe = "r", vars = { kubernetes_semver = "v1.30.0" }, var_files = {} } }
    local swapped = { twins[2], twins[1] }
    assert.equal(bundle.shard(twins, 1, 2)[1], bundle.shard(swapped, 1, 2)[1])
  end)

  it("parses K/N and refuses what is not a share, with messages naming the value", function()
    assert.same({ 2, 4 }, { bundle.parse_shard("2/4") })
    assert.same({ 1, 1 }, { bundle.parse_shard(" 1 / 1 ") })
    local cases = {
      { "x", "--shard must be K/N.*not 'x'" },
      { "2", "--shard must be K/N" },
      { "-1/4", "--shard must be K/N" },
      { "1.5/4", "--shard must be K/N" },
      { "0/4", "--shard 0/4: K must be between 1 and 4 %(shards count from 1%)" },
      { "5/4", "--shard 5/4: K must be between 1 and 4" },
      { "1/0", "--shard 1/0: the number of shards must be 1 or more" },
      { "1/99999999999999999999999", "--shard must be K/N" },
    }
    for _, c in ipairs(cases) do
      local k, err = bundle.parse_shard(c[1])
      assert.is_nil(k, c[1])
      assert.matches(c[2], err)
    end
  end)

  it("takes the shard from JOB_COMPLETION_INDEX (from 0) and JOB_COMPLETION_COUNT when --shard is absent", function()
    local function env(t) return function(n) return t[n] end end
    assert.same({ 1, 4 }, { bundle.shard_from_env(env({ JOB_COMPLETION_INDEX = "0", JOB_COMPLETION_COUNT = "4" })) })
    assert.same({ 4, 4 }, { bundle.shard_from_env(env({ JOB_COMPLETION_INDEX = "3", JOB_COMPLETION_COUNT = "4" })) })
    assert.same({}, { bundle.shard_from_env(env({})) })
    assert.same({}, { bundle.shard_from_env(env({ JOB_COMPLETION_COUNT = "4" })) })
    local bad = {
      { { JOB_COMPLETION_INDEX = "1" }, "JOB_COMPLETION_COUNT is not set" },
      { { JOB_COMPLETION_INDEX = "4", JOB_COMPLETION_COUNT = "4" }, "out of range for JOB_COMPLETION_COUNT 4 %(0 to 3%)" },
      { { JOB_COMPLETION_INDEX = "a", JOB_COMPLETION_COUNT = "4" }, "JOB_COMPLETION_INDEX must be a whole number" },
      { { JOB_COMPLETION_INDEX = "0", JOB_COMPLETION_COUNT = "0" }, "JOB_COMPLETION_COUNT must be a whole number, 1" },
    }
    for _, c in ipairs(bad) do
      local k, err = bundle.shard_from_env(env(c[1]))
      assert.is_nil(k)
      assert.matches(c[2], err)
    end
    -- --shard wins over the environment; the selected builds are numbered from 1
    local builds = load("env.lua", NAMES)
    local e = env({ JOB_COMPLETION_INDEX = "1", JOB_COMPLETION_COUNT = "3" })
    local list, sh = parallel.select_shard(builds, nil, e)
    assert.same({ k = 2, n = 3, label = "2/3", source = "JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT", total = 7 }, sh)
    assert.same({ "photon-5", "ubuntu-2204-efi" }, sorted(labels(list)))
    for i, b in ipairs(list) do assert.equal(i, b.index) end
    list, sh = parallel.select_shard(load("env2.lua", NAMES), "1/1", e)
    assert.equal(7, #list)
    assert.equal("--shard", sh.source)
    assert.equal(7, #parallel.select_shard(load("env3.lua", NAMES), nil, env({})))
  end)

  it("merges shard reports: counts summed, every build kept, ok only when all passed and no shard is missing", function()
    local function rep(shard, names, failed)
      local r = { capil_version = "0.1.0", shard = shard, jobs = 1, seconds = #names, interrupted = false, builds = {},
        total = #names, passed = #names - (failed and 1 or 0), failed = failed and 1 or 0,
        counts = { ok = #names - (failed and 1 or 0), failed = failed and 1 or 0, interrupted = 0, skipped = 0 } }
      for i, n in ipairs(names) do
        r.builds[i] = { index = i, build = n, recipe = "tiny", backend = "qemu",
          status = (failed and i == 1) and "failed" or "ok", stages = { { name = "build", status = "ok" } },
          checks = {} }
      end
      r.ok = not failed
      return r
    end
    local m, warns = parallel.merge_reports({ { path = "b", data = rep("2/2", { "c" }) },
      { path = "a", data = rep("1/2", { "a", "b" }) } })
    assert.same({}, warns)
    assert.is_true(m.ok)
    assert.equal(3, m.total)
    assert.equal(3, m.passed)
    assert.equal(3, m.counts.ok)
    assert.equal(2, m.seconds)
    assert.same({ "a", "b", "c" }, { m.builds[1].build, m.builds[2].build, m.builds[3].build })
    assert.equal("1/2", m.builds[1].shard)
    assert.equal(2, #m.shards)

    m = assert(parallel.merge_reports({ { path = "a", data = rep("1/2", { "a" }, true) },
      { path = "b", data = rep("2/2", { "b" }) } }))
    assert.is_false(m.ok)
    assert.equal(1, m.failed)
    m, warns = parallel.merge_reports({ { path = "a", data = rep("1/3", { "a" }) } })
    assert.is_false(m.ok)
    assert.same({ "2/3", "3/3" }, m.missing_shards)
    assert.matches("no report of shard 2/3, 3/3", warns[1])

    local function errs(inputs)
      local r, e = parallel.merge_reports(inputs)
      assert.is_nil(r)
      return table.concat(e, "\n")
    end
    assert.matches("b: shard 1/3 does not belong with a's shard 1/2: the numbers of shards differ",
      errs({ { path = "a", data = rep("1/2", { "a" }) }, { path = "b", data = rep("1/3", { "b" }) } }))
    assert.matches("b: shard 1/2 was already given in a",
      errs({ { path = "a", data = rep("1/2", { "a" }) }, { path = "b", data = rep("1/2", { "b" }) } }))
    assert.matches("b: build x on qemu is also in a",
      errs({ { path = "a", data = rep("1/2", { "x" }) }, { path = "b", data = rep("2/2", { "x" }) } }))
    assert.matches("c: not a report of 'capil run %-%-report'", errs({ { path = "c", data = { steps = {} } } }))
    assert.matches("d: total says 3 builds but the report lists 1",
      errs({ { path = "d", data = (function() local r = rep("1/1", { "a" }) r.total = 3 return r end)() } }))
    assert.matches("with a shard and reports without one",
      errs({ { path = "a", data = rep("1/2", { "a" }) }, { path = "b", data = rep(nil, { "b" }) } }))
  end)
end)

describe("sharded runs, matrices and merged reports through the binary #unit #shard", function()
  local tmp, bpath

  setup(function()
    tmp = peer.dir("shard-cli")
    bpath = tmp .. "/ci.lua"
    -- builds that fail at once: the ISO is not there (no VM starts)
    assert(fs.write(bpath, bundle_text({ "alpha", "bravo", "charlie", "delta", "echo" },
      ", iso_url = 'file:///nonexistent/capil-shard-spec.iso'")))
  end)
  teardown(function() fs.remove(tmp, { recursive = true }) end)

  local function run(args, env)
    local r = capil.run(args, { env_add = env, timeout = 120 })
    assert.is_nil(r.stderr:find("stack traceback", 1, true), r.stderr)
    return r
  end

  local function shard_run(label, dir, env)
    local args = { "run", bpath, "--recipes-dir", "spec/fixtures/recipes", "--output", tmp .. "/out",
      "--report", dir .. "/report.json", "--junit", dir .. "/junit.xml" }
    if label then args[#args + 1] = "--shard" args[#args + 1] = label end
    return run(args, env)
  end

  it("prints a GitHub Actions matrix that reads back as JSON, one job per shard, every build once", function()
    local r = run({ "bundle", "matrix", bpath, "--format", "github", "--shards", "2" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, select(2, r.stdout:gsub("\n", "")), "one line, for $GITHUB_OUTPUT")
    local m = assert(json.decode(r.stdout))
    assert.equal(2, #m.include)
    assert.same({ shard = "1/2", builds = "alpha,charlie,echo" }, m.include[1])
    assert.same({ shard = "2/2", builds = "bravo,delta" }, m.include[2])
    -- default: one shard per build; more shards than builds: as many as builds
    for _, extra in ipairs({ {}, { "--shards", "9" } }) do
      r = run({ "bundle", "matrix", bpath, table.unpack(extra) })
      assert.equal(0, r.code, r.stderr)
      m = assert(json.decode(r.stdout))
      assert.equal(5, #m.include)
      assert.equal("1/5", m.include[1].shard)
      assert.equal("alpha", m.include[1].builds)
    end
  end)

  it("prints a GitLab parallel:matrix of one job per shard", function()
    local r = run({ "bundle", "matrix", bpath, "--format", "gitlab", "--shards", "3" })
    assert.equal(0, r.code, r.stderr)
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("parallel:", lines[1])
    assert.equal("  matrix:", lines[2])
    local jobs = {}
    for i = 3, #lines, 2 do
      local shard = lines[i]:match('^    %- CAPIL_SHARD: "([^"]*)"$')
      local builds = lines[i + 1] and lines[i + 1]:match('^      CAPIL_BUILDS: "([^"]*)"$')
      assert.is_string(shard, lines[i])
      assert.is_string(builds, lines[i + 1])
      jobs[#jobs + 1] = { shard, builds }
    end
    assert.same({ { "1/3", "alpha,delta" }, { "2/3", "bravo,echo" }, { "3/3", "charlie" } }, jobs)
  end)

  it("refuses a bad --format, --shards or bundle with exit 2 and a message", function()
    local cases = {
      { { "bundle", "matrix", bpath, "--format", "jenkins" }, "%-%-format must be github or gitlab, not 'jenkins'" },
      { { "bundle", "matrix", bpath, "--shards", "0" }, "%-%-shards must be a whole number of shards, 1 or more" },
      { { "bundle", "matrix", bpath, "--shards", "two" }, "not 'two'" },
      { { "bundle", "matrix" }, "name a bundle" },
      { { "bundle", "matrix", tmp .. "/none.lua" }, "none.lua" },
      { { "bundle", "frobnicate" }, "unknown subcommand 'frobnicate' %(matrix%)" },
    }
    for _, c in ipairs(cases) do
      local r = run(c[1])
      assert.equal(2, r.code, table.concat(c[1], " "))
      assert.matches(c[2], r.stderr)
    end
  end)

  it("runs the shards the matrix names, rejects a bad --shard or environment, and merges the reports", function()
    local m = assert(json.decode(run({ "bundle", "matrix", bpath, "--shards", "2" }).stdout))
    local dirs = {}
    for k, job in ipairs(m.include) do
      dirs[k] = tmp .. "/artifacts/shard-" .. k
      local r = shard_run(job.shard, dirs[k])
      assert.equal(1, r.code, r.stderr) -- the builds fail: no ISO
      local rep = assert(json.read(dirs[k] .. "/report.json"))
      assert.equal(job.shard, rep.shard)
      local names = {}
      for _, b in ipairs(rep.builds) do names[#names + 1] = (b.build:gsub("%-kube%-.*$", "")) end
      assert.equal(job.builds, table.concat(names, ","))
    end

    -- an Indexed Job's pod: index 1 of 2 is shard 2/2
    local r = shard_run(nil, tmp .. "/k8s", { JOB_COMPLETION_INDEX = "1", JOB_COMPLETION_COUNT = "2" })
    assert.equal(1, r.code, r.stderr)
    assert.equal("2/2", assert(json.read(tmp .. "/k8s/report.json")).shard)
    -- a shard with no builds: a notice, exit 0, an empty report to merge
    r = shard_run(nil, tmp .. "/empty", { JOB_COMPLETION_INDEX = "6", JOB_COMPLETION_COUNT = "7" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("shard 7/7 %(from JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT%) has no builds", r.stderr)
    local empty = assert(json.read(tmp .. "/empty/report.json"))
    assert.equal(0, empty.total)
    assert.is_true(json.is_array(empty.builds))
    -- bad values: exit 2, nothing started
    for _, c in ipairs({
      { { "--shard", "3/2" }, nil, "run: %-%-shard 3/2: K must be between 1 and 2" },
      { { "--shard", "a/b" }, nil, "run: %-%-shard must be K/N" },
      { {}, { JOB_COMPLETION_INDEX = "2" }, "run: JOB_COMPLETION_INDEX is 2 but JOB_COMPLETION_COUNT is not set" },
      { {}, { JOB_COMPLETION_INDEX = "2", JOB_COMPLETION_COUNT = "2" }, "out of range" },
    }) do
      r = run({ "run", bpath, "--recipes-dir", "spec/fixtures/recipes", "--output", tmp .. "/bad",
        table.unpack(c[1]) }, c[2])
      assert.equal(2, r.code, r.stderr)
      assert.matches(c[3], r.stderr)
      assert.is_false(fs.exists(tmp .. "/bad"))
    end

    -- the merge of both shards (a directory of artifacts, as CI downloads them)
    local out = tmp .. "/merged"
    r = run({ "report", "merge", out, tmp .. "/artifacts" })
    assert.equal(1, r.code, r.stderr) -- merged, but the builds failed
    assert.matches("merged 2 reports and 2 JUnit files: 5 builds, 0 passed, 5 failed", r.stderr)
    local rep = assert(json.read(out .. "/report.json"))
    assert.equal(5, rep.total)
    assert.equal(5, rep.failed)
    assert.equal(5, rep.counts.failed)
    assert.is_false(rep.ok)
    assert.equal(5, #rep.builds)
    assert.same({ "1/2", "1/2", "1/2", "2/2", "2/2" }, (function()
      local t = {}
      for _, b in ipairs(rep.builds) do t[#t + 1] = b.shard end
      return t
    end)())
    local doc = assert(xml.parse(assert(fs.read(out .. "/junit.xml"))))
    assert.equal("testsuites", doc.name)
    local suites = xml.children(doc, "testsuite")
    assert.equal(5, #suites)
    assert.equal("5", xml.attr(doc, "failures"))
    assert.equal("5", xml.attr(doc, "tests"))
    local seen = {}
    for _, su in ipairs(suites) do
      seen[#seen + 1] = xml.attr(su, "name"):match("^(%a+)%-kube")
      assert.is_table(xml.find(assert(xml.find(su, "testcase")), "failure"))
    end
    assert.same({ "alpha", "charlie", "echo", "bravo", "delta" }, seen)

    -- files named one by one; JSON only: the JUnit is made from the merged JSON
    r = run({ "report", "merge", tmp .. "/merged2", dirs[1] .. "/report.json", dirs[2] .. "/report.json" })
    assert.equal(1, r.code, r.stderr)
    doc = assert(xml.parse(assert(fs.read(tmp .. "/merged2/junit.xml"))))
    assert.equal(5, #xml.children(doc, "testsuite"))

    -- mismatched and unreadable inputs: exit 2, nothing written
    assert(fs.write(tmp .. "/build-report.json", json.encode({ steps = {}, ok = true })))
    assert(fs.write(tmp .. "/broken.json", "{ not json"))
    assert(fs.write(tmp .. "/other.xml", "<html/>"))
    for _, c in ipairs({
      { { dirs[1], dirs[1] .. "/report.json" }, "shard 1/2 was already given in" },
      { { dirs[2], tmp .. "/k8s" }, "build bravo%-kube%-v[%d.]+ on qemu is also in" },
      { { dirs[1], tmp .. "/empty/report.json" }, "the numbers of shards differ %(7 and 2%)" },
      { { tmp .. "/nothing.json" }, "nothing.json: cannot read" },
      { { tmp .. "/build-report.json" }, "not a report of 'capil run %-%-report'" },
      { { tmp .. "/broken.json" }, "broken.json: not JSON" },
      { { dirs[1] .. "/report.json", tmp .. "/other.xml" }, "other.xml: not JUnit XML" },
      { { dirs[1] .. "/report.json", dirs[2] .. "/junit.xml" }, "has no build in the JSON reports" },
      { { dirs[1] .. "/junit.xml" }, "no JSON run report among the inputs" },
      { { tmp .. "/ci.lua" }, "a report is a .json file" },
    }) do
      local dest = tmp .. "/not-written"
      r = run({ "report", "merge", dest, table.unpack(c[1]) })
      assert.equal(2, r.code, r.stderr)
      assert.matches(c[2], r.stderr)
      assert.is_false(fs.exists(dest))
    end
    -- the output may not overwrite an input
    r = run({ "report", "merge", dirs[2] .. "/", tmp .. "/artifacts" })
    assert.equal(2, r.code)
    assert.matches("junit.xml: the output .*/shard%-2/junit.xml would overwrite this input", r.stderr)
    assert.equal(2, assert(json.read(dirs[2] .. "/report.json")).total)
    r = run({ "report", "merge", tmp .. "/x" })
    assert.equal(2, r.code)
    assert.matches("name the output directory, then the reports", r.stderr)
  end)
end)

describe("sharded builds on QEMU with the tiny guest #qemu #shard", function()
  local fixtures = require("support.fixtures")
  local hash = require("capil.sys.hash")

  it("two shards of a bundle of two builds each build theirs; the merged report is ok", function()
    local tmp = peer.dir("shard-qemu")
    local t = fixtures.tiny()
    local vars = { iso_url = "file://" .. t.kernel, iso_checksum = assert(hash.file(t.kernel)),
      qemu_kernel = t.kernel, qemu_initrd = t.initrd, ssh_private_key_file = t.key,
      qemu_append = "console=ttyS0 quiet rdinit=/init" }
    local kv = {}
    for k, v in pairs(vars) do kv[#kv + 1] = ("%s = %q"):format(k, v) end
    table.sort(kv)
    local b = tmp .. "/tiny-bundle.lua"
    assert(fs.write(b, ("return {\n  defaults = { backend = 'qemu', vars = { %s } },\n"
      .. "  { recipe = 'tiny', vars = { build_name = 'tiny-b' } },\n"
      .. "  { recipe = 'tiny', vars = { build_name = 'tiny-a' } },\n}\n"):format(table.concat(kv, ", "))))
    for k = 1, 2 do
      local r = capil.run({ "run", b, "--shard", k .. "/2", "--recipes-dir", "spec/fixtures/recipes",
        "--output", tmp .. "/out", "--report", ("%s/shard-%d/report.json"):format(tmp, k),
        "--junit", ("%s/shard-%d/junit.xml"):format(tmp, k) }, { timeout = 300 })
      assert.equal(0, r.code, r.stderr)
      local rep = assert(json.read(("%s/shard-%d/report.json"):format(tmp, k)))
      assert.equal(1, rep.total)
      assert.equal(k == 1 and "tiny-a" or "tiny-b", rep.builds[1].build:match("^(.-)%-kube"))
      assert.is_true(fs.exists(rep.builds[1].artifacts[1].path))
    end
    local r = capil.run({ "report", "merge", tmp .. "/merged", tmp .. "/shard-1", tmp .. "/shard-2" })
    assert.equal(0, r.code, r.stderr)
    local rep = assert(json.read(tmp .. "/merged/report.json"))
    assert.is_true(rep.ok)
    assert.equal(2, rep.passed)
    local doc = assert(xml.parse(assert(fs.read(tmp .. "/merged/junit.xml"))))
    assert.equal("0", xml.attr(doc, "failures"))
    assert.equal(2, #xml.children(doc, "testsuite"))
    fs.remove(tmp, { recursive = true })
  end)
end)
