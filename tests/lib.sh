# tests/lib.sh — sourced by the integration scripts tests/it_*.sh:
# repository root as working directory, $BIN, and a scratch directory $OUT
# removed on exit.
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${BIN:-bin}
OUT=$(mktemp -d "/tmp/dsv3-$(basename "$0" .sh).XXXXXX")
trap 'rm -rf "$OUT"' EXIT
