--- capil.sys.log — leveled logging to stderr (text or one JSON object per line),
--- progress reporting for long transfers, and the secret registry: a value
--- registered with `log.secret` is replaced by `****` in every log line, in
--- the errors the host prints, and in reports (`log.redact`).
local core = require("capil.core.log")
local optcheck = require("capil.util.opts").check

local M = {}

local LEVELS = { error = 1, warn = 2, info = 3, debug = 4, trace = 5 }
local level = LEVELS.info
local format = "text"
local CONFIGURE_OPTS = { level = true, verbose = true, quiet = true, format = true, color = true }
local sinks = {} -- extra files (build logs): always get every level, as text
local context = {} -- fields of every record (step, vm) while a step runs

-- Colour: on a terminal, unless NO_COLOR is set (any non-empty value) or
-- the output is JSON. Decided per stream (stderr for the log, stdout for
-- results); `log.configure{color=}` forces it either way.
local color_forced
local function no_color_env()
  local v = os.getenv("NO_COLOR")
  return v ~= nil and v ~= ""
end
local function colored(fd)
  if format == "json" then return false end
  if color_forced ~= nil then return color_forced end
  return not no_color_env() and core.isatty(fd)
end

local SGR = {
  error = "\27[1;31m", warn = "\27[33m", info = "\27[1;36m", debug = "\27[2m", trace = "\27[2m",
  subject = "\27[1m", step = "\27[35m", result = "\27[32m", reset = "\27[0m",
}

--- Sets the output: `level` ("error".."trace"), `verbose`/`quiet` shortcuts,
--- `format` ("text" | "json"), `color` (true/false; default: on a terminal
--- without NO_COLOR).
---@param opts {level?: string, verbose?: boolean, quiet?: boolean, format?: string, color?: boolean}
function M.configure(opts)
  opts = optcheck(opts, CONFIGURE_OPTS, "log.configure")
  if opts.level then
    level = LEVELS[opts.level] or error(("log.configure: unknown level '%s'"):format(opts.level), 2)
  end
  if opts.verbose then level = LEVELS.debug end
  if opts.quiet then level = LEVELS.warn end
  if opts.format then format = opts.format end
  if opts.color ~= nil then color_forced = opts.color and true or false end
  core.configure({ quiet = opts.quiet and true or nil, format = opts.format, color = colored(2) })
end

--- Whether lines to `fd` (2: the log, 1: results) are coloured.
---@param fd? integer
function M.colored(fd)
  return colored(fd or 2)
end

--- Adds `fields` (step=, vm=, …) to every record until the returned
--- function is called; JSON records carry them, text lines do not change.
---@param fields table
---@return fun()
function M.context(fields)
  local saved = {}
  for k, v in pairs(fields) do
    saved[k] = { context[k] }
    context[k] = v
  end
  return function()
    for k, old in pairs(saved) do context[k] = old[1] end
  end
end

--- The current level name.
function M.level()
  for name, n in pairs(LEVELS) do
    if n == level then return name end
  end
end

--- Registers a value that must never be shown; returns `value`.
---@generic T
---@param value T
---@return T
function M.secret(value)
  if type(value) == "string" then core.secret(value) end
  return value
end

--- Registers the password of every URL in `s` ("scheme://user:PASSWORD@host",
--- a proxy's, a mirror's), whatever the variable holding it is called, in
--- its written and its percent-decoded forms.
---@param s any a string, or a list of them
function M.secret_urls(s)
  if type(s) == "table" then -- a list of URLs (mirrors)
    for _, v in ipairs(s) do if type(v) == "string" then M.secret_urls(v) end end
    return
  end
  if type(s) ~= "string" then return end
  for pw in s:gmatch("://[^/?#@%s:]*:([^/?#@%s]+)@") do
    core.secret(pw)
    core.secret((pw:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)))
  end
end

--- `s` with every registered secret, and every URL's password, replaced
--- by `****`.
---@param s any
---@return string
function M.redact(s)
  return core.redact(s)
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
    return named[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local function json_value(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return math.type(v) == "integer" and tostring(v) or ("%.17g"):format(v)
  elseif t == "boolean" then
    return tostring(v)
  end
  return json_string(tostring(v))
end

--- Opens `path` as an extra sink (a build's log file); returns a closer.
---@param path string
---@return fun()
function M.add_file(path)
  local f, err = io.open(path, "a")
  if not f then return nil, "log.add_file: " .. err end
  f:setvbuf("line")
  sinks[#sinks + 1] = f
  return function()
    for i, s in ipairs(sinks) do
      if s == f then table.remove(sinks, i) break end
    end
    f:close()
  end
end

local RESERVED = { time = true, level = true, msg = true }

-- A text line with colour: the level prefix, the subject before the first
-- ": " (a VM, the ISO, a command) and "step NAME".
local function write_colored(lvl, prefix, msg)
  core.write("") -- clears a progress bar
  io.stderr:write(SGR[lvl])
  core.write(prefix)
  io.stderr:write(SGR.reset)
  msg = M.redact(msg) -- before it is cut in pieces
  local subject, rest = msg:match("^([^%s:]+)(: .*)$")
  if subject and lvl ~= "debug" and lvl ~= "trace" then
    io.stderr:write(SGR.subject)
    core.write(subject)
    io.stderr:write(SGR.reset)
    msg = rest
  end
  local a, name, b = msg:match("^(.-step )([%w_%.%-]+)(.*)$")
  if a then
    core.write(a)
    io.stderr:write(SGR.step)
    core.write(name)
    io.stderr:write(SGR.reset)
    msg = b
  end
  core.write(msg .. "\n")
end

local env_sink -- the CAPIL_LOG_PATH file, opened once

--- Packer's PACKER_LOG/PACKER_LOG_PATH habit: CAPIL_LOG set (not empty, not
--- "0") turns debug logging on, on stderr, or, with CAPIL_LOG_PATH, into
--- that file (appended; every level, as the build log) while stderr keeps
--- its level. CAPIL_LOG_PATH alone does nothing, as PACKER_LOG_PATH.
--- Returns true, or nil and a message when the file cannot be opened.
---@param getenv fun(name: string): string?
---@return boolean|nil ok, string? err
function M.from_env(getenv)
  local on = getenv("CAPIL_LOG")
  if not on or on == "" or on == "0" then return true end
  local path = getenv("CAPIL_LOG_PATH")
  if not path or path == "" then
    level = LEVELS.debug
    return true
  end
  if env_sink then return true end
  local close, err = M.add_file(path)
  if not close then return nil, ("CAPIL_LOG_PATH: %s"):format(tostring(err):gsub("^log%.add_file: ", "")) end
  env_sink = close
  return true
end

--- Writes one record; `fields` (optional) are extra key/values (a JSON
--- record carries them, with the context's: step, vm, url, bytes, rate).
---@param lvl string
---@param msg string
---@param fields? table
function M.log(lvl, msg, fields)
  local n = LEVELS[lvl] or error(("log: unknown level '%s'"):format(tostring(lvl)), 2)
  msg = tostring(msg)
  if #sinks > 0 then
    local line = M.redact(("%s %-5s %s\n"):format(os.date("!%Y-%m-%dT%H:%M:%SZ"), lvl, msg))
    for _, f in ipairs(sinks) do f:write(line) end
  end
  if n > level then return end
  if format == "json" then
    local parts = {
      '"time":' .. json_string(os.date("!%Y-%m-%dT%H:%M:%SZ")),
      '"level":' .. json_string(lvl),
      '"msg":' .. json_string(msg),
    }
    local all = {}
    for k, v in pairs(context) do all[tostring(k)] = v end
    for k, v in pairs(fields or {}) do all[tostring(k)] = v end
    local keys = {}
    for k in pairs(all) do if not RESERVED[k] then keys[#keys + 1] = k end end
    table.sort(keys)
    for _, k in ipairs(keys) do
      parts[#parts + 1] = json_string(k) .. ":" .. json_value(all[k])
    end
    core.write("{" .. table.concat(parts, ",") .. "}\n")
  else
    local prefix = (lvl == "info") and "==> " or (lvl .. ": ")
    if colored(2) then
      write_colored(lvl, prefix, msg)
    else
      core.write(prefix .. msg .. "\n")
    end
  end
end

--- Writes a record to the log files (build.log) only: the final error of a
--- build, which the command prints itself.
---@param lvl string
---@param msg string
function M.to_files(lvl, msg)
  if #sinks == 0 then return end
  local line = M.redact(("%s %-5s %s\n"):format(os.date("!%Y-%m-%dT%H:%M:%SZ"), lvl, tostring(msg)))
  for _, f in ipairs(sinks) do f:write(line) end
end

local function leveled(lvl, gate)
  return function(fmt, ...)
    if gate and level < LEVELS[lvl] and #sinks == 0 then return end
    M.log(lvl, select("#", ...) > 0 and fmt:format(...) or fmt)
  end
end

M.error = leveled("error")
M.warn = leveled("warn")
M.info = leveled("info")
M.debug = leveled("debug", true)
M.trace = leveled("trace", true)

--- A logger whose records carry `fields` (url=, bytes=, rate=, vm=): its
--- error/warn/info/debug/trace take a format and arguments as log.info does.
---@param fields table
function M.with(fields)
  local L = {}
  for _, lvl in ipairs({ "error", "warn", "info", "debug", "trace" }) do
    L[lvl] = function(fmt, ...)
      if LEVELS[lvl] > level and #sinks == 0 then return end
      M.log(lvl, select("#", ...) > 0 and fmt:format(...) or fmt, fields)
    end
  end
  return L
end

--- A progress reporter for a transfer of `total` bytes: a bar on a terminal,
--- a plain line every `interval` seconds otherwise, nothing when quiet. Pass
--- it to http/ssh/ova calls as `progress=`; close it (or use `<close>`) at the end.
---@param opts {label: string, total?: integer, mode?: string, interval?: number}
function M.progress(opts)
  return core.progress(opts)
end

--- Writes a terminal control sequence (a status display's cursor moves) to
--- stderr as is, only when it is a terminal; everything else written is
--- escaped.
---@param seq string
function M.control(seq)
  core.control(seq)
end

--- Prints a line for the user on stdout (results, not diagnostics),
--- redacted. A one-line result (a path, a URL, an id) is green on a colour
--- terminal; listings stay plain.
function M.out(s)
  s = tostring(s)
  if colored(1) and not s:find("\n", 1, true) then
    io.stdout:write(SGR.result)
    core.write(tostring(s), 1)
    io.stdout:write(SGR.reset)
    core.write("\n", 1)
  else
    core.write(tostring(s) .. "\n", 1)
  end
end

--- Prints a line on stderr as it is (no level prefix), redacted and with
--- control characters escaped: lists of errors a command reports itself.
function M.err(s)
  core.write(tostring(s) .. "\n", 2)
end

return M
