/* twin.h — CUDA twin tests: the CUDA op (cu_X, cuda/) against its CPU twin
 * (ops_X, src/ops_cpu*.c) on the same inputs. Plain C: the same test links
 * against the emulation build (make CUDA=emu) and against the real runtime
 * on a GPU (make CUDA=1).
 *
 * Every check prints one line "ok|FAIL  ops_X  <case>  err=..." (the op
 * coverage is read from these lines) and folds the CUDA output into a hash;
 * tests/it_cuda_emu.sh runs each binary in two thread orders and requires the
 * same hash (deterministic ops are bitwise independent of thread order). */
#ifndef DSV3_TWIN_H
#define DSV3_TWIN_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "ops.h"
#include "cu_ops.h" /* cu_gemm_fp8_paths */

#define CK(x)                                                                                                    \
    do {                                                                                                         \
        cudaError_t e_ = (cudaError_t)(x);                                                                       \
        if (e_ != cudaSuccess) {                                                                                 \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));                \
            exit(2);                                                                                             \
        }                                                                                                        \
    } while (0)

static int twin_passed, twin_failed;
static uint64_t twin_hash = 0xcbf29ce484222325ull; /* FNV-1a over every CUDA output checked */
static cudaStream_t twin_s;

static void twin_init(void) {
    CK(cudaStreamCreateWithFlags(&twin_s, cudaStreamNonBlocking));
    struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("device: %s\n", p.name);
}
static int twin_end(void) {
    CK(cudaStreamDestroy(twin_s));
    printf("output hash: %016llx\n", (unsigned long long)twin_hash);
    printf("%d passed, %d failed\n", twin_passed, twin_failed);
    return twin_failed != 0;
}

/* The CPU reference's GEMM precision for a CUDA op just launched at gemm precision `gemm`
 * (ops.h ops_gemm), `fb0` being cu_gemm_fp8_paths' bf16 count before the launch: where W8A8
 * fell back to bf16 (a GPU below compute capability 8.9, a cuBLAS before 12.9, no block-scaled
 * algorithm: cuda/ops.cu fp8_fallback), the CPU op must run bf16 too. Said once. */
static inline long twin_fp8_fallbacks(void) {
    long lt, f32, bf16;
    cu_gemm_fp8_paths(&lt, &f32, &bf16);
    return bf16;
}
static inline int twin_gemm_ref(int gemm, long fb0) {
    static int told;
    if (gemm != OPS_GEMM_FP8 || twin_fp8_fallbacks() == fb0) return gemm;
    if (!told++) printf("note: gemm fp8 runs bf16 on this device (fallback): its twins compare with the CPU at gemm bf16\n");
    return OPS_GEMM_BF16;
}

/* a case label (one static buffer: use before the next call) */
static inline const char *twin_fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static inline const char *twin_fmt(const char *f, ...) {
    static char buf[160];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}
static inline void twin_free(void *d) { CK(cudaFree(d)); }
static inline void *twin_alloc(size_t bytes) { /* uninitialised (the emulator poisons it with NaN) */
    void *d;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    return d;
}

/* Counter-based values in [lo, hi): the same for a (key, i) on every machine. */
static float twin_u(uint64_t key, size_t i, float lo, float hi) {
    uint64_t z = key * 0x9e3779b97f4a7c15ull + i + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return lo + (hi - lo) * (float)((double)(z >> 11) / 9007199254740992.0);
}
static float *twin_host(size_t n, uint64_t key, float lo, float hi) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = twin_u(key, i, lo, hi);
    return h;
}
/* device copy of host memory (bytes) */
static void *twin_dev(const void *h, size_t bytes) {
    void *d;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes) CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
/* host copy of device memory, after the test stream is done */
static void *twin_back(const void *d, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    CK(cudaStreamSynchronize(twin_s));
    if (bytes) CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
    return h;
}

static void twin_fold(const void *p, size_t bytes) {
    const unsigned char *b = p;
    for (size_t i = 0; i < bytes; i++) twin_hash = (twin_hash ^ b[i]) * 0x100000001b3ull;
}
static void twin_report(int ok, const char *op, const char *what, double err) {
    printf("%-4s  %-32s %-40s err=%.3g\n", ok ? "ok" : "FAIL", op, what, err);
    if (ok) twin_passed++;
    else twin_failed++;
}

/* got vs ref, n floats: |got - ref| <= rel·max(|ref|∞, floor) for every element
 * (the GEMM rule of the tolerance table) — `elementwise` instead bounds each
 * element by rel·|ref_i| + abs. Returns the max error in units of the bound. */
static int twin_close(const char *op, const char *what, const float *got, const float *ref, size_t n, double rel,
                      double abs_floor, int elementwise) {
    double inf = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++) inf = fmax(inf, fabs((double)ref[i]));
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        double bound = elementwise ? rel * fabs((double)ref[i]) + abs_floor : rel * fmax(inf, abs_floor);
        if (!(d <= bound)) ok = 0; /* NaN fails */
        if (bound > 0) worst = fmax(worst, d / bound);
        else if (d > 0) worst = INFINITY;
    }
    twin_fold(got, n * sizeof *got);
    twin_report(ok, op, what, worst);
    return ok;
}
/* bitwise equality (conversions, copies, integer outputs) */
static int twin_same(const char *op, const char *what, const void *got, const void *ref, size_t bytes) {
    int ok = memcmp(got, ref, bytes) == 0;
    twin_fold(got, bytes);
    twin_report(ok, op, what, ok ? 0.0 : 1.0);
    return ok;
}

#endif
