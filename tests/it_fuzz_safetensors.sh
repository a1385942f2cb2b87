#!/bin/bash
# A short libFuzzer run (FUZZ_SECONDS, default 20 s) of the safetensors reader
# (tools/fuzz/fuzz_safetensors.c: st_open_mem, then st_read of every tensor;
# ASan + UBSan) from the seed corpus tests/fuzz/safetensors/ (copied: new
# inputs go to a scratch corpus). Fails on any crash, leak, timeout or abort;
# prints the executions. The long run is in tools/bench.sh (make bench).
. "$(dirname "$0")/lib.sh"
F=${FUZZ:-build/fuzz/fuzz_safetensors}
[ -x "$F" ] || { echo "skip: $F not built (make fuzz; needs clang and libclang-rt-14-dev: make deps)"; exit 77; }
scratch_dir
mkdir -p "$OUT/corpus"
"$F" -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=1024 -timeout=10 -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="$OUT/" "$OUT/corpus" tests/fuzz/safetensors >"$OUT/fuzz.log" 2>&1
rc=$?
execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$OUT/fuzz.log")
grep -E "^(INFO: seed corpus|#[0-9]+ *DONE|Done )" "$OUT/fuzz.log"
if [ $rc -ne 0 ] || ls "$OUT"/crash-* "$OUT"/leak-* "$OUT"/timeout-* "$OUT"/oom-* >/dev/null 2>&1; then
    tail -n 40 "$OUT/fuzz.log"
    for a in "$OUT"/crash-* "$OUT"/leak-* "$OUT"/timeout-* "$OUT"/oom-*; do [ -f "$a" ] && { echo "input $(basename "$a") (base64):"; base64 "$a" | head -20; }; done
    echo "FAIL: fuzz_safetensors (rc $rc) after ${execs:-?} executions"
    exit 1
fi
echo "fuzz_safetensors: ${execs:-?} executions in ${FUZZ_SECONDS:-20} s, corpus $(ls "$OUT/corpus" | wc -l) new inputs, no crash"
