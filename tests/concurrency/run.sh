#!/usr/bin/env bash
# Concurrency of the core: parallel sends to one conversation get seqs exactly
# 1..N; concurrent retries of one client_msg_id store one row and all get the
# same seq; concurrent direct_conversation(a,b) and (b,a) create one
# conversation; concurrent e2e key claims hand every one-time key out once.
# Uses the harness cluster, or starts
# its own when run alone.  Exits non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
stage_begin chat-conc
db=chat_conc
new_db $db

sql() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d $db "$@"; }
fail() { echo "FAIL: $*"; exit 1; }
check() {  # check WHAT EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "ok: $1 ($3)"; else fail "$1: expected $2, got $3"; fi
}

clients=8
sql -c "SELECT chat.upsert_user(id, 'u' || id) FROM generate_series(1, 20) AS id" >/dev/null
group=$(sql -c "SELECT chat.create_group(1, 'load', ARRAY(SELECT generate_series(2, $clients)))")

# Runs $clients background sessions that start their SQL (given by the
# function JOB N) at the same instant: each first runs PRELUDE (a function,
# optional), then waits on a shared advisory lock that a holder session
# releases only once every session is queued behind it.
barrier_run() {
  local job=$1 prelude=${2:-true} i
  "$PGBIN/psql" -XAtq -d $db >/dev/null <<SQL &
SELECT pg_advisory_lock(4242);
DO \$\$ BEGIN
  FOR i IN 1..400 LOOP
    EXIT WHEN (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted) >= $clients;
    PERFORM pg_sleep(0.01);
  END LOOP;
END \$\$;
SELECT pg_advisory_unlock(4242);
SQL
  for _ in $(seq 1 200); do
    [ "$(sql -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted")" = 1 ] && break
    sleep 0.01
  done
  for i in $(seq 1 $clients); do
    "$PGBIN/psql" -XAtq -d $db >"$work/out.$i" 2>&1 <<SQL &
\\o /dev/null
$($prelude)
SELECT pg_advisory_lock_shared(4242);
SELECT pg_advisory_unlock_shared(4242);
\\o
$($job $i)
SQL
  done
  wait
}

echo "== parallel sends to one conversation ($clients sessions)"
if command -v pgbench >/dev/null; then
  cat >"$work/send.pgbench" <<SQL
\set sender random(1, $clients)
SELECT seq FROM chat.send_message(:sender, $group, 'load message', NULL);
\set key random(1, 1000000000)
SELECT seq FROM chat.send_message(:sender, $group, 'keyed message', 'k' || :key);
SQL
  "$PGBIN/pgbench" -n -c $clients -j 2 -t 50 -f "$work/send.pgbench" $db >"$work/pgbench.log" 2>&1 \
    || { cat "$work/pgbench.log"; fail "pgbench sends"; }
  n=$((clients * 50 * 2 + 1))   # + the 'created' system message
else
  send_job() { echo "SELECT count(*) FROM (SELECT chat.send_message(($1 - 1) % $clients + 1, $group, 'm') FROM generate_series(1, 100)) s;"; }
  barrier_run send_job
  n=$((clients * 100 + 1))
fi
check "message rows" $n "$(sql -c "SELECT count(*) FROM chat.messages WHERE conversation_id = $group")"
check "seqs are exactly 1..$n" "1 $n $n" "$(sql -F' ' -c "SELECT min(seq), max(seq), count(DISTINCT seq) FROM chat.messages WHERE conversation_id = $group")"
check "last_seq" $n "$(sql -c "SELECT last_seq FROM chat.conversations WHERE id = $group")"
check "senders' read_seq never passes last_seq" 0 \
  "$(sql -c "SELECT count(*) FROM chat.members WHERE conversation_id = $group AND (read_seq > $n OR delivered_seq < read_seq)")"
check "created_at follows seq order" 0 \
  "$(sql -c "SELECT count(*) FROM (SELECT created_at < lag(created_at) OVER (ORDER BY seq) AS back FROM chat.messages WHERE conversation_id = $group) s WHERE back")"

echo "== concurrent retries of one client_msg_id ($clients sessions, 5 rounds)"
for round in 1 2 3 4 5; do
  before=$(sql -c "SELECT last_seq FROM chat.conversations WHERE id = $group")
  retry_job() { echo "SELECT seq || CASE WHEN duplicate THEN ' t' ELSE ' f' END FROM chat.send_message(1, $group, 'retried', 'retry-$round');"; }
  barrier_run retry_job
  cat "$work"/out.* | grep -v '^$' | sort >"$work/retry.$round"
  grep -qv '^[0-9]* [tf]$' "$work/retry.$round" && { cat "$work/retry.$round"; fail "a retry failed"; }
  check "round $round: answers" $clients "$(wc -l <"$work/retry.$round")"
  check "round $round: one seq for all retries" "$((before + 1))" "$(cut -d' ' -f1 "$work/retry.$round" | sort -u | tr '\n' ' ' | xargs)"
  check "round $round: exactly one original" 1 "$(grep -c ' f$' "$work/retry.$round")"
  check "round $round: one stored row" 1 "$(sql -c "SELECT count(*) FROM chat.messages WHERE conversation_id = $group AND client_msg_id = 'retry-$round'")"
  check "round $round: no seq burned" "$((before + 1))" "$(sql -c "SELECT last_seq FROM chat.conversations WHERE id = $group")"
done

# media (issue 13): a retry of a send with attachments must find the first
# send under the row lock (its attachments are bound by then), not refuse it.
# Runs $clients sessions of JOB while a holder session keeps the row of
# conversation $group locked until every one of them waits for a lock: all
# pass their checks before the lock, then run one after the other.
rowlock_run() {
  local job=$1 i
  "$PGBIN/psql" -XAtq -d $db >/dev/null <<SQL &
BEGIN;
SELECT 1 FROM chat.conversations WHERE id = $group FOR UPDATE;
DO \$\$ BEGIN
  FOR i IN 1..400 LOOP
    EXIT WHEN (SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock') >= $clients;
    PERFORM pg_sleep(0.01);
  END LOOP;
END \$\$;
COMMIT;
SQL
  sleep 0.2
  for i in $(seq 1 $clients); do
    "$PGBIN/psql" -XAtq -d $db >"$work/out.$i" 2>&1 <<SQL &
$($job $i)
SQL
  done
  wait
}

echo "== concurrent retries of a send with attachments ($clients sessions, 3 rounds)"
sql -c "SELECT chat.register_device(1)" >/dev/null
for round in 1 2 3; do
  before=$(sql -c "SELECT last_seq FROM chat.conversations WHERE id = $group")
  up=$(sql -c "SELECT chat.upload(1, $group, 'application/pdf', 10, repeat('a', 64), 'f.pdf') ->> 'upload'")
  sql -c "SELECT chat.media_uploaded('$up')" >/dev/null
  att_job() { echo "SELECT r #>> '{result,seq}' || CASE WHEN (r #>> '{result,duplicate}')::boolean THEN ' t' ELSE ' f' END || coalesce(' ' || (r ->> 'code'), '') FROM chat.client_request('conc', 1, 1, '{\"type\":\"send\",\"conversation\":$group,\"body\":\"file\",\"client_msg_id\":\"att-$round\",\"attachments\":[\"$up\"]}') AS r;"; }
  rowlock_run att_job
  cat "$work"/out.* | grep -v '^$' | sort >"$work/att.$round"
  grep -qv '^[0-9]* [tf]$' "$work/att.$round" && { cat "$work/att.$round"; fail "a retry with attachments failed"; }
  check "round $round: answers" $clients "$(wc -l <"$work/att.$round")"
  check "round $round: one seq for all retries" "$((before + 1))" "$(cut -d' ' -f1 "$work/att.$round" | sort -u | tr '\n' ' ' | xargs)"
  check "round $round: exactly one original" 1 "$(grep -c ' f$' "$work/att.$round")"
  check "round $round: the upload bound to it" "$((before + 1))" "$(sql -c "SELECT message_seq FROM chat.attachments WHERE id = '$up'")"
done

echo "== one upload in concurrent different sends ($clients sessions, 3 rounds)"
for round in 1 2 3; do
  before=$(sql -c "SELECT last_seq FROM chat.conversations WHERE id = $group")
  up=$(sql -c "SELECT chat.upload(1, $group, 'application/pdf', 10, repeat('b', 64), 'g.pdf') ->> 'upload'")
  sql -c "SELECT chat.media_uploaded('$up')" >/dev/null
  steal_job() { echo "SELECT coalesce(r #>> '{result,seq}', r ->> 'code') FROM chat.client_request('conc', 1, 1, '{\"type\":\"send\",\"conversation\":$group,\"body\":\"file\",\"client_msg_id\":\"steal-$round-$1\",\"attachments\":[\"$up\"]}') AS r;"; }
  rowlock_run steal_job
  cat "$work"/out.* | grep -v '^$' | sort >"$work/steal.$round"
  check "round $round: one send took it" "$((before + 1))" "$(grep -v '^55000$' "$work/steal.$round" | tr '\n' ' ' | xargs)"
  check "round $round: the others refused (55000)" $((clients - 1)) "$(grep -c '^55000$' "$work/steal.$round")"
  check "round $round: one message carries it" 1 "$(sql -c "SELECT count(*) FROM chat.messages WHERE conversation_id = $group AND attachments @> '[{\"id\":\"$up\"}]'")"
  check "round $round: bound to that message" "$((before + 1))" "$(sql -c "SELECT message_seq FROM chat.attachments WHERE id = '$up'")"
done

echo "== concurrent direct_conversation(a,b) and (b,a) ($clients sessions, 5 pairs)"
for pair in 1 2 3 4 5; do
  a=$((10 + pair)) b=$((20 - pair + 1))
  [ $b -le 20 ] || b=20
  direct_job() { if [ $(($1 % 2)) -eq 0 ]; then echo "SELECT chat.direct_conversation($a, $b);"; else echo "SELECT chat.direct_conversation($b, $a);"; fi; }
  barrier_run direct_job
  cat "$work"/out.* | grep -v '^$' | sort -u >"$work/direct.$pair"
  grep -qv '^[0-9]*$' "$work/direct.$pair" && { cat "$work/direct.$pair"; fail "a direct_conversation call failed"; }
  check "pair ($a,$b): one id from every session" 1 "$(wc -l <"$work/direct.$pair")"
  check "pair ($a,$b): one conversation row" 1 \
    "$(sql -c "SELECT count(*) FROM chat.conversations WHERE kind = 'direct' AND direct_low = least($a, $b) AND direct_high = greatest($a, $b)")"
  check "pair ($a,$b): two members" 2 "$(sql -c "SELECT count(*) FROM chat.members WHERE conversation_id = $(cat "$work/direct.$pair")")"
done

echo "== sends racing the sender's removal land before the removal, never after"
kick=$(sql -c "SELECT chat.create_group(1, 'kick', ARRAY(SELECT generate_series(2, $clients)))")
kick_job() {
  if [ "$1" = 1 ]; then
    echo "SELECT pg_sleep(0.05); SELECT chat.remove_member(1, $kick, 2);"
  else
    echo "DO \$\$ BEGIN FOR i IN 1..200 LOOP PERFORM chat.send_message(2, $kick, 'racing ' || i);
          END LOOP; EXCEPTION WHEN insufficient_privilege THEN NULL; END \$\$;"
  fi
}
barrier_run kick_job
grep -h ERROR "$work"/out.* && fail "a racing session failed"
removed_at=$(sql -c "SELECT seq FROM chat.messages WHERE conversation_id = $kick AND kind = 'system' AND body::jsonb->>'action' = 'removed'")
check "messages of the removed member after its removal (removal at seq $removed_at)" 0 \
  "$(sql -c "SELECT count(*) FROM chat.messages WHERE conversation_id = $kick AND sender_id = 2 AND kind = 'text' AND seq > $removed_at")"
echo "   ($(sql -c "SELECT count(*) FROM chat.messages WHERE conversation_id = $kick AND sender_id = 2") sends got in before)"

echo "== under REPEATABLE READ, racing sends fail with 40001, never leave a gap"
rr=$(sql -c "SELECT chat.create_group(1, 'rr', ARRAY(SELECT generate_series(2, $clients)))")
rr_before=$(sql -c "SELECT last_seq FROM chat.conversations WHERE id = $rr")
# The snapshot is taken before the barrier, so every session but the first
# to lock sees a conversation row updated after its snapshot.
rr_prelude() { printf '%s\n' '\set VERBOSITY sqlstate' 'BEGIN ISOLATION LEVEL REPEATABLE READ;' 'SELECT count(*) FROM chat.conversations;'; }
rr_job() { echo "SELECT 'sent ' || seq FROM chat.send_message($1, $rr, 'repeatable read'); COMMIT;"; }
barrier_run rr_job rr_prelude
check "sends that committed" 1 "$(cat "$work"/out.* | grep -c '^sent ')"
check "sends that failed with 40001" $((clients - 1)) "$(cat "$work"/out.* | grep -c '40001')"
check "last_seq moved by one" $((rr_before + 1)) "$(sql -c "SELECT last_seq FROM chat.conversations WHERE id = $rr")"

echo "== e2e: concurrent one-time key claims ($clients sessions, 80 claims on a pool of 50)"
# Every key is handed out once only, then the fallback key (30_e2e.sql).
sql -c "SELECT chat.register_device(i) FROM generate_series(1, $clients) i" >/dev/null
sql -c "SELECT chat.keys_upload(1, 1, 'IKone', '{\"id\":1,\"key\":\"SPK\",\"signature\":\"SIG\"}',
          (SELECT jsonb_agg(jsonb_build_object('id', 'k' || i, 'key', 'KEY' || i)) FROM generate_series(1, 50) i),
          '{\"id\":\"fb\",\"key\":\"FALLBACK\",\"signature\":\"SIG\"}')" >/dev/null
claim_job() {
  local i
  for i in $(seq 1 10); do
    echo "SELECT CASE WHEN fallback THEN 'FALLBACK ' ELSE 'KEY ' END || (one_time_key ->> 'id')
            FROM chat.keys_claim($1, 1, '[{\"user\":1,\"device\":1}]');"
  done
}
barrier_run claim_job
cat "$work"/out.* | grep -v '^$' >"$work/claims"
grep -qv '^\(KEY k[0-9]*\|FALLBACK fb\)$' "$work/claims" && { cat "$work/claims"; fail "a claim failed"; }
check "claims answered" 80 "$(wc -l <"$work/claims")"
check "one-time keys handed out" 50 "$(grep -c '^KEY ' "$work/claims")"
check "distinct one-time keys (each once only)" 50 "$(grep '^KEY ' "$work/claims" | sort -u | wc -l)"
check "fallback answers" 30 "$(grep -c '^FALLBACK fb$' "$work/claims")"
check "pool left" 0 "$(sql -c "SELECT count(*) FROM chat.one_time_keys WHERE user_id = 1")"

echo "== e2e: concurrent to_device calls with overlapping recipients in different orders ($clients sessions)"
# Every session sends 20 calls, each with one envelope for every member's
# device, in an order rotated by the session: the recipients' rows are
# locked in one order, so no call deadlocks and every envelope is stored.
sql -c "DELETE FROM chat.to_device" >/dev/null
todev_job() {
  local r
  for r in $(seq 1 20); do
    echo "SELECT chat.to_device($1, 1, (SELECT jsonb_agg(jsonb_build_object('user', u, 'device', 1, 'type', 'olm', 'ciphertext', 'c$1r$r')
             ORDER BY (u + $1 * 3 + $r) % $clients) FROM generate_series(1, $clients) u), 's$1r$r');"
  done
}
barrier_run todev_job
grep -h ERROR "$work"/out.* && fail "a to_device call failed (deadlock?)"
check "envelopes stored" $((clients * 20 * clients)) "$(sql -c "SELECT count(*) FROM chat.to_device")"
check "envelopes per device" "$((clients * 20))" "$(sql -c "SELECT DISTINCT count(*) FROM chat.to_device GROUP BY user_id, device_id")"

echo "== seqs stay gapless in every conversation"
check "conversations with a gap or a last_seq mismatch" 0 "$(sql -c "
  SELECT count(*) FROM chat.conversations c
   WHERE c.last_seq <> (SELECT count(*) FROM chat.messages m WHERE m.conversation_id = c.id)
      OR c.last_seq <> coalesce((SELECT max(seq) FROM chat.messages m WHERE m.conversation_id = c.id), 0)")"
echo "concurrency: all checks passed"
