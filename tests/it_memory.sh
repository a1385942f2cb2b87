#!/bin/bash
# Memory (issue 4): the bytes a run allocates per rank match what the plan
# (the same numbers --dry-run prints) predicts within 10%, for ZeRO 0..3 with
# and without activation checkpointing; and --dry-run prints that plan.
# LoRA (frozen base: gradients and AdamW moments of the adapters only, in the
# compact layout) at np=2, ZeRO 0..3: allocation equal to the plan (ratio
# 1.000, the same total MiB), every category.
. "$(dirname "$0")/lib.sh"
scratch_dir
fail=0
for z in 0 1 2 3; do
    for ac in false true; do
        args="run.steps=2 schedule.warmup_steps=1 checkpoint.every=0 parallel.expert_parallel=2 parallel.zero_stage=$z parallel.activation_checkpointing=$ac"
        line=$(timeout 200 mpirun -np 4 "$BIN/dsv3" input/tiny.cfg $args run.output_dir="$OUT/r" 2>&1 | grep 'memory per rank')
        ratio=$(echo "$line" | sed -n 's/.*ratio \([0-9.]*\).*/\1/p')
        dry=$(timeout 200 mpirun -np 4 "$BIN/dsv3" --dry-run input/tiny.cfg $args 2>&1 | awk '$1 == "0" && $2 ~ /#/ {print $NF}')
        planned=$(echo "$line" | sed -n 's/.*comm [0-9.]* = \([0-9.]*\) | ratio.*/\1/p')
        ok=$(awk -v r="$ratio" 'BEGIN { print (r != "" && r >= 0.9 && r <= 1.1) ? "ok" : "FAIL" }')
        # --dry-run (a separate process, no model memory) prints for rank 0 the plan the run compared against
        [ -n "$dry" ] && [ "$dry" = "$planned" ] || ok=FAIL
        [ "$ok" = ok ] || fail=1
        printf 'ZeRO %d checkpointing %-5s allocated/planned %s  planned %s MiB, --dry-run %s MiB  %s\n' $z $ac "${ratio:-?}" "${planned:-?}" "${dry:-?}" $ok
    done
done
LORA=(lora.enabled=true 'lora.targets=["self_attn.q_a_proj","self_attn.o_proj"]' run.mode=sft)
for z in 0 1 2 3; do
    args="run.steps=2 schedule.warmup_steps=0 checkpoint.every=0 parallel.expert_parallel=2 parallel.zero_stage=$z"
    line=$(timeout 200 mpirun -np 2 "$BIN/dsv3" input/tiny.cfg $args "${LORA[@]}" run.output_dir="$OUT/l$z" 2>&1 | grep 'memory per rank')
    ratio=$(echo "$line" | sed -n 's/.*ratio \([0-9.]*\).*/\1/p')
    alloc=$(echo "$line" | sed -n 's/.*allocated: \(.*\) = [0-9.]* | planned.*/\1/p')
    plan=$(echo "$line" | sed -n 's/.*planned (--dry-run): \(.*\) comm [0-9.]* = .*/\1/p')
    dry=$(timeout 200 mpirun -np 2 "$BIN/dsv3" --dry-run input/tiny.cfg $args "${LORA[@]}" 2>&1 | awk '$1 == "0" && $2 ~ /#/ {print $NF}')
    planned=$(echo "$line" | sed -n 's/.*comm [0-9.]* = \([0-9.]*\) | ratio.*/\1/p')
    ok=ok
    [ "$ratio" = 1.000 ] && [ -n "$alloc" ] && [ "$alloc" = "$plan" ] || ok=FAIL
    [ -n "$dry" ] && [ "$dry" = "$planned" ] || ok=FAIL
    [ "$ok" = ok ] || fail=1
    printf 'LoRA ZeRO %d allocated/planned %s  (allocated %s | planned %s) --dry-run %s MiB  %s\n' $z "${ratio:-?}" "${alloc:-?}" "${plan:-?}" "${dry:-?}" $ok
done
exit $fail
