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

#include <string.h>
#include "model/kern_simd.inc"
