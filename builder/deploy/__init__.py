"""`edgebundle deploy` and `edgebundle invoke --function`: Lambda bundles onto AWS.

    bundle.py    what is deployed, found and checked before any AWS call
    sizing.py    memory, timeout and threads from the model, by one documented rule
    plan.py      desired vs current state -> a Plan (read-only calls); --dry-run prints it
    executor.py  the only code that changes AWS: carries a Plan out, pushes images
    layer.py     --runtime-layer: the zip split into a shared runtime layer + the model
    aws.py       sessions, clients, retries and one-line errors
    remote.py    invoking a deployed function with local event files

boto3 is imported inside these functions only: `edgebundle --help` stays instant, and
building needs no AWS SDK.
"""
from __future__ import annotations

from pathlib import Path

from builder.options import DeployOptions


def deploy(path: Path, options: DeployOptions, progress, clients=None, pusher=None) -> dict:
    """Plan, print the plan, and (unless options.dry_run) carry it out. Returns a summary:
    function, alias, version, fingerprint, changed, url."""
    from builder.deploy.aws import Clients
    from builder.deploy.bundle import open_bundle
    from builder.deploy.executor import Executor, describe_result
    from builder.deploy.plan import make_plan

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


def _require_boto3() -> None:
    try:
        import boto3  # noqa: F401
    except ImportError:
        from builder.errors import ToolMissingError

        raise ToolMissingError("deploy and invoke --function need boto3, which is not installed",
                               hint="pip install 'edgebundle[aws]' (or pip install boto3)") from None
