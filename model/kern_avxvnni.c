/* kern_avxvnni.c — the INT8 GEMM on AVX-VNNI (the VEX-encoded, 256-bit
 * vpdpbusd of CPUs that have it without AVX-512: Intel Alder Lake and
 * later client cores, and AVX-512 parts run with it off), compiled with
 * AVX2 + AVX-VNNI flags and run by the avx2 set where the CPU has it
 * (kernels.c: kern_i8_get). The code is kern_vnni.inc, shared with the
 * 512-bit kernel. Test binaries also hold it compiled against SIMDe
 * (KERN_EMULATED) as kern_i8_avxvnni_emu.
 *
 * DESIGN: tiles of 6 rows x one panel (16 outputs, 2 ymm): 12
 * accumulators, 2 weight vectors and a broadcast of the 16 ymm registers;
 * per group of 4 inputs 2 + 6 loads for 12 vpdpbusd, against 36
 * instructions (vpmaddubsw, vpmaddwd, vpaddd) for the same work in the
 * maddubs kernel (kern_avx2.c).
 */
#include "model/kernels.h"

#include <math.h>
#ifndef KERN_EMULATED
#include <immintrin.h>
#endif

typedef __m256i KV;
typedef __m256 KF;
#define LANES 8
#define PPB 1
#define MR 6
#ifdef KERN_EMULATED
#define I8SET kern_i8_avxvnni_emu
#else
#define I8SET kern_i8_avxvnni
#endif
#define I8NAME "avxvnni"
#define I8WIDE 0
#define kv_zero() _mm256_setzero_si256()
#define kv_load(p) _mm256_load_si256((const __m256i *)(const void *)(p))
#define kv_loadu(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define kv_bcast32(i) _mm256_set1_epi32(i)
#define kv_sub(a, b) _mm256_sub_epi32((a), (b))
#define kv_add(a, b) _mm256_add_epi32((a), (b))
#define kv_dp(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#define kv_cvt_ps(a) _mm256_cvtepi32_ps(a)
/* 8 int32 in [0, 255] to 8 bytes: pack to 16 bits, then to 8 */
static inline void kv_store_u8(uint8_t *p, __m256i a) {
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    _mm_storel_epi64((__m128i *)(void *)p, _mm_packus_epi16(w, w));
}
#define kf_zero() _mm256_setzero_ps()
#define kf_load(p) _mm256_loadu_ps(p)
#define kf_store(p, v) _mm256_storeu_ps((p), (v))
#define kf_bcast(f) _mm256_set1_ps(f)
#define kf_add(a, b) _mm256_add_ps((a), (b))
#define kf_sub(a, b) _mm256_sub_ps((a), (b))
#define kf_mul(a, b) _mm256_mul_ps((a), (b))
#define kf_min(a, b) _mm256_min_ps((a), (b))
#define kf_max(a, b) _mm256_max_ps((a), (b))
#define kf_abs(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (a))
#define kf_round(a) _mm256_round_ps((a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define kf_cvt_epi32(a) _mm256_cvtps_epi32(a)

#include "model/kern_vnni.inc"
