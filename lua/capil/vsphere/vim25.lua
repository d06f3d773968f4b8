--- capil.vsphere.vim25 — a vSphere (vim25) SOAP client in Lua over `capil.sys.http` and
--- `capil.sys.xml`: sessions with cookie login, keep-alive and transparent
--- re-login, typed serialisation in WSDL order, replies parsed to Lua values,
--- PropertyCollector reads and waits, and task waiting.
---
--- Values: a ManagedObjectReference is a Ref (`vim25.ref(type, value)`,
--- printed "VirtualMachine:vm-57"); a data object is a table whose `_type`
--- names its vim25 type (`vim25.obj(type, fields)`); arrays are Lua arrays;
--- xsd numbers and booleans are Lua numbers and booleans; everything else
--- (enums, dateTime, base64) is a string.
---
--- Serialisation follows `capil.vsphere.vim25_types` (generated from govmomi by
--- scripts/gen-vim25-types): elements go out in the WSDL sequence order real
--- vCenter insists on; `xsi:type` is written where a value's `_type` differs
--- from the declared type (devices, backings, ImportSpec subclasses) and on
--- primitives in anyType slots; `OptionValue.value` always carries
--- `xsi:type="xsd:string"` (the simulator drops untyped values). Unknown
--- fields and types raise: they are programming errors.
---
--- Parsing resolves `xsi:type` by namespace URI (the simulator writes a local
--- `XMLSchema-instance:` prefix), unwraps `ArrayOfX` values and converts
--- by the declared or xsi type. Objects of types outside the generated table
--- are parsed generically and remember their field order, so a parsed value
--- (an ImportSpec from CreateImportSpec) can be sent back unchanged.
---
--- Failures return `nil, msg, code[, fault]`: "SOAP_FAULT" (with
--- `{type=, message=, detail=}`), "TASK_FAULT", "ETIMEDOUT", "ENOENT", or the
--- transport's code (ECONNREFUSED, ECONNRESET, EPROTO, TLS, EINTR, HTTP_<n>).
local http = require("capil.sys.http")
local xml = require("capil.sys.xml")
local log = require("capil.sys.log")
local cleanup = require("capil.sys.cleanup")
local runtime = require("capil.core.runtime")

local M = {}

--- Highest API version capil speaks (the generated type data's WSDL); the
--- SOAPAction names the server's apiVersion, capped at this.
M.API_VERSION = "7.0"

local SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
local XSD = xml.XSD

-- ---------------------------------------------------------------------
-- Values
-- ---------------------------------------------------------------------

---@class capil.vsphere.vim25.Ref
---@field type string
---@field value string
local Ref = {}
Ref.__index = Ref
Ref.__tostring = function(r) return r.type .. ":" .. r.value end
Ref.__eq = function(a, b) return a.type == b.type and a.value == b.value end
Ref.__name = "capil.vsphere.vim25.Ref"

--- A managed object reference.
---@param type string e.g. "VirtualMachine"
---@param value string e.g. "vm-57"
---@return capil.vsphere.vim25.Ref
function M.ref(type_, value)
  if type(type_) ~= "string" or type(value) ~= "string" then
    error("vim25.ref: type and value must be strings", 2)
  end
  return setmetatable({ type = type_, value = value }, Ref)
end

--- True when `x` is a Ref.
function M.is_ref(x)
  return getmetatable(x) == Ref
end

-- An array value (not a Ref, not a data object, a sequence or empty).
local function is_array(v)
  return type(v) == "table" and getmetatable(v) ~= Ref and v._type == nil
    and (v[1] ~= nil or next(v) == nil)
end

--- `x` as an array: nil -> {}, an array -> itself, one value -> {x}.
---@param x any
---@return any[]
function M.list(x)
  if x == nil then return {} end
  if is_array(x) then return x end
  return { x }
end

--- A data object of vim25 type `type_` (serialised with xsi:type when the
--- declared type differs): sets `fields._type` and returns `fields`.
---@param type_ string
---@param fields? table
---@return table
function M.obj(type_, fields)
  if type(type_) ~= "string" then error("vim25.obj: type must be a string", 2) end
  fields = fields or {}
  fields._type = type_
  return fields
end

--- The value of `key` in a list of OptionValues (`config.extraConfig`);
--- the last occurrence wins (the simulator appends repeated keys).
---@param options? table[]
---@param key string
---@return any
function M.option(options, key)
  local value
  for _, o in ipairs(M.list(options)) do
    if type(o) == "table" and o.key == key then value = o.value end
  end
  return value
end

-- ---------------------------------------------------------------------
-- Type data
-- ---------------------------------------------------------------------

local DATA
local function data()
  DATA = DATA or require("capil.vsphere.vim25_types")
  return DATA
end

--- Every vim25 method name, sorted (REPL completion).
---@return string[]
function M.methods()
  local out = {}
  for i, m in ipairs(data().all) do out[i] = m end
  return out
end

-- "name", "name:type" or "name:type[]" -> {name, type, array}
local function parse_field(s)
  local name, ty = s:match("^([^:]+):?(.*)$")
  local array = ty:sub(-2) == "[]"
  if array then ty = ty:sub(1, -3) end
  return { name = name, type = ty ~= "" and ty or "string", array = array }
end

local type_cache = {}

-- {name, base, list = fields base-first, by = {name = field}} or nil.
local function type_info(t)
  local c = type_cache[t]
  if c ~= nil then return c or nil end
  local spec = data().types[t]
  if not spec then
    type_cache[t] = false
    return nil
  end
  local list, by = {}, {}
  local base = spec[1] ~= "" and spec[1] or nil
  local b = base and type_info(base)
  if b then
    for _, f in ipairs(b.list) do
      list[#list + 1] = f
      by[f.name] = f
    end
  end
  for i = 2, #spec do
    local f = parse_field(spec[i])
    list[#list + 1] = f
    by[f.name] = f
  end
  c = { name = t, base = base, list = list, by = by }
  type_cache[t] = c
  return c
end

local function is_a(t, ancestor)
  while t do
    if t == ancestor then return true end
    local info = type_info(t)
    t = info and info.base
  end
  return false
end

local method_cache = {}

-- {ret, ret_array, list, by} for a method in the generated table, false
-- for a known method without parameter data, nil for an unknown name.
local function method_info(m)
  local c = method_cache[m]
  if c ~= nil then return c end
  local spec = data().methods[m]
  if not spec then
    for _, name in ipairs(data().all) do
      if name == m then
        method_cache[m] = false
        return false
      end
    end
    return nil
  end
  local ret = spec[1]
  local ret_array = ret:sub(-2) == "[]"
  if ret_array then ret = ret:sub(1, -3) end
  c = { ret = ret ~= "" and ret or nil, ret_array = ret_array, list = {}, by = {} }
  for i = 2, #spec do
    local f = parse_field(spec[i])
    c.list[#c.list + 1] = f
    c.by[f.name] = f
  end
  method_cache[m] = c
  return c
end

local function copy_fields(list)
  local out = {}
  for i, f in ipairs(list) do out[i] = { name = f.name, type = f.type, array = f.array } end
  return out
end

--- What the WSDL data says of method `name` (REPL help): `ret` (the return
--- type, nil for none), `ret_array`, and `params` after `_this`, in WSDL
--- order, each `{name, type, array}`; false for a known method without
--- parameter data (its arguments are sent as given), nil for an unknown one.
---@param name string
---@return {ret?: string, ret_array: boolean, params: {name: string, type: string, array: boolean}[]}|false|nil
function M.method_params(name)
  local info = method_info(name)
  if not info then return info end
  return { ret = info.ret, ret_array = info.ret_array, params = copy_fields(info.list) }
end

--- The fields of data type `name` (its base's first), each
--- `{name, type, array}`, and its `base`; nil for a type the data lacks.
---@param name string
---@return {base?: string, fields: {name: string, type: string, array: boolean}[]}|nil
function M.type_fields(name)
  local info = type_info(name)
  if not info then return nil end
  return { base = info.base, fields = copy_fields(info.list) }
end

local INT = { int = true, long = true, short = true, byte = true, unsignedInt = true, unsignedLong = true,
              unsignedShort = true, unsignedByte = true, integer = true }
local FLOAT = { float = true, double = true, decimal = true }
local PRIM = { string = true, boolean = true, dateTime = true, anyType = true, anyURI = true,
               base64Binary = true, ManagedObjectReference = true }
for k in pairs(INT) do PRIM[k] = true end
for k in pairs(FLOAT) do PRIM[k] = true end

-- Field order of objects parsed generically, and fields of known types the
-- type data does not list (newer servers): both are needed to send a
-- parsed value back.
local ORDER = setmetatable({}, { __mode = "k" })
local EXTRA = setmetatable({}, { __mode = "k" })

-- ---------------------------------------------------------------------
-- Serialisation
-- ---------------------------------------------------------------------

local esc, esc_attr = xml.escape, xml.escape_attr

local function fail(where, fmt, ...)
  error("vim25: " .. where .. ": " .. fmt:format(...), 0)
end

local function number_text(v, decl, where)
  if INT[decl] then
    local i = math.tointeger(v)
    if not i then fail(where, "%s needs an integer, got %s", decl, tostring(v)) end
    return ("%d"):format(i)
  end
  if math.type(v) == "integer" then return ("%d"):format(v) end
  if v ~= v or v == math.huge or v == -math.huge then
    return v ~= v and "NaN" or (v > 0 and "INF" or "-INF")
  end
  local s = ("%.15g"):format(v)
  if tonumber(s) ~= v then s = ("%.17g"):format(v) end
  return s
end

-- Text and xsd type of a primitive in a slot declared `decl` (nil: unknown).
local function primitive(v, decl, force_string, where)
  local tv = type(v)
  if force_string then
    if tv == "boolean" then return tostring(v), "string" end
    if tv == "number" then return number_text(v, nil, where), "string" end
    return v, "string"
  end
  if decl == "anyType" then
    if tv == "string" then return v, "string" end
    if tv == "boolean" then return tostring(v), "boolean" end
    if math.type(v) == "integer" then
      return ("%d"):format(v), (v >= -2147483648 and v <= 2147483647) and "int" or "long"
    end
    return number_text(v, nil, where), "double"
  end
  if decl == nil then
    if tv == "number" then return number_text(v, nil, where) end
    return tostring(v)
  end
  if decl == "boolean" then
    if tv ~= "boolean" then fail(where, "boolean expected, got %s", tv) end
    return tostring(v)
  end
  if INT[decl] or FLOAT[decl] then
    if tv ~= "number" then fail(where, "%s expected, got %s", decl, tv) end
    return number_text(v, decl, where)
  end
  if decl == "ManagedObjectReference" then fail(where, "a Ref expected, got %s", tv) end
  if PRIM[decl] then
    if tv == "boolean" then fail(where, "%s expected, got boolean", decl) end
    return tv == "number" and number_text(v, nil, where) or v
  end
  fail(where, "a %s object expected, got %s", decl, tv)
end

local encode

-- One field (or parameter) `f` holding `v`: an array field repeats its element.
local function encode_field(out, f, v, force, where)
  if f.array and is_array(v) then
    for i, e in ipairs(v) do encode(out, f.name, e, f.type, force, ("%s.%s[%d]"):format(where, f.name, i)) end
  else
    encode(out, f.name, v, f.type, force, where .. "." .. f.name)
  end
end

local function encode_fields(out, v, info, where)
  local extra = EXTRA[v]
  for k in pairs(v) do
    if k ~= "_type" and not info.by[k] and not (extra and extra[k]) then
      fail(where, "%s has no field '%s'", info.name, tostring(k))
    end
  end
  local optval = is_a(info.name, "OptionValue")
  for _, f in ipairs(info.list) do
    local fv = v[f.name]
    if fv ~= nil then
      local force = optval and f.name == "value"
      encode_field(out, f, fv, force, where)
    end
  end
end

-- Appends element `name` holding `v` (declared type `decl`; nil when unknown).
function encode(out, name, v, decl, force_string, where)
  local tv = type(v)
  if getmetatable(v) == Ref then
    local xsi = decl ~= "ManagedObjectReference" and ' xsi:type="ManagedObjectReference"' or ""
    out[#out + 1] = ("<%s%s type=\"%s\">%s</%s>"):format(name, xsi, esc_attr(v.type), esc(v.value), name)
    return
  end
  if tv == "table" then
    local t = v._type or decl
    if t ~= nil and type(t) ~= "string" then fail(where, "_type must be a string") end
    if t ~= nil and PRIM[t] then
      fail(where, "%s", t == "anyType" and "a table in an anyType slot needs _type"
        or ("%s expected, got a table"):format(t))
    end
    local xsi = (v._type and v._type ~= decl) and (' xsi:type="' .. esc_attr(v._type) .. '"') or ""
    out[#out + 1] = "<" .. name .. xsi .. ">"
    local info = t and type_info(t)
    if info then
      encode_fields(out, v, info, where)
    elseif ORDER[v] then
      for _, k in ipairs(ORDER[v]) do
        local fv = v[k]
        if is_array(fv) then
          for i, e in ipairs(fv) do encode(out, k, e, nil, false, ("%s.%s[%d]"):format(where, k, i)) end
        elseif fv ~= nil then
          encode(out, k, fv, nil, false, where .. "." .. k)
        end
      end
    elseif t == nil then
      fail(where, "a table without _type where the type is unknown")
    else
      fail(where, "unknown vim25 data type '%s' (not in capil.vsphere.vim25_types; see scripts/gen-vim25-types)", t)
    end
    out[#out + 1] = "</" .. name .. ">"
    return
  end
  if tv ~= "string" and tv ~= "number" and tv ~= "boolean" then
    fail(where, "cannot serialise a %s", tv)
  end
  local text, xsd = primitive(v, decl, force_string, where)
  local ok, s = pcall(esc, text)
  if not ok then fail(where, "%s", (tostring(s):gsub("^xml%.escape: ", ""))) end
  if xsd then
    out[#out + 1] = ("<%s xsi:type=\"xsd:%s\">%s</%s>"):format(name, xsd, s, name)
  else
    out[#out + 1] = ("<%s>%s</%s>"):format(name, s, name)
  end
end

--- The SOAP envelope of a call (what `vc:call` sends). `args` maps
--- parameter names to values; for a method without generated parameter
--- data it may be an array of {name, value} pairs, sent in that order.
---@param method string
---@param this capil.vsphere.vim25.Ref
---@param args? table
---@return string
function M.envelope(method, this, args)
  if type(method) ~= "string" then error("vim25: method must be a string", 2) end
  if getmetatable(this) ~= Ref then error(("vim25.%s: 'this' must be a Ref"):format(method), 2) end
  if args ~= nil and type(args) ~= "table" then error(("vim25.%s: args must be a table"):format(method), 2) end
  local mi = method_info(method)
  if mi == nil then error(("vim25: unknown method '%s'"):format(method), 2) end
  local out = {
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="', SOAP_ENV,
    '" xmlns:xsd="', XSD, '" xmlns:xsi="', xml.XSI, '"><soapenv:Body><', method, ' xmlns="urn:vim25">',
    ('<_this type="%s">%s</_this>'):format(esc_attr(this.type), esc(this.value)),
  }
  local ok, err = pcall(function()
    args = args or {}
    if mi then
      for k in pairs(args) do
        if not mi.by[k] then fail(method, "unknown parameter '%s'", tostring(k)) end
      end
      for _, p in ipairs(mi.list) do
        local v = args[p.name]
        if v ~= nil then
          encode_field(out, p, v, false, method)
        end
      end
    else
      for k, pair in pairs(args) do
        if math.type(k) ~= "integer" or type(pair) ~= "table" or type(pair[1]) ~= "string" then
          fail(method, "no parameter data for this method: pass args as an array of {name, value} pairs")
        end
      end
      for _, pair in ipairs(args) do encode(out, pair[1], pair[2], nil, false, method .. "." .. pair[1]) end
    end
  end)
  if not ok then error(err, 2) end
  out[#out + 1] = "</" .. method .. "></soapenv:Body></soapenv:Envelope>"
  return table.concat(out)
end

-- ---------------------------------------------------------------------
-- Parsing
-- ---------------------------------------------------------------------

-- The xsi:type of an element: name and whether it is an XML Schema type.
local function xsi_of(el)
  local raw = xml.attr(el, xml.XSI, "type")
  if not raw then return nil end
  local name, uri = xml.xsi_type(el)
  if not name then -- undeclared prefix: judge by the usual ones
    local p, n = raw:match("^([^:]*):(.+)$")
    name = n or raw
    uri = (p == "xsd" or p == "xs") and XSD or nil
  end
  return name, uri == XSD
end

local function has_elements(el)
  for i = 1, #el do
    if type(el[i]) == "table" then return true end
  end
  return false
end

local function prim_value(text, t)
  if INT[t] then return math.tointeger(tonumber(text)) or tonumber(text) or text end
  if FLOAT[t] then return tonumber(text) or text end
  if t == "boolean" then return text == "true" or text == "1" end
  return text
end

local decode

-- Adds child `c` of a generic (or unknown-field) object, turning repeats into arrays.
local function generic_set(obj, c, order, multi)
  local name = c.name
  local val = decode(c, nil)
  if obj[name] == nil then
    obj[name] = val
    order[#order + 1] = name
  elseif multi[name] then
    local a = obj[name]
    a[#a + 1] = val
  else
    obj[name] = { obj[name], val }
    multi[name] = true
  end
end

local function generic(el, xt)
  if not has_elements(el) then
    local t = xml.attr(el, "type")
    if not xt and t then return M.ref(t, xml.text(el)) end
    return xml.text(el)
  end
  local obj, order, multi = { _type = xt }, {}, {}
  for i = 1, #el do
    if type(el[i]) == "table" then generic_set(obj, el[i], order, multi) end
  end
  ORDER[obj] = order
  return obj
end

-- The Lua value of element `el` declared as type `decl` (nil: unknown).
function decode(el, decl)
  local xt, is_xsd = xsi_of(el)
  local t = xt or decl
  if is_xsd then
    if t == "anyType" then return generic(el, nil) end
    return prim_value(xml.text(el), t)
  end
  if t == "ManagedObjectReference" then return M.ref(xml.attr(el, "type") or "", xml.text(el)) end
  if t and t ~= "anyType" and PRIM[t] then return prim_value(xml.text(el), t) end
  if t and t:sub(1, 7) == "ArrayOf" then
    local et = t:sub(8)
    local lower = et:sub(1, 1):lower() .. et:sub(2)
    if PRIM[lower] then et = lower end
    local out = {}
    for i = 1, #el do
      if type(el[i]) == "table" then out[#out + 1] = decode(el[i], et) end
    end
    return out
  end
  local info = t and t ~= "anyType" and type_info(t)
  local known = info ~= nil
  if not info and xt and decl and decl ~= "anyType" then
    -- a subtype the type data lacks (another device class): read the
    -- declared base's fields typed, the rest generically; keep the order
    info = type_info(decl)
  end
  if not info then return generic(el, xt) end
  local obj = { _type = t }
  local extra
  local order, multi = {}, {}
  local all = not known and {} or nil
  for i = 1, #el do
    local c = el[i]
    if type(c) == "table" then
      if all and all[#all] ~= c.name then all[#all + 1] = c.name end
      local f = info.by[c.name]
      if f then
        local v = decode(c, f.type)
        if f.array then
          local a = obj[c.name]
          if not a then
            a = {}
            obj[c.name] = a
          end
          a[#a + 1] = v
        else
          obj[c.name] = v
        end
      else
        extra = extra or {}
        extra[c.name] = true
        generic_set(obj, c, order, multi)
      end
    end
  end
  if all then ORDER[obj] = all elseif extra then EXTRA[obj] = extra end
  return obj
end

--- Parses an element (or XML text) as vim25 type `type_` (nil: by its
--- xsi:type or generically); exposed for tests and debugging.
---@param el table|string
---@param type_? string
---@return any
function M.decode(el, type_)
  if type(el) == "string" then
    local root, err = xml.parse(el, { keep_whitespace = true })
    if not root then error("vim25.decode: " .. tostring(err), 2) end
    el = root
  end
  return decode(el, type_)
end

local function summarize(detail)
  if type(detail) ~= "table" then return nil end
  local parts = {}
  local keys = {}
  for k, v in pairs(detail) do
    if k ~= "_type" and (type(v) == "string" or type(v) == "number" or type(v) == "boolean" or M.is_ref(v)) then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(detail[k]) end
  return #parts > 0 and table.concat(parts, ", ") or nil
end

-- A fault table from a LocalizedMethodFault value.
local function localized_fault(lmf)
  local detail = type(lmf) == "table" and lmf.fault or nil
  local ftype = type(detail) == "table" and detail._type or "MethodFault"
  local msg = type(lmf) == "table" and lmf.localizedMessage or nil
  -- the simulator's messages are Go type names ("*types.InvalidPowerState")
  if msg == nil or msg == "" or msg:match("^%*types%.") then msg = summarize(detail) or ftype end
  return { type = ftype, message = log.redact(msg), detail = detail }
end

--- Parses a SOAP reply body for `method`: the returnval as a Lua value, or
--- `nil, fault` ({type, message, detail}); raises nothing on a bad body
--- (`nil, nil, err`).
---@param method string
---@param body string
---@return any value, table? fault, string? err
function M.parse_reply(method, body)
  local root, err = xml.parse(body, { keep_whitespace = true })
  if not root then return nil, nil, "unreadable reply: " .. tostring(err) end
  local b = xml.find(root, "Body", SOAP_ENV) or xml.find(root, "Body")
  if root.name ~= "Envelope" or not b then return nil, nil, "reply is not a SOAP envelope" end
  local first
  for i = 1, #b do
    if type(b[i]) == "table" then first = b[i] break end
  end
  if not first then return nil, nil, "empty SOAP body" end
  if first.name == "Fault" then
    local fs = xml.find(first, "faultstring")
    local msg = fs and xml.text(fs) or ""
    local det = xml.find(first, "detail")
    local del
    if det then
      for i = 1, #det do
        if type(det[i]) == "table" then del = det[i] break end
      end
    end
    local ftype, detail
    if del then
      ftype = xsi_of(del) or (del.name:gsub("Fault$", ""))
      detail = decode(del, ftype)
    else
      local fc = xml.find(first, "faultcode")
      ftype = fc and (xml.text(fc):gsub("^.*:", "")) or "SOAPFault"
    end
    if msg == "" then msg = summarize(detail) or ftype end
    return nil, { type = ftype, message = log.redact(msg), detail = detail }
  end
  local mi = method_info(method)
  local ret = mi and mi.ret
  local vals = xml.children(first, "returnval")
  if mi and mi.ret_array then
    local out = {}
    for i, v in ipairs(vals) do out[i] = decode(v, ret) end
    return out
  end
  if #vals == 0 then return nil end
  if #vals > 1 then
    local out = {}
    for i, v in ipairs(vals) do out[i] = decode(v, ret) end
    return out
  end
  return decode(vals[1], ret)
end

-- ---------------------------------------------------------------------
-- Client
-- ---------------------------------------------------------------------

---@class capil.vsphere.vim25.Client
---@field url string
---@field server string        "host:port" of the connection
---@field scheme string
---@field content table        ServiceContent
---@field about table          AboutInfo
---@field stats {calls: integer, by_method: table<string, integer>, logins: integer}
local Client = {}
Client.__name = "capil.vsphere.vim25.Client"

local SERVICE_INSTANCE = M.ref("ServiceInstance", "ServiceInstance")

-- Calls that may be sent again after a reset or an empty reply: reads, and
-- collector housekeeping whose repetition is harmless.
local IDEMPOTENT = {
  RetrieveServiceContent = true, CurrentTime = true, SessionIsActive = true,
  CreatePropertyCollector = true, DestroyPropertyCollector = true, DestroyPropertyFilter = true,
  CreateFilter = true, CancelWaitForUpdates = true, HttpNfcLeaseProgress = true,
  QueryVirtualDiskUuid = true, CreateContainerView = true,
}
local function idempotent(method)
  return IDEMPOTENT[method] or method:match("^Retrieve") ~= nil or method:match("^ContinueRetrieve") ~= nil
    or method:match("^Find") ~= nil or method:match("^WaitForUpdates") ~= nil
    or method:match("^CheckForUpdates") ~= nil or method:match("^Query") ~= nil
end
local RETRY_CODES = { ECONNRESET = true, EPROTO = true, HTTP_502 = true, HTTP_503 = true, HTTP_504 = true }
local RETRY_STATUS = { [502] = true, [503] = true, [504] = true }
-- Calls that set or clear the session cookie: always on the session.
local SESSION_CALLS = { Login = true, Logout = true, RetrieveServiceContent = true }
local NO_KEEPALIVE = { CurrentTime = true, Login = true, Logout = true, RetrieveServiceContent = true }

local function soap_action(api)
  local function parts(v)
    local t = {}
    for n in tostring(v):gmatch("%d+") do t[#t + 1] = tonumber(n) end
    return t
  end
  local a, m = parts(api), parts(M.API_VERSION)
  if #a == 0 then return "urn:vim25/" .. M.API_VERSION end
  for i = 1, math.max(#a, #m) do
    local x, y = a[i] or 0, m[i] or 0
    if x ~= y then return "urn:vim25/" .. (x < y and api or M.API_VERSION) end
  end
  return "urn:vim25/" .. api
end

-- One HTTP round trip of `body`, retried for idempotent methods when the
-- connection broke or the reply was empty.
--
-- State changes go on a fresh connection (`fresh_connect`), on the session:
-- libcurl silently resends a request once when a reused keep-alive
-- connection dies before the reply, which must not create two VMs.
function Client:_send(method, this, body, extra_time)
  local idem = idempotent(method)
  local tries = idem and self.retries or 0
  for attempt = 0, tries do
    self.stats.calls = self.stats.calls + 1
    self.stats.by_method[method] = (self.stats.by_method[method] or 0) + 1
    log.debug("vim25: %s %s", method, tostring(this))
    local req = {
      url = self.url, method = "POST", body = body,
      headers = { ["Content-Type"] = "text/xml; charset=utf-8", SOAPAction = self.action },
      ok_status = true, retries = 0, timeout = self.timeout + extra_time,
      connect_timeout = math.min(self.timeout, 30), stall_timeout = self.timeout + extra_time,
      ca_file = self.ca_file, insecure = self.insecure, pin_sha256 = self.pin_sha256,
      cert_sha256 = self.cert_sha256,
    }
    req.session = self.http
    req.fresh_connect = not idem and not SESSION_CALLS[method] or nil
    local resp, err, code = http.request(req)
    self.last_used = runtime.now()
    if resp and resp.local_ip then self.local_ip = resp.local_ip end
    if resp and (resp.body == nil or resp.body == "") and (resp.status == 200 or resp.status == 500) then
      resp, err, code = nil, ("POST %s: empty reply (HTTP %d)"):format(self.url, resp.status), "EPROTO"
    end
    if resp and RETRY_STATUS[resp.status] and attempt < tries then
      -- a proxy in front of a restarting vCenter: worth another try for reads
      err, code = ("POST %s: HTTP %d"):format(self.url, resp.status), "HTTP_" .. resp.status
    elseif resp then
      return resp
    end
    if not RETRY_CODES[code] or attempt == tries then return nil, err, code end
    local wait = 0.2 * 2 ^ attempt
    log.warn("vim25.%s: %s; retry %d/%d in %.1f s", method, err, attempt + 1, tries, wait)
    local ok, serr, scode = runtime.sleep(wait)
    if not ok then return nil, serr, scode end
  end
end

-- Sends a prepared envelope; handles keep-alive and one re-login.
function Client:_invoke(method, this, body, opts)
  if self.closed then error(("vim25.%s: the connection to %s is logged out"):format(method, self.server), 3) end
  if self.logged_in and self.idle_limit and not NO_KEEPALIVE[method]
    and runtime.now() - self.last_used > self.idle_limit then
    log.debug("vim25: %s idle for %.0f s: keep-alive", self.server, runtime.now() - self.last_used)
    local _, err, code = self:call("CurrentTime", SERVICE_INSTANCE)
    if code == "EINTR" then return nil, err, code end
  end
  local resp, err, code = self:_send(method, this, body, opts.extra_time or 0)
  if not resp then return nil, ("vim25.%s: %s"):format(method, log.redact(err)), code end
  if resp.status ~= 200 and resp.status ~= 500 then
    local snippet = log.redact(resp.body or ""):sub(1, 200):gsub("%s+", " ")
    return nil, ("vim25.%s: POST %s: HTTP %d %s"):format(method, self.url, resp.status, snippet),
      "HTTP_" .. resp.status
  end
  local value, fault, perr = M.parse_reply(method, resp.body)
  if perr then return nil, ("vim25.%s: POST %s: HTTP %d: %s"):format(method, self.url, resp.status, perr), "EPROTO" end
  if fault then
    if fault.type == "NotAuthenticated" and opts.relogin and self.logged_in then
      local ok, lerr, lcode, lfault = self:_relogin()
      if not ok then return nil, lerr, lcode, lfault end
      return self:_invoke(method, this, body, { extra_time = opts.extra_time })
    end
    return nil, ("vim25.%s: %s: %s"):format(method, fault.type, fault.message), "SOAP_FAULT", fault
  end
  return value
end

--- Calls `method` on `this` with `args` (parameter name -> value); see the
--- module comment for values. Returns the returnval (nil when there is none).
---@param method string
---@param this capil.vsphere.vim25.Ref
---@param args? table
---@return any value, string? err, string? code, table? fault
function Client:call(method, this, args)
  local ok, body = pcall(M.envelope, method, this, args)
  if not ok then error(body, 2) end
  local extra = 0
  if method == "WaitForUpdatesEx" and type(args) == "table" and type(args.options) == "table" then
    extra = tonumber(args.options.maxWaitSeconds) or 0
  elseif method:match("^WaitForUpdates") then
    extra = 3600
  end
  return self:_invoke(method, this, body, { relogin = method ~= "Login" and method ~= "Logout", extra_time = extra })
end

-- Logs in with the stored credentials (the session cookie lands in the
-- http session's store).
function Client:_login()
  local us, err, code, fault = self:call("Login", self.content.sessionManager,
    { userName = self.username, password = self.password })
  if not us then return nil, err, code, fault end
  self.user_session = us
  self.logged_in = true
  self.stats.logins = self.stats.logins + 1
  return true
end

function Client:_relogin()
  log.warn("vim25: %s: session lost (NotAuthenticated); logging in again", self.server)
  self.logged_in = false
  self.collector, self.inbox = nil, nil -- the old session's
  self.http:clear_cookies()
  local ok, err, code, fault = self:_login()
  if not ok then
    self.logged_in = true -- keep trying on later calls
    return nil, err, code, fault
  end
  return true
end

--- Sends GetCurrentTime when the session has been idle longer than
--- `keepalive` seconds (long steps that do not talk to vSphere can call it).
---@return boolean|nil ok, string? err, string? code
function Client:keepalive()
  if self.closed then return nil, "vim25.keepalive: logged out", "ENOTCONN" end
  if runtime.now() - self.last_used <= (self.idle_limit or math.huge) then return true end
  local _, err, code = self:call("CurrentTime", SERVICE_INSTANCE)
  if err then return nil, err, code end
  return true
end

local function paths_list(paths)
  if paths == nil then return nil end
  if type(paths) == "string" then return { paths } end
  if type(paths) ~= "table" then error("vim25.props: paths must be a string or a list", 3) end
  return paths
end

-- RetrievePropertiesEx for `specs`, following tokens; the ObjectContents.
-- A missingSet NotAuthenticated (a lost session seen by the simulator as a
-- 200) re-logs in and retries once.
function Client:_retrieve(spec, what)
  for round = 1, 2 do
    local objects = {}
    local res, err, code, fault = self:call("RetrievePropertiesEx", self.content.propertyCollector,
      { specSet = { spec }, options = {} })
    if err then return nil, err, code, fault end
    while res do
      for _, o in ipairs(M.list(res.objects)) do objects[#objects + 1] = o end
      if not res.token then break end
      res, err, code, fault = self:call("ContinueRetrievePropertiesEx", self.content.propertyCollector,
        { token = res.token })
      if err then return nil, err, code, fault end
    end
    local lost, failure = false, nil
    for _, o in ipairs(objects) do
      for _, m in ipairs(M.list(o.missingSet)) do
        local f = localized_fault(m.fault)
        if f.type == "NotAuthenticated" then
          lost = true
        elseif not failure then
          failure = { o = o, m = m, f = f }
        end
      end
    end
    if lost and round == 1 then
      local ok, lerr, lcode, lfault = self:_relogin()
      if not ok then return nil, lerr, lcode, lfault end
    elseif lost then
      return nil, ("vim25.%s: NotAuthenticated: session lost"):format(what), "SOAP_FAULT",
        { type = "NotAuthenticated", message = "session lost" }
    elseif failure then
      return nil, ("vim25.%s: %s %s: %s: %s"):format(what, tostring(failure.o.obj), failure.m.path,
        failure.f.type, failure.f.message), "SOAP_FAULT", failure.f
    else
      return objects
    end
  end
end

--- Properties of one object: `{[path] = value}` (unset properties are
--- absent). `paths` is a path or a list of them; nil reads all.
---@param ref capil.vsphere.vim25.Ref
---@param paths? string|string[]
---@return table|nil props, string? err, string? code, table? fault
function Client:props(ref, paths)
  if not M.is_ref(ref) then error("vim25.props: ref must be a Ref", 2) end
  paths = paths_list(paths)
  local spec = {
    propSet = { { type = ref.type, all = paths == nil or nil, pathSet = paths } },
    objectSet = { { obj = ref, skip = false } },
  }
  local objects, err, code, fault = self:_retrieve(spec, "props")
  if not objects then return nil, err, code, fault end
  local out = {}
  for _, o in ipairs(objects) do
    for _, p in ipairs(M.list(o.propSet)) do out[p.name] = p.val end
  end
  return out
end

--- Properties of several objects of type `type_`: `{ {ref=, props={...}}, ... }`
--- in the server's order. `refs` is a list of Refs.
---@param refs capil.vsphere.vim25.Ref[]
---@param type_ string
---@param paths? string|string[]
---@return table[]|nil, string? err, string? code, table? fault
function Client:props_many(refs, type_, paths)
  if type(refs) ~= "table" then error("vim25.props_many: refs must be a list of Refs", 2) end
  paths = paths_list(paths)
  local objset = {}
  for i, r in ipairs(M.list(refs)) do
    if not M.is_ref(r) then error("vim25.props_many: refs[" .. i .. "] is not a Ref", 2) end
    objset[i] = { obj = r, skip = false }
  end
  if #objset == 0 then return {} end
  local spec = { propSet = { { type = type_, all = paths == nil or nil, pathSet = paths } }, objectSet = objset }
  local objects, err, code, fault = self:_retrieve(spec, "props_many")
  if not objects then return nil, err, code, fault end
  local out = {}
  for i, o in ipairs(objects) do
    local props = {}
    for _, p in ipairs(M.list(o.propSet)) do props[p.name] = p.val end
    out[i] = { ref = o.obj, props = props }
  end
  return out
end

--- The object at a govc-style inventory path ("/DC0/vm/name",
--- "/DC0/host/DC0_C0/Resources", "/DC0/datastore/LocalDS_0").
---@param path string
---@return capil.vsphere.vim25.Ref|nil, string? err, string? code
function Client:find(path)
  if type(path) ~= "string" then error("vim25.find: path must be a string", 2) end
  local ipath = path:gsub("^/+", ""):gsub("/+$", "")
  local r, err, code, fault = self:call("FindByInventoryPath", self.content.searchIndex, { inventoryPath = ipath })
  if err then return nil, err, code, fault end
  if not M.is_ref(r) then return nil, ("vim25.find: %s: not found"):format(path), "ENOENT" end
  return r
end

-- The current value of `path` after the PropertyFilterUpdates `sets`.
local function apply_updates(sets, path, value)
  for _, fs in ipairs(sets) do
    for _, ou in ipairs(M.list(fs.objectSet)) do
      if ou.kind == "leave" then value = nil end
      for _, ch in ipairs(M.list(ou.changeSet)) do
        if ch.name == path then
          if ch.op == "assign" or ch.op == "add" then value = ch.val else value = nil end
        end
      end
    end
  end
  return value
end

-- The session's PropertyCollector, created on first use and shared by every
-- wait (each with a filter of its own); a re-login forgets it (it belonged to
-- the old session), `logout` destroys it.
function Client:_collector()
  if self.collector then return self.collector end
  local pc, err, code, fault = self:call("CreatePropertyCollector", self.content.propertyCollector)
  if err then return nil, err, code, fault end
  self.collector, self.inbox, self.collector_version = pc, {}, ""
  return pc
end

-- Files each PropertyFilterUpdate of the UpdateSet `us` in the inbox of its
-- filter; updates of a filter no wait holds (destroyed earlier) are dropped.
function Client:_deliver(us)
  if us.version then self.collector_version = us.version end
  for _, fs in ipairs(M.list(us.filterSet)) do
    local box = M.is_ref(fs.filter) and self.inbox[fs.filter.value]
    if box then box[#box + 1] = fs end
  end
end

-- Empties the inbox of `filter`: its updates, oldest first.
function Client:_take(filter)
  local box = self.inbox[filter.value]
  self.inbox[filter.value] = {}
  return box
end

--- Waits until `predicate(value)` of property `path` of `ref` is truthy;
--- returns that value. The session's PropertyCollector is created once and
--- reused: each wait adds a filter of its own (destroyed afterwards), asks
--- for its initial state with version "" and then follows the collector's
--- latest version. Updates land in per-filter inboxes, so a wait inside a
--- predicate (a task waited on) takes nothing from the wait around it.
--- `predicate` is also called with the first (current) value, nil when unset.
---@param ref capil.vsphere.vim25.Ref
---@param path string
---@param predicate fun(value: any): any
---@param timeout? number seconds (default 3600)
---@return any value, string? err, string? code, table? fault
function Client:wait(ref, path, predicate, timeout)
  if not M.is_ref(ref) then error("vim25.wait: ref must be a Ref", 2) end
  if type(path) ~= "string" then error("vim25.wait: path must be a string", 2) end
  if type(predicate) ~= "function" then error("vim25.wait: predicate must be a function", 2) end
  timeout = timeout or 3600
  local deadline = runtime.now() + timeout
  local RESTART = {}
  -- One filter's wait; RESTART when a re-login under it killed the
  -- collector (it belongs to the old session).
  local function attempt()
    local logins = self.stats.logins
    local pc, err, code, fault = self:_collector()
    if not pc then return nil, err, code, fault end
    local filter
    filter, err, code, fault = self:call("CreateFilter", pc, {
      spec = { propSet = { { type = ref.type, pathSet = { path } } }, objectSet = { { obj = ref, skip = false } } },
      partialUpdates = false,
    })
    if err then
      if self.stats.logins ~= logins then return RESTART end
      return nil, err, code, fault
    end
    self.inbox[filter.value] = {}
    local function finish(...)
      if self.inbox then self.inbox[filter.value] = nil end
      self:call("DestroyPropertyFilter", filter)
      return ...
    end
    local function failed(...)
      if self.stats.logins ~= logins then return RESTART end
      return finish(...)
    end
    local version, value = "", nil
    while true do
      if self.stats.logins ~= logins then return RESTART end -- a re-login inside the predicate
      if version ~= "" then version = self.collector_version end
      -- what a wait inside the predicate fetched for this filter
      local early = self:_take(filter)
      if #early > 0 then
        value = apply_updates(early, path, value)
        if predicate(value) then return finish(value) end
      end
      local left = deadline - runtime.now()
      if left <= 0 then
        return finish(nil, ("vim25.wait: %s %s: timed out after %g s"):format(tostring(ref), path, timeout),
          "ETIMEDOUT")
      end
      local us
      us, err, code, fault = self:call("WaitForUpdatesEx", pc, {
        version = version,
        options = { maxWaitSeconds = math.max(1, math.min(math.ceil(left), self.max_wait)) },
      })
      if err then return failed(nil, err, code, fault) end
      if us then
        self:_deliver(us)
        version = self.collector_version
        value = apply_updates(self:_take(filter), path, value)
        if not us.truncated and predicate(value) then return finish(value) end
      end
    end
  end
  local r, err, code, fault = attempt()
  if r == RESTART then r, err, code, fault = attempt() end
  if r == RESTART then
    return nil, ("vim25.wait: %s %s: the session was lost twice"):format(tostring(ref), path), "SOAP_FAULT"
  end
  return r, err, code, fault
end

--- Waits for a task to finish: its result (true when it has none), or
--- `nil, "vim25.<descriptionId>: <FaultType>: <message>", "TASK_FAULT", fault`.
---@param task capil.vsphere.vim25.Ref
---@param timeout? number seconds (default 3600)
---@return any result, string? err, string? code, table? fault
function Client:task(task, timeout)
  if not M.is_ref(task) then error("vim25.task: task must be a Ref", 2) end
  local info, err, code, fault = self:wait(task, "info", function(i)
    return type(i) == "table" and (i.state == "success" or i.state == "error")
  end, timeout)
  if not info then return nil, err, code, fault end
  if info.state == "success" then
    if info.result == nil then return true end
    return info.result
  end
  local f = localized_fault(info.error)
  local name = info.descriptionId or info.name or tostring(task)
  return nil, ("vim25.%s: %s: %s"):format(name, f.type, f.message), "TASK_FAULT", f
end

--- `call` then `task`: for the *_Task methods. Errors name the method.
---@param method string
---@param this capil.vsphere.vim25.Ref
---@param args? table
---@param timeout? number
---@return any result, string? err, string? code, table? fault
function Client:call_task(method, this, args, timeout)
  local t, err, code, fault = self:call(method, this, args)
  if err then return nil, err, code, fault end
  if not M.is_ref(t) then return nil, ("vim25.%s: no task returned"):format(method), "EPROTO" end
  local r
  r, err, code, fault = self:task(t, timeout)
  if err and code == "TASK_FAULT" then
    err = ("vim25.%s: %s: %s"):format(method, fault.type, fault.message)
  end
  return r, err, code, fault
end

--- Options for `http.request` to reach the server's other endpoints
--- (`/folder`, `/nfc`) as this session: its TLS settings, and the session
--- itself, or with `separate = true` (a transfer during which vim25 calls
--- are made, e.g. from a `tick`) the session cookie on a connection of its own.
---@param opts? {separate?: boolean}
---@return table
function Client:transfer_options(opts)
  local t = { ca_file = self.ca_file, insecure = self.insecure, pin_sha256 = self.pin_sha256,
              cert_sha256 = self.cert_sha256 }
  if opts and opts.separate then
    local c = self.http:cookies().vmware_soap_session
    if c then
      log.secret(c)
      t.cookies = { vmware_soap_session = c }
    end
  else
    t.session = self.http
  end
  return t
end

--- Logs out (once; later calls return true) and forgets the session.
---@return boolean|nil ok, string? err, string? code
function Client:logout()
  if self.closed then return true end
  local ok, err, code = true, nil, nil
  if self.logged_in then
    if self.collector then self:call("DestroyPropertyCollector", self.collector) end
    self.collector, self.inbox = nil, nil
    local body = M.envelope("Logout", self.content.sessionManager)
    local _
    _, err, code = self:_invoke("Logout", self.content.sessionManager, body, { relogin = false })
    ok = err == nil or code == "SOAP_FAULT"
  end
  self.closed = true
  self.logged_in = false
  if self.cleanup_handle then self.cleanup_handle:cancel() end
  self.http:clear_cookies()
  self.http:close()
  if not ok then return nil, err, code end
  return true
end
Client.__close = Client.logout

-- Any vim25 method is also a method of the client: vc:PowerOnVM_Task(vm, {})
-- is vc:call("PowerOnVM_Task", vm, {}). `methods` lists them all for the
-- REPL's Tab completion.
local METHOD_SET
local function method_set()
  if not METHOD_SET then
    METHOD_SET = {}
    for _, m in ipairs(M.methods()) do METHOD_SET[m] = true end
  end
  return METHOD_SET
end
Client.__index = function(_, k)
  local v = rawget(Client, k)
  if v ~= nil then return v end
  if type(k) == "string" and method_set()[k] then
    return function(self, this, args) return self:call(k, this, args) end
  end
end
Client.methods = setmetatable({}, { __pairs = function()
  local all = {}
  for k, v in pairs(Client) do if type(v) == "function" and not k:match("^_") then all[k] = true end end
  for k in pairs(method_set()) do all[k] = true end
  return next, all, nil
end })

--- The class of sessions (its functions are every session's methods).
M.Client = Client

function Client:__tostring()
  return ("vim25 client %s@%s%s"):format(self.username, self.server, self.closed and " (logged out)" or "")
end

-- ---------------------------------------------------------------------
-- Connect
-- ---------------------------------------------------------------------

local CONNECT_OPTS = {
  server = true, username = true, password = true, insecure = true, ca_file = true, pin_sha256 = true,
  cert_sha256 = true, timeout = true, keepalive = true, scheme = true, retries = true, max_wait = true,
}

-- URL, "host:port" and scheme of a server option.
local function parse_server(server, scheme)
  local sch, auth, path = server:match("^(%a[%w+.-]*)://([^/?#]*)([^?#]*)")
  if sch then
    sch = sch:lower()
    if sch ~= "http" and sch ~= "https" then error("vim25.connect: unsupported URL scheme '" .. sch .. "'", 3) end
    if auth:find("@", 1, true) then error("vim25.connect: put credentials in username/password, not the URL", 3) end
    if path == "" or path == "/" then path = "/sdk" end
  else
    sch, auth, path = scheme or "https", server, "/sdk"
  end
  local h, port
  if auth:sub(1, 1) == "[" then
    h, port = auth:match("^(%[[^%]]+%])(.*)$")
  else
    h, port = auth:match("^([^:]+)(.*)$")
  end
  if not h or h == "" then error("vim25.connect: no host in server '" .. server .. "'", 3) end
  port = port:match("^:(%d+)$") or (port == "" and (sch == "https" and "443" or "80"))
  if not port then error("vim25.connect: bad port in server '" .. server .. "'", 3) end
  local hp = h .. ":" .. port
  return sch .. "://" .. hp .. path, hp, sch
end

---@class capil.vsphere.vim25.ConnectOptions
---@field server string        "host[:port]" or a URL ("https://vc.example.com/sdk")
---@field username string
---@field password string
---@field insecure? boolean    skip TLS verification
---@field ca_file? string      PEM bundle to verify the server with
---@field pin_sha256? string   base64 SHA-256 of the server's public key
---@field cert_sha256? string  SHA-256 fingerprint of the server's certificate (vSphere thumbprint)
---@field timeout? number      seconds per call (default 60)
---@field keepalive? number    idle seconds before a GetCurrentTime keep-alive (default 600; false: off)
---@field scheme? string       "https" (default) or "http", for a bare host
---@field retries? integer     resends of idempotent calls after a reset/empty reply (default 2)
---@field max_wait? integer    WaitForUpdatesEx maxWaitSeconds ceiling (default 30)

--- Connects and logs in: RetrieveServiceContent, then SessionManager.Login.
--- A cleanup logs out at the end of the run.
---@param opts capil.vsphere.vim25.ConnectOptions
---@return capil.vsphere.vim25.Client|nil, string? err, string? code, table? fault
function M.connect(opts)
  if type(opts) ~= "table" then error("vim25.connect: options must be a table", 2) end
  require("capil.util.opts").check(opts, CONNECT_OPTS, "vim25.connect")
  log.secret(opts.password)
  for _, k in ipairs({ "server", "username", "password" }) do
    if type(opts[k]) ~= "string" then error(("vim25.connect: option '%s' must be a string"):format(k), 2) end
  end
  if opts.scheme ~= nil and opts.scheme ~= "http" and opts.scheme ~= "https" then
    error("vim25.connect: scheme must be 'http' or 'https'", 2)
  end
  local url, server, scheme = parse_server(opts.server, opts.scheme)
  local keepalive = opts.keepalive
  if keepalive == nil then keepalive = 600 end
  local vc = setmetatable({
    url = url, server = server, scheme = scheme,
    username = opts.username, password = opts.password,
    insecure = opts.insecure, ca_file = opts.ca_file, pin_sha256 = opts.pin_sha256,
    cert_sha256 = opts.cert_sha256, timeout = opts.timeout or 60, idle_limit = keepalive or nil,
    retries = opts.retries or 2, max_wait = opts.max_wait or 30,
    http = http.session(), action = "urn:vim25/6.5",
    stats = { calls = 0, by_method = {}, logins = 0 },
    last_used = runtime.now(), logged_in = false, closed = false,
  }, Client)
  local function failed(err, code, fault)
    vc.http:close()
    vc.closed = true
    return nil, ("vim25.connect: %s: %s"):format(url, (err:gsub("^vim25%.", ""))), code, fault
  end
  local content, err, code, fault = vc:call("RetrieveServiceContent", SERVICE_INSTANCE)
  if err then return failed(err, code, fault) end
  if type(content) ~= "table" or not M.is_ref(content.sessionManager) then
    return failed("RetrieveServiceContent: no sessionManager in the reply", "EPROTO")
  end
  vc.content = content
  vc.about = content.about
  vc.action = soap_action(content.about and content.about.apiVersion)
  local ok
  ok, err, code, fault = vc:_login()
  if not ok then return failed(err, code, fault) end
  vc.cleanup_handle = cleanup.push(("vSphere session %s@%s"):format(vc.username, server), function()
    vc:logout()
  end)
  log.debug("vim25: logged in to %s (%s)", url, content.about and content.about.fullName or "?")
  return vc
end

return M
