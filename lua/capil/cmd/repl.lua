--- capil repl — a Lua prompt with the capil modules loaded and, with a
--- vSphere configuration, a live session bound to `vc`.
local repl = require("capil.repl")
local runtime = require("capil.core.runtime")
local cli = require("capil.cli")
local log = require("capil.sys.log")

-- The backends whose VMs live on a server ("vsphere or esx").
local function remote_names()
  return table.concat(require("capil.backend").with("remote"), " or ")
end

-- Opens the vSphere session the options describe, or nil when they name no
-- server and no backend was asked for.
local function vsphere_bindings(opts)
  local backend = require("capil.backend")
  local name = opts.backend
  if name and not (backend.known(name) and backend.get(name).traits.remote) then
    cli.fail(("repl: backend %s has no session to bind (%s)"):format(name, remote_names()), 2)
  end
  local asked = name or opts["var-file"] or opts.var or os.getenv("GOVC_URL")
  if not asked then return nil end
  local kind = name or "vsphere"
  local session = require("capil.vsphere.session")
  local s, serr = session.settings_from_vars({ backend = kind, var_files = opts["var-file"],
    vars = require("capil.build.loader").vars(opts) })
  if not s then cli.fail("repl: " .. serr, 2) end
  if not s.server and not name then return nil end
  local vc, err = session.connect(s, { kind = kind })
  if not vc then cli.fail(err, 1) end
  -- the vSphere modules, by topic (vsphere.deploy.import, vsphere.testvm.find_vm, ...)
  local vsphere = { backend = backend.get(kind) }
  for _, m in ipairs({ "session", "inventory", "datastore", "lease", "deploy", "testvm" }) do
    vsphere[m] = require("capil.vsphere." .. m)
  end
  local b = { vc = vc, vim25 = require("capil.vsphere.vim25"), vsphere = vsphere }
  local inv, ierr = vsphere.inventory.resolve(vc, s)
  if inv then b.inv = inv else log.warn("inventory not resolved (inv is unset): %s", ierr) end
  return b, ("connected to %s as %s (%s)"):format(vc.server, s.username,
    vc.about and vc.about.fullName or "vim25")
end

return {
  summary = "interactive Lua prompt with the capil modules, and `vc` for a vSphere session",
  usage = "repl [--no-history] [--backend vsphere|esx] [--var-file F] [--var K=V] [--insecure]",
  help = [[
Expressions print their values; statements run. Incomplete input continues
on the next line (prompt ">>"). Ctrl-C drops the current line, or stops the
running code and returns to the prompt; Ctrl-D leaves. Tab completes names
and table fields. History: $XDG_STATE_HOME/capil/history
(~/.local/state/capil/history). Input may be piped: `capil repl < script`.

With vSphere variables (--var-file vsphere.json, --var, or govc's GOVC_URL,
GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE) the session is opened first:
  vc                  the vim25 session: vc:call(method, this, args),
                      vc:find("/DC0/vm/name"), vc:props(ref, {"runtime.powerState"}),
                      vc:wait(ref, path, fn, timeout), vc:task(task)
  inv                 the resolved placement (datacenter, folder, pool, datastore, network)
  vim25               the client module
  vsphere             the vSphere modules: vsphere.deploy.import, vsphere.testvm.find_vm,
                      vsphere.inventory, .datastore, .lease, .session; vsphere.backend
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
    local bindings, hello = vsphere_bindings(opts)
    repl.run({
      history = opts["no-history"] and false or nil,
      bindings = bindings,
      words = bindings and bindings.vim25.methods() or nil,
      banner = ("capil %s (%s) — Ctrl-D to leave%s"):format(runtime.version, runtime.lua_version,
        hello and ("\n" .. hello .. "; try vc:props(vc:find(\"/<datacenter>/vm/<name>\"), {\"runtime.powerState\"})") or ""),
    })
    if bindings then bindings.vc:logout() end
    return 0
  end,
}
