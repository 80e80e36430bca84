/* config.h — the daemon's configuration: defaults, DCNSERVE_* environment
 * variables, then command-line flags (later wins), validated as a whole.
 *
 * DESIGN: one table lists every option once (flag, variable, type, default,
 * help), so --help, the environment and the flags cannot disagree. The
 * struct is filled on the main thread before anything starts and is
 * read-only afterwards; string values point into argv/environ.
 */
#ifndef SRV_CONFIG_H
#define SRV_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* The value of a count given as "auto" (options that take it say so). */
#define CFG_AUTO UINT64_MAX

typedef struct srv_config {
    const char *model_path;
    const char *host;            /* listen address, IPv4 or IPv6 */
    uint64_t port;
    uint64_t workers;            /* 0: one per usable CPU */
    uint64_t loops;              /* event loops; 0: one per four usable CPUs */
    uint64_t max_batch_rows;
    uint64_t max_queue_rows;
    uint64_t max_queue_delay_us;
    uint64_t split_min_rows;
    uint64_t small_batch_threads; /* 0: as many as workers; 1: off */
    uint64_t max_body_bytes;
    uint64_t max_candidates;
    uint64_t decode_offload_bytes; /* bodies this large are decoded on a worker;
                                    * CFG_AUTO: chosen from workers and loops */
    uint64_t max_connections;
    uint64_t conn_memory_bytes;
    uint64_t idle_timeout_s;     /* 0: none */
    uint64_t drain_delay_ms;
    uint64_t drain_timeout_ms;
    uint64_t retry_after_s;
    uint64_t busy_status;        /* 429 or 503 */
    int lenient;                 /* ignore unknown feature names by default */
    int warmup;                  /* pre-fault the model file at load */
    int verify;                  /* check the model's CRC-32 at load */
    int int8;                    /* score with INT8 dense layers (dcn_open_opts.int8) */
    const char *admin_token;     /* "": /admin only from loopback */
    int access_log;
    const char *log_level;
} srv_config;

/* Fills c from defaults, the environment and argv. Returns 0 to run, 1 when
 * --help or --version was printed (exit 0), or -1 after printing an error
 * to stderr (exit 2). */
int cfg_parse(srv_config *c, int argc, char **argv);

#endif
