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

--- Entry point from the C host: args are argv[1..]; returns the exit status.
---@param args string[]
---@return integer
function M.main(args)
  local g, rest = M.parse(args, GLOBAL_OPTIONS, "capil", true)
  local fmt = g["log-format"]
  if fmt and fmt ~= "text" and fmt ~= "json" then
    M.fail(("--log-format must be text or json, not '%s'"):format(fmt), 2)
  end
  log.configure({ verbose = g.verbose, quiet = g.quiet, format = fmt })
  if g.version then rest = { "version" } end
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
  local opts, pos = M.parse(cargs, cmd.options or {}, name, cmd.stop_at_positional)
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
