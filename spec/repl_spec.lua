local capil = require("support.capil")

describe("repl #unit", function()
  it("evaluates piped input: expressions, statements, multi-line, errors", function()
    local r = capil.run({ "repl" }, { stdin = table.concat({
      "1 + 1",
      "t = { b = { 1, 2 }, a = 'x' }",
      "t",
      "for i = 1, 2 do",
      "  print('i=' .. i)",
      "end",
      "error('oops')",
      "proc.run ~= nil and fs.cwd() ~= nil",
      "x = = 1",
    }, "\n") .. "\n" })
    -- every line ran, and the errors make the exit status 1
    assert.equal(1, r.code, r.stderr)
    local expected = table.concat({
      "2",
      "{",
      "  a = \"x\",",
      "  b = { 1, 2 },",
      "}",
      "i=1",
      "i=2",
    }, "\n")
    assert.equal(expected, r.stdout:sub(1, #expected))
    assert.matches("\nrepl:1: oops\ntrue\n", r.stdout, 1, true) -- no traceback without -v
    assert.not_matches("traceback", r.stdout, 1, true)
    assert.matches("unexpected symbol", r.stdout, 1, true)
  end)

  it("exits 0 after piped input without errors, 1 after a runtime or a syntax error, or an unfinished chunk", function()
    assert.equal(0, capil.run({ "repl" }, { stdin = "1 + 1\nx = 2\n" }).code)
    local r = capil.run({ "repl" }, { stdin = "error('late')\n'after'\n" })
    assert.equal(1, r.code)
    assert.equal('repl:1: late\n"after"\n', r.stdout)
    r = capil.run({ "repl" }, { stdin = "x = = 1\n'after'\n" })
    assert.equal(1, r.code)
    assert.matches('\n"after"\n$', r.stdout)
    r = capil.run({ "repl" }, { stdin = "for i = 1, 2 do\n" })
    assert.equal(1, r.code)
    assert.matches("unfinished", r.stdout, 1, true)
  end)

  it("shows the traceback of an error with -v only", function()
    local src = "function f() error('deep') end\nx = f()\n"
    local plain = capil.run({ "repl" }, { stdin = src })
    assert.equal("repl:1: deep\n", plain.stdout)
    for _, args in ipairs({ { "-v", "repl" }, { "repl", "--verbose" } }) do
      local r = capil.run(args, { stdin = src })
      assert.equal(1, r.code)
      assert.matches("^repl:1: deep\nstack traceback:\n", r.stdout)
      assert.matches("repl:1: in global 'f'", r.stdout, 1, true)
    end
  end)

  it("keeps top-level locals between lines; locals in blocks stay local", function()
    local r = capil.run({ "repl" }, { stdin = table.concat({
      "local x = 1",
      "x",
      "local a, b <const> = 2, 3",
      "a + b",
      "local function fact(n) if n <= 1 then return 1 end local m = n return m * fact(n - 1) end",
      "fact(5)",
      "local u",
      "u == nil",
      "do local hidden = 1 end",
      "hidden == nil",
      "for i = 1, 2 do",
      "  local inner = i",
      "end",
      "inner == nil and x == 1",
      "local s = 'local y = 9' -- local z = 1",
      "s, y, z",
      "local t = {",
      "  k = 'multi',",
      "}",
      "t.k",
    }, "\n") .. "\n" })
    assert.equal(0, r.code, r.stdout)
    assert.equal(table.concat({ "1", "5", "120", "true", "true", "true", '"local y = 9"\tnil\tnil', '"multi"' }, "\n")
      .. "\n", r.stdout)
  end)

  it("help lists what is bound, a module's functions, one function, from the doc comments", function()
    local r = capil.run({ "repl" }, { stdin = table.concat({
      "help",
      "help(fs)",
      "help(fs.tempdir)",
      "help(fs.read)",
      "help('json.decode')",
    }, "\n") .. "\n" })
    assert.equal(0, r.code, r.stdout)
    local out = r.stdout
    -- help: the modules with their header's first sentence, connect, help
    assert.matches("\n  fs       file operations with the error triple", out, 1, true)
    assert.matches("\n  proc     child processes from argv arrays", out, 1, true)
    assert.matches("\n  vc       not connected: connect() opens a session", out, 1, true)
    assert.matches("\n  connect([vars])", out, 1, true)
    -- help(fs): the header, then one line per function with its signature
    assert.matches("\nfs — capil.sys.fs\n  file operations with the error triple", out, 1, true)
    assert.matches("\n  fs%.tempdir%(opts%) +A new temp directory, removed %(recursively%) at cleanup unless `keep`%.\n", out)
    assert.matches("\n  fs%.read%(path %[, {max=bytes}%]%) +%-> data | nil, msg, code\n", out)
    -- help(fs.tempdir): the whole comment block, and where it is
    assert.matches("\nfs.tempdir(opts)\n  A new temp directory, removed (recursively) at cleanup unless `keep`.\n"
      .. "  @param opts? {parent?: string, prefix?: string, keep?: boolean}\n", out, 1, true)
    assert.matches("  defined at lua/capil/sys/fs.lua:%d+\n", out)
    -- help(fs.read): a C function, from its comment in engine/fs.c
    assert.matches("\nfs.read(path [, {max=bytes}])\n  -> data | nil, msg, code\n  With max, the file must be a regular file",
      out, 1, true)
    assert.matches("\njson.decode(", out, 1, true)
  end)

  it("help reads the comments of the embedded copy too", function()
    local r = capil.run({ "repl" }, { stdin = "help(fs.tempdir)\nhelp(pretty)\n", env_add = { CAPIL_EMBEDDED = "1" } })
    assert.equal(0, r.code, r.stdout)
    assert.matches("\nfs.tempdir(opts)\n  A new temp directory, removed (recursively) at cleanup unless `keep`.\n",
      "\n" .. r.stdout, 1, true)
    assert.matches("defined at lua/capil/sys/fs.lua:", r.stdout, 1, true)
    assert.matches("\n  pretty%.format%(v, opts%) +Renders `v`", r.stdout)
  end)

  it("help shows a vim25 method's parameters and a type's fields from the WSDL data; unknown things say so", function()
    local r = capil.run({ "repl" }, { stdin = table.concat({
      "help('CreateVM_Task')",
      "help('VirtualMachineRelocateSpec')",
      "help('PowerOnVM_Task')",
      "help('CreateVM_Tsk')",
      "help(42)",
      "help(nosuchname)",
      "help({ 1, 2 })",
    }, "\n") .. "\n" })
    assert.equal(0, r.code, r.stdout)
    local out = r.stdout
    assert.matches("vim25 method CreateVM_Task -> ManagedObjectReference\n"
      .. "  vc:CreateVM_Task(this, {config = ..., pool = ..., host = ...})\n"
      .. "  parameters (in WSDL order):\n"
      .. "    config  VirtualMachineConfigSpec\n"
      .. "    pool    ManagedObjectReference\n"
      .. "    host    ManagedObjectReference\n", out, 1, true)
    assert.matches("vim25 type VirtualMachineRelocateSpec\n  service: ServiceLocator\n", out, 1, true)
    assert.matches("  disk: VirtualMachineRelocateSpecDiskLocator[]\n", out, 1, true)
    assert.matches("help: nothing is named 'CreateVM_Tsk' here (a bound name, a vim25 method or a vim25 type); "
      .. "did you mean CreateVM_Task", out, 1, true)
    assert.matches("help: no documentation for a number (42)", out, 1, true)
    assert.matches("help: the value is nil: nothing is bound by that name", out, 1, true)
    assert.matches("help: this is a table of data, not a module", out, 1, true)
  end)

  it("never shows a registered secret in results or errors", function()
    local r = capil.run({ "repl" }, { stdin = table.concat({
      "log.secret('hunter2-pass')",
      "'the pass is hunter2-pass'",
      "error('login failed with hunter2-pass')",
    }, "\n") .. "\n" })
    assert.equal(1, r.code) -- the error
    assert.not_matches("hunter2-pass", r.stdout, 1, true)
    assert.matches("the pass is ****", r.stdout, 1, true)
    assert.matches("login failed with ****", r.stdout, 1, true)
  end)

  it("pretty-prints nested tables with cycles", function()
    local pretty = require("capil.util.pretty")
    local t = { name = "vm", disks = { { size = 20 } } }
    t.self = t
    assert.equal('{\n  disks = {\n    {\n      size = 20,\n    },\n  },\n  name = "vm",\n  self = <cycle>,\n}',
      pretty.format(t))
  end)
end)

describe("repl interruption #unit", function()
  local proc = require("capil.sys.proc")
  local runtime = require("capil.core.runtime")

  it("Ctrl-C stops the running code and the REPL goes on", function()
    local p = assert(proc.spawn({ argv = { capil.exe, "repl" }, stdin = "pipe", stdout = "pipe", stderr = "pipe" }))
    assert(p:write("print('looping') while true do end\n"))
    local out = ""
    local deadline = runtime.now() + 20
    while not out:find("looping\n", 1, true) and runtime.now() < deadline do
      local stream, chunk = p:read({ timeout = 5 })
      if stream == "stdout" then out = out .. chunk end
    end
    assert.matches("looping", out, 1, true)
    assert(p:kill("INT"))
    assert(p:write("40 + 2\n"))
    p:close_stdin()
    while true do
      local stream, chunk = p:read({ timeout = 10 })
      if not stream then break end
      if stream == "stdout" then out = out .. chunk end
    end
    local st = assert(p:wait({ timeout = 10 }))
    p:close()
    assert.equal(1, st.code) -- the interrupted line failed
    assert.matches("interrupted\n42\n", out, 1, true)
  end)
end)

-- Runs `capil args...` in a pseudo-terminal (spec/support/pty_run.py) and
-- plays `steps` ({expect = text} or {send = text}); returns {code, stdout}
-- with what the terminal showed (CRLF line ends).
local function in_pty(args, steps, env)
  local json = require("capil.sys.json")
  local argv = { "python3", "spec/support/pty_run.py", "30", capil.exe }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(require("capil.sys.proc").run({ argv = argv, stdin = json.encode(steps),
    env_add = env or { NO_COLOR = "1" }, timeout = 60 }))
end

describe("repl on a terminal #unit", function()
  it("Tab puts no space after a table's name (a '.' or ':' goes on), a space after other values", function()
    local r = in_pty({ "repl", "--no-history" }, {
      { expect = "capil> " }, { send = "t1 = { alpha = { beta = 42 }, fun = print }\n" },
      -- the completed word inside a string shows exactly what Tab inserted
      { expect = "capil> " }, { send = '"[t1.alp\t]"\n' },
      { expect = "capil> " }, { send = '"[t1.fu\t]"\n' },
      -- a module bound by short name is a table: prett<Tab>.format<...>
      { expect = "capil> " }, { send = '"[prett\t]"\n' },
      { expect = "capil> " }, { send = "\4" },
    })
    assert.equal(0, r.code, r.stdout)
    assert.matches('\n"[t1.alpha]"\r\n', r.stdout, 1, true)
    assert.matches('\n"[t1.fun ]"\r\n', r.stdout, 1, true)
    assert.matches('\n"[pretty]"\r\n', r.stdout, 1, true)
  end)

  it("shows the banner and the prompt when the vSphere server cannot be reached, and connect() retries", function()
    local port = require("support.peer").free_port() -- nothing listens there
    local r = in_pty({ "repl", "--no-history", "--backend", "vsphere", "--var",
      "vcenter_server=http://127.0.0.1:" .. port .. "/sdk", "--var", "username=u", "--var", "password=pty-secret-pw" }, {
      { expect = "capil> " }, { send = "1 + 1\n" },
      { expect = "capil> " }, { send = "connect()\n" },
      { expect = "capil> " }, { send = "\4" },
    })
    assert.equal(0, r.code, r.stdout)
    assert.matches("127.0.0.1:" .. port, r.stdout, 1, true)
    assert.matches("Ctrl-D to leave", r.stdout, 1, true)
    assert.matches("Couldn't connect to server; not connected: connect() retries", r.stdout, 1, true)
    assert.matches("\r\n2\r\n", r.stdout, 1, true)
    assert.matches("\r\nconnect: vim25.connect: http://127.0.0.1:" .. port, r.stdout, 1, true)
    assert.is_nil(r.stdout:find("pty-secret-pw", 1, true))
  end)
end)

describe("repl vSphere sessions #vsphere", function()
  local vcsim = require("support.vcsim")
  local sim
  local PASSWORD = "repl-Secret-9"
  setup(function() sim = vcsim.start({ username = "u", password = PASSWORD }) end)
  teardown(function() if sim then sim:stop() end end)

  local function repl(args, lines, env)
    local argv = { "repl", "--no-history" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return capil.run(argv, { stdin = table.concat(lines, "\n") .. "\n", timeout = 90, env_add = env })
  end

  it("connect() opens a session later and binds vc, inv, vim25 and vsphere", function()
    local r = repl({}, {
      "vc == nil",
      ("connect{ vcenter_server = %q, username = 'u', password = %q, datacenter = 'DC0',"
        .. " cluster = 'DC0_C0', datastore = 'LocalDS_0', insecure = true }")
        :format(sim.url, PASSWORD),
      'vc:props(vc:find("/DC0/vm/DC0_H0_VM0"), {"name"}).name',
      "inv.dc_name, vim25 ~= nil, vsphere.deploy ~= nil",
      "help(vc)",
      "help(vc, 'PowerOnVM_Task')",
      "help(vsphere.deploy)",
      "help(vc.find)",
    })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local out = r.stdout
    assert.matches("^true\nconnected to 127%.0%.0%.1:%d+ as u %(", out)
    assert.matches('\n"DC0_H0_VM0"\n', out, 1, true)
    assert.matches('\n"DC0"\ttrue\ttrue\n', out, 1, true)
    -- help(vc): the session's own methods, documented, and the vim25 methods
    assert.matches("\n  vc:find%(path%) +", out)
    assert.matches("\n  vc:CreateVM_Task%(this, {config: VirtualMachineConfigSpec, pool: ManagedObjectReference, "
      .. "host: ManagedObjectReference}%)\n", out)
    assert.matches("vim25 method PowerOnVM_Task -> ManagedObjectReference\n", out, 1, true)
    assert.matches("\n    host  ManagedObjectReference\n", out, 1, true)
    assert.matches("\nvsphere.deploy — capil.vsphere.deploy\n  an OVA becomes a VM", out, 1, true)
    assert.matches("\n  vsphere%.deploy%.import%(vc, inv, ova_path, opts%)", out)
    assert.matches("\nvc:find%(path%)\n  ", out)
    assert.is_nil((r.stdout .. r.stderr):find(PASSWORD, 1, true))
  end)

  it("vsphere.rest and vsphere.library: a REST session and content library calls, with help", function()
    local r = repl({}, {
      ("connect{ vcenter_server = %q, username = 'u', password = %q, datacenter = 'DC0', insecure = true }")
        :format(sim.url, PASSWORD),
      ("c = assert(vsphere.rest.connect{ server = %q, username = 'u', password = %q, insecure = true })")
        :format(sim.url, PASSWORD),
      "vsphere.library.find_library(c, 'no-such-library') == nil, c.flavor ~= nil",
      "vsphere.library.lookup(c, 'no-such-library', 'x')",
      "help(vsphere.library)",
      "help(vsphere.rest)",
      "help()",
    })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local out = r.stdout
    assert.matches("\ntrue\ttrue\n", out)
    assert.matches("library no-such-library not found on " .. sim.url:match("^https?://[^/]+"), out, 1, true)
    assert.matches("\nvsphere.library — capil.vsphere.library\n", out, 1, true)
    assert.matches("\n  vsphere%.library%.deploy_item%(c, item_id, opts%)", out)
    assert.matches("\n  vsphere%.library%.create_from_vm%(c, vm_id, opts%)", out)
    assert.matches("\nvsphere.rest — capil.vsphere.rest\n", out, 1, true)
    assert.matches(".rest (REST sessions), .library (content libraries)", out, 1, true)
    assert.is_nil((r.stdout .. r.stderr):find(PASSWORD, 1, true))
  end)

  it("on a terminal: connect() binds vsphere, Tab goes on after its name, the history holds no password", function()
    local state = require("support.peer").dir("repl-history")
    local r = in_pty({ "repl" }, {
      { expect = "capil> " },
      { send = ("connect{ vcenter_server = %q, username = 'u', password = %q, insecure = true }\n")
        :format(sim.url, PASSWORD) },
      { expect = "connected to" }, { expect = "capil> " }, { send = '"[vsph\t]"\n' },
      { expect = "capil> " }, { send = '"[vsphere.dep\t]"\n' },
      { expect = "capil> " }, { send = "\4" },
    }, { NO_COLOR = "1", XDG_STATE_HOME = state })
    assert.equal(0, r.code, r.stdout)
    assert.matches('\n"[vsphere]"\r\n', r.stdout, 1, true)
    assert.matches('\n"[vsphere.deploy]"\r\n', r.stdout, 1, true)
    local history = assert(require("capil.sys.fs").read(state .. "/capil/history"))
    assert.matches("connect{", history, 1, true)
    assert.matches("password\\040=\\040\"****\"", history, 1, true) -- libedit writes a space as \040
    assert.is_nil(history:find(PASSWORD, 1, true))
  end)

  it("a bad password or a closed port leaves a prompt and the reason, never the password", function()
    local port = require("support.peer").free_port()
    for _, server in ipairs({ sim.url, "http://127.0.0.1:" .. port .. "/sdk" }) do
      local r = repl({ "--backend", "vsphere", "--var", "vcenter_server=" .. server, "--var", "username=u",
        "--var", "password=wrong-" .. PASSWORD, "--var", "insecure_connection=true" }, {
        "vc == nil",
        "help",
      })
      assert.equal(0, r.code, r.stdout .. r.stderr)
      assert.matches("vim25.connect: " .. server, r.stderr, 1, true)
      assert.matches("; not connected: connect() retries", r.stderr, 1, true)
      assert.equal("true\n", r.stdout:sub(1, 5))
      assert.matches("vc       not connected: connect() opens a session", r.stdout, 1, true)
      assert.is_nil((r.stdout .. r.stderr):find(PASSWORD, 1, true))
    end
    -- the login refused, then connect() with the right password over the command line's settings
    local r = repl({ "--var", "vcenter_server=" .. sim.url, "--var", "username=u", "--var", "password=wrong" }, {
      "vc == nil",
      ("connect{ password = %q }"):format(PASSWORD),
      "vc ~= nil",
    })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("login", r.stderr:lower(), 1, true)
    assert.matches("^true\nconnected to .-\ntrue\n$", r.stdout)
    assert.is_nil((r.stdout .. r.stderr):find(PASSWORD, 1, true))
    -- a failing connect() is an error of its line: the reason, and exit 1 at the end of piped input
    r = repl({}, { ("connect{ vcenter_server = %q, username = 'u', password = 'nope-pw' }"):format(sim.url), "1" })
    assert.equal(1, r.code)
    assert.matches("^connect: vim25%.connect: .-; connect%(%) retries\n1\n$", r.stdout)
    assert.is_nil(r.stdout:find("nope-pw", 1, true))
  end)
end)
