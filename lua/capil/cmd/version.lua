--- capil version — the version of capil, its Lua, and where its library comes from.
local host = require("capil.core.host")

return {
  summary = "print the version",
  usage = "version",
  run = function()
    local root = host.library()
    io.stdout:write(("capil %s (%s; library %s)\n"):format(host.version, host.lua_version, root))
    return 0
  end,
}
