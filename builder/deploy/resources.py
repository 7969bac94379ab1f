"""What every deploy plan is made of, shared by the Lambda planner (plan.py), the SageMaker
planner (sagemaker.py) and undeploy.py: actions and the values they produce, the read
helpers (a missing resource is None, not an error), the role lookup, the fingerprint, and
the image's place in ECR."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

from builder.bundle.context import image_name
from builder.bundle.formats.lambda_zip import MIB
from builder.deploy import aws
from builder.errors import DeployError


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


def fingerprint(code: str, config: dict) -> str:
    return hashlib.sha256(json.dumps({"code": code, "config": config}, sort_keys=True, default=str).encode()
                          ).hexdigest()


def default_repository(model_name: str) -> str:
    return f"edgebundle/{image_name(model_name)}"


# -- reads, shared with sagemaker.py and undeploy.py ---------------------------------------------

def get(fn, what: str, missing: tuple = (), **params):
    """A read: the response, or None when the resource does not exist (or the error code
    is one of `missing`)."""
    try:
        return fn(**params)
    except Exception as e:  # noqa: BLE001 - translated below
        if aws.is_not_found(e) or aws.error_code(e) in missing:
            return None
        raise aws.translate(e, what) from e


def listed(fn, key: str, what: str, *, paging: tuple = ("Marker", "NextMarker"), **params) -> list[dict]:
    """Every item under `key` of a paged listing; [] when the resource is missing. `paging`:
    (the request's token parameter, the response's): Lambda's Marker/NextMarker, or
    SageMaker's and Application Auto Scaling's NextToken/NextToken."""
    send, receive = paging
    out, token = [], None
    while True:
        page = get(fn, what, **params, **({send: token} if token else {})) or {}
        out += page.get(key, [])
        token = page.get(receive)
        if not token:
            return out


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


@dataclasses.dataclass(frozen=True)
class Registry:
    """What ECR has for one image tag."""

    repository: str
    tag: str
    uri: str  # the repository's URI (the one it will have, when it does not exist yet)
    exists: bool
    pushed: bool  # an image has this tag (tags name content: never pushed twice)

    @property
    def image(self) -> str:
        return f"{self.uri}:{self.tag}"


def read_registry(clients, repo: str, tag: str, account: str | None) -> Registry:
    ecr = clients("ecr")
    found = get(ecr.describe_repositories, f"reading ECR repository {repo}", repositoryNames=[repo])
    if not found:
        return Registry(repo, tag, f"{account or '<account>'}.dkr.ecr.{clients.region_name}.amazonaws.com/{repo}",
                        exists=False, pushed=False)
    image = get(ecr.describe_images, f"reading image {repo}:{tag}", repositoryName=repo, imageIds=[{"imageTag": tag}])
    return Registry(repo, tag, found["repositories"][0]["repositoryUri"], exists=True,
                    pushed=bool(image and image.get("imageDetails")))


def registry_actions(reg: Registry, bundle, notes: list, needed: bool = True) -> list[Action]:
    """What puts `bundle`'s archive at reg.image: the repository when missing, the push;
    nothing when not `needed` (a published version holds the image already)."""
    if reg.pushed:
        notes.append(f"{reg.image} is already in ECR: not pushed again")
    if not needed:
        return []
    actions = []
    if not reg.exists:
        actions.append(Action("create_repository", f"create ECR repository {reg.repository} (scan on push)",
                              {"repositoryName": reg.repository, "imageScanningConfiguration": {"scanOnPush": True},
                               "imageTagMutability": "MUTABLE"}))
    if not reg.pushed:
        actions.append(Action("push_image", f"push {bundle.path.name} ({bundle.size / MIB:.0f} MiB) to {reg.image}",
                              {"archive": bundle.path, "repository": reg.repository, "tag": reg.tag,
                               "platform": bundle.image.get("platform")}))
    return actions


def ecr_image(clients, repo: str, tag: str, bundle, account: str | None, notes: list) -> tuple[str, list[Action]]:
    """The image's URI in ECR, and what puts it there."""
    reg = read_registry(clients, repo, tag, account)
    return reg.image, registry_actions(reg, bundle, notes)


# -- 1. what is there ----------------------------------------------------------------------------
