-- Rocky Linux 9 node image (anaconda, kickstart from a seed CD, EFI), with
-- the values of image-builder's images/capi/packer/ova/rockylinux-9.json
-- (2026) and its packer/ova/linux/rockylinux/http/9/ks.cfg.tmpl.
---@type capil.Recipe
return {
  name = "rockylinux-9",
  description = "Rocky Linux 9.6 minimal, EFI (kickstart from a seed CD)",
  distro = { name = "rockylinux", version = "9", family = "redhat" },
  os_display_name = "RockyLinux 9",
  -- image-builder's hack/image-build-ova.py: rockylinux-64 is OVF id 80, no version
  guest_os = { workstation = "rockylinux-64", vsphere = "rockylinux_64Guest", ovf_id = 80, ovf_version = "" },
  iso = {
    -- Rocky's vault keeps every point release (dl. and download.rockylinux.org)
    urls = {
      "https://dl.rockylinux.org/vault/rocky/9.6/isos/x86_64/Rocky-9.6-x86_64-minimal.iso",
      "https://download.rockylinux.org/vault/rocky/9.6/isos/x86_64/Rocky-9.6-x86_64-minimal.iso",
    },
    checksum = "aed9449cf79eb2d1c365f4f2561f923a80451b3e8fdbf595889b4cf0ac6c58b8",
    checksum_type = "sha256",
  },
  boot = {
    wait = "10s",
    -- GRUB's EFI menu: select "Install Rocky Linux", edit it (e), go to the
    -- end of the linux line, drop "quiet", add the kickstart on the seed
    -- CD, boot with Ctrl-X (image-builder's boot_command_prefix and suffix).
    command = {
      "<up>e<down><down><end><bs><bs><bs><bs><bs>text inst.ks=",
      "hd:LABEL=cidata:/ks.cfg",
      "<leftCtrlOn>x<leftCtrlOff>",
    },
  },
  -- ks.cfg at the seed CD's root (label cidata), nothing served over HTTP
  installer = { dir = "http/rockylinux/9", files = {}, cd_files = { "ks.cfg" }, cd_label = "cidata" },
  hardware = { firmware = "efi", vmx_version = 20 },
  shutdown_command = "/sbin/halt -h -p",
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
    -- image-builder's rockylinux-9.json
    redhat_epel_rpm = "https://dl.fedoraproject.org/pub/epel/epel-release-latest-9.noarch.rpm",
  },
}
