"""Reliability: one test per failure a user hit (issue 12, items 1-15), on real files, real processes and
real filesystems; where a fault must be injected (a full disk), it is injected at the write itself."""
from __future__ import annotations

import copy
import errno
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from semiclust.cli import main
from tests.data.files import corrupt, image_tree, labeled_list_dataset, save, stripes
from tests.helpers import TINY_RECIPE

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(map(str, argv)))
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, " ".join(captured.err.split())


def write_recipe(folder: Path, changes: dict | None = None, name: str = "tiny.yaml", **sections) -> Path:
    raw = copy.deepcopy(TINY_RECIPE)
    for key, value in (changes or {}).items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    raw.update(sections)
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    env.pop("WORLD_SIZE", None)
    return env


# ---------------------------------------------------------------- 1. one run per folder
@pytest.mark.slow
def test_two_runs_never_share_a_run_directory(tmp_path):
    """A second `semiclust train` into a folder that is still training is refused with any flags, naming
    the PID and host; once the first run is killed, its lock is taken over with a warning."""
    recipe = write_recipe(tmp_path, {"schedule.epochs": 20000, "checkpoint.every_epochs": 0})  # killed long before its end
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "semiclust", "train", str(recipe), "--out", str(out)],
                             env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)  # training has started: the lock is held and steps are being logged
        assert first.poll() is None, first.stderr.read()
        for flags in ([], ["--overwrite"], ["--resume"]):
            second = subprocess.run([sys.executable, "-m", "semiclust", "train", str(recipe), "--out", str(out), *flags],
                                    env=environment(), capture_output=True, text=True, timeout=120)
            message = " ".join(second.stderr.split())
            assert second.returncode == 2, message
            assert f"PID {first.pid}" in message and socket.gethostname() in message and "still training" in message
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = subprocess.run([sys.executable, "-m", "semiclust", "train", str(recipe), "--out", str(out), "--overwrite",
                            "--set", "schedule.epochs=1", "--set", "runtime.progress=plain"], env=environment(),
                           capture_output=True, text=True, timeout=180)
    message = " ".join((third.stdout + third.stderr).split())
    assert third.returncode == 0, message
    assert f"took over the lock of PID {first.pid}" in message and "no longer running" in message
    assert yaml.safe_load((out / "recipe.yaml").read_text())["schedule"]["epochs"] == 1


# ---------------------------------------------------------------- 2. full disks
def fail_writes_to(monkeypatch, pattern: str) -> None:
    """ENOSPC when a file whose name contains `pattern` is flushed to disk (where a real full disk reports
    it on many filesystems); every other write goes through."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if pattern in Path(target).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("pattern, reached", [
    ("recipe.yaml", "nothing"), ("labeled_subset.json", "nothing"), ("metrics.jsonl", "nothing"),
    ("step_000000006", "nothing"), ("step_000000012", "step_000000006.pt"),
    ("final.pt", "step_000000018.pt"),  # the last step's checkpoint, written before the final evaluation
])
def test_a_full_disk_ends_the_run_in_one_paragraph_and_loses_nothing(tmp_path, capsys, monkeypatch, pattern, reached):
    recipe = write_recipe(tmp_path, {"schedule.epochs": 3})  # 6 steps per epoch, checkpoints every epoch
    out = tmp_path / "run"
    fail_writes_to(monkeypatch, pattern)
    code, _, err = run(capsys, "train", recipe, "--out", out)
    assert code == 1, err
    assert "no space left on the device" in err and pattern in err and "free on" in err
    assert (f"The last good checkpoint is '{out / 'checkpoints' / reached}'" in err if reached != "nothing"
            else "No checkpoint was written yet" in err)
    assert "Traceback" not in err
    written = files_under(out)
    assert not [p for p in written if p.name.endswith(".tmp")], written  # no temporary file left behind
    assert all(p.stat().st_size > 0 for p in written)  # and no empty or half-written file where a reader looks
    if (out / "recipe.yaml").exists():
        yaml.safe_load((out / "recipe.yaml").read_text())
    if (out / "metrics.jsonl").exists():
        [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("command, pattern", [("export", "model.safetensors"), ("predict", "predictions.csv"),
                                              ("eval", "final_confusion.png"), ("plot", "curves.png")])
def test_a_full_disk_while_writing_an_output_is_one_paragraph_after_the_result(
        trained_run, tmp_path, capsys, monkeypatch, command, pattern):
    model = tmp_path / "model.safetensors"
    if command == "predict":
        assert run(capsys, "export", "-c", trained_run.checkpoint, "--out", model, "--content", "classifier")[0] == 0
        save(tmp_path / "images" / "a.png", stripes(0, 0, size=16))
    checkpoint = tmp_path / "copy" / "final.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(trained_run.checkpoint.read_bytes())
    fail_writes_to(monkeypatch, pattern)
    argv = {"export": ["export", "-c", checkpoint, "--out", model, "--content", "classifier"],
            "predict": ["predict", tmp_path / "images", "--model", model, "-f", "csv", "-o", tmp_path / "predictions.csv"],
            "eval": ["eval", "-c", checkpoint], "plot": ["plot", trained_run.run_dir, "--out", tmp_path / "curves.png"]}
    code, out, err = run(capsys, *argv[command])
    assert code == 1 and "no space left on the device" in err and pattern in err and "Traceback" not in err
    if command == "predict":
        assert "a.png" in out  # the predictions were computed: they are printed before the error
    if command == "eval":
        assert "top-1" in out
    assert not [p for p in files_under(tmp_path) if p.name.endswith(".tmp") or (p.name == pattern)]


def root_can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and Path("/proc/filesystems").read_text().find("tmpfs") >= 0


@pytest.mark.skipif(not root_can_mount(), reason="needs root to mount a small tmpfs")
def test_a_really_full_filesystem_loses_no_file(tmp_path, capsys):
    """A 256 KiB tmpfs: the run's first files would fit, its checkpoints would not: refused before training (it
    used to train to its first checkpoint and fail there), leaving only the folder's marker."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        (disk / "filler").write_bytes(b"\0" * (256 * 1024 - 60 * 1024))  # leave ~60 KiB: recipe and metrics fit
        recipe = write_recipe(tmp_path, {"model.backbone.kwargs.widths": [16, 32], "model.head": {"hidden": 64, "out": 32}})
        code, _, err = run(capsys, "train", recipe, "--out", disk / "run")
        assert code == 1 and "not enough free space for this run's checkpoints" in err and "Traceback" not in err
        written = files_under(disk / "run")
        assert [p.name for p in written] == [".semiclust-run"], written
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---------------------------------------------------------------- 3. decompression bombs
def png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header declares width x height 8-bit gray pixels (its data are a few rows only)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (width + 1) * 8)
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_a_decompression_bomb_is_never_decoded(tmp_path, capsys):
    """data check reports it, training skips it as unreadable, predict names it; nothing decodes 400 M pixels."""
    from semiclust.data.decode import UnreadableImage, decode_rgb

    bomb = png_declaring(tmp_path / "data" / "pool" / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(UnreadableImage, match=r"20000 x 20000 pixels .* data.max_image_pixels"):
        decode_rgb(bomb)
    options = labeled_list_dataset(tmp_path / "data", per_class=3, unlabeled_per_class=4, eval_per_class=1)
    recipe = write_recipe(tmp_path, {"data.dataset": "labeled_list", "data.options": options,
                                     "data.labels": {"fraction": 1.0}, "data.eval": {"size": 8, "resize": 10},
                                     "data.batch": {"unlabeled": 29, "labeled": 8}})  # one step reads all 29 files
    code, out, _ = run(capsys, "data", "check", recipe, "--all")
    assert code == 1 and "bomb.png" in " ".join(out.split()) and "data.max_image_pixels" in " ".join(out.split())
    model = tmp_path / "model.safetensors"
    code, out, err = run(capsys, "train", recipe, "--out", tmp_path / "run", "--set", "schedule.epochs=1")
    assert code == 0 and "bomb.png" in " ".join(out.split()), err  # skipped as unreadable, with a warning
    run(capsys, "export", "-c", tmp_path / "run", "--out", model, "--content", "classifier")
    code, out, err = run(capsys, "predict", bomb, "--model", model, "-f", "json")
    assert code == 0 and "20000 x 20000" in json.loads(out)[0]["error"]
    crafted = png_declaring(tmp_path / "big.png", 3000, 2000)  # complete chunks, too little pixel data
    with pytest.raises(UnreadableImage, match="3000 x 2000"):
        decode_rgb(crafted, max_pixels=1_000_000)
    assert decode_rgb(crafted, max_pixels=10_000_000).shape == (3, 2000, 3000)  # raised limit: decoded, no crash


# ---------------------------------------------------------------- 4. unreadable labeled images
def test_unreadable_images_are_never_drawn_as_labeled(tmp_path, capsys):
    """The draw walks each class's seeded order, passing over unreadable files (and saying which), so the
    subset stays class-balanced; a list naming an unreadable file is refused with the list."""
    image_tree(tmp_path / "train", ["ant", "bee"], per_class=5)
    image_tree(tmp_path / "val", ["ant", "bee"], per_class=1, start_seed=50)
    broken = ["ant/ant_0.png", "ant/ant_1.png"]
    for name in broken:
        corrupt(tmp_path / "train" / name)
    recipe = write_recipe(tmp_path, {"data.dataset": "imagefolder", "data.options": {"root": str(tmp_path)},
                                     "data.labels": {"per_class": 3}, "data.eval": {"size": 8, "resize": 10},
                                     "data.batch": {"unlabeled": 4, "labeled": 4}, "schedule.epochs": 1})
    code, out, err = run(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    err = " ".join(out.split())  # the start-up notes are printed with the progress
    subset = json.loads((tmp_path / "run" / "labeled_subset.json").read_text())
    assert sorted(f for f in subset["files"] if f.startswith("ant")) == ["ant/ant_2.png", "ant/ant_3.png", "ant/ant_4.png"]
    assert sum(f.startswith("bee") for f in subset["files"]) == 3
    order = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()  # the draw's order of class 'ant'
    met, readable = [], 0  # the unreadable files met before the third readable one
    for i in order:
        if readable == 3:
            break
        if i < 2:
            met.append(f"ant/ant_{i}.png")
        else:
            readable += 1
    for name in broken:
        assert (name in err) == (name in met)
    assert ("passed over" in err) == bool(met)
    listing = tmp_path / "labels.txt"
    listing.write_text("ant_0.png\nbee_1.png\n")
    code, _, err = run(capsys, "train", recipe, "--out", tmp_path / "listed", "--set", f"data.labels={{list: {listing}}}")
    assert code == 2 and "ant_0.png" in err and "unreadable" in err


# ---------------------------------------------------------------- 5. pickled code in checkpoints
class Payload:
    """Runs a shell command when unpickled (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_in_a_checkpoint_is_named_and_never_run(trained_run, tmp_path, capsys):
    state = torch.load(trained_run.checkpoint, weights_only=True)
    marker = tmp_path / "pwned"
    evil = tmp_path / "run" / "checkpoints" / "final.pt"
    evil.parent.mkdir(parents=True)
    torch.save({**state, "extra": Payload(marker)}, evil)
    for argv in (["eval", "-c", evil], ["export", "-c", evil, "--out", tmp_path / "m.safetensors"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "contains posix.system" in err and "semiclust never executes pickled code" in err
        assert "Re-running" not in err and "corrupt" not in err
    assert not marker.exists()


# ---------------------------------------------------------------- 6. output paths
def test_output_paths_are_checked_before_the_work(trained_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["export", "-c", trained_run.checkpoint, "--out", a_file / "m.safetensors"], "is a file, not a folder"),
        (["export", "-c", trained_run.checkpoint, "--out", "/proc/m.safetensors"], "cannot be written"),
        (["export", "-c", trained_run.checkpoint, "--out", tmp_path], "is a folder"),
        (["predict", tmp_path, "--model", tmp_path / "m.safetensors", "-f", "csv", "-o", a_file / "p.csv"], "is a file"),
        (["eval", "-c", trained_run.checkpoint, "--confusion", "/proc/c.png"], "cannot be written"),
        (["train", write_recipe(tmp_path), "--out", a_file], "is a file"),
    ]
    for argv, expected in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert "top-1" not in out  # refused before any work
    assert not list(tmp_path.glob("*.partial")) and a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a read-only bind mount")
def test_eval_of_a_checkpoint_in_a_read_only_folder_says_where_to_write_instead(trained_run, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "final.pt").write_bytes(trained_run.checkpoint.read_bytes())
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("could not make a read-only bind mount")
    try:
        code, out, err = run(capsys, "eval", "-c", folder / "final.pt")  # evaluates; the default PNG is skipped
        assert code == 0 and "top-1" in out and "confusion matrix not written" in out and "--confusion PATH" in out
        code, out, _ = run(capsys, "eval", "-c", folder / "final.pt", "--no-confusion")
        assert code == 0 and "top-1" in out
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # lazily: the checkpoint may be mapped


# ---------------------------------------------------------------- 7. recipes that are not UTF-8
def test_a_recipe_that_is_not_utf8_names_the_byte(tmp_path, capsys):
    text = write_recipe(tmp_path).read_text()
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(("# caf\xe9\n" + text).encode("latin-1"))
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(text.encode("utf-16"))
    for path, offset in ((latin, 5), (utf16, 0)):
        for argv in (["train", path, "--dry-run"], ["recipe", "validate", path]):
            code, _, err = run(capsys, *argv)
            assert code == 2 and f"byte {offset}" in err and "UTF-8" in err and "Traceback" not in err, err
    assert "UTF-16" in run(capsys, "train", utf16, "--dry-run")[2]


# ---------------------------------------------------------------- 8. the NaN advice can be followed
def test_resume_accepts_the_changes_the_nan_advice_names_and_refuses_others(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {"schedule.epochs": 3})  # checkpoints every epoch of 6 steps
    killed = tmp_path / "partial"
    assert run(capsys, "train", recipe, "--out", killed)[0] == 0
    (killed / "checkpoints" / "final.pt").unlink()  # as if it had stopped after its last periodic checkpoint
    code, out, err = run(capsys, "train", recipe, "--out", killed, "--resume", "--set", "optim.lr=0.02",
                         "--set", "optim.clip_grad_norm=1.0", "--set", "schedule.epochs=4",
                         "--set", "runtime.log_every_steps=3")
    assert code == 0, err
    out = " ".join(out.split())
    assert "optim.lr: 0.05 -> 0.02" in out and "schedule.epochs: 3 -> 4" in out
    history = [json.loads(line) for line in (killed / "recipe_history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 12 and history[-1]["changes"]["optim.lr"] == [0.05, 0.02]
    assert yaml.safe_load((killed / "recipe.yaml").read_text())["optim"]["lr"] == 0.02
    (killed / "checkpoints" / "final.pt").unlink()
    code, _, err = run(capsys, "train", recipe, "--out", killed, "--resume", "--set", "optim.lr=0.02",
                       "--set", "schedule.epochs=4", "--set", "seed=5", "--set", "method.temperature=0.2")
    assert code == 2 and "seed: 0 vs 5" in err and "method.temperature: 0.1 vs 0.2" in err


# ---------------------------------------------------------------- 9. the NaN message names a loadable checkpoint
def test_the_nan_message_never_names_an_unreadable_checkpoint(tmp_path, monkeypatch):
    from semiclust.engine.trainer import non_finite_error
    from semiclust.engine.run_dir import RunFiles

    files = RunFiles(tmp_path)
    files.checkpoints.mkdir(parents=True)
    good = files.checkpoints / "step_000000006.pt"
    from semiclust.engine.checkpoint import Checkpoint, save_checkpoint

    save_checkpoint(Checkpoint(step=6), good)
    (files.checkpoints / "step_000000012.pt").write_bytes(b"garbage")
    message = str(non_finite_error(13, {"loss": float("nan")}, files, 0, "semiclust train r.yaml --out run --resume"))
    assert str(good) in message and "step_000000012" not in message


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, monkeypatch):
    """A finite loss can still leave infinite weights (a huge step): such a state is no checkpoint to go back
    to, so the run stops naming the last one that is."""
    from semiclust.engine import step as step_module
    from semiclust.engine.trainer import train
    from semiclust.errors import SemiclustError
    from semiclust.config.loader import resolve

    original = step_module.optimizer_step

    def blow_up(run, step):
        original(run, step)
        if step == 7:
            with torch.no_grad():
                next(run.method.student.parameters()).fill_(float("inf"))

    monkeypatch.setattr(step_module, "optimizer_step", blow_up)
    raw = copy.deepcopy(TINY_RECIPE)
    raw["schedule"]["epochs"] = 3
    raw["checkpoint"] = {"every_steps": 4, "every_epochs": 0}
    with pytest.raises(SemiclustError, match=r"the weights became non-finite at step 7.*step_000000004.pt"):
        train(resolve(raw), tmp_path / "run")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_000000004.pt"]


def test_non_finite_weights_at_a_periodic_checkpoint_print_the_users_command(tmp_path, capsys, monkeypatch):
    """The resume command printed when a periodic checkpoint finds non-finite weights is the user's own, with their
    --set overrides (it was `semiclust train RECIPE --out RUN --resume`, the --sets lost: issue 26)."""
    original, calls = torch.optim.SGD.step, []

    def blow_up(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 8:  # the update of step 7 leaves infinite weights behind a finite loss
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", blow_up)
    recipe = write_recipe(tmp_path, {"schedule.epochs": 3, "checkpoint.every_steps": 4, "checkpoint.every_epochs": 0})
    code, _, err = run(capsys, "train", recipe, "--out", tmp_path / "run", "--set", "optim.momentum=0.8")
    assert code == 1 and "the weights became non-finite at step 7" in err
    assert "--set optim.momentum=0.8 --resume --set optim.lr=LOWER" in err


# ---------------------------------------------------------------- 10. labeled_list paths
def test_the_same_image_counts_once_however_its_path_is_written(tmp_path):
    from semiclust.data.datasets import build_dataset
    from semiclust.data.subsets import choose_labeled
    from semiclust.config.schema import Labels

    options = labeled_list_dataset(tmp_path / "good", per_class=2, unlabeled_per_class=3, eval_per_class=1)
    rows = (tmp_path / "good" / "labels.csv").read_text().splitlines()
    relative = tmp_path / "elsewhere" / "labels.csv"
    relative.parent.mkdir()
    relative.write_text("\n".join([rows[0], *[f"../good/{r}" for r in rows[1:]]]) + "\n")
    absolute = tmp_path / "abs.csv"
    absolute.write_text("\n".join([rows[0], *[f"{tmp_path / 'good'}/{r}" for r in rows[1:]]]) + "\n")
    (tmp_path / "good" / "pool" / "lab").symlink_to(tmp_path / "good" / "labeled")  # labeled images inside the pool
    sizes = {len(build_dataset("labeled_list", {**options, "labeled": str(path)}).train) for path in (relative, absolute)}
    assert sizes == {8 + 12}  # 8 labeled + 12 unlabeled, each image once
    one = build_dataset("labeled_list", {**options, "labeled": str(relative)})
    other = labeled_list_dataset(tmp_path / "other", per_class=2, unlabeled_per_class=3, eval_per_class=1)
    two = build_dataset("labeled_list", other)
    spec = Labels(fraction=1.0)
    assert choose_labeled(one.train, spec, 0, 4).identity != choose_labeled(two.train, spec, 0, 4).identity


# ---------------------------------------------------------------- 11. the printed resume command
def test_the_printed_resume_command_can_be_pasted_back(tmp_path):
    recipe = write_recipe(tmp_path, {"schedule.epochs": 400})
    command = [sys.executable, "-m", "semiclust", "train", str(recipe), "--out", str(tmp_path / "run a"),
               "--set", "data.options={num_classes: 4, size: 8, channels: 1, train_per_class: 24, test_per_class: 8}"]
    started = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "run a" / "metrics.jsonl").exists() and started.poll() is None:
        time.sleep(0.2)
    started.send_signal(signal.SIGTERM)
    err = " ".join(started.communicate(timeout=120)[1].split())
    assert started.returncode == 143, err
    hint = err.split("Continue with: ", 1)[1].strip()
    argv = shlex.split(hint)
    assert argv[:2] == ["semiclust", "train"] and "data.options={num_classes: 4, size: 8, channels: 1, train_per_class: " \
        "24, test_per_class: 8}" in argv and str(tmp_path / "run a") in argv


# ---------------------------------------------------------------- 12. stale temporary files
def test_stale_temporary_checkpoint_files_are_removed_at_start_and_resume(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {"schedule.epochs": 2})
    out = tmp_path / "run"
    assert run(capsys, "train", recipe, "--out", out, "--set", "schedule.epochs=1")[0] == 0
    stale = [out / "checkpoints" / ".step_000000006.pt.x1y2z3.tmp", out / ".recipe.yaml.a1b2c3.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    (out / "checkpoints" / "final.pt").unlink()
    assert run(capsys, "train", recipe, "--out", out, "--resume", "--set", "schedule.epochs=1")[0] == 0
    assert not any(p.exists() for p in stale)


# ---------------------------------------------------------------- 13. a failed start leaves no run behind
def test_a_start_that_failed_before_training_does_not_block_its_folder(tmp_path, capsys):
    image_tree(tmp_path / "data" / "train", ["ant", "bee"], per_class=4)
    recipe = write_recipe(tmp_path, {"data.dataset": "imagefolder", "data.options": {"root": str(tmp_path / "data"),
                                     "eval_dir": None}, "data.labels": {"per_class": 2},
                                     "data.batch": {"unlabeled": 4, "labeled": 4}, "schedule.epochs": 1})
    (tmp_path / "data" / "train" / "cow").mkdir()  # an empty class: the start fails before training
    code, _, err = run(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 2 and "empty class" in err
    (tmp_path / "data" / "train" / "cow").rmdir()  # fixed
    code, _, err = run(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 0, err
    (tmp_path / "again").mkdir()  # a folder holding only a recipe.yaml is the user's (issue 22, item 1): refused
    (tmp_path / "again" / "recipe.yaml").write_text(write_recipe(tmp_path, name="other.yaml").read_text())
    before = (tmp_path / "again" / "recipe.yaml").read_text()
    code, _, err = run(capsys, "train", recipe, "--out", tmp_path / "again", "--resume")
    assert code == 2 and "not a semiclust run directory" in err and (tmp_path / "again" / "recipe.yaml").read_text() == before


# ---------------------------------------------------------------- 14. cross-field errors
def test_a_cross_field_recipe_error_names_the_keys_and_never_dumps_the_recipe(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {"schedule": {"epochs": 2, "warmup_epochs": 5}})
    code, _, err = run(capsys, "train", recipe, "--dry-run")
    assert code == 2 and err.index("schedule.warmup_epochs") < 120 and "'dataset'" not in err and len(err) < 400


# ---------------------------------------------------------------- 15. smaller messages
def test_a_folder_given_as_the_recipe_is_called_a_folder(tmp_path, capsys):
    code, _, err = run(capsys, "train", tmp_path, "--dry-run")
    assert code == 2 and "is a folder" in err and "does not exist" not in err


def test_eval_and_predict_say_which_command_a_file_belongs_to(trained_run, tmp_path, capsys):
    export = tmp_path / "m.safetensors"
    run(capsys, "export", "-c", trained_run.checkpoint, "--out", export, "--content", "classifier")
    code, _, err = run(capsys, "eval", "-c", export)
    assert code == 2 and "semiclust predict --model" in err and "export" in err
    code, _, err = run(capsys, "predict", tmp_path, "--model", trained_run.checkpoint)
    assert code == 2 and "training checkpoint" in err and "semiclust export" in err and "export it again" not in err


def test_a_symlink_loop_is_called_a_loop(tmp_path):
    from semiclust.data.decode import UnreadableImage, decode_rgb

    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(UnreadableImage, match="symbolic link"):
        decode_rgb(loop)


def test_the_start_line_and_the_dry_run_agree_on_lr_scaling(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {"schedule.epochs": 1})
    code, out, _ = run(capsys, "train", recipe, "--out", tmp_path / "run", "--set", "runtime.progress=plain")
    assert code == 0 and "lr 0.05 (not scaled)" in " ".join(out.split())


def test_per_class_errors_name_the_classes_and_their_counts(tmp_path):
    from semiclust.data.subsets import choose_labeled
    from semiclust.errors import SemiclustError
    from semiclust.config.schema import Labels

    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 1)
    split = type("S", (), {"labels": labels, "__len__": lambda self: 8})()
    with pytest.raises(SemiclustError, match=r"'bee' has 2 and 'cow' has 1"):
        choose_labeled(split, Labels(per_class=3), 0, 3, ["ant", "bee", "cow"])


def test_a_moved_dataset_suggests_pointing_the_recipe_at_it(tmp_path):
    from semiclust.data.datasets import build_dataset
    from semiclust.errors import SemiclustError

    for name in ("imagefolder", "fashion_mnist"):
        with pytest.raises(SemiclustError, match=r"--set data.options.root="):
            build_dataset(name, {"root": str(tmp_path / "moved")})


def test_skipped_images_are_summarised_per_log_window(tmp_path, capsys):
    options = labeled_list_dataset(tmp_path / "data", per_class=6, unlabeled_per_class=10, eval_per_class=1)
    for i in range(8):
        corrupt(tmp_path / "data" / "pool" / f"broken{i}.png")
    recipe = write_recipe(tmp_path, {"data.dataset": "labeled_list", "data.options": options,
                                     "data.labels": {"fraction": 1.0}, "data.eval": {"size": 8, "resize": 10},
                                     "data.loader": {"workers": 0}, "schedule.epochs": 3, "runtime.log_every_steps": 4})
    code, out, err = run(capsys, "train", recipe, "--out", tmp_path / "run", "--set", "runtime.progress=plain")
    text = out + err
    assert code == 0 and text.count("warning: skipped") <= 4 and "unreadable image(s)" in text


def test_under_torchrun_only_rank_0_prints_an_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", "1")
    code, out, err = run(capsys, "train", tmp_path / "missing.yaml")
    assert code == 2 and err == "" and out == ""
    monkeypatch.setenv("RANK", "0")
    assert "does not exist" in run(capsys, "train", tmp_path / "missing.yaml")[2]


def test_a_run_name_is_one_path_component(tmp_path, capsys):
    for name in ("..", ".", "a/b"):
        code, _, err = run(capsys, "train", write_recipe(tmp_path, {"name": name}), "--dry-run")
        assert code == 2 and "'name'" in err


@pytest.mark.slow
def test_torchrun_prints_no_warning_of_our_own_ddp_call(tmp_path):
    recipe = write_recipe(tmp_path, {"schedule.epochs": 1, "data.labels": {"per_class": 4},
                                     "data.batch": {"unlabeled": 8, "labeled": 4}})
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                           "semiclust", "train", str(recipe), "--out", str(tmp_path / "run")],
                          env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1) and (tmp_path / "run" / "checkpoints" / "final.pt").exists(), done.stderr[-2000:]
    assert "broadcast_buffers" not in done.stderr and "FutureWarning" not in done.stderr
