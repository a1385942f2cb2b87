# tests/lib.sh — sourced by the integration scripts tests/it_*.sh: repository
# root as working directory and $BIN; helpers below.
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${BIN:-bin}
# $EB: the emulated CUDA build's binaries matching $BIN (make SAN=1 test: bin-emu-san; BIN_EMU elsewhere).
EB=${BIN_EMU:-bin-emu$(case "$BIN" in *-san) echo -san ;; esac)}

# need_bins DIR NAME...: every NAME built in DIR, or the test fails.
need_bins() {
    local d=$1 b hint=""
    shift
    [ "$d" = "$EB" ] && hint=" (make CUDA=emu cuda-emu-model)"
    for b in "$@"; do [ -x "$d/$b" ] || { echo "FAIL: $d/$b not built$hint"; exit 1; }; done
}

# $OUT: a scratch directory removed on exit.
scratch_dir() {
    OUT=$(mktemp -d "/tmp/dsv3-$(basename "$0" .sh).XXXXXX")
    trap 'rm -rf "$OUT"' EXIT
}

# $TD: the DeepSeek-V3 tokenizer of ../shared (or $DSV3_SHARED); skips the test visibly when absent.
need_tokenizer() {
    local shared=${DSV3_SHARED:-} c
    [ -z "$shared" ] && for c in ../shared /work/shared; do [ -d "$c/data/tokenizer-deepseek-v3" ] && shared=$c && break; done
    TD=$shared/data/tokenizer-deepseek-v3
    if [ -z "$shared" ] || [ ! -r "$TD/tokenizer.json" ]; then
        echo "skip: DeepSeek-V3 tokenizer not found (set DSV3_SHARED or provide ../shared)"; exit 77
    fi
}

# $PY: the python of the project virtualenv (.venv, made by `make deps` from the
# pins in tools/reference/requirements-test.txt; DSV3_VENV or DSV3_PYTHON to
# point elsewhere). need_venv MODULE...: $PY must import every MODULE, or the
# test fails. It skips (loudly) only when `make deps` could not reach the
# package index, so that those checks did not run for want of a network.
VENV=${DSV3_VENV:-.venv}
PY=${DSV3_PYTHON:-$VENV/bin/python}
need_venv() {
    local m
    if [ -z "${DSV3_PYTHON:-}" ] && [ -f "$VENV/.pypi-unreachable" ] && [ ! -f "$VENV/.requirements" ]; then
        sed 's/^/    /' "$VENV/.pypi-unreachable"
        echo "SKIP !!! NOT CHECKED: the package index was unreachable when make deps built $VENV (no $*); rerun make deps online"
        exit 77
    fi
    [ -x "$PY" ] || { echo "FAIL: no project virtualenv python $PY: run make deps"; exit 1; }
    for m in "$@"; do
        "$PY" -c "import $m" 2>/dev/null ||
            { echo "FAIL: $PY cannot import $m: run make deps (pins: tools/reference/requirements-test.txt)"; exit 1; }
    done
}

# csv_bounds REF.csv RUN.csv FROM BOUNDS: the largest relative difference per
# column of RUN's rows from step FROM to 10 against REF's, each against its bound
# in BOUNDS ("col:bound ..."; unlisted columns ignored); requires steps FROM..10.
# Prints "<loss rel> <column nearest its bound>=<rel>/<bound> ok|FAIL:...".
csv_bounds() {
    awk -F, -v bounds="$4" -v from="$3" '
        BEGIN { n = split(bounds, b, " "); for (i = 1; i <= n; i++) { split(b[i], kv, ":"); lim[kv[1]] = kv[2] } }
        NR == FNR { if (FNR == 1) { for (i = 1; i <= NF; i++) col[i] = $i } else for (i = 2; i <= NF; i++) ref[$1, i] = $i; next }
        FNR == 1 || $1 < from { next }
        { rows++; for (i = 2; i <= NF; i++) { c = col[i]; if (!(c in lim) || $i == "" || ref[$1, i] == "") continue
              d = $i - ref[$1, i]; if (d < 0) d = -d; a = ref[$1, i]; if (a < 0) a = -a
              r = a > 0 ? d / a : d; if (r > m[c]) m[c] = r } }
        END { bad = ""; worst = 0; wc = "-"
              for (c in lim) { if (m[c] > lim[c]) bad = bad " " c "=" sprintf("%.2e", m[c])
                  if (lim[c] > 0 && m[c] / lim[c] > worst) { worst = m[c] / lim[c]; wc = c } }
              if (rows != 11 - from) bad = bad " rows=" rows
              printf "%.3e %s %s\n", m["loss"], wc "=" sprintf("%.2e", m[wc]) "/" lim[wc], (bad == "" ? "ok" : "FAIL:" bad) }' "$1" "$2"
}

# regress_csv TIER REF RUN [FROM]: regression/compare.awk's verdict (tier as in
# regression/tolerances) on $OUT/RUN/metrics.csv against $OUT/REF/metrics.csv from
# step FROM (default 1); prints one line; 0 on PASS, else 1 after the first lines
# of the detail ($OUT/RUN.detail).
regress_csv() {
    local tol res
    tol=$(awk '!/^#/ && NF == 3 { printf "%s:%s:%s ", $1, $2, $3 }' regression/tolerances)
    res=$(awk -v tier="$1" -v tol="$tol" -v outliers=0 -v factor=10 -v from="${4:-1}" -v refname="$2" \
              -v detail="$OUT/$3.detail" -f regression/compare.awk "$OUT/$2/metrics.csv" "$OUT/$3/metrics.csv")
    echo "$res" | awk -v r="$3" -v t="$1" -v ref="$2" '{ printf "  %-10s vs %-8s %-9s %d steps: loss max abs %s rel %s, worst %s (%s of tol), %d rows out: %s\n",
        r, ref, t, $1, $2, $3, $4, $5, $6, $7 }'
    [ "${res##* }" = PASS ] && return 0
    sed 's/^/    /' "$OUT/$3.detail" | head -n 10
    return 1
}

# mem_lines LOG: a run's per-rank memory lines as "rank planned-MiB allocated-MiB" (no RSS)
mem_lines() { sed -n 's/^dsv3: memory rank *\([0-9]*\): planned *\([0-9.]*\) MiB *allocated *\([0-9.]*\) MiB.*/\1 \2 \3/p' "$1"; }

# run_planned LABEL NP BIN ARGS...: mpirun -np NP BIN "${RUN_ARGS[@]}" ARGS... into $OUT/LABEL (log
# $OUT/LABEL.log); the run must exit 0 and allocate what the plan says, per category on every rank.
# The caller defines RUN_ARGS (the deck and its common overrides) and bad (counts a failure).
run_planned() {
    local label=$1 np=$2 bin=$3
    shift 3
    timeout 300 mpirun -np "$np" "$bin" "${RUN_ARGS[@]}" run.output_dir="$OUT/$label" "$@" >"$OUT/$label.log" 2>&1 ||
        { tail -n 5 "$OUT/$label.log"; bad "run $label exited non-zero"; return 1; }
    grep -q "every category equal to the plan on $np of $np ranks" "$OUT/$label.log" ||
        { grep 'dsv3: memory' "$OUT/$label.log"; bad "$label: allocation differs from the plan"; }
}

# loss_relmax A.csv B.csv: the largest relative difference of the loss columns over the steps both
# hold, and how many: "max rows" ("nan" when a value is not a number). The columns: LOSS_COLS="first
# last" (default "2 5": loss, lm_loss, mtp_loss, aux_loss).
loss_relmax() {
    local c0 c1
    read -r c0 c1 <<<"${LOSS_COLS:-2 5}"
    awk -F, -v c0="$c0" -v c1="$c1" 'NR==FNR { if (FNR>1) for (k=c0;k<=c1;k++) b[$1,k]=$k; next }
             FNR>1 && ($1,c0) in b { for (k=c0;k<=c1;k++) { if ($k != $k + 0) { m = "nan"; break }; d=$k-b[$1,k]; if (d<0) d=-d
                 s=b[$1,k]<0?-b[$1,k]:b[$1,k]; r=s>0?d/s:d; if (m != "nan" && r>m) m=r }; n++ }
             END { printf "%s %d", m == "nan" ? "nan" : sprintf("%.3e", m), n }' "$1" "$2"
}

# loss_near LABEL REF RUN TOL [STEPS]: RUN's loss columns within TOL relative of REF's over STEPS
# (default 10) steps, and not identical to them (the rounding under test happened); ok / bad.
loss_near() {
    local r n
    read -r r n <<<"$(loss_relmax "$OUT/$2/metrics.csv" "$OUT/$3/metrics.csv")"
    awk -v r="$r" -v n="$n" -v t="$4" -v want="${5:-10}" 'BEGIN { exit !(n == want && r == r + 0 && r <= t) }' &&
        ok "$1: loss columns max rel diff $r over $n steps (bound $4)" || bad "$1: max rel diff $r over $n rows (bound $4)"
    local c0 c1
    read -r c0 c1 <<<"${LOSS_COLS:-2 5}"
    cmp -s <(cut -d, -f"$c0-$c1" "$OUT/$2/metrics.csv") <(cut -d, -f"$c0-$c1" "$OUT/$3/metrics.csv") &&
        bad "$1: the curve is identical to $2's: nothing rounded?"
}
