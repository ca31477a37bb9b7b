"""Time to accuracy on the embedded digits: Suave, Daino, SwAV + prototype fine-tune, and supervised.

    python benchmarks/time_to_accuracy.py [--seeds 0] [--eval-every 5] [--thresholds 80 90 95]
    python benchmarks/time_to_accuracy.py --seeds 0 1 2          # 3 seeds: about 3 times as long
    python benchmarks/time_to_accuracy.py --set runtime.device=cpu # any recipe override, for every stage

Each method trains its shipped digits recipe (5 labels per class) with the test top-1 evaluated
every --eval-every epochs (`eval.every_epochs`) and at the end; SwAV + fine-tune runs
recipes/digits_swav.yaml and then recipes/digits_swav_finetune.yaml from its final checkpoint, and
its time is that of both stages (its top-1 is that of the fine-tuned classifier; the SwAV stage is
evaluated only once, at its end, by matching clusters to classes, and that figure is printed
apart). Every run uses the recipe's own settings except seed, eval.every_epochs, progress output
and periodic checkpoints (off: only final.pt is written, as every run must).

Times are wall-clock seconds on this machine, measured here around `train()`: they include
set-up (data, model, checkpoint loading), the training steps and writing final.pt, and EXCLUDE
the time spent evaluating (each evaluation is timed and subtracted; the total is shown in its own
column). "time to X%" is the training time at the first evaluation whose top-1 is at least X%, so
its resolution is --eval-every epochs; "never" if no evaluation reached it. The process's CPU
seconds (all threads) are printed too: on a shared machine, wall time grows with other people's
load and CPU time much less. The test split is fixed (360 images), the labeled subset follows the
seed. Runs go to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console

import semiclust.engine.trainer as trainer
from machine import cpu_model  # benchmarks/machine.py (scripts run from their folder)
from semiclust.engine.trainer import train
from semiclust.config.loader import load_recipe

# method label -> stages (recipe name, extra overrides); "{previous}" is the previous stage's final checkpoint
METHODS = {
    "suave": [("digits_suave", [])],
    "daino": [("digits_daino", [])],
    "swav+finetune": [("digits_swav", ["eval.every_epochs=0"]),
                      ("digits_swav_finetune", ["model.init.path={previous}"])],
    "supervised": [("digits_supervised", [])],
}


@dataclass
class Evaluation:
    stage: int
    epoch: int
    top1: float
    train_s: float  # wall seconds since the start, evaluations excluded
    cpu_s: float


@dataclass
class Outcome:
    method: str
    seed: int
    evaluations: list[Evaluation] = field(default_factory=list)
    stage_results: list[float] = field(default_factory=list)  # each stage's final top-1
    train_s: float = 0.0
    eval_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def reached(self, threshold: float) -> float | None:
        """Training seconds at the first evaluation of the final stage with top-1 >= threshold. semiclust's
        top-1 is a float32 mean (324 of 360 right reads 89.9999976), hence the 1e-4 tolerance."""
        last_stage = len(self.stage_results) - 1
        for e in self.evaluations:
            if e.stage == last_stage and e.top1 + 1e-4 >= threshold:
                return e.train_s
        return None


def run_method(method: str, seed: int, eval_every: int, folder: Path, extra_overrides: list[str]) -> Outcome:
    """Train the method's stages in sequence, timing every evaluation from inside the trainer."""
    outcome = Outcome(method, seed)
    records: list[tuple[float, float, float, float, float]] = []  # wall start, wall s, cpu start, cpu s, top-1
    original = trainer.evaluate

    def timed_evaluate(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = original(*args, **kwargs)
        records.append((wall, time.perf_counter() - wall, cpu, time.process_time() - cpu, result.top1))
        return result

    trainer.evaluate = timed_evaluate
    previous = ""
    try:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for stage, (name, extra) in enumerate(METHODS[method]):
            overrides = [f"seed={seed}", "runtime.progress=none", "checkpoint.every_epochs=0",
                         f"eval.every_epochs={eval_every}", *(o.format(previous=previous) for o in extra),
                         *extra_overrides]
            run_dir = folder / f"{method}-{seed}-{stage}"
            first = len(records)
            summary = train(load_recipe(name, overrides), run_dir, Console(quiet=True))
            previous = str(summary.checkpoint)
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
            epochs = [r["epoch"] for r in rows if r["type"] == "eval"]
            for epoch, (wall, _, cpu, _, top1) in zip(epochs, records[first:]):
                eval_wall = sum(r[1] for r in records if r[0] < wall)
                eval_cpu = sum(r[3] for r in records if r[0] < wall)
                outcome.evaluations.append(Evaluation(stage, epoch, top1, wall - start_wall - eval_wall,
                                                      cpu - start_cpu - eval_cpu))
            outcome.stage_results.append(summary.result.top1)
        outcome.wall_s = time.perf_counter() - start_wall
        outcome.eval_s = sum(r[1] for r in records)
        outcome.train_s = outcome.wall_s - outcome.eval_s
        outcome.cpu_s = time.process_time() - start_cpu - sum(r[3] for r in records)
    finally:
        trainer.evaluate = original
    return outcome


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--eval-every", type=int, default=5, help="epochs between evaluations (eval.every_epochs)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[80.0, 90.0, 95.0], help="top-1 in percent")
    parser.add_argument("--json", type=Path, default=None, help="also write every evaluation (epoch, top-1, seconds) here")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra recipe override for every stage, e.g. runtime.device=cpu (repeatable)")
    args = parser.parse_args()
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, {device}; "
          f"torch {torch.__version__}, Python {platform.python_version()}; load average at start {load[0]:.2f}", flush=True)
    if torch.cuda.is_available():  # CUDA, cuBLAS and cuDNN start-up paid here, not by whichever method runs first
        x = torch.ones(1, 1, 8, 8, device="cuda")
        (torch.nn.functional.conv2d(x, x[..., :3, :3]).sum() + (x[0, 0] @ x[0, 0]).sum()).item()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            for seed in args.seeds:
                outcome = run_method(method, seed, args.eval_every, Path(folder), args.overrides)
                outcomes.append(outcome)
                extra = (f" (SwAV stage: {outcome.stage_results[0]:.2f}% with clusters matched to classes)"
                         if len(outcome.stage_results) > 1 else "")
                print(f"{method} seed {seed}: final top-1 {outcome.stage_results[-1]:.2f}%{extra}; "
                      f"{outcome.train_s:.0f} s training + {outcome.eval_s:.1f} s evaluating; "
                      f"top-1 per evaluation (epoch: %): "
                      + ", ".join(f"{e.epoch}: {e.top1:.1f}" for e in outcome.evaluations
                                  if e.stage == len(outcome.stage_results) - 1), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    thresholds = "".join(f" time to {t:g}% |" for t in args.thresholds)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; evaluations every {args.eval_every} epochs; times exclude "
          "evaluation (its total is the 'eval s' column)\n")
    print(f"| method | seed | final top-1 | best top-1 |{thresholds} training s | eval s | CPU s (training) |")
    print("|---|---|---|---|" + "---|" * len(args.thresholds) + "---|---|---|")
    for o in outcomes:
        best = max(e.top1 for e in o.evaluations if e.stage == len(o.stage_results) - 1)
        times = "".join(f" {seconds(o.reached(t))} |" for t in args.thresholds)
        print(f"| {o.method} | {o.seed} | {o.stage_results[-1]:.2f} | {best:.2f} |{times} {o.train_s:.1f} | "
              f"{o.eval_s:.1f} | {o.cpu_s:.0f} |")
    if len(args.seeds) > 1:
        print(f"\nover seeds {', '.join(map(str, args.seeds))} (time to X%: median over the seeds that reached it)\n")
        print(f"| method | final top-1 mean | final top-1 min |{thresholds} training s (median) |")
        print("|---|---|---|" + "---|" * len(args.thresholds) + "---|")
        for method in args.methods:
            mine = [o for o in outcomes if o.method == method]
            finals = [o.stage_results[-1] for o in mine]
            cells = ""
            for t in args.thresholds:
                hits = [o.reached(t) for o in mine if o.reached(t) is not None]
                cells += f" {seconds(statistics.median(hits)) if hits else 'never'} ({len(hits)}/{len(mine)}) |"
            print(f"| {method} | {statistics.mean(finals):.2f} | {min(finals):.2f} |{cells} "
                  f"{statistics.median(o.train_s for o in mine):.0f} |")


if __name__ == "__main__":
    main()
