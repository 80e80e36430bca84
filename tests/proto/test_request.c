/* test_request.c — the request decoder against a small model written by
 * tools/dcnfile.py (through tests/integration/test_server.py's make_model):
 * every field, context vs candidate bookkeeping, id mapping, and every
 * error, each naming the field. Run from the repository root. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/rk.h"

static dcn_model *M;
static char dir[64], path[128];

static void setup(void)
{
    char cmd[512], err[256];
    snprintf(dir, sizeof dir, "/tmp/dcn-test-request-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/tiny.dcn", dir);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import sys; sys.path.insert(0, \"tests/integration\"); "
             "import test_server as t; t.make_model(sys.argv[1])' %s", path);
    cr_assert_eq(system(cmd), 0, "cannot write the test model (run from the repository root)");
    cr_assert_eq(dcn_open(path, NULL, &M, err, sizeof err), 0, "%s", err);
}

static void teardown(void)
{
    dcn_release(M);
    unlink(path);
    rmdir(dir);
}

TestSuite(request, .init = setup, .fini = teardown);

/* Decodes s; returns the code, the request in *rq and the message in err. */
static int dec(const char *s, rk_request **rq, char *err, size_t n)
{
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    err[0] = 0;
    return rk_decode(M, s, strlen(s), &lim, rq, err, n);
}

Test(request, decodes_every_field)
{
    rk_request *rq;
    char err[256];
    int rc = dec("{\"request_id\": 42, \"top_k\": 2, \"deadline_ms\": 50, \"return\": {\"logits\": true},"
                 " \"context\": {\"I2\": 1.5, \"C2\": [\"a\", \"b\"], \"C3\": 4},"
                 " \"candidates\": [{\"id\": \"x\", \"features\": {\"I1\": 3, \"C3\": null}},"
                 "                  {\"id\": 7, \"features\": {\"C1\": \"0a\", \"C2\": []}},"
                 "                  {\"id\": \"z\"}]}", &rq, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(json_integer_value(rq->request_id), 42);
    cr_assert_eq(rq->top_k, 2);
    cr_assert_eq(rq->deadline_ms, 50);
    cr_assert_eq(rq->want_logits, 1);
    cr_assert_eq(rq->n_cands, 3);
    cr_assert_eq(rq->n_dense, 2);
    cr_assert_eq(rq->n_sparse, 3);
    cr_assert_str_eq(json_string_value(rq->cand_ids[0]), "x");
    cr_assert_eq(json_integer_value(rq->cand_ids[1]), 7);
    /* context */
    cr_assert(isnan(rq->ctx_dense[0]));
    cr_assert_float_eq(rq->ctx_dense[1], 1.5f, 0);
    cr_assert_eq(rq->ctx_off[0], 0);
    cr_assert_eq(rq->ctx_off[1], 0);            /* C1 absent */
    cr_assert_eq(rq->ctx_off[2], 2);            /* C2: two ids */
    cr_assert_eq(rq->ctx_off[3], 3);            /* C3: one id */
    cr_assert_eq(rq->ctx_ids[2], 4);            /* index mapping */
    cr_assert_eq(rq->ctx_ids[0], dcn_map_str(M, 1, "a", 1));
    /* candidates: given masks, per-row features */
    cr_assert_eq(rq->dense_given[0 * 2 + 0], 1);
    cr_assert_float_eq(rq->dense[0], 3.0f, 0);
    cr_assert_eq(rq->dense_given[0 * 2 + 1], 0);
    cr_assert_eq(rq->sparse_given[0 * 3 + 2], 1); /* C3: null given -> missing */
    cr_assert_eq(rq->sp_off[0 * 3 + 2], rq->sp_off[0 * 3 + 3]);
    cr_assert_eq(rq->sparse_given[1 * 3 + 0], 1);
    cr_assert_eq(rq->sp_ids[rq->sp_off[1 * 3 + 0]], dcn_map_str(M, 0, "0a", 2));
    cr_assert_eq(rq->sparse_given[1 * 3 + 1], 1); /* [] given -> missing */
    cr_assert_eq(rq->sp_off[1 * 3 + 1], rq->sp_off[1 * 3 + 2]);
    cr_assert_eq(rq->sparse_given[2 * 3 + 0], 0);
    cr_assert_eq(rq->dense_per_row[0], 1);
    cr_assert_eq(rq->dense_per_row[1], 0);
    cr_assert_eq(rq->sparse_per_row[0], 1);
    cr_assert_eq(rq->sparse_per_row[1], 1);
    cr_assert_eq(rq->sparse_per_row[2], 1);
    cr_assert_eq(rq->sp_off[9], rq->sp_off[8]);
    rk_request_free(rq);
}

Test(request, defaults)
{
    rk_request *rq;
    char err[256];
    cr_assert_eq(dec("{\"candidates\": []}", &rq, err, sizeof err), 0, "%s", err);
    cr_assert_null(rq->request_id);
    cr_assert_eq(rq->top_k, -1);
    cr_assert_eq(rq->deadline_ms, 0);
    cr_assert_eq(rq->n_cands, 0);
    rk_request_free(rq);
}

Test(request, lenient_ignores_unknown_names)
{
    rk_request *rq;
    char err[256];
    const char *s = "{\"candidates\": [{\"id\": 1, \"features\": {\"nope\": 1, \"I1\": 2}}]}";
    cr_assert_eq(dec(s, &rq, err, sizeof err), RK_EFEATURE);
    cr_assert(strstr(err, "nope"), "%s", err);
    cr_assert_null(rq);
    rk_limits lim = {.max_candidates = 10, .strict = 0};
    cr_assert_eq(rk_decode(M, s, strlen(s), &lim, &rq, err, sizeof err), 0);
    rk_request_free(rq);
    const char *s2 = "{\"strict\": false, \"candidates\": [{\"id\": 1, \"features\": {\"nope\": 1}}]}";
    cr_assert_eq(dec(s2, &rq, err, sizeof err), 0);
    rk_request_free(rq);
}

/* Each case: body, expected code, a substring of the message. */
static const struct { const char *body; int code; const char *needle; } cases[] = {
    {"{", RK_EJSON, "invalid JSON"},
    {"[]", RK_ESCHEMA, "object"},
    {"{}", RK_ESCHEMA, "candidates"},
    {"{\"candidates\": {}}", RK_ESCHEMA, "candidates"},
    {"{\"candidates\": [], \"x\": 1}", RK_ESCHEMA, "\"x\""},
    {"{\"candidates\": [], \"top_k\": -1}", RK_ESCHEMA, "top_k"},
    {"{\"candidates\": [], \"top_k\": 1.5}", RK_ESCHEMA, "top_k"},
    {"{\"candidates\": [], \"deadline_ms\": 0}", RK_ESCHEMA, "deadline_ms"},
    {"{\"candidates\": [], \"return\": {\"scores\": true}}", RK_ESCHEMA, "return.scores"},
    {"{\"candidates\": [], \"strict\": 1}", RK_ESCHEMA, "strict"},
    {"{\"candidates\": [], \"request_id\": {}}", RK_ESCHEMA, "request_id"},
    {"{\"candidates\": [], \"context\": []}", RK_ESCHEMA, "context"},
    {"{\"candidates\": [1]}", RK_ESCHEMA, "candidates[0]"},
    {"{\"candidates\": [{\"id\": null}]}", RK_ESCHEMA, "candidates[0].id"},
    {"{\"candidates\": [{\"id\": 1, \"extra\": 2}]}", RK_ESCHEMA, "extra"},
    {"{\"candidates\": [{\"id\": 1, \"features\": 3}]}", RK_ESCHEMA, "features"},
    {"{\"candidates\": [{\"id\": 1}, {\"id\": 2, \"features\": {\"I1\": true}}]}", RK_EVALUE, "candidates[1].features.I1"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I2\": [1]}}]}", RK_EVALUE, "I2"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"C1\": 2.5}}]}", RK_EVALUE, "C1"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"C1\": [\"a\", \"b\"]}}]}", RK_EVALUE, "at most 1"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"C2\": [\"a\", null]}}]}", RK_EVALUE, "C2[1]"},
    {"{\"context\": {\"C3\": true}, \"candidates\": []}", RK_EVALUE, "context.C3"},
    {"{\"context\": {\"zz\": 1}, \"candidates\": []}", RK_EFEATURE, "context.zz"},
    {"{\"candidates\": [{\"id\": 1}, {\"id\": 1}, {\"id\": 1}, {\"id\": 1}, {\"id\": 1}, {\"id\": 1},"
     " {\"id\": 1}, {\"id\": 1}, {\"id\": 1}, {\"id\": 1}, {\"id\": 1}]}", RK_ETOOMANY, "limit is 10"},
    {"{\"candidates\": [], \"candidates\": []}", RK_EJSON, "duplicate"},
    {"{\"candidates\": [], \"model\": 5}", RK_ESCHEMA, "model: expected a string of 1 to 64 bytes"},
    {"{\"candidates\": [], \"version\": \"v1\"}", RK_ESCHEMA, "version: expected an integer from 1 to 2^53"},
    {"{\"candidates\": [], \"routing_key\": 1.5}", RK_ESCHEMA, "routing_key: expected a string of at most 256"},
};

Test(request, every_error_names_the_field)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rk_request *rq = (rk_request *)1;
        char err[256];
        int rc = dec(cases[i].body, &rq, err, sizeof err);
        cr_assert_eq(rc, cases[i].code, "case %zu (%s): got %d (%s)", i, cases[i].body, rc, err);
        cr_assert_null(rq);
        cr_assert(strstr(err, cases[i].needle), "case %zu: message \"%s\" lacks \"%s\"", i, err, cases[i].needle);
    }
}

/* ------------------------------------------------------------ fast path vs DOM */

/* 1 if two decoded requests are identical, field by field (floats by bits,
 * so NaN equals NaN). */
static int same_request(const rk_request *a, const rk_request *b, char *why, size_t n)
{
#define DIFF(cond, what) do { if (cond) { snprintf(why, n, "%s", what); return 0; } } while (0)
    DIFF(a->n_cands != b->n_cands, "n_cands");
    DIFF(a->top_k != b->top_k || a->deadline_ms != b->deadline_ms || a->want_logits != b->want_logits, "options");
    DIFF(a->has_model != b->has_model || strcmp(a->model, b->model) || a->version != b->version ||
         a->has_routing_key != b->has_routing_key || strcmp(a->routing_key, b->routing_key), "routing");
    DIFF(!a->request_id != !b->request_id || (a->request_id && !json_equal(a->request_id, b->request_id)),
         "request_id");
    size_t nc = a->n_cands, nd = a->n_dense, ns = a->n_sparse;
    for (size_t i = 0; i < nc; i++) DIFF(!json_equal(a->cand_ids[i], b->cand_ids[i]), "cand_ids");
    DIFF(memcmp(a->ctx_dense, b->ctx_dense, nd * sizeof(float)), "ctx_dense");
    DIFF(memcmp(a->ctx_off, b->ctx_off, (ns + 1) * sizeof(uint32_t)), "ctx_off");
    DIFF(memcmp(a->ctx_ids, b->ctx_ids, a->ctx_off[ns] * sizeof(int64_t)), "ctx_ids");
    DIFF(memcmp(a->dense_given, b->dense_given, nc * nd), "dense_given");
    for (size_t i = 0; i < nc * nd; i++)
        DIFF(a->dense_given[i] && memcmp(&a->dense[i], &b->dense[i], sizeof(float)), "dense");
    DIFF(memcmp(a->sp_off, b->sp_off, (nc * ns + 1) * sizeof(uint32_t)), "sp_off");
    DIFF(memcmp(a->sp_ids, b->sp_ids, a->sp_off[nc * ns] * sizeof(int64_t)), "sp_ids");
    DIFF(memcmp(a->sparse_given, b->sparse_given, nc * ns), "sparse_given");
    DIFF(memcmp(a->dense_per_row, b->dense_per_row, nd), "dense_per_row");
    DIFF(memcmp(a->sparse_per_row, b->sparse_per_row, ns), "sparse_per_row");
    return 1;
#undef DIFF
}

/* Copies s (n bytes) into an exactly sized buffer, so that ASan sees any
 * read past the end of the body (bodies are not NUL-terminated). */
static char *exact_copy(const char *s, size_t n)
{
    char *b = malloc(n ? n : 1);
    cr_assert_not_null(b);
    memcpy(b, s, n);
    return b;
}

/* Valid requests, unusual in every way the fast path must get right; each
 * must decode on the fast path to exactly what the DOM decoder makes. */
static const char *valid_bodies[] = {
    "{\"candidates\": []}",
    " \t\r\n{ \"candidates\" : [ ] } \n",
    "{\"candidates\": [{\"id\": 1}], \"request_id\": null, \"top_k\": null, \"deadline_ms\": null, \"return\": null, \"context\": null}",
    "{\"context\": {\"I1\": 5}, \"candidates\": [{\"features\": {\"I2\": 1}, \"id\": \"a\"}], \"context_is_before\": 0}" + 0, /* replaced below */
    "{\"candidates\": [{\"features\": null, \"id\": -0}, {\"id\": -9223372036854775808}, {\"id\": 9223372036854775807}],"
    " \"strict\": true, \"return\": {}, \"top_k\": 0, \"deadline_ms\": 1}",
    "{\"request_id\": \"r\\u00e9\\ud83d\\ude00\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"candidates\": [{\"id\": \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}]}",
    "{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 1.5, \"I2\": -2.25e-3}}, {\"id\": 2, \"features\": {\"I1\": 1e300, \"I2\": -3.4e38}},"
    " {\"id\": 3, \"features\": {\"I1\": 1e-400, \"I2\": 0.1}}, {\"id\": 4, \"features\": {\"I1\": 123456789012345678901234567890.0, \"I2\": 4.9e-324}},"
    " {\"id\": 5, \"features\": {\"I1\": 9007199254740993, \"I2\": 0.30000000000000004}}, {\"id\": 6, \"features\": {\"I1\": -0.0, \"I2\": 1E+2}},"
    " {\"id\": 7, \"features\": {\"I1\": 2.5e22, \"I2\": 12345678901234567.5}}, {\"id\": 8, \"features\": {\"I1\": null, \"I2\": 0e0}}]}",
    "{\"candidates\": [{\"id\": 1, \"features\": {\"C1\": \"68fd1e64\", \"C2\": [\"a\", 5, \"x y\"], \"C3\": 4}},"
    " {\"id\": 2, \"features\": {\"C3\": \"007\", \"C2\": [], \"C1\": null}}, {\"id\": 3, \"features\": {\"C2\": \"caf\xc3\xa9\", \"C1\": \"\"}},"
    " {\"id\": 4, \"features\": {\"C3\": -1, \"C2\": [-12, \"\\u0061\"], \"C1\": 12}}]}",
    /* escaped feature names resolve like plain ones */
    "{\"context\": {\"\\u0049\\u0031\": 2, \"C\\u0032\": [\"b\"]}, \"candidates\": [{\"id\": \"x\", \"features\": {\"\\u0043\\u0033\": 3}}]}",
    /* the context after the candidates, and features in varying orders */
    "{\"candidates\": [{\"id\": 1, \"features\": {\"C3\": 1, \"I1\": 2}}, {\"id\": 2, \"features\": {\"I1\": 3, \"C3\": 2}},"
    " {\"id\": 3, \"features\": {\"I2\": 3, \"C1\": \"ff\", \"I1\": 7}}], \"context\": {\"C2\": [\"a\", \"b\"], \"I2\": 0.5}}",
    /* lenient: unknown names (with scalar and array values) are skipped, even
     * when "strict": false comes after them */
    "{\"candidates\": [{\"id\": 1, \"features\": {\"nope\": [1, [2, [\"x\", null, true, false]], -3.5e2], \"I1\": 2, \"zz\": \"q\"}}],"
    " \"context\": {\"other\": null}, \"strict\": false}",
    "{\"top_k\": 5, \"candidates\": [{\"id\": \"\"}, {\"id\": \"\\u0000x\" }]}" + 0, /* replaced below */
    /* the routing fields, plain and escaped, as integers and strings */
    "{\"model\": \"ctr\", \"version\": 3, \"routing_key\": \"user-1\", \"candidates\": [{\"id\": 1}]}",
    "{\"candidates\": [], \"routing_key\": -9223372036854775808, \"version\": \"0009007199254740992\","
    " \"model\": \"c\\u0074r\\u00e9\\ud83d\\ude00\"}",
    "{\"version\": \"\\u0034\\u0032\", \"routing_key\": \"a\\\"b\\\\c\\n\", \"model\": null, \"candidates\": []}",
};

Test(request, fast_path_equals_the_dom_decoder)
{
    /* two entries above are placeholders for bodies a C literal cannot hold simply */
    static char ctx_first[] = "{\"context\": {\"I1\": 5}, \"candidates\": [{\"features\": {\"I2\": 1}, \"id\": \"a\"}]}";
    static char ids_odd[] = "{\"top_k\": 5, \"candidates\": [{\"id\": \"\"}, {\"id\": \"\\u007f\x7f\"}]}";
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    for (size_t i = 0; i < sizeof valid_bodies / sizeof valid_bodies[0]; i++) {
        const char *s = i == 3 ? ctx_first : i == 11 ? ids_odd : valid_bodies[i];
        size_t n = strlen(s);
        char *body = exact_copy(s, n), err[256] = "", why[64];
        rk_request *a = NULL, *b = NULL;
        int rf = rk_decode_fast(M, body, n, &lim, &a, err, sizeof err);
        cr_assert_eq(rf, 0, "body %zu fell back (%d): %s", i, rf, s);
        int rd = rk_decode_dom(M, body, n, &lim, &b, err, sizeof err);
        cr_assert_eq(rd, 0, "body %zu: the DOM decoder refuses it: %s", i, err);
        cr_assert(same_request(a, b, why, sizeof why), "body %zu: %s differs: %s", i, why, s);
        rk_request_free(a);
        rk_request_free(b);
        free(body);
    }
}

/* Hostile or broken bodies: the fast path must refuse every one (falling
 * back), and rk_decode must answer with the DOM decoder's code. The rules:
 * duplicate keys are invalid_json, compared after unescaping; numbers out of
 * int64 (without '.', 'e') or double range are invalid_json; invalid UTF-8,
 * bad escapes, lone surrogates, \u0000 and raw control bytes are
 * invalid_json; nesting past jansson's 2048 levels is invalid_json, nesting
 * past 32 inside an ignored value only costs the slower DOM path. */
static const struct { const char *body; int code; const char *needle; } hostile[] = {
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 1, \"\\u0049\\u0031\": 2}}]}", RK_EJSON, "duplicate"},
    {"{\"candidates\": [{\"id\": 1, \"id\": 2}]}", RK_EJSON, "duplicate"},
    {"{\"candidates\": [{\"id\": 1, \"features\": null, \"features\": {}}]}", RK_EJSON, "duplicate"},
    {"{\"strict\": false, \"candidates\": [{\"id\": 1, \"features\": {\"zz\": 1, \"zz\": 2}}]}", RK_EJSON, "duplicate"},
    {"{\"candidates\": [], \"return\": {\"logits\": true, \"logits\": false}}", RK_EJSON, "duplicate"},
    {"{\"context\": {\"C2\": [\"a\"], \"C2\": null}, \"candidates\": []}", RK_EJSON, "duplicate"},
    {"{\"candidates\": [{\"id\": 99999999999999999999}]}", RK_EJSON, "too big"},
    {"{\"candidates\": [{\"id\": -9223372036854775809}]}", RK_EJSON, "too big"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 1e400}}]}", RK_EJSON, "overflow"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": -1e309}}]}", RK_EJSON, "overflow"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 18446744073709551616}}]}", RK_EJSON, "too big"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 01}}]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 1.}}]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": .5}}]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": +1}}]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 1e}}]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [{\"id\": \"\xc0\xaf\"}]}", RK_EJSON, ""},
    {"{\"candidates\": [{\"id\": \"\xed\xa0\x80\"}]}", RK_EJSON, ""},
    {"{\"candidates\": [{\"id\": \"\xf4\x90\x80\x80\"}]}", RK_EJSON, ""},
    {"{\"candidates\": [{\"id\": \"\xe2\x82\"}]}", RK_EJSON, ""},
    {"{\"candidates\": [{\"id\": \"\xff\"}]}", RK_EJSON, ""},
    {"{\"candidates\": [{\"id\": \"\\x41\"}]}", RK_EJSON, "escape"},
    {"{\"candidates\": [{\"id\": \"\\u12\"}]}", RK_EJSON, "escape"},
    {"{\"candidates\": [{\"id\": \"\\ud800\"}]}", RK_EJSON, "Unicode"},
    {"{\"candidates\": [{\"id\": \"\\ud800\\u0041\"}]}", RK_EJSON, "Unicode"},
    {"{\"candidates\": [{\"id\": \"\\udc00\"}]}", RK_EJSON, "Unicode"},
    {"{\"candidates\": [{\"id\": \"a\\u0000b\"}]}", RK_EJSON, "u0000"},
    {"{\"candidates\": [{\"id\": \"a\tb\"}]}", RK_EJSON, "control"},
    {"{\"candidates\": []} x", RK_EJSON, "end of file"},
    {"{\"candidates\": []}{}", RK_EJSON, "end of file"},
    {"{\"candidates\": [{\"id\": 1,}]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [1 2]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [{\"id\": tru}]}", RK_EJSON, "invalid"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"C2\": [\"a\", \"b\", \"c\", \"d\"]}}]}", RK_EVALUE, "at most 3"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"C3\": 2.0}}]}", RK_EVALUE, "C3"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"nope\": 1}}]}", RK_EFEATURE, "nope"},
    {"{\"candidates\": [{\"id\": 1, \"features\": {\"nope\": 1}}], \"strict\": true}", RK_EFEATURE, "nope"},
    {"{\"candidates\": [{\"id\": 1}, {\"id\": 2}, {\"id\": 3}, {\"id\": 4}, {\"id\": 5}, {\"id\": 6}, {\"id\": 7},"
     " {\"id\": 8}, {\"id\": 9}, {\"id\": 10}, {\"id\": 11}, {\"id\": \"\xff\"}]}", RK_EJSON, ""},
    {"{\"candidates\": [{\"id\": 1}, {\"id\": 2}, {\"id\": 3}, {\"id\": 4}, {\"id\": 5}, {\"id\": 6}, {\"id\": 7},"
     " {\"id\": 8}, {\"id\": 9}, {\"id\": 10}, {\"id\": 11}]}", RK_ETOOMANY, "limit is 10"},
};

/* Checks one body against the rules: fast path refuses, rk_decode gives the
 * DOM decoder's code and message. */
static void check_hostile(const char *s, size_t n, int code, const char *needle)
{
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    char *body = exact_copy(s, n), err[256] = "", err2[256] = "";
    rk_request *rq = (rk_request *)1;
    cr_assert_eq(rk_decode_fast(M, body, n, &lim, &rq, err, sizeof err), RK_DECODE_FALLBACK, "accepted: %.200s", s);
    cr_assert_null(rq);
    int rc = rk_decode(M, body, n, &lim, &rq, err, sizeof err);
    cr_assert_eq(rc, code, "%.200s: got %d (%s)", s, rc, err);
    cr_assert_null(rq);
    if (getenv("SHOW_MESSAGES")) fprintf(stderr, "%.60s => %s\n", s, err);
    cr_assert(strstr(err, needle), "%.200s: message \"%s\" lacks \"%s\"", s, err, needle);
    cr_assert_eq(rk_decode_dom(M, body, n, &lim, &rq, err2, sizeof err2), code);
    cr_assert_str_eq(err, err2);
    free(body);
}

Test(request, hostile_bodies_get_the_dom_decoders_error)
{
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++)
        check_hostile(hostile[i].body, strlen(hostile[i].body), hostile[i].code, hostile[i].needle);
    /* a NUL byte inside the body, and a body cut short */
    static const char nul[] = "{\"candidates\": [{\"id\": \"a\0b\"}]}";
    check_hostile(nul, sizeof nul - 1, RK_EJSON, "control");
    const char *full = "{\"candidates\": [{\"id\": \"abc\", \"features\": {\"I1\": 12.5}}]}";
    for (size_t n = 0; n < strlen(full); n++) check_hostile(full, n, RK_EJSON, "");
}

/* Deep nesting: inside an ignored value (lenient), up to 32 levels stay on the
 * fast path, deeper ones take the DOM path (same answer); past jansson's
 * depth limit the request is invalid_json; nesting where the schema wants a
 * scalar is a schema or value error, never a crash. */
Test(request, deep_nesting)
{
    rk_limits lenient = {.max_candidates = 10, .strict = 0};
    size_t depths[] = {31, 32, 33, 500, 2047, 2048, 2049, 100000};
    for (size_t k = 0; k < sizeof depths / sizeof depths[0]; k++) {
        size_t dpt = depths[k];
        rk_buf b = {0};
        rk_buf_puts(&b, "{\"candidates\": [{\"id\": 1, \"features\": {\"nope\": ");
        for (size_t i = 0; i < dpt; i++) rk_buf_put(&b, "[", 1);
        for (size_t i = 0; i < dpt; i++) rk_buf_put(&b, "]", 1);
        rk_buf_puts(&b, "}}]}");
        cr_assert(!b.oom);
        char *body = exact_copy(b.data, b.len), err[256] = "";
        rk_request *rq = NULL;
        int fast = rk_decode_fast(M, body, b.len, &lenient, &rq, err, sizeof err);
        rk_request_free(rq);
        rq = NULL;
        cr_assert_eq(fast, dpt <= 32 ? 0 : RK_DECODE_FALLBACK, "depth %zu", dpt);
        int rc = rk_decode(M, body, b.len, &lenient, &rq, err, sizeof err);
        /* 5 enclosing levels: the object, candidates, the candidate, features */
        if (dpt + 4 <= 2048) cr_assert_eq(rc, 0, "depth %zu: %s", dpt, err);
        else cr_assert_eq(rc, RK_EJSON, "depth %zu: %d %s", dpt, rc, err);
        rk_request_free(rq);
        free(body);
        free(b.data);
    }
    rk_request *rq = NULL;
    char err[256];
    cr_assert_eq(dec("{\"candidates\": [{\"id\": [[[[1]]]]}]}", &rq, err, sizeof err), RK_ESCHEMA);
    cr_assert_eq(dec("{\"candidates\": [{\"id\": 1, \"features\": {\"C2\": [[\"a\"]]}}]}", &rq, err, sizeof err), RK_EVALUE);
}

/* Random bodies: valid requests, then mutated (a byte changed, inserted or
 * dropped). Whenever the fast path accepts one, the DOM decoder must accept
 * it too and build the same request; it must never read outside the body. */

/* One random edit of a body of more than two bytes (a byte replaced,
 * removed or inserted, from the bytes that matter to JSON and UTF-8). */
static void mutate_body(rk_buf *b, unsigned *seed)
{
    if (b->len <= 2) return;
    size_t at = (size_t)rand_r(seed) % b->len;
    static const char bytes[] = "{}[],:\"\\ 0e.-9nx\x80\xc3\xa9";
    char ch = bytes[rand_r(seed) % (sizeof bytes - 1)];
    switch (rand_r(seed) % 3) {
    case 0: b->data[at] = ch; break;
    case 1: memmove(b->data + at, b->data + at + 1, b->len - at - 1); b->len--; break;
    default:
        rk_buf_put(b, " ", 1);
        memmove(b->data + at + 1, b->data + at, b->len - at - 1);
        b->data[at] = ch;
    }
}

Test(request, fast_path_agrees_on_random_mutations)
{
    static const char *vals[] = {"1", "-2.5", "1e3", "null", "\"68fd1e64\"", "[\"a\", 3]", "[]", "\"\\u00e9\"", "0",
                                 "\"ff\"", "7", "[\"x\", \"y\", \"z\"]", "-0", "9223372036854775807",
                                 "9223372036854775808", "-9223372036854775808", "1.7976931348623157e308", "2e308",
                                 "0.1e-5", "123456789012345678901", "4.9e-324", "[9223372036854775807, -1]"};
    const int n_vals = (int)(sizeof vals / sizeof vals[0]);
    static const char *names[] = {"I1", "I2", "C1", "C2", "C3", "nope"};
    rk_limits lim[2] = {{.max_candidates = 10, .strict = 1}, {.max_candidates = 10, .strict = 0}};
    unsigned seed = 12345;
    size_t accepted = 0, mutated_ok = 0;
    for (int it = 0; it < 3000; it++) {
        rk_buf b = {0};
        rk_buf_puts(&b, "{\"request_id\": 9, \"candidates\": [");
        int nc = rand_r(&seed) % 4;
        for (int c = 0; c < nc; c++) {
            rk_buf_printf(&b, "%s{\"id\": %d, \"features\": {", c ? ", " : "", c);
            int nfeat = rand_r(&seed) % 4, used = 0;
            for (int f = 0; f < nfeat; f++) {
                int k = rand_r(&seed) % 6;
                if (used & 1 << k) continue;
                used |= 1 << k;
                rk_buf_printf(&b, "%s\"%s\": %s", f ? ", " : "", names[k], vals[rand_r(&seed) % n_vals]);
            }
            rk_buf_puts(&b, "}}");
        }
        rk_buf_puts(&b, "]}");
        cr_assert(!b.oom);
        int mutate = it % 3 != 0;
        if (mutate) mutate_body(&b, &seed);
        const rk_limits *l = &lim[it % 2];
        char *body = exact_copy(b.data, b.len), err[256] = "", why[64];
        rk_request *a = NULL, *d = NULL;
        int rf = rk_decode_fast(M, body, b.len, l, &a, err, sizeof err);
        int rd = rk_decode_dom(M, body, b.len, l, &d, err, sizeof err);
        if (rf == 0) {
            cr_assert_eq(rd, 0, "fast accepted what the DOM decoder refuses (%s): %.*s", err, (int)b.len, body);
            cr_assert(same_request(a, d, why, sizeof why), "%s differs: %.*s", why, (int)b.len, body);
            accepted++;
            mutated_ok += (size_t)mutate;
        } else {
            cr_assert_eq(rf, RK_DECODE_FALLBACK);
            cr_assert_null(a);
        }
        rk_request_free(a);
        rk_request_free(d);
        free(body);
        free(b.data);
    }
    cr_assert_gt(accepted, 400, "only %zu bodies took the fast path", accepted);
    cr_assert_gt(mutated_ok, 10, "no mutated body was still valid");
}

/* ------------------------------------------------------------ messages are UTF-8 */

/* 1 if s is valid UTF-8: jansson refuses to make a string of anything else
 * (an oracle independent of rk_utf8_char). */
static int is_utf8(const char *s)
{
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

/* Decodes body (n bytes) and checks the refusal: code want (0: any), a
 * message that is valid UTF-8 and holds needle, and an error answer that jansson parses
 * back to the same message. */
static void check_refusal(const char *body, size_t n, int want, const char *needle)
{
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    rk_request *rq = (rk_request *)1;
    char err[256] = "";
    char *b = exact_copy(body, n);
    int rc = rk_decode(M, b, n, &lim, &rq, err, sizeof err);
    free(b);
    cr_assert(want ? rc == want : rc < 0, "%zu-byte body: got %d (%s)", n, rc, err);
    cr_assert_null(rq);
    cr_assert(is_utf8(err), "%zu-byte body: the message is not UTF-8: %s", n, err);
    cr_assert(strstr(err, needle), "message \"%s\" lacks \"%s\"", err, needle);
    rk_buf out = {0};
    rk_encode_error(&out, rc, err);
    json_error_t je;
    json_t *o = json_loadb(out.data, out.len, 0, &je);
    cr_assert_not_null(o, "the error answer is not JSON (%s): %s", je.text, out.data);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "message")), err);
    json_decref(o);
    free(out.data);
}

/* issue 15: jansson quotes the body near the fault and can end the quote
 * inside a character ('["\' and U+1F300 gave an answer no parser took) */
Test(request, invalid_json_message_quotes_whole_characters)
{
    static const char nine[] = "[\"\\\xf0\x9f\x8c\x80\"]";
    cr_assert_eq(sizeof nine - 1, 9);
    check_refusal(nine, 9, RK_EJSON, "invalid escape");
    /* 2-, 3- and 4-byte characters cut after each of their bytes, after an
     * escape, inside a string, as a key, and whole after a bad escape */
    static const char *chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x8c\x80", "\xf4\x8f\xbf\xbf"};
    static const char *heads[] = {"[\"\\", "[\"", "{\"", "{\"candidates\": [], \"", "[\"ab\\u00", "[1, \"x\", \\"};
    for (size_t c = 0; c < sizeof chars / sizeof chars[0]; c++)
        for (size_t cut = 1; cut <= strlen(chars[c]); cut++)
            for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++)
                for (int tail = 0; tail < 2; tail++) {
                    char body[64];
                    int n = snprintf(body, sizeof body, "%s%.*s%s", heads[h], (int)cut, chars[c], tail ? "\"]" : "");
                    /* a whole character is valid JSON, of the wrong shape */
                    int whole = cut == strlen(chars[c]);
                    check_refusal(body, (size_t)n, whole ? 0 : RK_EJSON, whole ? "" : "invalid JSON");
                }
}

/* Bytes that are not UTF-8 at all (stray continuation bytes, overlong forms,
 * surrogates, past U+10FFFF, 0xFE/0xFF) never reach a message raw. */
Test(request, invalid_utf8_never_reaches_a_message)
{
    static const char *bad[] = {"\x80", "\xbf", "\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xe0\x9f\xbf",
                                "\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x80\x80\xaf", "\xf0\x8f\xbf\xbf",
                                "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xfe", "\xff",
                                "\xc3\x28", "\xe2\x28\xa1", "\xf0\x28\x8c\xbc"};
    static const char *frames[] = {"[\"\\%s\"]", "[\"%s\"]", "{\"%s\": 1}", "{\"candidates\": [%s]}", "%s",
                                   "{\"context\": {\"I1\": 1}, \"candidates\": [{\"id\": \"\\%s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        for (size_t f = 0; f < sizeof frames / sizeof frames[0]; f++) {
            char body[128];
            int n = snprintf(body, sizeof body, frames[f], bad[i]);
            check_refusal(body, (size_t)n, RK_EJSON, "invalid JSON");
        }
}

/* Names are quoted up to 64 bytes, cut between characters: keys of two-byte
 * characters, at even and odd offsets, in every place a key is quoted. */
Test(request, long_names_are_cut_between_characters)
{
    char key[128] = "", body[512], want[80];
    for (int odd = 0; odd < 2; odd++) {
        size_t o = 0;
        if (odd) key[o++] = 'a';
        for (int i = 0; i < 40; i++) { key[o++] = '\xc3'; key[o++] = '\xa9'; }
        key[o] = 0;
        /* the quote: whole characters, as many as fit in 64 bytes */
        memcpy(want, key, odd ? 63 : 64);
        want[odd ? 63 : 64] = 0;
        const char *frames[] = {"{\"candidates\": [], \"%s\": 1}", "{\"candidates\": [{\"id\": 1, \"%s\": 1}]}",
                                "{\"candidates\": [], \"return\": {\"%s\": true}}",
                                "{\"context\": {\"%s\": 1}, \"candidates\": []}",
                                "{\"candidates\": [{\"id\": 1, \"features\": {\"%s\": 1}}]}"};
        for (size_t f = 0; f < sizeof frames / sizeof frames[0]; f++) {
            int n = snprintf(body, sizeof body, frames[f], key);
            check_refusal(body, (size_t)n, f < 3 ? RK_ESCHEMA : RK_EFEATURE, want);
            char err[256];
            rk_request *rq;
            rk_limits lim = {.max_candidates = 10, .strict = 1};
            rk_decode(M, body, (size_t)n, &lim, &rq, err, sizeof err);
            cr_assert_null(strstr(err, "\xef\xbf\xbd"), "a character was cut: %s", err);
        }
    }
}

/* A message cut by a small buffer ends between characters, whatever the
 * buffer's size. */
Test(request, short_message_buffers_cut_between_characters)
{
    static const char body[] = "{\"candidates\": [], \"\xe2\x82\xac\xc3\xa9\xf0\x9f\x8c\x80\xe2\x82\xac\xc3\xa9\": 1}";
    char full[256];
    rk_request *rq;
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    cr_assert_eq(rk_decode(M, body, sizeof body - 1, &lim, &rq, full, sizeof full), RK_ESCHEMA);
    for (size_t len = 1; len <= strlen(full) + 1; len++) {
        char err[256];
        memset(err, 'x', sizeof err);
        cr_assert_eq(rk_decode(M, body, sizeof body - 1, &lim, &rq, err, len), RK_ESCHEMA);
        cr_assert_lt(strlen(err), len);
        cr_assert(is_utf8(err), "buffer of %zu: %s", len, err);
        cr_assert_eq(strncmp(err, full, strlen(err)), 0, "buffer of %zu: not a prefix: %s", len, err);
        cr_assert_gt(strlen(err) + 4, len - 1, "buffer of %zu: cut more than one character: %s", len, err);
    }
}

/* ------------------------------------------------------------ routing fields */

/* Allocations jansson made since the counter was last reset: rk_peek_route
 * allocates only through jansson (its fallback), so this tells whether it
 * took the fallback. */
static size_t json_allocs;

static void *counting_malloc(size_t n)
{
    json_allocs++;
    return malloc(n);
}

static void count_json_allocs(void)
{
    json_set_alloc_funcs(counting_malloc, free);
}

/* 1 if the request's routing fields are r's. */
static int same_route(const rk_request *rq, const rk_route *r)
{
    return rq->has_model == r->has_model && !strcmp(rq->model, r->model) && rq->version == r->version &&
           rq->has_routing_key == r->has_routing_key && !strcmp(rq->routing_key, r->routing_key);
}

/* 1 if a message is one of a routing field's. */
static int route_message(const char *err)
{
    return !strncmp(err, "model:", 6) || !strncmp(err, "version:", 8) || !strncmp(err, "routing_key:", 12);
}

/* Checks what rk.h promises of rk_peek_route against rk_decode on one body
 * (n bytes, copied exactly): accepted bodies peek to 0 and the same fields;
 * a routing error is the same error both ways; UNREADABLE only for bodies
 * rk_decode refuses; what it reads is sized and NUL-terminated. Returns
 * what peek returned. */
static int check_peek(const char *s, size_t n, const rk_limits *lim)
{
    char *body = exact_copy(s, n), e1[256] = "", e2[256] = "x";
    rk_request *rq = NULL;
    rk_route r;
    int rc = rk_decode(M, body, n, lim, &rq, e1, sizeof e1);
    int pr = rk_peek_route(body, n, &r, e2, sizeof e2);
    cr_assert(pr == 0 || pr == RK_ESCHEMA || pr == RK_ROUTE_UNREADABLE, "peek returned %d: %.*s", pr, (int)n, s);
    if (rc == 0) {
        cr_assert_eq(pr, 0, "rk_decode accepts what peek refuses (%d, %s): %.300s", pr, e2, s);
        cr_assert(same_route(rq, &r), "peek read other routing fields (%d %s %llu %d %s | %d %s %llu %d %s): %.300s",
                  rq->has_model, rq->model, (unsigned long long)rq->version, rq->has_routing_key, rq->routing_key,
                  r.has_model, r.model, (unsigned long long)r.version, r.has_routing_key, r.routing_key, s);
    }
    if (pr == RK_ESCHEMA) {
        cr_assert_eq(rc, RK_ESCHEMA, "peek refused (%s) what rk_decode answers with %d (%s): %.300s", e2, rc, e1, s);
        cr_assert_str_eq(e1, e2, "%.300s", s);
    } else {
        cr_assert_str_eq(e2, "", "a message without RK_ESCHEMA: %.300s", s);
    }
    if (rc == RK_ESCHEMA && route_message(e1))
        cr_assert_eq(pr, RK_ESCHEMA, "peek missed a routing error (%s): %.300s", e1, s);
    if (pr == RK_ROUTE_UNREADABLE) cr_assert_lt(rc, 0, "%.300s", s);
    if (pr != 0) {
        rk_route zero;
        memset(&zero, 0, sizeof zero);
        cr_assert(!memcmp(&r, &zero, sizeof r), "fields left set by a refusal: %.300s", s);
    } else {
        cr_assert(r.has_model ? strlen(r.model) >= 1 && strlen(r.model) <= RK_MODEL_MAX : !r.model[0]);
        cr_assert(r.version <= RK_VERSION_MAX);
        cr_assert(r.has_routing_key ? strlen(r.routing_key) <= RK_ROUTING_KEY_MAX : !r.routing_key[0]);
    }
    rk_request_free(rq);
    free(body);
    return pr;
}

/* Peeks a NUL-terminated body; returns the code, fields in *r, and counts
 * jansson's allocations into json_allocs (reset first). */
static int peek(const char *s, rk_route *r, char *err, size_t n)
{
    char *body = exact_copy(s, strlen(s));
    json_allocs = 0;
    int rc = rk_peek_route(body, strlen(s), r, err, n);
    free(body);
    return rc;
}

/* A body with one routing field of the given JSON value: model, version or
 * routing_key (field), among other fields. Caller frees. */
static char *with_field(const char *field, const char *value)
{
    rk_buf b = {0};
    rk_buf_printf(&b, "{\"request_id\": \"r\", \"%s\": %s, \"candidates\": [{\"id\": 1}]}", field, value);
    cr_assert(!b.oom);
    return b.data;
}

/* A JSON string literal of `count` copies of the piece (already escaped). */
static char *repeat_string(const char *piece, int count)
{
    rk_buf b = {0};
    rk_buf_puts(&b, "\"");
    for (int i = 0; i < count; i++) rk_buf_puts(&b, piece);
    rk_buf_puts(&b, "\"");
    cr_assert(!b.oom);
    return b.data;
}

/* Decodes a body with both decoders and peeks it: all three must accept it
 * with these fields (model, routing_key NULL: not given), peek without
 * allocating. */
static void check_routed(const char *s, const char *model, uint64_t version, const char *routing_key)
{
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    size_t n = strlen(s);
    char *body = exact_copy(s, n), err[256] = "", why[64];
    rk_request *a = NULL, *b = NULL;
    cr_assert_eq(rk_decode_fast(M, body, n, &lim, &a, err, sizeof err), 0, "fell back: %s", s);
    cr_assert_eq(rk_decode_dom(M, body, n, &lim, &b, err, sizeof err), 0, "%s: %s", err, s);
    cr_assert(same_request(a, b, why, sizeof why), "%s differs: %s", why, s);
    rk_route want = {.has_model = model != NULL, .version = version, .has_routing_key = routing_key != NULL};
    if (model) snprintf(want.model, sizeof want.model, "%s", model);
    if (routing_key) snprintf(want.routing_key, sizeof want.routing_key, "%s", routing_key);
    cr_assert(same_route(a, &want), "got %d \"%s\" %llu %d \"%s\": %s", a->has_model, a->model,
              (unsigned long long)a->version, a->has_routing_key, a->routing_key, s);
    rk_route r;
    cr_assert_eq(peek(s, &r, err, sizeof err), 0, "%s", s);
    cr_assert(same_route(a, &r), "peek: %s", s);
    cr_assert_eq(json_allocs, 0, "peek fell back to jansson: %s", s);
    rk_request_free(a);
    rk_request_free(b);
    free(body);
}

Test(request, routing_fields_decode)
{
    count_json_allocs();
    check_routed("{\"model\": \"ctr\", \"version\": 3, \"routing_key\": \"user-1\", \"candidates\": []}", "ctr", 3, "user-1");
    check_routed("{\"candidates\": [{\"id\": 1}], \"routing_key\": 42, \"version\": \"7\", \"model\": \"m\"}", "m", 7, "42");
    check_routed("{\"model\": null, \"version\": null, \"routing_key\": null, \"candidates\": []}", NULL, 0, NULL);
    check_routed("{\"candidates\": []}", NULL, 0, NULL);
    /* escapes: unescaped before the size check and the digits */
    check_routed("{\"model\": \"c\\u0074r\\u00e9\\ud83d\\ude00\", \"version\": \"\\u0034\\u0032\","
                 " \"routing_key\": \"a\\\"b\\\\c\\n\\/\\t\", \"candidates\": []}",
                 "ctr\xc3\xa9\xf0\x9f\x98\x80", 42, "a\"b\\c\n/\t");
    check_routed("{\"model\": \"caf\xc3\xa9\", \"routing_key\": \"\", \"candidates\": []}", "caf\xc3\xa9", 0, "");
    /* versions: leading zeros, the largest, as integer and string */
    check_routed("{\"version\": \"0007\", \"candidates\": []}", NULL, 7, NULL);
    check_routed("{\"version\": 9007199254740992, \"candidates\": []}", NULL, 9007199254740992ull, NULL);
    check_routed("{\"version\": \"9007199254740992\", \"candidates\": []}", NULL, 9007199254740992ull, NULL);
    check_routed("{\"version\": \"00000000000000000000000000000000000000000000000000000000000000000000000001\","
                 " \"candidates\": []}", NULL, 1, NULL);
    /* integer routing keys as their decimal text, as jansson reads them */
    check_routed("{\"routing_key\": -9223372036854775808, \"candidates\": []}", NULL, 0, "-9223372036854775808");
    check_routed("{\"routing_key\": 9223372036854775807, \"candidates\": []}", NULL, 0, "9223372036854775807");
    check_routed("{\"routing_key\": -0, \"candidates\": []}", NULL, 0, "0");
    check_routed("{\"routing_key\" : 0 , \"candidates\": []}", NULL, 0, "0");
    /* the largest sizes, counted in bytes after unescaping */
    char *v = repeat_string("a", 64), *body = with_field("model", v), want[300];
    memset(want, 'a', 64);
    want[64] = 0;
    check_routed(body, want, 0, NULL);
    free(v);
    free(body);
    v = repeat_string("\xc3\xa9", 32);
    body = with_field("model", v);
    for (int i = 0; i < 32; i++) memcpy(want + 2 * i, "\xc3\xa9", 2);
    want[64] = 0;
    check_routed(body, want, 0, NULL);
    free(v);
    free(body);
    v = repeat_string("\\u00e9", 128);
    body = with_field("routing_key", v);
    for (int i = 0; i < 128; i++) memcpy(want + 2 * i, "\xc3\xa9", 2);
    want[256] = 0;
    check_routed(body, NULL, 0, want);
    free(v);
    free(body);
}

/* Each wrong routing value, for the field it is given to. */
static const struct { const char *field, *value; } bad_routes[] = {
    {"model", "5"}, {"model", "true"}, {"model", "[]"}, {"model", "[\"m\"]"}, {"model", "{}"}, {"model", "\"\""},
    {"model", "1.5"}, {"model", "false"},
    {"version", "0"}, {"version", "-1"}, {"version", "1.0"}, {"version", "1e3"}, {"version", "-0"},
    {"version", "9007199254740993"}, {"version", "9223372036854775807"}, {"version", "-9223372036854775808"},
    {"version", "\"0\""}, {"version", "\"00\""}, {"version", "\"\""}, {"version", "\"abc\""}, {"version", "\"1.5\""},
    {"version", "\"+1\""}, {"version", "\" 1\""}, {"version", "\"1 \""}, {"version", "\"-1\""}, {"version", "\"0x10\""},
    {"version", "\"9007199254740993\""}, {"version", "\"99999999999999999999999999\""},
    {"version", "\"\\u0031\\u0061\""}, {"version", "\"\xd9\xa3\""}, {"version", "true"}, {"version", "[]"},
    {"version", "{}"}, {"version", "[1]"},
    {"routing_key", "1.5"}, {"routing_key", "-0.0"}, {"routing_key", "1e2"}, {"routing_key", "true"},
    {"routing_key", "false"}, {"routing_key", "[]"}, {"routing_key", "{}"}, {"routing_key", "[\"k\"]"},
};

/* Checks one refused body: the fast decoder falls back, the DOM decoder
 * and rk_decode refuse it with RK_ESCHEMA and the message want, and peek
 * gives the same. */
static void check_route_refused(const char *s, const char *want)
{
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    size_t n = strlen(s);
    char *body = exact_copy(s, n), e1[256] = "", e2[256] = "", e3[256] = "";
    rk_request *rq = (rk_request *)1;
    cr_assert_eq(rk_decode_fast(M, body, n, &lim, &rq, e1, sizeof e1), RK_DECODE_FALLBACK, "accepted: %.300s", s);
    cr_assert_null(rq);
    cr_assert_eq(rk_decode_dom(M, body, n, &lim, &rq, e1, sizeof e1), RK_ESCHEMA, "%s: %.300s", e1, s);
    cr_assert_null(rq);
    cr_assert_str_eq(e1, want, "%.300s", s);
    cr_assert_eq(rk_decode(M, body, n, &lim, &rq, e2, sizeof e2), RK_ESCHEMA, "%.300s", s);
    cr_assert_str_eq(e2, want);
    rk_route r;
    cr_assert_eq(rk_peek_route(body, n, &r, e3, sizeof e3), RK_ESCHEMA, "peek: %.300s", s);
    cr_assert_str_eq(e3, want, "%.300s", s);
    cr_assert(!r.has_model && !r.version && !r.has_routing_key);
    free(body);
}

static const char want_model[] = "model: expected a string of 1 to 64 bytes";
static const char want_version[] = "version: expected an integer from 1 to 2^53, or a string of its decimal digits";
static const char want_routing_key[] = "routing_key: expected a string of at most 256 bytes, or an integer";

Test(request, routing_fields_refused_naming_the_field)
{
    for (size_t i = 0; i < sizeof bad_routes / sizeof bad_routes[0]; i++) {
        const char *f = bad_routes[i].field;
        char *body = with_field(f, bad_routes[i].value);
        check_route_refused(body, f[0] == 'm' ? want_model : f[0] == 'v' ? want_version : want_routing_key);
        free(body);
    }
    /* one byte too many, after unescaping */
    static const struct { const char *field, *piece; int count; const char *want; } big[] = {
        {"model", "a", 65, want_model},
        {"model", "\xc3\xa9", 33, want_model},
        {"model", "\\u0061", 65, want_model},
        {"model", "\\ud83d\\ude00", 17, want_model},
        {"routing_key", "x", 257, want_routing_key},
        {"routing_key", "\\u00e9", 129, want_routing_key},
        {"routing_key", "\\\\", 257, want_routing_key},
        {"routing_key", "x", 100000, want_routing_key},
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        char *v = repeat_string(big[i].piece, big[i].count), *body = with_field(big[i].field, v);
        check_route_refused(body, big[i].want);
        free(v);
        free(body);
    }
    /* routing errors come first: before unknown fields, a missing
     * "candidates", anything else; model, then version, then routing_key */
    check_route_refused("{\"x\": 1, \"routing_key\": {}}", want_routing_key);
    check_route_refused("{\"candidates\": 5, \"top_k\": -1, \"version\": 0}", want_version);
    check_route_refused("{\"routing_key\": [], \"version\": 0, \"model\": 1, \"candidates\": []}", want_model);
    check_route_refused("{\"routing_key\": [], \"version\": 0, \"model\": \"ok\", \"candidates\": []}", want_version);
    check_route_refused("{\"candidates\": [{\"id\": 1, \"features\": {\"nope\": 1}}], \"model\": \"\"}", want_model);
    /* the largest plain routing key is fine */
    char *v = repeat_string("x", 256), *body = with_field("routing_key", v);
    check_routed(body, NULL, 0, (v[257] = 0, v + 1));
    free(v);
    free(body);
}

/* ------------------------------------------------------------ rk_peek_route */

/* Peeks s and checks the code and the fields (model, routing_key NULL: not
 * given); fallback: whether it must have asked jansson. */
static void check_peeked(const char *s, int code, const char *model, uint64_t version, const char *routing_key,
                         int fallback)
{
    rk_route r;
    char err[256];
    int rc = peek(s, &r, err, sizeof err);
    cr_assert_eq(rc, code, "got %d (%s): %.300s", rc, err, s);
    cr_assert_eq(r.has_model, model != NULL, "%.300s", s);
    cr_assert_str_eq(r.model, model ? model : "", "%.300s", s);
    cr_assert_eq(r.version, version, "%.300s", s);
    cr_assert_eq(r.has_routing_key, routing_key != NULL, "%.300s", s);
    cr_assert_str_eq(r.routing_key, routing_key ? routing_key : "", "%.300s", s);
    if (fallback) cr_assert_gt(json_allocs, 0, "no fallback: %.300s", s);
    else cr_assert_eq(json_allocs, 0, "a fallback: %.300s", s);
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    check_peek(s, strlen(s), &lim);
}

Test(request, peek_reads_only_the_top_level)
{
    count_json_allocs();
    /* keys named like routing fields inside values, and strings that look like them */
    check_peeked("{\"a\": {\"model\": \"x\", \"version\": 2}, \"b\": [{\"routing_key\": 5}], \"c\": \"\\\"model\\\": \\\"y\\\"\"}",
                 0, NULL, 0, NULL, 0);
    check_peeked("{\"a\": {\"model\": 5, \"version\": [], \"routing_key\": {}}}", 0, NULL, 0, NULL, 0);
    check_peeked("{\"context\": {\"model\": {\"model\": \"inner\"}}, \"model\": \"outer\", \"strict\": false, \"candidates\": []}",
                 0, "outer", 0, NULL, 0);
    /* brackets and quotes inside strings, backslash runs before quotes */
    check_peeked("{\"x\": [1, {\"y\": \"}]\"}, \"]}\", [[[]]], {\"z\": {}}], \"model\": \"top\"}", 0, "top", 0, NULL, 0);
    check_peeked("{\"s\": \"\\\\\", \"model\": \"m\"}", 0, "m", 0, NULL, 0);
    check_peeked("{\"s\": \"\\\\\\\\\\\\\", \"model\": \"m\"}", 0, "m", 0, NULL, 0);
    check_peeked("{\"s\": \"\\\\\\\"model\\\": 1\", \"model\": \"m\"}", 0, "m", 0, NULL, 0);
    check_peeked("{\"s\": \"\\\"\", \"version\": 3}", 0, NULL, 3, NULL, 0);
    check_peeked("{\"s\": [\"\\\\\", \"\\\"]\", \"\\u005d\"], \"version\": 3}", 0, NULL, 3, NULL, 0);
    /* scalars of every kind, whitespace everywhere */
    check_peeked("{\"a\": -1.5e+3, \"b\": true, \"c\": false, \"d\": null, \"e\": 0, \"version\": 2}", 0, NULL, 2, NULL, 0);
    check_peeked(" \n{ \t\"model\" \r: \"m\" ,\"version\":\n\"3\",\"routing_key\":7}\n ", 0, "m", 3, "7", 0);
    check_peeked("{}", 0, NULL, 0, NULL, 0);
    check_peeked(" { } ", 0, NULL, 0, NULL, 0);
    /* routing members null: not given */
    check_peeked("{\"model\": null, \"version\": null, \"routing_key\": null}", 0, NULL, 0, NULL, 0);
}

/* Routing fields before, among and after large candidate arrays (with
 * escapes, nested arrays, keys named "model" in nested objects): read
 * without the fallback, and as rk_decode reads them. */
Test(request, peek_skips_large_candidate_arrays)
{
    count_json_allocs();
    rk_limits lim = {.max_candidates = 100000, .strict = 0};
    static const char *const heads[] = {"\"model\": \"m1\", \"version\": 4, ", "", ""};
    static const char *const mids[] = {"", "\"routing_key\": \"u\\u00e9\", \"model\": \"m2\", ", ""};
    static const char *const tails[] = {"", "", ", \"version\": \"12\", \"routing_key\": 99, \"model\": \"m3\""};
    for (int pos = 0; pos < 3; pos++) {
        rk_buf b = {0};
        rk_buf_printf(&b, "{%s\"context\": {\"I1\": 1, \"model\": {\"model\": \"no\", \"version\": [1, {\"a\": \"]\"}]}},"
                          " \"strict\": false, %s\"candidates\": [", heads[pos], mids[pos]);
        for (int c = 0; c < 20000; c++)
            rk_buf_printf(&b, "%s{\"id\": \"item-%d \\\"model\\\": \\\\\", \"features\": {\"I2\": %d.5e-1,"
                              " \"C2\": [\"a\\\\\\\"b\", \"model\", %d], \"routing_key\": [[\"x\"], {\"model\": 1}]}}",
                          c ? ", " : "", c, c, c);
        rk_buf_printf(&b, "]%s}", tails[pos]);
        cr_assert(!b.oom);
        rk_route r;
        char err[256];
        char *body = exact_copy(b.data, b.len);
        json_allocs = 0;
        cr_assert_eq(rk_peek_route(body, b.len, &r, err, sizeof err), 0, "%s", err);
        cr_assert_eq(json_allocs, 0, "a fallback at position %d", pos);
        cr_assert_str_eq(r.model, pos == 0 ? "m1" : pos == 1 ? "m2" : "m3");
        cr_assert_eq(r.version, pos == 0 ? 4u : pos == 1 ? 0u : 12u);
        cr_assert_eq(r.has_routing_key, pos > 0);
        cr_assert_str_eq(r.routing_key, pos == 0 ? "" : pos == 1 ? "u\xc3\xa9" : "99");
        cr_assert_eq(check_peek(body, b.len, &lim), 0);
        rk_request *rq = NULL;
        cr_assert_eq(rk_decode(M, body, b.len, &lim, &rq, err, sizeof err), 0, "%s", err);
        cr_assert_eq(rq->n_cands, 20000);
        cr_assert(same_route(rq, &r));
        /* the head scan stops at "candidates": what came before, and *head */
        int head = -1;
        rk_route h;
        json_allocs = 0;
        cr_assert_eq(rk_peek_route_head(body, b.len, &h, &head, err, sizeof err), 0, "%s", err);
        cr_assert_eq(json_allocs, 0);
        cr_assert_eq(head, 1);
        cr_assert_str_eq(h.model, pos == 0 ? "m1" : pos == 1 ? "m2" : "");
        cr_assert_eq(h.version, pos == 0 ? 4u : 0u);
        cr_assert_eq(h.has_routing_key, pos == 1);
        cr_assert_eq(same_route(rq, &h), pos < 2, "position %d", pos);
        rk_request_free(rq);
        free(body);
        free(b.data);
    }
    /* no "candidates" key at the top level, or refused bodies: the whole
     * top level, as rk_peek_route */
    static const char *const whole[] = {
        "{\"model\": \"m\", \"context\": {\"candidates\": 1}, \"version\": 3}",
        "{\"model\": 5, \"candidates\": []}",
        "{\"m\\u006fdel\": \"x\", \"candidates\": [], \"version\": 2}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        rk_route a, h;
        char e1[256], e2[256];
        int head = -1;
        int ra = rk_peek_route(whole[i], strlen(whole[i]), &a, e1, sizeof e1);
        int rh = rk_peek_route_head(whole[i], strlen(whole[i]), &h, &head, e2, sizeof e2);
        cr_assert_eq(ra, rh, "%s", whole[i]);
        cr_assert_eq(head, 0, "%s", whole[i]);
        cr_assert_eq(memcmp(&a, &h, sizeof a), 0, "%s", whole[i]);
        cr_assert_str_eq(e1, e2);
    }
}

/* What the scan cannot judge goes to jansson: escaped keys, a routing
 * member twice, a wrong routing value (confirmed by jansson first, so a
 * broken body is UNREADABLE rather than a routing error). */
Test(request, peek_falls_back_to_jansson)
{
    count_json_allocs();
    check_peeked("{\"\\u006dodel\": \"m\", \"candidates\": []}", 0, "m", 0, NULL, 1);
    check_peeked("{\"x\\\\y\": 1, \"model\": \"m\", \"ver\\u0073ion\": \"2\"}", 0, "m", 2, NULL, 1);
    check_peeked("{\"mo\\u0064el\": 5}", RK_ESCHEMA, NULL, 0, NULL, 1);
    check_peeked("{\"\\u006dodel\": \"m\", \"candidates\": [}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"model\": \"a\", \"model\": \"a\"}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"model\": \"a\", \"\\u006dodel\": \"b\"}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"version\": 1, \"candidates\": [], \"version\": 1}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"model\": 5, \"candidates\": [}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"model\": 5} x", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"model\": \"a\\u0000\"}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"model\": \"\xff\"}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"routing_key\": 99999999999999999999}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"routing_key\": -9223372036854775809}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"routing_key\": 9223372036854775808}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"routing_key\": -18446744073709551617}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"routing_key\": 01}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"version\": 2, \"candidates\": [] \"x\": 1}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"version\" 2}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"version\": 2,}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{\"version\": }", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    check_peeked("{5: 1}", RK_ROUTE_UNREADABLE, NULL, 0, NULL, 1);
    /* a version string of escaped digits over 64 bytes: valid, read by jansson */
    rk_buf b = {0};
    rk_buf_puts(&b, "{\"version\": \"");
    for (int i = 0; i < 70; i++) rk_buf_puts(&b, "\\u0030");
    rk_buf_puts(&b, "5\"}");
    check_peeked(b.data, 0, NULL, 5, NULL, 1);
    free(b.data);
}

/* Bodies that are not objects: UNREADABLE at once, whatever follows. */
Test(request, peek_non_objects_are_unreadable)
{
    count_json_allocs();
    static const char *const bodies[] = {"", " ", "\n\t", "[]", "[{\"model\": \"x\"}]", "\"model\"", "5", "null",
                                         "true", "x{\"model\": \"m\"}", "\xef\xbb\xbf{\"model\": \"m\"}", "}"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        check_peeked(bodies[i], RK_ROUTE_UNREADABLE, NULL, 0, NULL, 0);
}

/* A body cut anywhere before its end is UNREADABLE (the top level never
 * closes), never a routing error, and never read outside its bytes. */
Test(request, peek_truncated_bodies)
{
    count_json_allocs();
    rk_limits lim = {.max_candidates = 10, .strict = 1};
    static const char *const full[] = {
        ("{\"model\": \"m\\u00e9\\ud83d\\ude00\", \"version\": \"12\", \"routing_key\": -7, \"candidates\":"
         " [{\"id\": \"a\\\"b\\\\\", \"features\": {\"C2\": [\"x\", \"y\"], \"I1\": -1.5e3}}], \"top_k\": null}"),
        "{\"candidates\": [], \"model\": 12345, \"request_id\": \"\\\\\"}",
        "{\"candidates\": [], \"version\": \"v\\u00e9\"}",
    };
    for (size_t k = 0; k < sizeof full / sizeof full[0]; k++) {
        size_t n = strlen(full[k]);
        int last = check_peek(full[k], n, &lim);
        cr_assert_eq(last, k == 0 ? 0 : RK_ESCHEMA, "%s", full[k]);
        for (size_t cut = 0; cut < n; cut++)
            cr_assert_eq(check_peek(full[k], cut, &lim), RK_ROUTE_UNREADABLE, "cut at %zu: %.*s", cut, (int)cut, full[k]);
    }
}

/* Every body of this file's tables: peek agrees with rk_decode, strict and
 * lenient. */
Test(request, peek_agrees_with_decode_on_every_test_body)
{
    rk_limits lim[2] = {{.max_candidates = 10, .strict = 1}, {.max_candidates = 10, .strict = 0}};
    size_t accepted = 0;
    for (int l = 0; l < 2; l++) {
        for (size_t i = 0; i < sizeof valid_bodies / sizeof valid_bodies[0]; i++)
            accepted += check_peek(valid_bodies[i], strlen(valid_bodies[i]), &lim[l]) == 0;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            check_peek(cases[i].body, strlen(cases[i].body), &lim[l]);
        for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++)
            check_peek(hostile[i].body, strlen(hostile[i].body), &lim[l]);
        for (size_t i = 0; i < sizeof bad_routes / sizeof bad_routes[0]; i++) {
            char *body = with_field(bad_routes[i].field, bad_routes[i].value);
            cr_assert_eq(check_peek(body, strlen(body), &lim[l]), RK_ESCHEMA, "%s", body);
            free(body);
        }
    }
    cr_assert_gt(accepted, 20);
}

/* Random requests with routing fields (valid and not, in any place), then
 * mutated: both decoders agree, and peek agrees with rk_decode. */
Test(request, peek_agrees_on_random_mutations)
{
    static const char *const models[] = {"\"m\"", "\"ctr-v2\"", "null", "5", "\"\"", "\"\\u006d\\u00e9\"", "[\"m\"]",
                                         "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
                                         "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""};
    static const char *const versions[] = {"1", "\"2\"", "null", "0", "\"0\"", "9007199254740992", "9007199254740993",
                                           "\"007\"", "1.0", "\"\\u0033\"", "-1", "{}", "\"x\""};
    static const char *const keys[] = {"\"user-1\"", "42", "-0", "null", "\"\"", "1.5", "true", "\"\\\"\\\\\"",
                                       "-9223372036854775808", "[1]"};
    static const char *const fields[] = {"\"model\": %s", "\"version\": %s", "\"routing_key\": %s"};
    static const char *const *const vals[] = {models, versions, keys};
    static const int n_vals[] = {9, 13, 10};
    static const char *const others[] = {"\"candidates\": [{\"id\": 1, \"features\": {\"I1\": 2, \"C2\": [\"a\", \"model\"]}}]",
                                         "\"request_id\": \"\\\"model\\\"\"", "\"top_k\": 3",
                                         "\"context\": {\"C1\": \"\\\\\"}", "\"return\": {\"logits\": true}"};
    rk_limits lim[2] = {{.max_candidates = 10, .strict = 1}, {.max_candidates = 10, .strict = 0}};
    unsigned seed = 777;
    size_t accepted = 0, routed = 0, refused = 0;
    for (int it = 0; it < 6000; it++) {
        rk_buf b = {0};
        int order[8], n = 0;
        for (int f = 0; f < 3; f++)
            if (rand_r(&seed) % 3) order[n++] = f;
        for (int o = 0; o < 5; o++)
            if (o == 0 || rand_r(&seed) % 2) order[n++] = 3 + o;
        for (int i = n - 1; i > 0; i--) { /* shuffle */
            int j = rand_r(&seed) % (i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        rk_buf_puts(&b, "{");
        for (int i = 0; i < n; i++) {
            if (i) rk_buf_puts(&b, ", ");
            int f = order[i];
            if (f < 3) rk_buf_printf(&b, fields[f], vals[f][rand_r(&seed) % n_vals[f]]);
            else rk_buf_puts(&b, others[f - 3]);
        }
        rk_buf_puts(&b, "}");
        cr_assert(!b.oom);
        if (it % 3) mutate_body(&b, &seed);
        const rk_limits *l = &lim[it % 2];
        char *body = exact_copy(b.data, b.len), err[256] = "", why[64];
        rk_request *a = NULL, *d = NULL;
        int rf = rk_decode_fast(M, body, b.len, l, &a, err, sizeof err);
        int rd = rk_decode_dom(M, body, b.len, l, &d, err, sizeof err);
        if (rf == 0) {
            cr_assert_eq(rd, 0, "fast accepted what the DOM decoder refuses (%s): %.*s", err, (int)b.len, body);
            cr_assert(same_request(a, d, why, sizeof why), "%s differs: %.*s", why, (int)b.len, body);
        } else {
            cr_assert_eq(rf, RK_DECODE_FALLBACK, "%.*s", (int)b.len, body);
        }
        accepted += rd == 0;
        routed += rd == 0 && (d->has_model || d->version || d->has_routing_key);
        refused += check_peek(body, b.len, l) == RK_ESCHEMA;
        rk_request_free(a);
        rk_request_free(d);
        free(body);
        free(b.data);
    }
    cr_assert_gt(routed, 500, "only %zu accepted bodies had routing fields (%zu accepted)", routed, accepted);
    cr_assert_gt(refused, 1000, "only %zu routing errors", refused);
}
