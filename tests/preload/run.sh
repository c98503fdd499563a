#!/usr/bin/env bash
# The library loaded late (no shared_preload_libraries) is reported, never a
# silent fallback: CREATE EXTENSION warns "chat is not in
# shared_preload_libraries" with a hint, and the first send with
# chat.fanout_mode = worker warns once that the worker cannot work, while
# the notification is still delivered (directly).  Needs its own cluster:
# the harness's preloads the library, and a preloaded library cannot be
# observed loading late.  (Loaded late, the library must be loaded in each
# session before chat.live_sessions reads chat.node_timeout: LOAD 'chat'.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cd "$top"
. tests/lib/cluster.sh

tmp=$(mktemp -d /tmp/pgchat-preload.XXXXXX)
chmod 755 "$tmp"; [ "$(id -u)" -eq 0 ] && chown postgres: "$tmp"
port=$(free_port)
cleanup() { as_owner "$PGBIN/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT
cluster_init "$tmp" "$port" '' || exit 1
cat >>"$tmp/data/postgresql.conf" <<CONF
fsync = off
chat.token_secret = 'preload-test-secret'
CONF
as_owner "$PGBIN/pg_ctl" -D "$tmp/data" -l "$tmp/postgres.log" -w -t 60 start >/dev/null
psql() { "$PGBIN/psql" -X -h "$tmp" -p "$port" -U postgres -d postgres "$@"; }

fail=0
check() {  # check NAME PATTERN FILE: FILE must match PATTERN
  if grep -qE "$2" "$3"; then echo "ok - $1"; else echo "not ok - $1"; sed 's/^/    /' "$3"; fail=1; fi
}
count() {  # count NAME PATTERN N FILE: PATTERN occurs N times in FILE
  local n; n=$(grep -cE "$2" "$4" || true)
  if [ "$n" -eq "$3" ]; then echo "ok - $1"; else echo "not ok - $1 ($n, not $3)"; sed 's/^/    /' "$4"; fail=1; fi
}

psql -c "CREATE EXTENSION chat" >"$tmp/create.out" 2>&1 || true
check "late load warns" "WARNING:  chat is not in shared_preload_libraries" "$tmp/create.out"
check "late load hint" "HINT:  Add chat to shared_preload_libraries" "$tmp/create.out"

psql -v ON_ERROR_STOP=1 >"$tmp/send.out" 2>&1 <<'SQL' || true
LOAD 'chat';
SET client_min_messages = warning;
SELECT chat.upsert_user(i, 'u' || i) FROM generate_series(1, 2) i;
SELECT chat.register_device(i) FROM generate_series(1, 2) i;
SELECT chat.node_reset('gw1');
SELECT chat.connect('gw1', 2, 1);
SELECT chat.direct_conversation(1, 2);
LISTEN chat_node_gw1;
SHOW chat.fanout_mode;
SELECT seq FROM chat.send_message(1, 1, 'one');
SELECT seq FROM chat.send_message(1, 1, 'two');
SQL
check "worker fallback warns" "chat.fanout_mode = worker cannot work: chat is not in shared_preload_libraries" "$tmp/send.out"
count "worker fallback warns once per backend" "cannot work" 1 "$tmp/send.out"
check "worker fallback hint" "HINT:  Add chat to shared_preload_libraries and restart, or set chat.fanout_mode = direct" "$tmp/send.out"
count "both messages still notified" 'Asynchronous notification "chat_node_gw1"' 2 "$tmp/send.out"

# A fresh session whose first call makes a conversation (the library not
# loaded yet: no chat.* settings defined) gets a plain id (chat.partitions
# unset counts as 1).
psql -At -v ON_ERROR_STOP=1 >"$tmp/fresh.out" 2>&1 <<'SQL' || true
SELECT 'id=' || chat.direct_conversation(2, 1) AS existing;
SELECT 'loaded=' || count(*) FROM pg_settings WHERE name = 'chat.partitions';
SQL
check "a new session finds a conversation before loading the library" "^id=1$" "$tmp/fresh.out"
check "... and had not loaded it" "^loaded=0$" "$tmp/fresh.out"
psql -At -v ON_ERROR_STOP=1 >"$tmp/fresh2.out" 2>&1 <<'SQL' || true
SELECT chat.upsert_user(3, 'u3');
SELECT 'id=' || chat.direct_conversation(3, 1) AS created;
SQL
check "a new session creates a conversation before loading the library" "^id=2$" "$tmp/fresh2.out"

psql -v ON_ERROR_STOP=1 >"$tmp/direct.out" 2>&1 <<'SQL' || true
LOAD 'chat';
SET chat.fanout_mode = direct;
LISTEN chat_node_gw1;
SELECT seq FROM chat.send_message(1, 1, 'three');
SQL
count "direct mode does not warn of the worker" "cannot work" 0 "$tmp/direct.out"
count "direct mode notifies" 'Asynchronous notification "chat_node_gw1"' 1 "$tmp/direct.out"
exit $fail
