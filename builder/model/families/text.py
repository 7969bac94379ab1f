"""Hugging Face text encoders (BERT, DistilBERT, RoBERTa, ...): what every text family
shares. feature-extraction with the pooling and normalisation a sentence-transformers
checkpoint asks for (plain checkpoints are mean-pooled), text-classification with the
checkpoint's own head. A family is a subclass naming its architectures and saying how its
config's names and its inputs differ from BERT's; a task is a `_load_<task>` method."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from builder.errors import ModelSourceError, UnsupportedModelError
from builder.options import BuildOptions
from runtime.manifest import Postprocessing, Tensor, TextPreprocessing

from .base import Family, ModelSpec, check_task, default_buckets, fit_seq, id2label, quiet_transformers, read_json

# sentence-transformers concatenates pooled vectors in this order when several are on.
_ST_POOLING_ORDER = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")
_ST_UNSUPPORTED = ("weightedmean_tokens", "lasttoken")

VALIDATION_TEXTS = [
    "Hello world.",
    "A second, somewhat longer sentence checks that padding and the attention mask work.",
]


def sentence_transformers_layout(model_dir: Path) -> dict | None:
    """Pooling and normalisation a sentence-transformers checkpoint asks for, or None."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    modules = read_json(modules_path, "modules.json")
    pooling, normalize = None, False
    for m in modules:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind == "Transformer":
            if m.get("path", "") not in ("", "."):
                raise UnsupportedModelError(
                    "sentence-transformers checkpoint keeps its transformer in a subfolder",
                    where=str(modules_path), hint="point MODEL at that subfolder's parent layout "
                    "or save the model with save_pretrained into the root")
        elif kind == "Pooling":
            cfg = read_json(model_dir / m["path"] / "config.json", "pooling config")
            for mode in _ST_UNSUPPORTED:
                if cfg.get(f"pooling_mode_{mode}"):
                    raise UnsupportedModelError(f"sentence-transformers pooling {mode!r} is not supported",
                                                where=str(model_dir / m["path"]),
                                                hint="supported: " + ", ".join(_ST_POOLING_ORDER))
            pooling = [mode for mode in _ST_POOLING_ORDER if cfg.get(f"pooling_mode_{mode}")]
            if not pooling:
                raise UnsupportedModelError("sentence-transformers pooling config enables no mode",
                                            where=str(model_dir / m["path"]))
        elif kind == "Normalize":
            normalize = True
        else:
            raise UnsupportedModelError(f"sentence-transformers module {m.get('type')!r} is not supported",
                                        where=str(modules_path),
                                        hint="supported modules: Transformer, Pooling, Normalize")
    return {"pooling": pooling or ["mean_tokens"], "normalize": normalize}


def build_tokenizer(model_dir: Path, seq_len: int, default_pad: str):
    """A `tokenizers.Tokenizer` that pads and truncates to seq_len by itself, so the
    runtime only calls encode_batch. From tokenizer.json when the checkpoint has one, from
    a WordPiece vocab.txt, or else converted by transformers from the slow tokenizer's
    files (RoBERTa's vocab.json + merges.txt, XLM-RoBERTa's sentencepiece.bpe.model)."""
    from tokenizers import Tokenizer

    tok_cfg = {}
    if (model_dir / "tokenizer_config.json").is_file():
        tok_cfg = read_json(model_dir / "tokenizer_config.json", "tokenizer_config.json")
    if (model_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    elif (model_dir / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        tok = BertWordPieceTokenizer(str(model_dir / "vocab.txt"),
                                     lowercase=bool(tok_cfg.get("do_lower_case", True)))._tokenizer
    else:
        tok = _converted_tokenizer(model_dir)
    pad_token = tok_cfg.get("pad_token") or default_pad
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content", default_pad)
    pad_id = tok.token_to_id(pad_token)
    if pad_id is None:
        raise ModelSourceError(f"tokenizer has no pad token {pad_token!r}", where=str(model_dir))
    tok.enable_truncation(max_length=seq_len)
    # To the longest text of a batch only: runtime/ pads on to the compiled length that fits.
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right")
    return tok


def _converted_tokenizer(model_dir: Path):
    import transformers
    from tokenizers import Tokenizer

    try:
        fast = transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    except Exception as e:  # missing files, sentencepiece not installed, ...
        raise ModelSourceError(f"no usable tokenizer: {type(e).__name__}: {e}", where=str(model_dir),
                               hint="save the tokenizer with the model (tokenizer.save_pretrained writes "
                                    "tokenizer.json); converting sentencepiece models needs "
                                    "`pip install sentencepiece protobuf`") from None
    if not getattr(fast, "is_fast", False):
        raise ModelSourceError(f"{type(fast).__name__} has no fast (tokenizers) version", where=str(model_dir),
                               hint="save a tokenizer.json with the model")
    return Tokenizer.from_str(fast.backend_tokenizer.to_str())


def encode(tok, texts: list[str], inputs: list[Tensor]) -> dict:
    import numpy as np

    from runtime.text import to_arrays  # the runtime's own conversion: build and serve agree

    return {name: np.asarray(view) for name, view in to_arrays(tok.encode_batch(texts), inputs).items()}


def _model_kwargs(names, input_ids, attention_mask, token_type_ids):
    given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    return {n: given[n] for n in names}


def _encoder_module(model, names: tuple, pooling: list[str], normalize: bool):
    import torch

    class SentenceEncoder(torch.nn.Module):
        # forward's parameters are the manifest's input names; families without
        # token_type_ids (DistilBERT, RoBERTa) export the first two only.
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            h = self.model(**_model_kwargs(names, input_ids, attention_mask, token_type_ids))[0]
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            count = mask.sum(1).clamp(min=1e-9)
            parts = []
            for mode in pooling:
                if mode == "cls_token":
                    parts.append(h[:, 0])
                elif mode == "max_tokens":
                    parts.append(torch.where(mask > 0, h, torch.full_like(h, -1e9)).max(1).values)
                elif mode == "mean_tokens":
                    parts.append((h * mask).sum(1) / count)
                else:  # mean_sqrt_len_tokens
                    parts.append((h * mask).sum(1) / torch.sqrt(count))
            emb = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
            return (emb,)

    return SentenceEncoder().eval()


def _classifier_module(model, names: tuple):
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return (self.model(**_model_kwargs(names, input_ids, attention_mask, token_type_ids)).logits,)

    return Classifier().eval()


class NormalizedTextConfig:
    """A transformers config read under one set of names, as optimum's NormalizedTextConfig
    reads it: a family whose config spells a field differently, or assumes another default
    for a missing one, says only that (`with_args(hidden_size="dim")`). Fields without a
    default are required (a KeyError names the config's own key)."""

    NAMES = {"hidden_size": "hidden_size", "vocab_size": "vocab_size",
             "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
             "pad_token_id": "pad_token_id"}
    DEFAULTS = {"max_position_embeddings": 512, "type_vocab_size": 2}

    def __init__(self, config: dict):
        self.config = config

    @classmethod
    def with_args(cls, defaults: dict | None = None, **names: str) -> type[NormalizedTextConfig]:
        return type(cls.__name__, (cls,), {"NAMES": {**cls.NAMES, **names},
                                           "DEFAULTS": {**cls.DEFAULTS, **(defaults or {})}})

    def __getattr__(self, name: str) -> int:
        if name not in self.NAMES:
            raise AttributeError(name)
        key = self.NAMES[name]
        return int(self.config.get(key, self.DEFAULTS[name]) if name in self.DEFAULTS else self.config[key])


@dataclasses.dataclass
class Head:
    """What a task puts on the encoder: the module exported, its one output, how runtime/
    reads that output, and the labels of its classes."""

    module: Any
    output: Tensor
    postprocessing: Postprocessing
    labels: list[str] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


# The encoder's inputs in forward() order: (name, tokenizers Encoding field).
_INPUTS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))


class TextFamily(Family):
    """A transformers encoder with a head per task, each made by `_load_<task>` (dashes as
    underscores). Subclasses set the class attributes; most need nothing else."""

    tasks = ("feature-extraction", "text-classification")
    classifiers: tuple[str, ...] = ()  # architectures with a sequence-classification head
    normalized_config = NormalizedTextConfig
    # False where forward() takes no token_type_ids: no segment embeddings (DistilBERT) or one
    # segment type only (RoBERTa: the tokenizer's type_ids carry nothing, the model fills zeros).
    token_types = True
    default_pad_token = "[PAD]"

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:
        return _INPUTS if self.token_types else _INPUTS[:2]

    def default_task(self, config: dict) -> str:
        if any(a in self.classifiers for a in config.get("architectures") or []):
            return "text-classification"
        return "feature-extraction"

    def max_seq_len(self, config: dict) -> int:
        """Tokens the position embeddings cover."""
        return self.normalized_config(config).max_position_embeddings

    def input_range(self, name: str, config: dict) -> list[int]:
        """[low, high) of an input's values (ids index embedding tables)."""
        c = self.normalized_config(config)
        return {"input_ids": [0, c.vocab_size], "attention_mask": [0, 2], "token_type_ids": [0, c.type_vocab_size]}[name]

    def load_model(self, model_dir: Path, auto_class: str, task: str):
        import torch
        import transformers

        try:
            # Eager attention exports as plain matmul + softmax, which TVM's frontend and
            # our schedules handle; SDPA's fused op adds a bool-mask path we gain nothing from.
            return getattr(transformers, auto_class).from_pretrained(
                str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
        except Exception as e:  # transformers raises many types for unreadable weights
            raise ModelSourceError(f"cannot load the {self.name} weights for {task}: {type(e).__name__}: {e}",
                                   where=str(model_dir)) from e

    def _load_feature_extraction(self, model_dir: Path, config: dict) -> Head:
        model = self.load_model(model_dir, "AutoModel", "feature-extraction")
        st = sentence_transformers_layout(model_dir)
        notes = []
        if st is None:
            st = {"pooling": ["mean_tokens"], "normalize": False}
            notes.append("no sentence-transformers config: embeddings are mean-pooled, not normalised")
        names = tuple(name for name, _ in self.inputs)
        width = self.normalized_config(config).hidden_size * len(st["pooling"])
        return Head(_encoder_module(model, names, st["pooling"], st["normalize"]),
                    Tensor("sentence_embedding", ("batch", width), "float32"),
                    Postprocessing("embedding", "sentence_embedding", pooling=tuple(st["pooling"]),
                                   normalize=st["normalize"]),
                    notes=notes)

    def _check_text_classification(self, model_dir: Path, config: dict) -> None:
        if not any(a in self.classifiers for a in config.get("architectures") or []):
            raise UnsupportedModelError(
                f"text-classification needs a checkpoint with a classification head ({', '.join(self.classifiers)}); "
                "this one would get a random head",
                where=str(model_dir / "config.json"), hint="use --task feature-extraction, or a fine-tuned classifier")

    def _load_text_classification(self, model_dir: Path, config: dict) -> Head:
        model = self.load_model(model_dir, "AutoModelForSequenceClassification", "text-classification")
        labels = id2label(config) or [f"LABEL_{i}" for i in range(model.config.num_labels)]
        multi = config.get("problem_type") == "multi_label_classification"
        return Head(_classifier_module(model, tuple(name for name, _ in self.inputs)),
                    Tensor("logits", ("batch", len(labels)), "float32"),
                    Postprocessing("classification", "logits", function="sigmoid" if multi else "softmax",
                                   top_k=min(5, len(labels))),
                    labels=labels)

    def load(self, model_dir: Path, config: dict, task: str, options: BuildOptions) -> ModelSpec:
        quiet_transformers()
        check_task(self, task)
        seq_len = int(options.seq_len)
        max_len = self.max_seq_len(config)
        if not 1 <= seq_len <= max_len:
            raise UnsupportedModelError(f"--seq-len {seq_len} is outside 1..{max_len}",
                                        hint=f"this model has position embeddings for {max_len} tokens")
        task_name = task.replace("-", "_")
        # What the config alone refutes is said before the tokenizer is built.
        getattr(self, "_check_" + task_name, lambda model_dir, config: None)(model_dir, config)
        tok = build_tokenizer(model_dir, seq_len, self.default_pad_token)
        head = getattr(self, "_load_" + task_name)(model_dir, config)
        buckets = _buckets(options.seq_buckets, seq_len)
        pads = {"ids": tok.padding["pad_id"], "attention_mask": 0, "type_ids": 0}
        inputs = [Tensor(name, ("batch", "seq"), "int64", tuple(self.input_range(name, config)), pad=pads[source],
                         source=source) for name, source in self.inputs]
        from builder.validate import accuracy

        gate_texts = accuracy.texts()
        archs = config.get("architectures") or []
        return ModelSpec(
            family=self.name, task=task,
            architecture=(archs or [self.architectures[0]])[0],
            module=head.module, inputs=inputs, outputs=[head.output],
            validation_inputs=self._validation_inputs(tok, inputs, config, seq_len, buckets),
            tolerance=dict(self.tolerance),
            # Text far beyond what the model sees is refused, not silently cut: it is almost
            # always a client bug, and it bounds tokenizer time.
            preprocessing=TextPreprocessing("tokenizer.json", max_length=seq_len, max_chars=100 * seq_len),
            postprocessing=head.postprocessing, labels=head.labels,
            files={"tokenizer.json": tok.to_str().encode()},
            notes=head.notes,
            seq_buckets=buckets,
            accuracy_inputs=accuracy.batches(encode(tok, gate_texts, inputs)),
            accuracy_labels=gate_texts,
        )

    def _validation_inputs(self, tok, inputs: list[Tensor], config: dict, seq_len: int, buckets: list[int]) -> list:
        """Every compiled length, on real text padded to it and on random ids filling it; the
        text at its own length also checks runtime/'s padding to a bucket."""
        import numpy as np

        rng = np.random.default_rng(0)
        vocab = self.input_range("input_ids", config)[1]
        full = {"input_ids": rng.integers(0, vocab, size=(1, seq_len), dtype=np.int64),
                "attention_mask": np.ones((1, seq_len), dtype=np.int64),
                "token_type_ids": np.zeros((1, seq_len), dtype=np.int64)}
        full = {name: full[name] for name, _ in self.inputs}
        texts = encode(tok, VALIDATION_TEXTS, inputs)
        return [fit_seq(a, inputs, n) for n in buckets for a in (texts, full)] + [texts]


def _buckets(requested, seq_len: int) -> list[int]:
    if not requested:
        return default_buckets(seq_len)
    buckets = sorted(set(int(n) for n in requested))
    if buckets[0] < 2 or buckets[-1] != seq_len:
        raise UnsupportedModelError(f"--seq-buckets {','.join(map(str, buckets))} must lie in 2..{seq_len} "
                                    f"and end at --seq-len {seq_len}", hint=f"e.g. --seq-buckets 32,{seq_len}")
    return buckets
