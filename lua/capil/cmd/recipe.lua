--- capil recipe — recipes on the recipe search path: `show` prints one's
--- source (embedded or from its file), to start a custom recipe from.
local cli = require("capil.cli")
local recipepath = require("capil.build.recipepath")

local SUB = {
  show = {
    usage = "recipe show NAME [--recipes-dir DIR]",
    options = { { name = "recipes-dir", arg = "DIR", help = "look recipe names up here first" } },
  },
}

local HELP = [[
Subcommands:
  show NAME   Prints the source of recipe NAME as the recipe search path has it
              (the built-in copy embedded in capil, or the file that overrides
              it), byte for byte; where it comes from goes to stderr. To start
              a custom recipe:
                mkdir -p ~/.config/capil/recipes
                capil recipe show ubuntu-2204 > ~/.config/capil/recipes/my-os.lua
              then change its name and fields (or write `extends = "ubuntu-2204"`
              and only the fields that differ). Roles, checks and installer
              files beside it (roles/, checks/, http/, config/) come before the
              built-in ones.

The recipe search path, lowest priority first: the built-in recipes, then
~/.config/capil/recipes ($XDG_CONFIG_HOME/capil/recipes), then the
directories of CAPIL_RECIPES_PATH (colon-separated; the first wins), then
--recipes-dir. 'capil list' shows every recipe and where it comes from.

Options of the subcommands:
  show: --recipes-dir DIR]]

local RUN = {
  show = function(opts, args)
    if #args ~= 1 then cli.fail("recipe show: name one recipe (see 'capil list')", 2) end
    local layers, lerr = recipepath.layers({ recipes_dir = opts["recipes-dir"] })
    if not layers then cli.fail("recipe show: " .. lerr, 1) end
    local text, layer, file
    if recipepath.is_path(args[1]) then
      file = args[1]
      local ferr
      text, ferr = require("capil.sys.fs").read_file(file, { max = require("capil.build.recipe").MAX_FILE })
      if not text then cli.fail("recipe show: " .. ferr, 1) end
    else
      text, layer, file = recipepath.source(args[1], layers)
      if not text then cli.fail("recipe show: " .. layer, 1) end
    end
    io.stdout:write(text)
    io.stdout:flush()
    require("capil.sys.log").info("recipe show: %s", file)
    return 0
  end,
}

return {
  summary = "show a recipe's source (embedded or from its file), to start a custom one",
  usage = "recipe show NAME",
  help = HELP,
  options = {},
  stop_at_positional = true,
  run = function(_, args)
    return cli.subcommand("recipe", args, SUB, RUN, { "show" })
  end,
}
