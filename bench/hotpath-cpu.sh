#!/usr/bin/env bash
# PostgreSQL CPU per call of the hot-path helpers that are not a send:
# chat.typing (membership, blocks, audience, rate limit, fanout) and
# chat.fanout_receipt (senders of a range, the reader's read_receipts,
# fanout), each with its peer online on a node so every call is routed.
# With OLD_SO=<a chat.so built from an older tree> the two builds are run
# round by round in the same cluster (the library is swapped while the
# cluster is stopped, then restarted: it is preloaded), so the ratio
# new/old is measured under the same neighbours' load.
#
#   bench/hotpath-cpu.sh                              # this build only
#   OLD_SO=/tmp/old/chat.so SECS=5 ROUNDS=2 bench/hotpath-cpu.sh
#
# The SQL of both builds must be the same (only C changed).  CPU is that of
# the whole cluster, read from /proc as in bench/send-cpu.sh.  The installed
# chat.so is put back whatever happens.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

SECS=${SECS:-10}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-4}
CONVS=200
HZ=$(getconf CLK_TCK)
# The library is swapped in place: only ever in a private installation
# (PG_CONFIG given explicitly, not under /usr), never the system's.
[ -n "${PG_CONFIG:-}" ] || { echo "hotpath-cpu.sh: set PG_CONFIG to a private installation's pg_config" >&2; exit 2; }
lib=$("$PG_CONFIG" --pkglibdir)/chat.so
case $lib in /usr/*) echo "hotpath-cpu.sh: refusing to swap the system's $lib" >&2; exit 2 ;; esac
builds="new"
work=$(mktemp -d /tmp/chat-hotpath.XXXXXX)
chmod 755 "$work"
cp "$lib" "$work/new.so"
if [ -n "${OLD_SO:-}" ]; then cp "$OLD_SO" "$work/old.so"; builds="old new"; fi
# Puts a build in place; the cluster must be stopped (the file is renamed
# over the installed one, never written in place: running backends map it).
use_build() {
  cp "$work/$1.so" "$lib.tmp.$$" && mv -f "$lib.tmp.$$" "$lib"
}
restore() { use_build new 2>/dev/null || true; }
trap 'cluster_stop; restore; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
cluster_start
new_db hotpath
sql() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d hotpath "$@"; }

sql >/dev/null <<SQL
SELECT count(chat.upsert_user(id, 'u' || id)) FROM generate_series(1, $((CONVS * 2))) AS id;
SELECT count(chat.register_device(id)) FROM generate_series(1, $((CONVS * 2))) AS id;
SELECT count(chat.direct_conversation(2 * i - 1, 2 * i)) FROM generate_series(1, $CONVS) AS i;
SELECT count(*) FROM generate_series(1, $CONVS) AS i, generate_series(1, 3) AS k, LATERAL chat.send_message(2 * i - 1, i, 'm' || k);
SELECT chat.node_reset('bench');
SELECT count(chat.connect('bench', 2 * i - 1, 1)) FROM generate_series(1, $CONVS) AS i;
VACUUM ANALYZE;
SQL
cat >"$work/typing.pgbench" <<SQL
\set conv random(1, $CONVS)
SELECT chat.typing(2 * :conv, :conv);
SQL
cat >"$work/receipt.pgbench" <<SQL
\set conv random(1, $CONVS)
SELECT chat.fanout_receipt(:conv, 2 * :conv, 0, 3, 'read');
SQL

cluster_ticks() {
  local pm t p
  pm=$(head -1 "$CHAT_TEST_PGDATA/postmaster.pid")
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
  for p in $(pgrep -P "$pm"); do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}

# run BUILD SCRIPT: appends "calls ticks" to $work/BUILD-SCRIPT.
run() {
  local before after n
  sleep 1
  before=$(cluster_ticks)
  # every typing call is let through (no rate limit), so each one fans out
  n=$(PGOPTIONS="-c chat.typing_interval=0" "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECS" \
        -f "$work/$2.pgbench" hotpath 2>"$work/err" \
      | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p') \
    || { cat "$work/err" >&2; exit 1; }
  sleep 1
  after=$(cluster_ticks)
  [ -n "$n" ] && [ "$n" -gt 0 ] || { cat "$work/err" >&2; exit 1; }
  echo "$n $(( after - before ))" >>"$work/$1-$2"
}

echo "$CLIENTS clients, ${SECS}s per script and build, $ROUNDS round(s), builds: $builds"
for r in $(seq 1 "$ROUNDS"); do
  for b in $builds; do
    cluster_ctl stop
    use_build "$b"
    cluster_ctl start
    for s in typing receipt; do run "$b" "$s"; done
  done
done

printf '%-8s %-8s %10s %12s\n' build script calls "CPU µs/call"
declare -A us
for b in $builds; do
  for s in typing receipt; do
    read -r n ticks < <(awk '{n += $1; t += $2} END {print n, t}' "$work/$b-$s")
    us[$b-$s]=$(echo "$ticks * 1000000 / $HZ / $n" | bc -l)
    printf '%-8s %-8s %10d %12.1f\n' "$b" "$s" "$n" "${us[$b-$s]}"
  done
done
if [ -n "${OLD_SO:-}" ]; then
  for s in typing receipt; do
    printf '%s: new / old CPU per call %.2f\n' "$s" "$(echo "${us[new-$s]} / ${us[old-$s]}" | bc -l)"
  done
fi
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end (shared: compare the ratio)"
