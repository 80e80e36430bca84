/* dcn.h — the DCN-V2 inference core: model files and the CPU engine.
 *
 * A library: no networking, no globals beyond the kernel table chosen once,
 * no threads unless the caller makes a dcn_team. Typical use:
 *
 *     char err[256];
 *     dcn_model *m;
 *     if (dcn_open("model.dcn", NULL, &m, err, sizeof err) < 0) { puts(err); ... }
 *     dcn_scratch *s = dcn_scratch_new(m, 1024);         // one per thread
 *     ... fill a dcn_batch (ids from dcn_map_str / dcn_map_int) ...
 *     dcn_score(m, s, &batch, scores, NULL);
 *     dcn_scratch_free(s);
 *     dcn_release(m);
 *
 * DESIGN
 * - A dcn_model is immutable once dcn_open returns it and reference-counted
 *   (atomic): any number of threads may score with it at once; the last
 *   dcn_release unmaps the file. Embedding tables are read in place from the
 *   read-only mapping; dense weights are repacked once at open.
 * - A dcn_scratch belongs to one thread and one model; it holds every buffer a
 *   batch of up to max_rows rows needs, so dcn_score allocates nothing and
 *   takes no lock.
 * - A dcn_team (optional) lends a scratch helper threads: each heavy layer
 *   of a batch is then split across them, by outputs where the threads
 *   should share the streaming of the weights (a few rows a thread on a
 *   model whose layers weigh megabytes), by rows or both otherwise
 *   (model/team.c, model/forward.c). Batches with rows enough for every
 *   thread on a model that fits the cache are better split by rows between
 *   threads with their own scratches, as the server does: dcn_team_pays
 *   tells the two cases apart.
 * - Request-context sharing: rows are grouped in segments (one per request);
 *   features marked shared take one value per segment. Their embeddings are
 *   looked up once per segment and their share of every layer that reads x0
 *   (or the dense features) directly is computed once per segment.
 * - Errors: 0 on success, a negative dcn_err otherwise, the detail written
 *   into a caller's buffer. Nothing here exits or aborts on bad input.
 * The file format is specified in model/FORMAT.md.
 */
#ifndef DCN_H
#define DCN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DCN_VERSION_STRING "0.1.0"
#define DCN_FORMAT_VERSION 1

/* One list of error codes feeds the enum and dcn_strerror. */
#define DCN_ERRNO_MAP(XX)                                        \
    XX(EIO, -1, "cannot read the model file")                    \
    XX(EFORMAT, -2, "malformed model file")                      \
    XX(EVERSION, -3, "unsupported model format version")         \
    XX(ENOMEM, -4, "out of memory")                              \
    XX(EINVAL, -5, "invalid argument")                           \
    XX(ETOOBIG, -6, "batch larger than the scratch allows")      \
    XX(ECHECKSUM, -7, "model file checksum mismatch")            \
    XX(EMODEL, -8, "scratch was made for another model")

typedef enum {
    DCN_OK = 0,
#define XX(name, code, msg) DCN_##name = code,
    DCN_ERRNO_MAP(XX)
#undef XX
} dcn_err;

/* Returns a static description of a dcn_err ("unknown error" otherwise). */
const char *dcn_strerror(int err);

typedef struct dcn_model dcn_model;
typedef struct dcn_scratch dcn_scratch;

typedef enum { DCN_CROSS_VECTOR, DCN_CROSS_FULL, DCN_CROSS_LOWRANK, DCN_CROSS_MIX } dcn_cross_kind;
typedef enum { DCN_ACT_IDENTITY, DCN_ACT_RELU, DCN_ACT_TANH, DCN_ACT_HARD_TANH, DCN_ACT_SIGMOID } dcn_act;
typedef enum { DCN_GATE_SOFTMAX, DCN_GATE_SIGMOID, DCN_GATE_CONSTANT } dcn_gate;
typedef enum { DCN_COMBINE_STACKED, DCN_COMBINE_PARALLEL, DCN_COMBINE_CROSS_ONLY } dcn_combine;
typedef enum { DCN_TRANSFORM_NONE, DCN_TRANSFORM_LOG } dcn_transform;
typedef enum { DCN_POOL_SUM, DCN_POOL_MEAN } dcn_pooling;
typedef enum { DCN_MAP_INDEX, DCN_MAP_HEX_MOD, DCN_MAP_HASH_MOD, DCN_MAP_VOCAB } dcn_mapping;
/* Tensor element types, numbered as GGUF numbers them. */
typedef enum { DCN_F32 = 0, DCN_F16 = 1, DCN_I8 = 24, DCN_I32 = 26, DCN_I64 = 27, DCN_BF16 = 30 } dcn_dtype;

typedef struct dcn_dense_spec {
    const char *name;
    float default_value;        /* raw value used when missing */
    float clip_min, clip_max;   /* applied first; may be infinite */
    dcn_transform transform;
    float log_shift, log_floor; /* log(max(v + shift, floor)) */
    float mean, std;            /* (v - mean) / std, applied last */
} dcn_dense_spec;

typedef struct dcn_sparse_spec {
    const char *name;
    uint64_t vocab_size;        /* rows of the table */
    uint32_t dim;               /* embedding size */
    uint32_t max_ids;           /* most ids one row may carry */
    dcn_pooling pooling;
    dcn_mapping mapping;
    uint64_t hash_seed;
    uint64_t oov_buckets;       /* vocab mapping only */
    int64_t missing_row;        /* -1: zero vector */
    int64_t unknown_row;        /* -1: zero vector */
    uint64_t vocab_terms;       /* terms of an explicit vocabulary (0 otherwise) */
    dcn_dtype dtype;            /* of the table */
    size_t x0_offset;           /* first coordinate of this feature in x0 */
} dcn_sparse_spec;

typedef struct dcn_info {
    const char *name, *version, *description; /* description may be "" */
    uint32_t format_version;
    size_t n_dense, n_sparse;
    size_t dense_dim;           /* coordinates of x0 before the embeddings */
    size_t d;                   /* dim(x0) */
    size_t n_bottom, n_deep;    /* layers */
    const uint32_t *bottom_sizes, *deep_sizes;
    dcn_cross_kind cross_kind;
    size_t cross_layers, rank, experts;
    dcn_act activation;
    dcn_gate gate;
    int gate_shared;
    dcn_combine combine;
    uint64_t file_bytes;
    int has_crc32;
    uint32_t crc32;             /* as stored in the file */
    double flops_per_row;       /* multiply-adds x 2 of one unshared row */
    size_t packed_bytes;        /* dense weights as the kernels read them: F16
                                   and BF16 tensors stay 16-bit; INT8 1 byte */
    size_t huge_bytes;          /* of the dense weights held (INT8 copies
                                   included), those asked into transparent
                                   huge pages: buffers of 2 MiB and more
                                   (see dcn_huge_pages) */
    int int8;                   /* opened with dcn_open_opts.int8 */
    int bf16;                   /* opened with dcn_open_opts.bf16 */
    size_t int8_smoothed;       /* weight tensors the file gives INT8 smoothing
                                   factors for (FORMAT.md §3; used under int8) */
    uint64_t instance_id;       /* unique per dcn_open in this process: tells
                                   models apart even when a freed handle's
                                   address is reused */
} dcn_info;

typedef struct dcn_open_opts {
    int verify_checksum;        /* read the data section and check its CRC-32 */
    int warmup;                 /* pre-fault every page of the mapping */
    int widen_weights;          /* keep F16/BF16 dense weights as float32
                                   (twice the bytes; for comparisons) */
    int int8;                   /* also hold every dense layer as INT8 (7-bit
                                   weights, a scale per output) and score
                                   with it: see PRECISION.md */
    int bf16;                   /* also hold every dense layer as BF16 and
                                   score with BF16 dot products (inputs of
                                   each layer rounded to BF16, float32 sums:
                                   vdpbf16ps where the CPU has it); not
                                   with int8. See PRECISION.md */
} dcn_open_opts;

/* Opens and validates a model file (FORMAT.md). On success stores a handle
 * with one reference in *out and returns 0; on failure returns a negative
 * dcn_err, writes a message naming the key or tensor into err, and leaves
 * *out NULL. opts may be NULL. */
int dcn_open(const char *path, const dcn_open_opts *opts, dcn_model **out, char *err, size_t errlen);
dcn_model *dcn_retain(dcn_model *m);
void dcn_release(dcn_model *m);                 /* NULL is fine */
/* Recomputes the data section's CRC-32 and compares it with the stored one:
 * 0 if equal or none is stored, DCN_ECHECKSUM otherwise. */
int dcn_verify(const dcn_model *m, char *err, size_t errlen);
void dcn_warmup(const dcn_model *m);            /* pre-faults every page */

const dcn_info *dcn_model_info(const dcn_model *m);
const dcn_dense_spec *dcn_dense(const dcn_model *m, size_t i);
const dcn_sparse_spec *dcn_sparse(const dcn_model *m, size_t i);

/* Looks a feature up by name: returns DCN_FEATURE_DENSE or DCN_FEATURE_SPARSE
 * and stores its index, or returns -1 if the model has no such feature. */
enum { DCN_FEATURE_DENSE = 1, DCN_FEATURE_SPARSE = 2 };
int dcn_find_feature(const dcn_model *m, const char *name, size_t len, size_t *index);

/* Maps one id of sparse feature f to a table row, as FORMAT.md §3 says:
 * returns the row, or -1 for a zero vector. Never fails. */
int64_t dcn_map_int(const dcn_model *m, size_t f, int64_t id);
int64_t dcn_map_str(const dcn_model *m, size_t f, const char *s, size_t len);
uint64_t dcn_hash64(uint64_t seed, const void *p, size_t len);

/* A batch of rows to score. Row r belongs to segment s when
 * seg_rows[s] <= r < seg_rows[s + 1]; a segment is one request, whose shared
 * (context) features have one value for all its rows.
 *
 * Dense feature j of row r is seg_dense[s * n_dense + j] if dense_shared[j],
 * else dense[r * n_dense + j]; NaN means missing. Sparse feature f of row r
 * has the ids ids[f][offsets[f][k] .. offsets[f][k + 1]) with k = s if
 * sparse_shared[f], else k = r (offsets[f] holds n_segments + 1 or
 * n_rows + 1 entries, non-decreasing). Ids are table rows from dcn_map_*
 * (-1: zero vector); no ids at all means missing. NULL shared masks mean
 * nothing is shared; seg_rows NULL means one segment of every row. */
typedef struct dcn_batch {
    size_t n_rows;
    size_t n_segments;
    const uint32_t *seg_rows;        /* (n_segments + 1) */
    const uint8_t *dense_shared;     /* (n_dense) or NULL */
    const uint8_t *sparse_shared;    /* (n_sparse) or NULL */
    const float *dense;              /* (n_rows, n_dense) */
    const float *seg_dense;          /* (n_segments, n_dense) */
    const uint32_t *const *offsets;  /* (n_sparse) arrays */
    const int64_t *const *ids;       /* (n_sparse) arrays */
} dcn_batch;

/* Per-thread working memory for batches of up to max_rows rows of model m. */
dcn_scratch *dcn_scratch_new(const dcn_model *m, size_t max_rows);
void dcn_scratch_free(dcn_scratch *s);
size_t dcn_scratch_rows(const dcn_scratch *s);
const dcn_model *dcn_scratch_model(const dcn_scratch *s);

/* helpers threads (1..255) that one scratch at a time may use; NULL if the
 * threads or memory cannot be had. dcn_team_free joins them. While a
 * dcn_score with the team runs, its helpers spin between layers rather
 * than sleep (a wake-up through the kernel can cost as much as a layer);
 * they sleep when it returns, or after DCN_TEAM_SPIN_US microseconds
 * without work (read here; default 200, 0: never spin). */
typedef struct dcn_team dcn_team;
dcn_team *dcn_team_new(size_t helpers);
void dcn_team_free(dcn_team *t); /* NULL is fine; not while a scratch scores with it */
/* Pieces of layers the team's helpers have run so far (0 for NULL): how
 * often it split one. Not while a scratch scores with it. */
size_t dcn_team_jobs(const dcn_team *t);
/* Attaches a team to a scratch (NULL detaches). dcn_score then splits
 * every layer whose work (bytes of weights plus arithmetic) reaches
 * dcn_team_min_bytes() across the team's threads, each layer as suits its
 * size and the batch's rows: by output columns (each thread streams its
 * share of the weights), by rows, or both; lighter layers and the rest of
 * the pass run on the calling thread. Scores are the same as without the
 * team, bit for bit. A team serves one scratch at a time. */
void dcn_scratch_set_team(dcn_scratch *s, dcn_team *t);
/* Lets dcn_score use at most `threads` of the team's threads, the caller's
 * included (0: all of them), e.g. only as many as there are idle cores. */
void dcn_scratch_set_team_threads(dcn_scratch *s, size_t threads);
/* 2 MiB (below that a layer streams from cache and the split costs more
 * than it saves), or DCN_TEAM_MIN_BYTES from the environment (tests). */
size_t dcn_team_min_bytes(void);
/* Whether a batch of `rows` rows for `threads` threads is better scored
 * with one dcn_score whose scratch has a team of threads - 1 helpers than
 * cut into `threads` batches of rows on scratches of their own: true when
 * some layer of m would then share its weights between threads (split by
 * columns), which a split by rows cannot do: every thread would stream
 * every weight. Batches of a few rows on a model with heavy layers, and
 * larger ones on many threads; never a model whose weights all fit a
 * last-level cache. */
int dcn_team_pays(const dcn_model *m, size_t rows, size_t threads);

/* Scores a batch: writes n_rows probabilities into scores and, if logits is
 * not NULL, the logits. Returns 0, or a negative dcn_err (an id out of
 * range, too many ids, offsets out of order, a batch over the scratch) with
 * nothing written. Allocates nothing. */
int dcn_score(const dcn_model *m, dcn_scratch *s, const dcn_batch *b, float *scores, float *logits);

/* The kernel set in use ("scalar", "avx2", "avx512"). It is chosen once, at
 * the first dcn_open, from the CPU; DCN_KERNELS=scalar|avx2|avx512 in the
 * environment forces one (an unsupported choice falls back to detection). */
const char *dcn_kernels_name(void);

/* The host's transparent huge page setting ("always", "madvise", "never",
 * or "unknown" where there is none to read): the engine asks for huge
 * pages for its buffers of 2 MiB and more (dcn_info.huge_bytes), and only
 * "always" and "madvise" grant them. */
const char *dcn_huge_pages(void);

#ifdef __cplusplus
}
#endif
#endif
