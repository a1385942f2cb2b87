/* test_cuda_wire.c — twins of the MoE dispatch of cuda/ops_moe.cu (ops_moe.h:
 * one row per (token, destination rank)): the sender's and the receiver's
 * bookkeeping, the segmented combine and its backward, the wire's in-place
 * packing, against src/ops_cpu_moe.c. Shapes: the tiny deck's (E 8, K 2, 128
 * tokens, EP 2 and 4), DeepSeek-V3's (E 256, K 8, EP 8 and 16; 700 tokens: several
 * dispatch chunks), uneven ownership (12
 * experts on 5 ranks, 4 on 5: a rank with none), one token, no tokens, tokens
 * with no remote destination, ranks receiving nothing; rows of 2, 7, 300 and
 * 7168 values, an all-zero row (fp8 scale 1), e4m3 subnormals, several waves. */
#include "cu_ops_moe.h"
#include "twin.h"

static int *ints(size_t n) { return malloc((n ? n : 1) * sizeof(int)); }

/* ---- A routing of N tokens over E experts owned by P ranks ---- */

typedef struct {
    int N, K, E, P;
    int efirst[65];
    int *idx;  /* [N,K] */
    float *w;  /* [N,K] */
} routing;

/* modes: 0 routed (sigmoid scores, plain top-K); 1 every token on rank 0's experts only
 * (no remote destination for rank 0, the others receive nothing); 2 token t on rank
 * t % P only for even t, routed for odd t; 3 source 0 routed, every other source q
 * keeps its tokens on rank q (a receiver gets nothing from the sources between) */
static routing make_routing(int N, int K, int E, int P, int mode, int src, uint64_t key) {
    routing r = {N, K, E, P, {0}, NULL, NULL};
    for (int q = 0; q < P; q++) /* the trainer's split: the first E % P ranks own one more */
        r.efirst[q + 1] = r.efirst[q] + E / P + (q < E % P);
    size_t nk = (size_t)N * K;
    r.idx = ints(nk);
    r.w = twin_host(nk, key + 1, 0.05f, 1.0f);
    float *s = twin_host((size_t)N * E, key, -4, 4);
    ops_sigmoid(s, s, (size_t)N * E);
    ops_moe_route(r.idx, NULL, s, NULL, N, E, K, 1, 1, 0, 1.0f);
    for (int t = 0; t < N; t++) {
        int q = mode == 1 ? 0 : mode == 2 && t % 2 == 0 ? t % P : mode == 3 && src > 0 ? src : -1; /* all on rank q */
        int lo = q >= 0 ? r.efirst[q] : 0, n = q >= 0 ? r.efirst[q + 1] - lo : 0;
        if (q >= 0 && n >= K) /* K distinct experts of rank q, in a token-dependent order */
            for (int k = 0; k < K; k++) r.idx[(size_t)t * K + k] = lo + (t + k * (n - 1)) % n;
    }
    free(s);
    return r;
}

/* ---- Sender side ---- */

typedef struct { /* ops_moe_dispatch_index's outputs */
    int S, *stok, *toff, *trows, *ptk, *smeta, *scnt, *spc, *ecnt;
} dispatch;

static dispatch cpu_dispatch(const routing *r) {
    size_t nk = (size_t)r->N * r->K;
    dispatch d = {0, ints(nk), ints((size_t)r->N + 1), ints(nk), ints(nk), ints(3 * nk), ints((size_t)r->P),
                  ints((size_t)r->P), ints((size_t)r->E)};
    d.S = ops_moe_dispatch_index(d.stok, d.toff, d.trows, d.ptk, d.smeta, d.scnt, d.spc, d.ecnt, r->idx, r->w,
                                 r->efirst, r->N, r->K, r->P);
    return d;
}
static void dispatch_free(dispatch *d) {
    free(d->stok), free(d->toff), free(d->trows), free(d->ptk), free(d->smeta), free(d->scnt), free(d->spc),
        free(d->ecnt);
}

static void check_dispatch(const routing *r, const dispatch *c, const char *label) {
    const int N = r->N, K = r->K, P = r->P, E = r->E;
    char name[160]; /* label may be twin_fmt's buffer, which the checks below reuse */
    snprintf(name, sizeof name, "%s", label);
    size_t nk = (size_t)N * K;
    int *d_idx = twin_dev(r->idx, nk * sizeof(int)), *d_ef = twin_dev(r->efirst, ((size_t)P + 1) * sizeof(int));
    float *d_w = twin_dev(r->w, nk * 4);
    int *d_stok = twin_alloc(nk * sizeof(int)), *d_toff = twin_alloc(((size_t)N + 1) * sizeof(int));
    int *d_trows = twin_alloc(nk * sizeof(int)), *d_ptk = twin_alloc(nk * sizeof(int));
    int *d_smeta = twin_alloc(3 * nk * sizeof(int)), *d_scnt = twin_alloc((size_t)P * sizeof(int));
    int *d_spc = twin_alloc((size_t)P * sizeof(int)), *d_ecnt = twin_alloc((size_t)E * sizeof(int));
    int *d_work = twin_alloc(cu_moe_dispatch_index_work(N, P) * sizeof(int) + 4);
    CK(cu_moe_dispatch_index(d_stok, d_toff, d_trows, d_ptk, d_smeta, d_scnt, d_spc, d_ecnt, d_idx, d_w, d_ef, N, K, P,
                             E, d_work, twin_s));
    const char *op = "ops_moe_dispatch_index";
    int *g = twin_back(d_toff, ((size_t)N + 1) * sizeof(int));
    twin_same(op, twin_fmt("%s S (toff[N])", name), &g[N], &c->S, sizeof(int));
    twin_same(op, twin_fmt("%s toff", name), g, c->toff, ((size_t)N + 1) * sizeof(int));
    free(g);
    const size_t S = (size_t)c->S;
    struct {
        const char *what;
        int *dev, *ref;
        size_t n;
    } out[] = {{"scnt", d_scnt, c->scnt, (size_t)P}, {"spc", d_spc, c->spc, (size_t)P},
               {"ecnt", d_ecnt, c->ecnt, (size_t)E}, {"stok", d_stok, c->stok, S},
               {"trows", d_trows, c->trows, S},      {"ptk", d_ptk, c->ptk, nk},
               {"smeta", d_smeta, c->smeta, 3 * nk}};
    for (size_t i = 0; i < sizeof out / sizeof *out; i++) {
        g = twin_back(out[i].dev, out[i].n * sizeof(int));
        twin_same(op, twin_fmt("%s %s", name, out[i].what), g, out[i].ref, out[i].n * sizeof(int));
        free(g);
    }
    twin_free(d_idx), twin_free(d_ef), twin_free(d_w), twin_free(d_stok), twin_free(d_toff), twin_free(d_trows);
    twin_free(d_ptk), twin_free(d_smeta), twin_free(d_scnt), twin_free(d_spc), twin_free(d_ecnt), twin_free(d_work);
}

/* ---- Receiver side: what rank `me` gets from P sources (each source's own
 * routing of N tokens), laid out as the all-to-all places it ---- */

typedef struct {
    int R, Pr, G;
    int roff[64], rpo[64];
    int *rmeta; /* [Pr,3] */
} received;

static received receive(const dispatch *src, int P, int me, const routing *r0) {
    received v = {0, 0, r0->efirst[me + 1] - r0->efirst[me], {0}, {0}, NULL};
    for (int q = 0; q < P; q++) v.R += src[q].scnt[me], v.Pr += src[q].spc[me];
    v.rmeta = ints(3 * (size_t)v.Pr);
    int ro = 0, po = 0;
    for (int q = 0; q < P; q++) {
        int first = 0; /* source q's first pair for `me` */
        for (int x = 0; x < me; x++) first += src[q].spc[x];
        memcpy(v.rmeta + 3 * (size_t)po, src[q].smeta + 3 * (size_t)first, 3 * (size_t)src[q].spc[me] * sizeof(int));
        v.roff[q] = ro, v.rpo[q] = po;
        ro += src[q].scnt[me], po += src[q].spc[me];
    }
    return v;
}

typedef struct { /* ops_moe_receive_index's outputs */
    int *perm, *pinv, *poff, *lcnt;
    float *pw;
} recv_index;

static recv_index cpu_receive(const received *v, int P) {
    recv_index x = {ints((size_t)v->Pr), ints((size_t)v->Pr), ints((size_t)v->R + 1), ints((size_t)v->G),
                    malloc(((size_t)v->Pr + 1) * 4)};
    ops_moe_receive_index(x.perm, x.pinv, x.poff, x.pw, x.lcnt, v->rmeta, v->roff, v->rpo, P, v->Pr, v->R, v->G);
    return x;
}
static void recv_free(recv_index *x) { free(x->perm), free(x->pinv), free(x->poff), free(x->lcnt), free(x->pw); }

static void check_receive(const received *v, const recv_index *c, int P, const char *name) {
    const size_t Pr = (size_t)v->Pr, R = (size_t)v->R, G = (size_t)v->G;
    int *d_rmeta = twin_dev(v->rmeta, 3 * Pr * sizeof(int)), *d_roff = twin_dev(v->roff, (size_t)P * sizeof(int));
    int *d_rpo = twin_dev(v->rpo, (size_t)P * sizeof(int));
    int *d_perm = twin_alloc(Pr * sizeof(int)), *d_pinv = twin_alloc(Pr * sizeof(int));
    int *d_poff = twin_alloc((R + 1) * sizeof(int)), *d_lcnt = twin_alloc(G * sizeof(int));
    float *d_pw = twin_alloc(Pr * 4);
    CK(cu_moe_receive_index(d_perm, d_pinv, d_poff, d_pw, d_lcnt, d_rmeta, d_roff, d_rpo, P, v->Pr, v->R, v->G,
                            twin_s));
    const char *op = "ops_moe_receive_index";
    struct {
        const char *what;
        void *dev;
        const void *ref;
        size_t bytes;
    } out[] = {{"lcnt", d_lcnt, c->lcnt, G * sizeof(int)}, {"perm", d_perm, c->perm, Pr * sizeof(int)},
               {"pinv", d_pinv, c->pinv, Pr * sizeof(int)}, {"poff", d_poff, c->poff, (R + 1) * sizeof(int)},
               {"pw", d_pw, c->pw, Pr * 4}};
    for (size_t i = 0; i < sizeof out / sizeof *out; i++) {
        void *g = twin_back(out[i].dev, out[i].bytes);
        twin_same(op, twin_fmt("%s %s", name, out[i].what), g, out[i].ref, out[i].bytes);
        free(g);
    }
    twin_free(d_rmeta), twin_free(d_roff), twin_free(d_rpo), twin_free(d_perm), twin_free(d_pinv);
    twin_free(d_poff), twin_free(d_lcnt), twin_free(d_pw);
}

/* ---- Segmented combine over a real layout: off [n+1], pos, w (NULL = 1) ---- */

static void combine_seg(const int *off, const int *pos, const float *w, int n, int ny, int C, float beta,
                        const char *name) {
    const int np = off[n];
    const size_t no = (size_t)n * C, nyc = (size_t)ny * C;
    const char *what = twin_fmt("%s C=%d beta=%g%s", name, C, beta, w ? "" : " w=1");
    char nm[160];
    snprintf(nm, sizeof nm, "%s", what);
    float *y = twin_host(nyc, 201, -1, 1), *out = twin_host(no, 202, -1, 1);
    if (beta == 0.0f)
        for (size_t i = 0; i < no; i++) out[i] = NAN; /* beta 0 must not read out */
    float *d_y = twin_dev(y, nyc * 4), *d_out = twin_dev(out, no * 4), *d_w = w ? twin_dev(w, (size_t)np * 4) : NULL;
    int *d_off = twin_dev(off, ((size_t)n + 1) * sizeof(int)), *d_pos = twin_dev(pos, (size_t)np * sizeof(int));
    ops_moe_combine_seg(out, y, off, pos, w, n, C, beta);
    CK(cu_moe_combine_seg(d_out, d_y, d_off, d_pos, d_w, n, C, beta, twin_s));
    float *g = twin_back(d_out, no * 4);
    twin_close("ops_moe_combine_seg", nm, g, out, no, 1e-5, 0, 0);
    free(g);

    if (w) { /* backward: dy rows overwritten (others kept), dw overwritten; dw NULL; dy == y (moe.c's call) */
        const char *op = "ops_moe_combine_seg_backward";
        float *dout = twin_host(no, 203, -1, 1), *dy = twin_host(nyc, 204, -1, 1), *dw = twin_host((size_t)np, 205, -1, 1);
        float *d_dout = twin_dev(dout, no * 4), *d_dy = twin_dev(dy, nyc * 4), *d_dw = twin_dev(dw, (size_t)np * 4);
        ops_moe_combine_seg_backward(dy, dw, dout, y, off, pos, w, n, C);
        CK(cu_moe_combine_seg_backward(d_dy, d_dw, d_dout, d_y, d_off, d_pos, d_w, n, C, twin_s));
        g = twin_back(d_dy, nyc * 4);
        twin_same(op, twin_fmt("%s dy", nm), g, dy, nyc * 4); /* one product: bitwise */
        free(g);
        g = twin_back(d_dw, (size_t)np * 4);
        twin_close(op, twin_fmt("%s dw", nm), g, dw, (size_t)np, 1e-5, 1e-6, 1); /* a dot product may cancel to ~0 */
        free(g);
        float *dy2 = twin_host(nyc, 206, -1, 1), *d_dy2 = twin_dev(dy2, nyc * 4);
        ops_moe_combine_seg_backward(dy2, NULL, dout, y, off, pos, w, n, C);
        CK(cu_moe_combine_seg_backward(d_dy2, NULL, d_dout, d_y, d_off, d_pos, d_w, n, C, twin_s));
        g = twin_back(d_dy2, nyc * 4);
        twin_same(op, twin_fmt("%s dw NULL", nm), g, dy2, nyc * 4);
        free(g);
        /* in place: dy = y, dw into a buffer of its own */
        ops_moe_combine_seg_backward(y, dw, dout, y, off, pos, w, n, C);
        CK(cu_moe_combine_seg_backward(d_y, d_dw, d_dout, d_y, d_off, d_pos, d_w, n, C, twin_s));
        g = twin_back(d_y, nyc * 4);
        twin_same(op, twin_fmt("%s dy = y", nm), g, y, nyc * 4);
        free(g);
        g = twin_back(d_dw, (size_t)np * 4);
        twin_close(op, twin_fmt("%s dy = y, dw", nm), g, dw, (size_t)np, 1e-5, 1e-6, 1);
        free(g), free(dout), free(dy), free(dw), free(dy2);
        twin_free(d_dout), twin_free(d_dy), twin_free(d_dw), twin_free(d_dy2);
    }
    free(y), free(out);
    twin_free(d_y), twin_free(d_out), twin_free(d_off), twin_free(d_pos);
    if (d_w) twin_free(d_w);
}

/* One EP group: every source's dispatch (sender twin for each), then each
 * receiver's index (receiver twin), and the combines of moe.c on those layouts
 * (receiver: pairs into rows, weighted; sender: rows into tokens) for `cs`. */
static void ep_group(int N, int K, int E, int P, int mode, const int *cs, int ncs) {
    const char *what = twin_fmt("N=%d K=%d E=%d P=%d %s", N, K, E, P,
                           mode == 0 ? "routed" : mode == 1 ? "all on rank 0" : mode == 2 ? "half local" : "local but src 0");
    char name[128];
    snprintf(name, sizeof name, "%s", what);
    routing rt[64];
    dispatch dp[64];
    for (int q = 0; q < P; q++) {
        rt[q] = make_routing(N, K, E, P, mode, q, 300 + 7 * (uint64_t)q);
        dp[q] = cpu_dispatch(&rt[q]);
        if (q < 2 || q == P - 1) check_dispatch(&rt[q], &dp[q], twin_fmt("%s src %d", name, q));
    }
    for (int me = 0; me < P; me++) {
        if (me > 1 && me < P - 1 && mode < 1) continue; /* ranks 0, 1 and the last */
        received v = receive(dp, P, me, &rt[0]);
        recv_index c = cpu_receive(&v, P);
        char rn[160];
        snprintf(rn, sizeof rn, "%s at %d: R=%d Pr=%d G=%d", name, me, v.R, v.Pr, v.G);
        check_receive(&v, &c, P, rn);
        for (int i = 0; i < ncs && me == 0; i++) /* ye [Pr,C] expert-major -> xr [R,C] */
            combine_seg(c.poff, c.pinv, c.pw, v.R, v.Pr, cs[i], 0.0f, twin_fmt("%s pairs->rows", rn));
        recv_free(&c);
        free(v.rmeta);
    }
    for (int i = 0; i < ncs; i++) { /* ys [S,C] -> out [N,C] (w NULL), and dx += (beta 1) */
        combine_seg(dp[0].toff, dp[0].trows, NULL, N, dp[0].S, cs[i], 0.0f, twin_fmt("%s rows->tokens", name));
        combine_seg(dp[0].toff, dp[0].trows, NULL, N, dp[0].S, cs[i], 1.0f, twin_fmt("%s rows->tokens", name));
    }
    for (int q = 0; q < P; q++) free(rt[q].idx), free(rt[q].w), dispatch_free(&dp[q]);
}

/* ---- The wire: n rows of C values packed in place and back ---- */

static void wire(int n, int C, int wire) {
    const char *what = twin_fmt("n=%d C=%d %s", n, C, wire == OPS_WIRE_F32 ? "f32" : wire == OPS_WIRE_BF16 ? "bf16" : "fp8");
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    const size_t nc = (size_t)n * C, rb = ops_wire_row_bytes(C, wire);
    float *x = twin_host(nc, 401 + (uint64_t)C, -3, 3);
    for (size_t i = 0; i < nc; i++) {
        int c = (int)(i % (size_t)C);
        if (c % 11 == 3) x[i] *= 1e-4f;       /* e4m3 subnormals beside the block's amax */
        if (c % 17 == 5) x[i] = -0.0f;
        if (c % 29 == 7) x[i] *= 3e4f;        /* a block with a large amax */
        if (c % 37 == 1) x[i] = 1.00390625f;  /* bf16: a tie, rounds to even */
    }
    if (n > 2)
        for (int c = 0; c < C; c++) x[(size_t)2 * C + c] = 0.0f; /* an all-zero row: scale 1 */
    float *buf = malloc(nc * 4 + 4);
    memcpy(buf, x, nc * 4);
    float *d = twin_dev(x, nc * 4);
    ops_wire_pack(buf, n, C, wire);
    CK(cu_wire_pack(d, n, C, wire, twin_s));
    unsigned char *g = twin_back(d, n * rb);
    twin_same("ops_wire_pack", name, g, buf, n * rb);
    free(g);
    ops_wire_unpack(buf, n, C, wire);
    CK(cu_wire_unpack(d, n, C, wire, twin_s));
    g = twin_back(d, nc * 4);
    twin_same("ops_wire_unpack", name, g, buf, nc * 4);
    free(g), free(x), free(buf);
    twin_free(d);
}

int main(void) {
    twin_init();
    const int c_small[2] = {7, 300}, c_wide[1] = {7168};
    ep_group(128, 2, 8, 2, 0, c_small, 2);  /* tiny deck, EP 2 */
    ep_group(128, 2, 8, 4, 0, c_small, 1);  /* tiny deck, EP 4 */
    ep_group(40, 3, 12, 5, 0, c_small, 1);  /* uneven: 3,3,2,2,2 experts */
    ep_group(40, 2, 12, 5, 2, c_small, 1);  /* even tokens: no remote destination */
    ep_group(17, 2, 8, 4, 1, c_small, 1);   /* all on rank 0: ranks 1..3 receive nothing */
    ep_group(19, 2, 12, 5, 3, c_small, 1);  /* sources that send a rank nothing, between others */
    ep_group(33, 1, 4, 5, 0, NULL, 0);      /* 4 experts on 5 ranks: the last owns none */
    ep_group(64, 8, 256, 8, 0, NULL, 0);    /* DeepSeek-V3 routing, EP 8 */
    ep_group(700, 8, 256, 16, 0, NULL, 0);  /* DeepSeek-V3 routing, EP 16, 3 dispatch chunks (the last partial) */
    ep_group(512, 2, 12, 5, 2, NULL, 0);    /* 2 whole chunks, half the tokens local */
    ep_group(3, 8, 256, 8, 0, c_wide, 1);   /* a 7168-wide row */
    ep_group(1, 2, 8, 2, 0, c_small, 1);    /* one token */
    ep_group(0, 2, 8, 2, 0, NULL, 0);       /* no tokens */

    for (int wv = OPS_WIRE_F32; wv <= OPS_WIRE_FP8; wv++) {
        wire(1, 7, wv);
        wire(5, 300, wv);
        wire(3, 7168, wv);
        wire(41, 7, wv);  /* several waves */
        wire(70, 2, wv);  /* fp8: 6 of 8 bytes per row, the slowest waves */
    }
    wire(200, 130, OPS_WIRE_FP8);
    return twin_end();
}
