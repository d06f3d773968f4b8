--- capil.build.schema — the recipe schema, declared as data. Each field has a
--- structured path (what a recipe writes: `iso.checksum`), optionally the
--- image-builder variable it is known by (`iso_checksum`: what var files and
--- `--var` set), a type, and a description. The same table drives
--- validation, layering, `capil inspect --explain`, the docs and the LuaLS
--- annotations in lua/capil/types/recipe.lua.
local M = {}

-- `late`: the value's {{ }} are filled when it is used (from the guest), not
-- from the variables. Types: string, integer, boolean, duration ("10s", "1h30m";
-- coerced to a number of seconds), list (of
-- strings), table (free-form map), any. `enum`, `pattern` and `check` narrow
-- them.
-- Upper bounds of a VM's hardware: vSphere 8's limits (768 vCPUs, 24 TiB
-- of memory, 62 TiB virtual disks), in the fields' units (MiB).
local MAX_CPUS = 768
local MAX_MEMORY = 24 * 1024 * 1024
local MAX_DISK = 62 * 1024 * 1024

-- What a user name pattern means, for messages (never the Lua pattern).
local USER_NAME = "a user name: lowercase letters, digits, '_' and '-', starting with a letter or '_'"

local F = {
  -- identity
  { path = "name", var = "build_name", type = "string", required = true, pattern = "^[%w][%w%.%-_]*$",
    pattern_why = "letters, digits, '.', '-' and '_', starting with a letter or digit",
    description = "build name; the output is output/<name>-kube-<kubernetes semver>/" },
  { path = "description", type = "string", description = "one line shown by `capil list`" },
  { path = "extends", type = "string", description = "recipe this one extends (a name in recipes/ or a path)" },
  { path = "distro.name", var = "distro_name", type = "string", required = true,
    description = "distribution (ubuntu, centos, photon, debian, …)" },
  { path = "distro.version", var = "distro_version", type = "string", required = true, description = "e.g. 20.04" },
  { path = "distro.family", var = "distro_family", type = "string", required = true,
    enum = { "debian", "redhat", "photon" }, description = "package family: apt, yum or tdnf roles" },
  { path = "distro.arch", var = "distro_arch", type = "string", default = "amd64", enum = { "amd64" },
    description = "architecture" },
  { path = "os_display_name", var = "os_display_name", type = "string", required = true,
    description = "human name, e.g. \"Ubuntu 20.04\" (OVF product and annotation)" },
  { path = "guest_os.workstation", var = "guest_os_type", type = "string", required = true,
    description = "Workstation/Fusion guestOS id, e.g. ubuntu-64" },
  { path = "guest_os.vsphere", var = "vsphere_guest_os_type", type = "string", required = true,
    description = "vSphere guest id, e.g. ubuntu64Guest (also the OVF vmw:osType)" },
  { path = "guest_os.ovf_id", var = "ovf_os_id", type = "integer", required = true,
    description = "OVF OperatingSystemSection id (CIM OS type), e.g. 94 for Ubuntu 64-bit" },
  { path = "guest_os.ovf_version", var = "ovf_os_version", type = "string", default = "",
    description = "OVF OperatingSystemSection version" },

  -- installation media
  { path = "iso.urls", var = "iso_urls", type = "list", required = true, check = "urls",
    description = "ISO URLs tried in order (the original first, then mirrors or archives)" },
  { path = "iso.url", var = "iso_url", type = "string", check = "url",
    description = "a single ISO URL; when set (e.g. from a var file) it is tried before iso.urls" },
  { path = "iso.checksum", var = "iso_checksum", type = "string", required = true, check = "checksum",
    description = "ISO checksum (hex) of type iso.checksum_type" },
  { path = "iso.checksum_type", var = "iso_checksum_type", type = "string", required = true,
    enum = { "sha256", "sha1", "sha512", "md5" }, description = "checksum algorithm" },
  { path = "boot.wait", var = "boot_wait", type = "duration", default = "10s",
    description = "time between power-on and typing the boot command" },
  { path = "boot.command", var = "boot_command", type = "list", required = true,
    description = "Packer boot_command parts, joined; {{ .HTTPIP }} and {{ .HTTPPort }} are the installer server" },
  { path = "boot.key_interval", var = "boot_key_interval", type = "duration", default = "100ms",
    description = "pause between typed keys" },
  { path = "installer.dir", var = "http_directory", type = "string", required = true,
    description = "directory of installer templates served over HTTP, relative to recipes/" },
  { path = "installer.files", type = "list", required = true,
    description = "files under installer.dir rendered and served (kickstart, preseed, ks.json)" },
  { path = "installer.cd_files", var = "cd_files", type = "list",
    description = "files under installer.dir also put, rendered, on a second CD (HTTP-free installs; Packer's cd_files)" },
  { path = "installer.cd_label", var = "cd_label", type = "string", default = "cidata",
    description = "volume label of that CD (cidata for NoCloud, OEMDRV for kickstart)" },
  { path = "installer.cd_bus", var = "cd_bus", type = "string", default = "ide", enum = { "ide", "sata" },
    description = "bus of that CD's drive on every backend (Photon 5's installer finds it on SATA only)" },

  -- hardware
  { path = "hardware.cpus", var = "cpus", type = "integer", default = 1, min = 1,
    max = MAX_CPUS, max_why = " (vSphere's limit)", description = "virtual CPUs" },
  { path = "hardware.cores", var = "cpu_cores", type = "integer", default = 1, min = 1,
    max = MAX_CPUS, max_why = " (vSphere's limit)", description = "cores per socket" },
  { path = "hardware.memory", var = "memory", type = "integer", default = 2048, min = 256,
    max = MAX_MEMORY, max_why = " MiB (24 TiB, vSphere's limit)",
    description = "memory in MiB" },
  { path = "hardware.disk_size", var = "disk_size", type = "integer", default = 20480, min = 1024,
    max = MAX_DISK, max_why = " MiB (62 TiB, vSphere's limit)",
    description = "disk size in MiB (the OVF capacity follows it)" },
  { path = "hardware.firmware", var = "firmware", type = "string", default = "bios", enum = { "bios", "efi" },
    description = "bios or efi" },
  { path = "hardware.disk_controller", var = "disk_controller_type", type = "string", default = "pvscsi",
    enum = { "pvscsi", "lsilogic" }, description = "SCSI controller" },
  { path = "hardware.disk_thin", var = "disk_thin_provisioned", type = "boolean", default = true,
    description = "thin-provisioned disk (vSphere)" },
  { path = "hardware.network_card", var = "network_card", type = "string", default = "vmxnet3",
    enum = { "vmxnet3", "e1000", "e1000e" }, description = "NIC model" },
  { path = "hardware.vmx_version", var = "vmx_version", type = "integer", default = 15, min = 10,
    description = "virtual hardware version (vmx-<n>)" },

  -- access and shutdown
  { path = "ssh.username", var = "ssh_username", type = "string", default = "builder",
    pattern = "^[a-z_][a-z0-9_%-]*$", pattern_why = USER_NAME, description = "build user created by the installer" },
  { path = "ssh.password", var = "ssh_password", type = "string", default = "builder", secret = true,
    check = "installer_safe",
    description = "build user's password; unless a recipe, var file or --var sets it, random per build" },
  { path = "ssh.keep_user", var = "keep_build_user", type = "boolean", default = false,
    description = "keep the build user (locked) in the image instead of deleting it and its sudoers entry" },
  { path = "ssh.private_key_file", var = "ssh_private_key_file", type = "string",
    description = "log in with this key (ed25519 or ECDSA) instead of the password" },
  { path = "ssh.port", var = "ssh_port", type = "integer", default = 22,
    description = "the guest's SSH port (vSphere, ESXi; QEMU forwards its own)" },
  { path = "ssh.timeout", var = "ssh_timeout", type = "duration", default = "4h",
    description = "how long to wait for SSH after the boot command" },
  { path = "shutdown_command", var = "shutdown_command", type = "string", required = true,
    description = "run with sudo after provisioning (the build user is locked first)" },
  { path = "shutdown_timeout", var = "shutdown_timeout", type = "duration", default = "5m",
    description = "how long to wait for the VM to power off" },

  -- the OVA
  { path = "ovf.properties", var = "ovf_properties", type = "table", check = "map",
    description = "extra OVF ProductSection properties, {KEY = \"value\"}" },
  { path = "ovf.eula_file", var = "eula_file", type = "string",
    description = "text file for the OVF EulaSection (image-builder's --eula)" },
  -- The hardware the OVF declares: what a VM deployed from the OVA gets,
  -- not the build VM's size (hardware.*). image-builder fixed these in its
  -- template (no variables); the defaults are its values. kubeadm's
  -- control-plane preflight needs 2 CPUs.
  { path = "ovf.cpus", var = "ovf_cpus", type = "integer", default = 2, min = 1, max = MAX_CPUS, max_why = " (vSphere's limit)",
    description = "virtual CPUs of a deployed node (OVF; the build VM's are hardware.cpus)" },
  { path = "ovf.cores_per_socket", var = "ovf_cores_per_socket", type = "integer", default = 2, min = 1,
    max = MAX_CPUS, max_why = " (vSphere's limit)",
    description = "cores per socket of a deployed node (OVF vmw:CoresPerSocket; must divide ovf.cpus)" },
  { path = "ovf.memory", var = "ovf_memory", type = "integer", default = 2048, min = 256,
    max = MAX_MEMORY, max_why = " MiB (24 TiB, vSphere's limit)",
    description = "memory of a deployed node in MiB (OVF)" },
  { path = "ovf.disk_controller", var = "ovf_disk_controller_type", type = "string", default = "pvscsi",
    enum = { "pvscsi", "lsilogic" },
    description = "SCSI controller of a deployed node (OVF: VirtualSCSI or lsilogic)" },
  { path = "ovf.network_card", var = "ovf_network_card", type = "string", default = "vmxnet3",
    enum = { "vmxnet3", "e1000", "e1000e" }, description = "NIC model of a deployed node (OVF)" },

  -- provisioning
  { path = "roles", type = "list", description = "role order (default: setup node providers containerd kubernetes <custom> sysprep)" },
  { path = "checks", type = "list", default = { "node", "hygiene" },
    description = "check sets in recipes/checks/ run after provisioning (node: the goss set; "
      .. "hygiene: no host keys, machine-id or cloud-init state left)" },
  { path = "vars", type = "table", description = "extra variables for roles and templates (image-builder names)" },

  -- shared configuration (recipes/config/*.json), by image-builder name
  { path = "kubernetes.series", var = "kubernetes_series", type = "string",
    description = "v<major>.<minor>; derived from kubernetes_semver (a different value is an error)" },
  { path = "kubernetes.semver", var = "kubernetes_semver", type = "string", required = true, pattern = "^v%d+%.%d+%.%d+",
    pattern_why = "v<major>.<minor>.<patch>, e.g. v1.30.2",
    description = "Kubernetes version, e.g. v1.16.14; the series, package, CNI and crictl versions and the source follow it" },
  { path = "kubernetes.rpm_version", var = "kubernetes_rpm_version", type = "string",
    description = "derived: 1.30.2 from v1.24 (pkgs.k8s.io), 1.16.14-0 before; set, it must be the semver's version" },
  { path = "kubernetes.deb_version", var = "kubernetes_deb_version", type = "string",
    description = "derived: 1.30.2-1.1 from v1.24 (pkgs.k8s.io), 1.16.14-00 before; set, it must be the semver's version" },
  { path = "kubernetes.source_type", var = "kubernetes_source_type", type = "string",
    enum = { "auto", "pkg", "http", "skip" },
    description = "auto (pkg from v1.24, where pkgs.k8s.io starts; http before), pkg (packages), "
      .. "http (release binaries) or skip (no Kubernetes: test images)" },
  { path = "kubernetes.http_source", var = "kubernetes_http_source", type = "string",
    description = "release binaries: <source>/<semver>/bin/linux/amd64/ (https://dl.k8s.io/release)" },
  { path = "kubernetes.rpm_repo", var = "kubernetes_rpm_repo", type = "string",
    description = "yum/tdnf repository ({{kubernetes_series}} is filled in)" },
  { path = "kubernetes.rpm_gpg_key", var = "kubernetes_rpm_gpg_key", type = "string" },
  { path = "kubernetes.rpm_gpg_check", var = "kubernetes_rpm_gpg_check", type = "string" },
  { path = "kubernetes.deb_repo", var = "kubernetes_deb_repo", type = "string",
    description = "apt repository: a URL (flat, suite /) or \"URL suite\" (components main)" },
  { path = "kubernetes.deb_gpg_key", var = "kubernetes_deb_gpg_key", type = "string",
    description = "its key, stored in /etc/apt/keyrings and named by signed-by" },
  { path = "kubernetes.container_registry", var = "kubernetes_container_registry", type = "string" },
  { path = "kubernetes.load_additional_imgs", var = "kubernetes_load_additional_imgs", type = "boolean" },
  { path = "kubernetes.kubeadm_template", var = "kubeadm_template", type = "string" },
  { path = "kubernetes.crictl_version", var = "crictl_version", type = "string",
    description = "crictl for the http source (packages bring cri-tools); derived: <major>.<minor>.0" },
  { path = "kubernetes.crictl_http_source", var = "crictl_http_source", type = "string",
    description = "crictl releases: <source>/v<version>/crictl-v<version>-linux-amd64.tar.gz" },
  { path = "cni.semver", var = "kubernetes_cni_semver", type = "string",
    description = "CNI plugins for the http source; derived: v0.8.6 to v1.18, v0.8.7 to v1.23, then v1.2.0" },
  { path = "cni.rpm_version", var = "kubernetes_cni_rpm_version", type = "string",
    description = "kubernetes-cni package; derived (empty from v1.24: kubelet's dependency picks it)" },
  { path = "cni.deb_version", var = "kubernetes_cni_deb_version", type = "string",
    description = "kubernetes-cni package; derived (empty from v1.24: kubelet's dependency picks it)" },
  { path = "cni.source_type", var = "kubernetes_cni_source_type", type = "string",
    enum = { "auto", "pkg", "http", "skip" }, description = "auto follows kubernetes_source_type" },
  { path = "cni.http_source", var = "kubernetes_cni_http_source", type = "string" },
  { path = "cni.http_checksum", var = "kubernetes_cni_http_checksum", type = "string" },
  { path = "containerd.version", var = "containerd_version", type = "string" },
  { path = "containerd.sha256", var = "containerd_sha256", type = "string", check = "sha256" },
  { path = "containerd.pause_image", var = "containerd_pause_image", type = "string" },
  { path = "containerd.additional_settings", var = "containerd_additional_settings", type = "string",
    description = "base64 TOML appended to /etc/containerd/config.toml" },
  { path = "containerd.url", var = "containerd_url", type = "string", check = "url",
    default = "https://storage.googleapis.com/cri-containerd-release/cri-containerd-{{containerd_version}}.linux-amd64.tar.gz" },
  { path = "common.disable_public_repos", var = "disable_public_repos", type = "boolean" },
  { path = "common.extra_debs", var = "extra_debs", type = "string" },
  { path = "common.extra_repos", var = "extra_repos", type = "string" },
  { path = "common.extra_rpms", var = "extra_rpms", type = "string" },
  { path = "common.http_proxy", var = "http_proxy", type = "string" },
  { path = "common.https_proxy", var = "https_proxy", type = "string" },
  { path = "common.no_proxy", var = "no_proxy", type = "string" },
  { path = "common.reenable_public_repos", var = "reenable_public_repos", type = "boolean" },
  { path = "common.remove_extra_repos", var = "remove_extra_repos", type = "boolean" },
  { path = "common.custom_role", var = "custom_role", type = "boolean", default = false },
  { path = "common.custom_role_names", var = "custom_role_names", type = "string", default = "",
    description = "space-separated extra roles, run before sysprep" },
  { path = "common.redhat_epel_rpm", var = "redhat_epel_rpm", type = "string",
    description = "EPEL release package installed on the redhat family (empty: no EPEL)" },
  { path = "common.redhat_epel_repo", var = "redhat_epel_repo", type = "string",
    description = "EPEL base URL the installed repo files are pointed at (<url>/$basearch; empty: left alone)" },
  { path = "common.centos_repo", var = "centos_repo", type = "string",
    description = "CentOS base URL the installed repo files are pointed at, mirrorlist off (empty: left alone)" },
  { path = "common.photon_repo", var = "photon_repo", type = "string",
    description = "Photon base URL the installed repo files are pointed at (<url>/<release>/...; empty: left alone)" },
  { path = "common.ubuntu_repo", var = "ubuntu_repo", type = "string",
    description = "Ubuntu archive written into /etc/apt/sources.list (release, -updates, -backports)" },
  { path = "common.ubuntu_security_repo", var = "ubuntu_security_repo", type = "string",
    description = "Ubuntu archive for -security in /etc/apt/sources.list" },
  { path = "providers.guestinfo_datasource_slug", var = "guestinfo_datasource_slug", type = "string",
    description = "legacy guestinfo datasource, installed only where cloud-init < 21.3 lacks DataSourceVMware" },
  { path = "providers.guestinfo_datasource_ref", var = "guestinfo_datasource_ref", type = "string" },
  { path = "providers.guestinfo_datasource_script", var = "guestinfo_datasource_script", type = "string" },

  -- builders (packer-common.json, esx.json, vsphere.json)
  { path = "build.headless", var = "headless", type = "boolean", default = true },
  { path = "build.skip_compaction", var = "skip_compaction", type = "boolean" },
  { path = "build.format", var = "format", type = "string" },
  { path = "build.disk_type_id", var = "disk_type_id", type = "string" },
  { path = "build.network", var = "network", type = "string", description = "network the VM is attached to" },
  { path = "build.vnc_bind_address", var = "vnc_bind_address", type = "string" },
  { path = "build.vnc_disable_password", var = "vnc_disable_password", type = "boolean" },
  { path = "build.vnc_port_min", var = "vnc_port_min", type = "integer" },
  { path = "build.vnc_port_max", var = "vnc_port_max", type = "integer" },
  { path = "build.http_bind_address", var = "http_bind_address", type = "string", default = "0.0.0.0",
    description = "address the installer HTTP server listens on" },
  { path = "build.http_ip", var = "http_ip", type = "string",
    description = "address the guest uses to reach the installer server (default: per backend)" },
  { path = "build.qemu_kernel", var = "qemu_kernel", type = "string",
    description = "QEMU: boot this kernel directly (no installer CD boot)" },
  { path = "build.qemu_initrd", var = "qemu_initrd", type = "string", description = "QEMU: initrd for qemu_kernel" },
  { path = "build.qemu_append", var = "qemu_append", type = "string", description = "QEMU: kernel command line for qemu_kernel" },
  { path = "build.qemu_accel", var = "qemu_accel", type = "string", enum = { "auto", "kvm", "tcg" }, default = "auto" },
  { path = "build.qemu_disk_interface", var = "qemu_disk_interface", type = "string", enum = { "auto", "virtio" },
    default = "auto",
    description = "QEMU: auto presents the disk on disk_controller_type's controller (pvscsi, lsilogic → mptsas1068), "
      .. "as on vSphere; virtio (/dev/vda) for local-only images" },
  { path = "build.qemu_nic_model", var = "qemu_nic_model", type = "string", enum = { "auto", "virtio" },
    default = "auto", description = "QEMU: auto presents network_card's NIC (vmxnet3, e1000, e1000e); virtio opts out" },
  { path = "build.keep_vmdk", var = "keep_vmdk", type = "boolean", default = false,
    description = "builds whose VM disk capil's writer reads (QEMU; ESXi over SSH on a free licence, its flat "
      .. "extent streamed over SFTP): keep the VMDK as a file beside the OVA (false: it is written straight into "
      .. "the OVA, in one pass, and no VMDK file is left)" },
  { path = "build.disk_writer", var = "disk_writer", type = "string", enum = { "capil", "qemu-img" },
    default = "capil",
    description = "what writes the streamOptimized VMDK on the local backends and on ESXi over SSH: capil (its own "
      .. "writer: QEMU builds on a sparse raw disk the writer reads directly; Workstation uses it when "
      .. "vmware-vdiskmanager is absent; ESXi's flat extent is written as it downloads) or qemu-img (QEMU builds on "
      .. "qcow2 and `qemu-img convert` exports it; ESXi's disk is downloaded, then converted)" },
  { path = "build.convert_to_template", var = "convert_to_template", type = "boolean", default = false },
  -- a static address for networks without DHCP (capil.build.staticip)
  { path = "build.ip", var = "build_ip", type = "string", check = "ipv4_cidr",
    description = "static address of the build VM (10.0.2.15/24, or 10.0.2.15 with build_netmask) for networks "
      .. "without DHCP: written into the answer file and the boot command, and the address SSH connects to" },
  { path = "build.netmask", var = "build_netmask", type = "string", check = "ipv4_netmask",
    description = "netmask of build_ip (255.255.255.0 or 24) when build_ip has no prefix length" },
  { path = "build.gateway", var = "build_gateway", type = "string", check = "ipv4",
    description = "default gateway of the build VM's static address" },
  { path = "build.dns", var = "build_dns", type = "list", check = "ipv4_list",
    description = "name servers of the build VM's static address (a list or comma-separated)" },
  { path = "build.keep_static_ip", var = "build_keep_static_ip", type = "boolean",
    description = "keep the static address in the image (default: sysprep restores DHCP)" },
  { path = "build.keep_vm", var = "keep_vm", type = "boolean", default = true,
    description = "leave the build VM on vSphere after export, as image-builder did (false: destroy it)" },
  { path = "remote.type", var = "remote_type", type = "string" },
  { path = "remote.host", var = "remote_host", type = "string" },
  { path = "remote.datastore", var = "remote_datastore", type = "string" },
  { path = "remote.username", var = "remote_username", type = "string" },
  { path = "remote.password", var = "remote_password", type = "string", secret = true },
  { path = "remote.port", var = "remote_port", type = "integer", description = "ESXi over SSH: the host's SSH port (22)" },
  { path = "remote.private_key_file", var = "remote_private_key_file", type = "string",
    description = "ESXi over SSH: log in with this key instead of remote_password" },
  { path = "remote.host_key", var = "remote_host_key", type = "string",
    description = "ESXi over SSH: the host key, SHA256:... or a known_hosts path (default: capil's "
      .. "$XDG_STATE_HOME/capil/known_hosts, trust on first use, a changed key refused)" },
  { path = "remote.vnc_port", var = "remote_vnc_port", type = "integer",
    description = "ESXi over SSH: the VM's VNC port (default: the first free one in 5900-5999)" },
  { path = "vsphere.server", var = "vcenter_server", type = "string", description = "vCenter (or ESXi) host name" },
  { path = "vsphere.username", var = "username", type = "string" },
  { path = "vsphere.password", var = "password", type = "string", secret = true },
  { path = "vsphere.datacenter", var = "datacenter", type = "string" },
  { path = "vsphere.datastore", var = "datastore", type = "string" },
  { path = "vsphere.folder", var = "folder", type = "string" },
  { path = "vsphere.cluster", var = "cluster", type = "string" },
  { path = "vsphere.host", var = "host", type = "string", description = "ESXi host (instead of cluster)" },
  { path = "vsphere.resource_pool", var = "resource_pool", type = "string" },
  { path = "vsphere.insecure_connection", var = "insecure_connection", type = "boolean", default = false },
  { path = "vsphere.ca_file", var = "vcenter_ca_file", type = "string",
    description = "PEM file of the CA that signed the server's certificate (default: the system's)" },
  { path = "vsphere.thumbprint", var = "thumbprint", type = "string", check = "sha256_fingerprint",
    description = "SHA-256 fingerprint of the server's certificate: trusted instead of the CA" },
  { path = "vsphere.content_library", var = "content_library", type = "string",
    description = "vSphere: after the export, make an item of this content library from the build VM "
      .. "(Packer's content_library_destination; the library must exist)" },
  { path = "vsphere.content_library_item", var = "content_library_item", type = "string",
    description = "the content library item's name (default: the build's, <name>-kube-<version>)" },
  { path = "vsphere.library_item_type", var = "library_item_type", type = "string", enum = { "ovf", "vmtx" },
    default = "ovf", description = "ovf: an OVF package of the VM (an existing item gets the new content); "
      .. "vmtx: a VM template in the library" },
  { path = "vsphere.content_library_export", var = "content_library_export", type = "boolean", default = true,
    description = "with content_library: false makes the library item the only image (no VMDK or OVA is "
      .. "exported; the test, publish and upload stages then have no OVA)" },
  { path = "vsphere.content_library_destroy_vm", var = "content_library_destroy_vm", type = "boolean",
    default = false, description = "destroy the build VM once the content library item is made" },
  { path = "vsphere.cache_dir", var = "datastore_cache_dir", type = "string", default = "capil_cache",
    description = "datastore folder for uploaded ISOs, named by checksum and shared by builds" },
  { path = "vsphere.ip_wait_timeout", var = "ip_wait_timeout", type = "duration", default = "30m" },
  { path = "vsphere.ip_settle_timeout", var = "ip_settle_timeout", type = "duration", default = "5s",
    description = "the guest IP must stay the same this long" },
  { path = "vsphere.ip_wait_address", var = "ip_wait_address", type = "string", default = "0.0.0.0/0",
    description = "CIDR the guest IP must be in; ::/0 accepts IPv6 (link-local and APIPA never count)" },
  { path = "vsphere.nic", var = "ip_wait_nic", type = "integer", default = 0,
    description = "which NIC's address is used (0 = the first)" },
  { path = "vsphere.configuration_parameters", var = "configuration_parameters", type = "table", check = "map",
    description = "extraConfig of the build VM (guestinfo.* keys), as Packer's option" },

  -- testing built images (capil test, capil ssh, --stages build,test)
  { path = "publish.library", var = "publish_library", type = "string",
    description = "capil run's publish stage: the vSphere content library the OVA goes into (--library)" },
  { path = "publish.library_item", var = "publish_library_item", type = "string",
    description = "the publish stage's item (--library-item; default: the build's name)" },
  { path = "publish.create_library", var = "publish_create_library", type = "boolean", default = false,
    description = "the publish stage creates its library (local, on the datastore variable's datastore) when it "
      .. "does not exist (--create-library); a library created by a failed publish is removed" },
  { path = "tests.suites", var = "test_suites", type = "list", default = {},
    description = "suites capil test runs over SSH: cni, node-conformance (--suite overrides)" },
  { path = "tests.cloudinit_dir", var = "cloudinit_dir", type = "string", default = "cloudinit",
    description = "directory of the test cloud-init data (user-data, meta-data, the test keys)" },
  { path = "tests.ssh_username", var = "test_ssh_username", type = "string", default = "capv",
    pattern = "^[a-z_][a-z0-9_%-]*$", pattern_why = USER_NAME, description = "user the test logs in as (created by cloudinit/user-data)" },
  { path = "tests.ssh_private_key_file", var = "test_ssh_private_key_file", type = "string",
    default = "",
    description = "its key (default <cloudinit_dir>/id_ed25519.capi; ed25519: libssh2 1.10 cannot sign rsa-sha2)" },
  { path = "tests.boot_timeout", var = "test_boot_timeout", type = "duration", default = "15m",
    description = "how long the test VM gets to boot, apply cloud-init and answer SSH" },
  { path = "tests.vm_name", var = "test_vm_name", type = "string",
    description = "vSphere: name of the VM deployed for the test (default <build>-test)" },
  { path = "tests.cni_plugins_url", var = "cni_plugins_url", type = "string", check = "url",
    default = "https://github.com/containernetworking/plugins/releases/download/v0.7.0/cni-plugins-amd64-v0.7.0.tgz",
    description = "cni suite: the CNI plugins tarball (the seed document's v0.7.0 amd64 release)" },
  { path = "tests.cni_plugins_checksum", var = "cni_plugins_checksum", type = "string", default = "",
    description = "its sha256: hex, sha256:hex, or the URL of a checksum file (default: <url>.sha256)" },
  { path = "tests.cni_plugins_dir", var = "cni_plugins_dir", type = "string", default = "/opt/cni/bin",
    description = "where the plugins are unpacked (the seed document used /etc/cni/net.d)" },
  { path = "tests.node_conformance_url", var = "node_conformance_url", type = "string", late = true,
    default = "https://dl.k8s.io/{{kubernetes_version}}/kubernetes-test-linux-amd64.tar.gz",
    description = "node-conformance: the test tarball; {{kubernetes_version}} is /etc/kubernetes-version" },
  { path = "tests.node_conformance_checksum", var = "node_conformance_checksum", type = "string", default = "",
    description = "its sha256: hex, sha256:hex, or a checksum file URL (default: <url>.sha256)" },
  { path = "tests.node_conformance_kubernetes_version", var = "node_conformance_kubernetes_version",
    type = "string", default = "", description = "version to test (default: the guest's /etc/kubernetes-version)" },
  { path = "tests.node_conformance_focus", var = "node_conformance_focus", type = "string",
    default = "\\[Conformance\\]", description = "ginkgo --focus" },
  { path = "tests.node_conformance_skip", var = "node_conformance_skip", type = "string",
    default = "\\[Flaky\\]|\\[Serial\\]|\\[sig-network\\]|Container Lifecycle Hook", description = "ginkgo --skip" },
  { path = "tests.node_conformance_nodes", var = "node_conformance_nodes", type = "integer", default = 8, min = 1,
    description = "ginkgo --nodes" },
  { path = "tests.node_conformance_flake_attempts", var = "node_conformance_flake_attempts", type = "integer",
    default = 2, min = 1, description = "ginkgo --flakeAttempts" },
  { path = "tests.node_conformance_timeout", var = "node_conformance_timeout", type = "duration", default = "3h",
    description = "how long the conformance run may take" },
}

M.fields = F

-- Indexes by path and by variable name.
M.by_path, M.by_var = {}, {}
for _, f in ipairs(F) do
  M.by_path[f.path] = f
  if f.var then M.by_var[f.var] = f end
end

-- Section names (first path component) that hold fields.
M.sections = {}
for _, f in ipairs(F) do
  local s = f.path:match("^([^%.]+)%.")
  if s then M.sections[s] = true end
end

--- Variables whose values are secrets by name (image-builder's convention).
---@param name string
function M.is_secret_name(name)
  return name == "password" or name:match("_password$") ~= nil or name:match("_secret$") ~= nil
    or (M.by_var[name] and M.by_var[name].secret) or false
end

-- ====================================================================== --
-- Coercion and checks                                                    --
-- ====================================================================== --

-- The strings a boolean accepts: what image-builder's Packer templates
-- accept for their boolean variables ("true"/"false" strings in its var
-- files), i.e. Go's strconv.ParseBool, and "" as false (mapstructure's
-- weak decoding), besides JSON's and Lua's true and false.
M.BOOL_TRUE = { "true", "True", "TRUE", "t", "T", "1" }
M.BOOL_FALSE = { "false", "False", "FALSE", "f", "F", "0", "" }
local TRUE, FALSE = {}, {}
for _, s in ipairs(M.BOOL_TRUE) do TRUE[s] = true end
for _, s in ipairs(M.BOOL_FALSE) do FALSE[s] = true end

local function quoted_list(list)
  local q = {}
  for i, s in ipairs(list) do q[i] = ("%q"):format(s) end
  return table.concat(q, ", ")
end
--- The message of a value that is no boolean (lists what is accepted).
M.BOOL_EXPECTED = ("expected a boolean: true, false, or one of the strings %s (true) and %s (false)")
  :format(quoted_list(M.BOOL_TRUE), quoted_list(M.BOOL_FALSE))
local HEX_LEN = { sha256 = 64, sha1 = 40, sha512 = 128, md5 = 32 }

-- A value quoted in a message, cut short: a 200 KB value is no message.
local function show(v)
  if type(v) == "string" then
    if #v > 80 then return ("%q... (%d characters)"):format(v:sub(1, 72), #v) end
    return ("%q"):format(v)
  end
  return tostring(v)
end

-- The message of a map field (ovf.properties) that is no map.
local MAP_EXPECTED = "expected a map of NAME = value (a JSON object, a Lua table with string keys)"

--- Converts a raw value (from a recipe or a JSON var file, where Packer
--- passed everything as strings) to the field's type. Returns the value or
--- nil and "expected …, got …".
---@param field table
---@param v any
function M.coerce(field, v)
  local t = field.type
  if t == "any" or t == "table" then
    if t == "table" and type(v) ~= "table" then
      return nil, (field.check == "map" and MAP_EXPECTED or "expected a table") .. ", got " .. show(v)
    end
    return v
  elseif t == "string" or t == "duration" then
    if type(v) == "number" or type(v) == "boolean" then v = tostring(v) end
    if type(v) ~= "string" then return nil, "expected a string, got " .. type(v) end
    if t == "duration" then
      -- a number of seconds; the text as written stays with the
      -- configuration (Config:vars(), --explain)
      local d, why = require("capil.build.bootcmd").duration(v)
      if not d and why and why:find("maximum", 1, true) then return nil, why end
      if not d then return nil, "expected a duration like \"10s\" or \"1h30m\", got " .. show(v) end
      return d
    end
    return v
  elseif t == "integer" then
    local n = math.tointeger(type(v) == "string" and tonumber(v) or v)
    if not n then return nil, "expected an integer, got " .. show(v) end
    return n
  elseif t == "boolean" then
    if type(v) == "boolean" then return v end
    if type(v) == "string" and TRUE[v] then return true end
    if type(v) == "string" and FALSE[v] then return false end
    return nil, M.BOOL_EXPECTED .. ", got " .. show(v)
  elseif t == "list" then
    if type(v) == "string" then return { v } end
    if type(v) ~= "table" then return nil, "expected a list of strings, got " .. show(v) end
    local out = {}
    for i, x in ipairs(v) do
      if type(x) ~= "string" then return nil, ("expected a list of strings, item %d is %s"):format(i, show(x)) end
      out[i] = x
    end
    for k in pairs(v) do
      if math.type(k) ~= "integer" then return nil, "expected a list of strings, got a table with key " .. show(k) end
    end
    return out
  end
  error("schema: unknown type " .. tostring(t))
end

-- A map's keys and values, checked; nil and why for the first bad entry
-- (in key order, so the message is the same every run).
local function map_ok(v)
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" then
      if math.type(k) == "integer" then return nil, MAP_EXPECTED .. ", got a list" end
      return nil, MAP_EXPECTED .. ", got the key " .. show(k)
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local x = v[k]
    if type(x) ~= "string" and type(x) ~= "number" and type(x) ~= "boolean" then
      return nil, ("%s: expected a string, number or boolean, got a %s"):format(k, type(x))
    end
  end
  return true
end

local function url_ok(s)
  return type(s) == "string" and (s:match("^https?://[%w%-%.%[%]:]+") or s:match("^file:///")) ~= nil
end

--- Checks a coerced value against enum, pattern, min and named checks.
--- `all` (the other resolved values by path) serves cross-field checks.
---@return boolean|nil ok, string? why
function M.check(field, v, all)
  if field.enum then
    local okv = false
    for _, e in ipairs(field.enum) do if e == v then okv = true end end
    if not okv then
      return nil, ("expected one of %s, got %s"):format(table.concat(field.enum, ", "), show(v))
    end
  end
  if field.pattern and type(v) == "string" and not v:match(field.pattern) then
    -- the pattern's meaning, never the Lua pattern itself
    return nil, ("expected %s, got %s"):format(field.pattern_why or "another value", show(v))
  end
  if field.min and type(v) == "number" and v < field.min then
    return nil, ("expected at least %d, got %d"):format(field.min, v)
  end
  if field.max and type(v) == "number" and v > field.max then
    return nil, ("expected at most %d%s, got %d"):format(field.max, field.max_why or "", v)
  end
  local c = field.check
  if c == "map" then
    local ok, why = map_ok(v)
    if not ok then return nil, why end
  elseif c == "url" and v ~= "" and not url_ok(v) then
    return nil, "expected an http(s):// or file:/// URL, got " .. show(v)
  elseif c == "urls" then
    if #v == 0 then return nil, "expected at least one URL" end
    for i, u in ipairs(v) do
      if not url_ok(u) then return nil, ("item %d: expected an http(s):// or file:/// URL, got %s"):format(i, show(u)) end
    end
  elseif c == "ipv4_cidr" or c == "ipv4_netmask" or c == "ipv4" or c == "ipv4_list" then
    local sip = require("capil.build.staticip")
    local check = ({ ipv4_cidr = sip.check_ip, ipv4_netmask = sip.check_netmask, ipv4 = sip.check_address,
      ipv4_list = sip.check_dns })[c]
    if not (c ~= "ipv4_list" and v == "") then
      local ok, why = check(v)
      if not ok then return nil, why end
    end
  elseif c == "installer_safe" and v:find("[%s'\"\\`$]") then
    -- written raw into kickstart, preseed and ks.json: no quoting survives all three
    return nil, "must not contain spaces, quotes, backslashes, backquotes or '$' (it is written into installer files)"
  elseif c == "sha256_fingerprint" and v ~= "" and not (v:gsub(":", ""):match("^" .. ("%x"):rep(64) .. "$")) then
    return nil, "expected a SHA-256 fingerprint (64 hex digits, colons allowed, as vSphere shows it), got " .. show(v)
  elseif c == "sha256" and v ~= "" and not (#v == 64 and v:match("^%x+$")) then
    return nil, "expected sha256 hex (64 characters), got " .. show(v)
  elseif c == "checksum" then
    local kind = all and all["iso.checksum_type"] or "sha256"
    local want = HEX_LEN[kind]
    if want and not (#v == want and v:match("^%x+$")) then
      return nil, ("expected %s hex (%d characters), got %s"):format(kind, want, show(v))
    end
  end
  return true
end

--- Keys longer than this get no "did you mean".
M.SUGGEST_MAX = 64

--- Closest known field path to `path` (for "did you mean"), or nil.
---@param path string
---@return string?
function M.suggest(path)
  -- a long key is no typo of a field name: no suggestion (and no cost)
  if #path > M.SUGGEST_MAX then return nil end
  local names = {}
  for i, f in ipairs(F) do names[i] = f.path end
  return require("capil.util.text").closest(path, names, math.max(2, #path // 4))
end

return M
