/* replay.c — runs a fuzz target over files without libFuzzer, so every seed
 * and every input that once crashed stays a regression test under the normal
 * build (any C compiler, with or without sanitizers).
 *
 * Usage: replay_<target> PATH...   (a PATH is a file or a directory, read
 * one level deep; names starting with '.' and README files are skipped).
 * Prints one line per directory and a total; exits 0 when every input ran,
 * 1 if a path could not be read. A broken promise aborts inside the target,
 * naming the check, and "replay: crashed on FILE" names the input (also
 * after a sanitizer report). REPLAY_VERBOSE=1 names every file as it runs.
 *
 * DESIGN: links with exactly one fuzz_*.c; calls its LLVMFuzzerInitialize
 * (weak: targets without set-up leave it out) once, then
 * LLVMFuzzerTestOneInput per file with a heap copy of exactly the file's
 * size, so ASan sees reads past the end as libFuzzer would.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

static int verbose;
static const char *current; /* the input being run, for the crash line */

/* Names the input that crashed (async-signal-safe: write only). */
static void say_current(void)
{
    if (!current) return;
    static const char head[] = "replay: crashed on ";
    ssize_t w = write(2, head, sizeof head - 1);
    w = write(2, current, strlen(current));
    w = write(2, "\n", 1);
    (void)w;
}

/* On abort or a fault: name the input, then die of the same signal. */
static void on_fatal(int sig)
{
    say_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Reads a whole file into a fresh allocation of exactly its size (1 byte for
 * an empty file); returns it and stores the size, or NULL. */
static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) goto fail;
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) goto fail;
    fclose(f);
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(buf);
        return NULL;
    }
    memcpy(exact, buf, n);
    free(buf);
    *size = n;
    return exact;
fail:
    free(buf);
    fclose(f);
    return NULL;
}

/* Runs the target on one file; returns 0, or -1 if it cannot be read. */
static int run_file(const char *path)
{
    size_t size;
    if (verbose) fprintf(stderr, "== %s\n", path);
    uint8_t *data = slurp(path, &size);
    if (!data) {
        fprintf(stderr, "replay: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    current = path;
    LLVMFuzzerTestOneInput(data, size);
    current = NULL;
    free(data);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

int main(int argc, char **argv)
{
    verbose = getenv("REPLAY_VERBOSE") != NULL;
    signal(SIGABRT, on_fatal);
    signal(SIGSEGV, on_fatal);
    signal(SIGBUS, on_fatal);
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(say_current);
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    size_t total = 0;
    int bad = 0;
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[a], strerror(errno));
            bad = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad |= run_file(argv[a]) < 0;
            total++;
            continue;
        }
        struct dirent **ents;
        int n = scandir(argv[a], &ents, NULL, by_name);
        if (n < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[a], strerror(errno));
            bad = 1;
            continue;
        }
        size_t here = 0;
        for (int i = 0; i < n; i++) {
            const char *name = ents[i]->d_name;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[a], name);
            if (name[0] != '.' && strncmp(name, "README", 6) && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                bad |= run_file(path) < 0;
                here++;
            }
            free(ents[i]);
        }
        free(ents);
        printf("  %-40s %zu inputs\n", argv[a], here);
        total += here;
    }
    printf("  replayed %zu inputs: %s\n", total, bad ? "some unreadable" : "no crash");
    return bad;
}
