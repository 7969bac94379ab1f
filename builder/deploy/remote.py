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
