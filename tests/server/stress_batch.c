/* stress_batch.c — the batcher under real threads, for ThreadSanitizer (and
 * the other builds): a standalone program, not Criterion (Criterion cannot
 * start under TSan here), run by `make unit` and `make tsan-unit`.
 *
 * DESIGN: the main thread plays the event loop: it pushes jobs of random
 * sizes, keys and deadlines, calls batch_expire now and then, and collects
 * finished batches from a done-list (mutex + condition variable, as the pool
 * does). Worker threads take batches and write every live row of their
 * segments into the job's own array, without a lock: slices never overlap,
 * so TSan must see no race, and the loop reads a job only once every row
 * came back. Tasks (batch_push_task) are mixed in: a worker runs each and
 * hands it back the same way. Checks: every row comes back exactly once
 * (scored or expired), every task runs and comes back exactly once (even
 * those pushed just before batch_close), batches never exceed
 * max_batch_rows nor mix keys, only jobs with a deadline expire, and the
 * queue's row count returns to zero. Exits 0 on
 * success, 1 with a message otherwise.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/rk.h"
#include "server/batch.h"

#define N_JOBS 4000
#define N_WORKERS 3
#define MAX_ROWS 90

typedef struct job {
    batch_job bj;
    uint8_t *row_hits;          /* (bj.n_rows) written by workers */
    uint32_t rows_back;         /* loop only */
    int expired;                /* loop only */
} job;

typedef struct task {
    batch_task bt;
    int ran;                    /* written by the worker that runs it */
    int back;                   /* loop only */
} task;

#define N_TASKS (N_JOBS / 4 + 50)
static task tasks[N_TASKS];

/* batch_task callback: marks the task as run (on a worker thread). */
static void run_task(batch_task *t) { ((task *)t)->ran++; }

static batch_queue *Q;
static pthread_mutex_t done_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static batch_work *done_head;
static size_t max_batch_rows;
static int KEYS[2];

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            fprintf(stderr, "stress_batch: %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
            exit(1);                                                      \
        }                                                                 \
    } while (0)

/* Puts a batch on the done-list and wakes the loop. */
static void put_done(batch_work *w)
{
    pthread_mutex_lock(&done_mu);
    w->next = done_head;
    done_head = w;
    pthread_cond_signal(&done_cv);
    pthread_mutex_unlock(&done_mu);
}

/* A worker: takes batches until the queue closes, marks each live row. */
static void *worker(void *arg)
{
    batch_work *w;
    while ((w = batch_take(Q))) {
        if (w->task) {
            CHECK(w->n_segs == 0 && w->n_expired == 0, "a task with rows");
            w->task->run(w->task);
            put_done(w);
            continue;
        }
        CHECK(w->n_rows <= max_batch_rows, "batch of %zu rows", w->n_rows);
        for (size_t i = 0; i < w->n_segs; i++) {
            job *j = (job *)w->segs[i].job;
            CHECK(j->bj.key == w->key, "a batch mixes keys");
            for (uint32_t k = 0; k < w->segs[i].n_rows; k++) j->row_hits[w->segs[i].row0 + k]++;
        }
        put_done(w);
    }
    return NULL;
}

/* Accounts every returned slice; returns the rows that came back. */
static size_t collect(batch_work *w)
{
    size_t rows = 0;
    while (w) {
        batch_work *nx = w->next;
        if (w->task) {
            task *t = (task *)w->task;
            CHECK(t->ran == 1, "a task came back after %d runs", t->ran);
            t->back++;
        }
        for (size_t i = 0; i < w->n_segs; i++) {
            job *j = (job *)w->segs[i].job;
            j->rows_back += w->segs[i].n_rows;
            rows += w->segs[i].n_rows;
        }
        for (size_t i = 0; i < w->n_expired; i++) {
            job *j = (job *)w->expired[i].job;
            CHECK(j->bj.deadline_ns, "a job without a deadline expired");
            for (uint32_t k = 0; k < w->expired[i].n_rows; k++) j->row_hits[w->expired[i].row0 + k] += 16;
            j->rows_back += w->expired[i].n_rows;
            j->expired = 1;
            rows += w->expired[i].n_rows;
        }
        batch_free(w);
        w = nx;
    }
    return rows;
}

/* Detaches the done-list; waits up to 1 ms for something when wait is set. */
static batch_work *take_done(int wait)
{
    pthread_mutex_lock(&done_mu);
    if (!done_head && wait) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 1000000;
        if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
        pthread_cond_timedwait(&done_cv, &done_mu, &ts);
    }
    batch_work *w = done_head;
    done_head = NULL;
    pthread_mutex_unlock(&done_mu);
    return w;
}

/* One run with the given queue delay; returns 0 or exits. */
static void run(uint64_t delay_us, unsigned seed)
{
    batch_opts o = {.max_batch_rows = 64, .max_queue_rows = 2000, .max_delay_us = delay_us,
                    .split_min_rows = 24, .workers = N_WORKERS};
    max_batch_rows = o.max_batch_rows;
    CHECK((Q = batch_new(&o)) != NULL, "batch_new");
    job *jobs = calloc(N_JOBS, sizeof *jobs);
    CHECK(jobs != NULL, "out of memory");
    pthread_t tid[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) CHECK(pthread_create(&tid[i], NULL, worker, NULL) == 0, "pthread_create");

    size_t pushed_rows = 0, back_rows = 0, n_tasks = 0;
    memset(tasks, 0, sizeof tasks);
    for (int i = 0; i < N_JOBS; i++) {
        job *j = &jobs[i];
        uint32_t n = 1 + (uint32_t)(rand_r(&seed) % MAX_ROWS);
        j->row_hits = calloc(n, 1);
        CHECK(j->row_hits != NULL, "out of memory");
        uint64_t now = batch_now_ns();
        j->bj = (batch_job){.req = j, .key = &KEYS[rand_r(&seed) % 2], .n_rows = n};
        if (rand_r(&seed) % 5 == 0) j->bj.deadline_ns = now + (uint64_t)(rand_r(&seed) % 300) * 1000u;
        int rc;
        while ((rc = batch_push(Q, &j->bj, now)) == RK_EBUSY) back_rows += collect(take_done(1));
        CHECK(rc == 0, "batch_push: %d", rc);
        pushed_rows += n;
        if (i % 4 == 0) {
            tasks[n_tasks].bt.run = run_task;
            CHECK(batch_push_task(Q, &tasks[n_tasks].bt) == 0, "batch_push_task");
            n_tasks++;
        }
        if (i % 7 == 0) {
            batch_work *e = batch_expire(Q, batch_now_ns());
            if (e) back_rows += collect(e);
        }
        back_rows += collect(take_done(0));
    }
    while (back_rows < pushed_rows) {
        batch_work *e = batch_expire(Q, batch_now_ns());
        if (e) back_rows += collect(e);
        back_rows += collect(take_done(1));
    }
    /* tasks queued right before the close still run */
    for (int k = 0; k < 50; k++) {
        tasks[n_tasks].bt.run = run_task;
        CHECK(batch_push_task(Q, &tasks[n_tasks++].bt) == 0, "batch_push_task");
    }
    batch_close(Q);
    static task late;
    CHECK(batch_push_task(Q, &late.bt) == RK_EUNAVAIL, "a task pushed after the close was taken");
    for (int i = 0; i < N_WORKERS; i++) pthread_join(tid[i], NULL);
    back_rows += collect(take_done(0));
    for (size_t k = 0; k < n_tasks; k++)
        CHECK(tasks[k].ran == 1 && tasks[k].back == 1, "task %zu: ran %d, back %d", k, tasks[k].ran, tasks[k].back);
    CHECK(back_rows == pushed_rows, "%zu rows back of %zu", back_rows, pushed_rows);
    CHECK(batch_queued_rows(Q) == 0, "%zu rows still queued", batch_queued_rows(Q));
    size_t n_expired = 0;
    for (int i = 0; i < N_JOBS; i++) {
        job *j = &jobs[i];
        CHECK(j->rows_back == j->bj.n_rows, "job %d: %u rows back of %u", i, j->rows_back, j->bj.n_rows);
        for (uint32_t k = 0; k < j->bj.n_rows; k++)
            CHECK(j->row_hits[k] == 1 || j->row_hits[k] == 16, "job %d row %u: hit %u", i, k, j->row_hits[k]);
        n_expired += (size_t)j->expired;
        free(j->row_hits);
    }
    printf("stress_batch: delay %llu us: %d jobs, %zu rows, %zu jobs (partly) expired, %zu tasks, all back once\n",
           (unsigned long long)delay_us, N_JOBS, pushed_rows, n_expired, n_tasks);
    free(jobs);
    batch_destroy(Q);
}

int main(void)
{
    run(0, 1);
    run(100, 2);
    return 0;
}
