#!/bin/bash
# Every checkpoint I/O path against dd on the same disk, in alternating rounds
# (the machine is shared: the disk's speed moves from minute to minute, so each
# round measures dd next to the runs it is compared with, and the table gives
# medians). A benchmark: figures, never pass/fail.
#   tools/bench-io.sh [rounds, default 5] [experts, default 32]   BENCH_DIR=dir on the disk to measure
# Per round: dd write (conv=fdatasync) of the import's output size; dsv3-import
# --dtype bf16 of a generated FP8 DeepSeek-V3 MoE layer (tools/reference/
# make_fp8_layer.py; 32 experts: 1.76 GB FP8 in, 3.4 GB bf16 out) at np 1 and
# 2; dsv3-export (bf16, 1 GB shards) at np 1 and 2; dd write of the checkpoint's
# size; ckpt_save of a 2.1 GB checkpoint (tests/test_ckpt_mpi, CKPT_SCALE=100) at
# np 1 (EP 1, ZeRO-0) and np 2 (EP 2, ZeRO-3) and ckpt_load of it with the page
# cache dropped, against dd reading that same file with the page cache dropped
# (dd-r file; dd-r: dd's file written just before, for reference).
# Import/export read sources in the page cache (read once before each run: the
# rounds drop the cache for the loads), as bench-import.sh after it generates them;
# bytes written / wall time (mpirun included, as tools/bench-import.sh);
# save/load: the library's own timer (as tools/bench-ckpt.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
T=${BUILD:-build}/tests/test_ckpt_mpi
PY=${DSV3_PYTHON:-.venv/bin/python}
ROUNDS=${1:-5}
E=${2:-32}
. tools/mpi-env.sh
export OMP_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE CKPT_SCALE=${CKPT_SCALE:-100}
mkdir -p "${BENCH_DIR:-runs/bench}"
D=$(mktemp -d "${BENCH_DIR:-runs/bench}/io.XXXXXX")
trap 'rm -rf "$D"' EXIT
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || { echo "bench-io: cannot drop the page cache (root needed): cold loads would be warm" >&2; exit 1; }; }
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
gbs() { awk -v b="$1" -v s="$2" 'BEGIN{ printf "%.2f", b / s / 1e9 }'; }
ddw() { # bytes -> GB/s of dd conv=fdatasync of that many bytes
    local mb=$(( $1 / 1048576 + 1 )) t0
    t0=$(now); dd if=/dev/zero of="$D/dd.bin" bs=1M count=$mb conv=fdatasync status=none; gbs $((mb * 1048576)) "$(el "$t0")"
}
ddr() { # bytes -> GB/s of dd reading that many bytes with the page cache dropped (dd.bin written by ddw before)
    local mb=$(( $1 / 1048576 )) t0
    drop; t0=$(now); dd if="$D/dd.bin" of=/dev/null bs=1M count=$mb status=none; gbs $((mb * 1048576)) "$(el "$t0")"
}
echo "== bench-io: $ROUNDS rounds on $D ($(df -h "$D" | awk 'NR==2{print $1", "$4" free"}')), $(nproc --all) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" tools/reference/make_fp8_layer.py "$D/hf" "$E" | sed 's/^/  /' || exit 1
"$BIN/dsv3-import" -q --dtype bf16 "$D/hf" "$D/ref.h5" >/dev/null || exit 1
OUTB=$(stat -c %s "$D/ref.h5")
mpirun -np 1 --bind-to none "$T" save "$D/c" 1 0 1 >/dev/null || exit 1
CB=$(stat -c %s "$D/c/checkpoints/step_00000001.h5")
rm -rf "$D/c"
R="$D/results"
: >"$R"
for r in $(seq 1 "$ROUNDS"); do
    line="round $r (load $(cut -d' ' -f1 /proc/loadavg)):"
    rm -f "$D/dd.bin"; dw=$(ddw "$OUTB"); rm -f "$D/dd.bin"
    echo "ddw_big $dw 1" >>"$R"; line+=" dd-w $dw |"
    for np in 1 2; do
        cat "$D"/hf/* >/dev/null
        t0=$(now); mpirun -np $np --bind-to none "$BIN/dsv3-import" -q --dtype bf16 "$D/hf" "$D/l.h5" >/dev/null || exit 1
        g=$(gbs "$OUTB" "$(el "$t0")"); rm -f "$D/l.h5"
        echo "import_np$np $g $dw" >>"$R"; line+=" imp$np $g"
    done
    for np in 1 2; do
        cat "$D/ref.h5" >/dev/null
        t0=$(now); mpirun -np $np --bind-to none "$BIN/dsv3-export" -q --max-shard-size 1GB "$D/ref.h5" "$D/x" >/dev/null || exit 1
        XB=$(du -sb "$D/x" | cut -f1); g=$(gbs "$XB" "$(el "$t0")"); rm -rf "$D/x"
        echo "export_np$np $g $dw" >>"$R"; line+=" exp$np $g"
    done
    dw=$(ddw "$CB"); dr=$(ddr "$CB"); rm -f "$D/dd.bin"
    echo "ddw_ckpt $dw 1" >>"$R"; echo "ddr_ckpt $dr 1" >>"$R"; line+=" | dd-w $dw dd-r $dr |"
    for cfg in "1 1 0" "2 2 3"; do
        read -r np ep z <<<"$cfg"
        out=$(mpirun -np $np --bind-to none "$T" save "$D/c$np" $ep $z 1) || { echo "$out"; exit 1; }
        read -r s b < <(echo "$out" | sed -n 's/.*(\([0-9.]*\) s, \([0-9]*\) bytes).*/\1 \2/p')
        g=$(gbs "$b" "$s"); echo "save_np$np $g $dw" >>"$R"; line+=" save$np $g"
        drop
        out=$(mpirun -np $np --bind-to none "$T" load "$D/c$np/checkpoints/step_00000001.h5" $ep $z) || { echo "$out"; exit 1; }
        read -r s b < <(echo "$out" | sed -n 's/.*(\([0-9.]*\) s, \([0-9]*\) bytes).*/\1 \2/p')
        g=$(gbs "$b" "$s")
        drop; t0=$(now); dd if="$D/c$np/checkpoints/step_00000001.h5" of=/dev/null bs=1M status=none; df=$(gbs "$CB" "$(el "$t0")")
        echo "load_np$np $g $df" >>"$R"; echo "ddr_file $df 1" >>"$R"; line+=" load$np $g (dd-r file $df)"
        rm -rf "$D/c$np"
    done
    echo "$line"
done
echo "== medians over $ROUNDS rounds (share: GB/s over the same round's dd, then the median of those)"
printf '  %-10s %8s %8s   %s\n' what GB/s "of dd" "per round (share of dd)"
for k in import_np1 import_np2 export_np1 export_np2 save_np1 save_np2 load_np1 load_np2 ddw_big ddw_ckpt ddr_ckpt ddr_file; do
    awk -v k="$k" 'BEGIN { n = 0 } $1 == k { g[n] = $2; s[n] = $2 / $3; n++ }
        function med(a, n,   i, j, t) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                       return n % 2 ? a[(n - 1) / 2] : (a[n / 2 - 1] + a[n / 2]) / 2 }
        END { if (!n) exit; l = ""; for (i = 0; i < n; i++) l = l sprintf(" %.0f%%", 100 * s[i]);
              if (k ~ /^dd/) printf "  %-10s %8.2f        -\n", k, med(g, n)
              else printf "  %-10s %8.2f %7.0f%%  %s\n", k, med(g, n), 100 * med(s, n), l }' "$R"
done
