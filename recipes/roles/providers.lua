-- providers: what a vSphere OVA needs to boot under Cluster API: cloud-init
-- with a VMware guestinfo datasource (its own from 21.3, else VMware's script), VMware Tools settings, and unit
-- ordering between cloud-init and containerd (image-builder's providers
-- role, vmware tasks plus the common ones).
--
-- capil runs this for every builder, QEMU included: every capil image ends
-- up as an OVA for vSphere (image-builder ran the VMware tasks only for
-- vmware/vsphere builders).

local CLOUD_INIT_PACKAGES = {
  debian = { "cloud-init", "cloud-guest-utils", "cloud-initramfs-copymods", "cloud-initramfs-dyn-netconf",
    "cloud-initramfs-growroot" },
  redhat = { "cloud-init", "cloud-utils-growpart", "python2-pip" },
  photon = { "cloud-init", "cloud-utils", "python3-netifaces" },
}

-- Red Hat 8 and later have no python2-pip (image-builder's vmware-redhat
-- tasks, 2026: cloud-init and cloud-utils-growpart)
local CLOUD_INIT_PACKAGES_EL8 = { "cloud-init", "cloud-utils-growpart" }

local INSTALL = {
  debian = "DEBIAN_FRONTEND=noninteractive apt-get install -y ",
  redhat = "yum install -y ",
  photon = "tdnf install -y ",
}

-- VMware Tools must not report the addresses of container and overlay
-- interfaces as the VM's IP.
local TOOLS_CONF = "[guestinfo]\n"
  .. "exclude-nics=antrea-*,ovs-system,br*,flannel*,veth*,vxlan_sys_*,genev_sys_*,gre_sys_*,stt_sys_*,????????-??????\n"

-- cloud-init's config and final stages start after containerd, so runcmd's
-- kubeadm finds it running.
local AFTER_CONTAINERD = "[Unit]\nAfter=containerd.service\nWants=containerd.service\n"

local SCRIPT = "/tmp/cloud-init-vmware.sh"

-- cloud-init 21.3 and later carry DataSourceVMware (guestinfo included):
-- it is listed first; OVF for vApp properties, NoCloud for `capil test` on
-- QEMU (a cidata seed CD). Older cloud-init (CentOS 7's 19.4) gets VMware's
-- legacy guestinfo datasource from its install script instead.
local DATASOURCE_CFG = "/etc/cloud/cloud.cfg.d/99-capil-datasource.cfg"
local DATASOURCE_LIST = "# capil: cloud-init's own VMware datasource first (cloud-init >= 21.3)\n"
  .. "datasource_list: [ VMware, OVF, NoCloud, None ]\n"
local HAS_VMWARE_DS = "v=$(cloud-init --version 2>&1 | grep -o '[0-9][0-9]*\\.[0-9][0-9]*' | head -n 1)\n"
  .. "major=${v%%.*}; minor=${v#*.}\n"
  .. "if [ -n \"$v\" ] && { [ \"$major\" -gt 21 ] || { [ \"$major\" -eq 21 ] && [ \"$minor\" -ge 3 ]; }; }; then"

return function(ctx)
  local family = ctx.os.family
  local slug = var("guestinfo_datasource_slug", "https://raw.githubusercontent.com/vmware/cloud-init-vmware-guestinfo")
  local ref = var("guestinfo_datasource_ref", "v1.3.1")
  local script_url = var("guestinfo_datasource_script", slug .. "/" .. ref .. "/install.sh")
  local pkgs = {}
  local list = CLOUD_INIT_PACKAGES[family]
  if family == "redhat" and (tonumber(tostring(ctx.os.version or ""):match("^(%d+)")) or 0) >= 8 then
    list = CLOUD_INIT_PACKAGES_EL8
  end
  for i, p in ipairs(list) do pkgs[i] = quote(p) end

  local steps = {
    { name = "install cloud-init packages", timeout = 1800, shell = INSTALL[family] .. table.concat(pkgs, " ") },
    {
      -- decided in the guest, after the upgrade: right whatever version the
      -- distribution's updates brought
      name = "VMware datasource for cloud-init (built in from 21.3, else the guestinfo script)", timeout = 1800,
      env = { REPO_SLUG = slug, GIT_REF = ref },
      shell = "set -e\n" .. HAS_VMWARE_DS .. "\n"
        .. "  printf '%s' " .. quote(DATASOURCE_LIST) .. " >" .. DATASOURCE_CFG .. "\n"
        .. "  chmod 0644 " .. DATASOURCE_CFG .. "\n"
        .. "else\n"
        .. "  " .. download(script_url, SCRIPT) .. "\n"
        .. "  bash -o errexit -o pipefail " .. SCRIPT .. "\n"
        .. "  rm -f " .. SCRIPT .. "\n"
        .. "fi",
    },
  }
  if family == "redhat" and (tonumber(tostring(ctx.os.version or ""):match("^(%d+)")) or 0) >= 8 then
    -- dracut builds a host-only initramfs: for the disk the build VM had.
    -- An image built on QEMU with EFI (its disk on virtio-scsi: OVMF maps
    -- none on pvscsi) would then lack the driver of the disk vSphere gives
    -- it; the vSphere controllers' drivers go in always.
    steps[#steps + 1] = {
      name = "initramfs: the vSphere disk controllers' drivers",
      copy = { dest = "/etc/dracut.conf.d/90-vsphere-controllers.conf",
        content = 'add_drivers+=" vmw_pvscsi mptspi ahci "\n', mode = "0644", owner = "root:root" },
    }
    steps[#steps + 1] = { name = "rebuild the initramfs", timeout = 1800, shell = "dracut -f --regenerate-all" }
  end
  if family == "photon" then
    steps[#steps + 1] = {
      name = "let cloud-init configure the network",
      shell = "rm -f /etc/cloud/cloud.cfg.d/99-disable-networking-config.cfg",
    }
  end
  if family == "debian" then
    steps[#steps + 1] = {
      name = "disable the Hyper-V KVP daemon",
      only_if = "systemctl list-unit-files hv-kvp-daemon.service | grep -q hv-kvp-daemon",
      shell = "systemctl stop hv-kvp-daemon.service || true\nsystemctl disable hv-kvp-daemon.service",
    }
  end
  steps[#steps + 1] = {
    name = "VMware Tools: exclude container NICs",
    copy = { dest = "/etc/vmware-tools/tools.conf", content = TOOLS_CONF, mode = "0644", owner = "root:root" },
  }
  steps[#steps + 1] = {
    name = "start cloud-final after containerd",
    copy = { dest = "/etc/systemd/system/cloud-final.service.d/boot-order.conf", content = AFTER_CONTAINERD,
      mode = "0644", owner = "root:root" },
  }
  steps[#steps + 1] = {
    name = "start cloud-config after containerd",
    copy = { dest = "/etc/systemd/system/cloud-config.service.d/boot-order.conf", content = AFTER_CONTAINERD,
      mode = "0644", owner = "root:root" },
  }
  steps[#steps + 1] = {
    name = "enable the cloud-init units",
    shell = "set -e\nsystemctl daemon-reload\nsystemctl enable cloud-final cloud-config cloud-init cloud-init-local",
  }
  steps[#steps + 1] = {
    name = "cloud-init logging",
    upload = { src = "roles/files/05_logging.cfg", dest = "/etc/cloud/cloud.cfg.d/05_logging.cfg", mode = "0644" },
  }
  return steps
end
