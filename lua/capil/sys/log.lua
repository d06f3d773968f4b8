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
local CONFIGURE_OPTS = { level = true, verbose = true, quiet = true, format = true }
local sinks = {} -- extra files (build logs): always get every level, as text

--- Sets the output: `level` ("error".."trace"), `verbose`/`quiet` shortcuts,
--- `format` ("text" | "json").
---@param opts {level?: string, verbose?: boolean, quiet?: boolean, format?: string}
function M.configure(opts)
  opts = optcheck(opts, CONFIGURE_OPTS, "log.configure")
  if opts.level then
    level = LEVELS[opts.level] or error(("log.configure: unknown level '%s'"):format(opts.level), 2)
  end
  if opts.verbose then level = LEVELS.debug end
  if opts.quiet then level = LEVELS.warn end
  if opts.format then format = opts.format end
  core.configure({ quiet = opts.quiet and true or nil, format = opts.format })
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

--- Writes one record; `fields` (optional) are extra key/values.
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
    if fields then
      local keys = {}
      for k in pairs(fields) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      for _, k in ipairs(keys) do
        parts[#parts + 1] = json_string(k) .. ":" .. json_value(fields[k])
      end
    end
    core.write("{" .. table.concat(parts, ",") .. "}\n")
  else
    local prefix = (lvl == "info") and "==> " or (lvl .. ": ")
    core.write(prefix .. msg .. "\n")
  end
end

function M.error(fmt, ...) M.log("error", select("#", ...) > 0 and fmt:format(...) or fmt) end
function M.warn(fmt, ...) M.log("warn", select("#", ...) > 0 and fmt:format(...) or fmt) end
function M.info(fmt, ...) M.log("info", select("#", ...) > 0 and fmt:format(...) or fmt) end
function M.debug(fmt, ...)
  if level >= LEVELS.debug or #sinks > 0 then
    M.log("debug", select("#", ...) > 0 and fmt:format(...) or fmt)
  end
end
function M.trace(fmt, ...)
  if level >= LEVELS.trace or #sinks > 0 then
    M.log("trace", select("#", ...) > 0 and fmt:format(...) or fmt)
  end
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

--- Prints a line for the user on stdout (results, not diagnostics), redacted.
function M.out(s)
  core.write(tostring(s) .. "\n", 1)
end

--- Prints a line on stderr as it is (no level prefix), redacted and with
--- control characters escaped: lists of errors a command reports itself.
function M.err(s)
  core.write(tostring(s) .. "\n", 2)
end

return M
