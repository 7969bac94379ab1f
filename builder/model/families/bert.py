"""BERT encoders: BertModel / sentence-transformers checkpoints (feature-extraction) and
BertForSequenceClassification (text-classification)."""
from __future__ import annotations

from pathlib import Path


from builder.errors import ModelSourceError, UnsupportedModelError
from .base import (Family, ModelSpec, TensorSpec, check_task, default_buckets, fit_seq, id2label,
                   quiet_transformers, read_json)

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


def build_tokenizer(model_dir: Path, seq_len: int):
    """A `tokenizers.Tokenizer` that pads and truncates to seq_len by itself, so the
    runtime only calls encode_batch."""
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
        raise ModelSourceError("no tokenizer: neither tokenizer.json nor vocab.txt", where=str(model_dir),
                               hint="save the tokenizer with the model (tokenizer.save_pretrained)")
    pad_token = tok_cfg.get("pad_token") or "[PAD]"
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content", "[PAD]")
    pad_id = tok.token_to_id(pad_token)
    if pad_id is None:
        raise ModelSourceError(f"tokenizer has no pad token {pad_token!r}", where=str(model_dir))
    tok.enable_truncation(max_length=seq_len)
    # To the longest text of a batch only: runtime/ pads on to the compiled length that fits.
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right")
    return tok


def encode(tok, texts: list[str]) -> dict:
    import numpy as np

    from runtime.text import to_arrays  # the runtime's own conversion: build and serve agree

    return {name: np.asarray(view) for name, view in to_arrays(tok.encode_batch(texts)).items()}


def _encoder_module(bert, pooling: list[str], normalize: bool):
    import torch

    class SentenceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids)[0]
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


def _classifier_module(model):
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return (self.model(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).logits,)

    return Classifier().eval()


class BertFamily(Family):
    name = "bert"
    description = "BERT encoders: BertModel, sentence-transformers, BertForSequenceClassification"
    tasks = ("feature-extraction", "text-classification")
    architectures = ("BertModel", "BertForSequenceClassification")
    model_types = ("bert",)

    def default_task(self, config: dict, model_dir: Path) -> str:
        if "BertForSequenceClassification" in (config.get("architectures") or []):
            return "text-classification"
        return "feature-extraction"

    def load(self, model_dir: Path, config: dict, task: str, options: dict) -> ModelSpec:
        import numpy as np
        import torch
        import transformers

        quiet_transformers()
        check_task(self, task)
        seq_len = int(options.get("seq_len") or 128)
        max_pos = int(config.get("max_position_embeddings", 512))
        if not 1 <= seq_len <= max_pos:
            raise UnsupportedModelError(f"--seq-len {seq_len} is outside 1..{max_pos}",
                                        hint=f"this model has {max_pos} position embeddings")
        if task == "text-classification" and "BertForSequenceClassification" not in (config.get("architectures") or []):
            raise UnsupportedModelError(
                "text-classification needs a checkpoint with a classification head "
                "(BertForSequenceClassification); this one would get a random head",
                where=str(model_dir / "config.json"), hint="use --task feature-extraction, or a fine-tuned classifier")
        tok = build_tokenizer(model_dir, seq_len)
        notes = []
        cls = transformers.BertModel if task == "feature-extraction" else transformers.BertForSequenceClassification
        try:
            # Eager attention exports as plain matmul + softmax, which TVM's frontend and
            # our schedules handle; SDPA's fused op adds a bool-mask path we gain nothing from.
            model = cls.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
        except Exception as e:  # transformers raises many types for unreadable weights
            raise ModelSourceError(f"cannot load {cls.__name__} weights: {e}", where=str(model_dir)) from e
        model.eval()

        labels = None
        if task == "feature-extraction":
            st = sentence_transformers_layout(model_dir)
            if st is None:
                st = {"pooling": ["mean_tokens"], "normalize": False}
                notes.append("no sentence-transformers config: embeddings are mean-pooled, not normalised")
            module = _encoder_module(model, st["pooling"], st["normalize"])
            width = config["hidden_size"] * len(st["pooling"])
            outputs = [TensorSpec("sentence_embedding", ["batch", width], "float32")]
            post = {"kind": "embedding", "output": "sentence_embedding",
                    "pooling": st["pooling"], "normalize": st["normalize"]}
        else:
            labels = id2label(config) or [f"LABEL_{i}" for i in range(model.config.num_labels)]
            module = _classifier_module(model)
            outputs = [TensorSpec("logits", ["batch", len(labels)], "float32")]
            multi = config.get("problem_type") == "multi_label_classification"
            post = {"kind": "classification", "output": "logits",
                    "function": "sigmoid" if multi else "softmax", "top_k": min(5, len(labels))}

        buckets = _buckets(options.get("seq_buckets"), seq_len)
        pad_id = tok.padding["pad_id"]
        inputs = [
            TensorSpec("input_ids", ["batch", "seq"], "int64", [0, int(config["vocab_size"])], pad=pad_id),
            TensorSpec("attention_mask", ["batch", "seq"], "int64", [0, 2], pad=0),
            TensorSpec("token_type_ids", ["batch", "seq"], "int64", [0, int(config.get("type_vocab_size", 2))], pad=0),
        ]
        rng = np.random.default_rng(0)
        full = {
            "input_ids": rng.integers(0, config["vocab_size"], size=(1, seq_len), dtype=np.int64),
            "attention_mask": np.ones((1, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((1, seq_len), dtype=np.int64),
        }
        texts = encode(tok, VALIDATION_TEXTS)
        # Every compiled length is validated, on real text padded to it and on random ids
        # filling it; the text at its own length also checks runtime/'s padding to a bucket.
        validation = [fit_seq(a, inputs, n) for n in buckets for a in (texts, full)] + [texts]
        return ModelSpec(
            family=self.name, task=task,
            architecture=(config.get("architectures") or ["BertModel"])[0],
            module=module, inputs=inputs, outputs=outputs,
            validation_inputs=validation,
            tolerance=dict(self.tolerance),
            preprocessing={"kind": "text", "tokenizer": "tokenizer.json", "max_length": seq_len,
                           # Text far beyond what the model sees is refused, not silently cut:
                           # it is almost always a client bug, and it bounds tokenizer time.
                           "max_chars": 100 * seq_len},
            postprocessing=post, labels=labels,
            files={"tokenizer.json": tok.to_str().encode()},
            notes=notes,
            seq_buckets=buckets,
        )


def _buckets(requested, seq_len: int) -> list[int]:
    if not requested:
        return default_buckets(seq_len)
    buckets = sorted(set(int(n) for n in requested))
    if buckets[0] < 2 or buckets[-1] != seq_len:
        raise UnsupportedModelError(f"--seq-buckets {','.join(map(str, buckets))} must lie in 2..{seq_len} "
                                    f"and end at --seq-len {seq_len}", hint=f"e.g. --seq-buckets 32,{seq_len}")
    return buckets
