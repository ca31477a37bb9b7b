"""ImageNet-sized folders: what semiclust does with 1,281,167 training files before its first step, and how much
memory the file index costs the main process and each loader worker.

    python benchmarks/at_scale.py --dir /work/scale [--list 10percent.txt] [--rows ...] [--workers 2]
                                  [--steps 3] [--timeout 1800] [--json FILE]

Builds once, in --dir (reused afterwards; `--dir` outside the repository), an ImageNet-shaped tree:
DIR/imagenet/train/<wnid>/<wnid>_<n>.JPEG, 1,281,167 files in the 1,000 classes of the SimCLR list (class size
= 10 x its count in the 10% list, the first 7 classes one more, so the total is ImageNet's), named as ImageNet
names them: the list's own names plus generated names that are not in the list; DIR/imagenet/val/<wnid>/ with
50 per class (50,000). Every file is a HARD LINK to one of 4,000 distinct small JPEGs (40..96 px, seeded,
in DIR/pool), so the tree costs about a minute and a few hundred MB of directory entries, not 140 GB; decoding
one is far cheaper than a real ImageNet JPEG (~110 KiB, 500 x 375 px), so the decoding rows are a lower bound.

Rows (each printed as soon as it is measured; `--rows` picks some):
- index: in this process, `build_dataset('imagenet')` (listing train/ and val/): seconds, the main process's
  RSS before and after (the index it holds) and its peak;
- subset: the SimCLR 10% list matched against the index and checked readable, as train draws it
  (`engine.setup.draw_subset`): seconds and the RSS it adds at its peak;
- workers: `--workers` loader workers (`data.loader.make_loader`, forked as training forks them), each walking
  the whole index once (every file's path, labels in batches of 64, as a TrainFiles worker reads them): per
  worker RSS, Pss and private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) at
  its start and after the walk. After a fork a child's RSS already counts every page it shares with the main
  process, so copy-on-write growth shows in private memory, not in RSS: the target (<= 30 MB per worker) is
  judged on private memory's growth, the memory a worker adds to the machine;
- check: `semiclust data check RECIPE` (a subprocess), semiclust's cache emptied first: seconds, exit code;
- dry-run: `semiclust train RECIPE --dry-run`, the cache emptied first: seconds and exit code;
- train cold / train warm: `semiclust train RECIPE` (tinyconv, CPU, batch 32 + 16, 32/16-px crops) into a new
  run folder, killed after --steps optimiser steps: seconds from launch to the first step (its first
  metrics.jsonl "train" record), the main process's RSS and peak RSS then, and the seconds of each start-up
  message it printed. Cold: semiclust's cache folder (SEMICLUST_CACHE_DIR, set to DIR/work/cache) emptied
  first; warm: the same command again, nothing changed. The operating system's page cache is not dropped (the
  tree has just been listed): cold means semiclust's own cache only.

Nothing here asserts: figures only. To compare two checkouts on the same tree, run the script from each
(e.g. `git worktree add --detach /work/base HEAD` and `PYTHONPATH=/work/base python benchmarks/at_scale.py`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LIST = Path("/work/shared/data/simclr_subsets/10percent.txt")
TRAIN_FILES, VAL_PER_CLASS, DISTINCT = 1_281_167, 50, 4_000
ROWS = ("index", "subset", "workers", "check", "dry-run", "train")


# ---------------------------------------------------------------- the tree
def class_names(listed: list[str]) -> dict[str, list[str]]:
    """The list's names grouped by wnid (sorted)."""
    classes: dict[str, list[str]] = {}
    for name in listed:
        classes.setdefault(name.split("_", 1)[0], []).append(name)
    return dict(sorted(classes.items()))


def train_names(classes: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each class's file names: its listed names plus generated ones not in the list, 10 x as many in all (the
    first classes one more until the total is ImageNet's 1,281,167)."""
    extra = TRAIN_FILES - 10 * sum(len(v) for v in classes.values())
    names = {}
    for k, (wnid, listed) in enumerate(classes.items()):
        size, taken = 10 * len(listed) + (1 if k < extra else 0), set(listed)
        generated, number = [], 0
        while len(generated) < size - len(listed):
            number += 1
            name = f"{wnid}_{number}.JPEG"
            if name not in taken:
                generated.append(name)
        names[wnid] = sorted(listed + generated)
    return names


def write_pool(folder: Path) -> list[str]:
    """DISTINCT seeded small JPEGs (40..96 px a side, a smooth colour field with noise): the files every tree
    entry links to."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = np.random.default_rng(0), []
    for i in range(DISTINCT):
        height, width = (int(v) for v in rng.integers(40, 97, size=2))
        ys, xs = np.mgrid[0:height, 0:width] / 96.0
        base = rng.uniform(0, 1, (3, 3))
        field = np.stack([base[c, 0] + base[c, 1] * xs + base[c, 2] * ys for c in range(3)], axis=-1) / 2
        pixels = np.clip(field + rng.normal(0, 0.05, field.shape), 0, 1)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray((pixels * 255).astype(np.uint8)).save(path, quality=85)
        paths.append(str(path))
    return paths


def build_tree(directory: Path, list_file: Path) -> Path:
    """DIR/imagenet (train/ and val/ of hard links into DIR/pool), built once: a finished tree carries
    DIR/imagenet/.complete; a half-built one (DIR/imagenet.partial) is built again."""
    target, marker = directory / "imagenet", directory / "imagenet" / ".complete"
    if marker.exists():
        return target
    started = time.perf_counter()
    pool = write_pool(directory / "pool")
    classes = class_names([line.strip() for line in list_file.read_text().splitlines() if line.strip()])
    partial = directory / "imagenet.partial"
    shutil.rmtree(partial, ignore_errors=True)
    counter = 0
    for k, (wnid, names) in enumerate(train_names(classes).items()):
        val = [f"ILSVRC2012_val_{k * VAL_PER_CLASS + i + 1:08d}.JPEG" for i in range(VAL_PER_CLASS)]
        for split, members in (("train", names), ("val", val)):
            folder = partial / split / wnid
            folder.mkdir(parents=True)
            for name in members:
                os.link(pool[counter % DISTINCT], folder / name)
                counter += 1
    (partial / ".complete").write_text(json.dumps({"train": TRAIN_FILES, "list": str(list_file)}))
    partial.rename(target)
    print(f"built {target}: {counter:,} hard links to {DISTINCT:,} JPEGs in {time.perf_counter() - started:.0f} s",
          flush=True)
    return target


# ---------------------------------------------------------------- memory
def memory(pid: int | str = "self") -> dict[str, float]:
    """MB of a process: rss and its peak (status), pss and private (Private_Clean + Private_Dirty, smaps_rollup)."""
    fields = {}
    for name in ("status", "smaps_rollup"):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"], "pss": fields["Pss"],
            "private": fields["Private_Clean"] + fields["Private_Dirty"]}


# ---------------------------------------------------------------- the recipe
def write_recipe(path: Path, tree: Path, list_file: Path, workers: str) -> Path:
    """The tiny recipe on the tree: tinyconv on 32- and 16-px crops, CPU, batch 32 + 16, the SimCLR list."""
    crops = [{"count": 2, "size": 32, "scale": [0.25, 1.0]}, {"count": 2, "size": 16, "scale": [0.05, 0.25]}]
    raw = {"name": "at-scale", "seed": 0,
           "data": {"dataset": "imagenet", "options": {"root": str(tree)}, "labels": {"list": str(list_file)},
                    "unlabeled": {"crops": crops}, "labeled": {"size": 32, "scale": [0.25, 1.0]},
                    "eval": {"size": 32, "resize": 36}, "batch": {"unlabeled": 32, "labeled": 16},
                    "loader": {"workers": workers if workers == "auto" else int(workers)}},
           "model": {"backbone": {"name": "tinyconv", "kwargs": {"widths": [8, 16]}}, "head": {"hidden": 32, "out": 16}},
           "method": {"name": "daino"},
           "optim": {"name": "sgd", "lr": 0.05, "lr_reference_batch": None},
           "schedule": {"epochs": 1},
           "runtime": {"device": "cpu", "precision": "fp32", "progress": "plain", "log_every_steps": 1},
           "checkpoint": {"every_epochs": 0}, "eval": {"every_epochs": 0}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=1))  # JSON is YAML
    return path


# ---------------------------------------------------------------- rows measured in this process
def index_row(recipe) -> tuple[dict, object]:
    """build_dataset: seconds and the main process's memory before and after."""
    import gc

    from semiclust.data.datasets import build_dataset

    gc.collect()
    before = memory()
    started = time.perf_counter()
    dataset = build_dataset(recipe.data.dataset, recipe.data.options)
    seconds = time.perf_counter() - started
    gc.collect()
    after = memory()
    return ({"row": "index", "s": seconds, "train": len(dataset.train), "val": len(dataset.test),
             "rss_before": before["rss"], "rss_after": after["rss"], "index_mb": after["rss"] - before["rss"],
             "peak": after["peak"], "problems": len(dataset.problems)}, dataset)


def subset_row(recipe, dataset) -> dict:
    """The labeled subset as train draws it (list matched, images checked readable)."""
    from semiclust.engine.setup import draw_subset

    before = memory()
    started = time.perf_counter()
    subset = draw_subset(dataset, recipe)
    seconds = time.perf_counter() - started
    after = memory()
    return {"row": "subset", "s": seconds, "count": len(subset.indices), "sha256": subset.digest,
            "files_sha256": subset.files_sha256, "rss_after": after["rss"], "added_mb": after["rss"] - before["rss"],
            "peak": after["peak"]}


class IndexWalk:
    """Item k (one per worker): its memory at start, then a walk over the whole index as a TrainFiles worker
    reads it (every file's path, labels in batches of 64), then its memory again."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return 1 << 20

    def __getitem__(self, item: int) -> dict:
        import torch

        start = memory()
        started = time.perf_counter()
        path = getattr(self.split, "location", self.split.path)  # what the loader's workers call to open a file
        for first in range(0, len(self.split), 64):
            stop = min(first + 64, len(self.split))
            for i in range(first, stop):
                path(i)
            self.split.labels[list(range(first, stop))]
        walked = time.perf_counter() - started
        return {"worker": torch.utils.data.get_worker_info().id, "pid": os.getpid(), "walk_s": walked,
                "start": start, "end": memory()}


def worker_rows(dataset, workers: int) -> list[dict]:
    import torch

    from semiclust.data.loader import make_loader
    from semiclust.config.schema import Loader

    spec = Loader(workers=workers, prefetch=1, persistent_workers=False, pin_memory=False)
    rows = []
    for item in make_loader(IndexWalk(dataset.train), range(workers), spec, torch.device("cpu")):
        start, end = item["start"], item["end"]
        rows.append({"row": f"worker {item['worker']}", "walk_s": item["walk_s"],
                     **{f"{k}_start": start[k] for k in ("rss", "pss", "private")},
                     **{f"{k}_end": end[k] for k in ("rss", "pss", "private")},
                     "private_growth": end["private"] - start["private"], "rss_growth": end["rss"] - start["rss"]})
    return rows


# ---------------------------------------------------------------- rows measured on the command line
def command_env(cache: Path) -> dict:
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))  # a given PYTHONPATH first
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "SEMICLUST_CACHE_DIR": str(cache)}


def command_row(name: str, args: list[str], cache: Path, timeout: float) -> dict:
    """One semiclust command to its end: seconds, exit code, the last lines it printed."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "semiclust", *args], env=command_env(cache), capture_output=True,
                          text=True, errors="replace", timeout=timeout)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"row": name, "s": time.perf_counter() - started, "exit": done.returncode, "tail": lines[-6:]}


def first_train_record(metrics: Path) -> dict | None:
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return None
    records = [json.loads(line) for line in lines if line.strip().endswith("}")]
    train = [r for r in records if r.get("type") == "train"]
    return train[-1] if train else None


def train_row(name: str, recipe: Path, out: Path, cache: Path, steps: int, timeout: float) -> dict:
    """`semiclust train` until `steps` steps are recorded: seconds to the first, memory then, start-up lines."""
    import threading

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "semiclust", "train", str(recipe), "--out", str(out)],
                               env=command_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.perf_counter() - started, line.rstrip())
                                                          for line in process.stdout), daemon=True)
    reader.start()
    row: dict = {"row": name}
    try:
        while time.perf_counter() - started < timeout and process.poll() is None:
            record = first_train_record(out / "metrics.jsonl")
            if record is not None and "first_step_s" not in row:
                row.update(first_step_s=time.perf_counter() - started, **memory(process.pid))
            if record is not None and record["step"] >= steps:
                row["steps_s"] = time.perf_counter() - started
                break
            time.sleep(0.05)
    finally:  # the run and its loader workers: the process group this script started
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join(timeout=5)
    row.setdefault("first_step_s", None)
    row["exit"] = process.returncode
    row["lines"] = [f"{t:7.1f} s  {text[:150]}" for t, text in lines[:40]]
    return row


# ---------------------------------------------------------------- output
def show(row: dict) -> None:
    """One row as a line of figures (MB, seconds), then any lines it carries, indented."""
    figures = []
    for key, value in row.items():
        if key in ("row", "lines", "tail"):
            continue
        if isinstance(value, float):
            value = f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
        figures.append(f"{key}={value}")
    print(f"{row['row']:>12}: " + "  ".join(figures), flush=True)
    for line in row.get("lines", []) + row.get("tail", []):
        print(f"{'':>14}| {line}", flush=True)


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = os.getloadavg()[0]
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), load {load:.2f}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the tree is built (once) and runs are written")
    parser.add_argument("--list", type=Path, default=DEFAULT_LIST, help="the SimCLR 10%% list (10percent.txt)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the workers row")
    parser.add_argument("--train-workers", default="auto", help="data.loader.workers of the commands' recipe")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps of each train row")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a command may take")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    import semiclust
    from semiclust.config.loader import load_recipe

    print(f"semiclust from {Path(semiclust.__file__).parent}; {machine()}", flush=True)
    tree = build_tree(args.dir.resolve(), args.list.resolve())
    work, rows = args.dir.resolve() / "work", []
    recipe_file = write_recipe(work / "recipe.yaml", tree, args.list.resolve(), args.train_workers)
    cache = work / "cache"

    def record(row: dict) -> None:
        rows.append(row)
        show(row)

    if {"index", "subset", "workers"} & set(args.rows):
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["SEMICLUST_CACHE_DIR"] = str(cache)
        recipe = load_recipe(str(recipe_file))
        row, dataset = index_row(recipe)
        record(row)
        if "subset" in args.rows:
            record(subset_row(recipe, dataset))
        if "workers" in args.rows:
            for row in worker_rows(dataset, args.workers):
                record(row)
        del dataset
    for name in ("check", "dry-run"):
        if name in args.rows:
            command = ["data", "check", str(recipe_file)] if name == "check" else ["train", str(recipe_file), "--dry-run"]
            shutil.rmtree(cache, ignore_errors=True)  # cold, as the first train row
            record(command_row(name, command, cache, args.timeout))
    if "train" in args.rows:
        shutil.rmtree(cache, ignore_errors=True)
        for name in ("train cold", "train warm"):
            record(train_row(name, recipe_file, work / f"run-{name.split()[1]}", cache, args.steps, args.timeout))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
