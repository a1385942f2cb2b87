/* cu_ops_attn.h — C interface of cuda/ops_attn.cu: the CUDA twins of
 * src/ops_attn.h (RMSNorm, RoPE, causal attention, latent attention,
 * embedding, cross-entropy, row argmax). Convention as in cu_ops.h: cu_X takes ops_X's
 * arguments on device pointers plus the stream, queues the work and
 * synchronises nothing. Where ops_X returns a value to the host, or needs
 * scratch the CPU op takes from malloc, cu_X takes explicit device buffers
 * instead (named below); ops_X (cuda/ops_attn.cu, not in -DDSV3_CU_TWIN
 * builds) owns such buffers and copies the results back. */
#ifndef DSV3_CU_OPS_ATTN_H
#define DSV3_CU_OPS_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "ops.h" /* ops_weight */

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t cu_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int T, int C, float eps,
                               cudaStream_t s);
cudaError_t cu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                                const float *rstd, int T, int C, cudaStream_t s);

cudaError_t cu_rope_forward(float *x, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                            const float *sin_t, int B, int T, cudaStream_t s);
cudaError_t cu_rope_backward(float *dx, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                             const float *sin_t, int B, int T, cudaStream_t s);

/* Training attention through cuBLAS (cuda/ops_attn.cu): chunks of `rows`
 * query rows (>= 1; the ops use ops_attention_chunk_rows, tests pass fewer to
 * get several chunks), each a strided-batched GEMM over the heads per
 * sequence into a score region of R = ops_arena_round(B·nh·min(rows, T)·T)
 * floats, a softmax kernel, and the products with v (forward) or the four
 * gradient GEMMs (backward). bf16 0: fp32 operands and compute; bf16 1: the
 * GEMMs on bf16 operands with fp32 accumulation (ops_attn.h "Precision"; the
 * ops pass ops_gemm_get() != OPS_GEMM_F32), the bf16 copies of k, v and a
 * chunk of q (dout) after the regions. work: device scratch of work_floats >=
 * cu_attention_work_floats (R forward, 2·R backward, plus the copies; with
 * rows = ops_attention_chunk_rows at most ops_attention_scratch_floats).
 * Any dqk, dv >= 1. rows < 1, dqk or dv < 1, or less work:
 * cudaErrorInvalidValue, nothing queued. */
size_t cu_attention_work_floats(int B, int T, int nh, int dqk, int dv, int rows, int backward, int bf16);
cudaError_t cu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                                 int nh, int dqk, int dv, float scale, int bf16, int rows, float *work,
                                 size_t work_floats, cudaStream_t s);
cudaError_t cu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                  const float *v, const float *lse, int B, int T, int nh, int dqk, int dvd,
                                  float scale, int bf16, int rows, float *work, size_t work_floats, cudaStream_t s);
/* Latent attention: a SIMT kernel (a lane keeps kvl/32 output columns in
 * registers: kvl <= 512, kvl <= W; the shared tiles, about 40·W floats, must
 * fit the device's opt-in shared memory, 227 KiB on sm_90, 163 KiB on sm_80;
 * above 48 KiB the launcher opts in). Beyond them cudaErrorInvalidValue. */
cudaError_t cu_latent_attention(float *out, const float *q, const float *cache, int n, int nh, int W, int kvl, int p0,
                                float scale, cudaStream_t s);

/* bad: device int, written with the first row whose id is outside [0, V),
 * or left >= N when every id is in range (the launcher initialises it). */
cudaError_t cu_embedding_forward(float *y, const float *E, const int32_t *ids, int N, int V, int H, int *bad,
                                 cudaStream_t s);
/* ops_embedding_forward_w: an F32 or BF16 table in its storage (rows widened exactly) */
cudaError_t cu_embedding_forward_w(float *y, const ops_weight *E, const int32_t *ids, int N, int *bad, cudaStream_t s);
/* work: device scratch of cu_embedding_backward_work(N) ints (the radix sort
 * of the (id, token) pairs). */
size_t cu_embedding_backward_work(int N);
cudaError_t cu_embedding_backward(float *dE, const float *dy, const int32_t *ids, int N, int V, int H, int *work,
                                  cudaStream_t s);

/* What ops_cross_entropy_forward/_fused return, on the device: sum (in row
 * order, NAN if a target was invalid), count, and the first invalid row
 * (-1 if none) with its target. */
typedef struct cu_ce_result {
    double sum;
    int64_t count;
    int bad_row, bad_target;
} cu_ce_result;
/* rows: device scratch of N doubles (each row's loss). */
cudaError_t cu_cross_entropy_forward(float *row_loss, const float *logits, const int32_t *targets, int N, int V,
                                     cu_ce_result *res, double *rows, cudaStream_t s);
cudaError_t cu_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                      float scale, cudaStream_t s);
cudaError_t cu_cross_entropy_fused(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                   float scale, cu_ce_result *res, double *rows, cudaStream_t s);

/* out: DEVICE [N] (ops_argmax_rows's is host memory). V <= 0 with N > 0: cudaErrorInvalidValue. */
cudaError_t cu_argmax_rows(int32_t *out, const float *x, int N, int V, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
