-- Fanout entry points the SQL parts of the extension call (fanout.c).
-- Internal: not granted to applications.

-- Notifies an event to the online devices of user_ids (NULL: all current
-- members of the conversation), grouped by gateway node, at commit.
CREATE FUNCTION chat.fanout_event(conversation_id bigint, user_ids bigint[], event jsonb)
RETURNS void LANGUAGE c AS 'MODULE_PATHNAME', 'chat_fanout_event';

-- Delivery ('delivered') or read ('read') receipts after reader's watermark
-- moved from from_seq to to_seq: sent to the senders of the messages in
-- (from_seq, to_seq] other than the reader, never to the whole group.
CREATE FUNCTION chat.fanout_receipt(conversation_id bigint, reader bigint, from_seq bigint, to_seq bigint, kind text)
RETURNS void LANGUAGE c AS 'MODULE_PATHNAME', 'chat_fanout_receipt';

-- Fans out the stored message (conversation_id, seq) as a message event and
-- queues pushes for offline devices (system messages written in SQL use it).
CREATE FUNCTION chat.fanout_message(conversation_id bigint, seq bigint)
RETURNS void LANGUAGE c AS 'MODULE_PATHNAME', 'chat_fanout_message';

-- {"type":"revoked","user","device"} to the nodes holding sessions of the
-- device, which close its connections (chat.remove_device calls it).
CREATE FUNCTION chat.fanout_revoked(user_id bigint, device_id integer)
RETURNS void LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'chat_fanout_revoked';

REVOKE ALL ON FUNCTION chat.fanout_event(bigint, bigint[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_revoked(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_receipt(bigint, bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_message(bigint, bigint) FROM PUBLIC;

-- The message event of a stored message (exactly what a "message"
-- notification carries, plus edited_at/deleted_at when set): the one shape
-- of a message in client_request results.
CREATE FUNCTION chat.message_json(m chat.message_view)
RETURNS jsonb LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'chat_message_json';

-- A timestamp as events carry it: "YYYY-MM-DDTHH:MM:SS.mmmZ" in UTC.
CREATE FUNCTION chat.json_timestamp(ts timestamptz)
RETURNS text LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'chat_json_timestamp';

REVOKE ALL ON FUNCTION chat.message_json(chat.message_view) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.json_timestamp(timestamptz) FROM PUBLIC;

COMMENT ON FUNCTION chat.fanout_event(bigint, bigint[], jsonb) IS
    'internal: notifies an event to the online devices of user_ids (NULL: all members), at commit';
COMMENT ON FUNCTION chat.fanout_revoked(bigint, integer) IS
    'internal: revoked event to the nodes holding sessions of a device (they close it with 4003)';
COMMENT ON FUNCTION chat.fanout_receipt(bigint, bigint, bigint, bigint, text) IS
    'internal: delivered/read receipts to the senders of the messages in (from_seq, to_seq]';
COMMENT ON FUNCTION chat.fanout_message(bigint, bigint) IS
    'internal: fans out a stored message and queues pushes for offline members';
COMMENT ON FUNCTION chat.message_json(chat.message_view) IS
    'the message event object of a message (same shape as the notification)';
COMMENT ON FUNCTION chat.json_timestamp(timestamptz) IS
    'timestamp as events carry it: YYYY-MM-DDTHH:MM:SS.mmmZ in UTC';
