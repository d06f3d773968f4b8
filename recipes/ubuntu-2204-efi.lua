-- Ubuntu 22.04 node image, EFI: ubuntu-2204 with image-builder's
-- images/capi/packer/ova/ubuntu-2204-efi.json (2026) differences: firmware
-- efi and the user-data of packer/ova/linux/ubuntu/http/22.04.efi/ (GPT with
-- a 512 MiB EFI system partition). Same ISO, boot command and seed CD.
---@type capil.Recipe
return {
  extends = "ubuntu-2204",
  name = "ubuntu-2204-efi",
  description = "Ubuntu 22.04 EFI (live server, autoinstall from a seed CD)",
  installer = { dir = "http/ubuntu/22.04.efi" },
  -- OVMF on QEMU
  hardware = { firmware = "efi" },
}
