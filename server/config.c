/* config.c — option table, environment and flag parsing (see config.h). */
#include <errno.h>
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
    O("model", T_STR, model_path, "", "model file (.dcn) to serve (required)"),
    O("host", T_STR, host, "0.0.0.0", "IPv4 or IPv6 address to listen on (\"::\" takes both)"),
    O("port", T_U64, port, "8080", "TCP port (0: any free port, logged)"),
    O("workers", T_U64, workers, "0", "worker threads (0: one per usable CPU, cgroup-aware)"),
    O("loops", T_U64, loops, "0", "event loops serving connections, one port (0: one per four usable CPUs)"),
    O("max-batch-rows", T_U64, max_batch_rows, "256", "rows per engine batch"),
    O("max-queue-rows", T_U64, max_queue_rows, "65536", "rows waiting at once; beyond: busy status"),
    O("max-queue-delay-us", T_U64, max_queue_delay_us, "0", "longest wait to fill a batch (0: never wait while a worker is idle)"),
    O("split-min-rows", T_U64, split_min_rows, "64", "requests above this many rows are split across workers"),
    O("small-batch-threads", T_U64, small_batch_threads, "0", "threads sharing each layer of >= 2 MB of a batch of <= 5 rows, by columns (0: as many as workers; 1: off)"),
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

/* DCNSERVE_MAX_BATCH_ROWS for "max-batch-rows". */
static void env_name(const char *flag, char *out, size_t n)
{
    size_t o = (size_t)snprintf(out, n, "DCNSERVE_");
    for (; *flag && o + 1 < n; flag++) out[o++] = *flag == '-' ? '_' : (char)(*flag & ~0x20);
    out[o] = 0;
}

static void usage(void)
{
    char env[64];
    printf("usage: dcnserve --model FILE [options]\n\n"
           "Serves POST /rank with a DCN-V2 model. Every option may also be set by the\n"
           "environment variable shown; flags win. Booleans: --flag, --no-flag, --flag=0|1.\n\n");
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
    }
    if (!c->model_path || !*c->model_path) {
        fprintf(stderr, "dcnserve: --model FILE is required (see --help)\n");
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
    if (c->max_candidates > c->max_queue_rows) c->max_candidates = c->max_queue_rows;
    return 0;
}
