/* config.c: flags from the command line, CHAT_<FLAG> variables and --config files.
 *
 * Precedence: command line, then environment, then config file, then the
 * default.  Every error names the key and stops start-up (mosquitto habit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include "gateway.h"

struct config cfg;

enum { F_STR, F_INT, F_LIST };

struct flag {
	const char *name;
	int type;
	size_t offset;
	const char *def;
	long min, max;
	const char *help;
	int set_by;		/* 0 default, 1 file, 2 env, 3 command line */
};

#define S(f) F_STR, offsetof(struct config, f)
#define I(f) F_INT, offsetof(struct config, f)
#define L(f) F_LIST, offsetof(struct config, f)

static struct flag flags[] = {
	{ "listen", S(listen), "127.0.0.1:8080", 0, 0, "HOST:PORT to listen on (\":PORT\" for every interface)", 0 },
	{ "node", S(node), "gw1", 0, 0, "node name, [a-z0-9_]{1,40}; workers use <node>_<i>", 0 },
	{ "dsn", S(dsn), "", 0, 0, "libpq connection string (multi-host allowed)", 0 },
	/* Sharded (PL/Proxy, docs/scaling.md): --dsn is the proxy database. */
	{ "listen-dsn", L(listen_dsn), NULL, 0, 0, "a partition to LISTEN on (repeat once per partition; env: one per line); sharded: --dsn is the proxy", 0 },
	{ "token-secret-file", S(token_secret_file), NULL, 0, 0, "file holding the HS256 secret (= chat.token_secret)", 0 },
	{ "tls-cert", S(tls_cert), NULL, 0, 0, "PEM certificate: serve wss:// and https://", 0 },
	{ "tls-key", S(tls_key), NULL, 0, 0, "PEM private key for --tls-cert", 0 },
	{ "static", S(static_dir), NULL, 0, 0, "directory served at / (index.html by default)", 0 },
	/* media (issue 13) */
	{ "media-url", S(media_url), NULL, 0, 0, "public origin of chat-media (http(s)://host[:port]); hello announces it as media_url, against which clients resolve relative media URLs", 0 },
	{ "vapid-public-key", S(vapid_key_file), NULL, 0, 0, "PEM P-256 key (public or private) whose public half hello announces as vapid_public_key", 0 },
	{ "pool", I(pool), "4", 1, 64, "database connections for client requests", 0 },
	{ "workers", I(workers), "0", 0, 64, "N worker processes sharing the port (0: one process, no supervisor)", 0 },
	{ "auth-timeout", I(auth_timeout), "5", 1, 3600, "seconds a client has to authenticate (close 4008)", 0 },
	{ "max-frame", I(max_frame), "65536", 64, 16777216, "largest client frame in bytes (close 1009)", 0 },
	{ "max-queue", I(max_queue), "4096", 8, 1048576, "events queued per connection before close 4009", 0 },
	{ "max-queue-bytes", I(max_queue_bytes), "1048576", 1024, 1073741824, "bytes queued per connection before close 4009", 0 },
	{ "rate", I(rate), "50", 1, 100000, "requests per second per connection (53400, then 1008)", 0 },
	{ "heartbeat", I(heartbeat), "30", 1, 3600, "seconds between WebSocket pings; two missed pongs close 1001", 0 },
	{ "max-conns", I(max_conns), "19000", 1, 10000000, "connections per process", 0 },
	{ "max-unauth", I(max_unauth), "2000", 1, 10000000, "unauthenticated connections per process", 0 },
	{ "max-unauth-per-ip", I(max_unauth_per_ip), "64", 1, 10000000, "unauthenticated connections per source address (IPv6: per /64)", 0 },
	{ "max-inflight", I(max_inflight), "16", 1, 1024, "requests per connection awaiting the database (error 53400 beyond)", 0 },
	{ "request-timeout", I(request_timeout), "5", 1, 3600, "seconds a request may wait for the database (then error 08006; /healthz 503 after half of it)", 0 },
	{ "pool-queue", I(pool_queue), "1024", 1, 1000000, "requests queued per pool connection (error 53400 \"busy\" beyond)", 0 },
	{ "max-token-ttl", I(max_token_ttl), "2592000", 60, 315360000, "longest token lifetime in seconds, exp - (iat or now) (close 4001)", 0 },
	{ "metrics-listen", S(metrics_listen), NULL, 0, 0, "HOST:PORT serving /metrics and /healthz alone; /metrics then leaves --listen", 0 },
	{ "node-heartbeat", I(node_heartbeat), "5", 1, 3600, "seconds between chat.node_heartbeat calls (on a connection of their own, not the LISTEN one)", 0 },
	{ "drain-timeout", I(drain_timeout), "5", 1, 3600, "seconds SIGTERM waits for clients to close", 0 },
	{ "trace-latency", I(trace_latency), "0", 0, 1, "1: hop timestamps (\"trace\") in responses and events, for bench/chat-load --trace; 0: none, no cost", 0 },
	{ "event-lib", S(event_lib), "poll", 0, 0, "poll (lws's poll() loop) or ev (lws's libev plugin, epoll)", 0 },
	{ "log-format", S(log_format), "text", 0, 0, "text or json", 0 },
	{ "log-level", S(log_level), "info", 0, 0, "debug, info, warn or error", 0 },
	{ "log-file", S(log_file), NULL, 0, 0, "append logs to FILE (reopened on SIGHUP); default stderr", 0 },
	{ "config", S(config_file), NULL, 0, 0, "read key = value lines from FILE", 0 },
};
#define N_FLAGS (sizeof(flags) / sizeof(flags[0]))

/* Prints the usage text. */
static void
config_usage(FILE *f)
{
	fprintf(f, "usage: chat-gateway [--flag value | --flag=value]...\n\n"
		   "The WebSocket gateway of pgchat (protocol chat.v1).  Every flag can also be\n"
		   "set as CHAT_<FLAG> in the environment (dashes become underscores) or as\n"
		   "\"flag = value\" in the --config file.\n\n");
	for (size_t i = 0; i < N_FLAGS; i++) {
		char env[64], *p;
		snprintf(env, sizeof(env), "CHAT_%s", flags[i].name);
		for (p = env; *p; p++)
			*p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
		fprintf(f, "  --%-18s %s\n  %-20s env %s%s%s%s\n", flags[i].name, flags[i].help, "", env,
			flags[i].def ? ", default \"" : "", flags[i].def ? flags[i].def : "",
			flags[i].def ? "\"" : "");
	}
	fprintf(f, "  --%-18s %s\n  --%-18s %s\n", "help", "show this text", "version", "print the version");
}

/* Stops start-up with an error naming the key. */
static void __attribute__((noreturn, format(printf, 2, 3)))
config_fail(const char *key, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "chat-gateway: config error: %s: ", key);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* Finds a flag by name (len bytes, not NUL-terminated); NULL when unknown. */
static struct flag *
config_find(const char *name, size_t len)
{
	for (size_t i = 0; i < N_FLAGS; i++)
		if (strlen(flags[i].name) == len && !strncmp(flags[i].name, name, len))
			return &flags[i];
	return NULL;
}

/* Stores value into the flag unless a stronger source already set it. */
static void
config_set(struct flag *f, const char *value, int source, const char *where)
{
	char *base = (char *)&cfg;

	if (f->set_by > source)
		return;
	/* A list flag given again by the same source adds a line. */
	if (f->type == F_LIST && f->set_by == source && value) {
		char **dst = (char **)(base + f->offset);
		size_t n = *dst ? strlen(*dst) : 0;
		char *joined = xmalloc(n + strlen(value) + 2);
		snprintf(joined, n + strlen(value) + 2, "%s%s%s", *dst ? *dst : "", n ? "\n" : "", value);
		free(*dst);
		*dst = joined;
		return;
	}
	f->set_by = source;
	if (f->type == F_STR || f->type == F_LIST) {
		char **dst = (char **)(base + f->offset);
		free(*dst);
		*dst = value ? xstrdup(value) : NULL;
		return;
	}
	char *end;
	errno = 0;
	long v = strtol(value ? value : "", &end, 10);
	if (!value || !*value || *end || errno)
		config_fail(f->name, "\"%s\" is not an integer (%s)", value ? value : "", where);
	if (v < f->min || v > f->max)
		config_fail(f->name, "%ld is out of range %ld..%ld (%s)", v, f->min, f->max, where);
	*(int *)(base + f->offset) = (int)v;
}

/* Reads "key = value" lines; '#' starts a comment. */
static void
config_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[4096], where[PATH_MAX + 32];
	int n = 0;

	if (!f)
		config_fail("config", "cannot open %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		char *p = line, *eq, *k_end, *v, *v_end;
		n++;
		snprintf(where, sizeof(where), "%s line %d", path, n);
		while (isspace((unsigned char)*p))
			p++;
		if (!*p || *p == '#')
			continue;
		eq = strchr(p, '=');
		if (!eq)
			config_fail(p, "expected \"key = value\" (%s)", where);
		k_end = eq;
		while (k_end > p && isspace((unsigned char)k_end[-1]))
			k_end--;
		*k_end = '\0';
		v = eq + 1;
		while (isspace((unsigned char)*v))
			v++;
		v_end = v + strlen(v);
		while (v_end > v && isspace((unsigned char)v_end[-1]))
			v_end--;
		*v_end = '\0';
		if (v_end - v >= 2 && (*v == '"' || *v == '\'') && v_end[-1] == *v) {
			v_end[-1] = '\0';
			v++;
		}
		for (char *q = p; *q; q++)
			if (*q == '_')
				*q = '-';
		struct flag *fl = config_find(p, strlen(p));
		if (!fl || !strcmp(fl->name, "config"))
			config_fail(p, "unknown key (%s)", where);
		config_set(fl, v, 1, where);
	}
	fclose(f);
}

/* True when node matches [a-z0-9_]{1,40} (it becomes part of a channel name). */
int
config_node_valid(const char *node)
{
	size_t n = strlen(node);

	if (n < 1 || n > 40)
		return 0;
	for (const char *p = node; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return 0;
	return 1;
}

/* Reads the secret file: the exact bytes, minus one trailing newline. */
static void
config_secret(void)
{
	FILE *f;
	unsigned char buf[4096];
	size_t n;

	if (!cfg.token_secret_file || !*cfg.token_secret_file)
		config_fail("token-secret-file", "required (the file holding chat.token_secret)");
	f = fopen(cfg.token_secret_file, "rb");
	if (!f)
		config_fail("token-secret-file", "cannot open %s: %s", cfg.token_secret_file, strerror(errno));
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	if (n == sizeof(buf))
		config_fail("token-secret-file", "%s is larger than %zu bytes", cfg.token_secret_file,
			    sizeof(buf) - 1);
	if (n > 0 && buf[n - 1] == '\n')
		n--;			/* exactly one: the rest is the secret */
	if (n == 0)
		config_fail("token-secret-file", "%s is empty", cfg.token_secret_file);
	cfg.secret = xmalloc(n);
	memcpy(cfg.secret, buf, n);
	cfg.secret_len = n;
}

/* Checks --media-url (media, issue 13): an http(s) origin of at most 200
 * URL-safe characters, so that hello can carry it without escaping. */
static void
config_media_url(void)
{
	const char *u = cfg.media_url;
	size_t i;

	if (!u || !*u) {
		cfg.media_url = NULL;
		return;
	}
	if ((strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) || strlen(u) > 200)
		config_fail("media-url", "\"%s\" is not an http(s):// origin of at most 200 characters", u);
	for (i = 0; u[i]; i++)
		if (!isalnum((unsigned char)u[i]) && !strchr(":/.-_[]%", u[i]))
			config_fail("media-url", "\"%s\" has a character not allowed in an origin", u);
}

/* Reads --vapid-public-key (a PEM public key, or a private key whose public
 * half is taken) into cfg.vapid_public_key: the uncompressed P-256 point in
 * base64url, as PushManager.subscribe takes it. */
static void
config_vapid(void)
{
	FILE *f;
	EVP_PKEY *key;
	unsigned char point[65], b64[100];
	char group[64] = "";
	size_t len = 0;
	int n;

	if (!cfg.vapid_key_file || !*cfg.vapid_key_file)
		return;
	f = fopen(cfg.vapid_key_file, "r");
	if (!f)
		config_fail("vapid-public-key", "cannot open %s: %s", cfg.vapid_key_file, strerror(errno));
	key = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	if (!key) {
		rewind(f);
		key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	}
	fclose(f);
	if (!key || !EVP_PKEY_is_a(key, "EC") ||
	    EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) != 1 ||
	    strcmp(group, "prime256v1") ||
	    EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof(point), &len) != 1 ||
	    len != sizeof(point) || point[0] != 0x04) {
		EVP_PKEY_free(key);
		config_fail("vapid-public-key", "%s is not a PEM P-256 public or private key", cfg.vapid_key_file);
	}
	EVP_PKEY_free(key);
	n = EVP_EncodeBlock(b64, point, sizeof(point));
	while (n > 0 && b64[n - 1] == '=')
		n--;
	for (int i = 0; i < n; i++)
		b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
	cfg.vapid_public_key = xmalloc((size_t)n + 1);
	memcpy(cfg.vapid_public_key, b64, (size_t)n);
	cfg.vapid_public_key[n] = '\0';
}

/* Splits a HOST:PORT flag into host (NULL: every interface) and port. */
static void
config_hostport(const char *key, const char *value, char **host_out, int *port_out)
{
	const char *colon = strrchr(value, ':');
	char *end, *host = NULL;
	long port;

	if (!colon) {
		colon = value - 1;		/* bare port */
	}
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (!colon[1] || *end || errno || port < 1 || port > 65535)
		config_fail(key, "\"%s\" is not HOST:PORT", value);
	*port_out = (int)port;
	if (colon > value) {
		host = xstrdup(value);
		host[colon - value] = '\0';
		if (host[0] == '[') {	/* [::1]:8080 */
			size_t l = strlen(host);
			memmove(host, host + 1, l);
			if (l >= 2 && host[l - 2] == ']')
				host[l - 2] = '\0';
		}
		if (!strcmp(host, "0.0.0.0") || !strcmp(host, "*")) {
			free(host);
			host = NULL;
		}
	}
	*host_out = host;
}

/* Fills cfg from the command line, CHAT_* variables, --config and defaults; exits 2 on error. */
void
config_load(int argc, char **argv)
{
	char env[64], *p;

	/* Command line first (strongest); --config is read after it. */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val, *eq;
		struct flag *f;

		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			config_usage(stdout);
			exit(0);
		}
		if (!strcmp(a, "--version")) {
			printf("chat-gateway %s (libwebsockets %s, libpq %d)\n", GATEWAY_VERSION,
			       lws_get_library_version(), PQlibVersion());
			exit(0);
		}
		if (strncmp(a, "--", 2))
			config_fail(a, "unexpected argument (flags start with --; see --help)");
		a += 2;
		eq = strchr(a, '=');
		f = config_find(a, eq ? (size_t)(eq - a) : strlen(a));
		if (!f)
			config_fail(a, "unknown flag (see --help)");
		if (eq)
			val = eq + 1;
		else if (i + 1 < argc)
			val = argv[++i];
		else
			config_fail(f->name, "needs a value");
		config_set(f, val, 3, "command line");
	}
	for (size_t i = 0; i < N_FLAGS; i++) {
		const char *v;
		snprintf(env, sizeof(env), "CHAT_%s", flags[i].name);
		for (p = env; *p; p++)
			*p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
		if ((v = getenv(env)) && *v)
			config_set(&flags[i], v, 2, env);
	}
	if (cfg.config_file)
		config_file(cfg.config_file);
	for (size_t i = 0; i < N_FLAGS; i++)
		if (!flags[i].set_by && flags[i].def)
			config_set(&flags[i], flags[i].def, 0, "default");

	if (!config_node_valid(cfg.node))
		config_fail("node", "\"%s\" must match [a-z0-9_]{1,40}", cfg.node);
	if (cfg.workers > 0 && strlen(cfg.node) + 1 + (cfg.workers > 10 ? 2 : 1) > 40)
		config_fail("node", "\"%s\" leaves no room for the worker suffix", cfg.node);
	if (!strcmp(cfg.log_format, "json"))
		cfg.log_json = 1;
	else if (strcmp(cfg.log_format, "text"))
		config_fail("log-format", "\"%s\" is not text or json", cfg.log_format);
	if (strcmp(cfg.event_lib, "poll") && strcmp(cfg.event_lib, "ev"))
		config_fail("event-lib", "\"%s\" is not poll or ev", cfg.event_lib);
	if (!strcmp(cfg.log_level, "debug")) cfg.log_min = LOG_DEBUG;
	else if (!strcmp(cfg.log_level, "info")) cfg.log_min = LOG_INFO;
	else if (!strcmp(cfg.log_level, "warn")) cfg.log_min = LOG_WARN;
	else if (!strcmp(cfg.log_level, "error")) cfg.log_min = LOG_ERROR;
	else config_fail("log-level", "\"%s\" is not debug, info, warn or error", cfg.log_level);
	if (!cfg.tls_cert != !cfg.tls_key)
		config_fail(cfg.tls_cert ? "tls-key" : "tls-cert", "--tls-cert and --tls-key go together");
	if (cfg.static_dir && !*cfg.static_dir)
		cfg.static_dir = NULL;
	config_hostport("listen", cfg.listen, &cfg.listen_host, &cfg.listen_port);
	if (cfg.metrics_listen && !*cfg.metrics_listen)
		cfg.metrics_listen = NULL;
	if (cfg.metrics_listen) {
		config_hostport("metrics-listen", cfg.metrics_listen, &cfg.metrics_host, &cfg.metrics_port);
		if (cfg.metrics_port == cfg.listen_port &&
		    (!cfg.metrics_host || !cfg.listen_host || !strcmp(cfg.metrics_host, cfg.listen_host)))
			config_fail("metrics-listen", "\"%s\" uses the port of --listen", cfg.metrics_listen);
	}
	config_secret();
	config_vapid();
	config_media_url();
}
