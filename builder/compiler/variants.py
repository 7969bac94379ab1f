"""Every CPU variant of a target compiled, one library per length each, with the weights
they lift collected into one model.weights (builder/compiler/weights.py keeps a tensor once,
so variants that pack alike share it).

Variants compile in parallel where the build may use two CPUs, one thread each. A BERT-base
length takes ~14 s to compile on this machine's cores, mostly in C++ (TVM's passes, LLVM)
that runs without the GIL, so a second variant would otherwise add ~55 s (+60%) to a 93 s
build (tiny BERT, 2 cores: 34.5 s one after the other, 20.8 s in two threads, the same
bytes). Threads, not a forked process: a fork of a process whose TVM thread pool already
ran (a second target, a test session) spins forever waiting for pool workers that were not
copied into the child (seen: sched_yield in libtvm_runtime.so). TVM keeps its target and
pass contexts per thread.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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

    tvm_target = target.tvm_target_json(vspec.cpu, options.cuda_archs, vspec.attrs)
    params, db = params_from_env(vspec.name), None
    if db_target == tvm_target:
        params, db = load_tuning_db(options.tuning_db, tvm_target, params)
    return params, {"enabled": options.schedule, "cpu_params": dataclasses.asdict(params), "tuning_db": db}


def _compile(vspec, modules: dict, target, tdir: Path, options, max_seq, cuda_archs, db_target,
             shared: dict) -> Compiled:
    import numpy as np

    from builder.compiler.library import compile_library

    tvm_target = target.tvm_target_json(vspec.cpu, options.cuda_archs, vspec.attrs)
    params, schedule = variant_params(target, vspec, options, db_target) if target.device == "cpu" else (None, None)
    storage = options.weights
    if options.quantize == "int8":
        import tvm

        from builder.compiler.schedules.int8 import kernel_kind

        kind = kernel_kind(tvm.target.Target(tvm_target))
        schedule["int8"] = {"kernel": kind.name, "activation_levels": kind.levels + 1,
                            "tile": [kind.rows, kind.vectors * kind.lanes]}
    if vspec.compute == "bf16":
        import tvm

        from builder.compiler.schedules.bf16 import kernel_kind as bf16_kind

        # TargetSpec.variants() gave bf16 only to CPUs with the dot product (refusing --cpu ones without)
        kind = bf16_kind(tvm.target.Target(tvm_target))
        schedule["bf16"] = {"kernel": kind.name, "tile": [kind.tile.rows, kind.tile.vectors * kind.tile.lanes]}
        storage = "bf16"  # what the dense kernels do not cover (convolutions, embeddings) too
    out = Compiled(vspec.name, tvm_target, schedule, [], {}, {}, {})
    for seq, bucket in modules.items():
        lib = vspec.library(seq, max_seq)
        code, lifted = compile_library(bucket, target, tvm_target, tdir / lib, schedule=options.schedule,
                                       cpu_params=params, cuda_archs=cuda_archs, storage=storage,
                                       quantize=options.quantize, compute=vspec.compute)
        if code is not None:
            out.codes[lib] = code
        keys = []
        for t in lifted:
            a = np.ascontiguousarray(t.numpy())
            k = _key(a)
            # One array per distinct tensor across variants too (they pack alike): BERT-base's
            # 440 MB held once while both compile, not once per variant.
            out.distinct.setdefault(k, shared.setdefault(k, a))
            keys.append(k)
        out.refs[lib] = keys
        del lifted
        out.files.append((lib, seq))
    return out


def _key(a) -> tuple:
    return str(a.dtype), a.shape, hashlib.sha256(a.tobytes()).digest()


def _parallel(target, vspecs, options) -> bool:
    # Without our schedules TVM's default pipeline legalizes outside schedules/cpu.py's
    # TE_LOCK, and te.tag_scope is a Python global two threads would trample.
    if len(vspecs) < 2 or target.device != "cpu" or not options.schedule \
            or os.environ.get(PARALLEL_ENV, "1") == "0":
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except (AttributeError, OSError):
        return False


def compile_variants(modules: dict, target, vspecs: tuple, tdir: Path, options, max_seq, cuda_archs,
                     db_target, progress: Progress) -> list[Compiled]:
    """Every variant compiled into tdir, in vspecs' order (the baseline first)."""
    args = (modules, target, tdir, options, max_seq, cuda_archs, db_target, {})
    if not _parallel(target, vspecs, options):
        done = []
        for vspec in vspecs:
            tvm_target = target.tvm_target_json(vspec.cpu, options.cuda_archs, vspec.attrs)
            with progress.step(f"compile + link {target.name} variant {vspec.name} ({json.dumps(tvm_target)})"):
                done.append(_compile(vspec, *args))
        return done
    names = " and ".join(f"{v.name} ({json.dumps(target.tvm_target_json(v.cpu, (), v.attrs))})" for v in vspecs)
    with progress.step(f"compile + link {target.name} variants {names}, in parallel"):
        with ThreadPoolExecutor(len(vspecs), thread_name_prefix="edgebundle-compile") as pool:
            futures = [pool.submit(_compile, vspec, *args) for vspec in vspecs]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
