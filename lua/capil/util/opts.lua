--- capil.util.opts — checking a function's options table: one home for the
--- "fn: unknown option 'k'" error every library function with an options
--- table raises (a misspelt option is a programming error, so it raises
--- rather than returning nil, msg, code).
local M = {}

--- Checks that every key of `opts` is in the set `allowed` and returns
--- `opts` (`{}` when nil). Raises "`fname`: unknown option 'k'" (or
--- "`fname`: options must be a table") at `level`, counted as `error`
--- counts from the function calling `check`: the default 2 blames that
--- function's caller, as `error(msg, 2)` written there would.
---@param opts table|nil
---@param allowed table<string, any> the option names (keys with a true value)
---@param fname string the function's name in messages ("proc.run")
---@param level? integer
---@return table opts
function M.check(opts, allowed, fname, level)
  level = (level or 2) + 1
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(("%s: options must be a table"):format(fname), level) end
  for k in pairs(opts) do
    if not allowed[k] then error(("%s: unknown option '%s'"):format(fname, tostring(k)), level) end
  end
  return opts
end

return M
