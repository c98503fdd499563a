#!/usr/bin/env bash
# Fault scenarios under steady load, judged by tests/faults/checker.mjs:
#   selftest            the checker fails on fabricated lost/duplicated records
#   backend-kill        (1) the gateway's backends terminated 5 times
#   pg-crash            (2) the postmaster killed -9 (own cluster, fsync and
#                       synchronous_commit on), crash recovery, restart
#   notifier-overflow   (6) a burst into a 64 kB notifier ring (own cluster)
# Prints a table scenario x (acked, lost, duplicated, recovery).  Bounded
# (each scenario under `timeout`); loopback only; every cluster and gateway
# it started is stopped on exit, failure included.
# Env: FAULTS (scenarios to run, default all quick ones), GATEWAY_BIN (e.g.
# gateway/chat-gateway-asan, with ASAN_OPTIONS as in tests/gateway/run-asan.sh).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/lib/cluster.sh

export GATEWAY_BIN=${GATEWAY_BIN:-gateway/chat-gateway}
export GW_LOG_DIR=${GW_LOG_DIR:-test-artifacts/faults}
[ -x "$GATEWAY_BIN" ] || { echo "faults: $GATEWAY_BIN is not built" >&2; exit 1; }
[ -d node_modules/ws ] || npm ci --no-audit --no-fund --loglevel=error || exit 1
rm -rf "$GW_LOG_DIR"; mkdir -p "$GW_LOG_DIR"

work=$(mktemp -d /tmp/pgchat-faults.XXXXXX)
chmod 755 "$work"
export FAULTS_PIDFILE=$work/gateway.pids
own_clusters=()

# Stops every gateway a scenario left behind, every own cluster, the harness
# cluster if this script started it.
cleanup() {
  trap '' INT TERM    # a second signal must not cut the cleanup short
  if [ -n "${scenario_pid:-}" ]; then kill "$scenario_pid" 2>/dev/null; wait "$scenario_pid" 2>/dev/null; fi
  if [ -f "$FAULTS_PIDFILE" ]; then
    while read -r pid; do [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; done <"$FAULTS_PIDFILE"
  fi
  for d in "${own_clusters[@]}"; do
    as_owner "$PGBIN/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$d"
  done
  rm -rf "$work"
  cluster_detach
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_attach || { echo "could not start the test cluster"; exit 1; }

# Starts a cluster of its own with extra postgresql.conf lines ($1);
# sets own_dir and own_port.
own_cluster() {
  own_dir=$(mktemp -d /tmp/pgchat-fault-pg.XXXXXX)
  chmod 755 "$own_dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$own_dir"
  own_clusters+=("$own_dir")
  own_port=$(free_port) || return 1
  cluster_init "$own_dir" "$own_port" || return 1
  cat >>"$own_dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'chat'
max_connections = 100
chat.token_secret = '$(cat "$CHAT_TOKEN_SECRET_FILE")'
log_min_messages = warning
$1
CONF
  as_owner "$PGBIN/pg_ctl" -D "$own_dir/data" -l "$own_dir/postgres.log" -w -t 60 start >/dev/null \
    || { tail -20 "$own_dir/postgres.log"; return 1; }
}

results=$work/results
: >"$results"
failed=0
# Runs one scenario (node, bounded) with env overrides ($2...); records its RESULT line.
scenario() {
  local name=$1; shift
  echo "--- $name"
  # In the background: `wait` returns at once on a signal, so the EXIT
  # trap cleans up without waiting for the scenario's own timeout.
  env "$@" timeout -k 5 120 node tests/faults/scenario.mjs "$name" >"$work/$name.out" 2>&1 &
  scenario_pid=$!
  wait "$scenario_pid"
  local rc=$?
  scenario_pid=""
  grep -v '^RESULT ' "$work/$name.out" | tail -20
  if grep -q '^RESULT ' "$work/$name.out"; then grep '^RESULT ' "$work/$name.out" | sed 's/^RESULT //' >>"$results"
  else echo "{\"scenario\":\"$name\",\"pass\":false,\"error\":\"no result (exit $rc)\"}" >>"$results"; fi
  [ "$rc" -eq 0 ] || { failed=$((failed+1)); echo "--- $name: FAILED (exit $rc)"; grep '^RESULT ' "$work/$name.out" | cut -c1-3000; }
}

export PSQL=$PGBIN/psql
scenarios=${FAULTS:-selftest backend-kill pg-crash notifier-overflow}
for s in $scenarios; do
  case $s in
    selftest)
      echo "--- checker self-test"
      timeout -k 5 60 node --test tests/faults/selftest.test.mjs >"$work/selftest.out" 2>&1 \
        || { cat "$work/selftest.out"; failed=$((failed+1)); echo "--- selftest: FAILED"; } ;;
    backend-kill)
      scenario backend-kill ;;
    pg-crash)
      own_cluster "fsync = on
synchronous_commit = on
full_page_writes = on" || { failed=$((failed+1)); continue; }
      scenario pg-crash PGHOST="$own_dir" PGPORT="$own_port" CHAT_TEST_PGDATA="$own_dir/data" ;;
    notifier-overflow)
      own_cluster "chat.notifier_queue_size = '64kB'
chat.notifier_delay = 500" || { failed=$((failed+1)); continue; }
      scenario notifier-overflow PGHOST="$own_dir" PGPORT="$own_port" CHAT_TEST_PGDATA="$own_dir/data" ;;
    *) echo "unknown scenario $s" >&2; failed=$((failed+1)) ;;
  esac
done

# A sanitizer report in any gateway log fails the run (GATEWAY_BIN may be
# the ASan + UBSan build: make -C gateway asan).
if grep -lE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: (Address|Undefined|Leak)Sanitizer' "$GW_LOG_DIR"/*.log 2>/dev/null; then
  grep -hE -A3 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:' "$GW_LOG_DIR"/*.log | head -60 >&2
  echo "faults: sanitizer reports in the gateway logs above ($GW_LOG_DIR)" >&2
  failed=$((failed+1))
fi

echo
node -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
const row = (c) => "| " + c.join(" | ") + " |";
console.log(row(["scenario", "acked", "lost", "duplicated (view/table)", "unseen", "recovery (bound)", "verdict"]));
console.log(row(["---", "---:", "---:", "---:", "---:", "---:", "---"]));
for (const r of lines) console.log(row([r.scenario, r.acked ?? "-", r.lost ?? "-", r.dupView === undefined ? "-" : `${r.dupView}/${r.dupTable}`,
  r.unseen ?? "-", r.recovery_ms == null ? `none (${r.bound_ms ?? "-"} ms)` : `${r.recovery_ms} ms (${r.bound_ms} ms)`, r.pass ? "pass" : "FAIL"]));
for (const r of lines) console.log(`${r.scenario}: ${r.detail ?? ""}; error frames to sends ${JSON.stringify(r.errors ?? {})}, retries ${r.retries ?? "-"}, gap repairs ${r.gap_repairs ?? "-"}, slowest send (first try to ok) ${r.max_send_ms ?? "-"} ms${r.error ? "; " + r.error.split("\n")[0] : ""}`);
' "$results"
echo "faults: $failed failed"
[ "$failed" -eq 0 ]
