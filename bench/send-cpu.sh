#!/usr/bin/env bash
# PostgreSQL CPU per send through chat.client_request, beside the plpgsql
# client_request it replaced and a hand-written gapless send, measured in
# one run (the machine is shared: compare the ratios, not the absolutes);
# then the latency of client_request send alone against the hand-written
# send, both rate-limited (pgbench -R) to the same rate.
#
#   bench/send-cpu.sh                       # 8 clients, 20 s per script, 1 round
#   SECS=10 ROUNDS=2 CLIENTS=8 bench/send-cpu.sh
#   LAT_SECS=10 LAT_RATE=1000 bench/send-cpu.sh   # the latency phase (LAT_SECS=0 skips it)
#   SENDCPU_JSON=out.json bench/send-cpu.sh       # also write the figures as JSON
#                                                 # (bench/run.sh and bench/report.cjs)
#
# Uses the cluster of the caller (bench/run.sh, tests/run.sh) when there is
# one, in its own database "sendcpu"; otherwise starts a throwaway cluster.
#
# Scripts (interleaved round by round; per script the figures are summed
# over its rounds), 1,000 direct conversations, one sender device each, the
# peer online on node "bench" so every send is fanned out:
#
#   c-request   SELECT chat.client_request('bench', u, 1, {"type":"send",...})
#   sql-request the same through bench_old.client_request: the plpgsql
#               client_request of 0.2.0 before the C dispatcher (envelope
#               checks, then chat.dispatch_request in BEGIN/EXCEPTION)
#   send        SELECT * FROM chat.send_message(...) (no request layer)
#   base-1      one prepared statement: UPDATE chat.conversations ...
#               RETURNING and INSERT INTO chat.messages (no checks, no
#               fanout): the hand-written gapless send
#
# CPU is that of the whole cluster (postmaster, every backend, the notifier
# worker, walwriter...): /proc/<postmaster>/stat utime+stime+cutime+cstime
# (exited backends are reaped into cutime/cstime) plus utime+stime of the
# live children, read before and after each script.  pgbench is not counted.
#
# Latency phase: c-request and base-1, each pgbench -R LAT_RATE over CLIENTS
# connections for LAT_SECS, every transaction logged (-l); latency is from
# the scheduled start (pgbench's open-loop definition, schedule lag
# included), p50/p99 over all logged transactions.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

SECS=${SECS:-20}
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-8}
CONVS=1000
SCRIPTS="c-request sql-request send base-1"  # all four are needed for the ratios
LAT_SECS=${LAT_SECS:-$SECS}
LAT_RATE=${LAT_RATE:-1000}
HZ=$(getconf CLK_TCK)
DB=sendcpu

work=$(mktemp -d /tmp/chat-sendcpu.XXXXXX)
chmod 755 "$work"
trap 'cluster_detach; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
cluster_attach
new_db $DB
sql() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d $DB "$@"; }

echo "setup: $((CONVS * 2)) users with a device each, $CONVS direct conversations, peers online"
sql >/dev/null <<SQL
SELECT count(chat.upsert_user(id, 'u' || id)) FROM generate_series(1, $((CONVS * 2))) AS id;
SELECT count(chat.register_device(id)) FROM generate_series(1, $((CONVS * 2))) AS id;
SELECT count(chat.direct_conversation(2 * i - 1, 2 * i)) FROM generate_series(1, $CONVS) AS i;
-- The peers must stay online for every script, however long the run: with
-- the default chat.node_timeout (30 s) and no heartbeat the node would go
-- silent after the first script, and the later ones would measure the
-- offline path (push outbox lookups instead of notifications).
ALTER DATABASE $DB SET chat.node_timeout = '1d';
SELECT chat.node_reset('bench');
SELECT count(chat.connect('bench', 2 * i - 1, 1)) FROM generate_series(1, $CONVS) AS i;
-- The plpgsql client_request as it was before the C dispatcher.
CREATE SCHEMA bench_old;
CREATE FUNCTION bench_old.client_request(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS \$\$
DECLARE
    rid jsonb;
    result jsonb;
    state text;
    msg text;
BEGIN
    PERFORM FROM chat.devices d
     WHERE d.user_id = client_request.user_id AND d.device_id = client_request.device_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'device % of user % does not exist', device_id, user_id
            USING ERRCODE = 'P0002';
    END IF;
    IF request IS NULL OR jsonb_typeof(request) <> 'object' THEN
        RETURN jsonb_build_object('id', NULL, 'type', 'error', 'code', '22P02',
                                  'error', 'invalid_text_representation',
                                  'message', 'request is not a JSON object');
    END IF;
    rid := coalesce(request -> 'id', 'null');
    IF jsonb_typeof(request -> 'type') IS DISTINCT FROM 'string' THEN
        RETURN jsonb_build_object('id', rid, 'type', 'error', 'code', '22P02',
                                  'error', 'invalid_text_representation',
                                  'message', 'request has no type');
    END IF;
    BEGIN
        result := chat.dispatch_request(node, user_id, device_id, request);
        RETURN jsonb_build_object('id', rid, 'type', 'ok', 'result', result);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        RETURN jsonb_build_object('id', rid, 'type', 'error', 'code', state,
                                  'error', coalesce(chat.condition_name(state), 'error'),
                                  'message', msg);
    END;
END
\$\$;
VACUUM ANALYZE;
SQL

body='a benchmark message of some forty bytes'
for fn in c-request:chat sql-request:bench_old; do
  cat >"$work/${fn%%:*}.pgbench" <<SQL
\set conv random(1, $CONVS)
SELECT ${fn#*:}.client_request('bench', 2 * :conv, 1, format('{"id":1,"type":"send","conversation":%s,"body":"$body"}', :conv::bigint)::jsonb);
SQL
done
cat >"$work/send.pgbench" <<SQL
\set conv random(1, $CONVS)
SELECT * FROM chat.send_message(2 * :conv, :conv, '$body', NULL, NULL, 1);
SQL
cat >"$work/base-1.pgbench" <<SQL
\set conv random(1, $CONVS)
WITH c AS (UPDATE chat.conversations SET last_seq = last_seq + 1, last_activity = now() WHERE id = :conv RETURNING id, last_seq)
INSERT INTO chat.messages (conversation_id, seq, sender_id, sender_device, body) SELECT id, last_seq, 2 * :conv, 1, '$body' FROM c;
SQL

# Check first that both request functions answer ok (a failing script would
# measure error frames).
for f in chat bench_old; do
  r=$(sql -c "SELECT $f.client_request('bench', 2, 1, '{\"id\":1,\"type\":\"send\",\"conversation\":1,\"body\":\"check\"}') ->> 'type'")
  [ "$r" = ok ] || { echo "$f.client_request answered $r" >&2; exit 1; }
done

pm=$(head -1 "$CHAT_TEST_PGDATA/postmaster.pid")
# CPU ticks of the cluster so far: the postmaster with its reaped children,
# plus its live children.
cluster_ticks() {
  local t p
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
  for p in $(pgrep -P "$pm"); do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}

# run SCRIPT: one pgbench run; appends "transactions ticks" to $work/SCRIPT.
run() {
  local before after n
  sleep 1
  before=$(cluster_ticks)
  n=$(set -o pipefail; "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECS" -f "$work/$1.pgbench" $DB 2>"$work/err" \
      | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p') \
    || { cat "$work/err" >&2; exit 1; }
  sleep 1   # the backends exit and are reaped into cutime
  after=$(cluster_ticks)
  echo "$n $(( after - before ))" >>"$work/$1"
}

echo "$CLIENTS clients, ${SECS}s per script, $ROUNDS round(s), CPU of the whole cluster"
for r in $(seq 1 "$ROUNDS"); do
  for s in $SCRIPTS; do run "$s"; done
done

declare -A us tps
printf '%-12s %10s %10s %12s %12s\n' script sends TPS "CPU µs/send" "× base-1"
for s in $SCRIPTS; do
  read -r n ticks < <(awk '{n += $1; t += $2} END {print n, t}' "$work/$s")
  us[$s]=$(echo "$ticks * 1000000 / $HZ / $n" | bc -l)
  tps[$s]=$(echo "$n / ($SECS * $ROUNDS)" | bc -l)
done
for s in $SCRIPTS; do
  printf '%-12s %10d %10.0f %12.1f %12.2f\n' "$s" "$(awk '{n += $1} END {print n}' "$work/$s")" "${tps[$s]}" "${us[$s]}" \
    "$(echo "${us[$s]} / ${us[base-1]}" | bc -l)"
done
printf 'c-request / sql-request CPU per send: %.2f\n' "$(echo "${us[c-request]} / ${us[sql-request]}" | bc -l)"
printf 'c-request / send_message CPU per send: %.2f\n' "$(echo "${us[c-request]} / ${us[send]}" | bc -l)"

# lat SCRIPT: one rate-limited pgbench run with every transaction logged;
# prints "n p50_ms p99_ms".
lat() {
  ( cd "$work" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$LAT_SECS" -R "$LAT_RATE" \
      -l --log-prefix="lat-$1" -f "$work/$1.pgbench" $DB >/dev/null 2>"$work/err" ) \
    || { cat "$work/err" >&2; exit 1; }
  cat "$work"/lat-"$1".* | awk '{print $3}' | sort -n | awk '
    { v[NR] = $1 }
    END { if (NR == 0) { print 0, -1, -1; exit }
          i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
          printf "%d %.3f %.3f\n", NR, v[i50] / 1000, v[i99] / 1000 }'
}
declare -A lat_n lat_p50 lat_p99
if [ "$LAT_SECS" != 0 ]; then
  echo "latency: pgbench -R $LAT_RATE over $CLIENTS connections, ${LAT_SECS}s per script"
  printf '%-12s %10s %10s %10s\n' script txns "p50 ms" "p99 ms"
  for s in c-request base-1; do
    sleep 1
    read -r lat_n[$s] lat_p50[$s] lat_p99[$s] < <(lat "$s")
    printf '%-12s %10d %10.3f %10.3f\n' "$s" "${lat_n[$s]}" "${lat_p50[$s]}" "${lat_p99[$s]}"
  done
  printf 'c-request / base-1 p99 at %d/s: %.2f\n' "$LAT_RATE" "$(echo "${lat_p99[c-request]} / ${lat_p99[base-1]}" | bc -l)"
fi

gaps=$(sql -c "SELECT count(*) FROM chat.conversations c WHERE c.last_seq <> (SELECT count(*) FROM chat.messages m WHERE m.conversation_id = c.id)")
echo "conversations with a gap after the load: $gaps"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
if [ -n "${SENDCPU_JSON:-}" ]; then
  {
    printf '{"label":"pgbench","run":"send-cpu","scenario":"send-cpu","clients":%d,"secs":%s,"rounds":%d,"gaps":%d,"scripts":{' \
      "$CLIENTS" "$SECS" "$ROUNDS" "$gaps"
    sep=
    for s in $SCRIPTS; do
      printf '%s"%s":{"sends":%d,"tps":%.1f,"cpu_us":%.2f}' "$sep" "$s" \
        "$(awk '{n += $1} END {print n}' "$work/$s")" "${tps[$s]}" "${us[$s]}"
      sep=,
    done
    printf '},"latency":{"rate":%d,"secs":%s' "$LAT_RATE" "$LAT_SECS"
    if [ "$LAT_SECS" != 0 ]; then
      for s in c-request base-1; do
        printf ',"%s":{"n":%d,"p50_ms":%s,"p99_ms":%s}' "$s" "${lat_n[$s]}" "${lat_p50[$s]}" "${lat_p99[$s]}"
      done
    fi
    printf '},"load_avg":"%s"}\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$SENDCPU_JSON"
fi
[ "$gaps" = 0 ]
