#!/bin/bash
# it_cuda_build.sh — `make CUDA=1` on a machine without a GPU: every cuda/*.cu through nvcc
# for sm_80 and sm_90 with -Werror all-warnings and ptxas spills / local memory as errors
# (cuda/cuda.mk), the twin tests and bin-cuda/dsv3 linked against the real cudart, cuBLAS, cuBLASLt and NCCL.
# Prints the ptxas figures per kernel (registers, spills, shared memory) for sm_90. Skips
# when nvcc is absent (a fresh user without the CUDA toolkit).
. "$(dirname "$0")/lib.sh"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "skip: no nvcc in $CUDA_HOME (set CUDA_HOME to build the CUDA backend)"; exit 77; }
make -s --no-print-directory CUDA=1 CUDA_HOME="$CUDA_HOME" cuda-gpu cuda-gpu-model || { echo "FAIL: make CUDA=1"; exit 1; }
fails=0
# the trainer itself: cudart, cuBLAS, cuBLASLt and NCCL
libs=$(ldd bin-cuda/dsv3 | grep -oE 'lib(cudart|cublas|cublasLt|nccl)\.so[.0-9]*' | sort -u | tr '\n' ' ')
echo "bin-cuda/dsv3: links $libs"
for l in libcudart libcublas libcublasLt libnccl; do
    echo "$libs" | grep -q "$l\.so" || { echo "FAIL: bin-cuda/dsv3 does not link $l"; fails=$((fails + 1)); }
done
for t in build-cuda/tests/test_cuda_*; do
    case "$t" in *.o|*.d) continue;; esac
    libs=$(ldd "$t" | grep -oE 'lib(cudart|cublas|cublasLt|nccl)\.so[.0-9]*' | sort -u | tr '\n' ' ')
    echo "$(basename "$t"): links $libs"
    echo "$libs" | grep -q libcudart || { echo "FAIL: $t does not link libcudart"; fails=$((fails + 1)); }
done
echo "== ptxas, sm_90 (registers / spill stores / spill loads / smem per kernel)"
for r in build-cuda/cuda/*.twin.o.ptxas; do
    awk -v f="$(basename "${r%.twin.o.ptxas}")" '
        /Compiling entry function/ { k = $0; sub(/.*function ./, "", k); sub(/. for .sm_.*/, "", k); arch = ($0 ~ /sm_90/) }
        /spill stores/ { st = $5; ld = $9 }
        /Used [0-9]+ registers/ && arch { sm = "0"; if (match($0, /[0-9]+ bytes smem/)) sm = substr($0, RSTART, RLENGTH - 11);
                                         print f "|" k "|" $5 "|" st "|" ld "|" sm }' "$r" |
        c++filt | sed 's/(anonymous namespace):://g; s/|\([^|(]*\)([^|]*|/|\1|/' |
        awk -F'|' '{ printf "  %-10s %-44s %3d regs  %s/%s spill  %5s B smem\n", $1, $2, $3, $4, $5, $6 }'
    if grep -qE '[1-9][0-9]* bytes spill (stores|loads)' "$r"; then echo "FAIL: spills in $r"; fails=$((fails + 1)); fi
done
[ $fails -eq 0 ]
