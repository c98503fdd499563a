#!/usr/bin/env bash
# Runs every test stage against a throwaway cluster; always tears it down.
# Each stage is a command; a stage whose script does not exist yet is skipped.
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
stage_if() {  # stage_if NAME SCRIPT args...: runs SCRIPT when it exists
  local name=$1 script=$2; shift 2
  if [ -x "$script" ]; then stage "$name" "$script" "$@"; else echo "=== $name: not present, skipped"; fi
}

regress() {
  make -s installcheck PGUSER="$PGUSER" || { cat regression.diffs 2>/dev/null | head -200; return 1; }
}
pgtap() {
  new_db chat_tap tap || return 1
  pg_prove -d chat_tap --ext .sql -r tests/pgtap
}

stage "pg_regress" regress
stage "pgTAP" pgtap
stage_if "concurrency" tests/concurrency/run.sh
stage_if "dump round trip" tests/dump/run.sh
stage_if "realtime notifications" tests/realtime/run.sh
stage_if "gateway end-to-end" tests/gateway/run.sh
stage_if "gateway under ASan+UBSan" tests/gateway/run-asan.sh
stage_if "web client unit" tests/web/run.sh
stage_if "browser" tests/browser/run.sh

echo
echo "stages: $passed passed, $failed failed${failures:+ (${failures[*]})}"
[ "$failed" -eq 0 ]
