#!/usr/bin/env bash
# chat-pusher: the unit tests of its Web Push crypto (RFC 8291 Appendix A,
# VAPID), then node --test over tests/pusher/*.test.mjs against a fake Web
# Push endpoint, with the pusher built under ASan+UBSan (a sanitizer report
# in its logs fails the stage).  Under tests/run.sh the cluster's env is
# given; run alone, it starts a throwaway cluster.  Env: PUSHER_BIN (default
# pusher/chat-pusher-asan), PUSHER_LOG_DIR (default test-artifacts/pusher).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

make -s -C pusher test asan ${PG_CONFIG:+PG_CONFIG=$PG_CONFIG} || exit 1

. tests/lib/cluster.sh
trap cluster_detach EXIT
cluster_attach || { echo "could not start the test cluster"; exit 1; }

export PUSHER_BIN=${PUSHER_BIN:-pusher/chat-pusher-asan}
export PUSHER_LOG_DIR=${PUSHER_LOG_DIR:-test-artifacts/pusher}
if [ ! -x "$PUSHER_BIN" ]; then
  echo "pusher tests: $PUSHER_BIN is not built" >&2
  exit 1
fi
rm -rf "$PUSHER_LOG_DIR"
timeout -k 10 300 node --test --test-concurrency=1 tests/pusher/*.test.mjs
rc=$?
if grep -lE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|Undefined|Leak)Sanitizer' "$PUSHER_LOG_DIR"/*.log 2>/dev/null; then
  echo "pusher tests: sanitizer reports in the pusher logs above" >&2
  grep -hE -A5 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:' "$PUSHER_LOG_DIR"/*.log | head -60 >&2
  rc=1
fi
exit $rc
