"""Hostile input, one finding of the hardening review per test: each failed before its fix.

The model-free ones (the batcher's queue, arrays) run on a fake model; the rest on the tiny
builds, in-process and through the server's WSGI application (no sockets needed)."""
from __future__ import annotations

import base64
import io
import json

import pytest

from runtime.arrays import MAX_NDIM, all_finite, as_tensor, pack, shaped
from runtime.batching import QueueFull
from test_server import FakeItem, FakeModel, _batcher, _hold, _submit_async
from runtime.errors import BadInput
from runtime.events import handle
from runtime.limits import MAX_ASPECT, MAX_INPUTS


# -- arrays -----------------------------------------------------------------------------------
def test_nesting_deeper_than_memoryview_allows_is_bad_input():
    deep = 1
    for _ in range(MAX_NDIM + 1):
        deep = [deep]
    with pytest.raises(BadInput, match="nested deeper"):
        as_tensor(deep, "x", "float32")
    with pytest.raises(BadInput, match="nested deeper than its shape allows \\(2 "):
        as_tensor([[[1]]], "x", "int64", max_ndim=2)


def test_element_count_is_bounded_before_copying():
    with pytest.raises(BadInput, match="more than 6 values"):
        as_tensor([[1, 2, 3, 4], [5, 6, 7, 8]], "x", "int64", max_elements=6)
    assert as_tensor([[1, 2, 3], [4, 5, 6]], "x", "int64", max_elements=6).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e300, -1e39])
def test_non_finite_or_overflowing_floats_are_refused(value):
    with pytest.raises(BadInput, match="inf, nan"):
        as_tensor([[0.5, value]], "x", "float32")


def test_all_finite_reads_every_element():
    import numpy as np

    for dtype in ("float32", "float64"):
        values = np.linspace(-3e38, 3e38, 1001).astype(dtype)
        assert all_finite(memoryview(values))
        for bad in (np.inf, -np.inf, np.nan):
            for where in (0, 500, 1000):
                v = values.copy()
                v[where] = bad
                assert not all_finite(memoryview(v)), (dtype, bad, where)
        strided = memoryview(np.stack([values, values]).T)  # not C-contiguous
        assert all_finite(strided)
        # the largest finite values, subnormals and negative zero are finite
        edge = np.array([np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny / 2, -0.0], dtype)
        assert all_finite(memoryview(edge))
        # it reads in chunks of 65536 elements: either side of a chunk's end, and a last partial one
        n = 2 * 65536 + 3
        for where in (0, 65535, 65536, n - 1):
            v = np.ones(n, dtype)
            v[where] = np.nan
            assert not all_finite(memoryview(v)), (dtype, where)
        assert all_finite(memoryview(np.ones(n, dtype)))
    assert all_finite(shaped(pack([1, 2], "int64"), "int64", [2]))


# -- the batcher: rows, not requests; fair take ----------------------------------------------------
def test_queue_limit_counts_rows():
    model = FakeModel()
    b = _batcher(model, max_batch=4, max_queue=5)
    held = _hold(b, model)
    big = _submit_async(b, [FakeItem(f"big{n}") for n in range(4)])  # 4 rows: one request
    assert b.depth == 1 and b.rows == 4
    with pytest.raises(QueueFull):
        b.submit([FakeItem("x"), FakeItem("y")], 5)  # 4 + 2 rows > 5
    small = _submit_async(b, [FakeItem("small")])  # 4 + 1 fits
    model.gate.set()
    for t, out in (held, big, small):
        t.join(10)
        assert "value" in out
    assert b.rows == 0


def test_a_large_request_does_not_hold_back_later_ones():
    """Items are taken one per request in turn: a request queued behind one of many items
    runs in the first batch, not after all of them."""
    model = FakeModel()
    b = _batcher(model, max_batch=2, max_queue=100)
    held = _hold(b, model)
    big = _submit_async(b, [FakeItem(f"big{n}") for n in range(8)])
    small = _submit_async(b, [FakeItem("small")])
    model.gate.set()
    for t, out in (held, big, small):
        t.join(10)
    assert model.batches[1] == ["big0", "small"]
    assert [v for batch in model.batches[2:] for v in batch] == [f"big{n}" for n in range(1, 8)]
    assert [o[0] for o in big[1]["value"][0]] == [f"big{n}" for n in range(8)]


# -- the models (the `bert` and `resnet` fixtures: conftest.py) ---------------------------------------
def _png(width, height) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def _image(fmt, size=(40, 40)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_a_thin_strip_image_is_refused_before_resizing(resnet):
    """A 118-byte 1x20000 PNG used to be resized to 256x5,120,000 pixels (~5 GB)."""
    strip = _png(1, 20000)
    assert len(base64.b64decode(strip)) < 200
    with pytest.raises(BadInput, match=f"at most {MAX_ASPECT} times"):
        handle(resnet, {"inputs": strip})
    with pytest.raises(BadInput, match=f"at most {MAX_ASPECT} times"):
        handle(resnet, {"inputs": _png(MAX_ASPECT * 10 + 1, 10)})
    assert len(handle(resnet, {"inputs": _png(MAX_ASPECT * 10, 10)})) >= 1  # the bound itself is accepted


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "ICO", "PPM"])
def test_only_jpeg_png_and_webp_are_decoded(resnet, fmt):
    with pytest.raises(BadInput, match="JPEG, PNG or WebP"):
        handle(resnet, {"inputs": _image(fmt)})


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_documented_image_formats_are_decoded(resnet, fmt):
    assert handle(resnet, {"inputs": _image(fmt)})[0]["label"]


@pytest.mark.slow
def test_inputs_per_request_are_bounded_before_tokenizing(bert, monkeypatch):
    tokenized = []
    encode = bert.encoder.__class__.__call__
    monkeypatch.setattr(bert.encoder.__class__, "__call__", lambda self, texts: tokenized.append(len(texts))
                        or encode(self, texts))
    with pytest.raises(BadInput, match=f"at most {MAX_INPUTS}"):
        handle(bert, {"inputs": ["a"] * (MAX_INPUTS + 1)})
    assert tokenized == []
    assert len(handle(bert, {"inputs": ["a"] * MAX_INPUTS})) == MAX_INPUTS


@pytest.mark.slow
def test_nan_and_infinity_in_a_body_are_400(bert):
    for body in ('{"tensors": {"input_ids": [[NaN]]}}', '{"inputs": "hi", "parameters": {"x": Infinity}}',
                 '{"inputs": "hi", "x": -Infinity}'):
        resp = handle(bert, {"httpMethod": "POST", "path": "/", "requestContext": {}, "body": body})
        assert resp["statusCode"] == 400 and "finite" in json.loads(resp["body"])["error"], resp


@pytest.mark.slow
def test_float32_overflow_and_non_finite_outputs_are_400_never_nan(resnet):
    shape = [1, 3, *resnet.inputs[0].shape[2:]]
    n = shape[1] * shape[2] * shape[3]

    def pixels(value):
        flat = [value] * n
        return [[[flat[(c * shape[2] + y) * shape[3]:(c * shape[2] + y + 1) * shape[3]] for y in range(shape[2])]
                 for c in range(3)]]

    event = {"httpMethod": "POST", "path": "/", "requestContext": {}}
    resp = handle(resnet, {**event, "body": json.dumps({"tensors": {"pixel_values": pixels(1e300)}})})
    assert resp["statusCode"] == 400 and "inf, nan" in resp["body"]
    # Finite float32 values at the top of the range overflow inside the compiled code.
    resp = handle(resnet, {**event, "body": json.dumps({"tensors": {"pixel_values": pixels(3e38)}})})
    assert resp["statusCode"] in (200, 400), resp
    assert "NaN" not in resp["body"] and "Infinity" not in resp["body"]
    json.loads(resp["body"], parse_constant=lambda c: pytest.fail(f"{c} in the answer"))
    if resp["statusCode"] == 400:
        assert "not finite" in resp["body"]
    with pytest.raises(BadInput):
        handle(resnet, {"tensors": {"pixel_values": pixels(float("nan"))}})


@pytest.mark.slow
def test_lambda_handler_survives_deep_nesting(tiny_bert_build):
    from runtime.lambda_handler import make_handler

    handler = make_handler(str(tiny_bert_build))
    deep = "x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(BadInput):
        handler({"inputs": deep}, None)
    body = "[" * 100_000 + "]" * 100_000
    resp = handler({"httpMethod": "POST", "path": "/", "requestContext": {}, "body": body}, None)
    assert resp["statusCode"] == 400 and "nested too deeply" in resp["body"]
    assert handler({"inputs": "still fine"}, None)


# -- the server application, called as WSGI --------------------------------------------------------
def _call(app, method, path, body=b"", headers=None):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    seen = {}
    out = b"".join(app(environ, lambda status, hdrs: seen.update(status=int(status.split()[0]), headers=hdrs)))
    return seen["status"], out


@pytest.fixture(scope="module")
def app(tiny_bert_build):
    from runtime.server import App, Options

    a = App(tiny_bert_build, name="secret-model-name", options=Options(token="t" * 32, warm=False),
            log=io.StringIO())
    a.load()
    assert a.load_error is None
    yield a
    a.batcher.close()


@pytest.mark.slow
def test_unauthenticated_requests_learn_nothing_of_the_routes(app):
    for method, path in (("GET", "/nope"), ("DELETE", "/invocations"), ("GET", "/v2/models/other"),
                         ("POST", "/v2/models/other/infer"), ("GET", "/v2/models/secret-model-name"),
                         ("GET", "/")):
        status, body = _call(app, method, path)
        assert status == 401, (method, path, status, body)
        assert b"secret-model-name" not in body
    assert _call(app, "GET", "/ping")[0] == 200
    assert _call(app, "GET", "/v2/health/ready")[0] == 200
    assert _call(app, "GET", "/nope", headers={"Authorization": "Bearer " + "t" * 32})[0] == 404


@pytest.mark.slow
def test_v2_shape_of_too_many_dimensions_is_400(app):
    auth = {"Authorization": "Bearer " + "t" * 32}
    for shape in ([1] * 65, [1, 1, 1], [1]):
        body = json.dumps({"inputs": [{"name": "input_ids", "shape": shape, "datatype": "INT64", "data": [1]}]})
        status, out = _call(app, "POST", "/v2/models/secret-model-name/infer", body.encode(), auth)
        assert status == 400 and b"dimensions" in out, (shape, out)
    body = json.dumps({"inputs": [{"name": "input_ids", "shape": [1, 1024], "datatype": "INT64",
                                   "data": [1] * 200_000}]})
    status, out = _call(app, "POST", "/v2/models/secret-model-name/infer", body.encode(), auth)
    assert status == 400 and b"more than 1024 values" in out, out
    # Dimensions whose product has thousands of digits: refused before it is computed.
    huge = "1" + "0" * 4000
    body = ('{"inputs": [{"name": "input_ids", "shape": [%s, %s], "datatype": "INT64", "data": [1]}]}'
            % (huge, huge))
    status, out = _call(app, "POST", "/v2/models/secret-model-name/infer", body.encode(), auth)
    assert status == 400 and b"exceeds" in out, out
    # The request id is echoed: a string, as the protocol says.
    for rid in ("1e400", "5", "[1]"):
        body = ('{"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}], "id": %s}'
                % rid)
        status, out = _call(app, "POST", "/v2/models/secret-model-name/infer", body.encode(), auth)
        assert status == 400, (rid, out)


@pytest.mark.slow
def test_open_probes_do_not_name_the_model_behind_a_token(app):
    status, body = _call(app, "GET", "/ping")
    assert status == 200 and b"secret-model-name" not in body
    # The model's own ready path confirms a guessed name: it needs the token.
    assert _call(app, "GET", "/v2/models/secret-model-name/ready")[0] == 401
    assert _call(app, "GET", "/v2/models/secret-model-name/ready",
                 headers={"Authorization": "Bearer " + "t" * 32})[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize("body", [
    b'{"inputs": "x", "parameters": {"a": 1e400}}',  # a JSON number no float holds
    b'{"inputs": [' + b"7" * 5000 + b"]}",  # more digits than int() converts
    b'{"inputs": "lone \\ud800 surrogate"}',  # valid JSON, not valid Unicode: tokenizers raise
])
def test_numbers_and_text_python_cannot_hold_are_400(app, bert, body):
    status, out = _call(app, "POST", "/invocations", body, {"Authorization": "Bearer " + "t" * 32})
    assert status == 400 and json.loads(out)["error"], out
    resp = handle(bert, {"httpMethod": "POST", "path": "/", "requestContext": {}, "body": body.decode()})
    assert resp["statusCode"] == 400, resp


@pytest.mark.slow
@pytest.mark.parametrize("event", [
    {"httpMethod": 5, "body": "{}"}, {"requestContext": "x", "body": "{}"},
    {"requestContext": {"http": 7}, "body": "{}"}, {"httpMethod": "POST", "body": {"inputs": "x"}},
    {"httpMethod": "POST", "body": 12, "isBase64Encoded": True}, {"httpMethod": None, "body": True},
])
def test_http_lookalike_events_with_odd_fields_are_answered(tiny_bert_build, bert, event):
    from runtime.lambda_handler import make_handler

    resp = handle(bert, event)
    assert resp["statusCode"] in (400, 405) and json.loads(resp["body"])["error"], resp
    # The handler's log line (input bytes) too: found by the long fuzz profile.
    assert make_handler(str(tiny_bert_build))(event, None)["statusCode"] in (400, 405)


@pytest.mark.slow
def test_non_finite_outputs_are_400_never_nan(bert, monkeypatch):
    """Whatever the compiled code gives, an inf or nan never reaches JSON."""
    execute = bert._execute

    def poisoned(items):
        outs = execute(items)
        for out in outs:
            for name, view in out.items():
                raw = bytearray(view.cast("B"))
                raw[0:4] = b"\x00\x00\xc0\x7f"  # float32 nan
                out[name] = shaped(raw, "float32", list(view.shape))
        return outs

    monkeypatch.setattr(bert, "_execute", poisoned)
    with pytest.raises(BadInput, match="not finite"):
        handle(bert, {"inputs": "hello"})
    tensors = {i.name: [[1, 1, 0]] for i in bert.inputs}
    with pytest.raises(BadInput, match="not finite"):
        handle(bert, {"tensors": tensors})
    resp = handle(bert, {"httpMethod": "POST", "path": "/", "requestContext": {}, "body": '{"inputs": "x"}'})
    assert resp["statusCode"] == 400 and "NaN" not in resp["body"]
    monkeypatch.undo()
    assert handle(bert, {"inputs": "hello"})


def test_an_empty_submission_does_not_stall_the_batcher():
    b = _batcher(FakeModel(), max_batch=2, max_queue=10)
    assert b.submit([], 5) == ([], [])
    assert b.submit([FakeItem("next")], 5)[0] == [("next", 1)]


@pytest.mark.slow
def test_edgebundle_run_answers_bytes_that_are_not_utf8(tiny_bert_build):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "runtime.run", str(tiny_bert_build)], input=b'{"inputs": "\xff"}\n',
                          capture_output=True, timeout=120, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["error"]


def test_a_request_larger_than_the_queue_is_refused_for_good():
    """Not a 503 "retry shortly" that could never succeed: TooLarge, answered 413."""
    from runtime.batching import TooLarge

    b = _batcher(FakeModel(), max_batch=2, max_queue=3)
    with pytest.raises(TooLarge, match="4 rows; the server queues at most 3"):
        b.submit([FakeItem("a", rows=4)], 5)
    assert b.submit([FakeItem("b", rows=3)], 5)[0] == [("b", 3)]
