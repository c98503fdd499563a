#!/usr/bin/env bash
# chat.send_message throughput against a hand-written baseline, plus history
# and sync latencies, with pgbench on a throwaway cluster.
#
#   bench/send-throughput.sh                    # 1, 8, 32 clients, 5 s a point, best of 2
#   SECS=10 ROUNDS=3 CLIENTS="32" bench/send-throughput.sh
#
# 10,000 direct conversations.  Scripts, interleaved round by round so that
# a busy machine hurts them alike (the best round of each counts):
#
#   send       SELECT * FROM chat.send_message(...)  one sender per conversation
#   send-alt   the same with the two members taking turns, so each send also
#              moves the sender's read mark over the peer's message and sends
#              a read receipt (what a real conversation does)
#   base-tx    BEGIN; UPDATE conversations SET last_seq = last_seq + 1 ...
#              RETURNING; INSERT INTO messages ...; COMMIT  (the baseline)
#   base-1     the same UPDATE and INSERT as one statement (a CTE): the
#              cheapest gapless send there is, no checks, no fanout
#
# Prints TPS per script and client count, and send / base-tx and
# send / base-1.  Then the latency of chat.history (50 messages) and of
# chat.sync for a device 1,000 messages behind across 100 conversations.
# The cluster is the test harness's (fsync off, synchronous_commit off):
# figures measure CPU work and locking, not the disk.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

SECS=${SECS:-5}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-"1 8 32"}
CONVS=10000
SCRIPTS="send send-alt base-tx base-1"

work=$(mktemp -d /tmp/chat-bench.XXXXXX)
chmod 755 "$work"
trap 'cluster_stop; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
cluster_start
new_db bench
sql() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d bench "$@"; }

echo "setup: $((CONVS * 2)) users, $CONVS direct conversations, a history and a sync fixture"
sql >/dev/null <<SQL
SELECT count(chat.upsert_user(id, 'u' || id)) FROM generate_series(1, $((CONVS * 2))) AS id;
SELECT count(chat.direct_conversation(2 * i - 1, 2 * i)) FROM generate_series(1, $CONVS) AS i;
-- history: one conversation with 1,000 messages.
SELECT chat.upsert_user(900001, 'hist_a'), chat.upsert_user(900002, 'hist_b');
SELECT count(*) FROM generate_series(1, 1000) AS i,
  LATERAL chat.send_message(900001 + i % 2, chat.direct_conversation(900001, 900002), 'history ' || i) AS s;
-- sync: a device of user 900100 is 1,000 messages behind across 100 conversations.
SELECT chat.upsert_user(900100, 'sync_me');
SELECT chat.register_device(900100);
SELECT count(chat.upsert_user(900100 + p, 'sync_peer' || p)) FROM generate_series(1, 100) AS p;
SELECT count(*) FROM generate_series(1, 100) AS p, generate_series(1, 10) AS i,
  LATERAL chat.send_message(900100 + p, chat.direct_conversation(900100, 900100 + p), 'sync ' || i) AS s;
VACUUM ANALYZE;
SQL
hist_conv=$(sql -c "SELECT chat.direct_conversation(900001, 900002)")

cat >"$work/send.pgbench" <<SQL
\set conv random(1, $CONVS)
SELECT * FROM chat.send_message(2 * :conv, :conv, 'a benchmark message of some forty bytes');
SQL
cat >"$work/send-alt.pgbench" <<SQL
\set conv random(1, $CONVS)
\set side random(0, 1)
SELECT * FROM chat.send_message(2 * :conv - :side, :conv, 'a benchmark message of some forty bytes');
SQL
cat >"$work/base-tx.pgbench" <<SQL
\set conv random(1, $CONVS)
BEGIN;
UPDATE chat.conversations SET last_seq = last_seq + 1, last_activity = now() WHERE id = :conv RETURNING last_seq \gset
INSERT INTO chat.messages (conversation_id, seq, sender_id, body) VALUES (:conv, :last_seq, 2 * :conv, 'a benchmark message of some forty bytes');
COMMIT;
SQL
cat >"$work/base-1.pgbench" <<SQL
\set conv random(1, $CONVS)
WITH c AS (UPDATE chat.conversations SET last_seq = last_seq + 1, last_activity = now() WHERE id = :conv RETURNING id, last_seq)
INSERT INTO chat.messages (conversation_id, seq, sender_id, body) SELECT id, last_seq, 2 * :conv, 'a benchmark message of some forty bytes' FROM c;
SQL

# pgbench SCRIPT CLIENTS [extra args]: prints the TPS.
tps() {
  local script=$1 clients=$2; shift 2
  "$PGBIN/pgbench" -n -M prepared -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" "$@" \
    -f "$work/$script.pgbench" bench 2>"$work/err" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' \
    || { cat "$work/err" >&2; echo 0; }
}
best() { sort -g | tail -1; }

echo
echo "chat.send_message vs hand-written gapless insert: TPS (best of $ROUNDS rounds of ${SECS}s), $CONVS conversations"
printf '%8s %10s %10s %10s %10s %12s %12s\n' clients send send-alt base-tx base-1 send/base-tx send/base-1
for c in $CLIENTS; do
  for r in $(seq 1 "$ROUNDS"); do
    for s in $SCRIPTS; do tps "$s" "$c" -T "$SECS" >>"$work/tps.$s.$c"; done
  done
  declare -A t
  for s in $SCRIPTS; do t[$s]=$(best <"$work/tps.$s.$c"); done
  printf '%8s %10.0f %10.0f %10.0f %10.0f %12.2f %12.2f\n' "$c" "${t[send]}" "${t[send-alt]}" "${t[base-tx]}" "${t[base-1]}" \
    "$(echo "${t[send]} / ${t[base-tx]}" | bc -l)" "$(echo "${t[send]} / ${t[base-1]}" | bc -l)"
done

# Checks that the load left every conversation gapless.
gaps=$(sql -c "SELECT count(*) FROM chat.conversations c WHERE c.last_seq <> (SELECT count(*) FROM chat.messages m WHERE m.conversation_id = c.id)")
echo "conversations with a gap after the load: $gaps"

echo
echo "latencies (1 client, average over the run)"
cat >"$work/history.pgbench" <<SQL
SELECT count(*) FROM chat.history(900001, $hist_conv, NULL, 50);
SQL
cat >"$work/history-page.pgbench" <<SQL
\set before random(100, 1000)
SELECT count(*) FROM chat.history(900001, $hist_conv, :before, 50);
SQL
cat >"$work/sync-500.pgbench" <<SQL
SELECT count(*) FROM chat.sync(900100, 1, 500);
SQL
cat >"$work/sync-1000.pgbench" <<SQL
SELECT count(*) FROM chat.sync(900100, 1, 1000);
SQL
cat >"$work/conversations.pgbench" <<SQL
SELECT count(*) FROM chat.conversations(900100, 50);
SQL
lat() {
  "$PGBIN/pgbench" -n -M prepared -c 1 -T "$SECS" -f "$work/$1.pgbench" bench 2>/dev/null \
    | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p'
}
printf '  %-58s %8s ms\n' "history, newest 50 of 1,000" "$(lat history)"
printf '  %-58s %8s ms\n' "history, 50 before a random seq" "$(lat history-page)"
printf '  %-58s %8s ms\n' "sync, device 1,000 behind in 100 conversations, lim 500" "$(lat sync-500)"
printf '  %-58s %8s ms\n' "sync, the same, lim 1000 (whole backlog in one call)" "$(lat sync-1000)"
printf '  %-58s %8s ms\n' "conversations (chat list) of that user, 50 of 100" "$(lat conversations)"
echo
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')"
[ "$gaps" = 0 ]
