# tests/lib.sh — sourced by the integration scripts tests/it_*.sh: repository
# root as working directory and $BIN; helpers below.
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${BIN:-bin}

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
