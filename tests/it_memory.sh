#!/bin/bash
# Memory (issues 4, 17): what a run really holds, counted by the ops allocator
# per category at its high-water mark, equals the plan (the numbers --dry-run
# prints) to the byte on every rank, for full training at ZeRO 0..3 with and
# without activation checkpointing and for LoRA (gradients and AdamW moments of
# the adapters only) at ZeRO 0..3, and for decks with train.dtype = "bf16". The plan and the count come from different
# code: the plan from plan.c's formulas, the count from every ops_alloc the run
# makes, so a buffer the plan forgets (or a formula that drifts) shows.
# And the process's peak RSS agrees: ops_alloc commits its pages (as a GPU
# allocation would be), so from before the model is created to the end of the
# first step RSS grows by at least 98% of what was allocated and by at most
# 12 MiB more (measured: +2 MiB; MPI and HDF5 buffers), so nothing sizeable is
# allocated outside the accounting.
. "$(dirname "$0")/lib.sh"
scratch_dir
fail=0
# every category equal on every rank, and --dry-run's rank-0 total equal to the plan the run compared against
check() { # label np args...
    local label=$1 np=$2
    shift 2
    local out line dry planned
    out=$(timeout 200 mpirun -np "$np" "$BIN/dsv3" input/tiny.cfg "$@" run.output_dir="$OUT/r" 2>&1)
    line=$(echo "$out" | grep 'memory per rank')
    planned=$(echo "$line" | sed -n 's/.*acts [0-9.]* = \([0-9.]*\) | ratio.*/\1/p')
    dry=$(timeout 200 mpirun -np "$np" "$BIN/dsv3" --dry-run input/tiny.cfg "$@" 2>&1 | awk '$1 == "0" && $2 ~ /#/ {print $NF}')
    local ok=ok
    echo "$out" | grep -q "every category equal to the plan on $np of $np ranks" || ok=FAIL
    [ -n "$dry" ] && [ "$dry" = "$planned" ] || ok=FAIL
    [ "$ok" = ok ] || { fail=1; echo "$out" | grep 'dsv3: memory'; }
    printf '%-34s %s  (--dry-run %s MiB)  %s\n' "$label" "$(echo "$out" | grep -o 'over [0-9]* ranks.*')" "${dry:-?}" $ok
    OUTPUT=$out
}
for z in 0 1 2 3; do
    for ac in false true; do
        check "ZeRO $z checkpointing $ac" 4 run.steps=2 schedule.warmup_steps=1 checkpoint.every=0 \
            parallel.expert_parallel=2 parallel.zero_stage=$z parallel.activation_checkpointing=$ac
    done
done
LORA=(lora.enabled=true 'lora.targets=["self_attn.q_a_proj","self_attn.o_proj"]' run.mode=sft)
for z in 0 1 2 3; do
    check "LoRA ZeRO $z" 2 run.steps=2 schedule.warmup_steps=0 checkpoint.every=0 parallel.expert_parallel=2 \
        parallel.zero_stage=$z "${LORA[@]}"
done
# train.dtype = "bf16": the trainer keeps the main blocks' inputs in bf16 (with and without checkpointing); its
# table is what the run allocates (it printed the GPU layout's bf16 figures before, and this check failed)
check "LoRA ZeRO 3 train.dtype bf16" 2 run.steps=2 schedule.warmup_steps=0 checkpoint.every=0 parallel.expert_parallel=2 \
    parallel.zero_stage=3 train.dtype=bf16 "${LORA[@]}"
check "ZeRO 1 train.dtype bf16 checkpointing" 2 run.steps=2 schedule.warmup_steps=1 checkpoint.every=0 \
    parallel.expert_parallel=2 parallel.zero_stage=1 train.dtype=bf16 parallel.activation_checkpointing=true
# bf16 working weights (zero.h): fp32 masters in the optimizer's shard, the resident bank at ZeRO 1-2
# (EP 2 of 4 ranks: the experts shared by 2) and the opened banks at ZeRO 3 (EP 2 of 2: the experts local)
check "ZeRO 2 train.dtype bf16" 4 run.steps=2 schedule.warmup_steps=1 checkpoint.every=0 \
    parallel.expert_parallel=2 parallel.zero_stage=2 train.dtype=bf16
check "ZeRO 3 train.dtype bf16 checkpointing" 2 run.steps=2 schedule.warmup_steps=1 checkpoint.every=0 \
    parallel.expert_parallel=2 parallel.zero_stage=3 train.dtype=bf16 parallel.activation_checkpointing=true
# and they store less than the fp32 working weights they replace (the planned params of rank 0, ZeRO 1, np 4 EP 1:
# 2 + 4/4 bytes per copied weight instead of 4, 4 + 4/4 per fp32 one; measured 0.88 against 1.09 MiB)
params_of() { mpirun -np 4 "$BIN/dsv3" --dry-run input/tiny.cfg parallel.expert_parallel=1 parallel.zero_stage=1 "$@" 2>&1 |
    awk '$1 == "0" && $2 ~ /#/ { print $(NF - 4) }'; }
p32=$(params_of); p16=$(params_of train.dtype=bf16)
awk -v a="$p32" -v b="$p16" 'BEGIN { exit !(a > 0 && b > 0 && b < a) }' && ok=ok || { ok=FAIL; fail=1; }
echo "ZeRO 1 np 4 params per rank: fp32 $p32 MiB, bf16 working weights $p16 MiB (less): $ok"
# peak RSS against the count, on a batch large enough (~350 MiB per rank) that the model dominates the process
BIG=(run.steps=1 schedule.warmup_steps=0 checkpoint.every=0 parallel.expert_parallel=2 train.seq_len=256
     train.micro_batch=32 train.global_batch=64)
for c in "full ZeRO 0:parallel.zero_stage=0" "full ZeRO 3:parallel.zero_stage=3" "LoRA ZeRO 3:parallel.zero_stage=3 ${LORA[*]}"; do
    label=${c%%:*}
    # shellcheck disable=SC2086
    check "RSS, $label" 2 "${BIG[@]}" ${c#*:}
    rows=$(echo "$OUTPUT" | grep 'dsv3: memory rank')
    ok=$(echo "$rows" | awk '{ for (i = 1; i <= NF; i++) { if ($i == "allocated") a = $(i + 1); if ($i == "RSS") { g = $(i + 3); sub(/^\(\+/, "", g) } }
                             r = g / a; printf "  rank %s allocated %.1f MiB, RSS grew %.1f MiB (%.2f)\n", $4, a, g, r > "/dev/stderr";
                             if (!(g >= 0.98 * a && g <= a + 12)) bad = 1 } END { print (NR > 0 && !bad) ? "ok" : "FAIL" }')
    # under AddressSanitizer the shadow memory and redzones count in RSS too
    if ldd "$BIN/dsv3" | grep -q libasan; then ok="not checked (sanitizer build)"; fi
    [ "$ok" != FAIL ] || fail=1
    echo "  RSS growth within [0.98 x allocated, allocated + 12 MiB] on every rank: $ok"
done
exit $fail
