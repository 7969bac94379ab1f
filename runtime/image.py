"""Image requests (base64 JPEG/PNG) -> normalised NCHW float32, as the model's
preprocessor config says (the build translated it into the manifest)."""
from __future__ import annotations

import base64
import binascii
import io

from .arrays import shaped
from .errors import BadInput, string_list
from .limits import MAX_ASPECT

# What the README documents; Pillow opens dozens of formats (EPS through Ghostscript, TIFF,
# ICO, PSD, ...), each more parser exposed to untrusted bytes.
FORMATS = ("JPEG", "PNG", "WEBP")


class ImageEncoder:
    def __init__(self, pre):
        self.pre = pre

    def check(self, images) -> list:
        return string_list(images, "a base64 image string or a non-empty list of them", "a base64 string")

    def decode(self, data: str, index: int):
        from PIL import Image, UnidentifiedImageError

        if data.startswith("data:") and "," in data:  # data URL
            data = data.split(",", 1)[1]
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(f'"inputs"[{index}] is not valid base64') from None
        Image.MAX_IMAGE_PIXELS = self.pre.max_pixels
        try:
            img = Image.open(io.BytesIO(raw), formats=FORMATS)
            # From the header, before anything is decoded.
            w, h = img.size
            if w * h > self.pre.max_pixels:
                raise BadInput(f'"inputs"[{index}] is {w}x{h} pixels; at most {self.pre.max_pixels} are accepted')
            img.load()
        except BadInput:
            raise
        except UnidentifiedImageError:
            raise BadInput(f'"inputs"[{index}] is not a decodable image (JPEG, PNG or WebP are accepted)') from None
        except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadInput(f'"inputs"[{index}] is not a decodable image ({type(e).__name__}: {e})') from None
        return img.convert("RGB")

    def transform(self, img, index: int = 0):
        """Resize and centre-crop as the preprocessor config says (a PIL image)."""
        pre = self.pre
        resize = pre.resize
        if resize:
            w, h = img.size
            if "shortest_edge" in resize:
                # Scaling the shortest edge scales the other alike: bounded before resizing.
                if max(w, h) > MAX_ASPECT * min(w, h):
                    raise BadInput(f'"inputs"[{index}] is {w}x{h} pixels; the longer side may be at most '
                                   f'{MAX_ASPECT} times the shorter')
                edge = resize["shortest_edge"]
                if w <= h:
                    size = (edge, int(edge * h / w))
                else:
                    size = (int(edge * w / h), edge)
            else:
                size = (resize["width"], resize["height"])
            img = img.resize(size, resample=pre.resample)
        crop = pre.center_crop
        if crop:
            w, h = img.size
            ch, cw = crop["height"], crop["width"]
            if w < cw or h < ch:  # pad like transformers' center_crop would, by resizing up
                img = img.resize((max(w, cw), max(h, ch)), resample=pre.resample)
                w, h = img.size
            top, left = (h - ch) // 2, (w - cw) // 2
            img = img.crop((left, top, left + cw, top + ch))
        return img

    def planes(self, img) -> bytes:
        """One image as CHW float32 bytes, normalised: ((x * rescale) - mean) / std.

        Pillow's 32-bit float mode does the arithmetic in C (point() on an "F" image takes a
        linear map), so no numpy is needed; per channel x * (rescale/std) - mean/std."""
        pre = self.pre
        planes = []
        for band, mean, std in zip(img.split(), pre.mean, pre.std):
            scale, offset = pre.rescale / std, -mean / std
            planes.append(band.convert("F").point(lambda v, a=scale, b=offset: v * a + b).tobytes())
        return b"".join(planes)

    def __call__(self, images: list[str]) -> dict:
        crops = [self.transform(self.decode(im, i), i) for i, im in enumerate(images)]
        w, h = crops[0].size
        data = bytearray().join(self.planes(c) for c in crops)
        return {"pixel_values": shaped(data, "float32", (len(crops), 3, h, w))}
