#!/bin/bash
# Checkpoint bandwidth (a benchmark, never pass/fail): ckpt_save / ckpt_load of a
# synthetic DeepSeek-V3-shaped checkpoint (the test model of tests/test_ckpt_mpi.c
# widened CKPT_SCALE times: ~0.21 MB x scale^2 of params + AdamW moments) at np=1
# (EP 1, ZeRO-0) and np=2 (EP 2, ZeRO-3), against dd writing (conv=fdatasync) and
# reading (page cache dropped when allowed, else iflag=direct) the same bytes on
# the same disk. Save time includes HDF5 close, fsync and the rename.
#   tools/bench-ckpt.sh [scale, default 100 = ~2.1 GB]   BENCH_DIR=dir on the disk to measure
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
T=$BUILD/tests/test_ckpt_mpi
[ -x "$T" ] || { echo "bench-ckpt: $T not built (make)"; exit 1; }
SCALE=${1:-100}
. tools/mpi-env.sh
export OMP_NUM_THREADS=1
export HDF5_USE_FILE_LOCKING=FALSE CKPT_SCALE=$SCALE
mkdir -p "${BENCH_DIR:-runs/bench}"
W=$(mktemp -d "${BENCH_DIR:-runs/bench}/ckpt.XXXXXX")
trap 'rm -rf "$W"' EXIT
drop() { sync; if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo dropped; else echo cached; fi; }
gbs() { awk -v b="$1" -v s="$2" 'BEGIN{ printf "%.2f", b / s / 1e9 }'; }
echo "== checkpoint bandwidth, scale $SCALE, disk of $W ($(df -h "$W" | awk 'NR==2{print $1}')), $(nproc --all) cores =="
for cfg in "1 1 0" "2 2 3"; do
    read -r np ep z <<<"$cfg"
    out=$(mpirun -np $np --bind-to none "$T" save "$W/np$np" $ep $z 1) || { echo "$out"; exit 1; }
    read -r s b < <(echo "$out" | sed -n 's/.*(\([0-9.]*\) s, \([0-9]*\) bytes).*/\1 \2/p')
    f=$W/np$np/checkpoints/step_00000001.h5
    fsz=$(stat -c %s "$f")
    echo "save np=$np EP=$ep ZeRO-$z: $(gbs $b $s) GB/s  ($b tensor bytes, file $fsz bytes, $s s)"
    c=$(drop)
    out=$(mpirun -np $np --bind-to none "$T" load "$f" $ep $z) || { echo "$out"; exit 1; }
    read -r s b < <(echo "$out" | sed -n 's/.*(\([0-9.]*\) s, \([0-9]*\) bytes).*/\1 \2/p')
    echo "load np=$np EP=$ep ZeRO-$z: $(gbs $b $s) GB/s  ($s s, page cache $c, values verified)"
    out=$(mpirun -np $np --bind-to none "$T" load "$f" $ep $z) || { echo "$out"; exit 1; }
    read -r s b < <(echo "$out" | sed -n 's/.*(\([0-9.]*\) s, \([0-9]*\) bytes).*/\1 \2/p')
    echo "load np=$np EP=$ep ZeRO-$z: $(gbs $b $s) GB/s  ($s s, file in page cache)"
    rm -rf "$W/np$np"
done
MB=$(( fsz / 1048576 ))
t0=$(date +%s.%N); dd if=/dev/zero of="$W/dd.bin" bs=1M count=$MB conv=fdatasync status=none; t1=$(date +%s.%N)
echo "dd write (conv=fdatasync): $(gbs $((MB*1048576)) $(awk -v a=$t0 -v b=$t1 "BEGIN{print b-a}")) GB/s  ($MB MiB)"
c=$(drop)
if [ "$c" = dropped ]; then
    t0=$(date +%s.%N); dd if="$W/dd.bin" of=/dev/null bs=1M status=none; t1=$(date +%s.%N)
    echo "dd read (page cache dropped): $(gbs $((MB*1048576)) $(awk -v a=$t0 -v b=$t1 "BEGIN{print b-a}")) GB/s"
else
    t0=$(date +%s.%N); dd if="$W/dd.bin" of=/dev/null bs=1M iflag=direct status=none; t1=$(date +%s.%N)
    echo "dd read (iflag=direct): $(gbs $((MB*1048576)) $(awk -v a=$t0 -v b=$t1 "BEGIN{print b-a}")) GB/s"
fi
t0=$(date +%s.%N); dd if="$W/dd.bin" of=/dev/null bs=1M status=none; t1=$(date +%s.%N)
echo "dd read (page cache): $(gbs $((MB*1048576)) $(awk -v a=$t0 -v b=$t1 "BEGIN{print b-a}")) GB/s"
