#!/usr/bin/env python3
"""Developer reference benchmark: transformers' greedy generate, decode tokens/s.

    python3 bench_generate.py MODEL_DIR IDS_JSON NEW_TOKENS THREADS [REPS]
    python3 bench_generate.py --make MODEL_DIR      a random mid-size DeepseekV3 (about 110M
                                                    parameters, fp32 save_pretrained) to bench on

MODEL_DIR: a Hugging Face DeepseekV3 checkpoint (tools/bench.sh uses tests/fixtures/hf/fp32,
the model dsv3-generate runs after dsv3-import); IDS_JSON: one prompt as a JSON array of ids.
Loads it in float32 (eager attention), greedy, EOS off, the given torch thread count, and
times generate for 1 new token (the prefill) and for NEW_TOKENS; decode tokens/s =
(NEW_TOKENS - 1) / (t_total - t_prefill), the figure dsv3-generate prints. Best of REPS.
Prints one line: "transformers generate: <tok/s> tok/s decode ...". `make bench` runs it
with $DSV3_TORCH_PYTHON (or python3) when torch and transformers import.
"""
import copy
import json
import sys
import time

import torch
from transformers import DeepseekV3ForCausalLM


MID = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512,
           num_hidden_layers=4, first_k_dense_replace=1, n_routed_experts=8, n_shared_experts=1,
           num_experts_per_tok=2, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
           q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
           num_attention_heads=16, num_key_value_heads=16, rms_norm_eps=1e-6, max_position_embeddings=4096,
           num_nextn_predict_layers=0, tie_word_embeddings=False, initializer_range=0.02, hidden_act="silu",
           bos_token_id=0, eos_token_id=1)
MID_ROPE = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=1024,
                beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)


def make(d):
    """make_hf_fixtures.py's weight scheme (O(1) activations) on the MID config."""
    import math
    from transformers import DeepseekV3Config
    torch.manual_seed(1)
    cfg = DeepseekV3Config(**MID, rope_parameters=dict(MID_ROPE), attn_implementation="eager")
    cfg.architectures = ["DeepseekV3ForCausalLM"]
    model = DeepseekV3ForCausalLM(cfg).to(torch.float32).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape))
            elif n.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape))
            else:
                p.copy_(torch.randn(p.shape) / math.sqrt(p.shape[-1]))
    model.save_pretrained(d)
    n = sum(p.numel() for p in model.parameters())
    print(f"bench_generate: {d}: random DeepseekV3, {n / 1e6:.0f}M parameters")


def main():
    if sys.argv[1] == "--make":
        return make(sys.argv[2])
    d, ids_json, new, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    torch.set_num_threads(threads)
    model = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.tensor([json.loads(open(ids_json).read())], dtype=torch.int64)
    gc = copy.deepcopy(model.generation_config)
    gc.eos_token_id, gc.pad_token_id, gc.do_sample = None, 0, False

    def run(n):
        g = copy.deepcopy(gc)
        g.max_new_tokens = n
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, generation_config=g)
        return time.perf_counter() - t0

    run(2)  # warm-up
    best = 0.0
    for _ in range(reps):
        tp, tt = run(1), run(new)
        best = max(best, (new - 1) / max(tt - tp, 1e-9))
    print(f"transformers generate: {best:.1f} tok/s decode (batch 1, prompt {ids.shape[1]}, {new} new tokens, "
          f"{threads} thread{'s' if threads > 1 else ''}, fp32, torch {torch.__version__})")


if __name__ == "__main__":
    main()
