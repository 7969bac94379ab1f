"""torch module -> Relax IRModule (once per build) -> one compiled library per target."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CompileError, ValidationError
from .families import ModelSpec
from .families.base import MAX_BATCH
from .targets import TargetSpec


def _torch_inputs(arrays: dict, spec: ModelSpec):
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
    example = _torch_inputs(arrays, spec)
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


def device_code_summary(ex) -> dict | None:
    """What device code the executable carries (GPU targets), for the manifest and tests."""
    found = []

    def walk(mod):
        for sub in mod.imports:
            if sub.kind not in ("llvm", "c", "library", "static_library"):
                src = sub.inspect_source()
                found.append({"kind": sub.kind, "kernels": src.count('extern "C" __global__'),
                              "source_bytes": len(src)})
            walk(sub)

    walk(ex.mod)
    return found[0] if len(found) == 1 else ({"modules": found} if found else None)


def compile_library(mod, target: TargetSpec, tvm_target: dict, out_so: Path, schedule: bool = True,
                    cpu_params=None) -> tuple[dict | None, list]:
    """tvm.compile for one target and export the code as one .so; main's large constants,
    packed as the kernels read them, become trailing parameters (builder/weights.py says
    why). Returns (device-code summary for GPU targets, those constants in order)."""
    import tvm
    from tvm import relax

    from . import weights

    tvm_t = tvm.target.Target(tvm_target)
    if target.device == "cpu" and schedule:
        from .schedules.cpu import cpu_pipeline

        pipeline = cpu_pipeline(tvm_t, cpu_params)
    else:
        pipeline = relax.get_default_pipeline(tvm_t)
    lifted: list = []
    try:
        ex = tvm.compile(mod, target=tvm_t,
                         relax_pipeline=tvm.transform.Sequential([pipeline, weights.lift_constants_pass(lifted)]))
    except Exception as e:
        raise CompileError(f"tvm.compile failed for target {target.name}: {str(e).strip().splitlines()[-1:]}",
                           where=f"tvm.compile({tvm_target})", hint="rerun with --debug for the trace") from e
    kwargs = {}
    if target.cross_compiler:
        from tvm.support import cc

        kwargs["fcompile"] = cc.cross_compiler(target.cross_compiler)
    out_so.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_so.with_suffix(".so.partial")
    try:
        ex.export_library(str(tmp), **kwargs)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise CompileError(f"linking {out_so.name} failed: {str(e).strip().splitlines()[-1:]}",
                           where=str(out_so), hint="rerun with --debug for the linker output") from e
    tmp.replace(out_so)
    return (device_code_summary(ex) if target.device != "cpu" else None), lifted


def reference_outputs(spec: ModelSpec) -> list[list[np.ndarray]]:
    import torch

    refs = []
    with torch.no_grad():
        for arrays in spec.validation_inputs:
            out = spec.module(*_torch_inputs(arrays, spec))
            refs.append([o.detach().cpu().numpy() for o in out])
    return refs


def run_in_process(model, spec: ModelSpec, where: str) -> list[dict]:
    """Outputs of the compiled module (through runtime/) for every validation input set."""
    outputs = []
    for n, arrays in enumerate(spec.validation_inputs):
        try:
            outputs.append({name: np.asarray(view) for name, view in model.run(arrays).items()})
        except Exception as e:
            raise ValidationError(f"the compiled module failed on validation input {n}: {e}", where=where,
                                  hint="rerun with --debug for the trace") from e
    return outputs


def compare(spec: ModelSpec, refs: list[list[np.ndarray]], outputs: list[dict], where: str) -> dict:
    """Compare the compiled module's outputs with PyTorch's; raise ValidationError with a
    per-output table when off."""
    atol, rtol = spec.tolerance["atol"], spec.tolerance["rtol"]
    worst: dict[str, float] = {}
    rows, failed = [], False
    for n, (ours, ref) in enumerate(zip(outputs, refs)):
        for out_spec, r in zip(spec.outputs, ref):
            o = ours[out_spec.name]
            if o.shape != r.shape:
                raise ValidationError(f"output {out_spec.name} has shape {o.shape}, PyTorch gives {r.shape}",
                                      where=where)
            diff = float(np.max(np.abs(o.astype(np.float64) - r))) if r.size else 0.0
            bound = atol + rtol * float(np.max(np.abs(r))) if r.size else atol
            ok = bool(np.isfinite(diff) and diff <= bound)
            failed |= not ok
            worst[out_spec.name] = max(worst.get(out_spec.name, 0.0), diff)
            rows.append(f"  input set {n} (batch {r.shape[0]})  {out_spec.name:<20} max|diff| {diff:.3e}"
                        f"  allowed {bound:.3e}  {'ok' if ok else 'FAIL'}")
    if failed:
        raise ValidationError(
            "the compiled module disagrees with PyTorch:\n" + "\n".join(rows), where=where,
            hint="this is a compiler or schedule bug; report it with the model config")
    return {"max_abs_diff": worst, "atol": atol, "rtol": rtol, "input_sets": len(refs)}
