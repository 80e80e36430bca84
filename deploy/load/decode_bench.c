/* decode_bench.c — microbenchmark of the /rank request decoder and the
 * answer encoder, the two phases the event loop runs per request (figures,
 * not tests; `make load` runs it before the HTTP runs).
 *
 * usage: decode-bench MODEL BODY.json [SECONDS]
 * Decodes BODY against MODEL repeatedly for about SECONDS (default 1) and
 * prints one line per phase: mean µs per request, MB/s of body, and
 * candidates/s on one core; then the same for rk_peek_route (the routing
 * pre-scan a server with several models or versions makes before the
 * decode); then ranks and encodes the answer of that request with made-up
 * scores the same way. Exits 1 if the body does not
 * decode.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/dcn.h"
#include "proto/rk.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads a whole file into a malloc'ed buffer; NULL on failure. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, k;
    do {
        if (n + 65536 > cap) {
            cap = (n + 65536) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
        }
        k = fread(buf + n, 1, cap - n, f);
        n += k;
    } while (k > 0);
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: decode-bench MODEL BODY.json [SECONDS]\n");
        return 2;
    }
    double secs = argc > 3 ? atof(argv[3]) : 1.0;
    char err[256];
    dcn_model *m;
    if (dcn_open(argv[1], NULL, &m, err, sizeof err) < 0) {
        fprintf(stderr, "decode-bench: %s\n", err);
        return 1;
    }
    size_t len;
    char *body = slurp(argv[2], &len);
    if (!body) {
        fprintf(stderr, "decode-bench: cannot read %s\n", argv[2]);
        return 1;
    }
    rk_limits lim = {.max_candidates = 100000, .strict = 1};
    rk_request *rq = NULL;
    size_t iters = 0;
    double t0 = now_s(), t;
    do {
        rk_request_free(rq);
        if (rk_decode(m, body, len, &lim, &rq, err, sizeof err) < 0) {
            fprintf(stderr, "decode-bench: %s\n", err);
            return 1;
        }
        iters++;
    } while ((t = now_s()) - t0 < secs);
    double us = (t - t0) / (double)iters * 1e6;
    size_t n = rq->n_cands;
    printf("decode  %5zu cands %8zu bytes: %9.1f us/request %8.1f MB/s %11.0f cands/s (1 core)\n", n, len, us,
           (double)len / us, (double)n / us * 1e6);

    /* what a server with several models or versions reads first: the
     * routing fields, up to "candidates" as the server does
     * (rk_peek_route_head: "route"), and over the whole body
     * (rk_peek_route: "route*", a body whose routing fields come last) */
    for (int whole = 0; whole < 2; whole++) {
        iters = 0;
        t0 = now_s();
        do {
            rk_route rt;
            int head, rc = whole ? rk_peek_route(body, len, &rt, err, sizeof err)
                                 : rk_peek_route_head(body, len, &rt, &head, err, sizeof err);
            if (rc != 0) {
                fprintf(stderr, "decode-bench: rk_peek_route: %s\n", err[0] ? err : "unreadable");
                return 1;
            }
            iters++;
        } while ((t = now_s()) - t0 < secs);
        us = (t - t0) / (double)iters * 1e6;
        printf("%-7s %5zu cands %8zu bytes: %9.1f us/request %8.1f MB/s %11.0f cands/s (1 core)\n",
               whole ? "route*" : "route", n, len, us, (double)len / us, (double)n / us * 1e6);
    }

    float *scores = malloc((n + 1) * sizeof(float)), *logits = malloc((n + 1) * sizeof(float));
    uint32_t *order = malloc((n + 1) * sizeof(uint32_t));
    if (!scores || !logits || !order) return 1;
    for (size_t i = 0; i < n; i++) {
        scores[i] = (float)((i * 2654435761u) % 1000003) / 1000003.0f;
        logits[i] = scores[i] * 4 - 2;
    }
    size_t out_bytes = 0;
    iters = 0;
    t0 = now_s();
    do {
        rk_buf b = {0};
        size_t k = rk_rank(scores, n, rq->top_k, order);
        rk_encode_head(&b, rq, "model", "1", scores, logits, order, k);
        rk_latency lat = {1, 2, 3, 4, 5};
        rk_encode_tail(&b, &lat);
        out_bytes = b.len;
        free(b.data);
        iters++;
    } while ((t = now_s()) - t0 < secs);
    us = (t - t0) / (double)iters * 1e6;
    printf("encode  %5zu cands %8zu bytes: %9.1f us/request %8.1f MB/s %11.0f cands/s (1 core)\n", n, out_bytes,
           us, (double)out_bytes / us, (double)n / us * 1e6);
    free(scores);
    free(logits);
    free(order);
    rk_request_free(rq);
    free(body);
    dcn_release(m);
    return 0;
}
