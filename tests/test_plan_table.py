"""The Lambda planner as a table: what AWS has (a `Current` written by hand, no clients, no
moto) and what is asked -> the actions, by op. `desired` and `diff` are pure; the moto
tests in test_deploy.py cover the reads and the executor."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.bundle.sizing import Sizing
from builder.deploy.bundle import Bundle
from builder.deploy.plan import FINGERPRINT_TAG, Current, Ref, Registry, ZipCode, desired, diff
from builder.options import DeployOptions

MIB = 1024 * 1024
REGION, ACCOUNT = "us-east-1", "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/edgebundle-test"
ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn"
LAYER = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:edgebundle-runtime-python3-13-x86_64:3"
SIZING = Sizing(1792, 30, 1, "the rule")
MANIFEST = SimpleNamespace(model=SimpleNamespace(name="tiny-bert", task="feature-extraction"))
ZIP = Bundle("zip", Path("/out/x86_64"), Path("/out/x86_64/lambda.zip"),
             {"runtime": "python3.13", "handler": "handler.handler", "architecture": "x86_64", "python": "3.13"},
             MANIFEST, "ab" * 32, 20 * MIB, None)
IMAGE = Bundle("image", Path("/out/x86_64"), Path("/out/x86_64/lambda-image.oci.tar"),
               {"runtime": "python3.13", "handler": "handler.handler", "architecture": "x86_64"},
               MANIFEST, "cd" * 32, 300 * MIB, None, {"platform": "linux/amd64"})
REPO = "edgebundle/tiny-bert"
TAG = f"x86_64-{'cd' * 6}"
URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{REPO}"


def zip_code(sha: str = "ab" * 32, s3: bool = False, layer: bool = False) -> ZipCode:
    """The zip as package_zip makes it (for a layer, the model half's sha)."""
    return ZipCode(Path("/out/x86_64/lambda-model.zip" if layer else "/out/x86_64/lambda.zip"), sha, 20 * MIB,
                   f"edgebundle/tiny-bert/{sha}.zip" if s3 else None,
                   **({"layer": Path("/out/x86_64/lambda-runtime-layer.zip"), "layer_sha256": "ef" * 32,
                       "layer_size": 30 * MIB, "layer_name": "edgebundle-runtime-python3-13-x86_64"} if layer else {}))


def registry(exists: bool = True, pushed: bool = True) -> Registry:
    return Registry(REPO, TAG, URI, exists, pushed)


def fresh(bundle: Bundle = ZIP, **fields) -> Current:
    """No function yet; --role given."""
    code = {"code": zip_code()} if bundle.kind == "zip" else {"registry": registry()}
    return Current(REGION, ACCOUNT, ROLE, None, **{**code, **fields})


def deployed(bundle: Bundle = ZIP, options: DeployOptions | None = None, sizing: Sizing = SIZING, version: str = "1",
             url: str | None = None, **fields) -> Current:
    """What AWS has after `options` was deployed: version `version` holds it and the alias
    points there; a later deploy gives no --role."""
    options = options or DeployOptions("fn")
    first = fresh(bundle, **fields)
    want = desired(bundle, options, sizing, dataclasses.replace(first, layer_arn=first.layer_arn or (
        LAYER if first.code and first.code.layer else None)))
    config = {**want.config, "Layers": [{"Arn": str(a)} for a in want.config.get("Layers", [])],
              "Role": ROLE, "FunctionArn": ARN, "PackageType": "Zip" if bundle.kind == "zip" else "Image",
              "Architectures": [bundle.architecture],
              **({"CodeSha256": want.code_identity} if bundle.kind == "zip" else {})}
    function = {"Configuration": config, "Tags": want.tags,
                **({"Code": {"ImageUri": want.code_identity}} if bundle.kind == "image" else {})}
    versions = ({"Version": "$LATEST"}, {"Version": version, "Description": f"{want.tag} tiny-bert", "State": "Active"})
    return dataclasses.replace(first, role=None, function=function, alias={"FunctionVersion": version},
                               versions=versions, url={"FunctionUrl": "https://x.lambda-url/", "AuthType": url}
                               if url else None)


def plan_of(current: Current, bundle: Bundle = ZIP, sizing: Sizing = SIZING, **options):
    return diff(current, desired(bundle, DeployOptions("fn", **options), sizing, current))


def ops(plan) -> list[str]:
    return [a.op for a in plan.actions]


NEW = ["create_function", "publish_version", "create_alias"]
UPDATE = ["publish_version", "update_alias", "tag_function"]

CASES = {
    # -- the code
    "new function, zip direct": (lambda: fresh(), {}, NEW),
    "new function, zip through S3": (lambda: fresh(code=zip_code(s3=True)), {"s3_bucket": "b"}, ["upload", *NEW]),
    "S3 object already there": (lambda: fresh(code=zip_code(s3=True), s3_object={"ContentLength": 20 * MIB}),
                                {"s3_bucket": "b"}, NEW),
    "S3 object of another size": (lambda: fresh(code=zip_code(s3=True), s3_object={"ContentLength": 1}),
                                  {"s3_bucket": "b"}, ["upload", *NEW]),
    "update code only": (lambda: dataclasses.replace(deployed(), code=zip_code("12" * 32)), {},
                         ["update_code", *UPDATE]),
    "runtime layer published": (lambda: fresh(code=zip_code(layer=True)), {"runtime_layer": True},
                                ["publish_layer", *NEW]),
    "runtime layer already there": (lambda: fresh(code=zip_code(layer=True), layer_arn=LAYER),
                                    {"runtime_layer": True}, NEW),
    "image: no repository": (lambda: fresh(IMAGE, registry=registry(exists=False, pushed=False)), {},
                             ["create_repository", "push_image", *NEW]),
    "image: repository, no image": (lambda: fresh(IMAGE, registry=registry(pushed=False)), {}, ["push_image", *NEW]),
    "image: already pushed": (lambda: fresh(IMAGE), {}, NEW),
    # -- the configuration
    "update memory only": (lambda: deployed(), {"sizing": Sizing(3008, 30, 2, "given")},
                           ["update_configuration", *UPDATE]),
    "update environment only": (lambda: deployed(), {"environment": (("FOO", "1"),)},
                                ["update_configuration", *UPDATE]),
    # -- versions and the alias
    "alias already at the version": (lambda: deployed(), {}, []),
    "image alias already at the version": (lambda: deployed(IMAGE), {}, []),
    # A version holds this deploy (the alias went on to another): the alias moves back, and
    # nothing is uploaded, pushed or published even where S3, ECR or the layer lack it.
    "matching version, zip": (lambda: dataclasses.replace(
        deployed(options=DeployOptions("fn", s3_bucket="b", runtime_layer=True), code=zip_code(s3=True, layer=True)),
        alias={"FunctionVersion": "2"}, layer_arn=None),
        {"s3_bucket": "b", "runtime_layer": True}, ["update_alias"]),
    "matching version, image": (lambda: dataclasses.replace(
        deployed(IMAGE), alias={"FunctionVersion": "2"}, registry=registry(exists=False, pushed=False)),
        {}, ["update_alias"]),
    "no alias yet": (lambda: dataclasses.replace(deployed(), alias=None), {}, ["create_alias"]),
    # -- the URL
    "URL created": (lambda: deployed(), {"function_url": "AWS_IAM"}, ["create_url"]),
    "URL made public": (lambda: deployed(url="AWS_IAM"), {"function_url": "NONE"},
                        ["update_url", "add_permission", "add_permission"]),
    "public URL back to AWS_IAM": (lambda: deployed(url="NONE"), {"function_url": "AWS_IAM"},
                                   ["update_url", "remove_permission", "remove_permission"]),
    "new public URL": (lambda: deployed(), {"function_url": "NONE"}, ["create_url", "add_permission",
                                                                      "add_permission"]),
    "URL as asked": (lambda: deployed(url="NONE"), {"function_url": "NONE"}, []),
    "URL not asked: kept": (lambda: deployed(url="NONE"), {}, []),
    # -- tags
    "tags re-tagged": (lambda: dataclasses.replace(deployed(), function={**deployed().function, "Tags": {}}), {},
                       ["tag_function"]),
}


@pytest.mark.parametrize("name", CASES)
def test_plan_table(name):
    current, asked, expected = CASES[name]
    asked = dict(asked)
    sizing = asked.pop("sizing", SIZING)
    bundle = IMAGE if current().registry else ZIP
    assert ops(plan_of(current(), bundle, sizing, **asked)) == expected


def test_nothing_to_do_says_so():
    text = plan_of(deployed()).render()
    assert "nothing to do: fn:live already runs this bundle and configuration (version 1)" in text


def test_matching_version_note_and_alias_back():
    plan = plan_of(dataclasses.replace(deployed(), alias={"FunctionVersion": "2"}))
    assert plan.actions[0].summary == "point alias live at version 1 (was 2)"
    assert "version 1 already holds this bundle and configuration: nothing is published" in plan.notes


def test_failed_version_is_not_reused():
    current = deployed()
    failed = tuple({**v, "State": "Failed"} for v in current.versions)
    assert ops(plan_of(dataclasses.replace(current, versions=failed))) == [
        "publish_version", "update_alias"]


def test_layer_counts_by_content_not_arn():
    """The fingerprint is the same whether the layer is published by this deploy or exists."""
    options = DeployOptions("fn", runtime_layer=True)
    new = desired(ZIP, options, SIZING, fresh(code=zip_code(layer=True)))
    there = desired(ZIP, options, SIZING, fresh(code=zip_code(layer=True), layer_arn=LAYER))
    assert new.fingerprint == there.fingerprint
    assert new.config["Layers"] == [Ref("layer_arn")] and there.config["Layers"] == [LAYER]


def test_update_summaries():
    plan = plan_of(dataclasses.replace(deployed(), code=zip_code("12" * 32)), environment=(("FOO", "1"),))
    assert [a.summary for a in plan.actions[:2]] == ["update code of fn: zip 121212121212, x86_64",
                                                      "update configuration of fn: environment FOO"]
    assert plan.actions[2].params["Description"].startswith(FINGERPRINT_TAG)
    assert plan.actions[2].params["CodeSha256"] == desired(ZIP, DeployOptions("fn"), SIZING, dataclasses.replace(
        deployed(), code=zip_code("12" * 32))).code_identity


def test_kept_user_layers_noted():
    current = deployed()
    config = {**current.config, "Layers": [{"Arn": "arn:aws:lambda:us-east-1:580247275435:layer:Insights:38"}]}
    plan = plan_of(dataclasses.replace(current, function={**current.function, "Configuration": config}))
    assert "1 layer(s) already on fn kept: arn:aws:lambda:us-east-1:580247275435:layer:Insights:38" in plan.notes
    assert ops(plan) == UPDATE  # a new configuration (its layers), not a change to the function's
    assert plan.actions[0].params["Description"].split()[0] == f"{FINGERPRINT_TAG}{plan.fingerprint[:16]}"
