--- capil.build.installer — the installer files a guest fetches during an
--- unattended install (kickstart, preseed, ks.json): rendered from the
--- recipe's templates into a build directory and served over HTTP by
--- capil.core.httpd for as long as the build runs.
---
--- The bind address (where the server listens, `http_bind_address`) and
--- the advertised address (what the guest is told, `http_ip`: 10.0.2.2 for
--- QEMU's user network, the host's address on the VM network for vSphere)
--- are separate settings: a server bound to 0.0.0.0 behind NAT is reached
--- at an address it cannot guess.
local core = require("capil.core.httpd")
local fs = require("capil.sys.fs")
local template = require("capil.util.template")
local cleanup = require("capil.sys.cleanup")
local log = require("capil.sys.log")

local M = {}

--- Renders `files` (relative to `src`) with `vars` into `dest`, keeping
--- the relative paths. Returns true or nil and an error naming the file.
---@param src string template directory (recipes/http/<distro>)
---@param files string[]
---@param dest string
---@param vars table
function M.render(src, files, dest, vars)
  for _, rel in ipairs(files) do
    if rel:find("..", 1, true) or rel:sub(1, 1) == "/" then
      return nil, ("installer: %s: file names must stay inside %s"):format(rel, src)
    end
    local text, err = fs.read_file(src .. "/" .. rel, { max = 4 * 1024 * 1024 })
    if not text then return nil, "installer: " .. err end
    local out, terr = template.render(text, vars, src .. "/" .. rel)
    if not out then return nil, "installer: " .. terr end
    local dir = fs.dirname(dest .. "/" .. rel)
    local ok, merr = fs.mkdir(dir)
    if not ok then return nil, "installer: " .. merr end
    ok, merr = fs.write(dest .. "/" .. rel, out, { mode = 420 })
    if not ok then return nil, "installer: " .. merr end
  end
  return true
end

--- Makes an ISO 9660 image (Joliet, Rock Ridge) of `dir` labelled
--- `label` with xorriso: the second CD of HTTP-free installs.
---@return string|nil path, string? err, string? code
function M.make_iso(dir, path, label)
  local r, err, code = require("capil.sys.proc").run({ argv = { "xorriso", "-as", "genisoimage", "-quiet",
    "-output", path, "-volid", label or "cidata", "-joliet", "-rock", dir }, timeout = 300 })
  if not r then return nil, "installer: xorriso: " .. err, code end
  if r.code ~= 0 then return nil, "installer: xorriso: " .. r.stderr, "EISO" end
  return path
end

--- Starts serving `dir`; the server stops at cleanup (or with :close()).
--- Returns the server (server.port, server.address) or nil and an error.
---@param opts {dir: string, bind?: string, port?: integer}
function M.serve(opts)
  local srv, err, code = core.serve({ dir = opts.dir, bind = opts.bind or "127.0.0.1", port = opts.port or 0 })
  if not srv then return nil, err, code end
  local h = cleanup.push(("installer HTTP server on %s:%d"):format(srv.address, srv.port), function() srv:close() end)
  log.debug("serving %s on %s:%d", opts.dir, srv.address, srv.port)
  return srv, h
end

return M
