/* request.c — decodes a POST /rank body into an rk_request (see rk.h).
 *
 * DESIGN
 * - Two decoders, one result. rk_decode_fast (the bottom of this file) reads
 *   the body once, without building a tree, resolving feature names and
 *   mapping ids as it reads; it handles every valid request. Anything else
 *   (an error of any kind, or input it does not care to judge) makes it
 *   give up, and rk_decode_dom, the jansson reference, decodes the body
 *   again and words the error. Only bodies that fail pay twice.
 * - Feature names are resolved with dcn_find_feature and ids mapped with
 *   dcn_map_str / dcn_map_int here, once, on the event-loop thread; the
 *   worker threads then only copy numbers. Sparse ids of the candidates are
 *   one CSR array over (candidate, feature) pairs, row-major, grown as
 *   decoded. The request_id and candidate ids are kept as jansson values
 *   (referenced) for the answer.
 * - Error messages quote the body (jansson's excerpt near the fault, keys)
 *   and the model (feature names). Every message is valid UTF-8 and cut
 *   only between characters (fail, utf8_prefix): a byte that starts no
 *   valid character is written as U+FFFD, so the answer that carries the
 *   message is JSON and the log that may quote it stays readable.
 * - The routing fields ("model", "version", "routing_key") are checked
 *   before anything else a JSON object can get wrong, by one function
 *   (route_from_dom) that rk_peek_route's fallback shares: the server reads
 *   them with rk_peek_route (the bottom of this file) before it knows which
 *   model to decode against, and gets the error rk_decode would give.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/rk.h"

const char *rk_err_name(int err)
{
    switch (err) {
#define XX(name, code, id, msg) case code: return id;
    RK_ERRNO_MAP(XX)
#undef XX
    default: return "internal";
    }
}

const char *rk_strerror(int err)
{
    switch (err) {
    case 0: return "success";
#define XX(name, code, id, msg) case code: return msg;
    RK_ERRNO_MAP(XX)
#undef XX
    default: return "unknown error";
    }
}

/* Longest quote of a name (a key, a feature) in a message, in bytes. */
#define QUOTE_BYTES 64

/* How many bytes of s, at most max_bytes, hold whole characters: the
 * precision that quotes s with "%.*s" without cutting a character. */
static int utf8_prefix(const char *s, size_t max_bytes)
{
    size_t o = 0, n = strnlen(s, max_bytes + 4);
    while (o < n) {
        size_t k = rk_utf8_char(s + o, n - o);
        if (!k) k = 1; /* not UTF-8: counted as a byte, replaced by copy_utf8 */
        if (o + k > max_bytes) break;
        o += k;
    }
    return (int)o;
}

/* Copies the string src into dst (dstlen >= 1 bytes, always terminated)
 * whole character by whole character: valid UTF-8 passes, each other byte
 * becomes U+FFFD, and the first character that does not fit ends the copy.
 * So a message is valid UTF-8 whatever it quotes (jansson's excerpt of a
 * body can end inside a character, or hold bytes that are not UTF-8). */
static void copy_utf8(char *dst, size_t dstlen, const char *src)
{
    static const char replacement[] = "\xef\xbf\xbd";
    size_t o = 0, n = strlen(src);
    for (size_t i = 0; i < n;) {
        size_t k = rk_utf8_char(src + i, n - i);
        const char *c = k ? src + i : replacement;
        size_t clen = k ? k : sizeof replacement - 1;
        if (o + clen >= dstlen) break;
        memcpy(dst + o, c, clen);
        o += clen;
        i += k ? k : 1;
    }
    dst[o] = 0;
}

/* Writes a formatted message into err (if any), valid UTF-8 and cut only
 * between characters (at most 1023 bytes), and returns code. */
__attribute__((format(printf, 4, 5)))
static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        char text[1024];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
        if (n < 0) text[0] = 0;
        copy_utf8(err, errlen, text);
    }
    return code;
}

/* A growable id array. */
typedef struct idvec {
    int64_t *v;
    size_t n, cap;
} idvec;

/* Appends one id; returns 0 or RK_ENOMEM. */
static int idvec_push(idvec *iv, int64_t id)
{
    if (iv->n == iv->cap) {
        size_t cap = iv->cap ? iv->cap * 2 : 256;
        int64_t *nv = realloc(iv->v, cap * sizeof *nv);
        if (!nv) return RK_ENOMEM;
        iv->v = nv;
        iv->cap = cap;
    }
    iv->v[iv->n++] = id;
    return 0;
}

/* Maps one JSON id (string or integer) of sparse feature f and appends the
 * row (each id maps on its own, FORMAT.md §3: even hex_mod's empty string is
 * one id, mapping to missing_row). Returns 0, RK_ENOMEM, or RK_EVALUE for
 * any other JSON type. */
static int map_one(const dcn_model *m, size_t f, json_t *v, idvec *iv)
{
    if (json_is_string(v))
        return idvec_push(iv, dcn_map_str(m, f, json_string_value(v), json_string_length(v)));
    if (json_is_integer(v)) return idvec_push(iv, dcn_map_int(m, f, (int64_t)json_integer_value(v)));
    return RK_EVALUE;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Decodes the value v of sparse feature f (named `where` in messages) into
 * iv. null gives no ids (missing). Returns 0 or a negative rk_err. */
static int decode_sparse(const dcn_model *m, size_t f, json_t *v, idvec *iv, const char *where,
                         char *err, size_t errlen)
{
    const dcn_sparse_spec *sp = dcn_sparse(m, f);
    int rc;
    if (json_is_null(v)) return 0;
    if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if (n > sp->max_ids)
            return fail(err, errlen, RK_EVALUE, "%s: %zu ids, the model allows at most %u",
                        where, n, (unsigned)sp->max_ids);
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(v, i);
            if ((rc = map_one(m, f, e, iv)) == RK_EVALUE)
                return fail(err, errlen, RK_EVALUE,
                            "%s[%zu]: expected a string or integer id (sparse feature), got %s",
                            where, i, type_name(e));
            if (rc < 0) return fail(err, errlen, rc, "out of memory");
        }
        return 0;
    }
    if ((rc = map_one(m, f, v, iv)) == RK_EVALUE)
        return fail(err, errlen, RK_EVALUE,
                    "%s: expected a string or integer id, or an array of them (sparse feature), got %s",
                    where, type_name(v));
    if (rc < 0) return fail(err, errlen, rc, "out of memory");
    return 0;
}

/* Decodes a dense value: a number, or null for missing (NaN). */
static int decode_dense(json_t *v, float *out, const char *where, char *err, size_t errlen)
{
    if (json_is_null(v)) { *out = NAN; return 0; }
    if (json_is_number(v)) { *out = (float)json_number_value(v); return 0; }
    return fail(err, errlen, RK_EVALUE, "%s: expected a number or null (dense feature), got %s",
                where, type_name(v));
}

void rk_request_free(rk_request *rq)
{
    if (!rq) return;
    json_decref(rq->request_id);
    if (rq->cand_ids)
        for (size_t i = 0; i < rq->n_cands; i++) json_decref(rq->cand_ids[i]);
    free(rq->cand_ids);
    free(rq->ctx_dense);
    free(rq->ctx_off);
    free(rq->ctx_ids);
    free(rq->dense);
    free(rq->dense_given);
    free(rq->sp_off);
    free(rq->sp_ids);
    free(rq->sparse_given);
    free(rq->dense_per_row);
    free(rq->sparse_per_row);
    free(rq);
}

/* Reads an optional non-negative integer field; returns 0, 1 if absent, or
 * RK_ESCHEMA. */
static int get_count(json_t *root, const char *key, int64_t min, int64_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 1;
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return fail(err, errlen, RK_ESCHEMA, "%s: expected an integer >= %lld", key, (long long)min);
    *out = (int64_t)json_integer_value(v);
    return 0;
}

/* ------------------------------------------------------------ routing fields
 *
 * "model", "version" and "routing_key" pick the model that scores the
 * request (rk.h: rk_route). Four readers must agree on them: the DOM
 * decoder and rk_peek_route's fallback (both through route_from_dom, the one
 * place that words their errors), the fast decoder and rk_peek_route's scan
 * (both of which only accept a valid member and leave every doubt to
 * route_from_dom). version_digits is the one rule for a version string,
 * routing_key_int the one text of an integer key.
 */

static const char msg_model[] = "model: expected a string of 1 to 64 bytes";
static const char msg_version[] = "version: expected an integer from 1 to 2^53, or a string of its decimal digits";
static const char msg_routing_key[] = "routing_key: expected a string of at most 256 bytes, or an integer";

/* Reads a version string (n bytes): decimal digits only (leading zeros
 * allowed), of value 1 to RK_VERSION_MAX. Returns 1 with the value in *out,
 * or 0. */
static int version_digits(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (uint64_t)(s[i] - '0'); /* v <= 2^53 before: no overflow */
        if (v > RK_VERSION_MAX) return 0;
    }
    if (!v) return 0; /* empty, or zero */
    *out = v;
    return 1;
}

/* Writes an integer routing key as its decimal text. */
static void routing_key_int(char *dst, int64_t v)
{
    snprintf(dst, RK_ROUTING_KEY_MAX + 1, "%lld", (long long)v);
}

/* Reads the routing members of the request object root into r (zeroed
 * first, and again on failure). Returns 0 or RK_ESCHEMA with the message
 * of the first bad member, in the order model, version, routing_key. */
static int route_from_dom(json_t *root, rk_route *r, char *err, size_t errlen)
{
    const char *msg;
    json_t *v;
    memset(r, 0, sizeof *r);
    v = json_object_get(root, "model");
    if (v && !json_is_null(v)) {
        size_t n = json_string_length(v); /* 0 for anything else than a string */
        msg = msg_model;
        if (!json_is_string(v) || n < 1 || n > RK_MODEL_MAX) goto bad;
        memcpy(r->model, json_string_value(v), n);
        r->has_model = 1;
    }
    v = json_object_get(root, "version");
    if (v && !json_is_null(v)) {
        msg = msg_version;
        if (json_is_integer(v)) {
            json_int_t i = json_integer_value(v);
            if (i < 1 || (uint64_t)i > RK_VERSION_MAX) goto bad;
            r->version = (uint64_t)i;
        } else if (!json_is_string(v) || !version_digits(json_string_value(v), json_string_length(v), &r->version)) {
            goto bad;
        }
    }
    v = json_object_get(root, "routing_key");
    if (v && !json_is_null(v)) {
        msg = msg_routing_key;
        if (json_is_integer(v)) {
            routing_key_int(r->routing_key, (int64_t)json_integer_value(v));
        } else {
            size_t n = json_string_length(v);
            if (!json_is_string(v) || n > RK_ROUTING_KEY_MAX) goto bad;
            memcpy(r->routing_key, json_string_value(v), n);
        }
        r->has_routing_key = 1;
    }
    return 0;
bad:
    memset(r, 0, sizeof *r);
    return fail(err, errlen, RK_ESCHEMA, "%s", msg);
}

/* Copies the routing fields into a request. */
static void route_to_request(rk_request *rq, const rk_route *r)
{
    rq->has_model = r->has_model;
    memcpy(rq->model, r->model, sizeof rq->model);
    rq->version = r->version;
    rq->has_routing_key = r->has_routing_key;
    memcpy(rq->routing_key, r->routing_key, sizeof rq->routing_key);
}

int rk_decode_dom(const dcn_model *m, const char *body, size_t len, const rk_limits *lim,
                  rk_request **out, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = NULL, *v;
    rk_request *rq = NULL;
    idvec ids = {0};
    const char *key;
    char where[160];
    rk_route route;
    int rc, strict = lim ? lim->strict : 1;
    size_t max_cands = lim && lim->max_candidates ? lim->max_candidates : 10000;

    *out = NULL;
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = fail(err, errlen, RK_EJSON, "invalid JSON at line %d column %d: %s", jerr.line,
                  jerr.column, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = fail(err, errlen, RK_ESCHEMA, "the request must be a JSON object");
        goto fail;
    }
    /* first, as rk_peek_route reads them (rk.h) */
    if ((rc = route_from_dom(root, &route, err, errlen)) < 0) goto fail;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "request_id") && strcmp(key, "context") && strcmp(key, "candidates") &&
            strcmp(key, "top_k") && strcmp(key, "deadline_ms") && strcmp(key, "return") &&
            strcmp(key, "strict") && strcmp(key, "model") && strcmp(key, "version") &&
            strcmp(key, "routing_key")) {
            rc = fail(err, errlen, RK_ESCHEMA, "unknown field \"%.*s\"", utf8_prefix(key, QUOTE_BYTES), key);
            goto fail;
        }
    }

    const dcn_info *info = dcn_model_info(m);
    size_t nd = info->n_dense, ns = info->n_sparse;
    json_t *cands = json_object_get(root, "candidates");
    if (!json_is_array(cands)) {
        rc = fail(err, errlen, RK_ESCHEMA, "candidates: expected an array of {\"id\", \"features\"}");
        goto fail;
    }
    size_t nc = json_array_size(cands);
    if (nc > max_cands) {
        rc = fail(err, errlen, RK_ETOOMANY, "candidates: %zu, the limit is %zu", nc, max_cands);
        goto fail;
    }

    rc = RK_ENOMEM;
    if (!(rq = calloc(1, sizeof *rq))) goto fail_oom;
    rq->n_cands = nc;
    rq->n_dense = nd;
    rq->n_sparse = ns;
    rq->top_k = -1;
    route_to_request(rq, &route);

    v = json_object_get(root, "strict");
    if (v && !json_is_boolean(v)) {
        rc = fail(err, errlen, RK_ESCHEMA, "strict: expected a boolean");
        goto fail;
    }
    if (v) strict = json_is_true(v);
    if ((rc = get_count(root, "top_k", 0, &rq->top_k, err, errlen)) < 0) goto fail;
    if ((rc = get_count(root, "deadline_ms", 1, &rq->deadline_ms, err, errlen)) < 0) goto fail;
    v = json_object_get(root, "return");
    if (v && !json_is_null(v)) {
        json_t *o;
        if (!json_is_object(v)) {
            rc = fail(err, errlen, RK_ESCHEMA, "return: expected an object such as {\"logits\": true}");
            goto fail;
        }
        json_object_foreach(v, key, o) {
            if (strcmp(key, "logits") || !json_is_boolean(o)) {
                rc = fail(err, errlen, RK_ESCHEMA, "return.%.*s: unknown option or not a boolean",
                          utf8_prefix(key, QUOTE_BYTES), key);
                goto fail;
            }
            rq->want_logits = json_is_true(o);
        }
    }
    v = json_object_get(root, "request_id");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) && !json_is_integer(v)) {
            rc = fail(err, errlen, RK_ESCHEMA, "request_id: expected a string or integer");
            goto fail;
        }
        rq->request_id = json_incref(v);
    }

    rc = RK_ENOMEM;
    /* nc <= max_cands bounds every allocation below by max_cands x features. */
    rq->ctx_dense = malloc((nd ? nd : 1) * sizeof(float));
    rq->ctx_off = calloc(ns + 1, sizeof(uint32_t));
    rq->cand_ids = calloc(nc ? nc : 1, sizeof(json_t *));
    size_t ncd = nc * nd + 1, ncs = nc * ns + 1; /* +1: never a zero-byte allocation */
    rq->dense = calloc(ncd, sizeof(float)); /* zero where not given, as the fast path */
    rq->dense_given = calloc(ncd, 1);
    rq->sp_off = calloc(ncs, sizeof(uint32_t));
    rq->sparse_given = calloc(ncs, 1);
    rq->dense_per_row = calloc(nd ? nd : 1, 1);
    rq->sparse_per_row = calloc(ns ? ns : 1, 1);
    json_t **slot = calloc(ns ? ns : 1, sizeof(json_t *));
    if (!rq->ctx_dense || !rq->ctx_off || !rq->cand_ids || !rq->dense || !rq->dense_given ||
        !rq->sp_off || !rq->sparse_given || !rq->dense_per_row || !rq->sparse_per_row || !slot) {
        free(slot);
        goto fail_oom;
    }
    for (size_t j = 0; j < nd; j++) rq->ctx_dense[j] = NAN;

    /* context: dense straight in, sparse collected per feature then laid out in order */
    json_t *ctx = json_object_get(root, "context");
    if (ctx && !json_is_null(ctx) && !json_is_object(ctx)) {
        free(slot);
        rc = fail(err, errlen, RK_ESCHEMA, "context: expected an object {feature: value}");
        goto fail;
    }
    for (int pass = 0; pass <= (int)nc; pass++) {
        /* pass 0: the context; pass i > 0: candidate i - 1 */
        json_t *feats;
        size_t c = (size_t)pass - 1;
        if (pass == 0) {
            feats = ctx && json_is_object(ctx) ? ctx : NULL;
        } else {
            json_t *cand = json_array_get(cands, c);
            json_t *id = json_object_get(cand, "id");
            if (!json_is_object(cand)) {
                rc = fail(err, errlen, RK_ESCHEMA, "candidates[%zu]: expected an object", c);
                goto fail_slot;
            }
            json_object_foreach(cand, key, v) {
                if (strcmp(key, "id") && strcmp(key, "features")) {
                    rc = fail(err, errlen, RK_ESCHEMA, "candidates[%zu]: unknown field \"%.*s\"", c,
                              utf8_prefix(key, QUOTE_BYTES), key);
                    goto fail_slot;
                }
            }
            if (!id || !(json_is_string(id) || json_is_integer(id))) {
                rc = fail(err, errlen, RK_ESCHEMA, "candidates[%zu].id: expected a string or integer", c);
                goto fail_slot;
            }
            rq->cand_ids[c] = json_incref(id);
            feats = json_object_get(cand, "features");
            if (feats && !json_is_null(feats) && !json_is_object(feats)) {
                rc = fail(err, errlen, RK_ESCHEMA, "candidates[%zu].features: expected an object", c);
                goto fail_slot;
            }
            if (feats && !json_is_object(feats)) feats = NULL;
        }
        memset(slot, 0, (ns ? ns : 1) * sizeof(json_t *));
        if (feats) {
            json_object_foreach(feats, key, v) {
                size_t idx, klen = strlen(key);
                int kind = dcn_find_feature(m, key, klen, &idx);
                if (pass == 0) snprintf(where, sizeof where, "context.%.*s", utf8_prefix(key, QUOTE_BYTES), key);
                else snprintf(where, sizeof where, "candidates[%zu].features.%.*s", c,
                              utf8_prefix(key, QUOTE_BYTES), key);
                if (kind == DCN_FEATURE_DENSE) {
                    float *dst = pass == 0 ? &rq->ctx_dense[idx] : &rq->dense[c * nd + idx];
                    if ((rc = decode_dense(v, dst, where, err, errlen)) < 0) goto fail_slot;
                    if (pass) {
                        rq->dense_given[c * nd + idx] = 1;
                        rq->dense_per_row[idx] = 1;
                    }
                } else if (kind == DCN_FEATURE_SPARSE) {
                    slot[idx] = v;
                } else if (strict) {
                    rc = fail(err, errlen, RK_EFEATURE,
                              "%s: the model has no feature \"%.*s\" (send \"strict\": false to ignore unknown names)",
                              where, utf8_prefix(key, QUOTE_BYTES), key);
                    goto fail_slot;
                }
            }
        }
        /* sparse, in feature order, so offsets stay non-decreasing */
        for (size_t f = 0; f < ns; f++) {
            if (pass == 0) {
                rq->ctx_off[f] = (uint32_t)ids.n;
            } else {
                rq->sp_off[c * ns + f] = (uint32_t)ids.n;
            }
            if (!slot[f]) continue;
            const char *fname = dcn_sparse(m, f)->name;
            if (pass == 0) snprintf(where, sizeof where, "context.%.*s", utf8_prefix(fname, QUOTE_BYTES), fname);
            else snprintf(where, sizeof where, "candidates[%zu].features.%.*s", c,
                          utf8_prefix(fname, QUOTE_BYTES), fname);
            if ((rc = decode_sparse(m, f, slot[f], &ids, where, err, errlen)) < 0) goto fail_slot;
            if (ids.n > UINT32_MAX) {
                rc = fail(err, errlen, RK_ETOOMANY, "too many ids in one request");
                goto fail_slot;
            }
            if (pass) {
                rq->sparse_given[c * ns + f] = 1;
                rq->sparse_per_row[f] = 1;
            }
        }
        if (pass == 0) {
            /* the context's ids move to their own array */
            rq->ctx_off[ns] = (uint32_t)ids.n;
            rq->ctx_ids = ids.v ? ids.v : malloc(sizeof(int64_t));
            if (!rq->ctx_ids) { rc = RK_ENOMEM; goto fail_slot_oom; }
            ids = (idvec){0};
        }
    }
    rq->sp_off[nc * ns] = (uint32_t)ids.n;
    rq->sp_ids = ids.v ? ids.v : malloc(sizeof(int64_t));
    ids = (idvec){0};
    free(slot);
    if (!rq->sp_ids) goto fail_oom;
    json_decref(root);
    *out = rq;
    return 0;

fail_slot_oom:
    fail(err, errlen, RK_ENOMEM, "out of memory");
fail_slot:
    free(slot);
    goto fail;
fail_oom:
    rc = fail(err, errlen, RK_ENOMEM, "out of memory");
fail:
    free(ids.v);
    rk_request_free(rq);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------ fast path
 *
 * A single pass over the body, no DOM: a recursive-descent reader of the one
 * shape a request has, which resolves feature names and maps ids the moment
 * it reads them. It returns FB (RK_DECODE_FALLBACK) the moment anything is
 * not a valid request, and rk_decode re-reads the body with the DOM decoder
 * for the error. Invariant: whatever it accepts, jansson accepts too and the
 * DOM decoder turns into the same request; so in doubt it falls back.
 * Rules it shares with jansson (2.14, JSON_REJECT_DUPLICATES, no flags):
 * - duplicate keys, compared after unescaping, anywhere: an error;
 * - strings: valid UTF-8 (no overlong forms, surrogates or code points over
 *   U+10FFFF), no raw control bytes, the JSON escapes only, \u surrogates
 *   in pairs, no \u0000;
 * - numbers: JSON's grammar; without '.', 'e' or 'E' an int64 (out of range:
 *   an error), else a double as strtod rounds it (overflow: an error);
 * - whitespace: space, tab, CR, LF; nothing after the top-level object.
 * Limits: candidates beyond lim->max_candidates, more ids than a feature's
 * max_ids and values nested deeper than FAST_MAX_DEPTH fall back before any
 * allocation grows past them; every other size is bounded by the body.
 */

#define FB RK_DECODE_FALLBACK
#define FAST_MAX_DEPTH 32       /* nesting inside an ignored (lenient) value */
#define FAST_MAX_UNKNOWN 32     /* ignored names per object, for the duplicate check */

/* Byte classes: 1 for bytes that may stand in a string as they are (ASCII
 * from 0x20, except '"' and '\\'). */
static const uint8_t str_plain[256] = {
    ['\x20'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1,
    [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, ['-'] = 1, ['.'] = 1, ['/'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1,
    ['9'] = 1, [':'] = 1, [';'] = 1, ['<'] = 1, ['='] = 1, ['>'] = 1, ['?'] = 1, ['@'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1, ['['] = 1, [']'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['a'] = 1,
    ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
    ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1,
    ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1,
    ['z'] = 1, ['{'] = 1, ['|'] = 1, ['}'] = 1, ['~'] = 1, ['\x7f'] = 1,
};

/* The reader's state for one body. */
typedef struct fdec {
    const char *p, *end;        /* cursor, end of the body */
    const char *s;              /* last string read (into the body or sbuf) */
    size_t slen;
    char *sbuf;                 /* (scap) unescaped strings */
    size_t scap;
    const dcn_model *m;
    size_t nd, ns, nf;          /* dense, sparse, nd + ns features */
    const char **name;          /* (nf) feature names: dense, then sparse */
    size_t *name_len;           /* (nf) */
    int32_t *next_of;           /* (nf + 1) guess: the feature after [g + 1] last time ([0]: first) */
    uint32_t *stamp;            /* (nf) object that last gave the feature */
    uint32_t cur;               /* stamp of the object being read */
    uint32_t *slot_at, *slot_n; /* (ns) the object's ids of a sparse feature in stage */
    idvec stage;                /* ids of the object being read */
    int unknown;                /* some feature name was not the model's */
} fdec;

static void skip_ws(fdec *d)
{
    const char *p = d->p;
    while (p < d->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    d->p = p;
}

/* Skips whitespace, then consumes c; returns 0 or FB. */
static int expect(fdec *d, char c)
{
    skip_ws(d);
    if (d->p >= d->end || *d->p != c) return FB;
    d->p++;
    return 0;
}

/* Skips whitespace and returns the next byte (not consumed), or 0 at the end. */
static char peek(fdec *d)
{
    skip_ws(d);
    return d->p < d->end ? *d->p : 0;
}

/* Skips whitespace and consumes the next byte (a separator); returns it, or
 * 0 at the end of the body. */
static char take(fdec *d)
{
    char c = peek(d);
    if (c) d->p++;
    return c;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0 if it
 * is not one jansson accepts. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) { n = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; v = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; v = c & 0x07; }
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (p[i] & 0x3F);
    }
    if ((n == 3 && v < 0x800) || (n == 4 && v < 0x10000) || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    return n;
}

/* Four hex digits at p (bounds checked by the caller); -1 if not hex. */
static int32_t hex4(const char *p)
{
    int32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (x < 0) return -1;
        v = v << 4 | x;
    }
    return v;
}

/* Unescapes the rest of a string, from p (inside it, after the opening
 * quote) to its closing quote, into out (cap bytes of room), checking it as
 * jansson does: valid UTF-8, no raw control byte, the JSON escapes only, \u
 * surrogates in pairs, no \u0000. Returns 0 with the length in *n and the
 * byte after the closing quote in *after; FB when the string is not one
 * jansson takes, the body ends first, or it needs more than cap bytes. */
static int unescape_str(const char *p, const char *end, char *out, size_t cap, size_t *n, const char **after)
{
    char *o = out, *oend = out + cap;
    for (;;) {
        if (p >= end) return FB;
        unsigned char c = (unsigned char)*p;
        if (str_plain[c]) {
            if (o == oend) return FB;
            *o++ = (char)c;
            p++;
            continue;
        }
        if (c == '"') break;
        if (c >= 0x80) {
            size_t k = utf8_seq((const unsigned char *)p, (const unsigned char *)end);
            if (!k || (size_t)(oend - o) < k) return FB;
            memcpy(o, p, k);
            o += k;
            p += k;
            continue;
        }
        if (c != '\\' || end - p < 2) return FB; /* a control byte, or a lone backslash */
        p++;
        int32_t v;
        switch (*p++) {
        case '"': v = '"'; break;
        case '\\': v = '\\'; break;
        case '/': v = '/'; break;
        case 'b': v = '\b'; break;
        case 'f': v = '\f'; break;
        case 'n': v = '\n'; break;
        case 'r': v = '\r'; break;
        case 't': v = '\t'; break;
        case 'u':
            if (end - p < 4) return FB;
            v = hex4(p);
            p += 4;
            if (v <= 0) return FB; /* not hex, or \u0000 */
            if (v >= 0xDC00 && v <= 0xDFFF) return FB; /* a lone low surrogate */
            if (v >= 0xD800 && v <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return FB;
                int32_t lo = hex4(p + 2);
                if (lo < 0xDC00 || lo > 0xDFFF) return FB;
                p += 6;
                v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            }
            break;
        default: return FB;
        }
        size_t k = v < 0x80 ? 1 : v < 0x800 ? 2 : v < 0x10000 ? 3 : 4;
        if ((size_t)(oend - o) < k) return FB;
        if (k == 1) {
            *o++ = (char)v;
        } else if (k == 2) {
            *o++ = (char)(0xC0 | v >> 6);
            *o++ = (char)(0x80 | (v & 0x3F));
        } else if (k == 3) {
            *o++ = (char)(0xE0 | v >> 12);
            *o++ = (char)(0x80 | (v >> 6 & 0x3F));
            *o++ = (char)(0x80 | (v & 0x3F));
        } else {
            *o++ = (char)(0xF0 | v >> 18);
            *o++ = (char)(0x80 | (v >> 12 & 0x3F));
            *o++ = (char)(0x80 | (v >> 6 & 0x3F));
            *o++ = (char)(0x80 | (v & 0x3F));
        }
    }
    *n = (size_t)(o - out);
    *after = p + 1;
    return 0;
}

/* Reads the rest of a string that holds an escape, unescaping it into
 * sbuf; start is the first byte after the quote, p the first backslash.
 * Returns 0 (d->s, d->slen set), FB or RK_ENOMEM. */
static int read_string_escaped(fdec *d, const char *start, const char *p)
{
    /* the unescaped string is never longer than what is left of the body */
    size_t room = (size_t)(d->end - start) + 1, pre = (size_t)(p - start), n;
    if (room > d->scap) {
        char *nb = realloc(d->sbuf, room);
        if (!nb) return RK_ENOMEM;
        d->sbuf = nb;
        d->scap = room;
    }
    memcpy(d->sbuf, start, pre);
    int rc = unescape_str(p, d->end, d->sbuf + pre, room - pre, &n, &d->p);
    if (rc) return rc;
    d->s = d->sbuf;
    d->slen = pre + n;
    return 0;
}

/* Reads a string (after whitespace): sets d->s and d->slen, pointing into
 * the body when it holds no escape (the common case), into sbuf otherwise,
 * valid until the next string is read. Returns 0, FB or RK_ENOMEM. */
static int read_string(fdec *d)
{
    if (peek(d) != '"') return FB;
    const char *start = d->p + 1, *p = start, *end = d->end;
    for (;;) {
        while (p < end && str_plain[(unsigned char)*p]) p++;
        if (p >= end) return FB;
        unsigned char c = (unsigned char)*p;
        if (c == '"') break;
        if (c == '\\') return read_string_escaped(d, start, p);
        if (c < 0x20) return FB;
        size_t k = utf8_seq((const unsigned char *)p, (const unsigned char *)end);
        if (!k) return FB;
        p += k;
    }
    d->s = start;
    d->slen = (size_t)(p - start);
    d->p = p + 1;
    return 0;
}

/* A number as jansson keeps it. */
typedef struct fnum {
    int is_int;
    int64_t i;                  /* when is_int */
    double v;                   /* the value either way: (double)i for integers */
} fnum;

static const double exact_pow10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Reads a number (after whitespace) by JSON's grammar. Integers must fit an
 * int64; others are converted exactly as strtod does: directly when the
 * digits fit 2^53 and the power of ten is exact (one correctly rounded
 * operation, Clinger's fast path), else by strtod itself on a copy of the
 * token. Returns 0 or FB (bad syntax, out of range, a token over 63 bytes
 * that needs strtod). */
static int read_number(fdec *d, fnum *out)
{
    skip_ws(d);
    const char *p = d->p, *end = d->end, *start = p;
    int neg = 0, is_int = 1, big = 0;
    uint64_t mant = 0;
    int sig = 0;                /* significant digits in mant */
    int64_t exp10 = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    if (p >= end) return FB;
    if (*p == '0') {
        p++;
        if (p < end && *p >= '0' && *p <= '9') return FB; /* a leading zero */
    } else if (*p >= '1' && *p <= '9') {
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            unsigned dg = (unsigned)(*p - '0');
            if (sig < 19) { mant = mant * 10 + dg; sig++; }
            else { big = 1; exp10++; } /* digits beyond 19: only strtod can round them */
        }
    } else {
        return FB;
    }
    if (p < end && *p == '.') {
        is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return FB;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            unsigned dg = (unsigned)(*p - '0');
            if (mant == 0 && dg == 0) { exp10--; continue; } /* leading zeros of a fraction */
            if (sig < 19) { mant = mant * 10 + dg; sig++; exp10--; }
            else big = 1;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= end || *p < '0' || *p > '9') return FB;
        int64_t e = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (e < 100000) e = e * 10 + (*p - '0');
            else big = 1;
        }
        exp10 += eneg ? -e : e;
    }
    d->p = p;
    out->is_int = is_int;
    if (is_int) {
        /* an int64 exactly, as strtoll reads it; beyond it jansson errs. No
         * leading zeros here, so mant holds every digit unless there were
         * more than 19, which no int64 has. */
        if (big) return FB;
        if (neg ? mant > (uint64_t)INT64_MAX + 1 : mant > (uint64_t)INT64_MAX) return FB;
        out->i = neg ? (mant == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mant) : (int64_t)mant;
        out->v = (double)out->i;
        return 0;
    }
    if (!big && mant <= (1ull << 53) && exp10 >= -22 && exp10 <= 22) {
        double x = (double)mant;
        x = exp10 < 0 ? x / exact_pow10[-exp10] : x * exact_pow10[exp10];
        out->v = neg ? -x : x;
        return 0;
    }
    char tok[64];
    size_t n = (size_t)(p - start);
    if (n >= sizeof tok) return FB;
    memcpy(tok, start, n);
    tok[n] = 0;
    out->v = strtod(tok, NULL);
    if (isinf(out->v)) return FB; /* jansson: "real number overflow" */
    return 0;
}

/* Consumes the literal word w (after whitespace); returns 0 or FB. */
static int read_word(fdec *d, const char *w, size_t n)
{
    skip_ws(d);
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, w, n)) return FB;
    d->p += n;
    return 0;
}

/* Reads true or false into *b; returns 0 or FB. */
static int read_bool(fdec *d, int *b)
{
    char c = peek(d);
    if (c == 't') { *b = 1; return read_word(d, "true", 4); }
    if (c == 'f') { *b = 0; return read_word(d, "false", 5); }
    return FB;
}

/* Reads and validates any value made of scalars and arrays (an ignored
 * feature's value in lenient mode), depth levels deep at most. Objects fall
 * back: their duplicate keys would need checking too. Returns 0, FB or
 * RK_ENOMEM. */
static int skip_value(fdec *d, int depth)
{
    fnum num;
    int rc;
    switch (peek(d)) {
    case '"': return read_string(d);
    case 't': return read_word(d, "true", 4);
    case 'f': return read_word(d, "false", 5);
    case 'n': return read_word(d, "null", 4);
    case '[':
        if (depth >= FAST_MAX_DEPTH) return FB;
        d->p++;
        if (peek(d) == ']') { d->p++; return 0; }
        for (;;) {
            if ((rc = skip_value(d, depth + 1))) return rc;
            char c = take(d);
            if (c == ']') return 0;
            if (c != ',') return FB;
        }
    case '-': case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': case '8': case '9':
        return read_number(d, &num);
    default: return FB;
    }
}

/* Reads the id value of a candidate or the request_id: a string or an
 * integer, as a new jansson value in *out. Returns 0, FB or RK_ENOMEM. */
static int read_id(fdec *d, json_t **out)
{
    int rc;
    char c = peek(d);
    if (c == '"') {
        if ((rc = read_string(d))) return rc;
        *out = json_stringn_nocheck(d->s, d->slen);
    } else {
        fnum num;
        if ((rc = read_number(d, &num))) return rc;
        if (!num.is_int) return FB;
        *out = json_integer((json_int_t)num.i);
    }
    return *out ? 0 : RK_ENOMEM;
}

/* Reads one id of sparse feature f (a string or an integer) and appends its
 * table row to the stage. Returns 0, FB or RK_ENOMEM. */
static int read_sparse_id(fdec *d, size_t f)
{
    int rc;
    if (peek(d) == '"') {
        if ((rc = read_string(d))) return rc;
        return idvec_push(&d->stage, dcn_map_str(d->m, f, d->s, d->slen));
    }
    fnum num;
    if ((rc = read_number(d, &num))) return rc;
    if (!num.is_int) return FB;
    return idvec_push(&d->stage, dcn_map_int(d->m, f, num.i));
}

/* Reads the value of sparse feature f into the stage: null (given, no
 * ids), one id, or an array of at most max_ids ids. Returns 0, FB or
 * RK_ENOMEM. */
static int read_sparse(fdec *d, size_t f)
{
    int rc;
    char c = peek(d);
    d->slot_at[f] = (uint32_t)d->stage.n;
    if (c == 'n') {
        if ((rc = read_word(d, "null", 4))) return rc;
    } else if (c == '[') {
        d->p++;
        uint32_t max = dcn_sparse(d->m, f)->max_ids, k = 0;
        if (peek(d) == ']') {
            d->p++;
        } else {
            for (;;) {
                if (++k > max) return FB;
                if ((rc = read_sparse_id(d, f))) return rc;
                c = take(d);
                if (c == ']') break;
                if (c != ',') return FB;
            }
        }
    } else if ((rc = read_sparse_id(d, f))) {
        return rc;
    }
    if (d->stage.n > UINT32_MAX) return FB;
    d->slot_n[f] = (uint32_t)(d->stage.n - d->slot_at[f]);
    return 0;
}

/* Finds feature (s, n): the global feature number (dense first, then
 * sparse), or -1. Tries first the feature that followed `prev` (the
 * previous key's feature, -1 at an object's start) last time: requests
 * list features in one order, so this usually hits without a search. */
static int32_t find_feature(fdec *d, int32_t prev, const char *s, size_t n)
{
    int32_t g = d->next_of[prev + 1];
    if (g >= 0 && d->name_len[g] == n && !memcmp(d->name[g], s, n)) return g;
    size_t idx;
    int kind = dcn_find_feature(d->m, s, n, &idx);
    if (kind < 0) return -1;
    g = (int32_t)(kind == DCN_FEATURE_DENSE ? idx : d->nd + idx);
    d->next_of[prev + 1] = g;
    return g;
}

/* Reads a features object (after whitespace) into the stage and, for dense
 * features, into dense[] with given[] (given may be NULL: the context).
 * Unknown names are skipped and noted in d->unknown (strict mode is
 * decided once the whole request is read). Returns 0, FB or RK_ENOMEM. */
static int read_features(fdec *d, float *dense, uint8_t *given)
{
    const char *unk[FAST_MAX_UNKNOWN];
    size_t unk_len[FAST_MAX_UNKNOWN], n_unk = 0;
    int32_t prev = -1;
    int rc;
    d->stage.n = 0;
    d->cur++;
    if (expect(d, '{')) return FB;
    if (peek(d) == '}') { d->p++; return 0; }
    for (;;) {
        if ((rc = read_string(d))) return rc;
        if (expect(d, ':')) return FB;
        int32_t g = find_feature(d, prev, d->s, d->slen);
        if (g < 0) {
            /* an unknown name: remember it (unescaped names would need a
             * copy) for the duplicate check, and skip its value */
            if (d->s == d->sbuf || n_unk == FAST_MAX_UNKNOWN) return FB;
            for (size_t i = 0; i < n_unk; i++)
                if (unk_len[i] == d->slen && !memcmp(unk[i], d->s, d->slen)) return FB;
            unk[n_unk] = d->s;
            unk_len[n_unk++] = d->slen;
            d->unknown = 1;
            if ((rc = skip_value(d, 0))) return rc;
        } else {
            if (d->stamp[g] == d->cur) return FB; /* a duplicate key */
            d->stamp[g] = d->cur;
            prev = g;
            if ((size_t)g < d->nd) {
                char c = peek(d);
                float *dst = &dense[g];
                if (c == 'n') {
                    if ((rc = read_word(d, "null", 4))) return rc;
                    *dst = NAN;
                } else {
                    fnum num;
                    if ((rc = read_number(d, &num))) return rc;
                    *dst = (float)num.v;
                }
                if (given) given[g] = 1;
            } else if ((rc = read_sparse(d, (size_t)g - d->nd))) {
                return rc;
            }
        }
        char c = take(d);
        if (c == '}') return 0;
        if (c != ',') return FB;
    }
}

/* Appends the staged sparse values of the object just read to ids, in
 * feature order: off[f] (ns entries) gets each feature's first id, and
 * given[f] (may be NULL) is set where the object gave the feature. Returns
 * 0, FB (over 2^32 ids) or RK_ENOMEM. */
static int lay_out(fdec *d, int given_now, idvec *ids, uint32_t *off, uint8_t *given, uint8_t *per_row)
{
    for (size_t f = 0; f < d->ns; f++) {
        off[f] = (uint32_t)ids->n;
        if (!given_now || d->stamp[d->nd + f] != d->cur) continue;
        if (given) given[f] = 1;
        if (per_row) per_row[f] = 1;
        if (!d->slot_n[f]) continue; /* null or []: nothing staged (stage.v may be NULL) */
        const int64_t *src = d->stage.v + d->slot_at[f];
        for (uint32_t k = 0; k < d->slot_n[f]; k++)
            if (idvec_push(ids, src[k]) < 0) return RK_ENOMEM;
        if (ids->n > UINT32_MAX) return FB;
    }
    return 0;
}

/* Grows the per-candidate arrays of rq to hold cap candidates; returns 0
 * or RK_ENOMEM (the arrays stay valid). */
static int grow_cands(rk_request *rq, size_t cap)
{
    size_t nd = rq->n_dense, ns = rq->n_sparse;
    json_t **ci = realloc(rq->cand_ids, cap * sizeof *ci);
    if (!ci) return RK_ENOMEM;
    rq->cand_ids = ci;
    float *dn = realloc(rq->dense, (cap * nd + 1) * sizeof *dn);
    if (!dn) return RK_ENOMEM;
    rq->dense = dn;
    uint8_t *dg = realloc(rq->dense_given, cap * nd + 1);
    if (!dg) return RK_ENOMEM;
    rq->dense_given = dg;
    uint8_t *sg = realloc(rq->sparse_given, cap * ns + 1);
    if (!sg) return RK_ENOMEM;
    rq->sparse_given = sg;
    uint32_t *so = realloc(rq->sp_off, (cap * ns + 1) * sizeof *so);
    if (!so) return RK_ENOMEM;
    rq->sp_off = so;
    return 0;
}

/* Reads the candidates array (after whitespace) into rq, at most max
 * candidates. Returns 0, FB or RK_ENOMEM. */
static int read_candidates(fdec *d, rk_request *rq, idvec *ids, size_t max)
{
    size_t nd = d->nd, ns = d->ns, cap = 0;
    int rc;
    if (expect(d, '[')) return FB;
    if (peek(d) == ']') { d->p++; return 0; }
    for (;;) {
        size_t c = rq->n_cands;
        if (c >= max) return FB; /* the DOM decoder says how many */
        if (c == cap) {
            cap = cap ? cap * 2 : 64;
            if (cap > max) cap = max;
            if ((rc = grow_cands(rq, cap))) return rc;
        }
        rq->cand_ids[c] = NULL;
        rq->n_cands = c + 1; /* from here rk_request_free releases its id */
        memset(rq->dense + c * nd, 0, nd * sizeof(float));
        memset(rq->dense_given + c * nd, 0, nd);
        memset(rq->sparse_given + c * ns, 0, ns);
        int seen_features = 0;
        if (expect(d, '{')) return FB;
        if (peek(d) == '}') return FB; /* no id */
        for (;;) {
            if ((rc = read_string(d))) return rc;
            if (d->slen == 2 && !memcmp(d->s, "id", 2)) {
                if (rq->cand_ids[c] || expect(d, ':')) return FB;
                if ((rc = read_id(d, &rq->cand_ids[c]))) return rc;
            } else if (d->slen == 8 && !memcmp(d->s, "features", 8)) {
                if (seen_features++ || expect(d, ':')) return FB;
                if (peek(d) == 'n') {
                    if ((rc = read_word(d, "null", 4))) return rc;
                } else {
                    if ((rc = read_features(d, rq->dense + c * nd, rq->dense_given + c * nd))) return rc;
                    for (size_t j = 0; j < nd; j++) rq->dense_per_row[j] |= rq->dense_given[c * nd + j];
                    seen_features = 2;
                }
            } else {
                return FB;
            }
            char ch = take(d);
            if (ch == '}') break;
            if (ch != ',') return FB;
        }
        if (!rq->cand_ids[c]) return FB;
        if ((rc = lay_out(d, seen_features == 2, ids, rq->sp_off + c * ns, rq->sparse_given + c * ns,
                          rq->sparse_per_row)))
            return rc;
        char ch = take(d);
        if (ch == ']') return 0;
        if (ch != ',') return FB;
    }
}

/* Reads an optional count (null or an integer >= min); returns 0 or FB. */
static int read_count(fdec *d, int64_t min, int64_t *out)
{
    if (peek(d) == 'n') return read_word(d, "null", 4);
    fnum num;
    if (read_number(d, &num) || !num.is_int || num.i < min) return FB;
    *out = num.i;
    return 0;
}

/* Readers of the routing members (after whitespace), each null or a value
 * that route_from_dom accepts, into rq; return 0, FB or RK_ENOMEM. */
static int read_model(fdec *d, rk_request *rq)
{
    int rc;
    if (peek(d) == 'n') return read_word(d, "null", 4);
    if ((rc = read_string(d))) return rc;
    if (d->slen < 1 || d->slen > RK_MODEL_MAX) return FB;
    memcpy(rq->model, d->s, d->slen);
    rq->model[d->slen] = 0;
    rq->has_model = 1;
    return 0;
}

static int read_version(fdec *d, rk_request *rq)
{
    int rc;
    char c = peek(d);
    if (c == 'n') return read_word(d, "null", 4);
    if (c == '"') {
        if ((rc = read_string(d))) return rc;
        return version_digits(d->s, d->slen, &rq->version) ? 0 : FB;
    }
    fnum num;
    if ((rc = read_number(d, &num))) return rc;
    if (!num.is_int || num.i < 1 || (uint64_t)num.i > RK_VERSION_MAX) return FB;
    rq->version = (uint64_t)num.i;
    return 0;
}

static int read_routing_key(fdec *d, rk_request *rq)
{
    int rc;
    char c = peek(d);
    if (c == 'n') return read_word(d, "null", 4);
    if (c == '"') {
        if ((rc = read_string(d))) return rc;
        if (d->slen > RK_ROUTING_KEY_MAX) return FB;
        memcpy(rq->routing_key, d->s, d->slen);
        rq->routing_key[d->slen] = 0;
    } else {
        fnum num;
        if ((rc = read_number(d, &num))) return rc;
        if (!num.is_int) return FB;
        routing_key_int(rq->routing_key, num.i);
    }
    rq->has_routing_key = 1;
    return 0;
}

int rk_decode_fast(const dcn_model *m, const char *body, size_t len, const rk_limits *lim,
                   rk_request **out, char *err, size_t errlen)
{
    const dcn_info *info = dcn_model_info(m);
    size_t nd = info->n_dense, ns = info->n_sparse, nf = nd + ns;
    size_t max_cands = lim && lim->max_candidates ? lim->max_candidates : 10000;
    int strict = lim ? lim->strict : 1, rc = RK_ENOMEM;
    fdec d = {.p = body, .end = body + len, .m = m, .nd = nd, .ns = ns, .nf = nf};
    idvec ids = {0}, ctx_ids = {0};
    rk_request *rq = NULL;
    unsigned seen = 0;          /* top-level keys read, by bit */
    *out = NULL;

    /* per-feature tables, one allocation */
    size_t nf1 = nf + 1;
    void *tab = calloc(1, nf1 * (sizeof(char *) + sizeof(size_t) + sizeof(int32_t) + sizeof(uint32_t)) +
                              (ns + 1) * 2 * sizeof(uint32_t));
    if (!tab) goto oom;
    d.name = tab;
    d.name_len = (size_t *)(d.name + nf1);
    d.next_of = (int32_t *)(d.name_len + nf1);
    d.stamp = (uint32_t *)(d.next_of + nf1);
    d.slot_at = d.stamp + nf1;
    d.slot_n = d.slot_at + ns + 1;
    for (size_t g = 0; g < nf; g++) {
        d.name[g] = g < nd ? dcn_dense(m, g)->name : dcn_sparse(m, g - nd)->name;
        d.name_len[g] = strlen(d.name[g]);
    }
    for (size_t g = 0; g < nf1; g++) d.next_of[g] = -1;

    if (!(rq = calloc(1, sizeof *rq))) goto oom;
    rq->n_dense = nd;
    rq->n_sparse = ns;
    rq->top_k = -1;
    rq->ctx_dense = malloc((nd ? nd : 1) * sizeof(float));
    rq->ctx_off = calloc(ns + 1, sizeof(uint32_t));
    rq->dense_per_row = calloc(nd ? nd : 1, 1);
    rq->sparse_per_row = calloc(ns ? ns : 1, 1);
    if (!rq->ctx_dense || !rq->ctx_off || !rq->dense_per_row || !rq->sparse_per_row) goto oom;
    for (size_t j = 0; j < nd; j++) rq->ctx_dense[j] = NAN;

    static const struct { const char *name; size_t len; } keys[] = {
        {"request_id", 10}, {"context", 7}, {"candidates", 10}, {"top_k", 5},
        {"deadline_ms", 11}, {"return", 6}, {"strict", 6}, {"model", 5},
        {"version", 7}, {"routing_key", 11},
    };
    if ((rc = expect(&d, '{'))) goto fail;
    if (peek(&d) == '}') { rc = FB; goto fail; } /* no candidates */
    for (;;) {
        if ((rc = read_string(&d))) goto fail;
        unsigned k = 0;
        while (k < sizeof keys / sizeof keys[0] && (keys[k].len != d.slen || memcmp(keys[k].name, d.s, d.slen))) k++;
        if (k == sizeof keys / sizeof keys[0] || (seen & 1u << k) || (rc = expect(&d, ':'))) { rc = FB; goto fail; }
        seen |= 1u << k;
        char c = peek(&d);
        switch (k) {
        case 0: /* request_id */
            if (c == 'n') rc = read_word(&d, "null", 4);
            else rc = read_id(&d, &rq->request_id);
            break;
        case 1: /* context */
            if (c == 'n') {
                rc = read_word(&d, "null", 4);
            } else if (!(rc = read_features(&d, rq->ctx_dense, NULL))) {
                rc = lay_out(&d, 1, &ctx_ids, rq->ctx_off, NULL, NULL);
                rq->ctx_off[ns] = (uint32_t)ctx_ids.n;
            }
            break;
        case 2: rc = read_candidates(&d, rq, &ids, max_cands); break;
        case 3: rc = read_count(&d, 0, &rq->top_k); break;
        case 4: rc = read_count(&d, 1, &rq->deadline_ms); break;
        case 5: /* return */
            if (c == 'n') {
                rc = read_word(&d, "null", 4);
            } else if (!(rc = expect(&d, '{')) && peek(&d) != '}') {
                if (!(rc = read_string(&d)) && (d.slen != 6 || memcmp(d.s, "logits", 6))) rc = FB;
                if (!rc && !(rc = expect(&d, ':'))) rc = read_bool(&d, &rq->want_logits);
                if (!rc) rc = expect(&d, '}'); /* a second key is unknown or a duplicate */
            } else if (!rc) {
                rc = expect(&d, '}');
            }
            break;
        case 6: rc = read_bool(&d, &strict); break;
        case 7: rc = read_model(&d, rq); break;
        case 8: rc = read_version(&d, rq); break;
        case 9: rc = read_routing_key(&d, rq); break;
        }
        if (rc) goto fail;
        c = take(&d);
        if (c == '}') break;
        if (c != ',') { rc = FB; goto fail; }
    }
    skip_ws(&d);
    if (d.p != d.end || !(seen & 1u << 2) || (d.unknown && strict)) { rc = FB; goto fail; }

    /* the request is valid: finish the arrays as the DOM decoder leaves them */
    rc = RK_ENOMEM;
    if (!rq->n_cands && grow_cands(rq, 1) < 0) goto oom;
    rq->sp_off[rq->n_cands * ns] = (uint32_t)ids.n;
    rq->sp_ids = ids.v ? ids.v : malloc(sizeof(int64_t));
    ids.v = NULL;
    rq->ctx_ids = ctx_ids.v ? ctx_ids.v : malloc(sizeof(int64_t));
    ctx_ids.v = NULL;
    if (!rq->sp_ids || !rq->ctx_ids) goto oom;
    free(tab);
    free(d.sbuf);
    free(d.stage.v);
    *out = rq;
    return 0;

oom:
    rc = fail(err, errlen, RK_ENOMEM, "out of memory");
fail:
    if (rc == RK_ENOMEM) fail(err, errlen, RK_ENOMEM, "out of memory");
    free(tab);
    free(d.sbuf);
    free(d.stage.v);
    free(ids.v);
    free(ctx_ids.v);
    rk_request_free(rq);
    return rc;
}

int rk_decode(const dcn_model *m, const char *body, size_t len, const rk_limits *lim,
              rk_request **out, char *err, size_t errlen)
{
    int rc = rk_decode_fast(m, body, len, lim, out, err, errlen);
    if (rc != FB) return rc;
    return rk_decode_dom(m, body, len, lim, out, err, errlen);
}

/* ------------------------------------------------------------ route pre-scan
 *
 * rk_peek_route reads the top-level object's keys and skips every value but
 * the three routing members, without checking what it skips: it must be
 * right on every body jansson takes, and only stay inside the body on the
 * others. Whatever it cannot judge on its own (an escaped key, a routing
 * member twice, one that is not a valid value, a top level not well formed)
 * goes to jansson, through route_from_dom, so that errors are worded once.
 */

/* Byte classes of the scan: what ends a number or a literal (PK_DELIM), and
 * what matters inside a nested value (PK_QUOTE, PK_OPEN, PK_CLOSE). */
enum { PK_DELIM = 1, PK_QUOTE = 2, PK_OPEN = 4, PK_CLOSE = 8 };
static const uint8_t pk_class[256] = {
    [' '] = PK_DELIM, ['\t'] = PK_DELIM, ['\n'] = PK_DELIM, ['\r'] = PK_DELIM, [','] = PK_DELIM,
    ['}'] = PK_DELIM | PK_CLOSE, [']'] = PK_DELIM | PK_CLOSE, ['"'] = PK_QUOTE,
    ['{'] = PK_OPEN, ['['] = PK_OPEN,
};

static const char *pk_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* Skips the rest of a string, from p (after the opening quote). Returns the
 * byte after the closing quote, or NULL when the body ends first. The byte
 * after a backslash never ends the string; nothing else is checked. Each
 * byte is looked at by memchr about twice at most: the next quote is found
 * once and kept while the backslashes before it are stepped over. */
static const char *pk_skip_string(const char *p, const char *end)
{
    const char *q = NULL;
    for (;;) {
        if (!q || q < p) {
            if (p >= end || !(q = memchr(p, '"', (size_t)(end - p)))) return NULL;
        }
        const char *b = memchr(p, '\\', (size_t)(q - p));
        if (!b) return q + 1;
        p = b + 2; /* b < q: still inside the body */
    }
}

/* Skips a value starting at p (after whitespace): a string, an array or
 * object (by counting brackets, strings skipped), or a number or literal (up
 * to the next delimiter). Returns the byte after it, or NULL when the body
 * ends first or nothing is there. */
static const char *pk_skip_value(const char *p, const char *end)
{
    if (p >= end) return NULL;
    uint8_t k = pk_class[(unsigned char)*p];
    if (k & PK_QUOTE) return pk_skip_string(p + 1, end);
    if (k & PK_OPEN) {
        size_t depth = 1;
        for (p++; p < end;) {
            k = pk_class[(unsigned char)*p++];
            if (k & PK_QUOTE) {
                if (!(p = pk_skip_string(p, end))) return NULL;
            } else if (k & PK_OPEN) {
                depth++;
            } else if ((k & PK_CLOSE) && !--depth) {
                return p;
            }
        }
        return NULL;
    }
    const char *s = p;
    while (p < end && !(pk_class[(unsigned char)*p] & PK_DELIM)) p++;
    return p > s ? p : NULL;
}

/* Reads a JSON integer at p (no fraction, no exponent: jansson keeps those
 * as reals) within int64. Returns the byte after it with the value in *out,
 * or NULL for anything else. */
static const char *pk_int(const char *p, const char *end, int64_t *out)
{
    int neg = 0;
    uint64_t v = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    if (p >= end || *p < '0' || *p > '9') return NULL;
    if (*p == '0') {
        p++; /* a zero stands alone */
    } else {
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            unsigned dg = (unsigned)(*p - '0');
            if (v > (UINT64_MAX - dg) / 10) return NULL;
            v = v * 10 + dg;
            if (v > (uint64_t)INT64_MAX + 1) return NULL;
        }
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9'))) return NULL;
    if (!neg && v > (uint64_t)INT64_MAX) return NULL;
    *out = !neg ? (int64_t)v : v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    return p;
}

/* Reads the value of routing member k (0 model, 1 version, 2 routing_key)
 * at p (after whitespace) into r: null, or a value route_from_dom accepts,
 * read as it reads it. Returns the byte after it, or NULL for anything else
 * (jansson then judges). */
static const char *pk_member(int k, const char *p, const char *end, rk_route *r)
{
    const char *after;
    size_t n;
    int64_t i;
    if (p >= end) return NULL;
    if (*p == 'n') return end - p >= 4 && !memcmp(p, "null", 4) ? p + 4 : NULL;
    if (k == 0) {
        if (*p != '"' || unescape_str(p + 1, end, r->model, RK_MODEL_MAX, &n, &after) || !n) return NULL;
        r->model[n] = 0;
        r->has_model = 1;
        return after;
    }
    if (k == 1) {
        if (*p != '"') {
            if (!(after = pk_int(p, end, &i)) || i < 1 || (uint64_t)i > RK_VERSION_MAX) return NULL;
            r->version = (uint64_t)i;
            return after;
        }
        /* read in place unless escaped: digits of any length (leading
         * zeros), and any other byte makes it invalid */
        const char *s = p + 1, *q = memchr(s, '"', (size_t)(end - s));
        char buf[64];
        if (q && !memchr(s, '\\', (size_t)(q - s))) {
            n = (size_t)(q - s);
            after = q + 1;
        } else if (unescape_str(s, end, buf, sizeof buf, &n, &after)) {
            return NULL;
        } else {
            s = buf;
        }
        return version_digits(s, n, &r->version) ? after : NULL;
    }
    if (*p == '"') {
        if (unescape_str(p + 1, end, r->routing_key, RK_ROUTING_KEY_MAX, &n, &after)) return NULL;
        r->routing_key[n] = 0;
    } else {
        if (!(after = pk_int(p, end, &i))) return NULL;
        routing_key_int(r->routing_key, i);
    }
    r->has_routing_key = 1;
    return after;
}

/* rk_peek_route, or with head (not NULL) rk_peek_route_head: stops at the
 * top-level "candidates" key, setting *head. */
static int peek_route(const char *body, size_t len, rk_route *out, int *head, char *err, size_t errlen)
{
    static const struct { const char *name; size_t len; } keys[] = {
        {"model", 5}, {"version", 7}, {"routing_key", 11},
    };
    const char *p = body, *end = body + len;
    unsigned seen = 0;
    memset(out, 0, sizeof *out);
    if (head) *head = 0;
    if (err && errlen) err[0] = 0;

    p = pk_ws(p, end);
    if (p >= end || *p != '{') return RK_ROUTE_UNREADABLE; /* whatever it is, not an object */
    p = pk_ws(p + 1, end);
    if (p < end && *p == '}') return 0;
    for (;;) {
        if (p >= end || *p != '"') goto dom;
        const char *key = p + 1, *q = memchr(key, '"', (size_t)(end - key));
        if (!q || memchr(key, '\\', (size_t)(q - key))) goto dom; /* cut short, or an escaped key */
        size_t klen = (size_t)(q - key);
        p = pk_ws(q + 1, end);
        if (p >= end || *p != ':') goto dom;
        p = pk_ws(p + 1, end);
        if (head && klen == 10 && !memcmp(key, "candidates", 10)) {
            *head = 1; /* the rest is the caller's to check (rk.h) */
            return 0;
        }
        int k = 0;
        while (k < 3 && (keys[k].len != klen || memcmp(keys[k].name, key, klen))) k++;
        if (k < 3) {
            if (seen & 1u << k) goto dom; /* a duplicate: jansson refuses the body */
            seen |= 1u << k;
            p = pk_member(k, p, end, out);
        } else {
            p = pk_skip_value(p, end);
        }
        if (!p) goto dom;
        p = pk_ws(p, end);
        if (p >= end) goto dom;
        if (*p == '}') return 0;
        if (*p != ',') goto dom;
        p = pk_ws(p + 1, end);
    }

dom:;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = RK_ROUTE_UNREADABLE;
    if (root && json_is_object(root)) rc = route_from_dom(root, out, err, errlen);
    else memset(out, 0, sizeof *out);
    json_decref(root);
    if (head) *head = 0; /* jansson read the whole body */
    return rc;
}

int rk_peek_route(const char *body, size_t len, rk_route *out, char *err, size_t errlen)
{
    return peek_route(body, len, out, NULL, err, errlen);
}

int rk_peek_route_head(const char *body, size_t len, rk_route *out, int *head, char *err, size_t errlen)
{
    return peek_route(body, len, out, head, err, errlen);
}
