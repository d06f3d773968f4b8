--- capil.build.sandbox — runs recipe, role and check files as data: a fresh
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

local runtime = require("capil.core.runtime")

-- The string library sandboxed code sees: no dump, a capped rep. One copy,
-- built once; each environment gets its own copy of it as `string`, and
-- method calls ("x"):f() reach it through STRING_METHODS, a read-only proxy
-- swapped into the string metatable while sandboxed code runs.
local MAX_REP = 16 * 1024 * 1024
local SAFE_STRING = {}
for k, v in pairs(string) do SAFE_STRING[k] = v end
SAFE_STRING.dump = nil
do
  local rep = string.rep
  -- a recipe cannot build huge strings in one instruction
  SAFE_STRING.rep = function(str, n, sep)
    local count = tonumber(n) or 0
    local size = #tostring(str) * count + (sep and #tostring(sep) * math.max(count - 1, 0) or 0)
    if size > MAX_REP then error("string.rep: result over 16 MiB", 2) end
    return rep(str, n, sep)
  end
end
local STRING_METHODS = setmetatable({}, {
  __index = SAFE_STRING,
  __newindex = function() error("the string library is read-only", 2) end,
  __metatable = false,
})

-- Per-run limits: instructions (overridable per call) and bytes allocated
-- while sandboxed code runs (counted by the host's allocator).
M.BUDGET = 10000000
M.MEMORY = 256 * 1024 * 1024
-- How deep returned data may nest.
local MAX_DEPTH = 64

-- Metatables set through the sandbox's setmetatable (weak): only those can
-- be read back or replaced from inside, so host tables' metatables (and
-- the string metatable) stay out of reach.
local own_mt = setmetatable({}, { __mode = "k" })

local function sb_setmetatable(t, mt)
  if type(t) ~= "table" then error(("bad argument #1 to 'setmetatable' (table expected, got %s)"):format(type(t)), 2) end
  if mt ~= nil and type(mt) ~= "table" then error("bad argument #2 to 'setmetatable' (nil or table expected)", 2) end
  local cur = debug.getmetatable(t)
  if cur ~= nil and not own_mt[cur] then error("setmetatable: this table's metatable belongs to capil", 2) end
  if mt ~= nil then
    if rawget(mt, "__gc") ~= nil then error("setmetatable: __gc is not available in recipes", 2) end
    own_mt[mt] = true
  end
  return setmetatable(t, mt)
end

local function sb_getmetatable(v)
  if type(v) ~= "table" then return nil end
  local mt = debug.getmetatable(v)
  if mt == nil or not own_mt[mt] then return nil end
  return getmetatable(v)
end

-- The run in progress (innermost): its stop message once the budget ran
-- out or a signal came, so nothing inside can carry on.
local current

-- The message of a stop (budget out, or a signal), or nil.
local function stopped()
  if current and current.stopped then return current.stopped end
  if runtime.interrupted() then return "interrupted" end
  return nil
end

-- pcall/xpcall that cannot swallow a stop: they re-raise it.
local function settle(ok, ...)
  if not ok then
    local msg = stopped()
    if msg then error(msg, 0) end
  end
  return ok, ...
end
local function sb_pcall(f, ...) return settle(pcall(f, ...)) end
-- A stop is raised from a hook, and Lua runs the message handler before
-- the hook returns, with hooks off: so the recipe's handler is skipped then.
local function sb_xpcall(f, h, ...)
  return settle(xpcall(f, function(m)
    if stopped() then return m end
    return h(m)
  end, ...))
end

--- A fresh strict environment; `extra` adds names (DSL helpers, variables).
---@param extra? table
---@return table
function M.environment(extra)
  local env = {}
  for _, name in ipairs(SAFE) do env[name] = _G[name] end
  for _, name in ipairs(SAFE_LIBS) do
    local lib = name == "string" and SAFE_STRING or _G[name]
    local t = {}
    for k, v in pairs(lib) do t[k] = v end
    env[name] = t
  end
  env.setmetatable, env.getmetatable = sb_setmetatable, sb_getmetatable
  env.pcall, env.xpcall = sb_pcall, sb_xpcall
  env._VERSION = _VERSION
  for k, v in pairs(extra or {}) do env[k] = v end
  return setmetatable(env, {
    __index = function(_, k)
      error(FORBIDDEN[k] or ("undefined global '%s'"):format(tostring(k)), 2)
    end,
  })
end

--- Loads `path` and runs it in `env` under the sandbox's limits (see
--- M.call). Returns the chunk's first result as plain data (a function too
--- when `opts.code` is set: role and check files return one), or nil and an
--- error message that starts with the file name.
---@param path string
---@param env table
---@param opts? {budget?: integer, source?: string, code?: boolean}
---@return any|nil, string?
M.MAX_FILE = 4 * 1024 * 1024

-- Compiles recipe text. The parser can raise instead of returning (a
-- nesting deep enough to exhaust the C stack): that is the file's fault,
-- reported as such, never a traceback.
local function compile(src, path, env)
  local ok, chunk, err = pcall(load, src, "@" .. path, "t", env)
  if not ok then chunk, err = nil, tostring(chunk) end
  if not chunk and not err:find(path, 1, true) then
    -- the parser's C stack ran out: no line to point at
    err = ("%s: cannot be read as Lua: %s"):format(path,
      err == "C stack overflow" and "nested too deeply (C stack overflow)" or err)
  end
  return chunk, err
end

function M.run_file(path, env, opts)
  opts = opts or {}
  local chunk, err
  if opts.source then
    chunk, err = compile(opts.source, path, env)
  else
    -- a regular file of bounded size: a FIFO or /dev/zero would hang
    local src, ferr = require("capil.sys.fs").read_file(path, { max = M.MAX_FILE })
    if not src then return nil, ferr end
    chunk, err = compile(src, path, env)
  end
  if not chunk then return nil, err end
  return M.run(chunk, path, { budget = opts.budget, code = opts.code })
end

-- A key as a field path component.
local function key_name(prefix, k)
  local part = type(k) == "string" and k or ("[" .. tostring(k) .. "]")
  if prefix == "" then return part end
  return type(k) == "string" and (prefix .. "." .. part) or (prefix .. part)
end

-- Copies a returned value into plain tables (raw reads: no metamethod
-- runs, no metatable survives). Runs inside the sandboxed run, so its cost
-- counts against the budget. Raises naming the file and the field.
local function plain(v, what, path, depth, on_path)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" or t == "nil" then return v end
  local field = path == "" and "the returned value" or ("field '" .. path .. "'")
  if t ~= "table" then
    error(("%s: %s is a %s: recipes return data (strings, numbers, booleans, tables)"):format(what, field, t), 0)
  end
  if on_path[v] then error(("%s: %s contains itself (a cycle)"):format(what, field), 0) end
  if depth >= MAX_DEPTH then error(("%s: %s nests deeper than %d tables"):format(what, field, MAX_DEPTH), 0) end
  on_path[v] = true
  local out = {}
  local k, x = next(v)
  while k ~= nil do
    local kt = type(k)
    if kt ~= "string" and kt ~= "number" and kt ~= "boolean" then
      error(("%s: %s has a %s as a key: keys must be names or numbers"):format(what, field, kt), 0)
    end
    out[k] = plain(x, what, key_name(path, k), depth + 1, on_path)
    k, x = next(v, k)
  end
  on_path[v] = nil
  return out
end

-- An error value as text, without running any of its metamethods.
local function message(e, what)
  local t = type(e)
  if t == "string" then return e end
  if t == "number" then return what .. ": " .. tostring(e) end
  return ("%s: raised a %s value, not a message"):format(what, t)
end

--- Calls `fn(...)` sandboxed: at most `opts.budget` VM instructions
--- (default 10 million), M.MEMORY more bytes, the sandbox's string methods,
--- and its result copied into plain data. The limits are final: once the
--- budget runs out (or Ctrl-C/SIGTERM comes) every later instruction of the
--- run raises again, and the sandbox's pcall re-raises. Returns the result,
--- or nil and the error (starting with `what`).
---@param fn function
---@param what string the file name, for messages
---@param opts? {budget?: integer, code?: boolean}
---@return any|nil, string?
function M.run(fn, what, opts, ...)
  opts = opts or {}
  local budget = opts.budget or M.BUDGET
  local run = {}
  local co = coroutine.create(function(...)
    local r = fn(...)
    if opts.code and type(r) == "function" then return r end
    return plain(r, what, "", 0, {})
  end)
  local steps = 0
  local hook
  local function stop(msg)
    run.stopped = msg
    debug.sethook(co, hook, "", 1) -- from now on, every instruction raises
    error(msg, 0)
  end
  hook = function()
    if run.stopped then error(run.stopped, 0) end
    if runtime.interrupted() then stop("interrupted") end
    steps = steps + 1000
    if steps > budget then
      local info = debug.getinfo(2, "Sl")
      local at = info and info.currentline and info.currentline > 0 and (info.short_src .. ":" .. info.currentline)
        or what
      stop(("%s: stopped after %d million instructions (an endless loop?)"):format(at, budget // 1000000))
    end
  end
  debug.sethook(co, hook, "", 1000)
  -- the string methods, the memory limit and the watchdog hold only while
  -- co runs; the host puts its own back whatever co did
  local outer = current
  current = run
  local ok, res = runtime.sandbox_resume(co, M.MEMORY, STRING_METHODS, ...)
  current = outer
  if not ok then
    if res == "yield" and coroutine.status(co) == "suspended" then
      return nil, ("%s: yielded instead of returning"):format(what)
    end
    res = run.stopped or message(res, what)
    if res == "not enough memory" then
      res = ("%s: over the memory limit of %d MiB"):format(what, M.MEMORY // (1024 * 1024))
    end
    return nil, res
  end
  return res
end

--- Calls `fn(...)` under the sandbox's limits (see M.run); its result must
--- be data. Kept for role and check functions.
function M.call(fn, what, budget, ...)
  return M.run(fn, what, { budget = budget }, ...)
end

return M
