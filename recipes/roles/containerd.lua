-- containerd: the cri-containerd release tarball (containerd, runc, crictl,
-- ctr, the systemd unit) unpacked into /, verified against
-- containerd_sha256 before anything is unpacked (image-builder's containerd
-- role). Variables: containerd_url, containerd_sha256, containerd_version
-- (skips the download when that version is already installed),
-- containerd_pause_image, containerd_additional_settings (base64 TOML).

local LIBSECCOMP = {
  debian = "DEBIAN_FRONTEND=noninteractive apt-get install -y libseccomp2",
  redhat = "yum install -y libseccomp",
  photon = "tdnf install -y libseccomp",
}

local TARBALL = "/tmp/containerd.tar.gz"
local UNIT = "/etc/systemd/system/containerd.service"
local DROPINS = "/etc/systemd/system/containerd.service.d/"

-- Start containerd after cloud-init's network stage, so write_files can
-- configure it, yet before cloud-final's runcmd (kubeadm) needs it.
local BOOT_ORDER = "[Unit]\nAfter=cloud-init.service\nWants=cloud-init.service\n"
-- Keep containerd alive under memory pressure.
local MEMORY_PRESSURE = "[Service]\nOOMScoreAdjust=-999\n"
-- No limit on the number of tasks containerd spawns.
local MAX_TASKS = "[Service]\nTasksMax=infinity\n"

local function absent(v)
  return v == "" or v == "null" or v == "None"
end

return function(ctx)
  local url, sha = var("containerd_url"), var("containerd_sha256")
  if not sha:match("^%x+$") or #sha ~= 64 then
    error("containerd: containerd_sha256 must be 64 hex digits, got '" .. sha .. "'")
  end
  local version = var("containerd_version", "")
  local pause = var("containerd_pause_image", "registry.k8s.io/pause:3.2")
  local additional = var("containerd_additional_settings", "")
  local config = "# capil: containerd configuration (config version 2; version 1 is the default)\n"
    .. "version = 2\n\n"
    .. "[plugins]\n"
    .. "  [plugins.\"io.containerd.grpc.v1.cri\"]\n"
    .. "    sandbox_image = \"" .. pause .. "\"\n"
  if not absent(additional) then
    config = config .. "\n" .. base64_decode(additional)
    if config:sub(-1) ~= "\n" then config = config .. "\n" end
  end

  return {
    { name = "install libseccomp", timeout = 1800, shell = LIBSECCOMP[ctx.os.family] },
    {
      name = "download, verify and unpack containerd", timeout = 1800,
      unless = version ~= "" and ("/usr/local/bin/containerd --version 2>/dev/null | grep -qF -e "
        .. quote(" v" .. version .. " ")) or nil,
      shell = "set -e\n"
        .. download(url, TARBALL) .. "\n"
        .. "echo " .. quote(sha .. "  " .. TARBALL) .. " | sha256sum -c -\n"
        .. "tar --no-overwrite-dir -C / -xzf " .. TARBALL .. "\n"
        .. "rm -f " .. TARBALL,
    },
    {
      name = "containerd notifies systemd when ready (Type=notify)",
      shell = "set -e\n"
        .. "if grep -q '^Type=' " .. UNIT .. "; then\n"
        .. "  sed -i 's/^Type=.*/Type=notify/' " .. UNIT .. "\n"
        .. "else\n"
        .. "  sed -i '/^\\[Service\\]/a Type=notify' " .. UNIT .. "\n"
        .. "fi",
    },
    {
      name = "containerd boot order",
      copy = { dest = DROPINS .. "boot-order.conf", content = BOOT_ORDER, mode = "0644" },
    },
    {
      name = "containerd memory pressure",
      copy = { dest = DROPINS .. "memory-pressure.conf", content = MEMORY_PRESSURE, mode = "0644" },
    },
    {
      name = "containerd max tasks",
      copy = { dest = DROPINS .. "max-tasks.conf", content = MAX_TASKS, mode = "0644" },
    },
    {
      name = "containerd configuration",
      copy = { dest = "/etc/containerd/config.toml", content = config, mode = "0644" },
    },
    {
      name = "enable and restart containerd",
      shell = "set -e\nsystemctl daemon-reload\nsystemctl enable containerd\nsystemctl restart containerd",
    },
  }
end
