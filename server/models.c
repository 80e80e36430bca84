/* models.c — the table of served models and versions (see models.h).
 *
 * DESIGN: the table is an array of models, each with an array of rows
 * sorted by version number; UNLOADING versions are rows too (a model's
 * row for a number may then appear twice with a file: the serving one and
 * the one it replaced), dropped once only the table references them.
 * models_sync mutates the table in short critical sections around the
 * slow steps (a row becomes LOADING, the version loads outside the lock,
 * the row becomes SERVING or FAILED), so a listing always shows what is
 * happening. Hashing for the canary split: FNV-1a 64 over the model's
 * name, a zero byte and the key, taken modulo 10,000 (basis points).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/log.h"
#include "server/models.h"
#include "server/repo.h"
#include "server/status.h"

typedef enum { ROW_LOADING, ROW_SERVING, ROW_FAILED, ROW_UNLOADING } row_state;
static const char *const state_names[] = {"loading", "serving", "failed", "unloading"};

typedef struct row {
    uint64_t number;
    row_state state;
    char error[256];
    repo_entry file;            /* path owned (strdup), identity; path NULL for failed-without-file */
    mv *v;                      /* SERVING / UNLOADING: one reference; else NULL */
    int retry;                  /* FAILED for want of memory: tried again even if unchanged */
} row;

/* Shadow scoring's results for one model, since its shadow was set. */
typedef struct shadow_stats {
    uint64_t outcomes[MODELS_SHADOW_N];
    met_hist score_diff;        /* per request: mean |shadow - served| score */
    met_hist rank_corr;         /* per request (>= 2 candidates): Spearman's rho */
} shadow_stats;

typedef struct model {
    char name[MODELS_NAME_MAX + 1];
    row *rows;                  /* (n_rows) by number, then serving before unloading */
    size_t n_rows, cap_rows;
    uint64_t canary_version;    /* 0: none */
    unsigned canary_bp;         /* basis points of keys to the canary */
    uint64_t shadow_version;    /* 0: none */
    shadow_stats *shadow;       /* NULL until a shadow is set */
    uint64_t pinned[MODELS_MAX_PINNED]; /* from its `pinned` file, ascending */
    size_t n_pinned;            /* 0: the latest keep_versions serve */
    char pin_error[200];        /* its `pinned` file is invalid: nothing changes */
    char traffic_file[2][48];   /* the `canary` and `shadow` files' contents last applied ("" none) */
    char traffic_error[200];    /* why one of them could not be applied ("" none) */
    int seen;                   /* models_sync: in the current scan */
} model;

static const char *const outcome_names[MODELS_SHADOW_N] = {"scored", "skipped_busy", "dropped", "failed"};
/* mean |score difference|: from float rounding to a different ranker */
static const double diff_bounds[] = {1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.3, 1};
static const double corr_bounds[] = {-0.5, 0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1};

static void shadow_reset(shadow_stats *st)
{
    memset(st, 0, sizeof *st);
    st->score_diff.bounds = diff_bounds;
    st->score_diff.n_bounds = sizeof diff_bounds / sizeof diff_bounds[0];
    st->rank_corr.bounds = corr_bounds;
    st->rank_corr.n_bounds = sizeof corr_bounds / sizeof corr_bounds[0];
}

struct srv_models {
    const srv_config *cfg;
    score_ctx *sctx;
    size_t n_workers;
    int file_mode;
    pthread_mutex_t mu;         /* guards models and every row and canary field */
    model *models;              /* (n_models) sorted by name */
    size_t n_models, cap_models;
    atomic_int single;          /* exactly one version serving (update_single) */
};

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

mv *mv_retain(mv *v)
{
    if (v) atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    return v;
}

/* Versions reap took out of the table, to release once its lock is let
 * go (unmapping a large file must not hold every router). */
typedef struct mv_list {
    mv *v[16];
    size_t n;
} mv_list;

static void reap(srv_models *ms, mv_list *drop);
static void drop_all(mv_list *l);

static void mv_free(mv *v)
{
    dcn_release(v->m);
    pthread_mutex_destroy(&v->hist_mu);
    free(v);
}

void mv_count(mv *v, size_t n, double seconds)
{
    atomic_fetch_add_explicit(&v->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&v->candidates, n, memory_order_relaxed);
    pthread_mutex_lock(&v->hist_mu);
    met_hist_observe(&v->seconds, seconds);
    pthread_mutex_unlock(&v->hist_mu);
}

void mv_release(mv *v)
{
    if (!v) return;
    if (atomic_load_explicit(&v->unloading, memory_order_acquire)) {
        /* an unloading version: the decrement under the table's lock, so
         * that reap cannot free it in between; the last request's release
         * (only the table's reference left) reaps it */
        srv_models *ms = v->ms;
        mv_list drop = {.n = 0};
        pthread_mutex_lock(&ms->mu);
        unsigned before = atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel);
        if (before == 2) reap(ms, &drop);
        pthread_mutex_unlock(&ms->mu);
        drop_all(&drop);
        if (before == 1) mv_free(v); /* not listed any more (cannot happen: kept for safety) */
        return;
    }
    /* a release racing with the flag being set leaves the row to the next
     * reap (models_reap, every status sample) */
    if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) mv_free(v);
}

/* The table's release, under mu: never reaps. */
static void mv_drop(mv *v)
{
    if (v && atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) mv_free(v);
}

srv_models *models_new(const srv_config *cfg, score_ctx *sctx, size_t n_workers)
{
    srv_models *ms = calloc(1, sizeof *ms);
    if (!ms) return NULL;
    if (pthread_mutex_init(&ms->mu, NULL) != 0) {
        free(ms);
        return NULL;
    }
    ms->cfg = cfg;
    ms->sctx = sctx;
    ms->n_workers = n_workers;
    ms->file_mode = !(cfg->model_repository && *cfg->model_repository);
    return ms;
}

/* Under mu, after any change of a row's state. */
static void update_single(srv_models *ms)
{
    size_t n = 0;
    for (size_t i = 0; i < ms->n_models; i++)
        for (size_t k = 0; k < ms->models[i].n_rows; k++) n += ms->models[i].rows[k].state == ROW_SERVING;
    atomic_store_explicit(&ms->single, n == 1, memory_order_release);
}

int models_single(srv_models *ms) { return atomic_load_explicit(&ms->single, memory_order_acquire); }

static void row_clear(row *r)
{
    mv_drop(r->v);
    free(r->file.path);
    memset(r, 0, sizeof *r);
}

void models_free(srv_models *ms)
{
    if (!ms) return;
    for (size_t i = 0; i < ms->n_models; i++) {
        for (size_t k = 0; k < ms->models[i].n_rows; k++) row_clear(&ms->models[i].rows[k]);
        free(ms->models[i].rows);
        free(ms->models[i].shadow);
    }
    free(ms->models);
    pthread_mutex_destroy(&ms->mu);
    free(ms);
}

/* ------------------------------------------------------------ loading */

/* Opens, validates and exercises a model file (one row with every feature
 * missing must score to a finite number). Off the event loops. */
static int load_file(const srv_config *c, const char *path, dcn_model **out, char *err, size_t errlen)
{
    dcn_open_opts o = {.verify_checksum = c->verify, .warmup = c->warmup, .int8 = c->int8, .bf16 = c->bf16};
    int rc = dcn_open(path, &o, out, err, errlen);
    if (rc < 0) return rc;
    const dcn_info *in = dcn_model_info(*out);
    dcn_scratch *sc = dcn_scratch_new(*out, 1);
    float *dense = malloc((in->n_dense + 1) * sizeof(float));
    uint32_t *off = calloc(2, sizeof(uint32_t));
    const uint32_t **offp = calloc(in->n_sparse + 1, sizeof *offp);
    const int64_t **idp = calloc(in->n_sparse + 1, sizeof *idp);
    static const int64_t none[1] = {0};
    float score = NAN;
    rc = DCN_ENOMEM;
    if (sc && dense && off && offp && idp) {
        for (size_t j = 0; j < in->n_dense; j++) dense[j] = NAN;
        for (size_t f = 0; f < in->n_sparse; f++) {
            offp[f] = off;
            idp[f] = none;
        }
        dcn_batch b = {.n_rows = 1, .n_segments = 1, .dense = dense, .seg_dense = dense, .offsets = offp, .ids = idp};
        rc = dcn_score(*out, sc, &b, &score, NULL);
        if (rc == 0 && !isfinite(score)) {
            rc = DCN_EFORMAT;
            snprintf(err, errlen, "the model scores a row of missing features as %g", (double)score);
        } else if (rc < 0) {
            snprintf(err, errlen, "test score failed: %s", dcn_strerror(rc));
        }
    } else {
        snprintf(err, errlen, "out of memory");
    }
    dcn_scratch_free(sc);
    free(dense);
    free(off);
    free(offp);
    free(idp);
    if (rc < 0) {
        dcn_release(*out);
        *out = NULL;
        return rc;
    }
    if (c->int8 && !in->int8_smoothed)
        log_msg(LOG_INFO, "INT8 without calibration factors: each row is its own calibration; "
                          "tools/calibrate.py measures factors that cut the INT8 error by a third to a half",
                NULL);
    if (in->huge_bytes && !strcmp(dcn_huge_pages(), "never"))
        log_msg(LOG_WARN, "transparent huge pages are off on this host: the model's large dense layers "
                          "stream from 4 KiB pages, slower (10-20% on batches of one on a 64 MB model); "
                          "set /sys/kernel/mm/transparent_hugepage/enabled to madvise",
                "\"huge_pages\":\"never\",\"huge_page_bytes\":%zu", in->huge_bytes);
    return 0;
}

/* Loads path as version `number` of model `name` (NULL: the file's own
 * name) and prepares the workers' states for it. Returns a version with
 * one reference, or NULL with err set. */
static mv *load_version(srv_models *ms, const char *path, const char *name, uint64_t number, int *transient,
                        char *err, size_t errlen)
{
    dcn_model *m = NULL;
    *transient = 0;
    int rc = load_file(ms->cfg, path, &m, err, errlen);
    if (rc < 0) {
        *transient = rc == DCN_ENOMEM;
        return NULL;
    }
    mv *v = calloc(1, sizeof *v);
    if (v && pthread_mutex_init(&v->hist_mu, NULL) != 0) {
        free(v);
        v = NULL;
    }
    if (!v) {
        snprintf(err, errlen, "out of memory");
        *transient = 1;
        dcn_release(m);
        return NULL;
    }
    const dcn_info *in = dcn_model_info(m);
    v->m = m;
    snprintf(v->name, sizeof v->name, "%s", name ? name : in->name);
    v->number = number;
    if (name) snprintf(v->label, sizeof v->label, "%llu", (unsigned long long)number);
    else snprintf(v->label, sizeof v->label, "%s", in->version);
    v->loaded_unix = unix_now();
    v->ms = ms;
    atomic_init(&v->refs, 1);
    atomic_init(&v->unloading, 0);
    met_hist_init_seconds(&v->seconds);
    if (score_prepare(ms->sctx, m, ms->n_workers) < 0) {
        snprintf(err, errlen, "out of memory for the workers' states");
        *transient = 1;
        mv_release(v);
        return NULL;
    }
    return v;
}

/* ------------------------------------------------------------ the table */

/* Under mu. The model named, or NULL. */
static model *find_model(srv_models *ms, const char *name)
{
    for (size_t i = 0; i < ms->n_models; i++)
        if (!strcmp(ms->models[i].name, name)) return &ms->models[i];
    return NULL;
}

/* Under mu. Adds an empty model, kept sorted; NULL when out of memory.
 * Pointers to models are invalid afterwards. */
static model *add_model(srv_models *ms, const char *name)
{
    if (ms->n_models == ms->cap_models) {
        size_t cap = ms->cap_models ? 2 * ms->cap_models : 4;
        model *nm = realloc(ms->models, cap * sizeof *nm);
        if (!nm) return NULL;
        ms->models = nm;
        ms->cap_models = cap;
    }
    size_t at = 0;
    while (at < ms->n_models && strcmp(ms->models[at].name, name) < 0) at++;
    memmove(ms->models + at + 1, ms->models + at, (ms->n_models - at) * sizeof *ms->models);
    ms->n_models++;
    model *m = &ms->models[at];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    return m;
}

/* Under mu. Inserts a row (number, state) before the rows of higher
 * numbers; returns its index, or -1 when out of memory. */
static long add_row(model *m, uint64_t number, row_state st)
{
    if (m->n_rows == m->cap_rows) {
        size_t cap = m->cap_rows ? 2 * m->cap_rows : 4;
        row *nr = realloc(m->rows, cap * sizeof *nr);
        if (!nr) return -1;
        m->rows = nr;
        m->cap_rows = cap;
    }
    size_t at = 0;
    while (at < m->n_rows && m->rows[at].number <= number) at++;
    memmove(m->rows + at + 1, m->rows + at, (m->n_rows - at) * sizeof *m->rows);
    m->n_rows++;
    memset(&m->rows[at], 0, sizeof m->rows[at]);
    m->rows[at].number = number;
    m->rows[at].state = st;
    return (long)at;
}

/* Under mu. The row of model m for number in one of the states of mask
 * (bit per row_state), or -1. */
static long find_row(const model *m, uint64_t number, unsigned mask)
{
    for (size_t k = 0; k < m->n_rows; k++)
        if (m->rows[k].number == number && (mask >> m->rows[k].state & 1)) return (long)k;
    return -1;
}

static void remove_row(model *m, size_t k)
{
    row_clear(&m->rows[k]);
    memmove(m->rows + k, m->rows + k + 1, (m->n_rows - k - 1) * sizeof *m->rows);
    m->n_rows--;
}

/* Under mu. Drops UNLOADING rows no request holds any more (their
 * versions go to drop, released by the caller after unlocking; as many as
 * it has room for, the rest at the next reap), then models left without
 * rows. */
static void reap(srv_models *ms, mv_list *drop)
{
    for (size_t i = 0; i < ms->n_models;) {
        model *m = &ms->models[i];
        for (size_t k = 0; k < m->n_rows;) {
            row *r = &m->rows[k];
            if (r->state == ROW_UNLOADING && drop->n < sizeof drop->v / sizeof drop->v[0] &&
                atomic_load_explicit(&r->v->refs, memory_order_acquire) == 1) {
                char n1[160];
                log_msg(LOG_INFO, "version unloaded", "\"model\":\"%s\",\"version\":%llu",
                        log_esc(m->name, n1, sizeof n1), (unsigned long long)r->number);
                drop->v[drop->n++] = r->v;
                r->v = NULL;
                remove_row(m, k);
            } else {
                k++;
            }
        }
        if (!m->n_rows && !m->pin_error[0]) {
            free(m->rows);
            free(m->shadow);
            memmove(ms->models + i, ms->models + i + 1, (ms->n_models - i - 1) * sizeof *ms->models);
            ms->n_models--;
        } else {
            i++;
        }
    }
    update_single(ms);
}

static void drop_all(mv_list *l)
{
    for (size_t i = 0; i < l->n; i++) mv_drop(l->v[i]);
    l->n = 0;
}

void models_reap(srv_models *ms)
{
    mv_list drop = {.n = 0};
    pthread_mutex_lock(&ms->mu);
    reap(ms, &drop);
    pthread_mutex_unlock(&ms->mu);
    drop_all(&drop);
}

/* The end of a sync step, under mu: reaps, unlocks, then forgets the
 * workers' states of the versions gone (each referenced by the caller)
 * and drops those references (the last request's release unloads). */
static void unlock_and_forget(srv_models *ms, mv **gone, size_t n_gone)
{
    mv_list drop = {.n = 0};
    reap(ms, &drop);
    pthread_mutex_unlock(&ms->mu);
    drop_all(&drop);
    for (size_t i = 0; i < n_gone; i++) {
        score_forget(ms->sctx, gone[i]->m);
        mv_release(gone[i]);
    }
}

/* Under mu: keeps g (a version retire_row referenced, or NULL) in gone
 * (64 entries) for unlock_and_forget; past 64 (rare), forgets it here. */
static void keep_gone(srv_models *ms, mv *g, mv **gone, size_t *n_gone)
{
    if (!g) return;
    if (*n_gone < 64) {
        gone[(*n_gone)++] = g;
        return;
    }
    score_forget(ms->sctx, g->m);
    mv_drop(g);
}

static int copy_entry(repo_entry *dst, const repo_entry *src)
{
    *dst = *src;
    dst->path = NULL;
    if (src->path && !(dst->path = strdup(src->path))) return -1;
    return 0;
}

/* Loads version e (an entry of a scan) of model `name`, its row LOADING
 * meanwhile; the row ends SERVING (after any serving row of that number,
 * which becomes UNLOADING) or FAILED. Returns 1 loaded, 0 failed, -1 out
 * of memory. */
static int load_row(srv_models *ms, const char *name, const repo_entry *e, models_change *ch)
{
    char err[256] = "";
    char n1[160], n2[300];
    pthread_mutex_lock(&ms->mu);
    model *m = find_model(ms, name);
    if (!m && !(m = add_model(ms, name))) goto oom;
    m->seen = 1;
    long k = find_row(m, e->version, 1u << ROW_LOADING | 1u << ROW_FAILED);
    if (k < 0 && (k = add_row(m, e->version, ROW_LOADING)) < 0) goto oom;
    row *r = &m->rows[k];
    free(r->file.path);
    r->file.path = NULL;
    r->state = ROW_LOADING;
    r->retry = 0;
    r->error[0] = 0;
    if (copy_entry(&r->file, e) < 0) goto oom;
    pthread_mutex_unlock(&ms->mu);

    int transient = 0;
    mv *v = e->error[0] ? NULL : load_version(ms, e->path, name, e->version, &transient, err, sizeof err);
    if (e->error[0]) snprintf(err, sizeof err, "%s", e->error);

    pthread_mutex_lock(&ms->mu);
    m = find_model(ms, name); /* the row is where it was left: only a sync removes rows */
    k = m ? find_row(m, e->version, 1u << ROW_LOADING) : -1;
    if (k < 0) {
        pthread_mutex_unlock(&ms->mu);
        mv_release(v);
        return -1;
    }
    r = &m->rows[k];
    mv *old = NULL;
    if (v) {
        long s = find_row(m, e->version, 1u << ROW_SERVING);
        if (s >= 0) {
            m->rows[s].state = ROW_UNLOADING; /* the same number from a new file: replaced */
            if ((old = m->rows[s].v)) {
                mv_retain(old); /* kept until forgotten below */
                atomic_store(&old->unloading, 1);
            }
        }
        r->state = ROW_SERVING;
        r->v = v;
    } else {
        r->state = ROW_FAILED;
        r->retry = transient; /* out of memory: tried again at the next sync */
        snprintf(r->error, sizeof r->error, "%s", err);
    }
    update_single(ms);
    pthread_mutex_unlock(&ms->mu);
    if (old) {
        if (ch) ch->unloaded++;
        score_forget(ms->sctx, old->m);
        mv_release(old); /* the last one: unloaded here */
    }
    if (v) {
        const dcn_info *in = dcn_model_info(v->m);
        char n3[100];
        log_msg(LOG_INFO, "version serving", "\"model\":\"%s\",\"version\":\"%s\",\"file\":\"%s\",\"file_bytes\":%llu",
                log_esc(v->name, n1, sizeof n1), log_esc(v->label, n3, sizeof n3), log_esc(e->path, n2, sizeof n2),
                (unsigned long long)in->file_bytes);
        if (ch) ch->loaded++;
        return 1;
    }
    log_msg(LOG_ERROR, "version failed to load, not served", "\"model\":\"%s\",\"version\":%llu,\"error\":\"%s\"",
            log_esc(name, n1, sizeof n1), (unsigned long long)e->version, log_esc(err, n2, sizeof n2));
    if (ch) {
        if (!ch->failed++) snprintf(ch->first_error, sizeof ch->first_error, "%s", err);
    }
    return 0;
oom:
    pthread_mutex_unlock(&ms->mu);
    return -1;
}

/* Under mu. Marks row k UNLOADING (served ones) or drops it (others);
 * returns the version to forget, or NULL. */
static mv *retire_row(model *m, size_t k, models_change *ch)
{
    row *r = &m->rows[k];
    if (r->state == ROW_SERVING) {
        char n1[160];
        r->state = ROW_UNLOADING;
        atomic_store(&r->v->unloading, 1);
        log_msg(LOG_INFO, "version unloading", "\"model\":\"%s\",\"version\":%llu", log_esc(m->name, n1, sizeof n1),
                (unsigned long long)r->number);
        if (ch) ch->unloaded++;
        return mv_retain(r->v); /* kept until forgotten */
    }
    if (r->state == ROW_FAILED) remove_row(m, k);
    return NULL;
}

static int sync_file(srv_models *ms, models_change *ch, char *err, size_t errlen)
{
    /* the model's name comes from the file */
    repo_entry e = {.version = 1, .path = (char *)ms->cfg->model_path};
    char name[MODELS_NAME_MAX + 1];
    int transient;
    mv *v = load_version(ms, e.path, NULL, 1, &transient, err, errlen);
    if (!v) return RK_ERELOAD;
    snprintf(name, sizeof name, "%s", v->name);
    pthread_mutex_lock(&ms->mu);
    mv *gone[8];
    size_t n_gone = 0;
    for (size_t i = 0; i < ms->n_models; i++) { /* the previous file's model (its name may differ) */
        model *m = &ms->models[i];
        for (size_t k = 0; k < m->n_rows; k++)
            if (m->rows[k].state == ROW_SERVING && n_gone < 8) {
                m->rows[k].state = ROW_UNLOADING;
                atomic_store(&m->rows[k].v->unloading, 1);
                gone[n_gone++] = mv_retain(m->rows[k].v);
            }
    }
    model *m = find_model(ms, name);
    long k = -1;
    if ((m || (m = add_model(ms, name))) && (k = add_row(m, 1, ROW_SERVING)) >= 0) {
        /* after any unloading row of number 1: add_row inserts after equal numbers */
        m->rows[k].v = v;
        m->rows[k].file.path = strdup(e.path);
        m->rows[k].file.version = 1;
    }
    if (k < 0) { /* out of memory: what served keeps serving */
        for (size_t i = 0; i < n_gone; i++) {
            atomic_store(&gone[i]->unloading, 0);
            mv_drop(gone[i]);
        }
        for (size_t i = 0; i < ms->n_models; i++)
            for (size_t j = 0; j < ms->models[i].n_rows; j++)
                for (size_t g = 0; g < n_gone; g++)
                    if (ms->models[i].rows[j].v == gone[g]) ms->models[i].rows[j].state = ROW_SERVING;
        pthread_mutex_unlock(&ms->mu);
        score_forget(ms->sctx, v->m);
        mv_release(v);
        snprintf(err, errlen, "out of memory");
        return RK_ENOMEM;
    }
    unlock_and_forget(ms, gone, n_gone);
    if (ch) {
        ch->loaded++;
        ch->unloaded += (unsigned)n_gone;
    }
    char n1[160], n2[100];
    log_msg(LOG_INFO, "model loaded", "\"model\":\"%s\",\"version\":\"%s\"", log_esc(v->name, n1, sizeof n1),
            log_esc(v->label, n2, sizeof n2));
    return 0;
}

/* The entries of scan s for model name: [*lo, *hi). */
static void entries_of(const repo_scan *s, size_t from, size_t *hi)
{
    size_t j = from;
    while (j < s->n && !strcmp(s->v[j].name, s->v[from].name)) j++;
    *hi = j;
}

/* Reads the small file DIR/<name>/<file> into buf (n bytes), whitespace
 * at both ends trimmed. Returns 1, 0 when there is no such file, or -1
 * with err set. */
static int read_small(const char *dir, const char *name, const char *file, char *buf, size_t n, char *err,
                      size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", dir, name, file);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return 0;
        snprintf(err, errlen, "cannot read %s/%s: %s", name, file, strerror(errno));
        return -1;
    }
    size_t len = fread(buf, 1, n - 1, f);
    int too_long = !feof(f) && fgetc(f) != EOF;
    fclose(f);
    buf[len] = 0;
    if (too_long) {
        snprintf(err, errlen, "%s/%s: longer than %zu bytes", name, file, n - 1);
        return -1;
    }
    char *p = buf;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    memmove(buf, p, strlen(p) + 1);
    for (len = strlen(buf); len && strchr(" \t\r\n", buf[len - 1]); len--) buf[len - 1] = 0;
    return 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Reads DIR/<name>/pinned: version numbers separated by spaces, commas or
 * newlines, '#' to the end of a line a comment. Returns 0 (no such file),
 * the count (pins sorted, duplicates merged), or -1 with err set (an
 * unreadable or invalid file: the caller changes nothing for the model). */
static long read_pins(const char *dir, const char *name, uint64_t *pins, char *err, size_t errlen)
{
    char buf[2048];
    int got = read_small(dir, name, "pinned", buf, sizeof buf, err, errlen);
    if (got <= 0) return got;
    long n = 0;
    for (char *p = buf; *p;) {
        if (*p == '#') {
            p += strcspn(p, "\n");
            continue;
        }
        if (strchr(" \t\r\n,", *p)) {
            p++;
            continue;
        }
        size_t d = strcspn(p, " \t\r\n,#");
        char word[32];
        uint64_t v;
        snprintf(word, sizeof word, "%.*s", (int)(d < 31 ? d : 31), p);
        if (d > 16 || repo_parse_version(word, &v) < 0) {
            snprintf(err, errlen, "%s/pinned: \"%.20s\" is not a version number", name, word);
            return -1;
        }
        if (n == MODELS_MAX_PINNED) {
            snprintf(err, errlen, "%s/pinned: more than %d versions", name, MODELS_MAX_PINNED);
            return -1;
        }
        pins[n++] = v;
        p += d;
    }
    if (!n) {
        snprintf(err, errlen, "%s/pinned: no version number in it (delete the file to serve the latest)", name);
        return -1;
    }
    qsort(pins, (size_t)n, sizeof *pins, cmp_u64);
    long k = 0;
    for (long i = 0; i < n; i++)
        if (!k || pins[k - 1] != pins[i]) pins[k++] = pins[i];
    return k;
}

static int is_pinned(const uint64_t *pins, size_t n, uint64_t v)
{
    for (size_t i = 0; i < n; i++)
        if (pins[i] == v) return 1;
    return 0;
}

/* Applies the model directory's `canary` ("VERSION PERCENT") and `shadow`
 * ("VERSION") files, the declarative form of the admin endpoints, shared by
 * every replica and kept across restarts: a file's content is applied when
 * it differs from what was last applied from it (so the admin endpoints
 * may change the split meanwhile); a file removed ends what it set. A file
 * that cannot be read, parsed or applied (its version not serving) is
 * reported (log, /v1/models' traffic_error), changes nothing, and is tried
 * again at the next sync. */
static void apply_traffic_files(srv_models *ms, const char *name)
{
    static const char *const files[2] = {"canary", "shadow"};
    char err[200] = "";
    for (int t = 0; t < 2 && !err[0]; t++) {
        char buf[48], last[48];
        int got = read_small(ms->cfg->model_repository, name, files[t], buf, sizeof buf, err, sizeof err);
        if (got < 0) break;
        pthread_mutex_lock(&ms->mu);
        model *m = find_model(ms, name);
        snprintf(last, sizeof last, "%s", m ? m->traffic_file[t] : "");
        pthread_mutex_unlock(&ms->mu);
        if (!m || (got ? !strcmp(buf, last) : !last[0])) continue; /* unchanged */
        int rc;
        if (!got) { /* removed: end what it set */
            rc = t ? models_set_shadow(ms, name, 0, err, sizeof err) : models_set_canary(ms, name, 0, 0, err, sizeof err);
        } else {
            unsigned long long v = 0;
            double pct = 0;
            char extra;
            int ok = t ? sscanf(buf, "%llu %c", &v, &extra) == 1
                       : sscanf(buf, "%llu %lf %c", &v, &pct, &extra) == 2 && pct > 0 && pct <= 100;
            if (!ok || !v || v > REPO_VERSION_MAX) {
                snprintf(err, sizeof err, "%s/%s: expected %s, got \"%.30s\"", name, files[t],
                         t ? "a version number" : "a version number and a percentage (0 < p <= 100)", buf);
                break;
            }
            rc = t ? models_set_shadow(ms, name, v, err, sizeof err) : models_set_canary(ms, name, v, pct, err, sizeof err);
        }
        if (rc < 0) break;
        pthread_mutex_lock(&ms->mu);
        if ((m = find_model(ms, name))) snprintf(m->traffic_file[t], sizeof m->traffic_file[t], "%s", got ? buf : "");
        pthread_mutex_unlock(&ms->mu);
    }
    pthread_mutex_lock(&ms->mu);
    model *m = find_model(ms, name);
    int changed = m && strcmp(m->traffic_error, err);
    if (changed) snprintf(m->traffic_error, sizeof m->traffic_error, "%s", err);
    pthread_mutex_unlock(&ms->mu);
    if (changed && err[0]) {
        char n1[300];
        log_msg(LOG_ERROR, "traffic file not applied: the model's canary and shadow stay as they are",
                "\"error\":\"%s\"", log_esc(err, n1, sizeof n1));
    }
}

static int sync_repo(srv_models *ms, models_change *ch, char *err, size_t errlen)
{
    repo_scan s;
    if (repo_scan_dir(ms->cfg->model_repository, &s, err, errlen) < 0) return RK_ERELOAD;
    size_t keep = ms->cfg->keep_versions;
    pthread_mutex_lock(&ms->mu);
    for (size_t i = 0; i < ms->n_models; i++) ms->models[i].seen = 0;
    pthread_mutex_unlock(&ms->mu);
    int rc = 0;
    for (size_t lo = 0, hi; lo < s.n; lo = hi) {
        entries_of(&s, lo, &hi);
        const char *name = s.v[lo].name;
        uint64_t pins[MODELS_MAX_PINNED];
        char pin_err[200] = "";
        long n_pins = read_pins(ms->cfg->model_repository, name, pins, pin_err, sizeof pin_err);
        pthread_mutex_lock(&ms->mu);
        model *pm = find_model(ms, name);
        if (!pm && n_pins < 0 && !(pm = add_model(ms, name))) { /* listed with its error */
            pthread_mutex_unlock(&ms->mu);
            rc = RK_ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        int pin_changed = 0;
        if (pm) {
            pm->seen = 1;
            pin_changed = strcmp(pm->pin_error, pin_err) != 0;
            snprintf(pm->pin_error, sizeof pm->pin_error, "%s", pin_err);
            if (n_pins >= 0) {
                pin_changed |= pm->n_pinned != (size_t)n_pins || memcmp(pm->pinned, pins, (size_t)n_pins * sizeof *pins);
                memcpy(pm->pinned, pins, (size_t)(n_pins > 0 ? n_pins : 0) * sizeof *pins);
                pm->n_pinned = (size_t)n_pins;
            }
        }
        pthread_mutex_unlock(&ms->mu);
        if (n_pins < 0) { /* an invalid pin list changes nothing for this model */
            if (pin_changed) {
                char n1[300];
                log_msg(LOG_ERROR, "pinned versions file invalid: the model's versions stay as they are",
                        "\"error\":\"%s\"", log_esc(pin_err, n1, sizeof n1));
            }
            continue;
        }
        if (pin_changed && n_pins) {
            char n1[160];
            log_msg(LOG_INFO, "versions pinned", "\"model\":\"%s\",\"count\":%ld", log_esc(name, n1, sizeof n1), n_pins);
        }
        /* newest first: keep the highest `keep` that serve or load, or
         * every pinned version that serves or loads */
        uint64_t chosen[MODELS_MAX_PINNED > 64 ? MODELS_MAX_PINNED : 64];
        size_t n_chosen = 0, limit = n_pins ? (size_t)n_pins : keep;
        for (size_t j = hi; j-- > lo && n_chosen < limit;) {
            const repo_entry *e = &s.v[j];
            if (n_pins && !is_pinned(pins, (size_t)n_pins, e->version)) continue;
            int serving = 0, failed_same = 0;
            pthread_mutex_lock(&ms->mu);
            model *m = find_model(ms, name);
            if (m) {
                m->seen = 1;
                long k = find_row(m, e->version, 1u << ROW_SERVING);
                if (k >= 0 && repo_same_file(&m->rows[k].file, e)) serving = 1;
                long f = find_row(m, e->version, 1u << ROW_FAILED);
                if (f >= 0 && !m->rows[f].retry &&
                    (e->error[0] ? !strcmp(m->rows[f].error, e->error) : repo_same_file(&m->rows[f].file, e)))
                    failed_same = 1;
            }
            pthread_mutex_unlock(&ms->mu);
            if (serving) {
                chosen[n_chosen++] = e->version;
                continue;
            }
            if (failed_same) continue; /* tried again when its file changes */
            int lr = load_row(ms, name, e, ch);
            if (lr < 0) {
                rc = RK_ENOMEM;
                snprintf(err, errlen, "out of memory");
                goto done;
            }
            if (lr) chosen[n_chosen++] = e->version;
        }
        /* the rest: served versions beyond the chosen ones unload, rows
         * of versions gone from the directory go; but when none of the
         * versions it should serve loads, what serves keeps serving */
        mv *gone[64];
        size_t n_gone = 0;
        pthread_mutex_lock(&ms->mu);
        if (!n_chosen) {
            model *m = find_model(ms, name);
            size_t serving = 0;
            for (size_t k = 0; m && k < m->n_rows; k++) serving += m->rows[k].state == ROW_SERVING;
            pthread_mutex_unlock(&ms->mu);
            if (serving && (ch ? ch->failed : 1)) {
                char n1[160];
                log_msg(LOG_WARN, "no version the model should serve loads: the versions serving keep serving",
                        "\"model\":\"%s\",\"serving\":%zu", log_esc(name, n1, sizeof n1), serving);
            }
            if (serving) continue;
            pthread_mutex_lock(&ms->mu);
        }
        model *m = find_model(ms, name);
        for (size_t k = 0; m && k < m->n_rows;) {
            row *r = &m->rows[k];
            int keep_it = r->state == ROW_UNLOADING || r->state == ROW_LOADING;
            for (size_t c = 0; !keep_it && c < n_chosen; c++) keep_it = r->state == ROW_SERVING && r->number == chosen[c];
            if (!keep_it && r->state == ROW_FAILED) {
                const repo_entry *e = repo_find(&s, name, r->number);
                keep_it = e != NULL; /* still there: still reported */
            }
            if (keep_it) {
                k++;
                continue;
            }
            size_t before = m->n_rows;
            mv *g = retire_row(m, k, ch);
            keep_gone(ms, g, gone, &n_gone);
            if (m->n_rows == before) k++;
        }
        update_single(ms);
        unlock_and_forget(ms, gone, n_gone);
        apply_traffic_files(ms, name);
    }
    /* models gone from the directory: every version unloads */
    pthread_mutex_lock(&ms->mu);
    mv *gone[64];
    size_t n_gone = 0;
    for (size_t i = 0; i < ms->n_models; i++) {
        model *m = &ms->models[i];
        if (m->seen) continue;
        m->pin_error[0] = 0;
        for (size_t k = 0; k < m->n_rows;) {
            size_t before = m->n_rows;
            row_state st = m->rows[k].state;
            mv *g = st == ROW_UNLOADING ? NULL : retire_row(m, k, ch);
            keep_gone(ms, g, gone, &n_gone);
            if (m->n_rows == before) k++;
        }
    }
    unlock_and_forget(ms, gone, n_gone);
done:
    repo_scan_free(&s);
    return rc;
}

int models_sync(srv_models *ms, models_change *ch, char *err, size_t errlen)
{
    if (ch) memset(ch, 0, sizeof *ch);
    err[0] = 0;
    int rc = ms->file_mode ? sync_file(ms, ch, err, errlen) : sync_repo(ms, ch, err, errlen);
    if (rc == 0 && ch && ch->failed && !err[0]) snprintf(err, errlen, "%s", ch->first_error);
    return rc;
}

/* ------------------------------------------------------------ routing */

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* A key's bucket for model name: 0..9999. */
static unsigned bucket_of(const char *name, const char *key)
{
    uint64_t h = fnv1a(0xcbf29ce484222325ull, name, strlen(name) + 1);
    h = fnv1a(h, key, strlen(key));
    h ^= h >> 29; /* FNV's low bits mix poorly for short keys */
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return (unsigned)(h % 10000);
}

static unsigned random_bucket(void)
{
    static _Thread_local uint64_t x;
    if (!x) x = (uint64_t)(uintptr_t)&x ^ (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return (unsigned)(x % 10000);
}

/* Under mu. Writes the served versions of m ("1, 2") into out. */
static void list_versions(const model *m, char *out, size_t n)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t k = 0; k < m->n_rows && o + 24 < n; k++) {
        if (m->rows[k].state != ROW_SERVING) continue;
        o += (size_t)snprintf(out + o, n - o, "%s%s", o ? ", " : "", m->rows[k].v->label);
    }
    if (!o) snprintf(out, n, "none");
}

static void list_models(const srv_models *ms, char *out, size_t n)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < ms->n_models && o + MODELS_NAME_MAX + 8 < n; i++)
        o += (size_t)snprintf(out + o, n - o, "%s\"%s\"", o ? ", " : "", ms->models[i].name);
    if (!o) snprintf(out, n, "none");
}

/* Under mu. RK_ENOTFOUND with a message naming the models. */
static int no_model(const srv_models *ms, const char *name, char *err, size_t errlen)
{
    char list[512];
    list_models(ms, list, sizeof list);
    snprintf(err, errlen, "no model \"%.64s\"; models: %s", name, list);
    return RK_ENOTFOUND;
}

/* Under mu. RK_ENOTFOUND with a message naming m's serving versions. */
static int not_serving(const model *m, uint64_t version, char *err, size_t errlen)
{
    char list[512];
    list_versions(m, list, sizeof list);
    snprintf(err, errlen, "model \"%s\" has no version %llu serving; serving: %s", m->name,
             (unsigned long long)version, list);
    return RK_ENOTFOUND;
}

/* Under mu. The serving row of highest number other than `not` (0: any). */
static row *latest(model *m, uint64_t not)
{
    for (size_t k = m->n_rows; k-- > 0;)
        if (m->rows[k].state == ROW_SERVING && m->rows[k].number != not) return &m->rows[k];
    return NULL;
}

int models_route(srv_models *ms, const char *name, uint64_t version, const char *key, mv **out, mv **shadow,
                 char *err, size_t errlen)
{
    char list[512];
    int rc = 0;
    *out = NULL;
    if (shadow) *shadow = NULL;
    pthread_mutex_lock(&ms->mu);
    model *m = NULL;
    if (name) {
        if (!(m = find_model(ms, name))) {
            rc = no_model(ms, name, err, errlen);
            goto out;
        }
    } else {
        size_t n = 0;
        for (size_t i = 0; i < ms->n_models; i++)
            if (latest(&ms->models[i], 0)) {
                m = &ms->models[i];
                n++;
            }
        if (n != 1) {
            list_models(ms, list, sizeof list);
            if (n) snprintf(err, errlen, "this server serves %zu models: name one with \"model\" (%s)", n, list);
            else snprintf(err, errlen, "no model is being served yet (models: %s)", list);
            rc = n ? RK_ESCHEMA : RK_EUNAVAIL;
            goto out;
        }
    }
    row *r = NULL;
    if (version) {
        long k = find_row(m, version, 1u << ROW_SERVING);
        if (k < 0) {
            rc = not_serving(m, version, err, errlen);
            goto out;
        }
        r = &m->rows[k];
    } else {
        long c = m->canary_bp ? find_row(m, m->canary_version, 1u << ROW_SERVING) : -1;
        row *base = latest(m, c >= 0 ? m->canary_version : 0);
        if (c >= 0 && base) {
            unsigned b = key ? bucket_of(m->name, key) : random_bucket();
            r = b < m->canary_bp ? &m->rows[c] : base;
        } else {
            r = base ? base : c >= 0 ? &m->rows[c] : NULL;
        }
        if (!r) {
            snprintf(err, errlen, "model \"%s\" has no version serving", m->name);
            rc = RK_EUNAVAIL;
            goto out;
        }
    }
    *out = mv_retain(r->v);
    if (shadow && m->shadow_version && m->shadow_version != r->number) {
        long k = find_row(m, m->shadow_version, 1u << ROW_SERVING);
        if (k >= 0) *shadow = mv_retain(m->rows[k].v);
    }
out:
    pthread_mutex_unlock(&ms->mu);
    return rc;
}

int models_set_shadow(srv_models *ms, const char *name, uint64_t version, char *err, size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&ms->mu);
    model *m = find_model(ms, name);
    if (!m) {
        rc = no_model(ms, name, err, errlen);
    } else if (version && find_row(m, version, 1u << ROW_SERVING) < 0) {
        rc = not_serving(m, version, err, errlen);
    } else if (version && !m->shadow && !(m->shadow = malloc(sizeof *m->shadow))) {
        snprintf(err, errlen, "out of memory");
        rc = RK_ENOMEM;
    } else {
        if (version && version != m->shadow_version) shadow_reset(m->shadow);
        m->shadow_version = version;
    }
    pthread_mutex_unlock(&ms->mu);
    if (rc == 0) {
        char n1[160];
        log_msg(LOG_INFO, "shadow set", "\"model\":\"%s\",\"version\":%llu", log_esc(name, n1, sizeof n1),
                (unsigned long long)version);
    }
    return rc;
}

void models_shadow_result(srv_models *ms, const char *name, uint64_t version, models_shadow_outcome o,
                          double score_diff, double rank_corr)
{
    pthread_mutex_lock(&ms->mu);
    model *m = find_model(ms, name);
    if (m && m->shadow && m->shadow_version == version) { /* else: the shadow changed meanwhile */
        m->shadow->outcomes[o]++;
        if (o == MODELS_SHADOW_SCORED) {
            if (isfinite(score_diff)) met_hist_observe(&m->shadow->score_diff, score_diff);
            if (isfinite(rank_corr)) met_hist_observe(&m->shadow->rank_corr, rank_corr);
        }
    }
    pthread_mutex_unlock(&ms->mu);
}

int models_set_canary(srv_models *ms, const char *name, uint64_t version, double percent, char *err,
                      size_t errlen)
{
    if (!(percent >= 0 && percent <= 100)) {
        snprintf(err, errlen, "percent: expected a number from 0 to 100");
        return RK_ESCHEMA;
    }
    unsigned bp = (unsigned)lround(percent * 100);
    int rc = 0;
    pthread_mutex_lock(&ms->mu);
    model *m = find_model(ms, name);
    if (!m) {
        rc = no_model(ms, name, err, errlen);
    } else if (bp && find_row(m, version, 1u << ROW_SERVING) < 0) {
        rc = not_serving(m, version, err, errlen);
    } else {
        m->canary_version = bp ? version : 0;
        m->canary_bp = bp;
    }
    pthread_mutex_unlock(&ms->mu);
    if (rc == 0) {
        char n1[160];
        log_msg(LOG_INFO, "canary set", "\"model\":\"%s\",\"version\":%llu,\"percent\":%.2f",
                log_esc(name, n1, sizeof n1), (unsigned long long)(bp ? version : 0), bp / 100.0);
    }
    return rc;
}

size_t models_serving(srv_models *ms)
{
    size_t n = 0;
    pthread_mutex_lock(&ms->mu);
    for (size_t i = 0; i < ms->n_models; i++)
        for (size_t k = 0; k < ms->models[i].n_rows; k++) n += ms->models[i].rows[k].state == ROW_SERVING;
    pthread_mutex_unlock(&ms->mu);
    return n;
}

size_t models_serving_list(srv_models *ms, mv ***out)
{
    *out = NULL;
    pthread_mutex_lock(&ms->mu);
    size_t n = 0;
    for (size_t i = 0; i < ms->n_models; i++)
        for (size_t k = 0; k < ms->models[i].n_rows; k++) n += ms->models[i].rows[k].state == ROW_SERVING;
    mv **a = n ? malloc(n * sizeof *a) : NULL;
    size_t j = 0;
    for (size_t i = 0; a && i < ms->n_models; i++)
        for (size_t k = 0; k < ms->models[i].n_rows; k++)
            if (ms->models[i].rows[k].state == ROW_SERVING) a[j++] = mv_retain(ms->models[i].rows[k].v);
    pthread_mutex_unlock(&ms->mu);
    *out = a;
    return a ? j : 0;
}

/* ------------------------------------------------------------ description */

/* Under mu. 1 if row k of m is an unloading version with the label of
 * another row (the same number from a new file, or a model file reloaded
 * with the same version string): per-version series skip it, so that each
 * (model, version) pair has one. */
static int shadowed_label(const model *m, size_t k)
{
    const row *r = &m->rows[k];
    if (r->state != ROW_UNLOADING || !r->v) return 0;
    for (size_t j = 0; j < m->n_rows; j++)
        if (j != k && m->rows[j].v && !strcmp(m->rows[j].v->label, r->v->label)) return 1;
    return 0;
}

/* Under mu. */
static void model_json(const model *m, rk_buf *b)
{
    rk_buf_puts(b, "{\"name\":");
    rk_buf_json_str(b, m->name, strlen(m->name));
    if (m->canary_bp)
        rk_buf_printf(b, ",\"canary\":{\"version\":\"%llu\",\"percent\":%.2f}", (unsigned long long)m->canary_version,
                      m->canary_bp / 100.0);
    else
        rk_buf_puts(b, ",\"canary\":null");
    if (m->shadow_version && m->shadow) {
        const shadow_stats *st = m->shadow;
        rk_buf_printf(b, ",\"shadow\":{\"version\":\"%llu\"", (unsigned long long)m->shadow_version);
        for (int o = 0; o < MODELS_SHADOW_N; o++)
            rk_buf_printf(b, ",\"%s\":%llu", outcome_names[o], (unsigned long long)st->outcomes[o]);
        if (st->score_diff.count)
            rk_buf_printf(b, ",\"mean_score_diff\":%.9g", st->score_diff.sum / (double)st->score_diff.count);
        else
            rk_buf_puts(b, ",\"mean_score_diff\":null");
        if (st->rank_corr.count)
            rk_buf_printf(b, ",\"mean_rank_correlation\":%.9g}", st->rank_corr.sum / (double)st->rank_corr.count);
        else
            rk_buf_puts(b, ",\"mean_rank_correlation\":null}");
    } else {
        rk_buf_puts(b, ",\"shadow\":null");
    }
    if (m->n_pinned) {
        rk_buf_puts(b, ",\"pinned\":[");
        for (size_t k = 0; k < m->n_pinned; k++) rk_buf_printf(b, "%s\"%llu\"", k ? "," : "", (unsigned long long)m->pinned[k]);
        rk_buf_puts(b, "]");
    } else {
        rk_buf_puts(b, ",\"pinned\":null");
    }
    if (m->pin_error[0]) {
        rk_buf_puts(b, ",\"pinned_error\":");
        rk_buf_json_str(b, m->pin_error, strlen(m->pin_error));
    }
    if (m->traffic_error[0]) {
        rk_buf_puts(b, ",\"traffic_error\":");
        rk_buf_json_str(b, m->traffic_error, strlen(m->traffic_error));
    }
    rk_buf_puts(b, ",\"versions\":[");
    for (size_t k = 0; k < m->n_rows; k++) {
        const row *r = &m->rows[k];
        rk_buf_printf(b, "%s{\"version\":", k ? "," : "");
        if (r->v) rk_buf_json_str(b, r->v->label, strlen(r->v->label));
        else rk_buf_printf(b, "\"%llu\"", (unsigned long long)r->number);
        rk_buf_printf(b, ",\"state\":\"%s\"", state_names[r->state]);
        if (r->state == ROW_FAILED) {
            rk_buf_puts(b, ",\"reason\":");
            rk_buf_json_str(b, r->error, strlen(r->error));
        }
        if (r->file.path) {
            rk_buf_puts(b, ",\"file\":");
            rk_buf_json_str(b, r->file.path, strlen(r->file.path));
        }
        if (r->v) {
            const dcn_info *in = dcn_model_info(r->v->m);
            rk_buf_puts(b, ",\"model_version\":");
            rk_buf_json_str(b, in->version, strlen(in->version));
            rk_buf_printf(b, ",\"file_bytes\":%llu,\"dense_bytes\":%zu,\"loaded_at\":%.3f,\"requests\":%llu,"
                             "\"candidates\":%llu,\"in_flight\":%u",
                          (unsigned long long)in->file_bytes, in->packed_bytes, r->v->loaded_unix,
                          (unsigned long long)atomic_load_explicit(&r->v->requests, memory_order_relaxed),
                          (unsigned long long)atomic_load_explicit(&r->v->candidates, memory_order_relaxed),
                          atomic_load_explicit(&r->v->refs, memory_order_relaxed) - 1);
        }
        rk_buf_puts(b, "}");
    }
    rk_buf_puts(b, "]}");
}

int models_json(srv_models *ms, const char *name, rk_buf *b)
{
    int rc = 0;
    mv_list drop = {.n = 0};
    pthread_mutex_lock(&ms->mu);
    reap(ms, &drop);
    if (name) {
        model *m = find_model(ms, name);
        if (m) model_json(m, b);
        else rc = RK_ENOTFOUND;
    } else {
        rk_buf_puts(b, "[");
        for (size_t i = 0; i < ms->n_models; i++) {
            if (i) rk_buf_puts(b, ",");
            model_json(&ms->models[i], b);
        }
        rk_buf_puts(b, "]");
    }
    pthread_mutex_unlock(&ms->mu);
    drop_all(&drop);
    return rc;
}

static void put_label(rk_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') rk_buf_printf(b, "\\%c", *s);
        else if (*s == '\n') rk_buf_puts(b, "\\n");
        else rk_buf_put(b, s, 1);
    }
}

void models_metrics(srv_models *ms, rk_buf *b)
{
    static const char *const heads[] = {
        "# HELP dcnserve_version_state Each listed model version by state (1 in its state's series).\n"
        "# TYPE dcnserve_version_state gauge\n",
        "# HELP dcnserve_version_requests_total Requests answered with scores, by model version.\n"
        "# TYPE dcnserve_version_requests_total counter\n",
        "# HELP dcnserve_version_candidates_total Candidates scored, by model version.\n"
        "# TYPE dcnserve_version_candidates_total counter\n",
        "# HELP dcnserve_version_bytes Bytes of a loaded model version: its file (mapped) and its dense layers as the kernels read them.\n"
        "# TYPE dcnserve_version_bytes gauge\n",
        "# HELP dcnserve_version_in_flight Requests holding a model version now.\n"
        "# TYPE dcnserve_version_in_flight gauge\n",
        "# HELP dcnserve_version_request_duration_seconds /rank requests answered with scores, arrival to answer, by model version.\n"
        "# TYPE dcnserve_version_request_duration_seconds histogram\n",
    };
    pthread_mutex_lock(&ms->mu);
    for (int part = 0; part < 6; part++) {
        rk_buf_puts(b, heads[part]);
        if (part == 5) {
            for (size_t i = 0; i < ms->n_models; i++) {
                const model *m = &ms->models[i];
                for (size_t k = 0; k < m->n_rows; k++) {
                    mv *v = m->rows[k].v;
                    if (!v || shadowed_label(m, k)) continue;
                    rk_buf lab = {0};
                    rk_buf_puts(&lab, "model=\"");
                    put_label(&lab, m->name);
                    rk_buf_puts(&lab, "\",version=\"");
                    put_label(&lab, v->label);
                    rk_buf_puts(&lab, "\"");
                    pthread_mutex_lock(&v->hist_mu);
                    met_hist h = v->seconds;
                    pthread_mutex_unlock(&v->hist_mu);
                    if (lab.data) met_put_hist(b, "dcnserve_version_request_duration_seconds", lab.data, &h);
                    free(lab.data);
                }
            }
            continue;
        }
        for (size_t i = 0; i < ms->n_models; i++) {
            const model *m = &ms->models[i];
            for (size_t k = 0; k < m->n_rows; k++) {
                const row *r = &m->rows[k];
                if (part && (!r->v || shadowed_label(m, k))) continue;
                const char *metric[] = {"dcnserve_version_state", "dcnserve_version_requests_total",
                                        "dcnserve_version_candidates_total", "dcnserve_version_bytes",
                                        "dcnserve_version_in_flight"};
                int n_series = part == 3 ? 2 : 1;
                for (int sidx = 0; sidx < n_series; sidx++) {
                    rk_buf_printf(b, "%s{model=\"", metric[part]);
                    put_label(b, m->name);
                    rk_buf_puts(b, "\",version=\"");
                    if (r->v) put_label(b, r->v->label);
                    else rk_buf_printf(b, "%llu", (unsigned long long)r->number);
                    if (part == 0) {
                        rk_buf_printf(b, "\",state=\"%s\"} 1\n", state_names[r->state]);
                    } else if (part == 1) {
                        rk_buf_printf(b, "\"} %llu\n", (unsigned long long)atomic_load_explicit(&r->v->requests, memory_order_relaxed));
                    } else if (part == 2) {
                        rk_buf_printf(b, "\"} %llu\n", (unsigned long long)atomic_load_explicit(&r->v->candidates, memory_order_relaxed));
                    } else if (part == 3) {
                        const dcn_info *in = dcn_model_info(r->v->m);
                        rk_buf_printf(b, "\",kind=\"%s\"} %llu\n", sidx ? "dense" : "file",
                                      sidx ? (unsigned long long)in->packed_bytes : (unsigned long long)in->file_bytes);
                    } else {
                        rk_buf_printf(b, "\"} %u\n", atomic_load_explicit(&r->v->refs, memory_order_relaxed) - 1);
                    }
                }
            }
        }
    }
    /* shadow scoring, per model and shadow version */
    rk_buf_puts(b, "# HELP dcnserve_shadow_requests_total Shadow scorings by outcome: scored, skipped_busy (no idle worker or a queue: never started), dropped (not scored in time), failed.\n"
                   "# TYPE dcnserve_shadow_requests_total counter\n");
    for (size_t i = 0; i < ms->n_models; i++) {
        const model *m = &ms->models[i];
        if (!m->shadow_version || !m->shadow) continue;
        for (int o = 0; o < MODELS_SHADOW_N; o++) {
            rk_buf_puts(b, "dcnserve_shadow_requests_total{model=\"");
            put_label(b, m->name);
            rk_buf_printf(b, "\",version=\"%llu\",outcome=\"%s\"} %llu\n", (unsigned long long)m->shadow_version,
                          outcome_names[o], (unsigned long long)m->shadow->outcomes[o]);
        }
    }
    for (int part = 0; part < 2; part++) {
        const char *name = part ? "dcnserve_shadow_rank_correlation" : "dcnserve_shadow_score_diff";
        rk_buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name,
                      part ? "Per shadowed request: Spearman's rank correlation of the shadow version's scores with the served ones."
                           : "Per shadowed request: mean absolute difference of the shadow version's scores from the served ones.",
                      name);
        for (size_t i = 0; i < ms->n_models; i++) {
            const model *m = &ms->models[i];
            if (!m->shadow_version || !m->shadow) continue;
            rk_buf lab = {0};
            rk_buf_puts(&lab, "model=\"");
            put_label(&lab, m->name);
            rk_buf_printf(&lab, "\",version=\"%llu\"", (unsigned long long)m->shadow_version);
            if (lab.data) met_put_hist(b, name, lab.data, part ? &m->shadow->rank_corr : &m->shadow->score_diff);
            free(lab.data);
        }
    }
    pthread_mutex_unlock(&ms->mu);
}

int models_status(srv_models *ms, status_sample *out)
{
    pthread_mutex_lock(&ms->mu);
    size_t nv = 0, nsh = 0;
    for (size_t i = 0; i < ms->n_models; i++) {
        for (size_t k = 0; k < ms->models[i].n_rows; k++) nv += ms->models[i].rows[k].v != NULL;
        nsh += ms->models[i].shadow_version && ms->models[i].shadow;
    }
    out->v = nv ? calloc(nv, sizeof *out->v) : NULL;
    out->sh = nsh ? calloc(nsh, sizeof *out->sh) : NULL;
    if ((nv && !out->v) || (nsh && !out->sh)) {
        pthread_mutex_unlock(&ms->mu);
        status_sample_free(out);
        return RK_ENOMEM;
    }
    for (size_t i = 0; i < ms->n_models; i++) {
        const model *m = &ms->models[i];
        for (size_t k = 0; k < m->n_rows; k++) {
            mv *v = m->rows[k].v;
            if (!v || shadowed_label(m, k)) continue;
            status_version *o = &out->v[out->n_v++];
            snprintf(o->model, sizeof o->model, "%s", m->name);
            snprintf(o->version, sizeof o->version, "%s", v->label);
            o->serving = m->rows[k].state == ROW_SERVING;
            o->requests = atomic_load_explicit(&v->requests, memory_order_relaxed);
            o->candidates = atomic_load_explicit(&v->candidates, memory_order_relaxed);
            pthread_mutex_lock(&v->hist_mu);
            o->seconds = v->seconds;
            pthread_mutex_unlock(&v->hist_mu);
        }
        if (m->shadow_version && m->shadow) {
            status_shadow *o = &out->sh[out->n_sh++];
            const shadow_stats *st = m->shadow;
            snprintf(o->model, sizeof o->model, "%s", m->name);
            snprintf(o->version, sizeof o->version, "%llu", (unsigned long long)m->shadow_version);
            o->scored = st->outcomes[MODELS_SHADOW_SCORED];
            o->skipped = st->outcomes[MODELS_SHADOW_SKIPPED];
            o->dropped = st->outcomes[MODELS_SHADOW_DROPPED];
            o->failed = st->outcomes[MODELS_SHADOW_FAILED];
            o->diff_sum = st->score_diff.sum;
            o->diff_n = st->score_diff.count;
            o->corr_sum = st->rank_corr.sum;
            o->corr_n = st->rank_corr.count;
        }
    }
    pthread_mutex_unlock(&ms->mu);
    return 0;
}
