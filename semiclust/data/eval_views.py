"""The evaluation views of a split, in batches: one centre view per image (`transforms.center_view`),
normalised, on the evaluation device, with the labels."""
from __future__ import annotations

from typing import Iterator

import torch

from semiclust.data.datasets import FileSplit, Split
from semiclust.data.decode import MAX_IMAGE_PIXELS
from semiclust.data.loader import EvalFiles, make_loader
from semiclust.data.transforms import center_view, normalize_, to_uint8
from semiclust.config.schema import EvalView, Loader


class EvalViews:
    """The centre views of an evaluation split, normalised, on `device`, in batches with their labels.

    In-memory splits are resized on the device; image files are decoded and cropped by DataLoader
    workers (kept alive between evaluations when the recipe's loader says so). Unreadable files are
    left out and counted in `unreadable`."""

    def __init__(self, split: Split, view: EvalView, mean, std, batch_size: int, device: torch.device,
                 loader: Loader | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS):
        self.split, self.view, self.batch_size, self.device = split, view, batch_size, device
        self.mean, self.std = tuple(mean), tuple(std)
        self.unreadable = 0
        self._loader = None
        self.pixels = split.pixels if isinstance(split, FileSplit) else split.images
        if self.pixels is None:
            self._loader = make_loader(EvalFiles(split, view, batch_size, max_pixels), range(-(-len(split) // batch_size)),
                                       loader or Loader(), device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.unreadable = 0
        if self._loader is None:
            for start in range(0, len(self.split), self.batch_size):
                images = self.pixels[start : start + self.batch_size]
                if isinstance(self.split, FileSplit):  # decoded files (data.cache): the loader workers' views exactly
                    views = to_uint8(center_view(images, self.view)).to(self.device).float().div_(255)
                else:
                    views = center_view(images.to(self.device), self.view)
                yield normalize_(views, self.mean, self.std), self.split.labels[start : start + self.batch_size]
            return
        for item in self._loader:
            self.unreadable += len(item["corrupt"])
            if len(item["labels"]):
                images = item["images"].to(self.device, non_blocking=True).float().div_(255)
                yield normalize_(images, self.mean, self.std), item["labels"]
