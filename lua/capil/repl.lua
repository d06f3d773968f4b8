--- capil.repl — the read-eval-print loop of `capil repl`: expressions print
--- their values (tables pretty-printed), statements run, incomplete input
--- continues on the next line, Ctrl-C drops the line or stops the running
--- code without leaving the REPL, Tab completes names and fields, history is
--- kept in $XDG_STATE_HOME/capil/history (~/.local/state/capil/history).
--- Top-level `local`s persist between lines; `help` documents what is bound
--- (capil.replhelp); `connect()` opens a vSphere session when the command
--- gives a way to.
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

-- The end of the long bracket opened at i ("[==[" or, after "--", a long
-- comment), or the end of the source when it is not closed.
local function long_end(src, i)
  local eq = src:match("^%[(=*)%[", i)
  local _, e = src:find("]" .. eq .. "]", i, true)
  return e or #src
end

-- The tokens of a chunk: names and keywords ("name"), symbols ("sym"),
-- strings and numbers ("str", "num"), each with its text's span s..e;
-- comments are dropped. Enough to find the top-level `local`s.
local function tokens(src)
  local out, i, n = {}, 1, #src
  local function add(kind, s, e) out[#out + 1] = { kind = kind, s = s, e = e, text = src:sub(s, e) } end
  while i <= n do
    local c = src:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif src:find("^%-%-", i) then
      if src:find("^%-%-%[=*%[", i) then
        i = long_end(src, i + 2) + 1
      else
        i = (src:find("\n", i, true) or n) + 1
      end
    elseif src:find("^%[=*%[", i) then
      local e = long_end(src, i)
      add("str", i, e)
      i = e + 1
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n do
        local d = src:sub(j, j)
        if d == "\\" then j = j + 2 elseif d == c or d == "\n" then break else j = j + 1 end
      end
      add("str", i, math.min(j, n))
      i = j + 1
    elseif c:match("[%a_]") then
      local _, e = src:find("^[%w_]+", i)
      add("name", i, e)
      i = e + 1
    elseif c:match("%d") or src:find("^%.%d", i) then
      local _, e = src:find("^%.?%d[%w_.]*", i)
      while src:find("^[eEpP][+-]", e) do _, e = src:find("^[%w_.]*", e + 2) end
      add("num", i, e)
      i = e + 1
    else
      local sym = src:match("^%.%.%.", i) or src:match("^[=~<>]=", i) or src:match("^%.%.", i)
        or src:match("^::", i) or src:match("^//", i) or src:match("^<<", i) or src:match("^>>", i) or c
      add("sym", i, i + #sym - 1)
      i = i + #sym
    end
  end
  return out
end

local OPENS = { ["do"] = true, ["function"] = true, ["if"] = true, ["repeat"] = true }
local CLOSES = { ["end"] = true, ["until"] = true }

-- The edits turning the top-level `local` declaration at token i into an
-- assignment to the environment; returns them and the next token's index.
-- `local function f` loses its `local`; `local a <const>, b = 1, 2` becomes
-- `a, b = 1, 2`; `local a` becomes `a = nil`. A `<close>` variable stays
-- local: it must be closed at the end of its chunk.
local function unlocal(toks, i)
  local t, nx = toks[i], toks[i + 1]
  if not nx then return {}, i + 1 end
  if nx.text == "function" then return { { t.s, nx.s - 1, "" } }, i + 1 end
  local edits, j = { { t.s, nx.s - 1, "" } }, i + 1
  while toks[j] and toks[j].kind == "name" do
    local k = j + 1
    if toks[k] and toks[k].text == "<" and toks[k + 2] and toks[k + 2].text == ">" then
      if toks[k + 1].text == "close" then return {}, k + 3 end
      edits[#edits + 1] = { toks[j].e + 1, toks[k + 2].e, "" }
      k = k + 3
    end
    if not (toks[k] and toks[k].text == ",") then
      j = k
      break
    end
    j = k + 1
  end
  if j == i + 1 then return {}, j end
  if not (toks[j] and toks[j].text == "=") then
    local last = toks[j - 1]
    edits[#edits + 1] = { last.e + 1, last.e, " = nil" }
  end
  return edits, j
end

--- The chunk with its top-level `local` declarations turned into
--- assignments to the environment, so that they outlive their line:
--- `local x = 1` then `x` prints 1. Locals inside blocks and functions
--- stay local.
---@param src string
---@return string
function M.persist_locals(src)
  local toks = tokens(src)
  local edits, depth, i = {}, 0, 1
  while i <= #toks do
    local t = toks[i]
    if t.kind == "name" and t.text == "local" and depth == 0 then
      local more
      more, i = unlocal(toks, i)
      for _, e in ipairs(more) do edits[#edits + 1] = e end
    else
      if t.kind == "name" then
        if OPENS[t.text] then depth = depth + 1 elseif CLOSES[t.text] then depth = depth - 1 end
      end
      i = i + 1
    end
  end
  table.sort(edits, function(a, b) return a[1] > b[1] end)
  for _, e in ipairs(edits) do src = src:sub(1, e[1] - 1) .. e[3] .. src:sub(e[2] + 1) end
  return src
end

--- Compiles a line: as an expression first ("return <line>"), then as a
--- statement whose top-level locals persist (M.persist_locals). Returns the
--- chunk, or nil plus "incomplete" or an error.
function M.compile(source, env)
  local chunk = load("return " .. source, "=repl", "t", env)
  if chunk then return chunk end
  local err
  chunk, err = load(M.persist_locals(source), "=repl", "t", env)
  if chunk then return chunk end
  if err:match("<eof>$") then return nil, "incomplete" end
  return nil, err
end

-- Candidates for Tab: the word's table path is resolved in env; fields of
-- the last table (and of its __index table) that start with the last part.
-- The second result marks the candidates naming a table: no space goes
-- after them, so `vsph` Tab gives `vsphere` and `.deploy` can follow.
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
    local names, seen, tables = {}, {}, {}
    local function add_from(tbl, all_tables)
      if type(tbl) ~= "table" then return end
      for k, v in pairs(tbl) do
        if type(k) == "string" and k:sub(1, #last) == last and not seen[k] then
          seen[k] = true
          names[#names + 1] = prefix .. k
          if all_tables or type(v) == "table" then tables[prefix .. k] = true end
        end
      end
    end
    add_from(t)
    if t == env then
      add_from(_G)
      add_from(LAZY, true) -- modules, loaded on first use
    end
    -- extra words (vSphere method names): bare, after a quote, or after ':'
    local extra = words
    if type(words) == "function" then extra = words(env) end
    if extra and (sep == "" or (sep == ":" and #names == 0)) then
      for _, w in ipairs(extra) do
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
    return names, tables
  end
end

--- Evaluates one complete chunk and prints its results (or its error:
--- the message, and with `verbose` the traceback too). Returns true when
--- it ran without error.
function M.eval(chunk, out, verbose)
  local results = table.pack(xpcall(chunk, function(e)
    if type(e) == "table" and e.message then return e.message end
    if not verbose then return tostring(e) end
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

-- What the REPL binds besides the modules, for help().
local BOUND = {
  { "vc", "the vim25 session: help(vc) lists its methods, help(\"CreateVM_Task\") one method's parameters" },
  { "inv", "the resolved placement (datacenter, folder, pool, datastore, network)" },
  { "vim25", "the vSphere SOAP client module (capil.vsphere.vim25)" },
  { "vsphere", "the vSphere modules: vsphere.deploy, .testvm, .inventory, .datastore, .lease, .session, "
    .. ".rest (REST sessions), .library (content libraries)" },
}

-- The lines of help(): every bound name with one line.
local function overview(env, can_connect)
  local replhelp = require("capil.replhelp")
  local out = { "Bound here (help(name) for one: help(fs), help(fs.read), help(vsphere.deploy)):" }
  local names = {}
  for k in pairs(LAZY) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local doc = replhelp.module_doc(LAZY[k]) or (pcall(require, LAZY[k]) and replhelp.module_doc(LAZY[k])) or {}
    out[#out + 1] = ("  %-8s %s"):format(k, replhelp.summary(doc))
  end
  for _, b in ipairs(BOUND) do
    if rawget(env, b[1]) ~= nil then
      out[#out + 1] = ("  %-8s %s"):format(b[1], b[2])
    elseif b[1] == "vc" and can_connect then
      out[#out + 1] = ("  %-8s not connected: connect() opens a session and binds vc, inv, vim25, vsphere"):format("vc")
    end
  end
  if can_connect then
    out[#out + 1] = "  connect([vars])  opens a vSphere session with the command line's settings, or with"
    out[#out + 1] = "           {vcenter_server=, username=, password=, insecure=true, ...} over them"
  end
  out[#out + 1] = "  help([obj [, name]])  this; a module's functions, one function's doc, a vim25 method or type"
  return out
end

-- The `help` function bound in env.
local function help_function(env, can_connect)
  --- help() lists what is bound; help(fs) a module's functions, help(fs.read)
  --- one function, from their doc comments; help("CreateVM_Task") a vim25
  --- method's parameters, help("VirtualMachineConfigSpec") a type's fields;
  --- help(vc, "PowerOnVM_Task") a method of the session.
  return function(...)
    local lines
    if select("#", ...) == 0 then
      lines = overview(env, can_connect)
    else
      lines = require("capil.replhelp").lines(env, LAZY, ...)
    end
    io.stdout:write(log.redact(table.concat(lines, "\n")), "\n")
  end
end

-- The `connect` function bound in env: opts.connect(vars) opens a session
-- and returns its bindings and a line to show; they replace the old ones
-- (whose session is logged out).
local function connect_function(env, connect)
  --- Opens a vSphere session with the command line's settings (var files,
  --- --var, GOVC_*), or with `vars` over them ({vcenter_server = "vc",
  --- username = "u", password = "p", insecure = true}), and binds vc, inv,
  --- vim25 and vsphere. A failure raises the reason (never the password).
  return function(vars)
    if vars ~= nil and type(vars) ~= "table" then
      error("connect: the argument must be a table of variables ({vcenter_server = ..., ...}) or nothing", 2)
    end
    local b, hello = connect(vars)
    if not b then error("connect: " .. tostring(hello) .. "; connect() retries", 0) end
    local old = rawget(env, "vc")
    if old and old ~= b.vc and type(old.logout) == "function" then old:logout() end
    for k, v in pairs(b) do rawset(env, k, v) end
    io.stdout:write(log.redact(hello), "\n")
  end
end

--- Runs the loop until end of input; `opts.bindings` adds names (e.g. `vc`),
--- `opts.banner` is printed first, `opts.connect(vars)` (bindings, line |
--- nil, err) is what `connect()` calls, `opts.verbose` shows tracebacks.
--- `opts.words` are extra Tab completions (vSphere method names), or a
--- function of the environment returning them. Returns false when input was piped and a line failed (the command
--- exits 1), else true.
---@param opts? {bindings?: table, banner?: string, history?: string|false, prompt?: string, words?: string[]|fun(env: table): string[]|nil, connect?: fun(vars?: table): table|nil, string, verbose?: boolean}
---@return boolean
function M.run(opts)
  opts = opts or {}
  local env = M.environment(opts.bindings)
  env.help = help_function(env, opts.connect ~= nil)
  if opts.connect then env.connect = connect_function(env, opts.connect) end
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
  local all_ok = true
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
        -- `help` alone is help(); `=x` is `return x`
        local chunk, err = M.compile(source:match("^%s*help%s*$") and "help()" or source:gsub("^=", "return "), env)
        if chunk then
          buffer = nil
          if not M.eval(chunk, io.stdout, opts.verbose) then all_ok = false end
          -- after the run: a password it registered (connect{password=...}) is
          -- kept out of the history file
          if interactive then core.add_history(log.redact(source)) end
        elseif err == "incomplete" then
          buffer = source
        else
          buffer = nil
          all_ok = false
          if interactive then core.add_history(log.redact(source)) end
          io.stdout:write(log.redact(err), "\n")
        end
      end
    end
    io.stdout:flush()
  end
  if buffer then
    all_ok = false
    io.stdout:write("repl: the input ended inside an unfinished chunk\n")
  end
  if interactive and history then
    local ok, err = core.save_history(history)
    if not ok then log.warn(err) end
    io.stdout:write("\n")
  end
  return interactive or all_ok
end

return M
