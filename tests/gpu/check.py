"""GPU check: build for --target cuda, run the model on the GPU through the shipped runtime
in a fresh process where torch, tvm, tvm_ffi and numpy cannot be imported (a staged bundle:
runtime/, libtvm_ffi.so, libtvm_runtime.so, libtvm_runtime_cuda.so), compare with PyTorch
on CUDA (fp32, TF32 off) at batch 1 and 32, and time both.

    python3 tests/gpu/check.py                 # tiny BERT + tiny ResNet, then BERT-base + ResNet50
    python3 tests/gpu/check.py --tiny-only
    python3 tests/gpu/check.py --json results.json
    python3 tests/gpu/check.py --build-only    # no GPU needed: build, stage, check the fatbin

Needs an NVIDIA GPU, its driver, torch with CUDA and the CUDA 13 runtime (libcudart.so.13:
from the CUDA toolkit, or the nvidia-cuda-runtime wheel torch brings). The fatbin is built
for the GPU present only (--cuda-arch sm_XY), plus PTX. Exit status 1 when any model
disagrees with PyTorch beyond atol 1e-3, or its first call compiled anything.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

ATOL = 1e-3
BATCHES = (1, 32)

# Runs in the fresh process: only the staged bundle on sys.path, and imports of the build
# side refused, so anything the runtime needed from them would fail here.
_PROBE = """
import importlib.abc, json, sys, time
BLOCKED = {"torch", "tvm", "tvm_ffi", "numpy", "transformers", "builder"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this check: " + name)
sys.meta_path.insert(0, Block())
stage, index_path, out_dir, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
import runtime
from runtime.arrays import read_raw
model = runtime.load(stage)
loaded = time.perf_counter() - t0
report = {"load_s": loaded, "batches": {}}
for batch, tensors in json.load(open(index_path)).items():
    inputs = read_raw(tensors)
    t = time.perf_counter()
    outs = model.run(inputs)
    first = time.perf_counter() - t
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model.run(inputs)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    written = {}
    for name, view in outs.items():
        path = f"{out_dir}/{batch}-{name}.bin"
        open(path, "wb").write(view.tobytes())
        written[name] = [path, view.format, list(view.shape)]
    report["batches"][batch] = {"first_call_s": first, "warm_ms": times[len(times) // 2], "outputs": written}
report["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(report))
"""


def _torch_reference(model_dir: Path, family: str):
    import torch
    import transformers

    if family == "bert":
        model = transformers.BertModel.from_pretrained(str(model_dir), attn_implementation="eager")
    else:
        model = transformers.ResNetForImageClassification.from_pretrained(str(model_dir))
    model = model.eval().cuda()

    def run(a):
        t = {k: torch.from_numpy(v).cuda() for k, v in a.items()}
        with torch.no_grad():
            if family == "bert":
                h = model(**t).last_hidden_state
                mask = t["attention_mask"].unsqueeze(-1).float()
                out = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            else:
                out = model(**t).logits
        return out.cpu().numpy()  # includes the copy back, as ours does

    return run


def _median_ms(fn, n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _inputs(model, family: str, batch: int) -> dict:
    rng = np.random.default_rng(batch)
    if family == "bert":
        vocab = model.inputs[0].range[1]
        return {"input_ids": rng.integers(0, vocab, (batch, 128), dtype=np.int64),
                "attention_mask": np.ones((batch, 128), np.int64),
                "token_type_ids": np.zeros((batch, 128), np.int64)}
    return {"pixel_values": rng.standard_normal([batch] + list(model.inputs[0].shape[1:])).astype(np.float32)}


def _libcudart_dirs() -> list[str]:
    """Directories holding libcudart.so.13: the CUDA toolkit's, or the nvidia wheels'."""
    import importlib.util

    found = [d for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib")
             if Path(d, "libcudart.so.13").exists()]
    spec = importlib.util.find_spec("nvidia")
    for root in ([] if spec is None else spec.submodule_search_locations):
        found += sorted({str(p.parent) for p in Path(root).glob("**/libcudart.so.13")})
    return found


def check(name: str, model_dir: Path, family: str, arch: str, out: Path, runs: int, build_only: bool) -> dict:
    from builder.bundle.stage import stage_bundle
    from builder.build import build
    from builder.compiler.cuda import device_code_of
    from builder.compiler.targets import TARGETS
    from builder.options import BuildOptions
    from builder.progress import Progress
    from builder.validate.emulated import write_raw
    from runtime.manifest import read as read_manifest

    t0 = time.perf_counter()
    text = {"seq_len": 128, "seq_buckets": (128,)} if family == "bert" else {}
    build(str(model_dir), out, BuildOptions(targets=("cuda",), name=name, cuda_archs=(arch,), **text),
          progress=Progress(quiet=True))
    build_s = time.perf_counter() - t0
    tdir = out / "cuda"
    manifest = read_manifest(tdir)
    (code,) = device_code_of(tdir / manifest.library.file)
    result = {"model": name, "cuda_arch": arch, "build_s": round(build_s, 1),
              "model_so_mb": round((tdir / manifest.library.file).stat().st_size / 1e6, 2),
              "device_code": code, "ok": code["format"] == "fatbin" and code["sass"] == [arch]}
    stage = out / "stage"
    stage.mkdir()
    host_python = "%d.%d" % sys.version_info[:2]
    stage_bundle(stage, tdir, manifest, TARGETS["cuda"], host_python, Progress(quiet=True))
    result["staged_libraries"] = sorted(p.name for p in stage.glob("lib*.so*"))
    if build_only:
        print(json.dumps(result), flush=True)
        return result

    import runtime  # in this process only for the input specs, never run here

    spec_model = runtime.manifest.read(tdir)
    arrays = {b: _inputs(spec_model, family, b) for b in BATCHES}
    work = out / "probe"
    work.mkdir()
    index = {str(b): write_raw(a, work, f"in-{b}-") for b, a in arrays.items()}
    (work / "inputs.json").write_text(json.dumps(index))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(stage), "HOME": str(work),
           "LD_LIBRARY_PATH": ":".join(_libcudart_dirs())}
    proc = subprocess.run([sys.executable, "-S", "-c", _PROBE, str(stage), str(work / "inputs.json"), str(work),
                           str(runs)], env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        result.update(ok=False, error=proc.stderr.strip().splitlines()[-8:])
        print(json.dumps(result), flush=True)
        return result
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    ref_fn = _torch_reference(model_dir, family)
    result.update(load_s=round(report["load_s"], 3), leaked=report["leaked"], batches={})
    result["ok"] &= not report["leaked"]
    for b in BATCHES:
        got = report["batches"][str(b)]
        (path, fmt, shape), = got["outputs"].values()
        ours = np.frombuffer(Path(path).read_bytes(), dtype=np.dtype(fmt)).reshape(shape)
        ref = ref_fn(arrays[b])
        diff = float(np.max(np.abs(ours - ref)))
        torch_ms = _median_ms(lambda: ref_fn(arrays[b]), runs)
        # A first call that compiled kernels (NVRTC, PTX JIT of all of them) takes seconds.
        result["batches"][b] = {"max_abs_diff": diff, "first_call_s": round(got["first_call_s"], 3),
                                "ours_ms": round(got["warm_ms"], 3), "torch_eager_ms": round(torch_ms, 3),
                                "speedup_vs_torch": round(torch_ms / got["warm_ms"], 2)}
        result["ok"] &= diff <= ATOL and got["first_call_s"] < 2.0
    import torch

    result["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny-only", action="store_true")
    p.add_argument("--build-only", action="store_true", help="no GPU: build, stage and read the fatbin only")
    p.add_argument("--arch", help="sm_XY to build for (default: the visible GPU's)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    arch = args.arch
    if not args.build_only:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU visible to torch: nothing to check (--build-only checks the build)", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32
        torch.backends.cudnn.allow_tf32 = False
        major, minor = torch.cuda.get_device_capability(0)
        arch = arch or f"sm_{major}{minor}"
    arch = arch or "sm_90"
    import tiny_models

    sys.path.insert(0, str(HERE.parent.parent / "examples"))
    from full_size import make_bert_base, make_resnet50

    results = []
    with tempfile.TemporaryDirectory(prefix="edgebundle-gpu-") as tmp:
        tmp = Path(tmp)
        models = [("tiny-bert", tiny_models.make_tiny_bert(tmp / "tiny-bert"), "bert"),
                  ("tiny-resnet", tiny_models.make_tiny_resnet(tmp / "tiny-resnet"), "resnet")]
        if not args.tiny_only:
            models += [("bert-base", make_bert_base(tmp / "bert-base"), "bert"),
                       ("resnet50", make_resnet50(tmp / "resnet50"), "resnet")]
        for name, model_dir, family in models:
            results.append(check(name, model_dir, family, arch, tmp / f"out-{name}", args.runs, args.build_only))
    if not args.build_only:
        print(f"\n{'model':<12} {'batch':>5} {'max|diff|':>10} {'first s':>8} {'ours ms':>9} {'torch ms':>9} "
              f"{'speedup':>8}")
        for r in results:
            for b, row in (r.get("batches") or {}).items():
                print(f"{r['model']:<12} {b:>5} {row['max_abs_diff']:>10.2e} {row['first_call_s']:>8.3f} "
                      f"{row['ours_ms']:>9.3f} {row['torch_eager_ms']:>9.3f} {row['speedup_vs_torch']:>7.2f}x")
            print(f"{r['model']:<12} {'ok' if r['ok'] else 'FAIL: ' + json.dumps(r.get('error', ''))}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
