#!/bin/bash
# Faults (issue 4): killing one rank mid-run ends the whole job within a
# bounded time with a non-zero status (MPI aborts the job; nothing hangs).
. "$(dirname "$0")/lib.sh"
scratch_dir
timeout 120 mpirun -np 4 "$BIN/dsv3" input/tiny.cfg parallel.expert_parallel=4 run.steps=100000 \
    schedule.warmup_steps=2 checkpoint.every=0 run.output_dir="$OUT/run" >"$OUT/log" 2>&1 &
job=$!
for i in $(seq 1 60); do # wait until training runs
    [ -s "$OUT/run/metrics.csv" ] && [ "$(wc -l <"$OUT/run/metrics.csv")" -ge 3 ] && break
    sleep 0.5
done
victim=$(pgrep -f "$BIN/dsv3 input/tiny.cfg parallel.expert_parallel=4 run.steps=100000" | sort -n | tail -1)
[ -n "$victim" ] || { echo "no dsv3 rank found to kill"; cat "$OUT/log"; exit 1; }
t0=$SECONDS
kill -9 "$victim"
wait $job
rc=$?
dt=$((SECONDS - t0))
echo "killed rank pid $victim: job exited with status $rc after ${dt}s"
[ $rc -ne 0 ] || { echo "job exited 0 after a rank was killed"; exit 1; }
[ $rc -ne 124 ] || { echo "job hung (timeout)"; exit 1; }
[ $dt -le 60 ] || { echo "job took ${dt}s to end"; exit 1; }
exit 0
