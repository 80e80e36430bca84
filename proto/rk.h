/* rk.h — the ranking API's wire format: JSON requests decoded into plain C
 * structs, rankings and errors encoded back to JSON (spec: proto/API.md).
 *
 * Typical use (one thread per request object):
 *
 *     rk_request *rq;
 *     rk_route rt;
 *     char err[256];
 *     int rc = rk_peek_route(body, len, &rt, err, sizeof err); (several models served)
 *     if (rc < 0) { send the error as below }
 *     model = rc == 0 ? the one rt names (model, version, routing_key) : the default;
 *     rc = rk_decode(model, body, len, &opts, &rq, err, sizeof err);
 *     if (rc < 0) { send rk_error_json(rc, err) with rk_http_status... }
 *     ... score rq->n_cands rows into scores[] ...
 *     size_t *order = ...; size_t n = rk_rank(scores, rq->n_cands, rq->top_k, order);
 *     rk_buf out = {0}; rk_encode(&out, rq, model name/version, scores, logits, order, n, ...);
 *     rk_request_free(rq);
 *
 * DESIGN
 * - Knows jansson and the engine's public header (to resolve feature names
 *   and map ids, so the server hands the engine table rows), nothing of HTTP,
 *   libuv or threads. Every function is reentrant; a request object belongs
 *   to whoever decoded it and may be read by several threads once built.
 * - One error vocabulary (RK_ERRNO_MAP) for the whole daemon: codes are
 *   negative, each has a stable machine name for the JSON body; the server
 *   maps codes to HTTP statuses in one place (srv_http_status).
 * - Request bodies are hostile: sizes are checked against rk_limits before
 *   anything is allocated from them, every feature value is type-checked,
 *   and a decode error names the offending field.
 */
#ifndef RK_H
#define RK_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "model/dcn.h"

/* code, value, machine name (JSON "code"), default message */
#define RK_ERRNO_MAP(XX)                                                       \
    XX(EJSON, -1, "invalid_json", "request body is not valid JSON")           \
    XX(ESCHEMA, -2, "invalid_request", "request does not match the schema")   \
    XX(EFEATURE, -3, "unknown_feature", "unknown feature name")               \
    XX(EVALUE, -4, "invalid_feature_value", "feature value of the wrong type") \
    XX(ETOOMANY, -5, "too_many_candidates", "too many candidates")            \
    XX(ETOOBIG, -6, "body_too_large", "request body over the size limit")     \
    XX(ELENGTH, -7, "length_required", "Content-Length required")             \
    XX(EMEDIA, -8, "unsupported_media_type", "Content-Type must be application/json") \
    XX(ENOTFOUND, -9, "not_found", "no such endpoint")                        \
    XX(EMETHOD, -10, "method_not_allowed", "method not allowed")              \
    XX(EBUSY, -11, "queue_full", "server queue is full, retry later")         \
    XX(EDEADLINE, -12, "deadline_exceeded", "deadline passed before scoring finished") \
    XX(EUNAVAIL, -13, "unavailable", "server is not ready")                   \
    XX(EFORBIDDEN, -14, "forbidden", "not allowed from this client")          \
    XX(ECONFLICT, -15, "conflict", "operation already in progress")           \
    XX(ERELOAD, -16, "reload_failed", "model reload failed")                  \
    XX(EINTERNAL, -17, "internal", "internal error")                          \
    XX(ENOMEM, -18, "out_of_memory", "out of memory")

typedef enum {
    RK_OK = 0,
#define XX(name, code, id, msg) RK_##name = code,
    RK_ERRNO_MAP(XX)
#undef XX
} rk_err;

/* Static machine name ("invalid_json"...) and default message of a code;
 * "internal" / "unknown error" for codes outside the list. */
const char *rk_err_name(int err);
const char *rk_strerror(int err);

/* Limits applied while decoding, before allocation. */
typedef struct rk_limits {
    size_t max_candidates;      /* per request */
    int strict;                 /* default of the request's "strict" option */
} rk_limits;

/* Sizes of the routing fields, which pick the model that scores a request
 * (proto/API.md): "model" 1 to RK_MODEL_MAX bytes, "version" 1 to
 * RK_VERSION_MAX, "routing_key" at most RK_ROUTING_KEY_MAX bytes (all after
 * unescaping; strings are valid UTF-8 without NUL). */
#define RK_MODEL_MAX 64
#define RK_VERSION_MAX (UINT64_C(1) << 53)
#define RK_ROUTING_KEY_MAX 256

/* A decoded ranking request. Feature values are already mapped through the
 * model: dense values as floats (double rounded to float), sparse ids as
 * table rows (-1: zero vector).
 * "Given" means the JSON named the feature (null included); the candidate's
 * value wins over the context's where given. */
typedef struct rk_request {
    json_t *request_id;         /* any JSON value, or NULL; referenced */
    /* Routing, as rk_peek_route reads it; null in the body: not given. */
    int has_model;
    char model[RK_MODEL_MAX + 1];               /* NUL-terminated, when has_model */
    uint64_t version;                           /* 1 to RK_VERSION_MAX; 0: not given */
    int has_routing_key;
    char routing_key[RK_ROUTING_KEY_MAX + 1];   /* NUL-terminated; an integer as its decimal text */
    size_t n_cands;
    json_t **cand_ids;          /* (n_cands) string or integer; referenced */
    int64_t top_k;              /* -1: all */
    int64_t deadline_ms;        /* 0: none */
    int want_logits;
    size_t n_dense, n_sparse;   /* of the model */

    float *ctx_dense;           /* (n_dense) NaN: missing */
    uint32_t *ctx_off;          /* (n_sparse + 1) into ctx_ids */
    int64_t *ctx_ids;           /* (ctx_off[n_sparse]) */

    float *dense;               /* (n_cands, n_dense) meaningful where given */
    uint8_t *dense_given;       /* (n_cands, n_dense) */
    uint32_t *sp_off;           /* (n_cands * n_sparse + 1) into sp_ids, row-major */
    int64_t *sp_ids;            /* (sp_off[n_cands * n_sparse]) */
    uint8_t *sparse_given;      /* (n_cands, n_sparse) */

    /* Per feature: some candidate gives it, so it cannot be shared. */
    uint8_t *dense_per_row;     /* (n_dense) */
    uint8_t *sparse_per_row;    /* (n_sparse) */
} rk_request;

/* Decodes a request body against model m. On success stores a new request
 * in *out (free with rk_request_free) and returns 0; on failure returns a
 * negative rk_err, writes a message naming the field into err and stores
 * NULL. The model is only read. body need not be NUL-terminated.
 * Of the errors a JSON object can have, those of the routing fields come
 * first (model, then version, then routing_key), before unknown fields and
 * everything else: so the error is the one rk_peek_route reports, whichever
 * model the server decodes against.
 *
 * Two decoders stand behind it. rk_decode_fast reads the body once, without
 * a DOM, resolving feature names and mapping ids as it goes; it accepts only
 * requests that are valid JSON and valid requests, and returns
 * RK_DECODE_FALLBACK (positive, nothing stored) for anything else: any
 * syntax, type or schema error, a duplicate key, a number out of range, an
 * escape or UTF-8 sequence JSON or jansson refuses, nesting deeper than 32
 * inside an ignored value. rk_decode then runs rk_decode_dom (jansson, with
 * JSON_REJECT_DUPLICATES), which gives every error its code and message.
 * So both always agree: a body either decodes to the same request, or fails
 * with the DOM decoder's error. Both are public for tests and benchmarks. */
#define RK_DECODE_FALLBACK 1
int rk_decode(const dcn_model *m, const char *body, size_t len, const rk_limits *lim,
              rk_request **out, char *err, size_t errlen);
int rk_decode_fast(const dcn_model *m, const char *body, size_t len, const rk_limits *lim,
                   rk_request **out, char *err, size_t errlen);
int rk_decode_dom(const dcn_model *m, const char *body, size_t len, const rk_limits *lim,
                  rk_request **out, char *err, size_t errlen);
void rk_request_free(rk_request *rq); /* NULL is fine */

/* The routing fields of a body, read before it is decoded. */
typedef struct rk_route {
    int has_model;
    char model[RK_MODEL_MAX + 1];               /* NUL-terminated, when has_model */
    uint64_t version;                           /* 1 to RK_VERSION_MAX; 0: not given */
    int has_routing_key;
    char routing_key[RK_ROUTING_KEY_MAX + 1];   /* NUL-terminated; an integer as its decimal text */
} rk_route;

/* Reads only the top-level "model", "version" and "routing_key" members of
 * body (len bytes, need not be NUL-terminated), so that the server can pick
 * the model to decode against. *out is zeroed first, err emptied (errlen
 * > 0), and both stay so unless said below. Returns:
 * - 0 with the members found in *out (absent or null: not set);
 * - RK_ESCHEMA with a message in err, when one of them has the wrong type or
 *   size: exactly when rk_decode, against any model, fails with that code
 *   and that message (the body is a JSON object jansson reads, and the
 *   routing fields' errors come first), allocation failures aside;
 * - RK_ROUTE_UNREADABLE (positive) when the body is not a JSON object it
 *   can read: the caller decodes against its default model and rk_decode
 *   reports the error.
 * Whenever rk_decode accepts a body, this returns 0 with the very model,
 * version and routing key of the decoded request. For a body rk_decode
 * refuses for another reason (not JSON, a duplicate key, a bad feature...),
 * it returns 0 (with whatever members it read: strings of the sizes above,
 * valid UTF-8 without NUL) or RK_ROUTE_UNREADABLE; never RK_ESCHEMA.
 *
 * Cost: one forward pass over the top level, converting nothing but the
 * three members: strings are skipped at memchr speed (looking for '"' and
 * '\\'), nested arrays and objects by counting brackets (one table lookup
 * a byte, their strings skipped as above), numbers and literals up to the
 * next delimiter. Nothing is validated beyond what finding the members
 * needs, nothing is allocated, and a body whose first byte (after spaces)
 * is not '{' is UNREADABLE at once. It falls back to jansson (json_loadb
 * with JSON_REJECT_DUPLICATES on the whole body: a full parse that builds a
 * tree, as rk_decode_dom does) only when a top-level key holds a backslash
 * escape; when a routing member appears twice, is of the wrong type or size,
 * or is cut short; when the top level is not well formed; and for a version
 * string over 64 bytes that holds an escape (leading zeros). So of the bodies
 * rk_decode accepts, only those escaping a top-level key (or such a
 * version) pay for the fallback; of the others, those it hands to jansson
 * pay for one more parse, as failing bodies do in rk_decode. */
#define RK_ROUTE_UNREADABLE 2
int rk_peek_route(const char *body, size_t len, rk_route *out, char *err, size_t errlen);
/* rk_peek_route, but stopping at the top-level "candidates" member (the
 * bulk of a body; clients usually send the routing fields before it): then
 * *head is 1, *out holds the routing members read before it, and the
 * caller must compare them with the decoded request's (a member after
 * "candidates" shows there only) and route again if they differ. Else
 * (*head 0) exactly rk_peek_route. */
int rk_peek_route_head(const char *body, size_t len, rk_route *out, int *head, char *err, size_t errlen);

/* Orders n scores by descending score, ties by input order (stable), and
 * writes the first min(n, top_k) indices into order (n entries of room);
 * top_k < 0 means all. Returns the number written. NaN sorts last. */
size_t rk_rank(const float *scores, size_t n, int64_t top_k, uint32_t *order);

/* A growable output buffer; data is NUL-terminated, owned by the caller
 * (free(b.data)). On allocation failure oom is set and appends stop. */
typedef struct rk_buf {
    char *data;
    size_t len, cap;
    int oom;
} rk_buf;
void rk_buf_put(rk_buf *b, const char *s, size_t n);
void rk_buf_puts(rk_buf *b, const char *s);
void rk_buf_printf(rk_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rk_buf_json_str(rk_buf *b, const char *s, size_t n); /* quoted, escaped */

/* Length in bytes (1 to 4) of the UTF-8 character at s, of which n bytes
 * are readable; 0 if s does not start a whole, valid one (RFC 3629: no
 * continuation byte first, no overlong form, no surrogate, nothing past
 * U+10FFFF, no sequence cut short by n). */
size_t rk_utf8_char(const char *s, size_t n);

/* Per-request timings reported in the answer, microseconds. */
typedef struct rk_latency {
    uint64_t total_us, parse_us, queue_us, inference_us, encode_us;
} rk_latency;

/* Encodes the head of a 200 answer (request_id, model, ranked) into b,
 * without closing the object: the caller measures the encode time, then
 * calls rk_encode_tail with the latencies. logits may be NULL. */
void rk_encode_head(rk_buf *b, const rk_request *rq, const char *model_name,
                    const char *model_version, const float *scores, const float *logits,
                    const uint32_t *order, size_t n_order);
void rk_encode_tail(rk_buf *b, const rk_latency *lat);

/* Encodes {"error": {"code": ..., "message": ...}} (message defaults to
 * rk_strerror(err) when NULL or empty). The body is valid UTF-8 JSON
 * whatever the message holds: a byte that starts no whole, valid UTF-8
 * character is written as \ufffd (U+FFFD, the replacement character). */
void rk_encode_error(rk_buf *b, int err, const char *message);

#endif
