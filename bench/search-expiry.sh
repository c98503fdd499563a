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
#    median number of results.
# 3. Expiry: EXPIRE messages are made due at once (a backlog), then, while
#    pgbench sends for SECS seconds with CLIENTS clients, chat.expire_messages
#    runs in batches of BATCH (one transaction each) until the backlog is
#    gone: messages tombstoned per second, and send p50 / p99 with and
#    without expiry running (pgbench per-transaction log).
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

echo "== search: $QUERIES queries"
q <<SQL
SET client_min_messages = warning;
CREATE TEMP TABLE words AS
SELECT i, 'w' || i || substr(md5(i::text), 1, 3) AS w FROM generate_series(1, $VOCAB) i;
CREATE TEMP TABLE timing (ms double precision, n integer);
DO \$\$
DECLARE
    u bigint; w text; t timestamptz; n integer; c integer; k integer;
BEGIN
    FOR i IN 1..$QUERIES LOOP
        c := 1 + floor(random() * $CONVS)::int;
        k := greatest(1, least($VOCAB, floor(exp(random() * ln($VOCAB)))::int));
        SELECT m.user_id INTO u FROM chat.members m WHERE m.conversation_id = c LIMIT 1;
        SELECT words.w INTO w FROM words WHERE words.i = k;
        t := clock_timestamp();
        SELECT count(*) INTO n FROM chat.search(u, w);
        INSERT INTO timing VALUES (extract(epoch FROM clock_timestamp() - t) * 1000, n);
    END LOOP;
END
\$\$;
SELECT format('search: p50 %s ms, p99 %s ms, max %s ms; median results %s (limit 20)',
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
              round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2),
              round(max(ms)::numeric, 2),
              percentile_disc(0.5) WITHIN GROUP (ORDER BY n))
  FROM timing;
SQL

echo "== expiry: $EXPIRE due messages, batches of $BATCH, $CLIENTS senders for ${SECS}s"
cat >"$work/send.sql" <<SQL
\set c random(1, $CONVS)
SELECT chat.send_message((SELECT m.user_id FROM chat.members m WHERE m.conversation_id = :c LIMIT 1), :c, 'load message');
SQL
pct() {  # pct FILE...: p50 and p99 of pgbench per-transaction logs (column 3, microseconds)
  cat "$@" | awk '{print $3}' | sort -n | awk '{a[NR] = $1}
    END {
      if (NR == 0) { print "no transactions"; exit }
      i50 = int(NR * 0.5); if (i50 < 1) i50 = 1
      i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
      printf "%d sends, p50 %.2f ms, p99 %.2f ms\n", NR, a[i50] / 1000, a[i99] / 1000
    }'
}
mkdir -p "$work/base" "$work/exp"
(cd "$work/base" && "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECS" -f "$work/send.sql" -l "$db" >/dev/null 2>&1)
echo "sends alone:        $(pct "$work"/base/pgbench_log.*)"
q -c "UPDATE chat.messages SET expires_at = now() - interval '1 s'
       WHERE (conversation_id, seq) IN (SELECT conversation_id, seq FROM chat.messages
                                         WHERE kind = 'text' AND deleted_at IS NULL LIMIT $EXPIRE)" >/dev/null
(cd "$work/exp" && "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECS" -f "$work/send.sql" -l "$db" >/dev/null 2>&1) &
bench_pid=$!
t0=$(date +%s.%N)
done_n=0
while :; do
  n=$(q -c "SELECT chat.expire_messages($BATCH)")
  done_n=$((done_n + n))
  [ "$n" -lt "$BATCH" ] && break
done
t1=$(date +%s.%N)
wait "$bench_pid"
secs=$(echo "$t1 - $t0" | bc)
echo "expiry:             $done_n tombstoned in ${secs} s ($(echo "scale=0; $done_n / ($secs + 0.0001)" | bc)/s)"
echo "sends during expiry: $(pct "$work"/exp/pgbench_log.*)"
left=$(q -c "SELECT count(*) FROM chat.messages WHERE expires_at <= now()")
echo "due messages left: $left"
