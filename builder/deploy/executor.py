"""The only code that changes anything on AWS: it carries out a Plan's actions in order
(a Lambda deploy's, a SageMaker endpoint's, an undeploy's), filling in the Refs earlier
actions produce, and waits where Lambda or SageMaker applies a change in the background.
The alias moves last, so a Lambda deploy that fails midway leaves it (and the traffic) on
the version it was on; an endpoint keeps serving its old config until the new one is in
service, and nothing old is deleted before that."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from builder.container.images import loaded_ref
from builder.deploy import aws
from builder.deploy.resources import FileBody, Ref
from builder.errors import DeployError, ToolMissingError
from builder.fsutil import write_private

# Lambda applies creates and updates asynchronously; a big image can take minutes.
WAIT_DELAY_S = 2
WAIT_MAX_ATTEMPTS = 450  # 15 minutes
# SageMaker starts instances, pulls the image and waits for /ping: 5-15 minutes is usual.
ENDPOINT_POLL_S = 15
ENDPOINT_WAIT_S = 3600
# How long an endpoint may still show InService on its old config right after UpdateEndpoint
# before that is taken as SageMaker having rolled back.
ENDPOINT_SETTLE_S = 120


class Pusher:
    """Pushes an OCI archive to ECR with skopeo (the archive as it is), podman or docker
    (loaded, then pushed), authenticated with a token from ecr:GetAuthorizationToken that
    lives only in a private temporary directory, removed after the push: skopeo and podman
    read it as an auth file (--dest-authfile, --authfile), docker as the config.json of a
    temporary DOCKER_CONFIG. Never on a command line, and never in the user's own files:
    `docker login` would leave the token in ~/.docker/config.json (or a credential helper)
    for as long as it is valid."""

    TOOLS = ("skopeo", "podman", "docker")

    def __init__(self, tool: str | None = None):
        self.tool = tool

    def _find(self) -> tuple[str, str]:
        for name in ([self.tool] if self.tool else self.TOOLS):
            path = shutil.which(name)
            if path:
                return name, path
        raise ToolMissingError(
            f"pushing an image needs {self.tool or 'skopeo, podman or docker'}, and none is installed",
            hint="apt install skopeo (or podman), or push the image yourself and deploy its tag")

    def argv(self, tool: str, path: str, archive: Path, ref: str, authfile: Path) -> list:
        if tool == "skopeo":
            return [[path, "copy", "--dest-authfile", str(authfile), "--retry-times", "3",
                     f"oci-archive:{archive}", f"docker://{ref}"]]
        if tool == "podman":
            return [[path, "load", "-q", "-i", str(archive)], ["TAG", ref],
                    [path, "push", "--authfile", str(authfile), ref]]
        # docker: the credentials come from DOCKER_CONFIG (docker_config), no login.
        return [[path, "load", "-q", "-i", str(archive)], ["TAG", ref], [path, "push", ref]]

    @staticmethod
    def docker_config(folder: Path, registry: str, token: str) -> dict:
        """A DOCKER_CONFIG in `folder` holding only the ECR token for `registry`; returns the
        environment for docker. The user's current context (another engine, a remote host)
        still applies: its name is copied and the context store linked from their config
        directory. With an `auths` entry and no credsStore, docker keeps credentials in the
        file and does not reach for a credential helper."""
        import json

        user = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
        config = {"auths": {registry: {"auth": token}}}
        try:
            current = json.loads((user / "config.json").read_text()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            current = None
        if isinstance(current, str) and current:
            config["currentContext"] = current
        if (user / "contexts").is_dir():
            (folder / "contexts").symlink_to(user / "contexts", target_is_directory=True)
        write_private(folder / "config.json", json.dumps(config))
        return {**os.environ, "DOCKER_CONFIG": str(folder)}

    def push(self, archive: Path, ref: str, auth: dict, platform: str | None, progress) -> None:
        import json

        tool, path = self._find()
        registry = ref.split("/", 1)[0]
        # mkdtemp: mode 0700, so nobody else can read the token while it is there.
        with tempfile.TemporaryDirectory(prefix="edgebundle-ecr-") as tmp:
            authfile, env = Path(tmp) / "auth.json", None
            if tool == "docker":
                env = self.docker_config(Path(tmp), registry, auth["authorizationToken"])
            else:
                write_private(authfile, json.dumps({"auths": {registry: {"auth": auth["authorizationToken"]}}}))
            loaded = None
            for cmd in self.argv(tool, path, archive, ref, authfile):
                if cmd[0] == "TAG":  # podman/docker: tag what `load` printed as the ECR reference
                    cmd = [path, "tag", loaded, cmd[1]]
                with progress.step(f"{tool} {cmd[1]}"):
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
                if proc.returncode != 0:
                    raise DeployError(f"{tool} {cmd[1]} failed (exit {proc.returncode}): "
                                      f"{(proc.stderr or proc.stdout).strip()[-800:]}", where=ref,
                                      hint="check the registry is reachable and you may push (ecr:InitiateLayerUpload,"
                                           " ecr:PutImage, ...); rerun with --debug")
                if cmd[1] == "load":
                    loaded = loaded_ref(proc.stdout)
                    if not loaded:
                        raise DeployError(f"{tool} load did not say what it loaded: {proc.stdout.strip()[-300:]}",
                                          where=str(archive), hint="push with --push-tool skopeo")


class Executor:
    # Actions with more to them than one call (waits, pushes, results): a method each.
    OPS = ("push_image", "upload", "publish_layer", "create_function", "update_code", "update_configuration",
           "publish_version", "create_url", "update_url", "create_endpoint", "update_endpoint", "delete_endpoint")
    # Actions that are one API call with the action's parameters, and nothing to wait for.
    CALLS = {"create_repository": ("ecr", "create_repository"),
             "create_alias": ("lambda", "create_alias"),
             "update_alias": ("lambda", "update_alias"),
             "create_model": ("sagemaker", "create_model"),
             "create_endpoint_config": ("sagemaker", "create_endpoint_config"),
             "delete_endpoint_config": ("sagemaker", "delete_endpoint_config"),
             "delete_model": ("sagemaker", "delete_model"),
             "add_tags": ("sagemaker", "add_tags"),
             "tag_function": ("lambda", "tag_resource"),
             "register_scalable_target": ("application-autoscaling", "register_scalable_target"),
             "put_scaling_policy": ("application-autoscaling", "put_scaling_policy"),
             "delete_layer_version": ("lambda", "delete_layer_version")}
    # One call each too, whose failure with this code means it is done already: granted by an
    # earlier deploy (the same statement id), or removed by hand before.
    DONE_UNLESS = {"add_permission": ("lambda", "add_permission", "ResourceConflictException"),
                   "remove_permission": ("lambda", "remove_permission", "ResourceNotFoundException"),
                   "delete_function": ("lambda", "delete_function", "ResourceNotFoundException"),
                   "delete_scaling_policy": ("application-autoscaling", "delete_scaling_policy",
                                             "ObjectNotFoundException"),
                   "deregister_scalable_target": ("application-autoscaling", "deregister_scalable_target",
                                                  "ObjectNotFoundException")}

    def __init__(self, clients, progress, pusher: Pusher | None = None):
        self.clients, self.progress = clients, progress
        self.pusher = pusher or Pusher()
        self.values: dict = {}

    def run(self, plan) -> dict:
        """Carry out the plan; returns what was learnt (version, url, layer_arn)."""
        for action in plan.actions:
            assert action.op in self.OPS or action.op in self.CALLS or action.op in self.DONE_UNLESS, action.op
            with self.progress.step(action.summary):
                params = self._resolve(action.params)
                if action.op in self.CALLS:
                    service, method = self.CALLS[action.op]
                    result = self._call(service, method, action.summary, **params)
                elif action.op in self.DONE_UNLESS:
                    service, method, code = self.DONE_UNLESS[action.op]
                    result = self._call_unless(code, method, action.summary, params, service=service)
                else:
                    result = getattr(self, action.op)(params, action.summary)
            if action.produces:
                self.values[action.produces] = result
        return self.values

    def _resolve(self, value):
        if isinstance(value, Ref):
            return self.values[value.key]
        if isinstance(value, FileBody):
            return value.path.read_bytes()
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        return value

    def _call(self, service: str, method: str, what: str, **params):
        return aws.call(getattr(self.clients(service), method), what, progress=self.progress, **params)

    def _wait(self, waiter: str, what: str, **params) -> None:
        import botocore.exceptions as bx

        lam = self.clients("lambda")
        try:
            lam.get_waiter(waiter).wait(**params, WaiterConfig={"Delay": WAIT_DELAY_S,
                                                                "MaxAttempts": WAIT_MAX_ATTEMPTS})
        except bx.WaiterError as e:
            last = getattr(e, "last_response", None) or {}
            cfg = last.get("Configuration") or last  # GetFunction nests it; GetFunctionConfiguration does not
            reason = "; ".join(str(cfg[k]) for k in ("StateReasonCode", "StateReason", "LastUpdateStatusReasonCode",
                                                     "LastUpdateStatusReason") if cfg.get(k)) or str(e)
            raise DeployError(f"{what}: Lambda did not finish applying it: {reason}", where=params.get("FunctionName"),
                              hint="the alias still points at the previous version; fix the cause and rerun") from None

    # -- actions -------------------------------------------------------------------------
    def push_image(self, p, what):
        repo = self._call("ecr", "describe_repositories", what, repositoryNames=[p["repository"]])
        uri = repo["repositories"][0]["repositoryUri"]
        auth = self._call("ecr", "get_authorization_token", what)["authorizationData"][0]
        self.pusher.push(p["archive"], f"{uri}:{p['tag']}", auth, p.get("platform"), self.progress)

    def upload(self, p, what):
        import boto3.s3.transfer as tr

        try:  # multipart, retried, in parallel parts: 100s of MB are common here
            self.clients("s3").upload_file(str(p["path"]), p["Bucket"], p["Key"],
                                           Config=tr.TransferConfig(multipart_threshold=64 * 2 ** 20))
        except Exception as e:  # noqa: BLE001 - S3 transfer errors wrap the ClientError
            # boto3 raises S3UploadFailedError inside its except block: the ClientError (and
            # its code, which picks the hint) is the context, not the cause.
            raise aws.translate(getattr(e, "last_exception", None) or e.__cause__ or e.__context__ or e,
                                what) from e

    def publish_layer(self, p, what):
        return self._call("lambda", "publish_layer_version", what, **p)["LayerVersionArn"]

    def create_function(self, p, what):
        self._call("lambda", "create_function", what, **p)
        self._wait("function_active_v2", what, FunctionName=p["FunctionName"])

    def update_code(self, p, what):
        self._call("lambda", "update_function_code", what, **p)
        self._wait("function_updated_v2", what, FunctionName=p["FunctionName"])

    def update_configuration(self, p, what):
        self._call("lambda", "update_function_configuration", what, **p)
        self._wait("function_updated_v2", what, FunctionName=p["FunctionName"])

    def publish_version(self, p, what):
        version = self._call("lambda", "publish_version", what, **p)["Version"]
        # SnapStart versions are Pending while Lambda initialises and snapshots them.
        self._wait("published_version_active", what, FunctionName=p["FunctionName"], Qualifier=version)
        return version

    def create_url(self, p, what):
        return self._call("lambda", "create_function_url_config", what, **p)["FunctionUrl"]

    def update_url(self, p, what):
        return self._call("lambda", "update_function_url_config", what, **p)["FunctionUrl"]

    def _call_unless(self, code: str, method: str, what: str, params: dict, service: str = "lambda") -> None:
        """A call whose failure with `code` means it is done already."""
        try:
            self._call(service, method, what, **params)
        except DeployError as e:
            if code not in e.what:
                raise

    # -- SageMaker -------------------------------------------------------------------------
    def _describe_endpoint(self, name: str, what: str) -> dict | None:
        from builder.deploy.resources import get

        return get(self.clients("sagemaker").describe_endpoint, what, EndpointName=name)

    def _endpoint_in_service(self, name: str, config: str, what: str, before=None) -> None:
        """Poll until the endpoint is InService on `config`. A failed create ends Failed, a
        failed update InService on the old config (SageMaker rolls back) or
        UpdateRollbackFailed: each is reported with SageMaker's FailureReason. `before`: the
        endpoint's LastModifiedTime before an update, so that a first read still showing the
        old config (the update not begun) is not taken for a rollback."""
        from builder.deploy.sagemaker import IN_PROGRESS

        deadline = time.monotonic() + ENDPOINT_WAIT_S
        settle = time.monotonic() + ENDPOINT_SETTLE_S
        while True:
            now = self._describe_endpoint(name, what) or {}
            status = now.get("EndpointStatus")
            if status == "InService" and now.get("EndpointConfigName") == config:
                return
            waiting = status in IN_PROGRESS or (status == "InService" and before is not None and
                                                now.get("LastModifiedTime") == before and time.monotonic() < settle)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(ENDPOINT_POLL_S)
        reason = now.get("FailureReason") or (f"still {status} after {ENDPOINT_WAIT_S // 60} minutes" if waiting
                                              else f"status {status}")
        serving = now.get("EndpointConfigName")
        still = (f"it still serves {serving}, as before" if status == "InService" and serving != config
                 else f"it is {status}")
        raise DeployError(f"{what}: SageMaker did not bring {config} into service: {reason}; {still}", where=name,
                          hint=f"read the endpoint's CloudWatch logs (/aws/sagemaker/Endpoints/{name}), fix the cause "
                               "(instance quota, image, health check) and rerun")

    def create_endpoint(self, p, what):
        self._call("sagemaker", "create_endpoint", what, **p)
        self._endpoint_in_service(p["EndpointName"], p["EndpointConfigName"], what)

    def update_endpoint(self, p, what):
        before = (self._describe_endpoint(p["EndpointName"], what) or {}).get("LastModifiedTime")
        self._call("sagemaker", "update_endpoint", what, **p)
        self._endpoint_in_service(p["EndpointName"], p["EndpointConfigName"], what, before=before)

    def delete_endpoint(self, p, what):
        self._call_unless("Could not find", "delete_endpoint", what, p, service="sagemaker")
        deadline = time.monotonic() + ENDPOINT_WAIT_S
        while (now := self._describe_endpoint(p["EndpointName"], what)) is not None:
            if time.monotonic() > deadline:
                raise DeployError(f"{what}: the endpoint is still there ({now.get('EndpointStatus')}) after "
                                  f"{ENDPOINT_WAIT_S // 60} minutes", where=p["EndpointName"],
                                  hint="check it in the SageMaker console and rerun")
            time.sleep(ENDPOINT_POLL_S)
