"""End-to-end training images/s of a real `semiclust train` run from JPEG files, against the data-free ceiling.

    python benchmarks/throughput.py [--recipe daino_vits_in1k_1pct|suave_r50_in1k_1pct] [--files N] [--steps S]
        [--batch B] [--device auto|cpu|cuda] [--workers auto|N] [--crops GLOBAL LOCAL] [--set KEY=VALUE ...]

Why: step_overhead.py times the step on a fixed batch; this measures what a user gets, files to optimiser
steps, i.e. whether decoding and cropping JPEGs keeps the accelerator fed. It writes --files JPEGs of
500 x 375 px (about ImageNet's median size; seeded random content: a smooth colour field, a finer texture
and mild noise, quality 90, ~105 KiB each, about ImageNet's mean file size) into an ImageFolder (train/ and
val/ class folders) in a temporary folder (or --dir, reused when it holds the same files), then runs
`python -m semiclust train` on a shipped recipe, one process, for about --steps optimiser steps (whole
epochs), in these modes:
- decode=cpu: `--set data.loader.decode=cpu`, the loader workers decode and cut the crops;
- decode=gpu: `--set data.loader.decode=gpu`, the workers read the bytes and the training process decodes
  on its device (nvJPEG) and cuts the crops there; only when CUDA is available (else reported as skipped);
- ceiling: the same recipe on the in-memory `synthetic` dataset (same classes, image count and crop sizes,
  images of 8/7 x the global crop size), cropped and augmented on the device: no files, no decoding.
Every run uses the recipe's network, crops, augmentation, method and precision (fp32 on a CPU, where
fp16/bf16 autocast is very slow), with model.init null (random weights), data.cache off (the files are read
every time, never decoded once into memory), SyncBatchNorm off, no evaluation or checkpoint before the end,
the batch at the recipe's per-GPU share (--batch: the unlabeled batch, the labeled one in proportion; Suave's
queue at its per-GPU share too) and the --set overrides. Images/s are read from each run's metrics.jsonl: the
median `img_per_s` of its "train" records after the first (which holds start-up and the first batches); they
count unlabeled + labeled images, as the trainer does. Printed: one table of mode, images/s, unlabeled
images/s, data wait and step time per step (medians), ratio to the ceiling, steps and wall seconds of the run.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
# the GPUs the shipped ImageNet recipes' global batches (and Suave's queue) are written for
RELEASE_GPUS = {"suave_r50_in1k_1pct": 8, "suave_r50_in1k_10pct": 8, "daino_vits_in1k_1pct": 16,
                "daino_vits_in1k_10pct": 16}


# ---------------------------------------------------------------- files
def write_jpeg(job: tuple[str, int, int, int]) -> int:
    """One seeded JPEG of width x height, quality 90: a coarse colour field and a 1/3-resolution random texture,
    both upsampled bicubically, plus mild noise (~105 KiB at 500 x 375, about ImageNet's mean file). Its bytes."""
    from PIL import Image

    path, seed, width, height = job
    rng = np.random.default_rng(seed)

    def upsampled(rows: int, columns: int) -> np.ndarray:
        small = rng.uniform(0, 255, (rows, columns, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)

    field = upsampled(int(rng.integers(3, 9)), int(rng.integers(3, 9)))
    texture = 0.8 * (upsampled(max(1, height // 3), max(1, width // 3)) - 128)
    pixels = field + texture + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return os.path.getsize(path)


def make_images(folder: Path, args) -> str:
    """The ImageFolder (train/ and val/, --classes folders); kept as it is when its spec.json matches."""
    width, height = args.image
    spec = {"version": 2, "files": args.files, "classes": args.classes, "val_per_class": args.val_per_class,
            "image": [width, height]}
    marker = folder / "spec.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        sizes = [p.stat().st_size for p in (folder / "train").rglob("*.jpg")]
        return f"reused {len(sizes)} training JPEGs in {folder}, mean {statistics.mean(sizes) / 1024:.0f} KiB"
    for split in ("train", "val"):
        shutil.rmtree(folder / split, ignore_errors=True)  # files of another spec
    jobs = []
    for split, count in (("train", args.files), ("val", args.val_per_class * args.classes)):
        for i in range(count):
            directory = folder / split / f"class_{i % args.classes:03d}"
            directory.mkdir(parents=True, exist_ok=True)
            seed = i + (0 if split == "train" else 10**7)
            jobs.append((str(directory / f"{split}_{i:06d}.jpg"), seed, width, height))
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        sizes = pool.map(write_jpeg, jobs, chunksize=16)
    marker.write_text(json.dumps(spec))
    train_sizes = sizes[: args.files]
    return (f"wrote {len(jobs)} JPEGs of {width}x{height} ({args.files} train, {len(jobs) - args.files} val) in "
            f"{time.perf_counter() - started:.1f} s to {folder}, mean {statistics.mean(train_sizes) / 1024:.0f} KiB")


# ---------------------------------------------------------------- recipe
def base_recipe(args, folder: Path) -> dict:
    """The shipped recipe on the generated ImageFolder, at its per-GPU batch, for about --steps steps."""
    from semiclust.config.loader import apply_overrides, load_raw

    raw = load_raw(Path(args.recipe))
    data, gpus = raw["data"], RELEASE_GPUS.get(Path(args.recipe).stem, 8)
    unlabeled = args.batch or max(1, data["batch"]["unlabeled"] // gpus)
    labeled = max(1, unlabeled * data["batch"]["labeled"] // data["batch"]["unlabeled"])
    per_class = args.files // args.classes
    if args.files < unlabeled or per_class < 1:
        raise SystemExit(f"--files {args.files} is fewer than the batch {unlabeled} or the {args.classes} classes")
    data["batch"] = {"unlabeled": unlabeled, "labeled": labeled}
    data["labels"] = {"per_class": min(per_class, math.ceil(2 * labeled / args.classes))}
    options = {k: v for k, v in data.get("options", {}).items() if k in ("mean", "std")}
    data.update(dataset="imagefolder", options={"root": str(folder), **options}, cache="off")
    data["loader"] = {**data.get("loader", {}), "workers": args.workers}
    if args.crops:
        resize_crops(data, *args.crops)
    queue = raw["method"].get("queue", {}).get("length", 0)
    if queue:
        raw["method"]["queue"]["length"] = max(queue // gpus, unlabeled)
    epochs = max(1, math.ceil(args.steps / (args.files // unlabeled)))
    raw["name"] = f"throughput-{Path(args.recipe).stem}"
    raw["model"]["init"] = None
    raw["schedule"] = {**raw["schedule"], "epochs": epochs, "warmup_epochs": 0}
    raw["runtime"] = {**raw.get("runtime", {}), "device": args.device, "sync_batchnorm": False, "progress": "plain",
                      "log_every_steps": max(1, args.steps // 10)}
    if args.device == "cpu":
        raw["runtime"]["precision"] = "fp32"  # fp16/bf16 autocast is very slow on a CPU
    raw["checkpoint"] = {"every_epochs": 0, "keep_last": 1}
    raw["eval"] = {**raw.get("eval", {}), "every_epochs": 0}
    return apply_overrides(raw, args.set)


def resize_crops(data: dict, global_size: int, local_size: int) -> None:
    """Smaller crops for smoke tests: the largest unlabeled crop groups, the labeled and evaluation views become
    `global_size`, the other groups `local_size`."""
    largest = max(group["size"] for group in data["unlabeled"]["crops"])
    for group in data["unlabeled"]["crops"]:
        group["size"] = global_size if group["size"] == largest else local_size
    data["labeled"]["size"] = global_size
    data["eval"] = {**data["eval"], "size": global_size, "resize": round(global_size * 8 / 7)}


def mode_settings(args, raw: dict) -> list[tuple[str, list[str] | None]]:
    """(mode, the --set overrides of its run), None where the mode cannot run here."""
    data = raw["data"]
    largest = max(group["size"] for group in data["unlabeled"]["crops"])
    synthetic = (f"data.options={{num_classes: {args.classes}, size: {round(largest * 8 / 7)}, channels: 3, "
                 f"train_per_class: {args.files // args.classes}, test_per_class: 1}}")
    gpu = ["data.loader.decode=gpu"] if args.device == "cuda" else None
    modes = {"decode=cpu": ["data.loader.decode=cpu"], "decode=gpu": gpu,
             "ceiling": ["data.dataset=synthetic", synthetic]}
    return [(mode, sets) for mode, sets in modes.items() if mode in args.modes]


# ---------------------------------------------------------------- runs
def train_speed(metrics: Path) -> dict:
    """Median img_per_s, step_s and data_s of the train records after the first (all of them if only one)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("type") == "train" and r.get("img_per_s") is not None]
    if not train:
        raise ValueError(f"{metrics} has no train records")
    kept = train[1:] or train
    return {"img_per_s": statistics.median(r["img_per_s"] for r in kept),
            "step_s": statistics.median(r["step_s"] for r in kept),
            "data_s": statistics.median(r.get("data_s", 0.0) for r in kept),
            "steps": train[-1]["step"], "records": len(kept)}


def run_mode(mode: str, sets: list[str], recipe_file: Path, work: Path, args) -> dict:
    """One `python -m semiclust train` run; its log goes to work/<mode>.log (tail printed when it fails)."""
    out, log = work / f"run-{mode.replace('=', '-')}", work / f"{mode.replace('=', '-')}.log"
    command = [sys.executable, "-m", "semiclust", "train", str(recipe_file), "--out", str(out), "--overwrite"]
    command += [part for value in sets for part in ("--set", value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    print(f"[{mode}] {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
        try:
            code = process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            code = "timeout"
        finally:  # also when this script is stopped: never leave the training run behind
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.perf_counter() - started
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        print(f"[{mode}] failed ({code}) after {wall:.0f} s; last lines of {log}:\n{tail}", flush=True)
        return {"mode": mode, "failed": f"failed ({code}) after {wall:.0f} s, log {log}"}
    return {"mode": mode, "wall_s": wall, **train_speed(out / "metrics.jsonl")}


def print_table(rows: list[dict], unlabeled_share: float) -> None:
    ceiling = next((r["img_per_s"] for r in rows if r["mode"] == "ceiling" and "img_per_s" in r), None)
    print(f"{'mode':12} {'images/s':>10} {'unlab img/s':>12} {'data s/step':>12} {'step s':>8} {'vs ceiling':>11} "
          f"{'steps':>6} {'wall s':>7}")
    for r in rows:
        if "img_per_s" not in r:
            print(f"{r['mode']:12} {r.get('failed') or 'skipped: ' + r['why']}", flush=True)
            continue
        ratio = f"{r['img_per_s'] / ceiling:.3f}" if ceiling else "-"
        print(f"{r['mode']:12} {r['img_per_s']:10.1f} {r['img_per_s'] * unlabeled_share:12.1f} {r['data_s']:12.4f} "
              f"{r['step_s']:8.4f} {ratio:>11} {r['steps']:6d} {r['wall_s']:7.0f}", flush=True)


def describe(args, raw: dict) -> str:
    """The header line: recipe, network, batch, crops, device, workers, length."""
    data, model = raw["data"], raw["model"]["backbone"]["name"]
    crops = " + ".join(f"{g['count']}x{g['size']}" for g in data["unlabeled"]["crops"])
    batch = data["batch"]
    return (f"recipe {args.recipe} ({raw['method']['name']}, {model}), batch {batch['unlabeled']} unlabeled "
            f"({crops} px) + {batch['labeled']} labeled per step, one process on {args.device}, "
            f"workers {args.workers}, "
            f"{raw['schedule']['epochs']} epoch(s) of {args.files // batch['unlabeled']} steps; "
            f"--set: {' '.join(args.set) or 'none'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="End-to-end training images/s from JPEG files vs in-memory data.")
    parser.add_argument("--recipe", default="daino_vits_in1k_1pct", help="a shipped recipe's name or a YAML file")
    parser.add_argument("--files", type=int, default=2048, help="training JPEGs to write")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=1)
    parser.add_argument("--image", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    parser.add_argument("--steps", type=int, default=100, help="about this many optimiser steps (whole epochs)")
    parser.add_argument("--batch", type=int, help="unlabeled images per step (default: the recipe's per-GPU share)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", default="auto", help="data.loader.workers: auto or a number")
    parser.add_argument("--crops", type=int, nargs=2, metavar=("GLOBAL", "LOCAL"), help="crop sizes (smoke tests)")
    parser.add_argument("--modes", nargs="+", default=["decode=cpu", "decode=gpu", "ceiling"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--dir", type=Path, help="keep the JPEGs and runs here (reused when the files match)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing the JPEGs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per training run")
    args = parser.parse_args()
    args.workers = int(args.workers) if args.workers != "auto" else "auto"
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main() -> None:
    from semiclust.config.loader import load_recipe

    args = parse_args()
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(f"stopped by signal {number}"))
    with tempfile.TemporaryDirectory(prefix="semiclust-throughput-") as temporary:
        work = args.dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        print(make_images(work / "images", args), flush=True)
        raw = base_recipe(args, work / "images")
        recipe_file = work / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        load_recipe(recipe_file)  # a recipe error shows here, before any run
        print(describe(args, raw), flush=True)
        rows = []
        for mode, sets in mode_settings(args, raw):
            if sets is None:
                rows.append({"mode": mode, "why": "no CUDA device here"})
                print(f"[{mode}] skipped: no CUDA device here", flush=True)
                continue
            rows.append(run_mode(mode, sets, recipe_file, work, args))
        batch = raw["data"]["batch"]
        print_table(rows, batch["unlabeled"] / (batch["unlabeled"] + batch["labeled"]))


if __name__ == "__main__":
    main()
