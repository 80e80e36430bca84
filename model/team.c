/* team.c — a GEMM split across a few threads: by output panels, by rows,
 * or both (a grid), the intra-batch parallelism of one dcn_score.
 *
 * A batch of a few rows on a model whose layers weigh megabytes is bound by
 * the bytes of weights it streams, not by arithmetic. Split by rows (what
 * the server and the benchmark do between their threads), every thread
 * would stream every weight; split by output panels, each thread streams
 * only its share, and the cores' memory bandwidth adds up. A larger batch
 * may take both: rows in groups, each group's panels shared by a few
 * threads. Which split a layer gets is the caller's choice (forward.c).
 *
 * DESIGN
 * - A team is the calling thread plus `helpers` long-lived pthreads. It
 *   belongs to one dcn_scratch at a time, so to one caller: kteam_gemm is
 *   never entered twice at once (dcn.h says so for the scratch).
 * - kteam_gemm_grid cuts the rows into rgroups contiguous groups and the
 *   layer's panels into cgroups contiguous shares; job i (row group
 *   i / cgroups, share i % cgroups) goes to helper i - 1 (its own
 *   semaphore) for i > 0, the caller runs job 0 and waits on the shared
 *   `done` semaphore once per helper it woke. A job is a view of the layer
 *   (klinear with its first panel moved), of the rows (x, y and the
 *   epilogue's per-row inputs moved) and of the epilogue's columns: the
 *   kernels are unchanged and the jobs write disjoint blocks of y. The
 *   semaphores order every access to a job, so no other lock exists.
 * - Results equal the unsplit GEMM's bit for bit when no row group falls
 *   into the kernels' few-rows path unless the whole batch does
 *   (kern_set.mr): forward.c's plans keep to that.
 * - Each helper has its own kernel buffers (they are thread-local).
 * - Freeing: a stop flag then a post to each helper; joins them all.
 */
#include "model/team.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>

typedef struct job {
    const kern_set *ks;
    size_t m, ldx, n_rg, ldy;
    const float *x;
    const krange *rg;
    klinear L; /* the share's view */
    float *y;
    kepi e;
} job;

typedef struct helper {
    struct kteam *t;
    pthread_t th;
    sem_t go;
    job j;
    int started;
} helper;

struct kteam {
    size_t n; /* helpers */
    helper *h;
    sem_t done;
    size_t jobs; /* handed to helpers so far; only the caller's thread writes it */
    int stop; /* written before the posts that wake helpers to read it */
};

static void run_job(const job *j) { j->ks->gemm(j->m, j->x, j->ldx, &j->L, j->rg, j->n_rg, j->y, j->ldy, &j->e); }

static void *helper_main(void *arg) {
    helper *h = arg;
    for (;;) {
        while (sem_wait(&h->go)) {} /* EINTR */
        if (h->t->stop) return NULL;
        run_job(&h->j);
        sem_post(&h->t->done);
    }
}

kteam *kteam_new(size_t helpers) {
    if (!helpers || helpers > 255) return NULL;
    kteam *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->h = calloc(helpers, sizeof *t->h);
    if (!t->h || sem_init(&t->done, 0, 0)) {
        free(t->h);
        free(t);
        return NULL;
    }
    for (size_t i = 0; i < helpers; i++) {
        helper *h = &t->h[i];
        h->t = t;
        if (sem_init(&h->go, 0, 0)) break;
        if (pthread_create(&h->th, NULL, helper_main, h)) {
            sem_destroy(&h->go);
            break;
        }
        h->started = 1;
        t->n = i + 1;
    }
    if (t->n < helpers) {
        kteam_free(t);
        return NULL;
    }
    return t;
}

void kteam_free(kteam *t) {
    if (!t) return;
    t->stop = 1;
    for (size_t i = 0; i < t->n; i++) sem_post(&t->h[i].go);
    for (size_t i = 0; i < t->n; i++) {
        pthread_join(t->h[i].th, NULL);
        sem_destroy(&t->h[i].go);
    }
    sem_destroy(&t->done);
    free(t->h);
    free(t);
}

size_t kteam_threads(const kteam *t) { return t ? t->n + 1 : 1; }
size_t kteam_jobs(const kteam *t) { return t ? t->jobs : 0; }

/* The job of rows [r0, r1) and panels [p0, p1) of L, writing the same
 * block of y. */
static job share(const kern_set *ks, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg,
                 float *y, size_t ldy, const kepi *e, size_t r0, size_t r1, size_t p0, size_t p1) {
    size_t nr = L->nr, n0 = p0 * nr, n1 = p1 * nr < L->out ? p1 * nr : L->out;
    job j = {.ks = ks, .m = r1 - r0, .ldx = ldx, .n_rg = n_rg, .ldy = ldy, .x = x + r0 * ldx, .rg = rg, .L = *L,
             .y = y + r0 * ldy + n0, .e = *e};
    j.L.out = n1 - n0;
    j.L.out_pad = (p1 - p0) * nr;
    if (L->wp) j.L.wp = L->wp + p0 * L->in * nr;
    if (L->wh) j.L.wh = L->wh + p0 * L->in * nr;
    if (L->wq) { /* INT8 panels are KQ_NR wide; nr is a multiple */
        j.L.wq = L->wq + n0 / KQ_NR * L->kq * KQ_NR;
        j.L.wsc = L->wsc + n0;
        j.L.wzc = L->wzc + n0;
    }
    if (L->wbf) /* BF16 panels are 16 wide too */
        j.L.wbf = L->wbf + n0 / 16 * L->kbf * 16;
    j.L.bias = L->bias + n0;
    if (j.e.bias) j.e.bias += n0;
    if (j.e.x0) j.e.x0 += r0 * e->ldx0 + n0;
    if (j.e.xl) j.e.xl += r0 * e->ldxl + n0;
    if (j.e.bscale) j.e.bscale += r0;
    return j;
}

void kteam_gemm_grid(kteam *t, const kern_set *ks, size_t rgroups, size_t cgroups, size_t m, const float *x,
                     size_t ldx, const klinear *L, const krange *rg, size_t n_rg, float *y, size_t ldy,
                     const kepi *e) {
    size_t panels = L->out_pad / L->nr;
    if (cgroups > panels) cgroups = panels;
    if (rgroups > m) rgroups = m;
    if (!cgroups) cgroups = 1;
    if (!rgroups) rgroups = 1;
    while (rgroups * cgroups > kteam_threads(t)) {
        if (rgroups > 1) rgroups--;
        else cgroups--;
    }
    size_t n = rgroups * cgroups;
    if (n < 2) {
        ks->gemm(m, x, ldx, L, rg, n_rg, y, ldy, e);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        size_t a = i / cgroups, b = i % cgroups;
        t->h[i - 1].j = share(ks, x, ldx, L, rg, n_rg, y, ldy, e, m * a / rgroups, m * (a + 1) / rgroups,
                              panels * b / cgroups, panels * (b + 1) / cgroups);
        sem_post(&t->h[i - 1].go);
    }
    t->jobs += n - 1;
    job j0 = share(ks, x, ldx, L, rg, n_rg, y, ldy, e, 0, m / rgroups, 0, panels / cgroups);
    run_job(&j0);
    for (size_t i = 1; i < n; i++)
        while (sem_wait(&t->done)) {}
}

void kteam_gemm(kteam *t, const kern_set *ks, size_t m, const float *x, size_t ldx, const klinear *L,
                const krange *rg, size_t n_rg, float *y, size_t ldy, const kepi *e) {
    kteam_gemm_grid(t, ks, 1, kteam_threads(t), m, x, ldx, L, rg, n_rg, y, ldy, e);
}
