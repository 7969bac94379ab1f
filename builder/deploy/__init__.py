"""`edgebundle deploy`, `undeploy` and `invoke --function / --sagemaker-endpoint`: bundles
onto AWS Lambda, serving images onto SageMaker endpoints.

    bundle.py     what is deployed, found and checked before any AWS call
    plan.py       Lambda: read_current (read-only calls) -> desired -> diff: a Plan; --dry-run prints it
    sagemaker.py  SageMaker endpoints: read_current -> desired -> diff, the same Plan shape
    instances.py  SageMaker instance types (CPU, GPU, memory) and the checks against a build
    undeploy.py   removing a function or an endpoint and what edgebundle made for it
    executor.py   the only code that changes AWS: carries a plan out, pushes images
    layer.py      --runtime-layer: the zip split into a shared runtime layer + the model
    aws.py        sessions, clients, retries and one-line errors
    remote.py     invoking a deployed function or endpoint with local event files

boto3 is imported inside these functions only: `edgebundle --help` stays instant, and
building needs no AWS SDK.
"""
from __future__ import annotations

from pathlib import Path

from builder.options import DeployOptions, EndpointOptions, UndeployOptions


def deploy(path: Path, options: DeployOptions, progress, clients=None, pusher=None) -> dict:
    """Plan, print the plan, and (unless options.dry_run) carry it out. Returns a summary:
    function, alias, version, fingerprint, changed, url."""
    from builder.deploy.aws import Clients
    from builder.deploy.bundle import open_bundle
    from builder.deploy.executor import Executor
    from builder.deploy.plan import describe_result, make_plan

    _require_boto3()
    bundle = open_bundle(path, options.package)
    clients = clients or Clients(options.profile, options.region)
    with progress.step(f"read the current state of {options.function_name} on AWS"):
        plan = make_plan(bundle, options, clients)
    progress.info(plan.render())
    if options.function_url == "NONE":
        progress.warn(f"--public-function-url: the function URL of {plan.function}:{plan.alias} takes requests "
                      "without authentication: anyone who knows it can call the model, and you pay for each call")
    if options.dry_run:
        progress.info("dry run: nothing was changed")
        return {**describe_result(plan, {}), "dry_run": True, "plan": [a.summary for a in plan.actions]}
    values = Executor(clients, progress, pusher).run(plan)
    result = describe_result(plan, values)
    if plan.changes:
        progress.info(f"deployed: {plan.function}:{plan.alias} -> version {result['version']}"
                      + (f"; URL {result['url']}" if result.get("url") else ""))
    else:
        progress.info(f"nothing new published: {plan.function}:{plan.alias} is version {result['version']}")
    return result


def deploy_endpoint(path: Path, options: EndpointOptions, progress, clients=None, pusher=None) -> dict:
    """A serving image onto a SageMaker endpoint: plan, print, and (unless a dry run) carry
    it out. Returns a summary: endpoint, config, fingerprint, changed, ..."""
    from builder.deploy.aws import Clients
    from builder.deploy.bundle import open_serve_image
    from builder.deploy.executor import Executor
    from builder.deploy.sagemaker import describe_result, make_plan

    _require_boto3()
    image = open_serve_image(path)
    clients = clients or Clients(options.profile, options.region)
    with progress.step(f"read the current state of endpoint {options.endpoint_name} on AWS"):
        plan = make_plan(image, options, clients)
    progress.info(plan.render())
    if options.dry_run:
        progress.info("dry run: nothing was changed")
        return {**describe_result(plan), "dry_run": True, "plan": [a.summary for a in plan.actions]}
    Executor(clients, progress, pusher).run(plan)
    progress.info(f"deployed: endpoint {plan.endpoint} runs {plan.want.name}" if plan.changes else
                  f"nothing changed: endpoint {plan.endpoint} runs {plan.want.name}")
    return describe_result(plan)


def undeploy(options: UndeployOptions, progress, clients=None) -> dict:
    """Remove a function or an endpoint and what edgebundle made for it (planned first)."""
    from builder.deploy.aws import Clients
    from builder.deploy.executor import Executor
    from builder.deploy.undeploy import make_plan

    _require_boto3()
    clients = clients or Clients(options.profile, options.region)
    plan = make_plan(options, clients)
    progress.info(plan.render())
    result = {"kind": plan.kind, "name": plan.name, "region": plan.region, "changed": plan.changes,
              "removed": [a.summary for a in plan.actions]}
    if options.dry_run:
        progress.info("dry run: nothing was changed")
        return {**result, "dry_run": True}
    Executor(clients, progress).run(plan)
    progress.info(f"removed {plan.kind} {plan.name}" if plan.changes else "nothing was removed")
    return result


def _require_boto3() -> None:
    import importlib

    try:
        importlib.import_module("boto3")
    except ImportError:
        from builder.errors import ToolMissingError

        raise ToolMissingError("deploy, undeploy and invoke --function / --sagemaker-endpoint need boto3, which is not "
                               "installed",
                               hint="pip install 'edgebundle[aws]' (or pip install boto3)") from None
