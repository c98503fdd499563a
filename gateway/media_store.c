/* media_store.c: the directory backend of chat-media's storage interface.
 * Keys are checked 64-hex-digit names, files live flat in --media-dir with
 * mode 0600, uploads are written to dir/tmp and renamed into place, so a
 * reader never sees a partial file. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/rand.h>
#include "media.h"

static char *store_dir;
const struct media_store *store;

/* 1 when key is exactly 64 lowercase hex digits (nothing else reaches a path). */
int
store_key_valid(const char *key)
{
	int i;

	if (!key)
		return 0;
	for (i = 0; i < MEDIA_KEY_LEN; i++)
		if (!((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f')))
			return 0;
	return key[MEDIA_KEY_LEN] == '\0';
}

/* A new random key: 32 bytes from OpenSSL's CSPRNG as hex; aborts when the
 * generator fails (a guessable key would be worse than no thumbnail). */
void
store_new_key(char *key)
{
	unsigned char raw[MEDIA_KEY_LEN / 2];
	int i;

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		abort();
	for (i = 0; i < (int)sizeof(raw); i++)
		snprintf(key + 2 * i, 3, "%02x", raw[i]);
}

/* The path of key in the directory (malloc'd). */
static char *
dir_path(const char *key)
{
	char *p;

	if (asprintf(&p, "%s/%s", store_dir, key) < 0)
		abort();
	return p;
}

/* Creates dir/tmp/<key>.<random> exclusively, mode 0600. */
static int
dir_create(const char *key, int *fd, char **tmp)
{
	char suffix[MEDIA_KEY_LEN + 1];

	store_new_key(suffix);
	if (asprintf(tmp, "%s/tmp/%s.%.16s", store_dir, key, suffix) < 0)
		abort();
	*fd = open(*tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (*fd < 0) {
		free(*tmp);
		*tmp = NULL;
		return -1;
	}
	return 0;
}

/* Renames the temporary file into place (same file system: atomic). */
static int
dir_commit(const char *tmp, const char *key)
{
	char *p = dir_path(key);
	int rc = rename(tmp, p);

	free(p);
	return rc;
}

/* Unlinks a temporary file. */
static void
dir_abort(const char *tmp)
{
	if (tmp)
		(void)unlink(tmp);
}

/* Opens key read-only and returns its size. */
static int
dir_open(const char *key, int *fd, off_t *size)
{
	char *p = dir_path(key);
	struct stat st;

	*fd = open(p, O_RDONLY | O_CLOEXEC);
	free(p);
	if (*fd < 0)
		return -1;
	if (fstat(*fd, &st) < 0) {
		close(*fd);
		return -1;
	}
	*size = st.st_size;
	return 0;
}

/* Unlinks key; ENOENT is success (already gone). */
static int
dir_remove(const char *key)
{
	char *p = dir_path(key);
	int rc = unlink(p);

	free(p);
	return rc < 0 && errno != ENOENT ? -1 : 0;
}

static const struct media_store dir_store = {
	dir_create, dir_commit, dir_abort, dir_open, dir_remove, dir_path
};

/* Sets up the directory backend (creates dir and dir/tmp, mode 0700). */
int
store_dir_init(const char *dir)
{
	char *tmp;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -1;
	if (asprintf(&tmp, "%s/tmp", dir) < 0)
		abort();
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST) {
		free(tmp);
		return -1;
	}
	free(tmp);
	store_dir = strdup(dir);
	store = &dir_store;
	return 0;
}
