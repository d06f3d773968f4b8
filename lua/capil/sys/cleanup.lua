--- capil.sys.cleanup — the stack of undo actions a run registers as it creates
--- things (VMs, uploads, temp dirs, child processes). The host runs it in
--- reverse order when a script ends, fails or is interrupted (Ctrl-C), so a
--- build leaves nothing behind unless asked to (`--keep-on-error`).

-- One stack per Lua state, even when package.loaded is reset (busted's
-- insulation does that between spec files): the module lives in the
-- registry, where the host finds it at exit.
local REG = debug.getregistry()
if REG["capil.sys.cleanup"] then return REG["capil.sys.cleanup"] end

local M = {}
REG["capil.sys.cleanup"] = M

local stack = {}
local kept = false

---@class capil.CleanupHandle
---@field what string
local Handle = {}
Handle.__index = Handle

--- Runs this cleanup now (once) and removes it from the stack.
function Handle:run()
  if self.done then return true end
  self:cancel()
  self.done = true
  return pcall(self.fn)
end

--- Removes this cleanup from the stack without running it (the thing it
--- would undo was handed over, or undone another way).
function Handle:cancel()
  for i = #stack, 1, -1 do
    if stack[i] == self then
      table.remove(stack, i)
      break
    end
  end
end

--- Registers `fn` to run at cleanup; `what` names the thing for messages.
---@param what string
---@param fn fun()
---@return capil.CleanupHandle
function M.push(what, fn)
  assert(type(what) == "string", "cleanup.push: 'what' must be a string")
  assert(type(fn) == "function", "cleanup.push: 'fn' must be a function")
  local h = setmetatable({ what = what, fn = fn }, Handle)
  stack[#stack + 1] = h
  return h
end

--- Number of pending cleanups.
function M.count()
  return #stack
end

--- Names of the pending cleanups, oldest first.
function M.pending()
  local t = {}
  for i, h in ipairs(stack) do t[i] = h.what end
  return t
end

--- After a failure, keep what was created (`--keep-on-error`): run_all with a
--- reason other than "exit" will then list the pending items instead.
function M.keep_on_error(on)
  kept = on and true or false
end

--- Runs the cleanups registered since the stack held `mark` entries (a
--- `count()` taken before), newest first, leaving the older ones pending:
--- the undo of one scope. Returns whether all of them succeeded, and the
--- first failure's message.
---@param mark integer
---@return boolean ok, string? err
function M.unwind(mark)
  local ok, first = true, nil
  while #stack > mark do
    local h = table.remove(stack)
    h.done = true
    local good, err = pcall(h.fn)
    if not good then
      ok = false
      first = first or ("cleanup of %s failed: %s"):format(h.what, tostring(err))
    end
  end
  return ok, first
end

--- Runs every pending cleanup, newest first. Failures are reported and do
--- not stop the others. Called by the host; `reason` is "exit", "error" or
--- "interrupted".
---@param reason string
function M.run_all(reason)
  if kept and reason ~= "exit" and #stack > 0 then
    io.stderr:write("capil: kept after failure (--on-error=abort):\n")
    for i = #stack, 1, -1 do io.stderr:write("  " .. stack[i].what .. "\n") end
    stack = {}
    return
  end
  while #stack > 0 do
    local h = table.remove(stack)
    h.done = true
    local ok, err = pcall(h.fn)
    if not ok then
      local log = package.loaded["capil.sys.log"]
      local msg = ("cleanup of %s failed: %s"):format(h.what, tostring(err))
      if log then log.warn(msg) else io.stderr:write("capil: " .. msg .. "\n") end
    end
  end
end

return M
