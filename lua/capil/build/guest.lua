--- capil.build.guest — what a build does inside the VM, the same for every
--- backend: wait for SSH (failing fast when the VM dies), run the roles'
--- steps (shell, copy, upload, reboot, ansible) and the image checks over
--- one SSH session, with output streamed into the build log.
local ssh = require("capil.sys.ssh")
local checks = require("capil.build.checks")
local runtime = require("capil.core.runtime")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")
local log = require("capil.sys.log")

local M = {}
local quote = require("capil.util.text").shell_quote

--- Waits until SSH answers on host:port and logs in. `alive()` is asked
--- every few seconds: when it returns false (the VM powered off, QEMU
--- exited), the wait fails at once with its message. `on_dead()` may
--- instead return true to keep waiting (an installer that powered off and
--- was restarted from disk).
--- `deadline` (absolute, runtime.now() time) ends the wait when an earlier step
--- (the guest IP wait) already used part of `timeout`.
---@param o {host: string, port: integer, user: string, password?: string, key?: string, timeout: number, deadline?: number, alive?: fun(): boolean, string?, what?: string}
---@return table|nil session, string? err, string? code
function M.wait_ssh(o)
  local deadline = o.deadline or (runtime.now() + o.timeout)
  local what = o.what or ("%s:%d"):format(o.host, o.port)
  while true do
    if o.alive then
      local alive, why = o.alive()
      if not alive then return nil, ("%s: %s while waiting for SSH"):format(what, why or "the VM stopped"), "EVMDIED" end
    end
    local left = deadline - runtime.now()
    if left <= 0 then
      return nil, ("%s: no SSH after %g s%s"):format(what, o.timeout, o.hint and ("; " .. o.hint) or ""), "ETIMEDOUT"
    end
    local ok, _, code = ssh.wait({ host = o.host, port = o.port, timeout = math.min(5, left), interval = 0.5 })
    if code == "EINTR" then return nil, what .. ": interrupted", "EINTR" end
    if ok then
      local s, err, scode = ssh.connect({ host = o.host, port = o.port, user = o.user, password = o.password,
        key = o.key, timeout = 30, host_key = "accept-new" })
      if s then return s end
      -- sshd answers before the installer's user exists: retry until the deadline
      if scode == "EINTR" then return nil, err, scode end
      log.debug("%s: SSH not ready: %s", what, err)
      runtime.sleep(2)
    end
  end
end

-- sudo when the step asks for it (image-builder's `become`, the default),
-- unless the session already is root (minimal guests have no sudo)
local function wrap(step, script, env, session)
  local parts = {}
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. quote(v) end
  table.sort(parts)
  local cmd = "sh -c " .. quote(script)
  if #parts > 0 then cmd = "env " .. table.concat(parts, " ") .. " " .. cmd end
  if step.become ~= false and not (session and session.user == "root") then cmd = "sudo -n " .. cmd end
  return cmd
end

-- Runs cmd streaming its lines into the build log (debug level); the result
-- keeps the last 4 KiB of each stream for error messages.
local function exec_logged(session, cmd, what, timeout)
  local tail = { stdout = {}, stderr = {} }
  local size = { stdout = 0, stderr = 0 }
  local r, err, code = session:exec(cmd, {
    timeout = timeout or 3600,
    on_line = function(stream, line)
      log.debug("%s %s: %s", what, stream == "stderr" and "!" or "|", line)
      local t = tail[stream]
      t[#t + 1] = line
      size[stream] = size[stream] + #line + 1
      while size[stream] > 4096 and #t > 1 do size[stream] = size[stream] - #table.remove(t, 1) - 1 end
    end,
  })
  if r then
    r.stdout = table.concat(tail.stdout, "\n")
    r.stderr = table.concat(tail.stderr, "\n")
  end
  return r, err, code
end

-- The login directory of the session (uploads land there before `install`).
local function home_of(session)
  if not session.capil_home then
    local r = session:exec("pwd", { timeout = 30 })
    session.capil_home = r and r.code == 0 and r.stdout:gsub("%s+$", "") or "/tmp"
  end
  return session.capil_home
end

-- Puts `content` (or the local file `src`) at `dest` with mode and owner.
local function install_file(session, step, dest, opts)
  local tmp = ("%s/.capil-upload-%d-%d"):format(home_of(session), proc.getpid(), math.random(1, 1 << 30))
  local ok, err, code
  if opts.content then
    local dir
    dir, err, code = fs.tempdir({ prefix = "capil-copy" })
    if not dir then return nil, "a local temp dir for " .. dest .. ": " .. tostring(err), code end
    local lpath = dir .. "/content"
    ok, err, code = fs.write(lpath, opts.content)
    if ok then ok, err, code = session:put(lpath, tmp, { mode = 384 }) end
    fs.remove(dir, { recursive = true })
  else
    ok, err, code = session:put(opts.src, tmp, { mode = 384 })
  end
  if not ok then return nil, err, code end
  local owner, group = (opts.owner or "root:root"):match("^([^:]+):?(.*)$")
  local cmd = ("install -D -m %s -o %s -g %s %s %s; rc=$?; rm -f %s; exit $rc"):format(
    quote(opts.mode or "0644"), quote(owner), quote(group ~= "" and group or owner), quote(tmp), quote(dest), quote(tmp))
  local r
  r, err, code = exec_logged(session, wrap(step, cmd, nil, session), step.name)
  if not r then return nil, err, code end
  if r.code ~= 0 then return nil, ("exit %d: %s"):format(r.code, r.stderr), "ESTEP" end
  return true
end

--- Runs one step. Returns true, "skipped", or nil and an error naming the
--- role and step; a reboot step returns the new session as the second value.
---@param session table capil.sys.ssh session
---@param step table a role step (see capil.build.roles)
---@param ctx {reconnect: fun(): table|nil, string?}
function M.run_step(session, step, ctx)
  local what = ("%s: %s"):format(step.role or "step", step.name)
  for _, cond in ipairs({ { "unless", 0 }, { "only_if", 1 } }) do
    local test = step[cond[1]]
    if test then
      local r, err, code = exec_logged(session, wrap(step, test, step.env, session), what .. " (" .. cond[1] .. ")", 300)
      if not r then return nil, what .. ": " .. err, code end
      if (cond[2] == 0 and r.code == 0) or (cond[2] == 1 and r.code ~= 0) then return "skipped" end
    end
  end
  local kind = step.kind
  if kind == "shell" then
    local r, err, code = exec_logged(session, wrap(step, step.shell, step.env, session), what, step.timeout)
    if not r then return nil, what .. ": " .. err, code end
    if r.code ~= 0 then
      local tail = (r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", ""):sub(-800)
      return nil, ("%s: exit %d: %s"):format(what, r.code, tail), "ESTEP"
    end
    return true
  elseif kind == "copy" or kind == "upload" then
    local spec = step.copy or step.upload
    local ok, err, code = install_file(session, step, spec.dest,
      { content = spec.content, src = spec.src, mode = spec.mode, owner = spec.owner })
    if not ok then return nil, what .. ": " .. err, code end
    return true
  elseif kind == "reboot" then
    exec_logged(session, wrap(step, "sleep 1; reboot", nil, session), what, 30)
    session:close()
    runtime.sleep(5)
    local s, err, code = ctx.reconnect()
    if not s then return nil, what .. ": " .. err, code end
    return true, s
  elseif kind == "ansible" then
    return M.run_ansible(step, ctx)
  end
  return nil, ("%s: unknown step kind '%s'"):format(what, tostring(kind)), "ESTEP"
end

--- Runs a user's playbook against the VM with the local ansible-playbook.
function M.run_ansible(step, ctx)
  local what = ("%s: %s"):format(step.role or "step", step.name)
  local found = proc.run({ argv = { "sh", "-c", "command -v ansible-playbook" } })
  if not found or found.code ~= 0 then
    return nil, what .. ": ansible-playbook is not installed (install ansible, or remove this role)", "ENOANSIBLE"
  end
  local t = ctx.target
  local argv = { "ansible-playbook", "-i", ("%s,"):format(t.host), "-u", t.user, "-e",
    ("ansible_port=%d ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"):format(t.port),
    "--become", step.ansible.playbook }
  for k, v in pairs(step.ansible.extra_vars or {}) do
    argv[#argv + 1] = "-e"
    argv[#argv + 1] = ("%s=%s"):format(k, tostring(v))
  end
  local r, err, code = proc.run({ argv = argv, timeout = step.timeout or 7200, env_add = step.env,
    on_line = function(_, line) log.info("%s | %s", what, line) end })
  if not r then return nil, what .. ": " .. err, code end
  if r.code ~= 0 then return nil, ("%s: ansible-playbook exit %d"):format(what, r.code), "ESTEP" end
  return true
end

--- Runs the image checks, as root through `sudo -n` unless a check says
--- `become = false`; returns results ({ok, name, detail}) and whether all
--- passed.
function M.run_checks(session, list, os)
  local results = {}
  for _, check in ipairs(list) do
    local cmd = wrap(check, checks.compile(check, os), nil, session)
    local r, err = session:exec(cmd, { timeout = check.timeout or 120 })
    local res
    if not r then
      res = { ok = false, name = check.name or cmd, detail = err }
    else
      res = checks.evaluate(check, r)
    end
    results[#results + 1] = res
    if res.ok then log.debug("check %s: ok", res.name)
    else log.warn("check failed: %s: %s", res.name, res.detail or "") end
  end
  local all_ok = checks.summary(results)
  return results, all_ok
end

return M
