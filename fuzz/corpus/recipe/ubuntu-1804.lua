-- Ubuntu 18.04 node image (d-i server installer), with the values of
-- image-builder's packer/ova/ubuntu-1804.json (August 2020).
---@type capil.Recipe
return {
  name = "ubuntu-1804",
  description = "Ubuntu 18.04 (server installer, preseed)",
  distro = { name = "ubuntu", version = "18.04", family = "debian" },
  os_display_name = "Ubuntu 18.04",
  guest_os = { workstation = "ubuntu-64", vsphere = "ubuntu64Guest", ovf_id = 94, ovf_version = "" },
  iso = {
    urls = {
      "http://cdimage.ubuntu.com/releases/18.04/release/ubuntu-18.04.4-server-amd64.iso",
      "https://old-releases.ubuntu.com/releases/18.04.4/ubuntu-18.04.4-server-amd64.iso",
    },
    checksum = "e2ecdace33c939527cbc9e8d23576381c493b071107207d2040af72595f8990b",
    checksum_type = "sha256",
  },
  boot = {
    wait = "10s",
    command = {
      -- F6 opens the boot options; 83 backspaces clear the default line
      "<enter><wait><f6><wait><esc><wait>" .. string.rep("<bs>", 83)
        .. "/install/vmlinuz auto console-setup/ask_detect=false console-setup/layoutcode=us "
        .. "debconf/frontend=noninteractive debian-installer=en_US fb=false initrd=/install/initrd.gz "
        .. "kbd-chooser/method=us keyboard-configuration/layout=USA keyboard-configuration/variant=USA "
        .. "locale=en_US netcfg/get_domain=local netcfg/get_hostname=localhost "
        .. "grub-installer/bootdev=/dev/sda preseed/url=",
      "http://{{ .HTTPIP }}:{{ .HTTPPort }}",
      "/18.04/preseed.cfg -- <enter>",
    },
  },
  installer = { dir = "http/ubuntu", files = { "18.04/preseed.cfg", "base/preseed.cfg" } },
  shutdown_command = "shutdown -P now",
  vars = {
    -- Package archives for /etc/apt/sources.list. Past its standard support
    -- the release stays on the archive while Ubuntu Pro (ESM) covers it
    -- (bionic: standard support ended May 2023, ESM until April 2028); after that it moves to http://old-releases.ubuntu.com/ubuntu
    -- (both variables then). The 2020 values, still serving.
    ubuntu_repo = "http://us.archive.ubuntu.com/ubuntu",
    ubuntu_security_repo = "http://security.ubuntu.com/ubuntu",
  },
}
