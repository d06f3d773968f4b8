-- Ubuntu 24.04 node image, EFI: ubuntu-2404 with image-builder's
-- images/capi/packer/ova/ubuntu-2404-efi.json (2026) differences: firmware
-- efi and the user-data of packer/ova/linux/ubuntu/http/24.04.efi/ (GPT with
-- a 512 MiB EFI system partition). Same ISO, boot command and seed CD.
---@type capil.Recipe
return {
  extends = "ubuntu-2404",
  name = "ubuntu-2404-efi",
  description = "Ubuntu 24.04 EFI (live server, autoinstall from a seed CD)",
  installer = { dir = "http/ubuntu/24.04.efi" },
  -- OVMF on QEMU
  hardware = { firmware = "efi" },
}
