"""Deploy as data: the desired function (from the bundle and the options) against what AWS
has now (read-only calls) gives a Plan, a list of Actions. `--dry-run` prints the plan;
builder/deploy/executor.py is the only code that carries one out. Values known only once
an action ran (a new version, a new layer's ARN) are Refs the executor fills in.

Idempotency: every version edgebundle publishes carries, in its description, a fingerprint
of its code and configuration. A deploy whose fingerprint a version already has publishes
nothing: it moves the alias there if needed, and otherwise says there is nothing to do.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from pathlib import Path

from builder.bundle.context import image_name
# Lambda's limits live with the Lambda format (tests patch DIRECT_UPLOAD_LIMIT here).
from builder.bundle.formats.lambda_zip import DIRECT_UPLOAD_LIMIT, MIB, UNZIPPED_LIMIT
from builder.deploy import aws
from builder.deploy.bundle import Bundle
from builder.bundle.sizing import Sizing, check_memory, check_timeout, size_function
from builder.errors import DeployError
from builder.options import DeployOptions
from builder.versions import EDGEBUNDLE_VERSION

FINGERPRINT_TAG = "edgebundle-fp:"
# A public (NONE) URL needs both grants since October 2025: the URL action, and
# InvokeFunction through the URL.
PUBLIC_URL_STATEMENTS = (("edgebundle-public-function-url", "lambda:InvokeFunctionUrl",
                          {"FunctionUrlAuthType": "NONE"}),
                         ("edgebundle-public-function-url-invoke", "lambda:InvokeFunction",
                          {"InvokedViaFunctionUrl": True}))
SNAPSTART_PYTHONS = ("3.12", "3.13", "3.14")
# Lambda's reserved variables: set by the service, refused in a function's configuration.
RESERVED_ENV = {"_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
                "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
                "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
                "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"}


@dataclasses.dataclass(frozen=True)
class Ref:
    """A value the executor learns while it runs (a version number, a layer version ARN)."""

    key: str

    def __str__(self) -> str:
        return f"<new {self.key.replace('_', ' ')}>"


@dataclasses.dataclass(frozen=True)
class FileBody:
    """A file's bytes as an API parameter, read only when the executor sends it."""

    path: Path

    def __str__(self) -> str:
        return f"<{self.path.name}: {self.path.stat().st_size / MIB:.1f} MiB>"


@dataclasses.dataclass(frozen=True)
class Action:
    op: str  # what the executor does: an entry of Executor.OPS
    summary: str  # one line for the plan
    params: dict = dataclasses.field(default_factory=dict)
    produces: str | None = None  # the Ref key this action's result fills

    def render(self) -> str:
        return self.summary


@dataclasses.dataclass
class Plan:
    function: str
    alias: str
    region: str
    bundle: Bundle
    sizing: Sizing
    fingerprint: str
    actions: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    alias_version: str | None = None  # where the alias points now

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    def render(self) -> str:
        b = self.bundle
        head = (f"Plan: {b.kind} bundle of {b.name} ({b.architecture}, {b.runtime}) -> function {self.function} "
                f"in {self.region}, alias {self.alias}"
                + (f" (now at version {self.alias_version})" if self.alias_version else ""))
        lines = [head, f"  sizing: {self.sizing.memory_mb} MB, {self.sizing.timeout_s} s, TVM_NUM_THREADS="
                       f"{self.sizing.threads} ({self.sizing.why})", f"  fingerprint: {self.fingerprint[:16]}"]
        lines += [f"  = {note}" for note in self.notes]
        lines += [f"  + {a.render()}" for a in self.actions]
        if not self.actions:
            lines.append(f"  nothing to do: {self.function}:{self.alias} already runs this bundle and configuration"
                         + (f" (version {self.alias_version})" if self.alias_version else ""))
        return "\n".join(lines)


def lambda_sha256(hex_digest: str) -> str:
    """Lambda's CodeSha256: the base64 of the zip's sha256."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def role_arn(clients, role: str | None, account: str | None, service: str = "lambda") -> str | None:
    """The role as an ARN, checked to exist where we may look (iam:GetRole); a name is
    resolved in the caller's account. `service` assumes it (for the hint)."""
    if not role:
        return None
    name = role.rsplit("/", 1)[-1] if role.startswith("arn:") else role
    if role.startswith("arn:") and not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", role):
        raise DeployError(f"--role {role!r} is not an IAM role ARN", hint="pass arn:aws:iam::ACCOUNT:role/NAME "
                                                                        "or the role's name")
    try:
        found = clients("iam").get_role(RoleName=name)["Role"]["Arn"]
    except Exception as e:  # noqa: BLE001 - only a definite "no such role" is an error here
        if aws.is_not_found(e):
            policy = {"lambda": "AWSLambdaBasicExecutionRole",
                      "sagemaker": "AmazonSageMakerFullAccess (or ECR pull and CloudWatch Logs rights)"}[service]
            raise DeployError(f"the IAM role {name!r} does not exist", where=role,
                              hint=f"create it with a trust policy for {service}.amazonaws.com and the "
                                   f"{policy} policy, or pass an existing one") from None
        if role.startswith("arn:"):
            return role  # no iam:GetRole permission: Lambda itself will check it
        if account:
            return f"arn:aws:iam::{account}:role/{name}"
        raise aws.translate(e, f"looking up IAM role {name}") from None
    return found


def get(fn, what: str, missing: tuple = (), **params):
    """A read: the response, or None when the resource does not exist (or the error code
    is one of `missing`)."""
    try:
        return fn(**params)
    except Exception as e:  # noqa: BLE001 - translated below
        if aws.is_not_found(e) or aws.error_code(e) in missing:
            return None
        raise aws.translate(e, what) from e


def listed(fn, key: str, what: str, **params) -> list[dict]:
    """Every item under `key` of a Marker/NextMarker listing; [] when the resource is missing."""
    out, marker = [], None
    while True:
        page = get(fn, what, **params, **({"Marker": marker} if marker else {}))
        out += (page or {}).get(key, [])
        marker = (page or {}).get("NextMarker")
        if not marker:
            return out


def _environment(sizing: Sizing, options: DeployOptions, current: dict | None) -> dict:
    """The function's variables: what is there already (nothing lost), then ours."""
    env = dict(((current or {}).get("Environment") or {}).get("Variables") or {})
    env["TVM_NUM_THREADS"] = str(sizing.threads)
    env.update(dict(options.environment))
    return env


def _check_options(bundle: Bundle, options: DeployOptions) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", options.function_name):
        raise DeployError(f"function name {options.function_name!r}: Lambda allows 1-64 letters, digits, - and _",
                          hint="pass another --function-name")
    if not re.fullmatch(r"(?!^[0-9]+$)[A-Za-z0-9_-]{1,128}", options.alias):
        raise DeployError(f"alias {options.alias!r}: 1-128 letters, digits, - and _, not only digits",
                          hint="pass another --alias")
    if options.memory_mb is not None:
        check_memory(options.memory_mb)
    if options.timeout_s is not None:
        check_timeout(options.timeout_s)
    if options.snapstart:
        if bundle.kind == "image":
            raise DeployError("SnapStart does not support container images", where=str(bundle.path),
                              hint="deploy the zip (--format lambda) for SnapStart, or drop --snapstart")
        if bundle.info.get("python") not in SNAPSTART_PYTHONS:
            raise DeployError(f"SnapStart for Python needs python3.12 or newer; this bundle is {bundle.runtime}",
                              hint="rebuild with --python 3.12 or newer")
    if options.runtime_layer and bundle.kind == "image":
        raise DeployError("--runtime-layer applies to zips: an image carries its runtime in its own layers",
                          where=str(bundle.path), hint="drop --runtime-layer")
    for key, _ in options.environment:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]+", key) or key in RESERVED_ENV:
            raise DeployError(f"environment variable {key!r}: names are a letter then letters, digits and _, and "
                              "AWS_REGION, LAMBDA_TASK_ROOT and the like are reserved by Lambda", hint="rename it")


def fingerprint(code: str, config: dict) -> str:
    return hashlib.sha256(json.dumps({"code": code, "config": config}, sort_keys=True, default=str).encode()
                          ).hexdigest()


def make_plan(bundle: Bundle, options: DeployOptions, clients) -> Plan:
    """Read what AWS has (Get/List/Describe/Head calls only) and say what must change."""
    _check_options(bundle, options)
    lam = clients("lambda")
    fn = options.function_name
    sizing = size_function(bundle.manifest, bundle.latency, options.memory_mb, options.timeout_s)
    current = get(lam.get_function, f"reading function {fn}", FunctionName=fn)
    config_now = (current or {}).get("Configuration")
    account = None
    if current is None or options.role or bundle.kind == "image":
        ident = get(clients("sts").get_caller_identity, "reading the AWS account (sts:GetCallerIdentity)")
        account = (ident or {}).get("Account")
    role = role_arn(clients, options.role, account)
    if current is None and role is None:
        raise DeployError(f"function {fn} does not exist yet, and creating it needs an execution role",
                          hint="pass --role ARN_OR_NAME (a role Lambda may assume, with "
                               "AWSLambdaBasicExecutionRole for logs)")
    package = "Zip" if bundle.kind == "zip" else "Image"
    if config_now and config_now.get("PackageType", "Zip") != package:
        raise DeployError(f"function {fn} is a {config_now.get('PackageType', 'Zip')} function and this bundle is "
                          f"{'a zip' if package == 'Zip' else 'an image'}: Lambda cannot change a function's "
                          "package type", where=str(bundle.path),
                          hint="deploy to another --function-name, or delete the function first")
    plan = Plan(fn, options.alias, clients.region_name, bundle, sizing, "")
    actions: list[Action] = []

    # -- the code ------------------------------------------------------------------------
    layers: list = []
    layer_identity = None
    if bundle.kind == "zip":
        zip_path, code_sha = bundle.path, bundle.sha256
        if options.runtime_layer:
            from builder.deploy.layer import layer_name, split_zip

            split = split_zip(bundle.path, bundle.manifest)
            if split.layer_unzipped + split.model_unzipped > UNZIPPED_LIMIT:
                raise DeployError(f"the model and its runtime layer are {(split.layer_unzipped + split.model_unzipped) / MIB:.0f}"
                                  " MiB unzipped; Lambda allows 250 MiB, layers included", where=str(bundle.path),
                                  hint="use a Lambda image (--format lambda-image)")
            zip_path, code_sha = split.model, split.model_sha256
            name = layer_name(bundle.info["python"], bundle.architecture)
            layer_identity = split.layer_sha256
            existing = _layer_version(clients, name, split.layer_sha256)
            plan.notes.append(f"runtime layer {split.layer.name}: {split.layer.stat().st_size / MIB:.1f} MiB zipped; "
                              f"model zip {split.model.name}: {split.model.stat().st_size / MIB:.1f} MiB zipped")
            if existing:
                plan.notes.append(f"layer {name} version {existing.rsplit(':', 1)[-1]} already holds this runtime "
                                  f"(sha256 {split.layer_sha256[:12]}): attached, not published again")
                layers.append(existing)
            else:
                actions.append(Action("publish_layer", f"publish layer {name} from {split.layer.name} "
                                      f"({split.layer.stat().st_size / MIB:.1f} MiB, sha256 {split.layer_sha256[:12]})",
                                      {"LayerName": name, "Description": f"edgebundle {EDGEBUNDLE_VERSION} runtime "
                                       f"sha256:{split.layer_sha256}", "Content": {"ZipFile": FileBody(split.layer)},
                                       "CompatibleRuntimes": [bundle.runtime],
                                       "CompatibleArchitectures": [bundle.architecture],
                                       "LicenseInfo": "Apache-2.0"}, produces="layer_arn"))
                layers.append(Ref("layer_arn"))
        size = zip_path.stat().st_size
        if options.s3_bucket or size > DIRECT_UPLOAD_LIMIT:
            if not options.s3_bucket:
                raise DeployError(f"{zip_path.name} is {size / MIB:.0f} MiB; Lambda takes zips above 50 MiB only "
                                  "from S3", where=str(zip_path),
                                  hint="pass --s3-bucket BUCKET (in the function's region); the zip is uploaded "
                                       "there once, under a key named by its sha256")
            key = f"{options.s3_prefix}{image_name(bundle.name)}/{code_sha}.zip"
            # Without s3:ListBucket, S3 answers a missing key with 403: then it is uploaded,
            # which PutObject may allow.
            head = get(clients("s3").head_object, f"checking s3://{options.s3_bucket}/{key}",
                        missing=("403", "Forbidden"), Bucket=options.s3_bucket, Key=key)
            if head is not None and head.get("ContentLength") == size:
                plan.notes.append(f"s3://{options.s3_bucket}/{key} already holds this zip: not uploaded again")
            else:
                actions.append(Action("upload", f"upload {zip_path.name} ({size / MIB:.1f} MiB) to "
                                      f"s3://{options.s3_bucket}/{key}",
                                      {"Bucket": options.s3_bucket, "Key": key, "path": zip_path}))
            code = {"S3Bucket": options.s3_bucket, "S3Key": key}
        else:
            code = {"ZipFile": FileBody(zip_path)}
        code_identity = lambda_sha256(code_sha)
    else:
        repo = options.repository or default_repository(bundle.name)
        image_uri, pushes = ecr_image(clients, repo, f"{bundle.architecture}-{bundle.sha256[:12]}", bundle,
                                      account, plan.notes)
        actions += pushes
        code = {"ImageUri": image_uri}
        code_identity = code["ImageUri"]

    # -- the configuration ----------------------------------------------------------------------
    config = {"MemorySize": sizing.memory_mb, "Timeout": sizing.timeout_s,
              "Environment": {"Variables": _environment(sizing, options, config_now)},
              "Description": f"{bundle.name} ({bundle.manifest.model.task}) by edgebundle {EDGEBUNDLE_VERSION}"}
    if role:
        config["Role"] = role
    if bundle.kind == "zip":
        # Layers the user attached (extensions: Insights, ADOT, ...) stay, after ours.
        theirs = [layer["Arn"] for layer in (config_now or {}).get("Layers") or []
                  if ":layer:edgebundle-runtime-" not in layer["Arn"]]
        if theirs:
            plan.notes.append(f"{len(theirs)} layer(s) already on {fn} kept: " + ", ".join(theirs))
        snapstart = options.snapstart
        if snapstart is None:  # not asked either way: what the function has
            snapstart = ((config_now or {}).get("SnapStart") or {}).get("ApplyOn") == "PublishedVersions"
        config.update({"Runtime": bundle.runtime, "Handler": bundle.info["handler"], "Layers": layers + theirs,
                       "SnapStart": {"ApplyOn": "PublishedVersions" if snapstart else "None"}})
    identity = {k: v for k, v in config.items() if k not in ("Role", "Description", "Layers")}
    # Every variable the version will have (ours, the user's and those already there) is in
    # identity["Environment"]: a deploy that keeps them all is the same configuration.
    identity.update({"Role": role or (config_now or {}).get("Role"), "Architectures": [bundle.architecture],
                     "Layers": ([layer_identity] if layer_identity else []) + config.get("Layers", [])[len(layers):]})
    plan.fingerprint = fingerprint(code_identity, identity)
    tag = f"{FINGERPRINT_TAG}{plan.fingerprint[:16]}"
    # What undeploy goes by (the edgebundle:model tag) and which deploy the alias serves.
    tags = {"edgebundle:model": bundle.name[:256], "edgebundle:fingerprint": plan.fingerprint[:16],
            "edgebundle:version": EDGEBUNDLE_VERSION}
    version_description = f"{tag} {bundle.name} {bundle.kind} {bundle.sha256[:12]}"

    alias = get(lam.get_alias, f"reading alias {fn}:{options.alias}", FunctionName=fn, Name=options.alias) \
        if current else None
    plan.alias_version = (alias or {}).get("FunctionVersion")
    # Only Active versions: one whose SnapStart snapshot failed (or still Pending after an
    # interrupted deploy) carries the fingerprint too, and must not be pointed at.
    versions = listed(lam.list_versions_by_function, "Versions", f"listing versions of {fn}",
                       FunctionName=fn) if current else []
    matching = [v["Version"] for v in versions
                if v.get("Version") != "$LATEST" and tag in (v.get("Description") or "")
                and v.get("State", "Active") == "Active"]
    version: str | Ref
    if matching:
        version = matching[-1]
        # Nothing of the code needs to go anywhere: the version already has it.
        actions = [a for a in actions if a.op not in ("upload", "push_image", "publish_layer", "create_repository")]
        plan.notes.append(f"version {version} already holds this bundle and configuration: nothing is published")
    else:
        version = Ref("version")
        where = f"{bundle.kind} {code_identity if bundle.kind == 'image' else code_sha[:12]}"
        if current is None:
            params = {"FunctionName": fn, "Code": code, "Architectures": [bundle.architecture],
                      "PackageType": package, "Publish": False,
                      "Tags": tags, **config}
            actions.append(Action("create_function", f"create function {fn}: " + _describe(bundle, config, where),
                                  params))
        else:
            code_now = (config_now.get("CodeSha256") if bundle.kind == "zip"
                        else (current.get("Code") or {}).get("ImageUri"))
            arch_now = config_now.get("Architectures") or ["x86_64"]
            if code_now != code_identity or arch_now != [bundle.architecture]:
                actions.append(Action("update_code", f"update code of {fn}: {where}, {bundle.architecture}"
                                      + (f" (was {arch_now[0]})" if arch_now != [bundle.architecture] else ""),
                                      {"FunctionName": fn, "Architectures": [bundle.architecture], **code}))
            changed = _config_changes(config, config_now)
            if changed:
                actions.append(Action("update_configuration", f"update configuration of {fn}: "
                                      + ", ".join(changed), {"FunctionName": fn, **config}))
        actions.append(Action("publish_version", f"publish a version of {fn} ({tag})",
                              {"FunctionName": fn, "Description": version_description,
                               **({"CodeSha256": code_identity} if bundle.kind == "zip" else {})},
                              produces="version"))
    if alias is None:
        actions.append(Action("create_alias", f"create alias {options.alias} -> version {version}",
                              {"FunctionName": fn, "Name": options.alias, "FunctionVersion": version,
                               "Description": "edgebundle deploy"}))
    elif alias["FunctionVersion"] != version:
        actions.append(Action("update_alias", f"point alias {options.alias} at version {version} "
                                              f"(was {alias['FunctionVersion']})",
                              {"FunctionName": fn, "Name": options.alias, "FunctionVersion": version}))
    actions += _url_actions(lam, fn, options, exists=alias is not None, plan=plan)
    if current is not None and {k: (current.get("Tags") or {}).get(k) for k in tags} != tags:
        actions.append(Action("tag_function", f"tag {fn} with fingerprint {plan.fingerprint[:16]}",
                              {"Resource": config_now["FunctionArn"], "Tags": tags}))
    plan.actions = actions
    return plan


def default_repository(model_name: str) -> str:
    return f"edgebundle/{image_name(model_name)}"


def ecr_image(clients, repo: str, tag: str, bundle, account: str | None, notes: list) -> tuple[str, list[Action]]:
    """The image's URI in ECR, and what puts it there: the repository when missing, the
    push when no image has this content tag (never pushed twice)."""
    ecr = clients("ecr")
    actions = []
    found = get(ecr.describe_repositories, f"reading ECR repository {repo}", repositoryNames=[repo])
    if found:
        uri = found["repositories"][0]["repositoryUri"]
        image = get(ecr.describe_images, f"reading image {repo}:{tag}", repositoryName=repo,
                     imageIds=[{"imageTag": tag}])
    else:
        registry = f"{account or '<account>'}.dkr.ecr.{clients.region_name}.amazonaws.com"
        uri, image = f"{registry}/{repo}", None
        actions.append(Action("create_repository", f"create ECR repository {repo} (scan on push)",
                              {"repositoryName": repo, "imageScanningConfiguration": {"scanOnPush": True},
                               "imageTagMutability": "MUTABLE"}))
    if image and image.get("imageDetails"):
        notes.append(f"{uri}:{tag} is already in ECR: not pushed again")
    else:
        actions.append(Action("push_image", f"push {bundle.path.name} ({bundle.size / MIB:.0f} MiB) to {uri}:{tag}",
                              {"archive": bundle.path, "repository": repo, "tag": tag,
                               "platform": bundle.image.get("platform")}))
    return f"{uri}:{tag}", actions


def _describe(bundle: Bundle, config: dict, where: str) -> str:
    parts = [bundle.runtime if bundle.kind == "zip" else "image", bundle.architecture, where,
             f"{config['MemorySize']} MB", f"{config['Timeout']} s"]
    if config.get("SnapStart", {}).get("ApplyOn") == "PublishedVersions":
        parts.append("SnapStart")
    if config.get("Layers"):
        parts.append(f"{len(config['Layers'])} layer")
    return ", ".join(parts)


def _config_changes(want: dict, now: dict) -> list[str]:
    changed = []
    for key in ("Runtime", "Handler", "MemorySize", "Timeout", "Role", "Description"):
        if key in want and want[key] != now.get(key):
            changed.append(f"{key} {now.get(key)} -> {want[key]}")
    env_now = (now.get("Environment") or {}).get("Variables") or {}
    env_want = want["Environment"]["Variables"]
    diff = sorted(k for k in set(env_now) | set(env_want) if env_now.get(k) != env_want.get(k))
    if diff:
        changed.append("environment " + ", ".join(diff))
    if "Layers" in want:
        layers_now = [layer["Arn"] for layer in now.get("Layers") or []]
        if [str(x) for x in want["Layers"]] != layers_now:
            changed.append(f"layers {len(layers_now)} -> {len(want['Layers'])}")
    if "SnapStart" in want and want["SnapStart"]["ApplyOn"] != (now.get("SnapStart") or {}).get("ApplyOn", "None"):
        changed.append(f"SnapStart {want['SnapStart']['ApplyOn']}")
    return changed


def _layer_version(clients, name: str, sha256: str) -> str | None:
    """The ARN of a version of layer `name` whose description names this content."""
    versions = listed(clients("lambda").list_layer_versions, "LayerVersions", f"listing versions of layer {name}",
                       LayerName=name)
    return next((v["LayerVersionArn"] for v in versions if f"sha256:{sha256}" in (v.get("Description") or "")),
                None)


def _url_actions(lam, fn: str, options: DeployOptions, exists: bool, plan: Plan) -> list[Action]:
    """The alias's function URL: created or re-authed when asked; an existing one is kept."""
    now = get(lam.get_function_url_config, f"reading the function URL of {fn}:{options.alias}", FunctionName=fn,
               Qualifier=options.alias) if exists else None
    if options.function_url is None:
        if now:
            plan.notes.append(f"function URL {now['FunctionUrl']} (auth {now['AuthType']}) kept as it is")
        return []
    auth = options.function_url
    out = []
    if now is None:
        out.append(Action("create_url", f"create a function URL for {fn}:{options.alias} (auth {auth})",
                          {"FunctionName": fn, "Qualifier": options.alias, "AuthType": auth}, produces="url"))
    elif now["AuthType"] != auth:
        out.append(Action("update_url", f"change the function URL's auth of {fn}:{options.alias} from "
                                        f"{now['AuthType']} to {auth}",
                          {"FunctionName": fn, "Qualifier": options.alias, "AuthType": auth}, produces="url"))
    else:
        plan.notes.append(f"function URL {now['FunctionUrl']} (auth {auth}) already there")
    if auth != "NONE" and now is not None and now["AuthType"] == "NONE":
        for sid, action, _ in PUBLIC_URL_STATEMENTS:
            out.append(Action("remove_permission", f"withdraw the public grant {action} of {fn}:{options.alias}",
                              {"FunctionName": fn, "Qualifier": options.alias, "StatementId": sid}))
    if auth == "NONE" and (now is None or now["AuthType"] != auth):
        for sid, action, condition in PUBLIC_URL_STATEMENTS:
            out.append(Action("add_permission", f"allow anyone to call {fn}:{options.alias} through its URL "
                                                f"({action} for principal *)",
                              {"FunctionName": fn, "Qualifier": options.alias, "StatementId": sid,
                               "Action": action, "Principal": "*", **condition}))
    return out
