"""Backbones: every timm model, plus small-image networks registered with timm's own register_model.

One factory serves all: `timm.create_model(name, num_classes=0, in_chans=...)` returns a feature
extractor with `num_features`. Nothing is ever downloaded (pretrained=False); initialisation from a
local checkpoint is a separate step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import BasicBlock, ResNet, register_model
from torch import nn

from semiclust.errors import SemiclustError
from semiclust.registry import unknown_name_message
from semiclust.storage.tensors import FileRole, read_safetensors, read_torch

_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")
HUB_WEIGHTS = "model.safetensors"  # the weights file of a hub-format folder (`semiclust export --format hub`)


def _pretrained_file(pretrained: bool, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The model kwargs without timm's pretrained options, and the local weights file asked for, if any.

    These networks have no published weights; `pretrained=True` works, as for timm's own models, with
    a local file: `pretrained_cfg_overlay=dict(file=PATH)` (e.g. a `semiclust export` of the backbone),
    or a hub-format folder, `timm.create_model('local-dir:DIR', pretrained=True)` (its model.safetensors).
    """
    file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file") if pretrained else None
    config = kwargs.get("pretrained_cfg")
    if pretrained and not file and isinstance(config, dict) and config.get("source") == "local-dir":
        file = str(Path(config["file"]) / HUB_WEIGHTS)
    if pretrained and not file:
        raise SemiclustError(f"backbone '{name}' has no published weights; pass pretrained_cfg_overlay=dict(file=PATH) "
                             "with a local file, or initialise from a checkpoint with model.init.")
    return {k: v for k, v in kwargs.items() if k not in _TIMM_ONLY}, file


WEIGHTS_FILE = FileRole("weights file", "pass pretrained_cfg_overlay=dict(file=PATH) with an existing file",
                        "export the backbone again with `semiclust export`")


def _with_weights(model: nn.Module, file: str | None) -> nn.Module:
    """Load a local weights file into a freshly built small-image network (classifier keys excepted, as timm)."""
    if file is None:
        return model
    if str(file).endswith(".safetensors"):
        state, _ = read_safetensors(file, WEIGHTS_FILE)
    else:
        state = read_torch(file, WEIGHTS_FILE)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise SemiclustError(f"weights file '{file}' does not fit this network: missing {missing[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}.")
    return model


def _small_cfg(in_chans: int, size: int) -> dict[str, Any]:
    return {"input_size": (in_chans, size, size), "num_classes": 0, "mean": (0.5,) * in_chans, "std": (0.5,) * in_chans}


class TinyConvNet(nn.Module):
    """A few conv-BN-ReLU stages with stride-2 downsampling, then global average pooling.

    Made for the embedded 8x8 digits upsampled to 16 px: ~60k parameters at the defaults, fast on a
    CPU, and valid for any input of at least 2**(len(widths)-1) pixels. `norm: none` drops
    BatchNorm (per-sample outputs then do not depend on the rest of the batch).
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96), convs_per_stage: int = 1, in_chans: int = 3,
                 num_classes: int = 0, drop_rate: float = 0.0, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise SemiclustError(f"tinyconv: norm must be 'batch' or 'none', got {norm!r}.")
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            for index in range(convs_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(nn.Conv2d(channels, width, 3, stride, 1, bias=norm == "none"))
                layers += [nn.BatchNorm2d(width)] if norm == "batch" else []
                layers.append(nn.ReLU(inplace=True))
                channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.pretrained_cfg = _small_cfg(in_chans, 16)
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def tinyconv(pretrained: bool = False, **kwargs: Any) -> TinyConvNet:
    """TinyConvNet for the embedded digits (see the class docstring)."""
    kwargs, file = _pretrained_file(pretrained, "tinyconv", kwargs)
    return _with_weights(TinyConvNet(**kwargs), file)


def _cifar_resnet(name: str, layers: tuple[int, ...], pretrained: bool, kwargs: dict[str, Any]) -> ResNet:
    """timm's ResNet with a 3x3 stride-1 stem and no max-pool, the usual setting for 32-px images."""
    kwargs, file = _pretrained_file(pretrained, name, kwargs)
    model = ResNet(block=BasicBlock, layers=layers, **kwargs)
    in_chans = model.conv1.in_channels
    model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.pretrained_cfg = _small_cfg(in_chans, 32)
    return _with_weights(model, file)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 for 32-px images (3x3 stride-1 stem, no max-pool), as in most CIFAR SSL work."""
    return _cifar_resnet("resnet18_cifar", (2, 2, 2, 2), pretrained, kwargs)


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 for 32-px images (3x3 stride-1 stem, no max-pool)."""
    return _cifar_resnet("resnet34_cifar", (3, 4, 6, 3), pretrained, kwargs)


SMALL_IMAGE_BACKBONES = ("tinyconv", "resnet18_cifar", "resnet34_cifar")


def backbone_names(pattern: str | None = None) -> list[str]:
    """All backbone names: semiclust's small-image ones and every timm architecture."""
    return timm.list_models(pattern) if pattern else timm.list_models()


def check_backbone_name(name: str) -> None:
    if not timm.is_model(name):
        raise SemiclustError(unknown_name_message("backbone", name, list(SMALL_IMAGE_BACKBONES) + timm.list_models()))


def create_backbone(name: str, kwargs: dict[str, Any], in_chans: int) -> nn.Module:
    """A feature extractor (no classifier) from timm's factory; bad keyword arguments are reported clearly."""
    check_backbone_name(name)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    except TypeError as err:
        raise SemiclustError(
            f"backbone '{name}' rejected model.backbone.kwargs {kwargs}: {err}. Remove or rename the argument."
        ) from None
    if not getattr(model, "num_features", None):
        raise SemiclustError(f"backbone '{name}' does not report num_features, so semiclust cannot attach a head.")
    return model


class TimmBackbones:
    """The backbones `semiclust list backbones` shows: every timm architecture, semiclust's small-image
    networks among them (registered with timm, so timm's own registry is the one to ask)."""

    kind = "backbone"

    def names(self, pattern: str | None = None) -> list[str]:
        return backbone_names(pattern)

    def summary(self, name: str) -> str:
        return ""  # names only: the listing is often piped into other tools


BACKBONES = TimmBackbones()
