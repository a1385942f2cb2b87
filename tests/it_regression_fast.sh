#!/bin/bash
# The fast subset of the regression suite (make test; `make regression` runs all):
# the exact tier at 1 rank, the tolerance tier at 8 ranks with ZeRO-3, resume
# from a mid-run checkpoint, and a perturbed golden that must fail.
set -u
cd "$(dirname "$0")/.."
export REG_OUT=${REG_OUT:-${BUILD:-build}/regression-fast}
regression/run tiny-np1 zero3-ep8 resume-np1 perturbed-outliers
