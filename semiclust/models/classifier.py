"""An exported classifier, rebuilt from its file and ready to run: the network of a safetensors export
(`semiclust export --content classifier`) or an onnxruntime session of an ONNX export (`--format onnx`), with
its classes, temperature and evaluation transform, all from the file's metadata."""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pydantic
import torch

from semiclust.data.transforms import center_view, luma, normalize_
from semiclust.errors import SemiclustError
from semiclust.extras import require
from semiclust.models.network import MAX_CLASSES, MAX_IN_CHANS, PROTOTYPE_KINDS, mismatch_fix, network_with_weights
from semiclust.config.schema import EvalView, ModelSpec
from semiclust.storage.tensors import (FileRole, is_torch_file, looks_like_safetensors, read_safetensors,
                                       refuse_plain_pickle, require_file, shown)

EXPORT_FORMAT = "semiclust"
EXPORT_FORMAT_VERSION = 1  # the newest export format this semiclust reads (and writes)
MODEL_FILE = FileRole("model file", "give the .safetensors (or .onnx) file `semiclust export` wrote",
                      "export it again with `semiclust export`")
MAX_VIEW_SIDE = 4096  # pixels of the evaluation view's crop and resize: ~200 MB for one float image at most
MAX_CLASS_NAME = 1000  # characters
MAX_HEAD_WIDTH = 65536
MAX_HEAD_LAYERS = 32


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


@dataclass
class MetadataCheck:
    """Reads the values of an export's metadata, each checked against its bound before it is used, so that no
    value of a damaged or hostile file (an evaluation view of 60,000 pixels) decides what is allocated."""

    metadata: dict[str, str]
    path: Path

    def refuse(self, key: str, value: Any, bound: str) -> NoReturn:
        raise SemiclustError(f"model file '{self.path}' has a metadata value semiclust does not accept: {key} is "
                             f"{shown(value)}, {bound}. It is damaged or was edited; export it again with "
                             "`semiclust export` (semiclust reads nothing else from an export's metadata).")

    def parsed(self, key: str) -> Any:
        """The JSON value of `key` (metadata values are strings)."""
        text = self.metadata.get(key)
        if not isinstance(text, str):
            self.refuse(key, text, "where semiclust writes a value (the key is missing)")
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            self.refuse(key, text, "which is not valid JSON")

    def whole(self, key: str, low: int, high: int) -> int:
        value = self.parsed(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.refuse(key, value, f"where semiclust writes a whole number from {low} to {high:,}")
        return value

    def numbers(self, key: str, count: int, positive: bool = False) -> list[float]:
        value = self.parsed(key)
        if not isinstance(value, list):
            self.refuse(key, value, f"where semiclust writes a list of {count} number(s), one per input channel")
        if len(value) != count:
            self.refuse(key, value, f"which has {len(value)} values, expected {count} (in_chans)")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
                   for v in value):
            self.refuse(key, value, "where semiclust writes finite numbers" + (", each above 0" if positive else ""))
        return value

    def model(self, key: str, kind: type[pydantic.BaseModel]) -> Any:
        """A JSON object validated by a recipe section's class: the first problem named by its dotted key."""
        try:
            return kind.model_validate(self.parsed(key))
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            words = first["msg"].rstrip(".")
            self.refuse(".".join([key, *map(str, first["loc"])]), first.get("input"), words[:1].lower() + words[1:])


def check_metadata(metadata: dict[str, str], path: Path, onnx: bool = False) -> None:
    """Every metadata value the loader, `preprocess` and `semiclust predict` use, within bounds: the format
    version, classes, input channels, the evaluation view, mean/std, temperature, and (safetensors) the
    network's description; the first one out of bounds is one paragraph naming the key, its value and the bound."""
    check = MetadataCheck(metadata, path)
    version = check.whole("format_version", 1, 10**6)
    if version > EXPORT_FORMAT_VERSION:
        raise SemiclustError(f"model file '{path}' has format_version {version}: it was written by a newer semiclust "
                             f"(this one reads format {EXPORT_FORMAT_VERSION}); upgrade semiclust to use it.")
    chans = check.whole("in_chans", 1, MAX_IN_CHANS)
    classes = check.parsed("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) and len(c) <= MAX_CLASS_NAME for c in classes):
        check.refuse("classes", classes, f"where semiclust writes a list of class names (each at most {MAX_CLASS_NAME} "
                                         "characters)")
    count = check.whole("num_classes", 1, MAX_CLASSES)
    if count != len(classes):
        check.refuse("num_classes", count, f"but classes names {len(classes):,}")
    view = check.model("eval_view", EvalView)
    for name in ("size", "resize"):
        if (getattr(view, name) or 0) > MAX_VIEW_SIDE:
            check.refuse(f"eval_view.{name}", getattr(view, name), f"above the bound of {MAX_VIEW_SIDE} pixels")
    check.numbers("mean", chans)
    check.numbers("std", chans, positive=True)
    try:
        temperature = float(metadata.get("temperature", ""))
    except ValueError:
        temperature = math.nan
    if not (math.isfinite(temperature) and temperature > 0):
        check.refuse("temperature", metadata.get("temperature"), "where semiclust writes a number above 0")
    if not onnx:
        check_network_description(check)


def check_network_description(check: MetadataCheck) -> None:
    """The prototype kind and the model description (backbone, head) of a safetensors export, within bounds."""
    if check.metadata.get("prototypes") not in PROTOTYPE_KINDS:
        check.refuse("prototypes", check.metadata.get("prototypes"), f"where semiclust writes one of "
                                                                     f"{', '.join(PROTOTYPE_KINDS)}")
    head = check.model("model_spec", ModelSpec).head
    for name, bound in (("hidden", MAX_HEAD_WIDTH), ("out", MAX_HEAD_WIDTH), ("layers", MAX_HEAD_LAYERS)):
        if getattr(head, name) > bound:
            check.refuse(f"model_spec.head.{name}", getattr(head, name), f"above the bound of {bound:,}")


def check_onnx_names(session: Any, metadata: dict[str, str], path: Path) -> None:
    """The graph input and output the metadata names are the graph's own."""
    check = MetadataCheck(metadata, path)
    for key, args in (("onnx_input", session.get_inputs()), ("onnx_output", session.get_outputs())):
        names = [arg.name for arg in args]
        if metadata.get(key) not in names:
            check.refuse(key, metadata.get(key), f"but the graph's {key.split('_')[1]}s are {', '.join(names)[:200]}")


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
    check_metadata(metadata, path, onnx=True)
    check_onnx_names(session, metadata, path)
    return OnnxClassifier(session, metadata)


def load_export(path: Path | str, device: str | torch.device = "cpu") -> ExportedClassifier:
    """The classifier exported by `semiclust export --content classifier` (.safetensors, in eval mode on
    `device`) or by `semiclust export --format onnx` (.onnx, in an onnxruntime session)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_classifier(path, torch.device(device))
    if path.is_file() and not looks_like_safetensors(path):
        refuse_plain_pickle(path, MODEL_FILE)
        if is_torch_file(path):
            export = shlex.join(["semiclust", "export", "-c", str(path), "--content", "classifier", "--out",
                                 "model.safetensors"])
            raise SemiclustError(f"'{path}' is a training checkpoint (a PyTorch file), not an export: export its "
                                 f"classifier first with `{export}`, then use that file.")
    tensors, metadata = read_safetensors(path, MODEL_FILE)
    check_export(metadata, path)
    check_metadata(metadata, path)
    spec = ModelSpec.model_validate(json.loads(metadata["model_spec"]))
    fix = mismatch_fix(metadata.get("semiclust_version"), "export it again with `semiclust export`")
    network = network_with_weights(spec, int(metadata["in_chans"]), int(metadata["num_classes"]), metadata["prototypes"],
                                   tensors, f"model file '{path}'", fix, float(metadata["temperature"]))
    return Classifier(network.to(device).eval(), metadata)
