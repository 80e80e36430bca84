/* fuzz.h — what the fuzz targets share: the libFuzzer entry points, a
 * cursor that turns fuzz bytes into the choices a target makes, and the
 * place the targets find the project's model files.
 *
 * DESIGN
 * - Each target (fuzz_*.c) defines LLVMFuzzerTestOneInput and, when it needs
 *   set-up, LLVMFuzzerInitialize. The same file links either with libFuzzer
 *   (clang -fsanitize=fuzzer, `make fuzz`) or with replay.c, a plain main
 *   that feeds it every file of the corpora and of crashes/ (`make
 *   fuzz-replay`, any compiler), so every input ever found stays a test.
 * - A cursor never fails: past the end of the input it yields zeros, so every
 *   input, however short, describes one complete case.
 * - Targets abort (via FZ_CHECK) only when the code under test broke a
 *   promise of its header; a refused input is the expected outcome.
 */
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A read cursor over the fuzz input. */
typedef struct fz {
    const uint8_t *p;
    size_t n;
} fz;

/* Takes one byte (0 past the end). */
static inline uint8_t fz_u8(fz *c)
{
    if (!c->n) return 0;
    c->n--;
    return *c->p++;
}

/* Takes 4 bytes, little-endian (missing bytes read as 0). */
static inline uint32_t fz_u32(fz *c)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)fz_u8(c) << (8 * i);
    return v;
}

static inline uint64_t fz_u64(fz *c)
{
    uint64_t lo = fz_u32(c);
    return lo | (uint64_t)fz_u32(c) << 32;
}

/* Takes 4 bytes as the bits of a float (any NaN or infinity included). */
static inline float fz_f32(fz *c)
{
    uint32_t u = fz_u32(c);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Aborts with a message when a documented promise is broken: libFuzzer and
 * the replay runner both report the abort as a crash with this input. */
#define FZ_CHECK(cond, ...)                                                   \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* The project's root, where tests/golden and model/default live: the
 * environment's DCN_FUZZ_ROOT, else the working directory (make runs the
 * targets from the root). Writes "<root>/<rel>" into out. */
static inline void fz_path(char *out, size_t n, const char *rel)
{
    const char *root = getenv("DCN_FUZZ_ROOT");
    snprintf(out, n, "%s/%s", root && *root ? root : ".", rel);
}

#endif
