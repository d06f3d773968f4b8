-- The checks before anything starts (capil.build.preflight) and
-- `capil run --dry-run`, through the real binary. The ISO of every build
-- here is on a loopback nginx whose access log must stay empty, and the
-- ISO cache (XDG_CACHE_HOME) must hold no ISO: a failed preflight
-- downloads nothing and creates nothing (no output directory, no VM on the
-- vSphere simulator). Each group also runs the same build with
-- --skip-preflight once, to show the setup would see a download.
local capil = require("support.capil")
local vcsim = require("support.vcsim")
local nginx = require("support.nginx")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")

local PASSWORD = "Vc-pre!flight-pw"
local BUILD = "vsphere-fixture-kube-v1.16.14"

-- The requests nginx logged ("GET /path 200 ..." lines).
local function requests(web)
  local text = fs.read(web.dir .. "/access.log") or ""
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

-- The ISOs (finished or partial) in the cache under `cache`.
local function cached_isos(cache)
  local out = {}
  for _, f in ipairs(fs.list(cache .. "/capil/iso") or {}) do
    if f:match("%.iso") then out[#out + 1] = f end
  end
  return out
end

-- A web root holding an "ISO", its URL and checksum.
local function serve_iso(web)
  local path = web.root .. "/node.iso"
  assert(fs.write(path, ("capil preflight test ISO\n"):rep(1000)))
  return web.url("/node.iso"), assert(hash.file(path, "sha256"))
end

describe("preflight against the vSphere simulator #vsphere #preflight", function()
  local tmp, sim, web, iso_url, iso_sum, good

  setup(function()
    tmp = peer.dir("preflight-vsphere")
    web = nginx.start()
    iso_url, iso_sum = serve_iso(web)
    sim = vcsim.start({ username = "administrator@vsphere.local", password = PASSWORD, tls = true })
    good = {
      vcenter_server = sim.url, username = sim.username, password = PASSWORD, vcenter_ca_file = sim.ca_file,
      datacenter = "DC0", cluster = "DC0_C0", datastore = "LocalDS_0", network = "VM Network", folder = "",
      insecure_connection = "false",
    }
  end)

  teardown(function()
    if sim then sim:stop() end
    if web then web.stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  -- Runs the fixture recipe on the simulator with `vars` over the good
  -- ones (false removes one); returns the result, the output root and the cache.
  local function run(name, vars, extra)
    local v = {}
    for k, x in pairs(good) do v[k] = x end
    for k, x in pairs(vars or {}) do v[k] = x or nil end
    local vf = ("%s/%s.json"):format(tmp, name)
    assert(json.write(vf, v))
    local out, cache = tmp .. "/out-" .. name, tmp .. "/cache-" .. name
    local a = { "run", "spec/fixtures/recipes/vsphere.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "vsphere", "--output", out, "--var-file", vf,
      "--var", "iso_url=" .. iso_url, "--var", "iso_checksum=" .. iso_sum }
    for _, x in ipairs(extra or {}) do a[#a + 1] = x end
    local r = capil.run(a, { timeout = 120, env_add = { XDG_CACHE_HOME = cache } })
    return r, out, cache
  end

  -- Nothing fetched, nothing created: no request to the ISO's server, no
  -- ISO in the cache, no output directory, no VM named like the build.
  local function assert_nothing(out, cache)
    assert.same({}, requests(web))
    assert.same({}, cached_isos(cache))
    assert.is_false(fs.exists(out), out .. " was created")
    for _, vm in ipairs(sim:vms()) do assert.not_equal(BUILD, vm.name) end
  end

  it("lists a wrong datastore and a wrong network together, exit 2, before downloading the ISO", function()
    local r, out, cache = run("wrong-ds-net", { datastore = "NoSuchDS", network = "NoSuchNet" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("datastore /DC0/datastore/NoSuchDS not found", r.stderr, 1, true)
    assert.matches("check datastore", r.stderr, 1, true)
    assert.matches("network /DC0/network/NoSuchNet not found", r.stderr, 1, true)
    assert.matches("check network", r.stderr, 1, true)
    assert.matches("2 problems", r.stderr, 1, true)
    -- what exists is named
    assert.matches("LocalDS_0", r.stderr, 1, true)
    assert_nothing(out, cache)
    assert.is_nil((r.stdout .. r.stderr):find(PASSWORD, 1, true), "password leaked")
  end)

  it("names a missing vcenter_server (and password) before downloading the ISO", function()
    local r, out, cache = run("no-server", { vcenter_server = false, password = false })
    assert.equal(2, r.code, r.stderr)
    assert.matches("vsphere: vcenter_server, password not set", r.stderr, 1, true)
    assert_nothing(out, cache)
  end)

  it("names an unreachable server (a closed loopback port), exit 2", function()
    local closed = peer.free_port()
    local r, out, cache = run("unreachable", { vcenter_server = ("https://127.0.0.1:%d/sdk"):format(closed) })
    assert.equal(2, r.code, r.stderr)
    assert.matches("127.0.0.1:" .. closed, r.stderr, 1, true)
    assert_nothing(out, cache)
  end)

  it("reports a wrong password as InvalidLogin, never printing it, exit 2", function()
    local wrong = "Not-the-" .. PASSWORD
    local r, out, cache = run("badpw", { password = wrong })
    assert.equal(2, r.code, r.stderr)
    assert.matches("InvalidLogin", r.stderr, 1, true)
    for _, text in ipairs({ r.stdout, r.stderr }) do
      assert.is_nil(text:find(wrong, 1, true), "password leaked")
      assert.is_nil(text:find(PASSWORD, 1, true), "password leaked")
    end
    assert_nothing(out, cache)
  end)

  it("--dry-run logs in and resolves the placement, prints the plan and creates nothing", function()
    sim:reset_calls()
    local r, out, cache = run("dry", {}, { "--dry-run" })
    assert.equal(0, r.code, r.stderr)
    assert.matches(BUILD .. ": vsphere-fixture on vsphere", r.stdout, 1, true)
    assert.matches("steps: fetch-iso, installer, upload-media, create-vm, boot", r.stdout, 1, true)
    assert.matches("iso: would download " .. iso_url, r.stdout, 1, true)
    assert.matches("datacenter DC0, datastore LocalDS_0, network VM Network", r.stdout, 1, true)
    assert.matches("preflight: ok", r.stdout, 1, true)
    local calls = sim:calls()
    assert.equal(1, calls.Login)
    assert.is_nil(calls.CreateVM_Task)
    assert_nothing(out, cache)
  end)

  it("checks an ESXi host's placement too (--backend esx): a wrong remote_datastore, exit 2", function()
    local host = vcsim.start({ username = "root", password = PASSWORD, tls = true, esx = true })
    local vf = tmp .. "/esx.json"
    assert(json.write(vf, { remote_host = host.url, remote_username = "root", remote_password = PASSWORD,
      vcenter_ca_file = host.ca_file, remote_datastore = "NoSuchDS", network = "NoSuchNet" }))
    local out, cache = tmp .. "/out-esx", tmp .. "/cache-esx"
    local r = capil.run({ "run", "spec/fixtures/recipes/vsphere.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "esx", "--output", out, "--var-file", vf,
      "--var", "iso_url=" .. iso_url, "--var", "iso_checksum=" .. iso_sum },
      { timeout = 120, env_add = { XDG_CACHE_HOME = cache } })
    local vms = host:vms()
    host:stop()
    assert.equal(2, r.code, r.stderr)
    assert.matches("esx: datastore /ha-datacenter/datastore/NoSuchDS not found", r.stderr, 1, true)
    assert.matches("check remote_datastore", r.stderr, 1, true)
    assert.matches("esx: network /ha-datacenter/network/NoSuchNet not found", r.stderr, 1, true)
    for _, vm in ipairs(vms) do assert.not_equal(BUILD, vm.name) end
    assert.same({}, requests(web))
    assert.same({}, cached_isos(cache))
    assert.is_false(fs.exists(out))
    assert.is_nil((r.stdout .. r.stderr):find(PASSWORD, 1, true), "password leaked")
  end)

  it("without the preflight (--skip-preflight) the same build fetches the ISO before failing", function()
    local r, _, cache = run("skipped", { datastore = "NoSuchDS" }, { "--skip-preflight" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("step upload-media failed", r.stderr, 1, true)
    assert.is_true(#requests(web) > 0, "no request: the preflight tests above prove nothing")
    assert.is_true(#cached_isos(cache) > 0)
  end)
end)

describe("preflight of local builds #preflight", function()
  local tmp, web, iso_url, iso_sum, empty

  setup(function()
    tmp = peer.dir("preflight-local")
    web = nginx.start()
    iso_url, iso_sum = serve_iso(web)
    empty = tmp .. "/empty-path"
    assert(fs.mkdir(empty))
  end)

  teardown(function()
    if web then web.stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function run(name, extra, env)
    local out, cache = tmp .. "/out-" .. name, tmp .. "/cache-" .. name
    local a = { "run", "spec/fixtures/recipes/tiny.lua", "--recipes-dir", "spec/fixtures/recipes", "--backend", "qemu",
      "--output", out, "--var", "iso_url=" .. iso_url, "--var", "iso_checksum=" .. iso_sum }
    for _, x in ipairs(extra or {}) do a[#a + 1] = x end
    local e = { XDG_CACHE_HOME = cache }
    for k, v in pairs(env or {}) do e[k] = v end
    return capil.run(a, { timeout = 60, env_add = e }), out, cache
  end

  local function assert_nothing(out, cache)
    assert.same({}, requests(web))
    assert.same({}, cached_isos(cache))
    assert.is_false(fs.exists(out), out .. " was created")
  end

  it("names the missing QEMU tools (a PATH without them), exit 2, nothing downloaded", function()
    local r, out, cache = run("no-qemu", {}, { PATH = empty })
    assert.equal(2, r.code, r.stderr)
    assert.matches("qemu-system-x86_64 not found on PATH", r.stderr, 1, true)
    assert.matches("qemu-img not found on PATH (needed to create the VM's disk)", r.stderr, 1, true)
    assert.matches("install qemu-utils", r.stderr, 1, true)
    assert_nothing(out, cache)
    -- disk_writer=qemu-img: qemu-img also exports
    r, out, cache = run("no-qemu-img", { "--var", "disk_writer=qemu-img" }, { PATH = empty })
    assert.equal(2, r.code, r.stderr)
    assert.matches("qemu-img not found on PATH (needed to create the VM's disk and export the VMDK)", r.stderr, 1, true)
    assert_nothing(out, cache)
  end)

  it("refuses a build needing more space than the output's file system has, naming disk_size", function()
    local r, out, cache = run("huge", { "--var", "disk_size=60000000" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("not enough free space on the file system of", r.stderr, 1, true)
    assert.matches("the VM's disk (sparse raw, at most) 58593.8 GiB", r.stderr, 1, true)
    assert.matches("disk_size", r.stderr, 1, true)
    assert_nothing(out, cache)
    r, out, cache = run("huge-qcow2", { "--var", "disk_size=60000000", "--var", "disk_writer=qemu-img" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("the VM's disk (qcow2, at most) 58593.8 GiB", r.stderr, 1, true)
    assert_nothing(out, cache)
  end)

  it("--dry-run prints the build's steps, VM, output and ISO, and creates nothing", function()
    local r, out, cache = run("dry", { "--dry-run" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("steps: fetch-iso, installer, create-vm, boot, wait-ssh, provision", r.stdout, 1, true)
    assert.matches("output: " .. out .. "/", r.stdout, 1, true)
    assert.matches("iso: would download " .. iso_url, r.stdout, 1, true)
    assert.matches("note: accelerator", r.stdout, 1, true)
    assert.matches("preflight: ok", r.stdout, 1, true)
    assert_nothing(out, cache)
  end)

  it("--dry-run says whether the ISO is cached and verified (its stamp matching the file)", function()
    local cache = tmp .. "/cache-cached"
    local dir = cache .. "/capil/iso"
    assert(fs.mkdir(dir))
    local path = ("%s/%s.iso"):format(dir, iso_sum)
    assert(fs.copy(web.root .. "/node.iso", path))
    assert(fs.write(path .. ".verified", ("%d %s"):format(fs.stat(path).size, iso_sum)))
    local out = tmp .. "/out-cached"
    local r = capil.run({ "run", "spec/fixtures/recipes/tiny.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "qemu", "--output", out, "--var", "iso_url=" .. iso_url, "--var", "iso_checksum=" .. iso_sum,
      "--dry-run" }, { timeout = 60, env_add = { XDG_CACHE_HOME = cache } })
    assert.equal(0, r.code, r.stderr)
    assert.matches("iso: cached, verified: " .. path, r.stdout, 1, true)
    -- a stamp that does not match the file: not cached
    assert(fs.write(path .. ".verified", "1 " .. iso_sum))
    r = capil.run({ "run", "spec/fixtures/recipes/tiny.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "qemu", "--output", out, "--var", "iso_url=" .. iso_url, "--var", "iso_checksum=" .. iso_sum,
      "--dry-run" }, { timeout = 60, env_add = { XDG_CACHE_HOME = cache } })
    assert.equal(0, r.code, r.stderr)
    assert.matches("iso: would download " .. iso_url, r.stdout, 1, true)
    assert.same({}, requests(web))
    assert.is_false(fs.exists(out))
  end)

  it("--dry-run on a failing preflight prints the problems and exits 2", function()
    local r, out, cache = run("dry-bad", { "--dry-run" }, { PATH = empty })
    assert.equal(2, r.code, r.stderr)
    assert.matches("problem: qemu-img not found on PATH", r.stdout, 1, true)
    assert.matches("preflight: 2 problems", r.stdout, 1, true)
    assert_nothing(out, cache)
    -- a recipe or variable error is 2 as well in a dry run (1 in a run)
    r = run("dry-var", { "--dry-run", "--var", "disk_size=5" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("disk_size: expected at least 1024", r.stderr, 1, true)
  end)

  it("--dry-run on a bundle, with --only and --shard, prints each build it would run", function()
    local b = tmp .. "/bundle.lua"
    assert(fs.write(b, ([[
return {
  defaults = { backend = "qemu", vars = { iso_url = %q, iso_checksum = %q } },
  { recipe = %q, vars = { build_name = "tiny-a" } },
  { recipe = %q, vars = { build_name = "tiny-b" } },
  { recipe = %q, vars = { build_name = "tiny-c" } },
}
]]):format(iso_url, iso_sum, fs.cwd() .. "/spec/fixtures/recipes/tiny.lua", fs.cwd() .. "/spec/fixtures/recipes/tiny.lua",
      fs.cwd() .. "/spec/fixtures/recipes/tiny.lua")))
    local out, cache = tmp .. "/out-bundle", tmp .. "/cache-bundle"
    local function dry(...)
      return capil.run({ "run", b, "--output", out, "--dry-run", ... }, { timeout = 60, env_add = { XDG_CACHE_HOME = cache } })
    end
    local r = dry()
    assert.equal(0, r.code, r.stderr)
    for _, n in ipairs({ "tiny-a", "tiny-b", "tiny-c" }) do assert.matches(n .. "-kube", r.stdout, 1, true) end
    assert.matches("steps: fetch-iso", r.stdout, 1, true)
    r = dry("--only", "tiny-b")
    assert.equal(0, r.code, r.stderr)
    assert.matches("tiny-b-kube", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("tiny-a-kube", 1, true))
    r = dry("--except", "tiny-b", "--shard", "1/2")
    assert.equal(0, r.code, r.stderr)
    assert.matches("tiny-a-kube", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("tiny-b-kube", 1, true))
    assert.is_nil(r.stdout:find("tiny-c-kube", 1, true))
    -- a failing preflight in one build: exit 2, the build named
    r = capil.run({ "run", b, "--output", out, "--dry-run" },
      { timeout = 60, env_add = { XDG_CACHE_HOME = cache, PATH = empty } })
    assert.equal(2, r.code, r.stderr)
    assert.matches("3 of 3 builds cannot start: 6 problems", r.stderr, 1, true)
    local block = r.stdout:match("(tiny%-a%-kube.-)\ntiny%-b%-kube")
    assert.matches("problem: qemu-img not found", block, 1, true)
    assert_nothing(out, cache)
  end)

  it("--dry-run names the one build of a bundle that cannot start (a vSphere build without a server)", function()
    local b = tmp .. "/mixed.lua"
    local tiny = fs.cwd() .. "/spec/fixtures/recipes/tiny.lua"
    assert(fs.write(b, ([[
return {
  defaults = { vars = { iso_url = %q, iso_checksum = %q } },
  { recipe = %q, backend = "qemu", vars = { build_name = "on-qemu" } },
  { recipe = %q, backend = "vsphere", vars = { build_name = "on-vsphere" } },
}
]]):format(iso_url, iso_sum, tiny, tiny)))
    local out, cache = tmp .. "/out-mixed", tmp .. "/cache-mixed"
    local r = capil.run({ "run", b, "--output", out, "--dry-run" },
      { timeout = 60, env_add = { XDG_CACHE_HOME = cache, GOVC_URL = "", GOVC_USERNAME = "", GOVC_PASSWORD = "" } })
    assert.equal(2, r.code, r.stderr)
    assert.matches("1 of 2 builds cannot start: 1 problem", r.stderr, 1, true)
    local q = r.stdout:match("(on%-qemu%-kube.-)\non%-vsphere%-kube")
    assert.matches("preflight: ok", q, 1, true)
    local v = r.stdout:match("(on%-vsphere%-kube.*)$")
    assert.matches("problem: vsphere: vcenter_server, username, password not set", v, 1, true)
    assert_nothing(out, cache)
  end)

  it("names a missing vmrun for --backend workstation, exit 2", function()
    local r, out, cache = run("no-vmrun", { "--backend", "workstation" }, { PATH = empty, VMWARE_VMRUN = "" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("workstation: vmrun not found", r.stderr, 1, true)
    assert_nothing(out, cache)
  end)

  it("workstation without vmware-vdiskmanager: qemu-img for capil's writer (or qemu-img's), and room for the temp",
    function()
    local sd = require("support.vmware_standin").new({ vdiskmanager = false })
    local r, out, cache = run("ws-writer", { "--backend", "workstation", "--var", "disk_size=60000000" },
      { PATH = empty, VMWARE_VMRUN = sd.vmrun })
    assert.equal(2, r.code, r.stderr)
    assert.matches("qemu-img not found on PATH (needed to create the disk and read it for capil's VMDK writer, as "
      .. "vmware-vdiskmanager is not found)", r.stderr, 1, true)
    assert.matches("the raw temp capil's VMDK writer reads (at most) 58593.8 GiB", r.stderr, 1, true)
    assert.matches("the VM's disk (at most) 58593.8 GiB", r.stderr, 1, true)
    assert_nothing(out, cache)
    r, out, cache = run("ws-qemu-img", { "--backend", "workstation", "--var", "disk_size=60000000",
      "--var", "disk_writer=qemu-img" }, { PATH = empty, VMWARE_VMRUN = sd.vmrun })
    assert.equal(2, r.code, r.stderr)
    assert.matches("qemu-img not found on PATH (needed to create and convert the disk, as vmware-vdiskmanager is "
      .. "not found)", r.stderr, 1, true)
    assert.is_nil(r.stderr:find("raw temp", 1, true))
    assert_nothing(out, cache)
  end)

  it("a parallel run checks every build before starting any: exit 2, nothing started", function()
    local out, cache = tmp .. "/out-par", tmp .. "/cache-par"
    local r = capil.run({ "run", "spec/fixtures/recipes/tiny.lua", "spec/fixtures/recipes/testos.lua",
      "--recipes-dir", "spec/fixtures/recipes", "--backend", "qemu", "-j", "2", "--output", out,
      "--var", "iso_url=" .. iso_url, "--var", "iso_checksum=" .. iso_sum },
      { timeout = 60, env_add = { XDG_CACHE_HOME = cache, PATH = empty } })
    assert.equal(2, r.code, r.stderr)
    assert.matches("2 of 2 builds cannot start (4 problems", r.stderr, 1, true)
    assert.matches("tiny-kube-v1.16.14: qemu-img not found", r.stderr, 1, true)
    assert.matches("testos-kube-v1.16.14: qemu-img not found", r.stderr, 1, true)
    assert_nothing(out, cache)
  end)

  it("--dry-run --all lists every recipe of --recipes-dir", function()
    local out, cache = tmp .. "/out-all", tmp .. "/cache-all"
    local r = capil.run({ "run", "--all", "--recipes-dir", "spec/fixtures/recipes", "--backend", "qemu", "--dry-run",
      "--output", out, "--var", "iso_url=" .. iso_url, "--var", "iso_checksum=" .. iso_sum },
      { timeout = 60, env_add = { XDG_CACHE_HOME = cache } })
    assert.equal(0, r.code, r.stderr)
    for _, n in ipairs({ "tiny", "testos", "testos-efi", "custom-ubuntu", "vsphere-fixture" }) do
      assert.matches("\n" .. n:gsub("%-", "%%-") .. "%-kube%-v[%d.]+: " .. n:gsub("%-", "%%-") .. " on qemu", "\n" .. r.stdout)
    end
    assert.matches("6 builds would run", r.stderr, 1, true)
    assert_nothing(out, cache)
  end)

  it("without the preflight (--skip-preflight) a PATH without QEMU fetches the ISO first", function()
    local r, _, cache = run("skipped", { "--skip-preflight" }, { PATH = empty })
    assert.equal(1, r.code, r.stderr)
    assert.is_true(#requests(web) > 0, "no request: the tests above prove nothing")
    assert.is_true(#cached_isos(cache) > 0)
  end)
end)
