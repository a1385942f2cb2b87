#!/bin/bash
# The whole suite: cmocka unit tests (build/tests/test_*) and integration
# scripts (tests/it_*.sh: exit 0 pass, 77 skip with a reason on stdout, else fail).
# Prints one summary line CI can read:  "dsv3 tests: P passed, F failed, S skipped"
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
BUILD=${BUILD:-build}
export BIN BUILD
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_hwloc_base_binding_policy=${OMPI_MCA_hwloc_base_binding_policy:-none}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
export CMOCKA_MESSAGE_OUTPUT=stdout
export HDF5_USE_FILE_LOCKING=FALSE
pass=0 fail=0 skip=0 failed=()
LOG=$BUILD/test-logs
mkdir -p "$LOG"
run() { # name, command...
    local name=$1; shift
    local t0=$SECONDS
    timeout ${TEST_TIMEOUT:-900} "$@" >"$LOG/$name.log" 2>&1
    local rc=$?
    # a cmocka program passes with its skipped tests inside: count those as skips, by name
    local sk
    sk=$(sed -n 's/^\[  SKIPPED \] \(.*\)/\1/p' "$LOG/$name.log" | tr '\n' ' ')
    if [ $rc -eq 0 ] && [ -n "$sk" ]; then
        skip=$((skip+$(echo $sk | wc -w))); printf '  SKIP  %-40s cmocka tests skipped: %s(%s)\n' "$name" "$sk" "$(grep -m1 '^skip:' "$LOG/$name.log")"
    fi
    if [ $rc -eq 0 ]; then pass=$((pass+1)); printf '  PASS  %-40s %3ds\n' "$name" $((SECONDS-t0))
    elif [ $rc -eq 77 ]; then skip=$((skip+1)); printf '  SKIP  %-40s %s\n' "$name" "$(tail -n1 "$LOG/$name.log")"
    else fail=$((fail+1)); failed+=("$name"); printf '  FAIL  %-40s (rc %d, log %s)\n' "$name" $rc "$LOG/$name.log"; tail -n 15 "$LOG/$name.log" | sed 's/^/        /'
    fi
}
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.o|*.d) continue;; esac
    # test_moe_ep is an MPI test: it_moe_ep runs it at np 2, 3, 4 and 5 (alone it would compare EP=1 with itself)
    case "$(basename "$t")" in test_moe_ep) continue;; esac
    run "$(basename "$t")" "$t"
done
for s in tests/it_*.sh; do
    [ -x "$s" ] || continue
    case " ${TEST_ONLY:-} " in "  ") ;; *" $(basename "$s" .sh) "*) ;; *) continue;; esac
    run "$(basename "$s" .sh)" "$s"
done
echo "dsv3 tests: $pass passed, $fail failed, $skip skipped${failed:+ (failed: ${failed[*]})}"
# (a program whose cmocka tests were partly skipped is counted once as passed and
# each skipped test once as skipped)
[ $fail -eq 0 ]
