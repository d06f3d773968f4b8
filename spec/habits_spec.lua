-- Packer's and image-builder's habits, through the binary as a user types
-- them: --force and the refusal to build over an OVA, --on-error, --debug,
-- CAPIL_LOG/CAPIL_LOG_PATH, PACKER_FLAGS and Packer's single-dash flags,
-- make target names, --only/--except on build names, global options after
-- the command. The fast ones use the tiny recipe with an ISO that does not
-- exist: the build fails at its first step, before any VM.
local capil = require("support.capil")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")
local json = require("capil.sys.json")

local RECIPES = "spec/fixtures/recipes"
local TINY = RECIPES .. "/tiny.lua"
local ABS = assert(os.getenv("PWD")) .. "/" .. RECIPES

local function run_tiny(out, extra, opts)
  local args = { "run", TINY, "--recipes-dir", RECIPES, "--output", out }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return capil.run(args, opts)
end

local function assert_no_traceback(r)
  assert.is_nil((r.stdout .. r.stderr):find("stack traceback", 1, true), r.stderr)
end

-- the entries of dir whose name starts with `prefix`
local function entries(dir, prefix)
  local t = {}
  for _, f in ipairs(fs.list(dir) or {}) do
    if f:sub(1, #prefix) == prefix then t[#t + 1] = f end
  end
  return t
end

describe("Packer's habits #unit", function()
  local out, build
  before_each(function()
    out = peer.dir("habits")
    build = out .. "/tiny-kube-v1.16.14"
  end)

  describe("--force", function()
    it("refuses to build into a directory holding an OVA, naming it and --force", function()
      assert(fs.mkdir(build))
      assert(fs.write(build .. "/old.ova", "x"))
      local r = run_tiny(out)
      assert.equal(1, r.code)
      assert_no_traceback(r)
      assert.matches("output directory " .. build .. " already holds an OVA (old.ova) from an earlier build: "
        .. "use --force", r.stderr, 1, true)
      assert.equal("x", fs.read(build .. "/old.ova"))
      assert.is_nil(r.stderr:find("building", 1, true))
    end)

    it("removes the directory first with --force (and Packer's -force)", function()
      for _, flag in ipairs({ "--force", "-force" }) do
        assert(fs.mkdir(build))
        assert(fs.write(build .. "/old.ova", "x"))
        local r = run_tiny(out, { flag })
        assert.equal(1, r.code) -- the ISO does not exist
        assert.matches("--force: removing " .. build, r.stderr, 1, true)
        assert.matches("step fetch-iso failed", r.stderr, 1, true)
        assert.is_false(fs.exists(build .. "/old.ova"))
        if flag == "-force" then assert.matches("note: -force is Packer's form; capil's is --force", r.stderr, 1, true) end
      end
    end)

    it("refuses several builds before any starts", function()
      assert(fs.mkdir(build))
      assert(fs.write(build .. "/old.ova", "x"))
      local r = capil.run({ "run", TINY, "--recipes-dir", RECIPES, "--output", out, "-j", "1" })
      assert.equal(2, r.code)
      assert.matches("already holds an OVA", r.stderr, 1, true)
      assert.is_false(fs.exists(build .. "/logs"))
    end)
  end)

  describe("--on-error", function()
    it("cleanup (the default) removes the work directory", function()
      local r = run_tiny(out)
      assert.equal(1, r.code)
      assert.same({}, entries(build, ".work"))
    end)

    it("abort and --keep-on-error keep what the build made and list it", function()
      for _, flags in ipairs({ { "--on-error=abort" }, { "--keep-on-error" }, { "-on-error=abort" } }) do
        fs.remove(build, { recursive = true })
        local r = run_tiny(out, flags)
        assert.equal(1, r.code)
        assert.matches("kept after failure", r.stderr, 1, true)
        assert.equal(1, #entries(build, ".work"), table.concat(flags, " "))
      end
    end)

    it("ask without a terminal cleans up, with a notice", function()
      local r = run_tiny(out, { "--on-error", "ask" }, { stdin = "a\n" })
      assert.equal(1, r.code)
      assert.matches("--on-error=ask: stdin is not a terminal, so a failure will be cleaned up", r.stderr, 1, true)
      assert.same({}, entries(build, ".work"))
    end)

    it("ask on a terminal: cleanup/abort/retry, as Packer asks", function()
      -- NO_COLOR: the prompt's text as plain words (a terminal gets colour)
      local cmd = table.concat({ "NO_COLOR=1", capil.exe, "run", TINY, "--recipes-dir", RECIPES, "--output", out,
        "--on-error=ask" }, " ")
      local r = assert(proc.run({ argv = { "script", "-qec", cmd, "/dev/null" }, stdin = "what\nr\na\n",
        timeout = 30 }))
      local text = r.stdout .. (r.stderr or "")
      assert.matches("[c] Clean up and exit, [a] abort without cleanup, or [r] retry step", text, 1, true)
      assert.matches("retrying step fetch-iso", text, 1, true)
      assert.matches("kept after failure", text, 1, true)
      assert.equal(1, #entries(build, ".work"))
      local report = json.read(build .. "/report.json")
      assert.equal(2, #report.steps) -- the first try and the retry
    end)

    it("rejects an unknown mode and a contradiction", function()
      local r = run_tiny(out, { "--on-error=explode" })
      assert.equal(2, r.code)
      assert.matches("--on-error must be cleanup, abort or ask, not 'explode'", r.stderr, 1, true)
      r = run_tiny(out, { "--on-error=ask", "--keep-on-error" })
      assert.equal(2, r.code)
      assert_no_traceback(r)
    end)
  end)

  describe("--debug", function()
    it("pauses before each step until Enter, and stops pausing at the end of input", function()
      local r = run_tiny(out, { "--debug" }, { stdin = "\n" })
      assert.equal(1, r.code)
      assert.matches("debug: next step 1/11: fetch-iso (fetch_iso)", r.stderr, 1, true)
      assert.matches("press Enter to continue", r.stderr, 1, true)
      assert.matches("step fetch-iso failed", r.stderr, 1, true)
      r = run_tiny(out, { "--debug" }, { stdin = "" })
      assert.matches("debug: end of input: not pausing any more", r.stderr, 1, true)
    end)

    it("is for one build", function()
      local r = capil.run({ "run", "--all", "--recipes-dir", RECIPES, "--output", out, "--debug" })
      assert.equal(2, r.code)
      assert.matches("--debug pauses one build", r.stderr, 1, true)
    end)
  end)

  describe("CAPIL_LOG", function()
    it("CAPIL_LOG=1 turns debug logging on", function()
      local r = run_tiny(out, {}, { env_add = { CAPIL_LOG = "1" } })
      assert.matches("debug: step fetch-iso (fetch_iso)", r.stderr, 1, true)
      r = run_tiny(out, {}, { env_add = { CAPIL_LOG = "0" } })
      assert.is_nil(r.stderr:find("debug: step", 1, true))
    end)

    it("CAPIL_LOG_PATH sends the debug log to a file", function()
      local path = out .. "/capil.log"
      local r = run_tiny(out, {}, { env_add = { CAPIL_LOG = "1", CAPIL_LOG_PATH = path } })
      assert.is_nil(r.stderr:find("debug: step", 1, true))
      assert.matches("debug step fetch-iso (fetch_iso)", fs.read(path), 1, true)
      r = run_tiny(out, {}, { env_add = { CAPIL_LOG = "1", CAPIL_LOG_PATH = out .. "/no/such/dir/x.log" } })
      assert.equal(2, r.code)
      assert.matches("capil: CAPIL_LOG_PATH: ", r.stderr, 1, true)
      assert_no_traceback(r)
    end)
  end)

  describe("PACKER_FLAGS and single-dash flags", function()
    local function version(r)
      assert.equal(0, r.code, r.stderr)
      return json.decode(r.stdout).build_version
    end

    it("reads -var, -var-file, -only and friends with a note naming capil's form", function()
      local vf = out .. "/vars.json"
      assert(fs.write(vf, '{"kubernetes_semver": "v1.17.3"}'))
      local r = capil.run({ "inspect", TINY, "--recipes-dir", RECIPES, "-var", "build_name=packer", "-var-file=" .. vf })
      assert.equal("packer-kube-v1.17.3", version(r))
      assert.matches("note: -var is Packer's form; capil's is --var", r.stderr, 1, true)
      assert.matches("note: -var-file is Packer's form; capil's is --var-file", r.stderr, 1, true)
    end)

    it("PACKER_FLAGS: the command line wins; values (secrets) never printed", function()
      local r = capil.run({ "inspect", TINY, "--recipes-dir", RECIPES, "--var", "build_name=cli" }, {
        env_add = { PACKER_FLAGS = "-var 'build_name=from packer' --var=kubernetes_semver=v1.18.1 -color=false" } })
      assert.equal("cli-kube-v1.18.1", version(r))
      assert.matches("note: PACKER_FLAGS read as --var (capil's form: those options on the command line)",
        r.stderr, 1, true)
      assert.matches("PACKER_FLAGS: -color ignored", r.stderr, 1, true)
      assert.is_nil(r.stderr:find("v1.18.1", 1, true))
    end)

    it("PACKER_FLAGS: a flag for another command is ignored with a note", function()
      local r = capil.run({ "inspect", TINY, "--recipes-dir", RECIPES },
        { env_add = { PACKER_FLAGS = "-debug -force -var build_name=pf" } })
      assert.equal("pf-kube-v1.16.14", version(r))
      assert.matches("PACKER_FLAGS: -debug, -force ignored (no meaning for capil inspect)", r.stderr, 1, true)
    end)

    it("PACKER_FLAGS: a flag capil does not know is an error", function()
      local r = capil.run({ "inspect", TINY, "--recipes-dir", RECIPES }, { env_add = { PACKER_FLAGS = "-frob" } })
      assert.equal(2, r.code)
      assert.matches("PACKER_FLAGS: '-frob' is not a flag capil knows", r.stderr, 1, true)
      r = capil.run({ "inspect", TINY, "--recipes-dir", RECIPES }, { env_add = { PACKER_FLAGS = "-var 'x" } })
      assert.equal(2, r.code)
      assert.matches("unterminated ' quote", r.stderr, 1, true)
    end)
  end)

  describe("make target names", function()
    it("resolve to the same plan as the capil form", function()
      local a = capil.run({ "inspect", "build-node-ova-vsphere-ubuntu-2004" })
      local b = capil.run({ "inspect", "ubuntu-2004", "--backend", "vsphere" })
      assert.equal(0, a.code, a.stderr)
      assert.equal(b.stdout, a.stdout)
      assert.matches("note: build-node-ova-vsphere-ubuntu-2004 is image-builder's make target; capil's form is "
        .. "'capil inspect ubuntu-2004 --backend vsphere'", a.stderr, 1, true)
      local c = capil.run({ "inspect", "build-node-ova-vsphere-ubuntu-2004", "--backend", "qemu" })
      assert.equal(2, c.code)
    end)

    it("run as a command: one recipe on a backend, or all of them", function()
      local r = capil.run({ "build-node-ova-qemu-tiny", "--recipes-dir", RECIPES, "--output", out })
      assert.equal(1, r.code)
      assert.matches("capil's form is 'capil run tiny --backend qemu'", r.stderr, 1, true)
      assert.matches("building tiny-kube-v1.16.14 on qemu", r.stderr, 1, true)
      r = capil.run({ "build-node-ova-local-tiny", "--recipes-dir", RECIPES, "--output", out, "--force" })
      assert.matches("--backend local: ", r.stderr, 1, true)
      r = capil.run({ "build-node-ova-vsphere-all", "--recipes-dir", RECIPES, "--only", "nothing" })
      assert.equal(2, r.code)
      assert.matches("capil's form is 'capil run --all --backend vsphere'", r.stderr, 1, true)
      assert.matches("the builds are: custom-ubuntu, testos, testos-efi, tiny, vsphere, vsphere-efi", r.stderr, 1, true)
    end)
  end)

  describe("--only/--except", function()
    it("match build names (a bundle entry's build_name) and list them when nothing matches", function()
      local b = out .. "/bundle.lua"
      assert(fs.write(b, ([[return {
        { recipe = "%s/tiny.lua" },
        { recipe = "%s/tiny.lua", vars = { build_name = "tiny-efi" } },
      }]]):format(ABS, ABS)))
      local r = capil.run({ "run", b, "--recipes-dir", RECIPES, "--output", out, "--only", "tiny-eif" })
      assert.equal(2, r.code)
      assert.matches("run: --only 'tiny-eif' matches no build; the builds are: tiny, tiny-efi", r.stderr, 1, true)
      r = capil.run({ "run", b, "--recipes-dir", RECIPES, "--output", out, "--except", "nope" })
      assert.equal(2, r.code)
      assert.matches("--except 'nope' matches no build", r.stderr, 1, true)
      -- the one chosen by build name runs (and fails at its ISO), the other is not even resolved
      r = capil.run({ "run", b, "--recipes-dir", RECIPES, "--output", out, "-only=tiny-efi" }, { timeout = 60 })
      assert.equal(1, r.code)
      assert.matches("[1/1] tiny-efi-kube-v1.16.14 on qemu", r.stderr, 1, true)
      assert.matches("0 of 1 builds passed", r.stderr, 1, true)
      r = capil.run({ "run", b, "--recipes-dir", RECIPES, "--output", out, "--except", "tiny-*", "--force" },
        { timeout = 60 })
      assert.matches("[1/1] tiny-kube-v1.16.14 on qemu", r.stderr, 1, true)
    end)
  end)

  describe("global options after the command", function()
    it("-q, -v and --log-format work after the command", function()
      local r = run_tiny(out, { "-q" })
      assert.equal(1, r.code)
      assert.is_nil(r.stderr:find("==> building", 1, true))
      r = run_tiny(out, { "--verbose" })
      assert.matches("debug: step fetch-iso", r.stderr, 1, true)
      r = capil.run({ "inspect", TINY, "--recipes-dir", RECIPES, "--log-format", "json", "-var", "build_name=j" })
      assert.equal(0, r.code, r.stderr)
      assert.matches('"level":"info"', r.stderr, 1, true)
    end)
  end)
end)

describe("Packer's habits on QEMU with the tiny guest #qemu", function()
  local fixtures = require("support.fixtures")
  local hash = require("capil.sys.hash")
  local out
  before_each(function() out = peer.dir("habits-qemu") end)

  local function tiny_args(extra)
    local t = fixtures.tiny()
    local args = { "run", TINY, "--recipes-dir", RECIPES, "--output", out,
      "--var", "iso_url=file://" .. t.kernel, "--var", "iso_checksum=" .. assert(hash.file(t.kernel)),
      "--var", "qemu_kernel=" .. t.kernel, "--var", "qemu_initrd=" .. t.initrd,
      "--var", "ssh_private_key_file=" .. t.key, "--var", "qemu_append=console=ttyS0 quiet rdinit=/init" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return args, t
  end

  it("--debug: each step waits for Enter; the SSH command and VNC address are shown", function()
    local args, t = tiny_args({ "--debug", "--var", "roles=marker" })
    local r = capil.run(args, { stdin = ("\n"):rep(11), timeout = 180 })
    assert.equal(0, r.code, r.stderr)
    assert.matches("debug: next step 11/11: manifest", r.stderr, 1, true)
    local esc = t.key:gsub("%p", "%%%0")
    assert.matches("ssh: ssh %-i " .. esc .. " %-p %d+ .* root@127%.0%.0%.1", r.stderr)
    assert.matches("vnc: 127%.0%.0%.1:59%d%d", r.stderr)
    -- before the VM and after it stopped, nothing to reach
    local first = r.stderr:match("debug: next step 1/11.-press Enter")
    assert.is_nil(first:find("vnc:", 1, true))
    local last = r.stderr:match("debug: next step 11/11.-press Enter")
    assert.is_nil(last:find("ssh:", 1, true))
    assert.is_nil(r.stderr:find("end of input", 1, true))
  end)

  it("--on-error=abort keeps what a failed role's build made and lists it", function()
    local r = capil.run(tiny_args({ "--on-error=abort", "--var", "roles=fail" }), { timeout = 120 })
    assert.equal(1, r.code)
    assert.matches("step provision failed: fail: fail on purpose", r.stderr, 1, true)
    local pid = tonumber(r.stderr:match("\n  QEMU tiny%-kube%-v1%.16%.14 %(pid (%d+)%)"))
    if pid and proc.alive(pid) then proc.run({ argv = { "kill", "-KILL", tostring(pid) } }) end
    assert.matches("kept after failure (--on-error=abort):", r.stderr, 1, true)
    assert.is_number(pid, r.stderr)
    assert.equal(1, #entries(out .. "/tiny-kube-v1.16.14", ".work"))
  end)
end)
