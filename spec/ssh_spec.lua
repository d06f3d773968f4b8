-- Specs for capil.sys.ssh / capil.core.ssh against a real OpenSSH sshd on
-- 127.0.0.1 (spec/support/sshd.lua). Password logins cannot succeed here: root
-- has no password and sshd runs without PAM, so only the refusal is tested.
local ssh = require("capil.sys.ssh")
local core = require("capil.core.ssh")
local sshd = require("support.sshd")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local log = require("capil.sys.log")
local runtime = require("capil.core.runtime")

local function sha256sum(path)
  local r = assert(proc.run({ argv = { "sha256sum", path } }))
  return (r.stdout:match("^(%x+)"))
end

-- Names in dir that look like capil temp files.
local function temps(dir)
  local found = {}
  for _, name in ipairs(assert(fs.list(dir))) do
    if name:find("capil-", 1, true) then found[#found + 1] = name end
  end
  return found
end

local function random_file(path, size)
  local p = assert(proc.spawn({ argv = { "head", "-c", tostring(size), "/dev/urandom" },
                                stdin = "null", stdout = path }))
  assert(p:wait({ timeout = 30 }))
  p:close()
end

describe("ssh #ssh", function()
  local server, scratch
  local dirs = {}

  -- A temp dir removed in teardown (busted's os.exit skips capil.sys.cleanup).
  local function tempdir(name)
    local d = peer.dir(name)
    dirs[#dirs + 1] = d
    return d
  end

  setup(function()
    server = sshd.start()
    scratch = tempdir("ssh-scratch")
  end)

  teardown(function()
    if server then server.stop() end
    for _, d in ipairs(dirs) do fs.remove(d, { recursive = true }) end
  end)

  local function opts(extra)
    local o = { host = "127.0.0.1", port = server.port, user = server.user, key = server.key,
                host_key = server.fingerprint, timeout = 10 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  describe("exec", function()
    local s
    setup(function() s = assert(ssh.connect(opts())) end)
    teardown(function() s:close() end)

    it("returns stdout, stderr and the exit code", function()
      assert.same({ code = 0, stdout = "out\n", stderr = "err\n" },
                  assert(s:exec("echo out; echo err >&2")))
      local r = assert(s:exec("echo partial; exit 3"))
      assert.equal(3, r.code)
      assert.equal("partial\n", r.stdout)
    end)

    it("reports a command killed by a signal", function()
      local r = assert(s:exec("kill -TERM $$"))
      assert.equal("TERM", r.signal)
      assert.equal(128 + 15, r.code)
    end)

    it("feeds stdin to the command, also more than a channel window", function()
      assert.equal("hello\nworld\n", assert(s:exec("cat", { stdin = "hello\nworld\n" })).stdout)
      local big = {}
      for i = 1, 200000 do big[i] = ("%07d\n"):format(i) end
      big = table.concat(big) -- 1.6 MB
      local r = assert(s:exec("cat", { stdin = big }))
      assert.equal(#big, #r.stdout)
      assert.is_true(r.stdout == big)
      assert.equal("0\n", assert(s:exec("wc -c", { stdin = "" })).stdout)
    end)

    it("sets env, exporting in the command when sshd refuses env requests", function()
      local r = assert(s:exec('printf "%s" "$GREETING"', { env = { GREETING = "it's here" } }))
      assert.equal("it's here", r.stdout)
    end)

    it("streams output in order to on_output and on_line", function()
      local got = {}
      local r = assert(s:exec("echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c", {
        on_output = function(stream, chunk) got[#got + 1] = stream .. ":" .. chunk end,
      }))
      assert.same({ "stdout:a\n", "stderr:b\n", "stdout:c\n" }, got)
      assert.equal("", r.stdout) -- not collected when streamed
      local lines = {}
      assert(s:exec("printf 'one\\ntw'; sleep 0.2; printf 'o\\nthree'", {
        on_line = function(stream, line) lines[#lines + 1] = stream .. ":" .. line end,
      }))
      assert.same({ "stdout:one", "stdout:two", "stdout:three" }, lines)
    end)

    it("re-raises an on_output error and keeps the session usable", function()
      assert.has_error(function()
        s:exec("echo x; exec cat", { on_output = function() error("boom", 0) end })
      end, "boom")
      assert.equal("ok\n", assert(s:exec("echo ok")).stdout)
      local c = assert(core.connect(opts()))
      assert.has_error(function()
        c:exec("echo x; exec cat", { on_output = function() c:close() end })
      end, "ssh.exec: on_output closed the session")
      assert.is_true(c.closed)
    end)

    it("times out with ETIMEDOUT and the session stays usable", function()
      local pidfile = scratch .. "/sleep.pid"
      local t0 = runtime.now()
      local r, err, code = s:exec("echo $$ > " .. pidfile .. "; exec sleep 10", { timeout = 1 })
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      assert.matches("timed out after 1 s", err, 1, true)
      assert.is_true(runtime.now() - t0 < 5)
      assert.equal("still here\n", assert(s:exec("echo still here")).stdout)
      -- the remote command is left running (documented): end it here
      assert(proc.kill(assert(tonumber(assert(fs.read(pidfile)))), "KILL"))
    end)

    it("times out even while output keeps flowing", function()
      local pidfile = scratch .. "/yes.pid"
      local bytes = 0
      -- 3 s: long enough for `yes` to start and stream on a loaded machine
      local r, _, code = s:exec("echo $$ > " .. pidfile .. "; exec yes", {
        timeout = 3, on_output = function(_, chunk) bytes = bytes + #chunk end,
      })
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      assert.is_true(bytes > 0)
      -- closing the channel usually ends `yes` by SIGPIPE already
      proc.kill(assert(tonumber(assert(fs.read(pidfile)))), "KILL")
      assert.equal("ok\n", assert(s:exec("echo ok")).stdout)
    end)

    it("raises on misuse", function()
      assert.has_error(function() s:exec("true", { tmeout = 1 }) end, "ssh.exec: unknown option 'tmeout'")
      assert.has_error(function() s:exec("true", { on_output = 1 }) end)
      assert.has_error(function() s:exec("true", { env = { 1 } }) end)
    end)
  end)

  describe("core exec", function()
    it("fails with SSH_ENV when sshd refuses an env request", function()
      local s <close> = assert(core.connect(opts()))
      local r, err, code = s:exec("true", { env = { CAPIL_X = "1" } })
      assert.is_nil(r)
      assert.equal("SSH_ENV", code)
      assert.matches("CAPIL_X", err, 1, true)
    end)

    it("sets env directly when sshd accepts it", function()
      local srv = sshd.start({ config = { "AcceptEnv CAPIL_*" } })
      finally(function() srv.stop() end)
      local s <close> = assert(core.connect({ host = "127.0.0.1", port = srv.port, user = srv.user,
                                             key = srv.key, timeout = 10 }))
      assert.equal("v 1\n", assert(s:exec('echo "$CAPIL_X"', { env = { CAPIL_X = "v 1" } })).stdout)
    end)
  end)

  describe("sftp", function()
    local s
    setup(function() s = assert(ssh.connect(opts())) end)
    teardown(function() s:close() end)

    it("round-trips 50 MiB with matching sha256 on both ends", function()
      local src, remote, back = scratch .. "/big.bin", scratch .. "/remote.bin", scratch .. "/back.bin"
      random_file(src, 50 * 1024 * 1024)
      local want = sha256sum(src)
      local up = assert(s:put(src, remote, { mode = tonumber("600", 8) }))
      assert.same({ size = 50 * 1024 * 1024, sha256 = want }, up)
      assert.equal(want, sha256sum(remote))
      assert.equal(tonumber("600", 8), assert(fs.stat(remote)).mode)
      local down = assert(s:get(remote, back))
      assert.same({ size = 50 * 1024 * 1024, sha256 = want }, down)
      assert.equal(want, sha256sum(back))
      assert.same({}, temps(scratch))
      for _, f in ipairs({ src, remote, back }) do fs.remove(f) end
    end)

    it("replaces an existing remote file", function()
      local a, target = scratch .. "/a.txt", scratch .. "/target.txt"
      assert(fs.write(a, "new content\n"))
      assert(fs.write(target, "old\n"))
      local r = assert(s:put(a, target))
      assert.equal(12, r.size)
      assert.equal("new content\n", fs.read(target))
      assert.same({}, temps(scratch))
    end)

    it("fails clearly and leaves no temp file", function()
      local src = scratch .. "/small.txt"
      assert(fs.write(src, "x"))
      local dest = scratch .. "/no/such/dir/file.txt"
      local r, err, code = s:get(src, dest)
      assert.is_nil(r)
      assert.equal("ENOENT", code)
      assert.matches(dest, err, 1, true)
      assert.same({}, temps(scratch))

      r, err, code = s:get(scratch .. "/absent", scratch .. "/dest.txt")
      assert.is_nil(r)
      assert.equal("ENOENT", code)
      assert.matches("absent", err, 1, true)
      assert.is_false(fs.exists(scratch .. "/dest.txt"))
      assert.same({}, temps(scratch))

      r, err, code = s:put(scratch .. "/absent", scratch .. "/up.txt")
      assert.is_nil(r)
      assert.equal("ENOENT", code)
      assert.matches("cannot read the local file", err, 1, true)
      r, err, code = s:put(src, scratch .. "/no/such/dir/up.txt")
      assert.is_nil(r)
      assert.equal("ENOENT", code)
      assert.matches("no/such/dir/up.txt", err, 1, true)
      assert.same({}, temps(scratch))
    end)

    describe("stream", function()
      local vmdkw = require("capil.core.vmdkw")
      -- a disk of random data, holes and a tail short of a grain
      local function disk(path, size)
        local f = assert(io.open(path, "wb"))
        local rnd = assert(io.open("/dev/urandom", "rb"))
        f:write(rnd:read(300000))
        f:seek("set", 2 * 1024 * 1024 + 4096)
        f:write(rnd:read(70000))
        f:seek("set", size - 1000)
        f:write(rnd:read(1000))
        rnd:close()
        f:close()
      end

      it("streams a remote disk into capil's VMDK writer in one pass", function()
        local src, out = scratch .. "/stream-src.raw", scratch .. "/stream.vmdk"
        disk(src, 5 * 1024 * 1024 + 1234)
        local st = assert(s:stream(src))
        assert.equal(5 * 1024 * 1024 + 1234, st.size)
        assert.equal(src, st.remote)
        -- the session is the stream's until it is closed
        assert.has_error(function() s:get(src, scratch .. "/x") end)
        local r = assert(vmdkw.write({ fd = st:fd(), size = st.size, name = "root@esx:" .. src }, out, { jobs = 2 }))
        assert.same({ size = st.size }, assert(st:close()))
        assert.equal(st.size, r.size)
        assert.is_true(r.zero_grains > 0)
        assert.equal(0, assert(proc.run({ argv = { "qemu-img", "check", out } })).code)
        local cmp = assert(proc.run({ argv = { "qemu-img", "compare", "-f", "raw", "-F", "vmdk", src, out } }))
        assert.equal(0, cmp.code, cmp.stdout .. cmp.stderr)
        -- the session works again
        assert(s:get(src, scratch .. "/stream-back.raw"))
        for _, f in ipairs({ src, out, scratch .. "/stream-back.raw" }) do fs.remove(f) end
      end)

      it("stops the download when the reader stops, and says so", function()
        local src = scratch .. "/stream-big.raw"
        random_file(src, 8 * 1024 * 1024)
        local st = assert(s:stream(src))
        local r, err, code = st:close()
        assert.is_nil(r)
        assert.equal("EPIPE", code)
        assert.matches("stream%-big%.raw: the reader stopped after %d+ of 8388608 bytes", err)
        assert.has_error(function() st:close() end, "ssh.stream: the stream is already closed")
        assert.has_error(function() st:fd() end, "ssh.stream: attempt to use a closed stream")
        assert(s:get(src, scratch .. "/stream-after.raw"))
        fs.remove(src)
        fs.remove(scratch .. "/stream-after.raw")
      end)

      it("fails a file that shrinks while it is read: the writer says SHORT, the stream CHANGED", function()
        local src, out = scratch .. "/stream-shrink.raw", scratch .. "/stream-shrink.vmdk"
        random_file(src, 4 * 1024 * 1024)
        local st = assert(s:stream(src))
        assert(proc.run({ argv = { "truncate", "-s", "1M", src } }))
        local r, err, code = vmdkw.write({ fd = st:fd(), size = st.size, name = src }, out)
        assert.is_nil(r)
        assert.equal("SHORT", code)
        assert.matches("the stream ended after %d+ of its 4194304 bytes", err)
        assert.is_false(fs.exists(out))
        r, err, code = st:close()
        assert.is_nil(r)
        assert.equal("CHANGED", code)
        assert.matches("the file shrank to %d+ of its 4194304 bytes while it was read", err)
        fs.remove(src)
      end)

      it("names the remote file it cannot open", function()
        local r, err, code = s:stream(scratch .. "/absent.raw")
        assert.is_nil(r)
        assert.equal("ENOENT", code)
        assert.matches("absent.raw", err, 1, true)
        assert(s:get("/etc/hostname", scratch .. "/h")) -- not left busy
        fs.remove(scratch .. "/h")
      end)

      it("refuses a stream source without fd or size", function()
        assert.has_error(function() vmdkw.write({ size = 1 }, scratch .. "/x.vmdk") end,
          "vmdkw.write: a stream source needs fd and size (integers of 0 or more)")
      end)
    end)

    it("drives a progress handle", function()
      local src = scratch .. "/p.bin"
      random_file(src, 1024 * 1024)
      local p = log.progress({ label = "spec", mode = "none" })
      assert(s:put(src, scratch .. "/p2.bin", { progress = p }))
      assert.equal(1024 * 1024, p:state().total) -- "none" mode keeps no count, only the total
      p:close()
    end)
  end)

  describe("connect", function()
    it("logs in with key_data and exposes the host key fingerprint", function()
      local o = opts({ key_data = assert(fs.read(server.key)) })
      o.key = nil
      local s <close> = assert(ssh.connect(o))
      assert.equal(server.fingerprint, s.host_key_fingerprint)
      assert.equal("127.0.0.1", s.host)
    end)

    it("uses a passphrase-protected key", function()
      local dir = tempdir("ssh-keys")
      local key = sshd.keygen(dir, "locked", "ed25519", "pass-1234")
      local srv = sshd.start({ authorized = { key } })
      finally(function() srv.stop() end)
      local base = { host = "127.0.0.1", port = srv.port, user = srv.user, key = key, timeout = 10 }
      base.passphrase = "wrong-pass"
      local s, err, code = ssh.connect(base)
      assert.is_nil(s)
      assert.equal("SSH_AUTH", code)
      assert.is_nil(err:find("wrong-pass", 1, true))
      base.passphrase = nil
      s, err, code = ssh.connect(base)
      assert.is_nil(s)
      assert.equal("SSH_AUTH", code)
      assert.matches("is encrypted: give its passphrase", err, 1, true)
      base.passphrase = "pass-1234"
      assert(ssh.connect(base)):close()
    end)

    it("logs in with the keys of a running ssh-agent", function()
      local dir = tempdir("ssh-agent")
      local sock = dir .. "/agent.sock"
      local agent = assert(proc.spawn({ argv = { "ssh-agent", "-D", "-a", sock }, stdin = "null",
                                        stdout = "null", stderr = "null" }))
      finally(function() agent:close(1) end)
      local deadline = runtime.now() + 5
      while not fs.exists(sock) and runtime.now() < deadline do runtime.sleep(0.02) end
      local added = assert(proc.run({ argv = { "ssh-add", server.key }, env_add = { SSH_AUTH_SOCK = sock } }))
      assert.equal(0, added.code)
      -- libssh2 finds the agent through SSH_AUTH_SOCK: run in a child capil
      local script = ([[
        local s, err, code = require("capil.core.ssh").connect{host = "127.0.0.1", port = %d,
          user = %q, agent = true, timeout = 10}
        io.write(s and "in" or (code .. ": " .. err))
      ]]):format(server.port, server.user)
      local r = assert(proc.run({ argv = { runtime.exepath(), "-e", script }, env_add = { SSH_AUTH_SOCK = sock } }))
      assert.equal("in", r.stdout)
      r = assert(proc.run({ argv = { runtime.exepath(), "-e", script },
                            env_add = { SSH_AUTH_SOCK = dir .. "/no-agent" } }))
      assert.matches("^SSH_AUTH: .*ssh%-agent %(not reachable", r.stdout)
    end)

    it("fails with SSH_AUTH for a key the server does not know", function()
      local dir = tempdir("ssh-keys")
      local wrong = sshd.keygen(dir, "wrong")
      local s, err, code = ssh.connect(opts({ key = wrong }))
      assert.is_nil(s)
      assert.equal("SSH_AUTH", code)
      assert.matches(server.user .. "@127.0.0.1:" .. server.port, err, 1, true)
      assert.matches("publickey (" .. wrong .. ")", err, 1, true)
      assert.is_nil(err:find("RSA", 1, true))
    end)

    it("explains why an RSA key cannot work", function()
      local dir = tempdir("ssh-keys")
      local rsa = sshd.keygen(dir, "id_rsa", "rsa")
      local srv = sshd.start({ authorized = { rsa } }) -- the key IS authorized
      finally(function() srv.stop() end)
      local s, err, code = ssh.connect({ host = "127.0.0.1", port = srv.port, user = srv.user,
                                         key = rsa, timeout = 10 })
      assert.is_nil(s)
      assert.equal("SSH_AUTH", code)
      assert.matches("RSA keys cannot be used: libssh2 1.10 signs only with ssh-rsa (SHA-1), "
                     .. "which OpenSSH 8.8+ refuses; use an ed25519 or ECDSA key", err, 1, true)
      -- and that is indeed what sshd refused
      assert.matches("ssh-rsa not in PubkeyAcceptedAlgorithms", sshd.log(srv), 1, true)
    end)

    it("never shows a refused password", function()
      local srv = sshd.start({ config = { "PasswordAuthentication yes" } })
      finally(function() srv.stop() end)
      local pw = log.secret("some-secret-pw")
      local s, err, code = ssh.connect({ host = "127.0.0.1", port = srv.port, user = srv.user,
                                         password = pw, timeout = 10 })
      assert.is_nil(s)
      assert.equal("SSH_AUTH", code)
      assert.matches("tried password", err, 1, true)
      assert.is_nil(err:find(pw, 1, true))
      assert.matches("Failed password for", sshd.log(srv), 1, true) -- it was really sent
    end)

    it("fails with ENOENT for a missing key file", function()
      local s, err, code = ssh.connect(opts({ key = scratch .. "/no-such-key" }))
      assert.is_nil(s)
      assert.equal("ENOENT", code)
      assert.matches("no-such-key", err, 1, true)
    end)

    it("fails with ECONNREFUSED on a closed port", function()
      local s, err, code = ssh.connect(opts({ port = peer.free_port() }))
      assert.is_nil(s)
      assert.equal("ECONNREFUSED", code)
      assert.matches("127.0.0.1", err, 1, true)
    end)

    it("refuses a host key that does not match the fingerprint", function()
      local dir = tempdir("ssh-keys")
      local _, other = sshd.keygen(dir, "other_host")
      local s, err, code = ssh.connect(opts({ host_key = other }))
      assert.is_nil(s)
      assert.equal("SSH_HOSTKEY", code)
      assert.matches(other, err, 1, true)
      assert.matches(server.fingerprint, err, 1, true)
    end)

    it("accepts a new host into known_hosts and refuses a changed key", function()
      local dir = tempdir("ssh-known")
      local kh = dir .. "/known_hosts"
      local key = sshd.keygen(dir, "client")
      local srv = sshd.start({ authorized = { key } })
      local o = { host = "127.0.0.1", port = srv.port, user = srv.user, key = key,
                  host_key = kh, timeout = 10 }
      assert(ssh.connect(o)):close()
      local saved = assert(fs.read(kh))
      assert.matches("^%[127%.0%.0%.1%]:" .. srv.port .. " ssh%-ed25519 %S+\n$", saved)
      assert(ssh.connect(o)):close() -- known now: matches
      assert.equal(saved, fs.read(kh))
      -- same address, new host key
      srv.stop()
      local srv2 = sshd.start({ port = srv.port, authorized = { key } })
      finally(function() srv2.stop() end)
      local s, err, code = ssh.connect(o)
      assert.is_nil(s)
      assert.equal("SSH_HOSTKEY", code)
      assert.matches(srv.fingerprint, err, 1, true)
      assert.matches(srv2.fingerprint, err, 1, true)
      assert.equal(saved, fs.read(kh))
    end)

    it("times out against a server that does not answer", function()
      local srv = sshd.start()
      assert(proc.kill(srv.pid, "STOP")) -- the kernel still completes TCP connects
      finally(function()
        proc.kill(srv.pid, "CONT")
        srv.stop()
      end)
      local t0 = runtime.now()
      local s, err, code = core.connect({ host = "127.0.0.1", port = srv.port, user = srv.user,
                                         key = srv.key, timeout = 1 })
      assert.is_nil(s)
      assert.equal("ETIMEDOUT", code)
      assert.matches("handshake", err, 1, true)
      assert.is_true(runtime.now() - t0 < 4)
      local ok, werr, wcode = ssh.wait({ host = "127.0.0.1", port = srv.port, timeout = 1, interval = 0.2 })
      assert.is_nil(ok)
      assert.equal("ETIMEDOUT", wcode)
      assert.matches("no SSH banner", werr, 1, true)
    end)

    it("retries transient failures", function()
      local t0 = runtime.now()
      local s, _, code = ssh.connect(opts({ port = peer.free_port(), retries = 2, retry_delay = 0.1 }))
      assert.is_nil(s)
      assert.equal("ECONNREFUSED", code)
      assert.is_true(runtime.now() - t0 >= 0.2)
    end)

    it("raises on misuse", function()
      assert.has_error(function() ssh.connect(opts({ bogus = 1 })) end, "ssh.connect: unknown option 'bogus'")
      assert.has_error(function() core.connect({ port = 22, user = "x", key = "k" }) end,
                       "ssh.connect: option 'host' is required")
      assert.has_error(function() core.connect({ host = "h", user = "x" }) end)
      assert.has_error(function() core.connect({ host = "h", user = "x", key = "k", port = "22" }) end)
    end)
  end)

  describe("wait", function()
    it("returns the banner of a running sshd", function()
      local ok, banner = ssh.wait({ host = "127.0.0.1", port = server.port, timeout = 5 })
      assert.is_true(ok)
      assert.matches("^SSH%-2%.0%-OpenSSH", banner)
    end)

    it("times out on a closed port within the timeout", function()
      local t0 = runtime.now()
      local ok, err, code = ssh.wait({ host = "127.0.0.1", port = peer.free_port(), timeout = 0.5, interval = 0.1 })
      assert.is_nil(ok)
      assert.equal("ETIMEDOUT", code)
      assert.matches("refused", err, 1, true)
      assert.is_true(runtime.now() - t0 < 3)
    end)
  end)

  describe("close", function()
    it("is idempotent and later use raises", function()
      local s = assert(ssh.connect(opts()))
      s:close()
      s:close()
      assert.is_true(s:closed())
      assert.has_error(function() s:exec("true") end, "attempt to use a closed ssh session")
      assert.has_error(function() s:put("/etc/hostname", "/tmp/x") end, "attempt to use a closed ssh session")
      local c = assert(core.connect(opts()))
      do
        local scoped <close> = c
        assert.is_false(scoped.closed)
      end
      assert.is_true(c.closed)
      c:close()
      assert.has_error(function() c:get("/etc/hostname", "/tmp/x") end, "attempt to use a closed ssh session")
      assert.matches("closed", tostring(c))
    end)

    it("stops a running exec on Ctrl-C (EINTR) without hanging", function()
      local pidfile = scratch .. "/int.pid"
      local script = ([[
        local ssh = require("capil.core.ssh")
        local s = assert(ssh.connect{host = "127.0.0.1", port = %d, user = %q, key = %q, timeout = 10})
        s:exec("echo $$ > %s; exec sleep 30")
      ]]):format(server.port, server.user, server.key, pidfile)
      local p = assert(proc.spawn({ argv = { runtime.exepath(), "-e", script }, stdin = "null",
                                    stdout = "null", stderr = "null" }))
      finally(function() p:close(0.5) end)
      local deadline = runtime.now() + 10
      while not fs.exists(pidfile) and runtime.now() < deadline do runtime.sleep(0.05) end
      assert.is_true(fs.exists(pidfile))
      runtime.sleep(0.1)
      assert(p:kill("INT"))
      local st = assert(p:wait({ timeout = 5 }))
      assert.equal(128 + 2, st.code)
      proc.kill(assert(tonumber(assert(fs.read(pidfile)))), "KILL")
    end)
  end)
end)
