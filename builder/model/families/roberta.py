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
    # One segment type only: the tokenizer's type_ids carry nothing, the model fills zeros.
    inputs = (("input_ids", "ids"), ("attention_mask", "attention_mask"))
    default_pad_token = "<pad>"

    def max_seq_len(self, config: dict) -> int:
        # Positions start after padding_idx (pad_token_id + 1): 514 embeddings give 512 tokens.
        return int(config.get("max_position_embeddings", 514)) - int(config.get("pad_token_id", 1)) - 1
