#!/bin/bash
# LoRA (frozen base, compact trainable-only gradients and AdamW moments, zero.h),
# with LoRA dropout 0.1 (counter-based masks keyed by step and global sample:
# layout-invariant and resumed exactly) and rsLoRA scaling throughout:
#  1. layout invariance: 6 steps at np=1 (EP 1, ZeRO 0), np=2 (EP 2, ZeRO 1),
#     np=4 (EP 2, ZeRO 2), np=4 (EP 4, ZeRO 3): loss columns within 1e-6
#     relative of np=1 (measured ~1e-8)
#  2. exact resume: the step-3 checkpoint of the ZeRO-0 and ZeRO-3 runs resumed
#     to step 6 reproduces rows 4-6 bitwise (all non-timing columns)
#  3. dsv3-export --adapters of every stage's step-6 checkpoint: adapters written
#  4. checkpoint.save = "adapters" on a base given by run.init_from: the files hold
#     the adapters (+ moments, router biases) only, and resuming from the step-3
#     one (on the same base) reproduces rows 4-6 bitwise at ZeRO 0 and 3; every save
#     of a LoRA run also writes a PEFT directory checkpoints/checkpoint-<step> (pruned
#     with its checkpoint by checkpoint.keep), read by the safetensors client; a
#     rank killed (-9) inside the step-6 save leaves latest at step 3, and resuming
#     from it reproduces rows 4-6 bitwise
#  5. dsv3-verify passes on a LoRA run directory and fails, naming the tensor, on
#     doctored copies: an adapter zeroed, one tensor removed, a file truncated
#  4d. per-expert adapters on the routed experts: layout invariance (np 1, 2, 4;
#     ZeRO 0, 1, 3), adapters-only resume bitwise, dsv3-verify and one PEFT key
#     per expert
. "$(dirname "$0")/lib.sh"
need_venv safetensors numpy
scratch_dir
LORA=(input/tiny.cfg run.steps=6 schedule.warmup_steps=0 checkpoint.every=3 checkpoint.keep=0 lora.enabled=true
      'lora.targets=["self_attn.q_a_proj","self_attn.o_proj"]' run.mode=sft lora.dropout=0.1 lora.use_rslora=true)
fail=0
# non-timing columns of rows a..b
rows() { awk -F, -v a="$2" -v b="$3" 'NR>1 && $1>=a && $1<=b {print $1,$2,$3,$4,$5,$6,$7,$8,$10,$11}' "$1"; }

echo "== 1. layout invariance"
for c in "1 1 0" "2 2 1" "4 2 2" "4 4 3"; do
    set -- $c
    d="$OUT/z$3"
    timeout 120 mpirun -np "$1" "$BIN/dsv3" "${LORA[@]}" parallel.expert_parallel="$2" parallel.zero_stage="$3" \
        run.output_dir="$d" >"$d.log" 2>&1 || { echo "FAIL: run np=$1 EP=$2 ZeRO=$3"; tail "$d.log"; fail=1; continue; }
    ratio=$(sed -n 's/.*memory per rank.*ratio \([0-9.]*\).*/\1/p' "$d.log")
    [ "$3" = 0 ] && { echo "np=1 EP=1 ZeRO=0: reference, memory ratio $ratio"; continue; }
    rel=$(awk -F, 'NR==FNR { if (FNR>1) for (k=2;k<=5;k++) b[$1,k]=$k; next }
                   FNR>1 { for (k=2;k<=5;k++) { d=$k-b[$1,k]; if (d<0) d=-d; s=b[$1,k]<0?-b[$1,k]:b[$1,k]; r=s>0?d/s:d; if (r>m) m=r }; n++ }
                   END { if (n!=6) print "rows:" n; else printf "%.3e", m }' "$OUT/z0/metrics.csv" "$d/metrics.csv")
    ok=$(awk -v r="$rel" 'BEGIN { print (r ~ /^[0-9.e+-]+$/ && r+0 <= 1e-6) ? "ok" : "FAIL" }')
    echo "np=$1 EP=$2 ZeRO=$3 vs np=1: loss columns max rel diff $rel, memory ratio $ratio  $ok"
    [ "$ok" = ok ] || fail=1
done

echo "== 2. exact resume from step 3 (ZeRO 0 and 3)"
for c in "1 1 0" "4 4 3"; do
    set -- $c
    d="$OUT/re$3"
    timeout 120 mpirun -np "$1" "$BIN/dsv3" "${LORA[@]}" parallel.expert_parallel="$2" parallel.zero_stage="$3" \
        run.resume="$OUT/z$3/checkpoints/step_00000003.h5" run.output_dir="$d" >"$d.log" 2>&1 ||
        { echo "FAIL: resume np=$1 ZeRO=$3"; tail "$d.log"; fail=1; continue; }
    n=$(rows "$d/metrics.csv" 4 6 | wc -l)
    if [ "$n" -eq 3 ] && diff <(rows "$OUT/z$3/metrics.csv" 4 6) <(rows "$d/metrics.csv" 4 6) >"$OUT/diff"; then
        echo "ZeRO $3: rows 4-6 identical ($n rows)"
    else
        echo "FAIL: ZeRO $3: resumed rows 4-6 differ ($n rows)"; cat "$OUT/diff"; fail=1
    fi
done

echo "== 3. dsv3-export --adapters"
for z in 0 1 2 3; do
    line=$("$BIN/dsv3-export" --adapters "$OUT/z$z/checkpoints/step_00000006.h5" "$OUT/ad$z" 2>&1 | grep 'adapter tensors')
    n=$(echo "$line" | sed -n 's/.*: \([0-9]*\) adapter tensors.*/\1/p')
    if [ -n "$n" ] && [ "$n" -gt 0 ] && [ -s "$OUT/ad$z/adapter_model.safetensors" ]; then echo "ZeRO $z: $line"
    else echo "FAIL: ZeRO $z: no adapters ($line)"; ls "$OUT/ad$z" 2>&1; fail=1; fi
done
echo "== 4. adapters-only checkpoints on an init_from base"
timeout 120 mpirun -np 2 "$BIN/dsv3" input/tiny.cfg run.steps=4 schedule.warmup_steps=0 checkpoint.every=4 \
    parallel.expert_parallel=2 run.output_dir="$OUT/base" >"$OUT/base.log" 2>&1 || { echo "FAIL: base run"; fail=1; }
BASE=$OUT/base/checkpoints/step_00000004.h5
for z in 0 3; do
    A=("${LORA[@]}" checkpoint.save=\"adapters\" run.init_from="$BASE" parallel.expert_parallel=2 parallel.zero_stage=$z)
    timeout 120 mpirun -np 2 "$BIN/dsv3" "${A[@]}" run.output_dir="$OUT/a$z" >"$OUT/a$z.log" 2>&1 &&
    timeout 120 mpirun -np 2 "$BIN/dsv3" "${A[@]}" run.output_dir="$OUT/ar$z" \
        run.resume="$OUT/a$z/checkpoints/step_00000003.h5" >"$OUT/ar$z.log" 2>&1 ||
        { echo "FAIL: adapters runs ZeRO $z"; tail -3 "$OUT/a$z.log" "$OUT/ar$z.log"; fail=1; continue; }
    sa=$(stat -c %s "$OUT/a$z/checkpoints/step_00000003.h5") sb=$(stat -c %s "$BASE")
    n=$(rows "$OUT/ar$z/metrics.csv" 4 6 | wc -l)
    if [ "$n" -eq 3 ] && [ "$sa" -lt $((sb / 4)) ] && diff <(rows "$OUT/a$z/metrics.csv" 4 6) <(rows "$OUT/ar$z/metrics.csv" 4 6) >/dev/null &&
       grep -q "weights from $BASE" "$OUT/ar$z.log"; then
        echo "ZeRO $z: adapters-only file $sa bytes (base $sb); resumed on the base, rows 4-6 identical"
    else echo "FAIL: ZeRO $z adapters-only: $n rows, file $sa bytes (base $sb)"; fail=1; fi
    ck=$OUT/a$z/checkpoints
    if [ -s "$ck/checkpoint-3/adapter_model.safetensors" ] && [ -s "$ck/checkpoint-6/adapter_config.json" ] &&
       "$PY" -c "import sys; from safetensors import safe_open; f = safe_open(sys.argv[1], 'np'); \
assert len(f.keys()) == 12 and all(f.get_tensor(k).size for k in f.keys())" "$ck/checkpoint-6/adapter_model.safetensors" 2>/dev/null; then
        echo "ZeRO $z: PEFT directories checkpoint-3 and checkpoint-6 written (12 tensors)"
    else echo "FAIL: ZeRO $z: PEFT directories missing or wrong: $(ls "$ck")"; fail=1; fi
done
echo "== 4c. kill -9 of one rank during the step-6 adapters-only save (ZeRO 3), then resume from latest"
A=("${LORA[@]}" checkpoint.save=\"adapters\" run.init_from="$BASE" parallel.expert_parallel=2 parallel.zero_stage=3)
d=$OUT/kill
(DSV3_CKPT_SLAB_BYTES=256 timeout 120 mpirun -q -x DSV3_CKPT_SLAB_BYTES -np 2 "$BIN/dsv3" "${A[@]}" run.output_dir="$d" \
    >"$OUT/kill.log" 2>&1; echo $? >"$OUT/kill.rc") &
hit=0
for _ in $(seq 1 3000); do
    if [ -f "$d/checkpoints/step_00000006.h5.tmp" ]; then pkill -9 -f "^$BIN/dsv3 .*run.output_dir=$d" -n && hit=1; break; fi
    [ -f "$OUT/kill.rc" ] && break
    sleep 0.005
done
wait
if [ "$hit" = 1 ]; then
    rm -f "$d"/checkpoints/*.tmp # a killed rank cannot clean up
    lat=$(cat "$d/checkpoints/latest")
    timeout 120 mpirun -np 2 "$BIN/dsv3" "${A[@]}" run.output_dir="$OUT/kill-re" run.resume="$d/checkpoints/$lat" \
        >"$OUT/kill-re.log" 2>&1 || { echo "FAIL: resume after kill -9"; tail -3 "$OUT/kill-re.log"; fail=1; }
    if [ "$lat" = step_00000003.h5 ] && [ ! -e "$d/checkpoints/checkpoint-6" ] && [ "$(rows "$OUT/kill-re/metrics.csv" 4 6 | wc -l)" = 3 ] &&
       diff <(rows "$OUT/a3/metrics.csv" 4 6) <(rows "$OUT/kill-re/metrics.csv" 4 6) >/dev/null; then
        echo "kill -9 in the step-6 save (exit $(cat "$OUT/kill.rc")): latest names $lat, no checkpoint-6 PEFT copy; resumed rows 4-6 identical"
    elif [ "$lat" = step_00000006.h5 ] && [ -s "$d/checkpoints/checkpoint-6/adapter_model.safetensors" ]; then
        # the save committed before the kill landed (saves take milliseconds): step 6 with its PEFT copy,
        # and the resume above from it succeeded
        echo "kill -9 landed after the step-6 save committed: latest names $lat with its PEFT copy, and it resumes"
    elif [ "$lat" = step_00000006.h5 ] && [ ! -e "$d/checkpoints/checkpoint-6/adapter_model.safetensors" ]; then
        # the kill landed between the checkpoint's commit and its PEFT copy (written after it, through
        # a .tmp and a rename): no PEFT file under its final name, and the resume above succeeded
        echo "kill -9 landed between the step-6 commit and its PEFT copy: latest names $lat, no partial PEFT file, and it resumes"
    else echo "FAIL: kill -9: latest '$lat', PEFT dirs: $(ls "$d/checkpoints" | tr '\n' ' '), rows differ or missing"; fail=1; fi
else echo "note: the step-6 save finished before the kill (exit $(cat "$OUT/kill.rc")); nothing to check"; fi
# checkpoint.keep prunes the PEFT copies with their checkpoints
timeout 120 mpirun -np 2 "$BIN/dsv3" "${LORA[@]}" checkpoint.every=2 checkpoint.keep=2 run.output_dir="$OUT/k" \
    parallel.expert_parallel=2 >"$OUT/k.log" 2>&1 || { echo "FAIL: keep run"; fail=1; }
got=$(cd "$OUT/k/checkpoints" && ls -d checkpoint-* | tr '\n' ' ')
[ "$got" = "checkpoint-4 checkpoint-6 " ] && echo "keep=2: PEFT directories $got" || { echo "FAIL: keep=2 left $got"; fail=1; }
echo "== 4b. reshard: the ZeRO-3 adapters-only checkpoint of np 8 (EP 8) resumed at np 4 (EP 4, ZeRO 1)"
A=("${LORA[@]}" checkpoint.save=\"adapters\" run.init_from="$BASE")
timeout 200 mpirun -np 8 "$BIN/dsv3" "${A[@]}" parallel.expert_parallel=8 parallel.zero_stage=3 run.output_dir="$OUT/r8" \
    >"$OUT/r8.log" 2>&1 &&
timeout 200 mpirun -np 4 "$BIN/dsv3" "${A[@]}" parallel.expert_parallel=4 parallel.zero_stage=1 run.output_dir="$OUT/r4" \
    run.resume="$OUT/r8/checkpoints/step_00000003.h5" >"$OUT/r4.log" 2>&1 || { echo "FAIL: reshard runs"; tail -3 "$OUT/r4.log"; fail=1; }
rel=$(awk -F, 'NR==FNR { if (FNR>1) for (k=2;k<=5;k++) b[$1,k]=$k; next }
               FNR>1 { for (k=2;k<=5;k++) { d=$k-b[$1,k]; if (d<0) d=-d; s=b[$1,k]<0?-b[$1,k]:b[$1,k]; r=s>0?d/s:d; if (r>m) m=r }; n++ }
               END { if (n!=3) print "rows:" n; else printf "%.3e", m }' "$OUT/r8/metrics.csv" "$OUT/r4/metrics.csv")
if awk -v r="$rel" 'BEGIN { exit !(r ~ /^[0-9.e+-]+$/ && r+0 <= 1e-6) }'; then echo "np 8 -> 4: steps 4-6 within $rel of the uninterrupted np 8 run"
else echo "FAIL: reshard np 8 -> 4: $rel"; fail=1; fi

echo "== 4d. adapters on the routed experts (per expert, stacked [E,r,in], owned with the expert; no dropout)"
EX=(input/tiny.cfg run.steps=6 schedule.warmup_steps=0 checkpoint.every=3 checkpoint.keep=0 lora.enabled=true run.mode=sft
    'lora.targets=["mlp.experts.gate_proj","mlp.experts.up_proj","mlp.experts.down_proj","self_attn.o_proj"]'
    checkpoint.save=\"adapters\" run.init_from="$BASE")
for c in "1 1 0" "2 2 1" "4 4 3"; do
    set -- $c
    d="$OUT/ex$3"
    timeout 120 mpirun -np "$1" "$BIN/dsv3" "${EX[@]}" parallel.expert_parallel="$2" parallel.zero_stage="$3" \
        run.output_dir="$d" >"$d.log" 2>&1 || { echo "FAIL: expert-LoRA run np=$1 EP=$2 ZeRO=$3"; tail "$d.log"; fail=1; continue; }
    [ "$3" = 0 ] && { echo "np=1: reference"; continue; }
    rel=$(awk -F, 'NR==FNR { if (FNR>1) for (k=2;k<=5;k++) b[$1,k]=$k; next }
                   FNR>1 { for (k=2;k<=5;k++) { d=$k-b[$1,k]; if (d<0) d=-d; s=b[$1,k]<0?-b[$1,k]:b[$1,k]; r=s>0?d/s:d; if (r>m) m=r }; n++ }
                   END { if (n!=6) print "rows:" n; else printf "%.3e", m }' "$OUT/ex0/metrics.csv" "$d/metrics.csv")
    ok=$(awk -v r="$rel" 'BEGIN { print (r ~ /^[0-9.e+-]+$/ && r+0 <= 1e-6) ? "ok" : "FAIL" }')
    echo "np=$1 EP=$2 ZeRO=$3 vs np=1: loss columns max rel diff $rel  $ok"
    [ "$ok" = ok ] || fail=1
done
d=$OUT/exr3
timeout 120 mpirun -np 4 "$BIN/dsv3" "${EX[@]}" parallel.expert_parallel=4 parallel.zero_stage=3 run.output_dir="$d" \
    run.resume="$OUT/ex3/checkpoints/step_00000003.h5" >"$d.log" 2>&1 || { echo "FAIL: expert-LoRA resume"; tail -3 "$d.log"; fail=1; }
if diff <(rows "$OUT/ex3/metrics.csv" 4 6) <(rows "$d/metrics.csv" 4 6) >/dev/null && [ "$(rows "$d/metrics.csv" 4 6 | wc -l)" = 3 ]; then
    echo "ZeRO 3, EP 4: adapters-only resume from step 3, rows 4-6 identical"
else echo "FAIL: expert-LoRA resumed rows differ"; fail=1; fi
if "$BIN/dsv3-verify" "$OUT/ex3" >"$OUT/exv.log" 2>&1 &&
   "$PY" -c "import sys; from safetensors import safe_open; f = safe_open(sys.argv[1], 'np'); k = list(f.keys()); \
assert len(k) == 102 and 'base_model.model.model.layers.2.mlp.experts.7.down_proj.lora_B.weight' in k" \
       "$OUT/ex3/checkpoints/checkpoint-6/adapter_model.safetensors"; then
    echo "$(tail -1 "$OUT/exv.log"); PEFT keys per expert (102: 8 experts x 3 x 2 x 2 MoE layers + o_proj)"
else echo "FAIL: dsv3-verify / PEFT keys of the expert-LoRA run"; cat "$OUT/exv.log"; fail=1; fi

echo "== 5. dsv3-verify"
if "$BIN/dsv3-verify" "$OUT/a3" >"$OUT/verify.log" 2>&1 && [ -s "$OUT/a3/adapter_debug_info.json" ]; then
    echo "$(tail -1 "$OUT/verify.log")"
else echo "FAIL: dsv3-verify on a good run"; cat "$OUT/verify.log"; fail=1; fi
doctor() { # name python-code: a copy of the run with one defect; dsv3-verify must fail naming it
    rm -rf "$OUT/doc-$1"; cp -r "$OUT/a3" "$OUT/doc-$1"
    "$PY" -c "$2" "$OUT/doc-$1/checkpoints" || { echo "FAIL: cannot doctor $1"; fail=1; return; }
    if "$BIN/dsv3-verify" "$OUT/doc-$1" >"$OUT/doc-$1.log" 2>&1; then echo "FAIL: dsv3-verify passed on $1"; fail=1
    else echo "$1: exit $?: $(grep dsv3-verify: "$OUT/doc-$1.log" | grep -v "bitwise equal\|: OK (" | tail -1 | cut -c1-170)"; fi
}
doctor zeroed 'import sys, h5py, numpy as np
f = h5py.File(sys.argv[1] + "/step_00000006.h5", "r+")
d = f["lora/layers/1/self_attn/o_proj/lora_B/weight"]; d[...] = np.zeros(d.shape, np.float32)'
doctor removed 'import sys, json, struct
p = sys.argv[1] + "/checkpoint-3/adapter_model.safetensors"; b = open(p, "rb").read()
n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); data = b[8 + n:]
k = sorted(x for x in h if x != "__metadata__")[0]; s, e = h.pop(k)["data_offsets"]
for v in h.values():
    if isinstance(v, dict) and "data_offsets" in v and v["data_offsets"][0] >= e: v["data_offsets"] = [o - (e - s) for o in v["data_offsets"]]
j = json.dumps(h, separators=(",", ":")).encode(); j += b" " * (-len(j) % 8)
open(p, "wb").write(struct.pack("<Q", len(j)) + j + data[:s] + data[e:])'
doctor truncated 'import os, sys
p = sys.argv[1] + "/checkpoint-6/adapter_model.safetensors"; os.truncate(p, os.path.getsize(p) - 100)'
exit $fail
