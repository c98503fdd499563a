/* media_main.c: chat-media, the byte server of attachments (docs/media.md):
 * flags, the listening socket, one thread per request (bounded by
 * --max-connections) and the sweeper thread that removes stale uploads
 * and deletes the bytes the database queued for deletion. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "media.h"
#include "gateway.h"

struct media_config mcfg;
static atomic_int active;
static atomic_uint next_conn;

/* Prints the usage. */
static void
usage(FILE *f)
{
	fprintf(f,
		"usage: chat-media [options]\n"
		"  --listen HOST:PORT        where to serve (default 127.0.0.1:8091; env CHAT_MEDIA_LISTEN)\n"
		"  --dsn DSN                 libpq connection string of the chat database (env CHAT_DSN)\n"
		"  --token-secret-file FILE  the file holding chat.token_secret (env CHAT_TOKEN_SECRET_FILE)\n"
		"  --media-dir DIR           where the bytes are stored (env CHAT_MEDIA_DIR)\n"
		"  --max-connections N       concurrent requests, more get 503 (default 256)\n"
		"  --io-timeout SECONDS      a stalled client is dropped after this (default 30)\n"
		"  --sweep-interval SECONDS  cleanup and deletion passes (default 10)\n"
		"  --db-pool N               database connections (default 4)\n"
		"  --log-level LEVEL         debug, info, warn, error (default info)\n"
		"  --log-format FORMAT       text or json (default text)\n"
		"  --version, --help\n");
}

/* Stops start-up with a message naming the flag. */
static void
fail(const char *flag, const char *fmt, const char *arg)
{
	fprintf(stderr, "chat-media: --%s: ", flag);
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(2);
}

/* A positive integer flag value. */
static int
int_flag(const char *flag, const char *v, int max)
{
	char *end;
	long n = strtol(v, &end, 10);

	if (*v == '\0' || *end || n < 1 || n > max)
		fail(flag, "\"%s\" is not a number in range", v);
	return (int)n;
}

/* Reads the secret (exactly as the gateway does: minus one trailing
 * newline) and derives the media key HMAC(secret, "chat-media"). */
static void
load_secret(void)
{
	unsigned char buf[4096];
	unsigned int len = 0;
	size_t n;
	FILE *f;

	if (!mcfg.token_secret_file)
		fail("token-secret-file", "%s", "required (the file holding chat.token_secret)");
	f = fopen(mcfg.token_secret_file, "rb");
	if (!f)
		fail("token-secret-file", "cannot open %s", mcfg.token_secret_file);
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	if (n > 0 && buf[n - 1] == '\n')
		n--;
	if (n == 0 || n == sizeof(buf))
		fail("token-secret-file", "%s is empty or too large", mcfg.token_secret_file);
	if (!HMAC(EVP_sha256(), buf, (int)n, (const unsigned char *)"chat-media", 10, mcfg.key, &len) ||
	    len != sizeof(mcfg.key))
		fail("token-secret-file", "%s", "HMAC failed");
	OPENSSL_cleanse(buf, sizeof(buf));
}

/* Parses the flags (environment first, flags override). */
static void
parse_flags(int argc, char **argv, char **listen_arg)
{
	static const struct option opts[] = {
		{"listen", required_argument, 0, 'l'}, {"dsn", required_argument, 0, 'd'},
		{"token-secret-file", required_argument, 0, 't'},
		{"media-dir", required_argument, 0, 'm'},
		{"max-connections", required_argument, 0, 'c'},
		{"io-timeout", required_argument, 0, 'i'},
		{"sweep-interval", required_argument, 0, 's'},
		{"db-pool", required_argument, 0, 'p'},
		{"log-level", required_argument, 0, 'L'}, {"log-format", required_argument, 0, 'F'},
		{"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}
	};
	int o;

	*listen_arg = getenv("CHAT_MEDIA_LISTEN") ? getenv("CHAT_MEDIA_LISTEN") : "127.0.0.1:8091";
	mcfg.dsn = getenv("CHAT_DSN") ? getenv("CHAT_DSN") : "";
	mcfg.token_secret_file = getenv("CHAT_TOKEN_SECRET_FILE");
	mcfg.media_dir = getenv("CHAT_MEDIA_DIR");
	mcfg.max_connections = 256;
	mcfg.io_timeout = 30;
	mcfg.sweep_interval = 10;
	mcfg.db_pool = 4;
	mcfg.log_min = LOG_INFO;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'l': *listen_arg = optarg; break;
		case 'd': mcfg.dsn = optarg; break;
		case 't': mcfg.token_secret_file = optarg; break;
		case 'm': mcfg.media_dir = optarg; break;
		case 'c': mcfg.max_connections = int_flag("max-connections", optarg, 10000); break;
		case 'i': mcfg.io_timeout = int_flag("io-timeout", optarg, 3600); break;
		case 's': mcfg.sweep_interval = int_flag("sweep-interval", optarg, 86400); break;
		case 'p': mcfg.db_pool = int_flag("db-pool", optarg, 100); break;
		case 'L':
			if (!strcmp(optarg, "debug")) mcfg.log_min = LOG_DEBUG;
			else if (!strcmp(optarg, "info")) mcfg.log_min = LOG_INFO;
			else if (!strcmp(optarg, "warn")) mcfg.log_min = LOG_WARN;
			else if (!strcmp(optarg, "error")) mcfg.log_min = LOG_ERROR;
			else fail("log-level", "\"%s\" is not debug, info, warn or error", optarg);
			break;
		case 'F':
			if (strcmp(optarg, "text") && strcmp(optarg, "json"))
				fail("log-format", "\"%s\" is not text or json", optarg);
			mcfg.log_json = !strcmp(optarg, "json");
			break;
		case 'h': usage(stdout); exit(0);
		case 'V': printf("chat-media %s\n", MEDIA_VERSION); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc)
		fail("help", "unexpected argument \"%s\"", argv[optind]);
	if (!mcfg.media_dir || !*mcfg.media_dir)
		fail("media-dir", "%s", "required (where the bytes are stored)");
}

/* Opens the listening socket of host:port; exits on failure. */
static int
listen_on(const char *arg)
{
	char host[256];
	const char *colon = strrchr(arg, ':');
	struct addrinfo hints = {0}, *ai;
	int fd, one = 1;

	if (!colon || colon == arg || (size_t)(colon - arg) >= sizeof(host))
		fail("listen", "\"%s\" is not HOST:PORT", arg);
	memcpy(host, arg, (size_t)(colon - arg));
	host[colon - arg] = '\0';
	mcfg.listen_port = int_flag("listen", colon + 1, 65535);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		fail("listen", "cannot resolve \"%s\"", arg);
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 512) < 0)
		fail("listen", "cannot listen on %s", arg);
	freeaddrinfo(ai);
	return fd;
}

/* The thread of one connection: serves its request, then closes it
 * gently (reads what the client still sends for a moment, so that an
 * early answer such as 413 is not lost to a reset). */
static void *
conn_thread(void *arg)
{
	int fd = (int)(intptr_t)arg;
	uint32_t id = atomic_fetch_add(&next_conn, 1) + 1;
	struct timeval tv = {mcfg.io_timeout, 0}, linger = {1, 0};
	char sink[4096];
	int i;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	http_serve(fd, id);
	shutdown(fd, SHUT_WR);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &linger, sizeof(linger));
	for (i = 0; i < 256 && recv(fd, sink, sizeof(sink), 0) > 0; i++)
		;
	close(fd);
	atomic_fetch_sub(&active, 1);
	return NULL;
}

/* Removes stale pending uploads and deletes the files the database queued
 * (claimed, unlinked, then committed: a crash in between leaves them
 * queued, and unlinking twice is harmless). */
static void *
sweeper_thread(void *arg)
{
	(void)arg;
	for (;;) {
		PGconn *c = db_take();

		if (c) {
			PGresult *r = PQexec(c, "SELECT chat.media_cleanup()");
			int i, n = 0;

			PQclear(r);
			r = PQexec(c, "BEGIN");
			PQclear(r);
			r = PQexec(c, "SELECT k FROM chat.media_claim_deletions(500) AS k");
			if (PQresultStatus(r) == PGRES_TUPLES_OK) {
				for (i = 0; i < PQntuples(r); i++) {
					const char *key = PQgetvalue(r, i, 0);

					if (store_key_valid(key) && store->remove(key) == 0)
						n++;
					else if (store_key_valid(key))
						log_msg(LOG_WARN, 0, "media: cannot delete %s: %s", key, strerror(errno));
				}
			} else
				log_msg(LOG_WARN, 0, "media: deletion queue: %s", PQresultErrorMessage(r));
			PQclear(r);
			r = PQexec(c, "COMMIT");
			PQclear(r);
			if (n > 0)
				log_msg(LOG_INFO, 0, "media: deleted %d files", n);
			db_give(c);
		}
		sleep((unsigned)mcfg.sweep_interval);
	}
	return NULL;
}

/* Starts a detached thread with a modest stack; -1 when it cannot. */
static int
spawn(void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	pthread_t t;
	int rc;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 1 << 20);
	rc = pthread_create(&t, &attr, fn, arg);
	pthread_attr_destroy(&attr);
	return rc ? -1 : 0;
}

/* Accepts connections forever; one thread each, 503 beyond the bound. */
int
main(int argc, char **argv)
{
	char *listen_arg;
	int lfd;

	parse_flags(argc, argv, &listen_arg);
	log_setup(mcfg.log_json, mcfg.log_min, "media", NULL);
	signal(SIGPIPE, SIG_IGN);
	load_secret();
	if (store_dir_init(mcfg.media_dir) != 0)
		fail("media-dir", "cannot create %s", mcfg.media_dir);
	if (magic_init() != 0)
		fail("help", "%s", "libmagic: cannot load its database");
	if (thumb_init(argv[0]) != 0)
		fail("help", "%s", "libvips: cannot start");
	db_pool_init();
	lfd = listen_on(listen_arg);
	if (spawn(sweeper_thread, NULL) != 0)
		fail("help", "%s", "cannot start the sweeper thread");
	log_msg(LOG_INFO, 0, "chat-media %s listening on %s, storing in %s", MEDIA_VERSION,
		listen_arg, mcfg.media_dir);
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EINTR)
				usleep(10000);	/* EMFILE and friends: do not spin */
			continue;
		}
		if (atomic_fetch_add(&active, 1) >= mcfg.max_connections || spawn(conn_thread, (void *)(intptr_t)fd) != 0) {
			static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
				"Retry-After: 1\r\nConnection: close\r\n\r\n";

			(void)send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
			close(fd);
			atomic_fetch_sub(&active, 1);
		}
	}
}
