local qmp = require("capil.sys.qmp")
local proc = require("capil.sys.proc")
local peer = require("support.peer")
local bootcmd = require("capil.build.bootcmd")

-- A real QEMU, paused (-S), with no disks: enough for the machine protocol.
describe("qmp against QEMU #qemu", function()
  local dir, qemu, sock
  before_each(function()
    dir = peer.dir("qmp")
    sock = dir .. "/qmp.sock"
    qemu = assert(proc.spawn({
      argv = { "qemu-system-x86_64", "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
        "-machine", "pc", "-device", "isa-serial,chardev=s0", "-chardev", "null,id=s0",
        "-qmp", "unix:" .. sock .. ",server=on,wait=off" },
      stdout = dir .. "/qemu.log", stderr = "stdout",
    }))
  end)
  after_each(function() qemu:close(2) end)

  it("negotiates, runs commands and reports errors", function()
    local c = assert(qmp.connect({ path = sock, timeout = 15 }))
    assert.equal(7, c.version.major)
    local st = assert(c:execute("query-status"))
    assert.equal("prelaunch", st.status)
    local r, err, code = c:execute("no-such-command")
    assert.is_nil(r)
    assert.equal("QMP_ERROR", code)
    assert.matches("CommandNotFound", err, 1, true)
    -- typed keys reach QEMU's keyboard: every chord of a boot command is accepted
    local events = assert(bootcmd.parse("<esc>Hi <enter>"))
    for _, chord in ipairs(bootcmd.to_qmp(events)) do
      if chord.keys then assert(c:send_keys(chord.keys, 10)) end
    end
    assert(c:execute("cont"))
    assert.equal("running", assert(c:execute("query-status")).status)
    c:execute("quit")
    local status = assert(qemu:wait({ timeout = 10 }))
    assert.equal(0, status.code)
    c:close()
  end)

  it("times out when nothing listens", function()
    local c, _, code = qmp.connect({ path = dir .. "/absent.sock", timeout = 0.3 })
    assert.is_nil(c)
    assert.equal("ENOENT", code)
  end)
end)
