"""ResNet image classifiers (transformers ResNetForImageClassification)."""
from __future__ import annotations

from pathlib import Path


from builder.errors import ModelSourceError, UnsupportedModelError
from builder.options import BuildOptions
from runtime.manifest import ImagePreprocessing, Postprocessing, Tensor

from .base import Family, ModelSpec, check_task, id2label, quiet_transformers, read_json

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC


def image_preprocessing(model_dir: Path, notes: list) -> ImagePreprocessing:
    """Our own description of the preprocessor config (transformers' image processors need
    torchvision, which cannot sit beside this torch), applied by runtime/image.py."""
    path = model_dir / "preprocessor_config.json"
    if path.is_file():
        cfg = read_json(path, "preprocessor_config.json")
    else:
        notes.append("no preprocessor_config.json: using ImageNet defaults (resize 256, crop 224)")
        cfg = {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224},
               "crop_pct": 0.875}
    size = cfg.get("size", {"shortest_edge": 224})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    kind = cfg.get("image_processor_type", "")
    resize, crop = None, None
    if cfg.get("do_resize", True):
        if "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            if "ConvNext" in kind and edge < 384:
                # ConvNextImageProcessor: resize to edge/crop_pct, then crop edge x edge.
                resize = {"shortest_edge": int(edge / float(cfg.get("crop_pct", 0.875)))}
                crop = {"height": edge, "width": edge}
            elif "ConvNext" in kind:
                resize = {"height": edge, "width": edge}
            else:
                resize = {"shortest_edge": edge}
        elif "height" in size and "width" in size:
            resize = {"height": int(size["height"]), "width": int(size["width"])}
        else:
            raise UnsupportedModelError(f"preprocessor size {size!r} is not understood", where=str(path))
    if crop is None and cfg.get("do_center_crop"):
        cs = cfg.get("crop_size", size)
        if isinstance(cs, int):
            cs = {"height": cs, "width": cs}
        crop = {"height": int(cs["height"]), "width": int(cs["width"])}
    final = crop or (resize if resize and "height" in resize else None)
    if final is None:
        raise UnsupportedModelError("preprocessing does not fix the image size (no crop, no fixed resize)",
                                    where=str(path), hint="add crop_size or size {height, width}")
    normalize = cfg.get("do_normalize", True)
    return ImagePreprocessing(
        resize=resize,
        center_crop=crop,
        resample=int(cfg.get("resample", BICUBIC)),
        rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
        mean=tuple(cfg.get("image_mean", IMAGENET_MEAN)) if normalize else (0.0,) * 3,
        std=tuple(cfg.get("image_std", IMAGENET_STD)) if normalize else (1.0,) * 3,
        height=int(final["height"]),
        width=int(final["width"]),
        # Base64 payloads are capped by Lambda's 6 MB anyway; this bounds decode memory.
        max_pixels=50_000_000,
    )


def _classifier_module(model):
    import torch

    class ImageClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return (self.model(pixel_values=pixel_values).logits,)

    return ImageClassifier().eval()


class ResNetFamily(Family):
    name = "resnet"
    description = "ResNet image classifiers (ResNetForImageClassification: basic-block 18/34, bottleneck 50/101/152)"
    tasks = ("image-classification",)
    architectures = ("ResNetForImageClassification",)
    model_types = ("resnet",)

    def default_task(self, config: dict) -> str:
        return "image-classification"

    def load(self, model_dir: Path, config: dict, task: str, options: BuildOptions) -> ModelSpec:
        import numpy as np
        import torch
        import transformers

        quiet_transformers()
        check_task(self, task)
        notes: list[str] = []
        pre = image_preprocessing(model_dir, notes)
        try:
            model = transformers.ResNetForImageClassification.from_pretrained(str(model_dir), dtype=torch.float32)
        except Exception as e:  # transformers raises many types for unreadable weights
            raise ModelSourceError(f"cannot load ResNetForImageClassification weights: {e}",
                                   where=str(model_dir)) from e
        model.eval()
        labels = id2label(config) or [f"LABEL_{i}" for i in range(model.config.num_labels)]
        h, w = pre.height, pre.width
        rng = np.random.default_rng(0)
        return ModelSpec(
            family=self.name, task=task, architecture="ResNetForImageClassification",
            module=_classifier_module(model),
            inputs=[Tensor("pixel_values", ("batch", 3, h, w), "float32")],
            outputs=[Tensor("logits", ("batch", len(labels)), "float32")],
            validation_inputs=[
                {"pixel_values": rng.standard_normal((1, 3, h, w)).astype(np.float32)},
                {"pixel_values": rng.standard_normal((2, 3, h, w)).astype(np.float32)},
            ],
            tolerance=dict(self.tolerance),
            preprocessing=pre,
            postprocessing=Postprocessing("classification", "logits", function="softmax", top_k=min(5, len(labels))),
            labels=labels, notes=notes,
        )
