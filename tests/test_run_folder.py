"""Issue 22, the run directory and the process's lifetime: semiclust never touches files it did not write, an
--overwrite checks the whole new start before removing anything, a signal at any moment leaves a checkpoint to
resume from, and damaged run files are named in one paragraph. Each test failed on the code before the fix."""
from __future__ import annotations

import copy
import errno
import json
import os
import shlex
import signal
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from semiclust.cli import main
from semiclust.engine import trainer as trainer_module
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.errors import SemiclustError
from tests.helpers import TINY_RECIPE


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(map(str, argv)))
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, " ".join(captured.err.split())


def write_recipe(folder: Path, name: str = "tiny.yaml", **changes) -> Path:
    raw = copy.deepcopy(TINY_RECIPE)
    for key, value in changes.items():
        node = raw
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def recipe_of(**changes):
    """The tiny recipe, validated, with `section__key=value` changes."""
    from semiclust.config.loader import apply_overrides, resolve

    overrides = [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in changes.items()]
    return resolve(apply_overrides(copy.deepcopy(TINY_RECIPE), overrides), "test recipe")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1, 4, 5: what a run directory may hold
def test_a_users_own_recipe_yaml_in_out_is_never_overwritten(tmp_path, capsys):
    """Item 1: a folder holding a recipe.yaml of the user's and no checkpoint was taken for a failed start."""
    out = tmp_path / "p3"
    out.mkdir()
    (out / "recipe.yaml").write_text("name: mine\nseed: 7\n")
    code, _, err = run(capsys, "train", write_recipe(tmp_path), "--out", out)
    assert code == 2 and "is not empty and is not a semiclust run directory" in err and "'recipe.yaml'" in err
    assert "Traceback" not in err
    assert snapshot(out) == {"recipe.yaml": b"name: mine\nseed: 7\n"}  # not even a lock file was written there


@pytest.mark.parametrize("how", ["folder", "symlink", "empty string"])
def test_out_refuses_a_folder_of_other_files(tmp_path, capsys, how, monkeypatch):
    """Item 5: any non-empty folder, a symbolic link to one, or '' (the current folder)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "data").mkdir()
    out = {"folder": mine, "symlink": tmp_path / "link", "empty string": ""}[how]
    if how == "symlink":
        out.symlink_to(mine)
    monkeypatch.chdir(mine)
    code, _, err = run(capsys, "train", write_recipe(tmp_path), "--out", out)
    assert code == 2 and "Traceback" not in err, err
    assert ("--out is empty" in err) if how == "empty string" else ("not a semiclust run directory" in err)
    if how == "symlink":
        assert f"a symbolic link to '{mine}'" in err
    assert snapshot(mine) == {"notes.txt": b"mine"}


def test_an_empty_folder_and_a_new_one_are_run_directories(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        code, stdout, err = run(capsys, "train", write_recipe(tmp_path), "--out", out,
                                "--set", "schedule.epochs=1", "--set", "checkpoint.every_epochs=0")
        assert code == 0, err
        assert (out / ".semiclust-run").is_file() and (out / "checkpoints" / "final.pt").is_file()


def test_overwrite_removes_only_the_files_semiclust_wrote(tmp_path, capsys):
    """Item 4: --overwrite emptied all of checkpoints/, a file of the user's included."""
    out = tmp_path / "o"
    recipe = write_recipe(tmp_path, schedule__epochs=1)
    assert run(capsys, "train", recipe, "--out", out)[0] == 0
    (out / "checkpoints" / "my_pretrained.pt").write_text("w")
    (out / "my_notes.md").write_text("notes")  # a file added to a run directory later is the user's too
    code, stdout, err = run(capsys, "train", recipe, "--out", out, "--overwrite", "--set", "seed=3",
                            "--set", "runtime.progress=plain")
    assert code == 0, err
    assert (out / "checkpoints" / "my_pretrained.pt").read_text() == "w" and (out / "my_notes.md").read_text() == "notes"
    assert "kept 'checkpoints/my_pretrained.pt'" in " ".join(stdout.split())
    assert load_checkpoint(out / "checkpoints" / "final.pt").recipe["seed"] == 3


def test_a_run_written_before_the_marker_is_adopted(tmp_path, capsys):
    """Runs of earlier versions have no .semiclust-run: recognised by their own files, they still resume."""
    out = tmp_path / "old"
    recipe = write_recipe(tmp_path, schedule__epochs=2)
    assert run(capsys, "train", recipe, "--out", out)[0] == 0
    (out / ".semiclust-run").unlink()
    (out / "checkpoints" / "final.pt").unlink()
    code, stdout, err = run(capsys, "train", recipe, "--out", out, "--resume", "--set", "runtime.progress=plain")
    assert code == 0, err
    assert "written by an earlier version of semiclust" in stdout and (out / ".semiclust-run").is_file()


# ---------------------------------------------------------------- 2: --overwrite checks the new start first
def test_overwrite_with_a_start_that_fails_loses_nothing(tmp_path, capsys):
    """Item 2: the new run's data is checked (here: 150 labels per class of 24) before the finished run is removed."""
    out = tmp_path / "keep"
    recipe = write_recipe(tmp_path, schedule__epochs=1)
    assert run(capsys, "train", recipe, "--out", out)[0] == 0
    before = snapshot(out)
    code, _, err = run(capsys, "train", recipe, "--out", out, "--overwrite", "--set", "data.labels.per_class=150")
    assert code == 2 and "per_class is 150" in err and "Traceback" not in err
    assert snapshot(out) == before  # the finished run, its checkpoint, subset and metrics, untouched
    load_checkpoint(out / "checkpoints" / "final.pt")


# ---------------------------------------------------------------- 3: a signal at any moment
def raise_signal_during(monkeypatch, owner, name: str, when=lambda *a, **k: True, number=signal.SIGTERM) -> dict:
    """Deliver `number` to this process in the middle of `owner.name` (the first call for which `when` holds), as a
    Slurm time limit or a Ctrl-C would; the real handler decides what happens."""
    real, sent = getattr(owner, name), {"n": 0}

    def wrapped(*args, **kwargs):
        if not sent["n"] and when(*args, **kwargs):
            sent["n"] += 1
            signal.raise_signal(number)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return sent


def same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first.step == second.step
    for key, value in first.method.items():
        assert torch.equal(value, second.method[key]), key


def resumed_to_the_end(recipe, out: Path, reference: Path, message: str) -> None:
    """The printed command's --resume finishes the run exactly as the uninterrupted one (bit-identical weights)."""
    assert "Continue with: " in message or "Start it again with: " in message, message
    assert not (out / ".lock").exists()  # the lock was released
    trainer_module.train(recipe, out, resume=True)
    same_weights(out / "checkpoints" / "final.pt", reference)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run the interrupted ones must end identical to (3 epochs of 6 steps, a checkpoint each)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    trainer_module.train(recipe_of(schedule__epochs=3), out)
    return out / "checkpoints" / "final.pt"


def test_sigterm_during_the_final_evaluation_leaves_the_last_step_to_resume(tmp_path, monkeypatch, uninterrupted):
    """Item 3: a Slurm limit 0.3 s after the last step killed the run with no checkpoint and a stale lock."""
    recipe, out = recipe_of(schedule__epochs=3), tmp_path / "run"
    sent = raise_signal_during(monkeypatch, trainer_module, "evaluate_run", lambda run, step, reporter: step == 18)
    with pytest.raises(SemiclustError) as info:
        trainer_module.train(recipe, out)
    assert sent["n"] == 1 and info.value.exit_code == 143
    message = str(info.value)
    assert "stopped by SIGTERM outside a training step" in message and "step_000000018.pt" in message
    assert load_checkpoint(out / "checkpoints" / "step_000000018.pt").step == 18
    monkeypatch.undo()
    resumed_to_the_end(recipe, out, uninterrupted, message)
    assert not (out / "checkpoints" / "step_000000018.pt").exists()  # final.pt holds that step now


def test_sigint_during_the_final_checkpoint_write_loses_nothing(tmp_path, monkeypatch, uninterrupted):
    recipe, out = recipe_of(schedule__epochs=3), tmp_path / "run"
    raise_signal_during(monkeypatch, trainer_module, "save_checkpoint", lambda state, path: path.name == "final.pt",
                        number=signal.SIGINT)
    with pytest.raises(SemiclustError) as info:
        trainer_module.train(recipe, out)
    assert info.value.exit_code == 130 and not list(out.rglob("*.tmp")) and not (out / "checkpoints" / "final.pt").exists()
    monkeypatch.undo()
    resumed_to_the_end(recipe, out, uninterrupted, str(info.value))


def test_sigterm_during_a_periodic_checkpoint_stops_after_the_next_step(tmp_path, monkeypatch, uninterrupted):
    recipe, out = recipe_of(schedule__epochs=3), tmp_path / "run"
    raise_signal_during(monkeypatch, trainer_module, "save_periodic")
    with pytest.raises(SemiclustError, match="stopped by SIGTERM after step 7") as info:
        trainer_module.train(recipe, out)
    assert load_checkpoint(out / "checkpoints" / "step_000000007.pt").step == 7
    monkeypatch.undo()
    resumed_to_the_end(recipe, out, uninterrupted, str(info.value))


def test_sigterm_while_the_run_is_built_leaves_nothing_to_lose(tmp_path, monkeypatch):
    recipe, out = recipe_of(schedule__epochs=1), tmp_path / "run"
    raise_signal_during(monkeypatch, trainer_module, "build_run")
    with pytest.raises(SemiclustError) as info:
        trainer_module.train(recipe, out)
    assert "no step was trained yet" in str(info.value) and "Start it again with" in str(info.value)
    assert not (out / ".lock").exists() and info.value.exit_code == 143


def test_sigterm_during_a_budgets_calibration_writes_the_first_step(tmp_path, monkeypatch):
    """Item 3: the first ~20 s of a budgeted run (calibration) had no handler."""
    from semiclust.engine import budget as budget_module

    recipe, out = recipe_of(schedule__epochs=None, schedule__budget="12s", eval__every_epochs=0), tmp_path / "run"
    raise_signal_during(monkeypatch, budget_module, "train_step", lambda run, step: step == 4)
    with pytest.raises(SemiclustError, match="during the budget's calibration after step 0"):
        trainer_module.train(recipe, out)
    state = load_checkpoint(out / "checkpoints" / "step_000000000.pt")
    assert state.step == 0 and not (out / "budget.json").exists() and not (out / ".lock").exists()
    monkeypatch.undo()
    summary = trainer_module.train(recipe, out, resume=True)  # calibrates again, then trains to its end
    assert summary.steps > 0 and (out / "checkpoints" / "final.pt").is_file()


def test_sigterm_during_export_leaves_no_file_behind(tmp_path, capsys, monkeypatch, tinyconv_run):
    """`semiclust export`: the file being written is removed and the checkpoint is untouched."""
    from semiclust.storage import atomic

    before = tinyconv_run.checkpoint.read_bytes()
    raise_signal_during(monkeypatch, atomic.os, "fsync")
    code, _, err = run(capsys, "export", "-c", tinyconv_run.checkpoint, "--out", tmp_path / "m.safetensors")
    assert code == 143 and "stopped: by SIGTERM" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == [] and tinyconv_run.checkpoint.read_bytes() == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI put the handler back


# ---------------------------------------------------------------- 7, 14, 15: damaged run files
def stopped_run(tmp_path, epochs: int = 3) -> tuple:
    """A run killed after its last periodic checkpoint (final.pt removed, as if SIGKILLed before it)."""
    recipe, out = write_recipe(tmp_path, schedule__epochs=epochs), tmp_path / "run"
    trainer_module.train(recipe_of(schedule__epochs=epochs), out)
    (out / "checkpoints" / "final.pt").unlink()
    return recipe, out


def test_resume_drops_a_cut_last_line_and_the_records_it_repeats(tmp_path, capsys):
    """Item 7: --resume appended to a metrics.jsonl ending in half a record, gluing two records."""
    recipe, out = stopped_run(tmp_path)
    with open(out / "metrics.jsonl", "a") as file:
        file.write('{"type": "train", "step": 19, "lo')
    code, stdout, err = run(capsys, "train", recipe, "--out", out, "--resume", "--set", "runtime.progress=plain")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["type"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) and ("train", 18) in keys and ("eval", 18) in keys
    assert "a last line cut by a killed write" in " ".join(stdout.split())


def edit_checkpoint(path: Path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def test_resume_passes_over_a_checkpoint_of_the_wrong_shape(tmp_path, capsys):
    """Item 14: a wrong-shaped tensor in the newest checkpoint was a size-mismatch traceback; item 19: the
    checkpoints passed over were a raw UserWarning with a source path."""
    recipe, out = stopped_run(tmp_path)
    key = "student.prototypes.weight"
    edit_checkpoint(out / "checkpoints" / "step_000000012.pt",
                    lambda state: state["method"].__setitem__(key, torch.zeros(3, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, stdout, err = run(capsys, "train", recipe, "--out", out, "--resume", "--set", "runtime.progress=plain")
    assert code == 0, err
    said = " ".join(stdout.split())
    assert f"passed over checkpoint '{out / 'checkpoints' / 'step_000000012.pt'}': tensor '{key}' has shape (3, 3)" in said
    assert "resuming at step 6" in said and load_checkpoint(out / "checkpoints" / "final.pt").step == 18



@pytest.mark.parametrize("per_rank", [[], [None], "damaged"])
def test_resume_passes_over_a_checkpoint_with_no_state_for_this_process(tmp_path, capsys, per_rank):
    """A newest checkpoint whose per-process states are missing or unreadable was accepted and then failed half-way
    through loading (AttributeError on None): it is passed over, with the reason, for the previous one."""
    recipe, out = stopped_run(tmp_path)
    edit_checkpoint(out / "checkpoints" / "step_000000012.pt", lambda state: state.__setitem__("per_rank", per_rank))
    code, stdout, err = run(capsys, "train", recipe, "--out", out, "--resume", "--set", "runtime.progress=plain")
    assert code == 0, err
    said = " ".join(stdout.split())
    assert (f"passed over checkpoint '{out / 'checkpoints' / 'step_000000012.pt'}': it holds no state for process 0 "
            "of 1") in said
    assert "resuming at step 6" in said and load_checkpoint(out / "checkpoints" / "final.pt").step == 18

def test_a_damaged_recipe_yaml_is_named_and_resume_uses_the_checkpoints_copy(tmp_path, capsys):
    """Item 15: an invalid recipe.yaml in a run crashed `train` and `--resume`."""
    recipe, out = stopped_run(tmp_path)
    (out / "recipe.yaml").write_text("name: [unclosed\n")
    code, _, err = run(capsys, "train", recipe, "--out", out)
    assert code == 2 and "already holds a run. Pass --resume" in err and "Traceback" not in err
    code, stdout, err = run(capsys, "train", recipe, "--out", out, "--resume", "--set", "runtime.progress=plain")
    assert code == 0, err
    assert "recipe.yaml' is damaged (ParserError" in " ".join(stdout.split())
    assert yaml.safe_load((out / "recipe.yaml").read_text())["name"] == "tiny"


# ---------------------------------------------------------------- 12: full disks before the first step
def test_a_full_disk_while_taking_the_lock_is_one_paragraph_and_leaves_no_lock(tmp_path, capsys, monkeypatch):
    from semiclust.storage import lock

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock.os, "pwrite", full)
    code, _, err = run(capsys, "train", write_recipe(tmp_path), "--out", tmp_path / "run")
    assert code == 1 and "no space left on the device" in err and ".lock" in err and "Traceback" not in err
    assert not (tmp_path / "run" / ".lock").exists()


def test_too_little_free_space_for_the_checkpoints_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """Item 12: a nearly full disk trained to the end and then lost everything at final.pt."""
    from semiclust.engine import disk

    out = tmp_path / "run"
    recipe = write_recipe(tmp_path, schedule__epochs=1)
    assert run(capsys, "train", recipe, "--out", out)[0] == 0
    before = snapshot(out)
    real = disk.shutil.disk_usage
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: real(p)._replace(free=1024 * 1024))
    code, stdout, err = run(capsys, "train", recipe, "--out", out, "--overwrite")
    assert code == 1 and "not enough free space for this run's checkpoints" in err and "keeps up to 4 at once" in err
    assert "nothing was trained or removed" in err and "step 1" not in stdout
    assert snapshot(out) == before


# ---------------------------------------------------------------- 16: printed commands
def test_the_resume_command_of_a_torchrun_run_keeps_torchrun(monkeypatch):
    from semiclust.engine.dist import launcher

    assert launcher() == ["semiclust"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert launcher() == ["torchrun", "--standalone", "--nproc_per_node", "4", "-m", "semiclust"]
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("MASTER_ADDR", "node7")
    monkeypatch.setenv("MASTER_PORT", "29500")
    command = shlex.join([*launcher(), "train", "r.yaml", "--out", "runs/a b", "--resume"])
    assert command == ("torchrun --nnodes 4 --rdzv-backend c10d --rdzv-endpoint node7:29500 --nproc_per_node 4 "
                       "-m semiclust train r.yaml --out 'runs/a b' --resume")


# ---------------------------------------------------------------- 3: the whole process group, as Slurm signals it
@pytest.mark.slow
@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_whole_process_group_checkpoints_with_loader_workers(tmp_path, number, code):
    """Slurm's time limit and a terminal's Ctrl-C reach the loader workers too: they must outlive the main
    process's last step, which then writes its checkpoint (a worker that died first was 'killed by signal')."""
    import subprocess
    import sys
    import time

    from tests.data.files import image_tree

    image_tree(tmp_path / "data" / "train", ["ant", "bee", "cow"], per_class=40, size=16)
    recipe = write_recipe(tmp_path, data__dataset="imagefolder", data__options={"root": str(tmp_path / "data"),
                          "eval_dir": None}, data__cache="off", data__loader={"workers": 1},
                          data__batch={"unlabeled": 16, "labeled": 6}, data__unlabeled={"crops": [{"count": 2, "size": 12, "scale": [0.5, 1.0], "flip": 0.0}]},
                          data__labeled={"size": 12, "scale": [0.5, 1.0], "flip": 0.0}, data__eval={"size": 12},
                          schedule__epochs=5000, checkpoint__every_epochs=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("WORLD_SIZE", None)
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "semiclust", "train", str(recipe), "--out", str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1]
    os.killpg(process.pid, number)  # every process of the group: the main one and its loader worker
    _, err = process.communicate(timeout=120)
    said = " ".join(err.split())
    assert process.returncode == code and "Traceback" not in said, said
    step = int(said.split(" after step ")[1].split(";")[0])
    assert load_checkpoint(out / "checkpoints" / f"step_{step:09d}.pt").step == step
    assert not (out / ".lock").exists()


def test_written_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    """Every file semiclust writes goes through a temporary file from mkstemp (mode 0600): recipes, checkpoints and
    exports were unreadable to anyone else on a shared cluster. New files get 0666 less the umask, as open()
    gives; a replaced file keeps its own mode."""
    import stat

    from semiclust.storage.atomic import write_text

    previous = os.umask(0o022)
    try:
        fresh = write_text(tmp_path / "recipe.yaml", "name: a\n")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        os.chmod(fresh, 0o640)
        write_text(fresh, "name: b\n")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640 and fresh.read_text() == "name: b\n"
        os.umask(0o077)
        assert stat.S_IMODE(write_text(tmp_path / "private.txt", "x").stat().st_mode) == 0o600
    finally:
        os.umask(previous)
