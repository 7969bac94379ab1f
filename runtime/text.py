"""Text requests -> token tensors, with the tokenizer.json the build configured to pad and
truncate to the model's sequence length. Which tensors, and which tokenizer output fills
each, the manifest says (DistilBERT has no token_type_ids; RoBERTa pads with id 1)."""
from __future__ import annotations

from pathlib import Path

from .arrays import pack, shaped
from .errors import BadInput, string_list

# tokenizers' Encoding attributes an input may take its values from.
SOURCES = ("ids", "attention_mask", "type_ids")


class TextEncoder:
    def __init__(self, model_dir: Path, pre, inputs):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / pre.tokenizer))
        self.max_chars = pre.max_chars
        self.inputs = inputs

    def check(self, texts) -> list[str]:
        texts = string_list(texts, "a string or a non-empty list of strings", "a string")
        for i, t in enumerate(texts):
            if len(t) > self.max_chars:
                raise BadInput(f'"inputs"[{i}] has {len(t)} characters; this model accepts at most {self.max_chars}')
            try:  # JSON's \ud800 escapes make lone surrogates, which the tokenizer raises on
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise BadInput(f'"inputs"[{i}] is not valid Unicode (a lone surrogate)') from None
        return texts

    def __call__(self, texts: list[str]) -> dict:
        return to_arrays(self.tokenizer.encode_batch(texts), self.inputs)


def to_arrays(encodings, inputs) -> dict:
    """tokenizers' Encodings (padded to one length) -> the model's inputs, each filled from
    the Encoding field its manifest entry names."""
    shape = (len(encodings), len(encodings[0].ids) if encodings else 0)
    out = {}
    for spec in inputs:
        if spec.source not in SOURCES:
            raise ValueError(f"input {spec.name}: source {spec.source!r} is not one of {SOURCES}")
        rows = (getattr(e, spec.source) for e in encodings)
        out[spec.name] = shaped(pack([v for row in rows for v in row], spec.dtype), spec.dtype, shape)
    return out
