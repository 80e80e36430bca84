/* metrics.c — metric storage and Prometheus text rendering (see metrics.h).
 *
 * DESIGN: plain counters, locked by their owner (the worker-state counters
 * and per-loop figures come in met_gauges, read by the caller). Statuses map to a
 * fixed index table; an unexpected status lands in the "other" slot.
 */
#include <stdio.h>
#include <string.h>

#include "server/metrics.h"

static const double seconds_bounds[] = {25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
                                        10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0};
static const double rows_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};

static const int statuses[MET_N_STATUS] = {200, 400, 403, 404, 405, 409, 411, 413,
                                           415, 422, 429, 500, 503, 504, 0, 0};
static const char *const handler_names[MET_N_HANDLERS] = {"rank", "health", "model", "metrics", "admin", "other"};
static const char *const phase_names[MET_N_PHASES] = {"parse", "queue", "inference", "encode"};

void met_hist_init_seconds(met_hist *h)
{
    memset(h, 0, sizeof *h);
    h->bounds = seconds_bounds;
    h->n_bounds = sizeof seconds_bounds / sizeof seconds_bounds[0];
}

void met_hist_init_rows(met_hist *h)
{
    memset(h, 0, sizeof *h);
    h->bounds = rows_bounds;
    h->n_bounds = sizeof rows_bounds / sizeof rows_bounds[0];
}

void met_hist_observe(met_hist *h, double v)
{
    size_t i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void met_init(met_set *m)
{
    memset(m, 0, sizeof *m);
    met_hist_init_seconds(&m->request_seconds);
    for (int p = 0; p < MET_N_PHASES; p++) met_hist_init_seconds(&m->phase_seconds[p]);
    met_hist_init_seconds(&m->inference_seconds);
    met_hist_init_rows(&m->batch_rows);
    met_hist_init_rows(&m->request_candidates);
}

/* Index of a status in `statuses`; the last slot collects the rest. */
size_t met_status_index(int status)
{
    for (size_t i = 0; i < MET_N_STATUS - 1; i++)
        if (statuses[i] == status) return i;
    return MET_N_STATUS - 1;
}

void met_count_request(met_set *m, met_handler h, int status)
{
    if ((unsigned)h >= MET_N_HANDLERS) h = MET_H_OTHER;
    m->requests[h][met_status_index(status)]++;
}

void met_count_rejection(met_set *m, int err)
{
    int i = -err;
    if (i <= 0 || i >= MET_N_REASONS) i = 0;
    m->rejections[i]++;
}

static void hist_add(met_hist *dst, const met_hist *src)
{
    for (size_t i = 0; i <= MET_MAX_BUCKETS; i++) dst->counts[i] += src->counts[i];
    dst->sum += src->sum;
    dst->count += src->count;
}

void met_add(met_set *dst, const met_set *src)
{
    for (int h = 0; h < MET_N_HANDLERS; h++)
        for (int s = 0; s < MET_N_STATUS; s++) dst->requests[h][s] += src->requests[h][s];
    for (int i = 0; i < MET_N_REASONS; i++) dst->rejections[i] += src->rejections[i];
    dst->candidates_scored += src->candidates_scored;
    dst->batches += src->batches;
    dst->batch_errors += src->batch_errors;
    dst->reloads_ok += src->reloads_ok;
    dst->reloads_failed += src->reloads_failed;
    hist_add(&dst->request_seconds, &src->request_seconds);
    for (int p = 0; p < MET_N_PHASES; p++) hist_add(&dst->phase_seconds[p], &src->phase_seconds[p]);
    hist_add(&dst->inference_seconds, &src->inference_seconds);
    hist_add(&dst->batch_rows, &src->batch_rows);
    hist_add(&dst->request_candidates, &src->request_candidates);
}

/* Writes one histogram's series; labels is "" or `key="value"`. */
void met_put_hist(rk_buf *b, const char *name, const char *labels, const met_hist *h)
{
    uint64_t cum = 0;
    const char *sep = *labels ? "," : "";
    for (size_t i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        rk_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                      (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    rk_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    if (*labels) {
        rk_buf_printf(b, "%s_sum{%s} %.9g\n", name, labels, h->sum);
        rk_buf_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        rk_buf_printf(b, "%s_sum %.9g\n", name, h->sum);
        rk_buf_printf(b, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

static void put_head(rk_buf *b, const char *name, const char *type, const char *help)
{
    rk_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Writes a label value with Prometheus escapes (backslash, quote, newline). */
static void put_label_value(rk_buf *b, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '\\') rk_buf_puts(b, "\\\\");
        else if (*s == '"') rk_buf_puts(b, "\\\"");
        else if (*s == '\n') rk_buf_puts(b, "\\n");
        else rk_buf_put(b, s, 1);
    }
}

void met_render(const met_set *m, const met_gauges *g, rk_buf *b)
{
    put_head(b, "dcnserve_requests_total", "counter", "HTTP requests answered, by handler and status code.");
    for (int h = 0; h < MET_N_HANDLERS; h++)
        for (size_t s = 0; s < MET_N_STATUS; s++) {
            if (!m->requests[h][s] && !(h == MET_H_RANK && s == 0)) continue;
            if (s == MET_N_STATUS - 1)
                rk_buf_printf(b, "dcnserve_requests_total{handler=\"%s\",code=\"other\"} %llu\n",
                              handler_names[h], (unsigned long long)m->requests[h][s]);
            else
                rk_buf_printf(b, "dcnserve_requests_total{handler=\"%s\",code=\"%d\"} %llu\n",
                              handler_names[h], statuses[s], (unsigned long long)m->requests[h][s]);
        }
    put_head(b, "dcnserve_rejections_total", "counter", "Ranking requests refused, by reason.");
    for (int i = 0; i < MET_N_REASONS; i++) {
        if (!m->rejections[i] && i != -RK_EBUSY) continue;
        rk_buf_printf(b, "dcnserve_rejections_total{reason=\"%s\"} %llu\n", rk_err_name(-i),
                      (unsigned long long)m->rejections[i]);
    }
    put_head(b, "dcnserve_candidates_scored_total", "counter", "Candidates scored.");
    rk_buf_printf(b, "dcnserve_candidates_scored_total %llu\n", (unsigned long long)m->candidates_scored);
    put_head(b, "dcnserve_batches_total", "counter", "Batches run by the worker pool.");
    rk_buf_printf(b, "dcnserve_batches_total %llu\n", (unsigned long long)m->batches);
    put_head(b, "dcnserve_batch_errors_total", "counter", "Batches the engine refused.");
    rk_buf_printf(b, "dcnserve_batch_errors_total %llu\n", (unsigned long long)m->batch_errors);
    put_head(b, "dcnserve_reloads_total", "counter", "Model reloads, by result.");
    rk_buf_printf(b, "dcnserve_reloads_total{result=\"ok\"} %llu\n", (unsigned long long)m->reloads_ok);
    rk_buf_printf(b, "dcnserve_reloads_total{result=\"failed\"} %llu\n", (unsigned long long)m->reloads_failed);
    put_head(b, "dcnserve_worker_states_prepared_total", "counter",
             "Worker states (scratch memory, staging buffers, helper threads) built ahead, at start-up and on reload.");
    rk_buf_printf(b, "dcnserve_worker_states_prepared_total %llu\n", (unsigned long long)g->states_prepared);
    put_head(b, "dcnserve_worker_states_built_on_request_total", "counter",
             "Worker states a worker had to build for a batch, none being prepared for its model.");
    rk_buf_printf(b, "dcnserve_worker_states_built_on_request_total %llu\n",
                  (unsigned long long)g->states_built_on_request);

    put_head(b, "dcnserve_request_duration_seconds", "histogram",
             "Ranking requests, from the first byte handled to the answer queued.");
    met_put_hist(b, "dcnserve_request_duration_seconds", "", &m->request_seconds);
    put_head(b, "dcnserve_request_phase_seconds", "histogram",
             "Ranking requests' time by phase: parse, queue wait, inference, encode.");
    for (int p = 0; p < MET_N_PHASES; p++) {
        char lab[32];
        snprintf(lab, sizeof lab, "phase=\"%s\"", phase_names[p]);
        met_put_hist(b, "dcnserve_request_phase_seconds", lab, &m->phase_seconds[p]);
    }
    put_head(b, "dcnserve_queue_wait_seconds", "histogram", "Time a request waited for its first batch.");
    met_put_hist(b, "dcnserve_queue_wait_seconds", "", &m->phase_seconds[MET_P_QUEUE]);
    put_head(b, "dcnserve_inference_seconds", "histogram", "Engine time per batch.");
    met_put_hist(b, "dcnserve_inference_seconds", "", &m->inference_seconds);
    put_head(b, "dcnserve_batch_rows", "histogram", "Rows per batch.");
    met_put_hist(b, "dcnserve_batch_rows", "", &m->batch_rows);
    put_head(b, "dcnserve_request_candidates", "histogram", "Candidates per ranking request.");
    met_put_hist(b, "dcnserve_request_candidates", "", &m->request_candidates);

    put_head(b, "dcnserve_inflight_requests", "gauge", "Ranking requests accepted and not yet answered.");
    rk_buf_printf(b, "dcnserve_inflight_requests %llu\n", (unsigned long long)g->inflight_requests);
    put_head(b, "dcnserve_queue_rows", "gauge", "Candidate rows waiting for a worker.");
    rk_buf_printf(b, "dcnserve_queue_rows %llu\n", (unsigned long long)g->queue_rows);
    put_head(b, "dcnserve_workers", "gauge", "Worker threads.");
    rk_buf_printf(b, "dcnserve_workers %llu\n", (unsigned long long)g->workers);
    put_head(b, "dcnserve_ready", "gauge", "1 when ready to serve, 0 while draining.");
    rk_buf_printf(b, "dcnserve_ready %d\n", g->ready);
    put_head(b, "dcnserve_model_info", "gauge", "The model being served (always 1).");
    rk_buf_puts(b, "dcnserve_model_info{name=\"");
    put_label_value(b, g->model_name);
    rk_buf_puts(b, "\",version=\"");
    put_label_value(b, g->model_version);
    rk_buf_printf(b, "\",crc32=\"%08x\"} 1\n", (unsigned)g->model_crc32);
    put_head(b, "dcnserve_model_loaded_timestamp_seconds", "gauge", "When the model being served was loaded (Unix time).");
    rk_buf_printf(b, "dcnserve_model_loaded_timestamp_seconds %.3f\n", g->model_loaded_unix_s);
    put_head(b, "dcnserve_start_time_seconds", "gauge", "Process start (Unix time).");
    rk_buf_printf(b, "dcnserve_start_time_seconds %.3f\n", g->start_unix_s);
    put_head(b, "dcnserve_loops", "gauge", "Event loops serving connections.");
    rk_buf_printf(b, "dcnserve_loops %zu\n", g->n_loops);
    put_head(b, "dcnserve_loop_busy_seconds_total", "counter",
             "Time each event loop spent working (outside epoll_wait); its rate is the loop's busy share, 1 when saturated.");
    for (size_t i = 0; i < g->n_loops; i++)
        rk_buf_printf(b, "dcnserve_loop_busy_seconds_total{loop=\"%zu\"} %.6f\n", i, g->loops[i].busy_s);
    put_head(b, "dcnserve_loop_cpu_seconds_total", "counter",
             "CPU time of each event loop's thread (below its busy time when other threads take its core).");
    for (size_t i = 0; i < g->n_loops; i++)
        rk_buf_printf(b, "dcnserve_loop_cpu_seconds_total{loop=\"%zu\"} %.6f\n", i, g->loops[i].cpu_s);
    put_head(b, "dcnserve_loop_requests_total", "counter", "HTTP requests answered, by event loop.");
    for (size_t i = 0; i < g->n_loops; i++)
        rk_buf_printf(b, "dcnserve_loop_requests_total{loop=\"%zu\"} %llu\n", i,
                      (unsigned long long)g->loops[i].requests);
    put_head(b, "dcnserve_loop_connections", "gauge", "Open connections, by event loop.");
    for (size_t i = 0; i < g->n_loops; i++)
        rk_buf_printf(b, "dcnserve_loop_connections{loop=\"%zu\"} %llu\n", i,
                      (unsigned long long)g->loops[i].connections);
}
