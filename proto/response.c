/* response.c — ranking (stable sort, top_k) and JSON encoding of answers and
 * errors (see rk.h).
 *
 * DESIGN: answers are written straight into a growable buffer rather than
 * built as a jansson tree: a 1,000-candidate answer is one pass, no per-item
 * allocation. Scores are printed with %.9g, enough to round-trip a float32.
 * Strings of an answer come from the decoder, which accepted only valid
 * UTF-8, and pass as they are; an error's message may quote anything (a
 * body's bytes, a model file, a library), so its bytes are checked and any
 * that starts no valid UTF-8 character is replaced: an error answer is
 * always JSON a strict parser takes.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/rk.h"

/* Makes room for n more bytes plus the NUL; returns 0 or -1 (sets oom). */
static int buf_reserve(rk_buf *b, size_t n)
{
    if (b->oom) return -1;
    if (b->len + n + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) { b->oom = 1; return -1; }
    b->data = d;
    b->cap = cap;
    return 0;
}

void rk_buf_put(rk_buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) < 0) return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

void rk_buf_puts(rk_buf *b, const char *s) { rk_buf_put(b, s, strlen(s)); }

void rk_buf_printf(rk_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[128];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) { rk_buf_put(b, small, (size_t)n); return; }
    if (buf_reserve(b, (size_t)n) < 0) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Writes s as a JSON string: quotes, backslash escapes for '"', '\\' and
 * control bytes; other bytes (valid UTF-8 from the decoder) pass through.
 * Runs of plain bytes are copied at once. */
void rk_buf_json_str(rk_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (buf_reserve(b, n + 2) < 0) return;
    b->data[b->len++] = '"';
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\') j++;
        if (j > i) rk_buf_put(b, s + i, j - i);
        if (j == n) break;
        unsigned char c = (unsigned char)s[j];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rk_buf_put(b, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            rk_buf_put(b, e, 6);
        }
        i = j + 1;
    }
    rk_buf_put(b, "\"", 1);
}

/* Writes a signed integer in decimal (what "%lld" prints, without printf). */
static void put_int(rk_buf *b, int64_t v)
{
    char tmp[24], *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do { *--p = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) *--p = '-';
    rk_buf_put(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* Writes a string or integer JSON value (ids). */
static void put_id(rk_buf *b, const json_t *v)
{
    if (json_is_string(v)) rk_buf_json_str(b, json_string_value(v), json_string_length(v));
    else if (json_is_integer(v)) put_int(b, (int64_t)json_integer_value(v));
    else rk_buf_puts(b, "null");
}

/* Writes a float with %.9g (round-trips a float32), straight into the
 * buffer; non-finite values (never expected) become null. */
static void put_float(rk_buf *b, float x)
{
    if (!isfinite(x)) { rk_buf_puts(b, "null"); return; }
    if (buf_reserve(b, 32) < 0) return;
    int n = snprintf(b->data + b->len, 32, "%.9g", (double)x);
    if (n > 0 && n < 32) b->len += (size_t)n;
}

/* Merge sort of indices by (score desc, index asc); tmp has n entries. */
static int before(const float *s, uint32_t a, uint32_t b)
{
    float x = s[a], y = s[b];
    if (isnan(x)) return isnan(y) ? a < b : 0;
    if (isnan(y)) return 1;
    return x > y || (x == y && a < b);
}

static void msort(const float *s, uint32_t *v, uint32_t *tmp, size_t n)
{
    if (n < 2) return;
    size_t h = n / 2;
    msort(s, v, tmp, h);
    msort(s, v + h, tmp, n - h);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) tmp[k++] = before(s, v[j], v[i]) ? v[j++] : v[i++];
    while (i < h) tmp[k++] = v[i++];
    while (j < n) tmp[k++] = v[j++];
    memcpy(v, tmp, n * sizeof *v);
}

size_t rk_rank(const float *scores, size_t n, int64_t top_k, uint32_t *order)
{
    for (size_t i = 0; i < n; i++) order[i] = (uint32_t)i;
    uint32_t *tmp = n > 1 ? malloc(n * sizeof *tmp) : NULL;
    if (tmp) {
        msort(scores, order, tmp, n);
        free(tmp);
    } else {
        /* out of memory: insertion sort, still stable */
        for (size_t i = 1; i < n; i++) {
            uint32_t x = order[i];
            size_t j = i;
            while (j > 0 && before(scores, x, order[j - 1])) { order[j] = order[j - 1]; j--; }
            order[j] = x;
        }
    }
    if (top_k >= 0 && (uint64_t)top_k < n) return (size_t)top_k;
    return n;
}

void rk_encode_head(rk_buf *b, const rk_request *rq, const char *model_name,
                    const char *model_version, const float *scores, const float *logits,
                    const uint32_t *order, size_t n_order)
{
    rk_buf_puts(b, "{\"request_id\":");
    if (rq->request_id) put_id(b, rq->request_id);
    else rk_buf_puts(b, "null");
    rk_buf_puts(b, ",\"model\":{\"name\":");
    rk_buf_json_str(b, model_name, strlen(model_name));
    rk_buf_puts(b, ",\"version\":");
    rk_buf_json_str(b, model_version, strlen(model_version));
    rk_buf_puts(b, "},\"ranked\":[");
    for (size_t k = 0; k < n_order; k++) {
        uint32_t i = order[k];
        rk_buf_puts(b, k ? ",{\"id\":" : "{\"id\":");
        put_id(b, rq->cand_ids[i]);
        rk_buf_puts(b, ",\"score\":");
        put_float(b, scores[i]);
        if (logits && rq->want_logits) {
            rk_buf_puts(b, ",\"logit\":");
            put_float(b, logits[i]);
        }
        rk_buf_put(b, ",\"rank\":", 8);
        put_int(b, (int64_t)k + 1);
        rk_buf_put(b, "}", 1);
    }
    rk_buf_puts(b, "]");
}

void rk_encode_tail(rk_buf *b, const rk_latency *lat)
{
    rk_buf_printf(b,
                  ",\"latency_us\":{\"total\":%llu,\"parse\":%llu,\"queue\":%llu,"
                  "\"inference\":%llu,\"encode\":%llu}}",
                  (unsigned long long)lat->total_us, (unsigned long long)lat->parse_us,
                  (unsigned long long)lat->queue_us, (unsigned long long)lat->inference_us,
                  (unsigned long long)lat->encode_us);
}

size_t rk_utf8_char(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    if (!n) return 0;
    if (u[0] < 0x80) return 1;
    /* Unicode's table of well-formed sequences: the lead byte fixes the
     * length and the range of the second byte (which excludes overlong
     * forms, surrogates and code points past U+10FFFF); later bytes are
     * plain continuation bytes */
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (u[0] >= 0xc2 && u[0] <= 0xdf) {
        len = 2;
    } else if (u[0] >= 0xe0 && u[0] <= 0xef) {
        len = 3;
        if (u[0] == 0xe0) lo = 0xa0;
        if (u[0] == 0xed) hi = 0x9f;
    } else if (u[0] >= 0xf0 && u[0] <= 0xf4) {
        len = 4;
        if (u[0] == 0xf0) lo = 0x90;
        if (u[0] == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || u[1] < lo || u[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((u[i] & 0xc0) != 0x80) return 0;
    return len;
}

/* Writes s as a JSON string, like rk_buf_json_str, for text whose bytes are
 * not known to be UTF-8: whole valid characters pass, every other byte
 * becomes \ufffd, so what is written is always valid UTF-8. */
static void json_str_lossy(rk_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    rk_buf_put(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        size_t j = i, k;
        for (;;) {
            if (j == n) break;
            unsigned char c = (unsigned char)s[j];
            if (c < 0x20 || c == '"' || c == '\\') break;
            if (!(k = rk_utf8_char(s + j, n - j))) break;
            j += k;
        }
        if (j > i) rk_buf_put(b, s + i, j - i);
        if (j == n) break;
        unsigned char c = (unsigned char)s[j];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rk_buf_put(b, e, 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            rk_buf_put(b, e, 6);
        } else {
            rk_buf_put(b, "\\ufffd", 6);
        }
        i = j + 1;
    }
    rk_buf_put(b, "\"", 1);
}

void rk_encode_error(rk_buf *b, int err, const char *message)
{
    if (!message || !*message) message = rk_strerror(err);
    rk_buf_puts(b, "{\"error\":{\"code\":");
    const char *name = rk_err_name(err);
    rk_buf_json_str(b, name, strlen(name));
    rk_buf_puts(b, ",\"message\":");
    /* messages quote request bodies, model files and library text */
    json_str_lossy(b, message, strlen(message));
    rk_buf_puts(b, "}}");
}
