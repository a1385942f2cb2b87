#!/bin/bash
# A checkpoint written by dsv3 (np=2, EP=2, ZeRO-3) opened with the usual
# tools: h5ls -r shows the HF-named layout, h5py (PyPI's, from the project
# virtualenv: make deps; tests/lib.sh need_venv) reads global shapes, root
# attributes and every value of several tensors, recomputed from the
# deterministic fill of test_ckpt_mpi.
. "$(dirname "$0")/lib.sh"
BUILD=${BUILD:-build}
T=$BUILD/tests/test_ckpt_mpi
[ -x "$T" ] || { echo "skip: $T not built (run make)"; exit 77; }
need_venv h5py numpy
export HDF5_USE_FILE_LOCKING=FALSE OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
W=$(mktemp -d "${TMPDIR:-/tmp}/it_ckpt_h5py.XXXXXX")
trap 'rm -rf "$W"' EXIT
if command -v mpirun >/dev/null; then RUN=(mpirun --oversubscribe --bind-to none -np 2); EP=2; else RUN=(); EP=1; fi
"${RUN[@]}" "$T" save "$W" $EP 3 7 || { echo "FAIL: save"; exit 1; }
F=$W/checkpoints/step_00000007.h5
"$T" names >"$W/names.txt" || exit 1
fail=0
if command -v h5ls >/dev/null; then
    h5ls -r "$F" >"$W/h5ls.txt"
    for want in "/model/layers/0/self_attn/q_a_proj/weight Dataset {12, 16}" \
                "/model/layers/1/mlp/experts/gate_proj/weight Dataset {8, 8, 16}" \
                "/model/layers/1/mlp/gate/e_score_correction_bias Dataset {8}" \
                "/model/lm_head/weight Dataset {64, 16}" \
                "/optim/exp_avg/layers/2/mlp/experts/down_proj/weight Dataset {8, 16, 8}"; do
        grep -q "^${want%% Dataset*} *Dataset ${want##* Dataset }" "$W/h5ls.txt" && echo "ok    h5ls: $want" ||
            { echo "FAIL  h5ls lacks: $want"; fail=1; }
    done
else
    echo "note  h5ls not installed (hdf5-tools): layout listing not checked"
fi
"$PY" - "$F" "$W/names.txt" <<'PYEOF' || fail=1
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
index = {}
for line in open(sys.argv[2]):
    i, name = line.split()
    index[name] = int(i)

def val(which, i, n):
    # test_ckpt_mpi.c val(): exact float of (buffer, tensor, global flat index)
    g = np.arange(n, dtype=np.uint64)
    lo = (g & 0xffffffff).astype(np.uint32)
    hi = (g >> 32).astype(np.uint32)
    with np.errstate(over="ignore"):
        h = np.uint32((i * 2654435761) & 0xffffffff) ^ (lo * np.uint32(40503) + np.uint32(which * 977) + hi)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0x5bd1e995)
        h ^= h >> np.uint32(15)
    return (((h % np.uint32(20001)).astype(np.int64) - 10000) / 64.0).astype(np.float32)

def path(name, root="/model"):
    rel = name[6:] if name.startswith("model.") else name
    return root + "/" + rel.replace(".", "/")

ok = True
def check(cond, what):
    global ok
    print(("ok    " if cond else "FAIL  ") + what)
    ok = ok and cond

a = f.attrs
check(int(a["format_version"]) == 1 and int(a["step"]) == 7 and int(a["tokens_seen"]) == 7000
      and int(a["data_position"]) == 49 and int(a["world_size"]) in (1, 2) and int(a["zero_stage"]) == 3,
      "root attributes: format_version 1, step 7, tokens_seen 7000, data_position 49")
deck = a["deck"]
deck = deck.decode() if isinstance(deck, bytes) else str(deck)
check("resolved deck of test_ckpt_mpi" in deck, "deck text attribute")
check(int(a["hidden_size"]) == 16 and int(a["n_routed_experts"]) == 8, "model shape attributes")
shapes = {"model.embed_tokens.weight": (64, 16), "model.layers.1.mlp.experts.up_proj.weight": (8, 8, 16),
          "model.layers.2.mlp.experts.down_proj.weight": (8, 16, 8), "model.norm.weight": (16,),
          "model.layers.1.mlp.gate.e_score_correction_bias": (8,), "lm_head.weight": (64, 16),
          "model.layers.3.eh_proj.weight": (16, 32)}
for name, shape in shapes.items():
    d = f[path(name)]
    check(d.shape == shape and d.dtype == np.float32, "%s shape %s float32" % (path(name), shape))
    got = d[...].reshape(-1)
    check(np.array_equal(got, val(0, index[name], got.size)), "%s: all %d values as written" % (path(name), got.size))
for which, root in ((1, "/optim/exp_avg"), (2, "/optim/exp_avg_sq")):
    name = "model.layers.2.mlp.experts.gate_proj.weight"
    got = f[path(name, root)][...].reshape(-1)
    check(np.array_equal(got, val(which, index[name], got.size)), "%s: all values as written" % path(name, root))
check("layers/1/mlp/gate/e_score_correction_bias" not in f["/optim/exp_avg"], "router bias has no moments")
e = f[path("model.layers.1.mlp.experts.gate_proj.weight")]
check(e[5, 3, 7] == val(0, index["model.layers.1.mlp.experts.gate_proj.weight"], 8 * 8 * 16)[5 * 128 + 3 * 16 + 7],
      "expert 5 (owned by rank 1 at EP=2) element [5,3,7] by index")
sys.exit(0 if ok else 1)
PYEOF
exit $fail
