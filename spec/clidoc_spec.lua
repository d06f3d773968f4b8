-- The shell completion scripts and the man page: generated from the command
-- definitions, committed, and tried as a user's shell and man use them.
local capil = require("support.capil")
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")

local bindir = fs.dirname(capil.exe)
local PATH = bindir .. ":" .. (os.getenv("PATH") or "/usr/bin:/bin")

local function has(tool)
  local r = proc.run({ argv = { "sh", "-c", "command -v " .. tool }, timeout = 10 })
  return r and r.code == 0
end

-- Runs `script` under bash with the binary under test first on PATH.
local function bash(script)
  return assert(proc.run({ argv = { "bash", "--norc", "--noprofile", "-c", script },
    env_add = { PATH = PATH }, timeout = 30 }))
end

-- What bash completes for the words of a command line (the last word is
-- the one being completed).
local function complete(words)
  local q = {}
  for i, w in ipairs(words) do q[i] = "'" .. w:gsub("'", "'\\''") .. "'" end
  local r = bash(("source completions/capil.bash; COMP_WORDS=(capil %s); COMP_CWORD=%d; "
    .. "_capil; printf '%%s\\n' \"${COMPREPLY[@]}\""):format(table.concat(q, " "), #words))
  assert.equal(0, r.code, r.stderr)
  local out = {}
  for l in r.stdout:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function contains(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

describe("completion and man page #unit", function()
  it("the committed completion scripts and man page match the command definitions", function()
    for _, f in ipairs(require("capil.clidoc").files()) do
      assert.equal(f[2], fs.read(f[1]), f[1] .. " is stale: run scripts/gen-clidoc")
    end
    for _, shell in ipairs({ "bash", "zsh", "fish" }) do
      local r = capil.run({ "completion", shell })
      assert.equal(0, r.code)
      local path = shell == "bash" and "completions/capil.bash" or shell == "zsh" and "completions/_capil"
        or "completions/capil.fish"
      assert.equal(fs.read(path), r.stdout)
    end
    assert.equal(fs.read("man/capil.1"), capil.run({ "man" }).stdout)
  end)

  it("rejects a missing or unknown shell with exit 2 and keeps __complete out of the help", function()
    local r = capil.run({ "completion" })
    assert.equal(2, r.code)
    assert.equal("capil: completion: name a shell: bash, zsh or fish\n", r.stderr)
    r = capil.run({ "completion", "tcsh" })
    assert.equal(2, r.code)
    assert.matches("unknown shell 'tcsh'", r.stderr, 1, true)
    assert.not_matches("traceback", r.stderr)
    assert.not_matches("__complete", capil.run({ "--help" }).stdout, 1, true)
    r = capil.run({ "__complete", "backends" })
    assert.equal("qemu\nvsphere\nesx\nworkstation\nlocal\n", r.stdout)
    r = capil.run({ "__complete", "recipes" })
    assert.matches("^centos%-7\n", r.stdout)
    assert.matches("\nubuntu%-2204\n", r.stdout)
  end)

  it("bash registers the function and completes commands, options, recipes and backends", function()
    local r = bash("source completions/capil.bash; complete -p capil")
    assert.equal(0, r.code, r.stderr)
    assert.equal("complete -o bashdefault -o filenames -F _capil capil\n", r.stdout)
    assert.same({ "validate", "version", "vmdk", "vsphere" }, complete({ "v" }))
    assert.same({ "--backend" }, complete({ "run", "--back" }))
    assert.same({ "--log-format" }, complete({ "--log" }))
    assert.same({ "json" }, complete({ "--log-format", "j" }))
    local recipes = complete({ "run", "ubuntu-22" })
    assert.is_true(contains(recipes, "ubuntu-2204"), table.concat(recipes, " "))
    for _, n in ipairs(recipes) do assert.matches("^ubuntu%-22", n) end
    assert.same({ "qemu" }, complete({ "run", "ubuntu-2204", "--backend", "q" }))
    assert.same({ "pack" }, complete({ "ova", "pa" }))
    assert.same({ "zsh" }, complete({ "completion", "z" }))
    assert.same({ "inspect" }, complete({ "help", "insp" }))
  end)

  it("recipe names follow --recipes-dir", function()
    local dir = require("support.peer").dir("clidoc-recipes")
    assert(fs.write(dir .. "/my-custom-os.lua", "return {}\n"))
    assert.same({ "my-custom-os" }, complete({ "run", "--recipes-dir", dir, "my" }))
  end)

  it("zsh loads the completion function", function()
    if not has("zsh") then
      pending("zsh is not installed: the zsh script is checked only against its committed copy")
      return
    end
    local r = assert(proc.run({ argv = { "zsh", "-n", "completions/_capil" }, timeout = 30 }))
    assert.equal(0, r.code, r.stderr)
  end)

  it("zsh completes commands, recipe names and backends through compinit", function()
    if not has("zsh") then
      pending("zsh is not installed (scripts/setup installs it)")
      return
    end
    local function zcomplete(line)
      local r = assert(proc.run({ argv = { "zsh", "-f", "spec/support/zsh_complete.zsh",
        assert(fs.realpath("completions")), line }, env_add = { PATH = PATH }, timeout = 60 }))
      assert.equal(0, r.code, r.stderr)
      local out = {}
      for l in r.stdout:gmatch("[^\n]+") do out[#out + 1] = l end
      table.sort(out)
      return out
    end
    assert.same({ "validate" }, zcomplete("capil vali"))
    assert.same({ "ubuntu-2204", "ubuntu-2204-efi" }, zcomplete("capil run ubuntu-22"))
    local backends = zcomplete("capil run --backend ")
    for _, b in ipairs({ "qemu", "vsphere", "esx", "workstation" }) do
      assert.is_truthy(table.concat(backends, " "):find(b, 1, true), b .. " in " .. table.concat(backends, " "))
    end
  end)

  it("fish loads the completions and completes a command", function()
    if not has("fish") then
      pending("fish is not installed: the fish script is checked only against its committed copy")
      return
    end
    local r = assert(proc.run({ argv = { "fish", "--no-config", "-c",
      "source completions/capil.fish; complete -C 'capil vali'" }, env_add = { PATH = PATH }, timeout = 30 }))
    assert.equal(0, r.code, r.stderr)
    assert.matches("^validate", r.stdout)
  end)

  it("man -l renders the page without warnings, every command in it", function()
    if not has("man") then
      pending("man is not installed (scripts/setup installs man-db)")
      return
    end
    local r = assert(proc.run({ argv = { "man", "-l", "man/capil.1" },
      env_add = { MANWIDTH = "100", MANPAGER = "cat", PAGER = "cat", MAN_KEEP_FORMATTING = "" }, timeout = 30 }))
    assert.equal(0, r.code, r.stderr)
    assert.equal("", r.stderr)
    local text = r.stdout:gsub(".\b", "")
    assert.matches("capil %- build Cluster API node images", text)
    for _, name in ipairs({ "SYNOPSIS", "GLOBAL OPTIONS", "COMMANDS", "EXIT STATUS", "--log-format FORMAT" }) do
      assert.matches(name, text, 1, true)
    end
    local cli = require("capil.cli")
    for _, name in ipairs(cli.commands()) do
      if not cli.command(name).hidden then assert.matches("\n   " .. name .. "\n", text, 1, true) end
    end
    r = assert(proc.run({ argv = { "groff", "-man", "-ww", "-z", "man/capil.1" }, timeout = 30 }))
    assert.equal("", r.stderr)
  end)
end)
