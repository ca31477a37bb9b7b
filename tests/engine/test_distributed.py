"""Two CPU processes (gloo) against one: same targets and losses, and exact resume after SIGKILL."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from semiclust.engine.checkpoint import load_checkpoint, periodic_checkpoints
from semiclust.engine.trainer import train
from semiclust.config.loader import resolve as validate
from tests.engine.dist_worker import record_targets
from tests.helpers import TINY_RECIPE

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "engine" / "dist_worker.py"
pytestmark = pytest.mark.slow
EPOCHS = 30  # 180 steps of 6 per epoch: long enough to kill a 2-process run mid-way


def invariant_recipe(unlabeled: int, labeled: int, epochs: int = 2) -> dict:
    """BatchNorm-free network, no mixup (its partner is the local batch reversed), a queue, checkpoints every 2 steps;
    batches are global, so one recipe serves 1 and 2 processes."""
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["backbone"]["kwargs"]["norm"] = "none"
    raw["model"]["head"]["batchnorm"] = False
    raw["method"].update({"mixup": {"enabled": False}, "queue": {"length": 32}})
    raw["data"]["batch"] = {"unlabeled": unlabeled, "labeled": labeled}
    raw["schedule"] = {"epochs": epochs}
    raw["runtime"].update({"log_every_steps": 1})
    raw["checkpoint"] = {"every_epochs": 0, "every_steps": 2, "keep_last": 3}
    return raw


def environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def train_losses(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "train"]


def method_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).method


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(invariant_recipe(16, 8, epochs=EPOCHS)))
    done = subprocess.run(torchrun(str(WORKER), str(recipe), str(folder / "run")), env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def test_one_process_and_two_processes_agree(two_process_run, tmp_path):
    records, restore = record_targets(steps=3)
    try:
        train(validate(invariant_recipe(16, 8, epochs=EPOCHS)), tmp_path / "one")
    finally:
        restore()
    per_rank = torch.load(two_process_run / "run" / "targets_per_rank.pt", weights_only=True)
    for step in range(3):
        crops, rows, classes = records[step].shape
        merged = torch.empty(crops, rows, classes)
        for rank in range(2):
            merged[:, rank::2] = per_rank[rank][step]  # process r's row j is global row 2j + r
        torch.testing.assert_close(merged, records[step], rtol=1e-4, atol=1e-5)
    one, two = train_losses(tmp_path / "one"), train_losses(two_process_run / "run")
    assert len(one) == len(two) == 6 * EPOCHS
    for a, b in zip(one[:6], two[:6]):
        for key in ("loss", "loss_labeled", "loss_unlabeled", "labeled_weight"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    final_one = method_weights(tmp_path / "one" / "checkpoints" / "final.pt")
    final_two = method_weights(two_process_run / "run" / "checkpoints" / "final.pt")
    student = [name for name in final_one if name.startswith("student.")]  # the queue is per process by design
    assert student
    for name in student:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=1e-3, atol=1e-3)


def wait_for_checkpoint(folder: Path, process: subprocess.Popen, minimum_step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = periodic_checkpoints(folder)
        if found and int(found[-1].stem.split("_")[1]) >= minimum_step:
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended before a checkpoint at step {minimum_step}: "
                                 + process.stdout.read()[-2000:])
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared in time")


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(pid: int) -> None:
    for target in [pid, *descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_same_weights(resumed: Path, reference: Path) -> None:
    a, b = method_weights(resumed), method_weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"


def test_sigkill_mid_epoch_then_resume_is_bit_identical_one_process(tmp_path):
    raw = invariant_recipe(16, 8, epochs=40)
    raw["method"]["mixup"] = {"enabled": True}  # exact resume holds with every feature on
    raw["model"]["backbone"]["kwargs"].pop("norm")
    raw["model"]["head"]["batchnorm"] = True
    raw["runtime"].update({"log_every_steps": 5, "threads": 2})  # same thread count in and out of process: same sums
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    recipe = validate(raw)
    train(recipe, tmp_path / "reference")

    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "semiclust", "train", str(recipe_file), "--out", str(run)],
                               env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(run / "checkpoints", process, minimum_step=8)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "checkpoints" / "final.pt").exists()
    for saved in periodic_checkpoints(run / "checkpoints"):  # resume from a mid-epoch one (6 steps per epoch)
        if int(saved.stem.split("_")[1]) % 6 == 0:
            saved.unlink()
    resumed_from = int(periodic_checkpoints(run / "checkpoints")[-1].stem.split("_")[1])
    assert resumed_from % 6 != 0
    summary = train(recipe, run, resume=True)
    assert summary.steps == 240 - resumed_from
    assert_same_weights(run / "checkpoints" / "final.pt", tmp_path / "reference" / "checkpoints" / "final.pt")


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    raw = invariant_recipe(16, 8, epochs=40)
    raw["checkpoint"] = {"every_epochs": 0, "every_steps": 0}
    raw["runtime"]["threads"] = 2
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "semiclust", "train", str(recipe_file), "--out", str(run)],
                               env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "stopped by SIGTERM" in output and "--resume" in output and "Traceback" not in output
    saved = periodic_checkpoints(run / "checkpoints")
    assert len(saved) == 1
    train(validate(raw), run, resume=True)
    train(validate(raw), tmp_path / "reference")
    assert_same_weights(run / "checkpoints" / "final.pt", tmp_path / "reference" / "checkpoints" / "final.pt")


def test_sigkill_then_resume_is_bit_identical_two_processes(two_process_run, tmp_path):
    recipe = two_process_run / "recipe.yaml"
    run = tmp_path / "killed"
    process = subprocess.Popen(torchrun("-m", "semiclust", "train", str(recipe), "--out", str(run)), env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(run / "checkpoints", process, minimum_step=4)
    kill_tree(process.pid)
    process.wait()
    if (run / "checkpoints" / "final.pt").exists():
        pytest.skip("the run finished before it could be killed")
    done = subprocess.run(torchrun("-m", "semiclust", "train", str(recipe), "--out", str(run), "--resume"),
                          env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_weights(run / "checkpoints" / "final.pt", two_process_run / "run" / "checkpoints" / "final.pt")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_agents(recipe: Path, run: Path, *extra: str) -> list[subprocess.Popen]:
    """Two torchrun agents as two nodes of one process each (c10d rendezvous on this machine, gloo), sharing the
    run directory as nodes share a file system."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                              "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                              "--rdzv-id", f"semiclust-test-{port}", "-m", "semiclust", "train", str(recipe), "--out",
                              str(run), *extra], env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
            for rank in (0, 1)]


def finished(agents: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    return [(agent.wait(timeout=timeout), agent.stdout.read()) for agent in agents]


def test_two_nodes_train_what_two_processes_train_and_resume_bit_identically_after_sigterm(two_process_run, tmp_path):
    """Two torchrun agents as two nodes (--nnodes 2, c10d rendezvous) give the weights and losses of the one-node
    2-process run (itself checked against one process above); SIGTERM to one node's agent stops both with a
    checkpoint, and --resume on both nodes ends with the same weights, bit for bit."""
    recipe = two_process_run / "recipe.yaml"
    outcomes = finished(node_agents(recipe, tmp_path / "nodes"))
    assert all(code == 0 for code, _ in outcomes), outcomes[0][1][-3000:] + outcomes[1][1][-3000:]
    assert_same_weights(tmp_path / "nodes" / "checkpoints" / "final.pt",
                        two_process_run / "run" / "checkpoints" / "final.pt")
    for a, b in zip(train_losses(tmp_path / "nodes"), train_losses(two_process_run / "run")):
        assert (a["step"], a["loss"], a["loss_labeled"]) == (b["step"], b["loss"], b["loss_labeled"])

    run = tmp_path / "stopped"
    agents = node_agents(recipe, run)
    wait_for_checkpoint(run / "checkpoints", agents[0], minimum_step=4)
    agents[1].send_signal(signal.SIGTERM)  # the second node only
    outcomes = finished(agents)
    if (run / "checkpoints" / "final.pt").exists():
        pytest.skip("the run finished before the signal arrived")
    # the main process (node 0) reports the stop that node 1's signal asked for, after a checkpoint both agreed on
    assert "stopped by a signal on another process" in outcomes[0][1], outcomes[0][1][-3000:]
    assert all(code != 0 for code, _ in outcomes) and periodic_checkpoints(run / "checkpoints")
    outcomes = finished(node_agents(recipe, run, "--resume"))
    assert all(code == 0 for code, _ in outcomes), outcomes[0][1][-3000:] + outcomes[1][1][-3000:]
    assert_same_weights(run / "checkpoints" / "final.pt", two_process_run / "run" / "checkpoints" / "final.pt")
