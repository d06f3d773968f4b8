-- Mistakes in variables caught before anything starts (issue 18): unknown
-- variables with "did you mean", image-builder's ignored variables accepted
-- with a notice, booleans as image-builder's templates read them,
-- ovf.properties as a map, no Lua pattern in a message, errors in a stable
-- order, and `inspect --explain` for unset keys and overridden layers.
local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local schema = require("capil.build.schema")
local backend = require("capil.backend")
local fs = require("capil.sys.fs")
local capil = require("support.capil")

local V = "spec/fixtures/varfiles/"
local IB = V .. "image-builder/"

local function resolve(opts)
  opts = opts or {}
  opts.backend = opts.backend or "qemu"
  opts.getenv = opts.getenv or function() return nil end
  return config.resolve(assert(recipe.load(opts.recipe or "recipes/ubuntu-2004.lua")), opts)
end

-- A temporary var file holding `text`; returns its path.
local function var_file(text)
  local dir = assert(fs.tempdir({ prefix = "capil-uvars" }))
  local path = dir .. "/vars.json"
  assert(fs.write(path, text))
  return path
end

-- The notices of ignored variables stay off the spec's output (the CLI
-- specs see them).
local log = require("capil.sys.log")
local saved_level
setup(function() saved_level = log.level() log.configure({ level = "warn" }) end)
teardown(function() log.configure({ level = saved_level }) end)

local function no_traceback(r)
  assert.not_matches("stack traceback", r.stdout .. r.stderr, 1, true)
  assert.not_matches("%.lua:%d+: in ", r.stdout .. r.stderr)
end

describe("unknown variables #unit", function()
  it("are errors naming the var file and the variable, with a did you mean", function()
    local f = var_file('{ "disk_sise": "30000", "cpus": "2" }')
    local c, errs = resolve({ var_files = { f } })
    assert.is_nil(c)
    assert.same({ f .. ": disk_sise: unknown variable (did you mean 'disk_size'?)" }, errs)
  end)

  it("are errors from --var, by variable name or field path", function()
    local _, errs = resolve({ vars = { "disk_sise=1", "hardware.memroy=4096" } })
    assert.same({
      "--var: disk_sise: unknown variable (did you mean 'disk_size'?)",
      "--var: hardware.memroy: unknown variable (did you mean 'hardware.memory'?)",
    }, errs)
  end)

  it("are errors from PACKER_VAR_FILES, naming the file", function()
    local f = var_file('{ "insecure_conection": "true" }')
    local _, errs = resolve({ packer_var_files = f })
    assert.same({ f .. ": insecure_conection: unknown variable (did you mean 'insecure_connection'?)" }, errs)
  end)

  it("say how to declare a custom role's variable when nothing is close", function()
    local _, errs = resolve({ vars = { "zzqq_custom=1" } })
    assert.same({ "--var: zzqq_custom: unknown variable (a custom role's variable is declared in its recipe's vars)" },
      errs)
  end)

  it("name capil's variable for an image-builder variable it spells differently", function()
    local _, errs = resolve({ vars = { "cpu=4", "cdrom_type=sata" } })
    assert.same({ "--var: cdrom_type: not a capil variable (capil's variable is cd_bus)",
      "--var: cpu: not a capil variable (capil's variable is cpus)" }, errs)
  end)

  it("accept the roles' and backends' own variables and a recipe's declared ones", function()
    local c = assert(resolve({ vars = { "runc_version=1.4.3", "containerd_enable_limit_no_file=true" } }))
    assert.equal("1.4.3", c:vars().runc_version)
    c = assert(resolve({ backend = "esx", vars = { "remote_poll_interval=0.5" } }))
    assert.equal("0.5", c:get("remote_poll_interval"))
    local dir = assert(fs.tempdir({ prefix = "capil-uvars" }))
    assert(fs.write(dir .. "/mine.lua", 'return { extends = "ubuntu-2004", vars = { my_setting = "a" } }'))
    c = assert(resolve({ recipe = dir .. "/mine.lua", vars = { "my_setting=b" } }))
    assert.equal("b", c:vars().my_setting)
    local _, errs = resolve({ recipe = dir .. "/mine.lua", vars = { "my_seting=b" } })
    assert.same({ "--var: my_seting: unknown variable (did you mean 'my_setting'?)" }, errs)
  end)

  it("covers every variable the shipped roles and checks read", function()
    local names = {}
    for _, dir in ipairs({ "recipes/roles", "recipes/checks" }) do
      for _, f in ipairs(fs.list(dir) or {}) do
        if f:match("%.lua$") then
          local text = assert(fs.read(dir .. "/" .. f))
          for n in text:gmatch("[^%w_]var%(\"([%w_]+)\"") do names[n] = dir .. "/" .. f end
          for n in text:gmatch("[^%w_]flag%(\"([%w_]+)\"") do names[n] = dir .. "/" .. f end
          for n in text:gmatch("[^%w_]words%(\"([%w_]+)\"") do names[n] = dir .. "/" .. f end
        end
      end
    end
    assert.truthy(names.runc_version)
    for n, file in pairs(names) do
      assert.truthy(schema.by_var[n] or config.extra_known(n), n .. " (read in " .. file .. ") is unknown to config")
    end
    for n in pairs(config.ROLE_VARS) do
      assert.is_nil(schema.by_var[n], n .. " is a schema variable too")
      assert.is_nil(config.ignored(n), n .. " is ignored too")
    end
    for n in pairs(config.INSTEAD) do assert.is_nil(schema.by_var[n] or config.extra_known(n), n) end
  end)

  it("apply to deploy, test, ssh and repl (config.from_vars)", function()
    local cfg, err = config.from_vars({ backend = "vsphere", vars = { "datacenter=dc1", "datastor=ds1" },
      getenv = function() return nil end })
    assert.is_nil(cfg)
    assert.equal("--var: datastor: unknown variable (did you mean 'datastore'?)", err)
    cfg = assert(config.from_vars({ backend = "vsphere", var_files = { IB .. "user.json", IB .. "goss-args.json" },
      getenv = function() return nil end }))
    assert.equal("dc1", cfg:get("datacenter"))
    assert.is_true(cfg:get("insecure_connection"))
  end)
end)

describe("image-builder's var files #unit", function()
  it("load every shipped recipe on every backend, the ignored variables with a notice", function()
    local files = { IB .. "ansible-args.json", IB .. "goss-args.json", IB .. "user.json" }
    for _, name in ipairs(recipe.list("recipes")) do
      for _, b in ipairs(backend.names()) do
        local c, errs = resolve({ recipe = "recipes/" .. name .. ".lua", backend = b, var_files = files })
        assert(c, name .. " on " .. b .. ": " .. table.concat(errs or {}, "\n"))
        assert.is_nil(c:vars().ansible_common_vars)   -- ignored: roles never see it
        assert.is_nil(c:vars().goss_version)
        assert.equal("ignored", c:explain("goss_version").layer)
      end
    end
  end)

  it("group the notices by file and reason", function()
    assert.same({ "a.json: goss_url, goss_arch are ignored: " .. config.ignored("goss_url"),
      "a.json: build_timestamp is ignored: " .. config.ignored("build_timestamp"),
      "--var: goss_url is ignored: " .. config.ignored("goss_url") },
      config.notices({ { "a.json", "goss_url" }, { "a.json", "build_timestamp" }, { "a.json", "goss_arch" },
        { "--var", "goss_url" } }))
  end)

  it("load with the shipped and fixture var files as before", function()
    for _, f in ipairs({ "k8s-118.json", "k8s-119.json", "vsphere-cluster.json", "vsphere-host.json" }) do
      for _, name in ipairs(recipe.list("recipes")) do
        local c, errs = resolve({ recipe = "recipes/" .. name .. ".lua", backend = "vsphere", var_files = { V .. f } })
        assert(c, name .. " with " .. f .. ": " .. table.concat(errs or {}, "\n"))
      end
    end
    for _, name in ipairs({ "custom-ubuntu", "testos", "tiny", "vsphere" }) do
      assert(resolve({ recipe = "spec/fixtures/recipes/" .. name .. ".lua" }))
    end
  end)

  it("print one notice line per ignored variable on stderr, and validate", function()
    local r = capil.run({ "validate", "ubuntu-2204", "--backend", "vsphere", "--var-file", IB .. "user.json",
      "--var-file", IB .. "ansible-args.json", "--var", "goss_version=0.4.0" })
    assert.equal(0, r.code, r.stderr)
    no_traceback(r)
    assert.matches(IB .. "user.json: build_timestamp is ignored: capil stamps each build itself", r.stderr, 1, true)
    assert.matches(IB .. "user.json: existing_ansible_ssh_args is ignored: an argument of Ansible's", r.stderr, 1,
      true)
    assert.matches("--var: goss_version is ignored: a setting of goss's", r.stderr, 1, true)
    -- one line per file and reason, naming each variable
    assert.matches(IB .. "ansible-args.json: ansible_common_ssh_args, ansible_common_vars, ansible_scp_extra_args "
      .. "are ignored: an argument of Ansible's; capil runs its roles itself over SSH, not through Ansible\n",
      r.stderr, 1, true)
    local _, n = r.stderr:gsub("ansible_common_vars", "")
    assert.equal(1, n)
    assert.not_matches("Ib-S3cret", r.stdout .. r.stderr, 1, true)
  end)
end)

describe("unknown variables through the binary #unit", function()
  it("fail validate, inspect and run with exit 1, the file and field named, no traceback", function()
    local f = var_file('{ "vcenter_sever": "vc.example.com" }')
    for _, cmd in ipairs({ "validate", "inspect" }) do
      local r = capil.run({ cmd, "ubuntu-2004", "--backend", "vsphere", "--var-file", f, "--var", "disk_sise=1" })
      assert.equal(1, r.code, cmd)
      no_traceback(r)
      assert.matches("--var: disk_sise: unknown variable (did you mean 'disk_size'?)", r.stderr, 1, true)
      assert.matches(f .. ": vcenter_sever: unknown variable (did you mean 'vcenter_server'?)", r.stderr, 1, true)
    end
    local tmp = assert(fs.tempdir({ prefix = "capil-uvars" }))
    local r = capil.run({ "run", "ubuntu-2004", "--var", "disk_sise=1", "--output", tmp .. "/out" },
      { env_add = { XDG_CACHE_HOME = tmp .. "/cache" } })
    assert.equal(1, r.code)
    no_traceback(r)
    assert.matches("disk_sise: unknown variable", r.stderr, 1, true)
    assert.is_false(fs.exists(tmp .. "/out"))     -- nothing started
    assert.is_false(fs.exists(tmp .. "/cache"))   -- nothing downloaded
  end)
end)

describe("booleans #unit", function()
  it("accept JSON booleans and exactly the strings image-builder's templates accept", function()
    for _, s in ipairs(schema.BOOL_TRUE) do
      assert.is_true(assert(resolve({ vars = { "headless=" .. s } })):get("headless"), s)
    end
    for _, s in ipairs(schema.BOOL_FALSE) do
      assert.is_false(assert(resolve({ vars = { "headless=" .. s } })):get("headless"), s)
    end
    local f = var_file('{ "headless": false, "keep_vm": true }')
    local c = assert(resolve({ var_files = { f } }))
    assert.is_false(c:get("headless"))
    assert.is_true(c:get("keep_vm"))
  end)

  it("reject any other string with a message listing what is accepted", function()
    for _, s in ipairs({ "yes", "no", "on", "maybe", "ture" }) do
      local _, errs = resolve({ vars = { "headless=" .. s } })
      assert.equal(('--var: headless: expected a boolean: true, false, or one of the strings "true", "True", '
        .. '"TRUE", "t", "T", "1" (true) and "false", "False", "FALSE", "f", "F", "0", "" (false), got %q'):format(s),
        errs[1])
    end
  end)
end)

describe("schema holes #unit", function()
  it("ovf.properties must be a map of names to values", function()
    local c = assert(resolve({ var_files = { var_file('{ "ovf_properties": { "MY_KEY": "v", "N": 2 } }') } }))
    assert.same({ MY_KEY = "v", N = 2 }, c:get("ovf.properties"))
    local f = var_file('{ "ovf_properties": ["a", "b"] }')
    local _, errs = resolve({ var_files = { f } })
    assert.same({ f .. ": ovf_properties: expected a map of NAME = value (a JSON object, a Lua table with string "
      .. "keys), got a list" }, errs)
    f = var_file('{ "ovf_properties": { "K": { "nested": 1 } } }')
    _, errs = resolve({ var_files = { f } })
    assert.same({ f .. ": ovf_properties: K: expected a string, number or boolean, got a table" }, errs)
    _, errs = resolve({ vars = { "ovf_properties=KEY=v" } })
    assert.matches('--var: ovf_properties: expected a map of NAME = value', errs[1], 1, true)
  end)

  it("says what a pattern means, never the Lua pattern", function()
    for _, f in ipairs(schema.fields) do
      if f.pattern then assert.truthy(f.pattern_why, f.path .. " has a pattern and no pattern_why") end
    end
    local _, errs = resolve({ vars = { "kubernetes_semver=1.30", "build_name=-x", "ssh_username=Root" } })
    assert.same({
      '--var: build_name: expected letters, digits, \'.\', \'-\' and \'_\', starting with a letter or digit, got "-x"',
      '--var: kubernetes_semver: expected v<major>.<minor>.<patch>, e.g. v1.30.2, got "1.30"',
      "--var: ssh_username: expected a user name: lowercase letters, digits, '_' and '-', starting with a letter "
        .. 'or \'_\', got "Root"',
    }, errs)
    for _, e in ipairs(errs) do assert.not_matches("%", e, 1, true) end
  end)

  it("lists errors in a stable order: file, line, then field", function()
    local a = var_file('{ "zeta_unknown": 1, "memory": "lots", "cpus": "many", "alpha_unknown": 2 }')
    local opts = { var_files = { a }, vars = { "headless=maybe", "disk_size=big" } }
    local _, first = resolve(opts)
    for _ = 1, 5 do assert.same(first, select(2, resolve(opts))) end
    assert.same({
      "--var: disk_size: expected an integer, got \"big\"",
      "--var: headless: expected a boolean: true, false, or one of the strings \"true\", \"True\", \"TRUE\", \"t\", "
        .. "\"T\", \"1\" (true) and \"false\", \"False\", \"FALSE\", \"f\", \"F\", \"0\", \"\" (false), got \"maybe\"",
      a .. ": alpha_unknown: unknown variable (a custom role's variable is declared in its recipe's vars)",
      a .. ": cpus: expected an integer, got \"many\"",
      a .. ": memory: expected an integer, got \"lots\"",
      a .. ": zeta_unknown: unknown variable (a custom role's variable is declared in its recipe's vars)",
    }, first)
    assert.same({ "a.lua:2: x", "a.lua:10: b", "a.lua:10: c", "b.json: a" },
      config.sort_errors({ "b.json: a", "a.lua:10: c", "a.lua:2: x", "a.lua:10: b" }))
  end)
end)

describe("disk_writer in the plan #unit", function()
  it("inspect shows the writer in the export step (and QEMU's disk format), explains it, refuses others", function()
    local json = require("capil.sys.json")
    local function steps(args)
      local a = { "inspect", "ubuntu-2004" }
      for _, x in ipairs(args) do a[#a + 1] = x end
      local r = capil.run(a)
      assert.equal(0, r.code, r.stderr)
      local by = {}
      for _, st in ipairs(json.decode(r.stdout).steps) do by[st.kind] = st end
      return by
    end
    local s = steps({ "--backend", "qemu" })
    assert.same({ "capil", "raw" }, { s.export_disk.disk_writer, s.create_vm.disk_format })
    s = steps({ "--backend", "qemu", "--var", "disk_writer=qemu-img" })
    assert.same({ "qemu-img", "qcow2" }, { s.export_disk.disk_writer, s.create_vm.disk_format })
    s = steps({ "--backend", "workstation", "--var", "disk_writer=qemu-img" })
    assert.same({ "qemu-img" }, { s.export_disk.disk_writer, s.create_vm.disk_format })
    -- vSphere downloads its disk over NFC: no writer in its plan
    s = steps({ "--backend", "vsphere" })
    assert.same({}, { s.export_disk.disk_writer, s.create_vm.disk_format })
    local r = capil.run({ "inspect", "ubuntu-2004", "--explain", "disk_writer" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("build.disk_writer = capil\n  from schema default\n  variable disk_writer", r.stdout, 1, true)
    r = capil.run({ "inspect", "ubuntu-2004", "--var", "disk_writer=dd" })
    assert.equal(1, r.code)
    no_traceback(r)
    assert.matches("disk_writer", r.stderr, 1, true)
    assert.matches("capil, qemu-img", r.stderr, 1, true)
  end)
end)

describe("inspect --explain #unit", function()
  it("says not set for a known key without a value, and shows the layers a value overrode", function()
    local f = var_file('{ "memory": "4096", "vcenter_server": "" }')
    local r = capil.run({ "inspect", "ubuntu-2004", "--var-file", f, "--var", "memory=8192",
      "--explain", "memory", "--explain", "datacenter", "--explain", "runc_sha256", "--explain", "goss_url" })
    assert.equal(0, r.code, r.stderr)
    no_traceback(r)
    assert.matches("hardware.memory = 8192\n  from --var (var)\n  overrides 4096 from " .. f .. " (var-file)\n"
      .. "  overrides 2048 from schema default\n  variable memory", r.stdout, 1, true)
    assert.matches("vsphere.datacenter: not set\n  variable datacenter", r.stdout, 1, true)
    assert.matches("runc_sha256: not set", r.stdout, 1, true)
    assert.matches("goss_url: not set\n  note: ignored: a setting of goss's", r.stdout, 1, true)
  end)

  it("shows an ignored variable as ignored, never a secret, and a did you mean for an unknown key", function()
    local c = assert(resolve({ backend = "vsphere", var_files = { IB .. "user.json" },
      vars = { "password=Another-S3cret" } }))
    local e = c:explain("password")
    assert.equal("****", e.value)
    assert.equal("****", e.overrides[1].value)
    assert.equal(IB .. "user.json", e.overrides[1].file)
    e = c:explain("build_timestamp")
    assert.equal("ignored", e.layer)
    assert.equal(IB .. "user.json", e.file)
    local _, err = c:explain("disk_sise")
    assert.equal("unknown key 'disk_sise' (did you mean 'disk_size'?)", err)
    local r = capil.run({ "inspect", "ubuntu-2004", "--explain", "memroy" })
    assert.equal(1, r.code)
    no_traceback(r)
    assert.matches("unknown key 'memroy' (did you mean 'memory'?)", r.stderr, 1, true)
  end)
end)
