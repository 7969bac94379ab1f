"""torch module -> Relax IRModule, once per build: torch.export with symbolic dimensions,
TVM's frontend, one module per compiled sequence length."""
from __future__ import annotations

import numpy as np

from builder.errors import CompileError
from builder.model.families.base import ModelSpec
from builder.options import MAX_BATCH


def torch_inputs(arrays: dict, spec: ModelSpec):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[i.name])) for i in spec.inputs)


def to_relax(spec: ModelSpec):
    """torch.export with symbolic batch (and sequence, for several buckets) dimensions, then
    TVM's Relax frontend."""
    import torch
    from torch.export import Dim

    # torch.export specialises a dimension of size 1: trace with the largest batch (and
    # the longest sequence).
    arrays = max(spec.validation_inputs, key=lambda a: next(iter(a.values())).shape)
    example = torch_inputs(arrays, spec)
    dims = {"batch": Dim("batch", min=1, max=MAX_BATCH)}
    if spec.seq_buckets and len(spec.seq_buckets) > 1:
        dims["seq"] = Dim("seq", min=2, max=spec.seq_buckets[-1])
    dynamic = {i.name: {axis: dims[d] for axis, d in enumerate(i.shape) if d in dims} for i in spec.inputs}
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(spec.module, example, dynamic_shapes=dynamic)
    except Exception as e:
        raise CompileError(f"torch.export failed for {spec.architecture}: {type(e).__name__}: {e}",
                           where="torch.export",
                           hint="the model's forward must be traceable; rerun with --debug for the trace") from e
    from tvm.relax.frontend.torch import from_exported_program

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_exported_program(ep)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise CompileError(f"TVM cannot import this model: {msg[-1] if msg else type(e).__name__}",
                           where="tvm.relax.frontend.torch.from_exported_program",
                           hint="an operator is probably unsupported by TVM 0.27's torch frontend; "
                                "--debug shows which") from e
    return clip_gathers(mod)


def bucket_modules(mod, spec: ModelSpec) -> dict:
    """{sequence length or None: module with that length fixed}: the symbolic "seq" of the
    export bound per bucket (TVM 0.27 cannot legalize layer norm over a symbolic length,
    and fixed lengths schedule better anyway); the batch stays symbolic."""
    import tvm

    if not spec.seq_buckets:
        return {None: mod}
    index, spec_in = next((n, i) for n, i in enumerate(spec.inputs) if "seq" in i.shape)
    dim = mod["main"].params[index].ty.shape[spec_in.shape.index("seq")]
    if isinstance(dim, tvm.tirx.IntImm):
        return {int(dim): mod}
    out = {}
    for n in spec.seq_buckets:
        fixed = tvm.IRModule(dict(mod.functions), attrs=mod.attrs, global_infos=mod.global_infos)
        fixed["main"] = mod["main"].bind_symbolic_vars({dim: n})
        out[n] = fixed
    return out


def clip_gathers(mod):
    """Rewrite take(mode="fast") (the frontend's embedding lookups) to mode="clip".

    "fast" reads out of bounds on a bad index (TVM warns about it on every compile); "clip"
    costs a min/max per index. runtime/ range-checks ids too: this is the second fence."""
    import tvm
    from tvm import relax

    take = tvm.ir.Op.get("relax.take")

    @relax.expr_functor.mutator
    class ClipTake(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.same_as(take) and call.attrs.mode == "fast":
                return relax.op.take(call.args[0], call.args[1], axis=call.attrs.axis, mode="clip")
            return call

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = ClipTake(mod).visit_expr(func)
    return mod