/* test_metrics.c — histogram bucketing and the Prometheus text rendering. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "server/metrics.h"

Test(metrics, histogram_buckets_are_cumulative)
{
    met_set m;
    met_init(&m);
    met_hist_observe(&m.request_seconds, 30e-6);  /* 50 µs bucket */
    met_hist_observe(&m.request_seconds, 0.003);  /* 5 ms bucket */
    met_hist_observe(&m.request_seconds, 99.0);   /* +Inf */
    met_hist_observe(&m.batch_rows, 1);
    met_hist_observe(&m.batch_rows, 3);
    met_count_request(&m, MET_H_RANK, 200);
    met_count_request(&m, MET_H_RANK, 200);
    met_count_request(&m, MET_H_RANK, 504);
    met_count_request(&m, MET_H_OTHER, 418);
    met_count_rejection(&m, RK_EBUSY);
    m.candidates_scored = 42;
    met_gauges g = {.inflight_requests = 3, .queue_rows = 7, .workers = 2, .ready = 1,
                    .model_name = "m\"x", .model_version = "1", .model_crc32 = 0xabc,
                    .states_prepared = 4, .states_built_on_request = 1};
    rk_buf b = {0};
    met_render(&m, &g, &b);
    const char *t = b.data;
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_bucket{le=\"2.5e-05\"} 0\n"));
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_bucket{le=\"5e-05\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_bucket{le=\"0.005\"} 2\n"));
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_bucket{le=\"10\"} 2\n"));
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_count 3\n"));
    cr_assert(strstr(t, "dcnserve_batch_rows_bucket{le=\"2\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_batch_rows_bucket{le=\"4\"} 2\n"));
    cr_assert(strstr(t, "dcnserve_requests_total{handler=\"rank\",code=\"200\"} 2\n"));
    cr_assert(strstr(t, "dcnserve_requests_total{handler=\"rank\",code=\"504\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_requests_total{handler=\"other\",code=\"other\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_rejections_total{reason=\"queue_full\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_candidates_scored_total 42\n"));
    cr_assert(strstr(t, "dcnserve_request_phase_seconds_count{phase=\"encode\"} 0\n"));
    cr_assert(strstr(t, "dcnserve_inflight_requests 3\n"));
    cr_assert(strstr(t, "# TYPE dcnserve_worker_states_prepared_total counter\ndcnserve_worker_states_prepared_total 4\n"));
    cr_assert(strstr(t, "dcnserve_worker_states_built_on_request_total 1\n"));
    cr_assert(strstr(t, "dcnserve_model_info{name=\"m\\\"x\",version=\"1\",crc32=\"00000abc\"} 1\n"));
    cr_assert(strstr(t, "# TYPE dcnserve_batch_rows histogram\n"));
    free(b.data);
}

/* Per-loop sets summed at scrape time: every counter and bucket adds up,
 * and each loop's own figures get one line each. */
Test(metrics, sets_add_up_and_loops_are_labelled)
{
    met_set a, b, sum;
    met_init(&a);
    met_init(&b);
    met_init(&sum);
    met_count_request(&a, MET_H_RANK, 200);
    met_count_request(&b, MET_H_RANK, 200);
    met_count_request(&b, MET_H_RANK, 429);
    met_count_rejection(&b, RK_EBUSY);
    met_hist_observe(&a.request_seconds, 30e-6);
    met_hist_observe(&b.request_seconds, 99.0);
    met_hist_observe(&b.phase_seconds[MET_P_ENCODE], 1e-3);
    a.candidates_scored = 5;
    b.candidates_scored = 7;
    b.batches = 2;
    b.reloads_failed = 1;
    met_add(&sum, &a);
    met_add(&sum, &b);
    cr_assert_eq(sum.candidates_scored, 12);
    cr_assert_eq(sum.batches, 2);
    cr_assert_eq(sum.reloads_failed, 1);
    cr_assert_eq(sum.request_seconds.count, 2);
    cr_assert_float_eq(sum.request_seconds.sum, 99.0 + 30e-6, 1e-9);
    met_loop_stat ls[2] = {{.busy_s = 1.5, .cpu_s = 1.25, .requests = 1, .connections = 3}, {.busy_s = 0.25, .requests = 2}};
    met_gauges g = {.model_name = "m", .model_version = "1", .n_loops = 2, .loops = ls};
    rk_buf out = {0};
    met_render(&sum, &g, &out);
    const char *t = out.data;
    cr_assert(strstr(t, "dcnserve_requests_total{handler=\"rank\",code=\"200\"} 2\n"));
    cr_assert(strstr(t, "dcnserve_requests_total{handler=\"rank\",code=\"429\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_rejections_total{reason=\"queue_full\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_bucket{le=\"5e-05\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
    cr_assert(strstr(t, "dcnserve_request_phase_seconds_count{phase=\"encode\"} 1\n"));
    cr_assert(strstr(t, "dcnserve_loops 2\n"));
    cr_assert(strstr(t, "dcnserve_loop_busy_seconds_total{loop=\"0\"} 1.500000\n"));
    cr_assert(strstr(t, "dcnserve_loop_busy_seconds_total{loop=\"1\"} 0.250000\n"));
    cr_assert(strstr(t, "dcnserve_loop_cpu_seconds_total{loop=\"0\"} 1.250000\n"));
    cr_assert(strstr(t, "dcnserve_loop_requests_total{loop=\"1\"} 2\n"));
    cr_assert(strstr(t, "dcnserve_loop_connections{loop=\"0\"} 3\n"));
    free(out.data);
}
