"""An exported classifier, rebuilt from its file and ready to run: the network of a safetensors export
(`semiclust export --content classifier`) or an onnxruntime session of an ONNX export (`--format onnx`), with
its classes, temperature and evaluation transform, all from the file's metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semiclust.data.transforms import center_view, luma, normalize_
from semiclust.errors import SemiclustError
from semiclust.extras import require
from semiclust.models.network import network_with_weights
from semiclust.schema import EvalView, ModelSpec
from semiclust.storage.tensors import FileRole, is_torch_file, looks_like_safetensors, read_safetensors, require_file

EXPORT_FORMAT = "semiclust"
MODEL_FILE = FileRole("model file", "give the .safetensors (or .onnx) file `semiclust export` wrote",
                      "export it again with `semiclust export`")


def preprocess(image: torch.Tensor, metadata: dict[str, str]) -> torch.Tensor:
    """The evaluation transform an export's metadata describes, for one decoded uint8 3 x H x W (RGB)
    image: the evaluation view (`center_view`), luma for 1-channel models, normalisation; C x size x size."""
    x = center_view(image.unsqueeze(0), EvalView(**json.loads(metadata["eval_view"])))
    if int(metadata["in_chans"]) == 1 and x.shape[1] == 3:
        x = luma(x)
    return normalize_(x, json.loads(metadata["mean"]), json.loads(metadata["std"]))[0]


class ExportedClassifier:
    """Either kind of exported classifier: what its metadata says, and `classifier(images)` giving logits."""

    metadata: dict[str, str]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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


@dataclass
class Classifier(ExportedClassifier):
    """An exported semiclust classifier, ready to run: `classifier(images)` gives class logits."""

    network: torch.nn.Module
    metadata: dict[str, str]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (prototype scores / temperature) of preprocessed images, N x C x size x size."""
        device = next(self.network.parameters()).device
        return self.network(images.to(device)).float() / self.temperature


@dataclass
class OnnxClassifier(ExportedClassifier):
    """An ONNX export run by onnxruntime, used like `Classifier`: `classifier(images)` gives class logits."""

    session: Any  # onnxruntime.InferenceSession
    metadata: dict[str, str]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of preprocessed images (N x C x size x size), computed by onnxruntime on the CPU copy."""
        feed = {self.metadata["onnx_input"]: images.detach().float().cpu().contiguous().numpy()}
        return torch.from_numpy(self.session.run([self.metadata["onnx_output"]], feed)[0])


def check_export(metadata: dict[str, str], path: Path | str) -> None:
    """A semiclust export of the whole classifier, or a clear error saying what the file is instead."""
    if metadata.get("format") != EXPORT_FORMAT:
        raise SemiclustError(f"'{path}' was not written by `semiclust export` (no semiclust metadata); a plain "
                             "backbone file loads with timm.create_model(..., pretrained_cfg_overlay=dict(file=...)).")
    if metadata.get("content") != "classifier":
        raise SemiclustError(f"'{path}' holds only a backbone (no head or prototypes, so no classes); export the "
                             "whole classifier with `semiclust export --checkpoint CKPT --content classifier`.")


def load_onnx_classifier(path: Path, device: torch.device) -> OnnxClassifier:
    """An ONNX export in an onnxruntime session (CUDA when asked for and onnxruntime has it, else CPU)."""
    ort = require("onnxruntime", "onnx", "running an ONNX model", "export the classifier to .safetensors instead")
    require_file(path, MODEL_FILE)
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as err:  # onnxruntime's own exception types for truncated or foreign files
        raise SemiclustError(f"model file '{path}' could not be read as ONNX ({type(err).__name__}: "
                             f"{str(err).strip().splitlines()[0][:200]}): it is truncated, corrupt or not an ONNX "
                             "file; export it again with `semiclust export --format onnx`.") from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    check_export(metadata, path)
    return OnnxClassifier(session, metadata)


def load_classifier(path: Path | str, device: str | torch.device = "cpu") -> ExportedClassifier:
    """The classifier exported by `semiclust export --content classifier` (.safetensors, in eval mode on
    `device`) or by `semiclust export --format onnx` (.onnx, in an onnxruntime session)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_classifier(path, torch.device(device))
    if path.is_file() and not looks_like_safetensors(path) and is_torch_file(path):
        raise SemiclustError(
            f"'{path}' is a training checkpoint (a PyTorch file), not an export: export its classifier first with "
            f"`semiclust export -c {path} --content classifier --out model.safetensors`, then use that file.")
    tensors, metadata = read_safetensors(path, MODEL_FILE)
    check_export(metadata, path)
    spec = ModelSpec.model_validate(json.loads(metadata["model_spec"]))
    network = network_with_weights(spec, int(metadata["in_chans"]), int(metadata["num_classes"]), metadata["prototypes"],
                                   tensors, f"'{path}'", "export it again")
    return Classifier(network.to(device).eval(), metadata)
