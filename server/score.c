/* score.c — building dcn_batch from request slices (see score.h).
 *
 * DESIGN: every staging buffer is sized once per (worker, model) for
 * max_batch_rows rows; only the id arrays grow (multi-hot counts are not
 * known in advance) and are kept for the next batch.
 */
#include <stdlib.h>
#include <string.h>

#include "model/dcn.h"
#include "server/score.h"

typedef struct idv {
    int64_t *v;
    size_t n, cap;
} idv;

typedef struct score_state {
    uint64_t model_id;          /* dcn_info.instance_id of the model it was built for */
    dcn_scratch *scratch;
    dcn_team *team;             /* or NULL */
    size_t cap, nd, ns;
    float *dense;               /* (cap, nd) */
    float *seg_dense;           /* (cap, nd): at most one segment per row */
    uint8_t *dshared, *sshared; /* (nd), (ns) */
    uint32_t *seg_rows;         /* (cap + 1) */
    uint32_t *off;              /* (ns, cap + 1) */
    const uint32_t **offp;      /* (ns) */
    idv *ids;                   /* (ns) */
    const int64_t **idp;        /* (ns) */
    float *scores, *logits;     /* (cap) */
} score_state;

void score_state_free(void *ctx, void *state)
{
    score_state *s = state;
    if (!s) return;
    dcn_scratch_free(s->scratch);
    dcn_team_free(s->team);
    free(s->dense);
    free(s->seg_dense);
    free(s->dshared);
    free(s->sshared);
    free(s->seg_rows);
    free(s->off);
    free(s->offp);
    if (s->ids)
        for (size_t f = 0; f < s->ns; f++) free(s->ids[f].v);
    free(s->ids);
    free(s->idp);
    free(s->scores);
    free(s->logits);
    free(s);
}

/* Builds a state for model m and batches of up to cap rows; NULL if out of
 * memory. */
static score_state *state_new(const dcn_model *m, size_t cap, size_t team_helpers)
{
    const dcn_info *in = dcn_model_info(m);
    score_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->model_id = dcn_model_info(m)->instance_id;
    s->cap = cap;
    s->nd = in->n_dense;
    s->ns = in->n_sparse;
    size_t nd1 = s->nd + 1, ns1 = s->ns + 1;
    s->scratch = dcn_scratch_new(m, cap);
    s->dense = malloc(cap * nd1 * sizeof(float));
    s->seg_dense = malloc(cap * nd1 * sizeof(float));
    s->dshared = malloc(nd1);
    s->sshared = malloc(ns1);
    s->seg_rows = malloc((cap + 1) * sizeof(uint32_t));
    s->off = malloc(ns1 * (cap + 1) * sizeof(uint32_t));
    s->offp = calloc(ns1, sizeof *s->offp);
    s->ids = calloc(ns1, sizeof *s->ids);
    s->idp = calloc(ns1, sizeof *s->idp);
    s->scores = malloc(cap * sizeof(float));
    s->logits = malloc(cap * sizeof(float));
    if (!s->scratch || !s->dense || !s->seg_dense || !s->dshared || !s->sshared || !s->seg_rows ||
        !s->off || !s->offp || !s->ids || !s->idp || !s->scores || !s->logits) {
        score_state_free(NULL, s);
        return NULL;
    }
    /* Without the threads the batch still runs, on this one. */
    if (team_helpers && in->packed_bytes >= dcn_team_min_bytes() && (s->team = dcn_team_new(team_helpers)))
        dcn_scratch_set_team(s->scratch, s->team);
    return s;
}

/* Appends n ids; returns 0 or -1. (n = 0 returns at once: v->v may still
 * be NULL, and memcpy with a NULL pointer is undefined even for 0 bytes.) */
static int idv_add(idv *v, const int64_t *src, size_t n)
{
    if (!n) return 0;
    if (v->n + n > v->cap) {
        size_t cap = v->cap ? v->cap : 1024;
        while (cap < v->n + n) cap *= 2;
        int64_t *nv = realloc(v->v, cap * sizeof *nv);
        if (!nv) return -1;
        v->v = nv;
        v->cap = cap;
    }
    memcpy(v->v + v->n, src, n * sizeof *src);
    v->n += n;
    return 0;
}

int score_batch(void *ctx, void **state, batch_work *w)
{
    const score_ctx *c = ctx;
    const dcn_model *m = w->key;
    score_state *s = *state;
    if (!s || s->model_id != dcn_model_info(m)->instance_id) {
        score_state_free(NULL, s);
        *state = s = state_new(m, c->max_batch_rows, c->team_helpers);
        if (!s) return RK_ENOMEM;
    }
    if (w->n_rows > s->cap) return DCN_ETOOBIG;
    size_t nd = s->nd, ns = s->ns, S = w->n_segs;

    memset(s->dshared, 1, nd);
    memset(s->sshared, 1, ns);
    for (size_t g = 0; g < S; g++) {
        const rk_request *rq = ((score_target *)w->segs[g].job->req)->rq;
        for (size_t j = 0; j < nd; j++) s->dshared[j] &= !rq->dense_per_row[j];
        for (size_t f = 0; f < ns; f++) s->sshared[f] &= !rq->sparse_per_row[f];
    }

    /* dense */
    size_t r = 0;
    s->seg_rows[0] = 0;
    for (size_t g = 0; g < S; g++) {
        const batch_seg *sg = &w->segs[g];
        const rk_request *rq = ((score_target *)sg->job->req)->rq;
        for (size_t j = 0; j < nd; j++) s->seg_dense[g * nd + j] = rq->ctx_dense[j];
        for (uint32_t k = 0; k < sg->n_rows; k++, r++) {
            size_t i = sg->row0 + k;
            const float *cv = rq->dense + i * nd;
            const uint8_t *given = rq->dense_given + i * nd;
            float *dst = s->dense + r * nd;
            for (size_t j = 0; j < nd; j++) dst[j] = given[j] ? cv[j] : rq->ctx_dense[j];
        }
        s->seg_rows[g + 1] = (uint32_t)r;
    }

    /* sparse */
    for (size_t f = 0; f < ns; f++) {
        uint32_t *off = s->off + f * (s->cap + 1);
        idv *v = &s->ids[f];
        size_t k = 0;
        v->n = 0;
        for (size_t g = 0; g < S; g++) {
            const batch_seg *sg = &w->segs[g];
            const rk_request *rq = ((score_target *)sg->job->req)->rq;
            const int64_t *ctx_ids = rq->ctx_ids + rq->ctx_off[f];
            size_t ctx_n = rq->ctx_off[f + 1] - rq->ctx_off[f];
            if (s->sshared[f]) {
                off[k++] = (uint32_t)v->n;
                if (idv_add(v, ctx_ids, ctx_n) < 0) return RK_ENOMEM;
                continue;
            }
            for (uint32_t q = 0; q < sg->n_rows; q++) {
                size_t i = sg->row0 + q;
                off[k++] = (uint32_t)v->n;
                if (rq->sparse_given[i * ns + f]) {
                    uint32_t a = rq->sp_off[i * ns + f], b = rq->sp_off[i * ns + f + 1];
                    if (idv_add(v, rq->sp_ids + a, b - a) < 0) return RK_ENOMEM;
                } else if (idv_add(v, ctx_ids, ctx_n) < 0) {
                    return RK_ENOMEM;
                }
            }
        }
        off[k] = (uint32_t)v->n;
        s->offp[f] = off;
        s->idp[f] = v->v ? v->v : (const int64_t *)s->off; /* never read when empty */
    }

    dcn_batch b = {
        .n_rows = w->n_rows,
        .n_segments = S,
        .seg_rows = s->seg_rows,
        .dense_shared = s->dshared,
        .sparse_shared = s->sshared,
        .dense = s->dense,
        .seg_dense = s->seg_dense,
        .offsets = s->offp,
        .ids = s->idp,
    };
    int rc = dcn_score(m, s->scratch, &b, s->scores, s->logits);
    if (rc < 0) return rc;

    r = 0;
    for (size_t g = 0; g < S; g++) {
        const batch_seg *sg = &w->segs[g];
        score_target *t = sg->job->req;
        memcpy(t->scores + sg->row0, s->scores + r, sg->n_rows * sizeof(float));
        memcpy(t->logits + sg->row0, s->logits + r, sg->n_rows * sizeof(float));
        r += sg->n_rows;
    }
    return 0;
}
