"""The Lambda handler's per-request line: a structured log and a CloudWatch Embedded Metric
Format document (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)."""
from __future__ import annotations

import json

from runtime.lambda_handler import _input_bytes, record


def _check_emf(doc: dict) -> None:
    meta = doc["_aws"]
    assert isinstance(meta["Timestamp"], int)
    for directive in meta["CloudWatchMetrics"]:
        for dims in directive["Dimensions"]:
            assert all(isinstance(doc[d], str) for d in dims)  # every dimension is a member
        for metric in directive["Metrics"]:
            assert isinstance(doc[metric["Name"]], (int, float))  # every metric has a value


def test_record_is_emf_and_a_structured_log():
    doc = json.loads(record("all-MiniLM-L6-v2", "req-1", 0.0123, True, 42, "ok"))
    _check_emf(doc)
    assert doc["Latency"] == 12.3 and doc["ColdStart"] == 1 and doc["Errors"] == 0
    assert doc["requestId"] == "req-1" and doc["inputBytes"] == 42 and doc["Model"] == "all-MiniLM-L6-v2"
    # Bad input is the caller's error, not the function's; anything else counts.
    assert json.loads(record("m", "r", 0.001, False, 1, "bad_input"))["Errors"] == 0
    assert json.loads(record("m", "r", 0.001, False, 1, "error"))["Errors"] == 1


def test_input_bytes():
    assert _input_bytes({"inputs": "hi"}) == len('{"inputs":"hi"}')
    assert _input_bytes({"requestContext": {}, "body": "abcd"}) == 4
    assert _input_bytes({"requestContext": {}, "body": None}) == 0
