"""Deploy as data, in three steps like builder/deploy/sagemaker.py:

    read_current(clients, bundle, options)     every Get/List/Head/Describe call: what AWS has now
    desired(bundle, options, sizing, current)  pure: the code, configuration, fingerprint, tags
    diff(current, desired)                     pure: the Plan, one small function per resource

`--dry-run` prints the plan; builder/deploy/executor.py is the only code that carries one
out. Values known only once an action ran (a new version, a new layer's ARN) are Refs the
executor fills in.

Idempotency: every version edgebundle publishes carries, in its description, a fingerprint
of its code and configuration. A deploy whose fingerprint a version already has publishes
nothing: it moves the alias there if needed, and otherwise says there is nothing to do.
"""
from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

from builder.bundle.context import image_name
# Lambda's limits live with the Lambda format (tests patch DIRECT_UPLOAD_LIMIT here).
from builder.bundle.formats.lambda_zip import DIRECT_UPLOAD_LIMIT, MIB, UNZIPPED_LIMIT
from builder.deploy.bundle import Bundle
from builder.deploy.resources import (Action, FileBody, Ref, Registry, default_repository, fingerprint, get, listed,
                                      read_registry, registry_actions, role_arn)
from builder.bundle.sizing import Sizing, size_function
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
# Lambda's reserved variables: set by the service, refused in a function's configuration
# (DeployOptions refuses them).
RESERVED_ENV = {"_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
                "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
                "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
                "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"}


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


@dataclasses.dataclass(frozen=True)
class ZipCode:
    """The zip a deploy sends, as files here: the bundle's, or for --runtime-layer its model
    half beside the runtime half that becomes the layer. Made while reading: its sha256
    names the S3 key and the layer version looked up."""

    path: Path
    sha256: str  # hex
    size: int
    s3_key: str | None = None  # through --s3-bucket; None: sent in the request
    layer: Path | None = None
    layer_sha256: str | None = None
    layer_size: int = 0
    layer_name: str | None = None


@dataclasses.dataclass(frozen=True)
class Current:
    region: str
    account: str | None
    role: str | None  # the --role as an ARN (checked), or None
    function: dict | None  # GetFunction: Configuration, Code, Tags
    code: ZipCode | None = None  # zips
    layer_arn: str | None = None  # --runtime-layer: a layer version already holding this runtime
    s3_object: dict | None = None  # HeadObject of the zip's S3 key
    registry: Registry | None = None  # images
    alias: dict | None = None
    versions: tuple = ()
    url: dict | None = None  # the alias's function URL

    @property
    def config(self) -> dict:
        return (self.function or {}).get("Configuration") or {}


def package_zip(bundle: Bundle, options: DeployOptions) -> ZipCode:
    """The zip to send, split for --runtime-layer, checked against Lambda's limits."""
    path, sha, layer = bundle.path, bundle.sha256, {}
    if options.runtime_layer:
        from builder.deploy.layer import layer_name, split_zip

        split = split_zip(bundle.path, bundle.manifest)
        unzipped = split.layer_unzipped + split.model_unzipped
        if unzipped > UNZIPPED_LIMIT:
            raise DeployError(f"the model and its runtime layer are {unzipped / MIB:.0f} MiB unzipped; Lambda allows "
                              "250 MiB, layers included", where=str(bundle.path),
                              hint="use a Lambda image (--format lambda-image)")
        path, sha = split.model, split.model_sha256
        layer = {"layer": split.layer, "layer_sha256": split.layer_sha256, "layer_size": split.layer.stat().st_size,
                 "layer_name": layer_name(bundle.info["python"], bundle.architecture)}
    size = path.stat().st_size
    key = None
    if options.s3_bucket or size > DIRECT_UPLOAD_LIMIT:
        if not options.s3_bucket:
            raise DeployError(f"{path.name} is {size / MIB:.0f} MiB; Lambda takes zips above 50 MiB only "
                              "from S3", where=str(path),
                              hint="pass --s3-bucket BUCKET (in the function's region); the zip is uploaded "
                                   "there once, under a key named by its sha256")
        key = f"{options.s3_prefix}{image_name(bundle.name)}/{sha}.zip"
    return ZipCode(path, sha, size, key, **layer)


def _refuse(bundle: Bundle, fn: str, function: dict | None, role: str | None) -> None:
    """What the function as it is rules out, before anything else is read."""
    if function is None and role is None:
        raise DeployError(f"function {fn} does not exist yet, and creating it needs an execution role",
                          hint="pass --role ARN_OR_NAME (a role Lambda may assume, with "
                               "AWSLambdaBasicExecutionRole for logs)")
    config = (function or {}).get("Configuration")
    package = (config or {}).get("PackageType", "Zip")
    if config and package != ("Zip" if bundle.kind == "zip" else "Image"):
        raise DeployError(f"function {fn} is a {package} function and this bundle is "
                          f"{'a zip' if bundle.kind == 'zip' else 'an image'}: Lambda cannot change a function's "
                          "package type", where=str(bundle.path),
                          hint="deploy to another --function-name, or delete the function first")


def read_current(clients, bundle: Bundle, options: DeployOptions) -> Current:
    """Every read a Lambda deploy makes, and nothing else."""
    lam = clients("lambda")
    fn = options.function_name
    function = get(lam.get_function, f"reading function {fn}", FunctionName=fn)
    account = None
    if function is None or options.role or bundle.kind == "image":
        ident = get(clients("sts").get_caller_identity, "reading the AWS account (sts:GetCallerIdentity)")
        account = (ident or {}).get("Account")
    role = role_arn(clients, options.role, account)
    _refuse(bundle, fn, function, role)
    code = layer_arn = s3_object = registry = None
    if bundle.kind == "zip":
        code = package_zip(bundle, options)
        if code.layer:
            layer_arn = _layer_version(clients, code.layer_name, code.layer_sha256)
        if code.s3_key:
            # Without s3:ListBucket, S3 answers a missing key with 403: then it is uploaded,
            # which PutObject may allow.
            s3_object = get(clients("s3").head_object, f"checking s3://{options.s3_bucket}/{code.s3_key}",
                            missing=("403", "Forbidden"), Bucket=options.s3_bucket, Key=code.s3_key)
    else:
        registry = read_registry(clients, options.repository or default_repository(bundle.name),
                                 f"{bundle.architecture}-{bundle.sha256[:12]}", account)
    alias = get(lam.get_alias, f"reading alias {fn}:{options.alias}", FunctionName=fn, Name=options.alias) \
        if function else None
    versions = listed(lam.list_versions_by_function, "Versions", f"listing versions of {fn}",
                      FunctionName=fn) if function else []
    url = get(lam.get_function_url_config, f"reading the function URL of {fn}:{options.alias}", FunctionName=fn,
              Qualifier=options.alias) if alias is not None else None
    return Current(clients.region_name, account, role, function, code, layer_arn, s3_object, registry, alias,
                   tuple(versions), url)


def _layer_version(clients, name: str, sha256: str) -> str | None:
    """The ARN of a version of layer `name` whose description names this content."""
    versions = listed(clients("lambda").list_layer_versions, "LayerVersions", f"listing versions of layer {name}",
                      LayerName=name)
    return next((v["LayerVersionArn"] for v in versions if f"sha256:{sha256}" in (v.get("Description") or "")),
                None)


# -- 2. what should be there -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Desired:
    bundle: Bundle
    sizing: Sizing
    function: str
    alias: str
    code: dict  # CreateFunction's Code
    code_identity: str  # what the function runs: Lambda's CodeSha256 (zips) or the image URI
    where: str  # the code, for the plan
    config: dict  # the configuration parameters
    kept_layers: list  # layers the user attached, kept after ours
    fingerprint: str
    tags: dict
    s3_bucket: str | None
    function_url: str | None  # None, "AWS_IAM" or "NONE"

    @property
    def tag(self) -> str:
        return f"{FINGERPRINT_TAG}{self.fingerprint[:16]}"


def _environment(sizing: Sizing, options: DeployOptions, current: dict | None) -> dict:
    """The function's variables: what is there already (nothing lost), then ours."""
    env = dict(((current or {}).get("Environment") or {}).get("Variables") or {})
    env["TVM_NUM_THREADS"] = str(sizing.threads)
    env.update(dict(options.environment))
    return env


def desired(bundle: Bundle, options: DeployOptions, sizing: Sizing, current: Current) -> Desired:
    """The function as it should be; no AWS call."""
    now = current.config
    if bundle.kind == "zip":
        zc = current.code
        code = ({"S3Bucket": options.s3_bucket, "S3Key": zc.s3_key} if zc.s3_key
                else {"ZipFile": FileBody(zc.path)})
        code_identity, where = lambda_sha256(zc.sha256), f"zip {zc.sha256[:12]}"
    else:
        code = {"ImageUri": current.registry.image}
        code_identity = current.registry.image
        where = f"image {code_identity}"
    config = {"MemorySize": sizing.memory_mb, "Timeout": sizing.timeout_s,
              "Environment": {"Variables": _environment(sizing, options, now)},
              "Description": f"{bundle.name} ({bundle.manifest.model.task}) by edgebundle {EDGEBUNDLE_VERSION}"}
    if current.role:
        config["Role"] = current.role
    theirs: list = []
    ours: list = []
    if bundle.kind == "zip":
        if current.code.layer:
            ours = [current.layer_arn or Ref("layer_arn")]
        # Layers the user attached (extensions: Insights, ADOT, ...) stay, after ours.
        theirs = [layer["Arn"] for layer in now.get("Layers") or [] if ":layer:edgebundle-runtime-" not in layer["Arn"]]
        snapstart = options.snapstart
        if snapstart is None:  # not asked either way: what the function has
            snapstart = (now.get("SnapStart") or {}).get("ApplyOn") == "PublishedVersions"
        config.update({"Runtime": bundle.runtime, "Handler": bundle.info["handler"], "Layers": ours + theirs,
                       "SnapStart": {"ApplyOn": "PublishedVersions" if snapstart else "None"}})
    identity = {k: v for k, v in config.items() if k not in ("Role", "Description", "Layers")}
    # Every variable the version will have (ours, the user's and those already there) is in
    # identity["Environment"]: a deploy that keeps them all is the same configuration. Our
    # layer counts by its content: its ARN is not known before it is published.
    identity.update({"Role": current.role or now.get("Role"), "Architectures": [bundle.architecture],
                     "Layers": ([current.code.layer_sha256] if ours else []) + theirs})
    fp = fingerprint(code_identity, identity)
    # What undeploy goes by (the edgebundle:model tag) and which deploy the alias serves.
    tags = {"edgebundle:model": bundle.name[:256], "edgebundle:fingerprint": fp[:16],
            "edgebundle:version": EDGEBUNDLE_VERSION}
    return Desired(bundle, sizing, options.function_name, options.alias, code, code_identity, where, config, theirs,
                   fp, tags, options.s3_bucket, options.function_url)


# -- 3. the difference ---------------------------------------------------------------------------

def _matching_version(cur: Current, want: Desired) -> str | None:
    """The newest version already published with this fingerprint. Only Active ones: one whose
    SnapStart snapshot failed (or still Pending after an interrupted deploy) carries the
    fingerprint too, and must not be pointed at."""
    matching = [v["Version"] for v in cur.versions
                if v.get("Version") != "$LATEST" and want.tag in (v.get("Description") or "")
                and v.get("State", "Active") == "Active"]
    return matching[-1] if matching else None


def _plan_layer(cur: Current, want: Desired, plan: Plan, publish: bool) -> None:
    zc = cur.code
    if zc is None or zc.layer is None:
        return
    plan.notes.append(f"runtime layer {zc.layer.name}: {zc.layer_size / MIB:.1f} MiB zipped; "
                      f"model zip {zc.path.name}: {zc.size / MIB:.1f} MiB zipped")
    if cur.layer_arn:
        plan.notes.append(f"layer {zc.layer_name} version {cur.layer_arn.rsplit(':', 1)[-1]} already holds this "
                          f"runtime (sha256 {zc.layer_sha256[:12]}): attached, not published again")
    elif publish:
        b = want.bundle
        plan.actions.append(Action("publish_layer", f"publish layer {zc.layer_name} from {zc.layer.name} "
                                   f"({zc.layer_size / MIB:.1f} MiB, sha256 {zc.layer_sha256[:12]})",
                                   {"LayerName": zc.layer_name, "Description": f"edgebundle {EDGEBUNDLE_VERSION} "
                                    f"runtime sha256:{zc.layer_sha256}", "Content": {"ZipFile": FileBody(zc.layer)},
                                    "CompatibleRuntimes": [b.runtime], "CompatibleArchitectures": [b.architecture],
                                    "LicenseInfo": "Apache-2.0"}, produces="layer_arn"))


def _plan_upload(cur: Current, want: Desired, plan: Plan, publish: bool) -> None:
    zc = cur.code
    if zc is None or zc.s3_key is None:
        return
    where = f"s3://{want.s3_bucket}/{zc.s3_key}"
    if cur.s3_object is not None and cur.s3_object.get("ContentLength") == zc.size:
        plan.notes.append(f"{where} already holds this zip: not uploaded again")
    elif publish:
        plan.actions.append(Action("upload", f"upload {zc.path.name} ({zc.size / MIB:.1f} MiB) to {where}",
                                   {"Bucket": want.s3_bucket, "Key": zc.s3_key, "path": zc.path}))


def _plan_image(cur: Current, want: Desired, plan: Plan, publish: bool) -> None:
    if cur.registry is not None:
        plan.actions += registry_actions(cur.registry, want.bundle, plan.notes, needed=publish)


def _plan_function(cur: Current, want: Desired, plan: Plan) -> None:
    """Create the function, or update its code and configuration, for a version to publish."""
    b, fn, now = want.bundle, want.function, cur.config
    if cur.function is None:
        plan.actions.append(Action("create_function", f"create function {fn}: " + _describe(b, want.config, want.where),
                                   {"FunctionName": fn, "Code": want.code, "Architectures": [b.architecture],
                                    "PackageType": "Zip" if b.kind == "zip" else "Image", "Publish": False,
                                    "Tags": want.tags, **want.config}))
        return
    code_now = now.get("CodeSha256") if b.kind == "zip" else (cur.function.get("Code") or {}).get("ImageUri")
    arch_now = now.get("Architectures") or ["x86_64"]
    if code_now != want.code_identity or arch_now != [b.architecture]:
        plan.actions.append(Action("update_code", f"update code of {fn}: {want.where}, {b.architecture}"
                                   + (f" (was {arch_now[0]})" if arch_now != [b.architecture] else ""),
                                   {"FunctionName": fn, "Architectures": [b.architecture], **want.code}))
    changed = _config_changes(want.config, now)
    if changed:
        plan.actions.append(Action("update_configuration", f"update configuration of {fn}: " + ", ".join(changed),
                                   {"FunctionName": fn, **want.config}))


def _plan_version(want: Desired, plan: Plan) -> Ref:
    b = want.bundle
    plan.actions.append(Action("publish_version", f"publish a version of {want.function} ({want.tag})",
                               {"FunctionName": want.function,
                                "Description": f"{want.tag} {b.name} {b.kind} {b.sha256[:12]}",
                                **({"CodeSha256": want.code_identity} if b.kind == "zip" else {})},
                               produces="version"))
    return Ref("version")


def _plan_alias(cur: Current, want: Desired, plan: Plan, version: str | Ref) -> None:
    fn, name = want.function, want.alias
    if cur.alias is None:
        plan.actions.append(Action("create_alias", f"create alias {name} -> version {version}",
                                   {"FunctionName": fn, "Name": name, "FunctionVersion": version,
                                    "Description": "edgebundle deploy"}))
    elif cur.alias["FunctionVersion"] != version:
        plan.actions.append(Action("update_alias", f"point alias {name} at version {version} "
                                                   f"(was {cur.alias['FunctionVersion']})",
                                   {"FunctionName": fn, "Name": name, "FunctionVersion": version}))


def _plan_url(cur: Current, want: Desired, plan: Plan) -> None:
    """The alias's function URL: created or re-authed when asked; an existing one is kept."""
    now, auth, qualified = cur.url, want.function_url, f"{want.function}:{want.alias}"
    if auth is None:
        if now:
            plan.notes.append(f"function URL {now['FunctionUrl']} (auth {now['AuthType']}) kept as it is")
        return
    target = {"FunctionName": want.function, "Qualifier": want.alias}
    if now is None:
        plan.actions.append(Action("create_url", f"create a function URL for {qualified} (auth {auth})",
                                   {**target, "AuthType": auth}, produces="url"))
    elif now["AuthType"] != auth:
        plan.actions.append(Action("update_url", f"change the function URL's auth of {qualified} from "
                                                 f"{now['AuthType']} to {auth}", {**target, "AuthType": auth},
                                   produces="url"))
    else:
        plan.notes.append(f"function URL {now['FunctionUrl']} (auth {auth}) already there")
    if auth != "NONE" and now is not None and now["AuthType"] == "NONE":
        for sid, action, _ in PUBLIC_URL_STATEMENTS:
            plan.actions.append(Action("remove_permission", f"withdraw the public grant {action} of {qualified}",
                                       {**target, "StatementId": sid}))
    if auth == "NONE" and (now is None or now["AuthType"] != auth):
        for sid, action, condition in PUBLIC_URL_STATEMENTS:
            plan.actions.append(Action("add_permission", f"allow anyone to call {qualified} through its URL "
                                                         f"({action} for principal *)",
                                       {**target, "StatementId": sid, "Action": action, "Principal": "*",
                                        **condition}))


def _plan_tags(cur: Current, want: Desired, plan: Plan) -> None:
    if cur.function is not None and {k: (cur.function.get("Tags") or {}).get(k) for k in want.tags} != want.tags:
        plan.actions.append(Action("tag_function", f"tag {want.function} with fingerprint {want.fingerprint[:16]}",
                                   {"Resource": cur.config["FunctionArn"], "Tags": want.tags}))


def diff(cur: Current, want: Desired) -> Plan:
    plan = Plan(want.function, want.alias, cur.region, want.bundle, want.sizing, want.fingerprint,
                alias_version=(cur.alias or {}).get("FunctionVersion"))
    # A version with this fingerprint has the code already: nothing of it goes anywhere.
    version: str | Ref | None = _matching_version(cur, want)
    _plan_layer(cur, want, plan, publish=version is None)
    _plan_upload(cur, want, plan, publish=version is None)
    _plan_image(cur, want, plan, publish=version is None)
    if want.kept_layers:
        plan.notes.append(f"{len(want.kept_layers)} layer(s) already on {want.function} kept: "
                          + ", ".join(want.kept_layers))
    if version is None:
        _plan_function(cur, want, plan)
        version = _plan_version(want, plan)
    else:
        plan.notes.append(f"version {version} already holds this bundle and configuration: nothing is published")
    _plan_alias(cur, want, plan, version)
    _plan_url(cur, want, plan)
    _plan_tags(cur, want, plan)
    return plan


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


def _check_bundle(bundle: Bundle, options: DeployOptions) -> None:
    """Options this bundle cannot take (the options alone are checked by DeployOptions)."""
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


def make_plan(bundle: Bundle, options: DeployOptions, clients) -> Plan:
    """Read what AWS has (Get/List/Describe/Head calls only) and say what must change."""
    _check_bundle(bundle, options)
    sizing = size_function(bundle.manifest, bundle.latency, options.memory_mb, options.timeout_s)
    current = read_current(clients, bundle, options)
    return diff(current, desired(bundle, options, sizing, current))


def describe_result(plan: Plan, values: dict) -> dict:
    """What deploy prints and returns."""
    version = values.get("version") or next(
        (a.params["FunctionVersion"] for a in plan.actions if a.op in ("create_alias", "update_alias")), None) \
        or plan.alias_version
    if isinstance(version, Ref):  # a dry run: the version is published only when the plan runs
        version = None
    return {"function": plan.function, "alias": plan.alias, "version": version, "region": plan.region,
            "fingerprint": plan.fingerprint, "changed": plan.changes, **({"url": values["url"]} if "url" in values
                                                                       else {}),
            **({"layer": values["layer_arn"]} if "layer_arn" in values else {}),
            "bundle": str(plan.bundle.path)}
