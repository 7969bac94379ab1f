"""PyTorch references computed straight from transformers / sentence-transformers, not
through builder/, so the tests check the builder rather than repeat it."""
from __future__ import annotations

import numpy as np


def _t(arrays: dict):
    import torch

    return {k: torch.from_numpy(np.asarray(v, dtype=np.int64 if k != "pixel_values" else np.float32))
            for k, v in arrays.items()}


def bert_mean_embeddings(model_dir, tensors: dict) -> np.ndarray:
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir)).eval()
    t = _t(tensors)
    with torch.no_grad():
        h = model(**t).last_hidden_state
    mask = t["attention_mask"].unsqueeze(-1).float()
    return ((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()


def bert_logits(model_dir, tensors: dict) -> np.ndarray:
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return model(**_t(tensors)).logits.numpy()


def resnet_logits(model_dir, pixel_values) -> np.ndarray:
    import torch
    from transformers import ResNetForImageClassification

    model = ResNetForImageClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(np.asarray(pixel_values, np.float32))).logits.numpy()


def sentence_transformers_embeddings(model_dir, sentences: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(sentences, convert_to_numpy=True)


def tokenize(tokenizer_json, texts: list[str]) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    enc = tok.encode_batch(texts)
    return {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
            "token_type_ids": [e.type_ids for e in enc]}


def png_base64(seed: int = 0, size=(80, 60)) -> str:
    import base64
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def hf_text(model_dir, sentences: list[str], task: str, max_length: int = 32) -> np.ndarray:
    """Straight from transformers (AutoTokenizer + AutoModel*): logits for
    text-classification, mean-pooled last hidden states for feature-extraction."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    batch = tok(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    cls = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    model = cls.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        out = model(**batch)
    if task == "text-classification":
        return out.logits.numpy()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()
