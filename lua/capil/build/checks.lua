--- capil.build.checks — image checks run in the guest after provisioning (what
--- image-builder did with goss). A check file `recipes/checks/<name>.lua`
--- returns `function(ctx) return { check, ... } end` (same sandbox, context
--- and helpers as roles; see capil.build.roles). Each check compiles to one POSIX
--- sh command for the guest's OS family; the caller runs it (as root unless
--- the check says `become = false`: containerd's socket, crictl and many
--- files need root, and goss ran with use_sudo) and
--- hands `{code, stdout, stderr}` to `evaluate`, which says pass or fail with
--- "expected X, got Y". Every value put into a command goes through
--- `capil.util.text.shell_quote` (the `quote` helper of role and check files).
local roles = require("capil.build.roles")
local sandbox = require("capil.build.sandbox")
local quote = require("capil.util.text").shell_quote

local M = {}

--- One check. Exactly one of command, service, package, absent_package,
--- kernel_param, file.
---@class capil.build.checks.Check
---@field name? string shown in the report (a default is derived)
---@field command? string shell command; with exit (default 0), stdout_matches (Lua pattern), stdout_lines (exact lines)
---@field exit? integer
---@field stdout_matches? string
---@field stdout_lines? string[]
---@field service? string systemd unit; with enabled and/or running (booleans)
---@field enabled? boolean
---@field running? boolean
---@field package? string installed, at `version` when given (deb version, or rpm VERSION-RELEASE or VERSION)
---@field version? string
---@field absent_package? string must not be installed
---@field kernel_param? string sysctl key; with value
---@field value? string
---@field file? string absolute path; with exists (default true), mode ("0644"), owner ("root:root"), contains (one line of text)
---@field exists? boolean
---@field mode? string
---@field owner? string
---@field contains? string
---@field timeout? number seconds
---@field become? boolean run as root through `sudo -n` (default true, as goss ran with use_sudo); false: as the build user

local KINDS = { "command", "service", "package", "absent_package", "kernel_param", "file" }
local KEYS = {
  command = { exit = "number", stdout_matches = "string", stdout_lines = "table" },
  service = { enabled = "boolean", running = "boolean" },
  package = { version = "string" },
  absent_package = {},
  kernel_param = { value = "string" },
  file = { exists = "boolean", mode = "string", owner = "string", contains = "string" },
}
local COMMON = { name = "string", timeout = "number", become = "boolean" }

-- ---------------------------------------------------------------------------
-- Patterns
-- ---------------------------------------------------------------------------

--- Escapes Lua pattern magic characters, so `stdout_matches` can hold a
--- literal version string.
---@param s string
---@return string
function M.escape_pattern(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- ---------------------------------------------------------------------------
-- Validation and names
-- ---------------------------------------------------------------------------

local function kind_of(check)
  for _, k in ipairs(KINDS) do
    if check[k] ~= nil then return k end
  end
end

-- A default name reading like goss's report lines.
local function default_name(check, kind)
  if kind == "command" then return "command: " .. check.command end
  if kind == "service" then return "service " .. check.service end
  if kind == "package" then
    return "package " .. check.package .. (check.version and (" " .. check.version) or "")
  end
  if kind == "absent_package" then return "package " .. check.absent_package .. " absent" end
  if kind == "kernel_param" then return "kernel-param " .. check.kernel_param end
  return "file " .. check.file
end

--- Validates a check as written; returns its kind or nil and an error
--- naming the file and the check's index (and name when it has one).
---@param check any
---@param file string
---@param i integer
---@return string|nil kind, string? err
function M.validate(check, file, i)
  local where = ("%s: check %d"):format(file, i)
  if type(check) ~= "table" then return nil, ("%s: a check must be a table, got %s"):format(where, type(check)) end
  if type(check.name) == "string" then where = where .. " (" .. check.name .. ")" end
  local kind
  for k in pairs(check) do
    local is_kind = false
    for _, kk in ipairs(KINDS) do if k == kk then is_kind = true end end
    if is_kind then
      if kind then return nil, ("%s: has both '%s' and '%s' (one kind per check)"):format(where, kind, k) end
      kind = k
    end
  end
  if not kind then return nil, where .. ": needs one of " .. table.concat(KINDS, ", ") end
  local subject = check[kind]
  if type(subject) ~= "string" or subject == "" or subject:find("[%z\n]") then
    return nil, ("%s: '%s' must be a non-empty one-line string"):format(where, kind)
  end
  for k, v in pairs(check) do
    if k ~= kind then
      local want = KEYS[kind][k] or COMMON[k]
      if not want then return nil, ("%s: unknown key '%s' for a %s check"):format(where, tostring(k), kind) end
      if type(v) ~= want then
        return nil, ("%s: '%s' must be a %s, got %s"):format(where, k, want, type(v))
      end
    end
  end
  if kind == "package" or kind == "absent_package" then
    if not subject:match("^[%w][%w%.%+_:%-]*$") then
      return nil, ("%s: '%s' is not a package name"):format(where, subject)
    end
  elseif kind == "service" then
    if not subject:match("^[%w][%w_%.@:%-]*$") then
      return nil, ("%s: '%s' is not a unit name"):format(where, subject)
    end
    if check.enabled == nil and check.running == nil then
      return nil, where .. ": a service check needs 'enabled' or 'running'"
    end
  elseif kind == "kernel_param" then
    if check.value == nil then return nil, where .. ": missing 'value'" end
    if not subject:match("^[%w_%-]+[%w_%.%-]*$") or subject:find("..", 1, true) then
      return nil, ("%s: '%s' is not a kernel parameter name"):format(where, subject)
    end
  elseif kind == "file" then
    if subject:sub(1, 1) ~= "/" then
      return nil, ("%s: 'file' must be an absolute path, got '%s'"):format(where, subject)
    end
    if check.mode and not check.mode:match("^0?[0-7][0-7][0-7][0-7]?$") then
      return nil, ("%s: 'mode' must be an octal string like \"0644\", got '%s'"):format(where, check.mode)
    end
    if check.contains and (check.contains == "" or check.contains:find("[%z\n]")) then
      return nil, where .. ": 'contains' must be one non-empty line of text"
    end
  elseif kind == "command" then
    if check.exit and math.type(check.exit) ~= "integer" then return nil, where .. ": 'exit' must be an integer" end
    for j, line in ipairs(check.stdout_lines or {}) do
      if type(line) ~= "string" then return nil, ("%s: 'stdout_lines[%d]' must be a string"):format(where, j) end
    end
  end
  if check.timeout and check.timeout <= 0 then return nil, where .. ": 'timeout' must be positive" end
  return kind
end

-- ---------------------------------------------------------------------------
-- Loading
-- ---------------------------------------------------------------------------

--- Loads the check files (default `recipes/checks/node.lua`) for `ctx`
--- and returns the validated checks, each with `name` and `kind`.
---@param ctx table see capil.build.roles.context
---@param opts? {files?: string[], budget?: integer}
---@return capil.build.checks.Check[]|nil, string?
function M.load(ctx, opts)
  opts = opts or {}
  local c = roles.context(ctx)
  local out = {}
  for _, file in ipairs(opts.files or { "recipes/checks/node.lua" }) do
    local helpers = roles.helpers(c.vars)
    helpers.escape_pattern = M.escape_pattern
    local fn, err = sandbox.run_file(file, sandbox.environment(helpers), { budget = opts.budget, code = true })
    if fn == nil and err then return nil, err end
    if type(fn) ~= "function" then
      return nil, ("%s: a check file must return function(ctx), got %s"):format(file, type(fn))
    end
    local list
    list, err = sandbox.call(fn, file, opts.budget, c)
    if type(list) ~= "table" then
      return nil, err or ("%s: the check function must return a list of checks, got %s"):format(file, type(list))
    end
    local n = 0
    for k in pairs(list) do
      if math.type(k) ~= "integer" or k < 1 then
        return nil, ("%s: the check function must return a list, found key '%s'"):format(file, tostring(k))
      end
      if k > n then n = k end
    end
    for i = 1, n do
      local check = list[i]
      if check == nil then return nil, ("%s: check %d is nil (use false to leave a check out)"):format(file, i) end
      if check ~= false then
        local kind, verr = M.validate(check, file, i)
        if not kind then return nil, verr end
        local copy = {}
        for k, v in pairs(check) do copy[k] = v end
        copy.kind = kind
        copy.name = check.name or default_name(check, kind)
        -- how it runs, spelled out so the plan shows it
        copy.become = check.become ~= false
        copy.run_as = copy.become and "root" or (c.vars.ssh_username or "the build user")
        out[#out + 1] = copy
      end
    end
  end
  return out
end

-- ---------------------------------------------------------------------------
-- Compiling to shell
-- ---------------------------------------------------------------------------

-- Package queries print one "installed <version>" line per installed
-- version and nothing else, whatever the package manager.
local function package_query(name, family)
  local q = quote(name)
  if family == "debian" then
    return ("dpkg-query -W -f='${Status}|${Version}\\n' %s 2>/dev/null"
      .. " | awk -F'|' '$1 ~ / installed$/ { print \"installed \" $2 }'"):format(q)
  end
  -- Red Hat and Photon (tdnf keeps its database in rpm)
  return ("rpm -q --qf 'installed %%{VERSION}-%%{RELEASE}\\n' %s 2>/dev/null"):format(q)
end

--- The shell command that gathers what `check` needs on an OS family.
--- Commands other than `command` checks always exit 0 and print
--- `key=value` facts (or "installed <version>" lines) for `evaluate`.
---@param check capil.build.checks.Check
---@param os {family: string}
---@return string
function M.compile(check, os)
  local kind = check.kind or kind_of(check)
  local family = type(os) == "table" and os.family or os
  if family ~= "debian" and family ~= "redhat" and family ~= "photon" then
    error("checks.compile: os.family must be debian, redhat or photon", 2)
  end
  if kind == "command" then
    return check.command
  elseif kind == "service" then
    local u = quote(check.service)
    return ("printf 'enabled=%%s\\n' \"$(systemctl is-enabled %s 2>/dev/null)\"; "
      .. "printf 'active=%%s\\n' \"$(systemctl is-active %s 2>/dev/null)\""):format(u, u)
  elseif kind == "package" or kind == "absent_package" then
    return package_query(check[kind], family)
  elseif kind == "kernel_param" then
    -- /proc/sys directly: minimal systems have no sysctl (procps)
    return "cat " .. quote("/proc/sys/" .. check.kernel_param:gsub("%.", "/"))
  elseif kind == "file" then
    local f = quote(check.file)
    local parts = {
      ("if [ -e %s ]; then echo exists=yes; else echo exists=no; exit 0; fi"):format(f),
    }
    if check.mode or check.owner then
      parts[#parts + 1] = ("stat -c 'mode=%%a owner=%%U:%%G' %s"):format(f)
    end
    if check.contains then
      parts[#parts + 1] = ("if grep -qF -e %s %s; then echo contains=yes; else echo contains=no; fi")
        :format(quote(check.contains), f)
    end
    return table.concat(parts, "; ")
  end
  error("checks.compile: not a check (no kind)", 2)
end

-- ---------------------------------------------------------------------------
-- Evaluating results
-- ---------------------------------------------------------------------------

local ENABLED = { enabled = true, ["enabled-runtime"] = true, static = true, alias = true,
  indirect = true, generated = true }

local function lines_of(s)
  local t = {}
  for line in (s or ""):gmatch("[^\n]*") do
    line = line:gsub("\r$", "")
    if line:match("%S") then t[#t + 1] = line end
  end
  return t
end

local function facts(stdout)
  local t = {}
  for k, v in (stdout or ""):gmatch("([%w_]+)=(%S*)") do t[k] = v end
  return t
end

local function show(s)
  s = (s or ""):gsub("%s+$", "")
  if s == "" then return "nothing" end
  if #s > 200 then s = s:sub(1, 200) .. "…" end
  return "'" .. s .. "'"
end

local function installed_versions(stdout)
  local v = {}
  for _, line in ipairs(lines_of(stdout)) do
    local ver = line:match("^installed (%S+)$")
    if ver then v[#v + 1] = ver end
  end
  return v
end

local function eval_command(c, r)
  local want = c.exit or 0
  if r.code ~= want then
    local err = show(r.stderr)
    return false, ("expected exit status %d, got %d%s"):format(want, r.code,
      err ~= "nothing" and (" (stderr " .. err .. ")") or "")
  end
  if c.stdout_matches and not (r.stdout or ""):find(c.stdout_matches) then
    return false, ("expected stdout matching '%s', got %s"):format(c.stdout_matches, show(r.stdout))
  end
  if c.stdout_lines then
    local got = lines_of(r.stdout)
    if table.concat(got, "\n") ~= table.concat(c.stdout_lines, "\n") then
      return false, ("expected stdout lines [%s], got [%s]"):format(table.concat(c.stdout_lines, ", "),
        table.concat(got, ", "))
    end
  end
  return true, ("exit status %d"):format(r.code)
end

local function eval_service(c, r)
  local f = facts(r.stdout)
  local enabled_state, active = f.enabled or "", f.active or ""
  local problems = {}
  if c.enabled ~= nil then
    local is = ENABLED[enabled_state] == true
    if is ~= c.enabled then
      problems[#problems + 1] = ("expected %s %s, got %s"):format(c.service,
        c.enabled and "enabled" or "not enabled", enabled_state ~= "" and enabled_state or "no unit")
    end
  end
  if c.running ~= nil then
    local is = active == "active"
    if is ~= c.running then
      problems[#problems + 1] = ("expected %s %s, got %s"):format(c.service,
        c.running and "running" or "not running", active ~= "" and active or "no unit")
    end
  end
  if #problems > 0 then return false, table.concat(problems, "; ") end
  return true, ("%s %s, %s"):format(c.service, enabled_state ~= "" and enabled_state or "no unit",
    active ~= "" and active or "no unit")
end

-- A version matches a line exactly, or the line's upstream part when the
-- expected version has no release ("1.16.14" against rpm "1.16.14-0").
local function version_matches(want, have)
  if want == have then return true end
  return not want:find("-", 1, true) and have:match("^(.*)%-[^-]*$") == want
end

local function eval_package(c, r)
  local versions = installed_versions(r.stdout)
  if c.kind == "absent_package" or (c.absent_package and not c.package) then
    local name = c.absent_package
    if #versions > 0 then
      return false, ("expected %s not installed, got %s"):format(name, table.concat(versions, ", "))
    end
    return true, name .. " not installed"
  end
  if #versions == 0 then return false, ("expected %s installed, got not installed"):format(c.package) end
  if c.version then
    for _, v in ipairs(versions) do
      if version_matches(c.version, v) then return true, c.package .. " " .. v end
    end
    return false, ("expected %s %s, got %s"):format(c.package, c.version, table.concat(versions, ", "))
  end
  return true, c.package .. " " .. table.concat(versions, ", ")
end

local function norm_ws(s)
  return ((s or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

local function eval_kernel_param(c, r)
  if r.code ~= 0 then
    return false, ("expected %s = %s, got no such parameter%s"):format(c.kernel_param, c.value,
      show(r.stderr) ~= "nothing" and (" (" .. show(r.stderr) .. ")") or "")
  end
  local got = norm_ws(r.stdout)
  if got ~= norm_ws(c.value) then
    return false, ("expected %s = %s, got %s"):format(c.kernel_param, c.value, got)
  end
  return true, c.kernel_param .. " = " .. got
end

local function norm_mode(m)
  m = m:gsub("^0+", "")
  return ("%04d"):format(tonumber(m ~= "" and m or "0"))
end

local function eval_file(c, r)
  local f = facts(r.stdout)
  local want_exists = c.exists ~= false
  if (f.exists == "yes") ~= want_exists then
    return false, ("expected %s %s, got %s"):format(c.file, want_exists and "to exist" or "absent",
      f.exists == "yes" and "present" or (f.exists == "no" and "missing" or ("output " .. show(r.stdout))))
  end
  if not want_exists then return true, c.file .. " absent" end
  local problems = {}
  if c.mode and (not f.mode or norm_mode(f.mode) ~= norm_mode(c.mode)) then
    problems[#problems + 1] = ("expected mode %s, got %s"):format(norm_mode(c.mode),
      f.mode and norm_mode(f.mode) or "nothing")
  end
  if c.owner then
    local want = c.owner:find(":", 1, true) and c.owner or nil
    local got = f.owner or ""
    local ok = want and got == want or got:match("^([^:]*)") == c.owner
    if not ok then
      problems[#problems + 1] = ("expected owner %s, got %s"):format(c.owner, got ~= "" and got or "nothing")
    end
  end
  if c.contains and f.contains ~= "yes" then
    problems[#problems + 1] = ("expected %s to contain '%s', got no such line"):format(c.file, c.contains)
  end
  if #problems > 0 then return false, table.concat(problems, "; ") end
  return true, c.file .. " ok"
end

local EVAL = {
  command = eval_command, service = eval_service, package = eval_package,
  absent_package = eval_package, kernel_param = eval_kernel_param, file = eval_file,
}

--- Judges a check from the result of running its compiled command:
--- `{code, stdout, stderr}` (capil.sys.proc.run's shape; `timeout = true` or a
--- `signal` fail the check). Returns `{ok, name, detail}`.
---@param check capil.build.checks.Check
---@param result {code?: integer, stdout?: string, stderr?: string, signal?: integer, timeout?: boolean}
---@return {ok: boolean, name: string, detail: string}
function M.evaluate(check, result)
  local kind = check.kind or kind_of(check)
  local fn = EVAL[kind]
  if not fn then error("checks.evaluate: not a check (no kind)", 2) end
  if type(result) ~= "table" then error("checks.evaluate: result must be a table", 2) end
  local name = check.name or default_name(check, kind)
  if result.timeout then return { ok = false, name = name, detail = "timed out" } end
  if result.signal then
    return { ok = false, name = name, detail = ("killed by signal %d"):format(result.signal) }
  end
  local c = check
  if not c.kind then
    c = {}
    for k, v in pairs(check) do c[k] = v end
    c.kind = kind
  end
  local ok, detail = fn(c, { code = result.code or 0, stdout = result.stdout or "", stderr = result.stderr or "" })
  return { ok = ok, name = name, detail = detail }
end

--- Summarises evaluated results: all passed?, and the failures.
---@param results {ok: boolean, name: string, detail: string}[]
---@return boolean all_ok, {ok: boolean, name: string, detail: string}[] failures
function M.summary(results)
  local failed = {}
  for _, r in ipairs(results) do
    if not r.ok then failed[#failed + 1] = r end
  end
  return #failed == 0, failed
end

return M
