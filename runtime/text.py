"""Text requests -> token tensors, with the tokenizer.json the build configured to pad and
truncate to the model's sequence length."""
from __future__ import annotations

from pathlib import Path

from .arrays import pack, shaped
from .errors import BadInput, string_list


class TextEncoder:
    def __init__(self, model_dir: Path, pre: dict):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / pre["tokenizer"]))
        self.max_chars = int(pre["max_chars"])

    def check(self, texts) -> list[str]:
        texts = string_list(texts, "a string or a non-empty list of strings", "a string")
        for i, t in enumerate(texts):
            if len(t) > self.max_chars:
                raise BadInput(f'"inputs"[{i}] has {len(t)} characters; this model accepts at most {self.max_chars}')
        return texts

    def __call__(self, texts: list[str]) -> dict:
        return to_arrays(self.tokenizer.encode_batch(texts))


def to_arrays(encodings) -> dict:
    """tokenizers' Encodings (padded to one length) -> the model's int64 inputs."""
    shape = (len(encodings), len(encodings[0].ids) if encodings else 0)

    def tensor(rows):
        return shaped(pack([v for row in rows for v in row], "int64"), "int64", shape)

    return {
        "input_ids": tensor(e.ids for e in encodings),
        "attention_mask": tensor(e.attention_mask for e in encodings),
        "token_type_ids": tensor(e.type_ids for e in encodings),
    }
