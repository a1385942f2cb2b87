#!/usr/bin/env python3
"""Developer reference benchmark: the same training step as dsv3 in PyTorch.

Needs torch and transformers from pip (`pip install torch transformers`);
`make bench` skips this part, saying so, when they are absent.

Reads the effective deck printed by `bin/dsv3 --print-deck DECK` on stdin,
builds transformers' DeepseekV3ForCausalLM with the same model config
(no MTP: transformers has none; the bench runs dsv3 with MTP and the balance
loss off too), and times forward + backward + AdamW steps on random token
batches of the deck's global batch x seq_len, with the given thread count.
Prints one line: "torch: <tokens/s> tok/s ...".
"""
import re
import sys
import time


def parse_group(text, name):
    """Flat key = value pairs of one libconfig group (nested groups flattened with '_')."""
    m = re.search(r"^\s*%s\s*[:=]\s*\{" % name, text, re.M)
    if not m:
        sys.exit("bench_torch: no %s group in the deck" % name)
    depth, i, start = 1, m.end(), m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    body = text[start:i - 1]
    out, prefix = {}, []
    for line in body.splitlines():
        line = line.split("//")[0].split("#")[0].strip()
        g = re.match(r"(\w+)\s*[:=]\s*\{", line)
        if g:
            prefix.append(g.group(1))
            continue
        if line.startswith("}"):
            prefix.pop()
            continue
        kv = re.match(r"(\w+)\s*[:=]\s*(.+?);?$", line)
        if kv:
            key = "_".join(prefix + [kv.group(1)])
            v = kv.group(2).rstrip(";").strip()
            if v.startswith('"'):
                v = v.strip('"')
            elif v in ("true", "false"):
                v = v == "true"
            elif re.match(r"^-?\d+L?$", v):
                v = int(v.rstrip("L"))
            else:
                try:
                    v = float(v)
                except ValueError:
                    pass
            out[key] = v
    return out


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    try:
        import torch
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    except ImportError as e:
        print("torch: SKIP (torch/transformers not installed: %s)" % e)
        return 0
    text = sys.stdin.read()
    m, tr = parse_group(text, "model"), parse_group(text, "train")
    rs = None
    if m.get("rope_scaling_type", "none") == "yarn":
        rs = {"type": "yarn", "rope_type": "yarn", "factor": m["rope_scaling_factor"],
              "original_max_position_embeddings": m["rope_scaling_original_max_position_embeddings"],
              "beta_fast": m["rope_scaling_beta_fast"], "beta_slow": m["rope_scaling_beta_slow"],
              "mscale": m["rope_scaling_mscale"], "mscale_all_dim": m["rope_scaling_mscale_all_dim"]}
    cfg = DeepseekV3Config(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        moe_intermediate_size=m["moe_intermediate_size"], num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_attention_heads"],
        n_shared_experts=m["n_shared_experts"], n_routed_experts=m["n_routed_experts"],
        routed_scaling_factor=m["routed_scaling_factor"], kv_lora_rank=m["kv_lora_rank"],
        q_lora_rank=m["q_lora_rank"] or None, qk_rope_head_dim=m["qk_rope_head_dim"],
        v_head_dim=m["v_head_dim"], qk_nope_head_dim=m["qk_nope_head_dim"], n_group=m["n_group"],
        topk_group=m["topk_group"], num_experts_per_tok=m["num_experts_per_tok"],
        first_k_dense_replace=m["first_k_dense_replace"], norm_topk_prob=m["norm_topk_prob"],
        max_position_embeddings=m["max_position_embeddings"], rms_norm_eps=m["rms_norm_eps"],
        rope_theta=m["rope_theta"], rope_scaling=rs, attention_bias=False, tie_word_embeddings=False)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = tr["global_batch"], tr["seq_len"]
    ids = torch.randint(0, m["vocab_size"], (B, T + 1))

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids[:, :T], labels=ids[:, :T])
        out.loss.backward()
        opt.step()
        return out.loss.item()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    print("torch: %.1f tok/s (%d steps of %d x %d tokens, %d threads, torch %s)"
          % (steps * B * T / dt, steps, B, T, threads, torch.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
