-- Ubuntu 24.04 node image: ubuntu-2204 (subiquity autoinstall from the live
-- server ISO, the answer file on a seed CD, containerd 2.x, Kubernetes from
-- pkgs.k8s.io) with the values of image-builder's
-- images/capi/packer/ova/ubuntu-2404.json (2026) and its
-- packer/ova/linux/ubuntu/http/24.04/user-data.tmpl. The boot command,
-- guest ids, shutdown command and versions are 22.04's (image-builder's
-- are the same).
---@type capil.Recipe
return {
  extends = "ubuntu-2204",
  name = "ubuntu-2404",
  description = "Ubuntu 24.04 (live server, autoinstall from a seed CD)",
  distro = { version = "24.04" },
  os_display_name = "Ubuntu 24.04",
  iso = {
    -- releases.ubuntu.com/noble holds only the newest point release;
    -- older ones move to old-releases.
    urls = {
      "https://releases.ubuntu.com/noble/ubuntu-24.04.4-live-server-amd64.iso",
      "https://old-releases.ubuntu.com/releases/24.04/ubuntu-24.04.4-live-server-amd64.iso",
    },
    checksum = "e907d92eeec9df64163a7e454cbc8d7755e8ddc7ed42f99dbc80c40f1a138433",
  },
  -- user-data and meta-data at the seed CD's root (label CIDATA)
  installer = { dir = "http/ubuntu/24.04" },
}
