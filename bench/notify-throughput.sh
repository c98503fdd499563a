#!/usr/bin/env bash
# Send throughput with fanout NOTIFY against the same run without it.
#
#   bench/notify-throughput.sh      # 1, 8, 32 clients, 10 s per run, 3 rounds
#   SECS=8 ROUNDS=2 CLIENTS="32" MODES="off worker" bench/notify-throughput.sh
#
# A throwaway cluster with fsync and synchronous_commit on; 256 direct
# conversations whose 512 members are all online on node "bench", drained
# by one listener (bench/notify_probe.c).  pgbench clients call
# chat.send_message on random conversations.  Per client count, the modes
# of chat.fanout_mode run back to back:
#
#   off     fanout computes recipients and pushes, sends no NOTIFY (baseline)
#   direct  each sending transaction NOTIFYs (takes the NOTIFY commit lock)
#   worker  senders hand the events to the notifier worker, which NOTIFYs
#           after commit in batches
#
# At the highest client count a probe also sends 100 messages/s and
# reports commit-to-listener latency p50/p99.  Prints TPS and the ratio to
# the "off" baseline of the same run.  The modes are interleaved and each
# point is the median of ROUNDS runs: the machine is shared and noisy.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

SECS=${SECS:-10}
CLIENTS=${CLIENTS:-"1 8 32"}
MODES=${MODES:-"off direct worker"}
ROUNDS=${ROUNDS:-3}
CONVS=256

trap cluster_stop EXIT
cluster_start >/dev/null
psql -qX -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" \
     -c "ALTER SYSTEM SET full_page_writes = on" >/dev/null
cluster_ctl restart
work=$CHAT_TEST_TMP
gcc -Wall -Wextra -Werror -O2 -o "$work/notify_probe" bench/notify_probe.c \
    -I"$(${PG_CONFIG:-pg_config} --includedir)" -L"$(${PG_CONFIG:-pg_config} --libdir)" -lpq -lpthread

new_db bench
psql -qX -d bench -v ON_ERROR_STOP=1 >/dev/null <<SQL
SELECT chat.upsert_user(i, 'u' || i) FROM generate_series(1, 2 * $CONVS) i;
SELECT chat.upsert_user(i, 'probe' || i) FROM generate_series(9001, 9002) i;
SELECT chat.register_device(i) FROM generate_series(1, 2 * $CONVS) i;
SELECT chat.register_device(i) FROM generate_series(9001, 9002) i;
SELECT chat.direct_conversation(2 * c - 1, 2 * c) FROM generate_series(1, $CONVS) c ORDER BY c;
SELECT chat.direct_conversation(9001, 9002);
SELECT chat.node_reset('bench');
SELECT chat.connect('bench', i, 1) FROM generate_series(1, 2 * $CONVS) i;
SELECT chat.connect('bench', i, 1) FROM generate_series(9001, 9002) i;
SQL
# conversation c is users 2c-1 and 2c
bad=$(psql -qXAt -d bench -c "SELECT count(*) FROM chat.conversations WHERE kind = 'direct' AND id <= $CONVS AND (direct_low, direct_high) <> (2 * id - 1, 2 * id)")
[ "$bad" = 0 ] || { echo "unexpected conversation ids"; exit 1; }
probe_conv=$((CONVS + 1))

cat >"$work/send.pgbench" <<'PGB'
\set c random(1, 256)
SELECT chat.send_message(2 * :c - 1, :c, 'bench message');
PGB

max_clients=$(echo $CLIENTS | tr ' ' '\n' | sort -n | tail -1)
# CPU ticks used so far by the server: live processes of the cluster plus
# the reaped ones (the postmaster's cutime/cstime).  Differences over a run
# give server CPU per send, which the machine's other load disturbs less
# than TPS does.
cpu_ticks() {
  local pm t=0 p
  pm=$(head -1 "$CHAT_TEST_PGDATA/postmaster.pid")
  for p in $pm $(ps -o pid= --ppid "$pm"); do
    [ -r /proc/$p/stat ] || continue
    t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0)))
  done
  echo $((t + $(awk '{print $16 + $17}' /proc/$pm/stat)))
}
hz=$(getconf CLK_TCK)

# run_point CLIENTS MODE: one pgbench run with the listener; prints "tps|listener line"
run_point() {
  local c=$1 mode=$2 probe tps
  export PGOPTIONS="-c chat.fanout_mode=$mode -c synchronous_commit=on"
  psql -qX -d bench -c "CHECKPOINT" >/dev/null
  if [ "$c" = "$max_clients" ]; then
    "$work/notify_probe" bench bench $((SECS + 1)) $probe_conv 9001 >"$work/probe.out" &
  else
    "$work/notify_probe" bench bench $((SECS + 1)) >"$work/probe.out" &
  fi
  probe=$!
  sleep 0.5
  t0=$(cpu_ticks)
  pgbench -n -f "$work/send.pgbench" -c "$c" -j "$(( c < 4 ? c : 4 ))" -T "$SECS" bench >"$work/pgbench.out" 2>/dev/null
  t1=$(cpu_ticks)
  tps=$(awk '/^tps = / {printf "%.0f", $3}' "$work/pgbench.out")
  sends=$(awk '/number of transactions actually processed/ {print $NF}' "$work/pgbench.out" | cut -d/ -f1)
  wait $probe
  unset PGOPTIONS
  cpu=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$sends" 'BEGIN { printf "%.0f", (n > 0 ? t * 1e6 / hz / n : 0) }')
  echo "$tps $cpu|$(cat "$work/probe.out")"
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print (NR ? v[int((NR+1)/2)] : 0)}'; }

echo "raw runs (modes interleaved, $SECS s each, $ROUNDS rounds):"
printf '%-8s %-6s %-7s %8s %12s  %s\n' clients round mode tps cpu_us/send listener
declare -A runs cpus
for c in $CLIENTS; do
  for r in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
      out=$(run_point "$c" "$mode")
      set -- ${out%%|*}
      runs[$c,$mode]="${runs[$c,$mode]:-} $1"
      cpus[$c,$mode]="${cpus[$c,$mode]:-} $2"
      printf '%-8s %-6s %-7s %8s %12s  %s\n' "$c" "$r" "$mode" "$1" "$2" "${out#*|}"
    done
  done
done
echo
# ratio_table ARRAY AWK_RATIO: per client count, the median of ARRAY[c,mode]
# for each mode with AWK_RATIO (of a = mode's median, b = off's median).
ratio_table() {
  local -n values=$1
  local c mode base m
  printf '%-8s' clients; for mode in $MODES; do printf ' %16s' "$mode"; done; echo
  for c in $CLIENTS; do
    base=$(echo ${values[$c,off]:-0} | median)
    printf '%-8s' "$c"
    for mode in $MODES; do
      m=$(echo ${values[$c,$mode]} | median)
      printf ' %16s' "$m ($(awk -v a="$m" -v b="$base" "BEGIN { printf \"%.2fx\", $2 }"))"
    done
    echo
  done
}
echo "median TPS per mode, ratio to the median of \"off\" (no NOTIFY) at the same client count:"
ratio_table runs '(b > 0 ? a / b : 0)'
echo
echo "median server CPU per send (microseconds), ratio off/mode (what TPS would be on an idle, CPU-bound machine):"
ratio_table cpus '(a > 0 ? b / a : 0)'
