"""Activation memory and step time with and without gradient checkpointing (`model.grad_checkpointing`).

    python benchmarks/grad_checkpointing.py [--images 2] [--locals 8] [--repeats 3] [--threads N]

For the release's two backbones, ViT-S/16 (`vit_small_patch16_224`, dynamic_img_size, Daino's
recipe `daino_vits_in1k_1pct`) and ResNet-50 (Suave's `suave_r50_in1k_1pct`), each with its recipe's
head and prototypes, on the release's crops (2 x 224 px + --locals x 96 px unlabeled crops and the
224-px labeled view with its mixup copy, for --images images of each stream), on the CPU in fp32:

- kept: the bytes autograd keeps for backward during one training forward, counted with saved-tensor
  hooks (the dry run's estimate, `semiclust.engine.dry_run.saved_bytes`), per image;
- step: forward + backward of the network on those crops (median of --repeats after one warm-up,
  the two settings alternating);

without and with checkpointing, and their ratios. Nothing is downloaded (random weights).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from semiclust.engine.dry_run import probe_shapes, saved_bytes
from semiclust.models.network import Network
from semiclust.config.loader import load_recipe, resolve

try:
    from benchmarks.machine import cpu_model
except ImportError:  # run as a script from benchmarks/
    from machine import cpu_model

MODELS = {"ViT-S/16": "daino_vits_in1k_1pct", "ResNet-50": "suave_r50_in1k_1pct"}


def release_recipe(name: str, locals_: int, checkpointing: bool):
    """The shipped recipe with --locals local crops, no init file, and checkpointing on or off."""
    raw = load_recipe(name, ["model.init=null", f"model.grad_checkpointing={str(checkpointing).lower()}"]
                      ).model_dump(mode="json")
    raw["data"]["unlabeled"]["crops"][-1]["count"] = locals_
    return resolve(raw, f"{name} for the benchmark")


def step_seconds(network: Network, crops: list[torch.Tensor]) -> float:
    """Seconds of one forward + backward of `network` on `crops`."""
    network.zero_grad(set_to_none=True)
    start = time.perf_counter()
    embeddings, scores = network(crops)
    (scores.logsumexp(dim=1).mean() + embeddings.square().mean()).backward()
    return time.perf_counter() - start


def measure(name: str, recipe_name: str, args) -> dict:
    """Kept bytes per image and step seconds without and with checkpointing, on the same weights and crops; the
    timed steps alternate between the two (after one warm-up each), so a busy machine slows both alike."""
    networks, recipe = {}, None
    for key, checkpointing in (("without", False), ("with", True)):
        recipe = release_recipe(recipe_name, args.locals, checkpointing)
        torch.manual_seed(0)
        networks[key] = Network(recipe.model, 3, 1000, "unit").train()
    networks["with"].load_state_dict(networks["without"].state_dict())
    generator = torch.Generator().manual_seed(1)
    crops = [torch.randn(shape, generator=generator) for shape in probe_shapes(recipe, 3, args.images)]
    row = {"model": name, "crops": " + ".join(f"{c.shape[0]}x{c.shape[-1]}" for c in crops)}
    times: dict[str, list[float]] = {key: [] for key in networks}
    for repeat in range(args.repeats + 1):
        for key, network in networks.items():
            seconds = step_seconds(network, crops)
            times[key] += [seconds] if repeat else []
    for key, network in networks.items():
        row[f"kept_{key}"] = saved_bytes(network, crops) / args.images
        row[f"step_{key}"] = statistics.median(times[key])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="Gradient checkpointing: activation memory and step time.")
    parser.add_argument("--images", type=int, default=2, help="images per stream (unlabeled and labeled)")
    parser.add_argument("--locals", type=int, default=8, help="96-px local crops per unlabeled image (release: 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU {cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}, Python "
          f"{platform.python_version()}, fp32; {args.images} image(s) per stream, 2 x 224 + {args.locals} x 96 px "
          f"unlabeled crops + the 224-px labeled view and its mixup copy; median of {args.repeats}; 1-minute load "
          f"average at the start {os.getloadavg()[0]:.2f}")
    print("| model | crops (rows x px) | kept MiB/image without | with | ratio | step s without | with | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, recipe_name in MODELS.items():
        r = measure(name, recipe_name, args)
        print(f"| {r['model']} | {r['crops']} | {r['kept_without'] / 2**20:.1f} | {r['kept_with'] / 2**20:.1f} | "
              f"{r['kept_with'] / r['kept_without']:.3f} | {r['step_without']:.2f} | {r['step_with']:.2f} | "
              f"{r['step_with'] / r['step_without']:.2f} |", flush=True)
    print(f"1-minute load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
