/* media_http.c: chat-media's HTTP/1.1 requests, one per connection
 * (Connection: close), on the connection's own thread with blocking
 * sockets: PUT streams the body to a temporary file while hashing it, GET
 * streams a file with sendfile().  Neither ever holds more than one 64 KiB
 * buffer of a file, whatever its size. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <magic.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "media.h"
#include "gateway.h"

#define HEAD_MAX 8192			/* request line + headers */
#define IO_CHUNK 65536			/* bytes moved per read/write */
#define MAGIC_BYTES 65536		/* what libmagic looks at */

/* One parsed request head. */
struct request {
	char method[8];
	char id[37];			/* the upload/attachment id (uuid text) */
	int thumb;			/* /media/<id>/thumb */
	int64_t user, expires;
	char sig[65];
	int64_t content_length;		/* -1: none */
	int chunked;
	char content_type[128];
	char range[128];
	char if_none_match[160];
	char *body;			/* bytes of the body read with the head */
	size_t body_len;
};

/* Common headers of every answer: CORS for the demo page (media URLs are
 * capabilities, no cookies are involved) and no caching of errors. */
static const char cors[] =
	"Access-Control-Allow-Origin: *\r\n"
	"Access-Control-Expose-Headers: ETag, Content-Range, Content-Length\r\n"
	"Connection: close\r\n";

static magic_t magic_cookie;
static pthread_mutex_t magic_lock = PTHREAD_MUTEX_INITIALIZER;

/* Opens libmagic's database once (its cookie is shared under a lock:
 * lookups take microseconds, loading the database milliseconds). */
int
magic_init(void)
{
	magic_cookie = magic_open(MAGIC_MIME_TYPE);
	if (!magic_cookie || magic_load(magic_cookie, NULL) != 0)
		return -1;
	return 0;
}

/* Writes all of buf; -1 when the peer is gone or stalled past the timeout. */
static int
send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Answers with status and a small JSON body {"error": why}. */
static void
reply_error(int fd, uint32_t conn, int status, const char *reason, const char *why)
{
	char body[256], head[768];
	int blen, hlen;

	blen = snprintf(body, sizeof(body), "{\"error\":\"%s\"}\n", why);
	hlen = snprintf(head, sizeof(head),
			"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
			"Content-Length: %d\r\nCache-Control: no-store\r\n%s\r\n",
			status, reason, blen, cors);
	log_msg(status >= 500 ? LOG_WARN : LOG_INFO, conn, "media: %d %s", status, why);
	if (send_all(fd, head, (size_t)hlen) == 0)
		(void)send_all(fd, body, (size_t)blen);
}

/* Parses a decimal int64 of the whole string; -1 when it is not one. */
static int
parse_int64(const char *s, size_t len, int64_t *out)
{
	char buf[24];
	char *end;

	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (!isdigit((unsigned char)buf[0]))
		return -1;
	errno = 0;
	*out = strtoll(buf, &end, 10);
	return errno || *end ? -1 : 0;
}

/* Parses "/media/<uuid>[/thumb]?u=<user>&e=<expires>&s=<sig>"; -1 when the
 * target is not a media URL of that exact shape. */
static int
parse_target(const char *t, size_t len, struct request *r)
{
	const char *q, *p, *end = t + len;
	size_t plen;
	int i, seen = 0;

	if (len < 7 || memcmp(t, "/media/", 7) != 0)
		return -1;
	q = memchr(t, '?', len);
	if (!q)
		return -1;
	plen = (size_t)(q - t) - 7;
	if (plen == 36 + 6 && memcmp(t + 7 + 36, "/thumb", 6) == 0)
		r->thumb = 1;
	else if (plen != 36)
		return -1;
	for (i = 0; i < 36; i++) {
		char c = t[7 + i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-'))
			return -1;
	}
	memcpy(r->id, t + 7, 36);
	r->id[36] = '\0';
	for (p = q + 1; p < end;) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *vend = amp ? amp : end;

		if (vend - p >= 2 && p[1] == '=') {
			const char *v = p + 2;
			size_t vlen = (size_t)(vend - v);

			if (p[0] == 'u' && parse_int64(v, vlen, &r->user) == 0)
				seen |= 1;
			else if (p[0] == 'e' && parse_int64(v, vlen, &r->expires) == 0)
				seen |= 2;
			else if (p[0] == 's' && vlen == 64) {
				memcpy(r->sig, v, 64);
				r->sig[64] = '\0';
				seen |= 4;
			} else
				return -1;
		} else
			return -1;
		p = amp ? amp + 1 : end;
	}
	return seen == 7 ? 0 : -1;
}

/* Copies a header value (trimmed) into dst of size n. */
static void
header_value(char *dst, size_t n, const char *v, size_t len)
{
	while (len > 0 && (*v == ' ' || *v == '\t'))
		v++, len--;
	while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
		len--;
	if (len >= n)
		len = n - 1;
	memcpy(dst, v, len);
	dst[len] = '\0';
}

/* Reads and parses the request head; returns 0, or the HTTP status to
 * answer with (400, 403, 404, 431), or -1 when the peer left. */
static int
read_head(int fd, char *buf, struct request *r)
{
	size_t have = 0;
	char *eoh = NULL, *line, *next;

	while (!eoh) {
		ssize_t n;

		if (have == HEAD_MAX)
			return 431;
		n = recv(fd, buf + have, HEAD_MAX - have, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		have += (size_t)n;
		eoh = memmem(buf, have, "\r\n\r\n", 4);
	}
	r->body = eoh + 4;
	r->body_len = have - (size_t)(r->body - buf);
	r->content_length = -1;

	/* request line: METHOD SP target SP HTTP/1.x */
	next = memmem(buf, (size_t)(eoh + 2 - buf), "\r\n", 2);
	{
		char *sp1 = memchr(buf, ' ', (size_t)(next - buf)), *sp2;

		if (!sp1 || sp1 - buf >= (long)sizeof(r->method))
			return 400;
		sp2 = memchr(sp1 + 1, ' ', (size_t)(next - sp1 - 1));
		if (!sp2 || next - sp2 < 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
			return 400;
		memcpy(r->method, buf, (size_t)(sp1 - buf));
		r->method[sp1 - buf] = '\0';
		if (sp2 - sp1 - 1 == 8 && memcmp(sp1 + 1, "/healthz", 8) == 0) {
			strcpy(r->id, "healthz");
			return 0;
		}
		/* a media path with a mangled query is a tampered URL: 403 */
		if (strcmp(r->method, "OPTIONS") != 0 &&
		    parse_target(sp1 + 1, (size_t)(sp2 - sp1 - 1), r) != 0)
			return sp2 - sp1 - 1 > 7 && memcmp(sp1 + 1, "/media/", 7) == 0 ? 403 : 404;
	}
	for (line = next + 2; line < eoh; line = next + 2) {
		char *colon;
		size_t nlen;

		next = memmem(line, (size_t)(eoh + 2 - line), "\r\n", 2);
		colon = memchr(line, ':', (size_t)(next - line));
		if (!colon)
			return 400;
		nlen = (size_t)(colon - line);
#define IS(h) (nlen == sizeof(h) - 1 && strncasecmp(line, h, nlen) == 0)
		if (IS("Content-Length")) {
			char v[24];

			header_value(v, sizeof(v), colon + 1, (size_t)(next - colon - 1));
			if (r->content_length >= 0 ||
			    parse_int64(v, strlen(v), &r->content_length) != 0)
				return 400;
		} else if (IS("Transfer-Encoding"))
			r->chunked = 1;
		else if (IS("Content-Type"))
			header_value(r->content_type, sizeof(r->content_type), colon + 1,
				     (size_t)(next - colon - 1));
		else if (IS("Range"))
			header_value(r->range, sizeof(r->range), colon + 1, (size_t)(next - colon - 1));
		else if (IS("If-None-Match"))
			header_value(r->if_none_match, sizeof(r->if_none_match), colon + 1,
				     (size_t)(next - colon - 1));
#undef IS
	}
	return 0;
}

/* Checks a media URL's MAC (constant time) and expiry. */
int
media_url_valid(const char *op, const char *id, int64_t user, int64_t expires, const char *sig)
{
	char msg[160], hex[65];
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	int len, i;

	if (expires < (int64_t)time(NULL))
		return 0;
	len = snprintf(msg, sizeof(msg), "%s\n%s\n%" PRId64 "\n%" PRId64, op, id, user, expires);
	if (len < 0 || len >= (int)sizeof(msg) ||
	    !HMAC(EVP_sha256(), mcfg.key, sizeof(mcfg.key), (unsigned char *)msg, (size_t)len,
		  mac, &maclen) || maclen != 32)
		return 0;
	for (i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	return CRYPTO_memcmp(hex, sig, 64) == 0;
}

/* The detected type is acceptable for the declared one: the same type;
 * any text for text; any audio/video container for audio and video (a
 * voice note in WebM is "video/webm" to libmagic); anything for
 * application/octet-stream (ciphertext of e2e conversations). */
int
mime_matches(const char *declared, const char *detected)
{
	if (strcmp(declared, "application/octet-stream") == 0 || strcmp(declared, detected) == 0)
		return 1;
	if (strncmp(declared, "text/", 5) == 0)
		return strncmp(detected, "text/", 5) == 0;
	if (strncmp(declared, "audio/", 6) == 0 || strncmp(declared, "video/", 6) == 0)
		return strncmp(detected, "audio/", 6) == 0 || strncmp(detected, "video/", 6) == 0 ||
		       strcmp(detected, "application/ogg") == 0;
	return 0;
}

/* The upload row: filled by upload_target. */
struct upload {
	char key[MEDIA_KEY_LEN + 1];
	char mime[128];
	int64_t size;
	char sha256[65];
	int ready;
};

/* Looks up what the PUT is to store: 0 found, 404 none, 503 no database. */
static int
upload_target(const struct request *r, struct upload *u)
{
	char user[24];
	const char *params[2] = {r->id, user};
	PGconn *c = db_take();
	PGresult *res;
	int status = 404;

	if (!c)
		return 503;
	snprintf(user, sizeof(user), "%" PRId64, r->user);
	res = PQexecParams(c, "SELECT storage_key, mime, size, sha256, state"
			   "  FROM chat.media_upload_target($1::uuid, $2::bigint)",
			   2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_msg(LOG_WARN, 0, "media: upload lookup: %s", PQresultErrorMessage(res));
		status = 503;
	} else if (PQntuples(res) == 1) {
		snprintf(u->key, sizeof(u->key), "%s", PQgetvalue(res, 0, 0));
		snprintf(u->mime, sizeof(u->mime), "%s", PQgetvalue(res, 0, 1));
		u->size = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
		snprintf(u->sha256, sizeof(u->sha256), "%s", PQgetvalue(res, 0, 3));
		u->ready = strcmp(PQgetvalue(res, 0, 4), "ready") == 0;
		status = store_key_valid(u->key) ? 0 : 503;
	}
	PQclear(res);
	db_give(c);
	return status;
}

/* Marks the upload ready and moves its file into place in one transaction
 * (the row lock of media_uploaded orders two racing PUTs: the second finds
 * it ready and answers 409).  Returns 201, 409 or 503. */
static int
upload_finish(const struct request *r, const struct upload *u, const char *tmp, int width,
	      int height, const char *thumb_key)
{
	char w[16], h[16];
	const char *params[4] = {r->id, width > 0 ? w : NULL, height > 0 ? h : NULL, thumb_key};
	PGconn *c = db_take();
	PGresult *res;
	int status = 503;

	if (!c)
		return 503;
	snprintf(w, sizeof(w), "%d", width);
	snprintf(h, sizeof(h), "%d", height);
	res = PQexec(c, "BEGIN");
	PQclear(res);
	res = PQexecParams(c, "SELECT chat.media_uploaded($1::uuid, $2::integer, $3::integer, $4)",
			   4, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		log_msg(LOG_WARN, 0, "media: mark ready: %s", PQresultErrorMessage(res));
	else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
		status = 409;
	else if (store->commit(tmp, u->key) != 0)
		log_msg(LOG_ERROR, 0, "media: storing %s: %s", r->id, strerror(errno));
	else
		status = 201;
	PQclear(res);
	res = PQexec(c, status == 201 ? "COMMIT" : "ROLLBACK");
	if (PQresultStatus(res) != PGRES_COMMAND_OK && status == 201) {
		log_msg(LOG_WARN, 0, "media: commit: %s", PQresultErrorMessage(res));
		status = 503;		/* the file stays; cleanup queues it */
	}
	PQclear(res);
	db_give(c);
	return status;
}

/* Receives exactly len body bytes into the file fd, hashing them; keeps
 * the first MAGIC_BYTES in head.  -1 when the peer stopped early. */
static int
receive_body(int sock, int fd, const struct request *r, int64_t len, EVP_MD_CTX *md,
	     char *head, size_t *head_len, char *buf)
{
	int64_t got = 0;
	size_t pre = r->body_len;

	while (got < len) {
		ssize_t n;

		if (pre > 0) {
			n = (ssize_t)(pre < (size_t)(len - got) ? pre : (size_t)(len - got));
			memcpy(buf, r->body, (size_t)n);
			pre = 0;
		} else {
			size_t want = (size_t)(len - got) < IO_CHUNK ? (size_t)(len - got) : IO_CHUNK;

			n = recv(sock, buf, want, 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return -1;
		}
		if (*head_len < MAGIC_BYTES) {
			size_t take = MAGIC_BYTES - *head_len < (size_t)n ? MAGIC_BYTES - *head_len : (size_t)n;

			memcpy(head + *head_len, buf, take);
			*head_len += take;
		}
		EVP_DigestUpdate(md, buf, (size_t)n);
		{
			const char *p = buf;
			size_t left = (size_t)n;

			while (left > 0) {
				ssize_t w = write(fd, p, left);

				if (w < 0 && errno == EINTR)
					continue;
				if (w <= 0)
					return -2;
				p += w;
				left -= (size_t)w;
			}
		}
		got += n;
	}
	return 0;
}

/* PUT <signed upload URL>: stores the bytes of a pending upload.  Every
 * refusal removes what was written before it answers, so a client that
 * reads the answer finds nothing left behind. */
static void
handle_put(int sock, uint32_t conn, struct request *r)
{
	struct upload u;
	char *tmp = NULL, *head = NULL, *buf = NULL, *tpath = NULL;
	char thumb_key[MEDIA_KEY_LEN + 1], digest_hex[65], detected[128];
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0, i;
	size_t head_len = 0;
	int fd = -1, status, width = 0, height = 0, have_thumb = 0, rc;
	int code = 0;			/* the refusal: HTTP status, 0 none, -1 no answer */
	const char *reason = NULL, *why = NULL;
	EVP_MD_CTX *md = NULL;

	if (r->thumb || !media_url_valid("put", r->id, r->user, r->expires, r->sig))
		return reply_error(sock, conn, 403, "Forbidden", "upload URL expired or not valid");
	if (r->chunked || r->content_length < 0)
		return reply_error(sock, conn, 411, "Length Required", "Content-Length is required");
	status = upload_target(r, &u);
	if (status == 404)
		return reply_error(sock, conn, 404, "Not Found", "no such upload");
	if (status)
		return reply_error(sock, conn, 503, "Service Unavailable", "database unavailable");
	if (u.ready)
		return reply_error(sock, conn, 409, "Conflict", "upload already finished");
	if (r->content_type[0]) {
		char *semi = strchr(r->content_type, ';');

		if (semi)
			*semi = '\0';
		for (i = 0; r->content_type[i]; i++)
			r->content_type[i] = (char)tolower((unsigned char)r->content_type[i]);
		if (strcmp(r->content_type, u.mime) != 0)
			return reply_error(sock, conn, 415, "Unsupported Media Type",
					   "Content-Type differs from the announced type");
	}
	if (r->content_length > u.size)
		return reply_error(sock, conn, 413, "Payload Too Large", "body larger than the announced size");
	if (r->content_length < u.size)
		return reply_error(sock, conn, 400, "Bad Request", "body size differs from the announced size");

	if (store->create(u.key, &fd, &tmp) != 0) {
		log_msg(LOG_ERROR, conn, "media: temporary file: %s", strerror(errno));
		return reply_error(sock, conn, 503, "Service Unavailable", "storage unavailable");
	}
	head = xmalloc(MAGIC_BYTES);
	buf = xmalloc(IO_CHUNK);
	md = EVP_MD_CTX_new();
	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		abort();
	rc = receive_body(sock, fd, r, r->content_length, md, head, &head_len, buf);
	close(fd);
	if (rc == -1) {
		log_msg(LOG_INFO, conn, "media: upload %s: client stopped sending", r->id);
		code = -1;
		goto out;
	}
	if (rc < 0) {
		code = 503, reason = "Service Unavailable", why = "storage write failed";
		goto out;
	}
	EVP_DigestFinal_ex(md, digest, &dlen);
	for (i = 0; i < dlen; i++)
		snprintf(digest_hex + 2 * i, 3, "%02x", digest[i]);
	if (strcmp(digest_hex, u.sha256) != 0) {
		code = 400, reason = "Bad Request", why = "sha256 differs from the announced hash";
		goto out;
	}
	pthread_mutex_lock(&magic_lock);
	{
		const char *m = magic_buffer(magic_cookie, head, head_len);

		snprintf(detected, sizeof(detected), "%s", m ? m : "application/octet-stream");
	}
	pthread_mutex_unlock(&magic_lock);
	if (!mime_matches(u.mime, detected)) {
		log_msg(LOG_INFO, conn, "media: upload %s declared %s, content is %s", r->id, u.mime, detected);
		code = 415, reason = "Unsupported Media Type", why = "content does not match the announced type";
		goto out;
	}
	/* images get dimensions and a thumbnail; ciphertext never does */
	if (strncmp(u.mime, "image/", 6) == 0) {
		store_new_key(thumb_key);
		tpath = store->path(thumb_key);
		if (tpath) {
			rc = thumb_make(tmp, tpath, &width, &height);
			have_thumb = rc == 0;
			if (rc < 0) {
				code = 415, reason = "Unsupported Media Type", why = "image cannot be decoded";
				goto out;
			}
		}
	}
	status = upload_finish(r, &u, tmp, width, height, have_thumb ? thumb_key : NULL);
	if (status == 201) {
		char body[256], hdr[512];
		int blen, hlen;

		blen = snprintf(body, sizeof(body),
				"{\"upload\":\"%s\",\"size\":%" PRId64 ",\"width\":%d,\"height\":%d,\"thumbnail\":%s}\n",
				r->id, u.size, width, height, have_thumb ? "true" : "false");
		hlen = snprintf(hdr, sizeof(hdr),
				"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
				"Content-Length: %d\r\nCache-Control: no-store\r\n%s\r\n", blen, cors);
		log_msg(LOG_INFO, conn, "media: stored %s (%" PRId64 " bytes, %s)", r->id, u.size, u.mime);
		if (send_all(sock, hdr, (size_t)hlen) == 0)
			(void)send_all(sock, body, (size_t)blen);
	} else if (status == 409)
		code = 409, reason = "Conflict", why = "upload already finished";
	else
		code = 503, reason = "Service Unavailable", why = "database unavailable";
out:
	if (code != 0) {
		/* refused: nothing of it stays (the committed file was renamed away) */
		store->abort(tmp);
		if (tpath)
			(void)store->remove(thumb_key);
		if (code > 0)
			reply_error(sock, conn, code, reason, why);
	}
	free(tmp);
	free(tpath);
	EVP_MD_CTX_free(md);
	free(head);
	free(buf);
}

/* Parses a single "bytes=a-b" range of a file of size bytes into
 * [*start, *end]; 0 ok, 1 no Range header, -1 unsatisfiable or malformed. */
static int
parse_range(const char *h, off_t size, off_t *start, off_t *end)
{
	const char *dash;
	int64_t a, b;

	if (!h[0])
		return 1;
	if (strncmp(h, "bytes=", 6) != 0 || strchr(h, ','))
		return -1;
	h += 6;
	dash = strchr(h, '-');
	if (!dash || size == 0)
		return -1;
	if (dash == h) {		/* bytes=-n: the last n */
		if (parse_int64(dash + 1, strlen(dash + 1), &b) != 0 || b == 0)
			return -1;
		*start = b >= size ? 0 : size - b;
		*end = size - 1;
		return 0;
	}
	if (parse_int64(h, (size_t)(dash - h), &a) != 0 || a >= size)
		return -1;
	if (dash[1] == '\0')
		b = size - 1;
	else if (parse_int64(dash + 1, strlen(dash + 1), &b) != 0 || b < a)
		return -1;
	*start = a;
	*end = b >= size ? size - 1 : b;
	return 0;
}

/* GET/HEAD <signed download URL>: streams the file (or a range of it). */
static void
handle_get(int sock, uint32_t conn, struct request *r, int head_only)
{
	const char *params[2] = {r->id, r->thumb ? "true" : "false"};
	char key[MEDIA_KEY_LEN + 1], mime[128], etag[80], hdr[1024];
	PGconn *c;
	PGresult *res;
	int fd, hlen, rc;
	off_t size, start = 0, end = 0, off;
	int64_t ttl;

	if (!media_url_valid(r->thumb ? "thumb" : "get", r->id, r->user, r->expires, r->sig))
		return reply_error(sock, conn, 403, "Forbidden", "download URL expired or not valid");
	c = db_take();
	if (!c)
		return reply_error(sock, conn, 503, "Service Unavailable", "database unavailable");
	res = PQexecParams(c, "SELECT storage_key, mime, sha256"
			   "  FROM chat.media_download_target($1::uuid, $2::boolean)",
			   2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		int missing = PQresultStatus(res) == PGRES_TUPLES_OK;

		PQclear(res);
		db_give(c);
		return missing ? reply_error(sock, conn, 404, "Not Found", "no such file")
			       : reply_error(sock, conn, 503, "Service Unavailable", "database unavailable");
	}
	snprintf(key, sizeof(key), "%s", PQgetvalue(res, 0, 0));
	snprintf(mime, sizeof(mime), "%s", PQgetvalue(res, 0, 1));
	/* the content never changes: its hash (the thumbnail: its key) is its ETag */
	snprintf(etag, sizeof(etag), "\"%.64s\"",
		 PQgetisnull(res, 0, 2) ? key : PQgetvalue(res, 0, 2));
	PQclear(res);
	db_give(c);
	if (!store_key_valid(key) || store->open(key, &fd, &size) != 0)
		return reply_error(sock, conn, 404, "Not Found", "no such file");
	if (r->if_none_match[0] && strcmp(r->if_none_match, etag) == 0) {
		hlen = snprintf(hdr, sizeof(hdr), "HTTP/1.1 304 Not Modified\r\nETag: %s\r\n"
				"Cache-Control: private\r\n%s\r\n", etag, cors);
		(void)send_all(sock, hdr, (size_t)hlen);
		close(fd);
		return;
	}
	rc = parse_range(r->range, size, &start, &end);
	if (rc < 0) {
		hlen = snprintf(hdr, sizeof(hdr), "HTTP/1.1 416 Range Not Satisfiable\r\n"
				"Content-Range: bytes */%lld\r\nContent-Length: 0\r\n%s\r\n",
				(long long)size, cors);
		(void)send_all(sock, hdr, (size_t)hlen);
		close(fd);
		return;
	}
	if (rc == 1) {
		start = 0;
		end = size - 1;
	}
	ttl = r->expires - (int64_t)time(NULL);
	hlen = snprintf(hdr, sizeof(hdr),
			"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %lld\r\n"
			"ETag: %s\r\nCache-Control: private, max-age=%" PRId64 "\r\n"
			"Accept-Ranges: bytes\r\nX-Content-Type-Options: nosniff\r\n",
			rc == 0 ? "206 Partial Content" : "200 OK", mime,
			(long long)(size ? end - start + 1 : 0), etag, ttl > 0 ? ttl : 0);
	if (rc == 0)
		hlen += snprintf(hdr + hlen, sizeof(hdr) - (size_t)hlen,
				 "Content-Range: bytes %lld-%lld/%lld\r\n",
				 (long long)start, (long long)end, (long long)size);
	hlen += snprintf(hdr + hlen, sizeof(hdr) - (size_t)hlen, "%s\r\n", cors);
	if (send_all(sock, hdr, (size_t)hlen) != 0 || head_only || size == 0) {
		close(fd);
		return;
	}
	/* sendfile: the kernel moves the bytes; nothing is buffered here */
	off = start;
	while (off <= end) {
		size_t want = (size_t)(end - off + 1) < (1u << 20) ? (size_t)(end - off + 1) : (1u << 20);
		ssize_t n = sendfile(sock, fd, &off, want);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;		/* peer gone or stalled past the timeout */
	}
	close(fd);
}

/* Serves one request on sock. */
void
http_serve(int sock, uint32_t conn)
{
	char *buf = xmalloc(HEAD_MAX);
	struct request r;
	int rc;

	memset(&r, 0, sizeof(r));
	rc = read_head(sock, buf, &r);
	if (rc > 0)
		reply_error(sock, conn, rc, rc == 404 ? "Not Found" : rc == 403 ? "Forbidden" :
			    rc == 431 ? "Request Header Fields Too Large" : "Bad Request",
			    rc == 404 ? "not a media URL" : rc == 403 ? "media URL not valid" :
			    "malformed request");
	else if (rc == 0 && strcmp(r.id, "healthz") == 0) {
		static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
			"Content-Length: 3\r\nConnection: close\r\n\r\nok\n";

		(void)send_all(sock, ok, sizeof(ok) - 1);
	} else if (rc == 0 && strcmp(r.method, "PUT") == 0)
		handle_put(sock, conn, &r);
	else if (rc == 0 && strcmp(r.method, "GET") == 0)
		handle_get(sock, conn, &r, 0);
	else if (rc == 0 && strcmp(r.method, "HEAD") == 0)
		handle_get(sock, conn, &r, 1);
	else if (rc == 0 && strcmp(r.method, "OPTIONS") == 0) {
		char hdr[512];
		int hlen = snprintf(hdr, sizeof(hdr),
				    "HTTP/1.1 204 No Content\r\n"
				    "Access-Control-Allow-Methods: GET, HEAD, PUT, OPTIONS\r\n"
				    "Access-Control-Allow-Headers: Content-Type, Range, If-None-Match\r\n"
				    "Access-Control-Max-Age: 600\r\n%s\r\n", cors);

		(void)send_all(sock, hdr, (size_t)hlen);
	} else if (rc == 0)
		reply_error(sock, conn, 405, "Method Not Allowed", "use PUT, GET or HEAD");
	free(buf);
}
