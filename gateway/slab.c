/* slab.c: fixed-size slots for the objects every connection holds for its
 * whole life: lws's wsi, its WebSocket struct and receive buffer (through
 * lws_set_allocator) and our struct conn.
 *
 * Why: with plain malloc these long-lived objects end up interleaved with
 * the short-lived allocations of each handshake and chat.connect (lws's
 * header table, PGresults, pending entries); once those are freed the heap
 * is left full of holes that are neither reused nor given back.  Measured
 * with 5,000 idle connections (malloc_stats): 2.5 MB free inside a 10 MB
 * heap, about 500 bytes per connection, on top of malloc's 8-byte header
 * and 16-byte rounding per object.  Here each kind of object has its own
 * region of equal slots (no header, no holes between kinds), and the heap
 * keeps only transient data, which malloc_trim gives back.
 *
 * Each class reserves address space for --max-conns (+ slack) slots with
 * MAP_NORESERVE: pages become resident only when touched.  A freed slot
 * goes on the class's free list; when a class holds no object at all (the
 * process drained) its pages are given back (MADV_DONTNEED).  A class that
 * is full, or an object of another size, falls back to malloc, so the slab
 * never refuses memory that malloc would give.  Under AddressSanitizer the
 * slab is off (plain malloc) so that use-after-free is still caught. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "gateway.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_OFF 1
#endif
#endif

struct slab_class {
	const char *reason;		/* lws's allocation reason; NULL: ours */
	size_t size;			/* object size asked for (0: not set up yet) */
	size_t slot;			/* size rounded up to 16 */
	char *base;			/* reserved region */
	size_t nslots;			/* slots the region holds */
	size_t bump;			/* slots ever handed out */
	size_t live;			/* slots in use */
	void *free_list;		/* freed slots, linked through their first word */
};

/* lws's three per-connection objects (reasons as lws 4.1 names them), then ours. */
static struct slab_class classes[] = {
	{ "new server wsi" }, { "ws struct" }, { "rx_ubuf" }, { NULL },
};
#define N_CLASSES (sizeof(classes) / sizeof(classes[0]))
#define SLAB_CONN (&classes[N_CLASSES - 1])
static size_t slab_capacity;		/* slots per class (set by slab_init) */

/* Reserves the region of a class on its first object of that size; 0 on success. */
static int
slab_setup(struct slab_class *k, size_t size)
{
	void *p;

	k->size = size;
	k->slot = (size + 15) & ~(size_t)15;
	k->nslots = slab_capacity;
	p = mmap(NULL, k->slot * k->nslots, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		k->nslots = 0;		/* malloc from now on */
		return -1;
	}
	k->base = p;
	return 0;
}

/* A slot of class k for an object of size bytes, or NULL (use malloc). */
static void *
slab_get(struct slab_class *k, size_t size)
{
	void *p;

	if (!slab_capacity)
		return NULL;
	if (!k->size)
		slab_setup(k, size);
	if (size != k->size || !k->base)
		return NULL;
	if ((p = k->free_list)) {
		k->free_list = *(void **)p;
	} else if (k->bump < k->nslots) {
		p = k->base + k->bump++ * k->slot;
	} else {
		return NULL;		/* full: malloc */
	}
	k->live++;
	return p;
}

/* The class whose region holds p, or NULL (a malloc'd pointer). */
static struct slab_class *
slab_owner(const void *p)
{
	for (size_t i = 0; i < N_CLASSES; i++) {
		struct slab_class *k = &classes[i];
		if (k->base && (const char *)p >= k->base && (const char *)p < k->base + k->slot * k->nslots)
			return k;
	}
	return NULL;
}

/* Returns a slot; the last one of a class gives the class's pages back. */
static void
slab_put(struct slab_class *k, void *p)
{
	*(void **)p = k->free_list;
	k->free_list = p;
	if (--k->live == 0) {
		madvise(k->base, k->slot * k->bump, MADV_DONTNEED);
		k->free_list = NULL;
		k->bump = 0;
	}
}

/* lws's allocator (lws_set_allocator): the per-connection objects from
 * their slabs, everything else from malloc; size 0 frees. */
static __attribute__((unused)) void *
slab_lws_realloc(void *ptr, size_t size, const char *reason)
{
	struct slab_class *k = ptr ? slab_owner(ptr) : NULL;
	void *q;

	if (k) {
		if (!size) {
			slab_put(k, ptr);
			return NULL;
		}
		/* lws does not resize these; if it ever does, move to malloc */
		q = malloc(size);
		if (q) {
			memcpy(q, ptr, size < k->size ? size : k->size);
			slab_put(k, ptr);
		}
		return q;
	}
	if (!size) {
		free(ptr);
		return NULL;
	}
	if (!ptr && reason) {
		for (size_t i = 0; i < N_CLASSES - 1; i++)
			if (!strcmp(reason, classes[i].reason) && (q = slab_get(&classes[i], size)))
				return q;
	}
	return realloc(ptr, size);	/* NULL is lws's to handle (it logs OOM) */
}

/* Sizes the classes for max_conns connections and installs lws's allocator
 * (before lws_create_context).  A no-op under AddressSanitizer. */
void
slab_init(int max_conns)
{
#ifdef SLAB_OFF
	(void)max_conns;
#else
	/* + slack for the database, listen and handshake wsis */
	slab_capacity = (size_t)max_conns + 1024;
	lws_set_allocator(slab_lws_realloc);
#endif
}

/* A zeroed struct conn (from its slab, or malloc when full or off). */
void *
slab_conn_alloc(size_t size)
{
	void *p = slab_get(SLAB_CONN, size);

	if (!p)
		return xcalloc(1, size);
	memset(p, 0, size);
	return p;
}

/* Frees what slab_conn_alloc returned. */
void
slab_conn_free(void *p)
{
	struct slab_class *k = p ? slab_owner(p) : NULL;

	if (k)
		slab_put(k, p);
	else
		free(p);
}

/* Objects per slab class and resident slots (for docs and tests: "slab"
 * lines in the debug log at exit). */
void
slab_report(void)
{
	for (size_t i = 0; i < N_CLASSES; i++)
		if (classes[i].size)
			log_msg(LOG_DEBUG, 0, "slab %s: %zu-byte slots, %zu live, %zu touched",
				classes[i].reason ? classes[i].reason : "struct conn", classes[i].slot,
				classes[i].live, classes[i].bump);
}
