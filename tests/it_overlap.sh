#!/bin/bash
# parallel.moe_overlap (issue 16): the MoE layer in two halves, one half's all-to-all in
# flight while the other's expert GEMMs run (src/model/moe.c forward_halves/backward_halves).
# it_uneven.sh's deck (input/tiny.cfg, 12 routed experts, top-4), 6 steps in fp32:
#  1. curves, overlap on against off, every deterministic column of every step within
#     1e-6 relative or the CSV's last digit (the halves change only the order in which an
#     expert's weight gradient sums its rows: two GEMMs instead of one), at np 2 EP 2, np 4
#     EP 4 ZeRO 3 with activation checkpointing (the recompute runs the halves too), and
#     np 5 EP 5 (uneven ownership: 2 ranks x 3 experts + 3 x 2); the run says it overlapped;
#  2. memory: at np 1 and np 4 (EP 2, ZeRO 3) with overlap every category equals the plan
#     to the byte, and --dry-run prints the plan the run compared against;
#  3. resume: np 2 with overlap saves at step 3, a second run resumes there, and steps 4-6
#     equal the uninterrupted run's bitwise;
#  4. the CUDA backend under emulation (make CUDA=emu cuda-emu-model; skipped visibly when
#     absent) at np 2 EP 2 with overlap (the comm stream and events of cuda/comm_nccl.c,
#     NCCL shim on MPI) against the CPU backend's overlap curve: regression tolerances, on
#     the regression deck as tests/it_cuda_model.sh runs it; each rank allocates what the CPU
#     backend allocates, and at np 1 every category equals the plan.
. "$(dirname "$0")/lib.sh"
scratch_dir
DECK="input/tiny.cfg model.n_routed_experts=12 model.num_experts_per_tok=4 model.n_group=4 model.topk_group=2"
COMMON="run.seed=7 run.steps=6 schedule.warmup_steps=2 schedule.decay_steps=10 checkpoint.every=0 train.micro_batch=1 train.global_batch=20 run.log_every=100"
fail=0
bad() { echo "FAIL: $*"; fail=1; }
run() { # name np ep zero [extra overrides...]
    local name=$1 np=$2 ep=$3 z=$4; shift 4
    timeout 300 mpirun -np "$np" "$BIN/dsv3" $DECK $COMMON parallel.expert_parallel="$ep" parallel.zero_stage="$z" \
        run.output_dir="$OUT/$name" "$@" >"$OUT/$name.log" 2>&1 || { tail -5 "$OUT/$name.log"; bad "run $name"; return 1; }
}
# per column: max relative difference over all steps; a column passes within rel 1e-6 or one unit
# in the last digit printed (either value's); steps must match. Prints "loss-rel worst-col ok|FAIL:..."
COLS="loss lm_loss mtp_loss aux_loss lr grad_norm tokens max_imbalance skipped"
compare() { # ref.csv run.csv
    awk -F, -v cols="$COLS" '
        function ulp(s,  p) { p = index(s, "."); return p ? 10 ^ -(length(s) - p) : 1 }
        BEGIN { n = split(cols, c, " "); for (i = 1; i <= n; i++) want[c[i]] = 1 }
        NR == FNR { if (FNR == 1) { for (i = 1; i <= NF; i++) col[i] = $i } else { for (i = 2; i <= NF; i++) ref[$1, i] = $i; nref++ } next }
        FNR == 1 { next }
        { rows++; for (i = 2; i <= NF; i++) { k = col[i]; if (!(k in want)) continue
              a = ref[$1, i]; b = $i; d = b - a; if (d < 0) d = -d; m = a < 0 ? -a : a
              r = m > 0 ? d / m : d; if (r > worst[k]) worst[k] = r
              u = ulp(a) > ulp(b) ? ulp(a) : ulp(b)
              if (r > 1e-6 && d > u * 1.0000001) bad = bad " " k "@" $1 "=" a "/" b } }
        END { w = 0; wc = "-"; for (k in worst) if (worst[k] > w) { w = worst[k]; wc = k }
              if (rows != nref) bad = bad " rows=" rows "/" nref
              printf "%.2e %s=%.2e %s\n", worst["loss"], wc, w, bad == "" ? "ok" : "FAIL:" bad }' "$1" "$2"
}
verdict() { # label ref.csv run.csv
    local res
    res=$(compare "$2" "$3")
    printf '%-40s loss max rel %s, worst column %s: %s\n' "$1" "${res%% *}" "$(echo "$res" | cut -d' ' -f2)" "${res##* }"
    [ "${res##* }" = ok ] || fail=1
}

bytes() { grep -o "bytes sent in step 1: [0-9]*" "$1" | grep -o "[0-9]*$"; }
echo "== 1. curves: overlap on against off"
for c in "2 2 0" "4 4 3 true" "5 5 0"; do
    set -- $c
    name="np$1-ep$2-z$3"
    run "$name-off" "$1" "$2" "$3" parallel.activation_checkpointing="${4:-false}" || continue
    run "$name-on" "$1" "$2" "$3" parallel.activation_checkpointing="${4:-false}" parallel.moe_overlap=true || continue
    grep -q "overlapped with the expert GEMMs (two halves)" "$OUT/$name-on.log" || bad "$name-on does not report the overlap"
    ! grep -q "overlapped" "$OUT/$name-off.log" || bad "$name-off reports an overlap"
    # the halves ran: each exchanges its own counts, 2 ints to each other rank per MoE layer and forward
    b0=$(bytes "$OUT/$name-off.log") b1=$(bytes "$OUT/$name-on.log")
    [ -n "$b0" ] && [ -n "$b1" ] && [ "$b1" -gt "$b0" ] || bad "$name: step 1's bytes on the wire do not show the halves ($b0 off, $b1 on)"
    verdict "np $1 EP $2 ZeRO $3 ckpt ${4:-no} (wire +$((b1 - b0)) B)" "$OUT/$name-off/metrics.csv" "$OUT/$name-on/metrics.csv"
done

echo "== 2. memory with overlap: allocation = plan"
for c in "1 1 0" "4 2 3"; do # it_memory.sh's layout: balanced enough that no MoE row buffer grows
    set -- $c
    out=$(timeout 200 mpirun -np "$1" "$BIN/dsv3" input/tiny.cfg run.steps=1 schedule.warmup_steps=0 checkpoint.every=0 \
        parallel.expert_parallel="$2" parallel.zero_stage="$3" parallel.moe_overlap=true run.output_dir="$OUT/mem$1" 2>&1)
    planned=$(echo "$out" | grep 'memory per rank' | sed -n 's/.*acts [0-9.]* = \([0-9.]*\) | ratio.*/\1/p')
    dry=$(timeout 200 mpirun -np "$1" "$BIN/dsv3" --dry-run input/tiny.cfg run.steps=1 schedule.warmup_steps=0 checkpoint.every=0 \
        parallel.expert_parallel="$2" parallel.zero_stage="$3" parallel.moe_overlap=true 2>&1 | awk '$1 == "0" && $2 ~ /#/ {print $NF}')
    ok=ok
    echo "$out" | grep -q "every category equal to the plan on $1 of $1 ranks" || ok=FAIL
    [ -n "$dry" ] && [ "$dry" = "$planned" ] || ok=FAIL
    printf 'np %d EP %d ZeRO %d overlap: plan %s MiB, --dry-run %s MiB, every category equal: %s\n' "$1" "$2" "$3" \
        "${planned:-?}" "${dry:-?}" $ok
    [ $ok = ok ] || { echo "$out" | grep 'dsv3: memory' | sed 's/^/    /'; fail=1; }
done

echo "== 3. resume with overlap (np 2 EP 2: save at step 3, resume)"
if run full 2 2 0 parallel.moe_overlap=true checkpoint.every=3 checkpoint.keep=0 &&
    run resumed 2 2 0 parallel.moe_overlap=true run.resume="$OUT/full/checkpoints/step_00000003.h5"; then
    grep -q 'resumed from .* at step 3' "$OUT/resumed.log" || bad "the resumed run did not start from step 3"
    if [ "$(awk -F, 'NR > 1' "$OUT/resumed/metrics.csv" | wc -l)" -eq 3 ] &&
        cmp -s <(awk -F, 'NR > 1 && $1 >= 4' "$OUT/full/metrics.csv" | cut -d, -f1-8,10-12) \
               <(awk -F, 'NR > 1' "$OUT/resumed/metrics.csv" | cut -d, -f1-8,10-12); then
        echo "steps 4-6 after the resume equal the uninterrupted run bitwise"
    else bad "steps 4-6 after the resume differ from the uninterrupted run"; fi
fi

echo "== 4. CUDA backend (emulated) with overlap against the CPU's overlap curve"
if [ -x "$EB/dsv3" ]; then
    RD=(regression/decks/tiny.cfg run.steps=3 run.log_every=1 train.global_batch=4 validation.every=3 schedule.warmup_steps=1
        parallel.expert_parallel=2 parallel.zero_stage=3 parallel.moe_overlap=true)
    timeout 300 mpirun -np 2 "$BIN/dsv3" "${RD[@]}" run.output_dir="$OUT/cpu2" >"$OUT/cpu2.log" 2>&1 || bad "cpu2 run"
    t0=$SECONDS
    CUDAEMU_PROTECT=1 CUDAEMU_THREADS=1 timeout 300 mpirun -x CUDAEMU_PROTECT -x CUDAEMU_THREADS -np 2 "$EB/dsv3" "${RD[@]}" \
        run.output_dir="$OUT/emu2" >"$OUT/emu2.log" 2>&1 || { tail -5 "$OUT/emu2.log"; bad "emu2 run"; }
    grep -q "overlapped with the expert GEMMs" "$OUT/emu2.log" || bad "emu2 does not report the overlap"
    echo "emu np 2 EP 2 ZeRO 3 overlap vs CPU ($((SECONDS - t0))s):"
    regress_csv tolerance cpu2 emu2 || bad "emu2 against cpu2"
    mem() { mem_lines "$1"; }
    [ -n "$(mem "$OUT/emu2.log")" ] && [ "$(mem "$OUT/emu2.log")" = "$(mem "$OUT/cpu2.log")" ] &&
        echo "emu np 2 overlap: every rank allocates what the CPU backend allocates ($(mem "$OUT/emu2.log" | awk '{ printf "%s MiB ", $3 }'))" ||
        bad "emu np 2 overlap: allocation differs from the CPU backend's"
    CUDAEMU_PROTECT=1 CUDAEMU_THREADS=2 timeout 300 "$EB/dsv3" "${RD[@]}" parallel.expert_parallel=1 parallel.zero_stage=0 \
        run.output_dir="$OUT/emu1" >"$OUT/emu1.log" 2>&1 || bad "emu1 run"
    grep -q 'every category equal to the plan on 1 of 1 ranks' "$OUT/emu1.log" && echo "emu np 1 overlap: every category equal to the plan" ||
        bad "emu np 1 overlap: allocation differs from the plan"
else
    echo "skipped: $EB/dsv3 not built (make CUDA=emu cuda-emu-model)"
fi
echo "it_overlap: $([ $fail -eq 0 ] && echo passed || echo FAILED)"
[ $fail -eq 0 ]
