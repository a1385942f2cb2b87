#!/bin/bash
# it_repeat_batch.sh — data.repeat_batch (the overfit-one-batch check of the slice run): with
# the weights frozen in effect (lr 1e-30, no bias update), every step must see exactly step 0's
# batch — the same loss bitwise each step — and without it the batches (and losses) differ.
. "$(dirname "$0")/lib.sh"
scratch_dir
run() { # repeat -> the loss column of 3 steps
    "$BIN/dsv3" input/tiny.cfg run.steps=3 optimizer.lr=1e-30 schedule.min_lr=0.0 schedule.warmup_steps=0 \
        model.bias_update_rate=0.0 data.repeat_batch="$1" run.output_dir="$OUT/$1" >"$OUT/$1.log" 2>&1 ||
        { tail -3 "$OUT/$1.log"; echo "FAIL: the run with repeat_batch=$1"; exit 1; }
    cut -d, -f2 "$OUT/$1/metrics.csv" | tail -n +2 | tr '\n' ' '
}
on=$(run true) off=$(run false)
echo "repeat_batch = true:  losses $on"
echo "repeat_batch = false: losses $off"
set -- $on; [ "$1" = "$2" ] && [ "$2" = "$3" ] || { echo "FAIL: repeat_batch=true gave different losses"; exit 1; }
set -- $off; [ "$1" != "$2" ] || { echo "FAIL: without repeat_batch step 2 repeated step 1's batch"; exit 1; }
echo "it_repeat_batch: pass"
