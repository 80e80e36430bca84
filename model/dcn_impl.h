/* dcn_impl.h — internal to the model library: the layout of a dcn_model and
 * what the files that build, read and score it share. Included only by
 * model/dcn.c (handle, checksum, accessors), model/load.c (dcn_open and the
 * validation), model/idmap.c (id mapping) and model/forward.c (scratch and
 * forward pass); callers, tests and tools go through model/dcn.h, where the
 * model stays opaque.
 *
 * DESIGN
 * - One owner for every field: load.c fills a dcn_model while dcn_open runs
 *   (nothing else sees it until then) and frees it in dcn__model_free; after
 *   that the model is read-only and shared, and only dcn.c touches `refs`.
 * - Names that cross files inside the library take the dcn__ prefix; the rest
 *   stays static in its file.
 */
#ifndef DCN_IMPL_H
#define DCN_IMPL_H

#include "model/dcn.h"
#include "model/gguf.h"
#include "model/kernels.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dcnserve reads little-endian model files in place and needs a little-endian host"
#endif

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

/* Writes the detail into err (gguf.h); every file here says `fail`. */
#define fail dcn__fail

/* Orders feat_refs by name (bytes, then length): the loader sorts by_name
 * with it and dcn_find_feature searches it. */
int dcn__cmp_ref(const void *a, const void *b);

/* Frees a model and everything it holds, whether dcn_open finished it or
 * failed half way (load.c); NULL is fine. */
void dcn__model_free(dcn_model *m);

#endif
