#!/usr/bin/env bash
# Search latency and expiry throughput (issue 15), on a throwaway cluster.
#
#   bench/search-expiry.sh                                   # 1,000,000 messages
#   MESSAGES=20000 CONVS=20 QUERIES=20 EXPIRE=5000 WINDOW=1 WINDOWS=4 ROUNDS=1 bench/search-expiry.sh  # smoke run
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
# 3. Expiry, ROUNDS rounds, for each worker setting (NICES: chat.expire_nice,
#    IDLES: chat.expire_idle on/off, DELAYS: chat.expire_delay ms, BATCHES:
#    chat.expire_batch) and send rate (RATES):
#    EXPIRE messages are made due at once (a backlog), pgbench sends with
#    CLIENTS clients for WINDOWS windows of WINDOW seconds, and the expiry
#    worker is started in the odd windows and stopped at their end.  Sends
#    overlapping a worker window are "during", sends inside the other
#    windows "alone": both are measured in the same minute, interleaved, so
#    the slow drift of a shared machine falls on both alike (two separate
#    10 s phases differed by 60% in their p99 from one round to the next).
#    Printed: send p50 / p99 of each, the p99 ratio, and messages
#    tombstoned per second of worker windows.
#    RATES: total send rates (pgbench -R over the CLIENTS clients); 0 is a
#    closed loop, which keeps both cores busy with sends alone (a worker
#    under SCHED_IDLE then gets almost nothing: that is its job); a rate
#    below saturation (the default runs both, "0 1000") is how a
#    deployment runs.
#    VARIANTS: expire_messages definitions to alternate, "installed" or
#    SQL files redefining it (e.g. an older version, to compare in one run).
#    QUERIES=0 skips part 2.
#
# The cluster is the test harness's (fsync off, synchronous_commit off):
# figures measure CPU work and locking, not the disk.  With CHAT_TEST_PGDATA
# and PG* exported (a running cluster of tests/lib/cluster.sh) it uses that
# cluster instead and leaves it running; LOAD=0 then reuses the loaded
# database (exploration: each round tombstones up to EXPIRE messages).
# Not run by the test suite; a smoke run with tiny counts checks that the
# script works.
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
EXPIRE=${EXPIRE:-$((MESSAGES * 2 / 5))}
BATCHES=${BATCHES:-${BATCH:-1000}}
WINDOW=${WINDOW:-2}
WINDOWS=${WINDOWS:-20}
CLIENTS=${CLIENTS:-8}
ROUNDS=${ROUNDS:-3}
NICES=${NICES:-10}
IDLES=${IDLES:-on}
DELAYS=${DELAYS:-200}
VARIANTS=${VARIANTS:-installed}
RATES=${RATES:-0 1000}

work=$(mktemp -d /tmp/chat-bench.XXXXXX)
chmod 755 "$work"
# A cluster exported by the caller (CHAT_TEST_PGDATA, as tests/run.sh does)
# is used and left running; LOAD=0 then keeps its loaded database, to
# measure expiry again without loading for minutes (exploration only).
trap 'cluster_detach; [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
cluster_attach
db=chat_bench_search
q() { "$PGBIN/psql" -qAtX -v ON_ERROR_STOP=1 -d "$db" "$@"; }
if [ "${LOAD:-1}" = 0 ] && [ -z "${CHAT_OWN_CLUSTER:-}" ]; then
  QUERIES=0
  q -c "UPDATE chat.messages SET expires_at = NULL WHERE expires_at IS NOT NULL" >/dev/null
else
new_db "$db"

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
fi

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

echo "== expiry: backlogs of $EXPIRE due messages, batches of $BATCHES, sends for $WINDOWS windows of ${WINDOW}s, worker niceness: $NICES"
cat >"$work/send.sql" <<SQL
\set c random(1, $CONVS)
SELECT chat.send_message((SELECT m.user_id FROM chat.members m WHERE m.conversation_id = :c LIMIT 1), :c, 'load message');
SQL
# The expiry worker is on in the odd windows and off in the even ones
# while the same sends run throughout, so "during" and "alone" are measured
# in the same minute, interleaved: slow drift of a shared machine falls on
# both alike.  The same psql calls mark every window's edges (starting and
# stopping the worker, or nothing), so the harness costs both the same.
# A send counts as "during" when any part of it overlaps an "on" window
# (start = end - latency), as "alone" when it lies inside an "off" window.
stop_worker="DO \$\$ BEGIN
  PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'chat expiry';
  WHILE EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'chat expiry') LOOP
    PERFORM pg_sleep(0.005); PERFORM pg_stat_clear_snapshot();
  END LOOP; END \$\$"
no_worker="DO \$\$ BEGIN
  PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'chat expiry' AND false;
  WHILE EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'chat expiry' AND false) LOOP
    PERFORM pg_sleep(0.005); PERFORM pg_stat_clear_snapshot();
  END LOOP; END \$\$"
# classify WINDOWS_FILE LOG...: "alone" and "during" latencies (ms), one per line
# with its class, of the sends in the pgbench per-transaction logs.
classify() {
  local wf=$1; shift
  cat "$@" | awk -v wf="$wf" '
    BEGIN { while ((getline l < wf) > 0) { split(l, f, " "); n++; ws[n] = f[1]; we[n] = f[2]; on[n] = f[3] } }
    { e = $5 + $6 / 1e6; s = e - $3 / 1e6; cls = ""
      for (i = 1; i <= n; i++) {
        if (s <= we[i] && e >= ws[i] && on[i]) { cls = "during"; break }
        if (s >= ws[i] && e <= we[i] && !on[i]) cls = "alone"
      }
      if (cls != "") printf "%s %.3f\n", cls, $3 / 1000 }'
}
# stats CLASS FILE: "N sends, p50 X ms, p99 Y ms" and Y alone on a second line
stats() {
  awk -v c="$1" '$1 == c {print $2}' "$2" | sort -n | awk '{a[NR] = $1}
    END {
      if (NR == 0) { print "no sends"; print 0; exit }
      i50 = int(NR * 0.5); if (i50 < 1) i50 = 1
      i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
      printf "%d sends, p50 %.2f ms, p99 %.2f ms\n%.3f\n", NR, a[i50], a[i99], a[i99]
    }'
}
ratios=""
q -c "SELECT pg_get_functiondef('chat.expire_messages(integer)'::regprocedure)" >"$work/installed.sql"
echo ";" >>"$work/installed.sql"
secs=$((WINDOW * WINDOWS + 4))
for r in $(seq 1 "$ROUNDS"); do
  for variant in $VARIANTS; do
  for nice in $NICES; do
  for idle in $IDLES; do
  for delay in $DELAYS; do
  for batch in $BATCHES; do
  for rate in $RATES; do
    # the expire_messages to use: the installed one, or a file redefining it
    if [ "$variant" = installed ]; then q -f "$work/installed.sql" >/dev/null; else q -f "$variant" >/dev/null; fi
    q -c "ALTER SYSTEM SET chat.expire_nice = $nice" -c "ALTER SYSTEM SET chat.expire_idle = $idle" \
      -c "ALTER SYSTEM SET chat.expire_delay = $delay" -c "ALTER SYSTEM SET chat.expire_batch = $batch" \
      -c "SELECT pg_reload_conf()" >/dev/null
    # The backlog: messages made due at once.  The vacuum clears the dead
    # rows of that setup update, which a deployment (where sends set
    # expires_at) never has; the dead rows of the tombstones stay.
    q -c "UPDATE chat.messages SET expires_at = now() - interval '1 s'
           WHERE (conversation_id, seq) IN (SELECT conversation_id, seq FROM chat.messages
                                             WHERE kind = 'text' AND deleted_at IS NULL
                                               AND expires_at IS NULL LIMIT $EXPIRE)" >/dev/null
    q -c "VACUUM chat.messages" -c "CHECKPOINT" >/dev/null
    before=$(q -c "SELECT count(*) FROM chat.messages WHERE deleted_at IS NOT NULL")
    label="$(basename "$variant" .sql)/nice $nice/idle $idle/delay $delay/batch $batch/rate $rate"
    run="$work/run$r-$nice-$idle-$delay-$batch-$rate-$(basename "$variant" .sql)"
    mkdir -p "$run"
    rate_opt=()
    [ "$rate" = 0 ] || rate_opt=(-R "$rate")
    (cd "$run" && "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$secs" "${rate_opt[@]}" -f "$work/send.sql" -l "$db" >/dev/null 2>&1) &
    bench_pid=$!
    sleep 3   # warm-up: the senders' first transactions (cold caches, new plans) count in neither
    : >"$run/windows"
    on_secs=0 drained=""
    for w in $(seq 1 "$WINDOWS"); do
      ws=$(date +%s.%N)
      if [ $((w % 2)) = 1 ]; then
        started=$(q -c "SELECT chat.start_expiry_worker()")
        sleep "$WINDOW"
        alive=$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'chat expiry'")
        q -c "$stop_worker" >/dev/null
        we=$(date +%s.%N)
        echo "$ws $we 1" >>"$run/windows"
        on_secs=$(echo "$on_secs + $we - $ws" | bc)
        # a worker that ended by itself ran out of backlog: no later window counts
        [ "$started" = t ] && [ "$alive" = 1 ] || { drained=1; break; }
      else
        q -c "SELECT true" >/dev/null
        sleep "$WINDOW"
        q -c "SELECT 0" >/dev/null
        q -c "$no_worker" >/dev/null
        echo "$ws $(date +%s.%N) 0" >>"$run/windows"
      fi
    done
    wait "$bench_pid"
    after=$(q -c "SELECT count(*) FROM chat.messages WHERE deleted_at IS NOT NULL")
    q -c "UPDATE chat.messages SET expires_at = NULL WHERE expires_at IS NOT NULL" >/dev/null
    classify "$run/windows" "$run"/pgbench_log.* >"$run/classes"
    alone=$(stats alone "$run/classes")
    during=$(stats during "$run/classes")
    if [ "$(echo "$alone" | tail -1)" = 0 ] || [ "$(echo "$during" | tail -1)" = 0 ]; then
      ratio=n/a
    else
      ratio=$(echo "scale=2; $(echo "$during" | tail -1) / $(echo "$alone" | tail -1)" | bc)
    fi
    done_n=$((after - before))
    rlabel=$([ "$rate" = 0 ] && echo "closed loop" || echo "${rate}/s")
    ratios="$ratios
  $label: $ratio"
    echo "round $r, $(basename "$variant" .sql) expire_messages, niceness $nice, SCHED_IDLE $idle, delay ${delay} ms, batches of $batch, sends $rlabel:"
    echo "  sends alone:         $(echo "$alone" | head -1)"
    echo "  sends during expiry: $(echo "$during" | head -1)"
    echo "  expiry:              $done_n tombstoned in ${on_secs} s of worker windows ($(echo "scale=0; $done_n / ($on_secs + 0.0001)" | bc)/s)"
    echo "  p99 ratio (during / alone): $ratio"
    [ -z "$drained" ] || echo "  (the backlog ran out after $(wc -l <"$run/windows") windows: raise EXPIRE)"
  done
  done
  done
  done
  done
  done
done
echo "p99 ratios (during / alone; rate 0 = closed loop):$ratios"
# The rounds of each setting pooled: a p99 over all their sends, steadier
# than any one round's (about 80 sends make a round's p99).
if [ "$ROUNDS" -gt 1 ]; then
  echo "pooled over the $ROUNDS rounds (nice/idle/delay/batch/rate/variant: p99 alone, during, ratio):"
  for key in $(cd "$work" && ls -d run1-* 2>/dev/null | sed 's/^run1-//'); do
    cat "$work"/run*-"$key"/classes >"$work/pooled"
    alone=$(stats alone "$work/pooled" | tail -1)
    during=$(stats during "$work/pooled" | tail -1)
    if [ "$alone" = 0 ] || [ "$during" = 0 ]; then ratio=n/a; else ratio=$(echo "scale=2; $during / $alone" | bc); fi
    echo "  $key: ${alone} ms, ${during} ms, $ratio"
  done
fi
