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
 *   so a huge body does not stall a loop. A reload opens and warms
 *   the new file on libuv's threadpool (file work) and builds there one
 *   worker state per worker for it (score.h: scratch memory, staging
 *   buffers, helper threads), then swaps on the loop that started it; the
 *   start-up model's states are built before the listener opens. So no
 *   request pays for a worker state, after start or after a reload (but
 *   for a request decoded against the old model and scored after its
 *   worker switched: score.h).
 * - A /rank request: read the body (bounded), decode it against the current
 *   model (taking a reference), push it to the batcher, suspend the
 *   connection; its rows come back through the pool's done-list, and the
 *   thread that accounts its last row puts it on its own loop's inbox and
 *   wakes that loop (uv_async); the loop resumes the connection and MHD
 *   calls the handler again, which ranks, encodes and queues the answer.
 * - Ownership: MHD owns connections; a srv_req is created on the first
 *   handler call and freed in MHD's completion callback, which never runs
 *   while the request is queued (suspended connections do not time out and
 *   are all resumed before MHD is stopped).
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
