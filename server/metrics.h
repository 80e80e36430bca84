/* metrics.h — the daemon's Prometheus metrics: counters, fixed-bucket
 * histograms and gauges, rendered in the text exposition format 0.0.4.
 *
 * DESIGN: a met_set is plain memory with no lock of its own: its owner
 * serialises access (the server keeps one per event loop, under that
 * loop's mutex, and one for batch and reload counters under another) and
 * /metrics sums them with met_add at scrape time. Values kept
 * elsewhere (gauges, and the worker-state counters that the scorer keeps
 * under its stash lock, score.h) are read by the caller at render time and
 * passed in met_gauges. Histogram buckets
 * are fixed at compile time: seconds from 25 µs to 10 s, and powers of two
 * for row counts.
 */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "proto/rk.h"

#define MET_MAX_BUCKETS 20

typedef struct met_hist {
    size_t n_bounds;
    const double *bounds;               /* (n_bounds) upper bounds, ascending */
    uint64_t counts[MET_MAX_BUCKETS + 1]; /* per bucket, not cumulative; last: +Inf */
    double sum;
    uint64_t count;
} met_hist;

void met_hist_init_seconds(met_hist *h);
void met_hist_init_rows(met_hist *h);
void met_hist_observe(met_hist *h, double v);
/* Appends h as a Prometheus histogram `name` with labels ("" or
 * `a="x",b="y"`): cumulative buckets, sum and count. */
void met_put_hist(rk_buf *b, const char *name, const char *labels, const met_hist *h);

/* Handlers (label "handler") and phases (label "phase") of the histograms. */
typedef enum { MET_H_RANK, MET_H_HEALTH, MET_H_MODEL, MET_H_METRICS, MET_H_ADMIN, MET_H_OTHER, MET_N_HANDLERS } met_handler;
typedef enum { MET_P_PARSE, MET_P_QUEUE, MET_P_INFERENCE, MET_P_ENCODE, MET_N_PHASES } met_phase;
#define MET_N_STATUS 16
#define MET_N_REASONS 20

typedef struct met_set {
    uint64_t requests[MET_N_HANDLERS][MET_N_STATUS]; /* by met_status_index */
    uint64_t rejections[MET_N_REASONS];              /* by -rk_err */
    uint64_t candidates_scored;
    uint64_t batches, batch_errors;
    uint64_t reloads_ok, reloads_failed;
    met_hist request_seconds;           /* /rank, arrival to answer */
    met_hist phase_seconds[MET_N_PHASES];
    met_hist inference_seconds;         /* per batch */
    met_hist batch_rows;
    met_hist request_candidates;
} met_set;

/* One event loop's own figures, read at render time. */
typedef struct met_loop_stat {
    double busy_s;                      /* time outside epoll_wait since start */
    double cpu_s;                       /* CPU time of its thread */
    uint64_t requests;                  /* HTTP requests it answered */
    uint64_t connections;               /* connections it holds now */
} met_loop_stat;

/* Values read at render time (states_*: counters). */
typedef struct met_gauges {
    uint64_t inflight_requests;
    uint64_t queue_rows;
    uint64_t workers;
    int ready;
    const char *model_name, *model_version;
    uint32_t model_crc32;
    double model_loaded_unix_s;
    double start_unix_s;
    uint64_t states_prepared;           /* worker states built ahead (score_prepare) */
    uint64_t states_built_on_request;   /* ... and by a worker for a batch */
    size_t n_loops;
    const met_loop_stat *loops;         /* (n_loops) */
} met_gauges;

void met_init(met_set *m);
/* The index of an HTTP status in met_set.requests' second dimension. */
size_t met_status_index(int status);
/* Counts one answered HTTP request with its status. */
void met_count_request(met_set *m, met_handler h, int status);
/* Counts a rejection of a /rank request by its error code. */
void met_count_rejection(met_set *m, int rk_err);
/* Adds every counter and histogram of src into dst (same bucket bounds). */
void met_add(met_set *dst, const met_set *src);
/* Renders everything into b. */
void met_render(const met_set *m, const met_gauges *g, rk_buf *b);

#endif
