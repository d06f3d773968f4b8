--- fuzz/targets.lua — what each libFuzzer harness does with one input
--- (fuzz/fuzz.c calls targets[name](data) in one long-lived Lua state).
--- Returning, or raising a clean message, is a rejected or accepted input;
--- an internal-looking error or a failed `invariant` is a finding.
local T = {}

local function invariant(cond, fmt, ...)
  if not cond then error("fuzz invariant: " .. fmt:format(...), 0) end
end

-- Harness limits: an endless loop in a recipe costs 1 M instructions, not
-- 10 M, and a recipe may not hold more than 64 MiB.
local sandbox = require("capil.build.sandbox")
sandbox.BUDGET = 1000000
sandbox.MEMORY = 64 * 1024 * 1024

-- A temp file per process, for the readers that take a path.
local TMP = os.tmpname()
local function temp_file(data)
  local f = assert(io.open(TMP, "wb"))
  f:write(data)
  f:close()
  return TMP
end

local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local loader = require("capil.build.loader")
local BACKENDS = require("capil.backend").names()
table.sort(BACKENDS)

--- (1) recipe text → sandboxed load → config → plan (what `capil validate`
--- does), run from the source tree's root (recipes/, recipes/config/).
function T.recipe(data)
  local r, errs = recipe.load("fuzz/input.lua", { source = data, dir = "recipes" })
  if not r then
    invariant(type(errs) == "table" and #errs > 0, "recipe.load: nil without errors")
    for _, e in ipairs(errs) do invariant(type(e) == "string", "recipe.load: a non-string error") end
    return
  end
  local backend = BACKENDS[#data % #BACKENDS + 1]
  local cfg, cerrs = config.resolve(r, { backend = backend, config_dir = "recipes/config",
    getenv = function() return nil end })
  if not cfg then
    invariant(type(cerrs) == "table" and #cerrs > 0, "config.resolve: nil without errors")
    return
  end
  local p, perrs = loader.plan(cfg, backend, { recipes_dir = "recipes", cache_dir = "/nonexistent/cache" })
  if not p then invariant(type(perrs) == "table" and #perrs > 0, "plan.resolve: nil without errors") end
end

local json = require("capil.sys.json")

--- (2) JSON decode; a decoded value encodes, and that decodes to the same.
function T.json(data)
  local v, err = json.decode(data)
  if v == nil then
    invariant(type(err) == "string", "json.decode: nil without a message")
    return
  end
  local text = json.encode(v, { sort_keys = true })
  local v2, err2 = json.decode(text)
  invariant(v2 ~= nil, "json.decode of json.encode's output failed: %s (%q)", tostring(err2), text:sub(1, 200))
  local text2 = json.encode(v2, { sort_keys = true })
  invariant(text == text2, "encode/decode round trip differs: %q vs %q", text:sub(1, 200), text2:sub(1, 200))
end

local xml = require("capil.sys.xml")

local function walk_xml(el, depth)
  invariant(xml.is_element(el), "a parsed element without a name")
  xml.text(el)
  if el.nsmap then xml.xsi_type(el) end
  for _, c in ipairs(xml.children(el)) do walk_xml(c, depth + 1) end
end

--- (3) XML parse (with and without namespaces), walk, write, parse again.
function T.xml(data)
  local namespaces = #data % 2 == 0
  local root, err = xml.parse(data, { namespaces = namespaces })
  if not root then
    invariant(type(err) == "string", "xml.parse: nil without a message")
    return
  end
  walk_xml(root, 0)
end

local bootcmd = require("capil.build.bootcmd")

--- (4) boot command parse, then every encoder.
function T.bootcmd(data)
  bootcmd.duration(data)
  local events, err = bootcmd.parse(data)
  if not events then
    invariant(type(err) == "string", "bootcmd.parse: nil without a message")
    return
  end
  bootcmd.summary(events)
  bootcmd.to_usb(events)
  bootcmd.to_qmp(events)
  bootcmd.to_rfb(events)
end

local ova = require("capil.format.ova")

--- (5) an OVA (tar) file: the member index and the streaming verify.
function T.ova(data)
  local path = temp_file(data)
  local members, merr = ova.members(path)
  if not members then invariant(type(merr) == "string", "ova.members: nil without a message") end
  local report, verr = ova.verify(path)
  invariant(report ~= nil, "ova.verify failed on a readable file: %s", tostring(verr))
  invariant(type(report.problems) == "table", "ova.verify: no problems list")
  invariant(report.ok == (#report.problems == 0), "ova.verify: ok=%s with %d problems",
    tostring(report.ok), #report.problems)
end

local ovf = require("capil.format.ovf")

--- (6) OVF descriptor parse.
function T.ovf(data)
  local facts, err = ovf.parse(data)
  if not facts then invariant(type(err) == "string", "ovf.parse: nil without a message") end
end

local vmdk = require("capil.format.vmdk")

--- (7) VMDK header (and descriptor) from the bytes, and from a file.
function T.vmdk(data)
  local info, err = vmdk.parse_header(data)
  if not info then
    invariant(type(err) == "string", "vmdk.parse_header: nil without a message")
  else
    vmdk.not_stream_optimized(info)
  end
  local finfo, ferr = vmdk.read_header(temp_file(data))
  if not finfo then invariant(type(ferr) == "string", "vmdk.read_header: nil without a message") end
end

return T
