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
  -- Package sources (the kickstart installs from the CD; these serve the
  -- provisioning). CentOS 7 reached its end in June 2024: mirrorlist.centos.org
  -- is gone and the packages are archived under the last point release.
  vars = {
    -- 2020: the repo files' mirrorlist=http://mirrorlist.centos.org/?release=7…
    centos_repo = "https://vault.centos.org/7.9.2009",
    -- 2020: https://dl.fedoraproject.org/pub/epel/epel-release-latest-7.noarch.rpm
    redhat_epel_rpm = "https://archives.fedoraproject.org/pub/archive/epel/7/x86_64/Packages/e/epel-release-7-14.noarch.rpm",
    -- 2020: the repo files' metalink=https://mirrors.fedoraproject.org/metalink?repo=epel-7…
    redhat_epel_repo = "https://archives.fedoraproject.org/pub/archive/epel/7",
  },
}
