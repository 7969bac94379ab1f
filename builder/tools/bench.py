"""`edgebundle bench`: our compiled module (through runtime/) next to PyTorch eager and
ONNX Runtime on the same inputs, interleaved in one run (the machine is shared and noisy:
only side-by-side ratios and medians mean anything)."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from builder.errors import EdgebundleError, ToolMissingError
from builder.options import DEFAULT_PYTHON, DEFAULT_SEQ_LEN, BuildOptions
from builder.progress import Progress
from runtime.manifest import read as read_manifest
from builder.bundle.archive import tree_size

# Runs on a staged bundle (its vendored wheels, no site-packages, no numpy): what a
# Lambda cold start pays once the interpreter is up.
_COLD_OURS = """
import json, sys, time
t0 = time.perf_counter()
import runtime
from runtime.arrays import read_raw
model = runtime.load(sys.argv[1])
model.run(read_raw(json.load(open(sys.argv[2]))))
"""

_COLD_ORT = """
import sys, time
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = int(sys.argv[3])
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
data = np.load(sys.argv[2])
sess.run(None, {k: data[k] for k in data.files})
"""

# Appended to both probes. VmHWM: this process's peak RSS since exec (ru_maxrss would
# include the forked parent).
_COLD_REPORT = """
elapsed = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(elapsed, int(hwm) * 1024)
"""


def _cold(code: str, args: list[str], env: dict, cwd: Path, isolated: bool = False) -> tuple[float, float, int]:
    """(wall seconds incl. interpreter start, seconds inside the process, peak RSS bytes).
    isolated: no site-packages (-S), only what PYTHONPATH names."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *(["-S"] if isolated else []), "-c", code + _COLD_REPORT, *args],
                            env=env, cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise EdgebundleError(f"cold-start probe failed: {err.decode().strip().splitlines()[-1:] or out}",
                              where=" ".join(args[:1]))
    elapsed, hwm = out.decode().strip().splitlines()[-1].split()
    return wall, float(elapsed), int(hwm)


def _interleaved(candidates: dict, runs: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate, round by round: on a noisy shared machine only
    side-by-side rounds compare. Each engine keeps its default thread pool (TVM's, OpenMP's
    and ONNX Runtime's spin-wait between parallel regions, as they would serving requests),
    so in every round each first makes one untimed call: the previous engine's threads
    still spinning steal the cores from that call, not from the timed one. (Forcing all
    three pools passive instead made every parallel region wake a sleeping thread: ~10 ms
    on ResNet50's ~90 kernels for us, less for engines with fewer parallel regions.)"""
    for fn in candidates.values():
        fn(), fn()
    times = {name: [] for name in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            fn()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def _stats(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))],
            "min_ms": ms[0], "runs": len(ms)}


def _export_onnx(spec, inputs: dict, path: Path) -> None:
    import torch

    args = tuple(torch.from_numpy(inputs[i.name]) for i in spec.inputs)
    names = [i.name for i in spec.inputs]
    dyn = {n: {0: "batch"} for n in names}
    with torch.no_grad():
        torch.onnx.export(spec.module, args, str(path), input_names=names,
                          output_names=[o.name for o in spec.outputs], dynamic_axes=dyn,
                          opset_version=17, dynamo=False)


def built_from(manifest, model_dir: Path | None, tdir: Path) -> Path:
    """The PyTorch model directory `manifest` was built from: `model_dir` when given, else
    its hub snapshot in this machine's Hugging Face cache (or, schema 2, the path it
    recorded). Refused when its config and weights are not the ones the build compiled."""
    from builder.model.source import locate, model_digest, resolve_model

    recorded = manifest.model.source
    if model_dir is not None:
        model_dir = resolve_model(str(model_dir))
    elif locate(recorded) is not None:
        model_dir = locate(recorded)
    elif manifest.model.digest is None and Path(recorded).is_absolute() and Path(recorded).is_dir():
        model_dir = Path(recorded)  # schema 2 recorded the build machine's path
    else:
        raise EdgebundleError(f"bench compares with the PyTorch model, and the build records it only as "
                              f"{recorded!r}", where=str(tdir / "model.json"),
                              hint="pass the model directory it was built from with --model-dir DIR")
    digest = manifest.model.digest
    if digest is not None and model_digest(model_dir)["sha256"] != digest["sha256"]:
        raise EdgebundleError(f"{model_dir} is not the model this build compiled: its "
                              f"{', '.join(digest['files'])} differ from the build's (sha256 "
                              f"{digest['sha256'][:16]})", where=str(model_dir),
                              hint="pass the directory the build was made from, or rebuild from this one")
    return model_dir


def bench(model_or_out: str, *, target: str = "x86_64", threads: int | None = None, runs: int = 30,
          cold_runs: int = 3, json_path: Path | None = None, plot_path: Path | None = None,
          seq_len: int = DEFAULT_SEQ_LEN, progress: Progress | None = None, model_dir: Path | None = None,
          batch: int = 1, also: tuple = (), ort_int8: bool = False) -> dict:
    """`model_dir`: with a build's OUT, the model directory it was built from (manifests do
    not record the build machine's paths: only a hub source is found without it). `batch`:
    rows per request for the warm timings (the same request for every engine). `also`:
    other builds' OUT of the same model, timed in the same rounds. `ort_int8`: ONNX
    Runtime's quantize_dynamic model too (always for an int8 build)."""
    progress = progress or Progress()
    try:
        import onnxruntime as ort
    except ImportError:
        raise ToolMissingError("onnxruntime is not installed (the benchmark's reference)",
                               hint="pip install -e '.[bench]'") from None
    # Everything bench writes besides --json / --plot (a build when given a model, the ONNX
    # export, inputs, staged bundles) lives here and goes on any exit: errors, Ctrl-C.
    with tempfile.TemporaryDirectory(prefix="edgebundle-bench-") as tmp:
        return _bench(Path(tmp), ort, model_or_out, target=target, threads=threads, runs=runs,
                      cold_runs=cold_runs, json_path=json_path, plot_path=plot_path, seq_len=seq_len,
                      progress=progress, model_dir=model_dir, batch=batch, also=also, ort_int8=ort_int8)


def _bench(work: Path, ort, model_or_out: str, *, target: str, threads: int | None, runs: int, cold_runs: int,
           json_path: Path | None, plot_path: Path | None, seq_len: int, progress: Progress,
           model_dir: Path | None = None, batch: int = 1, also: tuple = (), ort_int8: bool = False) -> dict:
    from builder.build import build
    from builder.model.families import FAMILIES
    from builder.model.families.base import one_request, read_json
    from builder.compiler.targets import TARGETS
    from builder.model.source import resolve_model

    threads = threads or int(os.environ.get("TVM_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    # Both thread pools are sized when their libraries load: before anything imports them.
    os.environ["TVM_NUM_THREADS"] = str(threads)
    src = Path(model_or_out)
    if (src / "build.json").is_file():
        out = src
    else:
        if model_dir is not None:
            raise EdgebundleError("--model-dir goes with a build's OUT directory; bench builds this model itself",
                                  where=str(model_or_out), hint="drop --model-dir")
        out = work / "out"
        build(model_or_out, out, BuildOptions(targets=(target,), seq_len=seq_len), progress=progress)
        model_dir = resolve_model(model_or_out)
    tdir = out / target
    manifest = read_manifest(tdir)
    if not TARGETS[target].host_can_run():
        raise EdgebundleError(f"bench runs on this host only; {target} code cannot run here",
                              hint="bench --target x86_64 on an x86_64 machine")
    model_dir = built_from(manifest, model_dir, tdir)
    config = read_json(model_dir / "config.json", "config.json")
    pre = manifest.preprocessing
    options = BuildOptions(seq_len=pre.max_length if pre.kind == "text" else seq_len)
    spec = FAMILIES[manifest.model.family].load(model_dir, config, manifest.model.task, options)
    inputs = one_request(spec)
    if batch > 1:
        if batch > manifest.max_batch:
            raise EdgebundleError(f"--batch {batch} is more than the model's {manifest.max_batch} rows",
                                  hint=f"use --batch 1..{manifest.max_batch}")
        inputs = {k: np.ascontiguousarray(np.concatenate([v] * batch)) for k, v in inputs.items()}
    np.savez(work / "inputs.npz", **inputs)

    import torch

    import runtime

    torch.set_num_threads(threads)
    with progress.step("export ONNX for ONNX Runtime (torch.onnx)"):
        onnx_path = work / "model.onnx"
        _export_onnx(spec, inputs, onnx_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    ours = runtime.load(tdir)
    tin = tuple(torch.from_numpy(inputs[i.name]) for i in spec.inputs)

    def run_ours():
        return np.asarray(next(iter(ours.run(inputs).values())))

    def run_torch():
        with torch.no_grad():
            return spec.module(*tin)[0].numpy()

    def run_ort():
        return sess.run(None, inputs)[0]

    candidates = {"edgebundle (TVM)": run_ours, "PyTorch eager": run_torch, "ONNX Runtime": run_ort}
    openvino = _openvino(onnx_path, threads, inputs, progress)
    candidates.update(openvino.candidates)
    # The other variants this CPU runs, each timed in the same rounds (the row above is the
    # one the runtime picks here).
    from runtime import cpu

    others = {}
    for v in manifest.variants:
        if v.name != ours.variant.name and v.validated and not cpu.missing(cpu.KINDS[v.name], cpu.features()):
            others[f"edgebundle {v.name}"] = runtime.load(tdir, variant=v.name)
    for other in also:
        m = read_manifest(Path(other) / target)
        if m.model.source != manifest.model.source or [t.name for t in m.inputs] != [t.name for t in manifest.inputs]:
            raise EdgebundleError(f"--also {other}: a build of {m.model.source}, not of {manifest.model.source}",
                                  hint="compare builds of one model")
        if m.max_batch < batch or (m.seq_lengths or [0])[-1] < (manifest.seq_lengths or [0])[-1]:
            raise EdgebundleError(f"--also {other}: built for {m.max_batch} rows and up to "
                                  f"{(m.seq_lengths or ['-'])[-1]} tokens, fewer than this request's",
                                  hint="build both with the same --seq-len")
        for v in m.variants:  # every variant this CPU runs: int8 avx2 next to fp32 avx2
            if v.validated and not cpu.missing(cpu.KINDS[v.name], cpu.features()):
                others[f"edgebundle {_build_label(m)} {v.name}"] = runtime.load(Path(other) / target, variant=v.name)
    for name, model in others.items():
        candidates[name] = lambda model=model: np.asarray(next(iter(model.run(inputs).values())))
    quantized = bool(manifest.weights and manifest.weights.quantization)
    if ort_int8 or quantized:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as e:
            raise ToolMissingError(f"ONNX Runtime's quantization tools cannot load ({e})",
                                   hint="pip install -e '.[bench]' (onnx beside onnxruntime)") from None

        with progress.step("ONNX Runtime int8: quantize_dynamic (per-channel QInt8 weights)"):
            ort8_path = work / "model.int8.onnx"
            quantize_dynamic(str(onnx_path), str(ort8_path), per_channel=True, weight_type=QuantType.QInt8)
        sess8 = ort.InferenceSession(str(ort8_path), so, providers=["CPUExecutionProvider"])
        candidates["ONNX Runtime int8"] = lambda: sess8.run(None, inputs)[0]
    ref = run_torch()
    agree = {name: float(np.max(np.abs(fn() - ref))) for name, fn in candidates.items()}
    with progress.step(f"warm latency: {runs} interleaved rounds, {threads} threads"):
        times = _interleaved(candidates, runs)

    # Text models with several compiled lengths: a short request next to the full one
    # (ours and PyTorch eager on the same tokens, interleaved).
    by_length = {}
    if len(ours.seq_lengths) > 1:
        short = ours.seq_lengths[0]
        cut = {k: np.ascontiguousarray(v[:, :short]) for k, v in inputs.items()}
        tcut = tuple(torch.from_numpy(cut[i.name]) for i in spec.inputs)

        def short_torch():
            with torch.no_grad():
                return spec.module(*tcut)[0]

        pair = {"edgebundle (TVM)": lambda: ours.run(cut), "PyTorch eager": short_torch}
        with progress.step(f"warm latency at {short} tokens: {runs} interleaved rounds"):
            short_times = _interleaved(pair, runs)
        by_length = {str(short): {name: _stats(t)["median_ms"] for name, t in short_times.items()},
                     str(inputs[spec.inputs[0].name].shape[1]): {name: _stats(times[name])["median_ms"]
                                                                for name in pair}}

    from builder.bundle.stage import stage_bundle

    # Our cold start runs on a bundle staged for this interpreter: its vendored wheels and
    # libtvm_runtime.so, no site-packages.
    host_python = "%d.%d" % sys.version_info[:2]
    bundle = work / "bundle"
    bundle.mkdir()
    stage_bundle(bundle, tdir, manifest, TARGETS[target], host_python, progress)
    from builder.validate.emulated import write_raw

    (work / "inputs.json").write_text(json.dumps(write_raw(inputs, work, "")))
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TVM_NUM_THREADS": str(threads),
                "OMP_NUM_THREADS": str(threads)}
    cold = {"edgebundle (TVM)": [], "ONNX Runtime": []}
    with progress.step(f"cold start: {cold_runs} fresh processes each (imports + load + first inference)"):
        for _ in range(cold_runs):
            cold["edgebundle (TVM)"].append(_cold(_COLD_OURS, [str(bundle), str(work / "inputs.json")],
                                                  {**base_env, "PYTHONPATH": str(bundle)}, work, isolated=True))
            cold["ONNX Runtime"].append(_cold(_COLD_ORT, [str(onnx_path), str(work / "inputs.npz"), str(threads)],
                                              base_env, work))

    # What a bundle ships besides model.so / model.json / tokenizer: the vendored wheels,
    # libtvm_runtime.so and runtime/ (the lambda format's staging for Lambda's Python, measured).
    stage = work / "runtime-stage"
    stage.mkdir()
    stage_bundle(stage, tdir, manifest, TARGETS[target], DEFAULT_PYTHON, Progress(quiet=True), with_model=False)
    sizes = {"edgebundle (TVM)": {"runtime_bytes": tree_size(stage),
                                  "model_bytes": sum(f["size"] for f in manifest.files.values())}}
    # ONNX Runtime needs numpy beside it (ours does not).
    sizes["ONNX Runtime"] = {"runtime_bytes": tree_size(Path(ort.__file__).parent) + tree_size(Path(np.__file__).parent),
                             "model_bytes": onnx_path.stat().st_size}
    if "ONNX Runtime int8" in candidates:
        sizes["ONNX Runtime int8"] = {**sizes["ONNX Runtime"], "model_bytes": ort8_path.stat().st_size}
    for name in openvino.candidates:
        sizes[name] = {"runtime_bytes": openvino.runtime_bytes + tree_size(Path(np.__file__).parent),
                       "model_bytes": onnx_path.stat().st_size}

    result = {
        "model": dataclasses.asdict(manifest.model), "target": target, "threads": threads, "batch": batch,
        "variant": {"picked": ours.variant.name, "reason": ours.variant_reason},
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"), "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "max_abs_diff_vs_torch": agree,
        "warm": {name: _stats(t) for name, t in times.items()},
        # {tokens: {engine: median ms}}: only for text models compiled for several lengths
        "warm_by_length": by_length,
        # in-process: from the first line of the script (imports + load + first inference);
        # wall adds interpreter start and exit.
        "cold_start": {name: {"median_s": statistics.median(c[1] for c in runs_),
                              "median_wall_s": statistics.median(c[0] for c in runs_),
                              "peak_rss_mb": max(c[2] for c in runs_) / 2**20}
                       for name, runs_ in cold.items()},
        "sizes": sizes,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__,
                     "tvm": manifest.versions.tvm, **({"openvino": openvino.version} if openvino.version else {})},
        "notes": [openvino.note] if openvino.note else [],
    }
    torch_ms = result["warm"]["PyTorch eager"]["median_ms"]
    for name, st in result["warm"].items():
        st["speedup_vs_torch"] = torch_ms / st["median_ms"]
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if plot_path:
        plot(result, Path(plot_path))
    return result


@dataclasses.dataclass
class _OpenVino:
    candidates: dict
    version: str | None = None
    runtime_bytes: int = 0
    note: str | None = None


def _openvino(onnx_path: Path, threads: int, inputs: dict, progress: Progress) -> _OpenVino:
    """OpenVINO's CPU plugin on the ONNX file ONNX Runtime runs, in its default precision
    (bf16 where the CPU has AVX512_BF16 or AMX, f16 on some Arm cores: its
    INFERENCE_PRECISION_HINT) and with f32 forced; no rows where it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        note = "OpenVINO is not installed, so it has no rows (pip install openvino, or the bench extra)"
        progress.info(f"    note: {note}")
        return _OpenVino({}, note=note)
    core = ov.Core()
    model = core.read_model(str(onnx_path))
    out = _OpenVino({}, version=ov.get_version(), runtime_bytes=tree_size(Path(ov.__file__).parent))
    for forced in (None, "f32"):
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if forced:
            config["INFERENCE_PRECISION_HINT"] = forced
        try:
            with progress.step("OpenVINO: compile the ONNX model for CPU" + (f", precision {forced}" if forced else "")):
                compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # its own errors (RuntimeError mostly): a row left out, not the bench
            out.note = f"OpenVINO could not compile the model{f' at {forced}' if forced else ''} ({e}); its row is left out"
            progress.warn(out.note)
            continue
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f32"
        request = compiled.create_infer_request()
        label = f"OpenVINO {precision}" + ("" if forced else " (default)")
        out.candidates[label] = lambda request=request: np.asarray(request.infer(inputs)[0])
    return out


def _build_label(m) -> str:
    """What distinguishes builds of one model: the weights' storage or int8."""
    if m.weights is None:
        return "fp32"
    return "int8" if m.weights.quantization else m.weights.storage


def _cpu_name() -> str:
    """The model name, with the CPU family where it says more than the name (AMD's "AMD
    EPYC" is Zen 2 in family 23, Zen 4 in 25, Zen 5 in 26) and AVX-512 or not."""
    from runtime import cpu

    name, family = "unknown", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "cpu family" and family is None:
                family = value.strip()
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in cpu.features() else "no AVX-512"
    return f"{name} (family {family}, {isa})" if family else name


def format_table(r: dict) -> str:
    picked = r.get("variant") or {}
    lines = [f"{r['model']['name']} ({r['model']['task']}), inputs {r['input_shapes']}, {r['target']}, "
             f"{r['threads']} threads, {r['machine']['cpu']}, {r['date']}"
             + (f"; edgebundle (TVM) is variant {picked['picked']} ({picked['reason']})" if picked else ""),
             f"{'':<26}{'median ms':>10}{'p90 ms':>9}{'vs torch':>9}{'cold s':>8}{'RSS MB':>8}"
             f"{'runtime MB':>11}{'model MB':>10}{'max|diff|':>11}"]
    for name, st in r["warm"].items():
        cold = r["cold_start"].get(name)
        size = r["sizes"].get(name)
        cold_s = f"{cold['median_s']:.2f}" if cold else "-"
        rss = f"{cold['peak_rss_mb']:.0f}" if cold else "-"
        runtime_mb = f"{size['runtime_bytes'] / 2**20:.1f}" if size else "-"
        model_mb = f"{size['model_bytes'] / 2**20:.1f}" if size else "-"
        lines.append(f"{name:<26}{st['median_ms']:>10.1f}{st['p90_ms']:>9.1f}{st['speedup_vs_torch']:>8.2f}x"
                     f"{cold_s:>8}{rss:>8}{runtime_mb:>11}{model_mb:>10}{r['max_abs_diff_vs_torch'][name]:>11.1e}")
    for tokens, row in (r.get("warm_by_length") or {}).items():
        lines.append(f"  at {tokens} tokens: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in row.items()))
    lines += [f"  note: {note}" for note in r.get("notes", ())]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolMissingError("matplotlib is needed for --plot", hint="pip install -e '.[bench]'") from None
    names = list(r["warm"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    med = [r["warm"][n]["median_ms"] for n in names]
    p90 = [r["warm"][n]["p90_ms"] - r["warm"][n]["median_ms"] for n in names]
    axes[0].bar(names, med, yerr=[[0] * len(names), p90], color=["#2a7", "#c55", "#57c"], capsize=4)
    axes[0].set_ylabel("warm latency, ms (median, bar to p90)")
    cold_names = list(r["cold_start"])
    axes[1].bar(cold_names, [r["cold_start"][n]["median_s"] for n in cold_names], color=["#2a7", "#57c"])
    axes[1].set_ylabel("cold start, s (new process)")
    fig.suptitle(f"{r['model']['name']} - {r['threads']} threads - {r['machine']['cpu']} - {r['date']}", fontsize=9)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
