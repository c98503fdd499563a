#!/usr/bin/env bash
# make demo-sharded: pgchat over PL/Proxy (docs/scaling.md) on one machine:
# two PostgreSQL clusters holding four partitions (part0, part2 on A; part1,
# part3 on B), the proxy database (chat_proxy) on A, two gateways that
# LISTEN on every partition, HAProxy in front of them (TCP mode, /healthz
# checks; config from gateway/haproxy.cfg) and the demo page served through
# HAProxy, with a token service.  Everything lives in a scratch directory
# removed on exit; Ctrl-C stops it all.
#
# Environment: DEMO_PORT (HAProxy port, default 8080 or a free one),
# DEMO_SMOKE=1 (start, check a sign-in through HAProxy, stop: for tests).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh   # as_owner, free_port, cluster_init, PGBIN
. tests/shard/lib.sh

say() { printf 'demo-sharded: %s\n' "$*"; }
die() {
  printf 'demo-sharded: %s\n' "$*" >&2
  for f in "${SHARD_DIR:-/nonexistent}"/*/postgres.log "${SHARD_DIR:-/nonexistent}"/*.log; do
    [ -f "$f" ] && { echo "--- $f"; tail -15 "$f"; } >&2
  done
  exit 1
}
gateway=${GATEWAY:-$top/gateway/chat-gateway}
[ -x "$gateway" ] || die "gateway/chat-gateway is not built (run: make)"
command -v haproxy >/dev/null || die "haproxy is not installed (run: make deps)"

SHARD_DIR=$(mktemp -d /tmp/pgchat-demo-sharded.XXXXXX)
unset SHARD_PORT_A SHARD_PORT_B   # fresh ports, whatever the caller ran
pids=()
stop_all() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  shard_stop
}
trap stop_all EXIT
trap 'exit 130' INT TERM

say "two clusters, four partitions, the proxy (in $SHARD_DIR)"
shard_start || die "could not start the partitions"
proxy() { shard_psql a proxy "$@"; }
proxy >/dev/null <<'SQL'
SELECT chat.upsert_user(1, 'alice', 'Alice');
SELECT chat.upsert_user(2, 'bob', 'Bob');
SELECT chat.upsert_user(3, 'carol', 'Carol');
SELECT chat.register_device(u, 'web') FROM unnest(ARRAY[1, 2, 3]::bigint[]) AS u;
SELECT count(*) FROM chat.send_message(1, chat.direct_conversation(1, 2), 'Hi Bob! This chat lives on one partition.', 'demo-hello');
-- groups go round robin: four of them land on the four partitions
SELECT count(*) FROM generate_series(1, 4) i,
       LATERAL chat.send_message(1, chat.create_group(1, 'Group ' || i, ARRAY[2, 3]::bigint[]),
                                 'Welcome to group ' || i, 'demo-' || i);
SQL

gw_args=(--dsn "$SHARD_PROXY_DSN" --token-secret-file "$CHAT_TOKEN_SECRET_FILE" --static "$top/web")
for p in $(seq 0 $((SHARD_PARTS - 1))); do v=SHARD_PART_DSN_$p; gw_args+=(--listen-dsn "${!v}"); done
gw_ports=()
for n in 1 2; do
  port=$(free_port) || die "no free port"
  "$gateway" --listen "127.0.0.1:$port" --node "demo_gw$n" "${gw_args[@]}" >>"$SHARD_DIR/gw$n.log" 2>&1 &
  pids+=($!)
  gw_ports+=("$port")
done
for port in "${gw_ports[@]}"; do
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" || die "gateway on $port did not become healthy (logs: $SHARD_DIR/gw*.log)"
done

port=${DEMO_PORT:-8080}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  [ -z "${DEMO_PORT:-}" ] || die "port $port is in use"
  port=$(free_port) || die "no free port"
fi
sed -e "s/bind 127.0.0.1:8080/bind 127.0.0.1:$port/" \
    -e "s/server gw1 127.0.0.1:8081/server gw1 127.0.0.1:${gw_ports[0]}/" \
    -e "s/server gw2 127.0.0.1:8082/server gw2 127.0.0.1:${gw_ports[1]}/" \
    gateway/haproxy.cfg > "$SHARD_DIR/haproxy.cfg"
haproxy -W -db -f "$SHARD_DIR/haproxy.cfg" >>"$SHARD_DIR/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" || die "HAProxy on $port does not answer (log: $SHARD_DIR/haproxy.log)"

if [ -n "${DEMO_SMOKE:-}" ]; then
  # A sign-in and a send through HAProxy, on a conversation of each cluster.
  tokA=$(proxy -c "SELECT chat.issue_token(1, 1)")
  node --input-type=module -e '
    import WebSocket from "ws";
    const [port, token] = process.argv.slice(1);
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, "chat.v1");
    const t = setTimeout(() => { console.error("timeout"); process.exit(1); }, 10000);
    let id = 0; const want = new Map();
    ws.on("open", () => ws.send(JSON.stringify({ type: "auth", token })));
    ws.on("message", (d) => {
      const f = JSON.parse(d);
      if (f.type === "hello") ws.send(JSON.stringify({ id: ++id, type: "conversations" }));
      else if (f.id === 1 && f.type === "ok") {
        const cs = f.result.conversations;
        if (cs.length !== 5) { console.error("conversations", cs.length); process.exit(1); }
        for (const c of cs) { want.set(++id, c.conversation); ws.send(JSON.stringify({ id, type: "send", conversation: c.conversation, body: "smoke" })); }
      } else if (want.has(f.id)) {
        if (f.type !== "ok") { console.error(JSON.stringify(f)); process.exit(1); }
        want.delete(f.id);
        if (!want.size) { clearTimeout(t); console.log("demo-sharded: smoke ok (5 conversations over 4 partitions, through HAProxy)"); ws.close(); process.exit(0); }
      }
    });' "$port" "$tokA" || die "smoke check failed (logs in $SHARD_DIR)"
  exit 0
fi

# The token service (scripts/demo-tokens.mjs) against the proxy.
tok_port=$(free_port) || die "no free port for the token service"
sessions=$SHARD_DIR/sessions.json
links=() sep=
( umask 077; printf '{' > "$sessions" )
for u in 1:alice 2:bob 3:carol; do
  id=${u%%:*} name=${u#*:}
  key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s"%s":{"user":%s,"device":1}' "$sep" "$key" "$id" >> "$sessions"; sep=,
  token=$(proxy -c "SELECT chat.issue_token($id, 1, '1 hour')")
  refresh="http://127.0.0.1:$tok_port/token?session=$key"
  links+=("$(printf '  %-6s http://127.0.0.1:%s/#token=%s&refresh=%s&names=%s' "$name" "$port" "$token" \
    "$(node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' "$refresh")" '1:Alice,2:Bob,3:Carol')")
done
printf '}\n' >> "$sessions"
PGHOST=$SHARD_DIR/a PGPORT=$SHARD_PORT_A PGUSER=postgres PGDATABASE=proxy PSQL=$PGBIN/psql \
  node "$top/scripts/demo-tokens.mjs" 127.0.0.1 "$tok_port" "$sessions" '1 hour' >>"$SHARD_DIR/tokens.log" 2>&1 &
pids+=($!)

echo
echo "pgchat sharded demo: HAProxy on 127.0.0.1:$port -> gateways ${gw_ports[*]};"
echo "4 partitions on clusters A (port $SHARD_PORT_A) and B (port $SHARD_PORT_B); proxy database on A."
echo "Stop cluster B to see conversations on partitions 0 and 2 keep working:"
echo "  PGBIN=$PGBIN $PGBIN/pg_ctl -D $SHARD_DIR/b/data stop   (as postgres when root)"
echo
printf '%s\n' "${links[@]}"
echo
echo "Press Ctrl-C to stop everything (the data goes with $SHARD_DIR)."
wait "${pids[0]}" || true
