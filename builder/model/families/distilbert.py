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
    token_types = False  # no segment embeddings
    normalized_config = TextFamily.normalized_config.with_args(hidden_size="dim")
