#!/usr/bin/env bash
# What PL/Proxy costs (docs/scaling.md): on one throwaway sharded deployment
# (tests/shard/lib.sh: 2 clusters, 4 partitions, the proxy database), in
# the same run,
#   - latency per call, p50/p99, of chat.send_message and chat.history
#     called directly on partition 0 and through the proxy (same partition);
#   - sends/s of one partition (pgbench, SHARD_BENCH_CLIENTS clients) and
#     the machine's CPU time per send during that run.
# Prints a table and writes bench/results/shard-<date>.json.  This machine
# cannot show a real speed-up (every partition shares its cores); the
# scaling model in docs/scaling.md projects from these per-call figures.
#
# Environment: SHARD_BENCH_CALLS (calls per latency series, default 2000),
# SHARD_BENCH_SECONDS (throughput run, default 10), SHARD_BENCH_CLIENTS
# (default 4).  Smoke run: SHARD_BENCH_CALLS=50 SHARD_BENCH_SECONDS=2.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh
. tests/shard/lib.sh

calls=${SHARD_BENCH_CALLS:-2000}
seconds=${SHARD_BENCH_SECONDS:-10}
clients=${SHARD_BENCH_CLIENTS:-4}
work=$(mktemp -d /tmp/pgchat-shard-bench.XXXXXX)
chmod 755 "$work"
trap 'shard_stop; rm -rf "$work"' EXIT
SHARD_DIR=$work/deploy
mkdir -p "$SHARD_DIR"
shard_start >/dev/null || { echo "shard-latency: could not start the partitions" >&2; exit 1; }

proxy() { shard_psql a proxy "$@"; }
proxy >/dev/null -c "SELECT chat.upsert_user(u, 'b' || u) FROM generate_series(1, 2) u" \
                 -c "SELECT chat.register_device(u) FROM generate_series(1, 2) u"
# a group on partition 0 (round robin until one lands there)
conv=
for _ in 1 2 3 4 5 6 7 8; do
  c=$(proxy -c "SELECT chat.create_group(1, 'bench', '{2}')")
  if [ $((c % SHARD_PARTS)) -eq 0 ]; then conv=$c; break; fi
done
[ -n "$conv" ] || { echo "shard-latency: no group on partition 0" >&2; exit 1; }

cat > "$work/send.sql" <<SQL
SELECT * FROM chat.send_message(1, $conv, 'bench message body of a typical length, about sixty bytes');
SQL
cat > "$work/history.sql" <<SQL
SELECT count(*) FROM chat.history(2, $conv, NULL, 20);
SQL

# Runs pgbench on one database; prints p50 and p99 latency in ms.
# series NAME DB-DSN SCRIPT
series() {
  local name=$1 dsn=$2 script=$3
  ( cd "$work" && "$PGBIN/pgbench" -n -c 1 -t "$calls" -f "$script" -l --log-prefix="$name" "$dsn" >/dev/null 2>&1 ) \
    || { echo "shard-latency: pgbench $name failed" >&2; exit 1; }
  cat "$work/$name".* | awk '{print $3}' | sort -n | awk -v n="$name" '
    { v[NR] = $1 } END { p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]; p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
      printf "%s %.3f %.3f %d\n", n, p50 / 1000, p99 / 1000, NR }'
}

# The machine's busy CPU time in seconds (every core, from /proc/stat).
busy_cpu() { awk '/^cpu / { print ($2 + $3 + $4 + $7 + $8) / 100 }' /proc/stat; }

{
  series send_direct "$SHARD_PART_DSN_0" send.sql
  series send_proxy "$SHARD_PROXY_DSN" send.sql
  series history_direct "$SHARD_PART_DSN_0" history.sql
  series history_proxy "$SHARD_PROXY_DSN" history.sql
} > "$work/latency.txt"

cpu0=$(busy_cpu)
tps=$(cd "$work" && "$PGBIN/pgbench" -n -c "$clients" -j "$clients" -T "$seconds" -f send.sql "$SHARD_PART_DSN_0" 2>/dev/null \
      | awk '/^tps/ { print $3; exit }')
cpu1=$(busy_cpu)
sends=$(shard_psql a part0 -c "SELECT last_seq FROM chat.conversations WHERE id = $conv")

printf '%-16s %9s %9s %7s\n' series p50_ms p99_ms calls
awk '{ printf "%-16s %9.3f %9.3f %7d\n", $1, $2, $3, $4 }' "$work/latency.txt"
awk '
  { p50[$1] = $2; p99[$1] = $3 }
  END { printf "proxy adds: send p50 %+.3f ms, p99 %+.3f ms; history p50 %+.3f ms, p99 %+.3f ms\n",
        p50["send_proxy"] - p50["send_direct"], p99["send_proxy"] - p99["send_direct"],
        p50["history_proxy"] - p50["history_direct"], p99["history_proxy"] - p99["history_direct"] }' "$work/latency.txt"
cpu_ms=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$tps" -v s="$seconds" 'BEGIN { n = t * s; if (n > 0) printf "%.3f", (b - a) * 1000 / n; else print "nan" }')
echo "one partition: $tps sends/s with $clients clients for $seconds s; machine CPU per send: $cpu_ms ms (stored last_seq $sends)"

mkdir -p bench/results
out=bench/results/shard-$(date -u +%Y-%m-%dT%H%M%SZ).json
awk -v tps="$tps" -v cpu="$cpu_ms" -v calls="$calls" -v clients="$clients" -v secs="$seconds" '
  BEGIN { printf "{\"calls\": %d, \"series\": {", calls }
  { printf "%s\"%s\": {\"p50_ms\": %s, \"p99_ms\": %s}", (NR > 1 ? ", " : ""), $1, $2, $3 }
  END { printf "}, \"partition_sends_per_s\": %s, \"clients\": %d, \"seconds\": %d, \"cpu_ms_per_send\": %s}\n", tps, clients, secs, cpu }' \
  "$work/latency.txt" > "$out"
echo "written: $out"
