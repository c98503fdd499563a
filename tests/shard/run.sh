#!/usr/bin/env bash
# Sharded stage (docs/scaling.md): the chat_proxy routing table covers every
# chat function (and the check can fail), then 2 clusters x 4 partitions +
# the proxy database (tests/shard/lib.sh) under tests/shard/shard.test.mjs:
# distribution, sync and chat-list merge, client_request routing, two
# gateways, a partition cluster restart.  Starts its own clusters; bounded.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/lib/cluster.sh
. tests/shard/lib.sh

ver=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" chat.control)
script=extension/chat--$ver.sql
[ -f "$script" ] || { echo "shard: $script is not built" >&2; exit 1; }

# 1. Every chat.* function has a routing rule ...
python3 proxy/gen-proxy.py --check "$script" proxy/routing.conf proxy/custom.sql || exit 1
# ... and the check fails for one that has none.
tmp=$(mktemp -d /tmp/pgchat-shard.XXXXXX)
chmod 755 "$tmp"
trap 'rm -rf "$tmp"; shard_stop' EXIT
{ cat "$script"; printf '\nCREATE FUNCTION chat.unrouted_probe(x bigint)\nRETURNS void LANGUAGE sql AS $$ SELECT $$;\n'; } > "$tmp/chat.sql"
if python3 proxy/gen-proxy.py --check "$tmp/chat.sql" proxy/routing.conf proxy/custom.sql >"$tmp/out" 2>&1; then
  echo "shard: gen-proxy --check passed a function without a routing rule" >&2; exit 1
fi
grep -q 'chat.unrouted_probe(x bigint) has no routing rule' "$tmp/out" || { cat "$tmp/out"; exit 1; }
echo "routing table: every chat function has a rule; a missing rule fails the check"

# 2. The deployment.  The token secret is the harness's when there is one.
SHARD_DIR=$tmp/deploy
mkdir -p "$SHARD_DIR"
shard_start || { echo "shard: could not start the partitions" >&2; exit 1; }
export PGHOST=$SHARD_DIR/a PGPORT=$SHARD_PORT_A PGUSER=postgres PGDATABASE=proxy
# The gateways of the test run the ASan + UBSan build (the sharded code
# paths of db.c run nowhere else); lib.mjs fails on any sanitizer line.
if [ -z "${GATEWAY_BIN:-}" ]; then
  make -s -C gateway asan ${PG_CONFIG:+PG_CONFIG=$PG_CONFIG} || exit 1
  export GATEWAY_BIN=gateway/chat-gateway-asan GW_TIMEOUT_SCALE=${GW_TIMEOUT_SCALE:-2}
  export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=0:detect_leaks=1:exitcode=86}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:exitcode=87}
fi
export GW_LOG_DIR=${GW_LOG_DIR:-test-artifacts/gateway/shard}
rm -rf "$GW_LOG_DIR"; mkdir -p "$GW_LOG_DIR"
timeout -k 10 300 node --test --test-concurrency=1 --test-timeout=180000 tests/shard/shard.test.mjs
rc=$?
[ $rc -eq 0 ] || exit $rc

# 3. make demo-sharded's stack (two gateways behind HAProxy, /healthz checks)
#    comes up and serves a client on conversations of every partition.
shard_stop
DEMO_SMOKE=1 timeout -k 10 120 scripts/demo-sharded.sh
