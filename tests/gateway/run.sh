#!/usr/bin/env bash
# Gateway end-to-end tests: node --test over tests/gateway/*.test.mjs, one
# file at a time, each file starting its own gateway(s) on free ports.
# Under tests/run.sh the cluster's env (PGHOST, PGPORT, CHAT_TOKEN_SECRET_FILE,
# CHAT_TEST_PGDATA, ...) is given; run alone, it starts a throwaway cluster.
# Env: GATEWAY_BIN (default gateway/chat-gateway), GW_LOG_DIR (gateway logs,
# default test-artifacts/gateway/plain), GW_TIMEOUT_SCALE, GW_TESTS (files).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

. tests/lib/cluster.sh
trap cluster_detach EXIT
cluster_attach || { echo "could not start the test cluster"; exit 1; }

export GATEWAY_BIN=${GATEWAY_BIN:-gateway/chat-gateway}
export GW_LOG_DIR=${GW_LOG_DIR:-test-artifacts/gateway/plain}
if [ ! -x "$GATEWAY_BIN" ]; then
  echo "gateway tests: $GATEWAY_BIN is not built" >&2
  exit 1
fi
if [ ! -d node_modules/ws ]; then
  npm ci --no-audit --no-fund --loglevel=error || exit 1
fi
rm -rf "$GW_LOG_DIR"
mkdir -p "$GW_LOG_DIR"

# Run a private copy: a rebuild in the working tree during the run must not
# pull the binary from under a test.
bindir=$(mktemp -d /tmp/chat-gateway-bin.XXXXXX)
cp "$GATEWAY_BIN" "$bindir/" || exit 1
GATEWAY_BIN=$bindir/$(basename "$GATEWAY_BIN")

# shellcheck disable=SC2086
files=${GW_TESTS:-$(ls tests/gateway/*.test.mjs)}
timeout -k 10 600 node --test --test-concurrency=1 --test-timeout="${GW_TEST_TIMEOUT:-120000}" $files
rc=$?
rm -rf "$bindir"

# A sanitizer or crash report anywhere in the gateway logs fails the stage.
if grep -lE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|Undefined|Leak)Sanitizer' "$GW_LOG_DIR"/*.log 2>/dev/null; then
  echo "gateway tests: sanitizer reports in the gateway logs above ($GW_LOG_DIR)" >&2
  grep -hE -A3 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:' "$GW_LOG_DIR"/*.log | head -60 >&2
  rc=1
fi
exit $rc
