#!/usr/bin/env python3
"""make_generate_fixture.py — what transformers' generate produces on the tiny DeepseekV3 of
tests/fixtures/hf/fp32, for bin/dsv3-generate --reference (tests/it_generate.sh).

Developers only; the build and the tests never run this (they read the committed file).

The model is the committed Hugging Face fixture tests/fixtures/hf/fp32 (make_hf_fixtures.py:
a tiny random DeepseekV3ForCausalLM, float32, YaRN with original_max_position_embeddings 256,
max_position_embeddings 1024), loaded with from_pretrained (eager attention, fp32). The test
imports the same directory with bin/dsv3-import, so both sides run the same weights.

For each prompt (random ids, lengths 3, 17, 230 and 251: the two long ones generate past the
YaRN original context of 256) it runs greedy model.generate for 32 new tokens, one prompt at a
time (no padding), with EOS disabled so every prompt gives 32 steps, and keeps the raw per-step
logits (output_logits: before any logits processor). It checks that every chosen token is the
argmax of its step's logits, and that the cached generate's logits equal a full forward of the
final sequence (no cache) to 1e-4, then writes tests/fixtures/hf/generate.safetensors:
    prompt.K  I64 [len]       the prompt ids
    ids.K     I64 [32]        the generated ids
    logits.K  F32 [32, V]     the logits each token was chosen from

    /tmp/venv-ref/bin/python tools/reference/make_generate_fixture.py [-o tests/fixtures/hf/generate.safetensors]
        [--model HF_DIR --lengths 5,1010]     (ad-hoc: another model, e.g. make bench's mid-size one)

(torch 2.15.0, transformers 5.23.0, safetensors 0.8.0: the virtualenv of make_hf_fixtures.py.)
Rerunning reproduces the file byte for byte.
"""
import argparse
import copy
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import DeepseekV3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL = os.path.join(ROOT, "tests", "fixtures", "hf", "fp32")
LENGTHS = (3, 17, 230, 251)
NEW = 32
SEED = 2718


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", default=os.path.join(ROOT, "tests", "fixtures", "hf", "generate.safetensors"))
    ap.add_argument("--model", default=MODEL, help="another Hugging Face DeepseekV3 directory (ad-hoc checks)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="prompt lengths, comma-separated")
    a = ap.parse_args()
    lengths = tuple(int(x) for x in a.lengths.split(","))
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    model = DeepseekV3ForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = model.config
    orig = cfg.rope_parameters["original_max_position_embeddings"]
    if cfg.rope_parameters.get("rope_type") != "yarn" or max(lengths) + NEW <= orig:
        raise SystemExit("make_generate_fixture: the fixture must use YaRN and generate past original_max_position_embeddings")
    gc = copy.deepcopy(model.generation_config)
    gc.eos_token_id = None  # 32 steps for every prompt (dsv3-generate --reference disables EOS too)
    gc.pad_token_id = 0
    gc.do_sample = False
    gc.max_new_tokens = NEW
    gc.output_logits = True
    gc.return_dict_in_generate = True
    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for k, n in enumerate(lengths):
        ids = torch.randint(2, cfg.vocab_size, (1, n), generator=gen, dtype=torch.int64)
        with torch.no_grad():
            r = model.generate(ids, generation_config=gc)
        seq = r.sequences[0]
        new = seq[n:]
        logits = torch.stack([l[0] for l in r.logits]).float()  # [NEW, V] raw
        if new.numel() != NEW or not torch.equal(new, logits.argmax(-1)):
            raise SystemExit(f"make_generate_fixture: prompt {k}: generated ids are not the argmax of the raw logits")
        with torch.no_grad():  # the cached generate against a full recomputation
            full = model(input_ids=seq[None, :-1]).logits[0, n - 1:].float()
        err = ((full - logits).norm() / logits.norm()).item()
        if err > 1e-4:
            raise SystemExit(f"make_generate_fixture: prompt {k}: cached logits differ from the full forward ({err:.2e})")
        print(f"prompt {k}: {n} tokens -> positions {n}..{n + NEW - 1} (YaRN original {orig}); "
              f"generate vs full forward rel L2 {err:.2e}")
        out[f"prompt.{k}"] = ids[0].clone()
        out[f"ids.{k}"] = new.clone()
        out[f"logits.{k}"] = logits.contiguous()
    # one metadata key: safetensors writes a metadata map in hash order (not reproducible)
    save_file(out, a.output, metadata={"format": "pt"})
    print(f"wrote {a.output}: {len(lengths)} prompts x {NEW} greedy tokens")


if __name__ == "__main__":
    sys.exit(main())
