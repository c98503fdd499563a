#!/usr/bin/env bash
# Runs every test stage against a throwaway cluster; always tears it down.
# Each stage is a command; a stage whose script is missing fails (a stage
# that silently does not run would pass CI while testing nothing).
# Exit status is non-zero when any stage fails.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

trap cluster_stop EXIT
trap 'exit 130' INT TERM
cluster_start || { echo "could not start the test cluster"; exit 1; }
echo "test cluster: $PGHOST port $PGPORT"
mkdir -p test-artifacts

passed=0 failed=0 failures=()
stage() {
  local name=$1; shift
  echo; echo "=== $name"
  if "$@"; then passed=$((passed+1)); echo "--- $name: ok"
  else failed=$((failed+1)); failures+=("$name"); echo "--- $name: FAILED"; fi
}
missing() { echo "stage script $1 is missing or not executable" >&2; return 1; }
script_stage() {  # script_stage NAME SCRIPT args...: a missing SCRIPT fails the stage
  local name=$1 script=$2; shift 2
  if [ -x "$script" ]; then stage "$name" "$script" "$@"; else stage "$name" missing "$script"; fi
}

regress() {
  make -s installcheck PGUSER="$PGUSER" ${PG_CONFIG:+PG_CONFIG=$PG_CONFIG} || { cat regression.diffs 2>/dev/null | head -200; return 1; }
}
pgtap() {
  new_db chat_tap tap || return 1
  command -v pg_prove >/dev/null || { echo "pg_prove is not installed (libtap-parser-sourcehandler-pgtap-perl)" >&2; return 1; }
  pg_prove -d chat_tap --ext .sql -r tests/pgtap
}

stage "pg_regress" regress
stage "pgTAP" pgtap
script_stage "concurrency" tests/concurrency/run.sh
script_stage "dump round trip" tests/dump/run.sh
script_stage "upgrade path" tests/upgrade/run.sh
script_stage "loaded late (not preloaded)" tests/preload/run.sh
script_stage "realtime notifications" tests/realtime/run.sh
script_stage "gateway end-to-end" tests/gateway/run.sh
script_stage "gateway under ASan+UBSan" tests/gateway/run-asan.sh
script_stage "push delivery (chat-pusher)" tests/pusher/run.sh
script_stage "fuzz" tests/fuzz/run.sh
script_stage "sharded (PL/Proxy)" tests/shard/run.sh
script_stage "faults (quick)" tests/faults/run.sh
script_stage "web client unit" tests/web/run.sh
script_stage "bench goals table" tests/bench/run.sh
script_stage "browser" tests/browser/run.sh

echo
echo "stages: $passed passed, $failed failed${failures:+ (${failures[*]})}"
[ "$failed" -eq 0 ]
