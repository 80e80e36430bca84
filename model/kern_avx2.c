/* kern_avx2.c — the kernels for AVX2 + FMA + F16C (8 floats a vector),
 * compiled with -mavx2 -mfma -mf16c and used only when the CPU has them. */
#include "model/kernels.h"

#include <immintrin.h>

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
#define KC 256
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
#include "model/kern_simd.inc"
