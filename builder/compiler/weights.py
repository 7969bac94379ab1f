"""Weights out of model.so into model.weights, a flat file runtime/ maps into memory.

Embedded in the library, TVM 0.27 copies every constant out of the .so into fresh tensors
when the module loads (ResNet50: 130 of a 200 ms cold start; BERT-base: 440 MB copied,
doubling peak RSS). So the last pass of every pipeline turns each large constant of
`main` into an extra parameter - after all folding, so the weights are stored already
packed in the layout the kernels read - and runtime/ passes the mapped file's tensors.

File layout (little-endian): b"EBWEIGHT", u64 header length, a JSON header
{"tensors": [{"dtype", "shape", "offset", "nbytes"}, ...]}, then the raw tensors from the
next multiple of 64, each at an offset that is a multiple of 64 (mmap is page aligned, and
TVM's kernels assume 64-byte aligned buffers). runtime/_tvm.py reads it (WEIGHTS_*).
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from builder.fsutil import atomic_path

# Smaller constants (scalars, tiny shape tables) stay in the code: not worth an argument.
MIN_BYTES = 1024


def lift_constants_pass(out: list):
    """A module pass: large relax.Constant in `main` -> trailing parameters of `main`.
    Appends the constants' NDArrays to `out`, in parameter order."""
    import numpy as np
    import tvm
    import tvm_ffi
    from tvm import relax

    @relax.expr_functor.mutator
    class Lift(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.params: list = []
            self.seen: dict = {}

        # TVM 0.27: every constant (tensors, dtypes, strings) is an ir.GenericConst.
        def visit_generic_const_(self, const):
            data = const.value
            if not isinstance(data, tvm_ffi.Tensor):
                return const
            if math.prod(int(d) for d in data.shape) * np.dtype(str(data.dtype)).itemsize < MIN_BYTES:
                return const
            if const not in self.seen:  # FFI objects hash and compare by identity
                var = relax.Var(f"w{len(self.params)}", const.ty)
                self.seen[const] = var
                self.params.append((var, data))
            return self.seen[const]

    @tvm.transform.module_pass(opt_level=0, name="EdgebundleLiftConstants")
    def _lift(mod, _ctx):
        gv = mod.get_global_var("main")
        func = mod[gv]
        lifter = Lift(mod)
        body = lifter.visit_expr(func.body)
        if not lifter.params:
            return mod
        new = relax.Function(list(func.params) + [v for v, _ in lifter.params], body, func.ret_ty,
                             func.is_pure, func.attrs, func.span)
        out.extend(d for _, d in lifter.params)
        mod[gv] = new
        return mod

    return _lift


class Writer:
    """Collects the lifted constants of each library as it is compiled, keeping only tensors
    not seen before (sequence buckets share almost all of theirs: BERT-base holds one copy
    of its 434 MB, not one per length), then writes model.weights. Deterministic: the same
    libraries in the same order give the same bytes."""

    def __init__(self):
        self.arrays: list = []
        self.index: dict = {}
        self.orders: dict = {}
        self.bytes = 0  # of the distinct tensors kept

    def add(self, library: str, tensors: list) -> None:
        """`tensors`: TVM tensors or numpy arrays, in the library's parameter order."""
        import hashlib

        import numpy as np

        from runtime.arrays import WEIGHT_SIZES

        order = []
        for t in tensors:
            a = np.ascontiguousarray(t if isinstance(t, np.ndarray) else t.numpy())
            if str(a.dtype) not in WEIGHT_SIZES:  # what runtime/ can map (bfloat16 comes as its uint16 bits)
                raise ValueError(f"weights of dtype {a.dtype} are not supported by the runtime")
            a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # the file is little-endian
            key = (str(a.dtype), a.shape, hashlib.sha256(a.tobytes()).digest())
            if key not in self.index:
                self.index[key] = len(self.arrays)
                self.arrays.append(a)
                self.bytes += a.nbytes
            order.append(self.index[key])
        self.orders[library] = order

    def write(self, path: Path) -> dict:
        """Write the file; returns {"file", "count", "bytes"}."""
        from runtime._tvm import WEIGHTS_ALIGN, WEIGHTS_HEADER, WEIGHTS_MAGIC

        entries, offset = [], 0
        for a in self.arrays:
            entries.append({"dtype": str(a.dtype), "shape": list(a.shape), "offset": offset, "nbytes": int(a.nbytes)})
            offset += -(-a.nbytes // WEIGHTS_ALIGN) * WEIGHTS_ALIGN
        header = json.dumps({"tensors": entries}, separators=(",", ":")).encode()
        start = -(-(WEIGHTS_HEADER + len(header)) // WEIGHTS_ALIGN) * WEIGHTS_ALIGN
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(WEIGHTS_MAGIC + struct.pack("<Q", len(header)) + header)
            f.write(b"\0" * (start - f.tell()))
            for a, e in zip(self.arrays, entries):
                f.seek(start + e["offset"])
                f.write(a.tobytes())
            f.truncate(start + offset)
        return {"file": path.name, "count": len(self.arrays), "bytes": start + offset}
