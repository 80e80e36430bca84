/* test_response.c — ranking (stable, top_k, NaN last) and the JSON encoding
 * of answers and errors, parsed back with jansson. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/rk.h"

Test(rank, sorts_descending_stable_with_top_k)
{
    float s[] = {0.5f, 0.9f, 0.5f, NAN, 0.1f, 0.9f, 0.5f};
    uint32_t o[7];
    size_t n = rk_rank(s, 7, -1, o);
    uint32_t want[] = {1, 5, 0, 2, 6, 4, 3};
    cr_assert_eq(n, 7);
    for (int i = 0; i < 7; i++) cr_assert_eq(o[i], want[i], "position %d", i);
    cr_assert_eq(rk_rank(s, 7, 3, o), 3);
    cr_assert_eq(o[2], 0);
    cr_assert_eq(rk_rank(s, 7, 0, o), 0);
    cr_assert_eq(rk_rank(s, 7, 100, o), 7);
    cr_assert_eq(rk_rank(s, 0, -1, o), 0);
}

Test(rank, large_input_is_stable)
{
    enum { N = 5000 };
    float *s = malloc(N * sizeof *s);
    uint32_t *o = malloc(N * sizeof *o);
    for (int i = 0; i < N; i++) s[i] = (float)((i * 7919) % 13);
    rk_rank(s, N, -1, o);
    for (int i = 1; i < N; i++) {
        cr_assert_geq(s[o[i - 1]], s[o[i]]);
        if (s[o[i - 1]] == s[o[i]]) cr_assert_lt(o[i - 1], o[i]);
    }
    free(s);
    free(o);
}

Test(encode, answer_round_trips_through_json)
{
    rk_request rq = {0};
    json_t *ids[3] = {json_string("a\"b\n"), json_integer(-7), json_string("\xc3\xa9")};
    rq.n_cands = 3;
    rq.cand_ids = ids;
    rq.request_id = json_string("req-1");
    rq.want_logits = 1;
    float scores[] = {0.25f, 0.75f, 0.5f}, logits[] = {-1.0f, 1.0f, 0.0f};
    uint32_t order[3];
    size_t k = rk_rank(scores, 3, 2, order);
    rk_buf b = {0};
    rk_encode_head(&b, &rq, "m", "v\\1", scores, logits, order, k);
    rk_latency lat = {10, 1, 2, 3, 4};
    rk_encode_tail(&b, &lat);
    json_error_t e;
    json_t *o = json_loads(b.data, 0, &e);
    cr_assert_not_null(o, "%s: %s", b.data, e.text);
    cr_assert_str_eq(json_string_value(json_object_get(o, "request_id")), "req-1");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "model"), "version")), "v\\1");
    json_t *r = json_object_get(o, "ranked");
    cr_assert_eq(json_array_size(r), 2);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(r, 0), "id")), -7);
    cr_assert_float_eq(json_real_value(json_object_get(json_array_get(r, 0), "score")), 0.75, 1e-9);
    cr_assert_float_eq(json_number_value(json_object_get(json_array_get(r, 0), "logit")), 1.0, 1e-9);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(r, 1), "rank")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(r, 1), "id")), "\xc3\xa9");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(o, "latency_us"), "encode")), 4);
    json_decref(o);
    free(b.data);
    for (int i = 0; i < 3; i++) json_decref(ids[i]);
    json_decref(rq.request_id);
}

Test(encode, errors_have_code_and_message)
{
    rk_buf b = {0};
    rk_encode_error(&b, RK_EBUSY, NULL);
    json_t *o = json_loads(b.data, 0, NULL);
    json_t *e = json_object_get(o, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), "queue_full");
    cr_assert_str_eq(json_string_value(json_object_get(e, "message")), rk_strerror(RK_EBUSY));
    json_decref(o);
    free(b.data);
    b = (rk_buf){0};
    rk_encode_error(&b, RK_EFEATURE, "x \"y\"\t");
    o = json_loads(b.data, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "message")), "x \"y\"\t");
    json_decref(o);
    free(b.data);
    cr_assert_str_eq(rk_err_name(12345), "internal");
}

Test(encode, buffer_grows)
{
    rk_buf b = {0};
    for (int i = 0; i < 10000; i++) rk_buf_printf(&b, "%d,", i);
    cr_assert_eq(b.oom, 0);
    cr_assert_eq(strncmp(b.data + b.len - 5, "9999,", 5), 0);
    cr_assert_eq(strlen(b.data), b.len);
    free(b.data);
}
