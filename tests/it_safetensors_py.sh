#!/bin/bash
# Our safetensors writer against the real client (PyPI's safetensors, from the
# project virtualenv: make deps):
#  1. bin/st-tool write-sample and Python's serialize_file of the same tensors
#     (BF16 and F8 through TensorSpec, numpy has no such dtype) give identical
#     bytes (cmp); the numpy-only subset, with safetensors.numpy.save_file, too
#  2. Python reads our file (safe_open, deserialize): names, dtypes, shapes, values
#  3. our reader reads the Python-written files: the same listing as Python's
. "$(dirname "$0")/lib.sh"
T=$BIN/st-tool
[ -x "$T" ] || { echo "FAIL: $T not built (run make)"; exit 1; }
need_venv safetensors numpy
scratch_dir
fail=0
"$T" write-sample "$OUT/c.safetensors" || { echo "FAIL: st-tool write-sample"; exit 1; }
"$T" write-sample "$OUT/c_np.safetensors" numpy || { echo "FAIL: st-tool write-sample numpy"; exit 1; }
"$PY" - "$OUT" <<'EOF' || fail=1
import sys, numpy as np, safetensors
from safetensors import TensorSpec, serialize_file, safe_open, deserialize
from safetensors.numpy import save_file
out = sys.argv[1]
# keep in step with S[] in tools/st-tool.c: (name, safetensors dtype, torch-style dtype, numpy dtype or None, shape)
SAMPLES = [
    ("model.embed_tokens.weight", "F32", "float32", "<f4", (4, 3)),
    ("scalar", "F32", "float32", "<f4", ()),
    ("empty", "I64", "int64", "<i8", (0, 3)),
    ("idx", "I64", "int64", "<i8", (5,)),
    ("w.bf16", "BF16", "bfloat16", None, (2, 3)),
    ("bytes", "U8", "uint8", "u1", (7,)),
    ("f8", "F8_E4M3", "float8_e4m3fn", None, (6,)),
    ('quote"name', "F32", "float32", "<f4", (2,)),
    ("back\\slash", "U8", "uint8", "u1", (1,)),
    ("ctl\x01\x1f\x7f", "U8", "uint8", "u1", (2,)),
    ("new\nline\ttab\r\b\f", "I32", "int32", "<i4", (2,)),
    ("uni-\u00e9-\u65e5\u672c/x", "F16", "float16", "<f2", (3,)),
    ("flag", "BOOL", "bool", "?", (4,)),
    ("d", "F64", "float64", "<f8", (2,)),
    ("c", "C64", "complex64", "<c8", (2,)),
    ("u16", "U16", "uint16", "<u2", (3,)),
    ("i16", "I16", "int16", "<i2", (2,)),
    ("u32", "U32", "uint32", "<u4", (1,)),
    ("u64", "U64", "uint64", "<u8", (2,)),
    ("i8", "I8", "int8", "i1", (3,)),
    ("f8b", "F8_E5M2", "float8_e5m2", None, (1, 2)),
]
BITS = {"F32": 32, "I64": 64, "BF16": 16, "U8": 8, "F8_E4M3": 8, "I32": 32, "F16": 16, "BOOL": 8, "F64": 64,
        "C64": 64, "U16": 16, "I16": 16, "U32": 32, "U64": 64, "I8": 8, "F8_E5M2": 8}
def data(k, st, shape):
    n = int(np.prod(shape, dtype=np.int64))
    if st == "F32": return (np.arange(n, dtype=np.float32) * np.float32(0.25) - np.float32(1)).astype("<f4").tobytes()
    if st == "I64": return (np.arange(n, dtype=np.int64) * 1000003 - 7).astype("<i8").tobytes()
    if st == "BOOL": return (np.arange(n) & 1).astype(np.uint8).tobytes()
    nb = n * BITS[st] // 8
    return ((np.arange(nb, dtype=np.uint64) * 31 + k * 7 + 1) & 0xff).astype(np.uint8).tobytes()
raw = {name: data(k, st, shape) for k, (name, st, tdt, npdt, shape) in enumerate(SAMPLES)}
bad = 0
def check(cond, what):
    global bad
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond: bad = 1
# 1. the same tensors written by the client
keep = []
specs = {}
for name, st, tdt, npdt, shape in SAMPLES:
    buf = np.frombuffer(raw[name], dtype=np.uint8).copy()
    keep.append(buf)
    specs[name] = TensorSpec(dtype=tdt, shape=list(shape), data_ptr=buf.ctypes.data, data_len=buf.nbytes)
serialize_file(specs, f"{out}/py.safetensors", metadata={"format": "pt"})
arrays = {name: np.frombuffer(raw[name], dtype=npdt).reshape(shape) for name, st, tdt, npdt, shape in SAMPLES if npdt}
save_file(arrays, f"{out}/py_np.safetensors", metadata={"format": "pt"})
# 2. the client reads ours
with safe_open(f"{out}/c.safetensors", "np") as f:
    check(f.metadata() == {"format": "pt"}, "safe_open: __metadata__ == {'format': 'pt'}")
    check(sorted(f.keys()) == sorted(raw), f"safe_open: the {len(raw)} names, escaping included")
    for name, st, tdt, npdt, shape in SAMPLES:
        sl = f.get_slice(name)
        ok = sl.get_dtype() == st and tuple(sl.get_shape()) == shape
        if npdt:
            a = f.get_tensor(name)
            ok = ok and a.shape == shape and a.tobytes() == raw[name] and np.array_equal(a, arrays[name])
        check(ok, f"safe_open: {name!r} {st} {list(shape)}" + (" values" if npdt else ""))
with open(f"{out}/c.safetensors", "rb") as fh:
    got = {n: d for n, d in deserialize(fh.read())}
check(all(got[n]["data"] == raw[n] and got[n]["dtype"] == st and tuple(got[n]["shape"]) == shape
          for n, st, tdt, npdt, shape in SAMPLES), "deserialize: every tensor's bytes (BF16 and F8 included)")
# the listing st-tool check prints, from the client's reader
def fnv(b):
    h = 0xcbf29ce484222325
    for x in b: h = ((h ^ x) * 0x100000001b3) & 0xffffffffffffffff
    return h
for src, dst in (("py.safetensors", "py.list"), ("py_np.safetensors", "py_np.list")):
    with open(f"{out}/{src}", "rb") as fh:
        items = deserialize(fh.read())
    with safe_open(f"{out}/{src}", "np") as f:
        meta = f.metadata()
    with open(f"{out}/{dst}", "w") as fo:
        for k in sorted(meta): fo.write(f"meta {k}={meta[k]}\n")
        for n, d in sorted(items, key=lambda x: x[0].encode()):
            shape = ",".join(str(s) for s in d["shape"]) or "-"
            fo.write(f"{n.encode().hex()} {d['dtype']} {shape} {fnv(d['data']):016x}\n")
sys.exit(bad)
EOF
for pair in "c py" "c_np py_np"; do
    set -- $pair
    if cmp "$OUT/$1.safetensors" "$OUT/$2.safetensors"; then
        echo "ok    $1.safetensors (st-tool) and $2.safetensors (Python) are byte-identical ($(stat -c %s "$OUT/$1.safetensors") bytes)"
    else
        echo "FAIL  $1.safetensors (st-tool) differs from $2.safetensors (Python); headers:"
        for f in $1 $2; do head -c 2000 "$OUT/$f.safetensors" | tail -c +9 | tr -c '[:print:]' '.' | head -c 1200; echo; done
        fail=1
    fi
    # 3. our reader on the client's file: the client's own listing
    if "$T" check "$OUT/$2.safetensors" >"$OUT/$2.ours" && diff "$OUT/$2.list" "$OUT/$2.ours" >/dev/null; then
        echo "ok    st-tool check $2.safetensors: the same $(wc -l <"$OUT/$2.ours") lines (metadata; name, dtype, shape, FNV-1a of the bytes) as the client's reader"
    else
        echo "FAIL  st-tool check $2.safetensors"; diff "$OUT/$2.list" "$OUT/$2.ours" | head; fail=1
    fi
done
[ $fail -eq 0 ] && echo "it_safetensors_py: pass" || { echo "it_safetensors_py: FAIL"; exit 1; }
