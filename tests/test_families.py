"""The family registry beyond BERT: DistilBERT, RoBERTa / XLM-RoBERTa and a basic-block
ResNet, each built from a tiny config, validated against PyTorch at build time, and checked
again here against transformers / sentence-transformers directly (tokenizer included)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import reference
from builder.model.families import FAMILIES, detect_family
from conftest import _build
from test_bundles import run_zip

SENTENCES = ["Hello world.", "Das Wetter ist heute schön, and the cat sat on the mat."]




@pytest.fixture(scope="module")
def distilbert_cls_build(tiny_distilbert_cls_dir, tmp_path_factory):
    return _build(tiny_distilbert_cls_dir, tmp_path_factory.mktemp("out-distilbert-cls"))


@pytest.fixture(scope="module")
def roberta_build(tiny_roberta_dir, tmp_path_factory):
    return _build(tiny_roberta_dir, tmp_path_factory.mktemp("out-roberta"))


@pytest.fixture(scope="module")
def xlm_roberta_build(tiny_xlm_roberta_dir, tmp_path_factory):
    return _build(tiny_xlm_roberta_dir, tmp_path_factory.mktemp("out-xlmr"), formats=())


@pytest.fixture(scope="module")
def resnet_basic_build(tiny_resnet_basic_dir, tmp_path_factory):
    return _build(tiny_resnet_basic_dir, tmp_path_factory.mktemp("out-resnet-basic"))


def _manifest(tdir) -> dict:
    return json.loads((tdir / "model.json").read_text())


def _scores(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "sigmoid":
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _by_label(answer: list) -> dict:
    return {item["label"]: item["score"] for item in answer}


def test_detection_by_architecture_and_model_type():
    cases = {"DistilBertForSequenceClassification": "distilbert", "RobertaModel": "roberta",
             "XLMRobertaForSequenceClassification": "roberta", "ResNetForImageClassification": "resnet",
             "BertModel": "bert"}
    for arch, family in cases.items():
        assert detect_family({"architectures": [arch]}, None).name == family
    assert detect_family({"model_type": "xlm-roberta"}, None).name == "roberta"
    assert FAMILIES["roberta"].max_seq_len({"max_position_embeddings": 514, "pad_token_id": 1}) == 512


@pytest.mark.slow
def test_distilbert_classifier_lambda_matches_transformers(distilbert_cls_build, tiny_distilbert_cls_dir):
    m = _manifest(distilbert_cls_build)
    assert m["model"]["family"] == "distilbert" and m["model"]["task"] == "text-classification"
    # No token_type_ids: the runtime fills exactly the inputs the manifest names.
    assert [(i["name"], i["source"], i["pad"]) for i in m["inputs"]] == [
        ("input_ids", "ids", 0), ("attention_mask", "attention_mask", 0)]
    assert m["variants"][0]["validation"]["max_abs_diff"]["logits"] < 1e-4
    ref = _scores(reference.hf_text(tiny_distilbert_cls_dir, SENTENCES, "text-classification"), "softmax")
    rc, (answer,) = run_zip(distilbert_cls_build / "lambda.zip", [{"inputs": SENTENCES, "parameters": {"top_k": 3}}])
    assert rc == 0
    for row, ours in zip(ref, answer):
        got = _by_label(ours)
        assert [got[label] for label in ("negative", "neutral", "positive")] == pytest.approx(list(row), abs=1e-4)


@pytest.mark.slow
def test_roberta_sentence_transformers_lambda_matches(roberta_build, tiny_roberta_dir):
    """Byte-level BPE from vocab.json + merges.txt (converted at build), pad id 1, CLS
    pooling and normalisation from the sentence-transformers config."""
    m = _manifest(roberta_build)
    assert m["model"]["family"] == "roberta" and m["model"]["architecture"] == "RobertaModel"
    assert [(i["name"], i["pad"]) for i in m["inputs"]] == [("input_ids", 1), ("attention_mask", 0)]
    assert m["postprocessing"]["pooling"] == ["cls_token"] and m["postprocessing"]["normalize"] is True
    ref = reference.sentence_transformers_embeddings(tiny_roberta_dir, SENTENCES)
    rc, (answer, tensors) = run_zip(roberta_build / "lambda.zip", [
        {"inputs": SENTENCES},
        {"tensors": {"input_ids": [[0, 5, 6, 7, 2]], "attention_mask": [[1, 1, 1, 1, 1]]}}])
    assert rc == 0
    np.testing.assert_allclose(np.array(answer), ref, atol=1e-4, rtol=0)
    assert np.array(tensors["tensors"]["sentence_embedding"]).shape == (1, 128)


@pytest.mark.slow
def test_xlm_roberta_multilabel_classifier_matches_transformers(xlm_roberta_build, tiny_xlm_roberta_dir):
    """A sentencepiece-style (Unigram) tokenizer.json, and a multi-label head (sigmoid)."""
    import runtime

    model = runtime.load(xlm_roberta_build)
    assert model.manifest.model.architecture == "XLMRobertaForSequenceClassification"
    assert model.manifest.postprocessing.function == "sigmoid"
    ref = _scores(reference.hf_text(tiny_xlm_roberta_dir, SENTENCES, "text-classification"), "sigmoid")
    answers = model.predict(SENTENCES, {"top_k": 4})
    labels = list(model.labels)
    for row, ours in zip(ref, answers):
        got = _by_label(ours)
        assert [got[label] for label in labels] == pytest.approx(list(row), abs=1e-4)


@pytest.mark.slow
def test_basic_block_resnet_lambda_matches_pytorch(resnet_basic_build, tiny_resnet_basic_dir):
    """ResNet-18/34's basic blocks (the bottleneck kind is the tiny ResNet of the other tests)."""
    m = _manifest(resnet_basic_build)
    assert m["model"]["family"] == "resnet" and m["inputs"][0]["shape"] == ["batch", 3, 48, 48]
    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((2, 3, 48, 48)).astype(np.float32)
    rc, (answer,) = run_zip(resnet_basic_build / "lambda.zip", [{"tensors": {"pixel_values": pixels.tolist()}}])
    assert rc == 0
    np.testing.assert_allclose(np.array(answer["tensors"]["logits"]),
                               reference.resnet_logits(tiny_resnet_basic_dir, pixels), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_text_classification_refuses_a_checkpoint_without_a_head(tiny_roberta_dir, tmp_path):
    from builder.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="classification head"):
        _build(tiny_roberta_dir, tmp_path, task="text-classification", formats=())
