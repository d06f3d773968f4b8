local capil = require("support.capil")

-- Runs a Lua chunk in a fresh capil process so log settings and secrets do
-- not leak between tests; returns {code, stdout, stderr}.
local function run(code, args)
  local argv = { "-e", code }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  return capil.run(argv)
end

describe("log #unit", function()
  it("writes levels to stderr; debug only when verbose", function()
    local r = run([[
      local log = require("capil.sys.log")
      log.info("building %s", "vm-1")
      log.warn("slow")
      log.debug("hidden")
      log.configure({ verbose = true })
      log.debug("shown")
    ]])
    assert.equal(0, r.code)
    assert.equal("==> building vm-1\nwarn: slow\ndebug: shown\n", r.stderr)
    assert.equal("", r.stdout)
  end)

  it("writes one JSON object per line in json format", function()
    local r = run([[
      local log = require("capil.sys.log")
      log.configure({ format = "json" })
      log.log("info", 'quote " and\nnewline', { vm = "vm-1", n = 3 })
    ]])
    assert.equal(0, r.code)
    local line = r.stderr:match("^(.-)\n$")
    assert.truthy(line)
    assert.matches('"level":"info"', line, 1, true)
    assert.matches('"msg":"quote \\" and\\nnewline"', line, 1, true)
    assert.matches('"n":3', line, 1, true)
    assert.matches('"vm":"vm-1"', line, 1, true)
  end)

  it("--log-format json and --quiet apply to commands", function()
    local r = capil.run({ "--quiet", "-e", "require('capil.sys.log').info('x')" })
    assert.equal("", r.stderr)
  end)

  it("never shows a secret: in log lines, errors, files, reports", function()
    local dir = require("support.peer").dir("secret")
    local r = run(([[
      local log = require("capil.sys.log")
      log.secret("s3cr3t-Passw0rd")
      assert(log.add_file(%q))
      log.info("login as admin with s3cr3t-Passw0rd")
      log.warn("url https://admin:s3cr3t-Passw0rd@vcenter/sdk")
      io.stdout:write(log.redact("report: password=s3cr3t-Passw0rd"), "\n")
      error("Login failed for s3cr3t-Passw0rd")
    ]]):format(dir .. "/build.log"))
    assert.equal(1, r.code)
    for _, text in ipairs({ r.stdout, r.stderr, require("capil.sys.fs").read(dir .. "/build.log") }) do
      assert.not_matches("s3cr3t", text, 1, true)
    end
    assert.matches("login as admin with ****", r.stderr, 1, true)
    assert.matches("https://admin:****@vcenter/sdk", r.stderr, 1, true)
    assert.matches("Login failed for ****", r.stderr, 1, true)
    assert.equal("report: password=****\n", r.stdout)
  end)

  it("masks the password of any URL, registered or not, and secret_urls registers it", function()
    local r = run([[
      local log = require("capil.sys.log")
      log.warn("proxy http://bob:Pr0xy-pw@proxy:3128/ and https://u:p%%40ss@h/x")
      log.secret_urls("http://alice:Al1ce-pw@mirror/")
      log.warn("plain Al1ce-pw; user only http://bob@h/; port http://h:8080/; host:port a:b@c")
      io.stdout:write(log.redact("ftp://x:y-secret@z"), "\n")
    ]])
    assert.equal(0, r.code)
    assert.equal("warn: proxy http://bob:****@proxy:3128/ and https://u:****@h/x\n"
      .. "warn: plain ****; user only http://bob@h/; port http://h:8080/; host:port a:b@c\n", r.stderr)
    assert.equal("ftp://x:****@z\n", r.stdout)
  end)

  it("escapes control characters of messages: no escape sequence reaches the terminal", function()
    local r = run([[
      local log = require("capil.sys.log")
      log.warn("title \27]0;pwned\7 clear \27[2J cr \r del \127 c1 \194\155 tab\tnewline")
      log.control("\27[1A") -- written only to a terminal
      error("bad \27[31m red")
    ]])
    assert.equal(1, r.code)
    assert.is_nil(r.stderr:find("\27", 1, true), r.stderr)
    assert.matches("warn: title \\x1b]0;pwned\\x07 clear \\x1b[2J cr \\x0d del \\x7f c1 \\u009b tab\tnewline\n",
      r.stderr, 1, true)
    assert.matches("bad \\x1b[31m red", r.stderr, 1, true)
  end)

  it("masks the longest secret first and ignores too-short values", function()
    local r = run([[
      local log = require("capil.sys.log")
      log.secret("abcd")
      log.secret("abcdefgh")
      log.secret("ab")
      print(log.redact("abcdefgh abcd ab"))
    ]])
    assert.equal("**** **** ab\n", r.stdout)
  end)

  it("prints plain progress lines when stderr is not a terminal", function()
    local r = run([[
      local log = require("capil.sys.log")
      local runtime = require("capil.core.runtime")
      local p = log.progress({ label = "download disk.vmdk", total = 1000, interval = 0.05 })
      for i = 1, 4 do runtime.sleep(0.06) p:update(i * 250) end
      p:close()
      p:close()
    ]])
    assert.equal(0, r.code)
    assert.matches("download disk.vmdk:%s+%d+%% %d+ B of 1000 B", r.stderr)
    assert.matches("download disk.vmdk: 1000 B in 00:00", r.stderr, 1, true)
    assert.not_matches("\r", r.stderr, 1, true)
  end)

  it("prints no summary for work that never began (its source could not be opened)", function()
    local r = run([[
      local log = require("capil.sys.log")
      local p = log.progress({ label = "vmdk x.vmdk" })
      p:close()
      local q = log.progress({ label = "empty.txt" })
      q:update(0, 0) -- a transfer of an empty file did begin
      q:close()
    ]])
    assert.equal(0, r.code)
    assert.is_nil(r.stderr:find("vmdk x.vmdk", 1, true))
    assert.matches("empty.txt: 0 B in 00:00", r.stderr, 1, true)
  end)

  it("prints no progress in quiet mode", function()
    local r = run([[
      local log = require("capil.sys.log")
      log.configure({ quiet = true })
      local p = log.progress({ label = "x", total = 10, interval = 0.01 })
      p:update(5) p:close()
    ]])
    assert.equal("", r.stderr)
  end)
end)
