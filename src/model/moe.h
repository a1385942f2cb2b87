/* moe.h — DeepSeek-V3 MoE layer (dsv3-spec §5) with expert parallelism.
 *
 *   logits = x·gate.weightᵀ (fp32), s = σ(logits)          moe_route
 *   group-limited top-k on s + bias → idx, weights w
 *   dispatch one row per (token, destination rank)          moe_experts_forward
 *   (MPI_Alltoall of counts, MPI_Alltoallv of rows and of the (row, expert,
 *   weight) pair records), SwiGLU per expert; the owner sums w·y over its
 *   experts of a token and returns one row (reverse Alltoallv); out = Σ rows
 *   out += shared_experts(x)                               moe_forward
 *
 * Expert parallel (design §3): tokens stay on their rank; this rank owns the
 * routed experts [e_first, e_first + e_local): the first E % EP ranks own
 * E/EP + 1, the others E/EP (uneven ownership when EP does not divide E;
 * moe_expert_range). Dropless. Rows travel in the wire dtype (moe_layer.wire:
 * fp32, bf16, or fp8 with 1x128 scales for the forward dispatch and bf16 for
 * everything else), rounded on the way and widened on arrival. Every rank takes part in every collective, even
 * with no tokens or no rows for its experts. Routing (router + selection) and
 * expert computation are separate functions so a device backend can replace
 * each one.
 *
 * Training extras: per-expert token counts (caller sums over ranks, then
 * moe_bias_update), the sequence-wise balance loss (spec §5 eqs. 17–20) and
 * the load imbalance.
 */
#ifndef DSV3_MOE_H
#define DSV3_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "../comm.h"
#include "../ops.h"
#include "config.h"
#include "linear.h"
#include "mlp.h"

typedef struct {
    float *gate_w, *gate_g;      /* router [E,H]; gate_g NULL when frozen */
    float *bias;                 /* e_score_correction_bias [E], selection only, no gradient */
    linear sh_gate, sh_up, sh_down; /* shared experts, width n_shared_experts·moe_intermediate_size */
    int has_shared;
    float *eg, *eu, *ed;         /* local routed experts: gate/up [e_local,I,H], down [e_local,H,I] */
    float *geg, *geu, *ged;      /* their gradients (NULL when frozen) */
    ops_weight eW[3];            /* storage of gate, up, down (expert 0's [out,in] view, ops_moe.h): F32 over
                                    eg/eu/ed, a frozen base in bf16/fp8 (train.base_dtype; eg.. NULL), or the
                                    bf16 working weights of trainable experts (train.dtype bf16, zero.h;
                                    eg.. NULL: the weight gradients need no fp32 weight) */
    int e_first, e_local;
    int wire;                    /* dispatch/combine wire dtype, OPS_WIRE_* (ops_moe.h) */
    int overlap;                 /* parallel.moe_overlap: the two-half schedule (moe_experts_forward) */
    /* per-expert LoRA on gate (0), up (1), down (2): y += scaling·(x·Aₑᵀ)·Bₑᵀ for the
     * rows of expert e; er[j] = rank, 0 = no adapter (PEFT semantics, no dropout) */
    int er[3];
    float escaling;
    float *eA[3], *eB[3];        /* [e_local, r, in], [e_local, out, r] */
    float *geA[3], *geB[3];      /* their gradients */
} moe_layer;

/* Saved activations + scratch. Capacities: n_cap local tokens (B·T) and
 * r_cap (token, expert) pairs received for the local experts ("rows" of the
 * expert computation; the rows received, one per (token, this rank), are at
 * most as many). The pairs a rank receives depend on the routing: on average
 * N·K (moe_rows_expected), at most EP·N·min(K, e_local) when every token of
 * every rank picks this rank (moe_rows_bound). If a step receives more than
 * r_cap pairs the row buffers move to their own allocation (moe_rows_reserve;
 * grow_events counts that; log it), so a dropless step never fails for lack
 * of a bound. The send side is bounded: N·min(K, EP) rows (s_cap). Memory
 * (ops.h): floats and the index lists are device memory, carved in one region
 * (moe_cache_bind: the caller's memory, e.g. the model's activation buffer;
 * ints take 4-byte slots, counted as floats in moe_cache_floats); the counts
 * ecnt .. efirst are host memory, one ops_host_alloc (moe_cache_host_create,
 * moe_cache_host_ints): MPI and the host loops read them. */
typedef struct {
    int n_cap, r_cap, s_cap, E, K, H, I_, Is, e_local, ep;
    int er[3];                   /* routed-expert LoRA ranks (moe_layer.er): sizes the row buffers */
    int grow_events;             /* times the row buffers had to grow */
    float *rows_own;             /* the row buffers (perm .. edxa) when grown: an allocation of their own */
    float *own;                  /* the region moe_cache_alloc allocated, NULL when bound to the caller's */
    int *host;                   /* the host counts' allocation (moe_cache_host_create) */
    int halves;                  /* 2: the two-half schedule (moe_layer.overlap), else 1 */
    int *host_b;                 /* half B's counts ecnt .. lcnt, laid out as the fields below (halves 2) */
    struct {
        int t0, N, S, R, Pr;     /* tokens [t0, t0+N), rows sent, rows and pairs received */
    } half[2];                   /* of the last forward (halves 2) */
    double comm_seconds;         /* wall time in the expert Alltoall/Alltoallv calls (accumulates;
                                    the caller zeroes it; moe_cache_bind sets 0) */
    double wire_bytes;           /* bytes this rank sent to OTHER ranks in those calls (rows in the
                                    wire dtype, pair records, counts; accumulates like comm_seconds) */
    /* state of the last forward, used by the backward */
    int N, B, T, S, R, Pr;       /* tokens, sequences, tokens per sequence, rows sent, rows and pairs received */
    float bal_scale;
    float *x;                    /* [N,H] input copy */
    float *s;                    /* [N,E] sigmoid router scores */
    int *idx;                    /* [N,K] chosen experts (global ids) */
    float *w;                    /* [N,K] routing weights */
    int *topk_u;                 /* [N,K] top-K over unbiased s (balance loss) */
    /* sender: ops_moe_dispatch_index */
    int *stok;                   /* [s_cap] token of send row j (destination-major) */
    int *toff, *trows;           /* [n_cap+halves], [s_cap] token t's send rows trows[toff[t]..toff[t+1]) */
    int *ptk;                    /* [N·K] (t·K+k) of send pair q */
    int *smeta;                  /* [N·K,3] pair records sent; backward: ∂L/∂w of each pair, returned */
    float *xs, *ys;              /* [s_cap,H] send rows / rows returned (scratch; backward: dy rows, dx rows) */
    /* receiver: ops_moe_receive_index */
    int *rmeta;                  /* [r_cap,3] pair records received; backward: ∂L/∂w per pair (sent back) */
    int *perm;                   /* [r_cap] expert-major pair j reads received row perm[j] */
    int *pinv;                   /* [r_cap] pair p (received order) is expert-major pinv[p] */
    int *poff;                   /* [r_cap+halves] received row i's pairs [poff[i], poff[i+1]) */
    float *pw;                   /* [r_cap] routing weight of pair p */
    float *xr, *xe, *ye;         /* [r_cap,H] received rows (scratch), expert-major inputs, outputs (saved) */
    float *ge, *ue, *he;         /* [r_cap,I] expert gate, up, swiglu (saved) */
    float *dge, *due, *dhe;      /* [r_cap,I] backward scratch */
    float *exa[3];               /* [r_cap, er[j]] routed-expert LoRA x·Aₑᵀ (saved; NULL without adapter) */
    float *elt, *edxa;           /* [r_cap, max(H,I)], [r_cap, max er]: LoRA scratch (with any adapter) */
    float *dw;                   /* [N,K] ∂L/∂w */
    float *dl;                   /* [N,E] ∂L/∂logits */
    float *tmp;                  /* [N,H] shared-expert output */
    mlp_cache sh;                /* shared experts */
    /* host counts */
    int *ecnt;                   /* [E] pairs this rank sends to each expert */
    int *scnt, *soff, *spc, *spo; /* [EP] rows / pairs sent to each rank, offsets */
    int *rcnt, *roff, *rpc, *rpo; /* [EP] rows / pairs received from each rank, offsets */
    int *c2s, *c2r;              /* [EP,2] (rows, pairs) counts exchanged */
    int *lcnt;                   /* [e_local] pairs per local expert */
    int *efirst;                 /* [EP+1] first expert of each rank (moe_expert_range) */
} moe_cache;

/* Routed experts of member r of an EP group: [first, first+count); the first
 * E % ep members own E/ep + 1 (plan_expert_range is the same split). */
void moe_expert_range(int E, int ep, int r, int *first, int *count);
/* Mean rows a rank receives per step for N local tokens (balanced routing): N·K. */
size_t moe_rows_expected(int N, int K);
/* Worst case: EP·N·min(K, e_local) (every rank's N tokens all pick this rank). */
size_t moe_rows_bound(int N, int K, int e_local, int ep);
/* Device floats of the cache region (n_cap tokens, r_cap rows; r_cap 0 = moe_rows_bound). */
size_t moe_cache_floats(const deck_model *m, const moe_layer *l, int ep, int n_cap, int r_cap);
/* Send rows of N tokens: N·min(K, EP) (one per token and destination rank). */
size_t moe_send_rows(int N, int K, int ep);
/* Host ints of the counts (E experts, e_local of them here, EP ranks; halves 2:
 * a second set for the two-half schedule). */
size_t moe_cache_host_ints(int E, int e_local, int ep, int halves);
/* Allocates the host counts (once per cache; kept by moe_cache_bind). 0, or -1 when out of memory. */
int moe_cache_host_create(moe_cache *c, const deck_model *m, const moe_layer *l, int ep);
/* Binds the device arrays to mem (moe_cache_floats floats, carved in the
 * order of the fields above, then the shared experts' mlp_cache); needs
 * moe_cache_host_create first; allocates nothing. Returns the floats carved. */
size_t moe_cache_bind(moe_cache *c, const deck_model *m, const moe_layer *l, int ep, int n_cap, int r_cap,
                      float *mem);
/* Host counts + one device allocation, bound. 0 on success, -1 (message on stderr) when out of memory. */
int moe_cache_alloc(moe_cache *c, const deck_model *m, const moe_layer *l, int ep, int n_cap, int r_cap);
/* Frees what the cache owns: moe_cache_alloc's region, grown rows, the host counts. */
void moe_cache_free(moe_cache *c);
/* Makes the row buffers hold at least `rows` received rows (grows them,
 * counting grow_events; aborts the job when out of memory). Called by
 * moe_experts_forward: dropless routing decides the rows per step. */
void moe_rows_reserve(moe_cache *c, int rows);
/* Peak floats moe_forward/moe_backward take from the scratch arena for N
 * local tokens (the shared experts' LoRA temporaries; routing and the routed
 * experts work in the cache), every shared linear with LoRA rank lora_r. */
size_t moe_scratch_floats(const deck_model *m, int lora_r, int lora_drop, int N);

/* Full layer: out[N,H] = routed + shared, N = B·T local tokens (B may be 0).
 * counts [E] (may be NULL) += local tokens routed to each expert this call.
 * bal_loss (may be NULL) += α·Σ_b Σ_i f_i·P_i over the B sequences (α =
 * m->aux_loss_alpha; 0 = off); the backward adds bal_scale·∂(that)/∂ to the
 * router gradient (e.g. 1/global_sequences). Collective over ep_comm. */
void moe_forward(const deck_model *m, const moe_layer *l, moe_cache *c, comm_t ep_comm, float *out,
                 const float *x, int B, int T, int64_t *counts, double *bal_loss, float bal_scale,
                 ops_arena *scratch);
/* dx[N,H] += ∂L/∂x given dout = ∂L/∂out; router, routed-expert and shared
 * gradients accumulate. Uses the last moe_forward on c. Collective. */
void moe_backward(const deck_model *m, const moe_layer *l, moe_cache *c, comm_t ep_comm, float *dx,
                  const float *dout, ops_arena *scratch);

/* The parts, for a backend that replaces one of them.
 * moe_route: c->x, s, idx, w (and topk_u, *bal_loss when α > 0) for N = B·T tokens. */
void moe_route(const deck_model *m, const moe_layer *l, moe_cache *c, const float *x, int B, int T,
               double *bal_loss, float bal_scale);
/* dx += router path, from c->dw (set by moe_experts_backward) and the balance loss; gate_g accumulates. */
void moe_route_backward(const deck_model *m, const moe_layer *l, moe_cache *c, float *dx);
/* out[N,H] = Σ_k w·expert_k(x) (overwritten), from the routing in c. Collective.
 * With l->overlap (parallel.moe_overlap) the tokens are split in halves A =
 * [0, N/2) and B = [N/2, N), each with its own dispatch, expert GEMMs and
 * combine, scheduled so that B's dispatch is in flight while A's experts run
 * and A's combine while B's run (comm.h's nonblocking all-to-all); the backward
 * likewise. The routing (scores, top-k, balance loss, counts) stays over all N. */
void moe_experts_forward(const moe_layer *l, moe_cache *c, comm_t ep_comm, float *out, ops_arena *scratch);
/* c->dw = ∂L/∂w; dx += routed-expert path; expert gradients accumulate. Collective. */
void moe_experts_backward(const moe_layer *l, moe_cache *c, comm_t ep_comm, float *dx, const float *dout,
                          ops_arena *scratch);

/* b_i += γ·sign(mean_j c_j − c_i), counts summed over the whole batch (spec §5). */
void moe_bias_update(float *bias, const int64_t *counts, int E, float gamma);
/* max_i c_i / mean_i c_i (1 when no tokens). */
double moe_load_imbalance(const int64_t *counts, int E);

#endif
