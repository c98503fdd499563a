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

REVOKE ALL ON FUNCTION chat.fanout_event(bigint, bigint[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_receipt(bigint, bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_message(bigint, bigint) FROM PUBLIC;
