-- spec/support/gcs.lua — Google Cloud Storage peers for the gcs specs, both
-- on 127.0.0.1:<free port>, stopped by PID:
--   gcs.emulator()   the firebase-tools Cloud Storage emulator (npm
--                    firebase-tools, pinned by spec/support/gcs/package-lock.json,
--                    installed once into $CAPIL_FIXTURES/firebase-tools), run
--                    in-process by spec/support/gcs/emulator.js without its Java
--                    rules runtime: media/multipart uploads, metadata, listing,
--                    alt=media downloads;
--   gcs.fake(opts)   spec/support/gcs/fake.js, OUR OWN FAKE of the parts of the
--                    GCS JSON API the emulator lacks (chunked resumable
--                    uploads with 308 + Range and status queries, Google's
--                    token endpoint, 401/403, injected drops and 503/429),
--                    written from Google's documentation;
-- and credential files for them: gcs.service_account_key(dir, token_uri),
-- gcs.authorized_user_file(dir, token_uri), gcs.verify_jwt(jwt, public_pem).
--
--   local gcs = require("support.gcs")
--   local f = gcs.fake{ token = true }
--   f.inject{ action = "drop", at_bytes = { 300000, 900000 } }
--   ... f.stats().resent_bytes ... f.stop()
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local http = require("capil.sys.http")
local json = require("capil.sys.json")
local hash = require("capil.sys.hash")

local M = {}

--- The firebase-tools version the emulator runs (pinned in spec/support/gcs/package.json).
M.FIREBASE_TOOLS_VERSION = "15.34.2"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local SRC = assert(fs.realpath(here .. "/gcs"))
local REPO = assert(fs.realpath(here .. "/../.."))

local function fixtures_dir()
  local d = os.getenv("CAPIL_FIXTURES")
  if not d or d == "" then d = REPO .. "/build/fixtures" end
  return d
end

-- Runs argv; returns its stdout or raises (test setup) with its output.
local function run(argv, what)
  local r, err = proc.run({ argv = argv })
  if not r or r.code ~= 0 then
    error(("%s: %s failed: %s%s"):format(what, argv[1], err or ("exit " .. r.code),
      r and ("\n" .. r.stdout .. r.stderr) or ""), 3)
  end
  return r.stdout
end

-- Raises unless node (>= `min`) is on PATH; with `npm`, npm too.
local function need_node(what, min, npm)
  local r = proc.run({ argv = { "node", "--version" } })
  local major = r and r.code == 0 and tonumber(r.stdout:match("^v(%d+)%."))
  if not major or major < min then
    error(("%s: needs Node.js >= %d as `node` on PATH (found: %s)"):format(what, min,
      r and r.code == 0 and r.stdout:gsub("%s+$", "") or "none"), 3)
  end
  if npm then
    local n = proc.run({ argv = { "npm", "--version" } })
    if not n or n.code ~= 0 then error(what .. ": needs npm on PATH (it comes with Node.js)", 3) end
  end
end

local installed

--- Installs firebase-tools (once; `npm install --no-audit --no-fund` with the
--- pinned lock file) into `$CAPIL_FIXTURES/firebase-tools` (default
--- build/fixtures) and returns that directory. The install goes into a
--- temp dir renamed into place when complete, so a half install is never
--- used; the directory is reused while the lock file is unchanged. Raises
--- when node or npm is missing or npm fails (with npm's last lines).
---@return string dir holding node_modules/firebase-tools
function M.firebase_tools()
  if installed then return installed end
  local lock = assert(fs.read(SRC .. "/package-lock.json"))
  local stamp = hash.digest("sha256", assert(fs.read(SRC .. "/package.json")) .. "\0" .. lock)
  local dir = fixtures_dir() .. "/firebase-tools"
  local function current(d)
    return fs.read(d .. "/.capil-stamp") == stamp
      and fs.exists(d .. "/node_modules/firebase-tools/lib/emulator/storage/index.js")
  end
  if current(dir) then
    installed = dir
    return dir
  end
  need_node("gcs.firebase_tools", 20, true) -- firebase-tools 15 needs 20
  assert(fs.mkdir(fixtures_dir()))
  local tmp = ("%s.tmp%d"):format(dir, proc.getpid())
  fs.remove(tmp, { recursive = true })
  assert(fs.mkdir(tmp))
  assert(fs.copy(SRC .. "/package.json", tmp .. "/package.json"))
  assert(fs.copy(SRC .. "/package-lock.json", tmp .. "/package-lock.json"))
  io.stderr:write(("  [gcs] npm install firebase-tools@%s into %s (once; one to four minutes)\n")
    :format(M.FIREBASE_TOOLS_VERSION, dir))
  local tail = {}
  local r, err = proc.run({
    argv = { "npm", "install", "--no-audit", "--no-fund", "--no-update-notifier" },
    cwd = tmp, timeout = 900,
    on_line = function(_, line)
      tail[#tail + 1] = line
      if #tail > 30 then table.remove(tail, 1) end
    end,
  })
  if not r or r.code ~= 0 or not fs.exists(tmp .. "/node_modules/firebase-tools/lib/emulator/storage/index.js") then
    fs.remove(tmp, { recursive = true })
    error(("gcs.firebase_tools: npm install of firebase-tools@%s in %s failed: %s\n%s"):format(
      M.FIREBASE_TOOLS_VERSION, tmp, err or (r.code ~= 0 and "exit " .. r.code or "no firebase-tools installed"),
      table.concat(tail, "\n")), 2)
  end
  assert(fs.write(tmp .. "/.capil-stamp", stamp))
  -- an outdated install moves aside first; a concurrent one may have won
  local old = ("%s.old%d"):format(dir, proc.getpid())
  if fs.exists(dir) and not current(dir) then assert(fs.rename(dir, old)) end
  if not fs.rename(tmp, dir) then
    fs.remove(tmp, { recursive = true })
    if not current(dir) then error("gcs.firebase_tools: could not move the install into " .. dir, 2) end
  end
  fs.remove(old, { recursive = true })
  installed = dir
  return dir
end

-- Starts `node script ...` as a peer with its own scratch dir; `handle.stop()`
-- ends it (SIGTERM, SIGKILL after 3 s) and removes the dir.
local function start_node(name, args, dir, env_add)
  local port = peer.free_port()
  local argv = { "node", SRC .. "/" .. args[1], tostring(port) }
  for i = 2, #args do argv[#argv + 1] = args[i] end
  local ok, handle = pcall(peer.start, {
    name = name, argv = argv, port = port, log = dir .. "/" .. name .. ".log", dir = dir, env_add = env_add, timeout = 30,
  })
  if not ok then
    fs.remove(dir, { recursive = true })
    error(handle, 3)
  end
  handle.dir = dir
  handle.endpoint = "http://127.0.0.1:" .. port
  return handle
end

---@class gcs.Emulator
---@field endpoint string "http://127.0.0.1:PORT" (STORAGE_EMULATOR_HOST form: use as the API base)
---@field port integer
---@field pid integer
---@field log string  the emulator's output
---@field dir string  scratch dir; TMPDIR of the emulator, so its blobs live here
---@field stop fun()  SIGTERM, SIGKILL after 3 s; removes dir

--- Starts the firebase-tools Storage emulator (installing firebase-tools on
--- first use). Buckets exist implicitly; any Authorization header is accepted.
---@return gcs.Emulator
function M.emulator()
  local tools = M.firebase_tools()
  need_node("gcs.emulator", 20)
  local dir = peer.dir("gcs-emulator")
  assert(fs.mkdir(dir .. "/tmp"))
  return start_node("firebase-storage", { "emulator.js", tools }, dir, { TMPDIR = dir .. "/tmp" })
end

-- A request to the fake's /_fake/ endpoints; raises on failure (test setup).
local function control(endpoint, method, path, body)
  local resp, err = http.request({
    method = method, url = endpoint .. path, body = body and json.encode(body), retries = 0,
    headers = body and { ["Content-Type"] = "application/json" } or nil,
  })
  if not resp then error(("gcs.fake %s %s: %s"):format(method, path, err), 3) end
  return assert(json.decode(resp.body))
end

local FAKE_OPTS = { token = true, expires_in = true, forbidden_buckets = true, jwt_public_key = true }

---@class gcs.Fake
---@field endpoint string  "http://127.0.0.1:PORT": API base, session URIs and public GET /BUCKET/NAME
---@field token_uri string endpoint .. "/token"
---@field port integer
---@field pid integer
---@field log string
---@field dir string       where the objects' bytes live; removed by stop()
---@field stop fun()
---@field inject fun(t: table)  see spec/support/gcs/fake.js: {action="drop", at_bytes=N|{N,...}, target?},
---                             {action="status", status=503, count?, retry_after?, target?}, {action="expire_tokens"}
---@field stats fun(): table    {bytes_received, resent_bytes, requests, objects, assertions, refreshes, tokens_issued, uploads, pending}
---@field reset fun()           objects, sessions, stats and injections (issued tokens stay valid)

--- Starts our fake GCS. Options: `token` (API calls need `Authorization:
--- Bearer` with a token from `token_uri`; session URIs and public GETs never
--- do), `expires_in` (token lifetime in seconds, default 3600, enforced),
--- `forbidden_buckets` (names answering 403), `jwt_public_key` (a PEM path:
--- JWT assertions must then be signed by its private key).
--- inject/stats/reset may be called with `.` or `:`.
---@param opts? {token?: boolean, expires_in?: number, forbidden_buckets?: string[], jwt_public_key?: string}
---@return gcs.Fake
function M.fake(opts)
  opts = require("capil.util.opts").check(opts, FAKE_OPTS, "gcs.fake")
  need_node("gcs.fake", 18)
  local o = {
    token = opts.token and true or false, expires_in = opts.expires_in,
    forbidden_buckets = json.array(opts.forbidden_buckets or {}), jwt_public_key = opts.jwt_public_key,
  }
  local dir = peer.dir("gcs-fake")
  local h = start_node("gcs-fake", { "fake.js", dir, json.encode(o) }, dir)
  h.token_uri = h.endpoint .. "/token"
  -- accept both h.f(x) and h:f(x)
  local function arg(a, b)
    if a == h then return b end
    return a
  end
  function h.inject(a, b)
    local t = arg(a, b)
    if type(t) ~= "table" or not t.action then error("gcs.fake inject: expected {action = ...}", 2) end
    local body = {}
    for k, v in pairs(t) do body[k] = v end
    if type(body.at_bytes) == "table" then body.at_bytes = json.array(body.at_bytes) end
    control(h.endpoint, "POST", "/_fake/inject", body)
  end
  function h.stats()
    return control(h.endpoint, "GET", "/_fake/stats")
  end
  function h.reset()
    control(h.endpoint, "POST", "/_fake/reset", {})
  end
  return h
end

--- Writes a service-account key file `dir/service-account.json` for
--- `token_uri`, with a fresh 2048-bit RSA key made by openssl (PKCS#8 PEM, as
--- Google issues them), and its public key `dir/service-account.pub.pem`.
---@param dir string
---@param token_uri string
---@return {path: string, public_pem: string, client_email: string, private_key_id: string, project_id: string}
function M.service_account_key(dir, token_uri)
  local key, pub = dir .. "/service-account.key.pem", dir .. "/service-account.pub.pem"
  run({ "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key },
    "gcs.service_account_key")
  run({ "openssl", "pkey", "-in", key, "-pubout", "-out", pub }, "gcs.service_account_key")
  local pem = assert(fs.read(key))
  fs.remove(key)
  local email = "capil-test@demo-test.iam.gserviceaccount.com"
  local id = hash.hex_encode(hash.random(20))
  local path = dir .. "/service-account.json"
  assert(fs.write(path, json.encode({
    type = "service_account",
    project_id = "demo-test",
    private_key_id = id,
    private_key = pem,
    client_email = email,
    client_id = "100000000000000000001",
    auth_uri = "https://accounts.google.com/o/oauth2/auth",
    token_uri = token_uri,
    auth_provider_x509_cert_url = "https://www.googleapis.com/oauth2/v1/certs",
    client_x509_cert_url = "https://www.googleapis.com/robot/v1/metadata/x509/" .. email:gsub("@", "%%40"),
    universe_domain = "googleapis.com",
  }, { indent = true, sort_keys = true }), { mode = 384 }))
  return { path = path, public_pem = pub, client_email = email, private_key_id = id, project_id = "demo-test" }
end

--- Writes an authorized-user ADC file `dir/authorized-user.json` (what
--- `gcloud auth application-default login` leaves), with `token_uri` added
--- when given; returns its path and its fields.
---@param dir string
---@param token_uri? string
---@return string path
---@return table fields
function M.authorized_user_file(dir, token_uri)
  local fields = {
    type = "authorized_user",
    client_id = "764086051850-test.apps.googleusercontent.com",
    client_secret = "d-FL95Q19q7MQmFpd7hHD0Ty",
    refresh_token = "1//0test-" .. hash.hex_encode(hash.random(16)),
    token_uri = token_uri,
  }
  local path = dir .. "/authorized-user.json"
  assert(fs.write(path, json.encode(fields, { indent = true, sort_keys = true }), { mode = 384 }))
  return path, fields
end

--- Splits a JWT: header and claims (decoded), the signed input and the raw
--- signature. Raises on a malformed JWT.
---@param jwt string
---@return table header, table claims, string signing_input, string signature
function M.decode_jwt(jwt)
  local h, c, s = jwt:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
  if not h then error("gcs.decode_jwt: not three base64url parts", 2) end
  local header = assert(json.decode(assert(hash.base64url_decode(h))))
  local claims = assert(json.decode(assert(hash.base64url_decode(c))))
  return header, claims, h .. "." .. c, assert(hash.base64url_decode(s))
end

--- Checks a JWT's RS256 signature with `openssl dgst -verify` against a PEM
--- public key (independently of capil's own crypto); returns header and
--- claims, or raises when the signature does not verify.
---@param jwt string
---@param public_pem string path
---@return table header, table claims
function M.verify_jwt(jwt, public_pem)
  local header, claims, input, sig = M.decode_jwt(jwt)
  local dir = peer.dir("jwt")
  assert(fs.write(dir .. "/input", input))
  assert(fs.write(dir .. "/sig", sig))
  local r = proc.run({ argv = {
    "openssl", "dgst", "-sha256", "-verify", public_pem, "-signature", dir .. "/sig", dir .. "/input",
  } })
  fs.remove(dir, { recursive = true })
  if not r or r.code ~= 0 or not r.stdout:match("Verified OK") then
    error("gcs.verify_jwt: the RS256 signature does not verify: " .. (r and (r.stdout .. r.stderr) or "openssl failed"), 2)
  end
  return header, claims
end

return M
