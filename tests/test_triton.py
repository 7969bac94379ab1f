"""NVIDIA's tritonclient (the most used KServe v2 client) against `edgebundle serve` at its
defaults: Triton's binary tensor data extension in and out, versioned model paths, and a
400 for every inconsistent binary request."""
from __future__ import annotations

import json

import numpy as np
import pytest

import reference
from test_server import Server, assert_error, tolerance

SENTENCES = ["Binary tensors from tritonclient.", "A second, longer sentence about serving models.", "Short."]


@pytest.fixture(scope="module")
def text_server(tiny_bert_build):
    s = Server(tiny_bert_build)
    yield s
    s.kill()


def _client(server):
    httpclient = pytest.importorskip("tritonclient.http")
    return httpclient, httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.mark.slow
@pytest.mark.parametrize("version", ["", "1"])
def test_tritonclient_defaults_text_model(text_server, tiny_bert_build, tiny_bert_dir, version):
    """INT64 token ids sent as binary (set_data_from_numpy's default), no outputs named (so
    Triton's client asks for binary outputs), with and without a model version: the answer
    is PyTorch's, and the metadata and readiness calls tritonclient makes work too."""
    httpclient, client = _client(text_server)
    name = text_server.name
    assert client.is_server_ready() and client.is_model_ready(name, version)
    meta = client.get_model_metadata(name, version)
    assert meta["versions"] == ["1"] and [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask",
                                                                                 "token_type_ids"]
    tensors = reference.tokenize(tiny_bert_build / "tokenizer.json", SENTENCES)
    inputs = []
    for i in meta["inputs"]:
        arr = np.asarray(tensors[i["name"]], dtype=np.int64)
        inp = httpclient.InferInput(i["name"], list(arr.shape), "INT64")
        inp.set_data_from_numpy(arr)  # binary_data=True by default
        inputs.append(inp)
    result = client.infer(name, inputs, model_version=version)
    got = result.as_numpy("sentence_embedding")
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == got.nbytes
    np.testing.assert_allclose(got, reference.bert_mean_embeddings(tiny_bert_dir, tensors), **tolerance(tiny_bert_build))
    # JSON outputs when asked for by name without binary_data
    out = httpclient.InferRequestedOutput("sentence_embedding", binary_data=False)
    again = client.infer(name, inputs, outputs=[out], model_version=version)
    assert "data" in again.get_response()["outputs"][0]
    np.testing.assert_allclose(again.as_numpy("sentence_embedding"), got, rtol=1e-6)


@pytest.mark.slow
def test_tritonclient_defaults_image_model(tiny_resnet_build, tiny_resnet_dir):
    """FP32 pixel tensors in binary (~4x smaller than JSON number text), logits back in binary."""
    s = Server(tiny_resnet_build)
    try:
        httpclient, client = _client(s)
        pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
        inp = httpclient.InferInput("pixel_values", list(pixels.shape), "FP32")
        inp.set_data_from_numpy(pixels)
        got = client.infer(s.name, [inp], model_version="1").as_numpy("logits")
        np.testing.assert_allclose(got, reference.resnet_logits(tiny_resnet_dir, pixels), **tolerance(tiny_resnet_build))
        bad = pixels.copy()
        bad[0, 0, 0, 0] = np.nan
        inp.set_data_from_numpy(bad)
        with pytest.raises(Exception, match="NaN"):
            client.infer(s.name, [inp])
    finally:
        assert s.stop() == 0


def _binary(header: dict, *blobs: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.slow
def test_inconsistent_binary_requests_are_400_and_versions_404(text_server):
    """Sizes that do not add up, negative or overflowing sizes, a header past the body, data
    and binary together, binary sizes without the header: each a 400 saying what is wrong;
    an unknown version is a 404 naming the versions that exist; the server still answers."""
    path = f"/v2/models/{text_server.name}/versions/1/infer"
    ids = np.array([[101, 2023, 102]], dtype=np.int64)

    def entry(name, size=None, **extra):
        e = {"name": name, "shape": [1, 3], "datatype": "INT64", **extra}
        if size is not None:
            e["parameters"] = {"binary_data_size": size}
        return e

    names = ("input_ids", "attention_mask", "token_type_ids")
    good = [ids.tobytes(), np.ones_like(ids).tobytes(), np.zeros_like(ids).tobytes()]
    body, headers = _binary({"inputs": [entry(n, 24) for n in names]}, *good)
    r = text_server.post(path, body, headers=headers)
    assert r.status == 200 and r.headers["content-type"] == "application/json", r  # no binary output asked
    cases = [
        (_binary({"inputs": [entry(n, 24) for n in names]}, *good, b"extra"), "add up to 72"),
        (_binary({"inputs": [entry(n, 24) for n in names]}, *good[:2], good[2][:8]), "run past the body"),
        (_binary({"inputs": [entry(names[0], -24), *(entry(n, 24) for n in names[1:])]}, *good), "binary_data_size -24"),
        (_binary({"inputs": [entry(names[0], 2**64), *(entry(n, 24) for n in names[1:])]}, *good), "binary_data_size"),
        (_binary({"inputs": [entry(names[0], 16), *(entry(n, 24) for n in names[1:])]}, *good), "not the 24 bytes"),
        (_binary({"inputs": [entry(names[0], 24, data=[1, 2, 3]), *(entry(n, 24) for n in names[1:])]}, *good),
         'both "data"'),
        (_binary({"inputs": [entry(n, "24") for n in names]}, *good), "binary_data_size '24'"),
        (_binary({"inputs": [entry(n, 24) for n in names], "parameters": {"binary_data_output": "yes"}}, *good),
         "binary_data_output"),
    ]
    for (body, headers), fragment in cases:
        assert_error(text_server.post(path, body, headers=headers), 400, fragment)
    body, _ = _binary({"inputs": [entry(n, 24) for n in names]}, *good)
    assert_error(text_server.post(path, body), 400, "JSON")  # JSON then raw bytes, no header: not JSON
    for raw in (str(len(body) + 1), "-3", "0", "abc", "1e3"):
        assert_error(text_server.post(path, body, headers={"Inference-Header-Content-Length": raw}), 400,
                     "Inference-Header-Content-Length")
    just_json = {"inputs": [entry(n, 24) for n in names]}
    assert_error(text_server.post(path, json.dumps(just_json).encode()), 400, "no binary part")
    assert_error(text_server.post(f"/v2/models/{text_server.name}/versions/2/infer", body, headers=headers), 404,
                 "its versions are ['1']")
    assert_error(text_server.get(f"/v2/models/{text_server.name}/versions/7"), 404, "no version '7'")
    body, headers = _binary({"inputs": [entry(n, 24) for n in names], "parameters": {"binary_data_output": True}},
                            *good)
    ok = text_server.post(path, body, headers=headers)
    assert ok.status == 200 and ok.headers["content-type"] == "application/octet-stream"
    split = int(ok.headers["inference-header-content-length"])
    head = json.loads(ok.body[:split])
    (out,) = head["outputs"]
    assert "data" not in out and out["parameters"]["binary_data_size"] == len(ok.body) - split == 4 * 128
    assert head["model_version"] == "1"
