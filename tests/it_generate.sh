#!/bin/bash
# Generation: bin/dsv3-generate (src/generate.c; the absorbed-MLA latent cache, src/model/mla_decode.c).
#   - transformers' greedy generate of the YaRN tiny model of tests/fixtures/hf (committed fixture,
#     tools/reference/make_generate_fixture.py; prompts up to 251 tokens + 32 new, past the original
#     context 256): token for token, per-step logits rel L2 <= 1e-5; at np 1 and np 2 (EP 2)
#   - sampling with a fixed seed (temperature, top-p, top-k): the same ids at np 1 and np 2;
#     another seed gives other ids; top-k 1 is greedy
#   - a trained byte-level toy (input/tiny.cfg): text prompts in, text out; its LoRA run saved
#     adapters only: base (run.init_from) + adapters merged, not the base's continuation
#   - MTP drafts (--mtp-draft, self-speculative greedy): the greedy ids, drafts accepted and
#     rejected (toy, np 2); against transformers' fixture too
#   - run.mode = "eval" on the toy's checkpoint: the validation loss its training run logged, at
#     np 1, np 2 with EP 2 and np 2 with EP 1 (data parallel)
#   - the DeepSeek-V3 tokenizer (../shared, else skipped): chat messages give exactly the chat
#     template's rendering plus the generation prompt; text prompts get bos
#   - bad input, one line and a non-zero exit each: a prompt longer than the context, an
#     unknown chat role (needs the DeepSeek-V3 tokenizer of ../shared), a base checkpoint
#     whose config does not match the adapters'
. "$(dirname "$0")/lib.sh"
scratch_dir
FX=tests/fixtures/hf
fails=0
bad() { echo "FAIL  $*"; fails=$((fails + 1)); }
ok() { echo "ok    $*"; }
ids_of() { grep -o '"ids":\[[^]]*\]' "$1"; }
G=$BIN/dsv3-generate

"$BIN/dsv3-import" -q "$FX/fp32" "$OUT/tiny.h5" >"$OUT/import.log" 2>&1 || { cat "$OUT/import.log"; exit 1; }

echo "== greedy generation against transformers (fixture $FX/generate.safetensors)"
for np in 1 2; do
    if mpirun -np $np "$G" -q --reference "$FX/generate.safetensors" "$OUT/tiny.h5" >"$OUT/ref$np.log" 2>&1; then
        ok "np $np: $(grep -o 'equal token.*PASS' "$OUT/ref$np.log")"
    else bad "np $np against transformers"; cat "$OUT/ref$np.log"; fi
done
grep -o 'decode .*bytes/token' "$OUT/ref1.log" | sed 's/^/      /'
TPY=${DSV3_TORCH_PYTHON:-python3}
if "$TPY" -c "import torch, transformers" 2>/dev/null; then # optional: transformers here, the fixture made afresh
    if "$TPY" tools/reference/make_generate_fixture.py -o "$OUT/fresh.safetensors" >"$OUT/fresh.log" 2>&1 &&
       "$G" -q --reference "$OUT/fresh.safetensors" "$OUT/tiny.h5" >"$OUT/fresh-ref.log" 2>&1; then
        ok "fixture regenerated with $TPY's transformers: $(grep -o 'equal token.*PASS' "$OUT/fresh-ref.log")"
    else bad "against a freshly generated fixture"; tail -3 "$OUT/fresh.log" "$OUT/fresh-ref.log"; fi
else
    echo "note  no torch/transformers in $TPY (DSV3_TORCH_PYTHON): the committed fixture was checked, not regenerated"
fi

echo "== sampling: seeded, the same at np 1 and np 2"
printf '[5, 6, 7, 8, 9]\n{"ids": [100, 20, 30]}\n[200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210]\n' >"$OUT/p.jsonl"
S=(--ids "$OUT/p.jsonl" --max-new-tokens 24 --temperature 0.9 --top-p 0.95 --top-k 40 --no-eos -q)
mpirun -np 1 "$G" "${S[@]}" --seed 7 --json "$OUT/s7-1.jsonl" "$OUT/tiny.h5" 2>"$OUT/s.log" &&
    mpirun -np 2 "$G" "${S[@]}" --seed 7 --batch 2 --json "$OUT/s7-2.jsonl" "$OUT/tiny.h5" 2>>"$OUT/s.log" &&
    mpirun -np 1 "$G" "${S[@]}" --seed 8 --json "$OUT/s8-1.jsonl" "$OUT/tiny.h5" 2>>"$OUT/s.log" &&
    mpirun -np 1 "$G" --ids "$OUT/p.jsonl" --max-new-tokens 24 --no-eos -q --json "$OUT/g.jsonl" "$OUT/tiny.h5" 2>>"$OUT/s.log" &&
    mpirun -np 1 "$G" --ids "$OUT/p.jsonl" --max-new-tokens 24 --no-eos -q --temperature 1 --top-k 1 --seed 3 \
        --json "$OUT/k1.jsonl" "$OUT/tiny.h5" 2>>"$OUT/s.log" || { bad "sampling runs"; cat "$OUT/s.log"; }
n=$(ids_of "$OUT/s7-1.jsonl" | wc -l)
if [ "$n" = 3 ] && cmp -s <(ids_of "$OUT/s7-1.jsonl") <(ids_of "$OUT/s7-2.jsonl"); then
    ok "seed 7: np 1 (batch 8) and np 2 (EP 2, batch 2) draw the same $n x 24 ids"
else bad "seed 7 at np 1 and np 2 differ ($n sequences)"; diff <(ids_of "$OUT/s7-1.jsonl") <(ids_of "$OUT/s7-2.jsonl"); fi
cmp -s <(ids_of "$OUT/s7-1.jsonl") <(ids_of "$OUT/s8-1.jsonl") && bad "seeds 7 and 8 gave the same ids" ||
    ok "seed 8 draws other ids than seed 7"
cmp -s <(ids_of "$OUT/s7-1.jsonl") <(ids_of "$OUT/g.jsonl") && bad "sampling at temperature 0.9 gave the greedy ids" ||
    ok "sampled ids differ from the greedy ones"
cmp -s <(ids_of "$OUT/k1.jsonl") <(ids_of "$OUT/g.jsonl") && ok "top-k 1 at temperature 1 = greedy" ||
    bad "top-k 1 is not greedy"
grep -q '"logprobs":\[-' "$OUT/g.jsonl" && ok "JSON lines carry per-token log-probabilities: $(head -c 150 "$OUT/g.jsonl")..." ||
    bad "no logprobs in the JSON output"

yes 9 | head -n 1020 | paste -sd, | sed 's/^/[/; s/$/]/' >"$OUT/edge.jsonl"
if "$G" --ids "$OUT/edge.jsonl" --max-new-tokens 10 --no-eos -q --json "$OUT/edge.out" "$OUT/tiny.h5" 2>"$OUT/edge.err" &&
   grep -q '"stop":"context"' "$OUT/edge.out" && [ "$(ids_of "$OUT/edge.out" | tr -cd , | wc -c)" = 4 ]; then
    ok "a 1020-token prompt stops at the 1024-position context after 5 new tokens (stop \"context\")"
else bad "context end"; cat "$OUT/edge.err"; ids_of "$OUT/edge.out"; fi

echo "== a trained byte-level toy; LoRA adapters on its base"
TOY=(input/tiny.cfg run.steps=30 schedule.warmup_steps=0 run.log_every=30 checkpoint.every=30 validation.batches=2
     'validation.valid=({ path = "/usr/share/games/fortunes/wisdom"; weight = 1.0; })')
mpirun -np 2 "$BIN/dsv3" "${TOY[@]}" validation.every=30 parallel.expert_parallel=2 run.output_dir="$OUT/toy" >"$OUT/toy.log" 2>&1 ||
    { bad "toy training"; tail -3 "$OUT/toy.log"; }
BASE=$OUT/toy/checkpoints/step_00000030.h5
mpirun -np 1 "$BIN/dsv3" "${TOY[@]}" run.steps=10 checkpoint.every=10 run.output_dir="$OUT/lora" run.mode=finetune \
    run.init_from="$BASE" lora.enabled=true 'lora.targets=["self_attn.q_a_proj","self_attn.kv_b_proj","self_attn.o_proj"]' \
    lora.alpha=64.0 optimizer.lr=3e-2 checkpoint.save=adapters >"$OUT/lora.log" 2>&1 || { bad "LoRA run"; tail -3 "$OUT/lora.log"; }
AD=$OUT/lora/checkpoints/step_00000010.h5
if mpirun -np 2 "$G" --prompt "The " --prompt "A fool" --max-new-tokens 40 "$BASE" >"$OUT/toy.txt" 2>"$OUT/toy.err" &&
   [ "$(grep -c '^=== ' "$OUT/toy.txt")" = 2 ]; then
    ok "toy, np 2: text in, text out: $(sed -n 2p "$OUT/toy.txt" | head -c 60 | tr -d '\n')"
else bad "text generation from the toy"; cat "$OUT/toy.err"; fi
if mpirun -np 1 "$G" --prompt "The " --max-new-tokens 40 --json "$OUT/ad.jsonl" -q "$AD" 2>"$OUT/ad.err" &&
   mpirun -np 1 "$G" --prompt "The " --max-new-tokens 40 --json "$OUT/b.jsonl" -q "$BASE" 2>>"$OUT/ad.err"; then
    cmp -s <(ids_of "$OUT/ad.jsonl") <(ids_of "$OUT/b.jsonl") && bad "base + adapters continue exactly as the base alone" ||
        ok "adapters-only checkpoint on its run.init_from base, LoRA merged: a continuation other than the base's"
else bad "generation from base + adapters"; cat "$OUT/ad.err"; fi

echo "== MTP drafts (self-speculative greedy decoding): the greedy output, fewer passes"
P3=(--prompt "The " --prompt "A fool" --prompt "Q: " --max-new-tokens 50 --no-eos -q)
if mpirun -np 1 "$G" "${P3[@]}" --json "$OUT/plain.jsonl" "$BASE" 2>"$OUT/mtp.err" &&
   mpirun -np 2 "$G" "${P3[@]}" --mtp-draft --json "$OUT/mtp.jsonl" "$BASE" 2>>"$OUT/mtp.err" &&
   cmp -s <(ids_of "$OUT/plain.jsonl") <(ids_of "$OUT/mtp.jsonl"); then
    acc=$(sed -n 's/.*MTP drafts: \([0-9]*\) of \([0-9]*\) accepted.*/\1 \2/p' "$OUT/mtp.err")
    set -- $acc
    [ "${1:-0}" -gt 0 ] && [ "$1" -lt "$2" ] && ok "toy, np 2: = greedy ids; $(grep -o 'MTP drafts.*' "$OUT/mtp.err")" ||
        bad "MTP drafts: want some accepted and some rejected, got '$acc'"
else bad "MTP drafts differ from greedy"; cat "$OUT/mtp.err"; fi
if "$G" -q --mtp-draft --reference "$FX/generate.safetensors" "$OUT/tiny.h5" >"$OUT/mtpref.log" 2>&1; then
    ok "with MTP drafts against transformers: $(grep -o 'equal token.*PASS' "$OUT/mtpref.log")"
else bad "MTP drafts against transformers"; cat "$OUT/mtpref.log"; fi

echo "== run.mode = \"eval\": the training loop's validation of a checkpoint"
logged=$(tail -n 1 "$OUT/toy/metrics.csv" | cut -d, -f10)
for lay in "1 1" "2 2" "2 1"; do
    set -- $lay
    mpirun -np $1 "$BIN/dsv3" "${TOY[@]}" run.mode=eval run.init_from="$BASE" parallel.expert_parallel=$2 \
        run.output_dir="$OUT/eval-not-created" >"$OUT/eval.log" 2>&1 || { bad "eval np $1 EP $2"; tail -3 "$OUT/eval.log"; continue; }
    got=$(sed -n 's/.*validation loss \([0-9.]*\),.*/\1/p' "$OUT/eval.log")
    if [ -n "$got" ] && awk -v a="$got" -v b="$logged" 'BEGIN { d = a - b; exit !(d < 1e-6 && d > -1e-6) }'; then
        ok "np $1 EP $2: $(grep -o 'validation loss.*' "$OUT/eval.log" | cut -c1-60) = the run's logged val_loss $logged"
    else bad "np $1 EP $2: eval loss '$got', the run logged $logged"; cat "$OUT/eval.log"; fi
done
[ -e "$OUT/eval-not-created" ] && bad "eval created run.output_dir" || ok "eval wrote nothing (no run.output_dir)"
"$BIN/dsv3" "${TOY[@]}" run.mode=eval >"$OUT/eval-bad.log" 2>&1 && bad "eval without a checkpoint ran" ||
    ok "eval without a checkpoint: $(cat "$OUT/eval-bad.log")"

echo "== DeepSeek-V3 tokenizer: chat template with the generation prompt, text prompts with bos"
for c in ${DSV3_SHARED:-} ../shared /work/shared; do [ -r "$c/data/tokenizer-deepseek-v3/tokenizer.json" ] && TD=$c/data/tokenizer-deepseek-v3 && break; done
if [ -n "${TD:-}" ]; then
    # a one-step model with the tokenizer's vocabulary (the weights do not matter here)
    mpirun -np 1 "$BIN/dsv3" input/tiny.cfg run.steps=1 checkpoint.every=1 model.vocab_size=129280 model.hidden_size=16 \
        train.global_batch=2 train.micro_batch=2 schedule.warmup_steps=0 run.output_dir="$OUT/v3vocab" >"$OUT/v3.log" 2>&1 ||
        { bad "a model with the DeepSeek-V3 vocabulary"; tail -3 "$OUT/v3.log"; }
    V3=$OUT/v3vocab/checkpoints/step_00000001.h5
    echo '{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "深度求索是什么？"}]}' >"$OUT/chat-ok.jsonl"
    # what the template renders, as one string: its special tokens split out by the tokenizer
    echo '{"text": "<｜begin▁of▁sentence｜>You are terse.<｜User｜>2+2?<｜Assistant｜>4<｜end▁of▁sentence｜><｜User｜>深度求索是什么？<｜Assistant｜>"}' |
        "$BIN/dsv3-prep" encode --tokenizer "$TD/tokenizer.json" | tr -d ' ' | sed 's/.*"ids":\(\[[^]]*\]\).*/\1/' >"$OUT/chat-want"
    echo '{"text": "<｜begin▁of▁sentence｜>Hello, world"}' | "$BIN/dsv3-prep" encode --tokenizer "$TD/tokenizer.json" |
        tr -d ' ' | sed 's/.*"ids":\(\[[^]]*\]\).*/\1/' >>"$OUT/chat-want"
    if mpirun -np 2 "$G" --chat "$OUT/chat-ok.jsonl" --tokenizer "$TD/tokenizer.json" --max-new-tokens 3 -q --json "$OUT/chat.out" "$V3" 2>"$OUT/chat.err" &&
       mpirun -np 1 "$G" --prompt "Hello, world" --tokenizer "$TD/tokenizer.json" --max-new-tokens 3 -q --json - "$V3" >>"$OUT/chat.out" 2>>"$OUT/chat.err" &&
       cmp -s "$OUT/chat-want" <(grep -o '"prompt_ids":\[[^]]*\]' "$OUT/chat.out" | sed 's/"prompt_ids"://') &&
       [ "$(grep -c '"text":' "$OUT/chat.out")" = 2 ]; then
        ok "chat prompt = the template's rendering with <｜Assistant｜> appended ($(head -n1 "$OUT/chat-want" | tr ',' '\n' | wc -l) ids); text prompts get bos; decoded text out"
    else bad "chat/text prompts through the tokenizer"; cat "$OUT/chat.err" "$OUT/chat-want"; grep -o '"prompt_ids":\[[^]]*\]' "$OUT/chat.out"; fi
else
    echo "skip  chat and tokenizer prompts: the DeepSeek-V3 tokenizer (../shared/data/tokenizer-deepseek-v3) is absent"
fi

echo "== bad input: one line, non-zero exit"
one_line() { # name, command...
    local name=$1; shift
    "$@" >"$OUT/bad.out" 2>"$OUT/bad.err"
    local rc=$? n
    n=$(grep -c . "$OUT/bad.err")
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$n" = 1 ]; then ok "$name: exit $rc: $(cut -c1-170 "$OUT/bad.err")"
    else bad "$name: exit $rc, $n lines"; cat "$OUT/bad.err"; fi
}
yes 7 | head -n 1100 | paste -sd, | sed 's/^/[/; s/$/]/' >"$OUT/long.jsonl"
one_line "prompt longer than the context" "$G" --ids "$OUT/long.jsonl" "$OUT/tiny.h5"
one_line "base checkpoint of another model" "$G" --prompt "The " --base "$OUT/tiny.h5" "$AD"
one_line "token id outside the vocabulary" "$G" --ids <(echo '[1, 2, 999]') "$OUT/tiny.h5"
if [ -n "${TD:-}" ]; then
    echo '{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}' >"$OUT/chat.jsonl"
    one_line "unknown chat role" "$G" --chat "$OUT/chat.jsonl" --tokenizer "$TD/tokenizer.json" "$OUT/tiny.h5"
else
    echo "skip  unknown chat role: the DeepSeek-V3 tokenizer (../shared/data/tokenizer-deepseek-v3) is absent"
fi
echo "it_generate: $fails failures"
[ $fails -eq 0 ]
