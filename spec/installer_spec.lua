local template = require("capil.util.template")
local json = require("capil.sys.json")

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- with the static address's variables as a build without build_ip has them
-- (capil.build.staticip.template_vars: DHCP)
local function render(rel, vars)
  local all = require("capil.build.staticip").template_vars(nil)
  for k, v in pairs(vars) do all[k] = v end
  return template.render(read("recipes/http/" .. rel), all, rel)
end

local function lines(text)
  local set = {}
  for l in text:gmatch("[^\n]*") do set[l] = true end
  return set
end

local DEFAULT = { ssh_username = "builder", ssh_password = "builder" }

describe("installer templates #unit", function()
  it("renders the CentOS 7 kickstart with image-builder's settings", function()
    local ks = assert(render("centos/7/ks.cfg", DEFAULT))
    local l = lines(ks)
    for _, want in ipairs({
      "install", "cdrom", "text", "skipx", "lang en_US.UTF-8", "keyboard us",
      "network --onboot yes --bootproto=dhcp --hostname centos.vm", "firewall --disabled", "selinux --permissive",
      "timezone UTC", "unsupported_hardware", "auth --enableshadow --passalgo=sha512 --kickstart",
      "user --name=builder --plaintext --password builder --groups=builder,wheel",
      "firstboot --disabled", "eula --agreed", "bootloader --location=mbr", "zerombr", "clearpart --all --initlabel",
      "part / --grow --asprimary --fstype=ext4 --label=slash",
      "%packages --ignoremissing --excludedocs", "openssh-server", "sed", "sudo", "open-vm-tools", "-*-firmware",
      "-postfix", "%end", "services --enabled=sshd", "reboot", "%post --erroronfail", "update-ca-trust force-enable",
      "echo 'builder ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/builder", "chmod 440 /etc/sudoers.d/builder",
      "yum -y clean all", "swapoff -a", "rm -f /swapfile", "sed -ri '/\\sswap\\s/s/^#?/#/' /etc/fstab",
      "sed -i '/^\\(HWADDR\\|UUID\\)=/d' /etc/sysconfig/network-scripts/ifcfg-*",
    }) do
      assert.truthy(l[want], want)
    end
    assert.falsy(ks:find("{{", 1, true))
    assert.falsy(ks:find("swap", 1, true) and ks:find("part swap", 1, true))
  end)

  it("renders the Photon 3 ks.json as valid JSON", function()
    local text = assert(render("photon/3/ks.json", DEFAULT))
    local ks = assert(json.decode(text))
    assert.equal("localhost", ks.hostname)
    assert.equal("/dev/sda", ks.disk)
    assert.is_true(ks.password.crypted)
    assert.equal("*", ks.password.text)
    assert.equal(-1, ks.password.age)
    local pkgs = {}
    for _, p in ipairs(ks.packages) do pkgs[#pkgs + 1] = p end
    assert.same({ "bash", "bc", "bridge-utils", "bzip2", "ca-certificates", "cloud-init", "cpio", "cracklib-dicts",
      "dbus", "e2fsprogs", "file", "filesystem", "findutils", "gdbm", "grep", "gzip", "iana-etc", "initramfs",
      "iptables", "iproute2", "iputils", "libtool", "linux", "motd", "net-tools", "openssh-server", "open-vm-tools",
      "pkg-config", "photon-release", "photon-repos", "procps-ng", "rpm", "sed", "sudo", "tdnf", "tzdata",
      "util-linux", "vim", "which" }, pkgs)
    local post = {}
    for _, p in ipairs(ks.postinstall) do post[#post + 1] = p end
    assert.same({
      "#!/bin/sh",
      "useradd -U -d /home/builder -m --groups wheel builder && echo 'builder:builder' | chpasswd",
      "echo 'builder ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/builder",
      "chmod 440 /etc/sudoers.d/builder",
      "systemctl enable sshd",
      "tdnf clean all",
      "swapoff -a",
      "rm -f /swapfile",
    }, post)
  end)

  it("renders the Ubuntu preseeds: per-release include and the shared base", function()
    for _, v in ipairs({ "18.04", "20.04" }) do
      local p = assert(render("ubuntu/" .. v .. "/preseed.cfg", DEFAULT))
      assert.truthy(lines(p)["d-i preseed/include string ../base/preseed.cfg"], v)
    end
    local base = assert(render("ubuntu/base/preseed.cfg", DEFAULT))
    local l = lines(base)
    for _, want in ipairs({
      "d-i debian-installer/locale string en_US.utf8", "d-i console-setup/layout string us",
      "d-i time/zone string UTC", "d-i base-installer/kernel/override-image string linux-virtual",
      "debconf debconf/frontend select Noninteractive", "tasksel tasksel/first multiselect # standard, ubuntu-server",
      "d-i partman-auto/method string regular", "d-i partman-basicfilesystems/no_swap boolean false",
      "d-i passwd/user-fullname string builder", "d-i passwd/username string builder",
      "d-i passwd/user-password password builder", "d-i passwd/user-password-again password builder",
      "d-i user-setup/allow-password-weak boolean true", "d-i pkgsel/upgrade select none",
      "d-i apt-setup/use_mirror boolean false", "d-i apt-setup/services-select multiselect none",
      "d-i pkgsel/include string openssh-server open-vm-tools",
      "    echo 'builder ALL=(ALL) NOPASSWD: ALL' >/target/etc/sudoers.d/builder ; \\",
      "    in-target chmod 440 /etc/sudoers.d/builder ; \\",
      "    in-target sed -ri '/\\sswap\\s/s/^#?/#/' /etc/fstab ; \\",
      "    in-target rm -f /etc/udev/rules.d/70-persistent-net.rules",
    }) do
      assert.truthy(l[want], want)
    end
    assert.truthy(base:find("slash ::%s+\\\n%s+0 0 %-1 ext4%s+\\\n%s+%$primary{ } %$bootable{ }"))
  end)

  it("takes the build account from the variables", function()
    local vars = { ssh_username = "capv", ssh_password = "s3cr3t-Pw" }
    local ks = assert(render("centos/7/ks.cfg", vars))
    assert.truthy(lines(ks)["user --name=capv --plaintext --password s3cr3t-Pw --groups=capv,wheel"])
    assert.falsy(ks:gsub("image%-builder", ""):find("builder", 1, true))
    local photon = assert(json.decode(assert(render("photon/3/ks.json", vars))))
    assert.equal("useradd -U -d /home/capv -m --groups wheel capv && echo 'capv:s3cr3t-Pw' | chpasswd",
      photon.postinstall[2])
    local base = assert(render("ubuntu/base/preseed.cfg", vars))
    assert.truthy(lines(base)["d-i passwd/user-password-again password s3cr3t-Pw"])
    assert.falsy(base:gsub("image%-builder", ""):find("builder", 1, true))
  end)

  it("fails on a missing variable, naming it and the file", function()
    for _, f in ipairs({ "centos/7/ks.cfg", "photon/3/ks.json", "ubuntu/base/preseed.cfg" }) do
      local out, err = render(f, { ssh_username = "builder" })
      assert.is_nil(out)
      assert.equal(f .. ": unknown template variable '{{ ssh_password }}'", err)
    end
  end)
end)
