"""Image files for training and evaluation, decoded by DataLoader workers.

A worker decodes each image ONCE and cuts all of its crops from that one tensor (geometry only:
random resized crop and flip, uint8, torchvision v2 kernels with antialiasing). The photometric
ops (colour jitter, grayscale, blur, solarize) then run on the training device in batches
(`CropAugment.finish`), where they are nearly free on a GPU.

Every random choice is a pure function of (seed, stream, position, row): the crops of an image
depend neither on the number of workers nor on the number of processes, and resuming at any
step reproduces them exactly. An unreadable image is replaced by the next readable one of the
same pool and reported with the batch (the trainer warns, or fails the run if the recipe says so).
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F2

from semiclust.data.datasets import FileSplit
from semiclust.data.decode import MAX_IMAGE_PIXELS, UnreadableImage, decode_pixels, decode_rgb, printable
from semiclust.data.device_decode import DeviceJob, crop_windows, plain_jpeg
from semiclust.data.streams import IndexStream
from semiclust.data.transforms import center_view, to_uint8
from semiclust.errors import SemiclustError
from semiclust.config.schema import CropGroup, EvalView, Loader

MAX_SUBSTITUTES = 16  # consecutive unreadable images tolerated before a batch gives up
_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


def image_generator(seed: int, stream: int, position: int, row: int) -> torch.Generator:
    """The generator of one image's crops: row `row` of the global batch at stream position `position`."""
    value = (((seed * 1_000_003 + stream) * 1_000_000_007 + position) * 65_537 + row) % (2**63)
    return torch.Generator().manual_seed(value)


def cut_crops(image: torch.Tensor, group: CropGroup, generator: torch.Generator) -> torch.Tensor:
    """`group.count` random resized crops (and flips) of one uint8 C x H x W image: count x C x s x s."""
    windows, flips = crop_windows(image.shape[-2], image.shape[-1], group, generator)
    crops = torch.empty((group.count, image.shape[0], group.size, group.size), dtype=torch.uint8)
    for k, ((top, left, crop_h, crop_w), flip) in enumerate(zip(windows, flips)):
        crop = F2.resized_crop(image, top, left, crop_h, crop_w, [group.size, group.size],
                               interpolation=_INTERPOLATION[group.interpolation], antialias=True)
        crops[k] = crop.flip(-1) if flip else crop
    return crops


@dataclass
class Corrupt:
    path: str
    reason: str


@dataclass
class ReadResult:
    image: torch.Tensor
    index: int  # the image actually decoded: `index`, or the substitute (whose label must be used)
    corrupt: list[Corrupt] = field(default_factory=list)


def read_with_substitutes(split: FileSplit, index: int, pool: torch.Tensor,
                          max_pixels: int | None = MAX_IMAGE_PIXELS) -> ReadResult:
    """Decode image `index`; if it is unreadable, the next members of the sorted `pool` in turn."""
    corrupt: list[Corrupt] = []
    start = int(torch.searchsorted(pool, index))
    for attempt in range(MAX_SUBSTITUTES):
        candidate = index if attempt == 0 else int(pool[(start + attempt) % len(pool)])
        try:
            return ReadResult(decode_pixels(split.location(candidate), max_pixels, split.channels), candidate, corrupt)
        except UnreadableImage as err:
            corrupt.append(Corrupt(err.path, err.reason))
    raise SemiclustError(
        f"{MAX_SUBSTITUTES} images in a row could not be read, starting at '{printable(split.path(index))}' "
        f"({corrupt[0].reason}); the dataset looks damaged or its disk unavailable. "
        "Run `semiclust data check RECIPE --all` to list every unreadable file."
    )


class TrainFiles(torch.utils.data.Dataset):
    """Item p = this process's micro-batch at stream position p, as uint8 crops.

    Returns {"position", "unlabeled": one (count x B_u) x C x s x s tensor per crop group (copy k of
    image j at row k * B_u + j; C the split's channels), "labeled": B_l x C x s x s, "labels": B_l (of the images actually
    decoded), "corrupt": [Corrupt], "error": a message when the batch could not be made}. Errors are
    returned, not raised: a worker's exception would reach the user wrapped in a traceback.

    With `decode_on_device` (data.loader.decode: gpu), plain JPEGs are not decoded here: their rows stay empty and
    "unlabeled_jobs" / "labeled_jobs" hold their bytes and crop windows for the training device
    (data/device_decode.py); every other file is decoded and cut here as usual.
    """

    def __init__(self, split: FileSplit, unlabeled: IndexStream | None, labeled: IndexStream | None,
                 groups: list[CropGroup], labeled_group: CropGroup, seed: int, rank: int, world: int,
                 max_pixels: int | None = MAX_IMAGE_PIXELS, decode_on_device: bool = False):
        self.split, self.unlabeled, self.labeled = split, unlabeled, labeled
        self.groups, self.labeled_group = groups, labeled_group
        self.seed, self.rank, self.world, self.max_pixels = seed, rank, world, max_pixels
        self.decode_on_device = decode_on_device

    def __len__(self) -> int:  # positions are unbounded; the sampler decides which are read
        return 2**62

    def generator(self, stream: IndexStream, position: int, j: int) -> torch.Generator:
        """The generator of the crops of image j of this process's batch (the same on any number of processes)."""
        return image_generator(self.seed, stream.stream, position, j * self.world + self.rank)

    def cpu_crops(self, stream: IndexStream, position: int, j: int, index: int, groups: list[CropGroup],
                  corrupt: list[Corrupt]) -> tuple[int, list[torch.Tensor]]:
        """Image j decoded here (or the next readable one of its pool) and every group's crops of it."""
        generator = self.generator(stream, position, j)
        read = read_with_substitutes(self.split, index, stream.pool, self.max_pixels)
        corrupt.extend(read.corrupt)
        return read.index, [cut_crops(read.image, group, generator) for group in groups]

    def device_job(self, stream: IndexStream, position: int, j: int, index: int,
                   groups: list[CropGroup]) -> DeviceJob | None:
        """Image j as a job for the device (a plain JPEG, its windows drawn as cut_crops draws them), or None."""
        jpeg = plain_jpeg(self.split.location(index), self.max_pixels) if self.decode_on_device else None
        if jpeg is None:
            return None
        generator = self.generator(stream, position, j)
        drawn = [crop_windows(jpeg.height, jpeg.width, group, generator) for group in groups]
        return DeviceJob(j, index, jpeg, [w for w, _ in drawn], [f for _, f in drawn])

    def _images(self, stream: IndexStream, position: int, groups: list[CropGroup],
                corrupt: list[Corrupt]) -> tuple[list[int], list[torch.Tensor], list[DeviceJob]]:
        """The indices decoded (substitutes included), one crop tensor per group (copy-major) and the device's jobs."""
        indices = stream.indices(position).tolist()
        n = len(indices)
        crops = [torch.zeros((g.count * n, self.split.channels, g.size, g.size), dtype=torch.uint8) for g in groups]
        used, jobs = [], []
        for j, index in enumerate(indices):
            job = self.device_job(stream, position, j, index, groups)
            if job is not None:
                jobs.append(job)
                used.append(index)
                continue
            decoded, parts = self.cpu_crops(stream, position, j, index, groups, corrupt)
            used.append(decoded)
            for part, out in zip(parts, crops):
                out[j::n] = part  # copy k of image j at row k * n + j
        return used, crops, jobs

    def __getitem__(self, position: int) -> dict:
        corrupt: list[Corrupt] = []
        item: dict = {"position": position, "unlabeled": [], "labeled": None, "labels": None, "error": None,
                      "unlabeled_jobs": [], "labeled_jobs": []}
        try:
            if self.unlabeled is not None:
                _, item["unlabeled"], item["unlabeled_jobs"] = self._images(self.unlabeled, position, self.groups, corrupt)
            if self.labeled is not None:
                used, (view,), item["labeled_jobs"] = self._images(self.labeled, position, [self.labeled_group], corrupt)
                item["labeled"], item["labels"] = view, self.split.labels[used]
        except SemiclustError as err:
            item["error"] = str(err)
        item["corrupt"] = corrupt
        return item


class EvalFiles(torch.utils.data.Dataset):
    """Item b = evaluation batch b as centre views (`center_view`, handed over as uint8); unreadable
    images are left out (`keep`)."""

    def __init__(self, split: FileSplit, view: EvalView, batch_size: int, max_pixels: int | None = MAX_IMAGE_PIXELS):
        self.split, self.view, self.batch_size, self.max_pixels = split, view, batch_size, max_pixels

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __getitem__(self, batch: int) -> dict:
        indices = range(batch * self.batch_size, min((batch + 1) * self.batch_size, len(self.split)))
        images = torch.zeros((len(indices), self.split.channels, self.view.size, self.view.size), dtype=torch.uint8)
        keep = torch.ones(len(indices), dtype=torch.bool)
        corrupt = []
        for j, index in enumerate(indices):
            try:
                image = decode_pixels(self.split.location(index), self.max_pixels, self.split.channels)
                images[j] = to_uint8(center_view(image[None], self.view)[0])
            except UnreadableImage as err:
                keep[j] = False
                corrupt.append(Corrupt(err.path, err.reason))
        return {"images": images[keep], "labels": self.split.labels[list(indices)][keep], "corrupt": corrupt}


def resolve_workers(spec: Loader) -> int:
    """`auto`: the CPUs this process may use, shared among the processes of this node, at most 8."""
    if spec.workers != "auto":
        return spec.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


WORKER_GRACE_S = 20.0  # how long a worker outlives a SIGTERM sent to its whole process group


def _end_later(number: int, frame) -> None:
    timer = threading.Timer(WORKER_GRACE_S, os._exit, (1,))
    timer.daemon = True
    timer.start()


def _one_thread(_: int) -> None:
    """Each worker: one intra-op thread (workers run in parallel; more would oversubscribe the CPUs), and the
    signals a Slurm time limit or a Ctrl-C sends to the whole process group left to the main process, which
    checkpoints after its step and then ends its workers: a worker ignores SIGINT and ends WORKER_GRACE_S after a
    SIGTERM (PyTorch's own SIGTERM to a hung worker still ends it)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_later)


def make_loader(items: torch.utils.data.Dataset, order: Iterable[int], spec: Loader,
                device: torch.device) -> torch.utils.data.DataLoader:
    """A DataLoader that returns `items[i]` for i in `order`, in order, prepared by worker processes."""
    workers = resolve_workers(spec)
    pin = spec.pin_memory is True or (spec.pin_memory == "auto" and device.type == "cuda")
    options = {"prefetch_factor": spec.prefetch, "persistent_workers": spec.persistent_workers} if workers else {}
    return torch.utils.data.DataLoader(items, batch_size=None, sampler=order, num_workers=workers, pin_memory=pin,
                                       worker_init_fn=_one_thread, **options)


class DecodeChunks(torch.utils.data.Dataset):
    """Item c = the unreadable files among chunk c of (split, index) pairs, decoded by a worker:
    (split number, index, reason) for each."""

    def __init__(self, jobs: list[tuple[int, FileSplit, int]], chunk: int, max_pixels: int | None):
        self.jobs, self.chunk, self.max_pixels = jobs, chunk, max_pixels

    def __len__(self) -> int:
        return -(-len(self.jobs) // self.chunk)

    def __getitem__(self, c: int) -> list[tuple[int, int, str]]:
        bad = []
        for number, split, index in self.jobs[c * self.chunk : (c + 1) * self.chunk]:
            try:
                decode_rgb(split.location(index), self.max_pixels)
            except UnreadableImage as err:
                bad.append((number, index, err.reason))
        return bad


def find_unreadable(jobs: list[tuple[int, FileSplit, int]], spec: Loader, max_pixels: int | None,
                    advance=lambda done, total: None, chunk: int = 64) -> list[tuple[int, int, str]]:
    """Decode every (split number, split, index) job in loader workers: (split number, index, reason) of
    each image that cannot be read, in the order of the jobs."""
    items, bad = DecodeChunks(jobs, chunk, max_pixels), []
    for c, found in enumerate(make_loader(items, range(len(items)), spec, torch.device("cpu"))):
        bad.extend(found)
        advance(min((c + 1) * chunk, len(jobs)), len(jobs))
    return bad
