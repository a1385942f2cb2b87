#!/bin/bash
# The layout plan under mpirun: communicator membership, expert ownership,
# ZeRO shards and collectives at np = 1, 2, 8, 24 with every legal EP of
# {1, 2, 4, 8} (tests/test_plan_mpi.c); then `dsv3 --dry-run input/sft.cfg`
# at np = 24 must show the reference figures of issue 2.
# Exit 0 pass, 77 skip (reason on the last line), else fail.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
BUILD=${BUILD:-build}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_hwloc_base_binding_policy=${OMPI_MCA_hwloc_base_binding_policy:-none}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

fail() { echo "it_plan: FAIL: $*"; exit 1; }

T=$BUILD/tests/test_plan_mpi
[ -x "$T" ] || fail "$T is not built (make)"
for np in 1 2 8 24; do
    out=$(timeout 120 mpirun -np $np "$T" 2>&1)
    rc=$?
    echo "$out" | grep '^test_plan_mpi:'
    [ $rc -eq 0 ] || { echo "$out" | tail -n 30; fail "test_plan_mpi at np=$np (rc $rc)"; }
    for ep in 1 2 4 8; do
        [ $((np % ep)) -eq 0 ] || continue
        echo "$out" | grep -q "^test_plan_mpi: np=$np EP=$ep: $((np / ep)) expert groups, $((8 / ep)) experts per rank" ||
            fail "np=$np EP=$ep layout not tested"
    done
    echo "$out" | grep -q "^test_plan_mpi: np=$np, .* 0 failures on all ranks" || fail "np=$np summary"
done

# --dry-run of the reference SFT deck at 24 ranks.
if [ ! -f input/sft.cfg ]; then echo "it_plan: MPI plan tests passed; dry-run part skipped: input/sft.cfg is missing"; exit 77; fi
if [ ! -x "$BIN/dsv3" ]; then echo "it_plan: MPI plan tests passed; dry-run part skipped: $BIN/dsv3 is not built"; exit 77; fi
out=$(timeout 300 mpirun -np 24 "$BIN/dsv3" --dry-run input/sft.cfg 2>&1)
rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "dsv3 --dry-run input/sft.cfg at np=24 exited $rc"
echo "$out" | grep -q "world 24 ranks on .*expert parallel 8: 3 expert groups of 8, data parallel 3" || fail "expert groups"
echo "$out" | grep -q "ZeRO stage 3, micro-batch 1, gradient accumulation 1" || fail "ZeRO stage / batch line"
echo "$out" | grep -q "parameters 682,636,487,424 total, 97,006,592 trainable" || fail "parameter counts"
echo "$out" | grep -q "32 routed experts per rank per MoE layer" || fail "experts per rank"
echo "$out" | grep -q "memory estimate per rank (GPU layout, bf16): max" || fail "memory summary"
# One line per rank: rank, node, group = rank/8, expert = rank%8, experts e(32*ep)-e(32*ep+31);
# the five categories add up to the total (2-decimal rounding).
echo "$out" | awk '
    $1 ~ /^[0-9]+$/ && NF >= 11 {
        r = $1; g = $3; e = $4; want = sprintf("e%d-e%d", 32 * (r % 8), 32 * (r % 8) + 31)
        if (g != int(r / 8) || e != r % 8 || $5 != want) { print "it_plan: bad row: " $0; bad = 1 }
        n = NF; s = $(n-5) + $(n-4) + $(n-3) + $(n-2) + $(n-1)
        if (s - $n > 0.03 || $n - s > 0.03) { print "it_plan: categories do not sum: " $0; bad = 1 }
        seen[r] = 1
    }
    END { for (r = 0; r < 24; r++) if (!(r in seen)) { print "it_plan: no row for rank " r; bad = 1 }; exit bad }' ||
    fail "per-rank rows"
echo "it_plan: pass"
