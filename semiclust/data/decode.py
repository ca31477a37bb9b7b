"""Reading image files: decode to RGB (or grey) uint8 tensors once, and say plainly why a file is unreadable."""
from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import torch

from semiclust.data.transforms import LUMA

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec, which is not one of our
# dependencies; the pinned codecs work, so the per-call warning is silenced rather than repeated.
_CODEC_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default limit (1024 * 1024 * 1024 // 4 // 3): the recipe's data.max_image_pixels


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(name: str | bytes | os.PathLike) -> str:
    """A file name as a user sees it: UTF-8 names as they are; bytes that are not UTF-8 (which Python holds as lone
    surrogates) and control characters as \\xNN escapes. Every path shown to a user (messages, tables, CSV and
    JSON) goes through here, so that output is valid UTF-8 and a name can neither break a line nor drive a terminal."""
    text = os.fspath(name)
    if isinstance(text, str) and text.isprintable():
        return text
    if isinstance(text, str):
        try:
            text = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that no file name decoded to
            text = text.encode("utf-8", "backslashreplace")
    return _UNPRINTABLE.sub(lambda found: f"\\x{ord(found.group()):02x}", text.decode("utf-8", "backslashreplace"))


class UnreadableImage(Exception):
    """A file that could not be read or decoded; `reason` is a short, human-readable cause, `path` the file's
    printable name."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = printable(path), reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a device (a character special file)"), (stat.S_ISBLK, "a device (a block special file)"))


def _kind(mode: int, role: str = "an image file") -> str:
    """What a file that is not a regular file is, from its stat mode: "a FIFO (named pipe), not an image file"."""
    return next((what for test, what in _NOT_REGULAR if test(mode)), "a special file") + f", not {role}"


def _stat_failure(path: Path | str, err: OSError) -> str:
    """Why a path could not be followed to a file: a link loop, a link to a missing file, no file."""
    if err.errno == errno.ELOOP:
        return "a symbolic link loop (the link points back to itself)"
    if os.path.islink(path):
        return f"a symbolic link to a missing file '{printable(os.readlink(path))}'"
    if err.errno == errno.ENOENT:
        return "file not found"
    return (os.strerror(err.errno) if err.errno else str(err)).lower()


def file_problem(path: Path | str, role: str = "an image file") -> str | None:
    """Why `path` is not a regular file (a symbolic link to one is): not found, a link to a missing file, a link
    loop, a folder, a FIFO, a socket or a device (", not `role`"); None when it is one. Only stats the path: never
    opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return _stat_failure(path, err)
    return None if stat.S_ISREG(mode) else _kind(mode, role)


def predicate(problem: str) -> str:
    """A `file_problem` to follow "'PATH' ": "is a FIFO (named pipe), not an image file", "does not exist"."""
    if problem == "file not found":
        return "does not exist"
    return f"is {problem}" if problem.startswith("a ") else f"cannot be read ({problem})"


def open_regular(path: Path | str) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file, else UnreadableImage saying what it is. Checked
    before opening (a device is never opened) and again on the open file, which is opened non-blocking: a FIFO
    swapped in between cannot block the reader."""
    problem = file_problem(path)
    if problem:
        raise UnreadableImage(path, problem)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise UnreadableImage(path, file_problem(path) or _stat_failure(path, err)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnreadableImage(path, _kind(mode))
    return os.fdopen(fd, "rb")


def _short_reason(error: Exception) -> str:
    """torchvision's C++ errors start with a source location; keep the sentence after it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^\S+, \S+\.cpp:\d+, ", "", text)[:200]


def decode_rgb(path: Path | str, max_pixels: int | None = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """The image at `path` as a 3 x H x W uint8 tensor, EXIF orientation applied.

    The file is read here (any name opens, UTF-8 or not; a FIFO or a device is refused unopened), then its
    header: an image declaring more than `max_pixels` pixels (a decompression bomb) is never decoded.
    torchvision's decoders (libjpeg-turbo, libwebp) read JPEG/GIF/WebP straight into a tensor; PNGs and other
    formats (BMP, TIFF, PPM) go through PIL. Raises UnreadableImage, never a bare error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CODEC_DEPRECATION, category=DeprecationWarning)
        try:
            return _decode(path, max_pixels)
        except UnreadableImage:
            raise
        except Exception as err:  # noqa: BLE001 - any decoder failure is a property of the file
            raise UnreadableImage(path, f"{type(err).__name__}: {_short_reason(err)}") from None


def decode_pixels(path: Path | str, max_pixels: int | None = MAX_IMAGE_PIXELS, channels: int = 3) -> torch.Tensor:
    """The image at `path` as a `channels` x H x W uint8 tensor: RGB (3) or its luma (1, for folders of grey
    images: `data.options.channels`), converted here once so that every path that reads the file sees the same
    pixels. Raises UnreadableImage like `decode_rgb`."""
    image = decode_rgb(path, max_pixels)
    return image if channels == 3 else grey_uint8(image)


def grey_uint8(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of uint8 RGB images (3 x H x W or N x 3 x H x W) with one channel, in integers rounded half
    up, so that every device gives the same pixels; a grey image (R = G = B) keeps its values exactly."""
    weights = torch.tensor([round(1000 * w) for w in LUMA], dtype=torch.int32, device=images.device).view(3, 1, 1)
    return ((images.to(torch.int32) * weights).sum(-3, keepdim=True) + 500).div_(1000, rounding_mode="floor").to(
        torch.uint8)


def _decode(path: Path | str, max_pixels: int | None) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    with open_regular(path) as handle:  # read here, not by path in C++: a name that is not UTF-8 opens too
        data = handle.read()
    if not data:
        raise UnreadableImage(path, "empty file")
    head = data[: 1 << 20]
    if max_pixels is not None:
        check_pixels(path, declared_size(head) or _pil_size(path, io.BytesIO(data)), max_pixels)
    if _png(head) is not None:  # torchvision's libpng path crashes the process on crafted PNG data; PIL raises
        return _decode_with_pil(path, data)
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                             apply_exif_orientation=True)
    except RuntimeError:
        # an unsupported format, or a damaged file: PIL reads more formats and names damage better
        # (libpng's own reason is often just "Internal error.")
        return _decode_with_pil(path, data)
    return as_uint8_rgb(image)


def as_uint8_rgb(image: torch.Tensor) -> torch.Tensor:
    """3 x H x W uint8 from what decoders return: the first frame of an animation, 16-bit PNGs scaled."""
    if image.ndim == 4:
        image = image[0]
    if image.dtype != torch.uint8:
        from torchvision.transforms.v2 import functional as F2

        image = F2.to_dtype(image, torch.uint8, scale=True)
    return image


def _decode_with_pil(path: Path | str, data: bytes) -> torch.Tensor:
    """The file's bytes decoded by PIL (formats torchvision does not read, and PNGs), deep grey scaled to 8 bits."""
    import numpy as np
    from PIL import Image, ImageOps

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # semiclust's own limit applies (check_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I"):  # 16- or 32-bit integer gray: scale to 8 bits, do not clip
                deep = np.asarray(image).astype(np.float64) / (257.0 if image.mode.startswith("I;16") else 16843009.0)
                image = Image.fromarray(np.clip(np.rint(deep), 0, 255).astype(np.uint8))
            elif image.mode == "F":
                image = Image.fromarray(float_grey_uint8(path, np.asarray(image)))
            rgb = image.convert("RGB")
            return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, _pil_reason(err)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _pil_reason(error: Exception) -> str:
    """PIL's reason without the file object it names ("cannot identify image file <_io.BytesIO object at 0x...>")."""
    text = re.sub(r" ?<_io\.\w+ (object at 0x[0-9a-f]+|name=.*)>", "", str(error)).strip()
    if text == "cannot identify image file":
        return "cannot identify image file (not an image in a format semiclust reads, or a damaged one)"
    return text or type(error).__name__


def float_grey_uint8(path: Path | str, values):
    """A 32-bit float grey image (numpy, H x W) as uint8: values in 0..1 scaled by 255, values in 0..255 kept (both
    rounded). Any other range, or a value that is not a number, has no scale to guess: UnreadableImage."""
    import numpy as np

    finite = bool(np.isfinite(values).all())
    low, high = (float(values.min()), float(values.max())) if finite and values.size else (0.0, 0.0)
    if not finite or low < 0 or high > 255:
        found = "values that are not numbers (NaN or infinity)" if not finite else f"values from {low:g} to {high:g}"
        raise UnreadableImage(path, f"a 32-bit float image with {found}; semiclust reads float images in 0..1 or "
                                    "0..255 only: convert it to 8 or 16 bits")
    return np.rint(values * (255.0 if high <= 1.0 else 1.0)).astype(np.uint8)


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels (no size limit applies here)."""
    with open_regular(path) as handle:
        return _pil_size(path, handle)


def _pil_size(path: Path | str, handle: BinaryIO) -> tuple[int, int]:
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # semiclust applies its own limit
    try:
        with Image.open(handle) as image:
            return image.size
    except (OSError, ValueError, SyntaxError) as err:
        raise UnreadableImage(path, _pil_reason(err)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _png(data: bytes) -> tuple[int, int] | None:
    return struct.unpack(">II", data[16:24]) if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" else None


def _gif(data: bytes) -> tuple[int, int] | None:
    return struct.unpack("<HH", data[6:10]) if data[:6] in (b"GIF87a", b"GIF89a") else None


def _bmp(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM" or len(data) < 26:
        return None
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    kind = data[12:16]
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame segment, walking the segments before it."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG, JPEG, GIF, BMP or WebP file declares in its header, from its first bytes
    (None for other formats): the bomb check costs nothing beside the decode."""
    for reader in (_png, _jpeg, _gif, _webp, _bmp):
        found = reader(data)
        if found is not None:
            return found
    return None


def check_pixels(path: Path | str, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image whose header declares more than `max_pixels` pixels, before decoding anything."""
    width, height = size
    if width * height > max_pixels:
        raise UnreadableImage(path, f"its header declares {width} x {height} pixels ({width * height:,}), more than "
                                    f"data.max_image_pixels ({max_pixels:,}): a decompression bomb, or an image far "
                                    "larger than training needs (raise the limit if it is real)")
