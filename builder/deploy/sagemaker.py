"""`deploy --sagemaker-endpoint`: a serving image on a SageMaker real-time endpoint, planned
in three steps like the Lambda path's plan, and carried out by the same executor.

    read_current(clients, options, image)  every Describe/List call: what the endpoint runs now
    desired(image, options, current)        pure: the model, endpoint config, endpoint, scaling
    diff(current, desired)                  pure: the Plan, one small function per resource

Names: the SageMaker Model and the EndpointConfig are both ENDPOINT-<fingerprint>, the
fingerprint covering the image digest, the environment, the role, the instance type and
count. A deploy whose fingerprint the endpoint already runs changes nothing; a new one
creates the model and config and updates the endpoint to it (SageMaker's blue/green: the
old fleet serves until the new one passes its health checks, and stays if it does not).
Unused configs and models of the endpoint beyond the newest `--keep` are removed once the
endpoint runs the new one. Everything carries edgebundle:model / :fingerprint / :version
tags, and edgebundle:endpoint, which is how undeploy finds what belongs to an endpoint.
"""
from __future__ import annotations

import dataclasses
import math

from builder.deploy.bundle import ServeImage
from builder.deploy.instances import Instance, check, default_instance, instance
from builder.deploy.resources import Action, default_repository, ecr_image, fingerprint, get, listed, role_arn
from builder.errors import DeployError
from builder.options import EndpointOptions
from builder.versions import EDGEBUNDLE_VERSION

VARIANT = "AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
POLICY = "edgebundle-invocations"
# Target tracking aims at this share of what one instance sustains: room for bursts while
# new instances start (minutes), as AWS's own guidance for the metric suggests (load test,
# then target about half the maximum).
HEADROOM = 0.5
SCALE_OUT_COOLDOWN_S = 60
SCALE_IN_COOLDOWN_S = 300
# How long SageMaker gives a new container to answer /ping before it fails the deploy
# (stated in the config rather than left to SageMaker's default): a large image pulled onto a
# cold instance, then the weights mapped and warmed, takes minutes.
STARTUP_HEALTH_CHECK_S = 600
TAG_MODEL, TAG_FINGERPRINT, TAG_VERSION, TAG_ENDPOINT = (
    "edgebundle:model", "edgebundle:fingerprint", "edgebundle:version", "edgebundle:endpoint")
# Statuses in which SageMaker is still applying a change (a deploy waits or refuses); every
# other status is final (InService, Failed, UpdateRollbackFailed, OutOfService).
IN_PROGRESS = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


def resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


# -- 1. what is there ------------------------------------------------------------------------

@dataclasses.dataclass
class Current:
    region: str
    account: str | None
    role: str | None  # the --role as an ARN (checked), or None
    endpoint: dict | None  # DescribeEndpoint
    endpoint_tags: dict
    serving: dict | None  # DescribeEndpointConfig of what the endpoint runs
    serving_role: str | None  # its model's execution role (kept when no --role is given)
    configs: list  # the endpoint's configs edgebundle made: {"name", "created", "model"}, newest first
    models: set  # the names of its models edgebundle made
    repository: str
    image_uri: str
    image_actions: list  # creating the repository, pushing: empty when ECR has the image
    notes: list
    scaling: dict | None  # the variant's scalable target
    policy: dict | None  # edgebundle's target-tracking policy on it


def _pages(fn, key: str, what: str, **params) -> list:
    return listed(fn, key, what, paging=("NextToken", "NextToken"), **params)


def tags_of(sm, arn: str, what: str) -> dict:
    return {t["Key"]: t["Value"] for t in _pages(sm.list_tags, "Tags", what, ResourceArn=arn)}


def owned(sm, endpoint: str) -> tuple[list, set]:
    """The endpoint configs and models edgebundle made for `endpoint` (by their tags)."""
    prefix = f"{endpoint[:50]}-"
    configs = []
    for c in _pages(sm.list_endpoint_configs, "EndpointConfigs", f"listing endpoint configs of {endpoint}",
                    NameContains=prefix):
        if c["EndpointConfigName"].startswith(prefix) and \
                tags_of(sm, c["EndpointConfigArn"], "reading tags").get(TAG_ENDPOINT) == endpoint:
            desc = get(sm.describe_endpoint_config, f"reading {c['EndpointConfigName']}",
                       EndpointConfigName=c["EndpointConfigName"]) or {}
            variants = desc.get("ProductionVariants") or [{}]
            configs.append({"name": c["EndpointConfigName"], "created": c.get("CreationTime"),
                            "model": variants[0].get("ModelName")})
    configs.sort(key=lambda c: str(c["created"]), reverse=True)
    models = {m["ModelName"] for m in _pages(sm.list_models, "Models", f"listing models of {endpoint}",
                                             NameContains=prefix)
              if m["ModelName"].startswith(prefix)
              and tags_of(sm, m["ModelArn"], "reading tags").get(TAG_ENDPOINT) == endpoint}
    return configs, models


def scaling_now(clients, endpoint: str) -> tuple[dict | None, dict | None]:
    aas = clients("application-autoscaling")
    rid = resource_id(endpoint)
    targets = get(aas.describe_scalable_targets, f"reading the autoscaling of {endpoint}",
                  ServiceNamespace="sagemaker", ResourceIds=[rid], ScalableDimension=DIMENSION) or {}
    policies = get(aas.describe_scaling_policies, f"reading the scaling policies of {endpoint}",
                   ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIMENSION) or {}
    target = next(iter(targets.get("ScalableTargets") or []), None)
    policy = next((p for p in policies.get("ScalingPolicies") or [] if p["PolicyName"] == POLICY), None)
    return target, policy


def read_current(clients, options: EndpointOptions, image: ServeImage) -> Current:
    """Every read a SageMaker deploy makes, and nothing else."""
    sm = clients("sagemaker")
    name = options.endpoint_name
    endpoint = get(sm.describe_endpoint, f"reading endpoint {name}", EndpointName=name)
    if endpoint and endpoint.get("EndpointStatus") in IN_PROGRESS:
        raise DeployError(f"endpoint {name} is {endpoint['EndpointStatus']}: SageMaker is still applying a change",
                          hint="wait until it is InService (aws sagemaker wait endpoint-in-service) and rerun")
    tags = tags_of(sm, endpoint["EndpointArn"], f"reading the tags of {name}") if endpoint else {}
    if endpoint and TAG_MODEL not in tags:
        # Updating (or replacing a failed) endpoint edgebundle did not make would also make
        # it undeploy's to delete.
        raise DeployError(f"endpoint {name} exists and was not created by edgebundle (no {TAG_MODEL} tag)",
                          where=name, hint="deploy to another --sagemaker-endpoint name, or delete that endpoint "
                                           "first if it should be replaced")
    ident = get(clients("sts").get_caller_identity, "reading the AWS account (sts:GetCallerIdentity)") or {}
    account = ident.get("Account")
    role = role_arn(clients, options.role, account, service="sagemaker")
    configs, models = owned(sm, name)
    serving, serving_role = None, None
    if endpoint:
        serving = get(sm.describe_endpoint_config, f"reading endpoint config {endpoint['EndpointConfigName']}",
                      EndpointConfigName=endpoint["EndpointConfigName"])
        model = ((serving or {}).get("ProductionVariants") or [{}])[0].get("ModelName")
        if model:
            serving_role = (get(sm.describe_model, f"reading model {model}", ModelName=model) or {}).get(
                "ExecutionRoleArn")
    notes: list = []
    repository = options.repository or default_repository(image.name)
    tag = f"serve-{image.manifest.target.name}-{image.sha256[:12]}"
    uri, pushes = ecr_image(clients, repository, tag, image, account, notes)
    target, policy = scaling_now(clients, name) if endpoint else (None, None)
    return Current(clients.region_name, account, role, endpoint, tags, serving, serving_role, configs, models,
                   repository, uri, pushes, notes, target, policy)


# -- 2. what should be there -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scaling:
    low: int
    high: int
    target: int  # invocations per instance per minute
    why: str
    how_given: bool = True  # False: carried over from the endpoint (no --autoscale given)


@dataclasses.dataclass(frozen=True)
class Desired:
    endpoint: str
    name: str  # of the model and the endpoint config
    fingerprint: str
    instance: Instance
    count: int
    model: dict  # CreateModel's parameters
    config: dict  # CreateEndpointConfig's
    tags: list
    scaling: Scaling | None
    scaling_off: bool
    keep: int
    why: list  # the instance's fit, for the plan


def autoscale_target(image: ServeImage, inst: Instance, given: int | None) -> tuple[int, str]:
    """Invocations per instance per minute for target tracking: what one instance sustains
    at the server's full batch, from the build's timing, times HEADROOM."""
    if given is not None:
        return given, "given with --target-invocations"
    lat = image.latency or {}
    full, rows = lat.get("full_batch_ms"), lat.get("max_batch")
    if image.manifest.target.device == "cpu" and (not full or not rows):
        raise DeployError("the build did not time the model (cross-compiled), so there is no measured rate to "
                          "set the autoscaling target from",
                          where=str(image.target_dir), hint="pass --target-invocations N (invocations per instance "
                                                            "per minute one instance should handle)")
    if image.manifest.target.device != "cpu":
        raise DeployError("a GPU build's rate on the instance's GPU is not known here (a timing from the build "
                          "machine, if any, is of another GPU)", where=str(image.target_dir),
                          hint="pass --target-invocations N (invocations per instance per minute), measured on "
                               "the instance type")
    # Per TVM thread, as the build ran: the instance runs TVM_NUM_THREADS = its cores.
    build_threads = max(1, int(lat.get("threads") or 1))
    per_s = rows / (full / 1000) * inst.threads / build_threads
    target = max(1, math.floor(per_s * 60 * HEADROOM))
    return target, (f"{rows} rows in {full:.0f} ms on {build_threads} build threads, scaled to {inst.threads} = "
                    f"{per_s:.0f}/s x 60 s x headroom {HEADROOM:g}")


def _scaling_wanted(image: ServeImage, options: EndpointOptions, current: Current, inst: Instance) -> Scaling | None:
    """--autoscale's, or (not given) what the endpoint has, carried over so that an update
    that must lift it (an instance type change) sets it again."""
    if options.autoscale_off:
        return None
    if options.autoscale:
        target, how = autoscale_target(image, inst, options.target_invocations)
        return Scaling(options.autoscale[0], options.autoscale[1], target, how)
    if current.scaling is None:
        return None
    now = ((current.policy or {}).get("TargetTrackingScalingPolicyConfiguration") or {}).get("TargetValue")
    if now is None:
        target, how = autoscale_target(image, inst, options.target_invocations)
    else:
        target, how = int(now), "the endpoint's, kept"
    return Scaling(current.scaling["MinCapacity"], current.scaling["MaxCapacity"], target, how, how_given=False)


def desired(image: ServeImage, options: EndpointOptions, current: Current, inst: Instance, why: list) -> Desired:
    """The endpoint as it should be, on the instance type already checked; no AWS call."""
    scaling = _scaling_wanted(image, options, current, inst)
    count = options.instances or (scaling.low if scaling else 1)
    env = dict(options.environment)
    env.setdefault("TVM_NUM_THREADS", str(inst.threads))
    role = current.role or current.serving_role
    variant = {"VariantName": VARIANT, "InstanceType": inst.name, "InitialInstanceCount": count,
               "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_S,
               **({"InferenceAmiVersion": inst.gpu.ami} if inst.gpu else {})}
    # An autoscaled variant's count is the scaler's, not the deploy's: out of the identity, so
    # a new MIN:MAX changes the scaling only, and updates keep the running count.
    identity = {"image": current.image_uri, "environment": env, "role": role, "variant": variant
                if scaling is None else {k: v for k, v in variant.items() if k != "InitialInstanceCount"}}
    fp = fingerprint(image.sha256, identity)
    name = f"{options.endpoint_name[:50]}-{fp[:12]}"
    tags = [{"Key": TAG_MODEL, "Value": image.name[:256]}, {"Key": TAG_FINGERPRINT, "Value": fp[:16]},
            {"Key": TAG_VERSION, "Value": EDGEBUNDLE_VERSION}, {"Key": TAG_ENDPOINT, "Value": options.endpoint_name}]
    model = {"ModelName": name, "ExecutionRoleArn": role,
             "PrimaryContainer": {"Image": current.image_uri, "Environment": env}, "Tags": tags}
    config = {"EndpointConfigName": name, "Tags": tags, "ProductionVariants": [{**variant, "ModelName": name}]}
    return Desired(options.endpoint_name, name, fp, inst, count, model, config, tags, scaling,
                   options.autoscale_off, options.keep, why)


# -- 3. the difference -------------------------------------------------------------------------

@dataclasses.dataclass
class EndpointPlan:
    endpoint: str
    region: str
    image: ServeImage
    want: Desired
    serving: str | None  # the config the endpoint runs now
    actions: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    @property
    def fingerprint(self) -> str:
        return self.want.fingerprint

    def render(self) -> str:
        w, img = self.want, self.image
        lines = [f"Plan: serving image of {img.name} ({img.manifest.target.name}, {img.image.get('platform')}) -> "
                 f"SageMaker endpoint {self.endpoint} in {self.region}"
                 + (f" (now on {self.serving})" if self.serving else " (new)"),
                 f"  instance: {w.count} x {w.instance.name} ({w.instance.describe()}); "
                 f"TVM_NUM_THREADS={w.model['PrimaryContainer']['Environment']['TVM_NUM_THREADS']}",
                 *[f"    {why}" for why in w.why]]
        if w.scaling:
            lines.append(f"  autoscale: {w.scaling.low}..{w.scaling.high} instances, target {w.scaling.target} "
                         f"invocations per instance per minute ({w.scaling.why})")
        lines.append(f"  fingerprint: {w.fingerprint[:16]} (model and endpoint config {w.name})")
        lines += [f"  = {note}" for note in self.notes]
        lines += [f"  + {a.summary}" for a in self.actions]
        if not self.actions:
            lines.append(f"  nothing to do: {self.endpoint} already runs this image and configuration")
        return "\n".join(lines)


def _model_and_config(cur: Current, want: Desired, plan: EndpointPlan) -> None:
    have = {c["name"] for c in cur.configs}
    if want.name in cur.models:
        plan.notes.append(f"model {want.name} exists")
    else:
        if want.model["ExecutionRoleArn"] is None:
            raise DeployError(f"creating SageMaker model {want.name} needs an execution role",
                              hint="pass --role ARN_OR_NAME (a role sagemaker.amazonaws.com may assume, allowed to "
                                   "pull from ECR and write CloudWatch Logs)")
        env = want.model["PrimaryContainer"]["Environment"]
        plan.actions.append(Action("create_model", f"create model {want.name}: {cur.image_uri}, "
                                   f"env {', '.join(sorted(env))}", want.model))
    if want.name in have:
        plan.notes.append(f"endpoint config {want.name} exists")
    else:
        plan.actions.append(Action("create_endpoint_config", f"create endpoint config {want.name}: {want.count} x "
                                   f"{want.instance.name}, variant {VARIANT}", want.config))


def _endpoint(cur: Current, want: Desired, plan: EndpointPlan) -> bool:
    """The endpoint's actions; whether its scaling target is lifted for the update (an
    instance type change: SageMaker refuses to change a scaled variant's type)."""
    create = {"EndpointName": want.endpoint, "EndpointConfigName": want.name, "Tags": want.tags}
    status = (cur.endpoint or {}).get("EndpointStatus")
    if cur.endpoint is None:
        plan.actions.append(Action("create_endpoint", f"create endpoint {want.endpoint} on {want.name} (waits until "
                                   "InService)", create))
        return False
    if status == "Failed":
        reason = cur.endpoint.get("FailureReason") or "no reason given"
        plan.actions.append(Action("delete_endpoint", f"delete endpoint {want.endpoint}: it is Failed ({reason}) and "
                                   "SageMaker cannot update a failed endpoint", {"EndpointName": want.endpoint}))
        plan.actions.append(Action("create_endpoint", f"create endpoint {want.endpoint} on {want.name}", create))
        return False
    if cur.endpoint["EndpointConfigName"] == want.name and status == "InService":
        plan.notes.append(f"endpoint {want.endpoint} runs {want.name}: InService")
        return False
    if status != "InService":  # UpdateRollbackFailed, OutOfService: an update brings it back
        plan.notes.append(f"endpoint {want.endpoint} is {status}"
                          + (f" ({cur.endpoint['FailureReason']})" if cur.endpoint.get("FailureReason") else ""))
    old_type = ((cur.serving or {}).get("ProductionVariants") or [{}])[0].get("InstanceType")
    lifted = cur.scaling is not None and old_type != want.instance.name
    if lifted:
        plan.actions.append(Action("deregister_scalable_target", f"lift autoscaling of {want.endpoint} while its "
                                   f"instance type changes ({old_type} -> {want.instance.name})",
                                   target_key(want.endpoint)))
    update = {"EndpointName": want.endpoint, "EndpointConfigName": want.name}
    if want.scaling is not None and cur.scaling is not None:
        update["RetainAllVariantProperties"] = True  # the scaler's instance count, not the config's initial one
    plan.actions.append(Action("update_endpoint", f"update endpoint {want.endpoint}: {cur.endpoint['EndpointConfigName']}"
                               f" -> {want.name} (blue/green; waits until InService, the old fleet serves until then)",
                               update))
    plan.actions.append(Action("add_tags", f"tag endpoint {want.endpoint} with fingerprint {want.fingerprint[:16]}",
                               {"ResourceArn": cur.endpoint["EndpointArn"], "Tags": want.tags}))
    return lifted


def target_key(endpoint: str) -> dict:
    return {"ServiceNamespace": "sagemaker", "ResourceId": resource_id(endpoint), "ScalableDimension": DIMENSION}


def _scaling(cur: Current, want: Desired, plan: EndpointPlan, lifted: bool) -> None:
    key = target_key(want.endpoint)
    target, policy = (None, None) if lifted else (cur.scaling, cur.policy)
    if want.scaling_off:
        if policy:
            plan.actions.append(Action("delete_scaling_policy", f"delete scaling policy {POLICY} of {want.endpoint}",
                                       {"PolicyName": POLICY, **key}))
        if target:
            plan.actions.append(Action("deregister_scalable_target", f"remove autoscaling of {want.endpoint}", key))
        if not (policy or target):
            plan.notes.append("no autoscaling to remove")
        return
    s = want.scaling
    if s is None:
        return
    if target is None or (target["MinCapacity"], target["MaxCapacity"]) != (s.low, s.high):
        plan.actions.append(Action("register_scalable_target", f"autoscale {want.endpoint} between {s.low} and "
                                   f"{s.high} instances" + (" (again)" if lifted else ""),
                                   {**key, "MinCapacity": s.low, "MaxCapacity": s.high}))
    now = ((policy or {}).get("TargetTrackingScalingPolicyConfiguration") or {}).get("TargetValue")
    if now is None or float(now) != float(s.target):
        plan.actions.append(Action("put_scaling_policy", f"target {s.target} invocations per instance per minute "
                                   f"(SageMakerVariantInvocationsPerInstance)" + (f", was {now:g}" if now else ""),
                                   {"PolicyName": POLICY, **key, "PolicyType": "TargetTrackingScaling",
                                    "TargetTrackingScalingPolicyConfiguration": {
                                        "TargetValue": float(s.target),
                                        "PredefinedMetricSpecification": {
                                            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                                        "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S,
                                        "ScaleInCooldown": SCALE_IN_COOLDOWN_S}}))
    elif target is not None:
        plan.notes.append(f"autoscaling {s.low}..{s.high} at {s.target} invocations per instance per minute: as is"
                          + ("" if s.how_given else " (--autoscale MIN:MAX changes it, --no-autoscale removes it)"))


def _cleanup(cur: Current, want: Desired, plan: EndpointPlan) -> None:
    """Configs (and their models) beyond the newest `keep` that the endpoint no longer
    uses, once it runs the new one."""
    # What the endpoint ran before this deploy is the rollback: kept first, then the newest.
    serving = (cur.endpoint or {}).get("EndpointConfigName")
    unused = sorted((c for c in cur.configs if c["name"] != want.name), key=lambda c: c["name"] != serving)
    kept, gone = unused[:want.keep], unused[want.keep:]
    if kept:
        plan.notes.append(f"kept for a rollback: {', '.join(c['name'] for c in kept)} (redeploy its build to return)")
    needed = {want.name} | {c["model"] for c in kept}
    for c in gone:
        plan.actions.append(Action("delete_endpoint_config", f"delete unused endpoint config {c['name']}",
                                   {"EndpointConfigName": c["name"]}))
        if c["model"] in cur.models and c["model"] not in needed:
            plan.actions.append(Action("delete_model", f"delete unused model {c['model']}", {"ModelName": c["model"]}))
            needed.add(c["model"])


def diff(cur: Current, want: Desired, image: ServeImage) -> EndpointPlan:
    plan = EndpointPlan(want.endpoint, cur.region, image, want,
                        cur.endpoint["EndpointConfigName"] if cur.endpoint else None, notes=list(cur.notes))
    plan.actions += cur.image_actions
    _model_and_config(cur, want, plan)
    lifted = _endpoint(cur, want, plan)
    _scaling(cur, want, plan, lifted)
    _cleanup(cur, want, plan)
    return plan


def make_plan(image: ServeImage, options: EndpointOptions, clients) -> EndpointPlan:
    # The instance and the scaling target need no AWS to be checked: refused before the first read.
    if options.instance_type:
        inst = instance(options.instance_type)
        why = check(inst, image.manifest, image.architecture)
    else:
        inst = default_instance(image.manifest, image.architecture)
        why = ["default for the target"] + check(inst, image.manifest, image.architecture)
    if options.autoscale:
        autoscale_target(image, inst, options.target_invocations)
    current = read_current(clients, options, image)
    return diff(current, desired(image, options, current, inst, why), image)


def describe_result(plan: EndpointPlan) -> dict:
    w = plan.want
    return {"endpoint": plan.endpoint, "region": plan.region, "config": w.name, "fingerprint": w.fingerprint,
            "instance_type": w.instance.name, "instances": w.count, "changed": plan.changes,
            "autoscale": ({"min": w.scaling.low, "max": w.scaling.high, "target_invocations": w.scaling.target}
                          if w.scaling else None), "image": str(plan.image.path)}
