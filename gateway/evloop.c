/* evloop.c: --event-lib ev, lws's libev event library on a loop we own.
 *
 * lws 4.1 loads its libev support as a plugin (libwebsockets-evlib_ev.so)
 * when LWS_SERVER_OPTION_LIBEV is set.  The loop is ours (a foreign loop
 * to lws), so lws installs no signal watchers (server.c's sigaction
 * handlers stay in charge) and the service loop is one ev_run round at a
 * time, checking the stop flag between rounds like the poll loop.  libev
 * picks epoll on Linux: the cost per wake-up follows the ready sockets,
 * not all of them as with poll(). */
#include <ev.h>
#include "gateway.h"

static struct ev_loop *loop;
static void *foreign_loops[1];

/* Makes the loop and points info at it. */
int
evloop_setup(struct lws_context_creation_info *info)
{
	/* NOSIGMASK: libev must not block our signals (SIGTERM, SIGHUP). */
	loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
	if (!loop) {
		log_msg(LOG_ERROR, 0, "--event-lib ev: cannot create an epoll loop");
		return -1;
	}
	foreign_loops[0] = loop;
	info->foreign_loops = foreign_loops;
	info->options |= LWS_SERVER_OPTION_LIBEV;
	log_msg(LOG_INFO, 0, "event loop: libev (epoll)");
	return 0;
}

/* One round: waits for events (or lws's next timer), then handles them. */
void
evloop_run_once(void)
{
	ev_run(loop, EVRUN_ONCE);
}

/* Frees the loop (after lws_context_destroy stopped every watcher). */
void
evloop_destroy(void)
{
	if (loop)
		ev_loop_destroy(loop);
	loop = NULL;
}
