/* load.c — dcn_open: maps a model file, checks it against the spec
 * (FORMAT.md) and builds the model the rest of the engine reads.
 *
 * DESIGN
 * - dcn_open maps the file read-only, parses the container (gguf.c), then
 *   checks every key and tensor of the spec against each other before it
 *   builds anything a caller can see. Everything in the file is hostile:
 *   every count, size and index is checked against its limit before it is
 *   used or allocated for, and a tensor the spec does not name is refused.
 * - Embedding tables and vocabularies stay in the mapping; dense weights are
 *   packed for the kernel set (kernels.h): float32, or 16-bit when the file
 *   stores them so, plus an INT8 copy with dcn_open_opts.int8 or a BF16
 *   dot-product copy with dcn_open_opts.bf16 (PRECISION.md).
 *   Packed weights of 2 MiB or more sit in transparent huge pages where the
 *   system allows (kern_alloc): they are streamed.
 * - A loader carries the model being built and the caller's error buffer
 *   through the readers; the first failure writes the detail and unwinds to
 *   dcn_open, which frees everything built so far (dcn__model_free).
 */
#include "model/dcn_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FEATURES 4096
#define MAX_DIM (1u << 20)
#define MAX_WIDTH 65536
#define MAX_LAYERS 64
#define MAX_EXPERTS 64

/* ------------------------------------------------------------ metadata */

typedef struct loader {
    dcn_model *m;
    char *err;
    size_t errlen;
    int widen; /* dcn_open_opts.widen_weights */
    int int8;  /* dcn_open_opts.int8 */
    int bf16;  /* dcn_open_opts.bf16 */
    uint8_t *kv_used; /* (n_kv) INT8 smoothing keys a layer took */
    size_t smoothed;  /* smoothing keys taken (tensors; a mix C's serves K layers) */
} loader;

/* How the kernels store a layer packed from a tensor of this dtype: in its
 * own 16 bits (exact), else float32. */
static int panel_type(const loader *ld, uint32_t dt) {
    if (ld->widen) return KW_F32;
    return dt == DCN_BF16 ? KW_BF16 : dt == DCN_F16 ? KW_F16 : KW_F32;
}

static const gg_kv *kv_get(loader *ld, const char *key, uint32_t type, int required, int *rc) {
    const gg_kv *kv = gg_find_kv(&ld->m->gg, key);
    if (!kv) {
        if (required) *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "missing metadata key '%s'", key);
        return NULL;
    }
    if (type != kv->type && !(type == GG_UINT64 && gg_scalar_size(kv->type) && kv->type != GG_FLOAT32 &&
                              kv->type != GG_FLOAT64 && kv->type != GG_BOOL)) {
        *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s' has type %s, expected %s", key,
                   gg_type_name(kv->type), type == GG_UINT64 ? "an integer" : gg_type_name(type));
        return NULL;
    }
    return kv;
}

/* Reads an integer key in [lo, hi]; absent and not required: *out = dflt. */
static int kv_int(loader *ld, const char *key, int required, int64_t lo, int64_t hi, int64_t dflt, int64_t *out) {
    int rc = 0;
    const gg_kv *kv = kv_get(ld, key, GG_UINT64, required, &rc);
    if (!kv) {
        *out = dflt;
        return rc;
    }
    gg_num n;
    gg_read_num(kv->type, kv->raw, &n);
    if ((n.neg && (n.mag > (uint64_t)INT64_MAX + 1 || -(int64_t)(n.mag - 1) - 1 < lo)) ||
        (!n.neg && (n.mag > (uint64_t)hi)))
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s' = %s%llu is out of range [%lld, %lld]", key,
                    n.neg ? "-" : "", (unsigned long long)n.mag, (long long)lo, (long long)hi);
    *out = n.neg ? -(int64_t)(n.mag - 1) - 1 : (int64_t)n.mag;
    if (*out < lo)
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s' = %lld is out of range [%lld, %lld]", key,
                    (long long)*out, (long long)lo, (long long)hi);
    return 0;
}

static int kv_string(loader *ld, const char *key, int required, gg_str *out) {
    int rc = 0;
    const gg_kv *kv = kv_get(ld, key, GG_STRING, required, &rc);
    if (!kv) {
        out->p = "";
        out->n = 0;
        return rc;
    }
    *out = kv->v.s;
    return 0;
}

/* Matches a string against a NULL-terminated list; returns the index or -1. */
static int str_enum(gg_str s, const char *const *names) {
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == s.n && !memcmp(names[i], s.p, s.n)) return i;
    return -1;
}

static int kv_enum(loader *ld, const char *key, int required, const char *const *names, int dflt, int *out) {
    gg_str s;
    int rc = kv_string(ld, key, required, &s);
    if (rc) return rc;
    if (!gg_find_kv(&ld->m->gg, key)) {
        *out = dflt;
        return 0;
    }
    int v = str_enum(s, names);
    if (v < 0) {
        char list[256] = "";
        for (int i = 0; names[i]; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, names[i], sizeof list - strlen(list) - 1);
        }
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s' = '%.*s' is not one of: %s", key,
                    (int)(s.n > 64 ? 64 : s.n), s.p, list);
    }
    *out = v;
    return 0;
}

/* Finds an array key of `n` elements; elem: GG_STRING, GG_FLOAT32 (any
 * float), GG_UINT64 (any integer). NULL with *rc set on error. */
static const gg_kv *kv_array(loader *ld, const char *key, uint32_t elem, uint64_t n, int required, int *rc) {
    const gg_kv *kv = gg_find_kv(&ld->m->gg, key);
    if (!kv) {
        if (required) *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "missing metadata key '%s'", key);
        return NULL;
    }
    if (kv->type != GG_ARRAY) {
        *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s' must be an array, not %s", key,
                   gg_type_name(kv->type));
        return NULL;
    }
    uint32_t et = kv->v.arr.type;
    int ok = elem == GG_STRING  ? et == GG_STRING
             : elem == GG_FLOAT32 ? (et == GG_FLOAT32 || et == GG_FLOAT64)
                                  : (gg_scalar_size(et) && et != GG_FLOAT32 && et != GG_FLOAT64 && et != GG_BOOL);
    if (!ok) {
        *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s': array of %s, expected %s", key,
                   gg_type_name(et), elem == GG_STRING ? "STRING" : elem == GG_FLOAT32 ? "FLOAT32" : "integers");
        return NULL;
    }
    if (n != UINT64_MAX && kv->v.arr.n != n) {
        *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s' has %llu elements, expected %llu", key,
                   (unsigned long long)kv->v.arr.n, (unsigned long long)n);
        return NULL;
    }
    return kv;
}

static void arr_num(const gg_kv *kv, uint64_t i, gg_num *n) {
    gg_read_num(kv->v.arr.type, kv->v.arr.p + i * gg_scalar_size(kv->v.arr.type), n);
}

/* Reads float array element i into *out; refuses NaN, and infinities unless
 * allow_inf. */
static int arr_float(loader *ld, const gg_kv *kv, uint64_t i, int allow_inf, float *out) {
    gg_num n;
    arr_num(kv, i, &n);
    if (isnan(n.f) || (!allow_inf && isinf(n.f)) || (!isinf(n.f) && fabs(n.f) > 3.0e38))
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%.*s'[%llu] = %g is not a finite float32",
                    (int)kv->key.n, kv->key.p, (unsigned long long)i, n.f);
    *out = (float)n.f;
    return 0;
}

static int arr_int(loader *ld, const gg_kv *kv, uint64_t i, int64_t lo, uint64_t hi, int64_t *out) {
    gg_num n;
    arr_num(kv, i, &n);
    int64_t v = n.neg ? (n.mag > (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)(n.mag - 1) - 1) : 0;
    if ((n.neg && (n.mag > (uint64_t)INT64_MAX + 1 || v < lo)) || (!n.neg && (n.mag > hi || (lo > 0 && n.mag < (uint64_t)lo))))
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%.*s'[%llu] = %s%llu is out of range",
                    (int)kv->key.n, kv->key.p, (unsigned long long)i, n.neg ? "-" : "", (unsigned long long)n.mag);
    *out = n.neg ? v : (int64_t)n.mag;
    return 0;
}

static int valid_name(gg_str s) {
    if (s.n < 1 || s.n > 64) return 0;
    for (size_t i = 0; i < s.n; i++) {
        char c = s.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

/* Copies a string into the model's arena; returns the NUL-terminated copy. */
static const char *arena_put(char **cursor, gg_str s) {
    char *p = *cursor;
    memcpy(p, s.p, s.n);
    p[s.n] = 0;
    *cursor += s.n + 1;
    return p;
}

/* ------------------------------------------------------------ tensors */

/* Finds tensor `name` with the given shape (outer first, n dims) and one of
 * the dtypes in mask (bit i = dtype i); marks it used. */
static const gg_tensor *need_tensor(loader *ld, const char *name, uint64_t dtype_mask, int ndim, const uint64_t *shape,
                                    int *rc) {
    long i = gg_find_tensor(&ld->m->gg, name);
    if (i < 0) {
        *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "missing tensor '%s'", name);
        return NULL;
    }
    const gg_tensor *t = &ld->m->gg.tensors[i];
    if (t->dtype >= 64 || !(dtype_mask >> t->dtype & 1)) {
        *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "tensor '%s' has dtype %s, not allowed there", name,
                   gg_dtype_name(t->dtype));
        return NULL;
    }
    int same = (int)t->n_dims == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->ne[d] == shape[ndim - 1 - d];
    if (!same) {
        char want[96] = "", got[96] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%llu", d ? ", " : "",
                     (unsigned long long)shape[d]);
        for (int d = (int)t->n_dims - 1; d >= 0; d--)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu", d != (int)t->n_dims - 1 ? ", " : "",
                     (unsigned long long)t->ne[d]);
        *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "tensor '%s' has shape [%s], expected [%s]", name, got, want);
        return NULL;
    }
    ld->m->used[i] = 1;
    return t;
}

#define DT(x) ((uint64_t)1 << (x))
#define WEIGHT_DTYPES (DT(DCN_F32) | DT(DCN_F16) | DT(DCN_BF16))

/* Converts a weight tensor to a fresh float32 array (caller frees), refusing
 * NaN or infinite weights. */
static float *tensor_f32(loader *ld, const gg_tensor *t, const char *name, int *rc) {
    size_t n = (size_t)(t->nbytes / gg_dtype_size(t->dtype));
    float *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) {
        *rc = fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory converting tensor '%s'", name);
        return NULL;
    }
    const uint8_t *p = t->data;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        switch (t->dtype) {
        case DCN_F32: memcpy(&out[i], p + 4 * i, 4); break;
        case DCN_F16: memcpy(&h, p + 2 * i, 2); out[i] = kern_f16_to_f32(h); break;
        default: memcpy(&h, p + 2 * i, 2); out[i] = kern_bf16_to_f32(h); break;
        }
        if (!isfinite(out[i])) {
            *rc = fail(ld->err, ld->errlen, DCN_EFORMAT, "tensor '%s' holds a non-finite value at element %zu",
                       name, i);
            free(out);
            return NULL;
        }
    }
    return out;
}

/* Loads `prefix.weight` (out, in) and `prefix.bias` (out) into a packed layer. */
static int load_linear(loader *ld, klinear *L, const char *prefix, size_t out, size_t in) {
    char wn[96], bn[96];
    int rc = 0;
    snprintf(wn, sizeof wn, "%s.weight", prefix);
    snprintf(bn, sizeof bn, "%s.bias", prefix);
    const gg_tensor *tw = need_tensor(ld, wn, WEIGHT_DTYPES, 2, (uint64_t[]){out, in}, &rc);
    if (!tw) return rc;
    const gg_tensor *tb = need_tensor(ld, bn, WEIGHT_DTYPES, 1, (uint64_t[]){out}, &rc);
    if (!tb) return rc;
    float *w = tensor_f32(ld, tw, wn, &rc), *b = w ? tensor_f32(ld, tb, bn, &rc) : NULL;
    if (w && b && kern_pack_as(L, w, b, out, in, ld->m->ks->nr, panel_type(ld, tw->dtype)))
        rc = fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory packing '%s'", wn);
    free(w);
    free(b);
    return rc;
}

/* ------------------------------------------------------------ open */

static int load_dense(loader *ld) {
    dcn_model *m = ld->m;
    size_t n = m->info.n_dense;
    int rc = 0;
    const gg_kv *names = kv_array(ld, "dcnv2.dense.names", GG_STRING, n, n > 0, &rc);
    const gg_kv *dflt = names ? kv_array(ld, "dcnv2.dense.default", GG_FLOAT32, n, 1, &rc) : NULL;
    const gg_kv *cmin = dflt ? kv_array(ld, "dcnv2.dense.clip_min", GG_FLOAT32, n, 1, &rc) : NULL;
    const gg_kv *cmax = cmin ? kv_array(ld, "dcnv2.dense.clip_max", GG_FLOAT32, n, 1, &rc) : NULL;
    const gg_kv *tf = cmax ? kv_array(ld, "dcnv2.dense.transform", GG_STRING, n, 1, &rc) : NULL;
    const gg_kv *shift = tf ? kv_array(ld, "dcnv2.dense.log_shift", GG_FLOAT32, n, 1, &rc) : NULL;
    const gg_kv *floor_ = shift ? kv_array(ld, "dcnv2.dense.log_floor", GG_FLOAT32, n, 1, &rc) : NULL;
    const gg_kv *mean = floor_ ? kv_array(ld, "dcnv2.dense.mean", GG_FLOAT32, n, 1, &rc) : NULL;
    const gg_kv *std = mean ? kv_array(ld, "dcnv2.dense.std", GG_FLOAT32, n, 1, &rc) : NULL;
    if (n == 0) return rc;
    if (!std) return rc;
    static const char *const tf_names[] = {"none", "log", NULL};
    const uint8_t *np = names->v.arr.p, *tp = tf->v.arr.p;
    for (size_t j = 0; j < n; j++) {
        dcn_dense_spec *s = &m->dense[j];
        gg_str nm = gg_arr_next_str(&np), t = gg_arr_next_str(&tp);
        if (!valid_name(nm))
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.dense.names[%zu] is not a valid feature name", j);
        s->name = (const char *)nm.p; /* replaced by the arena copy later */
        m->by_name[j] = (feat_ref){(const char *)nm.p, nm.n, DCN_FEATURE_DENSE, j};
        int k = str_enum(t, tf_names);
        if (k < 0)
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.dense.transform[%zu] = '%.*s' is not none or log",
                        j, (int)(t.n > 64 ? 64 : t.n), t.p);
        s->transform = (dcn_transform)k;
        if ((rc = arr_float(ld, dflt, j, 0, &s->default_value)) || (rc = arr_float(ld, cmin, j, 1, &s->clip_min)) ||
            (rc = arr_float(ld, cmax, j, 1, &s->clip_max)) || (rc = arr_float(ld, shift, j, 0, &s->log_shift)) ||
            (rc = arr_float(ld, floor_, j, 0, &s->log_floor)) || (rc = arr_float(ld, mean, j, 0, &s->mean)) ||
            (rc = arr_float(ld, std, j, 0, &s->std)))
            return rc;
        if (!(s->clip_min <= s->clip_max))
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "dense feature %zu: clip_min > clip_max", j);
        if (!(s->log_floor > 0.0f))
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.dense.log_floor[%zu] must be > 0", j);
        if (!(s->std > 0.0f))
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.dense.std[%zu] must be > 0", j);
    }
    return 0;
}

static int load_sparse(loader *ld, size_t *d) {
    dcn_model *m = ld->m;
    size_t n = m->info.n_sparse;
    int rc = 0;
    if (n == 0) return 0;
    const gg_kv *names = kv_array(ld, "dcnv2.sparse.names", GG_STRING, n, 1, &rc);
    const gg_kv *vocab = names ? kv_array(ld, "dcnv2.sparse.vocab_size", GG_UINT64, n, 1, &rc) : NULL;
    const gg_kv *dim = vocab ? kv_array(ld, "dcnv2.sparse.dim", GG_UINT64, n, 1, &rc) : NULL;
    const gg_kv *pool = dim ? kv_array(ld, "dcnv2.sparse.pooling", GG_STRING, n, 1, &rc) : NULL;
    const gg_kv *map = pool ? kv_array(ld, "dcnv2.sparse.mapping", GG_STRING, n, 1, &rc) : NULL;
    const gg_kv *seed = map ? kv_array(ld, "dcnv2.sparse.hash_seed", GG_UINT64, n, 1, &rc) : NULL;
    const gg_kv *oov = seed ? kv_array(ld, "dcnv2.sparse.oov_buckets", GG_UINT64, n, 1, &rc) : NULL;
    const gg_kv *miss = oov ? kv_array(ld, "dcnv2.sparse.missing_row", GG_UINT64, n, 1, &rc) : NULL;
    const gg_kv *unk = miss ? kv_array(ld, "dcnv2.sparse.unknown_row", GG_UINT64, n, 1, &rc) : NULL;
    const gg_kv *maxids = unk ? kv_array(ld, "dcnv2.sparse.max_ids", GG_UINT64, n, 1, &rc) : NULL;
    if (!maxids) return rc;
    static const char *const pool_names[] = {"sum", "mean", NULL};
    static const char *const map_names[] = {"index", "hex_mod", "hash_mod", "vocab", NULL};
    const uint8_t *np = names->v.arr.p, *pp = pool->v.arr.p, *mp = map->v.arr.p;
    for (size_t f = 0; f < n; f++) {
        dcn_sparse_spec *s = &m->sparse[f];
        gg_str nm = gg_arr_next_str(&np), ps = gg_arr_next_str(&pp), ms = gg_arr_next_str(&mp);
        if (!valid_name(nm))
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.sparse.names[%zu] is not a valid feature name", f);
        m->by_name[m->info.n_dense + f] = (feat_ref){(const char *)nm.p, nm.n, DCN_FEATURE_SPARSE, f};
        int pk = str_enum(ps, pool_names), mk = str_enum(ms, map_names);
        if (pk < 0) return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.sparse.pooling[%zu] is not sum or mean", f);
        if (mk < 0)
            return fail(ld->err, ld->errlen, DCN_EFORMAT,
                        "dcnv2.sparse.mapping[%zu] is not index, hex_mod, hash_mod or vocab", f);
        s->pooling = (dcn_pooling)pk;
        s->mapping = (dcn_mapping)mk;
        int64_t v;
        if ((rc = arr_int(ld, vocab, f, 1, (uint64_t)1 << 40, &v))) return rc;
        s->vocab_size = (uint64_t)v;
        if ((rc = arr_int(ld, dim, f, 1, 4096, &v))) return rc;
        s->dim = (uint32_t)v;
        if ((rc = arr_int(ld, maxids, f, 1, 65536, &v))) return rc;
        s->max_ids = (uint32_t)v;
        gg_num sn;
        arr_num(seed, f, &sn);
        if (sn.neg) return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.sparse.hash_seed[%zu] is negative", f);
        s->hash_seed = sn.mag;
        if ((rc = arr_int(ld, oov, f, 0, s->vocab_size - 1, &v))) return rc;
        s->oov_buckets = (uint64_t)v;
        if (s->mapping != DCN_MAP_VOCAB && s->oov_buckets)
            return fail(ld->err, ld->errlen, DCN_EFORMAT,
                        "dcnv2.sparse.oov_buckets[%zu] must be 0 unless the mapping is vocab", f);
        if ((rc = arr_int(ld, miss, f, -1, s->vocab_size - 1, &s->missing_row))) return rc;
        if ((rc = arr_int(ld, unk, f, -1, s->vocab_size - 1, &s->unknown_row))) return rc;
        s->x0_offset = *d;
        *d += s->dim;

        char tn[64];
        table *t = &m->tab[f];
        snprintf(tn, sizeof tn, "emb.%zu.weight", f);
        const gg_tensor *tw = need_tensor(ld, tn, WEIGHT_DTYPES | DT(DCN_I8), 2,
                                          (uint64_t[]){s->vocab_size, s->dim}, &rc);
        if (!tw) return rc;
        s->dtype = (dcn_dtype)tw->dtype;
        t->w = tw->data;
        t->row_bytes = (size_t)s->dim * gg_dtype_size(tw->dtype);
        if (tw->dtype == DCN_I8) {
            snprintf(tn, sizeof tn, "emb.%zu.scale", f);
            const gg_tensor *ts = need_tensor(ld, tn, DT(DCN_F32), 1, (uint64_t[]){s->vocab_size}, &rc);
            if (!ts) return rc;
            t->scale = (const float *)(const void *)ts->data;
        }
        if (s->mapping == DCN_MAP_VOCAB) {
            snprintf(tn, sizeof tn, "vocab.%zu.keys", f);
            long ki = gg_find_tensor(&m->gg, tn);
            if (ki < 0) return fail(ld->err, ld->errlen, DCN_EFORMAT, "missing tensor '%s'", tn);
            uint64_t nt = m->gg.tensors[ki].ne[0];
            const gg_tensor *tk = need_tensor(ld, tn, DT(DCN_I64), 1, (uint64_t[]){nt}, &rc);
            if (!tk) return rc;
            snprintf(tn, sizeof tn, "vocab.%zu.rows", f);
            const gg_tensor *tr = need_tensor(ld, tn, DT(DCN_I32), 1, (uint64_t[]){nt}, &rc);
            if (!tr) return rc;
            t->keys = (const uint64_t *)(const void *)tk->data;
            t->rows = (const int32_t *)(const void *)tr->data;
            s->vocab_terms = nt;
            uint64_t limit = s->vocab_size - s->oov_buckets;
            for (uint64_t i = 0; i < nt; i++) {
                if (i && t->keys[i] <= t->keys[i - 1])
                    return fail(ld->err, ld->errlen, DCN_EFORMAT,
                                "tensor 'vocab.%zu.keys' is not strictly increasing at %llu", f,
                                (unsigned long long)i);
                if (t->rows[i] < 0 || (uint64_t)t->rows[i] >= limit)
                    return fail(ld->err, ld->errlen, DCN_EFORMAT,
                                "tensor 'vocab.%zu.rows'[%llu] = %d is outside [0, %llu)", f,
                                (unsigned long long)i, t->rows[i], (unsigned long long)limit);
            }
        }
        if (*d > MAX_DIM) return fail(ld->err, ld->errlen, DCN_EFORMAT, "x0 is wider than %u", MAX_DIM);
    }
    return 0;
}

static int load_sizes(loader *ld, const char *key, uint32_t **out, size_t *n) {
    int rc = 0;
    const gg_kv *kv = kv_array(ld, key, GG_UINT64, UINT64_MAX, 0, &rc);
    *n = 0;
    if (!kv) return rc;
    if (kv->v.arr.n > MAX_LAYERS)
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "metadata '%s' lists more than %d layers", key, MAX_LAYERS);
    *n = (size_t)kv->v.arr.n;
    *out = calloc(*n ? *n : 1, sizeof **out);
    if (!*out) return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
    for (size_t i = 0; i < *n; i++) {
        int64_t v;
        if ((rc = arr_int(ld, kv, i, 1, MAX_WIDTH, &v))) return rc;
        (*out)[i] = (uint32_t)v;
    }
    return 0;
}

static int load_mlp(loader *ld, const char *prefix, klinear **layers, const uint32_t *sizes, size_t n, size_t in) {
    *layers = calloc(n ? n : 1, sizeof **layers);
    if (!*layers) return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
    for (size_t j = 0; j < n; j++) {
        char p[32];
        snprintf(p, sizeof p, "%s.%zu", prefix, j);
        int rc = load_linear(ld, &(*layers)[j], p, sizes[j], in);
        if (rc) return rc;
        in = sizes[j];
    }
    return 0;
}

/* Packs a (rows, cols) float matrix given as a tensor slice. */
static int pack_slice(loader *ld, klinear *L, const float *w, const float *bias, size_t out, size_t in,
                      const char *name, int wt) {
    if (kern_pack_as(L, w, bias, out, in, ld->m->ks->nr, wt))
        return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory packing '%s'", name);
    return 0;
}

static int load_cross(loader *ld) {
    dcn_model *m = ld->m;
    dcn_info *in = &m->info;
    size_t d = in->d, L = in->cross_layers, r = in->rank, K = in->experts;
    int rc = 0;
    m->cross = calloc(L ? L : 1, sizeof *m->cross);
    if (!m->cross) return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
    float *gw = NULL, *gb = NULL; /* shared gate */
    int gdt_shared = DCN_F32;     /* its weight's dtype */
    int gated = in->cross_kind == DCN_CROSS_MIX && in->gate != DCN_GATE_CONSTANT;
    if (gated && in->gate_shared) {
        const gg_tensor *t = need_tensor(ld, "cross.gate.weight", WEIGHT_DTYPES, 2, (uint64_t[]){K, d}, &rc);
        if (!t || !(gw = tensor_f32(ld, t, "cross.gate.weight", &rc))) return rc;
        gdt_shared = (int)t->dtype;
        if (gg_find_tensor(&m->gg, "cross.gate.bias") >= 0) {
            t = need_tensor(ld, "cross.gate.bias", WEIGHT_DTYPES, 1, (uint64_t[]){K}, &rc);
            if (!t || !(gb = tensor_f32(ld, t, "cross.gate.bias", &rc))) goto out;
        }
    }
    for (size_t l = 0; l < L; l++) {
        xlayer *x = &m->cross[l];
        char n1[64], n2[64], n3[64], nb[64];
        snprintf(nb, sizeof nb, "cross.%zu.bias", l);
        const gg_tensor *tb = need_tensor(ld, nb, WEIGHT_DTYPES, 1, (uint64_t[]){d}, &rc);
        float *bias = tb ? tensor_f32(ld, tb, nb, &rc) : NULL;
        if (!bias) goto out;
        switch (in->cross_kind) {
        case DCN_CROSS_VECTOR: {
            snprintf(n1, sizeof n1, "cross.%zu.weight", l);
            const gg_tensor *t = need_tensor(ld, n1, WEIGHT_DTYPES, 2, (uint64_t[]){1, d}, &rc);
            x->b = bias;
            if (!t || !(x->w = tensor_f32(ld, t, n1, &rc))) goto out;
            continue;
        }
        case DCN_CROSS_FULL: {
            snprintf(n1, sizeof n1, "cross.%zu.weight", l);
            const gg_tensor *t = need_tensor(ld, n1, WEIGHT_DTYPES, 2, (uint64_t[]){d, d}, &rc);
            float *w = t ? tensor_f32(ld, t, n1, &rc) : NULL;
            if (w) rc = pack_slice(ld, &x->a, w, bias, d, d, n1, panel_type(ld, t->dtype));
            free(w);
            free(bias);
            if (rc) goto out;
            continue;
        }
        case DCN_CROSS_LOWRANK: {
            snprintf(n1, sizeof n1, "cross.%zu.v", l);
            snprintf(n2, sizeof n2, "cross.%zu.u", l);
            const gg_tensor *tv = need_tensor(ld, n1, WEIGHT_DTYPES, 2, (uint64_t[]){r, d}, &rc);
            const gg_tensor *tu = tv ? need_tensor(ld, n2, WEIGHT_DTYPES, 2, (uint64_t[]){d, r}, &rc) : NULL;
            float *v = tu ? tensor_f32(ld, tv, n1, &rc) : NULL, *u = v ? tensor_f32(ld, tu, n2, &rc) : NULL;
            if (u && !(rc = pack_slice(ld, &x->a, v, NULL, r, d, n1, panel_type(ld, tv->dtype))))
                rc = pack_slice(ld, &x->u, u, bias, d, r, n2, panel_type(ld, tu->dtype));
            free(v);
            free(u);
            free(bias);
            if (rc) goto out;
            continue;
        }
        case DCN_CROSS_MIX: {
            snprintf(n1, sizeof n1, "cross.%zu.v", l);
            snprintf(n2, sizeof n2, "cross.%zu.c", l);
            snprintf(n3, sizeof n3, "cross.%zu.u", l);
            const gg_tensor *tv = need_tensor(ld, n1, WEIGHT_DTYPES, 3, (uint64_t[]){K, r, d}, &rc);
            const gg_tensor *tc = tv ? need_tensor(ld, n2, WEIGHT_DTYPES, 3, (uint64_t[]){K, r, r}, &rc) : NULL;
            const gg_tensor *tu = tc ? need_tensor(ld, n3, WEIGHT_DTYPES, 3, (uint64_t[]){K, d, r}, &rc) : NULL;
            float *v = tu ? tensor_f32(ld, tv, n1, &rc) : NULL, *c = v ? tensor_f32(ld, tc, n2, &rc) : NULL;
            float *u = c ? tensor_f32(ld, tu, n3, &rc) : NULL;
            float *lgw = NULL, *lgb = NULL, *va = NULL, *vb = NULL, *ucat = NULL;
            int gdt = gdt_shared;
            if (!u) goto mix_done;
            if (gated && !in->gate_shared) {
                char g1[64], g2[64];
                snprintf(g1, sizeof g1, "cross.%zu.gate.weight", l);
                snprintf(g2, sizeof g2, "cross.%zu.gate.bias", l);
                const gg_tensor *t = need_tensor(ld, g1, WEIGHT_DTYPES, 2, (uint64_t[]){K, d}, &rc);
                if (!t || !(lgw = tensor_f32(ld, t, g1, &rc))) goto mix_done;
                gdt = (int)t->dtype;
                if (gg_find_tensor(&m->gg, g2) >= 0) {
                    t = need_tensor(ld, g2, WEIGHT_DTYPES, 1, (uint64_t[]){K}, &rc);
                    if (!t || !(lgb = tensor_f32(ld, t, g2, &rc))) goto mix_done;
                }
            } else if (gated) {
                lgw = gw;
                lgb = gb;
            }
            /* a = [V_0; ...; V_{K-1}; gate] (K*r [+ K], d), bias zero but the gate's. */
            size_t rows = K * r + (gated ? K : 0);
            va = malloc(rows * d * sizeof *va);
            vb = calloc(rows, sizeof *vb);
            ucat = malloc(d * K * r * sizeof *ucat);
            if (!va || !vb || !ucat) {
                rc = fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
                goto mix_done;
            }
            memcpy(va, v, K * r * d * sizeof *va);
            if (gated) {
                memcpy(va + K * r * d, lgw, K * d * sizeof *va);
                if (lgb) memcpy(vb + K * r, lgb, K * sizeof *vb);
            }
            /* U_cat (d, K*r): row n = [U_0[n, :], ..., U_{K-1}[n, :]]. */
            for (size_t i = 0; i < K; i++)
                for (size_t n = 0; n < d; n++) memcpy(ucat + n * K * r + i * r, u + (i * d + n) * r, r * sizeof *u);
            /* a holds the gate's rows too: 16-bit only if they are of V's type */
            int wa = gated && gdt != (int)tv->dtype ? KW_F32 : panel_type(ld, tv->dtype);
            if ((rc = pack_slice(ld, &x->a, va, vb, rows, d, n1, wa)) ||
                (rc = pack_slice(ld, &x->u, ucat, bias, d, K * r, n3, panel_type(ld, tu->dtype))))
                goto mix_done;
            x->c = calloc(K, sizeof *x->c);
            if (!x->c) {
                rc = fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
                goto mix_done;
            }
            for (size_t i = 0; i < K && !rc; i++)
                rc = pack_slice(ld, &x->c[i], c + i * r * r, NULL, r, r, n2, panel_type(ld, tc->dtype));
        mix_done:
            if (lgw != gw) free(lgw);
            if (lgb != gb) free(lgb);
            free(v);
            free(c);
            free(u);
            free(va);
            free(vb);
            free(ucat);
            free(bias);
            if (rc) goto out;
            continue;
        }
        }
    }
out:
    free(gw);
    free(gb);
    return rc;
}

static void compute_flops(dcn_model *m) {
    dcn_info *in = &m->info;
    double f = 0, d = (double)in->d, r = (double)in->rank, K = (double)in->experts;
    size_t prev = in->n_dense;
    for (size_t j = 0; j < in->n_bottom; j++) {
        f += 2.0 * prev * in->bottom_sizes[j];
        prev = in->bottom_sizes[j];
    }
    double per = 0;
    switch (in->cross_kind) {
    case DCN_CROSS_VECTOR: per = 4 * d; break;
    case DCN_CROSS_FULL: per = 2 * d * d; break;
    case DCN_CROSS_LOWRANK: per = 4 * d * r; break;
    case DCN_CROSS_MIX: per = K * (4 * d * r + 2 * r * r) + (in->gate != DCN_GATE_CONSTANT ? 2 * K * d : 0); break;
    }
    f += per * (double)in->cross_layers;
    prev = in->combine == DCN_COMBINE_STACKED ? in->d : in->d;
    for (size_t j = 0; j < in->n_deep; j++) {
        f += 2.0 * prev * in->deep_sizes[j];
        prev = in->deep_sizes[j];
    }
    f += 2.0 * (double)m->logit_in;
    in->flops_per_row = f;
}
void dcn__model_free(dcn_model *m) {
    if (!m) return;
    if (m->bottom)
        for (size_t j = 0; j < m->info.n_bottom; j++) kern_linear_free(&m->bottom[j]);
    if (m->deep)
        for (size_t j = 0; j < m->info.n_deep; j++) kern_linear_free(&m->deep[j]);
    if (m->cross)
        for (size_t l = 0; l < m->info.cross_layers; l++) {
            xlayer *x = &m->cross[l];
            kern_linear_free(&x->a);
            kern_linear_free(&x->u);
            if (x->c)
                for (size_t i = 0; i < m->info.experts; i++) kern_linear_free(&x->c[i]);
            free(x->c);
            free(x->w);
            free(x->b);
        }
    free(m->bottom);
    free(m->deep);
    free(m->cross);
    free(m->bottom_sizes);
    free(m->deep_sizes);
    free(m->logit_w);
    free(m->dense);
    free(m->sparse);
    free(m->tab);
    free(m->by_name);
    free(m->strings);
    free(m->used);
    gg_free(&m->gg);
    if (m->map) munmap(m->map, m->map_size);
    free(m);
}

static atomic_ulong next_uid = 1;

#define SMOOTH_PREFIX "dcnv2.int8.smooth."

/* Finishes a packed layer read from tensor `name`: reads its INT8 smoothing
 * factors if the file has them (key SMOOTH_PREFIX name, `n_all` floats, the
 * layer's `L->in` from element `off`: a mix layer's per-expert C takes its
 * expert's slice), checked whether or not INT8 is asked for; adds the INT8
 * copy (dcn_open_opts.int8) and counts the bytes the kernels read (the INT8
 * copy's when there is one). 0 or a negative dcn_err. */
static int finish_layer(loader *ld, klinear *L, const char *name, size_t n_all, size_t off) {
    char key[96];
    int rc = 0;
    snprintf(key, sizeof key, SMOOTH_PREFIX "%s", name);
    const gg_kv *kv = kv_array(ld, key, GG_FLOAT32, n_all, 0, &rc);
    float *sm = NULL;
    if (rc) return rc;
    if (kv) {
        if (!ld->kv_used[kv - ld->m->gg.kvs]) ld->smoothed++; /* a mix layer's C: one key, K layers */
        ld->kv_used[kv - ld->m->gg.kvs] = 1;
        if (!(sm = malloc(L->in * sizeof *sm))) return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
        for (size_t k = 0; k < L->in && !rc; k++)
            if (!(rc = arr_float(ld, kv, off + k, 0, &sm[k])) && !(sm[k] >= 1e-30f && sm[k] <= 1e30f))
                rc = fail(ld->err, ld->errlen, DCN_EFORMAT,
                          "metadata '%s'[%zu] = %g: a smoothing factor must lie in [1e-30, 1e30]", key, off + k,
                          (double)sm[k]);
    }
    if (!rc && ld->int8 && kern_quantize(L, sm))
        rc = fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory quantizing '%s' to INT8", name);
    if (!rc && ld->bf16 && kern_bf16_pack(L))
        rc = fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory rounding '%s' to BF16", name);
    free(sm);
    if (!rc) {
        size_t pb = kern_packed_bytes(L), qb = kern_i8_bytes(L), bb = kern_bf16_bytes(L);
        ld->m->packed_bytes += L->wq ? qb : L->wbf ? bb : pb;
        ld->m->huge_bytes += kern_huge_bytes(pb) + kern_huge_bytes(qb) + kern_huge_bytes(bb);
    }
    return rc;
}

/* Finishes every packed layer (finish_layer), then refuses smoothing keys
 * that name no such layer. */
static int finish_layers(loader *ld) {
    dcn_model *m = ld->m;
    dcn_info *in = &m->info;
    size_t kr = in->experts * in->rank;
    char n[64];
    int rc = 0;
    if (!(ld->kv_used = calloc(m->gg.n_kv ? m->gg.n_kv : 1, 1))) return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
    for (size_t j = 0; j < in->n_bottom && !rc; j++) {
        snprintf(n, sizeof n, "bottom.%zu.weight", j);
        rc = finish_layer(ld, &m->bottom[j], n, m->bottom[j].in, 0);
    }
    for (size_t j = 0; j < in->n_deep && !rc; j++) {
        snprintf(n, sizeof n, "deep.%zu.weight", j);
        rc = finish_layer(ld, &m->deep[j], n, m->deep[j].in, 0);
    }
    for (size_t l = 0; l < in->cross_layers && in->cross_kind != DCN_CROSS_VECTOR && !rc; l++) {
        xlayer *x = &m->cross[l];
        /* full: W; lowrank: V then U; mix: [V; gate] (one input, x), then
         * U_cat and each expert's C (inputs expert-major, K * r of them) */
        snprintf(n, sizeof n, in->cross_kind == DCN_CROSS_FULL ? "cross.%zu.weight" : "cross.%zu.v", l);
        rc = finish_layer(ld, &x->a, n, x->a.in, 0);
        snprintf(n, sizeof n, "cross.%zu.u", l);
        if (!rc && x->u.in) rc = finish_layer(ld, &x->u, n, x->u.in, 0);
        snprintf(n, sizeof n, "cross.%zu.c", l);
        for (size_t i = 0; x->c && i < in->experts && !rc; i++) rc = finish_layer(ld, &x->c[i], n, kr, i * in->rank);
    }
    size_t plen = strlen(SMOOTH_PREFIX);
    for (size_t i = 0; i < m->gg.n_kv && !rc; i++) {
        const gg_str *k = &m->gg.kvs[i].key;
        if (!ld->kv_used[i] && k->n >= plen && !memcmp(k->p, SMOOTH_PREFIX, plen))
            rc = fail(ld->err, ld->errlen, DCN_EFORMAT,
                      "metadata '%.*s': no layer of this model is quantized from tensor '%.*s'", (int)k->n, k->p,
                      (int)(k->n - plen), k->p + plen);
    }
    free(ld->kv_used);
    ld->kv_used = NULL;
    return rc;
}

/* Validates everything that is not a tensor's data, then builds the layers. */
static int build(loader *ld) {
    dcn_model *m = ld->m;
    dcn_info *in = &m->info;
    int rc, v;
    int64_t iv;
    gg_str s;

    if ((rc = kv_string(ld, "general.architecture", 1, &s))) return rc;
    if (s.n != 5 || memcmp(s.p, "dcnv2", 5))
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "general.architecture is '%.*s', not 'dcnv2'",
                    (int)(s.n > 64 ? 64 : s.n), s.p);
    if ((rc = kv_int(ld, "dcnv2.format_version", 1, 0, UINT32_MAX, 0, &iv))) return rc;
    if (iv > DCN_FORMAT_VERSION || iv < 1)
        return fail(ld->err, ld->errlen, DCN_EVERSION, "dcnv2.format_version is %lld; this reader implements %d",
                    (long long)iv, DCN_FORMAT_VERSION);
    in->format_version = (uint32_t)iv;
    if ((rc = kv_int(ld, "general.alignment", 1, 64, 64, 64, &iv))) return rc;

    gg_str name, version, desc;
    if ((rc = kv_string(ld, "general.name", 1, &name)) || (rc = kv_string(ld, "general.version", 1, &version)) ||
        (rc = kv_string(ld, "general.description", 0, &desc)))
        return rc;
    if (name.n < 1 || name.n > 128 || memchr(name.p, 0, name.n))
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "general.name must be 1..128 bytes");
    if (version.n < 1 || version.n > 128 || memchr(version.p, 0, version.n))
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "general.version must be 1..128 bytes");
    if (memchr(desc.p, 0, desc.n)) return fail(ld->err, ld->errlen, DCN_EFORMAT, "general.description holds NUL");
    const gg_kv *crc = gg_find_kv(&m->gg, "dcnv2.checksum.crc32");
    if (crc) {
        if (crc->type != GG_UINT32)
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.checksum.crc32 must be UINT32");
        gg_num n;
        gg_read_num(crc->type, crc->raw, &n);
        in->has_crc32 = 1;
        in->crc32 = (uint32_t)n.mag;
    }

    if ((rc = kv_int(ld, "dcnv2.dense.count", 1, 0, MAX_FEATURES, 0, &iv))) return rc;
    in->n_dense = (size_t)iv;
    if ((rc = kv_int(ld, "dcnv2.sparse.count", 1, 0, MAX_FEATURES, 0, &iv))) return rc;
    in->n_sparse = (size_t)iv;
    if (in->n_dense + in->n_sparse == 0)
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "the model has no features (dense and sparse counts are 0)");

    m->dense = calloc(in->n_dense + 1, sizeof *m->dense);
    m->sparse = calloc(in->n_sparse + 1, sizeof *m->sparse);
    m->tab = calloc(in->n_sparse + 1, sizeof *m->tab);
    m->by_name = calloc(in->n_dense + in->n_sparse, sizeof *m->by_name);
    if (!m->dense || !m->sparse || !m->tab || !m->by_name) return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");

    if ((rc = load_sizes(ld, "dcnv2.bottom.sizes", &m->bottom_sizes, &in->n_bottom))) return rc;
    if (in->n_bottom && !in->n_dense)
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.bottom.sizes needs dense features");
    in->bottom_sizes = m->bottom_sizes;
    in->dense_dim = in->n_bottom ? m->bottom_sizes[in->n_bottom - 1] : in->n_dense;
    if ((rc = load_dense(ld))) return rc;
    size_t d = in->dense_dim;
    if ((rc = load_sparse(ld, &d))) return rc;
    in->d = d;

    /* Names unique across dense and sparse; then the arena copies. */
    size_t nf = in->n_dense + in->n_sparse, bytes = name.n + version.n + desc.n + 3;
    qsort(m->by_name, nf, sizeof *m->by_name, dcn__cmp_ref);
    for (size_t i = 0; i < nf; i++) {
        if (i && !dcn__cmp_ref(&m->by_name[i - 1], &m->by_name[i]))
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "feature name '%.*s' is used twice",
                        (int)m->by_name[i].len, m->by_name[i].name);
        bytes += m->by_name[i].len + 1;
    }
    char *cur = m->strings = malloc(bytes);
    if (!cur) return fail(ld->err, ld->errlen, DCN_ENOMEM, "out of memory");
    in->name = arena_put(&cur, name);
    in->version = arena_put(&cur, version);
    in->description = arena_put(&cur, desc);
    for (size_t i = 0; i < nf; i++) {
        feat_ref *r = &m->by_name[i];
        r->name = arena_put(&cur, (gg_str){r->name, r->len});
        if (r->kind == DCN_FEATURE_DENSE) m->dense[r->idx].name = r->name;
        else m->sparse[r->idx].name = r->name;
    }

    static const char *const kinds[] = {"vector", "full", "lowrank", "mix", NULL};
    static const char *const acts[] = {"identity", "relu", "tanh", "hard_tanh", "sigmoid", NULL};
    static const char *const gates[] = {"softmax", "sigmoid", "constant", NULL};
    static const char *const combines[] = {"stacked", "parallel", "cross_only", NULL};
    if ((rc = kv_enum(ld, "dcnv2.cross.kind", 1, kinds, 0, &v))) return rc;
    in->cross_kind = (dcn_cross_kind)v;
    if ((rc = kv_int(ld, "dcnv2.cross.layers", 1, 0, MAX_LAYERS, 0, &iv))) return rc;
    in->cross_layers = (size_t)iv;
    int lowr = in->cross_kind == DCN_CROSS_LOWRANK || in->cross_kind == DCN_CROSS_MIX;
    if ((rc = kv_int(ld, "dcnv2.cross.rank", lowr, 1, (int64_t)in->d, 0, &iv))) return rc;
    in->rank = lowr ? (size_t)iv : 0;
    if (in->cross_kind == DCN_CROSS_MIX) {
        if ((rc = kv_int(ld, "dcnv2.cross.experts", 1, 1, MAX_EXPERTS, 0, &iv))) return rc;
        in->experts = (size_t)iv;
        if ((rc = kv_enum(ld, "dcnv2.cross.activation", 1, acts, 0, &v))) return rc;
        in->activation = (dcn_act)v;
        if ((rc = kv_enum(ld, "dcnv2.cross.gate", 1, gates, 0, &v))) return rc;
        in->gate = (dcn_gate)v;
        const gg_kv *gs = gg_find_kv(&m->gg, "dcnv2.cross.gate_shared");
        if (gs) {
            if (gs->type != GG_BOOL || gs->raw[0] > 1)
                return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.cross.gate_shared must be BOOL");
            in->gate_shared = gs->raw[0];
        }
    }
    if ((rc = load_sizes(ld, "dcnv2.deep.sizes", &m->deep_sizes, &in->n_deep))) return rc;
    in->deep_sizes = m->deep_sizes;
    if ((rc = kv_enum(ld, "dcnv2.combine", 1, combines, 0, &v))) return rc;
    in->combine = (dcn_combine)v;
    if (in->combine == DCN_COMBINE_CROSS_ONLY && in->n_deep)
        return fail(ld->err, ld->errlen, DCN_EFORMAT, "dcnv2.combine is cross_only but dcnv2.deep.sizes is not empty");

    /* Layers. */
    if ((rc = load_mlp(ld, "bottom", &m->bottom, m->bottom_sizes, in->n_bottom, in->n_dense))) return rc;
    if ((rc = load_cross(ld))) return rc;
    if ((rc = load_mlp(ld, "deep", &m->deep, m->deep_sizes, in->n_deep, in->d))) return rc;
    size_t deep_out = in->n_deep ? m->deep_sizes[in->n_deep - 1] : 0;
    /* An empty deep network passes its input through (FORMAT.md §4). */
    m->logit_in = in->combine == DCN_COMBINE_PARALLEL ? in->d + (deep_out ? deep_out : in->d) : (deep_out ? deep_out : in->d);
    {
        const gg_tensor *tw = need_tensor(ld, "logit.weight", WEIGHT_DTYPES, 2, (uint64_t[]){1, m->logit_in}, &rc);
        const gg_tensor *tb = tw ? need_tensor(ld, "logit.bias", WEIGHT_DTYPES, 1, (uint64_t[]){1}, &rc) : NULL;
        if (!tb) return rc;
        if (!(m->logit_w = tensor_f32(ld, tw, "logit.weight", &rc))) return rc;
        float *b = tensor_f32(ld, tb, "logit.bias", &rc);
        if (!b) return rc;
        m->logit_b = b[0];
        free(b);
    }
    for (size_t i = 0; i < m->gg.n_tensors; i++)
        if (!m->used[i])
            return fail(ld->err, ld->errlen, DCN_EFORMAT, "unexpected tensor '%.*s' (not part of this architecture)",
                        (int)m->gg.tensors[i].name.n, m->gg.tensors[i].name.p);

    /* Scratch geometry. */
    size_t h = in->n_dense, o = 0;
    for (size_t j = 0; j < in->n_bottom; j++) h = h > m->bottom_sizes[j] ? h : m->bottom_sizes[j];
    for (size_t j = 0; j < in->n_deep; j++) h = h > m->deep_sizes[j] ? h : m->deep_sizes[j];
    if (in->cross_layers && in->cross_kind == DCN_CROSS_LOWRANK) h = h > in->rank ? h : in->rank;
    if (in->cross_layers && in->cross_kind == DCN_CROSS_MIX) {
        size_t w = in->experts * in->rank + in->experts;
        h = h > w ? h : w;
    }
    m->max_h = h ? h : 1;
    if (in->cross_layers && in->cross_kind != DCN_CROSS_VECTOR) o = m->cross[0].a.out_pad;
    if (in->n_deep) o = o > m->deep[0].out_pad ? o : m->deep[0].out_pad;
    m->max_out_pad = o ? o : 1;
    /* Every packed layer: its smoothing factors checked, its INT8 copy if
     * asked for, and its bytes. */
    if ((rc = finish_layers(ld))) return rc;
    in->packed_bytes = m->packed_bytes;
    in->huge_bytes = m->huge_bytes;
    in->int8 = ld->int8;
    in->bf16 = ld->bf16;
    in->int8_smoothed = ld->smoothed;
    compute_flops(m);
    return 0;
}

int dcn_open(const char *path, const dcn_open_opts *opts, dcn_model **out, char *err, size_t errlen) {
    *out = NULL;
    if (err && errlen) err[0] = 0;
    dcn_model *m = calloc(1, sizeof *m);
    if (!m) return fail(err, errlen, DCN_ENOMEM, "out of memory");
    m->ks = kern_get();
    loader ld = {.m = m, .err = err, .errlen = errlen, .widen = opts ? opts->widen_weights : 0, .int8 = opts ? opts->int8 : 0,
                 .bf16 = opts ? opts->bf16 : 0};
    int rc;
    if (ld.int8 && ld.bf16) {
        rc = fail(err, errlen, DCN_EINVAL, "int8 and bf16 dot products are two precisions: choose one");
        goto fail;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = fail(err, errlen, DCN_EIO, "cannot open '%s': %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        rc = fail(err, errlen, DCN_EIO, "'%s' is not a regular file", path);
        goto fail;
    }
    if (st.st_size < 24) {
        close(fd);
        rc = fail(err, errlen, DCN_EFORMAT, "'%s' is %lld bytes, too short for a model file", path,
                  (long long)st.st_size);
        goto fail;
    }
    m->map_size = (size_t)st.st_size;
    m->map = mmap(NULL, m->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->map == MAP_FAILED) {
        m->map = NULL;
        rc = fail(err, errlen, DCN_EIO, "cannot map '%s': %s", path, strerror(errno));
        goto fail;
    }
    if ((rc = gg_parse(&m->gg, m->map, m->map_size, err, errlen)) < 0) goto fail;
    m->used = calloc(m->gg.n_tensors + 1, 1);
    if (!m->used) {
        rc = fail(err, errlen, DCN_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = build(&ld)) < 0) goto fail;
    free(m->used);
    m->used = NULL;
    m->info.file_bytes = m->map_size;
    atomic_init(&m->refs, 1);
    m->uid = atomic_fetch_add(&next_uid, 1);
    m->info.instance_id = m->uid;
    if (opts && opts->verify_checksum && (rc = dcn_verify(m, err, errlen)) < 0) goto fail;
    if (opts && opts->warmup) dcn_warmup(m);
    *out = m;
    return 0;
fail:
    dcn__model_free(m);
    return rc;
}
