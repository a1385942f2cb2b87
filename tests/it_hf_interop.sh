#!/bin/bash
# Hugging Face interop on the fixtures of tests/fixtures/hf (transformers'
# save_pretrained of a tiny DeepseekV3: BF16 sharded, FP32 unsharded, FP8 with
# 128x128 block scales, some blocks partial and some scales in other shards,
# and a V3.1-style ue8m0 variant):
#   - dsv3-import of each; the FP32 import's logits match transformers' (dsv3-refcheck --logits);
#     the FP8 import equals the reference dequantization bitwise; ue8m0 counts its non-power-of-two scales
#   - HF -> dsv3 -> HF is bitwise for BF16 and FP32 (every tensor's bytes), read by the safetensors package
#   - an import starts a run (run.init_from); bf16 and fp32 storage start the same run bitwise
#   - PEFT adapters exported from a LoRA run: PEFT's names and shapes, nothing empty
#   - under mpirun (np 2, 3): the import's datasets and attributes equal np 1's (h5diff), the
#     exported files equal np 1's byte for byte
#   - bad files: one line, a non-zero exit, no output written
. "$(dirname "$0")/lib.sh"
need_venv safetensors numpy h5py
scratch_dir
FX=tests/fixtures/hf
fails=0
bad() { echo "FAIL  $*"; fails=$((fails + 1)); }
ok() { echo "ok    $*"; }
chk() { "$PY" tests/interop_check.py "$@"; }

echo "== import"
for v in bf16 fp32 fp8 ue8m0; do
    if "$BIN/dsv3-import" -q "$FX/$v" "$OUT/$v.h5" >"$OUT/import-$v.log" 2>&1; then ok "import $v: $(grep -m1 'tensors (' "$OUT/import-$v.log" | cut -c1-160)"
    else bad "import $v"; cat "$OUT/import-$v.log"; fi
done
"$BIN/dsv3-import" -q --dtype bf16 "$FX/bf16" "$OUT/bf16s.h5" >"$OUT/import-bf16s.log" 2>&1 || bad "import bf16 --dtype bf16"
grep -q "stored once" "$OUT/import-bf16.log" && ok "MTP embed_tokens/shared_head.head equal the main ones: stored once" ||
    bad "no MTP stored-once message"
"$BIN/dsv3-refcheck" --logits "$OUT/fp32.h5" "$FX/expected_logits.safetensors" >"$OUT/logits.log" 2>&1 &&
    ok "fp32 import: $(grep 'rel L2' "$OUT/logits.log" | sed 's/^ *//')" || { bad "logits against transformers"; cat "$OUT/logits.log"; }
chk cmp-fp8 "$OUT/fp8.h5" "$FX/fp8/reference_dequant.safetensors" && ok "fp8 import = reference dequantization, bitwise" ||
    bad "fp8 dequantization"
grep -q "2 of 134 scales are not powers of two" "$OUT/import-ue8m0.log" && ok "ue8m0: $(grep 'powers of two' "$OUT/import-ue8m0.log")" ||
    bad "ue8m0 count: $(grep 'powers' "$OUT/import-ue8m0.log")"

echo "== export and round trip"
for p in "bf16 bf16 --max-shard-size=200KB" "fp32 fp32 --dtype=fp32" "bf16s bf16 --max-shard-size=200KB" "fp32 bf16 --max-shard-size=200KB"; do
    set -- $p
    "$BIN/dsv3-export" -q $3 "$OUT/$1.h5" "$OUT/exp-$1-$2" >"$OUT/export.log" 2>&1 || { bad "export $1"; cat "$OUT/export.log"; continue; }
    chk cmp-hf "$FX/$2" "$OUT/exp-$1-$2" && ok "HF $2 -> dsv3 ($1) -> HF: every tensor bitwise ($(ls "$OUT/exp-$1-$2" | grep -c safetensors) shards)" ||
        bad "round trip $1 -> $2"
done

# a flipped byte in a chunk the export streams (bf16 bits as stored): refused, the dataset named
cp "$OUT/bf16s.h5" "$OUT/flip.h5"
DS=/model/layers/1/mlp/experts/down_proj/weight
"$PY" - "$OUT/flip.h5" "$DS" <<'PYEOF'
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    info = f[sys.argv[2]].id.get_chunk_info(1)
with open(sys.argv[1], "r+b") as fh:
    fh.seek(info.byte_offset + 10); b = fh.read(1); fh.seek(info.byte_offset + 10); fh.write(bytes([b[0] ^ 0x20]))
PYEOF
if "$BIN/dsv3-export" -q "$OUT/flip.h5" "$OUT/exp-flip" >"$OUT/flip.log" 2>&1; then bad "export of a corrupted chunk succeeded"
elif grep -q "$DS.*Fletcher32" "$OUT/flip.log" && [ ! -e "$OUT/exp-flip/model.safetensors.index.json" ]; then
    ok "export of a flipped byte in $DS: $(grep -m1 Fletcher32 "$OUT/flip.log" | cut -c1-150)"
else bad "export of a corrupted chunk: $(cat "$OUT/flip.log")"; fi

echo "== under mpirun: the same files at np 2 and 3 as at np 1"
for p in "fp8 --dtype=fp32" "bf16 --dtype=bf16" "ue8m0 --dtype=bf16"; do
    set -- $p
    for np in 2 3; do
        if mpirun -np $np "$BIN/dsv3-import" -q $2 "$FX/$1" "$OUT/$1-np$np.h5" >"$OUT/import-np.log" 2>&1 &&
           "$BIN/dsv3-import" -q $2 "$FX/$1" "$OUT/$1-np1.h5" >/dev/null 2>&1 &&
           h5diff "$OUT/$1-np1.h5" "$OUT/$1-np$np.h5" >"$OUT/h5diff.log" 2>&1; then
            ok "import $1 $2 at np=$np: every dataset and attribute equals the np=1 import (h5diff)"
        else bad "import $1 $2 at np=$np differs from np=1"; tail -5 "$OUT/import-np.log" "$OUT/h5diff.log"; fi
    done
done
"$BIN/dsv3-export" -q --max-shard-size=200KB "$OUT/bf16.h5" "$OUT/xp-np1" >/dev/null 2>&1 || bad "export at np=1"
for np in 2 3; do
    if mpirun -np $np "$BIN/dsv3-export" -q --max-shard-size=200KB "$OUT/bf16.h5" "$OUT/xp-np$np" >"$OUT/export-np.log" 2>&1 &&
       diff -r "$OUT/xp-np1" "$OUT/xp-np$np" >/dev/null; then
        ok "export at np=$np: $(ls "$OUT/xp-np$np" | wc -l) files, each byte-identical to np=1's (cmp)"
    else bad "export at np=$np differs from np=1"; tail -3 "$OUT/export-np.log"; fi
done

echo "== run.init_from an import"
"$BIN/dsv3-import" --print-deck "$FX/bf16" >"$OUT/model.cfg" 2>/dev/null
for v in bf16 bf16s; do
    cat >"$OUT/ft-$v.cfg" <<EOF
@include "model.cfg"
run = { mode = "finetune"; output_dir = "$OUT/run-$v"; init_from = "$OUT/$v.h5"; steps = 3; };
train = { micro_batch = 1; global_batch = 2; seq_len = 32; };
schedule = { warmup_steps = 0; };
data = { format = "text"; train = ({ path = "/usr/share/games/fortunes/science"; weight = 1.0; }); };
EOF
    mpirun -np 2 "$BIN/dsv3" "$OUT/ft-$v.cfg" parallel.expert_parallel=2 >"$OUT/run-$v.log" 2>&1 || { bad "run from $v"; tail -3 "$OUT/run-$v.log"; }
done
if [ -s "$OUT/run-bf16/metrics.csv" ] && cmp -s <(cut -d, -f1-8 "$OUT/run-bf16/metrics.csv") <(cut -d, -f1-8 "$OUT/run-bf16s/metrics.csv"); then
    ok "runs from the fp32 and the bf16 import: bitwise the same curve ($(sed -n 2p "$OUT/run-bf16/metrics.csv" | cut -d, -f1-2))"
else bad "runs from the imports differ or did not run"; fi

echo "== PEFT adapters"
mpirun -np 2 "$BIN/dsv3" input/tiny.cfg run.output_dir="$OUT/lora" run.steps=2 schedule.warmup_steps=0 checkpoint.every=2 \
    parallel.expert_parallel=2 parallel.zero_stage=3 lora.enabled=true 'lora.targets=["self_attn.q_a_proj","self_attn.o_proj"]' \
    run.mode=\"sft\" >"$OUT/lora.log" 2>&1 || { bad "LoRA run"; tail -3 "$OUT/lora.log"; }
if "$BIN/dsv3-export" --adapters "$OUT/lora/checkpoints/step_00000002.h5" "$OUT/adapter" >"$OUT/adapter.log" 2>&1; then
    L=$(sed -n 's/^ *num_hidden_layers = \([0-9]*\);/\1/p' input/models/tiny.cfg)
    chk adapters "$OUT/adapter" $((L * 2 * 2)) && ok "$(cat "$OUT/adapter.log")" || bad "adapter contents"
else bad "adapter export"; cat "$OUT/adapter.log"; fi

echo "== --merge-lora: W + (alpha/r) B*A, the LoRA model's logits without adapters"
CK=$OUT/lora/checkpoints/step_00000002.h5
"$BIN/dsv3-refcheck" --logits "$CK" "$OUT/lora-logits.safetensors" --write >/dev/null 2>&1 || bad "writing the LoRA model's logits"
"$BIN/dsv3-export" -q --merge-lora --dtype fp32 "$CK" "$OUT/merged" >"$OUT/merge.log" 2>&1 &&
    "$BIN/dsv3-import" -q "$OUT/merged" "$OUT/merged.h5" >/dev/null 2>&1 || { bad "merge/import"; cat "$OUT/merge.log"; }
"$BIN/dsv3-export" -q --dtype fp32 "$CK" "$OUT/unmerged" >/dev/null 2>&1 && "$BIN/dsv3-import" -q "$OUT/unmerged" "$OUT/unmerged.h5" >/dev/null 2>&1
if "$BIN/dsv3-refcheck" --logits "$OUT/merged.h5" "$OUT/lora-logits.safetensors" >"$OUT/m.log" 2>&1 &&
   ! "$BIN/dsv3-refcheck" --logits "$OUT/unmerged.h5" "$OUT/lora-logits.safetensors" >"$OUT/u.log" 2>&1; then
    ok "merged export = the LoRA model ($(grep 'rel L2' "$OUT/m.log" | sed 's/^ *//' | cut -c1-40)); the base alone is not ($(grep 'rel L2' "$OUT/u.log" | sed 's/^ *//' | cut -c1-40)); $(grep "adapters merged" "$OUT/merge.log")"
else bad "merged logits"; cat "$OUT/m.log" "$OUT/u.log"; fi

echo "== --merge-lora with per-expert adapters on the routed experts (stacked [E,r,in] in HDF5)"
mpirun -np 2 "$BIN/dsv3" input/tiny.cfg run.output_dir="$OUT/lorae" run.steps=2 schedule.warmup_steps=0 checkpoint.every=2 \
    parallel.expert_parallel=2 parallel.zero_stage=3 lora.enabled=true \
    'lora.targets=["mlp.experts.gate_proj","mlp.experts.down_proj","self_attn.o_proj"]' run.mode=\"sft\" >"$OUT/lorae.log" 2>&1 ||
    { bad "LoRA run with expert targets"; tail -3 "$OUT/lorae.log"; }
CK=$OUT/lorae/checkpoints/step_00000002.h5
"$BIN/dsv3-refcheck" --logits "$CK" "$OUT/lorae-logits.safetensors" --write >/dev/null 2>&1 || bad "writing the expert-LoRA model's logits"
"$BIN/dsv3-export" -q --merge-lora --dtype fp32 "$CK" "$OUT/mergede" >"$OUT/mergee.log" 2>&1 &&
    "$BIN/dsv3-import" -q "$OUT/mergede" "$OUT/mergede.h5" >/dev/null 2>&1 || { bad "merge/import (experts)"; cat "$OUT/mergee.log"; }
"$BIN/dsv3-export" -q --dtype fp32 "$CK" "$OUT/unmergede" >/dev/null 2>&1 && "$BIN/dsv3-import" -q "$OUT/unmergede" "$OUT/unmergede.h5" >/dev/null 2>&1
if "$BIN/dsv3-refcheck" --logits "$OUT/mergede.h5" "$OUT/lorae-logits.safetensors" >"$OUT/me.log" 2>&1 &&
   ! "$BIN/dsv3-refcheck" --logits "$OUT/unmergede.h5" "$OUT/lorae-logits.safetensors" >"$OUT/ue.log" 2>&1; then
    ok "merged export with expert adapters = the LoRA model ($(grep 'rel L2' "$OUT/me.log" | sed 's/^ *//' | cut -c1-40)); the base alone is not ($(grep 'rel L2' "$OUT/ue.log" | sed 's/^ *//' | cut -c1-40)); $(grep "adapters merged" "$OUT/mergee.log")"
else bad "merged logits (experts)"; cat "$OUT/me.log" "$OUT/ue.log"; fi

echo "== optional: transformers and PEFT read our files (a python with torch, transformers and peft: DSV3_TORCH_PYTHON)"
TPY=${DSV3_TORCH_PYTHON:-python3}
if "$TPY" -c "import torch, transformers, peft" 2>/dev/null; then
    "$BIN/dsv3-export" -q --dtype fp32 "$OUT/lora/checkpoints/step_00000002.h5" "$OUT/lora-base" >/dev/null 2>&1
    "$TPY" tests/interop_check.py torch "$OUT/exp-fp32-fp32" "$FX/expected_logits.safetensors" "$OUT/lora-base" \
        "$OUT/adapter" "$OUT/lora-logits.safetensors" 2>"$OUT/torch.err" && ok "transformers and PEFT checks" || { bad "transformers/PEFT"; tail -5 "$OUT/torch.err"; }
else
    echo "note  no torch/transformers/peft in $TPY: the optional load checks did not run"
fi

echo "== bad files: one line, non-zero exit, nothing written"
for kind in truncated header-length overlap unknown-dtype missing-scale shape missing not-in-index; do
    src=$FX/bf16
    case $kind in missing-scale) src=$FX/fp8 ;; esac
    chk corrupt "$kind" "$src" "$OUT/bad-$kind" || { bad "cannot make $kind"; continue; }
    "$BIN/dsv3-import" -q "$OUT/bad-$kind" "$OUT/bad-$kind.h5" >"$OUT/bad-$kind.log" 2>&1
    rc=$?
    n=$(grep -c . "$OUT/bad-$kind.log")
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$n" = 1 ] && [ ! -e "$OUT/bad-$kind.h5" ] && [ ! -e "$OUT/bad-$kind.h5.tmp" ]; then
        ok "$kind: exit $rc: $(cut -c1-170 "$OUT/bad-$kind.log")"
    else bad "$kind: exit $rc, $n lines, output $(ls "$OUT"/bad-$kind.h5* 2>/dev/null)"; cat "$OUT/bad-$kind.log"; fi
done
for kind in truncated missing; do # under mpirun: still one line (rank 0's), non-zero, nothing written
    mpirun -np 2 "$BIN/dsv3-import" -q "$OUT/bad-$kind" "$OUT/bad2-$kind.h5" >"$OUT/bad2-$kind.log" 2>&1
    rc=$?
    n=$(grep -c '^dsv3-import:' "$OUT/bad2-$kind.log")
    if [ $rc -ne 0 ] && [ "$n" = 1 ] && ! ls "$OUT"/bad2-$kind.h5* >/dev/null 2>&1; then ok "$kind at np=2: exit $rc, one line"
    else bad "$kind at np=2: exit $rc, $n lines"; cat "$OUT/bad2-$kind.log"; fi
done
"$BIN/dsv3-import" -q "$FX/nonexistent" "$OUT/x.h5" >"$OUT/none.log" 2>&1 && bad "a missing directory imported" ||
    ok "missing directory: $(cat "$OUT/none.log")"
echo "it_hf_interop: $fails failures"
[ $fails -eq 0 ]
