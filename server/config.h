/* config.h — the daemon's configuration: defaults, DCNSERVE_* environment
 * variables, then command-line flags (later wins), validated as a whole.
 *
 * DESIGN: one table lists every option once (flag, type, default, help;
 * the variable is derived from the flag), so --help, the environment and
 * the flags cannot disagree. A DCNSERVE_* variable that names no option is
 * not an error but a warning at start-up, the first line logged; the line
 * after it reports every option's effective value and which came from the
 * environment or a flag. The
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
    const char *model_path;      /* "" with a repository */
    const char *model_repository; /* "" with a file */
    uint64_t keep_versions;      /* latest versions served per model */
    uint64_t poll_s;             /* repository rescan period; 0: on SIGHUP / reload only */
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
    int bf16;                    /* score with BF16 dot products (dcn_open_opts.bf16) */
    uint64_t status_sample_s;    /* the status page's sample period */
    const char *admin_token;     /* "": /admin only from loopback */
    int access_log;
    const char *log_level;
    uint64_t from_env;           /* bit i: option i (in --help's order) came from its variable */
    uint64_t from_flags;         /* bit i: option i came from a flag (which wins) */
} srv_config;

/* Fills c from defaults, the environment and argv. Returns 0 to run, 1 when
 * --help or --version was printed (exit 0), or -1 after printing an error
 * to stderr (exit 2). */
int cfg_parse(srv_config *c, int argc, char **argv);

/* The i-th option's flag without "--", in --help's order; NULL past the
 * last. */
const char *cfg_option_flag(size_t i);

/* Writes an option's variable into out (n bytes): DCNSERVE_ and the flag
 * with letters upper-cased, digits kept and '-' as '_' ("int8":
 * DCNSERVE_INT8). Returns 0, or -1 (out "") if the flag holds another
 * character or the name does not fit. */
int cfg_env_name(const char *flag, char *out, size_t n);

/* Logs one warning for each DCNSERVE_* variable of envp (NAME=value
 * strings, NULL-terminated) that names no option, with the closest
 * option's variable as "did_you_mean" when it is a few edits away (case
 * aside). Returns how many it warned about. Call once logging is set up,
 * before anything else logs, so a typo is the first thing the log says. */
size_t cfg_warn_unknown_env(char *const *envp);

/* Writes the effective configuration as JSON members (no braces):
 * "options":{flag: value, ...} in --help's order (numbers, booleans,
 * strings; the admin token as "(set)" or "", never its value), then
 * "from_env":[flags] and "from_flags":[flags], the options that source set.
 * Returns the length, or -1 if it does not fit in n bytes. */
int cfg_json(const srv_config *c, char *out, size_t n);

/* Logs cfg_json's members on one info line, "configuration". */
void cfg_log(const srv_config *c);

#endif
