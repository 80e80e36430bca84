/* fuzz_score.c — libFuzzer target for dcn_score: valid models, hostile
 * batches.
 *
 * DESIGN: LLVMFuzzerInitialize opens every golden model (every .dcn file of tests/golden,
 * one per architecture variant) with a scratch of MAX_ROWS rows. Each input
 * picks a model, then describes a batch: its row count (up to a few past the
 * scratch), segments (none, or fuzzer-chosen boundaries that may be out of
 * order or out of range), shared masks (absent or per feature), dense values
 * (any float bits, or arrays left NULL), and for each sparse feature its
 * offsets (non-decreasing or not, counts past max_ids) and ids (mostly rows
 * of the table, sometimes any int64). Every array is a separate allocation
 * of exactly the length dcn.h asks of a caller, so reading past one is an
 * ASan report. dcn_score must either refuse the batch with a dcn_err and
 * write nothing, or accept it; when it accepts, the same batch must score
 * identically a second time (no state leaks between calls).
 * Each model is also opened with INT8 dense layers, its scratch lent a
 * dcn_team of one helper that takes every layer (DCN_TEAM_MIN_BYTES=0):
 * the high bit of the first byte picks that copy.
 */
#include <dirent.h>
#include <math.h>

#include "model/dcn.h"
#include "tests/fuzz/fuzz.h"

enum { MAX_MODELS = 64, MAX_ROWS = 16, MAX_IDS_PER_FEATURE = 512 };

static dcn_model *models[MAX_MODELS], *qmodels[MAX_MODELS];
static dcn_scratch *scratches[MAX_MODELS], *qscratches[MAX_MODELS];
static dcn_team *teams[MAX_MODELS];
static size_t n_models;

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

/* Opens every .dcn file of tests/golden in name order; aborts if none opens (the
 * target would test nothing). */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char dir[512], path[1024], err[256];
    fz_path(dir, sizeof dir, "tests/golden");
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, by_name);
    FZ_CHECK(n > 0, "no model directory %s (set DCN_FUZZ_ROOT)", dir);
    setenv("DCN_TEAM_MIN_BYTES", "0", 1);
    dcn_open_opts q8 = {.int8 = 1};
    for (int i = 0; i < n; i++) {
        size_t len = strlen(ents[i]->d_name);
        if (len > 4 && !strcmp(ents[i]->d_name + len - 4, ".dcn") && n_models < MAX_MODELS) {
            snprintf(path, sizeof path, "%s/%s", dir, ents[i]->d_name);
            dcn_model *m;
            if (dcn_open(path, NULL, &m, err, sizeof err) == 0) {
                scratches[n_models] = dcn_scratch_new(m, MAX_ROWS);
                FZ_CHECK(scratches[n_models], "scratch");
                FZ_CHECK(dcn_open(path, &q8, &qmodels[n_models], err, sizeof err) == 0, "int8: %s", err);
                qscratches[n_models] = dcn_scratch_new(qmodels[n_models], MAX_ROWS);
                teams[n_models] = dcn_team_new(1);
                FZ_CHECK(qscratches[n_models] && teams[n_models], "int8 scratch and team");
                dcn_scratch_set_team(qscratches[n_models], teams[n_models]);
                models[n_models++] = m;
            }
        }
        free(ents[i]);
    }
    free(ents);
    FZ_CHECK(n_models > 0, "no golden model opened from %s", dir);
    return 0;
}

/* Takes an id for a table of V rows: mostly a row (or -1), sometimes any
 * int64, sometimes just outside the table. */
static int64_t take_id(fz *c, uint64_t V)
{
    uint8_t k = fz_u8(c);
    switch (k & 7) {
    case 0: return (int64_t)fz_u64(c);
    case 1: return (int64_t)V;
    case 2: return -1 - (int64_t)(k >> 3);
    default: return (int64_t)(fz_u32(c) % V) - (k == 3);
    }
}

/* Takes n + 1 offsets: increments of 0..max_ids + 2 (so over max_ids
 * sometimes), with an occasional step back. Stores the largest in *top. */
static uint32_t *take_offsets(fz *c, size_t n, uint32_t max_ids, uint32_t *top)
{
    uint32_t *off = malloc((n + 1) * sizeof *off);
    FZ_CHECK(off, "out of memory");
    uint32_t lim = max_ids + 3 < MAX_IDS_PER_FEATURE / (n + 1) ? max_ids + 3 : MAX_IDS_PER_FEATURE / (n + 1);
    off[0] = fz_u8(c) < 250 ? 0 : fz_u8(c) % 8;
    *top = off[0];
    for (size_t k = 0; k < n; k++) {
        uint8_t b = fz_u8(c);
        if (b == 255 && off[k] > 0) off[k + 1] = off[k] - 1 - fz_u8(c) % off[k];
        else off[k + 1] = off[k] + (lim ? b % lim : 0);
        if (off[k + 1] > *top) *top = off[k + 1];
    }
    return off;
}

/* Takes a shared mask of n features: NULL, or one byte per feature. */
static uint8_t *take_mask(fz *c, size_t n)
{
    if (!(fz_u8(c) & 1)) return NULL;
    uint8_t *mask = malloc(n + 1);
    FZ_CHECK(mask, "out of memory");
    for (size_t i = 0; i < n; i++) mask[i] = fz_u8(c) & 1;
    return mask;
}

/* Takes n floats: any bits, or a tame value, or NULL for the whole array. */
static float *take_floats(fz *c, size_t n)
{
    uint8_t mode = fz_u8(c);
    if (mode == 0 && n) return NULL;
    float *v = malloc((n + 1) * sizeof *v);
    FZ_CHECK(v, "out of memory");
    for (size_t i = 0; i < n; i++) v[i] = (mode & 1) ? fz_f32(c) : (float)(int8_t)fz_u8(c) / 8.0f;
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!n_models) LLVMFuzzerInitialize(NULL, NULL);
    fz c = {data, size};
    uint8_t pick = fz_u8(&c);
    size_t mi = (pick & 0x7f) % n_models;
    dcn_model *m = pick & 0x80 ? qmodels[mi] : models[mi];
    dcn_scratch *s = pick & 0x80 ? qscratches[mi] : scratches[mi];
    const dcn_info *in = dcn_model_info(m);
    size_t nd = in->n_dense, ns = in->n_sparse;

    dcn_batch b = {0};
    b.n_rows = fz_u8(&c) % (MAX_ROWS + 4);
    uint32_t *seg = NULL;
    uint8_t segmode = fz_u8(&c);
    size_t nseg = 1;
    if (segmode & 1) {
        nseg = fz_u8(&c) % (b.n_rows + 4);
        seg = malloc((nseg + 1) * sizeof *seg);
        FZ_CHECK(seg, "out of memory");
        seg[0] = (segmode & 2) ? fz_u8(&c) % 3 : 0;
        for (size_t i = 1; i <= nseg; i++) {
            uint8_t k = fz_u8(&c);
            seg[i] = k == 255 ? fz_u32(&c) : seg[i - 1] + k % 4;
        }
        if (segmode & 4 && nseg) seg[nseg] = (uint32_t)b.n_rows;
        b.n_segments = nseg;
        b.seg_rows = seg;
    }
    /* Arrays are sized by what the caller promises for the batch as given;
     * a segment count past the rows still gets seg_dense of nseg rows. */
    uint8_t *dsh = take_mask(&c, nd), *ssh = take_mask(&c, ns);
    b.dense_shared = dsh;
    b.sparse_shared = ssh;
    float *dense = take_floats(&c, b.n_rows * nd), *seg_dense = take_floats(&c, nseg * nd);
    b.dense = dense;
    b.seg_dense = seg_dense;
    uint32_t **off = calloc(ns + 1, sizeof *off);
    int64_t **ids = calloc(ns + 1, sizeof *ids);
    FZ_CHECK(off && ids, "out of memory");
    for (size_t f = 0; f < ns; f++) {
        const dcn_sparse_spec *sp = dcn_sparse(m, f);
        size_t n = ssh && ssh[f] ? nseg : b.n_rows;
        uint32_t top;
        off[f] = take_offsets(&c, n, sp->max_ids, &top);
        ids[f] = malloc(((size_t)top + 1) * sizeof **ids);
        FZ_CHECK(ids[f], "out of memory");
        for (uint32_t i = 0; i < top; i++) ids[f][i] = take_id(&c, sp->vocab_size);
    }
    b.offsets = (const uint32_t *const *)off;
    b.ids = (const int64_t *const *)ids;

    float scores[MAX_ROWS + 4], logits[MAX_ROWS + 4], again[MAX_ROWS + 4];
    for (size_t r = 0; r < MAX_ROWS + 4; r++) scores[r] = logits[r] = 12345.0f;
    int rc = dcn_score(m, s, &b, scores, logits);
    if (rc < 0) {
        FZ_CHECK(rc == DCN_EINVAL || rc == DCN_ETOOBIG, "unexpected error %d", rc);
        for (size_t r = 0; r < MAX_ROWS + 4; r++)
            FZ_CHECK(scores[r] == 12345.0f && logits[r] == 12345.0f, "a refused batch wrote row %zu", r);
    } else {
        FZ_CHECK(rc == 0, "rc %d", rc);
        FZ_CHECK(b.n_rows <= MAX_ROWS, "%zu rows accepted by a scratch of %d", b.n_rows, MAX_ROWS);
        int rc2 = dcn_score(m, s, &b, again, NULL);
        FZ_CHECK(rc2 == 0, "the same batch refused the second time");
        for (size_t r = 0; r < b.n_rows; r++) {
            FZ_CHECK(!(scores[r] < 0.0f || scores[r] > 1.0f), "score %g out of [0, 1]", (double)scores[r]);
            FZ_CHECK(memcmp(&scores[r], &again[r], sizeof(float)) == 0 || (isnan(scores[r]) && isnan(again[r])),
                     "row %zu scored %.9g then %.9g", r, (double)scores[r], (double)again[r]);
        }
    }
    for (size_t f = 0; f < ns; f++) {
        free(off[f]);
        free(ids[f]);
    }
    free(off);
    free(ids);
    free(dense);
    free(seg_dense);
    free(dsh);
    free(ssh);
    free(seg);
    return 0;
}
