"""Images per second that ONE data worker delivers: a SwAV-style PIL multi-crop pipeline vs semiclust's.

    python benchmarks/data_pipeline.py [--images N] [--size PX] [--batch B] [--repeats R] [--dir DIR] [--json]

Both pipelines turn the same N JPEG files (written once per run, seeded, realistic content: smooth
gradients, shapes, mild noise; PIL quality 90) into the Suave ImageNet unlabeled multi-crop set,
2 x 224 px crops with area scale (0.14, 1) + 8 x 96 px crops with scale (0.05, 0.14), each with
flip p 0.5, colour jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, Gaussian blur p 0.5 with
radius/sigma ~ U(0.1, 2.0), normalised with mean (0.485, 0.456, 0.406) and std (0.228, 0.224, 0.225);
and both deliver, per batch of B images, one normalised float32 B x 3 x s x s tensor per crop slot.

- reference: written the way SwAV's `MultiCropDataset` and the paper's release do it: PIL images and
  torchvision.transforms (v1), the file decoded once per crop group (`Image.open(path).convert("RGB")`
  for the 2 x 224 group and again for the 8 x 96 group), then per crop RandomResizedCrop,
  RandomHorizontalFlip, RandomApply(ColorJitter, p=0.8), RandomGrayscale, a PIL Gaussian blur,
  ToTensor and Normalize; crops collated with torch.stack per slot.
- semiclust: `decode_rgb` once per image, `cut_crops` per crop group (uint8 geometry) into per-slot
  uint8 batches (the DataLoader worker's share), then `CropAugment.finish` per slot (the batched
  photometric ops and normalisation that run on the training device; here the CPU, in the same
  process and counted in the time, so the figure is an upper bound of the worker-side cost).

One process, `torch.set_num_threads(1)`, no DataLoader workers: each figure is what one worker
thread does, so it scales with the number of workers. Repeats of the two pipelines are interleaved
(reference, semiclust, reference, ...) so background load hits both alike; the best repeat is
reported (the least disturbed by other processes). Before timing, both outputs are checked once
(10 tensors per image, right shapes, finite, plausible un-normalised means) so the comparison
cannot silently compare different work. Figures only: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter
from torchvision import transforms as T

from semiclust.data.decode import decode_rgb
from semiclust.data.loader import cut_crops, image_generator
from semiclust.data.transforms import CropAugment
from semiclust.config.schema import Blur, ColorJitter, CropGroup

MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)
# (count, size, scale) of the Suave ImageNet unlabeled crops
RECIPE = [(2, 224, (0.14, 1.0)), (8, 96, (0.05, 0.14))]


# ---------------------------------------------------------------- data
def write_images(directory: Path, n: int, size: int) -> list[Path]:
    """`n` seeded size x size JPEGs with content a decoder has to work for: a smooth random colour
    field (gradient plus low-frequency waves), random ellipses/rectangles/lines, mild noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        field = np.empty((size, size, 3), np.float32)
        for c in range(3):
            gx, gy = rng.uniform(-120, 120, 2)
            fx, fy = rng.uniform(0.5, 4.0, 2)
            phase = rng.uniform(0, 2 * np.pi)
            field[..., c] = (rng.uniform(60, 200) + gx * (xx - 0.5) + gy * (yy - 0.5)
                             + 40 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase))
        image = Image.fromarray(field.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = rng.integers(0, size, 2)
            x1, y1 = x0 + rng.integers(8, size // 2), y0 + rng.integers(8, size // 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = rng.integers(0, 3)
            if kind == 0:
                draw.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=colour)
            elif kind == 1:
                draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=colour)
            else:
                draw.line([int(x0), int(y0), int(x1), int(y1)], fill=colour, width=int(rng.integers(1, 6)))
        pixels = np.asarray(image, np.float32) + rng.normal(0, 6, (size, size, 3))
        path = directory / f"img_{i:05d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def batches(paths: list[Path], batch: int) -> list[list[Path]]:
    return [paths[i : i + batch] for i in range(0, len(paths), batch)]


# ---------------------------------------------------------------- reference (PIL, torchvision v1)
class RandomPILBlur:
    """Gaussian blur of a PIL image with probability p and radius ~ U(radius_min, radius_max)."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


def reference_transform(size: int, scale: tuple[float, float]) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        RandomPILBlur(p=0.5, radius_min=0.1, radius_max=2.0),
        T.ToTensor(),
        T.Normalize(mean=MEAN, std=STD),
    ])


class Reference:
    """Per image: for each crop group, decode the file and apply the group's transform `count` times."""

    def __init__(self):
        self.groups = [(count, reference_transform(size, scale)) for count, size, scale in RECIPE]

    def image(self, path: Path) -> list[torch.Tensor]:
        crops = []
        for count, transform in self.groups:
            image = Image.open(path).convert("RGB")
            crops.extend(transform(image) for _ in range(count))
        return crops

    def batch(self, paths: list[Path], batch_no: int) -> tuple[list[torch.Tensor], float, float]:
        per_image = [self.image(path) for path in paths]
        return [torch.stack(slot) for slot in zip(*per_image)], 0.0, 0.0


# ---------------------------------------------------------------- semiclust
def semiclust_groups() -> list[CropGroup]:
    photometric = {"color": ColorJitter(p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),
                   "grayscale": 0.2, "blur": Blur(p=0.5, sigma=(0.1, 2.0))}
    return [CropGroup(count=count, size=size, scale=scale, **photometric) for count, size, scale in RECIPE]


class Semiclust:
    """decode_rgb once, cut_crops per group into per-slot uint8 batches (worker part), then
    CropAugment.finish per slot (device part, on the CPU here)."""

    def __init__(self):
        self.groups = semiclust_groups()
        self.augment = [CropAugment(group, MEAN, STD) for group in self.groups]
        self.generator = torch.Generator().manual_seed(0)

    def reset(self) -> None:
        self.generator.manual_seed(0)

    def batch(self, paths: list[Path], batch_no: int) -> tuple[list[torch.Tensor], float, float]:
        start = time.perf_counter()
        slots = [torch.empty((len(paths), 3, g.size, g.size), dtype=torch.uint8) for g in self.groups for _ in range(g.count)]
        for j, path in enumerate(paths):
            generator = image_generator(seed=0, stream=1, position=batch_no, row=j)
            image = decode_rgb(path)
            slot = 0
            for group in self.groups:
                for crop in cut_crops(image, group, generator):
                    slots[slot][j] = crop
                    slot += 1
        worker_done = time.perf_counter()
        augments = [a for a in self.augment for _ in range(a.group.count)]
        out = [augment.finish(slot, self.generator) for augment, slot in zip(augments, slots)]
        end = time.perf_counter()
        return out, worker_done - start, end - worker_done


# ---------------------------------------------------------------- measurement
def check(name: str, out: list[torch.Tensor], n: int, semiclust: bool) -> None:
    expected = [(n, 3, size, size) for count, size, _ in RECIPE for _ in range(count)]
    assert len(out) == 10, f"{name}: {len(out)} crop slots, expected 10"
    for k, (tensor, shape) in enumerate(zip(out, expected)):
        assert tuple(tensor.shape) == shape, f"{name}: slot {k} has shape {tuple(tensor.shape)}, expected {shape}"
        assert tensor.dtype == torch.float32, f"{name}: slot {k} is {tensor.dtype}"
        assert bool(torch.isfinite(tensor).all()), f"{name}: slot {k} has non-finite values"
        means = (tensor * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).mean(dim=(2, 3))
        if semiclust:
            assert bool(((means >= -1e-4) & (means <= 1 + 1e-4)).all()), f"{name}: slot {k} un-normalised means outside [0, 1]"


def timed_pass(pipeline, paths_batches: list[list[Path]]) -> tuple[float, float, float]:
    random.seed(0)
    torch.manual_seed(0)
    if isinstance(pipeline, Semiclust):
        pipeline.reset()
    worker = device = 0.0
    start = time.perf_counter()
    for batch_no, paths in enumerate(paths_batches):
        _, w, d = pipeline.batch(paths, batch_no)
        worker, device = worker + w, device + d
    return time.perf_counter() - start, worker, device


def main() -> None:
    parser = argparse.ArgumentParser(description="Images/s per data worker: SwAV-style PIL multi-crop vs semiclust.")
    parser.add_argument("--images", type=int, default=256, help="number of JPEG files (default 256)")
    parser.add_argument("--size", type=int, default=224, help="side of the square JPEGs in px (default 224)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per pipeline, best reported (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="write (and keep) the JPEGs here instead of a temporary dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        paths = write_images(directory, args.images, args.size)
        jpeg_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        chunks = batches(paths, args.batch)
        pipelines = {"reference": Reference(), "semiclust": Semiclust()}

        for name, pipeline in pipelines.items():  # sanity check doubles as the warm-up batch
            random.seed(0)
            torch.manual_seed(0)
            out, _, _ = pipeline.batch(chunks[0], 0)
            check(name, out, len(chunks[0]), semiclust=name == "semiclust")

        times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in pipelines}
        for _ in range(args.repeats):
            for name, pipeline in pipelines.items():
                times[name].append(timed_pass(pipeline, chunks))

    best = {name: min(runs, key=lambda r: r[0]) for name, runs in times.items()}
    n = args.images
    result = {
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
                    "processor": platform.processor() or platform.machine()},
        "settings": {"images": n, "size": args.size, "jpeg_quality": 90, "mean_jpeg_kb": round(jpeg_kb, 1),
                     "batch": args.batch, "repeats": args.repeats, "statistic": "best",
                     "crops": [{"count": c, "size": s, "scale": list(sc)} for c, s, sc in RECIPE]},
        "pipelines": {},
    }
    for name, (total, worker, device) in best.items():
        entry = {"images_per_s": n / total, "ms_per_image": 1000 * total / n, "seconds": total,
                 "all_seconds": [r[0] for r in times[name]]}
        if name == "semiclust":
            entry.update({"worker_ms_per_image": 1000 * worker / n, "device_ms_per_image": 1000 * device / n,
                          "worker_images_per_s": n / worker, "device_images_per_s": n / device})
        result["pipelines"][name] = entry
    ratio = result["pipelines"]["semiclust"]["images_per_s"] / result["pipelines"]["reference"]["images_per_s"]
    result["ratio_semiclust_over_reference"] = ratio

    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["machine"]
    print(f"machine: {m['cpus']} CPUs ({m['processor']}), torch {m['torch']}, torchvision {m['torchvision']}, "
          f"Pillow {m['pillow']}, Python {m['python']}; torch threads {m['threads']}, no DataLoader workers")
    print(f"settings: {n} JPEGs of {args.size} x {args.size} px (quality 90, {jpeg_kb:.1f} KiB mean), batch {args.batch}, "
          f"crops 2 x 224 (scale 0.14-1) + 8 x 96 (scale 0.05-0.14), best of {args.repeats} interleaved passes")
    print(f"{'pipeline':10} {'images/s per worker':>20} {'ms/image':>9}  {'all passes s'}")
    for name, entry in result["pipelines"].items():
        passes = " ".join(f"{t:.2f}" for t in entry["all_seconds"])
        print(f"{name:10} {entry['images_per_s']:20.1f} {entry['ms_per_image']:9.2f}  {passes}")
    print(f"ratio semiclust / reference: {ratio:.2f}x")
    sc = result["pipelines"]["semiclust"]
    print(f"semiclust split: worker part (decode + cut_crops + collate) {sc['worker_ms_per_image']:.2f} ms/image "
          f"({sc['worker_images_per_s']:.1f} images/s); device part (CropAugment.finish on CPU) "
          f"{sc['device_ms_per_image']:.2f} ms/image ({sc['device_images_per_s']:.1f} images/s)")


if __name__ == "__main__":
    main()
