/* status.c — the status page's sample ring and its HTML and SVG (see
 * status.h for the design).
 *
 * DESIGN: a chart is a list of series over the intervals between
 * consecutive samples; a value may be NaN (no data then: the line breaks).
 * Every string that comes from outside the binary (model names, versions)
 * is HTML-escaped where it is written.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/status.h"

struct status_ring {
    pthread_mutex_t mu;
    status_sample s[STATUS_SAMPLES];
    size_t head, n;               /* oldest at head */
};

status_ring *status_new(void)
{
    status_ring *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

void status_sample_free(status_sample *s)
{
    free(s->v);
    free(s->sh);
    s->v = NULL;
    s->sh = NULL;
    s->n_v = s->n_sh = 0;
}

void status_free(status_ring *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) status_sample_free(&r->s[(r->head + i) % STATUS_SAMPLES]);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void status_push(status_ring *r, status_sample *s)
{
    pthread_mutex_lock(&r->mu);
    if (r->n == STATUS_SAMPLES) {
        status_sample_free(&r->s[r->head]);
        r->head = (r->head + 1) % STATUS_SAMPLES;
        r->n--;
    }
    r->s[(r->head + r->n) % STATUS_SAMPLES] = *s;
    r->n++;
    pthread_mutex_unlock(&r->mu);
    memset(s, 0, sizeof *s);
}

double status_quantile(const met_hist *before, const met_hist *after, double q)
{
    size_t nb = after->n_bounds;
    uint64_t d[MET_MAX_BUCKETS + 1], total = 0;
    for (size_t i = 0; i <= nb; i++) {
        uint64_t a = after->counts[i], b = before ? before->counts[i] : 0;
        d[i] = a > b ? a - b : 0;
        total += d[i];
    }
    if (!total) return NAN;
    double rank = q * (double)total, cum = 0;
    for (size_t i = 0; i <= nb; i++) {
        if (cum + (double)d[i] >= rank && d[i]) {
            if (i == nb) return after->bounds[nb - 1]; /* +Inf bucket: its lower bound */
            double lo = i ? after->bounds[i - 1] : 0, hi = after->bounds[i];
            return lo + (hi - lo) * (rank - cum) / (double)d[i];
        }
        cum += (double)d[i];
    }
    return after->bounds[nb - 1];
}

/* ------------------------------------------------------------ HTML */

static void put_html(rk_buf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': rk_buf_puts(b, "&lt;"); break;
        case '>': rk_buf_puts(b, "&gt;"); break;
        case '&': rk_buf_puts(b, "&amp;"); break;
        case '"': rk_buf_puts(b, "&quot;"); break;
        case '\'': rk_buf_puts(b, "&#39;"); break;
        default: rk_buf_put(b, s, 1);
        }
    }
}

static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
#define N_COLORS (sizeof colors / sizeof colors[0])

typedef struct series {
    char name[120];
    double *y;                    /* (n) values, NaN: none */
} series;

/* A value with an SI-ish unit: "12.3k", "4.56 ms", "87%". */
static void fmt_value(char *out, size_t n, double v, const char *unit)
{
    if (!isfinite(v)) {
        snprintf(out, n, "-");
    } else if (!strcmp(unit, "s")) {
        if (v >= 1) snprintf(out, n, "%.2f s", v);
        else if (v >= 1e-3) snprintf(out, n, "%.2f ms", v * 1e3);
        else snprintf(out, n, "%.0f us", v * 1e6);
    } else if (!strcmp(unit, "%")) {
        snprintf(out, n, "%.0f%%", v * 100);
    } else if (!strcmp(unit, "/s")) {
        if (v >= 1e6) snprintf(out, n, "%.2fM/s", v / 1e6);
        else if (v >= 1e3) snprintf(out, n, "%.1fk/s", v / 1e3);
        else snprintf(out, n, "%.1f/s", v);
    } else {
        snprintf(out, n, "%.4g", v);
    }
}

#define CW 560
#define CH 150
#define ML 64 /* left margin: the y labels */
#define MB 18 /* bottom margin: the x labels */

/* One chart: an SVG of the series over the times t (n points, seconds
 * before now, negative), with a legend of each series' last value. fixed:
 * the y range [lo, hi] is given (correlation), else [0, max]. */
static void chart(rk_buf *b, const char *title, const char *unit, const double *t, size_t n, const series *sv,
                  size_t ns, int fixed, double lo, double hi)
{
    if (!fixed) {
        lo = 0;
        hi = 0;
        for (size_t k = 0; k < ns; k++)
            for (size_t i = 0; i < n; i++)
                if (isfinite(sv[k].y[i]) && sv[k].y[i] > hi) hi = sv[k].y[i];
        if (hi <= 0) hi = 1;
        hi *= 1.1;
    }
    char a[32], z[32];
    fmt_value(a, sizeof a, hi, unit);
    fmt_value(z, sizeof z, lo, unit);
    rk_buf_puts(b, "<div class=\"chart\"><h3>");
    put_html(b, title);
    rk_buf_printf(b, "</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" role=\"img\" aria-label=\"",
                  CW, CH);
    put_html(b, title);
    rk_buf_printf(b, "\"><rect x=\"%d\" y=\"2\" width=\"%d\" height=\"%d\" fill=\"#fafafa\" stroke=\"#ccc\"/>", ML, CW - ML - 4,
                  CH - MB - 4);
    rk_buf_printf(b, "<text x=\"%d\" y=\"12\" text-anchor=\"end\" class=\"ax\">%s</text>", ML - 4, a);
    rk_buf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"ax\">%s</text>", ML - 4, CH - MB - 2, z);
    double t0 = -900, span = 900; /* the last 15 minutes at least */
    if (n && t[0] < t0) {
        t0 = t[0];
        span = -t0;
    }
    rk_buf_printf(b, "<text x=\"%d\" y=\"%d\" class=\"ax\">%.0f min</text>", ML, CH - 4, t0 / 60);
    rk_buf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"ax\">now</text>", CW - 4, CH - 4);
    double pw = CW - ML - 4, ph = CH - MB - 4;
    for (size_t k = 0; k < ns; k++) {
        int open = 0;
        for (size_t i = 0; i < n; i++) {
            double y = sv[k].y[i];
            if (!isfinite(y)) {
                if (open) rk_buf_puts(b, "\"/>");
                open = 0;
                continue;
            }
            if (y < lo) y = lo;
            if (y > hi) y = hi;
            double px = ML + pw * (t[i] - t0) / span, py = 2 + ph * (1 - (y - lo) / (hi - lo));
            if (!open) rk_buf_printf(b, "<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"%s\" points=\"",
                                     colors[k % N_COLORS]);
            rk_buf_printf(b, "%s%.1f,%.1f", open ? " " : "", px, py);
            open = 1;
        }
        if (open) rk_buf_puts(b, "\"/>");
        /* a lone point is invisible as a line: mark the last one */
        for (size_t i = n; i-- > 0;) {
            if (!isfinite(sv[k].y[i])) continue;
            double y = sv[k].y[i] < lo ? lo : sv[k].y[i] > hi ? hi : sv[k].y[i];
            rk_buf_printf(b, "<circle r=\"2.5\" fill=\"%s\" cx=\"%.1f\" cy=\"%.1f\"/>", colors[k % N_COLORS],
                          ML + pw * (t[i] - t0) / span, 2 + ph * (1 - (y - lo) / (hi - lo)));
            break;
        }
    }
    rk_buf_puts(b, "</svg><div class=\"legend\">");
    for (size_t k = 0; k < ns; k++) {
        double last = NAN;
        for (size_t i = n; i-- > 0;)
            if (isfinite(sv[k].y[i])) {
                last = sv[k].y[i];
                break;
            }
        fmt_value(a, sizeof a, last, unit);
        rk_buf_printf(b, "<span><i style=\"background:%s\"></i>", colors[k % N_COLORS]);
        put_html(b, sv[k].name);
        rk_buf_printf(b, " <b>%s</b></span>", a);
    }
    rk_buf_puts(b, "</div></div>\n");
}

static const status_version *find_version(const status_sample *s, const char *model, const char *version)
{
    for (size_t i = 0; i < s->n_v; i++)
        if (!strcmp(s->v[i].model, model) && !strcmp(s->v[i].version, version)) return &s->v[i];
    return NULL;
}

static const status_shadow *find_shadow(const status_sample *s, const char *model, const char *version)
{
    for (size_t i = 0; i < s->n_sh; i++)
        if (!strcmp(s->sh[i].model, model) && !strcmp(s->sh[i].version, version)) return &s->sh[i];
    return NULL;
}

static double rate(double a, double b, double dt) { return dt > 0 && b >= a ? (b - a) / dt : NAN; }

/* Under the ring's lock: the i-th sample from the oldest. */
static const status_sample *at(const status_ring *r, size_t i) { return &r->s[(r->head + i) % STATUS_SAMPLES]; }

static const char style[] =
    "<style>body{font:13px/1.4 sans-serif;margin:16px;color:#222}h1{font-size:20px;margin:0 0 4px}"
    "h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #ddd}h3{font-size:13px;margin:0 0 2px}"
    ".charts{display:flex;flex-wrap:wrap;gap:14px}.chart{width:560px}.ax{font-size:10px;fill:#666}"
    ".legend span{margin-right:12px;white-space:nowrap}.legend i{display:inline-block;width:10px;height:10px;"
    "margin-right:4px}table{border-collapse:collapse;margin:4px 0 10px}td,th{border:1px solid #ddd;"
    "padding:2px 8px;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}.meta{color:#555}"
    ".ok{color:#2ca02c}.bad{color:#d62728}</style>";

void status_render(status_ring *r, const status_info *in, rk_buf *b)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->n > 1 ? r->n - 1 : 0; /* intervals */
    const status_sample *last = r->n ? at(r, r->n - 1) : NULL;
    double now = last ? last->t : (double)time(NULL);
    double *t = calloc(n + 1, sizeof *t);
    double *buf = calloc((n + 1) * 16, sizeof *buf);
    series *sv = calloc(16, sizeof *sv);
    rk_buf_puts(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dcnserve status</title>");
    rk_buf_puts(b, style);
    rk_buf_puts(b, "</head><body><h1>dcnserve status</h1><p class=\"meta\">");
    rk_buf_printf(b, "<span class=\"%s\">%s</span>, %s; kernels ", in->ready ? "ok" : "bad", in->ready ? "ready" : "not ready",
                  in->phase);
    put_html(b, in->kernels);
    rk_buf_printf(b, "; up %.0f s; %zu sample%s over the last %.0f s, the page does not refresh itself.</p>\n",
                  now - in->start_unix, r->n, r->n == 1 ? "" : "s", r->n > 1 ? now - at(r, 0)->t : 0.0);
    if (!t || !buf || !sv) {
        rk_buf_puts(b, "<p>out of memory</p></body></html>\n");
        goto out;
    }
    for (size_t i = 0; i < n; i++) t[i] = at(r, i + 1)->t - now;
#define Y(k) (buf + (size_t)(k) * (n + 1))
    /* ---- the server */
    rk_buf_puts(b, "<h2>Server</h2><div class=\"charts\">\n");
    for (size_t i = 0; i < n; i++) {
        const status_sample *p = at(r, i), *c = at(r, i + 1);
        double dt = c->t - p->t;
        Y(0)[i] = rate((double)p->candidates, (double)c->candidates, dt);
        Y(1)[i] = rate((double)p->rank_ok, (double)c->rank_ok, dt);
        Y(2)[i] = status_quantile(&p->request_seconds, &c->request_seconds, 0.5);
        Y(3)[i] = status_quantile(&p->request_seconds, &c->request_seconds, 0.99);
        Y(4)[i] = status_quantile(&p->queue_seconds, &c->queue_seconds, 0.5);
        Y(5)[i] = status_quantile(&p->queue_seconds, &c->queue_seconds, 0.99);
        Y(6)[i] = rate((double)p->shed, (double)c->shed, dt);
        Y(7)[i] = c->n_loops && dt > 0 ? (c->loop_busy_s - p->loop_busy_s) / (dt * (double)c->n_loops) : NAN;
        Y(8)[i] = c->workers && dt > 0 ? (c->worker_busy_s - p->worker_busy_s) / (dt * (double)c->workers) : NAN;
    }
    sv[0] = (series){"candidates", Y(0)};
    sv[1] = (series){"requests", Y(1)};
    chart(b, "Candidates and requests scored per second", "/s", t, n, sv, 2, 0, 0, 0);
    sv[0] = (series){"p50", Y(2)};
    sv[1] = (series){"p99", Y(3)};
    chart(b, "Latency, arrival to answer (/rank)", "s", t, n, sv, 2, 0, 0, 0);
    sv[0] = (series){"p50", Y(4)};
    sv[1] = (series){"p99", Y(5)};
    chart(b, "Queue wait", "s", t, n, sv, 2, 0, 0, 0);
    sv[0] = (series){"shed (queue full)", Y(6)};
    chart(b, "Requests shed per second", "/s", t, n, sv, 1, 0, 0, 0);
    sv[0] = (series){"event loops", Y(7)};
    sv[1] = (series){"workers", Y(8)};
    chart(b, "Busy share", "%", t, n, sv, 2, 1, 0, 1);
    rk_buf_puts(b, "</div>\n");

    /* ---- per model: its versions (those in the last sample) */
    for (size_t a = 0; last && a < last->n_v; a++) {
        const char *model = last->v[a].model;
        if (a && !strcmp(last->v[a - 1].model, model)) continue; /* grouped: one section per model */
        size_t end = a;
        while (end < last->n_v && !strcmp(last->v[end].model, model)) end++;
        rk_buf_puts(b, "<h2>Model ");
        put_html(b, model);
        rk_buf_puts(b, "</h2><table><tr><th>version</th><th>state</th><th>requests</th><th>candidates/s now</th>"
                       "<th>p50 (window)</th><th>p99 (window)</th></tr>\n");
        size_t nv = end - a > 7 ? 7 : end - a, first = end - nv; /* the newest seven */
        for (size_t k = 0; k < nv; k++) {
            const status_version *cv = &last->v[first + k];
            for (size_t i = 0; i < n; i++) {
                const status_sample *p = at(r, i), *c = at(r, i + 1);
                const status_version *pv = find_version(p, model, cv->version), *qv = find_version(c, model, cv->version);
                double dt = c->t - p->t;
                Y(k)[i] = qv ? rate(pv ? (double)pv->candidates : 0, (double)qv->candidates, dt) : NAN;
                Y(8 + k)[i] = qv ? status_quantile(pv ? &pv->seconds : NULL, &qv->seconds, 0.99) : NAN;
            }
            char c1[32], c2[32], c3[32];
            const status_version *pv = r->n > 1 ? find_version(at(r, 0), model, cv->version) : NULL;
            fmt_value(c1, sizeof c1, n ? Y(k)[n - 1] : NAN, "/s");
            fmt_value(c2, sizeof c2, status_quantile(pv ? &pv->seconds : NULL, &cv->seconds, 0.5), "s");
            fmt_value(c3, sizeof c3, status_quantile(pv ? &pv->seconds : NULL, &cv->seconds, 0.99), "s");
            rk_buf_puts(b, "<tr><td>");
            put_html(b, cv->version);
            rk_buf_printf(b, "</td><td class=\"%s\">%s</td><td>%llu</td><td>%s</td><td>%s</td><td>%s</td></tr>\n",
                          cv->serving ? "ok" : "bad", cv->serving ? "serving" : "not serving",
                          (unsigned long long)cv->requests, c1, c2, c3);
            snprintf(sv[k].name, sizeof sv[k].name, "version %.32s", cv->version);
            sv[k].y = Y(k);
            snprintf(sv[8 + k].name, sizeof sv[8 + k].name, "version %.32s", cv->version);
            sv[8 + k].y = Y(8 + k);
        }
        rk_buf_puts(b, "</table><div class=\"charts\">\n");
        chart(b, "Candidates scored per second, by version", "/s", t, n, sv, nv, 0, 0, 0);
        chart(b, "p99 latency, by version", "s", t, n, sv + 8, nv, 0, 0, 0);
        for (size_t h = 0; h < last->n_sh; h++) {
            const status_shadow *ls = &last->sh[h];
            if (strcmp(ls->model, model)) continue;
            for (size_t i = 0; i < n; i++) {
                const status_sample *p = at(r, i), *c = at(r, i + 1);
                const status_shadow *ps = find_shadow(p, model, ls->version), *qs = find_shadow(c, model, ls->version);
                double dt = c->t - p->t;
                status_shadow z = {0};
                if (!ps) ps = &z;
                Y(0)[i] = qs && qs->diff_n > ps->diff_n ? (qs->diff_sum - ps->diff_sum) / (double)(qs->diff_n - ps->diff_n) : NAN;
                Y(1)[i] = qs && qs->corr_n > ps->corr_n ? (qs->corr_sum - ps->corr_sum) / (double)(qs->corr_n - ps->corr_n) : NAN;
                Y(2)[i] = qs ? rate((double)ps->scored, (double)qs->scored, dt) : NAN;
                Y(3)[i] = qs ? rate((double)(ps->skipped + ps->dropped), (double)(qs->skipped + qs->dropped), dt) : NAN;
            }
            char title[200];
            snprintf(title, sizeof title, "Shadow version %.32s: mean score difference from the served answers", ls->version);
            sv[0] = (series){"mean |score difference|", Y(0)};
            chart(b, title, "", t, n, sv, 1, 0, 0, 0);
            snprintf(title, sizeof title, "Shadow version %.32s: rank correlation with the served answers", ls->version);
            sv[0] = (series){"Spearman's rho", Y(1)};
            chart(b, title, "", t, n, sv, 1, 1, -1, 1);
            snprintf(title, sizeof title, "Shadow version %.32s: requests shadowed and skipped per second", ls->version);
            sv[0] = (series){"scored", Y(2)};
            sv[1] = (series){"skipped or dropped (load)", Y(3)};
            chart(b, title, "/s", t, n, sv, 2, 0, 0, 0);
        }
        rk_buf_puts(b, "</div>\n");
    }
#undef Y
    rk_buf_puts(b, "<p class=\"meta\">The same figures, and more, are in <a href=\"/metrics\">/metrics</a>; "
                   "the models and versions in <a href=\"/v1/models\">/v1/models</a>.</p></body></html>\n");
out:
    pthread_mutex_unlock(&r->mu);
    free(t);
    free(buf);
    free(sv);
}
