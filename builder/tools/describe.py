"""`edgebundle inspect OUT/<target>`: what was built, readable."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from builder.errors import EdgebundleError


def _shape(s: dict) -> str:
    return f"{s['name']}: {s['dtype']}[{', '.join(map(str, s['shape']))}]"


def describe(target_dir: Path, as_json: bool = False) -> str:
    path = Path(target_dir) / "model.json"
    if not path.is_file():
        raise EdgebundleError("no model.json here", where=str(target_dir),
                              hint="pass a target directory of a build, e.g. OUT/x86_64")
    m = json.loads(path.read_text())
    if as_json:
        return json.dumps(m, indent=2, sort_keys=True)
    lines = [
        f"model      {m['model']['name']} ({m['model']['architecture']}, family {m['model']['family']})",
        f"task       {m['model']['task']}",
        f"target     {m['target']['name']}  {json.dumps(m['target']['tvm'])}  device {m['target']['device']}",
        "inputs     " + "; ".join(_shape(s) for s in m["inputs"]),
        "outputs    " + "; ".join(_shape(s) for s in m["outputs"]),
    ]
    if m.get("labels"):
        labels = m["labels"]
        lines.append(f"labels     {len(labels)}: {', '.join(labels[:8])}{' ...' if len(labels) > 8 else ''}")
    pre = m["preprocessing"]
    if pre["kind"] == "text":
        lines.append(f"text       tokenizer.json, max_length {pre['max_length']}, max_chars {pre['max_chars']}")
    elif pre["kind"] == "image":
        lines.append(f"image      {pre['width']}x{pre['height']} resize {pre['resize']} crop {pre['center_crop']}")
    seqs = [lib["seq"] for lib in m.get("libraries") or [] if lib.get("seq")]
    if seqs:
        lines.append(f"lengths    compiled for {', '.join(map(str, seqs))} tokens; requests are padded to the "
                     "shortest that fits")
    if m.get("weights"):
        w = m["weights"]
        lines.append(f"weights    {w['file']}: {w['count']} tensors, {w['bytes'] / 1e6:.1f} MB, mapped at load")
    lines.append(f"glibc      model.so needs {m['glibc_required']}")
    v = m["versions"]
    lines.append(f"versions   tvm {v['tvm']}, tvm_ffi {v['tvm_ffi']}, torch {v['torch']}, "
                 f"transformers {v['transformers']}, edgebundle {v['edgebundle']}")
    val = m.get("validation", {})
    if "max_abs_diff" in val:
        lines.append("validated  vs PyTorch, max|diff| " + ", ".join(
            f"{k} {d:.2e}" for k, d in val["max_abs_diff"].items()) + f" (atol {val['atol']}, rtol {val['rtol']})")
    else:
        lines.append(f"validated  no: {val.get('skipped', 'unknown')}")
    lines.append("files")
    for name, rec in m["files"].items():
        lines.append(f"  {name:<24} {rec['size'] / 1e6:9.2f} MB  sha256 {rec['sha256'][:16]}")
    z = Path(target_dir) / "lambda.zip"
    if z.is_file():
        with zipfile.ZipFile(z) as zf:
            info = json.loads(zf.read("lambda.json"))
            unz = sum(i.file_size for i in zf.infolist())
        state = "deployable" if info["deployable"] else f"NOT deployable: {info.get('not_deployable_reason')}"
        lines.append(f"  {'lambda.zip':<24} {z.stat().st_size / 1e6:9.2f} MB  ({unz / 1e6:.1f} MB unzipped; "
                     f"{info['runtime']} {info['architecture']}; glibc {info['glibc_required']}; {state})")
    notes = m.get("notes") or []
    for note in notes:
        lines.append(f"note       {note}")
    return "\n".join(lines)
