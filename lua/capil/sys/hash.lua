--- capil.sys.hash — digests, file hashing, HMAC, RS256 signatures, random
--- bytes and the hex/base64/base64url codecs (OpenSSL underneath).
---
--- Algorithms: "sha256" (the default), "sha512", "sha384", "sha224",
--- "sha1", "md5" and "crc32c". Every digest value comes out as "hex"
--- (lowercase, the default), "raw" bytes or "base64"; CRC32C's value is its
--- 4 bytes big-endian, so `crc32c` + "base64" is GCS's x-goog-hash form.
---
--- Misuse (unknown algorithm or format, wrong types, a finalized or closed
--- digest) raises. Failures return `nil, msg, code`: file errors with errno
--- codes ("ENOENT", "EISDIR", "EINTR"), bad PEM keys with "CRYPTO" (OpenSSL's
--- reasons, never the key), bad hex/base64 input with "DECODE".
local core = require("capil.core.hash")

local M = {}

M.new = core.new
M.digest = core.digest
M.hmac = core.hmac
M.random = core.random
M.base64_encode = core.base64_encode
M.base64_decode = core.base64_decode
M.base64url_encode = core.base64url_encode
M.base64url_decode = core.base64url_decode
M.hex_encode = core.hex_encode
M.hex_decode = core.hex_decode

--- A random (version 4) UUID in its text form, lower case.
---@return string
function M.uuid()
  local b = { core.random(16):byte(1, 16) }
  b[7] = (b[7] & 0x0f) | 0x40
  b[9] = (b[9] & 0x3f) | 0x80
  local h = ("%02x"):rep(16):format(table.unpack(b))
  return ("%s-%s-%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20), h:sub(21, 32))
end

--- SHA-512 crypt (`$6$<salt>$<hash>`, 5000 rounds: what `openssl passwd -6
--- -salt SALT` prints and /etc/shadow, kickstart `--iscrypted`, Photon's
--- ks.json and cloud-init's `passwd` take). `salt` is 1..16 characters of
--- [./0-9A-Za-z]. Returns the hash, or nil, a message and "CRYPTO".
---@type fun(password: string, salt: string): string|nil, string?, string?
M.crypt_sha512 = core.crypt_sha512

--- A running digest: `hash.new("sha256"):update(a):update(b):final()`.
---@class capil.sys.hash.Digest
---@field update fun(self: capil.sys.hash.Digest, data: string): capil.sys.hash.Digest
---@field final fun(self: capil.sys.hash.Digest, fmt?: "hex"|"raw"|"base64"): string
---@field close fun(self: capil.sys.hash.Digest)

--- Hashes a file in C (1 MiB reads, sequential read-ahead). `alg` is one
--- name (the value is returned) or a list of names (a table name -> value is
--- returned, the file still read once). `progress` is a `log.progress{}`
--- handle, or `true` for one labelled with the file name.
---@param path string
---@param alg? string|string[]
---@param opts? {format?: "hex"|"raw"|"base64", progress?: any}
---@return string|table<string, string>|nil value, string? err, string? code
function M.file(path, alg, opts)
  if opts and opts.progress == true then
    local log = require("capil.sys.log")
    local copy = {}
    for k, v in pairs(opts) do copy[k] = v end
    local label = (type(alg) == "string" and alg or "hash") .. " " .. (path:match("[^/]*$") or path)
    copy.progress = log.progress({ label = label })
    local v, err, code = core.file(path, alg, copy)
    copy.progress:close()
    return v, err, code
  end
  return core.file(path, alg, opts)
end

--- RSASSA-PKCS1-v1_5 SHA-256 signature ("RS256") of `data` with a PEM
--- private key (PKCS#8 or PKCS#1, unencrypted), as raw bytes.
---@param pem_private_key string
---@param data string
---@return string|nil signature, string? err, string? code
function M.sign_rs256(pem_private_key, data)
  return core.sign_rs256(pem_private_key, data)
end

--- Checks an RS256 signature with a PEM public key or X.509 certificate:
--- true or false, or `nil, msg, "CRYPTO"` when the key cannot be used.
---@param pem_public string
---@param data string
---@param signature string
---@return boolean|nil valid, string? err, string? code
function M.verify_rs256(pem_public, data, signature)
  return core.verify_rs256(pem_public, data, signature)
end

--- MD5 of `data` in base64 (GCS's md5Hash / Content-MD5 form).
---@param data string
---@return string
function M.md5_base64(data)
  return core.digest("md5", data, "base64")
end

--- CRC32C of `data`, big-endian, in base64 (GCS's crc32c form).
---@param data string
---@return string
function M.crc32c_base64(data)
  return core.digest("crc32c", data, "base64")
end

--- Constant-time comparison of two strings (for MACs and tokens).
---@param a string
---@param b string
---@return boolean
function M.equal(a, b)
  if type(a) ~= "string" or type(b) ~= "string" then
    error("hash.equal: expected two strings", 2)
  end
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = diff | (a:byte(i) ~ b:byte(i)) end
  return diff == 0
end

return M
