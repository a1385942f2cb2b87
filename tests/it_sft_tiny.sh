#!/bin/bash
# The reference LoRA SFT layout on this machine: input/sft-tiny.cfg (input/sft.cfg
# with the tiny model; its header lists what the small machine forces) at
# mpirun -np 24: 24 ranks, EP 8, ZeRO-3, adapters-only checkpoints every 50
# steps with a PEFT directory each (100 steps here; the deck says 2000), the
# memory the plan predicted (ratio 1.000), and dsv3-verify passing on the run.
# --dry-run of input/sft.cfg (671B) still counts 97,006,592 trainable parameters.
. "$(dirname "$0")/lib.sh"
scratch_dir
fail=0
timeout 600 mpirun -np 24 "$BIN/dsv3" input/sft-tiny.cfg run.steps=100 run.output_dir="$OUT/run" \
    logging.tensorboard=\"\" >"$OUT/run.log" 2>&1 || { echo "FAIL: the run"; tail -5 "$OUT/run.log"; exit 1; }
grep -q "24 ranks, EP 8, DP 3, ZeRO 3" "$OUT/run.log" || { echo "FAIL: not the 24-rank EP 8 ZeRO-3 layout"; fail=1; }
ratio=$(sed -n 's/.*memory per rank.*ratio \([0-9.]*\).*/\1/p' "$OUT/run.log")
[ "$ratio" = 1.000 ] && echo "memory allocated / planned: $ratio" || { echo "FAIL: memory ratio '$ratio'"; fail=1; }
for s in 50 100; do
    f=$(printf '%s/run/checkpoints/step_%08d.h5' "$OUT" $s)
    [ -f "$f" ] && [ -s "$OUT/run/checkpoints/checkpoint-$s/adapter_model.safetensors" ] &&
        echo "step $s: $(basename "$f") ($(stat -c %s "$f") bytes, adapters only) and checkpoint-$s/ (PEFT)" ||
        { echo "FAIL: no checkpoint or PEFT directory at step $s"; fail=1; }
done
"$BIN/dsv3-verify" "$OUT/run" >"$OUT/verify.log" 2>&1 && tail -1 "$OUT/verify.log" ||
    { echo "FAIL: dsv3-verify"; cat "$OUT/verify.log"; fail=1; }
n=$(mpirun -np 24 "$BIN/dsv3" --dry-run input/sft.cfg 2>/dev/null | sed -n 's/^plan: parameters .* total, \([0-9,]*\) trainable$/\1/p')
[ "$n" = 97,006,592 ] && echo "input/sft.cfg --dry-run: $n trainable parameters" || { echo "FAIL: sft.cfg trainable '$n'"; fail=1; }
exit $fail
