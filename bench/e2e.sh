#!/usr/bin/env bash
# End-to-end encryption figures (docs/e2e.md "Figures"), on a throwaway
# cluster with the test harness's settings (fsync off: CPU and locking, not
# the disk):
#
#   1. one-time key claim throughput: pgbench clients claiming from the
#      pools of DEVICES devices of 200 keys each (chat.keys_claim; each
#      claim deletes the key it hands out under FOR UPDATE SKIP LOCKED);
#   2. to-device latency: a to_device request through a gateway until the
#      event reaches the recipient's connection (bench/e2e-client.mjs);
#   3. the cost of encrypting to a group of GROUP member devices: the first
#      message (X3DH sessions + the sender key shared with every device)
#      and the next ones (one AES-GCM encryption and one signature), client
#      CPU only (bench/e2e-client.mjs, an in-memory key directory).
#
#   bench/e2e.sh                                   # small counts
#   SECS=10 CLIENTS="1 8" DEVICES=50 LATENCY=500 GROUP=256 bench/e2e.sh
#
# Smoke-run only so far (tiny counts on a shared machine): no figures are
# published from it yet.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

SECS=${SECS:-3}
CLIENTS=${CLIENTS:-"1 4"}
DEVICES=${DEVICES:-20}
LATENCY=${LATENCY:-50}
GROUP=${GROUP:-256}

work=$(mktemp -d /tmp/chat-bench-e2e.XXXXXX)
chmod 755 "$work"
gw_pid=
cleanup() {
  [ -n "$gw_pid" ] && kill -TERM "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null || true
  cluster_stop
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_start
db=chat_bench_e2e
new_db $db
q() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d $db "$@"; }

echo "== 1. keys_claim throughput ($DEVICES devices x 200 one-time keys, ${SECS}s a point)"
q >/dev/null <<SQL
SELECT chat.upsert_user(i, 'u' || i) FROM generate_series(1, $DEVICES + 64) i;
SELECT chat.register_device(i) FROM generate_series(1, $DEVICES + 64) i;
-- keys are claimed only between users who share a conversation
SELECT chat.create_group(1, 'bench', ARRAY(SELECT generate_series(2, $DEVICES + 64))::bigint[]);
SQL
refill() {
  q >/dev/null <<SQL
DELETE FROM chat.one_time_keys;
SELECT chat.keys_upload(i, 1, 'IK' || i, '{"id":1,"key":"S","signature":"G"}',
         (SELECT jsonb_agg(jsonb_build_object('id', b * 100 + k, 'key', 'K' || k)) FROM generate_series(1, 100) k), '{"id":"f","key":"F","signature":"G"}')
  FROM generate_series(1, $DEVICES) i, generate_series(1, 2) b;
SQL
}
cat >"$work/claim.pgbench" <<SQL
\set target random(1, $DEVICES)
\set claimer random($DEVICES + 1, $DEVICES + 64)
SELECT count(*) FROM chat.keys_claim(:claimer, 1, jsonb_build_array(jsonb_build_object('user', :target, 'device', 1)));
SQL
for c in $CLIENTS; do
  refill
  tps=$("$PGBIN/pgbench" -n -c "$c" -j "$c" -T "$SECS" -f "$work/claim.pgbench" $db 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  left=$(q -c "SELECT count(*) FROM chat.one_time_keys")
  echo "clients $c: $tps claims/s ($(( DEVICES * 200 - left )) one-time keys handed out, the rest fallback)"
done

echo "== 2. to-device latency and 3. group encryption cost"
port=$(free_port)
gateway/chat-gateway --listen "127.0.0.1:$port" --node benche2e --rate 100000 \
  --dsn "host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db" \
  --token-secret-file "$CHAT_TOKEN_SECRET_FILE" >"$work/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break; sleep 0.1; done
t1=$(q -c "SELECT chat.issue_token(1, 1, '1 hour')")
t2=$(q -c "SELECT chat.issue_token(2, 1, '1 hour')")
node bench/e2e-client.mjs --url "ws://127.0.0.1:$port/ws" --token1 "$t1" --token2 "$t2" \
  --user2 2 --latency "$LATENCY" --group "$GROUP"
