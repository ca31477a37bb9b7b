"""Decoded image folders kept in memory. When every image of a file split has one size and the split fits
`data.cache_gb`, its images are decoded once, by loader workers, into one uint8 tensor in shared memory
(`FileSplit.pixels`): each step then crops them in batches like an in-memory dataset, instead of decoding
every file again (for 28-px PNGs, decoding and moving crops between processes is most of a step's cost)."""
from __future__ import annotations

import torch

from semiclust.data.datasets import Dataset, FileSplit
from semiclust.data.decode import UnreadableImage, decode_pixels, image_size, printable
from semiclust.data.loader import make_loader
from semiclust.config.schema import Data

CHUNK = 256
SIZE_SAMPLE = 32  # headers read before deciding to decode a split


class DecodeChunk(torch.utils.data.Dataset):
    """Item c = chunk c of a split's images decoded: (first index, uint8 n x C x H x W), or (first index,
    the reason it cannot be cached: an unreadable file, another size)."""

    def __init__(self, split: FileSplit, size: tuple[int, int], max_pixels: int | None):
        self.split, self.size, self.max_pixels = split, size, max_pixels

    def __len__(self) -> int:
        return -(-len(self.split) // CHUNK)

    def __getitem__(self, c: int) -> tuple[int, torch.Tensor | str]:
        start = c * CHUNK
        indices = range(start, min(start + CHUNK, len(self.split)))
        out = torch.empty((len(indices), self.split.channels, *self.size), dtype=torch.uint8)
        for j, index in enumerate(indices):
            try:
                image = decode_pixels(self.split.location(index), self.max_pixels, self.split.channels)
            except UnreadableImage as err:
                return start, f"'{err.path}' is unreadable ({err.reason})"
            if tuple(image.shape[-2:]) != self.size:
                return start, f"'{printable(self.split.files[index])}' is {image.shape[-1]} x {image.shape[-2]} px, not " \
                              f"{self.size[1]} x {self.size[0]}"
            out[j] = image
        return start, out


def other_size(split: FileSplit, size: tuple[int, int], sample: int = SIZE_SAMPLE) -> str | None:
    """Why the split cannot be cached, from the headers of `sample` files spread over it (an image of another size,
    or an unreadable one), before any worker starts decoding: image folders of many sizes (photos) are told at
    once, not after a chunk of decoding. None when the sample is all of one size (decoding then checks every file)."""
    count = len(split)
    for index in sorted({round(k * (count - 1) / max(sample - 1, 1)) for k in range(min(sample, count))}):
        try:
            width, height = image_size(split.path(index))
        except UnreadableImage as err:
            return f"'{err.path}' is unreadable ({err.reason})"
        if (height, width) != size:
            return f"'{printable(split.files[index])}' is {width} x {height} px, not {size[1]} x {size[0]}"
    return None


def decode_split(split: FileSplit, spec: Data, budget_bytes: float) -> tuple[torch.Tensor | None, str]:
    """The split's images as one shared uint8 tensor, or None and why it was not cached."""
    if not len(split):
        return None, "no images"
    try:
        width, height = image_size(split.path(0))
    except UnreadableImage as err:
        return None, f"'{err.path}' is unreadable ({err.reason})"
    needed = len(split) * split.channels * width * height
    if needed > budget_bytes:
        return None, f"{needed / 2**30:.1f} GiB decoded, more than data.cache_gb {spec.cache_gb:g}"
    other = other_size(split, (height, width))
    if other is not None:
        return None, other
    pixels = torch.empty((len(split), split.channels, height, width), dtype=torch.uint8).share_memory_()
    items = DecodeChunk(split, (height, width), spec.max_image_pixels)
    for start, chunk in make_loader(items, range(len(items)), spec.loader, torch.device("cpu")):
        if isinstance(chunk, str):
            return None, chunk
        pixels[start : start + len(chunk)] = chunk
    return pixels, f"{needed / 2**20:.0f} MiB"


def cache_in_memory(dataset: Dataset, spec: Data) -> list[str]:
    """Decode the file splits of `dataset` into memory where `data.cache` allows; returns what was done, one
    line per split, for the start-up messages."""
    if spec.cache == "off" or dataset.in_memory:
        return []
    notes, left = [], spec.cache_gb * 2**30
    for name, split in (("training", dataset.train), ("evaluation", dataset.test)):
        if not isinstance(split, FileSplit):
            continue
        pixels, why = decode_split(split, spec, left)
        if pixels is None:
            notes.append(f"{name} images read from their files (not cached in memory: {why})")
            continue
        split.pixels, left = pixels, left - pixels.numel()
        notes.append(f"{name} images decoded into memory once ({len(split):,} images, {why})")
    return notes
