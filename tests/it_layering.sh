#!/bin/bash
# it_layering.sh — the source layering rules of tools/check-layering (include cycles,
# deck.h out of src/model/, MPI only in comm/main, no allocation in forward/backward),
# checked on the real include graph ($CC -E -dI -MMD with the Makefile's include flags).
# First the checker's self-test: a clean synthetic tree must pass and a copy with one
# planted violation per rule must be reported with file:line and a non-zero exit. Then
# the repository's src/: one line per violation (file:line: rule: detail), one per rule.
# Needs no build; skips without python3 or a C compiler.
. "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null || { echo "skip: python3 not found"; exit 77; }
command -v mpicc >/dev/null || command -v gcc >/dev/null || { echo "skip: no mpicc or gcc"; exit 77; }

fails=0
echo "== check-layering --self-test"
if tools/check-layering --self-test; then st=PASS; else st=FAIL; fails=$((fails + 1)); fi

echo "== check-layering (src/)"
tools/check-layering
rc=$?
case $rc in
    0) tree=PASS ;;
    1) tree="FAIL (violations above)"; fails=$((fails + 1)) ;;
    *) tree="FAIL (checker error, rc $rc)"; fails=$((fails + 1)) ;;
esac
echo "it_layering: self-test $st, tree $tree"
[ $fails -eq 0 ]
