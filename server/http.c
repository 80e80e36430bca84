/* http.c — the daemon proper (see srv.h for the design): libmicrohttpd in
 * external-epoll mode on a libuv loop, routes, the /rank lifecycle, metrics
 * and model endpoints, reload and drain.
 *
 * DESIGN
 * - Everything in this file runs on the loop thread except reload_work
 *   (libuv threadpool: opens the new file and prepares the workers' states
 *   for it), decode_task and the pool callbacks declared in score.h (worker
 *   threads). The only objects shared with workers are the batch queue, the
 *   done-list, the scorer's stash of prepared states (each locked) and
 *   queued requests, which nobody writes while their rows are out.
 * - Worker states: one per worker is built for the model before it serves
 *   (score_prepare): at start-up before the listener opens, on a reload in
 *   reload_work after the new model passed its test score and before
 *   reload_after swaps it in. A reload that fails prepares nothing (or frees
 *   what it prepared); one whose states cannot all be built fails, the old
 *   model serving on. The stash lives in sctx from before the workers start
 *   until after they are joined.
 * - Decoding: a body of at least decode_offload_bytes is decoded on a worker
 *   (a batch task) so a large body does not stall every other connection;
 *   the request is suspended meanwhile and the loop does not touch its
 *   body, model reference or decoded fields until the task comes back on
 *   the done-list. Smaller bodies are decoded on the loop at once: a task's
 *   hand-over costs more than they take.
 * - Phases: RUNNING -> DRAINING (SIGTERM: readiness 503, still serving for
 *   drain_delay_ms) -> CLOSING (listener closed, new /rank on kept-alive
 *   connections refused, waiting for live requests up to drain_timeout_ms)
 *   -> STOPPED (workers joined, MHD stopped, handles closed).
 * - Overload: when a request does not fit the queue, the server sheds load:
 *   new /rank requests with large (or chunked) bodies get the busy status at
 *   the headers, unread, until the queue has drained below half (checked at
 *   each arrival).
 * - Every srv_req is on the `live` list from the first handler call to MHD's
 *   completion callback; CLOSING ends when that list is empty. That is
 *   checked in run_mhd after MHD_run returns, never from inside an MHD
 *   callback: stopping the daemon there frees what MHD is still using.
 *   Connections MHD accepted before the listener closed may hold a request
 *   it has not read yet (a first request, or the next one on a keep-alive
 *   connection): CLOSING waits until MHD has no connection left, or until
 *   no request has been live for CLOSE_LINGER_MS (then the connections left
 *   are idle). Each connection takes at most one more request (answers say
 *   Connection: close) and none is accepted, so this ends; drain_timeout_ms
 *   bounds it in any case.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
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
#include "server/pool.h"
#include "server/score.h"
#include "server/srv.h"

/* ------------------------------------------------------------ types */

typedef enum { R_RANK, R_LIVE, R_READY, R_MODEL, R_METRICS, R_RELOAD, R_NOTFOUND, R_METHOD } route;
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

typedef struct srv srv;

typedef struct srv_req {
    score_target t;             /* first member: job.req points here */
    batch_job job;
    batch_task task;            /* decoding on a worker (large bodies) */
    int dec_rc;                 /* rk_decode's result, set by the decoder */
    srv *s;
    struct MHD_Connection *conn;
    route rt;
    met_handler mh;
    req_state st;
    const char *method;         /* MHD's, valid for the request */
    char path[64];              /* for the access log */
    int err;                    /* rk_err to answer with, once READY */
    char msg[256];
    int status;                 /* answered status */
    char *body;                 /* (body_cap) */
    size_t body_len, body_cap;
    int too_big;
    rk_request *rq;
    dcn_model *model;           /* referenced while the request lives */
    uint32_t rows_left;
    int expired;
    uint64_t t_arrive, t_parsed, t_enq, t_first, t_last; /* monotonic ns */
    struct srv_req *prev, *next;
} srv_req;

struct srv {
    const srv_config *cfg;
    uv_loop_t loop;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer, expire_timer, drain_timer, linger_timer;
    uv_async_t done_async;
    uv_signal_t sig_term, sig_int, sig_hup;
    struct MHD_Daemon *d;
    batch_queue *q;
    pool *pool;
    score_ctx sctx;             /* its stash: states prepared for the workers */
    size_t workers;
    rk_limits lim;
    dcn_model *model;
    double model_loaded_unix, start_unix;
    met_set met;
    phase ph;
    int lingered;               /* CLOSING: CLOSE_LINGER_MS passed with nothing live */
    int shedding;               /* a push failed for a full queue; /rank refused at the
                                 * headers until the queue is below half */
    srv_req *live;
    size_t n_live, rank_live, queued, deadline_jobs;
    int expire_running;
    int reloading;
    srv_req *reload_waiter;
    uv_work_t reload_req;
    dcn_model *reload_new;
    int reload_rc;
    char reload_err[256];
    int exit_code;
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

static void run_mhd(srv *s);

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
    if (r->s->ph >= PH_CLOSING) MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->st = ST_ANSWERED;
    met_count_request(&r->s->met, r->mh, status);
    return ret;
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
        hdrs[n++] = r->path[1] == 'r' || r->path[1] == 'a' ? "POST" : "GET, HEAD";
    }
    if (r->rt == R_RANK) met_count_rejection(&r->s->met, err);
    return send_buf(r, srv_http_status(err), &b, "application/json", hdrs);
}

static enum MHD_Result send_text(srv_req *r, int status, const char *ctype, const char *text)
{
    rk_buf b = {0};
    rk_buf_puts(&b, text);
    return send_buf(r, status, &b, ctype, NULL);
}

/* ------------------------------------------------------------ requests */

static void req_free(srv *s, srv_req *r)
{
    if (r->prev) r->prev->next = r->next;
    else s->live = r->next;
    if (r->next) r->next->prev = r->prev;
    s->n_live--;
    if (r->rt == R_RANK) s->rank_live--;
    rk_request_free(r->rq);
    dcn_release(r->model);
    free(r->t.scores);
    free(r->t.logits);
    free(r->body);
    free(r);
}

static route route_of(const char *url, const char *method, met_handler *mh)
{
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int post = !strcmp(method, "POST");
    struct { const char *path; route rt; int is_post; met_handler mh; } table[] = {
        {"/rank", R_RANK, 1, MET_H_RANK},
        {"/v2/health/live", R_LIVE, 0, MET_H_HEALTH},
        {"/healthz", R_LIVE, 0, MET_H_HEALTH},
        {"/v2/health/ready", R_READY, 0, MET_H_HEALTH},
        {"/readyz", R_READY, 0, MET_H_HEALTH},
        {"/v1/model", R_MODEL, 0, MET_H_MODEL},
        {"/metrics", R_METRICS, 0, MET_H_METRICS},
        {"/admin/reload", R_RELOAD, 1, MET_H_ADMIN},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(url, table[i].path)) continue;
        *mh = table[i].mh;
        if (table[i].is_post ? post : get) return table[i].rt;
        return R_METHOD;
    }
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
    if (s->ph >= PH_CLOSING) {
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
     * may well fit: they still get their chance. */
    size_t waiting = batch_queued_rows(s->q);
    if (s->shedding && waiting < s->cfg->max_queue_rows / 2) s->shedding = 0;
    if ((s->shedding && (!cl || n >= SHED_MIN_BODY_BYTES)) || waiting >= s->cfg->max_queue_rows) {
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
    met_count_rejection(&s->met, RK_ETOOBIG);
    met_count_request(&s->met, r->mh, 413);
    r->status = 413;
    r->st = ST_ANSWERED;
    return MHD_NO;
}

static void on_expire_timer(uv_timer_t *t);

/* Marks a queued request complete and resumes its connection. */
static void req_ready(srv *s, srv_req *r)
{
    r->st = ST_READY;
    if (r->rt == R_RANK) {
        s->queued--;
        if (r->job.deadline_ns && --s->deadline_jobs == 0 && s->expire_running) {
            uv_timer_stop(&s->expire_timer);
            s->expire_running = 0;
        }
    }
    MHD_resume_connection(r->conn);
}

/* Decodes r's body against r->model (its reference), on a worker thread
 * (batch_task callback) or on the loop; writes only r's decode fields. */
static void decode_body(srv_req *r)
{
    r->dec_rc = rk_decode(r->model, r->body ? r->body : "", r->body_len, &r->s->lim, &r->rq, r->msg,
                          sizeof r->msg);
    r->t_parsed = batch_now_ns();
}

static void decode_task(batch_task *t)
{
    decode_body((srv_req *)((char *)t - offsetof(srv_req, task)));
}

/* Checks and queues the rows of a decoded /rank request. */
static enum MHD_Result rank_queue(srv *s, srv_req *r)
{
    free(r->body);
    r->body = NULL;
    if (r->dec_rc < 0) return send_error(r, r->dec_rc, r->msg);
    rk_request *rq = r->rq;
    r->t.rq = rq;
    r->t.scores = malloc((rq->n_cands + 1) * sizeof(float));
    r->t.logits = malloc((rq->n_cands + 1) * sizeof(float));
    if (!r->t.scores || !r->t.logits) return send_error(r, RK_ENOMEM, NULL);
    met_hist_observe(&s->met.request_candidates, (double)rq->n_cands);
    r->t_enq = r->t_first = r->t_last = r->t_parsed;
    if (rq->n_cands == 0) {
        r->st = ST_READY;
        return MHD_YES; /* answered by the caller's READY branch */
    }
    r->job = (batch_job){.req = &r->t, .key = r->model, .n_rows = (uint32_t)rq->n_cands};
    if (rq->deadline_ms) {
        r->job.deadline_ns = r->t_arrive + (uint64_t)rq->deadline_ms * 1000000u;
        if (r->job.deadline_ns <= r->t_parsed) {
            snprintf(r->msg, sizeof r->msg, "deadline of %lld ms passed while parsing", (long long)rq->deadline_ms);
            return send_error(r, RK_EDEADLINE, r->msg);
        }
    }
    r->t_enq = batch_now_ns();
    r->t_first = r->t_last = 0; /* set by the first and last batch back */
    int rc = batch_push(s->q, &r->job, r->t_enq);
    if (rc == RK_EBUSY) s->shedding = 1;
    if (rc < 0) {
        snprintf(r->msg, sizeof r->msg, rc == RK_EBUSY ? "queue full (%zu rows waiting)" : "shutting down",
                 batch_queued_rows(s->q));
        return send_error(r, rc, r->msg);
    }
    r->st = ST_QUEUED;
    r->rows_left = r->job.n_rows;
    s->queued++;
    if (r->job.deadline_ns && s->deadline_jobs++ == 0 && !s->expire_running) {
        uv_timer_start(&s->expire_timer, on_expire_timer, 1, 1);
        s->expire_running = 1;
    }
    MHD_suspend_connection(r->conn);
    return MHD_YES;
}

/* Starts a /rank request whose body is complete: decodes it here, or hands
 * a large body to a worker and suspends the connection until it is back. */
static enum MHD_Result rank_start(srv *s, srv_req *r)
{
    if (r->too_big) {
        snprintf(r->msg, sizeof r->msg, "body over the limit of %llu bytes",
                 (unsigned long long)s->cfg->max_body_bytes);
        return send_error(r, RK_ETOOBIG, r->msg);
    }
    r->model = dcn_retain(s->model); /* the request keeps the model it was decoded against */
    if (r->body_len >= s->cfg->decode_offload_bytes) {
        r->task = (batch_task){.run = decode_task};
        if (batch_push_task(s->q, &r->task) == 0) {
            r->st = ST_DECODING;
            MHD_suspend_connection(r->conn);
            return MHD_YES;
        }
        /* the queue is closed (shutting down): decode here */
    }
    decode_body(r);
    return rank_queue(s, r);
}

/* Ranks, encodes and answers a /rank request whose rows are all back. */
static enum MHD_Result rank_finish(srv *s, srv_req *r)
{
    if (r->expired) {
        snprintf(r->msg, sizeof r->msg, "deadline of %lld ms passed before scoring finished",
                 (long long)r->rq->deadline_ms);
        return send_error(r, RK_EDEADLINE, r->msg);
    }
    if (r->err) return send_error(r, r->err, r->msg);
    rk_request *rq = r->rq;
    size_t n = rq->n_cands;
    if (!r->t_first) r->t_first = r->t_last = r->t_enq; /* no row was scored */
    uint32_t *order = malloc((n + 1) * sizeof *order);
    if (!order) return send_error(r, RK_ENOMEM, NULL);
    uint64_t t0 = batch_now_ns();
    size_t k = rk_rank(r->t.scores, n, rq->top_k, order);
    const dcn_info *in = dcn_model_info(r->model);
    rk_buf b = {0};
    rk_encode_head(&b, rq, in->name, in->version, r->t.scores, r->t.logits, order, k);
    free(order);
    uint64_t t1 = batch_now_ns();
    rk_latency lat = {
        .total_us = (t1 - r->t_arrive) / 1000,
        .parse_us = (r->t_parsed - r->t_arrive) / 1000,
        .queue_us = (r->t_first - r->t_enq) / 1000,
        .inference_us = (r->t_last - r->t_first) / 1000,
        .encode_us = (t1 - t0) / 1000,
    };
    rk_encode_tail(&b, &lat);
    char timing[200];
    snprintf(timing, sizeof timing,
             "parse;dur=%.3f, queue;dur=%.3f, inference;dur=%.3f, encode;dur=%.3f, total;dur=%.3f",
             lat.parse_us / 1e3, lat.queue_us / 1e3, lat.inference_us / 1e3, lat.encode_us / 1e3,
             lat.total_us / 1e3);
    const char *hdrs[] = {"Server-Timing", timing, NULL};
    met_set *m = &s->met;
    m->candidates_scored += n;
    met_hist_observe(&m->request_seconds, (t1 - r->t_arrive) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_PARSE], (r->t_parsed - r->t_arrive) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_QUEUE], (r->t_first - r->t_enq) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_INFERENCE], (r->t_last - r->t_first) * 1e-9);
    met_hist_observe(&m->phase_seconds[MET_P_ENCODE], (t1 - t0) * 1e-9);
    return send_buf(r, 200, &b, "application/json", hdrs);
}

/* ------------------------------------------------------------ GET endpoints */

static json_t *json_float(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static const char *cross_names[] = {"vector", "full", "lowrank", "mix"};
static const char *act_names[] = {"identity", "relu", "tanh", "hard_tanh", "sigmoid"};
static const char *gate_names[] = {"softmax", "sigmoid", "constant"};
static const char *combine_names[] = {"stacked", "parallel", "cross_only"};
static const char *mapping_names[] = {"index", "hex_mod", "hash_mod", "vocab"};

/* Describes the model being served: identity, features and architecture. */
static enum MHD_Result send_model(srv *s, srv_req *r)
{
    const dcn_model *m = s->model;
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
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:o, s:s, s:s, s:I, s:I, s:s, s:I, s:f, s:{s:o, s:o}, s:{s:I, s:I, s:o, s:{s:s, s:I, s:I, s:I, s:s, s:s, s:b}, s:o, s:s, s:f}}",
        "name", in->name, "version", in->version, "description", in->description ? in->description : "",
        "format_version", (json_int_t)in->format_version, "file_bytes", (json_int_t)in->file_bytes,
        "crc32", in->has_crc32 ? json_string(crc) : json_null(), "kernels", dcn_kernels_name(),
        "dense_precision", in->int8 ? "int8" : "as stored", "dense_bytes", (json_int_t)in->packed_bytes,
        "huge_page_bytes", (json_int_t)in->huge_bytes, "huge_pages", dcn_huge_pages(),
        "int8_smoothed", (json_int_t)in->int8_smoothed, "loaded_at", s->model_loaded_unix,
        "features", "dense", dense, "sparse", sparse,
        "architecture", "d", (json_int_t)in->d, "dense_dim", (json_int_t)in->dense_dim, "bottom", bottom,
        "cross", "kind", cross_names[in->cross_kind & 3], "layers", (json_int_t)in->cross_layers,
        "rank", (json_int_t)in->rank, "experts", (json_int_t)in->experts,
        "activation", act_names[in->activation % 5], "gate", gate_names[in->gate % 3], "gate_shared", in->gate_shared,
        "deep", deep, "combine", combine_names[in->combine % 3], "flops_per_row", in->flops_per_row);
    char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!txt) return send_error(r, RK_EINTERNAL, "cannot describe the model");
    rk_buf b = {.data = txt, .len = strlen(txt), .cap = strlen(txt) + 1};
    return send_buf(r, 200, &b, "application/json", NULL);
}

static enum MHD_Result send_metrics(srv *s, srv_req *r)
{
    const dcn_info *in = dcn_model_info(s->model);
    met_gauges g = {
        .inflight_requests = s->rank_live,
        .queue_rows = batch_queued_rows(s->q),
        .workers = pool_workers(s->pool),
        .ready = s->ph == PH_RUNNING,
        .model_name = in->name,
        .model_version = in->version,
        .model_crc32 = in->crc32,
        .model_loaded_unix_s = s->model_loaded_unix,
        .start_unix_s = s->start_unix,
    };
    score_stats st = score_get_stats(&s->sctx);
    g.states_prepared = st.prepared;
    g.states_built_on_request = st.built_on_request;
    rk_buf b = {0};
    met_render(&s->met, &g, &b);
    return send_buf(r, 200, &b, "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* ------------------------------------------------------------ reload */

/* Opens, validates and exercises a model file off the loop thread. */
static int load_model(const srv_config *c, dcn_model **out, char *err, size_t errlen)
{
    dcn_open_opts o = {.verify_checksum = c->verify, .warmup = c->warmup, .int8 = c->int8};
    int rc = dcn_open(c->model_path, &o, out, err, errlen);
    if (rc < 0) return rc;
    /* one row with every feature missing: proves the engine runs this model */
    const dcn_info *in = dcn_model_info(*out);
    dcn_scratch *sc = dcn_scratch_new(*out, 1);
    float *dense = malloc((in->n_dense + 1) * sizeof(float));
    uint32_t *off = calloc(2, sizeof(uint32_t));
    const uint32_t **offp = calloc(in->n_sparse + 1, sizeof *offp);
    const int64_t **idp = calloc(in->n_sparse + 1, sizeof *idp);
    static const int64_t none[1] = {0};
    float score = NAN;
    rc = DCN_ENOMEM;
    if (sc && dense && off && offp && idp) {
        for (size_t j = 0; j < in->n_dense; j++) dense[j] = NAN;
        for (size_t f = 0; f < in->n_sparse; f++) { offp[f] = off; idp[f] = none; }
        dcn_batch b = {.n_rows = 1, .n_segments = 1, .dense = dense, .seg_dense = dense, .offsets = offp, .ids = idp};
        rc = dcn_score(*out, sc, &b, &score, NULL);
        if (rc == 0 && !isfinite(score)) {
            rc = DCN_EFORMAT;
            snprintf(err, errlen, "the model scores a row of missing features as %g", (double)score);
        } else if (rc < 0) {
            snprintf(err, errlen, "test score failed: %s", dcn_strerror(rc));
        }
    } else {
        snprintf(err, errlen, "out of memory");
    }
    dcn_scratch_free(sc);
    free(dense);
    free(off);
    free(offp);
    free(idp);
    if (rc < 0) {
        dcn_release(*out);
        *out = NULL;
    } else {
        if (c->int8 && !in->int8_smoothed)
            log_msg(LOG_INFO, "INT8 without calibration factors: each row is its own calibration; "
                              "tools/calibrate.py measures factors that cut the INT8 error by a third to a half",
                    NULL);
        if (in->huge_bytes && !strcmp(dcn_huge_pages(), "never"))
            log_msg(LOG_WARN, "transparent huge pages are off on this host: the model's large dense layers "
                              "stream from 4 KiB pages, slower (10-20% on batches of one on a 64 MB model); "
                              "set /sys/kernel/mm/transparent_hugepage/enabled to madvise",
                    "\"huge_pages\":\"never\",\"huge_page_bytes\":%zu", in->huge_bytes);
    }
    return rc;
}

/* Loads the new model and prepares one worker state per worker for it;
 * on the libuv threadpool. On failure nothing is left: no model, no state. */
static void reload_work(uv_work_t *w)
{
    srv *s = w->data;
    s->reload_new = NULL;
    s->reload_err[0] = 0;
    s->reload_rc = load_model(s->cfg, &s->reload_new, s->reload_err, sizeof s->reload_err);
    if (s->reload_rc < 0) return;
    if (score_prepare(&s->sctx, s->reload_new, s->workers) < 0) {
        snprintf(s->reload_err, sizeof s->reload_err, "out of memory for the workers' states");
        s->reload_rc = DCN_ENOMEM;
        dcn_release(s->reload_new);
        s->reload_new = NULL;
    }
}

static void reload_after(uv_work_t *w, int status)
{
    srv *s = w->data;
    char esc[300];
    s->reloading = 0;
    if (status == 0 && s->reload_rc == 0) {
        dcn_model *old = s->model;
        s->model = s->reload_new;
        s->model_loaded_unix = unix_now();
        dcn_release(old); /* queued requests keep their own reference */
        s->met.reloads_ok++;
        const dcn_info *in = dcn_model_info(s->model);
        char n1[160], n2[160];
        log_msg(LOG_INFO, "model reloaded", "\"model\":\"%s\",\"version\":\"%s\"",
                log_esc(in->name, n1, sizeof n1), log_esc(in->version, n2, sizeof n2));
    } else {
        dcn_release(s->reload_new);
        s->met.reloads_failed++;
        log_msg(LOG_ERROR, "model reload failed, the old model keeps serving", "\"error\":\"%s\"",
                log_esc(s->reload_err, esc, sizeof esc));
    }
    s->reload_new = NULL;
    srv_req *r = s->reload_waiter;
    s->reload_waiter = NULL;
    if (r) {
        if (status != 0 || s->reload_rc != 0) {
            r->err = RK_ERELOAD;
            snprintf(r->msg, sizeof r->msg, "%s", s->reload_err[0] ? s->reload_err : "reload failed");
        }
        r->st = ST_READY;
        MHD_resume_connection(r->conn);
        run_mhd(s);
    }
}

/* Starts a background reload; returns 0, RK_ECONFLICT or RK_EUNAVAIL. */
static int reload_start(srv *s, srv_req *waiter)
{
    if (s->reloading) return RK_ECONFLICT;
    if (s->ph != PH_RUNNING) return RK_EUNAVAIL;
    s->reload_req.data = s;
    if (uv_queue_work(&s->loop, &s->reload_req, reload_work, reload_after) != 0) return RK_EINTERNAL;
    s->reloading = 1;
    s->reload_waiter = waiter;
    log_msg(LOG_INFO, "model reload started", NULL);
    return 0;
}

static enum MHD_Result send_reloaded(srv *s, srv_req *r)
{
    if (r->err) return send_error(r, r->err, r->msg);
    const dcn_info *in = dcn_model_info(s->model);
    rk_buf b = {0};
    rk_buf_puts(&b, "{\"status\":\"reloaded\",\"model\":{\"name\":");
    rk_buf_json_str(&b, in->name, strlen(in->name));
    rk_buf_puts(&b, ",\"version\":");
    rk_buf_json_str(&b, in->version, strlen(in->version));
    rk_buf_puts(&b, "}}");
    return send_buf(r, 200, &b, "application/json", NULL);
}

/* ------------------------------------------------------------ MHD callbacks */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    srv *s = cls;
    srv_req *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        r->s = s;
        r->conn = conn;
        r->method = method;
        r->t_arrive = batch_now_ns();
        snprintf(r->path, sizeof r->path, "%s", url);
        r->rt = route_of(url, method, &r->mh);
        r->next = s->live;
        if (s->live) s->live->prev = r;
        s->live = r;
        s->n_live++;
        if (r->rt == R_RANK) s->rank_live++;
        if (s->ph == PH_CLOSING) { /* the linger restarts when nothing is live again */
            uv_timer_stop(&s->linger_timer);
            s->lingered = 0;
        }
        *con_cls = r;
        int err = 0;
        switch (r->rt) {
        case R_RANK: err = check_rank_headers(r); break;
        case R_RELOAD:
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
        if (r->rt == R_RANK && r->st == ST_READING) append_body(r, upload_data, *upload_size);
        *upload_size = 0;
        if (r->too_big && r->st == ST_READING) return refuse_upload(r);
        return MHD_YES;
    }
    if (r->st == ST_ANSWERED) return MHD_YES;
    switch (r->rt) {
    case R_RANK:
        if (r->st == ST_READING || r->st == ST_DECODED) {
            enum MHD_Result ret = r->st == ST_READING ? rank_start(s, r) : rank_queue(s, r);
            if (r->st != ST_READY) return ret;
        }
        if (r->st == ST_READY) return rank_finish(s, r);
        return MHD_YES;
    case R_LIVE:
        return send_text(r, 200, "application/json", "{\"status\":\"live\"}");
    case R_READY:
        if (s->ph == PH_RUNNING && s->model) return send_text(r, 200, "application/json", "{\"status\":\"ready\"}");
        return send_text(r, 503, "application/json", "{\"status\":\"draining\"}");
    case R_MODEL: return send_model(s, r);
    case R_METRICS: return send_metrics(s, r);
    case R_RELOAD:
        if (r->st == ST_READING) {
            int rc = reload_start(s, r);
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
    srv *s = cls;
    srv_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (r->st == ST_QUEUED || r->st == ST_DECODING) {
        /* cannot happen: suspended connections are never completed before
         * they are resumed; keep the memory rather than free it under a worker */
        log_msg(LOG_ERROR, "request completed while queued", NULL);
        return;
    }
    if (s->cfg->access_log) {
        char p[160];
        log_msg(LOG_INFO, "request", "\"method\":\"%s\",\"path\":\"%s\",\"status\":%d,\"us\":%llu,\"candidates\":%zu%s",
                r->method, log_esc(r->path, p, sizeof p), r->status,
                (unsigned long long)((batch_now_ns() - r->t_arrive) / 1000), r->rq ? r->rq->n_cands : 0,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : ",\"aborted\":true");
    }
    if (!r->status) met_count_request(&s->met, r->mh, 0);
    req_free(s, r); /* run_mhd stops the daemon afterwards if this was the last */
}

/* ------------------------------------------------------------ loop glue */

static void maybe_stop(srv *s);

/* Runs MHD once and re-arms its timer: MHD's sockets are edge-triggered,
 * so pending work must be driven by the timeout even without new events.
 * Then, once MHD_run has returned, ends a drain whose last request has just
 * completed (MHD_stop_daemon inside a callback uses freed memory). */
static void on_mhd_timer(uv_timer_t *t);
static void run_mhd(srv *s)
{
    if (!s->d) return;
    MHD_run(s->d);
    maybe_stop(s);
    if (!s->d) return; /* stopped: the timer is closing */
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(s->d, &to) == MHD_YES)
        uv_timer_start(&s->mhd_timer, on_mhd_timer, to > 1000000 ? 1000000 : (uint64_t)to, 0);
    else
        uv_timer_stop(&s->mhd_timer);
}

static void on_mhd_timer(uv_timer_t *t) { run_mhd(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events) { run_mhd(p->data); }

/* Accounts one returned slice to its request; resumes it when complete. */
static void seg_back(srv *s, const batch_seg *sg, const batch_work *b, int expired)
{
    srv_req *r = (srv_req *)sg->job->req; /* t is the first member */
    if (expired) {
        r->expired = 1;
    } else {
        if (b->status < 0 && !r->err) {
            r->err = RK_EINTERNAL;
            snprintf(r->msg, sizeof r->msg, "the engine refused the batch: %s", dcn_strerror(b->status));
        }
        if (!r->t_first || b->start_ns < r->t_first) r->t_first = b->start_ns;
        if (b->end_ns > r->t_last) r->t_last = b->end_ns;
    }
    r->rows_left -= sg->n_rows;
    if (r->rows_left == 0) req_ready(s, r);
}

/* Drains the pool's done-list: accounts every returned row. */
static void process_done(srv *s)
{
    batch_work *b = pool_take_done(s->pool);
    while (b) {
        batch_work *nx = b->next;
        if (b->task) {
            /* a body decoded on a worker: queue its rows from the handler */
            srv_req *r = (srv_req *)((char *)b->task - offsetof(srv_req, task));
            r->st = ST_DECODED;
            MHD_resume_connection(r->conn);
        }
        if (b->n_segs) {
            s->met.batches++;
            if (b->status < 0) {
                s->met.batch_errors++;
                log_msg(LOG_ERROR, "batch failed", "\"error\":\"%s\",\"rows\":%zu", dcn_strerror(b->status), b->n_rows);
            }
            met_hist_observe(&s->met.inference_seconds, (b->end_ns - b->start_ns) * 1e-9);
            met_hist_observe(&s->met.batch_rows, (double)b->n_rows);
        }
        for (size_t i = 0; i < b->n_segs; i++) seg_back(s, &b->segs[i], b, 0);
        for (size_t i = 0; i < b->n_expired; i++) seg_back(s, &b->expired[i], b, 1);
        batch_free(b);
        b = nx;
    }
}

static void on_done(uv_async_t *a)
{
    srv *s = a->data;
    process_done(s);
    run_mhd(s);
}

static void pool_notify(void *ctx)
{
    srv *s = ctx;
    uv_async_send(&s->done_async);
}

static void on_expire_timer(uv_timer_t *t)
{
    srv *s = t->data;
    if (pool_expire(s->pool, batch_now_ns())) {
        process_done(s);
        run_mhd(s);
    }
}

/* ------------------------------------------------------------ drain */

static void on_close_noop(uv_handle_t *h) {}

/* Stops everything once no request is live (or the drain deadline passed). */
static void finish(srv *s)
{
    if (s->ph == PH_STOPPED) return;
    s->ph = PH_STOPPED;
    pool_stop(s->pool);
    process_done(s);
    if (s->n_live) {
        /* drain deadline passed: answer what came back, then cut the rest */
        for (int i = 0; i < 10; i++) run_mhd(s);
    }
    const union MHD_DaemonInfo *ci = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    unsigned open_conns = ci ? ci->num_connections : 0;
    uv_poll_stop(&s->mhd_poll);
    MHD_stop_daemon(s->d);
    s->d = NULL;
    uv_close((uv_handle_t *)&s->mhd_poll, on_close_noop);
    uv_close((uv_handle_t *)&s->mhd_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->expire_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->drain_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->linger_timer, on_close_noop);
    uv_close((uv_handle_t *)&s->done_async, on_close_noop);
    uv_close((uv_handle_t *)&s->sig_term, on_close_noop);
    uv_close((uv_handle_t *)&s->sig_int, on_close_noop);
    uv_close((uv_handle_t *)&s->sig_hup, on_close_noop);
    log_msg(LOG_INFO, "stopped", "\"exit_code\":%d,\"connections_closed\":%u", s->exit_code, open_conns);
}

static void on_linger(uv_timer_t *t)
{
    srv *s = t->data;
    s->lingered = 1;
    run_mhd(s); /* reads what has arrived, then maybe_stop */
}

/* Stops the server if it is closing, no request is live and MHD has no
 * connection left (or the open ones stayed idle for CLOSE_LINGER_MS: the
 * linger starts here); called outside every MHD callback (run_mhd,
 * begin_close). */
static void maybe_stop(srv *s)
{
    if (s->ph != PH_CLOSING || s->n_live) return;
    const union MHD_DaemonInfo *ci = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    if (!ci || ci->num_connections == 0 || s->lingered) {
        finish(s);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&s->linger_timer))
        uv_timer_start(&s->linger_timer, on_linger, CLOSE_LINGER_MS, 0);
}

static void on_drain_timeout(uv_timer_t *t)
{
    srv *s = t->data;
    log_msg(LOG_ERROR, "drain deadline passed with requests in flight", "\"live\":%zu", s->n_live);
    s->exit_code = 1;
    finish(s);
}

/* Closes the listener and waits for live requests. */
static void begin_close(srv *s)
{
    if (s->ph >= PH_CLOSING) return;
    s->ph = PH_CLOSING;
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    log_msg(LOG_INFO, "listener closed, finishing requests in flight", "\"live\":%zu", s->n_live);
    uv_timer_start(&s->drain_timer, on_drain_timeout, s->cfg->drain_timeout_ms, 0);
    maybe_stop(s);
}

static void on_drain_delay(uv_timer_t *t) { begin_close(t->data); }

static void on_signal(uv_signal_t *h, int signum)
{
    srv *s = h->data;
    if (signum == SIGHUP) {
        int rc = reload_start(s, NULL);
        if (rc < 0) log_msg(LOG_WARN, "SIGHUP reload not started", "\"error\":\"%s\"", rk_strerror(rc));
        return;
    }
    if (s->ph == PH_RUNNING) {
        s->ph = PH_DRAINING;
        log_msg(LOG_INFO, "draining: not ready, still serving", "\"signal\":%d,\"delay_ms\":%llu", signum,
                (unsigned long long)s->cfg->drain_delay_ms);
        if (s->cfg->drain_delay_ms) uv_timer_start(&s->drain_timer, on_drain_delay, s->cfg->drain_delay_ms, 0);
        else begin_close(s);
    } else if (s->ph == PH_DRAINING) {
        uv_timer_stop(&s->drain_timer);
        begin_close(s); /* a second signal skips the delay */
    }
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

int srv_run(const srv_config *cfg)
{
    srv *s = calloc(1, sizeof *s);
    char err[512], esc[600];
    int rc = 2, loop_ok = 0, async_ok = 0;
    if (!s) return 2;
    s->cfg = cfg;
    s->start_unix = unix_now();
    busy_status = (int)cfg->busy_status;
    met_init(&s->met);
    signal(SIGPIPE, SIG_IGN);

    if (load_model(cfg, &s->model, err, sizeof err) < 0) {
        log_msg(LOG_ERROR, "cannot load the model", "\"error\":\"%s\"", log_esc(err, esc, sizeof esc));
        free(s);
        return 2;
    }
    s->model_loaded_unix = unix_now();

    size_t workers = cfg->workers ? cfg->workers : pool_default_workers();
    s->workers = workers;
    s->lim = (rk_limits){.max_candidates = cfg->max_candidates, .strict = !cfg->lenient};
    s->sctx.max_batch_rows = cfg->max_batch_rows;
    size_t sbt = cfg->small_batch_threads ? cfg->small_batch_threads : workers;
    s->sctx.team_helpers = sbt > 1 ? sbt - 1 : 0;
    batch_opts bo = {.max_batch_rows = cfg->max_batch_rows, .max_queue_rows = cfg->max_queue_rows,
                     .max_delay_us = cfg->max_queue_delay_us, .split_min_rows = cfg->split_min_rows,
                     .workers = workers};
    if (uv_loop_init(&s->loop) != 0) goto fail;
    loop_ok = 1;
    if (!(s->q = batch_new(&bo)) || uv_async_init(&s->loop, &s->done_async, on_done) != 0) goto fail;
    async_ok = 1;
    s->done_async.data = s;
    /* every worker's state for the first model, before any request can come */
    if (score_stash_init(&s->sctx) < 0 || score_prepare(&s->sctx, s->model, workers) < 0) {
        log_msg(LOG_ERROR, "out of memory for the workers' states", "\"workers\":%zu", workers);
        goto fail;
    }
    if (!(s->pool = pool_new(s->q, workers, score_batch, score_after, score_state_free, &s->sctx, pool_notify, s))) {
        log_msg(LOG_ERROR, "cannot start the worker threads", NULL);
        goto fail;
    }

    struct sockaddr_in addr4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    struct sockaddr_in6 addr6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)cfg->port)};
    struct sockaddr *addr = (struct sockaddr *)&addr4;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, cfg->host, &addr4.sin_addr) != 1) {
        if (inet_pton(AF_INET6, cfg->host, &addr6.sin6_addr) != 1) {
            log_msg(LOG_ERROR, "bad --host (an IPv4 or IPv6 address expected)", NULL);
            goto fail;
        }
        addr = (struct sockaddr *)&addr6;
        /* "::" also takes IPv4 clients (as v4-mapped addresses) */
        flags |= IN6_IS_ADDR_UNSPECIFIED(&addr6.sin6_addr) ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
    }
    s->d = MHD_start_daemon(flags, 0, NULL, NULL,
                            on_request, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s, /* first, or MHD warns */
                            MHD_OPTION_SOCK_ADDR, addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->conn_memory_bytes,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                            MHD_OPTION_END);
    if (!s->d) {
        log_msg(LOG_ERROR, "cannot listen", "\"host\":\"%s\",\"port\":%llu", cfg->host, (unsigned long long)cfg->port);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    uv_poll_init(&s->loop, &s->mhd_poll, di->epoll_fd);
    uv_timer_init(&s->loop, &s->mhd_timer);
    uv_timer_init(&s->loop, &s->expire_timer);
    uv_timer_init(&s->loop, &s->drain_timer);
    uv_timer_init(&s->loop, &s->linger_timer);
    s->mhd_poll.data = s->mhd_timer.data = s->expire_timer.data = s->drain_timer.data = s;
    s->linger_timer.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    uv_signal_init(&s->loop, &s->sig_hup);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);

    const dcn_info *in = dcn_model_info(s->model);
    char n1[160], n2[160];
    log_msg(LOG_INFO, "listening",
            "\"host\":\"%s\",\"port\":%u,\"workers\":%zu,\"kernels\":\"%s\",\"huge_pages\":\"%s\",\"model\":\"%s\",\"version\":\"%s\",\"max_batch_rows\":%llu",
            cfg->host, pi ? (unsigned)pi->port : (unsigned)cfg->port, workers, dcn_kernels_name(),
            dcn_huge_pages(), log_esc(in->name, n1, sizeof n1), log_esc(in->version, n2, sizeof n2),
            (unsigned long long)cfg->max_batch_rows);
    run_mhd(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = s->exit_code;
    if (s->n_live) {
        /* drain deadline: requests may still reference worker memory; let the
         * process exit take it (kept reachable, so leak checkers stay quiet) */
        abandoned = s;
        return rc;
    }
    uv_loop_close(&s->loop);
    pool_free(s->pool);
    score_stash_destroy(&s->sctx); /* after the workers are joined (and the last reload ran) */
    batch_destroy(s->q);
    dcn_release(s->model);
    free(s);
    return rc;

fail:
    if (s->d) MHD_stop_daemon(s->d);
    pool_free(s->pool); /* joins the workers: nothing signals done_async after this */
    score_stash_destroy(&s->sctx);
    batch_destroy(s->q);
    if (loop_ok) {
        if (async_ok) uv_close((uv_handle_t *)&s->done_async, on_close_noop);
        uv_run(&s->loop, UV_RUN_DEFAULT); /* runs the close callback */
        uv_loop_close(&s->loop);
    }
    dcn_release(s->model);
    free(s);
    return 2;
}
