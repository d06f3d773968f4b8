-- kubernetes: kubelet, kubeadm, kubectl and the CNI plugins, pinned, plus
-- the control-plane images pre-pulled (image-builder's kubernetes role).
--
-- kubernetes_source_type:
--   "pkg"  packages from the Kubernetes apt/yum repository (pinned versions),
--          then `kubeadm config images pull`
--   "http" binaries from <kubernetes_http_source>/<semver>/bin/linux/amd64/,
--          CNI from kubernetes_cni_http_source (needs kubernetes_cni_source_type
--          "http"), images imported from the release's tarballs with ctr
--   "skip" capil only: no steps at all (images without Kubernetes, and test
--          builds that cannot reach the Kubernetes downloads)

local ARCH = "amd64"
local BINS = { "kubeadm", "kubectl", "kubelet" }
local PRIMARY_IMAGES = { "kube-apiserver.tar", "kube-controller-manager.tar", "kube-scheduler.tar", "kube-proxy.tar" }
local ADDITIONAL_IMAGES = { "pause.tar", "coredns.tar", "etcd.tar" }

-- Unit files for an http install (the packages ship the same ones).
local KUBELET_SYSCONFIG = "KUBELET_EXTRA_ARGS=\n"
local KUBELET_SERVICE = [[
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/home/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
]]
local KUBEADM_DROPIN = [[
# kubeadm's kubelet flags (kubelet >= 1.11)
[Service]
]] .. 'Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf'
  .. ' --kubeconfig=/etc/kubernetes/kubelet.conf"\n' .. [[
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# written by "kubeadm init" and "kubeadm join"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# KUBELET_EXTRA_ARGS, for the user
EnvironmentFile=-/etc/sysconfig/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
]]

local function pkg_debian()
  local v, cni = var("kubernetes_deb_version"), var("kubernetes_cni_deb_version")
  return {
    {
      name = "add the Kubernetes apt key",
      shell = "set -e\n"
        .. download(var("kubernetes_deb_gpg_key"), "/tmp/kubernetes-apt-key.gpg") .. "\n"
        .. "apt-key add /tmp/kubernetes-apt-key.gpg\nrm -f /tmp/kubernetes-apt-key.gpg",
    },
    {
      name = "add the Kubernetes apt repository",
      copy = { dest = "/etc/apt/sources.list.d/kubernetes.list", mode = "0644",
        content = "deb " .. var("kubernetes_deb_repo") .. " main\n" },
    },
    {
      name = "install kubelet, kubeadm, kubectl and kubernetes-cni", timeout = 1800,
      env = { DEBIAN_FRONTEND = "noninteractive" },
      shell = "set -e\napt-get update\napt-get install -y --allow-downgrades "
        .. quote("kubelet=" .. v) .. " " .. quote("kubeadm=" .. v) .. " " .. quote("kubectl=" .. v) .. " "
        .. quote("kubernetes-cni=" .. cni),
    },
  }
end

local function rpm_packages()
  local v, cni = var("kubernetes_rpm_version"), var("kubernetes_cni_rpm_version")
  return quote("kubelet-" .. v) .. " " .. quote("kubeadm-" .. v) .. " " .. quote("kubectl-" .. v) .. " "
    .. quote("kubernetes-cni-" .. cni)
end

local function pkg_rpm(family)
  local install = family == "photon"
    and "tdnf install -y --nogpgcheck " .. rpm_packages()
    or "yum install -y --setopt=obsoletes=0 " .. rpm_packages()
  return {
    {
      name = "add the Kubernetes yum repository",
      template = { src = "roles/templates/kubernetes.repo.tmpl", dest = "/etc/yum.repos.d/kubernetes.repo",
        mode = "0644" },
    },
    { name = "install kubelet, kubeadm, kubectl and kubernetes-cni", timeout = 1800, shell = install },
  }
end

-- "sha256:<hex>" or "sha256:<url of a checksum file>" (Ansible get_url's
-- forms); empty means no verification.
local function verify_cni(checksum, file)
  if checksum == "" then return "" end
  local alg, ref = checksum:match("^(%w+):(.+)$")
  if not alg or not ({ sha1 = true, sha256 = true, sha512 = true })[alg] then
    error("kubernetes: kubernetes_cni_http_checksum must be sha1|sha256|sha512:<sum or URL>, got '" .. checksum .. "'")
  end
  local lines = {}
  if ref:match("^https?://") then
    lines[#lines + 1] = download(ref, file .. ".sum")
    lines[#lines + 1] = "sum=$(awk '{ print $1; exit }' " .. file .. ".sum)"
    lines[#lines + 1] = "rm -f " .. file .. ".sum"
  else
    lines[#lines + 1] = "sum=" .. quote(ref)
  end
  lines[#lines + 1] = "echo \"$sum  " .. file .. "\" | " .. alg .. "sum -c -"
  return table.concat(lines, "\n") .. "\n"
end

local function http_install()
  if var("kubernetes_cni_source_type", "pkg") ~= "http" then
    error("kubernetes: kubernetes_source_type \"http\" needs kubernetes_cni_source_type \"http\"")
  end
  local semver, cni = var("kubernetes_semver"), var("kubernetes_cni_semver")
  local base = var("kubernetes_http_source") .. "/" .. semver .. "/bin/linux/" .. ARCH .. "/"
  local cni_url = var("kubernetes_cni_http_source") .. "/" .. cni .. "/cni-plugins-linux-" .. ARCH .. "-" .. cni
    .. ".tgz"
  local images = {}
  for _, i in ipairs(PRIMARY_IMAGES) do images[#images + 1] = i end
  if flag("kubernetes_load_additional_imgs", false) then
    for _, i in ipairs(ADDITIONAL_IMAGES) do images[#images + 1] = i end
  end
  local bins, imgs = { "set -e" }, { "set -e" }
  for _, b in ipairs(BINS) do
    bins[#bins + 1] = download(base .. b, "/usr/bin/" .. b)
    bins[#bins + 1] = "chmod 0755 /usr/bin/" .. b
  end
  for _, i in ipairs(images) do
    imgs[#imgs + 1] = download(base .. i, "/tmp/" .. i)
    imgs[#imgs + 1] = "ctr -n k8s.io images import /tmp/" .. i
    imgs[#imgs + 1] = "rm -f /tmp/" .. i
  end
  return {
    {
      name = "link the CRI tools into /usr/bin",
      shell = "set -e\nfor t in ctr crictl critest; do ln -sf /usr/local/bin/$t /usr/bin/$t; done",
    },
    {
      name = "install the CNI plugins into /opt/cni/bin", timeout = 1800,
      shell = "set -e\nmkdir -p -m 0755 /opt/cni/bin\n"
        .. download(cni_url, "/tmp/cni.tar.gz") .. "\n"
        .. verify_cni(var("kubernetes_cni_http_checksum", ""), "/tmp/cni.tar.gz")
        .. "tar -C /opt/cni/bin -xzf /tmp/cni.tar.gz\nrm -f /tmp/cni.tar.gz",
    },
    { name = "download kubeadm, kubectl and kubelet", timeout = 1800, shell = table.concat(bins, "\n") },
    { name = "import the Kubernetes images", timeout = 1800, shell = table.concat(imgs, "\n") },
    { name = "create /etc/kubernetes/manifests", shell = "mkdir -p -m 0755 /etc/kubernetes/manifests" },
    {
      name = "kubelet sysconfig",
      copy = { dest = "/etc/sysconfig/kubelet", content = KUBELET_SYSCONFIG, mode = "0644" },
    },
    {
      name = "kubelet kubeadm drop-in",
      copy = { dest = "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf", content = KUBEADM_DROPIN,
        mode = "0644" },
    },
    {
      name = "kubelet unit",
      copy = { dest = "/usr/lib/systemd/system/kubelet.service", content = KUBELET_SERVICE, mode = "0644" },
    },
  }
end

-- The kubeadm configuration used to pull images: capil's template unless
-- kubeadm_template names another (rendered the same way; Jinja's plain
-- `{{ name }}` substitutions work as they are).
local function kubeadm_template_src()
  local t = var("kubeadm_template", "etc/kubeadm.yml")
  if t == "etc/kubeadm.yml" then return "roles/templates/kubeadm.yml.tmpl" end
  return t
end

return function(ctx)
  local source = var("kubernetes_source_type")
  if source == "skip" then return {} end
  local steps
  if source == "pkg" then
    steps = ctx.os.family == "debian" and pkg_debian() or pkg_rpm(ctx.os.family)
  elseif source == "http" then
    steps = http_install()
  else
    error("kubernetes: kubernetes_source_type must be pkg, http or skip, got '" .. source .. "'")
  end
  -- cloud-init's kubeadm starts the kubelet on first boot.
  steps[#steps + 1] = {
    name = "enable the kubelet (not started)",
    shell = "set -e\nsystemctl daemon-reload\nsystemctl enable kubelet",
  }
  steps[#steps + 1] = {
    name = "record the Kubernetes version",
    copy = { dest = "/etc/kubernetes-version", content = var("kubernetes_semver"), mode = "0644" },
  }
  if source == "pkg" then
    steps[#steps + 1] = {
      name = "kubeadm configuration for the image pull",
      template = { src = kubeadm_template_src(), dest = "/etc/kubeadm.yml", mode = "0644" },
    }
    steps[#steps + 1] = {
      name = "pull the Kubernetes images", timeout = 1800,
      shell = "kubeadm config images pull --config /etc/kubeadm.yml && rc=0 || rc=$?\n"
        .. "rm -f /etc/kubeadm.yml\nexit $rc",
    }
  end
  return steps
end
