-- hygiene checks: what image-builder's 2026 goss specs added after
-- CVE-2024-9486 (images that left the build carrying its identity): the
-- image holds no SSH host keys (each clone makes its own at first boot), an
-- empty /etc/machine-id (systemd makes a new one at first boot, so clones
-- do not share DHCP client ids or journal ids) and no cloud-init instance
-- state (a clone runs cloud-init as a new instance, with its own user data).
-- They run after the sysprep role, as image-builder's goss runs after its
-- sysprep, and each prints what is left behind when it fails.
return function()
  return {
    { name = "no SSH host keys",
      command = "find /etc/ssh -maxdepth 1 -name 'ssh_host_*' -print",
      stdout_lines = {} },
    { name = "empty machine-id",
      command = "test -f /etc/machine-id && stat -c 'size=%s' /etc/machine-id",
      stdout_lines = { "size=0" } },
    { name = "no cloud-init instance state",
      command = "for p in /var/lib/cloud/instance /var/lib/cloud/instances /var/lib/cloud/data /var/lib/cloud/sem; do "
        .. "if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"$p\"; fi; done",
      stdout_lines = {} },
  }
end
