"""interop_check.py — dsv3's Hugging Face files checked with the real clients
(safetensors, numpy, h5py from the project venv; no torch). Used by
tests/it_hf_interop.sh.

  cmp-hf A B           every tensor of HF dir A has the same dtype, shape and
                       bytes in HF dir B (and B has no other tensors); every file
                       of B opens with safetensors.safe_open
  cmp-fp8 H5 REF       every dequantized FP8 weight of an imported checkpoint
                       equals the reference dequantization bitwise
  adapters DIR N       PEFT adapter dir: N tensors, PEFT key names and shapes,
                       every lora_B non-zero, format metadata
  corrupt KIND SRC DST a copy of HF dir SRC with one defect (see KINDS)
"""
import json
import os
import re
import shutil
import struct
import sys

import numpy as np


def shards(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        return sorted(set(json.load(open(idx))["weight_map"].values()))
    return ["model.safetensors"]


def raw(d):
    out = {}
    for f in shards(d):
        b = open(os.path.join(d, f), "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k != "__metadata__":
                s, e = v["data_offsets"]
                out[k] = (v["dtype"], v["shape"], b[8 + n + s:8 + n + e])
    return out


def cmp_hf(a, b):
    from safetensors import safe_open
    for f in shards(b):
        with safe_open(os.path.join(b, f), "np") as g:
            assert g.metadata() == {"format": "pt"}, f"{f}: metadata {g.metadata()}"
            list(g.keys())
    ta, tb = raw(a), raw(b)
    miss, extra = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
    bad = [k for k in ta if k in tb and ta[k] != tb[k]]
    print(f"{a} vs {b}: {len(ta)} tensors; missing {len(miss)} {miss[:3]}, extra {len(extra)} {extra[:3]}, "
          f"bytes differ {len(bad)} {bad[:3]}")
    return not (miss or extra or bad)


def h5_path(name):
    m = re.match(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(.*)", name)
    if m:
        return "/model/" + (m.group(1) + "." + m.group(3))[6:].replace(".", "/"), int(m.group(2))
    return "/model/" + name[6:].replace(".", "/"), None


def cmp_fp8(h5, ref):
    import h5py
    from safetensors.numpy import load_file
    f, r = h5py.File(h5, "r"), load_file(ref)
    bad = 0
    for k, v in r.items():
        path, e = h5_path(k)
        got = f[path][e] if e is not None else f[path][...]
        if got.dtype != np.float32 or got.shape != v.shape or got.tobytes() != v.astype(np.float32).tobytes():
            bad += 1
            print("differs:", k)
    print(f"{h5}: {len(r)} FP8 weights against the reference dequantization: {bad} differ")
    return bad == 0


def adapters(d, n):
    from safetensors import safe_open
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM", cfg
    r = cfg["r"]
    with safe_open(os.path.join(d, "adapter_model.safetensors"), "np") as g:
        keys = sorted(g.keys())
        assert g.metadata() == {"format": "pt"}, g.metadata()
        assert len(keys) == n, f"{len(keys)} adapter tensors, want {n}"
        for k in keys:
            m = re.match(r"base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+\.lora_([AB])\.weight$", k)
            assert m, f"not a PEFT key: {k}"
            t = g.get_tensor(k)
            assert t.dtype == np.float32 and t.ndim == 2 and t.size > 0, (k, t.dtype, t.shape)
            assert (t.shape[0] if m.group(2) == "A" else t.shape[1]) == r, (k, t.shape)
            if m.group(2) == "B":
                assert np.abs(t).sum() > 0, f"{k} is all zero"
    print(f"{d}: {n} PEFT adapter tensors, r={r}, shapes and names as PEFT writes them, every lora_B non-zero")
    return True


def rewrite(path, header, data):
    """A safetensors file from a header dict and the data buffer, the header padded to 8."""
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


KINDS = ("truncated", "header-length", "overlap", "unknown-dtype", "missing-scale", "shape", "missing", "not-in-index")


def corrupt(kind, src, dst):
    shutil.copytree(src, dst)
    idx_path = os.path.join(dst, "model.safetensors.index.json")
    idx = json.load(open(idx_path)) if os.path.exists(idx_path) else None
    files = shards(dst)
    f = os.path.join(dst, files[0])
    if kind == "truncated":
        os.truncate(f, os.path.getsize(f) - 10)
        return
    if kind == "header-length":
        b = open(f, "rb").read()
        open(f, "wb").write(struct.pack("<Q", len(b)) + b[8:])
        return
    h, data = load(f)
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    if kind == "overlap":
        h[names[1]]["data_offsets"][0] -= 4
        h[names[1]]["data_offsets"][1] -= 4
    elif kind == "unknown-dtype":
        h[names[0]]["dtype"] = "F99"
    elif kind == "shape":  # same bytes, another shape: the config disagrees
        k = next(k for k in names if len(h[k]["shape"]) == 2 and h[k]["shape"][0] != h[k]["shape"][1]
                 and "weight_scale_inv" not in k)
        h[k]["shape"] = h[k]["shape"][::-1]
    elif kind in ("missing", "missing-scale"):
        k = next(k for k in names if ("weight_scale_inv" in k) == (kind == "missing-scale"))
        for fn in files:  # the tensor may sit in another shard
            hh, dd = load(os.path.join(dst, fn))
            if k in hh:
                f, h, data = os.path.join(dst, fn), hh, dd
        s, e = h[k]["data_offsets"]
        del h[k]
        for v in h.values():
            if isinstance(v, dict) and "data_offsets" in v and v["data_offsets"][0] >= e:
                v["data_offsets"] = [v["data_offsets"][0] - (e - s), v["data_offsets"][1] - (e - s)]
        data = data[:s] + data[e:]
        if idx:
            del idx["weight_map"][k]
            json.dump(idx, open(idx_path, "w"))
    elif kind == "not-in-index":
        end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
        h["model.extra.weight"] = {"dtype": "F32", "shape": [2], "data_offsets": [end, end + 8]}
        data = data + b"\0" * 8
    rewrite(f, h, data)


def main():
    cmd = sys.argv[1]
    if cmd == "cmp-hf":
        ok = cmp_hf(sys.argv[2], sys.argv[3])
    elif cmd == "cmp-fp8":
        ok = cmp_fp8(sys.argv[2], sys.argv[3])
    elif cmd == "adapters":
        ok = adapters(sys.argv[2], int(sys.argv[3]))
    elif cmd == "corrupt":
        corrupt(sys.argv[2], sys.argv[3], sys.argv[4])
        ok = True
    else:
        sys.exit(f"unknown command {cmd}")
    sys.exit(0 if ok else 1)



def torch_checks(model_dir, logits_file, base_dir, adapter_dir, lora_logits=None):
    """Optional (torch, transformers, peft installed): transformers loads our
    export with no missing key (the MTP layer's keys are reported as
    unexpected: it does not instantiate it) and gives the expected logits;
    PEFT loads our adapter with warnings as errors."""
    import io
    import logging
    import warnings
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    from safetensors.numpy import load_file
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    transformers.utils.logging.add_handler(h)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    transformers.utils.logging.remove_handler(h)
    report = buf.getvalue()
    missing = [ln for ln in report.splitlines() if "MISSING" in ln or "MISMATCH" in ln]
    assert not missing, missing[:3]
    ex = load_file(logits_file)
    with torch.no_grad():
        lg = m(torch.tensor(ex["input_ids"])).logits.numpy()
    err = float(np.linalg.norm(lg - ex["logits"]) / np.linalg.norm(ex["logits"]))
    assert err < 1e-5, err
    print(f"transformers {transformers.__version__} loads {model_dir}: no missing key, logits rel L2 {err:.2e}")
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, adapter_dir)
    n = sum(1 for k, _ in pm.named_parameters() if "lora_" in k)
    msg = ""
    if lora_logits:  # dsv3's forward of the LoRA checkpoint (dsv3-refcheck --logits --write)
        lx = load_file(lora_logits)
        with torch.no_grad():
            pl = pm(torch.tensor(lx["input_ids"])).logits.numpy()
        e = float(np.linalg.norm(pl - lx["logits"]) / np.linalg.norm(lx["logits"]))
        assert e < 1e-5, f"PEFT's logits differ from dsv3's by {e}"
        msg = f", logits = dsv3's LoRA forward within {e:.2e}"
    print(f"peft loads {adapter_dir} with warnings as errors: {n} LoRA tensors{msg}")
    return True


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "torch":
        sys.exit(0 if torch_checks(*sys.argv[2:7]) else 1)
    main()
