--- capil.sys.proc — child processes from argv arrays (never a shell string).
--- `proc.run` runs one to completion with optional input, timeout and
--- line-by-line output streaming, and returns `{code, signal, stdout, stderr}`;
--- a timeout is a distinct result: `nil, msg, "ETIMEDOUT", partial`.
local core = require("capil.core.proc")
local optcheck = require("capil.util.opts").check

local M = {}
M.spawn = core.spawn
M.alive = core.alive
M.kill = core.kill
M.getpid = core.getpid
M.exec = core.exec

local RUN_OPTS = {
  argv = true, env = true, env_add = true, cwd = true, stdin = true,
  timeout = true, on_line = true, on_output = true, grace = true,
}

local function describe(argv)
  return argv[1] or "?"
end

--- Runs a command to completion.
--- `stdin` is a string fed to the child (or nil for /dev/null);
--- `on_line(stream, line)` receives each complete line as it arrives,
--- `on_output(stream, chunk)` each chunk; output is also collected unless
--- a callback is given. On timeout the child gets SIGTERM, then SIGKILL after
--- `grace` seconds.
---@param opts {argv: string[], env?: table, env_add?: table, cwd?: string, stdin?: string, timeout?: number, on_line?: fun(stream: string, line: string), on_output?: fun(stream: string, chunk: string), grace?: number}
---@return {code: integer, signal?: integer, stdout: string, stderr: string}|nil
---@return string? err
---@return string? code
function M.run(opts)
  opts = optcheck(opts, RUN_OPTS, "proc.run")
  if type(opts.argv) ~= "table" then error("proc.run: option 'argv' must be a table of strings", 2) end
  local p, err, code = core.spawn({
    argv = opts.argv, env = opts.env, env_add = opts.env_add, cwd = opts.cwd,
    stdin = opts.stdin and "pipe" or "null", stdout = "pipe", stderr = "pipe",
  })
  if not p then return nil, err, code end
  local out, errs = {}, {}
  local partial = { stdout = "", stderr = "" }
  local runtime = require("capil.core.runtime")
  local pending = { stdout = "", stderr = "" }
  local collect = not (opts.on_line or opts.on_output)
  local now = runtime.now
  local deadline = opts.timeout and (now() + opts.timeout)

  local input, offset = opts.stdin, 0
  if input == "" then p:close_stdin() input = nil end

  local function deliver(stream, chunk)
    if collect then
      if stream == "stdout" then out[#out + 1] = chunk else errs[#errs + 1] = chunk end
    end
    if opts.on_output then opts.on_output(stream, chunk) end
    if opts.on_line then
      local buf = pending[stream] .. chunk
      for line in buf:gmatch("([^\n]*)\n") do opts.on_line(stream, line) end
      pending[stream] = buf:match("[^\n]*$")
    end
  end

  while true do
    local left = deadline and math.max(0, deadline - now()) or nil
    local stream, chunk, rcode = p:read({ timeout = left, input = input, offset = input and offset })
    if stream == "stdin" then
      offset = offset + chunk
      if offset >= #input then
        p:close_stdin()
        input = nil
      end
    elseif stream == nil then
      if chunk == nil then break end -- both pipes closed
      p:close(opts.grace or 2)
      partial.stdout, partial.stderr = table.concat(out), table.concat(errs)
      local what = rcode == "ETIMEDOUT"
        and ("proc.run: %s timed out after %g s"):format(describe(opts.argv), opts.timeout)
        or chunk
      return nil, what, rcode, partial
    else
      deliver(stream, chunk)
    end
  end
  if opts.on_line then
    for stream, rest in pairs(pending) do
      if rest ~= "" then opts.on_line(stream, rest) end
    end
  end
  local left = deadline and math.max(0, deadline - now()) or nil
  local status, werr, wcode = p:wait(left and { timeout = left } or nil)
  if not status then
    p:close(opts.grace or 2)
    partial.stdout, partial.stderr = table.concat(out), table.concat(errs)
    if wcode == "ETIMEDOUT" then
      werr = ("proc.run: %s timed out after %g s"):format(describe(opts.argv), opts.timeout)
    end
    return nil, werr, wcode, partial
  end
  p:close()
  status.stdout = table.concat(out)
  status.stderr = table.concat(errs)
  return status
end

return M
