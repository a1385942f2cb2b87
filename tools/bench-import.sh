#!/bin/bash
# Import/export bandwidth at DeepSeek-V3's real widths (make bench with BENCH_ALL=1):
# tools/reference/make_fp8_layer.py writes one MoE decoder layer (hidden 7168, MLA,
# EXPERTS routed experts of 2048x7168, FP8 + 128x128 scales, the release's names);
# dsv3-import converts it (bf16 and fp32), dsv3-export writes it back (bf16), each
# timed with its peak RSS, against dd on the same disk. Figures only, never pass/fail.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
PY=${DSV3_PYTHON:-.venv/bin/python}
D=${BENCH_IMPORT_DIR:-runs/bench-import}
E=${BENCH_EXPERTS:-32}
rm -rf "$D" && mkdir -p "$D"
"$PY" tools/reference/make_fp8_layer.py "$D/hf" "$E" || exit 1
sync
for dt in bf16 fp32; do
    /usr/bin/time -f "  wall %e s, peak RSS %M kB" "$BIN/dsv3-import" -q --dtype $dt "$D/hf" "$D/layer-$dt.h5" 2>&1 | sed 's/^/  /'
done
/usr/bin/time -f "  wall %e s, peak RSS %M kB" "$BIN/dsv3-export" -q "$D/layer-bf16.h5" "$D/export" 2>&1 | sed 's/^/  /'
BYTES=$(du -sb "$D/layer-bf16.h5" | cut -f1)
echo "  dd of the same size on this disk (conv=fdatasync):"
dd if=/dev/zero of="$D/dd.bin" bs=16M count=$((BYTES / 16777216 + 1)) conv=fdatasync 2>&1 | tail -n1 | sed 's/^/    /'
rm -rf "$D"
