/* test_attn.c — attention-side ops and the MLA block: finite-difference
 * gradient checks, reference forwards in double, YaRN values, causality. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../src/model/mla.h"
#include "../src/model/rope.h"
#include "../src/ops.h"

/* ------------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* splitmix64 → [0,1) */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 11) * (1.0 / 9007199254740992.0);
}
static float *frand(size_t n, float lo, float hi) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * urand());
    return p;
}
static float *fzeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static double dot_fd(const float *a, const float *r, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * r[i];
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* Central differences of loss() w.r.t. up to max_checks entries of p, compared
 * with the analytic gradient g: max|g − num| must be below tol·max|num|. */
static void fd_check(const char *name, float *p, const float *g, size_t n, loss_fn loss, void *ctx, int max_checks,
                     double h, double tol) {
    double maxerr = 0, maxref = 0;
    size_t worst = 0;
    int checks = (size_t)max_checks < n ? max_checks : (int)n;
    for (int c = 0; c < checks; c++) {
        size_t i = (size_t)max_checks < n ? (size_t)(urand() * n) : (size_t)c;
        float save = p[i];
        p[i] = (float)(save + h);
        double hp = (double)p[i] - save, lp = loss(ctx);
        p[i] = (float)(save - h);
        double hm = save - (double)p[i], lm = loss(ctx);
        p[i] = save;
        double num = (lp - lm) / (hp + hm);
        double err = fabs(num - g[i]);
        if (err > maxerr) maxerr = err, worst = i;
        if (fabs(num) > maxref) maxref = fabs(num);
    }
    loss(ctx); /* leave the forward state of the unperturbed parameters */
    printf("  fd %-14s checks %3d  max|num| %.3e  max err %.3e (rel %.2e, at %zu)\n", name, checks, maxref, maxerr,
           maxerr / (maxref + 1e-30), worst);
    assert_true(maxref > 1e-6); /* the check must not be vacuous */
    assert_true(maxerr <= tol * maxref);
}

/* tiny deck_model with YaRN as in the 671B config */
static void tiny_model(deck_model *m, int H, int nh, int dn, int dr, int dv, int ql, int kvl) {
    memset(m, 0, sizeof *m);
    m->hidden_size = H;
    m->num_attention_heads = nh;
    m->qk_nope_head_dim = dn;
    m->qk_rope_head_dim = dr;
    m->v_head_dim = dv;
    m->q_lora_rank = ql;
    m->kv_lora_rank = kvl;
    m->rms_norm_eps = 1e-6;
    m->rope_theta = 10000;
    m->max_position_embeddings = 163840;
    strcpy(m->rope_scaling_type, "yarn");
    m->rope_factor = 40;
    m->rope_original_max_position_embeddings = 4096;
    m->rope_beta_fast = 32;
    m->rope_beta_slow = 1;
    m->rope_mscale = 1;
    m->rope_mscale_all_dim = 1;
}

/* ------------------------------------------------------------------ RMSNorm */

typedef struct {
    float *y, *rstd, *x, *w, *R;
    int T, C;
} norm_ctx;

static double norm_loss(void *p) {
    norm_ctx *c = p;
    ops_rmsnorm_forward(c->y, c->rstd, c->x, c->w, c->T, c->C, 1e-6f);
    return dot_fd(c->y, c->R, (size_t)c->T * c->C);
}

static void test_rmsnorm(void **state) {
    (void)state;
    norm_ctx c = {.T = 5, .C = 70};
    size_t n = (size_t)c.T * c.C;
    c.x = frand(n, -1.5f, 1.5f);
    c.w = frand(c.C, 0.5f, 1.5f);
    c.R = frand(n, -1, 1);
    c.y = fzeros(n);
    c.rstd = fzeros(c.T);
    norm_loss(&c);
    /* forward against double */
    for (int t = 0; t < c.T; t++) {
        double ss = 0;
        for (int i = 0; i < c.C; i++) ss += (double)c.x[t * c.C + i] * c.x[t * c.C + i];
        double r = 1 / sqrt(ss / c.C + 1e-6);
        for (int i = 0; i < c.C; i++) assert_float_equal(c.y[t * c.C + i], c.w[i] * c.x[t * c.C + i] * r, 1e-5);
    }
    float *dx = fzeros(n), *dw = fzeros(c.C);
    ops_rmsnorm_backward(dx, dw, c.R, c.x, c.w, c.rstd, c.T, c.C);
    fd_check("rmsnorm dx", c.x, dx, n, norm_loss, &c, 400, 1e-2, 5e-3);
    fd_check("rmsnorm dw", c.w, dw, c.C, norm_loss, &c, 400, 1e-2, 5e-3);
    /* accumulation: a second call doubles; dw NULL is allowed */
    float *dx2 = fzeros(n);
    ops_copy(dx2, dx, n);
    ops_rmsnorm_backward(dx2, NULL, c.R, c.x, c.w, c.rstd, c.T, c.C);
    for (size_t i = 0; i < n; i++) assert_float_equal(dx2[i], 2 * dx[i], 1e-6);
    free(dx), free(dw), free(dx2), free(c.x), free(c.w), free(c.R), free(c.y), free(c.rstd);
}

/* --------------------------------------------------------------------- RoPE */

typedef struct {
    float *x0, *x, *R;
    size_t n;
    int rs, nh, hs, off, dr, B, T;
    rope_table *rt;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    ops_copy(c->x, c->x0, c->n);
    ops_rope_forward(c->x, c->rs, c->nh, c->hs, c->off, c->dr, c->rt->cos_t, c->rt->sin_t, c->B, c->T);
    return dot_fd(c->x, c->R, c->n);
}

static void test_rope(void **state) {
    (void)state;
    deck_model m;
    tiny_model(&m, 16, 3, 4, 8, 4, 0, 8);
    rope_table rt;
    assert_int_equal(rope_table_build(&rt, &m, 9), 0);
    /* 3 heads of width 12 (rope block at 4..11) inside rows of 40 floats */
    rope_ctx c = {.rs = 40, .nh = 3, .hs = 12, .off = 4, .dr = 8, .B = 2, .T = 9, .rt = &rt};
    c.n = (size_t)c.B * c.T * c.rs;
    c.x0 = frand(c.n, -1, 1);
    c.x = fzeros(c.n);
    c.R = frand(c.n, -1, 1);
    rope_loss(&c);
    double f[4];
    rope_inv_freq(f, &m);
    for (int r = 0; r < c.B * c.T; r++) {
        int p = r % c.T;
        for (int j = 0; j < c.rs; j++) {
            int h = j / c.hs, jj = j % c.hs;
            double want = c.x0[r * c.rs + j];
            if (h < c.nh && jj >= c.off) {
                int i = (jj - c.off) / 2;
                double a = c.x0[r * c.rs + h * c.hs + c.off + 2 * i], b = c.x0[r * c.rs + h * c.hs + c.off + 2 * i + 1];
                double th = p * f[i];
                want = (jj - c.off) % 2 == 0 ? a * cos(th) - b * sin(th) : a * sin(th) + b * cos(th);
            }
            assert_float_equal(c.x[r * c.rs + j], want, 2e-6);
        }
    }
    /* backward = transpose: gradient of Σ rope(x)·R w.r.t. x */
    float *g = fzeros(c.n);
    ops_copy(g, c.R, c.n);
    ops_rope_backward(g, c.rs, c.nh, c.hs, c.off, c.dr, rt.cos_t, rt.sin_t, c.B, c.T);
    fd_check("rope dx", c.x0, g, c.n, rope_loss, &c, 300, 1e-2, 1e-3);
    free(g), free(c.x0), free(c.x), free(c.R);
    rope_table_free(&rt);
}

/* ---------------------------------------------------------------- YaRN */

static void test_yarn_671b(void **state) {
    (void)state;
    deck_model m;
    tiny_model(&m, 7168, 128, 128, 64, 128, 1536, 512);
    double f[32];
    rope_inv_freq(f, &m);
    const int idx[] = {0, 1, 10, 11, 16, 22, 23, 31};
    const double want[] = {1, 0.74989421, 0.056234133, 0.039006927, 0.0055, 1.7782794e-4, 3.3338036e-5, 3.3338036e-6};
    for (int k = 0; k < 8; k++) {
        printf("  f'_%d = %.9g (spec %.9g)\n", idx[k], f[idx[k]], want[k]);
        assert_true(fabs(f[idx[k]] - want[k]) <= 2e-8 * want[k] + 1e-15);
    }
    assert_true(fabs(rope_yarn_get_mscale(40, 1) - 1.3688879) < 1e-7);
    float s = rope_softmax_scale(&m);
    printf("  softmax scale %.9g (spec 0.13523378)\n", s);
    assert_true(fabs(s - 0.13523378) < 1e-7);
    assert_true(fabs(rope_attention_factor(&m) - 1.0) < 1e-15);
    rope_table rt;
    assert_int_equal(rope_table_build(&rt, &m, 5), 0);
    assert_float_equal(rt.inv_freq[16], 0.0055f, 1e-9);
    assert_float_equal(rt.cos_t[3 * 32 + 1], (float)cos(3 * 0.74989421), 1e-6);
    assert_float_equal(rt.sin_t[3 * 32 + 1], (float)sin(3 * 0.74989421), 1e-6);
    rope_table_free(&rt);
    /* no scaling: plain theta^(-2i/d) and qk_head_dim^-0.5 */
    strcpy(m.rope_scaling_type, "none");
    rope_inv_freq(f, &m);
    for (int i = 0; i < 32; i++) assert_true(fabs(f[i] - pow(10000, -2.0 * i / 64)) < 1e-15);
    assert_true(fabs(rope_softmax_scale(&m) - 1 / sqrt(192.0)) < 1e-8);
    strcpy(m.rope_scaling_type, "linear");
    assert_int_equal(rope_table_build(&rt, &m, 5), -1);
}

/* ---------------------------------------------------------------- attention */

typedef struct {
    float *q, *k, *v, *out, *lse, *R;
    int B, T, nh, dqk, dv;
    float scale;
    ops_arena *a; /* scratch: ops_attention_scratch_floats(backward, ops_gemm_get()) */
} att_ctx;

static double att_loss(void *p) {
    att_ctx *c = p;
    ops_attention_forward(c->out, c->lse, c->q, c->k, c->v, c->B, c->T, c->nh, c->dqk, c->dv, c->scale, c->a);
    assert_true(c->a->used == 0);
    return dot_fd(c->out, c->R, (size_t)c->B * c->T * c->nh * c->dv);
}

/* The attention tests' case: T = 70 crosses the 64-row query block; random q, k, v and the loss weights R. */
static att_ctx att_make(void) {
    att_ctx c = {.B = 2, .T = 70, .nh = 3, .dqk = 6, .dv = 5, .scale = 0.45f};
    size_t nq = (size_t)c.B * c.T * c.nh * c.dqk, nv = (size_t)c.B * c.T * c.nh * c.dv;
    c.q = frand(nq, -1.5f, 1.5f), c.k = frand(nq, -1.5f, 1.5f), c.v = frand(nv, -1, 1);
    c.out = fzeros(nv), c.lse = fzeros(ops_attention_cache_floats(c.B, c.T, c.nh)), c.R = frand(nv, -1, 1);
    return c;
}
static void att_free(att_ctx *c) { free(c->q), free(c->k), free(c->v), free(c->out), free(c->lse), free(c->R); }

static float rb(float x) { return ops_bf16_to_f32(ops_f32_to_bf16(x)); } /* x rounded to bf16 */

/* The double reference's scores of query row t of (b, h): s[j] = scale·q_t·k_j for the keys j <= t, the
 * operands as stored (rnd 0) or rounded to bf16 (rnd 1); returns its max and the softmax sum in *sum. */
static double ref_scores(const att_ctx *c, int b, int h, int t, int rnd, double *s, double *sum) {
    double mx = -1e300;
    for (int j = 0; j <= t; j++) {
        double d = 0;
        for (int e = 0; e < c->dqk; e++) {
            float qe = c->q[((size_t)(b * c->T + t) * c->nh + h) * c->dqk + e], ke = c->k[((size_t)(b * c->T + j) * c->nh + h) * c->dqk + e];
            d += rnd ? (double)rb(qe) * rb(ke) : (double)qe * ke;
        }
        s[j] = d * c->scale;
        if (s[j] > mx) mx = s[j];
    }
    *sum = 0;
    for (int j = 0; j <= t; j++) *sum += exp(s[j] - mx);
    return mx;
}

static void test_attention(void **state) {
    (void)state;
    att_ctx c = att_make();
    size_t nq = (size_t)c.B * c.T * c.nh * c.dqk, nv = (size_t)c.B * c.T * c.nh * c.dv;
    ops_arena a;
    assert_int_equal(ops_arena_create(&a, ops_attention_scratch_floats(c.B, c.T, c.nh, c.dqk, c.dv, 1, OPS_GEMM_F32)),
                     0);
    c.a = &a;
    att_loss(&c);
    assert_int_equal(a.peak, ops_attention_scratch_floats(c.B, c.T, c.nh, c.dqk, c.dv, 0, OPS_GEMM_F32));
    /* forward against a double reference */
    double maxd = 0;
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.nh; h++)
            for (int t = 0; t < c.T; t++) {
                double s[70], sum, mx = ref_scores(&c, b, h, t, 0, s, &sum);
                assert_true(fabs(c.lse[(size_t)(b * c.nh + h) * c.T + t] - (mx + log(sum))) < 1e-5);
                for (int e = 0; e < c.dv; e++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += exp(s[j] - mx) / sum * c.v[((size_t)(b * c.T + j) * c.nh + h) * c.dv + e];
                    double d = fabs(o - c.out[((size_t)(b * c.T + t) * c.nh + h) * c.dv + e]);
                    if (d > maxd) maxd = d;
                }
            }
    printf("  attention forward max |err| vs double %.2e\n", maxd);
    assert_true(maxd < 1e-5);
    float *dq = fzeros(nq), *dk = fzeros(nq), *dv = fzeros(nv);
    ops_attention_backward(dq, dk, dv, c.R, c.q, c.k, c.v, c.lse, c.B, c.T, c.nh, c.dqk, c.dv, c.scale, &a);
    assert_true(a.used == 0 && a.peak == ops_attention_scratch_floats(c.B, c.T, c.nh, c.dqk, c.dv, 1, OPS_GEMM_F32));
    fd_check("attention dq", c.q, dq, nq, att_loss, &c, 150, 1e-2, 5e-3);
    fd_check("attention dk", c.k, dk, nq, att_loss, &c, 150, 1e-2, 5e-3);
    fd_check("attention dv", c.v, dv, nv, att_loss, &c, 150, 1e-2, 5e-3);
    ops_arena_destroy(&a);
    free(dq), free(dk), free(dv);
    att_free(&c);
}

/* max |a − b| / max |b| */
static double rel_inf(const float *a, const float *b, size_t n) {
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), m = fmax(m, fabs((double)b[i]));
    return m > 0.0 ? d / m : d;
}

/* GEMM precision bf16 (ops_attn.h "Precision"): the forward against a double
 * reference on the rounded operands: lse from scale·bf16(q)·bf16(k) (1e-5, as
 * fp32 mode: an unrounded q·k is ~1e-3 away), out = bf16(P)·bf16(v) with P
 * rounded from the reference's (1e-5, plus one bf16 ulp of P·|v| where the
 * reference's P lies within 1e-5 relative of a bf16 rounding boundary: the
 * fp32 P may round the other way). The backward against fp32 mode: the
 * gradients differ by about bf16's precision (between 2^-14 and 1e-2 of max
 * |g|). The arena peaks equal ops_attention_scratch_floats at bf16 (and fp8:
 * the same layout). */
static void test_attention_bf16(void **state) {
    (void)state;
    att_ctx c = att_make();
    size_t nq = (size_t)c.B * c.T * c.nh * c.dqk, nv = (size_t)c.B * c.T * c.nh * c.dv;
    const size_t fwd = ops_attention_scratch_floats(c.B, c.T, c.nh, c.dqk, c.dv, 0, OPS_GEMM_BF16),
                 bwd = ops_attention_scratch_floats(c.B, c.T, c.nh, c.dqk, c.dv, 1, OPS_GEMM_BF16);
    assert_true(fwd > ops_attention_scratch_floats(c.B, c.T, c.nh, c.dqk, c.dv, 0, OPS_GEMM_F32));
    assert_int_equal(bwd, ops_attention_scratch_floats(c.B, c.T, c.nh, c.dqk, c.dv, 1, OPS_GEMM_FP8));
    ops_arena a;
    assert_int_equal(ops_arena_create(&a, bwd), 0);
    c.a = &a;
    /* fp32 mode first: its gradients are the backward's yardstick */
    float *gf[3] = {fzeros(nq), fzeros(nq), fzeros(nv)}, *gb[3] = {fzeros(nq), fzeros(nq), fzeros(nv)};
    att_loss(&c);
    ops_attention_backward(gf[0], gf[1], gf[2], c.R, c.q, c.k, c.v, c.lse, c.B, c.T, c.nh, c.dqk, c.dv, c.scale, &a);
    ops_gemm_set(OPS_GEMM_BF16);
    a.peak = 0;
    att_loss(&c);
    assert_int_equal(a.peak, fwd);
    double maxl = 0, maxo = 0, maxc = 0; /* maxc: outputs with no P near a rounding boundary */
    int near = 0;
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.nh; h++)
            for (int t = 0; t < c.T; t++) {
                double s[70], sum, mx = ref_scores(&c, b, h, t, 1, s, &sum);
                maxl = fmax(maxl, fabs(c.lse[(size_t)(b * c.nh + h) * c.T + t] - (mx + log(sum))));
                for (int e = 0; e < c.dv; e++) {
                    double o = 0, allow = 1e-5;
                    for (int j = 0; j <= t; j++) {
                        const double p = exp(s[j] - mx) / sum;
                        const double vj = rb(c.v[((size_t)(b * c.T + j) * c.nh + h) * c.dv + e]);
                        const float lo = rb((float)(p * (1 - 1e-5))), hi = rb((float)(p * (1 + 1e-5)));
                        o += rb((float)p) * vj;
                        if (lo != hi) allow += (hi - lo) * fabs(vj); /* near a boundary: either neighbour */
                    }
                    double d = fabs(o - c.out[((size_t)(b * c.T + t) * c.nh + h) * c.dv + e]);
                    assert_true(d <= allow);
                    maxo = fmax(maxo, d);
                    if (allow == 1e-5) maxc = fmax(maxc, d);
                    else near++;
                }
            }
    printf("  attention bf16 forward vs double on the rounded operands: lse %.2e, out %.2e (%.2e where no P is "
           "near a bf16 rounding boundary; %d outputs with one)\n", maxl, maxo, maxc, near);
    assert_true(maxl < 1e-5);
    ops_attention_backward(gb[0], gb[1], gb[2], c.R, c.q, c.k, c.v, c.lse, c.B, c.T, c.nh, c.dqk, c.dv, c.scale, &a);
    assert_true(a.used == 0 && a.peak == bwd);
    const char *nm[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        double e = rel_inf(gb[i], gf[i], i < 2 ? nq : nv);
        printf("  attention bf16 %s vs fp32 mode: %.2e of max |g|\n", nm[i], e);
        assert_true(e >= 0x1p-14 && e < 1e-2);
    }
    ops_gemm_set(OPS_GEMM_F32);
    ops_arena_destroy(&a);
    for (int i = 0; i < 3; i++) free(gf[i]), free(gb[i]);
    att_free(&c);
}

/* ---------------------------------------------------------------- embedding */

typedef struct {
    float *y, *E, *R;
    int32_t *ids;
    int N, V, H;
} emb_ctx;

static double emb_loss(void *p) {
    emb_ctx *c = p;
    assert_int_equal(ops_embedding_forward(c->y, c->E, c->ids, c->N, c->V, c->H), 0);
    return dot_fd(c->y, c->R, (size_t)c->N * c->H);
}

static void test_embedding(void **state) {
    (void)state;
    int32_t ids[] = {3, 0, 3, 6, 2, 3, 6, 1};
    emb_ctx c = {.ids = ids, .N = 8, .V = 7, .H = 300};
    c.E = frand((size_t)c.V * c.H, -1, 1), c.R = frand((size_t)c.N * c.H, -1, 1), c.y = fzeros((size_t)c.N * c.H);
    emb_loss(&c);
    for (int n = 0; n < c.N; n++) assert_memory_equal(c.y + n * c.H, c.E + ids[n] * c.H, c.H * sizeof(float));
    float *dE = fzeros((size_t)c.V * c.H);
    ops_embedding_backward(dE, c.R, c.ids, c.N, c.V, c.H);
    fd_check("embedding dE", c.E, dE, (size_t)c.V * c.H, emb_loss, &c, 400, 1e-2, 1e-4);
    /* row 5 is never used */
    for (int j = 0; j < c.H; j++) assert_true(dE[5 * c.H + j] == 0.0f);
    /* an out-of-range id is reported and zeroed */
    int32_t bad[] = {1, 7};
    float y2[600];
    assert_int_equal(ops_embedding_forward(y2, c.E, bad, 2, c.V, c.H), -1);
    assert_true(y2[300] == 0.0f && y2[599] == 0.0f);
    free(dE), free(c.E), free(c.R), free(c.y);
}

/* ------------------------------------------------------------ cross-entropy */

typedef struct {
    float *logits;
    int32_t *tg;
    int N, V;
    float scale;
} ce_ctx;

static double ce_loss(void *p) {
    ce_ctx *c = p;
    return c->scale * ops_cross_entropy_forward(NULL, NULL, c->logits, c->tg, c->N, c->V);
}

static void test_cross_entropy(void **state) {
    (void)state;
    int32_t tg[] = {4, -100, 0, 10, -100, 7};
    ce_ctx c = {.tg = tg, .N = 6, .V = 11, .scale = 0.25f};
    size_t n = (size_t)c.N * c.V;
    c.logits = frand(n, -3, 3);
    c.logits[3 * c.V + 2] = 40.0f; /* a large logit: max subtraction matters */
    float rows[6];
    int64_t cnt = -1;
    double sum = ops_cross_entropy_forward(rows, &cnt, c.logits, c.tg, c.N, c.V);
    assert_int_equal(cnt, 4);
    double ref = 0;
    for (int r = 0; r < c.N; r++) {
        if (tg[r] == -100) {
            assert_true(rows[r] == 0.0f);
            continue;
        }
        double mx = -1e300, s = 0;
        for (int j = 0; j < c.V; j++) mx = fmax(mx, c.logits[r * c.V + j]);
        for (int j = 0; j < c.V; j++) s += exp(c.logits[r * c.V + j] - mx);
        double l = mx + log(s) - c.logits[r * c.V + tg[r]];
        assert_true(fabs(rows[r] - l) < 1e-5 * (1 + l));
        ref += l;
    }
    assert_true(fabs(sum - ref) < 1e-5 * ref);
    float *d = frand(n, -1, 1); /* garbage: the backward writes every element */
    ops_cross_entropy_backward(d, c.logits, c.tg, c.N, c.V, c.scale);
    for (int j = 0; j < c.V; j++) assert_true(d[1 * c.V + j] == 0.0f && d[4 * c.V + j] == 0.0f);
    fd_check("ce dlogits", c.logits, d, n, ce_loss, &c, 400, 1e-2, 2e-3);
    /* in place (dlogits == logits) gives the same result */
    float *inpl = fzeros(n);
    ops_copy(inpl, c.logits, n);
    ops_cross_entropy_backward(inpl, inpl, c.tg, c.N, c.V, c.scale);
    assert_memory_equal(inpl, d, n * sizeof(float));
    /* an invalid target is an error */
    int32_t badt[] = {11};
    assert_true(isnan(ops_cross_entropy_forward(NULL, NULL, c.logits, badt, 1, c.V)));
    free(d), free(inpl), free(c.logits);
}

static void test_argmax(void **state) {
    (void)state;
    enum { V = 6 };
    const float x[][V] = {
        {1, 3, 2, 3, -1, 0},                              /* tie: the lowest index */
        {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY}, /* all equal: 0 */
        {0, 1, NAN, 5, NAN, 2},                           /* NaN beats every number: the first NaN */
        {NAN, 7, 8, 9, 1, 2},                             /* a leading NaN */
        {-0.0f, 0.0f, -1, -2, -3, -4},                    /* -0 == +0: a tie */
        {1, 2, 3, INFINITY, 4, INFINITY},                 /* +inf, tied */
    };
    const int32_t want[] = {1, 0, 2, 0, 0, 3};
    const int N = (int)(sizeof want / sizeof *want);
    int32_t got[6] = {-1, -1, -1, -1, -1, -1};
    ops_argmax_rows(got, &x[0][0], N, V);
    assert_memory_equal(got, want, sizeof want);
    ops_argmax_rows(got, &x[0][0], 1, 1); /* V 1: index 0 */
    assert_int_equal(got[0], 0);
}

/* ---------------------------------------------------------------------- MLA */

typedef struct {
    deck_model m;
    mla_layer l;
    rope_table rt;
    mla_cache c;
    ops_arena a; /* scratch, exactly mla_scratch_floats */
    float *x, *out, *R;
    int B, T;
    float *bufs[64];
    int nbuf;
} mla_ctx;

static float *mla_buf(mla_ctx *t, size_t n, float amp) {
    float *p = frand(n, -amp, amp);
    t->bufs[t->nbuf++] = p;
    return p;
}

static void mla_lin(mla_ctx *t, linear *L, int in, int out, int r) {
    memset(L, 0, sizeof *L);
    L->in = in, L->out = out, L->r = r;
    L->w = mla_buf(t, (size_t)in * out, (float)(1.5 / sqrt(in)));
    L->g = mla_buf(t, (size_t)in * out, 0);
    if (r) {
        L->scaling = 2.0f / r;
        L->A = mla_buf(t, (size_t)r * in, (float)(1.0 / sqrt(in)));
        L->gA = mla_buf(t, (size_t)r * in, 0);
        L->B = mla_buf(t, (size_t)out * r, 0.5f); /* non-zero so that gA is exercised */
        L->gB = mla_buf(t, (size_t)out * r, 0);
    }
}

/* lora 0: none; 1: rank 2 on q_a and o; 2: rank 2 on every projection */
static void mla_setup(mla_ctx *t, int ql, int lora) {
    memset(t, 0, sizeof *t);
    int H = 24, nh = 3, dn = 4, dr = 6, dv = 5, kvl = 7;
    tiny_model(&t->m, H, nh, dn, dr, dv, ql, kvl);
    t->B = 2, t->T = 6;
    int dqk = dn + dr, r = lora ? 2 : 0, r2 = lora == 2 ? r : 0;
    if (ql > 0) {
        mla_lin(t, &t->l.q_a, H, ql, r);
        mla_lin(t, &t->l.q_b, ql, nh * dqk, r2);
        t->l.q_a_norm = mla_buf(t, ql, 0.3f);
        for (int i = 0; i < ql; i++) t->l.q_a_norm[i] += 1.0f;
        t->l.g_q_a_norm = mla_buf(t, ql, 0);
    } else {
        mla_lin(t, &t->l.q, H, nh * dqk, r2);
    }
    mla_lin(t, &t->l.kv_a, H, kvl + dr, r2);
    mla_lin(t, &t->l.kv_b, kvl, nh * (dn + dv), r2);
    mla_lin(t, &t->l.o, nh * dv, H, r);
    t->l.kv_a_norm = mla_buf(t, kvl, 0.3f);
    for (int i = 0; i < kvl; i++) t->l.kv_a_norm[i] += 1.0f;
    t->l.g_kv_a_norm = mla_buf(t, kvl, 0);
    assert_int_equal(rope_table_build(&t->rt, &t->m, t->T), 0);
    mla_cache_alloc(&t->c, &t->m, &t->l, t->B, t->T);
    int rsum = lora == 2 ? (ql > 0 ? 5 : 4) * r : lora ? (ql > 0 ? 2 : 1) * r : 0;
    assert_int_equal(t->c.floats, mla_cache_floats(&t->m, rsum, t->B, t->T));
    assert_int_equal(ops_arena_create(&t->a, mla_scratch_floats(&t->m, r, 0, t->B, t->T, ops_gemm_get())), 0);
    size_t n = (size_t)t->B * t->T * H;
    t->x = mla_buf(t, n, 1.0f);
    t->out = mla_buf(t, n, 0);
    t->R = mla_buf(t, n, 1.0f);
}

static void mla_teardown(mla_ctx *t) {
    mla_cache_free(&t->c);
    ops_arena_destroy(&t->a);
    rope_table_free(&t->rt);
    for (int i = 0; i < t->nbuf; i++) free(t->bufs[i]);
}

static double mla_loss(void *p) {
    mla_ctx *t = p;
    mla_forward(&t->m, &t->l, &t->rt, &t->c, t->out, t->x, t->B, t->T, &t->a);
    return dot_fd(t->out, t->R, (size_t)t->B * t->T * t->m.hidden_size);
}

/* y[N,out] = x·Wᵀ + s·(x·Aᵀ)·Bᵀ in double */
static void ref_linear(double *y, const double *x, const linear *L, int N) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < L->out; o++) {
            double s = 0;
            for (int i = 0; i < L->in; i++) s += x[(size_t)n * L->in + i] * L->w[(size_t)o * L->in + i];
            for (int k = 0; k < L->r; k++) {
                double a = 0;
                for (int i = 0; i < L->in; i++) a += x[(size_t)n * L->in + i] * L->A[(size_t)k * L->in + i];
                s += L->scaling * a * L->B[(size_t)o * L->r + k];
            }
            y[(size_t)n * L->out + o] = s;
        }
}

static void ref_rmsnorm(double *x, const float *w, int N, int C) {
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int i = 0; i < C; i++) ss += x[n * C + i] * x[n * C + i];
        double r = 1 / sqrt(ss / C + 1e-6);
        for (int i = 0; i < C; i++) x[n * C + i] *= r * w[i];
    }
}

static void ref_rope(double *v, int p, const double *f, int dr) {
    for (int i = 0; i < dr / 2; i++) {
        double a = v[2 * i], b = v[2 * i + 1], th = p * f[i];
        v[2 * i] = a * cos(th) - b * sin(th);
        v[2 * i + 1] = a * sin(th) + b * cos(th);
    }
}

/* Straight transcription of dsv3-spec §3 in double. */
static void ref_mla(const mla_ctx *t, double *out) {
    const deck_model *m = &t->m;
    int N = t->B * t->T, H = m->hidden_size, nh = m->num_attention_heads, dn = m->qk_nope_head_dim;
    int dr = m->qk_rope_head_dim, dv = m->v_head_dim, ql = m->q_lora_rank, kvl = m->kv_lora_rank, dqk = dn + dr;
    double *x = malloc(sizeof(double) * N * H), *q = malloc(sizeof(double) * N * nh * dqk);
    double *kv = malloc(sizeof(double) * N * (kvl + dr)), *c = malloc(sizeof(double) * N * kvl);
    double *kvb = malloc(sizeof(double) * N * nh * (dn + dv)), *o = malloc(sizeof(double) * N * nh * dv);
    double f[64];
    for (int i = 0; i < N * H; i++) x[i] = t->x[i];
    rope_inv_freq(f, m);
    if (ql > 0) {
        double *cq = malloc(sizeof(double) * N * ql);
        ref_linear(cq, x, &t->l.q_a, N);
        ref_rmsnorm(cq, t->l.q_a_norm, N, ql);
        ref_linear(q, cq, &t->l.q_b, N);
        free(cq);
    } else {
        ref_linear(q, x, &t->l.q, N);
    }
    ref_linear(kv, x, &t->l.kv_a, N);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < kvl; i++) c[n * kvl + i] = kv[n * (kvl + dr) + i];
    ref_rmsnorm(c, t->l.kv_a_norm, N, kvl);
    ref_linear(kvb, c, &t->l.kv_b, N);
    for (int n = 0; n < N; n++) {
        int p = n % t->T;
        ref_rope(kv + n * (kvl + dr) + kvl, p, f, dr);
        for (int h = 0; h < nh; h++) ref_rope(q + (n * nh + h) * dqk + dn, p, f, dr);
    }
    double scale = rope_softmax_scale(m);
    for (int b = 0; b < t->B; b++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < t->T; i++) {
                double s[64], mx = -1e300, sum = 0;
                const double *qi = q + ((b * t->T + i) * nh + h) * dqk;
                for (int j = 0; j <= i; j++) {
                    int nj = b * t->T + j;
                    double d = 0;
                    for (int e = 0; e < dn; e++) d += qi[e] * kvb[(nj * nh + h) * (dn + dv) + e];
                    for (int e = 0; e < dr; e++) d += qi[dn + e] * kv[nj * (kvl + dr) + kvl + e];
                    s[j] = scale * d;
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= i; j++) sum += exp(s[j] - mx);
                for (int e = 0; e < dv; e++) {
                    double acc = 0;
                    for (int j = 0; j <= i; j++)
                        acc += exp(s[j] - mx) / sum * kvb[((b * t->T + j) * nh + h) * (dn + dv) + dn + e];
                    o[((b * t->T + i) * nh + h) * dv + e] = acc;
                }
            }
    ref_linear(out, o, &t->l.o, N);
    free(x), free(q), free(kv), free(c), free(kvb), free(o);
}

static void mla_check(int ql, int lora) {
    mla_ctx *t = malloc(sizeof *t);
    mla_setup(t, ql, lora);
    int N = t->B * t->T, H = t->m.hidden_size;
    size_t n = (size_t)N * H;
    mla_loss(t);
    double *ref = malloc(sizeof(double) * n), maxd = 0, maxr = 0;
    ref_mla(t, ref);
    for (size_t i = 0; i < n; i++) maxd = fmax(maxd, fabs(ref[i] - t->out[i])), maxr = fmax(maxr, fabs(ref[i]));
    printf("  mla forward (q_lora_rank %d, lora %d) max |err| %.2e of max |out| %.2e\n", ql, lora, maxd, maxr);
    assert_true(maxd < 1e-5 * (1 + maxr));
    free(ref);

    float *dx = fzeros(n);
    mla_backward(&t->m, &t->l, &t->rt, &t->c, dx, t->R, t->B, t->T, &t->a);
    assert_true(t->a.used == 0 && t->a.peak <= t->a.cap);
    if (lora != 1) /* LoRA on every projection or none: the size function is attained exactly */
        assert_int_equal(t->a.peak, mla_scratch_floats(&t->m, lora ? 2 : 0, 0, t->B, t->T, ops_gemm_get()));
    const double h = 1e-2, tol = 5e-3;
    const int mc = 60;
    fd_check("mla dx", t->x, dx, n, mla_loss, t, mc, h, tol);
    const char *nm[] = {"q_a", "q_b", "q", "kv_a", "kv_b", "o"};
    linear *L[] = {&t->l.q_a, &t->l.q_b, &t->l.q, &t->l.kv_a, &t->l.kv_b, &t->l.o};
    for (int i = 0; i < 6; i++) {
        if (!L[i]->w) continue;
        char s[32];
        snprintf(s, sizeof s, "mla %s.w", nm[i]);
        fd_check(s, L[i]->w, L[i]->g, (size_t)L[i]->in * L[i]->out, mla_loss, t, mc, h, tol);
        if (L[i]->r) {
            snprintf(s, sizeof s, "mla %s.A", nm[i]);
            fd_check(s, L[i]->A, L[i]->gA, (size_t)L[i]->in * L[i]->r, mla_loss, t, mc, h, tol);
            snprintf(s, sizeof s, "mla %s.B", nm[i]);
            fd_check(s, L[i]->B, L[i]->gB, (size_t)L[i]->out * L[i]->r, mla_loss, t, mc, h, tol);
        }
    }
    if (ql > 0) fd_check("mla q_a_norm", t->l.q_a_norm, t->l.g_q_a_norm, ql, mla_loss, t, mc, h, tol);
    fd_check("mla kv_a_norm", t->l.kv_a_norm, t->l.g_kv_a_norm, t->m.kv_lora_rank, mla_loss, t, mc, h, tol);
    free(dx);
    mla_teardown(t);
    free(t);
}

static void test_mla_qlora(void **state) {
    (void)state;
    mla_check(8, 0);
}
static void test_mla_plain_q(void **state) {
    (void)state;
    mla_check(0, 0);
}
static void test_mla_lora(void **state) {
    (void)state;
    mla_check(8, 1);
}
static void test_mla_lora_all(void **state) {
    (void)state;
    mla_check(8, 2);
    mla_check(0, 2);
}

/* GEMM precision bf16: the MLA layer's arena peak is mla_scratch_floats at bf16 (the attention's
 * bf16 copies), with LoRA on every projection and without; the output moves by about bf16's precision. */
static void test_mla_bf16_scratch(void **state) {
    (void)state;
    for (int lora = 0; lora <= 2; lora += 2) {
        mla_ctx *t = malloc(sizeof *t);
        const uint64_t seed = rng_state; /* the same weights and input in both modes */
        mla_setup(t, 8, lora);
        size_t n = (size_t)t->B * t->T * t->m.hidden_size;
        mla_loss(t);
        float *f32 = fzeros(n), *dx = fzeros(n);
        ops_copy(f32, t->out, n);
        mla_teardown(t);
        ops_gemm_set(OPS_GEMM_BF16);
        rng_state = seed;
        mla_setup(t, 8, lora);
        mla_loss(t);
        mla_backward(&t->m, &t->l, &t->rt, &t->c, dx, t->R, t->B, t->T, &t->a);
        const size_t plan = mla_scratch_floats(&t->m, lora, 0, t->B, t->T, OPS_GEMM_BF16);
        double e = rel_inf(t->out, f32, n);
        printf("  mla bf16 (lora %d): arena peak %zu of plan %zu floats (fp32 plan %zu); out vs fp32 %.2e\n", lora,
               t->a.peak, plan, mla_scratch_floats(&t->m, lora, 0, t->B, t->T, OPS_GEMM_F32), e);
        assert_true(t->a.used == 0 && t->a.peak == plan);
        assert_true(e >= 0x1p-14 && e < 1e-2);
        ops_gemm_set(OPS_GEMM_F32);
        free(f32), free(dx);
        mla_teardown(t);
        free(t);
    }
}

/* Changing token t0 of sequence 1 changes nothing before t0 in it, and nothing in sequence 0. */
static void test_mla_causal(void **state) {
    (void)state;
    mla_ctx *t = malloc(sizeof *t);
    mla_setup(t, 8, 1);
    int T = t->T, H = t->m.hidden_size, t0 = 3;
    size_t n = (size_t)t->B * T * H;
    mla_loss(t);
    float *base = fzeros(n);
    ops_copy(base, t->out, n);
    for (int j = 0; j < H; j++) t->x[(size_t)(T + t0) * H + j] += 0.5f;
    mla_loss(t);
    for (int r = 0; r < t->B * T; r++) {
        double d = 0;
        for (int j = 0; j < H; j++) d = fmax(d, fabs(t->out[(size_t)r * H + j] - base[(size_t)r * H + j]));
        if (r < T + t0)
            assert_true(d == 0.0);
        else
            assert_true(d > 1e-4); /* later tokens of sequence 1 do see it */
    }
    free(base);
    mla_teardown(t);
    free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),       cmocka_unit_test(test_rope),        cmocka_unit_test(test_yarn_671b),
        cmocka_unit_test(test_attention),     cmocka_unit_test(test_attention_bf16), cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_mla_qlora),     cmocka_unit_test(test_mla_plain_q), cmocka_unit_test(test_mla_lora),
        cmocka_unit_test(test_mla_causal),    cmocka_unit_test(test_mla_lora_all), cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_mla_bf16_scratch),
    };
    return cmocka_run_group_tests_name("attn", tests, NULL, NULL);
}
