"""`edgebundle build`: model -> OUT/<target>/{model.so, model.json, ...} -> bundles."""
from __future__ import annotations

import dataclasses
import datetime
import json
import platform
from pathlib import Path

from builder.bundle import elf
from builder.compiler.export import bucket_modules, to_relax
from builder.compiler.library import compile_library
from builder.validate.compare import compare, reference_outputs, run_in_process
from .errors import EdgebundleError, UnsupportedModelError
from builder.model.families import FAMILIES, detect_family
from builder.model.families.base import MAX_BATCH, read_json
from builder.bundle.formats import FORMATS
from builder.bundle.stage import file_record
from .progress import Progress
from builder.model.source import resolve_model
from builder.compiler.targets import TARGETS, resolve_target
from .versions import build_versions, dist_version
from builder.compiler.weights import Writer as WeightsWriter

LIBRARY = "model.so"
WEIGHTS = "model.weights"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# What a GPU model needs beside model.so at run time (the image / edge formats ship or
# require these; the manifest accounts for them either way).
CUDA_SYSTEM_LIBRARIES = [
    {"name": "libcudart.so.13", "what": "CUDA 13 runtime, linked by libtvm_runtime_cuda.so",
     "provided_by": "the CUDA 13 runtime (bundle, image or device)"},
    {"name": "libcuda.so.1", "what": "NVIDIA driver API (driver >= 580 for CUDA 13)",
     "provided_by": "the host's NVIDIA driver (containers: --gpus / nvidia-container-toolkit)"},
]


def runtime_libraries(target) -> dict:
    tvm = dist_version("apache-tvm")
    libs = [{"name": "libtvm_ffi.so", "from": f"apache-tvm-ffi=={dist_version('apache-tvm-ffi')} wheel ({target.arch})"},
            {"name": "libtvm_runtime.so", "from": f"apache-tvm=={tvm} wheel ({target.arch})"}]
    system = [{"name": "libstdc++.so.6", "what": "C++ runtime of libtvm_runtime.so",
               "provided_by": "the OS (Amazon Linux 2023, Debian, Ubuntu)"}]
    if target.device == "cuda":
        libs.append({"name": "libtvm_runtime_cuda.so", "from": f"apache-tvm=={tvm} wheel ({target.arch})"})
        system += CUDA_SYSTEM_LIBRARIES
    return {"tvm": libs, "system": system}


def make_manifest(spec, name: str, source: str, target, tvm_target: dict, target_dir: Path,
                  weights: dict | None, libraries: list[dict]) -> dict:
    shipped = [*(lib["file"] for lib in libraries), *([weights["file"]] if weights else []), *sorted(spec.files)]
    files = {fname: file_record(target_dir / fname) for fname in shipped}
    lib = elf.read_elf(target_dir / LIBRARY)
    return {
        "schema": 1,
        "model": {"name": name, "source": source, "family": spec.family, "task": spec.task,
                  "architecture": spec.architecture},
        "library": LIBRARY,
        # One library per sequence length (seq null: no such dimension); each library's
        # main(*inputs, *weights) takes the weights file's tensors at its "weights" indices.
        "libraries": libraries,
        "weights": weights,
        "inputs": [i.to_json() for i in spec.inputs],
        "outputs": [o.to_json() for o in spec.outputs],
        "max_batch": MAX_BATCH,
        "labels": spec.labels,
        "preprocessing": spec.preprocessing,
        "postprocessing": spec.postprocessing,
        "target": {"name": target.name, "tvm": tvm_target, "arch": target.arch, "device": target.device,
                   "elf_machine": lib.machine_name,
                   "lambda_architecture": target.lambda_arch},
        "glibc_required": elf.vstr(lib.glibc),
        "runtime_libraries": runtime_libraries(target),
        "versions": build_versions(),
        "files": files,
        "notes": spec.notes,
    }


def build(model: str, *, targets: list[str], formats: list[str], out: Path, family: str | None = None,
          task: str | None = None, name: str | None = None, options: dict | None = None,
          progress: Progress | None = None) -> dict:
    progress = progress or Progress()
    options = dict(options or {})
    out = Path(out)
    targets = list(dict.fromkeys(targets or ["x86_64"]))
    formats = list(dict.fromkeys(formats or []))
    for f in formats:
        if f not in FORMATS:
            raise UnsupportedModelError(f"unknown format {f!r}", hint=f"choose from {', '.join(FORMATS)}")
    resolved = {}
    for t in targets:
        gpu = t in TARGETS and TARGETS[t].device != "cpu"
        resolved[t] = resolve_target(t, options.get("host") if gpu else None)
        resolved[t].check_toolchain()
        for f in formats:
            FORMATS[f].precheck(resolved[t], options)
    cpus = cpu_per_target(options.get("cpu"), resolved)

    model_dir = resolve_model(model)
    config = read_json(model_dir / "config.json", "config.json")
    fam = FAMILIES[family] if family else detect_family(config, model_dir)
    task = task or fam.default_task(config, model_dir)
    name = name or (model if not Path(model).exists() else model_dir.name)
    progress.info(f"edgebundle: {name} -> family {fam.name}, task {task}, targets {', '.join(targets)}"
                  + (f", formats {', '.join(formats)}" if formats else ""))

    with progress.step(f"load {fam.name} model from {model_dir}"):
        spec = fam.load(model_dir, config, task, options)
    for note in spec.notes:
        progress.info(f"    note: {note}")
    with progress.step("torch.export + import into TVM Relax"):
        modules = bucket_modules(to_relax(spec), spec)
    max_seq = spec.seq_buckets[-1] if spec.seq_buckets else None
    if options.get("seq_buckets") and not spec.seq_buckets:
        raise UnsupportedModelError(f"--seq-buckets applies to text models; {spec.architecture} has no sequence "
                                    "dimension")
    for i in spec.inputs:
        if "seq" in i.shape and i.pad is None:  # runtime/ pads requests to a compiled length with it
            raise UnsupportedModelError(f"family {spec.family}: input {i.name} has a seq dimension but no pad value")
    if spec.seq_buckets:
        progress.info(f"    sequence lengths compiled: {', '.join(map(str, modules))}")
    with progress.step("PyTorch reference outputs"):
        refs = reference_outputs(spec)

    record = {"model": {"name": name, "source": str(model_dir), "family": fam.name, "task": task},
              "targets": {}, "formats": formats, "versions": build_versions(),
              "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for t in targets:
        target = resolved[t]
        tdir = out / t
        tdir.mkdir(parents=True, exist_ok=True)
        tvm_target = target.tvm_target_json(cpus.get(t), options.get("cuda_arch"))
        with progress.step(f"compile + link {t} ({json.dumps(tvm_target)})"):
            cpu_params = None
            if target.device == "cpu":
                # Resolved once: what compiles is exactly what the manifest records.
                from builder.compiler.schedules.cpu import params_from_env
                from builder.tools.tune import load_tuning_db

                cpu_params = (load_tuning_db(options["tuning_db"], tvm_target) if options.get("tuning_db")
                              else params_from_env())
            device_code, libraries, writer = None, [], WeightsWriter()
            for seq, bucket in modules.items():
                lib = LIBRARY if seq in (None, max_seq) else f"model-seq{seq}.so"
                device_code, lifted = compile_library(bucket, target, tvm_target, tdir / lib,
                                                      schedule=options.get("schedule", True), cpu_params=cpu_params)
                writer.add(lib, lifted)  # keeps only tensors not seen in an earlier length
                del lifted
                libraries.append({"file": lib, "seq": seq})
            for stale in tdir.glob("model-seq*.so"):
                if stale.name not in writer.orders:
                    stale.unlink()
            weights = None
            if writer.arrays:
                weights = writer.write(tdir / WEIGHTS)
                for entry in libraries:
                    entry["weights"] = writer.orders[entry["file"]]
            else:
                (tdir / WEIGHTS).unlink(missing_ok=True)
        for fname, content in spec.files.items():
            (tdir / fname).write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
        manifest = make_manifest(spec, name, str(model_dir), target, tvm_target, tdir, weights, libraries)
        if cpu_params is not None:
            manifest["schedule"] = {"enabled": options.get("schedule", True),
                                    "cpu_params": dataclasses.asdict(cpu_params),
                                    "tuning_db": str(options["tuning_db"]) if options.get("tuning_db") else None}
        if device_code is not None:
            manifest["device_code"] = device_code
            progress.info(f"    device code: {json.dumps(device_code)}")
        write_json(tdir / "model.json", manifest)
        manifest["validation"] = validate_target(tdir, target, spec, refs, progress)
        write_json(tdir / "model.json", manifest)
        trec = {"dir": t, "library": file_record(tdir / LIBRARY), "validation": manifest["validation"],
                "formats": {}}
        for f in formats:
            with progress.step(f"format {f} for {t}"):
                trec["formats"][f] = FORMATS[f].build(tdir, target, options, progress)
        record["targets"][t] = trec
        progress.info(f"    {t}: {tdir / LIBRARY} ({trec['library']['size'] / 1e6:.1f} MB)")
    write_json(out / "build.json", record)
    progress.info(f"edgebundle: wrote {out}/build.json")
    return record


def cpu_per_target(cpu, resolved: dict) -> dict:
    """`--cpu NAME` (one CPU platform among the targets) or `--cpu TARGET=NAME` (repeatable)."""
    if not cpu:
        return {}
    if isinstance(cpu, str):
        cpu = [cpu]
    out, plain = {}, [c for c in cpu if "=" not in c]
    for item in cpu:
        if "=" in item:
            t, name = item.split("=", 1)
            if t not in resolved:
                raise UnsupportedModelError(f"--cpu {item}: {t} is not among the targets being built",
                                            hint=f"targets: {', '.join(resolved)}")
            out[t] = name
    if plain:
        arches = {r.arch for r in resolved.values()}
        if len(plain) > 1 or len(arches) > 1:
            raise UnsupportedModelError(f"--cpu {plain[0]} is ambiguous with targets of several architectures",
                                        hint="say which target it is for: --cpu arm64=cortex-a72")
        for t in resolved:
            out.setdefault(t, plain[0])
    return out


def validate_target(tdir: Path, target, spec, refs, progress: Progress) -> dict:
    """Run what was built against PyTorch: in-process where the host can run it, under
    qemu for arm64, on the GPU when there is one; otherwise say loudly it was not."""
    import runtime
    from builder.validate.emulated import can_emulate, run_emulated

    where = str(tdir / LIBRARY)
    if target.host_can_run():
        with progress.step(f"validate {target.name} against PyTorch"):
            result = compare(spec, refs, run_in_process(runtime.load(tdir), spec, where), where)
        result["how"] = "in-process"
    elif can_emulate(target):
        outputs = run_emulated(tdir, target, spec.validation_inputs, progress)
        result = compare(spec, refs, outputs, where)
        result["how"] = "emulated (qemu-aarch64, QEMU_CPU=neoverse-n1)"
    elif target.device == "cuda" and platform.machine() == target.arch:
        try:
            model = runtime.load(tdir)
        except runtime.DeviceUnavailable as e:
            progress.warn(f"{target.name}: not validated here ({e}); run tests/gpu/check.py on a GPU machine")
            return {"skipped": str(e)}
        # GPU kernels accumulate in another order than PyTorch's CPU kernels.
        gpu_spec = dataclasses.replace(spec, tolerance={"atol": 1e-3, "rtol": 1e-3})
        with progress.step(f"validate {target.name} on the GPU against PyTorch (CPU)"):
            result = compare(gpu_spec, refs, run_in_process(model, spec, where), where)
        result["how"] = "on the GPU"
    else:
        reason = f"this host cannot run {target.name} code" + (
            " (install qemu-user to validate arm64 under emulation)" if target.arch == "aarch64" else "")
        progress.warn(f"{target.name}: not validated: {reason}")
        return {"skipped": reason}
    progress.info("    max|diff| vs PyTorch: " + ", ".join(f"{k} {v:.2e}" for k, v in result["max_abs_diff"].items()))
    return result


__all__ = ["build", "EdgebundleError"]
