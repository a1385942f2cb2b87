#!/bin/bash
# Faults a long run meets, at np 1 and 4 (EP 4, ZeRO-3): each must end with its
# exit status and ONE "dsv3: error:" line (or a clean stop), within a timeout
# (no hang), without a crash signal, and leave the newest good checkpoint
# loadable: resuming from it reproduces the uninterrupted run bitwise.
#   disk-full      6 MB tmpfs: the step-10 save does not fit (free-space check)
#   disk-full-io   the same with the check off: ENOSPC inside parallel HDF5
#   nan            lr 1e4, no clipping: non-finite steps skipped, then a stop
#   kill-in-save   kill -9 of one rank while the step-10 .tmp is being written
#   term-in-save   SIGTERM to the ranks during a save: finish, save, exit 0
#   outdir-gone    run.output_dir removed mid-run
#   data-truncated a mapped data file truncated mid-run (SIGBUS)
#   latest-missing run.resume=auto with `latest` naming a missing file
. "$(dirname "$0")/lib.sh"
scratch_dir
# a tmpfs is unmounted once the aborted ranks are gone (lazily if they linger)
unmount() { umount "$1" 2>/dev/null || { sleep 2; umount "$1" 2>/dev/null; } || umount -l "$1" 2>/dev/null; }
trap 'pkill -9 -f "run.output_dir=$OUT" 2>/dev/null; mountpoint -q "$OUT/full" && unmount "$OUT/full"; rm -rf "$OUT"' EXIT
DSV3="$BIN/dsv3"
DECK=input/tiny.cfg
COMMON=(run.steps=10 schedule.warmup_steps=2 checkpoint.every=5 checkpoint.keep=3 checkpoint.stall_timeout=5)
fails=0
bad() { echo "FAIL  $*"; fails=$((fails + 1)); }
ok() { echo "ok    $*"; }
layout() { [ "$1" = 1 ] && echo "" || echo "parallel.expert_parallel=4 parallel.zero_stage=3"; }

# run NAME NP SECONDS ARGS... -> $OUT/NAME.log, $rc, $secs (a background job: $pid)
run() {
    local name=$1 np=$2 t=$3; shift 3
    local s=$SECONDS
    # shellcheck disable=SC2046
    timeout "$t" mpirun -q ${MPIX:+-x $MPIX} -np "$np" "$DSV3" $DECK "${COMMON[@]}" $(layout "$np") "$@" >"$OUT/$name.log" 2>&1
    rc=$? secs=$((SECONDS - s))
}
# verdict NAME WANT_RC FRAGMENT: exit status, no hang, no crash, one error line with FRAGMENT
# (WANT_RC "killed": a rank was killed on purpose, its signal is expected)
verdict() {
    local name=$1 want=$2 frag=$3 n
    if [ "$rc" = 124 ]; then bad "$name: hung (killed by timeout after ${secs}s)"; return 1; fi
    if [ "$want" != killed ] && grep -qiE 'segmentation|bus error|signal [0-9]+|core dumped' "$OUT/$name.log"; then
        bad "$name: crashed: $(grep -iE 'segmentation|bus error|signal [0-9]+' "$OUT/$name.log" | head -1)"; return 1; fi
    if [ "$want" = 0 ] && [ "$rc" != 0 ]; then bad "$name: exit $rc, want 0"; tail -5 "$OUT/$name.log"; return 1; fi
    if [ "$want" != 0 ] && [ "$rc" = 0 ]; then bad "$name: exit 0, want non-zero"; return 1; fi
    if [ -n "$frag" ]; then
        n=$(grep -c '^dsv3: error:' "$OUT/$name.log")
        if [ "$n" != 1 ] || ! grep '^dsv3: error:' "$OUT/$name.log" | grep -q "$frag"; then
            bad "$name: want one 'dsv3: error:' line with '$frag', got $n:"; grep '^dsv3: error' "$OUT/$name.log" | head -3
            return 1
        fi
    fi
    ok "$name: exit $rc in ${secs}s${frag:+: $(grep '^dsv3: error:' "$OUT/$name.log" | cut -c1-150)}"
}
# cols FILE FROM: the non-timing columns of metrics.csv rows with step >= FROM
cols() { awk -F, -v from="$2" 'NR==1{for(i=1;i<=NF;i++) if($i!~/^(tok_per_s|t_)/) k[i]=1; next} $1>=from{s="";for(i=1;i<=NF;i++) if(k[i]) s=s $i ","; print s}' "$1"; }
ckpt_step() { echo "$1" | sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p'; }
# resumes NAME NP DIR REF: the checkpoint `latest` names in DIR loads, and the
# resumed run's rows equal those of the uninterrupted run REF, bitwise
resumes() {
    local name=$1 np=$2 dir=$3 ref=$4 lat
    lat=$(cat "$dir/checkpoints/latest" 2>/dev/null)
    if [ -z "$lat" ] || [ ! -f "$dir/checkpoints/$lat" ]; then bad "$name: no good checkpoint left ('$lat')"; return; fi
    if ls "$dir"/checkpoints/*.tmp >/dev/null 2>&1; then bad "$name: a .tmp was left behind"; fi
    local step
    step=$(ckpt_step "$lat")
    mkdir -p "$OUT/$name-re"
    run "$name-resume" "$np" 120 run.output_dir="$OUT/$name-re" run.steps=10 checkpoint.every=0 \
        run.resume="$dir/checkpoints/$lat"
    if [ "$rc" != 0 ]; then bad "$name: resume from $lat failed (exit $rc)"; tail -3 "$OUT/$name-resume.log"; return; fi
    local a b
    a=$(cols "$OUT/$name-re/metrics.csv" $((step + 1))) b=$(cols "$ref" $((step + 1)))
    if [ -z "$a" ] || [ "$(echo "$a" | wc -l)" != $((10 - step)) ]; then
        bad "$name: the resumed run logged $(echo "$a" | grep -c .) steps after $step, want $((10 - step))"
    elif [ "$a" = "$b" ]; then
        ok "$name: $lat loads; steps $((step + 1))-10 resumed bitwise equal to the uninterrupted run"
    else bad "$name: resuming from $lat differs from the uninterrupted run"; fi
}

for np in 1 4; do
    echo "== np=$np $(layout $np)"
    # the uninterrupted reference
    run ref$np "$np" 120 run.output_dir="$OUT/ref$np" run.steps=10
    [ "$rc" = 0 ] || { bad "reference run np=$np failed"; tail -5 "$OUT/ref$np.log"; continue; }
    REF=$OUT/ref$np/metrics.csv

    # disk full: a 6 MB tmpfs holds the step-5 checkpoint (4 MB), not a second one
    mkdir -p "$OUT/full"
    if mount -t tmpfs -o size=6m tmpfs "$OUT/full" 2>/dev/null; then
        run disk-full-np$np "$np" 60 run.output_dir="$OUT/full/run"
        verdict disk-full-np$np 1 "needs about" && resumes disk-full-np$np "$np" "$OUT/full/run" "$REF"
        rm -rf "$OUT/full/run"
        DSV3_CKPT_NO_SPACE_CHECK=1 MPIX=DSV3_CKPT_NO_SPACE_CHECK run disk-full-io-np$np "$np" 60 run.output_dir="$OUT/full/run"
        verdict disk-full-io-np$np 1 "checkpoint" && resumes disk-full-io-np$np "$np" "$OUT/full/run" "$REF"
        unmount "$OUT/full"
    else
        echo "SKIP  disk-full-np$np: cannot mount a tmpfs here (needs root in a container that allows mount)"
    fi

    # NaN: every later step non-finite; skipped, then stopped; checkpoints stay finite
    run nan-np$np "$np" 60 run.output_dir="$OUT/nan$np" run.steps=30 optimizer.lr=1e4 optimizer.grad_clip=0.0
    if verdict nan-np$np 1 "non-finite"; then
        grep -q 'update skipped' "$OUT/nan-np$np.log" && ok "nan-np$np: skipped steps reported" || bad "nan-np$np: no skip warning"
        sk=$(awk -F, 'NR==1{for(i=1;i<=NF;i++) if($i=="skipped") c=i; next} {v=$c} END{print v+0}' "$OUT/nan$np/metrics.csv")
        [ "$sk" -gt 0 ] && ok "nan-np$np: metrics.csv counts $sk skipped steps" || bad "nan-np$np: metrics.csv skipped = $sk"
        lat=$(cat "$OUT/nan$np/checkpoints/latest")
        run nan-resume-np$np "$np" 60 run.output_dir="$OUT/nan$np-re" run.steps=$(($(ckpt_step "$lat") + 2)) \
            checkpoint.every=0 run.resume="$OUT/nan$np/checkpoints/$lat" optimizer.lr=1e-3
        if [ "$rc" = 0 ] && awk -F, 'NR>1 && ($2=="nan" || $2=="-nan" || $2 ~ /inf/){b=1} END{exit b}' "$OUT/nan$np-re/metrics.csv"; then
            ok "nan-np$np: $lat (written after skipped steps) loads and trains with a finite loss"
        else bad "nan-np$np: resuming from $lat failed or is not finite"; fi
    fi

    # a rank killed during a save (np 4 only: at np 1 it is the whole job)
    if [ "$np" = 4 ]; then
        d=$OUT/kill4
        (DSV3_CKPT_SLAB_BYTES=256 timeout 180 mpirun -q -x DSV3_CKPT_SLAB_BYTES -np 4 "$DSV3" $DECK "${COMMON[@]}" \
            $(layout 4) run.output_dir="$d" >"$OUT/kill-in-save.log" 2>&1; echo $? >"$OUT/kill.rc") &
        hit=0
        for _ in $(seq 1 3000); do
            if [ -f "$d/checkpoints/step_00000010.h5.tmp" ]; then
                pkill -9 -f "^$DSV3 .*run.output_dir=$d" -n && hit=1; break
            fi
            [ -f "$OUT/kill.rc" ] && break
            sleep 0.005
        done
        wait
        rc=$(cat "$OUT/kill.rc") secs=0
        if [ "$hit" = 1 ]; then
            verdict kill-in-save killed "" || true
            rm -f "$d"/checkpoints/*.tmp # a killed rank cannot clean up; the next save overwrites it
            lat=$(cat "$d/checkpoints/latest")
            if [ "$lat" = step_00000005.h5 ]; then
                ok "kill-in-save: latest still names step 5"
                resumes kill-in-save 4 "$d" "$REF"
            elif [ "$lat" = step_00000010.h5 ]; then
                # the killed rank had done its part and the save committed before the kill landed
                # (direct chunk writes make a save take milliseconds here): the file must be whole
                run kill-in-save-load 4 120 run.output_dir="$OUT/kill-in-save-re" run.steps=10 checkpoint.every=0 \
                    run.resume="$d/checkpoints/$lat"
                [ "$rc" = 0 ] && ok "kill-in-save: the save committed before the kill landed; $lat loads" ||
                    bad "kill-in-save: latest names $lat, which does not load (exit $rc)"
            else bad "kill-in-save: latest is $lat"; fi
        else echo "note  kill-in-save: the save finished before the kill (exit $rc); nothing to check"; fi
    fi

    # SIGTERM during a save: the step finishes, a checkpoint is written, exit 0
    d=$OUT/term$np
    (DSV3_CKPT_SLAB_BYTES=256 timeout 180 mpirun -q -x DSV3_CKPT_SLAB_BYTES -np "$np" "$DSV3" $DECK "${COMMON[@]}" \
        $(layout "$np") run.output_dir="$d" run.steps=10 >"$OUT/term-in-save-np$np.log" 2>&1; echo $? >"$OUT/term$np.rc") &
    for _ in $(seq 1 3000); do
        [ -f "$d/checkpoints/step_00000005.h5.tmp" ] && { pkill -TERM -f "^$DSV3 .*run.output_dir=$d"; break; }
        [ -f "$OUT/term$np.rc" ] && break
        sleep 0.005
    done
    wait
    rc=$(cat "$OUT/term$np.rc") secs=0
    if verdict term-in-save-np$np 0 ""; then
        if grep -q 'stop requested by signal' "$OUT/term-in-save-np$np.log"; then
            ok "term-in-save-np$np: stopped by the signal, latest = $(cat "$d/checkpoints/latest")"
            resumes term-in-save-np$np "$np" "$d" "$REF"
        else echo "note  term-in-save-np$np: the signal came too late to stop the run"; fi
    fi

    # run.output_dir removed mid-run
    d=$OUT/gone$np
    (timeout 60 mpirun -q -np "$np" "$DSV3" $DECK "${COMMON[@]}" $(layout "$np") run.output_dir="$d" run.steps=100000 \
        checkpoint.every=0 >"$OUT/outdir-gone-np$np.log" 2>&1; echo $? >"$OUT/gone$np.rc") &
    for _ in $(seq 1 3000); do [ -s "$d/metrics.csv" ] && break; sleep 0.01; done
    rm -rf "$d"
    wait
    rc=$(cat "$OUT/gone$np.rc") secs=0
    verdict outdir-gone-np$np 1 "removed or replaced"

    # a data file truncated mid-run
    mkdir -p "$OUT/data$np"
    for f in fortunes cookie computers; do cp "/usr/share/games/fortunes/$f" "$OUT/data$np/$f"; done
    src="({path=\"$OUT/data$np/fortunes\";weight=1.0;},{path=\"$OUT/data$np/cookie\";weight=1.0;},{path=\"$OUT/data$np/computers\";weight=1.0;})"
    d=$OUT/trunc$np
    (timeout 60 mpirun -q -np "$np" "$DSV3" $DECK "${COMMON[@]}" $(layout "$np") run.output_dir="$d" run.steps=100000 \
        checkpoint.every=0 "data.train=$src" >"$OUT/data-truncated-np$np.log" 2>&1; echo $? >"$OUT/trunc$np.rc") &
    for _ in $(seq 1 3000); do [ -s "$d/metrics.csv" ] && break; sleep 0.01; done
    for f in fortunes cookie computers; do : >"$OUT/data$np/$f"; done
    wait
    rc=$(cat "$OUT/trunc$np.rc") secs=0
    # every rank reads the data: several ranks may report before the abort lands
    if [ "$rc" = 124 ]; then bad "data-truncated-np$np: hung"
    elif [ "$rc" = 0 ]; then bad "data-truncated-np$np: exit 0"
    elif grep -q "shrank while the run was reading it" "$OUT/data-truncated-np$np.log"; then
        ok "data-truncated-np$np: exit $rc: $(grep -m1 '^dsv3: error:' "$OUT/data-truncated-np$np.log" | cut -c1-150)"
    else bad "data-truncated-np$np: exit $rc without the message"; tail -5 "$OUT/data-truncated-np$np.log"; fi

    # `latest` naming a missing file
    d=$OUT/lat$np
    mkdir -p "$d/checkpoints"
    echo step_00000099.h5 >"$d/checkpoints/latest"
    run latest-missing-np$np "$np" 60 run.output_dir="$d" run.resume=auto
    verdict latest-missing-np$np 1 "step_00000099.h5"
done
# np 2, EP 2: there ENOSPC strikes one rank inside HDF5's collective dataset
# creation while the other waits in HDF5's own barrier; the save watchdog
# (checkpoint.stall_timeout = 5 s) must end the job, not leave it hanging
echo "== np=2 parallel.expert_parallel=2 (full disk inside a collective HDF5 call)"
if mount -t tmpfs -o size=6m tmpfs "$OUT/full" 2>/dev/null; then
    DSV3_CKPT_NO_SPACE_CHECK=1 MPIX=DSV3_CKPT_NO_SPACE_CHECK run disk-full-io-np2 2 60 run.output_dir="$OUT/full/run" \
        parallel.expert_parallel=2
    if verdict disk-full-io-np2 1 "checkpoint step_00000010.h5"; then
        [ "$(cat "$OUT/full/run/checkpoints/latest")" = step_00000005.h5 ] && ! ls "$OUT"/full/run/checkpoints/*.tmp \
            >/dev/null 2>&1 && ok "disk-full-io-np2: latest still names step 5, no .tmp left" ||
            bad "disk-full-io-np2: latest or .tmp wrong: $(ls "$OUT/full/run/checkpoints")"
    fi
    unmount "$OUT/full"
else
    echo "SKIP  disk-full-io-np2: cannot mount a tmpfs here"
fi
echo "it_faults: $fails failures"
[ "$fails" = 0 ]
