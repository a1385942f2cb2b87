#!/bin/bash
# it_cuda_model.sh — the whole model on the CUDA backend under emulation (make CUDA=emu
# cuda-emu-model: bin-emu/dsv3, bin-emu/dsv3-refcheck; README "CUDA backend"). Every emulated
# run has CUDAEMU_PROTECT=1: device memory is unmapped outside the runtime, so host code that
# reads or writes a device tensor (as the CPU backend allows) crashes the run here.
#  1. dsv3-refcheck against transformers: the base fixture and LoRA over an fp8 frozen base
#     (the stored-weight round trip through the device included; MTP is in the curves of 2);
#  2. the regression deck's loss curve (3 steps of 4 sequences, validation at steps 0 and 3)
#     against the CPU backend's, regression tolerances (regression/compare.awk), at np 1 and
#     at np 2 (EP 2, ZeRO 3: comm over the NCCL shim, CUDAEMU_THREADS=1);
#     and at np 1 with train.dtype bf16 and checkpointing (the main blocks' inputs kept in bf16), and
#     at np 2 ZeRO 3 with train.dtype bf16 (bf16 working weights gathered, comm_allgather_u16);
#  3. memory: at np 1 the run's allocation equals the plan per category to the byte; at np 2
#     every rank allocates what the CPU backend allocates for the same run;
#  4. checkpoints through the device: the np 2 run saves at step 2, a second run resumes
#     there, and its step 3 equals the uninterrupted run's bitwise (exact tier);
#  5. generation (the latent-cache decode): dsv3-generate --reference, transformers' greedy
#     tokens and logits of the YaRN tiny model (tests/fixtures/hf).
. "$(dirname "$0")/lib.sh"
need_bins "$EB" dsv3 dsv3-refcheck dsv3-generate
need_bins "$BIN" dsv3 dsv3-import
scratch_dir
export CUDAEMU_PROTECT=1
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# 1. refcheck
for fx in hf_tiny hf_tiny_lora_fp8; do
    t0=$SECONDS
    out=$("$EB/dsv3-refcheck" "tests/fixtures/$fx.h5" 2>&1); rc=$?
    printf '  refcheck %-18s %-4s %2ds  %s | %s\n' "$fx" "$(echo "$out" | tail -n1 | awk '{print $2}')" $((SECONDS - t0)) \
        "$(echo "$out" | grep -m1 'logits ' | sed 's/^ *//; s/  */ /g')" "$(echo "$out" | grep -m1 'gradients' | sed 's/^ *//; s/  */ /g')"
    [ $rc -eq 0 ] && [ "$(echo "$out" | tail -n1)" = "dsv3-refcheck: PASS" ] || { echo "$out" | tail -n 20; bad "dsv3-refcheck $fx"; }
done

# 2-4. curves, memory, resume
DECK=regression/decks/tiny.cfg
A=(run.steps=3 run.log_every=1 train.global_batch=4 validation.every=3 schedule.warmup_steps=1)
Z=(parallel.expert_parallel=2 parallel.zero_stage=3)
run() { # label np bin args...: one training run into $OUT/label
    local label=$1 np=$2 bin=$3 t0=$SECONDS
    shift 3
    timeout 300 mpirun -np "$np" "$bin" "$DECK" "${A[@]}" run.output_dir="$OUT/$label" "$@" >"$OUT/$label.log" 2>&1 ||
        { tail -n 5 "$OUT/$label.log"; bad "run $label exited non-zero"; }
    printf '  run %-10s np %d %4ds\n' "$label" "$np" $((SECONDS - t0))
}
compare() { regress_csv "$@" || bad "$3 against $2 ($1 tier)"; } # tier ref run [from]
# what a run allocated: rank lines without the RSS figures
mem() { mem_lines "$OUT/$1.log"; }

run cpu1 1 "$BIN/dsv3"
CUDAEMU_THREADS=2 run emu1 1 "$EB/dsv3"
compare tolerance cpu1 emu1
grep -q 'every category equal to the plan on 1 of 1 ranks' "$OUT/emu1.log" || bad "np 1: allocation differs from the plan"
grep -m1 'dsv3: memory per rank' "$OUT/emu1.log" | sed 's/^dsv3: /  emu1: /'
# train.dtype bf16 with checkpointing: the main blocks' inputs kept in bf16 (ops_round_bf16 / ops_widen_bf16)
B16=(train.dtype=bf16 parallel.activation_checkpointing=true)
run cpub 1 "$BIN/dsv3" "${B16[@]}"
CUDAEMU_THREADS=2 run emub 1 "$EB/dsv3" "${B16[@]}"
compare tolerance cpub emub
grep -q 'every category equal to the plan on 1 of 1 ranks' "$OUT/emub.log" || bad "np 1 bf16: allocation differs from the plan"

run cpu2 2 "$BIN/dsv3" "${Z[@]}"
CUDAEMU_THREADS=1 run emu2 2 "$EB/dsv3" "${Z[@]}" checkpoint.every=2
compare tolerance cpu2 emu2
[ -n "$(mem emu2)" ] && [ "$(mem emu2)" = "$(mem cpu2)" ] || bad "np 2: allocation differs from the CPU backend's: $(mem emu2 | tr '\n' ';') vs $(mem cpu2 | tr '\n' ';')"
mem emu2 | awk '{ printf "  emu2: rank %s planned %s MiB, allocated %s MiB (the CPU backend: the same)\n", $1, $2, $3 }'
# bf16 working weights gathered at ZeRO 3 (comm_allgather_u16 over the NCCL shim, zero.h)
run cpu2b 2 "$BIN/dsv3" "${Z[@]}" train.dtype=bf16
CUDAEMU_THREADS=1 run emu2b 2 "$EB/dsv3" "${Z[@]}" train.dtype=bf16
compare tolerance cpu2b emu2b
[ -n "$(mem emu2b)" ] && [ "$(mem emu2b)" = "$(mem cpu2b)" ] || bad "np 2 bf16: allocation differs from the CPU backend's"
CUDAEMU_THREADS=1 run emu2r 2 "$EB/dsv3" "${Z[@]}" run.resume="$OUT/emu2/checkpoints/step_00000002.h5"
grep -q 'resumed from .* at step 2' "$OUT/emu2r.log" || bad "emu2r did not resume at step 2"
[ "$(awk -F, 'NR == 2 { print $1 }' "$OUT/emu2r/metrics.csv" 2>/dev/null)" = 3 ] || bad "emu2r does not start at step 3"
compare exact emu2 emu2r 3

# 5. generation
t0=$SECONDS
"$BIN/dsv3-import" -q tests/fixtures/hf/fp32 "$OUT/hf.h5" >"$OUT/import.log" 2>&1 || { cat "$OUT/import.log"; bad "dsv3-import"; }
out=$(CUDAEMU_THREADS=2 "$EB/dsv3-generate" -q --reference tests/fixtures/hf/generate.safetensors "$OUT/hf.h5" 2>&1); rc=$?
echo "  $(echo "$out" | tail -n1 | sed 's/^dsv3-generate //') ($((SECONDS - t0))s)"
[ $rc -eq 0 ] && echo "$out" | tail -n1 | grep -q 'PASS$' || { echo "$out" | tail -n 5; bad "dsv3-generate --reference"; }
echo "it_cuda_model: $fails failure(s)"
[ $fails -eq 0 ]
