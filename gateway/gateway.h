/* gateway.h: types shared by the modules of chat-gateway and their interfaces. */
#ifndef CHAT_GATEWAY_H
#define CHAT_GATEWAY_H

#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <libwebsockets.h>
#include <libpq-fe.h>
#include <jansson.h>

#define GATEWAY_VERSION "0.1.0"

/* ---- config.c: flags, environment, config file ---- */

struct config {
	char *listen;			/* host:port as given */
	char *listen_host;		/* NULL: every interface */
	int listen_port;
	char *node;			/* this process's node (worker: <node>_<i>) */
	char *dsn;
	char *listen_dsn;		/* sharded: partition DSNs, one per line; NULL: LISTEN on --dsn */
	char *token_secret_file;
	char *tls_cert;
	char *tls_key;
	char *static_dir;
	char *vapid_key_file;		/* --vapid-public-key */
	char *media_url;		/* --media-url (media): chat-media's origin, or NULL */
	char *metrics_listen;		/* host:port of the /metrics listener, or NULL */
	char *metrics_host;		/* derived from metrics_listen; NULL: every interface */
	int metrics_port;
	char *log_format;
	char *log_file;
	char *log_level;
	char *config_file;
	int pool;
	int workers;
	int auth_timeout;		/* seconds */
	int max_frame;			/* bytes */
	int max_queue;			/* events per connection ring */
	int max_queue_bytes;		/* bytes per connection ring */
	int rate;			/* requests per second per connection */
	int heartbeat;			/* seconds between WebSocket pings */
	int max_conns;
	int max_unauth;
	int max_unauth_per_ip;		/* unauthenticated connections per address (IPv6: /64) */
	int max_inflight;		/* requests per connection awaiting the database */
	int request_timeout;		/* seconds a request may wait for the database */
	int pool_queue;			/* requests queued per pool connection (busy beyond) */
	int max_token_ttl;		/* seconds: exp - (iat or now) */
	int node_heartbeat;		/* seconds between chat.node_heartbeat calls */
	int drain_timeout;		/* seconds SIGTERM waits for clients to go */
	int trace_latency;		/* 1: hop timestamps in responses and events (trace.c) */
	char *event_lib;		/* "poll" (lws's own loop) or "ev" (libev, epoll) */

	/* derived at start-up */
	unsigned char *secret;
	size_t secret_len;
	char *vapid_public_key;		/* base64url P-256 point for hello, or NULL */
	int log_json;
	int log_min;			/* LOG_DEBUG .. LOG_ERROR */
};

extern struct config cfg;

/* Parses argv, the environment and --config into cfg; exits on error. */
void config_load(int argc, char **argv);
/* Checks a node name against [a-z0-9_]{1,40}. */
int config_node_valid(const char *node);

/* ---- log.c: logging and the clocks ---- */

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Takes the settings: JSON or text lines, the least level written, the node
 * named in each line, --log-file (NULL: stderr). */
void log_setup(int json, int min, const char *node, const char *file);
/* Writes one structured log line; conn is 0 when no connection is concerned. */
void log_msg(int level, uint32_t conn, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Reopens --log-file (SIGHUP). */
void log_reopen(void);
/* lws's own log lines (lws_set_log_level's emitter). */
void log_lws(int level, const char *line);
/* Monotonic microseconds. */
uint64_t now_us(void);
/* Monotonic milliseconds on a wrapping 32-bit clock: compare differences only. */
uint32_t now_ms(void);

/* ---- alloc.c: the one out-of-memory policy ---- */

/* malloc, calloc, realloc and strdup that never return NULL: out of memory
 * is logged and aborts (no silent drop, no OOM disguised as a close code).
 * jansson allocates through xmalloc too (json_set_alloc_funcs in main). */
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);

/* ---- slab.c: slots for the objects each connection holds ---- */

/* Reserves the slabs for max_conns connections and routes lws's
 * per-connection allocations to them (before lws_create_context). */
void slab_init(int max_conns);
/* A zeroed struct conn / its release. */
void *slab_conn_alloc(size_t size);
void slab_conn_free(void *p);
/* Logs the slabs' use (debug). */
void slab_report(void);

/* ---- supervise.c: --workers ---- */

/* Forks cfg.workers server processes, restarts dead ones, forwards signals. */
int supervise_run(void);

/* ---- server.c: the process: context, listen sockets, signals, drain ---- */

/* SIGTERM/SIGINT and SIGHUP seen (set by server_on_signal, the handler of
 * both the server and the supervisor; acted on outside the handler). */
extern volatile sig_atomic_t sig_term, sig_hup;
void server_on_signal(int sig);
/* Runs one single-threaded server process; returns its exit status. */
int server_run(void);

/* ---- evloop.c: --event-lib ev (lws's libev event library) ---- */

/* Sets info up for lws's libev plugin on a loop of our own (epoll); 0, or
 * -1 when the loop cannot be made. */
int evloop_setup(struct lws_context_creation_info *info);
/* Waits for and handles one round of events. */
void evloop_run_once(void);
/* Frees the loop once lws_context_destroy ran. */
void evloop_destroy(void);

/* ---- WebSocket close codes (ws.c, conn.c, db.c, route.c, metrics.c) ---- */

enum close_code {
	CLOSE_NORMAL = 1000,
	CLOSE_GOING_AWAY = 1001,	/* heartbeat pings unanswered */
	CLOSE_UNSUPPORTED = 1003,	/* binary frame */
	CLOSE_INVALID_DATA = 1007,	/* invalid UTF-8 (lws) */
	CLOSE_POLICY = 1008,		/* request rate exceeded */
	CLOSE_TOO_BIG = 1009,		/* frame over --max-frame */
	CLOSE_INTERNAL = 1011,		/* session registration failed */
	CLOSE_RESTART = 1012,		/* SIGTERM drain */
	CLOSE_AUTH = 4001,		/* bad, expired or missing token */
	CLOSE_REVOKED = 4003,		/* device removed or unknown */
	CLOSE_AUTH_TIMEOUT = 4008,	/* no token within --auth-timeout */
	CLOSE_LAGGING = 4009,		/* send ring over its caps */
};

/* ---- frame.c: fragment assembly (no lws, fuzzed) ---- */

/* A message being assembled from fragments; all zero between messages. */
struct frame_buf {
	char *data;
	uint32_t len, cap;
};

/* Appends a piece (remaining: bytes lws still announces for the current
 * fragment); -1 when the message would exceed max bytes or memory is out. */
int frame_append(struct frame_buf *f, const void *in, size_t len, size_t remaining, size_t max);
/* Frees the buffer and empties f. */
void frame_reset(struct frame_buf *f);

/* A frame shared by all its recipients: one allocation with LWS_PRE headroom,
 * reference counted, freed by the last msg_unref. */
struct msg {
	uint32_t refs;			/* MSG_STATIC: never freed */
	uint32_t len;
	uint64_t commit_us;		/* events: the commit stamp (unix us; 0: none), for
					 * the delivery latency histogram (metrics.c) */
	unsigned char buf[];		/* LWS_PRE headroom, then len bytes, then NUL */
};
#define MSG_STATIC UINT32_MAX
#define MSG_DATA(m) ((char *)(m)->buf + LWS_PRE)

/* A new frame holding a copy of data (refs 1). */
struct msg *msg_new(const char *data, size_t len);
void msg_ref(struct msg *m);
void msg_unref(struct msg *m);
/* The one {"type":"resync"} frame (static, shared by every sender). */
struct msg *msg_resync(void);

/* ---- request.c: request frame validation (no lws, fuzzed) ---- */

#define REQ_ID_MAX 128			/* bytes of a string id, characters of a number's */

struct req_info {
	char *id_json;			/* malloc'd compact JSON of a valid id, or NULL */
	const char *type;		/* borrowed from the frame */
	const char *code, *message;	/* the error frame's SQLSTATE and text */
};
/* The id of a request frame: 0 with *id_json (NULL: none), or -1 with the
 * SQLSTATE and message of the error (the id is then never echoed). */
int req_id(json_t *req, char **id_json, const char **code, const char **message);
/* Validates a parsed request (NULL: not JSON): 0, or -1 with out->code and
 * out->message; out->id_json is set whenever the id may be echoed. */
int req_check(json_t *req, struct req_info *out);

/* ---- conn.c: connection life cycle, lists, send rings, housekeeping ---- */

/* Per-connection bounded send ring, allocated on first use. */
struct ring {
	uint32_t cap, head, count, bytes;
	struct msg *slot[];
};

/* The life of a client connection.  conn_set_state (ws.c) makes every
 * transition, checks that it is legal and moves the connection between the
 * lists that the once-a-second tick and the drain walk. */
enum conn_state {
	CONN_UNAUTH,		/* accepted, no valid token yet: auth timeout runs */
	CONN_REGISTERING,	/* token valid; chat.connect has not found the device yet */
	CONN_LIVE,		/* device confirmed: events and requests flow */
	CONN_CLOSING,		/* close code chosen: queued frames, then the close frame */
	CONN_CLOSE_SENT,	/* close frame handed to lws, waiting for the peer's */
	CONN_CLOSED,		/* lws closed the socket (wsi NULL); freed with its last ref */
};

/* One WebSocket client.  The lws per-session data is only a pointer to it;
 * it outlives its wsi while database requests still refer to it (refs). */
struct conn {
	struct lws *wsi;		/* NULL once lws closed it */
	lws_dll2_t list;		/* on the unauth, authed or closing list (by state) */
	struct conn *user_next;		/* hash bucket chain (route.c) */
	struct ring *ring;
	struct frame_buf rx;		/* fragment assembly, empty between frames */
	struct ip_count *ip;		/* source address while unauthenticated */
	int64_t user;			/* 0 until authenticated (auth_verify: sub >= 1) */
	int64_t exp;			/* unix seconds: the token's exp (extended by re-auth) */
	uint32_t id;
	int32_t device;
	uint32_t born_ms;		/* accept time, for the auth timeout */
	uint32_t close_ms;		/* conn_close time, for the stalled-close backstop */
	uint32_t rate_ms;		/* last token-bucket refill */
	float tokens;
	uint16_t strikes;		/* requests refused since the bucket was last full */
	uint16_t close_code;		/* the close code once CONN_CLOSING */
	const char *close_why;		/* static reason text of the close frame */
	uint32_t refs;			/* 1 for the wsi + one per pending db entry */
	uint16_t inflight;		/* requests sent to the database, unanswered */
	uint8_t missed_pongs;
	uint8_t state;			/* enum conn_state */
	/* Facts, not states: */
	unsigned hello_sent:1,		/* the next confirmation sends resync instead */
		 reg_sent:1,		/* chat.connect was sent: chat.disconnect at close */
		 registered:1,		/* chat.connect answered in the current epoch */
		 reg_queued:1,		/* waiting in its pool connection's connect batch (db.c) */
		 ping_due:1;		/* the next writeable sends a heartbeat ping */
};

/* True once the connection has a valid token (REGISTERING or later). */
#define CONN_AUTHENTICATED(c) ((c)->user != 0)
/* True while frames may still be queued for the peer. */
#define CONN_OPEN(c) ((c)->state < CONN_CLOSING)

/* A new connection of wsi in CONN_UNAUTH (counted, on the unauth list). */
struct conn *conn_new(struct lws *wsi);
/* Moves c to state to; aborts on an illegal transition. */
void conn_set_state(struct conn *c, enum conn_state to);
/* lws closed c's socket: leaves every list, table and count; drops the wsi's ref. */
void conn_gone(struct conn *c);
/* Unauthenticated connections open from the peer of wsi (--max-unauth-per-ip). */
uint32_t conn_unauth_from(struct lws *wsi);
/* A valid token: c becomes REGISTERING as (user, device) and chat.connect is sent. */
void conn_authenticated(struct conn *c, int64_t user, int32_t device, int64_t exp);
/* Notes a token expiry for the tick's scan. */
void conn_note_exp(int64_t exp);
/* Queues m on the connection's ring (taking a reference) and asks for a
 * writeable callback; a full ring closes the connection with 4009. */
void conn_send(struct conn *c, struct msg *m);
/* Copies text into a new frame and queues it.  Used for responses: they
 * count against both caps, but a response is accepted whenever the bytes
 * already queued are below --max-queue-bytes (one sync page larger than the
 * budget can still be delivered); beyond that the connection closes 4009. */
void conn_send_text(struct conn *c, const char *text, size_t len);
/* The frame to write next, or NULL; conn_sent releases it once written. */
struct msg *conn_next_frame(struct conn *c);
void conn_sent(struct conn *c);
/* Closes the connection with a WebSocket close code at the next writeable;
 * why must be a static string (the close frame's reason). */
void conn_close(struct conn *c, enum close_code code, const char *why);
/* A pending database entry refers to c / no longer does (the last ref frees c). */
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* The database registered c (chat.connect done): confirms the device, then
 * hello the first time, resync after. */
void conn_confirmed(struct conn *c);
/* Calls fn for every authenticated, open connection (fn may close it). */
void conn_foreach_authed(void (*fn)(struct conn *c, void *arg), void *arg);
/* SIGTERM: close every client with 1012 (in steps). */
void conn_drain(void);
/* Starts the per-second housekeeping timer (auth timeouts, heartbeats). */
void conn_start_timers(struct lws_context *ctx);
/* True once conn_drain ran (SIGTERM): no new connections, /healthz 503. */
int conn_draining(void);
/* Counts of open connections. */
extern uint32_t conn_count, conn_count_unauth;

/* ---- ws.c: the chat.v1 protocol ---- */

/* lws callback of the chat.v1 protocol (and the client port's HTTP). */
int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
		void *user, void *in, size_t len);
/* Sends an error frame {"id":..,"type":"error",...}; id_json may be NULL. */
void ws_send_error(struct conn *c, const char *id_json, const char *code,
		   const char *message);

/* ---- http.c: /healthz, /metrics, --static ---- */

/* Serves one HTTP request (metrics_listener: accepted on --metrics-listen). */
int http_request(struct lws *wsi, int metrics_listener);
/* Opaque user data of the connections accepted on --metrics-listen. */
extern char http_metrics_tag;
#define HTTP_IS_METRICS(wsi) (lws_get_opaque_user_data(wsi) == &http_metrics_tag)
/* HTTP callback of the --metrics-listen vhost (/metrics and /healthz only). */
int http_metrics_callback(struct lws *wsi, enum lws_callback_reasons reason,
			  void *user, void *in, size_t len);

/* ---- auth.c: HS256 JWT ---- */

/* Verifies token; on success sets user, device and exp (unix seconds) and
 * returns 0, else returns -1 and points why at a static reason. */
int auth_verify(const char *token, size_t len, int64_t *user, int32_t *device,
		int64_t *exp, const char **why);

/* ---- route.c: user table and notification fan-in ---- */

void route_add(struct conn *c);
void route_remove(struct conn *c);
/* True when another local connection of (user, device) sent chat.connect. */
int route_has_device(int64_t user, int32_t device);
/* Verifies one NOTIFY payload ("v1 <hex HMAC>" line, then header line +
 * JSON line, repeated) and delivers its events; drops and counts forgeries. */
void route_notify(const char *payload);
/* The part after the signature check: routes "ids\njson\n" pairs (fuzzing
 * can call it directly, or route_notify with a correctly signed payload). */
void route_notify_verified(const char *events);
/* Result of a "ref":true lookup (NULL json: failed) for the oldest waiting event. */
void route_ref_done(void *event, const char *json, size_t len);

/* ---- db.c: libpq in the event loop ---- */

/* Starts connecting the LISTEN/control connection and the pool (sockets
 * adopted on vhost, timers on ctx); on_ready is called once, when the node
 * is registered and the whole pool is up. */
void db_start(struct lws_context *ctx, struct lws_vhost *vhost, void (*on_ready)(void));
/* True when the control connection and every pool connection are ready. */
int db_ready(void);
/* True when db_ready() and no connection's oldest query has waited over
 * half of --request-timeout (/healthz). */
int db_healthy(void);
int db_partitions(int *up);	/* sharded: partitions configured; *up: how many are up */

/* Relays a client frame through chat.client_request; the response goes to c. */
void db_request(struct conn *c, const char *frame, size_t len, const char *id_json);
/* chat.connect for c; returns -1 when it cannot be sent now (the session is
 * registered once the database is back, then the client gets resync). */
int db_session_connect(struct conn *c);
/* chat.disconnect for a closed connection that sent chat.connect. */
void db_session_disconnect(struct conn *c);
/* Resolves a "ref":true message event; calls route_ref_done(event, ...). */
int db_resolve_ref(void *event, int64_t actor, int64_t conversation, int64_t seq);
/* SIGTERM (or stop): no reconnects, no new sessions; the final
 * chat.node_reset is queued, db_shutdown_done() says when it ran. */
void db_shutdown(void);
int db_shutdown_done(void);

int db_callback(struct lws *wsi, enum lws_callback_reasons reason,
		void *user, void *in, size_t len);

/* ---- trace.c: --trace-latency (bench/chat-load --trace) ---- */

/* CLOCK_REALTIME of the frame being handled (ws_frame sets it when on). */
extern uint64_t trace_rx_us;
uint64_t trace_wall_us(void);
/* The response text with its hops appended (malloc'd; NULL: send as is). */
char *trace_response(const char *json, size_t len, uint64_t rx, uint64_t db_call, size_t *out_len);
/* An event frame stamped with the notification's arrival. */
struct msg *trace_event_msg(const char *json, size_t len);
/* Stamps a traced frame's write time, in place, just before lws_write. */
void trace_stamp_write(struct msg *m);

/* ---- metrics.c: Prometheus counters ---- */

struct metrics {
	uint64_t connections_total;
	uint64_t auth_failures;
	uint64_t frames_in, frames_out, bytes_in, bytes_out;
	uint64_t notifications_in, notifications_rejected, events_in, events_invalid;
	uint64_t revoked;
	uint64_t deliveries, drops, skipped_own;
	uint64_t requests, request_errors, rate_limited;
	uint64_t refs_resolved;
	uint64_t inflight_refused;	/* requests refused beyond --max-inflight */
	uint64_t unauth_per_ip_refused;	/* connections refused by --max-unauth-per-ip */
	uint64_t db_reconnects, resyncs;
	uint64_t db_timeouts;		/* connections closed: no answer within --request-timeout */
	uint64_t busy_refused;		/* requests refused: pool queue full or slow (53400 busy) */
	uint64_t partial_writes;	/* frames the socket did not take whole (lws keeps the rest) */
	/* chat.notifier_stats(), read with every node heartbeat (-1: unknown) */
	int64_t notifier_fallbacks, notifier_queued_bytes;
	uint64_t closes[16];		/* indexed by metrics_close_slot */
	uint64_t latency_buckets[16];
	uint64_t latency_count;
	double latency_sum;
	/* Monitoring (issue 11): histograms rendered summed over the workers. */
	uint64_t delivery_buckets[16];	/* commit -> socket write */
	uint64_t delivery_sum_us;
	uint64_t delivery_skewed;	/* commit stamp later than the write: clocks differ */
	uint64_t lifetime_buckets[16];	/* connection accept -> gone */
	uint64_t lifetime_sum_ms;
	/* chat.notifier_histograms() (server-wide), copied at the heartbeat;
	 * nhist_seq is odd while the copy is being written (a reader retries). */
	uint64_t nhist_seq;
	struct metrics_nhist {
		int nbounds;		/* -1: unknown (not read yet, or refused) */
		double bounds[16];
		int64_t cumulative[17];	/* nbounds + 1: the last is +Inf */
		int64_t sum;
	} nhist[2];			/* 0: queue_depth, 1: batch_events */
	/* Gauges, published by the worker once a second (metrics_publish). */
	uint64_t conns, conns_unauth, db_up;
	uint64_t partitions, partitions_up;	/* sharded (--listen-dsn); 0: not sharded */
	char node[48];			/* the worker's node name; "" = slot unused */
};

/* One slot per process: with --workers they live in memory shared with the
 * supervisor and every worker, so whichever worker answers /metrics renders
 * them all.  Each slot is written by its own worker only. */
extern struct metrics *metrics_slots;
extern int metrics_nslots, metrics_self;
#define stats (metrics_slots[metrics_self])

/* --workers: maps the shared slots (before forking). */
void metrics_share(int workers);
/* In a worker: takes slot i (counters continue from the last process in it). */
void metrics_take_slot(int i);
/* Supervisor: a worker died; its gauges read 0 until it is back. */
void metrics_slot_died(int i);
/* Publishes this process's gauges into its slot. */
void metrics_publish(uint32_t conns, uint32_t unauth, int db_up);

/* Counts a close (the gateway's code or the peer's). */
void metrics_close(int code);
void metrics_latency(uint64_t us);
/* Monitoring (issue 11): an event frame with a commit stamp was written. */
void metrics_delivery(uint64_t commit_us);
/* A connection open since born_ms (now_ms clock) is gone. */
void metrics_conn_gone(uint32_t born_ms);
/* One row of chat.notifier_histograms() (text columns as libpq gives them);
 * row 0 of a result first marks the copy unknown until every row is in. */
void metrics_notifier_hist(const char *name, const char *bounds, const char *cumulative,
			   const char *sum);
/* Sharded: one row of partition part's (of nparts) notifier histograms;
 * the slot shows them merged over the partitions. */
void metrics_notifier_hist_part(int part, int nparts, const char *name, const char *bounds,
				const char *cumulative, const char *sum);
/* Renders the Prometheus text of every slot (this process's gauges: open and
 * unauthenticated connections, database up, fresh) into a malloc'd buffer;
 * caller frees. */
char *metrics_render(size_t *len, uint32_t conns, uint32_t unauth, int db_up);

#endif
