#!/usr/bin/env bash
# pg_dump/pg_restore round trip: every chat table comes back with the same
# contents, and after the restore sends continue the seqs (and new ids follow
# the old ones) without a gap or a collision.  Uses the harness cluster
# (PGHOST/PGPORT/PGUSER), or starts its own when run alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/cluster.sh
stage_begin chat-dump

src=chat_dump_src dst=chat_dump_dst
fail() { echo "FAIL: $*"; exit 1; }
check() {  # check WHAT EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "ok: $1 ($3)"; else fail "$1: expected $2, got $3"; fi
}
q() { local db=$1; shift; "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -d "$db" "$@"; }

new_db $src
q $src >/dev/null <<'SQL'
SELECT chat.upsert_user(id, 'user' || id, 'User ' || id) FROM generate_series(1, 6) AS id;
SELECT chat.register_device(1), chat.register_device(1, 'ios', 'push-1'), chat.register_device(2, 'android', 'push-2');
SELECT chat.remove_device(1, 1);
SELECT chat.direct_conversation(1, 2);
SELECT chat.create_group(1, 'group', ARRAY[2, 3, 4]);
SELECT chat.send_message(1 + i % 2, 1, 'direct ' || i, 'c' || i, NULL, CASE WHEN i % 2 = 0 THEN 2 END) FROM generate_series(1, 30) AS i;
SELECT chat.send_message(1 + i % 4, 2, 'group ' || i) FROM generate_series(1, 40) AS i;
SELECT chat.send_message(2, 1, 'a reply', NULL, 3);
SELECT chat.edit_message(1, 1, 2, 'edited');
SELECT chat.delete_message(2, 1, 3);
SELECT chat.add_member(1, 2, 5, 'admin');
SELECT chat.remove_member(1, 2, 3);
SELECT chat.ack(2, 1, 1, 20), chat.ack(1, 2, 2, 30);
SELECT chat.mark_read(2, 1, 25), chat.mark_read(4, 2, 10);
-- avatars (issue 15): a ready image profile upload (no conversation)
INSERT INTO chat.attachments (id, owner_id, mime, size, sha256, state)
VALUES ('00000000-0000-4000-8000-0000000000a1', 1, 'image/png', 10, repeat('a', 64), 'ready');
SELECT chat.set_profile(1, 'One', 'about one', '00000000-0000-4000-8000-0000000000a1'), chat.set_privacy(2, 'contacts', false);
SELECT chat.block(3, 1), chat.block(2, 4);
SELECT chat.report(1, NULL, 1, 1, 'spam'), chat.report(3, 1, NULL, NULL, 'rude');
-- E2E: keys (two one-time keys, one claimed), an inbox, a txn.
SELECT chat.keys_upload(2, 1, 'IK2', '{"id":1,"key":"S2","signature":"G2"}',
                        '[{"id":"a","key":"KA"},{"id":"b","key":"KB"},{"id":"c","key":"KC"}]',
                        '{"id":"f","key":"F2","signature":"H2"}');
SELECT count(*) FROM chat.keys_claim(1, 2, '[{"user":2,"device":1}]');
SELECT chat.to_device(1, 2, '[{"user":2,"device":1,"type":"olm","ciphertext":"Q0lQSEVS"}]', 'txn-1');
SQL
# Pending pushes, if the realtime layer queued none for the offline devices.
q $src -c "INSERT INTO chat.push_outbox (user_id, device_id, push_token, conversation_id, seq, payload)
           SELECT 2, 1, 'push-2', 1, 1, '{}' WHERE NOT EXISTS (SELECT FROM chat.push_outbox)" >/dev/null

# A digest of every chat table, in key order; equal digests = equal contents.
digest() {
  q "$1" <<'SQL'
SELECT 'users ' || md5(string_agg(t::text, '|' ORDER BY t.id)) FROM chat.users t;
SELECT 'devices ' || md5(string_agg(t::text, '|' ORDER BY t.user_id, t.device_id)) FROM chat.devices t;
SELECT 'conversations ' || md5(string_agg(t::text, '|' ORDER BY t.id)) FROM chat.conversations t;
SELECT 'members ' || md5(string_agg(t::text, '|' ORDER BY t.conversation_id, t.user_id)) FROM chat.members t;
SELECT 'messages ' || md5(string_agg(t::text, '|' ORDER BY t.conversation_id, t.seq)) FROM chat.messages t;
SELECT 'device_cursors ' || md5(string_agg(t::text, '|' ORDER BY t.user_id, t.device_id, t.conversation_id)) FROM chat.device_cursors t;
SELECT 'push_outbox ' || md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM chat.push_outbox t;
SELECT 'blocks ' || md5(string_agg(t::text, '|' ORDER BY t.blocker, t.blocked)) FROM chat.blocks t;
SELECT 'reports ' || md5(string_agg(t::text, '|' ORDER BY t.id)) FROM chat.reports t;
SELECT 'device_keys ' || md5(string_agg(t::text, '|' ORDER BY t.user_id, t.device_id)) FROM chat.device_keys t;
SELECT 'one_time_keys ' || md5(string_agg(t::text, '|' ORDER BY t.id)) FROM chat.one_time_keys t;
SELECT 'to_device ' || md5(string_agg(t::text, '|' ORDER BY t.id)) FROM chat.to_device t;
SELECT 'to_device_txns ' || md5(string_agg(t::text, '|' ORDER BY t.txn)) FROM chat.to_device_txns t;
SELECT 'counts ' || (SELECT count(*) FROM chat.users) || ' ' || (SELECT count(*) FROM chat.devices) || ' '
    || (SELECT count(*) FROM chat.conversations) || ' ' || (SELECT count(*) FROM chat.members) || ' '
    || (SELECT count(*) FROM chat.messages) || ' ' || (SELECT count(*) FROM chat.device_cursors) || ' '
    || (SELECT count(*) FROM chat.push_outbox);
SQL
}
digest $src >"$work/src.digest"
q $src -c "SELECT 'source: ' || (SELECT count(*) FROM chat.messages) || ' messages in ' || (SELECT count(*) FROM chat.conversations) || ' conversations'"

"$PGBIN/pg_dump" -Fc -f "$work/chat.dump" -d $src
"$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $dst" -c "CREATE DATABASE $dst" >/dev/null
"$PGBIN/pg_restore" --exit-on-error -d $dst "$work/chat.dump" 2>"$work/restore.err" || { cat "$work/restore.err"; fail "pg_restore"; }
digest $dst >"$work/dst.digest"

while read -r table hash; do
  check "$table restored" "$hash" "$(grep "^$table " "$work/dst.digest" | cut -d' ' -f2-)"
done <"$work/src.digest"

# Life goes on after the restore.
# 31 sends, an edit and a delete (each a log entry with its own seq): 33.
check "next seq in the direct conversation" "34 f" "$(q $dst -F' ' -c "SELECT seq, duplicate FROM chat.send_message(1, 1, 'after restore')")"
check "a retry from before the dump is still a duplicate" "1 t" "$(q $dst -F' ' -c "SELECT seq, duplicate FROM chat.send_message(2, 1, 'again', 'c1')")"
check "next seq in the group" "$(( $(q $src -c "SELECT last_seq FROM chat.conversations WHERE id = 2") + 1 ))" \
  "$(q $dst -c "SELECT seq FROM chat.send_message(4, 2, 'group after restore')")"
check "new conversation ids follow the old ones" 3 "$(q $dst -c "SELECT chat.create_group(5, 'new')")"
check "device ids are not reused" 3 "$(q $dst -c "SELECT chat.register_device(1)")"
check "sync resumes from the restored cursor" "21 34" "$(q $dst -c "SELECT min(seq), max(seq) FROM chat.sync(2, 1) WHERE conversation_id = 1" -F' ')"
check "seqs stay gapless" 0 "$(q $dst -c "
  SELECT count(*) FROM chat.conversations c
   WHERE c.last_seq <> (SELECT count(*) FROM chat.messages m WHERE m.conversation_id = c.id)")"
check "report ids follow the old ones" 3 "$(q $dst -c "SELECT chat.report(4, 1, NULL, NULL, 'after restore')")"
check "a restored block still stops a send" "blocked by user 2" \
  "$(q $dst -c "SELECT chat.send_message(4, chat.direct_conversation(2, 4), 'blocked?')" 2>&1 | grep -o 'blocked by user 2')"
check "a restored one-time key is not handed out twice" "b c fallback" \
  "$(q $dst -c "SELECT string_agg(CASE WHEN fallback THEN 'fallback' ELSE one_time_key ->> 'id' END, ' ')
                 FROM generate_series(1, 3) g, LATERAL chat.keys_claim(1, 2, jsonb_build_array(jsonb_build_object('user', 2, 'device', 1 + 0 * g)))")"
check "a restored txn still stores nothing twice" 1 \
  "$(q $dst -c "SELECT chat.to_device(1, 2, '[{\"user\":2,\"device\":1,\"type\":\"olm\",\"ciphertext\":\"eA==\"}]', 'txn-1'); SELECT count(*) FROM chat.to_device" | tail -1)"
check "new to-device ids follow the old ones" 2 \
  "$(q $dst -c "SELECT chat.to_device(1, 2, '[{\"user\":2,\"device\":1,\"type\":\"olm\",\"ciphertext\":\"eA==\"}]', 'txn-2'); SELECT max(id) FROM chat.to_device" | tail -1)"
echo "dump round trip: all checks passed"
