"""Backbones: every timm model, plus small-image networks registered with timm's own register_model.

One factory serves all: `timm.create_model(name, num_classes=0, in_chans=...)` returns a feature
extractor with `num_features`. Nothing is ever downloaded (pretrained=False); initialisation from a
local checkpoint is a separate step.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import BasicBlock, ResNet, build_model_with_cfg, register_model
from torch import nn

from semiclust.errors import SemiclustError
from semiclust.registry import unknown_name_message
from semiclust.storage.tensors import FileRole, read_safetensors, read_torch
from semiclust.config.validation import short

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


# ---------------------------------------------------------------- what model.backbone.kwargs may hold
SET_BY_SEMICLUST = {
    "in_chans": "semiclust sets it from the data's channels (data.options.channels where the dataset has it)",
    "num_classes": "semiclust sets it to 0 (a backbone without a classifier) and adds its own head and prototypes",
}
LAYER_SWITCHES = ("scriptable", "exportable", "no_jit")  # create_model's own, but plain switches of layer choice
FEATURE_OPTIONS = ("features_only", "out_indices", "feature_cls", "pruned")  # timm's builder reads them from kwargs
# A key named for a file: it ends in one of these words (`checkpoint_path`; `drop_path_rate` is stochastic depth)
# or holds one of the second set anywhere (`checkpoint_name`, `weights_url`).
FILE_ENDINGS = {"path", "paths", "file", "files", "filename", "dir", "dirs", "directory", "folder", "url", "uri"}
FILE_WORDS = {"file", "filename", "url", "uri", "checkpoint", "cache", "hub", "weights", "download"}
WORD = re.compile(r"[A-Za-z0-9_-]{0,40}")  # a plain word: `avg`, `gelu_tanh`, `layernorm2d`, `none`, ``
MAX_ITEMS, MAX_NESTING = 256, 3


@functools.cache
def loading_options() -> frozenset[str]:
    """The named parameters of `timm.create_model` and of timm's model builder (asked of this timm, so a new one
    is covered): how a model is built and loaded (pretrained, pretrained_cfg(_overlay), checkpoint_path,
    cache_dir, pretrained_strict, ...), not what the architecture is; plus the builder's feature-map options."""
    names = [*inspect.signature(timm.create_model).parameters.items(),
             *inspect.signature(build_model_with_cfg).parameters.items()]
    named = {key for key, parameter in names if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)}
    return frozenset(named - {"model_name", "model_cls", "variant", *LAYER_SWITCHES}) | frozenset(FEATURE_OPTIONS)


def plain_value(value: Any, nesting: int = 0) -> bool:
    """An architecture value: null, true/false, a finite number, a short word (letters, digits, _ and -: no path
    can be written with them), or a short list or section of these (nested at most MAX_NESTING deep)."""
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return WORD.fullmatch(value) is not None
    if nesting >= MAX_NESTING or not isinstance(value, (list, tuple, dict)) or len(value) > MAX_ITEMS:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and not key_problem(k) and plain_value(v, nesting + 1) for k, v in value.items())
    return all(plain_value(item, nesting + 1) for item in value)


def key_problem(key: str) -> str | None:
    """Why a user may not set this backbone keyword argument, or None."""
    if key in SET_BY_SEMICLUST:
        return SET_BY_SEMICLUST[key] + "; remove it"
    if key in FEATURE_OPTIONS:
        return ("it makes timm build a feature-map extractor (or read a pruning file), not the backbone with pooled "
                "features that semiclust's head takes; remove it")
    if key in loading_options():
        return ("it is one of timm.create_model's own loading options, not an argument of the architecture (it makes "
                "timm load or fetch weights, e.g. from a file); remove it, and start from local weights with "
                "model.init.path (docs/models.md)")
    words = key.lower().split("_")
    if words[-1] in FILE_ENDINGS or FILE_WORDS & set(words):
        return ("its name says it names a file, folder or address, and backbone arguments may only describe the "
                "architecture; remove it (local weights: model.init.path, docs/models.md)")
    return None


def backbone_kwargs_problems(kwargs: dict[str, Any]) -> list[str]:
    """One phrase per keyword argument a user may not pass to the backbone, each naming the key, why and what to
    do. The rule (docs/models.md): no loading options of timm (`loading_options`), no key semiclust sets
    itself (`SET_BY_SEMICLUST`), no key named for a file, and only plain values (`plain_value`), so that no
    recipe, checkpoint, export or hub folder can make timm read a file."""
    problems = []
    for key, value in kwargs.items():
        name = str(key) if len(str(key)) <= 60 else str(key)[:56] + " ..."
        where = f"'model.backbone.kwargs.{name}'"
        reason = key_problem(key) if isinstance(key, str) else "the name of a keyword argument is a word; remove it"
        if reason is None and not plain_value(value):
            reason = ("backbone arguments take only plain values (numbers, true/false, null, short words of letters, "
                      f"digits, '_' and '-', and short lists of them), and {short(value, 60)} is not one (a file path or "
                      "other text is refused); write the architecture's value")
        if reason is not None:
            problems.append(f"{where}: {reason}")
    return problems


def create_backbone(name: str, kwargs: dict[str, Any], in_chans: int) -> nn.Module:
    """A feature extractor (no classifier) from timm's factory, the one place semiclust calls it: keyword
    arguments a user may not set are refused first (`backbone_kwargs_problems`), bad ones reported clearly."""
    check_backbone_name(name)
    problems = backbone_kwargs_problems(kwargs)
    if problems:
        raise SemiclustError(f"backbone '{name}' cannot be built with these keyword arguments (from the recipe, or the "
                             f"checkpoint or export that describes the network): {'; '.join(problems)}.")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    except TypeError as err:
        raise SemiclustError(
            f"backbone '{name}' rejected model.backbone.kwargs {short(kwargs)}: {err}. Remove or rename the argument."
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
