/* kern_bf16_512.c — the BF16 dot-product GEMM on AVX512_BF16 (vdpbf16ps:
 * 16 float lanes, each adding the products of a pair of BF16), compiled
 * with the AVX-512 and BF16 flags and run by the avx512 set where the CPU
 * has them (kernels.c: kern_bf16_get). The code is kern_bf16.inc, shared
 * with the AVX2 FMA kernel. Test binaries also hold it compiled against
 * SIMDe (KERN_EMULATED) as kern_bf16_avx512bf16_emu.
 *
 * DESIGN: tiles of 6 rows x 4 panels (64 outputs): 24 accumulators, 4
 * weight vectors and a broadcast of the 32 zmm. Per pair of inputs: 4 loads
 * of 64 bytes and 6 broadcasts for 24 vdpbf16ps, each 32 multiply-adds,
 * twice an FMA's 16, on the same two pipes. Rows are rounded to BF16 by
 * vcvtneps2bf16, the rule kern_f32_to_bf16_daz writes out.
 */
#include "model/kernels.h"

#ifndef KERN_EMULATED
#include <immintrin.h>
#endif

typedef __m512 KF;
typedef __m512i KB;
#define LANES 16
#define PPB 4
#define MR 6
#ifdef KERN_EMULATED
#define BSET kern_bf16_avx512bf16_emu
#define kb_dp(acc, u, w) emu_dpbf16_ps_i((acc), (u), (w))
#define cvt_bf16(v) _mm512_cvtneps_pbh(v)
#else
#define BSET kern_bf16_avx512bf16
#define kb_dp(acc, u, w) _mm512_dpbf16_ps((acc), (__m512bh)(u), (__m512bh)(w))
#define cvt_bf16(v) ((__m256i)_mm512_cvtneps_pbh(v))
#endif
#define BNAME "avx512bf16"
#define BWIDE 1
#define kb_load(p) _mm512_load_si512((const void *)(p))
#define kb_bcast32(u) _mm512_set1_epi32((int)(u))
#define kf_zero() _mm512_setzero_ps()
#define kf_load(p) _mm512_loadu_ps(p)
#define kf_store(p, v) _mm512_storeu_ps((p), (v))
#define kf_bcast(f) _mm512_set1_ps(f)
#define kf_add(a, b) _mm512_add_ps((a), (b))
#define kf_mul(a, b) _mm512_mul_ps((a), (b))
#define kf_max(a, b) _mm512_max_ps((a), (b))

/* kern_bf16_row, 16 floats at a time. */
static inline void bf16_row(const float *x, size_t n, size_t kbf, uint16_t *out) {
    size_t k = 0;
    for (; k + 16 <= n; k += 16) _mm256_storeu_si256((__m256i *)(void *)(out + k), cvt_bf16(_mm512_loadu_ps(x + k)));
    for (; k < n; k++) out[k] = kern_f32_to_bf16_daz(x[k]);
    for (; k < kbf; k++) out[k] = 0;
}
#define BF16_ROW bf16_row

#include "model/kern_bf16.inc"
