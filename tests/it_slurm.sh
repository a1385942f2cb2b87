#!/bin/bash
# A real Slurm on this host (Debian's munge, slurmctld, slurmd on loopback, all
# state in a temporary directory): cpu-smoke.sbatch runs with `sbatch --wait`
# (exit 0, a metrics.csv with falling loss, the job records in the run
# directory), then `sbatch --test-only` checks the GPU templates against a
# configured partition of 3 nodes x 8 GPUs (State=CLOUD: never started, but
# the scheduler plans on them; FUTURE/DOWN nodes make --test-only refuse). The daemons are
# stopped by their pids. Skips when not root or the packages are missing.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
ROOT=$PWD
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root to run munged/slurmd"; exit 77; }
for x in munged slurmctld slurmd sbatch sinfo scontrol; do
    command -v $x >/dev/null || { echo "SKIP: $x missing (Debian packages slurm-wlm munge)"; exit 77; }
done
[ -x "$BIN/dsv3" ] || { echo "FAIL: $BIN/dsv3 not built"; exit 1; }
T=$(mktemp -d /tmp/dsv3_it_slurm.XXXXXX)
chmod 755 "$T"
HOST=$(hostname -s)
PIDS=()
SBATCH_PID=
cleanup() {
    [ -n "$SBATCH_PID" ] && kill "$SBATCH_PID" 2>/dev/null
    for f in "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munged.pid"; do
        [ -s "$f" ] || continue
        p=$(cat "$f"); kill "$p" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    [ -n "${KEEP_SLURM_TMP:-}" ] && echo "kept $T" || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() { echo "--- slurmctld.log"; tail -n 20 "$T/slurmctld.log" 2>/dev/null; echo "--- slurmd.log"
         tail -n 20 "$T/slurmd.log" 2>/dev/null; echo "FAIL: $*"; exit 1; }

# ports that nobody listens on
port() { local p; while :; do p=$((20000 + RANDOM % 20000)); ! (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && echo $p && return; done; }
CTLD_PORT=$(port); SLURMD_PORT=$(port)

# munge with its own key, socket and state
mkdir -p "$T/munge"
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$T/munge/munge.key"; chmod 700 "$T/munge"
munged --force --key-file="$T/munge/munge.key" --socket="$T/munge/munge.sock" --pid-file="$T/munged.pid" \
    --log-file="$T/munge/munged.log" --seed-file="$T/munge/munged.seed" >"$T/munged.out" 2>&1 ||
    { cat "$T/munged.out" "$T/munge/munged.log" 2>/dev/null; echo "FAIL: munged did not start"; exit 1; }
for _ in $(seq 50); do [ -S "$T/munge/munge.sock" ] && break; sleep 0.1; done

mkdir -p "$T/spool/ctld" "$T/spool/d"
# this host as slurmd sees it (nproc would obey OMP_NUM_THREADS)
NODELINE=$(slurmd -C | head -n1)
case $NODELINE in NodeName=*) ;; *) echo "FAIL: slurmd -C: $NODELINE"; exit 1;; esac
cat >"$T/slurm.conf" <<EOF
ClusterName=dsv3test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge/munge.sock
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$T/spool/ctld
SlurmdSpoolDir=$T/spool/d
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
$NODELINE NodeAddr=127.0.0.1 State=UNKNOWN
NodeName=gpu[1-3] CPUs=96 RealMemory=1000000 Gres=gpu:8 State=CLOUD
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE OverSubscribe=FORCE State=UP
PartitionName=gpu Nodes=gpu[1-3] MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$T/slurm.conf
slurmctld -i >"$T/slurmctld.out" 2>&1 || { cat "$T/slurmctld.out"; fail "slurmctld did not start"; }
slurmd >"$T/slurmd.out" 2>&1 || { cat "$T/slurmd.out"; fail "slurmd did not start"; }
up=0
for _ in $(seq 100); do
    [ "$(sinfo -h -p cpu -o %t 2>/dev/null)" = idle ] && up=1 && break
    sleep 0.2
done
[ $up = 1 ] || { sinfo; fail "node $HOST not idle"; }
echo "slurm up: $(sinfo -h -p cpu -o '%P %D %t %c CPUs %N')"

# 1. the CPU smoke job, for real
RUN=$T/run
chmod 755 "$T"
t0=$SECONDS
# in the background so that a TERM to this test (its timeout) runs the cleanup at once
(cd "$ROOT" && DSV3_HOME=$ROOT DSV3_CLUSTER=local DSV3_LAUNCHER=mpirun exec timeout 300 sbatch --wait --parsable \
    -o "$T/job-%j.out" jobscripts/cpu-smoke.sbatch input/tiny.cfg run.steps=12 schedule.warmup_steps=2 \
    train.seq_len=32 run.output_dir="$RUN" checkpoint.every=6 \
    'data.train=({path="/usr/share/games/fortunes/cookie";weight=1.0;})') >"$T/sbatch.out" 2>&1 &
SBATCH_PID=$!
wait $SBATCH_PID
rc=$?
SBATCH_PID=
jobout=$(cat "$T/sbatch.out")
job=$(tail -n1 <<<"$jobout" | tr -dc 0-9)
echo "sbatch --wait cpu-smoke.sbatch: job ${job:-?} exit $rc in $((SECONDS - t0)) s"
cat "$T"/job-*.out 2>/dev/null | sed 's/^/  | /' | grep -v '^  | $' | tail -n 25
[ $rc -eq 0 ] || fail "sbatch --wait returned $rc: $jobout"
[ -f "$RUN/metrics.csv" ] || fail "no $RUN/metrics.csv"
awk -F, 'NR == 2 { first = $2 } NR > 1 { last = $2; n++ }
         END { printf "metrics.csv: %d steps, loss %.4f -> %.4f\n", n, first, last; exit !(n == 12 && last < first - 0.5) }' \
    "$RUN/metrics.csv" || fail "loss did not fall over 12 steps"
rec=$RUN/jobs/$job
for f in deck.cfg revision.txt env.txt job.txt; do [ -s "$rec/$f" ] || fail "job record $rec/$f missing"; done
grep -q 'steps = 12;' "$rec/deck.cfg" || fail "resolved deck lacks the override"
grep -q '^SLURM_JOB_ID=' "$rec/env.txt" || fail "env.txt lacks SLURM_JOB_ID"
[ -f "$RUN/checkpoints/step_00000012.h5" ] || fail "no final checkpoint"
echo "job records: $(ls "$rec" | tr '\n' ' ')"

# 2. hands-off restart: a chained job (DSV3_CHAIN=1) gets USR1 as at its time
# limit, checkpoints and exits 0; its successor (afterany, run.resume=auto)
# finishes the run from that checkpoint and nothing more is queued
RUN2=$T/chain
(cd "$ROOT" && DSV3_HOME=$ROOT DSV3_CLUSTER=local DSV3_LAUNCHER=mpirun DSV3_CHAIN=1 exec sbatch --parsable \
    -o "$T/chain-%j.out" jobscripts/cpu-smoke.sbatch input/tiny.cfg run.steps=300 schedule.warmup_steps=2 \
    train.seq_len=32 run.output_dir="$RUN2" checkpoint.every=0 \
    'data.train=({path="/usr/share/games/fortunes/cookie";weight=1.0;})') >"$T/chain.sub" 2>&1 || fail "$(cat "$T/chain.sub")"
j1=$(tail -n1 "$T/chain.sub" | tr -dc 0-9)
for _ in $(seq 300); do [ "$(wc -l <"$RUN2/metrics.csv" 2>/dev/null || echo 0)" -gt 5 ] && break; sleep 0.2; done
[ "$(wc -l <"$RUN2/metrics.csv" 2>/dev/null || echo 0)" -gt 5 ] || fail "chained job $j1 did not start training"
scancel --batch --signal=USR1 "$j1" || fail "scancel --signal=USR1 $j1"
for _ in $(seq 600); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
[ -z "$(squeue -h -o %i)" ] || { squeue; fail "chain did not finish"; }
cat "$T"/chain-*.out | grep -E "dsv3-job|stop requested|resumed from|checkpoint step_" | sed 's/^/  | /'
grep -q "stop requested by signal" "$T/chain-$j1.out" || fail "job $j1 did not stop on USR1"
grep -q "dsv3 exited with 0" "$T/chain-$j1.out" || fail "job $j1 did not exit 0 after USR1"
j2=$(grep -o "queued successor [0-9]*" "$T/chain-$j1.out" | tr -dc 0-9)
[ -n "$j2" ] && [ -f "$T/chain-$j2.out" ] || fail "no successor ran"
grep -q "resumed from .* at step" "$T/chain-$j2.out" || fail "successor $j2 did not resume"
last=$(tail -n1 "$RUN2/metrics.csv" | cut -d, -f1)
[ "$last" = 300 ] || fail "chain ended at step $last"
[ "$(ls "$T"/chain-*.out | wc -l)" = 2 ] || fail "more than 2 jobs in the chain"
echo "chain: job $j1 stopped by USR1 at step $(grep -o 'checkpoint written at step [0-9]*' "$T/chain-$j1.out" | tr -dc 0-9), job $j2 resumed and finished step $last"

# 3. the GPU templates: directives checked against the configured gpu partition
for s in sft-3x8 pretrain; do
    o=$(cd "$ROOT" && sbatch --test-only -p gpu jobscripts/$s.sbatch input/sft.cfg 2>&1)
    echo "sbatch --test-only $s.sbatch: $o"
    grep -q "to start at" <<<"$o" || fail "$s.sbatch rejected: $o"
done
o=$(cd "$ROOT" && sbatch --test-only -p gpu --nodes=4 jobscripts/pretrain.sbatch input/sft.cfg 2>&1)
grep -q "not available\|Requested node configuration" <<<"$o" ||
    fail "4 nodes on a 3-node partition accepted: $o"
echo "sbatch --test-only pretrain.sbatch --nodes=4 (3 configured): rejected as it must: $o"
echo "PASS"
