-- spec/support/vcsim.lua — the vSphere simulator peer for the vsphere specs:
-- govmomi 0.24.2's vcsim (Debian's golang-github-vmware-govmomi-dev) plus our
-- shim (spec/support/vcsim/*.go), which stands in for the vCenter behaviour
-- vcsim lacks (PutUsbScanCodes, ExportVm, guest IP reports, the ESXi free
-- licence) and adds test endpoints (/shim/...). Built offline with Debian's
-- Go into the fixture cache, started on 127.0.0.1:<free port>, stopped by PID.
--
--   local vcsim = require("support.vcsim")
--   local sim = vcsim.start{ username = "admin", password = "secret", tls = true }
--   -- sim.url, sim.server, sim.ca_file, ...; sim:calls(), sim:keys(), sim:request(method),
--   -- sim:uploads(), sim:datastore_file(path), sim:rest(), sim:rest_call(path), sim:stop()
--
-- The content library (REST, /rest) is vcsim's; the shim checks the REST
-- login, serves /api/session and the /api form of the content library, OVF
-- and VM template routes (translated to vcsim's /rest; uploads on
-- /cls/data/...) with `api = true`, logs REST requests (sim:rest()) and
-- plays injected REST failures (spec/support/vcsim/rest.go, api.go).
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local http = require("capil.sys.http")
local json = require("capil.sys.json")
local hash = require("capil.sys.hash")
local runtime = require("capil.core.runtime")

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local SRC = assert(fs.realpath(here .. "/vcsim"))
local REPO = assert(fs.realpath(here .. "/../.."))
local GOPATH = "/usr/share/gocode"
local GOVMOMI = GOPATH .. "/src/github.com/vmware/govmomi/simulator/simulator.go"
local PACKAGES = "golang-go golang-github-vmware-govmomi-dev"

local function cache_dir()
  local d = os.getenv("CAPIL_FIXTURES")
  if not d or d == "" then d = REPO .. "/build/fixtures" end
  return d .. "/vcsim"
end

local function go_env(dir)
  return {
    GO111MODULE = "off", GOPATH = GOPATH, GOCACHE = dir .. "/gocache",
    GOFLAGS = "", CGO_ENABLED = "0", GOPROXY = "off",
  }
end

local built

--- Builds the simulator (once per source version) and returns the binary's
--- path: `$CAPIL_FIXTURES/vcsim/vcsim-<hash>` (default build/fixtures), the
--- hash taken over the .go sources and the Go version. Raises when Go or
--- govmomi is missing (naming the Debian packages) or the build fails.
---@return string path
function M.build()
  if built then return built end
  local gov = proc.run({ argv = { "go", "version" } })
  if not gov or gov.code ~= 0 or not fs.exists(GOVMOMI) then
    error(("vcsim.build: needs Go and govmomi's simulator source (%s): install the Debian packages %s"
      .. " (scripts/setup does)"):format(GOVMOMI, PACKAGES), 2)
  end
  local parts = { gov.stdout }
  for _, name in ipairs(assert(fs.list(SRC))) do
    if name:match("%.go$") then
      parts[#parts + 1] = name .. "\0" .. assert(fs.read(SRC .. "/" .. name)) .. "\0"
    end
  end
  local id = hash.digest("sha256", table.concat(parts)):sub(1, 16)
  local dir = cache_dir()
  local bin = dir .. "/vcsim-" .. id
  if fs.exists(bin) then
    built = bin
    return bin
  end
  assert(fs.mkdir(dir))
  local tmp = ("%s.tmp%d"):format(bin, proc.getpid())
  local r, err = proc.run({
    argv = { "go", "build", "-o", tmp, "." }, cwd = SRC, env_add = go_env(dir), timeout = 600,
  })
  if not r or r.code ~= 0 then
    fs.remove(tmp)
    error(("vcsim.build: go build in %s failed: %s\n%s"):format(SRC, err or ("exit " .. r.code),
      r and (r.stdout .. r.stderr) or ""), 2)
  end
  assert(fs.rename(tmp, bin))
  -- binaries of older sources are of no further use
  for _, name in ipairs(assert(fs.list(dir))) do
    if name:match("^vcsim%-%x+$") and name ~= "vcsim-" .. id then fs.remove(dir .. "/" .. name) end
  end
  built = bin
  return bin
end

-- Makes a 2048-bit self-signed certificate for 127.0.0.1 (and localhost).
local function self_signed(dir, name)
  local crt, key = dir .. "/" .. name .. ".crt", dir .. "/" .. name .. ".key"
  local r, err = proc.run({ argv = {
    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
  } })
  if not r or r.code ~= 0 then
    error(("vcsim: openssl could not make a certificate: %s%s"):format(err or "", r and r.stderr or ""), 3)
  end
  return crt, key
end

local wrong_ca

--- A self-signed certificate that did not sign any simulator's: a CA file
--- for "wrong CA refused" tests (made once per run).
---@return string path
function M.wrong_ca()
  if not wrong_ca then wrong_ca = self_signed(peer.dir("vcsim-ca"), "other") end
  return wrong_ca
end

--- A SOAP 1.1 envelope around `body` (one vim25 method element), as vSphere
--- clients send it.
---@param body string
---@return string
function M.envelope(body)
  return '<?xml version="1.0" encoding="UTF-8"?>'
    .. '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    .. ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
    .. "<soapenv:Body>" .. body .. "</soapenv:Body></soapenv:Envelope>"
end

--- The requests of REST log `log` (sim:rest()) that are not of `flavor`
--- ("rest" or "api"): on an /api server any /rest/ path, on a /rest one any
--- /api/ path but a single POST /api/session probe answered 404. Returns
--- their names with their statuses ({} when there are none).
---@param log {name: string, path: string, status: integer}[]
---@param flavor "rest"|"api"
---@return string[]
function M.foreign_requests(log, flavor)
  local out, probes = {}, 0
  for _, c in ipairs(log) do
    local what = c.name .. " " .. c.status
    if flavor == "api" then
      if c.path:match("^/rest/") then out[#out + 1] = what end
    elseif c.path:match("^/api/") then
      probes = probes + 1
      if what ~= "POST /api/session 404" or probes > 1 then out[#out + 1] = what end
    end
  end
  return out
end

local Sim = {}
Sim.__index = Sim

local START_OPTS = {
  username = true, password = true, tls = true, esx = true, restricted = true, guest_ip = true,
  guest_ip_delay = true, session_idle = true, trace = true, export_disk = true, api = true,
}

---@class vcsim.Sim
---@field url string       "http(s)://127.0.0.1:PORT/sdk"
---@field server string    "127.0.0.1:PORT"
---@field port integer
---@field base string      "http(s)://127.0.0.1:PORT"
---@field ca_file? string  the server's self-signed certificate (tls only)
---@field username? string
---@field password? string
---@field datacenter string "DC0", or "ha-datacenter" with esx
---@field datastore string  "LocalDS_0"
---@field pid integer
---@field log string       stdout and stderr of the simulator
---@field dir string       its scratch dir (certificates, TMPDIR with the datastore); removed by stop()

--- Starts a simulator. Options: `username`/`password` (the only login
--- accepted; default any non-empty pair), `tls` (HTTPS with a fresh 2048-bit
--- certificate, `sim.ca_file`), `esx` (a standalone ESXi host instead of
--- vCenter), `restricted` (ESXi free licence: write methods fault
--- RestrictedVersion), `guest_ip` (reported by "VMware Tools" after power-on,
--- `guest_ip_delay` seconds later, default 0.5), `session_idle` (seconds
--- before an idle session expires), `trace` (SOAP dump into the log),
--- `export_disk` (a file an export serves for a VM disk without data),
--- `api` (serve /api as vSphere 7.0 U2+ does: the session on /api/session
--- and the content library, OVF and VM template routes capil uses, see
--- spec/support/vcsim/api.go; without it /api/... answers 404 as 6.5-7.0
--- do and only /rest serves).
--- The REST API (the content library on /rest) checks `username`/`password`
--- at session create, as vCenter does.
---@param opts? {username?: string, password?: string, tls?: boolean, esx?: boolean, restricted?: boolean, guest_ip?: string, guest_ip_delay?: number, session_idle?: number, trace?: boolean, export_disk?: string, api?: boolean}
---@return vcsim.Sim
function M.start(opts)
  opts = require("capil.util.opts").check(opts, START_OPTS, "vcsim.start")
  local bin = M.build()
  local dir = peer.dir("vcsim")
  assert(fs.mkdir(dir .. "/tmp"))
  local port = peer.free_port()
  local server = "127.0.0.1:" .. port
  local argv = { bin, "-l", server }
  local sim = setmetatable({
    server = server, port = port, dir = dir, log = dir .. "/vcsim.log",
    username = opts.username, password = opts.password,
    datacenter = opts.esx and "ha-datacenter" or "DC0", datastore = "LocalDS_0",
  }, Sim)
  if opts.username or opts.password then
    argv[#argv + 1] = "-username"
    argv[#argv + 1] = assert(opts.username, "vcsim.start: password without username")
    argv[#argv + 1] = "-password"
    argv[#argv + 1] = assert(opts.password, "vcsim.start: username without password")
  end
  if opts.tls then
    local crt, key = self_signed(dir, "vcsim")
    sim.ca_file = crt
    for _, a in ipairs({ "-cert", crt, "-key", key }) do argv[#argv + 1] = a end
  end
  if opts.esx then argv[#argv + 1] = "-esx" end
  if opts.restricted then argv[#argv + 1] = "-restricted" end
  if opts.trace then argv[#argv + 1] = "-trace" end
  if opts.api then argv[#argv + 1] = "-api" end
  if opts.export_disk then argv[#argv + 1] = "-export-disk=" .. opts.export_disk end
  if opts.guest_ip then
    argv[#argv + 1] = "-guest-ip"
    argv[#argv + 1] = opts.guest_ip
  end
  if opts.guest_ip_delay then
    argv[#argv + 1] = "-guest-ip-delay"
    argv[#argv + 1] = ("%dms"):format(math.floor(opts.guest_ip_delay * 1000 + 0.5))
  end
  if opts.session_idle then
    argv[#argv + 1] = "-session-idle"
    argv[#argv + 1] = ("%dms"):format(math.floor(opts.session_idle * 1000 + 0.5))
  end
  local ok, handle = pcall(peer.start, {
    name = "vcsim", argv = argv, port = port, log = sim.log, env_add = { TMPDIR = dir .. "/tmp" },
  })
  if not ok then
    fs.remove(dir, { recursive = true })
    error(handle, 2)
  end
  sim.handle, sim.pid = handle, handle.pid
  -- the shim is installed just after the port opens: wait for the URL line
  local deadline = runtime.now() + 10
  local line
  repeat
    line = (fs.read(sim.log) or ""):match("VCSIM_URL=(%S+)")
    if not line then
      if runtime.now() > deadline or not handle.process:running() then
        local out = fs.read(sim.log) or ""
        sim:stop()
        error("vcsim did not print VCSIM_URL:\n" .. out, 2)
      end
      runtime.sleep(0.01)
    end
  until line
  sim.base = line:match("^(https?://[^/]+)")
  sim.url = sim.base .. "/sdk"
  return sim
end

-- A request to the simulator's own endpoints; raises on failure (test setup).
function Sim:_shim(method, path, body)
  local resp, err = http.request({
    method = method, url = self.base .. path, body = body, ca_file = self.ca_file, retries = 0,
    headers = body and { ["Content-Type"] = "application/json" } or nil,
  })
  if not resp then error(("vcsim %s %s: %s"):format(method, path, err), 3) end
  return assert(json.decode(resp.body))
end

--- The REST requests (/rest and /api) answered since start or the last
--- reset_rest(), in order: `{{name = "POST /rest/com/vmware/content/library/item?~action=find",
--- method =, path =, action =, status =}, ...}`; a name writes "id:..."
--- segments as "id:*" and every file upload as "PUT /rest/com/vmware/cis/data";
--- an /api request is named by its route ("DELETE /api/content/library/item/*",
--- "POST /api/content/library/item/update-session/*?action=complete") and an
--- upload to an /api upload endpoint "PUT /cls/data".
--- `inject{method = <name>, action = "status"|"reset", status =}` makes such a call fail.
---@return {name: string, method: string, path: string, action?: string, status: integer}[]
function Sim:rest()
  return self:_shim("GET", "/shim/rest")
end

--- Empties the REST request log.
function Sim:reset_rest()
  self:_shim("POST", "/shim/rest/reset", "")
end

--- A REST GET (or `method`, with a JSON `body`) on a session of its own
--- (basic auth with the simulator's username/password): the decoded
--- "value" of the answer. Raises on failure (test setup and checks).
---@param path string e.g. "/rest/com/vmware/content/library"
---@param method? string
---@param body? table
---@return any
function Sim:rest_call(path, method, body)
  local auth = "Basic " .. hash.base64_encode((self.username or "u") .. ":" .. (self.password or "p"))
  local login, err = http.request({ method = "POST", url = self.base .. "/rest/com/vmware/cis/session",
    headers = { Authorization = auth }, body = "", ca_file = self.ca_file, retries = 0 })
  if not login then error("vcsim rest login: " .. err, 2) end
  local id = assert(json.decode(login.body)).value
  local resp, rerr, _, r = http.request({ method = method or "GET", url = self.base .. path,
    headers = { ["vmware-api-session-id"] = id, ["Content-Type"] = body and "application/json" or nil },
    body = body and json.encode(body) or nil, ca_file = self.ca_file, retries = 0 })
  http.request({ method = "DELETE", url = self.base .. "/rest/com/vmware/cis/session",
    headers = { ["vmware-api-session-id"] = id }, ca_file = self.ca_file, retries = 0 })
  if not resp then error(("vcsim rest %s: %s %s"):format(path, rerr, r and r.body or ""), 2) end
  if resp.body == "" then return nil end
  local v = assert(json.decode(resp.body)).value
  if v == json.null then return nil end
  return v
end

--- Key events PutUsbScanCodes recorded, by VM moref:
--- `{["vm-57"] = {{usbHidCode = N, modifiers = {leftShift = true, ...}}, ...}}`.
---@return table<string, {usbHidCode: integer, modifiers: table<string, boolean>}[]>
function Sim:keys()
  return self:_shim("GET", "/shim/usbscancodes")
end

--- SOAP calls answered since start or the last reset_calls(): `{Login = 1, ...}`.
---@return table<string, integer>
function Sim:calls()
  return self:_shim("GET", "/shim/calls")
end

--- Sets every call count back to zero.
function Sim:reset_calls()
  self:_shim("POST", "/shim/calls/reset", "")
end

--- Ends every SOAP session, as their expiry would; returns how many there were.
---@return integer
function Sim:drop_sessions()
  return self:_shim("POST", "/shim/sessions/drop", "").dropped
end

--- Makes the next `count` (default 1) calls of `method` misbehave: `action`
--- "fault" answers the SOAP fault `fault` (a vim25 type, e.g.
--- "NotAuthenticated", with `message` as faultstring), "reset" closes the
--- connection without a reply, "lost" carries the call out and then
--- closes the connection without its reply, "status" answers HTTP `status` with no body,
--- "delay" waits `delay_ms` milliseconds and then answers as usual, "slow"
--- (ExportVm only) answers as usual but the lease it returns serves its
--- disks pausing `delay_ms` milliseconds after every 64 KiB.
--- `count = 0` cancels. REST calls are named as in Sim:rest().
---@param opts {method: string, action: string, fault?: string, message?: string, status?: integer, count?: integer, delay_ms?: integer}
function Sim:inject(opts)
  local resp, err, _, r = http.request({
    method = "POST", url = self.base .. "/shim/inject", body = json.encode(opts),
    ca_file = self.ca_file, retries = 0, headers = { ["Content-Type"] = "application/json" },
  })
  if not resp then error(("vcsim inject: %s %s"):format(err, r and r.body or ""), 2) end
end

--- Every VM of the inventory: `{{ref = "vm-57", name = , power = "poweredOn", template = false, ip = ?}, ...}`.
---@return {ref: string, name: string, power: string, template: boolean, ip?: string}[]
function Sim:vms()
  return self:_shim("GET", "/shim/vms")
end

--- The body (a SOAP envelope) of the last `method` call the simulator
--- received since it started, e.g. `sim:request("CreateVM_Task")`; raises
--- when there was none.
---@param method string
---@return string
function Sim:request(method)
  return self:_shim("GET", "/shim/requests?method=" .. method).body
end

--- The datastore uploads (PUT on /folder) so far, in order:
--- `{{path = "[LocalDS_0] dir/file", size = N, sha256 = "hex", status = 200, data = "bytes"?}, ...}`;
--- `data` (decoded) only for uploads up to 4 MiB.
---@return {path: string, size: integer, sha256: string, status: integer, data?: string}[]
function Sim:uploads()
  local list = self:_shim("GET", "/shim/uploads")
  for _, u in ipairs(list) do
    if u.data then u.data = assert(hash.base64_decode(u.data)) end
  end
  return list
end

--- Where datastore path `path` ("[LocalDS_0] dir/file") lives on this
--- machine: vcsim keeps each datastore in a directory of its TMPDIR.
---@param path string
---@return string
function Sim:datastore_file(path)
  local ds, rel = path:match("^%[([^%]]+)%] (.*)$")
  assert(ds, "vcsim: not a datastore path: " .. path)
  local prefix = ("govcsim-%s-%s-"):format(self.datacenter, ds)
  for _, name in ipairs(assert(fs.list(self.dir .. "/tmp"))) do
    if name:sub(1, #prefix) == prefix then return ("%s/tmp/%s/%s"):format(self.dir, name, rel) end
  end
  error(("vcsim: no directory for datastore %s under %s/tmp"):format(ds, self.dir), 2)
end

--- The simulator's log so far.
---@return string
function Sim:log_text()
  return fs.read(self.log) or ""
end

--- Stops the simulator (SIGTERM, SIGKILL after 3 s, reaped) and removes its
--- directory; idempotent. busted exits without running capil's cleanups, so
--- every spec stops its simulators itself.
function Sim:stop()
  if self.handle then
    self.handle.stop()
    self.handle = nil
  end
  if self.dir then
    fs.remove(self.dir, { recursive = true })
  end
end

return M
