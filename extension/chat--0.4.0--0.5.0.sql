-- chat 0.4.0 -> 0.5.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.5.0'" to load this file. \quit
