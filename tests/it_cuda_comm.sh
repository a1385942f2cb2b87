#!/bin/bash
# it_cuda_comm.sh — comm.h over NCCL (cuda/comm_nccl.c) under emulation, NCCL shim on MPI:
#  1. test_comm_nccl at np 4 (EP 2: world, node, expert, data as plan.c makes them) and np 3
#     (odd: EP 1, a one-rank group): every comm.h bulk operation on device buffers (NCCL)
#     against comm.c's MPI on host copies of the same data — all-gathers and all-to-alls
#     bitwise, sums within any summation order's bound; empty sends and a rank with
#     nothing to send or receive in the MoE all-to-all; equal and uneven ZeRO shards; then
#     the shim's NCCL calls comm_nccl.c does not make (ncclAlltoAll, Gather, Scatter, rooted
#     Reduce, an fp8 all-gather) against the values they must give;
#  2. DSV3_COMM_DEVICE=mpi on an MPI that is not CUDA-aware, and a bad value, are refused
#     with one message and a non-zero exit before any communication.
# Skips when the emulation build is absent (make CUDA=emu).
. "$(dirname "$0")/lib.sh"
EMU=${EMU_DIR:-build-emu}
T=$EMU/tests/test_comm_nccl
[ -x "$T" ] || { echo "skip: $T not built (make CUDA=emu)"; exit 77; }
export CUDAEMU_THREADS=1
fails=0
for np in 4 3; do
    # stdout alone is parsed: the ranks' stderr (the refusals the test provokes) may land
    # in the middle of a stdout line when both go through one pipe
    err=$(mktemp); out=$(timeout 120 mpirun -q -np $np "$T" 2>"$err"); rc=$?
    echo "np $np: $(echo "$out" | grep -E "^[0-9]+ passed, [0-9]+ failed$" || echo "no summary")"
    echo "$out" | grep -E '^FAIL' | sed 's/^/    /'
    if [ $rc -ne 0 ] || ! echo "$out" | grep -qE '^[0-9]+ passed, 0 failed$'; then
        echo "FAIL: test_comm_nccl at np $np (rc $rc)"; { echo "$out"; cat "$err"; } | tail -n 8 | sed 's/^/    /'
        fails=$((fails + 1))
    fi
    rm -f "$err"
done
refuse() { # value, expected message
    out=$(DSV3_COMM_DEVICE=$1 timeout 60 mpirun -q -x DSV3_COMM_DEVICE -np 2 "$T" 2>&1); rc=$?
    n=$(echo "$out" | grep -c "^dsv3: error: $2")
    if [ $rc -ne 0 ] && [ "$n" -eq 1 ] && ! echo "$out" | grep -q '^ok'; then echo "DSV3_COMM_DEVICE=$1: refused: $2"
    else echo "FAIL: DSV3_COMM_DEVICE=$1: rc $rc, $n message(s)"; echo "$out" | head -n 5 | sed 's/^/    /'; fails=$((fails + 1)); fi
}
refuse mpi "DSV3_COMM_DEVICE=mpi needs a CUDA-aware MPI, and this one is not"
refuse bogus "DSV3_COMM_DEVICE=bogus: use nccl (default) or mpi"
echo "it_cuda_comm: $fails failure(s)"
[ $fails -eq 0 ]
