"""The accuracy gate of reduced-precision builds (`build --quantize int8`, the bf16 variants of
`--compute bf16|auto`).

Validation (compare.py) bounds the largest error on a few inputs; int8 and bf16 move every
answer a little, so the gate asks what users see, over a sentence set shipped here
(accuracy_texts.txt), against PyTorch fp32:
- embedding models: the cosine of each sentence's embedding with PyTorch's; the build fails
  when the worst is below MIN_COSINE, with a table of the worst sentences;
- classifiers: top-1 agreement (fails below MIN_AGREEMENT) and the largest logit error;
- image models: the same as classifiers, on the validation inputs (random pixels: no image
  set ships), so reported as not meaningful.
A model whose fp32 answers barely differ between sentences (random weights: the tests' tiny
models, examples/full_size.py) gets its numbers reported and the verdict "not meaningful".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from builder.errors import ValidationError

TEXTS = Path(__file__).with_name("accuracy_texts.txt")
MIN_COSINE = 0.99
# Near-tie sentences flip under any rounding: 3 of 64 may, more is a broken model.
MIN_AGREEMENT = 0.95
# (min cosine, min top-1 agreement) per scheme. bf16 keeps 8 mantissa bits of both operands
# where int8 keeps 7-8 bits of range per row or column: all-MiniLM-L6-v2's worst cosine is
# 0.99998 in bf16 (0.9925-0.9969 in int8), so a bf16 build below 0.998 has a broken kernel or
# a model that needs fp32; 2 of 64 near-ties may flip (62/64 = 0.969).
THRESHOLDS = {"int8": (MIN_COSINE, MIN_AGREEMENT), "bf16": (0.998, 0.96)}
# Mean cosine between different sentences' fp32 embeddings above this: the model does not
# tell them apart (random weights), so how close ours are says nothing about quality.
# (all-MiniLM-L6-v2 on the shipped set: 0.04; random-weight BERT-base 0.95, the tests' tiny one 0.94.)
INDISTINCT = 0.9
BATCH = 8
WORST_ROWS = 8


class AccuracyError(ValidationError):
    """The quantized model's answers are too far from PyTorch fp32 on the gate's set."""


def texts() -> list[str]:
    return [line.strip() for line in TEXTS.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def batches(arrays: dict, size: int = BATCH) -> list[dict]:
    """Input arrays [n, ...] split into batches of `size` rows."""
    n = len(next(iter(arrays.values())))
    return [{k: np.ascontiguousarray(v[i:i + size]) for k, v in arrays.items()} for i in range(0, n, size)]


def evaluate(kind: str, refs: list, outputs: list, labels: list[str] | None, unjudged: str | None = None,
             scheme: str = "int8") -> dict:
    """The gate's numbers and verdict. kind: "embedding" or "classification"; refs and
    outputs: per batch, the model's one output array; labels: a name per row (sentence);
    unjudged: why these inputs cannot judge the model (the numbers are still reported);
    scheme: whose THRESHOLDS apply."""
    min_cosine, min_agreement = THRESHOLDS[scheme]
    ref = np.concatenate([np.asarray(r, dtype=np.float64) for r in refs])
    ours = np.concatenate([np.asarray(o, dtype=np.float64) for o in outputs])
    names = labels or [f"input {i}" for i in range(len(ref))]
    if kind == "embedding":
        cos = _cosine(ours, ref)
        unit = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
        pair = unit @ unit.T
        spread = float((pair.sum() - np.trace(pair)) / max(1, len(ref) * (len(ref) - 1)))
        meaningful = spread <= INDISTINCT
        record = {"metric": "cosine", "samples": len(ref), "min_cosine": float(cos.min()),
                  "mean_cosine": float(cos.mean()), "threshold": min_cosine,
                  "reference_mean_pairwise_cosine": round(spread, 4)}
        passed = bool(cos.min() >= min_cosine)
        order = np.argsort(cos)[:WORST_ROWS]
        table = [f"  cosine {cos[i]:.5f}  {names[i][:70]}" for i in order]
        reason = (f"the fp32 model barely tells the sentences apart (mean cosine between them "
                  f"{spread:.3f} > {INDISTINCT}), as random weights do")
    else:
        top_ref, top_ours = ref.argmax(axis=1), ours.argmax(axis=1)
        agree = top_ref == top_ours
        err = np.abs(ours - ref).max(axis=1)
        classes = len(set(top_ref.tolist()))
        meaningful = classes > 1
        record = {"metric": "top-1 agreement", "samples": len(ref), "top1_agreement": float(agree.mean()),
                  "max_logit_error": float(err.max()), "mean_logit_error": float(err.mean()),
                  "threshold": min_agreement, "reference_classes": classes}
        passed = bool(agree.mean() >= min_agreement)
        order = sorted(range(len(ref)), key=lambda i: (bool(agree[i]), -err[i]))[:WORST_ROWS]
        table = [f"  {'same' if agree[i] else 'FLIP'}  logit error {err[i]:.4f}  {names[i][:70]}" for i in order]
        reason = "the fp32 model gives every input the same class, as random weights do"
    if unjudged:
        meaningful, reason = False, unjudged
    record["scheme"] = scheme
    record["passed"] = passed
    record["meaningful"] = meaningful
    if not meaningful:
        record["note"] = f"not meaningful for this model: {reason}"
    record["worst"] = table
    return record


def check(record: dict, where: str, variant: str) -> None:
    """Raise AccuracyError for a meaningful gate that failed."""
    if record["passed"] or not record["meaningful"]:
        return
    if record["metric"] == "cosine":
        what = f"worst cosine {record['min_cosine']:.4f} < {record['threshold']}"
    else:
        what = f"top-1 agreement {record['top1_agreement']:.3f} < {record['threshold']}"
    scheme = record.get("scheme", "int8")
    raise AccuracyError(
        f"the {scheme} build of variant {variant} is too far from PyTorch fp32 on the accuracy set "
        f"({record['samples']} inputs): {what}; worst:\n" + "\n".join(record["worst"]), where=where,
        hint=("build without --quantize (fp16 weights keep the answers within ~1e-3)" if scheme == "int8" else
              "build with --compute fp32") + ", or report the model: some layers may need to stay fp32")


def summary(record: dict) -> str:
    if record["metric"] == "cosine":
        text = f"cosine vs PyTorch fp32 min {record['min_cosine']:.4f} mean {record['mean_cosine']:.4f}"
    else:
        text = (f"top-1 agreement {record['top1_agreement']:.3f}, max logit error {record['max_logit_error']:.4f}")
    text += f" over {record['samples']} inputs"
    if not record["meaningful"]:
        text += " (" + record["note"] + ")"
    elif record["passed"]:
        text += " (passed)"
    return text


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-30)
