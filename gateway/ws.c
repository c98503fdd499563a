/* ws.c: the chat.v1 WebSocket protocol: the lws callback (one handler per
 * event), fragment assembly, authentication, and the checks every request
 * frame passes before it is relayed to the database (db.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "gateway.h"
#include "errnames.h"		/* extension/: plain C, no PostgreSQL headers */

/* Condition name of a SQLSTATE, from the table the extension's error frames
 * use (extension/errnames.h, generated from PostgreSQL's errcodes.txt): one
 * source, so a code reads the same whether the gateway or the database
 * answered.  Unknown codes are "internal_error", as before. */
static const char *
sqlstate_name(const char *code)
{
	for (size_t i = 0; i < sizeof(ChatErrorNames) / sizeof(ChatErrorNames[0]); i++)
		if (!strcmp(ChatErrorNames[i].sqlstate, code))
			return ChatErrorNames[i].name;
	return "internal_error";
}

/* Queues an error frame with the SQLSTATE, its condition name and a message. */
void
ws_send_error(struct conn *c, const char *id_json, const char *code, const char *message)
{
	json_t *o = json_object();
	char *text;

	if (id_json) {
		json_t *id = json_loads(id_json, JSON_DECODE_ANY, NULL);
		if (id)
			json_object_set_new(o, "id", id);
	}
	json_object_set_new(o, "type", json_string("error"));
	json_object_set_new(o, "code", json_string(code));
	json_object_set_new(o, "error", json_string(sqlstate_name(code)));
	json_object_set_new(o, "message", json_string(message));
	text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (text) {
		conn_send_text(c, text, strlen(text));
		free(text);
	}
}

/* Checks a token; closes with 4001 when it is bad. */
static void
ws_auth(struct conn *c, const char *token, size_t len)
{
	int64_t user, exp;
	int32_t device;
	const char *why;

	if (auth_verify(token, len, &user, &device, &exp, &why) != 0) {
		stats.auth_failures++;
		conn_close(c, CLOSE_AUTH, why);
		return;
	}
	conn_authenticated(c, user, device, exp);
}

/* {"type":"auth"} on an authenticated connection: a valid token of the same
 * user and device moves the connection's expiry to the new token's exp and
 * is answered ({"id":..,"type":"ok","result":{"exp":..}} when the frame had
 * an id, else {"type":"auth_ok","exp":..}); any other token closes 4001. */
static void
ws_reauth(struct conn *c, json_t *tok, const char *id_json)
{
	int64_t user, exp;
	int32_t device;
	const char *why;
	char buf[256];
	int n;

	if (!json_is_string(tok)) {
		stats.auth_failures++;
		conn_close(c, CLOSE_AUTH, "re-authentication without a token");
		return;
	}
	if (auth_verify(json_string_value(tok), json_string_length(tok), &user, &device, &exp, &why) != 0) {
		stats.auth_failures++;
		conn_close(c, CLOSE_AUTH, why);
		return;
	}
	if (user != c->user || device != c->device) {
		stats.auth_failures++;
		log_msg(LOG_WARN, c->id, "re-authentication as user %lld device %d refused on a "
			"connection of user %lld device %d", (long long)user, (int)device,
			(long long)c->user, (int)c->device);
		conn_close(c, CLOSE_AUTH, "token of another user or device");
		return;
	}
	if (exp > c->exp)
		c->exp = exp;		/* an older token never shortens it */
	conn_note_exp(c->exp);
	n = id_json ? snprintf(buf, sizeof(buf), "{\"id\":%s,\"type\":\"ok\",\"result\":{\"exp\":%lld}}",
				   id_json, (long long)c->exp)
		    : snprintf(buf, sizeof(buf), "{\"type\":\"auth_ok\",\"exp\":%lld}", (long long)c->exp);
	conn_send_text(c, buf, (size_t)n);
}

/* Token bucket of --rate requests/s; returns 0 when the request may pass. */
static int
ws_rate_check(struct conn *c)
{
	uint32_t now = now_ms(), elapsed = now - c->rate_ms;

	c->rate_ms = now;
	c->tokens += (float)elapsed * (float)cfg.rate / 1000.0f;
	if (c->tokens >= (float)cfg.rate) {
		c->tokens = (float)cfg.rate;
		c->strikes = 0;
	}
	if (c->tokens >= 1.0f) {
		c->tokens -= 1.0f;
		return 0;
	}
	stats.rate_limited++;
	if (c->strikes < UINT16_MAX)
		c->strikes++;
	return -1;
}

/* The first frame of a connection without a query token must be
 * {"type":"auth","token":..}; anything else closes 4001. */
static void
ws_unauth_frame(struct conn *c, json_t *req)
{
	json_t *type = req && json_is_object(req) ? json_object_get(req, "type") : NULL;
	json_t *tok = req ? json_object_get(req, "token") : NULL;

	if (type && json_is_string(type) && !strcmp(json_string_value(type), "auth") &&
	    json_is_string(tok)) {
		ws_auth(c, json_string_value(tok), json_string_length(tok));
	} else {
		stats.auth_failures++;
		conn_close(c, CLOSE_AUTH, "expected an auth frame");
	}
}

/* Over the rate: 53400 with the id (when it may be echoed), then, once the
 * client keeps going for more than a second's worth, close 1008. */
static void
ws_rate_refuse(struct conn *c, json_t *req)
{
	const char *code, *msg;
	char *id_json = NULL;

	if (c->strikes > (uint32_t)cfg.rate) {
		conn_close(c, CLOSE_POLICY, "request rate exceeded");
		return;
	}
	if (req_id(req, &id_json, &code, &msg) != 0)
		id_json = NULL;		/* not echoed */
	ws_send_error(c, id_json, "53400", "request rate exceeded");
	stats.request_errors++;
	free(id_json);
}

/* A valid request of an authenticated connection: answered here (ping,
 * re-auth) or relayed to chat.client_request once the device is confirmed
 * and --max-inflight allows. */
static void
ws_request(struct conn *c, json_t *req, const char *type, const char *id_json,
	   const char *data, size_t len)
{
	if (!strcmp(type, "ping")) {
		char buf[200];
		int n = id_json ? snprintf(buf, sizeof(buf), "{\"id\":%s,\"type\":\"pong\"}", id_json)
				: snprintf(buf, sizeof(buf), "{\"type\":\"pong\"}");
		conn_send_text(c, buf, (size_t)n);
		return;
	}
	if (!strcmp(type, "auth")) {
		ws_reauth(c, json_object_get(req, "token"), id_json);
		return;
	}
	if (c->state != CONN_LIVE) {
		/* Nothing runs for a device chat.connect has not found yet. */
		ws_send_error(c, id_json, "55000", "device not confirmed yet: wait for hello");
		stats.request_errors++;
		return;
	}
	/* A client may not pile up work (and answers) faster than it reads:
	 * beyond --max-inflight unanswered requests it gets 53400 at once. */
	if (c->inflight >= (uint32_t)cfg.max_inflight) {
		ws_send_error(c, id_json, "53400", "too many requests in flight");
		stats.request_errors++;
		stats.inflight_refused++;
		return;
	}
	db_request(c, data, len, id_json);
}

/* Handles one complete text frame. */
static void
ws_frame(struct conn *c, const char *data, size_t len)
{
	json_error_t err;
	struct req_info ri;
	json_t *req;

	stats.frames_in++;
	stats.bytes_in += len;
	c->missed_pongs = 0;
	if (cfg.trace_latency)
		trace_rx_us = trace_wall_us();

	req = json_loadb(data, len, 0, &err);
	if (c->state == CONN_UNAUTH) {
		ws_unauth_frame(c, req);
	} else if (ws_rate_check(c) != 0) {
		ws_rate_refuse(c, req);
	} else if (req_check(req, &ri) != 0) {
		/* JSON object, a "type", an id that is a short number or string
		 * (request.c, fuzzed by tests/fuzz/request_fuzz.c). */
		ws_send_error(c, ri.id_json, ri.code, ri.message);
		stats.request_errors++;
		free(ri.id_json);
	} else {
		ws_request(c, req, ri.type, ri.id_json, data, len);
		free(ri.id_json);
	}
	json_decref(req);
}

/* FILTER_PROTOCOL_CONNECTION: refuses the upgrade (nonzero) while draining,
 * on the metrics listener, over --max-conns or --max-unauth, or over
 * --max-unauth-per-ip for the peer's address. */
static int
ws_on_filter(struct lws *wsi)
{
	if (conn_draining() || HTTP_IS_METRICS(wsi))
		return 1;
	if (conn_count >= (uint32_t)cfg.max_conns ||
	    conn_count_unauth >= (uint32_t)cfg.max_unauth) {
		log_msg(LOG_WARN, 0, "connection refused: %u open, %u unauthenticated",
			conn_count, conn_count_unauth);
		return 1;
	}
	/* One host holding idle sockets must not lock everyone out. */
	if (conn_unauth_from(wsi) >= (uint32_t)cfg.max_unauth_per_ip) {
		char peer[64];
		stats.unauth_per_ip_refused++;
		lws_get_peer_simple(wsi, peer, sizeof(peer));
		log_msg(LOG_WARN, 0, "connection refused: %d unauthenticated from %s",
			cfg.max_unauth_per_ip, peer);
		return 1;
	}
	return 0;
}

/* ESTABLISHED: a new connection; a ?token= in the URL authenticates it at once. */
static int
ws_on_established(struct lws *wsi)
{
	char buf[2048];
	const char *token;
	struct conn *c;

	c = conn_new(wsi);
	lws_set_opaque_user_data(wsi, c);
	token = lws_get_urlarg_by_name(wsi, "token=", buf, sizeof(buf));
	if (token && *token)
		ws_auth(c, token, strlen(token));
	return 0;
}

/* RECEIVE: one piece of a message.  A whole frame in one piece is handled
 * without a copy; fragments are assembled (frame.c) up to --max-frame. */
static int
ws_on_receive(struct lws *wsi, struct conn *c, void *in, size_t len)
{
	size_t remaining;
	int final;

	if (!c || !CONN_OPEN(c))
		return 0;
	if (lws_frame_is_binary(wsi)) {
		conn_close(c, CLOSE_UNSUPPORTED, "binary frames are not part of chat.v1");
		return 0;
	}
	remaining = lws_remaining_packet_payload(wsi);
	final = lws_is_final_fragment(wsi);
	if (final && !c->rx.len) {
		if (len > (size_t)cfg.max_frame)
			conn_close(c, CLOSE_TOO_BIG, "frame too large");
		else
			ws_frame(c, in, len);
		return 0;
	}
	if (frame_append(&c->rx, in, len, remaining, (size_t)cfg.max_frame)) {
		frame_reset(&c->rx);
		conn_close(c, CLOSE_TOO_BIG, "frame too large");
		return 0;
	}
	if (final && !remaining) {
		struct frame_buf rx = c->rx;
		memset(&c->rx, 0, sizeof(c->rx));
		ws_frame(c, rx.data, rx.len);
		free(rx.data);
	}
	return 0;
}

/* SERVER_WRITEABLE: the only place that writes: the close frame once the
 * ring is empty, else a due heartbeat ping, else one queued frame. */
static int
ws_on_writeable(struct lws *wsi, struct conn *c)
{
	struct msg *m;

	if (!c)
		return 0;
	if (!CONN_OPEN(c) && !conn_next_frame(c)) {
		/* Once: lws sends the close frame and waits for the peer's.
		 * A second -1 would kill the socket with the peer's unread
		 * frames still queued, an RST that loses what we sent. */
		if (c->state != CONN_CLOSING)
			return 0;
		conn_set_state(c, CONN_CLOSE_SENT);
		/* The reason goes in the close frame (at most 123 bytes). */
		lws_close_reason(wsi, (enum lws_close_status)c->close_code,
				 (unsigned char *)(uintptr_t)c->close_why,
				 c->close_why ? strnlen(c->close_why, 123) : 0);
		return -1;
	}
	if (c->ping_due && CONN_OPEN(c)) {
		/* A payload: lws 4.1 reports no RECEIVE_PONG for an empty pong. */
		unsigned char ping[LWS_PRE + 4];
		c->ping_due = 0;
		memcpy(ping + LWS_PRE, "chat", 4);
		if (lws_write(wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 4)
			return -1;
		if (conn_next_frame(c))
			lws_callback_on_writable(wsi);
		return 0;
	}
	if (!(m = conn_next_frame(c)))
		return 0;
	if (cfg.trace_latency)
		trace_stamp_write(m);
	if (lws_write(wsi, (unsigned char *)MSG_DATA(m), m->len, LWS_WRITE_TEXT) < (int)m->len)
		return -1;
	/* A send the kernel (or lws's tx_packet_size) cut short: lws holds
	 * the rest until the socket drains.  Counted because a cap set too
	 * small once did this to every frame (CLIENT_TX_PACKET, server.c). */
	if (lws_partial_buffered(wsi))
		stats.partial_writes++;
	if (m->commit_us)	/* monitoring (issue 11): commit -> socket write */
		metrics_delivery(m->commit_us);
	conn_sent(c);
	if (conn_next_frame(c) || !CONN_OPEN(c))
		lws_callback_on_writable(wsi);
	return 0;
}

/* The connection of a chat.v1 wsi, or NULL.  It hangs on the wsi's opaque
 * user data rather than in lws per-session data: a per-session allocation
 * of one pointer costs a 32-byte heap chunk per connection (docs/gateway.md,
 * memory per connection).  The metrics listener's tag is not a conn. */
static struct conn *
ws_conn(struct lws *wsi)
{
	void *p = lws_get_opaque_user_data(wsi);

	return p == &http_metrics_tag ? NULL : p;
}

/* lws callback of the chat.v1 protocol (and default HTTP handler). */
int
ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct conn *c = ws_conn(wsi);

	switch (reason) {
	case LWS_CALLBACK_HTTP:
		return http_request(wsi, HTTP_IS_METRICS(wsi));
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		return ws_on_filter(wsi);
	case LWS_CALLBACK_ESTABLISHED:
		return ws_on_established(wsi);
	case LWS_CALLBACK_RECEIVE:
		return ws_on_receive(wsi, c, in, len);
	case LWS_CALLBACK_RECEIVE_PONG:
		if (c)
			c->missed_pongs = 0;
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return ws_on_writeable(wsi, c);
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		if (c && len >= 2)
			metrics_close(((const unsigned char *)in)[0] << 8 | ((const unsigned char *)in)[1]);
		return 0;
	case LWS_CALLBACK_CLOSED:
		if (c) {
			lws_set_opaque_user_data(wsi, NULL);
			conn_gone(c);
		}
		return 0;
	default:
		/* Static files (http.c): lws_callback_http_dummy finishes
		 * each HTTP transaction (FILE_COMPLETION) so keep-alive
		 * connections can carry the next request. */
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}
