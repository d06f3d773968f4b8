--- capil.sys.xml — XML parsing into Lua trees (expat), lookups by namespace URI,
--- and an escaping writer for SOAP envelopes and OVF descriptors.
---
--- A parsed element is a table:
---   { name = "local name", ns = "namespace URI" | nil, prefix = "p" | nil,
---     attrs = { plain = "v", ["{uri}local"] = "v" },
---     nsmap = { [prefix] = uri, [""] = default uri },   -- in scope here
---     [1..n] = children: strings (text) and elements }
--- Lookups go by URI, never by prefix: the vSphere simulator writes
--- `XMLSchema-instance:type`, others `xsi:type`; both are
--- `xml.attr(el, xml.XSI, "type")`. QName values such as
--- `xsi:type="vim25:VirtualMachine"` resolve with `xml.resolve_qname`.
---
--- Parsing refuses DTD entity declarations (billion laughs), undeclared
--- entities, nesting deeper than `max_depth` (1000) and documents larger than
--- `max_size` (256 MiB); nothing external is ever fetched. Whitespace-only
--- text nodes are dropped unless `keep_whitespace = true`.
local core = require("capil.core.xml")
local optcheck = require("capil.util.opts").check

local M = {}

M.XML_NS = core.XML_NS
M.XSI = "http://www.w3.org/2001/XMLSchema-instance"
M.XSD = "http://www.w3.org/2001/XMLSchema"

--- `s` escaped for element text: `& < > " '` as entities, CR as `&#13;`.
--- Raises on invalid UTF-8 and on characters XML 1.0 cannot carry.
---@type fun(s: string): string
M.escape = core.escape
--- As `escape`, plus TAB and LF as references (an attribute value keeps them).
---@type fun(s: string): string
M.escape_attr = core.escape_attr

-- What XML 1.0 cannot carry, as U+FFFD: bytes that are not UTF-8, and
-- control characters other than TAB, LF and CR (and U+FFFE, U+FFFF).
local function carryable(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local ok, cp = pcall(utf8.codepoint, s, i)
    if not ok then
      out[#out + 1] = "\u{FFFD}"
      i = i + 1
    else
      local size = #utf8.char(cp)
      if (cp < 0x20 and cp ~= 9 and cp ~= 10 and cp ~= 13) or cp == 0xFFFE or cp == 0xFFFF then
        out[#out + 1] = "\u{FFFD}"
      else
        out[#out + 1] = s:sub(i, i + size - 1)
      end
      i = i + size
    end
  end
  return table.concat(out)
end

--- `v` (any value, through tostring) escaped as `escape_attr` does, but
--- never raising: what XML 1.0 cannot carry (invalid UTF-8, control
--- characters such as a terminal's ESC) becomes U+FFFD first. For text from
--- outside written into a report that must be written whatever the text
--- holds (guest output in a JUnit failure message).
---@param v any
---@return string
function M.escape_attr_lossy(v)
  local s = tostring(v)
  local ok, r = pcall(core.escape_attr, s)
  if ok then return r end
  ok, r = pcall(core.escape_attr, carryable(s))
  if ok then return r end
  return core.escape_attr((s:gsub("[^\t\n\r\32-\126]", "?"))) -- ASCII: cannot fail
end

--- Parses a document into its root element.
---@param s string
---@param opts? {namespaces?: boolean, keep_whitespace?: boolean, max_depth?: integer, max_size?: integer}
---@return table|nil root, string? err, string? code
function M.parse(s, opts)
  return core.parse(s, opts)
end

--- True for an element table (as opposed to a text string).
---@param v any
---@return boolean
function M.is_element(v)
  return type(v) == "table" and type(v.name) == "string"
end

local function matches(child, name, ns)
  return type(child) == "table" and (name == nil or child.name == name)
    and (ns == nil or child.ns == ns)
end

--- The first child element named `name` (local name), in namespace `ns` when
--- given (any namespace otherwise); nil when there is none.
---@param el table
---@param name string
---@param ns? string
---@return table|nil
function M.find(el, name, ns)
  for i = 1, #el do
    if matches(el[i], name, ns) then return el[i] end
  end
  return nil
end

--- The child elements named `name` (all child elements when `name` is nil),
--- in namespace `ns` when given, as a list.
---@param el table
---@param name? string
---@param ns? string
---@return table[]
function M.children(el, name, ns)
  local out = {}
  for i = 1, #el do
    if matches(el[i], name, ns) then out[#out + 1] = el[i] end
  end
  return out
end

--- All text inside `el` (descendants included), concatenated.
---@param el table|string
---@return string
function M.text(el)
  if type(el) == "string" then return el end
  local parts = {}
  local function walk(e)
    for i = 1, #e do
      local c = e[i]
      if type(c) == "string" then parts[#parts + 1] = c else walk(c) end
    end
  end
  walk(el)
  return table.concat(parts)
end

--- An attribute value: `xml.attr(el, "local")` for a plain attribute,
--- `xml.attr(el, uri, "local")` for one in a namespace.
---@param el table
---@param a string local name, or namespace URI when `b` is given
---@param b? string local name
---@return string|nil
function M.attr(el, a, b)
  local attrs = el.attrs or {}
  if b == nil then return attrs[a] end
  return attrs["{" .. a .. "}" .. b]
end

--- Resolves a QName written in content or an attribute value ("vim25:VirtualMachine")
--- with the namespaces in scope at `el`. Returns the local name and the URI
--- (nil when the name is in no namespace) — the same order as `xml.find`'s
--- arguments; `nil, msg, "XML_NS"` for an undeclared prefix or a malformed name.
---@param el table a parsed element (it carries `nsmap`)
---@param qname string
---@return string|nil name, string? uri_or_err, string? code
function M.resolve_qname(el, qname)
  if type(el) ~= "table" or type(el.nsmap) ~= "table" then
    error("xml.resolve_qname: element has no namespace map (parsed with namespaces = false?)", 2)
  end
  if type(qname) ~= "string" then error("xml.resolve_qname: qname must be a string", 2) end
  local q = qname:match("^%s*(.-)%s*$")
  local prefix, name = q:match("^([^:]+):([^:]+)$")
  if not prefix then
    if q == "" or q:find(":", 1, true) then
      return nil, ("xml.resolve_qname: malformed QName '%s'"):format(qname), "XML_NS"
    end
    return q, el.nsmap[""] or nil
  end
  local uri = el.nsmap[prefix]
  if not uri then
    return nil, ("xml.resolve_qname: undeclared namespace prefix '%s' in '%s'"):format(prefix, qname),
      "XML_NS"
  end
  return name, uri
end

--- The resolved `xsi:type` of an element (whatever prefix the document
--- bound to the XMLSchema-instance namespace): local name and URI, or nil
--- when the element has none (`nil, msg, "XML_NS"` when it cannot resolve).
---@param el table
---@return string|nil name, string? uri_or_err, string? code
function M.xsi_type(el)
  local t = M.attr(el, M.XSI, "type")
  if not t then return nil end
  return M.resolve_qname(el, t)
end

-- ---------------------------------------------------------------------
-- Writer
-- ---------------------------------------------------------------------

local NAME = "^[%a_\128-\255][%w_%.%-\128-\255]*$"
local QNAME = "^[%a_\128-\255][%w_%.%-\128-\255]*:[%a_\128-\255][%w_%.%-\128-\255]*$"

-- Writer errors are raised without a position (level 0) from inside the
-- recursion; xml.write re-raises them at its caller.
local function fail(fmt, ...)
  error("xml.write: " .. fmt:format(...), 0)
end

local function check_name(n, what)
  if type(n) ~= "string" or not (n:match(NAME) or n:match(QNAME)) then
    fail("invalid %s name %s", what, type(n) == "string" and ("'" .. n .. "'") or type(n))
  end
  return n
end

-- Escapes s with fn, naming where it goes when s cannot be written.
local function escaped(fn, s, where)
  local ok, r = pcall(fn, s)
  if not ok then fail("%s: %s", where, (tostring(r):gsub("^xml%.escape[_%a]*: ", ""))) end
  return r
end

--- A new element for `xml.write`: `name` may be "prefix:local" (declare
--- the prefix with an `xmlns:prefix` attribute) or a local name with `ns`
--- (and `prefix`) set on the result; `attrs` keys are names or "{uri}local";
--- `children` is a list of strings and elements, or one string. An `nsmap`
--- field ({prefix = uri}) declares namespaces on the element.
---@param name string
---@param attrs? table<string, string|number|boolean>
---@param children? (string|table)[]|string
---@return table
function M.element(name, attrs, children)
  local el = { name = name, attrs = attrs or {} }
  if type(children) == "string" or type(children) == "number" then
    el[1] = tostring(children)
  elseif children ~= nil then
    for i = 1, #children do el[i] = children[i] end
  end
  return el
end

local function attr_value(v, key)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  fail("attribute '%s' must be a string, number or boolean, got %s", key, t)
end

-- A prefix (not the default) bound to uri in scope, or nil.
local function prefix_for(scope, uri)
  local found
  for p, u in pairs(scope) do
    if u == uri and p ~= "" and (not found or p < found) then found = p end
  end
  return found
end

--- Serialises an element tree (parsed or built) to XML text, escaping every
--- name and value; raises on invalid names and characters XML 1.0 cannot
--- carry. Elements with `ns` get the namespace declarations they need; a
--- "{uri}local" attribute gets a declared or generated prefix.
--- `indent` (a string or a number of spaces) puts element-only content on
--- separate lines; `declaration` (default true) writes the XML declaration.
local WRITE_OPTS = { indent = true, declaration = true }

---@param root table
---@param opts? {indent?: string|integer, declaration?: boolean}
---@return string
function M.write(root, opts)
  opts = optcheck(opts, WRITE_OPTS, "xml.write")
  local indent = opts.indent
  if type(indent) == "number" then indent = (" "):rep(indent) end
  local out = {}
  local function emit(s) out[#out + 1] = s end
  if opts.declaration ~= false then
    emit('<?xml version="1.0" encoding="UTF-8"?>')
    if indent then emit("\n") end
  end

  local function write_el(el, scope, level, pretty)
    if type(el) ~= "table" then fail("an element must be a table, got %s", type(el)) end
    local name = check_name(el.name, "element")
    local attrs = el.attrs or {}
    local decls = {}
    local copied = false
    local function declare(p, uri)
      if not copied then
        local s = {}
        for k, v in pairs(scope) do s[k] = v end
        scope, copied = s, true
      end
      scope[p] = uri
      decls[#decls + 1] = p
    end
    -- literal xmlns attributes count as declarations already made
    for k, v in pairs(attrs) do
      if k == "xmlns" then declare("", v) decls[#decls] = nil
      elseif type(k) == "string" and k:sub(1, 6) == "xmlns:" then declare(k:sub(7), v) decls[#decls] = nil
      end
    end
    -- nsmap (parsed elements have one): declare what differs from the scope,
    -- so prefixes used only inside values (xsi:type="vim25:X") survive
    if type(el.nsmap) == "table" then
      for p, uri in pairs(el.nsmap) do
        if p ~= "xml" and scope[p] ~= uri then declare(p, uri) end
      end
      if el.nsmap[""] == nil and (scope[""] or "") ~= "" then declare("", "") end
    end
    local qname = name
    if el.ns ~= nil then
      if name:find(":", 1, true) then fail("element '%s' has ns and a prefixed name", name) end
      local p = el.prefix or ""
      if scope[p] ~= el.ns then declare(p, el.ns) end
      if p ~= "" then qname = check_name(p, "prefix") .. ":" .. name end
    end
    local keys = {}
    for k in pairs(attrs) do
      if type(k) ~= "string" then fail("attribute names of <%s> must be strings", name) end
      keys[#keys + 1] = k
    end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      local v = attr_value(attrs[k], k)
      local uri, lname = k:match("^{(.*)}(.+)$")
      local aname
      if uri then
        check_name(lname, "attribute")
        local p = uri == M.XML_NS and "xml" or prefix_for(scope, uri)
        if not p then
          local n = 1
          while scope["ns" .. n] do n = n + 1 end
          p = "ns" .. n
          declare(p, uri)
        end
        aname = p .. ":" .. lname
      else
        aname = check_name(k, "attribute")
      end
      local where = ("attribute '%s' of <%s>"):format(k, name)
      parts[#parts + 1] = " " .. aname .. '="' .. escaped(core.escape_attr, v, where) .. '"'
    end
    emit("<" .. qname)
    table.sort(decls)
    for _, p in ipairs(decls) do
      local uri = escaped(core.escape_attr, scope[p], "namespace URI")
      emit((p == "" and " xmlns" or " xmlns:" .. p) .. '="' .. uri .. '"')
    end
    emit(table.concat(parts))
    local n = #el
    if n == 0 then emit("/>") return end
    emit(">")
    local element_only = true
    for i = 1, n do
      if type(el[i]) ~= "table" then element_only = false break end
    end
    local nl = pretty and indent and element_only
    for i = 1, n do
      local c = el[i]
      local t = type(c)
      if t == "string" or t == "number" then
        emit(escaped(core.escape, tostring(c), ("text in <%s>"):format(name)))
      elseif t == "table" then
        if nl then emit("\n" .. indent:rep(level + 1)) end
        write_el(c, scope, level + 1, nl)
      else
        fail("child %d of <%s> is a %s", i, name, t)
      end
    end
    if nl then emit("\n" .. indent:rep(level)) end
    emit("</" .. qname .. ">")
  end

  local ok, err = pcall(write_el, root, { xml = M.XML_NS }, 0, true)
  if not ok then error(err, 2) end
  if indent then emit("\n") end
  return table.concat(out)
end

return M
