#!/usr/bin/env python3
"""make_lora_fixture.py — LoRA on the tiny DeepseekV3 made with PEFT itself, for
bin/dsv3-refcheck: logits, loss, every LoRA gradient and 3 AdamW steps over the
adapters only (the base frozen: its gradients are never computed).

Developers only (torch, transformers, peft). Reuses make_fixture.py's tiny model,
weight init, routing checks and fixture layout. lora_B is seeded non-zero (PEFT
starts it at zero, which would make every lora_A gradient zero and the check
blind to A); r = 4, alpha = 8, dropout 0.

    python3 tools/reference/make_lora_fixture.py [-o tests/fixtures/hf_tiny_lora.h5]
    python3 tools/reference/make_lora_fixture.py -o tests/fixtures/hf_tiny_lora_mlp.h5 \\
        --targets mlp.gate_proj,mlp.up_proj,mlp.down_proj,mlp.shared_experts.gate_proj,\\
mlp.shared_experts.up_proj,mlp.shared_experts.down_proj,self_attn.o_proj
    python3 tools/reference/make_lora_fixture.py -o tests/fixtures/hf_tiny_lora_rs.h5 --rslora
        (rank-stabilised scaling alpha/sqrt(r) = 4, against alpha/r = 2)

    python3 tools/reference/make_lora_fixture.py -o tests/fixtures/hf_tiny_lora_fp8.h5 --base-dtype fp8
        (the frozen base's linear weights quantized with DeepSeek's recipe first: per
        128x128 block scale = amax/448, e4m3fn(w/scale) round-to-nearest-even; the
        reference computes with them dequantized to fp32, float32(e4m3)*scale;
        --base-dtype bf16: rounded to bfloat16. /weights holds those dequantized values)

Root attributes lora_r, lora_alpha, lora_targets (the deck's names),
lora_use_rslora and base_dtype (fp32 | bf16 | fp8: train.base_dtype) tell refcheck.
"""
import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixture as mf  # noqa: E402

torch, h5py, transformers = mf.torch, mf.h5py, mf.transformers
from peft import LoraConfig, get_peft_model  # noqa: E402
import peft  # noqa: E402

R, ALPHA = 4, 8.0
MLA = ["self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa", "self_attn.kv_b_proj",
       "self_attn.o_proj"]


def ckpt_name(n):
    """PEFT parameter name -> dsv3/HF checkpoint name."""
    n = n.replace("base_model.model.", "", 1).replace(".base_layer", "").replace(".default", "")
    return n


# the linear weights dsv3 stores narrow with train.base_dtype (params.c: P_STORED)
STORED = re.compile(r"(self_attn\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                    r"|mlp\.(gate_proj|up_proj|down_proj)|mlp\.shared_experts\.(gate_proj|up_proj|down_proj))\.weight$")


def quant_fp8(w):
    """DeepSeek's recipe on one [out, in] fp32 matrix, returned dequantized to fp32."""
    out = torch.empty_like(w)
    for r0 in range(0, w.shape[0], 128):
        for c0 in range(0, w.shape[1], 128):
            blk = w[r0:r0 + 128, c0:c0 + 128]
            amax = blk.abs().max()
            s = amax / 448.0 if amax > 0 else torch.tensor(1.0, dtype=torch.float32)
            q = (blk / s).to(torch.float8_e4m3fn)
            out[r0:r0 + 128, c0:c0 + 128] = q.to(torch.float32) * s
    return out


def quantize_base(model, how):
    """The frozen linear weights (2-D, and the fused routed experts per expert and projection) in place."""
    if how == "fp32":
        return 0
    one = quant_fp8 if how == "fp8" else (lambda w: w.to(torch.bfloat16).to(torch.float32))
    I, n = model.config.moe_intermediate_size, 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]: gate rows [:I], up rows [I:]
                for e in range(p.shape[0]):
                    p[e, :I] = one(p[e, :I].float())
                    p[e, I:] = one(p[e, I:].float())
                n += 2
            elif name.endswith("mlp.experts.down_proj"):  # [E, H, I]
                for e in range(p.shape[0]):
                    p[e] = one(p[e].float())
                n += 1
            elif p.ndim == 2 and STORED.search(name):
                p.copy_(one(p.float()))
                n += 1
    return n


def build(seed, targets, min_margin, rslora=False, base_dtype="fp32"):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = mf.make_config()
    base = mf.DeepseekV3ForCausalLM(cfg).to(torch.float32)
    base.train()
    mf.init_weights(base, gen)
    nq = quantize_base(base, base_dtype)
    if base_dtype != "fp32":
        print(f"base_dtype {base_dtype}: {nq} frozen linear weights (fused experts per projection) quantized")
    V, B, T = cfg.vocab_size, mf.B, mf.T
    ids = torch.randint(2, V, (B, T), generator=gen)
    labels = ids.clone()
    labels[torch.rand(B, T, generator=gen) < 0.2] = -100
    labels[1, T - 3:] = -100
    # PEFT matches a module whose full name ends with ".<entry>": layer-qualified names keep
    # "mlp.gate_proj" from also catching the shared experts' gate_proj
    L = cfg.num_hidden_layers
    names = [f"model.layers.{l}.{t}" for l in range(L) for t in targets]
    present = {n for n, _ in base.named_modules()}
    names = [n for n in names if n in present]
    if any(t.startswith("mlp.") for t in targets):
        # PEFT >= 0.19 on transformers 5 rewrites MLP targets of deepseek_v3 (its v4 -> v5 MoE compat map):
        # gate_proj/up_proj/down_proj become LoRA on the fused routed experts, and the dense and shared
        # experts' nn.Linear get none. The oracle wants PEFT's plain LoRA on exactly the named modules,
        # so that rewrite is switched off here, and the wrapped set is asserted below.
        import peft.utils.transformers_weight_conversion as twc
        twc.convert_peft_config_for_transformers = lambda *a, **k: None
    model = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=names,
                                            bias="none", init_lora_weights=True, use_rslora=rslora))
    wrapped = {ckpt_name(n).rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    if wrapped != set(names):
        raise SystemExit(f"make_lora_fixture: PEFT wrapped {sorted(wrapped)}, asked {sorted(names)}")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # non-zero, so lora_A gets gradients too
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    rec = mf.RouteRecorder(model)
    out = model(input_ids=ids, labels=labels)
    rec.first = False
    out.loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad != ("lora_" in n):
            raise SystemExit(f"make_lora_fixture: {n}: requires_grad {p.requires_grad}")
        if not p.requires_grad and p.grad is not None:
            raise SystemExit(f"make_lora_fixture: the frozen {n} got a gradient")
    weights = {}
    for k, v in mf.hf_state(model.base_model.model).items():
        weights[ckpt_name(k)] = v
    grads = {ckpt_name(n): p.grad.detach().float().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "weight_decay": mf.OPT["weight_decay"]}], lr=mf.OPT["lr"],
                            betas=(mf.OPT["beta1"], mf.OPT["beta2"]), eps=mf.OPT["eps"], foreach=False)
    steps = []
    for k in range(mf.STEPS):
        if k > 0:
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        with torch.no_grad():
            steps.append(model(input_ids=ids, labels=labels).loss.item())
    print(f"seed {seed}: {len(grads)} LoRA tensors, loss {out.loss.item():.6f}, steps {steps}, "
          f"min routing margin {rec.min_margin:.3g} at {rec.where}")
    if rec.min_margin < min_margin:
        return None
    return dict(cfg=cfg, ids=ids, labels=labels, logits=out.logits.detach().float().numpy(), loss=out.loss.item(),
                weights=weights, grads=grads, steps=steps, seed=seed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("-o", "--output", default=os.path.join(here, "..", "..", "tests", "fixtures", "hf_tiny_lora.h5"))
    ap.add_argument("--targets", default=",".join(MLA))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--min-margin", type=float, default=5e-4)
    ap.add_argument("--rslora", action="store_true", help="use_rslora: scaling alpha/sqrt(r)")
    ap.add_argument("--base-dtype", choices=["fp32", "bf16", "fp8"], default="fp32",
                    help="quantize the frozen base's linear weights first (train.base_dtype)")
    args = ap.parse_args()
    targets = args.targets.split(",")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    fx = None
    for seed in range(args.seed, args.seed + 50):
        fx = build(seed, targets, args.min_margin, args.rslora, args.base_dtype)
        if fx:
            break
    if not fx:
        raise SystemExit("make_lora_fixture: no seed in 50 gives routing margins above --min-margin")
    mf.write_fixture(args.output, config=fx["cfg"].to_json_string(use_diff=False), seed=fx["seed"], fx=fx,
                     step_losses=fx["steps"],
                     attrs=[("lora_r", np.int64(R)), ("lora_alpha", np.float64(ALPHA)),
                            ("lora_targets", json.dumps(targets)), ("lora_use_rslora", np.int64(args.rslora)),
                            ("base_dtype", args.base_dtype)],
                     generator=(f"tools/reference/make_lora_fixture.py; torch {torch.__version__}, "
                                f"transformers {transformers.__version__}, peft {peft.__version__}"),
                     notes=(f"PEFT LoRA (r=4, alpha=8, dropout 0, use_rslora {args.rslora}) on the frozen tiny base "
                            f"(base_dtype {args.base_dtype}: its linear weights quantized, stored dequantized); "
                            "lora_B seeded non-zero; "
                            "expected/grads holds the LoRA tensors only; AdamW over the adapters"))
    print(f"wrote {args.output}: {len(fx['weights'])} tensors ({len(fx['grads'])} LoRA), loss {fx['loss']:.6f}")


if __name__ == "__main__":
    main()
