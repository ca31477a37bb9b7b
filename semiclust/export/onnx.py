"""`semiclust export --format onnx`: the evaluation-mode classifier as one ONNX graph.

The graph maps preprocessed images (`images`, N x C x size x size, float32, any N) to class logits
(`logits`, prototype scores / temperature), i.e. backbone, projection head and prototypes with the
temperature folded in. The preprocessing, classes and hashes of the safetensors export ride along as the
model's metadata (`metadata_props`), so `semiclust predict --model FILE.onnx` and any onnxruntime user
can prepare images the way evaluation did.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from semiclust.engine.checkpoint import classifier_network, load_checkpoint, with_network
from semiclust.errors import SemiclustError
from semiclust.export.safetensors import export_metadata
from semiclust.extras import require
from semiclust.storage.atomic import write_bytes

INPUT, OUTPUT = "images", "logits"
OPSET = 17


class Logits(nn.Module):
    """A network's prototype scores divided by the temperature: the logits `semiclust.load_classifier` gives."""

    def __init__(self, network: nn.Module, temperature: float):
        super().__init__()
        self.network, self.temperature = network, temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).float() / self.temperature


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX graph of `model` traced on `example`, with a dynamic batch axis.

    The TorchScript-based exporter (`dynamo=False`) is used: it needs nothing beyond torch and runs offline,
    while torch 2.14's default torch.export-based exporter also needs the `onnxscript` package. torch calls
    the former deprecated; its warning is not the user's business here. Only the batch axis is dynamic: the
    spatial size is the evaluation view's, so the tracer's warnings that size checks (a ViT's position
    embedding resampling) became constants are expected and silenced too."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET)
    return buffer.getvalue()


def export_onnx(checkpoint: Path, out: Path, network: str | None = None) -> dict[str, str]:
    """Write the evaluated classifier of a semiclust checkpoint (Daino: the teacher) to `out` (.onnx), atomically;
    returns the metadata stored in the file."""
    if Path(out).suffix != ".onnx":
        raise SemiclustError(f"--out '{out}' must end in .onnx with --format onnx.")
    onnx = require("onnx", "onnx", "semiclust export --format onnx")
    chosen = with_network(load_checkpoint(Path(checkpoint)), network)
    network, recipe = classifier_network(chosen)
    if hasattr(network.backbone, "set_grad_checkpointing"):
        network.backbone.set_grad_checkpointing(False)  # a training-time memory saving; nothing to trace
    metadata = {**export_metadata(chosen, "classifier"), "file_format": "onnx", "onnx_input": INPUT,
                "onnx_output": OUTPUT}
    channels, size = chosen.classifier.in_chans, recipe.data.eval.size
    graph = onnx.load_from_string(onnx_bytes(Logits(network.eval(), recipe.method.temperature),
                                             torch.zeros(2, channels, size, size)))
    onnx.helper.set_model_props(graph, metadata)
    write_bytes(out, graph.SerializeToString())  # atomic: a reader never sees half a file
    return metadata
