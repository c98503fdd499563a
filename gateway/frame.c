/* frame.c: assembly of a WebSocket message that lws hands over in pieces,
 * and the reference-counted outgoing frames (struct msg).
 *
 * No lws dependency, so that tests/fuzz/frame_fuzz.c can drive it.  lws
 * delivers a message as fragments, and a fragment (or a whole frame) larger
 * than the rx buffer in several pieces; "remaining" is what lws says is still
 * to come of the current fragment.  The buffer tracks its capacity, grows
 * geometrically (amortised O(1) per byte, whatever the piece sizes) and never
 * beyond the frame cap, which is checked before any allocation. */
#include <stdlib.h>
#include <string.h>
#include "gateway.h"

/* Appends one piece; -1 when the message would exceed max (the caller
 * closes with 1009 and calls frame_reset).  Out of memory aborts (alloc.c). */
int
frame_append(struct frame_buf *f, const void *in, size_t len, size_t remaining, size_t max)
{
	size_t need, cap;

	/* Overflow-safe: f->len <= max always holds. */
	if (len > max - f->len || remaining > max - f->len - len)
		return -1;
	need = f->len + len;
	if (need > f->cap || (need + remaining > f->cap && remaining)) {
		/* Room for what lws announced of this fragment too: a frame
		 * arriving in rx-buffer-sized pieces costs one allocation. */
		size_t want = need + remaining;
		cap = f->cap ? f->cap : 1024;
		while (cap < want)
			cap *= 2;
		if (cap > max)
			cap = max;
		f->data = xrealloc(f->data, cap);
		f->cap = (uint32_t)cap;
	}
	if (len)
		memcpy(f->data + f->len, in, len);
	f->len = (uint32_t)need;
	return 0;
}

/* Frees the buffer and forgets the message. */
void
frame_reset(struct frame_buf *f)
{
	free(f->data);
	f->data = NULL;
	f->len = f->cap = 0;
}

/* Allocates a frame with LWS_PRE headroom holding a copy of data (refs = 1). */
struct msg *
msg_new(const char *data, size_t len)
{
	struct msg *m = xmalloc(sizeof(*m) + LWS_PRE + len + 1);

	m->refs = 1;
	m->len = (uint32_t)len;
	m->commit_us = 0;
	memcpy(m->buf + LWS_PRE, data, len);
	m->buf[LWS_PRE + len] = '\0';
	return m;
}

/* Takes a reference (static frames are not counted). */
void
msg_ref(struct msg *m)
{
	if (m->refs != MSG_STATIC)
		m->refs++;
}

/* Drops a reference; the last one frees the frame. */
void
msg_unref(struct msg *m)
{
	if (m->refs != MSG_STATIC && --m->refs == 0)
		free(m);
}

/* The one resync frame: sent when a client's events were lost (database
 * reconnect, failed ref lookup); static, so queueing it never allocates. */
struct msg *
msg_resync(void)
{
	static struct msg *resync;

	if (!resync) {
		resync = msg_new("{\"type\":\"resync\"}", 17);
		resync->refs = MSG_STATIC;
	}
	return resync;
}
