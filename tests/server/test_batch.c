/* test_batch.c — the dynamic batcher: flush on size and on time, splitting,
 * key separation, overflow, deadlines, close. Single- and multi-threaded
 * (threads under TSan: tests/server/stress_batch.c). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "proto/rk.h"
#include "server/batch.h"

static batch_opts opts(size_t batch_rows, size_t queue_rows, size_t workers)
{
    return (batch_opts){.max_batch_rows = batch_rows, .max_queue_rows = queue_rows,
                        .max_delay_us = 0, .split_min_rows = 8, .workers = workers};
}

static batch_job job(uint32_t n, const void *key)
{
    return (batch_job){.req = NULL, .key = key, .n_rows = n};
}

static int K1, K2;

Test(batch, packs_small_requests_into_one_batch)
{
    batch_opts o = opts(64, 1000, 1);
    batch_queue *q = batch_new(&o);
    batch_job a = job(3, &K1), b = job(5, &K1), c = job(2, &K1);
    cr_assert_eq(batch_push(q, &a, 1), 0);
    cr_assert_eq(batch_push(q, &b, 2), 0);
    cr_assert_eq(batch_push(q, &c, 3), 0);
    cr_assert_eq(batch_queued_rows(q), 10);
    batch_work *w = batch_take(q);
    cr_assert_eq(w->n_segs, 3);
    cr_assert_eq(w->n_rows, 10);
    cr_assert_eq(w->segs[0].job, &a);
    cr_assert_eq(w->segs[1].row0, 0);
    cr_assert_eq(w->segs[2].n_rows, 2);
    cr_assert_eq(w->key, &K1);
    cr_assert_eq(batch_queued_rows(q), 0);
    batch_free(w);
    batch_destroy(q);
}

Test(batch, flushes_on_size)
{
    batch_opts o = opts(4, 1000, 1);
    batch_queue *q = batch_new(&o);
    batch_job a = job(3, &K1), b = job(3, &K1);
    batch_push(q, &a, 1);
    batch_push(q, &b, 1);
    batch_work *w = batch_take(q);
    cr_assert_eq(w->n_rows, 4);
    cr_assert_eq(w->n_segs, 2);
    cr_assert_eq(w->segs[1].job, &b);
    cr_assert_eq(w->segs[1].n_rows, 1);
    batch_free(w);
    w = batch_take(q);
    cr_assert_eq(w->n_rows, 2);
    cr_assert_eq(w->segs[0].row0, 1);
    batch_free(w);
    batch_destroy(q);
}

Test(batch, splits_large_requests_across_workers)
{
    batch_opts o = opts(256, 1000, 4);
    batch_queue *q = batch_new(&o);
    batch_job big = job(100, &K1), small = job(2, &K1);
    batch_push(q, &big, 1);
    batch_push(q, &small, 1);
    size_t rows = 0, batches = 0;
    uint32_t next = 0;
    while (rows < 100) {
        batch_work *w = batch_take(q);
        cr_assert_eq(w->segs[0].job, &big);
        cr_assert_eq(w->segs[0].row0, next);
        cr_assert_eq(w->segs[0].n_rows, 25, "chunk of 100 rows / 4 workers");
        next += w->segs[0].n_rows;
        rows += w->segs[0].n_rows;
        batches++;
        if (rows == 100) {
            cr_assert_eq(w->n_segs, 2, "the next job joins the last chunk's batch");
            cr_assert_eq(w->segs[1].job, &small);
        } else {
            cr_assert_eq(w->n_segs, 1, "one chunk of a split job per batch");
        }
        batch_free(w);
    }
    cr_assert_eq(batches, 4);
    batch_destroy(q);
}

/* A job marked whole (the engine splits its layers across idle workers
 * instead) is cut only at max_batch_rows, never into rows / workers. */
Test(batch, whole_jobs_are_cut_only_at_the_batch_size)
{
    batch_opts o = opts(64, 1000, 4);
    batch_queue *q = batch_new(&o);
    batch_job big = job(100, &K1);
    big.whole = 1;
    batch_push(q, &big, 1);
    batch_work *w = batch_take(q);
    cr_assert_eq(w->n_segs, 1);
    cr_assert_eq(w->segs[0].n_rows, 64, "one batch of max_batch_rows, not 100 / 4 workers");
    batch_free(w);
    w = batch_take(q);
    cr_assert_eq(w->segs[0].row0, 64);
    cr_assert_eq(w->segs[0].n_rows, 36);
    batch_free(w);
    batch_destroy(q);
}

Test(batch, never_mixes_keys)
{
    batch_opts o = opts(64, 1000, 1);
    batch_queue *q = batch_new(&o);
    batch_job a = job(3, &K1), b = job(3, &K2), c = job(3, &K1);
    batch_push(q, &a, 1);
    batch_push(q, &b, 1);
    batch_push(q, &c, 1);
    batch_work *w = batch_take(q);
    cr_assert_eq(w->n_segs, 1);
    cr_assert_eq(w->key, &K1);
    batch_free(w);
    w = batch_take(q);
    cr_assert_eq(w->key, &K2);
    cr_assert_eq(w->n_segs, 1);
    batch_free(w);
    w = batch_take(q);
    cr_assert_eq(w->segs[0].job, &c);
    batch_free(w);
    batch_destroy(q);
}

Test(batch, refuses_overflow)
{
    batch_opts o = opts(64, 10, 1);
    batch_queue *q = batch_new(&o);
    batch_job a = job(6, &K1), b = job(5, &K1), c = job(4, &K1);
    cr_assert_eq(batch_push(q, &a, 1), 0);
    cr_assert_eq(batch_push(q, &b, 1), RK_EBUSY);
    cr_assert_eq(batch_push(q, &c, 1), 0);
    cr_assert_eq(batch_queued_rows(q), 10);
    batch_free(batch_take(q));
    cr_assert_eq(batch_push(q, &b, 1), 0, "room again once taken");
    batch_close(q);
    cr_assert_eq(batch_push(q, &a, 1), RK_EUNAVAIL);
    batch_free(batch_take(q));
    batch_destroy(q);
}

Test(batch, expires_rows_past_their_deadline)
{
    batch_opts o = opts(64, 1000, 1);
    batch_queue *q = batch_new(&o);
    uint64_t now = batch_now_ns();
    batch_job a = job(3, &K1), b = job(4, &K1), c = job(5, &K1);
    a.deadline_ns = now - 1;            /* already passed */
    b.deadline_ns = now + 3600000000000ull;
    c.deadline_ns = now + 1000;
    batch_push(q, &a, now);
    batch_push(q, &b, now);
    batch_push(q, &c, now);
    batch_work *e = batch_expire(q, now + 2000);
    cr_assert_not_null(e);
    cr_assert_eq(e->n_segs, 0);
    cr_assert_eq(e->n_expired, 2);
    cr_assert_eq(e->expired[0].job, &a);
    cr_assert_eq(e->expired[1].job, &c);
    cr_assert_eq(e->expired[1].n_rows, 5);
    batch_free(e);
    cr_assert_null(batch_expire(q, now + 2000));
    cr_assert_eq(batch_queued_rows(q), 4);
    batch_job d = job(2, &K1);
    d.deadline_ns = 1;                  /* long past: expired by the taker */
    batch_push(q, &d, now);
    batch_work *w = batch_take(q);
    cr_assert_eq(w->n_segs, 1);
    cr_assert_eq(w->segs[0].job, &b);
    cr_assert_eq(w->n_expired, 1);
    cr_assert_eq(w->expired[0].job, &d);
    batch_free(w);
    batch_destroy(q);
}

Test(batch, flushes_on_timer_with_a_queue_delay)
{
    batch_opts o = opts(64, 1000, 1);
    o.max_delay_us = 20000;
    batch_queue *q = batch_new(&o);
    batch_job a = job(3, &K1);
    batch_push(q, &a, batch_now_ns());
    batch_work *w = batch_take(q); /* returns once the delay has passed */
    cr_assert_eq(w->n_rows, 3);
    cr_assert_geq(batch_now_ns(), a.enq_ns + 20000000ull);
    batch_free(w);
    batch_destroy(q);
}

static void *taker(void *arg)
{
    batch_queue *q = arg;
    size_t rows = 0;
    batch_work *w;
    while ((w = batch_take(q))) {
        rows += w->n_rows;
        batch_free(w);
    }
    return (void *)rows;
}

Test(batch, close_hands_out_the_rest_then_null)
{
    batch_opts o = opts(7, 100000, 3);
    batch_queue *q = batch_new(&o);
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, taker, q);
    static batch_job jobs[200];
    size_t want = 0;
    for (int i = 0; i < 200; i++) {
        jobs[i] = job((uint32_t)(1 + i % 50), &K1);
        want += jobs[i].n_rows;
        cr_assert_eq(batch_push(q, &jobs[i], batch_now_ns()), 0);
    }
    batch_close(q);
    size_t got = 0;
    for (int i = 0; i < 3; i++) {
        void *r;
        pthread_join(t[i], &r);
        got += (size_t)r;
    }
    cr_assert_eq(got, want);
    cr_assert_null(batch_take(q));
    batch_destroy(q);
}

static void noop_task(batch_task *t) { (void)t; }

Test(batch, tasks_go_first_in_order_and_survive_close)
{
    batch_opts o = opts(64, 1000, 1);
    batch_queue *q = batch_new(&o);
    batch_job a = job(3, &K1);
    batch_task t1 = {.run = noop_task}, t2 = {.run = noop_task}, late = {.run = noop_task};
    cr_assert_eq(batch_push(q, &a, 1), 0);
    cr_assert_eq(batch_push_task(q, &t1), 0);
    cr_assert_eq(batch_push_task(q, &t2), 0);
    batch_close(q);
    cr_assert_eq(batch_push_task(q, &late), RK_EUNAVAIL);
    batch_work *w = batch_take(q);
    cr_assert_eq(w->task, &t1);
    cr_assert_eq(w->n_segs + w->n_expired, 0);
    batch_free(w);
    w = batch_take(q);
    cr_assert_eq(w->task, &t2);
    batch_free(w);
    w = batch_take(q);
    cr_assert_null(w->task);
    cr_assert_eq(w->n_rows, 3);
    batch_free(w);
    cr_assert_null(batch_take(q));
    batch_destroy(q);
}

Test(batch, low_priority_jobs_wait_for_the_normal_ones_and_have_their_own_bound)
{
    batch_opts o = opts(64, 10, 1);
    o.max_low_rows = 6;
    batch_queue *q = batch_new(&o);
    uint64_t now = batch_now_ns();
    batch_job s1 = job(4, &K2), s2 = job(3, &K2), a = job(10, &K1), b = job(2, &K1), s3 = job(2, &K2);
    s1.low = s2.low = s3.low = 1;
    cr_assert_eq(batch_push(q, &s1, now), 0);
    cr_assert_eq(batch_push(q, &s2, now), RK_EBUSY, "over max_low_rows");
    cr_assert_eq(batch_push(q, &a, now), 0, "a full normal queue beside low rows");
    cr_assert_eq(batch_queued_rows(q), 10);
    cr_assert_eq(batch_low_rows(q), 4);
    cr_assert_eq(batch_push(q, &b, now), RK_EBUSY, "low rows never count against max_queue_rows");
    batch_work *w = batch_take(q); /* pushed after s1, taken first */
    cr_assert_eq(w->n_segs, 1);
    cr_assert_eq(w->segs[0].job, &a);
    batch_free(w);
    cr_assert_eq(batch_push(q, &b, now), 0);
    w = batch_take(q);
    cr_assert_eq(w->segs[0].job, &b);
    batch_free(w);
    w = batch_take(q); /* nothing normal left: the low job */
    cr_assert_eq(w->segs[0].job, &s1);
    cr_assert_eq(w->n_rows, 4);
    cr_assert_eq(batch_low_rows(q), 0);
    batch_free(w);
    /* a low job's deadline drops it when normal work keeps coming */
    s3.deadline_ns = now + 1000;
    cr_assert_eq(batch_push(q, &s3, now), 0);
    batch_work *e = batch_expire(q, now + 2000);
    cr_assert_not_null(e);
    cr_assert_eq(e->n_expired, 1);
    cr_assert_eq(e->expired[0].job, &s3);
    cr_assert_eq(batch_low_rows(q), 0);
    batch_free(e);
    /* max_low_rows 0: no low job at all */
    batch_opts o0 = opts(64, 10, 1);
    batch_queue *q0 = batch_new(&o0);
    batch_job s4 = job(1, &K2);
    s4.low = 1;
    cr_assert_eq(batch_push(q0, &s4, now), RK_EBUSY);
    batch_destroy(q0);
    batch_destroy(q);
}

Test(batch, low_priority_tasks_wait_for_normal_tasks_and_jobs_and_survive_close)
{
    batch_opts o = opts(64, 1000, 1);
    o.max_low_rows = 100;
    batch_queue *q = batch_new(&o);
    batch_job a = job(3, &K1), s = job(2, &K2);
    s.low = 1;
    batch_task lt = {.run = noop_task, .low = 1}, t = {.run = noop_task};
    cr_assert_eq(batch_push_task(q, &lt), 0);
    cr_assert_eq(batch_push(q, &a, 1), 0);
    cr_assert_eq(batch_push(q, &s, 1), 0);
    cr_assert_eq(batch_push_task(q, &t), 0);
    batch_close(q);
    batch_work *w = batch_take(q); /* the normal task, pushed last */
    cr_assert_eq(w->task, &t);
    batch_free(w);
    w = batch_take(q); /* then the normal job */
    cr_assert_null(w->task);
    cr_assert_eq(w->segs[0].job, &a);
    batch_free(w);
    w = batch_take(q); /* then the low task, before the low job */
    cr_assert_eq(w->task, &lt);
    batch_free(w);
    w = batch_take(q);
    cr_assert_eq(w->segs[0].job, &s);
    batch_free(w);
    cr_assert_null(batch_take(q));
    batch_destroy(q);
}
