-- Package sources that still serve in 2026 (issue 14): each seed recipe's
-- plan, resolved for a Kubernetes version on each side of v1.24 (where
-- pkgs.k8s.io starts) and on a local and a vSphere backend, installs from
-- pkgs.k8s.io or dl.k8s.io, pulls from registry.k8s.io, and reaches no host
-- that was shut down.
local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local json = require("capil.sys.json")
local capil = require("support.capil")

local SEEDS = { "centos-7", "photon-3", "ubuntu-1804", "ubuntu-2004" }
local BACKENDS = { "qemu", "vsphere" }
local FAMILY = { ["centos-7"] = "redhat", ["photon-3"] = "photon", ["ubuntu-1804"] = "debian",
  ["ubuntu-2004"] = "debian" }

-- Hosts that no longer serve what the 2020 values fetched from them
-- (dl.bintray.com is not here: the Photon step names it, to rewrite it).
local GONE = { "apt.kubernetes.io", "packages.cloud.google.com", "k8s.gcr.io", "mirrorlist.centos.org",
  "storage.googleapis.com/kubernetes-release" }

-- A containerd that runs kubelet v1.26+ (CRI v1): the seed's 1.3.4 does not.
-- The digest is a placeholder: plans are resolved, nothing is downloaded.
local CONTAINERD_17 = { "containerd_version=1.7.22",
  "containerd_url=https://github.com/containerd/containerd/releases/download/v1.7.22/"
    .. "cri-containerd-1.7.22-linux-amd64.tar.gz",
  "containerd_sha256=" .. ("ab"):rep(32) }

local function with_containerd(vars)
  for _, v in ipairs(CONTAINERD_17) do vars[#vars + 1] = v end
  return vars
end

local function resolve(name, backend, semver)
  local r = assert(recipe.load(name))
  local vars = semver and { "kubernetes_semver=" .. semver } or nil
  if semver and semver >= "v1.26" then with_containerd(vars) end
  local cfg = assert(config.resolve(r, { backend = backend, vars = vars }))
  return cfg, assert(require("capil.build.loader").plan(cfg, backend))
end

-- The provisioning steps of a plan, and one by name.
local function provision(p)
  for _, s in ipairs(p.steps) do if s.id == "provision" then return s.steps end end
  error("plan has no provision step")
end

local function step(steps, name)
  for _, s in ipairs(steps) do if s.name == name then return s end end
  error("no step '" .. name .. "'", 2)
end

local function has(steps, name)
  for _, s in ipairs(steps) do if s.name == name then return true end end
  return false
end

-- Everything a step will run or write, as one string.
local function text(s)
  return (s.shell or "") .. "\n" .. (s.copy and s.copy.content or "")
end

describe("package sources #unit", function()
  for _, name in ipairs(SEEDS) do
    for _, backend in ipairs(BACKENDS) do
      describe(name .. " on " .. backend, function()
        it("installs v1.30.2 from pkgs.k8s.io with derived versions", function()
          local cfg, p = resolve(name, backend, "v1.30.2")
          local v = cfg:vars()
          assert.same({ "pkg", "pkg", "v1.30", "1.30.2-1.1", "1.30.2", "", "" },
            { v.kubernetes_source_type, v.kubernetes_cni_source_type, v.kubernetes_series, v.kubernetes_deb_version,
              v.kubernetes_rpm_version, v.kubernetes_cni_deb_version, v.kubernetes_cni_rpm_version })
          assert.equal("derived", cfg:explain("kubernetes_deb_version").layer)
          assert.matches("kubernetes_semver v1.30.2", cfg:explain("kubernetes_deb_version").note, 1, true)
          local steps = provision(p)
          local install = step(steps, "install kubelet, kubeadm, kubectl and kubernetes-cni").shell
          if FAMILY[name] == "debian" then
            assert.equal("deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] "
              .. "https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n",
              step(steps, "add the Kubernetes apt repository").copy.content)
            local key = step(steps, "add the Kubernetes apt key").shell
            assert.truthy(key:find("https://pkgs.k8s.io/core:/stable:/v1.30/deb/Release.key", 1, true), key)
            assert.truthy(key:find("gpg --batch --yes --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg", 1,
              true), key)
            assert.falsy(key:find("apt-key add", 1, true))
            assert.truthy(install:find(" 'kubelet=1.30.2-1.1' 'kubeadm=1.30.2-1.1' 'kubectl=1.30.2-1.1' kubernetes-cni",
              1, true), install)
          else
            local repo = step(steps, "add the Kubernetes yum repository").copy.content
            assert.truthy(repo:find("baseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\n", 1, true), repo)
            assert.truthy(repo:find("gpgkey=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/repodata/repomd.xml.key\n", 1,
              true), repo)
            assert.truthy(install:find(" kubelet%-1%.30%.2 kubeadm%-1%.30%.2 kubectl%-1%.30%.2 kubernetes%-cni$"),
              install)
          end
          local kubeadm = step(steps, "kubeadm configuration for the image pull").copy.content
          assert.truthy(kubeadm:find("apiVersion: kubeadm.k8s.io/v1beta3\n", 1, true), kubeadm)
          assert.truthy(kubeadm:find("imageRepository: registry.k8s.io\nkubernetesVersion: v1.30.2\n", 1, true))
          assert.truthy(step(steps, "containerd configuration").copy.content
            :find("sandbox_image = \"registry.k8s.io/pause:", 1, true))
          assert.is_false(has(steps, "download kubeadm, kubectl and kubelet"))
          assert.equal("output/" .. name .. "-kube-v1.30.2", p.output_dir)
        end)

        it("installs v1.23.17 from dl.k8s.io and the GitHub releases", function()
          local cfg, p = resolve(name, backend, "v1.23.17")
          local v = cfg:vars()
          assert.same({ "http", "http", "v1.23", "v0.8.7", "1.23.0" },
            { v.kubernetes_source_type, v.kubernetes_cni_source_type, v.kubernetes_series, v.kubernetes_cni_semver,
              v.crictl_version })
          local steps = provision(p)
          local bins = step(steps, "download kubeadm, kubectl and kubelet").shell
          for _, b in ipairs({ "kubeadm", "kubectl", "kubelet" }) do
            assert.truthy(bins:find("-o /usr/bin/" .. b .. " https://dl.k8s.io/release/v1.23.17/bin/linux/amd64/"
              .. b .. ";", 1, true), b)
          end
          assert.truthy(step(steps, "import the Kubernetes images").shell
            :find("https://dl.k8s.io/release/v1.23.17/bin/linux/amd64/kube-apiserver.tar;", 1, true))
          local cni = step(steps, "install the CNI plugins into /opt/cni/bin").shell
          assert.truthy(cni:find("https://github.com/containernetworking/plugins/releases/download/v0.8.7/"
            .. "cni-plugins-linux-amd64-v0.8.7.tgz;", 1, true), cni)
          assert.truthy(cni:find("cni-plugins-linux-amd64-v0.8.7.tgz.sha256;", 1, true), cni)
          assert.truthy(step(steps, "install crictl into /usr/local/bin").shell
            :find("https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.23.0/"
              .. "crictl-v1.23.0-linux-amd64.tar.gz;", 1, true))
          assert.equal("[Unit]\nDescription=kubelet: The Kubernetes Node Agent\n",
            step(steps, "kubelet unit").copy.content:match("^[^\n]*\n[^\n]*\n"))
          assert.is_false(has(steps, "pull the Kubernetes images"))
          assert.is_false(has(steps, "add the Kubernetes yum repository"))
          assert.is_false(has(steps, "add the Kubernetes apt repository"))
        end)

        it("reaches no host that was shut down, whatever the version", function()
          for _, semver in ipairs({ false, "v1.23.17", "v1.30.2" }) do
            local _, p = resolve(name, backend, semver or nil)
            local all = json.encode(p)
            for _, host in ipairs(GONE) do
              assert.falsy(all:find(host, 1, true), (semver or "default") .. ": " .. host)
            end
          end
        end)
      end)
    end
  end

  it("keeps v1.16.14 as the seed default, from the http source", function()
    local cfg, p = resolve("ubuntu-2004", "qemu")
    assert.same({ "v1.16.14", "http", "v1.16", "1.16.14-00", "1.16.14-0", "v0.8.6" },
      { cfg:get("kubernetes_semver"), cfg:get("kubernetes_source_type"), cfg:get("kubernetes_series"),
        cfg:get("kubernetes_deb_version"), cfg:get("kubernetes_rpm_version"), cfg:get("kubernetes_cni_semver") })
    assert.equal("output/ubuntu-2004-kube-v1.16.14", p.output_dir)
    assert.truthy(text(step(provision(p), "download kubeadm, kubectl and kubelet"))
      :find("https://dl.k8s.io/release/v1.16.14/bin/linux/amd64/kubeadm", 1, true))
  end)

  it("writes each OS's package archives from its recipe", function()
    local _, p = resolve("ubuntu-1804", "qemu")
    assert.truthy(step(provision(p), "write apt sources.list").copy.content
      :find("^deb http://us.archive.ubuntu.com/ubuntu bionic main restricted universe\n"))
    _, p = resolve("centos-7", "qemu")
    local steps = provision(p)
    assert.truthy(has(steps, "point the CentOS repositories at https://vault.centos.org/7.9.2009"))
    assert.equal("yum install -y https://archives.fedoraproject.org/pub/archive/epel/7/x86_64/Packages/e/"
      .. "epel-release-7-14.noarch.rpm", step(steps, "add EPEL repository").shell)
    assert.truthy(has(steps, "point the EPEL repositories at https://archives.fedoraproject.org/pub/archive/epel/7"))
    _, p = resolve("photon-3", "qemu")
    steps = provision(p)
    local rebase = step(steps, "point the Photon repositories at https://packages.broadcom.com/photon").shell
    assert.truthy(rebase:find("baseurl=https://packages.broadcom.com/photon/$releasever/", 1, true), rebase)
    assert.truthy(has(steps, "point the Photon repositories at https://packages.broadcom.com/photon "
      .. "(after distro-sync)"))
  end)

  it("lets an explicit source type win over the version", function()
    local r = assert(recipe.load("ubuntu-2004"))
    local cfg = assert(config.resolve(r, { backend = "qemu",
      vars = with_containerd({ "kubernetes_semver=v1.30.2", "kubernetes_source_type=http" }) }))
    assert.same({ "http", "http", "var" }, { cfg:get("kubernetes_source_type"), cfg:get("kubernetes_cni_source_type"),
      cfg:explain("kubernetes_source_type").layer })
    assert.equal("v1.2.0", cfg:get("kubernetes_cni_semver"))
  end)

  describe("inconsistent versions", function()
    local function errors(vars)
      local r = assert(recipe.load("ubuntu-2004"))
      local cfg, errs = config.resolve(r, { backend = "qemu", vars = vars })
      assert.is_nil(cfg)
      return table.concat(errs, "\n")
    end

    it("are refused, naming the variables and the expected value", function()
      local e = errors({ "kubernetes_semver=v1.19.1", "kubernetes_deb_version=1.16.14-00" })
      assert.matches('kubernetes_deb_version "1.16.14-00" does not match kubernetes_semver v1.19.1: '
        .. "expected 1.19.1-00", e, 1, true)
      e = errors({ "kubernetes_semver=v1.19.1", "kubernetes_series=v1.18" })
      assert.matches('kubernetes_series "v1.18" does not match kubernetes_semver v1.19.1: expected v1.19', e, 1, true)
      e = errors({ "kubernetes_semver=v1.30.2", "kubernetes_rpm_version=1.29.0" })
      assert.matches("expected 1.30.2", e, 1, true)
      -- a kubelet the seed's containerd cannot run (CRI v1 from containerd 1.6)
      assert.matches("containerd_version 1.3.4 cannot run the kubelet of kubernetes_semver v1.30.2: Kubernetes "
        .. "v1.26 and later need containerd 1.6 or later", e, 1, true)
      assert(config.resolve(assert(recipe.load("ubuntu-2004")), { backend = "qemu", vars = { "kubernetes_semver=v1.25.9" } }))
      -- pkg below v1.24 has no repository unless the user names one
      e = errors({ "kubernetes_source_type=pkg" })
      assert.matches("pkgs.k8s.io starts at v1.24", e, 1, true)
    end)

    it("pass when consistent (image-builder's var files set them all)", function()
      local r = assert(recipe.load("ubuntu-2004"))
      assert(config.resolve(r, { backend = "qemu", vars = with_containerd({ "kubernetes_semver=v1.30.2",
        "kubernetes_series=v1.30", "kubernetes_deb_version=1.30.2-1.1", "kubernetes_rpm_version=1.30.2" }) }))
      assert(config.resolve(r, { backend = "qemu", vars = { "kubernetes_semver=v1.16.14",
        "kubernetes_source_type=pkg", "kubernetes_deb_repo=https://mirror.example/kubernetes-xenial main" } }))
    end)

    it("make capil validate exit non-zero", function()
      local res = capil.run({ "validate", "recipes/ubuntu-2004.lua", "--var", "kubernetes_semver=v1.19.1",
        "--var", "kubernetes_deb_version=1.16.14-00" }, { timeout = 30 })
      assert.equal(1, res.code)
      assert.matches("kubernetes_deb_version", res.stderr, 1, true)
      assert.matches("kubernetes_semver v1.19.1", res.stderr, 1, true)
      assert.not_matches("traceback", res.stderr, 1, true)
    end)
  end)
end)
