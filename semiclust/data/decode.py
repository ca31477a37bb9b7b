"""Reading image files: decode to RGB uint8 tensors once, and say plainly why a file is unreadable."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec, which is not one of our
# dependencies; the pinned codecs work, so the per-call warning is silenced rather than repeated.
_CODEC_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class UnreadableImage(Exception):
    """A file that could not be read or decoded; `reason` is a short, human-readable cause."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _short_reason(error: Exception) -> str:
    """torchvision's C++ errors start with a source location; keep the sentence after it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\S+, \S+\.cpp:\d+, ", "", text)[:200]


def decode_rgb(path: Path | str) -> torch.Tensor:
    """The image at `path` as a 3 x H x W uint8 tensor, EXIF orientation applied.

    torchvision's decoders (libjpeg-turbo, libpng, libwebp) read JPEG/PNG/GIF/WebP straight into a
    tensor; other formats (BMP, TIFF, PPM) go through PIL. Raises UnreadableImage, never a bare error.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CODEC_DEPRECATION, category=DeprecationWarning)
        try:
            return _decode(path)
        except UnreadableImage:
            raise
        except Exception as err:  # noqa: BLE001 - any decoder failure is a property of the file
            raise UnreadableImage(path, f"{type(err).__name__}: {_short_reason(err)}") from None


def _decode(path: Path | str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        data = read_file(str(path))
    except RuntimeError as err:
        reason = "file not found" if not Path(path).exists() else _short_reason(err)
        raise UnreadableImage(path, reason) from None
    if data.numel() == 0:
        raise UnreadableImage(path, "empty file")
    try:
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        # an unsupported format, or a damaged file: PIL reads more formats and names damage better
        # (libpng's own reason is often just "Internal error.")
        return _decode_with_pil(path)
    return as_uint8_rgb(image)


def as_uint8_rgb(image: torch.Tensor) -> torch.Tensor:
    """3 x H x W uint8 from what decoders return: the first frame of an animation, 16-bit PNGs scaled."""
    if image.ndim == 4:
        image = image[0]
    if image.dtype != torch.uint8:
        from torchvision.transforms.v2 import functional as F2

        image = F2.to_dtype(image, torch.uint8, scale=True)
    return image


def _decode_with_pil(path: Path | str) -> torch.Tensor:
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
            return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, str(err) or type(err).__name__) from None


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, str(err) or type(err).__name__) from None
