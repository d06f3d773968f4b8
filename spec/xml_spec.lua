local xml = require("capil.sys.xml")

local SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
local VIM = "urn:vim25"

-- A RetrievePropertiesEx response as the vSphere simulator (govmomi vcsim)
-- writes it: the XMLSchema-instance namespace bound, on each element that
-- needs it, to the prefix "XMLSchema-instance", not "xsi".
local VCSIM_RESPONSE = assert(require("capil.sys.fs").read("spec/fixtures/vcsim_retrieve_properties.xml"))

describe("xml #unit", function()
  describe("parse", function()
    it("builds a tree with local names, namespace URIs and prefixes", function()
      local env = assert(xml.parse(VCSIM_RESPONSE))
      assert.equal("Envelope", env.name)
      assert.equal(SOAP, env.ns)
      assert.equal("soapenv", env.prefix)
      local body = assert(xml.find(env, "Body", SOAP))
      local resp = assert(xml.find(body, "RetrievePropertiesExResponse", VIM))
      assert.is_nil(resp.prefix)
      assert.equal(VIM, resp.nsmap[""])
      local objects = xml.find(xml.find(resp, "returnval"), "objects")
      local obj = xml.find(objects, "obj", VIM)
      assert.equal("vm-42", xml.text(obj))
      assert.equal("VirtualMachine", xml.attr(obj, "type"))
      assert.equal(2, #xml.children(objects, "propSet"))
      assert.equal(3, #xml.children(objects))
      assert.is_nil(xml.find(objects, "propSet", "urn:other"))
      assert.is_nil(xml.find(objects, "missing"))
    end)

    it("looks attributes up by namespace URI whatever the prefix", function()
      local env = assert(xml.parse(VCSIM_RESPONSE))
      local objects = env[1][1][1][1]
      local val1 = xml.find(xml.children(objects, "propSet")[1], "val")
      local val2 = xml.find(xml.children(objects, "propSet")[2], "val")
      assert.equal("VirtualMachineConfigSummary", xml.attr(val1, xml.XSI, "type"))
      assert.equal("VirtualMachineConfigSummary",
        val1.attrs["{http://www.w3.org/2001/XMLSchema-instance}type"])
      assert.is_nil(val1.attrs["XMLSchema-instance:type"])
      assert.is_nil(xml.attr(val1, "type"))
      -- the same document with the conventional prefix gives the same answer
      local conventional = VCSIM_RESPONSE:gsub("XMLSchema%-instance:type", "xsi:type")
      local env2 = assert(xml.parse(conventional))
      local v = xml.find(xml.children(env2[1][1][1][1], "propSet")[1], "val")
      assert.equal("VirtualMachineConfigSummary", xml.attr(v, xml.XSI, "type"))
      assert.equal("Folder", xml.attr(val2, "type"))
    end)

    it("resolves QName values with the namespaces in scope", function()
      local env = assert(xml.parse(VCSIM_RESPONSE))
      local objects = env[1][1][1][1]
      local val1 = xml.find(xml.children(objects, "propSet")[1], "val")
      local val2 = xml.find(xml.children(objects, "propSet")[2], "val")
      -- unprefixed: the default namespace in scope
      assert.same({ "VirtualMachineConfigSummary", VIM }, { xml.xsi_type(val1) })
      -- prefixed, declared on the element itself
      assert.same({ "ManagedObjectReference", VIM }, { xml.xsi_type(val2) })
      assert.same({ "string", xml.XSD }, { xml.resolve_qname(val2, " xsd:string ") })
      -- a prefix declared on a sibling is not in scope
      assert.same({ nil, "xml.resolve_qname: undeclared namespace prefix 'vim25' in 'vim25:X'", "XML_NS" },
        { xml.resolve_qname(val1, "vim25:X") })
      assert.same({ nil, "xml.resolve_qname: malformed QName 'a:b:c'", "XML_NS" },
        { xml.resolve_qname(val1, "a:b:c") })
      -- no default namespace: the name is in no namespace
      local plain = assert(xml.parse('<a xmlns:p="urn:p"><b/></a>'))
      assert.same({ "T" }, { xml.resolve_qname(plain[1], "T") })
      assert.same({ "T", "urn:p" }, { xml.resolve_qname(plain[1], "p:T") })
      assert.same({ "lang", xml.XML_NS }, { xml.resolve_qname(plain, "xml:lang") })
      assert.is_nil(xml.xsi_type(plain))
      assert.has_error(function() xml.resolve_qname({ name = "x" }, "a:b") end)
    end)

    it("follows redeclared and undeclared prefixes", function()
      local root = assert(xml.parse(
        '<r xmlns:p="urn:one" xmlns="urn:d"><p:a xmlns:p="urn:two"><b/></p:a><p:c/><e xmlns=""/></r>'))
      assert.equal("urn:two", root[1].ns)
      assert.equal("urn:d", root[1][1].ns)
      assert.same({ "x", "urn:two" }, { xml.resolve_qname(root[1][1], "p:x") })
      assert.equal("urn:one", root[2].ns)
      assert.is_nil(root[3].ns)
      assert.is_nil(root[3].nsmap[""])
      assert.equal(root.nsmap, root[2].nsmap) -- shared when nothing is declared
    end)

    it("merges text pieces, entities and CDATA; drops whitespace-only text", function()
      local el = assert(xml.parse("<a>\n  x &lt; y &#x263A; <![CDATA[<raw> & ]]>z\n  <b> </b>\n</a>"))
      assert.equal("\n  x < y \226\152\186 <raw> & z\n  ", el[1])
      assert.equal(0, #el[2])
      assert.equal(2, #el)
      local kept = assert(xml.parse("<a>\n  <b> </b>\n</a>", { keep_whitespace = true }))
      assert.same({ "\n  ", "\n" }, { kept[1], kept[3] })
      assert.equal(" ", kept[2][1])
      assert.equal("\n   \n", xml.text(kept))
    end)

    it("parses without namespace processing on request", function()
      local el = assert(xml.parse('<p:a xmlns:p="urn:p" p:x="1"><p:b/></p:a>', { namespaces = false }))
      assert.equal("p:a", el.name)
      assert.is_nil(el.ns)
      assert.is_nil(el.nsmap)
      assert.equal("urn:p", el.attrs["xmlns:p"])
      assert.equal("1", el.attrs["p:x"])
      assert.equal("p:b", el[1].name)
    end)

    it("parses documents larger than one chunk", function()
      local parts = { "<list>" }
      for i = 1, 40000 do
        parts[#parts + 1] = ("<item id='%d'>value number %d with some padding text</item>"):format(i, i)
      end
      parts[#parts + 1] = "<big>" .. ("0123456789"):rep(300000) .. "</big></list>"
      local text = table.concat(parts)
      assert.is_true(#text > 5 * 1024 * 1024)
      local list = assert(xml.parse(text))
      assert.equal(40001, #list)
      assert.equal("value number 40000 with some padding text", xml.text(list[40000]))
      assert.equal(3000000, #xml.text(list[40001]))
    end)

    it("reports malformed documents with line and column", function()
      assert.same({ nil, "xml.parse: line 2, column 6: mismatched tag", "XML_PARSE" },
        { xml.parse("<a>\n<b></a>") })
      assert.same({ nil, "xml.parse: line 1, column 1: no element found", "XML_PARSE" }, { xml.parse("") })
      local v, err, code = xml.parse("<a>\1</a>")
      assert.is_nil(v)
      assert.equal("XML_PARSE", code)
      assert.equal("xml.parse: line 1, column 4: not well-formed (invalid token)", err)
      v, err = xml.parse("<a>\xff</a>")
      assert.is_nil(v)
      assert.matches("^xml%.parse: line 1, column 4: ", err)
      v, err = xml.parse("<x:a/>")
      assert.is_nil(v)
      assert.equal("xml.parse: line 1, column 1: unbound prefix", err)
    end)

    it("raises on misuse", function()
      assert.has_error(function() xml.parse({}) end)
      assert.has_error(function() xml.parse("<a/>", { namespace = true }) end,
        "xml.parse: unknown option 'namespace'")
      assert.has_error(function() xml.parse("<a/>", { max_depth = 0 }) end)
    end)
  end)

  describe("parse security", function()
    it("rejects the billion laughs at its first entity declaration", function()
      local lol = { '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">' }
      for i = 1, 9 do
        local prev = i == 1 and "lol" or ("lol" .. (i - 1))
        lol[#lol + 1] = (' <!ENTITY lol%d "%s">'):format(i, ("&" .. prev .. ";"):rep(10))
      end
      lol[#lol + 1] = "]>\n<lolz>&lol9;</lolz>"
      local v, err, code = xml.parse(table.concat(lol, "\n"))
      assert.is_nil(v)
      assert.equal("XML_PARSE", code)
      assert.equal("xml.parse: line 3, column 15: entity declarations are not allowed (<!ENTITY lol>)", err)
    end)

    it("rejects external and parameter entities", function()
      local v, err = xml.parse('<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><a>&xxe;</a>')
      assert.is_nil(v)
      assert.matches("entity declarations are not allowed %(<!ENTITY xxe>%)", err)
      v, err = xml.parse('<!DOCTYPE a [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd"> %p;]><a/>')
      assert.is_nil(v)
      assert.matches("entity declarations are not allowed %(<!ENTITY %% p>%)", err)
      v, err = xml.parse('<!DOCTYPE a SYSTEM "http://127.0.0.1:1/a.dtd"><a>&ext;</a>')
      assert.is_nil(v)
      assert.equal("xml.parse: line 1, column 50: reference to undeclared entity &ext;", err)
      v, err = xml.parse("<a>&undefined;</a>")
      assert.is_nil(v)
      assert.equal("xml.parse: line 1, column 4: undefined entity", err)
    end)

    it("accepts a DOCTYPE without entities", function()
      local v = assert(xml.parse('<!DOCTYPE a [<!ELEMENT a (#PCDATA)>]><a>ok</a>'))
      assert.equal("ok", xml.text(v))
    end)

    it("limits nesting depth without crashing", function()
      local v, err, code = xml.parse(("<a>"):rep(100000) .. ("</a>"):rep(100000))
      assert.is_nil(v)
      assert.equal("XML_PARSE", code)
      assert.equal("xml.parse: line 1, column 3001: nesting deeper than 1000 levels", err)
      assert(xml.parse(("<a>"):rep(1000) .. ("</a>"):rep(1000)))
      v, err = xml.parse("<a><b><c/></b></a>", { max_depth = 2 })
      assert.is_nil(v)
      assert.matches("nesting deeper than 2 levels", err)
    end)

    it("limits the document size", function()
      local v, err, code = xml.parse("<a>" .. ("x"):rep(100) .. "</a>", { max_size = 64 })
      assert.is_nil(v)
      assert.equal("XML_PARSE", code)
      assert.equal("xml.parse: document of 107 bytes exceeds max_size (64)", err)
    end)
  end)

  describe("escape", function()
    it("escapes markup characters", function()
      assert.equal("a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos;", xml.escape([[a & b <c> "d" 'e']]))
      assert.equal("x]]&gt;", xml.escape("x]]>"))
      assert.equal("tab\tnl\ncr&#13;", xml.escape("tab\tnl\ncr\r"))
      assert.equal("tab&#9;nl&#10;cr&#13;&amp;&quot;", xml.escape_attr("tab\tnl\ncr\r&\""))
      assert.equal("h\195\169 \226\152\186", xml.escape("h\195\169 \226\152\186"))
    end)

    it("rejects what XML 1.0 cannot carry", function()
      assert.has_error(function() xml.escape("ok\0") end,
        "xml.escape: character U+0000 at byte 3 is not allowed in XML 1.0")
      assert.has_error(function() xml.escape_attr("\27[31m") end,
        "xml.escape_attr: character U+001B at byte 1 is not allowed in XML 1.0")
      assert.has_error(function() xml.escape("\239\191\191") end,
        "xml.escape: character U+FFFF at byte 1 is not allowed in XML 1.0")
      assert.has_error(function() xml.escape("a\xffb") end, "xml.escape: invalid UTF-8 at byte 2")
      assert.has_error(function() xml.escape("\237\160\128") end, "xml.escape: invalid UTF-8 at byte 1")
      assert.has_error(function() xml.escape("\192\175") end, "xml.escape: invalid UTF-8 at byte 1")
    end)

    it("survives a parse round trip", function()
      local nasty = "a\tb\r\nc & <d> \"e\" 'f' ]]>"
      local el = assert(xml.parse(xml.write(xml.element("x", { v = nasty }, nasty))))
      assert.equal(nasty, el.attrs.v)
      assert.equal(nasty, xml.text(el))
    end)
  end)

  describe("escape_attr_lossy", function()
    it("escapes as escape_attr does, and takes any value", function()
      assert.equal("tab&#9;nl&#10;cr&#13;&amp;&quot;&apos;&lt;&gt;", xml.escape_attr_lossy("tab\tnl\ncr\r&\"'<>"))
      assert.equal("h\195\169", xml.escape_attr_lossy("h\195\169"))
      assert.equal("42", xml.escape_attr_lossy(42))
      assert.equal("failed", xml.escape_attr_lossy("failed"))
    end)

    it("never raises: what XML cannot carry becomes U+FFFD", function()
      local R = "\239\191\189"
      assert.equal(R .. "[31mred" .. R .. "[0m", xml.escape_attr_lossy("\27[31mred\27[0m"))
      assert.equal("a" .. R .. "b", xml.escape_attr_lossy("a\xffb"))
      assert.equal("ok" .. R, xml.escape_attr_lossy("ok\0"))
      assert.equal(R .. R .. R .. " &amp; " .. R .. R, xml.escape_attr_lossy("\237\160\128 & \192\175"))
      assert.equal(R, xml.escape_attr_lossy("\239\191\191"))
      -- the result always parses back to the text (with the replacements)
      local doc = assert(xml.parse('<a v="' .. xml.escape_attr_lossy("x\1y\n'z'") .. '"/>'))
      assert.equal("x" .. R .. "y\n'z'", doc.attrs.v)
    end)
  end)

  describe("write", function()
    local function envelope()
      return xml.element("soapenv:Envelope", { ["xmlns:soapenv"] = SOAP, ["xmlns:xsi"] = xml.XSI }, {
        xml.element("soapenv:Body", nil, {
          xml.element("RetrieveServiceContent", { xmlns = VIM }, {
            xml.element("_this", { type = "ServiceInstance" }, "ServiceInstance"),
          }),
        }),
      })
    end

    it("writes a SOAP envelope from builders", function()
      assert.equal('<?xml version="1.0" encoding="UTF-8"?>' ..
        '<soapenv:Envelope xmlns:soapenv="' .. SOAP .. '" xmlns:xsi="' .. xml.XSI .. '">' ..
        '<soapenv:Body><RetrieveServiceContent xmlns="urn:vim25">' ..
        '<_this type="ServiceInstance">ServiceInstance</_this>' ..
        "</RetrieveServiceContent></soapenv:Body></soapenv:Envelope>", xml.write(envelope()))
    end)

    it("indents element-only content", function()
      assert.equal(table.concat({
        '<soapenv:Envelope xmlns:soapenv="' .. SOAP .. '" xmlns:xsi="' .. xml.XSI .. '">',
        "  <soapenv:Body>",
        '    <RetrieveServiceContent xmlns="urn:vim25">',
        '      <_this type="ServiceInstance">ServiceInstance</_this>',
        "    </RetrieveServiceContent>",
        "  </soapenv:Body>",
        "</soapenv:Envelope>",
        "",
      }, "\n"), xml.write(envelope(), { indent = 2, declaration = false }))
      assert.equal("<p>a<b>c</b></p>", xml.write(xml.element("p", nil, { "a", xml.element("b", nil, "c") }),
        { indent = "  ", declaration = false }):gsub("\n$", ""))
    end)

    it("declares namespaces for ns elements and {uri} attributes", function()
      local el = { name = "Envelope", ns = SOAP, prefix = "soapenv", attrs = {},
        { name = "Body", ns = SOAP, prefix = "soapenv", attrs = {},
          { name = "Get", ns = VIM,
            attrs = { ["{" .. xml.XSI .. "}type"] = "x", ["{" .. xml.XML_NS .. "}lang"] = "en" } } } }
      assert.equal('<soapenv:Envelope xmlns:soapenv="' .. SOAP .. '"><soapenv:Body>' ..
        '<Get xmlns="urn:vim25" xmlns:ns1="' .. xml.XSI .. '" ns1:type="x" xml:lang="en"/>' ..
        "</soapenv:Body></soapenv:Envelope>", xml.write(el, { declaration = false }))
    end)

    it("round-trips a parsed document, QName values included", function()
      local env = assert(xml.parse(VCSIM_RESPONSE))
      local again = assert(xml.parse(xml.write(env)))
      local objects = again[1][1][1][1]
      local val2 = xml.find(xml.children(objects, "propSet")[2], "val")
      assert.same({ "ManagedObjectReference", VIM }, { xml.xsi_type(val2) })
      assert.equal("DC0_H0_VM0 & co", xml.text(xml.find(xml.find(objects[2], "val"), "name")))
      assert.equal(xml.write(env), xml.write(again))
      local undeclared = assert(xml.parse('<r xmlns="urn:d"><e xmlns=""/></r>'))
      assert.equal('<r xmlns="urn:d"><e xmlns=""/></r>', xml.write(undeclared, { declaration = false }))
    end)

    it("raises on what it cannot write", function()
      assert.has_error(function() xml.write(xml.element("a b")) end, "xml.write: invalid element name 'a b'")
      assert.has_error(function() xml.write(xml.element("a", { ["x=1 y"] = "v" })) end,
        "xml.write: invalid attribute name 'x=1 y'")
      assert.has_error(function() xml.write(xml.element("a", { x = "\1" })) end,
        "xml.write: attribute 'x' of <a>: character U+0001 at byte 1 is not allowed in XML 1.0")
      assert.has_error(function() xml.write(xml.element("a", nil, { "ok", "\0" })) end,
        "xml.write: text in <a>: character U+0000 at byte 1 is not allowed in XML 1.0")
      assert.has_error(function() xml.write(xml.element("a", { x = {} })) end,
        "xml.write: attribute 'x' must be a string, number or boolean, got table")
      assert.has_error(function() xml.write(xml.element("a", nil, { print })) end,
        "xml.write: child 1 of <a> is a function")
      assert.has_error(function() xml.write(xml.element("a"), { pretty = true }) end,
        "xml.write: unknown option 'pretty'")
    end)
  end)
end)
