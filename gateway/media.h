/* media.h: the modules of chat-media, the byte server of attachments
 * (docs/media.md): configuration, storage, database pool, thumbnails and
 * the HTTP handlers. */
#ifndef CHAT_MEDIA_H
#define CHAT_MEDIA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <libpq-fe.h>

#define MEDIA_VERSION "0.1.0"

/* Storage keys are 64 lowercase hex digits (random, made by the database
 * or by us): checked before any use as a file name, so never traversable. */
#define MEDIA_KEY_LEN 64

struct media_config {
	char *listen_host;		/* NULL: every interface */
	int listen_port;
	char *dsn;
	char *token_secret_file;
	char *media_dir;
	int max_connections;		/* concurrent requests; more get 503 */
	int io_timeout;			/* seconds a stalled client may hold a request */
	int sweep_interval;		/* seconds between cleanup/deletion passes */
	int db_pool;			/* database connections */
	int log_min;
	int log_json;
	unsigned char key[32];		/* HMAC(token secret, "chat-media") */
};
extern struct media_config mcfg;

/* ---- media_store.c: where the bytes live (a directory; S3 later) ---- */

/* A storage backend.  Every call takes a key checked by store_key_valid;
 * calls are thread-safe.  Returns 0 or -1 with errno set. */
struct media_store {
	/* Opens a new private temporary file for the bytes of key; *tmp gets
	 * its handle (a path here) for commit/abort. */
	int (*create)(const char *key, int *fd, char **tmp);
	/* Makes the temporary file the content of key (atomically). */
	int (*commit)(const char *tmp, const char *key);
	/* Drops a temporary file. */
	void (*abort)(const char *tmp);
	/* Opens key for reading; *size gets its length. */
	int (*open)(const char *key, int *fd, off_t *size);
	/* Deletes key; a missing key is not an error. */
	int (*remove)(const char *key);
	/* The local path of key (thumbnailer input); NULL when not local. */
	char *(*path)(const char *key);
};
extern const struct media_store *store;
/* Sets up the directory backend under dir (creates dir/tmp); -1 on error. */
int store_dir_init(const char *dir);
/* 1 when key is 64 lowercase hex digits. */
int store_key_valid(const char *key);
/* Fills key with a new random key (MEDIA_KEY_LEN + 1 bytes). */
void store_new_key(char *key);

/* ---- media_db.c: a small pool of blocking connections ---- */

/* Takes a connection (waits for one; reconnects a broken one); NULL when
 * the database cannot be reached. */
PGconn *db_take(void);
/* Returns a connection taken with db_take. */
void db_give(PGconn *conn);
/* Sets up the pool; 0 or -1. */
int db_pool_init(void);

/* ---- media_thumb.c: libvips ---- */

/* Initialises libvips; 0 or -1. */
int thumb_init(const char *argv0);
/* Reads the dimensions of the image at path and writes a JPEG thumbnail
 * (longest side 320 px) to thumb_path.  Returns 0 (thumbnail made), 1
 * (dimensions only: not thumbnailable), -1 (not an image vips reads). */
int thumb_make(const char *path, const char *thumb_path, int *width, int *height);

/* ---- media_http.c: one HTTP request on a connected socket ---- */

/* Serves one request on fd (then the caller closes it). */
void http_serve(int fd, uint32_t conn_id);
/* Checks the signature of a media URL; 1 when valid and unexpired. */
int media_url_valid(const char *op, const char *id, int64_t user, int64_t expires, const char *sig);
/* Sets up libmagic; 0 or -1. */
int magic_init(void);
/* 1 when the detected content type is acceptable for the declared one. */
int mime_matches(const char *declared, const char *detected);

#endif
