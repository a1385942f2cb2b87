#!/bin/bash
# Decomposition invariance (issue 4): input/tiny.cfg for 10 steps in fp32 at
# np=1, then at np 2, 4, 8, 24 over EP {1,2,4,8}, ZeRO {0,1,2,3} and activation
# checkpointing on/off: every deterministic column of every step within its
# bound (BOUNDS, near what is measured) of the np=1 run. Prints the matrix.
. "$(dirname "$0")/lib.sh"
scratch_dir
COMMON="run.steps=10 schedule.warmup_steps=2 checkpoint.every=0 train.micro_batch=1 train.global_batch=24 run.log_every=100"
run() { # name np ep zero [checkpointing]
    timeout 300 mpirun -np "$2" "$BIN/dsv3" input/tiny.cfg $COMMON parallel.expert_parallel="$3" \
        parallel.zero_stage="$4" parallel.activation_checkpointing="${5:-false}" run.output_dir="$OUT/$1" >"$OUT/$1.log" 2>&1 || { echo "run $1 failed:"; tail -5 "$OUT/$1.log"; return 1; }
}
# Bounds per column, a few times the largest difference measured over this matrix
# (2 cores, OpenBLAS Cooperlake/Haswell/Sandybridge): the runs agree to <1e-8
# (grad_norm 3e-8) until a near-tie top-k decision flips with the summation
# order, which happens at np 24 within these 10 steps: then loss 2.9e-7,
# mtp_loss 1.3e-6, aux_loss 1.9e-6, grad_norm 9.9e-7, max_imbalance 9.2e-4
# (token counts); lr, tokens and skipped are exact.
BOUNDS="loss:1e-6 lm_loss:1e-6 mtp_loss:5e-6 aux_loss:1e-5 lr:0 tokens:0 grad_norm:5e-6 max_imbalance:5e-3 skipped:0"
run base 1 1 0 || exit 1
fail=0
printf '%-6s %3s %3s %5s %5s %12s  %s\n' case np EP ZeRO ckpt "max rel" verdict
for c in "2 2 0" "2 1 3" "4 4 1" "4 2 2" "4 2 2 true" "8 8 3" "8 1 0" "8 2 1" "8 8 3 true" "24 8 2" "24 8 3"; do
    set -- $c
    name="np$1-ep$2-z$3-${4:-false}"
    run "$name" "$1" "$2" "$3" "${4:-false}" || { fail=1; continue; }
    # every step the run verifies the router biases: identical replicas below ZeRO-3; at ZeRO-3 the
    # assembled shards equal a replicated shadow updated from the same global counts
    if ! grep -q "router biases bitwise identical on all $1 ranks (checked at 10 steps)" "$OUT/$name.log"; then
        echo "FAIL: $name did not confirm identical router biases"; fail=1
    fi
    # every deterministic column (timings excluded) against np=1: the largest relative
    # difference per column, then the verdict against the column's bound
    res=$(csv_bounds "$OUT/base/metrics.csv" "$OUT/$name/metrics.csv" 1 "$BOUNDS")
    rel=${res%% *}; rest=${res#* }; worstc=${rest%% *}; ok=${rest#* }
    [ "$ok" = ok ] || fail=1
    rel="$rel (nearest its bound: $worstc)"
    printf '%-6s %3s %3s %5s %5s %12s  %s\n' "" "$1" "$2" "$3" "${4:-no}" "$rel" "$ok"
done
exit $fail
