/*
 * Persistent thread pool for the CPU backend.
 *
 * A decode step issues a few hundred small parallel jobs (one per matmul
 * batch), each a few microseconds to a millisecond long, so waking threads
 * through the kernel for every job would cost as much as the job.  Workers
 * therefore spin on the job word for a while after each job
 * (DSV4_POOL_SPIN_NS) and only then sleep on a condition variable: a burst
 * of jobs keeps them hot, an idle engine costs nothing after the window.
 *
 * A job is ntasks independent tasks.  Tasks are claimed one at a time by a
 * compare-and-swap on one 64-bit word (generation | ntasks | next), by the
 * caller and by whichever workers are running.  The caller waits only for
 * tasks that a worker has actually claimed: a worker that is descheduled
 * (more threads than free cores, another process on the core) simply claims
 * nothing, and the caller does the work itself instead of waiting for it.
 * Results never depend on which thread ran which task: the kernels write
 * disjoint outputs.
 *
 * Ownership: the pool owns its threads; dsv4_pool_free() joins them.  Jobs
 * from several caller threads are serialised by run_lock.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"

/* How long an idle worker spins before sleeping, and how often it yields
 * the core meanwhile (when more threads than free cores exist, a spinning
 * worker would otherwise take time from the thread doing the work). */
#define DSV4_POOL_SPIN_NS   (200 * 1000)
#define DSV4_POOL_SPIN_YIELD 1024
/* How long the caller spins on tasks in flight before yielding the core. */
#define DSV4_POOL_WAIT_SPINS 2000
/* Tasks per published job (the word's 16-bit fields); more are split. */
#define DSV4_POOL_MAX_TASKS 0xFFFF

#if defined(__x86_64__) || defined(__i386__)
#define dsv4_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define dsv4_cpu_relax() __asm__ __volatile__("yield")
#else
#define dsv4_cpu_relax() ((void) 0)
#endif

/* The job word: generation (32 bits) | ntasks (16) | next task (16).  The
 * generation only grows, so a claim (CAS) can only succeed on the job the
 * claimer read the arguments of. */
#define DSV4_JOB_GEN(w)    ((uint32_t) ((w) >> 32))
#define DSV4_JOB_NTASKS(w) ((int) (((w) >> 16) & 0xFFFF))
#define DSV4_JOB_NEXT(w)   ((int) ((w) & 0xFFFF))

struct dsv4_pool {
    int                    nthreads;    /* including the caller */
    pthread_t             *threads;     /* [nthreads - 1] workers */
    int                    started;     /* workers successfully created */

    pthread_mutex_t        run_lock;    /* one job at a time */

    /* the current job: fn/arg written before the word publishes it */
    _Atomic(dsv4_pool_fn)  fn;
    _Atomic(void *)        arg;
    _Atomic(uint64_t)      word;
    atomic_int             done;        /* tasks of the current job finished */
    atomic_int             stop;

    /* sleeping workers */
    pthread_mutex_t        sleep_lock;
    pthread_cond_t         sleep_cond;
    atomic_int             sleepers;
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
dsv4_pool_yield(void)
{
    sched_yield();          /* gives the core to a thread waiting for it */
}

/* Claims and runs tasks of job generation gen until none is left. */
static void
dsv4_pool_take(dsv4_pool *p, uint32_t gen, int thread)
{
    for (;;) {
        uint64_t w = atomic_load_explicit(&p->word, memory_order_acquire);
        if (DSV4_JOB_GEN(w) != gen || DSV4_JOB_NEXT(w) >= DSV4_JOB_NTASKS(w)) {
            return;
        }
        dsv4_pool_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
        void        *arg = atomic_load_explicit(&p->arg, memory_order_relaxed);
        if (atomic_compare_exchange_weak_explicit(&p->word, &w, w + 1, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            fn(arg, DSV4_JOB_NEXT(w), thread);
            atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        }
    }
}

/* Waits until the job generation differs from seen (or stop); returns it. */
static uint32_t
dsv4_pool_wait(dsv4_pool *p, uint32_t seen)
{
    uint64_t t0 = 0;
    uint32_t g;

    for (int spins = 0; ; spins++) {
        g = DSV4_JOB_GEN(atomic_load_explicit(&p->word, memory_order_acquire));
        if (g != seen || atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            return g;
        }
        dsv4_cpu_relax();
        if ((spins & 255) != 255) {
            continue;
        }
        if ((spins & (DSV4_POOL_SPIN_YIELD - 1)) == DSV4_POOL_SPIN_YIELD - 1) {
            dsv4_pool_yield();
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
    /* re-check under the lock: the caller publishes the job, then reads
     * sleepers (both sequentially consistent), then takes this lock to
     * broadcast, so a job cannot slip between the check and the wait */
    while ((g = DSV4_JOB_GEN(atomic_load(&p->word))) == seen && !atomic_load(&p->stop)) {
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
    uint32_t          seen = 0;

    free(w);
    for (;;) {
        seen = dsv4_pool_wait(p, seen);
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        dsv4_pool_take(p, seen, id);
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
    atomic_init(&p->word, 0);
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

typedef struct {
    dsv4_pool_fn fn;
    void        *arg;
    int          base;
} dsv4_pool_slice;

/* A job of more than DSV4_POOL_MAX_TASKS tasks runs as several slices. */
static void
dsv4_pool_slice_task(void *a, int task, int thread)
{
    dsv4_pool_slice *s = a;

    s->fn(s->arg, s->base + task, thread);
}

void
dsv4_pool_run(dsv4_pool *p, dsv4_pool_fn fn, void *arg, int ntasks)
{
    if (ntasks <= 0) {
        return;
    }
    pthread_mutex_lock(&p->run_lock);
    if (p->nthreads == 1 || ntasks == 1) {
        /* not worth waking anyone */
        for (int t = 0; t < ntasks; t++) {
            fn(arg, t, 0);
        }
        pthread_mutex_unlock(&p->run_lock);
        return;
    }
    for (int base = 0; base < ntasks; base += DSV4_POOL_MAX_TASKS) {
        int             nt = ntasks - base < DSV4_POOL_MAX_TASKS ? ntasks - base
                                                                 : DSV4_POOL_MAX_TASKS;
        dsv4_pool_slice slice = { fn, arg, base };
        uint32_t        gen = DSV4_JOB_GEN(atomic_load(&p->word)) + 1;

        atomic_store_explicit(&p->fn, base == 0 && nt == ntasks ? fn : dsv4_pool_slice_task,
                              memory_order_relaxed);
        atomic_store_explicit(&p->arg, base == 0 && nt == ntasks ? arg : (void *) &slice,
                              memory_order_relaxed);
        atomic_store_explicit(&p->done, 0, memory_order_relaxed);
        /* sequentially consistent: pairs with the sleepers check below */
        atomic_store(&p->word, (uint64_t) gen << 32 | (uint64_t) nt << 16);
        if (atomic_load(&p->sleepers) > 0) {
            pthread_mutex_lock(&p->sleep_lock);
            pthread_cond_broadcast(&p->sleep_cond);
            pthread_mutex_unlock(&p->sleep_lock);
        }
        dsv4_pool_take(p, gen, 0);
        /* every task is claimed; wait for those still running elsewhere */
        for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < nt; spins++) {
            if (spins < DSV4_POOL_WAIT_SPINS) {
                dsv4_cpu_relax();
            } else {
                dsv4_pool_yield();
            }
        }
    }
    pthread_mutex_unlock(&p->run_lock);
}
