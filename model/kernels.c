/* kernels.c — chooses the kernel set once (CPU features, DCN_KERNELS
 * override), packs dense weights for it, and converts reduced-precision
 * floats. See kernels.h for the packed layout.
 */
#include "model/kernels.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const kern_set *chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

/* F16C is CPUID.1:ECX bit 29 (read directly: not every compiler's
 * __builtin_cpu_supports knows the name). */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
}

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && cpu_has_avx2();
}

size_t kern_available(const kern_set **out, size_t max) {
    size_t n = 0;
    if (n < max) out[n++] = &kern_scalar;
    if (n < max && cpu_has_avx2()) out[n++] = &kern_avx2;
    if (n < max && cpu_has_avx512()) out[n++] = &kern_avx512;
    return n;
}

static void choose(void) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    chosen = sets[n - 1];
    const char *force = getenv("DCN_KERNELS");
    if (force)
        for (size_t i = 0; i < n; i++)
            if (!strcmp(force, sets[i]->name)) chosen = sets[i];
}

const kern_set *kern_get(void) {
    pthread_once(&chosen_once, choose);
    return chosen;
}

int kern_pack(klinear *L, const float *w, const float *bias, size_t out, size_t in, size_t nr) {
    memset(L, 0, sizeof *L);
    size_t out_pad = (out + nr - 1) / nr * nr;
    size_t wbytes = out_pad * in * sizeof(float);
    size_t bbytes = out_pad * sizeof(float);
    L->wp = aligned_alloc(64, (wbytes + 63) / 64 * 64);
    L->bias = aligned_alloc(64, (bbytes + 63) / 64 * 64);
    if (!L->wp || !L->bias) {
        kern_linear_free(L);
        return -1;
    }
    L->in = in;
    L->out = out;
    L->out_pad = out_pad;
    L->nr = nr;
    for (size_t p = 0; p < out_pad / nr; p++)
        for (size_t k = 0; k < in; k++)
            for (size_t j = 0; j < nr; j++) {
                size_t n = p * nr + j;
                L->wp[(p * in + k) * nr + j] = n < out ? w[n * in + k] : 0.0f;
            }
    for (size_t n = 0; n < out_pad; n++) L->bias[n] = (bias && n < out) ? bias[n] : 0.0f;
    return 0;
}

void kern_linear_free(klinear *L) {
    free(L->wp);
    free(L->bias);
    memset(L, 0, sizeof *L);
}

float kern_bf16_to_f32(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

float kern_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, b;
    if (exp == 0x1f) {
        b = sign | 0x7f800000u | (man << 13); /* inf, nan */
    } else if (exp) {
        b = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man) { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        b = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    } else {
        b = sign;
    }
    float f;
    memcpy(&f, &b, 4);
    return f;
}
