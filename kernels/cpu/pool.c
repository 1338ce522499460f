/*
 * Persistent thread pool for the CPU backend.
 *
 * A decode step issues a few hundred small parallel jobs (one per matmul),
 * each a few microseconds to a millisecond long, so waking threads through
 * the kernel for every job would cost as much as the job.  Workers therefore
 * spin on a job counter for a while after each job (DSV4_POOL_SPIN_NS) and
 * only then sleep on a condition variable; a burst of jobs keeps them hot,
 * an idle engine costs nothing after the spin window.
 *
 * A job is ntasks independent tasks; the caller and the workers take tasks
 * from one atomic counter, so a thread that is slowed down (another process
 * on the core) simply takes fewer.  Results never depend on which thread ran
 * which task: the kernels write disjoint outputs.
 *
 * Ownership: the pool owns its threads; dsv4_pool_free() joins them.  Jobs
 * from several caller threads are serialised by run_lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"

/* How long an idle worker spins before sleeping. */
#define DSV4_POOL_SPIN_NS  (200 * 1000)

#if defined(__x86_64__) || defined(__i386__)
#define dsv4_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define dsv4_cpu_relax() __asm__ __volatile__("yield")
#else
#define dsv4_cpu_relax() ((void) 0)
#endif

struct dsv4_pool {
    int             nthreads;     /* including the caller */
    pthread_t      *threads;      /* [nthreads - 1] workers */
    int             started;      /* workers successfully created */

    pthread_mutex_t run_lock;     /* one job at a time */

    /* the current job; written by the caller before `gen` is bumped */
    dsv4_pool_fn    fn;
    void           *arg;
    int             ntasks;
    atomic_int      next;         /* next task to take */
    atomic_int      pending;      /* workers that have not finished the job */
    atomic_uint     gen;          /* job generation; workers wait for a change */
    atomic_int      stop;

    /* sleeping workers */
    pthread_mutex_t sleep_lock;
    pthread_cond_t  sleep_cond;
    atomic_int      sleepers;
};

typedef struct {
    dsv4_pool *p;
    int        id;
} dsv4_pool_worker;

static uint64_t
dsv4_pool_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static void
dsv4_pool_take(dsv4_pool *p, int thread)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->ntasks) {
            return;
        }
        p->fn(p->arg, t, thread);
    }
}

/* Waits until gen differs from seen (or stop); returns the new gen. */
static unsigned
dsv4_pool_wait(dsv4_pool *p, unsigned seen)
{
    uint64_t t0 = 0;
    unsigned g;

    for (int spins = 0; ; spins++) {
        g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            return g;
        }
        dsv4_cpu_relax();
        if ((spins & 255) != 255) {
            continue;
        }
        uint64_t t = dsv4_pool_now_ns();
        if (t0 == 0) {
            t0 = t;
        } else if (t - t0 > DSV4_POOL_SPIN_NS) {
            break;
        }
    }
    pthread_mutex_lock(&p->sleep_lock);
    atomic_fetch_add(&p->sleepers, 1);
    /* re-check under the lock: the caller bumps gen, then takes this lock
     * to broadcast, so a bump cannot slip between the check and the wait */
    while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop)) {
        pthread_cond_wait(&p->sleep_cond, &p->sleep_lock);
    }
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->sleep_lock);
    return g;
}

static void *
dsv4_pool_main(void *a)
{
    dsv4_pool_worker *w = a;
    dsv4_pool        *p = w->p;
    int               id = w->id;
    unsigned          seen = 0;

    free(w);
    for (;;) {
        seen = dsv4_pool_wait(p, seen);
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        dsv4_pool_take(p, id);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

static int
dsv4_pool_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

dsv4_pool *
dsv4_pool_new(int nthreads, char *err, size_t errlen)
{
    dsv4_pool *p;

    if (nthreads < 1 || nthreads > 1024) {
        dsv4_pool_error(err, errlen, "invalid thread count %d (expected 1..1024)", nthreads);
        return NULL;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        dsv4_pool_error(err, errlen, "out of memory for the thread pool");
        return NULL;
    }
    p->nthreads = nthreads;
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->sleep_lock, NULL);
    pthread_cond_init(&p->sleep_cond, NULL);
    if (nthreads == 1) {
        return p;
    }
    p->threads = calloc((size_t) nthreads - 1, sizeof(*p->threads));
    if (p->threads == NULL) {
        dsv4_pool_error(err, errlen, "out of memory for the thread pool");
        dsv4_pool_free(p);
        return NULL;
    }
    for (int i = 1; i < nthreads; i++) {
        dsv4_pool_worker *w = malloc(sizeof(*w));
        int               rc = w == NULL ? ENOMEM : 0;

        if (w != NULL) {
            *w = (dsv4_pool_worker) { p, i };
            rc = pthread_create(&p->threads[i - 1], NULL, dsv4_pool_main, w);
            if (rc != 0) {
                free(w);
            }
        }
        if (rc != 0) {
            dsv4_pool_error(err, errlen, "cannot start pool thread %d of %d: %s", i,
                            nthreads - 1, strerror(rc));
            dsv4_pool_free(p);
            return NULL;
        }
        p->started++;
    }
    return p;
}

void
dsv4_pool_free(dsv4_pool *p)
{
    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&p->sleep_lock);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->sleep_cond);
    pthread_mutex_unlock(&p->sleep_lock);
    for (int i = 0; i < p->started; i++) {
        pthread_join(p->threads[i], NULL);
    }
    free(p->threads);
    pthread_cond_destroy(&p->sleep_cond);
    pthread_mutex_destroy(&p->sleep_lock);
    pthread_mutex_destroy(&p->run_lock);
    free(p);
}

int
dsv4_pool_size(const dsv4_pool *p)
{
    return p->nthreads;
}

void
dsv4_pool_run(dsv4_pool *p, dsv4_pool_fn fn, void *arg, int ntasks)
{
    if (ntasks <= 0) {
        return;
    }
    if (p->nthreads == 1 || ntasks == 1) {
        /* not worth waking anyone; thread 0's scratch is the caller's */
        pthread_mutex_lock(&p->run_lock);
        for (int t = 0; t < ntasks; t++) {
            fn(arg, t, 0);
        }
        pthread_mutex_unlock(&p->run_lock);
        return;
    }
    pthread_mutex_lock(&p->run_lock);
    p->fn = fn;
    p->arg = arg;
    p->ntasks = ntasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->nthreads - 1, memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1);   /* seq_cst: pairs with the sleepers check */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->sleep_lock);
        pthread_cond_broadcast(&p->sleep_cond);
        pthread_mutex_unlock(&p->sleep_lock);
    }
    dsv4_pool_take(p, 0);
    /* every worker must leave the job before its arguments go out of scope */
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spins++) {
        if (spins < 1 << 16) {
            dsv4_cpu_relax();
        } else {
            /* a worker was preempted: give it the core (a zero sleep is a
             * yield; <sched.h> is shadowed by engine/sched.h) */
            struct timespec ts = { 0, 0 };
            nanosleep(&ts, NULL);
        }
    }
    pthread_mutex_unlock(&p->run_lock);
}
