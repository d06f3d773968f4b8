-- sysprep: make the image generic before it is shut down and packed
-- (image-builder's sysprep role): no machine identity, host keys, logs,
-- caches or build-user access left behind.
--
-- The last steps remove the build user's authorized_keys and lock its
-- password (image-builder locked it in Packer's shutdown_command): the
-- executor must keep its SSH session open from here to the shutdown.

-- Exactly image-builder's /etc/hosts.
local HOSTS = "::1\t       localhost ip6-localhost ip6-loopback\n127.0.0.1  localhost localhost.local\n"

-- hostnamectl writes the static name to /etc/hostname as well: where it
-- runs relative to "truncate the hostname file" decides what the image's
-- /etc/hostname holds.
local function set_hostname()
  return { name = "set the hostname to localhost.local", shell = "hostnamectl set-hostname localhost.local" }
end

local function basename(p)
  return p:match("([^/]+)/*$") or p
end

-- Undo setup's repository changes: drop the extra repos when asked, and
-- put the public ones back (reenable_public_repos defaults to true).
local function repo_steps(steps, dirs, suffix)
  local extra = words("extra_repos")
  if flag("remove_extra_repos", false) and #extra > 0 then
    local files = {}
    for _, r in ipairs(extra) do files[#files + 1] = quote(dirs[#dirs] .. "/" .. basename(r)) end
    steps[#steps + 1] = { name = "remove extra repositories", shell = "rm -f " .. table.concat(files, " ") }
  end
  if flag("disable_public_repos", false) and flag("reenable_public_repos", true) then
    local globs = {}
    for _, d in ipairs(dirs) do
      for _, g in ipairs(type(suffix) == "table" and suffix or { suffix }) do
        globs[#globs + 1] = d .. "/" .. g .. ".disabled"
      end
    end
    steps[#steps + 1] = {
      name = "re-enable public repositories",
      shell = "for f in " .. table.concat(globs, " ") .. "; do\n"
        .. "  [ -e \"$f\" ] || continue\n"
        .. "  mv \"$f\" \"${f%.disabled}\"\n"
        .. "done",
    }
  end
end

-- What Ubuntu's live-server installer (subiquity, 22.04 and later) leaves
-- in cloud-init's configuration for the first boot: 99-installer.cfg pins
-- the datasource to the install's (NoCloud; it also outranks the providers
-- role's 99-capil-datasource.cfg), the others turn off cloud-init's
-- network configuration and keep the install's apt sources. image-builder
-- issue 1104 (22.04 images came up on NoCloud); the files its sysprep
-- role removes (roles/sysprep/tasks/debian.yml, 2026).
local SUBIQUITY_CLOUD_CFG = {
  "/etc/cloud/cloud.cfg.d/99-installer.cfg",
  "/etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg",
  "/etc/cloud/cloud.cfg.d/00-subiquity-disable-cloudinit-networking.cfg",
  "/etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg",
  "/etc/cloud/cloud.cfg.d/90-installer-network.cfg",
  "/etc/cloud/ds-identify.cfg",
}

local function debian(ctx, steps)
  local major = tonumber((ctx.os.version or ""):match("^(%d+)%.")) or 0
  if ctx.os.distro == "ubuntu" and major >= 22 then
    steps[#steps + 1] = {
      name = "remove the installer's cloud-init configuration (datasource, network, sources)",
      shell = "rm -f " .. table.concat(SUBIQUITY_CLOUD_CFG, " "),
    }
  end
  repo_steps(steps, { "/etc/apt", "/etc/apt/sources.list.d" }, { "*.list", "*.sources" })
  steps[#steps + 1] = { name = "stop rsyslog", shell = "systemctl stop rsyslog || true" }
  steps[#steps + 1] = {
    name = "remove unneeded packages and the apt cache", env = { DEBIAN_FRONTEND = "noninteractive" },
    shell = "set -e\napt-get -y autoremove\napt-get -y clean",
  }
  steps[#steps + 1] = {
    name = "remove apt package lists",
    shell = "set -e\nrm -rf /var/lib/apt/lists\nmkdir -m 0755 /var/lib/apt/lists",
  }
  steps[#steps + 1] = {
    name = "disable apt-daily",
    shell = "for u in apt-daily.service apt-daily.timer apt-daily-upgrade.service apt-daily-upgrade.timer; do\n"
      .. "  systemctl stop \"$u\" || true\n"
      .. "  systemctl disable \"$u\" || true\n"
      .. "done",
  }
  steps[#steps + 1] = {
    name = "disable unattended upgrades",
    only_if = "dpkg-query -W -f='${Status}' unattended-upgrades 2>/dev/null | grep -q ' installed$'",
    shell = "systemctl stop unattended-upgrades || true\nsystemctl disable unattended-upgrades",
  }
  steps[#steps + 1] = {
    name = "reset network interface names",
    shell = "rm -f /etc/udev/rules.d/70-persistent-net.rules",
  }
end

local function redhat(steps)
  repo_steps(steps, { "/etc/yum.repos.d" }, "*.repo")
  steps[#steps + 1] = {
    name = "remove unneeded packages and the yum cache",
    shell = "set -e\nyum -y autoremove\nyum -y clean all\nrm -rf /var/cache/yum",
  }
  steps[#steps + 1] = {
    name = "reset network interface IDs",
    shell = "for f in /etc/sysconfig/network-scripts/ifcfg-*; do\n"
      .. "  [ -e \"$f\" ] && sed -i '/^\\(HWADDR\\|UUID\\)=/d' \"$f\"\n"
      .. "done; true",
  }
  steps[#steps + 1] = { name = "remove the kickstart log", shell = "rm -f /root/anaconda-ks.cfg" }
end

local function photon(steps)
  -- before the hostname file is truncated (image-builder's photon tasks
  -- begin with it): Photon's /etc/hostname ends empty
  steps[#steps + 1] = set_hostname()
  steps[#steps + 1] = {
    name = "accept input in the saved iptables rules",
    shell = "for f in /etc/systemd/scripts/ip4save /etc/systemd/scripts/ip6save; do\n"
      .. "  [ -e \"$f\" ] && sed -i 's/INPUT DROP/INPUT ACCEPT/' \"$f\"\n"
      .. "done; true",
  }
  steps[#steps + 1] = { name = "remove the kickstart log", shell = "rm -f /root/anaconda-ks.cfg" }
  repo_steps(steps, { "/etc/yum.repos.d" }, "*.repo")
  steps[#steps + 1] = { name = "remove the tdnf cache", shell = "tdnf -y clean all" }
  steps[#steps + 1] = { name = "lock the root account", shell = "usermod -L root" }
end

-- The build VM's static address (build_ip, for networks without DHCP)
-- stays out of the image unless build_keep_static_ip: the configuration the
-- installer wrote for it goes back to DHCP, for every network stack the
-- installers write: ifupdown (d-i, the test OS), netplan (subiquity, d-i on
-- 18.04 and later), ifcfg (anaconda on CentOS 7), NetworkManager keyfiles
-- (Rocky 9) and systemd-networkd (Photon). Files only: the build's SSH
-- session keeps its address until the shutdown. Each reset file is named
-- in the build log with what it held.
local function dhcp_restore(address)
  local ip = quote(address)
  return {
    name = "restore DHCP (remove the build's static address " .. address .. ")",
    shell = table.concat({
      "ip=" .. ip,
      "n=0",
      "for f in /etc/network/interfaces /etc/network/interfaces.d/*; do",
      "  [ -f \"$f\" ] || continue",
      "  grep -Eq '^[[:space:]]*iface[[:space:]]+[^[:space:]]+[[:space:]]+inet[[:space:]]+static' \"$f\" || continue",
      "  echo \"restoring DHCP in $f (was: $(grep -E '^[[:space:]]*(iface|address)[[:space:]]' \"$f\""
        .. " | grep -v loopback | tr -s ' \\n' '  '))\"",
      "  sed -i -E -e 's/^([[:space:]]*iface[[:space:]]+[^[:space:]]+[[:space:]]+inet[[:space:]]+)static/\\1dhcp/'"
        .. " -e '/^[[:space:]]+(address|netmask|gateway|network|broadcast|dns-nameservers|dns-search)[[:space:]]/d' \"$f\"",
      "  n=$((n + 1))",
      "done",
      "for f in /etc/netplan/*.yaml /etc/netplan/*.yml; do",
      "  [ -f \"$f\" ] && grep -Fq \"$ip\" \"$f\" || continue",
      "  echo \"restoring DHCP in $f (netplan)\"",
      "  printf 'network:\\n  version: 2\\n  ethernets:\\n    capil0:\\n      match:\\n        name: \"e*\"\\n"
        .. "      dhcp4: true\\n' > \"$f\"",
      "  chmod 0600 \"$f\"",
      "  n=$((n + 1))",
      "done",
      "for f in /etc/sysconfig/network-scripts/ifcfg-*; do",
      "  [ -f \"$f\" ] && grep -Eq \"^IPADDR=\\\"?$ip\\\"?\\$\" \"$f\" || continue",
      "  echo \"restoring DHCP in $f (ifcfg)\"",
      "  sed -i -E -e 's/^BOOTPROTO=.*/BOOTPROTO=dhcp/' -e '/^(IPADDR|PREFIX|NETMASK|GATEWAY|DNS[0-9]+)=/d' \"$f\"",
      "  n=$((n + 1))",
      "done",
      "for f in /etc/NetworkManager/system-connections/*.nmconnection; do",
      "  [ -f \"$f\" ] && grep -Eq \"^address[0-9]*=$ip[/,;]\" \"$f\" || continue",
      "  echo \"restoring DHCP in $f (NetworkManager)\"",
      "  sed -i -E -e '/^\\[ipv4\\]/,/^\\[/{s/^method=manual/method=auto/;/^(address[0-9]*|gateway|dns|dns-search)=/d}' \"$f\"",
      "  n=$((n + 1))",
      "done",
      "for f in /etc/systemd/network/*.network; do",
      "  [ -f \"$f\" ] && grep -Eq \"^Address=$ip(/|\\$)\" \"$f\" || continue",
      "  echo \"restoring DHCP in $f (systemd-networkd)\"",
      "  printf '[Match]\\nName=e*\\n\\n[Network]\\nDHCP=yes\\n' > \"$f\"",
      "  n=$((n + 1))",
      "done",
      "echo \"static address $ip: $n network configuration file(s) restored to DHCP\"",
    }, "\n"),
  }
end

return function(ctx)
  local family = ctx.os.family
  local user = var("ssh_username", "builder")
  local qu = quote(user)
  local home = "\"$(getent passwd " .. qu .. " | cut -d: -f6)\""
  -- Red Hat and Photon ship these read-only or group-unreadable.
  local machine_id_mode = family == "debian" and "0644" or "0444"
  local lastlog_mode = family == "debian" and "0664" or "0644"

  local steps = {}
  local build_ip = var("build_ip", ""):match("^[^/]+") or ""
  if build_ip ~= "" and not flag("build_keep_static_ip", false) then steps[#steps + 1] = dhcp_restore(build_ip) end
  if family == "debian" then debian(ctx, steps)
  elseif family == "redhat" then redhat(steps)
  else photon(steps) end

  steps[#steps + 1] = {
    name = "truncate the machine id",
    shell = "set -e\nrm -f /etc/machine-id\ntouch /etc/machine-id\nchown root:root /etc/machine-id\n"
      .. "chmod " .. machine_id_mode .. " /etc/machine-id",
  }
  steps[#steps + 1] = {
    name = "truncate the hostname file",
    shell = "set -e\nrm -f /etc/hostname\ntouch /etc/hostname\nchown root:root /etc/hostname\nchmod 0644 /etc/hostname",
  }
  -- Debian and Red Hat set the name after the truncation, so their
  -- /etc/hostname holds "localhost.local"; Photon set it first and ends
  -- with an empty file (see photon()). Both as image-builder did.
  if family ~= "photon" then steps[#steps + 1] = set_hostname() end
  steps[#steps + 1] = {
    name = "reset the hosts file",
    copy = { dest = "/etc/hosts", content = HOSTS, mode = "0644", owner = "root:root" },
  }
  steps[#steps + 1] = {
    name = "remove cloud-init state and logs",
    shell = "rm -rf /var/lib/cloud /var/log/cloud-init.log /var/log/cloud-init-output.log /var/run/cloud-init",
  }
  steps[#steps + 1] = { name = "remove swap files", shell = "rm -f /swapfile /mnt/resource/swapfile" }
  local logs = {
    "set -e",
    "rm -rf /var/log",
    "mkdir -m 0755 /var/log /var/log/sa",
    "for f in /var/log/wtmp /var/log/lastlog; do touch \"$f\"; chown root:utmp \"$f\"; done",
    "chmod 0664 /var/log/wtmp",
    "chmod " .. lastlog_mode .. " /var/log/lastlog",
  }
  if var("kubernetes_semver", "") ~= "" then
    logs[#logs + 1] = "mkdir -m 0755 /var/log/kubernetes"
    logs[#logs + 1] = "touch /var/log/kubernetes/audit.log"
    logs[#logs + 1] = "chmod 0600 /var/log/kubernetes/audit.log"
    if family == "photon" then logs[#logs + 1] = "mkdir -m 0640 /var/log/audit" end
  end
  steps[#steps + 1] = { name = "recreate /var/log (empty wtmp and lastlog)", shell = table.concat(logs, "\n") }
  steps[#steps + 1] = { name = "remove SSH host keys", shell = "rm -f /etc/ssh/ssh_host_*" }
  steps[#steps + 1] = { name = "remove capil's state", shell = "rm -rf /var/lib/capil" }
  steps[#steps + 1] = {
    name = "truncate shell history",
    shell = "rm -f /root/.bash_history\nh=" .. home .. "\n[ -z \"$h\" ] || rm -f \"$h/.bash_history\"",
  }
  steps[#steps + 1] = {
    name = "empty /tmp and /var/tmp",
    shell = "find /tmp /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +",
  }
  steps[#steps + 1] = {
    name = "remove SSH authorized keys",
    shell = "rm -f /root/.ssh/authorized_keys\nh=" .. home .. "\n[ -z \"$h\" ] || rm -f \"$h/.ssh/authorized_keys\"",
  }
  steps[#steps + 1] = { name = "lock the build user's password", shell = "usermod -L " .. qu }
  return steps
end
