# bench/lib.sh — helpers shared by the transfer benchmarks (sourced).
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
