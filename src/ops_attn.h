/* ops_attn.h — attention-side primitives: RMSNorm, RoPE, causal attention,
 * embedding, cross-entropy (CPU reference in ops_cpu_attn.c).
 *
 * Conventions as in ops.h: row-major activations, backward functions
 * ACCUMULATE (+=) into input and weight gradients unless stated otherwise.
 * A batch is B sequences of T tokens stored as B*T consecutive rows; the
 * position of row r is p = r % T (positions restart in every sequence).
 *
 * Where integer arrays live (ops.h memory section): token ids and targets
 * are DEVICE memory (the CPU backend's device memory is the host's; a device
 * backend's model_step copies the host batch over with ops_to_device). The
 * int64 counts written through pointers (*count) and the double sums
 * returned are HOST values.
 */
#ifndef DSV3_OPS_ATTN_H
#define DSV3_OPS_ATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* the CUDA backend (C++) implements these */
#endif

/* ---- RMSNorm (dsv3-spec §2): y = w ⊙ (x · rstd), rstd = 1/sqrt(mean(x²) + eps).
 * HF order: normalise in fp32, then multiply by w. Rows are contiguous [T, C]. */
void ops_rmsnorm_forward(float *y /*[T,C]*/, float *rstd /*[T]*/, const float *x /*[T,C]*/, const float *w /*[C]*/,
                         int T, int C, float eps);
/* dx += ∂L/∂x ; dw += ∂L/∂w (dw may be NULL: frozen). Deterministic (no reductions across threads). */
void ops_rmsnorm_backward(float *dx /*[T,C]*/, float *dw /*[C]*/, const float *dy /*[T,C]*/, const float *x,
                          const float *w, const float *rstd /*[T]*/, int T, int C);

/* ---- RoPE, interleaved pairs (dsv3-spec §4), in place.
 * Row r (of B*T rows, row stride `row_stride` floats) holds `nh` heads at
 * r*row_stride + h*head_stride; the rotary block is [off, off+dr) inside each
 * head. Pair i = (x[2i], x[2i+1]) rotates by θ = p·f_i, with cos/sin read
 * from tables [T_max, dr/2] at row p = r % T (T <= T_max). */
void ops_rope_forward(float *x, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                      const float *sin_t, int B, int T);
/* Backward of the rotation (rotate the gradient by −θ), in place on dx. */
void ops_rope_backward(float *dx, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                       const float *sin_t, int B, int T);

/* ---- Causal multi-head attention (dsv3-spec §3.5).
 * q, k: [B*T, nh, dqk]; v: [B*T, nh, dv]; out: [B*T, nh, dv] (heads contiguous per token).
 * S = scale·q·kᵀ, masked s > t, softmax over s in fp32, out = P·v.
 * The forward keeps only the row log-sum-exp lse [B, nh, T] (natural log of
 * Σ exp(S)); the backward recomputes P from q, k and lse chunk by chunk of
 * query rows, so no [T, T] tensor is stored. */
static inline size_t ops_attention_cache_floats(int B, int T, int nh) { return (size_t)B * nh * T; }
/* Scratch: the ops work in chunks of query rows [t0, t1),
 * every (sequence, head) at once, against the keys [0, t1) (causal): a score
 * region [B·nh, rows, t1] per chunk, one in the forward (S, then P in place),
 * two in the backward (P; dP, then dS in place), taken from `scratch` and
 * given back before the op returns. Chunk rule: rows = min(128, ⌊2^26 /
 * (B·nh·T)⌋) clamped to [1, T]: a score region stays at most 2^26 floats
 * (256 MiB) unless one row per (b, h) is already more (B·nh·T > 2^26), and
 * the GEMMs' work past the causal diagonal (each chunk multiplies its whole
 * [rows, t1] block) stays at T·rows/2 on top of T²/2 (at most 128/T more).
 * DeepSeek-V3 (B 1, nh 128, T 4096): 128 rows, 32 chunks, 2^26 floats per region.
 * The CPU backend takes the same regions (each (b, h) a [rows, T] slot, used
 * in blocks of up to 64 rows), so the plan (mla_scratch_floats) is one for both. */
#define OPS_ATTN_SCORE_FLOATS ((size_t)1 << 26)
#define OPS_ATTN_CHUNK_ROWS 128
static inline int ops_attention_chunk_rows(int B, int T, int nh) {
    const size_t row = (size_t)(B > 0 ? B : 1) * (nh > 0 ? nh : 1) * (T > 0 ? T : 1);
    size_t r = OPS_ATTN_SCORE_FLOATS / row;
    if (r > OPS_ATTN_CHUNK_ROWS) r = OPS_ATTN_CHUNK_ROWS;
    if (r > (size_t)(T > 0 ? T : 1)) r = (size_t)(T > 0 ? T : 1);
    return r < 1 ? 1 : (int)r;
}
/* Precision (the process-wide GEMM precision, ops.h ops_gemm_get()): OPS_GEMM_F32
 * multiplies fp32 operands in fp32. OPS_GEMM_BF16 and OPS_GEMM_FP8 run every
 * attention GEMM on bf16 operands (round to nearest even, ops_f32_to_bf16)
 * with fp32 accumulation, FlashAttention-2's numerics (fp8 attention is not
 * done): S = scale·bf16(q)·bf16(k)ᵀ, softmax and lse in fp32, out =
 * bf16(P)·bf16(v); the backward recomputes S and P = exp(S − lse) in fp32,
 * dP = bf16(dout)·bf16(v)ᵀ, D = Σ P·dP and dS = P·(dP − D)·scale in fp32 (the
 * fp32 P: D is the fp32 row's), then dq += bf16(dS)·bf16(k), dk +=
 * bf16(dS)ᵀ·bf16(q), dv += bf16(P)ᵀ·bf16(dout).
 * The bf16 scratch on top of the score regions, the larger of the backends' layouts:
 *   CUDA: bf16 copies of the whole k and v, and of one chunk of q rows (and
 *         of dout in the backward); P and dS are rewritten as bf16 in place
 *         in their regions (no extra);
 *   CPU:  every (b, h) rounds its blocks to fp32 copies: q (and dout) [blk, d],
 *         k and v [blk, d] per block of blk = min(rows, 64) keys.
 * DeepSeek-V3 (B 1, T 4096, nh 128, dqk 192, dv 128): CUDA +85,458,944 floats
 * forward (326 MiB), +86,507,520 backward (330 MiB); CPU 4,194,304 / 5,242,880. */
#define OPS_ATTN_CPU_BLOCK 64
static inline size_t ops_attention_bf16_floats(int B, int T, int nh, int dqk, int dv, int backward) {
    const size_t bh = (size_t)B * nh, rows = (size_t)ops_attention_chunk_rows(B, T, nh);
    const size_t blk = rows < OPS_ATTN_CPU_BLOCK ? rows : OPS_ATTN_CPU_BLOCK;
    const size_t cuda = ops_arena_round((bh * T * dqk + 1) / 2) + ops_arena_round((bh * T * dv + 1) / 2) +
                        ops_arena_round((bh * rows * dqk + 1) / 2) +
                        (backward ? ops_arena_round((bh * rows * dv + 1) / 2) : 0);
    const size_t cpu = ops_arena_round(bh * blk * (backward ? dqk + dv : dqk)) + ops_arena_round(bh * blk * (dqk + dv));
    return cuda > cpu ? cuda : cpu;
}
/* floats the forward (backward 0) or the backward (backward 1) takes from its
 * arena at GEMM precision `gemm` (OPS_GEMM_*: a pure function, so the plan
 * calls it with the deck's train.gemm_dtype) */
static inline size_t ops_attention_scratch_floats(int B, int T, int nh, int dqk, int dv, int backward, int gemm) {
    if (B <= 0 || T <= 0 || nh <= 0 || dqk <= 0 || dv <= 0) return 0;
    const size_t region = ops_arena_round((size_t)B * nh * ops_attention_chunk_rows(B, T, nh) * T);
    return (backward ? 2 : 1) * region +
           (gemm != OPS_GEMM_F32 ? ops_attention_bf16_floats(B, T, nh, dqk, dv, backward) : 0);
}
void ops_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                           int nh, int dqk, int dv, float scale, ops_arena *scratch);
/* dq, dk, dv += gradients given dout. */
void ops_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *lse, int B, int T, int nh, int dqk, int dvd, float scale,
                            ops_arena *scratch);

/* ---- Attention over the MLA latent cache (absorbed MLA for generation,
 * dsv3-spec §3; model/mla_decode.c). One sequence: n new query tokens at
 * positions p0..p0+n-1, every head's absorbed query q_h = [q_nope_h·W_UK_h ;
 * q_pe_h] of width W = kvl + dr against the cached rows [c | k_pe] of the
 * positions 0..p0+n-1 (shared by all heads):
 *   q: [n, nh, W]; cache: [p0+n, W]; out: [n, nh, kvl] (overwritten)
 *   out[i,h] = softmax_j≤p0+i(scale·q[i,h]·cache[j]) · cache[j, 0:kvl]
 * Softmax in fp32 as ops_attention_forward. Blocks of query tokens, each one
 * [bq·nh, p0+i1] score matrix (heads share the keys: one GEMM per block). */
void ops_latent_attention(float *out, const float *q, const float *cache, int n, int nh, int W, int kvl, int p0,
                          float scale);
/* ---- Embedding: y[n,:] = E[ids[n], :]. Returns 0, or -1 after printing the
 * first out-of-range id (that row is zeroed). */
int ops_embedding_forward(float *y /*[N,H]*/, const float *E /*[V,H]*/, const int32_t *ids /*[N] device*/, int N, int V,
                          int H);
/* The same from a weight in its storage (ops.h ops_weight [V, H]): F32 is
 * ops_embedding_forward; bf16 rows are widened exactly (never the whole table). */
int ops_embedding_forward_w(float *y /*[N,H]*/, const ops_weight *E, const int32_t *ids /*[N] device*/, int N);
/* dE[ids[n], :] += dy[n, :]. Deterministic: threads split the H columns and every
 * thread adds the tokens in order n = 0..N-1. Out-of-range ids are skipped. */
void ops_embedding_backward(float *dE /*[V,H]*/, const float *dy /*[N,H]*/, const int32_t *ids, int N, int V,
                            int H);

/* ---- Cross-entropy over logits [N, V], targets [N] (OPS_IGNORE_INDEX = skip).
 * Forward returns Σ over counted rows of −log softmax(logits)[target] (double,
 * summed in row order: deterministic); row_loss[N] (may be NULL) gets each
 * row's value (0 for ignored rows); *count (may be NULL) the counted rows.
 * A target outside [0, V) other than the ignore index is an error: message on
 * stderr and the return value is NAN. */
#define OPS_IGNORE_INDEX (-100)
double ops_cross_entropy_forward(float *row_loss, int64_t *count /*host*/, const float *logits,
                                 const int32_t *targets /*[N] device*/, int N, int V);
/* dlogits = (softmax(logits) − onehot(target))·scale for counted rows, 0 for
 * ignored rows. WRITES (does not accumulate); dlogits may alias logits. */
void ops_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                float scale);

/* Forward and backward in one pass (one exp per logit): returns what
 * ops_cross_entropy_forward returns and writes what ops_cross_entropy_backward
 * writes; dlogits may alias logits. For training steps. */
double ops_cross_entropy_fused(float *dlogits, int64_t *count, const float *logits, const int32_t *targets, int N,
                               int V, float scale);

/* ---- Row-wise argmax of logits [N, V] (validation accuracy, greedy drafts):
 * out[n] = the index of row n's largest value, to the HOST (N ints instead of
 * the N·V logits). Ties: the lowest index. NaN: larger than every number (the
 * first NaN of a row is its argmax, as torch.argmax), so a broken row shows
 * rather than hides. V >= 1. */
void ops_argmax_rows(int32_t *out /*[N] HOST*/, const float *x /*[N,V]*/, int N, int V);

#ifdef __cplusplus
}
#endif

#endif
