#!/usr/bin/env bash
# Installs the Debian and npm packages pgchat needs; does nothing when they are present.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  make gcc pkg-config python3                # python3: proxy/gen-proxy.py (chat_proxy)
  postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap libpq-dev
  libtap-parser-sourcehandler-pgtap-perl   # pg_prove: only a Recommends of postgresql-15-pgtap
  libwebsockets-dev libjansson-dev libssl-dev
  libev-dev libwebsockets-evlib-ev         # chat-gateway --event-lib ev
  libcurl4-openssl-dev                     # chat-pusher: HTTP/2 client (libnghttp2)
  libmagic-dev libvips-dev                 # chat-media: content checks, thumbnails
  nginx-light                              # bench/media.sh: the baseline file server
  nodejs npm chromium gnuplot-nox
  libclang-rt-14-dev clang
  postgresql-15-plproxy haproxy            # sharded deployment: chat_proxy, make demo-sharded
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# A machine may have Node.js from elsewhere; only install Debian's when there is none.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<<"${missing[*]}"

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# JavaScript test tooling (ws, playwright-core, web-push) and the web client's
# crypto (@noble, esbuild to bundle it), pinned by package-lock.json.
if [ -f package-lock.json ] && { [ ! -d node_modules ] || [ ! -d node_modules/@noble/curves ] || [ ! -d node_modules/web-push ]; }; then
  npm ci --no-audit --no-fund --loglevel=error
fi
