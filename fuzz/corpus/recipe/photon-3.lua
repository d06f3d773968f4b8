-- VMware Photon OS 3 node image (Photon installer, ks.json), with the
-- values of image-builder's packer/ova/photon-3.json (August 2020).
---@type capil.Recipe
return {
  name = "photon-3",
  description = "VMware Photon OS 3.0 Rev3 (ks.json)",
  distro = { name = "photon", version = "3.0", family = "photon" },
  os_display_name = "VMware Photon OS 64-bit",
  guest_os = { workstation = "vmware-photon-64", vsphere = "vmwarePhoton64Guest", ovf_id = 36, ovf_version = "" },
  iso = {
    urls = {
      "https://packages.vmware.com/photon/3.0/Rev3/iso/photon-minimal-3.0-a383732.iso",
      "https://packages.broadcom.com/artifactory/photon/3.0/Rev3/iso/photon-minimal-3.0-a383732.iso",
    },
    checksum = "c2883a42e402a2330d9c39b4d1e071cf9b3b5898",
    checksum_type = "sha1",
  },
  boot = {
    wait = "10s",
    command = {
      -- "root/dev/ram0" is written so in image-builder (sic); the installer ignores it
      "<esc><wait> vmlinuz initrd=initrd.img root/dev/ram0 loglevel=3 photon.media=cdrom ks=",
      "http://{{ .HTTPIP }}:{{ .HTTPPort }}",
      "/3/ks.json<enter><wait>",
    },
  },
  installer = { dir = "http/photon", files = { "3/ks.json" } },
  shutdown_command = "shutdown now",
  vars = {
    -- Package repositories: Broadcom's host since 2025 (vmware/photon issue
    -- 1645: packages.vmware.com/photon/... answers 404, packages.broadcom.com/photon/...
    -- serves the same layout, <base>/<release>/photon_updates_<release>_<arch>).
    -- 2020: https://dl.bintray.com/vmware (then https://packages.vmware.com/photon, 2021)
    photon_repo = "https://packages.broadcom.com/photon",
  },
}
