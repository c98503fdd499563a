#!/usr/bin/env bash
# make demo: a PostgreSQL cluster in .demo/ (kept between runs), the chat
# extension with demo users alice, bob and carol, chat-gateway serving the
# demo page, chat-media storing attachments in .demo/media, and a small token service standing in for the application
# backend (scripts/demo-tokens.mjs: the page asks it for a fresh token before
# the current one expires); prints one link per user.  Ctrl-C stops them all.
#
# Environment: DEMO_PORT (gateway port, default 8080 or a free one),
# DEMO_LISTEN (address, default 127.0.0.1), DEMO_DIR (default .demo), GATEWAY (binary),
# DEMO_TOKEN_TTL (lifetime of the tokens the page gets, default '1 hour').
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh   # as_owner, free_port, PGBIN

demo=$(mkdir -p "${DEMO_DIR:-.demo}" && cd "${DEMO_DIR:-.demo}" && pwd)
pgdata=$demo/data
secret_file=$demo/token-secret
listen=${DEMO_LISTEN:-127.0.0.1}
db=chat_demo
gateway=${GATEWAY:-$top/gateway/chat-gateway}
media=${MEDIA:-$top/gateway/chat-media}

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ -x "$gateway" ] || die "gateway/chat-gateway is not built (run: make)"
[ -x "$media" ] || die "gateway/chat-media is not built (run: make)"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL binaries not found in $PGBIN (run: make deps)"

# initdb refuses root: as root the cluster belongs to postgres, who must reach .demo.
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$demo"
  runuser -u postgres -- test -w "$demo" || die "user postgres cannot write $demo (put the checkout where postgres can reach it)"
fi

# The token secret is made once; the database signs with it, the gateway verifies with it.
if [ ! -s "$secret_file" ]; then
  ( umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret_file" )
  say "generated a token secret in $secret_file"
fi

if [ ! -f "$pgdata/PG_VERSION" ]; then
  say "creating a PostgreSQL cluster in $pgdata"
  as_owner "$PGBIN/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$demo/initdb.log" 2>&1 \
    || { cat "$demo/initdb.log"; die "initdb failed"; }
  cat >>"$pgdata/postgresql.conf" <<CONF

# pgchat demo
listen_addresses = ''
unix_socket_directories = '$demo'
port = 5432
shared_preload_libraries = 'chat'
chat.token_secret = '$(cat "$secret_file")'
max_connections = 50
CONF
fi

pg() { "$PGBIN/psql" -qAtX -v ON_ERROR_STOP=1 -h "$demo" -p 5432 -U postgres "$@"; }

gw_pid=
tok_pid=
media_pid=
stop_all() {
  trap - INT TERM EXIT
  echo
  if [ -n "$tok_pid" ]; then kill -TERM "$tok_pid" 2>/dev/null || true; wait "$tok_pid" 2>/dev/null || true; fi
  if [ -n "$media_pid" ]; then kill -TERM "$media_pid" 2>/dev/null || true; wait "$media_pid" 2>/dev/null || true; fi
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    say "stopping the gateway"
    kill -TERM "$gw_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  if as_owner "$PGBIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    say "stopping PostgreSQL"
    as_owner "$PGBIN/pg_ctl" -D "$pgdata" -m fast -w -t 30 stop >/dev/null || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

if as_owner "$PGBIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
  say "PostgreSQL is already running in $pgdata"
else
  as_owner "$PGBIN/pg_ctl" -D "$pgdata" -l "$demo/postgres.log" -w -t 60 start >/dev/null \
    || { tail -20 "$demo/postgres.log"; die "PostgreSQL did not start (log: $demo/postgres.log)"; }
fi

# Database, extension and demo data; every step is idempotent, so history survives.
[ "$(pg -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" = 1 ] || pg -d postgres -c "CREATE DATABASE $db"
pg -d "$db" >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS chat;
ALTER EXTENSION chat UPDATE;  -- a .demo/ from an older checkout
SELECT chat.upsert_user(1, 'alice', 'Alice');
SELECT chat.upsert_user(2, 'bob', 'Bob');
SELECT chat.upsert_user(3, 'carol', 'Carol');
-- One web device per demo user, made once.
SELECT chat.register_device(u, 'web') FROM unnest(ARRAY[1, 2, 3]::bigint[]) AS u
 WHERE NOT EXISTS (SELECT 1 FROM chat.devices d WHERE d.user_id = u);
-- A direct chat alice-bob and a group of three, each with a first message
-- (client_msg_id makes the sends idempotent).
SELECT count(*) FROM chat.send_message(1, chat.direct_conversation(1, 2), 'Hi Bob! This is the pgchat demo.', 'demo-hello');
SELECT count(*) FROM chat.send_message(2, chat.direct_conversation(2, 1), 'Hi Alice! Type here, I see it live.', 'demo-reply');
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM chat.conversations WHERE kind = 'group' AND title = 'Demo group') THEN
    PERFORM chat.create_group(1, 'Demo group', ARRAY[2, 3]::bigint[]);
  END IF;
END $$;
SELECT count(*) FROM chat.send_message(1, (SELECT id FROM chat.conversations WHERE kind = 'group' AND title = 'Demo group' ORDER BY id LIMIT 1),
                                       'Welcome, Bob and Carol!', 'demo-welcome');
SQL

# The gateway port: 8080 when free, else any free one.
port=${DEMO_PORT:-8080}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  [ -z "${DEMO_PORT:-}" ] || die "port $port is in use"
  port=$(free_port) || die "no free port"
fi

host=$listen
[ "$host" = 0.0.0.0 ] && host=127.0.0.1

# chat-media: the bytes of attachments (docs/media.md), on a port of its own.
media_port=$(free_port) || die "no free port for chat-media"
"$media" --listen "$listen:$media_port" --dsn "host=$demo port=5432 user=postgres dbname=$db" \
  --token-secret-file "$secret_file" --media-dir "$demo/media" >>"$demo/media.log" 2>&1 &
media_pid=$!

"$gateway" --listen "$listen:$port" --node demo \
  --dsn "host=$demo port=5432 user=postgres dbname=$db" \
  --token-secret-file "$secret_file" --static "$top/web" \
  --media-url "http://$host:$media_port" >>"$demo/gateway.log" 2>&1 &
gw_pid=$!

healthy=
for _ in $(seq 1 100); do
  kill -0 "$gw_pid" 2>/dev/null || { tail -20 "$demo/gateway.log"; die "the gateway exited (log: $demo/gateway.log)"; }
  if curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; then healthy=1; break; fi
  sleep 0.1
done
[ -n "$healthy" ] || { tail -20 "$demo/gateway.log"; die "the gateway did not become healthy within 10 s (log: $demo/gateway.log)"; }

names='1:Alice,2:Bob,3:Carol'
ttl=${DEMO_TOKEN_TTL:-1 hour}

# The token service: one random session key per demo user stands for the
# application's own login; the page fetches fresh tokens with it.
tok_port=$(free_port) || die "no free port for the token service"
sessions=$demo/sessions.json
links=()
( umask 077; printf '{' > "$sessions" )
sep=
for u in 1:alice 2:bob 3:carol; do
  id=${u%%:*} name=${u#*:}
  dev=$(pg -d "$db" -c "SELECT min(device_id) FROM chat.devices WHERE user_id = $id")
  key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s"%s":{"user":%s,"device":%s}' "$sep" "$key" "$id" "$dev" >> "$sessions"
  sep=,
  token=$(pg -d "$db" -c "SELECT chat.issue_token($id, $dev, '$ttl')")
  refresh="http://$host:$tok_port/token?session=$key"
  links+=("$(printf '  %-6s http://%s:%s/#token=%s&refresh=%s&names=%s' "$name" "$host" "$port" "$token" \
    "$(node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' "$refresh")" "$names")")
done
printf '}\n' >> "$sessions"
PGHOST=$demo PGPORT=5432 PGUSER=postgres PGDATABASE=$db PSQL=$PGBIN/psql \
  node "$top/scripts/demo-tokens.mjs" "$listen" "$tok_port" "$sessions" "$ttl" >>"$demo/tokens.log" 2>&1 &
tok_pid=$!

echo
echo "pgchat demo is running (gateway pid $gw_pid, chat-media pid $media_pid, token service pid $tok_pid, logs in $demo/)."
echo "Open one link per user, e.g. alice and bob in two browser windows"
echo "(tokens live $ttl; the page gets fresh ones from the token service):"
echo
printf '%s\n' "${links[@]}"
echo
echo "Press Ctrl-C to stop the gateway and PostgreSQL (the data stays in $demo/)."
wait "$gw_pid" || true
say "the gateway stopped (log: $demo/gateway.log)"
