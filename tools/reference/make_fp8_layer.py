"""make_fp8_layer.py OUT_DIR [EXPERTS] [--slice] — a DeepSeek-V3 checkpoint at real widths
(hidden 7168, MLA 1536/512/128 heads, experts 2048 wide) holding ONE MoE
decoder layer with EXPERTS routed experts (default 32; the release has 256),
in the release's format: FP8 e4m3 weights with F32 128x128 weight_scale_inv,
BF16 norms/embedding/head/router, F32 router bias, sharded with an index.
Random bytes (no NaN codes): for the import benchmark (tools/bench-import.sh),
not a model. Developer script: numpy only; writes the safetensors layout itself
so that no tensor is held in memory twice (large tensors are written in row blocks).

--slice: the real-width slice of input/dsv3-slice.cfg (tools/slice.sh): the
release's vocabulary (129,280), a dense layer 0 (MLP 18432 wide) before the MoE
layer 1, norms 1, and weights of a usable size — FP8 codes with per-block scales
chosen so each matrix has std 0.006 (embedding and lm_head bf16, std 0.02), a
random but well-conditioned model whose LoRA loss can fall.
"""
import json
import os
import struct
import sys

import numpy as np

args = [a for a in sys.argv[1:] if a != "--slice"]
SLICE = "--slice" in sys.argv
out = args[0]
E = int(args[1]) if len(args) > 1 else 32
H, I, QL, KL, NH, DN, DR, DV, V = 7168, 2048, 1536, 512, 128, 128, 64, 128, 4096
if SLICE:
    V = 129280
cfg = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": V, "hidden_size": H,
    "intermediate_size": 18432, "moe_intermediate_size": I, "num_hidden_layers": 1, "first_k_dense_replace": 0,
    "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
    "routed_scaling_factor": 2.5, "norm_topk_prob": True, "q_lora_rank": QL, "kv_lora_rank": KL,
    "qk_nope_head_dim": DN, "qk_rope_head_dim": DR, "v_head_dim": DV, "num_attention_heads": NH,
    "num_key_value_heads": NH, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 163840,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "num_nextn_predict_layers": 0, "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu",
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "tie_word_embeddings": False,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
}
if SLICE:
    cfg.update(num_hidden_layers=2, first_k_dense_replace=1)
rng = np.random.default_rng(1)
tensors = []  # (name, dtype, shape, generator of row blocks)
ROWS = 4096   # rows per block written


def blocks(o, f):
    return lambda: (f(min(ROWS, o - r)) for r in range(0, o, ROWS))


# RMS of the e4m3 values of the codes drawn (0..125, either sign): a scale of std/RMS gives std
E4M3 = np.array([(m / 8 * 2.0 ** -6) if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
                 for e in range(16) for m in range(8)][:126])
RMS = float(np.sqrt(np.mean(E4M3 ** 2)))


def fp8(name, o, i):
    tensors.append((name, "F8_E4M3", [o, i], blocks(o, lambda n: (rng.integers(0, 126, size=(n, i), dtype=np.uint8)
                                                              | (rng.integers(0, 2, size=(n, i), dtype=np.uint8) << 7)))))
    so, si = (o + 127) // 128, (i + 127) // 128
    lo, hi = (0.8 * 0.006 / RMS, 1.2 * 0.006 / RMS) if SLICE else (1e-4, 1e-3)
    tensors.append((name + "_scale_inv", "F32", [so, si],
                    lambda: iter([rng.uniform(lo, hi, size=(so, si)).astype(np.float32)])))


def bf16(name, shape, std=1.0):
    o, rest = shape[0], shape[1:]
    if SLICE and len(shape) == 1:  # norms: 1
        tensors.append((name, "BF16", shape, lambda: iter([np.full(shape, 0x3F80, np.uint16)])))
        return
    std = 0.02 if SLICE else std
    tensors.append((name, "BF16", shape, blocks(o, lambda n: ((rng.standard_normal([n] + rest).astype(np.float32) * std)
                                                             .view(np.uint32) >> 16).astype(np.uint16))))


def mla(p):
    bf16(p + "input_layernorm.weight", [H])
    fp8(p + "self_attn.q_a_proj.weight", QL, H)
    bf16(p + "self_attn.q_a_layernorm.weight", [QL])
    fp8(p + "self_attn.q_b_proj.weight", NH * (DN + DR), QL)
    fp8(p + "self_attn.kv_a_proj_with_mqa.weight", KL + DR, H)
    bf16(p + "self_attn.kv_a_layernorm.weight", [KL])
    fp8(p + "self_attn.kv_b_proj.weight", NH * (DN + DV), KL)
    fp8(p + "self_attn.o_proj.weight", H, NH * DV)
    bf16(p + "post_attention_layernorm.weight", [H])


bf16("model.embed_tokens.weight", [V, H])
p = "model.layers.0."
if SLICE:  # the dense layer 0
    mla(p)
    for proj, o, i in (("gate_proj", 18432, H), ("up_proj", 18432, H), ("down_proj", H, 18432)):
        fp8(f"{p}mlp.{proj}.weight", o, i)
    p = "model.layers.1."
mla(p)
bf16(p + "mlp.gate.weight", [E, H])
tensors.append((p + "mlp.gate.e_score_correction_bias", "F32", [E], lambda: iter([np.zeros(E, np.float32)])))
for e in range(E):
    for proj, o, i in (("gate_proj", I, H), ("up_proj", I, H), ("down_proj", H, I)):
        fp8(f"{p}mlp.experts.{e}.{proj}.weight", o, i)
for proj, o, i in (("gate_proj", I, H), ("up_proj", I, H), ("down_proj", H, I)):
    fp8(f"{p}mlp.shared_experts.{proj}.weight", o, i)
bf16("model.norm.weight", [H])
bf16("lm_head.weight", [V, H])

os.makedirs(out, exist_ok=True)
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
ES = {"F8_E4M3": 1, "BF16": 2, "F32": 4}
shards, cur, size = [], [], 0
for t in tensors:
    b = ES[t[1]] * int(np.prod(t[2]))
    if cur and size + b > 2_000_000_000:
        shards.append(cur)
        cur, size = [], 0
    cur.append(t)
    size += b
shards.append(cur)
wm, total = {}, 0
for k, sh in enumerate(shards):
    fn = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape, _ in sh:
        n = ES[dt] * int(np.prod(shape))
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
        wm[name] = fn
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, fn), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, _, gen in sh:
            for b in gen():
                f.write(b.tobytes())
    total += off
json.dump({"metadata": {"total_size": total}, "weight_map": wm},
          open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
print(f"{out}: {len(tensors)} tensors, {total / 1e9:.2f} GB in {len(shards)} shards ({E} experts)")
