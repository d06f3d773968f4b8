--- capil completion bash|zsh|fish — prints the shell completion script.
local cli = require("capil.cli")
local clidoc = require("capil.clidoc")

return {
  summary = "print the shell completion script for bash, zsh or fish",
  usage = "completion bash|zsh|fish",
  complete = clidoc.SHELLS,
  help = [[
The script completes commands, options, recipe names (from 'capil list', at
completion time) and backends. Load it for the current shell with
  source <(capil completion bash)
or install it: completions/ in the checkout holds the three scripts, and
'make install' puts them where the shells look. 'capil man' prints the man page.]],
  run = function(_, args)
    local shell = args[1]
    if not shell then cli.fail("completion: name a shell: bash, zsh or fish", 2) end
    if not clidoc[shell] or shell == "man" or shell == "files" then
      cli.fail(("completion: unknown shell '%s' (bash, zsh or fish)"):format(shell), 2)
    end
    io.stdout:write(clidoc[shell]())
    return 0
  end,
}
