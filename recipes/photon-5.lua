-- VMware Photon OS 5 node image (Photon installer, ks.json from a seed CD),
-- with the values of image-builder's images/capi/packer/ova/photon-5.json
-- (2026) and its packer/ova/linux/photon/http/5/ks.json.tmpl.
---@type capil.Recipe
return {
  name = "photon-5",
  description = "VMware Photon OS 5.0 GA (ks.json from a seed CD)",
  distro = { name = "photon", version = "5.0", family = "photon" },
  os_display_name = "VMware Photon OS 64-bit",
  -- image-builder's hack/image-build-ova.py: vmware-photon-64 is OVF id 36
  guest_os = { workstation = "vmware-photon-64", vsphere = "vmwarePhoton64Guest", ovf_id = 36, ovf_version = "" },
  iso = {
    urls = {
      "https://packages.vmware.com/photon/5.0/GA/iso/photon-minimal-5.0-dde71ec57.x86_64.iso",
      -- Broadcom's host of the same layout (vmware/photon issue 1645)
      "https://packages.broadcom.com/photon/5.0/GA/iso/photon-minimal-5.0-dde71ec57.x86_64.iso",
    },
    checksum = "85cddaa8da26c095cf55d3f22f0838ad5d9ae73aa476d0c5c8e54bfbfcb432de"
      .. "af940733c2cb5af14d1e5b133da65c17f3f4e215bf381d5b8b411d548b66a463",
    checksum_type = "sha512",
  },
  boot = {
    wait = "10s",
    -- ks=<device>:<path>: the seed CD is the second CD-ROM, /dev/sr1
    -- (image-builder's boot_media_path); insecure_installation=1 as there.
    -- "root/dev/ram0" is written so in image-builder (sic); the installer ignores it.
    command = {
      "<esc><wait> vmlinuz initrd=initrd.img root/dev/ram0 loglevel=3 photon.media=cdrom ks=",
      "/dev/sr1:/5/ks.json",
      " insecure_installation=1<enter><wait>",
    },
  },
  -- 5/ks.json on the seed CD (label cidata), nothing served over HTTP.
  -- image-builder attaches that CD-ROM on SATA (cdrom_type "sata"); so does this recipe.
  installer = { dir = "http/photon", files = {}, cd_files = { "5/ks.json" }, cd_label = "cidata", cd_bus = "sata" },
  shutdown_command = "shutdown now",
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
    -- Package repositories: Broadcom's host since 2025 (vmware/photon issue
    -- 1645: packages.vmware.com/photon/... answers 404, packages.broadcom.com/photon/...
    -- serves the same layout, <base>/<release>/photon_updates_<release>_<arch>).
    photon_repo = "https://packages.broadcom.com/photon",
  },
}
