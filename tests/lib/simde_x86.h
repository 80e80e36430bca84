/* simde_x86.h — test-only: lets a kernel file written with x86 intrinsics
 * (AVX-512 F/BW/VL/DQ, AVX512_BF16, AVX512-VNNI, AVX-VNNI) compile for any
 * x86-64 CPU, so the parity tests run its code on machines without those
 * instructions. The Makefile compiles such a file a second time with
 * `-DKERN_EMULATED -include tests/lib/simde_x86.h` and no ISA flags; the
 * kernel file then skips <immintrin.h> and names its set "<name>" with
 * `emulated` set (kernels.h), linked into test binaries only.
 *
 * DESIGN
 * - SIMDe (Debian's libsimde-dev, header-only) supplies the intrinsics in
 *   portable C under their Intel names (SIMDE_ENABLE_NATIVE_ALIASES).
 * - Its 0.7.4 lacks a few that the kernels use; they are defined below on
 *   SIMDe's private unions, element by element, with the instruction's
 *   documented semantics (rounding, saturation, masking). Each is checked
 *   against the real instruction where a test runs on a CPU that has it,
 *   since the emulated and the native set then run the same tests.
 * - Nothing here is built into the server or the library.
 */
#ifndef DCN_SIMDE_X86_H
#define DCN_SIMDE_X86_H

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

#ifndef _MM_FROUND_NO_EXC
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif

#define EMU_STATIC static inline __attribute__((unused))

/* ---------------------------------------------------------------- conversions */

#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps emu_mm512_cvtepi32_ps
EMU_STATIC simde__m512 emu_mm512_cvtepi32_ps(simde__m512i a) {
    simde__m512i_private a_ = simde__m512i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; i++) r.f32[i] = (float)a_.i32[i];
    return simde__m512_from_private(r);
}

/* Rounds to nearest even (the default MXCSR mode); out of range and NaN give
 * the "integer indefinite" 0x80000000, as the instruction does. */
#undef _mm512_cvtps_epi32
#define _mm512_cvtps_epi32 emu_mm512_cvtps_epi32
EMU_STATIC simde__m512i emu_mm512_cvtps_epi32(simde__m512 a) {
    simde__m512_private a_ = simde__m512_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++) {
        float v = nearbyintf(a_.f32[i]);
        r.i32[i] = (v >= -2147483648.0f && v < 2147483648.0f) ? (int32_t)v : INT32_MIN;
    }
    return simde__m512i_from_private(r);
}

/* vpmovdb: each int32's low byte (truncation, no saturation). */
#undef _mm512_cvtepi32_epi8
#define _mm512_cvtepi32_epi8 emu_mm512_cvtepi32_epi8
EMU_STATIC simde__m128i emu_mm512_cvtepi32_epi8(simde__m512i a) {
    simde__m512i_private a_ = simde__m512i_to_private(a);
    simde__m128i_private r;
    for (int i = 0; i < 16; i++) r.i8[i] = (int8_t)(uint8_t)((uint32_t)a_.i32[i] & 0xffu);
    return simde__m128i_from_private(r);
}

#undef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32 emu_mm512_cvtepi8_epi32
EMU_STATIC simde__m512i emu_mm512_cvtepi8_epi32(simde__m128i a) {
    simde__m128i_private a_ = simde__m128i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++) r.i32[i] = a_.i8[i];
    return simde__m512i_from_private(r);
}

#undef _mm512_cvtepu8_epi32
#define _mm512_cvtepu8_epi32 emu_mm512_cvtepu8_epi32
EMU_STATIC simde__m512i emu_mm512_cvtepu8_epi32(simde__m128i a) {
    simde__m128i_private a_ = simde__m128i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++) r.i32[i] = a_.u8[i];
    return simde__m512i_from_private(r);
}

#undef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32 emu_mm512_cvtepu16_epi32
EMU_STATIC simde__m512i emu_mm512_cvtepu16_epi32(simde__m256i a) {
    simde__m256i_private a_ = simde__m256i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++) r.i32[i] = a_.u16[i];
    return simde__m512i_from_private(r);
}

#undef _mm512_cvtepi16_epi32
#define _mm512_cvtepi16_epi32 emu_mm512_cvtepi16_epi32
EMU_STATIC simde__m512i emu_mm512_cvtepi16_epi32(simde__m256i a) {
    simde__m256i_private a_ = simde__m256i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++) r.i32[i] = a_.i16[i];
    return simde__m512i_from_private(r);
}

/* IEEE half to float, exact (every half is a float). */
EMU_STATIC float emu_half_to_float(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = h >> 10 & 0x1f, m = h & 0x3ff, u;
    if (e == 0x1f)
        u = s | 0x7f800000u | m << 13;
    else if (e)
        u = s | (e + 112) << 23 | m << 13;
    else if (m) {
        float f = ldexpf((float)m, -24);
        memcpy(&u, &f, 4);
        u |= s;
    } else
        u = s;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps emu_mm512_cvtph_ps
EMU_STATIC simde__m512 emu_mm512_cvtph_ps(simde__m256i a) {
    simde__m256i_private a_ = simde__m256i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; i++) r.f32[i] = emu_half_to_float(a_.u16[i]);
    return simde__m512_from_private(r);
}

/* float to bfloat16 as vcvtne*ps2bf16 does, which ignores MXCSR: round to
 * nearest even, NaN kept quiet, denormal inputs read as zero (a denormal
 * float's bf16 neighbours are denormal too, flushed to zero alike). */
EMU_STATIC uint16_t emu_float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x40);
    if ((u & 0x7f800000u) == 0) return (uint16_t)(u >> 16 & 0x8000);
    return (uint16_t)((u + 0x7fffu + (u >> 16 & 1)) >> 16);
}

/* Lanes 0..15 from b, 16..31 from a, as the instruction orders them. */
#undef _mm512_cvtne2ps_pbh
#define _mm512_cvtne2ps_pbh emu_mm512_cvtne2ps_pbh
EMU_STATIC simde__m512bh emu_mm512_cvtne2ps_pbh(simde__m512 a, simde__m512 b) {
    simde__m512_private a_ = simde__m512_to_private(a), b_ = simde__m512_to_private(b);
    simde__m512bh_private r;
    for (int i = 0; i < 16; i++) {
        r.u16[i] = emu_float_to_bf16(b_.f32[i]);
        r.u16[16 + i] = emu_float_to_bf16(a_.f32[i]);
    }
    return simde__m512bh_from_private(r);
}

#undef _mm512_cvtneps_pbh
#define _mm512_cvtneps_pbh emu_mm512_cvtneps_pbh
EMU_STATIC simde__m256i emu_mm512_cvtneps_pbh(simde__m512 a) {
    simde__m512_private a_ = simde__m512_to_private(a);
    simde__m256i_private r;
    for (int i = 0; i < 16; i++) r.u16[i] = emu_float_to_bf16(a_.f32[i]);
    return simde__m256i_from_private(r);
}

/* vdpbf16ps on 32-bit lanes given as integer vectors (the BF16 kernels'
 * kb_dp in emulated builds): per lane, src + odd product, then + even
 * product, each add rounded to nearest even with denormal inputs read as
 * zero and denormal results flushed to zero, as the SDM defines it and
 * the hardware does (SIMDe 0.7.4 adds the even product first, and sums the
 * two before adding them). Products of two BF16 are exact in float. */
EMU_STATIC float emu_ftz(float f) {
    return fabsf(f) < 1.17549435e-38f ? copysignf(0.0f, f) : f;
}
EMU_STATIC float emu_bf16_daz(uint16_t h) {
    uint32_t u = (h & 0x7f80u) ? (uint32_t)h << 16 : (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
EMU_STATIC simde__m512 emu_dpbf16_ps_i(simde__m512 src, simde__m512i a, simde__m512i b) {
    simde__m512_private s_ = simde__m512_to_private(src);
    simde__m512i_private a_ = simde__m512i_to_private(a), b_ = simde__m512i_to_private(b);
    for (int i = 0; i < 16; i++) {
        float acc = emu_ftz(s_.f32[i]);
        acc = emu_ftz(acc + emu_bf16_daz(a_.u16[2 * i + 1]) * emu_bf16_daz(b_.u16[2 * i + 1]));
        acc = emu_ftz(acc + emu_bf16_daz(a_.u16[2 * i]) * emu_bf16_daz(b_.u16[2 * i]));
        s_.f32[i] = acc;
    }
    return simde__m512_from_private(s_);
}

/* ---------------------------------------------------------------- masked memory
 * Lanes whose mask bit is clear are neither read nor written: the tests
 * place buffers at the end of a page-sized allocation only where the real
 * instruction's fault suppression matters. */

#define EMU_MASKED_LOAD(name, vt, pt, et, n, field)                                                  \
    EMU_STATIC vt name(vt src, uint64_t k, const void *p) {                                           \
        pt s_ = pt##_to(src);                                                                         \
        for (int i = 0; i < n; i++)                                                                   \
            if (k >> i & 1) memcpy(&s_.field[i], (const char *)p + (size_t)i * sizeof(et), sizeof(et)); \
        return pt##_from(s_);                                                                         \
    }
#define EMU_MASKED_STORE(name, vt, pt, et, n, field)                                          \
    EMU_STATIC void name(void *p, uint64_t k, vt a) {                                          \
        pt a_ = pt##_to(a);                                                                    \
        for (int i = 0; i < n; i++)                                                            \
            if (k >> i & 1) memcpy((char *)p + (size_t)i * sizeof(et), &a_.field[i], sizeof(et)); \
    }

#define simde__m512_private_to simde__m512_to_private
#define simde__m512_private_from simde__m512_from_private
#define simde__m512i_private_to simde__m512i_to_private
#define simde__m512i_private_from simde__m512i_from_private
#define simde__m256_private_to simde__m256_to_private
#define simde__m256_private_from simde__m256_from_private
#define simde__m256i_private_to simde__m256i_to_private
#define simde__m256i_private_from simde__m256i_from_private

EMU_MASKED_LOAD(emu_mask_loadu_ps512, simde__m512, simde__m512_private, float, 16, f32)
EMU_MASKED_LOAD(emu_mask_loadu_epi32_512, simde__m512i, simde__m512i_private, int32_t, 16, i32)
EMU_MASKED_LOAD(emu_mask_loadu_epi16_512, simde__m512i, simde__m512i_private, int16_t, 32, i16)
EMU_MASKED_LOAD(emu_mask_loadu_epi8_512, simde__m512i, simde__m512i_private, int8_t, 64, i8)
EMU_MASKED_LOAD(emu_mask_loadu_ps256, simde__m256, simde__m256_private, float, 8, f32)
EMU_MASKED_LOAD(emu_mask_loadu_epi16_256, simde__m256i, simde__m256i_private, int16_t, 16, i16)
EMU_MASKED_LOAD(emu_mask_loadu_epi8_256, simde__m256i, simde__m256i_private, int8_t, 32, i8)
EMU_MASKED_STORE(emu_mask_storeu_ps512, simde__m512, simde__m512_private, float, 16, f32)
EMU_MASKED_STORE(emu_mask_storeu_epi32_512, simde__m512i, simde__m512i_private, int32_t, 16, i32)
EMU_MASKED_STORE(emu_mask_storeu_epi16_512, simde__m512i, simde__m512i_private, int16_t, 32, i16)
EMU_MASKED_STORE(emu_mask_storeu_epi8_512, simde__m512i, simde__m512i_private, int8_t, 64, i8)
EMU_MASKED_STORE(emu_mask_storeu_ps256, simde__m256, simde__m256_private, float, 8, f32)

#undef _mm512_mask_loadu_ps
#undef _mm512_maskz_loadu_ps
#undef _mm512_mask_storeu_ps
#undef _mm512_mask_loadu_epi32
#undef _mm512_maskz_loadu_epi32
#undef _mm512_mask_storeu_epi32
#undef _mm512_maskz_loadu_epi16
#undef _mm512_mask_storeu_epi16
#undef _mm512_maskz_loadu_epi8
#undef _mm512_mask_storeu_epi8
#undef _mm256_maskz_loadu_ps
#undef _mm256_mask_storeu_ps
#undef _mm256_maskz_loadu_epi16
#undef _mm256_maskz_loadu_epi8
#define _mm512_mask_loadu_ps(src, k, p) emu_mask_loadu_ps512((src), (k), (p))
#define _mm512_maskz_loadu_ps(k, p) emu_mask_loadu_ps512(simde_mm512_setzero_ps(), (k), (p))
#define _mm512_mask_storeu_ps(p, k, a) emu_mask_storeu_ps512((p), (k), (a))
#define _mm512_mask_loadu_epi32(src, k, p) emu_mask_loadu_epi32_512((src), (k), (p))
#define _mm512_maskz_loadu_epi32(k, p) emu_mask_loadu_epi32_512(simde_mm512_setzero_si512(), (k), (p))
#define _mm512_mask_storeu_epi32(p, k, a) emu_mask_storeu_epi32_512((p), (k), (a))
#define _mm512_maskz_loadu_epi16(k, p) emu_mask_loadu_epi16_512(simde_mm512_setzero_si512(), (k), (p))
#define _mm512_mask_storeu_epi16(p, k, a) emu_mask_storeu_epi16_512((p), (k), (a))
#define _mm512_maskz_loadu_epi8(k, p) emu_mask_loadu_epi8_512(simde_mm512_setzero_si512(), (k), (p))
#define _mm512_mask_storeu_epi8(p, k, a) emu_mask_storeu_epi8_512((p), (k), (a))
#define _mm256_maskz_loadu_ps(k, p) emu_mask_loadu_ps256(simde_mm256_setzero_ps(), (k), (p))
#define _mm256_mask_storeu_ps(p, k, a) emu_mask_storeu_ps256((p), (k), (a))
#define _mm256_maskz_loadu_epi16(k, p) emu_mask_loadu_epi16_256(simde_mm256_setzero_si256(), (k), (p))
#define _mm256_maskz_loadu_epi8(k, p) emu_mask_loadu_epi8_256(simde_mm256_setzero_si256(), (k), (p))

/* ---------------------------------------------------------------- reductions */

#undef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps emu_mm512_reduce_add_ps
/* The pairwise order GCC's own inline uses (halves, then quarters...). */
EMU_STATIC float emu_mm512_reduce_add_ps(simde__m512 a) {
    simde__m512_private a_ = simde__m512_to_private(a);
    float t[16];
    for (int i = 0; i < 16; i++) t[i] = a_.f32[i];
    for (int w = 8; w; w /= 2)
        for (int i = 0; i < w; i++) t[i] += t[i + w];
    return t[0];
}

#undef _mm512_reduce_max_ps
#define _mm512_reduce_max_ps emu_mm512_reduce_max_ps
EMU_STATIC float emu_mm512_reduce_max_ps(simde__m512 a) {
    simde__m512_private a_ = simde__m512_to_private(a);
    float m = a_.f32[0];
    for (int i = 1; i < 16; i++) m = a_.f32[i] > m ? a_.f32[i] : m;
    return m;
}

#undef _mm512_reduce_add_epi32
#define _mm512_reduce_add_epi32 emu_mm512_reduce_add_epi32
EMU_STATIC int emu_mm512_reduce_add_epi32(simde__m512i a) {
    simde__m512i_private a_ = simde__m512i_to_private(a);
    uint32_t s = 0;
    for (int i = 0; i < 16; i++) s += (uint32_t)a_.i32[i];
    return (int)s;
}

/* ---------------------------------------------------------------- VNNI
 * AVX-VNNI's 256-bit form (VEX) computes what AVX512-VNNI's VL form does. */
#undef _mm256_dpbusd_avx_epi32
#define _mm256_dpbusd_avx_epi32(src, a, b) simde_mm256_dpbusd_epi32((src), (a), (b))

#endif
