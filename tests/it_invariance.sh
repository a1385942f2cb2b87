#!/bin/bash
# Decomposition invariance (issue 4): input/tiny.cfg for 10 steps in fp32 at
# np=1, then at np 2, 4, 8, 24 over EP {1,2,4,8}, ZeRO {0,1,2,3} and activation
# checkpointing on/off: every
# step's loss within 1e-5 relative of the np=1 run. Prints the matrix.
. "$(dirname "$0")/lib.sh"
scratch_dir
COMMON="run.steps=10 schedule.warmup_steps=2 checkpoint.every=0 train.micro_batch=1 train.global_batch=24 run.log_every=100"
run() { # name np ep zero [checkpointing]
    timeout 300 mpirun -np "$2" "$BIN/dsv3" input/tiny.cfg $COMMON parallel.expert_parallel="$3" \
        parallel.zero_stage="$4" parallel.activation_checkpointing="${5:-false}" run.output_dir="$OUT/$1" >"$OUT/$1.log" 2>&1 || { echo "run $1 failed:"; tail -5 "$OUT/$1.log"; return 1; }
}
run base 1 1 0 || exit 1
fail=0
printf '%-6s %3s %3s %5s %5s %12s  %s\n' case np EP ZeRO ckpt "max rel" verdict
for c in "2 2 0" "2 1 3" "4 4 1" "4 2 2" "4 2 2 true" "8 8 3" "8 1 0" "8 2 1" "8 8 3 true" "24 8 2" "24 8 3"; do
    set -- $c
    name="np$1-ep$2-z$3-${4:-false}"
    run "$name" "$1" "$2" "$3" "${4:-false}" || { fail=1; continue; }
    # below ZeRO-3 every rank holds the router biases: the run verifies them identical every step
    if [ "$3" -lt 3 ] && ! grep -q "router biases bitwise identical on all $1 ranks (checked at 10 steps)" "$OUT/$name.log"; then
        echo "FAIL: $name did not confirm identical router biases"; fail=1
    fi
    rel=$(awk -F, 'NR==FNR { if (FNR>1) b[$1]=$2; next } FNR>1 { d=$2-b[$1]; if (d<0) d=-d; r=d/(b[$1]<0?-b[$1]:b[$1]); if (r>m) m=r; n++ } END { if (n!=10) print "rows:" n; else printf "%.3e", m }' \
        "$OUT/base/metrics.csv" "$OUT/$name/metrics.csv")
    ok=$(awk -v r="$rel" 'BEGIN { print (r ~ /^[0-9.e+-]+$/ && r+0 <= 1e-5) ? "ok" : "FAIL" }')
    [ "$ok" = ok ] || fail=1
    printf '%-6s %3s %3s %5s %5s %12s  %s\n' "" "$1" "$2" "$3" "${4:-no}" "$rel" "$ok"
done
exit $fail
