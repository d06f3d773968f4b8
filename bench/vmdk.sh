#!/bin/sh
# bench/vmdk.sh — writing a streamOptimized VMDK from a raw disk: capil's
# writer (`capil vmdk convert`, zlib on every core) against
# `qemu-img convert -O vmdk -o subformat=streamOptimized` (zlib, one thread)
# on the same raw disk, warm cache. Prints both times, the ratio, both
# output sizes (same zlib level: qemu's compress(), Z_DEFAULT_COMPRESSION)
# and both peak RSS figures (/usr/bin/time).
# Goals: >= 1.8x faster on 2 cores; output within 2 % of qemu-img's; capil's
# peak RSS < 64 MiB.
#
# The disk: BENCH_SIZE_MB virtual (default 3072) holding BENCH_DATA_MB of
# OS-like data (default 1024: the files of /usr/lib and /usr/share, in 8 MiB
# pieces, with holes of 0-32 MiB between them), so compression ratios and
# the hole walk look like a node image's.
#
#   BENCH_JOBS     capil's --jobs (default: the cores)
#   BENCH_DIR      where the scratch files go (default /var/tmp)
#   CAPIL          the binary under test (default build/capil)
set -eu

. "$(dirname "$0")/lib.sh"
disk_bench_init bench/vmdk.sh qemu-img python3

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/capil-bench-vmdk.XXXXXX")
trap 'rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM

# timed_cpu CMD... -> "seconds peak-rss-KiB cpu-seconds" (user + system):
# on a machine shared with other jobs the CPU time shows the work done, the
# wall time how much of the cores the run was given.
timed_cpu() {
  sync
  "$TIME" -o "$dir/time" -f "%e %M %U %S" "$@" >"$dir/out" 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
  awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$dir/time"
}

echo "generating a $SIZE_MB MiB raw disk with $DATA_MB MiB of /usr files in $dir ..."
os_disk "$SIZE_MB" "$DATA_MB" "$dir/disk.raw"
du -m "$dir/disk.raw" | awk '{ print "raw disk: " $1 " MiB allocated" }'
cat "$dir/disk.raw" >/dev/null   # warm cache for both

echo "qemu-img convert ..."
set -- $(timed_cpu qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic \
  "$dir/disk.raw" "$dir/qemu.vmdk")
qt=$1 qrss=$2 qcpu=$3
echo "capil vmdk convert --jobs $JOBS ..."
set -- $(timed_cpu "$CAPIL" vmdk convert "$dir/disk.raw" "$dir/capil.vmdk" --jobs "$JOBS")
ct=$1 crss=$2 ccpu=$3
qemu-img compare -q "$dir/disk.raw" "$dir/capil.vmdk" || { echo "bench/vmdk.sh: capil's VMDK differs" >&2; exit 1; }
qs=$(stat -c %s "$dir/qemu.vmdk") cs=$(stat -c %s "$dir/capil.vmdk")
echo
printf '%-22s %7s s wall %7s s CPU  %11d bytes  peak RSS %6d KiB\n' "qemu-img (1 thread)" "$qt" "$qcpu" "$qs" "$qrss"
printf '%-22s %7s s wall %7s s CPU  %11d bytes  peak RSS %6d KiB\n' "capil (--jobs $JOBS)" "$ct" "$ccpu" "$cs" "$crss"
echo "speed-up: $(ratio "$qt" "$ct")x wall (goal >= 1.8x on 2 cores); CPU time $(ratio "$ccpu" "$qcpu")x qemu-img's"
echo "size: $(awk -v a="$cs" -v b="$qs" 'BEGIN { printf "%+.2f %%", (a - b) * 100 / b }') vs qemu-img (goal within 2 %)"
echo "capil peak RSS: $((crss / 1024)) MiB (goal < 64 MiB)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
