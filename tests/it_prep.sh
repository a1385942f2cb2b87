#!/bin/bash
# dsv3-prep end to end: encode/decode round trip, pretrain -> Megatron .bin/.idx read by an
# independent numpy reader (and Megatron-LM's own IndexedDataset when megatron-core is
# installed), sft -> tokens + masks for Alpaca and messages lines checked against the
# DeepSeek-V3 chat template, malformed-line handling (stop/skip), truncation count.
. "$(dirname "$0")/lib.sh"
need_tokenizer
[ -x "$BIN/dsv3-prep" ] || { echo "FAIL: $BIN/dsv3-prep not built"; exit 1; }
PY=/usr/bin/python3
W=$(mktemp -d /tmp/dsv3_it_prep_XXXXXX)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
T=$TD/tokenizer.json

# ---- encode / decode round trip ----
$PY - "$W/texts.jsonl" <<'EOF'
import json, sys
texts = ["Hello, world!", "Здравствуй, мир", "深度求索 DeepSeek-V3 是一个混合专家模型。", "emoji 😀👍🏽 🇩🇪",
         "   spaces   and\ttabs\n\n", "a\r\nb\r\n", "digits 1234567 3.14", "<｜User｜>hi<｜Assistant｜>ok<｜end▁of▁sentence｜>", ""]
with open(sys.argv[1], "w") as f:
    for t in texts: f.write(json.dumps({"text": t}) + "\n")
EOF
"$BIN/dsv3-prep" encode --tokenizer "$T" < "$W/texts.jsonl" > "$W/ids.jsonl" || fail "encode"
"$BIN/dsv3-prep" decode --tokenizer "$T" < "$W/ids.jsonl" > "$W/back.jsonl" || fail "decode"
$PY - "$W/texts.jsonl" "$W/back.jsonl" <<'EOF' || fail "encode/decode round trip"
import json, sys
a = [json.loads(l)["text"] for l in open(sys.argv[1])]
b = [json.loads(l)["text"] for l in open(sys.argv[2])]
assert a == b, [(x, y) for x, y in zip(a, b) if x != y][:3]
print(f"round trip: {len(a)} texts")
EOF
printf '{"text": "ok"}\nnot json\n' | "$BIN/dsv3-prep" encode --tokenizer "$T" > /dev/null 2> "$W/err" && fail "encode accepted a malformed line"
grep -q 'stdin:2' "$W/err" || fail "encode error does not name line 2: $(cat "$W/err")"

# ---- pretrain: JSON lines + plain text split at '%' lines ----
$PY - "$W" <<'EOF'
import json, sys, random
random.seed(5)
w = sys.argv[1]
words = ["alpha", "beta", "γάμμα", "дельта", "深度", "😀", "1234", "  ", "\n", "end.", "CRLF\r\n"]
with open(w + "/a.jsonl", "w") as f:
    for i in range(300):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(random.randint(1, 60)))}) + "\n")
with open(w + "/b.txt", "w") as f:
    for i in range(50):
        f.write("fortune number %d\nsecond line %d\n%%\n" % (i, i * i))
    f.write("last one without separator")
EOF
"$BIN/dsv3-prep" pretrain --tokenizer "$T" --input "$W/a.jsonl" "$W/b.txt" --separator % --output "$W/pt" 2> "$W/pt.log" \
    || fail "pretrain: $(cat "$W/pt.log")"
cat "$W/pt.log"
grep -q '351 documents' "$W/pt.log" || fail "pretrain summary should count 351 documents"
grep -q 'MB/s' "$W/pt.log" || fail "pretrain summary lacks MB/s"
# expected ids: the same documents through dsv3-prep encode, EOS (1) appended
$PY - "$W" <<'EOF'
import json, sys
w = sys.argv[1]
docs = [json.loads(l)["text"] for l in open(w + "/a.jsonl")]
cur = ""
for line in open(w + "/b.txt", newline=""):
    if line.rstrip("\n") == "%":
        if cur: docs.append(cur)
        cur = ""
    else:
        cur += line
if cur: docs.append(cur)
with open(w + "/docs.jsonl", "w") as f:
    for d in docs: f.write(json.dumps({"text": d}) + "\n")
EOF
"$BIN/dsv3-prep" encode --tokenizer "$T" < "$W/docs.jsonl" > "$W/docs.ids" || fail "encode docs"
$PY - "$W/pt" "$W/docs.ids" <<'EOF' || fail "Megatron files do not match (independent numpy reader)"
import json, struct, sys
import numpy as np
prefix, idsf = sys.argv[1], sys.argv[2]
idx = open(prefix + ".idx", "rb").read()
assert idx[:9] == b"MMIDIDX\x00\x00", "magic"
version, = struct.unpack("<Q", idx[9:17]); assert version == 1
code = idx[17]; assert code == 4, f"dtype code {code}: vocab 128815 needs int32 (4)"
nseq, ndoc = struct.unpack("<QQ", idx[18:34])
off = 34
sizes = np.frombuffer(idx, np.int32, nseq, off); off += 4 * nseq
ptrs = np.frombuffer(idx, np.int64, nseq, off); off += 8 * nseq
docidx = np.frombuffer(idx, np.int64, ndoc, off); off += 8 * ndoc
assert off == len(idx), "trailing bytes in .idx"
assert list(docidx) == list(range(nseq + 1)), "document indices 0..n"
assert list(ptrs) == list(np.concatenate([[0], np.cumsum(sizes)[:-1] * 4])), "pointers"
data = np.fromfile(prefix + ".bin", np.int32)
assert len(data) == sizes.sum(), ".bin size"
want = [json.loads(l)["ids"] + [1] for l in open(idsf)]
assert nseq == len(want), (nseq, len(want))
for i, wv in enumerate(want):
    got = data[ptrs[i] // 4: ptrs[i] // 4 + sizes[i]].tolist()
    assert got == wv, (i, got[:10], wv[:10])
print(f"numpy reader: {nseq} documents, {len(data)} tokens match dsv3-prep encode + EOS")
EOF
# Megatron-LM's own reader (pip megatron-core, imports torch: ~10 s) when installed
python3 - "$W/pt" "$W/docs.ids" <<'EOF' 2>/dev/null
import json, sys, warnings
warnings.filterwarnings("ignore")
try:
    from megatron.core.datasets.indexed_dataset import IndexedDataset
except Exception:
    print("note: megatron-core not importable by python3 (pip install --no-deps megatron-core): Megatron-LM reader check skipped")
    sys.exit(0)
ds = IndexedDataset(sys.argv[1])
want = [json.loads(l)["ids"] + [1] for l in open(sys.argv[2])]
assert len(ds) == len(want) and len(ds.document_indices) == len(want) + 1
for i, wv in enumerate(want):
    assert ds[i].tolist() == wv, i
print(f"Megatron-LM IndexedDataset: {len(ds)} documents match")
EOF
[ $? -eq 0 ] || fail "Megatron-LM IndexedDataset disagrees"
# bad inputs: missing file; malformed JSON line stops (or is skipped)
"$BIN/dsv3-prep" pretrain --tokenizer "$T" --input "$W/none.jsonl" --output "$W/x" 2> "$W/err" && fail "missing input accepted"
grep -q 'none.jsonl: cannot open' "$W/err" || fail "missing input message: $(cat "$W/err")"
printf '{"text": "a"}\n{"txt": "b"}\n{"text": "c"}\n' > "$W/m.jsonl"
"$BIN/dsv3-prep" pretrain --tokenizer "$T" --input "$W/m.jsonl" --output "$W/m" 2> "$W/err" && fail "malformed pretrain line accepted"
grep -q 'm.jsonl:2' "$W/err" || fail "pretrain malformed line number: $(cat "$W/err")"
"$BIN/dsv3-prep" pretrain --tokenizer "$T" --input "$W/m.jsonl" --output "$W/m" --on-error skip 2> "$W/err" || fail "skip mode"
grep -q '2 documents' "$W/err" || fail "skip mode should keep 2 documents: $(cat "$W/err")"

# ---- sft: Alpaca and messages lines ----
$PY - "$W/sft.jsonl" <<'EOF'
import json, sys
rows = [
  {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
  {"instruction": "Say hi.", "input": "", "output": "Hi! 😀"},
  {"messages": [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, of course."}]},
  {"messages": [{"role": "user", "content": "深度求索是什么？"}, {"role": "assistant", "content": "一家公司。"}]},
  {"instruction": "Long one.", "output": " ".join(["word"] * 400)},
]
with open(sys.argv[1], "w") as f:
    for r in rows[:2]: f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.write("{broken json\n")
    for r in rows[2:4]: f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.write(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    f.write(json.dumps(rows[4]) + "\n")
json.dump(rows[:4] + rows[4:], open(sys.argv[1] + ".rows", "w"), ensure_ascii=False)
EOF
"$BIN/dsv3-prep" sft --tokenizer "$T" --template deepseek-v3 --input "$W/sft.jsonl" --output "$W/sft" 2> "$W/err" \
    && fail "sft accepted a malformed line in stop mode"
grep -q 'sft.jsonl:3' "$W/err" || fail "sft error does not name line 3: $(cat "$W/err")"
"$BIN/dsv3-prep" sft --tokenizer "$T" --template deepseek-v3 --input "$W/sft.jsonl" --output "$W/sft" \
    --max-len 256 --on-error skip 2> "$W/sft.log" || fail "sft skip mode: $(cat "$W/sft.log")"
cat "$W/sft.log"
grep -q 'sft.jsonl:6: no assistant message' "$W/sft.log" || fail "no-assistant line not reported"
grep -q '5 samples' "$W/sft.log" || fail "sft should keep 5 samples"
grep -q '1 truncated to 256' "$W/sft.log" || fail "sft truncation count"
grep -q '2 malformed line(s) skipped' "$W/sft.log" || fail "sft malformed count"
before=$(md5sum "$W"/sft.bin "$W"/sft.idx "$W"/sft.mask.bin "$W"/sft.mask.idx)
"$BIN/dsv3-prep" sft --tokenizer "$T" --template deepseek-v3 --input "$W/sft.jsonl" --output "$W/sft" 2>/dev/null && fail "stop mode"
[ "$before" = "$(md5sum "$W"/sft.bin "$W"/sft.idx "$W"/sft.mask.bin "$W"/sft.mask.idx)" ] || fail "a stopped run damaged the existing output"
ls "$W"/*.tmp 2>/dev/null && fail "a stopped run left temporary files"
"$BIN/dsv3-prep" sft --tokenizer "$T" --template chatml --input "$W/sft.jsonl" --output "$W/x" 2>/dev/null && fail "unknown template accepted"
# expected: render each row with the template, segments through dsv3-prep encode
$PY - "$W" <<'EOF'
import json, sys
w = sys.argv[1]
rows = json.load(open(w + "/sft.jsonl.rows"))
segs = []  # per row: list of (text or special, trained)
for r in rows:
    s = [("<BOS>", 0)]
    if "messages" in r:
        sys_p = "\n\n".join(m["content"] for m in r["messages"] if m["role"] == "system")
        if sys_p: s.append((sys_p, 0))
        for m in r["messages"]:
            if m["role"] == "user": s += [("<｜User｜>", 0), (m["content"], 0)]
            if m["role"] == "assistant": s += [("<｜Assistant｜>", 0), (m["content"], 1), ("<EOS>", 1)]
    else:
        u = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        s += [("<｜User｜>", 0), (u, 0), ("<｜Assistant｜>", 0), (r["output"], 1), ("<EOS>", 1)]
    segs.append(s)
json.dump(segs, open(w + "/segs.json", "w"), ensure_ascii=False)
with open(w + "/segs.jsonl", "w") as f:
    for s in segs:
        for t, _ in s:
            f.write(json.dumps({"text": {"<BOS>": "<｜begin▁of▁sentence｜>", "<EOS>": "<｜end▁of▁sentence｜>"}.get(t, t)}) + "\n")
    # whole rendered strings too: encoding them at once must give the same ids
    for s in segs:
        f.write(json.dumps({"text": "".join({"<BOS>": "<｜begin▁of▁sentence｜>", "<EOS>": "<｜end▁of▁sentence｜>"}.get(t, t) for t, _ in s)}) + "\n")
EOF
"$BIN/dsv3-prep" encode --tokenizer "$T" < "$W/segs.jsonl" > "$W/segs.ids" || fail "encode segments"
$PY - "$W" <<'EOF' || fail "sft tokens/masks"
import json, sys
import numpy as np
w = sys.argv[1]
segs = json.load(open(w + "/segs.json"))
ids = [json.loads(l)["ids"] for l in open(w + "/segs.ids")]
def read(prefix, dt):
    import struct
    idx = open(prefix + ".idx", "rb").read()
    nseq, = struct.unpack("<Q", idx[18:26])
    sizes = np.frombuffer(idx, np.int32, nseq, 34)
    data = np.fromfile(prefix + ".bin", dt)
    out, o = [], 0
    for s in sizes: out.append(data[o:o + s].tolist()); o += s
    return out, idx[17]
toks, code = read(w + "/sft", np.int32)
masks, mcode = read(w + "/sft.mask", np.uint8)
assert code == 4 and mcode == 1, (code, mcode)
k = 0
for i, s in enumerate(segs):
    et, em = [], []
    for t, trained in s:
        et += ids[k]; em += [trained] * len(ids[k]); k += 1
    whole = ids[sum(len(x) for x in segs) + i]
    assert whole == et, f"row {i}: segment-wise ids differ from encoding the rendered template"
    et, em = et[:256], em[:256]
    assert toks[i] == et, (i, toks[i][:20], et[:20])
    assert masks[i] == em, (i, masks[i], em)
    assert et[0] == 0 and (len(et) == 256 or et[-1] == 1)
print(f"sft: {len(segs)} samples (Alpaca + messages), tokens and assistant-only masks as expected")
EOF
# the real chat_template (jinja) from tokenizer_config.json, when jinja2 + tokenizers are available
if python3 -c 'import jinja2, tokenizers' 2>/dev/null; then
    python3 - "$W" "$TD" <<'EOF' || fail "sft tokens differ from the jinja-rendered chat_template"
import json, sys, jinja2
from tokenizers import Tokenizer
w, td = sys.argv[1], sys.argv[2]
cfg = json.load(open(td + "/tokenizer_config.json"))
tpl = jinja2.Environment().from_string(cfg["chat_template"])
tk = Tokenizer.from_file(td + "/tokenizer.json")
rows = json.load(open(w + "/sft.jsonl.rows"))
import struct, numpy as np
idx = open(w + "/sft.idx", "rb").read()
nseq, = struct.unpack("<Q", idx[18:26])
sizes = np.frombuffer(idx, np.int32, nseq, 34)
data = np.fromfile(w + "/sft.bin", np.int32)
o = 0
for r, s in zip(rows, sizes):
    msgs = r.get("messages") or [{"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")},
                                 {"role": "assistant", "content": r["output"]}]
    text = tpl.render(messages=msgs, bos_token=cfg["bos_token"]["content"], add_generation_prompt=False)
    ref = tk.encode(text, add_special_tokens=False).ids[:256]
    assert data[o:o + s].tolist() == ref, r
    o += s
print(f"sft: {nseq} samples equal HF tokenizers on the jinja-rendered chat_template")
EOF
else
    echo "note: jinja2/tokenizers not in python3: chat_template cross-check skipped"
fi
echo "it_prep: all checks passed"
