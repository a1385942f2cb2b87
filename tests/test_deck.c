/* test_deck.c — input decks: every error class (one line, file:line), overrides,
 * @include, and the --print-deck round trip for every shipped deck.
 * Single process: deck_load_string, and deck_load with a NULL communicator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../src/deck.h"

/* ------------------------------------------------------------------ helpers */

static char err[1024];

/* Shipped decks live in input/; tests run from the repo root (tests/run.sh). */
static const char *input_dir(void)
{
    static const char *cands[] = {"input", "../input", "../../input"};
    struct stat st;
    for (int i = 0; i < 3; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s/tiny.cfg", cands[i]);
        if (!stat(p, &st)) return cands[i];
    }
    fail_msg("cannot find input/tiny.cfg from the working directory");
    return NULL;
}

/* The tiny deck's model and a few keys, inline: most error tests edit this. */
static const char *TINY_MODEL =
    "model = { vocab_size = 256; hidden_size = 64; intermediate_size = 128;\n"
    "  moe_intermediate_size = 32; num_hidden_layers = 3; first_k_dense_replace = 1;\n"
    "  n_routed_experts = 8; n_shared_experts = 1; num_experts_per_tok = 2;\n"
    "  n_group = 4; topk_group = 2; q_lora_rank = 32; kv_lora_rank = 16;\n"
    "  qk_nope_head_dim = 16; qk_rope_head_dim = 8; v_head_dim = 16;\n"
    "  num_attention_heads = 4; max_position_embeddings = 256;\n"
    "  rope_scaling = { factor = 4.0; original_max_position_embeddings = 64; }; };\n"
    "train = { seq_len = 64; micro_batch = 2; global_batch = 16; };\n";

/* Loads TINY_MODEL + extra at world size `world`; returns rc, message in err. */
static int load_tiny(const char *extra, int world, int n_over, char **over, deck *d)
{
    char text[8192];
    snprintf(text, sizeof text, "%s%s", TINY_MODEL, extra);
    err[0] = 0;
    return deck_load_string(d, text, "t.cfg", n_over, over, world, err, sizeof err);
}

/* Expects failure with exactly `want` as the message (one line). */
static void expect_err(const char *extra, int world, const char *want)
{
    deck d;
    int rc = load_tiny(extra, world, 0, NULL, &d);
    if (rc == 0) fail_msg("accepted, expected: %s", want);
    assert_null(d.text);
    assert_null(strchr(err, '\n'));
    if (strcmp(err, want)) fail_msg("got  '%s'\nwant '%s'", err, want);
}

/* Expects failure whose message contains every NULL-terminated fragment. */
static void expect_err_has(const char *extra, int world, int n_over, char **over, ...)
{
    deck d;
    int rc = load_tiny(extra, world, n_over, over, &d);
    if (rc == 0) fail_msg("accepted deck: %s", extra);
    assert_null(strchr(err, '\n'));
    va_list ap;
    va_start(ap, over);
    for (const char *f; (f = va_arg(ap, const char *));)
        if (!strstr(err, f)) fail_msg("message '%s' lacks '%s'", err, f);
    va_end(ap);
}

static void expect_ok(const char *extra, int world, deck *d)
{
    int rc = load_tiny(extra, world, 0, NULL, d);
    if (rc) fail_msg("rejected: %s", err);
}

/* Struct equality ignoring the owned text pointer and the deck name. */
static void assert_same_deck(const deck *a, const deck *b)
{
    deck x = *a, y = *b;
    x.text = y.text = NULL;
    memset(x.path, 0, sizeof x.path);
    memset(y.path, 0, sizeof y.path);
    assert_int_equal(memcmp(&x.run, &y.run, sizeof x.run), 0);
    assert_int_equal(memcmp(&x.model, &y.model, sizeof x.model), 0);
    assert_int_equal(memcmp(&x.parallel, &y.parallel, sizeof x.parallel), 0);
    assert_int_equal(memcmp(&x.train, &y.train, sizeof x.train), 0);
    assert_int_equal(memcmp(&x.lora, &y.lora, sizeof x.lora), 0);
    assert_int_equal(memcmp(&x.optimizer, &y.optimizer, sizeof x.optimizer), 0);
    assert_int_equal(memcmp(&x.schedule, &y.schedule, sizeof x.schedule), 0);
    assert_int_equal(memcmp(&x.data, &y.data, sizeof x.data), 0);
    assert_int_equal(memcmp(&x.validation, &y.validation, sizeof x.validation), 0);
    assert_int_equal(memcmp(&x.checkpoint, &y.checkpoint, sizeof x.checkpoint), 0);
    assert_int_equal(memcmp(&x.logging, &y.logging, sizeof x.logging), 0);
}

/* print -> load -> print: same text (after the header line), same struct;
 * and d->text (the resolved deck, overrides applied) loads to the same struct. */
static void round_trip(const deck *d, int world)
{
    char *p1 = deck_print(d);
    assert_non_null(p1);
    deck e, f;
    if (deck_load_string(&e, p1, "printed.cfg", 0, NULL, world, err, sizeof err))
        fail_msg("printed deck rejected: %s\n%s", err, p1);
    char *p2 = deck_print(&e);
    assert_string_equal(strchr(p1, '\n'), strchr(p2, '\n'));
    assert_same_deck(d, &e);
    if (deck_load_string(&f, d->text, "resolved.cfg", 0, NULL, world, err, sizeof err))
        fail_msg("resolved text rejected: %s", err);
    assert_same_deck(d, &f);
    free(p1);
    free(p2);
    deck_free(&e);
    deck_free(&f);
}

static char tmpdir[256];

static void write_file(const char *rel, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, rel);
    char *sl = strrchr(p, '/');
    *sl = 0;
    mkdir(p, 0700);
    *sl = '/';
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup_tmp(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_deck.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ tests */

static void test_defaults_are_deepseek_v3(void **state)
{
    (void)state;
    deck d;
    assert_int_equal(deck_load_string(&d, "", "empty.cfg", 0, NULL, 1, err, sizeof err), 0);
    assert_int_equal(d.model.vocab_size, 129280);
    assert_int_equal(d.model.n_routed_experts, 256);
    assert_int_equal(d.model.rope_original_max_position_embeddings, 4096);
    assert_true(d.model.rope_factor == 40.0);
    assert_string_equal(d.model.rope_scaling_type, "yarn");
    assert_string_equal(d.run.mode, "pretrain");
    assert_int_equal(d.train.global_batch, 1); /* 0 = micro_batch x world */
    assert_string_equal(d.path, "empty.cfg");
    deck_free(&d);
    assert_int_equal(deck_load_string(&d, "train = { micro_batch = 3; };", "e.cfg", 0, NULL, 4, err, sizeof err), 0);
    assert_int_equal(d.train.global_batch, 12);
    deck_free(&d);
}

static void test_unknown_keys(void **state)
{
    (void)state;
    /* TINY_MODEL is 8 lines: the extra text starts on line 9 */
    expect_err("optimizer = {\n  lr = 1e-3;\n  betas1 = 0.9;\n};\n", 1,
               "t.cfg:11: unknown key 'optimizer.betas1' (did you mean 'optimizer.beta1'?)");
    expect_err("optimizer = { warmup_steps = 10; };\n", 1,
               "t.cfg:9: unknown key 'optimizer.warmup_steps' (did you mean 'schedule.warmup_steps'?)");
    expect_err("optimiser = { lr = 1e-3; };\n", 1, "t.cfg:9: unknown key 'optimiser' (did you mean 'optimizer'?)");
    expect_err("steps = 10;\n", 1, "t.cfg:9: unknown key 'steps' (did you mean 'run.steps'?)");
    expect_err("run = { zzzzzzzz = 1; };\n", 1, "t.cfg:9: unknown key 'run.zzzzzzzz'");
    expect_err("data = { train = ( { path = \"x\"; wieght = 2.0; } ); };\n", 1,
               "t.cfg:9: unknown key 'data.train[0].wieght' (did you mean 'data.train[0].weight'?)");
    deck d;
    assert_int_equal(deck_load_string(&d, "model = {\n rope_scaling = { facter = 2.0; }; };", "n.cfg", 0, NULL, 1, err,
                                      sizeof err), -1);
    assert_string_equal(err, "n.cfg:2: unknown key 'model.rope_scaling.facter' (did you mean 'model.rope_scaling.factor'?)");
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_err("optimizer = {\n  lr = 3;\n};\n", 1, "t.cfg:10: optimizer.lr: expected a float, found an int (write 3.0)");
    expect_err("run = { steps = \"10\"; };\n", 1, "t.cfg:9: run.steps: expected an int, found a string");
    expect_err("run = { steps = 10.0; };\n", 1, "t.cfg:9: run.steps: expected an int, found a float");
    expect_err("logging = { csv = 1; };\n", 1, "t.cfg:9: logging.csv: expected a bool (true or false), found an int");
    expect_err("run = { mode = 3; };\n", 1, "t.cfg:9: run.mode: expected a string, found an int");
    expect_err("run = 3;\n", 1, "t.cfg:9: run: expected a group { ... }, found an int");
    expect_err_has("lora = { targets = \"self_attn.o_proj\"; };\n", 1, 0, NULL, "t.cfg:9:", "lora.targets",
                   "expected an array of strings", NULL);
    expect_err_has("data = { train = { path = \"x\"; }; };\n", 1, 0, NULL, "t.cfg:9:", "data.train",
                   "expected a list of groups", NULL);
    expect_err("data = { train = ( { path = \"x\"; weight = 2; } ); };\n", 1,
               "t.cfg:9: data.train[0].weight: expected a float, found an int (write 2.0)");
    expect_err("data = { train = ( { weight = 2.0; } ); };\n", 1, "t.cfg:9: data.train[0]: missing path");
}

static void test_ranges_and_enums(void **state)
{
    (void)state;
    expect_err("parallel = { zero_stage = 4; };\n", 1, "t.cfg:9: parallel.zero_stage = 4 is out of range [0, 3]");
    expect_err("parallel = { zero_stage = -1; };\n", 1, "t.cfg:9: parallel.zero_stage = -1 is out of range [0, 3]");
    expect_err("optimizer = { beta1 = 1.0; };\n", 1, "t.cfg:9: optimizer.beta1 = 1.0 is out of range [0, 1)");
    expect_err("optimizer = { eps = 0.0; };\n", 1, "t.cfg:9: optimizer.eps = 0.0 is out of range: must be > 0");
    expect_err("run = { log_every = 0; };\n", 1, "t.cfg:9: run.log_every = 0 is out of range: must be >= 1");
    expect_err("run = { steps = 0; };\n", 1, "t.cfg:9: run.steps = 0 is out of range: must be >= 1");
    expect_err("run = { mode = \"pretrian\"; };\n", 1,
               "t.cfg:9: run.mode = \"pretrian\" is not one of \"pretrain\", \"finetune\", \"sft\", \"eval\"");
    expect_err("schedule = { type = \"cosin\"; };\n", 1,
               "t.cfg:9: schedule.type = \"cosin\" is not one of \"constant\", \"linear\", \"cosine\", \"warmup_decay\"");
    expect_err("data = { format = \"json\"; };\n", 1,
               "t.cfg:9: data.format = \"json\" is not one of \"text\", \"u32\", \"megatron\", \"sft\"");
    expect_err("run = { output_dir = \"\"; };\n", 1, "t.cfg:9: run.output_dir must not be empty");
    expect_err_has("lora = { targets = [ \"self_attn.q_a_prj\" ]; };\n", 1, 0, NULL, "t.cfg:9:",
                   "unknown LoRA target \"self_attn.q_a_prj\" (did you mean \"self_attn.q_a_proj\"?)", NULL);
    expect_err_has("lora = { targets = [ \"self_attn.o_proj\", \"self_attn.o_proj\" ]; };\n", 1, 0, NULL, "t.cfg:9:",
                   "listed twice", NULL);
}

static void test_fixed_fields(void **state)
{
    (void)state;
    deck d;
    /* the architecture-fixed HF fields are accepted with their one value */
    assert_int_equal(deck_load_string(&d,
                                      "model = { hidden_act = \"silu\"; scoring_func = \"sigmoid\"; moe_layer_freq = 1;\n"
                                      " num_key_value_heads = 128; quantization_config = { weight_block_size = [128, 128];"
                                      " scale_fmt = \"ue8m0\"; quant_method = \"fp8\"; }; };",
                                      "f.cfg", 0, NULL, 1, err, sizeof err),
                     0);
    assert_string_equal(d.model.quant_scale_fmt, "ue8m0");
    deck_free(&d);
    assert_int_equal(deck_load_string(&d, "model = {\n hidden_act = \"gelu\"; };", "f.cfg", 0, NULL, 1, err, sizeof err), -1);
    assert_string_equal(err, "f.cfg:2: model.hidden_act = \"gelu\" is not supported: DeepSeek-V3 has \"silu\"");
    assert_int_equal(deck_load_string(&d, "model = { num_key_value_heads = 8; };", "f.cfg", 0, NULL, 1, err, sizeof err),
                     -1);
    assert_string_equal(err, "f.cfg:1: model.num_key_value_heads = 8 must equal model.num_attention_heads = 128");
    assert_int_equal(deck_load_string(&d, "model = { quantization_config = { weight_block_size = [64, 64]; }; };",
                                      "f.cfg", 0, NULL, 1, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "weight_block_size = [ 64, 64 ] is not supported"));
}

static void test_layout(void **state)
{
    (void)state;
    deck d;
    /* tiny: 8 experts, micro_batch 2, global_batch 16 */
    for (int w = 1; w <= 8; w *= 2) {
        expect_ok("", w, &d);
        deck_free(&d);
    }
    expect_err("", 3, "t.cfg:8: train.global_batch = 16 is not divisible by train.micro_batch x world size = 2 x 3 = 6");
    expect_err("", 16, "t.cfg:8: train.global_batch = 16 is not divisible by train.micro_batch x world size = 2 x 16 = 32");
    expect_err("parallel = { expert_parallel = 8; };\n", 4,
               "t.cfg:9: parallel.expert_parallel = 8 does not divide the world size 4");
    expect_err("parallel = { expert_parallel = 8; };\n", 12,
               "t.cfg:9: parallel.expert_parallel = 8 does not divide the world size 12");
    expect_ok("parallel = { expert_parallel = 8; };\n", 8, &d);
    deck_free(&d);
    /* uneven expert ownership (8 experts on 3 ranks: 3 + 3 + 2): loads, --check and a real run take it */
    char *gb6[1] = {"train.global_batch=6"};
    assert_int_equal(load_tiny("parallel = { expert_parallel = 3; };\n", 3, 1, gb6, &d), 0);
    assert_int_equal(deck_runnable(&d, 1, err, sizeof err), 0);
    assert_int_equal(deck_runnable(&d, 0, err, sizeof err), 0);
    deck_free(&d);
    expect_err("parallel = { expert_parallel = 12; };\n", 12,
               "t.cfg:9: parallel.expert_parallel = 12 exceeds model.n_routed_experts = 8");
    /* world 24, EP 8 on the full model: the sft layout */
    assert_int_equal(deck_load_string(&d, "parallel = { expert_parallel = 8; zero_stage = 3; };\n"
                                          "train = { micro_batch = 1; global_batch = 24; seq_len = 4096; };",
                                      "s.cfg", 0, NULL, 24, err, sizeof err),
                     0);
    deck_free(&d);
    assert_int_equal(deck_load_string(&d, "parallel = { expert_parallel = 8; };", "s.cfg", 0, NULL, 20, err, sizeof err),
                     -1);
    assert_string_equal(err, "s.cfg:1: parallel.expert_parallel = 8 does not divide the world size 20");
    assert_int_equal(deck_load_string(&d, "train = { global_batch = 24; };", "s.cfg", 0, NULL, 16, err, sizeof err), -1);
    assert_string_equal(err, "s.cfg:1: train.global_batch = 24 is not divisible by train.micro_batch x world size = 1 x 16 = 16");
}

static void test_model_consistency(void **state)
{
    (void)state;
    char *ov[1];
    ov[0] = "model.n_group=3";
    expect_err_has("", 1, 1, ov, "model.n_routed_experts = 8 is not divisible by model.n_group = 3", NULL);
    ov[0] = "model.topk_group=5";
    expect_err_has("", 1, 1, ov, "model.topk_group = 5 exceeds model.n_group = 4", NULL);
    ov[0] = "model.topk_group=1"; /* reach = 8/4*1 = 2 = num_experts_per_tok: fine */
    deck d;
    assert_int_equal(load_tiny("", 1, 1, ov, &d), 0);
    deck_free(&d);
    ov[0] = "model.num_experts_per_tok=5"; /* reach 8/4*2 = 4 */
    expect_err_has("", 1, 1, ov, "model.num_experts_per_tok = 5 exceeds the 4 experts", NULL);
    ov[0] = "model.first_k_dense_replace=4";
    expect_err_has("", 1, 1, ov, "model.first_k_dense_replace = 4 exceeds model.num_hidden_layers = 3", NULL);
    ov[0] = "model.qk_rope_head_dim=7";
    expect_err_has("", 1, 1, ov, "must be even", NULL);
    ov[0] = "train.seq_len=512";
    expect_err_has("", 1, 1, ov, "train.seq_len = 512 exceeds model.max_position_embeddings = 256", NULL);
    ov[0] = "model.eos_token_id=256";
    expect_err_has("", 1, 1, ov, "token id 256 is outside model.vocab_size = 256", NULL);
    expect_err("checkpoint = { save = \"adapters\"; };\n", 1,
               "t.cfg:9: checkpoint.save = \"adapters\" needs lora.enabled = true");
    expect_err("lora = { enabled = true; };\n", 1, "t.cfg:9: lora.enabled = true needs lora.targets");
    expect_err("lora = { enabled = true; targets = [ \"self_attn.q_proj\" ]; };\n", 1,
               "t.cfg:9: lora.targets: \"self_attn.q_proj\" does not exist with model.q_lora_rank = 32");
    expect_err("schedule = { warmup_steps = 2000; };\n", 1, "t.cfg:9: schedule.warmup_steps = 2000 exceeds the 1000 decay steps");
    expect_err("validation = { every = 10; };\n", 1, "t.cfg:9: validation.every = 10 needs validation.valid sources");
}


static void test_planned(void **state)
{
    (void)state;
    /* planned-only choices (the GPU plan): they load, --check takes them, a real run refuses them by key */
    deck d;
    char err[1024];
    const char *lora = "lora = { enabled = true; targets = [ \"self_attn.o_proj\" ]; };\n";
    const char *keys[][3] = {
        {"parallel.frozen=resident", "parallel.zero_stage=0",
         "parallel.frozen = \"resident\" with an fp32 base is planned only"}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char *ov[2] = {(char *)keys[i][0], (char *)keys[i][1]};
        if (load_tiny(lora, 1, 2, ov, &d)) fail_msg("%s", err);
        assert_int_equal(deck_runnable(&d, 1, err, sizeof err), 0);
        assert_int_equal(deck_runnable(&d, 0, err, sizeof err), -1);
        assert_non_null(strstr(err, keys[i][2]));
        deck_free(&d);
    }
    /* what the CPU trainer runs: a bf16/fp8 base (the frozen store, resident) at any stage below 3,
     * and at stage 3 with parallel.frozen = "resident"; the choice reaches the model as lora.base_dtype */
    /* (and "sharded" at ZeRO 3: one node-shared copy on one node, train.c refuses more nodes) */
    const char *runs[][3] = {{"train.base_dtype=fp8", "parallel.zero_stage=0", "fp8"},
                             {"train.base_dtype=bf16", "parallel.frozen=sharded", "bf16"},
                             {"train.base_dtype=bf16", "parallel.zero_stage=2", "bf16"},
                             {"train.base_dtype=fp8", "parallel.frozen=resident", "fp8"},
                             {"train.base_dtype=fp32", "parallel.zero_stage=3", "fp32"}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char *ov[3] = {(char *)runs[i][0], (char *)runs[i][1], "parallel.zero_stage=3"};
        if (load_tiny(lora, 1, i == 1 || i == 3 ? 3 : 2, ov, &d)) fail_msg("%s", err); /* with ZeRO 3 */
        assert_int_equal(deck_runnable(&d, 0, err, sizeof err), 0);
        assert_string_equal(d.lora.base_dtype, runs[i][2]);
        deck_free(&d);
    }
    /* in the deck file: the message carries its file:line */
    expect_ok("lora = { enabled = true; targets = [ \"self_attn.o_proj\" ]; };\nparallel = { frozen = \"resident\"; };\n",
              1, &d);
    assert_int_equal(deck_runnable(&d, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "t.cfg:10: parallel.frozen = \"resident\" with an fp32 base is planned only"));
    deck_free(&d);
    /* the defaults and explicit fp32 run; so do the bf16 and fp8 wires (parallel.dispatch_dtype) */
    expect_ok("parallel = { dispatch_dtype = \"fp32\"; frozen = \"sharded\"; };\n", 1, &d);
    assert_int_equal(deck_runnable(&d, 0, err, sizeof err), 0);
    assert_int_equal(deck_wire(&d), 0);
    deck_free(&d);
    const char *wires[3] = {"parallel = { dispatch_dtype = \"bf16\"; };\n", "parallel = { dispatch_dtype = \"fp8\"; };\n", ""};
    for (int i = 0; i < 3; i++) {
        expect_ok(wires[i], 1, &d);
        assert_int_equal(deck_runnable(&d, 0, err, sizeof err), 0);
        assert_int_equal(deck_wire(&d), i < 2 ? i + 1 : 0); /* unset: train.dtype, fp32 here */
        deck_free(&d);
    }
    /* without frozen weights there is nothing to store or place */
    char *ov[1] = {"train.base_dtype=fp8"};
    expect_err_has("", 1, 1, ov, "train.base_dtype = \"fp8\" sets the storage of frozen weights: there are none "
                   "without lora.enabled = true", NULL);
    expect_err("parallel = { frozen = \"resident\"; };\n", 1, "t.cfg:9: parallel.frozen = \"resident\" places frozen "
               "weights: there are none without lora.enabled = true");
    ov[0] = "train.base_dtype=int4";
    expect_err_has("", 1, 1, ov, "train.base_dtype", NULL);
}

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_err("run = {\n  steps = ;\n};\n", 1, "t.cfg:10: syntax error");
    expect_err("run = { steps = 1; };\nrun = { seed = 2; };\n", 1, "t.cfg:10: duplicate setting name");
}

static void test_overrides(void **state)
{
    (void)state;
    deck d;
    char *ov[] = {"optimizer.lr=1e-3",  "run.steps=50",          "run.output_dir=runs/x y",
                  "run.mode=\"sft\"",    "logging.csv=false",     "lora.targets=[\"self_attn.o_proj\",\"mlp.up_proj\"]",
                  "data.train=({path=\"a\";},{path=\"b\"; weight=3.0;})",
                  "run.seed=5000000000L", "model.rope_scaling.beta_fast=16.0", "run.steps=60"};
    int n = (int)(sizeof ov / sizeof ov[0]);
    /* "runs/x y" has a space: not a bare word; quoted it works */
    assert_int_equal(load_tiny("optimizer = { lr = 0.5; };\n", 1, n, ov, &d), -1);
    assert_string_equal(err, "override 'run.output_dir=runs/x y': cannot parse the value (libconfig syntax: 3, 3.0, "
                             "\"text\", true, [ ... ], ( ... ))");
    ov[2] = "run.output_dir=runs/x";
    if (load_tiny("optimizer = { lr = 0.5; };\n", 1, n, ov, &d)) fail_msg("%s", err);
    assert_true(d.optimizer.lr == 1e-3);
    assert_int_equal(d.run.steps, 60); /* later wins */
    assert_string_equal(d.run.output_dir, "runs/x");
    assert_string_equal(d.run.mode, "sft");
    assert_false(d.logging.csv);
    assert_int_equal(d.lora.n_targets, 2);
    assert_string_equal(d.lora.targets[1], "mlp.up_proj");
    assert_int_equal(d.data.n_train, 2);
    assert_string_equal(d.data.train[1].path, "b");
    assert_true(d.data.train[0].weight == 1.0 && d.data.train[1].weight == 3.0);
    assert_true(d.run.seed == 5000000000LL);
    assert_true(d.model.rope_beta_fast == 16.0);
    assert_true(d.model.rope_factor == 4.0); /* rest of the group kept */
    /* the resolved text carries the overrides */
    assert_non_null(strstr(d.text, "runs/x"));
    round_trip(&d, 1);
    char *p = deck_print(&d);
    assert_non_null(strstr(p, "  output_dir = \"runs/x\";\n"));
    free(p);
    deck_free(&d);

    /* an override creates missing groups */
    char *ov2[] = {"validation.batches=3"};
    expect_ok("", 1, &d);
    deck_free(&d);
    assert_int_equal(load_tiny("", 1, 1, ov2, &d), 0);
    assert_int_equal(d.validation.batches, 3);
    deck_free(&d);

    /* bad overrides: same checks as the deck, located at the override */
    char *b1[] = {"optimizer.lr=3"};
    expect_err_has("", 1, 1, b1, NULL);
    assert_string_equal(err, "override 'optimizer.lr=3': optimizer.lr: expected a float, found an int (write 3.0)");
    char *b2[] = {"optimizer.betas1=0.9"};
    expect_err_has("", 1, 1, b2, NULL);
    assert_string_equal(err, "override 'optimizer.betas1=0.9': unknown key 'optimizer.betas1' (did you mean 'optimizer.beta1'?)");
    char *b3[] = {"train.micro_batch=two"};
    expect_err_has("", 1, 1, b3, NULL);
    assert_string_equal(err, "override 'train.micro_batch=two': train.micro_batch: expected an int, found a string");
    char *b4[] = {"parallel.zero_stage=4"};
    expect_err_has("", 1, 1, b4, NULL);
    assert_string_equal(err, "override 'parallel.zero_stage=4': parallel.zero_stage = 4 is out of range [0, 3]");
    char *b5[] = {"model=3"};
    expect_err_has("", 1, 1, b5, "'model' is a group", NULL);
    char *b6[] = {"noequals"};
    expect_err_has("", 1, 1, b6, "expected key.path=value", NULL);
    char *b7[] = {"parallel.expert_parallel=2"};
    expect_err_has("", 3, 1, b7, NULL);
    assert_string_equal(err, "override 'parallel.expert_parallel=2': parallel.expert_parallel = 2 does not divide the world size 3");
    char *b8[] = {"run.mode=sfft"};
    expect_err_has("", 1, 1, b8, "run.mode = \"sfft\" is not one of", NULL);
}

static void test_include(void **state)
{
    (void)state;
    write_file("models/m.cfg", "# model preset\nmodel = {\n  vocab_size = 512;\n  @include \"models/rope.cfg\"\n};\n");
    write_file("models/rope.cfg", "rope_theta = 50000.0;\n");
    write_file("deck.cfg", "# a deck\n@include \"models/m.cfg\"\nrun = { steps = 7; };\n");
    char path[512];
    snprintf(path, sizeof path, "%s/deck.cfg", tmpdir);
    deck d;
    /* resolved against the deck's directory, not the working directory */
    if (deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(d.model.vocab_size, 512);
    assert_true(d.model.rope_theta == 50000.0);
    assert_int_equal(d.run.steps, 7);
    assert_non_null(strstr(d.text, "vocab_size = 512"));
    assert_null(strstr(d.text, "@include"));
    assert_string_equal(d.path, path);
    round_trip(&d, 1);
    deck_free(&d);

    /* errors inside an included file name that file and its line */
    write_file("models/bad.cfg", "model = {\n  vocab_size = 512;\n  vocab_sise = 3;\n};\n");
    write_file("bad.cfg", "@include \"models/bad.cfg\"\n");
    snprintf(path, sizeof path, "%s/bad.cfg", tmpdir);
    assert_int_equal(deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err), -1);
    char want[1024];
    snprintf(want, sizeof want, "%s/models/bad.cfg:3: unknown key 'model.vocab_sise' (did you mean 'model.vocab_size'?)",
             tmpdir);
    assert_string_equal(err, want);
    /* ... and a cross-check points into the deck file */
    write_file("bad2.cfg", "@include \"models/m.cfg\"\n\nparallel = { expert_parallel = 2; };\n");
    snprintf(path, sizeof path, "%s/bad2.cfg", tmpdir);
    assert_int_equal(deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s/bad2.cfg:3: parallel.expert_parallel = 2 does not divide the world size 1", tmpdir);
    assert_string_equal(err, want);
    /* missing include, missing deck, syntax error in an include */
    write_file("noinc.cfg", "run = { steps = 1; };\n@include \"models/none.cfg\"\n");
    snprintf(path, sizeof path, "%s/noinc.cfg", tmpdir);
    assert_int_equal(deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s/noinc.cfg:2: cannot open include file '%s/models/none.cfg'", tmpdir, tmpdir);
    assert_string_equal(err, want);
    snprintf(path, sizeof path, "%s/absent.cfg", tmpdir);
    assert_int_equal(deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s/absent.cfg: cannot read the deck: No such file or directory", tmpdir);
    assert_string_equal(err, want);
    write_file("models/syn.cfg", "model = {\n  vocab_size = ;\n};\n");
    write_file("syn.cfg", "@include \"models/syn.cfg\"\n");
    snprintf(path, sizeof path, "%s/syn.cfg", tmpdir);
    assert_int_equal(deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s/models/syn.cfg:2: syntax error", tmpdir);
    assert_string_equal(err, want);
}

static void test_float_exact(void **state)
{
    (void)state;
    deck d;
    assert_int_equal(deck_load_string(&d, "optimizer = { lr = 0.30000000000000004; eps = 1e-300; weight_decay = 1e20; };",
                                      "x.cfg", 0, NULL, 1, err, sizeof err),
                     0);
    assert_true(d.optimizer.lr == 0.30000000000000004);
    assert_true(d.optimizer.lr != 0.3);
    round_trip(&d, 1);
    char *p = deck_print(&d);
    assert_non_null(strstr(p, "eps = 1.0e-300;"));
    assert_non_null(strstr(p, "weight_decay = 1.0e+20;"));
    free(p);
    deck_free(&d);
}

static void test_string_escapes(void **state)
{
    (void)state;
    deck d;
    assert_int_equal(deck_load_string(&d, "run = { output_dir = \"a\\\"b\\\\c\\td\"; };", "s.cfg", 0, NULL, 1, err,
                                      sizeof err), 0);
    assert_string_equal(d.run.output_dir, "a\"b\\c\td");
    round_trip(&d, 1);
    deck_free(&d);
    char longv[320] = "run.output_dir=";
    memset(longv + 15, 'x', 280);
    longv[295] = 0;
    char *ov[] = {longv};
    assert_int_equal(deck_load_string(&d, "", "s.cfg", 1, ov, 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "run.output_dir: string longer than 255 characters"));
}

/* Every shipped deck loads, round-trips through --print-deck, and has the values
 * the issue asks for. */
static void test_shipped_decks(void **state)
{
    (void)state;
    const char *in = input_dir();
    char path[512];
    deck d;

    snprintf(path, sizeof path, "%s/tiny.cfg", in);
    for (int w = 1; w <= 8; w *= 2) {
        if (deck_load(&d, path, 0, NULL, w, NULL, err, sizeof err)) fail_msg("%s", err);
        round_trip(&d, w);
        deck_free(&d);
    }
    assert_int_equal(deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err), 0);
    const deck_model *m = &d.model;
    assert_true(m->q_lora_rank > 0 && m->kv_lora_rank > 0);
    assert_int_equal(m->first_k_dense_replace, 1);
    assert_true(m->num_hidden_layers > 1 && m->n_routed_experts >= 8 && m->n_shared_experts == 1);
    assert_true(m->n_group > 1 && m->topk_group < m->n_group);
    assert_int_equal(m->num_nextn_predict_layers, 1);
    assert_string_equal(m->rope_scaling_type, "yarn");
    assert_int_equal(m->vocab_size, 256);
    assert_string_equal(d.data.format, "text");
    deck_free(&d);

    snprintf(path, sizeof path, "%s/sft.cfg", in);
    if (deck_load(&d, path, 0, NULL, 24, NULL, err, sizeof err)) fail_msg("%s", err);
    round_trip(&d, 24);
    assert_int_equal(d.parallel.expert_parallel, 8);
    assert_int_equal(d.parallel.zero_stage, 3);
    assert_true(d.lora.enabled);
    assert_int_equal(d.lora.r, 16);
    assert_true(d.lora.alpha == 32.0);
    assert_int_equal(d.lora.n_targets, 5);
    const char *tg[] = {"self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa",
                        "self_attn.kv_b_proj", "self_attn.o_proj"};
    for (int i = 0; i < 5; i++) assert_string_equal(d.lora.targets[i], tg[i]);
    assert_true(d.optimizer.lr == 1e-5 && d.optimizer.beta1 == 0.9 && d.optimizer.beta2 == 0.98);
    assert_true(d.optimizer.weight_decay == 0.01);
    assert_int_equal(d.schedule.warmup_steps, 100);
    assert_int_equal(d.run.steps, 2000);
    assert_int_equal(d.train.micro_batch, 1);
    assert_int_equal(d.train.global_batch, 24);
    assert_string_equal(d.train.dtype, "bf16");
    assert_int_equal(d.checkpoint.every, 50);
    assert_string_equal(d.checkpoint.save, "adapters");
    assert_true(d.logging.tensorboard[0] != 0);
    assert_int_equal(d.model.n_routed_experts, 256);
    deck_free(&d);
    /* the sft layout (EP 8, global batch 24 = 1 x world x accumulation) fits 8 and 24 ranks */
    assert_int_equal(deck_load(&d, path, 0, NULL, 8, NULL, err, sizeof err), 0);
    deck_free(&d);
    assert_int_equal(deck_load(&d, path, 0, NULL, 1, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "sft.cfg:19: parallel.expert_parallel = 8 does not divide the world size 1"));
    assert_int_equal(deck_load(&d, path, 0, NULL, 16, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "sft.cfg:27: train.global_batch = 24 is not divisible"));

    /* the model presets: included by a wrapper deck next to them */
    const char *presets[] = {"deepseek-v3.cfg", "deepseek-v3.1.cfg"};
    for (int i = 0; i < 2; i++) {
        char wrap[1024];
        snprintf(wrap, sizeof wrap, "@include \"%s/models/%s\"\n", in, presets[i]);
        if (deck_load_string(&d, wrap, presets[i], 0, NULL, 1, err, sizeof err)) fail_msg("%s: %s", presets[i], err);
        round_trip(&d, 1);
        /* dsv3-spec.md §1 */
        m = &d.model;
        assert_int_equal(m->vocab_size, 129280);
        assert_int_equal(m->hidden_size, 7168);
        assert_int_equal(m->intermediate_size, 18432);
        assert_int_equal(m->moe_intermediate_size, 2048);
        assert_int_equal(m->num_hidden_layers, 61);
        assert_int_equal(m->first_k_dense_replace, 3);
        assert_int_equal(m->n_routed_experts, 256);
        assert_int_equal(m->n_shared_experts, 1);
        assert_int_equal(m->num_experts_per_tok, 8);
        assert_int_equal(m->n_group, 8);
        assert_int_equal(m->topk_group, 4);
        assert_true(m->routed_scaling_factor == 2.5);
        assert_true(m->norm_topk_prob);
        assert_int_equal(m->q_lora_rank, 1536);
        assert_int_equal(m->kv_lora_rank, 512);
        assert_int_equal(m->qk_nope_head_dim, 128);
        assert_int_equal(m->qk_rope_head_dim, 64);
        assert_int_equal(m->v_head_dim, 128);
        assert_int_equal(m->num_attention_heads, 128);
        assert_true(m->rms_norm_eps == 1e-6);
        assert_true(m->rope_theta == 10000.0);
        assert_int_equal(m->max_position_embeddings, 163840);
        assert_int_equal(m->num_nextn_predict_layers, 1);
        assert_int_equal(m->bos_token_id, 0);
        assert_int_equal(m->eos_token_id, 1);
        assert_true(m->aux_loss_alpha == 0.001);
        assert_string_equal(m->rope_scaling_type, "yarn");
        assert_true(m->rope_factor == 40.0 && m->rope_beta_fast == 32.0 && m->rope_beta_slow == 1.0);
        assert_true(m->rope_mscale == 1.0 && m->rope_mscale_all_dim == 1.0);
        assert_int_equal(m->rope_original_max_position_embeddings, 4096);
        assert_string_equal(m->quant_method, "fp8");
        assert_string_equal(m->quant_scale_fmt, i == 1 ? "ue8m0" : "");
        deck_free(&d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_deepseek_v3),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_ranges_and_enums),
        cmocka_unit_test(test_fixed_fields),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_model_consistency),
        cmocka_unit_test(test_syntax_errors), cmocka_unit_test(test_planned),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_include),
        cmocka_unit_test(test_float_exact),
        cmocka_unit_test(test_string_escapes),
        cmocka_unit_test(test_shipped_decks),
    };
    return cmocka_run_group_tests_name("deck", tests, setup_tmp, teardown_tmp);
}
