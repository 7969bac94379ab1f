"""RoBERTa and XLM-RoBERTa encoders: (XLM)RobertaModel / sentence-transformers checkpoints
(feature-extraction) and (XLM)RobertaForSequenceClassification (text-classification).
Byte-level BPE (RoBERTa) and sentencepiece (XLM-RoBERTa) tokenizers alike come through
tokenizer.json or transformers' conversion."""
from __future__ import annotations

from .text import TextFamily


class RobertaFamily(TextFamily):
    name = "roberta"
    description = "RoBERTa / XLM-RoBERTa encoders: (XLM)RobertaModel, sentence-transformers, " \
                  "(XLM)RobertaForSequenceClassification"
    architectures = ("RobertaModel", "RobertaForSequenceClassification",
                     "XLMRobertaModel", "XLMRobertaForSequenceClassification")
    classifiers = ("RobertaForSequenceClassification", "XLMRobertaForSequenceClassification")
    model_types = ("roberta", "xlm-roberta")
    token_types = False  # one segment type only
    normalized_config = TextFamily.normalized_config.with_args(
        defaults={"max_position_embeddings": 514, "pad_token_id": 1})
    default_pad_token = "<pad>"

    def max_seq_len(self, config: dict) -> int:
        # Positions start after padding_idx (pad_token_id + 1): 514 embeddings give 512 tokens.
        c = self.normalized_config(config)
        return c.max_position_embeddings - c.pad_token_id - 1
