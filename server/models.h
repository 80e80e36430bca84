/* models.h — the models and versions one server serves: loading them from
 * a file (--model) or a repository directory (--model-repository, laid out
 * as repo.h says), routing each request to a version (named, the latest,
 * or a sticky canary split), unloading them, and describing them.
 *
 * DESIGN
 * - Two kinds of object. A version (mv) is what a request holds: the
 *   engine's model, its name and version, and its counters, reference
 *   counted (the table holds one reference while it is served or
 *   unloading, each request one from routing to its answer). The table
 *   (srv_models) lists per model its versions' rows: number, state
 *   (loading, serving, failed with the reason, unloading), file identity,
 *   bytes; and the model's canary split.
 * - Threads. models_sync (start-up, SIGHUP, POST /admin/reload, the poll
 *   timer) runs on one thread at a time, never an event loop: the server
 *   runs it on libuv's threadpool and never starts a second while one is
 *   in flight. It is the only writer of rows and versions. Every other
 *   function runs on any thread. One mutex guards the table; the slow work
 *   (opening, validating, warming a version and preparing the workers'
 *   states for it) runs outside it, so requests keep being routed while a
 *   version loads.
 * - Order of a change, so that no request fails: a new version serves
 *   (its row SERVING, routable) before the versions it replaces stop being
 *   routable (UNLOADING); an unloading version stays listed until the last
 *   request holding it is answered: the release that leaves only the
 *   table's reference drops its row and unmaps its file (on the thread
 *   that released it). A version that fails to
 *   load (or a directory without exactly one *.dcn) is FAILED with its
 *   reason and never routable; what was served keeps serving. A failed
 *   version is tried again only when its file changes (repo_same_file).
 * - Which versions serve: with a repository, per model, the highest
 *   `keep_versions` version numbers among those that load; or, when the
 *   model's directory holds a file named `pinned` (version numbers), the
 *   versions it lists that load. An invalid `pinned` file is reported
 *   (log, /v1/models) and changes nothing for that model. With a file,
 *   one model (named by the file) with one version, number 1, whose
 *   answers carry the file's own version string; a sync reopens the file
 *   (a reload), serving the new one before the old one unloads.
 * - Routing: the model named (or the only one served); the version named,
 *   or else the canary split when the model has one (a percentage of keys
 *   to the canary version, the rest to the highest other serving
 *   version; the key hashed with the model's name, so the same key always
 *   lands on the same version while the split stands), or else the
 *   highest serving version. A request without a routing key counts as a
 *   random key.
 * - Canary splits and shadows are set by the admin endpoints, or by the
 *   model directory's `canary` ("VERSION PERCENT") and `shadow` ("VERSION")
 *   files, read at each sync after the versions: a file's content is
 *   applied when it changed since it was last applied (the endpoints may
 *   change the split in between), a removed file ends what it set, and a
 *   file that cannot be applied is reported and tried again.
 * - Ownership: the table owns its rows and one reference per listed
 *   version; models_route gives the caller a reference (mv_release).
 */
#ifndef SRV_MODELS_H
#define SRV_MODELS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "model/dcn.h"
#include "proto/rk.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/score.h"

#define MODELS_NAME_MAX 64
#define MODELS_MAX_PINNED 64

typedef struct srv_models srv_models;

/* A served version; read-only once routable, but for the counters. */
typedef struct mv {
    dcn_model *m;
    char name[MODELS_NAME_MAX + 1];
    uint64_t number;
    char label[40];              /* the version in answers */
    double loaded_unix;
    struct srv_models *ms;       /* its table, which outlives it */
    atomic_uint refs;
    atomic_int unloading;        /* set once no longer routable */
    atomic_ullong requests, candidates; /* answered with scores */
    pthread_mutex_t hist_mu;     /* guards seconds */
    met_hist seconds;            /* its /rank requests, arrival to answer */
} mv;

/* What models_sync changed, for logs and the reload answer. */
typedef struct models_change {
    unsigned loaded, failed, unloaded;
    char first_error[256];       /* "" or the first failure's reason */
} models_change;

/* A table for cfg (file or repository), preparing worker states in sctx
 * for n_workers workers. Serves nothing until models_sync. NULL: out of
 * memory. */
srv_models *models_new(const srv_config *cfg, score_ctx *sctx, size_t n_workers);
/* Frees the table and drops its references (requests may still hold
 * theirs). After the workers are joined. */
void models_free(srv_models *ms);

/* Brings the table in line with the file or the repository (see DESIGN).
 * Returns 0, or a negative rk_err with err set when nothing could be read
 * (repository unreadable; with a file: the file failed to load), the
 * table unchanged. *ch (may be NULL) says what changed. */
int models_sync(srv_models *ms, models_change *ch, char *err, size_t errlen);

/* A reference to the version that scores a request for model `name`
 * (NULL: the only model) and `version` (0: by the rules in DESIGN),
 * sticky on key (NULL: none); and in *shadow (if not NULL) one to the
 * model's shadow version when it has one serving other than *out, else
 * NULL. Returns 0 and *out, or RK_ENOTFOUND / RK_ESCHEMA / RK_EUNAVAIL
 * with a message naming what exists. */
int models_route(srv_models *ms, const char *name, uint64_t version, const char *key, mv **out, mv **shadow,
                 char *err, size_t errlen);
mv *mv_retain(mv *v);
/* Counts a request answered with scores: n candidates, seconds from
 * arrival to answer. Any thread. */
void mv_count(mv *v, size_t n, double seconds);
void mv_release(mv *v); /* NULL is fine */

/* Sets model name's canary: `percent` (0 to 100, two decimals kept) of
 * keys go to `version`, which must be serving; percent 0 removes it.
 * Returns 0, or RK_ENOTFOUND / RK_ESCHEMA with a message. */
int models_set_canary(srv_models *ms, const char *name, uint64_t version, double percent, char *err,
                      size_t errlen);

/* 1 when exactly one version of one model serves (no canary then): a
 * request needs no routing; any thread, one atomic load. */
int models_single(srv_models *ms);

/* Shadow scoring: names a serving version of model name that scores the
 * same requests as the served versions off the critical path (the server
 * decides when: see srv.h), its results counted here; version 0 stops it.
 * A new shadow version starts its statistics afresh. Returns 0, or
 * RK_ENOTFOUND with a message. */
int models_set_shadow(srv_models *ms, const char *name, uint64_t version, char *err, size_t errlen);

typedef enum {
    MODELS_SHADOW_SCORED, MODELS_SHADOW_SKIPPED, MODELS_SHADOW_DROPPED, MODELS_SHADOW_FAILED, MODELS_SHADOW_N
} models_shadow_outcome;
/* Counts one shadowing of a request of model name by its shadow `version`
 * (ignored if the shadow changed since): its outcome and, when scored, the
 * mean absolute score difference from the answer served and Spearman's
 * rank correlation (NaN: fewer than two candidates). Any thread. */
void models_shadow_result(srv_models *ms, const char *name, uint64_t version, models_shadow_outcome o,
                          double score_diff, double rank_corr);

/* Unloads the unloading versions no request holds any more (each is
 * dropped by the release that leaves it unheld; this catches a release
 * that raced with the version's unloading). Any thread, not under the
 * table's lock; the server calls it with every status sample. */
void models_reap(srv_models *ms);

/* How many versions are serving (readiness: at least one). */
size_t models_serving(srv_models *ms);

/* Appends a JSON array of every model: name, canary, versions with
 * state, reason, bytes, load time, requests and candidates (GET
 * /v1/models); or with name, that model's object (returns RK_ENOTFOUND
 * if there is none). */
int models_json(srv_models *ms, const char *name, rk_buf *b);
/* Appends Prometheus lines for every listed version (state, requests,
 * candidates, bytes), labelled model and version. */
void models_metrics(srv_models *ms, rk_buf *b);

/* Fills out's per-version counters and per-model shadow results (the
 * status page's sample; status.h). Returns 0 or RK_ENOMEM. */
struct status_sample;
int models_status(srv_models *ms, struct status_sample *out);

/* The versions serving now, each referenced (release each, free the
 * array). Returns the count; *out NULL when 0 or out of memory. */
size_t models_serving_list(srv_models *ms, mv ***out);

#endif
