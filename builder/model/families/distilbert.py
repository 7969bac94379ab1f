"""DistilBERT encoders: DistilBertModel / sentence-transformers checkpoints
(feature-extraction) and DistilBertForSequenceClassification (text-classification)."""
from __future__ import annotations

from .text import TextFamily


class DistilBertFamily(TextFamily):
    name = "distilbert"
    description = "DistilBERT encoders: DistilBertModel, sentence-transformers, DistilBertForSequenceClassification"
    architectures = ("DistilBertModel", "DistilBertForSequenceClassification")
    classifiers = ("DistilBertForSequenceClassification",)
    model_types = ("distilbert",)
    # No segment embeddings: forward() takes no token_type_ids.
    inputs = (("input_ids", "ids"), ("attention_mask", "attention_mask"))
    hidden_size_key = "dim"
