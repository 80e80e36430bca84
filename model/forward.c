/* forward.c — the scratch and the forward pass: dcn_score over a batch.
 *
 * DESIGN
 * - A dcn_scratch is one allocation cut into every buffer a batch of up to
 *   max_rows rows needs, pre-faulted (huge pages from 2 MiB, kern_alloc):
 *   dcn_score allocates nothing and takes no lock. It belongs to one thread.
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
 * - Every GEMM goes through gemm(): with a dcn_team on the scratch, each
 *   layer whose work (weights streamed, arithmetic) reaches
 *   dcn_team_min_bytes() is split across the team, its split chosen for
 *   that layer and that many rows (plan_split): output panels shared when
 *   the weights dominate, rows in groups when the activations do, or a grid
 *   of both. The rest of the pass (gathers, gates, logit) stays on the
 *   calling thread. Row groups keep to the kernels' blocked path, so a
 *   row's score does not depend on the split (team.c).
 */
#include "model/dcn_impl.h"
#include "model/team.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LD_ALIGN 32 /* row strides of scratch buffers, in floats */
#define PREFETCH_ROWS 2 /* embedding rows fetched ahead while gathering */
#ifndef CHUNK_BYTES
#define CHUNK_BYTES (384u << 10) /* activations of a chunk of rows: about an L2 */
#endif
#define CHUNK_MAX_WEIGHT_BYTES (8u << 20) /* chunk only models whose weights fit a last-level cache */

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

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
    size_t team_threads;            /* of the team's, at most (0: all): dcn_scratch_set_team_threads */
    size_t team_min_bytes;          /* dcn_team_min_bytes() */
    size_t grid_rows, grid_cols;    /* a split forced by DCN_TEAM_GRID (tests), or 0 */
    size_t wake_rows, wake_width;   /* wake_team's last plan: for these rows and threads, */
    int wake;                       /* whether some layer splits */
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

size_t dcn_team_jobs(const dcn_team *t) { return t ? kteam_jobs(t->t) : 0; }

size_t dcn_team_min_bytes(void) {
    const char *env = getenv("DCN_TEAM_MIN_BYTES");
    return env && *env ? (size_t)strtoull(env, NULL, 10) : (size_t)2 << 20;
}

void dcn_scratch_set_team_threads(dcn_scratch *s, size_t threads) { s->team_threads = threads; }

/* The cost model of plan_split, in bytes one core streams from memory in
 * the same time: a core does about SPLIT_FLOPS_PER_BYTE flops while it
 * streams a byte; all cores together stream about SPLIT_BW_CORES times
 * what one does; a core keeps a share of weights up to SPLIT_CACHE_BYTES
 * in its cache from one block of rows to the next; streaming and
 * arithmetic overlap; waking a helper costs what streaming
 * dcn_team_min_bytes() / SPLIT_HANDOFF_DIV bytes does (so the tests' 0
 * makes every split free). Estimates: figures on a 2-core machine agree
 * (bench/README.md); many-core machines are still to be measured. */
#define SPLIT_FLOPS_PER_BYTE 4
#define SPLIT_BW_CORES 4
#define SPLIT_CACHE_BYTES ((size_t)1 << 20)
#define SPLIT_HANDOFF_DIV 32

/* How a GEMM of `rows` rows through L is split among at most `threads`
 * threads: rgroups groups of rows times cgroups shares of panels (1 x 1:
 * not split). A layer whose work (its weights' bytes plus its flops in
 * bytes) is under min_bytes is not split; otherwise the grid whose slowest
 * thread finishes first by the model above: it streams its share of the
 * weights (again for every block of mc rows unless the share fits its
 * cache; not at all when the model's weights all stay in the last-level
 * cache, `cached`) and its rows of input, and does its share of the
 * arithmetic. A row group never drops below the kernels' mr rows unless
 * the whole batch has fewer (then only panels are shared), so that the
 * split changes no result. */
static void plan_split(const kern_set *ks, size_t threads, size_t min_bytes, int cached, size_t rows,
                       const klinear *L, size_t *rgroups, size_t *cgroups) {
    *rgroups = *cgroups = 1;
    if (threads < 2 || !rows) return;
    double w = (double)(L->wq ? kern_i8_bytes(L) : L->wbf ? kern_bf16_bytes(L) : kern_packed_bytes(L));
    double x = (double)rows * (double)L->in * sizeof(float);
    double c = 2.0 * (double)rows * (double)L->in * (double)L->out_pad / SPLIT_FLOPS_PER_BYTE;
    double h = (double)min_bytes / SPLIT_HANDOFF_DIV;
    if (w + c < (double)min_bytes) return;
    size_t panels = L->out_pad / L->nr, mr = ks->mr ? ks->mr : 1;
    double best = -1.0;
    for (size_t cg = 1; cg <= threads && cg <= panels; cg++)
        for (size_t rgs = 1; rgs * cg <= threads && rgs <= rows; rgs++) {
            if (rgs > 1 && rows / rgs < mr) break;
            size_t n = rgs * cg, grp = (rows + rgs - 1) / rgs;
            double share = cached ? 0.0 : w / (double)cg;
            double passes = ks->mc && share > (double)SPLIT_CACHE_BYTES ? (double)((grp + ks->mc - 1) / ks->mc) : 1.0;
            double mine = share * passes + x / (double)rgs, all = mine * (double)n / SPLIT_BW_CORES;
            double mem = mine > all ? mine : all, arith = c / (double)n;
            double cost = (mem > arith ? mem : arith) + h * (double)(n - 1);
            if (best < 0 || cost < best) {
                best = cost;
                *rgroups = rgs;
                *cgroups = cg;
            }
        }
}

/* The threads this scratch's team may use now: its own, within the limit. */
static size_t team_width(const dcn_scratch *s) {
    size_t n = kteam_threads(s->team);
    return s->team_threads && s->team_threads < n ? s->team_threads : n;
}

/* A forced grid (DCN_TEAM_GRID) fitted to the rows and the kernels' mr. */
static void forced_split(const kern_set *ks, const dcn_scratch *s, size_t rows, size_t *rgroups, size_t *cgroups) {
    size_t mr = ks->mr ? ks->mr : 1, rgs = s->grid_rows ? s->grid_rows : 1;
    if (rows < mr) rgs = 1;
    while (rgs > 1 && rows / rgs < mr) rgs--;
    *rgroups = rgs;
    *cgroups = s->grid_cols ? s->grid_cols : 1;
}

/* Every GEMM of the forward pass: with a team, split as plan_split says
 * (or DCN_TEAM_GRID forces) across it (team.c); else on this thread. */
static void gemm(const dcn_model *m, const dcn_scratch *s, size_t rows, const float *x, size_t ldx,
                 const klinear *L, const krange *rg, size_t n_rg, float *y, size_t ldy, const kepi *e) {
    size_t rgs = 1, cgs = 1;
    if (s->team && s->grid_rows) forced_split(m->ks, s, rows, &rgs, &cgs);
    else if (s->team)
        plan_split(m->ks, team_width(s), s->team_min_bytes, m->packed_bytes <= CHUNK_MAX_WEIGHT_BYTES, rows, L, &rgs,
                   &cgs);
    if (rgs * cgs > 1)
        kteam_gemm_grid(s->team, m->ks, rgs, cgs, rows, x, ldx, L, rg, n_rg, y, ldy, e);
    else
        m->ks->gemm(rows, x, ldx, L, rg, n_rg, y, ldy, e);
}

/* Whether plan_split splits some layer of m run on `rows` rows with
 * `threads` threads: by its panels if panels_only, else in any way. */
static int some_split(const dcn_model *m, size_t threads, size_t min_bytes, int cached, size_t rows, int panels_only) {
    const dcn_info *in = &m->info;
    size_t rgs, cgs;
#define SPLITS(L)                                                                                  \
    do {                                                                                           \
        plan_split(m->ks, threads, min_bytes, cached, rows, (L), &rgs, &cgs);                      \
        if (panels_only ? cgs > 1 : rgs * cgs > 1) return 1;                                       \
    } while (0)
    for (size_t j = 0; j < in->n_bottom; j++) SPLITS(&m->bottom[j]);
    for (size_t l = 0; l < in->cross_layers && in->cross_kind != DCN_CROSS_VECTOR; l++) {
        SPLITS(&m->cross[l].a);
        if (m->cross[l].u.in) SPLITS(&m->cross[l].u);
        for (size_t i = 0; m->cross[l].c && i < in->experts; i++) SPLITS(&m->cross[l].c[i]);
    }
    for (size_t j = 0; j < in->n_deep; j++) SPLITS(&m->deep[j]);
#undef SPLITS
    return 0;
}

/* Whether some layer of m, run on `rows` rows with `threads` threads,
 * splits its panels (see dcn.h); never while all the weights stay in the
 * last-level cache: there is no stream to share then. */
int dcn_team_pays(const dcn_model *m, size_t rows, size_t threads) {
    if (m->packed_bytes <= CHUNK_MAX_WEIGHT_BYTES) return 0;
    return some_split(m, threads, dcn_team_min_bytes(), 0, rows, 1);
}

/* Wakes the helpers this batch's split layers will use before x0 is
 * built, so that their wake-up (tens of microseconds on some machines)
 * overlaps the gathers instead of delaying the first split layer
 * (team.c). The plan is kept for the last rows and width asked: planning
 * every layer costs about a microsecond. */
static void wake_team(const dcn_model *m, dcn_scratch *s, size_t rows) {
    size_t w = team_width(s);
    if (w < 2) return;
    if (rows > s->chunk_rows) rows = s->chunk_rows;
    if (s->wake_rows != rows || s->wake_width != w) {
        s->wake_rows = rows;
        s->wake_width = w;
        s->wake = s->grid_rows ||
                  some_split(m, w, s->team_min_bytes, m->packed_bytes <= CHUNK_MAX_WEIGHT_BYTES, rows, 0);
    }
    if (s->wake) kteam_wake(s->team, w - 1);
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
    const char *grid = getenv("DCN_TEAM_GRID"); /* tests: "RxC", every layer split so */
    unsigned gr, gc;
    if (grid && sscanf(grid, "%ux%u", &gr, &gc) == 2 && gr >= 1 && gc >= 1 && gr <= 256 && gc <= 256) {
        s->grid_rows = gr;
        s->grid_cols = gc;
    }
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
     * would make a row's score depend on what else shares its batch. A
     * BF16 layer's kernels sum whole rows in one order too. */
    if (!p->n_ctx || L->wq || L->wbf) {
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
    if (s->team) wake_team(m, s, p.n_rows);
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
    kteam_rest(s->team); /* the helpers sleep until the next batch */
    return 0;
}
