/* db.c: libpq connections inside the lws event loop.
 *
 * One control connection LISTENs on chat_node_<node> and runs node_reset; it
 * runs nothing periodic (a query there holds up notifications), so
 * node_heartbeat goes to a maintenance connection of its own (db_maint_conn).
 * A pool of --pool connections carries client requests, ref
 * lookups and the session calls (connect, disconnect).  The session calls of
 * one (user, device) always use the same pool connection, so a disconnect
 * never overtakes its connect; they are spread over the pool because a
 * connection storm is bound by the database's work per chat.connect.  After
 * node_reset (start or reconnect of the control connection) the epoch moves
 * on and every live session is registered again; an answer from an older
 * epoch only sends the hello.  Every connection runs in
 * pipeline mode: requests are sent without waiting for earlier answers, each
 * followed by a sync (its own transaction), and answers come back in order,
 * so a FIFO of pending entries matches them.  A client connection always
 * uses the same pool connection, which keeps its requests in arrival order.
 *
 * libpq's socket is adopted as an lws raw file (a dup(): lws closes what it
 * adopted, libpq closes its own).  Connecting uses PQconnectStart/Poll on a
 * short timer because the socket can change while libpq tries the hosts of a
 * multi-host DSN; nothing blocks once the loop runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stddef.h>
#include <poll.h>
#include "gateway.h"

enum pg_state { PG_DOWN, PG_CONNECTING, PG_SETUP, PG_READY };

enum pending_kind {
	P_PREPARE, P_LISTEN, P_RESET, P_HEARTBEAT, P_CONNECT, P_DISCONNECT,
	P_REQUEST, P_REF, P_FINAL,
	P_PROBE,		/* SELECT 1 on an idle connection (db_watch) */
	P_NSTATS,		/* chat.notifier_stats() for /metrics */
	P_NHIST,		/* chat.notifier_histograms() for /metrics (issue 11) */
	P_PART_RESET,		/* sharded: node_reset on one partition */
	P_CONNECT_MANY		/* chat.connect_many: a batch of session registrations */
};

/* A query sent and not yet answered; owns a reference on conn. */
struct pending {
	struct pending *next;
	struct conn *conn;
	void *event;
	PGresult *res;
	uint64_t start_us;
	uint8_t kind;
	uint8_t seen;
	uint8_t timed_out;		/* failed by db_watch: no answer in time */
	uint32_t epoch;			/* P_CONNECT: the epoch it was sent in */
	uint64_t trace_rx, trace_db;	/* --trace-latency: frame received, call sent */
	struct conn **batch;		/* P_CONNECT_MANY: the sessions (one ref each) */
	uint32_t batch_n;
	char id[];			/* request id as JSON, "" when none */
};

struct pgconn {
	PGconn *pg;
	struct lws *wsi;
	int index;			/* -1: the control connection */
	int part;			/* sharded: the partition it talks to (LISTEN or maintenance), else -1 */
	int maint;			/* a maintenance connection (never LISTENs, never routed requests) */
	const char *dsn;		/* NULL: cfg.dsn */
	int state;
	int heartbeat_inflight;
	int nstats_inflight;
	int nhist_inflight;	/* monitoring (issue 11) */
	int ever_ready;
	struct pending *head, *tail;
	uint64_t connect_started;
	int poll_want;			/* what PQconnectPoll last asked to wait for */
	uint32_t backoff_ms;
	lws_sorted_usec_list_t sul;
	/* Silent database (db_watch): */
	int requests;			/* P_REQUEST entries pending (--pool-queue) */
	/* Session registrations waiting for the next batch (connect batching): */
	struct conn **batch;		/* one ref each; in arrival order */
	uint32_t batch_n, batch_cap;
	int connects_inflight;		/* P_CONNECT / P_CONNECT_MANY unanswered */
	int timed_out;			/* db_lost: the pending entries timed out */
	uint64_t last_rx_us;		/* last bytes from the server */
};

static struct pgconn ctl, *pool;
/* Tail latency (issue 11): the periodic calls' own connection (db_maint_conn). */
static struct pgconn maint;
static struct pgconn *parts;		/* sharded: one LISTEN connection per --listen-dsn */
static struct pgconn *pmaint;		/* sharded: each partition's maintenance connection */
static int n_parts;
static lws_sorted_usec_list_t sul_heartbeat, sul_watch;
static lws_sorted_usec_list_t sul_nread;	/* monitoring (issue 11): notifier reads */
static int listening, shutdown_done, final_wanted, final_sent;
static struct lws_context *db_context;
static struct lws_vhost *db_vhost;	/* holds the adopted libpq sockets */
static void (*db_on_ready)(void);	/* server.c: open the port */
static int stopping;			/* db_shutdown: no reconnects, no new sessions */
static uint32_t epoch;			/* moves on with every node_reset */
static int session_inflight;		/* connect/disconnect calls unanswered or queued */

#define PGCONN_OF_SUL(s) ((struct pgconn *)((char *)(s) - offsetof(struct pgconn, sul)))

static const char SQL_REQUEST[] = "SELECT chat.client_request($1, $2, $3, $4::jsonb)";
/* The event of a stored message, in exactly the notification's shape. */
static const char SQL_REF[] =
	"SELECT chat.message_json(m)::text FROM chat.get_message($1, $2, $3) m";

struct outcome;
static void db_connect_begin(struct pgconn *pc);
static void db_lost(struct pgconn *pc, const char *why);
static void db_reregister(struct conn *c, void *arg);
static void db_register_pending(struct conn *c, void *arg);
static void db_maybe_listen(void);
static void db_watch(lws_sorted_usec_list_t *sul);
static void db_done_part_reset(struct pgconn *pc, const struct outcome *o);
static int db_sharded_setup(struct pgconn *pc);
static void db_sharded_heartbeat(void);
static void db_sharded_start(void);
static void db_batch_flush(struct pgconn *pc);
static void db_done_connect_many(struct pgconn *pc, struct pending *p, const struct outcome *o);

/* Name of a connection for logs. */
static const char *
pc_name(struct pgconn *pc)
{
	static char buf[48];

	if (pc->part >= 0) {
		snprintf(buf, sizeof(buf), "partition %d%s", pc->part, pc->maint ? " maintenance" : "");
		return buf;
	}
	if (pc->maint)
		return "maintenance";
	if (pc->index < 0)
		return "control";
	snprintf(buf, sizeof(buf), "pool %d", pc->index);
	return buf;
}

/* libpq notices go to our log instead of stderr. */
static void
db_notice(void *arg, const char *message)
{
	(void)arg;
	log_msg(LOG_DEBUG, 0, "postgres: %.*s", (int)strcspn(message, "\n"), message);
}

/* Closes a connection from outside its callback: lws calls RAW_CLOSE_FILE. */
static void
db_kill(struct pgconn *pc, const char *why)
{
	if (pc->wsi) {
		log_msg(LOG_WARN, 0, "%s connection: %s", pc_name(pc), why);
		lws_set_timeout(pc->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	} else {
		db_lost(pc, why);
	}
}

/* Sends what libpq buffered; asks lws for POLLOUT when the socket is full. */
static void
db_flush(struct pgconn *pc)
{
	int r = PQflush(pc->pg);

	if (r == 1 && pc->wsi)
		lws_callback_on_writable(pc->wsi);
	else if (r < 0)
		db_kill(pc, PQerrorMessage(pc->pg));
}

/* Queues one query with its sync; returns the pending entry or NULL (the
 * connection is then being closed and nothing was queued). */
static struct pending *
db_send(struct pgconn *pc, int kind, const char *stmt, const char *sql,
	int n_params, const char *const *values, const char *id_json)
{
	size_t id_len = id_json ? strlen(id_json) : 0;
	struct pending *p;
	int ok;

	if (!pc->pg || pc->state < PG_SETUP)
		return NULL;
	if (stmt)
		ok = PQsendQueryPrepared(pc->pg, stmt, n_params, values, NULL, NULL, 0);
	else
		ok = PQsendQueryParams(pc->pg, sql, n_params, NULL, values, NULL, NULL, 0);
	if (!ok || !PQpipelineSync(pc->pg)) {
		db_kill(pc, PQerrorMessage(pc->pg));
		return NULL;
	}
	p = xcalloc(1, sizeof(*p) + id_len + 1);
	p->kind = (uint8_t)kind;
	p->start_us = now_us();
	if (id_len)
		memcpy(p->id, id_json, id_len + 1);
	if (pc->tail)
		pc->tail->next = p;
	else
		pc->head = p;
	pc->tail = p;
	db_flush(pc);
	return p;
}

/* The outcome of a pending entry: res (NULL: the connection was lost), its
 * status, ok for a tuples or command result, the primary error message. */
struct outcome {
	PGresult *res;
	ExecStatusType st;
	int ok;
	const char *err;
};

/* A connection finished its set-up (prepare or node_reset): it is ready. */
static void
db_now_ready(struct pgconn *pc)
{
	pc->state = PG_READY;
	if (pc->ever_ready)
		stats.db_reconnects++;
	pc->ever_ready = 1;
	pc->backoff_ms = 0;
}

/* P_PREPARE answered: a pool connection is ready; sessions that waited for
 * it are registered. */
static void
db_done_prepare(struct pgconn *pc, const struct outcome *o)
{
	if (o->ok) {
		db_now_ready(pc);
		log_msg(LOG_INFO, 0, "%s connection ready", pc_name(pc));
		if (ctl.state == PG_READY)
			conn_foreach_authed(db_register_pending, pc);
		db_maybe_listen();
	} else if (o->res) {
		log_msg(LOG_ERROR, 0, "%s connection: prepare failed: %s", pc_name(pc),
			o->err ? o->err : "?");
		db_kill(pc, "prepare failed");
	}
}

/* P_RESET answered: the node is registered anew (new epoch); every live
 * session is registered again. */
static void
db_done_reset(struct pgconn *pc, const struct outcome *o)
{
	if (o->ok) {
		db_now_ready(pc);
		epoch++;
		log_msg(LOG_INFO, 0, "control connection ready: node %s registered", cfg.node);
		conn_foreach_authed(db_reregister, NULL);
		db_maybe_listen();
	} else if (o->res) {
		log_msg(LOG_ERROR, 0, "chat.node_reset failed: %s", o->err ? o->err : "?");
		db_kill(pc, "node_reset failed");
	}
}

/* The answer to one session's registration sent in epoch sent: the device
 * exists (confirm: hello, or resync after a gap), was removed (4003), or
 * registration failed (1011 if never confirmed).  answered 0: the
 * connection was lost; it is sent again once the pool connection is back
 * (an unconfirmed client waits). */
static void
db_connect_answer(struct conn *c, uint32_t sent, int ok, int answered, const char *code,
		  const char *err)
{
	if (ok && sent == epoch) {
		c->registered = 1;
		conn_confirmed(c);
	} else if (ok) {
		/* The device exists; a node_reset since then re-registers it
		 * (resync follows that registration). */
		if (c->state == CONN_REGISTERING)
			conn_confirmed(c);
	} else if (answered) {
		if (code && !strcmp(code, "P0002")) {
			/* Removed or never registered: no hello, nothing else. */
			stats.revoked++;
			log_msg(LOG_INFO, c->id, "user %lld device %d: %s", (long long)c->user,
				(int)c->device, err ? err : "unknown device");
			conn_close(c, CLOSE_REVOKED, "device revoked");
		} else {
			log_msg(LOG_WARN, c->id, "chat.connect failed: %s", err ? err : "?");
			if (c->state == CONN_REGISTERING)
				conn_close(c, CLOSE_INTERNAL, "session registration failed");
		}
	}
}

/* P_CONNECT answered (one session). */
static void
db_done_connect(struct pgconn *pc, struct pending *p, const struct outcome *o)
{
	session_inflight--;
	pc->connects_inflight--;
	db_connect_answer(p->conn, p->epoch, o->ok, o->res != NULL,
			  o->res ? PQresultErrorField(o->res, PG_DIAG_SQLSTATE) : NULL, o->err);
	db_batch_flush(pc);		/* what queued meanwhile goes now */
}

/* --trace-latency: the response with its hops (trace.c). */
static void
db_send_traced(struct conn *c, const struct pending *p, const struct outcome *o)
{
	size_t len = (size_t)PQgetlength(o->res, 0, 0), n;
	char *t = trace_response(PQgetvalue(o->res, 0, 0), len, p->trace_rx, p->trace_db, &n);

	if (t)
		conn_send_text(c, t, n);
	else
		conn_send_text(c, PQgetvalue(o->res, 0, 0), len);
	free(t);
}

/* P_REQUEST answered: the response frame (chat.client_request always puts
 * the request's id in it), or an error frame made here. */
static void
db_done_request(struct pending *p, const struct outcome *o)
{
	struct conn *c = p->conn;
	const char *id = *p->id ? p->id : NULL;

	metrics_latency(now_us() - p->start_us);
	c->inflight--;
	/* Consumed whatever the client does: a client that left, or was
	 * closed 4009 for not reading, loses its answers here and never
	 * holds up the others sharing this pool connection. */
	if (!CONN_OPEN(c))
		return;
	if (o->ok && PQntuples(o->res) == 1 && !PQgetisnull(o->res, 0, 0)) {
		if (cfg.trace_latency)
			db_send_traced(c, p, o);
		else
			conn_send_text(c, PQgetvalue(o->res, 0, 0), (size_t)PQgetlength(o->res, 0, 0));
	} else if (o->res && o->st == PGRES_FATAL_ERROR) {
		const char *code = PQresultErrorField(o->res, PG_DIAG_SQLSTATE);
		stats.request_errors++;
		ws_send_error(c, id, code ? code : "XX000", o->err ? o->err : "request failed");
		/* client_request turns every error into a frame except one:
		 * the device does not exist (removed after we confirmed it,
		 * and its revoked event missed). */
		if (code && !strcmp(code, "P0002")) {
			stats.revoked++;
			conn_close(c, CLOSE_REVOKED, "device revoked");
		}
	} else {
		stats.request_errors++;
		ws_send_error(c, id, "08006", o->res ? "request returned no result" :
			      p->timed_out ? "database did not answer in time (--request-timeout); "
					     "the request may or may not have been applied" :
			      "database connection lost; the request may or may not have been applied");
	}
}

/* P_REF answered: the stored message's event, or a failure (route.c resyncs). */
static void
db_done_ref(struct pending *p, const struct outcome *o)
{
	if (o->ok && PQntuples(o->res) == 1 && !PQgetisnull(o->res, 0, 0)) {
		route_ref_done(p->event, PQgetvalue(o->res, 0, 0), (size_t)PQgetlength(o->res, 0, 0));
	} else {
		log_msg(LOG_WARN, 0, "ref message lookup failed: %s", o->err ? o->err : "connection lost");
		route_ref_done(p->event, NULL, 0);
	}
}

/* Logs a failed query whose answer needs no other action. */
static void
db_done_log(const struct outcome *o, int level, const char *what)
{
	if (!o->ok && o->res)
		log_msg(level, 0, "%s failed: %s", what, o->err ? o->err : "?");
}

/* Sharded: each partition's last chat.notifier_stats() (-1: unknown);
 * /metrics shows the sums over the partitions known. */
static int64_t *part_fallbacks, *part_queued;

/* Sharded: partition part's notifier numbers; the sums into the slot. */
static void
db_part_nstats(int part, int64_t fallbacks, int64_t queued)
{
	int64_t fb = -1, qb = -1;

	if (!part_fallbacks) {
		part_fallbacks = xcalloc((size_t)n_parts, sizeof(*part_fallbacks));
		part_queued = xcalloc((size_t)n_parts, sizeof(*part_queued));
		for (int i = 0; i < n_parts; i++)
			part_fallbacks[i] = part_queued[i] = -1;
	}
	part_fallbacks[part] = fallbacks;
	part_queued[part] = queued;
	for (int i = 0; i < n_parts; i++) {
		if (part_fallbacks[i] >= 0)
			fb = (fb < 0 ? 0 : fb) + part_fallbacks[i];
		if (part_queued[i] >= 0)
			qb = (qb < 0 ? 0 : qb) + part_queued[i];
	}
	stats.notifier_fallbacks = fb;
	stats.notifier_queued_bytes = qb;
}

/* P_NSTATS answered: the notifier's fallbacks and queued bytes for
 * /metrics (a role that may not call chat.notifier_stats() leaves them
 * unknown; logged once). */
static void
db_done_nstats(struct pgconn *pc, const struct outcome *o)
{
	static int warned;

	pc->nstats_inflight = 0;
	if (o->ok && PQntuples(o->res) == 1 && PQnfields(o->res) == 2) {
		int64_t fb = PQgetisnull(o->res, 0, 0) ? -1 : strtoll(PQgetvalue(o->res, 0, 0), NULL, 10);
		int64_t qb = PQgetisnull(o->res, 0, 1) ? -1 : strtoll(PQgetvalue(o->res, 0, 1), NULL, 10);

		if (pc->part >= 0 && n_parts > 0)
			db_part_nstats(pc->part, fb, qb);
		else {
			stats.notifier_fallbacks = fb;
			stats.notifier_queued_bytes = qb;
		}
	} else if (o->res && !warned) {
		warned = 1;
		log_msg(LOG_WARN, 0, "chat.notifier_stats() failed (metrics chat_notifier_* left out): %s",
			o->err ? o->err : "?");
	}
}

/* Monitoring (issue 11): P_NHIST answered: the notifier's histograms for
 * /metrics, row by row into metrics.c (which validates them); a failure
 * (an extension without the function, a role without the grant) leaves
 * them unknown, logged once. */
static void
db_done_nhist(struct pgconn *pc, const struct outcome *o)
{
	static int warned;

	pc->nhist_inflight = 0;
	if (o->ok && PQnfields(o->res) == 4) {
		for (int i = 0; i < PQntuples(o->res); i++) {
			const char *sum = PQgetisnull(o->res, i, 3) ? NULL : PQgetvalue(o->res, i, 3);

			if (pc->part >= 0 && n_parts > 0)
				metrics_notifier_hist_part(pc->part, n_parts, PQgetvalue(o->res, i, 0),
							   PQgetvalue(o->res, i, 1), PQgetvalue(o->res, i, 2), sum);
			else
				metrics_notifier_hist(PQgetvalue(o->res, i, 0), PQgetvalue(o->res, i, 1),
						      PQgetvalue(o->res, i, 2), sum);
		}
		return;
	}
	if (!o->res)		/* the connection was lost: keep the last copy */
		return;
	if (pc->part >= 0 && n_parts > 0)
		metrics_notifier_hist_part(pc->part, n_parts, NULL, NULL, NULL, NULL);
	else
		metrics_notifier_hist(NULL, NULL, NULL, NULL);
	if (!warned) {
		warned = 1;
		log_msg(LOG_WARN, 0, "chat.notifier_histograms() failed (metrics chat_notifier_*_events "
			"left out): %s", o->err ? o->err : "?");
	}
}

/* Called for each answered (or failed: res NULL) pending entry: hands it
 * to the handler of its kind, then frees it and drops its conn reference. */
static void
db_complete(struct pgconn *pc, struct pending *p)
{
	struct outcome o = { .res = p->res };

	o.st = o.res ? PQresultStatus(o.res) : PGRES_FATAL_ERROR;
	o.ok = o.res && (o.st == PGRES_TUPLES_OK || o.st == PGRES_COMMAND_OK);
	o.err = o.res ? PQresultErrorField(o.res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	switch (p->kind) {
	case P_PREPARE:
		db_done_prepare(pc, &o);
		break;
	case P_LISTEN:
		if (!o.ok && o.res) {
			log_msg(LOG_ERROR, 0, "LISTEN failed: %s", o.err ? o.err : "?");
			db_kill(pc, "LISTEN failed");
		}
		break;
	case P_RESET:
		db_done_reset(pc, &o);
		break;
	case P_HEARTBEAT:
		pc->heartbeat_inflight = 0;
		db_done_log(&o, LOG_WARN, "chat.node_heartbeat");
		break;
	case P_CONNECT:
		db_done_connect(pc, p, &o);
		break;
	case P_CONNECT_MANY:
		db_done_connect_many(pc, p, &o);
		break;
	case P_DISCONNECT:
		session_inflight--;
		db_done_log(&o, LOG_WARN, "chat.disconnect");
		break;
	case P_REQUEST:
		pc->requests--;
		db_done_request(p, &o);
		break;
	case P_REF:
		db_done_ref(p, &o);
		break;
	case P_FINAL:
		db_done_log(&o, LOG_WARN, "chat.node_stop at shutdown");
		shutdown_done = 1;
		break;
	case P_PROBE:
		db_done_log(&o, LOG_WARN, "liveness probe");
		break;
	case P_NSTATS:
		db_done_nstats(pc, &o);
		break;
	case P_NHIST:
		db_done_nhist(pc, &o);
		break;
	case P_PART_RESET:
		db_done_part_reset(pc, &o);
		break;
	}
	if (p->conn)
		conn_unref(p->conn);
	PQclear(o.res);
	free(p);
}
/* Matches the results available now to the pending FIFO. */
static void
db_process(struct pgconn *pc)
{
	int nulls = 0;

	while (pc->pg && pc->head && !PQisBusy(pc->pg)) {
		struct pending *p = pc->head;
		PGresult *res = PQgetResult(pc->pg);

		if (!res) {
			if (!p->seen || ++nulls > 1)
				break;
			continue;	/* end of this query's results; its sync follows */
		}
		nulls = 0;
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
			PQclear(res);
			pc->head = p->next;
			if (!pc->head)
				pc->tail = NULL;
			db_complete(pc, p);
			continue;
		}
		p->seen = 1;
		if (!p->res)
			p->res = res;
		else
			PQclear(res);
	}
}

/* Delivers every buffered notification (they do not wake the socket again). */
static void
db_notifies(struct pgconn *pc)
{
	PGnotify *n;

	while (pc->pg && (n = PQnotifies(pc->pg))) {
		route_notify(n->extra);
		PQfreemem(n);
	}
}


/* The connection is up: pipeline mode, adopt the socket, queue the set-up. */
static void
db_connected(struct pgconn *pc)
{
	lws_sock_file_fd_type u;
	int fd;

	if (PQsetnonblocking(pc->pg, 1) != 0 || !PQenterPipelineMode(pc->pg)) {
		db_lost(pc, PQerrorMessage(pc->pg));
		return;
	}
	PQsetNoticeProcessor(pc->pg, db_notice, NULL);
	fd = dup(PQsocket(pc->pg));
	if (fd < 0) {
		db_lost(pc, "dup failed");
		return;
	}
	u.filefd = fd;
	pc->wsi = lws_adopt_descriptor_vhost(db_vhost, LWS_ADOPT_RAW_FILE_DESC, u, "pg", NULL);
	if (!pc->wsi) {
		close(fd);
		db_lost(pc, "lws could not adopt the socket");
		return;
	}
	lws_set_opaque_user_data(pc->wsi, pc);
	pc->state = PG_SETUP;
	pc->last_rx_us = now_us();

	if (pc->index >= 0) {
		if (!PQsendPrepare(pc->pg, "req", SQL_REQUEST, 4, NULL) || !PQpipelineSync(pc->pg)) {
			db_kill(pc, PQerrorMessage(pc->pg));
			return;
		}
		struct pending *p = xcalloc(1, sizeof(*p) + 1);
		p->kind = P_PREPARE;
		p->start_us = now_us();		/* db_watch bounds the set-up too */
		pc->head = pc->tail = p;
		db_flush(pc);
		return;
	}

	if (n_parts > 0 && db_sharded_setup(pc))
		return;
	char listen_sql[80];
	const char *node[1] = { cfg.node };
	snprintf(listen_sql, sizeof(listen_sql), "LISTEN \"chat_node_%s\"", cfg.node);
	if (!db_send(pc, P_LISTEN, NULL, listen_sql, 0, NULL, NULL) ||
	    !db_send(pc, P_RESET, NULL, "SELECT chat.node_reset($1)", 1, node, NULL))
		return;
}

/* True when fd is ready for what PQconnectPoll asked (a poll() that does
 * not wait); also when there is no socket to wait for. */
static int
db_sock_ready(int fd, int want)
{
	struct pollfd p = { .fd = fd, .events = want == PGRES_POLLING_READING ? POLLIN : POLLOUT };

	if (fd < 0 || (want != PGRES_POLLING_READING && want != PGRES_POLLING_WRITING))
		return 1;
	return poll(&p, 1, 0) > 0;
}

/* Connect timer: polls PQconnectPoll until the connection is up or failed. */
static void
db_connect_poll(lws_sorted_usec_list_t *sul)
{
	struct pgconn *pc = PGCONN_OF_SUL(sul);
	PostgresPollingStatusType st;

	if (pc->state == PG_DOWN) {
		db_connect_begin(pc);
		return;
	}
	/* PQconnectPoll only once the socket is ready as it asked: called
	 * early it takes a connect still in progress for done and waits,
	 * blocking, to send the startup packet (the whole loop stalled for
	 * the ARP timeout when the database's network was down). */
	if (!db_sock_ready(PQsocket(pc->pg), pc->poll_want))
		st = (PostgresPollingStatusType)pc->poll_want;
	else
		st = PQconnectPoll(pc->pg);
	pc->poll_want = st;
	if (st == PGRES_POLLING_OK) {
		db_connected(pc);
		return;
	}
	if (st == PGRES_POLLING_FAILED) {
		db_lost(pc, PQerrorMessage(pc->pg));
		return;
	}
	if (now_us() - pc->connect_started >
	    (uint64_t)(cfg.request_timeout < 2 ? 2 : cfg.request_timeout) * LWS_US_PER_SEC) {
		db_lost(pc, "connection attempt timed out (--request-timeout)");
		return;
	}
	lws_sul_schedule(db_context, 0, &pc->sul, db_connect_poll,
			 now_us() - pc->connect_started < 50000 ? 500 : 5000);
}

/* Starts an asynchronous connection attempt. */
static void
db_connect_begin(struct pgconn *pc)
{
	/* A silent server (network partition, dead host) is noticed by TCP
	 * within --request-timeout: keepalive probes after half of it, and
	 * tcp_user_timeout for data the server never acknowledges.  They come
	 * before dbname so that --dsn may override them. */
	static const char *const keys[] = {
		"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
		"tcp_user_timeout", "dbname", "application_name", NULL
	};
	char appname[64], idle[16], count[16], user_timeout[16];
	const char *values[8] = { "1", idle, "1", count, user_timeout, pc->dsn ? pc->dsn : cfg.dsn, appname, NULL };
	int half = cfg.request_timeout / 2 > 0 ? cfg.request_timeout / 2 : 1;

	if (stopping)
		return;
	snprintf(idle, sizeof(idle), "%d", half);
	snprintf(count, sizeof(count), "%d", cfg.request_timeout - half > 0 ? cfg.request_timeout - half : 1);
	snprintf(user_timeout, sizeof(user_timeout), "%d", cfg.request_timeout * 1000);
	snprintf(appname, sizeof(appname), "chat-gateway %s", cfg.node);
	pc->pg = PQconnectStartParams(keys, values, 1);
	if (!pc->pg || PQstatus(pc->pg) == CONNECTION_BAD) {
		pc->state = PG_CONNECTING;
		db_lost(pc, pc->pg ? PQerrorMessage(pc->pg) : "out of memory");
		return;
	}
	pc->state = PG_CONNECTING;
	pc->poll_want = PGRES_POLLING_WRITING;	/* libpq's contract after PQconnectStart */
	pc->connect_started = now_us();
	lws_sul_schedule(db_context, 0, &pc->sul, db_connect_poll, 200);
}

/* Schedules a reconnect with exponential backoff and jitter (0.5 to 1 x). */
static void
db_retry(struct pgconn *pc)
{
	uint32_t ms;

	pc->backoff_ms = pc->backoff_ms ? pc->backoff_ms * 2 : 100;
	if (pc->backoff_ms > 5000)
		pc->backoff_ms = 5000;
	ms = pc->backoff_ms / 2 + (uint32_t)(random() % (pc->backoff_ms / 2 + 1));
	lws_sul_schedule(db_context, 0, &pc->sul, db_connect_poll, (lws_usec_t)ms * 1000);
}

/* Forgets a dead connection: fails its pending entries and reconnects later. */
static void
db_lost(struct pgconn *pc, const char *why)
{
	struct pending *p;

	if (pc->state == PG_DOWN)
		return;
	if (stopping)
		log_msg(LOG_DEBUG, 0, "%s connection closed", pc_name(pc));
	else
		log_msg(pc->state >= PG_SETUP ? LOG_ERROR : LOG_WARN, 0, "%s connection %s: %.*s",
			pc_name(pc), pc->state >= PG_SETUP ? "lost" : "failed",
			(int)strcspn(why ? why : "", "\n"), why ? why : "");
	pc->state = PG_DOWN;
	pc->heartbeat_inflight = 0;
	pc->nstats_inflight = 0;
	pc->nhist_inflight = 0;
	for (p = pc->head; p; p = p->next)
		p->timed_out = (uint8_t)pc->timed_out;
	pc->timed_out = 0;
	if (pc->wsi) {
		lws_set_opaque_user_data(pc->wsi, NULL);
		lws_set_timeout(pc->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
		pc->wsi = NULL;
	}
	if (pc->pg) {
		PQfinish(pc->pg);
		pc->pg = NULL;
	}
	while ((p = pc->head)) {
		pc->head = p->next;
		if (!pc->head)
			pc->tail = NULL;
		PQclear(p->res);
		p->res = NULL;
		db_complete(pc, p);
	}
	pc->tail = NULL;
	db_batch_flush(pc);		/* drops the queue: registered again when back */
	if (pc == &ctl && stopping)
		shutdown_done = 1;
	if (!stopping)
		db_retry(pc);
}

/*
 * The connection for the periodic maintenance calls (node_heartbeat,
 * notifier_stats): the maintenance connection; while it is down, the ready
 * pool connection with the fewest requests waiting; the control connection
 * only when nothing else is up.  Not the control connection: it LISTENs,
 * and PostgreSQL hands a backend's notifications over only between its
 * transactions, so every millisecond of a heartbeat there (40-110 ms on a
 * busy machine, 460 ms for a presence sweep after a mass disconnect) held
 * up every live event of this node.  Not a pool connection either: the
 * requests pipelined behind the heartbeat would wait for it
 * (bench/RESULTS.md, "Where the tail comes from").
 */
static struct pgconn *
db_maint_conn(void)
{
	struct pgconn *best = NULL;

	if (maint.state == PG_READY)
		return &maint;
	for (int i = 0; i < cfg.pool; i++)
		if (pool[i].state == PG_READY && (!best || pool[i].requests < best->requests))
			best = &pool[i];
	return best ? best : (ctl.state == PG_READY ? &ctl : NULL);
}

/* True while a maintenance call of this kind (0 node_heartbeat, 1
 * notifier_stats, 2 notifier_histograms) is unanswered on any connection. */
static int
db_maint_inflight(int kind)
{
	struct pgconn *pcs[2] = { &ctl, &maint };

	for (int i = -2; i < cfg.pool; i++) {
		struct pgconn *pc = i < 0 ? pcs[i + 2] : &pool[i];

		if (kind == 0 ? pc->heartbeat_inflight : kind == 1 ? pc->nstats_inflight : pc->nhist_inflight)
			return 1;
	}
	return 0;
}

/* Every --node-heartbeat seconds: chat.node_heartbeat on the maintenance
 * connection (db_maint_conn); sharded, on every partition. */
static void
db_heartbeat(lws_sorted_usec_list_t *sul)
{
	const char *node[1] = { cfg.node };
	struct pgconn *pc;

	(void)sul;
	db_sharded_heartbeat();
	if (n_parts == 0 && !stopping && !db_maint_inflight(0) && (pc = db_maint_conn()) &&
	    db_send(pc, P_HEARTBEAT, NULL, "SELECT chat.node_heartbeat($1)", 1, node, NULL))
		pc->heartbeat_inflight = 1;
	lws_sul_schedule(db_context, 0, &sul_heartbeat, db_heartbeat,
			 (lws_usec_t)cfg.node_heartbeat * LWS_US_PER_SEC);
}

/* Monitoring (issue 11): how often the notifier's numbers are read for
 * /metrics.  Two read-only queries on the maintenance connection (no WAL,
 * no commit flush, never the LISTEN connection), apart from the heartbeat
 * so that its interval (a write) does not decide the metrics' resolution. */
#define NOTIFIER_READ_US (2 * LWS_US_PER_SEC)

/* Queues the notifier reads for /metrics on pc: the stats and/or the
 * histograms, each unless one is unanswered there already. */
static void
db_read_notifier_on(struct pgconn *pc, int want_stats, int want_hist)
{
	if (want_stats && !pc->nstats_inflight &&
	    db_send(pc, P_NSTATS, NULL,
		    "SELECT fallbacks, queued_bytes FROM chat.notifier_stats()", 0, NULL, NULL))
		pc->nstats_inflight = 1;
	if (want_hist && !pc->nhist_inflight &&
	    db_send(pc, P_NHIST, NULL,
		    "SELECT histogram, bounds, cumulative, sum FROM chat.notifier_histograms()",
		    0, NULL, NULL))
		pc->nhist_inflight = 1;
}

/* Every 2 s: chat.notifier_stats() and chat.notifier_histograms() for /metrics. */
static void
db_read_notifier(lws_sorted_usec_list_t *sul)
{
	struct pgconn *pc;

	(void)sul;
	if (stopping)
		return;
	/* Sharded: ctl talks to the proxy, which has no notifier; each
	 * partition's is read on that partition's maintenance connection
	 * (never its LISTEN one), and /metrics shows their sum.  Otherwise
	 * on the maintenance connection, or the pool connection standing in
	 * for it, each read unless one is unanswered on any of them. */
	for (int i = 0; i < n_parts; i++)
		if (pmaint[i].state == PG_READY)
			db_read_notifier_on(&pmaint[i], 1, 1);
	if (n_parts == 0 && (pc = db_maint_conn()))
		db_read_notifier_on(pc, !db_maint_inflight(1), !db_maint_inflight(2));
	lws_sul_schedule(db_context, 0, &sul_nread, db_read_notifier, NOTIFIER_READ_US);
}

/* Connects the control connection and the pool (asynchronously) and starts the heartbeat. */
void
db_start(struct lws_context *ctx, struct lws_vhost *vhost, void (*on_ready)(void))
{
	db_context = ctx;
	db_vhost = vhost;
	db_on_ready = on_ready;
	stats.notifier_fallbacks = stats.notifier_queued_bytes = -1;	/* unknown until read */
	pool = xcalloc((size_t)cfg.pool, sizeof(*pool));
	ctl.index = -1;
	ctl.part = -1;
	db_connect_begin(&ctl);
	db_sharded_start();
	for (int i = 0; i < cfg.pool; i++) {
		pool[i].index = i;
		pool[i].part = -1;
		db_connect_begin(&pool[i]);
	}
	/* set up like a pool connection (it prepares "req", never used), but
	 * no request or session is ever routed to it; sharded, the heartbeat
	 * goes to the partitions instead */
	maint.index = cfg.pool;
	maint.part = -1;
	maint.maint = 1;
	if (n_parts == 0)
		db_connect_begin(&maint);
	lws_sul_schedule(db_context, 0, &sul_heartbeat, db_heartbeat,
			 (lws_usec_t)cfg.node_heartbeat * LWS_US_PER_SEC);
	lws_sul_schedule(db_context, 0, &sul_nread, db_read_notifier, NOTIFIER_READ_US);
	lws_sul_schedule(db_context, 0, &sul_watch, db_watch, 250 * LWS_US_PER_MS);
}

/* ---- silent database: request deadline, liveness probe, busy (issue 17) ---- */

#define WATCH_PROBE_IDLE_US (1 * LWS_US_PER_SEC)

/* Checks one connection: its oldest unanswered query past --request-timeout
 * closes it (every pending request is answered 08006 at once, the
 * connection reconnects); an idle one gets a SELECT 1 so that a silent
 * server is noticed even when no client asks anything. */
static void
db_watch_one(struct pgconn *pc, uint64_t now)
{
	uint64_t limit = (uint64_t)cfg.request_timeout * LWS_US_PER_SEC;

	if (pc->state < PG_SETUP)
		return;
	if (pc->head && now - pc->head->start_us > limit) {
		stats.db_timeouts++;
		pc->timed_out = 1;
		db_lost(pc, "no answer within --request-timeout");
		return;
	}
	if (pc->state == PG_READY && !pc->head && !stopping &&
	    now - pc->last_rx_us > WATCH_PROBE_IDLE_US)
		db_send(pc, P_PROBE, NULL, "SELECT 1", 0, NULL, NULL);
}

/* Every 250 ms: the deadline and the liveness probe of every connection. */
static void
db_watch(lws_sorted_usec_list_t *sul)
{
	uint64_t now = now_us();
	static uint64_t last_tick;

	(void)sul;
	/* Nothing in the loop may block: say so when it did. */
	if (last_tick && now - last_tick > 750 * LWS_US_PER_MS)
		log_msg(LOG_WARN, 0, "event loop stalled for %llu ms", (unsigned long long)(now - last_tick) / 1000);
	last_tick = now;
	db_watch_one(&ctl, now);
	db_watch_one(&maint, now);
	/* sharded: both connections of each partition; a silent partition's
	 * LISTEN connection would otherwise look ready while no event came */
	for (int i = 0; i < n_parts; i++) {
		db_watch_one(&parts[i], now);
		db_watch_one(&pmaint[i], now);
	}
	for (int i = 0; i < cfg.pool; i++)
		db_watch_one(&pool[i], now);
	lws_sul_schedule(db_context, 0, &sul_watch, db_watch, 250 * LWS_US_PER_MS);
}

/* True when a connection is ready and its oldest query has waited at most
 * half of --request-timeout: beyond, requests are refused busy and
 * /healthz answers 503 before the deadline closes the connection. */
static int
db_pc_prompt(const struct pgconn *pc, uint64_t now)
{
	return pc->state == PG_READY &&
	       (!pc->head || now - pc->head->start_us <=
			     (uint64_t)cfg.request_timeout * LWS_US_PER_SEC / 2);
}

/* /healthz: every connection ready and prompt. */
int
db_healthy(void)
{
	uint64_t now = now_us();

	if (!db_pc_prompt(&ctl, now))
		return 0;
	for (int i = 0; i < cfg.pool; i++)
		if (!db_pc_prompt(&pool[i], now))
			return 0;
	return 1;
}

/* True when a new request on pc must be refused busy: --pool-queue
 * requests already wait there, or the oldest has waited over half of
 * --request-timeout (the database is slower than the load). */
static int
db_busy(const struct pgconn *pc)
{
	return pc->requests >= cfg.pool_queue || !db_pc_prompt(pc, now_us());
}

/* ---- end of the silent-database block ---- */

/* True when the control connection and every pool connection are ready (/healthz). */
int
db_ready(void)
{
	if (ctl.state != PG_READY)
		return 0;
	for (int i = 0; i < cfg.pool; i++)
		if (pool[i].state != PG_READY)
			return 0;
	return 1;
}

/* The pool connection of a (user, device): its session calls stay in order. */
static struct pgconn *
db_session_pc(int64_t user, int32_t device)
{
	uint64_t h = ((uint64_t)user * 31u + (uint32_t)device) * 0x9E3779B97F4A7C15ull;

	return &pool[(h >> 32) % (uint64_t)cfg.pool];
}

/* After node_reset: every live session is registered again (resync follows). */
static void
db_reregister(struct conn *c, void *arg)
{
	(void)arg;
	c->registered = 0;
	if (CONN_OPEN(c))
		db_session_connect(c);	/* cannot be sent now: db_register_pending later */
}

/* A pool connection is back: registers the sessions that wait for it. */
static void
db_register_pending(struct conn *c, void *arg)
{
	if (!c->registered && CONN_OPEN(c) && db_session_pc(c->user, c->device) == arg)
		db_session_connect(c);
}

/* Reports readiness (server.c opens the port) the first time the node is
 * registered and the whole pool is up. */
static void
db_maybe_listen(void)
{
	if (listening || stopping || !db_ready())
		return;
	listening = 1;
	db_on_ready();
}

/* Sends a client frame through chat.client_request on the client's pool connection. */
void
db_request(struct conn *c, const char *frame, size_t len, const char *id_json)
{
	static char *buf;
	static size_t cap;
	struct pgconn *pc = &pool[c->id % (uint32_t)cfg.pool];
	char user[24], device[16];
	const char *values[4] = { cfg.node, user, device, NULL };
	struct pending *p;

	if (pc->state != PG_READY) {
		stats.request_errors++;
		ws_send_error(c, id_json, "08006", "database unavailable, retry later");
		return;
	}
	if (db_busy(pc)) {
		stats.request_errors++;
		stats.busy_refused++;
		ws_send_error(c, id_json, "53400", "busy: the database is not keeping up; retry later");
		return;
	}
	if (len + 1 > cap) {
		cap = len + 1 > 4096 ? len + 1 : 4096;
		free(buf);
		buf = xmalloc(cap);
	}
	memcpy(buf, frame, len);
	buf[len] = '\0';
	values[3] = buf;
	snprintf(user, sizeof(user), "%lld", (long long)c->user);
	snprintf(device, sizeof(device), "%d", (int)c->device);
	uint64_t db_call = cfg.trace_latency ? trace_wall_us() : 0;
	p = db_send(pc, P_REQUEST, "req", NULL, 4, values, id_json);
	if (!p) {
		stats.request_errors++;
		ws_send_error(c, id_json, "08006", "database unavailable, retry later");
		return;
	}
	p->trace_rx = trace_rx_us;
	p->trace_db = db_call;
	stats.requests++;
	pc->requests++;
	p->conn = c;
	c->inflight++;
	conn_ref(c);
}

/* ---- connect batching (issue 11) ----
 *
 * A connection storm (every client of a restarted gateway coming back at
 * once) used to cost one chat.connect round trip and one commit per
 * client.  Now db_session_connect queues the session on its pool
 * connection; the queue goes out at the end of the event-loop turn when
 * that connection has no registration in flight, else as soon as the one
 * in flight is answered (or when BATCH_MAX sessions wait): a lone
 * connection is registered at once with chat.connect as before, a storm
 * in batches of chat.connect_many (one subtransaction per session inside,
 * so each session's presence and error are chat.connect's own).  Order
 * stays per (user, device): a disconnect first sends the queue of its
 * pool connection.  A database without chat.connect_many (an extension
 * older than 0.4.0) or a role without EXECUTE on it: one chat.connect per
 * session from then on. */
#define BATCH_MAX 256
static lws_sorted_usec_list_t sul_batch;
static int batch_scheduled, connect_many_off;

static const char SQL_CONNECT_MANY[] =
	"SELECT idx, code, message FROM chat.connect_many($1, $2::bigint[], $3::integer[])";

/* chat.connect for one session (takes over the queue's reference on c). */
static void
db_connect_one(struct pgconn *pc, struct conn *c)
{
	char user[24], device[16];
	const char *values[3] = { cfg.node, user, device };
	struct pending *p;

	snprintf(user, sizeof(user), "%lld", (long long)c->user);
	snprintf(device, sizeof(device), "%d", (int)c->device);
	p = db_send(pc, P_CONNECT, NULL, "SELECT chat.connect($1, $2, $3)", 3, values, NULL);
	if (!p) {
		session_inflight--;	/* registered once the connection is back */
		conn_unref(c);
		return;
	}
	p->conn = c;
	p->epoch = epoch;
	pc->connects_inflight++;
}

/* Sends pc's queued registrations now: one chat.connect for a single
 * session, else chat.connect_many; drops the queue (references, counts)
 * when pc cannot take it, leaving those sessions unregistered for
 * db_register_pending or db_reregister to send again. */
static void
db_batch_flush(struct pgconn *pc)
{
	struct conn **b = pc->batch;
	uint32_t n = pc->batch_n;
	char *users, *devices, *u, *d;
	const char *values[3];
	struct pending *p;

	if (!n)
		return;
	pc->batch = NULL;
	pc->batch_n = pc->batch_cap = 0;
	for (uint32_t i = 0; i < n; i++)
		b[i]->reg_queued = 0;
	if (ctl.state != PG_READY || pc->state != PG_READY || stopping) {
		for (uint32_t i = 0; i < n; i++) {
			session_inflight--;
			conn_unref(b[i]);
		}
		free(b);
		return;
	}
	if (n == 1 || connect_many_off) {
		for (uint32_t i = 0; i < n; i++)
			db_connect_one(pc, b[i]);
		free(b);
		return;
	}
	/* {1,2,...}: at most 20 digits and a sign or separator each */
	u = users = xmalloc((size_t)n * 22 + 3);
	d = devices = xmalloc((size_t)n * 13 + 3);
	*u++ = '{';
	*d++ = '{';
	for (uint32_t i = 0; i < n; i++) {
		u += sprintf(u, "%s%lld", i ? "," : "", (long long)b[i]->user);
		d += sprintf(d, "%s%d", i ? "," : "", (int)b[i]->device);
	}
	strcpy(u, "}");
	strcpy(d, "}");
	values[0] = cfg.node;
	values[1] = users;
	values[2] = devices;
	p = db_send(pc, P_CONNECT_MANY, NULL, SQL_CONNECT_MANY, 3, values, NULL);
	free(users);
	free(devices);
	if (!p) {
		for (uint32_t i = 0; i < n; i++) {
			session_inflight--;
			conn_unref(b[i]);
		}
		free(b);
		return;
	}
	p->batch = b;
	p->batch_n = n;
	p->epoch = epoch;
	pc->connects_inflight++;
	log_msg(LOG_DEBUG, 0, "%s: chat.connect_many with %u sessions", pc_name(pc), n);
}

/* P_CONNECT_MANY answered: each session gets its own row's outcome; a
 * failure of the whole call (or a lost connection) is each session's. */
static void
db_done_connect_many(struct pgconn *pc, struct pending *p, const struct outcome *o)
{
	const char *code = o->res ? PQresultErrorField(o->res, PG_DIAG_SQLSTATE) : NULL;
	uint8_t *seen = xcalloc(p->batch_n, 1);

	pc->connects_inflight--;
	if (!o->ok && code && (!strcmp(code, "42883") || !strcmp(code, "42501"))) {
		if (!connect_many_off)
			log_msg(LOG_WARN, 0, "chat.connect_many unavailable (%s: %s): one chat.connect "
				"per session from now on", code, o->err ? o->err : "?");
		connect_many_off = 1;
		/* Each session again, alone (queued: still in order). */
		for (uint32_t i = 0; i < p->batch_n; i++) {
			struct conn *c = p->batch[i];
			session_inflight--;
			if (CONN_OPEN(c))
				db_session_connect(c);
			conn_unref(c);
		}
		p->batch_n = 0;
	}
	if (o->ok && PQnfields(o->res) == 3) {
		for (int r = 0; r < PQntuples(o->res); r++) {
			long i = strtol(PQgetvalue(o->res, r, 0), NULL, 10) - 1;
			int ok;

			if (i < 0 || i >= (long)p->batch_n || seen[i])
				continue;
			seen[i] = 1;
			ok = !strcmp(PQgetvalue(o->res, r, 1), "00000");
			db_connect_answer(p->batch[i], p->epoch, ok, 1, ok ? NULL : PQgetvalue(o->res, r, 1),
					  PQgetisnull(o->res, r, 2) ? NULL : PQgetvalue(o->res, r, 2));
		}
	}
	for (uint32_t i = 0; i < p->batch_n; i++) {
		if (!seen[i])
			db_connect_answer(p->batch[i], p->epoch, 0, o->res != NULL, code,
					  o->ok ? "chat.connect_many returned no row for the session" : o->err);
		session_inflight--;
		conn_unref(p->batch[i]);
	}
	free(seen);
	free(p->batch);
	p->batch = NULL;
	db_batch_flush(pc);		/* what queued meanwhile goes now */
}

/* End of the loop turn: every pool connection with no registration in
 * flight sends its queue (the others send theirs when answered). */
static void
db_batch_tick(lws_sorted_usec_list_t *sul)
{
	(void)sul;
	batch_scheduled = 0;
	for (int i = 0; i < cfg.pool; i++)
		if (pool[i].batch_n && (!pool[i].connects_inflight || pool[i].state != PG_READY || stopping))
			db_batch_flush(&pool[i]);
}

/* Registers c's session (chat.connect) on its (user, device) pool
 * connection: queued for the end of this loop turn; -1 when it cannot be
 * sent now (the session is registered once the database is back). */
int
db_session_connect(struct conn *c)
{
	struct pgconn *pc = db_session_pc(c->user, c->device);

	if (ctl.state != PG_READY || pc->state != PG_READY || stopping)
		return -1;
	if (c->reg_queued)
		return 0;
	if (pc->batch_n == pc->batch_cap) {
		pc->batch_cap = pc->batch_cap ? pc->batch_cap * 2 : 16;
		pc->batch = xrealloc(pc->batch, pc->batch_cap * sizeof(*pc->batch));
	}
	pc->batch[pc->batch_n++] = c;
	conn_ref(c);
	c->reg_queued = 1;
	c->reg_sent = 1;
	session_inflight++;
	if (pc->batch_n >= BATCH_MAX) {
		db_batch_flush(pc);
	} else if (!batch_scheduled) {
		batch_scheduled = 1;
		lws_sul_schedule(db_context, 0, &sul_batch, db_batch_tick, 1);
	}
	return 0;
}

/* ---- end of connect batching ---- */

/* Sends chat.disconnect for a closed connection (best effort). */
void
db_session_disconnect(struct conn *c)
{
	struct pgconn *pc = db_session_pc(c->user, c->device);
	char user[24], device[16];
	const char *values[3] = { cfg.node, user, device };

	/* Shutting down: the final node_stop removes every session row. */
	if (stopping)
		return;
	/* Behind its connect on the same connection (a queued connect goes
	 * first); if that one is gone, the control connection does (a later
	 * node_reset would as well). */
	db_batch_flush(pc);
	if (pc->state != PG_READY)
		pc = &ctl;
	snprintf(user, sizeof(user), "%lld", (long long)c->user);
	snprintf(device, sizeof(device), "%d", (int)c->device);
	if (db_send(pc, P_DISCONNECT, NULL, "SELECT chat.disconnect($1, $2, $3)", 3, values, NULL))
		session_inflight++;
}

/* Fetches a "ref":true message; 0 when the query was sent. */
int
db_resolve_ref(void *event, int64_t actor, int64_t conversation, int64_t seq)
{
	char a[24], c[24], s[24];
	const char *values[3] = { a, c, s };
	struct pgconn *pc = &pool[(uint64_t)conversation % (uint64_t)cfg.pool];
	struct pending *p;

	if (pc->state != PG_READY)
		return -1;
	snprintf(a, sizeof(a), "%lld", (long long)actor);
	snprintf(c, sizeof(c), "%lld", (long long)conversation);
	snprintf(s, sizeof(s), "%lld", (long long)seq);
	p = db_send(pc, P_REF, NULL, SQL_REF, 3, values, NULL);
	if (!p)
		return -1;
	p->event = event;
	return 0;
}

/* SIGTERM: no more heartbeats; the final node_stop follows (db_shutdown_done). */
void
db_shutdown(void)
{
	lws_sul_cancel(&sul_heartbeat);
	lws_sul_cancel(&sul_nread);
	final_wanted = 1;
	stopping = 1;
	for (int i = 0; pool && i < cfg.pool; i++)
		db_batch_flush(&pool[i]);	/* dropped: the final node_stop clears them all */
}

/* Called on the drain tick: the final chat.node_stop (sessions forgotten,
 * node row removed) goes once no connect or disconnect is in flight on the
 * pool (it must run after them).  It does not wait for a heartbeat still
 * running on a maintenance connection: chat.node_heartbeat does not bring
 * back the row of a node without sessions, whichever of the two commits
 * first, and waiting could outlast --drain-timeout and send nothing. */
int
db_shutdown_done(void)
{
	const char *node[1] = { cfg.node };

	if (final_wanted && !final_sent && !shutdown_done && session_inflight <= 0) {
		final_sent = 1;
		if (ctl.state < PG_SETUP ||
		    !db_send(&ctl, P_FINAL, NULL, "SELECT chat.node_stop($1)", 1, node, NULL))
			shutdown_done = 1;
	}
	return shutdown_done;
}

/* lws callback of the adopted libpq sockets. */
int
db_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct pgconn *pc = lws_get_opaque_user_data(wsi);

	(void)user;
	(void)in;
	(void)len;
	switch (reason) {
	case LWS_CALLBACK_RAW_RX_FILE:
		if (!pc || !pc->pg)
			return -1;
		pc->last_rx_us = now_us();
		if (!PQconsumeInput(pc->pg)) {
			/* Return -1: the EOF fd stays readable and would spin the loop. */
			pc->wsi = NULL;
			db_lost(pc, PQerrorMessage(pc->pg));
			return -1;
		}
		db_process(pc);
		db_notifies(pc);
		return 0;

	case LWS_CALLBACK_RAW_WRITEABLE_FILE:
		if (pc && pc->pg)
			db_flush(pc);
		return 0;

	case LWS_CALLBACK_RAW_CLOSE_FILE:
		/* Idempotent: db_lost may already have run. */
		if (pc && pc->wsi == wsi) {
			pc->wsi = NULL;
			db_lost(pc, "socket closed");
		}
		return 0;

	default:
		return 0;
	}
}

/* ---- Sharded deployment (PL/Proxy, docs/scaling.md) ----
 *
 * --dsn is the proxy database: requests and session calls go there and are
 * routed by chat_proxy.  Each partition NOTIFYs for its own conversations,
 * so the gateway keeps one connection per --listen-dsn that LISTENs and
 * runs node_reset there, and a maintenance connection per partition for
 * its node_heartbeat (never on the LISTEN connection: see db_maint_conn):
 * a partition that is down stops only its own conversations' events and
 * heartbeat.  When a partition
 * connection comes back (node_reset there dropped this node's sessions),
 * every live session is registered again and its client told to resync,
 * which recovers whatever that partition notified meanwhile. */

/* Sharded: the setup of the control connection (no LISTEN: the proxy has
 * no events; node_reset runs per partition) or of a partition connection.
 * Returns 1 when it handled pc. */
static int
db_sharded_setup(struct pgconn *pc)
{
	char listen_sql[80];
	const char *node[1] = { cfg.node };

	if (pc->part < 0) {
		db_send(pc, P_RESET, NULL, "SELECT 1", 0, NULL, NULL);
		return 1;
	}
	if (pc->maint) {
		/* nothing to prepare: ready once the partition answers */
		db_send(pc, P_PREPARE, NULL, "SELECT 1", 0, NULL, NULL);
		return 1;
	}
	snprintf(listen_sql, sizeof(listen_sql), "LISTEN \"chat_node_%s\"", cfg.node);
	if (db_send(pc, P_LISTEN, NULL, listen_sql, 0, NULL, NULL))
		db_send(pc, P_PART_RESET, NULL, "SELECT chat.node_reset($1)", 1, node, NULL);
	return 1;
}

/* P_PART_RESET answered: the partition is back (or up for the first time);
 * sessions are registered again (through the proxy) and clients resync. */
static void
db_done_part_reset(struct pgconn *pc, const struct outcome *o)
{
	if (o->ok) {
		db_now_ready(pc);
		log_msg(LOG_INFO, 0, "%s ready: node %s registered there", pc_name(pc), cfg.node);
		if (ctl.state == PG_READY) {
			epoch++;
			conn_foreach_authed(db_reregister, NULL);
		}
	} else if (o->res) {
		log_msg(LOG_ERROR, 0, "%s: chat.node_reset failed: %s", pc_name(pc), o->err ? o->err : "?");
		db_kill(pc, "node_reset failed");
	}
}

/* Sharded: chat.node_heartbeat on every partition that is up, on its
 * maintenance connection; while that one is down, on the partition's
 * LISTEN connection (events wait behind it, but the node must not be
 * declared gone there).  One unanswered heartbeat per partition at most. */
static void
db_sharded_heartbeat(void)
{
	const char *node[1] = { cfg.node };

	for (int i = 0; i < n_parts && !stopping; i++) {
		struct pgconn *pc = pmaint[i].state == PG_READY ? &pmaint[i] : &parts[i];

		if (pc->state == PG_READY && !pmaint[i].heartbeat_inflight && !parts[i].heartbeat_inflight &&
		    db_send(pc, P_HEARTBEAT, NULL, "SELECT chat.node_heartbeat($1)", 1, node, NULL))
			pc->heartbeat_inflight = 1;
	}
}

/* Sharded: two connections per --listen-dsn line, LISTEN and maintenance
 * (none without the flag). */
static void
db_sharded_start(void)
{
	char *list, *line, *save = NULL;

	if (!cfg.listen_dsn || !*cfg.listen_dsn)
		return;
	for (const char *p = cfg.listen_dsn; p; p = strchr(p + 1, '\n'))
		n_parts++;
	parts = xcalloc((size_t)n_parts, sizeof(*parts));
	pmaint = xcalloc((size_t)n_parts, sizeof(*pmaint));
	list = xstrdup(cfg.listen_dsn);
	n_parts = 0;
	for (line = strtok_r(list, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		struct pgconn *pc = &parts[n_parts];
		pc->index = -2 - n_parts;
		pc->part = n_parts++;
		pc->dsn = xstrdup(line);
		db_connect_begin(pc);
		pmaint[pc->part] = (struct pgconn){ .index = pc->index, .part = pc->part, .maint = 1, .dsn = pc->dsn };
		db_connect_begin(&pmaint[pc->part]);
	}
	free(list);
}

/* Sharded: partitions configured and how many are up (/healthz, /metrics). */
int
db_partitions(int *up)
{
	*up = 0;
	for (int i = 0; i < n_parts; i++)
		if (parts[i].state == PG_READY)
			(*up)++;
	return n_parts;
}
