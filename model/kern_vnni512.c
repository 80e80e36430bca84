/* kern_vnni512.c — the INT8 GEMM on AVX512-VNNI (512-bit vpdpbusd: 16 int32
 * lanes, 4 uint8 x int8 products each, no int16 stage), compiled with the
 * AVX-512 and VNNI flags and run by the avx512 set where the CPU has them
 * (kernels.c: kern_i8_get). The code is kern_vnni.inc, shared with the
 * AVX-VNNI kernel. Test binaries also hold it compiled against SIMDe
 * (KERN_EMULATED) as kern_i8_avx512vnni_emu. kern_amx.c includes this
 * file with I8_INNER for its gemm alone (the AMX kernel's few-row path).
 *
 * DESIGN (why this shape; measured nowhere yet: bench/README.md, "INT8 on
 * VNNI", says what a machine with AVX-512 must run)
 * - Per group of 4 inputs the maddubs kernel spends 3 instructions per 8
 *   (AVX2) outputs and row (vpmaddubsw, vpmaddwd, vpaddd); vpdpbusd does
 *   the same work for 16 outputs in one: 6x fewer vector instructions per
 *   product, and the int16 stage that forces 7-bit weights is gone (the
 *   weights stay 7-bit here so that every set gives the same results).
 * - Tiles of 6 rows x 4 panels (64 outputs): 24 accumulators, 4 weight
 *   vectors and a broadcast of the 32 zmm registers. Per group: 4 loads of
 *   64 bytes and 6 broadcasts for 24 vpdpbusd, under the 2 loads a cycle
 *   both Zen 5 and Golden Cove sustain at 2 vpdpbusd a cycle; 24 chains
 *   cover a latency of up to 12 cycles at that rate.
 * - A column block's weights, 64 x kq bytes (221 KiB for dlrmv2's 3,456
 *   inputs), are re-read from L2 by each tile after the first (at most 23
 *   bytes a cycle at 2 vpdpbusd a cycle: a third of what L2 delivers);
 *   48 rows per block (qbuf: 256 KiB) amortise the weights' trip from L3
 *   or memory over 48 rows.
 */
#include "model/kernels.h"

#include <math.h>
#ifndef KERN_EMULATED
#include <immintrin.h>
#endif

typedef __m512i KV;
typedef __m512 KF;
#define LANES 16
#define PPB 4
#define MR 6
#ifdef KERN_EMULATED
#define I8SET kern_i8_avx512vnni_emu
#else
#define I8SET kern_i8_avx512vnni
#endif
#define I8NAME "avx512vnni"
#define I8WIDE 1
#define kv_zero() _mm512_setzero_si512()
#define kv_load(p) _mm512_load_si512((const void *)(p))
#define kv_loadu(p) _mm512_loadu_si512((const void *)(p))
#define kv_bcast32(i) _mm512_set1_epi32(i)
#define kv_sub(a, b) _mm512_sub_epi32((a), (b))
#define kv_add(a, b) _mm512_add_epi32((a), (b))
#define kv_dp(acc, u, s) _mm512_dpbusd_epi32((acc), (u), (s))
#define kv_cvt_ps(a) _mm512_cvtepi32_ps(a)
#define kv_store_u8(p, a) _mm_storeu_si128((__m128i *)(void *)(p), _mm512_cvtepi32_epi8(a))
#define kf_zero() _mm512_setzero_ps()
#define kf_load(p) _mm512_loadu_ps(p)
#define kf_store(p, v) _mm512_storeu_ps((p), (v))
#define kf_bcast(f) _mm512_set1_ps(f)
#define kf_add(a, b) _mm512_add_ps((a), (b))
#define kf_sub(a, b) _mm512_sub_ps((a), (b))
#define kf_mul(a, b) _mm512_mul_ps((a), (b))
#define kf_min(a, b) _mm512_min_ps((a), (b))
#define kf_max(a, b) _mm512_max_ps((a), (b))
#define kf_abs(a) _mm512_abs_ps(a)
#define kf_round(a) _mm512_roundscale_ps((a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define kf_cvt_epi32(a) _mm512_cvtps_epi32(a)

#include "model/kern_vnni.inc"
