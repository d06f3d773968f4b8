-- spec/support/nginx.lua — a real nginx (Debian's /usr/sbin/nginx) for the
-- http specs and the benchmark: a throwaway prefix directory with the config,
-- logs, pid file, temp paths and the document root (`root`), listening on
-- 127.0.0.1 (plain, plus TLS when given a certificate). Started and stopped
-- through spec/support/peer.lua; master_process on, one worker, so a test can
-- kill the worker and let the master respawn it.
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")

local M = {}

local NGINX = "/usr/sbin/nginx"

local function is_root()
  local r = proc.run({ argv = { "id", "-u" } })
  return r and r.stdout:match("^0%s") ~= nil
end

--- Starts nginx. `locations` is nginx text placed in every server block
--- (`location` blocks and server-level directives); `tls = {cert=, key=}`
--- adds an ssl listener on a second port.
---@param opts {locations?: string, tls?: {cert: string, key: string}}
---@return table server {port, tls_port?, dir, root, url(path), tls_url(path), stop(), ...}
function M.start(opts)
  opts = opts or {}
  local dir = peer.dir("nginx")
  local root = dir .. "/www"
  assert(fs.mkdir(root))
  assert(fs.mkdir(dir .. "/tmp"))
  local port = peer.free_port()
  local tls_port = opts.tls and peer.free_port()
  local listen = ("listen 127.0.0.1:%d;"):format(port)
  if tls_port then
    listen = listen .. ("\n    listen 127.0.0.1:%d ssl;\n    ssl_certificate %s;\n    ssl_certificate_key %s;")
      :format(tls_port, opts.tls.cert, opts.tls.key)
  end
  local conf = ([[
%s
worker_processes 1;
error_log %s/error.log info;
pid %s/nginx.pid;
events { worker_connections 128; }
http {
  log_format capil '$request_method $uri $status range=$http_range bytes=$body_bytes_sent';
  access_log %s/access.log capil;
  client_body_temp_path %s/tmp/body;
  proxy_temp_path %s/tmp/proxy;
  fastcgi_temp_path %s/tmp/fastcgi;
  uwsgi_temp_path %s/tmp/uwsgi;
  scgi_temp_path %s/tmp/scgi;
  types { text/plain txt; text/html html; }
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 1000;
  server {
    %s
    root %s;
    client_max_body_size 0;
%s
  }
}
]]):format(is_root() and "user root;" or "", dir, dir, dir, dir, dir, dir, dir, dir,
    listen, root, opts.locations or "")
  local conf_path = dir .. "/nginx.conf"
  assert(fs.write(conf_path, conf))
  local handle = peer.start({
    name = "nginx",
    argv = { NGINX, "-p", dir, "-e", dir .. "/error.log", "-c", conf_path,
             "-g", "daemon off; master_process on;" },
    port = port,
    log = dir .. "/stdout.log",
  })
  if tls_port then
    local runtime = require("capil.core.runtime")
    local deadline = runtime.now() + 5
    while not runtime.port_open("127.0.0.1", tls_port, 0.2) do
      assert(runtime.now() < deadline, "nginx did not listen on its TLS port")
      runtime.sleep(0.02)
    end
  end
  local server = { port = port, tls_port = tls_port, dir = dir, root = root, pid = handle.pid }
  --- Stops nginx (SIGTERM to the master, which stops its workers) and
  --- removes its directory (busted exits without running capil's cleanups).
  function server.stop()
    handle.stop()
    assert(fs.remove(dir, { recursive = true }))
  end
  function server.url(path) return ("http://127.0.0.1:%d%s"):format(port, path) end
  function server.tls_url(path) return ("https://127.0.0.1:%d%s"):format(tls_port, path) end

  --- Lines of the access log ("METHOD /uri status range=... bytes=N").
  function server.access()
    local f = io.open(dir .. "/access.log")
    if not f then return {} end
    local lines = {}
    for line in f:lines() do lines[#lines + 1] = line end
    f:close()
    return lines
  end

  --- Access log lines for `uri`.
  function server.hits(uri)
    local t = {}
    for _, l in ipairs(server.access()) do
      if l:match("^%u+ (%S+) ") == uri then t[#t + 1] = l end
    end
    return t
  end

  --- The number of access log lines for `uri`, counted after a marker
  --- request has been logged: nginx logs a request just after answering it,
  --- so a client can otherwise see a response before its log line exists.
  function server.count(uri)
    local runtime = require("capil.core.runtime")
    local marks = #server.hits("/__marker")
    assert(require("capil.core.http").request({ url = server.url("/__marker") }))
    local deadline = runtime.now() + 3
    while #server.hits("/__marker") <= marks do
      assert(runtime.now() < deadline, "nginx did not log the marker request")
      runtime.sleep(0.005)
    end
    return #server.hits(uri)
  end

  --- PIDs of the master's worker processes (children of the master).
  function server.workers()
    local r = assert(proc.run({ argv = { "pgrep", "-P", tostring(handle.pid) } }))
    local pids = {}
    for pid in r.stdout:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
    return pids
  end

  --- Writes a file under the document root; returns its absolute path.
  function server.put(path, data)
    local full = root .. path
    assert(fs.mkdir(fs.dirname(full)))
    assert(fs.write(full, data))
    return full
  end
  return server
end

return M
