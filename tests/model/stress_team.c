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
 * started, and every team must have run pieces of layers. Exits 0 on
 * success, 1 with a message otherwise.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/dcn.h"

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
    return 0;
}
