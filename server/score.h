/* score.h — the pool's scoring callback: turns a batch of request slices
 * into one dcn_batch and runs dcn_score.
 *
 * DESIGN
 * - Runs on worker threads. Reads the requests (immutable once queued),
 *   writes only its own slice of each request's score array (slices of one
 *   request never overlap) and its own score_state.
 * - Context sharing: a feature is shared in the batch when no candidate of
 *   any request in the batch gives it; then each segment (request slice)
 *   contributes its context value once. Otherwise every row gets the
 *   candidate's value where given and its request's context value elsewhere.
 * - A worker's state (scratch and staging buffers) is rebuilt when a batch
 *   comes with another model than the last one (after a reload).
 * - Batches of a few rows on a model with heavy layers are bound by the
 *   bytes of weights they stream: each worker's scratch then has a dcn_team
 *   of team_helpers threads that share those layers by columns (made with
 *   the state, only for such models; they sleep otherwise).
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

typedef struct score_ctx {
    size_t max_batch_rows;
    size_t team_helpers;        /* per worker, for batches of a few rows (dcn_team); 0: none */
} score_ctx;

/* pool_score_fn: ctx is a score_ctx, w->key the dcn_model. Returns 0 or a
 * negative dcn_err / RK_ENOMEM. */
int score_batch(void *ctx, void **state, batch_work *w);
/* pool_free_fn */
void score_state_free(void *ctx, void *state);

#endif
