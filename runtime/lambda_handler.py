"""AWS Lambda entry: the model loads in the init phase (module import), once per sandbox.

Each invocation writes one JSON line to stdout (CloudWatch Logs): the request id, model,
latency, cold start or not, input size and outcome, which is also a CloudWatch Embedded
Metric Format document, so Latency, ColdStart and Errors become metrics without an agent,
an SDK call or a dependency.

SnapStart (python3.12+): Lambda's runtime provides `snapshot_restore_py`; the model is
warmed before the snapshot (its code paged in and memory pools allocated are saved with
it), and after a restore the random state is re-seeded (every restored copy would
otherwise share it) and the next invocation counts as a cold start.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time

from . import load
from .errors import BadInput
from .events import handle, is_http_event

NAMESPACE = "edgebundle"


def _input_bytes(event) -> int:
    if is_http_event(event):
        body = event.get("body")
        return len(body) if isinstance(body, str) else 0
    try:
        return len(json.dumps(event, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):  # the log line must never fail the invocation
        return 0


def record(model_name: str, request_id: str, seconds: float, cold: bool, size: int, outcome: str) -> str:
    """The per-request log line: a structured log and an EMF document at once."""
    return json.dumps({
        "_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": [{
            "Namespace": NAMESPACE, "Dimensions": [["Model"]],
            "Metrics": [{"Name": "Latency", "Unit": "Milliseconds"}, {"Name": "ColdStart", "Unit": "Count"},
                        {"Name": "Errors", "Unit": "Count"}]}]},
        "Model": model_name, "Latency": round(seconds * 1000, 3), "ColdStart": int(cold),
        "Errors": int(outcome not in ("ok", "bad_input")),
        "event": "request", "requestId": request_id, "inputBytes": size, "outcome": outcome,
    }, separators=(",", ":"))


def make_handler(model_dir: str):
    start = time.perf_counter()
    model = load(model_dir)
    name = model.manifest.model.name
    print(f"edgebundle: loaded {name} ({model.task}) in {(time.perf_counter() - start) * 1000:.0f} ms, "
          f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, variant {model.variant.name} "
          f"({model.variant_reason})", file=sys.stderr, flush=True)
    state = {"cold": True}

    def handler(event, context):
        t0 = time.perf_counter()
        cold, state["cold"] = state["cold"], False
        outcome = "error"
        try:
            answer = handle(model, event)
            status = answer.get("statusCode", 200) if isinstance(answer, dict) and is_http_event(event) else 200
            outcome = "ok" if status < 400 else "bad_input" if status < 500 else "error"
            return answer
        except BadInput:
            outcome = "bad_input"
            raise
        finally:
            print(record(name, getattr(context, "aws_request_id", "-"), time.perf_counter() - t0, cold,
                         _input_bytes(event), outcome), flush=True)

    handler.model = model
    _snapstart_hooks(model, state)
    return handler


def _snapstart_hooks(model, state: dict) -> None:
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:  # not Lambda's python3.12+ runtime: no snapshots here
        return

    def before_snapshot():
        t0 = time.perf_counter()
        model.warm()
        print(f"edgebundle: warmed {model.manifest.model.name} for the SnapStart snapshot in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms", file=sys.stderr, flush=True)

    def after_restore():
        random.seed()  # from os.urandom: restored copies must not share a random sequence
        state["cold"] = True

    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)
