"""runtime/: tensor mode, task mode and the event contract, in-process on tiny builds."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

import reference
import runtime
from runtime.events import handle

pytestmark = pytest.mark.slow  # compiles the tiny models (once per session)

SENTENCES = ["The cat sits on the mat.", "Stocks fell sharply on Monday."]


@pytest.fixture(scope="module")
def bert_cls(tiny_bert_cls_build):
    return runtime.load(tiny_bert_cls_build)


def test_manifest_describes_io(bert, tiny_bert_build):
    assert [i.name for i in bert.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [i.source for i in bert.inputs] == ["ids", "attention_mask", "type_ids"]
    assert bert.inputs[0].shape == ("batch", "seq") and bert.inputs[0].dtype == "int64"
    assert [i.pad for i in bert.inputs] == [0, 0, 0]
    assert [o.to_json() for o in bert.outputs] == [
        {"name": "sentence_embedding", "shape": ["batch", 128], "dtype": "float32"}]
    m = json.loads((tiny_bert_build / "model.json").read_text())
    assert m["schema"] == runtime.manifest.SCHEMA
    assert [(lib["file"], lib["seq"]) for lib in m["variants"][0]["libraries"]] == [("model-seq16.so", 16), ("model.so", 32)]
    assert [(lib["file"], lib["seq"]) for lib in m["variants"][1]["libraries"]] == [
        ("model-seq16.avx512.so", 16), ("model.avx512.so", 32)]
    assert sorted(m["files"]) == ["model-seq16.avx512.so", "model-seq16.so", "model.avx512.so", "model.so",
                                  "model.weights", "tokenizer.json"]
    assert m["versions"]["tvm"] == "0.27.0.post1" and m["versions"]["tvm_ffi"]
    assert m["target"]["tvm"]["mcpu"] == "haswell"
    assert m["weights"]["file"] == "model.weights" and m["weights"]["count"] > 10
    # Weights live in the mapped file, not in the library's data (builder/compiler/weights.py).
    assert m["files"]["model.so"]["size"] < m["files"]["model.weights"]["size"]
    assert all(len(r["sha256"]) == 64 and r["size"] > 0 for r in m["files"].values())
    from builder import elf

    assert m["glibc_required"] == elf.vstr(elf.read_elf(tiny_bert_build / "model.so").glibc)
    assert elf._vtuple(m["glibc_required"]) <= (2, 27)  # libtvm_runtime.so's floor: never above it
    assert m["variants"][0]["validation"]["max_abs_diff"]["sentence_embedding"] < 1e-4


def test_tensor_mode_matches_pytorch(bert, tiny_bert_dir, tiny_bert_build):
    tensors = reference.tokenize(tiny_bert_build / "tokenizer.json", SENTENCES)
    ours = handle(bert, {"tensors": tensors})["tensors"]["sentence_embedding"]
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    np.testing.assert_allclose(np.array(ours), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("length", [3, 16, 17, 32])
def test_any_length_runs_on_the_bucket_that_fits(bert, tiny_bert_dir, length):
    """Buckets 16 and 32: a request is padded to the shortest that fits and answers as
    PyTorch does on the unpadded request."""
    rng = np.random.default_rng(length)
    ids = rng.integers(1000, 2000, size=(2, length))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones_like(ids)
    mask[1, length // 2 + 1:] = 0  # a padded row too
    tensors = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "token_type_ids": np.zeros_like(ids).tolist()}
    ours = handle(bert, {"tensors": tensors})["tensors"]["sentence_embedding"]
    np.testing.assert_allclose(np.array(ours), reference.bert_mean_embeddings(tiny_bert_dir, tensors), atol=1e-4, rtol=0)


def test_task_mode_feature_extraction(bert):
    one = handle(bert, {"inputs": SENTENCES[0]})
    many = handle(bert, {"inputs": SENTENCES})
    assert len(one) == 128 and len(many) == 2
    np.testing.assert_allclose(one, many[0], atol=1e-5)


def test_text_classification_labels(bert_cls, tiny_bert_cls_dir, tiny_bert_cls_build):
    answer = handle(bert_cls, {"inputs": SENTENCES[1]})
    assert [a["label"] for a in answer] and {a["label"] for a in answer} == {"negative", "neutral", "positive"}
    scores = [a["score"] for a in answer]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5
    logits = reference.bert_logits(tiny_bert_cls_dir,
                                   reference.tokenize(tiny_bert_cls_build / "tokenizer.json", [SENTENCES[1]]))
    assert answer[0]["label"] == ["negative", "neutral", "positive"][int(np.argmax(logits[0]))]
    assert len(handle(bert_cls, {"inputs": SENTENCES[1], "parameters": {"top_k": 1}})) == 1


def test_image_classification(resnet, tiny_resnet_dir):
    img = reference.png_base64(1)
    answer = handle(resnet, {"inputs": img})
    pixels = np.asarray(resnet.encoder([img])["pixel_values"])
    logits = reference.resnet_logits(tiny_resnet_dir, pixels)
    assert answer[0]["label"] == ["cat", "dog", "bird", "fish"][int(np.argmax(logits[0]))]
    ours = handle(resnet, {"tensors": {"pixel_values": pixels.tolist()}})["tensors"]["logits"]
    np.testing.assert_allclose(np.array(ours), logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [(200, 90), (64, 64), (50, 300)])
def test_image_preprocessing_matches_transformers(resnet, tiny_resnet_dir, size):
    """Pillow-only preprocessing (no numpy in bundles) equals the model's own image processor."""
    import io

    from PIL import Image
    from transformers import AutoImageProcessor

    image = reference.png_base64(2, size=size)
    pixels = np.asarray(resnet.encoder([image])["pixel_values"])
    assert pixels.shape == (1, 3, 64, 64) and pixels.dtype == np.float32
    processor = AutoImageProcessor.from_pretrained(tiny_resnet_dir)
    import base64

    ref = processor(Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB"), return_tensors="np")
    np.testing.assert_allclose(pixels, ref["pixel_values"], atol=1e-5, rtol=0)


def _http_v2(body, b64=False, method="POST"):
    if b64:
        body = base64.b64encode(body.encode()).decode()
    return {"version": "2.0", "rawPath": "/", "requestContext": {"http": {"method": method}},
            "body": body, "isBase64Encoded": b64}


def _http_v1(body):
    return {"httpMethod": "POST", "path": "/", "requestContext": {"stage": "prod"}, "body": body,
            "isBase64Encoded": False}


def test_http_events(bert):
    for event in (_http_v2(json.dumps({"inputs": "hi"})), _http_v2(json.dumps({"inputs": "hi"}), b64=True),
                  _http_v1(json.dumps({"inputs": "hi"}))):
        resp = handle(bert, event)
        assert resp["statusCode"] == 200 and resp["headers"]["content-type"] == "application/json"
        assert len(json.loads(resp["body"])) == 128
    info = handle(bert, _http_v2(None, method="GET"))
    assert info["statusCode"] == 200 and json.loads(info["body"])["model"]["task"] == "feature-extraction"


@pytest.mark.parametrize("body, fragment", [
    ("{not json", "not valid JSON"),
    ("", "empty"),
    (json.dumps({"input": "typo"}), 'missing "inputs"'),
    (json.dumps({"inputs": 42}), "string"),
    (json.dumps({"inputs": ["ok", 3]}), '"inputs"[1]'),
    (json.dumps({"inputs": "x" * 5000}), "characters"),
    (json.dumps({"tensors": {"input_ids": [[1] * 32]}}), "missing"),
    (json.dumps({"tensors": {"input_ids": [[1] * 33], "attention_mask": [[1] * 33], "token_type_ids": [[0] * 33]}}), "length 33"),
        (json.dumps({"tensors": {"input_ids": [[1] * 8], "attention_mask": [[1] * 8], "token_type_ids": [[0] * 9]}}), "seq=9"),
        (json.dumps({"tensors": {"input_ids": [1] * 8, "attention_mask": [1] * 8, "token_type_ids": [0] * 8}}), "shape"),
    (json.dumps({"tensors": {"input_ids": [[99999] * 32], "attention_mask": [[1] * 32], "token_type_ids": [[0] * 32]}}), "values must be in"),
    (json.dumps({"tensors": {"input_ids": [[1.5] * 32], "attention_mask": [[1] * 32], "token_type_ids": [[0] * 32]}}), "integers"),
    (json.dumps({"tensors": {"input_ids": [[1] * 32, [1] * 5], "attention_mask": [[1] * 32], "token_type_ids": [[0] * 32]}}), "rectangular"),
    (json.dumps([1, 2]), "JSON object"),
])
def test_bad_http_input_is_400_and_model_stays_usable(bert, body, fragment):
    resp = handle(bert, _http_v2(body))
    assert resp["statusCode"] == 400, resp
    assert fragment in json.loads(resp["body"])["error"]
    assert handle(bert, _http_v2(json.dumps({"inputs": "still fine"})))["statusCode"] == 200


def test_bad_direct_input_raises_badinput(bert, resnet):
    with pytest.raises(runtime.BadInput, match='"inputs"'):
        handle(bert, {"inputs": None})
    with pytest.raises(runtime.BadInput, match="base64"):
        handle(resnet, {"inputs": "!!!not base64!!!"})
    with pytest.raises(runtime.BadInput, match="decodable image"):
        handle(resnet, {"inputs": base64.b64encode(b"GIF89a this is not an image").decode()})
    with pytest.raises(runtime.BadInput, match="top_k"):
        handle(resnet, {"inputs": reference.png_base64(), "parameters": {"top_k": 0}})


def test_damaged_weights_file_is_refused(tiny_bert_build, tmp_path):
    import shutil

    for f in tiny_bert_build.iterdir():  # every variant's libraries, the manifest, the tokenizer
        if f.is_file() and f.name != "model.weights":
            shutil.copy(f, tmp_path / f.name)
    raw = (tiny_bert_build / "model.weights").read_bytes()
    (tmp_path / "model.weights").write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ValueError, match="damaged or belongs to another build"):
        runtime.load(tmp_path)
    # Of the recorded size (the size check passes): the file's own header refuses it at
    # load, before the sha256 (checked in the background) is waited for.
    (tmp_path / "model.weights").write_bytes(b"NOTWEIGH" + raw[8:])
    with pytest.raises(ValueError, match="not an edgebundle weights file"):
        runtime.load(tmp_path)


def test_threads_and_reloads_share_nothing_unsafely(tiny_bert_build):
    """Concurrent calls on one model (the VM is not re-entrant: a lock serialises them) and
    models loaded and dropped in one process (weight tensors outlive their Python wrappers)."""
    import gc
    import threading

    tensors = reference.tokenize(tiny_bert_build / "tokenizer.json", SENTENCES)
    expected = handle(runtime.load(tiny_bert_build), {"tensors": tensors})
    for _ in range(3):
        model = runtime.load(tiny_bert_build)
        answers = [None] * 8

        def work(i):
            answers[i] = handle(model, {"tensors": tensors})

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(a == expected for a in answers)
        del model, answers
        gc.collect()
