"""Run under torchrun by tests/engine/test_distributed.py: trains a recipe and saves the Sinkhorn
targets of the first steps, gathered from every process, next to the run.

    torchrun --standalone --nproc_per_node 2 tests/engine/dist_worker.py RECIPE.yaml OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def record_targets(steps: int):
    """Patch Suave.targets so the first `steps` steps' targets are kept (crops x rows x K per step).

    Returns the records and a function that removes the patch."""
    from semiclust.methods.suave import Suave

    records: dict[int, torch.Tensor] = {}
    original = Suave.targets

    def recording(self, embeddings, scores, crops, step):
        targets = original(self, embeddings, scores, crops, step)
        if step < steps:
            records[step] = torch.stack(targets).detach().cpu()  # crops x rows x K
        return targets

    Suave.targets = recording

    def restore() -> None:
        Suave.targets = original

    return records, restore


def main() -> None:
    from rich.console import Console

    from semiclust.engine import dist
    from semiclust.engine.trainer import train
    from semiclust.config.loader import load_recipe

    recipe_path, out = sys.argv[1], Path(sys.argv[2])
    records, _ = record_targets(steps=3)
    train(load_recipe(recipe_path), out, Console(quiet=True))
    gathered = dist.gather_objects(records)
    if dist.is_main():
        torch.save(gathered, out / "targets_per_rank.pt")
    dist.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
