/* media_db.c: chat-media's database connections: a fixed pool of blocking
 * libpq connections shared by the request threads.  Each request makes one
 * or two short calls, so a few connections serve many transfers: the bytes
 * move without holding a connection. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "media.h"
#include "gateway.h"

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static PGconn **pool;			/* NULL slot: not connected yet */
static char *pool_busy;
static int pool_size;

/* Sets up the (lazily connected) pool of mcfg.db_pool slots. */
int
db_pool_init(void)
{
	pool_size = mcfg.db_pool;
	pool = xcalloc(pool_size, sizeof(*pool));
	pool_busy = xcalloc(pool_size, 1);
	return 0;
}

/* Takes a free slot (waits for one), connects it when needed; NULL when the
 * database cannot be reached (the slot is given back). */
PGconn *
db_take(void)
{
	int i, slot = -1;
	PGconn *c;

	pthread_mutex_lock(&pool_lock);
	while (slot < 0) {
		for (i = 0; i < pool_size && slot < 0; i++)
			if (!pool_busy[i])
				slot = i;
		if (slot < 0)
			pthread_cond_wait(&pool_cond, &pool_lock);
	}
	pool_busy[slot] = 1;
	c = pool[slot];
	pthread_mutex_unlock(&pool_lock);

	if (c && PQstatus(c) != CONNECTION_OK) {
		PQfinish(c);
		c = NULL;
	}
	if (!c) {
		c = PQconnectdb(mcfg.dsn);
		if (PQstatus(c) != CONNECTION_OK) {
			log_msg(LOG_WARN, 0, "database: %s", PQerrorMessage(c));
			PQfinish(c);
			c = NULL;
		}
	}
	pthread_mutex_lock(&pool_lock);
	pool[slot] = c;
	if (!c) {
		pool_busy[slot] = 0;
		pthread_cond_signal(&pool_cond);
	}
	pthread_mutex_unlock(&pool_lock);
	return c;
}

/* Gives a connection back; one left inside a transaction is reset. */
void
db_give(PGconn *conn)
{
	int i;

	if (conn && PQtransactionStatus(conn) != PQTRANS_IDLE) {
		PGresult *r = PQexec(conn, "ROLLBACK");

		PQclear(r);
	}
	pthread_mutex_lock(&pool_lock);
	for (i = 0; i < pool_size; i++)
		if (pool[i] == conn && pool_busy[i]) {
			pool_busy[i] = 0;
			break;
		}
	pthread_cond_signal(&pool_cond);
	pthread_mutex_unlock(&pool_lock);
}
