#!/bin/bash
# dsv3-prep encode/decode against the Hugging Face `tokenizers` library (the authority) on
# multilingual text, emoji, whitespace runs, digits, CRLF, special tokens and random Unicode.
# `tokenizers` from the project virtualenv (make deps; tests/lib.sh need_venv); skips
# when the DeepSeek-V3 tokenizer is absent.
. "$(dirname "$0")/lib.sh"
need_tokenizer
need_venv tokenizers
[ -x "$BIN/dsv3-prep" ] || { echo "FAIL: $BIN/dsv3-prep not built"; exit 1; }
W=$(mktemp -d /tmp/dsv3_it_tok_XXXXXX)
trap 'rm -rf "$W"' EXIT
"$PY" - "$W/texts.jsonl" <<'EOF'
import json, random, sys
random.seed(20240601)
texts = [
 "Hello world", "  multiple   spaces\t\ttabs\n\n\nnewlines  ", "a\r\nb\r\n\r\nc\rd", "\r\n\r\n  \r\n", "trailing \r\n \n",
 "1234567890 12 123 1234 3.14159 1,000,000 ١٢٣٤٥ ๑๒๓ ²³ ½ ⅷ", "Здравствуй, мир! Привет", "مرحبا بالعالم", "שלום עולם",
 "नमस्ते दुनिया", "こんにちは世界、カタカナとひらがな。ｶﾀｶﾅ", "你好，世界！深度求索", "안녕하세요 세계", "ελληνικά κείμενα", "ไทย ภาษา",
 "emoji 😀😃😄 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪 ❤️ 👍🏽", "code: for (int i=0;i<10;i++) { x += y[i]; }", "    def f():\n        return 1\n",
 "<｜User｜>hi<｜Assistant｜>hello<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜><｜begin▁of▁sentence｜>", "<think>x</think> <|im_start|>",
 "ends with space ", " ", "", "\n", "\t", "\u00a0nbsp\u00a0 \u2003em\u3000ideo", "zero\u200bwidth", "combining e\u0301 a\u0308 \u0915\u094d\u0937",
 "URL https://example.com/path?q=1&r=2#frag", "email foo.bar@baz.org", "MiXeD CaSe WORDS", "'s 't 're 've 'm 'll 'd", "don't won't it's",
 "!!!??? ... --- ___ *** ### $$$ %%%", "\"quoted\" 'single' «guillemets» „low“", "math ∑∫√∞≠≤≥ ±×÷", "x" * 300, " " * 100 + "y", "ab" * 200,
 "\x00nul\x01ctl\x7f", "tab\there\vvt\fff", "word\u2028line\u2029para\u0085nel", "😀" * 50, "9" * 100,
]
alphabet = ("abcXYZ 019\t\n\r.,!?'\"-_()[]{}<>/\\|@#$%^&*~`" + "éüßçøå" + "中文日本語カタカナひらがな" + "한국어" + "ру" + "عربى" +
            "१२३" + "😀👍🏽" + "\u0301\u0308\u200b\u00a0\u3000\u2003" + "½²" + "<｜User｜>")
for _ in range(1500):
    texts.append("".join(random.choice(alphabet) for _ in range(random.randint(1, 80))))
for _ in range(500):
    texts.append("".join(chr(random.choice([random.randint(32, 0x2fff), random.randint(0x3000, 0xd7ff), random.randint(0xe000, 0xffff),
                                            random.randint(0x10000, 0x1fbff)])) for _ in range(random.randint(1, 30))))
try:
    t = open("/usr/share/games/fortunes/fortunes", encoding="utf-8", errors="replace").read()
    texts += t.split("\n%\n")
except OSError:
    pass
with open(sys.argv[1], "w") as f:
    for t in texts: f.write(json.dumps({"text": t}) + "\n")
EOF
"$BIN/dsv3-prep" encode --tokenizer "$TD/tokenizer.json" < "$W/texts.jsonl" > "$W/ours.jsonl" || { echo "FAIL: encode"; exit 1; }
"$BIN/dsv3-prep" decode --tokenizer "$TD/tokenizer.json" < "$W/ours.jsonl" > "$W/dec.jsonl" || { echo "FAIL: decode"; exit 1; }
"$PY" - "$TD/tokenizer.json" "$W/texts.jsonl" "$W/ours.jsonl" "$W/dec.jsonl" "$TD/golden-encodings.json" <<'EOF'
import json, sys
from tokenizers import Tokenizer
tk = Tokenizer.from_file(sys.argv[1])
texts = [json.loads(l)["text"] for l in open(sys.argv[2])]
ours = [json.loads(l)["ids"] for l in open(sys.argv[3])]
dec = [json.loads(l)["text"] for l in open(sys.argv[4])]
assert len(texts) == len(ours) == len(dec)
bad = 0
for t, o, d in zip(texts, ours, dec):
    ref = tk.encode(t, add_special_tokens=False).ids
    if ref != o:
        bad += 1
        if bad <= 5: print("ENCODE MISMATCH", repr(t[:200]), "\n  hf  ", ref[:40], "\n  ours", o[:40])
    if d != tk.decode(o, skip_special_tokens=False) or d != t:
        bad += 1
        if bad <= 5: print("DECODE MISMATCH", repr(t[:200]), repr(d[:200]))
# golden file vs the library: report any disagreement (the library is the authority)
for e in json.load(open(sys.argv[5])):
    if tk.encode(e["text"], add_special_tokens=False).ids != e["ids"]:
        print("NOTE: golden file and tokenizers disagree on", repr(e["text"][:120]))
print(f"{len(texts)} texts: {bad} mismatches against tokenizers {__import__('tokenizers').__version__}")
sys.exit(1 if bad else 0)
EOF
