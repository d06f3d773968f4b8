-- The recipe search path (capil.build.recipepath) as a user meets it: a copy
-- of the binary outside the build tree, run from an empty directory with its
-- own HOME, finds the embedded recipes, their roles, checks, installer files
-- and config; ~/.config/capil/recipes, CAPIL_RECIPES_PATH and --recipes-dir
-- override them in that order; a recipe's own roles/ comes first; and
-- `cmake --install` gives a binary that needs nothing else.
local capil = require("support.capil")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local proc = require("capil.sys.proc")

local SEEDS = { "centos-7", "photon-3", "ubuntu-1804", "ubuntu-2004" }

describe("the recipe search path #unit", function()
  local tmp, exe, env

  -- Runs the copied capil in tmp/work with tmp's HOME, XDG dirs and `extra`.
  local function run(args, extra, opts)
    local e = {}
    for k, v in pairs(env) do e[k] = v end
    for k, v in pairs(extra or {}) do e[k] = v end
    local argv = { (opts and opts.exe) or exe }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return assert(proc.run({ argv = argv, env = e, cwd = tmp .. "/work", timeout = 60 }))
  end

  local function write(path, text)
    assert(fs.mkdir(fs.dirname(path)))
    assert(fs.write(path, text))
    return path
  end

  -- The line of `name` in `capil list`'s output.
  local function list_line(out, name)
    for line in out:gmatch("[^\n]+") do
      if line:match("^  " .. name:gsub("%-", "%%-") .. "%s") then return line end
    end
  end

  local function assert_clean(r)
    assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
    assert.is_nil(r.stderr:find("lua/capil/", 1, true), r.stderr)
  end

  before_each(function()
    tmp = assert(fs.tempdir({ prefix = "capil-spec-rpath" }))
    for _, d in ipairs({ "bin", "work", "home", "config", "cache" }) do assert(fs.mkdir(tmp .. "/" .. d)) end
    exe = tmp .. "/bin/capil"
    assert(fs.copy(capil.exe, exe))
    assert(proc.run({ argv = { "chmod", "755", exe } }))
    env = { PATH = os.getenv("PATH"), HOME = tmp .. "/home", XDG_CONFIG_HOME = tmp .. "/config",
      XDG_CACHE_HOME = tmp .. "/cache", LANG = "C" }
    -- sanitizer builds need their options in the child too
    for _, k in ipairs({ "ASAN_OPTIONS", "UBSAN_OPTIONS" }) do env[k] = os.getenv(k) end
  end)
  after_each(function() fs.remove(tmp, { recursive = true }) end)

  it("lists the seed recipes as embedded, from anywhere", function()
    local r = run({ "list" })
    assert.equal(0, r.code, r.stderr)
    for _, n in ipairs(SEEDS) do
      local line = list_line(r.stdout, n)
      assert.truthy(line, n .. " is not listed:\n" .. r.stdout)
      assert.matches("embedded$", line)
    end
    assert_clean(r)
  end)

  it("resolves a seed recipe's plan from the embedded copy as the golden plan has it", function()
    for _, n in ipairs({ "ubuntu-2004", "ubuntu-2404-efi" }) do -- the second extends twice
      local r = run({ "inspect", n })
      assert.equal(0, r.code, r.stderr)
      local p = assert(json.decode(r.stdout))
      assert.equal(n, p.recipe)
      local root = p.file:match("^(.*/)recipes/" .. n:gsub("%-", "%%-") .. "%.lua$")
      assert.truthy(root and root:find(tmp .. "/cache/capil/embedded-", 1, true), p.file)
      -- the same plan as from the checkout, but for where the files are
      local got = r.stdout:gsub(root:gsub("%p", "%%%0"), ""):gsub((tmp .. "/cache/capil"):gsub("%p", "%%%0"),
        "/var/cache/capil")
      local want = assert(fs.read(("spec/golden/%s.qemu.json"):format(n)))
      assert.equal(want, got)
    end
  end)

  it("the embedded test cloud-init data and the copy on disk (rewritten when it differs)", function()
    local r = run({ "-e", [[
      local rp = require("capil.build.recipepath")
      local dir = rp.cloudinit_dir("cloudinit")
      local st = require("capil.sys.fs").stat(dir .. "/id_ed25519.capi")
      io.write(dir, " ", string.format("%o", st.mode & 511))
    ]] })
    assert.equal(0, r.code, r.stderr)
    local dir, mode = r.stdout:match("^(%S+) (%d+)$")
    assert.truthy(dir and dir:find(tmp .. "/cache/capil/embedded-", 1, true), r.stdout)
    assert.equal("600", mode)
    assert.equal(assert(fs.read("cloudinit/user-data")), fs.read(dir .. "/user-data"))
    -- a changed copy is put back before use
    local copy = fs.dirname(dir) .. "/recipes/ubuntu-2004.lua"
    assert(fs.write(copy, 'return { name = "tampered" }\n'))
    r = run({ "inspect", "ubuntu-2004" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(assert(fs.read("recipes/ubuntu-2004.lua")), fs.read(copy))
  end)

  it("`recipe show` prints the embedded recipe byte for byte; --help lists the command", function()
    local r = run({ "recipe", "show", "ubuntu-2004" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(assert(fs.read("recipes/ubuntu-2004.lua")), r.stdout)
    r = run({ "recipe", "--help" })
    assert.equal(0, r.code)
    assert.matches("show NAME", r.stdout, 1, true)
    r = run({ "--help" })
    assert.matches("\n  recipe%s+show a recipe's source", r.stdout)
  end)

  it("refuses an unknown recipe name with the similar ones, exit 1", function()
    for _, args in ipairs({ { "inspect", "ubuntu-204" }, { "recipe", "show", "ubuntu-204" },
      { "validate", "ubuntu-204" }, { "run", "ubuntu-204" } }) do
      local r = run(args)
      assert.equal(1, r.code, table.concat(args, " ") .. ": " .. r.stderr)
      assert.matches("no recipe 'ubuntu-204' on the recipe path (embedded); did you mean 'ubuntu-2004'",
        r.stderr, 1, true)
      assert_clean(r)
    end
  end)

  it("a recipe in ~/.config/capil/recipes overrides the embedded one and can extend it", function()
    local user = tmp .. "/config/capil/recipes"
    write(user .. "/ubuntu-2004.lua", 'return { extends = "ubuntu-2004", description = "my 20.04",\n  hardware = { disk_size = 40960 } }\n')
    write(user .. "/my-os.lua", 'return { extends = "ubuntu-2204", name = "my-os", description = "mine" }\n')
    local r = run({ "list" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("my 20%.04%s+" .. user:gsub("%p", "%%%0") .. " %(overrides embedded%)$", list_line(r.stdout, "ubuntu-2004"))
    assert.matches("mine%s+" .. user:gsub("%p", "%%%0") .. "$", list_line(r.stdout, "my-os"))
    assert.matches("embedded$", list_line(r.stdout, "ubuntu-2204"))
    r = run({ "inspect", "ubuntu-2004", "--explain", "disk_size", "--explain", "iso.checksum" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("disk_size = 40960\n  from " .. user .. "/ubuntu-2004.lua:2 (recipe)", r.stdout, 1, true)
    assert.matches("/cache/capil/embedded%-[^/]+/recipes/ubuntu%-2004%.lua:%d+ %(recipe%)", r.stdout) -- iso.checksum: the embedded one's
    r = run({ "inspect", "my-os" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("my-os", json.decode(r.stdout).recipe)
    -- `recipe show` shows the overriding file
    r = run({ "recipe", "show", "ubuntu-2004" })
    assert.equal(assert(fs.read(user .. "/ubuntu-2004.lua")), r.stdout)
  end)

  it("CAPIL_RECIPES_PATH wins over ~/.config (its first directory over the later ones), --recipes-dir over both",
    function()
      local dirs = {}
      for _, d in ipairs({ "a", "b", "opt" }) do dirs[d] = tmp .. "/" .. d end
      dirs.user = tmp .. "/config/capil/recipes"
      for d, path in pairs(dirs) do
        write(path .. "/probe.lua", ('return { extends = "ubuntu-2004", name = "probe", description = "from %s" }\n'):format(d))
      end
      local function from(extra, args)
        local a = { "list" }
        for _, x in ipairs(args or {}) do a[#a + 1] = x end
        local r = run(a, extra)
        assert.equal(0, r.code, r.stderr)
        return list_line(r.stdout, "probe"):match("from (%w+)"), r
      end
      assert.equal("user", from())
      assert.equal("a", from({ CAPIL_RECIPES_PATH = dirs.a }))
      assert.equal("a", from({ CAPIL_RECIPES_PATH = dirs.a .. ":" .. dirs.b }))
      assert.equal("b", from({ CAPIL_RECIPES_PATH = dirs.b .. ":" .. dirs.a }))
      assert.equal("opt", from({ CAPIL_RECIPES_PATH = dirs.a }, { "--recipes-dir", dirs.opt }))
      -- a missing directory on CAPIL_RECIPES_PATH is a warning naming it
      local got, r = from({ CAPIL_RECIPES_PATH = tmp .. "/missing:" .. dirs.b })
      assert.equal("b", got)
      assert.matches("CAPIL_RECIPES_PATH: " .. tmp .. "/missing: no such directory", r.stderr, 1, true)
      assert_clean(r)
      -- a missing --recipes-dir is an error
      r = run({ "inspect", "probe", "--recipes-dir", tmp .. "/nope" })
      assert.equal(1, r.code)
      assert.matches("--recipes-dir " .. tmp .. "/nope: no such directory", r.stderr, 1, true)
      assert_clean(r)
      -- inspect and run agree with list
      r = run({ "recipe", "show", "probe" }, { CAPIL_RECIPES_PATH = dirs.b }, nil)
      assert.matches("from b", r.stdout, 1, true)
    end)

  it("a custom recipe's own roles/ comes first; the rest come from the embedded recipes", function()
    local d = tmp .. "/custom"
    write(d .. "/custom.lua", 'return { extends = "ubuntu-2004", name = "custom",\n'
      .. '  roles = { "setup", "foo", "sysprep" } }\n')
    write(d .. "/roles/foo.lua", 'return function(ctx) return { { name = "foo marker", shell = "echo foo" } } end\n')
    write(d .. "/roles/sysprep.lua", 'return function(ctx) return { { name = "my sysprep", shell = "true" } } end\n')
    local function roles_of(stdout)
      local p = assert(json.decode(stdout))
      for _, s in ipairs(p.steps) do
        if s.id == "provision" then
          local names = {}
          for _, st in ipairs(s.steps) do names[st.role] = names[st.role] or st.name end
          return names, p
        end
      end
    end
    for _, how in ipairs({ { args = { "inspect", "custom", "--recipes-dir", d } },
      { args = { "inspect", "custom" }, env = { CAPIL_RECIPES_PATH = d } },
      { args = { "inspect", d .. "/custom.lua" } } }) do
      local r = run(how.args, how.env)
      assert.equal(0, r.code, r.stderr)
      local names = roles_of(r.stdout)
      assert.equal("foo marker", names.foo)
      assert.equal("my sysprep", names.sysprep)
      assert.truthy(names.setup) -- the embedded setup role
    end
    -- a role nowhere on the path is named with the directories looked in
    write(d .. "/broken.lua", 'return { extends = "ubuntu-2004", name = "broken", roles = { "nosuchrole" } }\n')
    local r = run({ "inspect", "broken", "--recipes-dir", d })
    assert.equal(1, r.code)
    assert.matches("role 'nosuchrole' not found in " .. d .. "/roles", r.stderr, 1, true)
    assert_clean(r)
  end)

  it("runs from the checkout as before: the source tree's recipes, named recipes/", function()
    local r = capil.run({ "list" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("%s+recipes$", list_line(r.stdout, "ubuntu-2004"))
    r = capil.run({ "inspect", "ubuntu-2004" })
    assert.equal("recipes/ubuntu-2004.lua", json.decode(r.stdout).file)
  end)

  it("cmake --install puts a binary that lists the recipes from anywhere", function()
    local build = fs.dirname(capil.exe)
    local prefix = tmp .. "/prefix"
    local r = assert(proc.run({ argv = { "cmake", "--install", build, "--prefix", prefix }, timeout = 120 }))
    assert.equal(0, r.code, r.stderr)
    r = run({ "list" }, nil, { exe = prefix .. "/bin/capil" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("embedded$", list_line(r.stdout, "ubuntu-2004"))
    assert.truthy(fs.exists(prefix .. "/share/doc/capil/README.md"))
    -- the man page and the completions of the three shells
    for _, f in ipairs({ "man/man1/capil.1", "bash-completion/completions/capil", "zsh/site-functions/_capil",
      "fish/vendor_completions.d/capil.fish" }) do
      assert.truthy(fs.exists(prefix .. "/share/" .. f), f)
    end
  end)
end)
