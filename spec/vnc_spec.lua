local vnc = require("capil.sys.vnc")
local core = require("capil.core.vnc")
local bootcmd = require("capil.build.bootcmd")
local qemu = require("capil.backends.qemu")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local runtime = require("capil.core.runtime")
local peer = require("support.peer")
local fixtures = require("support.fixtures")
local nginx = require("support.nginx")
local sshd = require("support.sshd")

-- Free VNC displays on loopback (5900 + d), `n` of them.
local function free_displays(n)
  local out = {}
  for d = 20, 99 do
    if not runtime.port_open("127.0.0.1", 5900 + d, 0.05) then out[#out + 1] = d end
    if #out == n then return table.unpack(out) end
  end
  error("no free VNC display")
end

-- The real peer for the happy paths is QEMU's own VNC server.
describe("vnc against QEMU #vnc #qemu", function()
  local dir, vm, paused

  before_each(function() dir = peer.dir("vnc") end)
  after_each(function()
    if vm then vm:kill() vm = nil end
    if paused then paused:close(3) paused = nil end
    fs.remove(dir, { recursive = true })
  end)

  it("types a boot line at the installer ISO's prompt: every key arrives, Shift included", function()
    local iso = fixtures.installer_iso()
    vm = assert(qemu.vm({ workdir = dir, name = "vnc-typing", iso = iso, disk_mb = 64, accel = "tcg",
      memory_mb = 512, vnc_display = (free_displays(1)) }))
    assert(vm:start())
    local deadline = runtime.now() + 90
    while not (fs.read(vm.serial_log) or ""):find("boot: ", 1, true) do
      assert(runtime.now() < deadline and vm:running(), "no ISOLINUX boot: prompt: " .. (fs.read(vm.serial_log) or ""))
      runtime.sleep(0.2)
    end
    -- nothing listens there: the installer only has to print the URL it got
    local url = ("http://10.0.2.2:%d/VNC-Marker_42/a.b/ks=Q.cfg"):format(peer.free_port())
    local events = assert(bootcmd.parse(fixtures.boot_line(url) .. "<enter>"))
    assert(vm:type_keys_vnc(events, 0.05))
    local want = "capil-installer: fetching answer file " .. url .. "\n"
    local text
    deadline = runtime.now() + 120
    repeat
      runtime.sleep(0.5)
      text = (fs.read(vm.serial_log) or ""):gsub("\r", "")
    until text:find("capil-installer: fetching answer file", 1, true) or runtime.now() > deadline or not vm:running()
    assert.truthy(text:find(want, 1, true), text:sub(-2000))
  end)

  it("authenticates with the VNC password, refuses a wrong one, and reports the server's security types", function()
    local pw_d, sasl_d = free_displays(2)
    local password = "vnc-Pw7x"
    paused = assert(proc.spawn({
      argv = { "qemu-system-x86_64", "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
        "-object", "secret,id=vncpw,data=" .. password,
        "-vnc", ("127.0.0.1:%d,password-secret=vncpw"):format(pw_d),
        "-vnc", ("127.0.0.1:%d,sasl=on"):format(sasl_d) },
      stdout = dir .. "/qemu.log", stderr = "stdout",
    }))
    local where = ("127.0.0.1:%d"):format(5900 + pw_d)

    -- the right password: ServerInit arrives, key events are accepted
    local s = assert(vnc.connect({ host = "127.0.0.1", port = 5900 + pw_d, password = password, timeout = 15 }))
    assert.equal("QEMU", s.name)
    assert.equal("3.8", s.version)
    assert.is_true(s.width > 0 and s.height > 0)
    assert.is_true(s:key(0xffe1, true))
    assert.is_true(s:key(0xffe1, false))
    assert(s:type(assert(bootcmd.parse("Ab<wait100ms>c<enter>")), 0.01))

    -- a wrong one: VNC_AUTH naming host:port, without the password
    local none, err, code = vnc.connect({ host = "127.0.0.1", port = 5900 + pw_d, password = "guess-1" })
    assert.is_nil(none)
    assert.equal("VNC_AUTH", code)
    assert.matches("vnc: " .. where .. ": authentication failed", err, 1, true)
    assert.falsy(err:find("guess-1", 1, true))
    none, err, code = vnc.connect({ host = "127.0.0.1", port = 5900 + pw_d })
    assert.is_nil(none)
    assert.equal("VNC_AUTH", code)
    assert.matches("requires a password", err, 1, true)

    -- SASL only: no type in common, the offer is listed
    none, err, code = vnc.connect({ host = "127.0.0.1", port = 5900 + sasl_d, password = password })
    assert.is_nil(none)
    assert.equal("VNC_NOAUTH", code)
    assert.matches(("127.0.0.1:%d"):format(5900 + sasl_d), err, 1, true)
    assert.matches("offers: 20 SASL", err, 1, true)
    assert.falsy(err:find(password, 1, true))

    -- the server goes away: an error value, not SIGPIPE
    paused:close(3)
    paused = nil
    local ok, kerr, kcode
    for _ = 1, 3 do
      ok, kerr, kcode = s:key(0x61, true)
      if not ok then break end
      runtime.sleep(0.1)
    end
    assert.is_nil(ok)
    assert.is_truthy(kcode == "ECONNRESET" or kcode == "EPIPE", kcode)
    assert.matches(where, kerr, 1, true)
    s:close()
    s:close()
  end)
end)

describe("vnc failures #vnc #unit", function()
  it("names host:port when nothing listens", function()
    local port = peer.free_port()
    local s, err, code = vnc.connect({ host = "127.0.0.1", port = port, timeout = 0.5 })
    assert.is_nil(s)
    assert.equal("ECONNREFUSED", code)
    assert.matches("vnc: 127.0.0.1:" .. port .. ": ", err, 1, true)
  end)

  it("times out naming host:port when the server says nothing (nginx waits for a request)", function()
    local web = nginx.start()
    local s, err, code = vnc.connect({ host = "127.0.0.1", port = web.port, timeout = 0.5 })
    web.stop()
    assert.is_nil(s)
    assert.equal("ETIMEDOUT", code)
    assert.matches("vnc: 127.0.0.1:" .. web.port .. ": waiting for the RFB banner: timed out", err, 1, true)
  end)

  it("says what a server that is not RFB sent (sshd's banner)", function()
    local server = sshd.start({})
    local s, err, code = core.connect({ host = "127.0.0.1", port = server.port, timeout = 5 })
    server.stop()
    assert.is_nil(s)
    assert.equal("VNC_PROTOCOL", code)
    assert.matches("vnc: 127.0.0.1:" .. server.port .. ": not an RFB 3.x server: it sent \"SSH-2.0-", err, 1, true)
  end)

  -- QEMU always speaks RFB 3.8; the older handshakes against the stand-in
  -- in spec/support/rfb_server.py, which also logs the KeyEvents it gets
  local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
  local function standin(version, mode)
    local dir = peer.dir("rfb")
    local port = peer.free_port()
    local server = peer.start({ name = "rfb-standin", port = port, log = dir .. "/server.log",
      argv = { "python3", here .. "/support/rfb_server.py", tostring(port), version, mode, dir .. "/keys.log" } })
    server.keys = dir .. "/keys.log"
    local stop = server.stop
    function server.stop() stop() fs.remove(dir, { recursive = true }) end
    return server
  end

  for _, v in ipairs({ { "003.003", "3.3" }, { "003.007", "3.7" } }) do
    it(("speaks RFB %s with security None and sends KeyEvents the server decodes"):format(v[2]), function()
      local server = standin(v[1], "none")
      finally(server.stop)
      local s = assert(vnc.connect({ host = "127.0.0.1", port = server.port, timeout = 5 }))
      assert.equal(v[2], s.version)
      assert.equal("standin", s.name)
      assert.same({ 800, 600 }, { s.width, s.height })
      assert(s:type(assert(bootcmd.parse("aB<enter>"))))
      s:close()
      local want = "1 61\n0 61\n1 ffe1\n1 42\n0 42\n0 ffe1\n1 ff0d\n0 ff0d\n"
      local got
      for _ = 1, 50 do
        got = fs.read(server.keys) or ""
        if #got >= #want then break end
        runtime.sleep(0.05)
      end
      assert.equal(want, got)
    end)

    it(("reports the reason of an RFB %s server that refuses the connection"):format(v[2]), function()
      local server = standin(v[1], "refuse")
      finally(server.stop)
      local s, err, code = vnc.connect({ host = "127.0.0.1", port = server.port, timeout = 5 })
      assert.is_nil(s)
      assert.equal("VNC_PROTOCOL", code)
      assert.equal(("vnc: 127.0.0.1:%d: the server refused the connection: too many clients"):format(server.port), err)
    end)
  end

  it("raises on misuse", function()
    assert.has_error(function() vnc.connect({ host = "127.0.0.1", port = 5900, pasword = "x" }) end,
      "vnc.connect: unknown option 'pasword'")
    assert.has_error(function() core.connect({ port = 5900 }) end, "vnc.connect: option 'host' is required")
  end)
end)
