#!/usr/bin/env bash
# Browser test: the demo page in headless Chromium (Playwright) against a real
# gateway on a free port, serving web/ and talking to a new database of the
# harness cluster (tests/run.sh), or of its own cluster when run alone.
# BROWSER_TESTS: the test files to run (default: every one in tests/browser/).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/lib/cluster.sh

gw_pid=
media_pid=
cleanup() {
  if [ -n "$media_pid" ]; then kill -TERM "$media_pid" 2>/dev/null || true; wait "$media_pid" 2>/dev/null || true; fi
  [ -z "${media_dir:-}" ] || rm -rf "$media_dir"
  if [ -n "$gw_pid" ] && kill -TERM "$gw_pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  cluster_detach
}
trap cleanup EXIT
cluster_attach

gateway=${GATEWAY:-$top/gateway/chat-gateway}   # GATEWAY: another build, e.g. the ASan one
media=${MEDIA:-$top/gateway/chat-media}
[ -x "$media" ] || { echo "browser: $media is not built"; exit 1; }
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$gateway" ] || { echo "browser: $gateway is not built"; exit 1; }
[ -x "$chromium" ] || { echo "browser: $chromium not found (apt-get install chromium)"; exit 1; }
[ -d node_modules/playwright-core ] || { echo "browser: node_modules/playwright-core missing (npm ci)"; exit 1; }

artifacts=$top/test-artifacts/browser
rm -rf "$artifacts"
mkdir -p "$artifacts"
db=chat_browser
new_db "$db"

psql_db() { "$PGBIN/psql" -qAtX -v ON_ERROR_STOP=1 -d "$db" "$@"; }

# alice (1), bob (2), carol (3); a direct chat, a group of three, and a
# conversation of alice and bob with 45 messages for history paging.
setup=$(psql_db <<'SQL'
SET client_min_messages = warning;
SELECT chat.upsert_user(1, 'alice'), chat.upsert_user(2, 'bob'), chat.upsert_user(3, 'carol');
SELECT chat.register_device(u) FROM unnest(ARRAY[1, 2, 3]::bigint[]) u;
SELECT chat.create_group(1, 'History', ARRAY[2]::bigint[]) \gset hist_
SELECT count(*) FROM generate_series(1, 45) i, chat.send_message(1, :hist_create_group, 'history ' || i, 'h' || i);
SELECT count(*) FROM chat.mark_read(2, :hist_create_group, 1000);
SELECT json_build_object(
  'direct', chat.direct_conversation(1, 2),
  'group', chat.create_group(1, 'Demo group', ARRAY[2, 3]::bigint[]),
  'history', :hist_create_group,
  'alice', chat.issue_token(1, 1, '1 hour'),
  'bob', chat.issue_token(2, 1, '1 hour'),
  'carol', chat.issue_token(3, 1, '1 hour'));
SQL
)
json=$(printf '%s\n' "$setup" | tail -1)
field() { node -e 'const o = JSON.parse(process.argv[1]); process.stdout.write(String(o[process.argv[2]]))' "$json" "$1"; }

# chat-media for the attachments (docs/media.md)
media_port=$(free_port)
media_dir=$(mktemp -d /tmp/chat-browser-media.XXXXXX)
"$media" --listen "127.0.0.1:$media_port" --dsn "host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db" \
  --token-secret-file "$CHAT_TOKEN_SECRET_FILE" --media-dir "$media_dir" >"$artifacts/media.log" 2>&1 &
media_pid=$!

# A VAPID key, so that hello offers notifications (push.test.mjs).
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$artifacts/vapid.pem"

port=$(free_port)
"$gateway" --listen "127.0.0.1:$port" --node browser \
  --dsn "host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db" \
  --token-secret-file "$CHAT_TOKEN_SECRET_FILE" --static "$top/web" \
  --media-url "http://127.0.0.1:$media_port" \
  --vapid-public-key "$artifacts/vapid.pem" >"$artifacts/gateway.log" 2>&1 &
gw_pid=$!

for i in $(seq 1 100); do
  kill -0 "$gw_pid" 2>/dev/null || { cat "$artifacts/gateway.log"; echo "browser: the gateway exited"; exit 1; }
  curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
  [ "$i" -lt 100 ] || { cat "$artifacts/gateway.log"; echo "browser: the gateway did not become healthy"; exit 1; }
  sleep 0.1
done

export BASE_URL="http://127.0.0.1:$port" ARTIFACTS="$artifacts" CHROMIUM="$chromium"
export DB_DSN="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db" PGBIN   # e2e.test.mjs reads the server's copy
export DIRECT=$(field direct) GROUP=$(field group) HISTORY=$(field history)
export TOKENS=$(node -e 'const o = JSON.parse(process.argv[1]); console.log(JSON.stringify({alice: o.alice, bob: o.bob, carol: o.carol}))' "$json")
status=0
timeout 300 node --test --test-reporter=spec --test-concurrency=1 ${BROWSER_TESTS:-tests/browser/} || status=$?
[ "$status" -eq 0 ] || { echo "browser: gateway log:"; tail -40 "$artifacts/gateway.log"; }
exit "$status"
