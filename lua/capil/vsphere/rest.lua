--- capil.vsphere.rest — a vSphere Automation REST client (the vAPI the
--- content library lives on), beside the SOAP one (capil.vsphere.vim25).
---
--- Session: created with a POST carrying HTTP basic auth; the server answers
--- a session id that every later call sends in the `vmware-api-session-id`
--- header; `client:logout()` deletes it (also a registered cleanup, so Ctrl-C
--- logs out). Two session endpoints exist: `/api/session` (vSphere 7.0 U2
--- and later) and `/rest/com/vmware/cis/session` (6.5 to 8.0). With
--- `api = "auto"` (the default) the client tries `/api/session` first and
--- falls back to `/rest` when the server answers 404 (a server before 7.0 U2
--- has no `/api`): one extra request on old servers, none on new ones.
--- `api = "api"` or `"rest"` forces one. `client.flavor` says which served.
--- With auto, a server found without `/api` is remembered for the process
--- (by base URL), so the later sessions of one run (preflight, finalize,
--- publish) go to `/rest` at once.
--- Either way the session id is valid on both trees. The API calls go
--- through one table of operations (`M.OPS`, `client:op(name, args)`) that
--- has each call's `/rest` form and its `/api` form; the client uses the
--- form of its `flavor`, so a 7.0 U2+ server (where `/rest` is deprecated)
--- is driven on `/api` only, an older one on `/rest` only.
---
--- TLS: the SOAP client's rules (`insecure`, `ca_file`, `cert_sha256` =
--- vSphere's thumbprint, `pin_sha256`). The password and the session id are
--- registered with capil.sys.log as secrets: they print as `****`. Failures
--- return `nil, message, code`, the message naming the method and URL path
--- and carrying the server's own message (a vAPI error's default_message).
local http = require("capil.sys.http")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local cleanup = require("capil.sys.cleanup")
local hash = require("capil.sys.hash")
local optcheck = require("capil.util.opts").check

local M = {}

--- The session endpoints, by flavor.
M.SESSION_PATHS = { api = "/api/session", rest = "/rest/com/vmware/cis/session" }

local HEADER = "vmware-api-session-id"

local CONNECT_OPTS = {
  server = true, username = true, password = true, insecure = true, ca_file = true, cert_sha256 = true,
  pin_sha256 = true, api = true, timeout = true, retries = true,
}

--- "https://host:port" of a server given as "host[:port]" or a URL (GOVC_URL's
--- "https://vc/sdk"); nil and a message when it cannot be read.
---@param server string
---@return string|nil base, string? err
function M.base_url(server)
  local sch, auth = server:match("^(%a[%w+.-]*)://([^/?#]*)")
  if sch then
    sch = sch:lower()
    if sch ~= "http" and sch ~= "https" then return nil, ("unsupported URL scheme %q in %s"):format(sch, server) end
    if auth:find("@", 1, true) then return nil, "put credentials in username/password, not the server URL" end
  else
    sch, auth = "https", server
  end
  local h, port
  if auth:sub(1, 1) == "[" then
    h, port = auth:match("^(%[[^%]]+%])(.*)$")
  else
    h, port = auth:match("^([^:/]+)(.*)$")
  end
  if not h or h == "" then return nil, ("no host in server %q"):format(server) end
  if port ~= "" and not port:match("^:%d+$") then return nil, ("bad port in server %q"):format(server) end
  return sch .. "://" .. h .. port
end

-- The server's own words in an error body: a /rest vAPI error
-- ({type, value = {messages}}), an /api one ({error_type, messages}), or
-- the first line of a text body.
local function server_message(body)
  if not body or body == "" then return nil end
  local v = json.decode(body)
  if type(v) ~= "table" then
    local line = body:match("^%s*([^\r\n]+)")
    return line and line:sub(1, 200)
  end
  local kind = v.type or v.error_type
  local inner = type(v.value) == "table" and v.value or v
  local msgs = {}
  for _, m in ipairs(type(inner.messages) == "table" and inner.messages or {}) do
    if type(m) == "table" and type(m.default_message) == "string" then msgs[#msgs + 1] = m.default_message end
  end
  local text = table.concat(msgs, "; ")
  if kind and text ~= "" then return ("%s (%s)"):format(text, tostring(kind)) end
  if kind then return tostring(kind) end
  return text ~= "" and text or nil
end
M.server_message = server_message

local Client = {}
Client.__index = Client

--- TLS and session options for a capil.sys.http request to this server
--- (merged into `t`): what uploads use.
---@param t table
---@return table
function Client:http_opts(t)
  t.insecure, t.ca_file, t.cert_sha256, t.pin_sha256 = self.insecure, self.ca_file, self.cert_sha256, self.pin_sha256
  t.session = t.session or self.http
  t.headers = t.headers or {}
  if self.id then t.headers[HEADER] = self.id end
  return t
end

--- One REST call. `path` is the URL path and query ("/rest/com/vmware/content/library?~action=find");
--- `body` a table sent as JSON. Returns the decoded answer (a /rest answer's
--- "value" unwrapped; true when the body is empty or has no value), or nil,
--- "rest: METHOD path: HTTP n reason: server message", "HTTP_n".
---@param method string
---@param path string
---@param body? table
---@param opts? {ok_status?: integer[], timeout?: number, idempotent?: boolean}
---@return any|nil value, string? err, string? code, table? response
function Client:call(method, path, body, opts)
  opts = opts or {}
  if self.closed then return nil, ("rest: %s %s: the session is closed"):format(method, path), "ECLOSED" end
  local headers = { Accept = "application/json" }
  if body then headers["Content-Type"] = "application/json" end
  local resp, err, code, r = http.request(self:http_opts({
    method = method, url = self.base .. path, headers = headers,
    body = body and json.encode(body) or (method == "POST" and "" or nil),
    timeout = opts.timeout or self.timeout, retries = self.retries, idempotent = opts.idempotent,
    ok_status = opts.ok_status,
  }))
  if not resp then
    local why = r and server_message(r.body)
    local status = r and ("HTTP %d%s"):format(r.status, r.reason ~= "" and " " .. r.reason or "")
    return nil, ("rest: %s %s: %s%s"):format(method, path, status or (err:gsub("^http%.request: ", "")),
      why and ": " .. why or ""), code, r
  end
  if resp.body == nil or resp.body:match("^%s*$") then return true, nil, nil, resp end
  local v, jerr = json.decode(resp.body)
  if v == nil then
    return nil, ("rest: %s %s: HTTP %d with a body that is not JSON: %s"):format(method, path, resp.status, jerr),
      "EPROTO", resp
  end
  if path:sub(1, 6) == "/rest/" and type(v) == "table" and getmetatable(v) == json.object_mt then
    if v.value == nil then return true, nil, nil, resp end
    v = v.value
  end
  return v, nil, nil, resp
end

--- The Automation API operations capil calls, by name, in both forms; the
--- one place where `/rest` and `/api` differ (VMware's API reference,
--- https://developer.broadcom.com/xapis/vsphere-automation-api/latest/ ,
--- and the vCenter 7.0 U2 OpenAPI description its pages are made from):
---
--- * paths: `/rest/com/vmware/content/library/item/id:X` is
---   `/api/content/library/item/X`, `?~action=find` is `?action=find`
---   (`{id}` in a template is the operation's one path parameter,
---   `{action}` an update session action);
--- * bodies: `/rest` wraps the operation's one structure in a named field
---   (`wrap`: `{spec = ...}`, `{create_spec = ...}`, `{update_spec = ...}`,
---   `{file_spec = ...}`); `/api` takes the structure itself. Operations
---   with several body parameters (the OVF service's `target`,
---   `deployment_spec`, `source`, `create_spec`) have the same fields on both;
--- * client tokens (`token`): a `client_token` field of the `/rest` body,
---   the `client_token` query parameter of `/api`;
--- * maps (`maps`, dotted paths in the body, given as Lua tables name →
---   value): `/rest` encodes a map as a list of `{key, value}`, `/api` as a
---   JSON object (the OVF deploy's `deployment_spec.network_mappings`);
--- * answers: `/rest` wraps them in `{value = ...}` (Client:call unwraps
---   it), `/api` answers the value itself: a created object's id as a bare
---   JSON string (HTTP 201), nothing for updates, deletes and session
---   actions (HTTP 204);
--- * errors: `{type, value = {messages}}` on `/rest`, `{error_type,
---   messages}` on `/api` (server_message reads both).
---
--- Doc pages (under .../vsphere-automation-api/latest/content/api/ and
--- .../latest/vcenter/api/): content/library__action=find/post,
--- content/local-library/post, content/local-library/library_id/delete,
--- content/library/item__action=find/post, content/library/item/post,
--- content/library/item/library_item_id/get|patch|delete,
--- content/library/item/library_item_id/file/get,
--- content/library/item/update-session/post,
--- content/library/item/update-session/update_session_id/get|delete,
--- content/library/item/update-session/update_session_id__action=complete/post
--- (and cancel), content/library/item/update-session/update_session_id/file/post
--- (the file add: POST on the session's file collection, HTTP 201 with the
--- file's info), vcenter/ovf/library-item/post,
--- vcenter/ovf/library-item/ovf_library_item_id__action=filter/post,
--- vcenter/ovf/library-item/ovf_library_item_id__action=deploy/post,
--- vcenter/vm-template/library-items/post.
M.OPS = {
  library_find = { method = "POST", wrap = "spec",
    rest = "/rest/com/vmware/content/library?~action=find", api = "/api/content/library?action=find" },
  library_create = { method = "POST", wrap = "create_spec", token = true,
    rest = "/rest/com/vmware/content/local-library", api = "/api/content/local-library" },
  library_delete = { method = "DELETE",
    rest = "/rest/com/vmware/content/local-library/id:{id}", api = "/api/content/local-library/{id}" },
  item_find = { method = "POST", wrap = "spec",
    rest = "/rest/com/vmware/content/library/item?~action=find", api = "/api/content/library/item?action=find" },
  item_get = { method = "GET",
    rest = "/rest/com/vmware/content/library/item/id:{id}", api = "/api/content/library/item/{id}" },
  item_create = { method = "POST", wrap = "create_spec", token = true,
    rest = "/rest/com/vmware/content/library/item", api = "/api/content/library/item" },
  item_update = { method = "PATCH", wrap = "update_spec",
    rest = "/rest/com/vmware/content/library/item/id:{id}", api = "/api/content/library/item/{id}" },
  item_delete = { method = "DELETE",
    rest = "/rest/com/vmware/content/library/item/id:{id}", api = "/api/content/library/item/{id}" },
  item_files = { method = "GET",
    rest = "/rest/com/vmware/content/library/item/file?library_item_id={id}",
    api = "/api/content/library/item/{id}/file" },
  session_create = { method = "POST", wrap = "create_spec", token = true,
    rest = "/rest/com/vmware/content/library/item/update-session",
    api = "/api/content/library/item/update-session" },
  session_get = { method = "GET",
    rest = "/rest/com/vmware/content/library/item/update-session/id:{id}",
    api = "/api/content/library/item/update-session/{id}" },
  session_action = { method = "POST",
    rest = "/rest/com/vmware/content/library/item/update-session/id:{id}?~action={action}",
    api = "/api/content/library/item/update-session/{id}?action={action}" },
  session_delete = { method = "DELETE",
    rest = "/rest/com/vmware/content/library/item/update-session/id:{id}",
    api = "/api/content/library/item/update-session/{id}" },
  session_file_add = { method = "POST", wrap = "file_spec",
    rest = "/rest/com/vmware/content/library/item/updatesession/file/id:{id}?~action=add",
    api = "/api/content/library/item/update-session/{id}/file" },
  ovf_create = { method = "POST", token = true,
    rest = "/rest/com/vmware/vcenter/ovf/library-item", api = "/api/vcenter/ovf/library-item" },
  ovf_filter = { method = "POST",
    rest = "/rest/com/vmware/vcenter/ovf/library-item/id:{id}?~action=filter",
    api = "/api/vcenter/ovf/library-item/{id}?action=filter" },
  ovf_deploy = { method = "POST", maps = { "deployment_spec.network_mappings" },
    rest = "/rest/com/vmware/vcenter/ovf/library-item/id:{id}?~action=deploy",
    api = "/api/vcenter/ovf/library-item/{id}?action=deploy" },
  vmtx_create = { method = "POST", wrap = "spec",
    rest = "/rest/vcenter/vm-template/library-items", api = "/api/vcenter/vm-template/library-items" },
}

-- A path parameter, escaped for a URL path or query.
local function escape(v)
  return http.escape(tostring(v))
end

-- `t` with the map at dotted `path` written in `flavor`'s form (a copy
-- along the path; the caller's tables are not changed).
local function with_map(t, path, flavor)
  local key, rest = path:match("^([^.]+)%.?(.*)$")
  if type(t) ~= "table" or t[key] == nil then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  if rest ~= "" then
    out[key] = with_map(t[key], rest, flavor)
  elseif flavor == "api" then
    local obj = {}
    for k, v in pairs(t[key]) do obj[k] = v end
    out[key] = json.object(obj)
  else
    local names = {}
    for k in pairs(t[key]) do names[#names + 1] = k end
    table.sort(names)
    local list = json.array({})
    for _, k in ipairs(names) do list[#list + 1] = { key = k, value = t[key][k] } end
    out[key] = list
  end
  return out
end

--- The method, path and body of operation `name` (see M.OPS) in `flavor`
--- ("rest" or "api"): `args.id` and `args.action` fill the path, `args.body`
--- is the operation's structure (maps as Lua tables), `args.token` a client
--- token. Raises on an unknown operation or a missing path parameter.
---@param flavor "rest"|"api"
---@param name string
---@param args? {id?: string, action?: string, body?: table, token?: string}
---@return string method, string path, table|nil body
function M.request(flavor, name, args)
  local op = M.OPS[name]
  if not op then error(("rest: unknown operation %q"):format(tostring(name)), 3) end
  args = args or {}
  local path = op[flavor == "api" and "api" or "rest"]:gsub("{(%w+)}", function(k)
    if args[k] == nil then error(("rest: operation %s needs %s"):format(name, k), 4) end
    return escape(args[k])
  end)
  local body = args.body
  for _, m in ipairs(op.maps or {}) do body = with_map(body, m, flavor) end
  if flavor == "api" then
    if op.token and args.token then
      path = path .. (path:find("?", 1, true) and "&" or "?") .. "client_token=" .. escape(args.token)
    end
  else
    if op.wrap and body ~= nil then body = { [op.wrap] = body } end
    if op.token and args.token then
      local b = { client_token = args.token }
      for k, v in pairs(body or {}) do b[k] = v end
      body = b
    end
  end
  return op.method, path, body
end

--- Calls operation `name` of M.OPS in this client's flavor (see M.request
--- for `args`); `opts` as Client:call's. Answers as Client:call does.
---@param name string
---@param args? {id?: string, action?: string, body?: table, token?: string}
---@param opts? {ok_status?: integer[], timeout?: number, idempotent?: boolean}
---@return any|nil value, string? err, string? code, table? response
function Client:op(name, args, opts)
  local method, path, body = M.request(self.flavor or "rest", name, args)
  return self:call(method, path, body, opts)
end

-- POST the session endpoint of `flavor` with basic auth.
function Client:_login(flavor)
  local path = M.SESSION_PATHS[flavor]
  local auth = "Basic " .. hash.base64_encode(self.username .. ":" .. self.password)
  log.secret(auth)
  local resp, err, code, r = http.request(self:http_opts({
    method = "POST", url = self.base .. path, body = "",
    headers = { Authorization = auth, Accept = "application/json", ["vmware-use-header-authn"] = "true" },
    timeout = self.timeout, retries = self.retries,
  }))
  if not resp then
    local why = r and server_message(r.body)
    if r and (r.status == 401 or r.status == 403) then
      why = (why and why .. "; " or "") .. ("check the username (%s) and password"):format(self.username)
    end
    local status = r and ("HTTP %d%s"):format(r.status, r.reason ~= "" and " " .. r.reason or "")
    return nil, ("rest: POST %s: %s%s"):format(path, status or (err:gsub("^http%.request: ", "")),
      why and ": " .. why or ""), code, r
  end
  local v = json.decode(resp.body or "")
  if type(v) == "table" then v = v.value end
  if type(v) ~= "string" or v == "" then
    return nil, ("rest: POST %s: HTTP %d without a session id"):format(path, resp.status), "EPROTO"
  end
  log.secret(v)
  self.id, self.flavor = v, flavor
  return true
end

--- Deletes the session (idempotent; failures are logged at debug level).
function Client:logout()
  if self.closed then return end
  if self.id then
    local ok, err = self:call("DELETE", M.SESSION_PATHS[self.flavor], nil, { timeout = 15 })
    if not ok then log.debug("%s", err) end
  end
  self.closed = true
  if self.cleanup_handle then self.cleanup_handle:cancel() end
  self.http:close()
end

---@class capil.vsphere.rest.ConnectOptions
---@field server string        "host[:port]" or a URL ("https://vc.example.com/sdk": only scheme, host and port count)
---@field username string
---@field password string
---@field insecure? boolean    skip TLS verification
---@field ca_file? string      PEM bundle to verify the server with
---@field cert_sha256? string  SHA-256 fingerprint of the server's certificate (vSphere thumbprint)
---@field pin_sha256? string   base64 SHA-256 of the server's public key
---@field api? "auto"|"api"|"rest"  which session endpoint (default auto: /api, then /rest on 404)
---@field timeout? number      seconds per call (default 60)
---@field retries? integer     retries of transient failures (default 2)

-- Base URLs that answered 404 on /api/session (auto: /rest from then on).
local no_api = {}

--- Opens a REST session; see the module comment for the endpoint choice.
---@param opts capil.vsphere.rest.ConnectOptions
---@return table|nil client, string? err, string? code
function M.connect(opts)
  if type(opts) ~= "table" then error("rest.connect: options must be a table", 2) end
  optcheck(opts, CONNECT_OPTS, "rest.connect")
  for _, k in ipairs({ "server", "username", "password" }) do
    if type(opts[k]) ~= "string" then error(("rest.connect: option '%s' must be a string"):format(k), 2) end
  end
  log.secret(opts.password)
  local api = opts.api or "auto"
  if api ~= "auto" and not M.SESSION_PATHS[api] then error("rest.connect: api must be auto, api or rest", 2) end
  local base, berr = M.base_url(opts.server)
  if not base then return nil, "rest.connect: " .. berr, "ECONFIG" end
  local c = setmetatable({
    base = base, username = opts.username, password = opts.password, insecure = opts.insecure,
    ca_file = opts.ca_file, cert_sha256 = opts.cert_sha256, pin_sha256 = opts.pin_sha256,
    timeout = opts.timeout or 60, retries = opts.retries or 2, http = http.session(), closed = false,
  }, Client)
  local ok, err, code, r
  if api == "auto" and no_api[base] then api = "rest" end
  if api ~= "rest" then
    ok, err, code, r = c:_login("api")
    if not ok and api == "auto" and r and r.status == 404 then
      log.debug("rest: %s has no /api/session (HTTP 404): using /rest", base)
      no_api[base] = true
      ok, err, code = c:_login("rest")
    end
  else
    ok, err, code = c:_login("rest")
  end
  if not ok then
    c.http:close()
    c.closed = true
    return nil, ("%s (%s)"):format(err, base), code
  end
  c.cleanup_handle = cleanup.push(("vSphere REST session %s@%s"):format(c.username, base), function() c:logout() end)
  log.debug("rest: session on %s (%s)", base, M.SESSION_PATHS[c.flavor])
  return c
end

return M
