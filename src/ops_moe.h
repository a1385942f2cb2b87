/* ops_moe.h — feed-forward-side primitives: SwiGLU, sigmoid router scores,
 * group-limited top-k routing (dsv3-spec §5), the sequence-wise balance loss,
 * grouped (per-expert) matmuls, and row gather/scatter for dispatch/combine.
 * CPU reference in ops_cpu_moe.c.
 *
 * Conventions as in ops.h: row-major activations, backward functions
 * ACCUMULATE (+=) into input and weight gradients unless stated otherwise.
 * Every op is deterministic: each output element is computed by one thread in
 * a fixed order (no float atomics), so results are bitwise reproducible for
 * any OpenMP thread count.
 *
 * Where integer arrays live (ops.h memory section): index lists the ops read
 * or write per row — idx, topk, pos, src, perm, gather/scatter idx — are
 * DEVICE memory. Counts the host needs to size messages and loops — the
 * per-rank and per-expert counts of ops_moe_dispatch_index (sent with
 * MPI_Alltoall), lcnt of ops_moe_receive_index, cnt of the grouped matmuls
 * (one GEMM per expert), the int64 counts of the bias update (all-reduced on
 * the host) — are HOST memory; a device backend copies them back itself.
 */
#ifndef DSV3_OPS_MOE_H
#define DSV3_OPS_MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* the CUDA backend (C++) implements these */
#endif

/* ---- SwiGLU: h[t,i] = silu(g[t,i])·u[t,i], silu(z) = z·σ(z).
 * g and u have row strides gs and us (a fused gate/up output [T,2I] is
 * g = gu, u = gu + I, gs = us = 2I, n = I); h is contiguous [T,n]. */
void ops_swiglu_forward(float *h /*[T,n]*/, const float *g, int gs, const float *u, int us, int T, int n);
/* dg += dh·u·silu'(g), du += dh·silu(g); dg/du have row strides dgs/dus. */
void ops_swiglu_backward(float *dg, int dgs, float *du, int dus, const float *dh /*[T,n]*/, const float *g, int gs,
                         const float *u, int us, int T, int n);

/* ---- Router scores: y = σ(x) elementwise (y may equal x). */
void ops_sigmoid(float *y, const float *x, size_t n);

/* ---- Group-limited top-k routing (dsv3-spec §5 steps 2–5).
 * s [T,E] are the sigmoid scores. Selection uses sc = s + bias (bias [E] or
 * NULL): with n_group > 1 the E experts form n_group groups of E/n_group, a
 * group's score is the sum of its 2 largest sc (1 if the group has 1 expert),
 * the topk_group best groups are kept and all other experts are excluded
 * (the −inf mask of spec §10.1), then the K best remaining sc are chosen.
 * idx[t,0..K) lists them by descending sc (ties: lower index first).
 * Weights (w may be NULL) use the unbiased scores:
 *   w[t,k] = scale·s[t,idx]/Σ_k' s[t,idx_k'] if norm, else scale·s[t,idx].
 * Requires K <= topk_group·E/n_group and n_group | E. */
void ops_moe_route(int *idx /*[T,K] device*/, float *w /*[T,K]*/, const float *s /*[T,E]*/, const float *bias /*[E]*/,
                   int T, int E, int K, int n_group, int topk_group, int norm, float scale);
/* Backward of the weights into the router logits (s = σ(logits)); the
 * selection itself is not differentiable: dlogits[t,e] += ∂L/∂logit. */
void ops_moe_route_backward(float *dlogits /*[T,E]*/, const float *dw /*[T,K]*/, const float *s /*[T,E]*/,
                            const int *idx /*[T,K] device*/, int T, int E, int K, int norm, float scale);

/* ---- Sequence-wise balance loss (spec §5, TR eqs. 17–20), without α.
 * B sequences of T rows. topk [B*T,K] is the plain top-K over the UNBIASED
 * scores (ops_moe_route with bias NULL, n_group 1). Per sequence
 *   f_i = E/(K·T)·Σ_t 1[i ∈ topk_t],  P_i = (1/T)·Σ_t s_{t,i}/Σ_j s_{t,j};
 * returns Σ_b Σ_i f_i·P_i (to the host). */
double ops_moe_balance(const float *s /*[B*T,E]*/, const int *topk /*[B*T,K] device*/, int B, int T, int E, int K);
/* dlogits += coef·∂(Σ_b Σ_i f_i P_i)/∂logits with f treated as a constant. */
void ops_moe_balance_backward(float *dlogits /*[B*T,E]*/, const float *s, const int *topk, int B, int T, int E,
                              int K, float coef);

/* ---- Dispatch bookkeeping: one row per (token, destination rank).
 * Routed experts are owned in contiguous ranges: rank r of P holds experts
 * [efirst[r], efirst[r+1]) (efirst [P+1] HOST, efirst[0] = 0, efirst[P] = E).
 * A token sends ONE row to each rank owning at least one of its K experts;
 * the rank expands it to its experts ("pairs" = (token, k)).
 *   Send rows: destination-major, token order within a destination; stok[j]
 *   is the token of send row j; token t's rows are trows[toff[t]..toff[t+1])
 *   (increasing destination). Send pairs: destination-major, then token, then
 *   k; pair q is (t,k) = ptk[q] / K, % K, and its record smeta[3q..3q+2] =
 *   (row index within the destination's rows, local expert index on the
 *   destination, routing weight w[t,k] as float bits).
 *   scnt[r], spc[r]: rows and pairs for rank r; ecnt[e]: pairs per expert.
 * Returns the number of send rows S (<= N·min(K, P)). */
int ops_moe_dispatch_index(int *stok /*[S] device*/, int *toff /*[N+1] device*/, int *trows /*[S] device*/,
                           int *ptk /*[N*K] device*/, int *smeta /*[N*K,3] device*/, int *scnt /*[P] HOST*/,
                           int *spc /*[P] HOST*/, int *ecnt /*[E] HOST*/, const int *idx /*[N,K] device*/,
                           const float *w /*[N,K]*/, const int *efirst /*[P+1] HOST*/, int N, int K, int P);
/* Receiver side: the Pr pair records rmeta [Pr,3] as received (source-major,
 * each source's in its send order), with source r's rows starting at received
 * row roff[r] and its pairs at received pair rpo[r] (P sources). Sorts the
 * pairs by local expert (stable: source, row, k order) into the expert-major
 * layout: expert-major pair j reads received row perm[j]; pair p is
 * expert-major pinv[p]; received row i's pairs are [poff[i], poff[i+1]) (R
 * rows); pw[p] its weight; lcnt[g] pairs per local expert (G). */
void ops_moe_receive_index(int *perm /*[Pr] device*/, int *pinv /*[Pr] device*/, int *poff /*[R+1] device*/,
                           float *pw /*[Pr]*/, int *lcnt /*[G] HOST*/, const int *rmeta /*[Pr,3] device*/,
                           const int *roff /*[P] HOST*/, const int *rpo /*[P] HOST*/, int P, int Pr, int R, int G);

/* ---- Rows by index lists (C = row width); idx is device memory. */
void ops_gather_rows(float *dst /*[n,C]*/, const float *src, const int *idx /*[n]*/, int n, int C); /* dst[i]=src[idx[i]] */
void ops_scatter_rows(float *dst, const float *src /*[n,C]*/, const int *idx /*[n]*/, int n, int C); /* dst[idx[i]]=src[i] */
/* Segmented combine: out[i] = beta·out[i] + Σ_{p in [off[i], off[i+1])} w[p]·y[pos[p]]
 * (p in order; w NULL = 1; beta 0 overwrites). off, pos device. */
void ops_moe_combine_seg(float *out /*[n,C]*/, const float *y, const int *off /*[n+1]*/, const int *pos,
                         const float *w, int n, int C, float beta);
/* Its backward (w not NULL): for each p of row i, dw[p] = dout[i]·y[pos[p]]
 * (OVERWRITES; dw may be NULL), then dy[pos[p]] = w[p]·dout[i] (OVERWRITES
 * those rows; dy may equal y: each row is read before it is written). */
void ops_moe_combine_seg_backward(float *dy, float *dw, const float *dout /*[n,C]*/, const float *y, const int *off,
                                  const int *pos, const float *w, int n, int C);

/* ---- The dispatch/combine wire (parallel.dispatch_dtype): n rows of C fp32
 * values converted IN PLACE to the wire's packed rows (row i at byte
 * i·ops_wire_row_bytes) and back. OPS_WIRE_F32: untouched; OPS_WIRE_BF16:
 * round to nearest even; OPS_WIRE_FP8: e4m3 codes with one fp32 scale per
 * 1x128 block (amax/448, 1 for an all-zero block) after the row's C codes. */
enum { OPS_WIRE_F32 = 0, OPS_WIRE_BF16 = 1, OPS_WIRE_FP8 = 2 };
size_t ops_wire_row_bytes(int C, int wire); /* host arithmetic: src/ops_host.c, both backends */
void ops_wire_pack(float *rows /*[n,C] in, packed out*/, int n, int C, int wire);
void ops_wire_unpack(float *rows /*packed in, [n,C] out*/, int n, int C, int wire);

/* ---- Grouped matmul over experts: rows of x come in G consecutive blocks of
 * cnt[g] rows; block g is multiplied by w[g] ([out,in]): y = x·w[g]ᵀ. cnt is HOST memory. */
void ops_grouped_matmul(float *y /*[R,out]*/, const float *x /*[R,in]*/, const float *w /*[G,out,in]*/,
                        const int *cnt /*[G]*/, int G, int in, int out);
/* dx += dy·w[g] ; dw[g] += dyᵀ·x (dx or dw may be NULL; w only read for dx, x only for dw). */
void ops_grouped_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                                 const int *cnt, int G, int in, int out);

/* ---- The same over stacked expert weights in their storage (ops.h ops_weight):
 * w->out, w->in are one expert's dims; expert g's data starts g·out·in
 * elements after w->data and (FP8) its scales g·ceil(out/128)·ceil(in/128)
 * floats after w->scale. Each expert's weight is dequantised tile by tile
 * into a tile of scratch (ops_matmul_w), never the whole stack; experts with no
 * rows are skipped. F32 is exactly ops_grouped_matmul(_backward with dw NULL).
 * Frozen storage: no weight gradient. */
void ops_grouped_matmul_w(float *y /*[R,out]*/, const float *x /*[R,in]*/, const ops_weight *w, const int *cnt, int G,
                          ops_arena *scratch);
/* dx[R,in] += dy·w[g] per block. */
void ops_grouped_matmul_w_backward_dx(float *dx, const float *dy /*[R,out]*/, const ops_weight *w, const int *cnt,
                                      int G, ops_arena *scratch);
/* Expert g's [out, in] view of a stacked weight (host pointer arithmetic, one
 * definition for both backends: src/ops_host.c). */
ops_weight ops_weight_expert(const ops_weight *w, int g);

/* ---- Auxiliary-loss-free bias update (spec §5): b_i += γ·sign(mean_j c_j − c_i),
 * counts summed over the whole batch (all ranks); sign(0) = 0. */
void ops_moe_bias_update(float *bias /*[E]*/, const int64_t *counts /*[E] HOST*/, int E, float gamma);

#ifdef __cplusplus
}
#endif

#endif
