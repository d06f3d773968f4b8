--- capil.replhelp — `help` in `capil repl`, written from the modules' own
--- doc comments: a module's header lines, the `---` block above each
--- `function M.name(args)`, the comment above a C function (kept by the
--- build, capil.core.runtime.cdoc), and the vim25 methods' parameters from
--- the WSDL data the client carries (capil.vsphere.vim25_types).
local runtime = require("capil.core.runtime")

local M = {}

-- ---------------------------------------------------------------------
-- Doc comments
-- ---------------------------------------------------------------------

local sources = {}

-- The lines of a Lua chunk ("@/src/lua/capil/sys/fs.lua" from the source
-- tree, "@lua/capil/sys/fs.lua" embedded, comments and all), or nil.
local function source_lines(chunkname)
  if sources[chunkname] ~= nil then return sources[chunkname] or nil end
  local path = chunkname:match("^@(.*)$")
  local text
  if path and path:sub(1, 1) == "/" then
    local f = io.open(path, "rb")
    if f then
      text = f:read("a")
      f:close()
    end
  elseif path then
    text = runtime.embedded_file(path)
  end
  local lines = false
  if text then
    lines = {}
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  end
  sources[chunkname] = lines
  return lines or nil
end

-- The `---` block ending just above line n, without the dashes.
local function doc_above(lines, n)
  local first = n
  while first > 1 and lines[first - 1]:match("^%s*%-%-%-") do first = first - 1 end
  local doc = {}
  for i = first, n - 1 do doc[#doc + 1] = (lines[i]:gsub("^%s*%-%-%-%s?", "")) end
  return doc
end

--- The first sentence of a doc block (its prose, without ---@ lines), on
--- one line of at most 100 characters; a C function's "-> result" line alone.
---@param doc string[]
---@return string
function M.summary(doc)
  if doc[1] and doc[1]:match("^%->") then return doc[1] end
  local prose = {}
  for _, l in ipairs(doc) do
    if l:match("^@") or l:match("^%s*$") then break end
    prose[#prose + 1] = l
  end
  local s = table.concat(prose, " ")
  local stop = s:match("()%.%s+[%u`]")
  local first = stop and s:sub(1, stop) or s
  if #first > 100 then first = first:sub(1, 97) .. "..." end
  return first
end
local summary = M.summary

local cdoc

-- The doc comment of C function `name` ("fs.read"), as lines, or nil.
local function c_doc(name)
  cdoc = cdoc or runtime.cdoc()
  local d = cdoc[name]
  if not d then return nil end
  local lines = {}
  for l in (d .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  return lines
end

--- What the doc comments say of function `f`: `params` ("(path, opts)"),
--- `doc` (lines), `where` ("lua/capil/sys/fs.lua:12"). `cname` names a C
--- function in the C doc comments ("fs.read").
---@param f function
---@param cname? string
---@return {params: string, doc: string[], where?: string, c?: boolean}
function M.function_doc(f, cname)
  local info = debug.getinfo(f, "S")
  if info.what == "C" then
    local doc = cname and c_doc(cname)
    if doc then
      local params = doc[1]:match("^[%w_.:]+(%b())") or "(...)"
      doc[1] = doc[1]:gsub("^[%w_.:]+%b()%s*", "")
      if doc[1] == "" then table.remove(doc, 1) end
      return { params = params, doc = doc, c = true }
    end
    return { params = "(...)", doc = { "(a C function without a doc comment)" }, c = true }
  end
  local lines = source_lines(info.source)
  local where = info.short_src:gsub("^.*/(lua/capil/)", "%1"):gsub("^.*/(backends/)", "%1")
    .. ":" .. info.linedefined
  if not lines or not lines[info.linedefined] then
    return { params = "(...)", doc = {}, where = where }
  end
  local line = lines[info.linedefined]
  local params = line:match("function[^(]*(%b())") or "(...)"
  return { params = params, doc = doc_above(lines, info.linedefined), where = where }
end

-- The lines of capil module `name`'s file (embedded, or in the source tree
-- the binary runs from), or nil for a module that is no capil Lua file.
local function module_lines(name)
  local rel = name:match("^capil%.backends%.(.+)$")
  rel = rel and ("backends/" .. rel:gsub("%.", "/")) or (name == "capil" and "lua/capil/init")
    or (name:match("^capil%.") and not name:match("^capil%.core%.") and ("lua/" .. name:gsub("%.", "/")))
  if not rel then return nil end
  local root = runtime.library()
  for _, path in ipairs({ rel .. ".lua", rel .. "/init.lua" }) do
    local lines = source_lines(root == "embedded" and ("@" .. path) or ("@" .. root .. "/" .. path))
    if lines then return lines end
  end
end

--- The header of module `name` ("capil.sys.fs"): its leading `---` lines,
--- without the module's name; nil when the module is not a capil Lua file
--- or has no header.
---@param name string
---@return string[]|nil
function M.module_doc(name)
  local lines = module_lines(name)
  if not lines then return nil end
  local n = 1
  while lines[n] and lines[n]:match("^%-%-%-") do n = n + 1 end
  local doc = doc_above(lines, n)
  if #doc == 0 then return nil end
  doc[1] = doc[1]:gsub("^[%w_.]+%s*—%s*", "")
  return doc
end

-- The module name of table t, or nil.
local function module_name(t)
  for name, v in pairs(package.loaded) do
    if v == t and type(name) == "string" then return name end
  end
end

-- The short name of a C module's function: "capil.core.fs" -> "fs";
-- capil.core.runtime's comments call it "host".
local function c_prefix(modname)
  local short = modname and modname:match("^capil%.core%.(.+)$")
  if short == "runtime" then return "host" end
  return short
end

-- ---------------------------------------------------------------------
-- vim25
-- ---------------------------------------------------------------------

local function vim25() return require("capil.vsphere.vim25") end

local function is_client(x)
  local mt = getmetatable(x)
  return type(mt) == "table" and rawget(mt, "__name") == "capil.vsphere.vim25.Client"
end

local function field_text(f)
  return ("%s: %s%s"):format(f.name, f.type, f.array and "[]" or "")
end

-- The lines of help for vim25 method `name`, or nil when no such method.
local function method_help(name)
  local info = vim25().method_params(name)
  if info == nil then return nil end
  local out = {}
  if info == false then
    out[1] = ("vim25 method %s: capil carries no parameter data for it; vc:%s(this, {args}) sends"
      .. " the args as given (fields in WSDL order)"):format(name, name)
    return out
  end
  local ret = info.ret and (info.ret .. (info.ret_array and "[]" or "")) or "nothing"
  out[1] = ("vim25 method %s -> %s"):format(name, ret)
  local names = {}
  for _, f in ipairs(info.params) do names[#names + 1] = f.name .. " = ..." end
  out[2] = ("  vc:%s(this, {%s})"):format(name, table.concat(names, ", "))
  if #info.params == 0 then
    out[3] = "  no parameters after _this"
  else
    out[3] = "  parameters (in WSDL order):"
    local w = 0
    for _, f in ipairs(info.params) do w = math.max(w, #f.name) end
    for _, f in ipairs(info.params) do
      out[#out + 1] = ("    %-" .. w .. "s  %s%s"):format(f.name, f.type, f.array and "[]" or "")
    end
  end
  return out
end

-- The lines of help for vim25 data type `name`, or nil.
local function type_help(name)
  local info = vim25().type_fields(name)
  if not info then return nil end
  local out = { ("vim25 type %s%s"):format(name, info.base and (" (extends " .. info.base .. ")") or "") }
  for _, f in ipairs(info.fields) do out[#out + 1] = "  " .. field_text(f) end
  if #info.fields == 0 then out[#out + 1] = "  no fields capil knows of" end
  return out
end

-- ---------------------------------------------------------------------
-- Rendering
-- ---------------------------------------------------------------------

local function sorted_keys(t, pred)
  local keys = {}
  for k, v in pairs(t) do
    if type(k) == "string" and not k:match("^_") and pred(v, k) then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

-- One line per function of table t: "prefix.name(params)  summary".
local function function_lines(t, prefix, sep, modname)
  local rows, w = {}, 0
  for _, k in ipairs(sorted_keys(t, function(v) return type(v) == "function" end)) do
    local d = M.function_doc(t[k], c_prefix(modname) and (c_prefix(modname) .. "." .. k)
      or (modname and M.c_name(modname, k)))
    local sig = prefix .. sep .. k .. d.params
    rows[#rows + 1] = { sig, summary(d.doc) }
    w = math.max(w, #sig)
  end
  local out = {}
  w = math.min(w, 44)
  for _, r in ipairs(rows) do
    out[#out + 1] = r[2] ~= "" and ("  %-" .. w .. "s  %s"):format(r[1], r[2]) or ("  " .. r[1])
  end
  return out
end

--- The C doc name of a function a Lua module copied from its C module
--- (capil.sys.fs's read is capil.core.fs's: "fs.read"), or nil.
---@param modname string
---@param key string
---@return string|nil
function M.c_name(modname, key)
  local short = modname:match("^capil%.sys%.(.+)$")
  local core = short and package.loaded["capil.core." .. short]
  if type(core) == "table" and core[key] ~= nil and core[key] == package.loaded[modname][key] then
    return short .. "." .. key
  end
end

--- The help of a module (table `t` loaded as `modname`), shown as `shown`.
---@return string[]
function M.module_help(t, modname, shown)
  local out = {}
  local head = M.module_doc(modname) or {}
  out[1] = ("%s — %s"):format(shown, modname)
  for _, l in ipairs(head) do out[#out + 1] = "  " .. l end
  out[#out + 1] = ""
  local fns = function_lines(t, shown, ".", modname)
  if #fns == 0 then out[#out + 1] = "  (no functions)" end
  for _, l in ipairs(fns) do out[#out + 1] = l end
  local subs = sorted_keys(t, function(v) return type(v) == "table" and module_name(v) ~= nil end)
  for _, k in ipairs(subs) do
    local doc = M.module_doc(module_name(t[k])) or {}
    out[#out + 1] = ("  %s.%s  (module %s) %s"):format(shown, k, module_name(t[k]), summary(doc))
  end
  out[#out + 1] = ""
  out[#out + 1] = ("help(%s.name) shows one function"):format(shown)
  return out
end

--- The help of one function, shown as `shown` ("fs.read").
---@return string[]
function M.function_help(f, shown, cname)
  local d = M.function_doc(f, cname)
  local out = { shown .. d.params }
  for _, l in ipairs(d.doc) do out[#out + 1] = "  " .. l end
  if #d.doc == 0 then out[#out + 1] = "  (no doc comment)" end
  if d.where then out[#out + 1] = "  defined at " .. d.where end
  return out
end

--- The help of a vim25 session: its own methods, then the vim25 methods
--- capil has parameter data for, and how many more it can call.
---@return string[]
function M.client_help(shown)
  local out = { shown .. " — a vim25 session (capil.vsphere.vim25 client)", "" }
  for _, l in ipairs(function_lines(vim25().Client, shown, ":", nil)) do out[#out + 1] = l end
  out[#out + 1] = ""
  local all, with = vim25().methods(), {}
  for _, m in ipairs(all) do
    local info = vim25().method_params(m)
    if info then
      local ps = {}
      for _, f in ipairs(info.params) do ps[#ps + 1] = field_text(f) end
      with[#with + 1] = ("  %s:%s(this, {%s})"):format(shown, m, table.concat(ps, ", "))
    end
  end
  out[#out + 1] = ("vim25 methods with parameter data (%d of %d; any other is sent as given):"):format(#with, #all)
  for _, l in ipairs(with) do out[#out + 1] = l end
  out[#out + 1] = ""
  out[#out + 1] = ('help(%s, "CreateVM_Task") or help("CreateVM_Task") shows one method; '
    .. 'help("VirtualMachineConfigSpec") a data type; Tab after %s: completes the names'):format(shown, shown)
  return out
end

-- ---------------------------------------------------------------------
-- help(...)
-- ---------------------------------------------------------------------

-- Where obj is reachable from the environment: the name to show
-- ("fs", "fs.read", "vsphere.deploy.import", "vc:find"), the table holding
-- it and its key there. Looks two tables deep from the bound names.
local function find_path(env, lazy, obj)
  local roots = {}
  for k, v in pairs(env) do if type(k) == "string" then roots[#roots + 1] = { k, v } end end
  for k, modname in pairs(lazy) do
    local m = package.loaded[modname]
    if m ~= nil and rawget(env, k) == nil then roots[#roots + 1] = { k, m } end
  end
  table.sort(roots, function(a, b) return a[1] < b[1] end)
  for _, r in ipairs(roots) do
    if r[2] == obj then return r[1], nil, nil end
  end
  for depth = 1, 2 do
    local next_roots = {}
    for _, r in ipairs(roots) do
      if type(r[2]) == "table" then
        if is_client(r[2]) and type(obj) == "function" then
          for k, v in pairs(vim25().Client) do
            if v == obj and type(k) == "string" then return r[1] .. ":" .. k, vim25().Client, k end
          end
        elseif not is_client(r[2]) then
          for _, k in ipairs(sorted_keys(r[2], function() return true end)) do
            local v = rawget(r[2], k)
            if v == obj then return r[1] .. "." .. k, r[2], k end
            if type(v) == "table" and depth == 1 then next_roots[#next_roots + 1] = { r[1] .. "." .. k, v } end
          end
        end
      end
    end
    roots = next_roots
  end
end

-- The lines for a string: a bound name or path ("fs.read"), a vim25
-- method, a vim25 type; nil when it is none of those.
local function string_help(env, lazy, s)
  local v = env
  for part in s:gmatch("[^%.]+") do
    if type(v) ~= "table" then v = nil break end
    local ok, x = pcall(function() return v[part] end)
    v = ok and x or nil
  end
  if v ~= nil and s:match("^[%a_][%w_.]*$") then return M.lines(env, lazy, v) end
  return method_help(s) or type_help(s)
end

--- The help lines for `obj` (and `name`, a vim25 method of a session or a
--- field of a table) in environment `env`, whose lazily loaded modules
--- `lazy` maps by short name. Unknown objects get a line saying so.
---@param env table
---@param lazy table<string, string>
---@param obj any
---@param name? string
---@return string[]
function M.lines(env, lazy, obj, name)
  if name ~= nil then
    if is_client(obj) then
      return method_help(tostring(name)) or { ("help: %s is no vim25 method"):format(tostring(name)) }
    end
    if type(obj) == "table" and obj[name] ~= nil then return M.lines(env, lazy, obj[name]) end
    -- help(require("capil.x")): require's second result is where it was found
    if not (type(obj) == "table" and module_name(obj)) then
      return { ("help: %s has no field %s"):format(type(obj), require("capil.util.pretty").format(name)) }
    end
  end
  if type(obj) == "string" then
    local out = string_help(env, lazy, obj)
    if out then return out end
    local names = vim25().methods()
    for k in pairs(lazy) do names[#names + 1] = k end
    for k in pairs(env) do if type(k) == "string" then names[#names + 1] = k end end
    local near = require("capil.util.text").similar(obj, names, 3)
    return { ("help: nothing is named '%s' here (a bound name, a vim25 method or a vim25 type)%s")
      :format(obj, near and #near > 0 and ("; did you mean " .. table.concat(near, ", ") .. "?") or "") }
  end
  local shown, owner, key = find_path(env, lazy, obj)
  if is_client(obj) then return M.client_help(shown or "vc") end
  if type(obj) == "function" then
    local modname = owner and module_name(owner)
    local cname = modname and key and (c_prefix(modname) and (c_prefix(modname) .. "." .. key)
      or M.c_name(modname, key))
    if not shown then
      local d = M.function_doc(obj)
      shown = d.where and ("function at " .. d.where) or "function"
    end
    return M.function_help(obj, shown, cname)
  end
  if type(obj) == "table" then
    local modname = module_name(obj)
    if modname then return M.module_help(obj, modname, shown or modname) end
    -- a table of modules (vsphere): one line each
    local mods = sorted_keys(obj, function(v) return type(v) == "table" and module_name(v) ~= nil end)
    if #mods > 0 then
      local out = { (shown or "table") .. " — modules:" }
      for _, k in ipairs(mods) do
        out[#out + 1] = ("  %s.%s  %s"):format(shown or "", k, summary(M.module_doc(module_name(obj[k])) or {}))
      end
      return out
    end
    return { ("help: %s is a table of data, not a module: type its name to print it")
      :format(shown or "this") }
  end
  if obj == nil then return { "help: the value is nil: nothing is bound by that name (help() lists what is)" } end
  return { ("help: no documentation for a %s (%s): help() lists what is bound")
    :format(type(obj), require("capil.util.pretty").format(obj)) }
end

return M
