#!/usr/bin/env bash
# chat-pusher: the unit tests of its Web Push crypto (RFC 8291 Appendix A,
# VAPID), then node --test over tests/pusher/*.test.mjs against a fake Web
# Push endpoint.  Under tests/run.sh the cluster's env is given; run alone,
# it starts a throwaway cluster.  Env: PUSHER_BIN (default pusher/chat-pusher),
# PUSHER_LOG_DIR (default test-artifacts/pusher).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

make -s -C pusher test ${PG_CONFIG:+PG_CONFIG=$PG_CONFIG} || exit 1

. tests/lib/cluster.sh
trap cluster_detach EXIT
cluster_attach || { echo "could not start the test cluster"; exit 1; }

export PUSHER_BIN=${PUSHER_BIN:-pusher/chat-pusher}
if [ ! -x "$PUSHER_BIN" ]; then
  echo "pusher tests: $PUSHER_BIN is not built" >&2
  exit 1
fi
timeout -k 10 300 node --test --test-concurrency=1 tests/pusher/*.test.mjs
