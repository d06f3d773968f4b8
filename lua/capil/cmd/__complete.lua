--- capil __complete recipes|backends — the words the completion scripts ask
--- for at completion time, one a line (hidden from the command list).
local cli = require("capil.cli")

return {
  hidden = true,
  summary = "words for the shell completion scripts",
  usage = "__complete recipes|backends [--recipes-dir DIR]",
  options = { { name = "recipes-dir", arg = "DIR", help = "where recipe names are looked up (default: recipes)" } },
  run = function(opts, args)
    local what = args[1]
    local words
    if what == "recipes" then
      words = require("capil.build.recipe").list(opts["recipes-dir"] or "recipes")
    elseif what == "backends" then
      words = require("capil.backend").names()
      words[#words + 1] = "local"
    else
      cli.fail("__complete: recipes or backends", 2)
    end
    for _, w in ipairs(words) do io.stdout:write(w, "\n") end
    return 0
  end,
}
