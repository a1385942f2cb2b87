#!/usr/bin/env python3
"""Developer reference benchmark: transformers' greedy generate, decode tokens/s.

    python3 bench_generate.py MODEL_DIR IDS_JSON NEW_TOKENS THREADS [REPS]

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


def main():
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
