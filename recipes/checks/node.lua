-- node checks: what image-builder's goss specs verified in an OVA node
-- image (goss-command, goss-kernel-params, goss-service, goss-package and
-- goss-vars for PROVIDER=ova), plus the version file capil writes.
-- kubernetes_source_type "skip" leaves out everything Kubernetes.

-- Packages every node of a family has (goss-vars' common lists).
local COMMON = {
  debian = { "apt-transport-https", "conntrack", "conntrackd", "curl", "ebtables", "jq", "gnupg",
    "libnetfilter-acct1", "libnetfilter-cttimeout1", "libnetfilter-log1", "linux-cloud-tools-virtual",
    "linux-tools-virtual", "ntp", "open-vm-tools", "python3-distutils", "python3-netifaces", "python3-pip", "socat" },
  redhat = { "ca-certificates", "conntrack-tools", "curl", "ebtables", "jq", "ntp", "open-vm-tools",
    "python-netifaces", "python-requests", "socat", "yum-utils" },
  photon = { "audit", "conntrack-tools", "distrib-compat", "ebtables", "jq", "net-tools", "ntp", "openssl-c_rehash",
    "open-vm-tools", "python-netifaces", "python3-pip", "python-requests", "rng-tools", "socat", "tar", "unzip" },
}

-- The OVA provider's packages (VMware Tools and cloud-init's helpers).
local OVA = {
  debian = { "open-vm-tools", "cloud-guest-utils", "cloud-initramfs-copymods", "cloud-initramfs-dyn-netconf",
    "cloud-initramfs-growroot" },
  redhat = { "open-vm-tools", "cloud-init", "cloud-utils-growpart", "python2-pip" },
  photon = { "open-vm-tools", "cloud-init", "cloud-utils", "python3-netifaces" },
}

-- The current releases' lists, as the setup and providers roles install
-- them (image-builder's roles/node/defaults, 2026): Red Hat 8 and later,
-- Photon 5; Ubuntu 24.04 has no python3-distutils.
local COMMON_EL8 = { "audit", "ca-certificates", "conntrack-tools", "chrony", "curl", "jq", "nftables",
  "open-vm-tools", "python3-netifaces", "python3-pip", "python3-requests", "socat", "sysstat", "yum-utils" }
local OVA_EL8 = { "open-vm-tools", "cloud-init", "cloud-utils-growpart" }
local COMMON_PHOTON5 = { "audit", "apparmor-parser", "chrony", "conntrack-tools", "curl", "distrib-compat",
  "ebtables", "jq", "logrotate", "net-tools", "openssl-c_rehash", "open-vm-tools", "python3-pip", "rng-tools",
  "socat", "tar", "unzip" }

-- The package lists of this release.
local function package_lists(os_)
  local major = tonumber(tostring(os_.version or ""):match("^(%d+)")) or 0
  local family = os_.family
  if family == "redhat" and major >= 8 then return COMMON_EL8, OVA_EL8 end
  if family == "photon" and major >= 5 then return COMMON_PHOTON5, OVA.photon end
  if family == "debian" and os_.distro == "ubuntu" and major >= 24 then
    local common = {}
    for _, p in ipairs(COMMON.debian) do
      if p ~= "python3-distutils" then common[#common + 1] = p end
    end
    return common, OVA.debian
  end
  return COMMON[family], OVA[family]
end

local KERNEL_PARAMS = {
  { "net.bridge.bridge-nf-call-iptables", "1" },
  { "net.ipv6.conf.all.forwarding", "1" },
  { "net.ipv6.conf.all.disable_ipv6", "0" },
  { "net.ipv4.ip_forward", "1" },
  { "net.bridge.bridge-nf-call-ip6tables", "1" },
}

-- Image names from `crictl images`, registry and arch suffix removed, sorted.
local CRICTL_IMAGES = "crictl images | grep -v 'IMAGE ID' | awk -F'[ /]' '{print $2}' | sed 's/-amd64//g' | sort"

-- "v1.16.14" -> "1.16.14"
local function bare(v)
  return (v:gsub("^v", ""))
end

return function(ctx)
  local family = ctx.os.family
  local source = var("kubernetes_source_type", "pkg")
  local cni_source = var("kubernetes_cni_source_type", "pkg")
  local kube = source ~= "skip"
  local checks = {}
  local function add(c) checks[#checks + 1] = c end

  local containerd_version = var("containerd_version", "")
  add({
    command = "containerd --version", exit = 0,
    stdout_matches = containerd_version ~= "" and ("v" .. escape_pattern(containerd_version) .. "%f[^%w.]") or nil,
  })
  -- containerd 2.x (the containerd role's release path): runc from its own
  -- release and the config version 3 image-builder writes for 2.x
  if (tonumber(containerd_version:match("^v?(%d+)%.")) or 1) >= 2 then
    local runc = var("runc_version", ""):gsub("^v", "")
    add({
      command = "/usr/local/sbin/runc --version", exit = 0,
      stdout_matches = runc ~= "" and ("^runc version " .. escape_pattern(runc) .. "\n") or nil,
    })
    add({ file = "/etc/containerd/config.toml", exists = true, mode = "0644", contains = "version = 3" })
  end
  add({ command = "crictl ps", exit = 0 })

  if kube then
    if source == "pkg" or flag("kubernetes_load_additional_imgs", false) then
      add({ name = "control-plane images pulled", command = CRICTL_IMAGES, exit = 0,
        stdout_lines = { "coredns", "etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy",
          "kube-scheduler", "pause" } })
    else
      add({ name = "control-plane images imported", command = CRICTL_IMAGES, exit = 0,
        stdout_lines = { "kube-apiserver", "kube-controller-manager", "kube-proxy", "kube-scheduler" } })
    end
    if source == "http" then
      local v = bare(var("kubernetes_semver"))
      for _, cmd in ipairs({
        "kubectl version --client=true -o json | jq -r .clientVersion.gitVersion",
        "kubeadm version -o json | jq -r .clientVersion.gitVersion",
        "kubelet --version | awk '{print $2}'",
      }) do
        add({ command = cmd, exit = 0, stdout_matches = "^v" .. escape_pattern(v) .. "%s*$" })
      end
      if cni_source == "http" then
        add({ command = "/opt/cni/bin/host-device 2>&1 | awk '{print $4}'", exit = 0,
          stdout_matches = "v" .. escape_pattern(bare(var("kubernetes_cni_semver"))) })
      end
    end
  end

  for _, kv in ipairs(KERNEL_PARAMS) do add({ kernel_param = kv[1], value = kv[2] }) end
  if family == "photon" then add({ kernel_param = "net.ipv4.tcp_limit_output_bytes", value = "524288" }) end

  add({ service = "containerd", enabled = true, running = true })
  add({ service = "dockerd", enabled = false, running = false })
  if kube then add({ service = "kubelet", enabled = true, running = false }) end

  add({ package = "cloud-init" })
  if kube and source == "pkg" then
    local v = family == "debian" and var("kubernetes_deb_version") or var("kubernetes_rpm_version")
    for _, p in ipairs({ "kubeadm", "kubelet", "kubectl" }) do add({ package = p, version = v }) end
    -- unpinned (empty) from v1.24: whichever build kubelet depends on
    local cni = family == "debian" and var("kubernetes_cni_deb_version", "") or var("kubernetes_cni_rpm_version", "")
    add({ package = "kubernetes-cni", version = cni ~= "" and cni or nil })
  end
  local seen = { ["cloud-init"] = true }
  for _, list in ipairs({ package_lists(ctx.os) }) do
    for _, p in ipairs(list) do
      if not seen[p] then
        seen[p] = true
        add({ package = p })
      end
    end
  end

  if kube then
    add({ file = "/etc/kubernetes-version", exists = true, mode = "0644", contains = var("kubernetes_semver") })
  end
  return checks
end
