-- Colour on a terminal (and none without one, or with NO_COLOR), and
-- --log-format json records for every line, errors included, through the
-- binary as a user runs it.
local capil = require("support.capil")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local proc = require("capil.sys.proc")
local text = require("capil.util.text")

local ESC = "\27["

-- Runs capil with `args` in a pseudo-terminal (util-linux script); returns
-- {code, stdout} with the terminal's output (CRLF line ends).
local function in_pty(args, env)
  local q = { text.shell_quote(capil.exe) }
  for _, a in ipairs(args) do q[#q + 1] = text.shell_quote(a) end
  return assert(proc.run({ argv = { "script", "-qec", table.concat(q, " "), "/dev/null" },
    env_add = env, timeout = 30 }))
end

local SCRIPT = [[
local log = require("capil.sys.log")
log.info("vm-1: step create-vm started")
log.warn("slow")
log.error("bad")
log.out("/out/x.ova")
log.out("a\nb")
]]

local function json_lines(s)
  local records = {}
  for line in s:gmatch("[^\n]+") do
    local ok, v = pcall(json.decode, line)
    assert.is_true(ok and type(v) == "table", "not a JSON record: " .. line)
    assert.is_string(v.time)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", v.time)
    assert.is_string(v.level)
    assert.is_string(v.msg)
    records[#records + 1] = v
  end
  return records
end

describe("log colour and json #unit", function()
  local dir, script
  setup(function()
    dir = require("support.peer").dir("logsurf")
    script = capil.script(dir, "colours.lua", SCRIPT)
  end)

  it("colours levels, subjects, step names and one-line results on a terminal", function()
    local r = in_pty({ script }, { NO_COLOR = "" }) -- empty: not set
    assert.equal(0, r.code, r.stdout)
    local out = r.stdout
    assert.matches(ESC .. "1;36m==> " .. ESC .. "0m" .. ESC .. "1mvm-1" .. ESC .. "0m: step "
      .. ESC .. "35mcreate-vm" .. ESC .. "0m started\r\n", out, 1, true)
    assert.matches(ESC .. "33mwarn: " .. ESC .. "0mslow\r\n", out, 1, true)
    assert.matches(ESC .. "1;31merror: " .. ESC .. "0mbad\r\n", out, 1, true)
    assert.matches(ESC .. "32m/out/x.ova" .. ESC .. "0m\r\n", out, 1, true)
    assert.matches("\r\na\r\nb\r\n", out, 1, true) -- a listing stays plain
    r = in_pty({ "run", "no-such-recipe" }, { NO_COLOR = "" })
    assert.equal(1, r.code)
    assert.matches("^" .. ESC:gsub("%[", "%%[") .. "1;31mcapil: " .. ESC:gsub("%[", "%%[") .. "0mno recipe 'no%-such%-recipe'",
      r.stdout)
  end)

  it("is plain with NO_COLOR, without a terminal and in JSON", function()
    local r = in_pty({ script }, { NO_COLOR = "1" })
    assert.equal(0, r.code)
    assert.not_matches(ESC, r.stdout, 1, true)
    assert.matches("==> vm-1: step create-vm started\r\nwarn: slow\r\n", r.stdout, 1, true)
    r = in_pty({ "run", "no-such-recipe" }, { NO_COLOR = "yes" })
    assert.matches("^capil: no recipe 'no%-such%-recipe' on the recipe path", r.stdout)
    r = capil.run({ script })
    assert.equal(0, r.code)
    assert.equal("==> vm-1: step create-vm started\nwarn: slow\nerror: bad\n", r.stderr)
    assert.equal("/out/x.ova\na\nb\n", r.stdout)
    r = in_pty({ "--log-format", "json", "run", "no-such-recipe" }, { NO_COLOR = "" })
    assert.not_matches(ESC, r.stdout, 1, true)
    assert.matches('^{"time":"[^"]+","level":"error","msg":"no recipe \'no%-such%-recipe', r.stdout)
  end)

  it("json: every record has time, level, msg and the call site's fields; secrets stay masked", function()
    local r = capil.run({ "-e", [[
      local log = require("capil.sys.log")
      log.configure({ format = "json" })
      log.secret("Hunter2-secret")
      log.with({ url = "https://bob:Url-pw-99@mirror/x.iso", bytes = 1024, rate = 512 })
        .info("fetched with Hunter2-secret")
      local done = log.context({ step = "fetch-iso", vm = "vm-1" })
      log.warn("in a step")
      done()
      log.info("after the step")
      local p = log.progress({ label = "download x.iso", total = 10, mode = "line" })
      p:update(10)
      p:close()
      error("failed with Hunter2-secret")
    ]] })
    assert.equal(1, r.code)
    assert.not_matches("Hunter2", r.stderr, 1, true)
    assert.not_matches("Url-pw-99", r.stderr, 1, true)
    local recs = json_lines(r.stderr)
    assert.equal(5, #recs)
    assert.same({ "info", "https://bob:****@mirror/x.iso", 1024, 512, "fetched with ****" },
      { recs[1].level, recs[1].url, recs[1].bytes, recs[1].rate, recs[1].msg })
    assert.same({ "warn", "fetch-iso", "vm-1" }, { recs[2].level, recs[2].step, recs[2].vm })
    assert.is_nil(recs[3].step)
    assert.same({ "info", "progress", 10, 10, true }, { recs[4].level, recs[4].event, recs[4].bytes, recs[4].total,
      recs[4].done })
    assert.matches("^download x%.iso: 10 B of 10 B, ", recs[4].msg)
    assert.equal("error", recs[5].level)
    assert.is_true(recs[5].final)
    assert.equal("(command line):13: failed with ****", recs[5].msg)
    assert.matches("^stack traceback:", recs[5].traceback)
  end)

  it("json: a failed build's every line is a record, the error last; build.log ends with the error", function()
    local out = dir .. "/out"
    local r = capil.run({ "--log-format", "json", "run", "ubuntu-2204", "--var", "iso_urls=file:///nonexistent.iso",
      "--output", out }, { env_add = { XDG_CACHE_HOME = dir .. "/cache" } })
    assert.equal(1, r.code)
    assert.equal("", r.stdout)
    local recs = json_lines(r.stderr)
    local seen
    for _, v in ipairs(recs) do
      if v.step == "fetch-iso" and v.url == "file:///nonexistent.iso" then seen = v end
    end
    assert.truthy(seen, r.stderr)
    assert.equal("warn", seen.level)
    local last = recs[#recs]
    assert.same({ "error", true }, { last.level, last.final })
    assert.matches("^step fetch%-iso failed: no ISO URL gave a file", last.msg)
    local build_log
    for _, d in ipairs(fs.list(out)) do build_log = fs.read(out .. "/" .. d .. "/logs/build.log") end
    assert.truthy(build_log)
    assert.matches("error step fetch%-iso failed: no ISO URL gave a file with the expected checksum:\n"
      .. "  file:///nonexistent%.iso: [^\n]+\n$", build_log)
  end)
end)
