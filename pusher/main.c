/*
 * main.c: chat-pusher, the process that delivers pgchat's push outbox.
 *
 * One thread, one loop: curl_multi_poll waits on the HTTP transfers, the
 * libpq socket (LISTEN chat_push: the extension notifies when it queues
 * rows) and a self-pipe for signals, with a timeout that is the next due
 * row (a retry, or a crashed pusher's expired lease), at most 30 s away.
 * Rows are claimed with chat.claim_push_deliveries (FOR UPDATE SKIP LOCKED,
 * so any number of pushers may run), delivered with up to --concurrency
 * requests in flight (HTTP/2 multiplexed where the endpoint speaks it),
 * their 30 s leases renewed every 10 s while in flight, and each is then
 * completed (2xx), forgotten (404/410: the registration is gone) or failed
 * (429/5xx/transport: retried after Retry-After or with backoff).
 * Database calls are short and synchronous; a transfer finishing meanwhile
 * waits in curl until the next loop pass.
 */
#define _GNU_SOURCE				/* accept4 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "webpush.h"

#define IDLE_WAKE_MS 30000		/* longest sleep: bounds the pickup of an expired lease */
#define RENEW_EVERY_S 10.0		/* leases are 30 s (chat.claim_push) */
#define RECONNECT_EVERY_S 2.0
#define VAPID_TTL_S 43200		/* JWT lifetime: 12 h, under RFC 8292's 24 h */
#define MAX_TOKEN 4097

/* Flags (env CHAT_<FLAG>). */
typedef struct Config
{
	const char *dsn;
	const char *vapid_private_key;
	const char *vapid_subject;
	int			concurrency;
	long		ttl;
	long		request_timeout;
	const char *metrics_listen; /* HOST:PORT, or NULL */
} Config;

/* Why a row failed: the label of chat_pusher_failed_total. */
typedef enum FailReason
{
	FAIL_TRANSPORT,
	FAIL_HTTP_429,
	FAIL_HTTP_5XX,
	FAIL_HTTP_4XX,
	FAIL_UNSUPPORTED,
	FAIL_INVALID,
	FAIL_NREASONS
} FailReason;

static const char *const fail_labels[FAIL_NREASONS] = {
	"transport", "http_429", "http_5xx", "http_4xx", "unsupported_platform", "invalid_registration"
};

/* One notification in flight. */
typedef struct Delivery
{
	int64_t		id;
	char		id_text[24];
	char	   *token;			/* the registration it was sent to (forget_push) */
	CURL	   *easy;
	struct curl_slist *headers;
	unsigned char *body;
	struct Delivery *next;
} Delivery;

static Config cfg = {.dsn = "", .concurrency = 64, .ttl = 86400, .request_timeout = 30};
static PGconn *db;
static CURLM *multi;
static EVP_PKEY *vapid_key;
static Delivery *inflight;
static int	ninflight;
static bool want_claim = true;
static double next_due;			/* epoch seconds; 0: nothing scheduled */
static double last_renew;
static double last_reconnect;
static int	signal_pipe[2] = {-1, -1};
static volatile sig_atomic_t stopping;
static int64_t *done_ids;		/* delivered, to complete in one call */
static int	ndone;
static int	metrics_fd = -1;
static struct
{
	long		sent,
				gone,
				retried,
				failed[FAIL_NREASONS];
} stats;

/* Wall-clock seconds. */
static double
Now(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return tv.tv_sec + tv.tv_usec / 1e6;
}

/* One JSON log line on stderr: {"ts","level","msg"} plus the row id when there is one. */
static void
Log(const char *level, int64_t id, const char *fmt,...)
{
	char		msg[1024],
				ts[32];
	time_t		t = time(NULL);
	struct tm	tm;
	json_t	   *line;
	char	   *text;
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	line = json_pack("{s:s,s:s,s:s}", "ts", ts, "level", level, "msg", msg);
	if (line != NULL && id > 0)
		json_object_set_new(line, "push", json_integer(id));
	text = line ? json_dumps(line, JSON_COMPACT) : NULL;
	fprintf(stderr, "%s\n", text ? text : msg);
	free(text);
	json_decref(line);
}

/* Exits with a configuration error naming the flag. */
static void
ConfigFail(const char *flag, const char *why)
{
	fprintf(stderr, "chat-pusher: --%s: %s (see --help)\n", flag, why);
	exit(2);
}

/* --help. */
static void
Usage(void)
{
	printf("usage: chat-pusher [--flag value | --flag=value]...\n\n"
		   "Delivers pgchat's push outbox (chat.push_outbox) to Web Push endpoints.\n"
		   "Every flag can also be set as CHAT_<FLAG> in the environment (dashes\n"
		   "become underscores).  Grant the pusher's database role EXECUTE on\n"
		   "chat.claim_push_deliveries, renew_push, complete_push, fail_push,\n"
		   "forget_push, next_push_due and push_queue_stats.\n\n"
		   "  --dsn                libpq connection string (required); sharded: repeat it\n"
		   "                       once per partition (one claiming process each)\n"
		   "  --vapid-private-key  PEM file with the VAPID P-256 private key (required)\n"
		   "  --vapid-subject      VAPID sub claim: mailto:... or https://... (required)\n"
		   "  --concurrency        requests in flight at most, default 64\n"
		   "  --ttl                seconds a push service keeps an undelivered\n"
		   "                       notification (TTL header), default 86400\n"
		   "  --request-timeout    seconds one request may take, default 30\n"
		   "  --metrics-listen     HOST:PORT serving /metrics (Prometheus text) and /healthz\n"
		   "  --help               this text\n\n"
		   "FCM and APNs registrations are not delivered yet: their rows are failed\n"
		   "(and given up after chat.push_max_attempts).\n");
}

/* A positive integer flag value, or a configuration error. */
static long
PositiveFlag(const char *flag, const char *v, long max)
{
	char	   *end;
	long		n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || *end || end == v || n < 1 || n > max)
	{
		char		why[128];

		snprintf(why, sizeof(why), "\"%s\" is not an integer between 1 and %ld", v, max);
		ConfigFail(flag, why);
	}
	return n;
}

#define MAX_DSNS 64
static const char *dsns[MAX_DSNS];	/* every --dsn given (sharded: one per partition) */
static int	ndsns;

/* Sets one flag; false when name is not a flag. */
static bool
SetFlag(const char *name, const char *v)
{
	if (!strcmp(name, "dsn"))
	{
		/* Sharded: every partition has its own outbox (docs/scaling.md). */
		if (ndsns < MAX_DSNS)
			dsns[ndsns++] = v;
		cfg.dsn = v;
	}
	else if (!strcmp(name, "vapid-private-key"))
		cfg.vapid_private_key = v;
	else if (!strcmp(name, "vapid-subject"))
		cfg.vapid_subject = v;
	else if (!strcmp(name, "concurrency"))
		cfg.concurrency = (int) PositiveFlag(name, v, 10000);
	else if (!strcmp(name, "ttl"))
		cfg.ttl = PositiveFlag(name, v, 28L * 86400);
	else if (!strcmp(name, "request-timeout"))
		cfg.request_timeout = PositiveFlag(name, v, 600);
	else if (!strcmp(name, "metrics-listen"))
		cfg.metrics_listen = *v ? v : NULL;
	else
		return false;
	return true;
}

/* Flags from the environment, then the command line (which wins). */
static void
ParseArgs(int argc, char **argv)
{
	static const char *const names[] = {"dsn", "vapid-private-key", "vapid-subject", "concurrency",
	"ttl", "request-timeout", "metrics-listen"};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
	{
		char		env[64] = "CHAT_";
		size_t		n = strlen(env);
		const char *v;

		for (const char *p = names[i]; *p && n < sizeof(env) - 1; p++)
			env[n++] = *p == '-' ? '_' : (char) toupper((unsigned char) *p);
		env[n] = '\0';
		if ((v = getenv(env)) && *v)
			SetFlag(names[i], v);
	}
	bool		dsn_on_command_line = false;

	for (int i = 1; i < argc; i++)
	{
		const char *a = argv[i];
		char		name[64];
		const char *eq,
				   *val;
		size_t		len;

		if (!strcmp(a, "--help") || !strcmp(a, "-h"))
		{
			Usage();
			exit(0);
		}
		if (strncmp(a, "--", 2))
			ConfigFail(a, "unexpected argument (flags start with --)");
		a += 2;
		eq = strchr(a, '=');
		len = eq ? (size_t) (eq - a) : strlen(a);
		if (len >= sizeof(name))
			ConfigFail(a, "unknown flag");
		memcpy(name, a, len);
		name[len] = '\0';
		if (eq)
			val = eq + 1;
		else if (i + 1 < argc)
			val = argv[++i];
		else
			ConfigFail(name, "needs a value");
		if (!strcmp(name, "dsn") && !dsn_on_command_line)
		{
			dsn_on_command_line = true;
			ndsns = 0;			/* the command line's --dsn replace the environment's */
		}
		if (!SetFlag(name, val))
			ConfigFail(name, "unknown flag");
	}
	if (!*cfg.dsn)
		ConfigFail("dsn", "is required");
	if (!cfg.vapid_private_key)
		ConfigFail("vapid-private-key", "is required");
	if (!cfg.vapid_subject || (strncmp(cfg.vapid_subject, "mailto:", 7) && strncmp(cfg.vapid_subject, "https://", 8)) ||
		strpbrk(cfg.vapid_subject, "\"\\ ") != NULL)
		ConfigFail("vapid-subject", "must be a mailto: or https:// URL");
}

/* Loads the VAPID key; exits naming the flag when it is not a P-256 private key. */
static void
LoadVapidKey(void)
{
	FILE	   *f = fopen(cfg.vapid_private_key, "r");
	unsigned char pub[WP_POINT_LEN];
	char		name[64] = "";

	if (f == NULL)
		ConfigFail("vapid-private-key", strerror(errno));
	vapid_key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (vapid_key == NULL || !EVP_PKEY_is_a(vapid_key, "EC") ||
		EVP_PKEY_get_utf8_string_param(vapid_key, "group", name, sizeof(name), NULL) != 1 ||
		(strcmp(name, "prime256v1") && strcmp(name, "P-256")) || wp_public_point(vapid_key, pub) != 0)
		ConfigFail("vapid-private-key", "is not a PEM P-256 private key");
}

/* Connects and LISTENs; false (logged) when the database is not there. */
static bool
DbConnect(void)
{
	PGresult   *res;

	if (db != NULL)
		PQfinish(db);
	db = PQconnectdb(cfg.dsn);
	last_reconnect = Now();
	if (PQstatus(db) != CONNECTION_OK)
	{
		Log("error", 0, "database connection failed: %s", PQerrorMessage(db));
		return false;
	}
	res = PQexec(db, "LISTEN chat_push");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		Log("error", 0, "LISTEN chat_push failed: %s", PQerrorMessage(db));
		PQclear(res);
		PQfinish(db);
		db = NULL;
		return false;
	}
	PQclear(res);
	want_claim = true;			/* rows may have come due while we were away */
	return true;
}

/* Runs a parameterized statement; the result, or NULL (logged) on error. */
static PGresult *
DbExec(const char *sql, int n, const char *const *params)
{
	PGresult   *res;

	if (db == NULL || PQstatus(db) != CONNECTION_OK)
		return NULL;
	res = PQexecParams(db, sql, n, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		Log("error", 0, "query failed: %s", PQresultErrorMessage(res));
		PQclear(res);
		return NULL;
	}
	return res;
}

/* Runs a statement whose result is not needed. */
static void
DbDo(const char *sql, int n, const char *const *params)
{
	PGresult   *res = DbExec(sql, n, params);

	PQclear(res);
}

/* Reads when the next row comes due into next_due. */
static void
ReadNextDue(void)
{
	PGresult   *res = DbExec("SELECT extract(epoch FROM chat.next_push_due())", 0, NULL);

	next_due = 0;
	if (res != NULL && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		next_due = strtod(PQgetvalue(res, 0, 0), NULL);
	PQclear(res);
}

/* Records a failed attempt: retried after retry_after seconds (0: backoff). */
static void
FailRow(int64_t id, FailReason reason, const char *error, long retry_after)
{
	char		id_text[24],
				interval[32];
	const char *params[3] = {id_text, error, NULL};

	snprintf(id_text, sizeof(id_text), "%" PRId64, id);
	if (retry_after > 0)
	{
		snprintf(interval, sizeof(interval), "%ld seconds", retry_after < 3600 ? retry_after : 3600);
		params[2] = interval;
	}
	DbDo("SELECT chat.fail_push($1, $2, $3::interval)", 3, params);
	Log("warning", id, "push failed: %s%s", error, retry_after > 0 ? " (Retry-After honoured)" : "");
	stats.failed[reason]++;
}

/* Discards a response body (push services answer with little or nothing). */
static size_t
DiscardBody(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	(void) ptr;
	(void) userdata;
	return size * nmemb;
}

/* Frees a delivery that is not (or no longer) in the multi handle. */
static void
FreeDelivery(Delivery *d)
{
	if (d->easy)
		curl_easy_cleanup(d->easy);
	curl_slist_free_all(d->headers);
	free(d->body);
	free(d->token);
	free(d);
}

/* Appends a header line; false when out of memory. */
static bool
AddHeader(Delivery *d, const char *line)
{
	struct curl_slist *l = curl_slist_append(d->headers, line);

	if (l == NULL)
		return false;
	d->headers = l;
	return true;
}

/*
 * Encrypts payload for a Web Push subscription and starts the request.
 * Returns NULL and sets *why when the row cannot be sent as it is.
 */
static Delivery *
StartWebPush(int64_t id, const char *token, const char *subscription, const char *topic,
			 const char *payload, const char **why)
{
	json_t	   *sub = json_loads(subscription, 0, NULL);
	const char *endpoint = NULL,
			   *p256dh = NULL,
			   *auth = NULL;
	unsigned char ua[WP_POINT_LEN],
				secret[WP_AUTH_LEN],
				salt[WP_SALT_LEN];
	char		line[2048];
	size_t		plen = strlen(payload);
	EVP_PKEY   *ephemeral = NULL;
	Delivery   *d = NULL;
	int			body_len;

	*why = "subscription is not {endpoint, keys: {p256dh, auth}}";
	if (sub == NULL || json_unpack(sub, "{s:s, s:{s:s, s:s}}", "endpoint", &endpoint, "keys",
								   "p256dh", &p256dh, "auth", &auth) != 0 ||
		b64url_decode(p256dh, ua, sizeof(ua)) != WP_POINT_LEN ||
		b64url_decode(auth, secret, sizeof(secret)) != WP_AUTH_LEN)
		goto fail;
	*why = "payload too large for one Web Push record";
	if (plen > WP_MAX_PLAINTEXT)
		goto fail;
	*why = "out of memory";
	d = calloc(1, sizeof(*d));
	if (d == NULL || (d->token = strdup(token)) == NULL || (d->body = malloc(WP_BODY_LEN(plen))) == NULL)
		goto fail;
	d->id = id;
	snprintf(d->id_text, sizeof(d->id_text), "%" PRId64, id);
	*why = "encryption failed (p256dh not on the curve?)";
	ephemeral = wp_generate_key();
	if (ephemeral == NULL || RAND_bytes(salt, sizeof(salt)) != 1 ||
		(body_len = wp_encrypt(ua, secret, ephemeral, salt, (const unsigned char *) payload, plen, d->body)) < 0)
		goto fail;
	*why = "VAPID signing failed";
	if (wp_vapid_authorization(vapid_key, endpoint, cfg.vapid_subject, time(NULL), VAPID_TTL_S,
							   line + 15, sizeof(line) - 15) != 0)
		goto fail;
	memcpy(line, "Authorization: ", 15);
	*why = "out of memory";
	if (!AddHeader(d, line) || !AddHeader(d, "Content-Encoding: aes128gcm") ||
		!AddHeader(d, "Content-Type: application/octet-stream") || !AddHeader(d, "Urgency: high"))
		goto fail;
	snprintf(line, sizeof(line), "TTL: %ld", cfg.ttl);
	if (!AddHeader(d, line))
		goto fail;
	snprintf(line, sizeof(line), "Topic: %s", topic);
	if (!AddHeader(d, line))
		goto fail;
	d->easy = curl_easy_init();
	if (d->easy == NULL)
		goto fail;
	curl_easy_setopt(d->easy, CURLOPT_URL, endpoint);
	curl_easy_setopt(d->easy, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(d->easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(d->easy, CURLOPT_PIPEWAIT, 1L);
	curl_easy_setopt(d->easy, CURLOPT_POSTFIELDS, d->body);
	curl_easy_setopt(d->easy, CURLOPT_POSTFIELDSIZE, (long) body_len);
	curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->headers);
	curl_easy_setopt(d->easy, CURLOPT_WRITEFUNCTION, DiscardBody);
	curl_easy_setopt(d->easy, CURLOPT_TIMEOUT, cfg.request_timeout);
	curl_easy_setopt(d->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(d->easy, CURLOPT_PRIVATE, d);
	*why = "curl refused the request";
	if (curl_multi_add_handle(multi, d->easy) != CURLM_OK)
		goto fail;
	EVP_PKEY_free(ephemeral);
	json_decref(sub);
	return d;
fail:
	if (d != NULL)
		FreeDelivery(d);
	EVP_PKEY_free(ephemeral);
	json_decref(sub);
	return NULL;
}

/* Claims up to n due rows and starts their deliveries. */
static void
Claim(int n)
{
	char		batch[16];
	const char *params[1] = {batch};
	PGresult   *res;
	int			rows;

	snprintf(batch, sizeof(batch), "%d", n);
	res = DbExec("SELECT id, platform, token, subscription, topic, payload"
				 " FROM chat.claim_push_deliveries($1)", 1, params);
	if (res == NULL)
	{
		/* logged; try again shortly rather than spin */
		want_claim = false;
		next_due = Now() + RECONNECT_EVERY_S;
		return;
	}
	rows = PQntuples(res);
	for (int i = 0; i < rows; i++)
	{
		int64_t		id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		const char *platform = PQgetvalue(res, i, 1);
		const char *why = NULL;
		Delivery   *d = NULL;

		FailReason	reason = FAIL_INVALID;

		if (!strcmp(platform, "webpush"))
			d = StartWebPush(id, PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
							 PQgetvalue(res, i, 5), &why);
		else
		{
			why = "platform not supported by this pusher";
			reason = FAIL_UNSUPPORTED;
		}
		if (d == NULL)
		{
			char		error[256];

			snprintf(error, sizeof(error), "%s: %s", platform, why);
			FailRow(id, reason, error, 0);
			continue;
		}
		d->next = inflight;
		inflight = d;
		ninflight++;
	}
	/* A short batch drained the due rows: sleep until the next one comes due. */
	if (rows < n)
	{
		want_claim = false;
		ReadNextDue();
	}
	PQclear(res);
}

/* Completes the delivered rows in one call. */
static void
FlushDone(void)
{
	char	   *ids;
	size_t		len = 3 + (size_t) ndone * 21;
	size_t		off = 0;
	const char *params[1];

	if (ndone == 0)
		return;
	ids = malloc(len);
	if (ids == NULL)
		return;					/* the leases expire and the rows go again */
	ids[off++] = '{';
	for (int i = 0; i < ndone; i++)
		off += snprintf(ids + off, len - off, "%s%" PRId64, i ? "," : "", done_ids[i]);
	ids[off++] = '}';
	ids[off] = '\0';
	params[0] = ids;
	DbDo("SELECT chat.complete_push($1::bigint[])", 1, params);
	free(ids);
	ndone = 0;
}

/* Handles the answer to one request. */
static void
Finished(Delivery *d, CURLcode result)
{
	long		status = 0;
	curl_off_t	retry_after = 0;
	char		error[300];
	const char *params[2] = {d->id_text, d->token};

	curl_easy_getinfo(d->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(d->easy, CURLINFO_RETRY_AFTER, &retry_after);
	if (result != CURLE_OK)
	{
		snprintf(error, sizeof(error), "transport: %s", curl_easy_strerror(result));
		FailRow(d->id, FAIL_TRANSPORT, error, 0);
		stats.retried++;
	}
	else if (status >= 200 && status < 300)
	{
		done_ids[ndone++] = d->id;
		stats.sent++;
	}
	else if (status == 404 || status == 410)
	{
		DbDo("SELECT chat.forget_push($1, $2)", 2, params);
		Log("info", d->id, "push endpoint answered %ld: registration forgotten", status);
		stats.gone++;
	}
	else
	{
		snprintf(error, sizeof(error), "http %ld", status);
		FailRow(d->id, status == 429 ? FAIL_HTTP_429 : status >= 500 ? FAIL_HTTP_5XX : FAIL_HTTP_4XX, error,
				(status == 429 || status >= 500) ? (long) retry_after : 0);
		stats.retried++;
	}
}

/* Collects finished transfers. */
static void
Reap(void)
{
	CURLMsg    *m;
	int			left;

	while ((m = curl_multi_info_read(multi, &left)) != NULL)
	{
		Delivery   *d = NULL;
		Delivery  **pp;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &d);
		Finished(d, m->data.result);
		curl_multi_remove_handle(multi, d->easy);
		for (pp = &inflight; *pp != NULL; pp = &(*pp)->next)
			if (*pp == d)
			{
				*pp = d->next;
				break;
			}
		ninflight--;
		FreeDelivery(d);
		want_claim = true;		/* a slot is free */
	}
	FlushDone();
}

/* Extends the leases of the rows in flight. */
static void
Renew(void)
{
	char	   *ids;
	size_t		len = 3 + (size_t) ninflight * 21,
				off = 0;
	const char *params[1];

	last_renew = Now();
	if (ninflight == 0 || (ids = malloc(len)) == NULL)
		return;
	ids[off++] = '{';
	for (Delivery *d = inflight; d != NULL; d = d->next)
		off += snprintf(ids + off, len - off, "%s%s", off > 1 ? "," : "", d->id_text);
	ids[off++] = '}';
	ids[off] = '\0';
	params[0] = ids;
	DbDo("SELECT chat.renew_push($1::bigint[])", 1, params);
	free(ids);
}

/* Reads NOTIFYs: any means rows are due. */
static void
DrainNotifies(void)
{
	PGnotify   *n;

	if (db == NULL)
		return;
	if (!PQconsumeInput(db))
	{
		Log("error", 0, "database connection lost: %s", PQerrorMessage(db));
		PQfinish(db);
		db = NULL;
		return;
	}
	while ((n = PQnotifies(db)) != NULL)
	{
		want_claim = true;
		PQfreemem(n);
	}
}

/* Opens the --metrics-listen socket; exits naming the flag on error. */
static void
MetricsOpen(void)
{
	char		host[256];
	const char *colon;
	struct addrinfo hints = {0},
			   *ai = NULL;
	int			one = 1;

	if (cfg.metrics_listen == NULL)
		return;
	colon = strrchr(cfg.metrics_listen, ':');
	if (colon == NULL || colon == cfg.metrics_listen || (size_t) (colon - cfg.metrics_listen) >= sizeof(host))
		ConfigFail("metrics-listen", "must be HOST:PORT");
	memcpy(host, cfg.metrics_listen, colon - cfg.metrics_listen);
	host[colon - cfg.metrics_listen] = '\0';
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || ai == NULL)
		ConfigFail("metrics-listen", "cannot resolve HOST:PORT");
	metrics_fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (metrics_fd < 0 || setsockopt(metrics_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
		bind(metrics_fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(metrics_fd, 16) != 0)
		ConfigFail("metrics-listen", strerror(errno));
	freeaddrinfo(ai);
}

/* The Prometheus text of /metrics into buf; its length. */
static int
MetricsRender(char *buf, size_t size)
{
	PGresult   *res = DbExec("SELECT due, oldest_due_age, pending, given_up FROM chat.push_queue_stats()", 0, NULL);
	int			n;

	n = snprintf(buf, size,
				 "# HELP chat_pusher_sent_total Notifications the push services accepted.\n"
				 "# TYPE chat_pusher_sent_total counter\nchat_pusher_sent_total %ld\n"
				 "# HELP chat_pusher_gone_total Registrations forgotten after 404/410.\n"
				 "# TYPE chat_pusher_gone_total counter\nchat_pusher_gone_total %ld\n"
				 "# HELP chat_pusher_retries_total Failed attempts that the outbox retries.\n"
				 "# TYPE chat_pusher_retries_total counter\nchat_pusher_retries_total %ld\n"
				 "# HELP chat_pusher_inflight Requests in flight.\n"
				 "# TYPE chat_pusher_inflight gauge\nchat_pusher_inflight %d\n"
				 "# HELP chat_pusher_failed_total Failed attempts by reason.\n"
				 "# TYPE chat_pusher_failed_total counter\n",
				 stats.sent, stats.gone, stats.retried, ninflight);
	for (int r = 0; r < FAIL_NREASONS && n > 0 && (size_t) n < size; r++)
		n += snprintf(buf + n, size - n, "chat_pusher_failed_total{reason=\"%s\"} %ld\n",
					  fail_labels[r], stats.failed[r]);
	if (res != NULL && PQntuples(res) == 1 && n > 0 && (size_t) n < size)
		n += snprintf(buf + n, size - n,
					  "# HELP chat_push_queue_due Outbox rows due now.\n"
					  "# TYPE chat_push_queue_due gauge\nchat_push_queue_due %s\n"
					  "# HELP chat_push_queue_oldest_due_seconds Age of the oldest due row.\n"
					  "# TYPE chat_push_queue_oldest_due_seconds gauge\nchat_push_queue_oldest_due_seconds %s\n"
					  "# HELP chat_push_queue_pending Outbox rows not given up (due, leased or waiting).\n"
					  "# TYPE chat_push_queue_pending gauge\nchat_push_queue_pending %s\n"
					  "# HELP chat_push_queue_given_up Outbox rows given up after chat.push_max_attempts.\n"
					  "# TYPE chat_push_queue_given_up gauge\nchat_push_queue_given_up %s\n",
					  PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3));
	PQclear(res);
	return (n < 0 || (size_t) n >= size) ? -1 : n;
}

/*
 * Answers one scrape: GET /metrics or /healthz.  The loop is single
 * threaded, so the request is awaited at most 200 ms and the answer (a few
 * KB, within the socket buffer) written at once.
 */
static void
MetricsServe(int fd)
{
	char		req[2048],
				body[8192],
				head[256];
	struct pollfd p = {.fd = fd, .events = POLLIN};
	ssize_t		got = 0;
	int			blen = -1,
				hlen;
	const char *status = "404 Not Found";

	if (poll(&p, 1, 200) == 1)
		got = recv(fd, req, sizeof(req) - 1, 0);
	if (got > 0)
	{
		req[got] = '\0';
		if (!strncmp(req, "GET /metrics ", 13) || !strncmp(req, "GET /metrics?", 13))
		{
			blen = MetricsRender(body, sizeof(body));
			status = blen >= 0 ? "200 OK" : "500 Internal Server Error";
		}
		else if (!strncmp(req, "GET /healthz ", 13))
		{
			bool		up = db != NULL && PQstatus(db) == CONNECTION_OK;

			blen = snprintf(body, sizeof(body), "%s\n", up ? "ok" : "database unreachable");
			status = up ? "200 OK" : "503 Service Unavailable";
		}
	}
	if (blen < 0)
		blen = 0;
	hlen = snprintf(head, sizeof(head), "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
					"Content-Length: %d\r\nConnection: close\r\n\r\n", status, blen);
	if (send(fd, head, hlen, MSG_NOSIGNAL) == hlen && blen > 0)
	{
		if (send(fd, body, blen, MSG_NOSIGNAL) != blen)
		{
			/* the scraper went away: nothing to do */
		}
	}
	close(fd);
}

/* Accepts and answers the pending scrapes. */
static void
MetricsAccept(void)
{
	int			fd;

	if (metrics_fd < 0)
		return;
	while ((fd = accept4(metrics_fd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
		MetricsServe(fd);
}

/* SIGTERM/SIGINT: stop claiming, finish what is in flight. */
static void
OnSignal(int sig)
{
	int			saved = errno;
	char		c = (char) sig;

	stopping = 1;
	if (write(signal_pipe[1], &c, 1) < 0)
	{
		/* the pipe is full: a wake-up is already pending */
	}
	errno = saved;
}

/* Installs the signal handlers and the self-pipe they wake the loop with. */
static void
SetupSignals(void)
{
	struct sigaction sa;

	if (pipe(signal_pipe) != 0)
	{
		perror("pipe");
		exit(1);
	}
	fcntl(signal_pipe[0], F_SETFL, O_NONBLOCK);
	fcntl(signal_pipe[1], F_SETFL, O_NONBLOCK);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = OnSignal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* The loop; returns the exit status. */
static int
Run(void)
{
	for (;;)
	{
		struct curl_waitfd fds[3];
		unsigned int nfds = 0;
		double		now = Now(),
					wait_s = IDLE_WAKE_MS / 1000.0;
		int			running,
					numfds;
		char		drain[16];

		if (stopping && ninflight == 0)
			break;
		if (db == NULL && now - last_reconnect >= RECONNECT_EVERY_S)
			DbConnect();
		if (next_due > 0 && now >= next_due)
		{
			want_claim = true;
			next_due = 0;
		}
		if (db != NULL && !stopping && want_claim && ninflight < cfg.concurrency)
			Claim(cfg.concurrency - ninflight);
		if (ninflight > 0 && now - last_renew >= RENEW_EVERY_S)
			Renew();
		curl_multi_perform(multi, &running);
		Reap();
		DrainNotifies();
		if (want_claim && !stopping && ninflight < cfg.concurrency && db != NULL)
			continue;			/* more is due and there is room: claim before sleeping */

		/* Sleep until a transfer, a NOTIFY, a signal, the next due row or the renewal. */
		if (next_due > 0 && next_due - now < wait_s)
			wait_s = next_due - now;
		if (ninflight > 0 && RENEW_EVERY_S - (now - last_renew) < wait_s)
			wait_s = RENEW_EVERY_S - (now - last_renew);
		if (db == NULL && RECONNECT_EVERY_S < wait_s)
			wait_s = RECONNECT_EVERY_S;
		if (wait_s < 0)
			wait_s = 0;
		fds[nfds].fd = signal_pipe[0];
		fds[nfds].events = CURL_WAIT_POLLIN;
		fds[nfds++].revents = 0;
		if (metrics_fd >= 0)
		{
			fds[nfds].fd = metrics_fd;
			fds[nfds].events = CURL_WAIT_POLLIN;
			fds[nfds++].revents = 0;
		}
		if (db != NULL)
		{
			fds[nfds].fd = PQsocket(db);
			fds[nfds].events = CURL_WAIT_POLLIN;
			fds[nfds++].revents = 0;
		}
		curl_multi_poll(multi, fds, nfds, (int) (wait_s * 1000) + 1, &numfds);
		while (read(signal_pipe[0], drain, sizeof(drain)) > 0)
			;
		MetricsAccept();
		DrainNotifies();
	}
	{
		long		failed = 0;

		for (int r = 0; r < FAIL_NREASONS; r++)
			failed += stats.failed[r];
		Log("info", 0, "stopped: sent %ld, gone %ld, retried %ld, failed %ld", stats.sent, stats.gone,
			stats.retried, failed);
	}
	return 0;
}

/* Sharded (--dsn once per partition): one child process per partition,
 * each a whole pusher for that partition's outbox (rows never move between
 * partitions); the parent forwards SIGTERM/SIGINT and exits with the worst
 * status.  Returns only in a child (or with a single --dsn). */
static void
SpawnPerPartition(void)
{
	pid_t		pids[MAX_DSNS];
	int			worst = 0;
	sigset_t	set;
	int			sig;

	if (ndsns <= 1)
		return;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	for (int i = 0; i < ndsns; i++)
	{
		pids[i] = fork();
		if (pids[i] < 0)
		{
			perror("fork");
			exit(1);
		}
		if (pids[i] == 0)
		{
			sigprocmask(SIG_UNBLOCK, &set, NULL);
			cfg.dsn = dsns[i];
			if (i > 0)
				cfg.metrics_listen = NULL;	/* one /metrics port: the first partition's */
			return;
		}
	}
	Log("info", 0, "chat-pusher: %d partitions, one process each", ndsns);
	if (sigwait(&set, &sig) == 0)
		for (int i = 0; i < ndsns; i++)
			kill(pids[i], sig);
	for (int i = 0; i < ndsns; i++)
	{
		int			st;

		if (waitpid(pids[i], &st, 0) == pids[i] && (!WIFEXITED(st) || WEXITSTATUS(st) != 0))
			worst = 1;
	}
	exit(worst);
}

/* chat-pusher. */
int
main(int argc, char **argv)
{
	int			rc;

	ParseArgs(argc, argv);
	LoadVapidKey();
	SpawnPerPartition();
	MetricsOpen();
	SetupSignals();
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (multi = curl_multi_init()) == NULL)
	{
		fprintf(stderr, "chat-pusher: curl initialisation failed\n");
		return 1;
	}
	curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
	done_ids = calloc(cfg.concurrency, sizeof(*done_ids));
	if (done_ids == NULL)
		return 1;
	if (!DbConnect())
		Log("warning", 0, "retrying the database connection every %.0f s", RECONNECT_EVERY_S);
	Log("info", 0, "chat-pusher started (concurrency %d)", cfg.concurrency);
	rc = Run();
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	EVP_PKEY_free(vapid_key);
	if (db != NULL)
		PQfinish(db);
	if (metrics_fd >= 0)
		close(metrics_fd);
	free(done_ids);
	return rc;
}
