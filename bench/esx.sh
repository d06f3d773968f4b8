#!/bin/sh
# bench/esx.sh — from a free-licence ESXi host's disk to a verified OVA:
# capil's one pass (the flat extent streamed over SFTP into capil's VMDK
# writer, straight into the OVA: `ova.pack` of a stream source, what the esx
# backend's SSH path does) against what Packer's ESXi path does — download
# the flat extent (OpenSSH's sftp), then `qemu-img convert -O vmdk -o
# subformat=streamOptimized`, then pack (capil's `ova pack` of that VMDK,
# hashed first) — and against capil's own earlier fallback (capil's SFTP
# download to a file, then the fused pack from it). The "host" is this
# machine's OpenSSH sshd on 127.0.0.1 (its internal-sftp), serving the disk
# as ESXi serves NAME-flat.vmdk: a sparse file whose holes read as zeros,
# so every byte crosses the SSH connection. Both OVAs are verified and the
# one-pass OVA's disk compared with the source (qemu-img compare), untimed.
# Prints wall times, the ratios and peak RSS (/usr/bin/time).
# Goals: the one pass faster than download-then-convert by at least the
# conversion's share; capil's peak RSS < 64 MiB.
#
# The disk: as bench/vmdk.sh's, BENCH_SIZE_MB virtual (default 3072) holding
# BENCH_DATA_MB of OS-like data (default 1024).
#
#   BENCH_JOBS     capil's jobs (default: the cores)
#   BENCH_DIR      where the scratch files go (default /var/tmp)
#   CAPIL          the binary under test (default build/capil)
set -eu

. "$(dirname "$0")/lib.sh"
disk_bench_init bench/esx.sh qemu-img python3 ssh-keygen sftp /usr/sbin/sshd

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/capil-bench-esx.XXXXXX")
sshd_pid=
cleanup() {
  [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
NAME=bench-kube-v1.30.1

echo "generating a $SIZE_MB MiB flat extent with $DATA_MB MiB of /usr files in $dir ..."
mkdir -p "$dir/host" "$dir/onepass" "$dir/packer" "$dir/twostep" "/run/sshd"
os_disk "$SIZE_MB" "$DATA_MB" "$dir/host/$NAME-flat.vmdk"

# the "host": sshd on loopback, a key of its own and one for the client
ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
cp "$dir/client_key.pub" "$dir/authorized_keys"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" &
sshd_pid=$!
i=0
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 50 ] || { cat "$dir/sshd.log" >&2; exit 1; }; sleep 0.1
done
fp=$(ssh-keygen -lf "$dir/host_key.pub" | awk '{ print $2 }')
user=$(id -un)
flat="$dir/host/$NAME-flat.vmdk"

# capil: ova.pack of the stream (or, MODE=file, of a downloaded file)
cat >"$dir/pack.lua" <<'EOF'
local ssh = require("capil.sys.ssh")
local ova = require("capil.format.ova")
local mode, port, user, key, fp, flat, out, name, size_mb, jobs = ...
local s = assert(ssh.connect({ host = "127.0.0.1", port = tonumber(port), user = user, key = key, host_key = fp }))
local disk = { source = "127.0.0.1:" .. flat, format = "raw", name = name .. "-disk-0.vmdk" }
if mode == "stream" then
  disk.open = function() return s:stream(flat) end
else
  local local_copy = out .. "/" .. name .. "-flat.raw"
  assert(s:get(flat, local_copy))
  disk.source = local_copy
end
local r = assert(ova.pack({ ova = out .. "/" .. name .. ".ova", disks = { disk }, progress = false,
  jobs = tonumber(jobs),
  os = { ovf_id = 94, ovf_version = "", os_type = "ubuntu64Guest", display_name = "Ubuntu 20.04" },
  hardware = { cpus = 2, cores_per_socket = 1, memory_mb = 2048, firmware = "bios", disk_controller = "pvscsi",
    vmx_version = 15, disk_mb = tonumber(size_mb) },
  properties = { KUBERNETES_SEMVER = "v1.30.1" } }))
if mode ~= "stream" then os.remove(disk.source) end
s:close()
print(r.size)
EOF
build_manifest "$dir/packer" "$NAME-disk-0.vmdk"
cat "$flat" >/dev/null   # warm cache for all

echo "capil one pass: SFTP stream -> writer -> OVA (jobs $JOBS) ..."
set -- $(timed "$CAPIL" -q "$dir/pack.lua" stream "$port" "$user" "$dir/client_key" "$fp" "$flat" \
  "$dir/onepass" "$NAME" "$SIZE_MB" "$JOBS")
ot=$1 orss=$2
echo "Packer's way: sftp download, qemu-img convert, capil ova pack ..."
set -- $(timed sftp -q -i "$dir/client_key" -P "$port" -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null -o BatchMode=yes "$user@127.0.0.1:$flat" "$dir/packer/$NAME-flat.vmdk")
dt=$1
set -- $(timed qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic \
  "$dir/packer/$NAME-flat.vmdk" "$dir/packer/$NAME-disk-0.vmdk")
ct=$1 qrss=$2
rm -f "$dir/packer/$NAME-flat.vmdk"
set -- $(timed "$CAPIL" -q ova pack "$dir/packer")
pt=$1
packer=$(awk -v a="$dt" -v b="$ct" -v c="$pt" 'BEGIN { printf "%.2f", a + b + c }')
echo "capil's earlier fallback: capil SFTP download to a file, then the fused pack ..."
set -- $(timed "$CAPIL" -q "$dir/pack.lua" file "$port" "$user" "$dir/client_key" "$fp" "$flat" \
  "$dir/twostep" "$NAME" "$SIZE_MB" "$JOBS")
tt=$1 trss=$2

check_ovas bench/esx.sh "$flat" "$NAME-disk-0.vmdk" "$dir/onepass" "$dir/packer" "$dir/twostep"

echo
printf '%-44s %7s s wall  peak RSS %6d KiB\n' "capil one pass (stream -> OVA)" "$ot" "$orss"
printf '%-44s %7s s wall  (sftp %s s + qemu-img %s s + pack %s s; qemu-img RSS %d KiB)\n' \
  "Packer's way (download, convert, pack)" "$packer" "$dt" "$ct" "$pt" "$qrss"
printf '%-44s %7s s wall  peak RSS %6d KiB\n' "capil download to a file, then fused pack" "$tt" "$trss"
echo "speed-up: $(ratio "$packer" "$ot")x wall against Packer's way, $(ratio "$tt" "$ot")x against a download first"
echo "capil one-pass peak RSS: $((orss / 1024)) MiB (goal < 64 MiB)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
