-- capil publish against the simulator (spec/support/vcsim: govmomi's vcsim
-- serves the content library on /rest; the shim checks the REST login,
-- serves /api/session with api = true and logs every REST request): a small
-- OVA packed by capil goes into a new library, a second publish uploads
-- nothing, a changed OVA replaces the item's content under the same id, and
-- failures leave no update session, no half item and no library they made.
-- The main flows run twice: on the server's /rest (vcsim as it is, a
-- vCenter before 7.0 U2) and on /api (the shim's -api: a 7.0 U2+ vCenter),
-- each checking from the request log that capil used only that flavor.
local capil = require("support.capil")
local vcsim = require("support.vcsim")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")

local PASSWORD = "Lib-s3cret!pw"
local USER = "administrator@vsphere.local"

for _, flavor in ipairs({ "rest", "api" }) do
describe("capil publish #vsphere on " .. flavor, function()
  local tmp, sim, varfile
  local api = flavor == "api"
  -- this flavor's request names (patterns; see sim:rest())
  local N = api and {
    upload = "PUT /cls/data", session_create = "^POST /api/content/library/item/update%-session$",
    session_delete = "^DELETE /api/content/library/item/update%-session/%*$",
    item_delete = "^DELETE /api/content/library/item/%*$",
    library_delete = "^DELETE /api/content/local%-library/%*$", item_create = "^POST /api/content/library/item$",
    add = "^POST /api/content/library/item/update%-session/%*/file$", upload_path = "/cls/data/",
  } or {
    upload = "PUT /rest/com/vmware/cis/data", session_create = "^POST /rest/com/vmware/content/library/item/update%-session$",
    session_delete = "^DELETE /rest/com/vmware/content/library/item/update%-session/id:%*$",
    item_delete = "^DELETE /rest/com/vmware/content/library/item/id:%*$",
    library_delete = "^DELETE /rest/com/vmware/content/local%-library/id:%*$",
    item_create = "^POST /rest/com/vmware/content/library/item$", add = "add$", upload_path = "/rest/com/vmware/cis/data/",
  }

  -- capil's requests in `log` are all of this flavor: on /api no /rest/
  -- path; on /rest no /api/ path but the one /api/session probe (404)
  local function one_flavor(log)
    assert.same({}, vcsim.foreign_requests(log, flavor))
  end

  -- an OVA packed by capil.format.ova from a small streamOptimized disk, in
  -- directory `sub` (default `name`); `fill` changes the disk's bytes (and
  -- so the OVA's digest)
  local function make_ova(name, fill, sub)
    local ova = require("capil.format.ova")
    local dir = tmp .. "/" .. (sub or name)
    assert(fs.mkdir(dir))
    local raw = dir .. "/disk.raw"
    assert(fs.write(raw, ("\0"):rep(1024 * 1024) .. (fill or "capil"):rep(1000)))
    assert(fs.truncate(raw, 8 * 1024 * 1024))
    assert(require("capil.format.vmdk").write(raw, dir .. "/" .. name .. "-disk-0.vmdk", { jobs = 1 }))
    fs.remove(raw)
    assert(ova.pack({ ova = dir .. "/" .. name .. ".ova", name = name, disks = { dir .. "/" .. name .. "-disk-0.vmdk" },
      os = { ovf_id = 94, os_type = "ubuntu64Guest", display_name = "Ubuntu 20.04" },
      hardware = { cpus = 2, memory_mb = 2048, disk_mb = 8, vmx_version = 17, firmware = "bios",
        disk_controller = "pvscsi" },
      properties = { KUBERNETES_SEMVER = "v1.30.1" } }))
    return dir .. "/" .. name .. ".ova", dir .. "/" .. name .. ".ovf"
  end

  setup(function()
    tmp = peer.dir("publish-spec")
    sim = vcsim.start({ username = USER, password = PASSWORD, tls = true, api = api })
    varfile = tmp .. "/vsphere.json"
    assert(json.write(varfile, { vcenter_server = sim.url, username = USER, password = PASSWORD,
      vcenter_ca_file = sim.ca_file, datacenter = "DC0" }))
  end)

  teardown(function()
    if sim then sim:stop() end
    if tmp then fs.remove(tmp, { recursive = true }) end
  end)

  local function publish(args, opts)
    opts = opts or {}
    local a = { "publish" }
    for _, x in ipairs(args) do a[#a + 1] = x end
    a[#a + 1] = "--var-file"
    a[#a + 1] = opts.varfile or varfile
    local r = capil.run(a, { timeout = 60, env_add = opts.env })
    assert.not_matches(PASSWORD, r.stdout .. r.stderr, 1, true)
    assert.not_matches("stack traceback", r.stderr, 1, true)
    return r
  end

  -- REST requests whose name matches, in `log` (default: the simulator's
  -- whole log; sim:rest_call's own requests are logged too)
  local function calls(name_pattern, log)
    local n = 0
    for _, c in ipairs(log or sim:rest()) do
      if c.name:match(name_pattern) then n = n + 1 end
    end
    return n
  end

  local function library_id(name)
    local ids = sim:rest_call("/rest/com/vmware/content/library?~action=find", "POST", { spec = { name = name } })
    return ids and ids[1]
  end

  local function items(lib)
    return sim:rest_call("/rest/com/vmware/content/library/item?library_id=" .. lib) or {}
  end

  local function sessions()
    return sim:rest_call("/rest/com/vmware/content/library/item/update-session") or {}
  end

  -- the item's directory on the simulator's datastore
  local function item_file(lib, item, name)
    local dir = sim:datastore_file("[LocalDS_0] ")
    return ("%s/contentlib-%s/%s/%s"):format(dir, lib, item, name)
  end

  local ova1, ovf1, ova2, ovf2
  local lib, item

  it("publishes an OVA into a new library: descriptor and disk uploaded by digest, sha256 on the item", function()
    ova1, ovf1 = make_ova("node", "first")
    sim:reset_rest()
    local r = publish({ ova1, "--library", "images", "--create-library", "--datastore", "LocalDS_0" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local log = sim:rest()
    one_flavor(log)
    local sha = assert(fs.read(ova1 .. ".sha256"))
    assert.matches("published " .. ova1:gsub("%p", "%%%0") .. " to library images, item node", r.stdout)
    lib = library_id("images")
    assert.is_string(lib)
    local ids = items(lib)
    assert.equal(1, #ids)
    item = ids[1]
    local info = sim:rest_call("/rest/com/vmware/content/library/item/id:" .. item)
    assert.equal("node", info.name)
    assert.equal("ovf", info.type)
    assert.matches("sha256:" .. sha, info.description, 1, true)
    -- the descriptor as packed, and both files uploaded once, on one session
    assert.equal(fs.read(ovf1), fs.read(item_file(lib, item, "node.ovf")))
    assert.equal(2, calls("^" .. N.upload .. "$", log))
    assert.equal(1, calls(N.session_create, log))
    assert.equal(1, calls("complete$", log))
    -- the update session is gone once done, the REST session logged out
    assert.same({}, sessions())
    assert.equal(1, calls("^DELETE /api/session$", log) + calls("^DELETE /rest/com/vmware/cis/session$", log))
    assert.equal(1, calls(N.session_delete, log))
  end)

  it("publishing the same OVA again uploads nothing and says so", function()
    assert.is_string(item, "needs the first publish")
    sim:reset_rest()
    local r = publish({ ova1, "--library", "images" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("already holds", r.stdout, 1, true)
    assert.matches("nothing uploaded", r.stdout, 1, true)
    one_flavor(sim:rest())
    assert.equal(0, calls("update%-session"))
    assert.equal(0, calls("^" .. N.upload .. "$"))
    assert.same({ item }, items(lib))
  end)

  it("a changed OVA replaces the item's content under the same item id", function()
    assert.is_string(item, "needs the first publish")
    -- same name, different disk bytes
    ova2, ovf2 = make_ova("node", "second", "changed")
    local sha2 = assert(fs.read(ova2 .. ".sha256"))
    assert.not_equal(fs.read(ova1 .. ".sha256"), sha2)
    sim:reset_rest()
    local r = publish({ ova2, "--library", "images", "--item", "node" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local log = sim:rest()
    one_flavor(log)
    assert.same({ item }, items(lib))
    local info = sim:rest_call("/rest/com/vmware/content/library/item/id:" .. item)
    assert.matches("sha256:" .. sha2, info.description, 1, true)
    assert.equal(2, calls("^" .. N.upload .. "$", log))
    assert.equal(0, calls(N.item_create, log)) -- no new item
    assert.equal(fs.read(ovf2), fs.read(item_file(lib, item, "node.ovf")))
    assert.same({}, sessions())
  end)

  it("a failed upload cancels and deletes its session and removes the item and the library it created", function()
    local ova = make_ova("fails")
    sim:inject({ method = N.upload, action = "status", status = 500 })
    sim:reset_rest()
    local r = publish({ ova, "--library", "doomed", "--create-library", "--datastore", "LocalDS_0" })
    assert.equal(1, r.code, r.stdout .. r.stderr)
    local log = sim:rest()
    one_flavor(log)
    assert.matches("upload fails.ovf to https://127.0.0.1:%d+" .. N.upload_path:gsub("%p", "%%%0") .. "[^:]+: HTTP 500",
      r.stderr)
    assert.equal(1, calls("cancel$", log))
    assert.equal(1, calls(N.item_delete, log))
    assert.equal(1, calls(N.library_delete, log))
    assert.same({}, sessions())
    assert.is_nil(library_id("doomed"))
    -- an item that existed keeps its content and id when its update fails
    sim:inject({ method = N.upload, action = "reset" })
    local ova3 = make_ova("node", "third", "third")
    r = publish({ ova3, "--library", "images" })
    assert.equal(1, r.code, r.stdout .. r.stderr)
    assert.same({ item }, items(lib))
    local info = sim:rest_call("/rest/com/vmware/content/library/item/id:" .. item)
    assert.matches("sha256:" .. fs.read(ova2 .. ".sha256"), info.description, 1, true)
    assert.same({}, sessions())
  end)

  it("Ctrl-C during an upload cancels and deletes the session and removes the new item and library", function()
    local proc = require("capil.sys.proc")
    local runtime = require("capil.core.runtime")
    local ova = make_ova("interrupted")
    sim:inject({ method = N.upload, action = "delay", delay_ms = 5000 })
    sim:reset_rest()
    local out = tmp .. "/interrupted.out"
    local p = assert(proc.spawn({ argv = { capil.exe, "publish", ova, "--library", "stopped", "--create-library",
      "--datastore", "LocalDS_0", "--var-file", varfile }, stdout = out, stderr = "stdout" }))
    -- the file was added: its upload is under way (held by the delay)
    local deadline = runtime.now() + 30
    while calls(N.add) == 0 do
      assert(runtime.now() < deadline, "the upload never started: " .. (fs.read(out) or ""))
      runtime.sleep(0.05)
    end
    runtime.sleep(0.3)
    assert(p:kill("INT"))
    local st = assert(p:wait({ timeout = 30 }))
    p:close()
    local text = fs.read(out) or ""
    assert.not_equal(0, st.code, text)
    assert.not_matches(PASSWORD, text, 1, true)
    local log = sim:rest()
    one_flavor(log)
    assert.equal(1, calls("cancel$", log), text)
    assert.equal(1, calls(N.session_delete, log), text)
    assert.same({}, sessions())
    assert.is_nil(library_id("stopped"))
  end)

  if not api then
  it("the password, the basic auth token and the session id are secrets", function()
    local rest = require("capil.vsphere.rest")
    local log = require("capil.sys.log")
    local hash = require("capil.sys.hash")
    local c = assert(rest.connect({ server = sim.url, username = USER, password = PASSWORD, ca_file = sim.ca_file }))
    assert.equal("rest", c.flavor)
    assert.is_string(c.id)
    local token = hash.base64_encode(USER .. ":" .. PASSWORD)
    for _, s in ipairs({ PASSWORD, c.id, token }) do
      assert.not_matches(s, log.redact("x " .. s .. " y"), 1, true)
    end
    -- a failing call names the path and the server's words, not the session
    local v, err = c:call("GET", "/rest/com/vmware/content/library/item/id:nope")
    assert.is_nil(v)
    assert.matches("rest: GET /rest/com/vmware/content/library/item/id:nope: HTTP 404", err, 1, true)
    c:logout()
    -- a whole publish at debug level prints neither
    local r = publish({ ova1, "--library", "images", "-v" })
    assert.equal(0, r.code, r.stderr)
    assert.not_matches(token, r.stdout .. r.stderr, 1, true)
    assert.not_matches(c.id, r.stdout .. r.stderr, 1, true)
  end)

  it("rest.request writes an operation in the /rest or the /api form: path, wrapped body, token, map", function()
    local rest = require("capil.vsphere.rest")
    local m, p, b = rest.request("rest", "item_create", { token = "t1", body = { name = "n" } })
    assert.same({ "POST", "/rest/com/vmware/content/library/item", { client_token = "t1", create_spec = { name = "n" } } },
      { m, p, b })
    m, p, b = rest.request("api", "item_create", { token = "t1", body = { name = "n" } })
    assert.same({ "POST", "/api/content/library/item?client_token=t1", { name = "n" } }, { m, p, b })
    assert.equal("/rest/com/vmware/content/library/item/update-session/id:s1?~action=cancel",
      select(2, rest.request("rest", "session_action", { id = "s1", action = "cancel" })))
    assert.equal("/api/content/library/item/update-session/s1?action=cancel",
      select(2, rest.request("api", "session_action", { id = "s1", action = "cancel" })))
    assert.equal("/api/content/library/item/update-session/s1/file",
      select(2, rest.request("api", "session_file_add", { id = "s1", body = {} })))
    local body = { deployment_spec = { network_mappings = { ["VM Network"] = "dvportgroup-1" } } }
    assert.equal('{"deployment_spec":{"network_mappings":[{"key":"VM Network","value":"dvportgroup-1"}]}}',
      json.encode(select(3, rest.request("rest", "ovf_deploy", { id = "i", body = body })), { sort_keys = true }))
    assert.equal('{"deployment_spec":{"network_mappings":{"VM Network":"dvportgroup-1"}}}',
      json.encode(select(3, rest.request("api", "ovf_deploy", { id = "i", body = body })), { sort_keys = true }))
    assert.equal("dvportgroup-1", body.deployment_spec.network_mappings["VM Network"]) -- the caller's table kept
    assert.equal("{}", json.encode(select(3, rest.request("api", "ovf_deploy", { id = "i",
      body = { deployment_spec = { network_mappings = {} } } })).deployment_spec.network_mappings))
    assert.has_error(function() rest.request("api", "item_get", {}) end, "rest: operation item_get needs id")
  end)
  end

  it("waits name what they wait for: a session that ends CANCELED, a file never stored", function()
    assert.is_string(item, "needs the first publish")
    local rest = require("capil.vsphere.rest")
    local library = require("capil.vsphere.library")
    local c = assert(rest.connect({ server = sim.url, username = USER, password = PASSWORD, ca_file = sim.ca_file }))
    local sid = assert(library.create_session(c, item))
    assert(library.session_action(c, sid, "cancel"))
    local ok, err, code = library.wait_session(c, sid, { timeout = 5, interval = 0.1 })
    assert.is_nil(ok)
    assert.equal("ELIBRARY", code)
    assert.equal(("update session %s ended CANCELED"):format(sid), err)
    assert(library.delete_session(c, sid))
    ok, err, code = library.wait_files(c, item, { "node.ovf", "missing.vmdk" }, { timeout = 0.3, interval = 0.1 })
    assert.is_nil(ok)
    assert.equal("ETIMEDOUT", code)
    assert.matches("missing.vmdk is not among the item's files", err, 1, true)
    assert(library.wait_files(c, item, { "node.ovf", "node-disk-0.vmdk" }, { timeout = 1 }))
    c:logout()
    assert.same({}, sessions())
  end)

  if api then return end -- the rest is about the session and the command, not the flavor

  it("a corrupt OVA is refused before anything is sent", function()
    local ova = make_ova("corrupt")
    -- flip one byte inside the disk: the manifest no longer matches
    local data = assert(fs.read(ova))
    local at = #data - 4096
    assert(fs.write(ova, data:sub(1, at - 1) .. string.char((data:byte(at) + 1) % 256) .. data:sub(at + 1)))
    fs.remove(ova .. ".sha256")
    sim:reset_rest()
    local r = publish({ ova, "--library", "images" })
    assert.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("fails verification", r.stderr, 1, true)
    assert.matches("corrupt%-disk%-0%.vmdk: SHA%-256 is %x+, but the manifest says", r.stderr)
    assert.same({}, sim:rest())
  end)

  it("a bad password is reported with the URL path and the server's message, never the password", function()
    local bad = tmp .. "/bad.json"
    local wrong = "Wr0ng-pa55word!"
    assert(json.write(bad, { vcenter_server = sim.url, username = USER, password = wrong,
      vcenter_ca_file = sim.ca_file }))
    local r = publish({ ova1, "--library", "images" }, { varfile = bad })
    assert.equal(1, r.code, r.stdout .. r.stderr)
    assert.not_matches(wrong, r.stdout .. r.stderr, 1, true)
    assert.matches("POST /rest/com/vmware/cis/session: HTTP 401", r.stderr, 1, true)
    assert.matches("Authentication required.", r.stderr, 1, true)
    assert.matches("check the username (" .. USER .. ") and password", r.stderr, 1, true)
  end)

  it("verifies TLS as the SOAP client does: a wrong CA refused, a thumbprint pinned, --insecure", function()
    assert.is_string(item, "needs the first publish")
    local proc = require("capil.sys.proc")
    local wrong = tmp .. "/wrong-ca.json"
    assert(json.write(wrong, { vcenter_server = sim.url, username = USER, password = PASSWORD,
      vcenter_ca_file = vcsim.wrong_ca() }))
    sim:reset_rest()
    local r = publish({ ova2, "--library", "images" }, { varfile = wrong })
    assert.equal(1, r.code, r.stdout .. r.stderr)
    assert.matches("rest: POST /api/session: ", r.stderr, 1, true)
    assert.same({}, sim:rest()) -- not a byte reached the API
    -- a pinned certificate (vSphere's thumbprint, SHA-256) replaces the CA
    local out = assert(proc.run({ argv = { "openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in",
      sim.ca_file } }))
    local fp = assert(out.stdout:match("=(%S+)"))
    local pinned = tmp .. "/pinned.json"
    assert(json.write(pinned, { vcenter_server = sim.url, username = USER, password = PASSWORD, thumbprint = fp }))
    r = publish({ ova2, "--library", "images" }, { varfile = pinned })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local other = tmp .. "/other-pin.json"
    assert(json.write(other, { vcenter_server = sim.url, username = USER, password = PASSWORD,
      thumbprint = peer.wrong_fingerprint(fp) }))
    r = publish({ ova2, "--library", "images" }, { varfile = other })
    assert.equal(1, r.code, r.stdout .. r.stderr)
    r = publish({ ova2, "--library", "images", "--insecure" }, { varfile = wrong })
    assert.equal(0, r.code, r.stdout .. r.stderr)
  end)

  it("uses /api/session where the server has it, /rest where /api answers 404", function()
    -- this simulator has no /api: /api first, then /rest
    sim:reset_rest()
    local r = publish({ ova2, "--library", "images" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local names = {}
    for _, c in ipairs(sim:rest()) do names[#names + 1] = c.name .. " " .. c.status end
    assert.equal("POST /api/session 404", names[1])
    assert.equal("POST /rest/com/vmware/cis/session 200", names[2])
    assert.equal("DELETE /rest/com/vmware/cis/session 200", names[#names])
    -- a 7.0 U2+ server: /api/session only, and the library calls on /api
    local apisim = vcsim.start({ username = USER, password = PASSWORD, api = true })
    local vf = tmp .. "/api.json"
    assert(json.write(vf, { vcenter_server = apisim.url, username = USER, password = PASSWORD, datacenter = "DC0" }))
    local ok, err = pcall(function()
      local r2 = publish({ ova2, "--library", "api-lib", "--create-library", "--datastore", "LocalDS_0" },
        { varfile = vf })
      assert.equal(0, r2.code, r2.stdout .. r2.stderr)
      local seen = {}
      for _, c in ipairs(apisim:rest()) do seen[#seen + 1] = c.name .. " " .. c.status end
      assert.equal("POST /api/session 201", seen[1])
      assert.equal("DELETE /api/session 204", seen[#seen])
      for _, s in ipairs(seen) do assert.not_matches("/rest/", s, 1, true) end
      -- --api rest forces the old endpoint and the /rest calls
      apisim:reset_rest()
      local r3 = publish({ ova2, "--library", "api-lib", "--api", "rest" }, { varfile = vf })
      assert.equal(0, r3.code, r3.stdout .. r3.stderr)
      assert.matches("already holds", r3.stdout, 1, true)
      local forced = apisim:rest()
      assert.equal("POST /rest/com/vmware/cis/session 200", forced[1].name .. " " .. forced[1].status)
      for _, c in ipairs(forced) do assert.matches("^/rest/", c.path) end
    end)
    apisim:stop()
    assert(ok, err)
  end)

  it("usage and configuration errors exit 2", function()
    local r = publish({ ova1 })
    assert.equal(2, r.code)
    assert.matches("--library NAME is required", r.stderr, 1, true)
    r = publish({ tmp, "--library", "images" })
    assert.equal(2, r.code)
    assert.matches("name the OVA", r.stderr, 1, true)
    r = publish({ ova1, "--library", "nope" })
    assert.equal(1, r.code)
    assert.matches("library nope not found on https://127.0.0.1:%d+: create it, or pass %-%-create%-library", r.stderr)
    local none = tmp .. "/none.json"
    assert(json.write(none, { username = USER, password = PASSWORD }))
    r = publish({ ova1, "--library", "images" }, { varfile = none, env = { GOVC_URL = "" } })
    assert.equal(2, r.code)
    assert.matches("no server", r.stderr, 1, true)
    -- a build directory with one OVA is taken as that OVA
    r = publish({ fs.dirname(ova1), "--library", "images" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
  end)
end)
end
