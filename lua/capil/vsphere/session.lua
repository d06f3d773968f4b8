--- capil.vsphere.session — opening a vim25 session from a backend's
--- settings (capil.backends.vsphere's `settings`: server, username,
--- password, insecure_connection, thumbprint, ca_file), and those settings
--- for commands that run without a recipe (capil repl, deploy, ssh, test).
local vim25 = require("capil.vsphere.vim25")
local log = require("capil.sys.log")

local M = {}

local function fail(msg, code) return nil, msg, code or "EVSPHERE" end

--- The password of settings `s`: in place (live settings), else read through
--- `secret` from the variable the plan names (`password_var`).
---@param s table
---@param secret? fun(var: string): string|nil
---@return string|nil
function M.password(s, secret)
  local p = s.password
  if (p == nil or p == "") and s.password_var and secret then p = secret(s.password_var) end
  if p == "" then return nil end
  return p
end

--- The variable a user sets for setting `name` of backend `kind`: the
--- first path of the setting, by image-builder name (vsphere: username,
--- datastore; esx: remote_username, remote_datastore).
---@param kind string
---@param name string
---@return string
function M.setting_var(kind, name)
  local registry = require("capil.backend")
  local b = registry.known(kind) and registry.get(kind)
  for _, s in ipairs(b and b.settings or {}) do
    if s[1] == name then
      local f = require("capil.build.schema").by_path[s.paths[1]]
      return f and f.var or s.paths[1]
    end
  end
  return name
end

--- The variable a user sets for the server of backend `kind` (vsphere:
--- vcenter_server, esx: remote_host).
---@param kind string
---@return string
function M.server_var(kind)
  local v = M.setting_var(kind, "server")
  return v ~= "server" and v or "vcenter_server"
end

--- The variables of the placement settings of backend `kind`, for
--- capil.vsphere.inventory.resolve's messages (opts.vars).
---@param kind string
---@return table<string, string>
function M.placement_vars(kind)
  local out = {}
  for _, n in ipairs({ "datacenter", "folder", "cluster", "host", "resource_pool", "datastore", "network" }) do
    out[n] = M.setting_var(kind, n)
  end
  return out
end

--- The login the settings describe, as the vim25 and REST clients take it
--- ({server, username, password, insecure, ca_file, cert_sha256}), or nil
--- and an error naming the variable to set (code ECONFIG). opts.kind
--- ("vsphere" or "esx") names the backend; opts.secret as in M.connect.
---@param s table the backend's settings
---@param opts? {kind?: string, secret?: fun(var: string): string|nil}
---@return table|nil login, string? err, string? code
function M.login(s, opts)
  opts = opts or {}
  local kind = opts.kind or "vsphere"
  if not s.server or s.server == "" then
    return fail(("%s: no server: set %s (in a var file, with --var, or GOVC_URL)"):format(kind, M.server_var(kind)),
      "ECONFIG")
  end
  local password = M.password(s, opts.secret)
  if not s.username or s.username == "" or not password then
    return fail(("%s: %s: set username and password (var file, --var, or GOVC_USERNAME/GOVC_PASSWORD)")
      :format(kind, s.server), "ECONFIG")
  end
  return { server = s.server, username = s.username, password = password,
    insecure = s.insecure_connection and true or false, ca_file = s.ca_file, cert_sha256 = s.thumbprint }
end

--- Opens a vim25 session with the settings. opts.kind ("vsphere" or "esx")
--- names the backend in messages; opts.secret reads the password when the
--- settings carry only its variable (a build's plan settings).
---@param s table the backend's settings
---@param opts? {kind?: string, secret?: fun(var: string): string|nil}
---@return table|nil vc, string? err, string? code
function M.connect(s, opts)
  opts = opts or {}
  local kind = opts.kind or "vsphere"
  local login, err, code = M.login(s, opts)
  if not login then return nil, err, code end
  if s.server:match("^[Hh][Tt][Tt][Pp]://") then
    log.warn("%s: %s is plain http: the password (and every datastore upload) crosses the network in clear; "
      .. "use https://", kind, s.server)
  end
  return vim25.connect(login)
end

--- Opens a vSphere Automation REST session (capil.vsphere.rest, the
--- content library's API) with the settings, as M.connect does a vim25 one.
---@param s table the backend's settings
---@param opts? {kind?: string, secret?: fun(var: string): string|nil, api?: string}
---@return table|nil client, string? err, string? code
function M.rest(s, opts)
  opts = opts or {}
  local login, err, code = M.login(s, opts)
  if not login then return nil, err, code end
  login.api = opts.api or "auto"
  return require("capil.vsphere.rest").connect(login)
end

--- Settings without a recipe (capil repl, capil deploy, capil ssh):
--- recipes/config's vsphere.json or esx.json < govc's environment <
--- PACKER_VAR_FILES < var files < --var, by image-builder variable name.
--- The backend's settings with the password in place (never print them).
---@param opts {backend?: string, var_files?: string[], vars?: string[], config_dir?: string, getenv?: function}
---@return table|nil settings, string? err
function M.settings_from_vars(opts)
  local backend = require("capil.backend")
  local kind = opts.backend or "vsphere"
  local b, berr = backend.get(kind)
  if not b then return nil, berr end
  local cfg, err = require("capil.build.config").from_vars({ backend = kind, var_files = opts.var_files,
    vars = opts.vars, config_dir = opts.config_dir, getenv = opts.getenv })
  if not cfg then return nil, err end
  return backend.live_settings(b, cfg)
end

return M
