--- capil.cli — the command line: global flags, subcommand dispatch and an
--- option parser the subcommands share. Subcommands are modules
--- `capil.cmd.<name>` returning {summary=, usage=, help=, options=, run=}, so
--- later commands are added without touching C.
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")

local M = {}

--- Raises an error meant for the user: printed as "capil: <message>" without
--- a traceback, and the process exits with `exit` (default 1; 2 for usage).
---@param message string
---@param exit? integer
function M.fail(message, exit)
  error({ message = message, exit = exit or 1 }, 0)
end

local GLOBAL_OPTIONS = {
  { name = "verbose", short = "v", help = "more detail (debug level)" },
  { name = "quiet", short = "q", help = "only warnings and errors; no progress" },
  { name = "log-format", arg = "FORMAT", help = "text (default) or json: one JSON object per line" },
  { name = "help", short = "h", help = "show help" },
  { name = "version", help = "print the version" },
}
M.GLOBAL_OPTIONS = GLOBAL_OPTIONS

-- Option values of a known kind are checked here, once, so a command never
-- meets them malformed deep inside a client: a URL is an http(s) URL.
local function check_value(cmd, o, v)
  if o.arg == "URL" and not v:match("^https?://[^%s/?#]+") then
    M.fail(("%s: option '--%s' expects an http(s) URL, got '%s'"):format(cmd, o.name, v), 2)
  end
end

--- Parses `args` against an option list: {name=, short=, arg="VALUE",
--- multi=true, help=}. Returns options (dashes kept in names) and the
--- positional arguments; "--" ends the options. Unknown options fail with
--- usage exit code 2.
---@param args string[]
---@param spec table[]
---@param cmd string name for messages
---@param stop_at_positional? boolean stop at the first positional (global flags)
---@return table opts, string[] rest
function M.parse(args, spec, cmd, stop_at_positional)
  local by_long, by_short = {}, {}
  for _, o in ipairs(spec) do
    by_long[o.name] = o
    if o.short then by_short[o.short] = o end
  end
  local opts, rest = {}, {}
  local i = 1
  local function set(o, value)
    if o.multi then
      opts[o.name] = opts[o.name] or {}
      table.insert(opts[o.name], value)
    else
      opts[o.name] = value
    end
  end
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do rest[#rest + 1] = args[j] end
      break
    end
    if stop_at_positional and (a == "-e" or a == "-") then
      for j = i, #args do rest[#rest + 1] = args[j] end
      break
    end
    local long, inline = a:match("^%-%-([^=]+)=(.*)$")
    long = long or a:match("^%-%-(.+)$")
    local short = not long and a:match("^%-(%w)$")
    local o = long and by_long[long] or short and by_short[short]
    if (long or short) and not o then
      M.fail(("%s: unknown option '%s' (see 'capil help %s')"):format(cmd, a, cmd), 2)
    end
    if o then
      if o.arg then
        local v = inline
        if v == nil then
          i = i + 1
          v = args[i]
          if v == nil then M.fail(("%s: option '--%s' needs a value (%s)"):format(cmd, o.name, o.arg), 2) end
        end
        check_value(cmd, o, v)
        set(o, v)
      else
        if inline ~= nil then M.fail(("%s: option '--%s' takes no value"):format(cmd, o.name), 2) end
        set(o, true)
      end
    else
      if stop_at_positional then
        for j = i, #args do rest[#rest + 1] = args[j] end
        break
      end
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  return opts, rest
end

--- Formats an option list for help texts.
---@param spec table[]
function M.format_options(spec)
  local lines = {}
  for _, o in ipairs(spec) do
    local flag = (o.short and ("-" .. o.short .. ", ") or "    ") .. "--" .. o.name
    if o.arg then flag = flag .. " " .. o.arg end
    lines[#lines + 1] = ("  %-28s %s"):format(flag, o.help or "")
  end
  return table.concat(lines, "\n")
end

--- Names of the available subcommands, sorted.
function M.commands()
  local names, seen = {}, {}
  local root, embedded = runtime.library()
  if root == "embedded" then
    for _, m in ipairs(embedded) do
      local n = m:match("^capil%.cmd%.([%w_%-]+)$")
      if n and not seen[n] then seen[n] = true names[#names + 1] = n end
    end
  else
    local fs = require("capil.core.fs")
    for _, f in ipairs(fs.list(root .. "/lua/capil/cmd") or {}) do
      local n = f:match("^([%w_%-]+)%.lua$")
      if n then names[#names + 1] = n end
    end
  end
  table.sort(names)
  return names
end

--- Loads a subcommand module, or nil when there is none by that name.
function M.command(name)
  if not name:match("^[%w_%-]+$") then return nil end
  local ok, mod = pcall(require, "capil.cmd." .. name)
  if not ok then
    if tostring(mod):find("module 'capil.cmd." .. name .. "' not found", 1, true) then return nil end
    error(mod, 0)
  end
  return mod
end

function M.usage()
  local lines = {
    "capil " .. runtime.version .. " — build Cluster API node images from Lua recipes",
    "",
    "Usage:",
    "  capil [global options] COMMAND [options] [args]",
    "  capil FILE.lua [args]        run a Lua script with the capil modules",
    "  capil -e CODE [args]         run a Lua chunk",
    "",
    "Commands:",
  }
  for _, name in ipairs(M.commands()) do
    local cmd = M.command(name)
    if not (cmd and cmd.hidden) then
      lines[#lines + 1] = ("  %-12s %s"):format(name, cmd and cmd.summary or "")
    end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Global options:"
  lines[#lines + 1] = M.format_options(GLOBAL_OPTIONS)
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Run 'capil help COMMAND' for a command's options."
  return table.concat(lines, "\n")
end

--- Help text of one command.
function M.command_help(name, cmd)
  local lines = { ("Usage: capil %s"):format(cmd.usage or name), "" }
  if cmd.summary then lines[#lines + 1] = cmd.summary end
  if cmd.help then lines[#lines + 1] = "" lines[#lines + 1] = cmd.help end
  if cmd.options and #cmd.options > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Options:"
    lines[#lines + 1] = M.format_options(cmd.options)
  end
  return table.concat(lines, "\n")
end

--- Runs `-e CODE args...` or `SCRIPT args...` after global options (as in
--- `capil --quiet build.lua`), with `arg` set as the interpreter does.
---@param rest string[]
function M.run_script(rest)
  local chunk, err, first
  if rest[1] == "-e" then
    if not rest[2] then M.fail("-e needs a chunk of Lua", 2) end
    chunk, err = load(rest[2], "=(command line)")
    first = 2
  else
    chunk, err = loadfile(rest[1] ~= "-" and rest[1] or nil)
    first = 1
  end
  if not chunk then M.fail(err, 1) end
  local a = {}
  for i = first, #rest do a[i - first] = rest[i] end
  _G.arg = a
  chunk(table.unpack(rest, first + 1))
  return 0
end

-- ====================================================================== --
-- Packer's and image-builder's habits                                    --
-- ====================================================================== --

-- Packer's single-dash flags, read as capil's options of the same meaning
-- (only where the command has that option).
local PACKER_SINGLE = { var = "var", ["var-file"] = "var-file", only = "only", except = "except",
  force = "force", ["on-error"] = "on-error", debug = "debug" }
local PACKER_VALUED = { var = true, ["var-file"] = true, only = true, except = true, ["on-error"] = true }
-- Packer flags that have no meaning for capil: accepted in PACKER_FLAGS and ignored.
local PACKER_IGNORED = { color = true, ["timestamp-ui"] = true, ["machine-readable"] = true }

-- Splits a string into words as a POSIX shell would (quotes, backslashes;
-- no expansion). nil and a message for an unterminated quote.
function M.shell_words(s)
  local words, cur, i, n = {}, nil, 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c:match("%s") then
      if cur then words[#words + 1] = cur cur = nil end
    elseif c == "'" then
      local j = s:find("'", i + 1, true)
      if not j then return nil, "unterminated ' quote" end
      cur = (cur or "") .. s:sub(i + 1, j - 1)
      i = j
    elseif c == '"' then
      local buf, j = {}, i + 1
      while true do
        if j > n then return nil, 'unterminated " quote' end
        local d = s:sub(j, j)
        if d == '"' then break end
        if d == "\\" and s:sub(j + 1, j + 1):match('["\\$`]') then j = j + 1 d = s:sub(j, j) end
        buf[#buf + 1] = d
        j = j + 1
      end
      cur = (cur or "") .. table.concat(buf)
      i = j
    elseif c == "\\" and i < n then
      cur = (cur or "") .. s:sub(i + 1, i + 1)
      i = i + 1
    else
      cur = (cur or "") .. c
    end
    i = i + 1
  end
  if cur then words[#words + 1] = cur end
  return words
end

-- `args` with Packer's single-dash flags (-var, -only=...) rewritten as
-- capil's (--var, --only=...) where `have` (the command's long option
-- names) has them; `note(name)` is called for each rewritten flag. Stops at
-- "--".
local function packer_args(args, have, note)
  local out = {}
  for i, a in ipairs(args) do
    if a == "--" then
      for j = i, #args do out[#out + 1] = args[j] end
      break
    end
    local name, rest = a:match("^%-(%a[%w%-]+)(.*)$")
    local target = name and PACKER_SINGLE[name]
    if target and have[target] and (rest == "" or rest:sub(1, 1) == "=") then
      note(name, target)
      a = "--" .. target .. rest
    end
    out[#out + 1] = a
  end
  return out
end

-- The words of PACKER_FLAGS as capil options for a command with the long
-- options `have`: Packer's flags (single or double dash) it knows, the
-- ones without a meaning for capil dropped. nil and a message otherwise.
local function packer_flags(env, have, ignored)
  local words, werr = M.shell_words(env)
  if not words then return nil, "PACKER_FLAGS: " .. werr end
  local out, i = {}, 1
  while i <= #words do
    local w = words[i]
    local name, rest = w:match("^%-%-?(%a[%w%-]*)(.*)$")
    if not name or (rest ~= "" and rest:sub(1, 1) ~= "=") then
      return nil, ("PACKER_FLAGS: '%s' is not a flag capil knows (%s)"):format(w,
        "-var, -var-file, -only, -except, -force, -on-error, -debug")
    end
    local target = PACKER_SINGLE[name]
    if PACKER_IGNORED[name] then
      ignored[#ignored + 1] = "-" .. name
      if rest == "" and words[i + 1] and not words[i + 1]:match("^%-") and name ~= "machine-readable"
        and name ~= "timestamp-ui" then
        i = i + 1 -- "-color false"
      end
    elseif not target then
      return nil, ("PACKER_FLAGS: '-%s' is not a flag capil knows (%s)"):format(name,
        "-var, -var-file, -only, -except, -force, -on-error, -debug")
    elseif not have[target] then -- a flag for another command (-only for inspect)
      ignored[#ignored + 1] = "-" .. name
      if rest == "" and PACKER_VALUED[name] then i = i + 1 end
    else
      out[#out + 1] = "--" .. target .. rest
      if rest == "" and type(have[target]) == "table" and have[target].arg then -- "-var k=v"
        i = i + 1
        if words[i] == nil then return nil, ("PACKER_FLAGS: '%s' needs a value"):format(w) end
        out[#out + 1] = words[i]
      end
    end
    i = i + 1
  end
  return out
end

--- image-builder's make target names: `build-node-ova-<backend>-<recipe>`
--- (backend vsphere, local, esx or qemu; recipe `all` for every recipe) and
--- `build-qemu-<recipe>`. Returns the recipe name (or "all") and the
--- backend, or nil when `name` is not one.
---@param name string
---@return string? recipe, string? backend
function M.make_target(name)
  local b, r = name:match("^build%-node%-ova%-(%a+)%-(.+)$")
  if not b then
    r = name:match("^build%-qemu%-(.+)$")
    b = r and "qemu"
  end
  if not b or not r:match("^[%w][%w%._%-]*$") then return nil end
  local backends = { vsphere = "vsphere", ["local"] = "local", esx = "esx", qemu = "qemu" }
  if not backends[b] then return nil end
  return r, backends[b]
end

-- The global options also taken after the command (`capil run R -v`).
local AFTER_COMMAND = { verbose = true, quiet = true, ["log-format"] = true }

--- Entry point from the C host: args are argv[1..]; returns the exit status.
---@param args string[]
---@return integer
function M.main(args)
  local g, rest = M.parse(args, GLOBAL_OPTIONS, "capil", true)
  local function configure()
    local fmt = g["log-format"]
    if fmt and fmt ~= "text" and fmt ~= "json" then
      M.fail(("--log-format must be text or json, not '%s'"):format(fmt), 2)
    end
    log.configure({ verbose = g.verbose, quiet = g.quiet, format = fmt })
    -- CAPIL_LOG=1 (and CAPIL_LOG_PATH), as PACKER_LOG
    local ok, lerr = log.from_env(os.getenv)
    if not ok then M.fail(lerr, 2) end
  end
  configure()
  if g.version then rest = { "version" } end
  local notes = {}
  -- image-builder's make targets: `capil build-node-ova-vsphere-ubuntu-2004`
  if rest[1] and not M.command(rest[1]) then
    local recipe, backend = M.make_target(rest[1])
    if recipe then
      local form = recipe == "all" and { "run", "--all", "--backend", backend } or { "run", recipe, "--backend", backend }
      notes[#notes + 1] = ("%s is image-builder's make target; capil's form is 'capil %s'"):format(rest[1],
        table.concat(form, " "))
      for i = 2, #rest do form[#form + 1] = rest[i] end
      rest = form
    end
  end
  local name = rest[1]
  if not name or (g.help and not name) then
    io.stdout:write(M.usage(), "\n")
    return name and 0 or (g.help and 0 or 2)
  end
  if name == "-e" or name == "-" or name:find("/", 1, true) or name:match("%.lua$") then
    return M.run_script(rest)
  end
  local cmd = M.command(name)
  if not cmd then
    M.fail(("unknown command '%s'; run 'capil --help' for the list"):format(name), 2)
  end
  local cargs = { table.unpack(rest, 2) }
  if g.help then
    io.stdout:write(M.command_help(name, cmd), "\n")
    return 0
  end
  for _, a in ipairs(cargs) do
    if a == "--help" or a == "-h" then
      -- a command with subcommands may give each its own help
      io.stdout:write(cmd.help_for and cmd.help_for(cargs) or M.command_help(name, cmd), "\n")
      return 0
    end
    if a == "--" then break end
  end
  -- Packer's habits: PACKER_FLAGS and single-dash flags (-var, -only=...)
  local spec, have = {}, {}
  for _, o in ipairs(cmd.options or {}) do
    spec[#spec + 1] = o
    have[o.name] = o
    if o.short then have["-" .. o.short] = true end
  end
  local seen = {}
  cargs = packer_args(cargs, have, function(flag, target)
    if not seen[flag] then
      seen[flag] = true
      notes[#notes + 1] = ("-%s is Packer's form; capil's is --%s"):format(flag, target)
    end
  end)
  local pf = os.getenv("PACKER_FLAGS")
  if pf and pf:match("%S") and have.var then
    local ignored = {}
    local words, perr = packer_flags(pf, have, ignored)
    if not words then M.fail(name .. ": " .. perr, 2) end
    local names, nseen = {}, {}
    for _, w in ipairs(words) do
      local n = w:match("^(%-%-[^=]+)")
      if n and not nseen[n] then nseen[n] = true names[#names + 1] = n end
    end
    if #names > 0 then
      notes[#notes + 1] = ("PACKER_FLAGS read as %s (capil's form: those options on the command line)"):format(
        table.concat(names, ", "))
    end
    if #ignored > 0 then
      notes[#notes + 1] = ("PACKER_FLAGS: %s ignored (no meaning for capil %s)"):format(table.concat(ignored, ", "), name)
    end
    -- before the command line's own, which win (the last --var wins)
    for i, w in ipairs(words) do table.insert(cargs, i, w) end
  end
  -- the global options are also taken after the command (`capil run R -v`)
  for _, o in ipairs(GLOBAL_OPTIONS) do
    if AFTER_COMMAND[o.name] and not have[o.name] and not (o.short and have["-" .. o.short]) then
      spec[#spec + 1] = o
    end
  end
  local opts, pos = M.parse(cargs, spec, name, cmd.stop_at_positional)
  local again = false
  for k in pairs(AFTER_COMMAND) do
    if opts[k] ~= nil and not have[k] then
      g[k], opts[k], again = opts[k], nil, true
      if k == "verbose" then g.quiet = nil elseif k == "quiet" then g.verbose = nil end
    end
  end
  if again then configure() end
  for _, n in ipairs(notes) do log.info("note: %s", n) end
  -- make targets as recipe names: `capil inspect build-node-ova-vsphere-ubuntu-2004`
  if have.var and have.backend then
    for i, a in ipairs(pos) do
      local recipe, backend = M.make_target(a)
      if recipe and not a:find("/", 1, true) then
        if opts.backend and opts.backend ~= backend then
          M.fail(("%s: %s is image-builder's target for the %s backend, but --backend is %s"):format(name, a,
            backend, opts.backend), 2)
        end
        opts.backend = backend
        if recipe == "all" then
          if not have.all then M.fail(("%s: %s: name recipes ('all' is for 'capil run')"):format(name, a), 2) end
          opts.all = true
          pos[i] = false
        else
          pos[i] = recipe
        end
        log.info("note: %s is image-builder's make target; capil's form is 'capil %s %s --backend %s'", a, name,
          recipe == "all" and "--all" or recipe, backend)
      end
    end
    local kept = {}
    for _, a in ipairs(pos) do if a then kept[#kept + 1] = a end end
    pos = kept
  end
  local code = cmd.run(opts, pos, g)
  if code == nil or code == true then return 0 end
  if code == false then return 1 end
  return code
end

--- Runs a command made of subcommands (`capil ova pack`, `capil vmdk
--- convert`): `subs` maps each name to its {options=}, `run` to its
--- function(opts, args); `order` lists the names for messages.
---@param group string
---@param args string[]
---@param subs table<string, {options: table}>
---@param run table<string, fun(opts: table, args: string[]): integer>
---@param order string[]
function M.subcommand(group, args, subs, run, order)
  local name = args[1]
  local list = table.concat(order, ", ")
  if not name then M.fail(("%s: name a subcommand: %s (see 'capil help %s')"):format(group, list, group), 2) end
  local sub = subs[name]
  if not sub then M.fail(("%s: unknown subcommand '%s' (%s)"):format(group, name, list), 2) end
  local opts, rest = M.parse({ table.unpack(args, 2) }, sub.options, group .. " " .. name)
  return run[name](opts, rest)
end

return M
