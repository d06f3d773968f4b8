-- setup: package repositories, a full upgrade and the node's base packages
-- (image-builder's setup role, which node.yml pulls in as node's dependency).
-- Variables: disable_public_repos, extra_repos (files on this machine),
-- extra_debs / extra_rpms, redhat_epel_rpm, ssh_username; http_proxy,
-- https_proxy and no_proxy reach every command through capil.build.roles.
-- Where the packages come from is the recipe's: ubuntu_repo and
-- ubuntu_security_repo (sources.list), centos_repo and redhat_epel_repo
-- (the installed repo files rewritten: their mirrorlists are gone),
-- photon_repo (Photon's repo files moved with the repositories). No URL
-- lives here, so a mirror move is a one-line change in the recipe.

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

-- The same lists for the current releases, image-builder's at 2026
-- (roles/node/defaults/main.yml): Red Hat 8 and later (Rocky 9) are
-- common_rpms + rh8_rpms + common_virt_rpms (chrony for ntp, python3-*
-- names), Photon 5 is common_photon_rpms + photon_5_rpms +
-- common_virt_photon_rpms.
local RPMS_EL8 = {
  "audit", "ca-certificates", "conntrack-tools", "chrony", "jq", "python3-pip", "socat", "sysstat",
  "curl", "yum-utils", "nftables", "python3-netifaces", "python3-requests", "open-vm-tools",
}
local PHOTON5_RPMS = {
  "audit", "apparmor-parser", "conntrack-tools", "chrony", "dbus-python3", "distrib-compat", "ebtables",
  "net-tools", "openssl-c_rehash", "python3-pygobject", "python3-pip", "rng-tools", "socat", "tar", "unzip",
  "curl", "jq", "logrotate", "open-vm-tools",
}

-- The major version of a release ("9", "5.0", "22.04"), 0 when unknown.
local function major(version)
  return tonumber(tostring(version or ""):match("^(%d+)")) or 0
end

local UBUNTU_CODENAMES = {
  ["16.04"] = "xenial", ["18.04"] = "bionic", ["20.04"] = "focal", ["22.04"] = "jammy", ["24.04"] = "noble",
}

-- Packages a release no longer has: Python 3.12 (Ubuntu 24.04) dropped
-- distutils, and python3-distutils with it (image-builder's common_debs
-- no longer lists it).
local DEBS_GONE = { ["24.04"] = { ["python3-distutils"] = true } }

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
    for _, d in ipairs(dirs) do
      for _, g in ipairs(type(glob) == "table" and glob or { glob }) do globs[#globs + 1] = d .. "/" .. g end
    end
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
    local archive, security = var("ubuntu_repo"), var("ubuntu_security_repo")
    if major(ctx.os.version) >= 24 then
      -- 24.04 keeps its sources in deb822 form (ubuntu.sources) and an empty
      -- sources.list: replace that file, so apt does not see every suite twice
      local stanza = "Types: deb\nURIs: %s\nSuites: %s\nComponents: main restricted universe\n"
        .. "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n"
      steps[#steps + 1] = {
        name = "write apt sources (deb822 ubuntu.sources)",
        copy = { dest = "/etc/apt/sources.list.d/ubuntu.sources", mode = "0644",
          content = stanza:format(archive, ("%s %s-updates %s-backports"):format(release, release, release)) .. "\n"
            .. stanza:format(security, release .. "-security") },
      }
      steps[#steps + 1] = {
        name = "empty apt sources.list (the sources are in ubuntu.sources)",
        copy = { dest = "/etc/apt/sources.list", mode = "0644",
          content = "# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n" },
      }
    else
      local lines = {}
      for _, l in ipairs({
        { archive, "" }, { archive, "-updates" }, { archive, "-backports" }, { security, "-security" },
      }) do lines[#lines + 1] = ("deb %s %s%s main restricted universe"):format(l[1], release, l[2]) end
      steps[#steps + 1] = {
        name = "write apt sources.list",
        copy = { dest = "/etc/apt/sources.list", content = table.concat(lines, "\n") .. "\n", mode = "0644" },
      }
    end
  end
  local gone, debs = DEBS_GONE[ctx.os.version] or {}, {}
  for _, p in ipairs(DEBS) do
    if not gone[p] then debs[#debs + 1] = p end
  end
  repo_steps(steps, { "/etc/apt", "/etc/apt/sources.list.d" }, { "*.list", "*.sources" })
  steps[#steps + 1] = { name = "update apt cache", env = APT_ENV, shell = APT_WAIT .. "\napt-get update" }
  steps[#steps + 1] = {
    name = "dist-upgrade", env = APT_ENV, timeout = 3600,
    shell = APT_WAIT .. "\n" .. APT_GET .. " dist-upgrade",
  }
  steps[#steps + 1] = {
    name = "install baseline packages", env = APT_ENV, timeout = 3600,
    shell = APT_WAIT .. "\n" .. APT_GET .. " install " .. quoted(debs),
  }
  local extra = words("extra_debs")
  if #extra > 0 then
    steps[#steps + 1] = {
      name = "install extra packages", env = APT_ENV, timeout = 3600,
      shell = APT_WAIT .. "\n" .. APT_GET .. " install " .. quoted(extra),
    }
  end
end

-- Points yum's repo files at a base URL: mirrorlist/metalink lines
-- commented out, baseurl lines (commented or not) whose path after the host
-- starts with `path` rewritten to start with `base` instead.
local function rebase_repos(glob, path, base)
  local script = "s|^mirrorlist=|#mirrorlist=|; s|^metalink=|#metalink=|; "
    .. "s|^#*baseurl=[a-z]*://[^/]*" .. path .. "|baseurl=" .. base .. "|"
  return "set -e\nfor f in " .. glob .. "; do\n"
    .. "  [ -e \"$f\" ] || continue\n"
    .. "  sed -i -e " .. quote(script) .. " \"$f\"\n"
    .. "done"
end

local function redhat(ctx, steps)
  -- CentOS 7 is archived: mirrorlist.centos.org is gone, the packages are
  -- on the vault under the last point release
  local centos = var("centos_repo", "")
  if centos ~= "" then
    steps[#steps + 1] = {
      name = "point the CentOS repositories at " .. centos,
      shell = rebase_repos("/etc/yum.repos.d/CentOS-*.repo", "/centos/$releasever", centos),
    }
  end
  local epel = var("redhat_epel_rpm", "")
  if epel ~= "" then
    steps[#steps + 1] = {
      name = "add EPEL repository", unless = "rpm -q epel-release >/dev/null 2>&1",
      shell = "yum install -y " .. quote(epel),
    }
  end
  -- EPEL 7's metalink and download mirrors no longer serve it
  local epel_repo = var("redhat_epel_repo", "")
  if epel_repo ~= "" then
    steps[#steps + 1] = {
      name = "point the EPEL repositories at " .. epel_repo,
      shell = rebase_repos("/etc/yum.repos.d/epel*.repo", "/pub/epel/7", epel_repo),
    }
  end
  repo_steps(steps, { "/etc/yum.repos.d" }, "*.repo")
  steps[#steps + 1] = { name = "yum update", timeout = 3600, shell = "yum update -y '*'" }
  local rpms = major(ctx.os.version) >= 8 and RPMS_EL8 or RPMS
  steps[#steps + 1] = { name = "install baseline packages", timeout = 3600, shell = "yum install -y " .. quoted(rpms) }
  local extra = words("extra_rpms")
  if #extra > 0 then
    steps[#steps + 1] = { name = "install extra packages", timeout = 3600, shell = "yum install -y " .. quoted(extra) }
  end
end

local function photon(ctx, steps)
  local user = var("ssh_username", "builder")
  steps[#steps + 1] = {
    name = "add sbin directories to the build user's PATH",
    copy = {
      dest = "/home/" .. user .. "/.bash_profile", mode = "0644", owner = user .. ":" .. user,
      content = "PATH=$PATH:/usr/sbin:/usr/local/sbin\nexport PATH\n",
    },
  }
  -- Photon's repositories left bintray (2021) and then packages.vmware.com
  -- for Broadcom's host; distro-sync may bring back the package's files
  local photon_repo = var("photon_repo", "")
  local rebase
  if photon_repo ~= "" then
    rebase = {
      name = "point the Photon repositories at " .. photon_repo,
      shell = "set -e\nfor f in /etc/yum.repos.d/photon*.repo; do\n"
        .. "  [ -e \"$f\" ] || continue\n"
        .. "  sed -i -e " .. quote("s|^baseurl=https\\?://dl.bintray.com/vmware/|baseurl=" .. photon_repo
          .. "/$releasever/|; s|^baseurl=https\\?://packages.vmware.com/photon/|baseurl=" .. photon_repo .. "/|")
        .. " \"$f\"\ndone",
    }
    steps[#steps + 1] = rebase
  end
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
  if rebase then
    steps[#steps + 1] = { name = rebase.name .. " (after distro-sync)", shell = rebase.shell }
  end
  steps[#steps + 1] = {
    name = "install baseline packages", timeout = 3600,
    shell = "tdnf install -y " .. quoted(major(ctx.os.version) >= 5 and PHOTON5_RPMS or PHOTON_RPMS),
  }
  local extra = words("extra_rpms")
  if #extra > 0 then
    steps[#steps + 1] = { name = "install extra packages", timeout = 3600, shell = "tdnf install -y " .. quoted(extra) }
  end
end

return function(ctx)
  local steps = {}
  if ctx.os.family == "debian" then debian(ctx, steps)
  elseif ctx.os.family == "redhat" then redhat(ctx, steps)
  else photon(ctx, steps) end
  return steps
end
