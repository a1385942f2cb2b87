#!/bin/bash
# it_deck.sh — the dsv3 command line on good and bad decks, at np=1 and np=24:
# every deck error class gives exactly one "dsv3: ..." line (rank 0 only), a
# non-zero exit on every rank and no hang (timeout 60); --print-deck round trip
# through the binary; --check, --help, --version, bad command lines (exit 2).
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
DSV3=$BIN/dsv3
[ -x "$DSV3" ] || { echo "no $DSV3 (run make)"; exit 1; }
command -v mpirun >/dev/null || { echo "skip: mpirun not found"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_hwloc_base_binding_policy=${OMPI_MCA_hwloc_base_binding_policy:-none}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

run() { # np, args... -> $T/out (stdout+stderr), $rc
    local np=$1; shift
    if [ "$np" = 0 ]; then timeout 60 "$DSV3" "$@" >"$T/out" 2>&1
    else timeout 60 mpirun -q -np "$np" "$DSV3" "$@" >"$T/out" 2>&1; fi
    rc=$?
    # libevent inside OpenMPI's runtime may warn under heavy oversubscription
    # ("[warn] Epoll MOD(1) on fd N failed"): runtime noise, not dsv3 output
    sed -i '/^\[warn\] Epoll /d' "$T/out"
}

# expect_error NP WANT_RC FRAGMENT ARGS...: exactly one dsv3 line containing FRAGMENT
expect_error() {
    local np=$1 want=$2 frag=$3; shift 3
    run "$np" "$@"
    local n
    n=$(grep -c '^dsv3: ' "$T/out")
    if [ $rc -eq 124 ]; then bad "np=$np $*: timed out (hang)"; return; fi
    if [ $rc -ne "$want" ]; then bad "np=$np $*: exit $rc, want $want"; sed 's/^/    /' "$T/out" | head -5; return; fi
    if [ "$want" = 1 ] && [ "$n" -ne 1 ]; then bad "np=$np $*: $n error lines, want 1"; sed 's/^/    /' "$T/out" | head -30; return; fi
    if [ "$want" = 1 ] && [ "$(grep -cv '^dsv3: ' "$T/out")" -ne 0 ]; then bad "np=$np $*: extra output"; sed 's/^/    /' "$T/out" | head; return; fi
    if ! grep -q -F -- "$frag" "$T/out"; then bad "np=$np $*: message lacks '$frag'"; sed 's/^/    /' "$T/out" | head -5; return; fi
    echo "ok   np=$np exit $rc: $(grep '^dsv3: ' "$T/out" | head -1)"
}

# ---- bad decks, written next to a copy of the model presets
mkdir -p "$T/in/models"
cp input/models/*.cfg "$T/in/models/"
cp input/tiny.cfg input/sft.cfg "$T/in/"
mk() { # name, sed expression applied to tiny.cfg (global batch 48: legal at np=1 and np=24)
    sed -e 's/^  global_batch = 16; .*/  global_batch = 48;/' -e "$2" input/tiny.cfg >"$T/in/$1.cfg"
}
mk unknown   's/^  lr = 3e-3;/  lr = 3e-3;\n  betas1 = 0.9;/'
mk intfloat  's/^  lr = 3e-3;/  lr = 3;/'
mk strint    's/^  seq_len = 64;/  seq_len = "64";/'
mk range     's/^  beta2 = 0.95;/  beta2 = 1.5;/'
mk enum      's/^  type = "cosine";/  type = "cosin";/'
mk zero4     's/^  zero_stage = 0;/  zero_stage = 4;/'
mk ep5       's/^  expert_parallel = 1; .*/  expert_parallel = 5;/'
mk ep3       's/^  expert_parallel = 1; .*/  expert_parallel = 3;/'
mk batch     's/^  micro_batch = 2;/  micro_batch = 5;/'
mk adapters  's/^  save = "full";/  save = "adapters";/'
mk syntax    's/^  steps = [0-9]*;/  steps = ;/'
mk noinc     's|^@include "models/tiny.cfg"|@include "models/nope.cfg"|'
sed 's/^  n_group = 4; .*/  n_group = 3;/' input/models/tiny.cfg >"$T/in/models/tiny_badgroup.cfg"
sed 's|models/tiny.cfg|models/tiny_badgroup.cfg|' input/tiny.cfg >"$T/in/badgroup.cfg"
sed 's/^  vocab_size = 256;/  vocab_sise = 256;/' input/models/tiny.cfg >"$T/in/models/tiny_typo.cfg"
sed 's|models/tiny.cfg|models/tiny_typo.cfg|' input/tiny.cfg >"$T/in/typo.cfg"
D=$T/in
line() { grep -n -F -- "$2" "$1" | head -1 | cut -d: -f1; }

# Each class at np=1; the ones marked "both" also at np=24 (one mpirun of 24
# ranks costs ~1 s on 2 cores, so not every variant runs twice).
for np in 1 24; do
    both=$([ $np = 1 ] && echo 1 || echo 0)
    expect_error $np 1 "$D/unknown.cfg:$(line $D/unknown.cfg betas1): unknown key 'optimizer.betas1' (did you mean 'optimizer.beta1'?)" --check "$D/unknown.cfg"
    expect_error $np 1 "$D/models/tiny_typo.cfg:$(line $D/models/tiny_typo.cfg vocab_sise): unknown key 'model.vocab_sise' (did you mean 'model.vocab_size'?)" --check "$D/typo.cfg"
    expect_error $np 1 "$D/intfloat.cfg:$(line $D/intfloat.cfg 'lr = 3;'): optimizer.lr: expected a float, found an int (write 3.0)" --check "$D/intfloat.cfg"
    [ $both = 1 ] && expect_error $np 1 "train.seq_len: expected an int, found a string" --check "$D/strint.cfg"
    expect_error $np 1 "optimizer.beta2 = 1.5 is out of range [0, 1)" --check "$D/range.cfg"
    expect_error $np 1 "schedule.type = \"cosin\" is not one of" --check "$D/enum.cfg"
    expect_error $np 1 "$D/zero4.cfg:$(line $D/zero4.cfg 'zero_stage = 4'): parallel.zero_stage = 4 is out of range [0, 3]" --check "$D/zero4.cfg"
    expect_error $np 1 "parallel.expert_parallel = 5 does not divide the world size $np" --check "$D/ep5.cfg"
    expect_error $np 1 "train.global_batch = 48 is not divisible by train.micro_batch x world size = 5 x $np" --check "$D/batch.cfg"
    [ $both = 1 ] && expect_error $np 1 "checkpoint.save = \"adapters\" needs lora.enabled = true" --check "$D/adapters.cfg"
    [ $both = 1 ] && expect_error $np 1 "override 'lora.dropout=1.0': lora.dropout = 1.0 is out of range [0, 1)" --check input/sft-tiny.cfg lora.dropout=1.0
    [ $both = 1 ] && expect_error $np 1 "lora.use_rslora: expected a bool (true or false), found an int" --check input/sft-tiny.cfg lora.use_rslora=1
    [ $both = 1 ] && expect_error $np 1 "lora.dropout = 0.1 with the routed-expert target \"mlp.experts.up_proj\": dropout on routed-expert adapters is not supported (set 0.0, or drop the target)" --check input/sft-tiny.cfg lora.dropout=0.1 'lora.targets=["self_attn.o_proj","mlp.experts.up_proj"]'
    [ $both = 1 ] && expect_error $np 1 "model.n_routed_experts = 8 is not divisible by model.n_group = 3" --check "$D/badgroup.cfg"
    expect_error $np 1 "$D/syntax.cfg:$(line $D/syntax.cfg 'steps = ;'): syntax error" --check "$D/syntax.cfg"
    [ $both = 1 ] && expect_error $np 1 "cannot open include file '$D/models/nope.cfg'" --check "$D/noinc.cfg"
    expect_error $np 1 "$D/absent.cfg: cannot read the deck" --check "$D/absent.cfg"
    expect_error $np 1 "override 'optimizer.betas1=0.9': unknown key 'optimizer.betas1' (did you mean 'optimizer.beta1'?)" --check input/tiny.cfg optimizer.betas1=0.9
    [ $both = 1 ] && expect_error $np 1 "override 'optimizer.lr=3': optimizer.lr: expected a float, found an int" --check input/tiny.cfg optimizer.lr=3
    [ $both = 1 ] && expect_error $np 1 "override 'parallel.zero_stage=4'" --dry-run input/tiny.cfg parallel.zero_stage=4
    # bad command lines: exit 2 on every rank
    expect_error $np 2 "unknown option '--bogus'" --bogus input/tiny.cfg
    [ $both = 1 ] && expect_error $np 2 "is not a key.path=value override" --check input/tiny.cfg stray
    [ $both = 1 ] && expect_error $np 2 "no deck given" --check
done
# layout classes that need a world size > 1
expect_error 20 1 "parallel.expert_parallel = 8 does not divide the world size 20" --check input/sft-tiny.cfg train.global_batch=20
expect_error 24 1 "train.global_batch = 16 is not divisible by train.micro_batch x world size = 2 x 24 = 48" --check input/tiny.cfg
expect_error 1 1 "parallel.expert_parallel = 8 does not divide the world size 1" --check input/sft.cfg
expect_error 16 1 "train.global_batch = 24 is not divisible by train.micro_batch x world size = 1 x 16 = 16" --check input/sft.cfg
# planned-only choices (the GPU plan, README "The 671B plan"): a real run stops before any work with one
# deck error naming the key; --check takes them; --dry-run plans them all
# (a bf16/fp8 base runs at every stage, resident or "sharded" — at ZeRO 3 one node-shared copy on one node)
expect_error 24 1 'parallel.frozen = "resident" with an fp32 base is planned only' input/sft-tiny.cfg parallel.frozen=resident
expect_error 1 1 'train.base_dtype = "bf16" sets the storage of frozen weights: there are none without lora.enabled' input/tiny.cfg train.base_dtype=bf16
expect_error 1 2 "--gpu-mem, --intra-gbs and --inter-gbs go with --dry-run" --gpu-mem 80 input/tiny.cfg
expect_error 1 2 "--inter-gbs needs a positive number" --dry-run --inter-gbs fast input/tiny.cfg
expect_error 1 2 "--gpu-mem needs a positive number" --dry-run --gpu-mem

# ---- good decks
check_ok() { # np, deck, args...
    local np=$1; shift
    run "$np" --check "$@"
    if [ $rc -ne 0 ] || [ "$(grep -c '^deck OK' "$T/out")" -ne 1 ]; then bad "np=$np --check $*: exit $rc"; sed 's/^/    /' "$T/out" | head -5
    else echo "ok   np=$np $(cat "$T/out")"; fi
}
check_ok 0 input/tiny.cfg
check_ok 1 input/tiny.cfg
check_ok 8 input/tiny.cfg
check_ok 24 input/sft.cfg
check_ok 2 input/tiny.cfg parallel.expert_parallel=2 run.steps=50 run.output_dir=runs/x
check_ok 24 input/sft-tiny.cfg train.base_dtype=fp8 parallel.frozen=resident parallel.dispatch_dtype=fp8
check_ok 24 input/sft-tiny.cfg train.base_dtype=fp8
grep -q 'planned only' "$T/out" && bad "--check: an fp8 base sharded at ZeRO 3 on one node runs: nothing is planned only"
grep -q 'planned only' "$T/out" && bad "--check: an fp8 base, resident, with an fp8 wire runs: nothing is planned only"
check_ok 24 "$D/ep3.cfg" # uneven expert ownership (8 experts on 3 ranks per group) runs
check_ok 24 input/sft-tiny.cfg parallel.frozen=resident
grep -q 'planned only, a real run refuses it: .*parallel.frozen = "resident" with an fp32 base is planned only' "$T/out" ||
    bad "--check with planned-only keys does not say so"

# ---- --print-deck round trip through the binary (header line names the deck)
round_trip() { # np, deck, overrides...
    local np=$1 deck=$2; shift 2
    run "$np" --print-deck "$deck" "$@"; cp "$T/out" "$T/p1.cfg"
    [ $rc -eq 0 ] || { bad "np=$np --print-deck $deck: exit $rc"; head -3 "$T/p1.cfg"; return; }
    [ "$(grep -c '^run = {' "$T/p1.cfg")" -eq 1 ] || { bad "np=$np --print-deck $deck: printed $(grep -c '^run = {' "$T/p1.cfg") times"; return; }
    run "$np" --print-deck "$T/p1.cfg"; cp "$T/out" "$T/p2.cfg"
    [ $rc -eq 0 ] || { bad "np=$np re-reading the printed deck of $deck: $(head -1 "$T/p2.cfg")"; return; }
    if diff <(tail -n +2 "$T/p1.cfg") <(tail -n +2 "$T/p2.cfg") >/dev/null; then echo "ok   np=$np --print-deck round trip $deck $*"
    else bad "np=$np --print-deck $deck: round trip differs"; diff <(tail -n +2 "$T/p1.cfg") <(tail -n +2 "$T/p2.cfg") | head; fi
}
round_trip 0 input/tiny.cfg
round_trip 1 input/tiny.cfg optimizer.lr=1e-3 run.output_dir=runs/rt 'lora.targets=["mlp.up_proj"]'
grep -q '^  lr = 0.001;$' "$T/p1.cfg" && grep -q '"runs/rt"' "$T/p1.cfg" || bad "--print-deck does not show the overrides"
round_trip 24 input/sft.cfg
grep -q 'scale_fmt = "";' "$T/p1.cfg" || bad "sft print lacks quantization_config.scale_fmt"

# ---- --help, --version
run 0 --help
[ $rc -eq 0 ] && grep -q '^usage: dsv3 ' "$T/out" && grep -q -- '--print-deck' "$T/out" || bad "--help: exit $rc"
run 2 --help
[ $rc -eq 0 ] && [ "$(grep -c '^usage: dsv3 ' "$T/out")" -eq 1 ] || bad "--help at np=2 not printed once"
run 0 --version
[ $rc -eq 0 ] && grep -Eq '^dsv3 [0-9.]+ \(git [^)]+\)$' "$T/out" || bad "--version: '$(cat "$T/out")'"
echo "ok   $(cat "$T/out")"

if [ $fails -ne 0 ]; then echo "it_deck: $fails failures"; exit 1; fi
echo "it_deck: all passed"
