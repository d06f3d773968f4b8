# bench/lib.sh — helpers shared by the benchmarks (sourced).
# Needs $TIME (/usr/bin/time), $dir (scratch) and $SIZE_MB set by the caller
# (the disk benchmarks: by disk_bench_init).

# disk_bench_init SCRIPT TOOL...: the settings of the disk benchmarks
# (SIZE_MB from BENCH_SIZE_MB, default 3072; DATA_MB from BENCH_DATA_MB,
# default 1024; JOBS from BENCH_JOBS, default the cores; CAPIL, default
# build/capil; TIME) and a check that the binary and each TOOL are there.
disk_bench_init() {
  script=$1
  shift
  SIZE_MB=${BENCH_SIZE_MB:-3072}
  DATA_MB=${BENCH_DATA_MB:-1024}
  JOBS=${BENCH_JOBS:-$(nproc)}
  CAPIL=${CAPIL:-build/capil}
  TIME=/usr/bin/time
  [ -x "$CAPIL" ] || { echo "$script: $CAPIL not found (build first)" >&2; exit 2; }
  for t in "$@" "$TIME"; do
    command -v "$t" >/dev/null || { echo "$script: $t is needed" >&2; exit 2; }
  done
}

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

# build_manifest OUT_DIR DISK: a packer-manifest.json in OUT_DIR listing
# DISK, as a build directory for `capil ova pack` (the custom_data of the
# ubuntu-2004 recipe's plan; disk_size_mb $SIZE_MB, artifact $NAME).
build_manifest() {
  [ -f "$dir/manifest.lua" ] || cat >"$dir/manifest.lua" <<'EOF'
local manifest = require("capil.format.manifest")
local out, disk, size_mb, name = ...
local _, _, p = require("capil.build.loader").load("ubuntu-2004", { var = { "disk_size=40960" } })
assert(p, "the ubuntu-2004 plan did not resolve")
local cd = manifest.custom_data(p, { build_timestamp = "1600000000", build_date = "2020-09-13T12:26:40Z",
  capil_version = "bench" })
cd.build_name, cd.kubernetes_semver, cd.disk_size_mb = "bench", "v1.30.1", size_mb
assert(manifest.append(out .. "/packer-manifest.json", manifest.build({ name = "bench", builder_type = "capil-bench",
  artifact_id = name, custom_data = cd, files = { { name = disk } } })))
EOF
  "$CAPIL" -q "$dir/manifest.lua" "$1" "$2" "$SIZE_MB" "$NAME"
}

# check_ovas SCRIPT RAW MEMBER DIR...: each DIR/$NAME.ova passes `capil ova
# verify`, and the first one's disk MEMBER holds the raw disk RAW (qemu-img
# compare); untimed. Exits non-zero, naming SCRIPT, otherwise.
check_ovas() {
  script=$1 raw=$2 member=$3
  shift 3
  for d in "$@"; do
    "$CAPIL" -q ova verify "$d/$NAME.ova" >/dev/null || { echo "$script: $d/$NAME.ova fails verify" >&2; exit 1; }
  done
  mkdir -p "$dir/x"
  tar xf "$1/$NAME.ova" -C "$dir/x" "$member"
  qemu-img compare -q -f raw -F vmdk "$raw" "$dir/x/$member" ||
    { echo "$script: the disk in $1/$NAME.ova differs from $raw" >&2; exit 1; }
  rm -rf "$dir/x"
}
