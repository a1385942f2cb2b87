#!/bin/bash
# make slice: the real-width slice run of issue 14 (input/dsv3-slice.cfg).
#  1. tools/reference/make_fp8_layer.py --slice writes DeepSeek-V3 at its true widths with
#     one dense and one MoE layer (256 experts) in the release's format (FP8 + 128x128
#     scales, bf16 embedding/head/norms): ~16 GB; dsv3-import --keep-fp8 keeps the FP8
#     bytes as they are (~16 GB more; SLICE_DIR, default runs/slice, needs ~33 GB free).
#  2. mpirun -np 8: LoRA r=16 on the five MLA projections, 3 steps on the same batch,
#     parallel.frozen = "resident" (ZeRO 0) and "sharded" (ZeRO 3); prints the loss per
#     step, the per-rank memory table (planned, allocated, peak RSS), s/step and GFLOP/s
#     against bin/dsv3-sgemm. Figures, not pass/fail; it stops if a run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
PY=${DSV3_PYTHON:-.venv/bin/python}
D=${SLICE_DIR:-runs/slice}
. tools/mpi-env.sh
export OMP_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE
mkdir -p "$D" runs/slice
echo "== $(nproc --all) cores, $(free -g | awk '/Mem/{print $2" GiB RAM, "$7" GiB available"}'), $(df -h "$D" | awk 'NR==2{print $4}') free on $D"
if [ ! -s "$D/slice.h5" ]; then
    [ -s "$D/hf/model.safetensors.index.json" ] || "$PY" tools/reference/make_fp8_layer.py "$D/hf" 256 --slice
    t0=$(date +%s)
    mpirun -np 2 "$BIN/dsv3-import" -q --keep-fp8 "$D/hf" "$D/slice.h5.tmp"
    mv "$D/slice.h5.tmp" "$D/slice.h5"
    echo "== dsv3-import --keep-fp8 at np 2: $(( $(date +%s) - t0 )) s, $(du -h "$D/slice.h5" | cut -f1)"
    [ -n "${SLICE_KEEP_HF:-}" ] || rm -rf "$D/hf"
fi
# random token ids (u32), many windows: data.repeat_batch (the deck) trains every step on step 0's
# batch, each rank its own window — identical windows on all ranks would send every token to the
# same experts 8 times over (routing imbalance of 11-28x, dropless rows grown past the plan)
"$PY" -c "import sys, numpy as np; np.random.default_rng(1).integers(0, 129280, 4096, dtype=np.uint32).tofile(sys.argv[1])" runs/slice/tokens.u32
sg=$("$BIN/dsv3-sgemm" 2>&1 | tail -1)
echo "== sgemm: $sg"
for c in "resident 0" "sharded 3"; do
    set -- $c
    out="$D/run-$1"
    echo "== parallel.frozen = $1, ZeRO $2: mpirun -np 8 $BIN/dsv3 input/dsv3-slice.cfg"
    mpirun -np 8 "$BIN/dsv3" input/dsv3-slice.cfg run.init_from="$D/slice.h5" \
        parallel.frozen="$1" parallel.zero_stage="$2" run.output_dir="$out" >"$out.log" 2>&1 || { tail -5 "$out.log"; exit 1; }
    grep -E '^dsv3: (memory|step|weights)|^step|frozen store' "$out.log" | head -30
    echo "  metrics: $(tr '\n' ' ' <"$out/metrics.csv" | cut -c1-600)"
done
