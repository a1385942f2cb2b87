#!/bin/bash
# make sft-demo: supervised fine-tuning of the pretrained demo model (make demo,
# input/tiny.cfg) on an instruction task made from Debian's fortunes text, LoRA
# and full fine-tuning side by side on the same data, with 2 MPI ranks (EP 2).
#
# Task: "Repeat in upper case: <line>" -> the line in upper case, for the
# printable-ASCII fortune lines of 12..36 bytes of the demo's pretraining files
# (unique, leading/trailing blanks stripped), in file order; every 8th line is
# held out (validation), the rest is the training set: disjoint, deterministic.
# Rendered with DeepSeek-V3's chat template by `dsv3-prep sft --tokenizer bytes`
# (the toy model is byte-level); the loss mask keeps the assistant tokens only,
# so the validation loss is the held-out response loss. The step-0 validation
# (before any update) is the base model's level.
#
# Writes runs/sft-demo/: data/ (jsonl + prepared samples), lora/ and full/
# (metrics.csv, logs; lora/checkpoints: the final adapters + PEFT directory),
# sft-demo.png (held-out response loss and next-token accuracy, both runs, the
# base model as a dashed line) and summary.txt (the table printed at the end).
#
# Environment: NP (ranks, default 2); SFT_DEMO_OUT (default runs/sft-demo);
# SFT_DEMO_BASE (the base checkpoint; default make demo's last one, made by
# running make demo when missing); SFT_DEMO_ARGS (deck overrides for both runs,
# e.g. "run.steps=100 validation.every=50 checkpoint.every=100").
set -euo pipefail
BIN=${1:-bin}
cd "$(dirname "$0")/.."
. tools/mpi-env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
NP=${NP:-2}
OUT=${SFT_DEMO_OUT:-runs/sft-demo}
BASE=${SFT_DEMO_BASE:-runs/tiny/checkpoints/step_00000600.h5}
ARGS=${SFT_DEMO_ARGS:-}
FORTUNES=/usr/share/games/fortunes
FILES="fortunes cookie computers literature wisdom people science" # input/tiny.cfg's sources
die() { echo "make sft-demo: error: $*" >&2; exit 1; }

for b in dsv3 dsv3-prep dsv3-verify plot-loss; do [ -x "$BIN/$b" ] || die "$BIN/$b is not built (make)"; done
for f in $FILES; do [ -r "$FORTUNES/$f" ] || die "$FORTUNES/$f missing (Debian package fortunes: make deps)"; done

# 1. the base: make demo's pretrained checkpoint
if [ ! -f "$BASE" ]; then
    [ -z "${SFT_DEMO_BASE:-}" ] || die "SFT_DEMO_BASE=$BASE: no such checkpoint"
    echo "make sft-demo: no pretrained demo model ($BASE): running make demo first"
    tools/demo.sh "$BIN"
    [ -f "$BASE" ] || die "make demo did not write $BASE"
fi

# 2. the task's data
mkdir -p "$OUT/data"
D=$OUT/data
for f in $FILES; do cat "$FORTUNES/$f"; done |
    LC_ALL=C awk -v train="$D/train.jsonl" -v held="$D/heldout.jsonl" '
        { sub(/^[ \t]+/, ""); sub(/[ \t\r]+$/, "") }
        length($0) < 12 || length($0) > 36 || !/[a-z]/ || /[^ -~]/ || seen[$0]++ { next }
        { n++; s = $0; gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s)
          printf "{\"messages\": [{\"role\": \"user\", \"content\": \"Repeat in upper case: %s\"}, " \
                 "{\"role\": \"assistant\", \"content\": \"%s\"}]}\n", s, toupper(s) > (n % 8 == 0 ? held : train) }'
echo "make sft-demo: task \"Repeat in upper case: <fortune line>\" -> the line upper-cased:" \
     "$(wc -l <"$D/train.jsonl") training, $(wc -l <"$D/heldout.jsonl") held-out lines ($D/*.jsonl)"
for s in train heldout; do
    "$BIN/dsv3-prep" sft --tokenizer bytes --template deepseek-v3 --input "$D/$s.jsonl" --output "$D/$s" 2>"$D/$s.prep.log" ||
        { cat "$D/$s.prep.log" >&2; die "dsv3-prep sft on $D/$s.jsonl"; }
done

# 3. LoRA and full fine-tuning, same deck, data and schedule
common=(input/sft-demo.cfg parallel.expert_parallel="$NP" run.init_from="\"$BASE\""
        "data.train=({path=\"$D/train\";weight=1.0;})" "validation.valid=({path=\"$D/heldout\";weight=1.0;})")
declare -A WALL
run() { # name, overrides...
    local name=$1 t0=$EPOCHREALTIME; shift
    rm -rf "${OUT:?}/$name"
    echo "make sft-demo: $name: mpirun -np $NP $BIN/dsv3 ${common[0]} $* $ARGS"
    # shellcheck disable=SC2086
    mpirun -np "$NP" "$BIN/dsv3" "${common[@]}" run.output_dir="\"$OUT/$name\"" "$@" $ARGS >"$OUT/$name.log" 2>&1 ||
        { tail -n 20 "$OUT/$name.log" >&2; die "the $name run failed (log: $OUT/$name.log)"; }
    grep -E '^step|^dsv3: (validation at step 0|sft \|)' "$OUT/$name.log" | sed "s/^/  $name: /"
    WALL[$name]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
}
run lora
run full lora.enabled=false optimizer.lr=2e-3 checkpoint.save='"full"' checkpoint.every=0
if ls "$OUT"/lora/checkpoints/step_*.h5 >/dev/null 2>&1; then
    "$BIN/dsv3-verify" "$OUT/lora" >"$OUT/lora/verify.log" 2>&1 ||
        { cat "$OUT/lora/verify.log" >&2; die "dsv3-verify $OUT/lora"; }
    echo "make sft-demo: lora: dsv3-verify: $(tail -n 1 "$OUT/lora/verify.log")"
fi

# 4. the table and the plot
base_of() { sed -n 's/^dsv3: validation at step 0 (before training): loss \([0-9.]*\), next-token accuracy \([0-9.]*\)%.*/\1 \2/p' "$1"; }
last_val() { # metrics.csv -> "step val_loss val_acc" of the last evaluated step
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
             $c["val_loss"] != "" { s = $1; l = $c["val_loss"]; a = $c["val_acc"] }
             END { if (s == "") exit 1; printf "%d %.4f %.2f\n", s, l, 100 * a }' "$1"
}
trainable() { sed -n 's/.* parameters (\([0-9]*\) trainable).*/\1/p' "$1"; }
tok_s() { # metrics.csv -> median tokens/s of the steps (robust to other jobs on the cores)
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "tok_per_s") c = i; next } { print $c }' "$1" | sort -n |
        awk '{ v[NR] = $1 } END { printf "%.0f\n", NR ? v[int((NR + 1) / 2)] : 0 }'
}
read -r b_loss b_acc < <(base_of "$OUT/lora.log") || die "no step-0 validation in $OUT/lora.log"
read -r f0_loss _ < <(base_of "$OUT/full.log") || die "no step-0 validation in $OUT/full.log"
[ "$b_loss" = "$f0_loss" ] || die "the two runs start from different base losses ($b_loss, $f0_loss)"
read -r l_step l_loss l_acc < <(last_val "$OUT/lora/metrics.csv") || die "no validation rows in $OUT/lora/metrics.csv"
read -r f_step f_loss f_acc < <(last_val "$OUT/full/metrics.csv") || die "no validation rows in $OUT/full/metrics.csv"
{
    echo "make sft-demo: held-out response loss (nats/byte over the assistant tokens of the validation batches)," \
         "next-token accuracy (argmax = target, teacher-forced); tok/s: median over the steps"
    printf '  %-22s %6s %9s %11s %10s %8s %7s\n' model step "val loss" "accuracy %" trainable "tok/s" "wall s"
    printf '  %-22s %6s %9s %11s %10s %8s %7s\n' "base (demo pretrained)" 0 "$b_loss" "$b_acc" - - -
    printf '  %-22s %6s %9s %11s %10s %8s %7s\n' "LoRA SFT" "$l_step" "$l_loss" "$l_acc" "$(trainable "$OUT/lora.log")" \
        "$(tok_s "$OUT/lora/metrics.csv")" "${WALL[lora]}"
    printf '  %-22s %6s %9s %11s %10s %8s %7s\n' "full fine-tuning" "$f_step" "$f_loss" "$f_acc" "$(trainable "$OUT/full.log")" \
        "$(tok_s "$OUT/full/metrics.csv")" "${WALL[full]}"
} | tee "$OUT/summary.txt"
"$BIN/plot-loss" -o "$OUT/sft-demo.png" -c val_loss,val_acc -k "center right" -t "held-out response (upper-casing fortune lines)" \
    -H "val_loss:base model=$b_loss" -H "val_acc:base model=$(awk -v a="$b_acc" 'BEGIN { print a / 100 }')" \
    "LoRA=$OUT/lora/metrics.csv" "full fine-tuning=$OUT/full/metrics.csv" >/dev/null ||
    die "plot-loss could not draw $OUT/sft-demo.png"
echo "make sft-demo: curves in $OUT/sft-demo.png, metrics in $OUT/{lora,full}/metrics.csv"
