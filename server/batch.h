/* batch.h — the dynamic batcher: a bounded queue of requests' rows from which
 * worker threads cut batches of up to max_batch_rows rows.
 *
 * DESIGN
 * - The event loops push jobs (one per request, embedded in the
 *   caller's request object, never owned here); worker threads take batches.
 *   One mutex guards the queue and every job's cursor; a condition variable
 *   wakes workers. Nothing here knows HTTP, libuv or the engine.
 * - A batch is a list of segments, each a slice (job, first row, rows) of
 *   one job. Batches never mix jobs with different `key`s (the model they
 *   were decoded against), so a reload never mixes models in one batch.
 * - Splitting: a job of more than split_min_rows rows is cut into chunks of
 *   about rows / workers, and a batch takes at most one chunk of such a job,
 *   so the idle workers share a large request and its latency falls with
 *   more cores. A job marked `whole` is cut only into max_batch_rows pieces:
 *   on a model whose weights outgrow the caches, a worker that takes it
 *   borrows the idle workers to split each heavy layer by columns, which
 *   streams every weight once instead of once per worker.
 * - Waiting: with max_delay_us = 0 an idle worker takes whatever is queued at
 *   once; otherwise it waits until max_batch_rows rows are queued or the
 *   oldest job has waited max_delay_us.
 * - Bounds: at most max_queue_rows rows wait at once; a push beyond that
 *   fails with RK_EBUSY without queueing anything.
 * - Deadlines: rows of a job whose deadline has passed are never scored; they
 *   come back as expired segments, either in a worker's batch or from
 *   batch_expire (called by the loop's timer), so a request whose rows are all
 *   accounted for can always be answered.
 * - Every row of every pushed job comes back exactly once, scored or
 *   expired, until batch_close; then batch_take returns the remaining work
 *   and finally NULL.
 * - Priority: a job marked `low` (shadow scoring) waits in a second list
 *   that a worker cuts from only when no normal job waits; its rows count
 *   against max_low_rows, not max_queue_rows, so they never make the queue
 *   refuse a request. Under sustained load such jobs are not taken, and
 *   their deadline returns them expired (dropped first).
 * - Tasks: besides rows, the loop may queue small units of other work (the
 *   server decodes large request bodies this way). A task is handed out
 *   before any row, in FIFO order, as a batch_work with `task` set and no
 *   segments; it is never dropped, not even by batch_close. Tasks are owned
 *   by the caller and bounded by it (one per connection at most). A task
 *   marked `low` (a shadow's decode) waits until no normal task or job
 *   does.
 */
#ifndef SRV_BATCH_H
#define SRV_BATCH_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct batch_job {
    void *req;                  /* the caller's request */
    const void *key;            /* batches never mix keys (the model) */
    uint32_t n_rows;
    uint64_t deadline_ns;       /* monotonic; 0: none */
    int whole;                  /* never split across workers by rows: the
                                 * engine splits its heavy layers across the
                                 * idle workers instead (dcn_team_pays) */
    int low;                    /* low priority: taken only when no other job waits */
    uint64_t enq_ns;            /* set by batch_push */
    /* private, guarded by the queue mutex */
    uint32_t next_row;          /* rows before it are taken */
    uint32_t chunk_rows;
    struct batch_job *next;
} batch_job;

/* A unit of non-scoring work, embedded in the caller's object. */
typedef struct batch_task {
    void (*run)(struct batch_task *t); /* called on a worker thread */
    int low;                           /* low priority: run only when no normal job or task waits */
    struct batch_task *next;           /* private, guarded by the queue mutex */
} batch_task;

typedef struct batch_seg {
    batch_job *job;
    uint32_t row0, n_rows;
} batch_seg;

/* One unit of work for a worker, allocated by batch_take, freed by
 * batch_free. */
typedef struct batch_work {
    const void *key;
    size_t n_rows;              /* sum over segs */
    size_t n_segs;
    batch_seg *segs;            /* (n_segs) live slices, to score */
    size_t n_expired;
    batch_seg *expired;         /* (n_expired) slices past their deadline */
    batch_task *task;           /* a task to run instead of a batch (no segments) */
    int status;                 /* 0, or a negative code from the scorer */
    uint64_t start_ns, end_ns;  /* inference, set by the pool */
    struct batch_work *next;    /* done-list link */
} batch_work;

typedef struct batch_opts {
    size_t max_batch_rows;      /* rows per batch */
    size_t max_queue_rows;      /* rows waiting at once */
    size_t max_low_rows;        /* rows of low-priority jobs waiting at once (0: none taken) */
    uint64_t max_delay_us;      /* 0: never wait while a worker is idle */
    size_t split_min_rows;      /* jobs larger than this are split */
    size_t workers;             /* used to size split chunks */
} batch_opts;

typedef struct batch_queue batch_queue;

/* Returns a new empty queue, or NULL (out of memory or a zero size). */
batch_queue *batch_new(const batch_opts *o);
void batch_destroy(batch_queue *q); /* after every taker has stopped */

/* Queues every row of job (n_rows >= 1). Returns 0, RK_EBUSY if the queue
 * cannot take n_rows more rows (of its priority), RK_EUNAVAIL after
 * batch_close. */
int batch_push(batch_queue *q, batch_job *job, uint64_t now_ns);

/* Queues a task (run by the pool on a worker, handed back on the done-list).
 * Returns 0, or RK_EUNAVAIL after batch_close (nothing queued). */
int batch_push_task(batch_queue *q, batch_task *t);

/* Blocks until work is available and returns a batch or a task (the caller
 * owns it: batch_free), or NULL once the queue is closed and empty. */
batch_work *batch_take(batch_queue *q);

/* Removes the untaken rows of every job whose deadline is <= now_ns and
 * returns them as one batch of expired segments (no live ones), or NULL if
 * none expired. Non-blocking. */
batch_work *batch_expire(batch_queue *q, uint64_t now_ns);

/* Stops waiting for more rows: queued work is still handed out, then takers
 * get NULL. */
void batch_close(batch_queue *q);

void batch_free(batch_work *w);

/* Rows waiting, of normal jobs (a snapshot). */
size_t batch_queued_rows(batch_queue *q);
/* Rows of low-priority jobs waiting (a snapshot). */
size_t batch_low_rows(batch_queue *q);

/* Monotonic clock in nanoseconds. */
uint64_t batch_now_ns(void);

#endif
