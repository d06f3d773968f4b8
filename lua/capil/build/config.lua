--- capil.build.config — configuration layering. Lowest to highest:
---   1. default   schema defaults
---   2. shared    recipes/config/*.json (image-builder's packer/config and
---                packer/ova files; the backend's own file, its traits.var_file:
---                esx.json, vsphere.json)
---   3. recipe    the OS recipe (and what it extends)
---      env       govc's GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE
---                (and GOVC_DATACENTER, _DATASTORE, _NETWORK, _RESOURCE_POOL,
---                _FOLDER, _HOST), below var files, for a backend whose
---                traits.govc_env says so
---   4. var-file  every file of PACKER_VAR_FILES (space-separated), then each
---                --var-file, in order: last wins (image-builder's rule)
---   5. var       --var key=value
--- Values are addressed by schema path (`iso.checksum`) or image-builder
--- variable name (`iso_checksum`). Besides the schema's variables, a file or
--- --var may set the variables the shipped roles read (M.ROLE_VARS) and
--- those the recipe declares in its `vars` (custom roles' variables); the
--- image-builder variables capil deliberately ignores (M.IGNORED: Packer's,
--- Ansible's and goss's machinery) are accepted with a notice; any other
--- name is an error naming the file (or --var) and the variable, with a
--- "did you mean". Every value remembers its layer and file, and the values
--- of the layers it overrode.
local schema = require("capil.build.schema")
local json = require("capil.sys.json")
local log = require("capil.sys.log")
local template = require("capil.util.template")

local M = {}

M.SHARED_FILES = { "kubernetes.json", "cni.json", "containerd.json", "common.json", "packer-common.json" }

-- The traits of the backend called `name` (capil.backend), or an empty
-- table for no or an unknown backend (plan.resolve reports that one).
local function traits_of(name)
  local backend = require("capil.backend")
  if not name or not backend.known(name) then return {} end
  return backend.get(name).traits or {}
end

-- Variables of image-builder's shared files that its Packer templates never
-- read: applying them would make capil's build differ from image-builder's.
-- They stay in the files (which mirror image-builder's) and are skipped,
-- with the reason shown by `capil inspect --explain`.
M.SHARED_UNREAD = {
  ssh_timeout = "image-builder's Packer templates hard-code ssh_timeout \"4h\" and never read this variable",
}

-- Maps a key from a var file or --var to a schema path, or nil (extra var).
local function path_of(key)
  local f = schema.by_var[key] or schema.by_path[key]
  return f and f.path
end

--- Variables the shipped roles read that are no schema field (extra
--- variables, passed to roles as strings), with what they do.
M.ROLE_VARS = {
  runc_version = "containerd 2.x: the runc release installed beside it (containerd role)",
  runc_sha256 = "containerd 2.x: the sha256 of that release's runc.amd64 (containerd role)",
  containerd_cri_socket = "containerd 2.x: the CRI socket written to /etc/crictl.yaml (containerd role)",
  containerd_image_pull_progress_timeout = "containerd 2.x: the CRI plugin's image_pull_progress_timeout "
    .. "(containerd role)",
  containerd_enable_limit_no_file = "true: containerd's LimitNOFILE drop-in (containerd role)",
}

local ANSIBLE = "an argument of Ansible's; capil runs its roles itself over SSH, not through Ansible"
local GOSS = "a setting of goss's; capil runs its own checks (recipes/checks), not goss"

--- image-builder's variables that capil deliberately ignores: the Packer,
--- Ansible and goss machinery capil replaces. A file or --var setting one
--- is accepted with a notice (one line on stderr) naming it and why.
M.IGNORED = {
  ansible_common_vars = ANSIBLE,
  ansible_extra_vars = ANSIBLE,
  ansible_user_vars = ANSIBLE,
  ansible_scp_extra_args = ANSIBLE,
  ansible_common_ssh_args = ANSIBLE,
  existing_ansible_ssh_args = ANSIBLE,
  node_ansible_tmpdir = ANSIBLE,
  build_timestamp = "capil stamps each build itself (packer-manifest.json, the OVF's BUILD_TIMESTAMP)",
  build_version = "capil names the build <build_name>-kube-<kubernetes_semver>",
  output_dir = "capil writes to <--output>/<build_name>-kube-<kubernetes_semver>",
  ib_version = "capil records its own version as the OVF's IMAGE_BUILDER_VERSION",
  http_port_min = "capil's installer server listens on a free port of its own choosing",
  http_port_max = "capil's installer server listens on a free port of its own choosing",
  ssh_handshake_attempts = "capil retries SSH until ssh_timeout",
  export_manifest = "capil writes the OVA's manifest (.mf) itself",
}

--- Prefixes of whole families of ignored variables.
M.IGNORED_PREFIXES = { goss_ = GOSS }

--- Why capil ignores the image-builder variable `name`, or nil.
---@param name string
---@return string?
function M.ignored(name)
  if M.IGNORED[name] then return M.IGNORED[name] end
  for prefix, why in pairs(M.IGNORED_PREFIXES) do
    if name:sub(1, #prefix) == prefix then return why end
  end
  return nil
end

--- image-builder variables capil has no such variable for, with what to
--- use instead (the error's hint).
M.INSTEAD = {
  cpu = "capil's variable is cpus",
  cdrom_type = "capil's variable is cd_bus",
  pause_image = "capil's variable is containerd_pause_image",
  boot_command_prefix = "a recipe's boot.command (variable boot_command) holds the whole boot command",
  boot_command_suffix = "a recipe's boot.command (variable boot_command) holds the whole boot command",
  boot_media_path = "a recipe's boot.command (variable boot_command) holds the whole boot command",
  cd_content_location = "a recipe lists the seed CD's files in installer.cd_files",
  node_custom_roles_pre = "capil runs custom_role_names (with custom_role true) before sysprep",
  node_custom_roles_post = "capil runs custom_role_names (with custom_role true) before sysprep",
}

--- The variables backends read through their settings that are no schema
--- field (esx's remote_poll_interval), as {name = "backend <b>: setting <s>"}.
---@return table<string, string>
function M.backend_vars()
  local backend = require("capil.backend")
  local out = {}
  for _, name in ipairs(backend.names()) do
    for _, s in ipairs(backend.get(name).settings or {}) do
      for _, p in ipairs(s.paths or {}) do
        if not path_of(p) and not out[p] then out[p] = ("backend %s: setting %s"):format(name, s[1]) end
      end
    end
  end
  return out
end

--- What an extra variable (no schema field) is, when capil knows it: a
--- role's or a backend's variable; nil otherwise.
---@param name string
---@return string?
function M.extra_known(name)
  return M.ROLE_VARS[name] or M.backend_vars()[name]
end

-- Names shown in "did you mean": the schema's variables (or paths, for a
-- dotted key), the roles' variables and `declared` (a recipe's vars).
local function suggestion(key, declared)
  if #key > schema.SUGGEST_MAX then return nil end
  local names = {}
  if key:find(".", 1, true) then
    for _, f in ipairs(schema.fields) do names[#names + 1] = f.path end
  else
    for _, f in ipairs(schema.fields) do if f.var then names[#names + 1] = f.var end end
    for k in pairs(M.ROLE_VARS) do names[#names + 1] = k end
    for k in pairs(M.backend_vars()) do names[#names + 1] = k end
    for k in pairs(declared or {}) do names[#names + 1] = k end
  end
  table.sort(names)
  local text = require("capil.util.text")
  local best = text.closest(key, names)
  if best then return { best } end
  return text.similar(key, names, 3)
end

--- The message of a variable no layer knows: "<where>: disk_sise: unknown
--- variable (did you mean 'disk_size'?)". `where` is the file or --var;
--- `declared` the recipe's own extra variables.
---@param where string
---@param key string
---@param declared? table<string, true>
---@return string
function M.unknown_message(where, key, declared)
  local shown = #key > 200 and (key:sub(1, 200) .. ("... (%d bytes)"):format(#key)) or key
  if M.INSTEAD[key] then
    return ("%s: %s: not a capil variable (%s)"):format(where, shown, M.INSTEAD[key])
  end
  return ("%s: %s: unknown variable (%s)"):format(where, shown, M.did_you_mean(key, declared)
    or "a custom role's variable is declared in its recipe's vars")
end

--- "did you mean 'disk_size'?" for a misspelt variable or path, or nil.
---@param key string
---@param declared? table a recipe's vars (their names count)
---@return string?
function M.did_you_mean(key, declared)
  local hint = suggestion(key, declared) or {}
  if #hint == 0 then return nil end
  local q = {}
  for i, n in ipairs(hint) do q[i] = "'" .. n .. "'" end
  return ("did you mean %s?"):format(table.concat(q, " or "))
end

-- Notices already printed (a file read for several recipes prints once).
local noticed = {}

--- The notices of ignored variables, one line per file and reason, naming
--- each variable: "<where>: goss_arch, goss_url are ignored: <why>".
--- `list` holds {where, key} in the order they were set.
---@param list {[1]: string, [2]: string}[]
---@return string[]
function M.notices(list)
  local groups, order = {}, {}
  for _, n in ipairs(list) do
    local where, key = n[1], n[2]
    local id = where .. "\0" .. M.ignored(key)
    if not groups[id] then
      groups[id] = { where = where, why = M.ignored(key), keys = {}, seen = {} }
      order[#order + 1] = id
    end
    local g = groups[id]
    if not g.seen[key] then g.seen[key] = true g.keys[#g.keys + 1] = key end
  end
  local out = {}
  for _, id in ipairs(order) do
    local g = groups[id]
    out[#out + 1] = ("%s: %s %s ignored: %s"):format(g.where, table.concat(g.keys, ", "),
      #g.keys == 1 and "is" or "are", g.why)
  end
  return out
end

-- Prints the notices of `list` (see M.notices) on stderr, each once per
-- process.
local function print_notices(list)
  for _, line in ipairs(M.notices(list)) do
    if not noticed[line] then
      noticed[line] = true
      log.info("%s", line)
    end
  end
end

local Config = {}
Config.__index = Config


--- The largest var file read (they hold a few dozen variables).
M.MAX_VAR_FILE = 16 * 1024 * 1024

-- Reads a JSON var file into a list of {key, value} entries (object order
-- does not matter within one file).
local function read_var_file(path)
  local data, err = json.read(path, { max = M.MAX_VAR_FILE })
  if data == nil then
    -- json.read's message already names the path
    return nil, (tostring(err):gsub("^json%.read: ", ""))
  end
  if type(data) ~= "table" or json.is_array(data) then
    return nil, ("%s: a var file must be a JSON object of variables"):format(path)
  end
  return data
end

-- A table's keys, sorted (a file's variables in a stable order).
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

--- Splits PACKER_VAR_FILES (space-separated paths).
function M.packer_var_files(env_value)
  local t = {}
  for p in (env_value or ""):gmatch("%S+") do t[#t + 1] = p end
  return t
end

-- govc's environment variables and the image-builder variables they set.
local GOVC = {
  GOVC_USERNAME = "username", GOVC_PASSWORD = "password", GOVC_DATACENTER = "datacenter",
  GOVC_DATASTORE = "datastore", GOVC_NETWORK = "network", GOVC_RESOURCE_POOL = "resource_pool",
  GOVC_FOLDER = "folder", GOVC_HOST = "host", GOVC_TLS_CA_CERTS = "vcenter_ca_file",
}

-- %XX decoded as Go's url.Parse decodes a URL's userinfo; nil for a bad
-- escape.
local function percent_decode(s)
  if s:find("%%[^%x]") or s:find("%%%x[^%x]") or s:find("%%%x?$") then return nil end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- govc's GOVC_URL as govc reads it (govmomi's soap.ParseURL and Go's
--- url.Parse): https:// when no scheme is given, /sdk when no path; the
--- userinfo runs to the *last* `@` of the authority, the user up to its
--- first `:`, each percent-decoded. Returns {server = "https://host/sdk",
--- username?, password?}, or nil and a message that never holds the URL's
--- userinfo. Both forms of the password (as typed and decoded) become
--- secrets before anything can print them.
---@param url string
---@return {server: string, username?: string, password?: string}|nil, string?
function M.parse_govc_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then scheme, rest = "https", url end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  local at = authority:match("^.*()@")
  local out = {}
  if at then
    local userinfo = authority:sub(1, at - 1)
    authority = authority:sub(at + 1)
    local u, p = userinfo:match("^([^:]*):(.*)$")
    u = u or userinfo
    if p and p ~= "" then
      log.secret(p)
      local dp = percent_decode(p)
      if not dp then return nil, "GOVC_URL: the password in the URL has a bad %-escape (write % as %25)" end
      log.secret(dp)
      out.password = dp
    end
    local du = percent_decode(u)
    if not du then return nil, "GOVC_URL: the user name in the URL has a bad %-escape (write % as %25)" end
    if du ~= "" then out.username = du end
  end
  if authority == "" then return nil, "GOVC_URL: no host (expected [user[:password]@]host[:port][/sdk])" end
  if path == "" then path = "/sdk" end
  out.server = ("%s://%s%s"):format(scheme, authority, path)
  return out
end

--- The variables govc's environment gives, as {var = {value, env name}}.
--- GOVC_URL may carry user:password@ (as govc allows; see parse_govc_url);
--- GOVC_USERNAME and GOVC_PASSWORD win over it. `getenv` defaults to
--- os.getenv. A GOVC_URL that cannot be read: nil and the message.
---@param getenv? fun(name: string): string?
---@return table|nil vars, string? err
function M.govc_env(getenv)
  getenv = getenv or os.getenv
  local out = {}
  local url = getenv("GOVC_URL")
  if url and url ~= "" then
    local u, err = M.parse_govc_url(url)
    if not u then return nil, err end
    if u.password then out.password = { u.password, "GOVC_URL" } end
    if u.username then out.username = { u.username, "GOVC_URL" } end
    out.vcenter_server = { u.server, "GOVC_URL" }
  end
  for name, var in pairs(GOVC) do
    local v = getenv(name)
    if v and v ~= "" then
      if var == "password" then log.secret(v) end
      out[var] = { v, name }
    end
  end
  local insecure = getenv("GOVC_INSECURE")
  if insecure and insecure ~= "" then
    out.insecure_connection = { (insecure == "1" or insecure:lower() == "true") and "true" or "false", "GOVC_INSECURE" }
  end
  return out
end

--- One entry of the var layer: "key=value" from --var, or {"key=value",
--- where = "vars"} from elsewhere (a bundle entry's vars), named so in
--- messages. Returns the text and where it came from.
---@param e string|{[1]: string, where: string}
---@return string kv, string where
function M.var_entry(e)
  if type(e) == "table" then return e[1], e.where or "--var" end
  return e, "--var"
end

--- Parses "key=value" from --var.
function M.parse_var(s)
  local k, v = s:match("^([%w_%.]+)=(.*)$")
  if not k then return nil, ("--var: expected key=value, got '%s'"):format(s) end
  return k, v
end

-- The path of shared file `name`: in opts.config_dir, else the first of
-- opts.config_dirs holding it (else the first's, whose error names it),
-- else in the built-in config directories of the recipe search path.
local function shared_file(opts, name)
  local fs = require("capil.sys.fs")
  if opts.config_dir then return opts.config_dir .. "/" .. name end
  local dirs = opts.config_dirs or require("capil.build.recipepath").config_dirs({ getenv = opts.getenv })
  for _, d in ipairs(dirs) do
    local st = fs.stat(d .. "/" .. name)
    if st and st.type == "file" then return d .. "/" .. name end
  end
  return (dirs[1] or "recipes/config") .. "/" .. name
end

--- The configuration of a command that has no recipe (deploy, test, ssh,
--- repl): schema defaults < recipes/config/<backend file> < govc's
--- environment < PACKER_VAR_FILES < var files < --var, by image-builder
--- variable name. Returns a Config (cfg:get(var or path)) or nil and a
--- message naming the file or variable.
---@param opts {backend?: string, var_files?: string[], vars?: string[], config_dir?: string, config_dirs?: string[], getenv?: function}
---@return table|nil cfg, string? err
function M.from_vars(opts)
  local getenv = opts.getenv or os.getenv
  local raw, extra, unknown, notices = {}, {}, {}, {}
  local function set(k, v, where)
    if v == nil or (json.is_null and json.is_null(v)) then return end
    local p = path_of(k)
    if p then raw[p] = v
    elseif M.extra_known(k) then extra[k] = v
    elseif M.ignored(k) then notices[#notices + 1] = { where, k }
    else unknown[#unknown + 1] = M.unknown_message(where, k) end
  end
  local function set_all(data, where)
    for _, k in ipairs(sorted_keys(data)) do set(k, data[k], where) end
  end
  local traits = traits_of(opts.backend)
  local base = traits.var_file and shared_file(opts, traits.var_file)
  if base and require("capil.sys.fs").exists(base) then
    local data, err = read_var_file(base)
    if not data then return nil, err end
    set_all(data, base)
  end
  if traits.govc_env then
    local env, err = M.govc_env(getenv)
    if not env then return nil, err end
    for k, v in pairs(env) do set(k, v[1], v[2]) end
  end
  local files = M.packer_var_files(getenv("PACKER_VAR_FILES"))
  for _, f in ipairs(opts.var_files or {}) do files[#files + 1] = f end
  for _, path in ipairs(files) do
    local data, err = read_var_file(path)
    if not data then return nil, err end
    set_all(data, path)
  end
  for _, e in ipairs(opts.vars or {}) do
    local kv, where = M.var_entry(e)
    local k, v = M.parse_var(kv)
    if not k then return nil, v end
    set(k, v, where)
  end
  print_notices(notices)
  if #unknown > 0 then return nil, table.concat(unknown, "\n") end
  local values, texts = {}, {}
  for _, f in ipairs(schema.fields) do
    local v = raw[f.path]
    if v == nil then v = f.default end
    if v ~= nil then
      local c, why = schema.coerce(f, v)
      if c == nil then return nil, ("%s: %s"):format(f.var or f.path, why) end
      local ok, cwhy = schema.check(f, c, values)
      if not ok then return nil, ("%s: %s"):format(f.var or f.path, cwhy) end
      values[f.path] = c
      if f.type == "duration" then texts[f.path] = tostring(v) end
    end
  end
  local cfg = setmetatable({ values = values, texts = texts, extra = extra, sources = {}, extra_sources = {} }, Config)
  cfg:register_secrets()
  return cfg
end

-- An error's sort key: its file, line (0 when none) and the rest (the
-- field first).
local function error_key(e)
  local file, line, rest = e:match("^([^:]+):(%d+): (.*)$")
  if file then return file, tonumber(line), rest end
  file, rest = e:match("^([^:]+): (.*)$")
  if file then return file, 0, rest end
  return "", 0, e
end

--- `errors` in a stable order: by file, line, then field (the message
--- after the location), whatever order the layers found them in.
---@param errors string[]
---@return string[]
function M.sort_errors(errors)
  local keyed = {}
  for i, e in ipairs(errors) do
    local f, l, r = error_key(e)
    keyed[i] = { f = f, l = l, r = r, e = e, i = i }
  end
  table.sort(keyed, function(a, b)
    if a.f ~= b.f then return a.f < b.f end
    if a.l ~= b.l then return a.l < b.l end
    if a.r ~= b.r then return a.r < b.r end
    return a.i < b.i
  end)
  local out = {}
  for i, k in ipairs(keyed) do out[i] = k.e end
  return out
end

--- Resolves the configuration of `recipe` (from capil.build.recipe.load).
--- opts: backend, config_dir (default recipes/config) or config_dirs (each
--- shared file from the first holding it), var_files (list),
--- packer_var_files (string, PACKER_VAR_FILES), vars ({"k=v", ...} or map),
--- getenv (for govc's variables; default os.getenv).
--- Returns a Config, or nil and a list of errors.
---@return table|nil, string[]?
function M.resolve(recipe, opts)
  opts = opts or {}
  local errors = {}
  local values, sources, extra, extra_src = {}, {}, {}, {}
  -- variables the recipe declares (its vars), ignored ones as set
  local declared, ignored, notices = {}, {}, {}

  -- A value's source, remembering the sources (and values) it overrides,
  -- latest first.
  local function source_over(prev, prev_value, src)
    if prev then
      local o = { layer = prev.layer, file = prev.file, where = prev.where, key = prev.key, value = prev_value }
      src.overrides = { o }
      for _, x in ipairs(prev.overrides or {}) do src.overrides[#src.overrides + 1] = x end
    end
    return src
  end

  local function set(key, raw, layer, file)
    local path = path_of(key)
    if raw == nil or (json.is_null and json.is_null(raw)) then return end
    if path then
      sources[path] = source_over(sources[path], values[path], { layer = layer, file = file, key = key })
      values[path] = raw
    elseif layer == "recipe" or M.extra_known(key) or not M.ignored(key) then
      -- unknown names are checked once the recipe has declared its own
      if layer == "recipe" then declared[key] = true end
      extra_src[key] = source_over(extra_src[key], extra[key], { layer = layer, file = file, key = key })
      extra[key] = raw
    else
      ignored[key] = { layer = layer, file = file, key = key }
      notices[#notices + 1] = { file or layer, key }
    end
  end

  -- 1. defaults
  for _, f in ipairs(schema.fields) do
    if f.default ~= nil then
      values[f.path] = f.default
      sources[f.path] = { layer = "default" }
    end
  end

  -- 2. shared files
  local cfg_opts = opts
  if not (opts.config_dir or opts.config_dirs) then cfg_opts = { config_dir = "recipes/config" } end
  local files = {}
  for _, f in ipairs(M.SHARED_FILES) do files[#files + 1] = shared_file(cfg_opts, f) end
  local traits = traits_of(opts.backend)
  if traits.var_file then files[#files + 1] = shared_file(cfg_opts, traits.var_file) end
  local unread = {}
  for _, path in ipairs(files) do
    local data, err = read_var_file(path)
    if not data then
      errors[#errors + 1] = err
    else
      for _, k in ipairs(sorted_keys(data)) do
        local v = data[k]
        if M.SHARED_UNREAD[k] and path_of(k) then
          unread[path_of(k)] = ("%s's %s is not applied: %s"):format(path, json.encode(v), M.SHARED_UNREAD[k])
        else
          set(k, v, "shared", path)
        end
      end
    end
  end
  for p, note in pairs(unread) do
    if sources[p] then sources[p].note = note end
  end

  -- 3. the recipe (and what it extends)
  for p, v in pairs(recipe.fields) do
    if p == "vars" then
      local at = recipe.lines and recipe.lines[p] or recipe.sources[p] or "recipe"
      if type(v) ~= "table" then
        errors[#errors + 1] = ("%s: vars: expected a table of name = value, got a %s"):format(at, type(v))
      else
        for _, k in ipairs(sorted_keys(v)) do
          local x = v[k]
          if type(k) == "string" then
            set(k, x, "recipe", recipe.sources[p])
          else
            errors[#errors + 1] = ("%s: vars: keys must be variable names, got %s (a list entry?)"):format(at,
              tostring(k))
          end
        end
      end
    else
      sources[p] = source_over(sources[p], values[p],
        { layer = "recipe", file = recipe.sources[p], where = recipe.lines[p] })
      values[p] = v
    end
  end

  -- govc's environment, for the backends that talk to vSphere
  if traits.govc_env then
    local env, err = M.govc_env(opts.getenv)
    if env then
      for k, v in pairs(env) do set(k, v[1], "env", v[2]) end
    else
      errors[#errors + 1] = err
    end
  end

  -- 4. var files
  local var_files = {}
  for _, f in ipairs(M.packer_var_files(opts.packer_var_files)) do var_files[#var_files + 1] = f end
  for _, f in ipairs(opts.var_files or {}) do var_files[#var_files + 1] = f end
  for _, path in ipairs(var_files) do
    local data, err = read_var_file(path)
    if not data then
      errors[#errors + 1] = err
    else
      for _, k in ipairs(sorted_keys(data)) do set(k, data[k], "var-file", path) end
    end
  end

  -- 5. --var
  for _, e in ipairs(opts.vars or {}) do
    local kv, where = M.var_entry(e)
    local k, v = M.parse_var(kv)
    if not k then errors[#errors + 1] = v else set(k, v, "var", where) end
  end

  print_notices(notices)

  -- a variable no layer knows: an error naming its file (the latest that
  -- set it) and a "did you mean"
  for _, k in ipairs(sorted_keys(extra)) do
    if not declared[k] and not M.extra_known(k) then
      local src = extra_src[k]
      errors[#errors + 1] = M.unknown_message(src.file or src.layer, k, declared)
      extra[k], extra_src[k] = nil, nil
    end
  end

  -- secrets are registered before anything can print them (errors below
  -- quote values)
  for _, f in ipairs(schema.fields) do
    local raw = values[f.path]
    if f.secret and type(raw) == "string" and raw ~= "" and raw ~= f.default then log.secret(raw) end
  end
  for k, raw in pairs(extra) do
    if schema.is_secret_name(k) and type(raw) == "string" and raw ~= "" then log.secret(raw) end
    log.secret_urls(raw)
  end
  for _, raw in pairs(values) do log.secret_urls(raw) end

  -- coerce and check; a duration keeps its text for vars() and --explain
  local resolved, texts = {}, {}
  for _, f in ipairs(schema.fields) do
    local raw = values[f.path]
    if raw ~= nil then
      local v, why = schema.coerce(f, raw)
      if v ~= nil and f.type == "duration" then texts[f.path] = tostring(raw) end
      if v == nil then
        local src = sources[f.path]
        errors[#errors + 1] = ("%s: %s: %s"):format(src.where or src.file or src.layer,
          src.key and src.layer ~= "recipe" and src.key or f.path, why)
      else
        resolved[f.path] = v
      end
    end
  end
  for _, f in ipairs(schema.fields) do
    local v = resolved[f.path]
    if v == nil then
      if f.required then
        errors[#errors + 1] = ("%s: %s: required%s"):format(recipe.file, f.path,
          f.var and (" (or variable " .. f.var .. ")") or "")
      end
    else
      local ok, why = schema.check(f, v, resolved)
      if not ok then
        local src = sources[f.path]
        errors[#errors + 1] = ("%s: %s: %s"):format(src.where or src.file or src.layer,
          src.key and src.layer ~= "recipe" and src.key or f.path, why)
      end
    end
  end
  for k, v in pairs(extra) do
    if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
      errors[#errors + 1] = ("%s: %s: expected a string, number or boolean, got %s"):format(
        extra_src[k].file or extra_src[k].layer, k, type(v))
    end
  end
  if #errors == 0 then M.derive_kubernetes(resolved, sources, errors) end
  if #errors == 0 then M.derive_containerd(resolved, sources) end
  if #errors > 0 then return nil, M.sort_errors(errors) end

  local cfg = setmetatable({
    recipe = recipe, values = resolved, texts = texts, sources = sources, extra = extra, extra_sources = extra_src,
    backend = opts.backend, ignored = ignored,
  }, Config)

  -- templated values ({{ var }} in containerd_url, guestinfo_datasource_script)
  local flat = cfg:vars()
  for _, f in ipairs(schema.fields) do
    local v = resolved[f.path]
    if type(v) == "string" and v:find("{{", 1, true) and f.path ~= "boot.command" and not f.late then
      local r, terr = template.render(v, flat, f.var or f.path)
      if not r then return nil, { terr } end
      resolved[f.path] = r
    end
  end

  cfg:register_secrets()
  return cfg
end

-- ====================================================================== --
-- Kubernetes versions derived from kubernetes_semver                      --
-- ====================================================================== --

-- pkgs.k8s.io, the one package source left since apt.kubernetes.io and
-- packages.cloud.google.com/yum shut down (2024), starts at v1.24; older
-- versions come from the release binaries on dl.k8s.io.
M.PKG_MIN_MINOR = 24

-- CNI plugins per Kubernetes minor: the kubernetes-cni the old apt/yum
-- repositories paired with it (0.8.6 up to 1.18, 0.8.7 up to 1.23), then
-- image-builder's current cni.json (v1.2.0).
local function cni_for(minor)
  if minor < 19 then return "v0.8.6" elseif minor < 24 then return "v0.8.7" end
  return "v1.2.0"
end

--- The values `kubernetes_semver` implies, by schema path: the source types
--- ("auto" resolved), series, package versions in the scheme of the
--- repository that carries that version, CNI and crictl versions. `semver`
--- is "v1.30.2"; `source`/`cni_source` the configured source types.
---@param semver string
---@param source string
---@param cni_source string
---@return table<string, string>|nil derived, string? err
function M.kubernetes_versions(semver, source, cni_source)
  local major, minor, patch = semver:match("^v(%d+)%.(%d+)%.(%d+)")
  if not major then return nil, "kubernetes_semver: expected v<major>.<minor>.<patch>, got " .. semver end
  minor = tonumber(minor)
  local plain = ("%s.%d.%s"):format(major, minor, patch)
  local pkgs_k8s_io = tonumber(major) > 1 or minor >= M.PKG_MIN_MINOR
  if source == "auto" then source = pkgs_k8s_io and "pkg" or "http" end
  -- CNI follows Kubernetes: packages with packages, tarball with binaries
  if cni_source == "auto" then cni_source = source end
  local cni = cni_for(minor)
  local d = {
    ["kubernetes.source_type"] = source,
    ["cni.source_type"] = cni_source,
    ["kubernetes.series"] = ("v%s.%d"):format(major, minor),
    ["kubernetes.crictl_version"] = ("%s.%d.0"):format(major, minor),
    ["cni.semver"] = cni,
  }
  if pkgs_k8s_io then
    -- pkgs.k8s.io's scheme; kubernetes-cni unpinned: kubelet's dependency
    -- picks the build that goes with it (as image-builder does today)
    d["kubernetes.deb_version"] = plain .. "-1.1"
    d["kubernetes.rpm_version"] = plain
    d["cni.deb_version"], d["cni.rpm_version"] = "", ""
  else
    -- the 2020 repositories' scheme, for a mirror of them
    d["kubernetes.deb_version"] = plain .. "-00"
    d["kubernetes.rpm_version"] = plain .. "-0"
    d["cni.deb_version"] = cni:sub(2) .. "-00"
    d["cni.rpm_version"] = cni:sub(2) .. "-0"
  end
  return d
end

-- Whether a user (shared file, recipe, var file, --var, environment) set
-- the value at `path`, rather than the schema default.
local function explicit(sources, path)
  local s = sources[path]
  return s ~= nil and s.layer ~= "default" and s.layer ~= "derived"
end

-- The upstream version of a deb ("1.19.1-00", "1:1.19.1-00") or rpm
-- ("1.19.1-0", "1.19.1") version string.
local function upstream(v)
  return (v:gsub("^%d+:", ""):gsub("%-[^%-]*$", ""))
end

local function named(path)
  local f = schema.by_path[path]
  return f and f.var or path
end

--- containerd's release tarball, the download of containerd 2.x (which
--- ships no cri-containerd bundle); image-builder's containerd role.
M.CONTAINERD_RELEASE_URL = "https://github.com/containerd/containerd/releases/download/v{{containerd_version}}/"
  .. "containerd-{{containerd_version}}-linux-amd64.tar.gz"

--- Where no one set containerd_url, containerd 2.x and later default to
--- containerd's release tarball instead of the cri-containerd bundle of the
--- 1.x default (recorded as "derived"). Changes `resolved` and `sources`.
---@param resolved table values by path
---@param sources table provenance by path
function M.derive_containerd(resolved, sources)
  local major = tonumber(tostring(resolved["containerd.version"] or ""):match("^v?(%d+)%."))
  if major and major >= 2 and not explicit(sources, "containerd.url") then
    resolved["containerd.url"] = M.CONTAINERD_RELEASE_URL
    sources["containerd.url"] = { layer = "derived",
      note = ("containerd_version %s: containerd 2.x ships no cri-containerd bundle"):format(resolved["containerd.version"]) }
  end
end

--- Fills in what `kubernetes_semver` implies (series, deb and rpm versions,
--- the CNI and crictl versions, "auto" source types) where the user set
--- nothing, recording the layer "derived"; checks what the user did set
--- against it, appending an error naming both variables and the expected
--- value. Changes `resolved` and `sources` in place.
---@param resolved table values by path
---@param sources table provenance by path
---@param errors string[]
function M.derive_kubernetes(resolved, sources, errors)
  local semver = resolved["kubernetes.semver"]
  if type(semver) ~= "string" then return end
  local d, err = M.kubernetes_versions(semver, resolved["kubernetes.source_type"] or "auto",
    resolved["cni.source_type"] or "auto")
  if not d then errors[#errors + 1] = err return end

  local function from(path, what)
    resolved[path] = d[path]
    sources[path] = { layer = "derived", note = what }
  end

  -- kubelet v1.26 and later speak only CRI v1, which containerd has from
  -- 1.6: the seed's containerd 1.3.4 would give an image whose kubelet
  -- never starts
  local k_minor = tonumber(semver:match("^v1%.(%d+)%."))
  local cv = tostring(resolved["containerd.version"] or "")
  local c_major, c_minor = cv:match("^v?(%d+)%.(%d+)")
  if k_minor and k_minor >= 26 and c_major and tonumber(c_major) == 1 and tonumber(c_minor) < 6 then
    local src = sources["containerd.version"] or {}
    errors[#errors + 1] = ("%s: containerd_version %s cannot run the kubelet of kubernetes_semver %s: Kubernetes "
      .. "v1.26 and later need containerd 1.6 or later (CRI v1); set containerd_version, containerd_url and "
      .. "containerd_sha256 to a release from https://github.com/containerd/containerd/releases")
      :format(src.where or src.file or src.layer or "config", cv, semver)
  end
  for _, p in ipairs({ "kubernetes.source_type", "cni.source_type" }) do
    if resolved[p] == nil or resolved[p] == "auto" then
      from(p, ("kubernetes_semver %s (pkgs.k8s.io has v1.%d and later)"):format(semver, M.PKG_MIN_MINOR))
    end
  end

  -- pkg below v1.24 needs a repository that still has the version: the
  -- shared pkgs.k8s.io one does not
  local minor = tonumber(semver:match("^v1%.(%d+)%."))
  if resolved["kubernetes.source_type"] == "pkg" and minor and minor < M.PKG_MIN_MINOR then
    local repo = resolved["distro.family"] == "debian" and "kubernetes.deb_repo" or "kubernetes.rpm_repo"
    local src = sources[repo]
    if src == nil or src.layer == "shared" or src.layer == "default" then
      errors[#errors + 1] = ("%s: kubernetes_source_type \"pkg\" with kubernetes_semver %s: pkgs.k8s.io starts at "
        .. "v1.%d; use kubernetes_source_type \"http\" (or \"auto\"), or set %s to a repository that has it")
        :format((sources["kubernetes.source_type"] or {}).file or "config", semver, M.PKG_MIN_MINOR, named(repo))
    end
  end

  local function check(path, ok, expected, against)
    local v = resolved[path]
    if not explicit(sources, path) or v == nil then
      from(path, against)
    elseif not ok(v) then
      local src = sources[path]
      errors[#errors + 1] = ("%s: %s %q does not match %s: expected %s (or leave %s unset: it is derived)")
        :format(src.where or src.file or src.layer, named(path), v, against, expected, named(path))
    end
  end
  local k = "kubernetes_semver " .. semver
  local plain = semver:match("^v(%d+%.%d+%.%d+)")
  check("kubernetes.series", function(v) return v == d["kubernetes.series"] end, d["kubernetes.series"], k)
  check("kubernetes.deb_version", function(v) return upstream(v) == plain end, d["kubernetes.deb_version"], k)
  check("kubernetes.rpm_version", function(v) return upstream(v) == plain end, d["kubernetes.rpm_version"], k)
  check("kubernetes.crictl_version", function() return true end, d["kubernetes.crictl_version"], k)
  check("cni.semver", function() return true end, d["cni.semver"], k)

  -- the CNI package versions follow the CNI version when that is set
  local cni = resolved["cni.semver"]
  local c = "kubernetes_cni_semver " .. cni
  if explicit(sources, "cni.semver") then
    d["cni.deb_version"] = d["cni.deb_version"] ~= "" and cni:gsub("^v", "") .. "-00" or ""
    d["cni.rpm_version"] = d["cni.rpm_version"] ~= "" and cni:gsub("^v", "") .. "-0" or ""
  else
    c = k
  end
  local function cni_ok(v) return v == "" or upstream(v) == cni:gsub("^v", "") or not explicit(sources, "cni.semver") end
  check("cni.deb_version", cni_ok, d["cni.deb_version"] ~= "" and d["cni.deb_version"] or "a matching version", c)
  check("cni.rpm_version", cni_ok, d["cni.rpm_version"] ~= "" and d["cni.rpm_version"] or "a matching version", c)
end

--- Value by path or image-builder variable name.
function Config:get(key)
  local path = path_of(key)
  if path then return self.values[path] end
  return self.extra[key]
end

--- The image-builder variable name of a path (or of a variable name: itself).
---@param key string
---@return string
function Config.var_name(_, key)
  local path = path_of(key)
  local f = path and schema.by_path[path]
  return f and f.var or key
end

--- The flat variable table roles and templates see: image-builder names,
--- values as Packer passed them (strings; booleans "true"/"false"; lists
--- space-joined; durations as written, "4h").
function Config:vars()
  local out = {}
  for _, f in ipairs(schema.fields) do
    local v = self.values[f.path]
    if f.var and v ~= nil then
      if f.type == "duration" then v = self:text(f.path)
      elseif type(v) == "boolean" then v = v and "true" or "false"
      elseif type(v) == "table" then v = table.concat(v, " ")
      else v = tostring(v) end
      out[f.var] = v
    end
  end
  for k, v in pairs(self.extra) do out[k] = tostring(v) end
  return out
end

--- A value as the user wrote it: a duration's text ("4h"; its value is
--- seconds), other values as they are.
---@param key string a schema path or variable name
function Config:text(key)
  local path = path_of(key)
  local t = path and self.texts and self.texts[path]
  if t then return t end
  local v = self:get(key)
  if path and type(v) == "number" and schema.by_path[path].type == "duration" then
    return tostring(math.tointeger(v) or v)
  end
  return v
end

-- A value as --explain shows it: secrets "****", durations as written.
local function shown_value(f, key, v)
  if (f and f.secret) or schema.is_secret_name(key) then return (v ~= nil and v ~= "") and "****" or v end
  return v
end

--- Where a value came from: {key, path, var, value, layer, file, where,
--- note, description, overrides = {{layer, file, where, value}, ...}}
--- (the layers it overrode, latest first; secret values shown as "****", a
--- duration as written). A known key without a value: layer "unset"; an
--- ignored image-builder variable: layer "ignored", with the note. An
--- unknown key: nil and a message with a "did you mean".
function Config:explain(key)
  local path = path_of(key)
  local src = path and self.sources[path] or self.extra_sources[key]
  local f = path and schema.by_path[path]
  if not src then
    local ig = self.ignored and self.ignored[key]
    if ig then
      return { key = key, var = key, layer = "ignored", file = ig.file, note = M.ignored(key) }
    end
    if f or M.extra_known(key) or M.ignored(key) then
      return { key = key, path = path, var = f and f.var or key, layer = "unset",
        note = not f and M.ignored(key) and ("ignored: " .. M.ignored(key)) or nil,
        description = f and f.description or M.extra_known(key) }
    end
    local hint = M.did_you_mean(key, self.recipe and self.recipe.fields.vars or nil)
    return nil, ("unknown key '%s'%s"):format(key, hint and (" (" .. hint .. ")") or "")
  end
  local overrides = {}
  for i, o in ipairs(src.overrides or {}) do
    local ov = o.value
    if f and f.type == "duration" and type(ov) == "number" then ov = tostring(math.tointeger(ov) or ov) end
    overrides[i] = { layer = o.layer, file = o.file, where = o.where, value = shown_value(f, key, ov) }
  end
  return {
    key = key, path = path, var = f and f.var or (not path and key) or nil,
    value = shown_value(f, key, self:text(key)), layer = src.layer, file = src.file, where = src.where,
    note = src.note, description = f and f.description or (not path and M.extra_known(key)) or nil,
    overrides = overrides,
  }
end

--- Registers secret values with the log so they never print. A value equal
--- to the public default (image-builder's "builder") is not a secret.
function Config:register_secrets()
  for _, f in ipairs(schema.fields) do
    local v = self.values[f.path]
    if f.secret and type(v) == "string" and v ~= "" and v ~= f.default then log.secret(v) end
  end
  for k, v in pairs(self.extra) do
    if schema.is_secret_name(k) and type(v) == "string" and v ~= "" then log.secret(v) end
    log.secret_urls(v)
  end
  for _, v in pairs(self.values) do log.secret_urls(v) end
end

return M
