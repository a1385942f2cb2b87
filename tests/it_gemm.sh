#!/bin/bash
# it_gemm.sh — train.gemm_dtype (ops.h ops_gemm): the precision of the GEMMs with a frozen base
# stored narrow (train.base_dtype bf16/fp8), and at bf16/fp8 of the attention's GEMMs (bf16
# operands, ops_attn.h "Precision"), on the tiny LoRA deck over an fp8 base:
#  1. CPU, np 1, 10 steps, gemm_dtype fp32 / bf16 / fp8: every run finite, allocation = plan
#     per category (the bf16/fp8 activation chunk is in the plan's tile rule), and the bf16
#     and fp8 loss curves within GEMM_TOL relative of the fp32 one, but not identical to it
#     (the rounding happened); bf16 on a bf16 base likewise against its fp32 GEMMs
#  2. gemm fp8 at np 2 (EP 2, ZeRO 3: the grouped expert GEMMs on fewer rows) against np 1:
#     regression tolerances (a rounding to e4m3 flips where the summation order moves a value
#     by an ulp, and training carries the difference on: measured 4.2e-5 loss columns, 1.1e-4
#     in the SAN build; step 1 8e-9; at gemm bf16 4e-6, fp32 1.4e-9)
#  3. CUDA=emu (bin-emu/dsv3, make CUDA=emu cuda-emu-model): gemm fp8 at np 1 (cuBLASLt's
#     block-scaled W8A8 through the shim) against the CPU's gemm fp8 curve, regression
#     tolerances (regression/compare.awk), allocation = plan. Measured: loss 7e-5 relative
#     over 3 steps (0.125 of the tolerance; 6.5e-6 before the attention ran bf16: the two
#     backends round an fp32 P or dS that lies at a bf16 rounding boundary apart by one bf16
#     ulp now and then, and training carries it on; 3b: 1.1e-5, was 2.8e-9)
#  3b. CUDA=emu gemm bf16 against the CPU's gemm bf16 (regression tolerances); reporting compute
#     capability 8.0 (CUDAEMU_SM=80), gemm fp8 says once that it runs bf16, and its curve is
#     the emulated gemm bf16 one bitwise
#  3c. CUDA=emu at np 2 (EP 2, ZeRO 3, comm over the NCCL shim), dispatch wire fp8 + gemm fp8,
#     against the CPU's same mode (regression tolerances; measured: loss 6.2e-6 relative over 2 steps;
#     2.5e-6 before the attention ran bf16),
#     allocation = plan, the wire fp8, and cuBLASLt's 32 MiB workspace in each rank's untracked
#     memory (cuda/ops.cu LT_WS_BYTES; 7 s)
#  4. refusals, one line on every rank and non-zero exit: gemm fp8 on a bf16 base; gemm bf16
#     with an fp32 base
. "$(dirname "$0")/lib.sh"
need_bins "$BIN" dsv3
need_bins "$EB" dsv3
scratch_dir
# measured over 10 steps, loss columns: 6.9e-5 (bf16), 2.1e-4 (fp8); bf16 base 6.9e-5 (before the attention
# ran bf16: 2.0e-5, 2.4e-4 (SAN build 1.9e-4), 6.0e-5)
GEMM_TOL=1e-3
LORA=(input/tiny.cfg run.steps=10 schedule.warmup_steps=0 checkpoint.every=0 lora.enabled=true run.mode=sft
      'lora.targets=["self_attn.q_a_proj","self_attn.o_proj","mlp.experts.gate_proj"]' parallel.frozen=resident)
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
RUN_ARGS=("${LORA[@]}")
run() { run_planned "$@"; }
near() { loss_near "$@"; }

echo "== 1. CPU np 1: gemm_dtype fp32 / bf16 / fp8 on an fp8 base; bf16 on a bf16 base"
for g in fp32 bf16 fp8; do run "f8$g" 1 "$BIN/dsv3" train.base_dtype=fp8 train.gemm_dtype=$g; done
for g in fp32 bf16; do run "b16$g" 1 "$BIN/dsv3" train.base_dtype=bf16 train.gemm_dtype=$g; done
grep -m1 'train.gemm_dtype' "$OUT/f8fp8.log" | sed 's/^/  /'
near "fp8 base, gemm bf16 vs fp32" f8fp32 f8bf16 $GEMM_TOL
near "fp8 base, gemm fp8 (W8A8) vs fp32" f8fp32 f8fp8 $GEMM_TOL
near "bf16 base, gemm bf16 vs fp32" b16fp32 b16bf16 $GEMM_TOL

regress() { regress_csv tolerance "$2" "$3" && ok "$1" || bad "$1: $3 against $2"; } # label ref run

echo "== 2. gemm fp8 at np 2 (EP 2, ZeRO 3) against np 1"
run f8np2 2 "$BIN/dsv3" train.base_dtype=fp8 train.gemm_dtype=fp8 parallel.expert_parallel=2 parallel.zero_stage=3 &&
    regress "gemm fp8 np 2 = np 1 within the regression tolerances" f8fp8 f8np2

echo "== 3. CUDA=emu: gemm fp8 (cuBLASLt W8A8 through the shim) against the CPU's gemm fp8"
E=(run.steps=3 train.global_batch=2 train.base_dtype=fp8 train.gemm_dtype=fp8)
run cpu3 1 "$BIN/dsv3" "${E[@]}"
CUDAEMU_PROTECT=1 CUDAEMU_THREADS=2 run emu3 1 "$EB/dsv3" "${E[@]}" &&
    regress "CUDA=emu gemm fp8 = the CPU's within the regression tolerances" cpu3 emu3

echo "== 3b. CUDA=emu as compute capability 8.0: gemm fp8 falls back to bf16, said once"
E=(run.steps=2 train.global_batch=2 train.base_dtype=fp8)
run cpu3b 1 "$BIN/dsv3" "${E[@]}" train.gemm_dtype=bf16
CUDAEMU_PROTECT=1 CUDAEMU_THREADS=2 run emu3c 1 "$EB/dsv3" "${E[@]}" train.gemm_dtype=bf16 &&
    regress "CUDA=emu gemm bf16 = the CPU's gemm bf16 within the regression tolerances" cpu3b emu3c
CUDAEMU_SM=80 CUDAEMU_PROTECT=1 CUDAEMU_THREADS=2 run emu3b 1 "$EB/dsv3" "${E[@]}" train.gemm_dtype=fp8 &&
    cmp -s <(cut -d, -f2-5 "$OUT/emu3b/metrics.csv") <(cut -d, -f2-5 "$OUT/emu3c/metrics.csv") &&
    ok "CUDA=emu sm 8.0 gemm fp8 = CUDA=emu gemm bf16, loss columns bitwise" || bad "sm 8.0 gemm fp8 is not the bf16 curve"
n=$(grep -c 'gemm_dtype = "fp8": this GPU has no FP8 tensor cores.*run as gemm_dtype "bf16"' "$OUT/emu3b.log")
[ "$n" = 1 ] && ok "the fallback is said once: $(grep -m1 'no FP8 tensor cores' "$OUT/emu3b.log")" ||
    bad "the sm 8.0 fallback message appears $n times"
grep -q 'no FP8 tensor cores' "$OUT/emu3.log" && bad "the sm 9.0 run fell back"

echo "== 3c. CUDA=emu np 2 (EP 2, ZeRO 3, NCCL shim): dispatch wire fp8 + gemm fp8 against the CPU's same mode"
E=(run.steps=2 train.micro_batch=1 train.global_batch=2 train.base_dtype=fp8 train.gemm_dtype=fp8
   parallel.dispatch_dtype=fp8 parallel.expert_parallel=2 parallel.zero_stage=3)
run cpu3d 2 "$BIN/dsv3" "${E[@]}"
CUDAEMU_PROTECT=1 CUDAEMU_THREADS=1 run emu3d 2 "$EB/dsv3" "${E[@]}" &&
    regress "CUDA=emu np 2 dispatch fp8 + gemm fp8 = the CPU's within the regression tolerances" cpu3d emu3d
grep -q 'all-to-all bytes sent in step 1: .*wire fp8' "$OUT/emu3d.log" || bad "np 2: the dispatch wire is not fp8"
ws=$(awk '/^dsv3: memory rank/ { for (i = 1; i < NF; i++) if ($i == "untracked") print $(i + 1) }' "$OUT/emu3d.log" | sort -g | head -n 1)
awk -v w="${ws:-0}" 'BEGIN { exit !(w >= 32) }' && ok "cuBLASLt's workspace counted: untracked >= $ws MiB on each rank" ||
    bad "np 2: untracked memory ${ws:-?} MiB, not the 32 MiB cuBLASLt workspace"

echo "== 4. refusals"
refuse() { # label expected-text overrides...
    local label=$1 want=$2 out rc n
    shift 2
    out=$(timeout 60 mpirun -np 2 "$BIN/dsv3" "${LORA[@]}" run.output_dir="$OUT/r" "$@" 2>&1); rc=$?
    n=$(echo "$out" | grep -c "^dsv3: .*train.gemm_dtype")
    [ $rc -ne 0 ] && [ "$n" -ge 1 ] && echo "$out" | grep -q "$want" && ok "$label: $(echo "$out" | grep -m1 '^dsv3:')" ||
        { echo "$out" | tail -n 5; bad "$label (rc $rc, $n message lines)"; }
}
refuse "gemm fp8 on a bf16 base" 'needs train.base_dtype = "fp8"' train.base_dtype=bf16 train.gemm_dtype=fp8
refuse "gemm bf16 with an fp32 base (LoRA)" 'held narrow' train.gemm_dtype=bf16
echo "it_gemm: $fails failure(s)"
[ $fails -eq 0 ]
