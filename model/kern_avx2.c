/* kern_avx2.c — the kernels for AVX2 + FMA + F16C (8 floats a vector),
 * compiled with -mavx2 -mfma -mf16c and used only when the CPU has them. */
#include "model/kernels.h"

#include <immintrin.h>
#include <math.h>

typedef __m256 V;
#define VW 8
#define MR 6
#define KSET kern_avx2
#define SET_NAME "avx2"
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vstore(p, v) _mm256_storeu_ps((p), (v))
#define vbcast(f) _mm256_set1_ps(f)
#define vfma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define vadd(a, b) _mm256_add_ps((a), (b))
#define vmax(a, b) _mm256_max_ps((a), (b))
#define vload_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define vload_bf16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))), 16))
#define vload_i8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p))))
/* K blocks of 512 and row blocks of 48: the Criteo models' layers (429
 * inputs) run in one K block, so no partial sums go through y, and the
 * packed rows (48 x 512 floats) stay in L2 beside the weight stream
 * (bench/README.md, "What each change bought"). */
#define KC 512
#define MC (MR * 8)
#define vmin(a, b) _mm256_min_ps((a), (b))
#define vmul(a, b) _mm256_mul_ps((a), (b))
#define vsub(a, b) _mm256_sub_ps((a), (b))
#define vdiv(a, b) _mm256_div_ps((a), (b))
#define vround(a) _mm256_round_ps((a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vabs(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (a))
#define vcopysign(mag, sgn) _mm256_or_ps(vabs(mag), _mm256_and_ps(_mm256_set1_ps(-0.0f), (sgn)))
#define vblend_lt(a, b, t, f) _mm256_blendv_ps((f), (t), _mm256_cmp_ps((a), (b), _CMP_LT_OQ))
#define vscale2(p, n) _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)))

/* Packs n columns (a multiple of 8) from k0 of `rows` rows of x (ldx
 * apart; rows < 6 read as zeros) into dst as the packed GEMM wants them: for
 * each k, the 6 rows' values in a row. Eight columns at a time through an
 * 8x8 transpose; each 8-float store overlaps the next one's first 2 floats,
 * and the last writes 2 floats past the group (the buffer has slack). */
#define HAVE_PACK_COLS 1
#define PACK_COLS 8
static void pack_cols(const float *x, size_t ldx, size_t rows, uint32_t k0, uint32_t n, float *dst) {
    for (uint32_t k = k0; k < k0 + n; k += 8, dst += 8 * 6) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) r[i] = (size_t)i < rows && i < 6 ? _mm256_loadu_ps(x + (size_t)i * ldx + k) : _mm256_setzero_ps();
        __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
        __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
        __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
        _mm256_storeu_ps(dst + 0 * 6, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(dst + 1 * 6, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(dst + 2 * 6, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(dst + 3 * 6, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(dst + 4 * 6, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(dst + 5 * 6, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(dst + 6 * 6, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(dst + 7 * 6, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
}

#include <string.h>

static void gemm_avx2(size_t m, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg, float *y,
                      size_t ldy, const kepi *e);
#define KGEMM gemm_avx2
#include "model/kern_simd.inc"

/* ---------------------------------------------------------------- INT8
 * Layers with an INT8 copy (kern_quantize), read over all their inputs.
 * Rows in blocks of up to QROWS are quantized (kern_quant_row's rule, in
 * vectors) into qbuf, row-major: 4 consecutive inputs of a row are one
 * 32-bit broadcast. Per panel of 16 outputs, tiles of 4 rows: per group of
 * 4 inputs, vpmaddubsw (uint8 x int8, pairs into int16: no saturation with
 * 7-bit weights) then vpmaddwd by ones (pairs into int32) and an add, 8
 * accumulators of 8 outputs. Dequantized as (acc - wzc) * (sx * wsc), then
 * the float epilogue of the other kernels (store_tile). */
#define QROWS 16
#define QBUF (128u << 10)
#ifndef QPF
#define QPF 8192 /* bytes ahead in the weights the first tile of a row block prefetches */
#endif
static _Thread_local uint8_t qbuf[QBUF] __attribute__((aligned(64)));
static _Thread_local float qscale[QROWS];

/* kern_quant_row, 8 floats at a time: the same products, the same rounding
 * (t = x * sm first when the layer is smoothed, as there). */
static inline __attribute__((always_inline)) __m256 qload(const float *x, const float *sm, size_t k) {
    __m256 v = _mm256_loadu_ps(x + k);
    return sm ? _mm256_mul_ps(v, _mm256_loadu_ps(sm + k)) : v;
}

static float quant_row(const float *x, const float *sm, size_t n, size_t kq, uint8_t *out) {
    __m256 am = _mm256_setzero_ps(), un = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 v = qload(x, sm, k);
        am = _mm256_max_ps(am, _mm256_andnot_ps(sign, v));
        un = _mm256_or_ps(un, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float t[8], amax = 0.0f;
    _mm256_storeu_ps(t, am);
    for (int i = 0; i < 8; i++) amax = t[i] > amax ? t[i] : amax;
    for (size_t j = k; j < n; j++) {
        float v = sm ? x[j] * sm[j] : x[j];
        if (fabsf(v) > amax || v != v) amax = fabsf(v);
    }
    if (_mm256_movemask_ps(un) || !(amax >= KQ_TINY) || !isfinite(amax)) return kern_quant_row(x, sm, n, kq, out);
    float inv = 127.0f / amax;
    __m256 vi = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    __m256i off = _mm256_set1_epi32(128);
    for (k = 0; k + 8 <= n; k += 8) {
        __m256 q = _mm256_round_ps(_mm256_mul_ps(qload(x, sm, k), vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i u = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi)), off);
        __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
        _mm_storel_epi64((__m128i *)(void *)(out + k), _mm_packus_epi16(p, p));
    }
    kern_quant_span(x, sm, k, n, kq, inv, out);
    return amax / 127.0f;
}

void kern_avx2_gemm_i8(size_t m, const float *x, size_t ldx, const klinear *L, float *y, size_t ldy, const kepi *e) {
    size_t kq = L->kq, groups = kq / 4, panels = (L->out + KQ_NR - 1) / KQ_NR;
    size_t rows_blk = QBUF / kq < QROWS ? QBUF / kq : QROWS;
    const __m256i ones = _mm256_set1_epi16(1);
    for (size_t r0 = 0; r0 < m; r0 += rows_blk) {
        size_t rb = m - r0 < rows_blk ? m - r0 : rows_blk;
        for (size_t i = 0; i < rb; i++) qscale[i] = quant_row(x + (r0 + i) * ldx, L->qsm, L->in, kq, qbuf + i * kq);
        for (size_t p = 0; p < panels; p++) {
            const int8_t *wp = L->wq + p * groups * (KQ_NR * 4);
            size_t n0 = p * KQ_NR, ncols = L->out - n0 < KQ_NR ? L->out - n0 : KQ_NR;
            __m256 ws0 = _mm256_loadu_ps(L->wsc + n0), ws1 = _mm256_loadu_ps(L->wsc + n0 + 8);
            __m256i wz0 = _mm256_loadu_si256((const __m256i *)(const void *)(L->wzc + n0));
            __m256i wz1 = _mm256_loadu_si256((const __m256i *)(const void *)(L->wzc + n0 + 8));
            for (size_t t = 0; t < rb; t += 4) {
                int mr = (int)(rb - t < 4 ? rb - t : 4);
                const uint8_t *a0 = qbuf + t * kq, *a1 = a0 + (mr > 1 ? kq : 0), *a2 = a0 + (mr > 2 ? 2 * kq : 0),
                              *a3 = a0 + (mr > 3 ? 3 * kq : 0);
                __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
                        c30 = c00, c31 = c00;
                const int8_t *w = wp;
                for (size_t g = 0; g < groups; g++, w += KQ_NR * 4) {
                    /* The first tile of a row block streams the panels
                     * (the others find them in cache): one stream the
                     * hardware prefetcher trails at this pace, asked for
                     * QPF bytes ahead, as the float few-rows tiles do. */
                    if (t == 0) __builtin_prefetch(w + QPF, 0, 3);
                    __m256i w0 = _mm256_load_si256((const __m256i *)(const void *)w);
                    __m256i w1 = _mm256_load_si256((const __m256i *)(const void *)(w + 32));
                    int32_t v;
#define QROW(a, c0, c1)                                                                     \
    memcpy(&v, a + 4 * g, 4);                                                               \
    {                                                                                       \
        __m256i b = _mm256_set1_epi32(v);                                                   \
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w0), ones));    \
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w1), ones));    \
    }
                    QROW(a0, c00, c01)
                    QROW(a1, c10, c11)
                    QROW(a2, c20, c21)
                    QROW(a3, c30, c31)
#undef QROW
                }
                V acc[MR][2];
                const __m256i c[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
                for (int i = 0; i < mr; i++) {
                    __m256 s = _mm256_set1_ps(qscale[t + (size_t)i]);
                    acc[i][0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[i][0], wz0)), _mm256_mul_ps(s, ws0));
                    acc[i][1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[i][1], wz1)), _mm256_mul_ps(s, ws1));
                }
                store_tile(acc, y + (r0 + t) * ldy, ldy, mr, ncols, e, r0 + t, n0, 1);
            }
        }
    }
}

static void gemm_avx2(size_t m, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg, float *y,
                      size_t ldy, const kepi *e) {
    if (kern_all_inputs(L, rg, n_rg) && (L->wq || L->wbf)) /* INT8 or BF16 copy */
        (L->wq ? kern_i8_get(0) : kern_bf16_get(0))->gemm(m, x, ldx, L, y, ldy, e);
    else
        gemm_simd(m, x, ldx, L, rg, n_rg, y, ldy, e);
}

const kern_i8 kern_i8_maddubs = {
    .name = "maddubs",
    .gemm = kern_avx2_gemm_i8,
};
