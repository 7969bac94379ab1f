"""`edgebundle invoke --function NAME[:ALIAS]`: the deployed function, called with the same
event files as a local invoke, answers printed the same way (one JSON line each)."""
from __future__ import annotations

import base64
import json
import sys
from typing import TextIO

from builder.deploy import aws
from builder.errors import DeployError


def split_name(text: str) -> tuple[str, str | None]:
    """NAME[:QUALIFIER]; a full function ARN keeps its own colons."""
    if text.startswith("arn:"):
        parts = text.split(":")
        return ":".join(parts[:7]), (parts[7] if len(parts) > 7 else None)
    name, _, qualifier = text.partition(":")
    if not name:
        raise DeployError(f"--function {text!r}: no function name", hint="pass NAME or NAME:ALIAS")
    return name, qualifier or None


def invoke_function(function: str, events: list[bytes], clients, out: TextIO | None = None,
                    err: TextIO | None = None, progress=None) -> int:
    """Each event once, in order. 0: all answered; 1: the function raised (its error and
    the tail of its log are printed)."""
    from builder.local.runtime_api import check_events, one_line_json

    out, err = out or sys.stdout, err or sys.stderr
    check_events(events)
    name, qualifier = split_name(function)
    lam = clients.invoke_client()
    status = 0
    for i, event in enumerate(events, 1):
        params = {"FunctionName": name, "Payload": event, "LogType": "Tail",
                  **({"Qualifier": qualifier} if qualifier else {})}
        response = aws.call(lam.invoke, f"invoking {function} (event {i})", where=function, **params)
        body = response["Payload"].read()
        print(one_line_json(body), file=out, flush=True)
        if response.get("FunctionError"):
            status = 1
            tail = base64.b64decode(response.get("LogResult") or "").decode(errors="replace").rstrip()
            try:
                error = json.loads(body)
                summary = f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"
            except (ValueError, AttributeError):
                summary = body.decode(errors="replace")[:500]
            print(f"event {i}: the function failed ({response['FunctionError']}): {summary}", file=err)
            if tail:
                print(f"--- log tail of {function} (last 4 KB) ---\n{tail}\n---", file=err, flush=True)
        elif progress is not None and response.get("ExecutedVersion"):
            progress.info(f"invoke {i}: version {response['ExecutedVersion']}")
    return status


def endpoint_request(event: bytes) -> dict:
    """InvokeEndpoint's parameters for one event file: the task / tensor JSON as the body of
    the container's POST /invocations, as the model server takes it."""
    return {"Body": event, "ContentType": "application/json", "Accept": "application/json"}


def invoke_endpoint(endpoint: str, events: list[bytes], clients, out: TextIO | None = None,
                    err: TextIO | None = None) -> int:
    """Each event once, in order, through sagemaker-runtime. 0: all answered; 1: the model
    server refused one (its status and error are printed, the others still run)."""
    from builder.local.runtime_api import check_events, one_line_json

    out, err = out or sys.stdout, err or sys.stderr
    check_events(events)
    runtime = clients.invoke_client("sagemaker-runtime")
    status = 0
    for i, event in enumerate(events, 1):
        try:
            response = runtime.invoke_endpoint(EndpointName=endpoint, **endpoint_request(event))
        except Exception as e:  # noqa: BLE001 - a ModelError is the server's answer; the rest is translated
            if aws.error_code(e) != "ModelError":
                raise aws.translate(e, f"invoking endpoint {endpoint} (event {i})", where=endpoint) from e
            error = getattr(e, "response", {}) or {}
            code = error.get("OriginalStatusCode") or "?"
            body = (error.get("OriginalMessage") or aws.error_message(e)).encode()
            print(one_line_json(body), file=out, flush=True)
            print(f"event {i}: the model server answered {code}", file=err, flush=True)
            status = 1
            continue
        print(one_line_json(response["Body"].read()), file=out, flush=True)
    return status
