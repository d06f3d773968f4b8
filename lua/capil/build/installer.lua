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

-- The layers where a user sets a value (capil.build.config): a password
-- there is the user's; one from the schema default or the shared config
-- (image-builder's packer-common.json "builder") is public and is replaced
-- by a random one per build.
local USER_LAYERS = { recipe = true, env = true, ["var-file"] = true, var = true }

--- Whether the build password is the user's (set by a recipe, a var file
--- or --var) rather than the public default, which capil replaces with a
--- random one per build.
---@param cfg table from capil.build.config.resolve
---@return boolean
function M.password_is_set(cfg)
  local src = cfg.sources and cfg.sources["ssh.password"]
  return src ~= nil and USER_LAYERS[src.layer] == true
end

-- URL-safe, and safe in every installer file (schema check installer_safe)
local function random_text(nbytes)
  local hash = require("capil.sys.hash")
  local ok, bytes, err, code = pcall(hash.random, nbytes)
  if not ok then return nil, "installer: random bytes: " .. tostring(bytes), "CRYPTO" end
  if not bytes then return nil, "installer: random bytes: " .. tostring(err), code or "CRYPTO" end
  return (hash.base64url_encode(bytes):gsub("=", ""))
end

--- The build user's password for one build and its SHA-512 crypt hash
--- (`$6$<salt>$…`, for answer files that take a hash): the user's password
--- when set (M.password_is_set), else 24 random bytes as URL-safe text
--- (32 characters; image-builder's hack/set-ssh-password.sh draws 16
--- alphanumerics). The password is registered as a secret before this
--- returns, so no log line, error or report can show it.
---@param cfg table from capil.build.config.resolve
---@return {password: string, hash: string, random: boolean}|nil, string? err, string? code
function M.build_password(cfg)
  local hash = require("capil.sys.hash")
  local password, random = cfg:get("ssh.password"), false
  if not M.password_is_set(cfg) or password == nil or password == "" then
    local err, code
    password, err, code = random_text(24)
    if not password then return nil, err, code end
    random = true
  end
  -- "builder" (image-builder's public default, also the user name) is no secret
  if password ~= "builder" then log.secret(password) end
  -- the salt is 16 characters of [./0-9A-Za-z] (crypt's alphabet)
  local salt, serr, scode = random_text(12)
  if not salt then return nil, serr, scode end
  salt = salt:gsub("[-_]", { ["-"] = ".", ["_"] = "/" })
  local crypted, cerr, ccode = hash.crypt_sha512(password, salt)
  if not crypted then return nil, "installer: " .. tostring(cerr), ccode end
  return { password = password, hash = crypted, random = random }
end

--- The variables the installer files are rendered with: the flat
--- configuration (capil.build.config's vars()), the build's password and
--- its SHA-512 crypt hash (M.build_password), and the static address's
--- lines (capil.build.staticip.template_vars: DHCP, or nothing, without
--- build_ip).
---@param cfg table from capil.build.config.resolve
---@param password? {password: string, hash: string}
---@return table<string, string>
function M.template_vars(cfg, password)
  local vars = cfg:vars()
  if password then
    vars.ssh_password = password.password
    vars.ssh_password_hash = password.hash
  end
  local sip = require("capil.build.staticip")
  for k, v in pairs(sip.template_vars((sip.resolve(cfg)))) do vars[k] = v end
  return vars
end

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
