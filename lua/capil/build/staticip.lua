--- capil.build.staticip — a static address for the build VM, for networks
--- without DHCP (image-builder issue 1681): `build_ip` (`10.0.2.15` with
--- `build_netmask`, or `10.0.2.15/24`), `build_gateway`, `build_dns` (a list
--- or comma-separated). Pure: the schema checks the values with
--- M.check_*, plan.resolve puts M.resolve's facts in the plan, and the
--- pipeline renders M.template_vars into the installer files (preseed
--- netcfg, kickstart `network`, autoinstall `network:`, Photon's ks.json
--- `network`) and M.boot_args into the boot command of an installer that
--- fetches its answer file over HTTP. IPv4 only.
local M = {}

--- The four octets of a dotted quad, or nil.
---@param s string
---@return integer[]|nil
function M.octets(s)
  if type(s) ~= "string" then return nil end
  local parts = { s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts ~= 4 then return nil end
  local o = {}
  for i, p in ipairs(parts) do
    -- no leading zeros: 010 is octal to some parsers, decimal to others
    if #p > 3 or (#p > 1 and p:sub(1, 1) == "0") or tonumber(p) > 255 then return nil end
    o[i] = tonumber(p)
  end
  return o
end

--- The prefix length of a netmask (255.255.255.0 → 24), or nil when the
--- mask's ones are not contiguous.
function M.mask_prefix(mask)
  local o = M.octets(mask)
  if not o then return nil end
  local n = (o[1] << 24) | (o[2] << 16) | (o[3] << 8) | o[4]
  local prefix = 0
  while prefix < 32 and (n & (1 << (31 - prefix))) ~= 0 do prefix = prefix + 1 end
  local want = prefix == 0 and 0 or ((0xffffffff << (32 - prefix)) & 0xffffffff)
  if n ~= want then return nil end
  return prefix
end

--- The netmask of a prefix length (24 → 255.255.255.0).
function M.prefix_mask(prefix)
  local n = prefix == 0 and 0 or ((0xffffffff << (32 - prefix)) & 0xffffffff)
  return ("%d.%d.%d.%d"):format((n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255)
end

-- the schema's checks: nil and why, or true
local EXPECT_ADDR = "expected an IPv4 address (10.0.2.15)"

--- build_ip: an address, optionally with /prefix (1 to 32).
function M.check_ip(v)
  local addr, prefix = v:match("^([^/]+)/(%d+)$")
  if not addr then addr = v end
  if not M.octets(addr) then
    return nil, ("%s or an address with its prefix length (10.0.2.15/24), got %q"):format(EXPECT_ADDR, v)
  end
  if prefix and (tonumber(prefix) < 1 or tonumber(prefix) > 32) then
    return nil, ("the prefix length must be 1 to 32, got %q"):format(v)
  end
  return true
end

--- build_netmask: a dotted netmask (contiguous ones) or a prefix length.
function M.check_netmask(v)
  if v:match("^%d+$") then
    local n = tonumber(v)
    if n >= 1 and n <= 32 then return true end
  elseif M.mask_prefix(v) and v ~= "0.0.0.0" then
    return true
  end
  return nil, ("expected a netmask (255.255.255.0) or a prefix length (24), got %q"):format(v)
end

--- build_gateway: an address.
function M.check_address(v)
  if M.octets(v) then return true end
  return nil, ("%s, got %q"):format(EXPECT_ADDR, v)
end

--- build_dns entries, each possibly comma-separated, as one list.
---@param list string[]
---@return string[]
function M.dns_list(list)
  local out = {}
  for _, item in ipairs(list or {}) do
    for part in item:gmatch("[^,%s]+") do out[#out + 1] = part end
  end
  return out
end

--- build_dns: a list of addresses (or comma-separated).
function M.check_dns(v)
  for _, a in ipairs(M.dns_list(v)) do
    if not M.octets(a) then return nil, ("%s for each name server, got %q"):format(EXPECT_ADDR, a) end
  end
  return true
end

--- The static address of a configuration (capil.build.config), or nil when
--- build_ip is not set. Returns nil and a message when build_ip has no
--- prefix length and build_netmask is missing, or the gateway is outside
--- the network.
---@param cfg table
---@return table|nil ip {address, prefix, netmask, cidr, gateway?, dns: string[], keep: boolean}, string? err
function M.resolve(cfg)
  local ip = cfg:get("build.ip")
  if ip == nil or ip == "" then return nil end
  local addr, prefix = ip:match("^([^/]+)/(%d+)$")
  if addr then
    prefix = tonumber(prefix)
  else
    addr = ip
    local mask = cfg:get("build.netmask")
    if mask == nil or mask == "" then
      return nil, ("build_ip: %s has no prefix length: set build_netmask or write it as %s/24"):format(ip, ip)
    end
    prefix = mask:match("^%d+$") and tonumber(mask) or M.mask_prefix(mask)
  end
  local gateway = cfg:get("build.gateway")
  if gateway == "" then gateway = nil end
  if gateway then
    local function net(s)
      local o = M.octets(s)
      local n = (o[1] << 24) | (o[2] << 16) | (o[3] << 8) | o[4]
      return prefix == 0 and 0 or (n >> (32 - prefix))
    end
    if net(gateway) ~= net(addr) then
      return nil, ("build_gateway: %s is not on the network of build_ip %s/%d"):format(gateway, addr, prefix)
    end
  end
  return {
    address = addr, prefix = prefix, netmask = M.prefix_mask(prefix), cidr = ("%s/%d"):format(addr, prefix),
    gateway = gateway, dns = M.dns_list(cfg:get("build.dns")), keep = cfg:get("build.keep_static_ip") == true,
  }
end

--- The installer family whose answer file the build uses: by the
--- installer files' names (preseed*, ks.cfg, ks.json, user-data), else by
--- the boot command (d-i's `preseed` or `auto=true`), else by the recipe's
--- distribution (Debian: d-i) and family: preseed, kickstart, autoinstall
--- or photon.
---@param cfg table
---@return string
function M.installer_kind(cfg)
  local files = {}
  for _, f in ipairs(cfg:get("installer.files") or {}) do files[#files + 1] = f end
  for _, f in ipairs(cfg:get("installer.cd_files") or {}) do files[#files + 1] = f end
  for _, f in ipairs(files) do
    local base = f:match("([^/]*)$")
    if base:match("^preseed") then return "preseed" end
    if base:match("%.cfg$") and base:match("^ks") then return "kickstart" end
    if base:match("%.json$") and base:match("^ks") then return "photon" end
    if base == "user-data" then return "autoinstall" end
  end
  local command = table.concat(cfg:get("boot.command") or {}):lower()
  if command:find("preseed", 1, true) or command:find("auto=true", 1, true) then return "preseed" end
  if cfg:get("distro.name") == "debian" then return "preseed" end
  local family = cfg:get("distro.family")
  if family == "redhat" then return "kickstart" end
  if family == "photon" then return "photon" end
  return "autoinstall"
end

--- The variables the shipped installer templates use (empty or DHCP when
--- `ip` is nil, so a build without a static address renders as before):
--- preseed_network (d-i netcfg lines), kickstart_network (the `network`
--- command's boot protocol options), autoinstall_network (the autoinstall
--- `network:` key, netplan v2 with DHCP off), photon_network (ks.json's
--- `"network": {...},` member).
---@param ip table|nil from M.resolve
---@return table<string, string>
function M.template_vars(ip)
  if not ip then
    return { preseed_network = "", kickstart_network = "--bootproto=dhcp", autoinstall_network = "",
      photon_network = "" }
  end
  local dns = table.concat(ip.dns, " ")
  local preseed = {
    "d-i netcfg/disable_autoconfig boolean true",
    "d-i netcfg/dhcp_failed note",
    "d-i netcfg/dhcp_options select Configure network manually",
    "d-i netcfg/get_ipaddress string " .. ip.address,
    "d-i netcfg/get_netmask string " .. ip.netmask,
  }
  if ip.gateway then preseed[#preseed + 1] = "d-i netcfg/get_gateway string " .. ip.gateway end
  if #ip.dns > 0 then preseed[#preseed + 1] = "d-i netcfg/get_nameservers string " .. dns end
  preseed[#preseed + 1] = "d-i netcfg/confirm_static boolean true"

  local ks = ("--bootproto=static --ip=%s --netmask=%s"):format(ip.address, ip.netmask)
  if ip.gateway then ks = ks .. " --gateway=" .. ip.gateway end
  if #ip.dns > 0 then ks = ks .. " --nameserver=" .. table.concat(ip.dns, ",") end

  local ai = {
    "  network:",
    "    version: 2",
    "    ethernets:",
    "      capil0:",
    "        match:",
    "          name: \"e*\"",
    "        dhcp4: false",
    "        dhcp6: false",
    "        addresses: [" .. ip.cidr .. "]",
  }
  if ip.gateway then
    ai[#ai + 1] = "        routes:"
    ai[#ai + 1] = "          - to: default"
    ai[#ai + 1] = "            via: " .. ip.gateway
  end
  if #ip.dns > 0 then
    ai[#ai + 1] = "        nameservers:"
    ai[#ai + 1] = "          addresses: [" .. table.concat(ip.dns, ", ") .. "]"
  end

  local ph = ('  "network": {"type": "static", "ip_addr": "%s", "netmask": "%s"'):format(ip.address, ip.netmask)
  if ip.gateway then ph = ph .. (', "gateway": "%s"'):format(ip.gateway) end
  if #ip.dns > 0 then ph = ph .. (', "nameserver": "%s"'):format(ip.dns[1]) end
  ph = ph .. "},"

  return { preseed_network = table.concat(preseed, "\n"), kickstart_network = ks,
    autoinstall_network = table.concat(ai, "\n"), photon_network = ph }
end

--- The kernel arguments an installer of `kind` needs to configure the
--- address before it fetches its answer file over HTTP (d-i's netcfg
--- preseeding, dracut's `ip=` and `nameserver=`, casper's klibc `ip=`
--- with its DNS fields), or nil for an installer that needs none (Photon:
--- its answer file comes from a CD).
---@param ip table from M.resolve
---@param kind string M.installer_kind
---@return string|nil
function M.boot_args(ip, kind)
  local gw = ip.gateway or ""
  if kind == "preseed" then
    local a = { "netcfg/disable_autoconfig=true", "netcfg/get_ipaddress=" .. ip.address,
      "netcfg/get_netmask=" .. ip.netmask }
    if ip.gateway then a[#a + 1] = "netcfg/get_gateway=" .. ip.gateway end
    if #ip.dns > 0 then a[#a + 1] = "netcfg/get_nameservers=" .. table.concat(ip.dns, ",") end
    a[#a + 1] = "netcfg/confirm_static=true"
    return table.concat(a, " ")
  elseif kind == "kickstart" then
    local a = { ("ip=%s::%s:%s:::none"):format(ip.address, gw, ip.netmask) }
    for _, d in ipairs(ip.dns) do a[#a + 1] = "nameserver=" .. d end
    return table.concat(a, " ")
  elseif kind == "autoinstall" then
    return ("ip=%s::%s:%s:::off:%s:%s"):format(ip.address, gw, ip.netmask, ip.dns[1] or "", ip.dns[2] or "")
  end
  return nil
end

--- `command` (a boot command template) with `args` typed before the first
--- `<enter>` after the last mention of the installer server (where the
--- kernel line that fetches the answer file ends); nil when the command
--- names no server or has no such `<enter>`.
---@param command string
---@param args string
---@return string|nil
function M.insert_boot_args(command, args)
  local lower = command:lower()
  local last
  for _, pat in ipairs({ "httpip", "httpport", "http_ip", "http_port" }) do
    local init = 1
    while true do
      local s, e = lower:find(pat, init, true)
      if not s then break end
      if not last or e > last then last = e end
      init = e + 1
    end
  end
  if not last then return nil end
  local at = lower:find("<enter>", last, true)
  if not at then return nil end
  local before = command:sub(1, at - 1)
  -- a kernel line ends its installer options with " -- " (debian-installer)
  -- or " --- " (casper): the arguments go before it
  local seg = command:sub(last, at - 1)
  local dd = seg:find(" %-%-%-? ") or seg:find(" %-%-%-?$")
  if dd then
    dd = last + dd - 1
    return command:sub(1, dd) .. args .. command:sub(dd)
  end
  local sep = before:match("%s$") and "" or " "
  return before .. sep .. args .. command:sub(at)
end

return M
