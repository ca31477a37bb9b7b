"""Export a trained model to safetensors, and load an exported classifier back in one line.

Two contents. `backbone`: the backbone's tensors under timm's own names, so plain timm loads them:
`timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=PATH),
**json.loads(meta["timm_kwargs"]))`. `classifier`: backbone + projection head + prototypes under
semiclust's Network names, with everything needed to rebuild and run it (`load_classifier`).
Both carry metadata (strings, as safetensors requires): architecture and kwargs, classes, the
evaluation transform, mean/std, temperature, and hashes of the recipe and the labeled subset.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from semiclust import __version__
from semiclust.errors import SemiclustError
from semiclust.recipe import EvalView, ModelSpec

FORMAT = "semiclust"
FORMAT_VERSION = "1"
CONTENTS = ("backbone", "classifier")


def recipe_sha256(recipe: dict) -> str:
    """SHA-256 of the recipe as canonical JSON (sorted keys): the same recipe, the same hash."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def export_metadata(state: dict, content: str) -> dict[str, str]:
    """The metadata of an export of checkpoint `state` (a dict as `semiclust train` writes it)."""
    recipe, info = state["recipe"], state["classifier"]
    model = recipe["model"]
    timm_kwargs = dict(model["backbone"]["kwargs"])
    if info["in_chans"] != 3:
        timm_kwargs["in_chans"] = info["in_chans"]
    view = recipe["data"]["eval"]
    size = view["size"]
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "content": content,
        "architecture": model["backbone"]["name"], "timm_kwargs": json.dumps(timm_kwargs),
        "in_chans": str(info["in_chans"]), "input_size": json.dumps([info["in_chans"], size, size]),
        "eval_view": json.dumps(view), "mean": json.dumps(state["mean"]), "std": json.dumps(state["std"]),
        "num_classes": str(info["num_classes"]), "classes": json.dumps(state["classes"]),
        "temperature": str(recipe["method"]["temperature"]), "prototypes": info["prototypes"],
        "model_spec": json.dumps({**model, "init": None}), "network": info["prefix"],
        "recipe_name": recipe["name"], "recipe_sha256": recipe_sha256(recipe),
        "labeled_sha256": state.get("labeled_sha256") or "", "labeled_list_sha256": state.get("labeled_list_sha256") or "",
        "step": str(state["step"]), "semiclust_version": __version__,
    }
    if "eval" in state:
        metadata["eval"] = json.dumps(state["eval"])
    return metadata


def export_checkpoint(checkpoint: Path, out: Path, content: str = "backbone") -> dict[str, str]:
    """Write the backbone (or the whole classifier) of a semiclust checkpoint to `out` (.safetensors)."""
    from safetensors.torch import save_file

    from semiclust.engine.checkpoint import load_checkpoint
    from semiclust.evaluate import classifier_from_checkpoint

    if content not in CONTENTS:
        raise SemiclustError(f"export content must be one of {', '.join(CONTENTS)}, not '{content}'.")
    if Path(out).suffix != ".safetensors":
        raise SemiclustError(f"--out '{out}' must end in .safetensors (timm recognises the format by the suffix).")
    state = load_checkpoint(Path(checkpoint))
    network, _ = classifier_from_checkpoint(state)
    part = network.backbone if content == "backbone" else network
    tensors = {k: v.detach().contiguous().cpu() for k, v in part.state_dict().items()}
    metadata = export_metadata(state, content)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(out)  # atomic: a reader never sees half a file
    return metadata


def safetensors_content(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file, in one pass (the caller words the errors)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a missing, truncated or foreign file is a clear error."""
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        raise SemiclustError(f"model file '{path}' does not exist; give the .safetensors file `semiclust export` wrote.")
    try:
        tensors, metadata = safetensors_content(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SemiclustError(
            f"'{path}' is not a readable safetensors file ({str(err).splitlines()[0][:160]}): it is truncated, "
            "corrupt or of another format. Export it again with `semiclust export`."
        ) from None
    return tensors, metadata


@dataclass
class Classifier:
    """An exported semiclust classifier, ready to run: `classifier(images)` gives class logits."""

    network: torch.nn.Module
    metadata: dict[str, str]

    @property
    def classes(self) -> list[str]:
        return json.loads(self.metadata["classes"])

    @property
    def temperature(self) -> float:
        return float(self.metadata["temperature"])

    @property
    def view(self) -> EvalView:
        return EvalView(**json.loads(self.metadata["eval_view"]))

    @property
    def in_chans(self) -> int:
        return int(self.metadata["in_chans"])

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """One decoded uint8 3 x H x W (RGB) image -> the normalised evaluation view, C x size x size."""
        return preprocess(image, self.metadata)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (prototype scores / temperature) of preprocessed images, N x C x size x size."""
        device = next(self.network.parameters()).device
        return self.network(images.to(device)).float() / self.temperature


def preprocess(image: torch.Tensor, metadata: dict[str, str]) -> torch.Tensor:
    """The evaluation transform an export's metadata describes: resize, centre crop, (luma), normalise."""
    from semiclust.data.loader import center_crop
    from semiclust.data.transforms import luma

    x = center_crop(image, EvalView(**json.loads(metadata["eval_view"]))).float().div_(255).unsqueeze(0)
    if int(metadata["in_chans"]) == 1 and x.shape[1] == 3:
        x = luma(x)
    mean = torch.tensor(json.loads(metadata["mean"])).view(1, -1, 1, 1)
    std = torch.tensor(json.loads(metadata["std"])).view(1, -1, 1, 1)
    return ((x - mean) / std)[0]


def load_classifier(path: Path | str, device: str | torch.device = "cpu") -> Classifier:
    """The classifier exported by `semiclust export --content classifier`, in eval mode on `device`."""
    from semiclust.models.network import Network

    tensors, metadata = read_safetensors(Path(path))
    if metadata.get("format") != FORMAT:
        raise SemiclustError(f"'{path}' was not written by `semiclust export` (no semiclust metadata); a plain "
                             "backbone file loads with timm.create_model(..., pretrained_cfg_overlay=dict(file=...)).")
    if metadata.get("content") != "classifier":
        raise SemiclustError(f"'{path}' holds only a backbone (no head or prototypes, so no classes); export the "
                             "whole classifier with `semiclust export --checkpoint CKPT --content classifier`.")
    spec = ModelSpec.model_validate(json.loads(metadata["model_spec"]))
    network = Network(spec, int(metadata["in_chans"]), int(metadata["num_classes"]), metadata["prototypes"])
    try:
        network.load_state_dict(tensors)
    except RuntimeError as err:
        raise SemiclustError(f"'{path}' does not match the network its metadata describes "
                             f"({str(err).splitlines()[0][:200]}); export it again.") from None
    return Classifier(network.to(device).eval(), metadata)
