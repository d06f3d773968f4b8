# bench/lib.sh — helpers shared by the benchmarks (sourced).
# Needs $TIME (/usr/bin/time), $dir (scratch) and $SIZE_MB set by the caller.

# timed CMD... -> "seconds peak-rss-KiB" on stdout; the command's output in
# $dir/out, its errors in $dir/err (shown when it fails). Dirty pages are
# flushed first so no run pays for another's writes.
timed() {
  sync
  "$TIME" -o "$dir/time" -f "%e %M" "$@" >"$dir/out" 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
  cat "$dir/time"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
rate() { awk -v s="$1" -v mb="$SIZE_MB" 'BEGIN { printf "%.0f MiB/s", (s > 0 ? mb / s : 0) }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'; }
max() { [ -z "$1" ] || [ "$2" -gt "$1" ] && echo "$2" || echo "$1"; }

# os_disk SIZE_MB DATA_MB PATH: a sparse raw disk of SIZE_MB MiB holding
# DATA_MB MiB of this machine's /usr files in 8 MiB runs at random (seeded)
# offsets, the rest holes: an installed OS's shape, reproducibly.
os_disk() {
  find /usr/lib /usr/share -type f -size +4k -print0 2>/dev/null | xargs -0 cat 2>/dev/null |
  python3 -c '
import random, sys
size, data = int(sys.argv[1]) << 20, int(sys.argv[2]) << 20
rnd, piece, off, done = random.Random(20), 8 << 20, 0, 0
with open(sys.argv[3], "wb") as f:
    f.truncate(size)
    src = sys.stdin.buffer
    while done < data:
        buf = src.read(min(piece, data - done))
        if not buf: break
        off += rnd.randrange(0, 32 << 20) // 65536 * 65536 + rnd.randrange(0, 4096)
        if off + len(buf) > size: break
        f.seek(off); f.write(buf)
        off += len(buf); done += len(buf)
print("%d MiB of data written" % (done >> 20))
' "$1" "$2" "$3"
}
