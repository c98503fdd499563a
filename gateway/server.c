/* server.c: one single-threaded server process: the lws context and its
 * vhosts, the listen sockets (accepted here, served by lws), signals and the
 * SIGTERM drain.  The client port opens once db.c reports the database ready. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include "gateway.h"

static struct lws_context *context;
static struct lws_vhost *vhost_pg;	/* holds the adopted libpq sockets and listen sockets */
static int draining;			/* SIGTERM received (or stopping) */

volatile sig_atomic_t sig_term, sig_hup;
static int stop, exit_status;
static lws_sorted_usec_list_t sul_signals, sul_drain;

static int server_accept(struct lws *wsi, enum lws_callback_reasons reason,
		       void *user, void *in, size_t len);

/* The client vhost speaks only chat.v1 (also the default for HTTP and for
 * clients that name no subprotocol): no client can bind to the raw protocols.
 * No per-session data (the conn hangs on the wsi's opaque user data) and a
 * 128-byte receive buffer: lws allocates rx_buffer_size + LWS_PRE + 4 bytes
 * per connection for its whole life, and idle connections are what a
 * gateway holds most of.  Longer frames arrive in pieces that ws.c
 * assembles (frame.c); 128 still holds a whole control frame (125 bytes). */
#define CLIENT_RX_BUFFER 128
/* The largest single send(): lws's tx_packet_size 0 means "rx_buffer_size",
 * which with 128 cut every event of a few hundred bytes into several
 * send() calls and buffered the rest (half the gateway's fanout rate in
 * bench/run.sh's group runs).  A cap, not a buffer: nothing is allocated
 * per connection for it; a partial send is buffered by lws as before. */
#define CLIENT_TX_PACKET (256 * 1024)
static const struct lws_protocols client_protocols[] = {
	{ "chat.v1", ws_callback, 0, CLIENT_RX_BUFFER, 0, NULL, CLIENT_TX_PACKET },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

/* The --metrics-listen vhost: HTTP only, /metrics and /healthz. */
static const struct lws_protocols metrics_protocols[] = {
	{ "http-metrics", http_metrics_callback, 0, 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

/* Raw descriptors we adopt: libpq sockets and our own listen sockets. */
static const struct lws_protocols raw_protocols[] = {
	{ "pg", db_callback, 0, 0, 0, NULL, 0 },
	{ "listen", server_accept, 0, 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

static struct lws_vhost *vhost_chat, *vhost_metrics;
static struct lws *listen_wsi, *metrics_listen_wsi;
static lws_sorted_usec_list_t sul_accept;
static void server_unlisten(void);
static void server_stop(void);

/* Signal handler (also the supervisor's): only sets flags and wakes the
 * loop when there is one. */
void
server_on_signal(int sig)
{
	if (sig == SIGHUP)
		sig_hup = 1;
	else
		sig_term = 1;
	if (context)
		lws_cancel_service(context);
}

/* SIGTERM's drain deadline: stop with whatever is still open. */
static void
server_drain_deadline(lws_sorted_usec_list_t *sul)
{
	(void)sul;
	log_msg(LOG_WARN, 0, "drain timeout: %u connections left", conn_count);
	lws_sul_cancel(&sul_signals);
	server_stop();
}

/* Signals are acted on here, in the loop, never in the handler. */
static void
server_signals(lws_sorted_usec_list_t *sul)
{
	(void)sul;
	if (sig_hup) {
		sig_hup = 0;
		log_reopen();
		log_msg(LOG_INFO, 0, "SIGHUP: log file reopened");
	}
	if (sig_term && !draining) {
		draining = 1;
		log_msg(LOG_INFO, 0, "SIGTERM: draining %u connections", conn_count);
		/* One deadline for the whole drain, not a timer per connection. */
		lws_sul_schedule(context, 0, &sul_drain, server_drain_deadline,
				 (lws_usec_t)cfg.drain_timeout * LWS_US_PER_SEC);
		server_unlisten();
		conn_drain();
		db_shutdown();
	}
	if (draining && conn_count == 0 && db_shutdown_done()) {
		lws_sul_cancel(&sul_drain);
		server_stop();
		return;
	}
	lws_sul_schedule(context, 0, &sul_signals, server_signals, 50 * LWS_US_PER_MS);
}

/* Ends the event loop at its next turn. */
static void
server_stop(void)
{
	stop = 1;
	draining = 1;
	db_shutdown();		/* no reconnects while the context goes */
	lws_cancel_service(context);
}

/* Re-enables accepting after running out of descriptors. */
static void
server_accept_resume(lws_sorted_usec_list_t *sul)
{
	(void)sul;
	if (listen_wsi)
		lws_rx_flow_control(listen_wsi, 1);
}

/* Accepts pending connections and hands them to lws as HTTP sockets. */
static int
server_accept(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	(void)user;
	(void)in;
	(void)len;
	if (reason == LWS_CALLBACK_RAW_CLOSE_FILE && wsi == listen_wsi) {
		listen_wsi = NULL;
		return 0;
	}
	if (reason == LWS_CALLBACK_RAW_CLOSE_FILE && wsi == metrics_listen_wsi) {
		metrics_listen_wsi = NULL;
		return 0;
	}
	if (reason != LWS_CALLBACK_RAW_RX_FILE)
		return 0;
	if (wsi == metrics_listen_wsi) {
		/* Scrapes: a few at a time, no client caps, served while draining. */
		for (int i = 0; i < 8; i++) {
			lws_sock_file_fd_type u;
			int fd = accept4(lws_get_socket_fd(wsi), NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (fd < 0)
				break;
			struct lws *w;
			u.sockfd = fd;
			w = lws_adopt_descriptor_vhost(vhost_metrics, LWS_ADOPT_HTTP | LWS_ADOPT_SOCKET,
						       u, NULL, NULL);
			if (w)
				lws_set_opaque_user_data(w, &http_metrics_tag);
			else
				log_msg(LOG_WARN, 0, "lws could not adopt a metrics connection");
		}
		return 0;
	}
	/* Bounded batch: the loop must also serve the connections we have. */
	for (int i = 0; i < 64; i++) {
		lws_sock_file_fd_type u;
		int fd = accept4(lws_get_socket_fd(wsi), NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		int one = 1;

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				log_msg(LOG_WARN, 0, "accept: %s; pausing accepts for 100 ms", strerror(errno));
				lws_rx_flow_control(wsi, 0);
				lws_sul_schedule(context, 0, &sul_accept, server_accept_resume,
						 100 * LWS_US_PER_MS);
			}
			break;
		}
		if (draining || conn_count >= (uint32_t)cfg.max_conns) {
			metrics_close(0);
			close(fd);
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		u.sockfd = fd;
		if (!lws_adopt_descriptor_vhost(vhost_chat, LWS_ADOPT_HTTP | LWS_ADOPT_SOCKET |
						(cfg.tls_cert ? LWS_ADOPT_ALLOW_SSL : 0), u, NULL, NULL))
			log_msg(LOG_WARN, 0, "lws could not adopt an accepted socket");
	}
	return 0;
}

/* Opens the shared listen socket ourselves: lws 4.1 built with LWS_MAX_SMP 1
 * never sets SO_REUSEPORT, and we also want to close it first on SIGTERM. */
static int
server_listen_socket(const char *host, int port_num, const char *what)
{
	struct addrinfo hints, *res = NULL, *ai;
	char port[8];
	int fd = -1, one = 1, err;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%d", port_num);
	if ((err = getaddrinfo(host, port, &hints, &res)) != 0) {
		log_msg(LOG_ERROR, 0, "listen %s: %s", what, gai_strerror(err));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (cfg.workers > 0)
			setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
		errno = err;
	}
	freeaddrinfo(res);
	if (fd < 0)
		log_msg(LOG_ERROR, 0, "cannot listen on %s: %s", what, strerror(errno));
	return fd;
}

static const lws_retry_bo_t no_validity_timers = {
	.secs_since_valid_ping = 0,
	.secs_since_valid_hangup = 0,
};

/* Creates the client vhost and the listen socket once the database is ready. */
static int
server_listen(void)
{
	struct lws_context_creation_info info;
	lws_sock_file_fd_type u;
	int fd;

	memset(&info, 0, sizeof(info));
	/* No mounts: every HTTP request reaches ws_callback, which hands it
	 * to http.c for /healthz, /metrics and --static (lws file mounts
	 * follow symlinks out of their root). */
	info.vhost_name = "chat";
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER;	/* we accept, lws serves */
	info.protocols = client_protocols;
	info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
	/* No lws validity (idle ping / hangup) timers: conn.c's tick pings
	 * every --heartbeat seconds.  lws's default policy re-inserts a
	 * timer in one sorted list at each pong, O(connections) each. */
	info.retry_and_idle_policy = &no_validity_timers;
	if (cfg.tls_cert) {
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT |
				LWS_SERVER_OPTION_CREATE_VHOST_SSL_CTX;
		info.ssl_cert_filepath = cfg.tls_cert;
		info.ssl_private_key_filepath = cfg.tls_key;
	}
	vhost_chat = lws_create_vhost(context, &info);
	if (!vhost_chat) {
		exit_status = 1;
		log_msg(LOG_ERROR, 0, "cannot create the client vhost%s",
			cfg.tls_cert ? " (check --tls-cert and --tls-key)" : "");
		return -1;
	}
	if (cfg.metrics_listen) {
		/* Plain HTTP on its own address (e.g. 127.0.0.1), never TLS. */
		memset(&info, 0, sizeof(info));
		info.vhost_name = "metrics";
		info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
		info.protocols = metrics_protocols;
		info.retry_and_idle_policy = &no_validity_timers;
		vhost_metrics = lws_create_vhost(context, &info);
		fd = vhost_metrics ? server_listen_socket(cfg.metrics_host, cfg.metrics_port,
							  cfg.metrics_listen) : -1;
		if (fd < 0) {
			exit_status = 1;
			return -1;
		}
		u.filefd = fd;
		metrics_listen_wsi = lws_adopt_descriptor_vhost(vhost_pg, LWS_ADOPT_RAW_FILE_DESC, u,
								"listen", NULL);
		if (!metrics_listen_wsi) {
			close(fd);
			exit_status = 1;
			return -1;
		}
		log_msg(LOG_INFO, 0, "metrics on %s", cfg.metrics_listen);
	}
	fd = server_listen_socket(cfg.listen_host, cfg.listen_port, cfg.listen);
	if (fd < 0) {
		exit_status = 1;
		return -1;
	}
	u.filefd = fd;
	listen_wsi = lws_adopt_descriptor_vhost(vhost_pg, LWS_ADOPT_RAW_FILE_DESC, u, "listen", NULL);
	if (!listen_wsi) {
		close(fd);
		log_msg(LOG_ERROR, 0, "lws could not adopt the listen socket");
		return -1;
	}
	log_msg(LOG_INFO, 0, "listening on %s%s", cfg.listen, cfg.tls_cert ? " (TLS)" : "");
	return 0;
}

/* SIGTERM: stop accepting by closing the listen socket. */
static void
server_unlisten(void)
{
	if (listen_wsi) {
		lws_set_timeout(listen_wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
		listen_wsi = NULL;
	}
}

/* db.c's readiness callback: the node is registered and the pool is up,
 * so the client port opens (a failure to listen ends the process). */
static void
server_on_db_ready(void)
{
	if (server_listen() != 0)
		server_stop();
}

/* One single-threaded server process: returns the exit status. */
int
server_run(void)
{
	struct lws_context_creation_info info;
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = server_on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	lws_set_log_level(getenv("CHAT_LWS_LOG") ? atoi(getenv("CHAT_LWS_LOG")) : (LLL_ERR | LLL_WARN), log_lws);
	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_VALIDATE_UTF8;
	if (cfg.tls_cert)
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = raw_protocols;
	info.timeout_secs = 10;		/* HTTP handshake stalls */
	if (!strcmp(cfg.event_lib, "ev") && evloop_setup(&info) != 0)
		return 1;
	slab_init(cfg.max_conns);
	context = lws_create_context(&info);
	if (!context) {
		log_msg(LOG_ERROR, 0, "lws_create_context failed");
		return 1;
	}
	/* The libpq sockets live on a vhost that listens nowhere; the client
	 * vhost is created once the node is registered (db.c). */
	info.vhost_name = "pg";
	vhost_pg = lws_create_vhost(context, &info);
	if (!vhost_pg) {
		log_msg(LOG_ERROR, 0, "cannot create the database vhost");
		lws_context_destroy(context);
		return 1;
	}
	log_msg(LOG_INFO, 0, "chat-gateway %s starting (pool %d)", GATEWAY_VERSION, cfg.pool);
	db_start(context, vhost_pg, server_on_db_ready);
	conn_start_timers(context);
	lws_sul_schedule(context, 0, &sul_signals, server_signals, 50 * LWS_US_PER_MS);

	if (!strcmp(cfg.event_lib, "ev")) {
		/* lws's timers are ev timers there: the 50 ms signal check
		 * wakes the loop as the poll loop's timeout does. */
		while (!stop)
			evloop_run_once();
	} else {
		while (!stop)
			if (lws_service(context, 0) < 0)
				break;
	}
	lws_context_destroy(context);
	context = NULL;
	if (!strcmp(cfg.event_lib, "ev"))
		evloop_destroy();
	slab_report();
	log_msg(LOG_INFO, 0, "stopped");
	return exit_status;
}
