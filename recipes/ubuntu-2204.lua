-- Ubuntu 22.04 node image: subiquity autoinstall from the live
-- server ISO, the answer file on a seed CD. The values of image-builder's
-- images/capi/packer/ova/ubuntu-2204.json (2026) and its
-- packer/ova/linux/ubuntu/http/22.04/user-data.tmpl.
---@type capil.Recipe
return {
  name = "ubuntu-2204",
  description = "Ubuntu 22.04 (live server, autoinstall from a seed CD)",
  distro = { name = "ubuntu", version = "22.04", family = "debian" },
  os_display_name = "Ubuntu 22.04",
  -- image-builder's hack/image-build-ova.py: ubuntu-64 is OVF id 94, ubuntu64Guest
  guest_os = { workstation = "ubuntu-64", vsphere = "ubuntu64Guest", ovf_id = 94, ovf_version = "" },
  iso = {
    -- releases.ubuntu.com keeps the newest point release of a series; older ones move to old-releases.
    urls = {
      "https://releases.ubuntu.com/22.04.5/ubuntu-22.04.5-live-server-amd64.iso",
      "https://old-releases.ubuntu.com/releases/22.04/ubuntu-22.04.5-live-server-amd64.iso",
    },
    checksum = "9bc6028870aef3f74f4e16b900008179e78b130e6b0b9a140635434a46aa98b0",
    checksum_type = "sha256",
  },
  boot = {
    wait = "10s",
    -- GRUB's command line (the live server boots GRUB on BIOS and EFI
    -- alike): `autoinstall` skips the confirmation, ds='nocloud;' points
    -- cloud-init at the CIDATA seed CD (no HTTP server). image-builder's
    -- boot_command_prefix with its boot_disable_ipv6 default, 0.
    command = {
      "c<wait>linux /casper/vmlinuz ipv6.disable=0 --- autoinstall ds='nocloud;'<enter><wait>"
        .. "initrd /casper/initrd<enter><wait>boot<enter>",
    },
  },
  -- user-data and meta-data at the seed CD's root; nothing is served over
  -- HTTP. Label CIDATA as image-builder since 2026 (its pull request 2064;
  -- cloud-init's NoCloud takes cidata or CIDATA).
  installer = { dir = "http/ubuntu/22.04", files = {}, cd_files = { "user-data", "meta-data" }, cd_label = "CIDATA" },
  shutdown_command = "shutdown -P now",
  -- Kubernetes from pkgs.k8s.io at image-builder's current default
  -- (images/capi/packer/config/kubernetes.json: v1.36.1)
  kubernetes = { semver = "v1.36.1" },
  -- Kubernetes v1.36 needs containerd 2.x: image-builder's
  -- packer/config/containerd.json (2.3.2) from containerd's release
  -- (image-builder's containerd role; the release tarball URL is derived from the version);
  -- the checksum is kubespray's (roles/kubespray_defaults/vars/main/checksums.yml),
  -- image-builder reads the release's .sha256sum at build time. The pause
  -- image is image-builder's roles/node/defaults pause_image.
  containerd = {
    version = "2.3.2",
    sha256 = "75625e6f6595bb95f3fb9c8123a60534af4a8d9b52d7617065967bcefe71a17a",
    pause_image = "registry.k8s.io/pause:3.10.2",
  },
  vars = {
    -- runc from its release (containerd 2.x tarballs carry none): image-builder's
    -- containerd.json runc_version, kubespray's checksum of runc.amd64
    runc_version = "1.4.3",
    runc_sha256 = "f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60",
    -- Package archives for /etc/apt/sources.list (jammy); past its support the
    -- release moves to http://old-releases.ubuntu.com/ubuntu (both variables then).
    ubuntu_repo = "http://us.archive.ubuntu.com/ubuntu",
    ubuntu_security_repo = "http://security.ubuntu.com/ubuntu",
  },
}
