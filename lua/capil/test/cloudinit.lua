--- capil.test.cloudinit — the test cloud-init data (cloudinit/ by default) and
--- the ways it reaches a booted image: a NoCloud seed ISO labelled `cidata`
--- (QEMU), guestinfo keys (vSphere extraConfig, Workstation .vmx), and the
--- test key capil logs in with. Test data only: never baked into images.
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")

local M = {}

local FILES = { "user-data", "meta-data" }

---@class capil.test.cloudinit.Data
---@field dir string
---@field userdata string
---@field metadata string

--- Reads user-data and meta-data from `dir`. Missing or empty files are an
--- error naming the file and what it is for.
---@param dir string
---@return capil.test.cloudinit.Data|nil data, string? err, string? code
function M.load(dir)
  local st = fs.stat(dir)
  if not st or st.type ~= "directory" then
    return nil, ("cloudinit: %s: no such directory (the test cloud-init data: user-data, meta-data and the "
      .. "test key; set cloudinit_dir)"):format(dir), "ENOENT"
  end
  local data = { dir = dir }
  for _, name in ipairs(FILES) do
    local path = dir .. "/" .. name
    local text, rerr, rcode = fs.read_file(path, { max = 4 * 1024 * 1024 })
    if not text and rcode ~= "ENOENT" then return nil, "cloudinit: " .. rerr, rcode end
    if not text then
      return nil, ("cloudinit: %s: missing (%s is required to boot a built image for testing)"):format(path, name),
        "ENOENT"
    end
    if not text:find("%S") then return nil, ("cloudinit: %s: the file is empty"):format(path), "EINVAL" end
    data[name == "user-data" and "userdata" or "metadata"] = text
  end
  if not (data.userdata:match("^#cloud%-config") or data.userdata:match("^## template: jinja")
      or data.userdata:match("^#!") or data.userdata:match("^Content%-Type:")) then
    return nil, ("cloudinit: %s/user-data: not cloud-init user data (it must start with #cloud-config, "
      .. "## template: jinja, a #! script line or a MIME header)"):format(dir), "EINVAL"
  end
  return data
end

--- The private key the test logs in with: `key`, or `<dir>/id_ed25519.capi`.
--- RSA keys are refused with the reason (libssh2 1.10 signs only ssh-rsa,
--- SHA-1, which OpenSSH 8.8+ refuses).
---@param dir string the cloud-init directory
---@param key? string an explicit key path ("" = the default)
---@return string|nil path, string? err, string? code
function M.key(dir, key)
  local path = (key and key ~= "") and key or (dir .. "/id_ed25519.capi")
  local text, rerr, rcode = fs.read_file(path, { max = 1024 * 1024 })
  if not text and rcode ~= "ENOENT" then return nil, "cloudinit: " .. rerr, rcode end
  if not text then
    return nil, ("cloudinit: %s: the test SSH key is missing (set test_ssh_private_key_file)"):format(path), "ENOENT"
  end
  local pub = fs.read_file(path .. ".pub", { max = 1024 * 1024 }) or ""
  if text:find("BEGIN RSA PRIVATE KEY", 1, true) or pub:match("^ssh%-rsa ") then
    return nil, ("cloudinit: %s is an RSA key: capil's SSH (libssh2 1.10) signs only with ssh-rsa (SHA-1), "
      .. "which OpenSSH 8.8 and later refuse; use %s/id_ed25519.capi (plain ssh can still use the RSA key)")
      :format(path, dir), "SSH_AUTH"
  end
  return path
end

--- The guestinfo keys that carry the data to cloud-init's VMware datasource,
--- in order: userdata, its encoding, metadata, its encoding (plain base64 on
--- one line; the old script's stray quotes are not added).
---@param data capil.test.cloudinit.Data
---@return {key: string, value: string}[]
function M.guestinfo(data)
  return {
    { key = "guestinfo.userdata", value = hash.base64_encode(data.userdata) },
    { key = "guestinfo.userdata.encoding", value = "base64" },
    { key = "guestinfo.metadata", value = hash.base64_encode(data.metadata) },
    { key = "guestinfo.metadata.encoding", value = "base64" },
  }
end

--- A Workstation/Fusion .vmx with the test data, as image-builder's
--- image-post-create-config.sh left it: 2 vCPUs (numvcpus and
--- cpuid.corespersocket "1" become "2" unless numvcpus is already "2") and,
--- unless guestinfo.userdata is present, the four guestinfo keys appended.
--- Returns the new text and what changed ({cpus = bool, guestinfo = bool}):
--- the caller takes the snapshots `2cpu` and `cloudinit` after each change.
---@param text string the .vmx
---@param data capil.test.cloudinit.Data
---@return string text, {cpus: boolean, guestinfo: boolean} changed
function M.vmx(text, data)
  local changed = { cpus = false, guestinfo = false }
  local function has(key, value)
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      local k, v = line:match('^%s*([%w%._:%-]+)%s*=%s*"(.-)"%s*$')
      if k and k:lower() == key and (value == nil or v == value) then return true end
    end
    return false
  end
  if not has("numvcpus", "2") then
    local n
    text, n = text:gsub('(\n?%s*[nN][uU][mM][vV][cC][pP][uU][sS]%s*=%s*)"1"', '%1"2"')
    local m
    -- VMware's keys ignore case: cpuid.coresPerSocket as Workstation writes it
    text, m = text:gsub('(\n?%s*[cC][pP][uU][iI][dD]%.[cC][oO][rR][eE][sS][pP][eE][rR][sS][oO][cC][kK][eE][tT]%s*=%s*)"1"',
      '%1"2"')
    changed.cpus = n + m > 0
  end
  if not has("guestinfo.userdata") then
    if text ~= "" and text:sub(-1) ~= "\n" then text = text .. "\n" end
    for _, kv in ipairs(M.guestinfo(data)) do text = text .. ('%s = "%s"\n'):format(kv.key, kv.value) end
    changed.guestinfo = true
  end
  return text, changed
end

--- Writes a NoCloud seed ISO (volume `cidata`, Joliet + Rock Ridge, as
--- image-builder's cloudinit/Makefile made with genisoimage) at `path`;
--- written beside it under a temp name and renamed when complete.
---@param data capil.test.cloudinit.Data
---@param path string
---@return string|nil path, string? err, string? code
function M.seed_iso(data, path)
  local dir, derr, dcode = fs.tempdir({ parent = fs.dirname(path), prefix = ".cidata" })
  if not dir then return nil, derr, dcode end
  local ok, err, code = fs.write(dir .. "/user-data", data.userdata)
  if ok then ok, err, code = fs.write(dir .. "/meta-data", data.metadata) end
  local tmp = path .. ".tmp"
  if ok then ok, err, code = require("capil.build.installer").make_iso(dir, tmp, "cidata") end
  fs.remove(dir, { recursive = true })
  if ok then ok, err, code = fs.rename(tmp, path) end
  if not ok then
    fs.remove(tmp)
    return nil, "cloudinit: seed ISO " .. path .. ": " .. tostring(err), code
  end
  return path
end

return M
