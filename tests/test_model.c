/* test_model.c — the assembled model (model.c): finite-difference gradient
 * checks of the total loss L = lm + λ/D·Σ_k mtp_k + balance through every
 * tensor kind, MTP on (depth 1 and 2) and off, activation checkpointing
 * giving the same gradients, and the counter-based init being
 * independent of the expert split. LoRA adapters with dropout and rsLoRA
 * scaling: finite differences through the adapters (the mask is
 * counter-based, so a repeated forward draws it again), the mask applied,
 * reproducible, keyed by step and sample, and recomputed identically under
 * activation checkpointing.
 *
 * Routing selection is not differentiable, so the FD model routes every token
 * to all experts (top-k = E): router gradients still flow through the weights
 * (normalised scores) and the balance loss. Group-limited selection is
 * checked in test_moe. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <mpi.h>

#include "../src/deck.h"
#include "../src/model/model.h"
#include "../src/plan.h"

static const char *DECK =
    "model = { vocab_size = 37; hidden_size = 16; intermediate_size = 24; moe_intermediate_size = 8;\n"
    "  num_hidden_layers = 2; first_k_dense_replace = 1; n_routed_experts = 4; n_shared_experts = 1;\n"
    "  num_experts_per_tok = 4; n_group = 2; topk_group = 2; routed_scaling_factor = 2.5;\n"
    "  q_lora_rank = 12; kv_lora_rank = 8; qk_nope_head_dim = 4; qk_rope_head_dim = 4; v_head_dim = 6;\n"
    "  num_attention_heads = 2; num_key_value_heads = 2; max_position_embeddings = 64;\n"
    "  rope_scaling = { type = \"yarn\"; factor = 4.0; original_max_position_embeddings = 16; beta_fast = 32.0;\n"
    "                   beta_slow = 1.0; mscale = 1.0; mscale_all_dim = 1.0; };\n"
    "  num_nextn_predict_layers = %d; initializer_range = 0.3; aux_loss_alpha = 0.05; mtp_loss_weight = 0.3;\n"
    "  bias_update_rate = 0.0; };\n"
    "train = { micro_batch = 2; global_batch = 2; seq_len = 7; dtype = \"fp32\"; };\n"
    "parallel = { activation_checkpointing = %s; };\n"
    "run = { seed = 7L; steps = 1; };\n"
    "schedule = { warmup_steps = 0; };\n";

enum { B = 2, T = 7 };

typedef struct {
    deck d;
    model *m;
    int32_t tok[B * T], tgt[B * T];
    model_scales sc;
    int D;
    int dropout;      /* model_batch.dropout of every step */
    int lora;         /* adapters on (the frozen MTP layers then have nothing to check) */
    int64_t step, sample0;
} fixture;

/* `extra` is appended to the deck (a lora group); dropout sets model_batch.dropout; `over` (may be NULL) is
 * one "key.path=value" override. */
static void setup_o(fixture *f, int D, int ckpt, const char *extra, int dropout, const char *over) {
    char text[4096], err[512], ov[128];
    char *o[1] = {ov};
    snprintf(ov, sizeof ov, "%s", over ? over : "");
    int n = snprintf(text, sizeof text, DECK, D, ckpt ? "true" : "false");
    snprintf(text + n, sizeof text - (size_t)n, "%s", extra);
    f->dropout = dropout, f->step = 3, f->sample0 = 5, f->lora = extra[0] != 0;
    assert_int_equal(deck_load_string(&f->d, text, "test_model", over ? 1 : 0, over ? o : NULL, 1, err, sizeof err), 0);
    model_opts mo = deck_model_opts(&f->d);
    assert_int_equal(model_create(&f->m, &mo, NULL, err, sizeof err), 0);
    model_init_weights(f->m, 7);
    /* non-trivial router biases: selection-only, must not change gradients' correctness */
    for (int i = 0; i < model_n_moe(f->m); i++) {
        float *b = model_router_bias(f->m, i);
        for (int e = 0; e < 4; e++) b[e] = 0.01f * (float)e;
    }
    uint64_t x = 12345;
    /* lora_B starts at zero (PEFT): give it values so that lora_A gets gradients */
    const param_table *pt = model_params(f->m);
    for (int i = 0; i < pt->n; i++)
        if (strstr(pt->t[i].name, "lora_B"))
            for (int64_t j = 0; j < pt->t[i].numel_local; j++) {
                x = x * 6364136223846793005ULL + 1442695040888963407ULL;
                model_param_buffer(f->m)[pt->t[i].offset + j] = 0.5f * ((float)(x >> 40) / 16777216.0f - 0.5f);
            }
    for (int i = 0; i < B * T; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        f->tok[i] = (int32_t)((x >> 33) % 37);
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) /* shifted targets, a masked position in each sequence */
            f->tgt[b * T + t] = (t + 1 < T && t != 2 + b) ? f->tok[b * T + t + 1] : -100;
    f->D = D;
    memset(&f->sc, 0, sizeof f->sc);
    f->sc.lm = 1.0f / (float)model_count_targets(f->tgt, B, T, 0);
    for (int k = 1; k <= D; k++)
        f->sc.mtp[k - 1] = (float)(0.3 / D / (double)model_count_targets(f->tgt, B, T, k));
    f->sc.bal = 1.0f / B;
}

static void setup_x(fixture *f, int D, int ckpt, const char *extra, int dropout) {
    setup_o(f, D, ckpt, extra, dropout, NULL);
}
static void setup(fixture *f, int D, int ckpt) { setup_x(f, D, ckpt, "", 0); }

static void teardown(fixture *f) {
    model_free(f->m);
    deck_free(&f->d);
}

/* The total loss exactly as the trainer forms it. */
static double loss(fixture *f, int backward) {
    model_sums s;
    memset(&s, 0, sizeof s);
    model_batch bt = {.tokens = f->tok, .targets = f->tgt, .B = B, .T = T, .dropout = f->dropout, .seed = 11,
                      .step = f->step, .sample0 = f->sample0};
    if (backward) model_zero_grad(f->m);
    model_step(f->m, &bt, f->sc, backward, &s);
    model_reset_counts(f->m);
    double L = s.lm_sum * f->sc.lm + s.bal_sum * f->sc.bal;
    for (int k = 0; k < f->D; k++) L += s.mtp_sum[k] * f->sc.mtp[k];
    return L;
}

/* Central differences on a few entries of every trainable tensor. */
static void check_grads(fixture *f) {
    loss(f, 1);
    const param_table *pt = model_params(f->m);
    float *g0 = malloc(pt->total_local * sizeof *g0);
    memcpy(g0, model_grad_buffer(f->m), pt->total_local * sizeof *g0);
    float *w = model_param_buffer(f->m);
    int checked = 0, mtp_checked = 0;
    double worst = 0.0;
    for (int i = 0; i < pt->n; i++) {
        const param_spec *s = &pt->t[i];
        if (s->flags & (P_FROZEN | P_NOGRAD)) continue;
        double gmax = 0.0;
        for (int64_t j = 0; j < s->numel_local; j++) gmax = fmax(gmax, fabs(g0[s->offset + j]));
        for (int probe = 0; probe < 3; probe++) {
            size_t j = s->offset + (size_t)((probe * 7919 + i * 104729) % s->numel_local);
            float keep = w[j], h = 1e-2f;
            w[j] = keep + h;
            double lp = loss(f, 0);
            w[j] = keep - h;
            double lm = loss(f, 0);
            w[j] = keep;
            double num = (lp - lm) / (2.0 * h), ana = g0[j];
            double err = fabs(num - ana) / (gmax + 1e-3);
            if (err > worst) worst = err;
            if (err > 2e-2)
                fail_msg("%s[%zu]: analytic %.6g, numeric %.6g (tensor max |g| %.3g)", s->name, j - s->offset, ana, num,
                         gmax);
            checked++;
            if (f->D > 0 && (strstr(s->name, "layers.2.") || strstr(s->name, "layers.3."))) mtp_checked++;
        }
    }
    print_message("    %d entries checked (%d in MTP layers), worst error %.2e of the tensor's max |grad|\n", checked,
                  mtp_checked, worst);
    if (f->D > 0 && !f->lora) assert_true(mtp_checked > 30);
    free(g0);
}

static void test_fd_no_mtp(void **state) {
    (void)state;
    fixture f;
    setup(&f, 0, 0);
    check_grads(&f);
    teardown(&f);
}

static void test_fd_mtp1(void **state) {
    (void)state;
    fixture f;
    setup(&f, 1, 0);
    check_grads(&f);
    teardown(&f);
}

static void test_fd_mtp2(void **state) {
    (void)state;
    fixture f;
    setup(&f, 2, 0);
    check_grads(&f);
    teardown(&f);
}

/* MTP must change the gradient of the main model (it backpropagates into h). */
static void test_mtp_reaches_main_model(void **state) {
    (void)state;
    fixture a, b;
    setup(&a, 0, 0);
    setup(&b, 1, 0);
    loss(&a, 1);
    loss(&b, 1);
    float *ga, *gb;
    model_tensor(a.m, "model.layers.0.self_attn.o_proj.weight", &ga);
    model_tensor(b.m, "model.layers.0.self_attn.o_proj.weight", &gb);
    double diff = 0.0;
    for (int i = 0; i < 16 * 12; i++) diff += fabs(ga[i] - gb[i]);
    assert_true(diff > 1e-6);
    teardown(&a);
    teardown(&b);
}

/* Activation checkpointing recomputes the same activations: same loss and gradients. */
static void test_checkpointing_same_grads(void **state) {
    (void)state;
    fixture a, b;
    setup(&a, 1, 0);
    setup(&b, 1, 1);
    double la = loss(&a, 1), lb = loss(&b, 1);
    assert_true(la == lb);
    const param_table *pt = model_params(a.m);
    const float *ga = model_grad_buffer(a.m), *gb = model_grad_buffer(b.m);
    for (size_t i = 0; i < pt->total_local; i++)
        if (ga[i] != gb[i]) fail_msg("gradient %zu differs with activation checkpointing: %g vs %g", i, ga[i], gb[i]);
    teardown(&a);
    teardown(&b);
}

/* train.dtype = "bf16" keeps the main blocks' inputs in bf16, the residual stream rounded where it enters
 * them: the loss and gradients move by about bf16's precision from fp32's (they must move: the rounding
 * happened; by little: the same model), and activation checkpointing, which recomputes each block from its
 * bf16 copy, gives bitwise the same loss and gradients as keeping every block's activations. */
static void test_bf16_block_inputs(void **state) {
    (void)state;
    fixture f32, a, b;
    setup(&f32, 1, 0);
    setup_o(&a, 1, 0, "", 0, "train.dtype=\"bf16\"");
    setup_o(&b, 1, 1, "", 0, "train.dtype=\"bf16\"");
    double l32 = loss(&f32, 1), la = loss(&a, 1), lb = loss(&b, 1);
    print_message("    loss fp32 %.9f, bf16 block inputs %.9f (rel %.2e)\n", l32, la, fabs(la - l32) / fabs(l32));
    assert_true(la != l32 && fabs(la - l32) < 1e-2 * fabs(l32));
    assert_true(la == lb);
    const param_table *pt = model_params(a.m);
    const float *g32 = model_grad_buffer(f32.m), *ga = model_grad_buffer(a.m), *gb = model_grad_buffer(b.m);
    double num = 0, den = 0;
    for (size_t i = 0; i < pt->total_local; i++) {
        if (ga[i] != gb[i]) fail_msg("gradient %zu differs with activation checkpointing (bf16): %g vs %g", i, ga[i], gb[i]);
        num += ((double)ga[i] - g32[i]) * ((double)ga[i] - g32[i]), den += (double)g32[i] * g32[i];
    }
    print_message("    gradient rel. L2 difference bf16 vs fp32: %.2e\n", sqrt(num / den));
    assert_true(num > 0 && sqrt(num / den) < 5e-2);
    teardown(&f32), teardown(&a), teardown(&b);
}

/* A micro-batch of another shape re-creates the activation buffer; back at the
 * first shape, loss and gradients are bitwise those of the first step. */
static void test_shape_change(void **state) {
    (void)state;
    for (int ckpt = 0; ckpt <= 1; ckpt++) {
        fixture a;
        setup(&a, 2, ckpt);
        double l0 = loss(&a, 1);
        const param_table *pt = model_params(a.m);
        float *g0 = malloc(pt->total_local * sizeof *g0);
        memcpy(g0, model_grad_buffer(a.m), pt->total_local * sizeof *g0);
        model_sums s;
        memset(&s, 0, sizeof s);
        model_batch one = {.tokens = a.tok, .targets = a.tgt, .B = 1, .T = T}; /* the first sequence alone */
        char err[256];
        assert_int_equal(model_reshape(a.m, 1, T, err, sizeof err), 0);
        model_step(a.m, &one, a.sc, 1, &s);
        model_step(a.m, &one, a.sc, 0, &s);
        model_reset_counts(a.m);
        assert_int_equal(model_reshape(a.m, 2, T, err, sizeof err), 0);
        assert_true(loss(&a, 1) == l0);
        const float *g1 = model_grad_buffer(a.m);
        for (size_t i = 0; i < pt->total_local; i++)
            if (g0[i] != g1[i]) fail_msg("gradient %zu differs after a shape change (ckpt %d)", i, ckpt);
        free(g0);
        teardown(&a);
    }
}

/* Counter-based init: the routed experts a rank holds under EP=2 get exactly
 * the values the same experts get at EP=1 (every value is a function of the
 * seed, the tensor name and the global index), and so do all other tensors. */
static void test_init_independent_of_split(void **state) {
    (void)state;
    char text[4096], err[512];
    snprintf(text, sizeof text, DECK, 1, "false");
    deck d1, d2;
    char *over[] = {"parallel.expert_parallel=2", "train.global_batch=4"}; /* 2 ranks x micro-batch 2 */
    assert_int_equal(deck_load_string(&d1, text, "test_model", 0, NULL, 1, err, sizeof err), 0);
    if (deck_load_string(&d2, text, "test_model", 2, over, 2, err, sizeof err)) fail_msg("deck: %s", err);
    model_opts mo1 = deck_model_opts(&d1), mo2 = deck_model_opts(&d2);
    model *whole;
    assert_int_equal(model_create(&whole, &mo1, NULL, err, sizeof err), 0);
    model_init_weights(whole, 7);
    const param_table *pt = model_params(whole);
    int experts_seen = 0;
    for (int r = 0; r < 2; r++) {
        plan p;
        if (plan_layout(&p, &d2, 2, r, err, sizeof err)) fail_msg("plan_layout: %s", err);
        model *part;
        assert_int_equal(model_create(&part, &mo2, &p, err, sizeof err), 0);
        model_init_weights(part, 7);
        for (int i = 0; i < pt->n; i++) {
            const param_spec *s = &pt->t[i];
            const float *a = model_tensor(whole, s->name, NULL), *b = model_tensor(part, s->name, NULL);
            assert_non_null(a);
            assert_non_null(b);
            size_t n = (size_t)s->numel, off = 0;
            if (s->flags & P_EXPERT) { /* my half of the stacked [E, out, in] */
                n = (size_t)s->numel / 2;
                off = (size_t)r * n;
                experts_seen++;
            }
            if (memcmp(a + off, b, n * sizeof *a)) fail_msg("%s differs at EP=2 rank %d", s->name, r);
        }
        model_free(part);
        plan_free(&p);
    }
    assert_true(experts_seen > 0);
    model_free(whole);
    deck_free(&d1);
    deck_free(&d2);
}

static const char *LORA_DROP =
    "lora = { enabled = true; r = 2; alpha = 3.0; dropout = 0.3; use_rslora = true;\n"
    "  targets = [\"self_attn.q_a_proj\", \"self_attn.q_b_proj\", \"self_attn.kv_a_proj_with_mqa\",\n"
    "             \"self_attn.kv_b_proj\", \"self_attn.o_proj\", \"mlp.gate_proj\", \"mlp.up_proj\",\n"
    "             \"mlp.down_proj\", \"mlp.shared_experts.gate_proj\", \"mlp.shared_experts.down_proj\"]; };\n";

static const char *LORA_EXPERTS =
    "lora = { enabled = true; r = 3; alpha = 5.0;\n"
    "  targets = [\"mlp.experts.gate_proj\", \"mlp.experts.up_proj\", \"mlp.experts.down_proj\",\n"
    "             \"self_attn.o_proj\"]; };\n";

/* Finite differences through the routed experts' per-expert adapters (every
 * token routed to every expert here, so each expert's A and B get gradients). */
static void test_fd_lora_experts(void **state) {
    (void)state;
    fixture f;
    setup_x(&f, 1, 0, LORA_EXPERTS, 1);
    check_grads(&f);
    teardown(&f);
}

/* Finite differences through every adapter kind with dropout on (MTP depth 1). */
static void test_fd_lora_dropout(void **state) {
    (void)state;
    fixture f;
    setup_x(&f, 1, 0, LORA_DROP, 1);
    check_grads(&f);
    teardown(&f);
}

/* The mask is applied (the loss moves), reproducible, keyed by the step and by
 * the rows' global sample index, off in evaluation, and drawn again
 * identically when activation checkpointing recomputes a block. */
static void test_lora_dropout_mask(void **state) {
    (void)state;
    fixture a, b;
    setup_x(&a, 1, 0, LORA_DROP, 1);
    setup_x(&b, 1, 1, LORA_DROP, 1);
    double l1 = loss(&a, 1), lck = loss(&b, 1), l1again = loss(&a, 1);
    assert_true(l1 == lck && l1 == l1again);
    const param_table *pt = model_params(a.m);
    const float *ga = model_grad_buffer(a.m), *gb = model_grad_buffer(b.m);
    for (size_t i = 0; i < pt->total_local; i++)
        if (ga[i] != gb[i]) fail_msg("gradient %zu differs with activation checkpointing: %g vs %g", i, ga[i], gb[i]);
    a.dropout = 0;
    double off = loss(&a, 0);
    a.dropout = 1, a.step = 4;
    double next = loss(&a, 0);
    a.step = 3, a.sample0 = 6;
    double shifted = loss(&a, 0);
    print_message("    loss: dropout %.9f, off %.9f, next step %.9f, other samples %.9f\n", l1, off, next, shifted);
    assert_true(off != l1 && next != l1 && shifted != l1);
    teardown(&a);
    teardown(&b);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_no_mtp),
        cmocka_unit_test(test_fd_mtp1),
        cmocka_unit_test(test_fd_mtp2),
        cmocka_unit_test(test_mtp_reaches_main_model),
        cmocka_unit_test(test_checkpointing_same_grads),
        cmocka_unit_test(test_bf16_block_inputs),
        cmocka_unit_test(test_shape_change),
        cmocka_unit_test(test_init_independent_of_split),
        cmocka_unit_test(test_fd_lora_dropout),
        cmocka_unit_test(test_fd_lora_experts),
        cmocka_unit_test(test_lora_dropout_mask),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return rc;
}
