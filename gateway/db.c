/* db.c: libpq connections inside the lws event loop.
 *
 * One control connection LISTENs on chat_node_<node> and runs node_reset and
 * node_heartbeat.  A pool of --pool connections carries client requests, ref
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
#include "gateway.h"

enum pg_state { PG_DOWN, PG_CONNECTING, PG_SETUP, PG_READY };

enum pending_kind {
	P_PREPARE, P_LISTEN, P_RESET, P_HEARTBEAT, P_CONNECT, P_DISCONNECT,
	P_REQUEST, P_REF, P_FINAL
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
	uint32_t epoch;			/* P_CONNECT: the epoch it was sent in */
	char id[];			/* request id as JSON, "" when none */
};

struct pgconn {
	PGconn *pg;
	struct lws *wsi;
	int index;			/* -1: the control connection */
	int state;
	int heartbeat_inflight;
	int ever_ready;
	struct pending *head, *tail;
	uint64_t connect_started;
	uint32_t backoff_ms;
	lws_sorted_usec_list_t sul;
};

static struct pgconn ctl, *pool;
static lws_sorted_usec_list_t sul_heartbeat;
static int listening, shutdown_done, final_wanted, final_sent;
static uint32_t epoch;			/* moves on with every node_reset */
static int session_inflight;		/* connect/disconnect calls unanswered */

#define PGCONN_OF_SUL(s) ((struct pgconn *)((char *)(s) - offsetof(struct pgconn, sul)))

static const char SQL_REQUEST[] = "SELECT chat.client_request($1, $2, $3, $4::jsonb)";
/* The event of a stored message, in exactly the notification's shape. */
static const char SQL_REF[] =
	"SELECT chat.message_json(m)::text FROM chat.get_message($1, $2, $3) m";

static void db_connect_begin(struct pgconn *pc);
static void db_lost(struct pgconn *pc, const char *why);
static void db_reregister(struct conn *c, void *arg);
static void db_register_pending(struct conn *c, void *arg);
static void db_maybe_listen(void);

/* Name of a connection for logs. */
static const char *
pc_name(struct pgconn *pc)
{
	static char buf[32];

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
	p = calloc(1, sizeof(*p) + id_len + 1);
	if (!p)
		abort();		/* the pipeline would lose its alignment */
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

/* Answers a request; adds the request's id when the result lacks one. */
static void
db_reply(struct conn *c, const char *id_json, const char *text)
{
	const char *p = text;
	size_t len = strlen(text);

	while (*p == ' ')
		p++;
	if (*id_json && *p == '{') {
		const char *q = p + 1;
		while (*q == ' ')
			q++;
		if (strncmp(q, "\"id\"", 4) != 0) {
			size_t id_len = strlen(id_json), rest = len - (size_t)(q - text);
			char *buf = malloc(id_len + rest + 16);
			int n;

			if (!buf)
				return;
			n = snprintf(buf, id_len + 16, "{\"id\":%s%s", id_json, *q == '}' ? "" : ",");
			memcpy(buf + n, q, rest);
			ws_send_text(c, buf, (size_t)n + rest);
			free(buf);
			return;
		}
	}
	ws_send_text(c, text, len);
}

/* Called for each answered (or failed: res NULL) pending entry. */
static void
db_complete(struct pgconn *pc, struct pending *p)
{
	PGresult *res = p->res;
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	int ok = res && (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK);
	const char *err = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	struct conn *c = p->conn;

	switch (p->kind) {
	case P_PREPARE:
		if (ok) {
			pc->state = PG_READY;
			if (pc->ever_ready)
				stats.db_reconnects++;
			pc->ever_ready = 1;
			pc->backoff_ms = 0;
			log_msg(LOG_INFO, 0, "%s connection ready", pc_name(pc));
			if (ctl.state == PG_READY)
				ws_foreach_authed(db_register_pending, pc);
			db_maybe_listen();
		} else if (res) {
			log_msg(LOG_ERROR, 0, "%s connection: prepare failed: %s", pc_name(pc),
				err ? err : "?");
			db_kill(pc, "prepare failed");
		}
		break;
	case P_LISTEN:
		if (!ok && res) {
			log_msg(LOG_ERROR, 0, "LISTEN failed: %s", err ? err : "?");
			db_kill(pc, "LISTEN failed");
		}
		break;
	case P_RESET:
		if (ok) {
			pc->state = PG_READY;
			if (pc->ever_ready)
				stats.db_reconnects++;
			pc->ever_ready = 1;
			pc->backoff_ms = 0;
			epoch++;
			log_msg(LOG_INFO, 0, "control connection ready: node %s registered", cfg.node);
			ws_foreach_authed(db_reregister, NULL);
			db_maybe_listen();
		} else if (res) {
			log_msg(LOG_ERROR, 0, "chat.node_reset failed: %s", err ? err : "?");
			db_kill(pc, "node_reset failed");
		}
		break;
	case P_HEARTBEAT:
		pc->heartbeat_inflight = 0;
		if (!ok && res)
			log_msg(LOG_WARN, 0, "chat.node_heartbeat failed: %s", err ? err : "?");
		break;
	case P_CONNECT:
		session_inflight--;
		if (ok && p->epoch == epoch) {
			c->registered = 1;
			ws_registered(c);		/* confirmed: hello, or resync after a gap */
		} else if (ok) {
			/* The device exists; a node_reset since then re-registers it
			 * (resync follows that registration). */
			if (c->state == CONN_REGISTERING)
				ws_registered(c);
		} else if (res) {
			const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);

			if (code && !strcmp(code, "P0002")) {
				/* Removed or never registered: no hello, nothing else. */
				stats.revoked++;
				log_msg(LOG_INFO, c->id, "user %lld device %d: %s", (long long)c->user,
					(int)c->device, err ? err : "unknown device");
				ws_close(c, 4003, "device revoked");
			} else {
				log_msg(LOG_WARN, c->id, "chat.connect failed: %s", err ? err : "?");
				if (c->state == CONN_REGISTERING)
					ws_close(c, 1011, "session registration failed");
			}
		}
		/* No result (connection lost): the registration is sent again once
		 * the pool connection is back; an unconfirmed client waits. */
		break;
	case P_DISCONNECT:
		session_inflight--;
		if (!ok && res)
			log_msg(LOG_WARN, 0, "chat.disconnect failed: %s", err ? err : "?");
		break;
	case P_REQUEST:
		metrics_latency(now_us() - p->start_us);
		c->inflight--;
		/* Consumed whatever the client does: a client that left, or was
		 * closed 4009 for not reading, loses its answers here and never
		 * holds up the others sharing this pool connection. */
		if (!CONN_OPEN(c))
			break;
		if (ok && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
			db_reply(c, p->id, PQgetvalue(res, 0, 0));
		} else if (res && st == PGRES_FATAL_ERROR) {
			const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
			stats.request_errors++;
			ws_send_error(c, *p->id ? p->id : NULL, code ? code : "XX000",
				      err ? err : "request failed");
			/* client_request turns every error into a frame except one:
			 * the device does not exist (removed after we confirmed it,
			 * and its revoked event missed). */
			if (code && !strcmp(code, "P0002")) {
				stats.revoked++;
				ws_close(c, 4003, "device revoked");
			}
		} else {
			stats.request_errors++;
			ws_send_error(c, *p->id ? p->id : NULL, "08006",
				      res ? "request returned no result" :
				      "database connection lost; the request may or may not have been applied");
		}
		break;
	case P_REF:
		if (ok && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
			route_ref_done(p->event, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
		} else {
			log_msg(LOG_WARN, 0, "ref message lookup failed: %s", err ? err : "connection lost");
			route_ref_done(p->event, NULL, 0);
		}
		break;
	case P_FINAL:
		if (!ok && res)
			log_msg(LOG_WARN, 0, "chat.node_reset at shutdown failed: %s", err ? err : "?");
		shutdown_done = 1;
		break;
	}
	if (c)
		ws_conn_unref(c);
	PQclear(res);
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
	pc->wsi = lws_adopt_descriptor_vhost(vhost_pg, LWS_ADOPT_RAW_FILE_DESC, u, "pg", NULL);
	if (!pc->wsi) {
		close(fd);
		db_lost(pc, "lws could not adopt the socket");
		return;
	}
	lws_set_opaque_user_data(pc->wsi, pc);
	pc->state = PG_SETUP;

	if (pc->index >= 0) {
		if (!PQsendPrepare(pc->pg, "req", SQL_REQUEST, 4, NULL) || !PQpipelineSync(pc->pg)) {
			db_kill(pc, PQerrorMessage(pc->pg));
			return;
		}
		struct pending *p = calloc(1, sizeof(*p) + 1);
		if (!p)
			abort();
		p->kind = P_PREPARE;
		pc->head = pc->tail = p;
		db_flush(pc);
		return;
	}

	char listen_sql[80];
	const char *node[1] = { cfg.node };
	snprintf(listen_sql, sizeof(listen_sql), "LISTEN \"chat_node_%s\"", cfg.node);
	if (!db_send(pc, P_LISTEN, NULL, listen_sql, 0, NULL, NULL) ||
	    !db_send(pc, P_RESET, NULL, "SELECT chat.node_reset($1)", 1, node, NULL))
		return;
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
	st = PQconnectPoll(pc->pg);
	if (st == PGRES_POLLING_OK) {
		db_connected(pc);
		return;
	}
	if (st == PGRES_POLLING_FAILED) {
		db_lost(pc, PQerrorMessage(pc->pg));
		return;
	}
	if (now_us() - pc->connect_started > 10 * LWS_US_PER_SEC) {
		db_lost(pc, "connection attempt timed out after 10 s");
		return;
	}
	lws_sul_schedule(context, 0, &pc->sul, db_connect_poll,
			 now_us() - pc->connect_started < 50000 ? 500 : 5000);
}

/* Starts an asynchronous connection attempt. */
static void
db_connect_begin(struct pgconn *pc)
{
	static const char *const keys[] = { "dbname", "application_name", NULL };
	char appname[64];
	const char *values[3] = { cfg.dsn, appname, NULL };

	if (draining)
		return;
	snprintf(appname, sizeof(appname), "chat-gateway %s", cfg.node);
	pc->pg = PQconnectStartParams(keys, values, 1);
	if (!pc->pg || PQstatus(pc->pg) == CONNECTION_BAD) {
		pc->state = PG_CONNECTING;
		db_lost(pc, pc->pg ? PQerrorMessage(pc->pg) : "out of memory");
		return;
	}
	pc->state = PG_CONNECTING;
	pc->connect_started = now_us();
	lws_sul_schedule(context, 0, &pc->sul, db_connect_poll, 200);
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
	lws_sul_schedule(context, 0, &pc->sul, db_connect_poll, (lws_usec_t)ms * 1000);
}

/* Forgets a dead connection: fails its pending entries and reconnects later. */
static void
db_lost(struct pgconn *pc, const char *why)
{
	struct pending *p;

	if (pc->state == PG_DOWN)
		return;
	if (draining)
		log_msg(LOG_DEBUG, 0, "%s connection closed", pc_name(pc));
	else
		log_msg(pc->state >= PG_SETUP ? LOG_ERROR : LOG_WARN, 0, "%s connection %s: %.*s",
			pc_name(pc), pc->state >= PG_SETUP ? "lost" : "failed",
			(int)strcspn(why ? why : "", "\n"), why ? why : "");
	pc->state = PG_DOWN;
	pc->heartbeat_inflight = 0;
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
	if (pc->index < 0 && draining)
		shutdown_done = 1;
	if (!draining)
		db_retry(pc);
}

/* Every --node-heartbeat seconds: chat.node_heartbeat on the control connection. */
static void
db_heartbeat(lws_sorted_usec_list_t *sul)
{
	const char *node[1] = { cfg.node };

	(void)sul;
	if (ctl.state == PG_READY && !ctl.heartbeat_inflight && !draining &&
	    db_send(&ctl, P_HEARTBEAT, NULL, "SELECT chat.node_heartbeat($1)", 1, node, NULL))
		ctl.heartbeat_inflight = 1;
	lws_sul_schedule(context, 0, &sul_heartbeat, db_heartbeat,
			 (lws_usec_t)cfg.node_heartbeat * LWS_US_PER_SEC);
}

/* Connects the control connection and the pool (asynchronously) and starts the heartbeat. */
void
db_start(void)
{
	pool = calloc((size_t)cfg.pool, sizeof(*pool));
	if (!pool)
		abort();
	ctl.index = -1;
	db_connect_begin(&ctl);
	for (int i = 0; i < cfg.pool; i++) {
		pool[i].index = i;
		db_connect_begin(&pool[i]);
	}
	lws_sul_schedule(context, 0, &sul_heartbeat, db_heartbeat,
			 (lws_usec_t)cfg.node_heartbeat * LWS_US_PER_SEC);
}

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

/* Opens the port the first time the node is registered and the pool is up. */
static void
db_maybe_listen(void)
{
	if (listening || draining || !db_ready())
		return;
	listening = 1;
	if (main_listen() != 0)
		main_stop();
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
	if (len + 1 > cap) {
		cap = len + 1 > 4096 ? len + 1 : 4096;
		free(buf);
		buf = malloc(cap);
		if (!buf)
			abort();
	}
	memcpy(buf, frame, len);
	buf[len] = '\0';
	values[3] = buf;
	snprintf(user, sizeof(user), "%lld", (long long)c->user);
	snprintf(device, sizeof(device), "%d", (int)c->device);
	p = db_send(pc, P_REQUEST, "req", NULL, 4, values, id_json);
	if (!p) {
		stats.request_errors++;
		ws_send_error(c, id_json, "08006", "database unavailable, retry later");
		return;
	}
	stats.requests++;
	p->conn = c;
	c->inflight++;
	ws_conn_ref(c);
}

/* Sends chat.connect for c on its (user, device) pool connection. */
int
db_session_connect(struct conn *c)
{
	struct pgconn *pc = db_session_pc(c->user, c->device);
	char user[24], device[16];
	const char *values[3] = { cfg.node, user, device };
	struct pending *p;

	if (ctl.state != PG_READY || pc->state != PG_READY || draining)
		return -1;
	snprintf(user, sizeof(user), "%lld", (long long)c->user);
	snprintf(device, sizeof(device), "%d", (int)c->device);
	p = db_send(pc, P_CONNECT, NULL, "SELECT chat.connect($1, $2, $3)", 3, values, NULL);
	if (!p)
		return -1;
	c->reg_sent = 1;
	p->conn = c;
	p->epoch = epoch;
	ws_conn_ref(c);
	session_inflight++;
	return 0;
}

/* Sends chat.disconnect for a closed connection (best effort). */
void
db_session_disconnect(struct conn *c)
{
	struct pgconn *pc = db_session_pc(c->user, c->device);
	char user[24], device[16];
	const char *values[3] = { cfg.node, user, device };

	/* Behind its connect on the same connection; if that one is gone, the
	 * control connection does (a later node_reset would as well). */
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

/* SIGTERM: no more heartbeats; the final node_reset follows (db_shutdown_done). */
void
db_shutdown(void)
{
	lws_sul_cancel(&sul_heartbeat);
	final_wanted = 1;
}

/* Called on the drain tick: the final node_reset goes once no connect or
 * disconnect is in flight on the pool (it must run after them). */
int
db_shutdown_done(void)
{
	const char *node[1] = { cfg.node };

	if (final_wanted && !final_sent && !shutdown_done && session_inflight <= 0) {
		final_sent = 1;
		if (ctl.state < PG_SETUP ||
		    !db_send(&ctl, P_FINAL, NULL, "SELECT chat.node_reset($1)", 1, node, NULL))
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
