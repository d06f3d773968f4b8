--- capil help [COMMAND] — the command list, or one command's options.
local cli = require("capil.cli")

return {
  summary = "show help for capil or for one command",
  usage = "help [COMMAND]",
  run = function(_, args)
    local name = args[1]
    if not name then
      io.stdout:write(cli.usage(), "\n")
      return 0
    end
    local cmd = cli.command(name)
    if not cmd then cli.fail(("help: unknown command '%s'"):format(name), 2) end
    io.stdout:write(cli.command_help(name, cmd), "\n")
    return 0
  end,
}
