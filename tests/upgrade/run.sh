#!/usr/bin/env bash
# Upgrade path: every released install script (extension/chat--X.sql that has
# a chat--X--*.sql beside it) is installed, given data, and walked to the
# default version with ALTER EXTENSION chat UPDATE.  The result must equal a
# fresh install of the default version object for object (compared through
# pg_dump --binary-upgrade, the only pg_dump mode that lists an extension's
# member objects), and the data of the old version must come through intact.
# Uses the harness cluster, or starts its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
stage_begin chat-upgrade

fail() { echo "FAIL: $*"; exit 1; }
q() { local db=$1; shift; "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d "$db" "$@"; }
fresh_db() {
  "$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS \"$1\"" -c "CREATE DATABASE \"$1\"" >/dev/null
}

current=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" chat.control)
[ -n "$current" ] || fail "no default_version in chat.control"

# The extension's objects as pg_dump sees them, without OIDs, LSNs, the
# version string and the stored default of a column added by ALTER TABLE
# (attmissingval: how the rows written before it read the default).
schema_of() {
  "$PGBIN/pg_dump" --binary-upgrade --schema-only -d "$1" \
    | grep -v -e 'binary_upgrade_set_next' -e 'binary_upgrade_create_empty_extension' \
              -e '^-- Name: ' -e '^-- Dumped ' -e '^SET ' -e '^SELECT pg_catalog.set_config' \
              -e '^\\restrict ' -e '^\\unrestrict ' -e '^SELECT pg_catalog.setval(' \
              -e 'binary_upgrade_set_missing_value' -e '^-- set missing value' \
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
  # Rows as the old version wrote them.  Plain INSERTs, because the old
  # functions cannot run: chat.so is already the new one, and its C code
  # expects the new schema (which is why the upgrade must follow the
  # install at once; README "Upgrading").
  # 'peers' is 0.1.0's name for what later versions call 'contacts'.
  privacy=contacts; [ "$from" = 0.1.0 ] && privacy=peers
  q chat_up_old -v privacy="$privacy" >/dev/null <<'SQL'
INSERT INTO chat.users (id, handle, display_name, presence_privacy, last_device_id)
SELECT id, 'user' || id, 'User ' || id, CASE WHEN id = 3 THEN :'privacy' ELSE 'everyone' END,
       CASE WHEN id <= 3 THEN 1 ELSE 0 END
  FROM generate_series(1, 5) AS id;
INSERT INTO chat.devices (user_id, device_id, platform, push_token)
VALUES (1, 1, 'web', NULL), (2, 1, 'ios', 'push-2'), (3, 1, 'web', NULL);
INSERT INTO chat.conversations (id, kind, direct_low, direct_high, last_seq)
VALUES (1, 'direct', 1, 2, 10);
INSERT INTO chat.conversations (id, kind, title, last_seq) VALUES (2, 'group', 'group', 11);
SELECT setval('chat.conversations_id_seq', 2);
INSERT INTO chat.members (conversation_id, user_id, role, delivered_seq, read_seq)
VALUES (1, 1, 'member', 10, 10), (1, 2, 'member', 5, 4),
       (2, 1, 'owner', 11, 11), (2, 2, 'member', 0, 0), (2, 3, 'member', 3, 3);
INSERT INTO chat.members (conversation_id, user_id, role, left_at) VALUES (2, 4, 'member', now());
INSERT INTO chat.messages (conversation_id, seq, sender_id, sender_device, kind, body, client_msg_id)
SELECT 1, i, 1 + i % 2, 1, 'text', 'direct ' || i, 'c' || i FROM generate_series(1, 10) AS i;
INSERT INTO chat.messages (conversation_id, seq, sender_id, kind, body)
VALUES (2, 1, 1, 'system', '{"action": "created", "by": 1, "members": [1, 2, 3, 4]}');
INSERT INTO chat.messages (conversation_id, seq, sender_id, kind, body)
SELECT 2, i, 1 + i % 3, 'text', 'group ' || i FROM generate_series(2, 11) AS i;
UPDATE chat.messages SET body = 'edited', edited_at = now() WHERE conversation_id = 1 AND seq = 2;
UPDATE chat.messages SET body = NULL, deleted_at = now() WHERE conversation_id = 1 AND seq = 3;
INSERT INTO chat.device_cursors (user_id, device_id, conversation_id, acked_seq) VALUES (2, 1, 1, 5);
INSERT INTO chat.push_outbox (user_id, device_id, push_token, conversation_id, seq, payload)
VALUES (2, 1, 'push-2', 2, 11, '{"type": "message"}');
SQL
  for t in users devices conversations members messages device_cursors push_outbox; do
    q chat_up_old -c "SELECT string_agg(quote_ident(column_name), ',' ORDER BY ordinal_position)
                        FROM information_schema.columns WHERE table_schema = 'chat' AND table_name = '$t'" \
      > "$work/cols.$t"
  done
  # presence_privacy is migrated on purpose ('peers' -> 'contacts', checked below).
  sed -i 's/,presence_privacy//' "$work/cols.users"
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
  # What the upgrade derived: 'peers' became 'contacts', last_sent_seq
  # was filled from the text messages (direct: 1 wrote the even seqs, 2 the
  # odd; group: seq i by user 1 + i % 3, the system message not counted).
  got=$(q chat_up_old -c "SELECT presence_privacy FROM chat.users WHERE id = 3")
  [ "$got" = contacts ] || fail "$from: presence privacy 'peers' became '$got', not 'contacts'"
  if [ "$from" = 0.1.0 ]; then  # 0.2.0 and later keep last_sent_seq themselves
    got=$(q chat_up_old -c "SELECT string_agg(user_id || ':' || last_sent_seq, ' ' ORDER BY conversation_id, user_id) FROM chat.members")
    [ "$got" = "1:10 2:9 1:9 2:10 3:11 4:0" ] || fail "$from: last_sent_seq after the upgrade: $got"
  else
    q chat_up_old -c "UPDATE chat.members SET last_sent_seq = CASE conversation_id WHEN 1 THEN 9 + (user_id = 1)::int ELSE 11 END WHERE user_id IN (1, 2)" >/dev/null
  fi
  got=$(q chat_up_old -c "SELECT string_agg(c::text, ' ') FROM chat.contacts(1) c")
  [ "$got" = 2 ] || fail "$from: contacts of user 1 after the upgrade: '$got'"
  echo "ok: $from: privacy, last_sent_seq and contacts derived"
  # The upgraded database works: sends continue the seqs without a gap, an
  # edit appends its entry, sync and history read old and new rows.
  seq=$(q chat_up_old -c "SELECT seq FROM chat.send_message(1, 1, 'after the upgrade', 'c-new', NULL, 1)")
  [ "$seq" = 11 ] || fail "$from: send after the upgrade got seq $seq, not 11"
  q chat_up_old -c "SELECT chat.edit_message(1, 1, 11, 'edited after the upgrade')" >/dev/null
  got=$(q chat_up_old -c "SELECT string_agg(seq || ':' || kind || ':' || coalesce(target::text, '-'), ' ' ORDER BY seq)
                            FROM chat.sync(2, 1) WHERE conversation_id = 1 AND seq > 9")
  [ "$got" = "10:text:- 11:text:- 12:edit:11" ] || fail "$from: sync after the upgrade: $got"
  got=$(q chat_up_old -c "SELECT count(*) FROM chat.history(2, 1, NULL, 100)")
  [ "$got" = 12 ] || fail "$from: history after the upgrade has $got rows, not 12"
  echo "ok: $from: send, edit entry, sync and history after the upgrade"
  # Users of the old version get the new profile columns' defaults, and a
  # block stops a send (the C send path reads chat.blocks).
  got=$(q chat_up_old -c "SELECT string_agg(coalesce(about, '-') || ':' || coalesce(avatar, '-') || ':' || read_receipts, ' ' ORDER BY id) FROM chat.users WHERE id <= 2")
  [ "$got" = "-:-:true -:-:true" ] || fail "$from: profile columns after the upgrade: $got"
  # avatars (issue 15): a ready image profile upload (no conversation) of the user's own
  q chat_up_old -c "INSERT INTO chat.attachments (id, owner_id, mime, size, sha256, state)
                    VALUES ('00000000-0000-4000-8000-0000000000a1', 1, 'image/png', 10, repeat('a', 64), 'ready')" >/dev/null
  q chat_up_old -c "SELECT chat.set_profile(1, 'One', 'about one', '00000000-0000-4000-8000-0000000000a1'), chat.block(2, 1)" >/dev/null
  got=$(q chat_up_old -c "SELECT display_name || ':' || about || ':' || avatar FROM chat.profile(2, ARRAY[1])")
  [ "$got" = "One:about one:00000000-0000-4000-8000-0000000000a1" ] || fail "$from: profile after the upgrade: $got"
  if q chat_up_old -c "SELECT chat.send_message(1, 1, 'blocked')" >/dev/null 2>"$work/blocked.err"; then
    fail "$from: a blocked user could send after the upgrade"
  fi
  grep -q "blocked by user 2" "$work/blocked.err" || fail "$from: blocked send: $(cat "$work/blocked.err")"
  echo "ok: $from: profiles and blocks after the upgrade"
  walked=$((walked + 1))
done
[ "$walked" -gt 0 ] || fail "no upgrade script to test (extension/chat--A--B.sql with chat--A.sql)"

# chat_proxy (PL/Proxy) keeps no data: each released proxy/chat_proxy--X.sql
# has a generated upgrade script to the current version, whose result must
# equal a fresh install of chat_proxy.
proxy_schema() { schema_of "$1" | grep -v -i -e 'plproxy' -e 'chat_partitions'; }
fresh_db chat_up_proxy_new
q chat_up_proxy_new -c "SET client_min_messages = warning" -c "CREATE EXTENSION chat_proxy CASCADE" >/dev/null
q chat_up_proxy_new -c "SELECT chat_proxy.configure(ARRAY['dbname=p0', 'dbname=p1'])" >/dev/null
proxy_schema chat_up_proxy_new > "$work/proxy-fresh.sql"
for script in proxy/chat_proxy--*.sql; do
  from=$(basename "$script" .sql | sed 's/^chat_proxy--//')
  case $from in *--*|"$current") continue ;; esac
  [ -f "proxy/chat_proxy--$from--$current.sql" ] || fail "chat_proxy $from: no proxy/chat_proxy--$from--$current.sql (make builds it)"
  fresh_db chat_up_proxy_old
  q chat_up_proxy_old -c "SET client_min_messages = warning" -c "CREATE EXTENSION chat_proxy VERSION '$from' CASCADE" >/dev/null
  q chat_up_proxy_old -c "SELECT chat_proxy.configure(ARRAY['dbname=p0', 'dbname=p1'])" >/dev/null
  q chat_up_proxy_old -c "ALTER EXTENSION chat_proxy UPDATE" >/dev/null
  got=$(q chat_up_proxy_old -c "SELECT extversion FROM pg_extension WHERE extname = 'chat_proxy'")
  [ "$got" = "$current" ] || fail "chat_proxy $from: UPDATE reached $got, not $current"
  proxy_schema chat_up_proxy_old > "$work/proxy-upgraded.sql"
  if ! diff -u "$work/proxy-fresh.sql" "$work/proxy-upgraded.sql" > "$work/proxy.diff"; then
    head -60 "$work/proxy.diff"
    fail "chat_proxy $from: the upgraded schema differs from a fresh $current install"
  fi
  got=$(q chat_up_proxy_old -c "SELECT count(*) FROM pg_foreign_server WHERE srvname = 'chat_partitions'")
  [ "$got" = 1 ] || fail "chat_proxy $from: the partition configuration did not survive the upgrade"
  echo "ok: chat_proxy $from: upgraded schema equals a fresh $current install ($(wc -l < "$work/proxy-fresh.sql") lines), configuration kept"
  walked=$((walked + 1))
done
echo "upgrade paths tested: $walked"
