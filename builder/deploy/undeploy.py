"""`edgebundle undeploy`: remove a Lambda function or a SageMaker endpoint and what
edgebundle created for it, planned like a deploy (read-only calls make the plan, which a
dry run prints) and carried out by the same executor.

Only what edgebundle made is removed, as its tags record: a function or endpoint without
the edgebundle:model tag is refused. Lambda: the function (its versions, aliases and URL
go with it) and the runtime layer versions it used that no other function uses. SageMaker:
the autoscaling edgebundle set, the endpoint, and every endpoint config and model tagged
edgebundle:endpoint=NAME. Images in ECR and zips in S3 stay (other deploys may share them).
"""
from __future__ import annotations

import dataclasses

from builder.deploy.resources import Action, get, listed
from builder.deploy.sagemaker import POLICY, TAG_MODEL, owned, scaling_now, tags_of, target_key
from builder.errors import DeployError
from builder.options import UndeployOptions

RUNTIME_LAYER = ":layer:edgebundle-runtime-"


@dataclasses.dataclass
class UndeployPlan:
    kind: str  # "function" | "endpoint"
    name: str
    region: str
    actions: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    def render(self) -> str:
        lines = [f"Plan: remove {'Lambda function' if self.kind == 'function' else 'SageMaker endpoint'} "
                 f"{self.name} in {self.region}"]
        lines += [f"  = {note}" for note in self.notes]
        lines += [f"  - {a.summary}" for a in self.actions]
        if not self.actions:
            lines.append(f"  nothing to remove: no {self.kind} {self.name} and nothing edgebundle made for it")
        return "\n".join(lines)


def _not_ours(kind: str, name: str) -> DeployError:
    return DeployError(f"{kind} {name} was not created by edgebundle (it has no {TAG_MODEL} tag): not removed",
                       where=name, hint="delete it yourself if it should go, or check the name and --region")


def _layer_key(arn: str) -> tuple[str, int]:
    """(the layer's ARN without its version, the version): the ARN, not the bare name, so
    that the layer deleted is the one the function used."""
    layer, version = arn.rsplit(":", 1)
    return layer, int(version)


def plan_function(clients, name: str) -> UndeployPlan:
    lam = clients("lambda")
    plan = UndeployPlan("function", name, clients.region_name)
    current = get(lam.get_function, f"reading function {name}", FunctionName=name)
    if current is None:
        return plan
    if TAG_MODEL not in (current.get("Tags") or {}):
        raise _not_ours("Lambda function", name)
    versions = listed(lam.list_versions_by_function, "Versions", f"listing versions of {name}", FunctionName=name)
    # Runtime layers of this account only: one shared from another account is not ours to delete.
    account = current["Configuration"]["FunctionArn"].split(":")[4]
    ours = sorted({layer["Arn"] for v in versions for layer in v.get("Layers") or []
                   if RUNTIME_LAYER in layer["Arn"] and layer["Arn"].split(":")[4] == account})
    aliases = listed(lam.list_aliases, "Aliases", f"listing aliases of {name}", FunctionName=name)
    plan.actions.append(Action("delete_function", f"delete function {name} ({len(versions) - 1} published "
                               f"version(s), alias(es) {', '.join(a['Name'] for a in aliases) or 'none'}, and any "
                               "function URL with it)", {"FunctionName": name}))
    if ours:
        others = listed(lam.list_functions, "Functions", "listing the region's functions (who else uses the layer)",
                        FunctionVersion="ALL")
        used = {layer["Arn"]: f["FunctionName"] for f in others if f["FunctionName"] != name
                for layer in f.get("Layers") or []}
        for arn in ours:
            if arn in used:
                plan.notes.append(f"layer {arn.rsplit(':', 2)[-2]}:{arn.rsplit(':', 1)[-1]} kept: function "
                                  f"{used[arn]} uses it")
                continue
            layer, version = _layer_key(arn)
            plan.actions.append(Action("delete_layer_version", f"delete runtime layer {layer.rsplit(':', 1)[-1]} "
                                       f"version {version}", {"LayerName": layer, "VersionNumber": version}))
    return plan


def plan_endpoint(clients, name: str) -> UndeployPlan:
    sm = clients("sagemaker")
    plan = UndeployPlan("endpoint", name, clients.region_name)
    endpoint = get(sm.describe_endpoint, f"reading endpoint {name}", EndpointName=name)
    if endpoint is not None:
        if TAG_MODEL not in tags_of(sm, endpoint["EndpointArn"], f"reading the tags of {name}"):
            raise _not_ours("SageMaker endpoint", name)
        target, policy = scaling_now(clients, name)
        if policy:
            plan.actions.append(Action("delete_scaling_policy", f"delete scaling policy {POLICY}",
                                       {"PolicyName": POLICY, **target_key(name)}))
        if target:
            plan.actions.append(Action("deregister_scalable_target", f"remove autoscaling "
                                       f"{target['MinCapacity']}..{target['MaxCapacity']}", target_key(name)))
        plan.actions.append(Action("delete_endpoint", f"delete endpoint {name} (on {endpoint['EndpointConfigName']}; "
                                   "waits until it is gone)", {"EndpointName": name}))
    configs, models = owned(sm, name)
    for c in configs:
        plan.actions.append(Action("delete_endpoint_config", f"delete endpoint config {c['name']}",
                                   {"EndpointConfigName": c["name"]}))
    for model in sorted(models):
        plan.actions.append(Action("delete_model", f"delete model {model}", {"ModelName": model}))
    return plan


def make_plan(options: UndeployOptions, clients) -> UndeployPlan:
    if options.function_name:
        return plan_function(clients, options.function_name)
    return plan_endpoint(clients, options.endpoint_name)
