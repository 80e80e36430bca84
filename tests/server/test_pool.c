/* test_pool.c — the worker pool: every row of every job is scored exactly
 * once by some worker, results come back on the done-list with a notify,
 * per-worker state is created once and freed at exit, the after callback
 * runs once per batch handed back, expiry travels the same list. Uses a
 * scoring callback instead of the engine. */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "server/pool.h"

typedef struct {
    float *scores;              /* (n) */
} target;

static atomic_int states_made, states_freed, notified, afters;
static int KEY;

/* Writes 1 + row index into each row's score; counts per-row writes. */
static int fake_score(void *ctx, void **state, batch_work *w)
{
    if (!*state) {
        *state = malloc(16);
        atomic_fetch_add(&states_made, 1);
    }
    cr_assert_eq(w->key, &KEY);
    for (size_t s = 0; s < w->n_segs; s++) {
        target *t = w->segs[s].job->req;
        for (uint32_t k = 0; k < w->segs[s].n_rows; k++) t->scores[w->segs[s].row0 + k] += 1.0f + (float)(w->segs[s].row0 + k);
    }
    return ctx ? -5 : 0;
}

static void fake_free(void *ctx, void *state)
{
    free(state);
    atomic_fetch_add(&states_freed, 1);
}

/* Counts hand-backs; the worker's state is the one fake_score made. */
static void fake_after(void *ctx, void **state)
{
    cr_assert_not_null(*state);
    atomic_fetch_add(&afters, 1);
}

static void on_notify(void *ctx) { atomic_fetch_add(&notified, 1); }

Test(pool, scores_every_row_once)
{
    batch_opts o = {.max_batch_rows = 16, .max_queue_rows = 1 << 20, .split_min_rows = 8, .workers = 3};
    batch_queue *q = batch_new(&o);
    pool *p = pool_new(q, 3, fake_score, fake_after, fake_free, NULL, on_notify, NULL);
    cr_assert_not_null(p);
    cr_assert_eq(pool_workers(p), 3);
    enum { NJ = 100 };
    static batch_job jobs[NJ];
    static target tg[NJ];
    size_t rows = 0;
    for (int i = 0; i < NJ; i++) {
        uint32_t n = 1 + (uint32_t)(i * 37 % 90);
        tg[i].scores = calloc(n, sizeof(float));
        jobs[i] = (batch_job){.req = &tg[i], .key = &KEY, .n_rows = n};
        rows += n;
        cr_assert_eq(batch_push(q, &jobs[i], batch_now_ns()), 0);
    }
    pool_stop(p);
    cr_assert_eq(atomic_load(&states_freed), atomic_load(&states_made));
    cr_assert_leq(atomic_load(&states_made), 3);
    size_t back = 0, batches = 0;
    for (batch_work *w = pool_take_done(p), *nx; w; w = nx) {
        nx = w->next;
        cr_assert_eq(w->status, 0);
        cr_assert_leq(w->n_rows, 16);
        cr_assert_geq(w->end_ns, w->start_ns);
        back += w->n_rows;
        batches++;
        batch_free(w); /* detached: the pool no longer owns it */
    }
    cr_assert_eq(back, rows);
    cr_assert_eq((size_t)atomic_load(&afters), batches);
    cr_assert_geq(atomic_load(&notified), 1);
    for (int i = 0; i < NJ; i++) {
        for (uint32_t k = 0; k < jobs[i].n_rows; k++) cr_assert_eq(tg[i].scores[k], 1.0f + (float)k, "job %d row %u", i, k);
        free(tg[i].scores);
    }
    pool_free(p); /* the done-list is empty by now */
    batch_destroy(q);
}

Test(pool, reports_scorer_errors_and_expiry)
{
    int fail_ctx = 1;
    batch_opts o = {.max_batch_rows = 16, .max_queue_rows = 1000, .split_min_rows = 8, .workers = 1};
    batch_queue *q = batch_new(&o);
    target t1 = {calloc(4, sizeof(float))}, t2 = {calloc(4, sizeof(float))};
    batch_job late = {.req = &t2, .key = &KEY, .n_rows = 4, .deadline_ns = 1};
    /* push the expired job first, before any worker runs, and expire it from "the loop" */
    cr_assert_eq(batch_push(q, &late, batch_now_ns()), 0);
    pool *p = pool_new(q, 1, fake_score, NULL, fake_free, &fail_ctx, on_notify, NULL);
    size_t expired = pool_expire(p, batch_now_ns());
    batch_job ok = {.req = &t1, .key = &KEY, .n_rows = 4};
    cr_assert_eq(batch_push(q, &ok, batch_now_ns()), 0);
    pool_stop(p);
    size_t exp_rows = 0, scored = 0;
    for (batch_work *w = pool_take_done(p), *nx; w; w = nx) {
        nx = w->next;
        for (size_t i = 0; i < w->n_expired; i++) exp_rows += w->expired[i].n_rows;
        if (w->n_segs) {
            cr_assert_eq(w->status, -5);
            scored += w->n_rows;
        }
        batch_free(w);
    }
    cr_assert_eq(exp_rows, 4, "expired by pool_expire (%zu) or by the taker", expired);
    cr_assert_eq(scored, 4);
    pool_free(p);
    batch_destroy(q);
    free(t1.scores);
    free(t2.scores);
}

Test(pool, default_workers_is_positive)
{
    cr_assert_geq(pool_default_workers(), 1);
}

static atomic_size_t spare_seen;

/* Records the worker's share of the idle workers while it scores. */
static int spare_score(void *ctx, void **state, batch_work *w)
{
    atomic_store(&spare_seen, pool_spare_workers() + 1);
    return 0;
}

/* One batch on an idle pool of 4: its worker may lend it the 3 others;
 * off the workers, nothing. */
Test(pool, spare_workers_are_the_idle_ones)
{
    batch_opts o = {.max_batch_rows = 16, .max_queue_rows = 1 << 20, .split_min_rows = 1000, .workers = 4};
    batch_queue *q = batch_new(&o);
    pool *p = pool_new(q, 4, spare_score, NULL, NULL, NULL, NULL, NULL);
    cr_assert_not_null(p);
    cr_assert_eq(pool_spare_workers(), 0);
    static float scores[5];
    static target tg = {scores};
    static batch_job job;
    job = (batch_job){.req = &tg, .key = &KEY, .n_rows = 5};
    cr_assert_eq(batch_push(q, &job, batch_now_ns()), 0);
    pool_stop(p);
    cr_assert_eq(atomic_load(&spare_seen), 3 + 1);
    pool_free(p);
    batch_destroy(q);
}
