/* config.c — option table, environment and flag parsing (see config.h).
 *
 * DESIGN: everything here runs on the main thread before the server starts.
 * An option's variable is derived from its flag (env_name) for --help, the
 * environment and the unknown-variable check alike, so the three cannot
 * disagree. Which source set each option is kept as two bit masks in the
 * config (a flag clears the bit its variable set), so the start-up line can
 * say what the environment changed.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/dcn.h"
#include "server/config.h"
#include "server/log.h"

typedef enum { T_STR, T_U64, T_U64_AUTO, T_BOOL } opt_type; /* T_U64_AUTO: a count or "auto" */

typedef struct opt {
    const char *flag;      /* without the leading "--" */
    opt_type type;
    size_t off;
    const char *def;
    const char *help;
} opt;

#define O(f, t, field, d, h) {f, t, offsetof(srv_config, field), d, h}
static const opt opts[] = {
    O("model", T_STR, model_path, "", "model file (.dcn) to serve (this or --model-repository)"),
    O("model-repository", T_STR, model_repository, "", "directory of models to serve: DIR/<name>/<version>/<file>.dcn (this or --model)"),
    O("keep-versions", T_U64, keep_versions, "1", "with --model-repository: serve each model's latest N versions that load"),
    O("poll-s", T_U64, poll_s, "5", "with --model-repository: rescan it every N seconds (0: only on SIGHUP or POST /admin/reload)"),
    O("host", T_STR, host, "0.0.0.0", "IPv4 or IPv6 address to listen on (\"::\" takes both)"),
    O("port", T_U64, port, "8080", "TCP port (0: any free port, logged)"),
    O("workers", T_U64, workers, "0", "worker threads (0: one per usable CPU, cgroup-aware)"),
    O("loops", T_U64, loops, "0", "event loops serving connections, one port (0: one per four usable CPUs)"),
    O("max-batch-rows", T_U64, max_batch_rows, "256", "rows per engine batch"),
    O("max-queue-rows", T_U64, max_queue_rows, "65536", "rows waiting at once; beyond: busy status"),
    O("max-queue-delay-us", T_U64, max_queue_delay_us, "0", "longest wait to fill a batch (0: never wait while a worker is idle)"),
    O("split-min-rows", T_U64, split_min_rows, "64", "requests above this many rows are split across workers"),
    O("small-batch-threads", T_U64, small_batch_threads, "0", "threads a batch may split its layers of >= 2 MB across, by columns, rows or both (0: as many as workers; 1: off)"),
    O("max-body-bytes", T_U64, max_body_bytes, "8388608", "largest request body"),
    O("max-candidates", T_U64, max_candidates, "10000", "most candidates per request"),
    O("decode-offload-bytes", T_U64_AUTO, decode_offload_bytes, "auto", "bodies this large or larger are decoded on a worker thread, not an event loop (0: all; auto: all when there are more than two workers per loop, else 1048576)"),
    O("max-connections", T_U64, max_connections, "1020", "concurrent connections"),
    O("conn-memory-bytes", T_U64, conn_memory_bytes, "32768", "per-connection memory for headers"),
    O("idle-timeout-s", T_U64, idle_timeout_s, "60", "close connections idle (or trickling nothing) this many seconds (0: never; suspended requests are not idle)"),
    O("drain-delay-ms", T_U64, drain_delay_ms, "5000", "on SIGTERM, keep serving (not ready) this long before closing the listener"),
    O("drain-timeout-ms", T_U64, drain_timeout_ms, "30000", "then wait at most this long for requests in flight"),
    O("retry-after-s", T_U64, retry_after_s, "1", "Retry-After of busy answers"),
    O("busy-status", T_U64, busy_status, "503", "status when the queue is full: 429 or 503"),
    O("lenient", T_BOOL, lenient, "0", "ignore unknown feature names unless a request says \"strict\": true"),
    O("warmup", T_BOOL, warmup, "1", "pre-fault every page of the model before serving it"),
    O("verify", T_BOOL, verify, "0", "check the model file's CRC-32 before serving it"),
    O("int8", T_BOOL, int8, "0", "score with the dense layers quantized to INT8 at load (faster, approximate: PRECISION.md)"),
    O("bf16", T_BOOL, bf16, "0", "score with BF16 dot products: dense weights and each layer's inputs rounded to BF16, float32 sums (vdpbf16ps; approximate: PRECISION.md)"),
    O("status-sample-s", T_U64, status_sample_s, "10", "seconds between the samples the status page (GET /status) plots: 90 of them are kept"),
    O("admin-token", T_STR, admin_token, "", "bearer token for /admin/*; empty: loopback clients only"),
    O("access-log", T_BOOL, access_log, "0", "log one line per request"),
    O("log-level", T_STR, log_level, "info", "debug, info, warn or error"),
};
#undef O
#define N_OPTS (sizeof opts / sizeof opts[0])

/* Stores text into the option's field; returns 0 or -1 with a message. */
static int set(srv_config *c, const opt *o, const char *v, const char *from)
{
    char *p = (char *)c + o->off;
    if (o->type == T_STR) {
        *(const char **)p = v;
        return 0;
    }
    if (o->type == T_BOOL) {
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on")) *(int *)p = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off")) *(int *)p = 0;
        else goto bad;
        return 0;
    }
    if (o->type == T_U64_AUTO && !strcmp(v, "auto")) {
        *(uint64_t *)p = CFG_AUTO;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-') goto bad;
    *(uint64_t *)p = x;
    return 0;
bad:
    fprintf(stderr, "dcnserve: %s: bad value \"%s\" for %s\n", from, v, o->flag);
    return -1;
}

_Static_assert(N_OPTS <= 64, "srv_config's from_env and from_flags hold one bit per option");

#define ENV_PREFIX "DCNSERVE_"

const char *cfg_option_flag(size_t i) { return i < N_OPTS ? opts[i].flag : NULL; }

int cfg_env_name(const char *flag, char *out, size_t n)
{
    size_t o = strlen(ENV_PREFIX);
    if (n <= o + strlen(flag)) goto fail;
    memcpy(out, ENV_PREFIX, o);
    /* letters upper-cased, digits kept ("int8": DCNSERVE_INT8), '-' as '_' */
    for (; *flag; flag++) {
        unsigned char c = (unsigned char)*flag;
        if (c == '-') out[o++] = '_';
        else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) out[o++] = (char)toupper(c);
        else goto fail;
    }
    out[o] = 0;
    return 0;
fail:
    if (n) out[0] = 0;
    return -1;
}

/* The option table's flags fit (checked by the unit test), so this only
 * shortens the calls. */
static void env_name(const char *flag, char *out, size_t n)
{
    if (cfg_env_name(flag, out, n) < 0) out[0] = 0;
}

static void usage(void)
{
    char env[64];
    printf("usage: dcnserve --model FILE [options]\n\n"
           "Serves POST /rank with a DCN-V2 model. Every option may also be set by the\n"
           "environment variable shown; flags win. A DCNSERVE_* variable that names no\n"
           "option is ignored with a warning. Booleans: --flag, --no-flag, --flag=0|1.\n\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        env_name(opts[i].flag, env, sizeof env);
        printf("  --%-20s %s\n  %-22s [%s, default %s]\n", opts[i].flag, opts[i].help, "", env,
               *opts[i].def ? opts[i].def : "none");
    }
    printf("  --%-20s %s\n  --%-20s %s\n", "help", "this text", "version", "print the version");
}

int cfg_parse(srv_config *c, int argc, char **argv)
{
    char env[64];
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_OPTS; i++)
        if (set(c, &opts[i], opts[i].def, "default") < 0) return -1;
    for (size_t i = 0; i < N_OPTS; i++) {
        env_name(opts[i].flag, env, sizeof env);
        const char *v = getenv(env);
        if (v && set(c, &opts[i], v, env) < 0) return -1;
        if (v) c->from_env |= 1ull << i;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) { usage(); return 1; }
        if (!strcmp(arg, "--version")) {
            printf("dcnserve %s (model format %d)\n", DCN_VERSION_STRING, DCN_FORMAT_VERSION);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "dcnserve: unexpected argument \"%s\" (see --help)\n", arg);
            return -1;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        int negated = 0;
        const opt *o = NULL;
        for (int pass = 0; pass < 2 && !o; pass++) {
            const char *nm = pass ? name + 3 : name;
            size_t nl = pass ? nlen - 3 : nlen;
            if (pass && (nlen <= 3 || strncmp(name, "no-", 3))) break;
            for (size_t i = 0; i < N_OPTS; i++)
                if (strlen(opts[i].flag) == nl && !strncmp(opts[i].flag, nm, nl)) o = &opts[i];
            negated = pass;
        }
        if (!o || (negated && (o->type != T_BOOL || eq))) {
            fprintf(stderr, "dcnserve: unknown option \"%s\" (see --help)\n", arg);
            return -1;
        }
        const char *v;
        if (eq) v = eq + 1;
        else if (o->type == T_BOOL) v = negated ? "0" : "1";
        else if (a + 1 < argc) v = argv[++a];
        else {
            fprintf(stderr, "dcnserve: %s needs a value\n", arg);
            return -1;
        }
        if (set(c, o, v, "flag") < 0) return -1;
        c->from_flags |= 1ull << (o - opts);
        c->from_env &= ~(1ull << (o - opts));
    }
    int has_file = c->model_path && *c->model_path, has_repo = c->model_repository && *c->model_repository;
    if (has_file && has_repo) {
        /* one choice: a flag beats a variable (a container image's
         * DCNSERVE_MODEL gives way to a --model-repository argument) */
        uint64_t fbit = 0, rbit = 0;
        for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
            if (!strcmp(opts[i].flag, "model")) fbit = 1ull << i;
            if (!strcmp(opts[i].flag, "model-repository")) rbit = 1ull << i;
        }
        if ((c->from_flags & rbit) && !(c->from_flags & fbit)) c->model_path = "", has_file = 0;
        else if ((c->from_flags & fbit) && !(c->from_flags & rbit)) c->model_repository = "", has_repo = 0;
    }
    if (has_file == has_repo) {
        fprintf(stderr, has_file ? "dcnserve: --model and --model-repository (both flags, or both variables): give one of them\n"
                                 : "dcnserve: --model FILE or --model-repository DIR is required (see --help)\n");
        return -1;
    }
    if (!c->keep_versions || c->keep_versions > 64 || c->poll_s > 86400 || !c->status_sample_s ||
        c->status_sample_s > 3600) {
        fprintf(stderr, "dcnserve: invalid configuration: keep-versions (1..64), poll-s (<= 86400), status-sample-s (1..3600)\n");
        return -1;
    }
    if (c->port > 65535 || !c->max_batch_rows || c->max_batch_rows > (1u << 20) ||
        !c->max_queue_rows || !c->max_candidates || c->max_candidates > (1u << 24) ||
        c->workers > 1024 || c->loops > 256 || c->small_batch_threads > 256 || !c->max_connections || c->conn_memory_bytes < 4096 ||
        (c->busy_status != 429 && c->busy_status != 503) || log_parse_level(c->log_level) < 0) {
        fprintf(stderr, "dcnserve: invalid configuration: check port (<= 65535), max-batch-rows (1..2^20), "
                        "max-queue-rows (>= 1), max-candidates (1..2^24), workers (<= 1024), loops (<= 256), small-batch-threads (<= 256), "
                        "conn-memory-bytes (>= 4096), busy-status (429|503), log-level\n");
        return -1;
    }
    if (c->int8 && c->bf16) {
        fprintf(stderr, "dcnserve: --int8 and --bf16 are two precisions: choose one\n");
        return -1;
    }
    if (c->max_candidates > c->max_queue_rows) c->max_candidates = c->max_queue_rows;
    return 0;
}

/* Edit distance between a and b, ignoring case (Levenshtein: insertions,
 * deletions and substitutions of one character each); names longer than
 * 63 bytes count as far from everything. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];
    if (la >= 64 || lb >= 64) return (size_t)-1;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t sub = diag + (toupper((unsigned char)a[i - 1]) != toupper((unsigned char)b[j - 1]));
            size_t best = up + 1 < row[j - 1] + 1 ? up + 1 : row[j - 1] + 1;
            row[j] = sub < best ? sub : best;
            diag = up;
        }
    }
    return row[lb];
}

size_t cfg_warn_unknown_env(char *const *envp)
{
    size_t unknown = 0, plen = strlen(ENV_PREFIX);
    char name[128], env[64], best_env[64], esc[800];
    for (; envp && *envp; envp++) {
        const char *e = *envp, *eq = strchr(e, '=');
        size_t nlen = eq ? (size_t)(eq - e) : strlen(e);
        if (nlen <= plen - 1 || strncmp(e, ENV_PREFIX, plen)) continue;
        if (nlen >= sizeof name) nlen = sizeof name - 1; /* a longer name matches no option either */
        memcpy(name, e, nlen);
        name[nlen] = 0;
        size_t best = (size_t)-1;
        int known = 0;
        for (size_t i = 0; i < N_OPTS && !known; i++) {
            env_name(opts[i].flag, env, sizeof env);
            if (!strcmp(env, name)) known = 1;
            size_t d = edit_distance(name + plen, env + plen);
            if (d < best) {
                best = d;
                memcpy(best_env, env, sizeof env);
            }
        }
        if (known) continue;
        unknown++;
        /* close: at most 2 edits, or a third of the name (INT for INT8,
         * WORKER for WORKERS, MAX_BODY_BYTE for MAX_BODY_BYTES) */
        size_t limit = (strlen(best_env) - plen) / 3;
        if (limit < 2) limit = 2;
        if (best <= limit)
            log_msg(LOG_WARN, "unknown DCNSERVE_ variable ignored: it names no option (dcnserve --help)",
                    "\"variable\":\"%s\",\"did_you_mean\":\"%s\"", log_esc(name, esc, sizeof esc), best_env);
        else
            log_msg(LOG_WARN, "unknown DCNSERVE_ variable ignored: it names no option (dcnserve --help)",
                    "\"variable\":\"%s\"", log_esc(name, esc, sizeof esc));
    }
    return unknown;
}

/* Appends to out (n bytes, o used) what fmt formats; returns the new o, or
 * n when out is full. */
__attribute__((format(printf, 4, 5)))
static size_t put(char *out, size_t n, size_t o, const char *fmt, ...)
{
    if (o >= n) return n;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out + o, n - o, fmt, ap);
    va_end(ap);
    return k < 0 || (size_t)k >= n - o ? n : o + (size_t)k;
}

int cfg_json(const srv_config *c, char *out, size_t n)
{
    char esc[1100];
    size_t o = put(out, n, 0, "\"options\":{");
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt *op = &opts[i];
        const char *p = (const char *)c + op->off;
        o = put(out, n, o, "%s\"%s\":", i ? "," : "", op->flag);
        if (op->type == T_U64_AUTO && *(const uint64_t *)p == CFG_AUTO) {
            o = put(out, n, o, "\"auto\"");
        } else if (op->type == T_U64 || op->type == T_U64_AUTO) {
            o = put(out, n, o, "%llu", (unsigned long long)*(const uint64_t *)p);
        } else if (op->type == T_BOOL) {
            o = put(out, n, o, "%s", *(const int *)p ? "true" : "false");
        } else {
            const char *v = *(const char *const *)p;
            /* the admin token is a secret: only whether one is set */
            if (!strcmp(op->flag, "admin-token")) v = v && *v ? "(set)" : "";
            o = put(out, n, o, "\"%s\"", log_esc(v ? v : "", esc, sizeof esc));
        }
    }
    o = put(out, n, o, "}");
    for (int src = 0; src < 2; src++) {
        uint64_t mask = src ? c->from_flags : c->from_env;
        o = put(out, n, o, ",\"%s\":[", src ? "from_flags" : "from_env");
        for (size_t i = 0, k = 0; i < N_OPTS; i++)
            if (mask >> i & 1) o = put(out, n, o, "%s\"%s\"", k++ ? "," : "", opts[i].flag);
        o = put(out, n, o, "]");
    }
    return o < n ? (int)o : -1;
}

void cfg_log(const srv_config *c)
{
    char fields[3072];
    if (cfg_json(c, fields, sizeof fields) < 0) {
        log_msg(LOG_WARN, "configuration too long to log", NULL);
        return;
    }
    log_msg(LOG_INFO, "configuration", "%s", fields);
}
