#!/usr/bin/env bash
# Upgrade path: every released install script (extension/chat--X.sql that has
# a chat--X--*.sql beside it) is installed, given data, and walked to the
# default version with ALTER EXTENSION chat UPDATE.  The result must equal a
# fresh install of the default version object for object (compared through
# pg_dump --binary-upgrade, the only pg_dump mode that lists an extension's
# member objects), and the data of the old version must come through intact.
# Uses the harness cluster (PGHOST/PGPORT/PGUSER), or starts its own.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/lib/cluster.sh
own_cluster=0
if [ -z "${PGPORT:-}" ] || ! "$PGBIN/pg_isready" -q; then
  cluster_start
  own_cluster=1
fi
work=$(mktemp -d /tmp/chat-upgrade.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"; if [ $own_cluster = 1 ]; then cluster_stop; fi' EXIT

fail() { echo "FAIL: $*"; exit 1; }
q() { local db=$1; shift; "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d "$db" "$@"; }
fresh_db() {
  "$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS \"$1\"" -c "CREATE DATABASE \"$1\"" >/dev/null
}

current=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" chat.control)
[ -n "$current" ] || fail "no default_version in chat.control"

# The extension's objects as pg_dump sees them, without OIDs, LSNs and the
# version string (a fresh install and an upgraded one differ only there).
schema_of() {
  "$PGBIN/pg_dump" --binary-upgrade --schema-only -d "$1" \
    | grep -v -e 'binary_upgrade_set_next' -e 'binary_upgrade_create_empty_extension' \
              -e '^-- Name: ' -e '^-- Dumped ' -e '^SET ' -e '^SELECT pg_catalog.set_config' \
              -e '^\\restrict ' -e '^\\unrestrict ' -e '^SELECT pg_catalog.setval(' \
    | sed -e 's/binary_upgrade_set_missing_value([0-9]*/binary_upgrade_set_missing_value(OID/' \
    | grep -v -e "^$" -e "^WHERE oid = '[0-9]*';$"
}

# Contents of the tables an old version has, column by column as it had them.
data_of() {
  local db=$1 cols
  for t in users devices conversations members messages device_cursors push_outbox; do
    cols=$(cat "$work/cols.$t")
    q "$db" -c "SELECT '$t ' || count(*) || ' ' || md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), ''))
                  FROM (SELECT $cols FROM chat.$t) r"
  done
}

fresh_db chat_up_new
q chat_up_new -c "CREATE EXTENSION chat" >/dev/null
schema_of chat_up_new > "$work/fresh.sql"

walked=0
for script in extension/chat--*--*.sql; do
  [ -e "$script" ] || break
  from=$(basename "$script" .sql | sed 's/^chat--\([^-]*\)--.*/\1/')
  [ -f "extension/chat--$from.sql" ] || continue
  echo "--- upgrade $from -> $current"
  fresh_db chat_up_old
  q chat_up_old -c "CREATE EXTENSION chat VERSION '$from'" >/dev/null
  q chat_up_old >/dev/null <<'SQL'
SELECT chat.upsert_user(id, 'user' || id, 'User ' || id) FROM generate_series(1, 5) AS id;
SELECT chat.register_device(1), chat.register_device(2, 'ios', 'push-2'), chat.register_device(3);
SELECT chat.direct_conversation(1, 2);
SELECT chat.create_group(1, 'group', ARRAY[2, 3, 4]);
SELECT chat.send_message(1 + i % 2, 1, 'direct ' || i, 'c' || i) FROM generate_series(1, 10) AS i;
SELECT chat.send_message(1 + i % 3, 2, 'group ' || i) FROM generate_series(1, 10) AS i;
SELECT chat.edit_message(1, 1, 2, 'edited');
SELECT chat.delete_message(2, 1, 3);
SELECT chat.ack(2, 1, 1, 5), chat.mark_read(2, 1, 4);
SELECT chat.remove_member(1, 2, 4);
SQL
  for t in users devices conversations members messages device_cursors push_outbox; do
    q chat_up_old -c "SELECT string_agg(quote_ident(column_name), ',' ORDER BY ordinal_position)
                        FROM information_schema.columns WHERE table_schema = 'chat' AND table_name = '$t'" \
      > "$work/cols.$t"
  done
  data_of chat_up_old > "$work/before.txt"
  q chat_up_old -c "ALTER EXTENSION chat UPDATE" >/dev/null
  got=$(q chat_up_old -c "SELECT extversion FROM pg_extension WHERE extname = 'chat'")
  [ "$got" = "$current" ] || fail "$from: ALTER EXTENSION chat UPDATE reached $got, not $current"
  data_of chat_up_old > "$work/after.txt"
  if ! diff -u "$work/before.txt" "$work/after.txt"; then fail "$from: data changed by the upgrade"; fi
  echo "ok: $from: data intact ($(wc -l < "$work/after.txt") tables)"
  schema_of chat_up_old > "$work/upgraded.sql"
  if ! diff -u "$work/fresh.sql" "$work/upgraded.sql" > "$work/schema.diff"; then
    head -80 "$work/schema.diff"
    fail "$from: the upgraded schema differs from a fresh $current install"
  fi
  echo "ok: $from: upgraded schema equals a fresh $current install ($(wc -l < "$work/fresh.sql") lines)"
  # The upgraded database works: a send continues the seqs without a gap.
  seq=$(q chat_up_old -c "SELECT seq FROM chat.send_message(1, 1, 'after the upgrade')")
  [ "$seq" = "$(q chat_up_old -c "SELECT max(seq) FROM chat.messages WHERE conversation_id = 1")" ] \
    || fail "$from: send after the upgrade"
  echo "ok: $from: send after the upgrade got seq $seq"
  walked=$((walked + 1))
done
[ "$walked" -gt 0 ] || fail "no upgrade script to test (extension/chat--A--B.sql with chat--A.sql)"
echo "upgrade paths tested: $walked"
