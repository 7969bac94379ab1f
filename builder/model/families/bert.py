"""BERT encoders: BertModel / sentence-transformers checkpoints (feature-extraction) and
BertForSequenceClassification (text-classification)."""
from __future__ import annotations

from .text import TextFamily


class BertFamily(TextFamily):
    name = "bert"
    description = "BERT encoders: BertModel, sentence-transformers, BertForSequenceClassification"
    architectures = ("BertModel", "BertForSequenceClassification")
    classifiers = ("BertForSequenceClassification",)
    model_types = ("bert",)
