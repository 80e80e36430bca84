/* test_config.c — the option table's variables (issue 15: "int8" became
 * DCNSERVE_INT plus a control character, so DCNSERVE_INT8 did nothing),
 * every option set through its variable, flag over variable over default,
 * the effective-configuration members and the unknown-variable warning.
 * Each Criterion test runs in its own process, so setenv and redirecting
 * stderr stay inside the test. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/config.h"

/* The variable as the documentation defines it, written independently of
 * cfg_env_name: DCNSERVE_, then each letter upper-cased, each digit kept,
 * each '-' as '_'. */
static void expected_name(const char *flag, char *out)
{
    size_t o = (size_t)sprintf(out, "DCNSERVE_");
    for (; *flag; flag++) out[o++] = *flag == '-' ? '_' : isdigit((unsigned char)*flag) ? *flag : (char)toupper(*flag);
    out[o] = 0;
}

static size_t n_options(void)
{
    size_t n = 0;
    while (cfg_option_flag(n)) n++;
    return n;
}

/* Removes every option's variable from the environment. */
static void clear_env(void)
{
    char name[64];
    for (size_t i = 0; cfg_option_flag(i); i++) {
        cr_assert_eq(cfg_env_name(cfg_option_flag(i), name, sizeof name), 0);
        unsetenv(name);
    }
}

/* Parses argv (argc entries) into c; returns cfg_parse's result. */
static int parse(srv_config *c, int argc, const char **argv)
{
    return cfg_parse(c, argc, (char **)argv);
}

/* cfg_json's members as a jansson object (the caller frees it). */
static json_t *as_json(const srv_config *c)
{
    char buf[4096];
    int n = cfg_json(c, buf + 1, sizeof buf - 2);
    cr_assert_gt(n, 0);
    buf[0] = '{';
    buf[n + 1] = '}';
    json_error_t e;
    json_t *o = json_loadb(buf, (size_t)n + 2, 0, &e);
    cr_assert_not_null(o, "%s: %.*s", e.text, n + 2, buf);
    return o;
}

/* 1 if the JSON array a holds the string s. */
static int has(json_t *a, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (!strcmp(json_string_value(v), s)) return 1;
    return 0;
}

Test(config, every_option_has_its_variable)
{
    char name[64], want[64], names[64][64];
    size_t n = n_options();
    cr_assert_gt(n, 20);
    cr_assert_leq(n, 64);
    for (size_t i = 0; i < n; i++) {
        const char *flag = cfg_option_flag(i);
        cr_assert_eq(cfg_env_name(flag, name, sizeof name), 0, "%s", flag);
        expected_name(flag, want);
        cr_assert_str_eq(name, want, "--%s", flag);
        for (const char *p = name; *p; p++)
            cr_assert(isupper((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_', "%s: byte %#x", name,
                      (unsigned)(unsigned char)*p);
        for (size_t j = 0; j < i; j++) cr_assert_str_neq(names[j], name, "two options share %s", name);
        strcpy(names[i], name);
    }
    /* letters, digits, dashes */
    cr_assert_eq(cfg_env_name("int8", name, sizeof name), 0);
    cr_assert_str_eq(name, "DCNSERVE_INT8");
    cr_assert_eq(cfg_env_name("max-queue-delay-us", name, sizeof name), 0);
    cr_assert_str_eq(name, "DCNSERVE_MAX_QUEUE_DELAY_US");
    cr_assert_eq(cfg_env_name("a0-9z", name, sizeof name), 0);
    cr_assert_str_eq(name, "DCNSERVE_A0_9Z");
    /* too long for the buffer, or a byte no variable name should hold */
    cr_assert_eq(cfg_env_name("int8", name, 13), -1);
    cr_assert_str_eq(name, "");
    cr_assert_eq(cfg_env_name("int8", name, 14), 0);
    cr_assert_eq(cfg_env_name("a b", name, sizeof name), -1);
    cr_assert_eq(cfg_env_name("a=b", name, sizeof name), -1);
}

/* A non-default valid value for option flag whose default is def (a JSON
 * value from cfg_json): booleans flipped, numbers plus one (those with a
 * fixed set of values get one of them), strings chosen per option. */
static const char *other_value(const char *flag, json_t *def, char *buf, size_t n)
{
    if (!strcmp(flag, "busy-status")) return "429";
    if (!strcmp(flag, "log-level")) return "debug";
    if (!strcmp(flag, "host")) return "::1";
    if (!strcmp(flag, "model")) return "other.dcn";
    if (!strcmp(flag, "model-repository")) return "repo";
    if (!strcmp(flag, "admin-token")) return "s3cret";
    if (json_is_string(def) && !strcmp(json_string_value(def), "auto")) return "4096"; /* a count or "auto" */
    if (json_is_boolean(def)) return json_is_true(def) ? "0" : "1";
    cr_assert(json_is_integer(def), "--%s: no test value for a new string option: add one here", flag);
    snprintf(buf, n, "%lld", (long long)json_integer_value(def) + 1);
    return buf;
}

/* For every option: set through its variable alone, the option changes (and
 * no other), and from_env names it. */
Test(config, every_variable_sets_its_option)
{
    const char *argv_model[] = {"dcnserve", "--model", "m.dcn"};
    srv_config c;
    clear_env();
    cr_assert_eq(parse(&c, 3, argv_model), 0);
    json_t *base = as_json(&c), *base_opts = json_object_get(base, "options");
    cr_assert_eq(json_object_size(base_opts), n_options());
    for (size_t i = 0; cfg_option_flag(i); i++) {
        const char *flag = cfg_option_flag(i);
        char name[64], buf[32];
        json_t *def = json_object_get(base_opts, flag);
        cr_assert_not_null(def, "--%s missing from the configuration", flag);
        const char *v = other_value(flag, def, buf, sizeof buf);
        clear_env();
        cfg_env_name(flag, name, sizeof name);
        setenv(name, v, 1);
        /* the model comes from the flag, except when it or the repository
         * (one choice with it) is the option tested */
        int model_from_env = !strcmp(flag, "model") || !strcmp(flag, "model-repository");
        cr_assert_eq(parse(&c, model_from_env ? 1 : 3, argv_model), 0, "%s=%s refused", name, v);
        json_t *got = as_json(&c), *opts = json_object_get(got, "options");
        const char *key;
        json_t *val;
        json_object_foreach(opts, key, val) {
            json_t *was = json_object_get(base_opts, key);
            if (!strcmp(key, flag)) {
                cr_assert(!json_equal(val, was), "%s=%s: --%s unchanged", name, v, flag);
                char *txt = json_dumps(val, JSON_ENCODE_ANY);
                const char *want = !strcmp(flag, "admin-token") ? "\"(set)\"" : json_is_boolean(val) ? (*v == '1' ? "true" : "false") : v;
                if (json_is_string(val) && strcmp(flag, "admin-token")) cr_assert_str_eq(json_string_value(val), v);
                else cr_assert_str_eq(txt, want, "%s=%s", name, v);
                free(txt);
            } else if (!(model_from_env && !strcmp(key, "model"))) {
                cr_assert(json_equal(val, was), "%s=%s also changed --%s", name, v, key);
            }
        }
        cr_assert(has(json_object_get(got, "from_env"), flag), "%s: from_env lacks %s", name, flag);
        cr_assert_eq(json_array_size(json_object_get(got, "from_env")), 1);
        json_decref(got);
    }
    json_decref(base);
}

Test(config, flag_over_variable_over_default)
{
    const char *argv[] = {"dcnserve", "--model", "m.dcn", "--workers", "2", "--no-int8"};
    srv_config c;
    clear_env();
    setenv("DCNSERVE_WORKERS", "3", 1);
    setenv("DCNSERVE_INT8", "1", 1);
    setenv("DCNSERVE_MAX_BATCH_ROWS", "100", 1);
    cr_assert_eq(parse(&c, 3, argv), 0);
    cr_assert_eq(c.workers, 3);
    cr_assert_eq(c.int8, 1);
    cr_assert_eq(c.max_batch_rows, 100);
    cr_assert_eq(c.max_queue_rows, 65536);
    cr_assert_eq(parse(&c, 6, argv), 0);
    cr_assert_eq(c.workers, 2);
    cr_assert_eq(c.int8, 0);
    cr_assert_eq(c.max_batch_rows, 100);
    json_t *j = as_json(&c);
    cr_assert(has(json_object_get(j, "from_flags"), "workers"));
    cr_assert(has(json_object_get(j, "from_flags"), "int8"));
    cr_assert(!has(json_object_get(j, "from_env"), "workers"));
    cr_assert(has(json_object_get(j, "from_env"), "max-batch-rows"));
    cr_assert(!has(json_object_get(j, "from_env"), "max-queue-rows"));
    cr_assert(!has(json_object_get(j, "from_flags"), "max-queue-rows"));
    json_decref(j);
    /* a bad value in a variable refuses to start, as a bad flag does */
    setenv("DCNSERVE_INT8", "maybe", 1);
    cr_assert_eq(parse(&c, 3, argv), -1);
}

Test(config, the_admin_token_is_never_in_the_configuration)
{
    const char *argv[] = {"dcnserve", "--model", "m.dcn", "--admin-token", "hunter2-secret"};
    srv_config c;
    clear_env();
    cr_assert_eq(parse(&c, 5, argv), 0);
    char buf[4096];
    cr_assert_gt(cfg_json(&c, buf, sizeof buf), 0);
    cr_assert_null(strstr(buf, "hunter2"));
    cr_assert(strstr(buf, "\"admin-token\":\"(set)\""));
    cr_assert_eq(cfg_json(&c, buf, 100), -1); /* too small: refused, not cut */
}

/* Runs cfg_warn_unknown_env on envp with stderr in a temporary file; returns
 * the count and the log text in out. */
static size_t warnings(char *const *envp, char *out, size_t n)
{
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    int saved = dup(2);
    dup2(fileno(f), 2);
    size_t k = cfg_warn_unknown_env(envp);
    dup2(saved, 2);
    close(saved);
    rewind(f);
    size_t got = fread(out, 1, n - 1, f);
    out[got] = 0;
    fclose(f);
    return k;
}

Test(config, unknown_variables_are_named_with_the_closest_option)
{
    char *envp[] = {"DCNSERVE_INT=1", "DCNSERVE_WORKER=2", "DCNSERVE_MAX_BODY_BYTE=9", "DCNSERVE_int8=1",
                    "DCNSERVE_TOTALLY_UNRELATED=1", "DCNSERVE_INT8=1", "DCNSERVE_PORT=80", "DCNSERVE=x",
                    "DCNSERVE_", "DCN_KERNELS=scalar", "PATH=/bin", "DCNSERVE_\"quote\x01\xff\xc3=1", NULL};
    char log[8192];
    cr_assert_eq(warnings(envp, log, sizeof log), 7, "%s", log);
    const char *want[] = {"\"variable\":\"DCNSERVE_INT\",\"did_you_mean\":\"DCNSERVE_INT8\"",
                          "\"variable\":\"DCNSERVE_WORKER\",\"did_you_mean\":\"DCNSERVE_WORKERS\"",
                          "\"variable\":\"DCNSERVE_MAX_BODY_BYTE\",\"did_you_mean\":\"DCNSERVE_MAX_BODY_BYTES\"",
                          "\"variable\":\"DCNSERVE_int8\",\"did_you_mean\":\"DCNSERVE_INT8\"",
                          "\"variable\":\"DCNSERVE_TOTALLY_UNRELATED\"}",
                          "\"variable\":\"DCNSERVE_\"}"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) cr_assert(strstr(log, want[i]), "%s not in %s", want[i], log);
    /* every line is JSON at level warn, whatever the variable's name holds */
    size_t lines = 0;
    for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        json_t *o = json_loads(line, 0, NULL); /* refuses bytes that are not UTF-8 */
        cr_assert_not_null(o, "not JSON: %s", line);
        cr_assert_str_eq(json_string_value(json_object_get(o, "level")), "warn");
        json_decref(o);
    }
    cr_assert_eq(lines, 7);
    char *none[] = {"DCNSERVE_MODEL=m", "DCNSERVE_LOG_LEVEL=info", "HOME=/", NULL};
    cr_assert_eq(warnings(none, log, sizeof log), 0);
    cr_assert_str_eq(log, "");
}

/* --model and --model-repository are one choice: a flag beats a variable,
 * two of the same source are refused, and neither is refused. */
Test(config, model_or_repository)
{
    srv_config c;
    const char *file_flag[] = {"dcnserve", "--model", "m.dcn"};
    const char *repo_flag[] = {"dcnserve", "--model-repository", "repo"};
    const char *both_flags[] = {"dcnserve", "--model", "m.dcn", "--model-repository", "repo"};
    const char *none[] = {"dcnserve"};
    clear_env();
    setenv("DCNSERVE_MODEL", "image.dcn", 1); /* as a container image sets it */
    cr_assert_eq(parse(&c, 3, repo_flag), 0);
    cr_assert_str_eq(c.model_repository, "repo");
    cr_assert_str_eq(c.model_path, "");
    clear_env();
    setenv("DCNSERVE_MODEL_REPOSITORY", "repo", 1);
    cr_assert_eq(parse(&c, 3, file_flag), 0);
    cr_assert_str_eq(c.model_path, "m.dcn");
    cr_assert_str_eq(c.model_repository, "");
    setenv("DCNSERVE_MODEL", "image.dcn", 1); /* both variables */
    cr_assert_eq(parse(&c, 1, none), -1);
    setenv("DCNSERVE_MODEL", "", 1);          /* the image's emptied */
    cr_assert_eq(parse(&c, 1, none), 0);
    cr_assert_str_eq(c.model_repository, "repo");
    clear_env();
    cr_assert_eq(parse(&c, 5, both_flags), -1);
    cr_assert_eq(parse(&c, 1, none), -1);
    const char *bad_keep[] = {"dcnserve", "--model-repository", "repo", "--keep-versions", "0"};
    cr_assert_eq(parse(&c, 5, bad_keep), -1);
    const char *bad_sample[] = {"dcnserve", "--model", "m.dcn", "--status-sample-s", "0"};
    cr_assert_eq(parse(&c, 5, bad_sample), -1);
}
