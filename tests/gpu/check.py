"""GPU check: cuda builds run on the GPU through the shipped runtime, in a fresh process where
torch, tvm, tvm_ffi, numpy and the builder cannot be imported (a staged bundle: runtime/,
libtvm_ffi.so, libtvm_runtime.so, libtvm_runtime_cuda.so, tokenizers / Pillow wheels),
compared with PyTorch on CUDA (fp32, TF32 off) at batch 1 and 32, and timed against it; and the
model server (`python -m runtime.serve`, what the cuda serving image runs) answering v2 and
SageMaker requests from 8 concurrent clients on the tiny BERT.

Two halves, so that the build can happen where TVM and nvcc are and the run where the GPU is:

    python3 tests/gpu/check.py --prepare DIR --arch sm_90 --python 3.12   # build machine, no GPU needed
    python3 tests/gpu/check.py --run DIR [--json results.json]            # GPU machine: torch + numpy only
    python3 tests/gpu/check.py [--tiny-only]                              # both, on a GPU machine with TVM

--prepare builds the tiny BERT and tiny ResNet (plus BERT-base and ResNet50 without
--tiny-only) for the given arch, and the tiny ResNet once more with the default fatbin (every
AWS GPU), which is what ships; it stages one runtime for the GPU machine's Python and writes
the inputs. --run loads each model in a fresh process with CUDA_DISABLE_PTX_JIT=1 (a fatbin
that needed the driver's JIT fails instead of passing slowly) and reports load time, first
call, warm latency and max|diff|. Exit status 1 when any model disagrees with PyTorch beyond
atol 1e-3, imports a build-side package, or fails to load.
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

# Runs in the fresh process: only the staged runtime on sys.path, and imports of the build
# side refused, so anything the runtime needed from them fails here.
_PROBE = """
import importlib.abc, json, sys, time
BLOCKED = {"torch", "tvm", "tvm_ffi", "numpy", "transformers", "builder"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this check: " + name)
sys.meta_path.insert(0, Block())
model_dir, index_path, out_dir, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
import runtime
from runtime.arrays import read_raw
model = runtime.load(model_dir)
report = {"load_s": time.perf_counter() - t0, "batches": {}}
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


# ---------------------------------------------------------------- build machine

def _inputs(model_inputs, family: str, batch: int) -> dict:
    rng = np.random.default_rng(batch)
    if family == "bert":
        vocab = model_inputs[0].range[1]
        return {"input_ids": rng.integers(0, vocab, (batch, 128), dtype=np.int64),
                "attention_mask": np.ones((batch, 128), np.int64),
                "token_type_ids": np.zeros((batch, 128), np.int64)}
    return {"pixel_values": rng.standard_normal([batch] + list(model_inputs[0].shape[1:])).astype(np.float32)}


def prepare(root: Path, arch: str, python: str, tiny_only: bool) -> None:
    """Build, stage and write inputs under root; root/plan.json lists what --run runs."""
    import tiny_models
    from builder.build import build
    from builder.bundle.stage import copy_runtime, pinned, vendor_runtime
    from builder.compiler.cuda import device_code_of
    from builder.compiler.targets import TARGETS
    from builder.options import DEFAULT_CUDA_ARCHS, BuildOptions
    from builder.progress import Progress
    from builder.validate.emulated import write_raw
    from runtime.manifest import read as read_manifest

    sys.path.insert(0, str(HERE.parent.parent / "examples"))
    from full_size import make_bert_base, make_resnet50

    root.mkdir(parents=True, exist_ok=True)
    models = [("tiny-bert", tiny_models.make_tiny_bert, "bert"), ("tiny-resnet", tiny_models.make_tiny_resnet, "resnet")]
    if not tiny_only:
        models += [("bert-base", make_bert_base, "bert"), ("resnet50", make_resnet50, "resnet")]
    # What ships is the default fatbin, source generated for the oldest arch: run it too.
    variants = [(name, make, family, (arch,)) for name, make, family in models]
    variants.append(("tiny-resnet-default", tiny_models.make_tiny_resnet, "resnet", DEFAULT_CUDA_ARCHS))
    plan, stage, staged = [], root / "stage", set()
    for name, make, family, archs in variants:
        src = root / "models" / name.removesuffix("-default")
        if not (src / "config.json").is_file():
            make(src)
        text = {"seq_len": 128, "seq_buckets": (128,)} if family == "bert" else {}
        t0 = time.perf_counter()
        out = root / "builds" / name
        build(str(src), out, BuildOptions(targets=("cuda",), name=name, cuda_archs=archs, **text),
              progress=Progress(quiet=True))
        tdir = out / "cuda"
        manifest = read_manifest(tdir)
        # The libtvm_*.so and tokenizers (a text model's load opens its tokenizer). Not Pillow:
        # this check sends tensors, and the runtime imports Pillow only to decode images;
        # leaving it out keeps the directory under the device's 64 MiB carry.
        if manifest.preprocessing.kind == "text" and not staged:
            stage.mkdir(exist_ok=True)
            # waitress: the model server (what the cuda serving image runs) is checked too.
            vendor_runtime(stage, manifest, TARGETS["cuda"], python, Progress(quiet=True),
                           extra=(pinned("waitress"),))
            staged.add("text")
        inputs = root / "inputs" / name
        inputs.mkdir(parents=True, exist_ok=True)
        index = {str(b): write_raw(_inputs(manifest.inputs, family, b), inputs, f"{b}-") for b in BATCHES}
        (inputs / "index.json").write_text(json.dumps(index))
        plan.append({"model": name, "family": family, "source": str(src.relative_to(root)),
                     "target_dir": str(tdir.relative_to(root)), "inputs": str(inputs.relative_to(root)),
                     "build_s": round(time.perf_counter() - t0, 1),
                     "model_so_mb": round((tdir / manifest.library.file).stat().st_size / 1e6, 2),
                     "device_code": device_code_of(tdir / manifest.library.file)})
        print(json.dumps(plan[-1]), flush=True)
    # The torch reference on the GPU machine needs config + weights only (the directory travels).
    for src in (root / "models").iterdir():
        for extra in ("tokenizer.json", "vocab.txt"):
            (src / extra).unlink(missing_ok=True)
    copy_runtime(stage)
    # Index paths relative to root: the directory travels to the GPU machine.
    for entry in plan:
        index_path = root / entry["inputs"] / "index.json"
        index = json.loads(index_path.read_text())
        for tensors in index.values():
            for spec in tensors.values():
                spec[0] = str(Path(spec[0]).relative_to(root))
        index_path.write_text(json.dumps(index))
    (root / "plan.json").write_text(json.dumps({"arch": arch, "python": python, "models": plan}, indent=2))


# ---------------------------------------------------------------- GPU machine

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


def _read(path: Path, fmt: str, shape) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.dtype(fmt)).reshape(shape)


def _libcudart_dirs() -> list[str]:
    """Directories holding libcudart.so.13: the CUDA toolkit's, or the nvidia wheels' that
    torch's CUDA build brings."""
    import glob
    import importlib.util

    found = sorted({str(Path(p).parent) for pattern in ("/usr/local/cuda*/lib*/libcudart.so.13",
                                                        "/usr/local/cuda*/targets/*/lib/libcudart.so.13")
                    for p in glob.glob(pattern)})
    spec = importlib.util.find_spec("nvidia")
    for root in ([] if spec is None else spec.submodule_search_locations):
        found += sorted({str(p.parent) for p in Path(root).glob("**/libcudart.so.13")})
    return found


def _serve_check(target_dir: Path, env: dict, arrays: dict, ref: np.ndarray) -> dict:
    """The model server (as the cuda serving image starts it) on the GPU: v2 infer and
    SageMaker tensor mode agree with PyTorch; 8 concurrent clients (batched) as well."""
    import http.client
    import threading

    log = target_dir.parent / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "runtime.serve", str(target_dir), "--port", "0"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        port, deadline = None, time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            lines = log.read_text().splitlines()
            port = next((json.loads(x)["port"] for x in lines if '"event":"listening"' in x), None)
            if port and any('"event":"ready"' in x for x in lines):
                break
            time.sleep(0.2)
        else:
            return {"ok": False, "error": log.read_text()[-2000:]}

        def post(path, body):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            conn.close()
            return resp.status, data

        one = {k: v[:1] for k, v in arrays.items()}
        name = json.loads((target_dir / "model.json").read_text())["model"]["name"]
        status, v2 = post(f"/v2/models/{name}/infer", {"inputs": [
            {"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
            for k, v in one.items()]})
        diffs = [float(np.max(np.abs(np.array(v2["outputs"][0]["data"]).reshape(1, -1) - ref[:1])))
                 if status == 200 else float("inf")]
        answers = [None] * 8

        def client(i):
            answers[i] = post("/invocations", {"tensors": {k: v[i:i + 1].tolist() for k, v in arrays.items()}})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (st, body) in enumerate(answers):
            out = next(iter(body["tensors"].values())) if st == 200 else None
            diffs.append(float(np.max(np.abs(np.array(out) - ref[i:i + 1]))) if out is not None else float("inf"))
        return {"ok": max(diffs) <= ATOL, "max_abs_diff": max(diffs)}
    finally:
        proc.terminate()
        proc.wait(60)


def run(root: Path, runs: int) -> list[dict]:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32
    torch.backends.cudnn.allow_tf32 = False
    plan = json.loads((root / "plan.json").read_text())
    stage = root / "stage"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(stage), "HOME": str(root),
           # The driver (libcuda.so.1) may only be found through the inherited path.
           "LD_LIBRARY_PATH": ":".join([*_libcudart_dirs(), os.environ.get("LD_LIBRARY_PATH", "")]).strip(":"),
           # A fatbin without SASS for this GPU must fail, not be compiled by the driver.
           "CUDA_DISABLE_PTX_JIT": "1"}
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    results = []
    for entry in plan["models"]:
        result = {k: entry[k] for k in ("model", "build_s", "model_so_mb", "device_code")}
        result.update(gpu=torch.cuda.get_device_name(0), batches={}, ok=True)
        index = json.loads((root / entry["inputs"] / "index.json").read_text())
        for tensors in index.values():
            for spec in tensors.values():
                spec[0] = str(root / spec[0])
        work = Path(tempfile.mkdtemp(prefix="probe-", dir=root))
        (work / "index.json").write_text(json.dumps(index))
        proc = subprocess.run([sys.executable, "-S", "-c", _PROBE, str(root / entry["target_dir"]),
                               str(work / "index.json"), str(work), str(runs)],
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            result.update(ok=False, error=proc.stderr.strip().splitlines()[-8:])
            print(json.dumps(result), flush=True)
            results.append(result)
            continue
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        ref_fn = _torch_reference(root / entry["source"], entry["family"])
        result.update(load_s=round(report["load_s"], 3), leaked=report["leaked"])
        result["ok"] &= not report["leaked"]
        for batch, tensors in index.items():
            arrays = {name: _read(Path(p), fmt, shape) for name, (p, fmt, shape) in tensors.items()}
            got = report["batches"][batch]
            (path, fmt, shape), = got["outputs"].values()
            diff = float(np.max(np.abs(_read(Path(path), fmt, shape) - ref_fn(arrays))))
            torch_ms = _median_ms(lambda: ref_fn(arrays), runs)
            result["batches"][batch] = {"max_abs_diff": diff, "first_call_s": round(got["first_call_s"], 4),
                                        "ours_ms": round(got["warm_ms"], 3), "torch_eager_ms": round(torch_ms, 3),
                                        "speedup_vs_torch": round(torch_ms / got["warm_ms"], 2)}
            result["ok"] &= diff <= ATOL
        if entry["model"] == "tiny-bert":
            arrays = {name: _read(Path(p), fmt, shape) for name, (p, fmt, shape) in index["32"].items()}
            result["server"] = _serve_check(root / entry["target_dir"], env, arrays, ref_fn(arrays))
            result["ok"] &= result["server"]["ok"]
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def _table(results: list[dict]) -> str:
    lines = [f"{'model':<20} {'batch':>5} {'max|diff|':>10} {'first s':>8} {'ours ms':>9} {'torch ms':>9} "
             f"{'speedup':>8}"]
    for r in results:
        for b, row in r["batches"].items():
            lines.append(f"{r['model']:<20} {b:>5} {row['max_abs_diff']:>10.2e} {row['first_call_s']:>8.4f} "
                         f"{row['ours_ms']:>9.3f} {row['torch_eager_ms']:>9.3f} {row['speedup_vs_torch']:>7.2f}x")
        lines.append(f"{r['model']:<20} {'ok' if r['ok'] else 'FAIL ' + json.dumps(r.get('error', ''))}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--prepare", type=Path, metavar="DIR", help="build and stage into DIR (no GPU needed)")
    p.add_argument("--run", type=Path, metavar="DIR", help="run what --prepare wrote into DIR (GPU machine)")
    p.add_argument("--arch", help="sm_XY to build for (default: the visible GPU's; sm_90 for --prepare)")
    p.add_argument("--python", default="%d.%d" % sys.version_info[:2],
                   help="--prepare: the GPU machine's Python (default this one's)")
    p.add_argument("--tiny-only", action="store_true")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.prepare:
        prepare(args.prepare, args.arch or "sm_90", args.python, args.tiny_only)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to run (--prepare DIR builds without one)", file=sys.stderr)
        return 2
    if args.run:
        results = run(args.run, args.runs)
    else:
        major, minor = torch.cuda.get_device_capability(0)
        with tempfile.TemporaryDirectory(prefix="edgebundle-gpu-") as tmp:
            prepare(Path(tmp), args.arch or f"sm_{major}{minor}", args.python, args.tiny_only)
            results = run(Path(tmp), args.runs)
    print("\n" + _table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
