--- capil repl — a Lua prompt with the capil modules loaded.
local repl = require("capil.repl")
local host = require("capil.core.host")

return {
  summary = "interactive Lua prompt with the capil modules (fs, proc, http, ssh, json, xml, hash, log)",
  usage = "repl [--no-history]",
  help = [[
Expressions print their values; statements run. Incomplete input continues
on the next line (prompt ">>"). Ctrl-C drops the current line, or stops the
running code and returns to the prompt; Ctrl-D leaves. Tab completes names
and table fields. History: $XDG_STATE_HOME/capil/history
(~/.local/state/capil/history). Input may be piped: `capil repl < script`.]],
  options = {
    { name = "no-history", help = "do not read or write the history file" },
  },
  run = function(opts)
    repl.run({
      history = opts["no-history"] and false or nil,
      banner = ("capil %s (%s) — Ctrl-D to leave"):format(host.version, host.lua_version),
    })
    return 0
  end,
}
