#!/usr/bin/env python3
"""make_hf_fixtures.py — build the Hugging Face checkpoint fixtures for the safetensors importer/exporter tests.

Developers only; the build and the tests never run this (they read the committed files).

What it makes, under tests/fixtures/hf/ (see tests/fixtures/hf/README.md):

  fp32/   a tiny DeepseekV3ForCausalLM in float32, written by transformers' own
          save_pretrained as one unsharded model.safetensors, plus config.json
  bf16/   the same weights in bfloat16 (e_score_correction_bias stays F32, as in the
          release and as transformers keeps it), save_pretrained with
          max_shard_size="200KB": several shards + model.safetensors.index.json
  fp8/    the same weights quantized with DeepSeek's 128x128 block recipe: every linear
          the release stores in FP8 (dsv3-spec.md §7) as <name>.weight F8_E4M3 plus
          <name>.weight_scale_inv F32 [ceil(out/128), ceil(in/128)]; everything else BF16
          (router bias F32); sharded by this script with some weight/scale pairs in
          different shards (both orders); config.json with quantization_config
          fp8/reference_dequant.safetensors: F32 dequantization of every FP8 weight,
          w = float32(e4m3) * scale_inv[i//128, j//128]
  ue8m0/  a V3.1-style variant: quantization_config.scale_fmt = "ue8m0", scales rounded up
          to powers of two except exactly 2 deliberately non-power-of-two scales
  expected_logits.safetensors: input_ids [B,T] I64 and logits [B,T,V] F32 of the fp32
          model (transformers forward in fp32, eager attention)

Every checkpoint carries the MTP layer the real release has, as model.layers.<L>.*
with L = num_hidden_layers (3 here; 61 in the 671B): enorm, hnorm, eh_proj,
shared_head.norm, shared_head.head, embed_tokens and a full MoE decoder block.
transformers does not instantiate it, so this script builds it (a
DeepseekV3DecoderLayer with layer_idx L plus the extra tensors) and hands the
state dict to save_pretrained(state_dict=...), which applies transformers' reverse
weight conversion to it as well (fused experts -> per-expert names).
layers.L.embed_tokens / shared_head.head are byte-identical copies of
model.embed_tokens / lm_head, as in the release.

Made with (a private virtualenv outside the repo; the PyPI torch wheel, whose
CUDA libraries are not used):

    python3 -m venv /tmp/venv-ref
    /tmp/venv-ref/bin/pip install torch==2.15.0 transformers==5.23.0 safetensors==0.8.0 numpy==2.4.6 \
        accelerate==1.15.0   # accelerate: only for the optional transformers FP8-load cross-check
    /tmp/venv-ref/bin/python tools/reference/make_hf_fixtures.py [-o tests/fixtures/hf] [--seed 4321]

Rerunning with the same versions and seed reproduces the files byte for byte
(checked); then commit tests/fixtures/hf/. The script verifies what it wrote
before it finishes (every file opens with the safetensors library, every index's
weight_map covers every tensor exactly once, reload through from_pretrained
reproduces the weights and the logits, the FP8 files dequantize to
reference_dequant, weight and scale pairs are split across shards).
"""
import argparse
import json
import math
import os
import shutil
import sys

import torch
import transformers
import safetensors
from safetensors import safe_open
from safetensors.torch import save_file, load_file
from huggingface_hub import split_torch_state_dict_into_shards
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hfds

# Dimensions chosen so that several FP8 linears exceed 128 in one or both dimensions
# with partial edge blocks (160 = 128+32, 136 = 128+8), while the
# whole fixture set stays small.
TINY = dict(
    vocab_size=256,
    hidden_size=160,
    intermediate_size=136,
    moe_intermediate_size=8,
    num_hidden_layers=3,          # layer 0 dense, layers 1-2 MoE; MTP layer stored as model.layers.3
    first_k_dense_replace=1,
    n_routed_experts=4,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    q_lora_rank=24,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    num_attention_heads=2,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=1024,
    num_nextn_predict_layers=1,
    tie_word_embeddings=False,
    initializer_range=0.02,
    hidden_act="silu",
    bos_token_id=0,
    eos_token_id=1,
)
ROPE = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=256,
            beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
B, T = 2, 12
SHARD = "200KB"
BLOCK = 128
FP8_MAX = 448.0
QCFG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}

FP8_SUFFIXES = (  # dsv3-spec.md §7: the linears stored as F8_E4M3 + weight_scale_inv
    "self_attn.q_a_proj.weight", "self_attn.q_b_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
    "self_attn.kv_b_proj.weight", "self_attn.o_proj.weight",
    "gate_proj.weight", "up_proj.weight", "down_proj.weight",   # dense mlp, routed experts, shared experts
)


def die(msg):
    raise SystemExit(f"make_hf_fixtures: {msg}")


def make_config():
    cfg = DeepseekV3Config(**TINY, rope_parameters=dict(ROPE), attn_implementation="eager")
    cfg.architectures = ["DeepseekV3ForCausalLM"]
    return cfg


def init_(named, gen):
    """make_fixture.py's scheme: O(1) activations, norms around 1, wide router spread."""
    with torch.no_grad():
        for n, p in named:
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif n.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif n.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(p.shape[-1])))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(p.shape[-1])))


def build(seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = make_config()
    model = DeepseekV3ForCausalLM(cfg).to(torch.float32).eval()
    init_(model.named_parameters(), gen)
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.rand(b.shape, generator=gen))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr(), "lm_head is tied"

    # The MTP module (dsv3-spec §6), named as the release names layer 61.
    L = cfg.num_hidden_layers
    H = cfg.hidden_size
    mtp = hfds.DeepseekV3DecoderLayer(cfg, layer_idx=L).to(torch.float32)
    if not isinstance(mtp.mlp, hfds.DeepseekV3MoE):
        die("MTP decoder block is not an MoE block")
    init_(mtp.named_parameters(), gen)
    extra = {
        "enorm.weight": 1.0 + 0.2 * torch.randn(H, generator=gen),
        "hnorm.weight": 1.0 + 0.2 * torch.randn(H, generator=gen),
        "eh_proj.weight": torch.randn(H, 2 * H, generator=gen) / math.sqrt(2 * H),
        "shared_head.norm.weight": 1.0 + 0.2 * torch.randn(H, generator=gen),
    }
    with torch.no_grad():
        mtp.mlp.gate.e_score_correction_bias.copy_(0.3 * torch.rand(cfg.n_routed_experts, generator=gen))
    mtp_sd = {f"model.layers.{L}.{k}": v.detach().clone() for k, v in mtp.state_dict().items()}
    for k, v in extra.items():
        mtp_sd[f"model.layers.{L}.{k}"] = v
    mtp_sd[f"model.layers.{L}.embed_tokens.weight"] = model.model.embed_tokens.weight.detach().clone()
    mtp_sd[f"model.layers.{L}.shared_head.head.weight"] = model.lm_head.weight.detach().clone()

    ids = torch.randint(2, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().clone()
    return cfg, model, mtp_sd, ids, logits


# ---------------------------------------------------------------- safetensors helpers

def read_dir(d):
    """name -> tensor through the index (or the single file); checks the weight_map covers every tensor once."""
    idx = os.path.join(d, "model.safetensors.index.json")
    out, where = {}, {}
    if os.path.exists(idx):
        wm = json.load(open(idx))["weight_map"]
        files = sorted(set(wm.values()))
        on_disk = sorted(f for f in os.listdir(d) if f.startswith("model-") and f.endswith(".safetensors"))
        if files != on_disk:
            die(f"{d}: index names {files}, directory has {on_disk}")
    else:
        wm, files = None, ["model.safetensors"]
    total = 0
    for f in files:
        with safe_open(os.path.join(d, f), framework="pt") as h:
            if (h.metadata() or {}).get("format") != "pt":
                die(f"{d}/{f}: __metadata__.format is not 'pt'")
            for k in h.keys():
                if k in out:
                    die(f"{d}: {k} in two shards")
                t = h.get_tensor(k)
                out[k], where[k] = t, f
                total += t.numel() * t.element_size()
    if wm is not None:
        if set(wm) != set(out):
            die(f"{d}: weight_map and shard contents differ: {sorted(set(wm) ^ set(out))[:5]}")
        for k, f in wm.items():
            if where[k] != f:
                die(f"{d}: weight_map says {k} in {f}, found in {where[k]}")
        ts = json.load(open(idx))["metadata"].get("total_size")
        if ts is not None and ts != total:
            die(f"{d}: index total_size {ts} != {total}")
    return out, where


def write_sharded(d, sd, order, max_shard_size, move=()):
    """HF-style shards of sd (in `order`), then move the named tensors to the given shard numbers (0-based)."""
    ordered = {k: sd[k] for k in order}
    split = split_torch_state_dict_into_shards(
        ordered, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    if not split.is_sharded:
        die("expected several shards")
    names = sorted(split.filename_to_tensors)
    shard_of = {k: names.index(f) for k, f in split.tensor_to_filename.items()}
    for k, s in move:
        shard_of[k] = s
    groups = [[k for k in order if shard_of[k] == i] for i in range(len(names))]
    wm, total = {}, 0
    for f, keys in zip(names, groups):
        if not keys:
            die(f"empty shard {f}")
        save_file({k: sd[k].contiguous() for k in keys}, os.path.join(d, f), metadata={"format": "pt"})
        for k in keys:
            wm[k] = f
            total += sd[k].numel() * sd[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": wm}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as fh:
        fh.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return wm


# ---------------------------------------------------------------- FP8

def is_fp8(name):
    return name.endswith(FP8_SUFFIXES) and ".mlp.gate." not in name


def quantize(w, pow2=False, bump=()):
    """DeepSeek 128x128 block recipe. scale_inv[i,j] = amax(block)/448 (fp32), q = e4m3fn(w / scale).
    pow2: round every scale up to a power of two (ue8m0), except the blocks in `bump`,
    whose power-of-two scale is multiplied by 1.5 (deliberately not a power of two)."""
    w = w.to(torch.float32)
    O, I = w.shape
    nO, nI = -(-O // BLOCK), -(-I // BLOCK)
    s = torch.empty(nO, nI, dtype=torch.float32)
    for i in range(nO):
        for j in range(nI):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            a = blk.abs().max()
            if a == 0:
                die("all-zero block")
            s[i, j] = a / FP8_MAX
    if pow2:
        m, e = torch.frexp(s)  # s = m * 2^e, m in [0.5,1): 2^ceil(log2 s) = 2^e, or 2^(e-1) when m == 0.5
        s = torch.ldexp(torch.ones_like(s), torch.where(m == 0.5, e - 1, e))
        for (i, j) in bump:
            s[i, j] = s[i, j] * 1.5
    sfull = s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:O, :I]
    q = (w / sfull).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    if torch.isnan(q.to(torch.float32)).any():
        die("NaN after the e4m3 cast")
    return q, s


def dequant(q, s):
    O, I = q.shape
    sfull = s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:O, :I]
    return q.to(torch.float32) * sfull


def fp8_state(base, pow2=False, bumps=None):
    """base: per-expert names, fp32. Returns the release-style state dict and the list of FP8 names."""
    out, fp8 = {}, []
    bumps = bumps or {}
    for k, v in base.items():
        if k.endswith("e_score_correction_bias"):
            out[k] = v.to(torch.float32)
        elif is_fp8(k):
            q, s = quantize(v, pow2, bumps.get(k, ()))
            out[k] = q
            out[k + "_scale_inv"] = s
            fp8.append(k)
        else:
            out[k] = v.to(torch.bfloat16)
    return out, fp8


def is_pow2(x):
    m, _ = torch.frexp(x)
    return m == 0.5


def release_order(keys):
    """Natural layer order, each weight immediately followed by its weight_scale_inv."""
    from transformers.core_model_loading import dot_natural_key
    return sorted(keys, key=lambda k: (dot_natural_key(k[:-len("_scale_inv")] if k.endswith("_scale_inv") else k),
                                       k.endswith("_scale_inv")))


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("-o", "--output", default=os.path.join(here, "..", "..", "tests", "fixtures", "hf"))
    ap.add_argument("--seed", type=int, default=4321)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    for sub in ("fp32", "bf16", "fp8", "ue8m0"):  # what this script makes; README.md stays
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    cfg, model, mtp_sd, ids, logits = build(args.seed)
    L = cfg.num_hidden_layers
    vers = f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors {safetensors.__version__}"

    # fp32: save_pretrained, one file, with the MTP tensors added to the state dict
    d32 = os.path.join(out, "fp32")
    sd32 = dict(model.state_dict())
    sd32.update(mtp_sd)
    model.save_pretrained(d32, state_dict=sd32, max_shard_size="1GB", safe_serialization=True)
    base, _ = read_dir(d32)  # the checkpoint names transformers writes (per-expert, reverted)
    if not any(k.startswith(f"model.layers.{L}.mlp.experts.0.") for k in base):
        die("save_pretrained did not revert the MTP layer's fused experts")
    if any("gate_up_proj" in k for k in base):
        die("fused expert tensors in the saved checkpoint")
    if not torch.equal(base[f"model.layers.{L}.embed_tokens.weight"], base["model.embed_tokens.weight"]):
        die("MTP embed copy")

    # reload fp32 through transformers: weights and logits bitwise
    m2 = DeepseekV3ForCausalLM.from_pretrained(d32, dtype=torch.float32, attn_implementation="eager").eval()
    for k, v in model.state_dict().items():
        if not torch.equal(v, m2.state_dict()[k]):
            die(f"fp32 reload differs at {k}")
    with torch.no_grad():
        lg2 = m2(input_ids=ids).logits.float()
    if not torch.equal(lg2, logits):
        die("fp32 reload does not reproduce the logits")
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(out, "expected_logits.safetensors"),
              metadata={"format": "pt"})  # one key only: safetensors writes __metadata__ in hash order

    # bf16: transformers' own bf16 load (keeps e_score_correction_bias in fp32), then save_pretrained sharded
    d16 = os.path.join(out, "bf16")
    m16 = DeepseekV3ForCausalLM.from_pretrained(d32, dtype=torch.bfloat16, attn_implementation="eager")
    sd16 = dict(m16.state_dict())
    for k, v in mtp_sd.items():
        sd16[k] = v.to(torch.float32 if k.endswith("e_score_correction_bias") else torch.bfloat16)
    m16.save_pretrained(d16, state_dict=sd16, max_shard_size=SHARD, safe_serialization=True)
    b16, where16 = read_dir(d16)
    if set(b16) != set(base):
        die("bf16 and fp32 tensor names differ")
    for k, v in base.items():
        want = v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)
        if b16[k].dtype != want.dtype or not torch.equal(b16[k], want):
            die(f"bf16 {k} is not the rounded fp32 tensor")

    # fp8
    d8 = os.path.join(out, "fp8")
    os.makedirs(d8)
    sd8, fp8_names = fp8_state(base)
    order = release_order(sd8)
    # natural sharding first, then force one pair each way across shards
    split = split_torch_state_dict_into_shards({k: sd8[k] for k in order}, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=SHARD)
    nsh = len(split.filename_to_tensors)
    first, last = fp8_names[0], fp8_names[-1]          # first: scale to the last shard; last: scale to shard 0
    move = [(first + "_scale_inv", nsh - 1), (last + "_scale_inv", 0)]
    write_sharded(d8, sd8, order, SHARD, move)
    cfg8 = json.load(open(os.path.join(d16, "config.json")))
    cfg8["quantization_config"] = dict(QCFG)
    with open(os.path.join(d8, "config.json"), "w") as fh:
        fh.write(json.dumps(cfg8, indent=2, sort_keys=True) + "\n")
    got8, where8 = read_dir(d8)
    split_pairs = [(k, where8[k], where8[k + "_scale_inv"]) for k in fp8_names if where8[k] != where8[k + "_scale_inv"]]
    if not any(int(a[6:11]) < int(b[6:11]) for _, a, b in split_pairs) or \
       not any(int(a[6:11]) > int(b[6:11]) for _, a, b in split_pairs):
        die("need weight/scale pairs split across shards in both orders")
    ref = {k: dequant(got8[k], got8[k + "_scale_inv"]) for k in fp8_names}
    save_file(ref, os.path.join(d8, "reference_dequant.safetensors"),
              metadata={"format": "pt"})
    for k in fp8_names:  # sanity: quantization error small; scale shape
        w = base[k]
        s = got8[k + "_scale_inv"]
        if list(s.shape) != [-(-w.shape[0] // 128), -(-w.shape[1] // 128)] or s.dtype != torch.float32:
            die(f"{k}: scale shape {list(s.shape)}")
        rel = ((ref[k] - w).norm() / w.norm()).item()
        if rel > 0.05:
            die(f"{k}: relative dequant error {rel}")
    # transformers' own dequantizing loader, where it works on this machine
    tf_check = "not run"
    try:
        from transformers import FineGrainedFP8Config
        mq = DeepseekV3ForCausalLM.from_pretrained(d8, dtype=torch.float32, attn_implementation="eager",
                                                   quantization_config=FineGrainedFP8Config(dequantize=True))
        msd = mq.state_dict()
        I = cfg.moe_intermediate_size
        bad, partial, n = [], [], 0
        for k in fp8_names:
            if ".mlp.experts." in k:  # transformers fuses experts: gate_up_proj [E, 2I, H], down_proj [E, H, I]
                pre, e, proj = k.rsplit(".", 3)[0], int(k.split(".")[-3]), k.split(".")[-2]
                if pre + ".gate_up_proj" not in msd:
                    continue
                t = (msd[pre + ".gate_up_proj"][e, :I] if proj == "gate_proj" else
                     msd[pre + ".gate_up_proj"][e, I:] if proj == "up_proj" else msd[pre + ".down_proj"][e])
            elif k in msd:
                t = msd[k]
            else:
                continue  # the MTP layer: transformers does not load it
            n += 1
            same = t.dtype == torch.float32 and torch.equal(t, ref[k])
            # transformers 5.23 Fp8Dequantize derives the block from the shapes (rows // scale_rows), which is
            # 128 only when the dimension is <= 128 or a multiple of 128; with partial edge blocks it applies the
            # scales to the wrong elements (or raises when the shape does not divide). Those must differ here.
            tiles = all(d <= BLOCK or d % BLOCK == 0 for d in ref[k].shape)
            if same != tiles:
                bad.append(k)
            if not tiles:
                partial.append(k)
        if bad:
            die(f"transformers' FP8 dequantization vs reference_dequant not as expected at {bad[:4]}")
        tf_check = (f"transformers FineGrainedFP8Config(dequantize=True) load, {n} FP8 weights (not the MTP layer's): "
                    f"{n - len(partial)} without partial blocks bitwise equal to reference_dequant; {len(partial)} "
                    f"with partial edge blocks differ (transformers derives the block size from the shapes): "
                    f"{sorted({k.split('.', 3)[-1] for k in partial})}")
    except Exception as e:  # noqa: BLE001
        tf_check = f"transformers FP8 dequantizing load failed here: {type(e).__name__}: {str(e)[:200]}"

    # ue8m0 (V3.1): powers of two except two bumped scales, in two different tensors
    du = os.path.join(out, "ue8m0")
    os.makedirs(du)
    multi = [k for k in fp8_names if base[k].shape[0] > 128 and base[k].shape[1] > 128]
    bumps = {multi[0]: [(1, 1)], fp8_names[1]: [(0, 0)]}
    sdu, _ = fp8_state(base, pow2=True, bumps=bumps)
    write_sharded(du, sdu, release_order(sdu), "400KB")
    cfgu = dict(cfg8)
    cfgu["quantization_config"] = dict(QCFG, scale_fmt="ue8m0")
    with open(os.path.join(du, "config.json"), "w") as fh:
        fh.write(json.dumps(cfgu, indent=2, sort_keys=True) + "\n")
    gotu, _ = read_dir(du)
    nonpow2 = sum(int((~is_pow2(gotu[k + "_scale_inv"])).sum()) for k in fp8_names)
    if nonpow2 != 2:
        die(f"ue8m0: {nonpow2} non-power-of-two scales, want 2")

    # report
    print(f"make_hf_fixtures: {vers}; seed {args.seed}")
    print(f"  FP8 tensors ({len(fp8_names)}): " + ", ".join(sorted({k.split('.', 3)[-1] if 'experts' not in k else
                                                                   'mlp.experts.E.' + k.rsplit('.', 2)[-2] + '.weight'
                                                                   for k in fp8_names})))
    print(f"  fp8 weight/scale pairs in different shards: {split_pairs}")
    print(f"  ue8m0 bumped (non-pow2) scales: {bumps}")
    print(f"  {tf_check}")
    tot = 0
    for root, _, files in sorted(os.walk(out)):
        for f in sorted(files):
            p = os.path.join(root, f)
            tot += os.path.getsize(p)
            print(f"  {os.path.relpath(p, out):48s} {os.path.getsize(p):9d}")
    print(f"  total {tot} bytes")


if __name__ == "__main__":
    main()
