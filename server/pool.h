/* pool.h — the worker pool: pthreads that take batches from a batch_queue,
 * score them through a callback and hand them back on a done-list.
 *
 * DESIGN
 * - n dedicated threads, each with one private state pointer (the server
 *   keeps its dcn_scratch there), filled by the score callback (the
 *   server's takes a state prepared ahead for the batch's model from its
 *   stash, score.h, and builds one only if none is left) and released by
 *   the free callback when the thread exits.
 * - After each batch or task it hands back, a worker calls the optional
 *   after callback with its state before it waits for the next one: work
 *   that must not delay an answer goes there (the server frees the state
 *   a reload replaced). It may delay the worker's next batch instead.
 * - Completion: a worker appends the finished batch to the done-list under a
 *   mutex, then calls notify; any thread may detach the whole list with
 *   pool_take_done (the server's notify does it at once, on the notifying
 *   thread, and hands each request to its event loop). Workers never
 *   touch anything but their batch and their state (and, inside the score
 *   callback, the scorer's stash under its own lock, only when the state
 *   does not match the batch's model: never on the hot path).
 * - Expired rows found by the loop's timer (pool_expire) travel the same
 *   done-list, so the loop has one place where rows come back. So do tasks
 *   (batch_push_task): a worker runs the task, then hands its batch_work
 *   (task set, no segments) back the same way.
 * - pool_stop closes the queue: workers finish every queued row, then exit;
 *   batches finished meanwhile stay on the done-list for the loop.
 * - Idle cores: a worker may ask for its share of the workers of its pool
 *   that wait for work (pool_spare_workers): the scorer lends a batch as
 *   many helper threads, so that a single large batch on an idle server
 *   uses every core and a loaded server is not oversubscribed.
 */
#ifndef SRV_POOL_H
#define SRV_POOL_H

#include "server/batch.h"

/* Scores the live segments of w (w->key is the model); *state is the
 * worker's private pointer. Returns 0 or a negative code (stored in
 * w->status). */
typedef int (*pool_score_fn)(void *ctx, void **state, batch_work *w);
typedef void (*pool_free_fn)(void *ctx, void *state);
/* Called on the worker after each hand-back (see DESIGN), with its state. */
typedef void (*pool_after_fn)(void *ctx, void **state);
typedef void (*pool_notify_fn)(void *ctx);

typedef struct pool pool;

/* Starts n_workers threads on queue q; score, after (or NULL) and
 * free_state get score_ctx, notify gets notify_ctx. Returns NULL on failure
 * (no thread left running). */
pool *pool_new(batch_queue *q, size_t n_workers, pool_score_fn score, pool_after_fn after,
               pool_free_fn free_state, void *score_ctx, pool_notify_fn notify, void *notify_ctx);

/* Detaches the done-list, oldest first; NULL if empty; any thread, notify
 * included. Free each with batch_free after use. */
batch_work *pool_take_done(pool *p);

/* Moves rows past their deadline to the done-list (and notifies); returns
 * the number of expired rows. */
size_t pool_expire(pool *p, uint64_t now_ns);

/* Closes the queue and joins every worker; the done-list is kept. */
void pool_stop(pool *p);

/* pool_stop if needed, frees the pool and whatever is left on the done-list. */
void pool_free(pool *p);

size_t pool_workers(const pool *p);

/* Workers with no batch or task in hand now (a snapshot); any thread. */
size_t pool_idle_workers(pool *p);

/* On a worker thread: its share of the workers of its pool that have no
 * batch in hand now, the idle ones divided among the busy ones (a
 * snapshot; they may take a batch the next moment). 0 on other threads. */
size_t pool_spare_workers(void);

/* Default worker count: usable CPUs (affinity mask), capped by the cgroup v2
 * CPU quota (cpu.max), at least 1. */
size_t pool_default_workers(void);

#endif
