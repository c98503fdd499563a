-- The hot request types run no plpgsql (issue 11): sync, history and after
-- are C readers on saved plans (request.c), chat.sync, chat.history and
-- chat.messages_after stay for SQL callers.  Every frame below is compared
-- with the plpgsql reference (chat.dispatch_request, which calls those SQL
-- functions), timestamps masked, over several conversations, a member who
-- joined late (entries about older messages redacted), one who left, and
-- pages that end inside a conversation.  Then pg_stat_xact_user_functions
-- (track_functions = pl) shows that none of the hot types called a
-- plpgsql function, and that the reference did.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;

-- The frame of fn for the request, timestamps masked.
CREATE FUNCTION pg_temp.frame(fn text, u bigint, d integer, r jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    f jsonb;
BEGIN
    IF fn = 'ref' THEN
        BEGIN
            f := jsonb_build_object('id', r -> 'id', 'type', 'ok',
                                    'result', chat.dispatch_request('gw1', u, d, r));
        EXCEPTION WHEN OTHERS THEN
            f := jsonb_build_object('id', r -> 'id', 'type', 'error', 'code', SQLSTATE,
                                    'error', coalesce(chat.condition_name(SQLSTATE), 'error'),
                                    'message', SQLERRM);
        END;
    ELSE
        f := chat.client_request('gw1', u, d, r);
    END IF;
    RETURN regexp_replace(f::text, '"\d{4}-\d\d-\d\dT[^"]*"', '"<ts>"', 'g');
END
$$;

-- The C frame, and "same" when the reference's frame is equal (else the
-- reference's frame).
CREATE FUNCTION pg_temp.cmp(u bigint, d integer, r text) RETURNS TABLE(frame text, ref text)
LANGUAGE sql AS $$
    SELECT c, CASE WHEN c = p THEN 'same' ELSE p END
      FROM pg_temp.frame('c', u, d, r::jsonb) c, pg_temp.frame('ref', u, d, r::jsonb) p
$$;

SELECT count(chat.upsert_user(i, 'user' || i)) FROM generate_series(1, 5) i;
SELECT count(chat.register_device(i)) FROM generate_series(1, 5) i;
SELECT chat.register_device(2);
-- conversation 1: direct 1-2; 2: group of 1, 2, 3; 3: direct 2-4
SELECT chat.direct_conversation(1, 2);
SELECT chat.create_group(1, 'g', ARRAY[2, 3]::bigint[]);
SELECT chat.direct_conversation(2, 4);
SELECT count(*) FROM generate_series(1, 4) i, LATERAL chat.send_message(1, 1, 'd' || i) s;
SELECT count(*) FROM generate_series(1, 3) i, LATERAL chat.send_message(3, 2, 'g' || i) s;
SELECT count(*) FROM generate_series(1, 2) i, LATERAL chat.send_message(4, 3, 'x' || i) s;
-- 5 joins the group late: the edit of an older message reaches it without
-- its body
SELECT seq AS old FROM chat.send_message(1, 2, 'before 5') \gset
SELECT chat.add_member(1, 2, 5);
SELECT chat.edit_message(1, 2, :old, 'edited before 5 joined');
SELECT count(*) FROM chat.send_message(1, 2, 'after 5');
-- 3 leaves the group
SELECT chat.leave(3, 2);

-- sync: whole, paged inside and across conversations, by another device
SELECT * FROM pg_temp.cmp(2, 1, '{"id":1,"type":"sync"}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":2,"type":"sync","limit":3}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":3,"type":"sync","limit":4}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":4,"type":"sync","limit":5}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":5,"type":"sync","limit":1000}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":6,"type":"sync","limit":1001}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":7,"type":"sync","limit":null}');
SELECT * FROM pg_temp.cmp(5, 1, '{"id":8,"type":"sync"}');
SELECT * FROM pg_temp.cmp(3, 1, '{"id":9,"type":"sync"}');
-- after an ack, sync starts at the cursor of that device only
SELECT chat.client_request('gw1', 2, 1, '{"id":10,"type":"ack","conversation":1,"seq":3}') ->> 'type';
SELECT * FROM pg_temp.cmp(2, 1, '{"id":11,"type":"sync","limit":2}');
SELECT * FROM pg_temp.cmp(2, 2, '{"id":12,"type":"sync","limit":2}');
-- history: newest page, before_seq, the late joiner, a member who left,
-- no such conversation, bad limits
SELECT * FROM pg_temp.cmp(2, 1, '{"id":20,"type":"history","conversation":2}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":21,"type":"history","conversation":2,"before_seq":3,"limit":1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":22,"type":"history","conversation":2,"before_seq":null,"limit":2}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":23,"type":"history","conversation":2,"before_seq":-5}');
SELECT * FROM pg_temp.cmp(5, 1, '{"id":24,"type":"history","conversation":2}');
SELECT * FROM pg_temp.cmp(3, 1, '{"id":25,"type":"history","conversation":2}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":26,"type":"history","conversation":99}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":27,"type":"history","conversation":3}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":28,"type":"history","conversation":2,"limit":0}');
SELECT * FROM pg_temp.cmp(3, 1, '{"id":29,"type":"history","conversation":2,"limit":0}');
-- after: from a seq, below the joined_seq, negative, the late joiner,
-- a member who left, bad limits
SELECT * FROM pg_temp.cmp(2, 1, '{"id":30,"type":"after","conversation":2,"after_seq":2}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":31,"type":"after","conversation":2,"after_seq":0,"limit":2}');
SELECT * FROM pg_temp.cmp(5, 1, '{"id":32,"type":"after","conversation":2,"after_seq":0}');
SELECT * FROM pg_temp.cmp(5, 1, '{"id":33,"type":"after","conversation":2,"after_seq":-3}');
SELECT * FROM pg_temp.cmp(3, 1, '{"id":34,"type":"after","conversation":2,"after_seq":0}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":35,"type":"after","conversation":99,"after_seq":0}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":36,"type":"after","conversation":2,"after_seq":0,"limit":-1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":37,"type":"after","conversation":99,"after_seq":0,"limit":5000}');

-- No plpgsql under the hot types: the C frames call no PL function at all,
-- the reference calls chat.sync, chat.history and chat.messages_after.
BEGIN;
SET LOCAL track_functions = 'pl';
SELECT count(chat.client_request('gw1', 2, 1, r::jsonb)) FROM unnest(ARRAY[
    '{"id":1,"type":"sync"}', '{"id":2,"type":"history","conversation":2}',
    '{"id":3,"type":"after","conversation":2,"after_seq":0}',
    '{"id":4,"type":"send","conversation":1,"body":"hot"}',
    '{"id":5,"type":"ack","conversation":1,"seq":2}', '{"id":6,"type":"read","conversation":1,"seq":2}',
    '{"id":7,"type":"typing","conversation":1}']) r;
SELECT funcname, calls FROM pg_stat_xact_user_functions ORDER BY funcname;
SELECT count(pg_temp.frame('ref', 2, 1, r::jsonb)) FROM unnest(ARRAY[
    '{"id":1,"type":"sync"}', '{"id":2,"type":"history","conversation":2}',
    '{"id":3,"type":"after","conversation":2,"after_seq":0}']) r;
SELECT funcname FROM pg_stat_xact_user_functions
 WHERE schemaname = 'chat' AND funcname IN ('sync', 'history', 'messages_after') ORDER BY funcname;
ROLLBACK;
