"""Property-based tests of every entry a request reaches: the Lambda handler (direct and HTTP
events), the model server's two protocols (SageMaker /invocations and KServe v2 infer, as
WSGI) and `edgebundle-run`, on the tiny text and image builds.

For any JSON value and nesting, any strings and bytes (base64 too), any numbers (NaN, ±Inf,
1e300, negative, wrong types), any shapes and dims, image sizes and aspect ratios and any
count of inputs, every answer is a result or a 4xx-style error with a message: never
another exception, a 5xx, a hang (hypothesis's deadline), a bare NaN in JSON, or peak
memory beyond MEMORY_BOUND_MB over the entry's whole run; and a fixed request answers the
same after the run as before it.

Profiles (HYPOTHESIS_PROFILE): "ci" (the default: 150 examples per entry, a few minutes in
all) and "long" (examples/hardening.sh: 3000 per entry)."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import sys
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from runtime.errors import BadInput
from runtime.events import is_http_event

pytestmark = pytest.mark.slow  # the tiny builds compile once per session

settings.register_profile("ci", max_examples=150, deadline=20_000, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=3000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Peak resident memory an entry may add over its whole run: the largest legitimate work is
# one image of the manifest's max_pixels (50 M) decoded to RGB (150 MB) and converted.
MEMORY_BOUND_MB = 600


# -- strategies ------------------------------------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 3.4e38, 1e-320, 0, -1, 2 ** 63, 2 ** 63 - 1, -(2 ** 63), True, False]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=50))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=40)


def _deep(depth: int, leaf):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _png(width: int, height: int, color: int) -> bytes:
    """A PNG of one colour, written row by row so that a big one costs this test no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(1), b"\0" + bytes([color, 255 - color, 7]) * width, []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _pillow(fmt: str, width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, fmt)
    return buf.getvalue()


SIDES = st.one_of(st.integers(1, 64), st.integers(65, 4000), st.sampled_from([1, 2, 20000, 70000]))
# Thin strips, either way round: the shape that once asked the resize for gigabytes.
STRIPS = st.tuples(st.sampled_from([1, 1, 2, 3, 8]), st.sampled_from([300, 20000, 70000]) | st.integers(300, 70000)).flatmap(
    lambda wh: st.sampled_from([wh, wh[::-1]]))


@st.composite
def images(draw) -> str:
    w, h = draw(st.one_of(st.tuples(SIDES, SIDES), STRIPS))
    if w * h > 60_000_000:  # past max_pixels either way; keep the PNG small to write
        w = min(w, 60_000_000 // h + 1)
    how = draw(st.sampled_from(["png", "pillow", "bytes", "truncated"]))
    # Pillow's JPEG and WebP encoders stop at 65,500 and 16,383 pixels a side: our PNG writer then.
    if how == "png" or (how == "pillow" and (w * h > 4_000_000 or max(w, h) > 16_000)):
        data = _png(w, h, draw(st.integers(0, 255)))
    elif how == "pillow":
        data = _pillow(draw(st.sampled_from(["JPEG", "WEBP", "PNG", "GIF", "BMP", "TIFF"])), w, h)
    elif how == "bytes":
        data = draw(st.binary(max_size=300))
    else:
        png = _png(w, h, 3)
        data = png[:draw(st.integers(0, len(png)))]
    text = base64.b64encode(data).decode()
    return draw(st.sampled_from([text, "data:image/png;base64," + text, text[:-1] + "!", text + "="]))


# Any code point, lone surrogates included (st.text leaves them out; JSON's \ud800 makes them).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)


def texts(max_chars: int):
    return st.one_of(st.text(max_size=200), ANY_TEXT, st.text(min_size=max_chars - 2, max_size=max_chars + 2),
                     st.sampled_from(["", " ", "\0", "\u202e", "[CLS] [SEP] [PAD]"]))


@st.composite
def arrays(draw, leaves=NUMBERS):
    shape = draw(st.lists(st.integers(0, 40), max_size=5))
    while math.prod(shape) > 5000:  # big enough to cross every bound, small enough to write
        shape[shape.index(max(shape))] //= 2
    value = draw(leaves)
    for n in reversed(shape):
        value = [value] * n
    return value


def tensor_events(model, deep=True):
    names = [i.name for i in model.inputs]
    seq = model.seq_lengths[-1] if model.seq_lengths else None
    good_shape = [1 if d == "batch" else seq if d == "seq" else d for d in model.inputs[0].shape]

    @st.composite
    def tensors(draw):
        chosen = draw(st.lists(st.sampled_from(names + ["bogus", ""]), max_size=len(names) + 1, unique=True))
        if draw(st.booleans()):
            chosen = names
        out = {}
        for name in chosen:
            if draw(st.booleans()) and good_shape:  # the right shape, hostile values
                leaf = draw(NUMBERS)
                value = leaf
                for n in reversed(good_shape):
                    value = [value] * n
                out[name] = value
            else:
                out[name] = draw(arrays() | JSON)
        return out

    # Deeper than json.dumps can write: direct events only (bodies nest in their own way).
    depth = st.integers(60, 3000) if deep else st.integers(60, 500)
    return st.one_of(st.builds(lambda t: {"tensors": t}, tensors()),
                     st.builds(lambda t: {"tensors": t}, JSON),
                     st.builds(lambda d: {"tensors": {names[0]: _deep(d, 1)}}, depth))


def task_events(model):
    pre = model.manifest.preprocessing
    one = images() if pre.kind == "image" else texts(pre.max_chars)
    inputs = st.one_of(one, one, st.lists(one, min_size=0, max_size=4),
                       st.builds(lambda n, v: [v] * n, st.integers(30, 40_000), st.just("a") if pre.kind == "text"
                                 else st.just("AAAA")),
                       JSON)
    params = st.one_of(st.none(), JSON, st.fixed_dictionaries({"top_k": JSON | st.integers(-5, 10)}))
    return st.builds(lambda i, p, extra: {"inputs": i, **({"parameters": p} if p is not None else {}), **extra},
                     inputs, params, st.sampled_from([{}, {"tensors": {}}, {"x": float("nan")}]))


# Direct events that look like HTTP ones, with fields of any type.
HTTP_LOOKALIKES = st.fixed_dictionaries(
    {}, optional={"httpMethod": JSON, "requestContext": JSON | st.fixed_dictionaries({"http": JSON}),
                  "rawPath": JSON, "body": JSON, "isBase64Encoded": JSON}).filter(bool)


def direct_events(model, deep=True):
    return st.one_of(task_events(model), task_events(model), tensor_events(model, deep), JSON, HTTP_LOOKALIKES,
                     st.builds(lambda d: {"inputs": _deep(d, "x")},
                               st.integers(100, 50_000) if deep else st.integers(100, 500)))


def bodies(model):
    """HTTP bodies: JSON of events (NaN and Infinity written the way Python writes them),
    arbitrary bytes and text, deep nesting."""
    return st.one_of(direct_events(model, deep=False).map(lambda e: json.dumps(e).encode()),
                     st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.integers(1, 200_000).map(lambda d: b"[" * d + b"]" * d),
                     st.just(b'{"inputs": "x"'), st.just(b"\xff\xfe{}"), st.sampled_from(literals(model)))


def literals(model) -> list[bytes]:
    """Numbers JSON allows and Python cannot hold: beyond float range, integers of more
    digits than int() converts, and dimensions whose product is a huge number."""
    name = model.inputs[0].name.encode()
    return [b'{"inputs": "x", "id": 1e400}', b'{"inputs": [], "id": -1e400}', b'[1e999]',
            b'{"tensors": {"' + name + b'": [[' + b"7" * 5000 + b"]]}}",
            b'{"inputs": [{"name": "' + name + b'", "shape": [1' + b"0" * 4000 + b', 1' + b"0" * 4000
            + b'], "datatype": "INT64", "data": [1]}]}',
            b'{"inputs": [{"name": "' + name + b'", "shape": [1], "datatype": "INT64", "data": [1]}], "id": 1e400}',
            b'{"inputs": "\\ud800 lone"}', b'{"inputs": ["ok", "\\udfff"]}']


def v2_requests(model):
    names = [i.name for i in model.inputs]

    @st.composite
    def entry(draw):
        e = {"name": draw(st.sampled_from(names + ["nope"]) | JSON),
             "shape": draw(st.lists(st.integers(-3, 70) | st.sampled_from([10 ** 12, True]), max_size=70)
                           | JSON),
             "datatype": draw(st.sampled_from(["INT64", "FP32", "BYTES", "BOOL", "INT32"]) | JSON),
             "data": draw(arrays() | st.lists(NUMBERS, max_size=300) | JSON)}
        for key in draw(st.lists(st.sampled_from(list(e)), max_size=2)):
            e.pop(key, None)
        return e

    return st.one_of(
        st.fixed_dictionaries({"inputs": st.lists(entry(), max_size=4)},
                              optional={"outputs": JSON | st.lists(st.fixed_dictionaries({"name": JSON})),
                                        "id": JSON, "parameters": JSON}),
        JSON)


# -- checks -------------------------------------------------------------------------------------------
def strict(text):
    """Parse as strict JSON: a bare NaN or Infinity fails the test."""
    def refuse(constant):
        raise AssertionError(f"{constant} written into JSON: {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


@contextlib.contextmanager
def memory_bound():
    """Peak RSS (VmHWM, reset first through /proc/self/clear_refs) stays within
    MEMORY_BOUND_MB of what the process held before."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _rss_kb("VmRSS")
    yield
    grew = (_rss_kb("VmHWM") - before) / 1024
    assert grew < MEMORY_BOUND_MB, f"peak memory grew by {grew:.0f} MB (bound {MEMORY_BOUND_MB})"


def report(entry: str, model, examples: int) -> None:
    """How many examples ran (visible with -s; examples/hardening.sh shows it)."""
    print(f"\nfuzz: {entry} on {model.manifest.model.name}: {examples} examples")


# -- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["bert", "resnet"])
def built(request):
    return request.getfixturevalue({"bert": "tiny_bert_build", "resnet": "tiny_resnet_build"}[request.param])


@pytest.fixture(scope="module")
def model(built):
    return runtime.load(built)


def _probe_event(model):
    if model.manifest.preprocessing.kind == "text":
        return {"inputs": ["The cat sits on the mat.", "Rain."]}
    return {"inputs": base64.b64encode(_pillow("PNG", 50, 40)).decode()}


# -- the entries ------------------------------------------------------------------------------------------------
def test_lambda_handler_answers_or_refuses_anything(built, model):
    from runtime.lambda_handler import make_handler

    handler = make_handler(str(built))
    probe = _probe_event(model)
    baseline = json.dumps(handler(probe, None))

    @given(st.one_of(direct_events(model), bodies(model).map(
        lambda b: {"version": "2.0", "rawPath": "/", "requestContext": {"http": {"method": "POST"}},
                   "body": base64.b64encode(b).decode(), "isBase64Encoded": True}),
        bodies(model).map(lambda b: {"httpMethod": "POST", "path": "/", "requestContext": {},
                                     "body": b.decode("utf-8", "replace"), "isBase64Encoded": False})))
    def check(event):
        ran[0] += 1
        try:
            answer = handler(event, None)
        except BadInput as e:
            assert str(e)
            return
        if is_http_event(event):
            assert answer["statusCode"] in (200, 400, 405), answer
            body = strict(answer["body"])
            if answer["statusCode"] != 200:
                assert body["error"]
        else:
            strict(json.dumps(answer))

    ran = [0]
    with memory_bound():
        check()
    report("lambda handler", model, ran[0])
    assert json.dumps(handler(probe, None)) == baseline


def _wsgi(app, method, path, body: bytes):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    seen = {}
    out = b"".join(app(environ, lambda status, headers: seen.update(status=int(status.split()[0]))))
    return seen["status"], out


@pytest.fixture(scope="module")
def app(built):
    from runtime.server import App, Options

    a = App(built, options=Options(warm=False), log=io.StringIO())
    a.load()
    assert a.load_error is None
    yield a
    a.batcher.close()


def test_server_protocols_answer_or_refuse_anything(app, model):
    infer = f"/v2/models/{app.name}/infer"
    probe = json.dumps(_probe_event(model)).encode()
    baseline = _wsgi(app, "POST", "/invocations", probe)
    assert baseline[0] == 200

    @given(st.one_of(bodies(model).map(lambda b: ("/invocations", b)),
                     v2_requests(model).map(lambda r: (infer, json.dumps(r).encode())),
                     bodies(model).map(lambda b: (infer, b))))
    def check(request):
        ran[0] += 1
        path, body = request
        status, out = _wsgi(app, "POST", path, body)
        assert status in (200, 400), (status, out[:300])
        answer = strict(out)
        if status == 400:
            assert answer["error"]

    ran = [0]
    with memory_bound():
        check()
    report("server protocols", model, ran[0])
    assert _wsgi(app, "POST", "/invocations", probe) == baseline


def test_edgebundle_run_answers_or_refuses_anything(built, model, capsys, tmp_path):
    """Events on stdin (one document, or one per line) and in @FILEs."""
    from runtime.run import main

    probe = json.dumps(_probe_event(model))
    main([str(built), probe])
    baseline = capsys.readouterr().out
    event_file = tmp_path / "event.json"

    @given(st.lists(bodies(model), min_size=1, max_size=3), st.booleans())
    def check(events, from_file):
        ran[0] += 1
        capsys.readouterr()
        if from_file:
            event_file.write_bytes(events[0])
            rc = main([str(built), f"@{event_file}"])
        else:
            stdin, sys.stdin = sys.stdin, io.TextIOWrapper(io.BytesIO(b"\n".join(events)))
            try:
                rc = main([str(built)])
            finally:
                sys.stdin = stdin
        out = capsys.readouterr()
        lines = out.out.splitlines()
        assert rc in (0, 1) and lines, (rc, lines)
        for line in lines:
            answer = strict(line)
            assert not (isinstance(answer, dict) and "internal error" in str(answer.get("error"))), out.err
        assert "Traceback" not in out.err, out.err

    ran = [0]
    with memory_bound():
        check()
    with capsys.disabled():
        report("edgebundle-run", model, ran[0])
    main([str(built), probe])
    assert capsys.readouterr().out == baseline
