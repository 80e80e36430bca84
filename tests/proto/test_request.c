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
