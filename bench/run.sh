#!/usr/bin/env bash
# The benchmark suite: every scenario against chat-gateway and against the
# node-relay peer, on one throwaway cluster and one database, in one run.
#
#   bench/run.sh quick   the short profile (under 5 minutes)
#   bench/run.sh full    the long one: 100,000 idle, 20,000-client storm, sweeps
#
# Prints the figures side by side with their ratios, writes
# bench/results/<date>.json and the plots bench/results/<date>-*.{png,svg}.
# Monitoring (issue 11): the gateway's /metrics is scraped every second of
# every chat-gateway run (bench/scrape-metrics.cjs) into
# bench/results/<date>-metrics.csv and plotted (bench/metrics-plot.cjs,
# <date>-metrics-*.{png,svg}); a full-length run (BENCH_SECS unset) also
# copies the PNGs to docs/monitoring-*.png (BENCH_DOCS=DIR elsewhere, or
# BENCH_DOCS= for none).
# Environment: BENCH_ONLY="idle direct sendcpu" runs a subset; BENCH_KEEP=1 keeps the
# per-run JSON in bench/results/tmp-<date>/.  BENCH_SECS=N replaces every
# run's duration (chat-load --duration, --restart-at scaled down with it, and
# the pgbench runs of bench/send-cpu.sh) and BENCH_MAX_CLIENTS=N caps every
# --clients: a smoke run of the whole suite, e.g.
#   BENCH_SECS=2 BENCH_MAX_CLIENTS=100 bench/run.sh quick
# (its figures mean nothing; it checks that every part runs and reports).
# BENCH_PG_CONF="name = value" adds settings to the cluster (A/B runs, e.g.
# "autovacuum = off"); BENCH_LOG_MIN_DURATION (ms, default 20) is the
# cluster's log_min_duration_statement.  The cluster's log is kept as
# postgres.log in the kept logs (BENCH_KEEP=1).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
profile=${1:-quick}
case $profile in quick|full) ;; *) echo "usage: bench/run.sh quick|full" >&2; exit 2 ;; esac

. tests/lib/cluster.sh

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
export BENCH_TMP=$top/bench/results/tmp-$stamp
mkdir -p "$BENCH_TMP"
chmod 755 "$BENCH_TMP"

failures=0
cleanup() {
  bench/gw-ctl.sh stop gateway >/dev/null 2>&1 || true
  bench/gw-ctl.sh stop peer >/dev/null 2>&1 || true
  [ -n "${CHAT_TEST_TMP:-}" ] && cp "$CHAT_TEST_TMP/postgres.log" "$BENCH_TMP/postgres.log" 2>/dev/null
  cluster_stop
  if [ -n "${BENCH_KEEP:-}" ] || [ "$failures" -gt 0 ]; then
    echo "bench: logs kept in $BENCH_TMP" >&2
  else
    rm -rf "$BENCH_TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build what we run ----
[ -x gateway/chat-gateway ] || { echo "bench: gateway/chat-gateway is not built (make)" >&2; exit 1; }
make -s -C bench || exit 1
if [ ! -d bench/peers/node-relay/node_modules ]; then
  (cd bench/peers/node-relay && npm ci --no-audit --no-fund --loglevel=error) || exit 1
fi

# ---- the database ----
cluster_start || { echo "bench: could not start the cluster" >&2; exit 1; }
cat >>"$CHAT_TEST_PGDATA/postgresql.conf" <<CONF
max_connections = 400
shared_buffers = 512MB
max_wal_size = 4GB
checkpoint_timeout = 30min
# what the database did, to match a stall second of chat-load's timeline
# (kept as postgres.log beside the runs; bench/RESULTS.md "Where the tail
# comes from")
log_min_messages = warning
log_line_prefix = '%m [%p] %a '
log_checkpoints = on
log_autovacuum_min_duration = 0
log_lock_waits = on
deadlock_timeout = '20ms'
log_min_duration_statement = ${BENCH_LOG_MIN_DURATION:-20}
log_temp_files = 0
${BENCH_PG_CONF:-}
CONF
cluster_ctl restart || exit 1
new_db bench || exit 1
export BENCH_DSN="host=$PGHOST port=$PGPORT dbname=bench user=postgres"
export BENCH_PORT=$(free_port)
ulimit -n 20000 2>/dev/null || true

echo "bench: profile $profile, cluster $PGHOST:$PGPORT, gateway port $BENCH_PORT, results $stamp"

runs=()
metrics_csvs=()
# smoke_args ARGS...: the chat-load arguments with BENCH_SECS and
# BENCH_MAX_CLIENTS applied (one per line, for mapfile).
smoke_args() {
  local prev=
  for a in "$@"; do
    if [ "$prev" = --duration ] && [ -n "${BENCH_SECS:-}" ]; then a=$BENCH_SECS
    elif [ "$prev" = --restart-at ] && [ -n "${BENCH_SECS:-}" ]; then a=$(( BENCH_SECS / 3 > 0 ? BENCH_SECS / 3 : 1 ))
    elif [ "$prev" = --clients ] && [ -n "${BENCH_MAX_CLIENTS:-}" ] && [ "$a" -gt "$BENCH_MAX_CLIENTS" ]; then a=$BENCH_MAX_CLIENTS
    fi
    printf '%s\n' "$a"
    prev=$a
  done
}

# sendcpu SECS: bench/send-cpu.sh on this cluster (its own database): the
# PostgreSQL CPU per send and the rate-limited latency of client_request
# against the hand-written gapless send (the database baselines of the goals).
sendcpu() {
  case " ${BENCH_ONLY:-idle direct group storm sendcpu anatomy} " in *" sendcpu "*) ;; *) return 0 ;; esac
  local secs=${BENCH_SECS:-$1} out=$BENCH_TMP/send-cpu.json
  echo "--- send-cpu: bench/send-cpu.sh, ${secs}s per script" >&2
  if SECS=$secs LAT_SECS=$secs LAT_RATE=1000 CLIENTS=8 SENDCPU_JSON=$out \
       bench/send-cpu.sh >"$BENCH_TMP/send-cpu.out" 2>&1; then
    runs+=("$out")
  else
    failures=$((failures + 1))
    echo "bench: send-cpu.sh failed: $(tail -3 "$BENCH_TMP/send-cpu.out")" >&2
    [ -s "$out" ] && runs+=("$out")
  fi
}

# run KIND WORKERS NAME chat-load-args...: one chat-load run against a fresh gateway.
run() {
  local kind=$1 workers=$2 name=$3; shift 3
  local out=$BENCH_TMP/$name-$kind.json restart=()
  local args
  mapfile -t args < <(smoke_args "$@")
  set -- "${args[@]}"
  case " ${BENCH_ONLY:-idle direct group storm sendcpu anatomy evlib} " in *" ${name%%-*} "*) ;; *) return 0 ;; esac
  export BENCH_WORKERS=$workers
  # chat-load --trace needs the gateway's hop timestamps (--trace-latency 1)
  local gwargs=${BENCH_GATEWAY_ARGS:-}
  if [[ " $* " == *" --trace "* ]]; then gwargs="$gwargs --trace-latency 1"; fi
  # runs named *-ev: chat-gateway on lws's libev event library (--event-lib ev)
  if [[ $name == *-ev ]]; then gwargs="$gwargs --event-lib ev"; fi
  BENCH_GATEWAY_ARGS=$gwargs bench/gw-ctl.sh start "$kind" || { echo "bench: $kind did not start" >&2; return 1; }
  if [[ " $* " == *" storm "* ]]; then restart=(--restart-cmd "$top/bench/gw-ctl.sh restart $kind"); fi
  # monitoring (issue 11): /metrics every second while chat-gateway runs
  local scraper=
  if [ "$kind" = gateway ]; then
    node bench/scrape-metrics.cjs --url "http://127.0.0.1:$BENCH_PORT/metrics" --run "$name" \
      --out "$BENCH_TMP/$name-gateway.metrics.csv" 2>>"$BENCH_TMP/scrape.err" &
    scraper=$!
  fi
  echo "--- $name on $kind (workers $workers): chat-load $*" >&2
  timeout 900 bench/chat-load --dsn "$BENCH_DSN" --url "ws://127.0.0.1:$BENCH_PORT/ws" \
    --token-secret-file "$CHAT_TOKEN_SECRET_FILE" --gateway-pid "$(cat "$BENCH_TMP/$kind.pid")" \
    --pg-pid "$(head -1 "$CHAT_TEST_PGDATA/postmaster.pid")" \
    --label "$kind" "${restart[@]}" --json "$@" >"$out" 2>"$BENCH_TMP/$name-$kind.err"
  local rc=$?
  if [ $rc -ne 0 ]; then
    failures=$((failures + 1))
    echo "bench: chat-load exited $rc for $name on $kind (1: loss or duplicates found; other: failure): $(tail -3 "$BENCH_TMP/$name-$kind.err")" >&2
  fi
  if [ -n "$scraper" ]; then kill -TERM "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null; fi
  [ -n "$scraper" ] && [ -s "$BENCH_TMP/$name-gateway.metrics.csv" ] && metrics_csvs+=("$BENCH_TMP/$name-gateway.metrics.csv")
  cp "$BENCH_TMP/$kind.log" "$BENCH_TMP/$name-$kind.log" 2>/dev/null
  # chat-load's gateway-pid view of the workers is gone after a restart
  bench/gw-ctl.sh stop "$kind"
  if [ -s "$out" ]; then
    node -e 'const f=process.argv[1];const j=JSON.parse(require("fs").readFileSync(f,"utf8"));j.run=process.argv[2];j.workers=+process.argv[3];j.args=process.argv.slice(4).join(" ");require("fs").writeFileSync(f,JSON.stringify(j))' \
      "$out" "$name" "$workers" "$*"
    runs+=("$out")
  fi
  sleep 1
}

# pair NAME WORKERS chat-load-args...: the same run on both gateways.
pair() {
  local name=$1 workers=$2; shift 2
  run gateway "$workers" "$name" "$@"
  run peer 1 "$name" "$@"
}

ips=(--source-ips 127.0.0.1-127.0.0.16)
if [ "$profile" = quick ]; then
  sendcpu 10
  pair idle 0      --scenario idle --clients 5000 --connect-rate 5000 --duration 5 "${ips[@]}"
  pair direct 0    --scenario direct --clients 1000 --rate 2000 --duration 10
  pair direct-1k 0 --scenario direct --clients 400 --rate 1000 --duration 10
  run gateway 0 direct-sat --scenario direct --clients 400 --rate 0 --window 4 --duration 10
  # latency anatomy: the 1,000/s run again with per-hop timestamps
  run gateway 0 anatomy --scenario direct --clients 400 --rate 1000 --duration 10 --trace
  # the poll loop against lws's libev loop (epoll): broadcast to a few
  # thousand sockets; only when asked (BENCH_ONLY="evlib")
  if [[ " ${BENCH_ONLY:-} " == *" evlib "* ]]; then
    for lib in poll ev; do
      run gateway 0 evlib-$lib --scenario group --clients 3000 --group-size 100 --rate 250 --duration 10 "${ips[@]}"
    done
    # closed loop (window 4): where ev once fell behind (docs/gateway.md)
    for lib in poll ev; do
      run gateway 0 evlib-closed-$lib --scenario group --clients 3000 --group-size 100 --rate 0 --window 4 --duration 10 "${ips[@]}"
    done
  fi
  pair group 0     --scenario group --clients 1024 --group-size 64 --devices-per-user 4 --rate 0 --window 8 --duration 10
  pair storm 0     --scenario storm --clients 2000 --rate 200 --duration 8 --restart-at 2 "${ips[@]}"
else
  sendcpu 20
  pair idle-18k 0  --scenario idle --clients 18000 --procs 2 --connect-rate 8000 --duration 15 "${ips[@]}"
  run gateway 6 idle-100k --scenario idle --clients 100000 --procs 6 --connect-rate 10000 --duration 30 "${ips[@]}"
  pair direct 0    --scenario direct --clients 1000 --rate 2000 --duration 30
  pair direct-500 0 --scenario direct --clients 1000 --rate 500 --duration 20
  pair direct-1k 0 --scenario direct --clients 400 --rate 1000 --duration 20
  run gateway 0 direct-sat --scenario direct --clients 400 --rate 0 --window 4 --duration 15
  run gateway 0 anatomy --scenario direct --clients 400 --rate 1000 --duration 20 --trace
  for lib in poll ev; do
    run gateway 0 evlib-$lib --scenario group --clients 10000 --group-size 100 --rate 250 --duration 15 "${ips[@]}"
  done
  pair group-256 0 --scenario group --clients 1024 --group-size 256 --rate 0 --window 8 --duration 15
  for w in 1 4 16; do
    pair group-64x4-w$w 0 --scenario group --clients 1024 --group-size 64 --devices-per-user 4 --rate 0 --window $w --duration 15
  done
  run gateway 2 storm --scenario storm --clients 20000 --procs 2 --connect-rate 8000 --rate 500 --duration 30 --restart-at 10 "${ips[@]}"
  run peer 1 storm --scenario storm --clients 18000 --procs 2 --connect-rate 8000 --rate 500 --duration 30 --restart-at 10 "${ips[@]}"
fi

[ ${#runs[@]} -gt 0 ] || { echo "bench: no run produced figures" >&2; exit 1; }
node bench/report.cjs --profile "$profile" --stamp "$stamp" --out bench/results "${runs[@]}"
report_rc=$?
# the stall seconds of every run against the database's log (kept with BENCH_KEEP=1)
node bench/tail-match.cjs "$CHAT_TEST_TMP/postgres.log" "${runs[@]}" >"$BENCH_TMP/stalls.txt" 2>/dev/null || true
# monitoring (issue 11): the scraped series, plotted (and into docs/ unless a smoke run)
if [ ${#metrics_csvs[@]} -gt 0 ]; then
  docs=${BENCH_DOCS-$([ -z "${BENCH_SECS:-}" ] && echo docs)}
  node bench/metrics-plot.cjs --stamp "$stamp" --out bench/results ${docs:+--docs "$docs"} "${metrics_csvs[@]}" ||
    echo "bench: metrics plots failed" >&2
fi
exit $report_rc
