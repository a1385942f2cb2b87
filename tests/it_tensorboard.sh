#!/bin/bash
# TensorBoard events read back by TensorBoard's own reader (EventAccumulator):
# every metrics.csv column is a scalar with the csv's values at every step,
# plus per-layer MoE imbalance and memory; a resumed run's event file makes
# the reader drop the stale steps. TensorBoard from the project virtualenv
# (make deps; tests/lib.sh need_venv).
. "$(dirname "$0")/lib.sh"
DSV3=${DSV3:-$BIN/dsv3}
need_venv tensorboard.backend.event_processing.event_accumulator
[ -x "$DSV3" ] || { echo "missing $DSV3"; exit 1; }
TMP=$(mktemp -d /tmp/dsv3_it_tb.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
DATA='data.train=({path="/usr/share/games/fortunes/cookie";weight=1.0;})'
VALID='validation.valid=({path="/usr/share/games/fortunes/wisdom";weight=1.0;})'
common=(input/tiny.cfg "$DATA" "$VALID" validation.every=3 parallel.expert_parallel=2 run.steps=8
        schedule.warmup_steps=2 train.seq_len=32 run.log_every=100 logging.tensorboard='"tb"')
# a full run to step 8 writing a checkpoint at 4, then a second run resumed from 4 in the same dir
mpirun -np 2 "$DSV3" "${common[@]}" run.output_dir="$TMP/run" checkpoint.every=4 >"$TMP/a.log" 2>&1 ||
    { cat "$TMP/a.log"; echo "FAIL: run"; exit 1; }
cp "$TMP/run/metrics.csv" "$TMP/full.csv"
ls "$TMP/run/tb"/events.out.tfevents.* >/dev/null 2>&1 || { echo "FAIL: no events file in $TMP/run/tb (logging.tensorboard ignored: does train.c call log_open_tb?)"; exit 1; }
sleep 1 # a distinct timestamp in the second file's name
mpirun -np 2 "$DSV3" "${common[@]}" run.output_dir="$TMP/run" run.resume="$TMP/run/checkpoints/step_00000004.h5" \
    checkpoint.every=0 >"$TMP/b.log" 2>&1 || { cat "$TMP/b.log"; echo "FAIL: resumed run"; exit 1; }
n=$(ls "$TMP/run/tb"/events.out.tfevents.* | wc -l)
[ "$n" -eq 2 ] || { echo "FAIL: expected 2 event files, found $n"; exit 1; }
"$PY" - "$TMP/run/tb" "$TMP/run/metrics.csv" <<'EOF'
import csv, math, sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
acc.Reload()
tags = set(acc.Tags()["scalars"])
rows = list(csv.DictReader(open(sys.argv[2])))
bad = []
for col in rows[0].keys():
    if col == "step":
        continue
    if col not in tags:
        bad.append("missing tag " + col)
        continue
    ev = {e.step: e.value for e in acc.Scalars(col)}
    for r in rows:
        s = int(r["step"])
        if r[col] == "":
            if s in ev: bad.append(f"{col}: step {s} has a value but the csv has none")
            continue
        want = float(r[col])
        if s not in ev:
            bad.append(f"{col}: no event at step {s}")
        elif col not in ("tok_per_s", "t_step", "t_a2a", "t_reduce") and \
                not math.isclose(ev[s], want, rel_tol=1e-6, abs_tol=1e-4 * (col == "max_imbalance")):
            bad.append(f"{col}: step {s}: event {ev[s]!r} csv {want!r}")
    if sorted(ev) != [int(r["step"]) for r in rows if r[col] != ""]:
        bad.append(f"{col}: steps {sorted(ev)} (stale steps of the first run not dropped?)")
layers = sorted(t for t in tags if t.startswith("moe_imbalance/layer_"))
if layers != ["moe_imbalance/layer_1", "moe_imbalance/layer_2", "moe_imbalance/layer_3"]:
    bad.append(f"per-layer imbalance tags: {layers}")
for t in layers + ["memory/allocated_MiB"]:
    v = [e.value for e in acc.Scalars(t)] if t in tags else []
    if len(v) != len(rows) or not all(x > 0 for x in v):
        bad.append(f"{t}: {len(v)} values {v[:3]}")
mx = {e.step: e.value for e in acc.Scalars("max_imbalance")}
for s in mx:
    m = max(e.value for t in layers for e in acc.Scalars(t) if e.step == s)
    if abs(m - mx[s]) > 1e-3 * m:
        bad.append(f"step {s}: max over layers {m} != max_imbalance {mx[s]}")
print(f"EventAccumulator: {len(tags)} scalar tags, {len(rows)} steps: {sorted(tags)}")
if bad:
    print("\n".join(bad[:20]))
    print(f"FAIL: {len(bad)} mismatches")
    sys.exit(1)
print("PASS: every metrics.csv column read back by TensorBoard")
EOF
