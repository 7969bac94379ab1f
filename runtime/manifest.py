"""model.json: the contract between the build and every runtime, read (and, on the build
side, written) through this one module.

Standard library only: it ships in every bundle. The builder constructs a `Manifest` and
writes `to_json()`; the runtime, inspect, bench and the formats read it with `read()`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

FILENAME = "model.json"
# Bumped whenever a reader of the old layout would misread the new one. A manifest of
# another schema is refused with the version that wrote it: rebuilding is always possible,
# guessing is not.
# 3: model.source names the model without the build machine's path ("hub:ORG/NAME@COMMIT" or
# "local:DIRNAME"), model.digest; schedule.tuning_db is {"file", "sha256"}. Schema 2, the
# same but for those, is still read.
# 4: "variants" (runtime/cpu.py): each with its CPU features, TVM target, schedule, libraries
# and validation, in place of the top-level libraries / schedule / validation. Schemas 2
# and 3 are read as one variant.
SCHEMA = 4
READABLE = (2, 3, 4)


class ManifestError(ValueError):
    """model.json is missing, unreadable, or of another schema than this runtime reads."""


class IntegrityError(ManifestError):
    """A file model.json lists is missing, of another size, or has another sha256 than the
    build recorded (truncated copy, damaged disk, tampering), or model.weights' own table
    does not fit its file. The message names the file and says to rebuild or re-copy."""

    REMEDY = "rebuild the model (edgebundle build) or copy the bundle again"


def plain_name(name, what: str, where: str) -> str:
    """`name` if it is a plain file name, else ManifestError. Every name the manifest gives
    is joined to the model directory by readers on both sides (the runtime opens it, the
    formats copy it into bundles): a separator or a dot-dot would reach outside it."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\0" in name):
        raise ManifestError(f"{where}: {what} {name!r} is not a plain file name (no '/', '\\', NUL, '.' or "
                            "'..'); the file is damaged or hand-edited: rebuild the model or copy it again")
    return name


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple  # ints, or str for a symbolic dimension ("batch", "seq")
    dtype: str
    range: tuple | None = None  # [low, high) for integer inputs that index tables
    pad: int | float | None = None  # fills a "seq" dimension up to a compiled length
    # Text inputs: the tokenizers Encoding field that fills it (ids, attention_mask, type_ids).
    source: str | None = None

    def to_json(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        for key in ("range", "pad", "source"):
            value = getattr(self, key)
            if value is not None:
                d[key] = list(value) if key == "range" else value
        return d

    @classmethod
    def from_json(cls, d: dict) -> Tensor:
        return cls(d["name"], tuple(d["shape"]), d["dtype"], tuple(d["range"]) if d.get("range") else None,
                   d.get("pad"), d.get("source"))

    @property
    def seq_axis(self) -> int | None:
        return self.shape.index("seq") if "seq" in self.shape else None


@dataclasses.dataclass(frozen=True)
class Library:
    """One compiled library: for one sequence length (seq None: the model has no such
    dimension); its main(*inputs, *weights) takes model.weights' tensors at `weights`."""

    file: str
    seq: int | None
    weights: tuple = ()

    def to_json(self) -> dict:
        return {"file": self.file, "seq": self.seq, "weights": list(self.weights)}

    @classmethod
    def from_json(cls, d: dict) -> Library:
        return cls(d["file"], d.get("seq"), tuple(d.get("weights", ())))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compiled variant of a target: code for CPUs with `features` (runtime/cpu.py's
    table of known variants decides what its name needs; these are recorded for readers),
    compiled for TVM target `tvm` with `schedule`, one library per length, all sharing
    model.weights. `validation`: the comparison with PyTorch at build; {"unvalidated":
    reason} when the build machine could not run this variant while it ran others (the
    runtime then never picks it unless forced)."""

    name: str
    features: tuple
    tvm: dict | None
    libraries: tuple  # of Library, shortest length first
    schedule: dict | None = None
    validation: dict | None = None

    @property
    def validated(self) -> bool:
        return "unvalidated" not in (self.validation or {})

    @property
    def unvalidated(self) -> str | None:
        return (self.validation or {}).get("unvalidated")

    @property
    def library(self) -> Library:
        """The library for the longest length (the only one for models without "seq")."""
        return max(self.libraries, key=lambda lib: lib.seq or 0)

    def to_json(self) -> dict:
        d = {"name": self.name, "features": list(self.features), "tvm": self.tvm,
             "libraries": [lib.to_json() for lib in self.libraries]}
        for key in ("schedule", "validation"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Variant:
        return cls(d["name"], tuple(d.get("features") or ()), d.get("tvm"),
                   tuple(sorted((Library.from_json(lib) for lib in d["libraries"]), key=lambda lib: lib.seq or 0)),
                   d.get("schedule"), d.get("validation"))


def legacy_variant_name(tvm: dict | None) -> str:
    """The variant a schema 2/3 manifest's single library set is: what its LLVM CPU was."""
    mcpu = (tvm or {}).get("mcpu") or ((tvm or {}).get("host") or {}).get("mcpu")
    return {"haswell": "avx2", "neoverse-n1": "neoverse-n1"}.get(mcpu, "cpu")


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    file: str
    count: int
    bytes: int
    # How the GEMM and embedding weights are stored: fp32, fp16 or bf16 (its bits as uint16);
    # the kernels widen them to fp32. Each tensor's dtype is in the file's own table.
    storage: str = "fp32"
    # `build --quantize int8`: {"scheme": "int8", how weights and activations are quantized,
    # "tensors", "dense_layers", "embedding_tables", "int8_bytes"}; the kernels are the
    # variants' (their schedule's "int8").
    quantization: dict | None = None
    # `build --compute bf16|auto`: {"scheme": "bf16", how weights and activations are rounded,
    # "dense_layers", "bf16_bytes"}; the bf16 variants read these (their schedule's "bf16"),
    # the fp32 variants of an auto build what `storage` says.
    compute: dict | None = None

    def to_json(self) -> dict:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: dict) -> WeightsFile:
        return cls(d["file"], int(d["count"]), int(d["bytes"]), str(d.get("storage", "fp32")), d.get("quantization"),
                   d.get("compute"))


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class TextPreprocessing:
    """Requests are text: tokenizer.json (configured by the build to truncate to max_length
    and pad to the longest text of a batch), and a limit on characters per text."""

    tokenizer: str
    max_length: int
    max_chars: int
    kind: str = "text"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """Requests are images (base64), resized / cropped / normalised as the model's
    preprocessor config says, into NCHW float32 of height x width."""

    resize: dict | None  # {"shortest_edge": n} or {"height", "width"}
    center_crop: dict | None  # {"height", "width"}
    resample: int  # PIL resampling filter
    rescale: float
    mean: tuple
    std: tuple
    height: int
    width: int
    max_pixels: int
    kind: str = "image"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclasses.dataclass(frozen=True)
class NoPreprocessing:
    """Tensor mode only."""

    kind: str = "none"

    def to_json(self) -> dict:
        return {"kind": self.kind}


def preprocessing_from_json(d: dict):
    kind = d.get("kind")
    if kind == "text":
        return TextPreprocessing(d["tokenizer"], int(d["max_length"]), int(d["max_chars"]))
    if kind == "image":
        return ImagePreprocessing(d.get("resize"), d.get("center_crop"), int(d["resample"]), float(d["rescale"]),
                                  tuple(d["mean"]), tuple(d["std"]), int(d["height"]), int(d["width"]),
                                  int(d["max_pixels"]))
    if kind == "none":
        return NoPreprocessing()
    raise ValueError(f"unknown preprocessing kind {kind!r}")


@dataclasses.dataclass(frozen=True)
class Postprocessing:
    """Model outputs -> task-mode answers."""

    kind: str  # embedding | classification
    output: str  # the output it reads
    pooling: tuple | None = None  # embedding: sentence-transformers pooling modes applied
    normalize: bool | None = None  # embedding: L2-normalised
    function: str | None = None  # classification: softmax | sigmoid
    top_k: int | None = None  # classification: labels answered by default

    def to_json(self) -> dict:
        d = _drop_none(dataclasses.asdict(self))
        if self.pooling is not None:
            d["pooling"] = list(self.pooling)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Postprocessing:
        if d["kind"] not in ("embedding", "classification"):
            raise ValueError(f"unknown postprocessing kind {d['kind']!r}")
        return cls(d["kind"], d["output"], tuple(d["pooling"]) if d.get("pooling") is not None else None,
                   d.get("normalize"), d.get("function"), d.get("top_k"))


@dataclasses.dataclass(frozen=True)
class DeviceCode:
    """GPU targets: the device code in the libraries. "fatbin": compiled at build time, SASS
    for `sass` and PTX for `ptx`, loaded by the driver as it is. Anything else (the CUDA
    source of edgebundle < 0.2) needs a compiler at load time, which bundles do not carry."""

    format: str
    sass: tuple = ()  # e.g. ("sm_75", "sm_80")
    ptx: str | None = None  # e.g. "compute_90"
    libraries: dict = dataclasses.field(default_factory=dict)  # file -> {"kernels", "bytes"}

    def to_json(self) -> dict:
        return {"format": self.format, "sass": list(self.sass), "ptx": self.ptx, "libraries": self.libraries}

    @classmethod
    def from_json(cls, d: dict) -> DeviceCode:
        # edgebundle < 0.2 wrote {"kind": "cuda", ...}: source, refused at load with a reason.
        return cls(d.get("format") or d.get("kind", "unknown"), tuple(d.get("sass") or ()), d.get("ptx"),
                   dict(d.get("libraries") or {}))

    def serves(self, compute_capability: str) -> bool:
        """Whether a GPU of this compute capability ("8.6") can load the fatbin: SASS for
        sm_XY runs on X.Z for Z >= Y (same major); PTX for compute_XY is compiled by the
        driver for any X.Y or newer."""
        major, minor = (int(p) for p in compute_capability.split(".")[:2])
        for arch in self.sass:
            n = int(arch.split("_")[1])
            if n // 10 == major and n % 10 <= minor:
                return True
        if self.ptx:
            n = int(self.ptx.split("_")[1])
            return (major, minor) >= (n // 10, n % 10)
        return False


@dataclasses.dataclass(frozen=True)
class Versions:
    """What built the model (the runtime libraries shipped are the same tvm / tvm_ffi)."""

    edgebundle: str
    tvm: str | None
    tvm_ffi: str | None
    torch: str | None
    transformers: str | None
    build_python: str


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    # Where the model came from, nothing of the build machine in it: "hub:ORG/NAME@COMMIT"
    # (from the Hugging Face cache) or "local:DIRNAME" (schema 2: the build's absolute path).
    source: str
    family: str
    task: str
    architecture: str
    # {"sha256", "files"}: sha256 of `sha256sum FILES` (config.json and the weights) in the
    # model's directory; None in schema 2.
    digest: dict | None = None


@dataclasses.dataclass(frozen=True)
class TargetInfo:
    name: str  # the --target choice
    tvm: dict  # the TVM target, as compiled
    arch: str  # `uname -m` of the machines that run the host code (x86_64, aarch64)
    device: str  # what the VM initialises: cpu or cuda
    elf_machine: str  # the libraries' ELF machine, by name (x86_64, aarch64)


@dataclasses.dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    target: TargetInfo
    inputs: tuple  # of Tensor, in main()'s order
    outputs: tuple  # of Tensor
    variants: tuple  # of Variant; the first runs on every machine of the target (the build writes it so)
    weights: WeightsFile | None
    max_batch: int
    preprocessing: TextPreprocessing | ImagePreprocessing | NoPreprocessing
    postprocessing: Postprocessing
    labels: tuple | None
    glibc_required: str
    runtime_libraries: dict  # {"tvm": [...shipped...], "system": [...required of the OS...]}
    versions: Versions
    files: dict  # name -> {"sha256", "size"}: every file the model needs beside model.json
    notes: tuple = ()
    device_code: DeviceCode | None = None  # GPU targets: what device code the libraries carry
    schema: int = SCHEMA

    # -- derived views ---------------------------------------------------------------
    @property
    def baseline(self) -> Variant:
        """The variant every machine of the target runs."""
        return self.variants[0]

    @property
    def libraries(self) -> tuple:
        """The baseline variant's libraries (every variant has one per length, the same lengths)."""
        return self.baseline.libraries

    @property
    def all_libraries(self) -> tuple:
        """Every variant's libraries: the code a bundle ships."""
        return tuple(lib for v in self.variants for lib in v.libraries)

    @property
    def schedule(self) -> dict | None:
        return self.baseline.schedule

    @property
    def validation(self) -> dict | None:
        """The baseline's comparison with PyTorch (each variant has its own)."""
        return self.baseline.validation

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    @property
    def seq_lengths(self) -> list[int]:
        return sorted(lib.seq for lib in self.libraries if lib.seq is not None)

    @property
    def library(self) -> Library:
        """The baseline's library for the longest length (the only one for models without "seq")."""
        return self.baseline.library

    # -- JSON --------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = {
            "schema": SCHEMA,  # the layout written here, whatever schema was read
            "model": _drop_none(dataclasses.asdict(self.model)),  # schema 2 has no digest
            "target": dataclasses.asdict(self.target),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "variants": [v.to_json() for v in self.variants],
            "weights": self.weights.to_json() if self.weights else None,
            "max_batch": self.max_batch,
            "preprocessing": self.preprocessing.to_json(),
            "postprocessing": self.postprocessing.to_json(),
            "labels": list(self.labels) if self.labels is not None else None,
            "glibc_required": self.glibc_required,
            "runtime_libraries": self.runtime_libraries,
            "versions": dataclasses.asdict(self.versions),
            "files": self.files,
            "notes": list(self.notes),
        }
        if self.device_code is not None:
            d["device_code"] = self.device_code.to_json()
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, d: dict, where: str = FILENAME) -> Manifest:
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: not a JSON object")
        schema = d.get("schema")
        if schema not in READABLE:
            wrote = (d.get("versions") or {}).get("edgebundle", "an unknown version")
            newer = isinstance(schema, int) and schema > SCHEMA
            raise ManifestError(
                f"{where} has manifest schema {schema}, written by edgebundle {wrote}; this runtime reads "
                f"schema {SCHEMA} (and {', '.join(map(str, READABLE[:-1]))}) only. " + (
                    "Upgrade edgebundle (the runtime of the bundle) to the version that built it."
                    if newer else "Rebuild the model with this edgebundle (edgebundle build), or run it with "
                                  f"the runtime of edgebundle {wrote}."))
        try:
            if schema >= 4:
                variants = tuple(Variant.from_json(v) for v in d["variants"])
            else:  # one variant: the libraries of the target's one LLVM CPU
                variants = (Variant.from_json({"name": legacy_variant_name(d["target"].get("tvm")),
                                               "tvm": d["target"].get("tvm"), "libraries": d["libraries"],
                                               "schedule": d.get("schedule"), "validation": d.get("validation")}),)
            if not variants:
                raise ValueError("no variants")
            if len({v.name for v in variants}) != len(variants):
                raise ValueError("two variants of one name")
            if any(not v.libraries for v in variants):
                raise ValueError("a variant without libraries")
            lengths = {tuple(lib.seq for lib in v.libraries) for v in variants}
            if len(lengths) != 1:
                raise ValueError("variants compiled for different sequence lengths")
            m = cls(
                model=ModelInfo(**d["model"]),
                target=TargetInfo(**d["target"]),
                inputs=tuple(Tensor.from_json(t) for t in d["inputs"]),
                outputs=tuple(Tensor.from_json(t) for t in d["outputs"]),
                variants=variants,
                weights=WeightsFile.from_json(d["weights"]) if d.get("weights") else None,
                max_batch=int(d["max_batch"]),
                preprocessing=preprocessing_from_json(d["preprocessing"]),
                postprocessing=Postprocessing.from_json(d["postprocessing"]),
                labels=tuple(d["labels"]) if d.get("labels") is not None else None,
                glibc_required=d["glibc_required"],
                runtime_libraries=d["runtime_libraries"],
                versions=Versions(**d["versions"]),
                files=d["files"],
                notes=tuple(d.get("notes") or ()),
                device_code=DeviceCode.from_json(d["device_code"]) if d.get("device_code") else None,
                schema=schema,
            )
        except KeyError as e:
            raise ManifestError(f"{where}: missing {e.args[0]!r}; the file is damaged or hand-edited") from None
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{where}: malformed ({e}); the file is damaged or hand-edited") from None
        m.check_names(where)
        return m

    def opened_files(self) -> list[str]:
        """The files beside model.json a runtime may open: libraries, weights, tokenizer."""
        names = [lib.file for lib in self.all_libraries] + ([self.weights.file] if self.weights else [])
        tokenizer = getattr(self.preprocessing, "tokenizer", None)
        return names + ([tokenizer] if tokenizer is not None else [])

    def check_names(self, where: str = FILENAME) -> None:
        """Every name a plain file name; every file a runtime opens listed in `files` with
        the sha256 and size it is verified against before use."""
        if not isinstance(self.files, dict):
            raise ManifestError(f"{where}: malformed (\"files\" is not an object); the file is damaged or hand-edited")
        for name, record in self.files.items():
            plain_name(name, "file", where)
            if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                    and len(record["sha256"]) == 64 and all(c in "0123456789abcdef" for c in record["sha256"])
                    and type(record.get("size")) is int and record["size"] >= 0):
                raise ManifestError(f"{where}: malformed (files[{name!r}] needs a sha256 (64 lowercase hex digits) "
                                    "and a size (bytes)); the file is damaged or hand-edited: rebuild the model")
        for name in self.opened_files():
            plain_name(name, "file", where)
            if name not in self.files:
                raise ManifestError(f"{where}: {name} is not listed in \"files\" with its sha256 and size, so it "
                                    "cannot be verified; the file is damaged or hand-edited: rebuild the model")


def read(model_dir: str | Path) -> Manifest:
    """OUT/<target>/model.json (or a bundle's copy), checked."""
    path = Path(model_dir) / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file; pass a build's target directory (OUT/<target>) or a bundle "
                            "root") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not readable JSON ({e})") from None
    return Manifest.from_json(data, where=str(path))
