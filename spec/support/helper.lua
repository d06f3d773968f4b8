-- Loaded by busted before the specs (see .busted): makes spec/support/
-- requirable as `support.<name>` and exposes the binary under test.
package.path = "spec/?.lua;" .. package.path

-- busted ends with os.exit, which would skip capil's cleanup stack: run it
-- first so temp dirs and child processes of the specs are removed.
local exit = os.exit
os.exit = function(...) -- luacheck: ignore 122
  require("capil.sys.cleanup").run_all("exit")
  return exit(...)
end
