#!/bin/sh
# bench/hash.sh — SHA-256 of one large file, warm cache: capil's hash.file
# against `openssl dgst -sha256` and `sha256sum`. Prints wall times, rates
# and the capil/openssl throughput ratio (goal: >= 0.95).
#
#   BENCH_SIZE_MB  file size in MiB (default 2048)
#   BENCH_RUNS     runs per tool, the best one counts (default 3)
#   BENCH_DIR      where the scratch file goes (default /var/tmp; not a tmpfs
#                  if you can help it)
#   CAPIL          the binary under test (default build/capil)
set -eu

SIZE_MB=${BENCH_SIZE_MB:-2048}
RUNS=${BENCH_RUNS:-3}
CAPIL=${CAPIL:-build/capil}
[ -x "$CAPIL" ] || { echo "bench/hash.sh: $CAPIL not found (build first)" >&2; exit 2; }

DIR=$(mktemp -d "${BENCH_DIR:-/var/tmp}/capil-bench-hash.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
trap 'exit 130' INT TERM
FILE=$DIR/data.bin

echo "generating $SIZE_MB MiB in $DIR ..."
# pseudo-random bytes, fast: AES-CTR keystream over zeros
openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:capil-bench </dev/zero 2>/dev/null |
  head -c "$((SIZE_MB * 1048576))" >"$FILE"
cat "$FILE" >/dev/null # warm the page cache

now() { date +%s%N; }

# best_of NAME CMD... : runs CMD $RUNS times, keeps the fastest wall time (ns)
# in $best and the hash it printed in $sum
best_of() {
  name=$1
  shift
  best=
  i=0
  while [ "$i" -lt "$RUNS" ]; do
    t0=$(now)
    out=$("$@")
    t1=$(now)
    t=$((t1 - t0))
    if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best=$t; fi
    i=$((i + 1))
  done
  sum=$(printf '%s\n' "$out" | grep -Eo '[0-9a-f]{64}' | head -n 1)
  awk -v n="$name" -v t="$best" -v mb="$SIZE_MB" -v s="$sum" \
    'BEGIN { printf "%-10s %8.3f s %9.0f MiB/s  %s\n", n, t / 1e9, mb / (t / 1e9), s }'
}

echo "SHA-256 of $SIZE_MB MiB, warm cache, best of $RUNS:"
best_of capil "$CAPIL" -e 'print(assert(require("capil.sys.hash").file((...), "sha256")))' "$FILE"
t_capil=$best sum_capil=$sum
best_of openssl openssl dgst -sha256 "$FILE"
t_openssl=$best sum_openssl=$sum
best_of sha256sum sha256sum "$FILE"
t_sha256sum=$best sum_sha256sum=$sum

if [ "$sum_capil" != "$sum_openssl" ] || [ "$sum_capil" != "$sum_sha256sum" ]; then
  echo "bench/hash.sh: the tools disagree on the hash" >&2
  exit 1
fi
awk -v c="$t_capil" -v o="$t_openssl" -v s="$t_sha256sum" 'BEGIN {
  r = o / c
  verdict = "NOT met"
  if (r >= 0.95) verdict = "met"
  printf "capil/openssl throughput ratio:   %.3f (goal >= 0.95: %s)\n", r, verdict
  printf "capil/sha256sum throughput ratio: %.3f\n", s / c
}'
