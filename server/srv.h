/* srv.h — the daemon: libmicrohttpd on a libuv loop, routing, the request
 * lifecycle, model reload and graceful drain.
 *
 * DESIGN
 * - Threads: N event loops (--loops; one per four usable CPUs by default),
 *   each a libuv loop on its own thread driving its own MHD daemon
 *   (external epoll mode: MHD's epoll fd is watched by a uv_poll, a
 *   uv_timer re-armed from MHD_get_timeout after every MHD_run), which owns
 *   the connections handed to it and runs their JSON decoding, ranking and
 *   encoding. Loop 0 also accepts (one listening socket; each new
 *   connection goes to the loop with the fewest), handles signals and
 *   moves the phase; it tells the others through their uv_async. All loops
 *   feed one batcher and one worker pool. Worker threads (pool.h) score,
 *   and decode bodies of at least --decode-offload-bytes (a batch task),
 *   so a huge body does not stall a loop. The served models and versions
 *   are models.h's table: a reload (SIGHUP, POST /admin/reload, or the
 *   repository's poll timer on loop 0) runs models_sync on libuv's
 *   threadpool, which opens, validates and warms each new file and builds
 *   one worker state per worker for it (score.h: scratch memory, staging
 *   buffers, helper threads) before it is routable; its result comes back
 *   to the loop that started it. The start-up versions' states are built
 *   before the listener opens. So no request pays for a worker state, after
 *   start or after a reload (but for a request decoded against a version
 *   just unloaded: score.h).
 * - A /rank request: read the body (bounded), route it to a version
 *   (models_route: the path's or the body's model and version, else the
 *   latest or the canary split) and decode it against that version
 *   (taking a reference), push it to the batcher, suspend the
 *   connection; its rows come back through the pool's done-list, and the
 *   thread that accounts its last row puts it on its own loop's inbox and
 *   wakes that loop (uv_async); the loop resumes the connection and MHD
 *   calls the handler again, which ranks, encodes and queues the answer.
 * - Shadow scoring: when the request's model has a shadow version, the
 *   request keeps its body; once its answer is encoded, and only if a
 *   worker is idle and no row waits, a second srv_req without a connection
 *   (is_shadow) takes the body and the served scores, is decoded by a
 *   worker task against the shadow version, and its rows go to the
 *   batcher's low-priority lane (dropped after 2 s unscored). Its loop
 *   compares the two rankings (models_shadow_result) and frees it. It is on
 *   its loop's live list, so a drain waits for it; nothing waits on it.
 * - Ownership: MHD owns connections; a srv_req is created on the first
 *   handler call and freed in MHD's completion callback, which never runs
 *   while the request is queued (suspended connections do not time out and
 *   are all resumed before MHD is stopped); a shadow srv_req by its loop
 *   when its rows are back.
 * - The status page: loop 0's timer samples the metrics every
 *   --status-sample-s into status.h's ring; GET /status renders it.
 * - Statuses come from rk_err codes through srv_http_status only.
 */
#ifndef SRV_SRV_H
#define SRV_SRV_H

#include "server/config.h"

/* HTTP status of an rk_err code (200 for 0). */
int srv_http_status(int rk_err);

/* Loads the model, starts the workers and serves until SIGTERM/SIGINT and a
 * completed drain. Returns the process exit status (0 after a clean drain). */
int srv_run(const srv_config *cfg);

#endif
