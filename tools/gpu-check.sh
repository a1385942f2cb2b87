#!/bin/bash
# gpu-check.sh — the CUDA backend's checks on a machine with a GPU, in one prepared run
# (≤ 8 minutes; issue 16). Writes OUTDIR/report.txt (one line per step: PASS, FAIL or SKIP
# with its figures or the reason) and OUTDIR/<step>.log; prints the report as it goes.
#
#   tools/gpu-check.sh OUTDIR          on a GPU machine: make CUDA=1, binaries of build-cuda/, bin-cuda/
#   tools/gpu-check.sh --emu OUTDIR    the same steps under emulation (make CUDA=emu: build-emu/,
#                                      bin-emu/; no nvidia-smi, small sizes): tests/it_gpu_check.sh
#                                      runs it in `make test`, so the script works the first time
#                                      a GPU is lent. GPU_CHECK_EMU=1 does the same as --emu.
#   GPU_CHECK_BINDIR=DIR               the trainer binaries to check (default bin-cuda/, bin-emu/)
#
# Steps, each under its own time limit (and the whole run under GPU_CHECK_BUDGET seconds,
# default 470), continuing after a failure:
#   smi       nvidia-smi: the GPUs, driver, memory
#   build     make (the CPU reference, bin/) and make CUDA=1 (or CUDA=emu)
#   warp      the emulator's warp-semantics test on the hardware (lane rules match the GPU's)
#   twins     every twin test (tests/cuda/test_cuda_*: CUDA op vs its CPU twin)
#   gemm      the FP8-weight GEMM at gemm_dtype fp32 / bf16 / fp8 (test_cuda_gemm --bench), TFLOP/s
#             at (M,N,K) = (1024,4096,7168) and (1024,7168,2048), and the path W8A8 took (on a
#             GPU, fp8 that did not run on cuBLASLt's block-scaled matmul fails the step), and
#             training attention (cuBLAS batched GEMMs) at B 1, T 4096, nh 128: fwd/bwd TFLOP/s with
#             fp32 operands (gemm_dtype fp32) and bf16 operands (gemm_dtype bf16/fp8)
#   comm      comm.h over NCCL vs MPI (test_comm_nccl) on one rank per GPU
#   refcheck  dsv3-refcheck tests/fixtures/hf_tiny.h5 on the GPU (bin-cuda/dsv3-refcheck)
#   curve     the regression deck at np 1: GPU loss curve against the CPU's (regression tolerances)
#   perf      tokens/s and MFU of a mid-size deck (130.6M parameters, seq 512)
#   perf8     the mid-size deck as LoRA on an fp8 base (dispatch wire fp8): tokens/s and MFU at
#             gemm_dtype bf16 and fp8, and whether fp8 fell back
#   memory    the perf run's device memory: its own count and plan, and nvidia-smi's peak
#   perf16    the perf deck in bf16 training (train.dtype bf16, gemm_dtype bf16: the trainable
#             linears through bf16 copies of fp32 masters, bf16 attention operands): tokens/s, MFU
# A step whose binary is not built yet (bin-cuda/dsv3 comes with the trainer's CUDA link) says
# so and is skipped.
set -u
cd "$(dirname "$0")/.." || exit 1
EMU=${GPU_CHECK_EMU:-0}
if [ "${1:-}" = --emu ]; then EMU=1; shift; fi
[ $# -eq 1 ] || { echo "usage: tools/gpu-check.sh [--emu] OUTDIR" >&2; exit 2; }
OUT=$1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
BUDGET=${GPU_CHECK_BUDGET:-470}
. tools/mpi-env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HDF5_USE_FILE_LOCKING=FALSE
J=$(getconf _NPROCESSORS_ONLN)
if [ "$EMU" = 1 ]; then
    MODE=emu BUILD_DIR=build-emu BINDIR=bin-emu MAKE_CUDA="CUDA=emu"
    export CUDAEMU_THREADS=${CUDAEMU_THREADS:-$J}
else
    MODE=gpu BUILD_DIR=build-cuda BINDIR=bin-cuda MAKE_CUDA="CUDA=1"
fi
BINDIR=${GPU_CHECK_BINDIR:-$BINDIR} # tests/it_gpu_check.sh: bin/ in place of the backend's, to run every step
export MODE BUILD_DIR BINDIR MAKE_CUDA J OUT
REPORT=$OUT/report.txt
T0=$SECONDS
{
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')
    echo "gpu-check ($MODE) $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), git $rev, $J cores"
    echo "budget ${BUDGET}s; each line: step status seconds: figures or reason (logs: <step>.log)"
} | tee "$REPORT"
nfail=0

# step NAME LIMIT FUNCTION: runs FUNCTION under min(LIMIT, time left); its last output line
# is the figure (or, with exit 77, the reason for skipping); output in OUT/NAME.log
step() {
    local name=$1 limit=$2 fn=$3 left t rc status last
    left=$((BUDGET - (SECONDS - T0)))
    if [ "$left" -lt 10 ]; then
        printf '%-9s SKIP    0s: out of time (budget %ss spent)\n' "$name" "$BUDGET" | tee -a "$REPORT"; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t=$SECONDS
    timeout --kill-after=5 "$limit" bash -c "$fn" >"$OUT/$name.log" 2>&1
    rc=$?
    last=$(grep -v '^[[:space:]]*$' "$OUT/$name.log" | tail -n 1)
    case $rc in
        0) status=PASS ;;
        77) status=SKIP ;;
        124 | 137) status=FAIL last="timed out after ${limit}s (limit); $last" ;;
        *) status=FAIL last="exit $rc: $last" ;;
    esac
    [ $status = FAIL ] && nfail=$((nfail + 1))
    printf '%-9s %-4s %4ds: %s\n' "$name" "$status" $((SECONDS - t)) "$last" | tee -a "$REPORT"
}

s_smi() {
    [ "$MODE" = emu ] && { echo "emulation: no nvidia-smi"; exit 77; }
    command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found"; exit 1; }
    nvidia-smi || exit 1
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap --format=csv
    echo "$(nvidia-smi -L | wc -l) GPU(s): $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')"
}
s_build() {
    make -j"$J" || { echo "make (CPU reference) failed"; exit 1; }
    make $MAKE_CUDA -j"$J" || { echo "make $MAKE_CUDA failed"; exit 1; }
    local n
    n=$(find "$BUILD_DIR/tests" -maxdepth 1 -name 'test_cuda_*' -type f ! -name '*.o' ! -name '*.d' | wc -l)
    if [ "$MODE" = gpu ]; then
        ldd "$BUILD_DIR"/tests/test_cuda_* 2>/dev/null | grep -oE 'lib(cudart|cublas|cublasLt|nccl)\.so[.0-9]*' | sort -u | tr '\n' ' '
        echo
        grep -h 'spill' "$BUILD_DIR"/cuda/*.ptxas 2>/dev/null | grep -cE '[1-9][0-9]* bytes spill' | sed 's/^/kernels with spills: /'
    fi
    echo "make $MAKE_CUDA: $n twin binaries, $([ -x "$BINDIR/dsv3" ] && echo "$BINDIR/dsv3 built" || echo "no $BINDIR/dsv3 yet")"
}
s_warp() {
    "$BUILD_DIR/tests/warp_semantics" || exit 1
}
s_twins() {
    local t n=0 bad=0 p=0 f=0 line
    for t in "$BUILD_DIR"/tests/test_cuda_*; do
        case "$t" in *.o | *.d) continue ;; esac
        [ -x "$t" ] || continue
        n=$((n + 1))
        echo "== $t"
        timeout 120 "$t" >"$OUT/twin-$(basename "$t").log" 2>&1 || bad=$((bad + 1))
        grep -E '^(FAIL|device:)' "$OUT/twin-$(basename "$t").log"
        line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/twin-$(basename "$t").log" | tail -n 1)
        echo "${line:-no summary (crashed?)}"
        p=$((p + $(echo "${line:-0 passed, 0 failed}" | awk '{print $1}')))
        f=$((f + $(echo "${line:-0 passed, 1 failed}" | awk '{print $3}')))
    done
    [ $n -gt 0 ] || { echo "no twin binaries in $BUILD_DIR/tests"; exit 1; }
    echo "$n twin binaries: $p checks passed, $f failed$([ $bad -gt 0 ] && echo ", $bad binaries exited non-zero")"
    [ $bad -eq 0 ] && [ $f -eq 0 ]
}
s_comm() {
    local t=$BUILD_DIR/tests/test_comm_nccl np line
    [ -x "$t" ] || { echo "$t not built"; exit 1; }
    if [ "$MODE" = emu ]; then np=4; export CUDAEMU_THREADS=1
    else np=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$np" -gt 8 ] && np=8; [ "$np" -ge 1 ] || np=1; fi
    mpirun -q -np "$np" "$t" || { echo "test_comm_nccl at np $np failed"; exit 1; }
    line=$(grep -E '^[0-9]+ passed' "$OUT/comm.log" | tail -n 1)
    if [ "$MODE" = emu ]; then echo "np $np (emulated): $line"
    else echo "np $np (one rank per GPU$([ "$np" -eq 1 ] && echo "; one GPU: the one-rank paths only")): $line"; fi
}
s_refcheck() {
    local r=$BINDIR/dsv3-refcheck fx=tests/fixtures/hf_tiny.h5
    [ -x "$r" ] || { echo "$r not built yet"; exit 77; }
    [ -f "$fx" ] || { echo "$fx missing"; exit 1; }
    "$r" "$fx" || { echo "dsv3-refcheck on the $MODE backend does not match the reference"; exit 1; }
    echo "$fx matches on the $MODE backend"
}
s_gemm() {
    local t=$BUILD_DIR/tests/test_cuda_gemm out
    [ -x "$t" ] || { echo "$t not built"; exit 1; }
    out=$("$t" --bench) || { echo "$out"; echo "$t --bench failed"; exit 1; }
    echo "$out"
    # one line: per shape "NxK fp32/bf16/fp8 TFLOP/s", then the fp8 path
    echo "$out" | awk -v m="$MODE" '/^bench gemm/ {
            split($5, n, "="); split($6, k, "="); sub(":", "", k[2]); key = n[2] "x" k[2]
            if (!(key in v)) order[++nk] = key
            v[key] = v[key] (v[key] == "" ? "" : "/") $9
            if ($3 == "fp8") { lt += $13 + 0; f32 += $16 + 0; bf += $19 + 0 } }
        /^bench attention/ { for (i = 1; i <= NF; i++) { if ($i == "forward") af = $(i + 3); if ($i == "backward") ab = $(i + 3) }
                             at = $4 " " $5 " " $6; av = av (av == "" ? "" : ", ") $3 " " af "/" ab }
        END {
            printf "TFLOP/s fp32/bf16/fp8 (M=%s):", M
            for (i = 1; i <= nk; i++) printf " N x K %s: %s;", order[i], v[order[i]]
            printf " fp8 chunks: cuBLASLt %d, fp32 GEMMs %d, bf16 fallback %d%s", lt, f32, bf,
                   (lt > 0 && f32 + bf == 0 ? " (W8A8 on cuBLASLt)" : " (a FALLBACK fired)")
            printf "; attention %s fwd/bwd TFLOP/s %s\n", at, av
            exit (m == "gpu" && (lt == 0 || f32 + bf > 0)) }' M="$(echo "$out" | sed -n 's/^bench gemm fp32 M=\([0-9]*\).*/\1/p' | head -n 1)"
}
# the loss curve of DECK at np 1 on the CPU (bin/) and on this backend, compared as the
# regression suite compares a run with its golden (regression/compare.awk, regression/tolerances)
CURVE_DECK=regression/decks/tiny.cfg
s_curve() {
    local steps=20 a=() tol res
    [ -x "$BINDIR/dsv3" ] || { echo "$BINDIR/dsv3 not built yet"; exit 77; }
    # emulation (~50 tokens/s): 3 steps of 4 sequences, no validation
    [ "$MODE" = emu ] && steps=3
    a=(run.steps=$steps run.log_every=1 checkpoint.every=0)
    [ "$MODE" = emu ] && a+=(train.global_batch=4 validation.every=0 schedule.warmup_steps=1)
    bin/dsv3 "$CURVE_DECK" "${a[@]}" run.output_dir="$OUT/curve-cpu" >"$OUT/curve-cpu.log" 2>&1 ||
        { echo "CPU run failed (curve-cpu.log)"; exit 1; }
    "$BINDIR/dsv3" "$CURVE_DECK" "${a[@]}" run.output_dir="$OUT/curve-$MODE" >"$OUT/curve-$MODE.log" 2>&1 ||
        { echo "$MODE run failed (curve-$MODE.log)"; tail -n 3 "$OUT/curve-$MODE.log"; exit 1; }
    paste -d, "$OUT/curve-cpu/metrics.csv" "$OUT/curve-$MODE/metrics.csv" | cut -d, -f1,2,17,18 |
        awk -F, 'NR > 1 { printf "step %3d  loss cpu %.8f  %s %.8f  rel %.2e\n", $1, $2, m, $4, ($4 - $2) / $2 }' m="$MODE"
    tol=$(awk '!/^#/ && NF == 3 { printf "%s:%s:%s ", $1, $2, $3 }' regression/tolerances)
    res=$(awk -v tier=tolerance -v tol="$tol" -v refname=cpu -v detail="$OUT/curve.detail" -f regression/compare.awk \
              "$OUT/curve-cpu/metrics.csv" "$OUT/curve-$MODE/metrics.csv")
    echo "$res" | awk -v m="$MODE" -v d="$CURVE_DECK" '{
        printf "%s vs the CPU curve (%s, np 1, %s steps; regression tolerances): ", m, d, $1
        printf "loss max abs %s rel %s, worst %s at %s of its tolerance, %s rows out: %s\n", $2, $3, $4, $5, $6, $7 }'
    [ "${res##* }" = PASS ]
}
# mid-size deck: input/tiny.cfg widened to 130.6M parameters, 2048 tokens a step (8 steps);
# under emulation the tiny deck itself for 2 steps of 2 sequences (the same parsing, not a figure)
PERF_DECK=input/tiny.cfg
PERF_MID="model.hidden_size=1024 model.intermediate_size=2816 model.moe_intermediate_size=512
 model.num_hidden_layers=4 model.n_routed_experts=16 model.num_experts_per_tok=4 model.q_lora_rank=384
 model.kv_lora_rank=128 model.qk_nope_head_dim=64 model.qk_rope_head_dim=32 model.v_head_dim=64
 model.num_attention_heads=16 model.num_key_value_heads=16 model.max_position_embeddings=2048
 train.seq_len=512 train.micro_batch=4 train.global_batch=4 run.steps=8"
PERF_COMMON="run.log_every=1 schedule.warmup_steps=0 checkpoint.every=0 validation.every=0"
# perf8: the same width as LoRA r=16 on an fp8 base (the projections of q_a, o and the experts'
# gate, as it_gemm's deck), q/kv LoRA ranks 512 and dense width 3072, so every frozen projection
# has ceil(in/128) % 4 == 0: W8A8 runs on cuBLASLt throughout (cuda/ops.cu fwd_fp8); dispatch
# wire fp8 (used once EP > 1; one GPU: np 1)
PERF8_ARGS="model.q_lora_rank=512 model.kv_lora_rank=512 model.intermediate_size=3072 lora.enabled=true run.mode=sft
 lora.targets=[\"self_attn.q_a_proj\",\"self_attn.o_proj\",\"mlp.experts.gate_proj\"] parallel.frozen=resident
 train.base_dtype=fp8 parallel.dispatch_dtype=fp8"
export CURVE_DECK PERF_DECK PERF_MID PERF_COMMON PERF8_ARGS
# median tokens/s over the steps after the first two (warm-up, allocator, cuBLAS heuristics)
median_tps() {
    local tps
    tps=$(awk -F, 'NR > 1 && $1 > 2 { print $9 }' "$1" | sort -g |
          awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
    [ -n "$tps" ] || tps=$(awk -F, 'NR > 1 { v = $9 } END { print v }' "$1")
    echo "$tps"
}
# dense peaks of GPU 0, TFLOP/s: "bf16 fp32 fp8" (empty when unknown)
gpu_peaks() {
    local name
    name=$( [ "$MODE" = gpu ] && nvidia-smi --query-gpu=name --format=csv,noheader -i 0 || echo emulator)
    case "$name" in
        *A100*) echo "312 19.5 0 $name" ;;
        *H100* | *H200* | *H800*) echo "989 67 1979 $name" ;;
        *) echo "- - - $name" ;;
    esac
}
s_perf8() {
    local args flops g tps p16 p32 p8 name line="" fb
    set -f # the LoRA targets hold [ ]
    [ -x "$BINDIR/dsv3" ] || { echo "$BINDIR/dsv3 not built yet"; exit 77; }
    # emulation: one step of one 32-token sequence (the parsing, not a figure)
    if [ "$MODE" = emu ]; then args="run.steps=1 train.micro_batch=1 train.global_batch=1 train.seq_len=32 $PERF_COMMON $PERF8_ARGS"
    else args="$PERF_MID $PERF_COMMON $PERF8_ARGS run.steps=6"; fi
    # shellcheck disable=SC2086
    flops=$(bin/dsv3 --dry-run "$PERF_DECK" $args 2>&1 | sed -n 's/.*model FLOPs per token (forward+backward): //p')
    [ -n "$flops" ] || { echo "no FLOPs per token from --dry-run"; exit 1; }
    read -r p16 p32 p8 name <<<"$(gpu_peaks)"
    for g in bf16 fp8; do
        # shellcheck disable=SC2086
        "$BINDIR/dsv3" "$PERF_DECK" $args train.gemm_dtype=$g run.output_dir="$OUT/perf8-$g" >"$OUT/perf8-$g.log" 2>&1 ||
            { echo "gemm $g run failed (perf8-$g.log)"; tail -n 3 "$OUT/perf8-$g.log"; exit 1; }
        tps=$(median_tps "$OUT/perf8-$g/metrics.csv")
        line="$line$(awk -v t="$tps" -v f="$flops" -v p="$p16" -v g="$g" 'BEGIN {
            printf "gemm %s %.0f tok/s %.3f TFLOP/s", g, t, t * f / 1e12
            if (p != "-") printf " (MFU %.2f%% of %s bf16 dense)", 100 * t * f / 1e12 / p, p
            printf "; " }')"
    done
    fb=$(grep -m1 'train.gemm_dtype = "fp8":' "$OUT/perf8-fp8.log")
    [ "$p8" != - ] && [ "$p8" != 0 ] && line="$line(fp8 dense peak $p8); "
    echo "$name, np 1, LoRA on an fp8 base (dispatch_dtype fp8: no EP traffic at np 1), $flops model FLOP/token: $line${fb:-no fp8 fallback message}"
    [ -z "$fb" ] || [ "$MODE" = emu ]
}
s_perf() {
    local args flops name peak16 peak32 tps smi=""
    [ -x "$BINDIR/dsv3" ] || { echo "$BINDIR/dsv3 not built yet"; exit 77; }
    if [ "$MODE" = emu ]; then args="run.steps=2 train.global_batch=2 $PERF_COMMON"; else args="$PERF_MID $PERF_COMMON"; fi
    # shellcheck disable=SC2086
    flops=$(bin/dsv3 --dry-run "$PERF_DECK" $args 2>&1 | sed -n 's/.*model FLOPs per token (forward+backward): //p')
    [ -n "$flops" ] || { echo "no FLOPs per token from --dry-run"; exit 1; }
    if [ "$MODE" = gpu ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 >"$OUT/perf-smi.txt" 2>/dev/null &
        smi=$!
    fi
    # shellcheck disable=SC2086
    "$BINDIR/dsv3" "$PERF_DECK" $args run.output_dir="$OUT/perf-run" >"$OUT/perf-run.log" 2>&1
    local rc=$?
    [ -n "$smi" ] && kill "$smi" 2>/dev/null
    [ $rc -eq 0 ] || { echo "$MODE run failed (perf-run.log)"; tail -n 3 "$OUT/perf-run.log"; exit 1; }
    tps=$(median_tps "$OUT/perf-run/metrics.csv")
    read -r peak16 peak32 _ name <<<"$(gpu_peaks)"
    [ "$peak16" = - ] && peak16="" peak32=""
    awk -v t="$tps" -v f="$flops" -v p16="$peak16" -v p32="$peak32" -v n="$name" 'BEGIN {
        a = t * f / 1e12
        printf "%s: %.0f tok/s, %.4g model FLOP/token, %.3f TFLOP/s achieved", n, t, f, a
        if (p16 != "") printf "; MFU %.2f%% of %s bf16 dense, %.1f%% of %s fp32", 100 * a / p16, p16, 100 * a / p32, p32
        else printf "; MFU n/a (no peak for this device)"
        printf "\n" }'
}
s_perf16() {
    local args flops tps name peak16
    [ -x "$BINDIR/dsv3" ] || { echo "$BINDIR/dsv3 not built yet"; exit 77; }
    if [ "$MODE" = emu ]; then args="run.steps=2 train.global_batch=2 $PERF_COMMON"; else args="$PERF_MID $PERF_COMMON"; fi
    args="$args train.dtype=bf16 train.gemm_dtype=bf16"
    # shellcheck disable=SC2086
    flops=$(bin/dsv3 --dry-run "$PERF_DECK" $args 2>&1 | sed -n 's/.*model FLOPs per token (forward+backward): //p')
    [ -n "$flops" ] || { echo "no FLOPs per token from --dry-run"; exit 1; }
    # shellcheck disable=SC2086
    "$BINDIR/dsv3" "$PERF_DECK" $args run.output_dir="$OUT/perf16-run" >"$OUT/perf16-run.log" 2>&1 ||
        { echo "$MODE run failed (perf16-run.log)"; tail -n 3 "$OUT/perf16-run.log"; exit 1; }
    grep -q 'every category equal to the plan on 1 of 1 ranks' "$OUT/perf16-run.log" ||
        { echo "allocation differs from the plan: $(grep -m1 'dsv3: memory per rank' "$OUT/perf16-run.log")"; exit 1; }
    tps=$(median_tps "$OUT/perf16-run/metrics.csv")
    read -r peak16 _ _ name <<<"$(gpu_peaks)"
    awk -v t="$tps" -v f="$flops" -v p16="$peak16" -v n="$name" 'BEGIN {
        a = t * f / 1e12
        printf "%s, bf16 training: %.0f tok/s, %.3f TFLOP/s achieved", n, t, a
        if (p16 != "-") printf "; MFU %.2f%% of %s bf16 dense", 100 * a / p16, p16
        printf "; allocation = plan\n" }'
}
s_memory() {
    local l peak
    [ -f "$OUT/perf-run.log" ] || { echo "no perf run to read"; exit 77; }
    l=$(grep -m1 'dsv3: memory rank   0:' "$OUT/perf-run.log")
    [ -n "$l" ] || { echo "the perf run printed no memory line"; exit 1; }
    echo "$l"
    grep -m1 'dsv3: memory per rank' "$OUT/perf-run.log"
    peak=""
    [ -s "$OUT/perf-smi.txt" ] && peak=$(sort -n "$OUT/perf-smi.txt" | tail -n 1)
    echo "$l" | sed 's/.*planned *\([0-9.]*\) MiB *allocated *\([0-9.]*\) MiB *ratio *\([0-9.]*\).*/rank 0: planned \1 MiB, allocated \2 MiB (ratio \3)/' |
        tr -d '\n'
    if [ -n "$peak" ]; then echo "; nvidia-smi peak ${peak} MiB used on GPU 0 (with the CUDA context and library workspaces)"
    else echo "; no nvidia-smi peak ($MODE)"; fi
    echo "$l" | grep -qE 'ratio 1\.0000' || exit 1
}
export -f s_smi s_build s_warp s_twins s_gemm s_comm s_refcheck s_curve s_perf s_perf8 s_perf16 s_memory median_tps gpu_peaks

step smi 20 s_smi
step build 240 s_build
step warp 20 s_warp
step twins 90 s_twins
step gemm 30 s_gemm
step comm 40 s_comm
step refcheck 30 s_refcheck
step curve 60 s_curve
step perf 75 s_perf
step memory 5 s_memory
step perf8 70 s_perf8
step perf16 45 s_perf16
echo "gpu-check ($MODE): $nfail step(s) failed, $((SECONDS - T0))s of ${BUDGET}s" | tee -a "$REPORT"
[ $nfail -eq 0 ]
