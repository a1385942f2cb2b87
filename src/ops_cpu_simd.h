/* ops_cpu_simd.h — vector math for the CPU ops (internal to ops_cpu*.c).
 *
 * glibc's libmvec has vector variants of expf (_ZGVbN4v_expf, ... within a
 * few ulp, deterministic for a given ISA level). GCC calls them from
 * `#pragma omp simd` loops only when expf is declared with the simd
 * attribute, which glibc's headers do only under -ffast-math, a flag we avoid
 * (it would also assume no infinities, and routing masks with -inf). */
#ifndef DSV3_OPS_CPU_SIMD_H
#define DSV3_OPS_CPU_SIMD_H

#include <math.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((simd("notinbranch"))) extern float expf(float);
#endif

#endif
