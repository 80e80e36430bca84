/* score.c — building dcn_batch from request slices, and the stash of
 * states prepared ahead (see score.h for the design).
 *
 * DESIGN: every staging buffer is sized once per (worker, model) for
 * max_batch_rows rows and written once when the state is built, like the
 * scratch, so a prepared state's first batch touches no fresh page; the id
 * arrays start with IDS_START ids each and grow when a batch needs more
 * (multi-hot counts are not known in advance), kept for the next batch.
 * The stash is a list of states for any of its live models, and the list
 * of those models, under one mutex with its two counters; states are built
 * and freed outside the mutex, which is held only to link, unlink and
 * count. A worker (score_worker: the pool slot's state pointer) holds a
 * few states in most-recently-used order and keeps the states it dropped
 * (`retired`) until score_after frees them.
 */
#include <pthread.h>
#include <stdatomic.h>
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
    struct score_state *next;   /* in the stash, or in a worker's retired list */
} score_state;

/* What a pool slot's state pointer holds: one worker's states, one per
 * model, the most recently used first. */
typedef struct score_worker {
    score_state *held[SCORE_MODELS_PER_WORKER];
    size_t n_held;
    unsigned forgets_seen;      /* the stash's `forgets` when it last pruned */
    score_state *retired;       /* replaced or pruned, freed by score_after */
} score_worker;

struct score_stash {
    pthread_mutex_t mu;         /* guards every field below but `forgets` */
    uint64_t *live;             /* (n_live) models states are prepared for */
    size_t n_live, cap_live;
    score_state *ready;         /* prepared, not taken yet, any live model */
    score_stats stats;
    atomic_uint forgets;        /* score_forget calls: workers prune on a change */
};

static void state_free(score_state *s)
{
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

static void free_list(score_state *s)
{
    while (s) {
        score_state *nx = s->next;
        state_free(s);
        s = nx;
    }
}

void score_state_free(void *ctx, void *state)
{
    score_worker *w = state;
    if (!w) return;
    for (size_t i = 0; i < w->n_held; i++) state_free(w->held[i]);
    free_list(w->retired);
    free(w);
}

/* Builds a state for model m and batches of up to cap rows, its memory
 * written once (pre-faulted); with a team of team_helpers threads when m
 * has layers heavy enough to share. NULL when out of memory. */
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
        state_free(s);
        return NULL;
    }
    for (size_t f = 0; f < s->ns; f++) {
        if (!(s->ids[f].v = malloc(IDS_START * sizeof(int64_t)))) {
            state_free(s);
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
 * be NULL, and memcpy from or to NULL is undefined even for 0 bytes.) */
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

/* Under the stash's lock. */
static int is_live(const score_stash *st, uint64_t id)
{
    for (size_t i = 0; i < st->n_live; i++)
        if (st->live[i] == id) return 1;
    return 0;
}

/* Moves the worker's states of models no longer live to its retired list
 * (freed by score_after); only when a score_forget ran since it last
 * looked: one atomic load a batch otherwise. */
static void prune(score_stash *st, score_worker *w)
{
    unsigned f = atomic_load_explicit(&st->forgets, memory_order_acquire);
    if (f == w->forgets_seen) return;
    w->forgets_seen = f;
    size_t k = 0;
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; i < w->n_held; i++) {
        score_state *s = w->held[i];
        if (is_live(st, s->model_id)) {
            w->held[k++] = s;
        } else {
            s->next = w->retired;
            w->retired = s;
        }
    }
    pthread_mutex_unlock(&st->mu);
    w->n_held = k;
}

/* Takes a prepared state for model id out of the stash, giving `evict`
 * (a state the worker drops, or NULL) back to it if its model is live;
 * under one lock. Returns the state taken or NULL; *kept says whether the
 * stash took evict. */
static score_state *stash_swap(score_stash *st, score_state *evict, uint64_t id, int *kept)
{
    *kept = 0;
    if (!st) return NULL;
    pthread_mutex_lock(&st->mu);
    score_state *s = NULL, **pp = &st->ready;
    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->model_id == id) {
            s = *pp;
            *pp = s->next;
            s->next = NULL;
            break;
        }
    }
    if (evict && is_live(st, evict->model_id)) {
        evict->next = st->ready;
        st->ready = evict;
        *kept = 1;
    }
    pthread_mutex_unlock(&st->mu);
    return s;
}

/* Makes w->held[0] a state for m: found in place (no lock), else taken from
 * the stash or built here (counted); a worker holding states for
 * SCORE_MODELS_PER_WORKER models drops the least recently used one (back
 * to the stash, or retired when its model is gone). */
static int state_for(const score_ctx *c, score_worker *w, const dcn_model *m)
{
    uint64_t id = dcn_model_info(m)->instance_id;
    if (c->stash) prune(c->stash, w);
    for (size_t i = 0; i < w->n_held; i++) {
        if (w->held[i]->model_id != id) continue;
        score_state *s = w->held[i];
        memmove(w->held + 1, w->held, i * sizeof *w->held);
        w->held[0] = s;
        return 0;
    }
    score_state *evict = w->n_held == SCORE_MODELS_PER_WORKER ? w->held[w->n_held - 1] : NULL;
    int kept = 0;
    score_state *ns = stash_swap(c->stash, evict, id, &kept);
    if (evict) {
        w->n_held--;
        if (!kept) {
            evict->next = w->retired;
            w->retired = evict;
        }
    }
    if (!ns) {
        if (!(ns = state_new(m, c->max_batch_rows, c->team_helpers))) return RK_ENOMEM;
        if (c->stash) {
            pthread_mutex_lock(&c->stash->mu);
            c->stash->stats.built_on_request++;
            pthread_mutex_unlock(&c->stash->mu);
        }
    }
    memmove(w->held + 1, w->held, w->n_held * sizeof *w->held);
    w->held[0] = ns;
    w->n_held++;
    return 0;
}

void score_after(void *ctx, void **state)
{
    score_worker *w = *state;
    if (w && w->retired) {
        free_list(w->retired);
        w->retired = NULL;
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
    atomic_init(&st->forgets, 0);
    c->stash = st;
    return 0;
}

void score_stash_destroy(score_ctx *c)
{
    score_stash *st = c->stash;
    if (!st) return;
    free_list(st->ready);
    free(st->live);
    pthread_mutex_destroy(&st->mu);
    free(st);
    c->stash = NULL;
}

/* Gives the heap's free pages back to the OS. The states a reload replaced
 * are large (scratch, staging) and freed in pieces, which glibc keeps in its
 * arenas: without a trim the process's resident memory only grows across
 * reloads. */
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
    uint64_t id = dcn_model_info(m)->instance_id;
    /* room in the live list first: nothing to undo after the states */
    pthread_mutex_lock(&st->mu);
    int room = 1;
    if (!is_live(st, id) && st->n_live == st->cap_live) {
        size_t cap = st->cap_live ? 2 * st->cap_live : 4;
        uint64_t *nl = realloc(st->live, cap * sizeof *nl);
        if (nl) {
            st->live = nl;
            st->cap_live = cap;
        } else {
            room = 0;
        }
    }
    pthread_mutex_unlock(&st->mu);
    if (!room) return RK_ENOMEM;
    /* built outside the lock: workers keep taking states meanwhile */
    score_state *list = NULL, *last = NULL;
    for (size_t i = 0; i < n; i++) {
        score_state *s = state_new(m, c->max_batch_rows, c->team_helpers);
        if (!s) {
            free_list(list);
            return RK_ENOMEM;
        }
        if (!last) last = s;
        s->next = list;
        list = s;
    }
    pthread_mutex_lock(&st->mu);
    if (!is_live(st, id)) st->live[st->n_live++] = id;
    if (last) {
        last->next = st->ready;
        st->ready = list;
    }
    st->stats.prepared += n;
    pthread_mutex_unlock(&st->mu);
    return 0;
}

void score_forget(score_ctx *c, const dcn_model *m)
{
    score_stash *st = c->stash;
    if (!st) return;
    uint64_t id = dcn_model_info(m)->instance_id;
    score_state *gone = NULL;
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; i < st->n_live; i++) {
        if (st->live[i] != id) continue;
        st->live[i] = st->live[--st->n_live];
        break;
    }
    for (score_state **pp = &st->ready; *pp;) {
        score_state *s = *pp;
        if (s->model_id == id) {
            *pp = s->next;
            s->next = gone;
            gone = s;
        } else {
            pp = &s->next;
        }
    }
    atomic_fetch_add_explicit(&st->forgets, 1, memory_order_release);
    pthread_mutex_unlock(&st->mu);
    free_list(gone);
    trim_heap();
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
    score_worker *wk = *state;
    if (!wk && !(wk = *state = calloc(1, sizeof *wk))) return RK_ENOMEM;
    int rc = state_for(c, wk, m);
    if (rc < 0) return rc;
    score_state *s = wk->held[0];
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
