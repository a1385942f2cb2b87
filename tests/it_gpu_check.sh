#!/bin/bash
# it_gpu_check.sh — tools/gpu-check.sh as a dry run under emulation (--emu), so that the
# script works the first time a GPU is lent:
#  1. as it is: every step reported; smi skipped (no nvidia-smi); build, warp, twins, gemm and
#     comm pass (gemm: the bench's TFLOP/s, W8A8 path and attention TFLOP/s parsed); the trainer steps pass or say
#     that bin-emu/ is not built yet; exit 0;
#  2. with bin/ (the CPU trainer) in place of the backend's binaries: refcheck, curve, perf,
#     memory, perf8 and perf16 run and pass (their parsing: loss table, tokens/s, memory line);
#  3. with a planted bad backend (dsv3-refcheck fails, dsv3 trains another curve): those steps
#     FAIL, the steps after them still run, the script exits non-zero;
#  4. with a spent budget: every step is skipped "out of time".
# Skips when the emulation build is absent (make CUDA=emu).
. "$(dirname "$0")/lib.sh"
[ -x build-emu/tests/selftest ] || { echo "skip: build-emu not built (make CUDA=emu)"; exit 77; }
scratch_dir
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
st() { awk -v s="$2" '$1 == s { print $2 }' "$1/report.txt"; } # status of step $2 in report dir $1

tools/gpu-check.sh --emu "$OUT/as-is" >"$OUT/as-is.out" 2>&1; rc=$?
sed 's/^/    /' "$OUT/as-is/report.txt"
[ $rc -eq 0 ] || bad "as-is run exited $rc"
if [ "$(st "$OUT/as-is" smi)" != SKIP ] || ! grep -q '^smi .*no nvidia-smi' "$OUT/as-is/report.txt"; then bad "smi not skipped"; fi
for s in build warp twins gemm comm; do [ "$(st "$OUT/as-is" $s)" = PASS ] || bad "step $s: $(st "$OUT/as-is" $s)"; done
grep -qE '^gemm .*N x K [0-9]+x[0-9]+: [0-9.e-]+/[0-9.e-]+/[0-9.e-]+;.*\(W8A8 on cuBLASLt\)' "$OUT/as-is/report.txt" ||
    bad "gemm: no TFLOP/s triple or W8A8 not on cuBLASLt"
grep -qE '^gemm .*; attention B=1 T=[0-9]+ nh=[0-9]+ fwd/bwd TFLOP/s fp32 [0-9.e-]+/[0-9.e-]+, bf16 [0-9.e-]+/[0-9.e-]+$' "$OUT/as-is/report.txt" ||
    bad "gemm: no attention TFLOP/s pairs (fp32, bf16)"
for s in refcheck curve perf perf8 perf16; do
    case "$(st "$OUT/as-is" $s)" in PASS) ;; SKIP) grep -q "^$s .*not built yet" "$OUT/as-is/report.txt" || bad "$s skipped for another reason" ;; *) bad "step $s: $(st "$OUT/as-is" $s)" ;; esac
done
[ "$(grep -cE '^(smi|build|warp|twins|gemm|comm|refcheck|curve|perf|memory|perf8|perf16) ' "$OUT/as-is/report.txt")" -eq 12 ] ||
    bad "not every step reported"

GPU_CHECK_BINDIR=bin tools/gpu-check.sh --emu "$OUT/cpu" >"$OUT/cpu.out" 2>&1; rc=$?
[ $rc -eq 0 ] || bad "run with bin/ exited $rc"
for s in refcheck curve perf memory perf8 perf16; do [ "$(st "$OUT/cpu" $s)" = PASS ] || bad "bin/ step $s: $(st "$OUT/cpu" $s)"; done
grep -E '^(curve|perf|memory|perf8|perf16) ' "$OUT/cpu/report.txt" | sed 's/^/    bin\/: /'
grep -qE '^perf16 .*bf16 training: [0-9]+ tok/s.*allocation = plan' "$OUT/cpu/report.txt" || bad "perf16 gives no tok/s"
grep -qE '^perf8 .*gemm bf16 [0-9]+ tok/s.*gemm fp8 [0-9]+ tok/s' "$OUT/cpu/report.txt" || bad "perf8 gives no tok/s pair"
grep -qE '^perf .* [0-9]+ tok/s' "$OUT/cpu/report.txt" || bad "perf gives no tok/s"
grep -qE '^memory .*planned [0-9.]+ MiB, allocated [0-9.]+ MiB' "$OUT/cpu/report.txt" || bad "memory line not parsed"

mkdir -p "$OUT/badbin"
printf '#!/bin/sh\necho "planted: no match"; exit 1\n' >"$OUT/badbin/dsv3-refcheck"
printf '#!/bin/sh\nexec "%s/bin/dsv3" "$@" run.seed=77\n' "$PWD" >"$OUT/badbin/dsv3"
chmod +x "$OUT/badbin/dsv3-refcheck" "$OUT/badbin/dsv3"
GPU_CHECK_BINDIR=$OUT/badbin tools/gpu-check.sh --emu "$OUT/bad" >"$OUT/bad.out" 2>&1; rc=$?
[ $rc -ne 0 ] || bad "planted failures: exit 0"
[ "$(st "$OUT/bad" refcheck)" = FAIL ] || bad "planted refcheck failure: $(st "$OUT/bad" refcheck)"
[ "$(st "$OUT/bad" curve)" = FAIL ] || bad "planted other curve: $(st "$OUT/bad" curve)"
[ "$(st "$OUT/bad" perf)" = PASS ] || bad "steps after a failure did not run: perf $(st "$OUT/bad" perf)"
grep -E '^(refcheck|curve) ' "$OUT/bad/report.txt" | sed 's/^/    planted: /'

GPU_CHECK_BUDGET=5 tools/gpu-check.sh --emu "$OUT/late" >"$OUT/late.out" 2>&1
[ "$(grep -c 'SKIP .*out of time' "$OUT/late/report.txt")" -eq 12 ] || bad "a spent budget did not skip every step"
echo "it_gpu_check: $fails failure(s)"
[ $fails -eq 0 ]
