"""Relax IRModule -> one compiled library per target and length (tvm.compile with our CPU
schedules or TVM's GPU defaults, then export_library with the target's linker)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from builder.compiler.targets import TargetSpec
from builder.errors import CompileError, EdgebundleError
from builder.fsutil import atomic_path


def _last_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


@contextlib.contextmanager
def _environ(**values):
    """Environment variables set (None: left alone) for the block, restored after it."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sort_shape_funcs_pass():
    """A module pass: the stores of each `shape_func` (VMShapeLower's host-side symbolic
    shape computations) sorted by shape-heap slot, so the same model compiles to the same
    bytes every time.

    TVM 0.27's VMShapeLower (src/relax/backend/vm/vm_shape_lower.cc, PopulateSlotInfo)
    orders them by iterating a std::unordered_map keyed by ffi::StructuralHash, which hashes
    a free tirx.Var (the symbolic batch) by its address: the order, hence model.so's bytes,
    changed from run to run. Each store writes a computed slot from loads of variable slots
    only, so the stores are independent and any order is correct."""
    import tvm
    from tvm import tirx

    def slot(stmt):
        if (isinstance(stmt, tirx.BufferStore) and len(stmt.indices) == 1
                and isinstance(stmt.indices[0], tirx.IntImm)):
            return int(stmt.indices[0].value)
        return None

    @tvm.transform.module_pass(opt_level=0, name="EdgebundleSortShapeFuncs")
    def _sort(mod, _ctx):
        for gvar, func in list(mod.functions.items()):
            if not (isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith("shape_func")
                    and isinstance(func.body, tirx.SeqStmt)):
                continue
            stores = list(func.body.seq)
            if any(slot(s) is None for s in stores):
                continue  # not the shape of VMShapeLower's output: leave it alone
            mod[gvar] = func.with_body(tirx.SeqStmt(sorted(stores, key=slot)))
        return mod

    return _sort


def compile_library(mod, target: TargetSpec, tvm_target: dict, out_so: Path, schedule: bool = True,
                    cpu_params=None, cuda_archs: tuple = (), storage: str = "fp32",
                    quantize: str = "none", compute: str = "fp32") -> tuple[dict | None, list]:
    """tvm.compile for one target and export the code as one .so; main's large constants,
    packed as the kernels read them, become trailing parameters (builder/compiler/weights.py
    says why); GPU kernels become a fatbin for `cuda_archs` (builder/compiler/cuda.py). CPU
    targets store their GEMM weights as `storage` (builder/compiler/schedules/storage.py), their
    dense layers int8 with quantize="int8" (builder/compiler/schedules/int8.py), bf16 with
    compute="bf16" (builder/compiler/schedules/bf16.py).
    Returns (the device code's description for GPU targets, those constants in order)."""
    import tvm
    from tvm import relax

    from builder.compiler import weights

    tvm_t = tvm.target.Target(tvm_target)
    if target.device == "cpu" and schedule:
        from builder.compiler.schedules.cpu import cpu_pipeline

        pipeline = cpu_pipeline(tvm_t, cpu_params, storage=storage, quantize=quantize, compute=compute)
    else:
        pipeline = relax.get_default_pipeline(tvm_t)
    lifted: list = []
    try:
        # CUDA modules stay source at compile time on every build machine, with or without a
        # driver (with one, TVM would compile them with NVRTC here); the export below compiles
        # them into a fatbin with nvcc.
        with _environ(TVM_COMPILE_FORCE_FALLBACK="1" if target.device == "cuda" else None):
            ex = tvm.compile(mod, target=tvm_t,
                             relax_pipeline=tvm.transform.Sequential([pipeline, sort_shape_funcs_pass(),
                                                                       weights.lift_constants_pass(lifted)]))
    except Exception as e:
        raise CompileError(f"tvm.compile failed for target {target.name}: {_last_line(e)}",
                           where=f"tvm.compile({tvm_target})", hint="rerun with --debug for the trace") from e
    kwargs, device_code = {}, None
    if target.device == "cuda":
        from builder.compiler.cuda import fatbin_packer
        from builder.compiler.targets import llvm_target

        device_code = {}
        kwargs["fpack_imports"] = fatbin_packer(list(cuda_archs), llvm_target(target.platform), device_code)
    if target.platform.cross_compiler:
        from tvm.support import cc

        kwargs["fcompile"] = cc.cross_compiler(target.platform.cross_compiler)
    out_so.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out_so) as tmp:
            ex.export_library(str(tmp), **kwargs)
    except EdgebundleError:
        raise
    except Exception as e:
        raise CompileError(f"exporting {out_so.name} failed: {_last_line(e)}",
                           where=str(out_so), hint="rerun with --debug for the linker output") from e
    return device_code, lifted