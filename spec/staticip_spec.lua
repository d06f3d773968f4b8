-- Static IP builds (issue 19, image-builder issue 1681: networks without
-- DHCP): build_ip (CIDR or with build_netmask), build_gateway and build_dns
-- are checked by the schema (a bad value is refused, exit 1, naming the
-- variable), rendered into each installer family's answer file (preseed
-- netcfg, kickstart network, autoinstall network, Photon's ks.json network)
-- and into the boot command of an installer that fetches its answer file
-- over HTTP, shown by `capil inspect` only when set, used as the SSH address
-- (not behind QEMU's user network), and undone by sysprep unless
-- build_keep_static_ip. The BIOS/EFI end-to-end build of the test OS
-- (spec/e2e_efi_spec.lua) runs a build with it on QEMU.
local capil = require("support.capil")
local peer = require("support.peer")
local fs = require("capil.sys.fs")
local json = require("capil.sys.json")
local proc = require("capil.sys.proc")
local installer = require("capil.build.installer")
local staticip = require("capil.build.staticip")
local backend = require("capil.backend")
local sshd = require("support.sshd")
local hash = require("capil.sys.hash")

local STATIC = { "--var", "build_ip=192.168.10.20", "--var", "build_netmask=255.255.255.0",
  "--var", "build_gateway=192.168.10.1", "--var", "build_dns=192.168.10.2,192.168.10.3" }

local function inspect(recipe, backend_name, extra)
  local argv = { "inspect", recipe, "--backend", backend_name }
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  local r = capil.run(argv)
  assert.equal(0, r.code, r.stderr)
  local plan = assert(json.decode(r.stdout))
  local by = {}
  for _, s in ipairs(plan.steps) do by[s.id] = s end
  return plan, by, r.stdout
end

local function resolve(recipe, vars)
  local r = assert(require("capil.build.recipe").load(recipe))
  local list = {}
  for k, v in pairs(vars or {}) do list[#list + 1] = k .. "=" .. v end
  table.sort(list)
  vars = list
  local cfg, errs = require("capil.build.config").resolve(r, { backend = "qemu", config_dir = "recipes/config",
    getenv = function() return nil end, vars = vars or {} })
  assert(cfg, errs and table.concat(errs, "\n"))
  return cfg
end

local VARS = { build_ip = "192.168.10.20", build_netmask = "255.255.255.0", build_gateway = "192.168.10.1",
  build_dns = "192.168.10.2,192.168.10.3" }

-- the recipe's installer files rendered as the pipeline renders them
local function render(recipe, vars)
  local cfg = resolve("recipes/" .. recipe .. ".lua", vars)
  local dir = peer.dir("staticip-render-" .. recipe)
  local files = {}
  for _, f in ipairs(cfg:get("installer.files") or {}) do files[#files + 1] = f end
  for _, f in ipairs(cfg:get("installer.cd_files") or {}) do files[#files + 1] = f end
  local vs = installer.template_vars(cfg, { password = "pw", hash = "$6$salt$hash" })
  assert(installer.render("recipes/" .. cfg:get("installer.dir"), files, dir, vs))
  local out = {}
  for _, f in ipairs(files) do out[f] = assert(fs.read(dir .. "/" .. f)) end
  return out
end

describe("static IP builds #unit", function()
  describe("the schema", function()
    local function refused(vars, want)
      local argv = { "inspect", "ubuntu-2004", "--backend", "qemu" }
      for _, v in ipairs(vars) do argv[#argv + 1] = "--var" argv[#argv + 1] = v end
      local r = capil.run(argv)
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches(want, r.stderr, 1, true)
    end

    it("refuses a bad address, naming the variable (exit 1)", function()
      refused({ "build_ip=10.0.2.300" }, "build_ip: expected an IPv4 address")
      refused({ "build_ip=10.0.2.15/33" }, "build_ip: the prefix length must be 1 to 32")
      refused({ "build_ip=host.example" }, "build_ip: expected an IPv4 address")
      refused({ "build_ip=010.0.2.15/24" }, "build_ip: expected an IPv4 address")
      refused({ "build_ip=10.0.2.15", "build_netmask=255.0.255.0" }, "build_netmask: expected a netmask")
      refused({ "build_ip=10.0.2.15/24", "build_gateway=10.0.2" }, "build_gateway: expected an IPv4 address")
      refused({ "build_ip=10.0.2.15/24", "build_dns=10.0.2.3,8.8.8" },
        "build_dns: expected an IPv4 address (10.0.2.15) for each name server, got \"8.8.8\"")
      refused({ "build_keep_static_ip=maybe" }, "build_keep_static_ip")
    end)

    it("refuses an address without its netmask, and a gateway off its network", function()
      refused({ "build_ip=10.0.2.15" }, "build_ip: 10.0.2.15 has no prefix length: set build_netmask or write it as 10.0.2.15/24")
      refused({ "build_ip=10.0.2.15/24", "build_gateway=10.0.3.1" },
        "build_gateway: 10.0.3.1 is not on the network of build_ip 10.0.2.15/24")
    end)

    it("takes the CIDR form, a netmask or a prefix length, and DNS as a list or comma-separated", function()
      local a = assert(staticip.resolve(resolve("recipes/ubuntu-2004.lua", { build_ip = "10.0.2.15/24" })))
      assert.same({ "10.0.2.15", 24, "255.255.255.0", "10.0.2.15/24" }, { a.address, a.prefix, a.netmask, a.cidr })
      local b = assert(staticip.resolve(resolve("recipes/ubuntu-2004.lua",
        { build_ip = "172.16.5.9", build_netmask = "20", build_dns = "1.1.1.1, 8.8.8.8" })))
      assert.same({ "172.16.5.9/20", "255.255.240.0" }, { b.cidr, b.netmask })
      assert.same({ "1.1.1.1", "8.8.8.8" }, b.dns)
      assert.is_false(b.keep)
      assert.is_nil((staticip.resolve(resolve("recipes/ubuntu-2004.lua"))))
    end)
  end)

  describe("capil inspect", function()
    it("shows the address in the installer, boot and wait-ssh steps, and nothing without it", function()
      local _, by = inspect("centos-7", "vsphere", STATIC)
      assert.same({ address = "192.168.10.20/24", netmask = "255.255.255.0", gateway = "192.168.10.1",
        dns = { "192.168.10.2", "192.168.10.3" }, installer = "kickstart" }, by.installer.static_ip)
      assert.equal("192.168.10.20", by["wait-ssh"].host)
      assert.equal("192.168.10.20", by["wait-ssh"].static_ip)
      local _, plain, text = inspect("centos-7", "vsphere")
      assert.is_nil(plain.installer.static_ip)
      assert.is_nil(plain["wait-ssh"].host)
      assert.is_nil(plain.boot.static_ip_args)
      assert.not_matches("static", text, 1, true)
    end)

    it("keeps the forwarded port on QEMU's user network: the address is the guest's, not where SSH goes", function()
      local _, by = inspect("centos-7", "qemu", STATIC)
      assert.is_nil(by["wait-ssh"].host)
      assert.equal("192.168.10.20 (the guest's; SSH goes through the forwarded port)", by["wait-ssh"].static_ip)
    end)

    it("puts the kernel arguments on the line that fetches the answer file over HTTP", function()
      -- kickstart: dracut's ip= and nameserver=, before the <enter>
      local _, by = inspect("centos-7", "vsphere", STATIC)
      assert.equal("<tab> text ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/7/ks.cfg"
        .. " ip=192.168.10.20::192.168.10.1:255.255.255.0:::none nameserver=192.168.10.2 nameserver=192.168.10.3"
        .. "<enter><wait>", by.boot.command)
      local _, plain = inspect("centos-7", "vsphere")
      -- the keys typed grow by the arguments' length
      local args = by.boot.static_ip_args
      assert.equal(plain.boot.keys + #args + 1, by.boot.keys)
      -- preseed: d-i's netcfg answers, before the " -- " that ends the installer's options
      _, by = inspect("ubuntu-2004", "vsphere", STATIC)
      assert.matches("preseed.cfg netcfg/disable_autoconfig=true netcfg/get_ipaddress=192.168.10.20 "
        .. "netcfg/get_netmask=255.255.255.0 netcfg/get_gateway=192.168.10.1 "
        .. "netcfg/get_nameservers=192.168.10.2,192.168.10.3 netcfg/confirm_static=true -- <wait><enter>",
        by.boot.command, 1, true)
      assert.equal("preseed", by.installer.static_ip.installer)
      _, by = inspect("ubuntu-1804", "vsphere", STATIC)
      assert.matches("/18.04/preseed.cfg netcfg/disable_autoconfig=true", by.boot.command, 1, true)
      -- the installer fixture's ks.cfg over HTTP (a Debian test OS): kickstart's dracut ip=, by the file's name
      _, by = inspect("spec/fixtures/recipes/testos.lua", "qemu",
        { "--recipes-dir", "spec/fixtures/recipes", "--var", "build_ip=10.0.2.15/24", "--var", "build_gateway=10.0.2.2" })
      assert.equal("install ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/testos/ks.cfg ip=10.0.2.15::10.0.2.2:255.255.255.0:::none"
        .. "<enter>", by.boot.command)
      assert.equal("kickstart", by.installer.static_ip.installer)
      -- answer files on a seed CD: the installer configures the address from them, the boot line stays
      for _, r in ipairs({ "ubuntu-2204", "rockylinux-9", "photon-5" }) do
        local _, s = inspect(r, "vsphere", STATIC)
        local _, p = inspect(r, "vsphere")
        assert.equal(p.boot.command, s.boot.command, r)
        assert.is_nil(s.boot.static_ip_args, r)
      end
    end)

    it("gives subiquity seeded over HTTP casper's ip= with its DNS fields", function()
      local ip = assert(staticip.resolve(resolve("recipes/ubuntu-2204.lua", VARS)))
      local cmd = "c<wait>linux /casper/vmlinuz autoinstall ds='nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/' ---"
        .. "<enter><wait>initrd /casper/initrd<enter>"
      assert.equal("c<wait>linux /casper/vmlinuz autoinstall ds='nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/'"
        .. " ip=192.168.10.20::192.168.10.1:255.255.255.0:::off:192.168.10.2:192.168.10.3 ---"
        .. "<enter><wait>initrd /casper/initrd<enter>",
        staticip.insert_boot_args(cmd, assert(staticip.boot_args(ip, "autoinstall"))))
      assert.is_nil(staticip.insert_boot_args("linux /casper/vmlinuz ds=nocloud;<enter>", "ip=x"))
    end)
  end)

  describe("the answer files", function()
    it("preseed: netcfg answers for a manual address", function()
      local files = render("ubuntu-2004", VARS)
      local base = files["base/preseed.cfg"]
      for _, l in ipairs({ "d-i netcfg/disable_autoconfig boolean true", "d-i netcfg/get_ipaddress string 192.168.10.20",
        "d-i netcfg/get_netmask string 255.255.255.0", "d-i netcfg/get_gateway string 192.168.10.1",
        "d-i netcfg/get_nameservers string 192.168.10.2 192.168.10.3", "d-i netcfg/confirm_static boolean true" }) do
        assert.matches("\n" .. l .. "\n", base, 1, true)
      end
      assert.not_matches("netcfg/get_ipaddress", render("ubuntu-2004")["base/preseed.cfg"], 1, true)
    end)

    it("kickstart: network --bootproto=static on CentOS 7 and Rocky 9, DHCP without", function()
      local want = "--bootproto=static --ip=192.168.10.20 --netmask=255.255.255.0 --gateway=192.168.10.1"
        .. " --nameserver=192.168.10.2,192.168.10.3"
      assert.matches("\nnetwork --onboot yes " .. want .. " --hostname centos.vm\n", render("centos-7", VARS)["7/ks.cfg"], 1, true)
      assert.matches("\nnetwork " .. want .. " --onboot=on --ipv6=auto --activate --hostname=capv.vm\n",
        render("rockylinux-9", VARS)["ks.cfg"], 1, true)
      assert.matches("\nnetwork --bootproto=dhcp --onboot=on --ipv6=auto --activate --hostname=capv.vm\n",
        render("rockylinux-9")["ks.cfg"], 1, true)
      assert.matches("\nnetwork --onboot yes --bootproto=dhcp --hostname centos.vm\n", render("centos-7")["7/ks.cfg"], 1, true)
    end)

    it("autoinstall: a netplan v2 network with DHCP off, in every Ubuntu live-server recipe", function()
      local want = table.concat({
        "autoinstall:", "  version: 1", "  network:", "    version: 2", "    ethernets:", "      capil0:",
        "        match:", "          name: \"e*\"", "        dhcp4: false", "        dhcp6: false",
        "        addresses: [192.168.10.20/24]", "        routes:", "          - to: default",
        "            via: 192.168.10.1", "        nameservers:", "          addresses: [192.168.10.2, 192.168.10.3]",
        "  # no SSH server" }, "\n")
      for _, r in ipairs({ "ubuntu-2204", "ubuntu-2204-efi", "ubuntu-2404", "ubuntu-2404-efi" }) do
        assert.matches(want, render(r, VARS)["user-data"], 1, true)
        local plain = render(r)["user-data"]
        assert.not_matches("network:", plain, 1, true)
        assert.matches("autoinstall:\n  version: 1\n\n  # no SSH server", plain, 1, true)
      end
    end)

    it("refuses a static address where the installer fetches its answer over HTTP with no way to take one "
      .. "(Photon 3), on every backend; the recipes that can take one resolve", function()
      for _, b in ipairs({ "qemu", "vsphere", "esx", "workstation" }) do
        local r = capil.run({ "inspect", "photon-3", "--backend", b, "--var", "build_ip=10.0.0.5/24" })
        assert.equal(1, r.code, r.stdout .. r.stderr)
        assert.matches("photon-3.lua: build_ip: this recipe's installer (photon) fetches its answer file over HTTP "
          .. "and takes no static address on its kernel line", r.stderr, 1, true)
        assert.matches("photon-5 for Photon", r.stderr, 1, true)
      end
      for _, name in ipairs({ "ubuntu-1804", "ubuntu-2004", "ubuntu-2204", "ubuntu-2404-efi", "centos-7",
        "rockylinux-9", "photon-5" }) do
        local r = capil.run({ "inspect", name, "--backend", "vsphere", "--var", "build_ip=10.0.0.5/24" })
        assert.equal(0, r.code, name .. ": " .. r.stderr)
      end
      local r = capil.run({ "inspect", "photon-3", "--backend", "qemu" })
      assert.equal(0, r.code, r.stderr)
      -- a boot command naming the server with no <enter> after it: nowhere to put the kernel arguments
      local dir = assert(fs.tempdir({ prefix = "capil-spec-noenter" }))
      assert(fs.write(dir .. "/noenter.lua", ([[return { extends = %q, name = "noenter",
        boot = { command = { "install ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/testos/ks.cfg<wait5s>" } } }]])
        :format(fs.realpath("spec/fixtures/recipes/testos.lua"))))
      r = capil.run({ "inspect", dir .. "/noenter.lua", "--recipes-dir", "spec/fixtures/recipes",
        "--var", "build_ip=10.0.2.15/24" })
      fs.remove(dir, { recursive = true })
      assert.equal(1, r.code, r.stdout .. r.stderr)
      assert.matches("build_ip: the boot command names the installer server but has no <enter> after it", r.stderr,
        1, true)
    end)

    it("Photon 5: ks.json's network member, still valid JSON", function()
      local ks = assert(json.decode(render("photon-5", VARS)["5/ks.json"]))
      assert.same({ type = "static", ip_addr = "192.168.10.20", netmask = "255.255.255.0", gateway = "192.168.10.1",
        nameserver = "192.168.10.2" }, ks.network)
      local plain = assert(json.decode(render("photon-5")["5/ks.json"]))
      assert.is_nil(plain.network)
      assert.equal("/dev/sda", plain.disk)
    end)
  end)

  describe("the SSH wait", function()
    -- a backend without a fixed NAT (as vSphere, ESXi, Workstation) whose
    -- VM cannot say its address (no VMware Tools): with build_ip the build
    -- connects to the static address, this machine's sshd at 127.0.0.1
    local function tools_less()
      local VM = {}
      VM.__index = VM
      local M = { name = "toolsless", description = "a VM that cannot report its address (a spec's toy)",
        traits = { encoder = "qmp", export = "qemu-img", guest_id = "vsphere" }, VM = VM }
      function M.create(_, step) return setmetatable({ name = step.vm_name }, VM) end
      function VM.start() return true end
      function VM.type_keys(_, events) return true, nil, nil, #events end
      function VM.ssh_address() return nil, "toolsless: VMware Tools reported no address", "ETIMEDOUT" end
      function VM.alive() return true end
      function VM.wait_exit() return true end
      function VM.power_off() return true end
      function VM.export() return nil, "toolsless: no export", "ENOTSUP" end
      function VM.destroy() return true end
      M.test = { prepare = function() return nil, "no", "ENOTSUP" end, record = function() return {} end,
        finish = function() return true end }
      return M
    end
    setup(function()
      package.preload["capil.backends.toolsless"] = tools_less
      table.insert(backend.REGISTERED, "toolsless")
    end)
    teardown(function()
      for i = #backend.REGISTERED, 1, -1 do
        if backend.REGISTERED[i] == "toolsless" then table.remove(backend.REGISTERED, i) end
      end
      package.preload["capil.backends.toolsless"] = nil
      package.loaded["capil.backends.toolsless"] = nil
    end)

    local function run(tmp, extra)
      local key = sshd.keygen(tmp, "guest_ed25519")
      local server = sshd.start({ authorized = { key } })
      local iso = tmp .. "/x.iso"
      assert(fs.write(iso, "not really an ISO\n"))
      local vars = { "iso_url=file://" .. iso, "iso_checksum=" .. assert(hash.file(iso)), "boot_wait=0s",
        "ssh_username=" .. server.user, "ssh_private_key_file=" .. key, "ssh_port=" .. server.port,
        "ssh_timeout=20s", "roles=probe", "probe_file=" .. tmp .. "/probe" }
      for _, v in ipairs(extra) do vars[#vars + 1] = v end
      local r = assert(require("capil.build.recipe").load("spec/fixtures/recipes/testos.lua"))
      local cfg = assert(require("capil.build.config").resolve(r, { backend = "toolsless",
        config_dir = "recipes/config", getenv = function() return nil end, vars = vars }))
      local plan = assert(require("capil.build.loader").plan(cfg, "toolsless", { recipes_dir = "spec/fixtures/recipes",
        output_root = tmp .. "/out", cache_dir = tmp .. "/cache" }))
      local steps = {}
      for _, s in ipairs(plan.steps) do
        steps[#steps + 1] = s
        if s.kind == "provision" then break end
      end
      plan.steps = steps
      local report, err = require("capil.build.pipeline").run(plan, cfg, { cache_dir = tmp .. "/cache" })
      server.stop()
      return report, err, plan
    end

    it("connects to build_ip instead of asking the backend for the guest's address", function()
      local tmp = peer.dir("staticip-ssh")
      local report, err, plan = run(tmp, { "build_ip=127.0.0.1/8" })
      assert(report, err)
      assert.is_true(report.ok)
      local by = {}
      for _, s in ipairs(plan.steps) do by[s.id] = s end
      assert.equal("127.0.0.1", by["wait-ssh"].host)
      assert.equal("provisioned-by-capil\n", fs.read(tmp .. "/probe"))
      -- without it the backend is asked, and this one cannot tell
      local tmp2 = peer.dir("staticip-ssh-dhcp")
      local r2, err2 = run(tmp2, {})
      assert.is_nil(r2)
      assert.matches("VMware Tools reported no address", err2, 1, true)
    end)
  end)

  describe("sysprep", function()
    local function sysprep_steps(vars)
      local cfg = resolve("spec/fixtures/recipes/testos-efi.lua", vars)
      local plan = assert(require("capil.build.loader").plan(cfg, "qemu", { recipes_dir = "spec/fixtures/recipes" }))
      for _, s in ipairs(plan.steps) do
        if s.kind == "provision" then return s.steps end
      end
    end
    local NAME = "restore DHCP (remove the build's static address 10.0.2.15)"
    local function restore_step(vars)
      for _, s in ipairs(sysprep_steps(vars)) do
        if s.role == "sysprep" and s.name == NAME then return s end
      end
    end

    it("restores DHCP only for a static build, unless build_keep_static_ip", function()
      assert.is_nil(restore_step({}))
      assert.is_nil(restore_step({ build_ip = "10.0.2.15/24", build_keep_static_ip = "true" }))
      assert.truthy(restore_step({ build_ip = "10.0.2.15/24" }))
    end)

    it("turns every installer's static configuration back into DHCP and leaves others alone", function()
      local step = assert(restore_step({ build_ip = "10.0.2.15/24", build_gateway = "10.0.2.2" }))
      local root = peer.dir("staticip-sysprep")
      local files = {
        ["etc/network/interfaces"] = "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n",
        ["etc/network/interfaces.d/eth0"] = "allow-hotplug eth0\niface eth0 inet static\n    address 10.0.2.15/24\n"
          .. "    gateway 10.0.2.2\n    dns-nameservers 10.0.2.3\n",
        ["etc/netplan/00-installer-config.yaml"] = "network:\n  ethernets:\n    ens192:\n      addresses:\n"
          .. "      - 10.0.2.15/24\n      routes:\n      - to: default\n        via: 10.0.2.2\n  version: 2\n",
        ["etc/netplan/99-other.yaml"] = "network:\n  version: 2\n  bridges: {}\n",
        ["etc/sysconfig/network-scripts/ifcfg-eth0"] = "TYPE=Ethernet\nBOOTPROTO=none\nIPADDR=10.0.2.15\nPREFIX=24\n"
          .. "GATEWAY=10.0.2.2\nDNS1=10.0.2.3\nDEVICE=eth0\nONBOOT=yes\n",
        ["etc/NetworkManager/system-connections/ens192.nmconnection"] = "[connection]\nid=ens192\ntype=ethernet\n\n"
          .. "[ipv4]\naddress1=10.0.2.15/24,10.0.2.2\ndns=10.0.2.3;\nmethod=manual\n\n[ipv6]\nmethod=auto\n",
        ["etc/systemd/network/50-static-en.network"] = "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\n"
          .. "Gateway=10.0.2.2\nDNS=10.0.2.3\n",
        ["etc/systemd/network/99-dhcp-en.network"] = "[Match]\nName=e*\n\n[Network]\nDHCP=yes\n",
      }
      for rel, text in pairs(files) do
        assert(fs.mkdir(fs.dirname(root .. "/" .. rel)))
        assert(fs.write(root .. "/" .. rel, text))
      end
      -- the step's own script, on this tree instead of the machine's /etc
      local script = step.shell:gsub("/etc/", root .. "/etc/")
      local r = assert(proc.run({ argv = { "sh", "-ec", script } }))
      assert.equal(0, r.code, r.stderr)
      assert.matches("restoring DHCP in " .. root .. "/etc/network/interfaces.d/eth0 (was: iface eth0 inet static "
        .. "address 10.0.2.15/24", r.stdout, 1, true)
      assert.matches("static address 10.0.2.15: 5 network configuration file(s) restored to DHCP", r.stdout, 1, true)
      local function read(rel) return assert(fs.read(root .. "/" .. rel)) end
      assert.equal(files["etc/network/interfaces"], read("etc/network/interfaces"))
      assert.equal("allow-hotplug eth0\niface eth0 inet dhcp\n", read("etc/network/interfaces.d/eth0"))
      local np = read("etc/netplan/00-installer-config.yaml")
      assert.matches("dhcp4: true", np, 1, true)
      assert.not_matches("10.0.2.15", np, 1, true)
      assert.equal(files["etc/netplan/99-other.yaml"], read("etc/netplan/99-other.yaml"))
      assert.equal("TYPE=Ethernet\nBOOTPROTO=dhcp\nDEVICE=eth0\nONBOOT=yes\n",
        read("etc/sysconfig/network-scripts/ifcfg-eth0"))
      assert.equal("[connection]\nid=ens192\ntype=ethernet\n\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n",
        read("etc/NetworkManager/system-connections/ens192.nmconnection"))
      assert.equal("[Match]\nName=e*\n\n[Network]\nDHCP=yes\n", read("etc/systemd/network/50-static-en.network"))
      assert.equal(files["etc/systemd/network/99-dhcp-en.network"], read("etc/systemd/network/99-dhcp-en.network"))
    end)
  end)
end)

-- A whole vSphere build on the simulator (spec/support/vcsim) whose VM
-- reports no guest IP (no VMware Tools): with build_ip the build reaches
-- SSH at the static address (this machine's sshd at 127.0.0.1) and the
-- typed boot command carries the preseed netcfg answers.
describe("a static IP build on the vSphere simulator #vsphere", function()
  local buildenv = require("support.buildenv")
  local PASSWORD = "St4tic-ip!pw"
  local env

  setup(function()
    env = buildenv.vsphere("staticip-vsphere", PASSWORD, { guest_ip = false })
  end)

  teardown(function()
    if env then env.stop() end
  end)

  it("reaches SSH at build_ip while the VM reports no address", function()
    local out = env.tmp .. "/out"
    local r = capil.run({ "run", "spec/fixtures/recipes/vsphere.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--backend", "vsphere", "--output", out, "--var-file", env.varfile,
      "--var", "iso_url=file://" .. env.iso, "--var", "iso_checksum=" .. env.iso_sum,
      "--var", "ssh_private_key_file=" .. env.key, "--var", "ssh_port=" .. env.ssh.port,
      "--var", "ssh_username=" .. env.ssh.user, "--var", "probe_file=" .. env.probe,
      "--var", "build_ip=127.0.0.1/8", "--var", "build_gateway=127.0.0.2" },
      { timeout = 240, env_add = { XDG_CACHE_HOME = env.tmp .. "/cache" } })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.not_matches(PASSWORD, r.stdout .. r.stderr, 1, true)
    assert.matches("connecting to the static address 127.0.0.1", r.stdout .. r.stderr, 1, true)
    assert.equal("provisioned-by-capil\n", fs.read(env.probe))
    -- the typed kernel line held d-i's static answers (read back from the simulator's key events)
    local report = json.read(("%s/vsphere-fixture-kube-v1.16.14/report.json"):format(out))
    assert.is_true(report.ok)
    local plan = json.decode(capil.run({ "inspect", "spec/fixtures/recipes/vsphere.lua", "--recipes-dir",
      "spec/fixtures/recipes", "--backend", "vsphere", "--var-file", env.varfile,
      "--var", "build_ip=127.0.0.1/8", "--var", "build_gateway=127.0.0.2" }).stdout)
    local boot
    for _, s in ipairs(plan.steps) do if s.id == "boot" then boot = s end end
    assert.matches("netcfg/get_ipaddress=127.0.0.1 netcfg/get_netmask=255.0.0.0 netcfg/get_gateway=127.0.0.2",
      boot.static_ip_args, 1, true)
  end)
end)
