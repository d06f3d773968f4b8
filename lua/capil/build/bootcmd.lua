--- capil.build.bootcmd — Packer's boot_command grammar, parsed into key events and
--- encoded for the three ways capil types into a VM: USB HID usage codes
--- (vSphere PutUsbScanCodes), QEMU QMP qcodes (send-key) and RFB keysyms
--- (VNC KeyEvent).
---
--- Grammar (Packer's): literal characters are typed as they are; `<name>`
--- presses a special key (`<enter> <esc> <bs> <del> <tab> <f1>…<f12>`,
--- arrows, `<home> <end> <pageUp> <pageDown> <insert> <spacebar> <menu>`,
--- modifiers `<leftShift>` …); `<nameOn>` / `<nameOff>` hold and release a
--- key (also for characters: `<aOn>`); `<wait>` (1 s), `<wait5>`, `<wait10>`,
--- `<waitXX>` with a Go duration (`1m30s`, `500ms`, bare number = seconds).
--- Names are case-insensitive. An unknown `<word>` is an error, never typed.
--- Template variables (`{{ .HTTPIP }}`, `{{ .HTTPPort }}`, `{{ .Name }}`, and
--- capil's own `{{http_ip}}` form) are substituted before parsing.
---
--- Events are {kind="key", key=, action="press"|"down"|"up", shift=bool} and
--- {kind="wait", seconds=}. They are logged only as counts, never as text:
--- boot lines can carry passwords.
local M = {}

-- ====================================================================== --
-- Keys                                                                   --
-- ====================================================================== --

-- Special keys by lower-cased name -> canonical key name.
local SPECIAL = {
  bs = "backspace", del = "delete", enter = "enter", ["return"] = "enter",
  esc = "escape", tab = "tab", spacebar = "space", insert = "insert",
  home = "home", ["end"] = "end", pageup = "pageup", pagedown = "pagedown",
  up = "up", down = "down", left = "left", right = "right", menu = "menu",
  leftalt = "leftalt", leftctrl = "leftctrl", leftshift = "leftshift",
  leftsuper = "leftsuper", rightalt = "rightalt", rightctrl = "rightctrl",
  rightshift = "rightshift", rightsuper = "rightsuper",
}
for i = 1, 12 do SPECIAL["f" .. i] = "f" .. i end

M.MODIFIERS = {
  leftctrl = true, leftshift = true, leftalt = true, leftsuper = true,
  rightctrl = true, rightshift = true, rightalt = true, rightsuper = true,
}

-- US layout: character -> base key and whether Shift is needed.
local US = {}
for c in ("abcdefghijklmnopqrstuvwxyz0123456789"):gmatch(".") do US[c] = { c, false } end
for c in ("abcdefghijklmnopqrstuvwxyz"):gmatch(".") do US[c:upper()] = { c, true } end
local unshifted = { [" "] = "space", ["-"] = "-", ["="] = "=", ["["] = "[", ["]"] = "]",
  ["\\"] = "\\", [";"] = ";", ["'"] = "'", ["`"] = "`", [","] = ",", ["."] = ".", ["/"] = "/",
  ["\n"] = "enter", ["\t"] = "tab" }
for c, k in pairs(unshifted) do US[c] = { k, false } end
local shifted = { ["!"] = "1", ["@"] = "2", ["#"] = "3", ["$"] = "4", ["%"] = "5", ["^"] = "6",
  ["&"] = "7", ["*"] = "8", ["("] = "9", [")"] = "0", ["_"] = "-", ["+"] = "=", ["{"] = "[",
  ["}"] = "]", ["|"] = "\\", [":"] = ";", ['"'] = "'", ["~"] = "`", ["<"] = ",", [">"] = ".",
  ["?"] = "/" }
for c, k in pairs(shifted) do US[c] = { k, true } end

--- Keyboard layouts: character -> {key, shift}. Others can be added here.
M.layouts = { us = US }

-- ====================================================================== --
-- Durations                                                              --
-- ====================================================================== --

local UNITS = { ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ms = 1e-3, s = 1, m = 60, h = 3600 }

--- Parses a Go duration ("1m30s", "500ms", "10s") or a bare number of
--- seconds; returns seconds or nil and an error. A number (a duration the
--- schema already coerced) is taken as seconds.
---@param s string|number
---@return number|nil, string?
function M.duration(s)
  if type(s) == "number" then
    if s ~= s or s < 0 or s > M.MAX_DURATION then return nil, ("duration %s s is out of range"):format(tostring(s)) end
    return s
  end
  if type(s) ~= "string" then return nil, ("expected a duration, got %s"):format(type(s)) end
  if s == "" then return nil, "empty duration" end
  local total, pos = 0, 1
  if s:match("^%d+$") then
    total = tonumber(s)
  else
    while pos <= #s do
      local num, unit, nxt = s:match("^(%d+%.?%d*)(%a+)()", pos)
      if not num then return nil, ("invalid duration '%s'"):format(M.shorten(s)) end
      local mult = UNITS[unit]
      if not mult then return nil, ("invalid duration unit '%s' in '%s'"):format(M.shorten(unit), M.shorten(s)) end
      total = total + tonumber(num) * mult
      pos = nxt
    end
  end
  -- bounded, so every duration that validates is a finite number of seconds
  -- a timer, a plan and its JSON can hold
  if total ~= total or total > M.MAX_DURATION then
    return nil, ("duration '%s' is longer than the maximum, %dh"):format(M.shorten(s), M.MAX_DURATION // 3600)
  end
  return total
end

--- The longest duration accepted: a year, in seconds.
M.MAX_DURATION = 366 * 24 * 3600

--- `s` cut to 64 characters for a message.
---@param s string
function M.shorten(s)
  if #s <= 64 then return s end
  return s:sub(1, 60) .. ("... (%d characters)"):format(#s)
end

-- ====================================================================== --
-- Parsing                                                  --
-- ====================================================================== --

--- Substitutes template variables (see capil.util.template): `{{ .HTTPIP }}`,
--- `{{ .HTTPPort }}`, `{{ .Name }}` and `{{ name }}` for any key of `vars`.
---@param text string
---@param vars table<string, string|number>
---@return string|nil, string?
function M.substitute(text, vars)
  return require("capil.util.template").render(text, vars)
end

--- Parses boot command text into events. `opts.layout` (default "us").
--- Returns the events, or nil and an error naming the offending token and
--- its position (1-based character offset).
---@param text string
---@param opts? {layout?: string}
---@return table[]|nil, string?
function M.parse(text, opts)
  local layout = M.layouts[(opts and opts.layout) or "us"]
  if not layout then return nil, ("unknown keyboard layout '%s'"):format(opts.layout) end
  local events = {}
  local function char_key(c, pos)
    local k = layout[c]
    if not k then
      return nil, ("character %q at position %d cannot be typed on this layout"):format(c, pos)
    end
    return k
  end
  local pos = 1
  while pos <= #text do
    local c = text:sub(pos, pos)
    local token, after = nil, nil
    if c == "<" then token, after = text:match("^<([%w%.]+)>()", pos) end
    if token then
      local lower = token:lower()
      local wait = lower:match("^wait(.*)$")
      if wait then
        local seconds = 1
        if wait ~= "" then
          local d, derr = M.duration(wait)
          if not d then return nil, ("<%s> at position %d: %s"):format(token, pos, derr) end
          seconds = d
        end
        events[#events + 1] = { kind = "wait", seconds = seconds }
      else
        local name, toggle = lower:match("^(.-)(on)$")
        if not (name and (SPECIAL[name] or (#name == 1 and layout[token:sub(1, 1)]))) then
          name, toggle = lower:match("^(.-)(off)$")
        end
        if not (name and (SPECIAL[name] or (#name == 1 and layout[token:sub(1, 1)]))) then
          name, toggle = lower, nil
        end
        local action = toggle == "on" and "down" or toggle == "off" and "up" or "press"
        if SPECIAL[name] then
          events[#events + 1] = { kind = "key", key = SPECIAL[name], action = action, shift = false }
        elseif toggle and #name == 1 then
          local k, kerr = char_key(token:sub(1, 1), pos)
          if not k then return nil, kerr end
          events[#events + 1] = { kind = "key", key = k[1], action = action, shift = k[2] }
        else
          return nil, ("unknown boot command key <%s> at position %d"):format(token, pos)
        end
      end
      pos = after
    else
      local k, kerr = char_key(c, pos)
      if not k then return nil, kerr end
      events[#events + 1] = { kind = "key", key = k[1], action = "press", shift = k[2] }
      pos = pos + 1
    end
  end
  return events
end

--- Counts of an event list, safe to log: {keys=, waits=, wait_seconds=}.
function M.summary(events)
  local s = { keys = 0, waits = 0, wait_seconds = 0 }
  for _, e in ipairs(events) do
    if e.kind == "key" then s.keys = s.keys + 1
    else s.waits = s.waits + 1 s.wait_seconds = s.wait_seconds + e.seconds end
  end
  return s
end

-- ====================================================================== --
-- Encoders                                                               --
-- ====================================================================== --

-- USB HID usage codes (HID Usage Tables, Keyboard/Keypad page 0x07).
local HID = {
  enter = 0x28, escape = 0x29, backspace = 0x2a, tab = 0x2b, space = 0x2c,
  ["-"] = 0x2d, ["="] = 0x2e, ["["] = 0x2f, ["]"] = 0x30, ["\\"] = 0x31,
  [";"] = 0x33, ["'"] = 0x34, ["`"] = 0x35, [","] = 0x36, ["."] = 0x37, ["/"] = 0x38,
  insert = 0x49, home = 0x4a, pageup = 0x4b, delete = 0x4c, ["end"] = 0x4d,
  pagedown = 0x4e, right = 0x4f, left = 0x50, down = 0x51, up = 0x52, menu = 0x65,
  leftctrl = 0xe0, leftshift = 0xe1, leftalt = 0xe2, leftsuper = 0xe3,
  rightctrl = 0xe4, rightshift = 0xe5, rightalt = 0xe6, rightsuper = 0xe7,
}
for i = 0, 25 do HID[string.char(97 + i)] = 0x04 + i end
for i = 1, 9 do HID[tostring(i)] = 0x1d + i end
HID["0"] = 0x27
for i = 1, 12 do HID["f" .. i] = 0x39 + i end

-- HID modifier bits (the first byte of a boot-protocol report).
local HID_MOD_BIT = {
  leftctrl = 0x01, leftshift = 0x02, leftalt = 0x04, leftsuper = 0x08,
  rightctrl = 0x10, rightshift = 0x20, rightalt = 0x40, rightsuper = 0x80,
}
-- vSphere UsbScanCodeSpecModifierType field names.
local VSPHERE_MOD = {
  leftctrl = "leftControl", leftshift = "leftShift", leftalt = "leftAlt", leftsuper = "leftGui",
  rightctrl = "rightControl", rightshift = "rightShift", rightalt = "rightAlt", rightsuper = "rightGui",
}

--- Encodes events for vSphere `PutUsbScanCodes`: a list of batches (waits
--- split batches); each batch is a list of {usbHidCode = code<<16 | 7,
--- modifiers = bitmask, modifier_names = {leftShift = true, ...}}. Held
--- modifiers (`<leftCtrlOn>`) apply to the keys typed until released.
---@param events table[]
---@return table[] batches of {codes = {...}} or {wait = seconds}
function M.to_usb(events)
  local out, batch = {}, nil
  local held = {}
  local function flush()
    if batch and #batch.codes > 0 then out[#out + 1] = batch end
    batch = nil
  end
  for _, e in ipairs(events) do
    if e.kind == "wait" then
      flush()
      out[#out + 1] = { wait = e.seconds }
    elseif M.MODIFIERS[e.key] and e.action ~= "press" then
      held[e.key] = e.action == "down" or nil
    else
      batch = batch or { codes = {} }
      local bits, names = 0, {}
      for m in pairs(held) do
        bits = bits | HID_MOD_BIT[m]
        names[VSPHERE_MOD[m]] = true
      end
      if e.shift then
        bits = bits | HID_MOD_BIT.leftshift
        names.leftShift = true
      end
      local code = HID[e.key]
      if M.MODIFIERS[e.key] then -- a modifier pressed alone
        bits = bits | HID_MOD_BIT[e.key]
        names[VSPHERE_MOD[e.key]] = true
      end
      -- PutUsbScanCodes sends press+release per code: <aOn>/<aOff> of a
      -- non-modifier key each become one keystroke
      batch.codes[#batch.codes + 1] = {
        usbHidCode = (code << 16) | 7, modifiers = bits, modifier_names = names,
      }
    end
  end
  flush()
  return out
end

-- QEMU QKeyCode names (qapi/ui.json).
local QCODE = {
  enter = "ret", escape = "esc", backspace = "backspace", tab = "tab", space = "spc",
  ["-"] = "minus", ["="] = "equal", ["["] = "bracket_left", ["]"] = "bracket_right",
  ["\\"] = "backslash", [";"] = "semicolon", ["'"] = "apostrophe", ["`"] = "grave_accent",
  [","] = "comma", ["."] = "dot", ["/"] = "slash", insert = "insert", home = "home",
  pageup = "pgup", delete = "delete", ["end"] = "end", pagedown = "pgdn", right = "right",
  left = "left", down = "down", up = "up", menu = "menu",
  leftctrl = "ctrl", leftshift = "shift", leftalt = "alt", leftsuper = "meta_l",
  rightctrl = "ctrl_r", rightshift = "shift_r", rightalt = "alt_r", rightsuper = "meta_r",
}
for i = 0, 25 do QCODE[string.char(97 + i)] = string.char(97 + i) end
for i = 0, 9 do QCODE[tostring(i)] = tostring(i) end
for i = 1, 12 do QCODE["f" .. i] = "f" .. i end

--- Encodes events for QMP: a list of {keys = {"shift", "a"}} chords for
--- `send-key` (each pressed together, released together) and {wait = s}.
--- Held modifiers join every chord until released.
---@param events table[]
function M.to_qmp(events)
  local out, held, order = {}, {}, {}
  for _, e in ipairs(events) do
    if e.kind == "wait" then
      out[#out + 1] = { wait = e.seconds }
    elseif M.MODIFIERS[e.key] and e.action ~= "press" then
      if e.action == "down" and not held[e.key] then
        held[e.key] = true
        order[#order + 1] = e.key
      elseif e.action == "up" then
        held[e.key] = nil
        for i, k in ipairs(order) do if k == e.key then table.remove(order, i) break end end
      end
    else
      local keys = {}
      for _, m in ipairs(order) do keys[#keys + 1] = QCODE[m] end
      if e.shift and not held.leftshift then keys[#keys + 1] = "shift" end
      keys[#keys + 1] = QCODE[e.key]
      out[#out + 1] = { keys = keys }
    end
  end
  return out
end

-- X11 keysyms (X11/keysymdef.h) for the special keys; printable ASCII
-- characters are their own keysym.
local KEYSYM = {
  enter = 0xff0d, escape = 0xff1b, backspace = 0xff08, tab = 0xff09, space = 0x20,
  insert = 0xff63, home = 0xff50, pageup = 0xff55, delete = 0xffff, ["end"] = 0xff57,
  pagedown = 0xff56, right = 0xff53, left = 0xff51, down = 0xff54, up = 0xff52,
  menu = 0xff67, leftshift = 0xffe1, rightshift = 0xffe2, leftctrl = 0xffe3,
  rightctrl = 0xffe4, leftalt = 0xffe9, rightalt = 0xffea, leftsuper = 0xffeb,
  rightsuper = 0xffec,
}
for i = 1, 12 do KEYSYM["f" .. i] = 0xffbd + i end

-- The character a key produces (with Shift or not) on the US layout.
local CHAR_OF = {}
for c, k in pairs(US) do
  if #k[1] == 1 then CHAR_OF[k[1] .. (k[2] and "+" or "")] = c end
end

--- Encodes events for RFB KeyEvent messages: a list of {keysym=, down=bool}
--- and {wait = s}. Shifted characters are sent with Shift_L pressed
--- explicitly around them (QEMU's VNC server maps keysyms to scancodes).
---@param events table[]
function M.to_rfb(events)
  local out = {}
  for _, e in ipairs(events) do
    if e.kind == "wait" then
      out[#out + 1] = { wait = e.seconds }
    else
      local sym = KEYSYM[e.key]
      if not sym then
        sym = string.byte(CHAR_OF[e.key .. (e.shift and "+" or "")] or e.key)
      end
      local shift = e.shift
      if e.action == "press" then
        if shift then out[#out + 1] = { keysym = KEYSYM.leftshift, down = true } end
        out[#out + 1] = { keysym = sym, down = true }
        out[#out + 1] = { keysym = sym, down = false }
        if shift then out[#out + 1] = { keysym = KEYSYM.leftshift, down = false } end
      else
        out[#out + 1] = { keysym = sym, down = e.action == "down" }
      end
    end
  end
  return out
end

return M
