/* http.c: the small HTTP surface: /healthz, /metrics (on the client port,
 * or only on --metrics-listen) and --static files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <errno.h>
#include <sys/stat.h>
#include "gateway.h"

/* Writes a small HTTP response from the HTTP callback (bodies of a few KB). */
static int
http_reply(struct lws *wsi, unsigned int status, const char *ctype, const char *body, size_t len)
{
	unsigned char hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start,
		      *end = hdr + sizeof(hdr) - 1;
	unsigned char *buf;
	int n;

	if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)len, &p, end) ||
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
					 (const unsigned char *)"no-store", 8, &p, end) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	buf = xmalloc(LWS_PRE + len + 1);
	memcpy(buf + LWS_PRE, body, len);
	n = lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
	free(buf);
	if (n < (int)len)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Ends an HTTP transaction with a bodiless status. */
static int
http_status(struct lws *wsi, unsigned int status)
{
	lws_return_http_status(wsi, status, NULL);
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Serves a file of --static.  lws's file mounts follow symlinks wherever
 * they point, so the path is resolved here (realpath) and must stay inside
 * the resolved root: a symlink out of the root is 404, as is anything that
 * is not a regular file.  (A symlink to a file inside the root is fine.) */
static int
http_static(struct lws *wsi, const char *uri)
{
	static char *root;
	static size_t root_len;
	char path[PATH_MAX], real[PATH_MAX];
	const char *mime;
	struct stat st;
	int n;

	if (!root) {
		if (!(root = realpath(cfg.static_dir, NULL))) {
			log_msg(LOG_WARN, 0, "--static %s: %s", cfg.static_dir, strerror(errno));
			return http_status(wsi, HTTP_STATUS_NOT_FOUND);
		}
		root_len = strlen(root);
	}
	if (uri[0] != '/' || strstr(uri, "/../") ||
	    (strlen(uri) >= 3 && !strcmp(uri + strlen(uri) - 3, "/..")))
		return http_status(wsi, HTTP_STATUS_FORBIDDEN);
	n = snprintf(path, sizeof(path), "%s%s%s", root, uri,
		     uri[strlen(uri) - 1] == '/' ? "index.html" : "");
	if (n < 0 || (size_t)n >= sizeof(path) || !realpath(path, real))
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	if (strncmp(real, root, root_len) || (real[root_len] != '/' && real[root_len] != '\0'))
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	if (stat(real, &st) == 0 && S_ISDIR(st.st_mode)) {
		n = snprintf(path, sizeof(path), "%s/index.html", real);
		if (n < 0 || (size_t)n >= sizeof(path) || !realpath(path, real) ||
		    strncmp(real, root, root_len) || real[root_len] != '/')
			return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	}
	if (stat(real, &st) != 0 || !S_ISREG(st.st_mode))
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	mime = lws_get_mimetype(real, NULL);
	n = lws_serve_http_file(wsi, real, mime ? mime : "application/octet-stream", NULL, 0);
	if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi)))
		return -1;
	return 0;
}

/* Dispatches /healthz, /metrics (unless --metrics-listen moved it; on that
 * listener nothing else) and --static files; anything else is 404. */
int
http_request(struct lws *wsi, int metrics_vhost)
{
	char uri[1024];

	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0)
		return http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED);
	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) >= (int)sizeof(uri) ||
	    lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0)
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	if (!strcmp(uri, "/healthz")) {
		int draining = conn_draining();

		if (db_healthy() && !draining)
			return http_reply(wsi, 200, "text/plain", "ok\n", 3);
		return http_reply(wsi, 503, "text/plain",
				  draining ? "draining\n" : "database unavailable\n",
				  draining ? 9 : 21);
	}
	if (!strcmp(uri, "/metrics") && (metrics_vhost || !cfg.metrics_listen)) {
		size_t len;
		char *body = metrics_render(&len, conn_count, conn_count_unauth, db_ready());
		int r = http_reply(wsi, 200, "text/plain; version=0.0.4", body, len);
		free(body);
		return r;
	}
	if (!metrics_vhost && cfg.static_dir)
		return http_static(wsi, uri);
	return http_status(wsi, HTTP_STATUS_NOT_FOUND);
}


/* Tags the connections accepted on --metrics-listen (opaque user data). */
char http_metrics_tag;

/* lws callback of the --metrics-listen vhost: plain HTTP, no upgrade.  lws
 * may move a connection to another vhost by its Host header (and move one
 * of the main listener here), so what a connection may reach is decided by
 * the listener that accepted it (HTTP_IS_METRICS), never by the vhost. */
int
http_metrics_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		    size_t len)
{
	if (reason == LWS_CALLBACK_HTTP)
		return http_request(wsi, HTTP_IS_METRICS(wsi));
	if (reason == LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION)
		return 1;		/* no WebSocket here */
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

