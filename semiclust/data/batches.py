"""A step's batch: the two index streams, crops and their augmentation, labels and mixup, as one
`StepBatch` for the method.

Every process draws the augmentation parameters of the whole global batch from the same generator
and applies its own rows, so crops do not depend on the number of processes. In-memory datasets are
cropped on the device; image files are decoded and cropped by loader workers (data/loader.py) and
only their photometric ops run here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from semiclust.data.datasets import Dataset
from semiclust.data.device_decode import fill_on_device
from semiclust.data.loader import Corrupt, TrainFiles, make_loader
from semiclust.data.mixup import mix_extend, mix_pair
from semiclust.data.streams import IndexStream, Stream
from semiclust.data.transforms import CropAugment
from semiclust.config.schema import Recipe
from semiclust.engine.numbers import RunNumbers
from semiclust.errors import SemiclustError


@dataclass
class StepBatch:
    """One step's inputs: V unlabeled crops (each B_u x C x s x s, same images in the same order)
    and the labeled view with its soft targets (mixed copy already appended)."""

    unlabeled: list[torch.Tensor]
    labeled: torch.Tensor | None = None
    labeled_targets: torch.Tensor | None = None
    mixed: torch.Tensor | None = None  # the unlabeled globals mixed (method.unlabeled_mixup), and its lambda
    mixed_lambda: float = 1.0
    unlabeled_index: torch.Tensor | None = None  # the unlabeled images' training-set rows (schedule.propagates only)


def process_rows(per_process: int, copies: int, rank: int, world: int) -> torch.Tensor:
    """Rows of the global batch's augmentation parameters that belong to this process.

    Process r's j-th image is position j * world + r of the global batch (DistributedSampler's
    interleaving); with `copies` crops per image, copy k of it is row k * global + j * world + r.
    """
    local = torch.arange(per_process) * world + rank
    return torch.cat([k * per_process * world + local for k in range(copies)])


class BatchMaker:
    """Builds the StepBatch of each stream position from the index streams with seeded augmentation.

    `unlabeled` always paces the epochs; it and `labeled` are drawn from only when the method uses
    their stream. The run's length, read from the run's numbers, bounds the file loader's order."""

    def __init__(self, recipe: Recipe, dataset: Dataset, unlabeled: IndexStream, labeled: IndexStream | None,
                 streams: frozenset[Stream], numbers: RunNumbers, device: torch.device, channels_last: bool,
                 rank: int, world: int):
        data = recipe.data
        self.dataset, self.device, self.recipe, self.streams = dataset, device, recipe, streams
        self.channels_last, self.world, self.numbers = channels_last, world, numbers
        self.unlabeled, self.labeled = unlabeled, labeled
        self.crop_groups = [CropAugment(g, dataset.mean, dataset.std) for g in data.unlabeled.crops]
        self.labeled_view = CropAugment(data.labeled, dataset.mean, dataset.std)
        self.generator = torch.Generator(device=device).manual_seed(recipe.seed * 7_919 + 1)
        # the draws that decide control flow (jitter order, mixup's lambda and box) come from a CPU generator, so a
        # GPU step reads nothing back; on a CPU it is the same generator (the draws are those of earlier versions)
        self.host_generator = self.generator if device.type == "cpu" else torch.Generator().manual_seed(
            recipe.seed * 7_919 + 1)
        self.accumulate = recipe.optim.accumulate_steps
        self.rows = {(n, c): process_rows(n, c, rank, world).to(device)
                     for n in (unlabeled.batch, labeled.batch if labeled is not None else unlabeled.batch)
                     for c in {1, *(g.count for g in data.unlabeled.crops)}}
        self.pixels = dataset.train.images if dataset.in_memory else dataset.train.pixels  # None: decode the files
        on_device = data.loader.decode == "gpu" or (data.loader.decode == "auto" and device.type == "cuda")
        self.files = None if self.pixels is not None else TrainFiles(
            dataset.train, unlabeled if Stream.UNLABELED in streams else None, labeled, data.unlabeled.crops,
            data.labeled, recipe.seed, rank, world, data.max_image_pixels, decode_on_device=on_device)
        self._items, self._next_position = None, -1
        self.corrupt_images = 0
        self.on_corrupt: Callable[[list[Corrupt]], None] = lambda corrupt: None  # the trainer's warning

    @property
    def total_positions(self) -> int:
        """The stream positions of the whole run (its steps, each of `optim.accumulate_steps` batches)."""
        return self.numbers.total_steps * self.accumulate

    def restart(self) -> None:
        """Forget the file loader's position (it restarts at the next position asked for: after a resume, a
        calibration, or a new length)."""
        self._items, self._next_position = None, -1

    def micro_batches(self, step: int):
        """The batches of optimiser step `step`: stream positions step * accumulate ... + accumulate - 1."""
        for index in range(step * self.accumulate, (step + 1) * self.accumulate):
            yield self(index)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _shares(self, images: int, copies: int) -> dict:
        """This process's rows of the global batch's augmentation draws (nothing to select in one process)."""
        if self.world == 1:
            return {}
        return {"rows": self.rows[(images, copies)], "total": images * copies * self.world}

    def _augment(self, augment: CropAugment, images: torch.Tensor, copies: int) -> torch.Tensor:
        stacked = images.repeat(copies, 1, 1, 1) if copies > 1 else images
        return augment(stacked, self.generator, host=self.host_generator, **self._shares(len(images), copies))

    def _file_item(self, position: int) -> dict:
        """The loader's item for `position`; the loader (re)starts wherever the positions jump."""
        if self._items is None or position != self._next_position:
            self._items = iter(make_loader(self.files, range(position, self.total_positions), self.recipe.data.loader,
                                           self.device))
        item = next(self._items)
        self._next_position = position + 1
        if item["error"]:
            raise SemiclustError(item["error"], exit_code=1)
        if item["corrupt"]:
            self.corrupt_images += len(item["corrupt"])
            self.on_corrupt(item["corrupt"])
        return item

    def _file_crops(self, position: int) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Unlabeled crops, labeled view (photometric ops done here, on the device) and labels of a position."""
        item = self._file_item(position)
        unlabeled = []
        if item["unlabeled"]:
            raws = self._on_device(item["unlabeled"], item["unlabeled_jobs"], self.unlabeled, position,
                                   [g.group for g in self.crop_groups])
            for group, raw in zip(self.crop_groups, raws):
                count = group.group.count
                unlabeled.extend(group.finish(raw, self.generator, host=self.host_generator,
                                              **self._shares(len(raw) // count, count)).chunk(count))
        view = labels = None
        if self.labeled is not None:
            labels = item["labels"].clone()
            (raw,) = self._on_device([item["labeled"]], item["labeled_jobs"], self.labeled, position,
                                     [self.labeled_view.group], labels)
            view = self.labeled_view.finish(raw, self.generator, host=self.host_generator, **self._shares(len(raw), 1))
        return unlabeled, view, labels

    def _on_device(self, raws: list[torch.Tensor], jobs: list, stream: IndexStream, position: int,
                   groups: list, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The workers' crops on the device, with the images they left to it decoded and cut there; an image the
        device cannot decode is decoded here on the CPU path (its label follows a substitute)."""
        raws = [raw.to(self.device, non_blocking=True) for raw in raws]
        if not jobs:
            return raws
        corrupt: list[Corrupt] = []

        def on_cpu(job) -> list[torch.Tensor]:
            used, parts = self.files.cpu_crops(stream, position, job.row, job.index, groups, corrupt)
            if labels is not None:
                labels[job.row] = self.dataset.train.labels[used]
            return parts

        filled = fill_on_device(raws, jobs, groups, len(raws[0]) // groups[0].count, on_cpu)
        if corrupt:
            self.corrupt_images += len(corrupt)
            self.on_corrupt(corrupt)
        return filled

    def _memory_crops(self, position: int) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        images, unlabeled = self.pixels, []
        if Stream.UNLABELED in self.streams:
            raw = images[self.unlabeled.indices(position)].to(self.device, non_blocking=True)
            for group in self.crop_groups:
                unlabeled.extend(self._augment(group, raw, group.group.count).chunk(group.group.count))
        view = labels = None
        if self.labeled is not None:
            index = self.labeled.indices(position)
            view = self._augment(self.labeled_view, images[index].to(self.device, non_blocking=True), 1)
            labels = self.dataset.train.labels[index]
        return unlabeled, view, labels

    def __call__(self, position: int) -> StepBatch:
        unlabeled, view, labels = self._memory_crops(position) if self.files is None else self._file_crops(position)
        batch = StepBatch(unlabeled=[self._layout(c) for c in unlabeled])
        if unlabeled and self.recipe.schedule.propagates:  # the stage's targets are looked up by image
            batch.unlabeled_index = self.unlabeled.indices(position).to(self.device, non_blocking=True)
        if view is not None:
            targets = F.one_hot(labels.to(self.device), self.dataset.num_classes).float()
            mix = self.recipe.method.mixup
            if mix.enabled:
                view, targets = mix_extend(view, targets, mix.mixup_prob, mix.alpha, self.host_generator)
            batch.labeled, batch.labeled_targets = self._layout(view), targets
        if self.recipe.method.unlabeled_mixup.enabled and unlabeled:
            mix = self.recipe.method.mixup
            mixed, batch.mixed_lambda = mix_pair(unlabeled[0], unlabeled[1].flip(0), mix.mixup_prob, mix.alpha,
                                                 self.host_generator)
            batch.mixed = self._layout(mixed)
        return batch
