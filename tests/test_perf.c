/* test_perf.c — the GPU plan's accounting (src/perf.c): uneven expert
 * ownership, routing destinations, memory by category, bytes per link class,
 * FLOPs and roofline times on small hand-computed cases; then DeepSeek-V3's
 * counts against the parameter total and the paper model's per-token FLOPs
 * (../shared/docs/sft-perf-model.md §2), and monotonicity in the inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "../src/deck.h"
#include "../src/perf.h"

#define NEAR(a, b, tol) assert_true(fabs((double)(a) - (double)(b)) <= (tol) * fmax(1.0, fabs((double)(b))))

static void test_expert_range(void **state) {
    (void)state;
    int f, c, total = 0;
    perf_expert_range(256, 24, 0, &f, &c); /* 256 = 16 x 11 + 8 x 10 */
    assert_int_equal(f, 0), assert_int_equal(c, 11);
    perf_expert_range(256, 24, 15, &f, &c);
    assert_int_equal(f, 165), assert_int_equal(c, 11);
    perf_expert_range(256, 24, 16, &f, &c);
    assert_int_equal(f, 176), assert_int_equal(c, 10);
    perf_expert_range(256, 24, 23, &f, &c);
    assert_int_equal(f, 246), assert_int_equal(c, 10);
    for (int r = 0, next = 0; r < 5; r++) { /* 12 on 5: 3 3 2 2 2, contiguous */
        perf_expert_range(12, 5, r, &f, &c);
        assert_int_equal(f, next);
        assert_int_equal(c, r < 2 ? 3 : 2);
        next = f + c, total += c;
    }
    assert_int_equal(total, 12);
    perf_expert_range(256, 8, 7, &f, &c); /* even */
    assert_int_equal(f, 224), assert_int_equal(c, 32);
}

static perf_model tiny_model(int E, int k, int G, int tg) {
    perf_model m;
    memset(&m, 0, sizeof m);
    m.E = E, m.k = k, m.n_group = G, m.topk_group = tg;
    return m;
}

static void test_routing(void **state) {
    (void)state;
    /* 4 experts on 4 ranks, 2 ranks a node, top-1: one destination, uniform */
    perf_model m = tiny_model(4, 1, 1, 1);
    perf_route r = perf_routing(&m, 4, 2);
    NEAR(r.ranks, 1.0, 1e-12), NEAR(r.self, 0.25, 1e-12), NEAR(r.local, 0.25, 1e-12);
    NEAR(r.remote, 0.5, 1e-12), NEAR(r.nodes, 0.5, 1e-12);
    /* top-2 of 4: P(a given expert) = 1 - C(3,2)/C(4,2) = 1/2; P(node {2,3}) = 1 - C(2,2)/C(4,2) = 5/6 */
    m = tiny_model(4, 2, 1, 1);
    r = perf_routing(&m, 4, 2);
    NEAR(r.ranks, 2.0, 1e-12), NEAR(r.self, 0.5, 1e-12), NEAR(r.local, 0.5, 1e-12);
    NEAR(r.remote, 1.0, 1e-12), NEAR(r.nodes, 5.0 / 6.0, 1e-12);
    /* group-limited: 2 groups of 2, top-1 group, top-2 inside it: both experts of the chosen group;
     * ranks own one expert: each hit with P 1/2, 2 ranks per token */
    m = tiny_model(4, 2, 2, 1);
    r = perf_routing(&m, 4, 4);
    NEAR(r.ranks, 2.0, 1e-12), NEAR(r.self, 0.5, 1e-12), NEAR(r.local, 1.5, 1e-12), NEAR(r.remote, 0.0, 1e-12);
    r = perf_routing(&m, 2, 8); /* EP 2 = one group per rank: exactly one rank per token */
    NEAR(r.ranks, 1.0, 1e-12), NEAR(r.self, 0.5, 1e-12);
    /* DeepSeek-V3 routing: one row per (token, destination rank) is fewer than k = 8 */
    m = tiny_model(256, 8, 8, 4);
    r = perf_routing(&m, 24, 8);
    assert_true(r.ranks > 4.0 && r.ranks < 8.0);
    NEAR(r.ranks, r.self + r.local + r.remote, 1e-12);
    assert_true(r.nodes > 1.0 && r.nodes < 2.0);
    r = perf_routing(&m, 8, 8); /* EP 8: a rank is a routing group; 4 groups chosen */
    assert_true(r.ranks < 4.0 && r.ranks > 3.5), NEAR(r.remote, 0.0, 1e-12);
    double miss = 1.0;
    for (int i = 0; i < 8; i++) miss *= (96.0 - i) / (128.0 - i);
    NEAR(r.self, 0.5 * (1.0 - miss), 1e-12);
}

/* A hand-sized model: 4 experts of 1000 weights (1 scale block) in 2 MoE layers. */
static perf_model small_model(void) {
    perf_model m = tiny_model(4, 1, 1, 1);
    m.H = 256, m.V = 1000, m.L = 2, m.D = 0, m.n_moe = 2, m.max_pos = 1 << 20;
    m.exp_frozen = 1000, m.exp_scales = 1, m.exp_train = 10;
    m.q8 = 10000, m.q8_scales = 2, m.b16 = 3000, m.small = 100, m.train = 500;
    m.embed = 1000, m.head = 1000, m.embed_frozen = 1000, m.head_frozen = 1000;
    m.lay_q8 = 5000, m.lay_q8_scales = 1, m.lay_b16 = 500, m.lay_small = 50, m.lay_train = 250;
    m.moe_q8 = 3000, m.moe_q8_scales = 1, m.moe_b16 = 400, m.moe_small = 40, m.moe_train = 200;
    m.f_q8 = 20000, m.f_b16 = 1000, m.f_train = 1000, m.f_exp_frozen = 4000, m.f_exp_train = 40, m.f_head = 2000;
    m.f_attn_coef = 10, m.act_floats = 100, m.lora_io = 10, m.act_tok_ckpt = 1000, m.act_tok_full = 3000;
    return m;
}

static perf_layout small_layout(perf_dtype base, int resident) {
    /* world 4, EP 4, 2 GPUs a node, ZeRO 1, checkpointing, 1 x 8 tokens */
    perf_layout l = {base, resident, PERF_BF16, 4, 4, 2, 1, 1, 1, 8, 1};
    return l;
}

static void test_memory(void **state) {
    (void)state;
    perf_model m = small_model();
    perf_layout l = small_layout(PERF_FP8, 1);
    perf_mem r = perf_memory(&m, &l, 1);
    NEAR(r.experts, 2 * 1 * (1000 * 1 + 1 * 4), 1e-12);             /* 2 layers x 1 expert, e4m3 + scale */
    NEAR(r.base, (10000 + 2 * 4 + 3000 * 2 + 100 * 4) / 2.0, 1e-12); /* node share of 2 */
    /* gather: 2 x max(layer 5000 + 4 + 500*2 + 50*4 = 6204, head 1000*2 + 256*4 = 3024) + rows 8*256*2 */
    NEAR(r.gather, 2 * 6204.0 + 8 * 256 * 2, 1e-12);
    /* trainable 500 + 2 layers x 1 expert x 10: bf16 copy, master, grads (ZeRO 1), moments / 4 ranks (experts / 1) */
    NEAR(r.train, 2 * 520.0 + 4 * 520.0 + 4 * 520.0 + 8 * (500 / 4.0 + 20 / 1.0), 1e-12);
    NEAR(r.acts, 8 * 1000.0, 1e-12);
    NEAR(r.logits, 8 * (4 * 1000.0 + 4), 1e-12);
    /* dispatch: 1 destination rank (top-1) x 1.5 headroom x send+recv x (bf16 dispatch + bf16 combine) */
    NEAR(r.dispatch, 8 * 1.0 * 1.5 * 2 * (256 * 2 + 256 * 2), 1e-12);
    NEAR(r.total, r.experts + r.base + r.gather + r.train + r.acts + r.logits + r.dispatch + PERF_RUNTIME_BYTES,
         1e-12);
    /* sharded below ZeRO-3: frozen weights whole on every rank, nothing gathered */
    l = small_layout(PERF_BF16, 0);
    r = perf_memory(&m, &l, 1);
    NEAR(r.experts, 2 * 1000 * 2, 1e-12), NEAR(r.base, 10000 * 2 + 3000 * 2 + 100 * 4, 1e-12), NEAR(r.gather, 0, 1e-12);
    /* sharded, ZeRO-3, EP 2 on 4 ranks: experts over the data group of 2, base over 4; gathers carry the
     * layer's experts and the trainable bf16 copies */
    l.ep = 2, l.zero = 3;
    r = perf_memory(&m, &l, 2);
    NEAR(r.experts, 2 * 2 * 1000 * 2 / 2.0, 1e-12);
    NEAR(r.base, (10000 * 2 + 3000 * 2 + 100 * 4) / 4.0, 1e-12);
    /* the largest gathered group: the dense layer (5000*2 + 500*2 + 50*4 + 250*2 = 11700), not the MoE
     * layer with its 2 gathered experts (3000*2 + 400*2 + 40*4 + 200*2 + 2*1000*2 + 2*2*10 = 11400) */
    NEAR(r.gather, 2 * 11700.0 + 8 * 256 * 2, 1e-12);
    m.exp_frozen = 2000; /* now the MoE layer is: 6000 + 800 + 160 + 400 + 2 x 4000 + 40 = 15400 */
    r = perf_memory(&m, &l, 2);
    NEAR(r.gather, 2 * 15400.0 + 8 * 256 * 2, 1e-12);
    m = small_model();
    /* fp8 wire: dispatch rows of 256 B + 2 scales x 4 B, combine bf16 */
    l = small_layout(PERF_FP8, 1);
    l.wire = PERF_FP8;
    NEAR(perf_memory(&m, &l, 1).dispatch, 8 * 1.5 * 2 * (256 + 8 + 512), 1e-12);
    /* uneven owners: the largest total is the owner of one more expert */
    l = small_layout(PERF_FP8, 1);
    l.ep = 3, l.world = 3;
    perf_mem hi = perf_memory(&m, &l, 2), lo = perf_memory(&m, &l, 1);
    NEAR(perf_max_total(&m, &l), hi.total, 1e-12);
    NEAR(hi.experts - lo.experts, 2 * 1004.0, 1e-12);
    /* fits: memory grows with seq_len and micro-batch */
    l = small_layout(PERF_FP8, 1);
    double cap = perf_max_total(&m, &l);
    assert_int_equal(perf_fit_seq(&m, &l, cap), 8);
    assert_int_equal(perf_fit_micro(&m, &l, cap), 1);
    assert_int_equal(perf_fit_seq(&m, &l, 1.0), 0);
}

static void test_step(void **state) {
    (void)state;
    perf_model m = small_model();
    perf_layout l = small_layout(PERF_FP8, 1);
    /* the rank owns 1 of 4 experts with EP 4: its rows = its tokens x k (share 4 x 1/4 = 1) */
    perf_traffic t = perf_step(&m, &l, 1, 1);
    double N = 8;
    NEAR(t.flop_fp8[0], N * (20000 + 4000), 1e-12);             /* frozen FP8 GEMMs, forward */
    NEAR(t.flop_bf16[0], N * (1000 + 1000 + 40 + 2000), 1e-12); /* gate, LoRA, expert LoRA, head */
    NEAR(t.flop_fp8[1], 2 * N * 24000, 1e-12);                  /* recompute + dgrad */
    /* recompute (no head), dgrad of the frozen bf16, dgrad + wgrad of the trainable, head dgrad */
    NEAR(t.flop_bf16[1], N * ((1000 + 1000 + 40) + 1000 + 2 * (1000 + 40) + 2000), 1e-12);
    NEAR(t.flop_attn[0], N * 10 * 9, 1e-12);       /* coef x (S + 1) */
    NEAR(t.flop_attn[1], N * 10 * 9 * 3.5, 1e-12); /* recompute + 2.5x backward */
    /* without FP8 tensor cores: the same FLOPs run bf16, +3 B of HBM per FP8 weight per use */
    perf_traffic a = perf_step(&m, &l, 1, 0);
    NEAR(a.flop_fp8[0] + a.flop_fp8[1], 0, 1e-12);
    NEAR(a.flop_bf16[0], t.flop_bf16[0] + t.flop_fp8[0], 1e-12);
    NEAR(a.hbm[0] - t.hbm[0], 3.0 * (10000 + 2 * 1000), 1e-12);
    /* resident: the base node-sharded over 2 -> half of each gather over NVLink, nothing inter-node */
    double ne = 10000 + 2 * 4 + (3000 - 2000) * 2 + 100 * 4, head = 1000 * 2, rows = N * 256 * 2;
    NEAR(t.gather_intra, 0.5 * (ne + head + rows) + 0.5 * ne, 1e-12);
    NEAR(t.gather_inter, 0, 1e-12);
    /* dispatch top-1 on 4 ranks of 2 nodes: 0.25 + 0.5 ranks over NVLink, 0.5 nodes inter-node */
    double fw = N * (256 * 2 + 256 * 2) * 2, bw = fw + N * 2 * 512 * 2;
    NEAR(t.disp_intra, (fw + bw) * 0.75, 1e-12);
    NEAR(t.disp_inter, (fw + bw) * 0.5, 1e-12);
    /* gradient all-reduce (ZeRO 1): fp32 x 2, hierarchical: NVLink (g-1)/g, inter-node (n-1)/W */
    NEAR(t.red_intra, 2 * 4 * 500 * 0.5, 1e-12);
    NEAR(t.red_inter, 2 * 4 * 500 * 0.25, 1e-12);
    /* sharded, ZeRO-3, EP 2: experts gathered from the other data-group member (other node), base over
     * the world, bf16 copies of the trainable tensors likewise */
    l = small_layout(PERF_BF16, 0);
    l.ep = 2, l.zero = 3;
    t = perf_step(&m, &l, 2, 1);
    double X = 2 * 2 * 1000 * 2.0; /* 2 layers x 2 experts x bf16 */
    double ne16 = 10000 * 2 + 1000 * 2 + 100 * 4, tr = 2 * 500.0, tre = 2 * 2 * 2 * 10.0;
    NEAR(t.gather_inter, 2 * X * 0.5 + (ne16 + 2000 + rows + ne16) * 0.25 + 2 * (tr * 0.25 + tre * 0.5), 1e-12);
    l.zero = 1; /* below ZeRO-3 nothing frozen is gathered */
    t = perf_step(&m, &l, 2, 1);
    NEAR(t.gather_intra + t.gather_inter, 0, 1e-12);
}

static void test_time(void **state) {
    (void)state;
    perf_traffic t;
    memset(&t, 0, sizeof t);
    t.flop_fp8[0] = 2e12, t.flop_bf16[0] = 1e12, t.flop_attn[1] = 1e12, t.hbm[1] = 1e12;
    t.intra[0] = 3e9, t.inter[1] = 5e9, t.tokens = 1000, t.model_flops = 1e12;
    perf_gpu g = {"unit", 1.0, 2.0, 1.0, 80, 1.0};
    perf_eta eta = {1.0, 1.0, 0.5, 1.0};
    perf_time r = perf_time_of(&t, &g, &eta, 1.0, 1.0);
    NEAR(r.comp[0], 1.0 + 1.0, 1e-12); /* 2e12 at 2 TFLOP/s + 1e12 at 1 */
    NEAR(r.comp[1], 2.0 + 1.0, 1e-12); /* attention at eta 0.5 + 1 TB at 1 TB/s */
    NEAR(r.intra[0], 3.0, 1e-12), NEAR(r.inter[1], 5.0, 1e-12);
    NEAR(r.no_overlap, 2 + 3 + 3 + 5, 1e-12);
    NEAR(r.overlap, 3 + 5, 1e-12); /* per pass: max(2, 3) + max(3, 5) */
    NEAR(r.tok_overlap, 1000 / 8.0, 1e-12);
    NEAR(r.mfu_no_overlap, 1.0 / 13, 1e-12);
    assert_string_equal(r.bound, "inter");
    g.fp8_tflops = 0; /* no FP8 tensor cores: FP8 FLOPs at the bf16 peak */
    NEAR(perf_time_of(&t, &g, &eta, 1.0, 1.0).comp[0], 3.0, 1e-12);
}

/* DeepSeek-V3 with input/sft.cfg's LoRA: the counts add up to the model and to the paper model's FLOPs. */
static void test_deepseek_v3(void **state) {
    (void)state;
    deck d;
    char err[512];
    assert_int_equal(deck_load_string(&d,
                                      "train = { dtype = \"bf16\"; seq_len = 4096; };\n"
                                      "parallel = { expert_parallel = 8; zero_stage = 3; "
                                      "activation_checkpointing = true; };\n"
                                      "lora = { enabled = true; r = 16; targets = [ \"self_attn.q_a_proj\", "
                                      "\"self_attn.q_b_proj\", \"self_attn.kv_a_proj_with_mqa\", "
                                      "\"self_attn.kv_b_proj\", \"self_attn.o_proj\" ]; };",
                                      "v3.cfg", 0, NULL, 24, err, sizeof err),
                     0);
    model_opts o = deck_model_opts(&d);
    perf_model m;
    assert_int_equal(perf_model_build(&m, &o, err, sizeof err), 0);
    assert_int_equal(m.n_moe, 59);
    NEAR(m.exp_frozen, 3.0 * 2048 * 7168, 0);
    NEAR(m.exp_scales, 3.0 * 16 * 56, 0);
    double base = m.q8 + m.b16 + m.small + m.n_moe * m.E * m.exp_frozen;
    NEAR(base, 682636487424.0, 0); /* the base model = the dry-run's parameter count (adapters aside) */
    NEAR(m.n_moe * m.E * m.exp_frozen, 665183059968.0, 0); /* routed (paper §2) */
    NEAR(m.train, 97006592.0, 0);   /* LoRA r=16 on the five MLA projections */
    /* paper §2, forward GFLOP per token at S = 4096: MLA 23.20, routed experts 41.57, shared + router +
     * dense + eh_proj 8.00, LoRA 0.19, heads 3.71 (main + MTP), attention 10.40 */
    double mlp = 2.0 * (3 * 3 * 18432 * 7168.0 + 59 * 3 * 2048 * 7168.0); /* dense MLPs + shared experts */
    NEAR((m.f_q8 - mlp) / 1e9, 23.20, 1e-3);
    NEAR(m.f_exp_frozen / 1e9, 41.57, 1e-3);
    NEAR((m.f_b16 + mlp) / 1e9, 8.00, 1e-3);
    NEAR(m.f_train / 1e9, 0.194, 1e-2);
    NEAR(2 * m.f_head / 1e9, 3.71, 1e-3);
    NEAR(m.f_attn_coef * 4097 / 1e9, 10.40, 1e-3);
    /* the step: 275.2 GFLOP of hardware work per token (paper), 184.75 model */
    perf_layout l = {PERF_BF16, 0, PERF_BF16, 24, 8, 8, 3, 1, 1, 4096, 1};
    perf_traffic t = perf_step(&m, &l, 32, 1);
    double hw = t.flop_fp8[0] + t.flop_fp8[1] + t.flop_bf16[0] + t.flop_bf16[1] + t.flop_attn[0] + t.flop_attn[1];
    NEAR(hw / 4096 / 1e9, 275.2, 2e-3);
    NEAR(t.model_flops / 4096 / 1e9, 184.75, 2e-3);
    /* sharded: the expert gathers alone are the paper's 221.7 GB inter-node (2/3 x 32 experts x 59 layers x
     * 2 passes, bf16); the dense base adds (n-1)/W of itself per pass */
    double exp_gather = 2.0 / 3 * 32 * 59 * 2 * 2 * m.exp_frozen;
    NEAR(exp_gather / 1e9, 221.7, 1e-3);
    assert_true(t.gather_inter > exp_gather && t.gather_inter < exp_gather * 1.05);

    /* monotone: more inter-node bandwidth never slows a step; fp8 storage never needs more memory */
    perf_eta eta = perf_eta_default();
    double prev = 1e30;
    for (double bw = 1; bw <= 400; bw *= 2) {
        perf_time tm = perf_time_of(&t, &perf_gpus[1], &eta, 360, bw);
        assert_true(tm.no_overlap <= prev);
        assert_true(tm.overlap <= tm.no_overlap);
        prev = tm.no_overlap;
    }
    perf_layout l8 = l;
    l8.base = PERF_FP8;
    assert_true(perf_max_total(&m, &l8) < perf_max_total(&m, &l));
    assert_true(perf_fit_seq(&m, &l, 200e9) > perf_fit_seq(&m, &l, 80e9));
    /* sharded BF16 on H100 at NDR: the expert gathers bind at 4K and hide at a longer seq_len (paper §4b: 12.3K) */
    int S = perf_hidden_seq(&m, &l, &perf_gpus[1], &eta, 360, PERF_INTER_NDR, 256);
    assert_true(S > 4096 && S < 16384 && S % 256 == 0);
    assert_true(perf_hidden_seq(&m, &l, &perf_gpus[1], &eta, 360, 1e6, 256) == 256); /* infinite link */
    assert_true(perf_hidden_seq(&m, &l, &perf_gpus[1], &eta, 360, 1e-3, 256) == 0);  /* never */
    deck_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expert_range), cmocka_unit_test(test_routing), cmocka_unit_test(test_memory),
        cmocka_unit_test(test_step),         cmocka_unit_test(test_time),    cmocka_unit_test(test_deepseek_v3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
