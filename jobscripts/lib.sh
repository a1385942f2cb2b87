# jobscripts/lib.sh — shared by the sbatch templates (sourced, not run).
# Usage inside a template:   . "$DSV3_HOME/jobscripts/lib.sh"; dsv3_job DECK [key=value ...]
#
#   DSV3_HOME      the dsv3 checkout (default: the submit directory)
#   DSV3           the binary (default $DSV3_HOME/bin/dsv3)
#   DSV3_CLUSTER   site settings jobscripts/env/<name>.sh (default: none)
#   DSV3_LAUNCHER  srun | mpirun (default: srun --mpi=pmix when Slurm has pmix, else mpirun)
#   DSV3_CHAIN     N > 0: submit a successor (--dependency=afterany, run.resume=auto)
#                  that continues after a time-limit stop; cancelled when the run completes
#   DSV3_DEBUG=1   NCCL/UCX/OpenMPI debug output (the env file decides what), off by default
set -u
DSV3_HOME=${DSV3_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
DSV3=${DSV3:-$DSV3_HOME/bin/dsv3}

dsv3_log() { echo "[dsv3-job $(date +%H:%M:%S)] $*"; }

# Filtered environment: what a launch depends on, no secrets.
dsv3_env_snapshot() {
    env | grep -E '^(SLURM_|OMPI_|PMIX_|UCX_|NCCL_|CUDA_|OMP_|OPENBLAS_|HDF5_|DSV3|LD_LIBRARY_PATH=|PATH=|HOSTNAME=)' | sort
}

dsv3_job() {
    local deck=$1; shift
    cd "$DSV3_HOME" || { echo "dsv3-job: cannot cd to DSV3_HOME=$DSV3_HOME"; return 2; }
    [ -x "$DSV3" ] || { echo "dsv3-job: $DSV3 is not built (make)"; return 2; }
    if [ -n "${DSV3_CLUSTER:-}" ]; then
        local envf=$DSV3_HOME/jobscripts/env/$DSV3_CLUSTER.sh
        [ -f "$envf" ] || { echo "dsv3-job: no site file $envf"; return 2; }
        # shellcheck disable=SC1090
        . "$envf"
    fi
    local job=${SLURM_JOB_ID:-nojob} args=("$@")
    [ "${DSV3_CHAIN_CHILD:-0}" = 1 ] && args+=(run.resume=auto)
    local launcher=${DSV3_LAUNCHER:-} launch
    if [ -z "$launcher" ]; then
        if command -v srun >/dev/null && srun --mpi=list 2>&1 | grep -q pmix; then launcher=srun; else launcher=mpirun; fi
    fi
    local ntasks=${SLURM_NTASKS:-1}
    case $launcher in
        srun) launch=(srun --mpi=pmix --kill-on-bad-exit=1) ;;
        mpirun) launch=(mpirun -np "$ntasks" --bind-to none)
                [ -n "${SLURM_NTASKS_PER_NODE:-}" ] && launch+=(--map-by "ppr:${SLURM_NTASKS_PER_NODE%%(*}:node") ;;
        *) echo "dsv3-job: DSV3_LAUNCHER=$launcher (srun|mpirun)"; return 2 ;;
    esac
    # the resolved deck (checked for this rank count) decides the run directory;
    # a bad deck stops here, before the allocation is used
    local resolved errf
    errf=$(mktemp)
    resolved=$("${launch[@]}" "$DSV3" --print-deck "$deck" "${args[@]}" 2>"$errf") ||
        { cat "$errf"; rm -f "$errf"; echo "dsv3-job: bad deck"; return 2; }
    rm -f "$errf"
    local out
    out=$(sed -n 's/^  output_dir = "\(.*\)";$/\1/p' <<<"$resolved" | head -n1)
    [ -n "$out" ] || { echo "dsv3-job: no run.output_dir in the deck"; return 2; }
    local rec=$out/jobs/$job
    mkdir -p "$rec"
    printf '%s\n' "$resolved" >"$rec/deck.cfg"
    {
        echo "dsv3: $("$DSV3" --version 2>&1)"
        echo "checkout: $DSV3_HOME"
        git -C "$DSV3_HOME" rev-parse HEAD 2>/dev/null && git -C "$DSV3_HOME" status --short 2>/dev/null | sed 's/^/  /'
    } >"$rec/revision.txt"
    dsv3_env_snapshot >"$rec/env.txt"
    { echo "command: $0 $deck ${args[*]}"; echo "nodes: ${SLURM_JOB_NODELIST:-$(hostname)}"
      command -v scontrol >/dev/null && [ "$job" != nojob ] && scontrol show job "$job"; } >"$rec/job.txt" 2>&1
    dsv3_log "job $job: deck $deck -> $out (records in $rec)"

    # successor for hands-off restarts: queued now, starts when this job ends for any reason
    local next=""
    if [ "${DSV3_CHAIN:-0}" -gt 0 ] && [ "$job" != nojob ]; then
        # the successor writes its output where this job does: StdOut with our id -> %j, in the
        # file name only and only where the id stands alone (the directory may hold any digits)
        local so
        so=$(scontrol show job "$job" 2>/dev/null | sed -n 's/^ *StdOut=//p' | head -n1)
        [ -n "$so" ] && so="$(dirname "$so")/$(basename "$so" | sed -E "s/(^|[^0-9])$job([^0-9]|\$)/\1%j\2/g")"
        next=$(sbatch --parsable --dependency=afterany:"$job" ${so:+--output="$so"} \
               --export=ALL,DSV3_CHAIN=$((DSV3_CHAIN - 1)),DSV3_CHAIN_CHILD=1,DSV3_HOME="$DSV3_HOME" \
               "${DSV3_JOBSCRIPT:-$0}" "$deck" "$@") && dsv3_log "queued successor $next (afterany:$job)"
    fi

    "${launch[@]}" "$DSV3" "$deck" "${args[@]}" &
    local pid=$! rc
    dsv3_log "launched with $launcher ($ntasks ranks), pid $pid"
    # --signal=B:USR1@300 reaches this shell: pass it on, dsv3 checkpoints and exits
    trap 'dsv3_log "USR1: time limit near, asking dsv3 to checkpoint and stop"; kill -USR1 $pid 2>/dev/null' USR1
    trap 'kill -TERM $pid 2>/dev/null' TERM
    while :; do
        wait "$pid"; rc=$?
        kill -0 "$pid" 2>/dev/null || break # wait returned for a trapped signal: keep waiting
    done
    trap - USR1 TERM
    dsv3_log "dsv3 exited with $rc"
    if [ -n "$next" ] && [ $rc -eq 0 ] && [ -f "$out/metrics.csv" ]; then
        local last steps
        last=$(tail -n1 "$out/metrics.csv" | cut -d, -f1)
        steps=$(sed -n 's/^  steps = \([0-9]*\);$/\1/p' <<<"$resolved" | head -n1)
        if [ "$last" = "$steps" ]; then scancel "$next" && dsv3_log "run complete at step $last: successor $next cancelled"; fi
    fi
    # LoRA runs (DSV3_VERIFY=1, sft-3x8.sbatch): the saved adapters checked after training
    if [ $rc -eq 0 ] && [ "${DSV3_VERIFY:-0}" = 1 ]; then
        "$(dirname "$DSV3")/dsv3-verify" "$out"; rc=$?
        dsv3_log "dsv3-verify $out exited with $rc (adapter_debug_info.json)"
    fi
    return $rc
}
