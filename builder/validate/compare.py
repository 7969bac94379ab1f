"""The compiled module against PyTorch: reference outputs, our outputs, the comparison."""
from __future__ import annotations

import numpy as np

from builder.errors import ValidationError
from builder.model.families.base import ModelSpec
from builder.compiler.export import torch_inputs


class Disagreement(ValidationError):
    """The compiled module ran and its outputs are off from PyTorch's beyond the tolerance."""


def reference_outputs(spec: ModelSpec, inputs: list[dict] | None = None) -> list[list[np.ndarray]]:
    """PyTorch's outputs for each input set (default: the validation inputs)."""
    import torch

    refs = []
    with torch.no_grad():
        for arrays in spec.validation_inputs if inputs is None else inputs:
            out = spec.module(*torch_inputs(arrays, spec))
            refs.append([o.detach().cpu().numpy() for o in out])
    return refs


def run_in_process(model, spec: ModelSpec, where: str, inputs: list[dict] | None = None) -> list[dict]:
    """Outputs of the compiled module (through runtime/) for every input set (default: the
    validation inputs)."""
    outputs = []
    for n, arrays in enumerate(spec.validation_inputs if inputs is None else inputs):
        try:
            outputs.append({name: np.asarray(view) for name, view in model.run(arrays).items()})
        except Exception as e:
            raise ValidationError(f"the compiled module failed on validation input {n}: {e}", where=where,
                                  hint="rerun with --debug for the trace") from e
    return outputs


def compare(spec: ModelSpec, refs: list[list[np.ndarray]], outputs: list[dict], where: str) -> dict:
    """Compare the compiled module's outputs with PyTorch's; raise ValidationError with a
    per-output table when off."""
    atol, rtol = spec.tolerance["atol"], spec.tolerance["rtol"]
    worst: dict[str, float] = {}
    rows, failed = [], False
    for n, (ours, ref) in enumerate(zip(outputs, refs)):
        for out_spec, r in zip(spec.outputs, ref):
            o = ours[out_spec.name]
            if o.shape != r.shape:
                raise ValidationError(f"output {out_spec.name} has shape {o.shape}, PyTorch gives {r.shape}",
                                      where=where)
            diff = float(np.max(np.abs(o.astype(np.float64) - r))) if r.size else 0.0
            bound = atol + rtol * float(np.max(np.abs(r))) if r.size else atol
            ok = bool(np.isfinite(diff) and diff <= bound)
            failed |= not ok
            worst[out_spec.name] = max(worst.get(out_spec.name, 0.0), diff)
            rows.append(f"  input set {n} (batch {r.shape[0]})  {out_spec.name:<20} max|diff| {diff:.3e}"
                        f"  allowed {bound:.3e}  {'ok' if ok else 'FAIL'}")
    if failed:
        raise Disagreement(
            "the compiled module disagrees with PyTorch:\n" + "\n".join(rows), where=where,
            hint="this is a compiler or schedule bug; report it with the model config")
    return {"max_abs_diff": worst, "atol": atol, "rtol": rtol, "input_sets": len(refs)}
