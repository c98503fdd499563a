-- Full-text search over the messages a user can see (docs/sql-api.md
-- "Search").
--
-- The text search configuration comes from the setting chat.search_config
-- (default 'simple': no stemming, no stop words, so every language works).
-- The GIN index below is on the 'simple' configuration; a deployment that
-- sets another one creates the same index on it (docs/sql-api.md), since
-- an expression index serves only the configuration it names.  Only text
-- messages that are not deleted are indexed: e2e bodies are ciphertext,
-- system messages and change-log entries are not what users search.

CREATE INDEX messages_search_idx ON chat.messages
    USING gin (to_tsvector('simple'::regconfig, body))
    WHERE kind = 'text' AND deleted_at IS NULL;

-- Up to lim messages matching query (web search syntax: words, "phrases",
-- -not, or) that the actor can see: kind text, not deleted, after the
-- member's joined_seq and, for a conversation it left, sent before it
-- left; only in conversation_id when given.  Best match first (ts_rank),
-- then newest.
--
-- Two plans, chosen by how many messages the actor can see at most (the
-- seqs after joined_seq of each membership, read from a few rows):
--  * up to chat.search_scan_limit (most users): those messages are read
--    conversation by conversation (primary key ranges) and matched one by
--    one, their tsvector made once for the match and the rank.  The cost
--    is bounded by what the user sees, whatever the word.
--  * more: the GIN index finds the matches and the visibility check
--    filters them.  This plan alone was the tail for everyone: for a
--    common word the planner read the word's whole posting list once per
--    conversation of the user (a BitmapAnd of the GIN index and the
--    primary key range), up to a second over 1,000,000 messages, where
--    reading the user's few hundred messages takes milliseconds.
CREATE FUNCTION chat.search(actor bigint, query text, conversation_id bigint DEFAULT NULL,
                            lim integer DEFAULT 20)
RETURNS SETOF chat.message_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- A search is a short query: compiling its plan, should an estimate pass
-- jit_above_cost, would cost more than it could save.
SET jit = off AS $$
DECLARE
    cfg regconfig;
    visible bigint;
BEGIN
    PERFORM chat.check_limit(lim);
    IF actor IS NULL THEN
        RAISE EXCEPTION 'actor must not be null' USING ERRCODE = '22023';
    END IF;
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'search query must not be empty' USING ERRCODE = '22023';
    END IF;
    IF length(query) > 256 THEN
        RAISE EXCEPTION 'search query of % characters is longer than 256', length(query)
            USING ERRCODE = '22001';
    END IF;
    BEGIN
        cfg := coalesce(nullif(current_setting('chat.search_config', true), ''), 'simple')::regconfig;
    EXCEPTION WHEN undefined_object THEN
        RAISE EXCEPTION 'chat.search_config "%" is not a text search configuration',
            current_setting('chat.search_config', true)
            USING ERRCODE = '22023', HINT = 'See \dF in psql; the default is simple.';
    END;
    IF search.conversation_id IS NOT NULL THEN
        PERFORM chat.require_member(actor, search.conversation_id);
    END IF;
    SELECT coalesce(sum(greatest(c.last_seq - m.joined_seq, 0)), 0) INTO visible
      FROM chat.members m
      JOIN chat.conversations c ON c.id = m.conversation_id
     WHERE m.user_id = actor
       AND (search.conversation_id IS NULL OR m.conversation_id = search.conversation_id);
    IF visible <= coalesce(nullif(current_setting('chat.search_scan_limit', true), '')::bigint, 5000) THEN
        -- OFFSET 0 keeps the subquery apart, so that the match runs on the
        -- tsvector made there rather than on the GIN index.
        RETURN QUERY EXECUTE $q$
            SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind, x.body,
                   x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
                   x.attachments, x.mentions, x.reactions
              FROM chat.members m
              CROSS JOIN LATERAL (
                    SELECT y.*, to_tsvector($5, y.body) AS v
                      FROM chat.messages y
                     WHERE y.conversation_id = m.conversation_id
                       AND y.seq > m.joined_seq
                       AND y.kind = 'text' AND y.deleted_at IS NULL
                       AND (y.expires_at IS NULL OR y.expires_at > now())
                       AND (m.left_at IS NULL OR y.created_at <= m.left_at)
                    OFFSET 0) x
              CROSS JOIN websearch_to_tsquery($5, $3) q
             WHERE m.user_id = $1
               AND ($2::bigint IS NULL OR m.conversation_id = $2)
               AND x.v @@ q
             ORDER BY ts_rank(x.v, q) DESC, x.created_at DESC, x.conversation_id, x.seq
             LIMIT $4 $q$
        USING actor, search.conversation_id, query, lim, cfg;
        RETURN;
    END IF;
    -- The configuration as a literal, so that the planner matches the
    -- expression of the index made for it.
    RETURN QUERY EXECUTE format($q$
        SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind, x.body,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments, x.mentions, x.reactions
          FROM chat.members m
          JOIN chat.messages x ON x.conversation_id = m.conversation_id
         WHERE m.user_id = $1
           AND ($2::bigint IS NULL OR m.conversation_id = $2)
           AND to_tsvector(%1$L::regconfig, x.body) @@ websearch_to_tsquery(%1$L::regconfig, $3)
           AND x.kind = 'text' AND x.deleted_at IS NULL
           AND (x.expires_at IS NULL OR x.expires_at > now())
           AND x.seq > m.joined_seq
           AND (m.left_at IS NULL OR x.created_at <= m.left_at)
         ORDER BY ts_rank(to_tsvector(%1$L::regconfig, x.body),
                          websearch_to_tsquery(%1$L::regconfig, $3)) DESC,
                  x.created_at DESC, x.conversation_id, x.seq
         LIMIT $4 $q$, cfg::text)
    USING actor, search.conversation_id, query, lim;
END
$$;

REVOKE ALL ON FUNCTION chat.search(bigint, text, bigint, integer) FROM PUBLIC;
COMMENT ON FUNCTION chat.search(bigint, text, bigint, integer) IS
    'full-text search (chat.search_config) over the text messages the actor can see, best match first';
