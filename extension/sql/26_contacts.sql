-- Contact search (issue 15): users found by a prefix of their handle or
-- display name, regardless of case, contacts first (docs/sql-api.md
-- "Profiles, blocking, reports, privacy").
--
-- Two expression indexes in the "C" collation make a prefix cheap whatever
-- its length: LIKE 'abc%' on lower(handle) COLLATE "C" is an index range,
-- and ORDER BY the same expression walks the index in order, so a one-
-- letter prefix over millions of users reads only the rows it returns.
CREATE INDEX users_handle_prefix_idx ON chat.users ((lower(handle) COLLATE "C"));
CREATE INDEX users_display_name_prefix_idx ON chat.users ((lower(display_name) COLLATE "C"))
    WHERE display_name IS NOT NULL;

-- The users whose handle or display name starts with query (case
-- ignored), the actor and users who blocked the actor left out.  Order:
-- the actor's contacts (chat.contacts) first, then handle matches by
-- handle, then display-name matches by display name; at most lim rows
-- (1..50).  contact says which rows are contacts.
CREATE FUNCTION chat.search_users(actor bigint, query text, lim integer DEFAULT 20)
RETURNS TABLE (user_id bigint, handle text, display_name text, about text, avatar text, contact boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pattern text;
BEGIN
    PERFORM chat.require_actor(actor);
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'search query must not be empty' USING ERRCODE = '22023',
            HINT = 'Pass the first letters of a handle or display name.';
    END IF;
    IF length(query) > 64 THEN
        RAISE EXCEPTION 'search query of % characters is longer than 64', length(query)
            USING ERRCODE = '22001';
    END IF;
    IF lim IS NULL OR lim < 1 OR lim > 50 THEN
        RAISE EXCEPTION 'search limit % is out of range', coalesce(lim::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Ask for 1 to 50 users.';
    END IF;
    -- the query is a literal prefix: LIKE's own characters escaped
    pattern := replace(replace(replace(lower(query), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    -- A literal pattern (format %L), not a parameter: the planner turns
    -- only a constant LIKE prefix into an index range.
    RETURN QUERY EXECUTE format($q$
        WITH c AS (SELECT x AS id FROM chat.contacts($1) x),
        hits AS (
            (SELECT u.id FROM chat.users u
              WHERE lower(u.handle) COLLATE "C" LIKE %1$L
                AND u.id <> $1
                AND NOT EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = u.id AND k.blocked = $1)
              ORDER BY lower(u.handle) COLLATE "C" LIMIT $2)
            UNION
            (SELECT u.id FROM chat.users u
              WHERE lower(u.display_name) COLLATE "C" LIKE %1$L AND u.display_name IS NOT NULL
                AND u.id <> $1
                AND NOT EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = u.id AND k.blocked = $1)
              ORDER BY lower(u.display_name) COLLATE "C" LIMIT $2)
            UNION
            (SELECT u.id FROM c JOIN chat.users u ON u.id = c.id
              WHERE (lower(u.handle) COLLATE "C" LIKE %1$L
                     OR lower(u.display_name) COLLATE "C" LIKE %1$L)
                AND NOT EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = u.id AND k.blocked = $1)))
        SELECT u.id, u.handle, u.display_name, u.about, u.avatar,
               EXISTS (SELECT FROM c WHERE c.id = u.id) AS contact
          FROM hits h JOIN chat.users u ON u.id = h.id
         ORDER BY 6 DESC,
                  lower(u.handle) COLLATE "C" LIKE %1$L DESC,
                  CASE WHEN lower(u.handle) COLLATE "C" LIKE %1$L THEN lower(u.handle)
                       ELSE lower(u.display_name) END COLLATE "C",
                  u.id
         LIMIT $2$q$, pattern)
    USING actor, lim;
END
$$;

REVOKE ALL ON FUNCTION chat.search_users(bigint, text, integer) FROM PUBLIC;
COMMENT ON FUNCTION chat.search_users(bigint, text, integer) IS
    'users whose handle or display name starts with a prefix (case ignored), contacts first; at most 50; users who blocked the actor left out';
