/* http.c — the daemon proper (see srv.h for the design): libmicrohttpd in
 * external-epoll mode on libuv loops, routes, the /rank lifecycle, metrics
 * and model endpoints, reload and drain.
 *
 * DESIGN
 * - Threads. N event loops (--loops), each a libuv loop on its own thread
 *   (loop 0 on the main thread) driving its own MHD daemon, which owns the
 *   connections handed to it; worker threads (pool.h) score and decode;
 *   libuv's threadpool runs reload_work. Only a loop's own thread touches
 *   its libuv handles, its MHD daemon, its connections and the srv_reqs on
 *   them (its `live` list), but for what workers write while a request's
 *   rows are out (below) and the counters other threads read (atomics).
 * - Loop 0 is also the control loop: it owns the listening socket (its
 *   acceptor hands each accepted socket to the loop with the fewest
 *   connections through that loop's inbox and uv_async; the loop adds it
 *   to its daemon with MHD_add_connection), the signals, the phase and the
 *   drain timers. A reload runs on the loop that was asked (SIGHUP: loop
 *   0; /admin/reload: the request's loop) and its result comes back there.
 * - Shared state and its guards: the batch queue, pool and scorer's stash
 *   (their own locks); the served models and versions (models.h: its own
 *   lock; a request routed there holds a reference to its version); the
 *   `reloading` flag (reload_mu); the phase and the shedding flag (atomics,
 *   written by loop 0 and by any loop respectively); connection counts
 *   (atomics); batch metrics (met_mu of the srv); each loop's request
 *   metrics (that loop's met_mu, taken by the loop for each update and by
 *   /metrics, on any loop, to sum them at scrape time).
 * - Results find their loop: a worker hands a finished batch to the pool's
 *   done-list, and the pool's notify (on the same worker, or on the loop
 *   that expired rows) drains that list at once (route_done): a batch's
 *   counters go to the shared metrics; each slice is accounted to its
 *   request with atomics (rows left, first error, deadline passed, first
 *   and last batch times); the thread that accounts a request's last row
 *   puts the request on its loop's inbox (mutex) and wakes that loop with
 *   uv_async_send. A decode task comes back the same way. The loop then
 *   resumes the connection. Workers write only those atomics, the error
 *   message of the first failure, and their slices of the score arrays,
 *   all before the release that hands the request back.
 * - Decoding: a body of at least decode_offload_bytes is decoded on a worker
 *   (a batch task) so a large body does not stall every other connection;
 *   the request is suspended meanwhile and the loop does not touch its
 *   body, model reference or decoded fields until the task comes back on
 *   its inbox. Smaller bodies are decoded on the loop at once. By default
 *   (auto) every body is offloaded when there are more than two workers
 *   per loop (on a big machine the loop would otherwise set the pace), and
 *   bodies of 1 MiB and more otherwise (a task's hand-over costs more than
 *   a small body's decode when cores are few).
 * - Phases: RUNNING -> DRAINING (SIGTERM: readiness 503, still serving for
 *   drain_delay_ms) -> CLOSING (listener closed, new /rank on kept-alive
 *   connections refused, waiting for live requests up to drain_timeout_ms)
 *   -> STOPPED (loops stopped, workers joined). Loop 0 moves the phase and
 *   wakes every loop; each loop stops on its own (daemon stopped, handles
 *   closed) once its requests are done (below), then tells loop 0, which
 *   joins the workers and closes its control handles when the last loop has
 *   stopped. When the drain deadline passes, loop 0 joins the workers first
 *   (every queued row comes back to its loop), then tells every loop to
 *   answer what it can and stop.
 * - Overload: when a request does not fit the queue, the server sheds load:
 *   new /rank requests with large (or chunked) bodies get the busy status at
 *   the headers, unread, until the queue has drained below half (checked at
 *   each arrival, on every loop).
 * - Every srv_req is on its loop's `live` list from the first handler call
 *   to MHD's completion callback; a loop's CLOSING ends when that list is
 *   empty. That is checked in run_mhd after MHD_run returns, never from
 *   inside an MHD callback: stopping the daemon there frees what MHD is
 *   still using. Connections accepted before the listener closed may hold a
 *   request MHD has not read yet (a first request, or the next one on a
 *   keep-alive connection): a loop's CLOSING waits until its daemon has no
 *   connection left, or until no request has been live on it for
 *   CLOSE_LINGER_MS (then the connections left are idle). Each connection
 *   takes at most one more request (answers say Connection: close) and none
 *   is accepted, so this ends; drain_timeout_ms bounds it in any case.
 * - Busy share: each loop's time outside epoll_wait (libuv's
 *   UV_METRICS_IDLE_TIME, readable from any thread) and its thread's CPU
 *   time (its CPU clock, taken by the main thread before any request) are
 *   shown per loop in /metrics, so an operator sees whether the loops or
 *   the workers saturate.
 * - Connections: loop 0 counts them over all loops (each daemon's connect
 *   and close notifications, plus sockets on their way to a loop) and stops
 *   watching the listening socket at --max-connections; a close while at
 *   the limit wakes loop 0, which watches it again.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <uv.h>

#include "model/dcn.h"
#include "proto/rk.h"
#include "server/batch.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/models.h"
#include "server/pool.h"
#include "server/score.h"
#include "server/srv.h"
#include "server/status.h"

/* ------------------------------------------------------------ types */

typedef enum {
    R_RANK, R_LIVE, R_READY, R_MODEL, R_MODELS, R_MODEL_ONE, R_V2_MODEL, R_V2_READY, R_METRICS, R_RELOAD,
    R_CANARY, R_SHADOW, R_STATUS, R_NOTFOUND, R_METHOD
} route;
/* READING -> (DECODING -> DECODED ->) QUEUED -> READY -> ANSWERED; the
 * connection is suspended in DECODING and QUEUED. */
typedef enum { ST_READING, ST_DECODING, ST_DECODED, ST_QUEUED, ST_READY, ST_ANSWERED } req_state;
typedef enum { PH_RUNNING, PH_DRAINING, PH_CLOSING, PH_STOPPED } phase;

/* How long CLOSING waits for a request on a connection that is already
 * open (accepted, nothing read yet) once nothing is in flight. */
#define CLOSE_LINGER_MS 250

/* While shedding load, bodies this large or larger (or chunked, length
 * unknown) are refused unread; smaller ones decode in well under a
 * millisecond and are queued if they fit. */
#define SHED_MIN_BODY_BYTES 65536

/* The acceptor takes at most this many connections per wake-up, so a
 * connection storm does not hold loop 0's own connections. */
#define ACCEPT_BURST 64
/* Pause of the acceptor when the process is out of descriptors or memory. */
#define ACCEPT_RETRY_MS 100
/* Auto decode placement: bodies decoded on the loop below this size when
 * there are at most two workers per loop. */
#define OFFLOAD_FEW_CORES_BYTES 1048576

typedef struct srv srv;
typedef struct srv_loop srv_loop;

typedef struct srv_req {
    score_target t;             /* first member: job.req points here */
    batch_job job;
    batch_task task;            /* decoding on a worker (large bodies) */
    int dec_rc;                 /* rk_decode's result, set by the decoder */
    srv *s;
    srv_loop *L;                /* the loop that owns the connection */
    struct MHD_Connection *conn;
    route rt;
    met_handler mh;
    req_state st;
    const char *method;         /* MHD's, valid for the request */
    char path[160];             /* for the access log */
    int err;                    /* rk_err to answer with, once READY */
    char msg[256];
    int status;                 /* answered status */
    char *body;                 /* (body_cap) */
    size_t body_len, body_cap;
    int too_big;
    rk_request *rq;
    mv *v;                      /* the version that scores it, referenced while the request lives */
    mv *shadow_v;               /* the model's shadow version (routing), referenced; or NULL */
    int is_shadow;              /* a shadow scoring: no connection (shadow_start) */
    float *primary;             /* a shadow's: the served answer's scores (rq->n_cands) */
    char route_model[MODELS_NAME_MAX + 1]; /* from the path: "" none */
    uint64_t route_version;     /* from the path: 0 none */
    int allow_post;             /* the path's route takes POST (else GET, HEAD) */
    models_change change;       /* POST /admin/reload: what its sync changed */
    uint64_t t_arrive, t_parsed, t_enq; /* monotonic ns */
    /* written by the threads that account its rows (route_done) */
    atomic_uint rows_left;
    atomic_int failed;          /* the first failed slice wrote err and msg */
    atomic_int expired;
    atomic_ullong t_first, t_last; /* monotonic ns: first batch start, last batch end */
    struct srv_req *prev, *next; /* the loop's live list */
    struct srv_req *in_next;    /* the loop's inbox */
} srv_req;

/* A socket accepted by loop 0 for another loop's daemon. */
typedef struct handed_conn {
    int fd;
    socklen_t addr_len;
    struct sockaddr_storage addr;
    struct handed_conn *next;
} handed_conn;

struct srv_loop {
    srv *s;
    unsigned id;
    uv_loop_t loop;
    uv_thread_t tid;
    int loop_ok, handles_ok, thread_ok;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer, expire_timer, linger_timer;
    uv_async_t wake;            /* inbox, phase changes, stop */
    struct MHD_Daemon *d;
    uint64_t start_ns;          /* uv_hrtime when its thread started */
    clockid_t cpu_clock;        /* its thread's CPU-time clock */
    int cpu_clock_ok;
    /* the loop's thread only */
    srv_req *live;
    size_t queued, deadline_jobs;
    int expire_running;
    int lingered;               /* CLOSING: CLOSE_LINGER_MS passed with nothing live */
    int stopped;
    /* written by the loop, read anywhere */
    atomic_size_t n_live, rank_live;
    atomic_size_t n_conns;      /* connections its daemon holds */
    atomic_size_t handing;      /* sockets handed over, not added yet */
    pthread_mutex_t met_mu;     /* guards met */
    met_set met;                /* its requests' metrics, summed at scrape time */
    pthread_mutex_t in_mu;      /* guards the inbox */
    srv_req *in_head, *in_tail; /* requests whose decode or rows came back */
    handed_conn *in_conns;      /* sockets to add */
};

struct srv {
    const srv_config *cfg;
    size_t n_loops;
    srv_loop *loops;            /* (n_loops); loops[0] is the control loop */
    batch_queue *q;
    pool *pool;
    score_ctx sctx;             /* its stash: states prepared for the workers */
    size_t workers;
    uint64_t decode_offload_bytes; /* the configured value, auto resolved */
    rk_limits lim;
    rk_limits shadow_lim;       /* lenient: a new version may drop a feature */
    atomic_size_t shadows;      /* shadow scorings in flight (at most one per worker) */
    double start_unix;
    /* loop 0 only */
    int listen_fd;
    uv_poll_t listen_poll;
    uv_timer_t accept_timer, drain_timer;
    uv_signal_t sig_term, sig_int, sig_hup;
    int control_ok, listening;
    int stopped_all;
    size_t pick_next;           /* where the acceptor's next search starts */
    size_t conns_closed_at_stop; /* added by each loop as it stops (under loops[0].in_mu) */
    int exit_code;
    uv_timer_t poll_timer;      /* repository rescans (--poll-s) */
    uv_timer_t status_timer;    /* the status page's samples (--status-sample-s) */
    status_ring *status;        /* its samples (own lock) */
    /* shared */
    srv_models *models;         /* what is served (its own lock) */
    int single;                 /* exactly one model with one version and no canary: fast routing */
    pthread_mutex_t reload_mu;  /* guards reloading */
    int reloading;              /* a models_sync is in flight */
    atomic_int ph;
    atomic_int shedding;        /* a push failed for a full queue; /rank refused at the
                                 * headers until the queue is below half */
    atomic_int finish_now;      /* drain deadline: loops stop with what they hold */
    atomic_int close_wakes;     /* every loop stopped: each closes its wake */
    atomic_int accept_paused;   /* at the connection limit */
    atomic_size_t loops_running;
    atomic_size_t n_conns, handing; /* over all loops */
    pthread_mutex_t met_mu;     /* guards met: batch and reload counters */
    met_set met;
    /* the one reload (models_sync) in flight (reloading) */
    srv_req *reload_waiter;
    srv_loop *reload_loop;
    uv_work_t reload_req;
    int reload_rc;
    int reload_quiet;           /* a poll: logged only when something changed */
    models_change reload_change;
    char reload_err[256];
};

static int busy_status = 503;
static srv *abandoned; /* the server left to the process exit after a drain timeout */

int srv_http_status(int err)
{
    switch (err) {
    case 0: return 200;
    case RK_EJSON: case RK_ESCHEMA: case RK_EFEATURE: case RK_EVALUE: return 400;
    case RK_EFORBIDDEN: return 403;
    case RK_ENOTFOUND: return 404;
    case RK_EMETHOD: return 405;
    case RK_ECONFLICT: return 409;
    case RK_ELENGTH: return 411;
    case RK_ETOOMANY: case RK_ETOOBIG: return 413;
    case RK_EMEDIA: return 415;
    case RK_ERELOAD: return 422;
    case RK_EBUSY: return busy_status;
    case RK_EUNAVAIL: case RK_ENOMEM: return 503;
    case RK_EDEADLINE: return 504;
    default: return 500;
    }
}

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void run_mhd(srv_loop *L);

static int phase_of(srv *s) { return atomic_load_explicit(&s->ph, memory_order_acquire); }


/* ------------------------------------------------------------ answers */

/* Queues b (taken over) as the answer with the given status and optional
 * extra header pairs (NULL-terminated). Marks the request answered. */
static enum MHD_Result send_buf(srv_req *r, int status, rk_buf *b, const char *ctype, const char *const *hdrs)
{
    struct MHD_Response *resp;
    if (b->oom || !b->data) {
        free(b->data);
        static const char oom[] = "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}";
        resp = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        status = 503;
    } else {
        resp = MHD_create_response_from_buffer(b->len, b->data, MHD_RESPMEM_MUST_FREE);
    }
    *b = (rk_buf){0};
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", ctype);
    for (; hdrs && hdrs[0]; hdrs += 2) MHD_add_response_header(resp, hdrs[0], hdrs[1]);
    if (phase_of(r->s) >= PH_CLOSING) MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->st = ST_ANSWERED;
    pthread_mutex_lock(&r->L->met_mu);
    met_count_request(&r->L->met, r->mh, status);
    pthread_mutex_unlock(&r->L->met_mu);
    return ret;
}

/* Counts a refused /rank request on r's loop. */
static void count_rejection(srv_req *r, int err)
{
    pthread_mutex_lock(&r->L->met_mu);
    met_count_rejection(&r->L->met, err);
    pthread_mutex_unlock(&r->L->met_mu);
}

/* Answers with an error body for code err (message: msg or the default). */
static enum MHD_Result send_error(srv_req *r, int err, const char *msg)
{
    rk_buf b = {0};
    char retry[24];
    const char *hdrs[5] = {NULL};
    int n = 0;
    rk_encode_error(&b, err, msg);
    if (err == RK_EBUSY || (err == RK_EUNAVAIL && r->rt == R_RANK)) {
        snprintf(retry, sizeof retry, "%llu", (unsigned long long)r->s->cfg->retry_after_s);
        hdrs[n++] = "Retry-After";
        hdrs[n++] = retry;
    }
    if (err == RK_EMETHOD) {
        hdrs[n++] = "Allow";
        hdrs[n++] = r->allow_post ? "POST" : "GET, HEAD";
    }
    if (r->rt == R_RANK) count_rejection(r, err);
    return send_buf(r, srv_http_status(err), &b, "application/json", hdrs);
}

static enum MHD_Result send_text(srv_req *r, int status, const char *ctype, const char *text)
{
    rk_buf b = {0};
    rk_buf_puts(&b, text);
    return send_buf(r, status, &b, ctype, NULL);
}

/* ------------------------------------------------------------ requests */

static void req_free(srv_loop *L, srv_req *r)
{
    if (r->prev) r->prev->next = r->next;
    else L->live = r->next;
    if (r->next) r->next->prev = r->prev;
    atomic_fetch_sub_explicit(&L->n_live, 1, memory_order_relaxed);
    if (r->rt == R_RANK && !r->is_shadow) atomic_fetch_sub_explicit(&L->rank_live, 1, memory_order_relaxed);
    rk_request_free(r->rq);
    mv_release(r->v);
    mv_release(r->shadow_v);
    free(r->primary);
    free(r->t.scores);
    free(r->t.logits);
    free(r->body);
    free(r);
}

/* Matches url against a route's path template: literal bytes, "{name}"
 * (1 to MODELS_NAME_MAX bytes up to the next '/') and "{version}" (a
 * positive decimal number of at most 16 digits, no leading zero), which
 * go to r's route fields. Returns 1 on a whole match. */
static int match_route(const char *tpl, const char *url, srv_req *r)
{
    while (*tpl) {
        if (!strncmp(tpl, "{name}", 6)) {
            size_t n = strcspn(url, "/");
            if (!n || n > MODELS_NAME_MAX) return 0;
            memcpy(r->route_model, url, n);
            r->route_model[n] = 0;
            url += n;
            tpl += 6;
        } else if (!strncmp(tpl, "{version}", 9)) {
            size_t d = strspn(url, "0123456789");
            if (!d || d > 16 || url[0] == '0') return 0;
            uint64_t v = 0;
            for (size_t i = 0; i < d; i++) v = v * 10 + (uint64_t)(url[i] - '0');
            r->route_version = v;
            url += d;
            tpl += 9;
        } else if (*tpl++ != *url++) {
            return 0;
        }
    }
    return *url == 0;
}

/* The route of r's URL and method (the model and version of the per-model
 * routes into r); the metrics handler in *mh. Every route is in this
 * table (tests/integration/test_openapi.py reads it: the OpenAPI document
 * must list exactly these paths and methods). */
static route route_of(srv_req *r, const char *url, const char *method, met_handler *mh)
{
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int post = !strcmp(method, "POST");
    static const struct { const char *path; route rt; int is_post; met_handler mh; } table[] = {
        {"/rank", R_RANK, 1, MET_H_RANK},
        {"/v2/health/live", R_LIVE, 0, MET_H_HEALTH},
        {"/healthz", R_LIVE, 0, MET_H_HEALTH},
        {"/v2/health/ready", R_READY, 0, MET_H_HEALTH},
        {"/readyz", R_READY, 0, MET_H_HEALTH},
        {"/v1/model", R_MODEL, 0, MET_H_MODEL},
        {"/v1/models", R_MODELS, 0, MET_H_MODEL},
        {"/v1/models/{name}", R_MODEL_ONE, 0, MET_H_MODEL},
        {"/v1/models/{name}/versions/{version}", R_MODEL, 0, MET_H_MODEL},
        {"/v1/models/{name}/rank", R_RANK, 1, MET_H_RANK},
        {"/v1/models/{name}/versions/{version}/rank", R_RANK, 1, MET_H_RANK},
        {"/v2/models/{name}", R_V2_MODEL, 0, MET_H_MODEL},
        {"/v2/models/{name}/versions/{version}", R_V2_MODEL, 0, MET_H_MODEL},
        {"/v2/models/{name}/ready", R_V2_READY, 0, MET_H_HEALTH},
        {"/v2/models/{name}/versions/{version}/ready", R_V2_READY, 0, MET_H_HEALTH},
        {"/metrics", R_METRICS, 0, MET_H_METRICS},
        {"/status", R_STATUS, 0, MET_H_METRICS},
        {"/admin/reload", R_RELOAD, 1, MET_H_ADMIN},
        {"/admin/models/{name}/canary", R_CANARY, 1, MET_H_ADMIN},
        {"/admin/models/{name}/shadow", R_SHADOW, 1, MET_H_ADMIN},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        r->route_model[0] = 0;
        r->route_version = 0;
        if (!match_route(table[i].path, url, r)) continue;
        *mh = table[i].mh;
        r->allow_post = table[i].is_post;
        if (table[i].is_post ? post : get) return table[i].rt;
        return R_METHOD;
    }
    r->route_model[0] = 0;
    r->route_version = 0;
    *mh = MET_H_OTHER;
    return R_NOTFOUND;
}

/* 1 if the client may use /admin: the bearer token when one is configured,
 * else a loopback address. */
static int admin_allowed(srv *s, struct MHD_Connection *conn)
{
    const char *tok = s->cfg->admin_token;
    if (tok && *tok) {
        const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
        if (!h || strncmp(h, "Bearer ", 7)) return 0;
        h += 7;
        size_t n = strlen(tok), m = strlen(h);
        unsigned diff = (unsigned)(n ^ m);
        for (size_t i = 0; i < n; i++) diff |= (unsigned char)tok[i] ^ (unsigned char)(i < m ? h[i] : 0);
        return diff == 0;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return 0;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

/* Checks the headers of a /rank request before its body is read; returns 0
 * or the rk_err to answer with at once. */
static int check_rank_headers(srv_req *r)
{
    srv *s = r->s;
    if (phase_of(s) >= PH_CLOSING) {
        snprintf(r->msg, sizeof r->msg, "the server is shutting down");
        return RK_EUNAVAIL;
    }
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) || (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        snprintf(r->msg, sizeof r->msg, "Content-Type must be application/json");
        return RK_EMEDIA;
    }
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Transfer-Encoding");
    unsigned long long n = 0;
    if (cl) {
        char *end;
        n = strtoull(cl, &end, 10);
        if (end == cl || *end) {
            snprintf(r->msg, sizeof r->msg, "bad Content-Length");
            return RK_ELENGTH;
        }
        if (n > s->cfg->max_body_bytes) {
            snprintf(r->msg, sizeof r->msg, "body of %llu bytes, the limit is %llu", n,
                     (unsigned long long)s->cfg->max_body_bytes);
            return RK_ETOOBIG;
        }
    } else if (!te || !strcasestr(te, "chunked")) {
        snprintf(r->msg, sizeof r->msg, "a body with Content-Length (or chunked) is required");
        return RK_ELENGTH;
    }
    /* Overload: once a request was refused for a full queue, refuse the
     * next large ones here, before their bodies are read and decoded (that
     * work, not scoring, is what a flood of large bodies costs), until the
     * queue has drained below half. Small bodies cost little to decode and
     * may well fit: they still get their chance. The flag is shared by the
     * loops: one queue is full for all of them. */
    size_t waiting = batch_queued_rows(s->q);
    int shedding = atomic_load_explicit(&s->shedding, memory_order_relaxed);
    if (shedding && waiting < s->cfg->max_queue_rows / 2) {
        atomic_store_explicit(&s->shedding, 0, memory_order_relaxed);
        shedding = 0;
    }
    if ((shedding && (!cl || n >= SHED_MIN_BODY_BYTES)) || waiting >= s->cfg->max_queue_rows) {
        snprintf(r->msg, sizeof r->msg, "queue full (%zu rows waiting)", waiting);
        return RK_EBUSY;
    }
    if (cl) {
        r->body_cap = (size_t)n + 1;
        if (!(r->body = malloc(r->body_cap))) return RK_ENOMEM;
    }
    return 0;
}

/* Appends upload data, up to the body limit (beyond it, drops and flags). */
static void append_body(srv_req *r, const char *data, size_t n)
{
    size_t max = r->s->cfg->max_body_bytes;
    if (r->too_big || r->body_len + n > max) {
        r->too_big = 1;
        return;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1) cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb) { r->too_big = 1; return; }
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
}

/* Refuses a body that grew past the limit while it is being uploaded
 * (chunked: no Content-Length to check first). MHD cannot queue a response
 * in the middle of an upload (MHD_queue_response fails until the body is
 * read), so the 413 is written straight to the socket, best effort, and
 * MHD_NO makes MHD close the connection without reading any more. Safe
 * because nothing of this request's answer was written yet and the
 * connection is plain TCP (no TLS). Returns MHD_NO. */
static enum MHD_Result refuse_upload(srv_req *r)
{
    srv *s = r->s;
    rk_buf body = {0}, b = {0};
    snprintf(r->msg, sizeof r->msg, "body over the limit of %llu bytes",
             (unsigned long long)s->cfg->max_body_bytes);
    rk_encode_error(&body, RK_ETOOBIG, r->msg);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!body.oom && body.data && ci) {
        char head[160];
        snprintf(head, sizeof head,
                 "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n", body.len);
        rk_buf_printf(&b, "%s%.*s", head, (int)body.len, body.data);
        if (!b.oom && b.data) (void)send(ci->connect_fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    free(body.data);
    free(b.data);
    pthread_mutex_lock(&r->L->met_mu);
    met_count_rejection(&r->L->met, RK_ETOOBIG);
    met_count_request(&r->L->met, r->mh, 413);
    pthread_mutex_unlock(&r->L->met_mu);
    r->status = 413;
    r->st = ST_ANSWERED;
    return MHD_NO;
}

static void on_expire_timer(uv_timer_t *t);

/* Marks a queued request complete and resumes its connection (its loop). */
static void req_ready(srv_loop *L, srv_req *r)
{
    r->st = ST_READY;
    if (r->rt == R_RANK) {
        L->queued--;
        if (r->job.deadline_ns && --L->deadline_jobs == 0 && L->expire_running) {
            uv_timer_stop(&L->expire_timer);
            L->expire_running = 0;
        }
    }
    MHD_resume_connection(r->conn);
}

/* Picks the version that scores r (r->v; and r->shadow_v) from the path's
 * model and version and the routing fields rt (NULL: none read), checking
 * that the two agree. */
/* RK_ESCHEMA with a message when the body's routing fields rt name
 * another model or version than the path; else 0. */
static int route_conflict(srv_req *r, const rk_route *rt)
{
    if (r->route_model[0] && rt->has_model && strcmp(r->route_model, rt->model)) {
        snprintf(r->msg, sizeof r->msg, "model: \"%.64s\" in the body, \"%.64s\" in the path", rt->model,
                 r->route_model);
        return RK_ESCHEMA;
    }
    if (r->route_version && rt->version && r->route_version != rt->version) {
        snprintf(r->msg, sizeof r->msg, "version: %llu in the body, %llu in the path",
                 (unsigned long long)rt->version, (unsigned long long)r->route_version);
        return RK_ESCHEMA;
    }
    return 0;
}

static int route_with(srv_req *r, const rk_route *rt)
{
    srv *s = r->s;
    const char *name = r->route_model[0] ? r->route_model : NULL, *key = NULL;
    uint64_t version = r->route_version;
    int rc;
    if (rt && (rc = route_conflict(r, rt)) < 0) return rc;
    if (rt && rt->has_model) name = rt->model;
    if (rt && rt->version) version = rt->version;
    if (rt && rt->has_routing_key) key = rt->routing_key;
    return models_route(s->models, name, version, key, &r->v, &r->shadow_v, r->msg, sizeof r->msg);
}

/* Picks the version that scores r before its body is decoded: from the
 * path, and from the body's routing fields when several versions serve
 * (rk_peek_route_head: the members before "candidates"; *head says it
 * stopped there, *rt holds what it read). With a single version served
 * the body is not read here: check_route compares what the decoder read. */
static int route_request(srv_req *r, const char *body, rk_route *rt, int *head, int *peeked)
{
    srv *s = r->s;
    *head = *peeked = 0;
    memset(rt, 0, sizeof *rt);
    if (models_single(s->models)) return route_with(r, NULL);
    *peeked = 1;
    int rc = rk_peek_route_head(body, r->body_len, rt, head, r->msg, sizeof r->msg);
    if (rc < 0) return rc;
    if (rc != RK_ROUTE_UNREADABLE) {
        rc = route_with(r, rt);
        if (rc == 0 || !*head) return rc;
        /* not enough before "candidates" (no model named while several
         * serve, say): read the whole top level for them */
        *head = 0;
        rc = rk_peek_route(body, r->body_len, rt, r->msg, sizeof r->msg);
        if (rc < 0) return rc;
        if (rc != RK_ROUTE_UNREADABLE) return route_with(r, rt);
    }
    rc = route_with(r, NULL);
    if (rc < 0 && !r->route_model[0] && !r->route_version) {
        /* a body that is not JSON (or not an object) is refused for that
         * by the decoder, against any model served */
        mv **all;
        size_t n = models_serving_list(s->models, &all);
        if (n) {
            r->v = all[0];
            for (size_t i = 1; i < n; i++) mv_release(all[i]);
            free(all);
            return 0;
        }
    }
    return rc;
}

/* The decoded request's routing fields, as rk_peek_route reads them. */
static void fields_of(const rk_request *rq, rk_route *rt)
{
    memset(rt, 0, sizeof *rt);
    rt->has_model = rq->has_model;
    if (rq->has_model) memcpy(rt->model, rq->model, sizeof rt->model);
    rt->version = rq->version;
    rt->has_routing_key = rq->has_routing_key;
    if (rq->has_routing_key) memcpy(rt->routing_key, rq->routing_key, sizeof rt->routing_key);
}

/* After a decode without route_request reading the body: the model and
 * version it names must be the one served. */
static int check_route(srv_req *r)
{
    const rk_request *rq = r->rq;
    rk_route rt;
    fields_of(rq, &rt);
    int rc = route_conflict(r, &rt); /* a 400, as with several versions served */
    if (rc < 0) return rc;
    if (rq->has_model && strcmp(rq->model, r->v->name)) {
        snprintf(r->msg, sizeof r->msg, "no model \"%.64s\"; models: \"%.64s\"", rq->model, r->v->name);
        return RK_ENOTFOUND;
    }
    if (rq->version && rq->version != r->v->number) {
        snprintf(r->msg, sizeof r->msg, "model \"%.64s\" has no version %llu serving; serving: %s", r->v->name,
                 (unsigned long long)rq->version, r->v->label);
        return RK_ENOTFOUND;
    }
    return 0;
}

static int same_fields(const rk_route *a, const rk_route *b)
{
    return a->has_model == b->has_model && (!a->has_model || !strcmp(a->model, b->model)) &&
           a->version == b->version && a->has_routing_key == b->has_routing_key &&
           (!a->has_routing_key || !strcmp(a->routing_key, b->routing_key));
}

/* Routes and decodes r's body, on a worker thread (batch_task callback)
 * or on the loop; writes only r's decode fields. A shadow has its version
 * already. When the pre-scan stopped at "candidates" and the decoder found
 * routing fields after it, the request is routed again on all of them and,
 * if that picks another version, decoded again against it (rare: clients
 * send the routing fields first). */
static void decode_body(srv_req *r)
{
    const char *body = r->body ? r->body : "";
    const rk_limits *lim = r->is_shadow ? &r->s->shadow_lim : &r->s->lim;
    rk_route rt, got;
    int head = 0, peeked = 1;
    r->dec_rc = r->is_shadow ? 0 : route_request(r, body, &rt, &head, &peeked);
    if (r->dec_rc == 0) r->dec_rc = rk_decode(r->v->m, body, r->body_len, lim, &r->rq, r->msg, sizeof r->msg);
    if (r->dec_rc == 0 && head && (fields_of(r->rq, &got), !same_fields(&rt, &got))) {
        mv *was = r->v;
        mv_release(r->shadow_v);
        r->v = r->shadow_v = NULL;
        r->dec_rc = route_with(r, &got);
        if (r->dec_rc == 0 && r->v != was) {
            rk_request_free(r->rq);
            r->rq = NULL;
            r->dec_rc = rk_decode(r->v->m, body, r->body_len, lim, &r->rq, r->msg, sizeof r->msg);
        }
        mv_release(was);
    } else if (r->dec_rc == 0 && !peeked) {
        r->dec_rc = check_route(r);
    }
    r->t_parsed = batch_now_ns();
}

static void decode_task(batch_task *t)
{
    decode_body((srv_req *)((char *)t - offsetof(srv_req, task)));
}

/* Checks and queues the rows of a decoded /rank request. */
static enum MHD_Result rank_queue(srv_loop *L, srv_req *r)
{
    srv *s = L->s;
    if (!r->shadow_v) { /* else kept for the shadow's decode */
        free(r->body);
        r->body = NULL;
    }
    if (r->dec_rc < 0) return send_error(r, r->dec_rc, r->msg);
    rk_request *rq = r->rq;
    r->t.rq = rq;
    r->t.scores = malloc((rq->n_cands + 1) * sizeof(float));
    r->t.logits = malloc((rq->n_cands + 1) * sizeof(float));
    if (!r->t.scores || !r->t.logits) return send_error(r, RK_ENOMEM, NULL);
    pthread_mutex_lock(&L->met_mu);
    met_hist_observe(&L->met.request_candidates, (double)rq->n_cands);
    pthread_mutex_unlock(&L->met_mu);
    r->t_enq = r->t_parsed;
    atomic_store_explicit(&r->t_first, r->t_parsed, memory_order_relaxed);
    atomic_store_explicit(&r->t_last, r->t_parsed, memory_order_relaxed);
    if (rq->n_cands == 0) {
        r->st = ST_READY;
        return MHD_YES; /* answered by the caller's READY branch */
    }
    /* A large request on a model whose layers outgrow the caches scores
     * faster as one batch with its layers split across the idle workers
     * than cut by rows, each worker streaming every weight. */
    size_t piece = rq->n_cands < s->cfg->max_batch_rows ? rq->n_cands : s->cfg->max_batch_rows;
    r->job = (batch_job){.req = &r->t, .key = r->v->m, .n_rows = (uint32_t)rq->n_cands,
                         .whole = s->sctx.team_helpers && rq->n_cands > s->cfg->split_min_rows &&
                                  dcn_team_pays(r->v->m, piece, s->sctx.team_helpers + 1)};
    if (rq->deadline_ms) {
        r->job.deadline_ns = r->t_arrive + (uint64_t)rq->deadline_ms * 1000000u;
        if (r->job.deadline_ns <= r->t_parsed) {
            snprintf(r->msg, sizeof r->msg, "deadline of %lld ms passed while parsing", (long long)rq->deadline_ms);
            return send_error(r, RK_EDEADLINE, r->msg);
        }
    }
    r->t_enq = batch_now_ns();
    /* set by the first and last batch back; written before the push makes
     * the rows visible to workers */
    atomic_store_explicit(&r->t_first, 0, memory_order_relaxed);
    atomic_store_explicit(&r->t_last, 0, memory_order_relaxed);
    atomic_store_explicit(&r->rows_left, r->job.n_rows, memory_order_relaxed);
    r->st = ST_QUEUED;
    int rc = batch_push(s->q, &r->job, r->t_enq);
    if (rc < 0) {
        r->st = ST_DECODED;
        if (rc == RK_EBUSY) atomic_store_explicit(&s->shedding, 1, memory_order_relaxed);
        snprintf(r->msg, sizeof r->msg, rc == RK_EBUSY ? "queue full (%zu rows waiting)" : "shutting down",
                 batch_queued_rows(s->q));
        return send_error(r, rc, r->msg);
    }
    L->queued++;
    if (r->job.deadline_ns && L->deadline_jobs++ == 0 && !L->expire_running) {
        uv_timer_start(&L->expire_timer, on_expire_timer, 1, 1);
        L->expire_running = 1;
    }
    MHD_suspend_connection(r->conn);
    return MHD_YES;
}

/* Starts a /rank request whose body is complete: decodes it here, or hands
 * the body to a worker and suspends the connection until it is back. */
static enum MHD_Result rank_start(srv_loop *L, srv_req *r)
{
    srv *s = L->s;
    if (r->too_big) {
        snprintf(r->msg, sizeof r->msg, "body over the limit of %llu bytes",
                 (unsigned long long)s->cfg->max_body_bytes);
        return send_error(r, RK_ETOOBIG, r->msg);
    }
    if (r->body_len >= s->decode_offload_bytes) {
        r->task = (batch_task){.run = decode_task};
        r->st = ST_DECODING; /* before the push: the task may be back at once */
        if (batch_push_task(s->q, &r->task) == 0) {
            MHD_suspend_connection(r->conn);
            return MHD_YES;
        }
        r->st = ST_READING; /* the queue is closed (shutting down): decode here */
    }
    decode_body(r);
    return rank_queue(L, r);
}

/* ------------------------------------------------------------ shadow scoring */

/* How long a shadow's rows may wait in the low-priority lane before they
 * are dropped: under sustained load they are never taken. */
#define SHADOW_DEADLINE_NS 2000000000ull

static void on_expire_timer(uv_timer_t *t);

/* Counts a shadow's outcome and frees it (its loop). */
static void shadow_end(srv_loop *L, srv_req *S, models_shadow_outcome o, double diff, double corr)
{
    if (o == MODELS_SHADOW_FAILED) {
        char n1[160], m1[600];
        log_msg(LOG_DEBUG, "shadow scoring failed", "\"model\":\"%s\",\"version\":\"%s\",\"error\":\"%s\"",
                log_esc(S->v->name, n1, sizeof n1), S->v->label, log_esc(S->msg[0] ? S->msg : "out of memory", m1, sizeof m1));
    }
    models_shadow_result(L->s->models, S->v->name, S->v->number, o, diff, corr);
    atomic_fetch_sub_explicit(&L->s->shadows, 1, memory_order_relaxed);
    req_free(L, S);
}

typedef struct ranked {
    float score;
    uint32_t i;
} ranked;

static int by_score(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* Writes the ranks of x[0..n) into rank (ties: their mean rank); tmp has
 * n entries. NaN scores rank as equals of each other, lowest. */
static void ranks_of(const float *x, size_t n, ranked *tmp, double *rank)
{
    for (size_t i = 0; i < n; i++) tmp[i] = (ranked){isnan(x[i]) ? -INFINITY : x[i], (uint32_t)i};
    qsort(tmp, n, sizeof *tmp, by_score);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && tmp[j + 1].score == tmp[i].score) j++;
        for (size_t k = i; k <= j; k++) rank[tmp[k].i] = (double)(i + j) / 2;
        i = j + 1;
    }
}

/* Spearman's rho of a and b (n >= 2; NaN when either is constant), and
 * their mean absolute difference in *diff over the pairs both finite (NaN
 * when none is). */
static double compare_scores(const float *a, const float *b, size_t n, double *diff)
{
    double d = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) continue;
        d += fabs((double)a[i] - (double)b[i]);
        k++;
    }
    *diff = k ? d / (double)k : NAN;
    if (n < 2) return NAN;
    ranked *tmp = malloc(n * sizeof *tmp);
    double *ra = malloc(n * sizeof *ra), *rb = malloc(n * sizeof *rb);
    double rho = NAN;
    if (tmp && ra && rb) {
        ranks_of(a, n, tmp, ra);
        ranks_of(b, n, tmp, rb);
        double mean = (double)(n - 1) / 2, sab = 0, saa = 0, sbb = 0;
        for (size_t i = 0; i < n; i++) {
            sab += (ra[i] - mean) * (rb[i] - mean);
            saa += (ra[i] - mean) * (ra[i] - mean);
            sbb += (rb[i] - mean) * (rb[i] - mean);
        }
        if (saa > 0 && sbb > 0) rho = sab / sqrt(saa * sbb);
    }
    free(tmp);
    free(ra);
    free(rb);
    return rho;
}

/* After r's answer is encoded: scores the same request with its model's
 * shadow version, off the critical path. Only while the server is
 * running with an idle worker and no row waiting (else counted as
 * skipped): a shadow is its own request object, not tied to r's
 * connection, decoded by a worker task against the shadow version and
 * queued in the low-priority lane (batch.h), whose rows wait only for idle
 * workers and are dropped after SHADOW_DEADLINE_NS. It takes r's body and
 * scores. */
static void shadow_start(srv_loop *L, srv_req *r)
{
    srv *s = L->s;
    mv *sv = r->shadow_v;
    if (!sv) return;
    r->shadow_v = NULL;
    srv_req *S = NULL;
    if (phase_of(s) != PH_RUNNING || !r->body || !r->t.scores || pool_idle_workers(s->pool) == 0 ||
        batch_queued_rows(s->q) != 0 || atomic_load_explicit(&s->shadows, memory_order_relaxed) >= s->workers ||
        !(S = calloc(1, sizeof *S))) {
        models_shadow_result(s->models, sv->name, sv->number, MODELS_SHADOW_SKIPPED, 0, NAN);
        mv_release(sv);
        return;
    }
    atomic_fetch_add_explicit(&s->shadows, 1, memory_order_relaxed);
    S->s = s;
    S->L = L;
    S->is_shadow = 1;
    S->rt = R_RANK;
    S->mh = MET_H_RANK;
    S->v = sv;
    S->body = r->body;
    S->body_len = r->body_len;
    S->body_cap = r->body_cap;
    r->body = NULL;
    S->primary = r->t.scores;
    r->t.scores = NULL;
    S->t_arrive = batch_now_ns();
    snprintf(S->path, sizeof S->path, "(shadow)");
    S->next = L->live;
    if (L->live) L->live->prev = S;
    L->live = S;
    atomic_fetch_add_explicit(&L->n_live, 1, memory_order_relaxed);
    S->task = (batch_task){.run = decode_task, .low = 1};
    S->st = ST_DECODING;
    if (batch_push_task(s->q, &S->task) != 0) shadow_end(L, S, MODELS_SHADOW_SKIPPED, 0, NAN);
}

/* A shadow's decode or rows came back (its loop): queue its rows, or
 * compare its scores with the served ones and count the result. */
static void shadow_step(srv_loop *L, srv_req *S)
{
    srv *s = L->s;
    if (S->st == ST_DECODING) {
        free(S->body);
        S->body = NULL;
        if (S->dec_rc < 0 || !S->rq->n_cands) {
            shadow_end(L, S, S->dec_rc < 0 ? MODELS_SHADOW_FAILED : MODELS_SHADOW_SKIPPED, 0, NAN);
            return;
        }
        rk_request *rq = S->rq;
        S->t.rq = rq;
        S->t.scores = malloc(rq->n_cands * sizeof(float));
        S->t.logits = malloc(rq->n_cands * sizeof(float));
        if (!S->t.scores || !S->t.logits) {
            shadow_end(L, S, MODELS_SHADOW_FAILED, 0, NAN);
            return;
        }
        uint64_t now = batch_now_ns();
        S->job = (batch_job){.req = &S->t, .key = S->v->m, .n_rows = (uint32_t)rq->n_cands, .low = 1,
                             .deadline_ns = now + SHADOW_DEADLINE_NS};
        atomic_store_explicit(&S->t_first, 0, memory_order_relaxed);
        atomic_store_explicit(&S->t_last, 0, memory_order_relaxed);
        atomic_store_explicit(&S->rows_left, S->job.n_rows, memory_order_relaxed);
        S->st = ST_QUEUED;
        if (batch_push(s->q, &S->job, now) < 0) {
            shadow_end(L, S, MODELS_SHADOW_SKIPPED, 0, NAN);
            return;
        }
        if (L->deadline_jobs++ == 0 && !L->expire_running) {
            uv_timer_start(&L->expire_timer, on_expire_timer, 1, 1);
            L->expire_running = 1;
        }
        return;
    }
    if (S->st != ST_QUEUED) return;
    if (--L->deadline_jobs == 0 && L->expire_running) {
        uv_timer_stop(&L->expire_timer);
        L->expire_running = 0;
    }
    if (atomic_load_explicit(&S->expired, memory_order_relaxed)) {
        shadow_end(L, S, MODELS_SHADOW_DROPPED, 0, NAN);
    } else if (atomic_load_explicit(&S->failed, memory_order_relaxed)) {
        shadow_end(L, S, MODELS_SHADOW_FAILED, 0, NAN);
    } else {
        double diff, rho = compare_scores(S->primary, S->t.scores, S->rq->n_cands, &diff);
        shadow_end(L, S, MODELS_SHADOW_SCORED, diff, rho);
    }
}

/* Appends "name;dur=M.mmm" (us as milliseconds, three decimals) at p;
 * returns the end. Integer formatting: snprintf's %f took 8% of the loop's
 * instructions on a 10-candidate request. */
static char *put_dur(char *p, const char *name, uint64_t us)
{
    char digits[24];
    int n = 0;
    uint64_t ms = us / 1000;
    do digits[n++] = (char)('0' + ms % 10); while ((ms /= 10) && n < 20);
    while (*name) *p++ = *name++;
    memcpy(p, ";dur=", 5);
    p += 5;
    while (n) *p++ = digits[--n];
    unsigned frac = (unsigned)(us % 1000);
    *p++ = '.';
    *p++ = (char)('0' + frac / 100);
    *p++ = (char)('0' + frac / 10 % 10);
    *p++ = (char)('0' + frac % 10);
    return p;
}

/* Writes the Server-Timing header value of lat into out (>= 256 bytes). */
static void server_timing(char *out, const rk_latency *lat)
{
    const char *names[5] = {"parse", "queue", "inference", "encode", "total"};
    const uint64_t us[5] = {lat->parse_us, lat->queue_us, lat->inference_us, lat->encode_us, lat->total_us};
    char *p = out;
    for (int i = 0; i < 5; i++) {
        if (i) {
            *p++ = ',';
            *p++ = ' ';
        }
        p = put_dur(p, names[i], us[i]);
    }
    *p = 0;
}

/* Ranks, encodes and answers a /rank request whose rows are all back. */
static enum MHD_Result rank_finish(srv_loop *L, srv_req *r)
{
    if (atomic_load_explicit(&r->expired, memory_order_relaxed)) {
        snprintf(r->msg, sizeof r->msg, "deadline of %lld ms passed before scoring finished",
                 (long long)r->rq->deadline_ms);
        return send_error(r, RK_EDEADLINE, r->msg);
    }
    if (r->err) return send_error(r, r->err, r->msg);
    rk_request *rq = r->rq;
    size_t n = rq->n_cands;
    uint64_t t_first = atomic_load_explicit(&r->t_first, memory_order_relaxed);
    uint64_t t_last = atomic_load_explicit(&r->t_last, memory_order_relaxed);
    if (!t_first) t_first = t_last = r->t_enq; /* no row was scored */
    uint32_t *order = malloc((n + 1) * sizeof *order);
    if (!order) return send_error(r, RK_ENOMEM, NULL);
    uint64_t t0 = batch_now_ns();
    size_t k = rk_rank(r->t.scores, n, rq->top_k, order);
    rk_buf b = {0};
    rk_encode_head(&b, rq, r->v->name, r->v->label, r->t.scores, r->t.logits, order, k);
    free(order);
    uint64_t t1 = batch_now_ns();
    rk_latency lat = {
        .total_us = (t1 - r->t_arrive) / 1000,
        .parse_us = (r->t_parsed - r->t_arrive) / 1000,
        .queue_us = (t_first - r->t_enq) / 1000,
        .inference_us = (t_last - t_first) / 1000,
        .encode_us = (t1 - t0) / 1000,
    };
    rk_encode_tail(&b, &lat);
    shadow_start(L, r); /* after the encode: it takes the scores and the body */
    char timing[256];
    server_timing(timing, &lat);
    const char *hdrs[] = {"Server-Timing", timing, NULL};
    met_set *m = &L->met;
    pthread_mutex_lock(&L->met_mu);
    m->candidates_scored += n;
    met_hist_observe(&m->request_seconds, (t1 - r->t_arrive) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_PARSE], (r->t_parsed - r->t_arrive) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_QUEUE], (t_first - r->t_enq) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_INFERENCE], (t_last - t_first) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_ENCODE], (t1 - t0) * 1e-9);
    pthread_mutex_unlock(&L->met_mu);
    mv_count(r->v, n, (t1 - r->t_arrive) * 1e-9);
    return send_buf(r, 200, &b, "application/json", hdrs);
}

/* ------------------------------------------------------------ GET endpoints */

static json_t *json_float(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static const char *cross_names[] = {"vector", "full", "lowrank", "mix"};
static const char *act_names[] = {"identity", "relu", "tanh", "hard_tanh", "sigmoid"};
static const char *gate_names[] = {"softmax", "sigmoid", "constant"};
static const char *combine_names[] = {"stacked", "parallel", "cross_only"};
static const char *mapping_names[] = {"index", "hex_mod", "hash_mod", "vocab"};

/* Describes a version being served (the path's, or the default one):
 * identity, features and architecture. */
static enum MHD_Result send_model(srv *s, srv_req *r)
{
    mv *v;
    int rc = models_route(s->models, r->route_model[0] ? r->route_model : NULL, r->route_version, NULL, &v, NULL, r->msg,
                          sizeof r->msg);
    if (rc == RK_ESCHEMA && !r->route_model[0]) { /* several models: the list, and where to look */
        char list[160];
        const char *lp = strchr(r->msg, '(');
        snprintf(list, sizeof list, "%.150s", lp ? lp : "(GET /v1/models lists them)");
        snprintf(r->msg, sizeof r->msg, "this server serves several models %s: GET /v1/models/{name}/versions/{version} "
                                        "describes one", list);
    }
    if (rc < 0) return send_error(r, rc, r->msg);
    double loaded_unix = v->loaded_unix;
    const dcn_model *m = v->m;
    const dcn_info *in = dcn_model_info(m);
    json_t *dense = json_array(), *sparse = json_array(), *bottom = json_array(), *deep = json_array();
    for (size_t j = 0; j < in->n_dense; j++) {
        const dcn_dense_spec *d = dcn_dense(m, j);
        json_array_append_new(dense, json_pack("{s:s, s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o}",
            "name", d->name, "default", json_float(d->default_value), "clip_min", json_float(d->clip_min),
            "clip_max", json_float(d->clip_max), "transform", d->transform == DCN_TRANSFORM_LOG ? "log" : "none",
            "log_shift", json_float(d->log_shift), "log_floor", json_float(d->log_floor),
            "mean", json_float(d->mean), "std", json_float(d->std)));
    }
    for (size_t f = 0; f < in->n_sparse; f++) {
        const dcn_sparse_spec *sp = dcn_sparse(m, f);
        json_array_append_new(sparse, json_pack("{s:s, s:I, s:I, s:I, s:s, s:s, s:I, s:I, s:I}",
            "name", sp->name, "vocab_size", (json_int_t)sp->vocab_size, "dim", (json_int_t)sp->dim,
            "max_ids", (json_int_t)sp->max_ids, "pooling", sp->pooling == DCN_POOL_MEAN ? "mean" : "sum",
            "mapping", mapping_names[sp->mapping & 3], "oov_buckets", (json_int_t)sp->oov_buckets,
            "missing_row", (json_int_t)sp->missing_row, "unknown_row", (json_int_t)sp->unknown_row));
    }
    for (size_t i = 0; i < in->n_bottom; i++) json_array_append_new(bottom, json_integer(in->bottom_sizes[i]));
    for (size_t i = 0; i < in->n_deep; i++) json_array_append_new(deep, json_integer(in->deep_sizes[i]));
    char crc[16];
    snprintf(crc, sizeof crc, "%08x", (unsigned)in->crc32);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:o, s:s, s:s, s:I, s:I, s:s, s:I, s:f, s:{s:o, s:o}, s:{s:I, s:I, s:o, s:{s:s, s:I, s:I, s:I, s:s, s:s, s:b}, s:o, s:s, s:f}}",
        "name", v->name, "version", v->label, "model_version", in->version,
        "description", in->description ? in->description : "",
        "format_version", (json_int_t)in->format_version, "file_bytes", (json_int_t)in->file_bytes,
        "crc32", in->has_crc32 ? json_string(crc) : json_null(), "kernels", dcn_kernels_name(),
        "dense_precision", in->int8 ? "int8" : in->bf16 ? "bf16" : "as stored", "dense_bytes", (json_int_t)in->packed_bytes,
        "huge_page_bytes", (json_int_t)in->huge_bytes, "huge_pages", dcn_huge_pages(),
        "int8_smoothed", (json_int_t)in->int8_smoothed, "loaded_at", loaded_unix,
        "features", "dense", dense, "sparse", sparse,
        "architecture", "d", (json_int_t)in->d, "dense_dim", (json_int_t)in->dense_dim, "bottom", bottom,
        "cross", "kind", cross_names[in->cross_kind & 3], "layers", (json_int_t)in->cross_layers,
        "rank", (json_int_t)in->rank, "experts", (json_int_t)in->experts,
        "activation", act_names[in->activation % 5], "gate", gate_names[in->gate % 3], "gate_shared", in->gate_shared,
        "deep", deep, "combine", combine_names[in->combine % 3], "flops_per_row", in->flops_per_row);
    char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    mv_release(v);
    if (!txt) return send_error(r, RK_EINTERNAL, "cannot describe the model");
    rk_buf b = {.data = txt, .len = strlen(txt), .cap = strlen(txt) + 1};
    return send_buf(r, 200, &b, "application/json", NULL);
}

/* GET /v1/models: every model, its versions and their states; GET
 * /v1/models/{name}: one of them. */
static enum MHD_Result send_models(srv *s, srv_req *r)
{
    rk_buf b = {0};
    if (r->rt == R_MODELS) rk_buf_puts(&b, "{\"models\":");
    int rc = models_json(s->models, r->rt == R_MODELS ? NULL : r->route_model, &b);
    if (rc < 0) {
        free(b.data);
        mv *v = NULL;
        models_route(s->models, r->route_model, 0, NULL, &v, NULL, r->msg, sizeof r->msg); /* words the 404 */
        mv_release(v);
        return send_error(r, RK_ENOTFOUND, r->msg);
    }
    if (r->rt == R_MODELS) rk_buf_puts(&b, "}");
    return send_buf(r, 200, &b, "application/json", NULL);
}

/* KServe v2 model metadata (GET /v2/models/{name}[/versions/{v}]) and
 * readiness (.../ready: 200 when that version, or any, serves). */
static enum MHD_Result send_v2_model(srv *s, srv_req *r)
{
    mv *v;
    int rc = models_route(s->models, r->route_model, r->route_version, NULL, &v, NULL, r->msg, sizeof r->msg);
    rk_buf b = {0};
    if (r->rt == R_V2_READY) {
        int ready = rc == 0 && phase_of(s) == PH_RUNNING;
        rk_buf_puts(&b, "{\"name\":");
        rk_buf_json_str(&b, r->route_model, strlen(r->route_model));
        rk_buf_printf(&b, ",\"ready\":%s}", ready ? "true" : "false");
        mv_release(v);
        if (rc == RK_ENOTFOUND) {
            free(b.data);
            return send_error(r, rc, r->msg);
        }
        return send_buf(r, ready ? 200 : 503, &b, "application/json", NULL);
    }
    if (rc < 0) return send_error(r, rc, r->msg);
    const dcn_info *in = dcn_model_info(v->m);
    rk_buf_puts(&b, "{\"name\":");
    rk_buf_json_str(&b, v->name, strlen(v->name));
    rk_buf_puts(&b, ",\"versions\":[");
    mv **all;
    size_t n = models_serving_list(s->models, &all), k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(all[i]->name, v->name)) {
            rk_buf_puts(&b, k++ ? "," : "");
            rk_buf_json_str(&b, all[i]->label, strlen(all[i]->label));
        }
        mv_release(all[i]);
    }
    free(all);
    rk_buf_puts(&b, "],\"platform\":\"dcnserve\",\"inputs\":[");
    for (size_t j = 0; j < in->n_dense; j++) {
        const char *nm = dcn_dense(v->m, j)->name;
        rk_buf_puts(&b, j ? ",{\"name\":" : "{\"name\":");
        rk_buf_json_str(&b, nm, strlen(nm));
        rk_buf_puts(&b, ",\"datatype\":\"FP32\",\"shape\":[-1]}");
    }
    for (size_t f = 0; f < in->n_sparse; f++) {
        const char *nm = dcn_sparse(v->m, f)->name;
        rk_buf_puts(&b, f || in->n_dense ? ",{\"name\":" : "{\"name\":");
        rk_buf_json_str(&b, nm, strlen(nm));
        rk_buf_puts(&b, ",\"datatype\":\"BYTES\",\"shape\":[-1]}");
    }
    rk_buf_puts(&b, "],\"outputs\":[{\"name\":\"score\",\"datatype\":\"FP32\",\"shape\":[-1]}]}");
    mv_release(v);
    return send_buf(r, 200, &b, "application/json", NULL);
}

/* POST /admin/models/{name}/canary {"version": v, "percent": p}: sets the
 * split; {"percent": 0} removes it. POST /admin/models/{name}/shadow
 * {"version": v}: sets the shadow version; 0 or null stops it. */
static enum MHD_Result send_canary(srv *s, srv_req *r)
{
    json_error_t je;
    int shadow = r->rt == R_SHADOW;
    json_t *o = json_loadb(r->body ? r->body : "", r->body_len, JSON_REJECT_DUPLICATES, &je);
    json_t *jv = o ? json_object_get(o, "version") : NULL, *jp = o ? json_object_get(o, "percent") : NULL;
    uint64_t version = 0;
    int rc = 0;
    if (!o || !json_is_object(o) || (shadow && (json_object_size(o) != 1 || !jv)) ||
        (!shadow && json_object_size(o) != (size_t)(jv != NULL) + (jp != NULL))) {
        snprintf(r->msg, sizeof r->msg, shadow ? "expected a JSON object {\"version\": n} (0 or null: no shadow)"
                                               : "expected a JSON object {\"version\": n, \"percent\": p}");
        rc = RK_ESCHEMA;
    } else if (shadow) {
        if (json_is_integer(jv) && json_integer_value(jv) >= 0 && json_integer_value(jv) <= (1ll << 53)) {
            version = (uint64_t)json_integer_value(jv);
        } else if (json_is_string(jv) && json_string_length(jv) && json_string_length(jv) <= 16 &&
                   strspn(json_string_value(jv), "0123456789") == json_string_length(jv)) {
            version = strtoull(json_string_value(jv), NULL, 10);
        } else if (!json_is_null(jv)) {
            snprintf(r->msg, sizeof r->msg, "version: expected the shadow's version number, or 0 or null");
            rc = RK_ESCHEMA;
        }
    } else if (!jp || !json_is_number(jp)) {
        snprintf(r->msg, sizeof r->msg, "percent: expected a number from 0 to 100");
        rc = RK_ESCHEMA;
    } else if (jv && json_is_integer(jv) && json_integer_value(jv) >= 1) {
        version = (uint64_t)json_integer_value(jv);
    } else if (jv && json_is_string(jv) && strspn(json_string_value(jv), "0123456789") == strlen(json_string_value(jv)) &&
               json_string_length(jv) && json_string_length(jv) <= 16) {
        version = strtoull(json_string_value(jv), NULL, 10);
    } else if (json_number_value(jp) != 0) {
        snprintf(r->msg, sizeof r->msg, "version: expected the canary's version number");
        rc = RK_ESCHEMA;
    }
    double percent = rc == 0 && !shadow ? json_number_value(jp) : 0;
    json_decref(o);
    if (rc == 0)
        rc = shadow ? models_set_shadow(s->models, r->route_model, version, r->msg, sizeof r->msg)
                    : models_set_canary(s->models, r->route_model, version, percent, r->msg, sizeof r->msg);
    if (rc < 0) return send_error(r, rc, r->msg);
    rk_buf b = {0};
    rk_buf_puts(&b, "{\"status\":\"ok\",\"model\":");
    models_json(s->models, r->route_model, &b);
    rk_buf_puts(&b, "}");
    return send_buf(r, 200, &b, "application/json", NULL);
}


static void sum_metrics(srv *s, met_set *sum, met_loop_stat *ls);

/* Renders /metrics: the shared counters plus every loop's, summed here
 * under each one's lock, and one line per loop for its own figures. */
static enum MHD_Result send_metrics(srv *s, srv_req *r)
{
    mv **all;
    size_t n_serving = models_serving_list(s->models, &all);
    /* the single-model gauges show the first version served */
    const dcn_info *in = n_serving ? dcn_model_info(all[0]->m) : NULL;
    met_loop_stat *ls = calloc(s->n_loops, sizeof *ls);
    met_set *sum = malloc(sizeof *sum);
    if (!ls || !sum) {
        free(ls);
        free(sum);
        for (size_t i = 0; i < n_serving; i++) mv_release(all[i]);
        free(all);
        return send_error(r, RK_ENOMEM, NULL);
    }
    sum_metrics(s, sum, ls);
    uint64_t inflight = 0;
    for (size_t i = 0; i < s->n_loops; i++) inflight += atomic_load_explicit(&s->loops[i].rank_live, memory_order_relaxed);
    met_gauges g = {
        .inflight_requests = inflight,
        .queue_rows = batch_queued_rows(s->q),
        .workers = pool_workers(s->pool),
        .ready = phase_of(s) == PH_RUNNING && n_serving > 0,
        .model_name = in ? all[0]->name : "",
        .model_version = in ? all[0]->label : "",
        .model_crc32 = in ? in->crc32 : 0,
        .model_loaded_unix_s = in ? all[0]->loaded_unix : 0,
        .start_unix_s = s->start_unix,
        .n_loops = s->n_loops,
        .loops = ls,
    };
    score_stats st = score_get_stats(&s->sctx);
    g.states_prepared = st.prepared;
    g.states_built_on_request = st.built_on_request;
    rk_buf b = {0};
    met_render(sum, &g, &b);
    for (size_t i = 0; i < n_serving; i++) mv_release(all[i]);
    free(all);
    models_metrics(s->models, &b); /* after the releases: in_flight counts requests only */
    free(ls);
    free(sum);
    return send_buf(r, 200, &b, "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* ------------------------------------------------------------ status page */

/* Sums every loop's request metrics into sum (the shared batch metrics
 * first) and fills ls (n_loops entries, may be NULL) with each loop's own
 * figures; any thread. */
static void sum_metrics(srv *s, met_set *sum, met_loop_stat *ls)
{
    pthread_mutex_lock(&s->met_mu);
    *sum = s->met;
    pthread_mutex_unlock(&s->met_mu);
    uint64_t now_ns = uv_hrtime();
    for (size_t i = 0; i < s->n_loops; i++) {
        srv_loop *L = &s->loops[i];
        met_loop_stat st = {0};
        pthread_mutex_lock(&L->met_mu);
        met_add(sum, &L->met);
        for (int h = 0; h < MET_N_HANDLERS; h++)
            for (int k = 0; k < MET_N_STATUS; k++) st.requests += L->met.requests[h][k];
        pthread_mutex_unlock(&L->met_mu);
        uint64_t idle_ns = uv_metrics_idle_time(&L->loop), up_ns = now_ns - L->start_ns;
        st.busy_s = up_ns > idle_ns ? (double)(up_ns - idle_ns) * 1e-9 : 0;
        struct timespec cpu;
        if (L->cpu_clock_ok && clock_gettime(L->cpu_clock, &cpu) == 0)
            st.cpu_s = (double)cpu.tv_sec + (double)cpu.tv_nsec * 1e-9;
        st.connections = atomic_load_explicit(&L->n_conns, memory_order_relaxed);
        if (ls) ls[i] = st;
    }
}

/* Loop 0's timer: one sample of the cumulative figures for the page. */
static void on_status_timer(uv_timer_t *t)
{
    srv *s = t->data;
    met_set *sum = malloc(sizeof *sum);
    met_loop_stat *ls = calloc(s->n_loops, sizeof *ls);
    status_sample sm = {.t = unix_now(), .n_loops = s->n_loops, .workers = s->workers};
    if (!sum || !ls || models_status(s->models, &sm) < 0) {
        free(sum);
        free(ls);
        return; /* out of memory: the next tick tries again */
    }
    sum_metrics(s, sum, ls);
    sm.candidates = sum->candidates_scored;
    sm.shed = sum->rejections[-RK_EBUSY];
    sm.rank_ok = sum->requests[MET_H_RANK][met_status_index(200)];
    sm.request_seconds = sum->request_seconds;
    sm.queue_seconds = sum->phase_seconds[MET_P_QUEUE];
    sm.worker_busy_s = sum->inference_seconds.sum;
    for (size_t i = 0; i < s->n_loops; i++) sm.loop_busy_s += ls[i].busy_s;
    status_push(s->status, &sm);
    free(sum);
    free(ls);
    models_reap(s->models); /* a version whose last release raced with its unloading */
}

static enum MHD_Result send_status(srv *s, srv_req *r)
{
    static const char *const phases[] = {"running", "draining", "closing", "stopped"};
    int ph = phase_of(s);
    status_info in = {.kernels = dcn_kernels_name(), .start_unix = s->start_unix,
                      .ready = ph == PH_RUNNING && models_serving(s->models) > 0, .phase = phases[ph & 3]};
    rk_buf b = {0};
    status_render(s->status, &in, &b);
    static const char *const hdrs[] = {"Cache-Control", "no-store", "Content-Security-Policy",
                                       "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'", NULL};
    return send_buf(r, 200, &b, "text/html; charset=utf-8", hdrs);
}

/* ------------------------------------------------------------ reload */

/* Brings the served models in line with the file or the repository
 * (models_sync: loads, warms, prepares worker states, unloads); on the
 * libuv threadpool. */
static void reload_work(uv_work_t *w)
{
    srv *s = w->data;
    s->reload_err[0] = 0;
    s->reload_rc = models_sync(s->models, &s->reload_change, s->reload_err, sizeof s->reload_err);
}

/* Logs the outcome on the loop that started the reload, and resumes the
 * request that asked for it. */
static void reload_after(uv_work_t *w, int status)
{
    srv *s = w->data;
    srv_loop *L = s->reload_loop;
    char esc[300];
    int ok = status == 0 && s->reload_rc == 0;
    const models_change *ch = &s->reload_change;
    pthread_mutex_lock(&s->met_mu);
    if (ok && !ch->failed) {
        if (!s->reload_quiet || ch->loaded || ch->unloaded) s->met.reloads_ok++;
    } else {
        s->met.reloads_failed++;
    }
    pthread_mutex_unlock(&s->met_mu);
    if (!ok)
        log_msg(LOG_ERROR, s->cfg->model_repository[0] ? "model repository unreadable, what was served keeps serving"
                                                       : "model reload failed, the old model keeps serving",
                "\"error\":\"%s\"", log_esc(s->reload_err, esc, sizeof esc));
    else if (!s->reload_quiet || ch->loaded || ch->unloaded || ch->failed)
        log_msg(LOG_INFO, "models synced", "\"loaded\":%u,\"failed\":%u,\"unloading\":%u,\"serving\":%zu", ch->loaded,
                ch->failed, ch->unloaded, models_serving(s->models));
    srv_req *r = s->reload_waiter;
    s->reload_waiter = NULL;
    s->reload_loop = NULL;
    if (r) { /* copied before the next reload can start and overwrite them */
        r->change = s->reload_change;
        if (!ok) {
            r->err = RK_ERELOAD;
            snprintf(r->msg, sizeof r->msg, "%s", s->reload_err[0] ? s->reload_err : "reload failed");
        }
    }
    pthread_mutex_lock(&s->reload_mu);
    s->reloading = 0; /* last: another loop may start the next reload from here */
    pthread_mutex_unlock(&s->reload_mu);
    if (r && L->d) { /* no daemon: stopped at the drain deadline, the request abandoned */
        r->st = ST_READY;
        MHD_resume_connection(r->conn);
        run_mhd(L);
    }
}

/* Starts a background reload from loop L (its result comes back there);
 * quiet: a poll, logged only if it changes something. Returns 0,
 * RK_ECONFLICT or RK_EUNAVAIL. */
static int reload_start(srv_loop *L, srv_req *waiter, int quiet)
{
    srv *s = L->s;
    int rc = 0;
    pthread_mutex_lock(&s->reload_mu);
    if (s->reloading) rc = RK_ECONFLICT;
    else if (phase_of(s) != PH_RUNNING) rc = RK_EUNAVAIL;
    else s->reloading = 1;
    pthread_mutex_unlock(&s->reload_mu);
    if (rc < 0) return rc;
    s->reload_req.data = s;
    s->reload_loop = L;
    s->reload_waiter = waiter;
    s->reload_quiet = quiet;
    if (uv_queue_work(&L->loop, &s->reload_req, reload_work, reload_after) != 0) {
        s->reload_loop = NULL;
        s->reload_waiter = NULL;
        pthread_mutex_lock(&s->reload_mu);
        s->reloading = 0;
        pthread_mutex_unlock(&s->reload_mu);
        return RK_EINTERNAL;
    }
    if (!quiet) log_msg(LOG_INFO, "model reload started", NULL);
    return 0;
}

static void on_poll(uv_timer_t *t)
{
    srv *s = t->data;
    (void)reload_start(&s->loops[0], NULL, 1); /* one in flight already: the next tick */
}

/* The answer to POST /admin/reload: what the sync changed, and every
 * version served. */
static enum MHD_Result send_reloaded(srv *s, srv_req *r)
{
    if (r->err) return send_error(r, r->err, r->msg);
    const models_change *ch = &r->change;
    mv **all;
    size_t n = models_serving_list(s->models, &all);
    rk_buf b = {0};
    rk_buf_puts(&b, "{\"status\":\"reloaded\"");
    if (n) {
        rk_buf_puts(&b, ",\"model\":{\"name\":");
        rk_buf_json_str(&b, all[0]->name, strlen(all[0]->name));
        rk_buf_puts(&b, ",\"version\":");
        rk_buf_json_str(&b, all[0]->label, strlen(all[0]->label));
        rk_buf_puts(&b, "}");
    }
    rk_buf_printf(&b, ",\"loaded\":%u,\"failed\":%u,\"unloading\":%u", ch->loaded, ch->failed, ch->unloaded);
    if (ch->failed) {
        rk_buf_puts(&b, ",\"first_error\":");
        rk_buf_json_str(&b, ch->first_error, strlen(ch->first_error));
    }
    rk_buf_puts(&b, ",\"serving\":[");
    for (size_t i = 0; i < n; i++) {
        rk_buf_puts(&b, i ? ",{\"model\":" : "{\"model\":");
        rk_buf_json_str(&b, all[i]->name, strlen(all[i]->name));
        rk_buf_puts(&b, ",\"version\":");
        rk_buf_json_str(&b, all[i]->label, strlen(all[i]->label));
        rk_buf_puts(&b, "}");
        mv_release(all[i]);
    }
    free(all);
    rk_buf_puts(&b, "]}");
    return send_buf(r, 200, &b, "application/json", NULL);
}


/* ------------------------------------------------------------ MHD callbacks */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    srv_loop *L = cls;
    srv *s = L->s;
    srv_req *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        r->s = s;
        r->L = L;
        r->conn = conn;
        r->method = method;
        r->t_arrive = batch_now_ns();
        snprintf(r->path, sizeof r->path, "%s", url);
        r->rt = route_of(r, url, method, &r->mh);
        r->next = L->live;
        if (L->live) L->live->prev = r;
        L->live = r;
        atomic_fetch_add_explicit(&L->n_live, 1, memory_order_relaxed);
        if (r->rt == R_RANK) atomic_fetch_add_explicit(&L->rank_live, 1, memory_order_relaxed);
        if (phase_of(s) == PH_CLOSING) { /* the linger restarts when nothing is live again */
            uv_timer_stop(&L->linger_timer);
            L->lingered = 0;
        }
        *con_cls = r;
        int err = 0;
        switch (r->rt) {
        case R_RANK: err = check_rank_headers(r); break;
        case R_RELOAD:
        case R_CANARY:
        case R_SHADOW:
            if (!admin_allowed(s, conn)) {
                err = RK_EFORBIDDEN;
                snprintf(r->msg, sizeof r->msg, "admin endpoints need a loopback client or the admin token");
            }
            break;
        case R_NOTFOUND: err = RK_ENOTFOUND; break;
        case R_METHOD: err = RK_EMETHOD; break;
        default: break;
        }
        if (err) return send_error(r, err, r->msg);
        return MHD_YES;
    }
    if (*upload_size) {
        if ((r->rt == R_RANK || r->rt == R_CANARY || r->rt == R_SHADOW) && r->st == ST_READING)
            append_body(r, upload_data, *upload_size);
        *upload_size = 0;
        if (r->too_big && r->st == ST_READING) return refuse_upload(r);
        return MHD_YES;
    }
    if (r->st == ST_ANSWERED) return MHD_YES;
    switch (r->rt) {
    case R_RANK:
        if (r->st == ST_READING || r->st == ST_DECODED) {
            enum MHD_Result ret = r->st == ST_READING ? rank_start(L, r) : rank_queue(L, r);
            if (r->st != ST_READY) return ret;
        }
        if (r->st == ST_READY) return rank_finish(L, r);
        return MHD_YES;
    case R_LIVE:
        return send_text(r, 200, "application/json", "{\"status\":\"live\"}");
    case R_READY:
        if (phase_of(s) != PH_RUNNING) return send_text(r, 503, "application/json", "{\"status\":\"draining\"}");
        if (!models_serving(s->models))
            return send_text(r, 503, "application/json", "{\"status\":\"no_model\"}");
        return send_text(r, 200, "application/json", "{\"status\":\"ready\"}");
    case R_MODEL: return send_model(s, r);
    case R_MODELS:
    case R_MODEL_ONE: return send_models(s, r);
    case R_V2_MODEL:
    case R_V2_READY: return send_v2_model(s, r);
    case R_CANARY:
    case R_SHADOW:
        if (r->too_big) return send_error(r, RK_ETOOBIG, NULL);
        return send_canary(s, r);
    case R_METRICS: return send_metrics(s, r);
    case R_STATUS: return send_status(s, r);
    case R_RELOAD:
        if (r->st == ST_READING) {
            int rc = reload_start(L, r, 0);
            if (rc < 0) return send_error(r, rc, rc == RK_ECONFLICT ? "a reload is already running" : NULL);
            r->st = ST_QUEUED;
            MHD_suspend_connection(conn);
            return MHD_YES;
        }
        if (r->st == ST_READY) return send_reloaded(s, r);
        return MHD_YES;
    default:
        return send_error(r, RK_EINTERNAL, NULL);
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    srv_loop *L = cls;
    srv_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (r->st == ST_QUEUED || r->st == ST_DECODING) {
        /* cannot happen: suspended connections are never completed before
         * they are resumed; keep the memory rather than free it under a worker */
        log_msg(LOG_ERROR, "request completed while queued", NULL);
        return;
    }
    if (L->s->cfg->access_log) {
        char p[200], mname[160], mver[100], mfield[300] = "";
        if (r->v)
            snprintf(mfield, sizeof mfield, ",\"model\":\"%s\",\"version\":\"%s\"",
                     log_esc(r->v->name, mname, sizeof mname), log_esc(r->v->label, mver, sizeof mver));
        log_msg(LOG_INFO, "request", "\"method\":\"%s\",\"path\":\"%s\",\"status\":%d,\"us\":%llu,\"candidates\":%zu%s,\"loop\":%u%s",
                r->method, log_esc(r->path, p, sizeof p), r->status,
                (unsigned long long)((batch_now_ns() - r->t_arrive) / 1000), r->rq ? r->rq->n_cands : 0, mfield,
                L->id, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : ",\"aborted\":true");
    }
    if (!r->status) {
        pthread_mutex_lock(&L->met_mu);
        met_count_request(&L->met, r->mh, 0);
        pthread_mutex_unlock(&L->met_mu);
    }
    req_free(L, r); /* run_mhd stops the daemon afterwards if this was the last */
}

/* Counts the connections each daemon holds (the acceptor's limit and its
 * choice of loop read them). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    srv_loop *L = cls;
    srv *s = L->s;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        atomic_fetch_add_explicit(&L->n_conns, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->n_conns, 1, memory_order_relaxed);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub_explicit(&L->n_conns, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&s->n_conns, 1, memory_order_relaxed);
        if (atomic_load_explicit(&s->accept_paused, memory_order_relaxed)) uv_async_send(&s->loops[0].wake);
    }
}


/* ------------------------------------------------------------ loop glue */

static void maybe_stop(srv_loop *L);

/* Runs L's MHD once and re-arms its timer: MHD's sockets are
 * edge-triggered, so pending work must be driven by the timeout even
 * without new events. Then, once MHD_run has returned, ends L's part of a
 * drain whose last request has just completed (MHD_stop_daemon inside a
 * callback uses freed memory). */
static void on_mhd_timer(uv_timer_t *t);
static void run_mhd(srv_loop *L)
{
    if (!L->d) return;
    MHD_run(L->d);
    maybe_stop(L);
    if (!L->d) return; /* stopped: the timer is closing */
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(L->d, &to) == MHD_YES)
        uv_timer_start(&L->mhd_timer, on_mhd_timer, to > 1000000 ? 1000000 : (uint64_t)to, 0);
    else
        uv_timer_stop(&L->mhd_timer);
}

static void on_mhd_timer(uv_timer_t *t) { run_mhd(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events) { run_mhd(p->data); }

/* Puts r on its loop's inbox and wakes that loop; any thread. */
static void inbox_push(srv_req *r)
{
    srv_loop *L = r->L;
    r->in_next = NULL;
    pthread_mutex_lock(&L->in_mu);
    if (L->in_tail) L->in_tail->in_next = r;
    else L->in_head = r;
    L->in_tail = r;
    pthread_mutex_unlock(&L->in_mu);
    uv_async_send(&L->wake);
}

static void atomic_min_u64(atomic_ullong *a, unsigned long long v)
{
    unsigned long long cur = atomic_load_explicit(a, memory_order_relaxed);
    while ((cur == 0 || v < cur) && !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                                            memory_order_relaxed)) {}
}

static void atomic_max_u64(atomic_ullong *a, unsigned long long v)
{
    unsigned long long cur = atomic_load_explicit(a, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed, memory_order_relaxed)) {}
}

/* Accounts one returned slice to its request (any thread); the thread that
 * accounts the last row hands the request to its loop. Nothing of r is
 * touched after the decrement unless it was the last. */
static void seg_back(const batch_seg *sg, const batch_work *b, int expired)
{
    srv_req *r = (srv_req *)sg->job->req; /* t is the first member */
    if (expired) {
        atomic_store_explicit(&r->expired, 1, memory_order_relaxed);
    } else {
        if (b->status < 0 && atomic_exchange_explicit(&r->failed, 1, memory_order_relaxed) == 0) {
            r->err = RK_EINTERNAL;
            snprintf(r->msg, sizeof r->msg, "the engine refused the batch: %s", dcn_strerror(b->status));
        }
        atomic_min_u64(&r->t_first, b->start_ns);
        atomic_max_u64(&r->t_last, b->end_ns);
    }
    if (atomic_fetch_sub_explicit(&r->rows_left, sg->n_rows, memory_order_acq_rel) == sg->n_rows) inbox_push(r);
}

/* Drains the pool's done-list (the pool's notify: on the worker that
 * finished a batch, or on the loop whose timer expired rows): counts each
 * batch, accounts every returned row, and hands every request that is
 * complete, or whose decode task is back, to its loop. */
static void route_done(srv *s)
{
    batch_work *b = pool_take_done(s->pool);
    while (b) {
        batch_work *nx = b->next;
        if (b->task) inbox_push((srv_req *)((char *)b->task - offsetof(srv_req, task)));
        if (b->n_segs) {
            pthread_mutex_lock(&s->met_mu);
            s->met.batches++;
            if (b->status < 0) s->met.batch_errors++;
            met_hist_observe(&s->met.inference_seconds, (b->end_ns - b->start_ns) * 1e-9);
            met_hist_observe(&s->met.batch_rows, (double)b->n_rows);
            pthread_mutex_unlock(&s->met_mu);
            if (b->status < 0)
                log_msg(LOG_ERROR, "batch failed", "\"error\":\"%s\",\"rows\":%zu", dcn_strerror(b->status), b->n_rows);
        }
        for (size_t i = 0; i < b->n_segs; i++) seg_back(&b->segs[i], b, 0);
        for (size_t i = 0; i < b->n_expired; i++) seg_back(&b->expired[i], b, 1);
        batch_free(b);
        b = nx;
    }
}

static void pool_notify(void *ctx) { route_done(ctx); }

/* Adds a socket the acceptor handed to L to L's daemon. */
static void add_conn(srv_loop *L, handed_conn *c)
{
    srv *s = L->s;
    if (!L->d || MHD_add_connection(L->d, c->fd, (const struct sockaddr *)&c->addr, c->addr_len) != MHD_YES) {
        if (!L->d) close(c->fd); /* MHD closes it on failure */
        log_msg(LOG_WARN, "connection dropped: the loop could not take it", "\"loop\":%u", L->id);
    }
    atomic_fetch_sub_explicit(&L->handing, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&s->handing, 1, memory_order_relaxed);
}

static void loop_stop(srv_loop *L);
static void control_check(srv *s);
static void accept_resume(srv *s);
static void on_close_noop(uv_handle_t *h) {}

/* Takes L's inbox: adds handed sockets to its daemon; resumes requests
 * whose decode or rows came back. */
static void process_inbox(srv_loop *L)
{
    pthread_mutex_lock(&L->in_mu);
    srv_req *r = L->in_head;
    handed_conn *c = L->in_conns;
    L->in_head = L->in_tail = NULL;
    L->in_conns = NULL;
    pthread_mutex_unlock(&L->in_mu);
    while (c) {
        handed_conn *nx = c->next;
        add_conn(L, c);
        free(c);
        c = nx;
    }
    while (r) {
        srv_req *nx = r->in_next;
        if (!L->d) {
            /* stopped (drain deadline): its connection is gone; the request
             * stays with the abandoned server. Nothing comes back after the
             * workers are joined, so this is only a guard. */
        } else if (r->is_shadow) {
            shadow_step(L, r);
        } else if (r->st == ST_DECODING) {
            r->st = ST_DECODED; /* queue its rows from the handler */
            MHD_resume_connection(r->conn);
        } else if (r->st == ST_QUEUED) {
            req_ready(L, r);
        }
        r = nx;
    }
}

/* L's wake-up: its inbox, then what loop 0 asked (close, stop), then MHD. */
static void on_wake(uv_async_t *a)
{
    srv_loop *L = a->data;
    srv *s = L->s;
    if (L->stopped && L->id != 0 && atomic_load_explicit(&s->close_wakes, memory_order_acquire)) {
        uv_close((uv_handle_t *)a, on_close_noop); /* the last handle: its uv_run returns */
        return;
    }
    process_inbox(L);
    if (L->id == 0) {
        accept_resume(s); /* a connection closed while at the limit */
        control_check(s);
    }
    if (!L->stopped && atomic_load_explicit(&s->finish_now, memory_order_acquire)) loop_stop(L);
    run_mhd(L);
}

static void on_expire_timer(uv_timer_t *t)
{
    srv_loop *L = t->data;
    /* expired rows of any loop go through route_done to their loops; ours
     * come back on our inbox, read on the wake that follows */
    if (pool_expire(L->s->pool, batch_now_ns())) {
        process_inbox(L);
        run_mhd(L);
    }
}

/* ------------------------------------------------------------ drain */

static size_t live_total(srv *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_loops; i++) n += atomic_load_explicit(&s->loops[i].n_live, memory_order_relaxed);
    return n;
}

/* Wakes every loop (loop 0 included): the phase moved, or they must stop. */
static void wake_all(srv *s)
{
    for (size_t i = 0; i < s->n_loops; i++) uv_async_send(&s->loops[i].wake);
}

/* Stops L's part: answers what came back (at the drain deadline), stops
 * its daemon, closes its handles but its wake (closed once every loop has
 * stopped: until then loop 0 may still wake it) and tells loop 0. */
static void loop_stop(srv_loop *L)
{
    srv *s = L->s;
    if (L->stopped) return;
    L->stopped = 1;
    if (atomic_load_explicit(&L->n_live, memory_order_relaxed)) {
        /* drain deadline passed: answer what came back, then cut the rest */
        process_inbox(L);
        for (int i = 0; i < 10; i++) {
            MHD_run(L->d);
            process_inbox(L);
        }
    }
    const union MHD_DaemonInfo *ci = MHD_get_daemon_info(L->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    unsigned open_conns = ci ? ci->num_connections : 0;
    uv_poll_stop(&L->mhd_poll);
    MHD_stop_daemon(L->d);
    L->d = NULL;
    process_inbox(L); /* sockets handed over meanwhile: closed */
    uv_close((uv_handle_t *)&L->mhd_poll, on_close_noop);
    uv_close((uv_handle_t *)&L->mhd_timer, on_close_noop);
    uv_close((uv_handle_t *)&L->expire_timer, on_close_noop);
    uv_close((uv_handle_t *)&L->linger_timer, on_close_noop);
    srv_loop *L0 = &s->loops[0];
    pthread_mutex_lock(&L0->in_mu); /* loop 0 reads it once every loop stopped */
    s->conns_closed_at_stop += open_conns;
    pthread_mutex_unlock(&L0->in_mu);
    atomic_fetch_sub_explicit(&s->loops_running, 1, memory_order_acq_rel);
    if (L->id != 0) uv_async_send(&L0->wake);
    else control_check(s);
}

static void on_linger(uv_timer_t *t)
{
    srv_loop *L = t->data;
    L->lingered = 1;
    run_mhd(L); /* reads what has arrived, then maybe_stop */
}

/* Stops L if the server is closing, no request is live on L and its daemon
 * has no connection left (or the open ones stayed idle for CLOSE_LINGER_MS:
 * the linger starts here); called outside every MHD callback (run_mhd,
 * on_wake). */
static void maybe_stop(srv_loop *L)
{
    if (L->stopped || phase_of(L->s) != PH_CLOSING || atomic_load_explicit(&L->n_live, memory_order_relaxed))
        return;
    const union MHD_DaemonInfo *ci = MHD_get_daemon_info(L->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    if (!ci || ci->num_connections == 0 || L->lingered) {
        loop_stop(L);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&L->linger_timer))
        uv_timer_start(&L->linger_timer, on_linger, CLOSE_LINGER_MS, 0);
}

/* Loop 0: once every loop has stopped, joins the workers, closes the
 * control handles and its wake, which ends its uv_run, and tells the other
 * loops to close their wakes, which ends theirs. */
static void control_check(srv *s)
{
    if (s->stopped_all || atomic_load_explicit(&s->loops_running, memory_order_acquire)) return;
    s->stopped_all = 1;
    atomic_store_explicit(&s->ph, PH_STOPPED, memory_order_release);
    pool_stop(s->pool);
    uv_close((uv_handle_t *)&s->accept_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->drain_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->poll_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->status_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->sig_term, on_close_noop);
    uv_close((uv_handle_t *)&s->sig_int, on_close_noop);
    uv_close((uv_handle_t *)&s->sig_hup, on_close_noop);
    uv_close((uv_handle_t *)&s->loops[0].wake, on_close_noop);
    atomic_store_explicit(&s->close_wakes, 1, memory_order_release);
    for (size_t i = 1; i < s->n_loops; i++) uv_async_send(&s->loops[i].wake);
    log_msg(LOG_INFO, "stopped", "\"exit_code\":%d,\"connections_closed\":%zu", s->exit_code,
            s->conns_closed_at_stop);
}

static void on_drain_timeout(uv_timer_t *t)
{
    srv *s = t->data;
    log_msg(LOG_ERROR, "drain deadline passed with requests in flight", "\"live\":%zu", live_total(s));
    s->exit_code = 1;
    /* every queued row comes back to its loop first; then the loops stop */
    pool_stop(s->pool);
    atomic_store_explicit(&s->finish_now, 1, memory_order_release);
    wake_all(s);
}

/* Stops accepting: the listening socket is closed (loop 0). */
static void close_listener(srv *s)
{
    if (!s->listening) return;
    s->listening = 0;
    uv_poll_stop(&s->listen_poll);
    uv_close((uv_handle_t *)&s->listen_poll, on_close_noop);
    uv_timer_stop(&s->accept_timer);
    close(s->listen_fd);
    s->listen_fd = -1;
    atomic_store_explicit(&s->accept_paused, 0, memory_order_relaxed);
}

/* Closes the listener and lets every loop wait for its live requests. */
static void begin_close(srv *s)
{
    if (phase_of(s) >= PH_CLOSING) return;
    close_listener(s);
    atomic_store_explicit(&s->ph, PH_CLOSING, memory_order_release);
    log_msg(LOG_INFO, "listener closed, finishing requests in flight", "\"live\":%zu", live_total(s));
    uv_timer_start(&s->drain_timer, on_drain_timeout, s->cfg->drain_timeout_ms, 0);
    wake_all(s);
}

static void on_drain_delay(uv_timer_t *t) { begin_close(t->data); }

static void on_signal(uv_signal_t *h, int signum)
{
    srv *s = h->data;
    if (signum == SIGHUP) {
        int rc = reload_start(&s->loops[0], NULL, 0);
        if (rc < 0) log_msg(LOG_WARN, "SIGHUP reload not started", "\"error\":\"%s\"", rk_strerror(rc));
        return;
    }
    int ph = phase_of(s);
    if (ph == PH_RUNNING) {
        atomic_store_explicit(&s->ph, PH_DRAINING, memory_order_release);
        uv_timer_stop(&s->poll_timer);
        log_msg(LOG_INFO, "draining: not ready, still serving", "\"signal\":%d,\"delay_ms\":%llu", signum,
                (unsigned long long)s->cfg->drain_delay_ms);
        if (s->cfg->drain_delay_ms) uv_timer_start(&s->drain_timer, on_drain_delay, s->cfg->drain_delay_ms, 0);
        else begin_close(s);
    } else if (ph == PH_DRAINING) {
        uv_timer_stop(&s->drain_timer);
        begin_close(s); /* a second signal skips the delay */
    }
}


/* ------------------------------------------------------------ acceptor */

static void on_listen(uv_poll_t *p, int status, int events);

/* Stops watching the listening socket (the kernel's backlog holds new
 * clients meanwhile); loop 0 resumes it from its wake or its timer. */
static void accept_pause(srv *s)
{
    uv_poll_stop(&s->listen_poll);
    atomic_store_explicit(&s->accept_paused, 1, memory_order_relaxed);
}

static int at_conn_limit(srv *s)
{
    return atomic_load_explicit(&s->n_conns, memory_order_relaxed) +
               atomic_load_explicit(&s->handing, memory_order_relaxed) >= s->cfg->max_connections;
}

/* Loop 0: resumes accepting when the process is below its connection limit. */
static void accept_resume(srv *s)
{
    if (!s->listening || !atomic_load_explicit(&s->accept_paused, memory_order_relaxed) ||
        uv_is_active((uv_handle_t *)&s->accept_timer) || at_conn_limit(s))
        return;
    atomic_store_explicit(&s->accept_paused, 0, memory_order_relaxed);
    uv_poll_start(&s->listen_poll, UV_READABLE, on_listen);
}

static void on_accept_timer(uv_timer_t *t) { accept_resume(t->data); }

/* The loop with the fewest connections (those being handed over count);
 * ties go round in turn, so short connections one after another spread. */
static srv_loop *pick_loop(srv *s)
{
    srv_loop *best = &s->loops[0];
    size_t best_n = SIZE_MAX;
    s->pick_next = (s->pick_next + 1) % s->n_loops;
    for (size_t k = 0; k < s->n_loops; k++) {
        srv_loop *L = &s->loops[(s->pick_next + k) % s->n_loops];
        size_t n = atomic_load_explicit(&L->n_conns, memory_order_relaxed) +
                   atomic_load_explicit(&L->handing, memory_order_relaxed);
        if (n < best_n) {
            best = L;
            best_n = n;
        }
    }
    return best;
}

/* Accepts what the backlog holds (ACCEPT_BURST at most) and hands each
 * socket to a loop: loop 0 adds its own at once, the others get theirs
 * through their inbox. At the connection limit it stops accepting. */
static void on_listen(uv_poll_t *p, int status, int events)
{
    srv *s = p->data;
    srv_loop *L0 = &s->loops[0];
    int added = 0;
    for (int i = 0; i < ACCEPT_BURST; i++) {
        if (at_conn_limit(s)) {
            accept_pause(s);
            break;
        }
        handed_conn *c = malloc(sizeof *c);
        if (!c) {
            accept_pause(s);
            uv_timer_start(&s->accept_timer, on_accept_timer, ACCEPT_RETRY_MS, 0);
            break;
        }
        c->addr_len = sizeof c->addr;
        c->fd = accept4(s->listen_fd, (struct sockaddr *)&c->addr, &c->addr_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c->fd < 0) {
            int e = errno;
            free(c);
            if (e == EINTR || e == ECONNABORTED) continue;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                log_msg(LOG_WARN, "cannot accept a connection, retrying shortly", "\"error\":\"%s\"", strerror(e));
                accept_pause(s);
                uv_timer_start(&s->accept_timer, on_accept_timer, ACCEPT_RETRY_MS, 0);
            }
            break;
        }
        srv_loop *L = pick_loop(s);
        atomic_fetch_add_explicit(&L->handing, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->handing, 1, memory_order_relaxed);
        if (L == L0) {
            add_conn(L0, c);
            free(c);
            added = 1;
            continue;
        }
        pthread_mutex_lock(&L->in_mu);
        c->next = L->in_conns;
        L->in_conns = c;
        pthread_mutex_unlock(&L->in_mu);
        uv_async_send(&L->wake);
    }
    if (added) run_mhd(L0);
}

/* Opens the listening socket on cfg's host and port (IPv4, IPv6, or both
 * for "::"), non-blocking. Returns the socket or -1 after logging why. */
static int open_listener(const srv_config *cfg)
{
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)cfg->port)};
    struct sockaddr *addr = (struct sockaddr *)&a4;
    socklen_t len = sizeof a4;
    int v6 = 0, one = 1;
    if (inet_pton(AF_INET, cfg->host, &a4.sin_addr) != 1) {
        if (inet_pton(AF_INET6, cfg->host, &a6.sin6_addr) != 1) {
            log_msg(LOG_ERROR, "bad --host (an IPv4 or IPv6 address expected)", NULL);
            return -1;
        }
        addr = (struct sockaddr *)&a6;
        len = sizeof a6;
        v6 = 1;
    }
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) goto fail;
    if (v6) {
        /* "::" also takes IPv4 clients (as v4-mapped addresses) */
        int only6 = !IN6_IS_ADDR_UNSPECIFIED(&a6.sin6_addr);
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &only6, sizeof only6) < 0) goto fail;
    }
    if (bind(fd, addr, len) < 0 || listen(fd, 1024) < 0) goto fail;
    return fd;
fail:;
    char esc[200];
    log_msg(LOG_ERROR, "cannot listen", "\"host\":\"%s\",\"port\":%llu,\"error\":\"%s\"",
            log_esc(cfg->host, esc, sizeof esc), (unsigned long long)cfg->port, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
}

/* ------------------------------------------------------------ run */

/* MHD's own messages (a connection it closed, a bind failure) as JSON log
 * lines like every other, escaped: they may quote what a client sent. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char m[512], esc[1100];
    vsnprintf(m, sizeof m, fmt, ap);
    size_t n = strlen(m);
    while (n && (m[n - 1] == '\n' || m[n - 1] == '\r')) m[--n] = 0;
    log_msg(LOG_WARN, "libmicrohttpd", "\"detail\":\"%s\"", log_esc(m, esc, sizeof esc));
}

/* Sets up loop L: its libuv loop (idle time measured), its MHD daemon (no
 * listening socket: the acceptor hands it connections), the handles that
 * drive it and its wake. Returns 0, or -1 with what was made left for
 * loop_free. */
static int loop_init(srv *s, srv_loop *L, unsigned id)
{
    const srv_config *cfg = s->cfg;
    L->s = s;
    L->id = id;
    pthread_mutex_init(&L->met_mu, NULL);
    pthread_mutex_init(&L->in_mu, NULL);
    met_init(&L->met);
    if (uv_loop_init(&L->loop) != 0) return -1;
    L->loop_ok = 1;
    uv_loop_configure(&L->loop, UV_METRICS_IDLE_TIME);
    L->d = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET,
                            0, NULL, NULL,
                            on_request, L,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, L, /* first, or MHD warns */
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->conn_memory_bytes,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, L,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, L,
                            MHD_OPTION_END);
    if (!L->d) {
        log_msg(LOG_ERROR, "cannot start the HTTP daemon of a loop", "\"loop\":%u", id);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(L->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di || uv_poll_init(&L->loop, &L->mhd_poll, di->epoll_fd) != 0) return -1;
    uv_timer_init(&L->loop, &L->mhd_timer);
    uv_timer_init(&L->loop, &L->expire_timer);
    uv_timer_init(&L->loop, &L->linger_timer);
    uv_async_init(&L->loop, &L->wake, on_wake);
    L->handles_ok = 1;
    L->mhd_poll.data = L->mhd_timer.data = L->expire_timer.data = L->linger_timer.data = L;
    L->wake.data = L;
    uv_poll_start(&L->mhd_poll, UV_READABLE, on_mhd_poll);
    return 0;
}

/* Undoes loop_init after a failed start (no thread runs L). */
static void loop_free(srv_loop *L)
{
    if (L->d) MHD_stop_daemon(L->d);
    L->d = NULL;
    if (L->handles_ok) {
        uv_close((uv_handle_t *)&L->mhd_poll, on_close_noop);
        uv_close((uv_handle_t *)&L->mhd_timer, on_close_noop);
        uv_close((uv_handle_t *)&L->expire_timer, on_close_noop);
        uv_close((uv_handle_t *)&L->linger_timer, on_close_noop);
        uv_close((uv_handle_t *)&L->wake, on_close_noop);
    }
    if (L->loop_ok) {
        uv_run(&L->loop, UV_RUN_DEFAULT); /* runs the close callbacks */
        uv_loop_close(&L->loop);
    }
    pthread_mutex_destroy(&L->met_mu);
    pthread_mutex_destroy(&L->in_mu);
}

/* A loop's thread (loops 1..n-1; loop 0 runs on the main thread). */
static void loop_main(void *arg)
{
    srv_loop *L = arg;
    uv_run(&L->loop, UV_RUN_DEFAULT);
}

/* One loop per four usable CPUs by default: a loop's share of a request
 * (HTTP, body, answer) is a few percent of the workers' (deploy/SCALING.md). */
static size_t default_loops(void)
{
    size_t cpus = pool_default_workers();
    return (cpus + 3) / 4;
}

int srv_run(const srv_config *cfg)
{
    srv *s = calloc(1, sizeof *s);
    char err[512], esc[600];
    int rc = 2;
    size_t n_init = 0;
    if (!s) return 2;
    s->cfg = cfg;
    s->listen_fd = -1;
    s->start_unix = unix_now();
    busy_status = (int)cfg->busy_status;
    met_init(&s->met);
    pthread_mutex_init(&s->reload_mu, NULL);
    pthread_mutex_init(&s->met_mu, NULL);
    signal(SIGPIPE, SIG_IGN);

    size_t workers = cfg->workers ? cfg->workers : pool_default_workers();
    s->workers = workers;
    s->n_loops = cfg->loops ? cfg->loops : default_loops();
    s->decode_offload_bytes = cfg->decode_offload_bytes;
    if (s->decode_offload_bytes == CFG_AUTO)
        s->decode_offload_bytes = workers > 2 * s->n_loops ? 0 : OFFLOAD_FEW_CORES_BYTES;
    s->lim = (rk_limits){.max_candidates = cfg->max_candidates, .strict = !cfg->lenient};
    s->shadow_lim = (rk_limits){.max_candidates = cfg->max_candidates, .strict = 0};
    s->sctx.max_batch_rows = cfg->max_batch_rows;
    size_t sbt = cfg->small_batch_threads ? cfg->small_batch_threads : workers;
    s->sctx.team_helpers = sbt > 1 ? sbt - 1 : 0;
    batch_opts bo = {.max_batch_rows = cfg->max_batch_rows, .max_queue_rows = cfg->max_queue_rows,
                     .max_low_rows = cfg->max_batch_rows * workers,
                     .max_delay_us = cfg->max_queue_delay_us, .split_min_rows = cfg->split_min_rows,
                     .workers = workers};
    if (!(s->loops = calloc(s->n_loops, sizeof *s->loops)) || !(s->q = batch_new(&bo))) goto fail;
    for (; n_init < s->n_loops; n_init++)
        if (loop_init(s, &s->loops[n_init], (unsigned)n_init) < 0) {
            n_init++; /* loop_free undoes its part too */
            goto fail;
        }
    /* every model and every worker's state for it, before any request can come */
    if (score_stash_init(&s->sctx) < 0 || !(s->models = models_new(cfg, &s->sctx, workers)) ||
        !(s->status = status_new())) {
        log_msg(LOG_ERROR, "out of memory", NULL);
        goto fail;
    }
    models_change ch;
    if (models_sync(s->models, &ch, err, sizeof err) < 0) {
        log_msg(LOG_ERROR, cfg->model_repository[0] ? "cannot read the model repository" : "cannot load the model",
                "\"error\":\"%s\"", log_esc(err, esc, sizeof esc));
        goto fail;
    }
    if (cfg->model_repository[0] && !models_serving(s->models))
        log_msg(LOG_WARN, "no model version serving yet: not ready until one loads",
                "\"repository\":\"%s\",\"failed\":%u", log_esc(cfg->model_repository, esc, sizeof esc), ch.failed);
    if (!(s->pool = pool_new(s->q, workers, score_batch, score_after, score_state_free, &s->sctx, pool_notify, s))) {
        log_msg(LOG_ERROR, "cannot start the worker threads", NULL);
        goto fail;
    }

    /* the control part, on loop 0 */
    srv_loop *L0 = &s->loops[0];
    if ((s->listen_fd = open_listener(cfg)) < 0) goto fail;
    uv_poll_init(&L0->loop, &s->listen_poll, s->listen_fd);
    uv_timer_init(&L0->loop, &s->accept_timer);
    uv_timer_init(&L0->loop, &s->drain_timer);
    uv_timer_init(&L0->loop, &s->poll_timer);
    uv_timer_init(&L0->loop, &s->status_timer);
    uv_signal_init(&L0->loop, &s->sig_term);
    uv_signal_init(&L0->loop, &s->sig_int);
    uv_signal_init(&L0->loop, &s->sig_hup);
    s->control_ok = s->listening = 1;
    s->listen_poll.data = s->accept_timer.data = s->drain_timer.data = s->poll_timer.data = s->status_timer.data = s;
    uv_timer_start(&s->status_timer, on_status_timer, cfg->status_sample_s * 1000, cfg->status_sample_s * 1000);
    if (cfg->model_repository[0] && cfg->poll_s)
        uv_timer_start(&s->poll_timer, on_poll, cfg->poll_s * 1000, cfg->poll_s * 1000);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    uv_poll_start(&s->listen_poll, UV_READABLE, on_listen);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);

    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    unsigned port = (unsigned)cfg->port;
    if (getsockname(s->listen_fd, (struct sockaddr *)&bound, &blen) == 0)
        port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                 : ((struct sockaddr_in *)&bound)->sin_port);
    mv **all;
    size_t n_serving = models_serving_list(s->models, &all);
    char n1[160], n2[160];
    log_msg(LOG_INFO, "listening",
            "\"host\":\"%s\",\"port\":%u,\"workers\":%zu,\"loops\":%zu,\"decode_offload_bytes\":%llu,\"kernels\":\"%s\",\"huge_pages\":\"%s\",\"model\":\"%s\",\"version\":\"%s\",\"versions_serving\":%zu,\"max_batch_rows\":%llu",
            cfg->host, port, workers, s->n_loops, (unsigned long long)s->decode_offload_bytes, dcn_kernels_name(),
            dcn_huge_pages(), n_serving ? log_esc(all[0]->name, n1, sizeof n1) : "",
            n_serving ? log_esc(all[0]->label, n2, sizeof n2) : "", n_serving, (unsigned long long)cfg->max_batch_rows);
    for (size_t i = 0; i < n_serving; i++) mv_release(all[i]);
    free(all);

    atomic_store(&s->loops_running, s->n_loops);
    uint64_t t0 = uv_hrtime();
    for (size_t i = 0; i < s->n_loops; i++) s->loops[i].start_ns = t0;
    for (size_t i = 1; i < s->n_loops; i++) {
        if (uv_thread_create(&s->loops[i].tid, loop_main, &s->loops[i]) != 0) {
            /* the loops already running are stopped like on SIGTERM, at once */
            log_msg(LOG_ERROR, "cannot start an event loop thread", "\"loop\":%zu", i);
            s->exit_code = 2;
            for (size_t j = i; j < s->n_loops; j++) s->loops[j].stopped = 1;
            atomic_fetch_sub(&s->loops_running, s->n_loops - i);
            for (size_t j = i; j < s->n_loops; j++) {
                loop_free(&s->loops[j]);
                s->loops[j].loop_ok = 0;
            }
            s->n_loops = i; /* the rest never ran */
            begin_close(s);
            break;
        }
        s->loops[i].thread_ok = 1;
        /* set before loop 0 runs: no scrape can be served before */
        s->loops[i].cpu_clock_ok = pthread_getcpuclockid(s->loops[i].tid, &s->loops[i].cpu_clock) == 0;
    }
    L0->cpu_clock_ok = pthread_getcpuclockid(pthread_self(), &L0->cpu_clock) == 0;
    uv_run(&L0->loop, UV_RUN_DEFAULT);
    for (size_t i = 1; i < s->n_loops; i++)
        if (s->loops[i].thread_ok) uv_thread_join(&s->loops[i].tid);
    rc = s->exit_code;
    if (live_total(s)) {
        /* drain deadline: requests may still reference worker memory; let the
         * process exit take it (kept reachable, so leak checkers stay quiet) */
        abandoned = s;
        return rc;
    }
    for (size_t i = 0; i < s->n_loops; i++) {
        uv_loop_close(&s->loops[i].loop);
        pthread_mutex_destroy(&s->loops[i].met_mu);
        pthread_mutex_destroy(&s->loops[i].in_mu);
    }
    pool_free(s->pool);
    models_free(s->models);
    status_free(s->status);
    score_stash_destroy(&s->sctx); /* after the workers are joined (and the last reload ran) */
    batch_destroy(s->q);
    pthread_mutex_destroy(&s->reload_mu);
    pthread_mutex_destroy(&s->met_mu);
    free(s->loops);
    free(s);
    return rc;

fail:
    pool_free(s->pool); /* joins the workers: nothing wakes a loop after this */
    models_free(s->models);
    status_free(s->status);
    score_stash_destroy(&s->sctx);
    if (s->control_ok) {
        uv_close((uv_handle_t *)&s->listen_poll, on_close_noop);
        uv_close((uv_handle_t *)&s->accept_timer, on_close_noop);
        uv_close((uv_handle_t *)&s->drain_timer, on_close_noop);
        uv_close((uv_handle_t *)&s->poll_timer, on_close_noop);
        uv_close((uv_handle_t *)&s->status_timer, on_close_noop);
        uv_close((uv_handle_t *)&s->sig_term, on_close_noop);
        uv_close((uv_handle_t *)&s->sig_int, on_close_noop);
        uv_close((uv_handle_t *)&s->sig_hup, on_close_noop);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    for (size_t i = 0; i < n_init; i++) loop_free(&s->loops[i]);
    batch_destroy(s->q);
    pthread_mutex_destroy(&s->reload_mu);
    pthread_mutex_destroy(&s->met_mu);
    free(s->loops);
    free(s);
    return 2;
}
