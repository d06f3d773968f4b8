--- capil man — prints the man page (roff), generated from the commands' help.
local clidoc = require("capil.clidoc")

return {
  summary = "print the man page (roff); read it with 'capil man | man -l -'",
  usage = "man",
  run = function()
    io.stdout:write(clidoc.man())
    return 0
  end,
}
