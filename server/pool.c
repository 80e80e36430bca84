/* pool.c — worker threads and the done-list (see pool.h for the design).
 *
 * DESIGN: the done-list is a FIFO (head, tail) under `mu`; only workers and
 * pool_expire append; any thread detaches (the server does in notify).
 * Threads are joined in pool_stop; after that no thread but the caller
 * touches the pool. `busy` counts the workers between taking a batch and
 * handing it back (atomic: every worker writes it, any may read it through
 * pool_spare_workers, which finds its pool in a thread-local the worker set
 * at start).
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "server/pool.h"

typedef struct worker {
    pool *p;
    pthread_t tid;
    void *state;
} worker;

struct pool {
    batch_queue *q;
    pool_score_fn score;
    pool_after_fn after;
    pool_free_fn free_state;
    pool_notify_fn notify;
    void *ctx, *notify_ctx;
    size_t n;
    worker *w;
    int stopped;
    atomic_size_t busy;           /* workers with a batch or task in hand */
    pthread_mutex_t mu;
    batch_work *done_head, *done_tail;
};

static _Thread_local pool *my_pool; /* on a worker thread: its pool */

/* Appends a finished batch to the done-list and wakes the loop. */
static void push_done(pool *p, batch_work *b)
{
    b->next = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->done_tail) p->done_tail->next = b;
    else p->done_head = b;
    p->done_tail = b;
    pthread_mutex_unlock(&p->mu);
    if (p->notify) p->notify(p->notify_ctx);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    batch_work *b;
    my_pool = p;
    while ((b = batch_take(p->q))) {
        atomic_fetch_add_explicit(&p->busy, 1, memory_order_relaxed);
        if (b->task) {
            b->task->run(b->task);
        } else if (b->n_segs) {
            b->start_ns = batch_now_ns();
            b->status = p->score(p->ctx, &w->state, b);
            b->end_ns = batch_now_ns();
        }
        push_done(p, b);
        if (p->after) p->after(p->ctx, &w->state); /* b is the loop's now */
        atomic_fetch_sub_explicit(&p->busy, 1, memory_order_relaxed);
    }
    if (p->free_state && w->state) p->free_state(p->ctx, w->state);
    w->state = NULL;
    return NULL;
}

pool *pool_new(batch_queue *q, size_t n_workers, pool_score_fn score, pool_after_fn after,
               pool_free_fn free_state, void *ctx, pool_notify_fn notify, void *notify_ctx)
{
    if (!n_workers) return NULL;
    pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->q = q;
    p->score = score;
    p->after = after;
    p->free_state = free_state;
    p->notify = notify;
    p->ctx = ctx;
    p->notify_ctx = notify_ctx;
    pthread_mutex_init(&p->mu, NULL);
    if (!(p->w = calloc(n_workers, sizeof *p->w))) goto fail;
    for (size_t i = 0; i < n_workers; i++) {
        p->w[i].p = p;
        if (pthread_create(&p->w[i].tid, NULL, worker_main, &p->w[i]) != 0) goto fail;
        p->n++;
    }
    return p;
fail:
    pool_free(p);
    return NULL;
}

batch_work *pool_take_done(pool *p)
{
    pthread_mutex_lock(&p->mu);
    batch_work *b = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    return b;
}

size_t pool_expire(pool *p, uint64_t now_ns)
{
    batch_work *b = batch_expire(p->q, now_ns);
    if (!b) return 0;
    size_t rows = 0;
    for (size_t i = 0; i < b->n_expired; i++) rows += b->expired[i].n_rows;
    push_done(p, b);
    return rows;
}

void pool_stop(pool *p)
{
    if (!p || p->stopped) return;
    batch_close(p->q);
    for (size_t i = 0; i < p->n; i++) pthread_join(p->w[i].tid, NULL);
    p->stopped = 1;
}

void pool_free(pool *p)
{
    if (!p) return;
    pool_stop(p);
    batch_work *b = pool_take_done(p);
    while (b) {
        batch_work *nx = b->next;
        batch_free(b);
        b = nx;
    }
    pthread_mutex_destroy(&p->mu);
    free(p->w);
    free(p);
}

size_t pool_workers(const pool *p) { return p->n; }

size_t pool_idle_workers(pool *p)
{
    size_t busy = atomic_load_explicit(&p->busy, memory_order_relaxed);
    return busy < p->n ? p->n - busy : 0;
}

size_t pool_spare_workers(void)
{
    pool *p = my_pool;
    if (!p) return 0;
    size_t busy = atomic_load_explicit(&p->busy, memory_order_relaxed);
    if (!busy) busy = 1; /* the caller itself, counted a moment late */
    return busy < p->n ? (p->n - busy) / busy : 0;
}

/* Reads the cgroup v2 quota as a CPU count (rounded up); 0 if unlimited or
 * unreadable. */
static size_t cgroup_cpus(void)
{
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (!f) return 0;
    char quota[32] = {0};
    unsigned long long period = 0;
    size_t n = 0;
    if (fscanf(f, "%31s %llu", quota, &period) == 2 && period > 0 && quota[0] != 'm') {
        unsigned long long qv = strtoull(quota, NULL, 10);
        if (qv > 0) n = (size_t)((qv + period - 1) / period);
    }
    fclose(f);
    return n;
}

size_t pool_default_workers(void)
{
    size_t n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = (size_t)CPU_COUNT(&set);
    if (!n) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (size_t)c : 1;
    }
    size_t cg = cgroup_cpus();
    if (cg && cg < n) n = cg;
    return n ? n : 1;
}
