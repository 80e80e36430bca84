/* cpu_compat.h — force-included into model/kernels.c for the libFuzzer build
 * only: clang 14 rejects __builtin_cpu_supports("f16c") (gcc accepts it), so
 * this routes the builtin through a function that reads F16C from CPUID and
 * passes every other feature name to the real builtin. Nothing else changes:
 * the kernels the fuzzers run are the ones the CPU would get anyway.
 */
#ifndef FUZZ_CPU_COMPAT_H
#define FUZZ_CPU_COMPAT_H

#include <cpuid.h>
#include <string.h>

/* Returns non-zero if the CPU has the named feature (the names kernels.c
 * asks about); 0 for names it does not know. */
static inline int fz_cpu_supports(const char *f)
{
    unsigned a, b, c, d;
    if (!strcmp(f, "f16c")) return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    if (!strcmp(f, "avx2")) return __builtin_cpu_supports("avx2");
    if (!strcmp(f, "fma")) return __builtin_cpu_supports("fma");
    if (!strcmp(f, "avx512f")) return __builtin_cpu_supports("avx512f");
    if (!strcmp(f, "avx512bw")) return __builtin_cpu_supports("avx512bw");
    if (!strcmp(f, "avx512vl")) return __builtin_cpu_supports("avx512vl");
    if (!strcmp(f, "avx512dq")) return __builtin_cpu_supports("avx512dq");
    if (!strcmp(f, "avx512bf16")) return __builtin_cpu_supports("avx512bf16");
    return 0;
}
#define __builtin_cpu_supports(f) fz_cpu_supports(f)

#endif
