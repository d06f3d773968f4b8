-- The current OS recipes (Ubuntu 22.04/24.04 BIOS and EFI, Photon 5,
-- Rocky Linux 9): each resolved on every registered backend, in the golden
-- plans' fixed environment, checked against the values of image-builder's
-- images/capi/packer/ova/<recipe>.json (2026): ISO URLs and checksum type,
-- the boot command, the seed CD (files, label), firmware and guest OS ids.
-- Their answer files are rendered as a build renders them: the build
-- password appears only as its SHA-512 crypt hash.
local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local loader = require("capil.build.loader")
local installer = require("capil.build.installer")
local backend = require("capil.backend")
local json = require("capil.sys.json")
local fs = require("capil.sys.fs")

local ENV = { cache_dir = "/var/cache/capil", output_root = "output", recipes_dir = "recipes" }

local UBUNTU_BOOT = "c<wait>linux /casper/vmlinuz ipv6.disable=0 --- autoinstall ds='nocloud;'<enter><wait>"
  .. "initrd /casper/initrd<enter><wait>boot<enter>"
local U2204 = "ubuntu-22.04.5-live-server-amd64.iso"
local U2404 = "ubuntu-24.04.4-live-server-amd64.iso"

local function ubuntu(name, version, iso, urls, efi)
  return {
    name = name, semver = "v1.36.1",
    urls = urls, checksum_type = "sha256", iso = iso,
    boot = UBUNTU_BOOT, cd_files = { "user-data", "meta-data" }, cd_label = "CIDATA",
    dir = "recipes/http/ubuntu/" .. version .. (efi and ".efi" or ""),
    firmware = efi and "efi" or "bios",
    guest = { workstation = "ubuntu-64", vsphere = "ubuntu64Guest", ovf_id = 94, ovf_version = "" },
    answer = "user-data",
  }
end

local RECIPES = {
  ubuntu("ubuntu-2204", "22.04", U2204, {
    "https://releases.ubuntu.com/22.04.5/" .. U2204,
    "https://old-releases.ubuntu.com/releases/22.04/" .. U2204,
  }, false),
  ubuntu("ubuntu-2204-efi", "22.04", U2204, {
    "https://releases.ubuntu.com/22.04.5/" .. U2204,
    "https://old-releases.ubuntu.com/releases/22.04/" .. U2204,
  }, true),
  ubuntu("ubuntu-2404", "24.04", U2404, {
    "https://releases.ubuntu.com/noble/" .. U2404,
    "https://old-releases.ubuntu.com/releases/24.04/" .. U2404,
  }, false),
  ubuntu("ubuntu-2404-efi", "24.04", U2404, {
    "https://releases.ubuntu.com/noble/" .. U2404,
    "https://old-releases.ubuntu.com/releases/24.04/" .. U2404,
  }, true),
  {
    name = "photon-5", semver = "v1.36.1",
    urls = {
      "https://packages.vmware.com/photon/5.0/GA/iso/photon-minimal-5.0-dde71ec57.x86_64.iso",
      "https://packages.broadcom.com/photon/5.0/GA/iso/photon-minimal-5.0-dde71ec57.x86_64.iso",
    },
    checksum_type = "sha512",
    boot = "<esc><wait> vmlinuz initrd=initrd.img root/dev/ram0 loglevel=3 photon.media=cdrom "
      .. "ks=/dev/sr1:/5/ks.json insecure_installation=1<enter><wait>",
    cd_files = { "5/ks.json" }, cd_label = "cidata", dir = "recipes/http/photon",
    firmware = "bios",
    guest = { workstation = "vmware-photon-64", vsphere = "vmwarePhoton64Guest", ovf_id = 36, ovf_version = "" },
    answer = "5/ks.json",
  },
  {
    name = "rockylinux-9", semver = "v1.36.1",
    urls = {
      "https://dl.rockylinux.org/vault/rocky/9.6/isos/x86_64/Rocky-9.6-x86_64-minimal.iso",
      "https://download.rockylinux.org/vault/rocky/9.6/isos/x86_64/Rocky-9.6-x86_64-minimal.iso",
    },
    checksum_type = "sha256",
    boot = "<up>e<down><down><end><bs><bs><bs><bs><bs>text inst.ks=hd:LABEL=cidata:/ks.cfg<leftCtrlOn>x<leftCtrlOff>",
    cd_files = { "ks.cfg" }, cd_label = "cidata", dir = "recipes/http/rockylinux/9",
    firmware = "efi",
    guest = { workstation = "rockylinux-64", vsphere = "rockylinux_64Guest", ovf_id = 80, ovf_version = "" },
    answer = "ks.cfg",
  },
}

-- A clear password no template holds, and a hash of crypt's alphabet.
local CLEAR = "Clear-Build-Pw-4711"
local HASH = "$6$0123456789abcdef$Zu0gxZ2Y9pQy1yRjX5W1mBkq0aJ4sVn8H7dTcEoLfGiKrNbMuSvWxYz./AbCdEfGhIjKlMnOpQrStUvWxYz012"

local function resolve(name, b)
  local r = assert(recipe.load(name, { dir = "recipes" }))
  local cfg = assert(config.resolve(r, { backend = b, config_dir = "recipes/config",
    getenv = function() return nil end }))
  local p, errs = loader.plan(cfg, b, ENV)
  assert(p, errs and table.concat(errs, "\n"))
  return p, cfg
end

local function step(p, id)
  for _, s in ipairs(p.steps) do
    if s.id == id then return s end
  end
  error("no step " .. id)
end

-- The seed CD's files rendered as serve_installer renders them.
local function render_cd(cfg, s)
  local vars = {}
  for k, v in pairs(installer.template_vars(cfg)) do vars[k] = v end
  vars.ssh_password, vars.ssh_password_hash = CLEAR, HASH
  local dir = assert(fs.tempdir({ prefix = "capil-spec-current" }))
  local ok, err = installer.render(s.dir, s.cd_files, dir, vars)
  local out = {}
  if ok then
    for _, f in ipairs(s.cd_files) do out[f] = assert(fs.read(dir .. "/" .. f)) end
  end
  for _, f in ipairs(s.cd_files) do os.remove(dir .. "/" .. f) end
  os.remove(dir .. "/5")
  os.remove(dir)
  assert(ok, err)
  return out
end

describe("current OS recipes #unit", function()
  it("start the installer's HTTP server only for what is served or named by the boot command", function()
    -- the seed recipes serve their kickstart/preseed
    assert.is_true(step(resolve("ubuntu-2004", "qemu"), "installer").serve)
    -- nothing served, but the boot command names the server: it starts
    local vf = assert(fs.tempdir({ prefix = "capil-spec-serve" })) .. "/vars.json"
    assert(fs.write(vf, '{"boot_command": ["linux ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/x<enter>"]}'))
    local r = assert(recipe.load("ubuntu-2204", { dir = "recipes" }))
    local cfg = assert(config.resolve(r, { backend = "qemu", config_dir = "recipes/config", var_files = { vf },
      getenv = function() return nil end }))
    os.remove(vf)
    local p = assert(loader.plan(cfg, "qemu", ENV))
    assert.is_true(step(p, "installer").serve)
  end)

  it("are listed with the seed recipes", function()
    local names = {}
    for _, n in ipairs(recipe.list("recipes")) do names[n] = true end
    for _, want in ipairs(RECIPES) do assert.is_true(names[want.name], want.name) end
  end)

  for _, want in ipairs(RECIPES) do
    for _, b in ipairs(backend.names()) do
      it(("resolves %s on %s with image-builder's values"):format(want.name, b), function()
        local p = resolve(want.name, b)
        local iso = step(p, "fetch-iso")
        assert.same(want.urls, iso.urls)
        assert.equal(want.checksum_type, iso.checksum_type)
        assert.equal(want.checksum_type == "sha512" and 128 or 64, #iso.checksum)
        assert.equal(want.boot, step(p, "boot").command)
        local inst = step(p, "installer")
        assert.same(want.cd_files, inst.cd_files)
        assert.equal(want.cd_label, inst.cd_label)
        assert.equal(want.dir, inst.dir)
        assert.equal(0, #inst.files, "nothing is served over HTTP")
        assert.is_false(inst.serve, "an HTTP server would start with nothing to serve")
        local vm = step(p, "create-vm")
        assert.equal(want.firmware, vm.firmware)
        assert.equal(want.name .. "-kube-" .. want.semver, vm.vm_name)
        -- the guest id a backend creates the VM with: Workstation's own, else vSphere's
        local guest = b == "workstation" and want.guest.workstation or want.guest.vsphere
        assert.equal(guest, vm.guest_os)
      end)
    end

    it(("declares %s's OVF ids and Kubernetes version"):format(want.name), function()
      local _, cfg = resolve(want.name, "qemu")
      assert.equal(want.guest.ovf_id, cfg:get("guest_os.ovf_id"))
      assert.equal(want.guest.ovf_version, cfg:get("guest_os.ovf_version"))
      assert.equal(want.guest.workstation, cfg:get("guest_os.workstation"))
      assert.equal(want.guest.vsphere, cfg:get("guest_os.vsphere"))
      assert.equal(want.semver, cfg:get("kubernetes.semver"))
      assert.equal("pkg", cfg:get("kubernetes.source_type"))
    end)

    it(("renders %s's seed CD with the password hash, never the password"):format(want.name), function()
      local p, cfg = resolve(want.name, "qemu")
      local files = render_cd(cfg, step(p, "installer"))
      local answer = files[want.answer]
      assert.truthy(answer:find(HASH, 1, true), want.answer .. " holds the hash")
      for f, text in pairs(files) do
        assert.is_nil(text:find(CLEAR, 1, true), f .. " holds the clear password")
        assert.is_nil(text:find("{{", 1, true), f .. " has an unrendered template")
      end
      if want.answer == "user-data" then
        assert.equal("#cloud-config\n", answer:sub(1, 14))
        assert.truthy(answer:find("\n        passwd: '" .. HASH .. "'\n", 1, true))
        assert.truthy(answer:find("\n      - name: builder\n", 1, true))
        assert.truthy(answer:find(want.firmware == "efi" and "ptable: gpt" or "ptable: msdos", 1, true))
        if want.firmware == "efi" then assert.truthy(answer:find("path: /boot/efi", 1, true)) end
        assert.equal("", files["meta-data"])
      elseif want.answer == "5/ks.json" then
        local ks = assert(json.decode(answer))
        assert.equal("/dev/sda", ks.disk)
        assert.same({ age = -1, crypted = true, text = "*" }, ks.password)
        assert.equal("useradd -U -d /home/builder -m --groups wheel -p '" .. HASH .. "' builder", ks.postinstall[2])
      else
        assert.truthy(answer:find("\nuser --name=builder --groups=wheel --password=" .. HASH
          .. " --iscrypted --shell=/bin/bash\n", 1, true))
        assert.truthy(answer:find("\nrootpw --lock\n", 1, true))
        assert.is_nil(answer:find("--plaintext", 1, true))
      end
    end)
  end

  it("gives the Ubuntu 22.04+ images cloud-init's VMware datasource (the installer's NoCloud pin removed)", function()
    for _, name in ipairs({ "ubuntu-2204", "ubuntu-2404-efi" }) do
      local p = resolve(name, "qemu")
      local found
      for _, s in ipairs(step(p, "provision").steps) do
        if s.shell and s.shell:find("/etc/cloud/cloud.cfg.d/99-installer.cfg", 1, true) then found = s end
      end
      assert.truthy(found, name)
    end
  end)
  it("writes Ubuntu 24.04's apt sources in deb822 form that apt reads (no suite listed twice)", function()
    local p = resolve("ubuntu-2404", "qemu")
    local files = {}
    for _, st in ipairs(step(p, "provision").steps) do
      if st.copy then files[st.copy.dest] = st.copy.content end
    end
    assert.is_string(files["/etc/apt/sources.list.d/ubuntu.sources"])
    assert.not_matches("\ndeb ", "\n" .. files["/etc/apt/sources.list"])
    -- Debian's own apt parses it: the URIs it would fetch, without fetching
    local dir = assert(fs.tempdir({ prefix = "capil-spec-apt" }))
    assert(fs.mkdir(dir .. "/parts"))
    assert(fs.mkdir(dir .. "/lists/partial"))
    assert(fs.mkdir(dir .. "/cache"))
    assert(fs.write(dir .. "/parts/ubuntu.sources", files["/etc/apt/sources.list.d/ubuntu.sources"]))
    local r = assert(require("capil.sys.proc").run({ argv = { "apt-get", "-o", "Dir::Etc::SourceParts=" .. dir .. "/parts",
      "-o", "Dir::Etc::SourceList=/dev/null", "-o", "Dir::State::Lists=" .. dir .. "/lists",
      "-o", "Dir::Cache=" .. dir .. "/cache", "update", "--print-uris" }, timeout = 60 }))
    fs.remove(dir, { recursive = true })
    assert.equal(0, r.code, r.stderr)
    for _, suite in ipairs({ "noble", "noble-updates", "noble-backports", "noble-security" }) do
      assert.matches("/dists/" .. suite:gsub("%-", "%%-") .. "/InRelease'", r.stdout)
    end
    assert.matches("http://security.ubuntu.com/ubuntu/dists/noble-security/universe/binary-amd64/Packages", r.stdout,
      1, true)
  end)
end)
