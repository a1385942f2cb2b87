#!/bin/bash
# MoE expert parallelism: mpirun -np 2, 4 (EP = np) must reproduce the EP=1
# output, dx, balance loss, counts and all gradients within 1e-6 relative,
# including a routing that leaves ranks without rows and a rank without tokens
# (tests/test_moe_ep.c). A hang fails through the timeout.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_hwloc_base_binding_policy=${OMPI_MCA_hwloc_base_binding_policy:-none}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exe=$BUILD/tests/test_moe_ep
if ! command -v mpirun >/dev/null; then echo "mpirun not found"; exit 77; fi
if [ ! -x "$exe" ]; then echo "missing $exe: run make"; exit 1; fi
for np in 2 3 4 5; do # np 1 would compare EP=1 with itself; 3 and 5: uneven ownership (16 experts)
    echo "== mpirun -np $np"
    timeout 120 mpirun -np $np "$exe"
    rc=$?
    if [ $rc -ne 0 ]; then echo "it_moe_ep: FAIL with $np ranks (rc $rc${rc/#124/, timeout: hang?})"; exit 1; fi
done
echo "it_moe_ep: passed"
