-- CentOS 7 node image (anaconda, kickstart), with the values of
-- image-builder's packer/ova/centos-7.json (August 2020).
---@type capil.Recipe
return {
  name = "centos-7",
  description = "CentOS 7.8 (kickstart)",
  distro = { name = "centos", version = "7", family = "redhat" },
  os_display_name = "CentOS 7",
  guest_os = { workstation = "centos7-64", vsphere = "centos7_64Guest", ovf_id = 107, ovf_version = "7" },
  iso = {
    urls = {
      "https://mirrors.edge.kernel.org/centos/7.8.2003/isos/x86_64/CentOS-7-x86_64-Minimal-2003.iso",
      "https://vault.centos.org/7.8.2003/isos/x86_64/CentOS-7-x86_64-Minimal-2003.iso",
    },
    checksum = "659691c28a0e672558b003d223f83938f254b39875ee7559d1a4a14c79173193",
    checksum_type = "sha256",
  },
  boot = {
    wait = "10s",
    command = { "<tab> text ks=", "http://{{ .HTTPIP }}:{{ .HTTPPort }}", "/7/ks.cfg<enter><wait>" },
  },
  installer = { dir = "http/centos", files = { "7/ks.cfg" } },
  shutdown_command = "sys-unconfig",
  vars = {
    redhat_epel_rpm = "https://dl.fedoraproject.org/pub/epel/epel-release-latest-7.noarch.rpm",
  },
}
