#!/bin/sh
# bench/upload.sh — `capil upload` and `capil download` against curl(1) doing
# the same requests, on loopback, with one build directory holding a random
# OVA. Prints wall times, capil/curl ratios and capil's peak RSS. Goals:
# ratio >= 0.9 both ways, RSS <= 32 MiB.
#
# The peer is our GCS fake (spec/support/gcs/fake.js: Google's resumable
# protocol, persisting to disk and hashing like the real service): the
# firebase-tools emulator refuses requests over ~130 MB and cannot take
# chunks, so it cannot hold a 2 GiB object. curl gets the easiest form of
# the same upload: the session opened, then the whole file in one PUT; capil
# sends resumable chunks (BENCH_CHUNK_MB, default 64), computes the MD5 and
# CRC32C it checks against the object, and writes the .sha256 object last.
#
#   bench/upload.sh                    # 2 GiB
#   BENCH_SIZE_MB=256 bench/upload.sh  # quicker
#   CAPIL=build/capil                  # binary under test (default)
set -eu

SIZE_MB=${BENCH_SIZE_MB:-2048}
CHUNK_MB=${BENCH_CHUNK_MB:-64}
CAPIL=${CAPIL:-build/capil}
TIME=/usr/bin/time
[ -x "$CAPIL" ] || { echo "bench/upload.sh: $CAPIL not built" >&2; exit 1; }
[ -x "$TIME" ] || { echo "bench/upload.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
command -v node >/dev/null || { echo "bench/upload.sh: needs node (the GCS fake)" >&2; exit 1; }
CAPIL=$(realpath "$CAPIL")
here=$(cd "$(dirname "$0")/.." && pwd)

base=${BENCH_DIR:-${TMPDIR:-/tmp}}
dir=$(mktemp -d "$base/capil-bench-upload-XXXXXX")
fake_pid=
cleanup() {
  if [ -n "$fake_pid" ]; then
    kill "$fake_pid" 2>/dev/null || true
    wait "$fake_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

name=bench-kube-v1.16.14
build="$dir/$name"
mkdir -p "$build" "$dir/fake"
echo "creating a ${SIZE_MB} MiB random OVA..."
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$build/$name.ova"
sum=$(sha256sum "$build/$name.ova" | cut -d' ' -f1)
echo "$sum" >"$build/$name.ova.sha256"
"$CAPIL" -e '
  local m = require("capil.format.manifest")
  assert(m.append(arg[1] .. "/packer-manifest.json", m.build({ name = "qemu", builder_type = "qemu",
    files = { { name = arg[2] .. ".ova", size = 0 } },
    custom_data = { build_name = "bench", build_type = "node", kubernetes_semver = "v1.16.14" } })))' \
  "$build" "$name"

port=$("$CAPIL" -e 'print((require("capil.core.runtime").free_port()))')
node "$here/spec/support/gcs/fake.js" "$port" "$dir/fake" "{}" >"$dir/fake.log" 2>&1 &
fake_pid=$!
ep="http://127.0.0.1:$port"
i=0
until curl -s -o /dev/null "$ep/_fake/stats"; do
  i=$((i + 1))
  [ $i -lt 200 ] || { echo "the fake did not start:" >&2; cat "$dir/fake.log" >&2; exit 1; }
  sleep 0.05
done

. "$(dirname "$0")/lib.sh"

# curl: open a session, then one PUT of the whole file
SIZE=$((SIZE_MB * 1024 * 1024))
export ep name build SIZE
set -- $(timed sh -c '
  loc=$(curl -s -D - -o /dev/null -X POST -H "Content-Type: application/json" \
    -H "X-Upload-Content-Length: $SIZE" -d "{\"name\":\"curl/$name.ova\"}" \
    "$ep/upload/storage/v1/b/bench/o?uploadType=resumable&name=curl/$name.ova" |
    tr -d "\r" | awk "tolower(\$1) == \"location:\" { print \$2 }")
  curl -s -o /dev/null -f -T "$build/$name.ova" "$loc"')
curl_put=$1
set -- $(timed "$CAPIL" -q upload "$build" --bucket bench --gcs-endpoint "$ep" --chunk-size "$CHUNK_MB")
capil_put=$1 rss_put=$2

url="$ep/bench/release/v1.16.14/$name.ova"
set -- $(timed curl -s -f -o "$dir/curl.ova" "$url")
curl_get=$1
rm -f "$dir/curl.ova"
mkdir -p "$dir/dl"
set -- $(timed "$CAPIL" -q download "$url" -o "$dir/dl")
capil_get=$1 rss_get=$2
[ "$(sha256sum "$dir/dl/$name.ova" | cut -d' ' -f1)" = "$sum" ] || { echo "capil download: digest mismatch" >&2; exit 1; }

rss=$rss_get
[ "$rss_put" -gt "$rss" ] && rss=$rss_put
echo
echo "size:      ${SIZE_MB} MiB over $ep (our GCS fake), capil chunks of ${CHUNK_MB} MiB"
printf "upload:    curl %6.2f s (%s)   capil %6.2f s (%s)   capil/curl %s\n" \
  "$curl_put" "$(rate "$curl_put")" "$capil_put" "$(rate "$capil_put")" "$(ratio "$curl_put" "$capil_put")"
printf "download:  curl %6.2f s (%s)   capil %6.2f s (%s)   capil/curl %s\n" \
  "$curl_get" "$(rate "$curl_get")" "$capil_get" "$(rate "$capil_get")" "$(ratio "$curl_get" "$capil_get")"
echo "capil peak RSS: $((rss / 1024)) MiB (upload $((rss_put / 1024)) MiB, download $((rss_get / 1024)) MiB; goal <= 32)"
echo "(capil also checks MD5/CRC32C after the upload and SHA-256 after the download; curl does neither)"
