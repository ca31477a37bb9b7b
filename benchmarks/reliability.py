"""Faults injected and bad inputs tried on the real CLI, each in a scratch folder, with the outcome of each.

    python benchmarks/reliability.py [--keep DIR]

Every row runs `semiclust` as its own process (as a user would) on the tiny generated recipe, checks
what the user saw (exit code, one paragraph, no traceback) and what was left on disk (no temporary,
empty or half-written file; nothing finished lost), and prints one Markdown table. A full disk is
real where the script runs as root (a 256 KiB tmpfs); elsewhere, and for every other file of a run,
ENOSPC is injected where the file is flushed (`os.fsync`), which is where many filesystems report it.
About 18 minutes on 2 cores (103 rows).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import re
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.data.files import corrupt, image_tree, labeled_list_dataset, save, stripes  # noqa: E402
from tests.helpers import TINY_RECIPE  # noqa: E402

NAN_ONCE = """import sys, torch
from semiclust.methods.base import Method, StepResult
original = Method.training_step
def poisoned(self, batch, step, student=None):
    out = original(self, batch, step, student)
    return StepResult(out.loss * float("nan"), out.parts) if step == {step} else out
Method.training_step = poisoned
from semiclust.cli import main
main(sys.argv[1:])
"""
FAIL_FSYNC = """import errno, os, sys
real = os.fsync
def fsync(fd):
    if {pattern!r} in os.path.basename(os.readlink(f"/proc/self/fd/{{fd}}")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real(fd)
os.fsync = fsync
from semiclust.cli import main
main(sys.argv[1:])
"""


def environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    env.pop("WORLD_SIZE", None)
    return env


def semiclust(*argv, fail_at: str | None = None, nan_at: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """One CLI process; with `fail_at`, ENOSPC when a file whose name contains it is flushed; with `nan_at`,
    a non-finite loss at that step (the first time it is reached)."""
    head = [sys.executable, "-m", "semiclust"]
    if fail_at:
        head = [sys.executable, "-c", FAIL_FSYNC.format(pattern=fail_at)]
    if nan_at is not None:
        head = [sys.executable, "-c", NAN_ONCE.format(step=nan_at)]
    return subprocess.run([*head, *map(str, argv)], env=environment(), capture_output=True, text=True, timeout=timeout)


def said(done: subprocess.CompletedProcess) -> str:
    """What the user saw on stderr, on one line: the start of the error paragraph."""
    text = " ".join(done.stderr.split())
    return text.rsplit("error: ", 1)[-1][:170] if text else ""


def recipe(folder: Path, filename: str = "tiny.yaml", **changes) -> Path:
    raw = copy.deepcopy(TINY_RECIPE)
    for key, value in changes.items():
        node = raw
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / filename
    path.write_text(yaml.safe_dump(raw))
    return path


def clean(folder: Path) -> bool:
    """No temporary, empty or half-written file under `folder`."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return all(p.stat().st_size > 0 and not p.name.endswith(".tmp") for p in files)


def one_paragraph(done: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in done.stderr and done.stderr.count("error:") <= 1


# ---------------------------------------------------------------- the scenarios: (fault, outcome, ok)
def two_runs(scratch: Path):
    path = recipe(scratch, schedule__epochs=20000, checkpoint__every_epochs=0)
    first = subprocess.Popen([sys.executable, "-m", "semiclust", "train", str(path), "--out", str(scratch / "run")],
                             env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (scratch / "run" / "metrics.jsonl").exists() and first.poll() is None:
        time.sleep(0.2)
    second = semiclust("train", path, "--out", scratch / "run", "--overwrite")
    rows = [("a second `train --overwrite` into a folder still training", said(second),
             second.returncode == 2 and f"PID {first.pid}" in second.stderr and first.poll() is None)]
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = semiclust("train", path, "--out", scratch / "run", "--overwrite", "--set", "schedule.epochs=1",
                      "--set", "runtime.progress=plain")
    rows.append(("a start after that run was killed (its lock file left behind)",
                 " ".join((third.stdout + third.stderr).split()).split("warning: ")[-1][:110],
                 third.returncode == 0 and "took over the lock" in third.stdout + third.stderr))
    return rows


def full_disk_files(scratch: Path):
    rows = []
    for number, (pattern, what) in enumerate((
            ("recipe.yaml", "recipe.yaml"), ("labeled_subset.json", "labeled_subset.json"),
            ("metrics.jsonl", "metrics.jsonl"), ("step_000000006", "the first periodic checkpoint"),
            ("step_000000012", "the second periodic checkpoint"), ("final.pt", "final.pt"))):
        out = scratch / f"run{number}"  # a folder name that matches no pattern (its fsync would fail too)
        done = semiclust("train", recipe(scratch, schedule__epochs=3), "--out", out, fail_at=pattern)
        ok = done.returncode == 1 and "no space left" in done.stderr and clean(out) and one_paragraph(done)
        rows.append((f"disk full (ENOSPC) while writing {what}", said(done), ok))
    return rows


def full_disk_outputs(scratch: Path):
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    model = scratch / "model.safetensors"
    semiclust("export", "-c", scratch / "run", "--out", model, "--content", "classifier")
    save(scratch / "images" / "a.png", stripes(0, 0, size=8))
    cases = [("an export", ["export", "-c", scratch / "run", "--out", scratch / "x.safetensors"], "x.safetensors"),
             ("predictions", ["predict", scratch / "images", "--model", model, "-f", "csv", "-o", scratch / "p.csv"], "p.csv"),
             ("the confusion PNG of `eval`", ["eval", "-c", scratch / "run"], "final_confusion.png"),
             ("the curves PNG of `plot`", ["plot", scratch / "run"], "curves.png")]
    rows = []
    for what, argv, pattern in cases:
        done = semiclust(*argv, fail_at=pattern)
        kept = "a.png" in done.stdout if pattern == "p.csv" else ("top-1" in done.stdout if "confusion" in pattern else True)
        ok = done.returncode == 1 and "no space left" in done.stderr and kept and clean(scratch)
        rows.append((f"disk full while writing {what}" + (" (result printed first)" if pattern in ("p.csv",
                     "final_confusion.png") else ""), said(done), ok))
    return rows


def real_full_disk(scratch: Path):
    disk = scratch / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode:
        return [("a really full filesystem (256 KiB tmpfs)", "skipped: needs root to mount a tmpfs", True)]
    try:
        (disk / "filler").write_bytes(b"\0" * (256 - 60) * 1024)
        done = semiclust("train", recipe(scratch, model__backbone__kwargs__widths=[16, 32]), "--out", disk / "run")
        ok = done.returncode == 1 and "not enough free space" in done.stderr and clean(disk / "run")
        return [("a really full filesystem (256 KiB tmpfs): refused before training", said(done), ok)]
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def png_declaring(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 8)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def bombs(scratch: Path):
    options = labeled_list_dataset(scratch / "data", per_class=3, unlabeled_per_class=4, eval_per_class=1)
    bomb = png_declaring(scratch / "data" / "pool" / "bomb.png", 20000, 20000)
    path = recipe(scratch, data__dataset="labeled_list", data__options=options, data__labels={"fraction": 1.0},
                  data__eval={"size": 8, "resize": 10}, data__batch={"unlabeled": 29, "labeled": 8}, schedule__epochs=1)
    check = semiclust("data", "check", path, "--all")
    trained = semiclust("train", path, "--out", scratch / "run", "--set", "runtime.progress=plain")
    semiclust("export", "-c", scratch / "run", "--out", scratch / "m.safetensors", "--content", "classifier")
    predicted = semiclust("predict", bomb, "--model", scratch / "m.safetensors", "-f", "json")
    size = f"{bomb.stat().st_size}-byte PNG declaring 20000 x 20000"
    return [(f"a {size}: `data check --all`", "reported as a problem: header declares 20000 x 20000 pixels",
             check.returncode == 1 and "20000 x 20000" in check.stdout),
            ("the same file in training", "skipped as unreadable, with a warning", trained.returncode == 0
             and "bomb.png" in trained.stdout),
            ("the same file given to `predict`", "its row carries the error; other rows unaffected",
             predicted.returncode == 0 and "20000 x 20000" in predicted.stdout)]


def labeled_draw(scratch: Path):
    image_tree(scratch / "train", ["ant", "bee"], per_class=5)
    image_tree(scratch / "val", ["ant", "bee"], per_class=1, start_seed=50)
    for name in ("ant_0.png", "ant_1.png"):
        corrupt(scratch / "train" / "ant" / name)
    path = recipe(scratch, data__dataset="imagefolder", data__options={"root": str(scratch)},
                  data__labels={"per_class": 3}, data__eval={"size": 8, "resize": 10},
                  data__batch={"unlabeled": 4, "labeled": 4}, schedule__epochs=1)
    done = semiclust("train", path, "--out", scratch / "run")
    files = json.loads((scratch / "run" / "labeled_subset.json").read_text())["files"] if done.returncode == 0 else []
    listing = scratch / "labels.txt"
    listing.write_text("ant_0.png\nbee_1.png\n")
    listed = semiclust("train", path, "--out", scratch / "listed", "--set", f"data.labels={{list: {listing}}}")
    return [("unreadable files among the images drawn as labeled", f"drawn: {len(files)} readable, 3 per class",
             done.returncode == 0 and not {"ant/ant_0.png", "ant/ant_1.png"} & set(files) and len(files) == 6),
            ("a labels list naming an unreadable file", said(listed), listed.returncode == 2 and "ant_0.png" in listed.stderr)]


def pickles(scratch: Path):
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    marker = scratch / "pwned"
    code = ("import os, torch\nclass P:\n    def __reduce__(self): return os.system, ('touch " + str(marker) + "',)\n"
            f"s = torch.load('{scratch / 'run' / 'checkpoints' / 'final.pt'}', weights_only=True)\n"
            f"torch.save({{**s, 'x': P()}}, '{scratch / 'run' / 'checkpoints' / 'final.pt'}')\n")
    subprocess.run([sys.executable, "-c", code], env=environment(), check=True)
    rows = []
    for argv in (["eval", "-c", scratch / "run"], ["export", "-c", scratch / "run", "--out", scratch / "m.safetensors"]):
        done = semiclust(*argv)
        rows.append((f"a checkpoint carrying pickled code: `{argv[0]}`", said(done), done.returncode == 2
                     and "never executes pickled code" in done.stderr and not marker.exists()))
    return rows


def output_paths(scratch: Path):
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    a_file = scratch / "a_file"
    a_file.write_text("x")
    cases = [("`export --out` under a regular file", ["export", "-c", scratch / "run", "--out", a_file / "m.safetensors"]),
             ("`export --out` on /proc", ["export", "-c", scratch / "run", "--out", "/proc/m.safetensors"]),
             ("`export --out` onto an existing folder", ["export", "-c", scratch / "run", "--out", scratch]),
             ("`predict --out` under a file", ["predict", scratch, "--model", scratch / "m.safetensors", "-o", a_file / "p.csv",
                                              "-f", "csv"]),
             ("`eval --confusion /proc/c.png`", ["eval", "-c", scratch / "run", "--confusion", "/proc/c.png"]),
             ("`train --out` naming an existing file", ["train", recipe(scratch, "other.yaml"), "--out", a_file])]
    rows = []
    for what, argv in cases:
        done = semiclust(*argv)
        rows.append((what, said(done), done.returncode == 2 and one_paragraph(done) and "top-1" not in done.stdout))
    return rows


def encodings(scratch: Path):
    text = recipe(scratch).read_text()
    latin, utf16 = scratch / "latin.yaml", scratch / "utf16.yaml"
    latin.write_bytes(("# caf\xe9\n" + text).encode("latin-1"))
    utf16.write_bytes(text.encode("utf-16"))
    rows = []
    for what, path in (("a recipe with a Latin-1 byte in a comment", latin), ("a recipe saved as UTF-16", utf16)):
        done = semiclust("recipe", "validate", path)
        rows.append((what, said(done).replace("invalid ", ""), done.returncode == 2 and "UTF-8" in done.stderr))
    return rows


def nan_and_resume(scratch: Path):
    path = recipe(scratch, schedule__epochs=3)  # a periodic checkpoint every epoch of 6 steps
    done = semiclust("train", path, "--out", scratch / "run", nan_at=8)
    resumed = semiclust("train", path, "--out", scratch / "run", "--resume", "--set", "optim.lr=0.02")
    exploded = semiclust("train", recipe(scratch, "huge.yaml", optim__lr=1e45), "--out", scratch / "huge")
    history = scratch / "run" / "recipe_history.jsonl"
    (scratch / "run" / "checkpoints" / "final.pt").unlink(missing_ok=True)
    refused = semiclust("train", path, "--out", scratch / "run", "--resume", "--set", "optim.lr=0.02", "--set", "seed=4")
    recorded = history.exists() and "optim.lr" in history.read_text()
    return [("a non-finite loss after the first checkpoint", said(done),
             done.returncode == 1 and "step_000000006" in done.stderr),
            ("the advice followed: `--resume --set optim.lr=0.02`", "resumed and finished; the change printed and "
             "recorded in recipe_history.jsonl", resumed.returncode == 0 and recorded),
            ("`optim.lr: 1e45` (beyond what fp32 can step with)", said(exploded),
             exploded.returncode == 2 and one_paragraph(exploded)),
            ("`--resume` with a change that alters what was computed (seed)", said(refused),
             refused.returncode == 2 and "seed: 0 vs 4" in refused.stderr)]


def paths_and_quoting(scratch: Path):
    options = labeled_list_dataset(scratch / "good", per_class=2, unlabeled_per_class=3, eval_per_class=1)
    rows = (scratch / "good" / "labels.csv").read_text().splitlines()
    (scratch / "elsewhere").mkdir()
    (scratch / "elsewhere" / "labels.csv").write_text("\n".join([rows[0], *[f"../good/{r}" for r in rows[1:]]]) + "\n")
    (scratch / "good" / "pool" / "lab").symlink_to(scratch / "good" / "labeled")
    check = semiclust("data", "check", recipe(scratch, data__dataset="labeled_list",
                                              data__options={**options, "labeled": str(scratch / "elsewhere" / "labels.csv")},
                                              data__labels={"fraction": 1.0}))
    long = recipe(scratch, "long.yaml", schedule__epochs=400)
    started = subprocess.Popen([sys.executable, "-m", "semiclust", "train", str(long), "--out", str(scratch / "run a"),
                                "--set", "data.options={num_classes: 4, size: 8, channels: 1, train_per_class: 24}"],
                               env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (scratch / "run a" / "metrics.jsonl").exists() and started.poll() is None:
        time.sleep(0.2)
    started.send_signal(signal.SIGTERM)
    hint = " ".join(started.communicate()[1].split()).split("Continue with: ")[-1]
    pasted = subprocess.run(shlex.split(hint.replace("semiclust", f"{sys.executable} -m semiclust", 1)) + ["--dry-run"],
                            env=environment(), capture_output=True, text=True)
    total = next((line for line in check.stdout.splitlines() if "total" in line), "")
    cells = [cell.strip() for cell in total.split("│")]
    return [("`labeled_list` naming images as ../good/x.png, and linked into the pool",
             "each image counted once: " + " / ".join(c for c in cells if c), cells[2:4] == ["8", "12"]),
            ("the resume command printed after SIGTERM, pasted back", "it parses and runs (--set with spaces quoted)",
             pasted.returncode == 0)]


def leftovers(scratch: Path):
    path = recipe(scratch, schedule__epochs=1)
    semiclust("train", path, "--out", scratch / "run")
    stale = scratch / "run" / "checkpoints" / ".step_000000006.pt.a1b2c3d4.tmp"
    stale.write_bytes(b"\0" * 1000)
    (scratch / "run" / "checkpoints" / "final.pt").unlink()
    semiclust("train", path, "--out", scratch / "run", "--resume")
    image_tree(scratch / "data" / "train", ["ant", "bee"], per_class=4)
    (scratch / "data" / "train" / "cow").mkdir()
    bad = recipe(scratch, "folder.yaml", data__dataset="imagefolder", data__options={"root": str(scratch / "data"),
                 "eval_dir": None}, data__labels={"per_class": 2}, data__batch={"unlabeled": 4, "labeled": 4}, schedule__epochs=1)
    failed = semiclust("train", bad, "--out", scratch / "run2")
    (scratch / "data" / "train" / "cow").rmdir()
    again = semiclust("train", bad, "--out", scratch / "run2")
    return [("a temporary checkpoint file left by a SIGKILL, then `--resume`", "removed at resume", not stale.exists()),
            ("the same command after a start that failed before training", said(failed)[:50] + " ... then it starts",
             failed.returncode == 2 and again.returncode == 0)]


def messages(scratch: Path):
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    semiclust("export", "-c", scratch / "run", "--out", scratch / "m.safetensors", "--content", "classifier")
    loop = scratch / "loop.png"
    loop.symlink_to(loop)
    cases = [("a cross-field recipe error (warm-up longer than the run)",
              ["train", recipe(scratch, "x.yaml", schedule={"epochs": 2, "warmup_epochs": 5}), "--dry-run"]),
             ("a folder given as the recipe", ["train", scratch, "--dry-run"]),
             ("`eval` on a .safetensors export", ["eval", "-c", scratch / "m.safetensors"]),
             ("`predict` with a training checkpoint",
              ["predict", scratch, "--model", scratch / "run" / "checkpoints" / "final.pt"]),
             ("`predict` on a symbolic link loop", ["predict", loop, "--model", scratch / "m.safetensors", "-f", "json"]),
             ("a dataset that moved", ["data", "check", recipe(scratch, "moved.yaml", data__dataset="fashion_mnist",
                                                               data__options={"root": str(scratch / "moved")})]),
             ("`name: ..` in a recipe", ["train", recipe(scratch, "dots.yaml", name=".."), "--dry-run"])]
    rows = []
    for what, argv in cases:
        done = semiclust(*argv)
        shown = said(done) or " ".join(done.stdout.split())[:110]
        rows.append((what, shown, done.returncode in (0, 2) and one_paragraph(done)))
    return rows


# ---------------------------------------------------------------- issue 22: run folders, signals, damaged run files
SLOW_FSYNC = """import os, sys, time
real = os.fsync
def fsync(fd):
    if {pattern!r} in os.path.basename(os.readlink(f"/proc/self/fd/{{fd}}")):
        print("writing", flush=True)
        time.sleep(30)
    real(fd)
os.fsync = fsync
from semiclust.cli import main
main(sys.argv[1:])
"""


SLOW_CALIBRATION = """import sys, time
from semiclust.engine import budget
real = budget.train_step
def slow(run, step):
    if step == 5:
        print("calibrating", flush=True)
    time.sleep(0.2)
    return real(run, step)
budget.train_step = slow
from semiclust.cli import main
main(sys.argv[1:])
"""


def started(*argv, prelude: str | None = None, group: bool = False) -> subprocess.Popen:
    """A CLI process left running (in its own process group with `group`, as Slurm starts a job step)."""
    head = [sys.executable, "-c", prelude] if prelude else [sys.executable, "-m", "semiclust"]
    return subprocess.Popen([*head, *map(str, argv)], env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=group)


def told(stderr: str) -> str:
    """What a stopped process said, on one line, without its `stopped:` label."""
    return " ".join(stderr.split()).split(": ", 1)[-1][:150]


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.poll() is None


def continued(message: str) -> subprocess.CompletedProcess:
    """The command a stopped run printed, pasted back."""
    hint = " ".join(message.split()).split("with: ")[-1].split(" --resume")[0] + " --resume"
    return subprocess.run(shlex.split(hint.replace("semiclust", f"{sys.executable} -m semiclust", 1)), env=environment(),
                          capture_output=True, text=True, timeout=600)


def loads(path: Path) -> bool:
    import torch

    return path.is_file() and isinstance(torch.load(path, weights_only=True).get("step"), int)


def run_folders(scratch: Path):
    mine = scratch / "p3"
    mine.mkdir()
    (mine / "recipe.yaml").write_text("name: mine\nseed: 7\n")
    own = semiclust("train", "digits_suave", "--set", "schedule.epochs=3", "--out", mine)
    others = scratch / "others"
    others.mkdir()
    (others / "thesis.tex").write_text("x")
    (scratch / "link").symlink_to(others)
    folder, link = semiclust("train", recipe(scratch), "--out", others), semiclust("train", recipe(scratch), "--out", scratch / "link")
    empty = semiclust("train", recipe(scratch), "--out", "")
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "o")
    (scratch / "o" / "checkpoints" / "my_pretrained.pt").write_text("w")
    again = semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "o", "--overwrite", "--set", "seed=2")
    kept = (scratch / "o" / "checkpoints" / "my_pretrained.pt").read_text() == "w"
    untouched = [p.name for p in others.iterdir()] == ["thesis.tex"]
    return [("`train --out` a folder holding the user's own recipe.yaml", said(own), own.returncode == 2
             and (mine / "recipe.yaml").read_text() == "name: mine\nseed: 7\n" and sorted(os.listdir(mine)) == ["recipe.yaml"]),
            ("`--out` a non-empty folder of other files", said(folder), folder.returncode == 2 and untouched),
            ("`--out` a symbolic link to that folder", said(link), link.returncode == 2 and untouched),
            ("`--out ''` (an unset shell variable)", said(empty), empty.returncode == 2 and one_paragraph(empty)),
            ("`--overwrite` of a run whose checkpoints/ holds my_pretrained.pt", "replaced the run, kept the user's file",
             again.returncode == 0 and kept and "kept 'checkpoints/my_pretrained.pt'" in again.stdout)]


def overwrite_checks_first(scratch: Path):
    semiclust("train", "digits_suave", "--set", "schedule.epochs=3", "--out", scratch / "keep")
    before = sorted(str(p.relative_to(scratch / "keep")) for p in (scratch / "keep").rglob("*"))
    done = semiclust("train", "digits_suave", "--set", "data.labels.per_class=150", "--out", scratch / "keep", "--overwrite")
    after = sorted(str(p.relative_to(scratch / "keep")) for p in (scratch / "keep").rglob("*"))
    return [("`--overwrite` whose new start fails (150 labels per class of digits)", said(done),
             done.returncode == 2 and before == after and loads(scratch / "keep" / "checkpoints" / "final.pt"))]


def signal_rows(scratch: Path):
    rows = []
    slow_eval = recipe(scratch, "eval.yaml", data__options={"num_classes": 4, "size": 8, "channels": 1,
                       "train_per_class": 24, "test_per_class": 1500}, eval={"batch_size": 1}, schedule__epochs=2)
    run = started("train", slow_eval, "--out", scratch / "final")
    last = scratch / "final" / "metrics.jsonl"
    alive = wait_for(lambda: last.exists() and '"step": 12,' in last.read_text(), run)
    time.sleep(0.3)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    kept = loads(scratch / "final" / "checkpoints" / "step_000000012.pt") and not (scratch / "final" / ".lock").exists()
    pasted = continued(err) if alive else None
    rows.append(("SIGTERM 0.3 s after the last step (during the final evaluation of 6,000 images)", told(err),
                 alive and run.returncode == 143 and kept and pasted.returncode == 0
                 and loads(scratch / "final" / "checkpoints" / "final.pt")))
    budgeted = recipe(scratch, "budget.yaml", schedule={"budget": "30m", "epochs": None})
    run = started("train", budgeted, "--out", scratch / "calibration", prelude=SLOW_CALIBRATION)
    wait_for(lambda: "calibrating" in (run.stdout.readline() or ""), run)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    rows.append(("SIGTERM during a budgeted run's calibration", told(err),
                 run.returncode == 143 and "calibration" in err
                 and loads(scratch / "calibration" / "checkpoints" / "step_000000000.pt")
                 and not (scratch / "calibration" / ".lock").exists()))
    rows.append(group_signal(scratch))
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    run = started("export", "-c", scratch / "run", "--out", scratch / "m.safetensors",
                  prelude=SLOW_FSYNC.format(pattern="m.safetensors"))
    wait_for(lambda: "writing" in (run.stdout.readline() or ""), run)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    rows.append(("SIGTERM while `export` writes its file", told(err), run.returncode == 143
                 and clean(scratch) and not (scratch / "m.safetensors").exists()))
    return rows


def group_signal(scratch: Path):
    image_tree(scratch / "data" / "train", ["ant", "bee", "cow"], per_class=40, size=16)
    folder = recipe(scratch, "files.yaml", data__dataset="imagefolder", data__options={
        "root": str(scratch / "data"), "eval_dir": None}, data__cache="off", data__loader={"workers": 1},
        data__batch={"unlabeled": 16, "labeled": 6}, schedule__epochs=5000, checkpoint__every_epochs=0)
    run = started("train", folder, "--out", scratch / "group", group=True)
    wait_for(lambda: (scratch / "group" / "metrics.jsonl").exists(), run)
    os.killpg(run.pid, signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    step = err.split(" after step ")[1].split(";")[0] if " after step " in err else "0"
    return ("SIGTERM to the whole process group (Slurm), loader workers included", told(err),
            run.returncode == 143 and loads(scratch / "group" / "checkpoints" / f"step_{int(step):09d}.pt"))


def damaged_run_files(scratch: Path):
    path = recipe(scratch, schedule__epochs=3)
    rows = []
    for name, damage in (("cut", "metrics"), ("shape", "tensor"), ("yaml", "recipe")):
        out = scratch / name
        semiclust("train", path, "--out", out)
        (out / "checkpoints" / "final.pt").unlink()
        if damage == "metrics":
            with open(out / "metrics.jsonl", "a") as file:
                file.write('{"type": "train", "st')
        elif damage == "tensor":
            code = ("import torch, sys; p = sys.argv[1]; s = torch.load(p, weights_only=True); "
                    "s['method']['student.prototypes.weight'] = torch.zeros(3, 3); torch.save(s, p)")
            subprocess.run([sys.executable, "-c", code, str(out / "checkpoints" / "step_000000012.pt")], check=True)
        else:
            (out / "recipe.yaml").write_text("name: [unclosed\n")
        done = semiclust("train", path, "--out", out, "--resume", "--set", "runtime.progress=plain")
        plotted = semiclust("plot", out)
        said_out = " ".join(done.stdout.split())
        shown = next((part for part in said_out.split("warning: ")[1:] if "metrics" in part or "passed over" in part
                      or "damaged" in part), said_out)[:140]
        rows.append(({"metrics": "`--resume` after metrics.jsonl was cut mid-line",
                      "tensor": "`--resume` with a wrong-shaped tensor in the newest checkpoint",
                      "recipe": "`--resume` with a damaged recipe.yaml"}[damage], shown,
                     done.returncode == 0 and plotted.returncode == 0 and "Traceback" not in done.stderr
                     and loads(out / "checkpoints" / "final.pt")))
    return rows


LOCK_FULL = """import errno, os, sys
from semiclust.storage import lock
def full(*a):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
lock.os.pwrite = full
from semiclust.cli import main
main(sys.argv[1:])
"""


def full_disk_start(scratch: Path):
    done = subprocess.run([sys.executable, "-c", LOCK_FULL, "train", str(recipe(scratch)), "--out", str(scratch / "run")],
                          env=environment(), capture_output=True, text=True, timeout=300)
    rows = [("disk full (ENOSPC) while taking the run's lock", said(done), done.returncode == 1
             and one_paragraph(done) and not (scratch / "run" / ".lock").exists())]
    disk = scratch / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)]).returncode:
        return rows + [("a nearly full filesystem (12 MiB tmpfs)", "skipped: needs root to mount a tmpfs", True)]
    try:
        done = semiclust("train", recipe(scratch), "--out", disk / "run")
        rows.append(("a nearly full filesystem (12 MiB tmpfs): the run's checkpoints would not fit", said(done),
                     done.returncode == 1 and "nothing was trained" in done.stderr))
    finally:
        subprocess.run(["umount", "-l", str(disk)])
    return rows


def torchrun_hint(scratch: Path):
    path = recipe(scratch, schedule__epochs=400, data__batch={"unlabeled": 16, "labeled": 8})
    torchrun = Path(sys.executable).with_name("torchrun")
    run = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "semiclust", "train", str(path),
                            "--out", str(scratch / "run")], env=environment(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (scratch / "run" / "metrics.jsonl").exists(), run, timeout=240)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=240)
    hint = " ".join(err.split()).split("Continue with: ")[-1].split(" --resume")[0] + " --resume"  # torchrun's own
    # traceback of its SignalException follows
    pasted = subprocess.run(shlex.split(hint.replace("torchrun", str(torchrun), 1)) + ["--dry-run"], env=environment(),
                            capture_output=True, text=True, timeout=300) if hint.startswith("torchrun") else None
    return [("the resume command printed after a torchrun run is stopped", hint[:110],
             pasted is not None and pasted.returncode == 0)]


# ---------------------------------------------------------------- issue 22: recipes, hostile data files, files read back
def within(seconds: float, *argv) -> subprocess.CompletedProcess | None:
    """One CLI process given `seconds` to finish; None where it had not (a hang: a failed row, not a hung script)."""
    try:
        return semiclust(*argv, timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def measured(*argv, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float, float]:
    """One CLI process with its wall time (s) and peak resident memory (MiB, from the kernel's accounting)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "semiclust", *map(str, argv)], env=environment(),
                                   stdout=out, stderr=err)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - began
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read()), seconds, \
            usage.ru_maxrss / 1024


def flat(done: subprocess.CompletedProcess | None) -> str:
    """Everything a process printed, on one line (tables and notes included)."""
    return " ".join((done.stdout + done.stderr).split()) if done else ""


def release(fifo: Path) -> None:
    """Open a FIFO for writing and close it, so that a reader blocked on it (a hang) returns."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def laughs(levels: int) -> str:
    """The billion-laughs block: each level an anchored list of nine aliases of the level below (9**levels strings)."""
    lines = [f"  l0: &l0 [{', '.join(['lol'] * 9)}]"]
    lines += [f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def recipe_bombs(scratch: Path):
    text = recipe(scratch).read_text()
    laughing = scratch / "laughs.yaml"
    laughing.write_text(text + "bomb:\n" + laughs(9))
    began = time.monotonic()
    laughed = within(60, "train", laughing, "--dry-run")
    seconds = time.monotonic() - began
    nested = scratch / "nested.yaml"
    nested.write_text("x-anchors:\n" + laughs(6) + text.replace("device: cpu", "device: *l6"))
    short = semiclust("train", nested, "--dry-run")
    big = scratch / "big.yaml"
    big.write_text(text + "# padding\n" * 110_000 + "name: [unclosed\n")  # YAML that a parser would refuse at its end
    sized = semiclust("train", big, "--dry-run")
    bomb = "{" + ", ".join(f"k{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9) if n else ', '.join(['1'] * 9)}]"
                           for n in range(9)) + "}"
    overridden = semiclust("train", recipe(scratch), "--dry-run", "--set", f"data.options.x={bomb}")
    twice = scratch / "twice.yaml"
    twice.write_text(text + "seed: 3\n")
    lines = f"lines {text.splitlines().index('seed: 0') + 1} and {len(text.splitlines()) + 1}"
    duplicate = semiclust("train", twice, "--dry-run")
    return [(f"a billion-laughs recipe ({laughing.stat().st_size:,} bytes, 9 levels of 9 aliases)",
             f"after {seconds:.1f} s: " + (said(laughed) if laughed else "still running at 60 s"),
             laughed is not None and laughed.returncode == 2 and seconds < 20 and one_paragraph(laughed)),
            (f"a {nested.stat().st_size:,}-byte nested alias bomb as `runtime.device`",
             f"a {len(short.stderr):,}-byte message: " + said(short),
             short.returncode == 2 and len(short.stderr) < 1024 and "alias" in short.stderr and one_paragraph(short)),
            (f"a {big.stat().st_size:,}-byte recipe file (over 1 MiB; YAML broken on its last line)", said(sized),
             sized.returncode == 2 and "at most 1 MiB" in sized.stderr and "unclosed" not in sized.stderr),
            (f"a {len(bomb)}-byte alias bomb in a `--set` value", said(overridden),
             overridden.returncode == 2 and "alias" in overridden.stderr and one_paragraph(overridden)),
            ("a key set twice in a recipe (`seed: 0`, then `seed: 3` at the end)", said(duplicate),
             duplicate.returncode == 2 and lines in duplicate.stderr and "'seed'" in duplicate.stderr)]


def exported_contents(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata())


def rewritten_export(source: Path, target: Path, **metadata_changes) -> Path:
    """A copy of an export with some metadata values replaced (as a damaged or hostile file would carry)."""
    from safetensors.torch import save_file

    tensors, metadata = exported_contents(source)
    save_file(tensors, str(target), metadata={**metadata, **metadata_changes})
    return target


def victim_file(path: Path) -> Path:
    """A file whose access time is 0, before its modification time: a read moves it (relatime, the default)."""
    path.write_bytes(b"not a checkpoint")
    os.utime(path, ns=(0, time.time_ns()))
    return path


def unread(victim: Path) -> bool:
    """Whether a `victim_file` has not been read since it was made."""
    return victim.stat().st_atime_ns == 0


def reads_timed(folder: Path) -> bool:
    """Whether this file system records reads in the access time (not mounted noatime): `unread` means something."""
    control = victim_file(folder / "control")
    control.read_bytes()
    return not unread(control)


def recipe_values(scratch: Path):
    image_tree(scratch / "data" / "train", ["ant", "bee", "cow"], per_class=6, size=32)
    image_tree(scratch / "data" / "val", ["ant", "bee", "cow"], per_class=2, size=32, start_seed=50)
    mine = scratch / "mine.yaml"
    mine.write_text("mine: true\n")
    refused = semiclust("recipe", "init", "--data", scratch / "data", "--out", mine)
    kept = mine.read_text() == "mine: true\n"
    forced = semiclust("recipe", "init", "--data", scratch / "data", "--out", mine, "--force")
    victim = victim_file(scratch / "victim.pt")
    stolen = semiclust("train", recipe(scratch, "stolen.yaml", model__backbone__kwargs={
        "widths": [8, 16], "checkpoint_path": str(victim)}), "--dry-run")
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    model = scratch / "m.safetensors"
    semiclust("export", "-c", scratch / "run", "--out", model, "--content", "classifier")
    spec = json.loads(exported_contents(model)[1]["model_spec"])
    spec["backbone"]["kwargs"]["checkpoint_path"] = str(victim)
    hostile = rewritten_export(model, scratch / "hostile.safetensors", model_spec=json.dumps(spec))
    image = save(scratch / "images" / "a.png", stripes(0, 0, size=8)[..., 0])
    predicted = semiclust("predict", image, "--model", hostile)
    budgets = [semiclust("train", recipe(scratch), "--budget", "10", "--dry-run"),
               semiclust("train", recipe(scratch, "budget.yaml", schedule={"budget": 10}), "--dry-run"),
               semiclust("train", recipe(scratch), "--set", "schedule.budget=10", "--dry-run")]
    plain = [semiclust("train", recipe(scratch), "--set", change, "--dry-run")
             for change in ("runtime.channels_last=maybe", "model=3")]
    return [("`recipe init --out` onto an existing file", said(refused),
             refused.returncode == 2 and kept and "--force" in refused.stderr and one_paragraph(refused)),
            ("the same with `--force`", "replaced: " + mine.read_text().splitlines()[0][:80],
             forced.returncode == 0 and mine.read_text().startswith("# Written by `semiclust recipe init`")
             and not [p.name for p in scratch.iterdir() if p.name.startswith(".")]),
            ("`model.backbone.kwargs.checkpoint_path` in a recipe (`train --dry-run`)", said(stolen),
             stolen.returncode == 2 and "'model.backbone.kwargs.checkpoint_path'" in stolen.stderr and unread(victim)),
            ("an export whose metadata `model_spec` names a `checkpoint_path`, through `predict`",
             said(predicted) + (" (the file named: not read)" if reads_timed(scratch) else " (reads not timed here)"),
             predicted.returncode == 2 and "checkpoint_path" in predicted.stderr and one_paragraph(predicted)
             and unread(victim)),
            ("a budget without a unit (`--budget 10`, `schedule.budget: 10`, `--set schedule.budget=10`)",
             said(budgets[1]), all(d.returncode == 2 and "needs a unit" in d.stderr and "valid string" not in d.stderr
                                   for d in budgets)),
            *[(f"`--set {change}`", said(done), done.returncode == 2 and one_paragraph(done) and not
               {"literal", "ModelSpec", "instance of"} & set(done.stderr.replace("[", " ").replace("'", " ").split()))
              for change, done in zip(("runtime.channels_last=maybe", "model=3"), plain)]]


def folder_recipe(scratch: Path, root: Path, filename: str = "folder.yaml", **changes) -> Path:
    """The issue's repro recipe, on the tiny network: an ImageFolder, 1 worker, 2 labels per class, batches 8 + 6."""
    settings = {"data__dataset": "imagefolder", "data__options": {"root": str(root)}, "data__labels": {"per_class": 2},
                "data__loader": {"workers": 1}, "data__batch": {"unlabeled": 8, "labeled": 6},
                "data__eval": {"size": 8, "resize": 10}, "runtime__progress": "plain"}
    return recipe(scratch, filename, **{**settings, **changes})


def special_files(scratch: Path):
    latin_class, latin_file = os.fsdecode(b"b\xe9e"), os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    for split, count, seed in (("train", 3, 0), ("val", 1, 50)):
        image_tree(scratch / "data" / split, ["ant", latin_class, "cow"], per_class=count, start_seed=seed, size=32)
    save(scratch / "data" / "train" / "ant" / latin_file, stripes(0, 77, size=32))
    pipes = [scratch / "data" / "train" / "ant" / "pipe.png", scratch / "pipe.png"]
    for fifo in pipes:
        os.mkfifo(fifo)
    path = folder_recipe(scratch, scratch / "data", data__labels={"fraction": 1.0}, schedule__epochs=1)
    try:
        began = time.monotonic()
        check = within(120, "data", "check", path, "--all")
        seconds = time.monotonic() - began
        trained = within(300, "train", path, "--out", scratch / "run")
        semiclust("export", "-c", scratch / "run", "--out", scratch / "m.safetensors", "--content", "classifier")
        save(scratch / "images" / latin_file, stripes(1, 5, size=32))
        predicted = within(120, "predict", scratch / "images", "--model", scratch / "m.safetensors", "-f", "json",
                           "-o", scratch / "p.json")
        piped = within(60, "predict", pipes[1], "--model", scratch / "m.safetensors")
        zero = within(60, "predict", "/dev/zero", "--model", scratch / "m.safetensors")
    finally:
        for fifo in pipes:
            release(fifo)
    (scratch / "loops").mkdir()
    (scratch / "loops" / "x.png").symlink_to("nowhere.png")  # the old reason looked for "loop" in the path
    dangling = semiclust("predict", scratch / "loops" / "x.png", "--model", scratch / "m.safetensors")
    files = json.loads((scratch / "run" / "labeled_subset.json").read_bytes().decode("utf-8"))["files"] \
        if trained and trained.returncode == 0 else []
    records = json.loads((scratch / "p.json").read_bytes().decode("utf-8")) if predicted and predicted.returncode == 0 \
        else [{}]
    checked = flat(check)
    return [("a FIFO named pipe.png in an image folder: `data check --all`",
             f"finished in {seconds:.0f} s, the FIFO not listed: " + checked.split("files: ")[-1][:80] if check
             else "still running at 120 s",
             check is not None and check.returncode == 0 and "no problems found" in checked and "pipe.png" not in checked),
            ("a FIFO given to `predict`", said(piped) if piped else "still running at 60 s",
             piped is not None and piped.returncode == 2 and "FIFO" in piped.stderr and one_paragraph(piped)),
            ("/dev/zero given to `predict`", said(zero) if zero else "still running at 60 s",
             zero is not None and zero.returncode == 2 and "a device" in zero.stderr and "does not exist" not in zero.stderr),
            ("a Latin-1 (not UTF-8) file and class folder name: `data check --all`",
             "class b\\xe9e shown escaped, every file decoded, no problems found",
             check is not None and check.returncode == 0 and "b\\xe9e" in checked and "no problems found" in checked),
            ("the same images in `train`", f"trained on {len(files)} labeled, ant/caf\\xe9.png among them",
             trained is not None and trained.returncode == 0 and "ant/caf\\xe9.png" in files and "unreadable" not in
             trained.stdout and any(f.startswith("b\\xe9e/") for f in files)),
            ("a Latin-1 file name through `predict -f json`",
             "valid UTF-8 JSON, path ..." + records[0].get("path", "?")[-len("images/caf\\xe9.png"):],
             predicted is not None and predicted.returncode == 0 and records[0].get("path", "").endswith("caf\\xe9.png")
             and records[0].get("error") is None),
            ("a dangling symbolic link (in a folder called loops) given to `predict`", said(dangling),
             dangling.returncode == 2 and "a symbolic link to a missing file 'nowhere.png'" in dangling.stderr
             and "link loop" not in dangling.stderr)]


def labels_csv(scratch: Path):
    options = labeled_list_dataset(scratch / "data", per_class=3, unlabeled_per_class=4, eval_per_class=1)
    rows = (scratch / "data" / "labels.csv").read_text().splitlines()[1:]  # labeled/cat0.png,cat ...

    def listed(name: str, text: str, bom: bool = False) -> Path:
        (scratch / "data" / name).write_bytes(b"\xef\xbb\xbf" * bom + text.encode())
        return recipe(scratch, f"{name}.yaml", data__dataset="labeled_list", data__options={
            **options, "labeled": str(scratch / "data" / name)}, data__labels={"fraction": 1.0},
            data__eval={"size": 8, "resize": 10}, data__batch={"unlabeled": 8, "labeled": 6}, schedule__epochs=1)

    bom = semiclust("train", listed("bom.csv", "\n".join(rows) + "\n", bom=True), "--out", scratch / "run")
    files = json.loads((scratch / "run" / "labeled_subset.json").read_text())["files"] if bom.returncode == 0 else []
    twice = listed("twice.csv", "\n".join(["path,label", *rows, f"./{rows[0].split(',')[0]},dog"]) + "\n")
    checked, trained = semiclust("data", "check", twice), semiclust("train", twice, "--out", scratch / "twice")
    case = semiclust("data", "check", listed("case.csv", "\n".join([rows[0].replace(",cat", ",Cat"), *rows[1:]]) + "\n"))
    header = semiclust("data", "check", listed("header.csv", "\n".join(["path,lable", *rows]) + "\n"))
    problem = next((line for line in checked.stdout.splitlines() if "(line 2)" in line), "")
    return [("a labels CSV with a BOM and no header", f"BOM stripped: trained on {len(files)} labeled images",
             bom.returncode == 0 and len(files) == len(rows) and any(f.endswith(rows[0].split(",")[0]) for f in files)),
            ("a file listed twice with two labels: `data check`", " ".join(problem.split())[:170],
             checked.returncode == 1 and f"(line {len(rows) + 2})" in checked.stdout and "(line 2)" in checked.stdout),
            ("the same list in `train`", said(trained), trained.returncode == 2 and f"(line {len(rows) + 2})" in
             " ".join(trained.stderr.split()) and one_paragraph(trained)),
            ("`Cat` and `cat` as labels", next((line.strip(" -") for line in case.stdout.splitlines() if "'Cat'" in line),
                                              "")[:170],
             case.returncode == 1 and "'Cat' (line 1)" in flat(case) and "'cat' (line 2)" in flat(case)),
            ("a misspelt header `path,lable`", said(header),
             header.returncode == 2 and "'path,lable'" in header.stderr and "path,label" in header.stderr.replace(
                 "'path,lable'", "") and one_paragraph(header))]


def float_tiff(path: Path, values) -> Path:
    from PIL import Image

    Image.fromarray(values.astype("float32")).save(path)
    return path


def image_values(scratch: Path):
    image_tree(scratch / "data" / "train", ["ant", "bee", "cow"], per_class=5, size=32)
    image_tree(scratch / "data" / "val", ["ant", "bee", "cow"], per_class=1, size=32, start_seed=50)
    path = folder_recipe(scratch, scratch / "data", schedule__epochs=1)
    first = semiclust("train", path, "--out", scratch / "first")
    semiclust("export", "-c", scratch / "first", "--out", scratch / "m.safetensors", "--content", "classifier")
    grey = stripes(1, 9, size=32)[..., 0]
    save(scratch / "images" / "twin.png", grey)  # the same pixels as 8 bits: what the float TIFF must decode to
    float_tiff(scratch / "images" / "unit.tif", grey / 255.0)
    (scratch / "wide").mkdir()
    float_tiff(scratch / "wide" / "wide.tif", grey / 255.0 * 4000 - 5)
    unit = semiclust("predict", scratch / "images", "--model", scratch / "m.safetensors", "-f", "json")
    wide = semiclust("predict", scratch / "wide", "--model", scratch / "m.safetensors", "-f", "json")
    by_name = {Path(r["path"]).name: r for r in json.loads(unit.stdout)} if unit.returncode == 0 else {}
    twin, tif = by_name.get("twin.png", {}), by_name.get("unit.tif", {})
    refused = (json.loads(wide.stdout) or [{}])[0] if wide.returncode == 0 else {}
    drawn = json.loads((scratch / "first" / "labeled_subset.json").read_text())["files"] if first.returncode == 0 else []
    unreadable = drawn[1] if len(drawn) > 1 else "nothing drawn"
    corrupt(scratch / "data" / "train" / unreadable)
    check = semiclust("data", "check", path)
    second = semiclust("train", path, "--out", scratch / "second")
    checked = re.search(r"labeled subset: \d+ images, (.*?) image sizes", flat(check))
    trained = re.search(r"\d+ labeled \[(.*?)\]", flat(second))
    return [("a float32 TIFF with values in 0..1 to `predict`",
             f"classified as its 8-bit PNG twin is: {tif['classes'][0]} at {tif['probabilities'][0]:.3f}"
             if tif.get("classes") else str(tif.get("error")),
             tif.get("error") is None and bool(tif.get("classes")) and tif.get("classes") == twin.get("classes")
             and max(abs(a - b) for a, b in zip(tif["probabilities"], twin["probabilities"])) < 1e-5),
            ("a float32 TIFF with values -5..3995", str(refused.get("error"))[-150:],
             "convert it to 8 or 16 bits" in str(refused.get("error"))),
            ("an unreadable image among the drawn labeled ones: `data check`, then `train`",
             f"both draw [{checked.group(1) if checked else '?'}]",
             check.returncode == 1 and second.returncode == 0 and checked is not None and trained is not None
             and checked.group(1) == trained.group(1) and unreadable not in json.loads(
                 (scratch / "second" / "labeled_subset.json").read_text())["files"])]


def metrics_damaged(source: Path, target: Path, damage: str | None) -> Path:
    """A copy of a run's recipe.yaml and metrics.jsonl, the metrics cut mid-line, with two records glued, or whole."""
    target.mkdir()
    (target / "recipe.yaml").write_text((source / "recipe.yaml").read_text())
    text = (source / "metrics.jsonl").read_text()
    if damage == "cut":
        text = text[:-20]
    elif damage == "glued":
        lines = text.splitlines()
        text = "\n".join([*lines[:1], lines[1] + lines[2], *lines[3:]]) + "\n"
    (target / "metrics.jsonl").write_text(text)
    return target


def read_back_files(scratch: Path):
    import torch

    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    model = scratch / "m.safetensors"
    semiclust("export", "-c", scratch / "run", "--out", model, "--content", "classifier")
    view = {**json.loads(exported_contents(model)[1]["eval_view"]), "size": 60000}
    huge = rewritten_export(model, scratch / "huge.safetensors", eval_view=json.dumps(view))
    image = save(scratch / "images" / "a.png", stripes(0, 0, size=8)[..., 0])
    allocated, seconds, mib = measured("predict", image, "--model", huge)
    state = torch.load(scratch / "run" / "checkpoints" / "final.pt", weights_only=True)
    prefix = state["classifier"]["prefix"] + "."
    key = next(k for k in state["method"] if k.startswith(prefix) and k.endswith("weight"))
    torch.save({**state, "method": {**state["method"], key: torch.zeros(2, 2)}}, scratch / "shape.pt")
    shaped = [semiclust("eval", "-c", scratch / "shape.pt"),
              semiclust("export", "-c", scratch / "shape.pt", "--out", scratch / "x.safetensors")]
    torch.save({**state, "format_version": "1"}, scratch / "version.pt")
    versioned = semiclust("eval", "-c", scratch / "version.pt")
    with open(scratch / "pickled.pt", "wb") as file:
        pickle.dump({"weights": [1.0, 2.0, 3.0]}, file)
    pickled = semiclust("eval", "-c", scratch / "pickled.pt")
    named = key.removeprefix(prefix)
    return [("an export whose metadata says `eval_view.size: 60000`, to `predict`",
             f"{seconds:.1f} s, peak {mib:,.0f} MiB: " + said(allocated),
             allocated.returncode == 2 and "eval_view.size" in allocated.stderr and seconds < 60 and mib < 2048
             and one_paragraph(allocated)),
            *[(f"a checkpoint with a wrong-shaped tensor: `{done.args[3]}`", said(done),
               done.returncode == 2 and f"'{named}'" in done.stderr and "(2, 2)" in done.stderr and "expected (" in
               done.stderr and one_paragraph(done) and "top-1" not in done.stdout) for done in shaped],
            ("a checkpoint whose `format_version` is the string '1': `eval`", said(versioned),
             versioned.returncode == 2 and "format_version" in versioned.stderr and one_paragraph(versioned)),
            ("a `pickle.dump` file given to `eval`", said(pickled),
             pickled.returncode == 2 and "plain Python pickle" in pickled.stderr and one_paragraph(pickled))]


def damaged_run_outputs(scratch: Path):
    semiclust("train", recipe(scratch), "--out", scratch / "run")
    cut, glued = (metrics_damaged(scratch / "run", scratch / name, name) for name in ("cut", "glued"))
    plotted = [semiclust("plot", run) for run in (cut, glued)]
    compared = semiclust("compare", cut, glued, "--out", scratch / "both.png")
    bad = metrics_damaged(scratch / "run", scratch / "bad", None)
    (bad / "recipe.yaml").write_text("name: [unclosed\n")
    named = semiclust("compare", scratch / "run", bad, "--out", scratch / "named.png")
    rows = [(f"metrics.jsonl {'with a cut last line' if run == cut else 'with two records glued on one line'}: `plot`",
             " ".join(done.stderr.split()).split("warning: ")[-1][:150].replace(str(scratch), "."),
             done.returncode == 0 and (run / "curves.png").is_file() and flat(done).count("warning:") == 1)
            for run, done in zip((cut, glued), plotted)]
    return rows + [
        ("both runs to `compare`", f"compared, {flat(compared).count('damaged line')} warnings (one a run)",
         compared.returncode == 0 and (scratch / "both.png").is_file() and flat(compared).count("damaged line") == 2),
        ("an invalid recipe.yaml in a run: `compare`", next((line for line in flat(named).split("warning: ")[1:]
                                                             if "recipe.yaml" in line), "")[:150] + " ...",
         named.returncode == 0 and (scratch / "named.png").is_file() and "bad" in flat(named)
         and "left out of the recipe differences" in flat(named))]


def narrow(*argv) -> subprocess.CompletedProcess:
    """The CLI with its output going to a log, not a terminal, at the default 80 columns."""
    env = environment()
    env.pop("COLUMNS")
    return subprocess.run([sys.executable, "-m", "semiclust", *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=300)


def pasted(line: str) -> subprocess.CompletedProcess:
    """A printed `semiclust ...` command run as a shell would run it."""
    argv = shlex.split(line)
    return subprocess.run([sys.executable, "-m", "semiclust", *argv[1:]] if argv[:1] == ["semiclust"] else argv,
                          env=environment(), capture_output=True, text=True, timeout=300)


def eval_outputs(scratch: Path):
    folder = scratch / "my runs" / "a run whose folder name pushes the line well past eighty columns"
    trained = narrow("train", recipe(scratch), "--out", folder)
    again = next((line.removeprefix("evaluate again: ") for line in trained.stdout.splitlines()
                  if line.startswith("evaluate again: ")), "")
    evaluated = pasted(again) if again else None
    model = scratch / "my exports" / "a classifier whose file name pushes the line past eighty columns.safetensors"
    exported = narrow("export", "-c", folder, "--out", model, "--content", "classifier")
    load = next((line for line in exported.stdout.splitlines() if line.startswith("load it with semiclust: ")), "")
    code, _, command = load.removeprefix("load it with semiclust: ").partition("; or ")
    image = save(scratch / "my images" / "a b.png", stripes(0, 0, size=8)[..., 0])
    loaded = subprocess.run([sys.executable, "-c", f"import semiclust; {code}"], env=environment(), capture_output=True,
                            text=True, timeout=300)
    predicted = pasted(command.replace("IMAGES...", shlex.quote(str(image)))) if command else None
    backbone = scratch / "my exports" / "backbone.safetensors"
    lines = narrow("export", "-c", folder, "--out", backbone).stdout.split("load it with timm:\n")[-1]
    timm = subprocess.run([sys.executable, "-c", textwrap.dedent(lines)], env=environment(), capture_output=True,
                          text=True, timeout=300)
    four = semiclust("eval", "-c", folder, "--knn-k", "0")
    image_tree(scratch / "one" / "train", ["ant"], per_class=6, size=32)
    image_tree(scratch / "one" / "val", ["ant"], per_class=2, size=32, start_seed=50)
    semiclust("train", folder_recipe(scratch, scratch / "one", data__batch={"unlabeled": 4, "labeled": 2},
                                     schedule__epochs=1), "--out", scratch / "one_class")
    one = semiclust("eval", "-c", scratch / "one_class", "--knn-k", "0")
    note = next((line for line in one.stdout.splitlines() if "top-5 is 100%" in line), "")
    return [("\"evaluate again\" with spaces in the path, stdout a log (80 columns), pasted", again[:60] + "...",
             bool(again) and evaluated.returncode == 0 and "top-1" in evaluated.stdout),
            ("export's `semiclust.load_classifier(...)` line, pasted into Python", code[:60] + "...",
             bool(code) and loaded.returncode == 0),
            ("export's `semiclust predict` line, pasted with an image for IMAGES...", command[:60] + "...",
             predicted is not None and predicted.returncode == 0 and "a b.png" in predicted.stdout),
            ("a backbone export's timm lines, pasted into Python", "they run (the path quoted)", timm.returncode == 0),
            ("`eval` of a 1-class run", note.lstrip("* ")[:120],
             one.returncode == 0 and re.search(r"top-5 is 100% with 1 class", one.stdout) is not None),
            ("`eval` of a 4-class run", "marked: " + next((line.lstrip("* ") for line in four.stdout.splitlines()
                                                            if "top-5 is 100%" in line), "")[:60],
             four.returncode == 0 and "top-5 is 100% with 4 classes" in four.stdout)]


def many_classes(scratch: Path):
    many = recipe(scratch, data__options={"num_classes": 10000, "size": 8, "channels": 1, "train_per_class": 1,
                                          "test_per_class": 1}, data__labels={"per_class": 1},
                  data__batch={"unlabeled": 512, "labeled": 256}, schedule__epochs=1, checkpoint__every_epochs=0)
    within(600, "train", many, "--out", scratch / "run")
    done, seconds, mib = measured("eval", "-c", scratch / "run", timeout=600)
    png = scratch / "run" / "checkpoints" / "final_confusion.png"
    size = (0, 0)
    if png.is_file():
        from PIL import Image

        with Image.open(png) as drawn:
            size = drawn.size
    shown = "(the 30 most-confused of 10,000 classes)"
    return [("`eval` with defaults of a 10,000-class checkpoint", f"result and PNG ({size[0]} x {size[1]} px) {shown}, "
             f"{seconds:.0f} s, peak {mib / 1024:.1f} GiB", done.returncode == 0 and "top-1" in done.stdout
             and shown in flat(done) and 0 < max(size) < 5000)]


def read_only_folder(scratch: Path):
    semiclust("train", recipe(scratch, schedule__epochs=1), "--out", scratch / "run")
    folder = scratch / "run" / "checkpoints"
    if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        return [("`eval` of a checkpoint in a read-only folder", "skipped: needs root and chattr (as root a chmod "
                 "does not stop writes)", True)]
    try:
        done = semiclust("eval", "-c", folder / "final.pt", "--knn-k", "0")
    finally:
        subprocess.run(["chattr", "-i", str(folder)])
    note = next((line for line in done.stdout.splitlines() if "not written" in line), "")
    return [("`eval` of a checkpoint in a read-only folder (chattr +i)", " ".join(note.split())[:150],
             done.returncode == 0 and "top-1" in done.stdout and bool(note)
             and not (folder / "final_confusion.png").exists())]


SCENARIOS = [two_runs, full_disk_files, full_disk_outputs, real_full_disk, bombs, labeled_draw, pickles, output_paths,
             encodings, nan_and_resume, paths_and_quoting, leftovers, messages,
             run_folders, overwrite_checks_first, signal_rows, damaged_run_files, full_disk_start, torchrun_hint,
             recipe_bombs, recipe_values, special_files, labels_csv, image_values, read_back_files, damaged_run_outputs,
             eval_outputs, many_classes, read_only_folder]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the scratch folders here")
    parser.add_argument("--only", nargs="*", help="run only these scenarios (function names)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="semiclust-reliability-"))
    print("| fault or bad input | what the user sees | outcome |\n|---|---|---|")
    failures = 0
    for scenario in [s for s in SCENARIOS if not args.only or s.__name__ in args.only]:
        scratch = base / scenario.__name__
        scratch.mkdir(parents=True, exist_ok=True)
        for fault, seen, ok in scenario(scratch):
            failures += not ok
            seen = seen.replace(f"{scratch}/", "").replace(str(scratch), ".").replace("|", "/")  # paths in the scratch
            print(f"| {fault} | {seen} | {'ok' if ok else 'FAILED'} |", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
