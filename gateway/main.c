/* main.c: loads the configuration, then serves (server.c) or supervises
 * --workers (supervise.c). */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "gateway.h"

/* Loads the configuration, then serves or supervises. */
int
main(int argc, char **argv)
{
	/* One out-of-memory policy for jansson's allocations too (alloc.c). */
	json_set_alloc_funcs(xmalloc, free);
	config_load(argc, argv);
	log_setup(cfg.log_json, cfg.log_min, cfg.node, cfg.log_file);
	log_reopen();
	srandom((unsigned)(time(NULL) ^ getpid()));
	if (cfg.workers > 0)
		return supervise_run();
	return server_run();
}

