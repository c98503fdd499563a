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
CREATE FUNCTION chat.search(actor bigint, query text, conversation_id bigint DEFAULT NULL,
                            lim integer DEFAULT 20)
RETURNS SETOF chat.message_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg regconfig;
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
