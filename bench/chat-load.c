/*
 * chat-load.c: load generator for chat.v1 gateways (chat-gateway and peers).
 *
 * The parent creates users, devices, conversations and tokens through libpq,
 * forks --procs children that each run one libwebsockets client context for
 * a slice of the clients, steers the phases through a shared memory block
 * (connect, run, drain, report), and at the end checks what the receivers
 * stored against the messages table (loss, duplicates).  Every message body
 * carries its CLOCK_REALTIME send time; receivers record end-to-end latency
 * into log-bucketed histograms (HdrHistogram layout, ~0.8% precision).
 *
 * Bounded by design: loopback targets only, at most 100,000 clients, a
 * duration cap, and a wall-clock alarm that ends every process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <libwebsockets.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <ev.h>

#define LOAD_MAX_CLIENTS	100000
#define LOAD_MAX_PROCS		32
#define LOAD_MAX_PER_PROC	19000	/* the fd hard limit is 20,000 */
#define LOAD_MAX_DURATION	600
#define LOAD_HSUB		128	/* histogram sub-buckets per power of two */
#define LOAD_HBUCKETS		(2 * LOAD_HSUB + 40 * LOAD_HSUB)
#define LOAD_NCODES		24
#define LOAD_NHOPS		8
#define TL_SECS			(LOAD_MAX_DURATION / 2)	/* per-second timeline (storms run longer than --duration) */
#define TL_SUB			16	/* timeline histogram: sub-buckets per power of two (~6%) */
#define TL_BUCKETS		(2 * TL_SUB + 28 * TL_SUB)	/* microseconds, up to ~2^32 us */
#define LOAD_NWORST		10	/* slowest deliveries kept with their wall-clock times */

/*
 * --trace (the gateway runs with --trace-latency 1): the hops of a message,
 * all CLOCK_REALTIME on one host.  0-4 come from the sender's response
 * (its "trace": gw_rx, db_call, commit, write), 5 pairs the response's
 * commit with the event's notification arrival by (conversation, seq)
 * inside one chat-load process, 6-7 come from the event ("notify",
 * "write").
 */
static const char *const hop_names[LOAD_NHOPS] = {
	"client send -> gateway receive",
	"gateway receive -> database call",
	"database call -> commit",
	"commit -> response written",
	"response written -> client receive",
	"commit -> notification received",
	"notification received -> event written",
	"event written -> client receive",
};

enum scenario { SC_IDLE, SC_DIRECT, SC_GROUP, SC_STORM };
static const char *const scenario_names[] = { "idle", "direct", "group", "storm" };

enum phase { PH_CONNECT, PH_RUN, PH_DRAIN, PH_REPORT };

/*
 * Close codes we count separately; anything else lands in "other".  lws 4.1
 * clients rewrite a received 1012..1015 to 1002 before the callback sees it
 * (client-parser-ws.c), so a gateway restart (1012) is counted as 1002 and
 * reported as "1002/1012-1015".
 */
static const int close_codes[LOAD_NCODES] = {
	1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1012, 1013,
	4001, 4008, 4009, -1 /* connect error */, 0 /* other */
};

/* Options, shared read-only by every process after fork. */
static struct options {
	const char *dsn, *url, *secret_file, *restart_cmd, *source_ips_arg;
	int clients, procs, connect_rate, group_size, duration, window;
	int			json, sync_on_connect, ack_interval_ms, drain_max, verbose, max_inflight;
	int			devices;		/* connections (devices) per user */
	int			trace;			/* --trace: per-hop latency from the gateway's "trace" */
	int			evlib;			/* --event-lib ev (default): libev/epoll; 0: lws's poll loop */
	double rate;
	enum scenario scenario;
	long		gateway_pid, pg_pid;
	int64_t user_base;
	double restart_at;
	char host[64];
	int port;
	char path[128];
	char label[64];
} opt;

/* One process's counters: written only by that child, read by the parent. */
struct proc_stats {
	_Atomic int64_t opened, ready, connect_launched, resynced, reconnected;
	_Atomic int64_t deliveries, deliveries_in_window, last_delivery_us;
	int64_t sends, sends_ok, sends_ok_in_window, send_errors, dup_events;
	int64_t other_events, resyncs_asked, duplicate_results, connect_errors, initial_connect_errors;
	int64_t closes[LOAD_NCODES];
	_Atomic int64_t outstanding;
	int64_t first_open_us, last_open_us;
	char		last_error[96];	/* the latest connect error's text */
	uint64_t hist[LOAD_HBUCKETS];	/* delivery latency, ns */
	uint64_t rtt[LOAD_HBUCKETS];	/* send → ok, ns */
	uint64_t hop[LOAD_NHOPS][LOAD_HBUCKETS];	/* --trace: per hop, ns */
	int64_t hop_negative[LOAD_NHOPS];	/* samples below 0 (clock steps), counted as 0 */
	/* per second of the run (by send time): latency histogram (us), ok responses */
	uint32_t tl_hist[TL_SECS][TL_BUCKETS];
	uint32_t tl_sends_ok[TL_SECS];
	struct worst {
		int64_t latency_ns, sent_ns, conv, seq;
	} worst[LOAD_NWORST];		/* slowest deliveries, unsorted */
};

struct shared {
	_Atomic int phase;
	_Atomic int64_t go_us, stop_us, restart_us;
	_Atomic int64_t go_real_ns;	/* CLOCK_REALTIME at go: second 0 of the timeline */
	struct proc_stats ps[LOAD_MAX_PROCS];
};

/* Per-client results the parent needs for the loss check. */
struct client_result {
	int32_t got;		/* distinct bench messages from others */
	int32_t dups;		/* events for a seq already stored */
};

static struct shared *shm;
static struct client_result *results;

/* Setup data, computed by the parent before fork. */
static int64_t *user_ids;
static int32_t *device_ids;
static int64_t *conv_ids;
static char **tokens;

/* Source addresses for client sockets (connect() below binds them). */
static in_addr_t src_addrs[256];
static int src_count;
static _Atomic unsigned src_next;
static uint16_t dst_port_be;

/* ---------- small helpers ---------- */

static void
die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "chat-load: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

/* Microseconds of CLOCK_MONOTONIC: phase timing. */
static int64_t
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Nanoseconds of CLOCK_REALTIME: what a message carries as its send time. */
static int64_t
real_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t rng_state = 88172645463325252ULL;

/* xorshift64: jitter for reconnects and send phases, not cryptographic. */
static uint64_t
rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Histogram bucket of a value: exact below 256, then 128 per power of two. */
static int
hist_index(uint64_t v)
{
	int		msb, shift, idx;

	if (v < 2 * LOAD_HSUB)
		return (int) v;
	msb = 63 - __builtin_clzll(v);
	shift = msb - 7;
	idx = 2 * LOAD_HSUB + (shift - 1) * LOAD_HSUB + (int) ((v >> shift) - LOAD_HSUB);
	return idx < LOAD_HBUCKETS ? idx : LOAD_HBUCKETS - 1;
}

/* Representative value (middle) of a bucket. */
static double
hist_value(int idx)
{
	int		shift, sub;

	if (idx < 2 * LOAD_HSUB)
		return idx;
	shift = (idx - 2 * LOAD_HSUB) / LOAD_HSUB + 1;
	sub = (idx - 2 * LOAD_HSUB) % LOAD_HSUB + LOAD_HSUB;
	return ((double) sub + 0.5) * (double) (1ULL << shift);
}

static void
hist_add(uint64_t *h, int64_t v)
{
	h[hist_index(v < 0 ? 0 : (uint64_t) v)]++;
}

/* Timeline histogram bucket of a latency in microseconds (16 per power of two). */
static int
tl_index(uint64_t us)
{
	int		msb, shift, idx;

	if (us < 2 * TL_SUB)
		return (int) us;
	msb = 63 - __builtin_clzll(us);
	shift = msb - 4;
	idx = 2 * TL_SUB + (shift - 1) * TL_SUB + (int) ((us >> shift) - TL_SUB);
	return idx < TL_BUCKETS ? idx : TL_BUCKETS - 1;
}

/* Representative value (middle) of a timeline bucket, in microseconds. */
static double
tl_value(int idx)
{
	int		shift, sub;

	if (idx < 2 * TL_SUB)
		return idx;
	shift = (idx - 2 * TL_SUB) / TL_SUB + 1;
	sub = (idx - 2 * TL_SUB) % TL_SUB + TL_SUB;
	return ((double) sub + 0.5) * (double) (1ULL << shift);
}

/* Second of the timeline a CLOCK_REALTIME instant falls in; -1 outside. */
static int
tl_second(int64_t real)
{
	int64_t		go = atomic_load(&shm->go_real_ns), s;

	if (!go || real < go)
		return -1;
	s = (real - go) / 1000000000LL;
	return s < TL_SECS ? (int) s : -1;
}

/* Value at quantile q (0..1) of a timeline histogram, in microseconds. */
static double
tl_quantile(const uint64_t *h, uint64_t total, double q)
{
	uint64_t	acc = 0, want = (uint64_t) ceil(q * (double) total);
	int		last = 0;

	if (!total)
		return 0;
	if (want < 1)
		want = 1;
	for (int i = 0; i < TL_BUCKETS; i++)
	{
		if (!h[i])
			continue;
		last = i;
		acc += h[i];
		if (acc >= want)
			return tl_value(i);
	}
	return tl_value(last);
}

/* Formats a CLOCK_REALTIME instant as UTC with milliseconds (for log matching). */
static const char *
fmt_real(int64_t ns, char *buf, size_t len)
{
	time_t		t = (time_t) (ns / 1000000000LL);
	struct tm	tm;
	size_t		n;

	gmtime_r(&t, &tm);
	n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, len - n, ".%03dZ", (int) (ns / 1000000 % 1000));
	return buf;
}

/* Value at quantile q (0..1) in ns; 0 when empty. */
static double
hist_quantile(const uint64_t *h, double q)
{
	uint64_t	total = 0, acc = 0, want;
	int		i, last = 0;

	for (i = 0; i < LOAD_HBUCKETS; i++)
		total += h[i];
	if (!total)
		return 0;
	want = (uint64_t) ceil(q * (double) total);
	if (want < 1)
		want = 1;
	for (i = 0; i < LOAD_HBUCKETS; i++)
	{
		if (!h[i])
			continue;
		last = i;
		acc += h[i];
		if (acc >= want)
			return hist_value(i);
	}
	return hist_value(last);
}

static uint64_t
hist_total(const uint64_t *h)
{
	uint64_t	t = 0;

	for (int i = 0; i < LOAD_HBUCKETS; i++)
		t += h[i];
	return t;
}

/* ---------- source addresses: bind client sockets before connect ---------- */

/*
 * lws 4.1 has no hook between socket() and connect(), so the executable
 * interposes connect(): a socket heading for the gateway port is first bound
 * to the next 127.0.0.x source address with IP_BIND_ADDRESS_NO_PORT (the
 * port is then chosen per 4-tuple at connect time, so 100,000 connections
 * need no more than a handful of source addresses).  Everything else, and
 * every process without --source-ips, passes straight through.
 */
int
connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (src_count && sa && sa->sa_family == AF_INET &&
		((const struct sockaddr_in *) sa)->sin_port == dst_port_be)
	{
		struct sockaddr_in me;
		int		one = 1;

		memset(&me, 0, sizeof(me));
		me.sin_family = AF_INET;
		me.sin_addr.s_addr = src_addrs[atomic_fetch_add(&src_next, 1) % (unsigned) src_count];
		(void) setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		/* EINVAL: already bound by an earlier connect() on this socket. */
		(void) bind(fd, (struct sockaddr *) &me, sizeof(me));
	}
	return (int) syscall(SYS_connect, fd, sa, len);
}

/* Parses "127.0.0.1-127.0.0.8" or "127.0.0.1,127.0.0.2" or a count "8". */
static void
parse_source_ips(const char *arg)
{
	char		buf[1024], *tok, *save = NULL;

	if (!arg || !*arg)
		return;
	if (strspn(arg, "0123456789") == strlen(arg))
	{
		int		n = atoi(arg);

		if (n < 1 || n > 250)
			die("--source-ips count must be 1..250");
		for (int i = 0; i < n; i++)
			src_addrs[src_count++] = htonl(0x7f000001u + (uint32_t) i);
		return;
	}
	snprintf(buf, sizeof(buf), "%s", arg);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		char	   *dash = strchr(tok, '-');
		struct in_addr a, b;

		if (dash)
			*dash = '\0';
		if (inet_pton(AF_INET, tok, &a) != 1)
			die("--source-ips: bad address %s", tok);
		b = a;
		if (dash && inet_pton(AF_INET, dash + 1, &b) != 1)
			die("--source-ips: bad address %s", dash + 1);
		for (uint32_t x = ntohl(a.s_addr); x <= ntohl(b.s_addr) && src_count < 256; x++)
		{
			if ((x >> 24) != 127)
				die("--source-ips: only 127.0.0.0/8 (loopback) is allowed");
			src_addrs[src_count++] = htonl(x);
		}
	}
}

/* ---------- tokens ---------- */

static void
b64url(const unsigned char *in, size_t len, char *out)
{
	static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t		i, o = 0;

	for (i = 0; i + 2 < len; i += 3)
	{
		uint32_t	v = (uint32_t) in[i] << 16 | (uint32_t) in[i + 1] << 8 | in[i + 2];

		out[o++] = tbl[v >> 18];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = tbl[(v >> 6) & 63];
		out[o++] = tbl[v & 63];
	}
	if (len - i == 1)
	{
		uint32_t	v = (uint32_t) in[i] << 16;

		out[o++] = tbl[v >> 18];
		out[o++] = tbl[(v >> 12) & 63];
	}
	else if (len - i == 2)
	{
		uint32_t	v = (uint32_t) in[i] << 16 | (uint32_t) in[i + 1] << 8;

		out[o++] = tbl[v >> 18];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = tbl[(v >> 6) & 63];
	}
	out[o] = '\0';
}

static char secret[512];
static size_t secret_len;

/* HS256 JWT for (user, device), signed with the shared secret. */
static char *
sign_token(int64_t user, int device, int64_t exp)
{
	static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	char		payload[128], h64[64], p64[192], sig64[64], *tok;
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	size_t		n;

	b64url((const unsigned char *) hdr, strlen(hdr), h64);
	n = (size_t) snprintf(payload, sizeof(payload),
						  "{\"sub\":%" PRId64 ",\"dev\":%d,\"exp\":%" PRId64 "}", user, device, exp);
	b64url((const unsigned char *) payload, n, p64);
	tok = malloc(strlen(h64) + strlen(p64) + 64);
	sprintf(tok, "%s.%s", h64, p64);
	HMAC(EVP_sha256(), secret, (int) secret_len, (unsigned char *) tok, strlen(tok), mac, &maclen);
	b64url(mac, maclen, sig64);
	strcat(tok, ".");
	strcat(tok, sig64);
	return tok;
}

/* True when our signing reproduces the signature of a database-issued token. */
static int
local_signing_matches(const char *db_token)
{
	const char *dot = strrchr(db_token, '.');
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	char		sig64[64];

	if (!dot)
		return 0;
	HMAC(EVP_sha256(), secret, (int) secret_len, (const unsigned char *) db_token,
		 (size_t) (dot - db_token), mac, &maclen);
	b64url(mac, maclen, sig64);
	return strcmp(sig64, dot + 1) == 0;
}

/* ---------- setup through libpq ---------- */

static PGresult *
exec_ok(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	PGresult   *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
		die("setup query failed: %s\n  %s", PQerrorMessage(conn), sql);
	return res;
}

/* Runs sql with $1, $2 = the user ids of user indexes lo .. hi-1 and $3 =
 * extra (when not NULL); dies on error, like exec_ok. */
static PGresult *
exec_user_range(PGconn *conn, const char *sql, int lo, int hi, const char *extra)
{
	char		a[32], b[32];
	const char *p[3] = {a, b, extra};

	snprintf(a, sizeof(a), "%" PRId64, opt.user_base + lo);
	snprintf(b, sizeof(b), "%" PRId64, opt.user_base + hi - 1);
	return exec_ok(conn, sql, extra ? 3 : 2, p);
}

/* Creates users (one device each), conversations and tokens for all clients. */
static void
setup_database(void)
{
	PGconn	   *conn = PQconnectdb(opt.dsn);
	PGresult   *res;
	char		a[32], b[32], c[32];
	const char *p[4];
	int			n = opt.clients, chunk = 5000, dev = opt.devices;
	int			nusers = (opt.clients + dev - 1) / dev;
	int64_t		t0 = mono_us();
	int			db_tokens = 0;
	int64_t    *uconv;

	if (PQstatus(conn) != CONNECTION_OK)
		die("cannot connect to %s: %s", opt.dsn, PQerrorMessage(conn));
	res = exec_ok(conn, "SET synchronous_commit = off", 0, NULL);
	PQclear(res);

	user_ids = calloc((size_t) n, sizeof(int64_t));
	device_ids = calloc((size_t) n, sizeof(int32_t));
	conv_ids = calloc((size_t) n, sizeof(int64_t));
	tokens = calloc((size_t) n, sizeof(char *));
	uconv = calloc((size_t) nusers, sizeof(int64_t));

	/* Users: client k is device (k % D) + 1 of user index k / D. */
	for (int lo = 0; lo < nusers; lo += chunk)
	{
		int			hi = lo + chunk < nusers ? lo + chunk : nusers;

		snprintf(c, sizeof(c), "%d", dev);
		res = exec_user_range(conn,
							  "SELECT g, d, chat.register_device(g, 'bench') FROM"
							  " (SELECT g, chat.upsert_user(g, 'bench_' || g) FROM generate_series($1::bigint, $2::bigint) g"
							  "  OFFSET 0) s, generate_series(1, $3::int) d ORDER BY g, d", lo, hi, c);
		for (int i = 0; i < PQntuples(res); i++)
		{
			int64_t		uid = strtoll(PQgetvalue(res, i, 0), NULL, 10);
			int			k = (int) (uid - opt.user_base) * dev + atoi(PQgetvalue(res, i, 1)) - 1;

			if (k >= n)
				continue;
			user_ids[k] = uid;
			device_ids[k] = atoi(PQgetvalue(res, i, 2));
		}
		PQclear(res);
	}

	if (opt.scenario == SC_DIRECT || opt.scenario == SC_STORM)
	{
		for (int lo = 0; lo + 1 < nusers; lo += chunk)
		{
			int			hi = lo + chunk < nusers ? lo + chunk : nusers;

			res = exec_user_range(conn,
								  "SELECT g, chat.direct_conversation(g, g + 1) FROM generate_series($1::bigint, $2::bigint) g"
								  " WHERE (g - $1::bigint) % 2 = 0 AND g + 1 <= $2::bigint", lo, hi, NULL);
			for (int i = 0; i < PQntuples(res); i++)
			{
				int			k = (int) (strtoll(PQgetvalue(res, i, 0), NULL, 10) - opt.user_base);

				uconv[k] = uconv[k + 1] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
			}
			PQclear(res);
		}
	}
	else if (opt.scenario == SC_GROUP)
	{
		for (int lo = 0; lo < nusers; lo += opt.group_size)
		{
			int			hi = lo + opt.group_size < nusers ? lo + opt.group_size : nusers;
			int64_t		cid;

			snprintf(c, sizeof(c), "bench group %d", lo / opt.group_size);
			res = exec_user_range(conn,
								  "SELECT chat.create_group($1::bigint, $3,"
								  " ARRAY(SELECT generate_series($1::bigint + 1, $2::bigint)))", lo, hi, c);
			cid = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
			PQclear(res);
			for (int u = lo; u < hi; u++)
				uconv[u] = cid;
		}
	}
	for (int k = 0; k < n; k++)
		conv_ids[k] = uconv[k / dev];
	free(uconv);

	/* Tokens: sign locally when our signing matches the database's. */
	if (opt.secret_file)
	{
		FILE	   *f = fopen(opt.secret_file, "r");

		if (!f)
			die("cannot read %s: %s", opt.secret_file, strerror(errno));
		secret_len = fread(secret, 1, sizeof(secret) - 1, f);
		fclose(f);
		while (secret_len && isspace((unsigned char) secret[secret_len - 1]))
			secret_len--;
		secret[secret_len] = '\0';
		snprintf(a, sizeof(a), "%" PRId64, user_ids[0]);
		snprintf(b, sizeof(b), "%d", device_ids[0]);
		p[0] = a;
		p[1] = b;
		res = PQexecParams(conn, "SELECT chat.issue_token($1::bigint, $2::int)", 2, NULL, p, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK && !local_signing_matches(PQgetvalue(res, 0, 0)))
		{
			fprintf(stderr, "chat-load: local HS256 signing does not match chat.issue_token; using the database\n");
			db_tokens = 1;
		}
		PQclear(res);
	}
	else
		db_tokens = 1;

	if (db_tokens)
	{
		for (int lo = 0; lo < nusers; lo += chunk)
		{
			int			hi = lo + chunk < nusers ? lo + chunk : nusers;

			res = exec_user_range(conn,
								  "SELECT d.user_id, chat.issue_token(d.user_id, d.device_id, '4 hours'), d.device_id"
								  " FROM chat.devices d WHERE d.user_id BETWEEN $1::bigint AND $2::bigint"
								  " AND d.platform = 'bench' ORDER BY d.user_id, d.device_id", lo, hi, NULL);
			for (int i = 0; i < PQntuples(res); i++)
			{
				int			k = (int) (strtoll(PQgetvalue(res, i, 0), NULL, 10) - opt.user_base) * dev +
					atoi(PQgetvalue(res, i, 2)) - 1;

				if (k >= 0 && k < n && !tokens[k])
					tokens[k] = strdup(PQgetvalue(res, i, 1));
			}
			PQclear(res);
		}
	}
	else
	{
		int64_t		exp = time(NULL) + 4 * 3600;

		for (int k = 0; k < n; k++)
			tokens[k] = sign_token(user_ids[k], device_ids[k], exp);
	}
	for (int k = 0; k < n; k++)
		if (!tokens[k] || !user_ids[k])
			die("setup: client %d has no user or token", k);
	PQfinish(conn);
	if (opt.verbose)
		fprintf(stderr, "chat-load: setup of %d clients took %.1f s (%s tokens)\n",
				n, (double) (mono_us() - t0) / 1e6, db_tokens ? "database" : "local");
}

/* ---------- the client side (runs in each child) ---------- */

static int	total_senders;		/* over all processes, for the rate share */

/*
 * Direct and storm: every device of every paired user sends.  Group: the
 * first device of the first user of each group (of at least two users).
 */
static int
is_sender(int k)
{
	int			u = k / opt.devices;
	int			nusers = (opt.clients + opt.devices - 1) / opt.devices;

	switch (opt.scenario)
	{
		case SC_DIRECT:
		case SC_STORM:
			return conv_ids[k] != 0;
		case SC_GROUP:
			return k % opt.devices == 0 && u % opt.group_size == 0 && u + 1 < nusers;
		default:
			return 0;
	}
}

struct txbuf {
	struct txbuf *next;
	size_t		len;
	unsigned char data[];		/* LWS_PRE headroom, then the frame */
};

struct pending_send {
	uint64_t	counter;
	int64_t		sent_ns;		/* body timestamp, kept across retries */
	int64_t		req_ns;			/* when this attempt went out */
};

enum cstate { C_IDLE, C_CONNECTING, C_OPEN, C_READY };

struct client {
	struct lws *wsi;
	int			idx;			/* global index */
	enum cstate state;
	int			sender;
	int			attempts;		/* consecutive failed connects */
	int			restarting;		/* last close was 1012: shorter backoff (web client's RESTART_ATTEMPTS) */
	int			needs_resync;	/* disconnected after the run started */
	int			close_code;
	int			syncing;
	int64_t		reconnect_at_us;
	struct txbuf *txq, *txq_tail;
	/* reassembly of fragmented frames */
	char	   *rx;
	size_t		rx_len, rx_cap;
	/* stored seqs of the client's conversation: bit per seq */
	uint8_t    *seen;
	int64_t		seen_cap;		/* in seqs */
	int64_t		contig;			/* highest contiguous stored seq */
	int64_t		acked;
	/* sends */
	uint64_t	next_counter;
	struct pending_send *pend;
	int			npend, pend_cap;
};

static struct lws_context *ctx;
static struct client *clients;
static int my_proc, my_lo, my_hi;
static struct proc_stats *me;
static lws_sorted_usec_list_t tick_sul;
static int64_t proc_start_us, launched, sends_done;
static int *sender_list, nsenders, send_cursor;
static int reconnect_pending, inflight;

static void client_connect(struct client *c);

/* Queues a frame for the writeable callback. */
static void
client_queue(struct client *c, const char *s, size_t len)
{
	struct txbuf *t;

	if (!c->wsi || c->state < C_OPEN)
		return;
	t = malloc(sizeof(*t) + LWS_PRE + len);
	t->next = NULL;
	t->len = len;
	memcpy(t->data + LWS_PRE, s, len);
	if (c->txq_tail)
		c->txq_tail->next = t;
	else
		c->txq = t;
	c->txq_tail = t;
	lws_callback_on_writable(c->wsi);
}

static void
client_flush_txq(struct client *c)
{
	while (c->txq)
	{
		struct txbuf *t = c->txq;

		c->txq = t->next;
		free(t);
	}
	c->txq_tail = NULL;
}

/* Marks seq stored; returns 1 when it was new. */
static int
client_store(struct client *c, int64_t seq)
{
	if (seq <= 0)
		return 0;
	if (seq >= c->seen_cap)
	{
		int64_t		ncap = c->seen_cap ? c->seen_cap : 256;

		while (ncap <= seq)
			ncap *= 2;
		c->seen = realloc(c->seen, (size_t) ncap / 8);
		memset(c->seen + c->seen_cap / 8, 0, (size_t) (ncap - c->seen_cap) / 8);
		c->seen_cap = ncap;
	}
	if (c->seen[seq >> 3] & (1 << (seq & 7)))
		return 0;
	c->seen[seq >> 3] |= (uint8_t) (1 << (seq & 7));
	while (c->contig + 1 < c->seen_cap && (c->seen[(c->contig + 1) >> 3] & (1 << ((c->contig + 1) & 7))))
		c->contig++;
	return 1;
}

/* --trace: commit and notification times by (conversation, seq), to pair a
 * response with its event in this process (a collision drops a sample). */
#define TRACE_SLOTS 65536
static struct trace_slot
{
	int64_t		conv, seq;
	int64_t		commit_ns, notify_ns;
}		   *trace_slots;

/* Adds one hop sample (ns; negative ones are counted and recorded as 0). */
static void
hop_add(int hop, int64_t ns)
{
	if (ns < 0)
		me->hop_negative[hop]++;
	hist_add(me->hop[hop], ns);
}

/* Notes a commit (from a response) or a notification (from an event) of
 * (conv, seq); records hop 5 once both are known. */
static void
trace_pair(int64_t conv, int64_t seq, int64_t commit_ns, int64_t notify_ns)
{
	struct trace_slot *t;

	if (!trace_slots)
		trace_slots = calloc(TRACE_SLOTS, sizeof(*trace_slots));
	t = &trace_slots[(uint64_t) (conv * 1000003 + seq) % TRACE_SLOTS];
	if (t->conv != conv || t->seq != seq)
	{
		t->conv = conv;
		t->seq = seq;
		t->commit_ns = t->notify_ns = 0;
	}
	if (commit_ns)
		t->commit_ns = commit_ns;
	if (notify_ns && !t->notify_ns)
		t->notify_ns = notify_ns;
	if (t->commit_ns && t->notify_ns)
	{
		hop_add(5, t->notify_ns - t->commit_ns);
		t->conv = -1;			/* done: later receivers of a group add nothing */
	}
}

/* --trace: the hops of a response ("trace" object of a send's ok). */
static void
trace_response(json_t *trace, int64_t req_ns, int64_t conv, int64_t seq)
{
	int64_t		rx = json_integer_value(json_object_get(trace, "gw_rx")) * 1000;
	int64_t		db = json_integer_value(json_object_get(trace, "db_call")) * 1000;
	int64_t		commit = json_integer_value(json_object_get(trace, "commit")) * 1000;
	const char *w = json_string_value(json_object_get(trace, "write"));
	int64_t		wr = w ? strtoll(w, NULL, 10) * 1000 : 0;

	if (!rx || !db || !commit || !wr)
		return;
	hop_add(0, rx - req_ns);
	hop_add(1, db - rx);
	hop_add(2, commit - db);
	hop_add(3, wr - commit);
	hop_add(4, real_ns() - wr);
	trace_pair(conv, seq, commit, 0);
}

/* --trace: the hops of a live message event (s: its NUL-terminated text). */
static void
trace_event(const char *s, int64_t conv, int64_t seq)
{
	const char *t = strstr(s, "\"trace\":{");
	const char *n = t ? strstr(t, "\"notify\":") : NULL, *w = t ? strstr(t, "\"write\":\"") : NULL;
	int64_t		notify, wr;

	if (!n || !w)
		return;
	notify = strtoll(n + 9, NULL, 10) * 1000;
	wr = strtoll(w + 9, NULL, 10) * 1000;
	hop_add(6, wr - notify);
	hop_add(7, real_ns() - wr);
	trace_pair(conv, seq, 0, notify);
}

/* A bench message arrived (live or by sync): dedupe by seq, record latency. */
static void
client_got_message(struct client *c, int64_t conv, int64_t seq, int64_t sender, int64_t sender_device,
				   const char *body, int live)
{
	int64_t		now = real_ns();
	int			fresh;

	if (conv != conv_ids[c->idx])
	{
		me->other_events++;
		return;
	}
	fresh = client_store(c, seq);
	if (sender == user_ids[c->idx] && sender_device == device_ids[c->idx])
		return;					/* our own message, e.g. from sync */
	if (!body || body[0] != 't')
		return;					/* a system message */
	if (!fresh)
	{
		results[c->idx].dups++;
		me->dup_events++;
		return;
	}
	results[c->idx].got++;
	{
		int64_t		sent = strtoll(body + 1, NULL, 10), lat = now - sent;
		int			sec = tl_second(sent), w = 0;

		hist_add(me->hist, lat);
		if (sec >= 0)
			me->tl_hist[sec][tl_index(lat < 0 ? 0 : (uint64_t) lat / 1000)]++;
		/* keep the LOAD_NWORST slowest: replace the smallest kept one */
		for (int i = 1; i < LOAD_NWORST; i++)
			if (me->worst[i].latency_ns < me->worst[w].latency_ns)
				w = i;
		if (lat > me->worst[w].latency_ns)
		{
			me->worst[w].latency_ns = lat;
			me->worst[w].sent_ns = sent;
			me->worst[w].conv = conv;
			me->worst[w].seq = seq;
		}
	}
	atomic_fetch_add_explicit(&me->deliveries, 1, memory_order_relaxed);
	if (atomic_load(&shm->phase) == PH_RUN)
		atomic_fetch_add_explicit(&me->deliveries_in_window, 1, memory_order_relaxed);
	atomic_store_explicit(&me->last_delivery_us, mono_us(), memory_order_relaxed);
	(void) live;
}

/* Finds "key": in s and parses the integer after it; 0 when absent. */
static int64_t
json_int_after(const char *s, const char *key)
{
	const char *p = strstr(s, key);

	if (!p)
		return 0;
	p += strlen(key);
	while (*p == ' ')
		p++;
	if (*p == '"')
		p++;
	return strtoll(p, NULL, 10);
}

static void
client_send_sync(struct client *c)
{
	char		buf[96];
	int			n = snprintf(buf, sizeof(buf), "{\"id\":\"y%d\",\"type\":\"sync\",\"limit\":500}", c->idx);

	c->syncing = 1;
	client_queue(c, buf, (size_t) n);
}

static void
client_send_ack(struct client *c)
{
	char		buf[160];
	int			n;

	if (c->contig <= c->acked || c->state < C_OPEN)
		return;
	n = snprintf(buf, sizeof(buf),
				 "{\"id\":\"a%d\",\"type\":\"ack\",\"conversation\":%" PRId64 ",\"seq\":%" PRId64 "}",
				 c->idx, conv_ids[c->idx], c->contig);
	client_queue(c, buf, (size_t) n);
	c->acked = c->contig;
}

/* Sends one message frame for pending entry p. */
static void
client_send_frame(struct client *c, struct pending_send *p)
{
	char		buf[256];
	int			n;

	p->req_ns = real_ns();
	n = snprintf(buf, sizeof(buf),
				 "{\"id\":%" PRIu64 ",\"type\":\"send\",\"conversation\":%" PRId64
				 ",\"body\":\"t%" PRId64 " bench\",\"client_msg_id\":\"b%" PRId64 "_%d_%" PRIu64 "\"}",
				 p->counter, conv_ids[c->idx], p->sent_ns, opt.user_base, c->idx, p->counter);
	client_queue(c, buf, (size_t) n);
}

/* Starts a new message (counted as one send; retries reuse its id). */
static void
client_new_send(struct client *c)
{
	struct pending_send *p;

	if (c->npend == c->pend_cap)
	{
		c->pend_cap = c->pend_cap ? c->pend_cap * 2 : 8;
		c->pend = realloc(c->pend, (size_t) c->pend_cap * sizeof(*p));
	}
	p = &c->pend[c->npend++];
	p->counter = ++c->next_counter;
	p->sent_ns = real_ns();
	me->sends++;
	atomic_fetch_add(&me->outstanding, 1);
	client_send_frame(c, p);
}

/* The client finished its (re)connect sync: it is ready to run. */
static void
client_became_ready(struct client *c)
{
	c->syncing = 0;
	if (c->state == C_READY)
		return;
	c->state = C_READY;
	atomic_fetch_add(&me->ready, 1);
	if (c->needs_resync)
	{
		c->needs_resync = 0;
		atomic_fetch_add(&me->resynced, 1);
	}
	/* Duty 6: retry unanswered sends with the same client_msg_id. */
	for (int i = 0; i < c->npend; i++)
		client_send_frame(c, &c->pend[i]);
	/* Closed loop: fill the window. */
	if (c->sender && opt.rate <= 0 && atomic_load(&shm->phase) == PH_RUN)
		while (c->npend < opt.window)
			client_new_send(c);
}

/* Handles a response frame (has an id). */
static void
client_response(struct client *c, const char *frame, size_t len)
{
	json_error_t err;
	json_t	   *root = json_loadb(frame, len, 0, &err), *id, *type, *result;
	const char *t;

	if (!root)
	{
		me->other_events++;
		return;
	}
	id = json_object_get(root, "id");
	type = json_object_get(root, "type");
	result = json_object_get(root, "result");
	t = json_string_value(type);
	if (json_is_integer(id))
	{
		uint64_t	counter = (uint64_t) json_integer_value(id);

		for (int i = 0; i < c->npend; i++)
		{
			if (c->pend[i].counter != counter)
				continue;
			if (t && !strcmp(t, "ok"))
			{
				int64_t		seq = json_integer_value(json_object_get(result, "seq"));

				hist_add(me->rtt, real_ns() - c->pend[i].req_ns);
				if (opt.trace && json_is_object(json_object_get(root, "trace")))
					trace_response(json_object_get(root, "trace"), c->pend[i].req_ns, conv_ids[c->idx], seq);
				me->sends_ok++;
				{
					int			sec = tl_second(real_ns());

					if (sec >= 0)
						me->tl_sends_ok[sec]++;
				}
				if (atomic_load(&shm->phase) == PH_RUN)
					me->sends_ok_in_window++;
				if (json_is_true(json_object_get(result, "duplicate")))
					me->duplicate_results++;
				client_store(c, seq);
				c->pend[i] = c->pend[--c->npend];
				atomic_fetch_sub(&me->outstanding, 1);
				if (c->sender && opt.rate <= 0 && atomic_load(&shm->phase) == PH_RUN)
					client_new_send(c);
			}
			else
			{
				/* rate limited or failed: count it, retry on the next tick */
				me->send_errors++;
				if (opt.verbose > 1)
					fprintf(stderr, "send error: %.*s\n", (int) len, frame);
				client_send_frame(c, &c->pend[i]);
			}
			break;
		}
	}
	else if (json_is_string(id) && json_string_value(id)[0] == 'y')
	{
		json_t	   *msgs = json_object_get(result, "messages"), *m;
		size_t		i;

		if (!t || strcmp(t, "ok"))
		{
			me->other_events++;
			if (opt.verbose)
				fprintf(stderr, "sync error: %.*s\n", (int) len, frame);
			client_became_ready(c);
		}
		else
		{
			json_array_foreach(msgs, i, m)
			{
				client_got_message(c,
								   json_integer_value(json_object_get(m, "conversation")),
								   json_integer_value(json_object_get(m, "seq")),
								   json_integer_value(json_object_get(m, "sender")),
								   json_integer_value(json_object_get(m, "sender_device")),
								   json_string_value(json_object_get(m, "body")), 0);
			}
			if (json_is_true(json_object_get(result, "more")))
			{
				client_send_ack(c);
				client_send_sync(c);
			}
			else
			{
				if (opt.ack_interval_ms > 0)
					client_send_ack(c);
				client_became_ready(c);
			}
		}
	}
	json_decref(root);
}

/* Handles one complete text frame. */
static void
client_frame(struct client *c, const char *frame, size_t len)
{
	const char *p;

	/* Events carry no id; only responses do (PROTOCOL.md). */
	if (!memmem(frame, len, "\"id\":", 5))
	{
		if (memmem(frame, len, "\"type\":\"message\"", 16) || memmem(frame, len, "\"type\": \"message\"", 17))
		{
			char		tmp[512];
			const char *s = frame;

			if (len < sizeof(tmp))
			{
				memcpy(tmp, frame, len);
				tmp[len] = '\0';
				s = tmp;
			}
			p = strstr(s, "\"body\":");
			if (p)
			{
				p += 7;
				while (*p == ' ')
					p++;
				if (*p == '"')
					p++;
				else
					p = NULL;
			}
			if (opt.trace && s == tmp)
				trace_event(s, json_int_after(s, "\"conversation\":"), json_int_after(s, "\"seq\":"));
			client_got_message(c, json_int_after(s, "\"conversation\":"), json_int_after(s, "\"seq\":"),
							   json_int_after(s, "\"sender\":"), json_int_after(s, "\"sender_device\":"), p, 1);
			return;
		}
		if (memmem(frame, len, "\"type\":\"hello\"", 14) || memmem(frame, len, "\"type\": \"hello\"", 15))
		{
			if (opt.sync_on_connect || c->needs_resync)
				client_send_sync(c);
			else
				client_became_ready(c);
			return;
		}
		if (memmem(frame, len, "\"type\":\"resync\"", 15) || memmem(frame, len, "\"type\": \"resync\"", 16))
		{
			me->resyncs_asked++;
			if (!c->syncing)
				client_send_sync(c);
			return;
		}
		me->other_events++;
		return;
	}
	client_response(c, frame, len);
}

static int
close_slot(int code)
{
	for (int i = 0; i < LOAD_NCODES; i++)
	{
		if (close_codes[i] == code)
			return i;
		if (close_codes[i] == 0)
			return i;
	}
	return LOAD_NCODES - 1;
}

/* Connection gone: count the close, schedule a reconnect when still running. */
static void
client_lost(struct client *c, int code)
{
	int			ph = atomic_load(&shm->phase);

	if (c->state == C_CONNECTING)
		inflight--;
	if (c->state >= C_OPEN)
		atomic_fetch_sub(&me->opened, 1);
	if (c->state == C_READY)
		atomic_fetch_sub(&me->ready, 1);
	if (ph < PH_REPORT)			/* not our own teardown */
		me->closes[close_slot(code)]++;
	c->wsi = NULL;
	c->state = C_IDLE;
	c->syncing = 0;
	c->acked = 0;			/* the cursor may have moved less than we sent */
	client_flush_txq(c);
	free(c->rx);
	c->rx = NULL;
	c->rx_len = c->rx_cap = 0;
	if (ph >= PH_REPORT)
		return;
	if (ph >= PH_RUN)
		c->needs_resync = 1;
	/*
	 * Exponential backoff with full jitter: base 0.5 s, cap 30 s; after a
	 * 1012 (the gateway restarts) the first 4 attempts use base 0.25 s, as
	 * web/client/connection.js does.
	 */
	if (code == 1012)
		c->restarting = 1;
	{
		int64_t		base = c->restarting && c->attempts < 4 ? 250000 : 500000;
		int64_t		cap = base << (c->attempts < 6 ? c->attempts : 6);

		if (cap > 30000000)
			cap = 30000000;
		c->reconnect_at_us = mono_us() + (int64_t) (rng() % (uint64_t) cap);
		c->attempts++;
		reconnect_pending++;
	}
}

static int
callback_chat(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct client *c = (struct client *) lws_get_opaque_user_data(wsi);

	(void) user;
	switch (reason)
	{
		case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
			if (!c)
				break;
			me->connect_errors++;
			if (atomic_load(&shm->phase) == PH_CONNECT)
				me->initial_connect_errors++;
			snprintf(me->last_error, sizeof(me->last_error), "%s", in ? (char *) in : "?");
			for (char *q = me->last_error; *q; q++)
				if (*q == '"' || *q == '\\' || (unsigned char) *q < 0x20)
					*q = '\'';		/* stays valid inside the JSON report */
			if (opt.verbose > 1)
				fprintf(stderr, "connect error %d: %s\n", c->idx, in ? (char *) in : "");
			client_lost(c, -1);
			break;
		case LWS_CALLBACK_CLIENT_ESTABLISHED:
			if (!c)
				break;
			if (c->state == C_CONNECTING)
				inflight--;
			c->state = C_OPEN;
			c->close_code = 1006;
			c->attempts = 0;
			c->restarting = 0;
			{
				int64_t		now = mono_us();
				int64_t		n = atomic_fetch_add(&me->opened, 1);

				if (!me->first_open_us)
					me->first_open_us = now;
				me->last_open_us = now;
				(void) n;
			}
			if (c->needs_resync)
				atomic_fetch_add(&me->reconnected, 1);
			break;
		case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
			if (c && len >= 2)
				c->close_code = ((unsigned char *) in)[0] << 8 | ((unsigned char *) in)[1];
			break;
		case LWS_CALLBACK_CLIENT_CLOSED:
			if (c)
				client_lost(c, c->close_code ? c->close_code : 1006);
			break;
		case LWS_CALLBACK_CLIENT_RECEIVE:
			if (!c)
				break;
			if (lws_is_first_fragment(wsi) && lws_is_final_fragment(wsi) && !c->rx_len)
			{
				client_frame(c, in, len);
				break;
			}
			if (c->rx_len + len + 1 > c->rx_cap)
			{
				c->rx_cap = (c->rx_len + len + 1) * 2;
				c->rx = realloc(c->rx, c->rx_cap);
			}
			memcpy(c->rx + c->rx_len, in, len);
			c->rx_len += len;
			if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi))
			{
				client_frame(c, c->rx, c->rx_len);
				c->rx_len = 0;
			}
			break;
		case LWS_CALLBACK_CLIENT_WRITEABLE:
			if (!c || !c->txq)
				break;
			{
				struct txbuf *t = c->txq;

				c->txq = t->next;
				if (!c->txq)
					c->txq_tail = NULL;
				if (lws_write(wsi, t->data + LWS_PRE, t->len, LWS_WRITE_TEXT) < (int) t->len)
				{
					free(t);
					return -1;
				}
				free(t);
				if (c->txq)
					lws_callback_on_writable(wsi);
			}
			break;
		default:
			break;
	}
	return 0;
}

static const struct lws_protocols protocols[] = {
	{"chat.v1", callback_chat, 0, 4096, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0}
};

/*
 * No lws validity (idle ping) timers on client connections: lws 4.1 keeps
 * every timer in one sorted list, and a 300 s validity timer per connection
 * makes each new connection walk the whole list (lws_dll2_add_sorted was 63%
 * of the load generator's CPU at 9,000 connections).  The gateway pings us;
 * lws answers those pings by itself.
 */
static const lws_retry_bo_t no_validity_policy = {
	.secs_since_valid_ping = 0,
	.secs_since_valid_hangup = 0,
};

static void
client_connect(struct client *c)
{
	struct lws_client_connect_info ci;
	char		path[1024];

	memset(&ci, 0, sizeof(ci));
	snprintf(path, sizeof(path), "%s?token=%s", opt.path, tokens[c->idx]);
	ci.context = ctx;
	ci.address = opt.host;
	ci.port = opt.port;
	ci.path = path;
	ci.host = opt.host;
	ci.origin = opt.host;
	ci.protocol = "chat.v1";
	ci.opaque_user_data = c;
	ci.retry_and_idle_policy = &no_validity_policy;
	ci.pwsi = &c->wsi;
	c->state = C_CONNECTING;
	inflight++;
	c->close_code = 0;
	launched++;
	atomic_fetch_add_explicit(&me->connect_launched, 1, memory_order_relaxed);
	if (!lws_client_connect_via_info(&ci) && c->state == C_CONNECTING)
	{
		/* failed before any callback */
		me->connect_errors++;
		c->wsi = NULL;
		client_lost(c, -1);
	}
}

/* Every millisecond: connect ramp, reconnects, sends, acks, phase changes. */
static void
tick(lws_sorted_usec_list_t *sul)
{
	int64_t		now = mono_us();
	int			ph = atomic_load(&shm->phase);
	int			n = my_hi - my_lo;
	static int64_t last_ack_us, run_start_us;
	static int	last_ph = PH_CONNECT;

	(void) sul;
	/* Initial ramp at this process's share of --connect-rate. */
	if (launched < n && ph == PH_CONNECT)
	{
		double		per_proc = (double) opt.connect_rate / opt.procs;
		int64_t		due = (int64_t) ((double) (now - proc_start_us) / 1e6 * per_proc) + 1;

		while (launched < due && launched < n && inflight < opt.max_inflight)
		{
			struct client *c = &clients[launched];

			if (c->state == C_IDLE && !c->reconnect_at_us)
				client_connect(c);
			else
				launched++;
		}
	}
	if (reconnect_pending)
	{
		reconnect_pending = 0;
		for (int i = 0; i < n; i++)
		{
			struct client *c = &clients[i];

			if (c->state != C_IDLE || !c->reconnect_at_us)
				continue;
			if (c->reconnect_at_us <= now && inflight < opt.max_inflight)
			{
				c->reconnect_at_us = 0;
				client_connect(c);
			}
			else
				reconnect_pending++;
		}
	}
	if (ph == PH_RUN && last_ph != PH_RUN)
	{
		run_start_us = now;
		if (opt.rate <= 0)
			for (int i = 0; i < nsenders; i++)
			{
				struct client *c = &clients[sender_list[i]];

				if (c->state == C_READY)
					while (c->npend < opt.window)
						client_new_send(c);
			}
	}
	last_ph = ph;
	/* Open loop: this process's share of --rate, round robin over senders. */
	if (ph == PH_RUN && opt.rate > 0 && nsenders)
	{
		double		per_proc = opt.rate * nsenders / (double) total_senders;
		int64_t		due = (int64_t) ((double) (now - run_start_us) / 1e6 * per_proc);
		int			guard = 0;

		while (sends_done < due && guard < 100000)
		{
			struct client *c = &clients[sender_list[send_cursor]];

			send_cursor = (send_cursor + 1) % nsenders;
			sends_done++;
			guard++;
			if (c->state == C_READY)
				client_new_send(c);
		}
	}
	/* Batched acks. */
	if (opt.ack_interval_ms > 0 && ph >= PH_RUN && now - last_ack_us >= opt.ack_interval_ms * 1000)
	{
		last_ack_us = now;
		for (int i = 0; i < n; i++)
			if (clients[i].state == C_READY)
				client_send_ack(&clients[i]);
	}
	/*
	 * lws 4.1's default loop poll()s every descriptor on each wake-up, so
	 * tick every millisecond only while pacing open-loop sends, every 10 ms
	 * while connecting or acking, and every 100 ms in an idle hold.
	 */
	if (ph != PH_REPORT)
	{
		lws_usec_t	next = 100000;

		if (ph == PH_RUN && opt.rate > 0 && nsenders)
			next = 1000;
		else if (launched < n || reconnect_pending || inflight || opt.ack_interval_ms > 0 || ph != PH_RUN)
			next = 10000;
		lws_sul_schedule(ctx, 0, &tick_sul, tick, next);
	}
}

/* Body of a child process: runs clients [lo, hi) until the report phase. */
static void
child_main(int proc, int lo, int hi)
{
	static struct ev_loop *evl;
	static void *foreign_loops[1];
	struct lws_context_creation_info info;
	int			n = hi - lo;

	my_proc = proc;
	my_lo = lo;
	my_hi = hi;
	me = &shm->ps[proc];
	rng_state ^= (uint64_t) (proc + 1) * 0x9E3779B97F4A7C15ULL ^ (uint64_t) getpid();
	lws_set_log_level(opt.verbose > 2 ? LLL_ERR | LLL_WARN | LLL_NOTICE : LLL_ERR, NULL);

	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.gid = -1;
	info.uid = -1;
	/*
	 * No info.fd_limit_per_thread: with it lws 4.1 sets
	 * max_fds_unrelated_to_ulimit and wsi_from_fd() scans the whole fd table
	 * for every event (11% of our CPU at 9,500 connections).  The ulimit
	 * (20,000) sizes the table and keeps the lookup a direct index.
	 */
	info.timeout_secs = 10;
	/*
	 * lws's poll() loop scans every socket on each wake-up, and the open
	 * loop wakes every millisecond: at 400 clients and 1,000 sends/s that
	 * was two thirds of chat-load's CPU (90% of a core), so the load
	 * generator's own lag entered the measured tail.  On libev (epoll) a
	 * wake-up costs what is ready.
	 */
	if (opt.evlib)
	{
		evl = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
		if (!evl)
			die("proc %d: cannot create an epoll loop", proc);
		foreign_loops[0] = evl;
		info.foreign_loops = foreign_loops;
		info.options |= LWS_SERVER_OPTION_LIBEV;
	}
	ctx = lws_create_context(&info);
	if (!ctx)
		die("proc %d: lws_create_context failed", proc);

	clients = calloc((size_t) n, sizeof(struct client));
	sender_list = calloc((size_t) n, sizeof(int));
	for (int i = 0; i < n; i++)
	{
		struct client *c = &clients[i];
		int			g = lo + i;

		c->idx = g;
		c->sender = is_sender(g);
		if (c->sender)
			sender_list[nsenders++] = i;
	}
	/* Shuffle senders so the open-loop round robin spreads over conversations. */
	for (int i = nsenders - 1; i > 0; i--)
	{
		int			j = (int) (rng() % (uint64_t) (i + 1)), t = sender_list[i];

		sender_list[i] = sender_list[j];
		sender_list[j] = t;
	}
	proc_start_us = mono_us();
	lws_sul_schedule(ctx, 0, &tick_sul, tick, 1000);
	while (atomic_load(&shm->phase) != PH_REPORT)
	{
		if (evl)
			ev_run(evl, EVRUN_ONCE);
		else if (lws_service(ctx, 0) < 0)
			break;
	}
	lws_context_destroy(ctx);
	if (evl)
		ev_loop_destroy(evl);
	_exit(0);
}

/* ---------- the parent: phases, gateway memory, report ---------- */

/* qsort: slowest delivery first. */
static int
worst_cmp(const void *a, const void *b)
{
	int64_t		x = ((const struct worst *) a)->latency_ns, y = ((const struct worst *) b)->latency_ns;

	return x < y ? 1 : x > y ? -1 : 0;
}

/*
 * Sum of one memory figure (KiB) of pid and its descendants; 0 when pid is
 * gone.  key "VmRSS:" (/proc/PID/status) counts the pages shared between
 * the gateway's workers (library code, the supervisor's heap before fork)
 * once per process; "Pss:" (/proc/PID/smaps_rollup) divides each shared
 * page among the processes that map it, so its sum is what the processes
 * cost the machine.
 */
static long
mem_tree_kib(long pid, int *nprocs, const char *key)
{
	char		path[64], line[256];
	FILE	   *f;
	long		kib = 0;
	size_t		klen = strlen(key);

	snprintf(path, sizeof(path), "/proc/%ld/%s", pid, key[0] == 'P' ? "smaps_rollup" : "status");
	if (!(f = fopen(path, "r")))
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, klen))
			kib = atol(line + klen);
	fclose(f);
	(*nprocs)++;
	/* children of every thread */
	{
		char		cmd[128];
		FILE	   *p;

		snprintf(cmd, sizeof(cmd), "cat /proc/%ld/task/*/children 2>/dev/null", pid);
		if ((p = popen(cmd, "r")))
		{
			long		child;

			while (fscanf(p, "%ld", &child) == 1)
				kib += mem_tree_kib(child, nprocs, key);
			pclose(p);
		}
	}
	return kib;
}

/* Sum of VmRSS (KiB) of pid and its descendants. */
static long
rss_tree_kib(long pid, int *nprocs)
{
	return mem_tree_kib(pid, nprocs, "VmRSS:");
}

/*
 * CPU ticks (utime + stime + cutime + cstime) of pid and its descendants:
 * a child that exits moves into its parent's c-times, so the sum stays
 * consistent across backends that come and go.
 */
static long long
cpu_tree_ticks(long pid)
{
	char		path[64], buf[1024], cmd[128];
	FILE	   *f, *p;
	long long	t = 0;
	unsigned long ut, st;
	long		cut, cst;
	char	   *q;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	if (!(f = fopen(path, "r")))
		return 0;
	if (fgets(buf, sizeof(buf), f) && (q = strrchr(buf, ')')) &&
		sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld", &ut, &st, &cut, &cst) == 4)
		t = (long long) ut + (long long) st + cut + cst;
	fclose(f);
	snprintf(cmd, sizeof(cmd), "cat /proc/%ld/task/*/children 2>/dev/null", pid);
	if ((p = popen(cmd, "r")))
	{
		long		child;

		while (fscanf(p, "%ld", &child) == 1)
			t += cpu_tree_ticks(child);
		pclose(p);
	}
	return t;
}

/* Busy and total ticks of the whole machine (/proc/stat). */
static void
machine_ticks(long long *busy, long long *total)
{
	FILE	   *f = fopen("/proc/stat", "r");
	long long	v[10] = {0};

	*busy = *total = 0;
	if (!f)
		return;
	if (fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld",
			   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8)
	{
		for (int i = 0; i < 8; i++)
			*total += v[i];
		*busy = *total - v[3] - v[4];
	}
	fclose(f);
}

static int64_t
sum_field(size_t offset)
{
	int64_t		s = 0;

	for (int i = 0; i < opt.procs; i++)
		s += *(int64_t *) ((char *) &shm->ps[i] + offset);
	return s;
}
#define SUM(field) sum_field(offsetof(struct proc_stats, field))

static pid_t children[LOAD_MAX_PROCS];

static void
kill_children(void)
{
	for (int i = 0; i < opt.procs; i++)
		if (children[i] > 0)
			kill(children[i], SIGKILL);
}

static void
on_alarm(int sig)
{
	(void) sig;
	kill_children();
	_exit(3);
}

static void
on_term(int sig)
{
	(void) sig;
	atomic_store(&shm->phase, PH_REPORT);
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: chat-load --dsn DSN --url ws://127.0.0.1:PORT/ws --scenario idle|direct|group|storm\n"
			"  [--clients N] [--procs P] [--source-ips 127.0.0.1-127.0.0.8|N] [--connect-rate R]\n"
			"  [--rate MSGS_PER_S (0: closed loop)] [--window W] [--group-size G] [--duration S]\n"
			"  [--token-secret-file F] [--gateway-pid PID] [--restart-cmd CMD] [--restart-at S]\n"
			"  [--ack-interval MS] [--no-sync] [--max-inflight N per process] [--drain S] [--pg-pid POSTMASTER]\n"
			"  [--devices-per-user D] [--user-base ID] [--label NAME] [--json] [-v]\n"
			"  [--trace]  per-hop latency (the gateway must run with --trace-latency 1)\n"
			"  [--event-lib ev|poll]  each process's loop: libev on epoll (default) or lws's poll()\n");
	exit(2);
}

static void
parse_url(const char *url)
{
	const char *p;
	char		host[64];

	if (strncmp(url, "ws://", 5))
		die("--url must be ws://HOST:PORT/PATH");
	p = url + 5;
	if (sscanf(p, "%63[^:/]:%d", host, &opt.port) != 2)
		die("--url needs host and port");
	snprintf(opt.host, sizeof(opt.host), "%s", host);
	p = strchr(p, '/');
	snprintf(opt.path, sizeof(opt.path), "%s", p ? p : "/ws");
	if (strcmp(opt.host, "localhost"))
	{
		struct in_addr a;

		if (inet_pton(AF_INET, opt.host, &a) != 1 || (ntohl(a.s_addr) >> 24) != 127)
			die("--url: only loopback targets are allowed");
	}
	else
		snprintf(opt.host, sizeof(opt.host), "127.0.0.1");
	dst_port_be = htons((uint16_t) opt.port);
}

/* Counts from the database for the loss check: per client, what it should have. */
static void
check_database(int64_t *expected_total, int64_t *stored_total, int64_t *db_dups, int64_t *lost, int64_t *dup_deliv)
{
	PGconn	   *conn = PQconnectdb(opt.dsn);
	PGresult   *res;
	char		a[32], b[32];
	const char *p[2];
	int64_t		lo_conv = INT64_MAX, hi_conv = 0;

	*expected_total = *stored_total = *db_dups = *lost = *dup_deliv = 0;
	if (PQstatus(conn) != CONNECTION_OK)
		die("cannot connect for the final check: %s", PQerrorMessage(conn));
	for (int k = 0; k < opt.clients; k++)
		if (conv_ids[k])
		{
			if (conv_ids[k] < lo_conv)
				lo_conv = conv_ids[k];
			if (conv_ids[k] > hi_conv)
				hi_conv = conv_ids[k];
		}
	if (!hi_conv)
	{
		PQfinish(conn);
		return;
	}
	snprintf(a, sizeof(a), "%" PRId64, lo_conv);
	snprintf(b, sizeof(b), "%" PRId64, hi_conv);
	p[0] = a;
	p[1] = b;
	/* Bench messages per (conversation, sender); the body marks them. */
	res = exec_ok(conn,
				  "SELECT conversation_id, sender_id, count(*), count(DISTINCT client_msg_id), sender_device"
				  " FROM chat.messages WHERE conversation_id BETWEEN $1::bigint AND $2::bigint"
				  " AND kind = 'text' AND body LIKE 't% bench' GROUP BY 1, 2, 5 ORDER BY 1, 2, 5", 2, p);
	{
		/* per conversation: total bench messages; per sender: own count */
		int			rows = PQntuples(res);
		int64_t    *rc = malloc(sizeof(int64_t) * (size_t) (rows + 1));
		int64_t    *rs = malloc(sizeof(int64_t) * (size_t) (rows + 1));
		int64_t    *rn = malloc(sizeof(int64_t) * (size_t) (rows + 1));
		int64_t    *rd = malloc(sizeof(int64_t) * (size_t) (rows + 1));

		for (int i = 0; i < rows; i++)
		{
			rc[i] = strtoll(PQgetvalue(res, i, 0), NULL, 10);
			rs[i] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
			rn[i] = strtoll(PQgetvalue(res, i, 2), NULL, 10);
			rd[i] = strtoll(PQgetvalue(res, i, 4), NULL, 10);
			*stored_total += rn[i];
			*db_dups += rn[i] - strtoll(PQgetvalue(res, i, 3), NULL, 10);
		}
		for (int k = 0; k < opt.clients; k++)
		{
			int64_t		want = 0;
			int			lo = 0, hi = rows;

			if (!conv_ids[k])
				continue;
			/* rows are sorted by conversation: binary search its first row */
			while (lo < hi)
			{
				int			mid = (lo + hi) / 2;

				if (rc[mid] < conv_ids[k])
					lo = mid + 1;
				else
					hi = mid;
			}
			for (int i = lo; i < rows && rc[i] == conv_ids[k]; i++)
				if (rs[i] != user_ids[k] || rd[i] != device_ids[k])
					want += rn[i];
			*expected_total += want;
			if (results[k].got < want)
				*lost += want - results[k].got;
			*dup_deliv += results[k].dups;
		}
		free(rc);
		free(rs);
		free(rn);
		free(rd);
	}
	PQclear(res);
	PQfinish(conn);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"dsn", 1, 0, 'd'}, {"url", 1, 0, 'u'}, {"clients", 1, 0, 'c'}, {"procs", 1, 0, 'P'},
		{"source-ips", 1, 0, 'S'}, {"connect-rate", 1, 0, 'C'}, {"scenario", 1, 0, 's'},
		{"rate", 1, 0, 'r'}, {"window", 1, 0, 'W'}, {"group-size", 1, 0, 'g'},
		{"duration", 1, 0, 't'}, {"token-secret-file", 1, 0, 'k'}, {"gateway-pid", 1, 0, 'p'},
		{"restart-cmd", 1, 0, 'R'}, {"restart-at", 1, 0, 'A'}, {"ack-interval", 1, 0, 'a'},
		{"no-sync", 0, 0, 'N'}, {"user-base", 1, 0, 'b'}, {"json", 0, 0, 'j'},
		{"label", 1, 0, 'l'}, {"max-inflight", 1, 0, 'I'}, {"pg-pid", 1, 0, 'G'},
		{"devices-per-user", 1, 0, 'E'}, {"drain", 1, 0, 'D'}, {"verbose", 0, 0, 'v'}, {"trace", 0, 0, 'T'}, {"event-lib", 1, 0, 'L'}, {"help", 0, 0, 'h'},
		{0, 0, 0, 0}
	};
	int			ch, n;
	int64_t		t_connect_start, t_all_ready = 0, t_go, t_stop, t_end;
	long		rss0 = 0, rss1 = 0, rss_peak = 0, pss0 = 0, pss1 = 0;
	int			gw_procs0 = 0, gw_procs1 = 0;
	double		storm_reconnect_s = -1, storm_synced_s = -1;
	int64_t		ready_at_restart = 0, ready_at_go = 0, rss_conns = 0;
	long long	cpu_gw0 = 0, cpu_pg0 = 0, cpu_me0 = 0, cpu_busy0 = 0, cpu_total0 = 0;
	double		cpu_gw = -1, cpu_pg = -1, cpu_me = -1, cpu_machine = -1;
	const char *last_error = "";
	int			restart_rc = -1;

	opt.clients = 100;
	opt.connect_rate = 2000;
	opt.evlib = 1;
	opt.group_size = 256;
	opt.duration = 10;
	opt.window = 4;
	opt.rate = -1;
	opt.sync_on_connect = 1;
	opt.ack_interval_ms = -1;
	opt.drain_max = 30;
	opt.max_inflight = 1000;
	opt.devices = 1;
	opt.restart_at = -1;
	opt.scenario = SC_DIRECT;
	snprintf(opt.label, sizeof(opt.label), "gateway");
	while ((ch = getopt_long(argc, argv, "vh", longopts, NULL)) != -1)
	{
		switch (ch)
		{
			case 'd': opt.dsn = optarg; break;
			case 'u': opt.url = optarg; break;
			case 'c': opt.clients = atoi(optarg); break;
			case 'P': opt.procs = atoi(optarg); break;
			case 'S': opt.source_ips_arg = optarg; break;
			case 'C': opt.connect_rate = atoi(optarg); break;
			case 's':
				for (n = 0; n < 4; n++)
					if (!strcmp(optarg, scenario_names[n]))
						break;
				if (n == 4)
					die("unknown scenario %s", optarg);
				opt.scenario = (enum scenario) n;
				break;
			case 'r': opt.rate = atof(optarg); break;
			case 'W': opt.window = atoi(optarg); break;
			case 'g': opt.group_size = atoi(optarg); break;
			case 't': opt.duration = atoi(optarg); break;
			case 'k': opt.secret_file = optarg; break;
			case 'p': opt.gateway_pid = atol(optarg); break;
			case 'R': opt.restart_cmd = optarg; break;
			case 'A': opt.restart_at = atof(optarg); break;
			case 'a': opt.ack_interval_ms = atoi(optarg); break;
			case 'N': opt.sync_on_connect = 0; break;
			case 'b': opt.user_base = strtoll(optarg, NULL, 10); break;
			case 'j': opt.json = 1; break;
			case 'l': snprintf(opt.label, sizeof(opt.label), "%s", optarg); break;
			case 'D': opt.drain_max = atoi(optarg); break;
			case 'I': opt.max_inflight = atoi(optarg); break;
			case 'G': opt.pg_pid = atol(optarg); break;
			case 'E': opt.devices = atoi(optarg); break;
			case 'v': opt.verbose++; break;
			case 'T': opt.trace = 1; break;
			case 'L':
				if (strcmp(optarg, "ev") && strcmp(optarg, "poll"))
					die("--event-lib: ev or poll, not %s", optarg);
				opt.evlib = !strcmp(optarg, "ev");
				break;
			default: usage();
		}
	}
	if (!opt.dsn || !opt.url)
		usage();
	parse_url(opt.url);
	parse_source_ips(opt.source_ips_arg);
	if (opt.clients < 1 || opt.clients > LOAD_MAX_CLIENTS)
		die("--clients must be 1..%d", LOAD_MAX_CLIENTS);
	if (opt.duration < 1 || opt.duration > LOAD_MAX_DURATION)
		die("--duration must be 1..%d s", LOAD_MAX_DURATION);
	if (opt.group_size < 2)
		die("--group-size must be at least 2");
	if (opt.devices < 1 || opt.devices > 16)
		die("--devices-per-user must be 1..16");
	if (opt.connect_rate < 1)
		die("--connect-rate must be positive");
	if (!opt.procs)
		opt.procs = (opt.clients + 14999) / 15000;
	if (opt.procs < 1 || opt.procs > LOAD_MAX_PROCS || (opt.clients + opt.procs - 1) / opt.procs > LOAD_MAX_PER_PROC)
		die("--procs: each process holds at most %d clients, at most %d processes", LOAD_MAX_PER_PROC, LOAD_MAX_PROCS);
	if (opt.rate < 0)
		opt.rate = opt.scenario == SC_DIRECT ? 2000 : opt.scenario == SC_STORM ? 200 : 0;
	if (opt.ack_interval_ms < 0)
		opt.ack_interval_ms = opt.scenario == SC_STORM ? 1000 : 0;
	if (opt.scenario == SC_STORM && opt.restart_at < 0)
		opt.restart_at = opt.duration / 3.0;
	if (opt.scenario == SC_STORM && !opt.restart_cmd && !opt.gateway_pid)
		die("storm needs --restart-cmd (or --gateway-pid to send SIGTERM)");
	if (opt.clients > 28000 && !src_count)
		fprintf(stderr, "chat-load: warning: %d clients from one source address may exhaust ports; use --source-ips\n",
				opt.clients);
	if (!opt.user_base)
		opt.user_base = ((int64_t) time(NULL) % 1000000) * 1000000 + (int64_t) (getpid() % 100) * 10000000000LL;

	setup_database();
	for (int k = 0; k < opt.clients; k++)
		total_senders += is_sender(k);

	shm = mmap(NULL, sizeof(struct shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	results = mmap(NULL, sizeof(struct client_result) * (size_t) opt.clients, PROT_READ | PROT_WRITE,
				   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED || results == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	memset(shm, 0, sizeof(*shm));

	if (opt.gateway_pid)
	{
		rss0 = rss_tree_kib(opt.gateway_pid, &gw_procs0);
		{
			int			np = 0;

			pss0 = mem_tree_kib(opt.gateway_pid, &np, "Pss:");
		}
		if (!rss0)
			fprintf(stderr, "chat-load: warning: no process %ld\n", opt.gateway_pid);
	}

	signal(SIGALRM, on_alarm);
	signal(SIGINT, on_term);
	signal(SIGTERM, on_term);
	alarm((unsigned) (opt.duration + opt.drain_max + 300 + opt.clients / opt.connect_rate * 2 + opt.clients / 400));

	t_connect_start = mono_us();
	for (int i = 0; i < opt.procs; i++)
	{
		int			lo = (int) ((int64_t) opt.clients * i / opt.procs);
		int			hi = (int) ((int64_t) opt.clients * (i + 1) / opt.procs);
		pid_t		pid = fork();

		if (pid < 0)
			die("fork: %s", strerror(errno));
		if (pid == 0)
		{
			signal(SIGALRM, SIG_DFL);
			signal(SIGINT, SIG_IGN);
			signal(SIGTERM, SIG_DFL);
			child_main(i, lo, hi);
		}
		children[i] = pid;
	}

	/* Connect phase: until every client is ready, or the ramp plus 30 s. */
	{
		int64_t		limit = t_connect_start + (int64_t) ((double) opt.clients / opt.connect_rate * 2e6) + 60000000 +
			(int64_t) opt.clients * 2500;	/* and 400 conn/s at worst */
		int64_t		last_print = 0;

		while (atomic_load(&shm->phase) == PH_CONNECT)
		{
			int64_t		now = mono_us(), ready = SUM(ready);

			if (ready >= opt.clients)
			{
				t_all_ready = now;
				break;
			}
			if (now > limit)
			{
				fprintf(stderr, "chat-load: only %" PRId64 " of %d clients ready after %.1f s\n",
						ready, opt.clients, (double) (now - t_connect_start) / 1e6);
				break;
			}
			if (opt.verbose && now - last_print > 2000000)
			{
				last_print = now;
				fprintf(stderr, "chat-load: %" PRId64 " launched, %" PRId64 " open, %" PRId64 " ready\n", SUM(connect_launched), SUM(opened), ready);
			}
			usleep(5000);
		}
	}
	if (opt.gateway_pid && opt.scenario == SC_IDLE)
	{
		usleep(1000000);		/* let the gateway settle its buffers */
		rss1 = rss_tree_kib(opt.gateway_pid, &gw_procs1);
		{
			int			np = 0;

			pss1 = mem_tree_kib(opt.gateway_pid, &np, "Pss:");
		}
		rss_conns = SUM(opened);
		rss_peak = rss1;
	}
	t_go = mono_us();
	ready_at_go = SUM(ready);
	cpu_gw0 = opt.gateway_pid ? cpu_tree_ticks(opt.gateway_pid) : 0;
	cpu_pg0 = opt.pg_pid ? cpu_tree_ticks(opt.pg_pid) : 0;
	cpu_me0 = cpu_tree_ticks(getpid());
	machine_ticks(&cpu_busy0, &cpu_total0);
	atomic_store(&shm->go_real_ns, real_ns());
	atomic_store(&shm->go_us, t_go);
	if (atomic_load(&shm->phase) == PH_CONNECT)
		atomic_store(&shm->phase, PH_RUN);

	/* Run phase. */
	{
		int64_t		end = t_go + (int64_t) opt.duration * 1000000;
		int64_t		restart_t = opt.scenario == SC_STORM ? t_go + (int64_t) (opt.restart_at * 1e6) : INT64_MAX;
		int64_t		t_restart = 0;

		while (atomic_load(&shm->phase) == PH_RUN)
		{
			int64_t		now = mono_us();

			if (now >= restart_t && !t_restart)
			{
				ready_at_restart = SUM(ready);
				t_restart = mono_us();
				atomic_store(&shm->restart_us, t_restart);
				if (opt.restart_cmd)
					restart_rc = system(opt.restart_cmd);
				else
					restart_rc = kill((pid_t) opt.gateway_pid, SIGTERM);
			}
			if (t_restart && storm_synced_s < 0)
			{
				int64_t		reconn = SUM(reconnected), resynced = SUM(resynced);

				if (reconn >= ready_at_restart && storm_reconnect_s < 0)
					storm_reconnect_s = (double) (mono_us() - t_restart) / 1e6;
				if (resynced >= ready_at_restart)
				{
					storm_synced_s = (double) (mono_us() - t_restart) / 1e6;
					if (storm_reconnect_s < 0)
						storm_reconnect_s = storm_synced_s;
				}
				/* a storm run lasts until every client is back, up to 60 s more */
				if (now >= end && now < end + 60000000)
				{
					usleep(2000);
					continue;
				}
			}
			if (now >= end)
				break;
			if (opt.gateway_pid && opt.scenario == SC_IDLE)
			{
				static int64_t last_sample;

				if (now - last_sample > 1000000)
				{
					int			np = 0;
					long		r = rss_tree_kib(opt.gateway_pid, &np);

					last_sample = now;
					if (r > rss_peak)
						rss_peak = r;
				}
			}
			usleep(2000);
		}
	}
	t_stop = mono_us();
	atomic_store(&shm->stop_us, t_stop);
	{
		long long	busy1, total1;
		double		hz = (double) sysconf(_SC_CLK_TCK), secs = (double) (t_stop - t_go) / 1e6;

		/* a storm restarts the gateway: its CPU is only known before */
		if (opt.gateway_pid && opt.scenario != SC_STORM)
			cpu_gw = (double) (cpu_tree_ticks(opt.gateway_pid) - cpu_gw0) / hz / secs * 100;
		if (opt.pg_pid)
			cpu_pg = (double) (cpu_tree_ticks(opt.pg_pid) - cpu_pg0) / hz / secs * 100;
		cpu_me = (double) (cpu_tree_ticks(getpid()) - cpu_me0) / hz / secs * 100;
		machine_ticks(&busy1, &total1);
		if (total1 > cpu_total0)
			cpu_machine = (double) (busy1 - cpu_busy0) / (double) (total1 - cpu_total0) * 100 * sysconf(_SC_NPROCESSORS_ONLN);
	}
	if (atomic_load(&shm->phase) == PH_RUN)
		atomic_store(&shm->phase, PH_DRAIN);

	/* Drain: until no delivery for 1 s and no send outstanding, or --drain s. */
	if (opt.scenario != SC_IDLE)
	{
		int64_t		limit = t_stop + (int64_t) opt.drain_max * 1000000;

		while (mono_us() < limit && atomic_load(&shm->phase) == PH_DRAIN)
		{
			int64_t		last = 0;

			for (int i = 0; i < opt.procs; i++)
				if (shm->ps[i].last_delivery_us > last)
					last = shm->ps[i].last_delivery_us;
			if (SUM(outstanding) == 0 && mono_us() - (last > t_stop ? last : t_stop) > 1000000)
				break;
			usleep(20000);
		}
	}
	t_end = mono_us();
	atomic_store(&shm->phase, PH_REPORT);
	for (int i = 0; i < opt.procs; i++)
	{
		int			st;
		int			waited = 0;

		while (waitpid(children[i], &st, WNOHANG) == 0 && waited < 500)
		{
			usleep(10000);
			waited++;
		}
		if (waited >= 500)
			kill(children[i], SIGKILL), waitpid(children[i], &st, 0);
		children[i] = 0;
	}
	alarm(0);

	/* ---- report ---- */
	{
		static uint64_t hist[LOAD_HBUCKETS], rtt[LOAD_HBUCKETS], hop[LOAD_NHOPS][LOAD_HBUCKETS];
		int64_t		hop_neg[LOAD_NHOPS] = {0};
		int64_t		closes[LOAD_NCODES] = {0};
		int64_t		expected = 0, stored = 0, db_dups = 0, lost = 0, dup_deliv = 0;
		double		run_s = (double) (t_stop - t_go) / 1e6;
		double		connect_s = t_all_ready ? (double) (t_all_ready - t_connect_start) / 1e6 : -1;
		int64_t		first_open = INT64_MAX, last_open = 0;
		int64_t		sends = SUM(sends), ok = SUM(sends_ok), okw = SUM(sends_ok_in_window);
		int64_t		deliv = SUM(deliveries), delivw = SUM(deliveries_in_window);
		int64_t		outstanding = SUM(outstanding);
		double		connect_rate;
		double		q[6] = {0.5, 0.9, 0.99, 0.999, 1.0, 0}, lat[6], rt[6];
		static const char *const qn[5] = {"p50", "p90", "p99", "p99_9", "max"};
		double		rss_per_conn = -1, rss_total_per_conn = -1, pss_per_conn = -1, pss_total_per_conn = -1;
		int			first;
		static struct
		{
			uint64_t	sends_ok, deliveries;
			double		p50, p99, max;	/* ms */
		}			tl[TL_SECS];
		int			tl_n;
		static struct worst worst[LOAD_NWORST];
		char		tbuf[40], tbuf2[40];

		for (int i = 0; i < opt.procs; i++)
		{
			for (int j = 0; j < LOAD_HBUCKETS; j++)
			{
				hist[j] += shm->ps[i].hist[j];
				rtt[j] += shm->ps[i].rtt[j];
			}
			for (int h = 0; opt.trace && h < LOAD_NHOPS; h++)
			{
				for (int j = 0; j < LOAD_HBUCKETS; j++)
					hop[h][j] += shm->ps[i].hop[h][j];
				hop_neg[h] += shm->ps[i].hop_negative[h];
			}
			for (int j = 0; j < LOAD_NCODES; j++)
				closes[j] += shm->ps[i].closes[j];
			if (shm->ps[i].first_open_us && shm->ps[i].first_open_us < first_open)
				first_open = shm->ps[i].first_open_us;
			if (shm->ps[i].last_open_us > last_open)
				last_open = shm->ps[i].last_open_us;
		}
		connect_rate = connect_s > 0 ? (double) ready_at_go / connect_s : 0;
		/* per-second timeline and the slowest deliveries over all processes */
		{
			static uint64_t h[TL_BUCKETS];

			tl_n = 0;
			for (int sec = 0; sec < TL_SECS; sec++)
			{
				uint64_t	tot = 0, okn = 0;

				memset(h, 0, sizeof(h));
				for (int i = 0; i < opt.procs; i++)
				{
					okn += shm->ps[i].tl_sends_ok[sec];
					for (int j = 0; j < TL_BUCKETS; j++)
					{
						h[j] += shm->ps[i].tl_hist[sec][j];
						tot += shm->ps[i].tl_hist[sec][j];
					}
				}
				tl[sec].sends_ok = okn;
				tl[sec].deliveries = tot;
				tl[sec].p50 = tl_quantile(h, tot, 0.5) / 1e3;
				tl[sec].p99 = tl_quantile(h, tot, 0.99) / 1e3;
				tl[sec].max = tl_quantile(h, tot, 1.0) / 1e3;
				if (tot || okn)
					tl_n = sec + 1;
			}
			for (int i = 0; i < opt.procs; i++)
				for (int k = 0; k < LOAD_NWORST; k++)
				{
					struct worst *x = &shm->ps[i].worst[k];
					int			w = 0;

					if (!x->latency_ns)
						continue;
					for (int m = 1; m < LOAD_NWORST; m++)
						if (worst[m].latency_ns < worst[w].latency_ns)
							w = m;
					if (x->latency_ns > worst[w].latency_ns)
						worst[w] = *x;
				}
			qsort(worst, LOAD_NWORST, sizeof(worst[0]), worst_cmp);
		}
		for (int i = 0; i < 5; i++)
		{
			lat[i] = hist_quantile(hist, q[i]) / 1e6;
			rt[i] = hist_quantile(rtt, q[i]) / 1e6;
		}
		if (opt.scenario != SC_IDLE)
			check_database(&expected, &stored, &db_dups, &lost, &dup_deliv);
		if (rss1 && rss_conns)
		{
			rss_per_conn = (double) (rss1 - rss0) * 1024.0 / (double) rss_conns;
			rss_total_per_conn = (double) rss1 * 1024.0 / (double) rss_conns;
			if (pss1)
			{
				pss_per_conn = (double) (pss1 - pss0) * 1024.0 / (double) rss_conns;
				pss_total_per_conn = (double) pss1 * 1024.0 / (double) rss_conns;
			}
		}
		for (int i = 0; i < opt.procs; i++)
			if (shm->ps[i].last_error[0])
				last_error = shm->ps[i].last_error;

		if (!opt.json)
		{
			printf("chat-load %s: %s, %d clients in %d procs, %s, %.0f s run\n", opt.label,
				   scenario_names[opt.scenario], opt.clients, opt.procs, opt.url, run_s);
			printf("  connect     %" PRId64 " ready, all ready in %.2f s (%.0f conn/s), %" PRId64 " connect errors in the ramp, %" PRId64 " in all\n",
				   ready_at_go, connect_s, connect_rate, SUM(initial_connect_errors), SUM(connect_errors));
			if (opt.scenario != SC_IDLE)
			{
				printf("  sends       %" PRId64 " sent, %" PRId64 " ok (%.0f/s), %" PRId64 " errors, %" PRId64 " unanswered, %" PRId64 " duplicate results\n",
					   sends, ok, okw / run_s, SUM(send_errors), outstanding, SUM(duplicate_results));
				printf("  deliveries  %" PRId64 " (%.0f/s in the run window)\n", deliv, delivw / run_s);
				printf("  latency ms  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (%" PRIu64 " samples)\n",
					   lat[0], lat[1], lat[2], lat[3], lat[4], hist_total(hist));
				printf("  send rtt ms p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
					   rt[0], rt[1], rt[2], rt[3], rt[4]);
				printf("  check       %" PRId64 " stored, %" PRId64 " expected deliveries, %" PRId64 " lost, %" PRId64 " duplicate deliveries dropped, %" PRId64 " duplicates in the table\n",
					   stored, expected, lost, dup_deliv, db_dups);
			}
			if (opt.scenario == SC_STORM)
				printf("  storm       restart rc %d; %" PRId64 " clients back in %.2f s, synced in %.2f s\n",
					   restart_rc, ready_at_restart, storm_reconnect_s, storm_synced_s);
			if (rss1)
				printf("  gateway rss %ld KiB -> %ld KiB (peak %ld) over %d procs with %" PRId64 " open: %.0f B/conn growth, %.0f B/conn total\n",
					   rss0, rss1, rss_peak, gw_procs1, rss_conns, rss_per_conn, rss_total_per_conn);
			if (pss1)
				printf("  gateway pss %ld KiB -> %ld KiB: %.0f B/conn growth, %.0f B/conn total\n",
					   pss0, pss1, pss_per_conn, pss_total_per_conn);
			if (last_error[0])
				printf("  last connect error: %s\n", last_error);
			for (int h = 0; opt.trace && h < LOAD_NHOPS; h++)
				printf("  hop %-40s p50 %8.3f  p99 %8.3f  max %8.3f ms  (%" PRIu64 " samples, %" PRId64 " negative)\n",
					   hop_names[h], hist_quantile(hop[h], 0.5) / 1e6, hist_quantile(hop[h], 0.99) / 1e6,
					   hist_quantile(hop[h], 1.0) / 1e6, hist_total(hop[h]), hop_neg[h]);
			if (opt.scenario != SC_IDLE && tl_n)
			{
				printf("  per second  (from %s, by send time) sends ok / deliveries / p99 ms / max ms:\n",
					   fmt_real(atomic_load(&shm->go_real_ns), tbuf, sizeof(tbuf)));
				for (int sec = 0; sec < tl_n; sec++)
					printf("    %3d  %6" PRIu64 " %6" PRIu64 "  p50 %8.3f  p99 %8.3f  max %8.3f\n", sec,
						   tl[sec].sends_ok, tl[sec].deliveries, tl[sec].p50, tl[sec].p99, tl[sec].max);
				printf("  slowest     ");
				for (int k = 0; k < LOAD_NWORST && worst[k].latency_ns; k++)
					printf("%s%.1f ms sent %s", k ? ", " : "", worst[k].latency_ns / 1e6,
						   fmt_real(worst[k].sent_ns, tbuf, sizeof(tbuf)));
				printf("\n");
			}
			printf("  cpu %%       gateway %.0f, postgres %.0f, chat-load %.0f, machine %.0f of %ld (the rest: other processes)\n",
				   cpu_gw, cpu_pg, cpu_me, cpu_machine, sysconf(_SC_NPROCESSORS_ONLN) * 100);
			printf("  closes     ");
			for (int j = 0; j < LOAD_NCODES; j++)
			{
				if (!closes[j])
					continue;
				if (close_codes[j] == -1)
					printf(" connect_error:%" PRId64, closes[j]);
				else if (close_codes[j] == 0)
					printf(" other:%" PRId64, closes[j]);
				else if (close_codes[j] == 1002)
					printf(" 1002/1012-1015:%" PRId64, closes[j]);
				else
					printf(" %d:%" PRId64, close_codes[j], closes[j]);
			}
			printf("\n");
		}
		else
		{
			printf("{\"label\":\"%s\",\"scenario\":\"%s\",\"clients\":%d,\"procs\":%d,\"url\":\"%s\",\"duration_s\":%.3f,",
				   opt.label, scenario_names[opt.scenario], opt.clients, opt.procs, opt.url, run_s);
			printf("\"rate_target\":%.1f,\"group_size\":%d,\"window\":%d,", opt.rate, opt.group_size, opt.window);
			printf("\"connect\":{\"ready\":%" PRId64 ",\"ready_s\":%.3f,\"rate\":%.1f,\"ramp_errors\":%" PRId64 ",\"errors\":%" PRId64 "},",
				   ready_at_go, connect_s, connect_rate, SUM(initial_connect_errors), SUM(connect_errors));
			printf("\"sends\":%" PRId64 ",\"sends_ok\":%" PRId64 ",\"sends_per_s\":%.1f,\"send_errors\":%" PRId64 ",\"unanswered\":%" PRId64 ",\"duplicate_results\":%" PRId64 ",",
				   sends, ok, okw / run_s, SUM(send_errors), outstanding, SUM(duplicate_results));
			printf("\"deliveries\":%" PRId64 ",\"deliveries_per_s\":%.1f,", deliv, delivw / run_s);
			printf("\"latency_ms\":{");
			for (int i = 0; i < 5; i++)
				printf("%s\"%s\":%.4f", i ? "," : "", qn[i], lat[i]);
			printf(",\"samples\":%" PRIu64 "},\"send_rtt_ms\":{", hist_total(hist));
			for (int i = 0; i < 5; i++)
				printf("%s\"%s\":%.4f", i ? "," : "", qn[i], rt[i]);
			printf("},\"check\":{\"stored\":%" PRId64 ",\"expected\":%" PRId64 ",\"lost\":%" PRId64 ",\"duplicate_deliveries\":%" PRId64 ",\"table_duplicates\":%" PRId64 "},",
				   stored, expected, lost, dup_deliv, db_dups);
			printf("\"storm\":{\"restart_rc\":%d,\"clients\":%" PRId64 ",\"reconnected_s\":%.3f,\"synced_s\":%.3f},",
				   restart_rc, ready_at_restart, storm_reconnect_s, storm_synced_s);
			printf("\"last_connect_error\":\"%s\",", last_error);
			if (opt.trace)
			{
				printf("\"hops\":[");
				for (int h = 0; h < LOAD_NHOPS; h++)
					printf("%s{\"hop\":\"%s\",\"samples\":%" PRIu64 ",\"negative\":%" PRId64 ",\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"max_ms\":%.4f}",
						   h ? "," : "", hop_names[h], hist_total(hop[h]), hop_neg[h], hist_quantile(hop[h], 0.5) / 1e6,
						   hist_quantile(hop[h], 0.99) / 1e6, hist_quantile(hop[h], 1.0) / 1e6);
				printf("],");
			}
			printf("\"timeline\":{\"t0\":\"%s\",\"by\":\"send time\",\"seconds\":[",
				   fmt_real(atomic_load(&shm->go_real_ns), tbuf, sizeof(tbuf)));
			for (int sec = 0; sec < tl_n; sec++)
				printf("%s{\"s\":%d,\"sends_ok\":%" PRIu64 ",\"deliveries\":%" PRIu64 ",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}",
					   sec ? "," : "", sec, tl[sec].sends_ok, tl[sec].deliveries, tl[sec].p50, tl[sec].p99, tl[sec].max);
			printf("]},\"worst\":[");
			for (int k = 0; k < LOAD_NWORST && worst[k].latency_ns; k++)
				printf("%s{\"latency_ms\":%.3f,\"sent\":\"%s\",\"received\":\"%s\",\"conversation\":%" PRId64 ",\"seq\":%" PRId64 "}",
					   k ? "," : "", worst[k].latency_ns / 1e6, fmt_real(worst[k].sent_ns, tbuf, sizeof(tbuf)),
					   fmt_real(worst[k].sent_ns + worst[k].latency_ns, tbuf2, sizeof(tbuf2)), worst[k].conv, worst[k].seq);
			printf("],");
			printf("\"cpu_pct\":{\"gateway\":%.1f,\"postgres\":%.1f,\"chat_load\":%.1f,\"machine\":%.1f,\"machine_max\":%ld},",
				   cpu_gw, cpu_pg, cpu_me, cpu_machine, sysconf(_SC_NPROCESSORS_ONLN) * 100);
			printf("\"gateway_rss\":{\"conns\":%" PRId64 ",\"procs\":%d,\"before_kib\":%ld,\"after_kib\":%ld,\"peak_kib\":%ld,\"per_conn_growth_b\":%.1f,\"per_conn_total_b\":%.1f,"
				   "\"pss_before_kib\":%ld,\"pss_after_kib\":%ld,\"pss_per_conn_growth_b\":%.1f,\"pss_per_conn_total_b\":%.1f},",
				   rss_conns, gw_procs1, rss0, rss1, rss_peak, rss_per_conn, rss_total_per_conn,
				   pss0, pss1, pss_per_conn, pss_total_per_conn);
			printf("\"closes\":{");
			first = 1;
			for (int j = 0; j < LOAD_NCODES; j++)
			{
				if (!closes[j])
					continue;
				if (close_codes[j] == -1)
					printf("%s\"connect_error\":%" PRId64, first ? "" : ",", closes[j]);
				else if (close_codes[j] == 0)
					printf("%s\"other\":%" PRId64, first ? "" : ",", closes[j]);
				else if (close_codes[j] == 1002)
					printf("%s\"1002/1012-1015\":%" PRId64, first ? "" : ",", closes[j]);
				else
					printf("%s\"%d\":%" PRId64, first ? "" : ",", close_codes[j], closes[j]);
				first = 0;
			}
			printf("},\"latency_cdf\":[");
			{
				uint64_t	tot = hist_total(hist), acc = 0;

				first = 1;
				for (int j = 0; j < LOAD_HBUCKETS; j++)
				{
					if (!hist[j])
						continue;
					acc += hist[j];
					printf("%s[%.4f,%.6f]", first ? "" : ",", hist_value(j) / 1e6, (double) acc / (double) tot);
					first = 0;
				}
			}
			printf("]}\n");
		}
		(void) t_end;
		return (lost || db_dups) ? 1 : 0;
	}
}
