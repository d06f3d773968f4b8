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
--- variable name (`iso_checksum`); unknown variables from var files are kept
--- as extra variables for roles. Every value remembers its layer and file.
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

local Config = {}
Config.__index = Config

-- Maps a key from a var file or --var to a schema path, or nil (extra var).
local function path_of(key)
  local f = schema.by_var[key] or schema.by_path[key]
  return f and f.path
end

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
  local raw, extra = {}, {}
  local function set(k, v)
    local p = path_of(k)
    if p then raw[p] = v else extra[k] = v end
  end
  local traits = traits_of(opts.backend)
  local base = traits.var_file and shared_file(opts, traits.var_file)
  if base and require("capil.sys.fs").exists(base) then
    local data, err = read_var_file(base)
    if not data then return nil, err end
    for k, v in pairs(data) do set(k, v) end
  end
  if traits.govc_env then
    local env, err = M.govc_env(getenv)
    if not env then return nil, err end
    for k, v in pairs(env) do set(k, v[1]) end
  end
  local files = M.packer_var_files(getenv("PACKER_VAR_FILES"))
  for _, f in ipairs(opts.var_files or {}) do files[#files + 1] = f end
  for _, path in ipairs(files) do
    local data, err = read_var_file(path)
    if not data then return nil, err end
    for k, v in pairs(data) do set(k, v) end
  end
  for _, kv in ipairs(opts.vars or {}) do
    local k, v = M.parse_var(kv)
    if not k then return nil, v end
    set(k, v)
  end
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

  local function set(key, raw, layer, file)
    local path = path_of(key)
    if raw == nil or (json.is_null and json.is_null(raw)) then return end
    if path then
      values[path] = raw
      sources[path] = { layer = layer, file = file, key = key }
    else
      extra[key] = raw
      extra_src[key] = { layer = layer, file = file, key = key }
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
      for k, v in pairs(data) do
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
        for k, x in pairs(v) do
          if type(k) == "string" then
            set(k, x, "recipe", recipe.sources[p])
          else
            errors[#errors + 1] = ("%s: vars: keys must be variable names, got %s (a list entry?)"):format(at,
              tostring(k))
          end
        end
      end
    else
      values[p] = v
      sources[p] = { layer = "recipe", file = recipe.sources[p], where = recipe.lines[p] }
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
      local keys = {}
      for k in pairs(data) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do set(k, data[k], "var-file", path) end
    end
  end

  -- 5. --var
  for _, kv in ipairs(opts.vars or {}) do
    local k, v = M.parse_var(kv)
    if not k then errors[#errors + 1] = v else set(k, v, "var", "--var") end
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
  if #errors > 0 then return nil, errors end

  local cfg = setmetatable({
    recipe = recipe, values = resolved, texts = texts, sources = sources, extra = extra, extra_sources = extra_src,
    backend = opts.backend,
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

--- Where a value came from: {key, path, var, value, layer, file} (secret
--- values shown as "****"; a duration as written).
function Config:explain(key)
  local path = path_of(key)
  local src = path and self.sources[path] or self.extra_sources[key]
  if not src then return nil, ("unknown key '%s'"):format(key) end
  local f = path and schema.by_path[path]
  local v = self:text(key)
  if (f and f.secret) or schema.is_secret_name(key) then v = (v ~= nil and v ~= "") and "****" or v end
  return {
    key = key, path = path, var = f and f.var or (not path and key) or nil,
    value = v, layer = src.layer, file = src.file, where = src.where, note = src.note,
    description = f and f.description,
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
