/* moe.c — MoE layer: router, group-limited top-k, expert-parallel dispatch,
 * per-expert SwiGLU, combine, shared experts; forward and backward. */
#include "moe.h"

#include <stdio.h>
#include <string.h>

#include "../comm.h"
#include "../error.h"
#include "../ops.h"

size_t moe_rows_expected(int N, int K) { return (size_t)N * K; }

size_t moe_rows_bound(int N, int K, int e_local, int ep) {
    return (size_t)ep * N * (size_t)(K < e_local ? K : e_local);
}

size_t moe_send_rows(int N, int K, int ep) { return (size_t)N * (size_t)(K < ep ? K : ep); }

void moe_expert_range(int E, int ep, int r, int *first, int *count) {
    int base = E / ep, extra = E % ep;
    *count = base + (r < extra);
    *first = r * base + (r < extra ? r : extra);
}

/* Floats per received row of the routed-expert LoRA: the x·Aₑᵀ caches, and
 * (with any adapter) the [max(H,I)] product / dy·s scratch and the [max r] dxa. */
static size_t er_max(const int er[3]) {
    int m = er[0] > er[1] ? er[0] : er[1];
    return (size_t)(m > er[2] ? m : er[2]);
}
static size_t row_lora_floats(const int er[3], int H, int I) {
    size_t rmax = er_max(er);
    return rmax ? (size_t)er[0] + (size_t)er[1] + (size_t)er[2] + (size_t)(H > I ? H : I) + rmax : 0;
}

/* Per pair: perm, pinv, pw, the 3-int record, poff (+1 per half in all), the H- and I-wide rows, the LoRA ones. */
static size_t row_bufs_floats(const int er[3], int r_cap, int H, int I, int halves) {
    return (size_t)r_cap * (7 + 3 * (size_t)H + 6 * (size_t)I + row_lora_floats(er, H, I)) + (size_t)halves;
}

/* The next n slots of a region being carved, in layout order (ints take 4-byte, float-sized slots). */
static void *take(float **p, size_t n) {
    void *q = *p;
    *p += n;
    return q;
}

/* Carves the row buffers (perm .. edxa) for c->r_cap rows from p, in layout
 * order; returns the end. The one layout for the bound region and a grown one. */
static float *rows_carve(moe_cache *c, float *p) {
    size_t R = (size_t)c->r_cap, H = (size_t)c->H, I = (size_t)c->I_;
    c->rmeta = take(&p, 3 * R);
    c->perm = take(&p, R);
    c->pinv = take(&p, R);
    c->poff = take(&p, R + (size_t)c->halves);
    c->pw = take(&p, R);
    c->xr = take(&p, R * H);
    c->xe = take(&p, R * H);
    c->ye = take(&p, R * H);
    c->ge = take(&p, R * I);
    c->ue = take(&p, R * I);
    c->he = take(&p, R * I);
    c->dge = take(&p, R * I);
    c->due = take(&p, R * I);
    c->dhe = take(&p, R * I);
    if (er_max(c->er)) {
        for (int j = 0; j < 3; j++)
            if (c->er[j]) c->exa[j] = take(&p, R * (size_t)c->er[j]);
        c->elt = take(&p, R * (H > I ? H : I));
        c->edxa = take(&p, R * er_max(c->er));
    }
    return p;
}

static mlp_layer shared_of(const moe_layer *l) { return (mlp_layer){l->sh_gate, l->sh_up, l->sh_down}; }

size_t moe_cache_floats(const deck_model *m, const moe_layer *l, int ep, int n_cap, int r_cap) {
    size_t E = (size_t)m->n_routed_experts, K = (size_t)m->num_experts_per_tok, H = (size_t)m->hidden_size;
    size_t I = (size_t)m->moe_intermediate_size, N = (size_t)n_cap;
    if (r_cap <= 0) r_cap = (int)moe_rows_bound(n_cap, (int)K, l->e_local, ep);
    size_t S = moe_send_rows(n_cap, (int)K, ep), halves = l->overlap ? 2 : 1;
    size_t f = N * H + 2 * N * E          /* x, s, dl */
               + N * K * 8                /* idx, w, topk_u, ptk, smeta (3), dw */
               + (N + halves) + 2 * S     /* toff (one more per half), stok, trows */
               + 2 * S * H + N * H        /* xs, ys, tmp */
               + row_bufs_floats(l->er, r_cap, (int)H, (int)I, (int)halves);
    if (l->has_shared) {
        mlp_layer sh = shared_of(l);
        f += mlp_cache_floats(&sh, n_cap);
    }
    return f;
}

/* The counts of one half: ecnt, scnt..rpo, c2s, c2r, lcnt. */
static size_t counts_ints(int E, int e_local, int ep) { return (size_t)E + 12 * (size_t)ep + (size_t)e_local; }

size_t moe_cache_host_ints(int E, int e_local, int ep, int halves) {
    return (size_t)halves * counts_ints(E, e_local, ep) + (size_t)ep + 1; /* + efirst */
}

/* Points c's counts ecnt .. lcnt at h (counts_ints ints); returns the end. */
static int *counts_carve(moe_cache *c, int *h, int E, int G, int ep) {
    c->ecnt = h, h += E;
    int **per_rank[8] = {&c->scnt, &c->soff, &c->spc, &c->spo, &c->rcnt, &c->roff, &c->rpc, &c->rpo};
    for (int i = 0; i < 8; i++) *per_rank[i] = h, h += ep;
    c->c2s = h, h += 2 * ep;
    c->c2r = h, h += 2 * ep;
    c->lcnt = h, h += G;
    return h;
}

size_t moe_scratch_floats(const deck_model *m, int lora_r, int lora_drop, int N) {
    if (m->n_shared_experts <= 0) return 0; /* routing and experts use the cache only */
    return mlp_scratch_floats(m->hidden_size, m->n_shared_experts * m->moe_intermediate_size, lora_r, lora_drop, N);
}

/* Row buffers beyond the planned capacity (moe_rows_reserve): one allocation,
 * carved like the bound ones; charged to the activations (beyond the plan: the
 * run's memory check shows it). 0, or -1 when out of memory. */
static int rows_alloc(moe_cache *c, int r_cap) {
    int cat = ops_mem_category(OPS_MEM_ACTS);
    float *mem = ops_alloc(row_bufs_floats(c->er, r_cap, c->H, c->I_, c->halves) * sizeof(float));
    ops_mem_category(cat);
    if (!mem) return -1;
    c->rows_own = mem;
    c->r_cap = r_cap;
    rows_carve(c, mem);
    return 0;
}

/* Frees grown row buffers (rows_own); bound ones belong to the caller's region. */
static void rows_free(moe_cache *c) {
    ops_free(c->rows_own);
    c->rows_own = NULL;
    c->rmeta = c->perm = c->pinv = c->poff = NULL;
    c->pw = NULL;
    c->xr = c->xe = c->ye = c->ge = c->ue = c->he = c->dge = c->due = c->dhe = NULL;
    c->exa[0] = c->exa[1] = c->exa[2] = c->elt = c->edxa = NULL;
    c->r_cap = 0;
}

/* The one allocation left on the step path, and why: the layer is dropless,
 * so the (token, expert) pairs a rank receives depend on the routing of this
 * step. The cache is sized (and bound, moe_cache_bind) for the expected pairs
 * (cost_moe_row_cap in cost.c: the rank's share e_local/E of the EP·N·K
 * pairs, + N); the bound that would make this function unnecessary is
 * EP·N·min(K, e_local) pairs (moe_rows_bound), EP times the expected count at
 * K <= e_local — too much memory to hold for every layer. So when a step
 * receives more pairs than r_cap the row buffers move to their own, larger
 * allocation here (the exceptional path: grow_events counts it; the grown
 * size is kept until moe_cache_free; it is not part of the planned
 * activation bytes). */
void moe_rows_reserve(moe_cache *c, int rows) {
    if (rows <= c->r_cap) return;
    rows_free(c);
    if (rows_alloc(c, rows) != 0) error_one("out of memory growing the expert row buffers to %d rows", rows);
    c->grow_events++;
}

int moe_cache_host_create(moe_cache *c, const deck_model *m, const moe_layer *l, int ep) {
    int E = m->n_routed_experts, G = l->e_local, halves = l->overlap ? 2 : 1;
    int *h = ops_host_alloc(moe_cache_host_ints(E, G, ep, halves) * sizeof *h);
    if (!h) return -1;
    c->host = h;
    h = counts_carve(c, h, E, G, ep);
    if (halves == 2) c->host_b = h, h += counts_ints(E, G, ep);
    c->efirst = h;
    for (int r = 0, n; r < ep; r++) moe_expert_range(E, ep, r, &c->efirst[r], &n);
    c->efirst[ep] = E;
    return 0;
}

size_t moe_cache_bind(moe_cache *c, const deck_model *m, const moe_layer *l, int ep, int n_cap, int r_cap,
                      float *mem) {
    DSV3_CHECK(c->host && !c->rows_own && !c->own, "moe_cache_bind: no host counts, or the cache owns memory");
    moe_cache keep = *c; /* the host counts (moe_cache_host_create) stay */
    memset(c, 0, sizeof *c);
    c->host = keep.host;
    c->host_b = keep.host_b;
    c->halves = l->overlap ? 2 : 1;
    DSV3_CHECK((c->halves == 2) == (c->host_b != NULL), "moe_cache_bind: the host counts were made for another schedule");
    c->ecnt = keep.ecnt, c->scnt = keep.scnt, c->soff = keep.soff, c->spc = keep.spc, c->spo = keep.spo;
    c->rcnt = keep.rcnt, c->roff = keep.roff, c->rpc = keep.rpc, c->rpo = keep.rpo;
    c->c2s = keep.c2s, c->c2r = keep.c2r, c->lcnt = keep.lcnt, c->efirst = keep.efirst;
    c->E = m->n_routed_experts;
    c->K = m->num_experts_per_tok;
    c->H = m->hidden_size;
    c->I_ = m->moe_intermediate_size;
    c->Is = m->n_shared_experts * m->moe_intermediate_size;
    c->e_local = l->e_local;
    c->ep = ep;
    for (int j = 0; j < 3; j++) c->er[j] = l->er[j];
    c->n_cap = n_cap;
    if (r_cap <= 0) r_cap = (int)moe_rows_bound(n_cap, c->K, l->e_local, ep);
    c->r_cap = r_cap;
    c->s_cap = (int)moe_send_rows(n_cap, c->K, ep);
    size_t N = (size_t)n_cap, E = (size_t)c->E, K = (size_t)c->K, H = (size_t)c->H, S = (size_t)c->s_cap;
    float *p = mem;
    c->x = take(&p, N * H);
    c->s = take(&p, N * E);
    c->dl = take(&p, N * E);
    c->idx = take(&p, N * K);
    c->w = take(&p, N * K);
    c->topk_u = take(&p, N * K);
    c->ptk = take(&p, N * K);
    c->smeta = take(&p, 3 * N * K);
    c->dw = take(&p, N * K);
    c->toff = take(&p, N + (size_t)c->halves);
    c->stok = take(&p, S);
    c->trows = take(&p, S);
    c->xs = take(&p, S * H);
    c->ys = take(&p, S * H);
    c->tmp = take(&p, N * H);
    p = rows_carve(c, p);
    if (l->has_shared) {
        mlp_layer sh = shared_of(l);
        p += mlp_cache_bind(&c->sh, &sh, n_cap, p);
    }
    size_t used = (size_t)(p - mem), want = moe_cache_floats(m, l, ep, n_cap, r_cap);
    DSV3_CHECK(used == want, "moe_cache_bind: layout %zu != moe_cache_floats %zu", used, want);
    return used;
}

int moe_cache_alloc(moe_cache *c, const deck_model *m, const moe_layer *l, int ep, int n_cap, int r_cap) {
    memset(c, 0, sizeof *c);
    size_t floats = moe_cache_floats(m, l, ep, n_cap, r_cap);
    float *buf = moe_cache_host_create(c, m, l, ep) ? NULL : ops_alloc(floats * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "moe.c: out of memory for the MoE cache (%d tokens, %d rows, %zu floats)\n", n_cap, r_cap,
                floats);
        moe_cache_free(c);
        return -1;
    }
    moe_cache_bind(c, m, l, ep, n_cap, r_cap, buf);
    c->own = buf;
    return 0;
}

void moe_cache_free(moe_cache *c) {
    rows_free(c);
    ops_free(c->own);
    ops_host_free(c->host);
    memset(c, 0, sizeof *c);
}

/* ---- routing ---- */

void moe_route(const deck_model *m, const moe_layer *l, moe_cache *c, const float *x, int B, int T,
               double *bal_loss, float bal_scale) {
    int N = B * T, E = c->E, K = c->K, H = c->H;
    if (N > c->n_cap) error_one("%d tokens exceed the MoE cache capacity %d", N, c->n_cap);
    c->N = N;
    c->B = B;
    c->T = T;
    c->bal_scale = bal_scale;
    ops_copy(c->x, x, (size_t)N * H);
    ops_matmul(c->s, x, l->gate_w, N, H, E, 0.0f); /* logits [N,E], fp32 */
    ops_sigmoid(c->s, c->s, (size_t)N * E);
    ops_moe_route(c->idx, c->w, c->s, l->bias, N, E, K, m->n_group, m->topk_group, m->norm_topk_prob,
                  (float)m->routed_scaling_factor);
    if (m->aux_loss_alpha > 0.0 && N > 0) {
        /* eq. 18: TopK over the unbiased scores, no group limit */
        ops_moe_route(c->topk_u, NULL, c->s, NULL, N, E, K, 1, 1, 0, 1.0f);
        double v = m->aux_loss_alpha * ops_moe_balance(c->s, c->topk_u, B, T, E, K);
        if (bal_loss) *bal_loss += v;
    }
}

void moe_route_backward(const deck_model *m, const moe_layer *l, moe_cache *c, float *dx) {
    int N = c->N, E = c->E, K = c->K, H = c->H;
    ops_zero(c->dl, (size_t)N * E);
    ops_moe_route_backward(c->dl, c->dw, c->s, c->idx, N, E, K, m->norm_topk_prob, (float)m->routed_scaling_factor);
    if (m->aux_loss_alpha > 0.0 && c->bal_scale != 0.0f)
        ops_moe_balance_backward(c->dl, c->s, c->topk_u, c->B, c->T, E, K,
                                 (float)(m->aux_loss_alpha * c->bal_scale));
    ops_matmul_backward(dx, l->gate_g, c->dl, c->x, l->gate_w, N, H, E);
}

/* ---- dispatch / experts / combine ---- */

static void check_comm(const moe_cache *c, const moe_layer *l, comm_t comm) {
    int size = comm_size(comm), rank = comm_rank(comm), first, n;
    moe_expert_range(c->E, size, rank, &first, &n);
    if (size != c->ep || l->e_first != first || l->e_local != n || l->e_local != c->e_local)
        error_one("expert layout mismatch: comm size %d (cache EP %d), rank %d, e_first %d, e_local %d, E %d", size,
                  c->ep, rank, l->e_first, l->e_local, c->E);
}

/* Bytes of n rows to every member but me (what crosses the wire). */
static double sent_bytes(const int *cnt, int P, int me, size_t row_bytes) {
    double b = 0;
    for (int r = 0; r < P; r++)
        if (r != me) b += (double)cnt[r] * (double)row_bytes;
    return b;
}

/* Rows of H floats in the wire dtype: packed in place in send, sent, widened
 * in place in recv (ops_wire_pack; fp32 sends the floats themselves) at
 * rows_end. q NULL: the blocking all-to-all; else started into q (comm.h). */
static void rows_start(moe_cache *c, float *send, const int *scnt, const int *soff, float *recv, const int *rcnt,
                       const int *roff, int wire, comm_t comm, comm_req *q) {
    int P = c->ep, me = comm_rank(comm), ns = 0;
    for (int r = 0; r < P; r++) ns += scnt[r];
    size_t rb = ops_wire_row_bytes(c->H, wire);
    ops_wire_pack(send, ns, c->H, wire);
    double t0 = comm_wtime();
    if (q ? comm_alltoallv_rows_start(send, scnt, soff, recv, rcnt, roff, rb, comm, q)
          : comm_alltoallv_rows(send, scnt, soff, recv, rcnt, roff, rb, comm))
        error_one("all-to-all of expert rows failed");
    c->comm_seconds += comm_wtime() - t0;
    c->wire_bytes += sent_bytes(scnt, P, me, rb);
}
static void rows_end(moe_cache *c, float *recv, const int *rcnt, int wire, comm_req *q) {
    if (q) {
        double t0 = comm_wtime();
        if (comm_wait(q)) error_one("all-to-all of expert rows failed");
        c->comm_seconds += comm_wtime() - t0;
    }
    int nr = 0;
    for (int r = 0; r < c->ep; r++) nr += rcnt[r];
    ops_wire_unpack(recv, nr, c->H, wire);
}

/* Per-pair data (records of 3 ints, or 1 float of ∂L/∂w) along the pair counts.
 * nb: started and waited at once (comm.h), which on a device backend queues
 * it on the comm stream behind another half's exchange still in flight. */
static void exchange_pairs(moe_cache *c, const void *send, const int *scnt, const int *soff, void *recv,
                           const int *rcnt, const int *roff, size_t bytes, comm_t comm, int nb) {
    double t0 = comm_wtime();
    comm_req q;
    if (nb ? comm_alltoallv_rows_start(send, scnt, soff, recv, rcnt, roff, bytes, comm, &q) || comm_wait(&q)
           : comm_alltoallv_rows(send, scnt, soff, recv, rcnt, roff, bytes, comm))
        error_one("all-to-all of pair records failed");
    c->comm_seconds += comm_wtime() - t0;
    c->wire_bytes += sent_bytes(scnt, c->ep, comm_rank(comm), bytes);
}

/* The wire of every exchange but the forward dispatch: fp8 dispatch combines in bf16. */
static int wire_back(int wire) { return wire == OPS_WIRE_FP8 ? OPS_WIRE_BF16 : wire; }

/* Routed-expert LoRA of projection j on the R = Pr expert-major pairs: y[R,out] +=
 * s·(x·Aₑᵀ)·Bₑᵀ per expert e (grouped like the base GEMM); xa [R,r] saved. */
static void expert_lora_forward(const moe_layer *l, moe_cache *c, int j, float *y, const float *x, int in, int out) {
    int r = l->er[j], R = c->Pr, G = c->e_local;
    if (!r) return;
    ops_grouped_matmul(c->exa[j], x, l->eA[j], c->lcnt, G, in, r);      /* xa [R,r] */
    ops_grouped_matmul(c->elt, c->exa[j], l->eB[j], c->lcnt, G, r, out); /* [R,out] */
    ops_axpy(y, l->escaling, c->elt, (size_t)R * out);
}

/* dB += s·dyᵀ·xa ; dxa = s·dy·B ; dA += dxaᵀ·x ; dx += dxa·A, per expert. */
static void expert_lora_backward(const moe_layer *l, moe_cache *c, int j, float *dx, const float *dy, const float *x,
                                 int in, int out) {
    int r = l->er[j], R = c->Pr, G = c->e_local;
    if (!r) return;
    ops_copy(c->elt, dy, (size_t)R * out); /* dy·s [R,out] */
    ops_scale(c->elt, l->escaling, (size_t)R * out);
    ops_zero(c->edxa, (size_t)R * r);
    ops_grouped_matmul_backward(c->edxa, l->geB[j], c->elt, c->exa[j], l->eB[j], c->lcnt, G, r, out);
    ops_grouped_matmul_backward(dx, l->geA[j], c->edxa, x, l->eA[j], c->lcnt, G, in, r);
}

/* Projection j (gate, up, down) of the local experts on the expert-major rows:
 * the F32 weights (grouped GEMM), or a frozen bf16/fp8 base dequantised tile
 * by tile (ops_grouped_matmul_w). */
static const float *expert_f32(const moe_layer *l, int j) { return j == 0 ? l->eg : j == 1 ? l->eu : l->ed; }
static void experts_mm(const moe_layer *l, int j, float *y, const float *x, const moe_cache *c, ops_arena *scratch) {
    const ops_weight *w = &l->eW[j];
    int in = j < 2 ? c->H : c->I_, out = j < 2 ? c->I_ : c->H;
    if (w->dtype != OPS_F32)
        ops_grouped_matmul_w(y, x, w, c->lcnt, c->e_local, scratch);
    else
        ops_grouped_matmul(y, x, expert_f32(l, j), c->lcnt, c->e_local, in, out);
}
/* dx += dy·W per expert; dw += dyᵀ·x (F32 only: a stored base is frozen). */
static void experts_mm_backward(const moe_layer *l, int j, float *dx, float *dw, const float *dy, const float *x,
                                const moe_cache *c, ops_arena *scratch) {
    const ops_weight *w = &l->eW[j];
    int in = j < 2 ? c->H : c->I_, out = j < 2 ? c->I_ : c->H;
    if (w->dtype != OPS_F32) { /* a narrow frozen base, or the bf16 working weights of trainable experts */
        DSV3_CHECK(dw == NULL || w->dtype == OPS_BF16, "moe: an fp8 routed-expert weight must be frozen");
        ops_grouped_matmul_w_backward_dx(dx, dy, w, c->lcnt, c->e_local, scratch);
        if (dw) ops_grouped_matmul_backward(NULL, dw, dy, x, NULL, c->lcnt, c->e_local, in, out); /* fp32 dW */
    } else {
        ops_grouped_matmul_backward(dx, dw, dy, x, expert_f32(l, j), c->lcnt, c->e_local, in, out);
    }
}

/* ---- the stages of dispatch / experts / combine, on all N tokens or on one
 * half (a view of the cache, half_view). q: the exchange's request (NULL:
 * blocking); bg: another half's exchange in flight, given progress between
 * the GEMMs (comm_test). ---- */

/* Send rows and pair records by destination, the counts exchanged, the offsets. */
static void fwd_index(moe_cache *c, comm_t comm) {
    int N = c->N, K = c->K, P = c->ep;
    /* one send row per (token, destination rank); its (token, expert) pairs as records */
    c->S = ops_moe_dispatch_index(c->stok, c->toff, c->trows, c->ptk, c->smeta, c->scnt, c->spc, c->ecnt, c->idx,
                                  c->w, c->efirst, N, K, P);
    for (int r = 0; r < P; r++) c->c2s[2 * r] = c->scnt[r], c->c2s[2 * r + 1] = c->spc[r];
    double t0 = comm_wtime();
    if (comm_alltoall_int(c->c2s, c->c2r, 2, comm)) error_one("all-to-all of expert counts failed");
    c->comm_seconds += comm_wtime() - t0;
    c->wire_bytes += 2.0 * (P - 1) * sizeof(int);
    int so = 0, po = 0, ro = 0, qo = 0;
    for (int r = 0; r < P; r++) {
        c->rcnt[r] = c->c2r[2 * r], c->rpc[r] = c->c2r[2 * r + 1];
        c->soff[r] = so, c->spo[r] = po, c->roff[r] = ro, c->rpo[r] = qo;
        so += c->scnt[r], po += c->spc[r], ro += c->rcnt[r], qo += c->rpc[r];
    }
    c->R = ro;
    c->Pr = qo;
}

/* The pair records exchanged (blocking: before any exchange is in flight) and indexed. */
static void fwd_pairs(moe_cache *c, comm_t comm) {
    exchange_pairs(c, c->smeta, c->spc, c->spo, c->rmeta, c->rpc, c->rpo, 3 * sizeof(int), comm, 0);
    ops_moe_receive_index(c->perm, c->pinv, c->poff, c->pw, c->lcnt, c->rmeta, c->roff, c->rpo, c->ep, c->Pr, c->R,
                          c->e_local);
}

/* The rows' dispatch started. */
static void fwd_dispatch(const moe_layer *l, moe_cache *c, comm_t comm, comm_req *q) {
    ops_gather_rows(c->xs, c->x, c->stok, c->S, c->H);
    rows_start(c, c->xs, c->scnt, c->soff, c->xr, c->rcnt, c->roff, l->wire, comm, q);
}

/* The dispatched rows in, the local experts on them, the combine started. */
static void fwd_experts(const moe_layer *l, moe_cache *c, comm_t comm, ops_arena *scratch, comm_req *q,
                        comm_req *bg) {
    int H = c->H, I = c->I_, Q = c->Pr;
    rows_end(c, c->xr, c->rcnt, l->wire, q);
    ops_gather_rows(c->xe, c->xr, c->perm, Q, H); /* expert-major pairs */
    experts_mm(l, 0, c->ge, c->xe, c, scratch);
    expert_lora_forward(l, c, 0, c->ge, c->xe, H, I);
    if (bg) comm_test(bg);
    experts_mm(l, 1, c->ue, c->xe, c, scratch);
    expert_lora_forward(l, c, 1, c->ue, c->xe, H, I);
    if (bg) comm_test(bg);
    ops_swiglu_forward(c->he, c->ge, I, c->ue, I, Q, I);
    experts_mm(l, 2, c->ye, c->he, c, scratch);
    expert_lora_forward(l, c, 2, c->ye, c->he, I, H);
    /* one row back per received row: Σ w·y over this rank's experts of the token */
    ops_moe_combine_seg(c->xr, c->ye, c->poff, c->pinv, c->pw, c->R, H, 0.0f);
    rows_start(c, c->xr, c->rcnt, c->roff, c->ys, c->scnt, c->soff, wire_back(l->wire), comm, q ? q + 1 : NULL);
}

/* The combined rows in, summed per token into out [N,H]. */
static void fwd_combine(const moe_layer *l, moe_cache *c, float *out, comm_req *q) {
    rows_end(c, c->ys, c->scnt, wire_back(l->wire), q);
    ops_moe_combine_seg(out, c->ys, c->toff, c->trows, NULL, c->N, c->H, 0.0f);
}

/* Each send row's ∂L/∂out sent to the rank that computed it. */
static void bwd_dispatch(const moe_layer *l, moe_cache *c, comm_t comm, const float *dout, comm_req *q) {
    ops_gather_rows(c->xs, dout, c->stok, c->S, c->H);
    rows_start(c, c->xs, c->scnt, c->soff, c->xr, c->rcnt, c->roff, wire_back(l->wire), comm, q);
}

/* The gradient rows in; ∂L/∂w back to the token's rank (into c->dw); the
 * experts' backward; the dx rows' return started. */
static void bwd_experts(const moe_layer *l, moe_cache *c, comm_t comm, ops_arena *scratch, comm_req *q,
                        comm_req *bg) {
    int N = c->N, K = c->K, H = c->H, I = c->I_, R = c->R, Q = c->Pr, wb = wire_back(l->wire);
    size_t RI = (size_t)Q * I;
    rows_end(c, c->xr, c->rcnt, wb, q);
    /* ∂L/∂w per pair (into rmeta, read no more), then ye = w·dout per pair (overwrites the saved outputs) */
    float *dwp = (float *)(void *)c->rmeta;
    ops_moe_combine_seg_backward(c->ye, dwp, c->xr, c->ye, c->poff, c->pinv, c->pw, R, H);
    /* ∂L/∂w back to the token's rank, pair by pair (into smeta, read no more) */
    float *dws = (float *)(void *)c->smeta;
    exchange_pairs(c, dwp, c->rpc, c->rpo, dws, c->spc, c->spo, sizeof(float), comm, q != NULL);
    ops_zero(c->dw, (size_t)N * K);
    ops_scatter_rows(c->dw, dws, c->ptk, N * K, 1); /* dw[t,k] of pair q; every (t,k) is one pair */
    ops_zero(c->dhe, RI);
    experts_mm_backward(l, 2, c->dhe, l->ged, c->ye, c->he, c, scratch);
    expert_lora_backward(l, c, 2, c->dhe, c->ye, c->he, I, H);
    if (bg) comm_test(bg);
    ops_zero(c->dge, RI);
    ops_zero(c->due, RI);
    ops_swiglu_backward(c->dge, I, c->due, I, c->dhe, c->ge, I, c->ue, I, Q, I);
    ops_zero(c->xr, (size_t)Q * H); /* xr = dx per expert-major pair */
    experts_mm_backward(l, 0, c->xr, l->geg, c->dge, c->xe, c, scratch);
    expert_lora_backward(l, c, 0, c->xr, c->dge, c->xe, H, I);
    if (bg) comm_test(bg);
    experts_mm_backward(l, 1, c->xr, l->geu, c->due, c->xe, c, scratch);
    expert_lora_backward(l, c, 1, c->xr, c->due, c->xe, H, I);
    /* one dx row back per received row: the sum over its pairs */
    ops_moe_combine_seg(c->ye, c->xr, c->poff, c->pinv, NULL, R, H, 0.0f);
    rows_start(c, c->ye, c->rcnt, c->roff, c->xs, c->scnt, c->soff, wb, comm, q ? q + 1 : NULL);
}

/* The dx rows in, summed per token into dx [N,H] (+=). */
static void bwd_combine(const moe_layer *l, moe_cache *c, float *dx, comm_req *q) {
    rows_end(c, c->xs, c->scnt, wire_back(l->wire), q);
    if (dx) ops_moe_combine_seg(dx, c->xs, c->toff, c->trows, NULL, c->N, c->H, 1.0f);
}

/* ---- the two-half schedule (parallel.moe_overlap) ----
 * Half h of the last forward's tokens as a cache of its own: a copy of c
 * whose token arrays start at the half's first token, whose send rows start
 * after half A's bound (moe_send_rows of its tokens: the two bounds sum to
 * s_cap), whose received pairs and rows start after half A's pairs (rows <=
 * pairs), one more toff and poff entry per half (moe_cache_floats), and, for
 * half B, the second set of host counts. Its comm_seconds and wire_bytes
 * start at 0 (half_fold adds them to c). */
static void half_view(const moe_cache *c, int h, moe_cache *v) {
    size_t H = (size_t)c->H, I = (size_t)c->I_, K = (size_t)c->K, t0 = (size_t)c->half[h].t0;
    *v = *c;
    v->comm_seconds = v->wire_bytes = 0.0;
    v->N = c->half[h].N, v->S = c->half[h].S, v->R = c->half[h].R, v->Pr = c->half[h].Pr;
    v->x += t0 * H, v->idx += t0 * K, v->w += t0 * K, v->ptk += t0 * K, v->smeta += 3 * t0 * K, v->dw += t0 * K;
    if (h == 0) return;
    size_t s0 = moe_send_rows(c->half[0].N, c->K, c->ep), q0 = (size_t)c->half[0].Pr;
    v->toff += c->half[0].N + 1, v->stok += s0, v->trows += s0, v->xs += s0 * H, v->ys += s0 * H;
    v->rmeta += 3 * q0, v->perm += q0, v->pinv += q0, v->poff += q0 + 1, v->pw += q0;
    v->xr += q0 * H, v->xe += q0 * H, v->ye += q0 * H;
    v->ge += q0 * I, v->ue += q0 * I, v->he += q0 * I, v->dge += q0 * I, v->due += q0 * I, v->dhe += q0 * I;
    if (er_max(c->er)) {
        for (int j = 0; j < 3; j++)
            if (c->er[j]) v->exa[j] += q0 * (size_t)c->er[j];
        v->elt += q0 * (H > I ? H : I);
        v->edxa += q0 * er_max(c->er);
    }
    counts_carve(v, c->host_b, c->E, c->e_local, c->ep);
}
static void half_fold(moe_cache *c, moe_cache *v) {
    c->comm_seconds += v->comm_seconds, c->wire_bytes += v->wire_bytes;
    v->comm_seconds = v->wire_bytes = 0.0;
}

/* dispatch A; dispatch B in flight while A's experts run; combine A in
 * flight while B's experts run; combine B. q[h] = {dispatch, combine}. */
static void forward_halves(const moe_layer *l, moe_cache *c, comm_t comm, float *out, ops_arena *scratch) {
    int N = c->N, H = c->H;
    c->half[0].t0 = 0, c->half[0].N = N / 2;
    c->half[1].t0 = N / 2, c->half[1].N = N - N / 2;
    moe_cache v[2];
    for (int h = 0; h < 2; h++) { /* both halves' counts first: the row buffers hold both */
        half_view(c, h, &v[h]);
        fwd_index(&v[h], comm);
        c->half[h].S = v[h].S, c->half[h].R = v[h].R, c->half[h].Pr = v[h].Pr;
        half_fold(c, &v[h]);
    }
    for (int e = 0; e < c->E; e++) c->ecnt[e] += v[1].ecnt[e]; /* the layer's counts: both halves */
    c->S = c->half[0].S + c->half[1].S, c->R = c->half[0].R + c->half[1].R, c->Pr = c->half[0].Pr + c->half[1].Pr;
    moe_rows_reserve(c, c->Pr); /* dropless: grow rather than drop */
    half_view(c, 0, &v[0]), half_view(c, 1, &v[1]);
    fwd_pairs(&v[0], comm);
    fwd_pairs(&v[1], comm);
    comm_req q[2][2];
    fwd_dispatch(l, &v[0], comm, &q[0][0]);
    fwd_dispatch(l, &v[1], comm, &q[1][0]);
    fwd_experts(l, &v[0], comm, scratch, q[0], &q[1][0]);
    fwd_experts(l, &v[1], comm, scratch, q[1], &q[0][1]);
    fwd_combine(l, &v[0], out, &q[0][1]);
    fwd_combine(l, &v[1], out + (size_t)c->half[1].t0 * H, &q[1][1]);
    half_fold(c, &v[0]), half_fold(c, &v[1]);
}

/* The reverse: dout rows of A, then of B, out; A's experts while B's are in
 * flight; B's while A's dx rows return; dx of A, of B. */
static void backward_halves(const moe_layer *l, moe_cache *c, comm_t comm, float *dx, const float *dout,
                            ops_arena *scratch) {
    size_t H = (size_t)c->H;
    moe_cache v[2];
    half_view(c, 0, &v[0]), half_view(c, 1, &v[1]);
    comm_req q[2][2];
    bwd_dispatch(l, &v[0], comm, dout, &q[0][0]);
    bwd_dispatch(l, &v[1], comm, dout + (size_t)c->half[1].t0 * H, &q[1][0]);
    bwd_experts(l, &v[0], comm, scratch, q[0], &q[1][0]);
    bwd_experts(l, &v[1], comm, scratch, q[1], &q[0][1]);
    bwd_combine(l, &v[0], dx, &q[0][1]);
    bwd_combine(l, &v[1], dx ? dx + (size_t)c->half[1].t0 * H : NULL, &q[1][1]);
    half_fold(c, &v[0]), half_fold(c, &v[1]);
}

void moe_experts_forward(const moe_layer *l, moe_cache *c, comm_t comm, float *out, ops_arena *scratch) {
    check_comm(c, l, comm);
    if (c->halves == 2) {
        forward_halves(l, c, comm, out, scratch);
        return;
    }
    fwd_index(c, comm);
    moe_rows_reserve(c, c->Pr); /* dropless: grow rather than drop */
    fwd_pairs(c, comm);
    fwd_dispatch(l, c, comm, NULL);
    fwd_experts(l, c, comm, scratch, NULL, NULL);
    fwd_combine(l, c, out, NULL);
}

void moe_experts_backward(const moe_layer *l, moe_cache *c, comm_t comm, float *dx, const float *dout,
                          ops_arena *scratch) {
    check_comm(c, l, comm);
    if (c->halves == 2) {
        backward_halves(l, c, comm, dx, dout, scratch);
        return;
    }
    bwd_dispatch(l, c, comm, dout, NULL);
    bwd_experts(l, c, comm, scratch, NULL, NULL);
    bwd_combine(l, c, dx, NULL);
}

/* ---- the layer ---- */

void moe_forward(const deck_model *m, const moe_layer *l, moe_cache *c, comm_t ep_comm, float *out,
                 const float *x, int B, int T, int64_t *counts, double *bal_loss, float bal_scale,
                 ops_arena *scratch) {
    moe_route(m, l, c, x, B, T, bal_loss, bal_scale);
    moe_experts_forward(l, c, ep_comm, out, scratch);
    if (counts)
        for (int e = 0; e < c->E; e++) counts[e] += c->ecnt[e];
    if (l->has_shared) {
        mlp_layer sh = shared_of(l);
        mlp_forward(&sh, &c->sh, c->tmp, x, c->N, scratch);
        ops_add(out, c->tmp, (size_t)c->N * c->H);
    }
}

void moe_backward(const deck_model *m, const moe_layer *l, moe_cache *c, comm_t ep_comm, float *dx,
                  const float *dout, ops_arena *scratch) {
    if (l->has_shared) {
        mlp_layer sh = shared_of(l);
        mlp_backward(&sh, &c->sh, dx, dout, c->N, scratch);
    }
    moe_experts_backward(l, c, ep_comm, dx, dout, scratch);
    moe_route_backward(m, l, c, dx);
}

void moe_bias_update(float *bias, const int64_t *counts, int E, float gamma) {
    ops_moe_bias_update(bias, counts, E, gamma);
}

double moe_load_imbalance(const int64_t *counts, int E) {
    int64_t sum = 0, mx = 0;
    for (int e = 0; e < E; e++) {
        sum += counts[e];
        if (counts[e] > mx) mx = counts[e];
    }
    return sum > 0 ? (double)mx * E / (double)sum : 1.0;
}
