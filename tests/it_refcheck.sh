#!/bin/bash
# The model against Hugging Face transformers: bin/dsv3-refcheck on the committed
# fixture (tests/fixtures/hf_tiny.h5, made by tools/reference/make_fixture.py)
# must pass, and so must tests/fixtures/hf_tiny_mscale.h5 (YaRN mscale !=
# mscale_all_dim) and tests/fixtures/hf_tiny_mtp.h5 (MTP depth 2 and the
# balance loss against tools/reference/make_mtp_fixture.py) and
# tests/fixtures/hf_tiny_lora{,_mlp,_rs,_fp8,_bf16}.h5 (LoRA against PEFT: MLA targets, MLP targets,
# use_rslora, a frozen base stored in fp8 / bf16); a copy with one weight tensor perturbed must fail; a copy
# with a dataset removed must fail with a message naming it.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
FIX=tests/fixtures/hf_tiny.h5
[ -f "$FIX" ] || { echo "FAIL: fixture $FIX is missing (it is committed; regenerate with tools/reference/make_fixture.py)"; exit 1; }
[ -x "$BIN/dsv3-refcheck" ] || { echo "FAIL: $BIN/dsv3-refcheck not built"; exit 1; }

echo "== reference fixture"
"$BIN/dsv3-refcheck" "$FIX" || { echo "FAIL: dsv3-refcheck does not match the reference"; exit 1; }
# YaRN with mscale != mscale_all_dim (the release has them equal, so the main
# fixture cannot tell them apart): the cos/sin attention factor and the softmax
# mscale^2 against transformers
echo "== reference fixture with mscale 0.707, mscale_all_dim 1.3"
"$BIN/dsv3-refcheck" tests/fixtures/hf_tiny_mscale.h5 || { echo "FAIL: the mscale fixture does not match"; exit 1; }

# MTP (depth 2) and the sequence-wise balance loss against an independent
# reference of the spec's equations (tools/reference/make_mtp_fixture.py):
# transformers has neither, so the main fixture turns both off
echo "== MTP depth 2 + balance loss fixture"
"$BIN/dsv3-refcheck" tests/fixtures/hf_tiny_mtp.h5 || { echo "FAIL: the MTP fixture does not match"; exit 1; }

# LoRA (r=4 on the five MLA projections, the base frozen) against PEFT itself
# (tools/reference/make_lora_fixture.py): logits, loss, every LoRA gradient,
# no gradient for the base, 3 AdamW steps over the adapters
echo "== PEFT LoRA fixture"
"$BIN/dsv3-refcheck" tests/fixtures/hf_tiny_lora.h5 || { echo "FAIL: the PEFT LoRA fixture does not match"; exit 1; }
# and on the dense MLP, the shared experts' MLP and o_proj (hf_tiny_lora_mlp.h5; PEFT's
# transformers-5 rewrite of deepseek_v3 MLP targets to the fused experts is off there)
echo "== PEFT LoRA fixture, MLP targets"
"$BIN/dsv3-refcheck" tests/fixtures/hf_tiny_lora_mlp.h5 || { echo "FAIL: the PEFT LoRA MLP fixture does not match"; exit 1; }
# and with use_rslora (scaling alpha/sqrt(r) = 4 where alpha/r = 2): hf_tiny_lora_rs.h5
echo "== PEFT LoRA fixture, use_rslora"
"$BIN/dsv3-refcheck" tests/fixtures/hf_tiny_lora_rs.h5 || { echo "FAIL: the PEFT rsLoRA fixture does not match"; exit 1; }

# and on a frozen base stored narrow (train.base_dtype, make_lora_fixture.py --base-dtype):
# the reference computes with the base quantized by DeepSeek's FP8 recipe (or rounded to bf16)
# and dequantized to fp32; dsv3 holds it as e4m3 bytes + 128x128 scales (bf16) and must match
# to the same fp32 tolerances, having requantized the fixture's values exactly
for bd in fp8 bf16; do
    echo "== PEFT LoRA fixture, base_dtype $bd"
    out=$("$BIN/dsv3-refcheck" tests/fixtures/hf_tiny_lora_$bd.h5 2>&1)
    rc=$?
    echo "$out"
    echo "$out" | grep -q "base_dtype $bd: 30 frozen linear weights held in it" ||
        { echo "FAIL: the $bd fixture did not run with its base stored in $bd"; exit 1; }
    [ $rc -eq 0 ] || { echo "FAIL: the PEFT LoRA fixture with base_dtype $bd does not match"; exit 1; }
done

PY=${DSV3_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=/usr/bin/python3
if ! "$PY" -c 'import h5py, numpy' 2>/dev/null; then
    echo "SKIP: the negative checks did not run: $PY has no h5py/numpy (make deps)"
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== one weight perturbed by 1% must fail"
cp "$FIX" "$TMP/perturbed.h5"
"$PY" - "$TMP/perturbed.h5" <<'EOF' || exit 1
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    d = f["weights/model.layers.1.self_attn.kv_b_proj.weight"]
    d[...] = d[...] * 1.01
EOF
"$BIN/dsv3-refcheck" "$TMP/perturbed.h5" >"$TMP/perturbed.log" 2>&1
rc=$?
cat "$TMP/perturbed.log"
[ $rc -eq 1 ] || { echo "FAIL: perturbed weight: exit $rc, expected 1"; exit 1; }
grep -q 'FAIL$' "$TMP/perturbed.log" || { echo "FAIL: perturbed weight: no failing comparison reported"; exit 1; }

echo "== a base weight off the fp8 grid (the stored base cannot hold it) must fail"
cp tests/fixtures/hf_tiny_lora_fp8.h5 "$TMP/fp8off.h5"
"$PY" - "$TMP/fp8off.h5" <<'EOF' || exit 1
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    d = f["weights/model.layers.1.self_attn.kv_b_proj.weight"]
    d[...] = d[...] * 1.01
EOF
"$BIN/dsv3-refcheck" "$TMP/fp8off.h5" >"$TMP/fp8off.log" 2>&1
rc=$?
grep 'base_dtype' "$TMP/fp8off.log"
[ $rc -eq 1 ] || { echo "FAIL: fp8 base off its grid: exit $rc, expected 1"; exit 1; }

echo "== a missing dataset must be named"
cp "$FIX" "$TMP/missing.h5"
"$PY" - "$TMP/missing.h5" <<'EOF' || exit 1
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    del f["weights/model.layers.2.mlp.experts.5.up_proj.weight"]
EOF
"$BIN/dsv3-refcheck" "$TMP/missing.h5" >"$TMP/missing.log" 2>&1
rc=$?
cat "$TMP/missing.log"
[ $rc -eq 1 ] || { echo "FAIL: missing dataset: exit $rc, expected 1"; exit 1; }
grep -q 'missing dataset /weights/model.layers.2.mlp.experts.5.up_proj.weight' "$TMP/missing.log" ||
    { echo "FAIL: missing dataset not named"; exit 1; }

echo "== a wrongly shaped dataset must be named"
cp "$FIX" "$TMP/shape.h5"
"$PY" - "$TMP/shape.h5" <<'EOF' || exit 1
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    del f["expected/logits"]
    f["expected/logits"] = np.zeros((1, 2, 3), np.float32)
EOF
"$BIN/dsv3-refcheck" "$TMP/shape.h5" >"$TMP/shape.log" 2>&1
rc=$?
cat "$TMP/shape.log"
[ $rc -eq 1 ] || { echo "FAIL: wrong shape: exit $rc, expected 1"; exit 1; }
grep -q 'dataset /expected/logits has shape \[1,2,3\]' "$TMP/shape.log" || { echo "FAIL: wrong shape not named"; exit 1; }
echo "PASS"
