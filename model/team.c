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
 *   i / cgroups, share i % cgroups) goes to helper i - 1 for i > 0, the
 *   caller runs job 0 and then waits until `left`, the helpers' jobs not
 *   finished, is 0. A job is a view of the layer (klinear with its first
 *   panel moved), of the rows (x, y and the epilogue's per-row inputs
 *   moved) and of the epilogue's columns: the kernels are unchanged and the
 *   jobs write disjoint blocks of y.
 * - Handing a job over: the caller writes the helper's job, then bumps its
 *   `seq` (release); the helper reads the job after it sees the new seq
 *   (acquire), and its decrement of `left` (release) hands the result back
 *   to the caller's read of it (acquire). Nothing else is shared, so no
 *   lock exists.
 * - Waiting spins, then sleeps. Waking a sleeping thread through the kernel
 *   costs 15-60 us on the machines measured (bench/README.md, "Handing
 *   layers to helpers"), as much as a whole layer of a small batch, and a
 *   forward pass splits several layers in a row. So from kteam_wake (or
 *   its first split GEMM) until kteam_rest a team is in a burst (dcn_score
 *   wakes the helpers it will use before it builds x0, and rests them when
 *   the batch is done): a helper that finished its job spins for the next
 *   one, for at most DCN_TEAM_SPIN_US (200 us), and the caller spins for
 *   `left`. Outside a burst, or past that time, a waiter sleeps on its
 *   semaphore. Sleeping follows one protocol for both: the waiter sets its
 *   flag (a helper's `sleeping`, the caller's `waiting`), then looks at
 *   what it waits for once more; the waker changes what is waited for,
 *   then takes the flag (exchange) and posts only if it was set. Both
 *   sides use sequentially consistent operations, so at least one sees the
 *   other; whichever clears the flag decides whether a post is owed, and a
 *   waiter that finds the flag taken consumes that post. So posts and
 *   waits pair up, but a post is not proof of what was waited for: a
 *   waker held up between its change and its exchange (preempted) may
 *   take a flag set for a later wait. Every waiter looks again after it
 *   wakes. A spinning helper spends a core only while its
 *   batch is being scored, and the server lends a batch only idle
 *   workers' share of the cores.
 * - Results equal the unsplit GEMM's bit for bit when no row group falls
 *   into the kernels' few-rows path unless the whole batch does
 *   (kern_set.mr): forward.c's plans keep to that.
 * - Each helper has its own kernel buffers (they are thread-local).
 * - Freeing: a stop flag then a job (seq bumped) for each helper; joins
 *   them all.
 */
#include "model/team.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long a waiter inside a burst spins before it sleeps, by default:
 * longer than the gaps between a forward pass's split layers (gathers,
 * gates, a small layer), short enough that a team left in a burst returns
 * its cores soon. DCN_TEAM_SPIN_US sets it per team (0: always sleep). */
#define SPIN_US_DEFAULT 200

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
    _Alignas(64) struct kteam *t;
    pthread_t th;
    sem_t go;
    job j;
    atomic_uint seq;   /* bumped by the caller for each job (and to stop) */
    atomic_int sleeping; /* 1: asleep on go, or about to be */
    int started;
} helper;

struct kteam {
    size_t n; /* helpers */
    helper *h;
    sem_t done;
    atomic_size_t left;  /* helpers' jobs of the current GEMM not finished */
    atomic_int waiting;  /* 1: the caller is asleep on done, or about to be */
    atomic_int burst;    /* 1 from kteam_wake or the first split GEMM to kteam_rest */
    atomic_int stop;
    size_t jobs; /* handed to helpers so far; only the caller's thread writes it */
    uint64_t spin_ns; /* DCN_TEAM_SPIN_US, read when the team is made */
};

static void run_job(const job *j) { j->ks->gemm(j->m, j->x, j->ldx, &j->L, j->rg, j->n_rg, j->y, j->ldy, &j->e); }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sem_take(sem_t *s) {
    while (sem_wait(s)) {} /* EINTR */
}

/* Whether a waiter that began at *t0 (0: not yet read) has spun past
 * spin_ns; reads the clock only every 256th call (i). */
static int spun_out(uint64_t *t0, unsigned i, uint64_t spin_ns) {
    if (!spin_ns) return 1;
    if (i & 255) return 0;
    uint64_t t = now_ns();
    if (!*t0) *t0 = t;
    return t - *t0 > spin_ns;
}

/* Spins while *spin says so and *p == v, for at most spin_ns; returns
 * whether *p changed. */
static int spin_while(const atomic_uint *p, unsigned v, const atomic_int *spin, uint64_t spin_ns) {
    uint64_t t0 = 0;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(p, memory_order_acquire) != v) return 1;
        if (!atomic_load_explicit(spin, memory_order_relaxed) || spun_out(&t0, i, spin_ns)) return 0;
        cpu_relax();
    }
}

/* Tests only: tests/model/stress_team.c includes this file with
 * KTEAM_TEST_HOOKS defined, to stop a helper where preemption may stop it:
 * between its decrement of `left` and its wake of the caller. */
#ifdef KTEAM_TEST_HOOKS
static void (*kteam_after_decrement)(void);
#define AFTER_DECREMENT() (kteam_after_decrement ? kteam_after_decrement() : (void)0)
#else
#define AFTER_DECREMENT() ((void)0)
#endif

/* Wakes a waiter that may sleep on s with *sleeping set (see DESIGN);
 * call after changing what it waits for. */
static void wake(atomic_int *sleeping, sem_t *s) {
    if (atomic_exchange(sleeping, 0)) sem_post(s);
}

static void *helper_main(void *arg) {
    helper *h = arg;
    kteam *t = h->t;
    unsigned seen = 0;
    for (;;) {
        while (atomic_load_explicit(&h->seq, memory_order_acquire) == seen) {
            if (spin_while(&h->seq, seen, &t->burst, t->spin_ns)) break;
            atomic_store(&h->sleeping, 1);
            if (atomic_load(&h->seq) != seen && atomic_exchange(&h->sleeping, 0)) break; /* no post owed */
            sem_take(&h->go); /* a job, a stop, or kteam_wake into a burst */
        }
        seen = atomic_load_explicit(&h->seq, memory_order_acquire);
        if (atomic_load_explicit(&t->stop, memory_order_relaxed)) return NULL;
        run_job(&h->j);
        if (atomic_fetch_sub_explicit(&t->left, 1, memory_order_acq_rel) == 1) {
            AFTER_DECREMENT();
            wake(&t->waiting, &t->done);
        }
    }
}
kteam *kteam_new(size_t helpers) {
    if (!helpers || helpers > 255) return NULL;
    kteam *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    const char *env = getenv("DCN_TEAM_SPIN_US");
    t->spin_ns = (env && *env ? strtoull(env, NULL, 10) : SPIN_US_DEFAULT) * 1000u;
    t->h = aligned_alloc(_Alignof(helper), helpers * sizeof *t->h); /* a multiple of its alignment */
    if (t->h) memset(t->h, 0, helpers * sizeof *t->h);
    if (!t->h || sem_init(&t->done, 0, 0)) {
        free(t->h);
        free(t);
        return NULL;
    }
    for (size_t i = 0; i < helpers; i++) {
        helper *h = &t->h[i];
        h->t = t;
        atomic_init(&h->seq, 0);
        atomic_init(&h->sleeping, 0);
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
    atomic_store(&t->stop, 1);
    for (size_t i = 0; i < t->n; i++) {
        atomic_fetch_add(&t->h[i].seq, 1);
        wake(&t->h[i].sleeping, &t->h[i].go);
    }
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
    atomic_store_explicit(&t->burst, 1, memory_order_relaxed);
    atomic_store_explicit(&t->left, n - 1, memory_order_relaxed); /* published by the seq bumps */
    for (size_t i = 1; i < n; i++) {
        size_t a = i / cgroups, b = i % cgroups;
        helper *h = &t->h[i - 1];
        h->j = share(ks, x, ldx, L, rg, n_rg, y, ldy, e, m * a / rgroups, m * (a + 1) / rgroups, panels * b / cgroups,
                     panels * (b + 1) / cgroups);
        atomic_fetch_add(&h->seq, 1);
        wake(&h->sleeping, &h->go);
    }
    t->jobs += n - 1;
    job j0 = share(ks, x, ldx, L, rg, n_rg, y, ldy, e, 0, m / rgroups, 0, panels / cgroups);
    run_job(&j0);
    /* Wait for left == 0: spin, then sleep (see DESIGN). A post of done
     * only says that some helper took the flag: the last helper of the
     * GEMM before, held up between its decrement and its wake(), may take
     * the flag set for this one. So left is looked at again after each. */
    uint64_t t0 = 0;
    for (unsigned i = 1; atomic_load_explicit(&t->left, memory_order_acquire); i++) {
        if (spun_out(&t0, i, t->spin_ns)) {
            atomic_store(&t->waiting, 1);
            if (!atomic_load(&t->left) && atomic_exchange(&t->waiting, 0)) break; /* no post owed */
            sem_take(&t->done);
        } else {
            cpu_relax();
        }
    }
}

void kteam_wake(kteam *t, size_t helpers) {
    if (!t) return;
    atomic_store(&t->burst, 1);
    for (size_t i = 0; i < helpers && i < t->n; i++) wake(&t->h[i].sleeping, &t->h[i].go);
}

void kteam_rest(kteam *t) {
    if (t) atomic_store_explicit(&t->burst, 0, memory_order_relaxed);
}

void kteam_gemm(kteam *t, const kern_set *ks, size_t m, const float *x, size_t ldx, const klinear *L,
                const krange *rg, size_t n_rg, float *y, size_t ldy, const kepi *e) {
    kteam_gemm_grid(t, ks, 1, kteam_threads(t), m, x, ldx, L, rg, n_rg, y, ldy, e);
}
