/* srv.h — the daemon: libmicrohttpd on a libuv loop, routing, the request
 * lifecycle, model reload and graceful drain.
 *
 * DESIGN
 * - Threads: the loop thread runs libuv, MHD (external epoll mode: MHD's
 *   epoll fd is watched by a uv_poll, a uv_timer re-armed from
 *   MHD_get_timeout after every MHD_run), JSON decoding, ranking and
 *   encoding. Worker threads (pool.h) score, and decode the bodies of at
 *   least --decode-offload-bytes (a batch task), so a huge body does not
 *   stall the loop. A reload opens and warms
 *   the new file on libuv's threadpool (file work) and builds there one
 *   worker state per worker for it (score.h: scratch memory, staging
 *   buffers, helper threads), then swaps on the loop; the start-up model's
 *   states are built before the listener opens. So no request pays for a
 *   worker state, after start or after a reload (but for a request decoded
 *   against the old model and scored after its worker switched: score.h).
 * - A /rank request: read the body (bounded), decode it against the current
 *   model (taking a reference), push it to the batcher, suspend the
 *   connection; its rows come back through the pool's done-list and a
 *   uv_async; when all rows are back the connection is resumed and MHD calls
 *   the handler again, which ranks, encodes and queues the answer.
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
