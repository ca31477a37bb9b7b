"""Initialisation from a local checkpoint: official SwAV and DINO files, timm checkpoints, safetensors
files (timm's or `semiclust export`'s) and semiclust checkpoints, mapped onto a Network's keys.

The story: read_checkpoint -> detect_layout -> extract_state -> map_keys -> apply. Reading goes through
semiclust/storage/tensors.py, so it never executes pickled code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from semiclust.errors import SemiclustError, examples
from semiclust.engine.checkpoint import is_checkpoint_content, method_tensors
from semiclust.models.network import Network
from semiclust.config.schema import InitSpec
from semiclust.storage.tensors import FileRole, looks_like_safetensors, read_safetensors, read_torch, require_file

PARTS = {"backbone": ("backbone",), "backbone_head": ("backbone", "head"), "all": ("backbone", "head", "prototypes")}
NETWORK_PARTS = ("backbone.", "head.", "prototypes.")
TIMM_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's own preference order
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel and torch.compile wrappers
EXAMPLES = 5


# ---------------------------------------------------------------- the report
@dataclass
class InitReport:
    """What `initialize` did: the file, its recognised layout, and the fate of every tensor."""

    source: Path
    format: str
    what: str
    entry: str = ""  # which part of the file was read, e.g. "'student'" or "'state_dict_ema'"
    loaded: list[str] = field(default_factory=list)  # Network keys that received the file's tensor
    missing: list[str] = field(default_factory=list)  # Network keys of the selected parts the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys aimed at the selected parts, absent in the network
    ignored: list[str] = field(default_factory=list)  # file keys outside the selected parts
    notes: list[str] = field(default_factory=list)  # adaptations made (resampled position embeddings, ...)

    def summary(self) -> str:
        """One line for the run's start-up messages."""
        parts = "+".join(PARTS[self.what])
        entry = f" ({self.entry})" if self.entry else ""
        groups = _groups(self.ignored)
        ignored = f" ({', '.join(groups)})" if groups else ""
        notes = "".join(f"; {note}" for note in self.notes)
        return (f"init from {self.format} file {self.source}{entry}: {len(self.loaded)} {parts} tensors loaded, "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.ignored)} ignored{ignored}{notes}")


def _groups(keys: list[str], limit: int = 6) -> list[str]:
    """Short module names for a list of keys: 'projection_head', 'head.last_layer', 'teacher'."""
    seen: dict[str, None] = {}
    for key in keys:
        parts = _strip_wrappers(key).split(".")
        depth = 2 if parts[0] in ("backbone", "head") and len(parts) > 2 else 1
        seen.setdefault(".".join(parts[:depth]))
    names = sorted(seen)
    return names[:limit] + ([f"... {len(names) - limit} more"] if len(names) > limit else [])


# ---------------------------------------------------------------- reading
@dataclass
class Loaded:
    """A file's content: a (nested) dict, plus the safetensors metadata (None for PyTorch files)."""

    content: dict[str, Any]
    metadata: dict[str, str] | None


INIT_FILE = FileRole("init checkpoint", "give the checkpoint file to start from (model.init.path), or set model.init "
                     "to null for a random initialisation", "copy it again, or point model.init.path at another file "
                     "(and set model.init.format to its real format if it was recognised wrongly)")


def read_checkpoint(path: Path, safetensors: bool | None = None) -> Loaded:
    """Read a PyTorch or safetensors file without executing pickled code; clear errors for bad files."""
    path = require_file(Path(path), INIT_FILE)
    if safetensors is None:
        safetensors = path.suffix == ".safetensors" or looks_like_safetensors(path)
    if safetensors:
        return Loaded(*read_safetensors(path, INIT_FILE))
    content = read_torch(path, INIT_FILE)
    if not isinstance(content, dict):
        raise SemiclustError(f"init checkpoint '{path}' holds a {type(content).__name__}, not a dict of tensors; save the "
                             "model's state_dict() instead.")
    return Loaded(content, None)


# ---------------------------------------------------------------- layouts
def _strip_wrappers(key: str) -> str:
    """Drop leading DistributedDataParallel (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
    key = key.replace("._orig_mod.", ".")
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _tensors(mapping: Any) -> dict[str, Tensor]:
    """The tensor entries of a dict (a state_dict may sit next to epochs, args, ...)."""
    return {k: v for k, v in mapping.items() if isinstance(v, Tensor)} if isinstance(mapping, dict) else {}


def _timm_entry(content: dict[str, Any]) -> str | None:
    """The entry holding the weights of a wrapped state_dict, EMA first as timm's own loader does."""
    return next((name for name in TIMM_ENTRIES if _tensors(content.get(name))), None)


def _semiclust_export(metadata: dict[str, str] | None) -> str | None:
    """The content ("backbone" or "classifier") of a `semiclust export` file, else None."""
    return metadata.get("content") if metadata and metadata.get("format") == "semiclust" else None


def detect_layout(loaded: Loaded) -> str:
    """Recognise a file's layout from its structure and key names (format: auto)."""
    content = loaded.content
    if _semiclust_export(loaded.metadata):
        return "safetensors"
    if is_checkpoint_content(content):
        return "semiclust"
    if isinstance(content.get("student"), dict) and isinstance(content.get("teacher"), dict):
        return "dino"
    entry = _timm_entry(content)
    keys = list(_tensors(content[entry]) if entry else _tensors(content))
    stripped = [_strip_wrappers(k) for k in keys]
    if any(k.startswith(("student.", "teacher.")) for k in stripped):
        return "semiclust"  # a Method's state_dict
    if any(k.startswith("backbone.") for k in stripped):
        network_dict = any(k.startswith("prototypes.") for k in stripped) and not any(
            k.startswith("head.last_layer.") for k in stripped)
        return "semiclust" if network_dict else "dino"
    if any(k.startswith(("projection_head.", "prototypes.")) for k in stripped) or any(
            k.startswith("module.conv1.") for k in keys):
        return "swav"
    return "timm"


def extract_state(loaded: Loaded, layout: str, key: str) -> tuple[dict[str, Tensor], str]:
    """The flat tensor dict to map, and a description of where in the file it came from."""
    content = loaded.content
    if layout == "dino" and isinstance(content.get(key), dict):
        return _tensors(content[key]), f"'{key}'"
    if layout == "semiclust":
        tensors = _tensors(method_tensors(content))
        if any(k.startswith(("student.", "teacher.")) for k in tensors):
            prefix = f"{key}."
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, f"'{key}'"
        return tensors, ""
    if layout == "safetensors":
        export = _semiclust_export(loaded.metadata)
        return _tensors(content), f"semiclust {export} export" if export else ""
    entry = _timm_entry(content) if layout in ("timm", "swav") else None
    return (_tensors(content[entry]), f"'{entry}'") if entry else (_tensors(content), "")


@dataclass
class Mapped:
    """Tensors renamed to Network keys, the file key each came from, and file keys with no place."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def put(self, name: str, tensor: Tensor, source: str) -> None:
        """Record `tensor` under Network key `name`, remembering the file key it came from."""
        self.tensors[name] = tensor
        self.source[name] = source


def _map_swav(state: dict[str, Tensor]) -> Mapped:
    """SwAV: torchvision ResNet names (= timm's) for the backbone, projection_head.N -> head.mlp.N;
    SwAV's prototypes are its own clusters, never the classes, so they are ignored."""
    mapped = Mapped()
    for raw, tensor in state.items():
        key = _strip_wrappers(raw)
        if key.startswith("prototypes."):
            mapped.ignored.append(raw)
        elif key.startswith("projection_head."):
            rest = key[len("projection_head."):]
            mapped.put("head.mlp." + (rest if rest[0].isdigit() else f"0.{rest}"), tensor, raw)
        else:
            mapped.put(f"backbone.{key}", tensor, raw)
    return mapped


def _map_dino(state: dict[str, Tensor]) -> Mapped:
    """DINO: backbone.* (ViT names = timm's, or torchvision ResNet names) and head.mlp.N map as they
    are; head.last_layer (DINO's 65536 prototypes) is ignored; backbone-only files have no prefix."""
    mapped = Mapped()
    for raw, tensor in state.items():
        key = _strip_wrappers(raw)
        if key.startswith("head.last_layer."):
            mapped.ignored.append(raw)
        elif key.startswith(("backbone.", "head.")):
            mapped.put(key, tensor, raw)
        else:
            mapped.put(f"backbone.{key}", tensor, raw)
    return mapped


def _map_timm(state: dict[str, Tensor]) -> Mapped:
    """timm names are backbone names (its classifier is dropped later: our backbone has none)."""
    mapped = Mapped()
    for raw, tensor in state.items():
        mapped.put(f"backbone.{_strip_wrappers(raw)}", tensor, raw)
    return mapped


def _map_network(state: dict[str, Tensor]) -> Mapped:
    """Network keys (semiclust checkpoints, classifier exports): backbone.*, head.*, prototypes.*."""
    mapped = Mapped()
    for raw, tensor in state.items():
        key = _strip_wrappers(raw)
        if key.startswith(NETWORK_PARTS):
            mapped.put(key, tensor, raw)
        else:
            mapped.ignored.append(raw)
    return mapped


MAPPERS: dict[str, Callable[[dict[str, Tensor]], Mapped]] = {
    "swav": _map_swav, "dino": _map_dino, "timm": _map_timm, "semiclust": _map_network}


def _network_style(state: dict[str, Tensor], metadata: dict[str, str] | None) -> bool:
    """A safetensors file holds Network keys (a classifier export) or timm names (a backbone)."""
    export = _semiclust_export(metadata)
    if export in ("classifier", "backbone"):
        return export == "classifier"
    return any(_strip_wrappers(k).startswith("backbone.") for k in state)


def map_keys(state: dict[str, Tensor], layout: str, metadata: dict[str, str] | None = None) -> Mapped:
    """Rename a layout's keys onto Network keys."""
    if layout == "safetensors":
        return _map_network(state) if _network_style(state, metadata) else _map_timm(state)
    return MAPPERS[layout](state)


# ---------------------------------------------------------------- applying
def _convert_prototypes(mapped: Mapped, target: dict[str, Tensor], notes: list[str]) -> None:
    """Unit prototypes (weight) <-> weight-normalised ones (v, g), so Suave and Daino files interchange."""
    tensors = mapped.tensors
    if "prototypes.weight" in target and {"prototypes.v", "prototypes.g"} <= tensors.keys():
        source = mapped.source.pop("prototypes.v")
        mapped.source.pop("prototypes.g")
        tensors.pop("prototypes.g")  # unit prototypes keep the direction only
        mapped.put("prototypes.weight", F.normalize(tensors.pop("prototypes.v").float(), dim=1), source)
        notes.append("weight-normalised prototypes converted to unit prototypes")
    elif "prototypes.v" in target and "prototypes.weight" in tensors:
        weight = tensors.pop("prototypes.weight").float()
        source = mapped.source.pop("prototypes.weight")
        mapped.put("prototypes.v", weight, source)
        mapped.put("prototypes.g", weight.norm(dim=1), source)
        notes.append("unit prototypes converted to weight-normalised prototypes")


def _classifier_names(backbone: torch.nn.Module) -> tuple[str, ...]:
    """The timm model's classifier module(s); a file's weights for it have no place (num_classes=0)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or getattr(backbone, "default_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _adapt(name: str, tensor: Tensor, wanted: Tensor, backbone: torch.nn.Module, notes: list[str]) -> Tensor:
    """Resample a ViT's position embeddings to the model's grid; fold a 3-channel first conv into fewer
    channels (timm's adapt_input_conv). Anything else is returned unchanged for the shape check."""
    if tensor.shape == wanted.shape:
        return tensor
    if name == "backbone.pos_embed" and tensor.ndim == wanted.ndim == 3 and tensor.shape[-1] == wanted.shape[-1]:
        grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
        prefix = 0 if getattr(backbone, "no_embed_class", False) else getattr(backbone, "num_prefix_tokens", 1)
        old = round((tensor.shape[1] - prefix) ** 0.5)
        if grid is not None and old * old == tensor.shape[1] - prefix:
            from timm.layers import resample_abs_pos_embed

            resampled = resample_abs_pos_embed(tensor.float(), list(grid), [old, old], num_prefix_tokens=prefix)
            if resampled.shape == wanted.shape:
                notes.append(f"pos_embed resampled from a {old}x{old} to a {grid[0]}x{grid[1]} grid")
                return resampled
    first_conv = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    if first_conv and name == f"backbone.{first_conv}.weight" and tensor.ndim == wanted.ndim == 4 \
            and tensor.shape[1] == 3 and tensor.shape[0] == wanted.shape[0] and tensor.shape[2:] == wanted.shape[2:]:
        from timm.models import adapt_input_conv

        notes.append(f"{first_conv} adapted from {tensor.shape[1]} to {wanted.shape[1]} input channels")
        return adapt_input_conv(wanted.shape[1], tensor.float())
    return tensor


def _keys(keys: list[str]) -> str:
    """Tensor names in a message: the first few, unquoted, and how many more (errors.examples)."""
    return examples(keys, EXAMPLES, quote=False)


def file_architecture(loaded: Loaded) -> str | None:
    """The architecture a file says it holds, where it says so (export metadata, recipe, DINO args, timm)."""
    content, metadata = loaded.content, loaded.metadata or {}
    recipe = content.get("recipe")
    args = content.get("args")
    for found in (metadata.get("architecture"),
                  recipe.get("model", {}).get("backbone", {}).get("name") if isinstance(recipe, dict) else None,
                  getattr(args, "arch", None) or (args.get("arch") if isinstance(args, dict) else None),
                  content.get("arch")):
        if isinstance(found, str) and found:
            return found
    return None


def _file_label(path: Path, layout: str, architecture: str | None = None) -> str:
    """How error messages name the file: path, layout read, and the architecture it claims."""
    said = f", which says it holds a {architecture}" if architecture else ""
    return f"init checkpoint '{path}' (read as {layout}{said})"


def _check_parts_present(candidates: dict[str, Tensor], parts: tuple[str, ...], what: str, label: str) -> None:
    """Every selected part must come with at least one tensor from the file."""
    for part in parts:
        if any(k.startswith(f"{part}.") for k in candidates):
            continue
        fix = {"backbone": "point model.init.path at a checkpoint of the backbone, or set model.init.format",
               "head": "set model.init.what to backbone (the head then starts random)",
               "prototypes": "set model.init.what to backbone_head, or use a semiclust checkpoint or classifier export "
                             "of a run on the same classes"}[part]
        raise SemiclustError(f"{label} provides no {part} weights that fit this model, but model.init.what is {what}; {fix}.")


def _check_architecture(part: str, missing: list[str], unexpected: list[str], matched: int, arch: str,
                        label: str) -> None:
    """Many missing AND unexpected keys in one part: the file holds another architecture."""
    if not (missing and unexpected and matched < len(missing)):
        return
    what, fix = {
        "backbone": (f"a checkpoint of model.backbone.name '{arch}'",
                     "Use a checkpoint of the same architecture, or set model.backbone to the file's architecture."),
        "head": ("a projection head shaped like model.head",
                 "Set model.head (layers, batchnorm, activation) like the file's head, or model.init.what: backbone."),
        "prototypes": ("prototypes of this method", "Set model.init.what to backbone_head."),
    }[part]
    raise SemiclustError(
        f"{label} does not hold {what}: {len(missing)} {part} weights are missing from the file, e.g. "
        f"{_keys(missing)}; and {len(unexpected)} file weights have no place in it, e.g. {_keys(unexpected)}. {fix}"
    )


def _check_shapes(candidates: dict[str, Tensor], target: dict[str, Tensor], arch: str, label: str) -> None:
    """Every tensor to copy must have the model's shape (after the adaptations of `_adapt`)."""
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
             for k, v in candidates.items() if v.shape != target[k].shape]
    if wrong:
        raise SemiclustError(
            f"{label} does not fit the model (backbone '{arch}'): {len(wrong)} weights differ in shape, e.g. "
            f"{_keys(wrong)}. Use a checkpoint of the same architecture with the same model.head settings and "
            "number of classes, or load fewer parts (model.init.what: backbone)."
        )


def apply(network: Network, mapped: Mapped, spec: InitSpec, layout: str, entry: str = "",
          architecture: str | None = None) -> InitReport:
    """Check the mapped tensors against the network's selected parts, then copy them in place."""
    parts = PARTS[spec.what]
    label = _file_label(spec.path, layout, architecture)
    cfg = getattr(network.backbone, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") or type(network.backbone).__name__
    report = InitReport(Path(spec.path), layout, spec.what, entry, ignored=list(mapped.ignored))
    target = network.state_dict()
    if "prototypes" in parts:
        _convert_prototypes(mapped, target, report.notes)
    classifier = tuple(f"backbone.{name}." for name in _classifier_names(network.backbone))
    candidates: dict[str, Tensor] = {}
    unexpected: dict[str, list[str]] = {part: [] for part in parts}
    for name, tensor in mapped.tensors.items():
        part = name.split(".", 1)[0]
        if part not in parts or (name not in target and name.startswith(classifier)):
            report.ignored.append(mapped.source[name])
        elif name not in target:
            unexpected[part].append(mapped.source[name])
        else:
            candidates[name] = _adapt(name, tensor, target[name], network.backbone, report.notes)
    report.unexpected = [key for part in parts for key in unexpected[part]]
    report.missing = [k for k in target if k.split(".", 1)[0] in parts and k not in candidates]
    for part in parts:
        _check_architecture(part, [k for k in report.missing if k.startswith(f"{part}.")], unexpected[part],
                            sum(k.startswith(f"{part}.") for k in candidates), arch, label)
    _check_parts_present(candidates, parts, spec.what, label)
    _check_shapes(candidates, target, arch, label)
    if spec.strict and (report.missing or report.unexpected):
        problems = ([f"{len(report.missing)} model weights are missing from the file: {_keys(report.missing)}"]
                    if report.missing else []) + (
            [f"{len(report.unexpected)} file weights have no place in the model: {_keys(report.unexpected)}"]
            if report.unexpected else [])
        raise SemiclustError(f"{label}: {'; '.join(problems)}. Set model.init.strict to false to load what matches "
                             "(the rest keeps its random initialisation), or use a checkpoint that fits the recipe.")
    with torch.no_grad():
        for name, tensor in candidates.items():
            target[name].copy_(tensor)
    report.loaded = list(candidates)
    return report


def initialize(network: Network, spec: InitSpec) -> InitReport:
    """Load `spec.path` and copy the selected parts' weights into `network` in place."""
    path = Path(spec.path)
    loaded = read_checkpoint(path, True if spec.format == "safetensors" else None)
    layout = detect_layout(loaded) if spec.format == "auto" else spec.format
    state, entry = extract_state(loaded, layout, spec.key)
    if not state:
        found = ", ".join(sorted(map(str, loaded.content))[:10])
        raise SemiclustError(f"{_file_label(path, layout)} holds no tensors where that layout keeps them (top-level "
                             f"entries: {found or 'none'}); check model.init.format and model.init.key.")
    return apply(network, map_keys(state, layout, loaded.metadata), spec, layout, entry, file_architecture(loaded))
