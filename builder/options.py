"""What a build is asked to do, typed: the CLI parses into BuildOptions and calls
`builder.build.build`; families, targets and formats read the fields they need."""
from __future__ import annotations

import dataclasses
from pathlib import Path

# The Python of the bundles we write (Lambda's python3.13 runs Amazon Linux 2023, glibc
# 2.34; Debian trixie ships it, so local sandboxes can match it).
DEFAULT_PYTHON = "3.13"
DEFAULT_SEQ_LEN = 128
# The batch dimension is symbolic in every compiled module; requests larger than this are
# refused by the runtime before they can exhaust a Lambda's memory.
MAX_BATCH = 32
# Every NVIDIA GPU AWS rents: T4, A100, A10G, L4 / L40S, H100 / H200 (PTX of sm_90 for newer).
DEFAULT_CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


# How weights may be stored (`build --weights`): builder/compiler/schedules/storage.py.
STORAGES = ("fp32", "fp16", "bf16")
# `build --quantize`: dense layers int8 (builder/compiler/schedules/int8.py).
QUANTIZE = ("none", "int8")
# `build --compute`: what CPU targets' dense layers multiply in. bf16: only the bf16 variant
# (AVX512_BF16 / Armv8.6 BF16: the bundle needs such a CPU); auto: it beside the fp32 variants,
# picked at load where the CPU has the instructions (builder/compiler/schedules/bf16.py).
COMPUTE = ("fp32", "bf16", "auto")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    targets: tuple[str, ...] = ("x86_64",)
    formats: tuple[str, ...] = ()
    family: str | None = None  # None: detected from config.json
    task: str | None = None  # None: the family's default for the checkpoint
    name: str | None = None  # None: the directory name or hub id
    # Text models: the longest sequence, and the lengths compiled (None: 16, 32, ... seq_len).
    seq_len: int = DEFAULT_SEQ_LEN
    seq_buckets: tuple[int, ...] | None = None
    # The bundle's Python; None: the format's default (DEFAULT_PYTHON, or what its base image runs).
    python: str | None = None
    # Format edge only: every Python the device may run (its wheelhouse carries each).
    pythons: tuple[str, ...] = ()
    # Image formats' base images: (key, image) pairs in the order given (a later one of the
    # same key wins); key "" for all, else FORMAT, TARGET or FORMAT/TARGET.
    base_images: tuple[tuple[str, str], ...] = ()
    cpu: tuple[str, ...] = ()  # LLVM CPUs: NAME, or TARGET=NAME
    cuda_archs: tuple[str, ...] = DEFAULT_CUDA_ARCHS  # SASS in the fatbin; PTX of the newest
    host: str = "x86_64"  # CPU platform of GPU targets' host code
    schedule: bool = True  # False: TVM's unscheduled default pipeline (comparison, debugging)
    tuning_db: Path | None = None
    # CPU targets: how GEMM and embedding weights are stored (compute stays fp32);
    # builder/compiler/schedules/storage.py. fp16 by measurement: half the file and the
    # memory, and no slower (BERT-base 5% faster, ResNet50 level; Zen 5, README).
    weights: str = "fp16"
    quantize: str = "none"
    compute: str = "fp32"

    def __post_init__(self):
        # Lists from callers become tuples: options are hashable and cannot be mutated midway.
        for name in ("targets", "formats", "cpu", "cuda_archs", "pythons"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(dict.fromkeys([value] if isinstance(value, str) else value or ())))
        pairs = self.base_images.items() if isinstance(self.base_images, dict) else self.base_images or ()
        object.__setattr__(self, "base_images", tuple((str(k), str(v)) for k, v in pairs))
        if self.seq_buckets is not None:
            object.__setattr__(self, "seq_buckets", tuple(self.seq_buckets))
        if not self.targets:
            object.__setattr__(self, "targets", ("x86_64",))
        if not self.cuda_archs:
            object.__setattr__(self, "cuda_archs", DEFAULT_CUDA_ARCHS)
        if self.weights not in STORAGES:
            from builder.errors import EdgebundleError

            raise EdgebundleError(f"unknown weight storage {self.weights!r}", where="BuildOptions.weights",
                                  hint=f"one of {', '.join(STORAGES)}")
        if self.quantize not in QUANTIZE:
            from builder.errors import EdgebundleError

            raise EdgebundleError(f"unknown quantization {self.quantize!r}", where="BuildOptions.quantize",
                                  hint=f"one of {', '.join(QUANTIZE)}")
        if self.compute not in COMPUTE:
            from builder.errors import EdgebundleError

            raise EdgebundleError(f"unknown compute {self.compute!r}", where="BuildOptions.compute",
                                  hint=f"one of {', '.join(COMPUTE)}")
        if self.compute != "fp32" and self.quantize != "none":
            from builder.errors import UnsupportedModelError

            raise UnsupportedModelError(f"--compute {self.compute} and --quantize {self.quantize} are two ways to "
                                        "multiply the dense layers; choose one",
                                        hint="int8 is smaller and, with VNNI, faster; bf16 is closer to fp32")

    def base_image(self, fmt: str, target: str) -> str | None:
        """The --base-image given for this format and target, most specific first."""
        given = dict(self.base_images)
        # `auto` writes lambda-image contexts: its key names their base too.
        formats = (fmt, "auto") if fmt == "lambda-image" else (fmt,)
        keys = [f"{f}/{target}" for f in formats] + list(formats) + [target, ""]
        for key in keys:
            if key in given:
                return given[key]
        return None


class _FromArgs:
    @classmethod
    def from_args(cls, args, **given):
        """The options from parsed command-line arguments: every field from the argument of its
        name (a missing one is an error, not a silent default), or from `given`."""
        return cls(**{f.name: given[f.name] if f.name in given else getattr(args, f.name)
                      for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class DeployOptions(_FromArgs):
    """What `edgebundle deploy` is asked to do; builder.deploy reads it. The options alone are
    checked here, before any AWS call; builder/deploy/plan.py checks them against the bundle."""

    function_name: str
    role: str | None = None  # ARN or role name; required to create the function
    alias: str = "live"
    package: str | None = None  # "zip" | "image" when a target directory holds both
    memory_mb: int | None = None  # None: builder/bundle/sizing.py's rule
    timeout_s: int | None = None
    environment: tuple[tuple[str, str], ...] = ()  # more KEY=VALUE for the function
    s3_bucket: str | None = None  # zips: through S3 (always above 50 MB)
    s3_prefix: str = "edgebundle/"
    repository: str | None = None  # images: the ECR repository (default edgebundle/<model>)
    function_url: str | None = None  # None, "AWS_IAM" or "NONE" (public: an explicit flag)
    snapstart: bool | None = None  # None: keep what the function has
    runtime_layer: bool = False
    push_tool: str | None = None  # skopeo | podman | docker (default: the first installed)
    profile: str | None = None
    region: str | None = None
    dry_run: bool = False

    def __post_init__(self):
        import re

        from builder.bundle.sizing import check_memory, check_timeout
        from builder.deploy.plan import RESERVED_ENV
        from builder.errors import DeployError

        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.function_name):
            raise DeployError(f"function name {self.function_name!r}: Lambda allows 1-64 letters, digits, - and _",
                              hint="pass another --function-name")
        if not re.fullmatch(r"(?!^[0-9]+$)[A-Za-z0-9_-]{1,128}", self.alias):
            raise DeployError(f"alias {self.alias!r}: 1-128 letters, digits, - and _, not only digits",
                              hint="pass another --alias")
        if self.memory_mb is not None:
            check_memory(self.memory_mb)
        if self.timeout_s is not None:
            check_timeout(self.timeout_s)
        for key, _ in self.environment:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]+", key) or key in RESERVED_ENV:
                raise DeployError(f"environment variable {key!r}: names are a letter then letters, digits and _, "
                                  "and AWS_REGION, LAMBDA_TASK_ROOT and the like are reserved by Lambda",
                                  hint="rename it")


@dataclasses.dataclass(frozen=True)
class EndpointOptions(_FromArgs):
    """What `edgebundle deploy --sagemaker-endpoint` is asked to do (builder/deploy/sagemaker.py)."""

    endpoint_name: str
    role: str | None = None  # ARN or name; SageMaker's execution role (needed to create the model)
    instance_type: str | None = None  # None: the first of builder/deploy/instances.py's ladder that fits
    instances: int | None = None  # initial instance count (None: 1, or the autoscaling minimum)
    autoscale: tuple[int, int] | None = None  # (min, max) instances; None: keep what is there
    autoscale_off: bool = False  # remove edgebundle's autoscaling from the endpoint
    target_invocations: int | None = None  # per instance per minute; None: from the build's timing
    keep: int = 1  # unused endpoint configs (and their models) kept for a rollback
    environment: tuple[tuple[str, str], ...] = ()
    repository: str | None = None  # ECR repository (default edgebundle/<model>)
    push_tool: str | None = None
    profile: str | None = None
    region: str | None = None
    dry_run: bool = False

    def __post_init__(self):
        """What is wrong with the flags alone, refused before any AWS call."""
        import re

        from builder.errors import DeployError

        if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", self.endpoint_name):
            raise DeployError(f"endpoint name {self.endpoint_name!r}: SageMaker allows 1-63 letters, digits and "
                              "hyphens, starting and ending with a letter or digit", hint="pass another name")
        if self.instances is not None and self.instances < 1:
            raise DeployError(f"--instances {self.instances}: at least 1", hint="pass --instances 1 or more")
        if self.autoscale is not None:
            low, high = self.autoscale
            if low < 1 or high < low:
                raise DeployError(f"--autoscale {low}:{high}: MIN must be at least 1 and MAX at least MIN",
                                  hint="e.g. --autoscale 1:4")
            if self.instances is not None and not low <= self.instances <= high:
                raise DeployError(f"--instances {self.instances} is outside --autoscale {low}:{high}",
                                  hint="drop --instances (it starts at MIN) or pick one within MIN:MAX")
        if self.target_invocations is not None and self.target_invocations < 1:
            raise DeployError("--target-invocations must be at least 1 (invocations per instance per minute)",
                              hint="e.g. --target-invocations 600")
        if self.keep < 0:
            raise DeployError(f"--keep {self.keep}: the unused configs to keep cannot be negative",
                              hint="--keep 0 removes every unused config; the default 1 keeps one for a rollback")
        for key, _ in self.environment:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,1023}", key):
                raise DeployError(f"environment variable {key!r}: a letter or _, then letters, digits and _",
                                  hint="rename it")


@dataclasses.dataclass(frozen=True)
class UndeployOptions(_FromArgs):
    """What `edgebundle undeploy` removes: a Lambda function or a SageMaker endpoint, with
    what edgebundle created for it (builder/deploy/undeploy.py)."""

    function_name: str | None = None
    endpoint_name: str | None = None
    profile: str | None = None
    region: str | None = None
    dry_run: bool = False

    def __post_init__(self):
        if bool(self.function_name) == bool(self.endpoint_name):
            from builder.errors import DeployError

            raise DeployError("undeploy removes one thing: give --function NAME or --sagemaker-endpoint NAME",
                              hint="edgebundle undeploy --function NAME (or --sagemaker-endpoint NAME) [--dry-run]")
