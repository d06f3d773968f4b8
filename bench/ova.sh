#!/bin/sh
# bench/ova.sh — from a built raw disk to a verified OVA: capil's fused
# `ova pack` (the streamOptimized VMDK written by capil's writer straight
# into the OVA, one pass over the disk) against `qemu-img convert -O vmdk -o
# subformat=streamOptimized` followed by capil's `ova pack` of that VMDK
# (its digest unknown, so hashed first: what packing another tool's VMDK
# costs). Both OVAs are then checked with `capil ova verify` and the disk
# compared with the source (qemu-img compare), untimed. Prints both wall
# times, the ratio and the peak RSS of each program (/usr/bin/time).
# Goals: the fused pack faster than the two steps by about qemu-img's share
# (compression on every core, no VMDK written and read again); capil's peak
# RSS < 64 MiB. (bench/ova-pack.sh times packing an existing VMDK.)
#
# The disk: as bench/vmdk.sh's, BENCH_SIZE_MB virtual (default 3072) holding
# BENCH_DATA_MB of OS-like data (default 1024: the files of /usr/lib and
# /usr/share, in 8 MiB pieces, with holes of 0-32 MiB between them).
#
#   BENCH_JOBS     capil's --jobs (default: the cores)
#   BENCH_DIR      where the scratch files go (default /var/tmp)
#   CAPIL          the binary under test (default build/capil)
set -eu

. "$(dirname "$0")/lib.sh"
disk_bench_init bench/ova.sh qemu-img python3

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/capil-bench-ova.XXXXXX")
trap 'rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
NAME=bench-kube-v1.30.1

echo "generating a $SIZE_MB MiB raw disk with $DATA_MB MiB of /usr files in $dir ..."
mkdir -p "$dir/fused" "$dir/twostep"
os_disk "$SIZE_MB" "$DATA_MB" "$dir/fused/$NAME.raw"
du -m "$dir/fused/$NAME.raw" | awk '{ print "raw disk: " $1 " MiB allocated" }'

# the build directories packed (lib.sh)
build_manifest "$dir/fused" "$NAME.raw"
build_manifest "$dir/twostep" "$NAME-disk-0.vmdk"
cat "$dir/fused/$NAME.raw" >/dev/null   # warm cache for both

echo "capil ova pack (fused, --jobs $JOBS) ..."
set -- $(timed "$CAPIL" -q ova pack "$dir/fused" --jobs "$JOBS")
ft=$1 frss=$2
echo "qemu-img convert, then capil ova pack ..."
set -- $(timed qemu-img convert -f raw -O vmdk -o subformat=streamOptimized,adapter_type=lsilogic \
  "$dir/fused/$NAME.raw" "$dir/twostep/$NAME-disk-0.vmdk")
qt=$1 qrss=$2
set -- $(timed "$CAPIL" -q ova pack "$dir/twostep")
pt=$1 prss=$2
tt=$(awk -v a="$qt" -v b="$pt" 'BEGIN { printf "%.2f", a + b }')

# both OVAs verified, the fused one's disk compared with the source (untimed)
check_ovas bench/ova.sh "$dir/fused/$NAME.raw" "$NAME.vmdk" "$dir/fused" "$dir/twostep"
fs=$(stat -c %s "$dir/fused/$NAME.ova") ts=$(stat -c %s "$dir/twostep/$NAME.ova")

echo
printf '%-34s %7s s wall  %11d bytes  peak RSS %6d KiB\n' "capil fused (--jobs $JOBS)" "$ft" "$fs" "$frss"
printf '%-34s %7s s wall  %11d bytes  peak RSS %6d KiB (qemu-img) %6d KiB (capil)\n' \
  "qemu-img + capil ova pack" "$tt" "$ts" "$qrss" "$prss"
printf '%-34s %7s s + %s s\n' "  (qemu-img convert + ova pack)" "$qt" "$pt"
echo "speed-up: $(ratio "$tt" "$ft")x wall (two steps / fused)"
echo "capil fused peak RSS: $((frss / 1024)) MiB (goal < 64 MiB)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
