/* test_moe.c — feed-forward side: SwiGLU, dense MLP, routing (against a
 * brute-force reference), the balance loss, the MoE layer (EP=1) with
 * finite-difference gradient checks, the bias update, determinism. */
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../src/model/mlp.h"
#include "../src/model/moe.h"
#include "../src/ops.h"
#include "moe_fixture.h"

/* ------------------------------------------------------------------ helpers */

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static double urand(void) {
    uint64_t z = fx_mix(rng++);
    return (z >> 11) * (1.0 / 9007199254740992.0);
}
static float *frand(size_t n, float lo, float hi) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * urand());
    return p;
}
static float *fzeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }
static double dotd(const float *a, const float *r, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * r[i];
    return s;
}

/* loss(ctx) returns the loss, or NAN when the perturbation changed a discrete
 * choice (routing) — that coordinate is then skipped. */
typedef double (*loss_fn)(void *ctx);

/* Central differences on every entry of p (n small) against the analytic g:
 * |g − num| <= rtol·max(|g|,|num|) + atol·max|num| for every checked entry. */
static void fd_check(const char *name, float *p, const float *g, size_t n, loss_fn loss, void *ctx, double h,
                     double rtol, double atol) {
    double *num = malloc(n * sizeof *num);
    double gmax = 0;
    int skipped = 0;
    for (size_t i = 0; i < n; i++) {
        float save = p[i];
        p[i] = (float)(save + h);
        double hp = (double)p[i] - save, lp = loss(ctx);
        p[i] = (float)(save - h);
        double hm = save - (double)p[i], lm = loss(ctx);
        p[i] = save;
        num[i] = (lp - lm) / (hp + hm);
        if (isnan(num[i])) skipped++;
        else if (fabs(num[i]) > gmax) gmax = fabs(num[i]);
    }
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(num[i])) continue;
        double err = fabs(num[i] - g[i]);
        if (err > rtol * fmax(fabs(num[i]), fabs(g[i])) + atol * gmax) {
            if (bad < 5) fprintf(stderr, "%s[%zu]: analytic %.6g numeric %.6g\n", name, i, g[i], num[i]);
            bad++;
        }
    }
    printf("  fd %-14s n=%zu skipped=%d max|g|=%.3g bad=%d\n", name, n, skipped, gmax, bad);
    assert_true(skipped <= (int)n / 4);
    assert_int_equal(bad, 0);
    free(num);
}

/* ------------------------------------------------------------------ swiglu */

typedef struct {
    float *gu, *h, *r;
    int T, I;
} sw_ctx;
static double sw_loss(void *p) {
    sw_ctx *c = p;
    ops_swiglu_forward(c->h, c->gu, 2 * c->I, c->gu + c->I, 2 * c->I, c->T, c->I);
    return dotd(c->h, c->r, (size_t)c->T * c->I);
}

static void test_swiglu_fd(void **st) {
    (void)st;
    int T = 5, I = 7;
    sw_ctx c = {frand((size_t)T * 2 * I, -3, 3), fzeros((size_t)T * I), frand((size_t)T * I, -1, 1), T, I};
    float *dgu = fzeros((size_t)T * 2 * I);
    /* fused layout [T,2I]: gate then up */
    ops_swiglu_backward(dgu, 2 * I, dgu + I, 2 * I, c.r, c.gu, 2 * I, c.gu + I, 2 * I, T, I);
    fd_check("swiglu", c.gu, dgu, (size_t)T * 2 * I, sw_loss, &c, 1e-3, 1e-3, 1e-4);
    /* separate buffers give the same values, and backward accumulates */
    float *g = fzeros((size_t)T * I), *u = fzeros((size_t)T * I), *h2 = fzeros((size_t)T * I);
    ops_copy_cols(g, I, c.gu, 2 * I, 0, I, T);
    ops_copy_cols(u, I, c.gu, 2 * I, I, I, T);
    ops_swiglu_forward(h2, g, I, u, I, T, I);
    sw_loss(&c);
    assert_memory_equal(h2, c.h, (size_t)T * I * sizeof(float));
    float *dg = fzeros((size_t)T * I), *du = fzeros((size_t)T * I);
    ops_swiglu_backward(dg, I, du, I, c.r, g, I, u, I, T, I);
    ops_swiglu_backward(dg, I, du, I, c.r, g, I, u, I, T, I);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < I; i++) {
            assert_float_equal(dg[t * I + i], 2 * dgu[t * 2 * I + i], 1e-6);
            assert_float_equal(du[t * I + i], 2 * dgu[t * 2 * I + I + i], 1e-6);
        }
    free(c.gu), free(c.h), free(c.r), free(dgu), free(g), free(u), free(h2), free(dg), free(du);
}

/* ------------------------------------------------------------------ mlp */

typedef struct {
    mlp_layer l;
    mlp_cache c;
    ops_arena a;
    float *x, *out, *r;
    int N, H;
} mlp_ctx;
static double mlp_loss(void *p) {
    mlp_ctx *c = p;
    mlp_forward(&c->l, &c->c, c->out, c->x, c->N, &c->a);
    return dotd(c->out, c->r, (size_t)c->N * c->H);
}

static void test_mlp_fd(void **st) {
    (void)st;
    int N = 6, H = 8, I = 10;
    mlp_ctx c = {0};
    c.N = N, c.H = H;
    c.l.gate = (linear){.w = frand((size_t)I * H, -0.4f, 0.4f), .g = fzeros((size_t)I * H), .in = H, .out = I};
    c.l.up = (linear){.w = frand((size_t)I * H, -0.4f, 0.4f), .g = fzeros((size_t)I * H), .in = H, .out = I};
    /* LoRA on up (r = 2) exercises the linear caches */
    c.l.up.r = 2, c.l.up.scaling = 1.5f;
    c.l.up.A = frand(2 * (size_t)H, -0.4f, 0.4f), c.l.up.gA = fzeros(2 * (size_t)H);
    c.l.up.B = frand((size_t)I * 2, -0.4f, 0.4f), c.l.up.gB = fzeros((size_t)I * 2);
    c.l.down = (linear){.w = frand((size_t)H * I, -0.3f, 0.3f), .g = fzeros((size_t)H * I), .in = I, .out = H};
    assert_int_equal(mlp_cache_alloc(&c.c, &c.l, N), 0);
    assert_true(mlp_cache_floats(&c.l, N) == (size_t)N * (H + 6 * I + 2));
    /* scratch: exactly what mlp_scratch_floats says (any more would end the test) */
    assert_int_equal(ops_arena_create(&c.a, mlp_scratch_floats(H, I, 2, 0, N)), 0);
    c.x = frand((size_t)N * H, -1, 1), c.out = fzeros((size_t)N * H), c.r = frand((size_t)N * H, -1, 1);
    float *dx = fzeros((size_t)N * H);
    mlp_loss(&c);
    mlp_backward(&c.l, &c.c, dx, c.r, N, &c.a);
    assert_true(c.a.used == 0 && c.a.peak > 0 && c.a.peak <= c.a.cap);
    fd_check("mlp dx", c.x, dx, (size_t)N * H, mlp_loss, &c, 1e-3, 2e-3, 2e-4);
    fd_check("mlp gate", c.l.gate.w, c.l.gate.g, (size_t)I * H, mlp_loss, &c, 1e-3, 2e-3, 2e-4);
    fd_check("mlp up", c.l.up.w, c.l.up.g, (size_t)I * H, mlp_loss, &c, 1e-3, 2e-3, 2e-4);
    fd_check("mlp up.A", c.l.up.A, c.l.up.gA, 2 * (size_t)H, mlp_loss, &c, 1e-3, 2e-3, 2e-4);
    fd_check("mlp up.B", c.l.up.B, c.l.up.gB, (size_t)I * 2, mlp_loss, &c, 1e-3, 2e-3, 2e-4);
    fd_check("mlp down", c.l.down.w, c.l.down.g, (size_t)H * I, mlp_loss, &c, 1e-3, 2e-3, 2e-4);
    mlp_cache_free(&c.c);
    ops_arena_destroy(&c.a);
    free(c.x), free(c.out), free(c.r), free(dx);
    free(c.l.gate.w), free(c.l.gate.g), free(c.l.up.w), free(c.l.up.g), free(c.l.up.A), free(c.l.up.gA);
    free(c.l.up.B), free(c.l.up.gB), free(c.l.down.w), free(c.l.down.g);
}

/* ------------------------------------------------------------------ routing */

typedef struct {
    double v;
    int i;
} vi;
static int vi_desc(const void *a, const void *b) {
    const vi *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i - y->i;
}

/* Brute force, literally as spec §5 says: −inf outside the kept groups, full sorts. */
static void route_ref(int *idx, double *w, const float *s, const float *bias, int E, int K, int ng, int kg, int norm,
                      double scale) {
    double *sc = malloc(E * sizeof *sc);
    vi *a = malloc(E * sizeof *a);
    for (int e = 0; e < E; e++) sc[e] = (double)(s[e] + (bias ? bias[e] : 0.0f));
    if (ng > 1) {
        int gs = E / ng;
        vi *gv = malloc(ng * sizeof *gv);
        for (int g = 0; g < ng; g++) {
            for (int j = 0; j < gs; j++) a[j] = (vi){sc[g * gs + j], j};
            qsort(a, gs, sizeof *a, vi_desc);
            gv[g] = (vi){gs >= 2 ? a[0].v + a[1].v : a[0].v, g};
        }
        qsort(gv, ng, sizeof *gv, vi_desc);
        for (int j = kg; j < ng; j++)
            for (int e = gv[j].i * gs; e < (gv[j].i + 1) * gs; e++) sc[e] = -INFINITY;
        free(gv);
    }
    for (int e = 0; e < E; e++) a[e] = (vi){sc[e], e};
    qsort(a, E, sizeof *a, vi_desc);
    double S = 0;
    for (int k = 0; k < K; k++) idx[k] = a[k].i, S += s[a[k].i];
    for (int k = 0; k < K; k++) w[k] = scale * s[idx[k]] / (norm ? S : 1.0);
    free(sc), free(a);
}

static void check_route(int T, int E, int K, int ng, int kg, float blo, float bhi, int norm) {
    float *s = frand((size_t)T * E, 0.0f, 1.0f), *bias = frand((size_t)E, blo, bhi);
    int *idx = malloc((size_t)T * K * sizeof *idx), ridx[64];
    float *w = fzeros((size_t)T * K);
    double rw[64];
    ops_moe_route(idx, w, s, bias, T, E, K, ng, kg, norm, 2.5f);
    int neg = 0;
    for (int t = 0; t < T; t++) {
        route_ref(ridx, rw, s + (size_t)t * E, bias, E, K, ng, kg, norm, 2.5);
        for (int k = 0; k < K; k++) {
            assert_int_equal(idx[t * K + k], ridx[k]);
            assert_float_equal(w[t * K + k], rw[k], 1e-5);
            if (s[t * E + ridx[k]] + bias[ridx[k]] < 0) neg++;
        }
    }
    if (bhi < 0.0f) assert_true(neg == T * K); /* only negative biased scores to choose from */
    free(s), free(bias), free(idx), free(w);
}

static void test_route_reference(void **st) {
    (void)st;
    check_route(200, 16, 4, 4, 2, -1.5f, 0.5f, 1);  /* group-limited, negative biased scores */
    check_route(200, 12, 2, 3, 1, -1.5f, 0.2f, 1);  /* one group kept */
    check_route(100, 8, 4, 4, 2, -2.0f, -1.2f, 1);  /* every biased score negative */
    check_route(100, 8, 2, 8, 3, -0.5f, 0.5f, 0);   /* groups of one expert, no normalisation */
    check_route(100, 32, 8, 8, 4, -1.5f, 0.5f, 1);  /* DeepSeek-V3 proportions */
    check_route(100, 10, 3, 1, 1, -0.5f, 0.5f, 1);  /* no groups */
}

/* −inf, not 0: all biased scores negative, so zero-masked experts would win. */
static void test_route_masks_with_neg_inf(void **st) {
    (void)st;
    int E = 8, K = 4, T = 50;
    float *s = frand((size_t)T * E, 0.0f, 0.5f), bias[8];
    for (int e = 0; e < E; e++) bias[e] = -1.0f;
    int idx[200];
    ops_moe_route(idx, NULL, s, bias, T, E, K, 4, 2, 1, 1.0f);
    for (int t = 0; t < T; t++) {
        /* group score = sum of its 2 (biased) scores; the chosen experts must all lie in the
         * 2 best groups (zero-masking would pick the excluded groups' experts instead) */
        vi g[4];
        for (int q = 0; q < 4; q++) g[q] = (vi){(double)(s[t * E + 2 * q] - 1.0f) + (s[t * E + 2 * q + 1] - 1.0f), q};
        qsort(g, 4, sizeof *g, vi_desc);
        for (int k = 0; k < K; k++) {
            int q = idx[t * K + k] / 2;
            assert_true(q == g[0].i || q == g[1].i);
        }
    }
    free(s);
}

typedef struct {
    float *lg, *s, *w, *r;
    int *idx, *idx0;
    int T, E, K, norm;
} rb_ctx;
static double rb_loss(void *p) {
    rb_ctx *c = p;
    ops_sigmoid(c->s, c->lg, (size_t)c->T * c->E);
    ops_moe_route(c->idx, c->w, c->s, NULL, c->T, c->E, c->K, 2, 1, c->norm, 2.5f);
    if (memcmp(c->idx, c->idx0, (size_t)c->T * c->K * sizeof(int))) return NAN;
    return dotd(c->w, c->r, (size_t)c->T * c->K);
}

static void test_route_backward_fd(void **st) {
    (void)st;
    for (int norm = 0; norm <= 1; norm++) {
        rb_ctx c = {.T = 6, .E = 8, .K = 3, .norm = norm};
        size_t TE = (size_t)c.T * c.E, TK = (size_t)c.T * c.K;
        c.lg = frand(TE, -3, 3), c.s = fzeros(TE), c.w = fzeros(TK), c.r = frand(TK, -1, 1);
        c.idx = malloc(TK * sizeof(int)), c.idx0 = malloc(TK * sizeof(int));
        ops_sigmoid(c.s, c.lg, TE);
        ops_moe_route(c.idx0, c.w, c.s, NULL, c.T, c.E, c.K, 2, 1, norm, 2.5f);
        float *dl = fzeros(TE);
        ops_moe_route_backward(dl, c.r, c.s, c.idx0, c.T, c.E, c.K, norm, 2.5f);
        fd_check(norm ? "route norm" : "route plain", c.lg, dl, TE, rb_loss, &c, 1e-3, 2e-3, 2e-4);
        free(c.lg), free(c.s), free(c.w), free(c.r), free(c.idx), free(c.idx0), free(dl);
    }
}

/* ------------------------------------------------------------------ balance loss */

static void test_balance_value(void **st) {
    (void)st;
    int B = 3, T = 7, E = 8, K = 2;
    size_t N = (size_t)B * T;
    float *s = frand(N * E, 0.01f, 1.0f);
    int *tk = malloc(N * K * sizeof *tk);
    ops_moe_route(tk, NULL, s, NULL, (int)N, E, K, 1, 1, 0, 1.0f);
    double ref = 0;
    for (int b = 0; b < B; b++) {
        double f[8] = {0}, P[8] = {0};
        for (int t = 0; t < T; t++) {
            const float *st = s + ((size_t)b * T + t) * E;
            /* plain top-K over the unbiased scores, brute force */
            vi a[8];
            for (int e = 0; e < E; e++) a[e] = (vi){st[e], e};
            qsort(a, E, sizeof *a, vi_desc);
            for (int k = 0; k < K; k++) f[a[k].i] += (double)E / (K * T);
            double S = 0;
            for (int e = 0; e < E; e++) S += st[e];
            for (int e = 0; e < E; e++) P[e] += st[e] / S / T;
        }
        for (int e = 0; e < E; e++) ref += f[e] * P[e];
    }
    double v = ops_moe_balance(s, tk, B, T, E, K);
    assert_float_equal(v, ref, 1e-6 * fabs(ref));
    /* perfectly uniform scores give exactly 1 per sequence */
    for (size_t i = 0; i < N * E; i++) s[i] = 0.5f;
    ops_moe_route(tk, NULL, s, NULL, (int)N, E, K, 1, 1, 0, 1.0f);
    assert_float_equal(ops_moe_balance(s, tk, B, T, E, K), (double)B, 1e-6);
    free(s), free(tk);
}

typedef struct {
    float *lg, *s;
    int *tk, *tk0;
    int B, T, E, K;
} bal_ctx;
static double bal_loss_fn(void *p) {
    bal_ctx *c = p;
    size_t N = (size_t)c->B * c->T;
    ops_sigmoid(c->s, c->lg, N * c->E);
    ops_moe_route(c->tk, NULL, c->s, NULL, (int)N, c->E, c->K, 1, 1, 0, 1.0f);
    if (memcmp(c->tk, c->tk0, N * c->K * sizeof(int))) return NAN;
    return 0.7 * ops_moe_balance(c->s, c->tk, c->B, c->T, c->E, c->K);
}

static void test_balance_backward_fd(void **st) {
    (void)st;
    bal_ctx c = {.B = 2, .T = 5, .E = 8, .K = 3};
    size_t N = (size_t)c.B * c.T, NE = N * c.E;
    c.lg = frand(NE, -2, 2), c.s = fzeros(NE);
    c.tk = malloc(N * c.K * sizeof(int)), c.tk0 = malloc(N * c.K * sizeof(int));
    ops_sigmoid(c.s, c.lg, NE);
    ops_moe_route(c.tk0, NULL, c.s, NULL, (int)N, c.E, c.K, 1, 1, 0, 1.0f);
    float *dl = fzeros(NE);
    ops_moe_balance_backward(dl, c.s, c.tk0, c.B, c.T, c.E, c.K, 0.7f);
    fd_check("balance", c.lg, dl, NE, bal_loss_fn, &c, 1e-3, 2e-3, 2e-4);
    free(c.lg), free(c.s), free(c.tk), free(c.tk0), free(dl);
}

/* ------------------------------------------------------------------ MoE layer */

typedef struct {
    moe_fix f;
    moe_layer l;
    moe_cache c;
    ops_arena a;
    float *x, *out, *r;
    int *idx0, *tk0;
    int B, T;
    float bal_scale;
} moe_ctx;

static double moe_loss(void *p) {
    moe_ctx *c = p;
    int N = c->B * c->T;
    double bal = 0;
    moe_forward(&c->f.m, &c->l, &c->c, MPI_COMM_SELF, c->out, c->x, c->B, c->T, NULL, &bal, c->bal_scale, &c->a);
    if (memcmp(c->c.idx, c->idx0, (size_t)N * c->f.K * sizeof(int))) return NAN;
    if (c->f.m.aux_loss_alpha > 0 && memcmp(c->c.topk_u, c->tk0, (size_t)N * c->f.K * sizeof(int))) return NAN;
    return (c->r ? dotd(c->out, c->r, (size_t)N * c->f.H) : 0.0) + c->bal_scale * bal;
}

static void moe_setup(moe_ctx *c, int B, int T, double alpha, int with_r) {
    memset(c, 0, sizeof *c);
    rng = 1000 + (uint64_t)(B * T) * 7 + (uint64_t)with_r; /* data independent of the test order */
    /* E=8 in 4 groups of 2, keep 2 groups, top-3; shared expert; non-zero biases */
    fx_init(&c->f, 8, 6, 5, 3, 4, 2, 1, alpha, 42);
    c->l = fx_layer(&c->f, 0, 8);
    c->B = B, c->T = T, c->bal_scale = 0.8f;
    int N = B * T;
    assert_int_equal(moe_cache_alloc(&c->c, &c->f.m, &c->l, 1, N, 0), 0);
    assert_int_equal(c->c.r_cap, N * 3);
    assert_int_equal(ops_arena_create(&c->a, moe_scratch_floats(&c->f.m, 0, 0, N)), 0);
    c->x = frand((size_t)N * c->f.H, -1.5f, 1.5f), c->out = fzeros((size_t)N * c->f.H);
    c->r = with_r ? frand((size_t)N * c->f.H, -1, 1) : NULL;
    c->idx0 = malloc((size_t)N * 3 * sizeof(int) + 4), c->tk0 = malloc((size_t)N * 3 * sizeof(int) + 4);
}

static void moe_teardown(moe_ctx *c) {
    moe_cache_free(&c->c);
    ops_arena_destroy(&c->a);
    fx_free(&c->f);
    free(c->x), free(c->out), free(c->r), free(c->idx0), free(c->tk0);
}

/* forward + backward at the base point; returns dx */
static float *moe_grads(moe_ctx *c) {
    int N = c->B * c->T, H = c->f.H;
    double bal = 0;
    int64_t counts[8] = {0};
    fx_zero_grads(&c->f);
    moe_forward(&c->f.m, &c->l, &c->c, MPI_COMM_SELF, c->out, c->x, c->B, c->T, counts, &bal, c->bal_scale,
                &c->a);
    memcpy(c->idx0, c->c.idx, (size_t)N * 3 * sizeof(int));
    memcpy(c->tk0, c->c.topk_u, (size_t)N * 3 * sizeof(int));
    int64_t tot = 0;
    for (int e = 0; e < 8; e++) tot += counts[e];
    assert_int_equal(tot, (int64_t)N * 3);
    float *dout = c->r ? c->r : fzeros((size_t)N * H);
    float *dx = fzeros((size_t)N * H);
    moe_backward(&c->f.m, &c->l, &c->c, MPI_COMM_SELF, dx, dout, &c->a);
    if (!c->r) free(dout);
    return dx;
}

static void test_moe_layer_fd(void **st) {
    (void)st;
    moe_ctx c;
    moe_setup(&c, 2, 5, 0.05, 1);
    float *dx = moe_grads(&c);
    moe_fix *f = &c.f;
    size_t NH = (size_t)c.B * c.T * f->H, EIH = (size_t)f->E * f->I * f->H, IsH = (size_t)f->Is * f->H;
    double h = 2e-3, rt = 5e-3, at = 1e-3;
    fd_check("moe dx", c.x, dx, NH, moe_loss, &c, h, rt, at);
    fd_check("moe router", f->gate_w, f->gate_g, (size_t)f->E * f->H, moe_loss, &c, h, rt, at);
    fd_check("moe experts.g", f->eg, f->geg, EIH, moe_loss, &c, h, rt, at);
    fd_check("moe experts.u", f->eu, f->geu, EIH, moe_loss, &c, h, rt, at);
    fd_check("moe experts.d", f->ed, f->ged, EIH, moe_loss, &c, h, rt, at);
    fd_check("moe shared.g", f->sg, f->gsg, IsH, moe_loss, &c, h, rt, at);
    fd_check("moe shared.u", f->su, f->gsu, IsH, moe_loss, &c, h, rt, at);
    fd_check("moe shared.d", f->sd, f->gsd, IsH, moe_loss, &c, h, rt, at);
    free(dx);
    moe_teardown(&c);
}

/* The balance-loss path alone (dout = 0): its gradient reaches x and the router. */
static void test_moe_balance_fd(void **st) {
    (void)st;
    moe_ctx c;
    moe_setup(&c, 3, 4, 0.5, 0);
    float *dx = moe_grads(&c);
    moe_fix *f = &c.f;
    double ng = 0;
    for (size_t i = 0; i < (size_t)f->E * f->H; i++) ng += fabs(f->gate_g[i]);
    assert_true(ng > 1e-4);
    fd_check("bal dx", c.x, dx, (size_t)c.B * c.T * f->H, moe_loss, &c, 1e-3, 5e-3, 1e-3);
    fd_check("bal router", f->gate_w, f->gate_g, (size_t)f->E * f->H, moe_loss, &c, 1e-3, 5e-3, 1e-3);
    /* α = 0 switches it off */
    f->m.aux_loss_alpha = 0;
    double bal = 0;
    moe_forward(&f->m, &c.l, &c.c, MPI_COMM_SELF, c.out, c.x, c.B, c.T, NULL, &bal, 1.0f, &c.a);
    assert_true(bal == 0.0);
    free(dx);
    moe_teardown(&c);
}

/* Forward equals a direct per-token evaluation of spec §5 in double. */
static void test_moe_forward_reference(void **st) {
    (void)st;
    moe_ctx c;
    moe_setup(&c, 2, 6, 0.0, 1);
    moe_fix *f = &c.f;
    int N = c.B * c.T, H = f->H, I = f->I, E = f->E;
    moe_forward(&f->m, &c.l, &c.c, MPI_COMM_SELF, c.out, c.x, c.B, c.T, NULL, NULL, 0.0f, &c.a);
    for (int t = 0; t < N; t++) {
        const float *xt = c.x + (size_t)t * H;
        float s[8];
        for (int e = 0; e < E; e++) {
            double a = 0;
            for (int j = 0; j < H; j++) a += (double)f->gate_w[e * H + j] * xt[j];
            s[e] = (float)(1 / (1 + exp(-a)));
        }
        int idx[3];
        double w[3];
        route_ref(idx, w, s, f->bias, E, 3, 4, 2, 1, 2.5);
        double y[16] = {0};
        for (int k = 0; k <= 3; k++) { /* k = 3: shared expert, weight 1 */
            const float *G = k < 3 ? f->eg + (size_t)idx[k] * I * H : f->sg;
            const float *U = k < 3 ? f->eu + (size_t)idx[k] * I * H : f->su;
            const float *D = k < 3 ? f->ed + (size_t)idx[k] * I * H : f->sd;
            double wk = k < 3 ? w[k] : 1.0;
            for (int i = 0; i < I; i++) {
                double g = 0, u = 0;
                for (int j = 0; j < H; j++) g += (double)G[i * H + j] * xt[j], u += (double)U[i * H + j] * xt[j];
                double hh = g / (1 + exp(-g)) * u;
                for (int o = 0; o < H; o++) y[o] += wk * D[o * I + i] * hh;
            }
        }
        for (int o = 0; o < H; o++) assert_float_equal(c.out[(size_t)t * H + o], y[o], 1e-5);
    }
    moe_teardown(&c);
}

/* Zero local tokens: forward/backward run and leave dx untouched. */
static void test_moe_zero_tokens(void **st) {
    (void)st;
    moe_fix f;
    fx_init(&f, 8, 6, 5, 3, 4, 2, 1, 0.1, 7);
    moe_layer l = fx_layer(&f, 0, 8);
    moe_cache c;
    assert_int_equal(moe_cache_alloc(&c, &f.m, &l, 1, 0, 0), 0);
    float out[1] = {0}, dx[1] = {0}, x[1] = {0};
    double bal = 0;
    int64_t counts[8] = {0};
    ops_arena a;
    assert_int_equal(ops_arena_create(&a, moe_scratch_floats(&f.m, 0, 0, 0)), 0);
    moe_forward(&f.m, &l, &c, MPI_COMM_SELF, out, x, 0, 4, counts, &bal, 1.0f, &a);
    moe_backward(&f.m, &l, &c, MPI_COMM_SELF, dx, out, &a);
    ops_arena_destroy(&a);
    assert_true(bal == 0.0 && dx[0] == 0.0f);
    for (int e = 0; e < 8; e++) assert_int_equal(counts[e], 0);
    moe_cache_free(&c);
    fx_free(&f);
}

/* Row buffers smaller than the rows that arrive grow instead of failing. */
static void test_moe_cache_grows(void **st) {
    (void)st;
    moe_ctx a, b;
    moe_setup(&a, 2, 5, 0.0, 1);
    moe_setup(&b, 2, 5, 0.0, 1);
    moe_cache_free(&b.c);
    assert_int_equal(moe_cache_alloc(&b.c, &b.f.m, &b.l, 1, 10, 4), 0);
    memcpy(b.x, a.x, 60 * sizeof(float));
    memcpy(b.r, a.r, 60 * sizeof(float));
    float *dxa = moe_grads(&a), *dxb = moe_grads(&b);
    assert_true(b.c.grow_events == 1 && b.c.r_cap == 30);
    assert_memory_equal(a.out, b.out, 60 * sizeof(float));
    assert_memory_equal(dxa, dxb, 60 * sizeof(float));
    assert_true(moe_rows_expected(10, 3) == 30 && moe_rows_bound(10, 3, 2, 4) == 80);
    assert_true(moe_cache_floats(&a.f.m, &a.l, 1, 10, 0) > 0);
    free(dxa), free(dxb);
    moe_teardown(&a), moe_teardown(&b);
}

/* Same input → bitwise the same outputs and gradients, for 1 and 4 threads. */
static void test_moe_determinism(void **st) {
    (void)st;
    int nt0 = omp_get_max_threads();
    float *ref_out = NULL, *ref_dx = NULL, *ref_gg = NULL, *ref_geg = NULL;
    const int B = 4, T = 64; /* 256 tokens: the parallel loops really split */
    for (int run = 0; run < 3; run++) {
        omp_set_num_threads(run == 2 ? 4 : 1);
        moe_ctx c;
        memset(&c, 0, sizeof c);
        fx_init(&c.f, 16, 32, 24, 4, 4, 2, 1, 0.01, 9);
        c.l = fx_layer(&c.f, 0, 16);
        c.B = B, c.T = T, c.bal_scale = 0.5f;
        int N = B * T, H = 32;
        assert_int_equal(moe_cache_alloc(&c.c, &c.f.m, &c.l, 1, N, 0), 0);
        rng = 777;
        c.x = frand((size_t)N * H, -1, 1), c.out = fzeros((size_t)N * H), c.r = frand((size_t)N * H, -1, 1);
        double bal = 0;
        assert_int_equal(ops_arena_create(&c.a, moe_scratch_floats(&c.f.m, 0, 0, N)), 0);
        moe_forward(&c.f.m, &c.l, &c.c, MPI_COMM_SELF, c.out, c.x, B, T, NULL, &bal, c.bal_scale, &c.a);
        float *dx = fzeros((size_t)N * H);
        moe_backward(&c.f.m, &c.l, &c.c, MPI_COMM_SELF, dx, c.r, &c.a);
        ops_arena_destroy(&c.a);
        size_t EH = 16 * 32, EIH = 16 * 24 * 32;
        if (run == 0) {
            ref_out = c.out, c.out = NULL, ref_dx = dx, dx = NULL;
            ref_gg = malloc(EH * 4), memcpy(ref_gg, c.f.gate_g, EH * 4);
            ref_geg = malloc(EIH * 4), memcpy(ref_geg, c.f.geg, EIH * 4);
        } else {
            assert_memory_equal(ref_out, c.out, (size_t)N * H * 4);
            assert_memory_equal(ref_dx, dx, (size_t)N * H * 4);
            assert_memory_equal(ref_gg, c.f.gate_g, EH * 4);
            assert_memory_equal(ref_geg, c.f.geg, EIH * 4);
        }
        free(dx);
        moe_cache_free(&c.c);
        fx_free(&c.f);
        free(c.x), free(c.out), free(c.r);
    }
    omp_set_num_threads(nt0);
    free(ref_out), free(ref_dx), free(ref_gg), free(ref_geg);
}

/* ------------------------------------------------------------------ balancing state */

static void test_bias_update(void **st) {
    (void)st;
    float b[5] = {0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
    int64_t c[5] = {6, 2, 4, 4, 4}; /* mean 4 */
    moe_bias_update(b, c, 5, 0.01f);
    assert_float_equal(b[0], 0.09f, 1e-7); /* overloaded: down */
    assert_float_equal(b[1], 0.11f, 1e-7); /* underloaded: up */
    assert_float_equal(b[2], 0.10f, 1e-7); /* at the mean: unchanged */
    moe_bias_update(b, c, 5, 0.0f);
    assert_float_equal(b[1], 0.11f, 1e-7);
    int64_t d[4] = {6, 2, 2, 2}, z[4] = {0};
    assert_float_equal(moe_load_imbalance(d, 4), 2.0, 1e-12);
    assert_float_equal(moe_load_imbalance(z, 4), 1.0, 1e-12);
}

/* The wire, packed and widened in place, equals the out-of-place rounding:
 * bf16 round to nearest even; fp8 e4m3 of x/scale times scale, scale =
 * amax/448 per 1x128 block of a row. Rows of 300 values (3 blocks, the last
 * partial) and of 7; the packed row i starts at byte i·ops_wire_row_bytes. */
static void test_wire_pack(void **st) {
    (void)st;
    const int Cs[2] = {300, 7}, n = 5;
    for (int ci = 0; ci < 2; ci++)
        for (int wire = OPS_WIRE_BF16; wire <= OPS_WIRE_FP8; wire++) {
            int C = Cs[ci];
            size_t nc = (size_t)n * C;
            float *x = malloc(nc * 4), *ref = malloc(nc * 4), *buf = malloc(nc * 4);
            fx_fill(x, nc, 77, (uint64_t)(C + wire), -3.0f, 3.0f);
            for (int c = 0; c < C; c++) x[2 * C + c] = 0.0f; /* an all-zero row: scale 1 */
            x[C + 5] = 1e4f;                                  /* one block with a large amax */
            for (int i = 0; i < n; i++)
                for (int b0 = 0; b0 < C; b0 += 128) {
                    int b1 = b0 + 128 < C ? b0 + 128 : C;
                    float amax = 0.0f;
                    for (int c = b0; c < b1; c++) amax = fmaxf(amax, fabsf(x[i * C + c]));
                    float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
                    for (int c = b0; c < b1; c++) {
                        float v = x[i * C + c];
                        ref[i * C + c] = wire == OPS_WIRE_BF16 ? ops_bf16_to_f32(ops_f32_to_bf16(v))
                                                               : ops_e4m3_to_f32(ops_f32_to_e4m3(v / sc)) * sc;
                    }
                }
            memcpy(buf, x, nc * 4);
            ops_wire_pack(buf, n, C, wire);
            size_t rb = ops_wire_row_bytes(C, wire);
            assert_int_equal(rb, wire == OPS_WIRE_BF16 ? 2 * (size_t)C : (size_t)C + 4 * (size_t)((C + 127) / 128));
            const unsigned char *b = (const unsigned char *)buf; /* row 3's first value, where it belongs */
            if (wire == OPS_WIRE_BF16) {
                uint16_t h;
                memcpy(&h, b + 3 * rb, 2);
                assert_int_equal(h, ops_f32_to_bf16(x[3 * C]));
            } else {
                float sc;
                memcpy(&sc, b + 3 * rb + C, 4);
                assert_true(sc > 0.0f);
                assert_int_equal(b[3 * rb], ops_f32_to_e4m3(x[3 * C] / sc));
            }
            ops_wire_unpack(buf, n, C, wire);
            assert_memory_equal(buf, ref, nc * 4);
            memcpy(buf, x, nc * 4);
            ops_wire_pack(buf, n, C, OPS_WIRE_F32); /* fp32: untouched */
            ops_wire_unpack(buf, n, C, OPS_WIRE_F32);
            assert_memory_equal(buf, x, nc * 4);
            free(x), free(ref), free(buf);
        }
}

/* One send row per (token, destination rank): 2 ranks owning experts [0,3)
 * and [3,5); token 0 picks 0,1,2 (one row to rank 0, its 3 pairs there),
 * token 1 picks 4,0,3 (one row to each), token 2 picks 3,4,1. */
static void test_dispatch_index(void **st) {
    (void)st;
    const int N = 3, K = 3, P = 2, efirst[3] = {0, 3, 5};
    const int idx[9] = {0, 1, 2, 4, 0, 3, 3, 4, 1};
    float w[9];
    for (int j = 0; j < 9; j++) w[j] = 0.1f * (float)(j + 1);
    int stok[9], toff[4], trows[9], ptk[9], smeta[27], scnt[2], spc[2], ecnt[5];
    int S = ops_moe_dispatch_index(stok, toff, trows, ptk, smeta, scnt, spc, ecnt, idx, w, efirst, N, K, P);
    assert_int_equal(S, 5); /* rank 0: tokens 0,1,2; rank 1: tokens 1,2 */
    assert_int_equal(scnt[0], 3), assert_int_equal(scnt[1], 2);
    assert_int_equal(spc[0], 5), assert_int_equal(spc[1], 4);
    const int want_stok[5] = {0, 1, 2, 1, 2}, want_toff[4] = {0, 1, 3, 5}, want_trows[5] = {0, 1, 3, 2, 4};
    assert_memory_equal(stok, want_stok, sizeof want_stok);
    assert_memory_equal(toff, want_toff, sizeof want_toff);
    assert_memory_equal(trows, want_trows, sizeof want_trows);
    const int want_ecnt[5] = {2, 2, 1, 2, 2};
    assert_memory_equal(ecnt, want_ecnt, sizeof want_ecnt);
    /* pairs: rank 0 (t0: k0,k1,k2; t1: k1; t2: k2), rank 1 (t1: k0,k2; t2: k0,k1) */
    const int want_ptk[9] = {0, 1, 2, 4, 8, 3, 5, 6, 7};
    const int want_row[9] = {0, 0, 0, 1, 2, 0, 0, 1, 1}, want_g[9] = {0, 1, 2, 0, 1, 1, 0, 0, 1};
    assert_memory_equal(ptk, want_ptk, sizeof want_ptk);
    for (int q = 0; q < 9; q++) {
        float wq;
        memcpy(&wq, &smeta[3 * q + 2], 4);
        assert_int_equal(smeta[3 * q], want_row[q]);
        assert_int_equal(smeta[3 * q + 1], want_g[q]);
        assert_true(wq == w[ptk[q]]);
    }
    /* rank 1 receives rank 0's records for it and its own, as MPI would place them */
    int perm[9], pinv[9], poff[5], lcnt[2];
    float pw[9];
    const int roff[2] = {0, 2}, rpo[2] = {0, 4};
    int rmeta[24];
    memcpy(rmeta, smeta + 3 * 5, 4 * 3 * sizeof(int)); /* pretend both sources sent the same 4 records */
    memcpy(rmeta + 12, smeta + 3 * 5, 4 * 3 * sizeof(int));
    ops_moe_receive_index(perm, pinv, poff, pw, lcnt, rmeta, roff, rpo, P, 8, 4, 2);
    assert_int_equal(lcnt[0], 4), assert_int_equal(lcnt[1], 4);
    const int want_perm[8] = {0, 1, 2, 3, 0, 1, 2, 3}, want_poff[5] = {0, 2, 4, 6, 8};
    assert_memory_equal(perm, want_perm, sizeof want_perm);
    assert_memory_equal(poff, want_poff, sizeof want_poff);
    for (int p = 0; p < 8; p++) assert_int_equal(perm[pinv[p]], roff[p / 4] + rmeta[3 * p]);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swiglu_fd),
        cmocka_unit_test(test_mlp_fd),
        cmocka_unit_test(test_route_reference),
        cmocka_unit_test(test_route_masks_with_neg_inf),
        cmocka_unit_test(test_route_backward_fd),
        cmocka_unit_test(test_balance_value),
        cmocka_unit_test(test_balance_backward_fd),
        cmocka_unit_test(test_moe_forward_reference),
        cmocka_unit_test(test_moe_layer_fd),
        cmocka_unit_test(test_moe_balance_fd),
        cmocka_unit_test(test_moe_zero_tokens),
        cmocka_unit_test(test_moe_cache_grows),
        cmocka_unit_test(test_moe_determinism),
        cmocka_unit_test(test_bias_update),
        cmocka_unit_test(test_wire_pack),
        cmocka_unit_test(test_dispatch_index),
    };
    int rc = cmocka_run_group_tests_name("moe", tests, NULL, NULL);
    MPI_Finalize();
    return rc;
}
