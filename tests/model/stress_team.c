/* stress_team.c — dcn_teams splitting layers by rows, columns and both,
 * several at once, for ThreadSanitizer (and the other builds). A
 * standalone program, not Criterion (Criterion cannot start under TSan
 * here), run by `make unit` and `make tsan-unit`. Run from the repository
 * root: it reads a golden model.
 *
 * DESIGN: N_CALLERS threads share one model; each has its own scratches
 * (one per forced split, DCN_TEAM_GRID being read as a scratch is made)
 * and its own team of 2 helpers (caller 0's made with DCN_TEAM_SPIN_US=0,
 * so that every wait in it sleeps and wakes through its semaphore; the
 * others spin first, as by default), and scores batches of 1 to MAX_ROWS rows
 * with every split in turn, limiting the team's width now and then
 * (dcn_scratch_set_team_threads). Every score must equal, bit for bit, the
 * same batch scored on the main thread without a team before any thread
 * started, and every team must have run pieces of layers.
 *
 * Then the hand-off protocol alone: N_HANDOFF callers, all but one of
 * their teams never spinning, each runs HANDOFF_GEMMS GEMMs split three
 * ways through a kernel that only checks its job: it reads its view of
 * the layer, works a while, reads it again (a job rewritten while it
 * runs is caught) and stamps the GEMM's serial number into its share of y.
 * After every GEMM the caller checks all three stamps: a caller that
 * returned before a helper finished finds an old one. This file includes
 * model/team.c itself, with its test hook: after every other GEMM its last
 * helper stops for a while between its decrement of `left` and its wake of
 * the caller, as a preempted helper may. A wake-up left over that way once
 * let the next GEMM return before its jobs ran (a benchmark crashed 1 run
 * in 40 under load); this check failed on every run then.
 *
 * Exits 0 on success, 1 with a message otherwise.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/dcn.h"
#define KTEAM_TEST_HOOKS
#include "model/team.c" /* with its test hook; the library's team.o is then never linked */

#include <time.h>

#define MODEL_PATH "tests/golden/mix_sigmoid_shared.dcn"
#define N_CALLERS 2
#define MAX_ROWS 40
#define ROUNDS 6

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "stress_team: %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
            exit(1);                                                     \
        }                                                                \
    } while (0)

static const char *const grids[] = {"1x3", "3x1", "2x1", "1x2"};
#define N_GRIDS (sizeof grids / sizeof grids[0])

static dcn_model *model;
static dcn_batch batch;       /* MAX_ROWS rows; a batch of n takes the first n */
static float want[MAX_ROWS + 1][MAX_ROWS];
static dcn_scratch *scratch[N_CALLERS][N_GRIDS];
static dcn_team *teams[N_CALLERS];

/* Fills `batch` with MAX_ROWS rows: one id a sparse feature, dense values
 * from the row number. The buffers live until the process exits. */
static void make_batch(void) {
    const dcn_info *in = dcn_model_info(model);
    float *dense = calloc(MAX_ROWS * in->n_dense + 1, sizeof *dense);
    uint32_t **off = calloc(in->n_sparse + 1, sizeof *off);
    int64_t **ids = calloc(in->n_sparse + 1, sizeof *ids);
    CHECK(dense && off && ids, "out of memory");
    for (size_t i = 0; i < MAX_ROWS * in->n_dense; i++) dense[i] = (float)(i % 11) * 0.3f - 1.5f;
    for (size_t f = 0; f < in->n_sparse; f++) {
        off[f] = calloc(MAX_ROWS + 1, sizeof **off);
        ids[f] = calloc(MAX_ROWS, sizeof **ids);
        CHECK(off[f] && ids[f], "out of memory");
        for (size_t r = 0; r <= MAX_ROWS; r++) off[f][r] = (uint32_t)r;
        for (size_t r = 0; r < MAX_ROWS; r++) ids[f][r] = (int64_t)((r * 7 + f * 3) % dcn_sparse(model, f)->vocab_size);
    }
    batch = (dcn_batch){.n_rows = MAX_ROWS,
                        .n_segments = 1,
                        .dense = dense,
                        .offsets = (const uint32_t *const *)off,
                        .ids = (const int64_t *const *)ids};
}

/* One caller: every round, every size, every split. */
static void *caller(void *arg) {
    size_t c = (size_t)arg;
    dcn_team *t = teams[c];
    for (size_t g = 0; g < N_GRIDS; g++) dcn_scratch_set_team(scratch[c][g], t);
    float got[MAX_ROWS];
    for (size_t round = 0; round < ROUNDS; round++)
        for (size_t n = 1; n <= MAX_ROWS; n++)
            for (size_t g = 0; g < N_GRIDS; g++) {
                dcn_batch b = batch;
                b.n_rows = n;
                dcn_scratch_set_team_threads(scratch[c][g], (round + n) % 4); /* 0: all 3 */
                CHECK(dcn_score(model, scratch[c][g], &b, got, NULL) == 0, "dcn_score failed");
                CHECK(!memcmp(got, want[n], n * sizeof *got), "caller %zu, %zu rows, split %s: scores differ", c, n,
                      grids[g]);
            }
    size_t jobs = dcn_team_jobs(t);
    CHECK(jobs > 100, "caller %zu: the team ran %zu pieces of layers", c, jobs);
    for (size_t g = 0; g < N_GRIDS; g++) dcn_scratch_set_team(scratch[c][g], NULL);
    dcn_team_free(t);
    return NULL;
}

#define N_HANDOFF 3
#define HANDOFF_GEMMS 600
#define HANDOFF_NR 16

static _Thread_local int is_caller;      /* this thread calls kteam_gemm_grid */
static _Thread_local size_t last_serial; /* the GEMM this thread's last job belonged to */

/* Busy for us microseconds. */
static void work_us(long us) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t1);
    while ((t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000 < us);
}

/* The kernel of the hand-off check: L->in carries the GEMM's serial. In
 * odd GEMMs the caller's job is the long one, so the caller finds left at
 * 0 by itself while the last helper is stopped in the hook; in even GEMMs
 * the helpers' jobs are, so a caller woken by that helper's late post
 * before they end would find a stamp missing. */
static void stamp_gemm(size_t m, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg, float *y,
                       size_t ldy, const kepi *e) {
    (void)m, (void)x, (void)ldx, (void)rg, (void)n_rg, (void)ldy, (void)e;
    size_t serial = L->in;
    work_us(serial % 2 ? (is_caller ? 100 : 5) : (is_caller ? 5 : 200));
    CHECK(L->in == serial && L->out == HANDOFF_NR, "a job changed while it ran (serial %zu, now %zu)", serial, L->in);
    y[0] = (float)serial;
    last_serial = serial;
}

static const kern_set stamp_set = {.name = "stamp", .nr = HANDOFF_NR, .mr = 1, .gemm = stamp_gemm};
static kteam *hteams[N_HANDOFF];

/* The hook: after an odd GEMM's last job, the helper stops 300 us between
 * its decrement and its wake, as a preempted helper may. */
static void stall_helper(void) {
    if (last_serial % 2) {
        struct timespec d = {0, 300000};
        nanosleep(&d, NULL);
    }
}

/* One hand-off caller: HANDOFF_GEMMS GEMMs of 3 panels, one a thread. */
static void *handoff_caller(void *arg) {
    size_t c = (size_t)arg;
    kteam *t = hteams[c];
    is_caller = 1;
    float bias[3 * HANDOFF_NR] = {0}, y[3 * HANDOFF_NR] = {0}, x[1] = {0};
    krange rg = {0, 1};
    kepi e = {0};
    for (size_t i = 1; i <= HANDOFF_GEMMS; i++) {
        klinear L = {.in = i, .out = 3 * HANDOFF_NR, .out_pad = 3 * HANDOFF_NR, .nr = HANDOFF_NR, .bias = bias};
        kteam_gemm_grid(t, &stamp_set, 1, 3, 1, x, 1, &L, &rg, 1, y, 3 * HANDOFF_NR, &e);
        for (size_t p = 0; p < 3; p++)
            CHECK(y[p * HANDOFF_NR] == (float)i, "caller %zu, GEMM %zu: share %zu holds %g: the GEMM returned before its job ran",
                  c, i, p, (double)y[p * HANDOFF_NR]);
        if (i % 97 == 0) kteam_rest(t); /* the next GEMM starts a burst again */
    }
    kteam_rest(t);
    return NULL;
}

/* The hand-off check (see the header); returns the GEMMs run. */
static size_t handoff_check(void) {
    kteam_after_decrement = stall_helper;
    for (size_t c = 0; c < N_HANDOFF; c++) {
        setenv("DCN_TEAM_SPIN_US", c == 0 ? "200" : "0", 1);
        CHECK((hteams[c] = kteam_new(2)), "cannot make a team");
    }
    unsetenv("DCN_TEAM_SPIN_US");
    pthread_t th[N_HANDOFF];
    for (size_t c = 0; c < N_HANDOFF; c++) CHECK(!pthread_create(&th[c], NULL, handoff_caller, (void *)c), "pthread_create");
    for (size_t c = 0; c < N_HANDOFF; c++) pthread_join(th[c], NULL);
    for (size_t c = 0; c < N_HANDOFF; c++) {
        CHECK(kteam_jobs(hteams[c]) == 2 * HANDOFF_GEMMS, "team %zu ran %zu jobs", c, kteam_jobs(hteams[c]));
        kteam_free(hteams[c]);
    }
    return N_HANDOFF * HANDOFF_GEMMS;
}

int main(void) {
    char err[256];
    CHECK(dcn_open(MODEL_PATH, NULL, &model, err, sizeof err) == 0, "%s (run from the repository root)", err);
    make_batch();
    unsetenv("DCN_TEAM_GRID");
    dcn_scratch *alone = dcn_scratch_new(model, MAX_ROWS);
    CHECK(alone, "out of memory");
    for (size_t n = 1; n <= MAX_ROWS; n++) {
        dcn_batch b = batch;
        b.n_rows = n;
        CHECK(dcn_score(model, alone, &b, want[n], NULL) == 0, "dcn_score failed");
    }
    dcn_scratch_free(alone);
    for (size_t g = 0; g < N_GRIDS; g++) {
        setenv("DCN_TEAM_GRID", grids[g], 1);
        for (size_t c = 0; c < N_CALLERS; c++) CHECK((scratch[c][g] = dcn_scratch_new(model, MAX_ROWS)), "out of memory");
    }
    unsetenv("DCN_TEAM_GRID");
    for (size_t c = 0; c < N_CALLERS; c++) {
        if (c == 0) setenv("DCN_TEAM_SPIN_US", "0", 1);
        else unsetenv("DCN_TEAM_SPIN_US");
        CHECK((teams[c] = dcn_team_new(2)), "cannot make a team");
    }
    unsetenv("DCN_TEAM_SPIN_US");
    pthread_t th[N_CALLERS];
    for (size_t c = 0; c < N_CALLERS; c++) CHECK(!pthread_create(&th[c], NULL, caller, (void *)c), "pthread_create");
    for (size_t c = 0; c < N_CALLERS; c++) pthread_join(th[c], NULL);
    for (size_t c = 0; c < N_CALLERS; c++)
        for (size_t g = 0; g < N_GRIDS; g++) dcn_scratch_free(scratch[c][g]);
    dcn_release(model);
    printf("stress_team: %d callers (one team always sleeping between jobs, one spinning first) x %zu splits x %d "
           "rounds of 1..%d rows: every score equals one thread's\n",
           N_CALLERS, N_GRIDS, ROUNDS, MAX_ROWS);
    size_t gemms = handoff_check();
    printf("stress_team: %zu GEMMs handed to helpers by %d callers at once: every job ran once, whole, before its "
           "GEMM returned\n",
           gemms, N_HANDOFF);
    return 0;
}
