#!/usr/bin/env python3
"""make_mtp_fixture.py — an independent reference for multi-token prediction and
the sequence-wise balance loss (dsv3-spec.md §5, §6), for bin/dsv3-refcheck.

Developers only (torch + transformers, like make_fixture.py, whose tiny model,
weight init, routing checks and fixture layout it reuses). transformers has no
MTP, so its equations are written here from the spec, in PyTorch, on top of
transformers' own DeepseekV3DecoderLayer, RMSNorm, embedding and lm_head:

    for depth k = 1..D, position i:
      e_i   = E[t_{i+k}]                                   (shared embedding)
      x_i   = eh_proj [ enorm(e_i) ; hnorm(h^{k-1}_i) ]    (embedding first)
      h^k   = DecoderLayer_{L+k-1}(x)                      (causal, full MoE layer)
      z_i   = lm_head( shared_head.norm(h^k_i) )           (logits of t_{i+k+1})
    h^0 = the main model's final hidden state (after model.norm)
    L   = CE_main + (lambda/D) * sum_k CE_k + L_bal
    L_bal = sum over MoE layers (MTP blocks included) of the mean over sequences of
            alpha * sum_i f_i P_i,  f_i = E/(K T) * #{t : i in TopK(s_t)} (unbiased s, no groups),
            P_i = (1/T) sum_t s_{t,i} / sum_j s_{t,j}

Writes tests/fixtures/hf_tiny_mtp.h5 (or -o): the refcheck layout plus root
attributes mtp_loss_weight and aux_loss_alpha; config num_nextn_predict_layers = D.

    python3 tools/reference/make_mtp_fixture.py [-o tests/fixtures/hf_tiny_mtp.h5] [--depth 2]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixture as mf  # noqa: E402  (the tiny config, init, routing checks, hf_state, fixture layout)

torch, h5py, transformers, hfds = mf.torch, mf.h5py, mf.transformers, mf.hfds
LAMBDA, ALPHA = 0.3, 0.01


class MTP(torch.nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        H = cfg.hidden_size
        self.enorm = hfds.DeepseekV3RMSNorm(H, eps=cfg.rms_norm_eps)
        self.hnorm = hfds.DeepseekV3RMSNorm(H, eps=cfg.rms_norm_eps)
        self.eh_proj = torch.nn.Linear(2 * H, H, bias=False)
        self.block = hfds.DeepseekV3DecoderLayer(cfg, layer_idx)
        self.head_norm = hfds.DeepseekV3RMSNorm(H, eps=cfg.rms_norm_eps)


def ckpt_name(n, L):
    """Parameter name of the wrapper -> checkpoint name."""
    if not n.startswith("mtp."):
        return n
    k, rest = n[4:].split(".", 1)
    layer = L + int(k)
    rest = {"head_norm.weight": "shared_head.norm.weight"}.get(rest, rest)
    rest = rest[len("block."):] if rest.startswith("block.") else rest
    return f"model.layers.{layer}.{rest}"


class Routers:
    """Router logits of every MoE layer call (main and MTP), for the balance loss."""

    def __init__(self, model):
        self.logits = []
        for n, m in model.named_modules():
            if isinstance(m, hfds.DeepseekV3TopkRouter):
                m.register_forward_hook(lambda mod, inp, out: self.logits.append(out[0] if len(out) == 3 else None))

    def balance(self, B, T, E, K):
        total = 0.0
        for lg in self.logits:
            if lg is None:
                raise SystemExit("make_mtp_fixture: this transformers does not return router logits")
            s = torch.sigmoid(lg.float()).view(B, T, E)
            top = s.topk(K, dim=-1)[1]
            f = torch.zeros(B, E).scatter_add_(1, top.view(B, -1), torch.ones(B, T * K)) * (E / (K * T))
            P = (s / s.sum(-1, keepdim=True)).mean(1)
            total = total + (ALPHA * (f * P).sum(-1)).mean()
        self.logits.clear()
        return total


def forward(model, mtp, routers, ids, labels, D):
    """Total loss and the main logits."""
    B, T = ids.shape
    cfg = model.config
    captured = {}

    def grab(mod, args, kwargs):
        captured.update(kwargs)
    h0 = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    hid = model.model(input_ids=ids).last_hidden_state          # after model.norm
    h0.remove()
    logits = model.lm_head(hid)
    tgt = torch.full_like(labels, -100)
    tgt[:, :-1] = labels[:, 1:]                                  # target of position t is labels[t+1]
    ce = lambda z, y: torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]).float(), y.reshape(-1),
                                                        ignore_index=-100)
    loss = ce(logits, tgt)
    kw = {k: captured[k] for k in ("attention_mask", "position_embeddings", "position_ids", "cache_position")
          if k in captured}
    hprev = hid
    for k in range(1, D + 1):
        m = mtp[k - 1]
        ids_k = torch.zeros_like(ids)
        ids_k[:, :T - k] = ids[:, k:]                            # e_i = E[t_{i+k}]
        tgt_k = torch.full_like(tgt, -100)
        tgt_k[:, :T - k] = tgt[:, k:]                            # predicts t_{i+k+1}
        e = model.model.embed_tokens(ids_k)
        x = m.eh_proj(torch.cat([m.enorm(e), m.hnorm(hprev)], -1))
        out = m.block(x, **kw)
        hk = out[0] if isinstance(out, tuple) else out
        z = model.lm_head(m.head_norm(hk))
        if (tgt_k != -100).any():
            loss = loss + LAMBDA / D * ce(z, tgt_k)
        hprev = hk
    loss = loss + routers.balance(B, T, cfg.n_routed_experts, cfg.num_experts_per_tok)
    return loss, logits


def build(seed, D, min_margin):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = mf.make_config()
    model = mf.DeepseekV3ForCausalLM(cfg).to(torch.float32)
    L = cfg.num_hidden_layers
    model.mtp = torch.nn.ModuleList([MTP(cfg, L + k) for k in range(D)])
    model.train()
    mf.init_weights(model, gen)
    V, B, T = cfg.vocab_size, mf.B, mf.T
    ids = torch.randint(2, V, (B, T), generator=gen)
    labels = ids.clone()
    labels[torch.rand(B, T, generator=gen) < 0.2] = -100
    labels[1, T - 3:] = -100
    rec = mf.RouteRecorder(model)
    routers = Routers(model)
    loss, logits = forward(model, model.mtp, routers, ids, labels, D)
    rec.first = False
    loss.backward()
    grads = {ckpt_name(n, L): v for n, v in mf.hf_state(model, grads=True).items()}
    weights = {ckpt_name(n, L): v for n, v in mf.hf_state(model).items()}
    weights0 = {k: v.copy() for k, v in weights.items()}
    decay = [p for p in model.parameters() if p.ndim >= 2]
    nodecay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": mf.OPT["weight_decay"]},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=mf.OPT["lr"], betas=(mf.OPT["beta1"], mf.OPT["beta2"]), eps=mf.OPT["eps"],
                            foreach=False)
    steps = []
    for k in range(mf.STEPS):
        if k > 0:
            model.zero_grad(set_to_none=True)
            forward(model, model.mtp, routers, ids, labels, D)[0].backward()
        opt.step()
        with torch.no_grad():
            steps.append(forward(model, model.mtp, routers, ids, labels, D)[0].item())
    print(f"seed {seed}: loss {loss.item():.6f}, steps {steps}, min routing margin {rec.min_margin:.3g} at {rec.where}")
    if rec.min_margin < min_margin:
        return None
    return dict(cfg=cfg, ids=ids, labels=labels, logits=logits.detach().float().numpy(), loss=loss.item(),
                grads=grads, weights=weights0, steps=steps, seed=seed, margin=rec.min_margin)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("-o", "--output", default=os.path.join(here, "..", "..", "tests", "fixtures", "hf_tiny_mtp.h5"))
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--min-margin", type=float, default=5e-4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    fx = None
    for seed in range(args.seed, args.seed + 50):
        fx = build(seed, args.depth, args.min_margin)
        if fx:
            break
    if not fx:
        raise SystemExit("make_mtp_fixture: no seed in 50 gives routing margins above --min-margin")
    cfgd = json.loads(fx["cfg"].to_json_string(use_diff=False))
    cfgd["num_nextn_predict_layers"] = args.depth
    mf.write_fixture(args.output, config=json.dumps(cfgd), seed=fx["seed"], fx=fx, step_losses=fx["steps"],
                     attrs=[("mtp_loss_weight", np.float64(LAMBDA)), ("aux_loss_alpha", np.float64(ALPHA))],
                     generator=(f"tools/reference/make_mtp_fixture.py; torch {torch.__version__}, "
                                f"transformers {transformers.__version__}, h5py {h5py.__version__}"),
                     notes=(f"MTP depth {args.depth} and the sequence-wise balance loss written from dsv3-spec.md "
                            "§5-§6 on transformers' layers; loss = CE_main + lambda/D sum CE_k + L_bal; "
                            f"min routing margin {fx['margin']:.3g}"))
    print(f"wrote {args.output}: {len(fx['weights'])} tensors, loss {fx['loss']:.6f}")


if __name__ == "__main__":
    main()
