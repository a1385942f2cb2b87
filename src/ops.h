/* ops.h — the backend boundary (design §2).
 *
 * Model code (src/model/, optim.c, lora.c, train.c) never loops over tensor
 * elements: all math goes through these functions. ops_cpu*.c implement them
 * on host memory (the numeric reference); cuda/ implements them on device
 * memory. Activations are row-major [rows, cols]; a linear weight is
 * [out, in] and y = x·Wᵀ. Backward functions ACCUMULATE into weight
 * gradients (+=) and into input gradients (+=) unless stated otherwise, so
 * residual branches and gradient accumulation need no extra adds.
 *
 * Component-specific primitives live in ops_attn.h (norm, rope, attention,
 * embedding, cross-entropy) and ops_moe.h (swiglu, router, gather/scatter).
 */
#ifndef DSV3_OPS_H
#define DSV3_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* the CUDA backend (C++) implements these */
#endif

/* ---- Memory (design §2). Every float * an op takes is DEVICE memory; the
 * CPU backend's device memory is host memory, a CUDA backend's is not, so
 * model code never dereferences a tensor and never calls malloc/free: it
 * allocates here. Integer arrays say in ops_attn.h / ops_moe.h whether they
 * live on the host (the host reads or writes them: routing counts, MPI
 * counts) or on the device (index lists ops read: routing, positions).
 * Scalars returned by value (ops_sumsq, losses) come back to the host. */

/* Zeroed device memory of `bytes` bytes (0 allowed); NULL when out of memory. */
void *ops_alloc(size_t bytes);
void ops_free(void *p); /* NULL is a no-op */
void ops_memset0(void *p, size_t bytes);                         /* device bytes = 0 */
void ops_to_host(void *dst, const void *src, size_t bytes);      /* device → host */
void ops_to_device(void *dst, const void *src, size_t bytes);    /* host → device */
void ops_copy_bytes(void *dst, const void *src, size_t bytes);   /* device → device, not overlapping */
/* Waits until the backend's queued work is done (CPU: nothing to wait for):
 * before host code such as MPI reads or writes device memory in place. */
void ops_sync(void);
/* Zeroed host memory (arrays the host reads/writes: routing counts, staging); NULL when out of memory. */
void *ops_host_alloc(size_t bytes);
void ops_host_free(void *p);

/* Memory accounting: every ops_alloc/ops_host_alloc is counted, charged to
 * the category current at allocation time (ops_mem_category), so a run can
 * compare what it really holds with the plan's estimate. The counters are
 * per process (one rank); device and host memory are counted apart. */
typedef enum {
    OPS_MEM_OTHER = 0, /* metadata, tables, staging: not in the plan */
    OPS_MEM_PARAMS,    /* weights, their shards and gather workspaces */
    OPS_MEM_GRADS,     /* gradients, their shards and reduce workspaces */
    OPS_MEM_OPTIM,     /* AdamW moments */
    OPS_MEM_ACTS,      /* activation caches, scratch, routing rows and counts */
    OPS_MEM_NCAT
} ops_mem_cat;
int ops_mem_category(int cat); /* sets the current category; returns the previous one */
typedef struct {
    double live[OPS_MEM_NCAT], peak[OPS_MEM_NCAT]; /* bytes now / high-water mark, device + host */
    double live_total, peak_total;                 /* all categories together */
    double device_peak, host_peak;                 /* high-water marks by memory kind */
} ops_mem_stats;
void ops_mem_get(ops_mem_stats *s);
void ops_mem_reset_peaks(void); /* peaks := live (e.g. after loading, before the first step) */
/* Counts `bytes` of host memory allocated elsewhere (the node-shared frozen
 * store, comm.h) to category cat: sign +1 when allocated, -1 when freed. */
void ops_mem_count(int cat, size_t bytes, int sign);
/* For the backends' allocators (src/ops_cpu.c, cuda/ops.cu; the counters are
 * src/ops_host.c's): the category a new allocation is charged to, and the
 * charge (host 0: device memory, 1: host memory; sign +1 allocated, -1 freed). */
int ops_mem_current_category(void);
void ops_mem_charge(int host, int cat, size_t bytes, int sign);

/* Scratch arena (llm.c's one-allocation idea): one device block, carved by
 * bump allocation with stack discipline. Components take their temporaries
 * from it and give them back before they return, so a forward/backward
 * allocates nothing; each component states its peak (*_scratch_floats) and
 * the model sizes the arena as the max over its components (model.c).
 * Memory from the arena is NOT zeroed. Every take is rounded up to
 * OPS_ARENA_ALIGN floats (64 bytes), and so are the size functions
 * (ops_arena_round). A take that does not fit ends the job (error_one): an
 * undersized arena is an internal error, never a silent overflow. */
#define OPS_ARENA_ALIGN 16
typedef struct {
    float *base;
    size_t cap, used, peak; /* floats */
    int owned;              /* base came from ops_arena_create (ops_arena_destroy frees it) */
} ops_arena;
static inline size_t ops_arena_round(size_t floats) {
    return (floats + OPS_ARENA_ALIGN - 1) / OPS_ARENA_ALIGN * OPS_ARENA_ALIGN;
}
int ops_arena_create(ops_arena *a, size_t floats); /* 0, or -1 when out of memory (a zeroed) */
/* An arena over `floats` floats of device memory the caller owns (a region of
 * a larger allocation; floats a multiple of OPS_ARENA_ALIGN, mem aligned to
 * 16 bytes at least): allocates nothing, and ops_arena_destroy frees nothing. */
void ops_arena_init_at(ops_arena *a, float *mem, size_t floats);
void ops_arena_destroy(ops_arena *a);
float *ops_arena_take(ops_arena *a, size_t floats);
static inline size_t ops_arena_mark(const ops_arena *a) { return a->used; }
void ops_arena_release(ops_arena *a, size_t mark); /* give back everything taken since mark */

/* ---- Weight storage. Frozen weights may be stored in a narrower type; the
 * model holds an ops_weight and never looks inside. Trainable weights are F32.
 *   OPS_F32       data float [out, in]
 *   OPS_BF16      data uint16_t [out, in], the upper 16 bits of an fp32
 *   OPS_FP8_E4M3  data uint8_t [out, in], e4m3 (1 sign, 4 exponent bits with
 *                 bias 7, 3 mantissa bits, subnormals, 0x7F/0xFF NaN, no inf;
 *                 max 448), value = e4m3 · scale[r/128, c/128]: one F32 scale
 *                 per 128x128 block, [ceil(out/128), ceil(in/128)], edge
 *                 blocks included (HF's weight_scale_inv). */
typedef enum { OPS_F32 = 0, OPS_BF16, OPS_FP8_E4M3 } ops_dtype;
#define OPS_FP8_BLOCK 128
/* GEMM precision of the narrow weights (deck train.gemm_dtype; F32 weights
 * ignore it, always fp32). Process-wide (ops_gemm_set; the model sets it from
 * the deck when it is created): a field of ops_weight would break the
 * positional initializers of its users (-Wmissing-field-initializers).
 * Both backends multiply the same operands:
 *   OPS_GEMM_F32   the weight dequantised to fp32 tile by tile, x as given, fp32 GEMM
 *   OPS_GEMM_BF16  x rounded to bf16 (RNE), the weight dequantised and rounded
 *                  to bf16 (exact for BF16 weights), fp32 accumulation
 *   OPS_GEMM_FP8   W8A8 (FP8 weights; a BF16 weight runs BF16): the weight as
 *                  stored with its 128x128 scales, x quantised per row and 128
 *                  columns to e4m3 (ops_act_quant_fp8), fp32 accumulation.
 *                  The backward dx (dy·W) runs BF16: the weight is stored for
 *                  y = x·Wᵀ and FP8 tensor cores contract only along the stored
 *                  rows ("TN"); an FP8 dgrad would need a transposed copy. */
typedef enum { OPS_GEMM_F32 = 0, OPS_GEMM_BF16, OPS_GEMM_FP8 } ops_gemm;
typedef struct {
    ops_dtype dtype;
    void *data;         /* device */
    const float *scale; /* device; FP8 only: [ceil(out/128), ceil(in/128)] */
    int out, in;
} ops_weight;
void ops_gemm_set(int gemm); /* OPS_GEMM_*; the default is OPS_GEMM_F32 */
int ops_gemm_get(void);
/* The precision the forward GEMM of w runs at (OPS_GEMM_*): F32 storage is
 * fp32; FP8 asked of a BF16 weight is BF16. */
int ops_gemm_of(const ops_weight *w);
float ops_e4m3_to_f32(uint8_t v);   /* exact (host helper, the reference decode) */
float ops_bf16_to_f32(uint16_t v);  /* exact */
uint16_t ops_f32_to_bf16(float f);  /* round to nearest even; NaN stays NaN */
void ops_f32_to_bf16_n(const float *x, uint16_t *y, size_t n); /* the same, n values (vectorizable) */
/* fp32 → e4m3 code, round to nearest even, saturating to ±448 (0x7E/0xFE); NaN → 0x7F. */
uint8_t ops_f32_to_e4m3(float f);
/* Stores rows [r0, r0+n) of w from fp32 src [n, in] (w->data, and w->scale
 * for FP8, are written). BF16: round to nearest even. FP8 (DeepSeek's
 * recipe, per 128x128 block): scale = amax/448 (1 for an all-zero block),
 * code = e4m3(x / scale) rounded to nearest even with saturation; r0 must be a
 * multiple of 128 and n a multiple of 128 or reach the last row (whole
 * blocks). F32: a copy. Host memory in, device memory out. */
void ops_weight_store_rows(const ops_weight *w, int r0, int n, const float *src);
/* Floats of the dequantisation tile ops_matmul_w takes from its scratch arena
 * for an [out, in] weight stored narrow (bf16/fp8): the whole weight when it
 * fits in 2^24 floats (64 MiB), else a multiple of 128 rows within that; F32
 * weights take none. A pure function of the shape, so the plan sizes the arena
 * with it (cost.c) and the allocation equals the plan. */
size_t ops_matmul_w_tile_floats(ops_dtype dtype, int out, int in);
/* Rows of x (dy) rounded or quantised at a time by the bf16/fp8 GEMMs: 2^22
 * floats of the wider side, at most 4096 rows, at least 1. */
int ops_gemm_act_rows(int out, int in);
/* Floats ops_matmul_w and ops_matmul_w_backward_dx take from scratch for a
 * weight of this storage and gemm mode (the plan's rule, cost.c): gemm F32 is
 * ops_matmul_w_tile_floats; bf16/fp8 add the activation chunk of
 * a = ops_gemm_act_rows rows by m = max(in, out): fp32 values [a, m], e4m3
 * codes [a, m] and scales [ceil(m/128), a], each region ops_arena_round-ed.
 * The CPU takes all of it; the CUDA backend takes a part. */
size_t ops_matmul_w_scratch_floats(ops_dtype dtype, int gemm, int out, int in);
/* The activation quantisation of OPS_GEMM_FP8 (DeepSeek-V3's 1x128 recipe),
 * host memory, the reference the CUDA kernel is tested against bit for bit:
 * per row t and 128-column block b of x [T, in]: scale[b·T + t] = amax/448
 * (1 for an all-zero block) — cuBLASLt's VEC128_32F layout, [ceil(in/128), T]
 * — and q[t, c] = ops_f32_to_e4m3(x[t, c] / scale) (RNE, saturating). */
void ops_act_quant_fp8(uint8_t *q, float *scale, const float *x, int T, int in);
/* y[T,out] = x[T,in]·Wᵀ (beta 0: overwrite, 1: accumulate). F32 is exactly
 * ops_matmul. A narrow weight is dequantised tile by tile into a tile taken
 * from scratch (given back before return), at the precision ops_gemm_of(w)
 * (ops_gemm above; scratch: ops_matmul_w_scratch_floats). */
void ops_matmul_w(float *y, const float *x, const ops_weight *w, int T, float beta, ops_arena *scratch);
/* dx[T,in] += dy[T,out]·W. Frozen storage: no dW. F32 is exactly ops_matmul_backward(dx, NULL, ...). */
void ops_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, int T, ops_arena *scratch);

/* y[T,out] = x[T,in]·W[out,in]ᵀ  (beta=0: overwrite, beta=1: accumulate) */
void ops_matmul(float *y, const float *x, const float *w, int T, int in, int out, float beta);
/* dx[T,in] += dy[T,out]·W ; dW[out,in] += dyᵀ·x  (either output may be NULL; W only read for dx, x for dW) */
void ops_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int T, int in,
                         int out);
/* Strided copy of a column block: dst[r, 0:n] = src[r, off:off+n] (src row stride ss, dst row stride ds). */
void ops_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows);
/* dst[r, off:off+n] += src[r, 0:n] */
void ops_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows);
void ops_zero(float *x, size_t n);
void ops_copy(float *dst, const float *src, size_t n);
/* bf16 storage of an activation (train.dtype = "bf16"): x[i] is rounded to bf16 in place (round to nearest
 * even; NaN stays NaN: ops_f32_to_bf16) and its bits stored in y[i], so the fp32 stream and the stored copy
 * hold the same value; ops_widen_bf16 gives it back exactly: x[i] = y[i] as fp32. Device memory. */
void ops_round_bf16(float *x, uint16_t *y, size_t n);
void ops_widen_bf16(float *x, const uint16_t *y, size_t n);
/* y[i] = bf16 bits of x[i] (round to nearest even, NaN stays NaN), x unchanged: the bf16 compute copy of an
 * fp32 master weight (model.c). Device memory. */
void ops_to_bf16(uint16_t *y, const float *x, size_t n);
void ops_add(float *y, const float *x, size_t n);            /* y += x */
void ops_axpy(float *y, float a, const float *x, size_t n);  /* y += a·x */
void ops_scale(float *x, float a, size_t n);
double ops_sumsq(const float *x, size_t n);                  /* returned to the host */

/* AdamW on a contiguous slice; step t >= 1; decoupled decay wd (0 for no decay). */
void ops_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
               float eps, float wd, int t, float grad_scale);

/* Counter-based fills (design §1.5): element i gets a value that is a pure
 * function of (seed, key, first + i), so any sharding draws the same numbers. */
void ops_fill_normal(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float std);
void ops_fill_uniform(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float bound);
void ops_fill(float *x, size_t n, float value);
/* Inverted dropout with a counter-based mask (PEFT's nn.Dropout in training):
 * y[i] = x[i]/(1-p) where u(seed, key, first+i) >= p, else 0. The same
 * (seed, key, first) gives the same mask; y may alias x. */
void ops_dropout(float *y, const float *x, size_t n, float p, uint64_t seed, uint64_t key, uint64_t first);

#include "ops_attn.h"
#include "ops_moe.h"

#ifdef __cplusplus
}
#endif

#endif
