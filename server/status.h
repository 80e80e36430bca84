/* status.h — the operator's status page (GET /status): the last 15 minutes
 * of the server's figures as one HTML answer with inline SVG charts drawn
 * here, per model and version, the way HAProxy's stats page shows a
 * proxy at a glance. No script, no style sheet or font from elsewhere:
 * the page is complete in itself and shows nothing that /metrics does not.
 *
 * DESIGN
 * - Samples: every --status-sample-s seconds loop 0 takes a sample of the
 *   cumulative counters (the same sums /metrics renders: candidates,
 *   queue_full rejections, the request-latency and queue-wait
 *   histograms, every loop's busy time, the workers' inference time, and
 *   per version its requests, candidates and latency histogram, per model
 *   its shadow results) and pushes it into a ring of STATUS_SAMPLES. The
 *   page plots the differences of consecutive samples: rates, the busy
 *   shares, and percentiles from the histograms' bucket differences
 *   (interpolated within a bucket, as Prometheus' histogram_quantile does).
 * - Threads: status_push on loop 0; status_render on any loop. One mutex
 *   guards the ring; a render copies nothing out of it but holds the lock
 *   while it writes the page (a few hundred microseconds).
 * - Ownership: the ring owns the samples pushed into it, and frees the
 *   oldest when full.
 */
#ifndef SRV_STATUS_H
#define SRV_STATUS_H

#include <stddef.h>
#include <stdint.h>

#include "proto/rk.h"
#include "server/metrics.h"

#define STATUS_NAME_MAX 64

/* One version's counters in a sample. */
typedef struct status_version {
    char model[STATUS_NAME_MAX + 1];
    char version[40];
    int serving;                  /* else: loading, failed or unloading */
    uint64_t requests, candidates;
    met_hist seconds;
} status_version;

/* One model's shadow results in a sample (a model with a shadow set). */
typedef struct status_shadow {
    char model[STATUS_NAME_MAX + 1];
    char version[40];             /* the shadow version */
    uint64_t scored, skipped, dropped, failed;
    double diff_sum, corr_sum;
    uint64_t diff_n, corr_n;
} status_shadow;

typedef struct status_sample {
    double t;                     /* Unix time */
    uint64_t candidates, rank_ok, shed;
    met_hist request_seconds, queue_seconds;
    double loop_busy_s;           /* summed over the loops */
    size_t n_loops;
    double worker_busy_s;         /* the workers' inference time */
    size_t workers;
    status_version *v;            /* (n_v), owned */
    size_t n_v;
    status_shadow *sh;            /* (n_sh), owned */
    size_t n_sh;
} status_sample;

/* Samples kept: 15 minutes at the default 10 s, plus one to difference. */
#define STATUS_SAMPLES 91

typedef struct status_ring status_ring;

status_ring *status_new(void);
void status_free(status_ring *r);
/* Takes s over (its arrays included) into the ring; the oldest sample
 * goes when it is full. */
void status_push(status_ring *r, status_sample *s);
void status_sample_free(status_sample *s);

/* What the page's heading says. */
typedef struct status_info {
    const char *kernels;
    double start_unix;
    int ready;
    const char *phase;            /* "running", "draining"... */
} status_info;

/* Appends the page (an HTML document). */
void status_render(status_ring *r, const status_info *in, rk_buf *b);

/* The q-quantile (0..1) of the observations counted by (after - before),
 * interpolated within its bucket; NaN when nothing was observed. */
double status_quantile(const met_hist *before, const met_hist *after, double q);

#endif
