-- The backend contract (capil.backend): every registered backend conforms
-- to the interface, and nothing outside backends/ and the registry decides
-- by a backend's name: the rest of capil asks the registry (get, names,
-- with) and the backend's traits.
local backend = require("capil.backend")
local fs = require("capil.sys.fs")

-- The Lua files under `dir`, recursively.
local function lua_files(dir, out)
  out = out or {}
  for _, name in ipairs(assert(fs.list(dir))) do
    local path = dir .. "/" .. name
    if fs.stat(path).type == "directory" then
      lua_files(path, out)
    elseif name:match("%.lua$") then
      out[#out + 1] = path
    end
  end
  table.sort(out)
  return out
end

describe("the backend contract #unit", function()
  it("registers backends that each conform to the interface", function()
    assert.is_true(#backend.names() > 0)
    for _, name in ipairs(backend.names()) do
      local b = assert(backend.get(name))
      assert.same({}, backend.check(b), name .. " does not conform to capil.backend")
      assert.equal(name, b.name)
    end
  end)

  it("refuses an unknown name, listing the known ones", function()
    local b, err, code = backend.get("nope")
    assert.is_nil(b)
    assert.equal("EUSAGE", code)
    assert.matches("unknown backend 'nope' (one of: " .. table.concat(backend.names(), ", ") .. ")", err, 1, true)
  end)

  it("reports what a non-conforming module lacks", function()
    local problems = backend.check({ name = "x", description = "x", traits = { encoder = "morse", export = "nfc",
      guest_id = "vsphere" }, settings = {}, create = function() end, test = {}, VM = {} })
    local text = table.concat(problems, "\n")
    assert.matches("traits.encoder morse", text, 1, true)
    assert.matches("VM:destroy is missing", text, 1, true)
    assert.matches("test.prepare is missing", text, 1, true)
  end)

  it("is the only place outside backends/ that compares backend names", function()
    local found = {}
    for _, file in ipairs(lua_files("lua")) do
      if file ~= "lua/capil/backend.lua" then
        local n = 0
        for line in (assert(fs.read(file)) .. "\n"):gmatch("(.-)\n") do
          n = n + 1
          -- traits.guest_id's values (which guest OS id: "vsphere" or
          -- "workstation") are no backend names
          local code = line:gsub("%-%-.*$", ""):gsub("guest_id%s*[=~]=%s*[\"']%w+[\"']", "")
          for _, name in ipairs(backend.names()) do
            local q = "[\"']" .. name .. "[\"']"
            if code:find("[=~]=%s*" .. q) or code:find(q .. "%s*[=~]=") then
              found[#found + 1] = ("%s:%d: %s"):format(file, n, (line:gsub("^%s+", "")))
              break
            end
          end
        end
      end
    end
    assert.same({}, found, "backend names compared outside backends/ (use capil.backend's traits)")
  end)
end)
