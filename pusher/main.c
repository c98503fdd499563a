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
 *
 * Platforms: Web Push (webpush.c: RFC 8291 + VAPID), FCM HTTP v1 (fcm.c:
 * an OAuth2 access token from a service-account JWT grant, fetched in the
 * same multi handle while the FCM requests wait for it, cached until a
 * minute before it expires) and APNs (apns.c: an ES256 provider token made
 * every 50 minutes).  A refused credential (FCM 401, APNs 403) is replaced
 * and the request sent again once.  Each claimed row of
 * chat.claim_push_notifications is one notification standing for one or
 * more outbox rows (coalesced per device and conversation): all of them
 * are completed, failed or renewed together.
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

#include "apns.h"
#include "fcm.h"
#include "webpush.h"

#define IDLE_WAKE_MS 30000		/* longest sleep: bounds the pickup of an expired lease */
#define RENEW_EVERY_S 10.0		/* leases are 30 s (chat.claim_push) */
#define RECONNECT_EVERY_S 2.0
#define VAPID_TTL_S 43200		/* JWT lifetime: 12 h, under RFC 8292's 24 h */
#define MAX_TOKEN 4097
#define MAX_RESPONSE 16384		/* answer bytes kept (FCM and APNs explain errors in JSON) */
#define FCM_EARLY_S 60			/* an access token is renewed this long before it expires */

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
	const char *fcm_credentials;	/* service-account JSON, or NULL: no FCM */
	const char *fcm_endpoint;
	const char *fcm_token_endpoint; /* NULL: the account's token_uri */
	const char *apns_key;		/* .p8 file, or NULL: no APNs */
	const char *apns_key_id;
	const char *apns_team_id;
	const char *apns_topic;
	const char *apns_endpoint;
	const char *ca_file;		/* CA bundle for the push services (tests), or NULL */
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
	FAIL_AUTH,
	FAIL_NREASONS
} FailReason;

static const char *const fail_labels[FAIL_NREASONS] = {
	"transport", "http_429", "http_5xx", "http_4xx", "unsupported_platform", "invalid_registration",
	"auth"
};

/* What a request is: a notification per platform, or the FCM access-token grant. */
typedef enum Kind
{
	KIND_WEBPUSH,
	KIND_FCM,
	KIND_APNS,
	KIND_FCM_TOKEN
} Kind;

/* One notification in flight (or the FCM token request, which is not in the inflight list). */
typedef struct Delivery
{
	Kind		kind;
	int64_t    *ids;			/* the outbox rows it stands for (coalesced), oldest first */
	int			nids;
	char	   *ids_text;		/* the same as a bigint[] literal */
	char	   *token;			/* the registration it was sent to (forget_push) */
	CURL	   *easy;
	struct curl_slist *headers;
	unsigned char *body;
	char	   *resp;			/* the answer's first MAX_RESPONSE bytes */
	size_t		resp_len;
	struct curl_slist *sent_headers; /* FCM, APNs: headers plus the credential's */
	double		credential_at;	/* when the credential it carries was made */
	bool		waiting;		/* FCM: waits for an access token, not in the multi handle yet */
	bool		reauthorized;	/* sent again once after its credential was refused */
	struct Delivery *next;
} Delivery;

static Config cfg = {.dsn = "", .concurrency = 64, .ttl = 86400, .request_timeout = 30,
	.fcm_endpoint = "https://fcm.googleapis.com", .apns_endpoint = "https://api.push.apple.com"};
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
static int	ndone,
			done_cap;
static FcmAccount fcm;			/* fcm.key NULL: FCM not configured */
static char *fcm_access;		/* the OAuth2 access token, or NULL */
static double fcm_expires;		/* when to stop using it (epoch seconds) */
static double fcm_fetched_at;
static Delivery *fcm_fetch;		/* the token request in flight, or NULL */
static EVP_PKEY *apns_key;		/* NULL: APNs not configured */
static char apns_jwt[1024];		/* the provider token */
static double apns_jwt_at;		/* when it was made; 0: make one */
static int	metrics_fd = -1;
static struct
{
	long		sent,
				tokens,
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
		   "Delivers pgchat's push outbox (chat.push_outbox) to Web Push endpoints,\n"
		   "FCM (HTTP v1) and APNs.  Every flag can also be set as CHAT_<FLAG> in the\n"
		   "environment (dashes become underscores).  Grant the pusher's database role\n"
		   "EXECUTE on chat.claim_push_notifications, renew_push, complete_push,\n"
		   "fail_push, forget_push, next_push_due and push_queue_stats.\n\n"
		   "  --dsn                libpq connection string (required); sharded: repeat it\n"
		   "                       once per partition (one claiming process each)\n"
		   "  --concurrency        requests in flight at most, default 64\n"
		   "  --ttl                seconds a push service keeps an undelivered\n"
		   "                       notification, default 86400\n"
		   "  --request-timeout    seconds one request may take, default 30\n"
		   "  --metrics-listen     HOST:PORT serving /metrics (Prometheus text) and /healthz\n"
		   "  --ca-file            PEM CA bundle to verify the push services with\n"
		   "                       (default: the system's)\n\n"
		   "Web Push (give both):\n"
		   "  --vapid-private-key  PEM file with the VAPID P-256 private key\n"
		   "  --vapid-subject      VAPID sub claim: mailto:... or https://...\n\n"
		   "FCM HTTP v1:\n"
		   "  --fcm-credentials    service-account JSON file (Firebase console)\n"
		   "  --fcm-endpoint       base URL, default https://fcm.googleapis.com\n"
		   "                       (POST <base>/v1/projects/<project_id>/messages:send)\n"
		   "  --fcm-token-endpoint OAuth2 token URL, default the file's token_uri\n\n"
		   "APNs (give the first four):\n"
		   "  --apns-key           .p8 file: the PEM P-256 key of the APNs auth key\n"
		   "  --apns-key-id        its Key ID (10 characters)\n"
		   "  --apns-team-id       the Team ID\n"
		   "  --apns-topic         the app's bundle id (apns-topic)\n"
		   "  --apns-endpoint      default https://api.push.apple.com\n"
		   "                       (https://api.sandbox.push.apple.com for development)\n\n"
		   "At least one platform must be configured; rows for a platform that is not\n"
		   "are failed (and given up after chat.push_max_attempts).\n"
		   "  --help               this text\n");
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
	else if (!strcmp(name, "fcm-credentials"))
		cfg.fcm_credentials = *v ? v : NULL;
	else if (!strcmp(name, "fcm-endpoint"))
		cfg.fcm_endpoint = v;
	else if (!strcmp(name, "fcm-token-endpoint"))
		cfg.fcm_token_endpoint = *v ? v : NULL;
	else if (!strcmp(name, "apns-key"))
		cfg.apns_key = *v ? v : NULL;
	else if (!strcmp(name, "apns-key-id"))
		cfg.apns_key_id = v;
	else if (!strcmp(name, "apns-team-id"))
		cfg.apns_team_id = v;
	else if (!strcmp(name, "apns-topic"))
		cfg.apns_topic = v;
	else if (!strcmp(name, "apns-endpoint"))
		cfg.apns_endpoint = v;
	else if (!strcmp(name, "ca-file"))
		cfg.ca_file = *v ? v : NULL;
	else
		return false;
	return true;
}

/* Whether v starts like an http(s) URL. */
static bool
HttpUrl(const char *v)
{
	return v != NULL && (!strncmp(v, "https://", 8) || !strncmp(v, "http://", 7)) && strpbrk(v, " \r\n") == NULL;
}

/* Flags from the environment, then the command line (which wins). */
static void
ParseArgs(int argc, char **argv)
{
	static const char *const names[] = {"dsn", "vapid-private-key", "vapid-subject", "concurrency",
	"ttl", "request-timeout", "metrics-listen", "fcm-credentials", "fcm-endpoint", "fcm-token-endpoint",
	"apns-key", "apns-key-id", "apns-team-id", "apns-topic", "apns-endpoint", "ca-file"};

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
	if (!cfg.vapid_private_key && !cfg.fcm_credentials && !cfg.apns_key)
		ConfigFail("vapid-private-key", "no platform configured (give --vapid-private-key, --fcm-credentials or --apns-key)");
	if (!HttpUrl(cfg.fcm_endpoint) || strlen(cfg.fcm_endpoint) > 1024)
		ConfigFail("fcm-endpoint", "must be an https:// (or http://) URL");
	if (cfg.fcm_token_endpoint && !HttpUrl(cfg.fcm_token_endpoint))
		ConfigFail("fcm-token-endpoint", "must be an https:// (or http://) URL");
	if (!HttpUrl(cfg.apns_endpoint) || strlen(cfg.apns_endpoint) > 1024)
		ConfigFail("apns-endpoint", "must be an https:// URL");
	if (cfg.apns_key)
	{
		static const char *const need[][2] = {{"apns-key-id", NULL}, {"apns-team-id", NULL}, {"apns-topic", NULL}};
		const char *vals[3] = {cfg.apns_key_id, cfg.apns_team_id, cfg.apns_topic};

		for (int i = 0; i < 3; i++)
			if (vals[i] == NULL || !*vals[i] || strlen(vals[i]) > 200 || strpbrk(vals[i], "\"\\\r\n ") != NULL)
				ConfigFail(need[i][0], "is required with --apns-key (printable, no spaces or quotes)");
	}
	if (cfg.vapid_private_key && (!cfg.vapid_subject || (strncmp(cfg.vapid_subject, "mailto:", 7) && strncmp(cfg.vapid_subject, "https://", 8)) ||
		strpbrk(cfg.vapid_subject, "\"\\ ") != NULL))
		ConfigFail("vapid-subject", "must be a mailto: or https:// URL");
}

/* The P-256 private key of a PEM file; exits naming flag when it is not one. */
static EVP_PKEY *
LoadP256(const char *flag, const char *path)
{
	FILE	   *f = fopen(path, "r");
	unsigned char pub[WP_POINT_LEN];
	char		name[64] = "";
	EVP_PKEY   *key;

	if (f == NULL)
		ConfigFail(flag, strerror(errno));
	key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (key == NULL || !EVP_PKEY_is_a(key, "EC") ||
		EVP_PKEY_get_utf8_string_param(key, "group", name, sizeof(name), NULL) != 1 ||
		(strcmp(name, "prime256v1") && strcmp(name, "P-256")) || wp_public_point(key, pub) != 0)
		ConfigFail(flag, "is not a PEM P-256 private key");
	return key;
}

/* Loads the keys and credentials of the configured platforms; exits naming the flag on error. */
static void
LoadKeys(void)
{
	char		err[256];

	if (cfg.vapid_private_key)
		vapid_key = LoadP256("vapid-private-key", cfg.vapid_private_key);
	if (cfg.apns_key)
		apns_key = LoadP256("apns-key", cfg.apns_key);
	if (cfg.fcm_credentials)
	{
		if (fcm_load_account(cfg.fcm_credentials, &fcm, err, sizeof(err)) != 0)
			ConfigFail("fcm-credentials", err);
		if (!HttpUrl(fcm.token_uri) && !cfg.fcm_token_endpoint)
			ConfigFail("fcm-credentials", "token_uri is not an http(s) URL");
	}
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

/*
 * Records a failed attempt of the rows ids (a bigint[] literal; first is the
 * one logged): retried after retry_after seconds (0: backoff).
 */
static void
FailIds(const char *ids, int64_t first, FailReason reason, const char *error, long retry_after)
{
	char		interval[32];
	const char *params[3] = {ids, error, NULL};

	if (retry_after > 0)
	{
		snprintf(interval, sizeof(interval), "%ld seconds", retry_after < 3600 ? retry_after : 3600);
		params[2] = interval;
	}
	DbDo("SELECT chat.fail_push(i, $2, $3::interval) FROM unnest($1::bigint[]) i", 3, params);
	Log("warning", first, "push failed: %s%s", error, retry_after > 0 ? " (Retry-After honoured)" : "");
	stats.failed[reason]++;
}

/* Keeps the first MAX_RESPONSE bytes of an answer (the error JSON of FCM and APNs). */
static size_t
KeepBody(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Delivery   *d = userdata;
	size_t		n = size * nmemb;
	size_t		take = n;

	if (d->resp_len + take > MAX_RESPONSE)
		take = MAX_RESPONSE - d->resp_len;
	if (take > 0)
	{
		char	   *r = realloc(d->resp, d->resp_len + take + 1);

		if (r == NULL)
			return n;			/* the explanation is lost, not the answer */
		memcpy(r + d->resp_len, ptr, take);
		d->resp = r;
		d->resp_len += take;
		d->resp[d->resp_len] = '\0';
	}
	return n;
}

/* Frees a delivery that is not (or no longer) in the multi handle. */
static void
FreeDelivery(Delivery *d)
{
	if (d->easy)
		curl_easy_cleanup(d->easy);
	curl_slist_free_all(d->headers);
	curl_slist_free_all(d->sent_headers);
	free(d->body);
	free(d->token);
	free(d->ids);
	free(d->ids_text);
	free(d->resp);
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

/* The ids of a bigint[] literal "{1,2,3}" into a new array; its length, or -1. */
static int
ParseIds(const char *text, int64_t **out)
{
	int			n = 1;
	const char *p;
	int64_t    *ids;

	if (text[0] != '{' || text[1] == '}')
		return -1;
	for (p = text; *p; p++)
		n += *p == ',';
	ids = calloc(n, sizeof(*ids));
	if (ids == NULL)
		return -1;
	p = text + 1;
	for (int i = 0; i < n; i++)
	{
		char	   *end;

		ids[i] = strtoll(p, &end, 10);
		if (end == p || (*end != ',' && *end != '}'))
		{
			free(ids);
			return -1;
		}
		p = end + 1;
	}
	*out = ids;
	return n;
}

/* A new delivery of kind for the rows ids_text to token; NULL when out of memory or ids_text is bad. */
static Delivery *
NewDelivery(Kind kind, const char *ids_text, const char *token)
{
	Delivery   *d = calloc(1, sizeof(*d));

	if (d == NULL)
		return NULL;
	d->kind = kind;
	if ((d->ids_text = strdup(ids_text)) == NULL || (d->token = strdup(token)) == NULL ||
		(d->nids = ParseIds(ids_text, &d->ids)) < 1)
	{
		FreeDelivery(d);
		return NULL;
	}
	return d;
}

/* A POST of body (len bytes, owned by d) to url with d's headers, not yet started; false on error. */
static bool
PrepareRequest(Delivery *d, const char *url, long len)
{
	d->easy = curl_easy_init();
	if (d->easy == NULL)
		return false;
	curl_easy_setopt(d->easy, CURLOPT_URL, url);
	curl_easy_setopt(d->easy, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(d->easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(d->easy, CURLOPT_PIPEWAIT, 1L);
	curl_easy_setopt(d->easy, CURLOPT_POSTFIELDS, d->body);
	curl_easy_setopt(d->easy, CURLOPT_POSTFIELDSIZE, len);
	curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->headers);
	curl_easy_setopt(d->easy, CURLOPT_WRITEFUNCTION, KeepBody);
	curl_easy_setopt(d->easy, CURLOPT_WRITEDATA, d);
	curl_easy_setopt(d->easy, CURLOPT_TIMEOUT, cfg.request_timeout);
	curl_easy_setopt(d->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(d->easy, CURLOPT_PRIVATE, d);
	if (cfg.ca_file)
		curl_easy_setopt(d->easy, CURLOPT_CAINFO, cfg.ca_file);
	return true;
}

/*
 * Encrypts payload for a Web Push subscription and prepares the request.
 * false, with *why, when the row cannot be sent as it is.
 */
static bool
PrepareWebPush(Delivery *d, const char *subscription, const char *topic, const char *payload, const char **why)
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
	int			body_len;
	bool		ok = false;

	*why = "subscription is not {endpoint, keys: {p256dh, auth}}";
	if (sub == NULL || json_unpack(sub, "{s:s, s:{s:s, s:s}}", "endpoint", &endpoint, "keys",
								   "p256dh", &p256dh, "auth", &auth) != 0 ||
		b64url_decode(p256dh, ua, sizeof(ua)) != WP_POINT_LEN ||
		b64url_decode(auth, secret, sizeof(secret)) != WP_AUTH_LEN)
		goto done;
	*why = "payload too large for one Web Push record";
	if (plen > WP_MAX_PLAINTEXT)
		goto done;
	*why = "out of memory";
	if ((d->body = malloc(WP_BODY_LEN(plen))) == NULL)
		goto done;
	*why = "encryption failed (p256dh not on the curve?)";
	ephemeral = wp_generate_key();
	if (ephemeral == NULL || RAND_bytes(salt, sizeof(salt)) != 1 ||
		(body_len = wp_encrypt(ua, secret, ephemeral, salt, (const unsigned char *) payload, plen, d->body)) < 0)
		goto done;
	*why = "VAPID signing failed";
	if (wp_vapid_authorization(vapid_key, endpoint, cfg.vapid_subject, time(NULL), VAPID_TTL_S,
							   line + 15, sizeof(line) - 15) != 0)
		goto done;
	memcpy(line, "Authorization: ", 15);
	*why = "out of memory";
	if (!AddHeader(d, line) || !AddHeader(d, "Content-Encoding: aes128gcm") ||
		!AddHeader(d, "Content-Type: application/octet-stream") || !AddHeader(d, "Urgency: high"))
		goto done;
	snprintf(line, sizeof(line), "TTL: %ld", cfg.ttl);
	if (!AddHeader(d, line))
		goto done;
	snprintf(line, sizeof(line), "Topic: %s", topic);
	if (!AddHeader(d, line) || !PrepareRequest(d, endpoint, body_len))
		goto done;
	ok = true;
done:
	EVP_PKEY_free(ephemeral);
	json_decref(sub);
	return ok;
}

/* Whether the cached FCM access token may be used now. */
static bool
FcmTokenValid(void)
{
	return fcm_access != NULL && Now() < fcm_expires;
}

/* Sends d with its headers plus the credential header line (made at made_at); false when out of memory. */
static bool
SetCredential(Delivery *d, const char *line, double made_at)
{
	struct curl_slist *l = NULL;

	for (struct curl_slist *h = d->headers; h != NULL; h = h->next)
	{
		struct curl_slist *n = curl_slist_append(l, h->data);

		if (n == NULL)
		{
			curl_slist_free_all(l);
			return false;
		}
		l = n;
	}
	{
		struct curl_slist *n = curl_slist_append(l, line);

		if (n == NULL)
		{
			curl_slist_free_all(l);
			return false;
		}
		l = n;
	}
	curl_slist_free_all(d->sent_headers);
	d->sent_headers = l;
	d->credential_at = made_at;
	curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->sent_headers);
	return true;
}

/* Sets the Authorization header of an FCM request from the cached token; false when out of memory. */
static bool
FcmAuthorize(Delivery *d)
{
	char	   *line = malloc(strlen(fcm_access) + 32);
	bool		ok;

	if (line == NULL)
		return false;
	sprintf(line, "Authorization: Bearer %s", fcm_access);
	ok = SetCredential(d, line, fcm_fetched_at);
	free(line);
	return ok;
}

/* Starts the OAuth2 grant for an FCM access token, unless one is under way. */
static void
FcmFetchToken(void)
{
	const char *uri = cfg.fcm_token_endpoint ? cfg.fcm_token_endpoint : fcm.token_uri;
	Delivery   *d;

	if (fcm_fetch != NULL)
		return;
	d = calloc(1, sizeof(*d));
	if (d == NULL)
		return;
	d->kind = KIND_FCM_TOKEN;
	/* aud is the token endpoint the assertion is presented to */
	d->body = (unsigned char *) fcm_grant_body(&fcm, uri, time(NULL));
	if (d->body == NULL || !AddHeader(d, "Content-Type: application/x-www-form-urlencoded") ||
		!PrepareRequest(d, uri, (long) strlen((char *) d->body)) ||
		curl_multi_add_handle(multi, d->easy) != CURLM_OK)
	{
		Log("error", 0, "fcm: could not start the token request");
		FreeDelivery(d);
		return;
	}
	fcm_fetch = d;
}

/* Prepares an FCM HTTP v1 request; it waits for the access token when none is cached. */
static bool
PrepareFcm(Delivery *d, const char *topic, const char *payload, const char **why)
{
	char		url[1400];

	*why = "out of memory";
	snprintf(url, sizeof(url), "%s/v1/projects/%s/messages:send", cfg.fcm_endpoint, fcm.project_id);
	d->body = (unsigned char *) fcm_message(d->token, topic, payload, cfg.ttl);
	if (d->body == NULL || !AddHeader(d, "Content-Type: application/json; charset=UTF-8") ||
		!PrepareRequest(d, url, (long) strlen((char *) d->body)))
		return false;
	if (FcmTokenValid())
		return FcmAuthorize(d);
	d->waiting = true;
	FcmFetchToken();
	return true;
}

/* The APNs provider token, made anew when it is APNS_TOKEN_REFRESH_S old (or refused); NULL on error. */
static const char *
ApnsBearer(void)
{
	double		now = Now();

	if (apns_jwt_at == 0 || now - apns_jwt_at >= APNS_TOKEN_REFRESH_S)
	{
		if (apns_provider_token(apns_key, cfg.apns_key_id, cfg.apns_team_id, (time_t) now,
								apns_jwt, sizeof(apns_jwt)) != 0)
			return NULL;
		apns_jwt_at = now;
	}
	return apns_jwt;
}

/* Prepares an APNs request: HTTP/2 POST <endpoint>/3/device/<token>. */
static bool
PrepareApns(Delivery *d, const char *topic, const char *payload, const char **why)
{
	char		line[1200],
				url[1400];
	const char *bearer = ApnsBearer();
	char	   *escaped;

	*why = "provider token signing failed";
	if (bearer == NULL)
		return false;
	*why = "out of memory";
	escaped = curl_easy_escape(NULL, d->token, 0);
	if (escaped == NULL)
		return false;
	snprintf(url, sizeof(url), "%s/3/device/%s", cfg.apns_endpoint, escaped);
	curl_free(escaped);
	d->body = (unsigned char *) apns_payload(topic, payload);
	if (d->body == NULL)
		return false;
	if (!AddHeader(d, "apns-push-type: alert") || !AddHeader(d, "apns-priority: 10") ||
		!AddHeader(d, "content-type: application/json"))
		return false;
	snprintf(line, sizeof(line), "apns-topic: %s", cfg.apns_topic);
	if (!AddHeader(d, line))
		return false;
	snprintf(line, sizeof(line), "apns-collapse-id: %.64s", topic);
	if (!AddHeader(d, line))
		return false;
	snprintf(line, sizeof(line), "apns-expiration: %lld", (long long) time(NULL) + cfg.ttl);
	if (!AddHeader(d, line))
		return false;
	if (!PrepareRequest(d, url, (long) strlen((char *) d->body)))
		return false;
	snprintf(line, sizeof(line), "authorization: bearer %s", bearer);
	return SetCredential(d, line, apns_jwt_at);
}

/* Adds ids to the rows to complete. */
static void
AddDone(const int64_t *ids, int n)
{
	if (ndone + n > done_cap)
	{
		int			cap = (ndone + n) * 2;
		int64_t    *grown = realloc(done_ids, cap * sizeof(*done_ids));

		if (grown == NULL)
			return;				/* the leases expire and the rows go again */
		done_ids = grown;
		done_cap = cap;
	}
	memcpy(done_ids + ndone, ids, n * sizeof(*ids));
	ndone += n;
}

/* Claims up to n due notifications (chat.claim_push_notifications: coalesced) and starts them. */
static void
Claim(int n)
{
	char		batch[16];
	const char *params[1] = {batch};
	PGresult   *res;
	int			rows;

	snprintf(batch, sizeof(batch), "%d", n);
	res = DbExec("SELECT ids, platform, token, subscription, topic, payload"
				 " FROM chat.claim_push_notifications($1)", 1, params);
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
		const char *ids = PQgetvalue(res, i, 0);
		const char *platform = PQgetvalue(res, i, 1);
		const char *topic = PQgetvalue(res, i, 4);
		const char *payload = PQgetvalue(res, i, 5);
		const char *why = "out of memory";
		FailReason	reason = FAIL_INVALID;
		Delivery   *d = NULL;
		bool		ok = false;

		if (!strcmp(platform, "webpush") && vapid_key != NULL)
			ok = (d = NewDelivery(KIND_WEBPUSH, ids, PQgetvalue(res, i, 2))) != NULL &&
				PrepareWebPush(d, PQgetvalue(res, i, 3), topic, payload, &why);
		else if (!strcmp(platform, "fcm") && fcm.key != NULL)
			ok = (d = NewDelivery(KIND_FCM, ids, PQgetvalue(res, i, 2))) != NULL &&
				PrepareFcm(d, topic, payload, &why);
		else if (!strcmp(platform, "apns") && apns_key != NULL)
			ok = (d = NewDelivery(KIND_APNS, ids, PQgetvalue(res, i, 2))) != NULL &&
				PrepareApns(d, topic, payload, &why);
		else
		{
			why = "platform not configured in this pusher";
			reason = FAIL_UNSUPPORTED;
		}
		if (ok && !d->waiting && curl_multi_add_handle(multi, d->easy) != CURLM_OK)
		{
			ok = false;
			why = "curl refused the request";
		}
		if (!ok)
		{
			char		error[256];

			snprintf(error, sizeof(error), "%s: %s", platform, why);
			FailIds(ids, d && d->nids ? d->ids[0] : strtoll(ids + 1, NULL, 10), reason, error, 0);
			if (d != NULL)
				FreeDelivery(d);
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

/* Unlinks d from the inflight list. */
static void
Unlink(Delivery *d)
{
	for (Delivery **pp = &inflight; *pp != NULL; pp = &(*pp)->next)
		if (*pp == d)
		{
			*pp = d->next;
			ninflight--;
			want_claim = true;	/* a slot is free */
			return;
		}
}

/* The FCM token request finished: cache the token and start the waiting requests, or fail them. */
static void
FcmTokenFinished(Delivery *t, CURLcode result)
{
	long		status = 0,
				expires_in = 0;
	char	   *token = NULL;
	char		error[300];
	Delivery   *next;

	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	if (result == CURLE_OK && status == 200 && t->resp != NULL &&
		fcm_parse_token(t->resp, &token, &expires_in) == 0)
	{
		free(fcm_access);
		fcm_access = token;
		fcm_fetched_at = Now();
		/* renewed a minute early, but kept at least a second */
		fcm_expires = fcm_fetched_at + (expires_in > FCM_EARLY_S + 1 ? expires_in - FCM_EARLY_S : 1);
		stats.tokens++;
		Log("info", 0, "fcm: access token for %s, %ld s", fcm.client_email, expires_in);
	}
	else if (result != CURLE_OK)
		snprintf(error, sizeof(error), "fcm token: transport: %s", curl_easy_strerror(result));
	else
		snprintf(error, sizeof(error), "fcm token: http %ld: %.200s", status, t->resp ? t->resp : "");
	for (Delivery *d = inflight; d != NULL; d = next)
	{
		next = d->next;
		if (d->kind != KIND_FCM || !d->waiting)
			continue;
		if (token != NULL && FcmAuthorize(d) && curl_multi_add_handle(multi, d->easy) == CURLM_OK)
		{
			d->waiting = false;
			continue;
		}
		FailIds(d->ids_text, d->ids[0], FAIL_AUTH, token != NULL ? "fcm: could not start the request" : error, 0);
		stats.retried++;
		Unlink(d);
		FreeDelivery(d);
	}
}

/*
 * FCM requests left waiting without a token request under way (it could
 * not be started, or a token came while they were being claimed): start
 * them with the cached token, or ask for one; when even that cannot be
 * started, fail them (they back off) rather than hold them forever.
 */
static void
FcmPump(void)
{
	Delivery   *next;
	bool		any = false;

	for (Delivery *d = inflight; d != NULL && !any; d = d->next)
		any = d->kind == KIND_FCM && d->waiting;
	if (!any || fcm_fetch != NULL)
		return;
	if (!FcmTokenValid())
		FcmFetchToken();
	if (fcm_fetch != NULL)
		return;
	for (Delivery *d = inflight; d != NULL; d = next)
	{
		next = d->next;
		if (d->kind != KIND_FCM || !d->waiting)
			continue;
		if (FcmTokenValid() && FcmAuthorize(d) && curl_multi_add_handle(multi, d->easy) == CURLM_OK)
		{
			d->waiting = false;
			continue;
		}
		FailIds(d->ids_text, d->ids[0], FAIL_AUTH, "fcm: could not start the token request", 0);
		stats.retried++;
		Unlink(d);
		FreeDelivery(d);
	}
}

/* The answer means the registration is gone, per platform. */
static bool
Gone(const Delivery *d, long status)
{
	switch (d->kind)
	{
		case KIND_FCM:
			return fcm_unregistered(status, d->resp);
		case KIND_APNS:
			return apns_unregistered(status, d->resp);
		default:
			return status == 404 || status == 410;
	}
}

/*
 * The credential of d was refused: make a new one (unless that happened
 * since d was sent) and send d again, once.  false when it was already sent
 * again or cannot be.
 */
static bool
Reauthorize(Delivery *d)
{
	char		line[1200];
	const char *bearer;

	if (d->reauthorized)
		return false;
	d->reauthorized = true;
	free(d->resp);
	d->resp = NULL;
	d->resp_len = 0;
	if (d->kind == KIND_FCM)
	{
		if (fcm_access != NULL && fcm_fetched_at <= d->credential_at)
		{
			free(fcm_access);
			fcm_access = NULL;
		}
		if (FcmTokenValid())
			return FcmAuthorize(d) && curl_multi_add_handle(multi, d->easy) == CURLM_OK;
		d->waiting = true;
		FcmFetchToken();
		return true;
	}
	if (apns_jwt_at <= d->credential_at)
		apns_jwt_at = 0;
	if ((bearer = ApnsBearer()) == NULL)
		return false;
	snprintf(line, sizeof(line), "authorization: bearer %s", bearer);
	return SetCredential(d, line, apns_jwt_at) && curl_multi_add_handle(multi, d->easy) == CURLM_OK;
}

/* Handles the answer to one request; true when d was sent again (it stays in flight). */
static bool
Finished(Delivery *d, CURLcode result)
{
	long		status = 0;
	curl_off_t	retry_after = 0;
	char		error[300];
	char		first[24];
	const char *params[2] = {first, d->token};

	snprintf(first, sizeof(first), "%" PRId64, d->ids[0]);
	curl_easy_getinfo(d->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(d->easy, CURLINFO_RETRY_AFTER, &retry_after);
	if (result != CURLE_OK)
	{
		snprintf(error, sizeof(error), "transport: %s", curl_easy_strerror(result));
		FailIds(d->ids_text, d->ids[0], FAIL_TRANSPORT, error, 0);
		stats.retried++;
	}
	else if (status >= 200 && status < 300)
	{
		AddDone(d->ids, d->nids);
		stats.sent++;
	}
	else if (Gone(d, status))
	{
		/* forget_push drops the device's other rows with the registration */
		DbDo("SELECT chat.forget_push($1, $2)", 2, params);
		if (d->nids > 1)
			AddDone(d->ids + 1, d->nids - 1);
		Log("info", d->ids[0], "push endpoint answered %ld: registration forgotten", status);
		stats.gone++;
	}
	else if ((d->kind == KIND_FCM && status == 401) || (d->kind == KIND_APNS && apns_token_refused(status, d->resp)))
	{
		/*
		 * The credential was refused (expired or revoked early): send again
		 * at once with a new one; refused again, back off like any failure
		 * (a wrong key must not burn the attempts quickly).
		 */
		snprintf(error, sizeof(error), "%s refused the credential: http %ld %.200s",
				 d->kind == KIND_FCM ? "fcm" : "apns", status, d->resp ? d->resp : "");
		Log("warning", d->ids[0], "%s", error);
		if (Reauthorize(d))
			return true;
		FailIds(d->ids_text, d->ids[0], FAIL_AUTH, error, 0);
		stats.retried++;
	}
	else
	{
		snprintf(error, sizeof(error), "http %ld%s%.200s", status, d->resp ? ": " : "", d->resp ? d->resp : "");
		FailIds(d->ids_text, d->ids[0], status == 429 ? FAIL_HTTP_429 : status >= 500 ? FAIL_HTTP_5XX : FAIL_HTTP_4XX,
				error, (status == 429 || status >= 500) ? (long) retry_after : 0);
		stats.retried++;
	}
	return false;
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

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &d);
		curl_multi_remove_handle(multi, d->easy);
		if (d->kind == KIND_FCM_TOKEN)
		{
			fcm_fetch = NULL;
			FcmTokenFinished(d, m->data.result);
		}
		else if (Finished(d, m->data.result))
			continue;
		else
			Unlink(d);
		FreeDelivery(d);
	}
	FlushDone();
}

/* Extends the leases of the rows in flight (and of FCM rows waiting for a token). */
static void
Renew(void)
{
	char	   *ids;
	size_t		len = 3,
				off = 0;
	const char *params[1];

	last_renew = Now();
	for (Delivery *d = inflight; d != NULL; d = d->next)
		len += strlen(d->ids_text) + 1;
	if (ninflight == 0 || (ids = malloc(len)) == NULL)
		return;
	ids[off++] = '{';
	for (Delivery *d = inflight; d != NULL; d = d->next)
	{
		size_t		n = strlen(d->ids_text) - 2;

		if (off > 1)
			ids[off++] = ',';
		memcpy(ids + off, d->ids_text + 1, n);
		off += n;
	}
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
				 "# HELP chat_pusher_fcm_tokens_total FCM OAuth2 access tokens obtained.\n"
				 "# TYPE chat_pusher_fcm_tokens_total counter\nchat_pusher_fcm_tokens_total %ld\n"
				 "# HELP chat_pusher_inflight Requests in flight.\n"
				 "# TYPE chat_pusher_inflight gauge\nchat_pusher_inflight %d\n"
				 "# HELP chat_pusher_failed_total Failed attempts by reason.\n"
				 "# TYPE chat_pusher_failed_total counter\n",
				 stats.sent, stats.gone, stats.retried, stats.tokens, ninflight);
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
		if (fcm.key != NULL)
			FcmPump();
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
	LoadKeys();
	SpawnPerPartition();
	MetricsOpen();
	SetupSignals();
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (multi = curl_multi_init()) == NULL)
	{
		fprintf(stderr, "chat-pusher: curl initialisation failed\n");
		return 1;
	}
	curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
	if (!DbConnect())
		Log("warning", 0, "retrying the database connection every %.0f s", RECONNECT_EVERY_S);
	Log("info", 0, "chat-pusher started (concurrency %d)", cfg.concurrency);
	rc = Run();
	if (fcm_fetch != NULL)
	{
		curl_multi_remove_handle(multi, fcm_fetch->easy);
		FreeDelivery(fcm_fetch);
		fcm_fetch = NULL;
	}
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	EVP_PKEY_free(vapid_key);
	EVP_PKEY_free(apns_key);
	fcm_free_account(&fcm);
	free(fcm_access);
	if (db != NULL)
		PQfinish(db);
	if (metrics_fd >= 0)
		close(metrics_fd);
	free(done_ids);
	return rc;
}
