--- capil.test.suites — the test suites `capil test` runs over SSH in a booted
--- image, as the seed document's "Testing Images" section does by hand:
---
---   cni               "Initialize a CNI": the CNI plugins unpacked into
---                     `cni_plugins_dir`, 10-mynet.conf and 99-loopback.conf
---                     in /etc/cni/net.d, each plugin answering VERSION, and a
---                     real ADD/DEL of the bridge network in a throwaway netns.
---   node-conformance  "Run the e2e node conformance tests": the
---                     kubernetes-test tarball of the guest's Kubernetes
---                     version, ginkgo with the seed's arguments (and
---                     --report-dir), the JUnit reports copied back.
---
--- Tarballs are downloaded on the HOST (the guest may have no route out),
--- cached under `<cache_dir>/downloads/<sha256 of the URL>/<name>`, verified
--- by SHA-256 and sent to the guest over SFTP. Every suite is a list of
--- recorded steps; a failed step stops its suite, the next suite still runs.
--- Failures of the outside world never raise: they are failed steps whose
--- detail names the URL, file or command.
local http = require("capil.sys.http")
local hash = require("capil.sys.hash")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local xml = require("capil.sys.xml")
local json = require("capil.sys.json")
local runtime = require("capil.core.runtime")

local M = {}

--- The suites, in the order they run.
M.NAMES = { "cni", "node-conformance" }

local quote = require("capil.util.text").shell_quote
local HEX64 = ("%x"):rep(64)
local VERSION_FILE = "/etc/kubernetes-version"
local CNI_PLUGINS = { "bridge", "host-local", "loopback" }
local CNI_CONF_DIR = "/etc/cni/net.d"
local JUNIT_KEYS = { "tests", "failures", "errors", "skipped" }

-- ====================================================================== --
-- Pure helpers                                                           --
-- ====================================================================== --

--- Where the expected SHA-256 of a download comes from: "" means the
--- checksum file `<url>.sha256`; 64 hex digits or "sha256:<hex>" the value
--- itself; an http(s) or file URL a checksum file.
---@param url string the download
---@param checksum? string the setting (cni_plugins_checksum, node_conformance_checksum)
---@return {kind: "sha256", value: string}|{kind: "url", url: string}|nil
---@return string? err
function M.checksum_source(url, checksum)
  checksum = checksum or ""
  if checksum == "" then return { kind = "url", url = url .. ".sha256" } end
  local hex = checksum:match("^(" .. HEX64 .. ")$") or checksum:match("^[sS][hH][aA]256:(" .. HEX64 .. ")$")
  if hex then return { kind = "sha256", value = hex:lower() } end
  if checksum:match("^[hH][tT][tT][pP][sS]?://%S+$") or checksum:match("^file://%S+$") then
    return { kind = "url", url = checksum }
  end
  return nil, ("checksum '%s' for %s: expected sha256 hex, sha256:<hex> or a checksum file URL")
    :format(checksum, http.redact_url(url))
end

--- The conformance tarball's URL: `{{kubernetes_version}}` in `template`
--- replaced by `version`, which must look like v1.2.3 (optionally with a
--- -suffix such as -rc.1).
---@param template string node_conformance_url
---@param version string
---@return string|nil url
---@return string? err
function M.conformance_url(template, version)
  local ok = type(version) == "string"
    and (version:match("^v%d+%.%d+%.%d+$") or version:match("^v%d+%.%d+%.%d+%-[%w.%-]+$"))
  if not ok then
    return nil, ("kubernetes version '%s' does not look like v1.2.3 (set node_conformance_kubernetes_version, "
      .. "or fix the guest's %s)"):format(tostring(version), VERSION_FILE)
  end
  return (template:gsub("{{%s*kubernetes_version%s*}}", version))
end

-- The seed document's heredocs, byte for byte (each ends with a newline).
local MYNET_CONF = [[
{
    "cniVersion": "0.2.0",
    "name": "mynet",
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": true,
    "ipam": {
        "type": "host-local",
        "subnet": "10.22.0.0/16",
        "routes": [
            { "dst": "0.0.0.0/0" }
        ]
    }
}
]]
local LOOPBACK_CONF = [[
{
    "cniVersion": "0.2.0",
    "name": "lo",
    "type": "loopback"
}
]]

--- The CNI network configurations the cni suite writes to /etc/cni/net.d:
--- the seed document's text, exactly.
---@return table<string, string> file name -> content
function M.cni_config()
  return { ["10-mynet.conf"] = MYNET_CONF, ["99-loopback.conf"] = LOOPBACK_CONF }
end

--- The words ginkgo gets, as the seed's `sudo ./ginkgo ...` line gives them
--- (focus, skip, nodes and flake attempts from the settings), plus
--- `--report-dir=<report_dir>` so e2e_node writes JUnit reports.
---@param settings table the tests.* settings (node_conformance_*)
---@param report_dir string
---@return string[]
function M.ginkgo_args(settings, report_dir)
  return {
    "--nodes=" .. tostring(settings.node_conformance_nodes),
    "--flakeAttempts=" .. tostring(settings.node_conformance_flake_attempts),
    "--focus=" .. settings.node_conformance_focus,
    "--skip=" .. settings.node_conformance_skip,
    "./e2e_node.test", "--",
    "--k8s-bin-dir=/usr/bin",
    "--container-runtime=remote",
    "--container-runtime-endpoint", "unix:///var/run/containerd/containerd.sock",
    "--container-runtime-process-name", "/usr/local/bin/containerd",
    "--container-runtime-pid-file=",
    "--kubelet-flags=--cgroups-per-qos=true --cgroup-root=/ --runtime-cgroups=/system.slice/containerd.service",
    '--extra-log={"name": "containerd.log", "journalctl": ["-u", "containerd"]}',
    "--report-dir=" .. report_dir,
  }
end

local function count_attr(el, key)
  local v = math.tointeger(tonumber(xml.attr(el, key) or ""))
  return v
end

-- Counts of one <testsuite>: its attributes, or (for each one missing) its
-- <testcase> children (nested <testsuite>s included).
local function suite_counts(el)
  local counted = { tests = 0, failures = 0, errors = 0, skipped = 0 }
  for _, child in ipairs(xml.children(el)) do
    if child.name == "testcase" then
      counted.tests = counted.tests + 1
      if xml.find(child, "failure") then counted.failures = counted.failures + 1 end
      if xml.find(child, "error") then counted.errors = counted.errors + 1 end
      if xml.find(child, "skipped") then counted.skipped = counted.skipped + 1 end
    elseif child.name == "testsuite" then
      local sub = suite_counts(child)
      for _, k in ipairs(JUNIT_KEYS) do counted[k] = counted[k] + sub[k] end
    end
  end
  local r = {}
  for _, k in ipairs(JUNIT_KEYS) do r[k] = count_attr(el, k) or counted[k] end
  return r
end

--- Test counts of a JUnit report: a <testsuites> with <testsuite>s (summed)
--- or one <testsuite>. Attributes are used when present, otherwise the
--- <testcase>s with <failure>, <error> or <skipped> are counted.
---@param xml_text string
---@return {tests: integer, failures: integer, errors: integer, skipped: integer}|nil
---@return string? err
function M.junit_summary(xml_text)
  local root, err = xml.parse(xml_text)
  if not root then return nil, "not a JUnit report: " .. tostring(err) end
  if root.name == "testsuite" then return suite_counts(root) end
  if root.name ~= "testsuites" then
    return nil, ("not a JUnit report: the root element is <%s>, not <testsuites> or <testsuite>"):format(root.name)
  end
  local list = xml.children(root, "testsuite")
  local sum = { tests = 0, failures = 0, errors = 0, skipped = 0 }
  if #list == 0 then
    for _, k in ipairs(JUNIT_KEYS) do sum[k] = count_attr(root, k) or 0 end
    return sum
  end
  for _, el in ipairs(list) do
    local c = suite_counts(el)
    for _, k in ipairs(JUNIT_KEYS) do sum[k] = sum[k] + c[k] end
  end
  return sum
end

local function summary_text(s)
  local function n(v, word) return ("%d %s%s"):format(v, word, v == 1 and "" or "s") end
  return ("%s, %s, %s, %d skipped"):format(n(s.tests, "test"), n(s.failures, "failure"), n(s.errors, "error"),
    s.skipped)
end

-- ====================================================================== --
-- Host-side downloads                                                    --
-- ====================================================================== --

local shown = http.redact_url

-- The first 64-hex word of a checksum file (sha256sum's and upstream's format).
local function fetch_checksum(url)
  local text, err
  if url:match("^file://") then
    text, err = fs.read_file((url:gsub("^file://", "")), { max = 16 * 1024 * 1024 })
  else
    local resp, herr = http.request({ url = url, timeout = 120 })
    text, err = resp and resp.body, herr
  end
  if not text then return nil, ("checksum file %s: %s"):format(shown(url), err) end
  for word in text:gmatch("%S+") do
    if word:match("^" .. HEX64 .. "$") then return word:lower() end
  end
  return nil, ("checksum file %s holds no sha256 (64 hex digits)"):format(shown(url))
end

--- Downloads `url` into `<cache_dir>/downloads/<sha256 of url>/<name>`,
--- verified against the SHA-256 that `checksum` designates (see
--- `checksum_source`); a cached file with that digest is reused.
---@param url string
---@param checksum? string
---@param opts {cache_dir: string, progress?: boolean}
---@return string|nil path
---@return string digest_or_err the verified sha256, or the failure
---@return string? code
function M.download(url, checksum, opts)
  if type(opts) ~= "table" or type(opts.cache_dir) ~= "string" then
    error("suites.download: option 'cache_dir' is required", 2)
  end
  local src, err = M.checksum_source(url, checksum)
  if not src then return nil, err, "ECHECKSUM" end
  local expected, from = src.value, "the configured checksum"
  if src.kind == "url" then
    expected, err = fetch_checksum(src.url)
    if not expected then return nil, err, "ECHECKSUM" end
    from = shown(src.url)
  end
  local name = url:match("^[^?#]*"):match("([^/]+)/*$") or "download"
  local dir = ("%s/downloads/%s"):format(opts.cache_dir, hash.digest("sha256", url))
  local path = dir .. "/" .. name
  if fs.exists(path) then
    if hash.file(path, "sha256") == expected then
      log.info("using cached %s (sha256 %s)", path, expected)
      return path, expected
    end
    fs.remove(path)
  end
  local ok, merr, mcode = fs.mkdir(dir)
  if not ok then return nil, merr, mcode end
  log.info("downloading %s", shown(url))
  local progress = opts.progress ~= false and log.progress({ label = "download " .. name }) or nil
  local resp, herr, code = http.request({ url = url, out_file = path, sha256 = expected, progress = progress })
  if progress then progress:close() end
  if not resp then
    if code == "EDIGEST" then
      return nil, ("%s: sha256 mismatch: got %s, expected %s (from %s)"):format(shown(url),
        herr:match("got (%x+)") or "?", expected, from), code
    end
    return nil, herr, code
  end
  return path, expected
end

-- ====================================================================== --
-- Guest-side helpers                                                     --
-- ====================================================================== --

-- A command run as root: sudo unless the session already is root (minimal
-- guests have no sudo), as capil.build.guest does.
local function as_root(session, script)
  local cmd = "sh -c " .. quote(script)
  if session.user ~= "root" then cmd = "sudo -n " .. cmd end
  return cmd
end

local function tail(s, n)
  s = (s or ""):gsub("%s+$", "")
  return s:sub(-(n or 600))
end

-- Runs cmd; returns the result when it exits 0, else nil and a message
-- naming `what` with the exit code and the end of its output.
local function run(session, cmd, what, timeout)
  local r, err, code = session:exec(cmd, { timeout = timeout or 300 })
  if not r then return nil, ("%s: %s"):format(what, err), code end
  if r.code ~= 0 then
    local out = tail(r.stderr ~= "" and r.stderr or r.stdout)
    return nil, ("%s: exit %d%s"):format(what, r.code, out ~= "" and (": " .. out) or ""), "ESTEP", r
  end
  return r
end

-- A fresh directory in the login user's home, made by the login user.
local function guest_tempdir(session, prefix)
  local r, err, code = run(session, ("mktemp -d ~/%s.XXXXXX"):format(prefix), "mktemp -d ~/" .. prefix .. ".XXXXXX")
  if not r then return nil, err, code end
  local dir = r.stdout:gsub("%s+$", "")
  if not dir:match("^/") then return nil, ("mktemp -d printed '%s', not a path"):format(dir), "ESTEP" end
  return dir
end

-- Sends a host file over SFTP and checks the digest of what was sent.
local function upload(session, path, remote, expected, opts)
  local r, err, code = session:put(path, remote, { progress = opts.progress ~= false or nil })
  if not r then return nil, ("upload %s to %s: %s"):format(path, remote, err), code end
  if expected and r.sha256 ~= expected then
    return nil, ("upload %s to %s: sent sha256 %s, expected %s"):format(path, remote, r.sha256, expected), "EDIGEST"
  end
  return true
end

-- A duration setting: seconds (the schema coerces durations); unset: `default`.
local function seconds_of(v, default)
  if v == nil or v == "" then return default end
  if type(v) ~= "number" then error(("suites: duration '%s' is not a number of seconds"):format(tostring(v)), 3) end
  return v
end

-- ====================================================================== --
-- Steps                                                                  --
-- ====================================================================== --

-- Runs fn() as step `name` of `suite` and records it; fn returns
-- true [, detail] or nil, err, code. Returns whether the step passed.
local function step(suite, name, fn)
  local t0 = runtime.now()
  local ok, detail, code = fn()
  local rec = { name = name, ok = ok and true or false, seconds = runtime.now() - t0 }
  if ok then
    rec.detail = type(detail) == "string" and detail or nil
    log.info("%s: %s: ok%s (%.1f s)", suite.name, name, rec.detail and (": " .. rec.detail) or "", rec.seconds)
  else
    rec.detail = tostring(detail or "failed")
    suite.ok = false
    if code == "EINTR" then suite.interrupted = true end
    log.warn("%s: %s: FAILED: %s", suite.name, name, rec.detail)
  end
  suite.steps[#suite.steps + 1] = rec
  return rec.ok
end

-- cni ---------------------------------------------------------------------

local function cni_install(session, tarball, digest, dir, opts)
  local tmp, err, code = guest_tempdir(session, "capil-cni")
  if not tmp then return nil, err, code end
  local function install()
    local ok, uerr, ucode = upload(session, tarball, tmp .. "/cni-plugins.tgz", digest, opts)
    if not ok then return nil, uerr, ucode end
    local ldir = fs.tempdir({ prefix = "capil-cni" })
    if not ldir then return nil, "cannot make a local temp dir for the CNI configuration", "ETEMP" end
    for name, text in pairs(M.cni_config()) do
      ok, uerr, ucode = fs.write(ldir .. "/" .. name, text)
      if ok then
        ok, uerr, ucode = upload(session, ldir .. "/" .. name, tmp .. "/" .. name, hash.digest("sha256", text),
          { progress = false })
      end
      if not ok then
        fs.remove(ldir, { recursive = true })
        return nil, uerr, ucode
      end
    end
    fs.remove(ldir, { recursive = true })
    local script = ("set -e; mkdir -p %s %s; tar -xzf %s -C %s; "
      .. "install -m 0644 %s %s/10-mynet.conf; install -m 0644 %s %s/99-loopback.conf"):format(
      CNI_CONF_DIR, quote(dir), quote(tmp .. "/cni-plugins.tgz"), quote(dir),
      quote(tmp .. "/10-mynet.conf"), CNI_CONF_DIR, quote(tmp .. "/99-loopback.conf"), CNI_CONF_DIR)
    local r, rerr, rcode = run(session, as_root(session, script), "install the CNI plugins into " .. dir)
    if not r then return nil, rerr, rcode end
    return true, ("plugins in %s, 10-mynet.conf and 99-loopback.conf in %s"):format(dir, CNI_CONF_DIR)
  end
  local ok, detail, dcode = install()
  local r, rerr = session:exec("rm -rf " .. quote(tmp), { timeout = 120 })
  if not r or r.code ~= 0 then log.warn("cni: could not remove %s in the guest: %s", tmp, rerr or tail(r.stderr)) end
  return ok, detail, dcode
end

local function cni_verify(session, dir)
  for _, p in ipairs(CNI_PLUGINS) do
    local path = dir .. "/" .. p
    local script = ("test -x %s || { echo 'no executable %s' >&2; exit 2; }; CNI_COMMAND=VERSION %s"):format(
      quote(path), path, quote(path))
    local r, err, code = run(session, as_root(session, script), "CNI_COMMAND=VERSION " .. path)
    if not r then return nil, err, code end
    if not r.stdout:find('"supportedVersions"', 1, true) then
      return nil, ("CNI_COMMAND=VERSION %s printed no supportedVersions: %s"):format(path, tail(r.stdout)), "ESTEP"
    end
  end
  for name, text in pairs(M.cni_config()) do
    local path = CNI_CONF_DIR .. "/" .. name
    local r, err, code = run(session, as_root(session, "cat " .. path), "cat " .. path)
    if not r then return nil, err, code end
    if r.stdout ~= text then
      return nil, ("%s in the guest differs from what was written: %q"):format(path, r.stdout:sub(1, 400)), "ESTEP"
    end
  end
  return true, ("%s answer VERSION; %s/10-mynet.conf and 99-loopback.conf read back equal"):format(
    table.concat(CNI_PLUGINS, ", "), CNI_CONF_DIR)
end

-- The IPv4 address in a CNI ADD result (0.2.0's ip4.ip, or 0.3+'s ips[]).
local function cni_ipv4(res)
  if type(res) ~= "table" then return nil end
  if type(res.ip4) == "table" and type(res.ip4.ip) == "string" then return res.ip4.ip end
  if type(res.ips) == "table" then
    for _, ip in ipairs(res.ips) do
      if type(ip) == "table" and type(ip.address) == "string" and ip.address:match("^%d+%.%d+%.%d+%.%d+/") then
        return ip.address
      end
    end
  end
  return nil
end

local function in_mynet(addr)
  local a, b = addr:match("^10%.22%.(%d+)%.(%d+)/%d+$")
  return a and tonumber(a) <= 255 and tonumber(b) <= 255
end

local function cni_smoke(session, dir)
  local r, err, code = run(session, as_root(session,
    "for c in ip iptables; do command -v $c >/dev/null 2>&1 || echo $c; done"), "look for ip and iptables")
  if not r then return nil, err, code end
  local missing = r.stdout:gsub("%s+$", "")
  if missing ~= "" then
    local why = { ip = "ip (install iproute2)", iptables = "iptables (the bridge plugin's ipMasq needs it)" }
    local list = {}
    for c in missing:gmatch("%S+") do list[#list + 1] = why[c] or c end
    return nil, "the guest has no " .. table.concat(list, " and no "), "ENOTOOL"
  end
  local id = hash.hex_encode(hash.random(4))
  local ns = "capil-cni-" .. id
  local env = ("CNI_CONTAINERID=capil-%s CNI_NETNS=/var/run/netns/%s CNI_IFNAME=eth0 CNI_PATH=%s"):format(
    id, ns, quote(dir))
  local plugin = quote(dir .. "/bridge") .. " < " .. CNI_CONF_DIR .. "/10-mynet.conf"
  local add = ("set -e; ip netns add %s; CNI_COMMAND=ADD %s %s"):format(ns, env, plugin)
  local del = ("CNI_COMMAND=DEL %s %s; rc=$?; ip netns del %s || rc=$?; exit $rc"):format(env, plugin, ns)

  local ar, aerr, acode = session:exec(as_root(session, add), { timeout = 120 })
  local dr, derr = session:exec(as_root(session, del), { timeout = 120 }) -- always clean up
  if not ar then return nil, "bridge ADD: " .. aerr, acode end
  if ar.code ~= 0 then
    return nil, ("bridge ADD in netns %s: exit %d: %s"):format(ns, ar.code, tail(ar.stdout .. ar.stderr)), "ESTEP"
  end
  local res = json.decode(ar.stdout)
  local addr = cni_ipv4(res)
  if not addr then
    return nil, ("bridge ADD printed no IPv4 address: %s"):format(tail(ar.stdout)), "ESTEP"
  end
  if not in_mynet(addr) then
    return nil, ("bridge ADD gave %s, outside 10.22.0.0/16"):format(addr), "ESTEP"
  end
  if not dr then return nil, ("bridge ADD gave %s; DEL: %s"):format(addr, derr), "ESTEP" end
  if dr.code ~= 0 then
    return nil, ("bridge ADD gave %s; DEL or netns del: exit %d: %s"):format(addr, dr.code,
      tail(dr.stdout .. dr.stderr)), "ESTEP"
  end
  return true, ("bridge ADD in netns %s gave %s; DEL and netns del ok"):format(ns, addr)
end

local function run_cni(session, settings, opts, suite)
  local dir = settings.cni_plugins_dir or "/opt/cni/bin"
  local url = settings.cni_plugins_url
  local tarball, digest
  if not step(suite, "download", function()
    local path, d, code = M.download(url, settings.cni_plugins_checksum, opts)
    if not path then return nil, d, code end
    tarball, digest = path, d
    return true, ("%s (sha256 %s)"):format(shown(url), d)
  end) then return end
  if not step(suite, "install", function() return cni_install(session, tarball, digest, dir, opts) end) then
    return
  end
  if not step(suite, "verify", function() return cni_verify(session, dir) end) then return end
  step(suite, "smoke", function() return cni_smoke(session, dir) end)
end

-- node-conformance --------------------------------------------------------

local function conformance_version(session, settings)
  local v = settings.node_conformance_kubernetes_version
  local from = "node_conformance_kubernetes_version"
  if v == nil or v == "" then
    local r, err, code = session:exec("cat " .. VERSION_FILE, { timeout = 60 })
    if not r then return nil, "cat " .. VERSION_FILE .. ": " .. err, code end
    if r.code ~= 0 then
      return nil, ("the guest has no readable %s (%s); set node_conformance_kubernetes_version"):format(
        VERSION_FILE, tail(r.stderr, 200)), "ENOVERSION"
    end
    v, from = r.stdout:gsub("^%s+", ""):gsub("%s+$", ""), VERSION_FILE
  end
  local url, err = M.conformance_url(settings.node_conformance_url, v)
  if not url then return nil, err, "EVERSION" end
  return url, ("%s (from %s)"):format(v, from)
end

local function conformance_unpack(session, tarball, digest, opts, state)
  local dir, err, code = guest_tempdir(session, "capil-conformance")
  if not dir then return nil, err, code end
  state.dir = dir
  local name = "kubernetes-test-linux-amd64.tar.gz"
  local ok, uerr, ucode = upload(session, tarball, dir .. "/" .. name, digest, opts)
  if not ok then return nil, uerr, ucode end
  local bin = dir .. "/kubernetes/test/bin"
  local script = ("cd %s && tar -zxf %s && rm -f %s && test -x %s/ginkgo && test -e %s/e2e_node.test"):format(
    quote(dir), name, name, quote(bin), quote(bin))
  local r, rerr, rcode = run(session, script, ("unpack %s in %s (kubernetes/test/bin/ginkgo and e2e_node.test)")
    :format(name, dir), 1800)
  if not r then return nil, rerr, rcode end
  return true, "unpacked in " .. dir
end

local function conformance_run(session, settings, state)
  local secs = math.ceil(seconds_of(settings.node_conformance_timeout, 3 * 3600))
  local words = {}
  for i, w in ipairs(M.ginkgo_args(settings, state.dir .. "/junit")) do words[i] = quote(w) end
  local ginkgo = ("timeout -k 60 %d ./ginkgo %s"):format(secs, table.concat(words, " "))
  if session.user ~= "root" then ginkgo = "sudo -n " .. ginkgo end
  local cmd = ("cd %s && %s"):format(quote(state.dir .. "/kubernetes/test/bin"), ginkgo)
  log.info("node-conformance: running ginkgo in %s (up to %d s)", state.dir, secs)
  local last = {}
  local r, err, code = session:exec(cmd, {
    timeout = secs + 120,
    on_line = function(_, line)
      log.info("node-conformance | %s", line)
      last[#last + 1] = line
      if #last > 5 then table.remove(last, 1) end
    end,
  })
  if not r then return nil, "ginkgo: " .. err, code end
  if r.code == 124 then return nil, ("ginkgo: timed out after %d s (node_conformance_timeout)"):format(secs), "ETIMEDOUT" end
  if r.code ~= 0 then
    return nil, ("ginkgo exit %d: %s"):format(r.code, tail(table.concat(last, "\n"), 600)), "ESTEP"
  end
  return true, "ginkgo exit 0"
end

local function conformance_collect(session, opts, state, suite)
  local jdir = state.dir .. "/junit"
  local r, err, code = session:exec(("find %s -type f -name '*.xml'"):format(quote(jdir)), { timeout = 120 })
  if not r then return nil, "find " .. jdir .. ": " .. err, code end
  local files = {}
  for line in r.stdout:gmatch("[^\n]+") do files[#files + 1] = line end
  table.sort(files)
  if #files == 0 then return nil, ("no JUnit XML under %s in the guest"):format(jdir), "ENOJUNIT" end
  local out = opts.out_dir .. "/junit"
  local ok, merr, mcode = fs.mkdir(out)
  if not ok then return nil, merr, mcode end
  local sum = { tests = 0, failures = 0, errors = 0, skipped = 0 }
  suite.summary, suite.junit = sum, {}
  for _, remote in ipairs(files) do
    local rel = remote:sub(#jdir + 2):gsub("/", "_")
    local path = out .. "/" .. rel
    local g, gerr, gcode = session:get(remote, path)
    if not g then return nil, ("copy %s from the guest: %s"):format(remote, gerr), gcode end
    suite.junit[#suite.junit + 1] = path
    local text, rerr, rcode = fs.read(path)
    if not text then return nil, ("%s: %s"):format(path, rerr), rcode end
    local s, serr = M.junit_summary(text)
    if not s then return nil, ("%s: %s"):format(path, serr), "EJUNIT" end
    for _, k in ipairs(JUNIT_KEYS) do sum[k] = sum[k] + s[k] end
  end
  local detail = summary_text(sum)
  if sum.failures + sum.errors > 0 then return nil, detail, "ETESTS" end
  return true, detail
end

local function run_conformance(session, settings, opts, suite)
  local url, tarball, digest
  if not step(suite, "version", function()
    local u, detail, code = conformance_version(session, settings)
    if not u then return nil, detail, code end
    url = u
    return true, detail
  end) then return end
  if not step(suite, "download", function()
    local path, d, code = M.download(url, settings.node_conformance_checksum, opts)
    if not path then return nil, d, code end
    tarball, digest = path, d
    return true, ("%s (sha256 %s)"):format(shown(url), d)
  end) then return end
  local state = {}
  if step(suite, "unpack", function() return conformance_unpack(session, tarball, digest, opts, state) end) then
    step(suite, "run", function() return conformance_run(session, settings, state) end)
    if not suite.interrupted then
      step(suite, "collect", function() return conformance_collect(session, opts, state, suite) end)
    end
  end
  if state.dir then
    -- ginkgo ran as root: its reports are root's
    local r, err = session:exec(as_root(session, "rm -rf " .. quote(state.dir)), { timeout = 300 })
    if not r or r.code ~= 0 then
      log.warn("node-conformance: could not remove %s in the guest: %s", state.dir, err or tail(r.stderr))
    end
  end
end

-- ====================================================================== --
-- Running                                                                --
-- ====================================================================== --

local RUNNERS = { cni = run_cni, ["node-conformance"] = run_conformance }

--- Checks suite names (from tests.suites or --suite): true, or nil and a
--- message naming the unknown one and the known ones.
---@param names string[]
---@return true|nil ok
---@return string? err
function M.check_names(names)
  for _, n in ipairs(names) do
    if not RUNNERS[n] then
      return nil, ("unknown test suite '%s' (known: %s)"):format(tostring(n), table.concat(M.NAMES, ", "))
    end
  end
  return true
end

---@class capil.test.suites.Step
---@field name string
---@field ok boolean
---@field seconds number
---@field detail? string

---@class capil.test.suites.Suite
---@field name string
---@field ok boolean
---@field seconds number
---@field steps capil.test.suites.Step[]
---@field summary? {tests: integer, failures: integer, errors: integer, skipped: integer}
---@field junit? string[] local paths of the JUnit reports

--- Runs the named suites, in `NAMES` order, over one capil.sys.ssh session.
--- `settings` holds the tests.* values by variable name (defaults applied);
--- `opts.out_dir` is the build's test directory (JUnit reports land in
--- `<out_dir>/junit/`), `opts.cache_dir` the host's download cache,
--- `opts.progress` (default true) shows transfer progress. A failed step
--- stops its suite; the next suite still runs (not after Ctrl-C: then
--- `interrupted` is set). Unknown names raise (see `check_names`).
---@param session capil.sys.ssh.Session
---@param names string[]
---@param settings table<string, any>
---@param opts {out_dir: string, cache_dir: string, progress?: boolean}
---@return {ok: boolean, interrupted?: boolean, suites: capil.test.suites.Suite[]}
function M.run(session, names, settings, opts)
  local ok, err = M.check_names(names)
  if not ok then error("suites.run: " .. err, 2) end
  if type(opts) ~= "table" or type(opts.out_dir) ~= "string" or type(opts.cache_dir) ~= "string" then
    error("suites.run: options 'out_dir' and 'cache_dir' are required", 2)
  end
  local wanted = {}
  for _, n in ipairs(names) do wanted[n] = true end
  local result = { ok = true, suites = {} }
  for _, name in ipairs(M.NAMES) do
    if wanted[name] and not result.interrupted then
      local suite = { name = name, ok = true, steps = {} }
      local t0 = runtime.now()
      log.info("test suite %s: starting", name)
      RUNNERS[name](session, settings, opts, suite)
      suite.seconds = runtime.now() - t0
      if suite.interrupted then result.interrupted = true end
      suite.interrupted = nil
      result.ok = result.ok and suite.ok
      result.suites[#result.suites + 1] = suite
      log.info("test suite %s: %s (%.1f s)", name, suite.ok and "passed" or "FAILED", suite.seconds)
    end
  end
  return result
end

return M
