#!/bin/bash
# make sft-demo, shortened (tools/sft-demo.sh with SFT_DEMO_*): a base pretrained
# for 200 steps (input/tiny.cfg), then LoRA and full fine-tuning for 100 steps on
# the upper-casing task made from fortune lines. Checks: the byte-level SFT data
# (dsv3-prep sft --tokenizer bytes: every sample is BOS, the chat template's bytes,
# the answer upper-cased and EOS; the loss mask on the answer and EOS only; train
# and held-out lines disjoint), both runs start from the same step-0 (base)
# validation, the held-out response loss of each run falls well below the base's
# (by >= 0.5 nats/byte; the full demo: 4.33 -> 2.51 LoRA, 1.84 full), the PNG and
# summary are written and the final LoRA adapters pass dsv3-verify.
. "$(dirname "$0")/lib.sh"
scratch_dir
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_hwloc_base_binding_policy=none OMP_NUM_THREADS=1
mpirun -np 2 "$BIN/dsv3" input/tiny.cfg parallel.expert_parallel=2 run.steps=200 checkpoint.every=200 \
    run.output_dir="\"$OUT/tiny\"" >"$OUT/tiny.log" 2>&1 || { tail -5 "$OUT/tiny.log"; echo "FAIL: pretraining the base"; exit 1; }
SFT_DEMO_BASE=$OUT/tiny/checkpoints/step_00000200.h5 SFT_DEMO_OUT=$OUT/sft \
    SFT_DEMO_ARGS="run.steps=100 validation.every=50 validation.batches=4" \
    tools/sft-demo.sh "$BIN" >"$OUT/demo.log" 2>&1 || { tail -20 "$OUT/demo.log"; echo "FAIL: tools/sft-demo.sh"; exit 1; }
fail=0
sed -n '/held-out response loss/,$p' "$OUT/demo.log"

# the prepared samples, from the .bin/.idx files (Python's standard library only)
/usr/bin/python3 - "$OUT/sft/data" <<'PYEOF' || fail=1
import json, struct, sys
d = sys.argv[1]
def read(prefix):  # Megatron MMIDIDX v1: sequences of uint16 ids / uint8 mask values
    idx = open(prefix + ".idx", "rb").read()
    dtype, n = idx[17], struct.unpack("<Q", idx[18:26])[0]
    sizes = struct.unpack("<%di" % n, idx[34:34 + 4 * n])
    width = {8: 2, 1: 1}[dtype]
    raw, out, at = open(prefix + ".bin", "rb").read(), [], 0
    for s in sizes:
        out.append(list(struct.unpack("<%d%s" % (s, "H" if width == 2 else "B"), raw[at:at + s * width])))
        at += s * width
    return out
lines = {}
for split in ("train", "heldout"):
    conv = [json.loads(l)["messages"] for l in open(f"{d}/{split}.jsonl")]
    ids, mask = read(f"{d}/{split}"), read(f"{d}/{split}.mask")
    assert len(ids) == len(mask) == len(conv), (split, len(ids), len(mask), len(conv))
    for k, (c, t, m) in enumerate(zip(conv, ids, mask)):
        line = c[0]["content"].split("Repeat in upper case: ", 1)[1]
        assert c[1]["content"] == line.upper() and 12 <= len(line) <= 36, (split, k, c)
        prompt = list(("<｜User｜>" + c[0]["content"] + "<｜Assistant｜>").encode())
        answer = list(line.upper().encode())
        assert t == [0] + prompt + answer + [1], (split, k, "ids")
        assert m == [0] * (1 + len(prompt)) + [1] * (len(answer) + 1), (split, k, "mask")
        assert len(t) <= 129, (split, k, len(t))  # fits train.seq_len 128 (+1 for the shift)
    lines[split] = {c[0]["content"] for c in conv}
assert not lines["train"] & lines["heldout"], "train and held-out share lines"
print(f"samples: {len(lines['train'])} train, {len(lines['heldout'])} held-out lines, disjoint; "
      "ids = BOS + template bytes + upper-cased answer + EOS, mask on answer + EOS")
PYEOF

# --tokenizer bytes: refused where it does not apply, with one line each
for bad in "pretrain --tokenizer bytes --input x --output $OUT/x" \
           "sft --tokenizer bytes --bos-id 300 --template deepseek-v3 --input x --output $OUT/x"; do
    # shellcheck disable=SC2086
    if "$BIN/dsv3-prep" $bad >/dev/null 2>"$OUT/bad.err" || ! head -1 "$OUT/bad.err" | grep -q 'bytes\|byte ids'; then
        echo "FAIL: dsv3-prep $bad: accepted, or no message naming the byte tokenizer: $(head -1 "$OUT/bad.err")"; fail=1
    fi
done

b=$(sed -n 's/^  base (demo pretrained) *0 *\([0-9.]*\).*/\1/p' "$OUT/sft/summary.txt")
for r in "LoRA SFT" "full fine-tuning"; do
    v=$(sed -n "s/^  $r *100 *\([0-9.]*\).*/\1/p" "$OUT/sft/summary.txt")
    if [ -n "$b" ] && [ -n "$v" ] && awk -v b="$b" -v v="$v" 'BEGIN { exit !(v < b - 0.5) }'; then
        echo "$r: held-out response loss $b (base) -> $v at step 100"
    else
        echo "FAIL: $r: held-out response loss '$v' not below the base's '$b' - 0.5"; fail=1
    fi
done
for f in sft-demo.png lora/metrics.csv full/metrics.csv lora/adapter_debug_info.json; do
    [ -s "$OUT/sft/$f" ] || { echo "FAIL: no $OUT/sft/$f"; fail=1; }
done
[ "$(head -c 8 "$OUT/sft/sft-demo.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
    { echo "FAIL: sft-demo.png is not a PNG"; fail=1; }
exit $fail
