--- capil repl — a Lua prompt with the capil modules loaded and, with a
--- vSphere configuration or after connect(), a live session bound to `vc`.
local repl = require("capil.repl")
local runtime = require("capil.core.runtime")
local cli = require("capil.cli")
local log = require("capil.sys.log")

-- The backends whose VMs live on a server ("vsphere or esx").
local function remote_names()
  return table.concat(require("capil.backend").with("remote"), " or ")
end

-- The backend the REPL's session is for, checked: --backend's (vsphere or
-- esx), else vsphere.
local function session_kind(opts)
  local backend = require("capil.backend")
  local name = opts.backend
  if name and not (backend.known(name) and backend.get(name).traits.remote) then
    cli.fail(("repl: backend %s has no session to bind (%s)"):format(name, remote_names()), 2)
  end
  return name or "vsphere"
end

-- The --var list of the command line, then `extra` (connect's table, by
-- image-builder variable name; `insecure` is insecure_connection), which
-- wins. Password values are secrets from here on.
local function session_vars(opts, extra)
  local vars = require("capil.build.loader").vars(opts)
  local keys = {}
  for k in pairs(extra or {}) do
    if type(k) ~= "string" then error("connect: variable names must be strings", 0) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = extra[k]
    if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
      error(("connect: %s must be a string, a number or a boolean, not a %s"):format(k, type(v)), 0)
    end
    if k:match("password") then log.secret(tostring(v)) end
    vars[#vars + 1] = (k == "insecure" and "insecure_connection" or k) .. "=" .. tostring(v)
  end
  return vars
end

-- Opens the vSphere session of the command line's settings and `extra`;
-- returns the REPL bindings (vc, inv, vim25, vsphere) and a line saying
-- where it is connected, or nil and why not (never the password).
local function open_session(opts, kind, extra)
  local backend = require("capil.backend")
  local session = require("capil.vsphere.session")
  local s, serr = session.settings_from_vars({ backend = kind, var_files = opts["var-file"],
    vars = session_vars(opts, extra) })
  if not s then return nil, serr end
  local vc, err = session.connect(s, { kind = kind })
  if not vc then return nil, err end
  -- the vSphere modules, by topic (vsphere.deploy.import, vsphere.testvm.find_vm, ...)
  local vsphere = { backend = backend.get(kind) }
  for _, m in ipairs({ "session", "inventory", "datastore", "lease", "deploy", "testvm", "rest", "library" }) do
    vsphere[m] = require("capil.vsphere." .. m)
  end
  local b = { vc = vc, vim25 = require("capil.vsphere.vim25"), vsphere = vsphere }
  local inv, ierr = vsphere.inventory.resolve(vc, s)
  if inv then b.inv = inv else log.warn("inventory not resolved (inv is unset): %s", ierr) end
  return b, ("connected to %s as %s (%s)"):format(vc.server, s.username,
    vc.about and vc.about.fullName or "vim25")
end

-- The session asked for on the command line (--backend, a var file, --var
-- or GOVC_URL naming a server), opened before the prompt. A server that
-- cannot be reached or refuses the login leaves a warning, not an exit:
-- connect() retries. Returns the bindings and the banner's line.
local function startup_session(opts, kind)
  local asked = opts.backend or opts["var-file"] or opts.var or os.getenv("GOVC_URL")
  if not asked then return nil end
  local s, serr = require("capil.vsphere.session").settings_from_vars({ backend = kind,
    var_files = opts["var-file"], vars = session_vars(opts) })
  if not s then cli.fail("repl: " .. serr, 2) end
  if not s.server and not opts.backend then return nil end
  local b, msg = open_session(opts, kind)
  if b then
    return b, msg .. '; try vc:props(vc:find("/<datacenter>/vm/<name>"), {"runtime.powerState"})'
  end
  log.warn("%s; not connected: connect() retries, connect{password = ...} over these settings", msg)
  return nil
end
return {
  summary = "interactive Lua prompt with the capil modules, and `vc` for a vSphere session",
  usage = "repl [--no-history] [--backend vsphere|esx] [--var-file F] [--var K=V] [--insecure]",
  help = [[
Expressions print their values; statements run; top-level locals
(`local x = 1`) stay for the next lines. Incomplete input continues on the
next line (prompt ">>"). Ctrl-C drops the current line, or stops the
running code and returns to the prompt; Ctrl-D leaves. Tab completes names
and table fields (no space after a table's name: `.` or `:` goes on). An
error prints its message; -v (--verbose) adds the traceback. History:
$XDG_STATE_HOME/capil/history (~/.local/state/capil/history). Input may be
piped: `capil repl < script` runs every line and exits 1 when one failed.

Modules are bound by short name (fs, proc, http, ssh, json, xml, hash, log,
cleanup, pretty). `help` lists what is bound; help(fs) a module's functions
with their signatures, help(fs.read) one function, from the doc comments;
help("CreateVM_Task") a vim25 method's parameters, help("VirtualMachineConfigSpec")
a vim25 type's fields.

With vSphere variables (--var-file vsphere.json, --var, or govc's GOVC_URL,
GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE) the session is opened first;
when the server cannot be reached or refuses the login, the reason is shown
and the prompt comes anyway. connect() opens it (again) later, with these
settings or with variables over them:
connect{vcenter_server = "vc.example.com", username = "u", password = "p"}.
  vc                  the vim25 session: vc:call(method, this, args),
                      vc:find("/DC0/vm/name"), vc:props(ref, {"runtime.powerState"}),
                      vc:wait(ref, path, fn, timeout), vc:task(task); help(vc) lists them
                      and the vim25 methods, help(vc, "PowerOnVM_Task") one
  inv                 the resolved placement (datacenter, folder, pool, datastore, network)
  vim25               the client module
  vsphere             the vSphere modules: vsphere.deploy.import, vsphere.testvm.find_vm,
                      vsphere.inventory, .datastore, .lease, .session; vsphere.backend;
                      vsphere.rest (a REST session: c = vsphere.session.rest(settings)
                      or vsphere.rest.connect{...}, c:call(method, path, body)) and
                      vsphere.library (content libraries: find_library(c, name),
                      lookup, publish, deploy_item, create_from_vm)
Method names complete with Tab (after vc: or inside vc:call("...)). Faults
print their type and message; the password is never shown.]],
  options = {
    { name = "no-history", help = "do not read or write the history file" },
    { name = "backend", short = "b", arg = "NAME", help = "vsphere or esx: open a session and bind vc" },
    { name = "var-file", arg = "FILE", multi = true, help = "JSON variables (vsphere.json)" },
    { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
    { name = "insecure", help = "do not verify the server's TLS certificate" },
  },
  run = function(opts)
    local kind = session_kind(opts)
    local bindings, hello = startup_session(opts, kind)
    local level = log.level()
    local env_vc
    local ok = repl.run({
      history = opts["no-history"] and false or nil,
      bindings = bindings,
      words = function(env) -- the vim25 method names, once a session is bound
        return rawget(env, "vc") and require("capil.vsphere.vim25").methods() or nil
      end,
      verbose = level == "debug" or level == "trace",
      connect = function(vars)
        local b, msg = open_session(opts, kind, vars)
        if b then env_vc = b.vc end
        return b, msg
      end,
      banner = ("capil %s (%s) — Ctrl-D to leave, help for what is bound%s"):format(runtime.version,
        runtime.lua_version, hello and ("\n" .. hello) or ""),
    })
    for _, vc in ipairs({ bindings and bindings.vc, env_vc }) do
      if vc and not vc.closed then vc:logout() end
    end
    return ok and 0 or 1
  end,
}
