-- The EFI build, end to end, on QEMU (issue 17): the installer fixture's
-- hybrid CD boots under OVMF into GRUB's EFI menu, capil types the boot
-- lines at GRUB's command line, the installer reads its answer file from the
-- seed CD labelled cidata (no HTTP server runs), partitions GPT with an EFI
-- system partition and puts GRUB at the ESP's removable-media path; capil
-- exports the OVA, whose OVF says EFI; `capil test` boots its VMDK under
-- OVMF because the OVA says so, and `capil ssh` logs in as capv on an EFI
-- system. With build_ip=10.0.2.15/24 (QEMU user networking's guest
-- address), build_gateway and build_dns (issue 19, image-builder issue
-- 1681): the installer reads the static `network` line from the seed CD
-- before any network is up and tries no DHCP, the installed system comes up
-- with that static configuration for the build, and sysprep puts DHCP back
-- into the image, which the test VM then boots with. Guest-bound (#guest): the same C runs in the BIOS end-to-end
-- build, so the sanitizer pass of .ci/run leaves this one out.
local capil = require("support.capil")
local fixtures = require("support.fixtures")
local peer = require("support.peer")
local proc = require("capil.sys.proc")
local fs = require("capil.sys.fs")
local hash = require("capil.sys.hash")
local json = require("capil.sys.json")

local ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" -- the UEFI specification's EFI system partition

local function run(argv, timeout)
  local r = assert(proc.run({ argv = argv, timeout = timeout or 300 }))
  assert.equal(0, r.code, table.concat(argv, " ") .. ": " .. r.stdout .. r.stderr)
  return r.stdout
end

describe("end-to-end EFI build of the test OS from a seed CD #qemu #e2e #guest", function()
  it("installs under OVMF from a cidata seed CD without HTTP, and the image boots EFI in capil test", function()
    local iso = fixtures.installer_iso()
    local out = peer.dir("e2e-efi")
    local name = "testos-efi-kube-v1.16.14"
    local r = capil.run({ "run", "spec/fixtures/recipes/testos-efi.lua", "--recipes-dir", "spec/fixtures/recipes",
      "--output", out, "--var", "iso_url=file://" .. iso, "--var", "iso_checksum=" .. assert(hash.file(iso)),
      "--var", "build_ip=10.0.2.15/24", "--var", "build_gateway=10.0.2.2", "--var", "build_dns=10.0.2.3" },
      { timeout = 2400 })
    local dir = out .. "/" .. name
    local serial = fs.read(dir .. "/logs/serial.log") or ""
    assert.equal(0, r.code, r.stderr .. "\n" .. serial)

    -- no HTTP server: the answer file came from the seed CD, typed into GRUB
    assert.matches("installer files also on a CD labelled cidata", r.stderr, 1, true)
    assert.matches("no installer files over HTTP: no server started", r.stderr, 1, true)
    assert.not_matches("installer files served on", r.stderr, 1, true)
    -- the serial log keeps the installer's console across the restart from disk
    assert.matches("BdsDxe", serial, 1, true) -- OVMF's boot manager
    assert.matches("capil-installer: reading answer file /testos-efi/ks.cfg from the filesystem labelled cidata",
      serial, 1, true)
    assert.matches("capil-installer: partitioning /dev/sda (GPT: EFI system partition, root)", serial, 1, true)
    assert.matches("capil-installer: installing the bootloader (GRUB, EFI removable-media path)", serial, 1, true)
    assert.matches("Welcome to GRUB", serial, 1, true) -- the installed disk's GRUB
    -- the static address: from the answer file, no DHCP tried in the installer
    assert.matches("network: eth0 10.0.2.15/24 via 10.0.2.2 (static, from the answer file)", serial, 1, true)
    assert.not_matches("(DHCP)", serial, 1, true)
    -- the installed system ran the build on its static configuration, and
    -- sysprep restored DHCP (the file it reset and what it held)
    local blog = fs.read(dir .. "/logs/build.log") or ""
    assert.matches("restoring DHCP in /etc/network/interfaces.d/eth0 (was: iface eth0 inet static address 10.0.2.15/24",
      blog, 1, true)
    assert.matches("static address 10.0.2.15: 1 network configuration file(s) restored to DHCP", blog, 1, true)
    local report = json.read(dir .. "/report.json")
    assert.is_true(report.ok)
    assert.same({ 3, 0 }, { report.checks.total, report.checks.failed }) -- hygiene, after sysprep

    -- the OVA verifies and says EFI (vmw:Config firmware, no BootOrderSection)
    local ova = dir .. "/" .. name .. ".ova"
    local v = capil.run({ "ova", "verify", ova })
    assert.equal(0, v.code, v.stdout .. v.stderr)
    local facts = assert(require("capil.format.ova").inspect(ova))
    assert.equal("efi", facts.hardware.firmware)

    -- the disk: GPT, an EFI system partition holding GRUB at the removable
    -- media path, then the root filesystem
    local raw = peer.dir("e2e-efi-raw") .. "/disk.raw"
    local x = peer.dir("e2e-efi-x")
    run({ "tar", "-xf", ova, "-C", x })
    run({ "qemu-img", "convert", "-O", "raw", x .. "/" .. name .. "-disk-0.vmdk", raw })
    local pt = assert(json.decode(run({ "sfdisk", "--json", raw }))).partitiontable
    assert.equal("gpt", pt.label)
    assert.equal(2, #pt.partitions)
    assert.equal(ESP_TYPE, pt.partitions[1].type)
    assert.equal("ESP", pt.partitions[1].name)
    local esp = ("%s@@%d"):format(raw, pt.partitions[1].start * (pt.sectorsize or 512))
    assert.matches("BOOTX64%s+EFI", run({ "mdir", "-i", esp, "::/EFI/BOOT" }))
    fs.remove(raw)

    -- capil test boots the VMDK under OVMF because the OVA says EFI (the
    -- configuration's firmware is bios); the VM is kept for capil ssh
    local t = capil.run({ "test", dir, "--keep" }, { timeout = 1200 })
    local state = json.read(dir .. "/test/vm.json")
    finally(function() peer.stop_pid(state and state.pid) end)
    assert.equal(0, t.code, t.stderr .. "\n" .. (fs.read(dir .. "/test/serial.log") or ""))
    assert.matches(name .. ".ova declares firmware efi: the test VM boots efi", t.stderr, 1, true)
    assert.is_true(json.read(dir .. "/test/report.json").ok)

    local id = capil.run({ "ssh", dir, "--", "id", "-un" })
    assert.equal(0, id.code, id.stderr)
    assert.equal("capv\n", id.stdout)
    local efi = capil.run({ "ssh", dir, "--", "test -d /sys/firmware/efi && findmnt -no FSTYPE /boot/efi" })
    assert.equal(0, efi.code, efi.stderr)
    assert.equal("vfat\n", efi.stdout)
    -- the image's network configuration is DHCP again: the test VM took a lease
    local net = capil.run({ "ssh", dir, "--", "cat /etc/network/interfaces.d/eth0; ip -4 -o addr show dev eth0" })
    assert.equal(0, net.code, net.stderr)
    assert.matches("iface eth0 inet dhcp", net.stdout, 1, true)
    assert.not_matches("inet static", net.stdout, 1, true)
    assert.matches("10.0.2.15/24 .* dynamic", net.stdout)
  end)
end)
