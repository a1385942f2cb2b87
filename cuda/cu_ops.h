/* cu_ops.h — C interface of cuda/ops.cu: the backend's context and the CUDA
 * twins of ops.h's core ops.
 *
 * Convention (every cuda/ *.cu): for an op `ops_X(args)` of ops.h the file
 * defines `cudaError_t cu_X(args, cudaStream_t s)` — the same arguments on
 * device pointers, queued on stream s, nothing synchronised — and, unless
 * compiled with -DDSV3_CU_TWIN, `ops_X(args)` itself, which runs cu_X on the
 * backend stream and ends the job with the file:line of a CUDA error. Ops
 * that return a value to the host take an extra device output instead
 * (cu_sumsq(..., double *out)). Twin tests (tests/cuda/) link the -DDSV3_CU_TWIN
 * objects beside the CPU reference, so both `ops_X` and `cu_X` exist in one
 * binary. */
#ifndef DSV3_CU_OPS_H
#define DSV3_CU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- context: the device is the node-local rank modulo the devices present
 * (OMPI_COMM_WORLD_LOCAL_RANK / SLURM_LOCALID), chosen on first use; one
 * compute stream per process. */
cudaStream_t cu_stream(void);
int cu_device(void);
/* Ends the job naming file:line and the CUDA error (error_one). */
void cu_check_at(cudaError_t e, const char *what, const char *file, int line);
#define CU_CHECK(x) cu_check_at((cudaError_t)(x), #x, __FILE__, __LINE__)
/* The process's cuBLAS handle (created on first use), bound to stream s. */
cublasHandle_t cu_blas(cudaStream_t s);
/* src/error.h's, declared here so that no .cu needs the MPI headers error.h brings. */
void error_one_at(const char *file, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
#define CU_REQUIRE(cond, ...)                                                                                    \
    do {                                                                                                         \
        if (!(cond)) error_one_at(__FILE__, __LINE__, __VA_ARGS__);                                              \
    } while (0)

/* Device scratch of the ops_X wrappers (not in twin builds): the host arrays a
 * kernel reads, staged; small results read back; what the CPU op takes from
 * malloc (the CE row losses). Grow-only, kept for the
 * process, charged to OPS_MEM_OTHER (the memory report's "untracked": outside
 * the plan, as the CPU op's malloc is), so ops_mem_get counts every byte the
 * backend holds on the device. A zero-initialised cu_devbuf is empty. */
typedef struct {
    void *p;
    size_t bytes;
} cu_devbuf;
void *cu_devbuf_get(cu_devbuf *b, size_t bytes); /* at least `bytes` (>= 1) bytes; not zeroed */

/* ---- elementwise (ops.h) */
cudaError_t cu_zero(float *x, size_t n, cudaStream_t s);
cudaError_t cu_copy(float *dst, const float *src, size_t n, cudaStream_t s);
cudaError_t cu_round_bf16(float *x, uint16_t *y, size_t n, cudaStream_t s);
cudaError_t cu_widen_bf16(float *x, const uint16_t *y, size_t n, cudaStream_t s);
cudaError_t cu_to_bf16(uint16_t *y, const float *x, size_t n, cudaStream_t s);
cudaError_t cu_add(float *y, const float *x, size_t n, cudaStream_t s);
cudaError_t cu_axpy(float *y, float a, const float *x, size_t n, cudaStream_t s);
cudaError_t cu_scale(float *x, float a, size_t n, cudaStream_t s);
cudaError_t cu_sumsq(const float *x, size_t n, double *out /* device, 1 */, cudaStream_t s);
cudaError_t cu_fill(float *x, size_t n, float value, cudaStream_t s);
cudaError_t cu_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows, cudaStream_t s);
cudaError_t cu_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows, cudaStream_t s);


/* ---- GEMMs (cuBLAS, fp32 compute; row-major y = x·Wᵀ as column-major GemmEx(T, N)) */
cudaError_t cu_matmul(float *y, const float *x, const float *w, int T, int in, int out, float beta, cudaStream_t s);
cudaError_t cu_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int T, int in,
                               int out, cudaStream_t s);
/* Stored (BF16 / FP8) weights at the precision ops_gemm_of(w) (ops.h ops_gemm):
 * `tile` is the scratch (DEVICE, tile_floats >= ops_matmul_w_scratch_floats(w's
 * dtype, ops_gemm_of(w), out, in), the CPU's rule). fp32: row tiles dequantised
 * on the device, one fp32 GEMM per tile; bf16: cublasGemmEx on bf16 operands
 * (BF16 weights as stored); fp8: cublasLtMatmul, BLK128x128_32F weights as
 * stored x VEC128_32F activations (cu_act_quant_fp8), in chunks of
 * ops_gemm_act_rows rows. F32 needs no scratch (NULL, 0). */
cudaError_t cu_matmul_w(float *y, const float *x, const ops_weight *w, int T, float beta, float *tile,
                        size_t tile_floats, cudaStream_t s);
cudaError_t cu_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, int T, float *tile,
                                    size_t tile_floats, cudaStream_t s);
/* How many W8A8 (gemm fp8) row chunks of cu_matmul_w went through cuBLASLt's block-scaled
 * matmul, through the fp32 GEMMs (a layout cuBLASLt refuses) and through the bf16 fallback
 * (no FP8 here), since the process started: the GEMM bench says which path it measured. */
void cu_gemm_fp8_paths(long *lt, long *f32, long *bf16);
/* cuBLASLt heuristic queries of the W8A8 plan table so far (cuda/ops.cu lt_plan): one per new
 * (shape, ld, alignment, row-count bucket), and where a kept algorithm fails its check */
long cu_lt_heuristic_calls(void);
/* ops_act_quant_fp8 on the device (all pointers device; T <= 65535): codes [T, in], scale [ceil(in/128), T] */
cudaError_t cu_act_quant_fp8(uint8_t *q, float *scale, const float *x, int T, int in, cudaStream_t s);
/* src: HOST fp32 [n, in] (staged through the scratch); w->data / w->scale: device. */
cudaError_t cu_weight_store_rows(const ops_weight *w, int r0, int n, const float *src, cudaStream_t s);
/* Rows [r0, r0+n) of w as fp32 into t [n, in] (device). */
cudaError_t cu_dequant_rows(float *t, const ops_weight *w, int r0, int n, cudaStream_t s);
/* fp32 -> e4m3 (ops_f32_to_e4m3's rounding: RNE, saturating, NaN -> 0x7F), n values. */
cudaError_t cu_f32_to_e4m3(uint8_t *q, const float *x, size_t n, cudaStream_t s);

/* ---- optimizer and counter-based fills (ops.h) */
cudaError_t cu_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                     float eps, float wd, int t, float grad_scale, cudaStream_t s);
cudaError_t cu_fill_normal(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float std, cudaStream_t s);
cudaError_t cu_fill_uniform(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float bound,
                            cudaStream_t s);
cudaError_t cu_dropout(float *y, const float *x, size_t n, float p, uint64_t seed, uint64_t key, uint64_t first,
                       cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
