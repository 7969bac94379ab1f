"""GPU check: build for --target cuda, run on the GPU through runtime/, compare with
PyTorch on CUDA (fp32, TF32 off) and time both.

    python3 tests/gpu/check.py                 # tiny BERT + tiny ResNet, then BERT-base + ResNet50
    python3 tests/gpu/check.py --tiny-only
    python3 tests/gpu/check.py --json results.json

Needs an NVIDIA GPU, its driver, torch with CUDA and the CUDA 13 runtime (libcudart.so.13).
Exit status 1 when any model disagrees with PyTorch beyond atol 1e-3.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

ATOL = 1e-3


def _torch_reference(model_dir: Path, family: str, arrays: dict):
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


def check(name: str, model_dir: Path, family: str, cuda_arch: str, out: Path, runs: int) -> dict:
    import torch

    import runtime
    from builder.build import build
    from builder.options import BuildOptions
    from builder.progress import Progress

    t0 = time.perf_counter()
    build(str(model_dir), out, BuildOptions(targets=("cuda",), name=name, cuda_arch=cuda_arch, seq_len=128),
          progress=Progress(quiet=True))
    build_s = time.perf_counter() - t0
    model = runtime.load(out / "cuda")
    rng = np.random.default_rng(0)
    if family == "bert":
        vocab = model.inputs[0].range[1]
        arrays = {"input_ids": rng.integers(0, vocab, (1, 128), dtype=np.int64),
                  "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    else:
        shape = [1] + list(model.inputs[0].shape[1:])
        arrays = {"pixel_values": rng.standard_normal(shape).astype(np.float32)}
    ours = np.asarray(next(iter(model.run(arrays).values())))
    ref_fn = _torch_reference(model_dir, family, arrays)
    ref = ref_fn(arrays)
    diff = float(np.max(np.abs(ours - ref)))
    result = {"model": name, "cuda_arch": cuda_arch, "build_s": round(build_s, 1), "max_abs_diff": diff,
              "ok": diff <= ATOL,
              "ours_ms": round(_median_ms(lambda: model.run(arrays), runs), 3),
              "torch_eager_ms": round(_median_ms(lambda: ref_fn(arrays), runs), 3),
              "gpu": torch.cuda.get_device_name(0)}
    result["speedup_vs_torch"] = round(result["torch_eager_ms"] / result["ours_ms"], 2)
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny-only", action="store_true")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to check", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32
    torch.backends.cudnn.allow_tf32 = False
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm_{major}{minor}"
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
            results.append(check(name, model_dir, family, arch, tmp / f"out-{name}", args.runs))
    print(f"\n{'model':<12} {'max|diff|':>10} {'ours ms':>9} {'torch ms':>9} {'speedup':>8}")
    for r in results:
        print(f"{r['model']:<12} {r['max_abs_diff']:>10.2e} {r['ours_ms']:>9.3f} {r['torch_eager_ms']:>9.3f} "
              f"{r['speedup_vs_torch']:>7.2f}x {'ok' if r['ok'] else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
