/* kern_avx512.c — the kernels for AVX-512 F/BW/VL/DQ (16 floats a vector),
 * compiled with the AVX-512 flags and used only when the CPU has them. The
 * code is kern_simd.inc, shared with the AVX2 set and tested through it.
 * Test binaries also hold this file compiled against SIMDe
 * (KERN_EMULATED, tests/lib/simde_x86.h) as kern_avx512_emu, which the
 * kernel and parity tests run on CPUs without AVX-512. */
#include "model/kernels.h"

#ifndef KERN_EMULATED
#include <immintrin.h>
#endif

typedef __m512 V;
#define VW 16
/* Tiles of 8 rows x 32 outputs (16 accumulators, not the 24 of the AVX2
 * shape widened), K blocks of 512 inputs, packed row blocks of 64 rows:
 * measured against 12 x 32, K 128, 192 rows (and 14 x 32, 6 x 32, 4 x 32;
 * K 256 to 768; blocks of 32 to 192 rows) on Zen 5, whose zmm FMA issues
 * once a cycle: one thread +10-35% on dlrmv2 and criteo-full from batch 16
 * (102 GFLOP/s at batch 256, 87% of the measured peak); two threads +5-22%
 * from batch 64 (bench/README.md). Fewer accumulators cover the FMA
 * latency at that rate; 8-row tiles leave fewer short tiles when a batch
 * is split between threads. All three can be set at compile time for such
 * comparisons. */
#ifndef MR
#define MR 8
#endif
#ifndef MC
#define MC (MR * 8)
#endif
#ifdef KERN_EMULATED
#define KSET kern_avx512_emu
#else
#define KSET kern_avx512
#endif
#define SET_NAME "avx512"
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vstore(p, v) _mm512_storeu_ps((p), (v))
#define vbcast(f) _mm512_set1_ps(f)
#define vfma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define vadd(a, b) _mm512_add_ps((a), (b))
#define vmax(a, b) _mm512_max_ps((a), (b))
#define vload_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
#define vload_bf16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(p))), 16))
#define vload_i8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))))
#ifndef KC
#define KC 512
#endif
#define vmin(a, b) _mm512_min_ps((a), (b))
#define vmul(a, b) _mm512_mul_ps((a), (b))
#define vsub(a, b) _mm512_sub_ps((a), (b))
#define vdiv(a, b) _mm512_div_ps((a), (b))
#define vround(a) _mm512_roundscale_ps((a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vabs(a) _mm512_abs_ps(a)
#define vcopysign(mag, sgn) _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(vabs(mag)), _mm512_and_si512(_mm512_set1_epi32((int)0x80000000u), _mm512_castps_si512(sgn))))
#define vblend_lt(a, b, t, f) _mm512_mask_blend_ps(_mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ), (f), (t))
#define vscale2(p, n) _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23)))

#include <string.h>

static void gemm_avx512(size_t m, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg,
                        float *y, size_t ldy, const kepi *e);
#define KGEMM gemm_avx512
#include "model/kern_simd.inc"

/* INT8 layers run the kernel kern_i8_get(1) chose (its panels are 16
 * outputs wide whatever nr is): AVX512-VNNI's where the CPU has it
 * (kern_vnni512.c), else the AVX2 vpmaddubsw kernel. */
static void gemm_avx512(size_t m, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg,
                        float *y, size_t ldy, const kepi *e) {
    if (kern_all_inputs(L, rg, n_rg) && (L->wq || L->wbf)) /* INT8 or BF16 copy */
        (L->wq ? kern_i8_get(1) : kern_bf16_get(1))->gemm(m, x, ldx, L, y, ldy, e);
    else
        gemm_simd(m, x, ldx, L, rg, n_rg, y, ldy, e);
}
