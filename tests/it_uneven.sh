#!/bin/bash
# Uneven expert ownership and the dispatch wire (issue 14). input/tiny.cfg with
# 12 routed experts, top-4, 10 steps in fp32:
#  1. invariance: np 5 EP 5 (2 ranks x 3 experts + 3 x 2), np 4 EP 4 (even),
#     np 10 EP 5 ZeRO 3 (uneven expert segments sharded over a data group of 2),
#     np 8 EP 8 ZeRO 2 with activation checkpointing (4 x 2 + 4 x 1), and LoRA
#     with routed-expert adapters on an fp8 base (resident, ZeRO 3) at np 5
#     EP 5: every deterministic column of every step within it_invariance.sh's
#     bounds of the np 1 run of the same deck; that LoRA run with
#     parallel.frozen = "sharded" gives the resident curve bitwise.
#  2. reshard: a checkpoint written at np 5 EP 5 ZeRO 3 at step 5, resumed at
#     np 8 EP 8 ZeRO 1 (another uneven layout): steps 6-10 within the same
#     bounds of the uninterrupted np 5 run.
#  3. parallel.dispatch_dtype bf16 and fp8 at np 5 EP 5: the run reports fewer
#     bytes on the wire than fp32 (the same step's), and its curve stays near
#     the fp32 one (loss within WIRE_TOL relative; the rounding moves it, so not identical).
. "$(dirname "$0")/lib.sh"
scratch_dir
DECK="input/tiny.cfg model.n_routed_experts=12 model.num_experts_per_tok=4 model.n_group=4 model.topk_group=2"
# run.seed 7: with the deck's seed 1234 the balance loss's unbiased top-k meets a near-tie at step 6 of
# np 10 EP 5 (aux_loss then 1.9e-5 off by step 10, loss 1.4e-7), the flip it_invariance.sh describes at
# np 24; seeds 7 and 99 keep every layout here within 3e-8 (aux) until step 10
COMMON="run.seed=7 run.steps=10 schedule.warmup_steps=2 schedule.decay_steps=10 checkpoint.every=0 train.micro_batch=1 train.global_batch=40 run.log_every=100"
LORA="lora.enabled=true run.mode=sft train.base_dtype=fp8 parallel.frozen=resident lora.targets=[\"self_attn.q_a_proj\",\"mlp.experts.gate_proj\",\"mlp.experts.down_proj\"]"
# the bounds of it_invariance.sh (measured there for even layouts)
BOUNDS="loss:1e-6 lm_loss:1e-6 mtp_loss:5e-6 aux_loss:1e-5 lr:0 tokens:0 grad_norm:5e-6 max_imbalance:5e-3 skipped:0"
WIRE_TOL=1e-3 # measured 6.5e-5 (bf16), 1.2e-4 (fp8) over 10 steps
run() { # name np ep zero [extra overrides...]
    local name=$1 np=$2 ep=$3 z=$4; shift 4
    timeout 300 mpirun -np "$np" "$BIN/dsv3" $DECK $COMMON parallel.expert_parallel="$ep" parallel.zero_stage="$z" \
        run.output_dir="$OUT/$name" "$@" >"$OUT/$name.log" 2>&1 || { echo "run $name failed:"; tail -5 "$OUT/$name.log"; return 1; }
}
fail=0
verdict() { # label ref.csv run.csv from bounds
    local res rel rest
    res=$(csv_bounds "$2" "$3" "$4" "$5"); rel=${res%% *}; rest=${res#* }
    printf '%-44s loss max rel %s  (nearest its bound: %s) %s\n' "$1" "$rel" "${rest%% *}" "${rest#* }"
    [ "${rest#* }" = ok ] || fail=1
}

echo "== 1. invariance with uneven ownership (12 experts, top-4), against np 1"
run base 1 1 0 || exit 1
run lbase 1 1 0 $LORA || exit 1
for c in "5 5 0" "4 4 1" "10 5 3" "8 8 2 true"; do
    set -- $c
    name="np$1-ep$2-z$3"
    run "$name" "$1" "$2" "$3" parallel.activation_checkpointing="${4:-false}" || { fail=1; continue; }
    grep -q "router biases bitwise identical on all $1 ranks" "$OUT/$name.log" || { echo "FAIL: $name biases"; fail=1; }
    own=$(grep -o "uneven expert ownership: [^(]*([^)]*)" "$OUT/$name.log" | head -1)
    verdict "np $1 EP $2 ZeRO $3 ckpt ${4:-no} ${own:+[uneven]}" "$OUT/base/metrics.csv" "$OUT/$name/metrics.csv" 1 "$BOUNDS"
    [ -n "$own" ] && echo "    plan: $own"
done
grep -q "uneven expert ownership: 3 or 2 routed experts per rank per MoE layer (12 of 12, top-4: 2 ranks x 3 + 3 x 2)" \
    "$OUT/np5-ep5-z0.log" || { echo "FAIL: the np 5 plan does not state the uneven ownership"; fail=1; }
run lora5 5 5 3 $LORA || fail=1
verdict "LoRA fp8 base resident, np 5 EP 5 ZeRO 3" "$OUT/lbase/metrics.csv" "$OUT/lora5/metrics.csv" 1 "$BOUNDS"
# the same with the store's non-expert part sharded over the ranks (one node): the resident curve, bitwise
run lora5s 5 5 3 $LORA parallel.frozen=sharded || fail=1
if cmp -s <(cut -d, -f1-8,10-12 "$OUT/lora5/metrics.csv") <(cut -d, -f1-8,10-12 "$OUT/lora5s/metrics.csv"); then
    echo "LoRA fp8 base sharded = resident at np 5 EP 5 ZeRO 3: loss columns bitwise"
else echo "FAIL: LoRA fp8 base sharded and resident curves differ at np 5 EP 5 ZeRO 3"; fail=1; fi

echo "== 2. checkpoint at np 5 EP 5 ZeRO 3 (step 5), resumed at np 8 EP 8 ZeRO 1"
run full5 5 5 3 checkpoint.every=5 checkpoint.keep=0 || exit 1
run re8 8 8 1 run.resume="$OUT/full5/checkpoints/step_00000005.h5" || exit 1
grep -q "resumed from" "$OUT/re8.log" || { echo "FAIL: no resume"; fail=1; }
verdict "resumed np 8 EP 8 ZeRO 1, steps 6-10 vs np 5" "$OUT/full5/metrics.csv" "$OUT/re8/metrics.csv" 6 "$BOUNDS"

echo "== 3. the dispatch wire at np 5 EP 5 (bytes sent in step 1, curve vs fp32)"
bytes() { grep -o "bytes sent in step 1: [0-9]*" "$1" | grep -o "[0-9]*$"; }
b32=$(bytes "$OUT/np5-ep5-z0.log")
for w in bf16 fp8; do
    run "w$w" 5 5 0 parallel.dispatch_dtype=$w || { fail=1; continue; }
    bw=$(bytes "$OUT/w$w.log")
    verdict "dispatch_dtype $w vs fp32 (bound $WIRE_TOL)" "$OUT/np5-ep5-z0/metrics.csv" "$OUT/w$w/metrics.csv" 1 "loss:$WIRE_TOL"
    # the wire really changed: bytes smaller, curve not identical
    if [ -z "$bw" ] || [ -z "$b32" ] || [ "$bw" -ge "$b32" ]; then echo "FAIL: $w sent ${bw:-?} bytes, fp32 ${b32:-?}"; fail=1
    else echo "    bytes sent in step 1: fp32 $b32, $w $bw ($(awk -v a="$bw" -v b="$b32" 'BEGIN { printf "%.3f", a / b }'))"; fi
    cmp -s <(cut -d, -f2 "$OUT/np5-ep5-z0/metrics.csv") <(cut -d, -f2 "$OUT/w$w/metrics.csv") &&
        { echo "FAIL: the $w loss curve is identical to fp32: no rounding on the wire?"; fail=1; }
done
[ $fail = 0 ] && echo "it_uneven: passed" || echo "it_uneven: FAILED"
exit $fail
