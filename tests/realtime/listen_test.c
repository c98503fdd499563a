/*
 * listen_test.c: observes the chat extension's notifications with a real
 * listener while SQL runs on a second connection, and checks recipients
 * per node, the payload format (and its "v1 <HMAC>" signature line, verified
 * with the secret of $CHAT_TOKEN_SECRET_FILE), the 8000-byte split, ref:true for large
 * bodies, that rolled-back work notifies no one, offline nodes, receipts
 * and the typing rate limit.  Runs once per chat.fanout_mode given on the
 * command line (direct, worker).  Exit status 1 on any failure.
 *
 * Connection parameters come from the environment (PGHOST, PGPORT, ...);
 * argv[1] is the database.
 */
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define MAX_EVENTS 4096

/* One event of a notification: channel, recipient header and JSON line. */
typedef struct Event
{
	char		channel[64];
	char	   *header;
	char	   *json;
	int			payload_len;	/* length of the whole notification */
} Event;

static PGconn *sql;
static PGconn *listener;
static Event events[MAX_EVENTS];
static int	nevents;
static int	failures;
static const char *mode;
static unsigned char notify_key[32];	/* HMAC(secret, "chat-notify") */
static int	bad_signatures;
static int	signed_payloads;
static int	stamped_payloads;	/* with a commit stamp (issue 11) */

/* Prints a failed check. */
static void
fail(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stdout, "not ok [%s] ", mode);
	vfprintf(stdout, fmt, ap);
	fprintf(stdout, "\n");
	va_end(ap);
	failures++;
}

/* Records a check. */
static void
check(int ok, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stdout, "%s [%s] ", ok ? "ok" : "not ok", mode);
	vfprintf(stdout, fmt, ap);
	fprintf(stdout, "\n");
	va_end(ap);
	if (!ok)
		failures++;
}

/* Runs SQL that must succeed; returns the first value of the first row. */
static char *
run(const char *fmt,...)
{
	static char value[8192];
	char		query[65536 + 1024];
	va_list		ap;
	PGresult   *res;

	va_start(ap, fmt);
	vsnprintf(query, sizeof(query), fmt, ap);
	va_end(ap);
	res = PQexec(sql, query);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "query failed: %.200s\n%s", query, PQerrorMessage(sql));
		exit(2);
	}
	value[0] = '\0';
	if (PQntuples(res) > 0 && PQnfields(res) > 0)
		snprintf(value, sizeof(value), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	return value;
}

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Forgets the collected events. */
static void
clear_events(void)
{
	int			i;

	for (i = 0; i < nevents; i++)
	{
		free(events[i].header);
		free(events[i].json);
	}
	nevents = 0;
}

/* Reads the token secret file like the gateway (minus one trailing newline)
 * and derives the notification key. */
static void
load_key(void)
{
	const char *path = getenv("CHAT_TOKEN_SECRET_FILE");
	char		buf[4096];
	size_t		n;
	unsigned int klen = 0;
	FILE	   *f;

	if (!path || !(f = fopen(path, "rb")))
	{
		fprintf(stderr, "CHAT_TOKEN_SECRET_FILE is not set or unreadable\n");
		exit(2);
	}
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	if (n > 0 && buf[n - 1] == '\n')
		n--;
	HMAC(EVP_sha256(), buf, (int) n, (const unsigned char *) "chat-notify", 11, notify_key, &klen);
}

/* True when payload starts with a valid "v1 <hex HMAC-SHA256>\n" line. */
static int
signature_valid(const char *payload)
{
	unsigned char mac[32];
	unsigned int mlen = 0;
	char		hex[65];
	int			i;

	if (strlen(payload) < 68 || strncmp(payload, "v1 ", 3) != 0 || payload[67] != '\n')
		return 0;
	HMAC(EVP_sha256(), notify_key, sizeof(notify_key), (const unsigned char *) payload + 68,
		 strlen(payload) - 68, mac, &mlen);
	for (i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	return CRYPTO_memcmp(hex, payload + 3, 64) == 0;
}

/* Splits a notification into its (header, json) line pairs after the signature line. */
static void
add_notification(PGnotify *n)
{
	char	   *copy;
	char	   *save = NULL;
	char	   *line;
	char	   *header = NULL;
	int			len = strlen(n->extra);
	int			i = 0;
	int			stamped;

	if (!signature_valid(n->extra))
	{
		bad_signatures++;
		fail("notification on %s without a valid v1 signature line: %.80s", n->relname, n->extra);
		return;
	}
	signed_payloads++;
	copy = strdup(n->extra + 68);

	/*
	 * Lines split by hand (strtok would merge the empty recipient line of
	 * a commit stamp).  A stamp pair (monitoring, issue 11: "" then
	 * {"type":"committed","at":<unix us>}) is counted, checked against
	 * the clock and left out of the events.
	 */
	stamped = 0;
	for (line = copy; line; line = save, i++)
	{
		save = strchr(line, '\n');
		if (save)
			*save++ = '\0';
		if (i % 2 == 0)
		{
			header = line;
			continue;
		}
		if (header[0] == '\0' && strncmp(line, "{\"type\":\"committed\",\"at\":", 25) == 0)
		{
			double		at_ms = atof(line + 25) / 1000.0;
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			stamped = 1;
			if (i != 1 && strcmp(mode, "direct") == 0)
				fail("direct mode: a commit stamp not at the start of the payload: %.80s", n->extra);
			if (at_ms > ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6 + 1 ||
				at_ms < ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6 - 600000)
				fail("commit stamp %s is not within 10 minutes before now", line + 25);
			continue;
		}
		if (!stamped)
			fail("notification on %s: an event before any commit stamp: %.80s", n->relname, n->extra);
		if (nevents >= MAX_EVENTS)
			continue;
		snprintf(events[nevents].channel, sizeof(events[nevents].channel), "%s", n->relname);
		events[nevents].header = strdup(header);
		events[nevents].json = strdup(line);
		events[nevents++].payload_len = len;
	}
	if (i % 2 != 0)
		fail("notification on %s has a header without an event line: %.80s", n->relname, n->extra);
	stamped_payloads += stamped;
	free(copy);
}

/* Collects the notifications arriving within ms milliseconds. */
static void
collect(int ms)
{
	double		deadline = now_ms() + ms;
	PGnotify   *n;

	clear_events();
	for (;;)
	{
		struct pollfd pfd = {PQsocket(listener), POLLIN, 0};
		double		left = deadline - now_ms();

		if (left <= 0)
			break;
		if (poll(&pfd, 1, (int) left + 1) > 0)
		{
			PQconsumeInput(listener);
			while ((n = PQnotifies(listener)) != NULL)
			{
				add_notification(n);
				PQfreemem(n);
			}
		}
	}
}

/* Number of collected events on channel whose JSON contains needle. */
static int
count_events(const char *channel, const char *needle)
{
	int			i,
				c = 0;

	for (i = 0; i < nevents; i++)
		if ((!channel || strcmp(events[i].channel, channel) == 0) &&
			(!needle || strstr(events[i].json, needle)))
			c++;
	return c;
}

/* The header of the only event on channel matching needle, or "" */
static const char *
header_of(const char *channel, const char *needle)
{
	int			i;

	for (i = 0; i < nevents; i++)
		if (strcmp(events[i].channel, channel) == 0 && strstr(events[i].json, needle))
			return events[i].header;
	return "";
}

/* Sets up users 1..6, a group of 1-4 and sessions on gw1/gw2. */
static char *
setup(void)
{
	static char group[32];

	run("SET chat.fanout_mode = '%s'", mode);
	run("SELECT chat.upsert_user(i, 'u' || i) FROM generate_series(1, 6) i");
	run("SELECT chat.register_device(i) FROM generate_series(1, 6) i");
	run("SELECT chat.register_device(2)");	/* user 2 has devices 1 and 2 */
	run("SELECT chat.node_reset('gw1'), chat.node_reset('gw2'), chat.node_reset('gw3'), chat.node_reset('dead')");
	run("SELECT chat.connect('gw1', 1, 1), chat.connect('gw1', 2, 1), chat.connect('gw2', 2, 2),"
		" chat.connect('gw2', 3, 1), chat.connect('dead', 5, 1)");
	snprintf(group, sizeof(group), "%s",
			 run("SELECT chat.create_group(1, 'rt', ARRAY[2, 3, 4, 5]::bigint[])"));
	run("UPDATE chat.nodes SET heartbeat_at = now() - interval '1 hour' WHERE node = 'dead'");
	return group;
}

/* A message goes once to each node with exactly its online recipients. */
static void
test_routing(const char *g)
{
	char		expected[1024];
	char		seq[32],
				created[64];
	int			i;

	collect(300);				/* drop setup events */
	run("SELECT seq FROM chat.send_message(1, %s, E'hi \"you\"\\n\\t\\\\ \\u00e9', 'c-%s', NULL, 1)", g, mode);
	collect(500);
	snprintf(seq, sizeof(seq), "%s", run("SELECT last_seq FROM chat.conversations WHERE id = %s", g));
	snprintf(created, sizeof(created), "%s",
			 run("SELECT chat.json_timestamp(created_at) FROM chat.messages WHERE conversation_id = %s AND seq = %s", g, seq));
	snprintf(expected, sizeof(expected),
			 "{\"type\":\"message\",\"conversation\":%s,\"seq\":%s,\"sender\":1,\"sender_device\":1,"
			 "\"kind\":\"text\",\"body\":\"hi \\\"you\\\"\\n\\t\\\\ \xc3\xa9\",\"client_msg_id\":\"c-%s\","
			 "\"reply_to\":null,\"created_at\":\"%s\"}", g, seq, mode, created);
	check(count_events("chat_node_gw1", "\"type\":\"message\"") == 1, "one message event on gw1");
	check(count_events("chat_node_gw2", "\"type\":\"message\"") == 1, "one message event on gw2");
	check(count_events("chat_node_gw3", NULL) == 0, "nothing on gw3 (no members there)");
	check(count_events("chat_node_dead", NULL) == 0, "nothing on a node past chat.node_timeout");
	check(strcmp(header_of("chat_node_gw1", "\"type\":\"message\""), "1,2") == 0,
		  "gw1 header lists users 1,2 (sender's own devices included): %s",
		  header_of("chat_node_gw1", "\"type\":\"message\""));
	check(strcmp(header_of("chat_node_gw2", "\"type\":\"message\""), "2,3") == 0,
		  "gw2 header lists users 2,3: %s", header_of("chat_node_gw2", "\"type\":\"message\""));
	for (i = 0; i < nevents; i++)
		if (strstr(events[i].json, "\"type\":\"message\""))
			check(strcmp(events[i].json, expected) == 0, "event JSON is exact and escaped: %s", events[i].json);
	check(atoi(run("SELECT count(*) FROM chat.push_outbox")) == 0, "no push rows (no push tokens)");
}

/* A rolled-back send or savepoint notifies no one. */
static void
test_rollback(const char *g)
{
	run("BEGIN");
	run("SELECT chat.send_message(1, %s, 'never')", g);
	run("ROLLBACK");
	run("BEGIN");
	run("SAVEPOINT s");
	run("SELECT chat.send_message(1, %s, 'undone')", g);
	run("ROLLBACK TO SAVEPOINT s");
	run("SELECT chat.send_message(1, %s, 'kept')", g);
	run("COMMIT");
	collect(500);
	check(count_events(NULL, "never") == 0, "rolled-back send notifies no one");
	check(count_events(NULL, "undone") == 0, "send rolled back to a savepoint notifies no one");
	check(count_events(NULL, "kept") == 2, "the send after the savepoint goes to gw1 and gw2");
	/* client_request: a failed request inside is rolled back, the next works */
	run("BEGIN");
	run("SELECT chat.client_request('gw1', 6, 1, '{\"id\":1,\"type\":\"send\",\"conversation\":%s,\"body\":\"intruder\"}')", g);
	run("SELECT chat.client_request('gw1', 1, 1, '{\"id\":2,\"type\":\"send\",\"conversation\":%s,\"body\":\"after error\"}')", g);
	run("COMMIT");
	collect(500);
	check(count_events(NULL, "intruder") == 0, "a refused client request sends nothing");
	check(count_events(NULL, "after error") == 2, "the next request in the same transaction works");
}

/* Milliseconds until an event whose JSON contains needle arrives, or -1
 * after timeout_ms. */
static double
wait_event(const char *needle, int timeout_ms)
{
	double		start = now_ms();
	PGnotify   *n;

	clear_events();
	for (;;)
	{
		struct pollfd pfd = {PQsocket(listener), POLLIN, 0};
		double		left = start + timeout_ms - now_ms();

		if (left <= 0)
			return -1;
		if (poll(&pfd, 1, (int) left + 1) > 0)
		{
			PQconsumeInput(listener);
			while ((n = PQnotifies(listener)) != NULL)
			{
				add_notification(n);
				PQfreemem(n);
			}
			if (count_events(NULL, needle) > 0)
				return now_ms() - start;
		}
	}
}

/*
 * The worker batches only under load: with chat.notifier_delay at 1 s, a
 * send 100 ms after another (the worker idle again) is notified at once,
 * not when the batching window of the first pass ends.
 */
static void
test_idle_flush(const char *g)
{
	double		first,
				second;

	run("ALTER SYSTEM SET chat.notifier_delay = '1s'");
	run("SELECT pg_reload_conf()");
	usleep(300 * 1000);
	run("SELECT chat.send_message(1, %s, 'idle flush 1')", g);
	first = wait_event("idle flush 1", 3000);
	usleep(100 * 1000);
	run("SELECT chat.send_message(1, %s, 'idle flush 2')", g);
	second = wait_event("idle flush 2", 3000);
	run("ALTER SYSTEM RESET chat.notifier_delay");
	run("SELECT pg_reload_conf()");
	check(first >= 0 && first < 500, "first event after a quiet spell at once (%.0f ms)", first);
	check(second >= 0 && second < 500,
		  "an event while the worker is idle goes at once, not after chat.notifier_delay (%.0f ms)",
		  second);
}

/* A body too large for a payload goes as ref:true, without the body. */
static void
test_ref(const char *g)
{
	int			i,
				ok = 1;

	run("SELECT chat.send_message(1, %s, repeat('x', 60000))", g);
	collect(500);
	check(count_events(NULL, "\"ref\":true") == 2, "large body: ref:true event on gw1 and gw2");
	for (i = 0; i < nevents; i++)
		if (strstr(events[i].json, "xxxx") || events[i].payload_len > 7999)
			ok = 0;
	check(ok, "no body in ref events, every payload under 8000 bytes");
	run("SELECT chat.send_message(1, %s, repeat('y', 7000))", g);
	collect(500);
	check(count_events(NULL, "yyyy") == 2, "a 7000-byte body still fits inline");
}

/* A group larger than one payload can list is split over notifications. */
static void
test_split(void)
{
	char		g[32];
	int			i,
				total = 0,
				ok = 1,
				dup = 0;
	static char seen[1001];

	run("SELECT chat.upsert_user(1000000000000000 + i, 'big' || i) FROM generate_series(1, 1000) i");
	run("SELECT chat.register_device(1000000000000000 + i) FROM generate_series(1, 1000) i");
	run("SELECT chat.connect('gw3', 1000000000000000 + i, 1) FROM generate_series(1, 1000) i");
	snprintf(g, sizeof(g), "%s",
			 run("SELECT chat.create_group(1000000000000001, 'big',"
				 " ARRAY(SELECT 1000000000000000 + i FROM generate_series(2, 1000) i))"));
	collect(800);
	run("SELECT chat.send_message(1000000000000001, %s, 'to everyone')", g);
	collect(800);
	memset(seen, 0, sizeof(seen));
	for (i = 0; i < nevents; i++)
	{
		char	   *h,
				   *save = NULL,
				   *tok;

		if (!strstr(events[i].json, "to everyone"))
			continue;
		total++;
		if (events[i].payload_len > 7999 || strcmp(events[i].channel, "chat_node_gw3") != 0)
			ok = 0;
		h = strdup(events[i].header);
		for (tok = strtok_r(h, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		{
			long long	id = atoll(tok) - 1000000000000000LL;

			if (id < 1 || id > 1000)
				ok = 0;
			else if (seen[id]++)
				dup++;
		}
		free(h);
	}
	for (i = 1; i <= 1000; i++)
		if (!seen[i])
			ok = 0;
	check(total >= 3, "1000 recipients with 16-digit ids take %d notifications (>= 3)", total);
	check(ok && dup == 0, "split headers list every member exactly once, payloads under 8000 bytes");
	run("SELECT chat.node_reset('gw3')");
}

/* Receipts go to the senders of the covered messages only. */
static void
test_receipts(const char *g)
{
	char		expected[256];

	run("SELECT chat.send_message(3, %s, 'from 3')", g);
	collect(300);
	run("SELECT chat.mark_read(2, %s, (SELECT last_seq FROM chat.conversations WHERE id = %s))", g, g);
	collect(500);
	snprintf(expected, sizeof(expected), "\"type\":\"receipt\",\"conversation\":%s,\"user\":2,\"read\":", g);
	check(strcmp(header_of("chat_node_gw1", expected), "1") == 0, "read receipt to sender 1 on gw1");
	check(strcmp(header_of("chat_node_gw2", expected), "3") == 0, "read receipt to sender 3 on gw2");
	check(count_events(NULL, expected) == 2, "no receipt to anyone else");
}

/* Typing: the other members only; at most one per interval. */
static void
test_typing(const char *g)
{
	int			i;

	run("SET chat.typing_interval = '400ms'");
	for (i = 0; i < 5; i++)
		run("SELECT chat.typing(3, %s)", g);
	collect(300);
	check(count_events("chat_node_gw1", "\"typing\":true") == 1, "5 quick typing calls: one event on gw1");
	check(strcmp(header_of("chat_node_gw2", "\"typing\""), "2") == 0,
		  "typing goes to the other members (not user 3 itself): %s", header_of("chat_node_gw2", "\"typing\""));
	run("SELECT chat.typing(3, %s, false)", g);
	run("SELECT chat.typing(3, %s, false)", g);
	collect(300);
	check(count_events("chat_node_gw1", "\"typing\":false") == 1, "one stop event after a start");
	usleep(450 * 1000);
	run("SELECT chat.typing(3, %s)", g);
	collect(300);
	check(count_events("chat_node_gw1", "\"typing\":true") == 1, "typing again after the interval");
}

/* SQLSTATE of SQL that must fail ("" when it succeeds). */
static const char *
run_error(const char *query)
{
	static char code[8];
	PGresult   *res = PQexec(sql, query);

	code[0] = '\0';
	if (PQresultStatus(res) == PGRES_FATAL_ERROR && PQresultErrorField(res, PG_DIAG_SQLSTATE))
		snprintf(code, sizeof(code), "%s", PQresultErrorField(res, PG_DIAG_SQLSTATE));
	PQclear(res);
	return code;
}

/*
 * The one-query typing audience (TypingRoutes) and receipts with the
 * reader's read_receipts folded into the senders query: who gets what with
 * a block inside a group, a typist alone, a non-member, and read_receipts
 * off and on.
 */
static void
test_hotpath(const char *g)
{
	char		q[256];
	char	   *solo;

	run("SET chat.typing_interval = 0");
	collect(200);
	/* user 3 blocks user 1: typing between them stops both ways, the others still see it */
	run("SELECT chat.block(3, 1)");
	collect(300);
	run("SELECT chat.typing(1, %s)", g);
	collect(400);
	check(strcmp(header_of("chat_node_gw1", "\"typing\""), "2") == 0,
		  "typist 1 in a block with 3: gw1 gets user 2 only (%s)", header_of("chat_node_gw1", "\"typing\""));
	check(strcmp(header_of("chat_node_gw2", "\"typing\""), "2") == 0,
		  "typist 1 in a block with 3: gw2 gets user 2 only, not 3 (%s)", header_of("chat_node_gw2", "\"typing\""));
	run("SELECT chat.typing(3, %s)", g);
	collect(400);
	check(strcmp(header_of("chat_node_gw1", "\"typing\""), "2") == 0,
		  "typist 3, the blocker: not to 1 on gw1 (%s)", header_of("chat_node_gw1", "\"typing\""));
	check(count_events("chat_node_gw2", "\"typing\"") == 1 &&
		  strcmp(header_of("chat_node_gw2", "\"typing\""), "2") == 0,
		  "typist 3: user 2 on gw2, not itself (%s)", header_of("chat_node_gw2", "\"typing\""));
	run("SELECT chat.typing(2, %s)", g);
	collect(400);
	check(strcmp(header_of("chat_node_gw1", "\"typing\""), "1") == 0 &&
		  strcmp(header_of("chat_node_gw2", "\"typing\""), "3") == 0,
		  "typist 2, in no block: 1 on gw1 and 3 on gw2, never itself (%s / %s)",
		  header_of("chat_node_gw1", "\"typing\""), header_of("chat_node_gw2", "\"typing\""));
	run("SELECT chat.unblock(3, 1)");
	collect(300);
	run("SELECT chat.typing(1, %s)", g);
	collect(400);
	check(strcmp(header_of("chat_node_gw2", "\"typing\""), "2,3") == 0,
		  "unblocked: 1's typing reaches 3 again (%s)", header_of("chat_node_gw2", "\"typing\""));
	/* alone in a group: no event, no error; a non-member: 42501, nothing sent */
	solo = strdup(run("SELECT chat.create_group(2, 'solo', ARRAY[]::bigint[])"));
	collect(300);
	run("SELECT chat.typing(2, %s)", solo);
	collect(300);
	check(count_events(NULL, "typing") == 0, "typist alone in a group: no typing event");
	snprintf(q, sizeof(q), "SELECT chat.typing(6, %s)", g);
	check(strcmp(run_error(q), "42501") == 0, "typing by a non-member: 42501 (%s)", run_error(q));
	collect(300);
	check(count_events(NULL, "typing") == 0, "a refused typing sends nothing");
	free(solo);

	/* read receipts: the reader's read_receipts decides read or delivered */
	run("SELECT chat.send_message(1, %s, 'receipt me')", g);
	collect(300);
	run("UPDATE chat.users SET read_receipts = false WHERE id = 2");
	run("SELECT chat.fanout_receipt(%s, 2, 0, (SELECT last_seq FROM chat.conversations WHERE id = %s), 'read')", g, g);
	collect(400);
	check(count_events(NULL, "\"type\":\"receipt\"") == 2 && count_events(NULL, "\"read\":") == 0 &&
		  count_events(NULL, "\"delivered\":") == 2,
		  "read_receipts off: the read goes out as delivered, to senders 1 and 3");
	run("UPDATE chat.users SET read_receipts = true WHERE id = 2");
	run("SELECT chat.fanout_receipt(%s, 2, 0, (SELECT last_seq FROM chat.conversations WHERE id = %s), 'read')", g, g);
	collect(400);
	check(count_events(NULL, "\"read\":") == 2 && count_events(NULL, "\"delivered\":") == 0,
		  "read_receipts on: read receipts to senders 1 and 3");
	run("SELECT chat.fanout_receipt(%s, 2, 0, (SELECT last_seq FROM chat.conversations WHERE id = %s), 'delivered')", g, g);
	collect(400);
	check(count_events(NULL, "\"delivered\":") == 2, "a delivered receipt stays delivered");
	/* a range of the reader's own messages only: nobody to tell */
	run("SELECT chat.send_message(2, %s, 'mine')", g);
	collect(300);
	run("SELECT chat.fanout_receipt(%s, 3, (SELECT last_seq - 1 FROM chat.conversations WHERE id = %s),"
		" (SELECT last_seq FROM chat.conversations WHERE id = %s), 'read')", g, g, g);
	collect(300);
	check(count_events(NULL, "receipt") == 2 && strcmp(header_of("chat_node_gw1", "receipt"), "2") == 0 &&
		  strcmp(header_of("chat_node_gw2", "receipt"), "2") == 0,
		  "a receipt of user 2's message goes to user 2 only, on its two nodes (%d)", count_events(NULL, "receipt"));
	/* the reader's own message only: nobody to tell */
	run("SELECT chat.fanout_receipt(%s, 2, (SELECT last_seq - 1 FROM chat.conversations WHERE id = %s),"
		" (SELECT last_seq FROM chat.conversations WHERE id = %s), 'read')", g, g, g);
	collect(300);
	check(count_events(NULL, "receipt") == 0, "a receipt of the reader's own message only: none");
	run("RESET chat.typing_interval");
}

/*
 * Presence debounce (chat.presence_grace): a quick reconnect sends neither
 * offline nor online; a user who stays away is announced offline by the
 * heartbeat's sweep once the grace has passed, and online again after.
 */
static void
test_presence_debounce(void)
{
	run("SET chat.presence_grace = '1h'");
	collect(200);
	run("SELECT chat.disconnect('gw2', 3, 1)");
	run("SELECT chat.connect('gw2', 3, 1)");
	collect(400);
	check(count_events(NULL, "presence") == 0, "quick reconnect within the grace: no presence event (%d)",
		  count_events(NULL, "presence"));
	run("SELECT chat.disconnect('gw2', 3, 1)");
	run("SELECT chat.node_heartbeat('gw1')");
	collect(400);
	check(count_events(NULL, "\"user\": 3") == 0, "gone, grace not over: the sweep announces nothing yet");
	run("UPDATE chat.presence_pending SET since = now() - interval '2 hours' WHERE user_id = 3");
	run("SELECT chat.node_heartbeat('gw1')");
	collect(400);
	check(count_events("chat_node_gw1", "\"user\": 3, \"online\": false") == 1,
		  "grace over: the next heartbeat announces user 3 offline to its peers on gw1");
	run("SELECT chat.node_heartbeat('gw1')");
	collect(300);
	check(count_events(NULL, "\"user\": 3") == 0, "announced once only");
	run("SELECT chat.connect('gw2', 3, 1)");
	collect(400);
	check(count_events("chat_node_gw1", "\"user\": 3, \"online\": true") == 1,
		  "back after the announcement: online again");
	run("RESET chat.presence_grace");
}

/* Presence: first device online / last device offline, and privacy. */
static void
test_presence(void)
{
	run("SELECT chat.connect('gw3', 4, 1)");
	collect(400);
	check(count_events("chat_node_gw1", "\"online\": true") == 1, "user 4 online: presence to its peers on gw1");
	run("SELECT chat.connect('gw3', 4, 1)");
	collect(300);
	check(count_events(NULL, "presence") == 0, "a repeated connect sends no presence");
	/* a node gone silent: a heartbeat of another node announces its users */
	run("SELECT chat.direct_conversation(1, 6)");
	run("SELECT chat.connect('gw4', 6, 1)");
	collect(400);
	check(strcmp(header_of("chat_node_gw1", "\"user\": 6, \"online\": true"), "1") == 0,
		  "user 6 online on gw4: presence to its peer 1 on gw1");
	run("UPDATE chat.nodes SET heartbeat_at = now() - interval '1 hour' WHERE node = 'gw4'");
	run("SELECT chat.node_heartbeat('gw1')");
	collect(400);
	check(count_events("chat_node_gw1", "\"user\": 6, \"online\": false") == 1,
		  "gw4 silent: the next heartbeat of gw1 announces user 6 offline");
	run("SELECT chat.node_heartbeat('gw1')");
	collect(300);
	check(count_events(NULL, "\"user\": 6") == 0, "announced once only");
	run("SELECT chat.node_heartbeat('gw4')");
	collect(400);
	check(count_events("chat_node_gw1", "\"user\": 6, \"online\": true") == 1,
		  "gw4 heard from again: user 6 online again");
	run("SELECT chat.node_heartbeat('gw1'), chat.node_heartbeat('gw2'), chat.node_heartbeat('gw3')");
	run("UPDATE chat.users SET presence_privacy = 'nobody' WHERE id = 4");
	run("SELECT chat.disconnect('gw3', 4, 1)");
	collect(400);
	check(count_events(NULL, "presence") == 0, "privacy nobody: no presence events");
}

/* claim_push: rows another transaction holds are skipped, not waited for. */
static void
test_push_skip_locked(const char *g)
{
	PGresult   *res;
	char		held[32];

	run("SELECT chat.register_device(4, 'ios', 'tok-4-' || '%s')", mode);
	run("SELECT chat.send_message(1, %s, 'push one')", g);
	run("SELECT chat.send_message(1, %s, 'push two')", g);
	run("BEGIN");
	snprintf(held, sizeof(held), "%s", run("SELECT id FROM chat.claim_push(1)"));
	/* the listener connection is a second session */
	PQclear(PQexec(listener, "SET lock_timeout = '2s'"));
	res = PQexec(listener, "SELECT string_agg(id::text, ',') FROM chat.claim_push(100)");
	check(PQresultStatus(res) == PGRES_TUPLES_OK, "a concurrent claim does not block: %s",
		  PQresultErrorMessage(res));
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		check(held[0] != '\0' && !PQgetisnull(res, 0, 0) && strstr(PQgetvalue(res, 0, 0), held) == NULL,
			  "a concurrent claim skips the held row %s (got %s)", held, PQgetvalue(res, 0, 0));
	PQclear(res);
	run("COMMIT");
	check(atoi(run("SELECT count(*) FROM chat.push_outbox WHERE attempts = 1")) >= 2,
		  "both claims counted their attempt");
	run("DELETE FROM chat.push_outbox");
	run("UPDATE chat.devices SET push_token = NULL WHERE user_id = 4");
}

/* remove_device: a revoked event for the device, only to the node holding it. */
static void
test_revoked(void)
{
	collect(200);
	run("SELECT chat.remove_device(2, 2)");	/* device 1 of user 2 is on gw1, device 2 on gw2 */
	collect(500);
	check(count_events("chat_node_gw2", "{\"type\":\"revoked\",\"user\":2,\"device\":2}") == 1,
		  "remove_device: revoked event on gw2, which holds the device");
	check(strcmp(header_of("chat_node_gw2", "revoked"), "2") == 0, "revoked header lists user 2: %s",
		  header_of("chat_node_gw2", "revoked"));
	check(count_events("chat_node_gw1", "revoked") == 0,
		  "nothing on gw1 (the user's other device is there)");
	run("SELECT chat.remove_device(4, chat.register_device(4))");	/* no session: nobody to tell */
	collect(300);
	check(count_events(NULL, "revoked") == 0, "a device without sessions: no event");
}

int
main(int argc, char **argv)
{
	char		conninfo[256];
	char	   *g;

	if (argc < 3)
	{
		fprintf(stderr, "usage: %s DBNAME MODE...\n", argv[0]);
		return 2;
	}
	load_key();
	for (int m = 2; m < argc; m++)
	{
		mode = argv[m];
		signed_payloads = bad_signatures = 0;
		snprintf(conninfo, sizeof(conninfo), "dbname=%s", argv[1]);
		sql = PQconnectdb(conninfo);
		listener = PQconnectdb(conninfo);
		if (PQstatus(sql) != CONNECTION_OK || PQstatus(listener) != CONNECTION_OK)
		{
			fprintf(stderr, "connection failed: %s", PQerrorMessage(sql));
			return 2;
		}
		PQclear(PQexec(sql, "SET client_min_messages = warning"));
		PQclear(PQexec(sql, "DROP EXTENSION IF EXISTS chat CASCADE"));
		PQclear(PQexec(sql, "CREATE EXTENSION chat"));
		PQclear(PQexec(listener, "LISTEN chat_node_gw1; LISTEN chat_node_gw2; LISTEN chat_node_gw3; LISTEN chat_node_dead"));
		g = setup();
		test_routing(g);
		test_rollback(g);
		if (strcmp(mode, "worker") == 0)
			test_idle_flush(g);
		test_ref(g);
		test_receipts(g);
		test_typing(g);
		test_hotpath(g);
		test_presence_debounce();
		test_presence();
		test_push_skip_locked(g);
		test_split();
		test_revoked();
		clear_events();
		check(signed_payloads > 0 && bad_signatures == 0,
			  "all %d payloads carry a valid v1 HMAC signature line (%d bad)",
			  signed_payloads, bad_signatures);
		check(stamped_payloads == signed_payloads,
			  "all %d payloads carry a commit stamp (%d do)", signed_payloads, stamped_payloads);
		signed_payloads = stamped_payloads = 0;
		PQfinish(sql);
		PQfinish(listener);
	}
	printf("%s\n", failures ? "FAILED" : "all realtime checks passed");
	return failures ? 1 : 0;
}
