-- containerd, two ways, chosen by containerd_version's major version
-- (image-builder's containerd role):
--   1.x  the cri-containerd release tarball (containerd, runc, crictl, ctr,
--        the systemd unit) unpacked into /, config version 2
--   2.x  containerd's plain release tarball (bin/ only) unpacked into
--        /usr/local, runc from its own release into /usr/local/sbin,
--        containerd's own containerd.service, config version 3,
--        /etc/crictl.yaml (image-builder's tasks/main.yml and
--        templates/etc/containerd/config.toml, 2026)
-- Each download is verified before it is used. Variables: containerd_url,
-- containerd_sha256, containerd_version (skips the download when that
-- version is already installed), containerd_pause_image,
-- containerd_additional_settings (base64 TOML); for 2.x also runc_version,
-- runc_sha256 (of runc.amd64), containerd_cri_socket,
-- containerd_image_pull_progress_timeout, containerd_enable_limit_no_file.

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

-- Appends the unit's drop-ins both containerd layouts get (boot order,
-- memory pressure, max tasks) to `steps`; returns `steps`.
local function add_dropins(steps)
  for _, s in ipairs({
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
  }) do steps[#steps + 1] = s end
  return steps
end

-- containerd 1.x: the cri-containerd bundle unpacked into /.
local function cri_bundle(ctx, url, sha, version)
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

  local steps = add_dropins({
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
  })
  for _, s in ipairs({
    {
      name = "containerd configuration",
      copy = { dest = "/etc/containerd/config.toml", content = config, mode = "0644" },
    },
    {
      name = "enable and restart containerd",
      shell = "set -e\nsystemctl daemon-reload\nsystemctl enable containerd\nsystemctl restart containerd",
    },
  }) do steps[#steps + 1] = s end
  return steps
end

-- containerd 2.x: image-builder's layout for containerd's plain release.
local BIN_TARBALL = "/tmp/containerd.tar.gz"
local RUNC = "/usr/local/sbin/runc"
local RUNC_TMP = "/tmp/runc"
-- image-builder's limit-nofile.conf (containerd_enable_limit_no_file).
local LIMIT_NOFILE = "[Service]\nLimitNOFILE=1048576\n"
-- image-builder's "Symlink cri-tools": the ones this image has (the 2.x
-- tarball carries ctr only; crictl comes with kubeadm or the kubernetes role).
local LINK_CRI_TOOLS = "set -e\nfor t in ctr crictl critest; do\n"
  .. "  if [ -e /usr/local/bin/$t ]; then ln -sf /usr/local/bin/$t /usr/bin/$t; fi\ndone"

local function check_sha(name, sha)
  if not sha:match("^%x+$") or #sha ~= 64 then
    error("containerd: " .. name .. " must be 64 hex digits, got '" .. sha .. "'")
  end
end

-- image-builder's templates/etc/containerd/config.toml for containerd >= 2.0
-- (its runc block needs kubernetes_semver >= v1.21, which every Kubernetes
-- containerd 2.x runs has; no Azure headers, Wasm shims or gVisor).
local function config_v3(pause, additional, pull_timeout)
  local q = "'io.containerd.cri.v1."
  local lines = {
    "# capil: containerd configuration (config version 3, containerd 2.x)",
    "version = 3",
    "",
  }
  if absent(additional) or not base64_decode(additional):find("imports", 1, true) then
    lines[#lines + 1] = 'imports = ["/etc/containerd/conf.d/*.toml"]'
    lines[#lines + 1] = ""
  end
  lines[#lines + 1] = "[plugins]"
  if not absent(pull_timeout) then
    lines[#lines + 1] = "  [plugins." .. q .. "images']"
    lines[#lines + 1] = '    image_pull_progress_timeout = "' .. pull_timeout .. '"'
  end
  for _, l in ipairs({
    "  [plugins." .. q .. "images'.pinned_images]",
    '    sandbox = "' .. pause .. '"',
    "  [plugins." .. q .. "images'.registry]",
    "    config_path = '/etc/containerd/certs.d'",
    "  [plugins." .. q .. "runtime'.containerd.runtimes.runc]",
    "    runtime_type = 'io.containerd.runc.v2'",
    "  [plugins." .. q .. "runtime'.containerd.runtimes.runc.options]",
    "    SystemdCgroup = true",
  }) do lines[#lines + 1] = l end
  local config = table.concat(lines, "\n") .. "\n"
  if not absent(additional) then
    config = config .. "\n" .. base64_decode(additional)
    if config:sub(-1) ~= "\n" then config = config .. "\n" end
  end
  return config
end

local function release(ctx, url, sha, version)
  local runc_version = var("runc_version", "")
  if runc_version == "" then
    error("containerd: containerd " .. version .. "'s release carries no runc: set vars.runc_version and "
      .. "vars.runc_sha256 (the sha256 of runc.amd64 of that runc release)")
  end
  if not runc_version:match("^v?%d+%.%d+%.%d+[%w.%-]*$") then
    error("containerd: runc_version must be a release version such as 1.4.3, got '" .. runc_version .. "'")
  end
  runc_version = runc_version:gsub("^v", "")
  local runc_sha = var("runc_sha256", "")
  check_sha("runc_sha256", runc_sha)
  local runc_url = "https://github.com/opencontainers/runc/releases/download/v" .. runc_version .. "/runc.amd64"
  local pause = var("containerd_pause_image", "registry.k8s.io/pause:3.2")
  local config = config_v3(pause, var("containerd_additional_settings", ""),
    var("containerd_image_pull_progress_timeout", ""))
  -- containerd.json's containerd_cri_socket
  local socket = var("containerd_cri_socket", "/var/run/containerd/containerd.sock")

  local steps = add_dropins({
    { name = "install libseccomp", timeout = 1800, shell = LIBSECCOMP[ctx.os.family] },
    {
      name = "download, verify and unpack containerd into /usr/local", timeout = 1800,
      unless = "/usr/local/bin/containerd --version 2>/dev/null | grep -qF -e " .. quote(" v" .. version .. " "),
      shell = "set -e\n"
        .. download(url, BIN_TARBALL) .. "\n"
        .. "echo " .. quote(sha .. "  " .. BIN_TARBALL) .. " | sha256sum -c -\n"
        .. "mkdir -p -m 0755 /usr/local/bin\n"
        .. "tar --no-overwrite-dir -C /usr/local -xzf " .. BIN_TARBALL .. "\n"
        .. "rm -f " .. BIN_TARBALL,
    },
    {
      name = "download, verify and install runc into /usr/local/sbin", timeout = 1800,
      unless = RUNC .. " --version 2>/dev/null | grep -qxF -e " .. quote("runc version " .. runc_version),
      shell = "set -e\n"
        .. download(runc_url, RUNC_TMP) .. "\n"
        .. "echo " .. quote(runc_sha .. "  " .. RUNC_TMP) .. " | sha256sum -c -\n"
        .. "mkdir -p -m 0755 /usr/local/sbin\n"
        .. "install -m 0755 " .. RUNC_TMP .. " " .. RUNC .. "\n"
        .. "rm -f " .. RUNC_TMP,
    },
    {
      -- image-builder fetches containerd.service from the release tag with no
      -- checksum (containerd_service_url) and copies it with mode 0600; capil
      -- carries the file (roles/templates/containerd.service) and writes it
      -- 0644 as the 1.x bundle's unit is
      name = "containerd unit",
      template = { src = "roles/templates/containerd.service", dest = UNIT, mode = "0644" },
    },
  })
  if flag("containerd_enable_limit_no_file", false) then
    steps[#steps + 1] = {
      name = "containerd open files limit",
      copy = { dest = DROPINS .. "limit-nofile.conf", content = LIMIT_NOFILE, mode = "0644" },
    }
  end
  for _, s in ipairs({
    {
      name = "containerd configuration directories",
      shell = "mkdir -p -m 0755 /etc/containerd /etc/containerd/conf.d /etc/containerd/certs.d",
    },
    {
      name = "containerd configuration",
      copy = { dest = "/etc/containerd/config.toml", content = config, mode = "0644" },
    },
    {
      name = "crictl configuration",
      copy = { dest = "/etc/crictl.yaml", content = "runtime-endpoint: unix://" .. socket .. "\n", mode = "0644" },
    },
    {
      name = "enable and restart containerd",
      shell = "set -e\nsystemctl daemon-reload\nsystemctl enable containerd\nsystemctl restart containerd",
    },
    { name = "link the CRI tools into /usr/bin", shell = LINK_CRI_TOOLS },
  }) do steps[#steps + 1] = s end
  return steps
end

--- The major version of "2.3.2" / "v1.7.0", or nil.
local function major(version)
  return tonumber(version:match("^v?(%d+)%."))
end

return function(ctx)
  local url, sha = var("containerd_url"), var("containerd_sha256")
  check_sha("containerd_sha256", sha)
  local version = var("containerd_version", "")
  if (major(version) or 1) >= 2 then
    -- containerd's docs/containerd-2.0.md: the cri-containerd bundles were
    -- removed in 2.0; containerd-<v>-linux-amd64.tar.gz holds bin/ only
    -- (its Makefile's pack_release)
    if url:find("cri-containerd", 1, true) then
      error("containerd: containerd " .. version .. " has no cri-containerd bundle: set containerd_url to its "
        .. "release tarball, https://github.com/containerd/containerd/releases/download/v{{containerd_version}}/"
        .. "containerd-{{containerd_version}}-linux-amd64.tar.gz")
    end
    return release(ctx, url, sha, (version:gsub("^v", "")))
  end
  return cri_bundle(ctx, url, sha, version)
end
