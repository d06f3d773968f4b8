-- node: kernel modules, sysctls and swap for Kubernetes (image-builder's
-- node role; its package installs are in setup).

-- The sysctls Kubernetes networking needs, in image-builder's order.
local SYSCTLS = {
  { "net.ipv4.ip_forward", "1" },
  { "net.bridge.bridge-nf-call-iptables", "1" },
  { "net.ipv6.conf.all.forwarding", "1" },
  { "net.ipv6.conf.all.disable_ipv6", "0" },
  { "net.bridge.bridge-nf-call-ip6tables", "1" },
}

-- auditd rules watching containerd's files (Photon).
local CONTAINERD_AUDIT_RULES = [[
-w /var/lib/containerd/ -p rwxa -k containerd
-w /etc/containerd/ -p rwxa -k containerd
-w /etc/systemd/system/containerd.service -p rwxa -k containerd
-w /etc/systemd/system/containerd.service.d/ -p rwxa -k containerd
-w /run/containerd/ -p rwxa -k containerd
-w /usr/local/bin/containerd-shim -p rwxa -k containerd
-w /usr/local/bin/containerd-shim-runc-v1 -p rwxa -k containerd
-w /usr/local/bin/containerd-shim-runc-v2 -p rwxa -k containerd
-w /usr/local/sbin/runc -p rwxa -k containerd
-w /usr/local/bin/containerd -p rwxa -k containerd
]]

local HAS_SWAP = "test \"$(wc -l < /proc/swaps)\" -gt 1"

-- One shell script setting key=value in `file` (replacing an existing
-- line for the key, else appending) and applying it, as Ansible's sysctl
-- module with sysctl_set and reload does.
local function sysctl_step(name, file, params)
  local lines = { "set -e", "f=" .. quote(file), "touch \"$f\"" }
  for _, kv in ipairs(params) do
    local key, value = kv[1], kv[2]
    local re = key:gsub("%.", "\\.")
    lines[#lines + 1] = ("if grep -q '^[[:space:]]*%s[[:space:]]*=' \"$f\"; then"
      .. " sed -i 's|^[[:space:]]*%s[[:space:]]*=.*|%s=%s|' \"$f\";"
      .. " else echo %s >> \"$f\"; fi"):format(re, re, key, value, quote(key .. "=" .. value))
    lines[#lines + 1] = "sysctl -w " .. quote(key .. "=" .. value)
  end
  return { name = name, shell = table.concat(lines, "\n") }
end

return function(ctx)
  local photon = ctx.os.family == "photon"
  -- Photon reads only /etc/sysctl.d (systemd-sysctl), the others /etc/sysctl.conf too.
  local sysctl_file = photon and "/etc/sysctl.d/99-sysctl.conf" or "/etc/sysctl.conf"
  local steps = {}
  if photon then
    steps[#steps + 1] = { name = "enable and start auditd", shell = "systemctl enable --now auditd" }
    steps[#steps + 1] = {
      name = "audit rules for containerd",
      copy = { dest = "/etc/audit/rules.d/containerd.rules", content = CONTAINERD_AUDIT_RULES,
        mode = "0644", owner = "root:root" },
    }
    steps[#steps + 1] = sysctl_step("limit TCP output bytes as Ubuntu does", sysctl_file,
      { { "net.ipv4.tcp_limit_output_bytes", "524288" } })
  end
  steps[#steps + 1] = {
    name = "load overlay and br_netfilter",
    shell = "set -e\nmodprobe overlay\nmodprobe br_netfilter",
  }
  steps[#steps + 1] = {
    name = "persist kernel modules",
    copy = { dest = "/etc/modules-load.d/kubernetes.conf", content = "overlay\nbr_netfilter\n", mode = "0644" },
  }
  steps[#steps + 1] = sysctl_step("set Kubernetes sysctls", sysctl_file, SYSCTLS)
  steps[#steps + 1] = { name = "disable swap", only_if = HAS_SWAP, shell = "swapoff -a" }
  steps[#steps + 1] = { name = "comment swap out of fstab", shell = "sed -ri '/\\sswap\\s/s/^#?/#/' /etc/fstab" }
  return steps
end
