/* test_decode.c — generation's cached decoding (model_decode: absorbed MLA over
 * the latent cache, mla_decode.c) against full recomputation with the training
 * forward (model_step): the logits of every position, fp32, relative L2 error
 * per position <= 1e-5, on a YaRN model whose original context (16) the
 * sequences run well past (40 positions).
 *   - one sequence: a 5-token prefill in one pass, then one token per step
 *     (low-rank q_a/q_b, and a plain q_proj);
 *   - a batch of two sequences with different prompt lengths (prefilled one by
 *     one into their cache slots), then decoded together at different positions;
 *   - model_merge_lora: a LoRA model's merged decode equals its unmerged forward;
 *   - the cache holds kv_lora_rank + qk_rope_head_dim floats per token per layer. */
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
#include "../src/ops.h"

static const char *DECK =
    "model = { vocab_size = 37; hidden_size = 16; intermediate_size = 24; moe_intermediate_size = 8;\n"
    "  num_hidden_layers = 3; first_k_dense_replace = 1; n_routed_experts = 4; n_shared_experts = 1;\n"
    "  num_experts_per_tok = 4; n_group = 2; topk_group = 2; routed_scaling_factor = 2.5;\n"
    "  q_lora_rank = %d; kv_lora_rank = 8; qk_nope_head_dim = 4; qk_rope_head_dim = 4; v_head_dim = 6;\n"
    "  num_attention_heads = 3; num_key_value_heads = 3; max_position_embeddings = 64;\n"
    "  rope_scaling = { type = \"yarn\"; factor = 4.0; original_max_position_embeddings = 16; beta_fast = 32.0;\n"
    "                   beta_slow = 1.0; mscale = 1.0; mscale_all_dim = 0.7; };\n"
    "  num_nextn_predict_layers = %d; initializer_range = 0.4; bias_update_rate = 0.0; mtp_loss_weight = 0.3; };\n"
    "train = { micro_batch = 1; global_batch = 1; seq_len = 40; dtype = \"fp32\"; };\n"
    "lora = { enabled = %s; r = 4; alpha = 8.0; targets = [\"self_attn.q_b_proj\", \"self_attn.kv_b_proj\",\n"
    "  \"self_attn.o_proj\", \"mlp.gate_proj\", \"mlp.experts.gate_proj\", \"mlp.experts.down_proj\"]; };\n"
    "run = { seed = 11L; steps = 1; };\n"
    "schedule = { warmup_steps = 0; };\n";

enum { T = 40, V = 37 };

static void tokens(int32_t *tok, int n, uint64_t x) {
    for (int i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        tok[i] = (int32_t)((x >> 33) % V);
    }
}

static void make_qd(deck *d, model **m, int lora, int q_lora_rank, int D) {
    char text[4096], err[512];
    snprintf(text, sizeof text, DECK, q_lora_rank, D, lora ? "true" : "false");
    assert_int_equal(deck_load_string(d, text, "test_decode", 0, NULL, 1, err, sizeof err), 0);
    model_opts mo = deck_model_opts(d);
    assert_int_equal(model_create(m, &mo, NULL, err, sizeof err), 0);
    model_init_weights(*m, 11);
    if (lora) /* LoRA B starts at zero: give it values so the adapters matter */
        for (int i = 0; i < model_params(*m)->n; i++) {
            const param_spec *s = &model_params(*m)->t[i];
            size_t len = strlen(s->name);
            if (len > 14 && !strcmp(s->name + len - 14, ".lora_B.weight"))
                ops_fill_normal(model_tensor(*m, s->name, NULL), (size_t)s->numel, 5, (uint64_t)i, 0, 0.3f);
        }
    for (int i = 0; i < model_n_moe(*m); i++) { /* non-trivial router biases */
        float *b = model_router_bias(*m, i);
        for (int e = 0; e < 4; e++) b[e] = 0.02f * (float)e;
    }
}
static void make_q(deck *d, model **m, int lora, int q_lora_rank) { make_qd(d, m, lora, q_lora_rank, 0); }
static void make(deck *d, model **m, int lora) { make_q(d, m, lora, 12); }

/* Training forward (no backward) of one sequence with targets tgt [T]; its sums. */
static model_sums forward_one(model *m, const int32_t *tok, const int32_t *tgt) {
    char err[256];
    assert_int_equal(model_reshape(m, 1, T, err, sizeof err), 0);
    model_batch bt = {.tokens = tok, .targets = tgt, .B = 1, .T = T};
    model_scales sc;
    memset(&sc, 0, sizeof sc);
    model_sums s;
    memset(&s, 0, sizeof s);
    model_step(m, &bt, sc, 0, &s);
    return s;
}

/* Training forward of one sequence: logits [T, V] into out. */
static void full_logits(model *m, const int32_t *tok, float *out) {
    int32_t tgt[T];
    for (int t = 0; t < T; t++) tgt[t] = -100;
    forward_one(m, tok, tgt);
    memcpy(out, model_logits(m), sizeof(float) * T * V);
}

static double rel_l2(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) num += (double)(a[i] - b[i]) * (a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / (den > 0 ? den : 1));
}

/* model_decode of (B, n) and the check of its logits rows against ref rows. */
static double decode_check(model *m, model_kv *kv, int seq0, const int32_t *tok, int B, int n, const int *pos,
                           int all, const float *const *ref) {
    char err[256];
    assert_int_equal(model_reshape(m, B, n, err, sizeof err), 0);
    model_decode(m, kv, seq0, tok, B, n, pos, all);
    const float *lg = model_logits(m);
    double worst = 0;
    for (int b = 0; b < B; b++)
        for (int i = all ? 0 : n - 1; i < n; i++) {
            const float *got = lg + (size_t)(all ? b * n + i : b) * V, *want = ref[b] + (size_t)(pos[b] + i) * V;
            double e = rel_l2(got, want, V);
            if (e > worst) worst = e;
            if (e > 1e-5) fail_msg("sequence %d position %d: rel L2 %.3e > 1e-5", seq0 + b, pos[b] + i, e);
        }
    return worst;
}

static void single(int q_lora_rank) {
    deck d;
    model *m;
    make_q(&d, &m, 0, q_lora_rank);
    int32_t tok[T];
    tokens(tok, T, 3);
    static float ref[T * V];
    full_logits(m, tok, ref);
    char err[256];
    model_kv *kv;
    assert_int_equal(model_kv_create(&kv, m, 1, T, 5, 0, err, sizeof err), 0);
    assert_int_equal(model_kv_floats_per_token(m), 3 * (8 + 4));
    const float *r[1] = {ref};
    int pos = 0;
    double worst = decode_check(m, kv, 0, tok, 1, 5, &pos, 1, r); /* prefill, every row */
    for (pos = 5; pos < T; pos++) {
        double e = decode_check(m, kv, 0, tok + pos, 1, 1, &pos, 1, r);
        if (e > worst) worst = e;
    }
    printf("one sequence, q_lora_rank %d: prefill 5 + 35 decode steps (YaRN original context 16): worst rel L2 %.2e\n",
           q_lora_rank, worst);
    model_kv_free(kv);
    model_free(m);
    deck_free(&d);
}
static void test_single(void **state) {
    (void)state;
    single(12);
}
static void test_single_plain_q(void **state) { /* q_proj instead of q_a/q_b (V2-Lite style) */
    (void)state;
    single(0);
}

static void test_batch(void **state) {
    (void)state;
    deck d;
    model *m;
    make(&d, &m, 0);
    int32_t tok[2][T];
    tokens(tok[0], T, 5);
    tokens(tok[1], T, 9);
    static float ref[2][T * V];
    full_logits(m, tok[0], ref[0]);
    full_logits(m, tok[1], ref[1]);
    char err[256];
    model_kv *kv;
    int len[2] = {7, 19};
    assert_int_equal(model_kv_create(&kv, m, 2, T, 19, 0, err, sizeof err), 0);
    const float *r0[1] = {ref[0]}, *r1[1] = {ref[1]}, *r[2] = {ref[0], ref[1]};
    int zero = 0;
    double worst = decode_check(m, kv, 0, tok[0], 1, len[0], &zero, 0, r0); /* last row only */
    double e = decode_check(m, kv, 1, tok[1], 1, len[1], &zero, 0, r1);
    worst = e > worst ? e : worst;
    for (int s = 0; len[1] + s < T; s++) {
        int pos[2] = {len[0] + s, len[1] + s};
        int32_t step[2] = {tok[0][pos[0]], tok[1][pos[1]]};
        e = decode_check(m, kv, 0, step, 2, 1, pos, 1, r);
        worst = e > worst ? e : worst;
    }
    printf("two sequences (prompts 7 and 19, decoded together): worst rel L2 %.2e\n", worst);
    model_kv_free(kv);
    model_free(m);
    deck_free(&d);
}

static void test_merged_lora(void **state) {
    (void)state;
    deck d;
    model *m;
    make(&d, &m, 1);
    int32_t tok[T];
    tokens(tok, T, 7);
    static float ref[T * V], base[T * V];
    full_logits(m, tok, ref); /* the LoRA model, adapters applied in the forward */
    char err[256];
    assert_int_equal(model_merge_lora(m, err, sizeof err), 0);
    model_kv *kv;
    assert_int_equal(model_kv_create(&kv, m, 1, T, T, 0, err, sizeof err), 0);
    const float *r[1] = {ref};
    int pos = 0;
    double worst = decode_check(m, kv, 0, tok, 1, T, &pos, 1, r);
    /* the adapters changed the model: the base alone is far from it */
    deck d2;
    model *m2;
    make(&d2, &m2, 0);
    full_logits(m2, tok, base);
    double gap = rel_l2(base, ref, T * V);
    assert_true(gap > 1e-2);
    printf("LoRA merged into the base: decode vs unmerged forward rel L2 %.2e (base alone: %.2e)\n", worst, gap);
    model_free(m2);
    deck_free(&d2);
    model_kv_free(kv);
    model_free(m);
    deck_free(&d);
}

/* The MTP module over the cache (model_decode_mtp): its cross-entropy on the
 * depth-1 targets equals the training forward's (model_sums.mtp_sum), for a
 * prefill of every row at once and for one row per step after a 5-token prefill. */
static void test_mtp(void **state) {
    (void)state;
    deck d;
    model *m;
    make_qd(&d, &m, 0, 12, 1);
    int32_t tok[T], tgt[T];
    tokens(tok, T, 13);
    for (int t = 0; t < T; t++) tgt[t] = t + 1 < T ? tok[t + 1] : -100;
    char err[256];
    model_sums s = forward_one(m, tok, tgt);
    double want = s.mtp_sum[0]; /* Σ_t CE(MTP row t, tokens[t+2]) */
    model_kv *kv;
    assert_int_equal(model_kv_create(&kv, m, 1, T, T, 1, err, sizeof err), 0);
    int32_t next[T], t2[T];
    for (int t = 0; t < T; t++) next[t] = t + 1 < T ? tok[t + 1] : 0, t2[t] = t + 2 < T ? tok[t + 2] : -100;
    int zero = 0;
    model_decode(m, kv, 0, tok, 1, T, &zero, 1); /* reshaped above: 1 x T */
    model_decode_mtp(m, kv, 0, next, 1, T, &zero);
    double all = ops_cross_entropy_forward(NULL, NULL, model_logits(m), t2, T, V);
    double step = 0;
    model_kv_free(kv);
    assert_int_equal(model_kv_create(&kv, m, 1, T, T, 1, err, sizeof err), 0);
    assert_int_equal(model_reshape(m, 1, 5, err, sizeof err), 0);
    model_decode(m, kv, 0, tok, 1, 5, &zero, 1);
    model_decode_mtp(m, kv, 0, next, 1, 5, &zero);
    step += ops_cross_entropy_forward(NULL, NULL, model_logits(m), t2, 5, V);
    assert_int_equal(model_reshape(m, 1, 1, err, sizeof err), 0);
    for (int p = 5; p < T; p++) {
        model_decode(m, kv, 0, tok + p, 1, 1, &p, 1);
        model_decode_mtp(m, kv, 0, next + p, 1, 1, &p);
        step += ops_cross_entropy_forward(NULL, NULL, model_logits(m), t2 + p, 1, V);
    }
    double e1 = fabs(all - want) / want, e2 = fabs(step - want) / want;
    printf("MTP over the cache: CE sum %.6f (training forward %.6f): rel diff %.1e all rows, %.1e one row per step\n",
           step, want, e1, e2);
    assert_true(want > 1.0 && e1 < 1e-5 && e2 < 1e-5);
    model_kv_free(kv);
    model_free(m);
    deck_free(&d);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single),
        cmocka_unit_test(test_single_plain_q),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_merged_lora),
        cmocka_unit_test(test_mtp),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return rc;
}
