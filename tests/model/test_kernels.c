/* test_kernels.c — every optimised kernel set this CPU runs equals the scalar
 * reference: GEMM with each epilogue, on awkward sizes (1, 7, 15, 16, 17, 63,
 * 65, 1023), split input ranges (request-context sharing) and row counts that
 * leave partial tiles; weights stored as BF16 / F16 panels equal the same
 * weights stored as float32; embedding-row conversions on odd lengths and
 * unaligned pointers; float <-> half conversions, exhaustively; large
 * buffers (kern_alloc) on huge-page boundaries and advised into them; the
 * host's huge-page setting as read; every INT8 and BF16 dot-product kernel
 * equals its scalar reference bit for bit. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/kernels.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static const size_t sizes[] = {1, 7, 15, 16, 17, 63, 65, 1023};
#define NSIZES (sizeof sizes / sizeof sizes[0])

/* Runs one GEMM case on set ks and on the scalar set; asserts closeness
 * relative to the sum of |x||w| (the rounding budget of a dot product). */
static float round_to(float v, int wt) {
    if (wt == KW_BF16) return kern_bf16_to_f32(kern_f32_to_bf16(v));
    if (wt == KW_F16) return kern_f16_to_f32(kern_f32_to_f16(v));
    return v;
}

static void check_gemm_as(const kern_set *ks, size_t m, size_t out, size_t in, int kind, int split, int wt);
static void check_gemm(const kern_set *ks, size_t m, size_t out, size_t in, int kind, int split) {
    check_gemm_as(ks, m, out, in, kind, split, KW_F32);
}

/* With wt 16-bit, the weights are made exact in it, the scalar oracle reads
 * float32 panels and ks reads wt panels; the results must also equal ks on
 * float32 panels bit for bit (same products, same order). */
static void check_gemm_as(const kern_set *ks, size_t m, size_t out, size_t in, int kind, int split, int wt) {
    size_t ldx = in + 3, ldy = out + 5;
    float *w = malloc(out * in * sizeof *w), *b = malloc(out * sizeof *b);
    float *x = malloc(m * ldx * sizeof *x), *x0 = malloc(m * ldy * sizeof *x0), *xl = malloc(m * ldy * sizeof *xl);
    float *bs = malloc(m * sizeof *bs);
    float *y1 = calloc(m * ldy, sizeof *y1), *y2 = calloc(m * ldy, sizeof *y2), *mag = calloc(m * out, sizeof *mag);
    for (size_t i = 0; i < out * in; i++) w[i] = round_to(frand(), wt);
    for (size_t i = 0; i < out; i++) b[i] = frand();
    for (size_t i = 0; i < m * ldx; i++) x[i] = frand();
    for (size_t i = 0; i < m * ldy; i++) x0[i] = frand(), xl[i] = frand();
    for (size_t i = 0; i < m; i++) bs[i] = frand() + 1.5f;
    klinear Ls, Lk;
    cr_assert_eq(kern_pack(&Ls, w, b, out, in, kern_scalar.nr), 0);
    cr_assert_eq(kern_pack_as(&Lk, w, b, out, in, ks->nr, wt), 0);
    cr_assert_eq(kern_packed_bytes(&Lk), Lk.out_pad * in * (wt == KW_F32 ? 4 : 2));
    krange rg[3];
    size_t nrg = 1;
    rg[0] = (krange){0, (uint32_t)in};
    if (split && in >= 3) { /* skip a middle range, as shared features do */
        rg[0] = (krange){0, (uint32_t)(in / 3)};
        rg[1] = (krange){(uint32_t)(2 * in / 3), (uint32_t)in};
        nrg = 2;
    }
    kepi e = {.kind = kind, .bias = NULL, .x0 = x0, .ldx0 = ldy, .xl = xl, .ldxl = ldy,
              .bscale = kind == KEPI_CROSS ? bs : NULL};
    e.bias = Ls.bias;
    kern_scalar.gemm(m, x, ldx, &Ls, rg, nrg, y1, ldy, &e);
    e.bias = Lk.bias;
    ks->gemm(m, x, ldx, &Lk, rg, nrg, y2, ldy, &e);
    for (size_t r = 0; r < m; r++)
        for (size_t n = 0; n < out; n++) {
            double s = fabs(b[n]) * (kind == KEPI_CROSS ? fabs(bs[r]) : 1.0);
            for (size_t g = 0; g < nrg; g++)
                for (size_t k = rg[g].k0; k < rg[g].k1; k++) s += fabs(x[r * ldx + k] * w[n * in + k]);
            if (kind == KEPI_CROSS) s = s * fabs(x0[r * ldy + n]) + fabs(xl[r * ldy + n]);
            double tol = 4e-7 * s + 1e-30;
            cr_assert(fabs((double)y1[r * ldy + n] - y2[r * ldy + n]) <= tol,
                      "%s m=%zu out=%zu in=%zu kind=%d split=%d at (%zu,%zu): %g vs %g", ks->name, m, out, in, kind,
                      split, r, n, y1[r * ldy + n], y2[r * ldy + n]);
        }
    /* Columns past out are never written. */
    for (size_t r = 0; r < m; r++)
        for (size_t n = out; n < ldy; n++) cr_assert_eq(y2[r * ldy + n], 0.0f);
    if (wt != KW_F32) {
        klinear Lf;
        float *y3 = calloc(m * ldy, sizeof *y3);
        cr_assert_eq(kern_pack(&Lf, w, b, out, in, ks->nr), 0);
        e.bias = Lf.bias;
        ks->gemm(m, x, ldx, &Lf, rg, nrg, y3, ldy, &e);
        cr_assert_eq(memcmp(y2, y3, m * ldy * sizeof *y3), 0, "%s wt=%d m=%zu out=%zu in=%zu: 16-bit panels differ",
                     ks->name, wt, m, out, in);
        kern_linear_free(&Lf);
        free(y3);
    }
    kern_linear_free(&Ls);
    kern_linear_free(&Lk);
    free(w), free(b), free(x), free(x0), free(xl), free(bs), free(y1), free(y2), free(mag);
}

Test(kernels, scalar_is_always_available) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    cr_assert_geq(n, 1);
    cr_assert_str_eq(sets[0]->name, "scalar");
    cr_assert_not_null(kern_get());
}

/* Says which sets the tests below run and how (the output of `make unit`
 * shows it): natively, or emulated through SIMDe where this CPU lacks the
 * instructions. Every set is there, one way or the other. */
Test(kernels, every_set_runs_native_or_emulated) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    char line[256];
    int at = snprintf(line, sizeof line, "kernel sets tested:");
    for (size_t s = 0; s < n; s++)
        at += snprintf(line + at, sizeof line - (size_t)at, " %s (%s)", sets[s]->name,
                       sets[s]->emulated ? "emulated, SIMDe" : "native");
    fprintf(stderr, "%s; serving set: %s\n", line, kern_get()->name);
    cr_assert_eq(n, 3, "expected scalar, avx2 and avx512 (native or emulated): %s", line);
    cr_assert(!kern_get()->emulated || getenv("DCN_KERNELS"), "an emulated set is chosen only by name");
}

Test(kernels, gemm_matches_scalar_on_awkward_sizes, .timeout = 120) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    static const size_t rows[] = {1, 5, 6, 7, 13, 49};
    for (size_t s = 1; s < n; s++)
        for (size_t i = 0; i < NSIZES; i++)
            for (size_t j = 0; j < NSIZES; j++) {
                if (sizes[i] * sizes[j] > 70000) continue; /* keep 1023 x 1023 out: covered below */
                for (int kind = KEPI_BIAS; kind <= KEPI_CROSS; kind++)
                    check_gemm(sets[s], rows[(i + j + (size_t)kind) % 6], sizes[i], sizes[j], kind, (int)(i + j) % 2);
            }
    if (n == 1) cr_log_warn("only the scalar kernel set runs on this CPU");
}

Test(kernels, gemm_large_and_split, .timeout = 120) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    for (size_t s = 1; s < n; s++) {
        check_gemm(sets[s], 65, 1023, 65, KEPI_CROSS, 1);
        check_gemm(sets[s], 17, 65, 1023, KEPI_RELU, 1);
        check_gemm(sets[s], 7, 1023, 17, KEPI_BIAS, 0);
    }
}

Test(kernels, gemm_16bit_panels, .timeout = 120) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    static const size_t rows[] = {1, 2, 5, 6, 7, 13, 49, 130};
    for (size_t s = 0; s < n; s++)
        for (int wt = KW_BF16; wt <= KW_F16; wt++)
            for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
                check_gemm_as(sets[s], rows[i], 65, 17, KEPI_RELU, (int)i % 2, wt);
                check_gemm_as(sets[s], rows[i], 33, 300, KEPI_CROSS, (int)(i + 1) % 2, wt); /* > one K block */
                check_gemm_as(sets[s], rows[i], 7, 64, KEPI_BIAS, 0, wt);
            }
}

/* INT8: every set equals the scalar INT8 reference (same quantized rows,
 * same integer sums, same dequantization; only the epilogue's rounding may
 * differ), and the INT8 result stays within the quantization error of the
 * float one: half a step of each weight (max|w_n| / 63) and of each input
 * (max|x_r| / 127), both taken after smoothing (t = x / s, w' = w s) when
 * `smooth`: then some inputs are outliers (x 40 times larger) and s evens
 * them out. Partial ranges fall back to float. */
static void check_gemm_i8(const kern_set *ks, size_t m, size_t out, size_t in, int kind, int smooth) {
    size_t ldx = in + 1, ldy = out + 3;
    float *w = malloc(out * in * sizeof *w), *b = malloc(out * sizeof *b), *x = malloc(m * ldx * sizeof *x);
    float *x0 = malloc(m * ldy * sizeof *x0), *xl = malloc(m * ldy * sizeof *xl), *sm = malloc(in * sizeof *sm);
    float *yq = calloc(m * ldy, sizeof *yq), *ys = calloc(m * ldy, sizeof *ys), *yf = calloc(m * ldy, sizeof *yf);
    for (size_t i = 0; i < out * in; i++) w[i] = frand();
    for (size_t i = 0; i < out; i++) b[i] = frand();
    for (size_t i = 0; i < m * ldx; i++) x[i] = frand() * (float)(1 + i % 3) * (smooth && i % ldx % 7 == 3 ? 40.0f : 1.0f);
    for (size_t k = 0; k < in; k++) sm[k] = k % 7 == 3 ? 6.0f + frand() : 0.8f + 0.3f * frand();
    if (m > 1) memset(x + ldx, 0, in * sizeof *x); /* a zero row */
    for (size_t i = 0; i < m * ldy; i++) x0[i] = frand(), xl[i] = frand();
    klinear Ls, Lk;
    cr_assert_eq(kern_pack(&Ls, w, b, out, in, kern_scalar.nr), 0);
    cr_assert_eq(kern_pack(&Lk, w, b, out, in, ks->nr), 0);
    cr_assert_eq(kern_quantize(&Ls, smooth ? sm : NULL), 0);
    cr_assert_eq(kern_quantize(&Lk, smooth ? sm : NULL), 0);
    krange all = {0, (uint32_t)in};
    kepi e = {.kind = kind, .bias = Lk.bias, .x0 = x0, .ldx0 = ldy, .xl = xl, .ldxl = ldy};
    ks->gemm(m, x, ldx, &Lk, &all, 1, yq, ldy, &e);
    kern_scalar.gemm(m, x, ldx, &Ls, &all, 1, ys, ldy, &e);
    klinear Lf;
    cr_assert_eq(kern_pack(&Lf, w, b, out, in, kern_scalar.nr), 0);
    kern_scalar.gemm(m, x, ldx, &Lf, &all, 1, yf, ldy, &e);
    for (size_t r = 0; r < m; r++) {
        double xm = 0.0; /* max |t|, t = x / s */
        for (size_t k = 0; k < in; k++) {
            double t = fabs(x[r * ldx + k]) / (smooth ? sm[k] : 1.0);
            xm = t > xm ? t : xm;
        }
        for (size_t n = 0; n < out; n++) {
            double wm = 0.0, s = 0.0, q = 0.0; /* max |w'|, w' = w s */
            for (size_t k = 0; k < in; k++) {
                double a = fabs(w[n * in + k]) * (smooth ? sm[k] : 1.0);
                wm = a > wm ? a : wm;
            }
            for (size_t k = 0; k < in; k++) {
                double sk = smooth ? sm[k] : 1.0, t = fabs(x[r * ldx + k]) / sk, a = fabs(w[n * in + k]) * sk;
                s += fabs(x[r * ldx + k] * w[n * in + k]);
                q += t * wm / 126.0 + a * xm / 254.0 + wm * xm / (126.0 * 254.0) + 1e-6 * t * a;
            }
            double f = kind == KEPI_CROSS ? fabs(x0[r * ldy + n]) : 1.0;
            double gs = ys[r * ldy + n], gq = yq[r * ldy + n], gf = yf[r * ldy + n];
            cr_assert(fabs(gq - gs) <= 1e-6 * (s * f + 1.0), "%s i8 m=%zu out=%zu in=%zu kind=%d (%zu,%zu): %g vs reference %g",
                      ks->name, m, out, in, kind, r, n, gq, gs);
            cr_assert(fabs(gq - gf) <= q * f + 1e-5 * (s * f + 1.0), "%s i8 vs float m=%zu out=%zu in=%zu (%zu,%zu): %g vs %g",
                      ks->name, m, out, in, r, n, gq, gf);
        }
    }
    /* Partial ranges take the float path: equal to the float oracle. */
    krange half = {0, (uint32_t)(in / 2)};
    ks->gemm(m, x, ldx, &Lk, &half, 1, yq, ldy, &e);
    kern_scalar.gemm(m, x, ldx, &Lf, &half, 1, yf, ldy, &e);
    for (size_t i = 0; i < m * ldy; i++) /* outliers: sums 40 times larger */
        cr_assert(fabsf(yq[i] - yf[i]) <= (smooth ? 4e-3f : 1e-4f), "%s partial range at %zu", ks->name, i);
    /* Factors of 1 change nothing, bit for bit. */
    if (smooth) {
        for (size_t k = 0; k < in; k++) sm[k] = 1.0f;
        klinear L1;
        cr_assert_eq(kern_pack(&L1, w, b, out, in, ks->nr), 0);
        cr_assert_eq(kern_quantize(&L1, sm), 0);
        cr_assert_eq(kern_quantize(&Lk, NULL), 0);
        e.bias = Lk.bias;
        ks->gemm(m, x, ldx, &Lk, &all, 1, yq, ldy, &e);
        e.bias = L1.bias;
        ks->gemm(m, x, ldx, &L1, &all, 1, ys, ldy, &e);
        cr_assert(!memcmp(yq, ys, m * ldy * sizeof *yq), "%s smoothing by ones changed a result", ks->name);
        kern_linear_free(&L1);
    }
    kern_linear_free(&Ls), kern_linear_free(&Lk), kern_linear_free(&Lf);
    free(w), free(b), free(x), free(x0), free(xl), free(sm), free(yq), free(ys), free(yf);
}

Test(kernels, gemm_int8, .timeout = 120) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    static const size_t rows[] = {1, 2, 3, 4, 5, 7, 17, 40};
    for (size_t s = 0; s < n; s++)
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            for (int sm = 0; sm < 2; sm++) {
                check_gemm_i8(sets[s], rows[i], 33, 70, KEPI_RELU, sm);
                check_gemm_i8(sets[s], rows[i], 16, 5, KEPI_BIAS, sm);
                check_gemm_i8(sets[s], rows[i], 45, 300, KEPI_CROSS, sm);
            }
        }
    /* quantized rows: nearest even, clamped, padded with zeros (128) */
    uint8_t q[8];
    float xr[5] = {1.0f, -1.0f, 0.5f, 0.25f, 0.0f};
    cr_assert_eq(kern_quant_row(xr, NULL, 5, 8, q), 1.0f / 127.0f);
    cr_assert(q[0] == 255 && q[1] == 1 && q[2] == 192 && q[3] == 160 && q[4] == 128 && q[5] == 128 && q[7] == 128);
    float z[3] = {0, 0, 0};
    cr_assert_eq(kern_quant_row(z, NULL, 3, 4, q), 1.0f);
    cr_assert(q[0] == 128 && q[3] == 128);
    /* subnormal rows (127 / max|x| would overflow; found by fuzz_score) and
     * non-finite ones: zeros, finite or non-finite scale */
    float sub[3] = {1e-40f, 0.0f, -2e-40f};
    cr_assert(kern_quant_row(sub, NULL, 3, 4, q) < 1e-40f && q[0] == 128 && q[2] == 128);
    float bad[3] = {1.0f, NAN, 2.0f};
    cr_assert(isnan(kern_quant_row(bad, NULL, 3, 4, q)) && q[0] == 128 && q[1] == 128);
    float inf[2] = {INFINITY, 1.0f};
    cr_assert(isinf(kern_quant_row(inf, NULL, 2, 4, q)) && q[1] == 128);
    /* smoothed: t = x * sm is what is quantized */
    float sm[5] = {0.5f, 2.0f, 1.0f, 4.0f, 1.0f};
    cr_assert_eq(kern_quant_row(xr, sm, 5, 8, q), 2.0f / 127.0f); /* t = 0.5, -2, 0.5, 1, 0 */
    cr_assert(q[0] == 160 && q[1] == 1 && q[2] == 160 && q[3] == 192 && q[4] == 128 && q[7] == 128);
}

/* The kernels of one reduced precision (`what`): says which ran native and
 * which emulated; expects want of them, first named first, where the CPU
 * has AVX2 (none without), a narrow kernel for the avx2 set (get(0)), and
 * no emulated one served unless the variable env names it. */
static void check_dot_list(const char *what, const kern_dot **ks, size_t n, const kern_dot *(*get)(int),
                           size_t want, const char *first, const char *env) {
    char line[256];
    int at = snprintf(line, sizeof line, "%s kernels tested:", what);
    for (size_t i = 0; i < n; i++)
        at += snprintf(line + at, sizeof line - (size_t)at, " %s (%s)", ks[i]->name,
                       ks[i]->emulated ? "emulated, SIMDe" : "native");
    fprintf(stderr, "%s; the avx2 set serves with %s, the avx512 set with %s\n", line, get(0)->name, get(1)->name);
    const kern_set *sets[3];
    if (kern_available(sets, 3) == 1) {
        cr_assert_eq(n, 0, "no %s kernel without AVX2", what);
        return;
    }
    cr_assert_eq(n, want, "expected %zu %s kernels (native or emulated): %s", want, what, line);
    cr_assert_str_eq(ks[0]->name, first);
    cr_assert(!get(0)->wide, "the avx2 set never runs a 512-bit kernel");
    if (!getenv(env))
        for (int wide = 0; wide < 2; wide++) cr_assert(!get(wide)->emulated, "an emulated kernel only by name");
}

/* On any CPU with AVX2 the four INT8 kernels are there, native or
 * emulated; AMX only by name, wherever it runs. */
Test(kernels, every_int8_kernel_runs_native_or_emulated) {
    const kern_i8 *ks[5];
    size_t n = kern_i8_available(ks, 5);
    check_dot_list("INT8", ks, n, kern_i8_get, 4, "maddubs", "DCN_INT8_KERNEL");
    if (n == 4) {
        cr_assert_str_eq(ks[3]->name, "amx");
        cr_assert(ks[3]->by_name && ks[3]->wide, "AMX: the avx512 set's, and only by name");
        cr_assert_eq(!ks[3]->emulated, kern_cpu_amx(), "the AMX kernel is native exactly where the CPU has AMX");
        const char *want = getenv("DCN_INT8_KERNEL");
        if (!want || strcmp(want, "amx")) cr_assert_str_neq(kern_i8_get(1)->name, "amx", "AMX served unnamed");
    }
}

/* A DCN_INT8_KERNEL that names no kernel here (a typo; AMX where the CPU
 * has none, in the server) is said on stderr, and the defaults serve. */
Test(kernels, unknown_int8_kernel_name_is_said, .init = cr_redirect_stderr) {
    setenv("DCN_INT8_KERNEL", "avx512vnnni", 1);
    const kern_i8 *k = kern_i8_get(1);
    const kern_i8 *ks[5];
    size_t n = kern_i8_available(ks, 5);
    fflush(stderr);
    if (!n) return; /* no AVX2: no INT8 kernel to name */
    cr_assert(!k->emulated && !k->by_name, "a default kernel serves");
    cr_assert_stderr_neq_str("", "nothing said of DCN_INT8_KERNEL=avx512vnnni");
}

/* One INT8 case for kernel k against the scalar INT8 reference: the same
 * integer sums and the same float operations after them, so the results
 * are equal bit for bit (NaN for NaN); maddubs's cross epilogue fuses a
 * multiply-add, so it may differ there by its rounding, and its ReLU on
 * columns past the last whole vector passes a NaN where the reference
 * writes 0 (kern_simd.inc's store_tile), so rows holding a NaN or an
 * infinity are compared as results for it only where both are numbers. Rows: random, a
 * zero row, a subnormal one, one with a NaN and one with an infinity (the
 * vector quantizers hand those to kern_quant_row). Columns past out are
 * never written. extreme: every weight +-1 and every input 1, so that the
 * integer sums reach their largest (no overflow at KQ_MAX_IN inputs). */
static void check_i8_kernel(const kern_i8 *k, size_t m, size_t out, size_t in, int kind, int smooth, int extreme) {
    size_t ldx = in + 3, ldy = out + 5;
    float *w = malloc(out * in * sizeof *w), *b = malloc(out * sizeof *b), *x = malloc(m * ldx * sizeof *x);
    float *x0 = malloc(m * ldy * sizeof *x0), *xl = malloc(m * ldy * sizeof *xl), *sm = malloc(in * sizeof *sm);
    float *bs = malloc(m * sizeof *bs), *ys = malloc(m * ldy * sizeof *ys), *yk = malloc(m * ldy * sizeof *yk);
    cr_assert(w && b && x && x0 && xl && sm && bs && ys && yk);
    for (size_t i = 0; i < out * in; i++) w[i] = extreme ? (i / in % 2 ? -1.0f : 1.0f) : frand();
    for (size_t i = 0; i < out; i++) b[i] = frand();
    for (size_t i = 0; i < m * ldx; i++) x[i] = extreme ? 1.0f : frand() * (float)(1 + i % 5);
    for (size_t kk = 0; kk < in; kk++) sm[kk] = kk % 7 == 3 ? 6.0f + frand() : 0.8f + 0.3f * frand();
    for (size_t i = 0; i < m * ldy; i++) x0[i] = frand(), xl[i] = frand(), ys[i] = yk[i] = -7.0f;
    for (size_t r = 0; r < m; r++) bs[r] = frand() + 1.5f;
    if (!extreme && m > 1) memset(x + ldx, 0, in * sizeof *x);
    if (!extreme && m > 2) x[2 * ldx] = 1e-40f, x[2 * ldx + in - 1] = -3e-40f, memset(x + 2 * ldx + 1, 0, (in - 2 + (in < 2)) * sizeof *x);
    if (!extreme && m > 3) x[3 * ldx + in / 2] = NAN;
    if (!extreme && m > 4) x[4 * ldx + in - 1] = -INFINITY;
    klinear L;
    cr_assert_eq(kern_pack(&L, w, b, out, in, kern_scalar.nr), 0);
    cr_assert_eq(kern_quantize(&L, smooth ? sm : NULL), 0);
    krange all = {0, (uint32_t)in};
    kepi e = {.kind = kind, .bias = L.bias, .x0 = x0, .ldx0 = ldy, .xl = xl, .ldxl = ldy,
              .bscale = kind == KEPI_CROSS ? bs : NULL};
    kern_scalar.gemm(m, x, ldx, &L, &all, 1, ys, ldy, &e);
    k->gemm(m, x, ldx, &L, yk, ldy, &e);
    int maddubs = !strcmp(k->name, "maddubs"), fused = maddubs && kind == KEPI_CROSS;
    for (size_t r = 0; r < m; r++)
        for (size_t n = 0; n < ldy; n++) {
            float a = ys[r * ldy + n], c = yk[r * ldy + n];
            if (n >= out) {
                cr_assert_eq(c, -7.0f, "%s wrote past out=%zu at (%zu,%zu)", k->name, out, r, n);
                continue;
            }
            int same = (a != a && c != c) || !memcmp(&a, &c, sizeof a) ||
                       (fused && fabsf(a - c) <= 1e-6f * (1.0f + fabsf(a))) ||
                       (maddubs && (r == 3 || r == 4) && (a != a || c != c));
            cr_assert(same, "%s m=%zu out=%zu in=%zu kind=%d smooth=%d extreme=%d at (%zu,%zu): %.9g vs reference %.9g",
                      k->name, m, out, in, kind, smooth, extreme, r, n, c, a);
        }
    if (extreme) /* sums of +-127 x 63 over every input, exactly */
        for (size_t n = 0; n < out; n++) {
            double want = (n % 2 ? -1.0 : 1.0) * (double)in + b[n];
            cr_assert(kind != KEPI_BIAS || fabs(ys[n] - want) <= 1e-5 * (double)in, "extreme sum %g, want %g", ys[n], want);
        }
    kern_linear_free(&L);
    free(w), free(b), free(x), free(x0), free(xl), free(sm), free(bs), free(ys), free(yk);
}

/* Every INT8 kernel (maddubs, AVX-VNNI, AVX512-VNNI; emulated where this
 * CPU lacks one) equals the scalar INT8 reference on awkward sizes: outputs
 * and inputs 1, 7, 15, 16, 17, 63, 65, 1023 (partial panels, partial column
 * blocks, groups of 4 inputs with padding), rows that leave partial tiles
 * and several row blocks (100 rows; 30 rows of 20,000 inputs: blocks of
 * 12; 5 rows of KQ_MAX_IN inputs: blocks of 4), every epilogue, with and
 * without smoothing; and the largest sums. */
Test(kernels, int8_kernels_equal_reference, .timeout = 300) {
    setenv("DCN_AMX_MIN_ROWS", "1", 1); /* AMX's tiles on every row count, not the VNNI kernel below 16 */
    const kern_i8 *ks[5];
    size_t nk = kern_i8_available(ks, 5);
    static const size_t rows[] = {1, 5, 6, 7, 13, 49, 100};
    for (size_t q = 0; q < nk; q++) {
        for (size_t i = 0; i < NSIZES; i++)
            for (size_t j = 0; j < NSIZES; j++) {
                if (sizes[i] * sizes[j] > 70000) continue;
                for (int kind = KEPI_BIAS; kind <= KEPI_CROSS; kind++)
                    check_i8_kernel(ks[q], rows[(i + j + (size_t)kind) % 7], sizes[i], sizes[j], kind, (int)(i + j) % 2, 0);
            }
        check_i8_kernel(ks[q], 100, 65, 1023, KEPI_RELU, 1, 0);
        check_i8_kernel(ks[q], 7, 1023, 65, KEPI_CROSS, 0, 0);
        check_i8_kernel(ks[q], 30, 17, 20000, KEPI_BIAS, 0, 0);
        check_i8_kernel(ks[q], 5, 33, KQ_MAX_IN, KEPI_BIAS, 0, 1);
        /* AMX: the widest rows its 16-row tiles take (16 rows of 255
         * lines of 64 bytes in the rows buffer), one input more (256
         * lines, stored 257 apart: the VNNI kernel then), and 3 panels of
         * 64-input steps with a 65th row: 2 x 2 blocks, a lone panel and
         * a lone row tile. */
        check_i8_kernel(ks[q], 17, 20, 16320, KEPI_RELU, 0, 0);
        check_i8_kernel(ks[q], 16, 3, 16321, KEPI_BIAS, 1, 0);
        check_i8_kernel(ks[q], 65, 48, 128, KEPI_CROSS, 1, 1);
    }
}

Test(kernels, every_bf16_kernel_runs_native_or_emulated) {
    const kern_bf16 *ks[4];
    size_t n = kern_bf16_available(ks, 4);
    check_dot_list("BF16 dot-product", ks, n, kern_bf16_get, 2, "fma", "DCN_BF16_KERNEL");
}

/* The rounding rule against the instruction's definition: nearest even,
 * ties both ways, NaN quiet, denormals to signed zeros, the largest finite
 * floats to infinity; and a row is rounded so with zeros after it. */
Test(kernels, bf16_rounding_rule) {
    static const struct {
        uint32_t in;
        uint16_t out;
    } c[] = {
        {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81},
        {0xbf80ffffu, 0xbf81}, {0x00000000u, 0x0000}, {0x80000000u, 0x8000}, {0x00000001u, 0x0000},
        {0x807fffffu, 0x8000}, {0x00800000u, 0x0080}, {0x7f7fffffu, 0x7f80}, {0x7f800000u, 0x7f80},
        {0xff800000u, 0xff80}, {0x7f800001u, 0x7fc0}, {0xffc00000u, 0xffc0},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        float f;
        memcpy(&f, &c[i].in, 4);
        cr_assert_eq(kern_f32_to_bf16_daz(f), c[i].out, "0x%08x -> 0x%04x, want 0x%04x", c[i].in,
                     kern_f32_to_bf16_daz(f), c[i].out);
    }
    float x[5] = {1.0f, -2.5f, 1e-40f, 3.0f, 0.1f};
    uint16_t r[8];
    memset(r, 0xff, sizeof r);
    kern_bf16_row(x, 5, 6, r);
    const uint16_t want[6] = {0x3f80, 0xc020, 0x0000, 0x4040, 0x3dcd, 0};
    cr_assert_eq(memcmp(r, want, sizeof want), 0);
    cr_assert_eq(r[6], 0xffff, "nothing written past kbf");
}

/* One BF16 case for kernel k against the scalar BF16 reference: the same
 * rounded rows, the same sums in the same order, the same epilogue, so the
 * results are equal bit for bit (NaN for NaN). The fma kernel keeps sums
 * below FLT_MIN as denormals where the instruction flushes them, so no
 * case here makes one (the zero and denormal rows sum to exact zeros).
 * Rows: random of varied magnitude, a zero row, a denormal one, one with a
 * NaN and one with an infinity. Columns past out are never written. The
 * reference itself stays within the rounding of its inputs of the float64
 * dot product of the BF16-rounded operands. */
static void check_bf16_kernel(const kern_bf16 *k, size_t m, size_t out, size_t in, int kind) {
    size_t ldx = in + 3, ldy = out + 5;
    float *w = malloc(out * in * sizeof *w), *b = malloc(out * sizeof *b), *x = malloc(m * ldx * sizeof *x);
    float *x0 = malloc(m * ldy * sizeof *x0), *xl = malloc(m * ldy * sizeof *xl);
    float *bs = malloc(m * sizeof *bs), *ys = malloc(m * ldy * sizeof *ys), *yk = malloc(m * ldy * sizeof *yk);
    cr_assert(w && b && x && x0 && xl && bs && ys && yk);
    for (size_t i = 0; i < out * in; i++) w[i] = frand();
    for (size_t i = 0; i < out; i++) b[i] = frand();
    for (size_t i = 0; i < m * ldx; i++) x[i] = frand() * (float)(1 + i % 5);
    for (size_t i = 0; i < m * ldy; i++) x0[i] = frand(), xl[i] = frand(), ys[i] = yk[i] = -7.0f;
    for (size_t r = 0; r < m; r++) bs[r] = frand() + 1.5f;
    if (m > 1) memset(x + ldx, 0, in * sizeof *x);
    if (m > 2) {
        memset(x + 2 * ldx, 0, in * sizeof *x);
        x[2 * ldx] = 1e-40f, x[2 * ldx + in - 1] = -3e-40f;
    }
    if (m > 3) x[3 * ldx + in / 2] = NAN;
    if (m > 4) x[4 * ldx + in - 1] = -INFINITY;
    klinear L;
    cr_assert_eq(kern_pack(&L, w, b, out, in, kern_scalar.nr), 0);
    cr_assert_eq(kern_bf16_pack(&L), 0);
    cr_assert(L.wbf && L.kbf == (in + 1) / 2 * 2);
    krange all = {0, (uint32_t)in};
    kepi e = {.kind = kind, .bias = L.bias, .x0 = x0, .ldx0 = ldy, .xl = xl, .ldxl = ldy,
              .bscale = kind == KEPI_CROSS ? bs : NULL};
    kern_scalar.gemm(m, x, ldx, &L, &all, 1, ys, ldy, &e);
    k->gemm(m, x, ldx, &L, yk, ldy, &e);
    for (size_t r = 0; r < m; r++)
        for (size_t n = 0; n < ldy; n++) {
            float a = ys[r * ldy + n], c = yk[r * ldy + n];
            if (n >= out) {
                cr_assert_eq(c, -7.0f, "%s wrote past out=%zu at (%zu,%zu)", k->name, out, r, n);
                continue;
            }
            cr_assert((a != a && c != c) || !memcmp(&a, &c, sizeof a),
                      "%s m=%zu out=%zu in=%zu kind=%d at (%zu,%zu): %.9g vs reference %.9g", k->name, m, out, in,
                      kind, r, n, c, a);
            if (kind != KEPI_BIAS || r == 3 || r == 4) continue;
            double d = 0.0, s = 0.0;
            for (size_t kk = 0; kk < in; kk++) {
                double p = (double)kern_bf16_to_f32(kern_f32_to_bf16_daz(x[r * ldx + kk])) *
                           kern_bf16_to_f32(kern_f32_to_bf16_daz(w[n * in + kk]));
                d += p, s += fabs(p);
            }
            cr_assert(fabs(a - (d + b[n])) <= 6e-8 * (double)in * s + 1e-7 * fabs(b[n]) + 1e-30,
                      "reference %g, float64 %g", a, d + b[n]);
        }
    kern_linear_free(&L);
    free(w), free(b), free(x), free(x0), free(xl), free(bs), free(ys), free(yk);
}

/* Every BF16 kernel (fma, avx512bf16; emulated where this CPU lacks it)
 * equals the scalar BF16 reference (so the SIMDe emulation equals the
 * instruction where the CPU has it) on awkward sizes (odd inputs: a padded
 * pair; partial panels and column blocks), rows that leave partial tiles
 * and several row blocks (100 rows; 20 rows of 20,000 inputs: blocks of
 * 6), every epilogue; and a row as wide as the rows buffer allows. Through
 * a kern_set too: a layer with a BF16 copy read over all its inputs runs
 * the set's BF16 kernel, and over a part of them its float panels. */
Test(kernels, bf16_kernels_equal_reference) {
    const kern_bf16 *ks[4];
    size_t nk = kern_bf16_available(ks, 4);
    /* Where the CPU has the instruction, its emulation is checked too. */
    if (nk == 2 && !ks[1]->emulated && &kern_bf16_avx512bf16_emu) ks[nk++] = &kern_bf16_avx512bf16_emu;
    static const size_t rows[] = {1, 5, 6, 7, 13, 49, 100};
    for (size_t q = 0; q < nk; q++) {
        for (size_t i = 0; i < NSIZES; i++)
            for (size_t j = 0; j < NSIZES; j++) {
                if (sizes[i] * sizes[j] > 70000) continue;
                for (int kind = KEPI_BIAS; kind <= KEPI_CROSS; kind++)
                    check_bf16_kernel(ks[q], rows[(i + j + (size_t)kind) % 7], sizes[i], sizes[j], kind);
            }
        check_bf16_kernel(ks[q], 100, 65, 1023, KEPI_RELU);
        check_bf16_kernel(ks[q], 7, 1023, 65, KEPI_CROSS);
        check_bf16_kernel(ks[q], 20, 17, 20000, KEPI_BIAS);
        check_bf16_kernel(ks[q], 2, 5, KB_MAX_IN, KEPI_BIAS);
    }
    const kern_set *sets[3];
    size_t ns = kern_available(sets, 3);
    for (size_t i = 0; i < ns; i++) {
        size_t m = 9, out = 40, in = 30;
        float w[40 * 30], x[9 * 30], y1[9 * 40], y2[9 * 40];
        for (size_t t = 0; t < sizeof w / sizeof w[0]; t++) w[t] = frand();
        for (size_t t = 0; t < sizeof x / sizeof x[0]; t++) x[t] = frand();
        klinear L, Lr;
        cr_assert_eq(kern_pack(&L, w, NULL, out, in, sets[i]->nr), 0);
        cr_assert_eq(kern_pack(&Lr, w, NULL, out, in, kern_scalar.nr), 0);
        cr_assert_eq(kern_bf16_pack(&L), 0);
        cr_assert_eq(kern_bf16_pack(&Lr), 0);
        krange all = {0, (uint32_t)in}, part = {0, (uint32_t)in / 2};
        kepi e = {.kind = KEPI_BIAS, .bias = L.bias};
        sets[i]->gemm(m, x, in, &L, &all, 1, y1, out, &e);
        kern_scalar.gemm(m, x, in, &Lr, &all, 1, y2, out, &e);
        cr_assert_eq(memcmp(y1, y2, sizeof y1), 0, "%s: a BF16 layer over all its inputs", sets[i]->name);
        sets[i]->gemm(m, x, in, &L, &part, 1, y1, out, &e);
        klinear Lf; /* over a part: the float panels, as without the copy */
        cr_assert_eq(kern_pack(&Lf, w, NULL, out, in, sets[i]->nr), 0);
        sets[i]->gemm(m, x, in, &Lf, &part, 1, y2, out, &e);
        cr_assert_eq(memcmp(y1, y2, sizeof y1), 0, "%s: a BF16 layer over part of its inputs", sets[i]->name);
        kern_linear_free(&L), kern_linear_free(&Lr), kern_linear_free(&Lf);
    }
}

Test(kernels, embedding_rows_match_scalar) {
    const kern_set *sets[3];
    size_t nsets = kern_available(sets, 3);
    for (size_t s = 1; s < nsets; s++)
        for (size_t i = 0; i < NSIZES; i++) {
            size_t n = sizes[i];
            /* +1 element offsets make every pointer unaligned. */
            float *row = malloc((n + 1) * sizeof *row), *d1 = malloc((n + 1) * sizeof *d1),
                  *d2 = malloc((n + 1) * sizeof *d2);
            uint16_t *h = malloc((n + 1) * sizeof *h);
            int8_t *q = malloc(n + 1);
            for (size_t k = 0; k <= n; k++) {
                row[k] = frand();
                d1[k] = d2[k] = frand();
                q[k] = (int8_t)(frand() * 127);
                h[k] = (uint16_t)(rng_state & 0x7bff); /* finite halves and bfloat16s */
            }
            sets[s]->add_f32(d2 + 1, row + 1, n);
            kern_scalar.add_f32(d1 + 1, row + 1, n);
            for (size_t k = 0; k <= n; k++) cr_assert_eq(d1[k], d2[k], "add_f32 n=%zu k=%zu", n, k);
            sets[s]->add_f16(d2 + 1, h + 1, n);
            kern_scalar.add_f16(d1 + 1, h + 1, n);
            for (size_t k = 0; k <= n; k++) cr_assert_eq(d1[k], d2[k], "add_f16 n=%zu k=%zu", n, k);
            sets[s]->add_bf16(d2 + 1, h + 1, n);
            kern_scalar.add_bf16(d1 + 1, h + 1, n);
            for (size_t k = 0; k <= n; k++) cr_assert_eq(d1[k], d2[k], "add_bf16 n=%zu k=%zu", n, k);
            sets[s]->add_i8(d2 + 1, q + 1, 0.037f, n);
            kern_scalar.add_i8(d1 + 1, q + 1, 0.037f, n);
            for (size_t k = 0; k <= n; k++)
                cr_assert(fabsf(d1[k] - d2[k]) <= 1e-6f * (1.0f + fabsf(d1[k])), "add_i8 n=%zu k=%zu", n, k);
            free(row), free(d1), free(d2), free(h), free(q);
        }
}

/* Many tiny ranges (more pieces than one K block holds) and empty ones. */
Test(kernels, gemm_many_ranges) {
    const kern_set *sets[3];
    size_t n = kern_available(sets, 3);
    size_t in = 700, out = 33, m = 20;
    float *w = malloc(out * in * sizeof *w), *x = malloc(m * in * sizeof *x);
    float *y1 = calloc(m * out, sizeof *y1), *y2 = calloc(m * out, sizeof *y2);
    for (size_t i = 0; i < out * in; i++) w[i] = round_to(frand(), KW_BF16);
    for (size_t i = 0; i < m * in; i++) x[i] = frand();
    krange rg[200];
    size_t nrg = 0;
    for (uint32_t k = 0; k + 3 <= in && nrg < 200; k += 5) rg[nrg++] = (krange){k, k + (nrg % 4 == 0 ? 0 : 3)};
    for (size_t s = 1; s < 2 * n; s++) { /* then again with BF16 panels */
        klinear Ls, Lk;
        kern_pack(&Ls, w, NULL, out, in, kern_scalar.nr);
        kern_pack_as(&Lk, w, NULL, out, in, sets[s % n]->nr, s < n ? KW_F32 : KW_BF16);
        kepi e = {.kind = KEPI_RELU, .bias = Ls.bias};
        kern_scalar.gemm(m, x, in, &Ls, rg, nrg, y1, out, &e);
        e.bias = Lk.bias;
        sets[s % n]->gemm(m, x, in, &Lk, rg, nrg, y2, out, &e);
        for (size_t i = 0; i < m * out; i++) cr_assert(fabsf(y1[i] - y2[i]) <= 1e-4f, "%zu: %g vs %g", i, y1[i], y2[i]);
        /* no input at all: the epilogue of a zero sum */
        e.bias = Lk.bias;
        sets[s % n]->gemm(m, x, in, &Lk, rg, 0, y2, out, &e);
        for (size_t i = 0; i < m * out; i++) cr_assert_eq(y2[i], 0.0f);
        kern_linear_free(&Ls);
        kern_linear_free(&Lk);
    }
    free(w), free(x), free(y1), free(y2);
}

/* Vector activations against libm: a few ulp, and exact where g is exact. */
Test(kernels, activations_match_libm) {
    const kern_set *sets[3];
    size_t nsets = kern_available(sets, 3);
    for (size_t s = 1; s < nsets; s++)
        for (int kind = 0; kind <= 4; kind++)
            for (size_t i = 0; i < NSIZES; i++) {
                size_t n = sizes[i];
                float *a = malloc((n + 1) * sizeof *a), *b = malloc((n + 1) * sizeof *b);
                for (size_t k = 0; k <= n; k++) {
                    float v = frand() * (k % 3 == 0 ? 30.0f : k % 3 == 1 ? 2.0f : 0.01f);
                    if (k == 5) v = 100.0f;
                    if (k == 6) v = -100.0f;
                    a[k] = b[k] = v;
                }
                kern_scalar.act(a + 1, n, kind);
                sets[s]->act(b + 1, n, kind);
                for (size_t k = 0; k <= n; k++) {
                    float tol = (kind == 2 || kind == 4) ? 4e-7f * fabsf(a[k]) + 1e-9f : 0.0f;
                    cr_assert(fabsf(a[k] - b[k]) <= tol, "%s act %d n=%zu k=%zu: %.9g vs %.9g", sets[s]->name, kind,
                              n, k, a[k], b[k]);
                }
                free(a), free(b);
            }
}

Test(kernels, half_conversions) {
    cr_assert_eq(kern_f16_to_f32(0x3c00), 1.0f);
    cr_assert_eq(kern_f16_to_f32(0xc000), -2.0f);
    cr_assert_eq(kern_f16_to_f32(0x0001), 5.960464477539063e-8f); /* smallest subnormal */
    cr_assert_eq(kern_f16_to_f32(0x7bff), 65504.0f);
    cr_assert(isinf(kern_f16_to_f32(0x7c00)));
    cr_assert(isnan(kern_f16_to_f32(0x7e00)));
    cr_assert_eq(kern_bf16_to_f32(0x3f80), 1.0f);
    cr_assert_eq(kern_bf16_to_f32(0xc040), -3.0f);
    /* Every half and bfloat16 value survives float and back. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = kern_f16_to_f32((uint16_t)h), g = kern_bf16_to_f32((uint16_t)h);
        if (!isnan(f)) cr_assert_eq(kern_f32_to_f16(f), h, "f16 %04x", h);
        if (!isnan(g)) cr_assert_eq(kern_f32_to_bf16(g), h, "bf16 %04x", h);
        if (isnan(f)) cr_assert(isnan(kern_f16_to_f32(kern_f32_to_f16(f))));
        if (isnan(g)) cr_assert(isnan(kern_bf16_to_f32(kern_f32_to_bf16(g))));
    }
    /* Rounding: to nearest, ties to even, overflow to infinity. */
    cr_assert_eq(kern_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);          /* tie, even below */
    cr_assert_eq(kern_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);      /* tie, even above */
    cr_assert_eq(kern_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    cr_assert_eq(kern_f32_to_f16(65519.0f), 0x7bff);
    cr_assert_eq(kern_f32_to_f16(65520.0f), 0x7c00);
    cr_assert_eq(kern_f32_to_f16(-1e9f), 0xfc00);
    cr_assert_eq(kern_f32_to_f16(0x1p-25f), 0x0000);                 /* tie to zero */
    cr_assert_eq(kern_f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
    cr_assert_eq(kern_f32_to_f16(3 * 0x1p-25f), 0x0002);             /* tie, even above */
    cr_assert_eq(kern_f32_to_f16(1023 * 0x1p-24f + 0x1p-25f), 0x0400); /* carries to the smallest normal */
    cr_assert_eq(kern_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    cr_assert_eq(kern_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    cr_assert_eq(kern_f32_to_bf16(3.4e38f), 0x7f80);
}

/* The system's transparent-huge-page mode: 1 when it honours madvise. */
static int thp_advisable(void) {
    int mode = kern_thp_host();
    return mode == KTHP_ALWAYS || mode == KTHP_MADVISE;
}

/* THPeligible of the mapping holding p in /proc/self/smaps, or -1. */
static int thp_eligible(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0, out = -1;
    uintptr_t a = (uintptr_t)p;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = a >= lo && a < hi;
            continue;
        }
        if (in && sscanf(line, "THPeligible: %d", &out) == 1) break;
    }
    fclose(f);
    return out;
}

/* kern_alloc: 64-byte aligned below 2 MiB; from 2 MiB, 2 MiB aligned and
 * advised into huge pages (the mapping is eligible where the system allows
 * it); the memory is whole and is freed with free(). */
Test(kernels, alloc_large_buffers_in_huge_pages) {
    size_t small = 1000, big = (5u << 20) + 100;
    unsigned char *s = kern_alloc(small), *b = kern_alloc(big);
    cr_assert(s && b);
    cr_assert_eq((uintptr_t)s % 64, 0);
    cr_assert_eq((uintptr_t)b % (2u << 20), 0, "a large buffer starts on a huge-page boundary");
    memset(s, 1, small);
    memset(b, 1, big);
    cr_assert_eq(b[big - 1], 1);
    int el = thp_eligible(b);
    if (!thp_advisable())
        cr_log_warn("transparent huge pages disabled here: only alignment checked");
    else if (el < 0)
        cr_log_warn("no THPeligible line in smaps: only alignment checked");
    else
        cr_assert_eq(el, 1, "the large buffer's mapping is eligible for huge pages");
    free(s), free(b);
}

/* Writes text to a fresh temporary file; returns its path (static). */
static const char *thp_file(const char *text) {
    static char path[32];
    strcpy(path, "/tmp/dcn-thp-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    return path;
}

Test(kernels, huge_page_bytes_and_host_setting) {
    /* what kern_alloc advises: whole 2 MiB pages of buffers from 2 MiB up,
     * the size rounded to 64 bytes first as the allocation is */
    cr_assert_eq(kern_huge_bytes(0), 0);
    cr_assert_eq(kern_huge_bytes(KERN_HUGE - 65), 0);
    cr_assert_eq(kern_huge_bytes(KERN_HUGE - 1), KERN_HUGE);
    cr_assert_eq(kern_huge_bytes(KERN_HUGE), KERN_HUGE);
    cr_assert_eq(kern_huge_bytes(3 * KERN_HUGE - 1), 3 * KERN_HUGE);
    cr_assert_eq(kern_huge_bytes(3 * KERN_HUGE + 100), 3 * KERN_HUGE);
    /* the setting is the bracketed word, as the kernel writes it */
    static const struct {
        const char *text;
        int mode;
    } cases[] = {
        {"always [madvise] never\n", KTHP_MADVISE},
        {"[always] madvise never\n", KTHP_ALWAYS},
        {"always madvise [never]\n", KTHP_NEVER},
        {"always madvise never\n", KTHP_UNKNOWN},
        {"", KTHP_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = thp_file(cases[i].text);
        cr_assert_eq(kern_thp_mode(path), cases[i].mode, "%s", cases[i].text);
        setenv("DCN_THP_FILE", path, 1); /* what the host setting reads in tests */
        cr_assert_eq(kern_thp_host(), cases[i].mode, "%s", cases[i].text);
        unlink(path);
    }
    cr_assert_eq(kern_thp_mode("/nonexistent/dcn-thp"), KTHP_UNKNOWN);
    setenv("DCN_THP_FILE", "/nonexistent/dcn-thp", 1);
    cr_assert_eq(kern_thp_host(), KTHP_UNKNOWN);
    unsetenv("DCN_THP_FILE");
}
