local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local loader = require("capil.build.loader")
local plan = require("capil.build.plan")
local bootcmd = require("capil.build.bootcmd")

local function resolve(name, backend, opts)
  local r = assert(recipe.load(name))
  local cfg = assert(config.resolve(r, { backend = backend or "qemu", vars = opts and opts.vars }))
  return cfg, assert(loader.plan(cfg, backend or "qemu"))
end

local function step(p, id)
  for _, s in ipairs(p.steps) do if s.id == id then return s end end
end

-- image-builder's values (reference/image-builder.md §2), era 308a9dae5.
local GOLDEN = {
  ["centos-7"] = {
    build_name = "centos-7", distro_name = "centos", os_display_name = "CentOS 7",
    guest_os_type = "centos7-64", vsphere_guest_os_type = "centos7_64Guest", ovf_id = 107,
    iso_url = "https://mirrors.edge.kernel.org/centos/7.8.2003/isos/x86_64/CentOS-7-x86_64-Minimal-2003.iso",
    checksum = "659691c28a0e672558b003d223f83938f254b39875ee7559d1a4a14c79173193", checksum_type = "sha256",
    shutdown = "sys-unconfig",
    boot = "<tab> text ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/7/ks.cfg<enter><wait>",
  },
  ["photon-3"] = {
    build_name = "photon-3", distro_name = "photon", os_display_name = "VMware Photon OS 64-bit",
    guest_os_type = "vmware-photon-64", vsphere_guest_os_type = "vmwarePhoton64Guest", ovf_id = 36,
    iso_url = "https://packages.vmware.com/photon/3.0/Rev3/iso/photon-minimal-3.0-a383732.iso",
    checksum = "c2883a42e402a2330d9c39b4d1e071cf9b3b5898", checksum_type = "sha1",
    shutdown = "shutdown now",
    boot = "<esc><wait> vmlinuz initrd=initrd.img root/dev/ram0 loglevel=3 photon.media=cdrom "
      .. "ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/3/ks.json<enter><wait>",
  },
  ["ubuntu-1804"] = {
    build_name = "ubuntu-1804", distro_name = "ubuntu", os_display_name = "Ubuntu 18.04",
    guest_os_type = "ubuntu-64", vsphere_guest_os_type = "ubuntu64Guest", ovf_id = 94,
    iso_url = "http://cdimage.ubuntu.com/releases/18.04/release/ubuntu-18.04.4-server-amd64.iso",
    checksum = "e2ecdace33c939527cbc9e8d23576381c493b071107207d2040af72595f8990b", checksum_type = "sha256",
    shutdown = "shutdown -P now",
    boot = "<enter><wait><f6><wait><esc><wait>" .. ("<bs>"):rep(83) .. "/install/vmlinuz auto "
      .. "console-setup/ask_detect=false console-setup/layoutcode=us debconf/frontend=noninteractive "
      .. "debian-installer=en_US fb=false initrd=/install/initrd.gz kbd-chooser/method=us "
      .. "keyboard-configuration/layout=USA keyboard-configuration/variant=USA locale=en_US "
      .. "netcfg/get_domain=local netcfg/get_hostname=localhost grub-installer/bootdev=/dev/sda "
      .. "preseed/url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/18.04/preseed.cfg -- <enter>",
  },
  ["ubuntu-2004"] = {
    build_name = "ubuntu-2004", distro_name = "ubuntu", os_display_name = "Ubuntu 20.04",
    guest_os_type = "ubuntu-64", vsphere_guest_os_type = "ubuntu64Guest", ovf_id = 94,
    iso_url = "http://cdimage.ubuntu.com/ubuntu-legacy-server/releases/20.04/release/"
      .. "ubuntu-20.04-legacy-server-amd64.iso",
    checksum = "36f15879bd9dfd061cd588620a164a82972663fdd148cce1f70d57d314c21b73", checksum_type = "sha256",
    shutdown = "shutdown -P now",
    boot = "<esc><wait><esc><wait><enter><wait>/install/vmlinuz auto console-setup/ask_detect=false "
      .. "console-setup/layoutcode=us console-setup/modelcode=pc105 debconf/frontend=noninteractive "
      .. "debian-installer=en_US fb=false initrd=/install/initrd.gz kbd-chooser/method=us "
      .. "keyboard-configuration/layout=USA keyboard-configuration/variant=USA locale=en_US "
      .. "netcfg/get_domain=local netcfg/get_hostname=localhost grub-installer/bootdev=/dev/sda "
      .. "preseed/url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/20.04/preseed.cfg -- <wait><enter><wait>",
  },
}

describe("seed recipes #unit", function()
  it("are the four image-builder OSes of 2020, beside the current ones (spec/current_recipes_spec.lua)", function()
    assert.same({ "centos-7", "photon-3", "photon-5", "rockylinux-9", "ubuntu-1804", "ubuntu-2004",
      "ubuntu-2204", "ubuntu-2204-efi", "ubuntu-2404", "ubuntu-2404-efi" }, recipe.list())
  end)

  for name, g in pairs(GOLDEN) do
    describe(name, function()
      local cfg, p = resolve(name)
      local vars = cfg:vars()

      it("has image-builder's identity, guest ids and versions", function()
        assert.equal(g.build_name, vars.build_name)
        assert.equal(g.distro_name, vars.distro_name)
        assert.equal(g.os_display_name, vars.os_display_name)
        assert.equal(g.guest_os_type, vars.guest_os_type)
        assert.equal(g.vsphere_guest_os_type, vars.vsphere_guest_os_type)
        assert.equal(g.ovf_id, cfg:get("guest_os.ovf_id"))
        assert.equal("v1.16.14", vars.kubernetes_semver)
        assert.equal("1.3.4", vars.containerd_version)
        assert.equal("v0.8.6", vars.kubernetes_cni_semver)
        assert.equal(g.shutdown, vars.shutdown_command)
        -- image-builder's hardware (a variable here, not hard-coded)
        assert.same({ 1, 2048, 20480 }, { cfg:get("cpus"), cfg:get("memory"), cfg:get("disk_size") })
        assert.same({ "builder", "10s" }, { vars.ssh_username, vars.boot_wait })
      end)

      it("fetches the 2020 ISO first, then its archive, with the same checksum", function()
        local s = step(p, "fetch-iso")
        assert.equal(g.iso_url, s.urls[1])
        assert.is_true(#s.urls >= 2)
        assert.equal(g.checksum, s.checksum)
        assert.equal(g.checksum_type, s.checksum_type)
        assert.matches("/iso/" .. g.checksum .. ".iso$", s.cache_path)
      end)

      it("types image-builder's boot command", function()
        local s = step(p, "boot")
        assert.equal(g.boot, s.command)
        assert.equal(10, s.wait)
        assert.equal("qmp", s.encoder)
        local text = assert(bootcmd.substitute(s.command, plan.PROBE_VARS))
        local events = assert(bootcmd.parse(text))
        assert.equal(s.keys, bootcmd.summary(events).keys)
        -- the encodings type the same keys: one QMP chord per key press
        local presses = 0
        for _, c in ipairs(bootcmd.to_qmp(events)) do if c.keys then presses = presses + 1 end end
        assert.equal(s.keys, presses)
      end)

      it("walks the paths of a real build: declared hardware, checks as root, Packer's SSH wait", function()
        -- QEMU presents the controller and NIC the OVF declares (/dev/sda for
        -- grub-installer/bootdev and ks.json's disk; vmw_pvscsi in the initramfs)
        local c = step(p, "create-vm")
        assert.same({ "pvscsi", "vmxnet3" }, { c.disk_interface, c.nic_model })
        local _, pv = resolve(name, "qemu", { vars = { "qemu_disk_interface=virtio", "qemu_nic_model=virtio" } })
        c = step(pv, "create-vm")
        assert.same({ "virtio", "virtio" }, { c.disk_interface, c.nic_model })
        local _, ps = resolve(name, "vsphere")
        assert.is_nil(step(ps, "create-vm").disk_interface)
        -- every image check runs as root (goss ran with use_sudo), and says so
        local checks = step(p, "checks").checks
        assert.is_true(#checks > 0)
        for _, ch in ipairs(checks) do
          assert.is_true(ch.become, ch.name)
          assert.equal("root", ch.run_as, ch.name)
        end
        -- image-builder's templates hard-code ssh_timeout 4h
        assert.equal(4 * 3600, step(p, "wait-ssh").timeout)
        local e = cfg:explain("ssh_timeout")
        assert.equal("default", e.layer)
        assert.matches("packer-common.json's \"60m\" is not applied", e.note, 1, true)
        local _, p2 = resolve(name, "qemu", { vars = { "ssh_timeout=90m" } })
        assert.equal(90 * 60, step(p2, "wait-ssh").timeout)
      end)

      it("writes output/<name>-kube-<semver>/", function()
        local v = g.build_name .. "-kube-v1.16.14"
        assert.equal(v, p.build_version)
        assert.equal("output/" .. v, p.output_dir)
        for ext, key in pairs({ [".ova"] = "ova", [".ovf"] = "ovf", [".mf"] = "mf", [".ova.sha256"] = "sha256" }) do
          assert.equal("output/" .. v .. "/" .. v .. ext, p.artifacts[key])
        end
      end)
    end)
  end

  it("encodes the Ubuntu 18.04 boot command for every backend", function()
    local _, p = resolve("ubuntu-1804")
    local text = assert(bootcmd.substitute(step(p, "boot").command, { http_ip = "10.0.2.2", http_port = 8080 }))
    local events = assert(bootcmd.parse(text))
    local bs = 0
    for _, e in ipairs(events) do if e.key == "backspace" then bs = bs + 1 end end
    assert.equal(83, bs)
    -- vSphere: waits split the USB batches; <f6> is HID 0x3f
    local usb = bootcmd.to_usb(events)
    assert.equal(0x3f, usb[3].codes[1].usbHidCode >> 16)
    assert.equal("vsphere", resolve("ubuntu-1804", "vsphere") and "vsphere")
    local _, pv = resolve("ubuntu-1804", "vsphere")
    assert.equal("usb", step(pv, "boot").encoder)
    local _, pw = resolve("ubuntu-1804", "workstation")
    assert.equal("rfb", step(pw, "boot").encoder)
    assert.equal("ubuntu-64", step(pw, "create-vm").guest_os)
    assert.equal("ubuntu64Guest", step(pv, "create-vm").guest_os)
  end)

  it("lets a custom recipe extend a seed recipe and override fields", function()
    local r = assert(recipe.load("spec/fixtures/recipes/custom-ubuntu.lua"))
    assert.same({ "recipes/ubuntu-2004.lua", "spec/fixtures/recipes/custom-ubuntu.lua" }, r.files)
    local cfg = assert(config.resolve(r, { backend = "qemu" }))
    assert.equal("custom-ubuntu", cfg:get("build_name"))
    assert.equal(4, cfg:get("cpus"))
    assert.equal(40960, cfg:get("disk_size"))
    assert.equal("nfs-common", cfg:vars().extra_debs)
    assert.equal("36f15879bd9dfd061cd588620a164a82972663fdd148cce1f70d57d314c21b73", cfg:get("iso_checksum"))
    local p = assert(loader.plan(cfg, "qemu"))
    assert.equal("output/custom-ubuntu-kube-v1.16.14", p.output_dir)
    assert.equal(40960, step(p, "create-vm").disk_mb)
  end)
end)

describe("bad recipes #unit", function()
  local capil = require("support.capil")
  local cases = {
    ["syntax-error"] = "syntax-error.lua:3: '}' expected",
    ["unknown-field"] = "unknown-field.lua:5: unknown field 'iso.checksun' (did you mean 'iso.checksum'?)",
    ["wrong-type"] = "wrong-type.lua:5: hardware.cpus: expected an integer, got \"many\"",
    ["missing-checksum"] = "missing-checksum.lua: iso.checksum: required",
    ["bad-checksum"] = "bad-checksum.lua:5: iso.checksum: expected sha256 hex (64 characters), got \"abc\"",
    ["bad-url"] = "bad-url.lua:5: iso.urls: item 1: expected an http(s):// or file:/// URL",
    ["os-execute"] = "os-execute.lua:1: os is not available in recipes",
    ["infinite-loop"] = "infinite-loop.lua:2: stopped after 10 million instructions (an endless loop?)",
    ["memory-bomb"] = "memory-bomb.lua:1: string.rep: result over 16 MiB",
    ["bad-bootcmd"] = "bad-bootcmd.lua: boot.command: unknown boot command key <wiat5> at position 6",
    ["extends-missing"] = "extends-missing.lua:1: extends 'no-such-recipe':",
    ["returns-string"] = "returns-string.lua: a recipe must return a table, got string",
  }
  for name, want in pairs(cases) do
    it(name .. " gives one clear error and exit 1", function()
      local r = capil.run({ "validate", "spec/fixtures/bad-recipes/" .. name .. ".lua" }, { timeout = 30 })
      assert.equal(1, r.code)
      assert.equal("", r.stdout)
      assert.matches(want, r.stderr, 1, true)
      assert.not_matches("traceback", r.stderr, 1, true)
      local lines = select(2, r.stderr:gsub("\n", ""))
      assert.is_true(lines <= 2, r.stderr)
    end)
  end

  it("validate lists every recipe's result and fails if one is bad", function()
    local r = capil.run({ "validate", "ubuntu-2004", "spec/fixtures/bad-recipes/wrong-type.lua", "centos-7" })
    assert.equal(1, r.code)
    assert.equal("recipes/ubuntu-2004.lua: ok\nrecipes/centos-7.lua: ok\n", r.stdout)
  end)
end)

describe("schema outputs #unit", function()
  local generate = require("capil.cmd.schema").generate
  local fs = require("capil.sys.fs")
  it("the committed docs and LuaLS annotations match the schema", function()
    assert.equal(generate.markdown(), fs.read("docs/recipes.md"))
    assert.equal(generate.luals(), fs.read("lua/capil/types/recipe.lua"))
  end)

  it("every schema field with a variable is unique and documented", function()
    local seen = {}
    for _, f in ipairs(require("capil.build.schema").fields) do
      if f.var then
        assert.is_nil(seen[f.var], f.var)
        seen[f.var] = true
      end
    end
    assert.matches("| `iso.checksum` | `iso_checksum` |", generate.markdown(), 1, true)
  end)
end)
