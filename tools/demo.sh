#!/bin/bash
# make demo: train input/tiny.cfg on English text from Debian's fortunes
# package with 2 MPI ranks (EP=2), printing the falling loss, then a few greedy
# continuations from the trained model (bin/dsv3-generate on its last checkpoint).
set -euo pipefail
BIN=${1:-bin}
cd "$(dirname "$0")/.."
. tools/mpi-env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
NP=${NP:-2}
echo "make demo: mpirun -np $NP $BIN/dsv3 input/tiny.cfg parallel.expert_parallel=$NP ${DEMO_ARGS:-}"
mpirun -np "$NP" "$BIN/dsv3" input/tiny.cfg parallel.expert_parallel="$NP" ${DEMO_ARGS:-}
echo "make demo: loss curve in runs/tiny/metrics.csv"
CK=runs/tiny/checkpoints/$(cat runs/tiny/checkpoints/latest)
echo "make demo: greedy continuations of the trained model (within its 64-byte training window): mpirun -np $NP $BIN/dsv3-generate $CK"
mpirun -np "$NP" "$BIN/dsv3-generate" --max-new-tokens 52 --prompt "The " --prompt "A man " --prompt "Q: What is " \
    --prompt "Love is " "$CK"
echo "make demo: the same with MTP drafts (self-speculative: the model's MTP module drafts, the model verifies):"
mpirun -np "$NP" "$BIN/dsv3-generate" -q --mtp-draft --max-new-tokens 52 --prompt "The " --prompt "A man " \
    --prompt "Q: What is " --prompt "Love is " "$CK"
