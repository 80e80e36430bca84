/* fuzz_request.c — libFuzzer target for the request decoder: the input is a
 * whole POST /rank body.
 *
 * DESIGN: LLVMFuzzerInitialize opens three models whose features cover every
 * id mapping, multi-hot pooling and context features: the bundled default
 * (13 dense, 26 hex_mod sparse), tests/golden/map_vocab.dcn and
 * tests/golden/multihot_sum_mean.dcn. Each body is decoded against each of
 * them, as the server does (rk_decode with a small candidate limit so the
 * limit is exercised too). A refused body must give a known rk_err and a
 * message. An accepted one goes the rest of the server's way: the server's
 * own scorer (score_batch) turns it into an engine batch, which the engine
 * must accept (the decoder hands over only table rows and counts within
 * max_ids); then ranking and the encoder, whose output must parse as JSON
 * and hold min(top_k, n) candidates.
 * Every refusal's message must be valid UTF-8 (jansson makes a string of
 * it) and its error answer (rk_encode_error) must parse as JSON and carry
 * the message unchanged; the input itself, as an error message, must give
 * an answer that parses too (issue 15: a message quoting a character cut in
 * half made an answer no parser took).
 * Where proto/rk.h has two decoders (RK_DECODE_FALLBACK defined), the body
 * is also decoded by each: the fast one must either hand the body back
 * (RK_DECODE_FALLBACK, nothing stored) or build exactly the request the
 * jansson one builds (a differential test of the hand-written parser).
 * rk_peek_route reads each body once and is held to rk.h's promises: on a
 * JSON object (jansson's word) it must give what route_oracle, an
 * independent reading of API.md's rules over jansson's tree, expects; on
 * anything else 0 or RK_ROUTE_UNREADABLE, never a routing error; and
 * against each model's rk_decode, an accepted body peeks to the same
 * routing fields, and a routing error is the same code and message both
 * ways.
 */
#include <jansson.h>

#include "model/dcn.h"
#include "proto/rk.h"
#include "server/score.h"
#include "tests/fuzz/fuzz.h"

enum { N_MODELS = 3, MAX_CANDS = 64 };

static const char *const model_files[N_MODELS] = {
    "model/default/criteo-dcn.dcn", "tests/golden/map_vocab.dcn", "tests/golden/multihot_sum_mean.dcn"};
static dcn_model *models[N_MODELS];
static void *states[N_MODELS]; /* score_batch's per-model staging */
static score_ctx sctx = {.max_batch_rows = MAX_CANDS};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[1024], err[256];
    for (int i = 0; i < N_MODELS; i++) {
        fz_path(path, sizeof path, model_files[i]);
        FZ_CHECK(dcn_open(path, NULL, &models[i], err, sizeof err) == 0, "%s: %s (set DCN_FUZZ_ROOT)", path, err);
    }
    return 0;
}

/* Checks what the decoder promises about an accepted request. */
static void check_request(const dcn_model *m, const rk_request *rq)
{
    const dcn_info *in = dcn_model_info(m);
    FZ_CHECK(rq->n_cands <= MAX_CANDS, "%zu candidates past the limit", rq->n_cands);
    FZ_CHECK(rq->n_dense == in->n_dense && rq->n_sparse == in->n_sparse, "feature counts");
    size_t ns = rq->n_sparse;
    for (size_t f = 0; f < ns; f++) {
        const dcn_sparse_spec *sp = dcn_sparse(m, f);
        FZ_CHECK(rq->ctx_off[f] <= rq->ctx_off[f + 1] && rq->ctx_off[f + 1] - rq->ctx_off[f] <= sp->max_ids,
                 "context feature %zu: offsets", f);
        for (uint32_t i = rq->ctx_off[f]; i < rq->ctx_off[f + 1]; i++)
            FZ_CHECK(rq->ctx_ids[i] >= -1 && rq->ctx_ids[i] < (int64_t)sp->vocab_size, "context id");
    }
    for (size_t k = 0; k < rq->n_cands * ns; k++) {
        const dcn_sparse_spec *sp = dcn_sparse(m, k % ns);
        FZ_CHECK(rq->sp_off[k] <= rq->sp_off[k + 1] && rq->sp_off[k + 1] - rq->sp_off[k] <= sp->max_ids,
                 "candidate %zu feature %zu: offsets", k / ns, k % ns);
        for (uint32_t i = rq->sp_off[k]; i < rq->sp_off[k + 1]; i++)
            FZ_CHECK(rq->sp_ids[i] >= -1 && rq->sp_ids[i] < (int64_t)sp->vocab_size, "candidate id");
    }
}

/* Scores an accepted request through the server's scorer, then ranks and
 * encodes it; the answer must be JSON with the right number of entries. */
static void score_and_encode(int mi, const rk_request *rq)
{
    const dcn_model *m = models[mi];
    size_t n = rq->n_cands;
    float *scores = malloc((n + 1) * sizeof *scores), *logits = malloc((n + 1) * sizeof *logits);
    uint32_t *order = malloc((n + 1) * sizeof *order);
    FZ_CHECK(scores && logits && order, "out of memory");
    if (n) {
        score_target t = {rq, scores, logits};
        batch_job job = {.req = &t, .key = m, .n_rows = (uint32_t)n};
        batch_seg seg = {&job, 0, (uint32_t)n};
        batch_work w = {.key = m, .n_rows = n, .n_segs = 1, .segs = &seg};
        int rc = score_batch(&sctx, &states[mi], &w);
        FZ_CHECK(rc == 0, "the engine refused a decoded request: %d (%s)", rc, dcn_strerror(rc));
    }
    size_t k = rk_rank(scores, n, rq->top_k, order);
    FZ_CHECK(k == (rq->top_k < 0 || (uint64_t)rq->top_k > n ? n : (size_t)rq->top_k), "rk_rank kept %zu", k);
    rk_buf out = {0};
    rk_encode_head(&out, rq, "m", "1", scores, rq->want_logits ? logits : NULL, order, k);
    rk_latency lat = {1, 2, 3, 4, 5};
    rk_encode_tail(&out, &lat);
    if (!out.oom) {
        json_error_t jerr;
        json_t *doc = json_loadb(out.data, out.len, 0, &jerr);
        FZ_CHECK(doc, "the answer is not JSON (%s): %.200s", jerr.text, out.data);
        json_t *ranked = json_object_get(doc, "ranked");
        FZ_CHECK(json_is_array(ranked) && json_array_size(ranked) == k, "ranked holds the wrong count");
        json_decref(doc);
    }
    free(out.data);
    free(scores);
    free(logits);
    free(order);
}

/* Checks the error answer for code rc and message msg: JSON a strict
 * parser takes, with that code; want (may be NULL) is the message expected
 * back. */
static void check_error_answer(int rc, const char *msg, const char *want)
{
    rk_buf out = {0};
    rk_encode_error(&out, rc, msg);
    if (out.oom) {
        free(out.data);
        return;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(out.data, out.len, 0, &jerr);
    FZ_CHECK(doc, "the error answer is not JSON (%s): %.300s", jerr.text, out.data);
    json_t *e = json_object_get(doc, "error");
    FZ_CHECK(json_is_string(json_object_get(e, "message")), "the error answer has no message");
    FZ_CHECK(!strcmp(json_string_value(json_object_get(e, "code")), rk_err_name(rc)), "the error answer's code");
    if (want)
        FZ_CHECK(!strcmp(json_string_value(json_object_get(e, "message")), want),
                 "the error answer changed a valid message: %.200s", want);
    json_decref(doc);
    free(out.data);
}

/* Checks a refusal's message: valid UTF-8 (json_string refuses anything
 * else), carried unchanged by its error answer. */
static void check_refusal_message(int rc, const char *err)
{
    json_t *s = json_string(err);
    FZ_CHECK(s, "the message is not valid UTF-8: %.200s", err);
    json_decref(s);
    check_error_answer(rc, err, err);
}

#ifdef RK_DECODE_FALLBACK
/* Same bits, NaN equal to NaN (a missing dense value). */
static int same_floats(const float *a, const float *b, size_t n, const uint8_t *given)
{
    for (size_t i = 0; i < n; i++)
        if ((!given || given[i]) && memcmp(&a[i], &b[i], sizeof *a) && !(a[i] != a[i] && b[i] != b[i])) return 0;
    return 1;
}

/* Aborts unless two decoded requests are the same request. */
static void check_same(const rk_request *a, const rk_request *b)
{
    size_t nd = a->n_dense, ns = a->n_sparse, n = a->n_cands;
    FZ_CHECK(n == b->n_cands && nd == b->n_dense && ns == b->n_sparse, "shape differs");
    FZ_CHECK(a->top_k == b->top_k && a->deadline_ms == b->deadline_ms && a->want_logits == b->want_logits,
             "options differ");
    FZ_CHECK((!a->request_id && !b->request_id) || json_equal(a->request_id, b->request_id), "request_id differs");
    FZ_CHECK(a->has_model == b->has_model && !strcmp(a->model, b->model), "model differs");
    FZ_CHECK(a->version == b->version, "version differs");
    FZ_CHECK(a->has_routing_key == b->has_routing_key && !strcmp(a->routing_key, b->routing_key),
             "routing_key differs");
    for (size_t i = 0; i < n; i++) FZ_CHECK(json_equal(a->cand_ids[i], b->cand_ids[i]), "candidate %zu id", i);
    FZ_CHECK(same_floats(a->ctx_dense, b->ctx_dense, nd, NULL), "context dense differs");
    FZ_CHECK(!memcmp(a->ctx_off, b->ctx_off, (ns + 1) * sizeof *a->ctx_off), "context offsets differ");
    FZ_CHECK(!memcmp(a->ctx_ids, b->ctx_ids, a->ctx_off[ns] * sizeof *a->ctx_ids), "context ids differ");
    FZ_CHECK(!memcmp(a->dense_given, b->dense_given, n * nd), "dense_given differs");
    FZ_CHECK(same_floats(a->dense, b->dense, n * nd, a->dense_given), "dense values differ");
    FZ_CHECK(!memcmp(a->sp_off, b->sp_off, (n * ns + 1) * sizeof *a->sp_off), "sparse offsets differ");
    FZ_CHECK(!memcmp(a->sp_ids, b->sp_ids, a->sp_off[n * ns] * sizeof *a->sp_ids), "sparse ids differ");
    FZ_CHECK(!memcmp(a->sparse_given, b->sparse_given, n * ns), "sparse_given differs");
    FZ_CHECK(!memcmp(a->dense_per_row, b->dense_per_row, nd), "dense_per_row differs");
    FZ_CHECK(!memcmp(a->sparse_per_row, b->sparse_per_row, ns), "sparse_per_row differs");
}

/* The fast decoder against the jansson one on the same body. */
static void differential(const dcn_model *m, const uint8_t *data, size_t size, const rk_limits *lim)
{
    rk_request *fast = (rk_request *)1, *dom = NULL;
    char e1[256] = "", e2[256] = "";
    int rf = rk_decode_fast(m, (const char *)data, size, lim, &fast, e1, sizeof e1);
    if (rf == RK_DECODE_FALLBACK || rf == RK_ENOMEM) {
        FZ_CHECK(!fast, "a fallback stored a request");
        return;
    }
    FZ_CHECK(rf == 0 && fast, "rk_decode_fast returned %d (%s)", rf, e1);
    int rd = rk_decode_dom(m, (const char *)data, size, lim, &dom, e2, sizeof e2);
    FZ_CHECK(rd == 0, "the fast decoder accepted a body the DOM decoder refuses: %d %s", rd, e2);
    check_same(fast, dom);
    rk_request_free(fast);
    rk_request_free(dom);
}
#endif

/* ------------------------------------------------------------ routing */

/* What rk_peek_route must give for a body: known (jansson reads it as an
 * object) with code 0 and the fields, or RK_ESCHEMA and the name of the
 * first bad member (model, version, routing_key); or unknown (0 or
 * RK_ROUTE_UNREADABLE allowed). */
typedef struct route_want {
    int known, code;
    const char *bad;            /* when code is RK_ESCHEMA */
    rk_route r;
} route_want;

/* API.md's rules, read again over jansson's tree, apart from request.c. */
static void route_oracle(const uint8_t *data, size_t size, route_want *w)
{
    memset(w, 0, sizeof *w);
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL), *v;
    if (!json_is_object(root)) {
        json_decref(root);
        return;
    }
    w->known = 1;
    if ((v = json_object_get(root, "model")) && !json_is_null(v)) {
        size_t n = json_string_length(v);
        if (!json_is_string(v) || !n || n > 64) { w->bad = "model:"; goto bad; }
        memcpy(w->r.model, json_string_value(v), n);
        w->r.has_model = 1;
    }
    if ((v = json_object_get(root, "version")) && !json_is_null(v)) {
        uint64_t x = 0;
        if (json_is_integer(v)) {
            if (json_integer_value(v) < 1 || json_integer_value(v) > 9007199254740992LL) { w->bad = "version:"; goto bad; }
            x = (uint64_t)json_integer_value(v);
        } else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            size_t n = json_string_length(v), i = 0;
            while (i < n && s[i] == '0') i++;
            if (!n || n - i > 16 || strspn(s + i, "0123456789") != n - i) { w->bad = "version:"; goto bad; }
            for (; i < n; i++) x = x * 10 + (uint64_t)(s[i] - '0');
            if (x < 1 || x > 9007199254740992ULL) { w->bad = "version:"; goto bad; }
        } else {
            w->bad = "version:";
            goto bad;
        }
        w->r.version = x;
    }
    if ((v = json_object_get(root, "routing_key")) && !json_is_null(v)) {
        if (json_is_integer(v)) {
            snprintf(w->r.routing_key, sizeof w->r.routing_key, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        } else {
            size_t n = json_string_length(v);
            if (!json_is_string(v) || n > 256) { w->bad = "routing_key:"; goto bad; }
            memcpy(w->r.routing_key, json_string_value(v), n);
        }
        w->r.has_routing_key = 1;
    }
    json_decref(root);
    return;
bad:
    memset(&w->r, 0, sizeof w->r);
    w->code = RK_ESCHEMA;
    json_decref(root);
}

static int same_route(const rk_route *a, const rk_route *b)
{
    return a->has_model == b->has_model && !strcmp(a->model, b->model) && a->version == b->version &&
           a->has_routing_key == b->has_routing_key && !strcmp(a->routing_key, b->routing_key);
}

/* Peeks the body and checks it against the oracle; returns the code, the
 * fields in *r and the message in err. */
static int check_peek(const uint8_t *data, size_t size, rk_route *r, char *err, size_t errlen)
{
    route_want w;
    route_oracle(data, size, &w);
    int pr = rk_peek_route((const char *)data, size, r, err, errlen);
    FZ_CHECK(pr == 0 || pr == RK_ESCHEMA || pr == RK_ROUTE_UNREADABLE, "rk_peek_route returned %d", pr);
    FZ_CHECK(memchr(r->model, 0, sizeof r->model) && memchr(r->routing_key, 0, sizeof r->routing_key),
             "unterminated routing fields");
    if (pr) {
        rk_route zero;
        memset(&zero, 0, sizeof zero);
        FZ_CHECK(!memcmp(r, &zero, sizeof zero), "a refusal left routing fields set");
    }
    if (pr == RK_ESCHEMA) {
        check_refusal_message(pr, err);
    } else {
        FZ_CHECK(!err[0], "a message without RK_ESCHEMA: %s", err);
        json_t *s;
        FZ_CHECK((s = json_string(r->model)) != NULL, "the model name is not UTF-8");
        json_decref(s);
        FZ_CHECK((s = json_string(r->routing_key)) != NULL, "the routing key is not UTF-8");
        json_decref(s);
        FZ_CHECK(r->has_model ? strlen(r->model) >= 1 && strlen(r->model) <= RK_MODEL_MAX : !r->model[0],
                 "model size");
        FZ_CHECK(r->version <= RK_VERSION_MAX, "version past 2^53");
        FZ_CHECK(r->has_routing_key || !r->routing_key[0], "routing key without has_routing_key");
    }
    if (!w.known) {
        FZ_CHECK(pr != RK_ESCHEMA, "a routing error for a body jansson does not read as an object: %s", err);
        return pr;
    }
    FZ_CHECK(pr == w.code, "rk_peek_route returned %d, the oracle %d (%s)", pr, w.code, err);
    if (pr == RK_ESCHEMA)
        FZ_CHECK(!strncmp(err, w.bad, strlen(w.bad)), "the error names another field than %s: %s", w.bad, err);
    else
        FZ_CHECK(same_route(r, &w.r), "rk_peek_route read other fields than the oracle: \"%s\" %llu \"%s\" vs \"%s\" %llu \"%s\"",
                 r->model, (unsigned long long)r->version, r->routing_key, w.r.model,
                 (unsigned long long)w.r.version, w.r.routing_key);
    return pr;
}

/* One model's rk_decode answer against the peek. */
static void check_peek_vs_decode(int pr, const rk_route *r, const char *perr, int rc, const rk_request *rq,
                                 const char *err)
{
    if (rc == 0) {
        FZ_CHECK(pr == 0, "rk_decode accepted a body rk_peek_route refuses (%d %s)", pr, perr);
        rk_route got = {.has_model = rq->has_model, .version = rq->version, .has_routing_key = rq->has_routing_key};
        memcpy(got.model, rq->model, sizeof got.model);
        memcpy(got.routing_key, rq->routing_key, sizeof got.routing_key);
        FZ_CHECK(same_route(r, &got), "rk_peek_route and rk_decode read other routing fields");
    }
    if (rc == RK_ENOMEM) return;
    if (pr == RK_ESCHEMA)
        FZ_CHECK(rc == RK_ESCHEMA && !strcmp(err, perr), "a routing error (%s) rk_decode answers with %d (%s)", perr,
                 rc, err);
    if (rc == RK_ESCHEMA && (!strncmp(err, "model:", 6) || !strncmp(err, "version:", 8) ||
                             !strncmp(err, "routing_key:", 12)))
        FZ_CHECK(pr == RK_ESCHEMA, "rk_peek_route missed a routing error: %s", err);
    if (pr == RK_ROUTE_UNREADABLE) FZ_CHECK(rc < 0, "rk_decode accepted an unreadable body");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!models[0]) LLVMFuzzerInitialize(NULL, NULL);
    {
        /* the body's bytes as a message (up to its first NUL) */
        char msg[512];
        size_t n = size < sizeof msg - 1 ? size : sizeof msg - 1;
        memcpy(msg, data, n);
        msg[n] = 0;
        json_t *s = json_string(msg);
        check_error_answer(RK_EJSON, msg, s && msg[0] ? msg : NULL);
        json_decref(s);
    }
    rk_route route;
    char perr[256] = "";
    int pr = check_peek(data, size, &route, perr, sizeof perr);
    for (int mi = 0; mi < N_MODELS; mi++) {
        rk_limits lim = {.max_candidates = MAX_CANDS, .strict = mi != 1};
#ifdef RK_DECODE_FALLBACK
        differential(models[mi], data, size, &lim);
#endif
        rk_request *rq = (rk_request *)1;
        char err[256] = "";
        int rc = rk_decode(models[mi], (const char *)data, size, &lim, &rq, err, sizeof err);
        check_peek_vs_decode(pr, &route, perr, rc, rq, err);
        if (rc < 0) {
            FZ_CHECK(!rq, "a refused body left a request");
            FZ_CHECK(rc >= RK_ENOMEM && err[0], "rc %d without a message", rc);
            FZ_CHECK(strcmp(rk_err_name(rc), "internal") || rc == RK_EINTERNAL, "unlisted code %d", rc);
            check_refusal_message(rc, err);
            continue;
        }
        FZ_CHECK(rc == 0 && rq, "success without a request");
        check_request(models[mi], rq);
        score_and_encode(mi, rq);
        rk_request_free(rq);
    }
    return 0;
}
