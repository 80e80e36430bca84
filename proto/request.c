/* request.c — decodes a POST /rank body into an rk_request (see rk.h).
 *
 * DESIGN: the JSON tree lives only during rk_decode, except the request_id
 * and candidate ids, which the request keeps referenced for the answer.
 * Feature names are resolved with dcn_find_feature and ids mapped with
 * dcn_map_str / dcn_map_int here, once, on the event-loop thread; the worker
 * threads then only copy numbers. Sparse ids of the candidates are one CSR
 * array over (candidate, feature) pairs, row-major, grown as decoded.
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

/* Writes a formatted message into err (if any) and returns code. */
__attribute__((format(printf, 4, 5)))
static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
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

int rk_decode(const dcn_model *m, const char *body, size_t len, const rk_limits *lim,
              rk_request **out, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = NULL, *v;
    rk_request *rq = NULL;
    idvec ids = {0};
    const char *key;
    char where[160];
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
    json_object_foreach(root, key, v) {
        if (strcmp(key, "request_id") && strcmp(key, "context") && strcmp(key, "candidates") &&
            strcmp(key, "top_k") && strcmp(key, "deadline_ms") && strcmp(key, "return") &&
            strcmp(key, "strict")) {
            rc = fail(err, errlen, RK_ESCHEMA, "unknown field \"%.64s\"", key);
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
                rc = fail(err, errlen, RK_ESCHEMA, "return.%.64s: unknown option or not a boolean", key);
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
    rq->dense = malloc(ncd * sizeof(float));
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
                    rc = fail(err, errlen, RK_ESCHEMA, "candidates[%zu]: unknown field \"%.64s\"", c, key);
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
                if (pass == 0) snprintf(where, sizeof where, "context.%.64s", key);
                else snprintf(where, sizeof where, "candidates[%zu].features.%.64s", c, key);
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
                              "%s: the model has no feature \"%.64s\" (send \"strict\": false to ignore unknown names)",
                              where, key);
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
            if (pass == 0) snprintf(where, sizeof where, "context.%.64s", dcn_sparse(m, f)->name);
            else snprintf(where, sizeof where, "candidates[%zu].features.%.64s", c, dcn_sparse(m, f)->name);
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
