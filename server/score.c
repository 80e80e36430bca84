/* score.c — building dcn_batch from request slices, and the stash of
 * states prepared ahead (see score.h for the design).
 *
 * DESIGN: every staging buffer is sized once per (worker, model) for
 * max_batch_rows rows and written once when the state is built, like the
 * scratch, so a prepared state's first batch touches no fresh page; the id
 * arrays start with IDS_START ids each and grow when a batch needs more
 * (multi-hot counts are not known in advance), kept for the next batch.
 * The stash is a list of states for one model under one mutex, with its
 * two counters; states are built and freed outside the mutex, which is
 * held only to link, unlink and count. A worker's state keeps the state it
 * replaced (`retired`) until score_after frees it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__ /* defined by the headers above */
#include <malloc.h>
#endif

#include "model/dcn.h"
#include "server/pool.h"
#include "server/score.h"

#define IDS_START 1024 /* ids per sparse feature in a new state */

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
    struct score_state *next;   /* in the stash */
    struct score_state *retired; /* the state this one replaced, freed by score_after */
} score_state;

struct score_stash {
    pthread_mutex_t mu;         /* guards every field below */
    uint64_t model_id;          /* the model of every state in `ready` */
    score_state *ready;         /* prepared, not taken yet */
    score_stats stats;
};

void score_state_free(void *ctx, void *state)
{
    score_state *s = state;
    if (!s) return;
    score_state_free(ctx, s->retired); /* never more than one deep: see state_for */
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

/* Builds a state for model m and batches of up to cap rows, its memory
 * written once (pre-faulted); NULL if out of memory. */
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
    for (size_t f = 0; f < s->ns; f++) {
        if (!(s->ids[f].v = malloc(IDS_START * sizeof(int64_t)))) {
            score_state_free(NULL, s);
            return NULL;
        }
        s->ids[f].cap = IDS_START;
        memset(s->ids[f].v, 0, IDS_START * sizeof(int64_t));
    }
    memset(s->dense, 0, cap * nd1 * sizeof(float));
    memset(s->seg_dense, 0, cap * nd1 * sizeof(float));
    memset(s->seg_rows, 0, (cap + 1) * sizeof(uint32_t));
    memset(s->off, 0, ns1 * (cap + 1) * sizeof(uint32_t));
    memset(s->scores, 0, cap * sizeof(float));
    memset(s->logits, 0, cap * sizeof(float));
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
        size_t cap = v->cap ? v->cap : IDS_START;
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

/* Under the stash's lock: gives `old` back to the stash if it is for the
 * stash's model (a worker that took the new model's state and then got a
 * batch of the old model, decoded before the swap, returns it for its next
 * batch rather than freeing it), then unlinks a state for the model
 * model_id. Returns that state (the caller owns it) or NULL; *returned says
 * whether old went to the stash (the caller no longer owns it). */
static score_state *stash_swap(score_stash *st, score_state *old, uint64_t model_id, int *returned)
{
    *returned = 0;
    if (!st) return NULL;
    score_state *s = NULL;
    pthread_mutex_lock(&st->mu);
    if (old && old->model_id == st->model_id) {
        old->next = st->ready;
        st->ready = old;
        *returned = 1;
    } else if (st->ready && st->model_id == model_id) {
        s = st->ready;
        st->ready = s->next;
        s->next = NULL;
    }
    pthread_mutex_unlock(&st->mu);
    return s;
}

static void free_list(score_state *s)
{
    while (s) {
        score_state *nx = s->next;
        score_state_free(NULL, s);
        s = nx;
    }
}

/* Gives *state a state for m: the one there if it matches (no lock), else
 * a prepared one, else a new one. Returns 0 or RK_ENOMEM (*state is then
 * NULL). A prepared state keeps the one it replaces in `retired`, for
 * score_after to free once the batch is back (freeing a scratch and joining
 * a team took 0.01 to 2 ms); a new one is built only after the old one is
 * freed (or given back), so that a worker never holds two scratches it
 * built. */
static int state_for(const score_ctx *c, void **state, const dcn_model *m)
{
    score_state *s = *state;
    uint64_t id = dcn_model_info(m)->instance_id;
    if (s && s->model_id == id) return 0;
    if (s && s->retired) { /* only without score_after: keep one at most */
        score_state_free(NULL, s->retired);
        s->retired = NULL;
    }
    int returned;
    score_state *ns = stash_swap(c->stash, s, id, &returned);
    if (returned) s = NULL;
    if (ns) {
        ns->retired = s;
        *state = ns;
        return 0;
    }
    score_state_free(NULL, s);
    *state = NULL;
    if (!(ns = state_new(m, c->max_batch_rows, c->team_helpers))) return RK_ENOMEM;
    if (c->stash) {
        pthread_mutex_lock(&c->stash->mu);
        c->stash->stats.built_on_request++;
        pthread_mutex_unlock(&c->stash->mu);
    }
    *state = ns;
    return 0;
}

void score_after(void *ctx, void **state)
{
    score_state *s = *state;
    if (s && s->retired) {
        score_state_free(ctx, s->retired);
        s->retired = NULL;
    }
}

int score_stash_init(score_ctx *c)
{
    score_stash *st = calloc(1, sizeof *st);
    if (!st) return RK_ENOMEM;
    if (pthread_mutex_init(&st->mu, NULL) != 0) {
        free(st);
        return RK_ENOMEM;
    }
    c->stash = st;
    return 0;
}

void score_stash_destroy(score_ctx *c)
{
    score_stash *st = c->stash;
    if (!st) return;
    free_list(st->ready);
    pthread_mutex_destroy(&st->mu);
    free(st);
    c->stash = NULL;
}

/* Gives the heap's free pages back to the OS. The states a reload replaced
 * were allocated on the thread that prepared them and freed by the workers
 * after the swap, in the middle of its heap, while the next ones already
 * lived elsewhere: glibc keeps such freed pages resident (it trims only the
 * top of a heap), and with libuv's threadpool spreading reloads over
 * several arenas, resident memory climbed by a few sets of states over the
 * first tens of reloads (measured: +14 MB with the default model, 2
 * workers). Called after a prepare, off every request path (0.2 to 1 ms,
 * each arena locked in turn). */
static void trim_heap(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

int score_prepare(score_ctx *c, const dcn_model *m, size_t n)
{
    score_stash *st = c->stash;
    if (!st) return RK_EINTERNAL;
    /* built outside the lock: workers keep taking states meanwhile */
    score_state *list = NULL;
    for (size_t i = 0; i < n; i++) {
        score_state *s = state_new(m, c->max_batch_rows, c->team_helpers);
        if (!s) {
            free_list(list);
            return RK_ENOMEM;
        }
        s->next = list;
        list = s;
    }
    pthread_mutex_lock(&st->mu);
    score_state *old = st->ready;
    st->ready = list;
    st->model_id = dcn_model_info(m)->instance_id;
    st->stats.prepared += n;
    pthread_mutex_unlock(&st->mu);
    free_list(old);
    trim_heap();
    return 0;
}

score_stats score_get_stats(score_ctx *c)
{
    score_stats r = {0};
    if (!c->stash) return r;
    pthread_mutex_lock(&c->stash->mu);
    r = c->stash->stats;
    pthread_mutex_unlock(&c->stash->mu);
    return r;
}

int score_batch(void *ctx, void **state, batch_work *w)
{
    const score_ctx *c = ctx;
    const dcn_model *m = w->key;
    int rc = state_for(c, state, m);
    if (rc < 0) return rc;
    score_state *s = *state;
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
    /* The team's helpers stand in for idle workers only: this worker's
     * share of those waiting for work now, so that a loaded server runs
     * about one thread a core. */
    if (s->team) dcn_scratch_set_team_threads(s->scratch, 1 + pool_spare_workers());
    rc = dcn_score(m, s->scratch, &b, s->scores, s->logits);
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
