/* cu_ops_moe.h — CUDA twins of src/ops_moe.h (cuda/ops_moe.cu): SwiGLU, router
 * scores and group-limited top-k, the balance loss, dispatch bookkeeping, row
 * gather/scatter/combine, the dispatch wire, grouped expert GEMMs (fp32 and BF16/FP8 storage),
 * the bias update. Convention of cu_ops.h: the arguments of ops_X on device
 * pointers, queued on stream s, nothing synchronised. Where ops_X takes or
 * returns HOST memory the twin takes DEVICE memory instead (stated per
 * function); the ops_X wrappers do the copies. */
#ifndef DSV3_CU_OPS_MOE_H
#define DSV3_CU_OPS_MOE_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t cu_swiglu_forward(float *h, const float *g, int gs, const float *u, int us, int T, int n, cudaStream_t s);
cudaError_t cu_swiglu_backward(float *dg, int dgs, float *du, int dus, const float *dh, const float *g, int gs,
                               const float *u, int us, int T, int n, cudaStream_t s);
cudaError_t cu_sigmoid(float *y, const float *x, size_t n, cudaStream_t s);

/* Bad routing shapes end the job with ops_moe_route's message (host check). */
cudaError_t cu_moe_route(int *idx, float *w, const float *sc, const float *bias, int T, int E, int K, int n_group,
                         int topk_group, int norm, float scale, cudaStream_t s);
cudaError_t cu_moe_route_backward(float *dlogits, const float *dw, const float *sc, const int *idx, int T, int E,
                                  int K, int norm, float scale, cudaStream_t s);

/* out: DEVICE [B+1] doubles: out[b] is sequence b's Σ_i f_i·P_i, out[B] their
 * sum in b order (what ops_moe_balance returns). B, T >= 1. */
cudaError_t cu_moe_balance(const float *sc, const int *topk, int B, int T, int E, int K, double *out,
                           cudaStream_t s);
cudaError_t cu_moe_balance_backward(float *dlogits, const float *sc, const int *topk, int B, int T, int E, int K,
                                    float coef, cudaStream_t s);

cudaError_t cu_gather_rows(float *dst, const float *src, const int *idx, int n, int C, cudaStream_t s);
cudaError_t cu_scatter_rows(float *dst, const float *src, const int *idx, int n, int C, cudaStream_t s);
/* One row per (token, destination rank). scnt [P], spc [P], ecnt [E] and efirst [P+1]
 * are DEVICE memory (ops_moe_dispatch_index's are host memory); E = efirst[P] is
 * passed by the host. The row count S (ops_moe_dispatch_index's return value) is
 * Σ scnt = toff[N], the caller's to read. work: device scratch of
 * cu_moe_dispatch_index_work(N, P) ints (per-chunk row and pair counts). */
size_t cu_moe_dispatch_index_work(int N, int P);
cudaError_t cu_moe_dispatch_index(int *stok, int *toff, int *trows, int *ptk, int *smeta, int *scnt, int *spc,
                                  int *ecnt, const int *idx, const float *w, const int *efirst, int N, int K, int P,
                                  int E, int *work, cudaStream_t s);
/* lcnt [G], roff [P], rpo [P]: DEVICE memory (host memory in ops_moe_receive_index). */
cudaError_t cu_moe_receive_index(int *perm, int *pinv, int *poff, float *pw, int *lcnt, const int *rmeta,
                                 const int *roff, const int *rpo, int P, int Pr, int R, int G, cudaStream_t s);
cudaError_t cu_moe_combine_seg(float *out, const float *y, const int *off, const int *pos, const float *w, int n,
                               int C, float beta, cudaStream_t s);
cudaError_t cu_moe_combine_seg_backward(float *dy, float *dw, const float *dout, const float *y, const int *off,
                                        const int *pos, const float *w, int n, int C, cudaStream_t s);
/* The wire, in place (row bytes: ops_wire_row_bytes, src/ops_host.c). A row that
 * does not pack in place ends the job with the CPU op's message. */
cudaError_t cu_wire_pack(float *rows, int n, int C, int wire, cudaStream_t s);
cudaError_t cu_wire_unpack(float *rows, int n, int C, int wire, cudaStream_t s);

/* Grouped GEMMs: one cuBLAS GEMM per expert with rows (empty experts are
 * skipped); cnt is HOST memory, as in ops_moe.h. A cuBLAS failure ends the job. */
cudaError_t cu_grouped_matmul(float *y, const float *x, const float *w, const int *cnt, int G, int in, int out,
                              cudaStream_t s);
cudaError_t cu_grouped_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                                       const int *cnt, int G, int in, int out, cudaStream_t s);
/* Stored expert weights: BF16/FP8 rows are dequantised to fp32 into `tile`
 * (DEVICE, tile_floats floats), then one fp32 GEMM per tile: the whole expert
 * when it fits, else whole 128-row blocks (at least one must fit).
 * cu_grouped_matmul_w_tile(w) is the CPU op's tile: the whole expert up to
 * 2^24 elements, else 128-row multiples. F32 needs no tile (NULL, 0).
 * At train.gemm_dtype bf16/fp8 (ops_gemm_of(w)) each expert with rows is
 * cu_matmul_w / cu_matmul_w_backward_dx (cu_ops.h), and cu_grouped_matmul_w_tile
 * is ops_matmul_w_scratch_floats: the tile plus the activation chunk. */
size_t cu_grouped_matmul_w_tile(const ops_weight *w);
cudaError_t cu_grouped_matmul_w(float *y, const float *x, const ops_weight *w, const int *cnt, int G, float *tile,
                                size_t tile_floats, cudaStream_t s);
cudaError_t cu_grouped_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, const int *cnt, int G,
                                            float *tile, size_t tile_floats, cudaStream_t s);

/* counts: DEVICE [E] (ops_moe_bias_update's are host memory). */
cudaError_t cu_moe_bias_update(float *bias, const int64_t *counts, int E, float gamma, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
