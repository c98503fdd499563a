#!/usr/bin/env bash
# A/B alternation for latency-tail hypotheses (bench/RESULTS.md, "Where the
# tail comes from"): one throwaway cluster configured like bench/run.sh's,
# then ROUNDS rounds of the same chat-gateway run per variant, the variants
# alternating run by run so that a neighbour's load hits all of them alike.
#
#   bench/tail-ab.sh ROUNDS 'label|gateway args|SQL[|binary[|chat-load args]]' ['label|...' ...]
#
# Before each run of a variant its SQL (may be empty) runs in the bench
# database, e.g. "ALTER SYSTEM SET autovacuum = off; SELECT pg_reload_conf()";
# its gateway args are added to the gateway's command line; its binary (a
# chat-gateway built from another commit) replaces gateway/chat-gateway;
# its chat-load args are added to TAIL_LOAD (e.g. --event-lib poll).  Each run prints
# one line: label, p50/p99/max of the run, then the per-second p99 (ms) of
# chat-load's timeline and the send time of the slowest delivery; at the
# end bench/tail-match.cjs names what the database logged during each
# run's stall seconds.
# Environment: TAIL_LOAD (chat-load arguments, default the direct-1k run:
# "--scenario direct --clients 400 --rate 1000 --duration 10"),
# TAIL_PRE (chat-load arguments of an unmeasured run before each measured
# one, on the same gateway, e.g. "--scenario idle --clients 5000
# --connect-rate 5000 --duration 2": its clients leave as bench/run.sh's
# previous run's do), BENCH_PG_CONF (cluster settings), TAIL_KEEP=DIR keeps every JSON, the
# gateway logs and postgres.log there.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ $# -ge 2 ] || { sed -n 2,18p "$0" >&2; exit 2; }
rounds=$1; shift
load=${TAIL_LOAD:---scenario direct --clients 400 --rate 1000 --duration 10}

. tests/lib/cluster.sh
export BENCH_TMP=${TAIL_KEEP:-$(mktemp -d /tmp/tail-ab.XXXXXX)}
mkdir -p "$BENCH_TMP"; chmod 755 "$BENCH_TMP"
cleanup() {
  bench/gw-ctl.sh stop gateway >/dev/null 2>&1 || true
  [ -n "${CHAT_TEST_TMP:-}" ] && cp "$CHAT_TEST_TMP/postgres.log" "$BENCH_TMP/postgres.log" 2>/dev/null
  cluster_stop
  [ -n "${TAIL_KEEP:-}" ] || rm -rf "$BENCH_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

make -s -C bench || exit 1
cluster_start || exit 1
cat >>"$CHAT_TEST_PGDATA/postgresql.conf" <<CONF
max_connections = 400
shared_buffers = 512MB
max_wal_size = 4GB
checkpoint_timeout = 30min
log_line_prefix = '%m [%p] %a '
log_checkpoints = on
log_autovacuum_min_duration = 0
log_lock_waits = on
deadlock_timeout = '20ms'
log_min_duration_statement = ${BENCH_LOG_MIN_DURATION:-20}
${BENCH_PG_CONF:-}
CONF
cluster_ctl restart || exit 1
new_db bench || exit 1
export BENCH_DSN="host=$PGHOST port=$PGPORT dbname=bench user=postgres"
export BENCH_PORT=$(free_port) BENCH_WORKERS=0
ulimit -n 20000 2>/dev/null || true

for r in $(seq 1 "$rounds"); do
  for v in "$@"; do
    IFS='|' read -r label gwargs sql bin loadargs <<<"$v"
    # statement by statement (ALTER SYSTEM refuses a transaction block)
    [ -n "$sql" ] && printf "%s\n" "$sql" | "$PGBIN/psql" -qXAt -v ON_ERROR_STOP=1 -d bench -f - >/dev/null
    out=$BENCH_TMP/r$r-$label.json
    BENCH_GATEWAY_BIN=${bin:-$top/gateway/chat-gateway} BENCH_GATEWAY_ARGS=$gwargs \
      bench/gw-ctl.sh start gateway || exit 1
    # shellcheck disable=SC2086
    if [ -n "${TAIL_PRE:-}" ]; then
      bench/chat-load --dsn "$BENCH_DSN" --url "ws://127.0.0.1:$BENCH_PORT/ws" \
        --token-secret-file "$CHAT_TOKEN_SECRET_FILE" --label pre --json $TAIL_PRE \
        --source-ips 127.0.0.1-127.0.0.16 >/dev/null 2>"$BENCH_TMP/r$r-$label-pre.err"
    fi
    # shellcheck disable=SC2086
    bench/chat-load --dsn "$BENCH_DSN" --url "ws://127.0.0.1:$BENCH_PORT/ws" \
      --token-secret-file "$CHAT_TOKEN_SECRET_FILE" --gateway-pid "$(cat "$BENCH_TMP/gateway.pid")" \
      --pg-pid "$(head -1 "$CHAT_TEST_PGDATA/postmaster.pid")" --label "$label" --json $load ${loadargs:-} \
      >"$out" 2>"$BENCH_TMP/r$r-$label.err"
    bench/gw-ctl.sh stop gateway
    cp "$BENCH_TMP/gateway.log" "$BENCH_TMP/r$r-$label.log" 2>/dev/null; : >"$BENCH_TMP/gateway.log"
    node -e '
      const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const l = j.latency_ms, s = (j.timeline && j.timeline.seconds) || [];
      const w = (j.worst || [])[0];
      console.log(`${process.argv[2].padEnd(12)} r${process.argv[3]}  p50 ${l.p50.toFixed(2)} p99 ${l.p99.toFixed(1)} max ${l.max.toFixed(1)}  cpu pg ${j.cpu_pct.postgres.toFixed(0)} gw ${j.cpu_pct.gateway.toFixed(0)} machine ${j.cpu_pct.machine.toFixed(0)}  per-s p99: ${s.map(x => x.p99_ms.toFixed(0)).join(" ")}` +
        (w ? `  worst ${w.latency_ms.toFixed(0)} ms sent ${w.sent}` : ""));' "$out" "$label" "$r" \
      || { echo "$label r$r: no result: $(tail -2 "$BENCH_TMP/r$r-$label.err")"; }
  done
done

# every run's stall seconds against what the database logged meanwhile
echo "--- stall seconds against postgres.log (bench/tail-match.cjs)"
node bench/tail-match.cjs "$CHAT_TEST_TMP/postgres.log" "$BENCH_TMP"/r*-*.json
