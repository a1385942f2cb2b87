#!/bin/bash
# Import/export bandwidth at DeepSeek-V3's real widths (make bench with BENCH_ALL=1).
# tools/reference/make_fp8_layer.py writes one MoE decoder layer (hidden 7168, MLA,
# E routed experts of 2048x7168, FP8 + 128x128 scales, the release's names).
#  1. the real-size check: E = 256 (the release's layer, 11.3 GB of FP8) imported
#     --dtype bf16 at np=1 and np=2: time, GB/s, peak RSS against the README's bound
#     (three 256 MB conversion buffers + headers: 0.8 GB). Needs ~36 GB free; with
#     less it says so and uses BENCH_EXPERTS_SMALL experts.
#  2. import (bf16) and export (bf16 shards) of a >= 2 GB model (E = 32: 3.2 GB of
#     bf16) at np=1 and np=2, against dd conv=fdatasync of the same bytes on the disk.
# Figures only, never pass/fail. BENCH_IMPORT_DIR: a directory on the disk to measure.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
PY=${DSV3_PYTHON:-.venv/bin/python}
D=${BENCH_IMPORT_DIR:-runs/bench-import}
BIG=${BENCH_EXPERTS:-256}
SMALL=${BENCH_EXPERTS_SMALL:-32}
. tools/mpi-env.sh
export OMP_NUM_THREADS=1
export HDF5_USE_FILE_LOCKING=FALSE
rm -rf "$D" && mkdir -p "$D"
trap 'rm -rf "$D"' EXIT
gbs() { awk -v b="$1" -v s="$2" 'BEGIN{ printf "%.2f", b / s / 1e9 }'; }
# timed CMD...: runs CMD; WALL (s, mpirun included) and RSS (MB: the tool's peak RSS, the largest rank's)
timed() {
    local t0 t1 out
    t0=$(date +%s.%N)
    out=$("$@" 2>&1) || { echo "$out" | tail -n 3; return 1; }
    t1=$(date +%s.%N)
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    RSS=$(echo "$out" | sed -n 's/.*peak RSS \([0-9.]*\) MB.*/\1/p' | head -n1)
    echo "$out" | grep -E '^dsv3-(import|export): .*(tensors \(|in [0-9]+ shard)' | sed 's/^/    /'
}
ddw() { # bytes: dd conv=fdatasync of that many bytes on this disk -> GB/s
    local mb=$(( $1 / 1048576 + 1 )) t0 t1
    t0=$(date +%s.%N); dd if=/dev/zero of="$D/dd.bin" bs=1M count=$mb conv=fdatasync status=none; t1=$(date +%s.%N)
    rm -f "$D/dd.bin"
    gbs $((mb * 1048576)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
}
echo "== disk of $D ($(df -h "$D" | awk 'NR==2{print $1", "$4" free"}')), $(nproc --all) cores, $(free -g | awk '/Mem/{print $2}') GiB RAM"

# 1. real size
avail=$(df -B1 "$D" | awk 'NR==2{print $4}')
E=$BIG
if [ "$avail" -lt $((36 * 1000000000)) ]; then
    echo "  (only $((avail / 1000000000)) GB free: the $BIG-expert layer needs ~36 GB; using $SMALL experts)"
    E=$SMALL
fi
echo "== real-size check: one DeepSeek-V3 MoE layer, $E routed experts of 2048x7168, FP8 + 128x128 scales"
"$PY" tools/reference/make_fp8_layer.py "$D/hf" "$E" | sed 's/^/  /' || exit 1
sync
IN=$(du -sb "$D/hf" | cut -f1)
for np in 1 2; do
    timed mpirun -np $np --bind-to none "$BIN/dsv3-import" -q --dtype bf16 "$D/hf" "$D/layer.h5" || exit 1
    OUTB=$(stat -c %s "$D/layer.h5")
    echo "  import np=$np: $WALL s, $(gbs "$IN" "$WALL") GB/s read (FP8), $(gbs "$OUTB" "$WALL") GB/s written (bf16, $OUTB bytes), peak RSS $RSS MB per rank (bound: 768 MB buffers + headers)"
    rm -f "$D/layer.h5"
done
echo "  dd conv=fdatasync of the bf16 file's size: $(ddw "$OUTB") GB/s"
if [ "$E" != "$SMALL" ]; then
    rm -rf "$D/hf"
    echo "== a >= 2 GB model: $SMALL experts"
    "$PY" tools/reference/make_fp8_layer.py "$D/hf" "$SMALL" | sed 's/^/  /' || exit 1
    sync
    IN=$(du -sb "$D/hf" | cut -f1)
fi

# 2. import and export of the smaller model at np 1 and 2
"$BIN/dsv3-import" -q --dtype bf16 "$D/hf" "$D/ref.h5" >/dev/null || exit 1
for np in 1 2; do
    timed mpirun -np $np --bind-to none "$BIN/dsv3-import" -q --dtype bf16 "$D/hf" "$D/layer.h5" || exit 1
    OUTB=$(stat -c %s "$D/layer.h5")
    echo "  import np=$np: $WALL s, $(gbs "$OUTB" "$WALL") GB/s written (bf16, $OUTB bytes), peak RSS $RSS MB"
    rm -f "$D/layer.h5"
    timed mpirun -np $np --bind-to none "$BIN/dsv3-export" -q --max-shard-size 1GB "$D/ref.h5" "$D/export" || exit 1
    XB=$(du -sb "$D/export" | cut -f1)
    echo "  export np=$np: $WALL s, $(gbs "$XB" "$WALL") GB/s written ($XB bytes of bf16 shards), peak RSS $RSS MB"
    rm -rf "$D/export"
done
echo "  dd conv=fdatasync of the export's size: $(ddw "$XB") GB/s"
