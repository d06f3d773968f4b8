-- spec/support/capil.lua — runs the capil binary under test (the one running
-- these specs: build/capil or build-asan/capil) as a child process.
local proc = require("capil.sys.proc")
local runtime = require("capil.core.runtime")

local M = {}

M.exe = assert(runtime.exepath())

--- Runs `capil args...`; returns {code, stdout, stderr}.
---@param args string[]
---@param opts? {stdin?: string, env_add?: table, timeout?: number, cwd?: string}
function M.run(args, opts)
  opts = opts or {}
  local argv = { M.exe }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run({
    argv = argv, stdin = opts.stdin, env_add = opts.env_add, cwd = opts.cwd,
    timeout = opts.timeout or 30,
  }))
end

--- Asserts that a failed build left nothing but logs and the report in its
--- output directory: no work dir, no OVA, no partial file.
---@param dir string
function M.assert_no_leftovers(dir)
  local assert = require("luassert")
  for _, f in ipairs(require("capil.sys.fs").list(dir) or {}) do
    assert.is_nil(f:match("^%.work"), "work dir left: " .. f)
    assert.is_nil(f:match("%.ova$"), "OVA left: " .. f)
    assert.is_nil(f:match("%.part"), "partial file left: " .. f)
  end
end

--- Writes a Lua script into dir and returns its path.
function M.script(dir, name, source)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(source)
  f:close()
  return path
end

return M
