"""`edgebundle build`: model -> OUT/<target>/{model.so, model.json, ...} -> bundles."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from . import elf
from .compile import compile_library, reference_outputs, to_relax, validate
from .errors import EdgebundleError, UnsupportedModelError
from .families import FAMILIES, detect_family
from .families.base import MAX_BATCH, read_json
from .formats import FORMATS
from .formats.common import file_record
from .progress import Progress
from .source import resolve_model
from .targets import TARGETS
from .versions import build_versions

LIBRARY = "model.so"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def make_manifest(spec, name: str, source: str, target, tvm_target: dict, target_dir: Path) -> dict:
    files = {fname: file_record(target_dir / fname) for fname in [LIBRARY, *sorted(spec.files)]}
    lib = elf.read_elf(target_dir / LIBRARY)
    return {
        "schema": 1,
        "model": {"name": name, "source": source, "family": spec.family, "task": spec.task,
                  "architecture": spec.architecture},
        "library": LIBRARY,
        "inputs": [i.to_json() for i in spec.inputs],
        "outputs": [o.to_json() for o in spec.outputs],
        "max_batch": MAX_BATCH,
        "labels": spec.labels,
        "preprocessing": spec.preprocessing,
        "postprocessing": spec.postprocessing,
        "target": {"name": target.name, "tvm": tvm_target, "arch": target.arch, "device": target.device,
                   "elf_machine": lib.machine_name},
        "glibc_required": elf.vstr(lib.glibc),
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
    for t in targets:
        if t not in TARGETS:
            raise UnsupportedModelError(f"unknown target {t!r}", hint=f"choose from {', '.join(TARGETS)}")
        for f in formats:
            FORMATS[f].precheck(TARGETS[t], options)

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
        mod = to_relax(spec)
    with progress.step("PyTorch reference outputs"):
        refs = reference_outputs(spec)

    record = {"model": {"name": name, "source": str(model_dir), "family": fam.name, "task": task},
              "targets": {}, "formats": formats, "versions": build_versions(),
              "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for t in targets:
        target = TARGETS[t]
        tdir = out / t
        tdir.mkdir(parents=True, exist_ok=True)
        tvm_target = target.tvm_target_json(options.get("cpu"))
        with progress.step(f"compile + link {t} ({json.dumps(tvm_target)})"):
            compile_library(mod, target, tvm_target, tdir / LIBRARY)
        for fname, content in spec.files.items():
            (tdir / fname).write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
        manifest = make_manifest(spec, name, str(model_dir), target, tvm_target, tdir)
        write_json(tdir / "model.json", manifest)
        if target.host_can_run():
            with progress.step(f"validate {t} against PyTorch"):
                import runtime

                manifest["validation"] = validate(runtime.load(tdir), spec, refs, where=str(tdir / LIBRARY))
            progress.info("    max|diff| vs PyTorch: " + ", ".join(
                f"{k} {v:.2e}" for k, v in manifest["validation"]["max_abs_diff"].items()))
        else:
            manifest["validation"] = {"skipped": f"this host cannot run {t} code"}
            progress.warn(f"{t}: not validated on this host (validate it with `edgebundle invoke`)")
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


__all__ = ["build", "EdgebundleError"]
