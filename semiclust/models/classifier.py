"""An exported classifier (`semiclust export --content classifier`), rebuilt from its safetensors file and
ready to run: the network, its classes, temperature and evaluation transform, all from the metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from semiclust.data.transforms import center_view, luma, normalize_
from semiclust.errors import SemiclustError
from semiclust.models.network import network_with_weights
from semiclust.schema import EvalView, ModelSpec
from semiclust.storage.tensors import FileRole, is_torch_file, looks_like_safetensors, read_safetensors

EXPORT_FORMAT = "semiclust"
MODEL_FILE = FileRole("model file", "give the .safetensors file `semiclust export` wrote",
                      "export it again with `semiclust export`")


def preprocess(image: torch.Tensor, metadata: dict[str, str]) -> torch.Tensor:
    """The evaluation transform an export's metadata describes, for one decoded uint8 3 x H x W (RGB)
    image: the evaluation view (`center_view`), luma for 1-channel models, normalisation; C x size x size."""
    x = center_view(image.unsqueeze(0), EvalView(**json.loads(metadata["eval_view"])))
    if int(metadata["in_chans"]) == 1 and x.shape[1] == 3:
        x = luma(x)
    return normalize_(x, json.loads(metadata["mean"]), json.loads(metadata["std"]))[0]


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


def load_classifier(path: Path | str, device: str | torch.device = "cpu") -> Classifier:
    """The classifier exported by `semiclust export --content classifier`, in eval mode on `device`."""
    path = Path(path)
    if path.is_file() and not looks_like_safetensors(path) and is_torch_file(path):
        raise SemiclustError(
            f"'{path}' is a training checkpoint (a PyTorch file), not an export: export its classifier first with "
            f"`semiclust export -c {path} --content classifier --out model.safetensors`, then use that file.")
    tensors, metadata = read_safetensors(path, MODEL_FILE)
    if metadata.get("format") != EXPORT_FORMAT:
        raise SemiclustError(f"'{path}' was not written by `semiclust export` (no semiclust metadata); a plain "
                             "backbone file loads with timm.create_model(..., pretrained_cfg_overlay=dict(file=...)).")
    if metadata.get("content") != "classifier":
        raise SemiclustError(f"'{path}' holds only a backbone (no head or prototypes, so no classes); export the "
                             "whole classifier with `semiclust export --checkpoint CKPT --content classifier`.")
    spec = ModelSpec.model_validate(json.loads(metadata["model_spec"]))
    network = network_with_weights(spec, int(metadata["in_chans"]), int(metadata["num_classes"]), metadata["prototypes"],
                                   tensors, f"'{path}'", "export it again")
    return Classifier(network.to(device).eval(), metadata)
