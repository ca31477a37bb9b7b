"""JPEG files decoded on the training device (`data.loader.decode: gpu`): loader workers only read the bytes and
the header and draw each crop's window and flip, exactly as the CPU path draws them (`crop_windows`, shared with
data/loader.py); the training process decodes the batch's JPEGs at once (`torchvision.io.decode_jpeg`, nvJPEG on
a GPU) and cuts every crop of a group in one `roi_align` call. Boxes and flips are those of the CPU path, so
resume and world-size invariance hold; pixels differ from the CPU path's antialiased resize by the resampling
kernel (roi_align averages bilinear samples per output pixel). Files that are not plain JPEGs (PNG, CMYK, an EXIF
rotation) and JPEGs the device cannot decode take the CPU path, image by image."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from semiclust.data.decode import _CODEC_DEPRECATION, UnreadableImage, check_pixels, grey_uint8, open_regular
from semiclust.data.transforms import crop_boxes
from semiclust.config.schema import CropGroup

Window = tuple[int, int, int, int]  # top, left, height, width in pixels of the decoded image


def crop_windows(height: int, width: int, group: CropGroup, generator: torch.Generator) -> tuple[list[Window], list[bool]]:
    """`group.count` random resized crop windows and flips of an image of height x width: the draws of the CPU
    path (box, then flips), rounded to pixels the same way."""
    boxes = crop_boxes(group.count, group.scale, group.ratio, generator, torch.device("cpu"), height / width)
    flips = (torch.rand(group.count, generator=generator) < group.flip).tolist()
    windows = []
    for x0, y0, w, h in boxes.tolist():
        crop_w, crop_h = max(1, round(w * width)), max(1, round(h * height))
        left, top = min(round(x0 * width), width - crop_w), min(round(y0 * height), height - crop_h)
        windows.append((top, left, crop_h, crop_w))
    return windows, flips


@dataclass
class JpegFile:
    """A plain JPEG's bytes and size, read by a worker for the device to decode."""

    data: torch.Tensor  # uint8, the whole file
    height: int
    width: int


def plain_jpeg(path: Path | str, max_pixels: int | None) -> JpegFile | None:
    """The file as a JpegFile if the device decodes it as the CPU path would (a baseline or progressive JPEG in
    RGB or grayscale, no EXIF rotation, within `max_pixels`); None sends it down the CPU path."""
    from PIL import Image

    try:
        with open_regular(path) as handle:  # a FIFO or a device is refused here, never opened by PIL
            with Image.open(handle) as image:
                plain = image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(0x0112, 1) == 1
                width, height = image.size
            if not plain:
                return None
            if max_pixels is not None:
                check_pixels(path, (width, height), max_pixels)
            handle.seek(0)
            data = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
    except (OSError, ValueError, SyntaxError, UnreadableImage):
        return None  # the CPU path reads it again and says why it is unreadable
    return JpegFile(data, height, width)


@dataclass
class DeviceJob:
    """One image of a batch for the device: its row j in the batch, its file, and per crop group its windows and
    flips. `index` is the training image (for the CPU fallback)."""

    row: int
    index: int
    jpeg: JpegFile
    windows: list[list[Window]]
    flips: list[list[bool]]


def decode_all(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG bytes to 3 x H x W uint8 on `device`, as one batch; one that fails is None (the others are kept)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CODEC_DEPRECATION, category=DeprecationWarning)
        try:
            return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        decoded: list[torch.Tensor | None] = []
        for data in files:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def cut_windows(images: list[torch.Tensor], windows: list[list[Window]], flips: list[list[bool]],
                size: int) -> torch.Tensor:
    """Every window of every image resampled to size x size and flipped where asked, in one roi_align call over
    the images padded to one size: (sum of windows) x C x size x size uint8, image-major, on the images' device."""
    from torchvision.ops import roi_align

    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width), dtype=torch.float32)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        batch[i, :, :h, :w] = image
        # a sample in the last half pixel of a smaller image interpolates with the next column / row: repeat its edge
        # there (roi_align clamps at the edge of the padded batch only), or its bottom and right edges darken
        batch[i, :, :h, w : w + 1] = image[:, :, w - 1 :]
        batch[i, :, h : h + 1, : w + 1] = batch[i, :, h - 1 : h, : w + 1]
    rois = [(i, left, top, left + w, top + h) for i, image_windows in enumerate(windows)
            for top, left, h, w in image_windows]
    boxes = torch.tensor(rois, dtype=torch.float32).to(batch.device, non_blocking=True)
    crops = roi_align(batch, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    mirror = torch.tensor([f for image_flips in flips for f in image_flips]).to(batch.device, non_blocking=True)
    crops = torch.where(mirror.view(-1, 1, 1, 1), crops.flip(-1), crops)
    return crops.round_().clamp_(0, 255).to(torch.uint8)


CpuFallback = Callable[[DeviceJob], list[torch.Tensor]]  # the CPU path's crops of a job's image, one per group


def fill_on_device(crops: list[torch.Tensor], jobs: list[DeviceJob], groups: list[CropGroup], rows: int,
                   fallback: CpuFallback) -> list[torch.Tensor]:
    """Write the crops of the device-decoded images into the batch's crop tensors (one per group, copy k of image
    j at row k * rows + j, already on the device); images the device cannot decode get the CPU path's crops."""
    if not jobs:
        return crops
    device = crops[0].device
    decoded = decode_all([job.jpeg.data for job in jobs], device)
    if crops[0].shape[1] == 1:  # a grey split (data.options.channels: 1): the CPU path's luma of the RGB decode
        decoded = [grey_uint8(image) if image is not None else None for image in decoded]
    done = [(job, image) for job, image in zip(jobs, decoded) if image is not None]
    for job, image in zip(jobs, decoded):
        if image is None:
            for out, part in zip(crops, fallback(job)):
                out[job.row :: rows] = part.to(device)
    if not done:
        return crops
    for g, (group, out) in enumerate(zip(groups, crops)):
        cut = cut_windows([image for _, image in done], [job.windows[g] for job, _ in done],
                          [job.flips[g] for job, _ in done], group.size)
        # image i's copy k goes to row k * rows + its row j (the CPU path's copy-major layout), in one copy
        targets = torch.tensor([k * rows + job.row for job, _ in done for k in range(group.count)])
        out.index_copy_(0, targets.to(device, non_blocking=True), cut)
    return crops
