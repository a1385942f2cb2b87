#!/bin/bash
# LoRA on a frozen base stored narrow (train.base_dtype, issue 14; dsv3-import --keep-fp8, issue 12):
#  1. base_dtype fp8 on input/tiny.cfg at np 1 (ZeRO 0) and np 2 (EP 2, ZeRO 0, 1, 2, 3): finite, falling loss; loss columns of np 2 within 1e-6 relative of np 1; every
#     memory category equal to the plan on every rank; the frozen store is <= 0.26 of the
#     frozen weights' fp32 bytes (bf16: <= 0.51), and the params category shrinks by exactly
#     the fp32 bytes minus the store
#  2. resume from step 3 reproduces rows 4-6 bitwise (np 1 ZeRO 0, np 2 ZeRO 3); reshard
#     np 1 -> np 2 EP 2 ZeRO 3 within 1e-6 relative; checkpoint.save = "adapters" on an fp8 base
#     from run.init_from resumes bitwise
#  3. h5py: the checkpoint holds the frozen linears as uint8 e4m3 bytes (dtype attribute
#     float8_e4m3fn) + f32 weight_scale_inv of [ceil(out/128), ceil(in/128)] (experts [E, ., .]),
#     identical in the step-3 and step-6 files and across layouts (the base is frozen);
#     norms, embeddings, head, router stay f32; bf16: the 2-byte float type; dsv3-verify passes
#  4. dsv3-import --keep-fp8 of the FP8 HF fixture: bytes and scales as in the safetensors
#     files; LoRA on it with base_dtype fp8 gives bitwise the curve of LoRA on the
#     dequantizing (fp32) import with base_dtype fp32 (same weights, same GEMMs)
#     the dequantizing import quantized on load into an fp8 base holds the release's bytes and
#     scales again; the FP8 import loaded into a bf16 base holds bf16(e4m3 x scale)
#  5. refusals, one line each: base_dtype fp8 without LoRA; an FP8 checkpoint into a base_dtype
#     fp32 run; an fp8 weight whose weight_scale_inv is missing; train.embed_dtype bf16 with MTP
#  1b. parallel.frozen = "sharded" at ZeRO 3 (one node) gives the resident curve bitwise;
#     train.embed_dtype = "bf16": allocation = plan, finite falling loss
. "$(dirname "$0")/lib.sh"
need_venv h5py numpy
scratch_dir
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
LORA=(input/tiny.cfg run.steps=6 schedule.warmup_steps=0 checkpoint.every=3 checkpoint.keep=0 lora.enabled=true
      'lora.targets=["self_attn.q_a_proj","self_attn.o_proj","mlp.experts.gate_proj"]' run.mode=sft)
rows() { awk -F, -v a="$2" -v b="$3" 'NR>1 && $1>=a && $1<=b {print $1,$2,$3,$4,$5,$6,$7,$8,$10,$11}' "$1"; }
relmax() { # max relative difference of the loss columns 2-5 of two metrics files, rows 1..n
    awk -F, 'NR==FNR { if (FNR>1) for (k=2;k<=5;k++) b[$1,k]=$k; next }
             FNR>1 && ($1,2) in b { for (k=2;k<=5;k++) { d=$k-b[$1,k]; if (d<0) d=-d; s=b[$1,k]<0?-b[$1,k]:b[$1,k]; r=s>0?d/s:d; if (r>m) m=r }; n++ }
             END { printf "%.3e %d", m, n }' "$1" "$2"
}

echo "== 1. base_dtype fp8: layouts, loss, memory"
for c in "1 1 0" "2 2 0" "2 2 1" "2 2 2" "2 2 3"; do
    set -- $c
    d="$OUT/f$1$3"
    timeout 200 mpirun -np "$1" "$BIN/dsv3" "${LORA[@]}" train.base_dtype=fp8 parallel.frozen=resident parallel.expert_parallel="$2" \
        parallel.zero_stage="$3" run.output_dir="$d" >"$d.log" 2>&1 || { bad "run np=$1 ZeRO=$3"; tail -3 "$d.log"; continue; }
    grep -q "every category equal to the plan on $1 of $1 ranks" "$d.log" || { bad "np=$1 ZeRO=$3: memory differs from the plan"; grep 'dsv3: memory' "$d.log"; }
    first=$(awk -F, 'NR==2 {print $2}' "$d/metrics.csv"); last=$(awk -F, 'NR==7 {print $2}' "$d/metrics.csv")
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(a == a + 0 && b == b + 0 && b < a) }' &&
        ok "np=$1 EP=$2 ZeRO=$3: loss $first -> $last (finite, falling)" || bad "np=$1 ZeRO=$3: loss $first -> $last"
    if [ "$1" != 1 ]; then
        set -- $(relmax "$OUT/f10/metrics.csv" "$d/metrics.csv") "$@"
        awk -v r="$1" -v n="$2" 'BEGIN { exit !(n == 6 && r <= 1e-6) }' && ok "  vs np=1: loss columns max rel diff $1" ||
            bad "  vs np=1: max rel diff $1 over $2 rows"
    fi
done
line=$(grep 'frozen store' "$OUT/f10.log")
echo "  $line"
r=$(echo "$line" | sed -n 's/.*(\([0-9.]*\) of it).*/\1/p')
awk -v r="$r" 'BEGIN { exit !(r > 0.24 && r <= 0.26) }' && ok "fp8 frozen store = $r of the fp32 frozen weights" || bad "fp8 store ratio '$r'"
# the params category: fp32 base minus fp8 base = fp32 frozen bytes - store (exactly, in bytes, from the plans)
timeout 200 mpirun -np 1 "$BIN/dsv3" "${LORA[@]}" run.steps=1 checkpoint.every=0 run.output_dir="$OUT/p32" >"$OUT/p32.log" 2>&1 || bad "fp32 base run"
timeout 200 mpirun -np 1 "$BIN/dsv3" "${LORA[@]}" run.steps=1 checkpoint.every=0 train.base_dtype=bf16 parallel.frozen=resident run.output_dir="$OUT/p16" >"$OUT/p16.log" 2>&1 || bad "bf16 base run"
grep -q "every category equal to the plan on 1 of 1 ranks" "$OUT/p16.log" || bad "bf16: memory differs from the plan"
p32=$(sed -n 's/.*allocated: params \([0-9.]*\) .*/\1/p' "$OUT/p32.log"); p8=$(sed -n 's/.*allocated: params \([0-9.]*\) .*/\1/p' "$OUT/f10.log")
f32b=$(echo "$line" | sed -n 's/.*weights, \([0-9]*\) bytes at fp32.*/\1/p'); st8=$(echo "$line" | sed -n 's/.*: \([0-9]*\) bytes for.*/\1/p')
awk -v a="$p32" -v b="$p8" -v f="$f32b" -v s="$st8" 'BEGIN { d = (a - b) * 1048576; e = f - s; exit !(d > e - 0.011 * 1048576 && d < e + 0.011 * 1048576) }' &&
    ok "params allocated: fp32 base $p32 MiB, fp8 base $p8 MiB (difference = fp32 frozen bytes - store, to the printed 0.01 MiB)" ||
    bad "params fp32 $p32 vs fp8 $p8 MiB, frozen $f32b, store $st8"
r16=$(sed -n 's/.*frozen store.*(\([0-9.]*\) of it).*/\1/p' "$OUT/p16.log")
awk -v r="$r16" 'BEGIN { exit !(r > 0.49 && r <= 0.51) }' && ok "bf16 frozen store = $r16 of the fp32 frozen weights" || bad "bf16 store ratio '$r16'"

# parallel.frozen = "sharded" at ZeRO 3 on one node: the store's non-expert part sharded over the ranks
# (the world is the node: one copy its ranks share, each allocating its share), the same curve as resident
d="$OUT/s23"
timeout 200 mpirun -np 2 "$BIN/dsv3" "${LORA[@]}" train.base_dtype=fp8 parallel.frozen=sharded parallel.expert_parallel=2 \
    parallel.zero_stage=3 run.output_dir="$d" >"$d.log" 2>&1 || { bad "run sharded ZeRO 3"; tail -3 "$d.log"; }
grep -q "every category equal to the plan on 2 of 2 ranks" "$d.log" && ok "sharded ZeRO 3: every category equal to the plan" ||
    { bad "sharded ZeRO 3: memory differs from the plan"; grep 'dsv3: memory' "$d.log"; }
cmp -s <(cut -d, -f1-4 "$OUT/f23/metrics.csv") <(cut -d, -f1-4 "$d/metrics.csv") &&
    ok "parallel.frozen sharded = resident at np 2 ZeRO 3: loss columns bitwise" || bad "sharded and resident curves differ"
# train.embed_dtype = "bf16": the frozen embedding and lm_head in the node-shared store in bf16 (no MTP)
d="$OUT/e23"
timeout 200 mpirun -np 2 "$BIN/dsv3" "${LORA[@]}" train.base_dtype=fp8 train.embed_dtype=bf16 model.num_nextn_predict_layers=0 \
    parallel.frozen=resident parallel.expert_parallel=2 parallel.zero_stage=3 run.output_dir="$d" >"$d.log" 2>&1 || { bad "run embed_dtype bf16"; tail -3 "$d.log"; }
grep -q "every category equal to the plan on 2 of 2 ranks" "$d.log" && ok "embed_dtype bf16: every category equal to the plan" ||
    { bad "embed_dtype bf16: memory differs from the plan"; grep 'dsv3: memory' "$d.log"; }
first=$(awk -F, 'NR==2 {print $2}' "$d/metrics.csv"); last=$(awk -F, 'NR==7 {print $2}' "$d/metrics.csv")
awk -v a="$first" -v b="$last" 'BEGIN { exit !(a == a + 0 && b == b + 0 && b < a) }' &&
    ok "embed_dtype bf16: loss $first -> $last (finite, falling)" || bad "embed_dtype bf16: loss $first -> $last"

echo "== 2. resume and reshard"
for c in "1 1 0 f10" "2 2 3 f23" "2 2 3 f10"; do
    set -- $c
    d="$OUT/re$1$3$4"
    timeout 200 mpirun -np "$1" "$BIN/dsv3" "${LORA[@]}" train.base_dtype=fp8 parallel.frozen=resident parallel.expert_parallel="$2" parallel.zero_stage="$3" \
        run.resume="$OUT/$4/checkpoints/step_00000003.h5" run.output_dir="$d" >"$d.log" 2>&1 || { bad "resume $c"; tail -3 "$d.log"; continue; }
    if [ "$4" = "f$1$3" ]; then
        if [ "$(rows "$d/metrics.csv" 4 6 | wc -l)" = 3 ] && diff <(rows "$OUT/$4/metrics.csv" 4 6) <(rows "$d/metrics.csv" 4 6) >/dev/null; then
            ok "np=$1 ZeRO=$3: resumed rows 4-6 bitwise"
        else bad "np=$1 ZeRO=$3: resumed rows 4-6 differ"; fi
    else
        set -- $(relmax "$OUT/$4/metrics.csv" "$d/metrics.csv") "$@"
        awk -v r="$1" -v n="$2" 'BEGIN { exit !(n == 3 && r <= 1e-6) }' && ok "reshard np=1 -> np=2 EP=2 ZeRO=3: rows 4-6 within $1" ||
            bad "reshard: max rel diff $1 over $2 rows"
    fi
done

# the SFT recipe's layout: checkpoint.save = "adapters" on an fp8 base given by run.init_from
AD=("${LORA[@]}" train.base_dtype=fp8 parallel.frozen=resident checkpoint.save=adapters run.init_from="$OUT/f10/checkpoints/step_00000006.h5"
    parallel.expert_parallel=2 parallel.zero_stage=3)
timeout 200 mpirun -np 2 "$BIN/dsv3" "${AD[@]}" run.output_dir="$OUT/ad1" >"$OUT/ad1.log" 2>&1 || { bad "adapters-only run"; tail -3 "$OUT/ad1.log"; }
timeout 200 mpirun -np 2 "$BIN/dsv3" "${AD[@]}" run.resume="$OUT/ad1/checkpoints/step_00000003.h5" run.output_dir="$OUT/ad2" \
    >"$OUT/ad2.log" 2>&1 || { bad "adapters-only resume"; tail -3 "$OUT/ad2.log"; }
if [ "$(rows "$OUT/ad2/metrics.csv" 4 6 | wc -l)" = 3 ] && diff <(rows "$OUT/ad1/metrics.csv" 4 6) <(rows "$OUT/ad2/metrics.csv" 4 6) >/dev/null; then
    ok "checkpoint.save = adapters on an fp8 base (run.init_from): resumed rows 4-6 bitwise"
else bad "adapters-only resume on an fp8 base differs"; fi

echo "== 3. the stored precision in the checkpoints"
timeout 200 mpirun -np 1 "$BIN/dsv3" "${LORA[@]}" run.steps=3 train.base_dtype=bf16 parallel.frozen=resident run.output_dir="$OUT/b16" >"$OUT/b16.log" 2>&1 || bad "bf16 run"
"$PY" - "$OUT" <<'EOF' && ok "h5py: e4m3 bytes + f32 weight_scale_inv (bf16: 2-byte floats); frozen bytes equal across steps and layouts" || bad "checkpoint contents"
import sys, h5py, numpy as np
out = sys.argv[1]
a = h5py.File(f"{out}/f10/checkpoints/step_00000003.h5", "r")
b = h5py.File(f"{out}/f10/checkpoints/step_00000006.h5", "r")
c = h5py.File(f"{out}/f23/checkpoints/step_00000006.h5", "r")
h = h5py.File(f"{out}/b16/checkpoints/step_00000003.h5", "r")
n8 = 0
def visit(name, obj):
    global n8
    if not isinstance(obj, h5py.Dataset) or not name.startswith("model/"): return
    if obj.dtype == np.uint8:
        assert obj.attrs["dtype"] in (b"float8_e4m3fn", "float8_e4m3fn"), name
        s = a[name + "_scale_inv"]
        out_, in_ = obj.shape[-2:]
        want = ((out_ + 127) // 128, (in_ + 127) // 128)
        assert s.dtype == np.float32 and s.shape[-2:] == want and s.shape[:-2] == obj.shape[:-2], (name, s.shape)
        sc = s[()]
        assert np.all(np.isfinite(sc)) and np.all(sc > 0), name
        q = obj[()]
        assert not np.any((q & 0x7F) == 0x7F), name + ": NaN codes"
        for f in (b, c):
            assert np.array_equal(f[name][()], q) and np.array_equal(f[name + "_scale_inv"][()], sc), name + " changed"
        hb = h[name]
        assert hb.id.get_type().get_size() == 2 and hb.shape == obj.shape, name  # h5py reads the bf16 type as float32
        v = hb[()].astype(np.float32).view(np.uint32)
        assert not np.any(v & 0xFFFF), name + ": bf16 values carry more than 16 bits"
        n8 += 1
    elif not name.endswith("_scale_inv"):
        assert obj.dtype == np.float32, name
        assert h[name].dtype == np.float32 and h[name].id.get_type().get_size() == 4, name
a.visititems(visit)
for want in ("model/layers/0/self_attn/q_a_proj/weight", "model/layers/1/mlp/experts/down_proj/weight",
             "model/layers/0/mlp/down_proj/weight"):
    assert a[want].dtype == np.uint8, want
for f32 in ("model/embed_tokens/weight", "model/lm_head/weight", "model/layers/1/mlp/gate/weight",
            "model/layers/0/input_layernorm/weight"):
    assert a[f32].dtype == np.float32, f32
print(f"  {n8} frozen linear weights as e4m3 bytes")
EOF
"$BIN/dsv3-verify" "$OUT/f23" >"$OUT/verify.log" 2>&1 && ok "dsv3-verify on the fp8-base run: $(tail -1 "$OUT/verify.log")" ||
    { bad "dsv3-verify on the fp8-base run"; tail -3 "$OUT/verify.log"; }

echo "== 4. dsv3-import --keep-fp8"
FX=tests/fixtures/hf
"$BIN/dsv3-import" -q --keep-fp8 "$FX/fp8" "$OUT/k8.h5" >"$OUT/k8.log" 2>&1 || { bad "import --keep-fp8"; cat "$OUT/k8.log"; }
"$BIN/dsv3-import" -q "$FX/fp8" "$OUT/f32.h5" >/dev/null 2>&1 || bad "import (dequantizing)"
grep 'keep-fp8' "$OUT/k8.log"
# under mpirun the ranks share the units and write collectively: the same file
mpirun -np 2 "$BIN/dsv3-import" -q --keep-fp8 "$FX/fp8" "$OUT/k8np2.h5" >"$OUT/k8np2.log" 2>&1 &&
    h5diff "$OUT/k8.h5" "$OUT/k8np2.h5" >"$OUT/k8diff.log" 2>&1 &&
    ok "--keep-fp8 under mpirun -np 2: h5diff equal to the one-process import" || { bad "--keep-fp8 at np 2"; cat "$OUT/k8np2.log" "$OUT/k8diff.log"; }
"$PY" - "$OUT/k8.h5" "$FX/fp8" <<'EOF' && ok "--keep-fp8: every F8_E4M3 weight's bytes and F32 scales as in the safetensors files" || bad "--keep-fp8 contents"
import sys, glob, json, struct, re, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
src = {}
for p in glob.glob(sys.argv[2] + "/model-*.safetensors"):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; hd = json.loads(b[8:8 + n])
    for k, v in hd.items():
        if k != "__metadata__": s, e = v["data_offsets"]; src[k] = (v["dtype"], v["shape"], b[8 + n + s:8 + n + e])
n = 0
for k, (dt, sh, by) in src.items():
    if dt != "F8_E4M3": continue
    m = re.match(r"model\.(layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight$", k)
    path = "model/" + (m.group(1).replace(".", "/") + "/" + m.group(3) + "/weight" if m else k[6:].replace(".", "/"))
    if f[path].dtype != np.uint8: continue  # a weight the base keeps in float (none here)
    q = f[path][int(m.group(2))] if m else f[path][()]
    s = f[path + "_scale_inv"][int(m.group(2))] if m else f[path + "_scale_inv"][()]
    sdt, ssh, sby = src[k + "_scale_inv"]
    assert np.array_equal(q, np.frombuffer(by, np.uint8).reshape(sh)), k
    assert sdt == "F32" and np.array_equal(s, np.frombuffer(sby, np.float32).reshape(ssh)), k
    n += 1
assert n == 68, n
print(f"  {n} FP8 weights compared")
EOF
"$BIN/dsv3-import" --print-deck "$FX/fp8" >"$OUT/model.cfg" 2>/dev/null
for v in k8 f32; do
    bd=fp8 fr=resident; [ $v = f32 ] && bd=fp32 fr=sharded
    cat >"$OUT/ft-$v.cfg" <<EOF
@include "model.cfg"
run = { mode = "sft"; output_dir = "$OUT/run-$v"; init_from = "$OUT/$v.h5"; steps = 3; };
train = { micro_batch = 1; global_batch = 2; seq_len = 32; base_dtype = "$bd"; };
parallel = { frozen = "$fr"; };
schedule = { warmup_steps = 0; };
lora = { enabled = true; targets = ["self_attn.q_a_proj", "self_attn.o_proj", "mlp.experts.gate_proj"]; };
data = { format = "text"; train = ({ path = "/usr/share/games/fortunes/science"; weight = 1.0; }); };
EOF
    timeout 200 mpirun -np 2 "$BIN/dsv3" "$OUT/ft-$v.cfg" parallel.expert_parallel=2 parallel.zero_stage=3 >"$OUT/run-$v.log" 2>&1 ||
        { bad "LoRA run on the $v import"; tail -3 "$OUT/run-$v.log"; }
done
if [ -s "$OUT/run-k8/metrics.csv" ] && cmp -s <(cut -d, -f1-8 "$OUT/run-k8/metrics.csv") <(cut -d, -f1-8 "$OUT/run-f32/metrics.csv"); then
    ok "LoRA on the FP8 base (--keep-fp8, base_dtype fp8) = LoRA on the dequantized import (fp32): bitwise ($(sed -n 4p "$OUT/run-k8/metrics.csv" | cut -d, -f1-2))"
else bad "LoRA on the FP8 base differs from the dequantized import"; fi

# the other load paths of the store: the dequantizing (fp32) import quantized on load into an fp8 base
# gives back the release's bytes and scales; the fp8 import into a bf16 base is bf16(e4m3 * scale)
for c in "f32 fp8" "k8 bf16"; do
    set -- $c
    timeout 200 mpirun -np 2 "$BIN/dsv3" "$OUT/ft-$1.cfg" parallel.expert_parallel=2 train.base_dtype=$2 parallel.frozen=resident run.steps=1 \
        checkpoint.every=1 run.output_dir="$OUT/ld-$1-$2" >"$OUT/ld-$1-$2.log" 2>&1 || { bad "$1 import into a $2 base"; tail -3 "$OUT/ld-$1-$2.log"; }
done
"$PY" - "$OUT" <<'EOF' && ok "f32 import quantized on load = the release's FP8 bytes and scales; FP8 into bf16 = bf16(e4m3 x scale)" || bad "load paths"
import sys, h5py, numpy as np
out = sys.argv[1]
k8 = h5py.File(f"{out}/k8.h5", "r")
a = h5py.File(f"{out}/ld-f32-fp8/checkpoints/step_00000001.h5", "r")
b = h5py.File(f"{out}/ld-k8-bf16/checkpoints/step_00000001.h5", "r")
lut = np.zeros(256, np.float32)
for v in range(256):
    s, e, m = v >> 7, (v >> 3) & 15, v & 7
    x = np.nan if (e == 15 and m == 7) else (m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    lut[v] = -x if s else x
def bf16(x):  # round to nearest even on the fp32 bits
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)
n = 0
def visit(name, obj):
    global n
    if not isinstance(obj, h5py.Dataset) or obj.dtype != np.uint8: return
    q, s = obj[()], k8[name + "_scale_inv"][()]
    assert np.array_equal(a[name][()], q) and np.array_equal(a[name + "_scale_inv"][()], s), name
    sc = np.repeat(np.repeat(s, 128, axis=-2)[..., :q.shape[-2], :], 128, axis=-1)[..., :q.shape[-1]]
    deq = (lut[q] * sc).astype(np.float32)
    assert np.array_equal(b[name][()], bf16(deq)), name
    n += 1
k8.visititems(visit)
assert n == 41, n
print(f"  {n} weights")
EOF

echo "== 5. refusals"
msg=$("$BIN/dsv3" --check input/tiny.cfg train.base_dtype=fp8 parallel.frozen=resident 2>&1) && bad "base_dtype fp8 without LoRA accepted" ||
    { [ "$(echo "$msg" | wc -l)" = 1 ] && echo "$msg" | grep -q "train.base_dtype" && ok "without LoRA: $msg" || bad "refusal: $msg"; }
msg=$(timeout 100 mpirun -np 2 "$BIN/dsv3" "${LORA[@]}" run.steps=1 parallel.expert_parallel=2 \
      run.init_from="$OUT/f10/checkpoints/step_00000003.h5" run.output_dir="$OUT/no" 2>&1) && bad "FP8 checkpoint into an fp32 base accepted" ||
    { echo "$msg" | grep -q "FP8 bytes" && ok "FP8 checkpoint into base_dtype fp32: $(echo "$msg" | grep -m1 'FP8 bytes')" || { bad "refusal"; echo "$msg" | tail -3; }; }
msg=$("$BIN/dsv3" --check "${LORA[@]}" train.embed_dtype=bf16 2>&1) &&
    bad "embed_dtype bf16 with MTP accepted" ||
    { echo "$msg" | grep -q 'train.embed_dtype = "bf16" with model.num_nextn_predict_layers = 1: not implemented' &&
      ok "embed_dtype bf16 with MTP: $(echo "$msg" | head -1)" || { bad "embed_dtype/MTP refusal"; echo "$msg" | tail -3; }; }
cp "$OUT/f10/checkpoints/step_00000003.h5" "$OUT/noscale.h5"
"$PY" -c 'import sys, h5py; del h5py.File(sys.argv[1], "r+")["model/layers/1/mlp/experts/up_proj/weight_scale_inv"]' "$OUT/noscale.h5"
msg=$(timeout 100 mpirun -np 2 "$BIN/dsv3" "${LORA[@]}" run.steps=1 parallel.expert_parallel=2 train.base_dtype=fp8 parallel.frozen=resident \
      run.init_from="$OUT/noscale.h5" run.output_dir="$OUT/no2" 2>&1) && bad "an fp8 weight without its scales accepted" ||
    { echo "$msg" | grep -q "experts.up_proj.weight needs its f32 scales" && ok "missing scales: $(echo "$msg" | grep -m1 'needs its f32 scales')" ||
      { bad "missing-scale refusal"; echo "$msg" | tail -3; }; }
exit $fail
