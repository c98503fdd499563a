#!/usr/bin/env bash
# Fault scenarios under steady load, judged by tests/faults/checker.mjs:
#   selftest            the checker fails on fabricated lost/duplicated records
#   backend-kill        (1) the gateway's backends terminated 5 times
#   pg-crash            (2) the postmaster killed -9 (own cluster, fsync and
#                       synchronous_commit on), crash recovery, restart
#   notifier-overflow   (6) a burst into a 64 kB notifier ring (own cluster)
# and the slower ones (FAULTS=all, as `make faults` runs them):
#   network-partition   (3) the gateway in a network namespace, its link to
#                       the database down for 10 s (own cluster)
#   slow-db             (4) every query 50 ms slower for 10 s (a delaying
#                       TCP proxy, tests/gateway/pg-proxy.mjs)
#   disk-full           (5) chat.messages on a 4 MB tmpfs that fills up
#                       (own cluster)
#   wal-full            (5b) pg_wal on a 48 MB tmpfs that fills up: PANIC,
#                       the server stops; space back, pg_ctl start
#   client-churn        (7) thousands of connects per second for 60 s
#                       (FAULTS_CHURN_SECONDS) from 4 processes: fds and
#                       RSS of the gateway back to the baseline
# Prints a table scenario x (acked, lost, duplicated, recovery).  Bounded
# (each scenario under `timeout`); loopback and namespaces only; every
# cluster, gateway, namespace, veth pair and mount it made is removed on
# exit, failure and signals included.
# Env: FAULTS (scenarios to run, default the quick ones; "all": every one),
# GATEWAY_BIN (e.g. gateway/chat-gateway-asan, with ASAN_OPTIONS as in
# tests/gateway/run-asan.sh).
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
netns=""
mounts=()

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
  netns_teardown
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
  cluster_detach
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_attach || { echo "could not start the test cluster"; exit 1; }

# Scenario 3's network: namespace $netns holding the gateway, one veth pair
# to the database (10.213.0.1 here, .2 there: the one taken down) and one
# for its clients (10.213.1.1 / .2).  Addresses the test owns: refused if
# anything on this machine already uses 10.213.0.0/16.
netns_setup() {
  if ip -o addr show | grep -q ' 10\.213\.'; then
    echo "faults: 10.213.0.0/16 is already in use here; scenario 3 needs it" >&2; return 1
  fi
  netns=pgchat-faults-$$
  link_db=pgfd$$ link_cl=pgfc$$
  ip netns add "$netns" || { netns=""; return 1; }
  ip link add "$link_db" type veth peer name "${link_db}n" &&
  ip link add "$link_cl" type veth peer name "${link_cl}n" &&
  ip link set "${link_db}n" netns "$netns" && ip link set "${link_cl}n" netns "$netns" &&
  ip addr add 10.213.0.1/30 dev "$link_db" && ip addr add 10.213.1.1/30 dev "$link_cl" &&
  ip -n "$netns" addr add 10.213.0.2/30 dev "${link_db}n" && ip -n "$netns" addr add 10.213.1.2/30 dev "${link_cl}n" &&
  ip link set "$link_db" up && ip link set "$link_cl" up &&
  ip -n "$netns" link set "${link_db}n" up && ip -n "$netns" link set "${link_cl}n" up &&
  ip -n "$netns" link set lo up
}

# Removes the namespace (and whatever runs in it) and both veth pairs.
netns_teardown() {
  [ -n "$netns" ] || return 0
  for pid in $(ip netns pids "$netns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  ip netns del "$netns" 2>/dev/null
  ip link del "$link_db" 2>/dev/null
  ip link del "$link_cl" 2>/dev/null
  netns=""
}

# Starts a cluster of its own with extra postgresql.conf lines ($1) and
# pg_hba.conf lines ($2); sets own_dir and own_port.
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
  [ -z "${2:-}" ] || echo "$2" >>"$own_dir/data/pg_hba.conf"
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
  env "$@" timeout -k 5 "${SCENARIO_TIMEOUT:-120}" node tests/faults/scenario.mjs "$name" >"$work/$name.out" 2>&1 &
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
[ "$scenarios" = all ] && scenarios="selftest backend-kill pg-crash notifier-overflow network-partition slow-db disk-full wal-full client-churn"
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
    network-partition)
      netns_setup || { echo "faults: could not set up the network namespace" >&2; failed=$((failed+1)); netns_teardown; continue; }
      own_cluster "listen_addresses = '127.0.0.1,10.213.0.1'" "host all all 10.213.0.0/24 trust" \
        || { failed=$((failed+1)); netns_teardown; continue; }
      scenario network-partition PGHOST="$own_dir" PGPORT="$own_port" CHAT_TEST_PGDATA="$own_dir/data" \
        GATEWAY_BIN=tests/faults/in-netns.sh FAULTS_REAL_GATEWAY="$(realpath "$GATEWAY_BIN")" FAULTS_NETNS="$netns" \
        FAULTS_DB_LINK="$link_db" FAULTS_DB_ADDR=10.213.0.1 FAULTS_GW_ADDR=10.213.1.2
      netns_teardown ;;
    slow-db)
      scenario slow-db ;;
    client-churn)
      SCENARIO_TIMEOUT=150 scenario client-churn ;;
    disk-full)
      mkdir -p "$work/disk" && mount -t tmpfs -o size=4m,mode=755 pgchat-faults "$work/disk" \
        || { echo "faults: could not mount a tmpfs" >&2; failed=$((failed+1)); continue; }
      mounts+=("$work/disk")
      own_cluster "" || { failed=$((failed+1)); continue; }
      scenario disk-full PGHOST="$own_dir" PGPORT="$own_port" CHAT_TEST_PGDATA="$own_dir/data" FAULTS_DISK="$work/disk" ;;
    wal-full)
      mkdir -p "$work/wal" && mount -t tmpfs -o size=48m,mode=755 pgchat-faults-wal "$work/wal" \
        || { echo "faults: could not mount a tmpfs" >&2; failed=$((failed+1)); continue; }
      mounts+=("$work/wal")
      own_cluster "fsync = on
synchronous_commit = on
full_page_writes = on" || { failed=$((failed+1)); continue; }
      # pg_wal moves to the tmpfs (a symlink, as initdb -X makes it).
      as_owner "$PGBIN/pg_ctl" -D "$own_dir/data" -m fast -w stop >/dev/null &&
      mv "$own_dir/data/pg_wal" "$work/wal/pg_wal" && ln -s "$work/wal/pg_wal" "$own_dir/data/pg_wal" &&
      as_owner "$PGBIN/pg_ctl" -D "$own_dir/data" -l "$own_dir/postgres.log" -w -t 60 start >/dev/null \
        || { echo "faults: could not move pg_wal to the tmpfs" >&2; failed=$((failed+1)); continue; }
      scenario wal-full PGHOST="$own_dir" PGPORT="$own_port" CHAT_TEST_PGDATA="$own_dir/data" FAULTS_WAL_DISK="$work/wal" ;;
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
