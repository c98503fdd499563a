#!/usr/bin/env bash
# Media throughput: one file uploaded to chat-media and downloaded from it,
# and the same file downloaded from nginx serving it from the same disk, in
# one run; meanwhile another client pings the gateway every 10 ms and its
# RTT p50/p99 per phase is reported (the gateway's push loop must not feel
# the transfers).  The machine is shared: compare the rows, not absolutes.
#
#   bench/media.sh                 # 100 MiB file, 3 downloads per server
#   SIZE_MB=1 ROUNDS=1 bench/media.sh   # smoke run
#
# Needs nginx (Debian nginx-light, in scripts/deps.sh); without it the
# nginx row is left out and says so.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

export PATH=$PGBIN:$PATH   # psql for the driver
SIZE_MB=${SIZE_MB:-100}
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d /tmp/chat-media-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  cluster_stop
  rm -rf "$work"
}
trap cleanup EXIT
cluster_start >/dev/null
db=chat_media_bench
new_db "$db"
dsn="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db"

media_port=$(free_port)
gateway/chat-media --listen "127.0.0.1:$media_port" --dsn "$dsn" --token-secret-file "$CHAT_TOKEN_SECRET_FILE" \
  --media-dir "$work/media" --log-level warn >"$work/media.log" 2>&1 &
pids+=($!)
gw_port=$(free_port)
gateway/chat-gateway --listen "127.0.0.1:$gw_port" --node bench --dsn "$dsn" \
  --token-secret-file "$CHAT_TOKEN_SECRET_FILE" --media-url "http://127.0.0.1:$media_port" \
  --log-level warn >"$work/gateway.log" 2>&1 &
pids+=($!)

nginx_port=
if command -v nginx >/dev/null; then
  nginx_port=$(free_port)
  mkdir -p "$work/nginx"
  # chat-media's files are mode 0600: nginx's workers need its user
  nginx_user=
  [ "$(id -u)" -ne 0 ] || nginx_user="user root;"
  cat >"$work/nginx/nginx.conf" <<CONF
$nginx_user
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server { listen 127.0.0.1:$nginx_port; root $work/media; }
}
CONF
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
  pids+=($!)
fi

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$gw_port/healthz" 2>/dev/null &&
    curl -fsS -o /dev/null "http://127.0.0.1:$media_port/healthz" 2>/dev/null && break
  sleep 0.1
done

PGDATABASE=$db GW_URL="ws://127.0.0.1:$gw_port/ws" MEDIA_ORIGIN="http://127.0.0.1:$media_port" \
  NGINX_ORIGIN=${nginx_port:+http://127.0.0.1:$nginx_port} MEDIA_DIR="$work/media" \
  SIZE_MB=$SIZE_MB ROUNDS=$ROUNDS node bench/media-bench.mjs
