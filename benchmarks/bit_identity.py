"""Correctness, not speed: does the code of this checkout train exactly what an earlier commit trained?

    python benchmarks/bit_identity.py [--base COMMIT] [--epochs 5] [--cache DIR] [--cases NAME ...]

A refactor must not change a single bit of what training computes. For each case below this script
trains the same recipe twice, once with the code of `--base` (checked out as a git worktree under
`--cache` and reused on later calls, so the reference runs are made once) and once with this
checkout, each as a fresh `semiclust train` process (or a 2-process `torchrun`), and compares the
two `checkpoints/final.pt` files: every tensor (method weights and buffers, optimiser state, RNG
states, labeled indices) must be `torch.equal`, and every other value equal (recipe keys added since
the base, at their defaults, and fields added to the evaluation result are listed but change nothing that was
trained; so are the keys of another method's
section, which a recipe no longer carries since each method owns its section). It prints one row per
case and exits 1 if any case differs.

Cases: digits_suave, digits_daino and digits_swav at `--epochs` epochs (seed 0, one process, 2
threads), and digits_suave under `torchrun --standalone --nproc_per_node 2` (gloo, 1 thread per
process) at the same global batch as one process: the recipe unchanged for this checkout (its batches are global,
128 + 50, so 64 + 25 per process), `--set data.batch.unlabeled=64 data.batch.labeled=25` for a base from before
batches were global (they were per process then; a base whose schema has `data.batch.per` gets the recipe unchanged). Recipes are compared with their batches said per process. The
default base is the last commit before the layered redesign (docs/architecture.md).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REDESIGN = "ba2516a"
PER_PROCESS_BATCH = ["--set", "data.batch.unlabeled=64", "--set", "data.batch.labeled=25"]  # a base of per-process batches
CASES = {  # recipe, processes, extra arguments for the base, for this checkout
    "digits_suave": ("digits_suave", 1, [], []),
    "digits_daino": ("digits_daino", 1, [], []),
    "digits_swav": ("digits_swav", 1, [], []),
    "digits_suave_2proc": ("digits_suave", 2, PER_PROCESS_BATCH, []),
}
SKIPPED_VALUES = ("semiclust_version",)  # what a release bump may change without changing the training
# Since each method owns its recipe section (issue 26), a method's saved recipe no longer carries the section of a method
# it does not take (Suave's queue, Daino's teacher): such keys, only in a reference from before, are reported, not failed.
MOVED_SECTIONS = {"queue": ("suave", "swav"), "teacher": ("daino", "dino")}


def train(source: Path, recipe: str, processes: int, extra: list[str], epochs: int, out: Path) -> None:
    """One `semiclust train` of `recipe` with the package found in `source` (cwd and PYTHONPATH)."""
    command = ["-m", "semiclust", "train", str(ROOT / "recipes" / f"{recipe}.yaml"), "--out", str(out),
               "--set", f"schedule.epochs={epochs}", "--set", "runtime.progress=none", *extra]
    threads = "2" if processes == 1 else "1"
    if processes == 1:
        command = [sys.executable, *command]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), *command]
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True)
    if not (out / "checkpoints" / "final.pt").is_file():
        raise SystemExit(f"training {recipe} with {source} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Nested dicts and lists as one dict of dotted paths to leaves."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, object] = {}
    for key, child in items:
        out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return out


def per_process_batches(state: dict) -> dict:
    """The checkpoint with its recipe's batches said per process and micro-batch (a recipe saved before batches were
    global has no `per`: it meant that already)."""
    batch = state["recipe"]["data"]["batch"]
    if batch.get("per", "process") == "global":
        shares = state.get("world_size", 1) * state["recipe"]["optim"]["accumulate_steps"]
        batch.update(unlabeled=batch["unlabeled"] // shares, labeled=batch["labeled"] // shares)
    batch["per"] = "process"
    return state


def compare(reference: Path, candidate: Path) -> tuple[int, list[str], list[str]]:
    """The number of tensors compared, every difference between two checkpoints, and the recipe keys this
    checkout added (a new key with its default changes nothing that was trained: reported, not failed) or no longer
    writes (another method's section, prefixed '-')."""
    a = flatten(per_process_batches(torch.load(reference, weights_only=True)))
    b = flatten(per_process_batches(torch.load(candidate, weights_only=True)))
    # a key the recipe or the evaluation result gained since the base, its value a default or a new figure of the same
    # evaluation (eval.num_classes), changes nothing that was trained: reported, not failed
    added = sorted(k for k in b.keys() - a.keys() if k.startswith(("recipe.", "eval.")))
    dropped = sorted(k for k in a.keys() - b.keys() if other_methods_section(k, a.get("recipe.method.name")))
    differences = [f"only in the reference: {k}" for k in sorted(a.keys() - b.keys()) if k not in dropped]
    differences += [f"only in this checkout: {k}" for k in sorted(b.keys() - a.keys()) if k not in added]
    tensors = 0
    for key in sorted(a.keys() & b.keys()):
        left, right = a[key], b[key]
        if isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor):
            tensors += 1
            if left.dtype != right.dtype or left.shape != right.shape or not torch.equal(left, right):
                differences.append(f"tensor {key} differs")
        elif key.split(".")[-1] not in SKIPPED_VALUES and left != right:
            differences.append(f"{key}: {left!r} vs {right!r}")
    return tensors, differences, added + [f"-{k}" for k in dropped]


def other_methods_section(key: str, method: str | None) -> bool:
    """Whether `key` is in a recipe section that the recipe's method does not take (MOVED_SECTIONS)."""
    parts = key.split(".")
    return len(parts) > 3 and parts[:2] == ["recipe", "method"] and method not in MOVED_SECTIONS.get(parts[2], (method,))


def base_has_global_batches(tree: Path) -> bool:
    """Whether the base's recipes give batches over all processes (its schema has `data.batch.per`)."""
    schemas = [tree / "semiclust" / "schema.py", tree / "semiclust" / "config" / "schema.py"]
    return any(path.is_file() and 'per: Literal["global", "process"]' in path.read_text() for path in schemas)


def base_worktree(cache: Path, base: str) -> Path:
    """A checkout of `base` under `cache` (made once)."""
    commit = subprocess.run(["git", "rev-parse", base], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    tree = cache / f"base-{commit[:12]}" / "src"
    if not (tree / "semiclust").is_dir():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BEFORE_REDESIGN, help="the commit whose training is the reference")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "semiclust-bit-identity")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    tree = base_worktree(args.cache, args.base)
    failed = False
    print(f"base {args.base} ({tree}) against this checkout ({ROOT}), {args.epochs} epochs, seed 0")
    print(f"{'case':<22} {'tensors':>8}  result")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.cases:
            recipe, processes, base_extra, extra = CASES[name]
            base_extra = [] if base_has_global_batches(tree) else base_extra
            reference = tree.parent / "runs" / f"{name}-{args.epochs}"
            if not (reference / "checkpoints" / "final.pt").is_file():
                train(tree, recipe, processes, base_extra, args.epochs, reference)
            candidate = Path(scratch) / name
            train(ROOT, recipe, processes, extra, args.epochs, candidate)
            tensors, differences, added = compare(reference / "checkpoints" / "final.pt",
                                                  candidate / "checkpoints" / "final.pt")
            failed |= bool(differences)
            print(f"{name:<22} {tensors:>8}  " + ("identical" if not differences else f"{len(differences)} difference(s)")
                  + (f" (keys added (+) or no longer written (-) since: "
                     f"{', '.join(k.replace('recipe.', '') if k.startswith('-') else '+' + k.removeprefix('recipe.') for k in added)})"
                     if added else ""))
            for line in differences[:10]:
                print(f"{'':<33}{line}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
