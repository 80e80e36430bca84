/* test_team.c — a batch scored with a dcn_team equals the same batch scored
 * on one thread, bit for bit, however the team splits its layers: by
 * columns, by rows, or a grid of both (forced through DCN_TEAM_GRID), and
 * as the engine's own plan chooses when every split is free
 * (DCN_TEAM_MIN_BYTES=0). Every golden model, in float and with INT8
 * layers, on batches of awkward sizes (1 row, a few, just under and over
 * the kernels' row blocks), with and without features shared per segment.
 * Also: the team really ran pieces of layers (dcn_team_jobs), and with the
 * default threshold it never splits the golden models' small layers, which
 * a batch of one row on many threads would only pay for (dcn_team_pays).
 * And a team's helpers spin only within a burst: kteam_rest, or the spin
 * time running out, puts them to sleep (the CPU time they use says so).
 *
 * The kernel set is the process's (DCN_KERNELS forces one); `make unit`
 * runs this file once more on the scalar set. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model/dcn.h"
#include "model/team.h"

#define GOLDEN_DIR "tests/golden"
#define MAX_MODELS 128

static const size_t sizes[] = {1, 2, 5, 6, 7, 12, 13, 17, 48, 49, 97};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

/* The golden model files, sorted; returns how many. */
static size_t list_models(char names[][128], size_t max) {
    DIR *d = opendir(GOLDEN_DIR);
    cr_assert_not_null(d, "cannot open %s", GOLDEN_DIR);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        size_t len = strlen(e->d_name);
        if (len > 4 && len < 120 && !strcmp(e->d_name + len - 4, ".dcn")) snprintf(names[n++], 128, "%s", e->d_name);
    }
    closedir(d);
    qsort(names, n, 128, (int (*)(const void *, const void *))strcmp);
    return n;
}

/* A random batch of n_rows rows for m (owned buffers behind b). */
typedef struct rbatch {
    dcn_batch b;
    float *dense, *seg_dense;
    uint8_t *dsh, *ssh;
    uint32_t seg_rows[4];
    uint32_t **off;
    int64_t **ids;
} rbatch;

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Rows with random dense values (a NaN now and then: the default) and up
 * to 3 random ids a feature (-1 now and then: a padding id); with `shared`,
 * three segments whose first dense and first sparse features are given
 * once per segment. */
static void make_batch(const dcn_model *m, size_t n_rows, int shared, uint64_t seed, rbatch *r) {
    const dcn_info *in = dcn_model_info(m);
    size_t nd = in->n_dense, ns = in->n_sparse;
    memset(r, 0, sizeof *r);
    size_t n_seg = shared && n_rows >= 3 ? 3 : 1;
    r->seg_rows[0] = 0;
    for (size_t g = 1; g <= n_seg; g++) r->seg_rows[g] = (uint32_t)(n_rows * g / n_seg);
    r->dense = calloc(n_rows * nd + 1, sizeof *r->dense);
    r->seg_dense = calloc(n_seg * nd + 1, sizeof *r->seg_dense);
    r->dsh = calloc(nd + 1, 1);
    r->ssh = calloc(ns + 1, 1);
    r->off = calloc(ns + 1, sizeof *r->off);
    r->ids = calloc(ns + 1, sizeof *r->ids);
    cr_assert(r->dense && r->seg_dense && r->dsh && r->ssh && r->off && r->ids);
    uint64_t st = seed * 2654435761u + 1;
    for (size_t i = 0; i < n_rows * nd; i++)
        r->dense[i] = rng_next(&st) % 17 == 0 ? NAN : (float)((double)(rng_next(&st) % 4001) / 1000.0 - 2.0);
    for (size_t i = 0; i < n_seg * nd; i++) r->seg_dense[i] = (float)((double)(rng_next(&st) % 4001) / 1000.0);
    if (shared && nd) r->dsh[0] = 1;
    if (shared && ns) r->ssh[0] = 1;
    for (size_t f = 0; f < ns; f++) {
        const dcn_sparse_spec *sp = dcn_sparse(m, f);
        size_t n = r->ssh[f] ? n_seg : n_rows, cap = n * 3 + 1, k = 0;
        r->off[f] = calloc(n + 1, sizeof **r->off);
        r->ids[f] = calloc(cap, sizeof **r->ids);
        cr_assert(r->off[f] && r->ids[f]);
        for (size_t i = 0; i < n; i++) {
            r->off[f][i] = (uint32_t)k;
            size_t c = rng_next(&st) % ((sp->max_ids < 3 ? sp->max_ids : 3) + 1);
            for (size_t j = 0; j < c; j++)
                r->ids[f][k++] = rng_next(&st) % 23 == 0 ? -1 : (int64_t)(rng_next(&st) % sp->vocab_size);
        }
        r->off[f][n] = (uint32_t)k;
    }
    r->b = (dcn_batch){
        .n_rows = n_rows,
        .n_segments = n_seg,
        .seg_rows = r->seg_rows,
        .dense_shared = r->dsh,
        .sparse_shared = r->ssh,
        .dense = r->dense,
        .seg_dense = r->seg_dense,
        .offsets = (const uint32_t *const *)r->off,
        .ids = (const int64_t *const *)r->ids,
    };
}

static void free_batch(const dcn_model *m, rbatch *r) {
    for (size_t f = 0; f < dcn_model_info(m)->n_sparse; f++) {
        free(r->off[f]);
        free(r->ids[f]);
    }
    free(r->off), free(r->ids), free(r->dense), free(r->seg_dense), free(r->dsh), free(r->ssh);
}

/* Scores b with a fresh scratch (and team t, or NULL) into scores/logits;
 * the scratch reads DCN_TEAM_GRID and DCN_TEAM_MIN_BYTES as it is made. */
static void score(const dcn_model *m, dcn_team *t, const dcn_batch *b, float *scores, float *logits) {
    dcn_scratch *s = dcn_scratch_new(m, b->n_rows);
    cr_assert_not_null(s);
    dcn_scratch_set_team(s, t);
    cr_assert_eq(dcn_score(m, s, b, scores, logits), 0);
    dcn_scratch_free(s);
}

/* Every model x precision x size x sharing, scored alone and under each
 * split in `grids` (NULL: the plan, every split free) with `helpers`
 * helpers; returns how many pieces of layers the helpers ran. */
static size_t compare_all(const char *const *grids, size_t n_grids, size_t helpers) {
    static char names[MAX_MODELS][128];
    size_t n = list_models(names, MAX_MODELS), rows_cmp = 0;
    cr_assert_gt(n, 20);
    dcn_team *t = dcn_team_new(helpers);
    cr_assert_not_null(t);
    for (size_t i = 0; i < 2 * n; i++) {
        char path[300], err[512];
        snprintf(path, sizeof path, "%s/%s", GOLDEN_DIR, names[i % n]);
        dcn_open_opts o = {.int8 = i >= n};
        dcn_model *m;
        cr_assert_eq(dcn_open(path, &o, &m, err, sizeof err), 0, "%s", err);
        for (size_t z = 0; z < N_SIZES; z++)
            for (int shared = 0; shared < 2; shared++) {
                rbatch rb;
                size_t rows = sizes[z];
                make_batch(m, rows, shared, i * 131 + z * 7 + (size_t)shared, &rb);
                float *s1 = malloc(rows * sizeof *s1), *l1 = malloc(rows * sizeof *l1);
                float *s2 = malloc(rows * sizeof *s2), *l2 = malloc(rows * sizeof *l2);
                cr_assert(s1 && l1 && s2 && l2);
                unsetenv("DCN_TEAM_GRID");
                score(m, NULL, &rb.b, s1, l1);
                for (size_t g = 0; g < n_grids; g++) {
                    if (grids[g]) setenv("DCN_TEAM_GRID", grids[g], 1);
                    else unsetenv("DCN_TEAM_GRID");
                    memset(l2, 0xff, rows * sizeof *l2);
                    score(m, t, &rb.b, s2, l2);
                    for (size_t r = 0; r < rows; r++) {
                        cr_expect(!memcmp(&l1[r], &l2[r], sizeof l1[r]) && !memcmp(&s1[r], &s2[r], sizeof s1[r]),
                                  "%s%s, %zu rows%s, split %s: row %zu logit %.9g alone, %.9g with the team",
                                  names[i % n], i >= n ? " (int8)" : "", rows, shared ? " (shared)" : "",
                                  grids[g] ? grids[g] : "planned", r, l1[r], l2[r]);
                        rows_cmp++;
                    }
                }
                free(s1), free(l1), free(s2), free(l2);
                free_batch(m, &rb);
            }
        dcn_release(m);
    }
    unsetenv("DCN_TEAM_GRID");
    cr_assert_gt(rows_cmp, 1000);
    size_t jobs = dcn_team_jobs(t);
    dcn_team_free(t);
    return jobs;
}

Test(team, forced_grids_equal_one_thread, .timeout = 300) {
    static const char *const grids[] = {"1x2", "2x1", "2x2", "1x4", "4x1", "3x1", "1x3"};
    size_t jobs = compare_all(grids, sizeof grids / sizeof grids[0], 3);
    cr_assert_gt(jobs, 10000, "the helpers ran only %zu pieces of layers", jobs);
}

Test(team, planned_splits_equal_one_thread, .timeout = 300) {
    setenv("DCN_TEAM_MIN_BYTES", "0", 1);
    static const char *const grids[] = {NULL};
    size_t jobs = compare_all(grids, 1, 2);
    cr_assert_gt(jobs, 1000, "the helpers ran only %zu pieces of layers", jobs);
}

/* With the default threshold the golden models' layers (kilobytes) are
 * never split, on any batch: a team would only add its hand-offs. */
Test(team, small_layers_stay_on_one_thread) {
    unsetenv("DCN_TEAM_MIN_BYTES");
    unsetenv("DCN_TEAM_GRID");
    static char names[MAX_MODELS][128];
    size_t n = list_models(names, MAX_MODELS);
    dcn_team *t = dcn_team_new(3);
    cr_assert_not_null(t);
    for (size_t i = 0; i < n; i++) {
        char path[300], err[512];
        snprintf(path, sizeof path, "%s/%s", GOLDEN_DIR, names[i]);
        dcn_model *m;
        cr_assert_eq(dcn_open(path, NULL, &m, err, sizeof err), 0, "%s", err);
        for (size_t z = 0; z < N_SIZES; z++) {
            cr_expect(!dcn_team_pays(m, sizes[z], 16), "%s: a team pays for %zu rows", names[i], sizes[z]);
            rbatch rb;
            make_batch(m, sizes[z], 0, z, &rb);
            float *sc = malloc(sizes[z] * sizeof *sc);
            cr_assert_not_null(sc);
            score(m, t, &rb.b, sc, NULL);
            free(sc);
            free_batch(m, &rb);
        }
        dcn_release(m);
    }
    cr_expect_eq(dcn_team_jobs(t), 0, "the team ran %zu pieces of the golden models' layers", dcn_team_jobs(t));
    dcn_team_free(t);
}

/* CPU seconds this process has used. */
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds the process uses over the next `ms` milliseconds. */
static double cpu_over(unsigned ms) {
    double c0 = cpu_seconds();
    usleep(ms * 1000u);
    return cpu_seconds() - c0;
}

/* Woken into a burst, helpers spin (they use CPU while the caller sleeps);
 * kteam_rest puts them to sleep at once, and a burst nobody ends stops by
 * itself after DCN_TEAM_SPIN_US. A team freed in a burst joins cleanly. */
Test(team, helpers_spin_only_in_a_burst) {
    setenv("DCN_TEAM_SPIN_US", "1000000", 1); /* 1 s: long enough to see */
    kteam *t = kteam_new(3);
    unsetenv("DCN_TEAM_SPIN_US");
    cr_assert_not_null(t);
    cr_expect_lt(cpu_over(100), 0.02, "helpers use CPU before any burst");
    kteam_wake(t, 2);
    double spun = cpu_over(200); /* a share of the cores, whatever else runs (make unit runs tests two at a time) */
    cr_expect_gt(spun, 0.002, "two helpers woken into a burst used only %.4f s of CPU in 0.2 s", spun);
    kteam_rest(t);
    usleep(20000);
    double rested = cpu_over(200);
    cr_expect_lt(rested, 0.02, "helpers used %.3f s of CPU in 0.2 s after kteam_rest", rested);
    kteam_wake(t, 3);
    kteam_free(t); /* in a burst */

    setenv("DCN_TEAM_SPIN_US", "20000", 1); /* 20 ms */
    t = kteam_new(2);
    unsetenv("DCN_TEAM_SPIN_US");
    cr_assert_not_null(t);
    kteam_wake(t, 2);
    usleep(100000);
    double after = cpu_over(200);
    cr_expect_lt(after, 0.02, "helpers left in a burst used %.3f s of CPU in 0.2 s after their spin time", after);
    kteam_rest(t);
    kteam_free(t);
}
