-- setup: package repositories, a full upgrade and the node's base packages
-- (image-builder's setup role, which node.yml pulls in as node's dependency).
-- Variables: disable_public_repos, extra_repos (files on this machine),
-- extra_debs / extra_rpms, redhat_epel_rpm, ssh_username; http_proxy,
-- https_proxy and no_proxy reach every command through capil.roles.

-- The node's packages, per family (image-builder's common_debs,
-- common_rpms and common_photon_rpms).
local DEBS = {
  "apt-transport-https", "conntrack", "conntrackd", "curl", "ebtables", "jq", "gnupg",
  "libnetfilter-acct1", "libnetfilter-cttimeout1", "libnetfilter-log1",
  "linux-cloud-tools-virtual", "linux-tools-virtual", "ntp", "open-vm-tools",
  "python3-distutils", "python3-netifaces", "python3-pip", "socat",
}
local RPMS = {
  "audit", "ca-certificates", "conntrack-tools", "curl", "ebtables", "jq", "ntp", "open-vm-tools",
  "python3-pip", "python-netifaces", "python-requests", "socat", "sysstat", "yum-utils",
}
local PHOTON_RPMS = {
  "audit", "conntrack-tools", "distrib-compat", "ebtables", "jq", "net-tools", "ntp",
  "openssl-c_rehash", "open-vm-tools", "python-netifaces", "python3-pip", "python-requests",
  "rng-tools", "socat", "tar", "unzip",
}

local UBUNTU_CODENAMES = { ["16.04"] = "xenial", ["18.04"] = "bionic", ["20.04"] = "focal", ["22.04"] = "jammy" }

-- Marker left by the distro-sync step when it changed something; the
-- reboot step runs only when it is there.
local SYNC_MARKER = "/var/lib/capil/distro-sync-changed"

-- apt's lock may be held by apt-daily right after the first boot: wait
-- for it (at most 10 minutes) instead of failing.
local APT_WAIT = "i=0; while fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock"
  .. " >/dev/null 2>&1 && [ $i -lt 300 ]; do i=$((i+1)); sleep 2; done"
local APT_GET = "apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
local APT_ENV = { DEBIAN_FRONTEND = "noninteractive" }

local function quoted(list)
  local t = {}
  for i, w in ipairs(list) do t[i] = quote(w) end
  return table.concat(t, " ")
end

local function basename(p)
  return p:match("([^/]+)/*$") or p
end

-- Disabling the public repositories and adding the user's, shared by the
-- apt and rpm families: `dir` holds the repo files, `glob` matches them.
local function repo_steps(steps, dirs, glob)
  if flag("disable_public_repos", false) then
    local globs = {}
    for _, d in ipairs(dirs) do globs[#globs + 1] = d .. "/" .. glob end
    steps[#steps + 1] = {
      name = "disable public repositories",
      shell = "for f in " .. table.concat(globs, " ") .. "; do\n"
        .. "  [ -e \"$f\" ] || continue\n"
        .. "  mv \"$f\" \"$f.disabled\"\n"
        .. "done",
    }
  end
  for _, repo in ipairs(words("extra_repos")) do
    steps[#steps + 1] = {
      name = "install extra repository " .. basename(repo),
      upload = { src = repo, dest = dirs[#dirs] .. "/" .. basename(repo), mode = "0644" },
    }
  end
end

local function debian(ctx, steps)
  if ctx.os.distro == "ubuntu" then
    local release = UBUNTU_CODENAMES[ctx.os.version]
    if not release then error("setup: no Ubuntu codename known for version " .. ctx.os.version) end
    local lines = {}
    for _, l in ipairs({
      "deb http://us.archive.ubuntu.com/ubuntu %s main restricted universe",
      "deb http://us.archive.ubuntu.com/ubuntu %s-updates main restricted universe",
      "deb http://us.archive.ubuntu.com/ubuntu %s-backports main restricted universe",
      "deb http://security.ubuntu.com/ubuntu %s-security main restricted universe",
    }) do lines[#lines + 1] = l:format(release) end
    steps[#steps + 1] = {
      name = "write apt sources.list",
      copy = { dest = "/etc/apt/sources.list", content = table.concat(lines, "\n") .. "\n", mode = "0644" },
    }
  end
  repo_steps(steps, { "/etc/apt", "/etc/apt/sources.list.d" }, "*.list")
  steps[#steps + 1] = { name = "update apt cache", env = APT_ENV, shell = APT_WAIT .. "\napt-get update" }
  steps[#steps + 1] = {
    name = "dist-upgrade", env = APT_ENV, timeout = 3600,
    shell = APT_WAIT .. "\n" .. APT_GET .. " dist-upgrade",
  }
  steps[#steps + 1] = {
    name = "install baseline packages", env = APT_ENV, timeout = 3600,
    shell = APT_WAIT .. "\n" .. APT_GET .. " install " .. quoted(DEBS),
  }
  local extra = words("extra_debs")
  if #extra > 0 then
    steps[#steps + 1] = {
      name = "install extra packages", env = APT_ENV, timeout = 3600,
      shell = APT_WAIT .. "\n" .. APT_GET .. " install " .. quoted(extra),
    }
  end
end

local function redhat(steps)
  local epel = var("redhat_epel_rpm", "https://dl.fedoraproject.org/pub/epel/epel-release-latest-7.noarch.rpm")
  if epel ~= "" then
    steps[#steps + 1] = {
      name = "add EPEL repository", unless = "rpm -q epel-release >/dev/null 2>&1",
      shell = "yum install -y " .. quote(epel),
    }
  end
  repo_steps(steps, { "/etc/yum.repos.d" }, "*.repo")
  steps[#steps + 1] = { name = "yum update", timeout = 3600, shell = "yum update -y '*'" }
  steps[#steps + 1] = { name = "install baseline packages", timeout = 3600, shell = "yum install -y " .. quoted(RPMS) }
  local extra = words("extra_rpms")
  if #extra > 0 then
    steps[#steps + 1] = { name = "install extra packages", timeout = 3600, shell = "yum install -y " .. quoted(extra) }
  end
end

local function photon(steps)
  local user = var("ssh_username", "builder")
  steps[#steps + 1] = {
    name = "add sbin directories to the build user's PATH",
    copy = {
      dest = "/home/" .. user .. "/.bash_profile", mode = "0644", owner = user .. ":" .. user,
      content = "PATH=$PATH:/usr/sbin:/usr/local/sbin\nexport PATH\n",
    },
  }
  repo_steps(steps, { "/etc/yum.repos.d" }, "*.repo")
  -- image-builder: a new kernel removes the running one's /lib/modules, and
  -- later packages load modules, so reboot when distro-sync changed anything.
  steps[#steps + 1] = {
    name = "tdnf distro-sync", timeout = 3600,
    shell = "out=$(tdnf distro-sync -y --refresh 2>&1) && rc=0 || rc=$?\n"
      .. "printf '%s\\n' \"$out\"\n"
      .. "[ \"$rc\" -eq 0 ] || exit \"$rc\"\n"
      .. "case $out in\n"
      .. "  *'Nothing to do'*) rm -f " .. SYNC_MARKER .. " ;;\n"
      .. "  *) mkdir -p /var/lib/capil && touch " .. SYNC_MARKER .. " ;;\n"
      .. "esac",
  }
  steps[#steps + 1] = { name = "reboot after distro-sync", reboot = true, only_if = "test -f " .. SYNC_MARKER }
  steps[#steps + 1] = { name = "clear the distro-sync marker", shell = "rm -f " .. SYNC_MARKER }
  steps[#steps + 1] = {
    name = "install baseline packages", timeout = 3600,
    shell = "tdnf install -y " .. quoted(PHOTON_RPMS),
  }
  local extra = words("extra_rpms")
  if #extra > 0 then
    steps[#steps + 1] = { name = "install extra packages", timeout = 3600, shell = "tdnf install -y " .. quoted(extra) }
  end
end

return function(ctx)
  local steps = {}
  if ctx.os.family == "debian" then debian(ctx, steps)
  elseif ctx.os.family == "redhat" then redhat(steps)
  else photon(steps) end
  return steps
end
