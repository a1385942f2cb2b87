#!/bin/bash
# it_cuda_emu.sh — the CUDA backend under emulation (make CUDA=emu; README "CUDA backend").
#  1. every twin test (build-emu/tests/test_cuda_*: the CUDA op against its CPU twin on the
#     same inputs) passes in two thread orders (forward, reverse), and the CUDA outputs are
#     bitwise the same in both (the ops are deterministic; an order-dependent result is a race);
#  2. the emulator's self-tests: a divergent barrier, an early return before a barrier, bad
#     shuffle masks, a host pointer passed to a kernel, launch limits, unsynchronised reads
#     are each caught (selftest), and the warp lane rules (warp_semantics);
#  3. a planted bug — block_sum without its __syncthreads — fails the twin test in forward order;
#  4. the op coverage: which ops.h functions have a passing twin check ("N of M"; the list
#     of the missing ones).
. "$(dirname "$0")/lib.sh"
EMU=${EMU_DIR:-build-emu}
[ -x "$EMU/tests/selftest" ] || { echo "FAIL: $EMU not built (make CUDA=emu)"; exit 1; }
export CUDAEMU_THREADS=${CUDAEMU_THREADS:-2}
fails=0
declare -A covered=()
for t in "$EMU"/tests/test_cuda_*; do
    case "$t" in *.o|*.d) continue;; esac
    name=$(basename "$t") h=()
    for order in fwd rev; do
        t0=$SECONDS
        out=$(CUDAEMU_ORDER=$order "$t" 2>&1); rc=$?
        sum=$(echo "$out" | tail -n1)
        h+=("$(echo "$out" | sed -n 's/^output hash: //p')")
        printf '%-22s %-4s %-26s %3ds\n' "$name" "$order" "$sum" $((SECONDS - t0))
        if [ $rc -ne 0 ]; then echo "$out" | grep -E '^FAIL|rror' | head -n 20 | sed 's/^/    /'; fails=$((fails + 1)); fi
        [ "$order" = fwd ] && for op in $(echo "$out" | awk '$1 == "ok" { print $2 }' | sort -u); do covered[$op]=1; done
    done
    if [ -z "${h[0]}" ] || [ "${h[0]}" != "${h[1]}" ]; then
        echo "FAIL: $name: CUDA outputs differ between thread orders (${h[0]:-none} vs ${h[1]:-none}): order-dependent result"
        fails=$((fails + 1))
    fi
done

echo "== emulator self-tests"
"$EMU/tests/selftest" | tail -n 1 | sed 's/^/selftest: /'; [ "${PIPESTATUS[0]}" -eq 0 ] || fails=$((fails + 1))
"$EMU/tests/warp_semantics" | tail -n 1 | sed 's/^/warp_semantics: /'; [ "${PIPESTATUS[0]}" -eq 0 ] || fails=$((fails + 1))

echo "== planted bug: block_sum without its __syncthreads (cuda/dsv3_cuda.cuh)"
out=$(CUDAEMU_ORDER=fwd "$EMU/tests/racy_cuda_ops" 2>&1); rc=$?
if [ $rc -ne 0 ]; then echo "caught: $(echo "$out" | grep -c '^FAIL') checks fail in forward order ($(echo "$out" | grep -m1 '^FAIL' | awk '{print $2}'))"
else echo "FAIL: the missing barrier went unnoticed"; fails=$((fails + 1)); fi

echo "== op coverage (ops.h, ops_attn.h, ops_moe.h)"
# the functions each backend implements: not the static inline helpers of the headers, not
# the backend-independent host conversions of src/ops_host.c (both backends link that file)
host=$(sed -n 's/^[a-z][a-z0-9_ ]*[ *]\(ops_[a-z0-9_]*\)(.*/\1/p' src/ops_host.c | sort -u)
all=$(grep -hv '^static' src/ops.h src/ops_attn.h src/ops_moe.h | sed -n 's/^[a-z][a-z0-9_ ]*[ *]\(ops_[a-z0-9_]*\)(.*/\1/p' |
      sort -u | grep -vxF "$host")
n=0 have=0 missing=()
for op in $all; do n=$((n + 1)); if [ -n "${covered[$op]:-}" ]; then have=$((have + 1)); else missing+=("$op"); fi; done
echo "twin-tested: $have of $n ops.h functions"
[ ${#missing[@]} -gt 0 ] && echo "no twin yet: ${missing[*]}"
echo "it_cuda_emu: $fails failure(s)"
[ $fails -eq 0 ]
