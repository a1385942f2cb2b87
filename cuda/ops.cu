/* ops.cu — CUDA twin of src/ops_cpu.c: the backend context, the memory
 * section of ops.h (counted device and host allocations, the scratch arena,
 * copies), dense GEMMs and the elementwise ops. fp32 storage, as the CPU
 * reference; conventions in cu_ops.h. */
#include "dsv3_cuda.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>

#include <cublasLt.h>

#include "cu_ops.h"
#include "ops.h"

/* ---- context ---- */

namespace {
struct Ctx {
    int device = -1;
    cudaStream_t stream = nullptr;
};
Ctx ctx;
std::once_flag ctx_once;

int local_rank() {
    const char *v = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!v) v = getenv("SLURM_LOCALID");
    if (!v) v = getenv("MPI_LOCALRANKID");
    return v ? atoi(v) : 0;
}

void ctx_init() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1)
        error_one_at(__FILE__, __LINE__, "CUDA backend: no usable GPU (cudaGetDeviceCount: %s, %d devices)", cudaGetErrorString(e), n);
    ctx.device = local_rank() % n;
    CU_CHECK(cudaSetDevice(ctx.device));
    /* blocking w.r.t. the legacy default stream: a plain cudaMemcpy orders after our work */
    CU_CHECK(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamDefault));
}
} // namespace

extern "C" void cu_check_at(cudaError_t e, const char *what, const char *file, int line) {
    if (e != cudaSuccess) error_one_at(file, line, "CUDA error %s (%d) in %s", cudaGetErrorString(e), (int)e, what);
}
extern "C" cudaStream_t cu_stream(void) {
    std::call_once(ctx_once, ctx_init);
    return ctx.stream;
}
extern "C" int cu_device(void) {
    std::call_once(ctx_once, ctx_init);
    return ctx.device;
}

/* ---- elementwise kernels (grid-stride; one thread per element, fixed order) ---- */

namespace {
constexpr int EW = 256; /* threads per block of the elementwise kernels */

__global__ void fill_kernel(float *x, size_t n, float v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] = v;
}
__global__ void axpy_kernel(float *y, float a, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += a * x[i];
}
__global__ void add_kernel(float *y, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}
__global__ void scale_kernel(float *x, float a, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= a;
}
/* one block: fixed per-thread partial sums, then a fixed-shape tree (deterministic) */
__global__ void __launch_bounds__(1024) sumsq_kernel(const float *x, size_t n, double *out) {
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += 1024) s += (double)x[i] * x[i];
    s = dsv3::block_sum<1024>(s);
    if (threadIdx.x == 0) *out = s;
}
/* one block per row; columns strided over the block */
__global__ void copy_cols_kernel(float *dst, int ds, const float *src, int ss, int off, int n) {
    const size_t r = blockIdx.x;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[r * ds + i] = src[r * ss + off + i];
}
__global__ void add_cols_kernel(float *dst, int ds, int off, const float *src, int ss, int n) {
    const size_t r = blockIdx.x;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[r * ds + off + i] += src[r * ss + i];
}
} // namespace

extern "C" cudaError_t cu_zero(float *x, size_t n, cudaStream_t s) {
    return n ? cudaMemsetAsync(x, 0, n * sizeof *x, s) : cudaSuccess;
}
extern "C" cudaError_t cu_copy(float *dst, const float *src, size_t n, cudaStream_t s) {
    return n ? cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToDevice, s) : cudaSuccess;
}
extern "C" cudaError_t cu_fill(float *x, size_t n, float v, cudaStream_t s) {
    return n ? dsv3::launch(fill_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, n, v) : cudaSuccess;
}
extern "C" cudaError_t cu_add(float *y, const float *x, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(add_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, y, x, n) : cudaSuccess;
}
extern "C" cudaError_t cu_axpy(float *y, float a, const float *x, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(axpy_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, y, a, x, n) : cudaSuccess;
}
extern "C" cudaError_t cu_scale(float *x, float a, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(scale_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, a, n) : cudaSuccess;
}
extern "C" cudaError_t cu_sumsq(const float *x, size_t n, double *out, cudaStream_t s) {
    return dsv3::launch(sumsq_kernel, dim3(1), dim3(1024), 0, s, x, n, out);
}
extern "C" cudaError_t cu_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows,
                                    cudaStream_t s) {
    if (rows <= 0 || n <= 0) return cudaSuccess;
    return dsv3::launch(copy_cols_kernel, dim3(rows), dim3(128), 0, s, dst, ds, src, ss, off, n);
}
extern "C" cudaError_t cu_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows,
                                   cudaStream_t s) {
    if (rows <= 0 || n <= 0) return cudaSuccess;
    return dsv3::launch(add_cols_kernel, dim3(rows), dim3(128), 0, s, dst, ds, off, src, ss, n);
}

/* ---- GEMMs through cuBLAS. Row-major y[T,out] = x[T,in]·W[out,in]ᵀ is
 * column-major yᵀ = op(W)·xᵀ: GemmEx(OP_T, OP_N, m=out, n=T, k=in, W, in,
 * x, in, y, out). fp32 compute (no TF32: the default math mode). ---- */

namespace {
std::once_flag blas_once;
cublasHandle_t blas;

cudaError_t blas_err(cublasStatus_t st) { return st == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown; }
/* C[m,n] (col-major) = alpha·op(A)·op(B) + beta·C, all fp32 */
cudaError_t sgemm(cudaStream_t s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    const float one = 1.0f;
    return blas_err(cublasGemmEx(cu_blas(s), ta, tb, m, n, k, &one, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C,
                                 CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
} // namespace

extern "C" cublasHandle_t cu_blas(cudaStream_t s) {
    std::call_once(blas_once, [] {
        cublasStatus_t st = cublasCreate(&blas);
        if (st != CUBLAS_STATUS_SUCCESS) error_one_at(__FILE__, __LINE__, "CUDA backend: cublasCreate failed (status %d)", (int)st);
    });
    cublasStatus_t st = cublasSetStream(blas, s);
    if (st != CUBLAS_STATUS_SUCCESS) error_one_at(__FILE__, __LINE__, "CUDA backend: cublasSetStream failed (status %d)", (int)st);
    return blas;
}

extern "C" cudaError_t cu_matmul(float *y, const float *x, const float *w, int T, int in, int out, float beta,
                                 cudaStream_t s) {
    if (T == 0 || out == 0) return cudaSuccess;
    if (in == 0) return beta == 0.0f ? cudaMemsetAsync(y, 0, (size_t)T * out * sizeof *y, s) : cudaSuccess;
    return sgemm(s, CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, w, in, x, in, beta, y, out);
}

extern "C" cudaError_t cu_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int T,
                                          int in, int out, cudaStream_t s) {
    if (T == 0 || in == 0 || out == 0) return cudaSuccess;
    cudaError_t e = cudaSuccess;
    /* dx[T,in] += dy[T,out]·w[out,in]: col-major dxᵀ[in,T] += w(col-major [in,out])·dyᵀ[out,T] */
    if (dx) e = sgemm(s, CUBLAS_OP_N, CUBLAS_OP_N, in, T, out, w, in, dy, out, 1.0f, dx, in);
    /* dw[out,in] += dyᵀ·x: col-major dwᵀ[in,out] += xᵀ[in,T]·dy[T,out] */
    if (dw && e == cudaSuccess) e = sgemm(s, CUBLAS_OP_N, CUBLAS_OP_T, in, out, T, x, in, dy, out, 1.0f, dw, in);
    return e;
}

/* ---- stored weights: dequantisation tiles and the FP8/BF16 store ---- */

namespace {
unsigned row_block(int in) { /* threads per row: a multiple of 32, at most 256 */
    unsigned b = ((unsigned)(in > 0 ? in : 1) + 31) / 32 * 32;
    return b < 256 ? b : 256;
}

/* one block per row (grid-strided); the columns strided over the block */
__global__ void dequant_bf16_kernel(float *t, const __nv_bfloat16 *q, int in, int n) {
    for (int r = blockIdx.x; r < n; r += gridDim.x)
        for (int c = threadIdx.x; c < in; c += blockDim.x) t[(size_t)r * in + c] = __bfloat162float(q[(size_t)r * in + c]);
}
/* value = e4m3 · scale[row/128, col/128]: one exact decode, one fp32 product (as the CPU's lut[q]·sc) */
__global__ void dequant_fp8_kernel(float *t, const __nv_fp8_e4m3 *q, const float *scale, int in, int r0, int n) {
    const int nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    for (int r = blockIdx.x; r < n; r += gridDim.x) {
        const float *sc = scale + (size_t)((r0 + r) / OPS_FP8_BLOCK) * nb;
        for (int c = threadIdx.x; c < in; c += blockDim.x)
            t[(size_t)r * in + c] = static_cast<float>(q[(size_t)r * in + c]) * sc[c / OPS_FP8_BLOCK];
    }
}

/* ops_f32_to_e4m3: NVIDIA's RNE satfinite conversion, and NaN -> 0x7F whatever its sign */
__device__ __forceinline__ uint8_t e4m3_of(float x) {
    return isnan(x) ? (uint8_t)0x7F : (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}
/* ops_f32_to_bf16: RNE; a NaN keeps its upper bits and is made quiet (the CPU's rule, not the canonical NaN) */
__device__ __forceinline__ uint16_t bf16_of(float x) {
    return isnan(x) ? (uint16_t)((__float_as_uint(x) >> 16) | 0x40) : __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
__global__ void e4m3_kernel(uint8_t *q, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        q[i] = e4m3_of(x[i]);
}
__global__ void store_bf16_kernel(uint16_t *q, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        q[i] = bf16_of(x[i]);
}
/* ops_round_bf16: the bits stored, and x made the value they hold */
__global__ void round_bf16_kernel(float *x, uint16_t *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint16_t b = bf16_of(x[i]);
        y[i] = b;
        x[i] = __uint_as_float((uint32_t)b << 16);
    }
}
__global__ void widen_bf16_kernel(float *x, const uint16_t *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __uint_as_float((uint32_t)y[i] << 16);
}
/* One block per 128x128 block of x [n, in] (grid nb x nrb): amax, scale =
 * amax/448 (1 for an all-zero block), codes = e4m3(x / scale). scale and q
 * point at the chunk's first block row. */
constexpr int QB = 256;
__global__ void __launch_bounds__(QB) store_fp8_kernel(uint8_t *q, float *scale, const float *x, int in, int n) {
    const int ra = blockIdx.y * OPS_FP8_BLOCK, ca = blockIdx.x * OPS_FP8_BLOCK;
    const int rows = min(OPS_FP8_BLOCK, n - ra), cols = min(OPS_FP8_BLOCK, in - ca);
    float amax = 0.0f;
    for (int i = threadIdx.x; i < rows * cols; i += QB)
        amax = fmaxf(amax, fabsf(x[(size_t)(ra + i / cols) * in + ca + i % cols]));
    amax = dsv3::block_max<QB>(amax);
    const float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
    if (threadIdx.x == 0) scale[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = sc;
    for (int i = threadIdx.x; i < rows * cols; i += QB) {
        size_t k = (size_t)(ra + i / cols) * in + ca + i % cols;
        q[k] = e4m3_of(x[k] / sc);
    }
}
} // namespace

extern "C" cudaError_t cu_round_bf16(float *x, uint16_t *y, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(round_bf16_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, y, n) : cudaSuccess;
}
extern "C" cudaError_t cu_to_bf16(uint16_t *y, const float *x, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(store_bf16_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, y, x, n) : cudaSuccess;
}
extern "C" cudaError_t cu_widen_bf16(float *x, const uint16_t *y, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(widen_bf16_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, y, n) : cudaSuccess;
}
extern "C" cudaError_t cu_f32_to_e4m3(uint8_t *q, const float *x, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(e4m3_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, q, x, n) : cudaSuccess;
}

extern "C" cudaError_t cu_dequant_rows(float *t, const ops_weight *w, int r0, int n, cudaStream_t s) {
    if (n <= 0 || w->in <= 0) return cudaSuccess;
    dim3 g(n < 4096 ? n : 4096), b(row_block(w->in));
    if (w->dtype == OPS_BF16)
        return dsv3::launch(dequant_bf16_kernel, g, b, 0, s, t, (const __nv_bfloat16 *)w->data + (size_t)r0 * w->in, w->in, n);
    CU_REQUIRE(w->dtype == OPS_FP8_E4M3 && w->scale, "cu_dequant_rows: bad weight dtype %d", (int)w->dtype);
    return dsv3::launch(dequant_fp8_kernel, g, b, 0, s, t, (const __nv_fp8_e4m3 *)w->data + (size_t)r0 * w->in, w->scale,
                        w->in, r0, n);
}

/* ---- train.gemm_dtype (ops.h ops_gemm): bf16 operands through cublasGemmEx, W8A8 through
 * cublasLtMatmul with block scales; the operands are the CPU reference's, bit for bit ---- */

namespace {
/* a row tile of an FP8 weight as bf16 operands: bf16(e4m3 · scale), the CPU's rounding */
__global__ void dequant_fp8_bf16_kernel(uint16_t *t, const __nv_fp8_e4m3 *q, const float *scale, int in, int r0, int n) {
    const int nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    for (int r = blockIdx.x; r < n; r += gridDim.x) {
        const float *sc = scale + (size_t)((r0 + r) / OPS_FP8_BLOCK) * nb;
        for (int c = threadIdx.x; c < in; c += blockDim.x)
            t[(size_t)r * in + c] = bf16_of(static_cast<float>(q[(size_t)r * in + c]) * sc[c / OPS_FP8_BLOCK]);
    }
}
/* ops_act_quant_fp8: one block per (128-column block b, row t), grid (nb, T); scale [nb, T] */
__global__ void __launch_bounds__(OPS_FP8_BLOCK) act_quant_fp8_kernel(uint8_t *q, float *scale, const float *x, int T,
                                                                       int in) {
    const int t = blockIdx.y, b = blockIdx.x, c = b * OPS_FP8_BLOCK + threadIdx.x;
    const float v = c < in ? x[(size_t)t * in + c] : 0.0f;
    const float amax = dsv3::block_max<OPS_FP8_BLOCK>(fabsf(v));
    const float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
    if (threadIdx.x == 0) scale[(size_t)b * T + t] = sc;
    if (c < in) q[(size_t)t * in + c] = e4m3_of(v / sc);
}
/* the fp8 operand's values as fp32, v = e4m3 · scale (the CPU's act_operand) */
__global__ void act_dequant_fp8_kernel(float *v, const __nv_fp8_e4m3 *q, const float *scale, int T, int in) {
    const size_t n = (size_t)T * in;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        v[i] = static_cast<float>(q[i]) * scale[(i % in) / OPS_FP8_BLOCK * T + i / in];
}

/* The scratch of ops_matmul_w_scratch_floats, carved as the CPU takes it: the weight tile,
 * the activation chunk's values, codes, scales (each ops_arena_round-ed). */
struct Scratch {
    float *tile, *v, *s;
    uint8_t *q;
    int tr, ar;
};
Scratch carve(const ops_weight *w, int mode, float *scr, size_t floats, const char *op) {
    const int out = w->out, in = w->in;
    const size_t need = ops_matmul_w_scratch_floats(w->dtype, mode, out, in), m = (size_t)(in > out ? in : out);
    CU_REQUIRE(floats >= need, "%s: a %zu-float scratch for a [%d, %d] weight that needs %zu (internal error)", op,
               floats, out, in, need);
    const size_t tf = ops_matmul_w_tile_floats(w->dtype, out, in);
    Scratch g = {scr, nullptr, nullptr, nullptr, (int)(tf / (size_t)in), 0};
    if (mode == OPS_GEMM_F32) return g;
    g.ar = ops_gemm_act_rows(out, in);
    g.v = scr + ops_arena_round(tf);
    g.q = (uint8_t *)(g.v + ops_arena_round((size_t)g.ar * m));
    g.s = (float *)g.q + ops_arena_round(((size_t)g.ar * m + 3) / 4);
    return g;
}

/* C[m,n] (col-major, fp32) = op(A)·op(B) + beta·C with bf16 A and B, fp32 accumulation */
cudaError_t gemm_bf16(cudaStream_t s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A,
                      int lda, const void *B, int ldb, float beta, float *C, int ldc) {
    const float one = 1.0f;
    return blas_err(cublasGemmEx(cu_blas(s), ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, C,
                                 CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* which path each W8A8 chunk took (cu_gemm_fp8_paths): cuBLASLt, the fp32 GEMMs, the bf16 fallback */
std::atomic<long> fp8_via[3];
/* W8A8 on this GPU: 1 yes, 0 no (told once, then the bf16 path), -1 not decided yet;
 * fp8_probed: cuBLASLt asked once whether it has a block-scaled algorithm at all */
int fp8_ok = -1, fp8_probed = 0;
std::once_flag fp8_told;
void fp8_fallback(const char *why) {
    fp8_ok = 0;
    std::call_once(fp8_told, [why] {
        fprintf(stderr, "dsv3: train.gemm_dtype = \"fp8\": %s; the W8A8 GEMMs run as gemm_dtype \"bf16\" (bf16 "
                        "operands, fp32 accumulation)\n", why);
    });
}
bool fp8_usable() {
    if (fp8_ok < 0) {
#if CUBLAS_VERSION >= 120900 /* the block-scale modes VEC128_32F and BLK128x128_32F came with cuBLAS 12.9 */
        int dev = 0;
        cudaDeviceProp p;
        if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&p, dev) == cudaSuccess &&
            p.major * 10 + p.minor >= 89)
            fp8_ok = 1;
        else
            fp8_fallback("this GPU has no FP8 tensor cores (compute capability below 8.9)");
#else
        fp8_fallback("this cuBLAS (before 12.9) has no block-scaled FP8 matmul");
#endif
    }
    return fp8_ok == 1;
}

#if CUBLAS_VERSION >= 120900
/* cuBLASLt's workspace, allocated once per process at the first W8A8 GEMM: 32 MiB, the size the
 * cuBLAS guide recommends on Hopper (cublasSetWorkspace: 32 MiB for sm_90, 4 MiB before it) and
 * that NVIDIA's block-scaled sample (CUDALibrarySamples cuBLASLt/LtBlk128x128Fp8Matmul) passes;
 * without one the heuristic may have no block-scaled algorithm to offer (split-K among them).
 * Charged to OPS_MEM_OTHER (the "untracked" column of the memory line): the GPU plan counts it
 * in its runtime reserve (perf.h PERF_RUNTIME_BYTES), not in a category. No backend teardown
 * exists: it lives as long as the process, like the cuBLAS handles. */
constexpr size_t LT_WS_BYTES = (size_t)32 << 20;
std::mutex lt_mu; /* the handle, the workspace and the plan table */
cublasLtHandle_t lt;
void *lt_ws;

/* A W8A8 matmul's descriptors and algorithm, kept per (out, in, ldy, operand alignments, nt
 * rounded up to a power of two): the expert GEMMs see a new row count nt at almost every call,
 * so an entry holds the layouts of the last nt it ran and the algorithm the heuristic chose;
 * another nt of the same bucket resizes B and C and asks cublasLtMatmulAlgoCheck (host-side)
 * whether that algorithm still runs within the workspace, the heuristic again only if not. A
 * refusal is kept too (asked again only for another nt). A fixed table; when full, the oldest
 * entry is replaced (its descriptors destroyed). */
struct LtPlan {
    int out, in, ldy, bucket, nt; /* nt: the row count the B and C layouts describe now */
    uint32_t al[3];               /* alignment in bytes (<= 256) of W, x_q and y: the heuristic's assumptions */
    cublasStatus_t st;
    cublasLtMatmulDesc_t d;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    bool used;
};
constexpr int LT_PLANS = 64;
LtPlan lt_plans[LT_PLANS];
int lt_next;
long lt_asked; /* heuristic queries, for cu_lt_heuristic_calls */

uint32_t align_of(const void *p) {
    const uintptr_t v = (uintptr_t)p;
    uint32_t a = 256;
    while (a > 1 && v % a) a /= 2;
    return a;
}
int bucket_of(int nt) {
    int b = 1;
    while (b < nt) b *= 2;
    return b;
}
void lt_plan_free(LtPlan &p) {
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.d) cublasLtMatmulDescDestroy(p.d);
    p = LtPlan{};
}
void lt_init() {
    cublasStatus_t st = cublasLtCreate(&lt);
    if (st != CUBLAS_STATUS_SUCCESS) error_one_at(__FILE__, __LINE__, "CUDA backend: cublasLtCreate failed (status %d)", (int)st);
#ifdef DSV3_CU_TWIN
    CU_CHECK(cudaMalloc(&lt_ws, LT_WS_BYTES));
#else
    static cu_devbuf buf; /* OPS_MEM_OTHER, as the wrappers' device scratch */
    lt_ws = cu_devbuf_get(&buf, LT_WS_BYTES);
#endif
}
/* the heuristic's best algorithm for p as its layouts stand, within the workspace and alignments */
cublasStatus_t lt_ask(LtPlan &p) {
    const uint64_t wsb = LT_WS_BYTES;
    cublasLtMatmulPreference_t pref = nullptr;
    cublasStatus_t st = cublasLtMatmulPreferenceCreate(&pref);
    if (!st) st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
    if (!st) st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &p.al[0], sizeof p.al[0]);
    if (!st) st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &p.al[1], sizeof p.al[1]);
    if (!st) st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &p.al[2], sizeof p.al[2]);
    if (!st) st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &p.al[2], sizeof p.al[2]);
    cublasLtMatmulHeuristicResult_t r;
    int got = 0;
    lt_asked++;
    if (!st) st = cublasLtMatmulAlgoGetHeuristic(lt, p.d, p.a, p.b, p.c, p.c, pref, 1, &r, &got);
    if (!st && got < 1) st = CUBLAS_STATUS_NOT_SUPPORTED;
    if (!st) p.algo = r.algo;
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return st;
}
/* the plan of this call: found (resized to nt if need be), or built (descriptors, then the heuristic) */
LtPlan &lt_plan(const void *wq, const float *ws, const uint8_t *xq, const float *xs, float *y, int out, int nt, int in,
                int ldy) {
    const uint32_t al[3] = {align_of(wq), align_of(xq), align_of(y)};
    const int bk = bucket_of(nt);
    for (LtPlan &p : lt_plans) {
        if (!p.used || p.out != out || p.in != in || p.ldy != ldy || p.bucket != bk || memcmp(p.al, al, sizeof al)) continue;
        if (p.nt == nt) return p;
        const uint64_t n = (uint64_t)nt;
        cublasStatus_t st = cublasLtMatrixLayoutSetAttribute(p.b, CUBLASLT_MATRIX_LAYOUT_COLS, &n, sizeof n);
        if (!st) st = cublasLtMatrixLayoutSetAttribute(p.c, CUBLASLT_MATRIX_LAYOUT_COLS, &n, sizeof n);
        if (st) { /* cannot resize: rebuild below */
            lt_plan_free(p);
            break;
        }
        p.nt = nt;
        cublasLtMatmulHeuristicResult_t r;
        if (p.st || cublasLtMatmulAlgoCheck(lt, p.d, p.a, p.b, p.c, p.c, &p.algo, &r) || r.workspaceSize > LT_WS_BYTES)
            p.st = lt_ask(p);
        return p;
    }
    LtPlan &p = lt_plans[lt_next];
    lt_next = (lt_next + 1) % LT_PLANS;
    lt_plan_free(p);
    p.used = true, p.out = out, p.in = in, p.ldy = ldy, p.bucket = bk, p.nt = nt;
    memcpy(p.al, al, sizeof al);
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const int32_t ma = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, mb = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    cublasStatus_t st = cublasLtMatmulDescCreate(&p.d, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!st) st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!st) st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (!st) st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma);
    if (!st) st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof mb);
    if (!st) st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof ws);
    if (!st) st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof xs);
    if (!st) st = cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, in, out, in);
    if (!st) st = cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, in, nt, in);
    if (!st) st = cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, out, nt, ldy);
    p.st = st ? st : lt_ask(p);
    return p;
}

/* y[nt, out] (row-major, ld ldy) = beta·y + (x_q·s_x)(W_q·s_W)ᵀ as the column-major "TN" matmul
 * D[out, nt] = Aᵀ·B: A = W [out, in] (stored in x out), BLK128x128_32F scales as stored
 * ([ceil(out/128), ceil(in/128)] row-major: cuBLAS reads them with the row stride rounded up
 * to a multiple of 4, see fwd_fp8); B = x_q [nt, in] (in x nt), VEC128_32F scales
 * [ceil(in/128), nt] (token fastest). run 0: only ask the heuristic (NOT_SUPPORTED when it
 * has no algorithm). Descriptors and algorithm from the plan table; the scale pointers are
 * set on the cached descriptor at each call. */
cublasStatus_t lt_w8a8(cudaStream_t s, float *y, int ldy, const void *wq, const float *ws, const uint8_t *xq,
                       const float *xs, int out, int nt, int in, float beta, int run) {
    std::lock_guard<std::mutex> g(lt_mu);
    if (!lt) lt_init();
    LtPlan &p = lt_plan(wq, ws, xq, xs, y, out, nt, in, ldy);
    cublasStatus_t st = p.st;
    if (st || !run) return st;
    st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof ws);
    if (!st) st = cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof xs);
    const float one = 1.0f;
    if (!st) st = cublasLtMatmul(lt, p.d, &one, wq, p.a, xq, p.b, &beta, y, p.c, y, p.c, &p.algo, lt_ws, LT_WS_BYTES, s);
    return st;
}
#endif

/* bf16 operands of rows t0.. of x (or dy) [nt, k] into g.v (as uint16) */
cudaError_t act_bf16(const Scratch &g, const float *x, int nt, int k, cudaStream_t s) {
    const size_t n = (size_t)nt * k;
    return dsv3::launch(store_bf16_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, (uint16_t *)g.v, x, n);
}
/* the bf16 operand of weight rows [r0, r0+n): BF16 storage as it is, FP8 dequantised into the tile */
cudaError_t weight_bf16(const Scratch &g, const ops_weight *w, int r0, int n, const void **A, cudaStream_t s) {
    if (w->dtype == OPS_BF16) {
        *A = (const uint16_t *)w->data + (size_t)r0 * w->in;
        return cudaSuccess;
    }
    *A = g.tile;
    return dsv3::launch(dequant_fp8_bf16_kernel, dim3(n < 4096 ? n : 4096), dim3(row_block(w->in)), 0, s,
                        (uint16_t *)g.tile, (const __nv_fp8_e4m3 *)w->data + (size_t)r0 * w->in, w->scale, w->in, r0, n);
}

/* y[t0:t0+nt, :] at bf16 (x's chunk rounded, W in bf16; BF16 storage needs no tile: one GEMM) */
cudaError_t fwd_bf16(const Scratch &g, float *y, const float *x, const ops_weight *w, int nt, float beta, cudaStream_t s) {
    const int in = w->in, out = w->out, tr = w->dtype == OPS_BF16 ? out : g.tr;
    cudaError_t e = act_bf16(g, x, nt, in, s);
    for (int r0 = 0; r0 < out && e == cudaSuccess; r0 += tr) {
        const int n = out - r0 < tr ? out - r0 : tr;
        const void *A = nullptr;
        e = weight_bf16(g, w, r0, n, &A, s);
        if (e == cudaSuccess) e = gemm_bf16(s, CUBLAS_OP_T, CUBLAS_OP_N, n, nt, in, A, in, g.v, in, beta, y + r0, out);
    }
    return e;
}
/* y[t0:t0+nt, :] W8A8: x's chunk quantised 1x128, then cuBLASLt on the stored weight; the same
 * values through fp32 GEMMs where cuBLASLt's FP8 layout rules (lda, ldb multiples of 16,
 * 16-byte aligned operands, whatever else its heuristic refuses for a shape) do not hold; the
 * bf16 path on a GPU without FP8, or whose cuBLASLt has no block-scaled algorithm for a plain
 * 128 x 128 x 128 product (asked once).
 * Scale layouts (cuBLAS guide, "128-element 1D and 128x128 2D block scaling for FP8 data
 * types", as PyTorch's _scaled_mm checks and tests read it): VEC128_32F scales are
 * [ceil(K/128), M] with M fastest, unpadded (ours: [nb, nt]); BLK128x128_32F scales are K-block
 * fastest with the row of K blocks padded to L4 = roundup(ceil(K/128), 4). The stored
 * [ceil(out/128), nb] grid is that layout when nb % 4 == 0 (every DeepSeek-V3 projection: in =
 * 7168, 1536, 512, 16384, 2048, 18432) or when there is one row of blocks (out <= 128); any
 * other weight takes the fp32 path (no padded copy of its scales is kept). */
cudaError_t fwd_fp8(const Scratch &g, float *y, const float *x, const ops_weight *w, int nt, float beta, cudaStream_t s) {
    const int in = w->in, out = w->out, nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    if (!fp8_usable()) return fp8_via[2]++, fwd_bf16(g, y, x, w, nt, beta, s);
    cudaError_t e = dsv3::launch(act_quant_fp8_kernel, dim3(nb, nt), dim3(OPS_FP8_BLOCK), 0, s, g.q, g.s, x, nt, in);
    if (e != cudaSuccess) return e;
#if CUBLAS_VERSION >= 120900
    if (in % 16 == 0 && (nb % 4 == 0 || out <= OPS_FP8_BLOCK) && (uintptr_t)w->data % 16 == 0) {
        if (!fp8_probed) { /* real (aligned) pointers, a canonical shape: the heuristic reads no memory */
            fp8_probed = 1;
            cublasStatus_t st = lt_w8a8(s, y, 128, w->data, w->scale, g.q, g.s, 128, 128, 128, 0.0f, 0);
            if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
                fp8_fallback("cuBLASLt has no block-scaled FP8 matmul (128x128 weights x 1x128 activations) here");
                return fp8_via[2]++, fwd_bf16(g, y, x, w, nt, beta, s);
            }
            if (st != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
        }
        cublasStatus_t st = lt_w8a8(s, y, out, w->data, w->scale, g.q, g.s, out, nt, in, beta, 1);
        if (st == CUBLAS_STATUS_SUCCESS) return fp8_via[0]++, cudaSuccess;
        if (st != CUBLAS_STATUS_NOT_SUPPORTED) return cudaErrorUnknown;
    }
#endif
    fp8_via[1]++;
    const size_t n = (size_t)nt * in;
    e = dsv3::launch(act_dequant_fp8_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, g.v,
                     (const __nv_fp8_e4m3 *)g.q, g.s, nt, in);
    for (int r0 = 0; r0 < out && e == cudaSuccess; r0 += g.tr) {
        const int m = out - r0 < g.tr ? out - r0 : g.tr;
        e = cu_dequant_rows(g.tile, w, r0, m, s);
        if (e == cudaSuccess) e = sgemm(s, CUBLAS_OP_T, CUBLAS_OP_N, m, nt, in, g.tile, in, g.v, in, beta, y + r0, out);
    }
    return e;
}
} // namespace

extern "C" void cu_gemm_fp8_paths(long *lt, long *f32, long *bf16) {
    *lt = fp8_via[0], *f32 = fp8_via[1], *bf16 = fp8_via[2];
}
extern "C" long cu_lt_heuristic_calls(void) {
#if CUBLAS_VERSION >= 120900
    std::lock_guard<std::mutex> g(lt_mu);
    return lt_asked;
#else
    return 0;
#endif
}

extern "C" cudaError_t cu_act_quant_fp8(uint8_t *q, float *scale, const float *x, int T, int in, cudaStream_t s) {
    if (T <= 0 || in <= 0) return cudaSuccess;
    CU_REQUIRE(T <= 65535, "cu_act_quant_fp8: %d rows in one launch (at most 65535; ops_gemm_act_rows keeps 4096)", T);
    return dsv3::launch(act_quant_fp8_kernel, dim3((in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK, T), dim3(OPS_FP8_BLOCK), 0,
                        s, q, scale, x, T, in);
}

extern "C" cudaError_t cu_matmul_w(float *y, const float *x, const ops_weight *w, int T, float beta, float *tile,
                                   size_t tile_floats, cudaStream_t s) {
    const int in = w->in, out = w->out;
    if (w->dtype == OPS_F32) return cu_matmul(y, x, (const float *)w->data, T, in, out, beta, s);
    CU_REQUIRE(w->dtype == OPS_BF16 || (w->dtype == OPS_FP8_E4M3 && w->scale), "ops_matmul_w: bad weight dtype %d",
               (int)w->dtype);
    if (T == 0 || out == 0) return cudaSuccess;
    if (in == 0) return beta == 0.0f ? cudaMemsetAsync(y, 0, (size_t)T * out * sizeof *y, s) : cudaSuccess;
    const int mode = ops_gemm_of(w);
    const Scratch g = carve(w, mode, tile, tile_floats, "ops_matmul_w");
    cudaError_t e = cudaSuccess;
    if (mode != OPS_GEMM_F32) { /* chunks of g.ar rows of x */
        for (int t0 = 0; t0 < T && e == cudaSuccess; t0 += g.ar) {
            const int nt = T - t0 < g.ar ? T - t0 : g.ar;
            float *yc = y + (size_t)t0 * out;
            const float *xc = x + (size_t)t0 * in;
            e = mode == OPS_GEMM_FP8 ? fwd_fp8(g, yc, xc, w, nt, beta, s) : fwd_bf16(g, yc, xc, w, nt, beta, s);
        }
        return e;
    }
    for (int r0 = 0; r0 < out && e == cudaSuccess; r0 += g.tr) {
        const int n = out - r0 < g.tr ? out - r0 : g.tr;
        e = cu_dequant_rows(tile, w, r0, n, s);
        /* y[:, r0:r0+n] = x·tileᵀ (beta as given: each tile writes its own columns) */
        if (e == cudaSuccess) e = sgemm(s, CUBLAS_OP_T, CUBLAS_OP_N, n, T, in, tile, in, x, in, beta, y + r0, out);
    }
    return e;
}

/* gemm bf16 and fp8: dy's chunk rounded to bf16, W in bf16 (ops.h: the FP8 dgrad would need a transposed weight) */
extern "C" cudaError_t cu_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, int T, float *tile,
                                               size_t tile_floats, cudaStream_t s) {
    const int in = w->in, out = w->out;
    if (w->dtype == OPS_F32) return cu_matmul_backward(dx, nullptr, dy, nullptr, (const float *)w->data, T, in, out, s);
    CU_REQUIRE(w->dtype == OPS_BF16 || (w->dtype == OPS_FP8_E4M3 && w->scale),
               "ops_matmul_w_backward_dx: bad weight dtype %d", (int)w->dtype);
    if (!dx || T == 0 || in == 0 || out == 0) return cudaSuccess;
    const int mode = ops_gemm_of(w) == OPS_GEMM_F32 ? OPS_GEMM_F32 : OPS_GEMM_BF16;
    const Scratch g = carve(w, mode, tile, tile_floats, "ops_matmul_w_backward_dx");
    cudaError_t e = cudaSuccess;
    if (mode == OPS_GEMM_BF16) {
        const int tr = w->dtype == OPS_BF16 ? out : g.tr;
        for (int t0 = 0; t0 < T && e == cudaSuccess; t0 += g.ar) {
            const int nt = T - t0 < g.ar ? T - t0 : g.ar;
            e = act_bf16(g, dy + (size_t)t0 * out, nt, out, s);
            for (int r0 = 0; r0 < out && e == cudaSuccess; r0 += tr) {
                const int n = out - r0 < tr ? out - r0 : tr;
                const void *A = nullptr;
                e = weight_bf16(g, w, r0, n, &A, s);
                /* dx[t0:t0+nt, :] += dy_b[:, r0:r0+n]·W_b[r0:r0+n, :] */
                if (e == cudaSuccess)
                    e = gemm_bf16(s, CUBLAS_OP_N, CUBLAS_OP_N, in, nt, n, A, in, (const uint16_t *)g.v + r0, out, 1.0f,
                                  dx + (size_t)t0 * in, in);
            }
        }
        return e;
    }
    for (int r0 = 0; r0 < out && e == cudaSuccess; r0 += g.tr) {
        const int n = out - r0 < g.tr ? out - r0 : g.tr;
        e = cu_dequant_rows(tile, w, r0, n, s);
        /* dx[T,in] += dy[:, r0:r0+n]·tile[n,in] */
        if (e == cudaSuccess) e = sgemm(s, CUBLAS_OP_N, CUBLAS_OP_N, in, T, n, tile, in, dy + r0, out, 1.0f, dx, in);
    }
    return e;
}

extern "C" cudaError_t cu_weight_store_rows(const ops_weight *w, int r0, int n, const float *src, cudaStream_t s) {
    const int in = w->in;
    if (n <= 0) return cudaSuccess;
    CU_REQUIRE(r0 >= 0 && r0 + n <= w->out, "ops_weight_store_rows: rows %d..%d outside [0, %d)", r0, r0 + n, w->out);
    if (w->dtype == OPS_F32)
        return cudaMemcpyAsync((float *)w->data + (size_t)r0 * in, src, (size_t)n * in * sizeof(float),
                               cudaMemcpyHostToDevice, s);
    CU_REQUIRE(w->dtype == OPS_BF16 || (w->dtype == OPS_FP8_E4M3 && w->scale), "ops_weight_store_rows: bad weight dtype %d",
               (int)w->dtype);
    if (w->dtype == OPS_FP8_E4M3)
        CU_REQUIRE(r0 % OPS_FP8_BLOCK == 0 && (n % OPS_FP8_BLOCK == 0 || r0 + n == w->out),
                   "ops_weight_store_rows: FP8 rows %d..%d are not whole 128-row blocks", r0, r0 + n);
    if (in <= 0) return cudaSuccess;
    /* host rows staged through a transient device buffer, at most 2^24 floats (whole 128-row
     * blocks) at a time; a load-time op: cudaFree's synchronisation costs nothing that matters.
     * Counted as OPS_MEM_OTHER while it lives (the run's "untracked" peak), not in the plan */
    const int nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    int tr = (int)(((size_t)1 << 24) / (size_t)in / OPS_FP8_BLOCK * OPS_FP8_BLOCK);
    if (tr < OPS_FP8_BLOCK) tr = OPS_FP8_BLOCK;
    if (tr > n) tr = n;
    float *stage = nullptr;
    const size_t sbytes = (size_t)tr * in * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&stage, sbytes);
    if (e == cudaSuccess) ops_mem_charge(0, OPS_MEM_OTHER, sbytes, 1);
    for (int a = 0; a < n && e == cudaSuccess; a += tr) {
        const int k = n - a < tr ? n - a : tr;
        const size_t cnt = (size_t)k * in, row = (size_t)(r0 + a);
        e = cudaMemcpyAsync(stage, src + (size_t)a * in, cnt * sizeof(float), cudaMemcpyHostToDevice, s);
        if (e != cudaSuccess) break;
        if (w->dtype == OPS_BF16) {
            e = dsv3::launch(store_bf16_kernel, dim3(dsv3::grid_for(cnt, EW)), dim3(EW), 0, s,
                             (uint16_t *)w->data + row * in, (const float *)stage, cnt);
        } else {
            dim3 g(nb, (k + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK);
            e = dsv3::launch(store_fp8_kernel, g, dim3(QB), 0, s, (uint8_t *)w->data + row * in,
                             (float *)(uintptr_t)w->scale + row / OPS_FP8_BLOCK * nb, (const float *)stage, in, k);
        }
    }
    if (stage) {
        cudaError_t f = cudaFree(stage); /* after the queued kernels: cudaFree synchronises */
        ops_mem_charge(0, OPS_MEM_OTHER, sbytes, -1);
        if (e == cudaSuccess) e = f;
    }
    return e;
}

/* ---- AdamW and the counter-based generators ---- */

namespace {
/* torch.optim.AdamW, the CPU reference's expression order; step and bc2s
 * (bias corrections in double) come from the host */
__global__ void adamw_kernel(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                             float eps, float wd, float step, float bc2s, float grad_scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i] * grad_scale, wi = w[i];
        wi -= lr * wd * wi;
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi, v[i] = vi;
        w[i] = wi - step * mi / (sqrtf(vi) / bc2s + eps);
    }
}

/* SplitMix64 keyed counters: ops_cpu.c's generator, bit for bit */
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
__device__ __forceinline__ double u01(uint64_t seed, uint64_t key, uint64_t i, uint64_t lane) {
    uint64_t r = mix64(mix64(mix64(seed) ^ key) ^ (2 * i + lane));
    return ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* (0,1) */
}

__global__ void fill_normal_kernel(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float std) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double u1 = u01(seed, key, first + i, 0), u2 = u01(seed, key, first + i, 1); /* Box-Muller in double */
        /* cospi(2·u2) = cos(2π·u2): no large-argument reduction (cos's uses local memory) */
        x[i] = (float)(std * sqrt(-2.0 * log(u1)) * cospi(2.0 * u2));
    }
}
__global__ void fill_uniform_kernel(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float bound) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = (float)((2.0 * u01(seed, key, first + i, 0) - 1.0) * bound);
}
__global__ void dropout_kernel(float *y, const float *x, size_t n, double p, float keep, uint64_t seed, uint64_t key,
                               uint64_t first) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = u01(seed, key, first + i, 0) >= p ? x[i] * keep : 0.0f;
}
} // namespace

extern "C" cudaError_t cu_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                                float beta2, float eps, float wd, int t, float grad_scale, cudaStream_t s) {
    if (!n) return cudaSuccess;
    double bc1 = 1.0 - pow((double)beta1, (double)t), bc2 = 1.0 - pow((double)beta2, (double)t);
    float step = (float)((double)lr / bc1), bc2s = (float)sqrt(bc2);
    return dsv3::launch(adamw_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, w, g, m, v, n, lr, beta1, beta2, eps,
                        wd, step, bc2s, grad_scale);
}
extern "C" cudaError_t cu_fill_normal(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float std,
                                      cudaStream_t s) {
    return n ? dsv3::launch(fill_normal_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, n, seed, key, first, std)
             : cudaSuccess;
}
extern "C" cudaError_t cu_fill_uniform(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float bound,
                                       cudaStream_t s) {
    return n ? dsv3::launch(fill_uniform_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, x, n, seed, key, first,
                            bound)
             : cudaSuccess;
}
extern "C" cudaError_t cu_dropout(float *y, const float *x, size_t n, float p, uint64_t seed, uint64_t key,
                                  uint64_t first, cudaStream_t s) {
    const float keep = 1.0f / (1.0f - p);
    return n ? dsv3::launch(dropout_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, y, x, n, (double)p, keep, seed,
                            key, first)
             : cudaSuccess;
}

#ifndef DSV3_CU_TWIN
/* ---- ops.h: memory section. Device memory from cudaMalloc, zeroed at
 * allocation (as the CPU backend's); sizes and categories in a host table
 * (a device block has no room for a header the host could read). ---- */

namespace {
struct MemRec {
    size_t bytes;
    int cat, host;
};
std::mutex mem_mu;
std::unordered_map<void *, MemRec> mem_tab; /* the size and category of each allocation (counters: ops_host.c) */

void charge(void *p, size_t bytes, int host) {
    const int cat = ops_mem_current_category();
    {
        std::lock_guard<std::mutex> g(mem_mu);
        mem_tab[p] = MemRec{bytes, cat, host};
    }
    ops_mem_charge(host, cat, bytes, 1);
}
size_t uncharge(void *p, int host) {
    MemRec r;
    {
        std::lock_guard<std::mutex> g(mem_mu);
        auto it = mem_tab.find(p);
        CU_REQUIRE(it != mem_tab.end() && it->second.host == host,
                   "%s of a pointer that %s did not allocate (internal error)", host ? "ops_host_free" : "ops_free",
                   host ? "ops_host_alloc" : "ops_alloc");
        r = it->second;
        mem_tab.erase(it);
    }
    ops_mem_charge(host, r.cat, r.bytes, -1);
    return r.bytes;
}
} // namespace

void *cu_devbuf_get(cu_devbuf *b, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (bytes > b->bytes) {
        if (b->p) {
            CU_CHECK(cudaStreamSynchronize(cu_stream())); /* no queued kernel may still use the old one */
            CU_CHECK(cudaFree(b->p));
            ops_mem_charge(0, OPS_MEM_OTHER, b->bytes, -1);
            b->p = nullptr, b->bytes = 0;
        }
        CU_CHECK(cudaMalloc(&b->p, bytes));
        b->bytes = bytes;
        ops_mem_charge(0, OPS_MEM_OTHER, bytes, 1);
    }
    return b->p;
}

void *ops_alloc(size_t bytes) {
    void *p = nullptr;
    cudaStream_t s = cu_stream();
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is an answer, not a sticky error */
        return nullptr;
    }
    CU_CHECK(cudaMemsetAsync(p, 0, bytes ? bytes : 1, s));
    CU_CHECK(cudaStreamSynchronize(s));
    charge(p, bytes, 0);
    return p;
}
void ops_free(void *p) {
    if (!p) return;
    uncharge(p, 0);
    CU_CHECK(cudaStreamSynchronize(cu_stream())); /* no kernel may still use it */
    CU_CHECK(cudaFree(p));
}
void *ops_host_alloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) return nullptr;
    for (size_t i = 0; i < bytes; i += 4096) ((volatile char *)p)[i] = 0; /* committed, as the CPU backend's */
    charge(p, bytes, 1);
    return p;
}
void ops_host_free(void *p) {
    if (!p) return;
    uncharge(p, 1);
    free(p);
}
void ops_memset0(void *p, size_t bytes) {
    if (bytes) CU_CHECK(cudaMemsetAsync(p, 0, bytes, cu_stream()));
}
/* no context yet: nothing was queued (and a --check or --dry-run never needs a GPU) */
void ops_sync(void) {
    if (ctx.stream) CU_CHECK(cudaStreamSynchronize(ctx.stream));
}
/* Copies are synchronous, as on the CPU: the host reads dst / reuses src at once. */
void ops_to_host(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu_stream()));
    CU_CHECK(cudaStreamSynchronize(cu_stream()));
}
void ops_to_device(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu_stream()));
    CU_CHECK(cudaStreamSynchronize(cu_stream()));
}
/* Queued on the stream like a kernel (no synchronisation: device data only). */
void ops_copy_bytes(void *dst, const void *src, size_t bytes) {
    if (bytes) CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cu_stream()));
}

/* The arena: bookkeeping on the host over one device block. */
int ops_arena_create(ops_arena *a, size_t floats) {
    memset(a, 0, sizeof *a);
    size_t cap = ops_arena_round(floats);
    if (cap == 0) return 0;
    if (cudaMalloc((void **)&a->base, cap * sizeof(float)) != cudaSuccess) {
        (void)cudaGetLastError();
        a->base = nullptr;
        return -1;
    }
    a->cap = cap;
    a->owned = 1;
    return 0;
}
void ops_arena_init_at(ops_arena *a, float *mem, size_t floats) {
    CU_REQUIRE(floats % OPS_ARENA_ALIGN == 0 && (floats == 0 || mem),
               "ops_arena_init_at: %zu floats is not a multiple of %d (or no memory)", floats, OPS_ARENA_ALIGN);
    memset(a, 0, sizeof *a);
    a->base = floats ? mem : nullptr;
    a->cap = floats;
}
void ops_arena_destroy(ops_arena *a) {
    if (a->owned && a->base) {
        CU_CHECK(cudaStreamSynchronize(cu_stream()));
        CU_CHECK(cudaFree(a->base));
    }
    memset(a, 0, sizeof *a);
}
float *ops_arena_take(ops_arena *a, size_t floats) {
    size_t n = ops_arena_round(floats);
    if (n == 0) return a->base ? a->base + a->used : nullptr;
    if (n > a->cap - a->used)
        error_one_at(__FILE__, __LINE__, "scratch arena too small (internal error): need %zu floats, have %zu (capacity %zu, %zu in use)",
                  a->used + n, a->cap, a->cap, a->used);
    float *p = a->base + a->used;
    a->used += n;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}
void ops_arena_release(ops_arena *a, size_t mark) {
    CU_REQUIRE(mark <= a->used, "scratch arena: release to %zu above the %zu floats in use", mark, a->used);
    a->used = mark;
}

/* ---- ops.h: elementwise ---- */
void ops_zero(float *x, size_t n) { CU_CHECK(cu_zero(x, n, cu_stream())); }
void ops_copy(float *dst, const float *src, size_t n) { CU_CHECK(cu_copy(dst, src, n, cu_stream())); }
void ops_round_bf16(float *x, uint16_t *y, size_t n) { CU_CHECK(cu_round_bf16(x, y, n, cu_stream())); }
void ops_widen_bf16(float *x, const uint16_t *y, size_t n) { CU_CHECK(cu_widen_bf16(x, y, n, cu_stream())); }
void ops_to_bf16(uint16_t *y, const float *x, size_t n) { CU_CHECK(cu_to_bf16(y, x, n, cu_stream())); }
void ops_fill(float *x, size_t n, float v) { CU_CHECK(cu_fill(x, n, v, cu_stream())); }
void ops_add(float *y, const float *x, size_t n) { CU_CHECK(cu_add(y, x, n, cu_stream())); }
void ops_axpy(float *y, float a, const float *x, size_t n) { CU_CHECK(cu_axpy(y, a, x, n, cu_stream())); }
void ops_scale(float *x, float a, size_t n) { CU_CHECK(cu_scale(x, a, n, cu_stream())); }
double ops_sumsq(const float *x, size_t n) {
    static cu_devbuf buf; /* one device scalar for the process */
    double *d = (double *)cu_devbuf_get(&buf, sizeof *d), h = 0.0;
    CU_CHECK(cu_sumsq(x, n, d, cu_stream()));
    ops_to_host(&h, d, sizeof h);
    return h;
}
void ops_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows) {
    CU_CHECK(cu_copy_cols(dst, ds, src, ss, off, n, rows, cu_stream()));
}
void ops_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows) {
    CU_CHECK(cu_add_cols(dst, ds, off, src, ss, n, rows, cu_stream()));
}

/* ---- ops.h: GEMMs, stored weights, AdamW, generators ---- */
void ops_matmul(float *y, const float *x, const float *w, int T, int in, int out, float beta) {
    CU_CHECK(cu_matmul(y, x, w, T, in, out, beta, cu_stream()));
}
void ops_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int T, int in, int out) {
    CU_CHECK(cu_matmul_backward(dx, dw, dy, x, w, T, in, out, cu_stream()));
}
/* the dequantisation tile (and the bf16/fp8 activation chunk) comes from the caller's scratch
 * arena (device memory), sized by the plan's rule, and is given back before return */
void ops_matmul_w(float *y, const float *x, const ops_weight *w, int T, float beta, ops_arena *scratch) {
    size_t n = ops_matmul_w_scratch_floats(w->dtype, ops_gemm_of(w), w->out, w->in), mark = ops_arena_mark(scratch);
    float *tile = ops_arena_take(scratch, n);
    CU_CHECK(cu_matmul_w(y, x, w, T, beta, tile, n, cu_stream()));
    ops_arena_release(scratch, mark);
}
void ops_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, int T, ops_arena *scratch) {
    size_t n = ops_matmul_w_scratch_floats(w->dtype, ops_gemm_of(w), w->out, w->in), mark = ops_arena_mark(scratch);
    float *tile = ops_arena_take(scratch, n);
    CU_CHECK(cu_matmul_w_backward_dx(dx, dy, w, T, tile, n, cu_stream()));
    ops_arena_release(scratch, mark);
}
void ops_weight_store_rows(const ops_weight *w, int r0, int n, const float *src) {
    CU_CHECK(cu_weight_store_rows(w, r0, n, src, cu_stream()));
}
void ops_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,
               float wd, int t, float grad_scale) {
    CU_CHECK(cu_adamw(w, g, m, v, n, lr, beta1, beta2, eps, wd, t, grad_scale, cu_stream()));
}
void ops_fill_normal(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float std) {
    CU_CHECK(cu_fill_normal(x, n, seed, key, first, std, cu_stream()));
}
void ops_fill_uniform(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float bound) {
    CU_CHECK(cu_fill_uniform(x, n, seed, key, first, bound, cu_stream()));
}
void ops_dropout(float *y, const float *x, size_t n, float p, uint64_t seed, uint64_t key, uint64_t first) {
    CU_CHECK(cu_dropout(y, x, n, p, seed, key, first, cu_stream()));
}
#endif /* DSV3_CU_TWIN */
