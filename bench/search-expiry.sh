#!/usr/bin/env bash
# Search latency and expiry throughput (issue 15), on a throwaway cluster.
#
#   bench/search-expiry.sh                                   # 1,000,000 messages
#   MESSAGES=2000 CONVS=20 QUERIES=20 SECS=2 bench/search-expiry.sh   # smoke run
#
# 1. Load: USERS users, CONVS groups of GROUP members each, MESSAGES text
#    messages spread over them, bodies of 8 words drawn from a vocabulary
#    of VOCAB words (Zipf-like: word i about 1/i as often), written set-based
#    straight into chat.messages (a send per message would take hours; the
#    GIN index is built as the rows go in, as it is for sends).
# 2. Search: QUERIES calls of chat.search(user, one word) for random members
#    and words (rare and common alike), timed one by one inside the server
#    (clock_timestamp around each call): p50 / p99 / max in ms, and the
#    median number of results; each query runs twice, alternating, with the
#    plan chat.search chooses and with the GIN plan alone
#    (chat.search_scan_limit = 0), so both are measured in the same run.
# 3. Expiry, ROUNDS rounds alternating A and B (the ratio of a round is
#    measured in the same minute, which matters on a shared machine), for
#    each worker niceness in NICES (chat.expire_nice, e.g. NICES="0 10"):
#    A: pgbench sends for SECS seconds with CLIENTS clients;
#    B: EXPIRE messages are made due at once (a backlog), the same sends
#       run, and the expiry worker (chat.start_expiry_worker, batches of
#       BATCH) works the backlog off: messages tombstoned per second, and
#       send p50 / p99 of the transactions that ended while it ran
#       (pgbench per-transaction log), over those of A.
#    RATES: total send rates to run A and B at (pgbench -R over the CLIENTS
#    clients); 0 is a closed loop, which keeps both cores busy with sends
#    alone, so any other work shows in their p99; a rate below saturation
#    (the default runs both, "0 1000") is how a deployment runs.
#    VARIANTS: expire_messages definitions to alternate, "installed" or
#    SQL files redefining it (e.g. an older version, to compare in one run).
#    QUERIES=0 skips part 2.
#
# The cluster is the test harness's (fsync off, synchronous_commit off):
# figures measure CPU work and locking, not the disk.  Not run by the test
# suite; a smoke run with tiny counts checks that the script works.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

MESSAGES=${MESSAGES:-1000000}
CONVS=${CONVS:-10000}
GROUP=${GROUP:-10}
USERS=${USERS:-$((CONVS * 2))}
VOCAB=${VOCAB:-5000}
QUERIES=${QUERIES:-500}
EXPIRE=${EXPIRE:-$((MESSAGES / 10))}
BATCH=${BATCH:-1000}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-8}
ROUNDS=${ROUNDS:-3}
NICES=${NICES:-10}
VARIANTS=${VARIANTS:-installed}
RATES=${RATES:-0 1000}

work=$(mktemp -d /tmp/chat-bench.XXXXXX)
chmod 755 "$work"
trap 'cluster_stop; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
cluster_start
db=chat_bench_search
new_db "$db"
q() { "$PGBIN/psql" -qAtX -v ON_ERROR_STOP=1 -d "$db" "$@"; }

echo "== load: $MESSAGES messages in $CONVS groups of $GROUP ($USERS users, $VOCAB words)"
t0=$(date +%s.%N)
q <<SQL
SET client_min_messages = warning;
INSERT INTO chat.users (id, handle) SELECT i, 'u' || i FROM generate_series(1, $USERS) i;
INSERT INTO chat.devices (user_id, device_id) SELECT i, 1 FROM generate_series(1, $USERS) i;
UPDATE chat.users SET last_device_id = 1;
INSERT INTO chat.conversations (id, kind, title) SELECT c, 'group', 'g' || c FROM generate_series(1, $CONVS) c;
SELECT FROM (SELECT setval('chat.conversations_id_seq', $CONVS)) x WHERE false;
INSERT INTO chat.members (conversation_id, user_id, role)
SELECT c, 1 + ((c * 7919 + k * 104729) % $USERS), CASE WHEN k = 0 THEN 'owner' ELSE 'member' END
  FROM generate_series(1, $CONVS) c, generate_series(0, $GROUP - 1) k
ON CONFLICT DO NOTHING;
CREATE TEMP TABLE words AS
SELECT i, 'w' || i || substr(md5(i::text), 1, 3) AS w FROM generate_series(1, $VOCAB) i;
CREATE TEMP TABLE plan AS
SELECT n, 1 + (n % $CONVS) AS conv, (n / $CONVS) + 1 AS seq FROM generate_series(0, $MESSAGES - 1) n;
INSERT INTO chat.messages (conversation_id, seq, sender_id, kind, body, created_at)
SELECT p.conv, p.seq,
       (SELECT m.user_id FROM chat.members m WHERE m.conversation_id = p.conv LIMIT 1),
       'text',
       (SELECT string_agg(v.a[greatest(1, least($VOCAB, floor(exp(random() * ln($VOCAB)))::int + 0 * k))], ' ')
          FROM generate_series(1, 8) k),
       now() - interval '1 hour' + p.seq * interval '1 ms'
  FROM plan p, (SELECT array_agg(w ORDER BY i) AS a FROM words) v;
UPDATE chat.conversations c SET last_seq = x.m FROM (
    SELECT conversation_id, max(seq) m FROM chat.messages GROUP BY 1) x WHERE x.conversation_id = c.id;
VACUUM ANALYZE chat.messages;
VACUUM ANALYZE chat.members;
SQL
t1=$(date +%s.%N)
echo "loaded in $(echo "$t1 - $t0" | bc) s; messages: $(q -c 'SELECT count(*) FROM chat.messages')," \
     "index: $(q -c "SELECT pg_size_pretty(pg_relation_size('chat.messages_search_idx'))")"

[ "$QUERIES" -gt 0 ] && echo "== search: $QUERIES queries"
[ "$QUERIES" -gt 0 ] && q <<SQL
SET client_min_messages = warning;
CREATE TEMP TABLE words AS
SELECT i, 'w' || i || substr(md5(i::text), 1, 3) AS w FROM generate_series(1, $VOCAB) i;
CREATE TEMP TABLE timing (ms double precision, n integer, plan text);
DO \$\$
DECLARE
    u bigint; w text; t timestamptz; n integer; c integer; k integer;
BEGIN
    FOR i IN 1..$QUERIES LOOP
        c := 1 + floor(random() * $CONVS)::int;
        k := greatest(1, least($VOCAB, floor(exp(random() * ln($VOCAB)))::int));
        SELECT m.user_id INTO u FROM chat.members m WHERE m.conversation_id = c LIMIT 1;
        SELECT words.w INTO w FROM words WHERE words.i = k;
        -- both plans for the same query, in alternating order: 'chosen'
        -- (what chat.search picks) and 'index' (the GIN plan for everyone,
        -- as before chat.search_scan_limit)
        FOR j IN 0..1 LOOP
            IF (i + j) % 2 = 0 THEN
                PERFORM set_config('chat.search_scan_limit', '5000', true);
            ELSE
                PERFORM set_config('chat.search_scan_limit', '0', true);
            END IF;
            t := clock_timestamp();
            SELECT count(*) INTO n FROM chat.search(u, w);
            INSERT INTO timing VALUES (extract(epoch FROM clock_timestamp() - t) * 1000, n,
                                       CASE WHEN (i + j) % 2 = 0 THEN 'chosen' ELSE 'index' END);
        END LOOP;
    END LOOP;
END
\$\$;
SELECT format('search (%s plan): p50 %s ms, p99 %s ms, max %s ms; median results %s (limit 20)', plan,
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
              round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2),
              round(max(ms)::numeric, 2),
              percentile_disc(0.5) WITHIN GROUP (ORDER BY n))
  FROM timing GROUP BY plan ORDER BY plan;
SQL

echo "== expiry: rounds of $EXPIRE due messages, batches of $BATCH, $CLIENTS senders for ${SECS}s, worker niceness: $NICES"
cat >"$work/send.sql" <<SQL
\set c random(1, $CONVS)
SELECT chat.send_message((SELECT m.user_id FROM chat.members m WHERE m.conversation_id = :c LIMIT 1), :c, 'load message');
SQL
# pct FROM TO FILE...: "sends, p50, p99" of the pgbench per-transaction log
# lines (column 3: microseconds; column 5: epoch second of the end) whose
# transaction ended in [FROM, TO]; p99 in ms alone on the last line.
pct() {
  local from=$1 to=$2; shift 2
  cat "$@" | awk -v f="$from" -v t="$to" '$5 + $6 / 1e6 >= f && $5 + $6 / 1e6 <= t {print $3}' | sort -n | awk '{a[NR] = $1}
    END {
      if (NR == 0) { print "no transactions"; print 0; exit }
      i50 = int(NR * 0.5); if (i50 < 1) i50 = 1
      i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
      printf "%d sends, p50 %.2f ms, p99 %.2f ms\n%.3f\n", NR, a[i50] / 1000, a[i99] / 1000, a[i99] / 1000
    }'
}
sends() {  # sends DIR RATE: pgbench for SECS seconds, per-transaction log in DIR
  local rate=()
  [ "${2:-0}" = 0 ] || rate=(-R "$2")
  mkdir -p "$1"
  (cd "$1" && "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECS" "${rate[@]}" -f "$work/send.sql" -l "$db" >/dev/null 2>&1)
}
q -c "ALTER SYSTEM SET chat.expire_batch = $BATCH" -c "SELECT pg_reload_conf()" >/dev/null
ratios=""
q -c "SELECT pg_get_functiondef('chat.expire_messages(integer)'::regprocedure)" >"$work/installed.sql"
echo ";" >>"$work/installed.sql"
for r in $(seq 1 "$ROUNDS"); do
  for variant in $VARIANTS; do
  for nice in $NICES; do
  for rate in $RATES; do
    # the expire_messages to use: the installed one, or a file redefining it
    if [ "$variant" = installed ]; then q -f "$work/installed.sql" >/dev/null; else q -f "$variant" >/dev/null; fi
    # A: sends alone (after a checkpoint, as B: both pay the same full-page writes)
    q -c "CHECKPOINT" >/dev/null
    a0=$(date +%s.%N); sends "$work/a$r-$nice-$rate" "$rate"; a1=$(date +%s.%N)
    base=$(pct "$a0" "$a1" "$work/a$r-$nice-$rate"/pgbench_log.*)
    # B: the same sends while the expiry worker works off a backlog
    q -c "ALTER SYSTEM SET chat.expire_nice = $nice" -c "SELECT pg_reload_conf()" >/dev/null
    q -c "UPDATE chat.messages SET expires_at = now() - interval '1 s'
           WHERE (conversation_id, seq) IN (SELECT conversation_id, seq FROM chat.messages
                                             WHERE kind = 'text' AND deleted_at IS NULL
                                               AND expires_at IS NULL LIMIT $EXPIRE)" >/dev/null
    q -c "CHECKPOINT" >/dev/null
    sends "$work/b$r-$nice-$rate" "$rate" & bench_pid=$!
    sleep 1   # the senders are up
    before=$(q -c "SELECT count(*) FROM chat.messages WHERE deleted_at IS NOT NULL")
    t0=$(date +%s.%N)
    q -c "SELECT pg_reload_conf()" -c "SELECT pg_sleep(0.1)" -c "SELECT chat.start_expiry_worker()" >/dev/null
    while [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'chat expiry'")" != 0 ] ||
          [ "$(q -c "SELECT count(*) FROM chat.messages WHERE expires_at <= now()")" != 0 ]; do
      if [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'chat expiry'")" = 0 ]; then
        q -c "SELECT chat.start_expiry_worker()" >/dev/null   # a worker run takes at most 1000 batches
      fi
      [ -n "${WAITS:-}" ] && q -c "SELECT coalesce(wait_event_type || ':' || wait_event, 'cpu') FROM pg_stat_activity
                                   WHERE application_name = 'pgbench' AND state = 'active'" >>"$work/waits"
      sleep 0.1
    done
    [ -n "${WAITS:-}" ] && { echo "  send backends' wait events while expiry ran:"; sort "$work/waits" | uniq -c | sort -rn | head -8; rm -f "$work/waits"; }
    t1=$(date +%s.%N)
    wait "$bench_pid"
    after=$(q -c "SELECT count(*) FROM chat.messages WHERE deleted_at IS NOT NULL")
    done_n=$((after - before))
    secs=$(echo "$t1 - $t0" | bc)
    during=$(pct "$t0" "$t1" "$work/b$r-$nice-$rate"/pgbench_log.*)
    ratio=$(echo "scale=2; $(echo "$during" | tail -1) / ($(echo "$base" | tail -1) + 0.0001)" | bc)
    rlabel=$([ "$rate" = 0 ] && echo "closed loop" || echo "${rate}/s")
    ratios="$ratios $(basename "$variant" .sql)/$nice/${rate}:$ratio"
    echo "round $r, $(basename "$variant" .sql) expire_messages, niceness $nice, sends $rlabel:"
    echo "  sends alone:         $(echo "$base" | head -1)"
    echo "  expiry:              $done_n tombstoned in ${secs} s ($(echo "scale=0; $done_n / ($secs + 0.0001)" | bc)/s)"
    echo "  sends during expiry: $(echo "$during" | head -1)"
    echo "  p99 ratio (during / alone): $ratio"
    [ "$(echo "$secs < $SECS - 1" | bc)" = 1 ] || echo "  (the backlog outlasted the senders: raise SECS or lower EXPIRE)"
  done
  done
  done
done
echo "p99 ratios (variant/niceness/rate:ratio, rate 0 = closed loop):$ratios"
