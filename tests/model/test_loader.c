/* test_loader.c — the loader trusts nothing. A small valid model of every
 * moving part (dense transforms, a bottom MLP, a vocab-mapped F16 table and
 * an I8 table, gated mix cross layers, a deep network) is built here byte by
 * byte, then broken one way per table row: truncated at every byte of the
 * header and at every tensor boundary, bad magic or version, counts near
 * SIZE_MAX, offsets out of range, overlapping or misaligned, shape and dtype
 * mismatches, NaN or negative values in metadata, vocabularies inconsistent
 * with their sizes. Each must be refused with the right code and a message
 * naming the key or tensor, never a crash. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/dcn.h"

/* Table rows override the defaults of M(): intended. */
#pragma GCC diagnostic ignored "-Woverride-init"

/* ------------------------------------------------------------ builder */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

/* One way to break the model (all zero: the valid model). */
typedef struct mut {
    const char *drop_key, *dup_key;
    const char *replace_key;      /* replaced by type rep_type + rep bytes */
    uint32_t rep_type;
    uint8_t rep[64];
    size_t rep_len;
    const char *drop_tensor, *dup_tensor, *extra_tensor;
    const char *tensor;           /* with the changes below */
    int t_dtype;                  /* -1: keep */
    int64_t t_dim0_delta;         /* added to the outer dimension */
    int t_ndims;                  /* 0: keep */
    int64_t t_offset;             /* -1: laid out normally */
    int vocab_unsorted, vocab_bad_row, nan_weight;
    int bad_crc;                  /* store a wrong dcnv2.checksum.crc32 */
    int smooth;                   /* INT8 smoothing factors for every layer */
    const char *smooth_key;       /* this one's: */
    int smooth_n_delta;           /*   elements added (negative: dropped) */
    float smooth_v0;              /*   element 0, if not 0 */
    const char *smooth_extra;     /* a key for this tensor too (12 factors) */
} mut;

typedef struct tens {
    const char *name;
    int ndims;
    uint64_t shape[4]; /* outer first */
    uint32_t dtype;
    const void *data;
    size_t nbytes;
} tens;

#define D_DENSE 2
#define BOTTOM 3
#define DIM0 4
#define DIM1 5
#define D (BOTTOM + DIM0 + DIM1)
#define R 2
#define K 2
#define DEEP 4
#define V0 6
#define V1 5

static size_t n_kv;
static buf kvb;

static int keep_key(const mut *m, const char *key) {
    if (m->drop_key && !strcmp(m->drop_key, key)) return 0;
    n_kv++;
    put_str(&kvb, key);
    if (m->replace_key && !strcmp(m->replace_key, key)) {
        put_u32(&kvb, m->rep_type);
        put(&kvb, m->rep, m->rep_len);
        return 0;
    }
    return 1;
}
static void kv_u32(const mut *m, const char *key, uint32_t v) {
    if (keep_key(m, key)) put_u32(&kvb, 4), put_u32(&kvb, v);
}
static void kv_bool(const mut *m, const char *key, uint8_t v) {
    if (keep_key(m, key)) put_u32(&kvb, 7), put(&kvb, &v, 1);
}
static void kv_str(const mut *m, const char *key, const char *s) {
    if (keep_key(m, key)) put_u32(&kvb, 8), put_str(&kvb, s);
}
static void kv_arr_str(const mut *m, const char *key, size_t n, const char *const *v) {
    if (!keep_key(m, key)) return;
    put_u32(&kvb, 9), put_u32(&kvb, 8), put_u64(&kvb, n);
    for (size_t i = 0; i < n; i++) put_str(&kvb, v[i]);
}
static void kv_arr_f32(const mut *m, const char *key, size_t n, const float *v) {
    if (!keep_key(m, key)) return;
    put_u32(&kvb, 9), put_u32(&kvb, 6), put_u64(&kvb, n);
    put(&kvb, v, 4 * n);
}
static void kv_arr_u64(const mut *m, const char *key, size_t n, const uint64_t *v) {
    if (!keep_key(m, key)) return;
    put_u32(&kvb, 9), put_u32(&kvb, 10), put_u64(&kvb, n);
    put(&kvb, v, 8 * n);
}
static void kv_arr_i64(const mut *m, const char *key, size_t n, const int64_t *v) {
    if (!keep_key(m, key)) return;
    put_u32(&kvb, 9), put_u32(&kvb, 11), put_u64(&kvb, n);
    put(&kvb, v, 8 * n);
}
static void kv_arr_u32(const mut *m, const char *key, size_t n, const uint32_t *v) {
    if (!keep_key(m, key)) return;
    put_u32(&kvb, 9), put_u32(&kvb, 4), put_u64(&kvb, n);
    put(&kvb, v, 4 * n);
}

static float wbuf[64][4096];
static uint16_t f16buf[V0 * DIM0];
static int8_t i8buf[V1 * DIM1];
static float scalebuf[V1];
static uint64_t keys[3];
static int32_t rows[3];

/* Builds the model file into out (a fresh buffer) with mutation m. */
static void build(const mut *m, buf *out) {
    memset(&kvb, 0, sizeof kvb);
    n_kv = 0;
    kv_str(m, "general.architecture", "dcnv2");
    kv_u32(m, "general.alignment", 64);
    kv_str(m, "general.name", "loader-test");
    kv_str(m, "general.version", "7");
    kv_u32(m, "dcnv2.format_version", 1);
    kv_u32(m, "dcnv2.dense.count", D_DENSE);
    kv_arr_str(m, "dcnv2.dense.names", D_DENSE, (const char *[]){"age", "clicks"});
    kv_arr_f32(m, "dcnv2.dense.default", D_DENSE, (float[]){0, 1});
    kv_arr_f32(m, "dcnv2.dense.clip_min", D_DENSE, (float[]){-INFINITY, 0});
    kv_arr_f32(m, "dcnv2.dense.clip_max", D_DENSE, (float[]){INFINITY, 100});
    kv_arr_str(m, "dcnv2.dense.transform", D_DENSE, (const char *[]){"none", "log"});
    kv_arr_f32(m, "dcnv2.dense.log_shift", D_DENSE, (float[]){0, 1});
    kv_arr_f32(m, "dcnv2.dense.log_floor", D_DENSE, (float[]){1, 1});
    kv_arr_f32(m, "dcnv2.dense.mean", D_DENSE, (float[]){0.5f, 0});
    kv_arr_f32(m, "dcnv2.dense.std", D_DENSE, (float[]){2, 1});
    kv_u32(m, "dcnv2.sparse.count", 2);
    kv_arr_str(m, "dcnv2.sparse.names", 2, (const char *[]){"user", "item"});
    kv_arr_u64(m, "dcnv2.sparse.vocab_size", 2, (uint64_t[]){V0, V1});
    kv_arr_u32(m, "dcnv2.sparse.dim", 2, (uint32_t[]){DIM0, DIM1});
    kv_arr_str(m, "dcnv2.sparse.pooling", 2, (const char *[]){"sum", "mean"});
    kv_arr_str(m, "dcnv2.sparse.mapping", 2, (const char *[]){"vocab", "hex_mod"});
    kv_arr_u64(m, "dcnv2.sparse.hash_seed", 2, (uint64_t[]){42, 0});
    kv_arr_u64(m, "dcnv2.sparse.oov_buckets", 2, (uint64_t[]){2, 0});
    kv_arr_i64(m, "dcnv2.sparse.missing_row", 2, (int64_t[]){-1, 0});
    kv_arr_i64(m, "dcnv2.sparse.unknown_row", 2, (int64_t[]){-1, 4});
    kv_arr_u32(m, "dcnv2.sparse.max_ids", 2, (uint32_t[]){1, 4});
    kv_arr_u32(m, "dcnv2.bottom.sizes", 1, (uint32_t[]){BOTTOM});
    kv_str(m, "dcnv2.cross.kind", "mix");
    kv_u32(m, "dcnv2.cross.layers", 2);
    kv_u32(m, "dcnv2.cross.rank", R);
    kv_u32(m, "dcnv2.cross.experts", K);
    kv_str(m, "dcnv2.cross.activation", "tanh");
    kv_str(m, "dcnv2.cross.gate", "softmax");
    kv_bool(m, "dcnv2.cross.gate_shared", 0);
    kv_arr_u32(m, "dcnv2.deep.sizes", 1, (uint32_t[]){DEEP});
    kv_str(m, "dcnv2.combine", "stacked");
    if (m->dup_key) kv_u32(&(mut){0}, m->dup_key, 1);
    if (m->bad_crc) kv_u32(m, "dcnv2.checksum.crc32", 0x12345678);
    if (m->smooth) {
        /* tensor, inputs of the layer quantized from it */
        static const struct {
            const char *t;
            size_t n;
        } sk[] = {{"bottom.0.weight", D_DENSE}, {"cross.0.v", D}, {"cross.0.c", K * R}, {"cross.0.u", K * R},
                  {"cross.1.v", D}, {"cross.1.c", K * R}, {"cross.1.u", K * R}, {"deep.0.weight", D}};
        for (size_t i = 0; i < sizeof sk / sizeof sk[0] + (m->smooth_extra != NULL); i++) {
            const char *t = i < sizeof sk / sizeof sk[0] ? sk[i].t : m->smooth_extra;
            size_t n = i < sizeof sk / sizeof sk[0] ? sk[i].n : 12;
            float v[64];
            char key[96];
            snprintf(key, sizeof key, "dcnv2.int8.smooth.%s", t);
            for (size_t k = 0; k < 64; k++) v[k] = 0.5f + (float)((k * 7 + i) % 5) * 0.75f;
            if (m->smooth_key && !strcmp(m->smooth_key, t)) {
                n = (size_t)((int)n + m->smooth_n_delta);
                if (m->smooth_v0 != 0.0f) v[0] = m->smooth_v0;
            }
            kv_arr_f32(m, key, n, v);
        }
    }

    /* Tensor data. */
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 4096; j++) wbuf[i][j] = (float)((i * 31 + j * 17) % 13 - 6) / 40.0f;
    if (m->nan_weight) wbuf[5][1] = NAN;
    for (int i = 0; i < V0 * DIM0; i++) f16buf[i] = 0x3800; /* 0.5 */
    for (int i = 0; i < V1 * DIM1; i++) i8buf[i] = (int8_t)(i % 50 - 25);
    for (int i = 0; i < V1; i++) scalebuf[i] = 0.01f;
    keys[0] = dcn_hash64(42, "a", 1), keys[1] = dcn_hash64(42, "b", 1), keys[2] = dcn_hash64(42, "c", 1);
    /* sort the three keys */
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (keys[j] < keys[i]) {
                uint64_t t = keys[i];
                keys[i] = keys[j];
                keys[j] = t;
            }
    rows[0] = 0, rows[1] = 1, rows[2] = 3;
    if (m->vocab_unsorted) keys[2] = keys[0];
    if (m->vocab_bad_row) rows[1] = V0 - 1; /* an OOV bucket row: out of range */
    tens t[40];
    int nt = 0;
#define T(nm, nd, s0, s1, s2, dt, data, bytes) \
    t[nt++] = (tens){nm, nd, {s0, s1, s2, 1}, dt, data, bytes}
    T("emb.0.weight", 2, V0, DIM0, 1, DCN_F16, f16buf, sizeof f16buf);
    T("vocab.0.keys", 1, 3, 1, 1, DCN_I64, keys, sizeof keys);
    T("vocab.0.rows", 1, 3, 1, 1, DCN_I32, rows, sizeof rows);
    T("emb.1.weight", 2, V1, DIM1, 1, DCN_I8, i8buf, sizeof i8buf);
    T("emb.1.scale", 1, V1, 1, 1, DCN_F32, scalebuf, sizeof scalebuf);
    T("bottom.0.weight", 2, BOTTOM, D_DENSE, 1, DCN_F32, wbuf[0], 4 * BOTTOM * D_DENSE);
    T("bottom.0.bias", 1, BOTTOM, 1, 1, DCN_F32, wbuf[1], 4 * BOTTOM);
    static char names[2][6][32];
    for (int l = 0; l < 2; l++) {
        snprintf(names[l][0], 32, "cross.%d.v", l);
        snprintf(names[l][1], 32, "cross.%d.c", l);
        snprintf(names[l][2], 32, "cross.%d.u", l);
        snprintf(names[l][3], 32, "cross.%d.bias", l);
        snprintf(names[l][4], 32, "cross.%d.gate.weight", l);
        snprintf(names[l][5], 32, "cross.%d.gate.bias", l);
        T(names[l][0], 3, K, R, D, DCN_F32, wbuf[2 + 6 * l], 4 * K * R * D);
        T(names[l][1], 3, K, R, R, DCN_F32, wbuf[3 + 6 * l], 4 * K * R * R);
        T(names[l][2], 3, K, D, R, DCN_F32, wbuf[4 + 6 * l], 4 * K * D * R);
        T(names[l][3], 1, D, 1, 1, DCN_F32, wbuf[5 + 6 * l], 4 * D);
        T(names[l][4], 2, K, D, 1, DCN_F32, wbuf[6 + 6 * l], 4 * K * D);
        T(names[l][5], 1, K, 1, 1, DCN_F32, wbuf[7 + 6 * l], 4 * K);
    }
    T("deep.0.weight", 2, DEEP, D, 1, DCN_F32, wbuf[20], 4 * DEEP * D);
    T("deep.0.bias", 1, DEEP, 1, 1, DCN_F32, wbuf[21], 4 * DEEP);
    T("logit.weight", 2, 1, DEEP, 1, DCN_F32, wbuf[22], 4 * DEEP);
    T("logit.bias", 1, 1, 1, 1, DCN_F32, wbuf[23], 4);
    if (m->extra_tensor) T(m->extra_tensor, 1, 1, 1, 1, DCN_F32, wbuf[24], 4);
    if (m->dup_tensor) T(m->dup_tensor, 1, 1, 1, 1, DCN_F32, wbuf[24], 4);
#undef T

    buf ti = {0}, data = {0};
    int kept = 0;
    for (int i = 0; i < nt; i++) {
        if (m->drop_tensor && !strcmp(m->drop_tensor, t[i].name)) continue;
        kept++;
        int hit = m->tensor && !strcmp(m->tensor, t[i].name);
        uint32_t nd = (uint32_t)(hit && m->t_ndims ? m->t_ndims : t[i].ndims);
        put_str(&ti, t[i].name);
        put_u32(&ti, nd);
        for (int d = (int)nd - 1; d >= 0; d--) {
            uint64_t v = d < t[i].ndims ? t[i].shape[d] : 1;
            if (hit && d == 0) v = (uint64_t)((int64_t)v + m->t_dim0_delta);
            put_u64(&ti, v);
        }
        put_u32(&ti, hit && m->t_dtype >= 0 ? (uint32_t)m->t_dtype : t[i].dtype);
        while (data.n % 64) put(&data, "", 1);
        put_u64(&ti, hit && m->t_offset >= 0 ? (uint64_t)m->t_offset : data.n);
        put(&data, t[i].data, t[i].nbytes);
    }
    while (data.n % 64) put(&data, "", 1);
    memset(out, 0, sizeof *out);
    put_u32(out, 0x46554747u);
    put_u32(out, 3);
    put_u64(out, (uint64_t)kept);
    put_u64(out, n_kv);
    put(out, kvb.p, kvb.n);
    put(out, ti.p, ti.n);
    while (out->n % 64) put(out, "", 1);
    put(out, data.p, data.n);
    free(kvb.p), free(ti.p), free(data.p);
}

static char path[64];

static void write_file(const uint8_t *p, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    if (n) cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void setup(void) {
    snprintf(path, sizeof path, "loader-test-%d.dcn", (int)getpid());
}
static void teardown(void) { unlink(path); }

/* Opens the file; returns the code, message in err. */
static int try_open(char *err, size_t errlen, int verify) {
    dcn_model *m = NULL;
    dcn_open_opts o = {.verify_checksum = verify};
    int rc = dcn_open(path, &o, &m, err, errlen);
    if (rc == 0) {
        cr_assert_not_null(m);
        dcn_release(m);
    } else {
        cr_assert_null(m, "a failed open must not hand out a model");
    }
    return rc;
}

TestSuite(loader, .init = setup, .fini = teardown);

Test(loader, valid_model_opens_and_scores) {
    buf b;
    build(&(mut){.t_dtype = -1, .t_offset = -1}, &b);
    write_file(b.p, b.n);
    char err[256];
    dcn_model *m;
    cr_assert_eq(dcn_open(path, NULL, &m, err, sizeof err), 0, "%s", err);
    const dcn_info *in = dcn_model_info(m);
    cr_assert_str_eq(in->name, "loader-test");
    cr_assert_str_eq(in->version, "7");
    cr_assert_eq(in->d, D);
    cr_assert_eq(in->cross_kind, DCN_CROSS_MIX);
    size_t idx;
    cr_assert_eq(dcn_find_feature(m, "item", 4, &idx), DCN_FEATURE_SPARSE);
    cr_assert_eq(idx, 1);
    cr_assert_eq(dcn_find_feature(m, "clicks", 6, &idx), DCN_FEATURE_DENSE);
    cr_assert_eq(dcn_find_feature(m, "nope", 4, &idx), -1);
    /* vocab: known terms map to their rows, others to the 2 OOV buckets */
    cr_assert_eq(dcn_map_str(m, 0, "c", 1), 3);
    int64_t r = dcn_map_str(m, 0, "zzz", 3);
    cr_assert(r == 4 || r == 5);
    dcn_scratch *s = dcn_scratch_new(m, 4);
    float dense[2 * D_DENSE] = {1, NAN, -3, 1e9f}, scores[2], logits[2];
    uint32_t o0[3] = {0, 1, 2}, o1[3] = {0, 2, 2};
    int64_t i0[2] = {3, -1}, i1[2] = {1, 4};
    const uint32_t *offs[2] = {o0, o1};
    const int64_t *ids[2] = {i0, i1};
    dcn_batch bt = {.n_rows = 2, .dense = dense, .offsets = offs, .ids = ids};
    cr_assert_eq(dcn_score(m, s, &bt, scores, logits), 0);
    for (int i = 0; i < 2; i++) cr_assert(scores[i] > 0 && scores[i] < 1 && isfinite(logits[i]));
    /* hostile batches are refused, nothing written */
    int64_t bad[2] = {3, V0};
    ids[0] = bad;
    scores[0] = -7;
    cr_assert_eq(dcn_score(m, s, &bt, scores, logits), DCN_EINVAL);
    cr_assert_eq(scores[0], -7);
    ids[0] = i0;
    uint32_t many[3] = {0, 1, 7};
    offs[1] = many; /* 6 ids > max_ids 4 */
    cr_assert_eq(dcn_score(m, s, &bt, scores, logits), DCN_EINVAL);
    offs[1] = o1;
    bt.n_rows = 5;
    cr_assert_eq(dcn_score(m, s, &bt, scores, logits), DCN_ETOOBIG);
    dcn_scratch_free(s);
    dcn_release(m);
    free(b.p);
}

Test(loader, truncated_anywhere_is_refused, .timeout = 60) {
    buf b;
    build(&(mut){.t_dtype = -1, .t_offset = -1}, &b);
    char err[256];
    /* Every byte of the header, then every 64-byte block of the data. */
    for (size_t n = 0; n < b.n; n += n < 4096 ? 1 : 64) {
        write_file(b.p, n);
        int rc = try_open(err, sizeof err, 0);
        cr_assert_lt(rc, 0, "truncated at %zu of %zu bytes was accepted", n, b.n);
        cr_assert_neq(err[0], 0, "no message for truncation at %zu", n);
    }
    free(b.p);
}

typedef struct bad_case {
    const char *what;
    mut m;
    int code;
    const char *needle; /* the message must contain it */
} bad_case;

#define M(...) {.t_dtype = -1, .t_offset = -1, __VA_ARGS__}
static uint8_t nan32[4] = {0, 0, 0xc0, 0x7f};

static bad_case cases[] = {
    {"missing architecture", M(.drop_key = "general.architecture"), DCN_EFORMAT, "general.architecture"},
    {"wrong architecture", M(.replace_key = "general.architecture", .rep_type = 8, .rep = {5, 0, 0, 0, 0, 0, 0, 0, 'l', 'l', 'a', 'm', 'a'}, .rep_len = 13), DCN_EFORMAT, "general.architecture"},
    {"newer format version", M(.replace_key = "dcnv2.format_version", .rep_type = 4, .rep = {2}, .rep_len = 4), DCN_EVERSION, "format_version"},
    {"alignment 32", M(.replace_key = "general.alignment", .rep_type = 4, .rep = {32}, .rep_len = 4), DCN_EFORMAT, "general.alignment"},
    {"missing cross kind", M(.drop_key = "dcnv2.cross.kind"), DCN_EFORMAT, "dcnv2.cross.kind"},
    {"unknown cross kind", M(.replace_key = "dcnv2.cross.kind", .rep_type = 8, .rep = {8, 0, 0, 0, 0, 0, 0, 0, 'd', 'i', 'a', 'g', 'o', 'n', 'a', 'l'}, .rep_len = 16), DCN_EFORMAT, "dcnv2.cross.kind"},
    {"cross kind as a number", M(.replace_key = "dcnv2.cross.kind", .rep_type = 4, .rep = {1}, .rep_len = 4), DCN_EFORMAT, "dcnv2.cross.kind"},
    {"NaN std", M(.replace_key = "dcnv2.dense.std", .rep_type = 9, .rep = {6, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x3f, 0, 0, 0xc0, 0x7f}, .rep_len = 20), DCN_EFORMAT, "dcnv2.dense.std"},
    {"zero std", M(.replace_key = "dcnv2.dense.std", .rep_type = 9, .rep = {6, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x3f, 0, 0, 0, 0}, .rep_len = 20), DCN_EFORMAT, "dcnv2.dense.std"},
    {"infinite default", M(.replace_key = "dcnv2.dense.default", .rep_type = 9, .rep = {6, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x7f, 0, 0, 0, 0}, .rep_len = 20), DCN_EFORMAT, "dcnv2.dense.default"},
    {"negative dim", M(.replace_key = "dcnv2.sparse.dim", .rep_type = 9, .rep = {11, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 5, 0, 0, 0, 0, 0, 0, 0}, .rep_len = 28), DCN_EFORMAT, "dcnv2.sparse.dim"},
    {"names array too short", M(.replace_key = "dcnv2.dense.names", .rep_type = 9, .rep = {8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 'a'}, .rep_len = 21), DCN_EFORMAT, "dcnv2.dense.names"},
    {"bad feature name", M(.replace_key = "dcnv2.dense.names", .rep_type = 9, .rep = {8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 'a', ' ', 'b', 1, 0, 0, 0, 0, 0, 0, 0, 'c'}, .rep_len = 32), DCN_EFORMAT, "dcnv2.dense.names"},
    {"duplicate feature name", M(.replace_key = "dcnv2.dense.names", .rep_type = 9, .rep = {8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 'u', 's', 'e', 'r', 1, 0, 0, 0, 0, 0, 0, 0, 'c'}, .rep_len = 33), DCN_EFORMAT, "user"},
    {"vocab size disagrees with table", M(.replace_key = "dcnv2.sparse.vocab_size", .rep_type = 9, .rep = {10, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0}, .rep_len = 28), DCN_EFORMAT, "emb.0.weight"},
    {"vocab size 2^62", M(.replace_key = "dcnv2.sparse.vocab_size", .rep_type = 9, .rep = {10, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 5, 0, 0, 0, 0, 0, 0, 0}, .rep_len = 28), DCN_EFORMAT, "dcnv2.sparse.vocab_size"},
    {"missing_row out of range", M(.replace_key = "dcnv2.sparse.missing_row", .rep_type = 9, .rep = {11, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, .rep_len = 28), DCN_EFORMAT, "dcnv2.sparse.missing_row"},
    {"oov buckets fill the vocabulary", M(.replace_key = "dcnv2.sparse.oov_buckets", .rep_type = 9, .rep = {10, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, .rep_len = 28), DCN_EFORMAT, "dcnv2.sparse.oov_buckets"},
    {"max_ids of 0", M(.replace_key = "dcnv2.sparse.max_ids", .rep_type = 9, .rep = {4, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0}, .rep_len = 20), DCN_EFORMAT, "dcnv2.sparse.max_ids"},
    {"rank above d", M(.replace_key = "dcnv2.cross.rank", .rep_type = 4, .rep = {200}, .rep_len = 4), DCN_EFORMAT, "dcnv2.cross.rank"},
    {"cross_only with a deep network", M(.replace_key = "dcnv2.combine", .rep_type = 8, .rep = {10, 0, 0, 0, 0, 0, 0, 0, 'c', 'r', 'o', 's', 's', '_', 'o', 'n', 'l', 'y'}, .rep_len = 18), DCN_EFORMAT, "cross_only"},
    {"array count near SIZE_MAX", M(.replace_key = "dcnv2.deep.sizes", .rep_type = 9, .rep = {4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, .rep_len = 12), DCN_EFORMAT, "dcnv2.deep.sizes"},
    {"string length near SIZE_MAX", M(.replace_key = "general.name", .rep_type = 8, .rep = {0xf0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, .rep_len = 8), DCN_EFORMAT, "general.name"},
    {"unknown value type", M(.replace_key = "general.name", .rep_type = 99, .rep = {0}, .rep_len = 0), DCN_EFORMAT, "general.name"},
    {"duplicate key", M(.dup_key = "dcnv2.cross.layers"), DCN_EFORMAT, "dcnv2.cross.layers"},
    {"missing tensor", M(.drop_tensor = "cross.1.u"), DCN_EFORMAT, "cross.1.u"},
    {"missing I8 scale", M(.drop_tensor = "emb.1.scale"), DCN_EFORMAT, "emb.1.scale"},
    {"unexpected tensor", M(.extra_tensor = "cross.9.weight"), DCN_EFORMAT, "cross.9.weight"},
    {"duplicate tensor", M(.dup_tensor = "logit.bias"), DCN_EFORMAT, "logit.bias"},
    {"wrong dtype", M(.tensor = "cross.0.v", .t_dtype = DCN_I32), DCN_EFORMAT, "cross.0.v"},
    {"unknown dtype", M(.tensor = "cross.0.v", .t_dtype = 2), DCN_EFORMAT, "cross.0.v"},
    {"wrong shape", M(.tensor = "deep.0.weight", .t_dim0_delta = 1), DCN_EFORMAT, "deep.0.weight"},
    {"zero dimension", M(.tensor = "deep.0.bias", .t_dim0_delta = -DEEP), DCN_EFORMAT, "deep.0.bias"},
    {"dimension near SIZE_MAX", M(.tensor = "deep.0.bias", .t_dim0_delta = INT64_MAX - 10), DCN_EFORMAT, "deep.0.bias"},
    {"five dimensions", M(.tensor = "deep.0.bias", .t_ndims = 5), DCN_EFORMAT, "deep.0.bias"},
    {"offset past the end", M(.tensor = "logit.weight", .t_offset = 1 << 20), DCN_EFORMAT, "logit.weight"},
    {"offset near SIZE_MAX", M(.tensor = "logit.weight", .t_offset = INT64_MAX - 63), DCN_EFORMAT, "logit.weight"},
    {"misaligned offset", M(.tensor = "logit.weight", .t_offset = 4), DCN_EFORMAT, "logit.weight"},
    {"overlapping tensors", M(.tensor = "logit.bias", .t_offset = 0), DCN_EFORMAT, "overlap"},
    {"vocab keys not increasing", M(.vocab_unsorted = 1), DCN_EFORMAT, "vocab.0.keys"},
    {"vocab row in the OOV range", M(.vocab_bad_row = 1), DCN_EFORMAT, "vocab.0.rows"},
    {"NaN weight", M(.nan_weight = 1), DCN_EFORMAT, "non-finite"},
    {"smoothing factors one short", M(.smooth = 1, .smooth_key = "cross.1.c", .smooth_n_delta = -1), DCN_EFORMAT, "dcnv2.int8.smooth.cross.1.c"},
    {"negative smoothing factor", M(.smooth = 1, .smooth_key = "deep.0.weight", .smooth_v0 = -1.0f), DCN_EFORMAT, "dcnv2.int8.smooth.deep.0.weight"},
    {"tiny smoothing factor", M(.smooth = 1, .smooth_key = "cross.0.v", .smooth_v0 = 1e-35f), DCN_EFORMAT, "smoothing factor"},
    {"NaN smoothing factor", M(.smooth = 1, .smooth_key = "cross.0.u", .smooth_v0 = NAN), DCN_EFORMAT, "dcnv2.int8.smooth.cross.0.u"},
    {"huge smoothing factor", M(.smooth = 1, .smooth_key = "bottom.0.weight", .smooth_v0 = 1e31f), DCN_EFORMAT, "smoothing factor"},
    {"smoothing a float-only layer", M(.smooth = 1, .smooth_extra = "logit.weight"), DCN_EFORMAT, "dcnv2.int8.smooth.logit.weight"},
    {"smoothing no tensor", M(.smooth = 1, .smooth_extra = "cross.7.v"), DCN_EFORMAT, "no layer"},
    {"smoothing factors as a number", M(.smooth = 1, .replace_key = "dcnv2.int8.smooth.cross.0.v", .rep_type = 4, .rep = {1}, .rep_len = 4), DCN_EFORMAT, "dcnv2.int8.smooth.cross.0.v"},
};

Test(loader, hostile_files_are_refused) {
    (void)nan32;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf b;
        build(&cases[i].m, &b);
        write_file(b.p, b.n);
        char err[256] = "";
        int rc = try_open(err, sizeof err, 0);
        cr_expect_eq(rc, cases[i].code, "%s: code %d (%s), expected %d", cases[i].what, rc, err, cases[i].code);
        cr_expect(strstr(err, cases[i].needle) != NULL, "%s: message '%s' does not name '%s'", cases[i].what, err,
                  cases[i].needle);
        free(b.p);
    }
}

/* INT8 smoothing factors (FORMAT.md §3) change nothing in float, are
 * counted, and are used under INT8: the scores move, within quantization
 * error of float. */
Test(loader, int8_smoothing_factors) {
    buf b;
    float dense[2 * D_DENSE] = {1, 2, -3, 40}, sc[4][2];
    uint32_t o0[3] = {0, 1, 2}, o1[3] = {0, 2, 3};
    int64_t i0[2] = {3, 1}, i1[3] = {1, 4, 2};
    const uint32_t *offs[2] = {o0, o1};
    const int64_t *ids[2] = {i0, i1};
    dcn_batch bt = {.n_rows = 2, .dense = dense, .offsets = offs, .ids = ids};
    for (int v = 0; v < 4; v++) { /* plain float, smoothed float, plain INT8, smoothed INT8 */
        build(&(mut){.t_dtype = -1, .t_offset = -1, .smooth = v % 2}, &b);
        write_file(b.p, b.n);
        char err[256];
        dcn_model *m;
        dcn_open_opts o = {.int8 = v >= 2};
        cr_assert_eq(dcn_open(path, &o, &m, err, sizeof err), 0, "%s", err);
        cr_assert_eq(dcn_model_info(m)->int8_smoothed, v % 2 ? 8u : 0u);
        dcn_scratch *s = dcn_scratch_new(m, 2);
        cr_assert_eq(dcn_score(m, s, &bt, sc[v], NULL), 0);
        dcn_scratch_free(s);
        dcn_release(m);
        free(b.p);
    }
    for (int r = 0; r < 2; r++) {
        cr_assert_eq(sc[0][r], sc[1][r], "float scores must ignore the smoothing factors");
        cr_assert_neq(sc[2][r], sc[3][r], "INT8 row %d: the smoothing factors were not used", r);
        cr_assert(fabsf(sc[3][r] - sc[0][r]) < 0.02f, "smoothed INT8 %g vs float %g", sc[3][r], sc[0][r]);
    }
}

Test(loader, checksum_checked_on_request) {
    buf b;
    build(&(mut){.t_dtype = -1, .t_offset = -1, .bad_crc = 1}, &b);
    write_file(b.p, b.n);
    char err[256];
    cr_assert_eq(try_open(err, sizeof err, 0), 0, "without --verify the data is not read: %s", err);
    cr_assert_eq(try_open(err, sizeof err, 1), DCN_ECHECKSUM);
    cr_assert(strstr(err, "12345678") != NULL, "%s", err);
    free(b.p);
}

Test(loader, header_fields) {
    buf b;
    build(&(mut){.t_dtype = -1, .t_offset = -1}, &b);
    char err[256];
    uint8_t *c = malloc(b.n);
    struct {
        size_t off, len;
        uint64_t v;
        int code;
        const char *needle;
    } f[] = {
        {0, 4, 0x46554746, DCN_EFORMAT, "magic"},
        {4, 4, 2, DCN_EVERSION, "version"},
        {4, 4, 4, DCN_EVERSION, "version"},
        {8, 8, UINT64_MAX, DCN_EFORMAT, "tensor count"},
        {8, 8, (uint64_t)1 << 40, DCN_EFORMAT, "tensor count"},
        {16, 8, UINT64_MAX / 2, DCN_EFORMAT, "metadata count"},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        memcpy(c, b.p, b.n);
        memcpy(c + f[i].off, &f[i].v, f[i].len);
        write_file(c, b.n);
        int rc = try_open(err, sizeof err, 0);
        cr_expect_eq(rc, f[i].code, "field at %zu: %d (%s)", f[i].off, rc, err);
        cr_expect(strstr(err, f[i].needle) != NULL, "field at %zu: '%s'", f[i].off, err);
    }
    free(c);
    free(b.p);
}

Test(loader, not_a_file) {
    char err[256];
    dcn_model *m = (dcn_model *)1;
    cr_assert_eq(dcn_open("no-such-model.dcn", NULL, &m, err, sizeof err), DCN_EIO);
    cr_assert_null(m);
    cr_assert(strstr(err, "no-such-model.dcn") != NULL);
    cr_assert_eq(dcn_open(".", NULL, &m, err, sizeof err), DCN_EIO);
    cr_assert_str_eq(dcn_strerror(DCN_EFORMAT), "malformed model file");
    cr_assert_str_eq(dcn_strerror(12345), "unknown error");
}
