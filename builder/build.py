"""`edgebundle build`: model -> OUT/<target>/{model.so, model.weights, model.json, ...} ->
bundles. Orchestration only: each step lives in the package named after it."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from builder.bundle.formats import FORMATS
from builder.bundle.manifest import make_manifest, write_manifest
from builder.compiler.targets import TargetSpec, check_cuda_archs, cpu_per_target, resolve_target
from builder.errors import UnsupportedModelError, ValidationError
from builder.fsutil import atomic_write, replace_dir, staging_dir, write_json
from builder.model.families import FAMILIES, ModelSpec, detect_family
from builder.model.families.base import read_json
from builder.model.source import default_name, model_record, resolve_model
from builder.options import BuildOptions
from builder.progress import Progress
from builder.versions import build_versions
from runtime.cpu import FORCE_ENV, KINDS
from runtime.manifest import Library, Variant

LIBRARY = "model.so"
WEIGHTS = "model.weights"
TIMING = "timing.json"


def build(model: str, out: Path, options: BuildOptions | None = None, progress: Progress | None = None) -> dict:
    """Compile `model` for every target in options, validate it against PyTorch, write the
    formats asked for; returns what OUT/build.json records."""
    from builder.compiler.export import bucket_modules, to_relax
    from builder.validate.compare import reference_outputs

    progress = progress or Progress()
    options = options or BuildOptions()
    out = Path(out)
    for f in options.formats:
        if f not in FORMATS:
            raise UnsupportedModelError(f"unknown format {f!r}", hint=f"choose from {', '.join(FORMATS)}")
    if len(options.pythons) > 1 and set(options.formats) - {"edge"}:
        raise UnsupportedModelError("--python is repeatable for --format edge only; the other formats ship one "
                                    "Python", hint="build those formats in a separate build with one --python")
    resolved = {}
    for t in options.targets:
        resolved[t] = resolve_target(t, options.host)
        resolved[t].check_toolchain()
        for f in options.formats:
            FORMATS[f].precheck(resolved[t], options)
    cpus = cpu_per_target(options.cpu, resolved)
    for flag, value, off in (("--quantize", options.quantize, "none"), ("--compute", options.compute, "fp32")):
        if value == off:
            continue
        for t, target in resolved.items():
            if target.device != "cpu" or not options.schedule:
                raise UnsupportedModelError(
                    f"{flag} {value} is for CPU targets compiled with edgebundle's schedules; "
                    f"{t} is not" + ("" if target.device != "cpu" else " (--no-schedule)"),
                    hint=f"build that target in a separate build without {flag}")

    for t, target in resolved.items():
        target.variants(cpus.get(t), options.quantize, options.compute)  # refusals before the model loads
    model_dir = resolve_model(model)
    # Where the model came from, as every manifest records it: nothing of this machine (its
    # path, user, cache directories) and no build time, so the same model built anywhere
    # gives the same bundles. Hashed before it is loaded: the digest is of what compiles.
    source = model_record(model_dir)
    config = read_json(model_dir / "config.json", "config.json")
    fam = FAMILIES[options.family] if options.family else detect_family(config, model_dir)
    task = options.task or fam.default_task(config)
    name = options.name or default_name(model, model_dir)
    progress.info(f"edgebundle: {name} -> family {fam.name}, task {task}, targets {', '.join(options.targets)}"
                  + (f", formats {', '.join(options.formats)}" if options.formats else ""))

    with progress.step(f"load {fam.name} model from {model_dir}"):
        spec = fam.load(model_dir, config, task, options)
    for note in spec.notes:
        progress.info(f"    note: {note}")
    if options.seq_buckets and not spec.seq_buckets:
        raise UnsupportedModelError(f"--seq-buckets applies to text models; {spec.architecture} has no sequence "
                                    "dimension")
    for i in spec.inputs:
        if "seq" in i.shape and i.pad is None:  # runtime/ pads requests to a compiled length with it
            raise UnsupportedModelError(f"family {spec.family}: input {i.name} has a seq dimension but no pad value")
    with progress.step("torch.export + import into TVM Relax"):
        modules = bucket_modules(to_relax(spec), spec)
    if spec.seq_buckets:
        progress.info(f"    sequence lengths compiled: {', '.join(map(str, modules))}")
    with progress.step("PyTorch reference outputs"):
        refs = reference_outputs(spec)
    gate = None
    if options.quantize != "none" or options.compute != "fp32":
        inputs = spec.accuracy_inputs or spec.validation_inputs
        with progress.step(f"PyTorch fp32 answers for the accuracy gate ({len(inputs)} batches)"):
            gate = {"inputs": inputs, "refs": reference_outputs(spec, inputs), "labels": spec.accuracy_labels,
                    # no image set ships: the validation inputs (random pixels) stand in
                    "unjudged": None if spec.accuracy_inputs else
                    "no input set of this kind ships with the builder; these are the validation inputs (random)"}

    record = {"model": {"name": name, **source, "family": fam.name, "task": task},
              "targets": {}, "formats": list(options.formats), "versions": build_versions()}
    for t, target in resolved.items():
        record["targets"][t] = build_target(spec, modules, refs, target, out / t, cpus.get(t), name,
                                            source, options, progress, gate)
    write_json(out / "build.json", record)
    progress.info(f"edgebundle: wrote {out}/build.json")
    return record


class _Staged(Progress):
    """Progress whose messages name OUT/<target> where they say its staging directory: what
    they describe (a bundle to deploy, a context to build) is there once the build ends."""

    def __init__(self, inner: Progress, stage: Path, final: Path):
        super().__init__(quiet=inner.quiet, stream=inner.stream)
        self.inner, self.stage, self.final = inner, str(stage), str(final)

    def info(self, msg: str) -> None:
        self.inner.info(msg.replace(self.stage, self.final))

    def warn(self, msg: str) -> None:
        self.inner.warn(msg.replace(self.stage, self.final))


def build_target(spec: ModelSpec, modules: dict, refs, target: TargetSpec, tdir: Path, cpu: str | None,
                 name: str, source: dict, options: BuildOptions, progress: Progress, gate: dict | None = None) -> dict:
    """Compile, write and validate one target directory, then its formats.

    All of it is written into a staging directory beside OUT/<target> and swapped in at the
    end: a build killed at any point (or failing validation) leaves the previous
    OUT/<target> as it was, its model.json over its own files and its bundles of the same
    model. Files of the previous build that this one does not write (a format not asked
    for this time) go with it: they would be bundles of another model."""
    stage = staging_dir(tdir)
    try:
        trec = _build_target(spec, modules, refs, target, stage, cpu, name, source, options,
                             _Staged(progress, stage, tdir), gate)
        replace_dir(stage, tdir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    progress.info(f"    {target.name}: {tdir / LIBRARY} ({trec['library']['size'] / 1e6:.1f} MB)")
    return trec


def _build_target(spec: ModelSpec, modules: dict, refs, target: TargetSpec, tdir: Path, cpu: str | None,
                  name: str, source: dict, options: BuildOptions, progress: Progress, gate: dict | None) -> dict:
    from builder.compiler.weights import Writer as WeightsWriter
    from builder.validate.compare import Disagreement
    from builder.validate.target import validate_target

    cuda_archs = check_cuda_archs(options.cuda_archs) if target.device == "cuda" else ()
    max_seq = spec.seq_buckets[-1] if spec.seq_buckets else None
    vspecs = target.variants(cpu, options.quantize, options.compute)
    computes = {v.name: v.compute for v in vspecs}
    db_target = None
    if target.device == "cpu" and options.tuning_db:
        from builder.compiler.tuning_db import mismatch, read_target

        db_target = read_target(options.tuning_db)
        compiled_for = [target.tvm_target_json(v.cpu, options.cuda_archs, v.attrs) for v in vspecs]
        if db_target not in compiled_for:  # before minutes of compiling, not after
            raise mismatch(options.tuning_db, db_target, compiled_for)
    from builder.compiler.variants import compile_variants

    # Narrow weights are widened inside our CPU kernels; TVM's GPU and unscheduled pipelines
    # read fp32.
    storage = options.weights if target.device == "cpu" and options.schedule else "fp32"
    if storage != options.weights:
        progress.info(f"    {target.name}: weights stored fp32 (--weights {options.weights} is for CPU targets "
                      "compiled with our schedules)")
    elif storage != "fp32":
        from builder.compiler.schedules.storage import tolerance

        spec = dataclasses.replace(spec, tolerance=tolerance(spec.tolerance, storage))
    if options.quantize == "int8":
        from builder.compiler.schedules.int8 import TOLERANCE

        spec = dataclasses.replace(spec, tolerance={**spec.tolerance, "rtol": max(spec.tolerance["rtol"], TOLERANCE)})
    codes, writer, variants = {}, WeightsWriter(), []
    compile_options = dataclasses.replace(options, weights=storage)  # what the kernels read, decided here
    for compiled in compile_variants(modules, target, vspecs, tdir, compile_options, max_seq, cuda_archs,
                                     db_target, progress):
        before = writer.bytes
        for lib, seq in compiled.files:
            writer.add(lib, compiled.weights(lib))  # keeps only tensors not seen in an earlier length or variant
        codes.update(compiled.codes)
        if variants and writer.bytes > before and computes[compiled.name] != "fp32":
            progress.info(f"    variant {compiled.name}: {(writer.bytes - before) / 1e6:.1f} MB of "
                          f"{computes[compiled.name]} weights beside the fp32 variants'")
        elif variants and writer.bytes > before:
            # Each variant reads the weights packed as the baseline's kernels do; a tensor packed
            # otherwise is stored again (a schedule rule choosing its own panel width).
            progress.warn(f"variant {compiled.name} stores {(writer.bytes - before) / 1e6:.1f} MB of weights the "
                          "baseline does not share")
        if ((compiled.schedule or {}).get("int8") or {}).get("kernel") == "generic":
            progress.warn(f"variant {compiled.name}: its CPU ({compiled.tvm_target.get('mcpu')}) has no int8 dot "
                          "product this build knows (AVX2, AVX-512 VNNI, Armv8.2 dotprod): int8 runs as plain "
                          "widening multiplies, likely slower than fp32; build without --quantize for it")
        variants.append(Variant(compiled.name, KINDS[compiled.name].features, compiled.tvm_target,
                                tuple(Library(lib, seq, ()) for lib, seq in compiled.files), compiled.schedule))
        del compiled
    weights = writer.write(tdir / WEIGHTS) if writer.arrays else None
    bf16 = [v for v in vspecs if v.compute == "bf16"]
    if weights is not None:
        # what the fp32 variants read; a bf16 variant reads bf16 whatever this says
        weights["storage"] = "bf16" if len(bf16) == len(vspecs) else storage
        if bf16:
            from builder.compiler.schedules.bf16 import manifest_record as bf16_record

            weights["compute"] = bf16_record(writer.arrays)
            if not weights["compute"]["layers"]:
                progress.warn(f"--compute {options.compute}: no layer of {spec.architecture} qualifies "
                              f"({weights['compute']['covers']}); its bf16 variant computes in fp32 from bf16 "
                              "weights" + (", yet needs a CPU with a bf16 dot product: build with --compute fp32"
                                           if len(bf16) == len(vspecs) else ""))
            if storage != "bf16":
                progress.info(f"    the bf16 variant reads its weights as bf16 (--weights {storage} is what the "
                              "fp32 variants read)" if len(bf16) < len(vspecs) else
                              f"    weights stored bf16 (--compute bf16; --weights {storage} does not apply)")
        if options.quantize == "int8":
            from builder.compiler.schedules.int8 import manifest_record

            weights["quantization"] = manifest_record(writer.arrays)
            if not weights["quantization"]["tensors"]:
                progress.warn(f"--quantize int8: nothing in {spec.architecture} qualifies ({weights['quantization']['covers']}); "
                              "it runs as without --quantize")
        if storage != "fp32" or options.quantize != "none" or bf16:
            names = {"uint16": "bf16", "float16": "fp16", "float32": "fp32"}
            by_type: dict = {}
            for a in writer.arrays:
                key = names.get(a.dtype.name, a.dtype.name)
                by_type[key] = by_type.get(key, 0) + a.nbytes
            progress.info("    weights: " + ", ".join(f"{b / 1e6:.1f} MB {t}" for t, b in sorted(by_type.items(),
                                                                                            key=lambda kv: -kv[1]))
                          + " (fp32: biases, norms, folded tables, F(4x4) Winograd weights, tensors the narrow "
                            "type cannot hold; int32: int8 column sums, bf16 dense panels)")
    variants = [dataclasses.replace(v, libraries=tuple(Library(lib.file, lib.seq, tuple(writer.orders.get(lib.file, ())))
                                                       for lib in v.libraries)) for v in variants]
    device_code = None
    if codes:  # the format and archs are the same for every length; kernels and sizes differ
        first = next(iter(codes.values()))
        device_code = {**{k: first[k] for k in ("format", "sass", "ptx")},
                       "libraries": {lib: {k: c[k] for k in ("kernels", "bytes")} for lib, c in codes.items()}}
    for fname, content in spec.files.items():
        atomic_write(tdir / fname, content if isinstance(content, bytes) else Path(content).read_bytes())
    manifest = make_manifest(spec, name, source, target, tdir, weights, variants, device_code=device_code)
    if device_code is not None:
        progress.info(f"    device code: {device_code['format']}, SASS {', '.join(device_code['sass'])}, "
                      f"PTX {device_code['ptx']}; {sum(v['bytes'] for v in device_code['libraries'].values()) / 1e6:.1f} MB")
    # Written before validation too: the runtime that validates loads the target directory.
    write_manifest(tdir, manifest)
    timings: dict = {}
    validated = []
    for v in manifest.variants:
        # The baseline is timed: deploy sizes timeouts for the slowest host the bundle may land on.
        vspec, vgate = spec, gate
        if computes.get(v.name) == "bf16":
            from builder.compiler.schedules.bf16 import TOLERANCE as BF16_TOLERANCE
            from builder.compiler.schedules.storage import tolerance

            wide = tolerance(spec.tolerance, "bf16")  # its convolutions and embeddings read bf16 weights
            vspec = dataclasses.replace(spec, tolerance={**wide, "rtol": max(wide["rtol"], BF16_TOLERANCE)})
            vgate = {**gate, "scheme": "bf16"}
        elif options.quantize == "none":
            vgate = None  # the fp32 variants of a --compute auto build
        try:
            result = validate_target(tdir, target, vspec, refs, progress, v.library.file, v.name,
                                     timings if v is manifest.baseline else None, vgate)
        except Disagreement as e:
            if computes.get(v.name) == "bf16":
                raise ValidationError(e.what, where=e.where,
                                      hint="the bf16 variant is further from PyTorch than bf16 usually moves it "
                                           f"(tolerance {vspec.tolerance['rtol']:g} of the largest output): build "
                                           "with --compute fp32 and report the model") from e
            if options.quantize != "none":
                raise ValidationError(e.what, where=e.where,
                                      hint="the int8 model is further from PyTorch than quantization usually moves "
                                           f"it (tolerance {spec.tolerance['rtol']:g} of the largest output): build "
                                           "without --quantize and report the model") from e
            if storage == "fp32":
                raise
            raise ValidationError(e.what, where=e.where,
                                  hint=f"this model's outputs move more than {storage} weights usually make them "
                                       f"(tolerance {spec.tolerance['rtol']:g} of the largest output): build with "
                                       "--weights fp32; if that passes, the model is sensitive to rounding its "
                                       "weights") from e
        validated.append(dataclasses.replace(v, validation=result))
    manifest = dataclasses.replace(manifest, variants=tuple(validated))
    if all("unvalidated" in (v.validation or {}) for v in manifest.variants):
        progress.warn(f"{target.name}: no variant of this bundle was validated on this machine "
                      f"({manifest.variants[0].validation['unvalidated']}): it loads nowhere unless {FORCE_ENV} "
                      "names one; rebuild it on a machine with those features")
    write_manifest(tdir, manifest)
    # model.so was hashed for the manifest already.
    trec = {"dir": target.name, "library": manifest.files[LIBRARY], "validation": manifest.validation,
            "variants": {v.name: {"validation": v.validation,
                                  "code_bytes": sum(manifest.files[lib.file]["size"] for lib in v.libraries)}
                         for v in manifest.variants},
            "formats": {}}
    # Read by the Lambda formats' SAM template and by deploy (builder/bundle/sizing.py) to
    # size a function's timeout; never shipped (bundles stay byte-identical across builds).
    if timings:
        trec["latency"] = timings
        write_json(tdir / TIMING, timings)
    for f in options.formats:
        with progress.step(f"format {f} for {target.name}"):
            trec["formats"][f] = FORMATS[f].build(tdir, target, options, progress)
    return trec
