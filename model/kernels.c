/* kernels.c — chooses the kernel set once (CPU features, DCN_KERNELS
 * override), packs dense weights for it, and converts reduced-precision
 * floats. See kernels.h for the packed layout.
 */
#include "model/kernels.h"

#include <cpuid.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

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
    if (n < max && cpu_has_avx512())
        out[n++] = &kern_avx512;
    else if (n < max && &kern_avx512_emu && cpu_has_avx2())
        out[n++] = &kern_avx512_emu;
    return n;
}

/* AVX512-VNNI with the AVX-512 set's own features; AVX-VNNI (VEX) with
 * AVX2's. Read from CPUID directly (clang 14's __builtin_cpu_supports knows
 * neither name); the OS saving the registers is already checked through
 * the set each depends on (XGETBV, in __builtin_cpu_supports). */
static int cpu_has_avx512vnni(void) {
    unsigned a, b, c, d;
    return cpu_has_avx512() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c >> 11 & 1);
}

static int cpu_has_avxvnni(void) {
    unsigned a, b, c, d;
    return cpu_has_avx2() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
}

/* AVX512_BF16: CPUID.(7,1):EAX bit 5. */
int kern_cpu_avx512bf16(void) {
    unsigned a, b, c, d;
    return cpu_has_avx512() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1);
}

size_t kern_bf16_available(const kern_bf16 **out, size_t max) {
    size_t n = 0;
    if (!cpu_has_avx2()) return 0;
    if (n < max) out[n++] = &kern_bf16_fma;
    if (n < max && kern_cpu_avx512bf16())
        out[n++] = &kern_bf16_avx512bf16;
    else if (n < max && &kern_bf16_avx512bf16_emu)
        out[n++] = &kern_bf16_avx512bf16_emu;
    return n;
}

/* The kernels kern_i8_get and kern_bf16_get hand each set (wide 0: the
 * avx2 set, 1: avx512): the widest native one it may run, else dflt, or
 * the one the variable env names. */
static void choose_dot(size_t (*avail)(const kern_dot **, size_t), const kern_dot *dflt, const char *env,
                       const kern_dot *out[2]) {
    const kern_dot *ks[4];
    size_t n = avail(ks, 4);
    const char *force = getenv(env);
    for (int wide = 0; wide < 2; wide++) {
        const kern_dot *c = dflt;
        for (size_t i = 0; i < n; i++)
            if (!ks[i]->emulated && !ks[i]->by_name && (wide || !ks[i]->wide)) c = ks[i];
        for (size_t i = 0; force && i < n; i++)
            if (!strcmp(force, ks[i]->name) && (wide || !ks[i]->wide)) c = ks[i];
        out[wide] = c;
    }
    /* A name none answers to (a typo, or AMX on a CPU without it) must not
     * pass unseen: the defaults serve, and stderr says so. */
    int found = !force || !*force;
    for (size_t i = 0; !found && i < n; i++) found = !strcmp(force, ks[i]->name);
    if (!found) {
        fprintf(stderr, "dcn: %s=%s names no kernel this CPU runs (it has:", env, force);
        for (size_t i = 0; i < n; i++)
            if (!ks[i]->emulated) fprintf(stderr, " %s", ks[i]->name);
        fprintf(stderr, "); the avx2 set runs %s, the avx512 set %s\n", out[0]->name, out[1]->name);
    }
}

static const kern_bf16 *bf16_chosen[2];
static pthread_once_t bf16_once = PTHREAD_ONCE_INIT;

static void choose_bf16(void) {
    choose_dot(kern_bf16_available, &kern_bf16_fma, "DCN_BF16_KERNEL", bf16_chosen);
}

const kern_bf16 *kern_bf16_get(int wide) {
    pthread_once(&bf16_once, choose_bf16);
    return bf16_chosen[wide != 0];
}

int kern_cpu_vnni(int wide) {
    return wide ? cpu_has_avx512vnni() : cpu_has_avxvnni();
}

/* AMX: CPUID.(7,0):EDX bits 24 (AMX-TILE) and 25 (AMX-INT8); XCR0 bits
 * 17 and 18 (the OS manages XTILECFG and XTILEDATA); and, on Linux, the
 * process's permission for the 8 KiB tile state (arch_prctl
 * ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, 18), without which the first
 * tile instruction kills the process. Asked once; a refusal (an old
 * kernel, a seccomp filter) leaves AMX unused. */
static int amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void probe_amx(void) {
    unsigned a, b, c, d, lo, hi;
    if (!cpu_has_avx512vnni() || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 24 & 1) || !(d >> 25 & 1)) return;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo >> 17 & 3) != 3) return;
    amx_ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

int kern_cpu_amx(void) {
    pthread_once(&amx_once, probe_amx);
    return amx_ok;
}

size_t kern_i8_available(const kern_i8 **out, size_t max) {
    size_t n = 0;
    if (!cpu_has_avx2()) return 0;
    if (n < max) out[n++] = &kern_i8_maddubs;
    if (n < max && cpu_has_avxvnni())
        out[n++] = &kern_i8_avxvnni;
    else if (n < max && &kern_i8_avxvnni_emu)
        out[n++] = &kern_i8_avxvnni_emu;
    if (n < max && cpu_has_avx512vnni())
        out[n++] = &kern_i8_avx512vnni;
    else if (n < max && &kern_i8_avx512vnni_emu)
        out[n++] = &kern_i8_avx512vnni_emu;
    if (n < max && kern_cpu_amx())
        out[n++] = &kern_i8_amx;
    else if (n < max && &kern_i8_amx_emu)
        out[n++] = &kern_i8_amx_emu;
    return n;
}

_Thread_local uint8_t kern_i8_rows[KERN_I8_ROWS_BYTES] __attribute__((aligned(64)));

static const kern_i8 *i8_chosen[2];
static pthread_once_t i8_once = PTHREAD_ONCE_INIT;

static void choose_i8(void) {
    choose_dot(kern_i8_available, &kern_i8_maddubs, "DCN_INT8_KERNEL", i8_chosen);
}

const kern_i8 *kern_i8_get(int wide) {
    pthread_once(&i8_once, choose_i8);
    return i8_chosen[wide != 0];
}

static void choose(void) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    chosen = sets[0];
    for (size_t i = 1; i < n; i++) /* the widest native set; emulated ones only by name */
        if (!sets[i]->emulated) chosen = sets[i];
    const char *force = getenv("DCN_KERNELS");
    if (force)
        for (size_t i = 0; i < n; i++)
            if (!strcmp(force, sets[i]->name)) chosen = sets[i];
}

const kern_set *kern_get(void) {
    pthread_once(&chosen_once, choose);
    return chosen;
}

void *kern_alloc(size_t n) {
    n = (n + 63) / 64 * 64;
    if (n < KERN_HUGE) return aligned_alloc(64, n ? n : 64);
    void *p = NULL;
    if (posix_memalign(&p, KERN_HUGE, n)) return NULL;
    /* Whole huge pages only: the tail (under 2 MiB) stays in small pages,
     * so no memory is committed past n. A kernel without transparent huge
     * pages refuses the advice, which changes nothing else. */
    (void)madvise(p, kern_huge_bytes(n), MADV_HUGEPAGE);
    return p;
}

size_t kern_huge_bytes(size_t n) {
    n = (n + 63) / 64 * 64;
    return n < KERN_HUGE ? 0 : n / KERN_HUGE * KERN_HUGE;
}

/* The file reads like "always [madvise] never": the word in brackets is
 * the setting. */
int kern_thp_mode(const char *path) {
    char buf[128];
    FILE *f = fopen(path, "r");
    if (!f) return KTHP_UNKNOWN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    static const char *const names[] = {"[always]", "[madvise]", "[never]"};
    for (int i = 0; i < 3; i++)
        if (strstr(buf, names[i])) return KTHP_ALWAYS + i;
    return KTHP_UNKNOWN;
}

int kern_thp_host(void) {
    const char *path = getenv("DCN_THP_FILE"); /* tests: a file to read instead */
    return kern_thp_mode(path && *path ? path : "/sys/kernel/mm/transparent_hugepage/enabled");
}

int kern_pack_as(klinear *L, const float *w, const float *bias, size_t out, size_t in, size_t nr, int wt) {
    memset(L, 0, sizeof *L);
    size_t out_pad = (out + nr - 1) / nr * nr;
    size_t es = wt == KW_F32 ? sizeof(float) : sizeof(uint16_t);
    if (wt == KW_F32)
        L->wp = kern_alloc(out_pad * in * es);
    else
        L->wh = kern_alloc(out_pad * in * es);
    L->bias = kern_alloc(out_pad * sizeof(float));
    if ((!L->wp && !L->wh) || !L->bias) {
        kern_linear_free(L);
        return -1;
    }
    L->in = in;
    L->out = out;
    L->out_pad = out_pad;
    L->nr = nr;
    L->wt = wt;
    for (size_t p = 0; p < out_pad / nr; p++)
        for (size_t k = 0; k < in; k++)
            for (size_t j = 0; j < nr; j++) {
                size_t n = p * nr + j, at = (p * in + k) * nr + j;
                float v = n < out ? w[n * in + k] : 0.0f;
                if (wt == KW_F32)
                    L->wp[at] = v;
                else
                    L->wh[at] = wt == KW_BF16 ? kern_f32_to_bf16(v) : kern_f32_to_f16(v);
            }
    for (size_t n = 0; n < out_pad; n++) L->bias[n] = (bias && n < out) ? bias[n] : 0.0f;
    return 0;
}

int kern_pack(klinear *L, const float *w, const float *bias, size_t out, size_t in, size_t nr) {
    return kern_pack_as(L, w, bias, out, in, nr, KW_F32);
}

size_t kern_packed_bytes(const klinear *L) {
    return L->out_pad * L->in * (L->wt == KW_F32 ? sizeof(float) : sizeof(uint16_t));
}

size_t kern_i8_bytes(const klinear *L) {
    return L->wq ? L->kq * ((L->out + KQ_NR - 1) / KQ_NR * KQ_NR) : 0;
}

size_t kern_bf16_bytes(const klinear *L) {
    return L->wbf ? L->kbf * ((L->out + 15) / 16 * 16) * sizeof(uint16_t) : 0;
}

float kern_weight(const klinear *L, size_t n, size_t k) {
    size_t at = ((n / L->nr) * L->in + k) * L->nr + n % L->nr;
    switch (L->wt) {
    case KW_BF16: return kern_bf16_to_f32(L->wh[at]);
    case KW_F16: return kern_f16_to_f32(L->wh[at]);
    default: return L->wp[at];
    }
}

int kern_quantize(klinear *L, const float *smooth) {
    if (L->in > KQ_MAX_IN) return 0;
    size_t op = (L->out + KQ_NR - 1) / KQ_NR * KQ_NR, kq = (L->in + 3) / 4 * 4;
    int8_t *wq = kern_alloc(op * kq + KQ_SLACK);
    float *wsc = kern_alloc(op * sizeof(float));
    int32_t *wzc = kern_alloc(op * sizeof(int32_t));
    float *qsm = smooth ? malloc(L->in * sizeof *qsm) : NULL;
    if (!wq || !wsc || !wzc || (smooth && !qsm)) {
        free(wq), free(wsc), free(wzc), free(qsm);
        return -1;
    }
    memset(wq, 0, op * kq + KQ_SLACK);
    for (size_t k = 0; smooth && k < L->in; k++) qsm[k] = 1.0f / smooth[k];
#define SW(n, k) (smooth ? kern_weight(L, n, k) * smooth[k] : kern_weight(L, n, k))
    for (size_t n = 0; n < op; n++) {
        float amax = 0.0f;
        for (size_t k = 0; n < L->out && k < L->in; k++) {
            float a = fabsf(SW(n, k));
            amax = a > amax ? a : amax;
        }
        float s = amax > 0.0f ? amax / (float)KQ_WMAX : 1.0f, inv = (float)KQ_WMAX / (amax > 0.0f ? amax : (float)KQ_WMAX);
        int32_t sum = 0;
        for (size_t k = 0; n < L->out && k < L->in; k++) {
            long q = lrintf(SW(n, k) * inv);
            q = q > KQ_WMAX ? KQ_WMAX : q < -KQ_WMAX ? -KQ_WMAX : q;
            /* panel n / 16, group k / 4, output n % 16, input k % 4 */
            wq[((n / KQ_NR) * (kq / 4) + k / 4) * (KQ_NR * 4) + (n % KQ_NR) * 4 + k % 4] = (int8_t)q;
            sum += (int32_t)q;
        }
        wsc[n] = s;
        wzc[n] = 128 * sum;
    }
#undef SW
    free(L->wq), free(L->wsc), free(L->wzc), free(L->qsm);
    L->wq = wq, L->wsc = wsc, L->wzc = wzc, L->kq = kq, L->qsm = qsm;
    return 0;
}

float kern_quant_row(const float *x, const float *sm, size_t n, size_t kq, uint8_t *out) {
    float amax = 0.0f;
    for (size_t k = 0; k < n; k++) {
        float a = fabsf(sm ? x[k] * sm[k] : x[k]);
        if (a > amax || a != a) amax = a; /* a NaN stays */
    }
    /* Zero rows, rows too small for 127 / max|x| to be finite (treated as
     * zero: their products are below 1e-30), and non-finite rows quantize
     * to zeros; the scale of a non-finite row keeps its outputs non-finite. */
    if (!(amax >= KQ_TINY) || !isfinite(amax)) {
        memset(out, 128, kq);
        return !isfinite(amax) || amax > 0.0f ? amax / 127.0f : 1.0f;
    }
    kern_quant_span(x, sm, 0, n, kq, 127.0f / amax, out);
    return amax / 127.0f;
}

void kern_quant_span(const float *x, const float *sm, size_t k0, size_t n, size_t kq, float inv, uint8_t *out) {
    for (size_t k = k0; k < n; k++) {
        float q = nearbyintf((sm ? x[k] * sm[k] : x[k]) * inv);
        q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
        out[k] = (uint8_t)((int)q + 128);
    }
    for (size_t k = n > k0 ? n : k0; k < kq; k++) out[k] = 128;
}

int kern_bf16_pack(klinear *L) {
    if (L->in > KB_MAX_IN) return 0;
    size_t op = (L->out + 15) / 16 * 16, kb = (L->in + 1) / 2 * 2;
    uint16_t *w = kern_alloc(op * kb * sizeof *w);
    if (!w) return -1;
    memset(w, 0, op * kb * sizeof *w);
    /* panel n / 16, pair k / 2, output n % 16, input k % 2 */
    for (size_t n = 0; n < L->out; n++)
        for (size_t k = 0; k < L->in; k++)
            w[((n / 16) * (kb / 2) + k / 2) * 32 + (n % 16) * 2 + k % 2] = kern_f32_to_bf16_daz(kern_weight(L, n, k));
    free(L->wbf);
    L->wbf = w, L->kbf = kb;
    return 0;
}

/* Branch-free, so that the row loop below vectorises. */
uint16_t kern_f32_to_bf16_daz(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t r = (b + 0x7fffu + (b >> 16 & 1)) >> 16;
    r = (b & 0x7fffffffu) > 0x7f800000u ? (b >> 16 | 0x40) : r; /* NaN: quiet */
    r = (b & 0x7f800000u) == 0 ? (b >> 16 & 0x8000) : r;         /* zero, denormal */
    return (uint16_t)r;
}

void kern_bf16_row(const float *x, size_t n, size_t kbf, uint16_t *out) {
    for (size_t k = 0; k < n; k++) out[k] = kern_f32_to_bf16_daz(x[k]);
    for (size_t k = n; k < kbf; k++) out[k] = 0;
}

void kern_linear_free(klinear *L) {
    free(L->wbf);
    free(L->wp);
    free(L->wh);
    free(L->wq);
    free(L->wsc);
    free(L->wzc);
    free(L->qsm);
    free(L->bias);
    memset(L, 0, sizeof *L);
}

uint16_t kern_f32_to_bf16(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(b >> 16 | 0x40); /* quiet NaN */
    b += 0x7fffu + (b >> 16 & 1);
    return (uint16_t)(b >> 16);
}

uint16_t kern_f32_to_f16(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = b >> 16 & 0x8000, a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds past 65504: inf */
    if (a < 0x38800000u) { /* below 2^-14: subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign; /* below half the smallest subnormal */
        uint32_t man = (a & 0x7fffffu) | 0x800000u, shift = 126 - (a >> 23); /* 14..24 */
        uint32_t h = man >> shift, rest = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((a >> 23) - 112) << 10 | (a >> 13 & 0x3ff), rest = a & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* may carry into the exponent: right */
    return (uint16_t)(sign | h);
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
