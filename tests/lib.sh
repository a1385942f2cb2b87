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
