--- capil.sys.http — HTTP(S) for recipes and backends: `capil.core.http` plus
--- defaults, retries with backoff, HTTP errors as failures, and logging that
--- keeps credentials out of messages.
---
--- Downloads (`out_file`) stream into `<out_file>.part`, which is renamed onto
--- `out_file` only when the body is complete, the status is 2xx and the
--- `sha256` (if given) matches: `out_file` never holds partial or unverified
--- data. The `.part` rule: a failed attempt keeps the `.part` so the next
--- attempt continues it with a Range request (206 appends; a 200 restarts from
--- zero; 416 drops it); when the call finally fails the `.part` is removed,
--- unless `resume = true` was asked for, in which case it stays for a later
--- `resume = true` call. A `.part` that fails its digest is always removed.
--- Without `resume`, a `.part` left by someone else is discarded first, and
--- a cleanup removes it while the request runs: Ctrl-C unwinds the Lua code
--- that would otherwise remove it once the C transfer has stopped.
---
--- Retries: connection failures (ECONNREFUSED, ECONNRESET, ETIMEDOUT, EDNS)
--- and HTTP 429/500/502/503/504 are retried `retries` times (default 3) with
--- exponential backoff and jitter, waiting what Retry-After asks on 429/503
--- (at most `max_wait` seconds). Other 4xx are never retried. POST and PATCH
--- (not idempotent) are retried only when the server cannot have acted on
--- them: connection refused, DNS failure, 429 or 503; `idempotent = true`
--- overrides. Each retry is logged at warn level, with the URL redacted.
---
--- Sessions: `http.session()` keeps connections alive and holds the cookies
--- servers set (a SOAP login's session cookie is sent back on later calls);
--- pass it as `session =`. `cookies = {name = value}` adds a Cookie header to
--- one request. `fresh_connect = true` sends a request on a new connection,
--- closed after the answer (the session's cookies still go and come back):
--- libcurl silently resends a request when a kept-alive connection turns out
--- dead, which for a state-changing call (CreateVM_Task, ImportVApp, a chunk
--- of an upload) may repeat it.
---
--- TLS: verified against the system CAs or `ca_file`; `insecure = true` skips
--- it; `pin_sha256` pins the public key (curl's form), `cert_sha256` the
--- certificate's SHA-256 fingerprint (vSphere's thumbprint), which then
--- replaces the CA and name checks.
---
--- `body_offset`/`body_length` send a slice of `body_file` (a disk inside an
--- OVA, streamed without extracting it).
---
--- `tick = function(bytes) end` is called every `tick_interval` seconds
--- (default 2) while a transfer runs, between polls on this thread, so it may
--- make requests of its own (an NFC lease's progress); returning `false` or
--- `nil, message`, or raising, stops the transfer with code ETICK.
local core = require("capil.core.http")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")
local fs = require("capil.core.fs")
local cleanup = require("capil.sys.cleanup")
local optcheck = require("capil.util.opts").check

local M = {}

--- `s` percent-encoded for a URL: everything but RFC 3986's unreserved
--- characters, and "/" too unless `keep_slash` (a path of several segments).
---@param s string
---@param keep_slash? boolean
---@return string
function M.escape(s, keep_slash)
  local pattern = keep_slash and "[^%w%-%._~/]" or "[^%w%-%._~]"
  return (s:gsub(pattern, function(c) return ("%%%02X"):format(c:byte()) end))
end

--- Defaults for options the caller leaves out.
M.defaults = {
  retries = 3,          -- extra attempts after the first
  backoff = 1,          -- seconds before the first retry, doubled each time
  max_backoff = 30,     -- ceiling of the exponential backoff
  max_wait = 120,       -- ceiling of a Retry-After wait
  connect_timeout = 30,
  stall_timeout = 120,  -- seconds without a byte moving
}

--- A session: keep-alive connections and a cookie store (see `session:cookies()`,
--- `session:clear_cookies()`, `session:close()`).
---@return userdata
M.session = core.session

--- `url` fit for logs: no userinfo, credential-like query values masked.
---@param url string
---@return string
M.redact_url = core.redact_url

local CORE_OPTS = {
  method = true, url = true, headers = true, body = true, body_file = true,
  out_file = true, timeout = true, connect_timeout = true, stall_timeout = true,
  ca_file = true, insecure = true, pin_sha256 = true, cookies = true,
  progress = true, resume = true, sha256 = true, follow = true, cert_sha256 = true, tick = true,
  tick_interval = true, body_offset = true, body_length = true, fresh_connect = true,
}
local LUA_OPTS = {
  retries = true, backoff = true, max_backoff = true, max_wait = true,
  ok_status = true, idempotent = true, session = true,
}
local ALL_OPTS = {}
for k in pairs(CORE_OPTS) do ALL_OPTS[k] = true end
for k in pairs(LUA_OPTS) do ALL_OPTS[k] = true end

local REASONS = {
  [200] = "OK", [201] = "Created", [204] = "No Content", [206] = "Partial Content",
  [301] = "Moved Permanently", [302] = "Found", [304] = "Not Modified",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed", [409] = "Conflict",
  [412] = "Precondition Failed", [413] = "Content Too Large",
  [416] = "Range Not Satisfiable", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

-- Failures worth another attempt; "safe" ones happened before the server
-- could act on the request, so even a POST may be repeated.
local RETRY_CODES = {
  ECONNREFUSED = "safe", EDNS = "safe", EHOSTUNREACH = "safe", ENETUNREACH = "safe",
  ECONNRESET = true, ETIMEDOUT = true,
}
local RETRY_STATUS = { [429] = "safe", [503] = "safe", [500] = true, [502] = true, [504] = true }
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true }
local SECRET_HEADERS = {
  authorization = true, cookie = true, ["proxy-authorization"] = true,
  ["x-auth-token"] = true, ["vmware-api-session-id"] = true, ["x-api-key"] = true,
}

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7,
                 Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Seconds since the epoch for an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
local function http_date(s)
  local d, mon, y, hh, mm, ss = s:match("^%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT$")
  local m = MONTHS[mon or ""]
  if not m then return nil end
  y = tonumber(y) - (m <= 2 and 1 or 0)
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
  return days * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

-- The wait a Retry-After header asks for, or nil.
local function retry_after(resp)
  local v = resp and resp.headers and resp.headers["retry-after"]
  if not v then return nil end
  local n = tonumber(v)
  if not n then
    local t = http_date(v)
    n = t and t - os.time()
  end
  return n and math.max(0, n)
end

-- Registers what in the request must never be printed.
local function register_secrets(opts)
  local userinfo = opts.url:match("^%a[%w+.-]*://([^/?#]*)@")
  local password = userinfo and userinfo:match(":(.*)$")
  if password then log.secret(password) end
  for k, v in pairs(opts.headers or {}) do
    if type(k) == "string" and SECRET_HEADERS[k:lower()] and type(v) == "string" then
      log.secret(v)
      log.secret(v:match("^%a+%s+(.+)$")) -- the token of "Bearer <token>"
    end
  end
  for _, v in pairs(opts.cookies or {}) do log.secret(v) end
end

-- Is the response what the caller wants back (rather than an HTTP error)?
local function accepted(resp, opts)
  local ok = opts.ok_status
  if ok == true then return true end
  if type(ok) == "table" then
    for _, s in ipairs(ok) do
      if s == resp.status then return true end
    end
  end
  if opts.out_file then return resp.file ~= nil end
  return resp.status < 400
end

---@class capil.sys.http.Request
---@field url string
---@field method? string          default GET, or POST with a body
---@field headers? table<string,string>  a value of "" removes a header curl adds
---@field body? string
---@field body_file? string       streamed from disk, Content-Length set
---@field out_file? string        stream the body to this file (see the .part rule)
---@field resume? boolean         continue and keep `<out_file>.part`
---@field sha256? string          expected hex digest of the download (or upload)
---@field timeout? number         total seconds (default none)
---@field connect_timeout? number seconds (default 30)
---@field stall_timeout? number   seconds without a byte moving (default 120)
---@field ca_file? string         PEM bundle to verify the server with
---@field insecure? boolean       skip certificate verification
---@field pin_sha256? string      base64 SHA-256 of the server's public key
---@field cookies? table<string,string>  sent as one Cookie header
---@field progress? userdata      a `capil.sys.log.progress` handle, driven from C
---@field follow? boolean         follow redirects (default true, at most 10)
---@field retries? integer        extra attempts (default 3)
---@field backoff? number         seconds before the first retry, doubled each time (default 1)
---@field max_backoff? number     ceiling of the backoff (default 30)
---@field max_wait? number        ceiling of a Retry-After wait (default 120)
---@field ok_status? integer[]|boolean  statuses returned as responses, not failures; true: all
---@field idempotent? boolean     may the request be repeated after it was sent
---@field session? userdata       a `http.session()` to send it on
---@field fresh_connect? boolean  a new connection, closed after the answer: libcurl silently
---                               resends a request when a kept-alive connection turns out dead,
---                               which would repeat a non-idempotent call (CreateVM_Task,
---                               ImportVApp); set it for state-changing requests

---@class capil.sys.http.Response
---@field status integer
---@field reason string           the status line's phrase
---@field headers table<string,string>  lowercase names; repeats joined with ", " (Set-Cookie: "\n")
---@field body? string            the body, unless it went to out_file
---@field file? string            out_file, once complete and verified
---@field digest? string          SHA-256 hex of what was sent (requests with a body) or received
---@field size integer            bytes sent, or received (the whole file when resumed)
---@field resumed integer         bytes kept from an earlier .part
---@field url string              the final URL after redirects

--- Sends a request, retrying transient failures; see the module comment.
--- By default a status >= 400 (with `out_file`: anything but 2xx) is a
--- failure with code "HTTP_<status>" and the response as fourth value.
---@param opts capil.sys.http.Request
---@return capil.sys.http.Response|nil response
---@return string? err
---@return string? code
---@return capil.sys.http.Response? response the response of an HTTP error
function M.request(opts)
  if type(opts) ~= "table" then error("http.request: options must be a table", 2) end
  optcheck(opts, ALL_OPTS, "http.request")
  local call = {}
  for k, v in pairs(opts) do
    if CORE_OPTS[k] then call[k] = v end
  end
  if type(opts.url) ~= "string" then error("http.request: option 'url' is required", 2) end
  local d = M.defaults
  call.connect_timeout = call.connect_timeout or d.connect_timeout
  call.stall_timeout = call.stall_timeout or d.stall_timeout
  local retries = opts.retries or d.retries
  local method = (opts.method or ((opts.body or opts.body_file) and "POST" or "GET")):upper()
  call.method = opts.method and method
  local idempotent = opts.idempotent
  if idempotent == nil then idempotent = IDEMPOTENT[method] or false end
  register_secrets(opts)
  local shown = core.redact_url(opts.url)

  local part = opts.out_file and opts.out_file .. ".part"
  local guard
  if part then
    if not opts.resume then
      fs.remove(part)
      guard = cleanup.push("partial download " .. part, function() fs.remove(part) end)
    end
    call.resume = true -- keep the .part between attempts
  end
  local function give_up(err, code, resp)
    if guard then guard:run() end
    return nil, err, code, resp
  end

  local send = opts.session
    and function() return opts.session:request(call) end
    or function() return core.request(call) end
  local attempt, restarted = 0, false
  while true do
    log.debug("http: %s %s", method, shown)
    local resp, err, code = send()
    local kind
    if resp then
      if accepted(resp, opts) then
        if guard then guard:cancel() end
        return resp
      end
      local reason = resp.reason ~= "" and resp.reason or REASONS[resp.status] or ""
      err = ("http.request: %s %s: HTTP %d%s"):format(method, shown, resp.status,
                                                       reason ~= "" and " " .. reason or "")
      code = "HTTP_" .. resp.status
      kind = RETRY_STATUS[resp.status]
      if resp.status == 416 and part and not restarted then
        -- the .part could not be continued and is gone: start over, once
        restarted = true
        kind = "now"
      end
    else
      kind = RETRY_CODES[code]
    end
    if kind ~= "now" then
      if not kind or (kind ~= "safe" and not idempotent) or attempt >= retries then
        return give_up(err, code, resp)
      end
      attempt = attempt + 1
      local wait = math.min(opts.max_backoff or d.max_backoff,
                            (opts.backoff or d.backoff) * 2 ^ (attempt - 1))
      wait = wait * (0.5 + 0.5 * math.random()) -- jitter: callers do not retry in step
      local asked = resp and (resp.status == 429 or resp.status == 503) and retry_after(resp)
      if asked then wait = math.min(asked, opts.max_wait or d.max_wait) end
      log.with({ url = shown }).warn("%s; retry %d/%d in %.1f s", err, attempt, retries, wait)
      local ok, serr, scode = runtime.sleep(wait)
      if not ok then return give_up(serr, scode) end
    end
  end
end

return M
