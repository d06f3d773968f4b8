--- capil.build.roles — provisioning roles as data (image-builder's Ansible roles).
---
--- A role is `recipes/roles/<name>.lua`, run in the sandbox (pure, instruction
--- budget), returning `function(ctx) return { step, ... } end`. `ctx` is
---   { vars = { <image-builder variable> = "string", ... },
---     os = { family = "debian"|"redhat"|"photon", distro = "ubuntu"|..., version = "20.04" },
---     builder = "qemu"|"vsphere"|"esx"|"workstation" }
--- Variables arrive as Packer passes them (strings, booleans "true"/"false");
--- one pair of surrounding double quotes, the quoting Ansible's key=value
--- `--extra-vars` strips (`"\"https://apt.kubernetes.io/ kubernetes-xenial\""`),
--- is stripped here too, so image-builder var files work unchanged.
---
--- Role files see, besides the pure standard library:
---   var(name [, default])  the variable as a string; an error when unset and no default
---   flag(name [, default]) "true"/"True"/"yes"/"1" → true, "false"/"no"/"0"/"" → false
---   words(name)            the variable split on whitespace (extra_debs, custom_role_names…)
---   quote(s)               POSIX shell single-quoting (capil.util.text.shell_quote)
---   base64_decode(s)       for containerd_additional_settings
---   download(url, dest)    shell text fetching url to dest (curl, else wget)
---
--- Loading resolves the plan: `template` steps become `copy` steps with the
--- rendered text (capil.util.template, ctx.vars), `upload`/`ansible` paths become
--- paths on this machine (relative ones against the recipes directory, the
--- parent of the roles directory the role came from; the file must exist),
--- and the proxy variables become the environment of shell steps. The
--- executor then walks a concrete list; nothing here touches a VM.
local sandbox = require("capil.build.sandbox")
local template = require("capil.util.template")
local hash = require("capil.sys.hash")
local shell_quote = require("capil.util.text").shell_quote

local M = {}

--- One provisioning step. Exactly one of shell, copy, upload, template,
--- reboot, ansible. Paths written in the guest get their parent directories
--- created; become (root via sudo) is the default.
---@class capil.build.roles.Step
---@field name string what the step does, shown in logs and errors
---@field shell? string POSIX sh script text run in the guest
---@field copy? {dest: string, content: string, mode?: string, owner?: string, source?: string} source: the template a rendered copy came from
---@field upload? {src: string, dest: string, mode?: string, owner?: string}
---@field template? {src: string, dest: string, mode?: string, owner?: string}
---@field reboot? true reboot the guest and wait for it
---@field ansible? {playbook: string, extra_vars?: table<string, string>}
---@field become? boolean run as root (default true)
---@field only_if? string shell test: run the step only when it exits 0
---@field unless? string shell test: skip the step when it exits 0
---@field env? table<string, string> environment of the step
---@field timeout? number seconds
---@field role? string set by capil: the role the step came from
---@field kind? string set by capil: shell|copy|upload|reboot|ansible

local KINDS = { "shell", "copy", "upload", "template", "reboot", "ansible" }
local COMMON = { name = true, become = true, only_if = true, unless = true, env = true, timeout = true }
local FILE_KEYS = {
  copy = { dest = "req", content = "req", mode = "opt", owner = "opt" },
  upload = { src = "req", dest = "req", mode = "opt", owner = "opt" },
  template = { src = "req", dest = "req", mode = "opt", owner = "opt" },
  ansible = { playbook = "req", extra_vars = "opt" },
}

local FAMILIES = { debian = true, redhat = true, photon = true }

-- ---------------------------------------------------------------------------
-- Context
-- ---------------------------------------------------------------------------

-- Ansible's key=value parser removes one level of double quotes; image-builder
-- var files carry them for values with spaces, so capil removes them too.
local function unquote(v)
  if type(v) == "string" and #v >= 2 and v:sub(1, 1) == '"' and v:sub(-1) == '"' then
    return v:sub(2, -2)
  end
  return v
end

--- Validates a context (misuse raises) and returns a private copy with the
--- variables unquoted and turned into strings.
---@param ctx {vars: table, os: {family: string, distro: string, version: string}, builder: string}
---@return table
function M.context(ctx)
  if type(ctx) ~= "table" then error("roles: ctx must be a table", 3) end
  if type(ctx.vars) ~= "table" then error("roles: ctx.vars must be a table", 3) end
  local os_ = ctx.os
  if type(os_) ~= "table" or not FAMILIES[os_.family] then
    error("roles: ctx.os.family must be debian, redhat or photon", 3)
  end
  if type(os_.distro) ~= "string" or type(os_.version) ~= "string" then
    error("roles: ctx.os.distro and ctx.os.version must be strings", 3)
  end
  if type(ctx.builder) ~= "string" then error("roles: ctx.builder must be a string", 3) end
  local vars = {}
  for k, v in pairs(ctx.vars) do
    if type(k) ~= "string" then error("roles: ctx.vars keys must be strings", 3) end
    local tv = type(v)
    if tv == "boolean" or tv == "number" then v = tostring(v)
    elseif tv ~= "string" then error(("roles: ctx.vars.%s must be a string, got %s"):format(k, tv), 3) end
    vars[k] = unquote(v)
  end
  return {
    vars = vars,
    os = { family = os_.family, distro = os_.distro, version = os_.version },
    builder = ctx.builder,
  }
end

local TRUE = { ["true"] = true, ["True"] = true, ["TRUE"] = true, yes = true, ["1"] = true }
local FALSE = { ["false"] = true, ["False"] = true, ["FALSE"] = true, no = true, ["0"] = true, [""] = true }

--- Parses a Packer/Ansible boolean string; nil for anything else.
---@param v any
---@return boolean|nil
function M.truthy(v)
  if v == true or v == false then return v end
  if TRUE[v] then return true end
  if FALSE[v] then return false end
  return nil
end

--- The helpers a role or check file can call (var, flag, words, quote,
--- base64_decode, download), bound to one context's variables.
---@param vars table<string, string>
---@return table<string, function>
function M.helpers(vars)
  local h = {}
  function h.var(name, default)
    local v = vars[name]
    if v == nil then
      if default == nil then error(("variable '%s' is not set"):format(tostring(name)), 2) end
      return default
    end
    return v
  end
  function h.flag(name, default)
    local v = vars[name]
    if v == nil then return default == true end
    local b = M.truthy(v)
    if b == nil then error(("variable '%s' must be true or false, got '%s'"):format(name, v), 2) end
    return b
  end
  function h.words(name)
    local t = {}
    for w in (vars[name] or ""):gmatch("%S+") do t[#t + 1] = w end
    return t
  end
  h.quote = shell_quote
  function h.base64_decode(s)
    local out, err = hash.base64_decode(s)
    if not out then error("base64_decode: " .. tostring(err), 2) end
    return out
  end
  function h.download(url, dest)
    local q, d = shell_quote(url), shell_quote(dest)
    return ("if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 5 -o %s %s; "
      .. "else wget -q -O %s %s; fi"):format(d, q, d, q)
  end
  return h
end

-- ---------------------------------------------------------------------------
-- Validation
-- ---------------------------------------------------------------------------

local function label(file, i, step)
  local name = type(step) == "table" and type(step.name) == "string" and step.name
  return name and ("%s: step %d (%s)"):format(file, i, name) or ("%s: step %d"):format(file, i)
end

local function check_mode(where, mode)
  if mode == nil then return true end
  if type(mode) ~= "string" or not (mode:match("^0?[0-7][0-7][0-7]$") or mode:match("^[0-7][0-7][0-7][0-7]$")) then
    return nil, ("%s: 'mode' must be an octal string like \"0644\", got %s"):format(where,
      type(mode) == "string" and ("'" .. mode .. "'") or type(mode))
  end
  return true
end

local function check_owner(where, owner)
  if owner == nil then return true end
  local name = "[%w_][%w_%.%-]*"
  local ok = type(owner) == "string"
    and (owner:match("^" .. name .. "$") or owner:match("^" .. name .. ":" .. name .. "$"))
  if not ok then
    return nil, ("%s: 'owner' must be \"user\" or \"user:group\", got %s"):format(where,
      type(owner) == "string" and ("'" .. owner .. "'") or type(owner))
  end
  return true
end

local function check_path(where, key, p, absolute)
  if type(p) ~= "string" or p == "" then
    return nil, ("%s: '%s' must be a non-empty string, got %s"):format(where, key, type(p))
  end
  if p:find("[%z\n]") then return nil, ("%s: '%s' contains a newline or NUL"):format(where, key) end
  if absolute and p:sub(1, 1) ~= "/" then
    return nil, ("%s: '%s' must be an absolute path in the guest, got '%s'"):format(where, key, p)
  end
  return true
end

local function check_env(where, env)
  if type(env) ~= "table" then return nil, ("%s: 'env' must be a table, got %s"):format(where, type(env)) end
  for k, v in pairs(env) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      return nil, ("%s: 'env' key %s is not a variable name"):format(where, tostring(k))
    end
    if type(v) ~= "string" then
      return nil, ("%s: 'env.%s' must be a string, got %s"):format(where, k, type(v))
    end
  end
  return true
end

-- Checks the fields of a copy/upload/template/ansible table.
local function check_sub(where, kind, t)
  if type(t) ~= "table" then return nil, ("%s: '%s' must be a table, got %s"):format(where, kind, type(t)) end
  local spec = FILE_KEYS[kind]
  for k in pairs(t) do
    if not spec[k] then return nil, ("%s: unknown key '%s.%s'"):format(where, kind, tostring(k)) end
  end
  for k, need in pairs(spec) do
    if need == "req" and t[k] == nil then return nil, ("%s: missing '%s.%s'"):format(where, kind, k) end
  end
  local ok, err
  if kind == "ansible" then
    ok, err = check_path(where, "ansible.playbook", t.playbook, false)
    if ok and t.extra_vars ~= nil then
      if type(t.extra_vars) ~= "table" then
        return nil, ("%s: 'ansible.extra_vars' must be a table, got %s"):format(where, type(t.extra_vars))
      end
      for k, v in pairs(t.extra_vars) do
        if type(k) ~= "string" or type(v) ~= "string" then
          return nil, ("%s: 'ansible.extra_vars' must map strings to strings"):format(where)
        end
      end
    end
    return ok, err
  end
  ok, err = check_path(where, kind .. ".dest", t.dest, true)
  if ok and t.src ~= nil then ok, err = check_path(where, kind .. ".src", t.src, false) end
  if ok and kind == "copy" and type(t.content) ~= "string" then
    ok, err = nil, ("%s: 'copy.content' must be a string, got %s"):format(where, type(t.content))
  end
  if ok then ok, err = check_mode(where, t.mode) end
  if ok then ok, err = check_owner(where, t.owner) end
  return ok, err
end

--- Validates one step as written in a role file. Returns its kind, or nil
--- and a message naming the file, the step's index and name, and the field.
---@param step any
---@param file string
---@param i integer
---@return string|nil kind, string? err
function M.validate(step, file, i)
  local where = label(file, i, step)
  if type(step) ~= "table" then return nil, ("%s: a step must be a table, got %s"):format(where, type(step)) end
  if step.name == nil then return nil, where .. ": missing 'name'" end
  if type(step.name) ~= "string" or step.name == "" then
    return nil, ("%s: 'name' must be a non-empty string, got %s"):format(where, type(step.name))
  end
  local kind
  for k in pairs(step) do
    if type(k) ~= "string" then return nil, ("%s: unexpected list item or key %s"):format(where, tostring(k)) end
    local is_kind = false
    for _, kk in ipairs(KINDS) do if k == kk then is_kind = true end end
    if is_kind then
      if kind then return nil, ("%s: has both '%s' and '%s' (one kind per step)"):format(where, kind, k) end
      kind = k
    elseif not COMMON[k] then
      return nil, ("%s: unknown key '%s'"):format(where, k)
    end
  end
  if not kind then return nil, where .. ": needs one of " .. table.concat(KINDS, ", ") end
  local v = step[kind]
  local ok, err = true, nil
  if kind == "shell" then
    if type(v) ~= "string" or v == "" then
      ok, err = nil, ("%s: 'shell' must be a non-empty string, got %s"):format(where, type(v))
    end
  elseif kind == "reboot" then
    if v ~= true then ok, err = nil, ("%s: 'reboot' must be true, got %s"):format(where, tostring(v)) end
  else
    ok, err = check_sub(where, kind, v)
  end
  if not ok then return nil, err end
  if step.become ~= nil and type(step.become) ~= "boolean" then
    return nil, ("%s: 'become' must be a boolean, got %s"):format(where, type(step.become))
  end
  for _, k in ipairs({ "only_if", "unless" }) do
    if step[k] ~= nil and (type(step[k]) ~= "string" or step[k] == "") then
      return nil, ("%s: '%s' must be a non-empty string (a shell test), got %s"):format(where, k, type(step[k]))
    end
  end
  if step.timeout ~= nil and (type(step.timeout) ~= "number" or step.timeout <= 0) then
    return nil, ("%s: 'timeout' must be a positive number of seconds, got %s"):format(where, tostring(step.timeout))
  end
  if step.env ~= nil then
    ok, err = check_env(where, step.env)
    if not ok then return nil, err end
  end
  return kind
end

-- ---------------------------------------------------------------------------
-- Loading and resolving
-- ---------------------------------------------------------------------------

-- A file or directory that is there (opening a FIFO to find out would block).
local function readable(path)
  local st = require("capil.sys.fs").stat(path)
  return st ~= nil and (st.type == "file" or st.type == "directory")
end

--- The largest template a role renders.
M.MAX_TEMPLATE = 4 * 1024 * 1024

local function read_file(path)
  return require("capil.sys.fs").read_file(path, { max = M.MAX_TEMPLATE })
end

local function dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  return d == "" and "/" or d
end

local function resolve_path(base, p)
  if p:sub(1, 1) == "/" then return p end
  return base .. "/" .. p
end

-- Finds `<dir>/<name>.lua` in the search directories.
local function find_role(name, dirs)
  for _, d in ipairs(dirs) do
    local p = d .. "/" .. name .. ".lua"
    if readable(p) then return p, d end
  end
  return nil
end

local function copy_table(t)
  local c = {}
  for k, v in pairs(t) do c[k] = type(v) == "table" and copy_table(v) or v end
  return c
end

-- The play-level environment of image-builder (node.yml): proxies for every
-- command, under both spellings (curl reads only the lower-case http_proxy).
local function proxy_env(vars)
  local env = {}
  for _, k in ipairs({ "http_proxy", "https_proxy", "no_proxy" }) do
    local v = vars[k]
    if v and v ~= "" then
      env[k] = v
      env[k:upper()] = v
    end
  end
  return env
end

-- Turns a validated step into its concrete plan form.
local function resolve(step, kind, ctx, file, i, base, penv)
  local where = label(file, i, step)
  local out = copy_table(step)
  out.become = step.become ~= false
  if kind == "template" then
    local src = resolve_path(base, step.template.src)
    local text, err = read_file(src)
    if not text then return nil, ("%s: template '%s': %s"):format(where, step.template.src, err) end
    local rendered, rerr = template.render(text, ctx.vars, step.template.src)
    if not rendered then return nil, where .. ": " .. rerr end
    out.template = nil
    out.copy = { dest = step.template.dest, content = rendered, mode = step.template.mode,
      owner = step.template.owner, source = src }
    kind = "copy"
  elseif kind == "upload" then
    local src = resolve_path(base, step.upload.src)
    if not readable(src) then return nil, ("%s: upload source '%s' not found"):format(where, src) end
    out.upload.src = src
  elseif kind == "ansible" then
    local pb = resolve_path(base, step.ansible.playbook)
    if not readable(pb) then return nil, ("%s: playbook '%s' not found"):format(where, pb) end
    out.ansible.playbook = pb
    out.ansible.extra_vars = out.ansible.extra_vars or {}
  end
  if (kind == "shell" or kind == "ansible") and next(penv) then
    local env = copy_table(penv)
    for k, v in pairs(step.env or {}) do env[k] = v end
    out.env = env
  end
  out.kind = kind
  return out
end

--- Loads role `name` for `ctx` and returns its resolved steps (each with
--- `role = name` and `kind`), or nil and an error naming the role file.
---@param name string
---@param ctx table see capil.build.roles.context
---@param opts? {dirs?: string[], budget?: integer}
---@return capil.build.roles.Step[]|nil, string?
function M.load(name, ctx, opts)
  opts = opts or {}
  if type(name) ~= "string" then error("roles.load: name must be a string", 2) end
  local dirs = opts.dirs or { "recipes/roles" }
  if not name:match("^[%w_][%w_%-]*$") then
    return nil, ("roles: invalid role name '%s' (letters, digits, '_' and '-')"):format(name)
  end
  local c = M.context(ctx)
  local file, dir = find_role(name, dirs)
  if not file then
    return nil, ("roles: role '%s' not found in %s"):format(name, table.concat(dirs, ", "))
  end
  local env = sandbox.environment(M.helpers(c.vars))
  local fn, err = sandbox.run_file(file, env, { budget = opts.budget, code = true })
  if fn == nil and err then return nil, err end
  if type(fn) ~= "function" then
    return nil, ("%s: a role file must return function(ctx), got %s"):format(file, type(fn))
  end
  local list
  list, err = sandbox.call(fn, file, opts.budget, copy_table(c))
  if list == nil then return nil, err or (file .. ": role function returned nothing") end
  if type(list) ~= "table" then
    return nil, ("%s: the role function must return a list of steps, got %s"):format(file, type(list))
  end
  local n = 0
  for k in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 then
      return nil, ("%s: the role function must return a list of steps, found key '%s'"):format(file, tostring(k))
    end
    if k > n then n = k end
  end
  local base, penv = dirname(dir), proxy_env(c.vars)
  local steps = {}
  for i = 1, n do
    local step = list[i]
    if step == nil then
      return nil, ("%s: step %d is nil (use false to leave a step out)"):format(file, i)
    end
    if step ~= false then
      local kind, verr = M.validate(step, file, i)
      if not kind then return nil, verr end
      local r, rerr = resolve(step, kind, c, file, i, base, penv)
      if not r then return nil, rerr end
      r.role = name
      steps[#steps + 1] = r
    end
  end
  return steps
end

--- Loads roles in order and returns one flat list of steps.
---@param names string[]
---@param ctx table
---@param opts? {dirs?: string[], budget?: integer}
---@return capil.build.roles.Step[]|nil, string?
function M.expand(names, ctx, opts)
  if type(names) ~= "table" then error("roles.expand: names must be a list", 2) end
  local all = {}
  for _, name in ipairs(names) do
    local steps, err = M.load(name, ctx, opts)
    if not steps then return nil, err end
    for _, s in ipairs(steps) do all[#all + 1] = s end
  end
  return all
end

--- image-builder's node.yml order: setup (node's dependency), node,
--- providers, containerd, kubernetes, the custom roles, sysprep. Custom
--- roles come from `custom_role_names` (space-separated); `custom_role`
--- "false" turns them off, "true" or unset leaves them on.
--- providers always runs: every capil image is an OVA for vSphere, so the
--- VMware bits (open-vm-tools, guestinfo datasource) are wanted from a QEMU
--- build too (image-builder ran them only for vmware/vsphere builders).
---@param vars table<string, any>
---@return string[]
function M.default_order(vars)
  vars = vars or {}
  local order = { "setup", "node", "providers", "containerd", "kubernetes" }
  local enabled = M.truthy(unquote(vars.custom_role))
  if enabled ~= false then
    for w in tostring(unquote(vars.custom_role_names) or ""):gmatch("%S+") do order[#order + 1] = w end
  end
  order[#order + 1] = "sysprep"
  return order
end

return M
