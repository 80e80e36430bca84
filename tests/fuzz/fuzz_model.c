/* fuzz_model.c — libFuzzer target for the model-file loader: the input is a
 * whole .dcn file.
 *
 * DESIGN: the input is written to one memfd (made once, rewritten per input)
 * and opened by its /proc/self/fd path, so dcn_open maps a real file exactly
 * as the server does. A refused file must come back as a negative dcn_err
 * with a message; an accepted one must keep every promise of dcn.h: specs
 * consistent with the info, names found again, ids mapped into the table,
 * a checksum verified or refused, and a small batch (missing features, the
 * first and last table rows) scored without touching memory outside the
 * mapping; then the same under INT8 (dcn_open_opts.int8, with the file's
 * smoothing factors). Seeds: every file of tests/golden (one per
 * architecture variant), and some with INT8 smoothing factors.
 */
#include <math.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/dcn.h"
#include "tests/fuzz/fuzz.h"

static int memfd = -1;
static char memfd_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    memfd = memfd_create("fuzz-model", MFD_CLOEXEC);
    FZ_CHECK(memfd >= 0, "memfd_create failed");
    snprintf(memfd_path, sizeof memfd_path, "/proc/self/fd/%d", memfd);
    return 0;
}

/* Replaces the memfd's contents with the input; returns 0 or -1. */
static int put_file(const uint8_t *data, size_t size)
{
    if (ftruncate(memfd, 0) < 0) return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(memfd, data + done, size - done, (off_t)done);
        if (w <= 0) return -1;
        done += (size_t)w;
    }
    return 0;
}

/* Checks the accepted model's public description against itself. */
static void check_info(const dcn_model *m)
{
    const dcn_info *in = dcn_model_info(m);
    FZ_CHECK(in && in->name && in->version && in->description, "info strings missing");
    FZ_CHECK(in->n_dense + in->n_sparse >= 1, "a model without features");
    FZ_CHECK(in->d >= 1 && in->dense_dim <= in->d, "d %zu, dense_dim %zu", in->d, in->dense_dim);
    FZ_CHECK(!dcn_dense(m, in->n_dense) && !dcn_sparse(m, in->n_sparse), "spec past the end");
    for (size_t j = 0; j < in->n_dense; j++) {
        const dcn_dense_spec *s = dcn_dense(m, j);
        size_t idx = (size_t)-1;
        FZ_CHECK(s && s->name, "dense %zu", j);
        FZ_CHECK(dcn_find_feature(m, s->name, strlen(s->name), &idx) == DCN_FEATURE_DENSE && idx == j,
                 "dense %zu not found by name", j);
        FZ_CHECK(s->std > 0 && isfinite(s->std) && isfinite(s->mean), "dense %zu standardisation", j);
    }
    for (size_t f = 0; f < in->n_sparse; f++) {
        const dcn_sparse_spec *s = dcn_sparse(m, f);
        size_t idx = (size_t)-1;
        FZ_CHECK(s && s->name, "sparse %zu", f);
        FZ_CHECK(dcn_find_feature(m, s->name, strlen(s->name), &idx) == DCN_FEATURE_SPARSE && idx == f,
                 "sparse %zu not found by name", f);
        FZ_CHECK(s->vocab_size >= 1 && s->dim >= 1 && s->max_ids >= 1, "sparse %zu sizes", f);
        FZ_CHECK(s->x0_offset >= in->dense_dim && s->x0_offset + s->dim <= in->d, "sparse %zu x0 range", f);
        FZ_CHECK(s->missing_row >= -1 && s->missing_row < (int64_t)s->vocab_size, "sparse %zu missing_row", f);
        FZ_CHECK(s->unknown_row >= -1 && s->unknown_row < (int64_t)s->vocab_size, "sparse %zu unknown_row", f);
    }
}

/* Maps a handful of awkward ids through every sparse feature: each must land
 * in [-1, vocab_size). Returns nothing; aborts on a broken promise. */
static void check_mapping(const dcn_model *m)
{
    static const char *const strs[] = {"", "0", "-1", "ff", "FFFFFFFFFFFFFFFF", "10000000000000000",
                                       "9223372036854775808", "-9223372036854775808", "caf\xc3\xa9", "0x1"};
    static const int64_t ints[] = {0, 1, -1, INT64_MAX, INT64_MIN, 1000003};
    const dcn_info *in = dcn_model_info(m);
    for (size_t f = 0; f < in->n_sparse; f++) {
        int64_t V = (int64_t)dcn_sparse(m, f)->vocab_size;
        for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
            int64_t r = dcn_map_str(m, f, strs[i], strlen(strs[i]));
            FZ_CHECK(r >= -1 && r < V, "map_str(%zu, \"%s\") = %lld", f, strs[i], (long long)r);
        }
        for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
            int64_t r = dcn_map_int(m, f, ints[i]);
            FZ_CHECK(r >= -1 && r < V, "map_int(%zu, %lld) = %lld", f, (long long)ints[i], (long long)r);
        }
    }
}

/* Scores three rows: all missing, the first and last table rows with dense
 * zeros, and an unknown id with huge dense values. Every array is its own
 * allocation of the exact size dcn.h states, so ASan sees any overread. */
static void check_score(const dcn_model *m)
{
    enum { R = 3 };
    const dcn_info *in = dcn_model_info(m);
    size_t nd = in->n_dense, ns = in->n_sparse;
    dcn_scratch *s = dcn_scratch_new(m, R);
    if (!s) return; /* out of memory is allowed */
    float *dense = malloc((R * nd + 1) * sizeof *dense);
    const uint32_t **offp = calloc(ns + 1, sizeof *offp);
    const int64_t **idp = calloc(ns + 1, sizeof *idp);
    FZ_CHECK(dense && offp && idp, "out of memory");
    for (size_t j = 0; j < nd; j++) {
        dense[j] = NAN;
        dense[nd + j] = 0.0f;
        dense[2 * nd + j] = (j & 1) ? -1e30f : 1e30f;
    }
    for (size_t f = 0; f < ns; f++) {
        const dcn_sparse_spec *sp = dcn_sparse(m, f);
        uint32_t two = sp->max_ids >= 2 ? 2 : 1;
        uint32_t *off = malloc(4 * sizeof *off);
        int64_t *ids = malloc((1 + two) * sizeof *ids);
        FZ_CHECK(off && ids, "out of memory");
        off[0] = 0, off[1] = 0, off[2] = two, off[3] = two + 1;
        ids[0] = 0;
        ids[two - 1] = (int64_t)sp->vocab_size - 1;
        ids[two] = dcn_map_str(m, f, "no such id", 10);
        offp[f] = off;
        idp[f] = ids;
    }
    dcn_batch b = {.n_rows = R, .dense = dense, .offsets = offp, .ids = idp};
    float scores[R], logits[R];
    int rc = dcn_score(m, s, &b, scores, logits);
    FZ_CHECK(rc == 0, "a valid batch refused: %s", dcn_strerror(rc));
    for (size_t f = 0; f < ns; f++) {
        free((void *)offp[f]);
        free((void *)idp[f]);
    }
    free(offp);
    free(idp);
    free(dense);
    dcn_scratch_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memfd < 0) LLVMFuzzerInitialize(NULL, NULL);
    if (put_file(data, size) < 0) return 0;
    char err[256];
    dcn_model *m = NULL;
    int rc = dcn_open(memfd_path, NULL, &m, err, sizeof err);
    if (rc < 0) {
        FZ_CHECK(!m, "a refused file left a handle");
        FZ_CHECK(rc >= DCN_EMODEL && err[0], "rc %d without a message", rc);
        return 0;
    }
    FZ_CHECK(m, "success without a handle");
    check_info(m);
    check_mapping(m);
    rc = dcn_verify(m, err, sizeof err);
    FZ_CHECK(rc == 0 || rc == DCN_ECHECKSUM, "dcn_verify returned %d", rc);
    dcn_warmup(m);
    check_score(m);
    dcn_model *again = dcn_retain(m);
    dcn_release(m);
    dcn_release(again);
    /* The same file under INT8 (with its smoothing factors, if any): it
     * opened in float, so it must open here too, and score. */
    dcn_open_opts o = {.int8 = 1};
    rc = dcn_open(memfd_path, &o, &m, err, sizeof err);
    FZ_CHECK(rc == 0 || rc == DCN_ENOMEM, "opened in float, refused under INT8: %s", err);
    if (rc == 0) {
        FZ_CHECK(dcn_model_info(m)->int8, "INT8 not reported");
        check_score(m);
        dcn_release(m);
    }
    return 0;
}
