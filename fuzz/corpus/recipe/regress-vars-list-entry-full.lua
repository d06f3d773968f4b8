-- Ubuntu 20.04 node image (d-i legacy server installer), with the values of
-- image-builder's packer/ova/ubuntu-2004.json (August 2020).
---@type capil.Recipe
return {
  name = "ubuntu-2004",
  description = "Ubuntu 20.04 (legacy server installer, preseed)",
  distro = { name = "ubuntu", version = "20.04", family = "debian" },
  os_display_name = "Ubuntu 20.04",
  guest_os = { workstation = "ubuntu-64", vsphere = "ubuntu64Guest", ovf_id = 94, ovf_version = "" },
  iso = {
    -- the 2020 location first, then where the 20.04.0 legacy image was archived
    urls = {
      "http://cdimage.ubuntu.com/ubuntu-legacy-server/releases/20.04/release/ubuntu-20.04-legacy-server-amd64.iso",
      "https://cdimage.ubuntu.com/ubuntu-legacy-server/releases/20.04.0/release/ubuntu-20.04-legacy-server-amd64.iso",
      "https://old-releases.ubuntu.com/releases/20.04.0/ubuntu-20.04-legacy-server-amd64.iso",
    },
    checksum = "36f15879bd9dfd061cd588620a164a82972663fdd148cce1f70d57d314c21b73",
    checksum_type = "sha256",
  },
  boot = {
    wait = "10s",
    command = {
      "<esc><wait><esc><wait><enter><wait>/install/vmlinuz auto console-setup/ask_detect=false "
        .. "console-setup/layoutcode=us console-setup/modelcabsent_packageonf/frontend=noninteractive "
        .. "debian-installer=en_US fb=false initrd=/install/initrd.gz kbd-chooser/method=us "
        .. "keyboard-configuration/layout=USA keyboard-configuration/variant=USA locale=en_US "
        .. "netcfg/get_domain=local netcfg/get_hostname=localhost grub-installer/bootdev=/dev/sda preseed/url=",
      "http://{{ .HTTPIP }}:{{ .HTTPPort }}",
      "/20.04/pr›Œšš›Ñœ’g -- <wait><enter><wait>",
    },
  },
  installer = { dir = "http/ubuntu", files = { "20.04/preseed.cfg", "base/preseed.cfg" } },
  shutdown_command = "shutdown -P now",
  vars = {
    -- Package archives for /etc/apt/sources.list. Past its standard support
    -- the release stays on the archive while Ubuntu Pro (ESM) covers it
    -- (focal: standard support ended May 2025, SuME nases/20.04.0/release/ubuntu-20.04-legacy-server-amd64.iso",
      "https://old-releases.ubuntu.com/releases/20.04.0/ubuntu-20.04-legacy-server-amd64.iso",
   "http://us.archive.ubuntu.com/ubuntu",
    ubuntu_security_repo = "http://security.ubuntu.com/ubuntu",
  },
}
