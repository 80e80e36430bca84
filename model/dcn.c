/* dcn.c — the DCN-V2 inference core: opens and validates a model file
 * (FORMAT.md), maps ids, and runs the forward pass over a batch.
 *
 * DESIGN
 * - dcn_open maps the file read-only, parses the container (gguf.c), then
 *   checks every key and tensor of the spec against each other before it
 *   builds anything a caller can see. Embedding tables and vocabularies stay
 *   in the mapping; dense weights are packed for the kernel set (kernels.h):
 *   float32, or 16-bit when the file stores them so, plus an INT8 copy with
 *   dcn_open_opts.int8 (PRECISION.md). The handle is immutable afterwards and shared
 *   through an atomic reference count; the last dcn_release unmaps. Packed
 *   weights and scratch buffers of 2 MiB or more sit in transparent huge
 *   pages where the system allows (kern_alloc): they are streamed.
 * - dcn_score runs on the caller's thread with the caller's scratch: it
 *   validates the batch, builds x0 (dense transforms, optional bottom MLP,
 *   pooled embeddings), then runs the cross network, the deep network and
 *   the logit on chunks of rows whose activations fit in cache (models
 *   with small weights only). Shared (context) features are computed once
 *   per segment: their x0 coordinates are filled once and copied, and every
 *   layer that reads x0 directly folds W[:, ctx] x_ctx into a per-segment
 *   bias (lin_x0).
 * - Activations of mix layers run through the kernel set's vector act on
 *   the GEMM output; gates (K values a row) use libm.
 * - Every GEMM goes through gemm(): with a dcn_team on the scratch, a batch
 *   of at most DCN_TEAM_MAX_ROWS rows and a layer of dcn_team_min_bytes()
 *   or more, the layer's output panels are split across the team (team.c).
 */
#include "model/dcn.h"
#include "model/gguf.h"
#include "model/kernels.h"
#include "model/team.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dcnserve reads little-endian model files in place and needs a little-endian host"
#endif

#define LD_ALIGN 32 /* row strides of scratch buffers, in floats */
#define MAX_FEATURES 4096
#define MAX_DIM (1u << 20)
#define MAX_WIDTH 65536
#define MAX_LAYERS 64
#define MAX_EXPERTS 64
#define PREFETCH_ROWS 2 /* embedding rows fetched ahead while gathering */
#ifndef CHUNK_BYTES
#define CHUNK_BYTES (384u << 10) /* activations of a chunk of rows: about an L2 */
#endif
#define CHUNK_MAX_WEIGHT_BYTES (8u << 20) /* chunk only models whose weights fit a last-level cache */

typedef struct table {
    const uint8_t *w;       /* (vocab, dim) in the mapping */
    const float *scale;     /* (vocab) for I8, else NULL */
    size_t row_bytes;
    const uint64_t *keys;   /* vocab mapping: (n_terms) sorted */
    const int32_t *rows;    /* (n_terms) */
} table;

typedef struct xlayer {
    klinear a;              /* full: W (d,d); lowrank: V (r,d); mix: [V_0..V_K-1; gate] (K*r [+K], d) */
    klinear u;              /* lowrank: U (d,r); mix: [U_0 .. U_K-1] (d, K*r); bias = b_l */
    klinear *c;             /* mix: K of C_i (r, r) */
    float *w, *b;           /* vector: w (d), b (d) */
} xlayer;

typedef struct feat_ref {
    const char *name;
    size_t len;
    int kind;
    size_t idx;
} feat_ref;

struct dcn_model {
    atomic_long refs;
    uint64_t uid;
    uint8_t *map;
    size_t map_size;
    gg_file gg;
    const kern_set *ks;
    dcn_info info;
    char *strings;          /* NUL-terminated copies of every name */
    dcn_dense_spec *dense;
    dcn_sparse_spec *sparse;
    table *tab;
    feat_ref *by_name;      /* sorted by name */
    uint32_t *bottom_sizes, *deep_sizes;
    klinear *bottom, *deep;
    xlayer *cross;
    float *logit_w;         /* (logit_in) */
    float logit_b;
    size_t logit_in;
    size_t max_h;           /* widest hidden activation (MLPs, r, K*r + K) */
    size_t max_out_pad;     /* widest padded output of a layer that reads x0 */
    size_t packed_bytes;    /* all packed dense weights */
    size_t huge_bytes;      /* of all dense weights held, those in huge-page buffers */
    uint8_t *used;          /* per tensor, during open */
};

const char *dcn_strerror(int err) {
    switch (err) {
    case DCN_OK: return "success";
#define XX(name, code, msg) case DCN_##name: return msg;
        DCN_ERRNO_MAP(XX)
#undef XX
    default: return "unknown error";
    }
}

#define fail dcn__fail

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* ------------------------------------------------------------ metadata */

typedef struct loader {
    dcn_model *m;
    char *err;
    size_t errlen;
    int widen; /* dcn_open_opts.widen_weights */
    int int8;  /* dcn_open_opts.int8 */
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

static int cmp_ref(const void *a, const void *b) {
    const feat_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
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

static void model_free(dcn_model *m) {
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
    free(sm);
    if (!rc) {
        size_t pb = kern_packed_bytes(L), qb = L->wq ? L->kq * ((L->out + KQ_NR - 1) / KQ_NR * KQ_NR) : 0;
        ld->m->packed_bytes += L->wq ? qb : pb;
        ld->m->huge_bytes += kern_huge_bytes(pb) + kern_huge_bytes(qb);
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
    qsort(m->by_name, nf, sizeof *m->by_name, cmp_ref);
    for (size_t i = 0; i < nf; i++) {
        if (i && !cmp_ref(&m->by_name[i - 1], &m->by_name[i]))
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
    loader ld = {.m = m, .err = err, .errlen = errlen, .widen = opts ? opts->widen_weights : 0, .int8 = opts ? opts->int8 : 0};
    int rc;
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
    model_free(m);
    return rc;
}

dcn_model *dcn_retain(dcn_model *m) {
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void dcn_release(dcn_model *m) {
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) model_free(m);
}

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

/* CRC-32 (IEEE, zlib's) of p[0..n), continuing from crc; slicing by 8. */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    pthread_once(&crc_once, crc_init);
    uint32_t (*ct)[256] = crc_table;
    crc = ~crc;
    while (n >= 8) {
        uint32_t a = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        crc = ct[7][a & 0xff] ^ ct[6][(a >> 8) & 0xff] ^ ct[5][(a >> 16) & 0xff] ^ ct[4][a >> 24] ^
              ct[3][p[4]] ^ ct[2][p[5]] ^ ct[1][p[6]] ^ ct[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) crc = ct[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

int dcn_verify(const dcn_model *m, char *err, size_t errlen) {
    if (!m->info.has_crc32) return 0;
    uint32_t c = crc32_update(0, m->map + m->gg.data_off, m->map_size - m->gg.data_off);
    if (c != m->info.crc32)
        return fail(err, errlen, DCN_ECHECKSUM, "data section CRC-32 is %08x, the file says %08x", c, m->info.crc32);
    return 0;
}

void dcn_warmup(const dcn_model *m) {
    madvise(m->map, m->map_size, MADV_WILLNEED);
    volatile uint8_t sink = 0;
    long page = sysconf(_SC_PAGESIZE);
    for (size_t off = 0; off < m->map_size; off += (size_t)page) sink ^= m->map[off];
    (void)sink;
}

const dcn_info *dcn_model_info(const dcn_model *m) { return &m->info; }
const dcn_dense_spec *dcn_dense(const dcn_model *m, size_t i) { return i < m->info.n_dense ? &m->dense[i] : NULL; }
const dcn_sparse_spec *dcn_sparse(const dcn_model *m, size_t i) {
    return i < m->info.n_sparse ? &m->sparse[i] : NULL;
}

int dcn_find_feature(const dcn_model *m, const char *name, size_t len, size_t *index) {
    feat_ref key = {name, len, 0, 0};
    const feat_ref *r = bsearch(&key, m->by_name, m->info.n_dense + m->info.n_sparse, sizeof key, cmp_ref);
    if (!r) return -1;
    *index = r->idx;
    return r->kind;
}

/* ------------------------------------------------------------ id mapping */

uint64_t dcn_hash64(uint64_t seed, const void *p, size_t len) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static int64_t map_hashed(const dcn_model *m, size_t f, uint64_t h) {
    const dcn_sparse_spec *s = &m->sparse[f];
    if (s->mapping == DCN_MAP_HASH_MOD) return (int64_t)(h % s->vocab_size);
    const table *t = &m->tab[f];
    size_t lo = 0, hi = (size_t)s->vocab_terms;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->keys[mid] < h) lo = mid + 1;
        else hi = mid;
    }
    if (lo < s->vocab_terms && t->keys[lo] == h) return t->rows[lo];
    if (s->oov_buckets) return (int64_t)(s->vocab_size - s->oov_buckets + h % s->oov_buckets);
    return s->unknown_row;
}

int64_t dcn_map_int(const dcn_model *m, size_t f, int64_t id) {
    if (f >= m->info.n_sparse) return -1;
    const dcn_sparse_spec *s = &m->sparse[f];
    switch (s->mapping) {
    case DCN_MAP_INDEX: return id >= 0 && (uint64_t)id < s->vocab_size ? id : s->unknown_row;
    case DCN_MAP_HEX_MOD: return id >= 0 ? (int64_t)((uint64_t)id % s->vocab_size) : s->unknown_row;
    default: {
        char buf[24];
        int n = snprintf(buf, sizeof buf, "%lld", (long long)id);
        return map_hashed(m, f, dcn_hash64(s->hash_seed, buf, (size_t)n));
    }
    }
}

int64_t dcn_map_str(const dcn_model *m, size_t f, const char *str, size_t len) {
    if (f >= m->info.n_sparse) return -1;
    const dcn_sparse_spec *s = &m->sparse[f];
    switch (s->mapping) {
    case DCN_MAP_INDEX: {
        size_t i = 0;
        int neg = len > 0 && str[0] == '-';
        i = (size_t)neg;
        if (len - i < 1 || len - i > 19) return s->unknown_row;
        uint64_t v = 0;
        for (; i < len; i++) {
            if (str[i] < '0' || str[i] > '9') return s->unknown_row;
            v = v * 10 + (uint64_t)(str[i] - '0');
        }
        if (neg && v) return s->unknown_row; /* negative indices are never rows; -0 is 0 */
        return v < s->vocab_size ? (int64_t)v : s->unknown_row;
    }
    case DCN_MAP_HEX_MOD: {
        if (len == 0) return s->missing_row;
        if (len > 16) return s->unknown_row;
        uint64_t v = 0;
        for (size_t i = 0; i < len; i++) {
            char c = str[i];
            int dgt = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (dgt < 0) return s->unknown_row;
            v = v << 4 | (uint64_t)dgt;
        }
        return (int64_t)(v % s->vocab_size);
    }
    default: return map_hashed(m, f, dcn_hash64(s->hash_seed, str, len));
    }
}

/* ------------------------------------------------------------ scratch */

struct dcn_scratch {
    const dcn_model *m;
    uint64_t uid;
    size_t max_rows;
    size_t ldd, ldh, ldn, ldo, ldk; /* row strides in floats */
    float *x0, *xa, *xb;            /* (max_rows, ldd) */
    float *h0, *h1;                 /* (max_rows, ldh) */
    float *hc;                      /* (max_rows, ldk) mix: g(C h) of every expert, gated */
    float *gate;                    /* (max_rows, experts) */
    float *gsum;                    /* (max_rows) */
    float *dn, *seg_dn;             /* (max_rows, ldn) transformed dense values */
    float *seg_x0;                  /* (max_rows, ldd) shared coordinates per segment */
    float *seg_b;                   /* (max_rows, ldo) per-segment bias of an x0 layer */
    krange *rg_item, *rg_ctx;       /* (n_dense + n_sparse + 1) */
    uint32_t *cseg;                 /* (max_rows + 2) segment bounds of a chunk */
    size_t chunk_rows;              /* rows the layers run on at a time */
    kteam *team;                    /* or NULL: see dcn_scratch_set_team */
    size_t team_min_bytes;          /* dcn_team_min_bytes() */
    void *mem;
};

struct dcn_team {
    kteam *t;
};

dcn_team *dcn_team_new(size_t helpers) {
    dcn_team *t = calloc(1, sizeof *t);
    if (t && !(t->t = kteam_new(helpers))) {
        free(t);
        t = NULL;
    }
    return t;
}

void dcn_team_free(dcn_team *t) {
    if (!t) return;
    kteam_free(t->t);
    free(t);
}

void dcn_scratch_set_team(dcn_scratch *s, dcn_team *t) { s->team = t ? t->t : NULL; }

size_t dcn_team_min_bytes(void) {
    const char *env = getenv("DCN_TEAM_MIN_BYTES");
    return env && *env ? (size_t)strtoull(env, NULL, 10) : (size_t)2 << 20;
}

/* Every GEMM of the forward pass: with a team, a few rows and a heavy
 * layer, split by output panels (team.c); else on this thread. */
static void gemm(const dcn_model *m, const dcn_scratch *s, size_t rows, const float *x, size_t ldx,
                 const klinear *L, const krange *rg, size_t n_rg, float *y, size_t ldy, const kepi *e) {
    if (s->team && rows <= DCN_TEAM_MAX_ROWS && kern_packed_bytes(L) >= s->team_min_bytes)
        kteam_gemm(s->team, m->ks, rows, x, ldx, L, rg, n_rg, y, ldy, e);
    else
        m->ks->gemm(rows, x, ldx, L, rg, n_rg, y, ldy, e);
}

dcn_scratch *dcn_scratch_new(const dcn_model *m, size_t max_rows) {
    if (!max_rows || max_rows > (1u << 24)) return NULL;
    dcn_scratch *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    const dcn_info *in = &m->info;
    s->m = m;
    s->uid = m->uid;
    s->max_rows = max_rows;
    s->ldd = round_up(in->d, LD_ALIGN);
    s->ldh = round_up(m->max_h, LD_ALIGN);
    s->ldn = round_up(in->n_dense ? in->n_dense : 1, LD_ALIGN);
    s->ldo = round_up(m->max_out_pad, LD_ALIGN);
    s->ldk = round_up(in->experts * in->rank + 1, LD_ALIGN);
    size_t K = in->experts ? in->experts : 1;
    size_t floats = max_rows * (4 * s->ldd + 2 * s->ldh + s->ldk + round_up(K, LD_ALIGN) + LD_ALIGN + 2 * s->ldn + s->ldo);
    size_t nrg = in->n_dense + in->n_sparse + 1;
    size_t bytes = floats * sizeof(float) + 2 * nrg * sizeof(krange) + (max_rows + 2) * sizeof(uint32_t) + 64;
    s->mem = kern_alloc(bytes);
    if (!s->mem) {
        free(s);
        return NULL;
    }
    memset(s->mem, 0, round_up(bytes, 64)); /* pre-fault: no page fault on the hot path */
    float *p = s->mem;
#define TAKE(ptr, n) (ptr = p, p += (n))
    TAKE(s->x0, max_rows * s->ldd);
    TAKE(s->xa, max_rows * s->ldd);
    TAKE(s->xb, max_rows * s->ldd);
    TAKE(s->seg_x0, max_rows * s->ldd);
    TAKE(s->h0, max_rows * s->ldh);
    TAKE(s->h1, max_rows * s->ldh);
    TAKE(s->hc, max_rows * s->ldk);
    TAKE(s->gate, max_rows * round_up(K, LD_ALIGN));
    TAKE(s->gsum, max_rows * LD_ALIGN);
    TAKE(s->dn, max_rows * s->ldn);
    TAKE(s->seg_dn, max_rows * s->ldn);
    TAKE(s->seg_b, max_rows * s->ldo);
#undef TAKE
    s->rg_item = (krange *)(void *)p;
    s->rg_ctx = s->rg_item + nrg;
    s->cseg = (uint32_t *)(void *)(s->rg_ctx + nrg);
    /* Activation bytes of one row; chunks fill about CHUNK_BYTES of cache
     * (at least 16 rows, at most 256). */
    size_t row_bytes = (3 * s->ldd + 2 * s->ldh + s->ldk) * sizeof(float);
    size_t ch = CHUNK_BYTES / row_bytes;
    s->chunk_rows = ch < 16 ? 16 : ch > 256 ? 256 : ch;
    /* Each chunk streams every weight again: worth it only while the
     * weights stay in the last-level cache (measured: +20% on criteo-full
     * at 1,024 rows, -37% on dlrmv2's 64 MB in chunks of 16). */
    if (m->packed_bytes > CHUNK_MAX_WEIGHT_BYTES) s->chunk_rows = max_rows;
    s->team_min_bytes = dcn_team_min_bytes();
    const char *env = getenv("DCN_CHUNK_ROWS"); /* tests and tuning */
    if (env && atoi(env) > 0) s->chunk_rows = (size_t)atoi(env);
    return s;
}

void dcn_scratch_free(dcn_scratch *s) {
    if (!s) return;
    free(s->mem);
    free(s);
}

size_t dcn_scratch_rows(const dcn_scratch *s) { return s->max_rows; }
const dcn_model *dcn_scratch_model(const dcn_scratch *s) { return s->m; }

/* ------------------------------------------------------------ forward */

typedef struct plan {
    size_t n_rows, n_seg;
    const uint32_t *seg_rows;
    uint32_t one_seg[2];
    int bottom_shared;              /* every dense feature shared and a bottom MLP */
    size_t n_item, n_ctx;           /* ranges of x0 */
    krange all;
} plan;

static int dense_is_shared(const dcn_batch *b, size_t j) { return b->dense_shared && b->dense_shared[j]; }
static int sparse_is_shared(const dcn_batch *b, size_t f) { return b->sparse_shared && b->sparse_shared[f]; }

/* Checks the batch; returns 0 or DCN_EINVAL / DCN_ETOOBIG. */
static int check_batch(const dcn_model *m, const dcn_scratch *s, const dcn_batch *b, plan *p) {
    const dcn_info *in = &m->info;
    if (b->n_rows > s->max_rows) return DCN_ETOOBIG;
    p->n_rows = b->n_rows;
    if (b->seg_rows) {
        p->n_seg = b->n_segments;
        p->seg_rows = b->seg_rows;
        if (!p->n_seg || p->n_seg > b->n_rows + 1 || p->n_seg > s->max_rows || b->seg_rows[0] != 0 ||
            b->seg_rows[p->n_seg] != b->n_rows)
            return DCN_EINVAL;
        for (size_t i = 0; i < p->n_seg; i++)
            if (b->seg_rows[i + 1] < b->seg_rows[i]) return DCN_EINVAL;
    } else {
        p->n_seg = 1;
        p->one_seg[0] = 0;
        p->one_seg[1] = (uint32_t)b->n_rows;
        p->seg_rows = p->one_seg;
    }
    int any_shared = 0;
    for (size_t j = 0; j < in->n_dense; j++) any_shared |= dense_is_shared(b, j);
    if (in->n_dense && (!b->dense && !(b->seg_dense && any_shared))) return DCN_EINVAL;
    for (size_t j = 0; j < in->n_dense; j++)
        if (dense_is_shared(b, j) ? !b->seg_dense : !b->dense) return DCN_EINVAL;
    if (in->n_sparse && (!b->offsets || !b->ids)) return DCN_EINVAL;
    for (size_t f = 0; f < in->n_sparse; f++) {
        const dcn_sparse_spec *sp = &m->sparse[f];
        const uint32_t *off = b->offsets[f];
        const int64_t *ids = b->ids[f];
        size_t n = sparse_is_shared(b, f) ? p->n_seg : p->n_rows;
        if (!off) return DCN_EINVAL;
        for (size_t k = 0; k < n; k++) {
            if (off[k + 1] < off[k] || off[k + 1] - off[k] > sp->max_ids) return DCN_EINVAL;
            for (uint32_t i = off[k]; i < off[k + 1]; i++)
                if (ids[i] < -1 || ids[i] >= (int64_t)sp->vocab_size) return DCN_EINVAL;
        }
    }
    /* x0 ranges: item coordinates and shared ones, merged. */
    size_t ni = 0, nc = 0;
    krange *ri = s->rg_item, *rc = s->rg_ctx;
#define PUSH(shared, a, bnd)                                                          \
    do {                                                                              \
        krange *list = (shared) ? rc : ri;                                           \
        size_t *cnt = (shared) ? &nc : &ni;                                          \
        if (*cnt && list[*cnt - 1].k1 == (uint32_t)(a)) list[*cnt - 1].k1 = (uint32_t)(bnd); \
        else list[(*cnt)++] = (krange){(uint32_t)(a), (uint32_t)(bnd)};              \
    } while (0)
    p->bottom_shared = 0;
    if (in->n_bottom) {
        int all = 1;
        for (size_t j = 0; j < in->n_dense; j++) all &= dense_is_shared(b, j);
        p->bottom_shared = all;
        PUSH(all, 0, in->dense_dim);
    } else {
        for (size_t j = 0; j < in->n_dense; j++) PUSH(dense_is_shared(b, j), j, j + 1);
    }
    for (size_t f = 0; f < in->n_sparse; f++)
        PUSH(sparse_is_shared(b, f), m->sparse[f].x0_offset, m->sparse[f].x0_offset + m->sparse[f].dim);
#undef PUSH
    p->n_item = ni;
    p->n_ctx = nc;
    p->all = (krange){0, (uint32_t)in->d};
    return 0;
}

static float dense_tf(const dcn_dense_spec *s, float v) {
    if (isnan(v)) v = s->default_value;
    v = v < s->clip_min ? s->clip_min : v;
    v = v > s->clip_max ? s->clip_max : v;
    if (s->transform == DCN_TRANSFORM_LOG) {
        float a = v + s->log_shift;
        v = logf(a > s->log_floor ? a : s->log_floor);
    }
    return (v - s->mean) / s->std;
}

/* Writes feature f's pooled embedding for the ids [lo, hi) into dst. */
static void pool(const dcn_model *m, size_t f, const int64_t *ids, uint32_t lo, uint32_t hi, float *dst) {
    const dcn_sparse_spec *sp = &m->sparse[f];
    const table *t = &m->tab[f];
    const kern_set *ks = m->ks;
    memset(dst, 0, sp->dim * sizeof *dst);
    int64_t single;
    const int64_t *list = ids + lo;
    uint32_t n = hi - lo;
    if (n == 0) {
        single = sp->missing_row;
        list = &single;
        n = 1;
    }
    for (uint32_t i = 0; i < n; i++) {
        int64_t r = list[i];
        if (r < 0) continue;
        const uint8_t *row = t->w + (size_t)r * t->row_bytes;
        switch (sp->dtype) {
        case DCN_F32: ks->add_f32(dst, (const float *)(const void *)row, sp->dim); break;
        case DCN_F16: ks->add_f16(dst, (const uint16_t *)(const void *)row, sp->dim); break;
        case DCN_BF16: ks->add_bf16(dst, (const uint16_t *)(const void *)row, sp->dim); break;
        default: ks->add_i8(dst, (const int8_t *)row, t->scale[r], sp->dim); break;
        }
    }
    if (sp->pooling == DCN_POOL_MEAN && hi - lo > 1) {
        float inv = 1.0f / (float)(hi - lo);
        for (uint32_t k = 0; k < sp->dim; k++) dst[k] *= inv;
    }
}

/* Runs MLP layers [0, n) with ReLU on `rows` rows of x (ld ldx). The output
 * lands in out (ld ldout) if given, else in h0 or h1 alternately, the first
 * layer writing h1 if start is 1: returns where it landed. */
static const float *mlp(const dcn_model *md, dcn_scratch *s, const klinear *L, size_t n, size_t rows, const float *x,
                        size_t ldx, float *out, size_t ldout, int start) {
    const float *cur = x;
    size_t ldc = ldx;
    for (size_t j = 0; j < n; j++) {
        float *y = (j + 1 == n && out) ? out : ((j + (size_t)start) % 2 ? s->h1 : s->h0);
        size_t ldy = (j + 1 == n && out) ? ldout : s->ldh;
        krange all = {0, (uint32_t)L[j].in};
        kepi e = {.kind = KEPI_RELU, .bias = L[j].bias};
        gemm(md, s, rows, cur, ldc, &L[j], &all, 1, y, ldy, &e);
        cur = y;
        ldc = ldy;
    }
    return cur;
}

/* A layer that reads x0: y = epi(L x0). With shared features, each segment's
 * L[:, ctx] x0_ctx is computed once (from seg_x0) and folded into its bias;
 * the rows then only read their own coordinates. */
static void lin_x0(const dcn_model *m, dcn_scratch *s, const plan *p, const klinear *L, float *y, size_t ldy,
                   kepi e) {
    /* An INT8 layer quantizes whole rows (one scale each): splitting them
     * would make a row's score depend on what else shares its batch. */
    if (!p->n_ctx || L->wq) {
        e.bias = L->bias;
        gemm(m, s, p->n_rows, s->x0, s->ldd, L, &p->all, 1, y, ldy, &e);
        return;
    }
    kepi eb = {.kind = KEPI_BIAS, .bias = L->bias};
    gemm(m, s, p->n_seg, s->seg_x0, s->ldd, L, s->rg_ctx, p->n_ctx, s->seg_b, s->ldo, &eb);
    for (size_t g = 0; g < p->n_seg; g++) {
        size_t r0 = p->seg_rows[g], r1 = p->seg_rows[g + 1];
        if (r1 == r0) continue;
        kepi es = e;
        es.bias = s->seg_b + g * s->ldo;
        if (es.x0) es.x0 += r0 * es.ldx0;
        if (es.xl) es.xl += r0 * es.ldxl;
        if (es.bscale) es.bscale += r0;
        gemm(m, s, r1 - r0, s->x0 + r0 * s->ldd, s->ldd, L, s->rg_item, p->n_item, y + r0 * ldy, ldy, &es);
    }
}

/* Builds x0 for every row (and the shared coordinates per segment). */
static void build_x0(const dcn_model *m, dcn_scratch *s, const dcn_batch *b, const plan *p) {
    const dcn_info *in = &m->info;
    size_t nd = in->n_dense, ldd = s->ldd;
    /* Dense: transformed values per segment (shared) and per row. */
    if (nd) {
        float *sdst = in->n_bottom ? s->seg_dn : s->seg_x0;
        size_t lds = in->n_bottom ? s->ldn : ldd;
        for (size_t g = 0; g < p->n_seg; g++)
            for (size_t j = 0; j < nd; j++)
                if (dense_is_shared(b, j)) sdst[g * lds + j] = dense_tf(&m->dense[j], b->seg_dense[g * nd + j]);
        float *dst = in->n_bottom ? s->dn : s->x0;
        size_t ldr = in->n_bottom ? s->ldn : ldd;
        for (size_t g = 0; g < p->n_seg; g++)
            for (size_t r = p->seg_rows[g]; r < p->seg_rows[g + 1]; r++)
                for (size_t j = 0; j < nd; j++)
                    dst[r * ldr + j] = dense_is_shared(b, j) ? sdst[g * lds + j]
                                                             : dense_tf(&m->dense[j], b->dense[r * nd + j]);
        if (in->n_bottom) {
            if (p->bottom_shared) {
                mlp(m, s, m->bottom, in->n_bottom, p->n_seg, s->seg_dn, s->ldn, s->seg_x0, ldd, 0);
            } else {
                mlp(m, s, m->bottom, in->n_bottom, p->n_rows, s->dn, s->ldn, s->x0, ldd, 0);
            }
        }
    }
    /* Sparse: shared features once per segment. */
    for (size_t f = 0; f < in->n_sparse; f++)
        if (sparse_is_shared(b, f))
            for (size_t g = 0; g < p->n_seg; g++)
                pool(m, f, b->ids[f], b->offsets[f][g], b->offsets[f][g + 1],
                     s->seg_x0 + g * ldd + m->sparse[f].x0_offset);
    /* The rest row by row. Table rows are random reads from a large mapping:
     * the lookups of the row PREFETCH_ROWS ahead are requested while this
     * row is pooled, so a row's misses overlap each other. */
    for (size_t r = 0; r < p->n_rows; r++) {
        if (r + PREFETCH_ROWS < p->n_rows)
            for (size_t f = 0; f < in->n_sparse; f++) {
                if (sparse_is_shared(b, f)) continue;
                const table *t = &m->tab[f];
                const uint32_t *off = b->offsets[f];
                const int64_t *ids = b->ids[f];
                for (uint32_t i = off[r + PREFETCH_ROWS]; i < off[r + PREFETCH_ROWS + 1]; i++)
                    if (ids[i] >= 0)
                        for (size_t by = 0; by < t->row_bytes; by += 64)
                            __builtin_prefetch(t->w + (size_t)ids[i] * t->row_bytes + by);
            }
        for (size_t f = 0; f < in->n_sparse; f++)
            if (!sparse_is_shared(b, f))
                pool(m, f, b->ids[f], b->offsets[f][r], b->offsets[f][r + 1],
                     s->x0 + r * ldd + m->sparse[f].x0_offset);
    }
    /* Copy the shared coordinates into the rows of their segment. */
    for (size_t g = 0; g < p->n_seg && p->n_ctx; g++)
        for (size_t r = p->seg_rows[g]; r < p->seg_rows[g + 1]; r++)
            for (size_t i = 0; i < p->n_ctx; i++) {
                krange k = s->rg_ctx[i];
                memcpy(s->x0 + r * ldd + k.k0, s->seg_x0 + g * ldd + k.k0, (k.k1 - k.k0) * sizeof(float));
            }
}

/* Runs cross layer l on x (x0 for l = 0) into y. */
static void cross_layer(const dcn_model *m, dcn_scratch *s, const plan *p, size_t l, const float *x, float *y) {
    const dcn_info *in = &m->info;
    const xlayer *X = &m->cross[l];
    const kern_set *ks = m->ks;
    size_t n = p->n_rows, ldd = s->ldd, d = in->d;
    krange all_d = {0, (uint32_t)d};
    switch (in->cross_kind) {
    case DCN_CROSS_VECTOR:
        for (size_t r = 0; r < n; r++) {
            const float *xr = x + r * ldd, *x0r = s->x0 + r * ldd;
            float *yr = y + r * ldd, dot = 0.0f;
            for (size_t k = 0; k < d; k++) dot += xr[k] * X->w[k];
            for (size_t k = 0; k < d; k++) yr[k] = x0r[k] * dot + X->b[k] + xr[k];
        }
        return;
    case DCN_CROSS_FULL: {
        kepi e = {.kind = KEPI_CROSS, .bias = X->a.bias, .x0 = s->x0, .ldx0 = ldd, .xl = x, .ldxl = ldd};
        if (l == 0) lin_x0(m, s, p, &X->a, y, ldd, e);
        else gemm(m, s, n, x, ldd, &X->a, &all_d, 1, y, ldd, &e);
        return;
    }
    case DCN_CROSS_LOWRANK: {
        kepi ev = {.kind = KEPI_BIAS, .bias = X->a.bias};
        if (l == 0) lin_x0(m, s, p, &X->a, s->h0, s->ldh, ev);
        else gemm(m, s, n, x, ldd, &X->a, &all_d, 1, s->h0, s->ldh, &ev);
        krange all_r = {0, (uint32_t)in->rank};
        kepi e = {.kind = KEPI_CROSS, .bias = X->u.bias, .x0 = s->x0, .ldx0 = ldd, .xl = x, .ldxl = ldd};
        gemm(m, s, n, s->h0, s->ldh, &X->u, &all_r, 1, y, ldd, &e);
        return;
    }
    case DCN_CROSS_MIX: {
        size_t K = in->experts, r = in->rank, kr = K * r, ldg = round_up(K, LD_ALIGN);
        kepi ev = {.kind = KEPI_BIAS, .bias = X->a.bias};
        if (l == 0) lin_x0(m, s, p, &X->a, s->h0, s->ldh, ev);
        else gemm(m, s, n, x, ldd, &X->a, &all_d, 1, s->h0, s->ldh, &ev);
        /* Gates from the last K outputs. */
        for (size_t row = 0; row < n; row++) {
            float *g = s->gate + row * ldg, *sc = s->h0 + row * s->ldh + kr, sum = 0.0f;
            if (in->gate == DCN_GATE_CONSTANT) {
                for (size_t i = 0; i < K; i++) g[i] = 1.0f / (float)K;
                sum = 1.0f;
            } else if (in->gate == DCN_GATE_SIGMOID) {
                for (size_t i = 0; i < K; i++) sum += g[i] = 1.0f / (1.0f + expf(-sc[i]));
            } else {
                float mx = sc[0], z = 0.0f;
                for (size_t i = 1; i < K; i++) mx = sc[i] > mx ? sc[i] : mx;
                for (size_t i = 0; i < K; i++) z += g[i] = expf(sc[i] - mx);
                for (size_t i = 0; i < K; i++) g[i] /= z;
                sum = 1.0f;
            }
            s->gsum[row] = sum;
            ks->act(s->h0 + row * s->ldh, kr, (int)in->activation);
        }
        krange all_r = {0, (uint32_t)r};
        kepi ec = {.kind = KEPI_BIAS, .bias = X->c[0].bias}; /* C has no bias: zeros */
        for (size_t i = 0; i < K; i++) {
            ec.bias = X->c[i].bias;
            gemm(m, s, n, s->h0 + i * r, s->ldh, &X->c[i], &all_r, 1, s->hc + i * r, s->ldk, &ec);
        }
        for (size_t row = 0; row < n; row++) {
            float *hr = s->hc + row * s->ldk;
            const float *g = s->gate + row * ldg;
            ks->act(hr, kr, (int)in->activation);
            for (size_t i = 0; i < K; i++)
                for (size_t k = 0; k < r; k++) hr[i * r + k] *= g[i];
        }
        krange all_kr = {0, (uint32_t)kr};
        kepi e = {.kind = KEPI_CROSS, .bias = X->u.bias, .x0 = s->x0, .ldx0 = ldd, .xl = x, .ldxl = ldd,
                  .bscale = s->gsum};
        gemm(m, s, n, s->hc, s->ldk, &X->u, &all_kr, 1, y, ldd, &e);
        return;
    }
    }
}

/* Runs everything after x0 (cross network, deep network, logit) on the
 * rows of plan p, with s's buffers starting at its first row. */
static void forward_rows(const dcn_model *m, dcn_scratch *s, const plan *pp, float *scores, float *logits) {
    const plan p = *pp;
    const dcn_info *in = &m->info;
    size_t n = p.n_rows, ldd = s->ldd;
    const float *x = s->x0;
    for (size_t l = 0; l < in->cross_layers; l++) {
        float *y = (l % 2) ? s->xb : s->xa;
        cross_layer(m, s, &p, l, x, y);
        x = y;
    }
    const float *xl = x; /* x_L */

    const float *deep_out = NULL;
    size_t ld_deep = 0;
    if (in->n_deep) {
        /* The deep network reads x0 in parallel mode, and in stacked mode
         * when there is no cross layer: its first layer then shares. */
        int reads_x0 = in->combine == DCN_COMBINE_PARALLEL || in->cross_layers == 0;
        const float *src = reads_x0 ? s->x0 : xl;
        if (reads_x0) {
            kepi e = {.kind = KEPI_RELU};
            lin_x0(m, s, &p, &m->deep[0], s->h0, s->ldh, e);
            deep_out = in->n_deep > 1 ? mlp(m, s, m->deep + 1, in->n_deep - 1, n, s->h0, s->ldh, NULL, 0, 1) : s->h0;
        } else {
            deep_out = mlp(m, s, m->deep, in->n_deep, n, src, ldd, NULL, 0, 0);
        }
        ld_deep = s->ldh;
    }
    size_t dout = in->n_deep ? in->deep_sizes[in->n_deep - 1] : 0;
    if (in->combine == DCN_COMBINE_PARALLEL && !in->n_deep) { /* identity deep network */
        deep_out = s->x0;
        ld_deep = ldd;
        dout = in->d;
    }
    for (size_t r = 0; r < n; r++) {
        float z = m->logit_b;
        const float *w = m->logit_w;
        if (in->combine == DCN_COMBINE_PARALLEL || !deep_out) {
            const float *xr = xl + r * ldd;
            for (size_t k = 0; k < in->d; k++) z += w[k] * xr[k];
            w += in->d;
        }
        if (deep_out) {
            const float *hr = deep_out + r * ld_deep;
            for (size_t k = 0; k < dout; k++) z += w[k] * hr[k];
        }
        if (logits) logits[r] = z;
        scores[r] = 1.0f / (1.0f + expf(-z));
    }
}

int dcn_score(const dcn_model *m, dcn_scratch *s, const dcn_batch *b, float *scores, float *logits) {
    if (!m || !s || !b || !scores) return DCN_EINVAL;
    if (s->uid != m->uid) return DCN_EMODEL;
    plan p;
    int rc = check_batch(m, s, b, &p);
    if (rc) return rc;
    if (!p.n_rows) return 0;
    build_x0(m, s, b, &p);
    /* The layers run on chunks of rows small enough that their activations
     * (x0, x_l, x_l+1, hidden) stay in the core's cache while every weight
     * panel streams past them. A chunk is a view: the scratch's buffers
     * advanced to its first row, its segments clipped to it. */
    size_t ch = s->chunk_rows, g0 = 0;
    for (size_t c0 = 0; c0 < p.n_rows; c0 += ch) {
        size_t c1 = c0 + ch < p.n_rows ? c0 + ch : p.n_rows;
        while (p.seg_rows[g0 + 1] <= c0) g0++;
        size_t g1 = g0;
        while (g1 + 1 < p.n_seg && p.seg_rows[g1 + 1] < c1) g1++;
        plan q = p;
        q.n_rows = c1 - c0;
        q.n_seg = g1 - g0 + 1;
        for (size_t i = 0; i <= q.n_seg; i++) {
            size_t r = p.seg_rows[g0 + i];
            s->cseg[i] = (uint32_t)((r < c0 ? c0 : r > c1 ? c1 : r) - c0);
        }
        q.seg_rows = s->cseg;
        dcn_scratch v = *s;
        v.x0 += c0 * s->ldd;
        v.xa += c0 * s->ldd;
        v.xb += c0 * s->ldd;
        v.h0 += c0 * s->ldh;
        v.h1 += c0 * s->ldh;
        v.hc += c0 * s->ldk;
        v.gate += c0 * round_up(m->info.experts ? m->info.experts : 1, LD_ALIGN);
        v.gsum += c0;
        v.seg_x0 += g0 * s->ldd;
        forward_rows(m, &v, &q, scores + c0, logits ? logits + c0 : NULL);
    }
    return 0;
}

const char *dcn_kernels_name(void) { return kern_get()->name; }

const char *dcn_huge_pages(void) {
    static const char *const names[] = {"unknown", "always", "madvise", "never"};
    return names[kern_thp_host()];
}
