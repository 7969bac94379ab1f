"""`deploy --sagemaker-endpoint`, `invoke --sagemaker-endpoint` and `undeploy` against
moto's mocked AWS (no network). moto 5 has no UpdateEndpoint: it is emulated with a
botocore before-call handler that does to moto's endpoint what SageMaker does (switch the
config, or keep the old one and set a FailureReason), so the product's own waiting and
failure reporting run on it. Images are minimal OCI archives, pushed by a recorder that
registers them in moto's ECR."""
from __future__ import annotations

import datetime
import io
import json
import math
import shutil
from pathlib import Path

import pytest

import oci_archive

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from botocore.awsrequest import AWSResponse

from builder.deploy import deploy, deploy_endpoint, undeploy
from builder.deploy.aws import Clients
from builder.deploy.instances import instance
from builder.deploy.remote import invoke_endpoint
from builder.deploy.sagemaker import HEADROOM, POLICY, autoscale_target, resource_id
from builder.errors import DeployError
from builder.options import DeployOptions, EndpointOptions, UndeployOptions
from builder.progress import Progress
from test_deploy import (ACCOUNT, READ_ONLY, REGION, Recorder, RecordingPusher, aws_env,  # noqa: F401
                         error_response, no_aws, role)
from test_deploy_e2e import moto_server  # noqa: F401

ENDPOINT = "ep-test"


# -- fixtures ----------------------------------------------------------------------------------

def _with_archive(tdir: Path, content: bytes = b"\0" * 1024, architecture: str = "amd64") -> str:
    image = json.loads((tdir / "serve-image" / "image.json").read_text())
    return oci_archive.write(tdir / "serve-image.oci.tar", image["tag"], architecture, content)


@pytest.fixture(scope="module")
def serve_target(tiny_bert_build, tmp_path_factory):
    """A copy of the tiny BERT build with a real serve-image context and a minimal archive
    of it; returns (target dir, the OCI manifest ECR will hold)."""
    from builder.bundle.formats import FORMATS
    from builder.compiler.targets import resolve_target
    from builder.options import BuildOptions

    tdir = tmp_path_factory.mktemp("serve") / "x86_64"
    shutil.copytree(tiny_bert_build, tdir)
    FORMATS["serve-image"].build(tdir, resolve_target("x86_64"), BuildOptions(), Progress(quiet=True))
    return tdir, _with_archive(tdir)


def _rebuilt(serve_target, tmp_path: Path, n: int) -> tuple[Path, str]:
    """The same context with another image digest: a new build of the model."""
    tdir = tmp_path / f"build{n}" / "x86_64"
    shutil.copytree(serve_target[0], tdir)
    return tdir, _with_archive(tdir, content=bytes([n]) * 1024)


def _fake_target(build: Path, dest: Path, target: dict, device_code: dict | None = None,
                 platform: str = "linux/amd64") -> Path:
    """A target dir whose model.json says `target` (a cuda or arm64 build) with a
    serve-image context and archive, without compiling for it."""
    dest.mkdir(parents=True)
    data = json.loads((build / "model.json").read_text())
    data["target"] = {**data["target"], **target}
    if device_code:
        data["device_code"] = device_code
    (dest / "model.json").write_text(json.dumps(data))
    (dest / "serve-image").mkdir()
    tag = f"localhost/edgebundle/tiny:{target['name']}-0123456789ab"
    (dest / "serve-image" / "image.json").write_text(json.dumps({"format": "serve-image", "tag": tag,
                                                                 "platform": platform}))
    oci_archive.write(dest / "serve-image.oci.tar", tag, platform.split("/")[1])
    return dest


CUDA = {"name": "cuda", "device": "cuda", "arch": "x86_64", "elf_machine": "x86_64"}
FATBIN = {"format": "fatbin", "sass": ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"], "ptx": "compute_90"}


def run(path, clients=None, pusher=None, **options) -> tuple[dict, str]:
    out = io.StringIO()
    options.setdefault("endpoint_name", ENDPOINT)
    result = deploy_endpoint(Path(path), EndpointOptions(**options), Progress(stream=out),
                             clients=clients or Clients(region=REGION), pusher=pusher)
    return result, out.getvalue()


class EmulatedUpdate:
    """UpdateEndpoint as SageMaker does it, on moto's endpoint: the new config once its
    fleet is healthy, or (failing) the old one kept with a FailureReason."""

    def __init__(self, fail: str | None = None):
        self.fail, self.calls = fail, []

    def __call__(self, params, **kwargs):
        from moto.sagemaker.models import sagemaker_backends

        body = json.loads(params["body"])
        self.calls.append(body)
        endpoint = sagemaker_backends[ACCOUNT][REGION].endpoints[body["EndpointName"]]
        if self.fail:
            endpoint.failure_reason = self.fail
        else:
            endpoint.endpoint_config_name = body["EndpointConfigName"]
        endpoint.endpoint_status = "InService"  # done, or rolled back
        endpoint.last_modified_time = datetime.datetime.now(datetime.timezone.utc).isoformat()
        return (AWSResponse("https://stub.invalid", 200, {}, None),
                {"EndpointArn": endpoint.arn, "ResponseMetadata": {"HTTPStatusCode": 200}})


def _sm():
    return boto3.client("sagemaker", region_name=REGION)


def _aas():
    return boto3.client("application-autoscaling", region_name=REGION)


def _names() -> tuple[list, list]:
    sm = _sm()
    return (sorted(c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]),
            sorted(m["ModelName"] for m in sm.list_models()["Models"]))


def _writes(rec: Recorder) -> list[str]:
    return [op for _, op, _ in rec.calls if not op.startswith(READ_ONLY) and op != "GetCallerIdentity"]


# -- the instance table and the autoscaling rule -------------------------------------------------

def test_instance_table():
    g5 = instance("ml.g5.12xlarge")
    assert (g5.arch, g5.vcpus, g5.gpus, g5.gpu.name, g5.gpu.compute_capability) == ("x86_64", 48, 4, "A10G", "8.6")
    assert g5.memory_bytes == 192 * 1024 ** 3
    c7g = instance("ml.c7g.2xlarge")
    assert (c7g.arch, c7g.vcpus, c7g.threads, c7g.memory_bytes) == ("arm64", 8, 8, 16 * 1024 ** 3)
    assert instance("ml.c5.xlarge").threads == 2  # x86: one thread per core, not per hyperthread
    assert instance("ml.p5.48xlarge").gpu.compute_capability == "9.0"
    for bad in ("ml.c5.3xlarge", "c5.xlarge", "ml.nosuch.xlarge", ""):
        with pytest.raises(DeployError, match="not a SageMaker hosting type"):
            instance(bad)


@pytest.mark.parametrize("full_ms, rows, threads, inst, expected", [
    (100.0, 32, 2, "ml.c5.xlarge", math.floor(32 / 0.1 * 60 * HEADROOM)),  # 2 threads on 2 cores
    (100.0, 32, 2, "ml.c5.4xlarge", math.floor(32 / 0.1 * 8 / 2 * 60 * HEADROOM)),  # 8 cores
    (250.0, 8, 4, "ml.c7g.xlarge", math.floor(8 / 0.25 * 4 / 4 * 60 * HEADROOM)),
])
def test_autoscale_target_rule(full_ms, rows, threads, inst, expected):
    class Image:
        latency = {"full_batch_ms": full_ms, "max_batch": rows, "threads": threads}
        manifest = type("M", (), {"target": type("T", (), {"device": "cpu"})()})()
        target_dir = Path(".")

    target, why = autoscale_target(Image, instance(inst), None)
    assert target == expected and f"headroom {HEADROOM:g}" in why
    assert autoscale_target(Image, instance(inst), 123)[0] == 123
    Image.latency = None
    with pytest.raises(DeployError, match="--target-invocations"):
        autoscale_target(Image, instance(inst), None)


# -- deploy: new, same again, updates -------------------------------------------------------------

def test_new_endpoint_then_nothing(serve_target, role):
    tdir, manifest = serve_target
    pusher, rec = RecordingPusher(manifest), Recorder()
    result, out = run(tdir, Clients(region=REGION, factory=rec), pusher, role=role, instance_type="ml.c5.xlarge",
                      autoscale=(1, 3))
    timing = json.loads((tdir / "timing.json").read_text())
    expected = math.floor(timing["max_batch"] / (timing["full_batch_ms"] / 1000) * 2 / timing["threads"]
                          * 60 * HEADROOM)
    assert result["changed"] and result["autoscale"] == {"min": 1, "max": 3, "target_invocations": expected}
    assert f"target {expected} invocations per instance per minute" in out and "Plan: serving image" in out
    assert len(pusher.calls) == 1 and pusher.calls[0]["ref"].split(":")[-1].startswith("serve-x86_64-")

    sm = _sm()
    name = result["config"]
    assert name.startswith(f"{ENDPOINT}-") and _names() == ([name], [name])
    endpoint = sm.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == name
    model = sm.describe_model(ModelName=name)
    assert model["PrimaryContainer"]["Image"] == pusher.calls[0]["ref"]
    assert model["PrimaryContainer"]["Environment"] == {"TVM_NUM_THREADS": "2"} and model["ExecutionRoleArn"] == role
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 1)
    for arn in (endpoint["EndpointArn"], model["ModelArn"]):
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
        assert set(tags) == {"edgebundle:model", "edgebundle:fingerprint", "edgebundle:version",
                             "edgebundle:endpoint"} and tags["edgebundle:fingerprint"] == result["fingerprint"][:16]
    (target,) = _aas().describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (resource_id(ENDPOINT), 1, 3)
    (policy,) = _aas().describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyName"] == POLICY and config["TargetValue"] == expected
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    # The same bundle and settings again: reads only, nothing pushed, nothing changed.
    rec2 = Recorder()
    again, out = run(tdir, Clients(region=REGION, factory=rec2), pusher, role=role, instance_type="ml.c5.xlarge",
                     autoscale=(1, 3))
    assert not again["changed"] and "nothing to do" in out and _writes(rec2) == [] and len(pusher.calls) == 1
    assert again["config"] == name
    # Without --autoscale the scaling stays as it is; without --role the model's role is kept.
    third, out = run(tdir, pusher=pusher, instance_type="ml.c5.xlarge")
    assert not third["changed"] and "the endpoint's, kept" in out and "--no-autoscale removes it" in out
    # A new MIN:MAX changes the scaling only: the config is the same (the count is the scaler's).
    rec3 = Recorder()
    fourth, out = run(tdir, Clients(region=REGION, factory=rec3), pusher, instance_type="ml.c5.xlarge",
                      autoscale=(2, 5))
    assert fourth["config"] == name and _writes(rec3) == ["RegisterScalableTarget"]


def test_update_keeps_one_config_for_rollback(serve_target, role, tmp_path):
    """A new build: a new model and config, the endpoint updated to it (blue/green), the
    previous config kept; the build after that removes the oldest. Redeploying the kept
    build rolls back to its config without creating anything."""
    tdir, manifest = serve_target
    update = EmulatedUpdate()
    rec = Recorder().stub("before-call.sagemaker.UpdateEndpoint", update)
    clients = Clients(region=REGION, factory=rec)
    first, _ = run(tdir, clients, RecordingPusher(manifest), role=role, instance_type="ml.c5.xlarge")
    second_dir, second_manifest = _rebuilt(serve_target, tmp_path, 2)
    second, out = run(second_dir, clients, RecordingPusher(second_manifest), instance_type="ml.c5.xlarge")
    assert second["changed"] and second["config"] != first["config"]
    assert [c["EndpointConfigName"] for c in update.calls] == [second["config"]]
    assert f"kept for a rollback: {first['config']}" in out
    assert _names() == (sorted([first["config"], second["config"]]),) * 2
    assert _sm().describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"] == second["config"]
    # The role came from the model the endpoint ran: the same in the new model.
    assert _sm().describe_model(ModelName=second["config"])["ExecutionRoleArn"] == role

    third_dir, third_manifest = _rebuilt(serve_target, tmp_path, 3)
    third, out = run(third_dir, clients, RecordingPusher(third_manifest), instance_type="ml.c5.xlarge")
    assert _names() == (sorted([second["config"], third["config"]]),) * 2
    assert f"delete unused endpoint config {first['config']}" in out

    rec.calls.clear()
    back, out = run(second_dir, clients, RecordingPusher(second_manifest), instance_type="ml.c5.xlarge")
    assert back["config"] == second["config"] and update.calls[-1]["EndpointConfigName"] == second["config"]
    assert not {"CreateModel", "CreateEndpointConfig"} & set(_writes(rec))


def test_failed_update_reports_reason_and_keeps_old(serve_target, role, tmp_path):
    tdir, manifest = serve_target
    first, _ = run(tdir, pusher=RecordingPusher(manifest), role=role, instance_type="ml.c5.xlarge")
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    rec = Recorder().stub("before-call.sagemaker.UpdateEndpoint", EmulatedUpdate(fail=reason))
    new_dir, new_manifest = _rebuilt(serve_target, tmp_path, 7)
    with pytest.raises(DeployError) as e:
        run(new_dir, Clients(region=REGION, factory=rec), RecordingPusher(new_manifest), instance_type="ml.c5.xlarge")
    assert reason in str(e.value) and f"still serves {first['config']}" in str(e.value)
    assert _sm().describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"] == first["config"]
    failed = [n for n in _names()[0] if n != first["config"]]
    assert len(failed) == 1 and _names()[1] == sorted([first["config"], *failed])  # both there, to inspect

    # The next good deploy keeps what the endpoint served (the rollback), not the newer
    # config that never served, even though that one is the newest unused.
    rec = Recorder().stub("before-call.sagemaker.UpdateEndpoint", EmulatedUpdate())
    good_dir, good_manifest = _rebuilt(serve_target, tmp_path, 8)
    good, out = run(good_dir, Clients(region=REGION, factory=rec), RecordingPusher(good_manifest),
                    instance_type="ml.c5.xlarge")
    assert f"kept for a rollback: {first['config']}" in out
    assert _names()[0] == sorted([first["config"], good["config"]])


def test_failed_endpoint_is_replaced_and_foreign_one_refused(serve_target, role):
    from moto.sagemaker.models import sagemaker_backends

    tdir, manifest = serve_target
    first, _ = run(tdir, pusher=RecordingPusher(manifest), role=role, instance_type="ml.c5.xlarge")
    endpoint = sagemaker_backends[ACCOUNT][REGION].endpoints[ENDPOINT]
    endpoint.endpoint_status, endpoint.failure_reason = "Failed", "CapacityError: no ml.c5.xlarge capacity"
    rec = Recorder()
    again, out = run(tdir, Clients(region=REGION, factory=rec), RecordingPusher(manifest),
                     instance_type="ml.c5.xlarge")
    assert "it is Failed (CapacityError" in out and _writes(rec) == ["DeleteEndpoint", "CreateEndpoint"]
    assert _sm().describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService"
    # An update that failed to roll back is updated again, even to the same config.
    endpoint = sagemaker_backends[ACCOUNT][REGION].endpoints[ENDPOINT]
    endpoint.endpoint_status = "UpdateRollbackFailed"
    rec = Recorder().stub("before-call.sagemaker.UpdateEndpoint", EmulatedUpdate())
    _, out = run(tdir, Clients(region=REGION, factory=rec), RecordingPusher(manifest), instance_type="ml.c5.xlarge")
    assert "is UpdateRollbackFailed" in out and "UpdateEndpoint" in _writes(rec)

    sm = _sm()
    sm.create_endpoint(EndpointName="theirs", EndpointConfigName=first["config"])
    calls = Recorder()
    with pytest.raises(DeployError, match="not created by edgebundle"):
        run(tdir, Clients(region=REGION, factory=calls), RecordingPusher(manifest), endpoint_name="theirs",
            instance_type="ml.c5.xlarge")
    assert _writes(calls) == []


def test_instance_type_change_reregisters_autoscaling(serve_target, role):
    tdir, manifest = serve_target
    rec = Recorder().stub("before-call.sagemaker.UpdateEndpoint", EmulatedUpdate())
    clients = Clients(region=REGION, factory=rec)
    run(tdir, clients, RecordingPusher(manifest), role=role, instance_type="ml.c5.xlarge", autoscale=(1, 2),
        target_invocations=600)
    rec.calls.clear()
    result, out = run(tdir, clients, RecordingPusher(manifest), instance_type="ml.c5.2xlarge", autoscale=(1, 2),
                      target_invocations=600)
    writes = _writes(rec)
    assert writes.index("DeregisterScalableTarget") < writes.index("UpdateEndpoint") < \
        writes.index("RegisterScalableTarget") < writes.index("PutScalingPolicy")
    assert "TVM_NUM_THREADS=4" in out  # 8 vCPUs, 4 cores
    (update,) = rec.params("UpdateEndpoint")
    assert update.get("RetainAllVariantProperties") is True  # the scaler's instance count stays
    # Without --autoscale, an instance change lifts the endpoint's scaling and sets it again.
    rec.calls.clear()
    run(tdir, clients, RecordingPusher(manifest), instance_type="ml.c5.4xlarge")
    writes = _writes(rec)
    assert writes.index("DeregisterScalableTarget") < writes.index("UpdateEndpoint") < \
        writes.index("RegisterScalableTarget") < writes.index("PutScalingPolicy")
    (target,) = _aas().describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    (policy,) = _aas().describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id(ENDPOINT))[
        "ScalingPolicies"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 600
    # --no-autoscale removes it.
    run(tdir, clients, RecordingPusher(manifest), instance_type="ml.c5.4xlarge", autoscale_off=True)
    assert _aas().describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


# -- refusals before any AWS call --------------------------------------------------------------------

@pytest.mark.parametrize("target, code, platform, itype, message", [
    (CUDA, FATBIN, "linux/amd64", "ml.c5.xlarge", "has no GPU"),
    (CUDA, FATBIN, "linux/amd64", "ml.p3.2xlarge", "compute capability 7.0, which this build's fatbin"),
    (CUDA, {"format": "fatbin", "sass": ["sm_90"], "ptx": None}, "linux/amd64", "ml.g5.xlarge",
     "compute capability 8.6"),
    ({"name": "x86_64", "device": "cpu"}, None, "linux/amd64", "ml.g5.xlarge", "GPU would sit idle"),
    ({"name": "arm64", "device": "cpu", "arch": "aarch64", "elf_machine": "aarch64"}, None, "linux/arm64",
     "ml.c5.xlarge", "is x86_64 and this image is arm64"),
])
def test_refused_before_any_aws_call(tiny_bert_build, tmp_path, target, code, platform, itype, message):
    tdir = _fake_target(tiny_bert_build, tmp_path / "t", target, code, platform)
    calls = []
    with pytest.raises(DeployError, match=message):
        run(tdir, no_aws(calls), instance_type=itype, role="r")
    assert calls == []


def test_memory_refused_and_default_steps_up(tiny_bert_build, tmp_path):
    """7 GiB of model files need ~9 GiB: refused on ml.c5.large (4 GiB) and ml.c5.xlarge
    (8 GiB); the default ladder steps up to ml.m5.xlarge (16 GiB)."""
    tdir = _fake_target(tiny_bert_build, tmp_path / "big", {"name": "x86_64", "device": "cpu"})
    data = json.loads((tdir / "model.json").read_text())
    data["files"] = {**data["files"], "model.weights": {**data["files"]["model.weights"], "size": 7 * 1024 ** 3}}
    (tdir / "model.json").write_text(json.dumps(data))
    calls = []
    with pytest.raises(DeployError, match="needs about 9.0 GiB of memory and ml.c5.xlarge has 8 GiB"):
        run(tdir, no_aws(calls), instance_type="ml.c5.xlarge")
    from builder.deploy.bundle import open_serve_image
    from builder.deploy.instances import default_instance

    image = open_serve_image(tdir)
    assert default_instance(image.manifest, image.architecture).name == "ml.m5.xlarge" and calls == []


def test_cuda_build_on_a_gpu_it_serves(tiny_bert_build, tmp_path, role):
    tdir = _fake_target(tiny_bert_build, tmp_path / "cuda", CUDA, FATBIN)
    manifest = oci_archive.write(tdir / "serve-image.oci.tar",
                                 json.loads((tdir / "serve-image" / "image.json").read_text())["tag"])
    result, out = run(tdir, pusher=RecordingPusher(manifest), role=role, dry_run=True)
    assert result["instance_type"] == "ml.g4dn.xlarge" and "fatbin sm_75" in out and "serves the T4" in out
    result, _ = run(tdir, pusher=RecordingPusher(manifest), role=role, instance_type="ml.g4dn.2xlarge")
    assert result["changed"] and _sm().describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService"
    # SageMaker's default GPU hosts have a CUDA 12 driver: the CUDA 13 one is asked for.
    (variant,) = _sm().describe_endpoint_config(EndpointConfigName=result["config"])["ProductionVariants"]
    assert variant["InferenceAmiVersion"] == "al2023-ami-sagemaker-inference-gpu-4-1"
    # The rate on the instance's GPU is not known here: autoscaling needs the target given.
    with pytest.raises(DeployError, match="--target-invocations"):
        run(tdir, pusher=RecordingPusher(manifest), instance_type="ml.g4dn.2xlarge", autoscale=(1, 2))


@pytest.mark.parametrize("options, message", [
    ({"endpoint_name": "-bad"}, "1-63 letters"),
    ({"autoscale": (3, 2)}, "MAX at least MIN"),
    ({"autoscale": (2, 4), "instances": 1}, "outside --autoscale"),
    ({"environment": (("1X", "y"),)}, "a letter or _"),
])
def test_bad_options_refused_before_any_aws_call(serve_target, options, message):
    calls = []
    with pytest.raises(DeployError, match=message):
        run(serve_target[0], no_aws(calls), instance_type="ml.c5.xlarge", **options)
    assert calls == []


def test_dry_run_reads_only(serve_target, role):
    tdir, manifest = serve_target
    rec = Recorder()
    result, out = run(tdir, Clients(region=REGION, factory=rec), RecordingPusher(manifest), role=role,
                      instance_type="ml.c5.xlarge", autoscale=(1, 2), dry_run=True)
    assert result["dry_run"] and _writes(rec) == []
    assert [p.split(" ")[0] for p in result["plan"]] == ["create", "push", "create", "create", "create", "autoscale",
                                                          "target"]
    assert "dry run: nothing was changed" in out and _names() == ([], [])


# -- invoke ---------------------------------------------------------------------------------------

def test_invoke_endpoint_prints_one_line_per_event(role):
    sm = _sm()
    sm.create_model(ModelName="m", PrimaryContainer={"Image": "i"}, ExecutionRoleArn=role)
    sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.c5.xlarge"}])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="c")
    rec = Recorder()
    out = io.StringIO()
    assert invoke_endpoint(ENDPOINT, [b'{"inputs": "a"}', b'{"inputs": "b"}'], Clients(region=REGION, factory=rec),
                           out=out) == 0
    assert len(out.getvalue().splitlines()) == 2
    sent = rec.params("InvokeEndpoint")
    assert [p["Body"] for p in sent] == [b'{"inputs": "a"}', b'{"inputs": "b"}']
    assert {p["ContentType"] for p in sent} == {"application/json"}

    # The model server's 400 comes back as SageMaker's ModelError: printed, status 1.
    def model_error(**kwargs):
        response = error_response("ModelError", "Received client error (400) from primary")
        response[1].update(OriginalStatusCode=400, OriginalMessage='{"error": "inputs: expected a string"}')
        return response

    out, err = io.StringIO(), io.StringIO()
    rec = Recorder().stub("before-call.sagemaker-runtime.InvokeEndpoint", model_error)
    assert invoke_endpoint(ENDPOINT, [b'{"inputs": 1}'], Clients(region=REGION, factory=rec), out=out, err=err) == 1
    assert out.getvalue().strip() == '{"error": "inputs: expected a string"}' and "answered 400" in err.getvalue()


# -- undeploy ---------------------------------------------------------------------------------------

def test_undeploy_endpoint_removes_exactly_what_it_made(serve_target, role, tmp_path):
    tdir, manifest = serve_target
    clients = Clients(region=REGION, factory=Recorder().stub("before-call.sagemaker.UpdateEndpoint",
                                                             EmulatedUpdate()))
    run(tdir, clients, RecordingPusher(manifest), role=role, instance_type="ml.c5.xlarge", autoscale=(1, 2),
        target_invocations=100)
    new_dir, new_manifest = _rebuilt(serve_target, tmp_path, 4)
    run(new_dir, clients, RecordingPusher(new_manifest), instance_type="ml.c5.xlarge")
    # Someone else's model whose name shares the prefix, and another endpoint: untouched.
    sm = _sm()
    sm.create_model(ModelName=f"{ENDPOINT}-theirs", PrimaryContainer={"Image": "i"}, ExecutionRoleArn=role)
    run(tdir, pusher=RecordingPusher(manifest), endpoint_name="other", role=role, instance_type="ml.c5.xlarge")
    others = [n for n in _names()[0] if n.startswith("other-")]

    rec = Recorder()
    dry = undeploy(UndeployOptions(endpoint_name=ENDPOINT, dry_run=True), Progress(quiet=True),
                   Clients(region=REGION, factory=rec))
    assert dry["dry_run"] and _writes(rec) == [] and len(dry["removed"]) == 7  # policy, target, endpoint, 2+2
    out = io.StringIO()
    result = undeploy(UndeployOptions(endpoint_name=ENDPOINT), Progress(stream=out), Clients(region=REGION))
    assert result["changed"]
    configs, models = _names()
    assert configs == others and models == sorted(others + [f"{ENDPOINT}-theirs"])
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["other"]
    assert _aas().describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    # Again: nothing left to remove.
    again = undeploy(UndeployOptions(endpoint_name=ENDPOINT), Progress(quiet=True), Clients(region=REGION))
    assert not again["changed"]


def test_undeploy_refuses_what_edgebundle_did_not_make(role):
    sm = _sm()
    sm.create_model(ModelName="m", PrimaryContainer={"Image": "i"}, ExecutionRoleArn=role)
    sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.c5.xlarge"}])
    sm.create_endpoint(EndpointName="theirs", EndpointConfigName="c")
    boto3.client("lambda", region_name=REGION).create_function(
        FunctionName="theirs", Runtime="python3.13", Role=role, Handler="h.h", Code={"ZipFile": b"PK\5\6" + b"\0" * 18})
    for options in (UndeployOptions(endpoint_name="theirs"), UndeployOptions(function_name="theirs")):
        with pytest.raises(DeployError, match="not created by edgebundle"):
            undeploy(options, Progress(quiet=True), Clients(region=REGION))
    assert sm.describe_endpoint(EndpointName="theirs")["EndpointStatus"] == "InService"


def test_undeploy_function_keeps_a_layer_another_function_uses(tiny_bert_build, role, tmp_path):
    lam = boto3.client("lambda", region_name=REGION)
    for name in ("fn-a", "fn-b"):
        tdir = tmp_path / name
        shutil.copytree(tiny_bert_build, tdir)
        deploy(tdir, DeployOptions(function_name=name, role=role, runtime_layer=True), Progress(quiet=True),
               clients=Clients(region=REGION))
    (layer,) = lam.list_layers()["Layers"]
    # Functions carry the fingerprint of what their alias serves, updated by each deploy.
    before = lam.get_function(FunctionName="fn-a")["Tags"]
    changed = deploy(tmp_path / "fn-a", DeployOptions(function_name="fn-a", runtime_layer=True,
                                                      environment=(("XY", "1"),)), Progress(quiet=True),
                     clients=Clients(region=REGION))
    after = lam.get_function(FunctionName="fn-a")["Tags"]
    assert after["edgebundle:fingerprint"] == changed["fingerprint"][:16] != before["edgebundle:fingerprint"]
    rec = Recorder()
    dry = undeploy(UndeployOptions(function_name="fn-a", dry_run=True), Progress(quiet=True),
                   Clients(region=REGION, factory=rec))
    assert dry["dry_run"] and _writes(rec) == [] and [r.split(" ")[0] for r in dry["removed"]] == ["delete"]
    out = io.StringIO()
    result = undeploy(UndeployOptions(function_name="fn-a"), Progress(stream=out), Clients(region=REGION))
    assert result["changed"] and "kept: function fn-b uses it" in out.getvalue()
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == ["fn-b"]
    assert lam.list_layer_versions(LayerName=layer["LayerName"])["LayerVersions"]
    undeploy(UndeployOptions(function_name="fn-b"), Progress(quiet=True), Clients(region=REGION))
    assert lam.list_functions()["Functions"] == []
    assert lam.list_layer_versions(LayerName=layer["LayerName"])["LayerVersions"] == []


# -- the real CLI against moto's standalone server ---------------------------------------------

def test_cli_endpoint_deploy_invoke_undeploy(moto_server, serve_target, tmp_path):
    """deploy --sagemaker-endpoint (dry run, then for real, then again: nothing), invoke
    --sagemaker-endpoint, undeploy, as a user runs them. moto's ECR has no registry to push
    to: the image is put there first, which the plan sees (and so pushes nothing)."""
    from builder.bundle.context import image_name
    from builder.container.images import archive_index
    from runtime.manifest import read as read_manifest
    from test_deploy_e2e import _cli, _client

    env = moto_server
    tdir, manifest = serve_target
    role = _client(env, "iam").create_role(RoleName="sm", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    repo = f"edgebundle/{image_name(read_manifest(tdir).model.name)}"
    digest = archive_index(tdir / "serve-image.oci.tar")["digest"].split(":")[1]
    ecr = _client(env, "ecr")
    ecr.create_repository(repositoryName=repo)
    ecr.put_image(repositoryName=repo, imageManifest=manifest, imageTag=f"serve-x86_64-{digest[:12]}")

    args = ["deploy", tdir, "--sagemaker-endpoint", "cli-ep", "--role", "sm", "--instance-type", "ml.m5.large",
            "--autoscale", "1:2", "--target-invocations", "300", "--json"]
    dry = _cli(env, *args, "--dry-run")
    assert json.loads(dry.stdout)["dry_run"] and "already in ECR: not pushed again" in dry.stderr
    assert "+ create endpoint cli-ep" in dry.stderr
    sm = _client(env, "sagemaker")
    assert sm.list_endpoints()["Endpoints"] == []
    first = json.loads(_cli(env, *args).stdout)
    assert first["changed"] and first["instance_type"] == "ml.m5.large"
    assert sm.describe_endpoint(EndpointName="cli-ep")["EndpointStatus"] == "InService"
    assert sm.describe_model(ModelName=first["config"])["ExecutionRoleArn"] == role
    again = _cli(env, *args)
    assert json.loads(again.stdout)["changed"] is False and "nothing to do" in again.stderr

    event = tmp_path / "e.json"
    event.write_text(json.dumps({"inputs": "hello"}))
    called = _cli(env, "invoke", "--sagemaker-endpoint", "cli-ep", "--event", event, "--event", event)
    assert len(called.stdout.strip().splitlines()) == 2  # moto answers each with a canned body

    refused = _cli(env, "deploy", tdir, "--sagemaker-endpoint", "cli-ep", "--memory", "2048", check=False)
    assert refused.returncode == 1 and "--memory applies to Lambda functions" in refused.stderr
    assert "Traceback" not in refused.stderr

    gone = json.loads(_cli(env, "undeploy", "--sagemaker-endpoint", "cli-ep", "--json").stdout)
    assert gone["changed"] and len(gone["removed"]) == 5  # policy, target, endpoint, config, model
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
