--- capil.sandbox — runs recipe, role and check files as data: a fresh
--- environment with only pure functions (string, table, math, utf8, …), no
--- io/os/require/load/debug, reading an undefined global is an error, and an
--- instruction budget stops infinite loops. Errors name the file and line.
local M = {}

-- What a recipe may use: pure functions only.
local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
  "rawlen", "select", "tonumber", "tostring", "type", "xpcall", "setmetatable",
  "getmetatable",
}
local SAFE_LIBS = { "string", "table", "math", "utf8" }

-- Names recipes commonly reach for, with the reason they are missing.
local FORBIDDEN = {
  os = "os is not available in recipes (no commands, no environment: use variables)",
  io = "io is not available in recipes (files are referenced by path, not read)",
  require = "require is not available in recipes (use 'extends' or roles)",
  load = "load is not available in recipes", loadfile = "loadfile is not available in recipes",
  dofile = "dofile is not available in recipes", debug = "debug is not available in recipes",
  package = "package is not available in recipes", collectgarbage = "collectgarbage is not available in recipes",
  print = "print is not available in recipes (recipes are data; capil logs for you)",
}

local function copy_lib(lib)
  local t = {}
  for k, v in pairs(lib) do t[k] = v end
  return t
end

--- A fresh strict environment; `extra` adds names (DSL helpers, variables).
---@param extra? table
---@return table
function M.environment(extra)
  local env = {}
  for _, name in ipairs(SAFE) do env[name] = _G[name] end
  for _, name in ipairs(SAFE_LIBS) do env[name] = copy_lib(_G[name]) end
  env.string.dump = nil
  -- a recipe cannot build huge strings (the instruction budget does not see them)
  local rep = string.rep
  env.string.rep = function(str, n, sep)
    local size = #str * n + (sep and #sep * math.max(n - 1, 0) or 0)
    if size > 16 * 1024 * 1024 then error("string.rep: result over 16 MiB", 2) end
    return rep(str, n, sep)
  end
  env._VERSION = _VERSION
  for k, v in pairs(extra or {}) do env[k] = v end
  return setmetatable(env, {
    __index = function(_, k)
      error(FORBIDDEN[k] or ("undefined global '%s'"):format(tostring(k)), 2)
    end,
  })
end

--- Loads `path` and runs it in `env` with at most `budget` VM instructions
--- (default 10 million). Returns the chunk's first result, or nil and an
--- error message that starts with the file name.
---@param path string
---@param env table
---@param opts? {budget?: integer, source?: string}
---@return any|nil, string?
function M.run_file(path, env, opts)
  opts = opts or {}
  local chunk, err
  if opts.source then
    chunk, err = load(opts.source, "@" .. path, "t", env)
  else
    local f, ferr = io.open(path, "r")
    if not f then return nil, ferr end
    local src = f:read("a")
    f:close()
    chunk, err = load(src, "@" .. path, "t", env)
  end
  if not chunk then return nil, err end
  return M.call(chunk, path, opts.budget)
end

--- Calls `fn(...)` under the instruction budget; returns its first result
--- or nil and the error (prefixed with `what` when the budget runs out).
function M.call(fn, what, budget, ...)
  budget = budget or 10000000
  local co = coroutine.create(fn)
  local steps = 0
  debug.sethook(co, function()
    steps = steps + 1000
    if steps > budget then
      error(("stopped after %d million instructions (an endless loop?)"):format(budget // 1000000), 2)
    end
  end, "", 1000)
  local ok, res = coroutine.resume(co, ...)
  if not ok then
    if type(res) ~= "string" then res = tostring(res) end
    return nil, res
  end
  if coroutine.status(co) ~= "dead" then
    return nil, ("%s: yielded instead of returning"):format(what)
  end
  return res
end

return M
