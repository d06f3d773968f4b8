local checks = require("capil.build.checks")
local roles = require("capil.build.roles")
local shell_quote = require("capil.util.text").shell_quote
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")

local VARS = dofile("spec/fixtures/roles/vars.lua")

local OSES = {
  ubuntu = { family = "debian", distro = "ubuntu", version = "20.04" },
  centos = { family = "redhat", distro = "centos", version = "7" },
  photon = { family = "photon", distro = "photon", version = "3" },
}

local function ctx_for(os, overrides)
  local vars = {}
  for k, v in pairs(VARS) do vars[k] = v end
  for k, v in pairs(overrides or {}) do vars[k] = v end
  return { vars = vars, os = os, builder = "qemu" }
end

-- Runs a compiled command with the real /bin/sh.
local function sh(cmd, cwd)
  return assert(proc.run({ argv = { "/bin/sh", "-c", cmd }, cwd = cwd, timeout = 10 }))
end

local function find(list, pred)
  for _, c in ipairs(list) do
    if pred(c) then return c end
  end
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("checks #unit", function()
  describe("quote (capil.util.shell_quote, the helper role and check files call)", function()
    it("is the helper role and check files see as quote", function()
      assert.equal(shell_quote, roles.helpers({}).quote)
      assert.is_nil(checks.quote)
    end)

    it("leaves plain words alone and single-quotes the rest", function()
      assert.equal("containerd", shell_quote("containerd"))
      assert.equal("/etc/kubernetes-version", shell_quote("/etc/kubernetes-version"))
      assert.equal("''", shell_quote(""))
      assert.equal("'a b'", shell_quote("a b"))
      assert.equal("'FOO=bar'", shell_quote("FOO=bar"))
      assert.equal("''\\''; rm -rf /'", shell_quote("'; rm -rf /"))
      assert.equal("'$(id)`id`\"x\"'", shell_quote("$(id)`id`\"x\""))
      assert.equal("42", shell_quote(42))
      assert.has_error(function() shell_quote("a\0b") end)
      assert.has_error(function() shell_quote(nil) end)
    end)

    it("round-trips hostile strings through a real shell", function()
      local hostile = { "'; rm -rf /", "$(touch pwned)", "`id`", "a\nb", "\\'\"*?[]~#&|;<>()", " lead", "-n", "" }
      for _, s in ipairs(hostile) do
        local r = sh("printf '%s' " .. shell_quote(s))
        assert.equal(0, r.code)
        assert.equal(s, r.stdout)
      end
    end)
  end)

  describe("compile", function()
    it("queries packages with dpkg-query on Debian and rpm elsewhere", function()
      assert.equal("dpkg-query -W -f='${Status}|${Version}\\n' kubelet 2>/dev/null"
        .. " | awk -F'|' '$1 ~ / installed$/ { print \"installed \" $2 }'",
        checks.compile({ package = "kubelet", version = "1.16.14-00" }, OSES.ubuntu))
      for _, os in ipairs({ OSES.centos, OSES.photon }) do
        assert.equal("rpm -q --qf 'installed %{VERSION}-%{RELEASE}\\n' kubelet 2>/dev/null",
          checks.compile({ package = "kubelet" }, os))
        assert.equal("rpm -q --qf 'installed %{VERSION}-%{RELEASE}\\n' docker 2>/dev/null",
          checks.compile({ absent_package = "docker" }, os))
      end
    end)

    it("compiles services, kernel parameters, files and commands", function()
      assert.equal("printf 'enabled=%s\\n' \"$(systemctl is-enabled containerd 2>/dev/null)\"; "
        .. "printf 'active=%s\\n' \"$(systemctl is-active containerd 2>/dev/null)\"",
        checks.compile({ service = "containerd", enabled = true, running = true }, OSES.photon))
      assert.equal("cat /proc/sys/net/ipv4/ip_forward",
        checks.compile({ kernel_param = "net.ipv4.ip_forward", value = "1" }, OSES.centos))
      assert.equal("if [ -e /etc/kubernetes-version ]; then echo exists=yes; else echo exists=no; exit 0; fi; "
        .. "stat -c 'mode=%a owner=%U:%G' /etc/kubernetes-version; "
        .. "if grep -qF -e v1.16.14 /etc/kubernetes-version; then echo contains=yes; else echo contains=no; fi",
        checks.compile({ file = "/etc/kubernetes-version", mode = "0644", contains = "v1.16.14" }, OSES.ubuntu))
      assert.equal("crictl ps", checks.compile({ command = "crictl ps" }, OSES.ubuntu))
      assert.has_error(function() checks.compile({ package = "x" }, { family = "arch" }) end)
      assert.has_error(function() checks.compile({ nothing = true }, OSES.ubuntu) end)
    end)

    it("quotes hostile values in every kind", function()
      local evil = "x'; rm -rf /"
      assert.equal("cat '/proc/sys/x'\\''; rm -rf /'", checks.compile({ kernel_param = evil, value = "1" }, OSES.ubuntu))
      assert.truthy(checks.compile({ service = evil, running = true }, OSES.ubuntu)
        :find("systemctl is-active 'x'\\''; rm -rf /' 2>/dev/null", 1, true))
      assert.truthy(checks.compile({ package = evil }, OSES.centos):find(" 'x'\\''; rm -rf /' 2>/dev/null", 1, true))
      assert.truthy(checks.compile({ file = "/" .. evil, contains = evil }, OSES.ubuntu)
        :find("grep -qF -e 'x'\\''; rm -rf /' '/x'\\''; rm -rf /'", 1, true))
    end)

    describe("run against this machine", function()
      local dir
      setup(function() dir = assert(fs.tempdir({ prefix = "capil-checks-spec", keep = true })) end)
      teardown(function() assert(fs.remove(dir, { recursive = true })) end)

      it("checks a file with a hostile name without running any of it", function()
        local name = dir .. "/v'; touch pwned; echo '"
        write(name, "line one\nkubernetes v1.16.14\n")
        local check = { file = name, mode = "0644", contains = "v1.16.14" }
        assert(proc.run({ argv = { "chmod", "0644", name } }))
        local res = checks.evaluate(check, sh(checks.compile(check, OSES.ubuntu), dir))
        assert.is_true(res.ok, res.detail)
        assert.is_nil(io.open(dir .. "/pwned"))
        check.contains = "v1.17.0"
        check.mode = "0600"
        res = checks.evaluate(check, sh(checks.compile(check, OSES.ubuntu), dir))
        assert.is_false(res.ok)
        assert.equal("expected mode 0600, got 0644; expected " .. name .. " to contain 'v1.17.0', got no such line",
          res.detail)
        res = checks.evaluate({ file = dir .. "/absent" }, sh(checks.compile({ file = dir .. "/absent" }, OSES.ubuntu)))
        assert.same({ ok = false, name = "file " .. dir .. "/absent",
          detail = "expected " .. dir .. "/absent to exist, got missing" }, res)
        res = checks.evaluate({ file = dir .. "/absent", exists = false },
          sh(checks.compile({ file = dir .. "/absent", exists = false }, OSES.ubuntu)))
        assert.is_true(res.ok)
      end)

      it("reads installed packages from the real dpkg database", function()
        local ver = sh("dpkg-query -W -f='${Version}' dpkg").stdout
        local ok = checks.evaluate({ package = "dpkg", version = ver },
          sh(checks.compile({ package = "dpkg", version = ver }, OSES.ubuntu)))
        assert.same({ ok = true, name = "package dpkg " .. ver, detail = "dpkg " .. ver }, ok)
        local bad = checks.evaluate({ package = "dpkg", version = "0.1-1" },
          sh(checks.compile({ package = "dpkg" }, OSES.ubuntu)))
        assert.same({ ok = false, name = "package dpkg 0.1-1", detail = "expected dpkg 0.1-1, got " .. ver }, bad)
        local missing = checks.evaluate({ package = "capil-no-such-package" },
          sh(checks.compile({ package = "capil-no-such-package" }, OSES.ubuntu)))
        assert.equal("expected capil-no-such-package installed, got not installed", missing.detail)
        local absent = checks.evaluate({ absent_package = "capil-no-such-package" },
          sh(checks.compile({ absent_package = "capil-no-such-package" }, OSES.ubuntu)))
        assert.is_true(absent.ok)
      end)
    end)
  end)

  describe("evaluate", function()
    local CASES = {
      { "command passes", { command = "containerd --version", stdout_matches = "v1%.3%.4" },
        { code = 0, stdout = "containerd github.com/containerd/containerd v1.3.4 814b795\n" }, true, "exit status 0" },
      { "command exit status", { command = "crictl ps" }, { code = 1, stderr = "connect: no such file\n" }, false,
        "expected exit status 0, got 1 (stderr 'connect: no such file')" },
      { "command stdout pattern", { command = "containerd --version", stdout_matches = "v1%.3%.4" },
        { code = 0, stdout = "containerd v1.4.0\n" }, false,
        "expected stdout matching 'v1%.3%.4', got 'containerd v1.4.0'" },
      { "command stdout lines", { command = "crictl images", stdout_lines = { "etcd", "pause" } },
        { code = 0, stdout = "etcd\n\npause\n" }, true, "exit status 0" },
      { "command stdout lines differ", { command = "crictl images", stdout_lines = { "etcd", "pause" } },
        { code = 0, stdout = "pause\n" }, false, "expected stdout lines [etcd, pause], got [pause]" },
      { "service ok", { service = "containerd", enabled = true, running = true },
        { code = 0, stdout = "enabled=enabled\nactive=active\n" }, true, "containerd enabled, active" },
      { "service disabled and dead", { service = "containerd", enabled = true, running = true },
        { code = 0, stdout = "enabled=disabled\nactive=inactive\n" }, false,
        "expected containerd enabled, got disabled; expected containerd running, got inactive" },
      { "kubelet enabled, not running", { service = "kubelet", enabled = true, running = false },
        { code = 0, stdout = "enabled=enabled\nactive=activating\n" }, true, "kubelet enabled, activating" },
      { "kubelet running", { service = "kubelet", enabled = true, running = false },
        { code = 0, stdout = "enabled=enabled\nactive=active\n" }, false, "expected kubelet not running, got active" },
      { "dockerd missing is off", { service = "dockerd", enabled = false, running = false },
        { code = 0, stdout = "enabled=\nactive=inactive\n" }, true, "dockerd no unit, inactive" },
      { "rpm version", { package = "kubelet", version = "1.16.14-0" },
        { code = 0, stdout = "installed 1.16.14-0\n" }, true, "kubelet 1.16.14-0" },
      { "rpm upstream version", { package = "kubelet", version = "1.16.14" },
        { code = 0, stdout = "installed 1.16.14-0\n" }, true, "kubelet 1.16.14-0" },
      { "rpm wrong version", { package = "kubelet", version = "1.16.14-0" },
        { code = 0, stdout = "installed 1.16.15-0\n" }, false, "expected kubelet 1.16.14-0, got 1.16.15-0" },
      { "rpm not installed", { package = "kubelet" },
        { code = 1, stdout = "package kubelet is not installed\n" }, false,
        "expected kubelet installed, got not installed" },
      { "several kernels", { package = "kernel", version = "3.10.0-1127.el7" },
        { code = 0, stdout = "installed 3.10.0-1062.el7\ninstalled 3.10.0-1127.el7\n" }, true,
        "kernel 3.10.0-1127.el7" },
      { "absent package present", { absent_package = "docker-ce" },
        { code = 0, stdout = "installed 19.03.1-3\n" }, false, "expected docker-ce not installed, got 19.03.1-3" },
      { "kernel param", { kernel_param = "net.ipv4.ip_forward", value = "1" }, { code = 0, stdout = "1\n" }, true,
        "net.ipv4.ip_forward = 1" },
      { "kernel param differs", { kernel_param = "net.ipv4.ip_forward", value = "1" }, { code = 0, stdout = "0\n" },
        false, "expected net.ipv4.ip_forward = 1, got 0" },
      { "kernel param tabs", { kernel_param = "net.ipv4.tcp_rmem", value = "4096 87380 6291456" },
        { code = 0, stdout = "4096\t87380\t6291456\n" }, true, "net.ipv4.tcp_rmem = 4096 87380 6291456" },
      { "kernel param missing", { kernel_param = "net.bridge.bridge-nf-call-iptables", value = "1" },
        { code = 255, stderr = "sysctl: cannot stat /proc/sys/net/bridge/bridge-nf-call-iptables: No such file\n" },
        false, "expected net.bridge.bridge-nf-call-iptables = 1, got no such parameter "
          .. "('sysctl: cannot stat /proc/sys/net/bridge/bridge-nf-call-iptables: No such file')" },
      { "file owner", { file = "/etc/hosts", owner = "root:root" },
        { code = 0, stdout = "exists=yes\nmode=644 owner=root:adm\n" }, false,
        "expected owner root:root, got root:adm" },
      { "timeout", { command = "sleep 100" }, { timeout = true }, false, "timed out" },
      { "signal", { command = "sleep 100" }, { code = 0, signal = 9 }, false, "killed by signal 9" },
    }
    for _, case in ipairs(CASES) do
      it(case[1], function()
        local r = checks.evaluate(case[2], case[3])
        assert.equal(case[4], r.ok)
        assert.equal(case[5], r.detail)
        assert.is_string(r.name)
      end)
    end

    it("summarises failures", function()
      local all, failed = checks.summary({ { ok = true, name = "a", detail = "" },
        { ok = false, name = "b", detail = "x" } })
      assert.is_false(all)
      assert.same({ { ok = false, name = "b", detail = "x" } }, failed)
      assert.is_true((checks.summary({})))
    end)
  end)

  describe("load", function()
    it("builds image-builder's goss set for Ubuntu", function()
      local list = assert(checks.load(ctx_for(OSES.ubuntu)))
      local function pkg(name) return find(list, function(c) return c.package == name end) end
      assert.equal("1.16.14-00", pkg("kubelet").version)
      assert.equal("1.16.14-00", pkg("kubeadm").version)
      assert.equal("1.16.14-00", pkg("kubectl").version)
      assert.equal("0.8.6-00", pkg("kubernetes-cni").version)
      for _, p in ipairs({ "cloud-init", "open-vm-tools", "cloud-guest-utils", "cloud-initramfs-growroot", "conntrackd",
        "linux-tools-virtual", "socat" }) do
        assert.truthy(pkg(p), p)
      end
      local params = {}
      for _, c in ipairs(list) do if c.kernel_param then params[c.kernel_param] = c.value end end
      assert.same({ ["net.bridge.bridge-nf-call-iptables"] = "1", ["net.ipv6.conf.all.forwarding"] = "1",
        ["net.ipv6.conf.all.disable_ipv6"] = "0", ["net.ipv4.ip_forward"] = "1",
        ["net.bridge.bridge-nf-call-ip6tables"] = "1" }, params)
      local svc = {}
      for _, c in ipairs(list) do if c.service then svc[c.service] = { c.enabled, c.running } end end
      assert.same({ containerd = { true, true }, dockerd = { false, false }, kubelet = { true, false } }, svc)
      local images = find(list, function(c) return c.name == "control-plane images pulled" end)
      assert.same({ "coredns", "etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy", "kube-scheduler",
        "pause" }, images.stdout_lines)
      local version = find(list, function(c) return c.command == "containerd --version" end)
      assert.equal("containerd github.com/containerd/containerd v1.3.4 814b7956", ("containerd github.com/containerd/"
        .. "containerd v1.3.4 814b7956"):match(".*" .. version.stdout_matches .. ".*"))
      assert.falsy(("containerd v1.3.45"):find(version.stdout_matches))
      assert.truthy(find(list, function(c) return c.command == "crictl ps" end))
      local vf = find(list, function(c) return c.file == "/etc/kubernetes-version" end)
      assert.same({ "0644", "v1.16.14" }, { vf.mode, vf.contains })
      -- every check has a name and a kind and compiles
      local names = {}
      for _, c in ipairs(list) do
        assert.is_string(c.name)
        assert.is_nil(names[c.name], "duplicate " .. c.name)
        names[c.name] = true
        assert.is_string(checks.compile(c, OSES.ubuntu))
      end
    end)

    it("checks runc and config version 3 for containerd 2.x only", function()
      local v2 = { containerd_version = "2.3.2", runc_version = "1.4.3" }
      local list = assert(checks.load(ctx_for(OSES.ubuntu, v2)))
      local runc = find(list, function(c) return c.command == "/usr/local/sbin/runc --version" end)
      assert.truthy(("runc version 1.4.3\ncommit: v1.4.3-0-g0\nspec: 1.2.1\n"):find(runc.stdout_matches))
      assert.falsy(("runc version 1.4.30\n"):find(runc.stdout_matches))
      assert.falsy(("runc version 1.3.0\n"):find(runc.stdout_matches))
      local cfg = find(list, function(c) return c.file == "/etc/containerd/config.toml" end)
      assert.same({ true, "0644", "version = 3" }, { cfg.exists, cfg.mode, cfg.contains })
      local version = find(list, function(c) return c.command == "containerd --version" end)
      assert.truthy(("containerd github.com/containerd/containerd/v2 v2.3.2 abc\n"):find(version.stdout_matches))
      for _, c in ipairs(list) do
        local r = assert(proc.run({ argv = { "/bin/sh", "-n", "-c", checks.compile(c, OSES.ubuntu) }, timeout = 10 }))
        assert.equal(0, r.code, c.name .. ": " .. r.stderr)
      end
      list = assert(checks.load(ctx_for(OSES.ubuntu)))
      assert.is_nil(find(list, function(c) return c.command == "/usr/local/sbin/runc --version" end))
      assert.is_nil(find(list, function(c) return c.file == "/etc/containerd/config.toml" end))
    end)

    it("compiles every node check to shell that parses with the real /bin/sh", function()
      for _, os in pairs(OSES) do
        for _, source in ipairs({ "pkg", "http" }) do
          local list = assert(checks.load(ctx_for(os, { kubernetes_source_type = source,
            kubernetes_cni_source_type = source })))
          for _, c in ipairs(list) do
            local r = assert(proc.run({ argv = { "/bin/sh", "-n", "-c", checks.compile(c, os) }, timeout = 10 }))
            assert.equal(0, r.code, c.name .. ": " .. r.stderr)
          end
        end
      end
    end)

    it("pins rpm versions on CentOS and Photon and adds Photon's extras", function()
      for _, os in ipairs({ OSES.centos, OSES.photon }) do
        local list = assert(checks.load(ctx_for(os)))
        local kubelet = find(list, function(c) return c.package == "kubelet" end)
        assert.equal("1.16.14-0", kubelet.version)
        assert.equal("0.8.6-0", find(list, function(c) return c.package == "kubernetes-cni" end).version)
        local tcp = find(list, function(c) return c.kernel_param == "net.ipv4.tcp_limit_output_bytes" end)
        assert.equal(os.family == "photon", tcp ~= nil)
        local extras = os.family == "photon" and { "cloud-utils", "python3-netifaces", "rng-tools", "audit" }
          or { "cloud-utils-growpart", "python2-pip", "yum-utils" }
        for _, p in ipairs(extras) do
          assert.truthy(find(list, function(c) return c.package == p end), p)
        end
        assert.is_nil(find(list, function(c) return c.package == "cloud-guest-utils" end))
      end
    end)

    it("leaves Kubernetes out for the skip source and checks versions for http", function()
      local list = assert(checks.load(ctx_for(OSES.ubuntu, { kubernetes_source_type = "skip" })))
      for _, c in ipairs(list) do
        assert.is_nil(c.package and c.package:match("^kube"), c.name)
        assert.not_equal("kubelet", c.service)
        assert.is_nil(c.file)
        assert.is_nil(c.command and c.command:find("crictl images", 1, true))
      end
      assert.truthy(find(list, function(c) return c.service == "containerd" end))
      list = assert(checks.load(ctx_for(OSES.ubuntu,
        { kubernetes_source_type = "http", kubernetes_cni_source_type = "http" })))
      assert.is_nil(find(list, function(c) return c.package == "kubelet" end))
      local kubelet = find(list, function(c) return c.command == "kubelet --version | awk '{print $2}'" end)
      assert.truthy(("v1.16.14\n"):find(kubelet.stdout_matches))
      assert.falsy(("v1.16.140\n"):find(kubelet.stdout_matches))
      assert.same({ "kube-apiserver", "kube-controller-manager", "kube-proxy", "kube-scheduler" },
        find(list, function(c) return c.name == "control-plane images imported" end).stdout_lines)
    end)

    describe("invalid check files", function()
      local dir
      setup(function() dir = assert(fs.tempdir({ prefix = "capil-checks-load", keep = true })) end)
      teardown(function() assert(fs.remove(dir, { recursive = true })) end)

      local CASES = {
        { "unknown key", [[return function() return { { service = "x", enabled = true, runing = true } } end]],
          "check 1: unknown key 'runing' for a service check" },
        { "wrong type", [[return function() return { { name = "ip", kernel_param = "a", value = 1 } } end]],
          "check 1 (ip): 'value' must be a string, got number" },
        { "no kind", [[return function() return { { command = "true" }, { name = "x" } } end]],
          "check 2 (x): needs one of command, service, package, absent_package, kernel_param, file" },
        { "two kinds", [[return function() return { { package = "a", file = "/b" } } end]], "(one kind per check)" },
        { "bad package name", [[return function() return { { package = "a b" } } end]], "'a b' is not a package name" },
        { "relative file", [[return function() return { { file = "etc/x" } } end]], "'file' must be an absolute path" },
        { "service without state", [[return function() return { { service = "x" } } end]],
          "needs 'enabled' or 'running'" },
        { "endless loop", [[return function() repeat until false end]], "stopped after 2 million instructions" },
        { "io", [[return function() io.write("x") return {} end]], "io is not available in recipes" },
      }
      for _, case in ipairs(CASES) do
        it("rejects " .. case[1], function()
          local path = dir .. "/" .. case[1]:gsub("%W", "_") .. ".lua"
          write(path, case[2])
          local list, err = checks.load(ctx_for(OSES.centos), { files = { path }, budget = 2000000 })
          assert.is_nil(list)
          assert.truthy(err:find(path, 1, true), err)
          assert.truthy(err:find(case[3], 1, true), err)
        end)
      end
    end)
  end)
end)
