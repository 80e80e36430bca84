/* kern_bf16_fma.c — the BF16 dot-product GEMM on AVX2 + FMA, for CPUs
 * without AVX512_BF16 (and the avx2 set): each 32-bit pair of BF16 widened
 * to its two floats (odd: the high half kept; even: shifted up), two FMAs
 * a pair, odd first. A product of two BF16 is exact in float, so each FMA
 * rounds once, as vdpbf16ps's adds do: the results are the avx512bf16
 * kernel's, bit for bit (but for sums that fall below FLT_MIN, which FMA
 * keeps as denormals). The code is kern_bf16.inc.
 *
 * DESIGN: tiles of 4 rows x one panel (16 outputs, 2 ymm): 8 accumulators,
 * 4 widened weight vectors and 2 broadcasts of the 16 ymm. It exists so
 * that a model opened with BF16 dot products scores the same on every
 * machine; it is no faster than the float path on widened BF16 panels.
 */
#include "model/kernels.h"

#include <immintrin.h>

typedef __m256 KF;
typedef __m256i KB;
#define LANES 8
#define PPB 1
#define MR 4
#define BSET kern_bf16_fma
#define BNAME "fma"
#define BWIDE 0
#define kb_load(p) _mm256_load_si256((const __m256i *)(const void *)(p))
#define kb_bcast32(u) _mm256_set1_epi32((int)(u))
#define kf_zero() _mm256_setzero_ps()
#define kf_load(p) _mm256_loadu_ps(p)
#define kf_store(p, v) _mm256_storeu_ps((p), (v))
#define kf_bcast(f) _mm256_set1_ps(f)
#define kf_add(a, b) _mm256_add_ps((a), (b))
#define kf_mul(a, b) _mm256_mul_ps((a), (b))
#define kf_max(a, b) _mm256_max_ps((a), (b))

static inline __attribute__((always_inline)) __m256 kb_dp(__m256 acc, __m256i u, __m256i w) {
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256 uo = _mm256_castsi256_ps(_mm256_and_si256(u, hi)), ue = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(w, hi)), we = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    return _mm256_fmadd_ps(ue, we, _mm256_fmadd_ps(uo, wo, acc));
}

#define BF16_ROW kern_bf16_row

#include "model/kern_bf16.inc"
