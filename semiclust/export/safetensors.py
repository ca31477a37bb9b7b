"""Export a trained model to safetensors: the backbone alone (for timm) or the whole classifier.

Two contents. `backbone`: the backbone's tensors under timm's own names, so plain timm loads them:
`timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=PATH),
**json.loads(meta["timm_kwargs"]))`. `classifier`: backbone + projection head + prototypes under
semiclust's Network names, with everything needed to rebuild and run it (models/classifier.py).
Both carry metadata (strings, as safetensors requires): architecture and kwargs, classes, the
evaluation transform, mean/std, temperature, and hashes of the recipe and the labeled subset.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


from semiclust.engine.checkpoint import Checkpoint, classifier_network, load_checkpoint, with_network
from semiclust.errors import SemiclustError
from semiclust.models.backbones import SMALL_IMAGE_BACKBONES
from semiclust.models.classifier import EXPORT_FORMAT, EXPORT_FORMAT_VERSION
from semiclust.storage.atomic import check_writable
from semiclust.storage.tensors import write_safetensors
from semiclust.version import __version__

FORMAT_VERSION = str(EXPORT_FORMAT_VERSION)  # metadata values are strings
CONTENTS = ("backbone", "classifier")
FORMATS = {"safetensors": CONTENTS, "onnx": ("classifier",), "hub": ("backbone",)}  # each format, the contents it holds


def export_content(file_format: str, content: str | None) -> str:
    """The content an export in `file_format` holds: the one asked for, or the format's first (default) one."""
    if file_format not in FORMATS:
        raise SemiclustError(f"--format must be one of {', '.join(FORMATS)}, not '{file_format}'.")
    allowed = FORMATS[file_format]
    if content is not None and content not in allowed:
        hint = f"drop --content (it holds the {allowed[0]})" if len(allowed) == 1 else f"use one of {', '.join(allowed)}"
        raise SemiclustError(f"--format {file_format} cannot hold --content {content}; {hint}.")
    return content or allowed[0]


def recipe_sha256(recipe: dict) -> str:
    """SHA-256 of the recipe as canonical JSON (sorted keys): the same recipe, the same hash."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def export_metadata(checkpoint: Checkpoint, content: str) -> dict[str, str]:
    """The metadata of an export of a checkpoint (its classifier already checked, `checked_classifier`)."""
    recipe, info = checkpoint.recipe, checkpoint.classifier
    model = recipe["model"]
    timm_kwargs = dict(model["backbone"]["kwargs"])
    if info.in_chans != 3:
        timm_kwargs["in_chans"] = info.in_chans
    view = recipe["data"]["eval"]
    size = view["size"]
    metadata = {
        "format": EXPORT_FORMAT, "format_version": FORMAT_VERSION, "content": content,
        "architecture": model["backbone"]["name"], "timm_kwargs": json.dumps(timm_kwargs),
        "in_chans": str(info.in_chans), "input_size": json.dumps([info.in_chans, size, size]),
        "eval_view": json.dumps(view), "mean": json.dumps(checkpoint.mean), "std": json.dumps(checkpoint.std),
        "num_classes": str(info.num_classes), "classes": json.dumps(checkpoint.classes),
        "temperature": str(recipe["method"]["temperature"]), "prototypes": info.prototypes,
        "model_spec": json.dumps({**model, "init": None, "grad_checkpointing": False}), "network": info.prefix,
        "recipe_name": recipe["name"], "recipe_sha256": recipe_sha256(recipe),
        "labeled_sha256": checkpoint.labeled_sha256 or "", "labeled_list_sha256": checkpoint.labeled_list_sha256 or "",
        "step": str(checkpoint.step), "semiclust_version": __version__,
    }
    if checkpoint.eval is not None:
        metadata["eval"] = json.dumps(checkpoint.eval)
    return metadata


def timm_load_code(metadata: dict[str, str], source: str) -> list[str]:
    """The Python lines that load an exported backbone with plain timm, from a .safetensors file or (`local-dir:`)
    a hub-format folder. semiclust's own small-image backbones are in timm's registry only once `semiclust.models`
    is imported (timm says "Unknown model" otherwise), so their code starts with that import."""
    architecture = metadata["architecture"]
    lines = ["import timm"]
    if architecture in SMALL_IMAGE_BACKBONES:
        lines.append(f"import semiclust.models  # registers semiclust's own '{architecture}' with timm; without this "
                     "import timm.create_model fails with \"Unknown model\"")
    if source.endswith(".safetensors"):
        kwargs = "".join(f", {k}={v!r}" for k, v in json.loads(metadata["timm_kwargs"]).items())
        lines.append(f"model = timm.create_model({architecture!r}, pretrained=True, num_classes=0, "
                     f"pretrained_cfg_overlay=dict(file={source!r}){kwargs})")
    else:
        lines.append(f"model = timm.create_model({'local-dir:' + source!r}, pretrained=True)")
    return lines


def export_checkpoint(checkpoint: Path, out: Path, content: str = "backbone", network: str | None = None) -> dict[str, str]:
    """Write the backbone (or the whole classifier) of a semiclust checkpoint to `out` (.safetensors)."""
    if content not in CONTENTS:
        raise SemiclustError(f"export content must be one of {', '.join(CONTENTS)}, not '{content}'.")
    check_writable(out, "--out", "Choose a writable .safetensors path for the export.")
    if Path(out).suffix != ".safetensors":
        raise SemiclustError(f"--out '{out}' must end in .safetensors (timm recognises the format by the suffix).")
    chosen = with_network(load_checkpoint(Path(checkpoint)), network)
    network, _ = classifier_network(chosen)
    part = network.backbone if content == "backbone" else network
    tensors = {k: v.detach().contiguous().cpu() for k, v in part.state_dict().items()}
    metadata = export_metadata(chosen, content)
    write_safetensors(tensors, metadata, out)  # atomic: a reader never sees half a file
    return metadata
