-- chat 0.1.0 -> 0.2.0: the trust-boundary fixes (see README "Upgrading").
\echo Use "ALTER EXTENSION chat UPDATE TO '0.2.0'" to load this file. \quit
