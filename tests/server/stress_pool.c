/* stress_pool.c — the worker pool with the real scorer (server/score.c),
 * real decoded requests (proto/) and a model swap under traffic, for
 * ThreadSanitizer (and the other builds). A standalone program, not
 * Criterion (Criterion cannot start under TSan here), run by `make unit` and
 * `make tsan-unit`. Run from the repository root: it reads a golden model.
 *
 * DESIGN: the main thread plays the event loop. It decodes random requests
 * against the current model (taking a reference, as the server does),
 * pushes them to the batcher, and drains the pool's done-list when the
 * notify callback (called on worker threads) has signalled. Halfway through
 * it "reloads": opens the same file again as a new dcn_model and releases
 * the old one, while requests decoded against the old one are still
 * queued, so batches of both models are in flight at once and every worker
 * rebuilds its state. Each request's scores must equal the scores of the
 * same request scored alone on the main thread before any thread started
 * (within 1e-5: batches with other requests may share fewer features).
 * Each worker's scratch has a dcn_team of 2 helpers (DCN_TEAM_MIN_BYTES=0
 * makes every layer heavy enough and every split free), so batches run
 * their layers split by rows, columns or both across up to 3 threads, as
 * many as the pool has idle workers at the time.
 * Worker states are prepared ahead as the server does (score.h): for the
 * first model before the pool starts, and at each reload on another thread
 * (the server's reload thread) while the workers score, before the swap;
 * so the stash is handed between a preparing thread and the workers, and
 * teams made on one thread are used on another. Before that, check_stash
 * walks the stash's cases one step at a time on one thread.
 * Exits 0 on success, 1 with a message otherwise.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/dcn.h"
#include "proto/rk.h"
#include "server/batch.h"
#include "server/pool.h"
#include "server/score.h"

#define MODEL_PATH "tests/golden/batch_full_many_rows.dcn"
#define N_REQ 600
#define N_WORKERS 3
#define MAX_BATCH 48

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "stress_pool: %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
            exit(1);                                                     \
        }                                                                \
    } while (0)

typedef struct req {
    score_target t;             /* first member: job.req points here */
    batch_job job;
    dcn_model *model;           /* referenced until the request is done */
    float *want;                /* (n_cands) scored alone */
    uint32_t rows_left;
    int done;
} req;

static pthread_mutex_t note_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t note_cv = PTHREAD_COND_INITIALIZER;
static int noted;

/* pool_notify_fn: the server's uv_async_send, here a flag and a signal. */
static void notify(void *ctx)
{
    pthread_mutex_lock(&note_mu);
    noted = 1;
    pthread_cond_signal(&note_cv);
    pthread_mutex_unlock(&note_mu);
}

/* Waits up to 2 ms for a notification and clears it. */
static void wait_note(void)
{
    pthread_mutex_lock(&note_mu);
    if (!noted) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 2000000;
        if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
        pthread_cond_timedwait(&note_cv, &note_mu, &ts);
    }
    noted = 0;
    pthread_mutex_unlock(&note_mu);
}

/* Appends a random value of feature `name` (dense or sparse) to a JSON body. */
static void put_value(rk_buf *b, const dcn_model *m, int sparse, size_t idx, unsigned *seed)
{
    if (rand_r(seed) % 10 == 0) { rk_buf_puts(b, "null"); return; }
    if (!sparse) {
        rk_buf_printf(b, "%.6g", (double)((int)(rand_r(seed) % 2001) - 1000) / 97.0);
        return;
    }
    const dcn_sparse_spec *sp = dcn_sparse(m, idx);
    uint32_t k = sp->max_ids > 1 ? (uint32_t)(rand_r(seed) % (sp->max_ids + 1)) : 1;
    if (sp->max_ids > 1) rk_buf_puts(b, "[");
    for (uint32_t i = 0; i < k; i++) {
        if (i) rk_buf_puts(b, ",");
        if (rand_r(seed) % 2) rk_buf_printf(b, "%u", rand_r(seed) % 50);
        else rk_buf_printf(b, "\"%x\"", rand_r(seed) % 4096);
    }
    if (sp->max_ids > 1) rk_buf_puts(b, "]");
}

/* Appends a features object: each feature of the model with probability
 * 1/2 (1/4 in the context). */
static void put_features(rk_buf *b, const dcn_model *m, unsigned *seed, int ctx)
{
    const dcn_info *in = dcn_model_info(m);
    int first = 1;
    rk_buf_puts(b, "{");
    for (size_t f = 0; f < in->n_dense + in->n_sparse; f++) {
        if (rand_r(seed) % (ctx ? 4 : 2)) continue;
        int sparse = f >= in->n_dense;
        size_t idx = sparse ? f - in->n_dense : f;
        const char *name = sparse ? dcn_sparse(m, idx)->name : dcn_dense(m, idx)->name;
        rk_buf_printf(b, "%s\"%s\":", first ? "" : ",", name);
        put_value(b, m, sparse, idx, seed);
        first = 0;
    }
    rk_buf_puts(b, "}");
}

typedef struct prep {
    score_ctx *c;
    const dcn_model *m;
    int rc;
} prep;

/* The reload thread's part: score_prepare for the new model. */
static void *prepare_main(void *arg)
{
    prep *pr = arg;
    pr->rc = score_prepare(pr->c, pr->m, N_WORKERS);
    return NULL;
}

/* Decodes a random request against m; exits on any failure. */
static rk_request *random_request(const dcn_model *m, unsigned *seed)
{
    rk_buf b = {0};
    uint32_t n = 1 + (uint32_t)(rand_r(seed) % 120);
    rk_buf_puts(&b, "{\"context\":");
    put_features(&b, m, seed, 1);
    rk_buf_puts(&b, ",\"candidates\":[");
    for (uint32_t i = 0; i < n; i++) {
        rk_buf_printf(&b, "%s{\"id\":%u,\"features\":", i ? "," : "", i);
        put_features(&b, m, seed, 0);
        rk_buf_puts(&b, "}");
    }
    rk_buf_puts(&b, "]}");
    CHECK(!b.oom, "out of memory");
    rk_request *rq;
    char err[256];
    rk_limits lim = {.max_candidates = 1000, .strict = 1};
    int rc = rk_decode(m, b.data, b.len, &lim, &rq, err, sizeof err);
    CHECK(rc == 0, "rk_decode: %s\n%s", err, b.data);
    free(b.data);
    return rq;
}

/* Scores r alone, on this thread, into r->want. */
static void score_alone(req *r)
{
    size_t n = r->t.rq->n_cands;
    score_ctx c = {.max_batch_rows = n};
    void *state = NULL;
    batch_seg seg = {.job = &r->job, .row0 = 0, .n_rows = (uint32_t)n};
    batch_work w = {.key = r->model, .n_rows = n, .n_segs = 1, .segs = &seg};
    CHECK(score_batch(&c, &state, &w) == 0, "score_batch alone");
    memcpy(r->want, r->t.scores, n * sizeof(float));
    memset(r->t.scores, 0, n * sizeof(float));
    score_state_free(&c, state);
}

/* Scores all of r in one batch with ctx c and the state *state. */
static void score_whole(score_ctx *c, void **state, req *r)
{
    size_t n = r->t.rq->n_cands;
    batch_seg seg = {.job = &r->job, .row0 = 0, .n_rows = (uint32_t)n};
    batch_work w = {.key = r->model, .n_rows = n, .n_segs = 1, .segs = &seg};
    CHECK(score_batch(c, state, &w) == 0, "score_batch");
}

#define CHECK_STATS(c, p, b)                                                                  \
    do {                                                                                      \
        score_stats st_ = score_get_stats(c);                                                 \
        CHECK(st_.prepared == (p) && st_.built_on_request == (b), "stats %llu, %llu: want %d, %d", \
              (unsigned long long)st_.prepared, (unsigned long long)st_.built_on_request, (p), (b)); \
    } while (0)

/* The stash step by step, on this thread: prepared states are taken, not
 * built; two live models each keep their state in the worker (no build,
 * no stash trip when batches alternate); a forgotten model's state is
 * retired by the worker and a batch for it afterwards builds one
 * (counted); a worker holding states for more models than it keeps gives
 * the least recently used back to the stash, where it is taken again. */
static void check_stash(void)
{
    enum { NM = SCORE_MODELS_PER_WORKER + 2 };
    char err[256];
    dcn_model *m[NM];
    req r[NM];
    unsigned seed = 3;
    memset(r, 0, sizeof r);
    for (int i = 0; i < NM; i++) {
        CHECK(dcn_open(MODEL_PATH, NULL, &m[i], err, sizeof err) == 0, "%s (run from the repository root)", err);
        r[i].model = m[i];
        r[i].t.rq = random_request(m[i], &seed);
        size_t n = r[i].t.rq->n_cands;
        r[i].t.scores = calloc(n, sizeof(float));
        r[i].t.logits = calloc(n, sizeof(float));
        CHECK(r[i].t.scores && r[i].t.logits, "out of memory");
        r[i].job = (batch_job){.req = &r[i].t, .key = m[i], .n_rows = (uint32_t)n};
    }
    score_ctx c = {.max_batch_rows = 128};
    void *state = NULL;
    CHECK(score_stash_init(&c) == 0 && score_prepare(&c, m[0], 1) == 0, "score_prepare");
    score_whole(&c, &state, &r[0]); /* takes the prepared state */
    CHECK_STATS(&c, 1, 0);
    CHECK(score_prepare(&c, m[1], 1) == 0, "score_prepare");
    score_whole(&c, &state, &r[1]); /* a second model: takes its prepared state */
    score_after(&c, &state);
    CHECK_STATS(&c, 2, 0);
    for (int k = 0; k < 3; k++) { /* alternating: both held, nothing built */
        score_whole(&c, &state, &r[0]);
        score_whole(&c, &state, &r[1]);
    }
    CHECK_STATS(&c, 2, 0);
    score_forget(&c, m[0]);         /* model 0 unloaded: its state retired */
    score_whole(&c, &state, &r[1]);
    score_after(&c, &state);
    CHECK_STATS(&c, 2, 0);
    score_whole(&c, &state, &r[0]); /* an in-flight request of model 0: built here */
    CHECK_STATS(&c, 2, 1);
    /* more live models than a worker keeps: the least recently used goes
     * back to the stash and is taken from there, not built */
    for (int i = 2; i < NM; i++) CHECK(score_prepare(&c, m[i], 1) == 0, "score_prepare");
    for (int i = 1; i < NM; i++) score_whole(&c, &state, &r[i]);
    score_after(&c, &state);
    CHECK_STATS(&c, NM, 1);
    score_whole(&c, &state, &r[1]); /* dropped to the stash by the loop above: taken again */
    score_after(&c, &state);
    CHECK_STATS(&c, NM, 1);
    for (int i = 0; i < NM; i++) {
        float want = r[i].t.scores[0];
        score_whole(&c, &state, &r[i]); /* same scores whichever state */
        CHECK(r[i].t.scores[0] == want, "model %d: %.9g then %.9g", i, (double)want, (double)r[i].t.scores[0]);
    }
    score_after(&c, &state);
    score_state_free(&c, state);
    score_stash_destroy(&c); /* the states given back, never taken again */
    for (int i = 0; i < NM; i++) {
        rk_request_free((rk_request *)r[i].t.rq);
        free(r[i].t.scores);
        free(r[i].t.logits);
        dcn_release(m[i]);
    }
}

/* Accounts the done-list; returns the number of requests completed. */
static size_t drain(pool *p)
{
    size_t completed = 0;
    batch_work *w = pool_take_done(p);
    while (w) {
        batch_work *nx = w->next;
        CHECK(w->status == 0, "batch failed: %d", w->status);
        CHECK(w->n_expired == 0, "rows expired without a deadline");
        for (size_t i = 0; i < w->n_segs; i++) {
            req *r = (req *)w->segs[i].job->req;
            CHECK(w->segs[i].job->key == w->key, "a batch mixes models");
            r->rows_left -= w->segs[i].n_rows;
            if (r->rows_left) continue;
            /* complete: check it and drop its model reference, as the server does */
            for (size_t k = 0; k < r->t.rq->n_cands; k++) {
                float a = r->t.scores[k], e = r->want[k];
                CHECK(fabsf(a - e) <= 1e-5f + 1e-5f * fabsf(e), "row %zu: %.9g, alone %.9g", k, (double)a,
                      (double)e);
            }
            dcn_release(r->model);
            r->model = NULL;
            r->done = 1;
            completed++;
        }
        batch_free(w);
        w = nx;
    }
    return completed;
}

int main(void)
{
    char err[256];
    dcn_model *cur;
    /* Every worker's scratch gets a team of 2 helpers, used on every layer
     * of its batches while other workers are idle: 3 + 6 threads. */
    setenv("DCN_TEAM_MIN_BYTES", "0", 0);
    check_stash();
    CHECK(dcn_open(MODEL_PATH, NULL, &cur, err, sizeof err) == 0, "%s (run from the repository root)", err);
    unsigned seed = 7;
    req *reqs = calloc(N_REQ, sizeof *reqs);
    CHECK(reqs != NULL, "out of memory");

    batch_opts bo = {.max_batch_rows = MAX_BATCH, .max_queue_rows = 1500, .split_min_rows = 16,
                     .workers = N_WORKERS};
    batch_queue *q = batch_new(&bo);
    score_ctx sc = {.max_batch_rows = MAX_BATCH, .team_helpers = 2};
    CHECK(score_stash_init(&sc) == 0 && score_prepare(&sc, cur, N_WORKERS) == 0, "cannot prepare states");
    pool *p = pool_new(q, N_WORKERS, score_batch, score_after, score_state_free, &sc, notify, NULL);
    CHECK(q && p, "cannot start the pool");

    size_t completed = 0, swaps = 0;
    for (int i = 0; i < N_REQ; i++) {
        if (i == N_REQ / 3 || i == 2 * N_REQ / 3) {
            /* reload: a new model object; queued requests keep the old one */
            dcn_model *nm;
            CHECK(dcn_open(MODEL_PATH, NULL, &nm, err, sizeof err) == 0, "%s", err);
            prep pr = {.c = &sc, .m = nm};
            pthread_t th;
            CHECK(pthread_create(&th, NULL, prepare_main, &pr) == 0, "pthread_create");
            completed += drain(p); /* the workers score meanwhile */
            pthread_join(th, NULL);
            CHECK(pr.rc == 0, "score_prepare: %d", pr.rc);
            score_forget(&sc, cur);
            dcn_release(cur);
            cur = nm;
            swaps++;
        }
        req *r = &reqs[i];
        r->t.rq = random_request(cur, &seed);
        size_t n = r->t.rq->n_cands;
        r->model = dcn_retain(cur);
        r->t.scores = calloc(n, sizeof(float));
        r->t.logits = calloc(n, sizeof(float));
        r->want = calloc(n, sizeof(float));
        CHECK(r->t.scores && r->t.logits && r->want, "out of memory");
        r->job = (batch_job){.req = &r->t, .key = r->model, .n_rows = (uint32_t)n};
        score_alone(r);
        r->rows_left = (uint32_t)n;
        int rc;
        while ((rc = batch_push(q, &r->job, batch_now_ns())) == RK_EBUSY) {
            wait_note();
            completed += drain(p);
        }
        CHECK(rc == 0, "batch_push: %d", rc);
        completed += drain(p);
    }
    while (completed < N_REQ) {
        wait_note();
        completed += drain(p);
    }
    pool_stop(p);
    completed += drain(p);
    pool_free(p);
    batch_destroy(q);
    score_stats st = score_get_stats(&sc);
    CHECK(st.prepared == N_WORKERS * (swaps + 1), "%llu states prepared", (unsigned long long)st.prepared);
    score_stash_destroy(&sc);
    size_t rows = 0;
    for (int i = 0; i < N_REQ; i++) {
        CHECK(reqs[i].done, "request %d never completed", i);
        rows += reqs[i].t.rq->n_cands;
        rk_request_free((rk_request *)reqs[i].t.rq);
        free(reqs[i].t.scores);
        free(reqs[i].t.logits);
        free(reqs[i].want);
    }
    free(reqs);
    dcn_release(cur);
    printf("stress_pool: %d requests, %zu rows, %zu model swaps, %d workers (%llu states prepared, %llu built "
           "for a batch): every score equals the request scored alone\n", N_REQ, rows, swaps, N_WORKERS,
           (unsigned long long)st.prepared, (unsigned long long)st.built_on_request);
    return 0;
}
