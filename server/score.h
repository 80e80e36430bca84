/* score.h — the pool's scoring callback: turns a batch of request slices
 * into one dcn_batch and runs dcn_score; and the stash of worker states
 * prepared ahead, so that no request pays for building one.
 *
 * DESIGN
 * - Runs on worker threads. Reads the requests (immutable once queued),
 *   writes only its own slice of each request's score array (slices of one
 *   request never overlap) and its own score_state.
 * - Context sharing: a feature is shared in the batch when no candidate of
 *   any request in the batch gives it; then each segment (request slice)
 *   contributes its context value once. Otherwise every row gets the
 *   candidate's value where given and its request's context value elsewhere.
 * - A worker's state pointer holds its states (scratch and staging
 *   buffers), one per model, for up to SCORE_MODELS_PER_WORKER models, the
 *   most recently used first: a server serving several models or versions
 *   keeps each worker's state for each of them, and a batch of any of them
 *   finds its state without a lock. A batch for a model the worker holds
 *   no state for takes one (first batch after start, after a version was
 *   loaded, or a model beyond the worker's last few).
 * - Prepared states: building a state costs allocation, first-touch page
 *   faults (the scratch is pre-faulted on purpose) and, for big models,
 *   thread creation: about 1.5 ms on the default model against ~0.1 ms for
 *   a batch. score_prepare builds them off the request path (the server
 *   calls it at start-up before it listens, and on the loading thread for
 *   each new model or version after it loaded and before it is served)
 *   into the ctx's stash, one per worker, and marks the model live. A
 *   worker that needs a state takes one from the stash under the stash's
 *   mutex and builds one itself only if none is left for that model
 *   (counted: built_on_request). A worker that drops a state (it holds
 *   states for SCORE_MODELS_PER_WORKER models already) gives it back to
 *   the stash if its model is still live, so other workers find it.
 * - Unloading: score_forget(m) marks m no longer live and frees its states
 *   in the stash; each worker notices at its next batch (one atomic load:
 *   the stash counts forgets) and retires the states it holds for models
 *   no longer live. A request decoded against a model just forgotten may
 *   still come (a reload's old model: its in-flight requests): its worker
 *   builds a state on the request path (the only case left, counted) and
 *   retires it at its next batch after another forget, or when it is the
 *   least recently used.
 * - Memory: each live model costs one state per worker (its scratch sized
 *   for max_batch_rows, plus a team's threads on heavy models), so a
 *   server with k versions loaded holds k times the scratch of one. From a
 *   reload's prepare until the old model is forgotten both exist, as both
 *   models' mappings do until the old one's last request is answered. A
 *   worker frees the states it retired in score_after, once the batch is
 *   back (pool.h): freeing a scratch and joining a team cost up to ~2 ms on
 *   a big model, which would otherwise fall on that batch.
 * - Batches of a few rows on a model with heavy layers are bound by the
 *   bytes of weights they stream: each worker's scratch then has a dcn_team
 *   of team_helpers threads that share those layers by columns, rows or
 *   both, as the engine plans each layer (made with the state, only for
 *   such models; they sleep otherwise). A batch uses only as many of them
 *   as its worker's share of the idle workers (pool_spare_workers): a
 *   single request on an idle server uses every core, a loaded server
 *   about one thread a core. A prepared
 *   state's team is created by the preparing thread and used by the worker
 *   that takes it: the stash's mutex orders the hand-over.
 * - Ownership: the stash owns its states until a worker takes one; then the
 *   worker's pool slot owns it until it is dropped (given back to the stash
 *   if its model is live, else retired and freed by score_after) or the
 *   worker exits (score_state_free). The score_ctx (and its stash) belongs
 *   to whoever made the pool and outlives it.
 */
#ifndef SRV_SCORE_H
#define SRV_SCORE_H

#include "proto/rk.h"
#include "server/batch.h"

/* What a batch_job's req points to. */
typedef struct score_target {
    const rk_request *rq;
    float *scores;              /* (rq->n_cands) */
    float *logits;              /* (rq->n_cands) */
} score_target;

typedef struct score_stash score_stash;

/* Models a worker keeps a state for at once (least recently used dropped). */
#ifndef SCORE_MODELS_PER_WORKER
#define SCORE_MODELS_PER_WORKER 4
#endif

typedef struct score_ctx {
    size_t max_batch_rows;
    size_t team_helpers;        /* per worker, for batches of a few rows (dcn_team); 0: none */
    score_stash *stash;         /* prepared states (score_stash_init); NULL: every
                                   state is built by the worker that needs it */
} score_ctx;

/* How many states were made, since score_stash_init. */
typedef struct score_stats {
    uint64_t prepared;          /* by score_prepare */
    uint64_t built_on_request;  /* by a worker, none being prepared for its model */
} score_stats;

/* pool_score_fn: ctx is a score_ctx, w->key the dcn_model. Returns 0 or a
 * negative dcn_err / RK_ENOMEM. */
int score_batch(void *ctx, void **state, batch_work *w);
/* pool_after_fn: frees the state that score_batch replaced with a prepared
 * one, once the batch is back on the done-list. */
void score_after(void *ctx, void **state);
/* pool_free_fn */
void score_state_free(void *ctx, void *state);

/* Gives c an empty stash; before the pool starts (c->stash is read by the
 * workers without a lock). Returns 0 or RK_ENOMEM. */
int score_stash_init(score_ctx *c);
/* Frees the stash and every state left in it; after the pool is stopped. */
void score_stash_destroy(score_ctx *c);
/* Builds n states for model m (any thread; m referenced by the caller
 * meanwhile), adds them to the stash and marks m live (states of other
 * live models stay). Returns 0, or RK_ENOMEM / RK_EINTERNAL (no stash)
 * with the stash unchanged and nothing left allocated. */
int score_prepare(score_ctx *c, const dcn_model *m, size_t n);
/* Marks m no longer live: frees its states in the stash, and each worker
 * retires the ones it holds at its next batch. Any thread; m referenced
 * by the caller meanwhile (its instance id is read). */
void score_forget(score_ctx *c, const dcn_model *m);
/* The stash's counters (zeros without a stash); any thread. */
score_stats score_get_stats(score_ctx *c);

#endif
