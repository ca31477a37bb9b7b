"""Correctness, not speed: does training with 2 processes give what 1 process gives at the same global batch?

    python benchmarks/process_agreement.py [--methods suave daino] [--epochs 30] [--target-steps 3]

For each method it trains one tiny recipe four times on the CPU, each in a fresh process:
- 1 process, global batch B (16 unlabeled + 8 labeled), 1 thread: the reference;
- 2 processes under `torchrun --standalone --nproc_per_node 2` (gloo), B/2 per process, 1 thread each;
- 1 process again, global batch B, but 2 threads: the baseline. It is the same computation, only
  summed in another order inside the convolutions and matmuls, so its differences from the
  reference are the floating-point floor that any change of summation order produces;
- 2 processes again with the assignment's cross-process sums switched off (Sinkhorn's all-reduces,
  Daino's center all-reduce; gradients are still averaged by DDP): the control, a deliberately
  broken run that shows what size of difference a missing cross-process sum makes.
It then prints, for each of the last three against the reference, the largest absolute
and relative differences of the per-step losses (total, labeled and unlabeled parts, logged at
every step and averaged over processes), of the unlabeled targets of the first steps (Sinkhorn
for Suave, the centered and sharpened teacher for Daino; process r's row j is global row 2j + r),
and of the final student weights (largest elementwise absolute difference, and the largest
per-tensor relative one, ||w2 - w1|| / ||w1||). 2 processes are correct when their figures are
of the baseline's order and far below the control's.

The recipe is that of tests/engine/test_distributed.py: generated 8 x 8 images, a tinyconv without
BatchNorm (BatchNorm statistics of B/2 rows differ from those of B rows unless SyncBatchNorm is on),
mixup off (its partner is the reversed local batch, by design per process), a Suave queue of 32
rows (the total over processes); Daino uses digits_daino's optimiser (AdamW, lr 0.002) instead of the
test's SGD, under which the DINO head's last bias grows to ~1e4 and the embeddings become nearly
constant, which would hide a missing center all-reduce. The Suave queue is per process by design, so only the student's
weights are compared. Takes under a minute for both methods on 2 cores.

With torch 2.14 and gloo a `torchrun` process now and then aborts while exiting ("terminate called
without an active exception"), after it has written everything; such a run is used, with a note.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "agreement",
    "seed": 0,
    "data": {
        "dataset": "synthetic",
        "options": {"num_classes": 4, "size": 8, "channels": 1, "train_per_class": 24, "test_per_class": 8},
        "labels": {"per_class": 2},
        "unlabeled": {"crops": [{"count": 2, "size": 8, "scale": [0.5, 1.0], "flip": 0.0},
                                {"count": 2, "size": 4, "scale": [0.2, 0.5], "flip": 0.0}]},
        "labeled": {"size": 8, "scale": [0.5, 1.0], "flip": 0.0},
        "eval": {"size": 8},
        "batch": {"unlabeled": 16, "labeled": 8},
    },
    "model": {"backbone": {"name": "tinyconv", "kwargs": {"widths": [8, 16], "norm": "none"}},
              "head": {"hidden": 16, "out": 8, "batchnorm": False}},
    "method": {"name": "suave", "mixup": {"enabled": False}},
    "optim": {"name": "sgd", "lr": 0.05, "lr_reference_batch": None},
    "schedule": {"epochs": 30},
    "runtime": {"device": "cpu", "progress": "none", "log_every_steps": 1},
    "checkpoint": {"every_epochs": 0},
}
LOSS_KEYS = ("loss", "loss_labeled", "loss_unlabeled")
TEARDOWN_ABORT = "terminate called without an active exception"


def recipe_for(method: str, epochs: int, processes: int, threads: int) -> dict:
    raw = copy.deepcopy(TINY)
    raw["name"] = f"agreement-{method}-{processes}p-{threads}t"
    raw["method"]["name"] = method
    if method in ("suave", "swav"):
        raw["method"]["queue"] = {"length": 32}
    if method in ("daino", "dino"):  # digits_daino's optimiser: with SGD at lr 0.05 the DINO head's last bias explodes
        raw["optim"] = {"name": "adamw", "lr": 0.002, "lr_reference_batch": None, "weight_decay": 0.04,
                        "exclude_bias_and_norm": True}
    # batches are global: the same recipe for 1 and 2 processes (each of 2 takes half)
    raw["schedule"]["epochs"] = epochs
    raw["runtime"]["threads"] = threads
    return raw


# ---------------------------------------------------------------- the worker (run once per process)
def worker(recipe_path: str, out: str, target_steps: int, local_assignment: bool) -> None:
    """Train the recipe, keeping the unlabeled targets of the first steps (crops x rows x K per step).

    local_assignment: the control run; Sinkhorn's and the Daino center's all-reduces become no-ops."""
    from rich.console import Console

    from semiclust.assign import sinkhorn, updated_center  # the functions the assigners call
    from semiclust.engine import dist
    from semiclust.engine.trainer import train
    from semiclust.methods import METHODS
    from semiclust.config.loader import load_recipe

    recipe = load_recipe(recipe_path)
    method_class = METHODS.get(recipe.method.name)
    original = method_class.targets
    records: dict[int, torch.Tensor] = {}

    def recording(self, embeddings, scores, crops, step):
        targets = original(self, embeddings, scores, crops, step)
        if step < target_steps:
            records[step] = torch.stack(targets).detach().cpu()
        return targets

    method_class.targets = recording
    if local_assignment:
        def local(tensor: torch.Tensor) -> torch.Tensor:
            return tensor

        plain_sinkhorn, plain_center = sinkhorn.__wrapped__, updated_center.__wrapped__  # under torch.no_grad
        plain_sinkhorn.__defaults__ = plain_sinkhorn.__defaults__[:2] + (local, local) + plain_sinkhorn.__defaults__[4:]
        plain_center.__defaults__ = (local,)
    train(recipe, Path(out), Console(quiet=True))
    gathered = dist.gather_objects(records)
    if dist.is_main():
        torch.save(gathered, Path(out) / "targets_per_rank.pt")
    dist.shutdown()


# ---------------------------------------------------------------- the comparison
def environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run(raw: dict, folder: Path, processes: int, target_steps: int, local_assignment: bool = False) -> tuple[Path, float]:
    recipe = folder / f"{raw['name']}.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = folder / (raw["name"] + ("-local" if local_assignment else ""))
    script = [str(Path(__file__).resolve()), "--worker", str(recipe), str(out), str(target_steps), str(int(local_assignment))]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    start = time.perf_counter()
    done = subprocess.run(launcher + script, env=environment(), capture_output=True, text=True, timeout=1800)
    complete = (out / "targets_per_rank.pt").exists() and (out / "checkpoints" / "final.pt").exists()
    if done.returncode != 0 and complete and TEARDOWN_ABORT in done.stderr:
        # torch 2.14 + gloo: now and then a process aborts while exiting, after every output was written
        print(f"note: {raw['name']} exited {done.returncode} with '{TEARDOWN_ABORT}' after writing all its outputs; "
              "they are used", flush=True)
    elif done.returncode != 0:
        raise SystemExit(f"{raw['name']} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return out, time.perf_counter() - start


def train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["type"] == "train"]


def merged_targets(run_dir: Path) -> dict[int, torch.Tensor]:
    """Targets per step in global row order: process r's row j is global row j * world + r."""
    per_rank = torch.load(run_dir / "targets_per_rank.pt", weights_only=True)
    world, merged = len(per_rank), {}
    for step in per_rank[0]:
        crops, rows, classes = per_rank[0][step].shape
        whole = torch.empty(crops, rows * world, classes)
        for rank in range(world):
            whole[:, rank::world] = per_rank[rank][step]
        merged[step] = whole
    return merged


def student_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from semiclust.engine.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints" / "final.pt").method
    return {k: v.float() for k, v in state.items() if k.startswith("student.")}


def differences(reference: Path, other: Path, first_steps: int) -> dict:
    ref_rows, other_rows = train_rows(reference), train_rows(other)
    assert [r["step"] for r in ref_rows] == [r["step"] for r in other_rows], "the runs logged different steps"

    def loss_diffs(rows_a, rows_b) -> tuple[float, float]:
        absolute = relative = 0.0
        for a, b in zip(rows_a, rows_b):
            for key in LOSS_KEYS:
                if key in a:
                    gap = abs(a[key] - b[key])
                    absolute, relative = max(absolute, gap), max(relative, gap / max(abs(a[key]), 1e-12))
        return absolute, relative

    ref_t, other_t = merged_targets(reference), merged_targets(other)
    t_abs = max(float((other_t[s] - ref_t[s]).abs().max()) for s in ref_t)
    t_rel = max(float(((other_t[s] - ref_t[s]).abs() / ref_t[s].abs().clamp_min(1e-6)).max()) for s in ref_t)
    w_ref, w_other = student_weights(reference), student_weights(other)
    assert w_ref.keys() == w_other.keys()
    w_abs, w_name = max((float((w_other[k] - w_ref[k]).abs().max()), k) for k in w_ref)
    w_rel = max(float((w_other[k] - w_ref[k]).norm() / w_ref[k].norm().clamp_min(1e-12)) for k in w_ref)
    return {"steps": len(ref_rows), "first": loss_diffs(ref_rows[:first_steps], other_rows[:first_steps]),
            "all": loss_diffs(ref_rows, other_rows), "targets": (t_abs, t_rel), "target_steps": len(ref_t),
            "weights": (w_abs, w_rel),
            "largest": f"{w_name} (max |w| {float(w_ref[w_name].abs().max()):.3g})"}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["suave", "daino"])
    parser.add_argument("--epochs", type=int, default=30, help="6 steps per epoch")
    parser.add_argument("--target-steps", type=int, default=3, help="steps whose unlabeled targets are compared")
    parser.add_argument("--first-steps", type=int, default=6, help="loss differences are also shown for these first steps")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; CPU, gloo; global batch 16 unlabeled + 8 labeled; {args.epochs} epochs x 6 steps; "
          "reference: 1 process, 1 thread")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for method in args.methods:
            reference, seconds_ref = run(recipe_for(method, args.epochs, 1, 1), folder, 1, args.target_steps)
            two, seconds_two = run(recipe_for(method, args.epochs, 2, 1), folder, 2, args.target_steps)
            floor, seconds_floor = run(recipe_for(method, args.epochs, 1, 2), folder, 1, args.target_steps)
            broken, seconds_broken = run(recipe_for(method, args.epochs, 2, 1), folder, 2, args.target_steps, True)
            print(f"{method}: 1 process {seconds_ref:.0f} s, 2 processes {seconds_two:.0f} s, 1 process 2 threads "
                  f"{seconds_floor:.0f} s, control {seconds_broken:.0f} s (wall, including start-up)", flush=True)
            for label, other in (("2 processes (gloo)", two), ("baseline: 1 process, 2 threads", floor),
                                 ("control: 2 processes, assignment sums local", broken)):
                results.append((method, label, differences(reference, other, args.first_steps)))
    d = results[0][2]
    print(f"\nlargest |difference| and largest relative difference against the reference; losses of steps 1-"
          f"{args.first_steps} and of all {d['steps']} steps, targets of the first {d['target_steps']} steps, "
          "final student weights (relative = ||diff|| / ||w|| per tensor, the largest)\n")
    print(f"| method | compared run | loss abs (1-{args.first_steps}) | loss rel (1-{args.first_steps}) | loss abs (all) | "
          "loss rel (all) | targets abs | targets rel | weights abs | weights rel |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, label, d in results:
        cells = [*d["first"], *d["all"], *d["targets"], *d["weights"]]
        print(f"| {method} | {label} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    print("\nlargest absolute weight difference in: "
          + "; ".join(f"{method}, {label}: {d['largest']}" for method, label, d in results))


if __name__ == "__main__":
    main()
