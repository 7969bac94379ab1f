"""Every CPU variant of a target compiled, one library per length each, with the weights
they lift collected into one model.weights (builder/compiler/weights.py keeps a tensor once,
so variants that pack alike share it).

Variants compile in parallel where the build may use two CPUs: the second variant in a
forked process. A BERT-base length takes ~14 s to compile on this machine's cores and one
compile uses one core, so a second variant would otherwise add ~55 s (+60%) to a
93 s build. The fork happens before this process compiles anything: the child inherits the
imported Relax modules instead of exporting the model again, and no TVM thread pool exists
yet to be lost across the fork. The child returns its libraries' weight tensors (each
distinct one once) through a file; the parent adds them in the order a sequential build
would, so model.weights is byte-identical either way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import signal
import traceback
from pathlib import Path

from builder.errors import CompileError
from builder.progress import Progress

PARALLEL_ENV = "EDGEBUNDLE_PARALLEL_VARIANTS"  # "0": one variant after another


@dataclasses.dataclass
class Compiled:
    """One variant's output: its TVM target and schedule record, (library, seq) per length,
    GPU code descriptions, and each library's lifted weights as numpy arrays."""

    name: str
    tvm_target: dict
    schedule: dict | None
    files: list
    codes: dict
    refs: dict  # library -> [key of each weight, in parameter order]
    distinct: dict  # key -> numpy array: lengths share most tensors, each held once

    def weights(self, library: str) -> list:
        return [self.distinct[k] for k in self.refs[library]]


def variant_params(target, vspec, options, db_target):
    """(CpuParams, schedule record) of a CPU variant: the tuning database where it was made
    for this variant's TVM target, else the variant's defaults (and the environment's)."""
    from builder.compiler.schedules.cpu import params_from_env
    from builder.compiler.tuning_db import load_tuning_db

    tvm_target = target.tvm_target_json(vspec.cpu, options.cuda_archs)
    if db_target == tvm_target:
        params, db = load_tuning_db(options.tuning_db, tvm_target)
    else:
        params, db = params_from_env(vspec.name), None
    return params, {"enabled": options.schedule, "cpu_params": dataclasses.asdict(params), "tuning_db": db}


def _compile(vspec, modules: dict, target, tdir: Path, options, max_seq, cuda_archs, db_target) -> Compiled:
    import numpy as np

    from builder.compiler.library import compile_library

    tvm_target = target.tvm_target_json(vspec.cpu, options.cuda_archs)
    params, schedule = variant_params(target, vspec, options, db_target) if target.device == "cpu" else (None, None)
    out = Compiled(vspec.name, tvm_target, schedule, [], {}, {}, {})
    for seq, bucket in modules.items():
        lib = vspec.library(seq, max_seq)
        code, lifted = compile_library(bucket, target, tvm_target, tdir / lib, schedule=options.schedule,
                                       cpu_params=params, cuda_archs=cuda_archs)
        if code is not None:
            out.codes[lib] = code
        keys = []
        for t in lifted:
            a = np.ascontiguousarray(t.numpy())
            k = _key(a)
            out.distinct.setdefault(k, a)
            keys.append(k)
        out.refs[lib] = keys
        del lifted
        out.files.append((lib, seq))
    return out


def _key(a) -> tuple:
    return str(a.dtype), a.shape, hashlib.sha256(a.tobytes()).digest()


def _child(result: Path, *args) -> None:
    """In the forked process: compile, then write ("ok", Compiled) or ("error", message,
    traceback) to `result`; never returns."""
    code = 1
    try:
        try:
            payload = ("ok", _compile(*args))
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            payload = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
        with open(result, "wb") as f:
            pickle.dump(payload, f, protocol=5)
    finally:
        os._exit(code)  # no atexit handlers, no flushing the parent's buffers twice


def _can_fork(target, vspecs) -> bool:
    if len(vspecs) < 2 or target.device != "cpu" or os.environ.get(PARALLEL_ENV, "1") == "0":
        return False
    try:
        return hasattr(os, "fork") and len(os.sched_getaffinity(0)) >= 2
    except (AttributeError, OSError):
        return False


def compile_variants(modules: dict, target, vspecs: tuple, tdir: Path, options, max_seq, cuda_archs,
                     db_target, progress: Progress) -> list[Compiled]:
    """Every variant compiled into tdir, the baseline (vspecs[0]) first in the result."""
    args = (modules, target, tdir, options, max_seq, cuda_archs, db_target)
    if not _can_fork(target, vspecs):
        done = []
        for vspec in vspecs:
            tvm_target = target.tvm_target_json(vspec.cpu, options.cuda_archs)
            with progress.step(f"compile + link {target.name} variant {vspec.name} ({json.dumps(tvm_target)})"):
                done.append(_compile(vspec, *args))
        return done
    children, reaped = [], set()
    try:
        # Forked before this process compiles anything (see the module's docstring).
        for vspec in vspecs[1:]:
            result = tdir / f".variant-{vspec.name}.pickle"
            pid = os.fork()
            if pid == 0:
                _child(result, vspec, *args)
            children.append((vspec, pid, result))
        names = ", ".join(v.name for v in vspecs[1:])
        with progress.step(f"compile + link {target.name} variant {vspecs[0].name} here and {names} in parallel "
                           f"({', '.join(json.dumps(target.tvm_target_json(v.cpu)) for v in vspecs)})"):
            done = [_compile(vspecs[0], *args)]
            for vspec, pid, result in children:
                _, status = os.waitpid(pid, 0)
                reaped.add(pid)
                done.append(_collect(vspec, status, result))
    finally:
        for vspec, pid, result in children:
            if pid not in reaped:  # this process failed or was interrupted first
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ChildProcessError, ProcessLookupError, OSError):
                    pass
            result.unlink(missing_ok=True)
    return done


def _collect(vspec, status: int, result: Path) -> Compiled:
    try:
        with open(result, "rb") as f:
            payload = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        payload = None
    if payload is None or payload[0] != "ok":
        why = payload[1] if payload else f"the compiling process ended with status {status} and no result"
        raise CompileError(f"variant {vspec.name}: {why}", where=f"variant {vspec.name}",
                           hint=f"rerun with --debug, or with {PARALLEL_ENV}=0 to compile in this process")
    return payload[1]
