"""The `edgebundle` command. Heavy imports happen inside the subcommands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder.errors import EdgebundleError
from builder.options import COMPUTE, QUANTIZE, STORAGES, BuildOptions, DeployOptions, EndpointOptions
from builder.progress import Progress

# Where a failure that is edgebundle's own fault should be reported.
REPORT = "report it to the edgebundle maintainers with the command line and the output of `--debug`"


def _min_max(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        pair = (int(low), int(high))
    except ValueError:
        pair = (0, 0)
    if not sep or pair[0] < 1 or pair[1] < pair[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN:MAX instances, 1 <= MIN <= MAX (e.g. 1:4)")
    return pair


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of at least 1")
    return n


def _parser() -> argparse.ArgumentParser:
    from builder.versions import EDGEBUNDLE_VERSION

    p = argparse.ArgumentParser(prog="edgebundle", description=(
        "Compile a PyTorch / Hugging Face model with Apache TVM into self-contained bundles "
        "for AWS Lambda, containers and edge devices - no PyTorch at run time."))
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"edgebundle {EDGEBUNDLE_VERSION}")
    sub = p.add_subparsers(dest="command", required=True)
    # Every subcommand takes --debug after its name too (hidden: the top-level one is documented);
    # all but serve and inspect take --quiet.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    quiet = argparse.ArgumentParser(add_help=False, parents=[debug])
    quiet.add_argument("--quiet", action="store_true", help="print only warnings and errors")

    _build_command(sub, quiet)
    _aws_commands(sub, quiet)
    _serving_commands(sub, quiet, debug)
    _tool_commands(sub, quiet)
    return p


def _build_command(sub, quiet) -> None:
    """build: every option of BuildOptions."""
    from builder.bundle.formats import FORMATS
    from builder.compiler.cuda import CUDA_ARCHS
    from builder.compiler.targets import TARGETS
    from builder.model.families import FAMILIES
    from builder.options import DEFAULT_CUDA_ARCHS, DEFAULT_PYTHON, DEFAULT_SEQ_LEN
    from builder.platforms import PLATFORMS

    b = sub.add_parser("build", parents=[quiet], help="compile a model for one or more targets and write bundles")
    b.add_argument("model", help="Hugging Face model directory, or a hub id present in the local HF cache")
    b.add_argument("--target", action="append", choices=list(TARGETS),
                   help="target to build for (repeatable; default x86_64): "
                        + "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values()))
    b.add_argument("--format", action="append", choices=list(FORMATS), default=[],
                   help="bundle format to write per target (repeatable; default: none, only the compiled model): "
                        + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()))
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument("--family", choices=list(FAMILIES),
                   help="override the family detected from config.json: "
                        + "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values()))
    b.add_argument("--task", help="override the task (e.g. feature-extraction, text-classification)")
    b.add_argument("--name", help="model name recorded in manifests (default: the directory name or hub id)")
    b.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                   help=f"text models: longest sequence, in tokens (default {DEFAULT_SEQ_LEN})")
    b.add_argument("--seq-buckets", type=_int_list, metavar="N,N,...",
                   help="text models: sequence lengths to compile, ending at --seq-len; a request runs on the "
                        "shortest that fits (default 16,32,64,...,--seq-len; one length: --seq-buckets 128)")
    b.add_argument("--python", metavar="X.Y", action="append",
                   help=f"Python version of the bundle (default {DEFAULT_PYTHON}; lambda: 3.12-3.14, and 3.10/3.11 "
                        "for local-test zips only; serve-image: 3.10-3.14; edge: 3.11 = Debian 12, repeatable: the "
                        "device may run any of them)")
    b.add_argument("--base-image", action="append", type=_base_image, metavar="[KEY=]IMAGE",
                   help="base image of the image formats (default: AWS's Lambda Python image for lambda-image, "
                        "python:X.Y-slim for serve-image, cuda included: its CUDA runtime comes from NVIDIA's wheel); "
                        "KEY narrows it to a format, a target or FORMAT/TARGET (repeatable)")
    b.add_argument("--cpu", action="append",
                   help="LLVM CPU to compile for: NAME, or TARGET=NAME with several targets (defaults: x86_64 "
                        "haswell = every Lambda x86_64 host; arm64 neoverse-n1 = Graviton2; e.g. cortex-a72 for a "
                        "Raspberry Pi 4, cortex-a78ae for a Jetson Orin CPU)")
    b.add_argument("--cuda-arch", action="append", type=_str_list, metavar="SM[,SM...]",
                   help=f"GPU architectures whose machine code (SASS) the cuda fatbin carries, plus PTX of the "
                        f"newest (repeatable; one of {', '.join(CUDA_ARCHS)}; default every GPU AWS rents: "
                        f"{','.join(DEFAULT_CUDA_ARCHS)}); fewer give smaller files and faster builds")
    b.add_argument("--host", choices=list(PLATFORMS), default="x86_64",
                   help="CPU platform of the host code of GPU targets (arm64 for Jetson-class devices)")
    b.add_argument("--tuning-db", type=Path, help="CPU targets: schedule parameters from `edgebundle tune`")
    b.add_argument("--weights", choices=list(STORAGES), default=BuildOptions.weights,
                   help="CPU targets: how matmul, conv and embedding weights are stored; fp16 and bf16 halve the "
                        "file and the memory traffic and are widened to fp32 inside the kernels, which compute in "
                        f"fp32 (default {BuildOptions.weights}: no slower than fp32, answers within ~1e-3 of it)")
    b.add_argument("--quantize", choices=list(QUANTIZE), default=BuildOptions.quantize,
                   help="CPU targets: int8 dense layers (per-column int8 weights, per-token int8 activations, "
                        "int32 accumulation; VNNI / AVX2 / Arm dot-product kernels picked at load); the build "
                        "checks the answers against fp32 on a shipped text set and fails below cosine 0.99")
    b.add_argument("--compute", choices=list(COMPUTE), default=BuildOptions.compute,
                   help="CPU targets: what dense layers multiply in. bf16: bfloat16 operands, fp32 accumulation "
                        "(AVX512_BF16: Zen 4/5, Sapphire Rapids; Arm BF16: Graviton3), weights stored bf16; the "
                        "bundle then needs such a CPU. auto: the bf16 variant beside the fp32 ones, picked at load "
                        "where the CPU has it. The build checks bf16 answers against fp32 on a shipped text set "
                        f"(fails below cosine 0.998). Default {BuildOptions.compute}")
    b.add_argument("--no-schedule", dest="schedule", action="store_false",
                   help="CPU targets: TVM's unscheduled default pipeline (slow; for comparison and debugging)")


def _aws_commands(sub, quiet) -> None:
    """invoke (local or deployed), deploy and undeploy."""
    i = sub.add_parser("invoke", parents=[quiet],
                       help="run a lambda.zip or Lambda container image locally the way AWS Lambda runs it, or call "
                            "a deployed function (--function)")
    i.add_argument("bundle", nargs="?", help="a lambda.zip, a Lambda image's OCI archive (lambda-image.oci.tar), "
                                             "or a Lambda image tag (localhost/edgebundle/NAME:TARGET-SHA)")
    i.add_argument("--function", metavar="NAME[:ALIAS]",
                   help="call this deployed Lambda function instead (each event once; on a function error its "
                        "error and log tail are printed)")
    i.add_argument("--sagemaker-endpoint", metavar="NAME",
                   help="call this SageMaker endpoint instead (each event's JSON is the body of the container's "
                        "/invocations; one answer line each)")
    i.add_argument("--layer", action="append", type=Path, default=[],
                   help="a Lambda layer zip to unpack under /opt for a local zip (repeatable, in order), e.g. "
                        "lambda-runtime-layer.zip beside lambda-model.zip")
    _aws_arguments(i)
    i.add_argument("--engine", choices=["podman", "docker"], help="container engine for images (default: the "
                                                                  "first installed of podman, docker)")
    i.add_argument("--event", action="append", type=Path, required=True,
                   help="JSON event file (repeatable; all run in one warm sandbox, in order)")

    d = sub.add_parser("deploy", parents=[quiet],
                       help="put a Lambda zip or image on AWS (create or update the function, publish a version, "
                            "point an alias at it), or a serving image on a SageMaker endpoint (planned first; safe "
                            "to repeat)")
    d.add_argument("bundle", type=Path, help="OUT/<target> (or its lambda.zip, or its lambda-image / serve-image "
                                             "context, built with `edgebundle image build`)")
    where = d.add_mutually_exclusive_group(required=True)
    where.add_argument("--function-name", help="the Lambda function to create or update")
    where.add_argument("--sagemaker-endpoint", dest="endpoint_name", metavar="NAME",
                       help="the SageMaker real-time endpoint to create or update with OUT/<target>'s serve-image")
    d.add_argument("--role", help="execution role ARN or name (needed to create the function or the SageMaker model; "
                                  "given on an update it replaces the role)")
    d.add_argument("--alias", default=DeployOptions.alias,
                   help=f"alias pointed at the new version (default {DeployOptions.alias})")
    d.add_argument("--package", choices=["zip", "image"], help="which bundle, when OUT/<target> holds both")
    d.add_argument("--memory", dest="memory_mb", type=int, metavar="MB",
                   help="memory in MB (default: sized from the model; see the README's Deploy section)")
    d.add_argument("--timeout", dest="timeout_s", type=int, metavar="S",
                   help="timeout in seconds (default: sized from the model)")
    d.add_argument("--env", action="append", type=_env_pair, default=[], metavar="KEY=VALUE",
                   help="an environment variable for the function (repeatable; visible to other users in ps: "
                        "use --env-file for secrets)")
    d.add_argument("--env-file", action="append", type=Path, default=[], metavar="FILE",
                   help="environment variables for the function from FILE: KEY=VALUE lines, blank lines and # "
                        "comments ignored, no quoting (repeatable; --env given too wins)")
    d.add_argument("--s3-bucket", help="upload the zip to this bucket and deploy from there (always needed above "
                                       "Lambda's 50 MB direct upload); the key is named by the zip's sha256")
    d.add_argument("--s3-prefix", default=DeployOptions.s3_prefix,
                   help=f"key prefix in --s3-bucket (default {DeployOptions.s3_prefix})")
    d.add_argument("--repository", help="images: the ECR repository (default edgebundle/<model>; created if missing)")
    d.add_argument("--push-tool", choices=["skopeo", "podman", "docker"],
                   help="images: what pushes the OCI archive (default: the first installed)")
    url = d.add_mutually_exclusive_group()
    url.add_argument("--function-url", dest="function_url", action="store_const", const="AWS_IAM",
                     help="give the alias a function URL with AWS_IAM auth (callers sign requests with SigV4)")
    url.add_argument("--public-function-url", dest="function_url", action="store_const", const="NONE",
                     help="give the alias a function URL with NO authentication: anyone may call it")
    d.add_argument("--snapstart", action=argparse.BooleanOptionalAction, default=None,
                   help="zips, python3.12+: SnapStart on published versions (the model loads and warms before the "
                        "snapshot); default: what the function has")
    d.add_argument("--runtime-layer", action="store_true",
                   help="zips: ship runtime/, libtvm and packages as a Lambda layer shared by models of the same "
                        "target and Python (published once, by content); the function's zip carries the model")
    sm = d.add_argument_group("SageMaker endpoints (--sagemaker-endpoint)")
    sm.add_argument("--instance-type", metavar="ml.TYPE",
                    help="instance type, checked against the build (architecture, GPU and fatbin, memory); default: "
                         "ml.c5.xlarge (x86_64), ml.c7g.xlarge (arm64), ml.g4dn.xlarge (cuda), or the next size "
                         "up that holds the model")
    sm.add_argument("--instances", type=_at_least_one, metavar="N", help="instances to start with (default 1, or "
                                                                         "the --autoscale minimum)")
    scale = sm.add_mutually_exclusive_group()
    scale.add_argument("--autoscale", type=_min_max, metavar="MIN:MAX",
                       help="target-tracking autoscaling on invocations per instance between MIN and MAX instances")
    scale.add_argument("--no-autoscale", dest="autoscale_off", action="store_true",
                       help="remove the autoscaling an earlier deploy set")
    sm.add_argument("--target-invocations", type=_at_least_one, metavar="N",
                    help="with --autoscale: invocations per instance per minute to hold (default: from the build's "
                         "timing x 0.5 headroom, shown in the plan)")
    sm.add_argument("--keep", type=int, default=EndpointOptions.keep, metavar="N",
                    help=f"unused endpoint configs (and models) kept for a rollback after an update (default "
                         f"{EndpointOptions.keep})")
    _plan_arguments(d)

    u = sub.add_parser("undeploy", parents=[quiet],
                       help="remove a deployed Lambda function or SageMaker endpoint and what edgebundle created for "
                            "it (planned first; only resources edgebundle tagged)")
    what = u.add_mutually_exclusive_group(required=True)
    what.add_argument("--function", dest="function_name", metavar="NAME",
                      help="the Lambda function (its versions, aliases, URL, and the runtime layer versions no other "
                           "function uses)")
    what.add_argument("--sagemaker-endpoint", dest="endpoint_name", metavar="NAME",
                      help="the SageMaker endpoint (its autoscaling, endpoint configs and models)")
    _plan_arguments(u)


def _serving_commands(sub, quiet, debug) -> None:
    """serve, image build, inspect."""
    sv = sub.add_parser("serve", parents=[debug],
                        help="serve OUT/<target> over HTTP (SageMaker, KServe v2, /metrics), as the serving image does")
    sv.add_argument("model_dir", type=Path, help="a built target directory, OUT/<target>")
    from runtime.serve import add_arguments

    add_arguments(sv)

    im = sub.add_parser("image", help="container images from image contexts (lambda-image, serve-image)")
    isub = im.add_subparsers(dest="image_command", required=True)
    ib = isub.add_parser("build", parents=[quiet],
                         help="build an image context with podman, buildah or docker; tag it and write an OCI archive "
                              "beside it")
    ib.add_argument("context", type=Path, help="OUT/<target>/lambda-image or OUT/<target>/serve-image")
    ib.add_argument("--engine", choices=["podman", "buildah", "docker"],
                    help="default: the first installed of podman, buildah, docker")
    ib.add_argument("--tag", help="image tag (default: the context's, localhost/edgebundle/NAME:TARGET-SHA)")
    ib.add_argument("--no-archive", dest="archive", action="store_false",
                    help="do not write CONTEXT.oci.tar")

    n = sub.add_parser("inspect", parents=[debug], help="describe a built target directory (OUT/<target>)")
    n.add_argument("target_dir", type=Path)
    n.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _tool_commands(sub, quiet) -> None:
    """bench and tune."""
    from builder.compiler.targets import TARGETS
    from builder.options import DEFAULT_SEQ_LEN

    bn = sub.add_parser("bench", parents=[quiet], help="our module vs PyTorch eager vs ONNX Runtime, side by side")
    bn.add_argument("model", help="a build's OUT directory, or a model to build first")
    bn.add_argument("--target", default="x86_64", choices=list(TARGETS))
    bn.add_argument("--threads", type=_at_least_one, help="threads for all three (default: the CPUs this process may use)")
    bn.add_argument("--runs", type=_at_least_one, default=30, help="interleaved warm rounds (default 30)")
    bn.add_argument("--cold-runs", type=_at_least_one, default=3, help="fresh processes per engine for cold start")
    bn.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="text models built here: sequence length")
    bn.add_argument("--model-dir", type=Path, help="with an OUT directory: the model directory it was built from "
                                                   "(needed unless it came from the Hugging Face cache: builds do "
                                                   "not record local paths)")
    bn.add_argument("--batch", type=_at_least_one, default=1, help="rows per request for the warm timings (default 1)")
    bn.add_argument("--also", type=Path, action="append", metavar="OUT",
                    help="another build's OUT of the same model (other --weights / --quantize), timed in the same "
                         "rounds (repeatable)")
    bn.add_argument("--ort-int8", action="store_true",
                    help="also time ONNX Runtime's quantize_dynamic model (per-channel int8 weights, dynamic u8 "
                         "activations); on by default when the build is int8")
    bn.add_argument("--json", type=Path, help="write the results as JSON")
    bn.add_argument("--plot", type=Path, help="draw a bar chart (PNG)")

    t = sub.add_parser("tune", parents=[quiet], help="search CPU schedule parameters for one model (optional)")
    t.add_argument("model", help="Hugging Face model directory or cached hub id")
    t.add_argument("--target", default="x86_64", choices=list(TARGETS))
    t.add_argument("--out", type=Path, required=True, help="the JSON database to write (for build --tuning-db)")
    t.add_argument("--cpu", help="LLVM CPU, as for build")
    t.add_argument("--variant", help="which CPU variant of the target to tune (x86_64: avx2, avx512; default: "
                                     "the baseline, avx2); the build applies it to that variant")
    t.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    t.add_argument("--runs", type=int, default=10, help="timed runs per candidate")
    t.add_argument("--weights", choices=list(STORAGES), default=BuildOptions.weights,
                   help="weight storage the kernels are timed with: as the build will use (default %(default)s)")


def build_options(args) -> BuildOptions:
    return BuildOptions(targets=tuple(args.target or ("x86_64",)), formats=tuple(args.format), family=args.family,
                        task=args.task, name=args.name, seq_len=args.seq_len, seq_buckets=args.seq_buckets,
                        python=(args.python or [None])[0], pythons=tuple(args.python or ()), cpu=tuple(args.cpu or ()), base_images=tuple(args.base_image or ()),
                        cuda_archs=tuple(a for group in args.cuda_arch or () for a in group), host=args.host,
                        schedule=args.schedule, tuning_db=args.tuning_db, weights=args.weights,
                        quantize=args.quantize, compute=args.compute)


def cmd_build(args) -> int:
    from builder.build import build

    build(args.model, args.out, build_options(args), progress=Progress(quiet=args.quiet))
    return 0


def _plan_arguments(p) -> None:
    """What every command that plans AWS changes takes (deploy, undeploy)."""
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    _aws_arguments(p)


def _aws_arguments(p) -> None:
    p.add_argument("--profile", help="AWS profile (default: AWS_PROFILE or the default profile)")
    p.add_argument("--region", help="AWS region (default: AWS_REGION or the profile's); AWS_ENDPOINT_URL is "
                                    "honoured as by the AWS CLI")


# Flags of one path only, refused on the other: (the options' field, its flag); unchanged
# is the field's default.
_LAMBDA_ONLY = (DeployOptions, (("alias", "--alias"), ("package", "--package"), ("memory_mb", "--memory"),
                                ("timeout_s", "--timeout"), ("s3_bucket", "--s3-bucket"),
                                ("function_url", "--function-url"), ("snapstart", "--snapstart"),
                                ("runtime_layer", "--runtime-layer"), ("s3_prefix", "--s3-prefix")))
_ENDPOINT_ONLY = (EndpointOptions, (("instance_type", "--instance-type"), ("instances", "--instances"),
                                    ("autoscale", "--autoscale"), ("autoscale_off", "--no-autoscale"),
                                    ("target_invocations", "--target-invocations"), ("keep", "--keep")))


def _refuse_other_path(args, flags, path: str) -> None:
    from builder.errors import DeployError

    options, fields = flags
    given = [flag for field, flag in fields if getattr(args, field) != getattr(options, field)]
    if given:
        raise DeployError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to {path} only",
                          hint="drop " + ", ".join(given))


def cmd_deploy(args) -> int:
    import json

    from builder.deploy import deploy, deploy_endpoint
    from builder.deploy.executor import Pusher

    environment = tuple(pair for path in args.env_file for pair in read_env_file(path)) + tuple(args.env)
    if args.endpoint_name:
        _refuse_other_path(args, _LAMBDA_ONLY, "Lambda functions (--function-name)")
        result = deploy_endpoint(args.bundle, EndpointOptions.from_args(args, environment=environment),
                                 Progress(quiet=args.quiet), pusher=Pusher(args.push_tool))
    else:
        _refuse_other_path(args, _ENDPOINT_ONLY, "SageMaker endpoints (--sagemaker-endpoint)")
        result = deploy(args.bundle, DeployOptions.from_args(args, environment=environment),
                        Progress(quiet=args.quiet), pusher=Pusher(args.push_tool))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def cmd_invoke(args) -> int:
    from builder.errors import InvokeError
    from builder.local.invoke import invoke_local, read_events

    if args.function and args.sagemaker_endpoint:
        raise InvokeError("--function and --sagemaker-endpoint: give one", hint="call one deployment at a time")
    if not (args.function or args.sagemaker_endpoint):
        return invoke_local(args.bundle, args.event, layers=args.layer, engine=args.engine,
                            progress=Progress(quiet=args.quiet))
    flag = "--function" if args.function else "--sagemaker-endpoint"
    if args.bundle or args.layer:
        raise InvokeError(f"{flag} calls a deployment: give no local bundle or --layer with it",
                          hint=f"edgebundle invoke {flag} NAME --event FILE")
    from builder.deploy import _require_boto3
    from builder.deploy.aws import Clients
    from builder.deploy.remote import invoke_endpoint, invoke_function

    _require_boto3()
    events = read_events(args.event)
    clients = Clients(args.profile, args.region)
    if args.sagemaker_endpoint:
        return invoke_endpoint(args.sagemaker_endpoint, events, clients)
    return invoke_function(args.function, events, clients, progress=Progress(quiet=args.quiet))


def cmd_undeploy(args) -> int:
    import json

    from builder.deploy import undeploy
    from builder.options import UndeployOptions

    result = undeploy(UndeployOptions.from_args(args), Progress(quiet=args.quiet))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def cmd_serve(args) -> int:
    from runtime.serve import serve

    return serve(args.model_dir, args)


def cmd_image(args) -> int:
    from builder.container.images import build_image

    build_image(args.context, engine=args.engine, tag=args.tag, archive=args.archive,
                progress=Progress(quiet=args.quiet))
    return 0


def cmd_bench(args) -> int:
    from builder.tools.bench import bench

    bench(args.model, target=args.target, threads=args.threads, runs=args.runs, cold_runs=args.cold_runs,
          json_path=args.json, plot_path=args.plot, seq_len=args.seq_len, progress=Progress(quiet=args.quiet),
          model_dir=args.model_dir, batch=args.batch, also=tuple(args.also or ()), ort_int8=args.ort_int8)
    return 0


def cmd_tune(args) -> int:
    from builder.tools.tune import tune

    tune(args.model, target=args.target, out=args.out, seq_len=args.seq_len, runs=args.runs, cpu=args.cpu,
         variant=args.variant, weights=args.weights, progress=Progress(quiet=args.quiet))
    return 0


def cmd_inspect(args) -> int:
    from builder.tools.describe import describe

    print(describe(args.target_dir, as_json=args.json))
    return 0


def _base_image(text: str) -> tuple[str, str]:
    from builder.bundle.formats import FORMATS
    from builder.compiler.targets import TARGETS

    key, sep, image = text.partition("=")
    if not sep:
        return "", text
    fmt, _, target = key.partition("/")
    if (target and (fmt not in FORMATS or target not in TARGETS)) or (not target and key not in {*FORMATS, *TARGETS}):
        raise argparse.ArgumentTypeError(f"{key!r} is not a format, a target or FORMAT/TARGET")
    if not image:
        raise argparse.ArgumentTypeError("no image after '='")
    return key, image


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def read_env_file(path: Path) -> list[tuple[str, str]]:
    """KEY=VALUE pairs from an --env-file, in order. The value is the rest of the line as it
    is (docker's --env-file rule); blank lines and lines starting with # are skipped.
    DeployError naming the line for anything else: a value in quotes is refused rather than
    deployed with its quotes."""
    import re

    from builder.errors import DeployError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DeployError(f"cannot read the --env-file: {e.strerror}", where=str(path)) from None
    except UnicodeDecodeError:
        raise DeployError("the --env-file is not UTF-8 text", where=str(path)) from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        where = f"{path}, line {n}"
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            # The line is not echoed: it may hold a secret.
            raise DeployError("expected KEY=VALUE (KEY: letters, digits and _, not starting with a digit)",
                              where=where, hint="fix the line, or start it with # to make it a comment")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            raise DeployError(f"the value of {key} is in quotes, which would become part of it", where=where,
                              hint=f"write {key}=value without quotes: the value is the rest of the line")
        pairs.append((key, value))
    return pairs


def _str_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one length")
    return values


def main(argv=None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except Exception as e:  # the registries failed to import: a broken installation
        if debug:
            raise
        print(_unexpected(e), file=sys.stderr)
        return 70
    from runtime.manifest import ManifestError

    try:
        return {"build": cmd_build, "invoke": cmd_invoke, "deploy": cmd_deploy, "undeploy": cmd_undeploy,
                "inspect": cmd_inspect, "serve": cmd_serve, "image": cmd_image, "bench": cmd_bench,
                "tune": cmd_tune}[args.command](args)
    except EdgebundleError as e:
        if args.debug:
            raise
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except ManifestError as e:  # a model.json of another version, or damaged: the user's to fix
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours (or of a library under us): one readable line, not a trace
        if args.debug:
            raise
        print(_unexpected(e), file=sys.stderr)
        return 70  # EX_SOFTWARE


def _unexpected(e: BaseException) -> str:
    """One readable error for an exception we did not expect: what, the innermost frame, and
    what to do."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "unknown"
    text = str(e).strip()
    return (f"error: unexpected {type(e).__name__}: {text.splitlines()[0] if text else ''}\n"
            f"  where: {where}\n  what to do: this is a bug; rerun with --debug for the traceback and {REPORT}")


if __name__ == "__main__":
    sys.exit(main())
