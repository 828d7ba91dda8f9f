/*
 * sparsefan: the threads behind the kernels (internal header; see pool.c).
 *
 * A call is a list of work items, 0 .. n_items - 1 (ranges of output rows, in fanin.c). The
 * calling thread and up to n_threads - 1 workers of a pool claim them one at a time, in
 * increasing order, and sf_run returns once every item has finished. No thread ever waits for
 * another thread as such, only for items it needs: a worker that the OS has not scheduled yet (a
 * busy machine) finds the work taken by the others when it wakes up, and a call never waits for
 * it. An item may wait for earlier items (sf_team_wait): that is how a chain of layers runs as
 * one call without a barrier between layers.
 *
 * Waiting threads spin for a short time, then sleep (a futex on Linux): a spinning thread would
 * hold a CPU that a descheduled thread of the same call needs.
 *
 * Backends: POSIX threads in threaded builds (_OPENMP defined, i.e. SPARSEFAN_OPENMP not 0, on a
 * POSIX system); an OpenMP team elsewhere (items claimed in order, but the region ends with
 * OpenMP's barrier); one thread without OpenMP. The results never depend on the backend or on
 * n_threads: an item computes the same thing whichever thread runs it.
 */
#ifndef SPARSEFAN_POOL_H
#define SPARSEFAN_POOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sf_team sf_team; /* the running call, as seen by its items; NULL: one thread */
typedef void (*sf_item_fn)(void *ctx, int64_t item, sf_team *team);

/* fn(ctx, i, team) once for every i in [0, n_items), on up to n_threads threads. */
void sf_run(int n_threads, int64_t n_items, sf_item_fn fn, void *ctx);

/* Inside an item: return once the items first .. last (all below the calling item) have
 * finished. A no-op on one thread, where items run in order. */
void sf_team_wait(sf_team *team, int64_t first, int64_t last);

/* Inside an item: the index of the thread running it, 0 .. n_threads - 1 (0: the caller). */
int sf_team_thread(void);

/* How long (microseconds) a thread spins before it sleeps: SF_SPIN_WAIT, waiting for an item or
 * for the end of a call (default SF_SPIN_US, or the environment variable SPARSEFAN_SPIN_US read at
 * the first call), or SF_SPIN_IDLE, a worker waiting for the next call (SF_IDLE_SPIN_US,
 * SPARSEFAN_IDLE_SPIN_US). A spinning thread that finds it was descheduled meanwhile sleeps at
 * once, and nothing spins when a call asks for more threads than the process has CPUs. Sets the
 * time when us >= 0; returns the previous value. Not thread-safe: for benchmarks. */
enum { SF_SPIN_WAIT = 0, SF_SPIN_IDLE = 1 };
int sf_pool_spin_us(int which, int us);

/* The backend: "pthreads", "openmp" or "none". */
const char *sf_pool_backend(void);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEFAN_POOL_H */
