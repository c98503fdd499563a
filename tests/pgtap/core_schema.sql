-- Schema invariants of the core: tables, keys, indexes, pg_dump registration,
-- privileges, SECURITY DEFINER hygiene, comments and the API signatures.
BEGIN;
SELECT plan(81);

-- Tables and their keys.
SELECT has_table('chat', t, 'table chat.' || t || ' exists')
  FROM unnest(ARRAY['users', 'devices', 'conversations', 'members', 'messages', 'device_cursors']) AS t;
SELECT col_is_pk('chat', 'users', ARRAY['id'], 'users are keyed by the application''s id');
SELECT col_is_pk('chat', 'devices', ARRAY['user_id', 'device_id'], 'devices are keyed per user');
SELECT col_is_pk('chat', 'members', ARRAY['conversation_id', 'user_id'], 'members are keyed by (conversation, user)');
SELECT col_is_pk('chat', 'messages', ARRAY['conversation_id', 'seq'], 'messages are keyed by (conversation, seq)');
SELECT col_is_pk('chat', 'device_cursors', ARRAY['user_id', 'device_id', 'conversation_id'], 'cursors are keyed per device and conversation');

-- Indexes that serve the queries.
SELECT has_index('chat', 'members', 'members_user_idx', ARRAY['user_id', 'conversation_id'],
                 'a member''s conversations by user, in id order');
SELECT index_is_unique('chat', 'messages', 'messages_client_msg_key', 'idempotency key is unique');
SELECT has_index('chat', 'messages', 'messages_client_msg_key', ARRAY['conversation_id', 'sender_id', 'client_msg_id'],
                 'idempotency key is (conversation, sender, client_msg_id)');
SELECT index_is_unique('chat', 'conversations', 'conversations_direct_key', 'one direct conversation per pair');
SELECT index_is_unique('chat', 'users', 'users_handle_key', 'handles are unique');
SELECT is((SELECT pg_get_indexdef('chat.users_handle_key'::regclass) ~ 'lower\(handle\)'), true,
          'handles are unique regardless of case');
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = 'chat.members_user_idx'::regclass),
          '(left_at IS NULL)', 'members_user_idx holds current members only');
SELECT is(pg_get_indexdef('chat.messages_search_idx'::regclass) ~ 'to_tsvector\(''simple''::regconfig, body\)',
          true, 'search: an index on to_tsvector(''simple'', body)');
SELECT is((SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam
            WHERE c.oid = 'chat.messages_search_idx'::regclass), 'gin', 'the search index is GIN');
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = 'chat.messages_expiry_idx'::regclass),
          '(expires_at IS NOT NULL)', 'messages_expiry_idx holds messages still to expire only');
SELECT index_is_unique('chat', 'conversations', 'conversations_service_key', 'one service conversation per user');

-- Gapless seqs need these checks to hold.
SELECT col_not_null('chat', 'messages', 'seq', 'messages.seq is never NULL');
SELECT col_default_is('chat', 'conversations', 'last_seq', '0', 'a conversation starts at last_seq 0');

-- pg_dump keeps every table with user data, and the sequences behind ids.
SELECT set_eq(
    $$ SELECT unnest(extconfig)::regclass::text FROM pg_extension WHERE extname = 'chat' $$,
    ARRAY['chat.users', 'chat.devices', 'chat.conversations', 'chat.conversations_id_seq',
          'chat.members', 'chat.messages', 'chat.device_cursors',
          'chat.push_outbox', 'chat.push_outbox_id_seq',
          'chat.blocks', 'chat.reports', 'chat.reports_id_seq',
          'chat.attachments', 'chat.media_deletions', 'chat.media_deletions_id_seq',
          'chat.invites', 'chat.receipt_times', 'chat.broadcasts', 'chat.broadcasts_id_seq',
          'chat.device_keys', 'chat.one_time_keys', 'chat.one_time_keys_id_seq',
          'chat.to_device', 'chat.to_device_id_seq', 'chat.to_device_txns'],
    'every user-data table and id sequence is registered with pg_extension_config_dump');
SELECT is_empty(
    $$ SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = 'chat'::regnamespace AND c.relkind IN ('r', 'S') AND c.relpersistence = 'p'
          AND c.relname NOT IN ('nodes', 'maintenance')
          AND c.oid <> ALL ((SELECT extconfig FROM pg_extension WHERE extname = 'chat')::oid[]) $$,
    'no permanent chat table or sequence is left out of pg_dump (nodes and maintenance are runtime state)');

-- Privileges: nothing for PUBLIC on tables, sequences or functions.
SELECT is_empty(
    $$ SELECT c.relname FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
        WHERE c.relnamespace = 'chat'::regnamespace AND c.relkind IN ('r', 'S', 'v', 'u', 'p') AND a.grantee = 0 $$,
    'PUBLIC has no privilege on any chat relation');
SELECT is_empty(
    $$ SELECT p.oid::regprocedure::text FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE p.pronamespace = 'chat'::regnamespace AND a.grantee = 0 $$,
    'PUBLIC may execute no chat function');
SELECT is_empty(
    $$ SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'chat'::regnamespace AND p.prosecdef
          AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false) $$,
    'every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp');

-- The API of the core, with the contract's signatures, all SECURITY DEFINER.
SELECT has_function('chat', f, args, 'chat.' || f || '(' || array_to_string(args, ', ') || ') exists')
  FROM (VALUES ('upsert_user', ARRAY['bigint', 'text', 'text']),
               ('register_device', ARRAY['bigint', 'text', 'text']),
               ('remove_device', ARRAY['bigint', 'integer']),
               ('direct_conversation', ARRAY['bigint', 'bigint']),
               ('create_group', ARRAY['bigint', 'text', 'bigint[]']),
               ('add_member', ARRAY['bigint', 'bigint', 'bigint', 'text']),
               ('remove_member', ARRAY['bigint', 'bigint', 'bigint']),
               ('conversations', ARRAY['bigint', 'integer', 'timestamp with time zone']),
               ('send_message', ARRAY['bigint', 'bigint', 'text', 'text', 'bigint', 'integer', 'bigint[]', 'jsonb']),
               ('edit_message', ARRAY['bigint', 'bigint', 'bigint', 'text']),
               ('delete_message', ARRAY['bigint', 'bigint', 'bigint']),
               ('history', ARRAY['bigint', 'bigint', 'bigint', 'integer']),
               ('messages_after', ARRAY['bigint', 'bigint', 'bigint', 'integer']),
               ('get_message', ARRAY['bigint', 'bigint', 'bigint']),
               ('sync', ARRAY['bigint', 'integer', 'integer']),
               ('ack', ARRAY['bigint', 'integer', 'bigint', 'bigint']),
               ('mark_read', ARRAY['bigint', 'bigint', 'bigint']),
               ('members', ARRAY['bigint', 'bigint']),
               ('set_role', ARRAY['bigint', 'bigint', 'bigint', 'text']),
               ('leave', ARRAY['bigint', 'bigint']),
               ('update_group', ARRAY['bigint', 'bigint', 'text', 'text', 'boolean', 'text']),
               -- issue 15
               ('invite_link', ARRAY['bigint', 'bigint', 'integer']),
               ('revoke_invite', ARRAY['bigint', 'text']),
               ('join', ARRAY['bigint', 'text']),
               ('message_info', ARRAY['bigint', 'bigint', 'bigint']),
               ('react', ARRAY['bigint', 'bigint', 'bigint', 'text', 'boolean']),
               ('pin', ARRAY['bigint', 'bigint', 'bigint', 'boolean']),
               ('pins', ARRAY['bigint', 'bigint']),
               ('mute', ARRAY['bigint', 'bigint', 'timestamp with time zone']),
               ('search', ARRAY['bigint', 'text', 'bigint', 'integer']),
               ('set_disappearing', ARRAY['bigint', 'bigint', 'integer']),
               ('expire_messages', ARRAY['integer']),
               ('broadcast', ARRAY['text', 'text']),
               -- End-to-end encryption (30_e2e.sql).
               ('keys_upload', ARRAY['bigint', 'integer', 'text', 'jsonb', 'jsonb', 'jsonb']),
               ('keys_query', ARRAY['bigint', 'bigint[]']),
               ('keys_claim', ARRAY['bigint', 'integer', 'jsonb']),
               ('to_device', ARRAY['bigint', 'integer', 'jsonb', 'text']),
               ('to_device_ack', ARRAY['bigint', 'integer', 'bigint']),
               ('enable_e2e', ARRAY['bigint', 'bigint']),
               ('send_e2e', ARRAY['bigint', 'bigint', 'text', 'text', 'bigint', 'integer', 'bigint[]', 'jsonb'])) AS api(f, args);
SELECT is_empty(
    $$ SELECT proname FROM pg_proc
        WHERE pronamespace = 'chat'::regnamespace AND NOT prosecdef
          AND proname IN ('upsert_user', 'register_device', 'remove_device', 'direct_conversation',
                          'create_group', 'add_member', 'remove_member', 'conversations',
                          'send_message', 'edit_message', 'delete_message', 'history',
                          'messages_after', 'get_message', 'sync', 'ack', 'mark_read',
                          'members', 'set_role', 'leave', 'update_group',
                          'invite_link', 'revoke_invite', 'join', 'message_info', 'react', 'pin',
                          'pins', 'mute', 'search', 'set_disappearing', 'expire_messages',
                          'apply_retention', 'broadcast',
                          'keys_upload', 'keys_query', 'keys_claim', 'to_device', 'to_device_ack',
                          'to_device_pending', 'enable_e2e', 'send_e2e',
                          'keys_claim_local', 'to_device_local') $$,
    'the core API functions are SECURITY DEFINER (the application needs EXECUTE only)');
SELECT is(pg_get_function_result('chat.send_message(bigint,bigint,text,text,bigint,integer,bigint[],jsonb)'::regprocedure),
          'TABLE(conversation_id bigint, seq bigint, created_at timestamp with time zone, duplicate boolean)',
          'send_message returns the contract''s columns');

-- Every core object is commented.
SELECT is_empty(
    $$ SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'chat'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
          AND p.proname IN ('upsert_user', 'register_device', 'remove_device', 'direct_conversation',
                            'create_group', 'add_member', 'remove_member', 'conversations',
                            'send_message', 'edit_message', 'delete_message', 'history',
                            'messages_after', 'get_message', 'sync', 'ack', 'mark_read',
                            'require_member', 'require_device', 'require_users', 'check_limit',
                            'check_body', 'lock_group', 'post_system_message',
                            'members', 'set_role', 'leave', 'update_group',
                            'invite_link', 'revoke_invite', 'join', 'message_info', 'react', 'pin',
                            'pins', 'mute', 'search', 'set_disappearing', 'expire_messages',
                            'apply_retention', 'broadcast', 'start_expiry_worker',
                            'launch_expiry_worker',
                            'keys_upload', 'keys_query', 'keys_claim', 'to_device', 'to_device_ack',
                            'to_device_pending', 'enable_e2e', 'send_e2e', 'is_e2e',
                            'keys_claim_local', 'to_device_local') $$,
    'every core function has a comment');
SELECT is_empty(
    $$ SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = 'chat'::regnamespace AND c.relkind IN ('r', 'S', 'u')
          AND obj_description(c.oid, 'pg_class') IS NULL $$,
    'every chat table and sequence has a comment');

-- GUCs with their documented defaults.
SELECT is(current_setting('chat.max_body_bytes'), '64kB', 'chat.max_body_bytes defaults to 65536 bytes');
SELECT is(current_setting('chat.max_group_members'), '1024', 'chat.max_group_members defaults to 1024');
SELECT is(current_setting('chat.edit_window'), '15min', 'chat.edit_window defaults to 15 minutes');

-- An application role with the documented grants works through the API
-- and cannot touch the tables.
CREATE ROLE chat_tap_app NOLOGIN;
GRANT USAGE ON SCHEMA chat TO chat_tap_app;
GRANT EXECUTE ON FUNCTION chat.upsert_user(bigint, text, text), chat.direct_conversation(bigint, bigint),
    chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[], jsonb),
    chat.history(bigint, bigint, bigint, integer) TO chat_tap_app;
SET LOCAL ROLE chat_tap_app;
SELECT lives_ok($$ SELECT chat.upsert_user(901, 'tap_a'), chat.upsert_user(902, 'tap_b') $$,
                'the application role creates users');
SELECT is((SELECT seq FROM chat.send_message(901, chat.direct_conversation(901, 902), 'hi')), 1::bigint,
          'the application role sends');
SELECT is((SELECT body FROM chat.history(902, chat.direct_conversation(902, 901))), 'hi',
          'the application role reads history');
SELECT throws_ok($$ SELECT * FROM chat.messages $$, '42501', NULL,
                 'the application role cannot read the tables directly');
SELECT throws_ok($$ SELECT chat.fanout_message(1, 1) $$, '42501', NULL,
                 'the application role cannot call internal functions');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
