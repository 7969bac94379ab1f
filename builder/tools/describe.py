"""`edgebundle inspect OUT/<target>`: what was built, readable."""
from __future__ import annotations

import json
import platform
import zipfile
from pathlib import Path

from builder.errors import EdgebundleError
from runtime.manifest import FILENAME, ManifestError, Tensor
from runtime.manifest import read as read_manifest


def _shape(t: Tensor) -> str:
    return f"{t.name}: {t.dtype}[{', '.join(map(str, t.shape))}]"


def _validation(val: dict | None) -> str:
    val = val or {}
    if "max_abs_diff" in val:
        return ("vs PyTorch, max|diff| " + ", ".join(f"{k} {d:.2e}" for k, d in val["max_abs_diff"].items())
                + f" (atol {val['atol']}, rtol {val['rtol']})")
    if "unvalidated" in val:
        return f"NOT validated ({val['unvalidated']}): never picked unless forced"
    return f"no: {val.get('skipped', 'unknown')}"


def _variants(m, target_dir: Path) -> list[str]:
    """Each variant: what it needs, how it was scheduled and validated, its code size; and
    which one this machine would load, and why."""
    from runtime import cpu

    lines = []
    for v in m.variants:
        code = sum(m.files[lib.file]["size"] for lib in v.libraries if lib.file in m.files)
        params = (v.schedule or {}).get("cpu_params") or {}
        tiles = (f"tiles {params.get('mr')}x{params.get('nr')} dense, {params.get('gemm_mr', 6)}x"
                 f"{params.get('gemm_nr') or 16} conv GEMM, {params.get('vector')} lanes" if params else "")
        db = (v.schedule or {}).get("tuning_db")
        lines.append(f"variant    {v.name}: needs {', '.join(v.features) or 'nothing checked'}; mcpu "
                     f"{(v.tvm or {}).get('mcpu') or ((v.tvm or {}).get('host') or {}).get('mcpu')}"
                     + (f"; {tiles}" if tiles else "") + f"; code {code / 1e6:.2f} MB")
        if isinstance(db, dict):
            lines.append(f"             schedule from tuning database {db.get('file')} (sha256 {str(db.get('sha256'))[:16]})")
        lines.append(f"             validated {_validation(v.validation)}")
        i8 = (v.schedule or {}).get("int8")
        if i8:
            lines.append(f"             int8 kernel {i8['kernel']} ({i8['tile'][0]}x{i8['tile'][1]} tiles, activations "
                         f"{i8['activation_levels']} levels per row)")
        b16 = (v.schedule or {}).get("bf16")
        if b16:
            lines.append(f"             bf16 kernel {b16['kernel']} ({b16['tile'][0]}x{b16['tile'][1]} tiles, fp32 "
                         "accumulation)")
        gate = (v.validation or {}).get("accuracy")
        if gate:
            from builder.validate.accuracy import summary

            lines.append(f"             accuracy gate: {summary(gate)}")
    if m.target.device == "cpu" and m.target.arch == platform.machine():
        try:
            choice = cpu.choose(m.variants, where=str(Path(target_dir) / FILENAME))
            lines.append(f"this CPU   runs {choice.variant.name}: {choice.reason}")
        except ManifestError as e:
            lines.append(f"this CPU   runs none: {e}")
    return lines


def describe(target_dir: Path, as_json: bool = False) -> str:
    if not (Path(target_dir) / FILENAME).is_file():
        raise EdgebundleError(f"no {FILENAME} here", where=str(target_dir),
                              hint="pass a target directory of a build, e.g. OUT/x86_64")
    try:
        m = read_manifest(target_dir)
    except ManifestError as e:
        raise EdgebundleError(str(e), where=str(Path(target_dir) / FILENAME)) from None
    if as_json:
        return m.dumps().rstrip("\n")
    lines = [
        f"model      {m.model.name} ({m.model.architecture}, family {m.model.family})",
        f"task       {m.model.task}",
        f"source     {m.model.source}" + (
            f"  ({', '.join(m.model.digest['files'])}: sha256 {m.model.digest['sha256'][:16]})"
            if m.model.digest else ""),
        f"target     {m.target.name}  {json.dumps(m.target.tvm)}  device {m.target.device}",
        "inputs     " + "; ".join(_shape(t) for t in m.inputs),
        "outputs    " + "; ".join(_shape(t) for t in m.outputs),
    ]
    if m.device_code:
        code = m.device_code
        sizes = ", ".join(f"{lib} {v['kernels']} kernels {v['bytes'] / 1e6:.2f} MB" for lib, v in code.libraries.items())
        lines.append(f"device     {code.format}: SASS {', '.join(code.sass) or 'none'}; PTX {code.ptx or 'none'}"
                     + (f" ({sizes})" if sizes else "")
                     + ("" if code.format == "fatbin" else "  [NOT compiled ahead of time: rebuild]"))
    if m.labels:
        lines.append(f"labels     {len(m.labels)}: {', '.join(m.labels[:8])}{' ...' if len(m.labels) > 8 else ''}")
    pre = m.preprocessing
    if pre.kind == "text":
        fills = ", ".join(f"{t.name} <- {t.source}" for t in m.inputs)
        lines.append(f"text       {pre.tokenizer}, max_length {pre.max_length}, max_chars {pre.max_chars} "
                     f"({fills})")
    elif pre.kind == "image":
        lines.append(f"image      {pre.width}x{pre.height} resize {pre.resize} crop {pre.center_crop}")
    lines += _variants(m, target_dir)
    if m.seq_lengths:
        lines.append(f"lengths    compiled for {', '.join(map(str, m.seq_lengths))} tokens; requests are padded to "
                     "the shortest that fits")
    if m.weights:
        lines.append(f"weights    {m.weights.file}: {m.weights.count} tensors, {m.weights.bytes / 1e6:.1f} MB "
                     f"({m.weights.storage}), mapped at load")
        q = m.weights.quantization
        if q:
            lines.append(f"int8       {q.get('dense_layers', '?')} dense layers, {q.get('embedding_tables', '?')} "
                         f"embedding tables, {q.get('int8_bytes', 0) / 1e6:.1f} MB; weights {q.get('weights')}; "
                         f"activations {q.get('activations')}")
        c = m.weights.compute
        if c:
            lines.append(f"bf16       {c.get('layers', '?')} dense / conv layers, {c.get('bf16_bytes', 0) / 1e6:.1f} MB "
                         f"for the bf16 variants; weights {c.get('weights')}; activations {c.get('activations')}")
    lines.append(f"glibc      {m.library.file} needs {m.glibc_required}")
    v = m.versions
    lines.append(f"versions   tvm {v.tvm}, tvm_ffi {v.tvm_ffi}, torch {v.torch}, "
                 f"transformers {v.transformers}, edgebundle {v.edgebundle} (manifest schema {m.schema})")
    lines.append("files")
    for name, rec in m.files.items():
        lines.append(f"  {name:<24} {rec['size'] / 1e6:9.2f} MB  sha256 {rec['sha256'][:16]}")
    z = Path(target_dir) / "lambda.zip"
    if z.is_file():
        with zipfile.ZipFile(z) as zf:
            info = json.loads(zf.read("lambda.json"))
            unz = sum(i.file_size for i in zf.infolist())
        state = "deployable" if info["deployable"] else f"NOT deployable: {info.get('not_deployable_reason')}"
        lines.append(f"  {'lambda.zip':<24} {z.stat().st_size / 1e6:9.2f} MB  ({unz / 1e6:.1f} MB unzipped; "
                     f"{info['runtime']} {info['architecture']}; glibc {info['glibc_required']}; {state})")
    for note in m.notes:
        lines.append(f"note       {note}")
    return "\n".join(lines)
