"""Requests in, answers out: the event contract every handler (Lambda, container server,
edge server) shares.

Direct events: {"inputs": ..., "parameters": {...}} (task mode) or {"tensors": {...}}.
HTTP events (Function URL, API Gateway v1/v2): the same JSON in the body, answered as
{"statusCode", "headers", "body"}; bad input is a 400 with {"error": ...}.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import sys
import traceback

from .errors import BadInput

_JSON_HEADERS = {"content-type": "application/json"}


def _no_constant(name: str):
    raise BadInput(f"the JSON holds {name}, which is not JSON (RFC 8259); only finite numbers are accepted")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: a valid JSON number, but no float holds it
        raise BadInput(f"the JSON holds the number {text[:40]}, beyond the range of a float")
    return value


def loads(body):
    """A request body (str or bytes) -> its JSON value; BadInput for anything that is not
    strict JSON (NaN and Infinity included), numbers no float holds (1e400) or integers
    longer than Python converts (4300 digits), or that nests too deeply to parse."""
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadInput("the body's JSON is nested too deeply") from None
    except BadInput:
        raise
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise BadInput(f"the body is not valid JSON: {str(e)[:200]}") from None


def dumps(value) -> str:
    """Strict JSON: a non-finite float is a bug (outputs are checked before), never a bare NaN."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def is_http_event(event) -> bool:
    return isinstance(event, dict) and (
        "requestContext" in event or "httpMethod" in event or "rawPath" in event
    )


def decode(model, request):
    """A decoded request (direct invocation, /invocations) -> (the items to run, a function
    from their outputs to the answer); raises BadInput."""
    if not isinstance(request, dict):
        raise BadInput(f"the request must be a JSON object with \"inputs\" or \"tensors\", got {type(request).__name__}")
    if "tensors" in request and "inputs" in request:
        raise BadInput('send either "inputs" (task mode) or "tensors" (tensor mode), not both')
    if "tensors" in request:
        def tensors(outputs):
            return {"tensors": {name: value.tolist() for name, value in model.check_finite(outputs[0]).items()}}

        return [model.prepare(request["tensors"])], tensors
    if "inputs" in request:
        parameters = model.check_parameters(request.get("parameters"))
        single, items = model.encode(request["inputs"])
        return items, lambda outputs: model.answers(single, outputs, parameters)
    raise BadInput('missing "inputs" (task mode) or "tensors" (tensor mode); '
                   f'the request has keys {sorted(request)}')


def answer(model, request, execute=None) -> dict | list:
    """Answer one decoded request; raises BadInput. `execute` runs the items (default: one by
    one; the model server passes its batcher)."""
    items, finish = decode(model, request)
    return finish((execute or model.execute_each)(items))


def _http_method(event: dict) -> str:
    ctx = event.get("requestContext")
    http = ctx.get("http") if isinstance(ctx, dict) else None
    method = event.get("httpMethod") or (http.get("method") if isinstance(http, dict) else None) or "POST"
    return method.upper() if isinstance(method, str) else "?"


def _http_response(status: int, payload) -> dict:
    return {"statusCode": status, "headers": dict(_JSON_HEADERS), "body": dumps(payload)}


def handle_http(model, event: dict) -> dict:
    method = _http_method(event)
    if method == "GET":  # a health check / what-is-this probe
        return _http_response(200, model.info())
    if method != "POST":
        return _http_response(405, {"error": f"method {method} not allowed; POST a JSON body"})
    body = event.get("body")
    try:
        if body is None or body == "":
            raise BadInput("the request body is empty; POST a JSON object")
        if not isinstance(body, str):
            raise BadInput(f'the event\'s "body" is {type(body).__name__}; API Gateway and function URLs send a string')
        if event.get("isBase64Encoded"):
            try:
                body = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                raise BadInput("the body is marked base64 but does not decode") from None
        return _http_response(200, answer(model, loads(body)))
    except BadInput as e:
        return _http_response(400, {"error": str(e)})
    except Exception:  # never a stack trace to the client; the log keeps it
        traceback.print_exc(file=sys.stderr)
        return _http_response(500, {"error": "internal error while running the model; see the function's logs"})


def handle(model, event):
    """Entry point for any invocation: HTTP events never raise, direct ones raise BadInput."""
    if is_http_event(event):
        return handle_http(model, event)
    return answer(model, event)
