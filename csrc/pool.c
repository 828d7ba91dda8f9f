/*
 * sparsefan: the threads behind the kernels (see pool.h).
 *
 * Why not an OpenMP parallel region per call: a region ends with a barrier that every thread of
 * the team must reach, including a thread the OS has not scheduled yet, and OpenMP's threads spin
 * between regions (GOMP_SPINCOUNT, 300000 turns by default; settable only in the environment,
 * before the runtime starts). On a machine with one other busy process per core, a call on two
 * threads then waits a scheduler time slice for its second thread, once per barrier, and the
 * spinning thread takes CPU time from the thread doing the work: measured 5-40x slower than one
 * thread (bench/contention.py). Here a call is a list of items claimed in order by whichever
 * threads are running; the caller waits only for items that were claimed and have not finished.
 *
 * The pthreads backend: one process-wide pool, created on first use and grown on demand, owned
 * by one call at a time (a call that finds it busy -- another Python thread's call -- runs on its
 * own thread). The owner publishes a job (its function, context, number of items and a new
 * generation number), wakes the workers it wants, and claims items itself. Claims go through one
 * 64-bit word, generation << 32 | items left, so a worker can never claim an item of a job it was
 * not woken for, or of one that has ended. A finished item is stamped with the job's generation;
 * sf_team_wait and the final join wait on those stamps and on the count of finished items.
 */
#include "pool.h"

#include <stdlib.h>

/* How long a waiting thread spins before it sleeps, in microseconds (chosen by measurement:
 * bench/contention.py, docs/benchmarks.md): for an item or the end of a call, and a worker for
 * the next call (long enough to span the Python code between two calls of a loop). */
#ifndef SF_SPIN_US
#define SF_SPIN_US 50
#endif
#ifndef SF_IDLE_SPIN_US
#define SF_IDLE_SPIN_US 2000
#endif

#if defined(_OPENMP) && !defined(SF_POOL_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#define SF_POOL_PTHREADS 1
#endif

/* The spin time `which` (SF_SPIN_WAIT or SF_SPIN_IDLE) from its environment variable. */
static int spin_from_env(int which)
{
    const int fallback = which == SF_SPIN_IDLE ? SF_IDLE_SPIN_US : SF_SPIN_US;
    const char *s = getenv(which == SF_SPIN_IDLE ? "SPARSEFAN_IDLE_SPIN_US" : "SPARSEFAN_SPIN_US");
    if (s == NULL || *s == '\0')
        return fallback;
    char *end;
    const long v = strtol(s, &end, 10);
    return (*end == '\0' && v >= 0 && v <= 1000000) ? (int)v : fallback;
}

#ifndef SF_POOL_PTHREADS
/* The spin times of the other backends: kept for sf_pool_spin_us, unused (OpenMP's own waits
 * follow OMP_WAIT_POLICY). */
static int spin_us[2] = {-1, -1};

int sf_pool_spin_us(int which, int us)
{
    which = which == SF_SPIN_IDLE;
    const int old = spin_us[which] < 0 ? spin_from_env(which) : spin_us[which];
    if (us >= 0)
        spin_us[which] = us;
    return old;
}
#endif

#ifdef SF_POOL_PTHREADS
/* ------------------------------------------------------------------------------------------ */
/* POSIX threads                                                                               */

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#define MAX_WORKERS 255

/* sleeping on a 32-bit word until it differs from value (or a spurious wake-up) */
#ifdef __linux__
static void word_wait(_Atomic uint32_t *w, uint32_t value)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}
static void word_wake(_Atomic uint32_t *w)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static pthread_mutex_t word_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t word_cond = PTHREAD_COND_INITIALIZER;
static void word_wait(_Atomic uint32_t *w, uint32_t value)
{
    pthread_mutex_lock(&word_lock);
    while (atomic_load(w) == value)
        pthread_cond_wait(&word_cond, &word_lock);
    pthread_mutex_unlock(&word_lock);
}
static void word_wake(_Atomic uint32_t *w)
{
    (void)w;
    pthread_mutex_lock(&word_lock);
    pthread_cond_broadcast(&word_cond);
    pthread_mutex_unlock(&word_lock);
}
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* A gap this long between two looks at the clock while spinning means the OS ran something else
 * on this CPU meanwhile: the CPU is wanted, so the spinning thread goes to sleep instead. */
#define PREEMPTED_NS 50000

/* Spin while !(ready) for up to budget_ns, or until the thread was descheduled. Every `turns`
 * looks, a yielding spin (YIELD) offers the CPU to any other thread waiting for it: a worker
 * waiting for the next call stays ready for it when the machine is idle, but takes no time from
 * the calling thread or from anyone else when it is not (measured: a plain spin between calls
 * slowed batch-64 predict on a loaded machine by 10-15%, a yielding one by nothing). */
#define SPIN_UNTIL(ready, budget_ns, YIELD)                                                     \
    do {                                                                                       \
        if ((budget_ns) > 0 && !(ready)) {                                                     \
            const int turns_ = (YIELD) ? 16 : 64;                                              \
            int64_t last_ = now_ns();                                                          \
            const int64_t end_ = last_ + (budget_ns);                                          \
            for (int i_ = 1; !(ready); ++i_) {                                                 \
                cpu_relax();                                                                   \
                if (i_ % turns_ == 0) {                                                        \
                    if (YIELD)                                                                 \
                        sched_yield();                                                         \
                    const int64_t t_ = now_ns();                                               \
                    if (t_ > end_ || t_ - last_ > PREEMPTED_NS)                                \
                        break;                                                                 \
                    last_ = t_;                                                                \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    } while (0)

struct sf_team {
    /* The current job: written by its owner before it publishes claim, read by the threads that
     * claimed one of its items (the job cannot end before their items do). */
    sf_item_fn fn;
    void *ctx;
    int64_t n_items;
    uint32_t gen;
    int64_t spin_ns;
    _Atomic uint32_t *stamp; /* stamp[i] == gen: item i of this job has finished */
    int64_t cap;
    _Alignas(64) _Atomic uint64_t claim; /* gen << 32 | items not claimed yet */
    _Alignas(64) _Atomic uint32_t done;  /* items of this job finished */
    _Atomic int sleepers;                /* threads sleeping on done */
};

typedef struct {
    _Alignas(64) _Atomic uint32_t wake; /* the generation of the last job it was asked to join */
    _Atomic int sleeping;               /* 1 while it sleeps on wake */
} worker_slot;

static struct {
    struct sf_team team;
    _Atomic int busy; /* a call owns the pool */
    _Atomic int spin_us[2]; /* SF_SPIN_WAIT, SF_SPIN_IDLE */
    _Atomic int64_t idle_spin_ns; /* how long workers spin for the next job (set by the last) */
    int n_workers;
    int n_cpus;
    worker_slot slots[MAX_WORKERS];
} pool;

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static _Thread_local int thread_index; /* 0 on every thread but the pool's workers */

int sf_team_thread(void) { return thread_index; }

/* In a child process the workers do not exist: start again with none. */
static void pool_after_fork(void)
{
    memset(pool.slots, 0, sizeof(pool.slots));
    pool.n_workers = 0;
    atomic_store(&pool.team.claim, 0);
    atomic_store(&pool.team.done, 0);
    atomic_store(&pool.team.sleepers, 0);
    atomic_store(&pool.busy, 0);
}

static void pool_init(void)
{
    int n = 0;
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
#endif
    if (n <= 0)
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    pool.n_cpus = n > 0 ? n : 1;
    atomic_store(&pool.spin_us[SF_SPIN_WAIT], spin_from_env(SF_SPIN_WAIT));
    atomic_store(&pool.spin_us[SF_SPIN_IDLE], spin_from_env(SF_SPIN_IDLE));
    pthread_atfork(NULL, NULL, pool_after_fork);
}

int sf_pool_spin_us(int which, int us)
{
    pthread_once(&pool_once, pool_init);
    _Atomic int *v = &pool.spin_us[which == SF_SPIN_IDLE];
    return us >= 0 ? atomic_exchange(v, us) : atomic_load(v);
}

const char *sf_pool_backend(void) { return "pthreads"; }

#ifdef SF_DEBUG
/* Debug builds (-DSF_DEBUG, the sanitizer stage of .ci/run) pause for a pseudo-random 0-20 us
 * before each item run by a team: the threads then interleave differently from run to run, so a
 * missing dependency between items shows up as a wrong result in the tests. */
static void jitter(uint32_t gen, int64_t item)
{
    static _Atomic uint32_t calls;
    const uint32_t h = (gen * 2654435761u) ^ ((uint32_t)item * 40503u) ^
                       (atomic_fetch_add(&calls, 1) * 2246822519u);
    const int64_t end = now_ns() + (int64_t)((h >> 8) % 20000);
    while (now_ns() < end)
        cpu_relax();
}
#define SF_JITTER(gen, item) jitter(gen, item)
#else
#define SF_JITTER(gen, item) ((void)0)
#endif

/* Claim and run items of job gen until none is left. */
static void work(struct sf_team *t, uint32_t gen)
{
    for (;;) {
        uint64_t c = atomic_load_explicit(&t->claim, memory_order_acquire);
        do {
            if ((uint32_t)(c >> 32) != gen || (uint32_t)c == 0)
                return;
        } while (!atomic_compare_exchange_weak_explicit(&t->claim, &c, c - 1,
                                                        memory_order_acquire,
                                                        memory_order_acquire));
        const int64_t item = t->n_items - (int64_t)(uint32_t)c;
        SF_JITTER(gen, item);
        t->fn(t->ctx, item, t);
        atomic_store_explicit(&t->stamp[item], gen, memory_order_release);
        atomic_fetch_add(&t->done, 1);
        if (atomic_load(&t->sleepers) > 0)
            word_wake(&t->done);
    }
}

static void *worker_main(void *arg)
{
    worker_slot *s = arg;
    uint32_t seen = 0;
    thread_index = (int)(s - pool.slots) + 1;
    for (;;) {
        uint32_t g = atomic_load(&s->wake);
        if (g == seen) {
            const int64_t spin = atomic_load_explicit(&pool.idle_spin_ns, memory_order_relaxed);
            SPIN_UNTIL((g = atomic_load(&s->wake)) != seen, spin, 1);
            if (g == seen) {
                atomic_store(&s->sleeping, 1);
                while ((g = atomic_load(&s->wake)) == seen)
                    word_wait(&s->wake, seen);
                atomic_store(&s->sleeping, 0);
            }
        }
        seen = g;
        work(&pool.team, g);
    }
    return NULL;
}

/* Up to n workers (fewer if the system refuses threads): the number there is. */
static int ensure_workers(int n)
{
    if (n > MAX_WORKERS)
        n = MAX_WORKERS;
    while (pool.n_workers < n) {
        pthread_attr_t attr;
        sigset_t all, old;
        pthread_t th;
        if (pthread_attr_init(&attr) != 0)
            break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        sigfillset(&all); /* signals go to the application's threads, never to a worker */
        pthread_sigmask(SIG_SETMASK, &all, &old);
        const int err = pthread_create(&th, &attr, worker_main, &pool.slots[pool.n_workers]);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (err != 0)
            break;
        ++pool.n_workers;
    }
    return pool.n_workers < n ? pool.n_workers : n;
}

/* Room for n_items stamps (new ones hold 0, which no generation is). */
static int ensure_stamps(struct sf_team *t, int64_t n_items)
{
    if (n_items <= t->cap)
        return 1;
    const int64_t cap = n_items > 2 * t->cap ? n_items : 2 * t->cap;
    _Atomic uint32_t *p = realloc(t->stamp, (size_t)cap * sizeof(*p));
    if (p == NULL)
        return 0;
    for (int64_t i = t->cap; i < cap; ++i)
        atomic_init(&p[i], 0);
    t->stamp = p;
    t->cap = cap;
    return 1;
}

/* Spin for up to t->spin_ns, then sleep, until stamp[item] == gen (item >= 0) or until every
 * item of the job has finished (item < 0). */
static void wait_for(struct sf_team *t, int64_t item)
{
    const uint32_t gen = t->gen;
    const uint32_t n = (uint32_t)t->n_items;
#define SF_READY()                                                                              \
    (item >= 0 ? atomic_load_explicit(&t->stamp[item], memory_order_acquire) == gen            \
               : atomic_load(&t->done) == n)
    SPIN_UNTIL(SF_READY(), t->spin_ns, 0);
    if (SF_READY())
        return;
    atomic_fetch_add(&t->sleepers, 1);
    for (;;) {
        const uint32_t d = atomic_load(&t->done);
        if (SF_READY())
            break;
        word_wait(&t->done, d);
    }
    atomic_fetch_sub(&t->sleepers, 1);
#undef SF_READY
}

void sf_team_wait(sf_team *t, int64_t first, int64_t last)
{
    if (t == NULL)
        return;
    for (int64_t i = first; i <= last; ++i)
        wait_for(t, i);
}

void sf_run(int n_threads, int64_t n_items, sf_item_fn fn, void *ctx)
{
    if (n_threads > 1 && n_items > 1 && n_items < (int64_t)UINT32_MAX) {
        pthread_once(&pool_once, pool_init);
        if (!atomic_exchange_explicit(&pool.busy, 1, memory_order_acquire)) {
            struct sf_team *t = &pool.team;
            const int64_t want = (int64_t)n_threads - 1 < n_items - 1 ? n_threads - 1
                                                                      : n_items - 1;
            const int helpers = ensure_workers((int)want);
            if (helpers > 0 && ensure_stamps(t, n_items)) {
                uint32_t gen = t->gen + 1;
                if (gen == 0)
                    gen = 1;
                t->fn = fn;
                t->ctx = ctx;
                t->n_items = n_items;
                t->gen = gen;
                const int over = n_threads > pool.n_cpus; /* more threads than CPUs: no spin */
                t->spin_ns = over ? 0 : (int64_t)atomic_load(&pool.spin_us[SF_SPIN_WAIT]) * 1000;
                atomic_store_explicit(&pool.idle_spin_ns,
                                      over ? 0
                                           : (int64_t)atomic_load(&pool.spin_us[SF_SPIN_IDLE]) *
                                                 1000,
                                      memory_order_relaxed);
                atomic_store(&t->done, 0);
                atomic_store_explicit(&t->claim, (uint64_t)gen << 32 | (uint64_t)n_items,
                                      memory_order_release);
                for (int w = 0; w < helpers; ++w)
                    atomic_store(&pool.slots[w].wake, gen);
                for (int w = 0; w < helpers; ++w)
                    if (atomic_load(&pool.slots[w].sleeping))
                        word_wake(&pool.slots[w].wake);
                work(t, gen);
                wait_for(t, -1);
                atomic_store_explicit(&pool.busy, 0, memory_order_release);
                return;
            }
            atomic_store_explicit(&pool.busy, 0, memory_order_release);
        }
    }
    for (int64_t i = 0; i < n_items; ++i)
        fn(ctx, i, NULL);
}

#elif defined(_OPENMP)
/* ------------------------------------------------------------------------------------------ */
/* OpenMP (systems without POSIX threads): the same claims, in one parallel region             */

#include <omp.h>

struct sf_team {
    volatile int64_t next;
    volatile char *done;
};


const char *sf_pool_backend(void) { return "openmp"; }

int sf_team_thread(void) { return omp_get_thread_num(); }

void sf_team_wait(sf_team *t, int64_t first, int64_t last)
{
    if (t == NULL)
        return;
    for (int64_t i = first; i <= last; ++i)
        while (!t->done[i]) {
#pragma omp flush
        }
}

void sf_run(int n_threads, int64_t n_items, sf_item_fn fn, void *ctx)
{
    char *done = n_threads > 1 && n_items > 1 ? calloc((size_t)n_items, 1) : NULL;
    if (done == NULL) {
        for (int64_t i = 0; i < n_items; ++i)
            fn(ctx, i, NULL);
        return;
    }
    struct sf_team t;
    t.next = 0;
    t.done = done;
#pragma omp parallel num_threads(n_threads)
    for (;;) {
        int64_t i;
#pragma omp critical(sf_claim)
        i = t.next++;
        if (i >= n_items)
            break;
        fn(ctx, i, &t);
#pragma omp flush
        t.done[i] = 1;
#pragma omp flush
    }
    free(done);
}

#else
/* ------------------------------------------------------------------------------------------ */
/* one thread                                                                                  */


const char *sf_pool_backend(void) { return "none"; }

int sf_team_thread(void) { return 0; }

void sf_team_wait(sf_team *t, int64_t first, int64_t last)
{
    (void)t;
    (void)first;
    (void)last;
}

void sf_run(int n_threads, int64_t n_items, sf_item_fn fn, void *ctx)
{
    (void)n_threads;
    for (int64_t i = 0; i < n_items; ++i)
        fn(ctx, i, NULL);
}
#endif
