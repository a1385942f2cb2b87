#!/usr/bin/env python3
"""make_fixture.py — build the Hugging Face reference fixture for bin/dsv3-refcheck.

Developers only; the build and the tests never run this. It pip-installs
torch, transformers, h5py and safetensors into the running interpreter when they
are missing (`python3 -m pip install ...`; use a virtualenv or pyenv, not the
system python). Run from anywhere:

    python3 tools/reference/make_fixture.py [-o tests/fixtures/hf_tiny.h5] [--seed 1234]

then check with `bin/dsv3-refcheck tests/fixtures/hf_tiny.h5` and commit the file.
The YaRN variant with mscale != mscale_all_dim (tests/fixtures/hf_tiny_mscale.h5):

    python3 tools/reference/make_fixture.py -o tests/fixtures/hf_tiny_mscale.h5 --rope \
      '{"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 256,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 1.3}'

Written with transformers 5.x (fused 3-D expert tensors) and also handles
4.x (per-expert nn.Linear modules).

What it does: builds a tiny DeepseekV3ForCausalLM in fp32 with every feature
on (q/kv LoRA ranks, YaRN rope, a dense layer and two MoE layers, 12 routed
experts in 4 groups with topk_group < n_group, a shared expert, random
non-negative e_score_correction_bias), seeded random weights scaled so that
attention and routing are far from uniform, a [B,T] batch with some labels
masked, and writes an HDF5 fixture:

  root attributes
    format         "dsv3-refcheck-fixture 1"
    config         config.json text (HF's own to_json_string; rope in `rope_parameters`)
    lr, beta1, beta2, eps, weight_decay   torch.optim.AdamW settings (float64)
    steps          number of optimizer steps in /expected/step_losses (3)
    seed, generator (versions), notes
  /weights/<HF name>          fp32, every parameter plus the e_score_correction_bias buffers
  /inputs/input_ids [B,T]     int32
  /inputs/labels    [B,T]     int32, HF convention: the model shifts them by one, -100 = ignored
  /expected/logits  [B,T,V]   fp32
  /expected/loss              fp32 scalar: mean CE over the counted (shifted) labels
  /expected/grads/<HF name>   fp32 d loss / d weight, every trained parameter (not the router bias)
  /expected/step_losses [3]   fp32: step_losses[k] = loss on the same batch after k+1 AdamW steps;
                              each step = forward + backward at the current weights, then
                              AdamW (decay on >= 2-D weights, none on 1-D norm weights, no clipping);
                              router biases are buffers and stay fixed.

Expert naming: the fixture always uses the checkpoint names of dsv3-spec.md §7,
model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight, one [out,in] tensor per
expert. transformers >= 5 keeps experts fused as experts.gate_up_proj [E, 2I, H]
(gate rows first, then up rows) and experts.down_proj [E, H, I]; this script
splits those (weights and gradients) into the per-expert names, and checks the
split by loading the per-expert tensors back through from_pretrained (which
applies transformers' own checkpoint conversion) and comparing.

Checks made before writing (the script fails rather than write a bad fixture):
  - HF applies RoPE in DeepSeek's interleaved-pair form (rope_interleave=True;
    HF's output is the interleaved result de-interleaved, identical scores, spec §4);
  - HF's YaRN inverse frequencies equal the spec §4 formula, and the spec's test
    values for the 671B config;
  - HF's routing (indices and weights) equals spec §5 with -inf group masking
    (spec §10.1; non-negative biases make 0.0 and -inf masking agree anyway);
  - every routed expert gets tokens in the first forward (so every expert
    gradient is non-zero), and every routing decision has a margin (selected vs first rejected score) of at
    least --min-margin at every weight state the fixture covers, so fp32
    rounding in another implementation cannot flip an expert choice; otherwise
    the next seed is tried.
"""
import argparse
import json
import math
import os
import sys
import tempfile

try:
    import h5py
    import safetensors  # noqa: F401  (the expert-name round trip)
    import torch
    import transformers
except ImportError:
    import subprocess
    print("make_fixture: installing torch transformers h5py safetensors with pip", file=sys.stderr)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "torch", "transformers", "h5py", "safetensors"])
    import h5py
    import torch
    import transformers
import numpy as np
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hfds

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=12,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    n_routed_experts=12,
    n_shared_experts=1,
    num_experts_per_tok=3,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=12,
    qk_rope_head_dim=8,
    v_head_dim=10,
    num_attention_heads=3,
    num_key_value_heads=3,
    rms_norm_eps=1e-6,   # HF's q_a/kv_a norms always use 1e-6 (spec §2); keep the config equal
    max_position_embeddings=1024,
    num_nextn_predict_layers=0,
    tie_word_embeddings=False,
    initializer_range=0.02,
    hidden_act="silu",
    bos_token_id=0,
    eos_token_id=1,
)
ROPE = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=256,
            beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
OPT = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
B, T, STEPS = 2, 16, 3


def make_config():
    kw = dict(TINY)
    if "rope_parameters" in DeepseekV3Config.__init__.__code__.co_varnames or hasattr(DeepseekV3Config(), "rope_parameters"):
        kw["rope_parameters"] = dict(ROPE)
    else:  # transformers 4.x
        r = dict(ROPE)
        kw["rope_theta"] = r.pop("rope_theta")
        r["type"] = r.pop("rope_type")
        kw["rope_scaling"] = r
    cfg = DeepseekV3Config(**kw, attn_implementation="eager")
    try:
        cfg._experts_implementation = "eager"
    except Exception:
        pass
    cfg.architectures = ["DeepseekV3ForCausalLM"]
    return cfg


def fused_experts(model):
    return any(n.endswith("mlp.experts.gate_up_proj") for n, _ in model.named_parameters())


def hf_state(model, grads=False):
    """Parameters (or their gradients) under checkpoint names, per-expert split, fp32 numpy."""
    out = {}
    I = model.config.moe_intermediate_size
    for n, p in model.named_parameters():
        t = p.grad if grads else p.data
        if t is None:
            raise SystemExit(f"make_fixture: no gradient for {n}")
        t = t.detach().to(torch.float32).cpu()
        if n.endswith("mlp.experts.gate_up_proj"):
            base = n[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :I].numpy().copy()
                out[f"{base}{e}.up_proj.weight"] = t[e, I:].numpy().copy()
        elif n.endswith("mlp.experts.down_proj"):
            base = n[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = t[e].numpy().copy()
        else:
            out[n] = t.numpy().copy()
    if not grads:
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                out[n] = b.detach().to(torch.float32).cpu().numpy().copy()
    return out


def init_weights(model, gen):
    """Seeded weights, scaled so activations are O(1): attention and routing are non-trivial."""
    cfg = model.config
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm weights: around 1, not exactly 1, so their gradients matter
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif n == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif n.endswith("mlp.gate.weight"):  # router: wide spread of sigmoid scores
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(p.shape[-1])))
            else:  # [out,in] or fused [E,out,in]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(p.shape[-1])))
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):  # non-negative: HF's 0.0 masking == spec's -inf
                b.copy_(0.3 * torch.rand(b.shape, generator=gen))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr(), "lm_head is tied"
    assert cfg.tie_word_embeddings is False


# ---------------------------------------------------------------- checks against the spec

def spec_yarn_inv_freq(dim, theta, factor, orig, beta_fast, beta_slow):
    """dsv3-spec.md §4, in float64."""
    f = [theta ** (-2.0 * i / dim) for i in range(dim // 2)]
    corr = lambda r: dim * math.log(orig / (r * 2 * math.pi)) / (2 * math.log(theta))
    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    out = []
    for i in range(dim // 2):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        smooth = 1.0 - ramp
        out.append(f[i] / factor * (1 - smooth) + f[i] * smooth)
    return np.array(out)


def check_rope(model):
    cfg = model.config
    if not getattr(cfg, "rope_interleave", False):
        raise SystemExit("make_fixture: HF config has rope_interleave=False; spec §4 needs the interleaved form")
    # inverse frequencies: HF vs the spec formula, for this config and for the 671B test values
    rp = getattr(cfg, "rope_parameters", None) or dict(getattr(cfg, "rope_scaling"), rope_theta=cfg.rope_theta)
    hf_inv = model.model.rotary_emb.inv_freq.double().numpy()
    if rp.get("rope_type", rp.get("type")) == "yarn":
        ref = spec_yarn_inv_freq(cfg.qk_rope_head_dim, rp["rope_theta"], rp["factor"],
                                 rp["original_max_position_embeddings"], rp["beta_fast"], rp["beta_slow"])
    else:  # plain RoPE (developer variants only)
        d = cfg.qk_rope_head_dim
        ref = np.array([rp["rope_theta"] ** (-2.0 * i / d) for i in range(d // 2)])
    if not np.allclose(hf_inv, ref, rtol=1e-6, atol=0):
        raise SystemExit(f"make_fixture: HF YaRN inv_freq {hf_inv} != spec {ref}")
    # cos/sin attention factor: HF's equals the spec's mscale(f, mscale) / mscale(f, mscale_all_dim)
    # (1 when the two are equal, as in the release; the mscale fixture makes them differ)
    if rp.get("rope_type", rp.get("type")) == "yarn":
        ms = lambda s_, m_: 1.0 if s_ <= 1 else 0.1 * m_ * math.log(s_) + 1.0
        want = ms(rp["factor"], rp.get("mscale", 0) or 0) / ms(rp["factor"], rp.get("mscale_all_dim", 0) or 0) \
            if rp.get("mscale") and rp.get("mscale_all_dim") else ms(rp["factor"], 1.0)
        if abs(model.model.rotary_emb.attention_scaling - want) > 1e-9:
            raise SystemExit(f"make_fixture: HF cos/sin attention_factor {model.model.rotary_emb.attention_scaling} "
                             f"!= spec {want}")
    big = spec_yarn_inv_freq(64, 10000.0, 40.0, 4096, 32, 1)
    for i, v in {0: 1, 1: 0.74989421, 10: 0.056234133, 11: 0.039006927, 16: 0.0055, 22: 1.7782794e-4,
                 23: 3.3338036e-5, 31: 3.3338036e-6}.items():
        if abs(big[i] - v) > 1e-6 * abs(v) + 1e-9:
            raise SystemExit(f"make_fixture: spec §4 test value f'_{i}={v} vs formula {big[i]}")
    # layout: HF's rotation == DeepSeek's interleaved pairs, de-interleaved
    g = torch.Generator().manual_seed(7)
    d = cfg.qk_rope_head_dim
    x = torch.randn(1, 1, 5, d, generator=g, dtype=torch.float64)
    pos = torch.arange(5, dtype=torch.float64)
    ang = pos[:, None] * torch.tensor(ref)[None, :]
    emb = torch.cat([ang, ang], -1)[None]
    hq, _ = hfds.apply_rotary_pos_emb_interleave(x, x, emb.cos(), emb.sin())
    xr = torch.view_as_real(torch.view_as_complex(x.view(1, 1, 5, d // 2, 2)) *
                            torch.polar(torch.ones_like(ang), ang)[None, None]).flatten(-2)
    if not torch.allclose(hq, torch.cat([xr[..., 0::2], xr[..., 1::2]], -1), atol=1e-12):
        raise SystemExit("make_fixture: HF rope is not the de-interleaved DeepSeek interleaved-pair rotation")


class RouteRecorder:
    """Hooks every router; checks HF routing against spec §5 and tracks the smallest decision margin."""

    def __init__(self, model):
        self.cfg = model.config
        self.min_margin = float("inf")
        self.where = ""
        self.calls = 0
        self.used = {}       # router name -> experts chosen in the first forward (set while self.first)
        self.first = True
        self.handles = []
        for n, m in model.named_modules():
            if isinstance(m, hfds.DeepseekV3TopkRouter):
                self.handles.append(m.register_forward_hook(self.hook(n)))

    def hook(self, name):
        def f(mod, inp, out):
            self.check(name, mod, inp[0].detach(), out)
        return f

    def check(self, name, mod, x, out):
        cfg = self.cfg
        if len(out) == 3:  # transformers 5: (router_logits, weights, indices)
            _, w_hf, idx_hf = out
        else:  # transformers 4: (indices, weights)
            idx_hf, w_hf = out
        x = x.reshape(-1, cfg.hidden_size).double()
        s = torch.sigmoid(x @ mod.weight.detach().double().t())
        sc = s + mod.e_score_correction_bias.double()
        E, G, K, KG = cfg.n_routed_experts, cfg.n_group, cfg.num_experts_per_tok, cfg.topk_group
        gs = sc.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
        gsort = gs.sort(-1, descending=True)[0]
        gmargin = (gsort[:, KG - 1] - gsort[:, KG]).min().item()
        keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(KG, -1)[1], True)
        masked = sc.masked_fill(~keep.repeat_interleave(E // G, 1), float("-inf"))  # spec §10.1
        msort = masked.sort(-1, descending=True)[0]
        emargin = (msort[:, K - 1] - msort[:, K]).min().item()
        idx = masked.topk(K, -1)[1]
        w = s.gather(1, idx)
        w = w / w.sum(-1, keepdim=True) * cfg.routed_scaling_factor
        if not torch.equal(idx.sort(-1)[0], idx_hf.sort(-1)[0]):
            raise SystemExit(f"make_fixture: {name}: HF expert choice differs from spec §5/§10.1")
        o_ref = torch.zeros(idx.shape[0], E, dtype=torch.float64).scatter_(1, idx, w)
        o_hf = torch.zeros(idx.shape[0], E, dtype=torch.float64).scatter_(1, idx_hf, w_hf.detach().double())
        if not torch.allclose(o_ref, o_hf, rtol=1e-5, atol=1e-6):
            raise SystemExit(f"make_fixture: {name}: HF routing weights differ from spec §5")
        if mod.e_score_correction_bias.requires_grad or isinstance(mod.e_score_correction_bias, torch.nn.Parameter):
            raise SystemExit(f"make_fixture: {name}: e_score_correction_bias is a parameter, expected a buffer")
        m = min(gmargin, emargin)
        self.calls += 1
        if self.first:
            self.used[name] = set(idx.flatten().tolist())
        if m < self.min_margin:
            self.min_margin, self.where = m, f"{name} (group margin {gmargin:.3g}, expert margin {emargin:.3g})"


def check_expert_names(model, weights):
    """Per-expert checkpoint names round-trip through transformers' own loader."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        print("make_fixture: safetensors missing, expert-name round trip skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as d:
        model.config.save_pretrained(d)
        save_file({k: torch.from_numpy(v) for k, v in weights.items()}, os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})
        m2 = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32)
        sd1, sd2 = model.state_dict(), m2.state_dict()
        for k, v in sd1.items():
            if k not in sd2 or not torch.equal(v, sd2[k]):
                raise SystemExit(f"make_fixture: {k} does not survive the per-expert checkpoint round trip")


# ---------------------------------------------------------------- fixture

def build(seed, min_margin, verbose=True):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = make_config()
    model = DeepseekV3ForCausalLM(cfg).to(torch.float32)
    model.train()  # dropout is 0; train() only so autograd paths are the training ones
    init_weights(model, gen)
    check_rope(model)

    V = cfg.vocab_size
    ids = torch.randint(2, V, (B, T), generator=gen)
    labels = ids.clone()
    labels[torch.rand(B, T, generator=gen) < 0.2] = -100  # scattered masked labels
    labels[1, T - 3:] = -100                               # a padded tail
    labels[0, 1] = -100                                    # the first counted target masked
    if (labels[:, 1:] != -100).sum() < 4:
        raise SystemExit("make_fixture: too few counted labels")

    weights0 = hf_state(model)
    rec = RouteRecorder(model)

    out = model(input_ids=ids, labels=labels)
    rec.first = False
    loss = out.loss
    loss.backward()
    logits = out.logits.detach().float().numpy().copy()
    grads = hf_state(model, grads=True)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    nodecay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPT["weight_decay"]},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=OPT["lr"], betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"], foreach=False)
    step_losses = []
    for k in range(STEPS):
        if k > 0:
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        with torch.no_grad():
            step_losses.append(model(input_ids=ids, labels=labels).loss.item())
    for h in rec.handles:
        h.remove()
    if verbose:
        print(f"seed {seed}: loss {loss.item():.6f}, step losses {step_losses}, "
              f"min routing margin {rec.min_margin:.3g} at {rec.where}")
    unused = {n: sorted(set(range(cfg.n_routed_experts)) - u) for n, u in rec.used.items() if len(u) < cfg.n_routed_experts}
    if unused:
        if verbose:
            print(f"seed {seed}: experts without tokens {unused}; next seed")
        return None
    if rec.min_margin < min_margin:
        return None
    return dict(cfg=cfg, seed=seed, weights=weights0, ids=ids, labels=labels, logits=logits,
                loss=loss.item(), grads=grads, step_losses=step_losses, margin=rec.min_margin)



def write_fixture(path, *, config, seed, generator, notes, fx, step_losses, attrs=()):
    """Writes the dsv3-refcheck fixture layout (read by tools/dsv3-refcheck.c) via path.tmp:
    root attributes (format, config, OPT, steps, seed, then attrs, generator, notes), weights/,
    inputs/, expected/ (logits, loss, grads/, step_losses). fx holds weights, ids, labels,
    logits, loss and grads."""
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = "dsv3-refcheck-fixture 1"
        f.attrs["config"] = config
        for k, v in OPT.items():
            f.attrs[k] = np.float64(v)
        f.attrs["steps"] = np.int32(STEPS)
        f.attrs["seed"] = np.int64(seed)
        for k, v in attrs:
            f.attrs[k] = v
        f.attrs["generator"] = generator
        f.attrs["notes"] = notes
        for n, v in sorted(fx["weights"].items()):
            f.create_dataset(f"weights/{n}", data=v.astype(np.float32))
        f.create_dataset("inputs/input_ids", data=fx["ids"].numpy().astype(np.int32))
        f.create_dataset("inputs/labels", data=fx["labels"].numpy().astype(np.int32))
        f.create_dataset("expected/logits", data=fx["logits"].astype(np.float32))
        f.create_dataset("expected/loss", data=np.float32(fx["loss"]))
        for n, v in sorted(fx["grads"].items()):
            f.create_dataset(f"expected/grads/{n}", data=v.astype(np.float32))
        f.create_dataset("expected/step_losses", data=np.array(step_losses, dtype=np.float32))
    os.replace(tmp, path)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("-o", "--output", default=os.path.join(here, "..", "..", "tests", "fixtures", "hf_tiny.h5"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--min-margin", type=float, default=5e-4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a config field (developer variants, e.g. q_lora_rank=null); not for the "
                         "committed fixture")
    ap.add_argument("--rope", metavar="JSON", help="replace the rope parameters, e.g. '{\"rope_type\": \"default\", "
                                                   "\"rope_theta\": 10000.0}'")
    args = ap.parse_args()
    for kv in args.set:
        k, v = kv.split("=", 1)
        TINY[k] = json.loads(v)
    if args.rope:
        ROPE.clear()
        ROPE.update(json.loads(args.rope))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    fx = None
    for seed in range(args.seed, args.seed + 50):
        fx = build(seed, args.min_margin)
        if fx:
            break
    if not fx:
        raise SystemExit("make_fixture: no seed in 50 gives routing margins above --min-margin")

    # expert names: round trip the per-expert weights through from_pretrained
    cfg = fx["cfg"]
    m_init = DeepseekV3ForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        if fused_experts(m_init):
            I = cfg.moe_intermediate_size
            for n, p in m_init.named_parameters():
                if n.endswith("mlp.experts.gate_up_proj"):
                    base = n[: -len("gate_up_proj")]
                    for e in range(p.shape[0]):
                        p[e, :I] = torch.from_numpy(fx["weights"][f"{base}{e}.gate_proj.weight"])
                        p[e, I:] = torch.from_numpy(fx["weights"][f"{base}{e}.up_proj.weight"])
                elif n.endswith("mlp.experts.down_proj"):
                    base = n[: -len("down_proj")]
                    for e in range(p.shape[0]):
                        p[e] = torch.from_numpy(fx["weights"][f"{base}{e}.down_proj.weight"])
                else:
                    p.copy_(torch.from_numpy(fx["weights"][n]))
        else:
            m_init.load_state_dict({k: torch.from_numpy(v) for k, v in fx["weights"].items()}, strict=False)
        for n, b in m_init.named_buffers():
            if n in fx["weights"]:
                b.copy_(torch.from_numpy(fx["weights"][n]))
    check_expert_names(m_init, fx["weights"])
    with torch.no_grad():
        lg = m_init(input_ids=fx["ids"]).logits.float().numpy()
    if not np.array_equal(lg, fx["logits"]):
        raise SystemExit("make_fixture: the written weights do not reproduce the expected logits")

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_fixture(args.output, config=cfg.to_json_string(use_diff=False), seed=fx["seed"], fx=fx,
                  step_losses=fx["step_losses"],
                  generator=(f"tools/reference/make_fixture.py; torch {torch.__version__}, "
                             f"transformers {transformers.__version__}, h5py {h5py.__version__}"),
                  notes=("labels in HF convention (shifted inside the model, -100 ignored); loss = mean CE over "
                         "counted shifted labels; routed experts under per-expert checkpoint names; "
                         "step_losses[k] = loss after k+1 AdamW steps (torch.optim.AdamW, decay on >=2-D weights "
                         "only, no clipping, router biases fixed buffers); min routing margin "
                         f"{fx['margin']:.3g}"))
    n_par = sum(v.size for v in fx["weights"].values())
    print(f"wrote {args.output}: {len(fx['weights'])} tensors, {n_par} values, "
          f"{os.path.getsize(args.output)} bytes, loss {fx['loss']:.6f}")


if __name__ == "__main__":
    main()
