--- capil version — the version of capil, its Lua, and where its library comes from.
local runtime = require("capil.core.runtime")

return {
  summary = "print the version",
  usage = "version",
  run = function()
    local root = runtime.library()
    io.stdout:write(("capil %s (%s; library %s)\n"):format(runtime.version, runtime.lua_version, root))
    return 0
  end,
}
