-- kubernetes: kubelet, kubeadm, kubectl and the CNI plugins, pinned, plus
-- the control-plane images pre-pulled (image-builder's kubernetes role).
--
-- kubernetes_source_type (config.lua resolves "auto" from kubernetes_semver:
-- pkg from v1.24, where pkgs.k8s.io starts, http before):
--   "pkg"  packages from the Kubernetes apt/yum repository (pinned versions;
--          kubernetes-cni pinned only when kubernetes_cni_*_version is set,
--          cri-tools comes as kubeadm's dependency), then
--          `kubeadm config images pull`
--   "http" binaries from <kubernetes_http_source>/<semver>/bin/linux/amd64/,
--          CNI from kubernetes_cni_http_source (needs kubernetes_cni_source_type
--          "http"), crictl from crictl_http_source, images imported from the
--          release's tarballs with ctr
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

-- apt-key is deprecated (absent on newer Ubuntu): the key goes into its own
-- keyring, named by the source line's signed-by.
local KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"

-- The source line: pkgs.k8s.io is a flat repository ("URL /"); a "URL
-- suite" value (the 2020 apt.kubernetes.io form) keeps its components.
local function deb_line(repo)
  local url, suite = repo:match("^(%S+)%s+(%S+)$")
  if url then return ("deb [signed-by=%s] %s %s main\n"):format(KEYRING, url, suite) end
  return ("deb [signed-by=%s] %s /\n"):format(KEYRING, repo)
end

-- "kubernetes-cni=1.4.0-1.1", or unpinned when the version is empty.
local function pinned(name, sep, version)
  return quote(version ~= "" and (name .. sep .. version) or name)
end

local function pkg_debian()
  local v, cni = var("kubernetes_deb_version"), var("kubernetes_cni_deb_version", "")
  return {
    {
      name = "add the Kubernetes apt key",
      shell = "set -e\nmkdir -p -m 0755 /etc/apt/keyrings\n"
        .. download(var("kubernetes_deb_gpg_key"), "/tmp/kubernetes-apt-key") .. "\n"
        -- pkgs.k8s.io serves an armored key; the 2020 one was binary
        .. "if grep -q 'BEGIN PGP' /tmp/kubernetes-apt-key; then\n"
        .. "  gpg --batch --yes --dearmor -o " .. KEYRING .. " /tmp/kubernetes-apt-key\n"
        .. "else\n  cp /tmp/kubernetes-apt-key " .. KEYRING .. "\nfi\n"
        .. "chmod 0644 " .. KEYRING .. "\nrm -f /tmp/kubernetes-apt-key",
    },
    {
      name = "add the Kubernetes apt repository",
      copy = { dest = "/etc/apt/sources.list.d/kubernetes.list", mode = "0644",
        content = deb_line(var("kubernetes_deb_repo")) },
    },
    {
      name = "install kubelet, kubeadm, kubectl and kubernetes-cni", timeout = 1800,
      env = { DEBIAN_FRONTEND = "noninteractive" },
      shell = "set -e\napt-get update\napt-get install -y --allow-downgrades "
        .. quote("kubelet=" .. v) .. " " .. quote("kubeadm=" .. v) .. " " .. quote("kubectl=" .. v) .. " "
        .. pinned("kubernetes-cni", "=", cni),
    },
  }
end

local function rpm_packages()
  local v, cni = var("kubernetes_rpm_version"), var("kubernetes_cni_rpm_version", "")
  return quote("kubelet-" .. v) .. " " .. quote("kubeadm-" .. v) .. " " .. quote("kubectl-" .. v) .. " "
    .. pinned("kubernetes-cni", "-", cni)
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
  local crictl = var("crictl_version"):gsub("^v", "")
  local crictl_url = var("crictl_http_source") .. "/v" .. crictl .. "/crictl-v" .. crictl .. "-linux-" .. ARCH
    .. ".tar.gz"
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
      -- after containerd: its release tarball carries an older crictl
      name = "install crictl into /usr/local/bin", timeout = 1800,
      shell = "set -e\nmkdir -p -m 0755 /usr/local/bin\n"
        .. download(crictl_url, "/tmp/crictl.tar.gz") .. "\n"
        .. "tar -C /usr/local/bin --no-overwrite-dir -xzf /tmp/crictl.tar.gz crictl\n"
        .. "chmod 0755 /usr/local/bin/crictl\nrm -f /tmp/crictl.tar.gz",
    },
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
  if t ~= "etc/kubeadm.yml" then return t end
  -- kubeadm 1.22 removed the v1beta1 API and reads v1beta3
  local minor = tonumber(var("kubernetes_semver"):match("^v1%.(%d+)%.") or "99")
  return minor < 22 and "roles/templates/kubeadm-v1beta1.yml.tmpl" or "roles/templates/kubeadm.yml.tmpl"
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
