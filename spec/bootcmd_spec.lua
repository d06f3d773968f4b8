local bootcmd = require("capil.build.bootcmd")

local function keys(events)
  local t = {}
  for _, e in ipairs(events) do
    if e.kind == "wait" then t[#t + 1] = "wait:" .. e.seconds
    else t[#t + 1] = e.key .. (e.shift and "+S" or "") .. (e.action ~= "press" and (":" .. e.action) or "") end
  end
  return t
end

describe("bootcmd #unit", function()
  it("parses literals with the US layout (shift where needed)", function()
    assert.same({ "a", "a+S", "1", "1+S", ";+S", "/", "space", ".", "-" },
      keys(assert(bootcmd.parse("aA1!:/ .-"))))
  end)

  it("parses every special key, case-insensitively", function()
    local text = "<bs><del><enter><return><esc><tab><spacebar><insert><home><end><pageUp><pageDown>"
      .. "<up><down><left><right><menu><F1><f12><LEFTALT><leftCtrl><leftShift><leftSuper>"
      .. "<rightAlt><rightCtrl><rightShift><rightSuper>"
    assert.same({ "backspace", "delete", "enter", "enter", "escape", "tab", "space", "insert", "home",
      "end", "pageup", "pagedown", "up", "down", "left", "right", "menu", "f1", "f12", "leftalt",
      "leftctrl", "leftshift", "leftsuper", "rightalt", "rightctrl", "rightshift", "rightsuper" },
      keys(assert(bootcmd.parse(text))))
  end)

  it("parses On/Off toggles for modifiers and characters", function()
    assert.same({ "leftctrl:down", "c", "leftctrl:up", "a:down", "a:up" },
      keys(assert(bootcmd.parse("<leftCtrlOn>c<leftCtrlOff><aOn><aOff>"))))
  end)

  it("parses waits with Go durations", function()
    assert.same({ "wait:1", "wait:5", "wait:10", "wait:90", "wait:0.5", "wait:7", "wait:3600" },
      keys(assert(bootcmd.parse("<wait><wait5><wait10><wait1m30s><wait500ms><wait7><wait1h>"))))
    assert.is_nil(bootcmd.duration("5x"))
    assert.equal(5400.25, bootcmd.duration("1h30m250ms"))
    -- a duration the schema already coerced is seconds
    assert.equal(90, bootcmd.duration(90))
    assert.is_nil(bootcmd.duration(-1))
    assert.is_nil(bootcmd.duration({}))
  end)

  it("rejects unknown tokens with their position, never typing them", function()
    local ev, err = bootcmd.parse("abc <bogus> x")
    assert.is_nil(ev)
    assert.equal("unknown boot command key <bogus> at position 5", err)
    ev, err = bootcmd.parse("<waitforever>")
    assert.is_nil(ev)
    assert.matches("<waitforever> at position 1: invalid duration", err, 1, true)
    ev, err = bootcmd.parse("é")
    assert.is_nil(ev)
    assert.matches("cannot be typed", err, 1, true)
    -- a "<" that does not open a token is a literal
    assert.same({ ",+S", "space", "1" }, keys(assert(bootcmd.parse("< 1"))))
  end)

  it("substitutes Packer's and capil's template variables", function()
    local vars = { http_ip = "10.0.2.2", http_port = 8123, name = "vm1" }
    assert.equal("ks=http://10.0.2.2:8123/7/ks.cfg vm1 10.0.2.2",
      bootcmd.substitute("ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/7/ks.cfg {{ .Name }} {{http_ip}}", vars))
    local s, err = bootcmd.substitute("{{ .Nope }}", vars)
    assert.is_nil(s)
    assert.equal("unknown template variable '{{ .Nope }}'", err)
  end)

  it("summarises without the text", function()
    assert.same({ keys = 4, waits = 1, wait_seconds = 10 },
      bootcmd.summary(assert(bootcmd.parse("pw<wait10>d<enter>"))))
  end)

  -- Hand-checked against the HID Usage Tables 1.12, §10 (Keyboard page):
  -- a=0x04, A = 0x04 + LeftShift (bit 0x02), Enter=0x28, F1=0x3A,
  -- LeftCtrl held = bit 0x01; vSphere wants code<<16 | 7.
  it("encodes USB HID codes for vSphere, batches split by waits", function()
    local b = bootcmd.to_usb(assert(bootcmd.parse("aA<enter><wait2><f1><leftCtrlOn>c<leftCtrlOff>0")))
    assert.equal(3, #b)
    local function row(c) return { c.usbHidCode >> 16, c.usbHidCode & 0xffff, c.modifiers } end
    assert.same({ 0x04, 7, 0 }, row(b[1].codes[1]))
    assert.same({ 0x04, 7, 0x02 }, row(b[1].codes[2]))
    assert.same({ leftShift = true }, b[1].codes[2].modifier_names)
    assert.same({ 0x28, 7, 0 }, row(b[1].codes[3]))
    assert.same({ wait = 2 }, b[2])
    assert.same({ 0x3a, 7, 0 }, row(b[3].codes[1]))
    assert.same({ 0x06, 7, 0x01 }, row(b[3].codes[2]))
    assert.same({ leftControl = true }, b[3].codes[2].modifier_names)
    assert.same({ 0x27, 7, 0 }, row(b[3].codes[3]))
    assert.equal(3, #b[3].codes)
  end)

  -- Hand-checked against QEMU's qapi/ui.json QKeyCode enum.
  it("encodes QMP qcodes as chords", function()
    assert.same({
      { keys = { "shift", "h" } }, { keys = { "i" } }, { keys = { "spc" } },
      { keys = { "shift", "semicolon" } }, { keys = { "slash" } }, { wait = 1 },
      { keys = { "ctrl", "alt", "delete" } }, { keys = { "ret" } },
    }, bootcmd.to_qmp(assert(bootcmd.parse(
      "Hi :/<wait><leftCtrlOn><leftAltOn><del><leftAltOff><leftCtrlOff><enter>"))))
  end)

  -- Hand-checked against X11 keysymdef.h: Return=0xff0d, Shift_L=0xffe1,
  -- 'H'=0x48, '='=0x3d, Escape=0xff1b.
  it("encodes RFB keysyms with explicit shift", function()
    assert.same({
      { keysym = 0xffe1, down = true }, { keysym = 0x48, down = true }, { keysym = 0x48, down = false },
      { keysym = 0xffe1, down = false },
      { keysym = 0x3d, down = true }, { keysym = 0x3d, down = false },
      { keysym = 0xff1b, down = true }, { keysym = 0xff1b, down = false },
      { wait = 10 },
      { keysym = 0xff0d, down = true }, { keysym = 0xff0d, down = false },
    }, bootcmd.to_rfb(assert(bootcmd.parse("H=<esc><wait10><enter>"))))
  end)
end)
