#!/bin/bash
# Bad input reaching the trainer (data, checkpoints): one "dsv3: error" line
# naming the file or dataset, a non-zero exit on every rank, no hang, at np=1 and 4.
. "$(dirname "$0")/lib.sh"
scratch_dir
fail=0
printf 'abc' >"$OUT/trunc.u32"
printf '\001\000\000\000\000\001\000\000' >"$OUT/big.u32" # ids 1 and 256 (vocab is 256)
: >"$OUT/empty.txt"
# a good checkpoint, then a copy with damaged data
timeout 120 mpirun -np 1 "$BIN/dsv3" input/tiny.cfg run.steps=2 schedule.warmup_steps=1 checkpoint.every=2 \
    run.output_dir="$OUT/good" >/dev/null 2>&1 || { echo "could not make a checkpoint"; exit 1; }
cp "$OUT/good/checkpoints/step_00000002.h5" "$OUT/corrupt.h5"
/usr/bin/python3 - "$OUT/corrupt.h5" <<'PY' 2>/dev/null || { # flip bytes inside the embedding's data
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    off = f["/model/embed_tokens/weight"].id.get_offset() if f["/model/embed_tokens/weight"].chunks is None else \
        f["/model/embed_tokens/weight"].id.get_chunk_info(0).byte_offset
with open(sys.argv[1], "r+b") as g:
    g.seek(off + 100); b = g.read(8); g.seek(off + 100); g.write(bytes(x ^ 0xFF for x in b))
PY
    echo "note: no h5py: corrupting by offset instead"; dd if=/dev/urandom of="$OUT/corrupt.h5" bs=1 count=64 seek=200000 conv=notrunc 2>/dev/null; }
head -c 100000 "$OUT/good/checkpoints/step_00000002.h5" >"$OUT/truncated.h5"
check() { # name expected-text args...
    local name=$1 want=$2; shift 2
    for np in 1 4; do
        local t0=$SECONDS
        out=$(timeout 120 mpirun -np $np "$BIN/dsv3" input/tiny.cfg parallel.expert_parallel=$np run.steps=4 \
              schedule.warmup_steps=1 checkpoint.every=0 run.output_dir="$OUT/run-$name" "$@" 2>&1)
        rc=$?
        n=$(echo "$out" | grep -c '^dsv3: ') # the failure happens before the run's banner: the only dsv3 line
        if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -eq 1 ] && echo "$out" | grep -q "$want"; then
            echo "ok   $name np=$np ($((SECONDS - t0))s): $(echo "$out" | grep '^dsv3: ')"
        else
            echo "FAIL $name np=$np: rc=$rc, $n error lines, want '$want'"; echo "$out" | grep -v '^-\|^ \|^$' | head -5; fail=1
        fi
    done
}
check missing "nonexistent.txt" 'data.train=({path="/nonexistent.txt";weight=1.0;})'
check truncated-u32 "trunc.u32" data.format=u32 "data.train=({path=\"$OUT/trunc.u32\";weight=1.0;})"
check id-too-big "big.u32" data.format=u32 "data.train=({path=\"$OUT/big.u32\";weight=1.0;})"
check empty "empty.txt" "data.train=({path=\"$OUT/empty.txt\";weight=1.0;})"
check zero-weights "weight = 0 is out of range" 'data.train=({path="/usr/share/games/fortunes/cookie";weight=0.0;})'
check corrupt-ckpt "embed_tokens" run.resume="$OUT/corrupt.h5"
check truncated-ckpt "truncated.h5" run.resume="$OUT/truncated.h5"
check missing-ckpt "nope.h5" run.resume="$OUT/nope.h5"
exit $fail
