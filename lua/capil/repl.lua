--- capil.repl — the read-eval-print loop of `capil repl`: expressions print
--- their values (tables pretty-printed), statements run, incomplete input
--- continues on the next line, Ctrl-C drops the line or stops the running
--- code without leaving the REPL, Tab completes names and fields, history is
--- kept in $XDG_STATE_HOME/capil/history (~/.local/state/capil/history).
local core = require("capil.core.repl")
local log = require("capil.sys.log")
local pretty = require("capil.util.pretty")

local M = {}

--- Default history path.
function M.history_path()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then
    state = (os.getenv("HOME") or ".") .. "/.local/state"
  end
  return state .. "/capil/history"
end

-- Modules bound by name in the REPL environment, loaded on first use.
local LAZY = {
  fs = "capil.sys.fs", proc = "capil.sys.proc", log = "capil.sys.log", json = "capil.sys.json",
  xml = "capil.sys.xml", hash = "capil.sys.hash", http = "capil.sys.http", ssh = "capil.sys.ssh",
  pretty = "capil.util.pretty", cleanup = "capil.sys.cleanup",
}

--- A fresh environment: globals, the capil modules by short name, and
--- `bindings` (e.g. `vc`, a live vSphere session).
function M.environment(bindings)
  local env = {}
  for k, v in pairs(bindings or {}) do env[k] = v end
  return setmetatable(env, {
    __index = function(t, k)
      local g = _G[k]
      if g ~= nil then return g end
      local mod = LAZY[k]
      if mod then
        local ok, m = pcall(require, mod)
        if ok then rawset(t, k, m) return m end
      end
      return nil
    end,
  })
end

--- Compiles a line: as an expression first ("return <line>"), then as a
--- statement. Returns the chunk, or nil plus "incomplete" or an error.
function M.compile(source, env)
  local chunk = load("return " .. source, "=repl", "t", env)
  if chunk then return chunk end
  local err
  chunk, err = load(source, "=repl", "t", env)
  if chunk then return chunk end
  if err:match("<eof>$") then return nil, "incomplete" end
  return nil, err
end

-- Candidates for Tab: the word's table path is resolved in env; fields of
-- the last table (and of its __index table) that start with the last part.
local function completer(env, words)
  return function(word)
    local path, sep, last = word:match("^(.-)([%.:]?)([%w_]*)$")
    local t = env
    local prefix = ""
    if sep ~= "" then
      for part in path:gmatch("[^%.:]+") do
        local ok, v = pcall(function() return t[part] end)
        if not ok or v == nil then return {} end
        t = v
      end
      prefix = path .. sep
    end
    local names, seen = {}, {}
    local function add_from(tbl)
      if type(tbl) ~= "table" then return end
      for k in pairs(tbl) do
        if type(k) == "string" and k:sub(1, #last) == last and not seen[k] then
          seen[k] = true
          names[#names + 1] = prefix .. k
        end
      end
    end
    add_from(t)
    if t == env then
      add_from(_G)
      add_from(LAZY)
    end
    -- extra words (vSphere method names): bare, after a quote, or after ':'
    if words and (sep == "" or (sep == ":" and #names == 0)) then
      for _, w in ipairs(words) do
        if w:sub(1, #last) == last and not seen[w] then
          seen[w] = true
          names[#names + 1] = prefix .. w
        end
      end
    end
    local mt = getmetatable(t)
    if type(mt) == "table" then
      add_from(mt.__index)
      if type(mt.methods) == "table" then add_from(mt.methods) end
    end
    table.sort(names)
    return names
  end
end

--- Evaluates one complete chunk and prints its results (or its error).
--- Returns true when it ran without error.
function M.eval(chunk, out)
  local results = table.pack(xpcall(chunk, function(e)
    if type(e) == "table" and e.message then return e.message end
    -- the traceback down to the REPL's own frames, which are noise here
    local tb = debug.traceback(tostring(e), 2)
    return (tb:gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
  end))
  if not results[1] then
    core.clear_interrupt()
    local msg = tostring(results[2])
    if require("capil.core.runtime").interrupted() or msg:match("interrupted") then
      msg = "interrupted"
    end
    out:write(log.redact(msg), "\n")
    return false
  end
  for i = 2, results.n do
    out:write(log.redact(pretty.format(results[i])), i < results.n and "\t" or "\n")
  end
  return true
end

--- Runs the loop until end of input; `opts.bindings` adds names (e.g. `vc`),
--- `opts.banner` is printed first.
--- `opts.words` are extra Tab completions (vSphere method names).
---@param opts? {bindings?: table, banner?: string, history?: string|false, prompt?: string, words?: string[]}
function M.run(opts)
  opts = opts or {}
  local env = M.environment(opts.bindings)
  local interactive = core.interactive()
  local history = opts.history
  if history == nil then history = M.history_path() end
  if interactive and history then
    require("capil.core.fs").mkdir(history:match("^(.*)/") or ".")
    core.load_history(history)
  end
  core.set_completer(completer(env, opts.words))
  if opts.banner and interactive then io.stdout:write(opts.banner, "\n") end
  local prompt = opts.prompt or "capil> "
  local buffer = nil
  while true do
    local line = core.readline(buffer and ">> " or prompt)
    if line == nil then break end
    if line == false then
      buffer = nil -- Ctrl-C at the prompt drops the pending input
    else
      local source = buffer and (buffer .. "\n" .. line) or line
      if source:match("^%s*$") then
        buffer = nil
      else
        local chunk, err = M.compile(source:gsub("^=", "return "), env)
        if chunk then
          buffer = nil
          if interactive then core.add_history(source) end
          M.eval(chunk, io.stdout)
        elseif err == "incomplete" then
          buffer = source
        else
          buffer = nil
          if interactive then core.add_history(source) end
          io.stdout:write(log.redact(err), "\n")
        end
      end
    end
    io.stdout:flush()
  end
  if interactive and history then
    local ok, err = core.save_history(history)
    if not ok then log.warn(err) end
    io.stdout:write("\n")
  end
end

return M
