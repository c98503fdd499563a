-- chat.issue_token: an HS256 JWT whose signature this test recomputes with
-- pgcrypto; chat.token_secret is hidden from non-superusers.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
CREATE FUNCTION pg_temp.unb64url(t text) RETURNS text LANGUAGE sql AS $$
    SELECT convert_from(decode(rpad(translate(t, '-_', '+/'), (length(t) + 3) / 4 * 4, '='), 'base64'), 'UTF8')
$$;
CREATE FUNCTION pg_temp.b64url(b bytea) RETURNS text LANGUAGE sql AS $$
    SELECT rtrim(translate(replace(encode(b, 'base64'), E'\n', ''), '+/', '-_'), '=')
$$;

SELECT current_setting('chat.token_secret') <> '' AS secret_configured;
-- The secret is never shown (not even to superusers): sign with a known one.
SET chat.token_secret = 'regress secret';
CREATE TEMP TABLE t AS
SELECT tok, split_part(tok, '.', 1) AS h, split_part(tok, '.', 2) AS p, split_part(tok, '.', 3) AS s,
       extract(epoch FROM now())::bigint AS issued
  FROM chat.issue_token(7, 2) AS tok;

SELECT array_length(string_to_array(tok, '.'), 1) AS parts, tok !~ '[+/=]' AS base64url FROM t;
SELECT pg_temp.unb64url(h)::jsonb AS header FROM t;
SELECT c -> 'sub' AS sub, c -> 'dev' AS dev, (c ->> 'exp')::bigint - (c ->> 'iat')::bigint AS lifetime,
       abs((c ->> 'iat')::bigint - issued) <= 5 AS iat_is_now,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(c) k) AS claims
  FROM (SELECT pg_temp.unb64url(p)::jsonb AS c, issued FROM t) x;
-- The signature, recomputed independently.
SELECT s = pg_temp.b64url(hmac(h || '.' || p, 'regress secret', 'sha256')) AS signature_valid,
       s <> pg_temp.b64url(hmac(h || '.' || p, 'another secret', 'sha256')) AS other_secret_differs
  FROM t;
SELECT (pg_temp.unb64url(split_part(chat.issue_token(7, 2, '10 minutes'), '.', 2))::jsonb ->> 'exp')::bigint
     - (pg_temp.unb64url(split_part(chat.issue_token(7, 2, '10 minutes'), '.', 2))::jsonb ->> 'iat')::bigint AS ten_minutes;

-- Bad input.
SELECT pg_temp.try($$SELECT chat.issue_token(7, 0)$$);
SELECT pg_temp.try($$SELECT chat.issue_token(7, 1, '0 seconds')$$);
SELECT pg_temp.try($$SELECT chat.issue_token(7, 1, '-1 hour')$$);
SELECT pg_temp.try($$SELECT chat.issue_token(7, 1, '400 days')$$);
-- No secret: a clear error.
SET chat.token_secret = '';
SELECT pg_temp.try($$SELECT chat.issue_token(7, 1)$$);
RESET chat.token_secret;
SELECT pg_temp.try($$SELECT chat.issue_token(7, 1)$$);

-- A non-superuser can neither read, list, set nor use the secret.
DROP ROLE IF EXISTS chat_rt_nobody;
CREATE ROLE chat_rt_nobody;
GRANT USAGE ON SCHEMA chat TO chat_rt_nobody;
SET ROLE chat_rt_nobody;
SELECT pg_temp.try($$SHOW chat.token_secret$$);
SELECT pg_temp.try($$SELECT current_setting('chat.token_secret')$$);
SELECT count(*) AS visible_in_pg_settings FROM pg_settings WHERE name = 'chat.token_secret';
SELECT pg_temp.try($$SET chat.token_secret = 'mine'$$);
SELECT pg_temp.try($$SELECT chat.issue_token(7, 1)$$);
RESET ROLE;
DROP OWNED BY chat_rt_nobody;
DROP ROLE chat_rt_nobody;
