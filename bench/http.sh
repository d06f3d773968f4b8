#!/bin/sh
# bench/http.sh — capil's http against curl(1) on loopback: download (GET to
# a file) and upload (PUT from a file, nginx dav) of one random file served
# by a throwaway nginx. capil runs with SHA-256 verification on (sha256=
# for both), curl without any. Prints wall times, capil/curl throughput ratios and
# capil's peak RSS. Goal: ratio >= 0.9 both ways, RSS <= 32 MiB.
#
#   bench/http.sh                    # 2 GiB
#   BENCH_SIZE_MB=256 bench/http.sh  # quicker
#   CAPIL=build/capil                # binary under test (default)
#   BENCH_DIR=/some/dir              # where the files go (default /dev/shm when
#                                    # it has room, else $TMPDIR or /tmp)
#
# Files live in RAM (tmpfs) by default so the disk's moods do not drown the
# difference between the two clients; BENCH_DIR on a disk measures that too.
set -eu

SIZE_MB=${BENCH_SIZE_MB:-2048}
CAPIL=${CAPIL:-build/capil}
NGINX=${NGINX:-/usr/sbin/nginx}
TIME=/usr/bin/time
[ -x "$CAPIL" ] || { echo "bench/http.sh: $CAPIL not built" >&2; exit 1; }
[ -x "$TIME" ] || { echo "bench/http.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
CAPIL=$(realpath "$CAPIL")

base=${BENCH_DIR:-}
if [ -z "$base" ]; then
  base=${TMPDIR:-/tmp}
  # the file, a download and an upload (plus nginx's temp copy) at once
  need_kb=$((SIZE_MB * 1024 * 3 + 65536))
  avail_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
  [ -n "$avail_kb" ] && [ "$avail_kb" -gt "$need_kb" ] && base=/dev/shm
fi
dir=$(mktemp -d "$base/capil-bench-http-XXXXXX")
nginx_pid=
cleanup() {
  if [ -n "$nginx_pid" ]; then
    kill "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

mkdir -p "$dir/www/dav" "$dir/tmp"
port=$("$CAPIL" -e 'print((require("capil.core.runtime").free_port()))')
user=
[ "$(id -u)" = 0 ] && user="user root;"
cat >"$dir/nginx.conf" <<EOF
$user
worker_processes 1;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  default_type application/octet-stream;
  sendfile on;
  server {
    listen 127.0.0.1:$port;
    root $dir/www;
    client_max_body_size 0;
    location /dav/ { dav_methods PUT DELETE; create_full_put_path on; }
  }
}
EOF

echo "creating a ${SIZE_MB} MiB random file..."
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$dir/www/file.bin"
sum=$(sha256sum "$dir/www/file.bin" | cut -d' ' -f1)

"$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off; master_process on;' &
nginx_pid=$!
i=0
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
  i=$((i + 1))
  [ $i -lt 100 ] || { echo "nginx did not start:" >&2; cat "$dir/error.log" >&2; exit 1; }
  sleep 0.05
done
url="http://127.0.0.1:$port"

cat >"$dir/bench.lua" <<'EOF'
-- capil side: one request, the digest on stdout
local http = require("capil.sys.http")
local mode, url, path, sum = arg[1], arg[2], arg[3], arg[4]
local r, err
if mode == "get" then
  r, err = http.request({ url = url, out_file = path, sha256 = sum, retries = 0 })
else
  -- sha256: verification on, the digest of what was sent checked against it
  r, err = http.request({ method = "PUT", url = url, body_file = path, sha256 = sum, retries = 0 })
end
if not r then io.stderr:write(err, "\n") os.exit(1) end
print(r.digest)
EOF

. "$(dirname "$0")/lib.sh"

# Each side runs BENCH_RUNS times (default 2), alternating; the best time counts.
RUNS=${BENCH_RUNS:-2}
curl_get= capil_get= curl_put= capil_put= rss_get= rss_put=
run=0
while [ $run -lt "$RUNS" ]; do
  run=$((run + 1))
  set -- $(timed curl -s -o "$dir/dl-curl.bin" "$url/file.bin"); curl_get=$(min "$curl_get" "$1")
  rm -f "$dir/dl-curl.bin"
  set -- $(timed "$CAPIL" "$dir/bench.lua" get "$url/file.bin" "$dir/dl-capil.bin" "$sum")
  capil_get=$(min "$capil_get" "$1"); rss_get=$(max "$rss_get" "$2")
  [ "$(cat "$dir/out")" = "$sum" ] || { echo "capil download: digest mismatch" >&2; exit 1; }
  rm -f "$dir/dl-capil.bin"

  set -- $(timed curl -s -o /dev/null -T "$dir/www/file.bin" "$url/dav/curl.bin"); curl_put=$(min "$curl_put" "$1")
  rm -f "$dir/www/dav/curl.bin"
  set -- $(timed "$CAPIL" "$dir/bench.lua" put "$url/dav/capil.bin" "$dir/www/file.bin" "$sum")
  capil_put=$(min "$capil_put" "$1"); rss_put=$(max "$rss_put" "$2")
  [ "$(cat "$dir/out")" = "$sum" ] || { echo "capil upload: digest mismatch" >&2; exit 1; }
  [ "$(sha256sum "$dir/www/dav/capil.bin" | cut -d' ' -f1)" = "$sum" ] || { echo "uploaded file differs" >&2; exit 1; }
  rm -f "$dir/www/dav/capil.bin"
done

rss=$rss_get
[ "$rss_put" -gt "$rss" ] && rss=$rss_put
echo
echo "size:      ${SIZE_MB} MiB over http://127.0.0.1 (nginx, sendfile; dav PUT), files in $base, best of $RUNS"
printf "download:  curl %6.2f s (%s)   capil %6.2f s (%s)   capil/curl %s\n" \
  "$curl_get" "$(rate "$curl_get")" "$capil_get" "$(rate "$capil_get")" "$(ratio "$curl_get" "$capil_get")"
printf "upload:    curl %6.2f s (%s)   capil %6.2f s (%s)   capil/curl %s\n" \
  "$curl_put" "$(rate "$curl_put")" "$capil_put" "$(rate "$capil_put")" "$(ratio "$curl_put" "$capil_put")"
echo "capil peak RSS: $((rss / 1024)) MiB (download $((rss_get / 1024)) MiB, upload $((rss_put / 1024)) MiB; goal <= 32)"
echo "(capil also hashes every byte with SHA-256 and verifies it against sha256=, both ways; curl does not)"
