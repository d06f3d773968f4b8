--- capil.publish.gcs — Google Cloud Storage through its JSON API, natively (no Google
--- SDK): where image-builder's image-upload.py puts images, credentials from a
--- service-account key, an authorized-user file or the GCE metadata server,
--- and uploads, listings and downloads that survive dropped connections.
---
--- Paths follow image-builder (hack/image-upload.py): bucket `capv-images`,
--- `release/<version>/` for versions matching `^v?\d+\.\d+\.\d+(-\d+)?$`,
--- else `ci/<version>/`; objects `<build>-kube-<version>.ova` and `.ova.sha256`.
---
--- Credentials (`gcs.client`), first found wins: `key_file`, then the
--- `KEY_FILE` and `GOOGLE_APPLICATION_CREDENTIALS` variables (a service-account
--- key: RS256 JWT bearer flow to its `token_uri`; or an authorized-user file:
--- refresh-token grant), then the GCE metadata server (`GCE_METADATA_HOST` or
--- 169.254.169.254, 1 s connect timeout; probed only when nothing else is set,
--- and with an endpoint override only when `GCE_METADATA_HOST` is set), else
--- anonymous (emulators, public reads). Tokens are reused until shortly before
--- they expire (60 s, or half their life when shorter); a 401 fetches a new
--- one once. Private keys, client secrets, refresh and access tokens, JWT
--- assertions and upload session ids are registered with `log.secret` before
--- any request.
---
--- Uploads of files use resumable sessions in chunks (a multiple of 256 KiB):
--- each chunk is a slice of the file sent with `Content-Range`; the server's
--- 308 and `Range` tell how much it has. After a dropped connection, a 5xx, a
--- 429 or a 401 the client waits (exponential backoff, Retry-After honoured),
--- asks the session how much it holds (`Content-Range: bytes */TOTAL`) and
--- continues from there, so no byte the server acknowledged is sent again
--- (each chunk goes on a fresh connection, `fresh_connect`: on a kept-alive
--- one libcurl would silently send a chunk again after the connection died). The finished
--- object's md5Hash and crc32c must equal the local file's, which a child
--- capil hashes on another core while big files upload.
---
--- Failures return `nil, msg, code`. Messages read `gcs: <action>
--- gs://<bucket>/<object>: HTTP <status>: <GCS's message>`; codes: "ENOENT"
--- (404), "HTTP_<status>", the transport's ("ECONNREFUSED", "ECONNRESET",
--- "ETIMEDOUT", ...), "EKEY" (unusable key file), "EAUTH" (no token could be
--- had), "EDIGEST" (content differs from what was sent or expected).
local http = require("capil.sys.http")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")
local optcheck = require("capil.util.opts").check

local M = {}

--- Where image-builder uploads (gs://capv-images).
M.DEFAULT_BUCKET = "capv-images"
--- The public endpoint.
M.DEFAULT_ENDPOINT = "https://storage.googleapis.com"
--- Default token endpoint of authorized-user files and keys without `token_uri`.
M.DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
--- OAuth2 scope asked for by the JWT bearer flow.
M.SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
--- Resumable chunks are multiples of this (GCS's granularity).
M.CHUNK_QUANTUM = 256 * 1024
--- Default chunk size of `client:upload`.
M.CHUNK_SIZE = 8 * 1024 * 1024

-- ====================================================================
-- Paths and names
-- ====================================================================

--- Is `version` a release version (image-builder's `^v?\d+\.\d+\.\d+(-\d+)?$`)?
---@param version string
---@return boolean
function M.is_release(version)
  if type(version) ~= "string" then error("gcs.is_release: version must be a string", 2) end
  local v = version:gsub("^v", "", 1)
  return v:match("^%d+%.%d+%.%d+$") ~= nil or v:match("^%d+%.%d+%.%d+%-%d+$") ~= nil
end

--- The folder of a version's images: "release/<version>/" or "ci/<version>/".
---@param version string
---@return string
function M.path_for(version)
  if type(version) ~= "string" or version == "" then
    error("gcs.path_for: version must be a non-empty string", 2)
  end
  return (M.is_release(version) and "release/" or "ci/") .. version .. "/"
end

--- The OVA's object name without folder: "<build_name>-kube-<version>.ova"
--- (its checksum object is this name .. ".sha256").
---@param build_name string
---@param version string
---@return string
function M.object_name(build_name, version)
  if type(build_name) ~= "string" or build_name == "" or type(version) ~= "string" or version == "" then
    error("gcs.object_name: build_name and version must be non-empty strings", 2)
  end
  return build_name .. "-kube-" .. version .. ".ova"
end

local escape = http.escape

local function trim_slash(url)
  return (url:gsub("/+$", ""))
end

--- The object's public download URL: "https://storage.googleapis.com/<bucket>/<object>",
--- or "<endpoint>/<bucket>/<object>" with an endpoint override.
---@param bucket string
---@param object string
---@param endpoint? string
---@return string
function M.public_url(bucket, object, endpoint)
  if type(bucket) ~= "string" or type(object) ~= "string" then
    error("gcs.public_url: bucket and object must be strings", 2)
  end
  return trim_slash(endpoint or M.DEFAULT_ENDPOINT) .. "/" .. escape(bucket) .. "/" .. escape(object, true)
end

-- "gs://bucket/name" for messages.
local function gs(bucket, name)
  return "gs://" .. bucket .. (name and ("/" .. name) or "/")
end

-- ====================================================================
-- Credentials
-- ====================================================================

local function form_encode(fields)
  local parts = {}
  for _, kv in ipairs(fields) do parts[#parts + 1] = escape(kv[1]) .. "=" .. escape(kv[2]) end
  return table.concat(parts, "&")
end

-- Registers a key-file value as a secret, also as it appears in the JSON
-- text (newlines escaped), so neither form can reach a log line.
local function secret(v)
  if type(v) == "string" and v ~= "" then
    log.secret(v)
    if v:find("\n", 1, true) then log.secret((v:gsub("\n", "\\n"))) end
  end
  return v
end

--- The signed RS256 JWT assertion of the bearer flow for a service-account
--- key (`client_email`, `private_key`, `token_uri`, optional `private_key_id`),
--- issued at `iat` (seconds since the epoch, default now).
---@param key {client_email: string, private_key: string, token_uri?: string, private_key_id?: string}
---@param iat? integer
---@return string|nil jwt, string? err, string? code
function M.jwt(key, iat)
  iat = iat or os.time()
  local header = { alg = "RS256", typ = "JWT", kid = key.private_key_id }
  local claims = {
    iss = key.client_email, scope = M.SCOPE, aud = key.token_uri or M.DEFAULT_TOKEN_URI,
    iat = iat, exp = iat + 3600,
  }
  local input = hash.base64url_encode(json.encode(header, { sort_keys = true })) .. "."
    .. hash.base64url_encode(json.encode(claims, { sort_keys = true }))
  local sig, err, code = hash.sign_rs256(key.private_key, input)
  if not sig then return nil, err, code end
  return input .. "." .. hash.base64url_encode(sig)
end

-- Reads and checks a credentials file; returns the auth table or nil, msg, "EKEY".
-- Nothing of the file's content goes into a message.
local function load_key_file(path, source)
  local function bad(what) return nil, ("gcs: %s: %s"):format(path, what), "EKEY" end
  local text, rerr = fs.read_file(path, { max = 1024 * 1024 })
  if not text then
    return bad("cannot read the key file (" .. (tostring(rerr):match(":%s*([^:]*)$") or "?") .. ")")
  end
  local key, perr = json.decode(text)
  if key == nil then
    -- the parser's reason may quote the text near the error: keep only where
    local line, col = tostring(perr):match("line (%d+), column (%d+)")
    return bad(("not a JSON key file (syntax error at line %s, column %s)"):format(line or "?", col or "?"))
  end
  if type(key) ~= "table" or json.is_array(key) then return bad("not a JSON key file (no object at the top)") end
  for _, field in ipairs({ "private_key", "client_secret", "refresh_token" }) do secret(key[field]) end
  local function need(fields)
    for _, f in ipairs(fields) do
      if type(key[f]) ~= "string" or key[f] == "" then
        return ("%s key file without '%s'"):format(key.type, f)
      end
    end
  end
  if key.type == "service_account" then
    local missing = need({ "client_email", "private_key" })
    if missing then return bad(missing) end
    if key.token_uri ~= nil and (type(key.token_uri) ~= "string" or not key.token_uri:match("^https?://")) then
      return bad("service_account key file with a token_uri that is not an http(s) URL")
    end
    local ok, serr = hash.sign_rs256(key.private_key, "capil")
    if not ok then
      return bad("private_key is not a usable RSA private key (" .. tostring(serr):gsub("^.-: ", "") .. ")")
    end
    return {
      kind = "service_account", source = source, file = path, email = key.client_email,
      key = {
        client_email = key.client_email, private_key = key.private_key,
        private_key_id = type(key.private_key_id) == "string" and key.private_key_id or nil,
        token_uri = key.token_uri or M.DEFAULT_TOKEN_URI,
      },
      token_uri = key.token_uri or M.DEFAULT_TOKEN_URI,
    }
  elseif key.type == "authorized_user" then
    local missing = need({ "client_id", "client_secret", "refresh_token" })
    if missing then return bad(missing) end
    local uri = key.token_uri
    if uri ~= nil and (type(uri) ~= "string" or not uri:match("^https?://")) then
      return bad("authorized_user file with a token_uri that is not an http(s) URL")
    end
    return {
      kind = "authorized_user", source = source, file = path,
      client_id = key.client_id, client_secret = key.client_secret, refresh_token = key.refresh_token,
      token_uri = uri or M.DEFAULT_TOKEN_URI,
    }
  elseif key.type == nil then
    return bad("key file without a 'type' (expected service_account or authorized_user)")
  end
  return bad(("key type '%s' is not supported (service_account or authorized_user)"):format(tostring(key.type)))
end

-- ====================================================================
-- The client
-- ====================================================================

---@class capil.publish.gcs.Client
---@field endpoint string        API root, no trailing slash
---@field auth table             {kind = "service_account"|"authorized_user"|"metadata"|"anonymous", source=, file=, email=}
local Client = {}
Client.__index = Client

local CLIENT_OPTS = {
  endpoint = true, key_file = true, anonymous = true, getenv = true, retries = true,
  ca_file = true, backoff = true,
}

--- A client. `endpoint` overrides the API root (else `STORAGE_EMULATOR_HOST`,
--- else https://storage.googleapis.com); see the module comment for the order
--- credentials are looked for in. `retries` (default 3) applies to API calls,
--- `backoff` (seconds, default 1) to their first retry.
---@param opts? {endpoint?: string, key_file?: string, anonymous?: boolean, getenv?: fun(name: string): string?, retries?: integer, ca_file?: string, backoff?: number}
---@return capil.publish.gcs.Client|nil client, string? err, string? code
function M.client(opts)
  opts = optcheck(opts, CLIENT_OPTS, "gcs.client")
  local getenv = opts.getenv or os.getenv
  local function env(name)
    local v = getenv(name)
    if v ~= nil and v ~= "" then return v end
  end
  local endpoint = opts.endpoint
  local emulator = env("STORAGE_EMULATOR_HOST")
  if not endpoint and emulator then
    endpoint = emulator:match("^%a[%w+.-]*://") and emulator or ("http://" .. emulator)
  end
  local overridden = endpoint ~= nil
  endpoint = trim_slash(endpoint or M.DEFAULT_ENDPOINT)
  if not endpoint:match("^https?://[^/]") then
    error(("gcs.client: endpoint '%s' is not an http(s) URL"):format(endpoint), 2)
  end

  local auth
  if opts.anonymous then
    auth = { kind = "anonymous", source = "anonymous" }
  else
    local file, source = opts.key_file, "key_file"
    if not file then file, source = env("KEY_FILE"), "KEY_FILE" end
    if not file then file, source = env("GOOGLE_APPLICATION_CREDENTIALS"), "GOOGLE_APPLICATION_CREDENTIALS" end
    if file then
      local err, code
      auth, err, code = load_key_file(file, source)
      if not auth then return nil, err, code end
    else
      local mhost = env("GCE_METADATA_HOST")
      if mhost or not overridden then
        auth = { kind = "metadata", source = "metadata", host = mhost or "169.254.169.254", probe = true }
      else
        auth = { kind = "anonymous", source = "anonymous" }
      end
    end
  end
  local self = setmetatable({
    endpoint = endpoint, auth = auth, retries = opts.retries or 3, backoff = opts.backoff or 1,
    ca_file = opts.ca_file, session = http.session(), token_fetches = 0,
  }, Client)
  return self
end

-- The backoff before the `n`th retry: exponential with jitter, capped.
local function backoff(base, n, resp)
  local wait = math.min(32, base * 2 ^ (n - 1)) * (0.5 + 0.5 * math.random())
  local ra = resp and resp.headers and tonumber(resp.headers["retry-after"])
  if ra and (resp.status == 429 or resp.status == 503) then wait = math.min(math.max(ra, 0), 60) end
  return wait
end

-- GCS's error message of a failed response (JSON API or OAuth2 form).
local function error_detail(resp)
  if not resp then return nil end
  local body = type(resp.body) == "string" and resp.body or ""
  local doc = json.decode(body)
  if type(doc) == "table" then
    if type(doc.error) == "table" and type(doc.error.message) == "string" then return doc.error.message end
    if type(doc.error) == "string" then
      local d = doc.error_description
      return type(d) == "string" and (doc.error .. ": " .. d) or doc.error
    end
  end
  body = body:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if body ~= "" and #body <= 200 and not body:find("<", 1, true) then return body end
  return nil
end

local REASONS = {
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [408] = "Request Timeout", [409] = "Conflict", [410] = "Gone", [412] = "Precondition Failed",
  [413] = "Content Too Large", [416] = "Range Not Satisfiable", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

-- The failure triple for an action on gs://bucket/name: an HTTP error
-- response names status and GCS's message; a transport error keeps its own.
function Client:_failure(action, bucket, name, resp, err, code)
  local where = ("gcs: %s %s"):format(action, gs(bucket, name))
  if not resp then
    return nil, ("%s: %s"):format(where, tostring(err):gsub("^http%.request: ", "")), code
  end
  local status = resp.status
  local msg = ("%s: HTTP %d %s"):format(where, status, REASONS[status] or "")
  msg = msg:gsub(" $", "")
  local detail = error_detail(resp)
  if detail then msg = msg .. ": " .. detail end
  if status == 403 or status == 401 then
    local a = self.auth
    if a.kind == "anonymous" then
      msg = msg .. "; no credentials were used: give a key file (--key-file, KEY_FILE or GOOGLE_APPLICATION_CREDENTIALS)"
    else
      local who = a.email and ("the account " .. a.email) or
        (a.file and ("the credentials in " .. a.file) or "the metadata server's service account")
      msg = msg .. ("; check that %s may %s objects in bucket %s (roles/storage.objectAdmin)")
        :format(who, action:match("^list") and "list" or
          ((action:match("^read") or action:match("^stat") or action:match("^download")) and "read" or "write"),
          bucket)
    end
  end
  return nil, msg, status == 404 and "ENOENT" or ("HTTP_" .. status)
end

-- Completes an http.request option table with the client's TLS settings.
function Client:_req(t)
  t.session = t.session == nil and self.session or t.session or nil
  t.ca_file = self.ca_file
  return t
end

-- The token in a token endpoint's answer, and its lifetime; or nil, msg, code.
local function token_answer(resp, err, code, eresp, uri, what)
  if not resp then
    if eresp then
      local detail = error_detail(eresp)
      return nil, ("gcs: token from %s for %s: HTTP %d%s"):format(http.redact_url(uri), what, eresp.status,
        detail and (": " .. detail) or ""), "EAUTH"
    end
    return nil, ("gcs: token from %s for %s: %s"):format(http.redact_url(uri), what,
      tostring(err):gsub("^http%.request: ", "")), code
  end
  local doc = json.decode(resp.body or "")
  local token = type(doc) == "table" and doc.access_token
  if type(token) ~= "string" or token == "" then
    return nil, ("gcs: token from %s for %s: the answer has no access_token"):format(http.redact_url(uri), what), "EAUTH"
  end
  log.secret(token)
  local life = tonumber(doc.expires_in) or 3600
  return token, life
end

-- Asks `uri` for a token with a POST form; returns token, lifetime or nil, msg, code.
function Client:_token_request(uri, fields, what)
  local resp, err, code, eresp = http.request(self:_req({
    method = "POST", url = uri, body = form_encode(fields), retries = self.retries, backoff = self.backoff,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded", Expect = "" },
    idempotent = true, session = false,
  }))
  return token_answer(resp, err, code, eresp, uri, what)
end

-- A fresh token from the configured source, or nil (anonymous).
function Client:_fetch_token()
  local a = self.auth
  if a.kind == "service_account" then
    local assertion, err = M.jwt(a.key)
    if not assertion then return nil, ("gcs: %s: cannot sign the JWT: %s"):format(a.file, err), "EKEY" end
    log.secret(assertion)
    self.token_fetches = self.token_fetches + 1
    return self:_token_request(a.token_uri, {
      { "grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer" }, { "assertion", assertion },
    }, a.email)
  elseif a.kind == "authorized_user" then
    self.token_fetches = self.token_fetches + 1
    return self:_token_request(a.token_uri, {
      { "grant_type", "refresh_token" }, { "client_id", a.client_id },
      { "client_secret", a.client_secret }, { "refresh_token", a.refresh_token },
    }, "the authorized user of " .. a.file)
  elseif a.kind == "metadata" then
    local url = ("http://%s/computeMetadata/v1/instance/service-accounts/default/token"):format(a.host)
    local resp, err, code, eresp = http.request(self:_req({
      url = url, headers = { ["Metadata-Flavor"] = "Google" }, session = false,
      connect_timeout = 1, timeout = a.probe and 5 or 30, retries = a.probe and 0 or self.retries,
      backoff = self.backoff,
    }))
    if a.probe then
      a.probe = nil
      local r = resp or eresp
      if not r or r.headers["metadata-flavor"] ~= "Google" then
        -- no GCE metadata server (nothing there, or another cloud's): go on
        -- without credentials
        log.debug("gcs: no GCE metadata server at %s (%s); continuing without credentials", a.host,
          r and "it does not answer Metadata-Flavor: Google" or err)
        self.auth = { kind = "anonymous", source = "anonymous" }
        return nil
      end
    end
    self.token_fetches = self.token_fetches + 1
    return token_answer(resp, err, code, eresp, url, "the metadata server's service account")
  end
  return nil
end

--- The current access token (fetched or refreshed as needed), or nil when
--- the client is anonymous; nil, msg, code when none could be had.
---@return string|nil token, string? err, string? code
function Client:token()
  if self.auth.kind == "anonymous" then return nil end
  local now = runtime.now()
  if self._token and now < self._token_until then return self._token end
  self._token = nil
  local token, life_or_err, code = self:_fetch_token()
  if not token then
    if life_or_err then return nil, life_or_err, code end
    return nil -- the metadata probe found no server
  end
  local life = life_or_err
  self._token = token
  self._token_until = now + life - math.min(60, life / 2)
  return token
end

--- Forgets the cached token (the next call fetches a new one).
function Client:invalidate_token()
  self._token = nil
end

-- Headers of an API request: the caller's plus Authorization.
function Client:_headers(extra)
  local h = {}
  for k, v in pairs(extra or {}) do h[k] = v end
  local token, err, code = self:token()
  if err then return nil, err, code end
  if token then h.Authorization = "Bearer " .. token end
  return h
end

-- One API request with the client's credentials; a 401 renews the token
-- once. `t` is an http.request table without headers' Authorization.
function Client:_call(action, bucket, name, t)
  local renewed = false
  while true do
    local headers, herr, hcode = self:_headers(t.headers)
    if not headers then return nil, herr, hcode end
    local req = {}
    for k, v in pairs(t) do req[k] = v end
    req.headers = headers
    req.retries = req.retries or self.retries
    req.backoff = req.backoff or self.backoff
    local resp, err, code, eresp = http.request(self:_req(req))
    if resp then return resp end
    if eresp and eresp.status == 401 and not renewed and self.auth.kind ~= "anonymous" then
      renewed = true
      self:invalidate_token()
      log.debug("gcs: %s %s: token refused (401), fetching a new one", action, gs(bucket, name))
    else
      return self:_failure(action, bucket, name, eresp, err, code)
    end
  end
end

function Client:_object_url(bucket, name)
  return ("%s/storage/v1/b/%s/o/%s"):format(self.endpoint, escape(bucket), escape(name))
end

local function decode(action, bucket, name, resp)
  local doc = json.decode(resp.body or "")
  if type(doc) ~= "table" then
    return nil, ("gcs: %s %s: the server's answer is not a JSON object"):format(action, gs(bucket, name)), "EPROTO"
  end
  return doc
end

local function check_names(fn, bucket, name)
  if type(bucket) ~= "string" or bucket == "" then error(("gcs.%s: bucket must be a non-empty string"):format(fn), 3) end
  if name ~= false and (type(name) ~= "string" or name == "") then
    error(("gcs.%s: object name must be a non-empty string"):format(fn), 3)
  end
end

--- The object's resource (size, md5Hash, crc32c, metadata, updated, ...).
---@param bucket string
---@param name string
---@return table|nil object, string? err, string? code
function Client:stat(bucket, name)
  check_names("stat", bucket, name)
  local resp, err, code = self:_call("stat", bucket, name, { url = self:_object_url(bucket, name) })
  if not resp then return nil, err, code end
  return decode("stat", bucket, name, resp)
end

--- The object's content as a string (for small objects such as `.sha256`).
---@param bucket string
---@param name string
---@return string|nil content, string? err, string? code
function Client:read(bucket, name)
  check_names("read", bucket, name)
  local resp, err, code = self:_call("read", bucket, name, { url = self:_object_url(bucket, name) .. "?alt=media" })
  if not resp then return nil, err, code end
  return resp.body
end

--- Every object under `prefix` (all pages). With `opts.delimiter` the second
--- value lists the "folders" (prefixes) below.
---@param bucket string
---@param prefix? string
---@param opts? {delimiter?: string, page_size?: integer}
---@return table[]|nil objects, string[]|string prefixes_or_err, string? code
function Client:list(bucket, prefix, opts)
  check_names("list", bucket, false)
  opts = opts or {}
  local items, prefixes, page = {}, {}, nil
  repeat
    local q = { "maxResults=" .. (opts.page_size or 1000) }
    if prefix and prefix ~= "" then q[#q + 1] = "prefix=" .. escape(prefix) end
    if opts.delimiter then q[#q + 1] = "delimiter=" .. escape(opts.delimiter) end
    if page then q[#q + 1] = "pageToken=" .. escape(page) end
    local url = ("%s/storage/v1/b/%s/o?%s"):format(self.endpoint, escape(bucket), table.concat(q, "&"))
    local resp, err, code = self:_call("list", bucket, prefix or "", { url = url })
    if not resp then return nil, err, code end
    local doc, derr, dcode = decode("list", bucket, prefix or "", resp)
    if not doc then return nil, derr, dcode end
    for _, it in ipairs(type(doc.items) == "table" and doc.items or {}) do items[#items + 1] = it end
    for _, p in ipairs(type(doc.prefixes) == "table" and doc.prefixes or {}) do prefixes[#prefixes + 1] = p end
    page = type(doc.nextPageToken) == "string" and doc.nextPageToken ~= "" and doc.nextPageToken or nil
  until not page
  return items, prefixes
end

--- Deletes the object.
---@param bucket string
---@param name string
---@return true|nil ok, string? err, string? code
function Client:delete(bucket, name)
  check_names("delete", bucket, name)
  local resp, err, code = self:_call("delete", bucket, name, { method = "DELETE", url = self:_object_url(bucket, name) })
  if not resp then return nil, err, code end
  return true
end

local function check_metadata(fn, metadata)
  if metadata == nil then return end
  if type(metadata) ~= "table" then error(("gcs.%s: option 'metadata' must be a table"):format(fn), 3) end
  for k, v in pairs(metadata) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error(("gcs.%s: metadata keys and values must be strings"):format(fn), 3)
    end
  end
end

-- The object resource sent when creating an object.
local function resource(name, opts)
  local r = { name = name, contentType = opts.content_type or "application/octet-stream" }
  if opts.metadata and next(opts.metadata) then r.metadata = opts.metadata end
  return json.encode(r, { sort_keys = true })
end

local PUT_SMALL_OPTS = { content_type = true, metadata = true }

--- Creates the object from a string in one multipart request.
---@param bucket string
---@param name string
---@param data string
---@param opts? {content_type?: string, metadata?: table<string,string>}
---@return table|nil object, string? err, string? code
function Client:put_small(bucket, name, data, opts)
  check_names("put_small", bucket, name)
  if type(data) ~= "string" then error("gcs.put_small: data must be a string", 2) end
  opts = optcheck(opts, PUT_SMALL_OPTS, "gcs.put_small")
  check_metadata("put_small", opts.metadata)
  local boundary
  repeat boundary = "capil-" .. hash.hex_encode(hash.random(12)) until not data:find(boundary, 1, true)
  local body = table.concat({
    "--", boundary, "\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n", resource(name, opts),
    "\r\n--", boundary, "\r\nContent-Type: ", opts.content_type or "application/octet-stream", "\r\n\r\n",
    data, "\r\n--", boundary, "--\r\n",
  })
  local url = ("%s/upload/storage/v1/b/%s/o?uploadType=multipart&name=%s"):format(
    self.endpoint, escape(bucket), escape(name))
  local resp, err, code = self:_call("upload", bucket, name, {
    method = "POST", url = url, body = body, idempotent = true,
    headers = { ["Content-Type"] = "multipart/related; boundary=" .. boundary, Expect = "" },
  })
  if not resp then return nil, err, code end
  local obj, derr, dcode = decode("upload", bucket, name, resp)
  if not obj then return nil, derr, dcode end
  local md5 = hash.md5_base64(data)
  if obj.md5Hash and obj.md5Hash ~= md5 then
    return nil, ("gcs: upload %s: the stored object's md5Hash %s differs from the data's %s")
      :format(gs(bucket, name), tostring(obj.md5Hash), md5), "EDIGEST"
  end
  return obj
end

-- ====================================================================
-- Resumable upload
-- ====================================================================

-- The offset after the bytes a 308 says the session holds ("Range: bytes=0-N").
local function persisted(resp)
  local r = resp.headers and resp.headers["range"]
  if not r then return 0 end
  local last = r:match("^bytes=0%-(%d+)$")
  return last and tonumber(last) + 1 or nil
end

--- The byte ranges a resumable upload of `size` bytes sends from `offset`
--- in chunks of `chunk_size`: a list of {first, last} (inclusive) as used in
--- Content-Range. Raises unless `chunk_size` is a positive multiple of 256 KiB.
---@param size integer
---@param chunk_size integer
---@param offset? integer
---@return integer[][]
function M.chunks(size, chunk_size, offset)
  if math.type(chunk_size) ~= "integer" or chunk_size <= 0 or chunk_size % M.CHUNK_QUANTUM ~= 0 then
    error(("gcs: chunk_size must be a positive multiple of 256 KiB (262144), got %s"):format(tostring(chunk_size)), 2)
  end
  local list = {}
  offset = offset or 0
  while offset < size do
    local len = math.min(chunk_size, size - offset)
    list[#list + 1] = { offset, offset + len - 1 }
    offset = offset + len
  end
  return list
end

-- Files at least this big are hashed by a child process while they upload.
M.BACKGROUND_HASH_SIZE = 64 * 1024 * 1024

local HASHER = [[
local h, err = require("capil.sys.hash").file(arg[1], { "md5", "crc32c" }, { format = "base64" })
if not h then io.stderr:write(err, "\n") os.exit(1) end
io.write(h.md5, " ", h.crc32c, "\n")
]]

-- The file's md5 and crc32c (base64), hashed by a child capil on another
-- core while the upload runs: returns a function that waits for and returns
-- them (nil, msg, code on failure) and a function that stops the child.
local function background_hashes(path)
  local proc = require("capil.sys.proc")
  local exe = runtime.exepath()
  local p = exe and proc.spawn({ argv = { exe, "-e", HASHER, path }, stdin = "null", stdout = "pipe",
                                 stderr = "pipe" })
  if not p then return nil end
  local function result()
    local out, errs = {}, {}
    while true do
      local stream, chunk, code = p:read({ timeout = 600 })
      if stream == "stdout" then out[#out + 1] = chunk
      elseif stream == "stderr" then errs[#errs + 1] = chunk
      elseif chunk == nil then break
      else p:close(0) return nil, chunk, code end
    end
    local status = p:wait()
    p:close()
    local md5, crc = table.concat(out):match("^(%S+) (%S+)\n$")
    if not (status and status.code == 0 and md5) then
      return nil, ("gcs: hashing %s: %s"):format(path, (table.concat(errs):gsub("%s+$", ""))), "EIO"
    end
    return { md5 = md5, crc32c = crc }
  end
  return result, function() p:close(0) end
end

local UPLOAD_OPTS = {
  chunk_size = true, metadata = true, content_type = true, progress = true, retries = true,
  backoff = true, md5 = true, crc32c = true,
}
local TRANSIENT = { [408] = true, [429] = true, [500] = true, [502] = true, [503] = true, [504] = true, [401] = true }

-- Starts a resumable session; returns its URI.
function Client:_start_session(bucket, name, size, opts, retries)
  local url = ("%s/upload/storage/v1/b/%s/o?uploadType=resumable&name=%s"):format(
    self.endpoint, escape(bucket), escape(name))
  local resp, err, code = self:_call("upload", bucket, name, {
    method = "POST", url = url, body = resource(name, opts), idempotent = true, retries = retries,
    backoff = opts.backoff,
    headers = {
      ["Content-Type"] = "application/json; charset=UTF-8",
      ["X-Upload-Content-Type"] = opts.content_type or "application/octet-stream",
      ["X-Upload-Content-Length"] = tostring(size),
    },
  })
  if not resp then return nil, err, code end
  local loc = resp.headers and resp.headers["location"]
  if not loc then
    return nil, ("gcs: upload %s: the server started no resumable session (no Location)"):format(gs(bucket, name)),
      "EPROTO"
  end
  if loc:match("^/") then loc = self.endpoint:match("^(%a+://[^/]+)") .. loc end
  local id = loc:match("[?&]upload_id=([^&]+)")
  if id then log.secret(id) end
  return loc
end

--- Uploads a file through a resumable session in chunks, resuming after
--- dropped connections and retrying 5xx/429 (see the module comment), then
--- checks the object's md5Hash and crc32c against the file's. `md5`/`crc32c`
--- (base64) skip hashing the file when the caller knows them. `progress` is a
--- `log.progress` handle, or true for one of its own. Returns the object and
--- {bytes_sent =, attempts =, resumes =}.
---@param bucket string
---@param name string
---@param path string
---@param opts? {chunk_size?: integer, metadata?: table<string,string>, content_type?: string, progress?: any, retries?: integer, backoff?: number, md5?: string, crc32c?: string}
---@return table|nil object, table|string info_or_err, string? code
function Client:upload(bucket, name, path, opts)
  check_names("upload", bucket, name)
  if type(path) ~= "string" then error("gcs.upload: path must be a string", 2) end
  opts = optcheck(opts, UPLOAD_OPTS, "gcs.upload")
  check_metadata("upload", opts.metadata)
  local chunk = opts.chunk_size or M.CHUNK_SIZE
  if math.type(chunk) ~= "integer" or chunk <= 0 or chunk % M.CHUNK_QUANTUM ~= 0 then
    error(("gcs.upload: chunk_size must be a positive multiple of 256 KiB (262144), got %s"):format(tostring(chunk)), 2)
  end
  local retries = opts.retries or 8
  local base = opts.backoff or self.backoff
  local where = "gcs: upload " .. gs(bucket, name)

  local st, serr, scode = fs.stat(path)
  if not st then return nil, ("%s: %s"):format(where, serr), scode end
  if st.type ~= "file" then return nil, ("%s: %s is not a regular file"):format(where, path), "EINVAL" end
  local size = st.size
  -- the file's md5 and crc32c: given, hashed alongside the upload, or now
  local sums = { md5 = opts.md5, crc32c = opts.crc32c }
  local hashed, stop_hashing
  if not (sums.md5 and sums.crc32c) then
    if size >= M.BACKGROUND_HASH_SIZE then hashed, stop_hashing = background_hashes(path) end
    if not hashed then
      local h, herr, hcode = hash.file(path, { "md5", "crc32c" }, { format = "base64" })
      if not h then return nil, ("%s: %s"):format(where, herr), hcode end
      sums = h
    end
  end

  local progress, own_progress = opts.progress, false
  if progress == true then
    progress, own_progress = log.progress({ label = "upload " .. name, total = size }), true
  end
  local function finish(...)
    if own_progress then progress:close() end
    if stop_hashing then stop_hashing() end
    return ...
  end

  local uri, err, code = self:_start_session(bucket, name, size, opts, retries)
  if not uri then return finish(nil, err, code) end
  local info = { bytes_sent = 0, attempts = 0, resumes = 0 }
  local offset, failures, query, obj = 0, 0, false, nil
  while not obj do
    local resp, rerr, rcode
    local len = math.min(chunk, size - offset)
    local headers, herr, hcode = self:_headers({ Expect = "", ["Content-Type"] = "" })
    if not headers then return finish(nil, herr, hcode) end
    if query or size == 0 then
      headers["Content-Range"] = "bytes */" .. size
      resp, rerr, rcode = http.request(self:_req({
        method = "PUT", url = uri, body = "", headers = headers, retries = 0, ok_status = true,
      }))
    else
      headers["Content-Range"] = ("bytes %d-%d/%d"):format(offset, offset + len - 1, size)
      info.attempts = info.attempts + 1
      local at = offset
      resp, rerr, rcode = http.request(self:_req({
        -- a fresh connection each time: on a kept-alive one, libcurl silently
        -- sends the whole chunk again when the connection dies before an
        -- answer, which would repeat bytes the server may already hold
        method = "PUT", url = uri, body_file = path, body_offset = offset, body_length = len,
        headers = headers, retries = 0, ok_status = true, fresh_connect = true,
        tick = progress and function(sent) progress:update(at + sent, size) return true end or nil,
        tick_interval = 0.5,
      }))
      -- what went out counts whether or not the server kept it
      info.bytes_sent = info.bytes_sent + (resp and resp.size or 0)
    end
    local status = resp and resp.status
    if status == 200 or status == 201 then
      local o, derr, dcode = decode("upload", bucket, name, resp)
      if not o then return finish(nil, derr, dcode) end
      if not query and size > 0 and offset + len < size then
        -- (the firebase-tools emulator does this: it has no chunked sessions)
        return finish(nil, ("%s: the server finished the object after %d of %d bytes: it does not take uploads in"
          .. " chunks; use a chunk size of at least the file's size"):format(where, offset + len, size), "EPROTO")
      end
      obj = o
    elseif status == 308 then
      local now = persisted(resp)
      if not now or now > size then
        return finish(nil, ("%s: the session reports an invalid Range '%s'"):format(where,
          tostring(resp.headers.range)), "EPROTO")
      end
      local advanced = now > offset
      if query then info.resumes = info.resumes + 1 end
      if not query and not advanced then
        -- a chunk the server kept nothing of: count it like a failure
        failures = failures + 1
        if failures > retries then
          return finish(nil, ("%s: the server keeps no data at offset %d after %d attempts"):format(
            where, offset, failures), "EPROTO")
        end
        runtime.sleep(backoff(base, failures))
      end
      if advanced then failures = 0 end
      offset, query = now, false
      if progress then progress:update(offset, size) end
      if offset >= size then
        -- all there but not finalized: ask again, a bounded number of times
        failures = failures + 1
        if failures > retries then
          return finish(nil, ("%s: the session holds all %d bytes but does not finish the object"):format(where, size),
            "EPROTO")
        end
        runtime.sleep(backoff(base, failures))
        query = true
      end
    elseif status == 404 or status == 410 then
      -- the session is gone (expired): start again from the beginning
      failures = failures + 1
      if failures > retries then return finish(self:_failure("upload", bucket, name, resp)) end
      log.warn("%s: the upload session expired (HTTP %d); starting a new one", where, status)
      uri, err, code = self:_start_session(bucket, name, size, opts, retries)
      if not uri then return finish(nil, err, code) end
      offset, query = 0, false
    elseif not resp or TRANSIENT[status] then
      failures = failures + 1
      local why
      if resp then
        why = ("HTTP %d %s"):format(status, REASONS[status] or ""):gsub(" $", "")
        local detail = error_detail(resp)
        if detail then why = why .. ": " .. detail end
      else
        why = tostring(rerr):gsub("^http%.request: PUT %S+: ", "")
      end
      if failures > retries then
        if resp then
          local _, m, c = self:_failure("upload", bucket, name, resp)
          return finish(nil, ("%s (gave up after %d attempts)"):format(m, failures), c)
        end
        return finish(nil, ("%s: %s (gave up after %d attempts)"):format(where, why, failures), rcode)
      end
      if status == 401 then self:invalidate_token() end
      local wait = backoff(base, failures, resp)
      log.warn("%s: %s at offset %d; asking the session what it holds in %.1f s (retry %d/%d)",
        where, why, offset, wait, failures, retries)
      local ok, werr, wcode = runtime.sleep(wait)
      if not ok then return finish(nil, werr, wcode) end
      query = true
    else
      return finish(self:_failure("upload", bucket, name, resp))
    end
  end
  if progress then progress:update(size, size) end

  -- the object must be what was sent
  if hashed then
    local h, herr = hashed()
    stop_hashing = nil
    if not h then
      log.debug("%s; hashing here instead", herr)
      local hcode
      h, herr, hcode = hash.file(path, { "md5", "crc32c" }, { format = "base64" })
      if not h then return finish(nil, ("%s: %s"):format(where, herr), hcode) end
    end
    sums = h
  end
  local got_size = tonumber(obj.size)
  if (obj.md5Hash == nil and obj.crc32c == nil) or got_size == nil then
    local o, oerr, ocode = self:stat(bucket, name)
    if not o then return finish(nil, oerr, ocode) end
    obj, got_size = o, tonumber(o.size)
  end
  local function mismatch(what, got, want)
    return finish(nil, ("%s: the stored object's %s %s differs from the local file's %s (%s)")
      :format(where, what, tostring(got), tostring(want), path), "EDIGEST")
  end
  if got_size ~= size then return mismatch("size", got_size, size) end
  if obj.md5Hash == nil and obj.crc32c == nil then
    return finish(nil, ("%s: the server reports neither md5Hash nor crc32c; the upload cannot be verified")
      :format(where), "EDIGEST")
  end
  if obj.md5Hash ~= nil and obj.md5Hash ~= sums.md5 then return mismatch("md5Hash", obj.md5Hash, sums.md5) end
  if obj.crc32c ~= nil and obj.crc32c ~= sums.crc32c then return mismatch("crc32c", obj.crc32c, sums.crc32c) end
  return finish(obj, info)
end

-- ====================================================================
-- Download
-- ====================================================================

local DOWNLOAD_OPTS = { progress = true, sha256 = true, retries = true }

--- Downloads the object to `out_file` (alt=media) with resume: an earlier
--- `<out_file>.part` is continued with a Range request. The content is
--- verified against `sha256` (hex), else the object's `metadata.sha256`,
--- else its crc32c; `out_file` never holds unverified data. Returns the
--- object's resource and the http response.
---@param bucket string
---@param name string
---@param out_file string
---@param opts? {progress?: any, sha256?: string, retries?: integer}
---@return table|nil object, table|string resp_or_err, string? code
function Client:download(bucket, name, out_file, opts)
  check_names("download", bucket, name)
  if type(out_file) ~= "string" or out_file == "" then error("gcs.download: out_file must be a string", 2) end
  opts = optcheck(opts, DOWNLOAD_OPTS, "gcs.download")
  local obj, err, code = self:stat(bucket, name)
  if not obj then return nil, err, code end
  local sha256 = opts.sha256
  if not sha256 and type(obj.metadata) == "table" and type(obj.metadata.sha256) == "string"
    and obj.metadata.sha256:match("^%x+$") and #obj.metadata.sha256 == 64 then
    sha256 = obj.metadata.sha256
  end
  if not sha256 and type(obj.crc32c) ~= "string" then
    return nil, ("gcs: download %s: no sha256 given and the object has none, nor a crc32c: cannot verify")
      :format(gs(bucket, name)), "EDIGEST"
  end
  local progress, own = opts.progress, false
  if progress == true then
    progress, own = log.progress({ label = "download " .. name, total = tonumber(obj.size) or 0 }), true
  end
  -- without a sha256 the file lands under a staging name until its crc32c is checked
  local target = sha256 and out_file or (out_file .. ".unverified")
  local url = self:_object_url(bucket, name) .. "?alt=media"
  if obj.generation then url = url .. "&generation=" .. escape(tostring(obj.generation)) end
  local resp, derr, dcode = self:_call("download", bucket, name, {
    url = url, out_file = target, resume = true, sha256 = sha256, progress = progress,
    retries = opts.retries or self.retries,
  })
  if own then progress:close() end
  if not resp then
    if dcode == "EDIGEST" then
      derr = ("gcs: download %s: %s: the content does not match the expected SHA-256 %s"):format(
        gs(bucket, name), out_file, sha256)
    end
    return nil, derr, dcode
  end
  if not sha256 then
    local crc, herr, hcode = hash.file(target, "crc32c", { format = "base64" })
    if not crc then fs.remove(target) return nil, herr, hcode end
    if crc ~= obj.crc32c then
      fs.remove(target)
      return nil, ("gcs: download %s: %s: crc32c %s differs from the object's %s"):format(
        gs(bucket, name), out_file, crc, obj.crc32c), "EDIGEST"
    end
    local ok, rerr, rcode = fs.rename(target, out_file)
    if not ok then return nil, rerr, rcode end
    resp.file = out_file
  end
  return obj, resp
end

--- Closes the client's kept-alive connections (also on `<close>`).
function Client:close()
  if self.session then self.session:close() end
end
Client.__close = Client.close

--- The public URL of an object as served by this client's endpoint.
---@param bucket string
---@param object string
---@return string
function Client:public_url(bucket, object)
  return M.public_url(bucket, object, self.endpoint)
end

return M
