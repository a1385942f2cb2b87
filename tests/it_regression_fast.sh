#!/bin/bash
# The fast subset of the regression suite (make test; `make regression` runs all):
# every ZeRO stage (zero1-ep8 runs its reference zero0-ep8; zero2-ep8 equals zero3-ep8) and EP 4 with
# two experts per rank (tiny-np8),
# the tolerance tier against the committed goldens at 1 rank and at 8 ranks
# with ZeRO-3, the exact tier (bitwise, against runs of this session: the same
# deck twice, resume from a mid-run checkpoint vs uninterrupted), and two
# perturbed references that must fail (tolerance and exact tier).
set -u
cd "$(dirname "$0")/.."
export REG_OUT=${REG_OUT:-${BUILD:-build}/regression-fast}
regression/run tiny-np1 repeat-np1 tiny-np8 zero1-ep8 zero2-ep8 zero3-ep8 resume-np1 perturbed-outliers perturbed-exact
