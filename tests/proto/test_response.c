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

/* Reference: the length of the UTF-8 character at s (n bytes), decoding the
 * bits and re-encoding the code point, 0 unless the bytes are exactly its
 * shortest form and it is a scalar value (not a surrogate, <= U+10FFFF). */
static size_t ref_utf8_char(const unsigned char *s, size_t n)
{
    if (!n) return 0;
    if (s[0] < 0x80) return 1;
    size_t len = s[0] >= 0xf0 && s[0] < 0xf8 ? 4 : s[0] >= 0xe0 && s[0] < 0xf0 ? 3 : s[0] >= 0xc0 && s[0] < 0xe0 ? 2 : 0;
    if (!len || n < len) return 0;
    uint32_t cp = s[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    size_t shortest = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (shortest != len || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return 0;
    return len;
}

/* Every sequence of up to three bytes, and four-byte ones for every lead and
 * second byte, against the reference, whole and cut short. */
Test(utf8, classifies_like_the_reference)
{
    unsigned char s[4];
    static const unsigned char tails[] = {0x00, 0x41, 0x7f, 0x80, 0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (unsigned c = 0; c < 256; c++) {
                s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = (unsigned char)c, s[3] = 0x80;
                for (size_t n = 0; n <= 4; n++)
                    if (rk_utf8_char((const char *)s, n) != ref_utf8_char(s, n))
                        cr_assert_fail("%02x %02x %02x 80, %zu bytes: %zu, reference %zu", a, b, c, n,
                                rk_utf8_char((const char *)s, n), ref_utf8_char(s, n));
            }
    for (unsigned a = 0xf0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (size_t i = 0; i < sizeof tails; i++)
                for (size_t j = 0; j < sizeof tails; j++) {
                    s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = tails[i], s[3] = tails[j];
                    cr_assert_eq(rk_utf8_char((const char *)s, 4), ref_utf8_char(s, 4), "%02x %02x %02x %02x", a,
                                 b, tails[i], tails[j]);
                }
}

/* An error answer is valid UTF-8 JSON whatever bytes its message holds: valid
 * characters pass, every other byte becomes U+FFFD (issue 15). */
Test(encode, error_messages_of_any_bytes_are_json)
{
    static const struct { const char *msg, *want; } cases[] = {
        {"near '\"\\\xf0'", "near '\"\\\xef\xbf\xbd'"},
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x8c\x80 ok", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x8c\x80 ok"},
        {"cut \xe2\x82", "cut \xef\xbf\xbd\xef\xbf\xbd"},
        {"overlong \xc0\xaf", "overlong \xef\xbf\xbd\xef\xbf\xbd"},
        {"surrogate \xed\xa0\x80!", "surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!"},
        {"big \xf4\x90\x80\x80", "big \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xff\xfe\"\x01", "\xef\xbf\xbd\xef\xbf\xbd\"\x01"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rk_buf b = {0};
        rk_encode_error(&b, RK_EJSON, cases[i].msg);
        json_error_t e;
        json_t *o = json_loadb(b.data, b.len, 0, &e);
        cr_assert_not_null(o, "case %zu: %s: %s", i, e.text, b.data);
        cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "message")), cases[i].want,
                         "case %zu", i);
        json_decref(o);
        free(b.data);
    }
    /* every single byte, and every pair, as a message */
    for (unsigned a = 1; a < 256; a++)
        for (unsigned c = 0; c < 256; c++) {
            char m[3] = {(char)a, (char)c, 0};
            rk_buf b = {0};
            rk_encode_error(&b, RK_EJSON, m);
            json_t *o = json_loadb(b.data, b.len, 0, NULL);
            cr_assert_not_null(o, "message %02x %02x: %s", a, c, b.data);
            json_decref(o);
            free(b.data);
        }
}
