local roles = require("capil.build.roles")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")

local VARS = dofile("spec/fixtures/roles/vars.lua")

local OSES = {
  ubuntu2004 = { family = "debian", distro = "ubuntu", version = "20.04" },
  ubuntu1804 = { family = "debian", distro = "ubuntu", version = "18.04" },
  centos7 = { family = "redhat", distro = "centos", version = "7" },
  rocky9 = { family = "redhat", distro = "rockylinux", version = "9" },
  photon3 = { family = "photon", distro = "photon", version = "3" },
}

local function ctx_for(os, overrides, builder)
  local vars = {}
  for k, v in pairs(VARS) do vars[k] = v end
  for k, v in pairs(overrides or {}) do vars[k] = v end
  return { vars = vars, os = os, builder = builder or "vsphere" }
end

local function step(steps, name, role)
  for _, s in ipairs(steps) do
    if s.name == name and (role == nil or s.role == role) then return s end
  end
  error(("no step '%s'%s"):format(name, role and (" in role " .. role) or ""), 2)
end

local function has_step(steps, name)
  for _, s in ipairs(steps) do if s.name == name then return true end end
  return false
end

local function roles_of(steps)
  local seen, order = {}, {}
  for _, s in ipairs(steps) do
    if not seen[s.role] then
      seen[s.role] = true
      order[#order + 1] = s.role
    end
  end
  return order
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local APT = "apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"

describe("roles #unit", function()
  describe("default_order", function()
    it("is image-builder's node.yml order with setup first", function()
      assert.same({ "setup", "node", "providers", "containerd", "kubernetes", "sysprep" }, roles.default_order(VARS))
      assert.same({ "setup", "node", "providers", "containerd", "kubernetes", "sysprep" }, roles.default_order({}))
    end)

    it("puts custom roles before sysprep unless custom_role is false", function()
      assert.same({ "setup", "node", "providers", "containerd", "kubernetes", "a", "b-2", "sysprep" },
        roles.default_order({ custom_role = "true", custom_role_names = "a  b-2" }))
      assert.same({ "setup", "node", "providers", "containerd", "kubernetes", "a", "sysprep" },
        roles.default_order({ custom_role_names = "\"a\"" }))
      assert.same({ "setup", "node", "providers", "containerd", "kubernetes", "sysprep" },
        roles.default_order({ custom_role = "false", custom_role_names = "a" }))
    end)
  end)

  -- Table-driven: the default role list expanded for each family with
  -- image-builder's default variables.
  local CASES = {
    {
      os = OSES.ubuntu2004,
      exact = true,
      packages = APT .. " install apt-transport-https conntrack conntrackd curl ebtables jq gnupg libnetfilter-acct1"
        .. " libnetfilter-cttimeout1 libnetfilter-log1 linux-cloud-tools-virtual linux-tools-virtual ntp"
        .. " open-vm-tools python3-distutils python3-netifaces python3-pip socat",
      cloud_init = "DEBIAN_FRONTEND=noninteractive apt-get install -y cloud-init cloud-guest-utils"
        .. " cloud-initramfs-copymods cloud-initramfs-dyn-netconf cloud-initramfs-growroot",
      kube = "apt-get install -y --allow-downgrades 'kubelet=1.16.14-00' 'kubeadm=1.16.14-00' 'kubectl=1.16.14-00'"
        .. " 'kubernetes-cni=0.8.6-00'",
      libseccomp = "DEBIAN_FRONTEND=noninteractive apt-get install -y libseccomp2",
      sysctl_file = "/etc/sysctl.conf",
      machine_id_mode = "0644",
    },
    {
      os = OSES.ubuntu1804,
      packages = APT .. " install apt-transport-https conntrack",
      cloud_init = "DEBIAN_FRONTEND=noninteractive apt-get install -y cloud-init cloud-guest-utils"
        .. " cloud-initramfs-copymods cloud-initramfs-dyn-netconf cloud-initramfs-growroot",
      kube = "apt-get install -y --allow-downgrades 'kubelet=1.16.14-00'",
      libseccomp = "DEBIAN_FRONTEND=noninteractive apt-get install -y libseccomp2",
      sysctl_file = "/etc/sysctl.conf",
      machine_id_mode = "0644",
    },
    {
      os = OSES.centos7,
      exact = true,
      packages = "yum install -y audit ca-certificates conntrack-tools curl ebtables jq ntp open-vm-tools python3-pip"
        .. " python-netifaces python-requests socat sysstat yum-utils",
      cloud_init = "yum install -y cloud-init cloud-utils-growpart python2-pip",
      kube = "yum install -y --setopt=obsoletes=0 kubelet-1.16.14-0 kubeadm-1.16.14-0 kubectl-1.16.14-0"
        .. " kubernetes-cni-0.8.6-0",
      libseccomp = "yum install -y libseccomp",
      sysctl_file = "/etc/sysctl.conf",
      machine_id_mode = "0444",
    },
    {
      os = OSES.photon3,
      exact = true,
      packages = "tdnf install -y audit conntrack-tools distrib-compat ebtables jq net-tools ntp openssl-c_rehash"
        .. " open-vm-tools python-netifaces python3-pip python-requests rng-tools socat tar unzip",
      cloud_init = "tdnf install -y cloud-init cloud-utils python3-netifaces",
      kube = "tdnf install -y --nogpgcheck kubelet-1.16.14-0 kubeadm-1.16.14-0 kubectl-1.16.14-0"
        .. " kubernetes-cni-0.8.6-0",
      libseccomp = "tdnf install -y libseccomp",
      sysctl_file = "/etc/sysctl.d/99-sysctl.conf",
      machine_id_mode = "0444",
    },
  }

  for _, case in ipairs(CASES) do
    local label = case.os.distro .. " " .. case.os.version
    describe("default roles on " .. label, function()
      local steps
      setup(function()
        local err
        steps, err = roles.expand(roles.default_order(VARS), ctx_for(case.os))
        assert(steps, err)
      end)

      it("runs the roles in order and resolves every step", function()
        assert.same({ "setup", "node", "providers", "containerd", "kubernetes", "sysprep" }, roles_of(steps))
        for _, s in ipairs(steps) do
          assert.is_true(s.become, s.name)
          assert.is_string(s.kind)
          assert.is_nil(s.template, "templates are rendered into copies")
          assert.is_nil(s.env and s.env.http_proxy, "no proxy configured")
        end
      end)

      it("installs image-builder's base packages", function()
        local last = step(steps, "install baseline packages", "setup").shell:match("[^\n]*$")
        if case.exact then assert.equal(case.packages, last) else assert.equal(1, last:find(case.packages, 1, true)) end
        assert.is_false(has_step(steps, "install extra packages"))
      end)

      it("loads the kernel modules, sets the 5 sysctls and turns swap off", function()
        assert.same({ dest = "/etc/modules-load.d/kubernetes.conf", content = "overlay\nbr_netfilter\n",
          mode = "0644" }, step(steps, "persist kernel modules").copy)
        local sh = step(steps, "set Kubernetes sysctls").shell
        assert.truthy(sh:find("f=" .. case.sysctl_file .. "\n", 1, true), sh)
        for _, kv in ipairs({ "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1",
          "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.disable_ipv6=0",
          "net.bridge.bridge-nf-call-ip6tables=1" }) do
          local set = "sysctl -w '" .. kv .. "'"
          assert.truthy(sh:find("\n" .. set .. "\n", 1, true) or sh:sub(-#set) == set, kv)
          assert.truthy(sh:find("echo '" .. kv .. "' >>", 1, true), kv)
        end
        assert.truthy(sh:find("if grep -q '^[[:space:]]*net\\.ipv4\\.ip_forward[[:space:]]*='", 1, true), sh)
        local swap = step(steps, "disable swap")
        assert.equal("swapoff -a", swap.shell)
        assert.equal("test \"$(wc -l < /proc/swaps)\" -gt 1", swap.only_if)
        assert.equal("sed -ri '/\\sswap\\s/s/^#?/#/' /etc/fstab", step(steps, "comment swap out of fstab").shell)
      end)

      it("installs cloud-init with a VMware guestinfo datasource and tools.conf", function()
        assert.equal(case.cloud_init, step(steps, "install cloud-init packages").shell)
        local ds = step(steps, "VMware datasource for cloud-init (built in from 21.3, else the guestinfo script)")
        assert.same({ REPO_SLUG = "https://raw.githubusercontent.com/vmware/cloud-init-vmware-guestinfo",
          GIT_REF = "v1.3.1" }, ds.env)
        -- cloud-init >= 21.3 has its own: listed first; older gets the script
        assert.truthy(ds.shell:find("cloud-init --version", 1, true))
        assert.truthy(ds.shell:find("datasource_list: [ VMware, OVF, NoCloud, None ]", 1, true))
        assert.truthy(ds.shell:find("curl -fsSL --retry 5 -o /tmp/cloud-init-vmware.sh "
          .. "https://raw.githubusercontent.com/vmware/cloud-init-vmware-guestinfo/v1.3.1/install.sh", 1, true))
        assert.truthy(ds.shell:find("\n  bash -o errexit -o pipefail /tmp/cloud-init-vmware.sh\n", 1, true))
        assert.equal("[guestinfo]\nexclude-nics=antrea-*,ovs-system,br*,flannel*,veth*,vxlan_sys_*,genev_sys_*,"
          .. "gre_sys_*,stt_sys_*,????????-??????\n", step(steps, "VMware Tools: exclude container NICs").copy.content)
        for _, unit in ipairs({ "cloud-final", "cloud-config" }) do
          local c = step(steps, "start " .. unit .. " after containerd").copy
          assert.equal("/etc/systemd/system/" .. unit .. ".service.d/boot-order.conf", c.dest)
          assert.equal("[Unit]\nAfter=containerd.service\nWants=containerd.service\n", c.content)
        end
        assert.truthy(step(steps, "enable the cloud-init units").shell
          :find("systemctl enable cloud-final cloud-config cloud-init cloud-init-local", 1, true))
        local log = step(steps, "cloud-init logging").upload
        assert.equal("recipes/roles/files/05_logging.cfg", log.src)
        assert.equal("/etc/cloud/cloud.cfg.d/05_logging.cfg", log.dest)
        assert.equal(case.os.family == "debian", has_step(steps, "disable the Hyper-V KVP daemon"))
        assert.equal(case.os.family == "photon", has_step(steps, "let cloud-init configure the network"))
      end)

      it("installs containerd from the verified tarball with image-builder's settings", function()
        assert.equal(case.libseccomp, step(steps, "install libseccomp").shell)
        local dl = step(steps, "download, verify and unpack containerd")
        local sh = dl.shell
        local verify = sh:find("echo '4616971c3ad21c24f2f2320fa1c085577a91032a068dd56a41c7c4b71a458087  "
          .. "/tmp/containerd.tar.gz' | sha256sum -c -\n", 1, true)
        local unpack = sh:find("tar --no-overwrite-dir -C / -xzf /tmp/containerd.tar.gz", 1, true)
        assert.truthy(sh:find("https://storage.googleapis.com/cri-containerd-release/"
          .. "cri-containerd-1.3.4.linux-amd64.tar.gz", 1, true))
        assert.truthy(verify and unpack and verify < unpack, sh)
        assert.equal(1, sh:find("set -e\n", 1, true))
        assert.equal("/usr/local/bin/containerd --version 2>/dev/null | grep -qF -e ' v1.3.4 '", dl.unless)
        assert.truthy(step(steps, "containerd notifies systemd when ready (Type=notify)").shell
          :find("sed -i '/^\\[Service\\]/a Type=notify'", 1, true))
        assert.equal("[Unit]\nAfter=cloud-init.service\nWants=cloud-init.service\n",
          step(steps, "containerd boot order").copy.content)
        assert.equal("[Service]\nOOMScoreAdjust=-999\n", step(steps, "containerd memory pressure").copy.content)
        assert.equal("[Service]\nTasksMax=infinity\n", step(steps, "containerd max tasks").copy.content)
        local cfg = step(steps, "containerd configuration").copy
        assert.equal("/etc/containerd/config.toml", cfg.dest)
        assert.equal("# capil: containerd configuration (config version 2; version 1 is the default)\n"
          .. "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n"
          .. "    sandbox_image = \"k8s.gcr.io/pause:3.2\"\n", cfg.content)
        assert.truthy(step(steps, "enable and restart containerd").shell:find("systemctl restart containerd", 1, true))
      end)

      it("installs pinned Kubernetes packages, enables the kubelet and pre-pulls images", function()
        local install = step(steps, "install kubelet, kubeadm, kubectl and kubernetes-cni")
        assert.truthy(install.shell:find(case.kube, 1, true), install.shell)
        if case.os.family == "debian" then
          assert.equal("deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://apt.kubernetes.io/ "
            .. "kubernetes-xenial main\n",
            step(steps, "add the Kubernetes apt repository").copy.content)
          assert.truthy(step(steps, "add the Kubernetes apt key").shell
            :find("https://packages.cloud.google.com/apt/doc/apt-key.gpg", 1, true))
        else
          local repo = step(steps, "add the Kubernetes yum repository").copy
          assert.equal("/etc/yum.repos.d/kubernetes.repo", repo.dest)
          assert.equal("[kubernetes]\nname=kubernetes\ndescription=the kubernetes yum repo\n"
            .. "baseurl=https://packages.cloud.google.com/yum/repos/kubernetes-el7-x86_64\ngpgcheck=True\n"
            .. "gpgkey=https://packages.cloud.google.com/yum/doc/yum-key.gpg "
            .. "https://packages.cloud.google.com/yum/doc/rpm-package-key.gpg\nenabled=1\n", repo.content)
        end
        assert.truthy(step(steps, "enable the kubelet (not started)").shell:find("systemctl enable kubelet$"))
        assert.same({ dest = "/etc/kubernetes-version", content = "v1.16.14", mode = "0644" },
          step(steps, "record the Kubernetes version").copy)
        local kubeadm = step(steps, "kubeadm configuration for the image pull").copy
        assert.equal("/etc/kubeadm.yml", kubeadm.dest)
        assert.equal("apiVersion: kubeadm.k8s.io/v1beta1\nkind: ClusterConfiguration\nimageRepository: k8s.gcr.io\n"
          .. "kubernetesVersion: v1.16.14\n---\napiVersion: kubeadm.k8s.io/v1beta1\nkind: InitConfiguration\n"
          .. "nodeRegistration:\n  criSocket: \"/var/run/containerd/containerd.sock\"\n", kubeadm.content)
        assert.equal("recipes/roles/templates/kubeadm-v1beta1.yml.tmpl", kubeadm.source)   -- before 1.22
        local pull = step(steps, "pull the Kubernetes images").shell
        assert.truthy(pull:find("kubeadm config images pull --config /etc/kubeadm.yml", 1, true))
        assert.truthy(pull:find("rm -f /etc/kubeadm.yml", 1, true))
      end)

      -- hostnamectl also writes /etc/hostname: image-builder set the name
      -- after truncating the file on Debian and Red Hat (the file holds
      -- localhost.local) and before it on Photon (the file ends empty)
      it("sysprep orders the hostname and its file as image-builder did for " .. case.os.family, function()
        local function index(name)
          for i, s in ipairs(steps) do if s.role == "sysprep" and s.name == name then return i end end
          error("no sysprep step " .. name)
        end
        local set, truncate = index("set the hostname to localhost.local"), index("truncate the hostname file")
        assert.equal("hostnamectl set-hostname localhost.local", steps[set].shell)
        local n = 0
        for _, s in ipairs(steps) do if s.shell == steps[set].shell then n = n + 1 end end
        assert.equal(1, n)
        if case.os.family == "photon" then
          assert.is_true(set < truncate, "Photon sets the hostname first: its /etc/hostname ends empty")
          assert.is_true(set < index("accept input in the saved iptables rules"))
        else
          assert.is_true(set > truncate, "the hostname is set after the truncation: /etc/hostname = localhost.local")
          assert.is_true(index("truncate the machine id") < truncate)
          assert.equal(truncate + 1, set)
        end
      end)

      it("sysprep resets identity and ends by locking out the build user", function()
        local hosts = step(steps, "reset the hosts file").copy
        assert.same({ dest = "/etc/hosts", mode = "0644", owner = "root:root",
          content = "::1\t       localhost ip6-localhost ip6-loopback\n127.0.0.1  localhost localhost.local\n" }, hosts)
        assert.truthy(step(steps, "truncate the machine id").shell:find("chmod " .. case.machine_id_mode
          .. " /etc/machine-id", 1, true))
        assert.equal("rm -rf /var/lib/cloud /var/log/cloud-init.log /var/log/cloud-init-output.log /var/run/cloud-init",
          step(steps, "remove cloud-init state and logs").shell)
        assert.equal("rm -f /etc/ssh/ssh_host_*", step(steps, "remove SSH host keys").shell)
        local logs = step(steps, "recreate /var/log (empty wtmp and lastlog)").shell
        assert.truthy(logs:find("rm -rf /var/log\n", 1, true))
        assert.truthy(logs:find("touch /var/log/kubernetes/audit.log\nchmod 0600 /var/log/kubernetes/audit.log",
          1, true))
        assert.equal("find /tmp /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +",
          step(steps, "empty /tmp and /var/tmp").shell)
        local n = #steps
        assert.equal("remove SSH authorized keys", steps[n - 1].name)
        assert.truthy(steps[n - 1].shell:find("rm -f /root/.ssh/authorized_keys\n", 1, true))
        assert.truthy(steps[n - 1].shell:find("getent passwd builder", 1, true))
        assert.same({ "sysprep", "usermod -L builder" }, { steps[n].role, steps[n].shell })
      end)
    end)
  end

  it("produces shell that parses with the real /bin/sh, for every family and source", function()
    local proc = require("capil.sys.proc")
    local variants = {
      {},
      { kubernetes_source_type = "http", kubernetes_cni_source_type = "http", kubernetes_load_additional_imgs = "true",
        http_proxy = "http://p:3128" },
      { disable_public_repos = "true", remove_extra_repos = "true", extra_rpms = "nfs-utils", extra_debs = "nfs-common",
        containerd_additional_settings = hash.base64_encode("[x]\n") },
      -- the seed recipes' 2026 sources, pkgs.k8s.io packages
      { centos_repo = "https://vault.centos.org/7.9.2009", photon_repo = "https://packages.broadcom.com/photon",
        redhat_epel_repo = "https://archives.fedoraproject.org/pub/archive/epel/7", kubernetes_semver = "v1.30.2",
        kubernetes_deb_repo = "https://pkgs.k8s.io/core:/stable:/v1.30/deb/", kubernetes_deb_version = "1.30.2-1.1",
        kubernetes_rpm_version = "1.30.2", kubernetes_cni_deb_version = "", kubernetes_cni_rpm_version = "" },
    }
    local n = 0
    for _, os in pairs(OSES) do
      for _, v in ipairs(variants) do
        local steps = assert(roles.expand(roles.default_order(VARS), ctx_for(os, v)))
        for _, s in ipairs(steps) do
          for _, script in ipairs({ s.shell or false, s.only_if or false, s.unless or false }) do
            if script then
              local r = assert(proc.run({ argv = { "/bin/sh", "-n", "-c", script }, timeout = 10 }))
              assert.equal(0, r.code, s.role .. "/" .. s.name .. ": " .. r.stderr)
              n = n + 1
            end
          end
        end
      end
    end
    assert.is_true(n > 200)
  end)

  describe("family details", function()
    it("writes Ubuntu's sources.list for the release", function()
      local focal = assert(roles.load("setup", ctx_for(OSES.ubuntu2004)))
      assert.equal("deb http://us.archive.ubuntu.com/ubuntu focal main restricted universe\n"
        .. "deb http://us.archive.ubuntu.com/ubuntu focal-updates main restricted universe\n"
        .. "deb http://us.archive.ubuntu.com/ubuntu focal-backports main restricted universe\n"
        .. "deb http://security.ubuntu.com/ubuntu focal-security main restricted universe\n",
        step(focal, "write apt sources.list").copy.content)
      local bionic = assert(roles.load("setup", ctx_for(OSES.ubuntu1804)))
      assert.truthy(step(bionic, "write apt sources.list").copy.content
        :find("^deb http://us.archive.ubuntu.com/ubuntu bionic main restricted universe\n"))
      assert.same({ "write apt sources.list", "update apt cache", "dist-upgrade", "install baseline packages" },
        (function() local t = {} for i, s in ipairs(focal) do t[i] = s.name end return t end)())
      assert.equal(APT .. " dist-upgrade", step(focal, "dist-upgrade").shell:match("[^\n]*$"))
      assert.same({ DEBIAN_FRONTEND = "noninteractive" }, step(focal, "dist-upgrade").env)
    end)

    it("adds EPEL and updates everything on CentOS", function()
      local s = assert(roles.load("setup", ctx_for(OSES.centos7)))
      local epel = step(s, "add EPEL repository")
      assert.equal("yum install -y https://dl.fedoraproject.org/pub/epel/epel-release-latest-7.noarch.rpm", epel.shell)
      assert.equal("rpm -q epel-release >/dev/null 2>&1", epel.unless)
      assert.equal("yum update -y '*'", step(s, "yum update").shell)
      -- archived releases: the installed repo files are pointed at the vault
      -- and the EPEL archive, before and after EPEL's package
      s = assert(roles.load("setup", ctx_for(OSES.centos7, { centos_repo = "https://vault.centos.org/7.9.2009",
        redhat_epel_repo = "https://archives.fedoraproject.org/pub/archive/epel/7" })))
      local names = {}
      for i, x in ipairs(s) do names[i] = x.name end
      assert.same({ "point the CentOS repositories at https://vault.centos.org/7.9.2009", "add EPEL repository",
        "point the EPEL repositories at https://archives.fedoraproject.org/pub/archive/epel/7" },
        { names[1], names[2], names[3] })
      assert.truthy(s[1].shell:find("for f in /etc/yum.repos.d/CentOS-*.repo; do", 1, true))
      assert.truthy(s[1].shell:find("s|^mirrorlist=|#mirrorlist=|; s|^metalink=|#metalink=|; "
        .. "s|^#*baseurl=[a-z]*://[^/]*/centos/$releasever|baseurl=https://vault.centos.org/7.9.2009|", 1, true))
      assert.truthy(s[3].shell:find("[^/]*/pub/epel/7|baseurl=https://archives.fedoraproject.org/pub/archive/epel/7|",
        1, true))
    end)

    it("reboots Photon only when distro-sync changed something", function()
      local s = assert(roles.load("setup", ctx_for(OSES.photon3)))
      local sync = step(s, "tdnf distro-sync")
      assert.truthy(sync.shell:find("tdnf distro-sync -y --refresh", 1, true))
      assert.truthy(sync.shell:find("*'Nothing to do'*) rm -f /var/lib/capil/distro-sync-changed", 1, true))
      assert.truthy(sync.shell:find("touch /var/lib/capil/distro-sync-changed", 1, true))
      local reboot = step(s, "reboot after distro-sync")
      assert.same({ "reboot", true, "test -f /var/lib/capil/distro-sync-changed" },
        { reboot.kind, reboot.reboot, reboot.only_if })
      assert.same({ dest = "/home/builder/.bash_profile", mode = "0644", owner = "builder:builder",
        content = "PATH=$PATH:/usr/sbin:/usr/local/sbin\nexport PATH\n" },
        step(s, "add sbin directories to the build user's PATH").copy)
      local node = assert(roles.load("node", ctx_for(OSES.photon3)))
      assert.equal("systemctl enable --now auditd", step(node, "enable and start auditd").shell)
      assert.truthy(step(node, "audit rules for containerd").copy.content
        :find("-w /usr/local/bin/containerd -p rwxa -k containerd\n", 1, true))
      assert.truthy(step(node, "limit TCP output bytes as Ubuntu does").shell
        :find("sysctl -w 'net.ipv4.tcp_limit_output_bytes=524288'", 1, true))
      local sysprep = assert(roles.load("sysprep", ctx_for(OSES.photon3)))
      assert.equal("usermod -L root", step(sysprep, "lock the root account").shell)
      assert.truthy(step(sysprep, "accept input in the saved iptables rules").shell
        :find("sed -i 's/INPUT DROP/INPUT ACCEPT/'", 1, true))
    end)

    it("installs extra packages and user repositories, and undoes the repos in sysprep", function()
      local abs = assert(os.getenv("PWD")) .. "/spec/fixtures/roles/extra/repo.list"
      local c = ctx_for(OSES.ubuntu2004, {
        extra_debs = "\"nfs-common net-tools\"", disable_public_repos = "true", extra_repos = abs,
        remove_extra_repos = "true",
      })
      local s = assert(roles.load("setup", c))
      assert.equal(APT .. " install nfs-common net-tools", step(s, "install extra packages").shell:match("[^\n]*$"))
      local dis = step(s, "disable public repositories").shell
      assert.truthy(dis:find("for f in /etc/apt/*.list /etc/apt/*.sources /etc/apt/sources.list.d/*.list "
        .. "/etc/apt/sources.list.d/*.sources; do", 1, true)) -- deb822 .sources too (Ubuntu 24.04)
      local up = step(s, "install extra repository repo.list")
      assert.same({ src = abs, dest = "/etc/apt/sources.list.d/repo.list", mode = "0644" }, up.upload)
      local sp = assert(roles.load("sysprep", c))
      assert.equal("rm -f /etc/apt/sources.list.d/repo.list", step(sp, "remove extra repositories").shell)
      assert.truthy(step(sp, "re-enable public repositories").shell
        :find("/etc/apt/*.list.disabled /etc/apt/*.sources.disabled /etc/apt/sources.list.d/*.list.disabled "
          .. "/etc/apt/sources.list.d/*.sources.disabled", 1, true))
      -- reenable_public_repos=false keeps them disabled
      c.vars.reenable_public_repos = "false"
      assert.is_false(has_step(assert(roles.load("sysprep", c)), "re-enable public repositories"))
      -- an extra repo that does not exist stops the plan
      c.vars.extra_repos = "/nonexistent/x.list"
      local _, err = roles.load("setup", c)
      assert.equal("recipes/roles/setup.lua: step 3 (install extra repository x.list): upload source "
        .. "'/nonexistent/x.list' not found", err)
    end)

    it("puts the vSphere controllers' drivers into a Red Hat 8+ initramfs (dracut is host-only)", function()
      local s = assert(roles.load("providers", ctx_for(OSES.rocky9)))
      local conf = step(s, "initramfs: the vSphere disk controllers' drivers").copy
      assert.equal("/etc/dracut.conf.d/90-vsphere-controllers.conf", conf.dest)
      assert.equal('add_drivers+=" vmw_pvscsi mptspi ahci "\n', conf.content)
      assert.equal("dracut -f --regenerate-all", step(s, "rebuild the initramfs").shell)
      -- CentOS 7 as before
      assert.is_false(has_step(assert(roles.load("providers", ctx_for(OSES.centos7))), "rebuild the initramfs"))
    end)

    it("passes the proxy variables to every command", function()
      local c = ctx_for(OSES.centos7, { http_proxy = "http://proxy:3128", no_proxy = "localhost,.local" })
      local s = assert(roles.load("providers", c))
      local ds = step(s, "VMware datasource for cloud-init (built in from 21.3, else the guestinfo script)")
      assert.same({ http_proxy = "http://proxy:3128", HTTP_PROXY = "http://proxy:3128", no_proxy = "localhost,.local",
        NO_PROXY = "localhost,.local",
        REPO_SLUG = "https://raw.githubusercontent.com/vmware/cloud-init-vmware-guestinfo",
        GIT_REF = "v1.3.1" }, ds.env)
      assert.is_nil(step(s, "VMware Tools: exclude container NICs").env)
    end)

    it("appends base64-decoded containerd_additional_settings", function()
      local extra = "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n"
        .. "  endpoint = [\"https://mirror.example\"]"
      local s = assert(roles.load("containerd", ctx_for(OSES.ubuntu2004,
        { containerd_additional_settings = hash.base64_encode(extra), containerd_version = "" })))
      local cfg = step(s, "containerd configuration").copy.content
      assert.truthy(cfg:find("sandbox_image = \"k8s.gcr.io/pause:3.2\"\n\n" .. extra .. "\n", 1, true), cfg)
      assert.is_nil(step(s, "download, verify and unpack containerd").unless)
      local _, err = roles.load("containerd", ctx_for(OSES.ubuntu2004, { containerd_additional_settings = "%%%" }))
      assert.matches("^recipes/roles/containerd%.lua:%d+: base64_decode: ", err)
      _, err = roles.load("containerd", ctx_for(OSES.ubuntu2004, { containerd_sha256 = "abc" }))
      assert.matches("containerd_sha256 must be 64 hex digits, got 'abc'", err, 1, true)
    end)
  end)

  describe("containerd 2.x from its release (image-builder's containerd role)", function()
    -- the new recipes' values (recipes/ubuntu-2204.lua)
    local V2 = {
      containerd_version = "2.3.2",
      containerd_url = "https://github.com/containerd/containerd/releases/download/v2.3.2/"
        .. "containerd-2.3.2-linux-amd64.tar.gz",
      containerd_sha256 = "75625e6f6595bb95f3fb9c8123a60534af4a8d9b52d7617065967bcefe71a17a",
      containerd_pause_image = "registry.k8s.io/pause:3.10.2",
      runc_version = "1.4.3",
      runc_sha256 = "f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60",
    }
    local function v2(overrides)
      local vars = {}
      for k, v in pairs(V2) do vars[k] = v end
      for k, v in pairs(overrides or {}) do vars[k] = v end
      return vars
    end
    local CONFIG = "# capil: containerd configuration (config version 3, containerd 2.x)\n"
      .. "version = 3\n\n"
      .. "imports = [\"/etc/containerd/conf.d/*.toml\"]\n\n"
      .. "[plugins]\n"
      .. "  [plugins.'io.containerd.cri.v1.images'.pinned_images]\n"
      .. "    sandbox = \"registry.k8s.io/pause:3.10.2\"\n"
      .. "  [plugins.'io.containerd.cri.v1.images'.registry]\n"
      .. "    config_path = '/etc/containerd/certs.d'\n"
      .. "  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n"
      .. "    runtime_type = 'io.containerd.runc.v2'\n"
      .. "  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n"
      .. "    SystemdCgroup = true\n"

    it("unpacks bin/ into /usr/local, installs runc, containerd's unit and config version 3", function()
      for _, os in ipairs({ OSES.ubuntu2004, OSES.centos7, OSES.photon3 }) do
        local s = assert(roles.load("containerd", ctx_for(os, v2())))
        local names = {}
        for _, x in ipairs(s) do names[#names + 1] = x.name end
        assert.same({ "install libseccomp", "download, verify and unpack containerd into /usr/local",
          "download, verify and install runc into /usr/local/sbin", "containerd unit", "containerd boot order",
          "containerd memory pressure", "containerd max tasks", "containerd configuration directories",
          "containerd configuration", "crictl configuration", "enable and restart containerd",
          "link the CRI tools into /usr/bin" }, names)

        local dl = step(s, "download, verify and unpack containerd into /usr/local")
        local sh = dl.shell
        assert.truthy(sh:find("-o /tmp/containerd.tar.gz " .. V2.containerd_url .. ";", 1, true), sh)
        local verify = sh:find("echo '" .. V2.containerd_sha256 .. "  /tmp/containerd.tar.gz' | sha256sum -c -\n",
          1, true)
        local unpack = sh:find("tar --no-overwrite-dir -C /usr/local -xzf /tmp/containerd.tar.gz\n", 1, true)
        assert.truthy(verify and unpack and verify < unpack, sh)
        assert.is_nil(sh:find("-C / ", 1, true))
        assert.equal(1, sh:find("set -e\n", 1, true))
        assert.equal("/usr/local/bin/containerd --version 2>/dev/null | grep -qF -e ' v2.3.2 '", dl.unless)

        local runc = step(s, "download, verify and install runc into /usr/local/sbin")
        sh = runc.shell
        assert.truthy(sh:find("-o /tmp/runc https://github.com/opencontainers/runc/releases/download/v1.4.3/"
          .. "runc.amd64;", 1, true), sh)
        verify = sh:find("echo '" .. V2.runc_sha256 .. "  /tmp/runc' | sha256sum -c -\n", 1, true)
        local install = sh:find("install -m 0755 /tmp/runc /usr/local/sbin/runc\n", 1, true)
        assert.truthy(verify and install and verify < install, sh)
        assert.equal("/usr/local/sbin/runc --version 2>/dev/null | grep -qxF -e 'runc version 1.4.3'", runc.unless)

        local unit = step(s, "containerd unit").copy
        assert.equal("/etc/systemd/system/containerd.service", unit.dest)
        assert.equal("recipes/roles/templates/containerd.service", unit.source)
        for _, line in ipairs({ "ExecStart=/usr/local/bin/containerd", "Type=notify", "Delegate=yes",
          "KillMode=process", "ExecStartPre=-/sbin/modprobe overlay", "WantedBy=multi-user.target" }) do
          assert.truthy(unit.content:find("\n" .. line .. "\n", 1, true), line)
        end
        assert.equal("[Service]\nOOMScoreAdjust=-999\n", step(s, "containerd memory pressure").copy.content)
        assert.equal("[Service]\nTasksMax=infinity\n", step(s, "containerd max tasks").copy.content)
        assert.equal("mkdir -p -m 0755 /etc/containerd /etc/containerd/conf.d /etc/containerd/certs.d",
          step(s, "containerd configuration directories").shell)
        local cfg = step(s, "containerd configuration").copy
        assert.same({ "/etc/containerd/config.toml", "0644", CONFIG }, { cfg.dest, cfg.mode, cfg.content })
        assert.same({ "/etc/crictl.yaml", "runtime-endpoint: unix:///var/run/containerd/containerd.sock\n" },
          { step(s, "crictl configuration").copy.dest, step(s, "crictl configuration").copy.content })
        assert.truthy(step(s, "link the CRI tools into /usr/bin").shell
          :find("if [ -e /usr/local/bin/$t ]; then ln -sf /usr/local/bin/$t /usr/bin/$t; fi", 1, true))
        assert.is_false(has_step(s, "containerd notifies systemd when ready (Type=notify)"))
        assert.is_false(has_step(s, "containerd open files limit"))
      end
    end)

    it("takes image-builder's optional settings", function()
      local extra = "[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n  endpoint = ['https://m']"
      local s = assert(roles.load("containerd", ctx_for(OSES.ubuntu2004, v2({
        containerd_additional_settings = hash.base64_encode(extra),
        containerd_image_pull_progress_timeout = "5m0s",
      }))))
      local cfg = step(s, "containerd configuration").copy.content
      assert.truthy(cfg:find("[plugins]\n  [plugins.'io.containerd.cri.v1.images']\n"
        .. "    image_pull_progress_timeout = \"5m0s\"\n  [plugins.'io.containerd.cri.v1.images'.pinned_images]\n",
        1, true), cfg)
      assert.truthy(cfg:find("    SystemdCgroup = true\n\n" .. extra .. "\n", 1, true), cfg)
      assert.truthy(cfg:find("imports = ", 1, true))
      -- settings of their own imports replace image-builder's conf.d import
      s = assert(roles.load("containerd", ctx_for(OSES.ubuntu2004, v2({
        containerd_additional_settings = hash.base64_encode("imports = [\"/etc/x/*.toml\"]\n") }))))
      cfg = step(s, "containerd configuration").copy.content
      assert.is_nil(cfg:find("conf.d", 1, true))
      assert.equal("\n\nimports = [\"/etc/x/*.toml\"]\n", cfg:sub(-#"\n\nimports = [\"/etc/x/*.toml\"]\n"))
      s = assert(roles.load("containerd", ctx_for(OSES.ubuntu2004, v2({
        containerd_version = "v2.3.2", runc_version = "v1.4.3", containerd_enable_limit_no_file = "true",
        containerd_cri_socket = "/run/containerd/containerd.sock" }))))
      assert.equal("/usr/local/bin/containerd --version 2>/dev/null | grep -qF -e ' v2.3.2 '",
        step(s, "download, verify and unpack containerd into /usr/local").unless)
      assert.truthy(step(s, "download, verify and install runc into /usr/local/sbin").shell
        :find("/download/v1.4.3/runc.amd64;", 1, true))
      assert.equal("[Service]\nLimitNOFILE=1048576\n", step(s, "containerd open files limit").copy.content)
      assert.equal("runtime-endpoint: unix:///run/containerd/containerd.sock\n",
        step(s, "crictl configuration").copy.content)
    end)

    it("names the missing or malformed variable", function()
      local cases = {
        { { runc_version = false }, "containerd 2.3.2's release carries no runc: set vars.runc_version and "
          .. "vars.runc_sha256" },
        { { runc_version = "latest" }, "runc_version must be a release version such as 1.4.3, got 'latest'" },
        { { runc_sha256 = "abc" }, "runc_sha256 must be 64 hex digits, got 'abc'" },
        { { containerd_sha256 = "xyz" }, "containerd_sha256 must be 64 hex digits, got 'xyz'" },
        { { containerd_url = "https://storage.googleapis.com/cri-containerd-release/"
          .. "cri-containerd-2.3.2.linux-amd64.tar.gz" }, "containerd 2.3.2 has no cri-containerd bundle" },
      }
      for _, case in ipairs(cases) do
        local ctx = ctx_for(OSES.ubuntu2004, v2(case[1]))
        for k, v in pairs(ctx.vars) do
          if v == false then ctx.vars[k] = nil end -- unset
        end
        local s, err = roles.load("containerd", ctx)
        assert.is_nil(s)
        assert.matches("^recipes/roles/containerd%.lua:%d+: containerd: ", err)
        assert.truthy(err:find(case[2], 1, true), err)
      end
    end)

    it("keeps the cri-containerd bundle for 1.x", function()
      local s = assert(roles.load("containerd", ctx_for(OSES.ubuntu2004)))
      local names = {}
      for _, x in ipairs(s) do names[#names + 1] = x.name end
      assert.same({ "install libseccomp", "download, verify and unpack containerd",
        "containerd notifies systemd when ready (Type=notify)", "containerd boot order", "containerd memory pressure",
        "containerd max tasks", "containerd configuration", "enable and restart containerd" }, names)
      assert.truthy(step(s, "download, verify and unpack containerd").shell
        :find("tar --no-overwrite-dir -C / -xzf /tmp/containerd.tar.gz", 1, true))
      -- runc variables change nothing there (the bundle carries its runc)
      local with = assert(roles.load("containerd", ctx_for(OSES.ubuntu2004,
        { runc_version = "1.4.3", runc_sha256 = V2.runc_sha256 })))
      assert.same(s, with)
    end)
  end)

  describe("kubernetes sources", function()
    it("produces no steps for kubernetes_source_type skip", function()
      for _, os in pairs(OSES) do
        local c = ctx_for(os, { kubernetes_source_type = "skip" })
        assert.same({}, assert(roles.load("kubernetes", c)))
        local all = assert(roles.expand(roles.default_order(c.vars), c))
        assert.same({ "setup", "node", "providers", "containerd", "sysprep" }, roles_of(all))
      end
    end)

    it("downloads binaries and CNI for the http source", function()
      local c = ctx_for(OSES.ubuntu2004, { kubernetes_source_type = "http", kubernetes_cni_source_type = "http" })
      local s = assert(roles.load("kubernetes", c))
      local cni = step(s, "install the CNI plugins into /opt/cni/bin").shell
      assert.truthy(cni:find("mkdir -p -m 0755 /opt/cni/bin", 1, true))
      assert.truthy(cni:find("-o /tmp/cni.tar.gz https://github.com/containernetworking/plugins/releases/download/"
        .. "v0.8.6/"
        .. "cni-plugins-linux-amd64-v0.8.6.tgz;", 1, true))
      assert.truthy(cni:find("-o /tmp/cni.tar.gz.sum https://github.com/containernetworking/plugins/releases/download/"
        .. "v0.8.6/cni-plugins-linux-amd64-v0.8.6.tgz.sha256;", 1, true))
      assert.truthy(cni:find("echo \"$sum  /tmp/cni.tar.gz\" | sha256sum -c -\n"
        .. "tar -C /opt/cni/bin -xzf /tmp/cni.tar.gz", 1, true))
      local bins = step(s, "download kubeadm, kubectl and kubelet").shell
      for _, b in ipairs({ "kubeadm", "kubectl", "kubelet" }) do
        assert.truthy(bins:find("-o /usr/bin/" .. b .. " https://storage.googleapis.com/kubernetes-release/release/"
          .. "v1.16.14/bin/linux/amd64/" .. b .. ";", 1, true), b)
      end
      local imgs = step(s, "import the Kubernetes images").shell
      assert.truthy(imgs:find("ctr -n k8s.io images import /tmp/kube-apiserver.tar", 1, true))
      assert.falsy(imgs:find("etcd.tar", 1, true))
      assert.is_false(has_step(s, "pull the Kubernetes images"))
      assert.truthy(has_step(s, "enable the kubelet (not started)"))
      local crictl = step(s, "install crictl into /usr/local/bin").shell
      assert.truthy(crictl:find("-o /tmp/crictl.tar.gz https://github.com/kubernetes-sigs/cri-tools/releases/download/"
        .. "v1.16.0/crictl-v1.16.0-linux-amd64.tar.gz;", 1, true), crictl)
      assert.equal("install crictl into /usr/local/bin", s[1].name)   -- before the links into /usr/bin
      -- mismatched sources are refused
      c.vars.kubernetes_cni_source_type = "pkg"
      local _, err = roles.load("kubernetes", c)
      assert.matches("needs kubernetes_cni_source_type \"http\"", err, 1, true)
      c.vars.kubernetes_source_type = "tarball"
      _, err = roles.load("kubernetes", c)
      assert.matches("kubernetes_source_type must be pkg, http or skip, got 'tarball'", err, 1, true)
    end)
  end)

  describe("custom roles", function()
    it("come from extra directories and run before sysprep", function()
      local c = ctx_for(OSES.centos7, { custom_role = "true", custom_role_names = "hello" })
      local all = assert(roles.expand(roles.default_order(c.vars), c,
        { dirs = { "recipes/roles", "spec/fixtures/roles/extra" } }))
      assert.same({ "setup", "node", "providers", "containerd", "kubernetes", "hello", "sysprep" }, roles_of(all))
      local hello = step(all, "say hello", "hello")
      assert.equal("echo hello from centos > /etc/hello", hello.shell)
      local pb = step(all, "run the site playbook")
      assert.same({ playbook = "spec/fixtures/roles/extra/site.yml", extra_vars = { greeting = "hi" } }, pb.ansible)
      assert.equal("ansible", pb.kind)
    end)

    it("reports a role that is not found, and refuses path-like names", function()
      local _, err = roles.load("nope", ctx_for(OSES.centos7),
        { dirs = { "recipes/roles", "spec/fixtures/roles/extra" } })
      assert.equal("roles: role 'nope' not found in recipes/roles, spec/fixtures/roles/extra", err)
      _, err = roles.load("../setup", ctx_for(OSES.centos7))
      assert.equal("roles: invalid role name '../setup' (letters, digits, '_' and '-')", err)
    end)
  end)

  describe("invalid role files", function()
    -- <base>/roles/<name>.lua, and <base>/t.tmpl for template steps
    local base, dir
    setup(function()
      base = assert(fs.tempdir({ prefix = "capil-roles-spec", keep = true }))
      dir = base .. "/roles"
      assert(fs.mkdir(dir))
      write(base .. "/t.tmpl", "{{ nope }}")
    end)
    teardown(function() assert(fs.remove(base, { recursive = true })) end)

    local function load_src(name, src)
      write(dir .. "/" .. name .. ".lua", src)
      return roles.load(name, ctx_for(OSES.ubuntu2004), { dirs = { dir }, budget = 2000000 })
    end

    local function raises(fn, msg)
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.truthy(tostring(err):find(msg, 1, true), tostring(err))
    end

    local BAD = {
      { "unknown key", [[return function() return {
          { name = "ok", shell = "true" },
          { name = "install", shell = "x", comand = "y" } } end]], "step 2 (install): unknown key 'comand'" },
      { "missing name", [[return function() return { { shell = "true" } } end]], "step 1: missing 'name'" },
      { "wrong type", [[return function() return { { name = "motd", copy = { dest = "/etc/motd", content = "hi",
          mode = 644 } } } end]], "step 1 (motd): 'mode' must be an octal string like \"0644\", got number" },
      { "wrong become", [[return function() return { { name = "a", shell = "x", become = "yes" } } end]],
        "step 1 (a): 'become' must be a boolean, got string" },
      { "two kinds", [[return function() return { { name = "a", shell = "x", reboot = true } } end]],
        "step 1 (a): has both '" },
      { "no kind", [[return function() return { { name = "a", only_if = "true" } } end]],
        "step 1 (a): needs one of shell, copy, upload, template, reboot, ansible" },
      { "relative dest", [[return function() return { { name = "a", copy = { dest = "etc/x", content = "" } } } end]],
        "step 1 (a): 'copy.dest' must be an absolute path in the guest, got 'etc/x'" },
      { "unknown sub key",
        [[return function() return { { name = "a", upload = { src = "x", dest = "/x", mod = "0644" } } } end]],
        "step 1 (a): unknown key 'upload.mod'" },
      { "bad env", [[return function() return { { name = "a", shell = "x", env = { PATH = 1 } } } end]],
        "step 1 (a): 'env.PATH' must be a string, got number" },
      { "bad timeout", [[return function() return { { name = "a", shell = "x", timeout = -1 } } end]],
        "step 1 (a): 'timeout' must be a positive number of seconds, got -1" },
      { "not a list", [[return function() return { steps = {} } end]],
        "the role function must return a list of steps, found key 'steps'" },
      { "nil hole", [[return function() return { { name = "a", shell = "x" }, nil, { name = "b", shell = "y" } } end]],
        "step 2 is nil (use false to leave a step out)" },
      { "not a function", [[return { { name = "a", shell = "x" } }]],
        "a role file must return function(ctx), got table" },
      { "unknown template var", [[return function() return { { name = "t", template = {
          src = "t.tmpl", dest = "/etc/t" } } } end]], "step 1 (t): t.tmpl: unknown template variable '{{ nope }}'" },
      { "missing variable", [[return function() return { { name = "a", shell = var("no_such_var") } } end]],
        "variable 'no_such_var' is not set" },
      { "endless loop", [[return function() while true do end end]], "stopped after 2 million instructions" },
      { "os.execute", [[return function() os.execute("touch /tmp/pwned") return {} end]],
        "os is not available in recipes" },
      { "io at load time", [[local f = io.open("/etc/passwd") return function() return {} end]],
        "io is not available in recipes" },
    }

    for _, case in ipairs(BAD) do
      it("rejects " .. case[1] .. " naming the file and step", function()
        local name = case[1]:gsub("%W", "_")
        local steps, err = load_src(name, case[2])
        assert.is_nil(steps)
        assert.is_string(err)
        assert.truthy(err:find(dir .. "/" .. name .. ".lua", 1, true), err)
        assert.truthy(err:find(case[3], 1, true), err)
      end)
    end

    it("skips false entries and keeps step order", function()
      local steps = assert(load_src("cond", [[return function(ctx) return {
        { name = "a", shell = "true", become = false },
        ctx.os.family == "redhat" and { name = "b", shell = "yum" },
        { name = "c", reboot = true },
      } end]]))
      assert.same({ "a", "c" }, { steps[1].name, steps[2].name })
      assert.same({ false, true, "cond" }, { steps[1].become, steps[2].become, steps[2].role })
    end)

    it("raises on a malformed context (misuse)", function()
      raises(function() roles.load("setup", { vars = {}, os = { family = "arch" }, builder = "qemu" }) end,
        "roles: ctx.os.family must be debian, redhat or photon")
      raises(function() roles.load("setup", { os = OSES.centos7, builder = "qemu" }) end,
        "roles: ctx.vars must be a table")
      raises(function() roles.load("setup", { vars = { x = {} }, os = OSES.centos7, builder = "qemu" }) end,
        "roles: ctx.vars.x must be a string, got table")
      raises(function() roles.expand("setup", ctx_for(OSES.centos7)) end, "roles.expand: names must be a list")
    end)
  end)
end)
