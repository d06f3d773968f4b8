local httpd = require("capil.core.httpd")
local installer = require("capil.build.installer")
local net = require("capil.core.net")
local fs = require("capil.sys.fs")
local peer = require("support.peer")

-- A raw request, so paths reach the server exactly as written (curl would
-- normalise "..").
local function raw_get(port, path, method)
  local s = assert(net.connect({ host = "127.0.0.1", port = port, timeout = 5 }))
  assert(s:send(("%s %s HTTP/1.0\r\n\r\n"):format(method or "GET", path)))
  local out = {}
  while true do
    local chunk, _, code = s:receive("any", { timeout = 5 })
    if not chunk then assert.equal("EOF", code) break end
    out[#out + 1] = chunk
  end
  s:close()
  local text = table.concat(out)
  return tonumber(text:match("^HTTP/1%.0 (%d+)")), text:match("\r\n\r\n(.*)$")
end

describe("httpd: the installer file server #unit", function()
  local dir, outside
  setup(function()
    dir = peer.dir("www")
    outside = peer.dir("outside")
    assert(fs.mkdir(dir .. "/7"))
    assert(fs.write(dir .. "/7/ks.cfg", "install\ntext\n"))
    assert(fs.write(outside .. "/secret", "not for guests"))
    assert(require("capil.sys.proc").run({ argv = { "ln", "-s", outside .. "/secret", dir .. "/escape" } }))
  end)

  it("serves the directory's files with GET and HEAD", function()
    local srv <close> = assert(httpd.serve({ dir = dir }))
    assert.is_true(srv.port > 0)
    local status, body = raw_get(srv.port, "/7/ks.cfg")
    assert.equal(200, status)
    assert.equal("install\ntext\n", body)
    status, body = raw_get(srv.port, "/7/ks.cfg", "HEAD")
    assert.equal(200, status)
    assert.equal("", body)
    assert.equal(404, raw_get(srv.port, "/7/missing.cfg"))
    assert.equal(405, raw_get(srv.port, "/7/ks.cfg", "PUT"))
    local reqs = srv:requests()
    assert.same({ path = "/7/ks.cfg", status = 200 }, reqs[1])
  end)

  it("never serves outside its directory", function()
    local srv <close> = assert(httpd.serve({ dir = dir }))
    for _, path in ipairs({ "/../" .. fs.basename(outside) .. "/secret", "/7/../../x", "/%2e%2e/secret", "/escape",
      "/7/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd%00" }) do
      local status, body = raw_get(srv.port, path)
      assert.is_true(status == 403 or status == 404, path)
      assert.not_matches("not for guests", body or "", 1, true)
      assert.not_matches("root:", body or "", 1, true)
    end
  end)

  it("stops serving when closed", function()
    local srv = assert(httpd.serve({ dir = dir }))
    local port = srv.port
    srv:close()
    srv:close()
    local ok, _, code = net.connect({ host = "127.0.0.1", port = port, timeout = 2 })
    assert.is_nil(ok)
    assert.equal("ECONNREFUSED", code)
    assert.has_error(function() srv:requests() end, "attempt to use a closed http server")
  end)

  it("reports bad directories and addresses", function()
    local s, err, code = httpd.serve({ dir = dir .. "/nope" })
    assert.is_nil(s)
    assert.equal("ENOENT", code)
    assert.matches("httpd.serve: " .. dir .. "/nope", err, 1, true)
    s, err = httpd.serve({ dir = dir, bind = "not-an-ip" })
    assert.is_nil(s)
    assert.matches("not an IPv4 address", err, 1, true)
    assert.has_error(function() httpd.serve({ dir = dir, prot = 1 }) end, "httpd.serve: unknown option 'prot'")
  end)

  it("renders installer templates and serves them while the build runs", function()
    local out = peer.dir("rendered")
    assert(installer.render("recipes/http/centos", { "7/ks.cfg" }, out,
      { ssh_username = "builder", ssh_password = "b-pass", kickstart_network = "" }))
    local srv = assert(installer.serve({ dir = out }))
    local status, body = raw_get(srv.port, "/7/ks.cfg")
    assert.equal(200, status)
    assert.matches("user --name=builder --plaintext --password b-pass", body, 1, true)
    srv:close()
    local ok, err = installer.render("recipes/http/centos", { "../../etc/x" }, out, {})
    assert.is_nil(ok)
    assert.matches("must stay inside", err, 1, true)
  end)
end)

describe("net sockets #unit", function()
  it("reports refused and timed-out connections", function()
    local port = peer.free_port()
    local s, _, code = net.connect({ host = "127.0.0.1", port = port, timeout = 2 })
    assert.is_nil(s)
    assert.equal("ECONNREFUSED", code)
    s, _, code = net.connect({ unix = "/nonexistent/qmp.sock" })
    assert.is_nil(s)
    assert.equal("ENOENT", code)
  end)
end)
