-- Specs for capil.test.suites: the pure helpers (#unit), and the suites run over
-- SSH against a real OpenSSH sshd on 127.0.0.1 (spec/support/sshd.lua, which
-- logs in as the current user: root here, so no sudo) with downloads served
-- by a real nginx (spec/support/nginx.lua). What must write /etc (the cni
-- suite's install, a guest's /etc/kubernetes-version) talks to a second sshd
-- in a private mount namespace whose /etc is an overlay, so this host's /etc
-- is never touched. The cni smoke step (a bridge ADD/DEL in a netns) would act
-- on the host's network, so here only its refusal of a guest without iptables
-- is tested; the e2e spec runs it for real in the Debian QEMU guest.
local suites = require("capil.test.suites")
local schema = require("capil.build.schema")
local json = require("capil.sys.json")
local ssh = require("capil.sys.ssh")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local proc = require("capil.sys.proc")
local sshd = require("support.sshd")
local nginx = require("support.nginx")
local peer = require("support.peer")
local fixtures = require("support.fixtures")
local conformance = require("support.conformance")
local seed = require("support.seed")

local SEED_MYNET, SEED_LOOPBACK = seed.CNI_MYNET, seed.CNI_LOOPBACK

-- The seed document's ginkgo line ("Run the e2e node conformance tests"), verbatim.
local SEED_ARGS = conformance.SEED_ARGS

-- The tests.* settings with the schema's defaults, plus `extra`.
local function settings(extra)
  local s = {}
  for _, f in ipairs(schema.fields) do
    -- as a resolved configuration holds them (durations in seconds)
    if f.path:match("^tests%.") and f.var and f.default ~= nil then
      local v, err = schema.coerce(f, f.default)
      assert(err == nil, err)
      s[f.var] = v
    end
  end
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local HEX_A = ("a"):rep(64)

describe("suites #unit", function()
  describe("checksum_source", function()
    it("defaults to <url>.sha256", function()
      assert.same({ kind = "url", url = "https://x.test/a.tgz.sha256" },
                  suites.checksum_source("https://x.test/a.tgz", ""))
      assert.same({ kind = "url", url = "https://x.test/a.tgz.sha256" },
                  suites.checksum_source("https://x.test/a.tgz", nil))
    end)

    it("takes hex and sha256:<hex> values, lowercased", function()
      assert.same({ kind = "sha256", value = HEX_A }, suites.checksum_source("https://x.test/a", HEX_A))
      assert.same({ kind = "sha256", value = HEX_A }, suites.checksum_source("https://x.test/a", HEX_A:upper()))
      assert.same({ kind = "sha256", value = HEX_A }, suites.checksum_source("https://x.test/a", "sha256:" .. HEX_A))
    end)

    it("takes http(s) and file URLs of checksum files", function()
      for _, u in ipairs({ "http://h.test/SHA256SUMS", "https://h.test/a.sha256", "file:///tmp/a.sha256" }) do
        assert.same({ kind = "url", url = u }, suites.checksum_source("https://x.test/a", u))
      end
    end)

    it("refuses anything else, naming the forms it expects", function()
      for _, c in ipairs({ "abc", ("a"):rep(63), ("a"):rep(65), "md5:" .. HEX_A, "sha512:" .. HEX_A,
                           "ftp://h.test/a.sha256", ("g"):rep(64) }) do
        local r, err = suites.checksum_source("https://x.test/a.tgz", c)
        assert.is_nil(r, c)
        assert.matches("expected sha256 hex, sha256:<hex> or a checksum file URL", err, 1, true)
        assert.matches("https://x.test/a.tgz", err, 1, true)
      end
    end)
  end)

  describe("conformance_url", function()
    local T = "https://dl.k8s.io/{{kubernetes_version}}/kubernetes-test-linux-amd64.tar.gz"

    it("substitutes the version", function()
      assert.equal("https://dl.k8s.io/v1.16.14/kubernetes-test-linux-amd64.tar.gz",
                   suites.conformance_url(T, "v1.16.14"))
      assert.equal("https://dl.k8s.io/v1.30.0-rc.1/kubernetes-test-linux-amd64.tar.gz",
                   suites.conformance_url(T, "v1.30.0-rc.1"))
      assert.equal("http://m.test/v1.2.3/k.tgz", suites.conformance_url("http://m.test/{{ kubernetes_version }}/k.tgz",
                                                                         "v1.2.3"))
      assert.equal(suites.conformance_url(schema.by_var.node_conformance_url.default, "v1.16.14"),
                   "https://dl.k8s.io/v1.16.14/kubernetes-test-linux-amd64.tar.gz")
    end)

    it("refuses what is not v1.2.3, naming /etc/kubernetes-version", function()
      for _, v in ipairs({ "1.16.14", "v1.16", "latest", "", "v1.16.14\n", "v1.16.14 ", "v1.16.14-", "v1.x.3" }) do
        local url, err = suites.conformance_url(T, v)
        assert.is_nil(url, v)
        assert.matches("/etc/kubernetes-version", err, 1, true)
        assert.matches("node_conformance_kubernetes_version", err, 1, true)
      end
    end)
  end)

  describe("cni_config", function()
    it("is the seed document's text, byte for byte", function()
      local c = suites.cni_config()
      assert.same({ "10-mynet.conf", "99-loopback.conf" }, (function()
        local t = {}
        for k in pairs(c) do t[#t + 1] = k end
        table.sort(t)
        return t
      end)())
      assert.equal(SEED_MYNET, c["10-mynet.conf"])
      assert.equal(SEED_LOOPBACK, c["99-loopback.conf"])
      assert.same(json.decode(SEED_MYNET), json.decode(c["10-mynet.conf"]))
      local mynet = json.decode(c["10-mynet.conf"])
      assert.equal("10.22.0.0/16", mynet.ipam.subnet)
      assert.is_true(mynet.ipMasq)
    end)
  end)

  describe("ginkgo_args", function()
    -- the words /bin/sh makes of the seed's line (plus --report-dir)
    local function seed_words(report_dir)
      local r = assert(proc.run({ argv = { "sh", "-c", "for w in " .. SEED_ARGS .. ' --report-dir="$1"; do '
        .. "printf '%s\\n' \"$w\"; done", "sh", report_dir } }))
      assert.equal(0, r.code, r.stderr)
      local words = {}
      for line in r.stdout:gmatch("([^\n]*)\n") do words[#words + 1] = line end
      return words
    end

    it("with the schema's defaults, are the words of the seed's command line plus --report-dir", function()
      local want = seed_words("/home/capv/capil-conformance.x/junit")
      assert.equal(16, #want)
      assert.same(want, suites.ginkgo_args(settings(), "/home/capv/capil-conformance.x/junit"))
    end)

    it("take nodes, flake attempts, focus and skip from the settings", function()
      local a = suites.ginkgo_args(settings({ node_conformance_nodes = 2, node_conformance_flake_attempts = 1,
        node_conformance_focus = "NodeConformance", node_conformance_skip = "it's \"quoted\"" }), "/r")
      assert.same({ "--nodes=2", "--flakeAttempts=1", "--focus=NodeConformance", "--skip=it's \"quoted\"" },
                  { a[1], a[2], a[3], a[4] })
      assert.equal("--report-dir=/r", a[#a])
    end)
  end)

  describe("junit_summary", function()
    it("sums the <testsuite>s of a <testsuites> from their attributes", function()
      assert.same({ tests = 7, failures = 2, errors = 1, skipped = 3 }, suites.junit_summary([[
<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="99" failures="99">
  <testsuite name="a" tests="4" failures="1" errors="0" skipped="2"/>
  <testsuite name="b" tests="3" failures="1" errors="1" skipped="1"/>
</testsuites>]]))
    end)

    it("counts <testcase>s for the attributes a <testsuite> lacks (ginkgo v1 writes no skipped)", function()
      assert.same({ tests = 4, failures = 1, errors = 0, skipped = 2 }, suites.junit_summary([[
<testsuite name="E2eNode Suite" time="12.5">
  <testcase name="ok" classname="E2eNode Suite" time="1"></testcase>
  <testcase name="broken"><failure type="Failure">boom</failure></testcase>
  <testcase name="skipped 1"><skipped></skipped></testcase>
  <testcase name="skipped 2"><skipped/></testcase>
</testsuite>]]))
      assert.same({ tests = 4, failures = 1, errors = 0, skipped = 2 }, suites.junit_summary([[
<testsuite name="E2eNode Suite" tests="4" failures="1" errors="0" time="12.5">
  <testcase name="ok"></testcase>
  <testcase name="broken"><failure type="Failure">boom</failure></testcase>
  <testcase name="skipped 1"><skipped></skipped></testcase>
  <testcase name="skipped 2"><skipped/></testcase>
</testsuite>]]))
      assert.same({ tests = 3, failures = 1, errors = 1, skipped = 0 }, suites.junit_summary([[
<testsuites><testsuite name="s">
  <testcase name="a"/><testcase name="b"><failure/></testcase><testcase name="c"><error/></testcase>
</testsuite></testsuites>]]))
    end)

    it("reads an empty report as zeros", function()
      assert.same({ tests = 0, failures = 0, errors = 0, skipped = 0 }, suites.junit_summary("<testsuites/>"))
      assert.same({ tests = 5, failures = 1, errors = 0, skipped = 0 },
                  suites.junit_summary('<testsuites tests="5" failures="1"/>'))
    end)

    it("refuses what is not JUnit", function()
      local r, err = suites.junit_summary("<html><body/></html>")
      assert.is_nil(r)
      assert.matches("<html>", err, 1, true)
      r, err = suites.junit_summary("<testsuite")
      assert.is_nil(r)
      assert.matches("not a JUnit report", err, 1, true)
    end)
  end)

  it("check_names knows the suites and names an unknown one", function()
    assert.same({ "cni", "node-conformance" }, suites.NAMES)
    assert.is_true(suites.check_names({ "node-conformance", "cni" }))
    local ok, err = suites.check_names({ "cni", "goss" })
    assert.is_nil(ok)
    assert.matches("unknown test suite 'goss' (known: cni, node-conformance)", err, 1, true)
    assert.has_error(function() suites.run({}, { "goss" }, settings(), { out_dir = "/x", cache_dir = "/y" }) end)
  end)
end)

describe("suites over SSH #suites #ssh", function()
  local server, web, session
  local dirs = {}
  local TARBALL = "kubernetes-test-linux-amd64.tar.gz"

  local function tempdir(name)
    local d = peer.dir(name)
    dirs[#dirs + 1] = d
    return d
  end

  local function sh(argv, cwd)
    local r = assert(proc.run({ argv = argv, cwd = cwd }))
    assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
  end

  -- A stand-in conformance tarball (spec/support/conformance.lua); fail: one failed test.
  local function conformance_tarball(fail)
    return assert(fs.read(conformance.tarball(tempdir("conformance-tgz"), fail)))
  end

  -- Serves data at path with a sha256sum-style checksum file beside it
  -- (or the given checksum file text); returns the data's sha256.
  local function serve(path, data, sum_text)
    web.put(path, data)
    local digest = hash.digest("sha256", data)
    web.put(path .. ".sha256", sum_text or (digest .. "  " .. path:match("[^/]+$") .. "\n"))
    return digest
  end

  setup(function()
    server = sshd.start()
    web = nginx.start()
    serve("/pass/v1.16.14/" .. TARBALL, conformance_tarball(false))
    serve("/fail/v1.16.14/" .. TARBALL, conformance_tarball(true))
    serve("/bad/v1.16.14/" .. TARBALL, conformance_tarball(false), HEX_A .. "  " .. TARBALL .. "\n")
    session = assert(ssh.connect({ host = "127.0.0.1", port = server.port, user = server.user, key = server.key,
                                   host_key = server.fingerprint, timeout = 10 }))
  end)

  teardown(function()
    if session then session:close() end
    if web then web.stop() end
    if server then server.stop() end
    for _, d in ipairs(dirs) do fs.remove(d, { recursive = true }) end
  end)


  -- A second sshd (same config and keys) in a private mount namespace whose
  -- /etc is an overlay with its upper layer in a temp dir: what the suites
  -- write to /etc lands there, and files put there show in the guest's /etc.
  -- Returns the temp dir, the port and the peer handle (stop it).
  local function ns_sshd()
    local d = tempdir("suites-ns")
    assert(fs.mkdir(d .. "/upper"))
    assert(fs.mkdir(d .. "/work"))
    local port = peer.free_port()
    local lines = {}
    for line in assert(fs.read(server.dir .. "/sshd_config")):gmatch("[^\n]+") do
      if line:match("^Port ") then line = "Port " .. port end
      if line:match("^PidFile ") then line = "PidFile " .. d .. "/sshd.pid" end
      lines[#lines + 1] = line
    end
    assert(fs.write(d .. "/sshd_config", table.concat(lines, "\n") .. "\n"))
    local handle = peer.start({ name = "sshd-ns", port = port, log = d .. "/sshd.log", argv = {
      "unshare", "--mount", "--propagation", "private", "sh", "-c",
      ("mount -t overlay capil-suites -o lowerdir=/etc,upperdir=%s/upper,workdir=%s/work /etc && "
        .. "exec /usr/sbin/sshd -D -e -f %s/sshd_config"):format(d, d, d) } })
    return d, port, handle
  end

  local function ns_connect(port)
    return assert(ssh.connect({ host = "127.0.0.1", port = port, user = server.user, key = server.key,
                                host_key = server.fingerprint, timeout = 10 }))
  end

  local function conformance_settings(prefix, extra)
    local s = settings({
      node_conformance_url = web.url("/" .. prefix .. "/{{kubernetes_version}}/" .. TARBALL),
      node_conformance_kubernetes_version = "v1.16.14",
    })
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
  end

  local function run_opts()
    return { out_dir = tempdir("suites-out"), cache_dir = tempdir("suites-cache"), progress = false }
  end

  local function step_names(suite)
    local t = {}
    for _, s in ipairs(suite.steps) do t[#t + 1] = s.name .. "=" .. tostring(s.ok) end
    return table.concat(t, " ")
  end

  local function leftovers()
    local r = assert(session:exec("ls -d ~/capil-conformance.* ~/capil-cni.* 2>/dev/null; true"))
    return r.stdout
  end

  describe("node-conformance", function()
    it("runs ginkgo with the seed's arguments and brings the JUnit reports back (checksum from <url>.sha256)",
      function()
      local o = run_opts()
      local res = suites.run(session, { "node-conformance" }, conformance_settings("pass"), o)
      local nc = res.suites[1]
      assert.equal("node-conformance", nc.name)
      assert.equal("version=true download=true unpack=true run=true collect=true", step_names(nc),
                   json.encode(nc.steps))
      assert.is_true(res.ok)
      assert.is_true(nc.ok)
      assert.same({ tests = 5, failures = 0, errors = 0, skipped = 1 }, nc.summary)
      assert.equal("5 tests, 0 failures, 0 errors, 1 skipped", nc.steps[5].detail)
      assert.same({ o.out_dir .. "/junit/junit_01.xml", o.out_dir .. "/junit/nested_junit_02.xml" }, nc.junit)
      assert.same({ "junit_01.xml", "nested_junit_02.xml" }, assert(fs.list(o.out_dir .. "/junit")))
      assert.matches('tests="3"', assert(fs.read(nc.junit[1])), 1, true)
      assert.matches("v1.16.14 (from node_conformance_kubernetes_version)", nc.steps[1].detail, 1, true)
      assert.is_number(nc.seconds)
      assert.equal("", leftovers())
    end)

    it("takes a hex checksum, and reuses a verified cached download", function()
      local o = run_opts()
      local data = assert(fs.read(web.root .. "/pass/v1.16.14/" .. TARBALL))
      local s = conformance_settings("pass", { node_conformance_checksum = hash.digest("sha256", data) })
      local uri = "/pass/v1.16.14/" .. TARBALL
      local before, sums = web.count(uri), web.count(uri .. ".sha256")
      local res = suites.run(session, { "node-conformance" }, s, o)
      assert.is_true(res.ok, json.encode(res))
      assert.equal(before + 1, web.count(uri))
      assert.equal(sums, web.count(uri .. ".sha256")) -- no checksum file needed
      res = suites.run(session, { "node-conformance" }, s, o)
      assert.is_true(res.ok, json.encode(res))
      assert.equal(before + 1, web.count(uri))
    end)

    it("fails on test failures, still collecting the reports and their counts", function()
      local o = run_opts()
      local res = suites.run(session, { "node-conformance" }, conformance_settings("fail"), o)
      local nc = res.suites[1]
      assert.is_false(res.ok)
      assert.is_false(nc.ok)
      assert.equal("version=true download=true unpack=true run=false collect=false", step_names(nc))
      assert.matches("ginkgo exit 1", nc.steps[4].detail, 1, true)
      assert.same({ tests = 5, failures = 1, errors = 0, skipped = 1 }, nc.summary)
      assert.equal("5 tests, 1 failure, 0 errors, 1 skipped", nc.steps[5].detail)
      assert.equal(2, #nc.junit)
      assert.equal("", leftovers())
    end)

    it("fails the run when ginkgo gets other arguments (the stand-in checks them)", function()
      local o = run_opts()
      local res = suites.run(session, { "node-conformance" }, conformance_settings("pass",
        { node_conformance_nodes = 4 }), o)
      local nc = res.suites[1]
      assert.is_false(res.ok)
      assert.equal("version=true download=true unpack=true run=false collect=false", step_names(nc))
      assert.matches("ginkgo exit 3", nc.steps[4].detail, 1, true)
      assert.matches("no JUnit XML under", nc.steps[5].detail, 1, true)
      assert.equal("", leftovers())
    end)

    it("fails the download on a wrong checksum, naming the URL and both digests", function()
      local o = run_opts()
      local res = suites.run(session, { "node-conformance" }, conformance_settings("bad"), o)
      local nc = res.suites[1]
      assert.is_false(res.ok)
      assert.equal("version=true download=false", step_names(nc))
      local d = nc.steps[2].detail
      local data = assert(fs.read(web.root .. "/bad/v1.16.14/" .. TARBALL))
      assert.matches(web.url("/bad/v1.16.14/" .. TARBALL), d, 1, true)
      assert.matches("expected " .. HEX_A, d, 1, true)
      assert.matches("got " .. hash.digest("sha256", data), d, 1, true)
      assert.matches(TARBALL .. ".sha256", d, 1, true)
      -- a wrong hex value too
      res = suites.run(session, { "node-conformance" }, conformance_settings("pass",
        { node_conformance_checksum = "sha256:" .. HEX_A }), o)
      assert.equal("version=true download=false", step_names(res.suites[1]))
      assert.matches("expected " .. HEX_A, res.suites[1].steps[2].detail, 1, true)
      assert.is_nil(fs.stat(o.out_dir .. "/junit"))
    end)

    it("fails the download when there is no checksum file, naming its URL", function()
      local res = suites.run(session, { "node-conformance" }, conformance_settings("none"), run_opts())
      assert.equal("version=true download=false", step_names(res.suites[1]))
      assert.matches(web.url("/none/v1.16.14/" .. TARBALL .. ".sha256"), res.suites[1].steps[2].detail, 1, true)
      assert.matches("404", res.suites[1].steps[2].detail, 1, true)
    end)

    it("without the variable reads /etc/kubernetes-version, and says what to set when it is missing", function()
      -- this host has no /etc/kubernetes-version (the guest here is the host)
      assert.is_nil(fs.stat("/etc/kubernetes-version"))
      local res = suites.run(session, { "node-conformance" },
        conformance_settings("pass", { node_conformance_kubernetes_version = "" }), run_opts())
      local nc = res.suites[1]
      assert.is_false(res.ok)
      assert.equal("version=false", step_names(nc))
      assert.matches("/etc/kubernetes-version", nc.steps[1].detail, 1, true)
      assert.matches("set node_conformance_kubernetes_version", nc.steps[1].detail, 1, true)
    end)

    it("reads the version from the guest's /etc/kubernetes-version", function()
      local d, port, ns = ns_sshd()
      assert(fs.write(d .. "/upper/kubernetes-version", "v1.16.14\n"))
      local ok, err = pcall(function()
        local s <close> = ns_connect(port)
        local res = suites.run(s, { "node-conformance" },
          conformance_settings("pass", { node_conformance_kubernetes_version = "" }), run_opts())
        local nc = res.suites[1]
        assert.is_true(res.ok, json.encode(nc.steps))
        assert.equal("v1.16.14 (from /etc/kubernetes-version)", nc.steps[1].detail)
        assert.matches("/pass/v1.16.14/" .. TARBALL, nc.steps[2].detail, 1, true)
      end)
      ns.stop()
      assert(ok, err)
    end)

    it("refuses a version that is not v1.2.3", function()
      local res = suites.run(session, { "node-conformance" },
        conformance_settings("pass", { node_conformance_kubernetes_version = "1.16" }), run_opts())
      assert.equal("version=false", step_names(res.suites[1]))
      assert.matches("'1.16' does not look like v1.2.3", res.suites[1].steps[1].detail, 1, true)
    end)
  end)

  describe("cni", function()
    local plugins, digest

    setup(function()
      local data = assert(fs.read(fixtures.cni_plugins()))
      digest = serve("/cni/cni-plugins-amd64-v1.1.1.tgz", data)
      serve("/cni-bad/cni-plugins-amd64-v1.1.1.tgz", data, "# sums\n" .. HEX_A .. "  cni-plugins-amd64-v1.1.1.tgz\n")
      plugins = web.url("/cni/cni-plugins-amd64-v1.1.1.tgz")
    end)

    it("the fixture holds the real bridge, host-local and loopback plugins, answering VERSION", function()
      local d = tempdir("cni-plugins")
      sh({ "tar", "-xzf", fixtures.cni_plugins(), "-C", d })
      for _, p in ipairs({ "bridge", "host-local", "loopback" }) do
        local r = assert(proc.run({ argv = { d .. "/" .. p }, env_add = { CNI_COMMAND = "VERSION" } }))
        assert.equal(0, r.code, p)
        assert.truthy(json.decode(r.stdout).supportedVersions, p)
      end
    end)

    it("downloads the plugins on the host, verified by <url>.sha256, into the cache", function()
      local cache = tempdir("cni-cache")
      local path, got = suites.download(plugins, "", { cache_dir = cache, progress = false })
      assert.equal(digest, got)
      assert.equal(("%s/downloads/%s/cni-plugins-amd64-v1.1.1.tgz"):format(cache, hash.digest("sha256", plugins)),
                   path)
      assert.equal(digest, hash.file(path, "sha256"))
      -- a checksum file URL given explicitly, and a cached copy reused
      local n = web.count("/cni/cni-plugins-amd64-v1.1.1.tgz")
      assert.equal(path, (suites.download(plugins, web.url("/cni/cni-plugins-amd64-v1.1.1.tgz.sha256"),
                                          { cache_dir = cache, progress = false })))
      assert.equal(n, web.count("/cni/cni-plugins-amd64-v1.1.1.tgz"))
      -- a damaged cached copy is fetched again
      assert(fs.write(path, "damaged"))
      assert.equal(path, (suites.download(plugins, "sha256:" .. digest, { cache_dir = cache, progress = false })))
      assert.equal(n + 1, web.count("/cni/cni-plugins-amd64-v1.1.1.tgz"))
      assert.equal(digest, hash.file(path, "sha256"))
    end)

    it("a wrong checksum fails the cni suite at its download step; the next suite still runs", function()
      local s = conformance_settings("pass", { cni_plugins_url = web.url("/cni-bad/cni-plugins-amd64-v1.1.1.tgz") })
      local res = suites.run(session, { "node-conformance", "cni" }, s, run_opts())
      assert.is_false(res.ok)
      assert.equal(2, #res.suites)
      assert.equal("cni", res.suites[1].name)
      assert.is_false(res.suites[1].ok)
      assert.equal("download=false", step_names(res.suites[1]))
      assert.matches(web.url("/cni-bad/cni-plugins-amd64-v1.1.1.tgz"), res.suites[1].steps[1].detail, 1, true)
      assert.matches("got " .. digest, res.suites[1].steps[1].detail, 1, true)
      assert.equal("node-conformance", res.suites[2].name)
      assert.is_true(res.suites[2].ok)
    end)

    -- The whole suite against a second sshd in a private mount namespace
    -- (ns_sshd), with the plugins in a temp dir: install and verify write
    -- nothing on this host. The host
    -- has no iptables, so the smoke step must stop before any netns or bridge
    -- exists (with iptables it would touch the host's network: not run then).
    it("installs and verifies the real plugins and the seed's config; smoke needs iptables", function()
      local has_iptables = proc.run({ argv = { "sh", "-c", "command -v iptables" } }).code == 0
      if has_iptables or fs.exists("/etc/cni") then
        pending("this host has iptables or /etc/cni: the smoke step would act on its network")
        return
      end
      local d, port, ns = ns_sshd()
      local ok, err = pcall(function()
        local s <close> = ns_connect(port)
        local res = suites.run(s, { "cni" }, settings({ cni_plugins_url = plugins, cni_plugins_dir = d .. "/bin" }),
                               run_opts())
        local cni = res.suites[1]
        assert.equal("download=true install=true verify=true smoke=false", step_names(cni), json.encode(cni.steps))
        assert.is_false(res.ok)
        assert.equal("the guest has no iptables (the bridge plugin's ipMasq needs it)", cni.steps[4].detail)
        assert.matches("bridge, host-local, loopback answer VERSION", cni.steps[3].detail, 1, true)
        for name, text in pairs(suites.cni_config()) do
          local path = d .. "/upper/cni/net.d/" .. name
          assert.equal(text, fs.read(path))
          assert.equal(420, fs.stat(path).mode & 511)
        end
        for _, p in ipairs({ "bridge", "host-local", "loopback", "vlan" }) do
          assert.is_true(fs.exists(d .. "/bin/" .. p), p)
        end
        assert.equal("", assert(s:exec("ls -d ~/capil-cni.* 2>/dev/null; true")).stdout)
      end)
      ns.stop()
      assert(ok, err)
      assert.is_false(fs.exists("/etc/cni"))
    end)

    it("a malformed checksum setting fails the download step with the expected forms", function()
      local s = settings({ cni_plugins_url = plugins, cni_plugins_checksum = "md5:abc" })
      local res = suites.run(session, { "cni" }, s, run_opts())
      assert.equal("download=false", step_names(res.suites[1]))
      assert.matches("expected sha256 hex, sha256:<hex> or a checksum file URL", res.suites[1].steps[1].detail, 1,
                     true)
    end)
  end)
end)
