#!/bin/bash
# Tokenizer throughput (a benchmark, never pass/fail): `dsv3-prep encode` on one thread vs the
# Hugging Face `tokenizers` library (pip, the pyenv python3) on the same JSON-lines text and
# tokenizer.json. Prints MB/s of UTF-8 text for both and checks that the ids agree.
#   tools/bench-tokenizer.sh [MB of text, default 20]
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
MB=${1:-20}
SHARED=${DSV3_SHARED:-}
[ -z "$SHARED" ] && for c in ../shared /work/shared; do [ -d "$c/data/tokenizer-deepseek-v3" ] && SHARED=$c && break; done
T=$SHARED/data/tokenizer-deepseek-v3/tokenizer.json
[ -r "$T" ] || { echo "bench-tokenizer: DeepSeek-V3 tokenizer not found (DSV3_SHARED)"; exit 1; }
W=$(mktemp -d /tmp/dsv3_bench_tok_XXXXXX)
trap 'rm -rf "$W"' EXIT
# text: fortunes (English) plus a multilingual/code share, one JSON line per document
/usr/bin/python3 - "$W/text.jsonl" "$MB" <<'EOF'
import json, random, sys
random.seed(1)
try:
    docs = open("/usr/share/games/fortunes/fortunes", encoding="utf-8", errors="replace").read().split("\n%\n")
except OSError:
    docs = ["The quick brown fox jumps over the lazy dog. " * 20]
docs += ["深度求索 DeepSeek-V3 是一个混合专家模型。日本語のテキストもあります。" * 5, "Здравствуй, мир! Привет, как дела? " * 10,
         "def f(x):\n    return x**2  # comment 12345\n" * 10, "émigré naïve café — “quotes” 😀👍🏽 " * 10]
target, n = int(sys.argv[2]) * 1_000_000, 0
with open(sys.argv[1], "w") as f:
    while n < target:
        d = random.choice(docs)
        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
        n += len(d.encode())
EOF
BYTES=$(/usr/bin/python3 -c "import json,sys; print(sum(len(json.loads(l)['text'].encode()) for l in open(sys.argv[1])))" "$W/text.jsonl")
echo "text: $BYTES bytes of UTF-8 in $(wc -l < "$W/text.jsonl") documents"
t0=$(date +%s.%N)
OMP_NUM_THREADS=1 "$BIN/dsv3-prep" encode --tokenizer "$T" < "$W/text.jsonl" > "$W/ours.jsonl"
t1=$(date +%s.%N)
echo "dsv3-prep encode (1 thread, incl. JSON in/out):  $(echo "$BYTES / ($t1 - $t0) / 1000000" | bc -l | xargs printf '%.2f') MB/s"
if python3 -c 'import tokenizers' 2>/dev/null; then
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 - "$T" "$W/text.jsonl" "$W/ours.jsonl" "$BYTES" <<'EOF'
import json, sys, time, tokenizers
from tokenizers import Tokenizer
tk = Tokenizer.from_file(sys.argv[1])
texts = [json.loads(l)["text"] for l in open(sys.argv[2])]
nbytes = int(sys.argv[4])
t0 = time.perf_counter()
ids = [tk.encode(t, add_special_tokens=False).ids for t in texts]
t1 = time.perf_counter()
print(f"HF tokenizers {tokenizers.__version__} Tokenizer.encode (1 thread, encode only): {nbytes / (t1 - t0) / 1e6:.2f} MB/s")
t0 = time.perf_counter()
tk.encode_batch(texts, add_special_tokens=False)
t1 = time.perf_counter()
print(f"HF tokenizers encode_batch (RAYON_NUM_THREADS=1):            {nbytes / (t1 - t0) / 1e6:.2f} MB/s")
ours = [json.loads(l)["ids"] for l in open(sys.argv[3])]
print("ids agree:", ours == ids)
EOF
else
    echo "HF tokenizers not installed in python3: comparison skipped"
fi
